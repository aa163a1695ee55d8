//! Every `#[repr(C)]` struct that Rust uploads to (or reads back from) a WGSL
//! uniform or storage buffer has the layout naga gives the WGSL struct it
//! mirrors, in the module as the engine assembles it: same size, and every
//! WGSL member has a Rust field of the same name at the same offset, with the
//! same size and scalar kind. No device is needed.
//!
//! Adding a shared struct is adding a row to [`rows`]; a struct bound to a
//! buffer without a row fails `every_bound_struct_has_a_row`.
//!
//! Padding: members whose name starts with `_pad` are bytes nobody reads.
//! They are matched by bytes, not by name: a Rust `_pad: [u32; 3]` matches
//! WGSL `_pad0`, `_pad1`, `_pad2` (or no WGSL members at all, if the WGSL
//! struct ends there and its size still equals the Rust size).
//!
//! Copies: a struct defined in more than one WGSL file (or under another name,
//! see [`COPIES`]) must have the same layout in every file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::mem::{align_of, offset_of, size_of};

use naga::proc::Layouter;
use naga::{AddressSpace, Handle, ScalarKind, Type, TypeInner};
use pdevi::gpu::shaders::{self, ModuleId};

// ---------------------------------------------------------------------------
// The table.

/// One Rust struct and the WGSL structs (module, struct name) it mirrors.
struct Row {
    /// The Rust type as written in the row.
    rust: &'static str,
    size: usize,
    align: usize,
    /// Every field, in declaration order.
    fields: Vec<RustField>,
    targets: Vec<(ModuleId, &'static str)>,
}

struct RustField {
    name: &'static str,
    offset: usize,
    size: usize,
    /// `std::any::type_name` of the field's type.
    ty: &'static str,
}

fn field<T, F>(name: &'static str, offset: usize, _get: impl Fn(&T) -> &F) -> RustField {
    RustField {
        name,
        offset,
        size: size_of::<F>(),
        ty: std::any::type_name::<F>(),
    }
}

/// `Type { field, .. } in [Module "WgslName", ..]`: list every field of the
/// Rust struct (a field left out shows up as uncovered bytes).
macro_rules! rows {
    ($( $ty:ty { $($f:ident),+ $(,)? } in [ $( $m:ident $w:literal ),+ $(,)? ] ),+ $(,)?) => {
        vec![$(
            Row {
                rust: stringify!($ty),
                size: size_of::<$ty>(),
                align: align_of::<$ty>(),
                fields: vec![$( field::<$ty, _>(stringify!($f), offset_of!($ty, $f), |t| &t.$f) ),+],
                targets: vec![$( (ModuleId::$m, $w) ),+],
            }
        ),+]
    };
}

fn rows() -> Vec<Row> {
    rows![
        pdevi::gpu::layout::PdeParams {
            n, nunk, ncoef, batch, d, max_iter, chunk, tol, inv_h, kl_linear, per_system_data,
            nsens, kl_scale, noise_precision, omega, triad_scale,
        } in [SolverQ1 "PdeParams"],
        pdevi::gpu::layout::CgState {
            iters, status, rz, bnorm2, rnorm2, tol, tol_next, _pad,
        } in [SolverQ1 "CgState", P1Direct "CgState", Mcmc "CgState"],
        pdevi::gpu::layout::MgPhase { op, level, gated, _pad } in [SolverQ1Mg "MgPhase"],
        pdevi::infer::vi::ViParams {
            d, r, family, samples, step, seed_lo, seed_hi, nparam, nobs, history, log_norm,
            per_row, grad_scale, kl_scale, _pad,
        } in [Vi "ViParams"],
        pdevi::infer::vi::TolParams {
            samples, d, _pad0, _pad1, factor, scale, tol_min, tol_max,
        } in [CgTol "TolParams"],
        pdevi::infer::adam::AdamParams {
            n, step, lr, beta1, beta2, eps, weight_decay, grad_scale, clip_norm, _pad,
        } in [Adam "AdamParams"],
        pdevi::nn::mlp::MlpParams {
            m, n, k, act, a_off, a_rs, a_cs, b_off, b_rs, b_cs, c_off, c_rs, bias_off, flags,
            scale, slot,
        } in [Mlp "MlpParams"],
        pdevi::infer::mcmc::McmcParams {
            d, chains, sampler, mode, seed_lo, seed_hi, warmup, thin, kept, step_size, _pad,
        } in [Mcmc "McmcParams"],
        pdevi::infer::surrogate::SurrogateParams {
            rows, nobs, width, lv_off, has_lv, slot, sigma2, _pad,
        } in [Surrogate "SurrogateParams"],
        pdevi::infer::mcmc::McmcChain {
            step, accepts, kept, failed, lp, phi, _pad,
        } in [Mcmc "Chain"],
        pdevi::gpu::render::Draw {
            clip, origin, size, nx, ny, kind, cmap, offset, contours, range_slot, nmarkers,
            lo, hi, view, _pad, window,
        } in [Render "Draw"],
        pdevi::gpu::layout::ResidualParams {
            sigma_inv2, u_scale, lv0, grad_scale, form, sampled, seed_lo, seed_hi, step, stream,
            in_scale, nunk, m, log_mean, _pad,
        } in [Residual "ResidualParams"],
        pdevi::gpu::layout::JointParams {
            sigma_inv2, dim, flat_u, m, nunk, ncoef, d, nsens,
        } in [ResidualVi "JointParams"],
        pdevi::gpu::layout::DvaeParams {
            n, t, modes, samples, x_samples, height, oracle, step, seed_lo, seed_hi, stream,
            learn, dt, sigma_u2, sigma_02, inv_norm, beta, gamma, t_kalman, level_hidden, level0, dlevel, _pad,
        } in [Kalman "DvaeParams", Dvae "DvaeParams"],
        pdevi::infer::flow::FlowParams {
            d, samples, layer, parity, layers, nobs, history, step, s_scale, alpha, log_norm, _pad,
        } in [Flow "FlowParams"],
        pdevi::output::live::LiveParams {
            d, r, family, ncoef, nfields, len, _pad,
        } in [Live "LiveParams"],
    ]
}

/// WGSL structs that are copies of another under a different name:
/// (copy, original). Checked like same-name copies.
const COPIES: &[(&str, &str)] = &[];

// ---------------------------------------------------------------------------
// naga's view.

struct Parsed {
    id: ModuleId,
    module: naga::Module,
    layouter: Layouter,
    asm: shaders::Assembled,
}

fn parse(id: ModuleId) -> Parsed {
    let asm = shaders::assemble(id);
    let module = shaders::validate_assembled(id.name(), &asm)
        .unwrap_or_else(|e| panic!("module {} does not validate: {e}", id.name()));
    let mut layouter = Layouter::default();
    layouter
        .update(module.to_ctx())
        .unwrap_or_else(|e| panic!("module {}: naga layout failed: {e:?}", id.name()));
    Parsed {
        id,
        module,
        layouter,
        asm,
    }
}

fn parse_all() -> Vec<Parsed> {
    ModuleId::ALL.iter().map(|&id| parse(id)).collect()
}

/// One WGSL struct member as naga lays it out.
#[derive(Clone, Debug, PartialEq)]
struct WgslMember {
    name: String,
    offset: u32,
    size: u32,
    ty: String,
}

#[derive(Clone, Debug)]
struct WgslStruct {
    name: String,
    /// The file that defines it (`shaders/...`).
    file: &'static str,
    span: u32,
    align: u32,
    members: Vec<WgslMember>,
}

impl WgslStruct {
    /// Everything but the name and the file.
    fn same_layout(&self, other: &WgslStruct) -> bool {
        self.span == other.span && self.align == other.align && self.members == other.members
    }
}

impl Parsed {
    fn find(&self, name: &str) -> Option<Handle<Type>> {
        self.module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some(name) && is_struct(&t.inner))
            .map(|(h, _)| h)
    }

