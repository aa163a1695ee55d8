//! Simulation-based calibration: the checker passes the exact poisson1d
//! posterior at its nominal coverage, flags one whose std is halved, and
//! scores the Laplace method (exact on this linear problem) the same way.

use pdevi::check::calibrate::{CalibrateSettings, Method};
use pdevi::cli::calibrate::calibrate;
use pdevi::cli::run::RunConfig;

fn cfg(name: &str, problem: &str) -> RunConfig {
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&out);
    RunConfig {
        problem: Some(problem.into()),
        out: Some(out),
        quiet: Some(true),
        seed: Some(3),
        ..Default::default()
    }
}

fn settings(method: Method, std_scale: f64) -> CalibrateSettings {
    CalibrateSettings {
        method,
        problems: 100,
        draws: 99,
        bins: 20,
        std_scale,
        encoder: None,
        surrogate: None,
    }
}

fn coverage(v: &serde_json::Value, key: &str, level: &str) -> f64 {
    v[key][level].as_f64().unwrap_or(f64::NAN)
}

#[test]
fn exact_posterior_covers_at_the_nominal_rate() {
    let c = cfg("calibrate_exact", "poisson1d");
    let v = calibrate(&c, &settings(Method::Exact, 1.0)).unwrap();
    for level in ["0.5", "0.8", "0.9", "0.95"] {
        let p: f64 = level.parse().unwrap();
        let got = coverage(&v, "coverage", level);
        let se = coverage(&v, "coverage_standard_error", level);
        // Binomial floor: 100 problems x 32 coordinates, correlated within a
        // problem, so the spread over problems gives the standard error.
        assert!(se > 0.0 && se < 0.02, "standard error {se}");
        assert!(
            (got - p).abs() <= 3.0 * se,
            "coverage at {level}: {got} (se {se})"
        );
        let gf = coverage(&v, "coverage_field", level);
        assert!((gf - p).abs() < 0.05, "field coverage at {level}: {gf}");
    }
    assert_eq!(v["calibrated"], true, "{v:#}");
    let p = v["sbc"]["p_value"].as_f64().unwrap();
    assert!(p > 1e-3, "SBC ranks should be uniform: p = {p}");
    let counts: Vec<u64> = serde_json::from_value(v["sbc"]["counts"].clone()).unwrap();
    assert_eq!(counts.iter().sum::<u64>(), 100 * 32);
    assert!(v["expected_coverage_error"].as_f64().unwrap() < 0.02);
    let out = c.out.unwrap();
    for f in ["calibration.json", "coverage.png", "sbc_ranks.png"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
}

#[test]
fn halved_std_is_flagged_as_over_confident() {
    let v = calibrate(
        &cfg("calibrate_halved", "poisson1d"),
        &settings(Method::Exact, 0.5),
    )
    .unwrap();
    assert_eq!(v["calibrated"], false);
    // For a Gaussian posterior with its std halved, a central interval at
    // level p covers 2 Phi(z_p / 2) - 1: 0.589 at 0.9.
    let got = coverage(&v, "coverage", "0.9");
    assert!((got - 0.589).abs() < 0.03, "coverage at 0.9: {got}");
    assert!(v["expected_coverage_error"].as_f64().unwrap() > 0.2);
    assert!(v["sbc"]["p_value"].as_f64().unwrap() < 1e-6);
}

#[test]
fn laplace_is_calibrated_on_the_linear_problem_and_bad_settings_are_refused() {
    let v = calibrate(
        &cfg("calibrate_laplace", "poisson1d"),
        &settings(Method::Laplace, 1.0),
    )
    .unwrap();
    let e = calibrate(
        &cfg("calibrate_exact_2", "poisson1d"),
        &settings(Method::Exact, 1.0),
    )
    .unwrap();
    assert_eq!(v["calibrated"], true);
    for level in ["0.5", "0.8", "0.9", "0.95"] {
        let (a, b) = (
            coverage(&v, "coverage", level),
            coverage(&e, "coverage", level),
        );
        // Same truths and data; Laplace = exact up to f32, so at most a
        // few of the 3200 coordinates sit on an interval's edge.
        assert!(
            (a - b).abs() <= 3.0 / 3200.0,
            "{level}: laplace {a} exact {b}"
        );
    }
    let err = calibrate(
        &cfg("calibrate_bad", "darcy2d"),
        &settings(Method::Exact, 1.0),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("poisson1d"), "{err}");
    let mut s = settings(Method::Exact, 1.0);
    s.problems = 0;
    let err = calibrate(&cfg("calibrate_bad2", "poisson1d"), &s)
        .unwrap_err()
        .to_string();
    assert!(err.contains("problems"), "{err}");
    assert!(Method::parse("bogus", None, 8).is_err());
}

#[test]
fn mcmc_draws_are_scored_like_the_exact_posterior() {
    // Laplace-preconditioned pCN on 20 poisson1d problems: draws, not moments,
    // go through the scorer (empirical ranks and intervals from the draws).
    let mut c = cfg("calibrate_mcmc", "poisson1d");
    c.sampler = Some("pcn".into());
    c.chains = Some(16);
    c.warmup = Some(200);
    c.samples = Some(200);
    let mut s = settings(Method::Mcmc, 1.0);
    s.problems = 20;
    let v = calibrate(&c, &s).unwrap();
    assert_eq!(v["method"], "mcmc");
    for level in ["0.5", "0.8", "0.9", "0.95"] {
        let p: f64 = level.parse().unwrap();
        let got = coverage(&v, "coverage", level);
        let se = coverage(&v, "coverage_standard_error", level);
        assert!(
            (got - p).abs() <= 3.0 * se + 0.01,
            "{level}: {got} (se {se})"
        );
    }
    assert_eq!(v["calibrated"], true, "{v:#}");
}
