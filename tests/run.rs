//! `pdevi run` end to end on darcy2d (n = 32): the posterior beats the prior,
//! covers the truth, writes every output, and is deterministic; bad configs
//! and observation files give clear errors.

use std::path::PathBuf;

use pdevi::cli::run::{run, RunConfig};

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("pdevi-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn config(out: PathBuf) -> RunConfig {
    RunConfig {
        problem: Some("darcy2d".into()),
        n: Some(32),
        d: Some(32),
        simulate_seed: Some(5),
        family: Some("full-rank".into()),
        samples: Some(8),
        steps: Some(150),
        lr: Some(0.05),
        lr_final: Some(0.2),
        seed: Some(1),
        predictive_samples: Some(16),
        out: Some(out),
        quiet: Some(true),
        ..Default::default()
    }
}

#[test]
fn darcy2d_end_to_end_beats_prior_covers_truth_and_is_deterministic() {
    let a = tmp("a");
    let m = run(&config(a.clone())).expect("run failed");
    eprintln!("{}", serde_json::to_string_pretty(&m).unwrap());
    let err = m["rel_l2_error_posterior_mean"].as_f64().unwrap();
    let cover3 = m["truth_within_3sd"].as_f64().unwrap();
    // The prior mean (z = 0) has relative error 1 by definition.
    assert!(
        err < 0.7,
        "posterior mean no better than the prior: rel. error {err}"
    );
    assert!(
        cover3 > 0.9,
        "truth within 3 sd at only {cover3} of the cells"
    );
    for f in [
        "posterior_mean_xi.npy",
        "posterior_cov_xi.npy",
        "posterior_mean_z.npy",
        "posterior_std_z.npy",
        "posterior_mean_u.npy",
        "posterior_std_u.npy",
        "posterior_mean_z.png",
        "posterior_std_z.png",
        "summary.png",
        "elbo.csv",
        "elbo.png",
        "metrics.json",
    ] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    let (shape, _) = pdevi::output::io::read_npy(&a.join("posterior_mean_u.npy")).unwrap();
    assert_eq!(shape, vec![33, 33]);
    let trace = std::fs::read_to_string(a.join("elbo.csv")).unwrap();
    assert_eq!(trace.lines().count(), 151, "header + one row per step");
    // Same seed, same device: identical posterior.
    let b = tmp("b");
    run(&config(b.clone())).expect("second run failed");
    let (_, ma) = pdevi::output::io::read_npy(&a.join("posterior_mean_xi.npy")).unwrap();
    let (_, mb) = pdevi::output::io::read_npy(&b.join("posterior_mean_xi.npy")).unwrap();
    assert_eq!(ma, mb, "runs with the same seed differ");
}

#[test]
fn bad_config_and_bad_observations_are_clear_errors() {
    let dir = tmp("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let toml = dir.join("c.toml");
    std::fs::write(&toml, "problem = \"darcy2d\"\nstepz = 10\n").unwrap();
    let e = RunConfig::load(&toml).unwrap_err().to_string();
    assert!(e.contains("c.toml:2") && e.contains("stepz"), "{e}");

    let csv = dir.join("obs.csv");
    std::fs::write(&csv, "x,y,value\n0.5,0.5,0.01\n0.3,0.5,0.02\n").unwrap();
    let mut cfg = config(dir.join("out"));
    cfg.obs = Some(csv.clone());
    let e = run(&cfg).unwrap_err().to_string();
    assert!(e.contains("obs.csv:3") && e.contains("0.3"), "{e}");

    let mut cfg = config(dir.join("out2"));
    cfg.family = Some("diagonalish".into());
    let e = run(&cfg).unwrap_err().to_string();
    assert!(e.contains("mean-field, full-rank or low-rank"), "{e}");
}

/// `--profile`: GPU timestamps between the sections of every step, summed;
/// the sections account for the GPU time of a step and fit in its wall time.
#[test]
fn profile_times_the_sections_of_a_step() {
    let out = tmp("profile");
    let cfg = RunConfig {
        steps: Some(30),
        profile: Some(true),
        ..config(out.clone())
    };
    let m = run(&cfg).expect("a profiled run");
    let p = &m["profile"];
    let wall = p["wall_seconds_per_step"]
        .as_f64()
        .expect("wall time per step");
    assert!(wall > 0.0, "{p}");
    if p["timestamps"] == true {
        let sections = p["sections"].as_array().unwrap();
        let names: Vec<&str> = sections
            .iter()
            .map(|s| s["section"].as_str().unwrap())
            .collect();
        for want in [
            "forward solves (KL map, CG)",
            "misfit, adjoint solves, pullback to xi",
            "Adam",
        ] {
            assert!(names.contains(&want), "{names:?}");
        }
        let share: f64 = sections.iter().map(|s| s["share"].as_f64().unwrap()).sum();
        assert!((share - 1.0).abs() < 1e-9, "{p}");
        assert_eq!(p["steps"], 30);
        let gpu_per_step = p["seconds"].as_f64().unwrap() / 30.0;
        // The GPU time of a step is at most its wall time (plus clock noise).
        assert!(
            gpu_per_step > 0.0 && gpu_per_step < 1.5 * wall,
            "gpu {gpu_per_step}, wall {wall}"
        );
        // The solves dominate a darcy2d step.
        let solves: f64 = sections
            .iter()
            .filter(|s| s["section"].as_str().unwrap().contains("solves"))
            .map(|s| s["share"].as_f64().unwrap())
            .sum();
        assert!(solves > 0.5, "{p}");
    } else {
        assert!(p["note"].as_str().unwrap().contains("timestamp"), "{p}");
    }
}
