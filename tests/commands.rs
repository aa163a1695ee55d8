//! `pdevi solve` and `pdevi simulate` write the spec's array files.

use std::path::PathBuf;

use pdevi::cli::commands;
use pdevi::output::io;
use pdevi::physics::problem::ProblemArgs;
use pdevi::physics::problem::ProblemKind;
use pdevi::physics::solver::CgParams;

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("pdevi-cmd-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

#[test]
fn solve_writes_spec_arrays_and_images() {
    let out = tmp("solve");
    let args = ProblemArgs {
        kind: ProblemKind::Darcy2d,
        n: Some(64),
        d: Some(64),
    };
    let s = commands::solve(&args, None, CgParams::default(), &out).expect("solve failed");
    let (zs, z) = io::read_npy(&out.join("z.npy")).unwrap();
    let (us, u) = io::read_npy(&out.join("u.npy")).unwrap();
    assert_eq!(zs, vec![64, 64]);
    assert_eq!(us, vec![65, 65]);
    assert!(z.iter().all(|v| *v == 0.0), "z = 0 without --xi");
    // Boundary nodes are zero; the maximum is the spec's sanity value.
    for i in 0..65 {
        assert_eq!(u[i], 0.0);
        assert_eq!(u[64 * 65 + i], 0.0);
        assert_eq!(u[i * 65], 0.0);
        assert_eq!(u[i * 65 + 64], 0.0);
    }
    let max = u.iter().cloned().fold(f64::MIN, f64::max);
    assert!((max - 0.0736855).abs() < 2e-6, "max u {max}");
    assert!((s["max_u"].as_f64().unwrap() - max).abs() < 1e-12);
    for f in ["z.png", "u.png", "z.json", "u.json", "solve.json"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
}

#[test]
fn simulate_then_solve_the_truth_reproduces_it() {
    let out = tmp("sim");
    let args = ProblemArgs {
        kind: ProblemKind::Darcy2d,
        n: Some(32),
        d: Some(16),
    };
    commands::simulate(&args, 3, None, Some(0.0), &out).expect("simulate failed");
    let obs = io::read_observations(&out.join("obs.csv"), &io::ObsGrid { dim: 2, n: 32 }).unwrap();
    assert_eq!(obs.len(), 49);
    assert_eq!((obs[0].i, obs[0].j), (4, 4), "first sensor at (n/8, n/8)");
    assert_eq!((obs[1].i, obs[1].j), (8, 4), "k fastest");
    // Noise-free data equal the GPU solve of the true xi at the sensors.
    let solved = out.join("solved");
    commands::solve(
        &args,
        Some(&out.join("xi_true.npy")),
        CgParams {
            rel_tol: 1e-6,
            ..Default::default()
        },
        &solved,
    )
    .unwrap();
    let (_, u) = io::read_npy(&solved.join("u.npy")).unwrap();
    for o in &obs {
        let g = u[o.j * 33 + o.i];
        assert!(
            (g - o.value).abs() < 1e-5 * o.value.abs().max(1e-3),
            "sensor ({}, {}): {g} vs {}",
            o.i,
            o.j,
            o.value
        );
    }
    let (_, zt) = io::read_npy(&out.join("z_true.npy")).unwrap();
    let (_, zs) = io::read_npy(&solved.join("z.npy")).unwrap();
    for (a, b) in zt.iter().zip(&zs) {
        assert!((a - b).abs() < 1e-5, "z: {a} vs {b}");
    }
    // poisson1d arrays are 1-D with n + 1 nodes.
    let p = tmp("sim1d");
    let args = ProblemArgs {
        kind: ProblemKind::Poisson1d,
        n: None,
        d: None,
    };
    commands::simulate(&args, 1, None, None, &p).unwrap();
    let (fs, _) = io::read_npy(&p.join("f_true.npy")).unwrap();
    assert_eq!(fs, vec![129]);
    let obs = io::read_observations(&p.join("obs.csv"), &io::ObsGrid { dim: 1, n: 128 }).unwrap();
    assert_eq!(obs.len(), 15);
    assert_eq!(obs[0].i, 8);
}

/// A grid whose KL basis would not fit in host memory is refused with the
/// figure before anything is allocated (it used to abort the process).
#[test]
fn oversized_grids_are_refused_before_allocation() {
    for n in [8192usize, 100_000] {
        let e = pdevi::Problem::new(pdevi::ProblemKind::Darcy2d, n, 64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("GiB of host memory") && e.contains("--n"), "{e}");
    }
}