    fn structs(&self) -> Vec<Handle<Type>> {
        self.module
            .types
            .iter()
            .filter(|(_, t)| is_struct(&t.inner))
            .map(|(h, _)| h)
            .collect()
    }

    /// The WGSL file that declares the struct, from naga's span of the type
    /// (falling back to a text search for `struct Name`).
    fn file_of(&self, h: Handle<Type>) -> &'static str {
        let name = self.module.types[h].name.as_deref().unwrap_or("");
        let span = self.module.types.get_span(h);
        if span.is_defined() {
            let line = span.location(&self.asm.text).line_number as usize;
            let (path, _) = self.asm.origin(line);
            if path.starts_with("shaders/") {
                return path;
            }
        }
        for (i, line) in self.asm.text.lines().enumerate() {
            let rest = line.trim_start().strip_prefix("struct ");
            let declared = rest
                .map(|r| r.trim_start())
                .and_then(|r| r.strip_prefix(name));
            if declared.is_some_and(|r| !r.starts_with(|c: char| c.is_alphanumeric() || c == '_')) {
                return self.asm.origin(i + 1).0;
            }
        }
        panic!(
            "module {}: cannot tell which file declares struct {name}",
            self.id.name()
        )
    }

    fn layout(&self, h: Handle<Type>) -> WgslStruct {
        let ty = &self.module.types[h];
        let TypeInner::Struct { members, span } = &ty.inner else {
            panic!("not a struct")
        };
        WgslStruct {
            name: ty.name.clone().unwrap_or_default(),
            file: self.file_of(h),
            span: *span,
            align: self.layouter[h].alignment.round_up(1),
            members: members
                .iter()
                .map(|m| WgslMember {
                    name: m.name.clone().unwrap_or_default(),
                    offset: m.offset,
                    size: self.layouter[m.ty].size,
                    ty: describe(&self.module, m.ty),
                })
                .collect(),
        }
    }

    /// Structs reachable from uniform/storage bindings, with the address spaces
    /// they are bound in.
    fn bound_structs(&self) -> BTreeMap<Handle<Type>, BTreeSet<&'static str>> {
        let mut out: BTreeMap<Handle<Type>, BTreeSet<&'static str>> = BTreeMap::new();
        for (_, var) in self.module.global_variables.iter() {
            let space = match var.space {
                AddressSpace::Uniform => "uniform",
                AddressSpace::Storage { .. } => "storage",
                _ => continue,
            };
            let mut stack = vec![var.ty];
            while let Some(t) = stack.pop() {
                match &self.module.types[t].inner {
                    TypeInner::Struct { members, .. } => {
                        out.entry(t).or_default().insert(space);
                        stack.extend(members.iter().map(|m| m.ty));
                    }
                    TypeInner::Array { base, .. } | TypeInner::BindingArray { base, .. } => {
                        stack.push(*base)
                    }
                    _ => {}
                }
            }
        }
        out
    }
}

