//! MAP and Laplace: the adjoint Jacobian against finite differences, exact
//! on the linear poisson1d, a converged MAP on darcy2d, and `pdevi laplace`'s
//! output folder.

mod common;

use common::ctx;
use pdevi::cli::run::RunConfig;
use pdevi::infer::laplace::{gauss_newton, GaussNewton};
use pdevi::physics::problem::{Problem, ProblemKind};
use pdevi::physics::reference;
use pdevi::physics::solver::CgParams;

fn simulate(pb: &Problem, seed: u64) -> (Vec<f64>, Vec<f64>) {
    reference::simulate_data(pb, seed)
}

/// G(x) at the sensors in f64.
fn g_cpu(pb: &Problem, x: &[f64]) -> Vec<f64> {
    let u = reference::forward(pb, x, 1e-13, 100_000).u;
    pb.sensors.iter().map(|&k| u[k]).collect()
}

fn cg() -> CgParams {
    CgParams {
        rel_tol: 1e-6,
        ..Default::default()
    }
}

#[test]
fn adjoint_jacobian_matches_finite_differences() {
    let ctx = ctx();
    for (kind, n, d) in [
        (ProblemKind::Darcy2d, 16, 12),
        (ProblemKind::Poisson1d, 64, 8),
    ] {
        let pb = Problem::new(kind, n, d).unwrap();
        let (_, y) = simulate(&pb, 3);
        let gn = GaussNewton::new(ctx, &pb, &pb.sensors, &y, cg()).unwrap();
        let x: Vec<f64> = pdevi::rng::normals(9, 1, 0, d)
            .iter()
            .map(|v| 0.5 * v)
            .collect();
        let (g, j) = gn.jacobian(ctx, &x).unwrap();
        let g0 = g_cpu(&pb, &x);
        let gmax = g0.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        for (a, b) in g.iter().zip(&g0) {
            assert!((a - b).abs() < 1e-5 * gmax, "{kind:?}: G {a} vs f64 {b}");
        }
        let ns = pb.sensors.len();
        let jmax = j.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        let h = 1e-5;
        for k in 0..d {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[k] += h;
            xm[k] -= h;
            let (gp, gm) = (g_cpu(&pb, &xp), g_cpu(&pb, &xm));
            for s in 0..ns {
                let fd = (gp[s] - gm[s]) / (2.0 * h);
                let err = (j[s * d + k] - fd).abs() / jmax;
                assert!(
                    err < 2e-3,
                    "{kind:?}: J[{s}, {k}] = {} vs FD {fd} (rel {err:.2e})",
                    j[s * d + k]
                );
            }
        }
    }
}

#[test]
fn laplace_is_exact_on_poisson1d() {
    let ctx = ctx();
    let pb = Problem::default_for(ProblemKind::Poisson1d);
    let d = pb.d;
    let (_, y) = simulate(&pb, 11);
    let exact = pdevi::infer::linear::LinearPosterior::new(&pb);
    let (mu, prec, cov) = (exact.mean(&pb, &y), &exact.prec, &exact.cov);

    let gn = GaussNewton::new(ctx, &pb, &pb.sensors, &y, cg()).unwrap();
    let lp = gauss_newton(ctx, &gn, &vec![0.0; d], 10).unwrap();
    // Linear model: one Gauss-Newton step is the exact answer (then at most
    // one more that only polishes f32 rounding).
    assert!(lp.iterations <= 2, "iterations {}", lp.iterations);
    // Errors in the posterior's own metric: (m - mu)^T P (m - mu) is the
    // squared Mahalanobis distance; f32 Jacobians give about 1e-5 here.
    let dm: Vec<f64> = lp.map.iter().zip(&mu).map(|(a, b)| a - b).collect();
    let maha: f64 = (0..d)
        .map(|a| (0..d).map(|b| dm[a] * prec[a * d + b] * dm[b]).sum::<f64>())
        .sum::<f64>()
        .sqrt();
    // Covariance: relative error of each marginal sd and of the precision.
    let worst_sd = (0..d)
        .map(|i| ((lp.cov[i * d + i] / cov[i * d + i]).sqrt() - 1.0).abs())
        .fold(0.0f64, f64::max);
    let pl = pdevi::math::linalg::spd_inverse(&lp.cov, d).unwrap().0;
    let num: f64 = pl.iter().zip(prec).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f64 = prec.iter().map(|a| a * a).sum();
    let prec_err = (num / den).sqrt();
    eprintln!(
        "poisson1d Laplace vs exact: Mahalanobis error of the mean {maha:.2e}, worst sd rel err {worst_sd:.2e}, precision rel err {prec_err:.2e}, {} GN iterations",
        lp.iterations
    );
    assert!(maha < 5e-4, "Mahalanobis error of the MAP {maha}");
    assert!(worst_sd < 1e-5, "marginal sd error {worst_sd}");
    assert!(prec_err < 1e-6, "precision error {prec_err}");
}

