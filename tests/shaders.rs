//! Every WGSL file parses and validates with naga (no device needed), every
//! file is part of a module, and the structs shared with Rust have the same
//! size on both sides.

use pdevi::gpu::kernels::KernelId;
use pdevi::gpu::layout::{CgState, PdeParams};
use pdevi::gpu::shaders::{self, ModuleId, ALL_SOURCES};

#[test]
fn every_module_validates() {
    let mut failures = Vec::new();
    for &m in ModuleId::ALL {
        let sizes: &[u32] = if m.is_solver() {
            shaders::SOLVER_WGS
        } else {
            &[shaders::DEFAULT_WG]
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

#[test]
fn every_kernel_entry_point_exists() {
    for &k in KernelId::ALL {
        let (m, entry, _) = k.spec();
        let module = shaders::validate(m).unwrap();
        assert!(
            module.entry_points.iter().any(|e| e.name == entry),
            "{}: no entry point {entry}",
            m.name()
        );
    }
}

fn struct_size(module: &naga::Module, name: &str) -> u32 {
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).unwrap();
    let (h, _) = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no struct {name}"));
    layouter[h].size
}

#[test]
fn shared_structs_match_rust() {
    let m = shaders::validate(ModuleId::SolverQ1).unwrap();
    assert_eq!(
        struct_size(&m, "PdeParams") as usize,
        std::mem::size_of::<PdeParams>()
    );
    assert_eq!(
        struct_size(&m, "CgState") as usize,
        std::mem::size_of::<CgState>()
    );
}

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