fn is_struct(inner: &TypeInner) -> bool {
    matches!(inner, TypeInner::Struct { .. })
}

fn scalar_name(s: naga::Scalar) -> String {
    let k = match s.kind {
        ScalarKind::Sint => "i",
        ScalarKind::Uint => "u",
        ScalarKind::Float => "f",
        ScalarKind::Bool => return "bool".into(),
        ScalarKind::AbstractInt => return "abstract-int".into(),
        ScalarKind::AbstractFloat => return "abstract-float".into(),
    };
    format!("{k}{}", s.width as u32 * 8)
}

/// A short WGSL-like spelling of a type (module independent, unlike handles).
fn describe(module: &naga::Module, h: Handle<Type>) -> String {
    let ty = &module.types[h];
    match &ty.inner {
        TypeInner::Scalar(s) => scalar_name(*s),
        TypeInner::Atomic(s) => format!("atomic<{}>", scalar_name(*s)),
        TypeInner::Vector { size, scalar } => {
            format!("vec{}<{}>", *size as u8, scalar_name(*scalar))
        }
        TypeInner::Matrix {
            columns,
            rows,
            scalar,
        } => format!(
            "mat{}x{}<{}>",
            *columns as u8,
            *rows as u8,
            scalar_name(*scalar)
        ),
        TypeInner::Array { base, size, stride } => {
            let n = match size {
                naga::ArraySize::Constant(n) => format!(", {n}"),
                naga::ArraySize::Pending(_) => ", <override>".into(),
                naga::ArraySize::Dynamic => String::new(),
            };
            format!("array<{}{n}> (stride {stride})", describe(module, *base))
        }
        TypeInner::Struct { .. } => ty.name.clone().unwrap_or_else(|| "<struct>".into()),
        other => format!("{other:?}"),
    }
}

/// The scalar kind at the leaves of a WGSL type (None for structs etc.).
fn wgsl_kind(ty: &str) -> Option<ScalarKind> {
    let leaf = ty
        .trim_start_matches("atomic<")
        .trim_start_matches("array<")
        .trim_start_matches("vec2<")
        .trim_start_matches("vec3<")
        .trim_start_matches("vec4<");
    kind_of_leaf(leaf)
}