#[test]
fn gauss_newton_reaches_the_darcy2d_map() {
    let ctx = ctx();
    let pb = Problem::new(ProblemKind::Darcy2d, 16, 16).unwrap();
    let (_, y) = simulate(&pb, 5);
    let gn = GaussNewton::new(ctx, &pb, &pb.sensors, &y, cg()).unwrap();
    let lp = gauss_newton(ctx, &gn, &vec![0.0; pb.d], 30).unwrap();
    for w in lp.history.windows(2) {
        assert!(w[1] < w[0], "objective rose: {:?}", lp.history);
    }
    // The f64 gradient of Phi + |x|^2/2 at the MAP against the one at 0.
    let scale = 1.0 / (pb.sigma_n * pb.sigma_n);
    let grad = |x: &[f64]| -> f64 {
        let (_, g) = reference::misfit_gradient(&pb, x, &pb.sensors, &y, scale, 1e-12);
        g.iter()
            .zip(x)
            .map(|(a, b)| (a + b) * (a + b))
            .sum::<f64>()
            .sqrt()
    };
    let (g0, g1) = (grad(&vec![0.0; pb.d]), grad(&lp.map));
    eprintln!(
        "darcy2d n=16 MAP: {} GN iterations, objective {:?}, |grad| {g0:.3e} -> {g1:.3e}",
        lp.iterations, lp.history
    );
    assert!(g1 < 1e-3 * g0, "gradient at the MAP {g1} (at 0: {g0})");
    // The covariance is SPD and narrower than the prior.
    for i in 0..pb.d {
        let v = lp.cov[i * pb.d + i];
        assert!(v > 0.0 && v < 1.0, "variance [{i}] = {v}");
    }
}

#[test]
fn laplace_command_writes_the_run_files() {
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("laplace_cmd");
    let _ = std::fs::remove_dir_all(&out);
    let cfg = RunConfig {
        problem: Some("poisson1d".into()),
        out: Some(out.clone()),
        quiet: Some(true),
        ..Default::default()
    };
    let m = pdevi::cli::laplace::run_laplace(&cfg).unwrap();
    assert_eq!(m["method"], "laplace");
    for f in [
        "posterior_mean_xi.npy",
        "posterior_cov_xi.npy",
        "posterior_mean_f.npy",
        "posterior_std_f.npy",
        "posterior_mean_u.npy",
        "summary.png",
        "metrics.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let bad = RunConfig {
        gn_iters: Some(0),
        ..cfg
    };
    // Zero iterations is allowed (the prior-mean linearisation), but the
    // result must still be a valid Gaussian.
    let m = pdevi::cli::laplace::run_laplace(&bad).unwrap();
    assert_eq!(m["gauss_newton_iterations"], 0);
}

/// `laplace --profile`: the wall time of each Gauss-Newton phase (each ends
/// with a read-back), summing to the loop's time.
#[test]
fn laplace_profile_splits_the_gauss_newton_time() {
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("laplace_profile");
    let _ = std::fs::remove_dir_all(&out);
    let cfg = RunConfig {
        problem: Some("darcy2d".into()),
        n: Some(16),
        d: Some(8),
        out: Some(out),
        quiet: Some(true),
        profile: Some(true),
        ..Default::default()
    };
    let m = pdevi::cli::laplace::run_laplace(&cfg).unwrap();
    let p = &m["profile"];
    let sections = p["sections"].as_array().expect("sections");
    assert_eq!(sections.len(), 3, "{p}");
    let share: f64 = sections.iter().map(|s| s["share"].as_f64().unwrap()).sum();
    assert!((share - 1.0).abs() < 1e-9, "{p}");
    let total = p["seconds"].as_f64().unwrap();
    let wall = m["wall_seconds"].as_f64().unwrap();
    assert!(
        total > 0.0 && total <= wall * 1.01,
        "phases {total} s, loop {wall} s"
    );
    // The Jacobians (d + 1 solves per iteration) cost the most.
    assert!(sections[0]["share"].as_f64().unwrap() > 0.3, "{p}");
}
