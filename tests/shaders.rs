//! Every WGSL file parses and validates with naga (no device needed), every
//! file is part of a module, and the structs shared with Rust have the same
//! size on both sides.

use pdevi::gpu::kernels::{Bind, KernelId};
use pdevi::gpu::shaders::{self, ModuleId, ALL_SOURCES};

#[test]
fn every_module_validates() {
    let mut failures = Vec::new();
    for &m in ModuleId::ALL {
        let sizes: &[u32] = if m.is_solver() {
            shaders::SOLVER_WGS
        } else {
            &[m.fixed_wg().unwrap_or(shaders::DEFAULT_WG)]
        };
        for &wg in sizes {
            if let Err(e) = shaders::validate_with(m, wg) {
                failures.push(format!("(WG = {wg}) {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "invalid shaders:\n{}",
        failures.join("\n\n")
    );
}

#[test]
fn every_wgsl_file_is_listed_and_used() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let mut on_disk = Vec::new();
    let mut stack = vec![std::path::PathBuf::from(root)];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "wgsl") {
                let rel = p.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
                on_disk.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    for f in &on_disk {
        assert!(
            ALL_SOURCES.iter().any(|s| s.path == f),
            "{f} is not in shaders::ALL_SOURCES, so nothing validates it"
        );
    }
    for s in ALL_SOURCES {
        assert!(
            ModuleId::ALL
                .iter()
                .any(|m| m.sources().iter().any(|x| x.path == s.path)),
            "{} is in no module",
            s.path
        );
    }
}

/// (group, binding, access, WGSL name) of every global that kernel `k`'s
/// entry point uses, by naga's reflection; `None` if the entry is missing.
fn used_bindings(k: KernelId) -> Option<Vec<(u32, u32, Bind, String)>> {
    use naga::{AddressSpace, StorageAccess};
    let spec = k.spec();
    let (module, info) = shaders::reflect(spec.module).unwrap();
    let ep = module
        .entry_points
        .iter()
        .position(|e| e.name == spec.entry)?;
    assert!(
        module.entry_points[ep].workgroup_size[0] > 0,
        "{}: workgroup size 0",
        k.label()
    );
    let uses = info.get_entry_point(ep);
    let mut used = Vec::new();
    for (h, var) in module.global_variables.iter() {
        let Some(rb) = &var.binding else { continue };
        if uses[h].is_empty() {
            continue;
        }
        let kind = match var.space {
            AddressSpace::Uniform => Bind::Uniform,
            AddressSpace::Storage { access } if access.contains(StorageAccess::STORE) => {
                Bind::ReadWrite
            }
            AddressSpace::Storage { .. } => Bind::Read,
            other => panic!("{}: unexpected address space {other:?}", k.label()),
        };
        used.push((
            rb.group,
            rb.binding,
            kind,
            var.name.clone().unwrap_or_default(),
        ));
    }
    Some(used)
}

/// Every row of the kernel table against naga's reflection of the WGSL: the
/// entry point exists, every binding it uses is in the table with the same
/// access, and a table binding it does not use is one that a kernel sharing
/// its bind-group layout uses alike (the solver's start, iterate and Jacobi
/// kernels take one bind group, the P1 ones the Q1 layout).
#[test]
fn kernel_table_matches_wgsl_reflection() {
    let used: Vec<_> = KernelId::ALL.iter().map(|&k| used_bindings(k)).collect();
    let mut failures = Vec::new();
    for &k in KernelId::ALL {
        let spec = k.spec();
        let Some(mine) = &used[k.index()] else {
            failures.push(format!("{}: no entry point {}", k.label(), spec.entry));
            continue;
        };
        for u in mine {
            if !spec
                .bindings
                .iter()
                .any(|b| u.0 == 0 && b.binding == u.1 && b.kind == u.2)
            {
                failures.push(format!(
                    "{}: {} (group {}, binding {}, {:?}) is used but not in the table",
                    k.label(),
                    u.3,
                    u.0,
                    u.1,
                    u.2
                ));
            }
        }
        for b in spec.bindings {
            if mine.iter().any(|u| u.1 == b.binding) {
                continue;
            }
            let shared = KernelId::ALL.iter().any(|&o| {
                let os = o.spec();
                o != k
                    && (os.module == spec.module || os.entry == spec.entry)
                    && os.bindings == spec.bindings
                    && used[o.index()]
                        .as_ref()
                        .is_some_and(|ou| ou.iter().any(|u| u.1 == b.binding && u.2 == b.kind))
            });
            if !shared {
                failures.push(format!(
                    "{}: {}@{} {:?} is in the table but no kernel with its layout uses it",
                    k.label(),
                    b.name,
                    b.binding,
                    b.kind
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "kernel table and WGSL disagree:\n{}",
        failures.join("\n")
    );
}

/// The check above fails on a wrongly wired row: a table that called a
/// read-write binding read-only would be caught.
#[test]
fn kernel_table_check_detects_wrong_access() {
    let used = used_bindings(KernelId::KlMap).unwrap();
    let z = used.iter().find(|u| u.3 == "z").expect("kl_map writes z");
    assert_eq!(z.2, Bind::ReadWrite);
    let row = KernelId::KlMap
        .spec()
        .bindings
        .iter()
        .find(|b| b.binding == z.1)
        .unwrap();
    assert_eq!(row.kind, Bind::ReadWrite);
    assert_ne!(Bind::Read, z.2, "a read-only row for z would not match");
}

// Struct sizes and offsets shared with Rust: tests/layout.rs.

#[test]
fn broken_shader_error_names_file_and_line() {
    // A module whose third line (in its own file) calls an undefined function.
    let good = "fn ok() -> f32 {\n    return 1.0;\n}\n";
    let bad = "// a kernel\n@compute @workgroup_size(1)\nfn main() { let x = missing_fn(); }\n";
    let mut text = String::from(good);
    text.push('\n');
    let start = text.lines().count() + 1;
    text.push_str(bad);
    let asm = shaders::Assembled {
        text,
        map: vec![
            ("shaders/good.wgsl", 1, start - 1),
            ("shaders/bad.wgsl", start, 4),
        ],
    };
    let err = shaders::validate_assembled("broken", &asm)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shaders/bad.wgsl:3"), "{err}");
    assert!(err.contains("missing_fn"), "{err}");
}

#[test]
fn broken_shader_reports_file_and_line() {
    // The error path must name the original file: check the line mapping.
    let asm = shaders::assemble(ModuleId::SolverQ1);
    let first = asm.map[1];
    let last = asm.map[asm.map.len() - 1];
    assert_eq!(asm.origin(first.1), (first.0, 1));
    assert_eq!(asm.origin(last.1 + 4), (last.0, 5));
}

/// Every kernel of the table is run directly by some test against its
/// mirror (named as `KernelId::<Kernel>` in a test file), not only through
/// a whole pipeline.
#[test]
fn every_kernel_has_a_direct_test() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests");
    let mut text = String::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("shaders.rs") {
            text.push_str(&std::fs::read_to_string(&p).unwrap());
        }
    }
    let missing: Vec<String> = KernelId::ALL
        .iter()
        .map(|k| format!("KernelId::{k:?}"))
        .filter(|name| {
            // A whole-word match: `KernelId::Matmul` must not count for `MatmulBlocked`.
            !text.match_indices(name.as_str()).any(|(i, _)| {
                !text[i + name.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "kernels without a direct test: {missing:?}"
    );
}