/// The scalar kind of a Rust field type (`u32`, `[f32; 4]`, ...).
fn rust_kind(ty: &str) -> Option<ScalarKind> {
    kind_of_leaf(ty.trim_start_matches('['))
}

fn kind_of_leaf(s: &str) -> Option<ScalarKind> {
    let end = s.find(|c: char| !c.is_alphanumeric()).unwrap_or(s.len());
    match &s[..end] {
        "u32" | "u64" | "u16" | "u8" => Some(ScalarKind::Uint),
        "i32" | "i64" | "i16" | "i8" => Some(ScalarKind::Sint),
        "f32" | "f64" | "f16" => Some(ScalarKind::Float),
        _ => None,
    }
}

fn is_pad(name: &str) -> bool {
    name.starts_with("_pad")
}

// ---------------------------------------------------------------------------
// Comparison.

/// One line of the mismatch table.
struct Mismatch {
    rust: String,
    wgsl: String,
    member: String,
    rust_off: String,
    wgsl_off: String,
    rust_size: String,
    wgsl_size: String,
    what: String,
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn table(rows: &[Mismatch]) -> String {
    let head = [
        "rust struct",
        "wgsl struct",
        "member",
        "rust off",
        "wgsl off",
        "rust size",
        "wgsl size",
        "problem",
    ];
    let cells: Vec<[&str; 8]> = rows
        .iter()
        .map(|m| {
            [
                m.rust.as_str(),
                m.wgsl.as_str(),
                m.member.as_str(),
                m.rust_off.as_str(),
                m.wgsl_off.as_str(),
                m.rust_size.as_str(),
                m.wgsl_size.as_str(),
                m.what.as_str(),
            ]
        })
        .collect();
    let mut w = head.map(str::len);
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            w[i] = w[i].max(s.len());
        }
    }
    let mut out = String::new();
    for line in std::iter::once(head).chain(cells) {
        for (i, s) in line.iter().enumerate() {
            let _ = write!(out, "{s:<width$}  ", width = w[i]);
        }
        out = out.trim_end().to_string();
        out.push('\n');
    }
    out
}

/// Compare one Rust row with one WGSL struct; append what differs.
fn compare(row: &Row, ws: &WgslStruct, module: ModuleId, out: &mut Vec<Mismatch>) {
    let rust = row.rust.rsplit("::").next().unwrap_or(row.rust);
    let wgsl = format!("{} ({}, module {})", ws.name, ws.file, module.name());
    let mut push = |member: &str, r: Option<&RustField>, m: Option<&WgslMember>, what: String| {
        out.push(Mismatch {
            rust: rust.to_string(),
            wgsl: wgsl.clone(),
            member: member.to_string(),
            rust_off: opt(r.map(|f| f.offset)),
            wgsl_off: opt(m.map(|m| m.offset)),
            rust_size: opt(r.map(|f| f.size)),
            wgsl_size: opt(m.map(|m| m.size)),
            what,
        })
    };

    // Total size (also the array stride of array<T> in storage).
    if row.size != ws.span as usize {
        let whole = RustField {
            name: "(whole struct)",
            offset: 0,
            size: row.size,
            ty: row.rust,
        };
        let span = WgslMember {
            name: ws.name.clone(),
            offset: 0,
            size: ws.span,
            ty: String::new(),
        };
        push(
            whole.name,
            Some(&whole),
            Some(&span),
            format!(
                "size_of::<{rust}>() = {} but the WGSL span is {} (align {})",
                row.size, ws.span, ws.align
            ),
        );
    }

    // The row lists every Rust field: the fields must tile the struct.
    let mut by_off: Vec<&RustField> = row.fields.iter().collect();
    by_off.sort_by_key(|f| f.offset);
    let mut at = 0;
    for f in &by_off {
        if f.offset > at {
            push(
                "(rust bytes)",
                None,
                None,
                format!(
                    "Rust bytes {at}..{} are in no listed field: a field missing from the row?",
                    f.offset
                ),
            );
        }
        at = at.max(f.offset + f.size);
    }
    if at < row.size {
        push(
            "(rust bytes)",
            None,
            None,
            format!(
                "Rust bytes {at}..{} are in no listed field: a field missing from the row?",
                row.size
            ),
        );
    }

    // Every WGSL member has its Rust field.
    for m in &ws.members {
        let (lo, hi) = (m.offset as usize, (m.offset + m.size) as usize);
        if is_pad(&m.name) {
            // Padding: its bytes must be Rust padding too.
            let covered = (lo..hi).all(|b| {
                row.fields
                    .iter()
                    .any(|f| is_pad(f.name) && (f.offset..f.offset + f.size).contains(&b))
            });
            if !covered {
                let over = row
                    .fields
                    .iter()
                    .find(|f| f.offset < hi && lo < f.offset + f.size);
                let what = match over {
                    Some(f) if !is_pad(f.name) => {
                        format!("WGSL padding lies over Rust field `{}`", f.name)
                    }
                    _ => "WGSL padding bytes are not Rust padding".to_string(),
                };
                push(&m.name, over, Some(m), what);
            }
            continue;
        }
        let Some(f) = row.fields.iter().find(|f| f.name == m.name) else {
            let over = row
                .fields
                .iter()
                .find(|f| f.offset < hi && lo < f.offset + f.size);
            push(
                &m.name,
                over,
                Some(m),
                match over {
                    Some(f) => format!("no Rust field `{}` (Rust has `{}` here)", m.name, f.name),
                    None => format!("no Rust field `{}`", m.name),
                },
            );
            continue;
        };
        if f.offset != lo {
            push(&m.name, Some(f), Some(m), "offset differs".into());
        }
        if f.size != m.size as usize {
            push(
                &m.name,
                Some(f),
                Some(m),
                format!("size differs (rust {}, wgsl {})", f.ty, m.ty),
            );
        }
        if let (Some(rk), Some(wk)) = (rust_kind(f.ty), wgsl_kind(&m.ty)) {
            if rk != wk {
                push(
                    &m.name,
                    Some(f),
                    Some(m),
                    format!("scalar kind differs (rust {}, wgsl {})", f.ty, m.ty),
                );
            }
        }
    }

    // Every Rust field (but padding) is in WGSL.
    for f in &row.fields {
        if !is_pad(f.name) && !ws.members.iter().any(|m| m.name == f.name) {
            push(
                f.name,
                Some(f),
                None,
                format!("no WGSL member `{}`", f.name),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Tests.

#[test]
fn rust_structs_match_wgsl_layout() {
    let parsed = parse_all();
    let get = |id: ModuleId| parsed.iter().find(|p| p.id == id).unwrap();
    let mut bad = Vec::new();
    let mut summary = String::new();
    for row in rows() {
        for &(id, name) in &row.targets {
            let p = get(id);
            let Some(h) = p.find(name) else {
                bad.push(Mismatch {
                    rust: row.rust.to_string(),
                    wgsl: format!("{name} (module {})", id.name()),
                    member: "-".into(),
                    rust_off: "-".into(),
                    wgsl_off: "-".into(),
                    rust_size: row.size.to_string(),
                    wgsl_size: "-".into(),
                    what: format!("module {} has no struct {name}", id.name()),
                });
                continue;
            };
            let ws = p.layout(h);
            let spaces = p.bound_structs().remove(&h).unwrap_or_default();
            let _ = writeln!(
                summary,
                "{:<36} {:>3} B align {:>2} | {:<10} {:<30} span {:>3} align {:>2} {}",
                row.rust,
                row.size,
                row.align,
                ws.name,
                ws.file,
                ws.span,
                ws.align,
                spaces.into_iter().collect::<Vec<_>>().join("+"),
            );
            compare(&row, &ws, id, &mut bad);
        }
    }
    println!("{summary}");
    assert!(
        bad.is_empty(),
        "Rust/WGSL layout mismatches:\n{}",
        table(&bad)
    );
}

/// Every struct reachable from a uniform or storage binding, in any module,
/// is checked by a row (the row may name another module that includes the
/// same file).
#[test]
fn every_bound_struct_has_a_row() {
    let parsed = parse_all();
    let mut covered = BTreeSet::new();
    for row in rows() {
        for &(id, name) in &row.targets {
            let p = parsed.iter().find(|p| p.id == id).unwrap();
            if let Some(h) = p.find(name) {
                covered.insert((p.file_of(h), name.to_string()));
            }
        }
    }
    let mut missing = BTreeSet::new();
    for p in &parsed {
        for (h, spaces) in p.bound_structs() {
            let name = p.module.types[h].name.clone().unwrap_or_default();
            let file = p.file_of(h);
            if !covered.contains(&(file, name.clone())) {
                let spaces: Vec<_> = spaces.into_iter().collect();
                missing.insert(format!(
                    "{name} ({file}, {} in module {}): add a row to tests/layout.rs",
                    spaces.join("+"),
                    p.id.name()
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "WGSL structs bound to buffers with no Rust layout row:\n{}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
}

/// A struct declared in more than one WGSL file (by name, or listed in
/// [`COPIES`]) has the same layout in each: member names, offsets, sizes,
/// types, span and alignment.
#[test]
fn wgsl_struct_copies_agree() {
    let parsed = parse_all();
    // (file, name) -> layout; a file's struct is laid out the same in every module.
    let mut all: BTreeMap<(&'static str, String), WgslStruct> = BTreeMap::new();
    for p in &parsed {
        for h in p.structs() {
            let ws = p.layout(h);
            all.entry((ws.file, ws.name.clone())).or_insert(ws);
        }
    }
    for (copy, original) in COPIES {
        for n in [copy, original] {
            assert!(
                all.keys().any(|(_, name)| name == n),
                "COPIES names struct {n}, which no WGSL file declares: update COPIES"
            );
        }
    }
    let canonical = |name: &str| -> String {
        COPIES
            .iter()
            .find(|(c, _)| *c == name)
            .map_or(name, |(_, o)| o)
            .to_string()
    };
    // The reference of a group is the struct a row checks first (else one
    // under the original name); the others are compared with it.
    let mut primary = BTreeSet::new();
    for row in rows() {
        let (id, name) = row.targets[0];
        let p = parsed.iter().find(|p| p.id == id).unwrap();
        if let Some(h) = p.find(name) {
            primary.insert((p.file_of(h), name.to_string()));
        }
    }
    let mut groups: BTreeMap<String, Vec<&WgslStruct>> = BTreeMap::new();
    for ws in all.values() {
        groups.entry(canonical(&ws.name)).or_default().push(ws);
    }
    for copies in groups.values_mut() {
        copies.sort_by_key(|w| {
            let is_primary = primary.contains(&(w.file, w.name.clone()));
            let is_alias = COPIES.iter().any(|(c, _)| *c == w.name);
            (!is_primary, is_alias, w.file)
        });
    }

    let mut report = String::new();
    let mut summary = String::new();
    for (name, copies) in &groups {
        if copies.len() < 2 {
            continue;
        }
        let _ = writeln!(
            summary,
            "{name}: {}",
            copies
                .iter()
                .map(|w| format!("{} in {} (span {})", w.name, w.file, w.span))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let first = copies[0];
        for other in &copies[1..] {
            if first.same_layout(other) {
                continue;
            }
            let _ = writeln!(
                report,
                "\n{} in {}  vs  {} in {}:",
                first.name, first.file, other.name, other.file
            );
            let a_head = format!("{} ({})", first.name, first.file);
            let b_head = format!("{} ({})", other.name, other.file);
            let _ = writeln!(report, "  {:<4} {:<40} {:<40}", "#", a_head, b_head);
            let cell = |m: Option<&WgslMember>| {
                m.map_or("-".to_string(), |m| {
                    format!("{} @{} +{} {}", m.name, m.offset, m.size, m.ty)
                })
            };
            let n = first.members.len().max(other.members.len());
            for i in 0..n {
                let (a, b) = (first.members.get(i), other.members.get(i));
                let mark = if a == b { " " } else { "*" };
                let _ = writeln!(report, "{mark} {i:<4} {:<40} {:<40}", cell(a), cell(b));
            }
            let mark = if first.span == other.span && first.align == other.align {
                " "
            } else {
                "*"
            };
            let _ = writeln!(
                report,
                "{mark} {:<4} {:<40} {:<40}",
                "size",
                format!("span {} align {}", first.span, first.align),
                format!("span {} align {}", other.span, other.align)
            );
        }
    }
    println!("{summary}");
    assert!(
        report.is_empty(),
        "WGSL struct copies disagree (* marks the differences):{report}"
    );
}
