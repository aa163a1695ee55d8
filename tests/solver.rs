//! The batched solver against the spec: sanity values, KL eigenvalues,
//! second-order convergence, adjoint gradients, CG convergence and its
//! failure reports.

mod common;

use common::{assert_close, ctx, read, run, upload, Rng};
use pdevi::cpu::physics::{self as cpu, Op};
use pdevi::gpu::layout::{status, CgState, PdeParams};
use pdevi::gpu::KernelId;
use pdevi::physics::problem::{Problem, ProblemKind};
use pdevi::physics::reference;
use pdevi::physics::solver::{check_converged, BatchedSolver, CgParams};

#[test]
fn kl_eigenvalues_match_spec() {
    let pb = Problem::new(ProblemKind::Darcy2d, 64, 64).unwrap();
    assert_eq!(
        &pb.modes[..6],
        &[(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (2, 0)]
    );
    assert!(
        (pb.lambda[0] - 0.568758).abs() < 1e-6,
        "lambda_1 = {}",
        pb.lambda[0]
    );
    assert!(
        (pb.lambda[63] - 9.9592e-5).abs() < 1e-8,
        "lambda_64 = {}",
        pb.lambda[63]
    );
    let total: f64 = pb.lambda.iter().sum();
    assert!((total - 1.0).abs() < 1e-12);
    // Orthonormal modes: the cell-centre basis rows are orthogonal with weight h^2.
    let b = pb.basis();
    let nc = pb.ncoef();
    let h2 = pb.h() * pb.h();
    for (a, c) in [(0usize, 1usize), (1, 2), (3, 10), (5, 5)] {
        let dot: f64 = (0..nc).map(|i| b[a * nc + i] * b[c * nc + i]).sum::<f64>() * h2;
        let want = if a == c { pb.lambda[a] } else { 0.0 };
        assert!((dot - want).abs() < 1e-12, "modes {a},{c}: {dot}");
    }
}

#[test]
fn sanity_max_u_for_z_zero() {
    let pb = Problem::new(ProblemKind::Darcy2d, 64, 64).unwrap();
    let xi = vec![0.0; 64];
    // f64 CPU mirror.
    let cpu = reference::forward(&pb, &xi, 1e-12, 10_000);
    assert_eq!(cpu.state.status, status::CONVERGED);
    let max_cpu = cpu.u.iter().cloned().fold(f64::MIN, f64::max);
    eprintln!("max u (cpu f64) = {max_cpu:.9}");
    assert!((max_cpu - 0.0736855).abs() < 5e-7, "cpu max u = {max_cpu}");
    // GPU f32.
    let ctx = ctx();
    let cg = CgParams {
        rel_tol: 1e-6,
        ..Default::default()
    };
    let s = BatchedSolver::new(ctx, &pb, 2, cg, None, false).unwrap();
    let info = s.solve(ctx, &vec![0.0; 128]).unwrap();
    check_converged(&info, "sanity solve", &cg).unwrap();
    let u = s.read_u(ctx).unwrap();
    let max_gpu = u[..pb.nunk()].iter().cloned().fold(f64::MIN, f64::max);
    eprintln!(
        "max u (gpu f32) = {max_gpu:.9}, {} CG iterations",
        info[0].iters
    );
    assert!((max_gpu - 0.0736855).abs() < 2e-6, "gpu max u = {max_gpu}");
    // Both systems of the batch give the same answer.
    assert_close("batch copies", &u[pb.nunk()..], &u[..pb.nunk()], 0.0, 0.0);
}

/// Manufactured solution u* = sin(pi x) sin(pi y), kappa = exp(0.5 x y) at the
/// cell centres, load h^2 f at the nodes. Returns (n, max nodal error).
fn manufactured(n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    use std::f64::consts::PI;
    let h = 1.0 / n as f64;
    let kappa = |x: f64, y: f64| (0.5 * x * y).exp();
    let mut coef = vec![0.0; n * n];
    for j in 0..n {
        for i in 0..n {
            coef[j * n + i] = kappa((i as f64 + 0.5) * h, (j as f64 + 0.5) * h);
        }
    }
    let m = n - 1;
    let mut rhs = vec![0.0; m * m];
    let mut exact = vec![0.0; m * m];
    for j in 1..n {
        for i in 1..n {
            let (x, y) = (i as f64 * h, j as f64 * h);
            let u = (PI * x).sin() * (PI * y).sin();
            let ux = PI * (PI * x).cos() * (PI * y).sin();
            let uy = PI * (PI * x).sin() * (PI * y).cos();
            let k = kappa(x, y);
            let f = k * (2.0 * PI * PI * u - 0.5 * y * ux - 0.5 * x * uy);
            rhs[(j - 1) * m + i - 1] = h * h * f;
            exact[(j - 1) * m + i - 1] = u;
        }
    }
    (coef, rhs, exact)
}

fn max_err(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn orders(errs: &[(usize, f64)]) -> Vec<f64> {
    errs.windows(2).map(|w| (w[0].1 / w[1].1).log2()).collect()
}

#[test]
fn q1_converges_at_second_order_cpu_and_gpu() {
    let mut cpu_errs = Vec::new();
    for n in [16, 32, 64, 128] {
        let (coef, rhs, exact) = manufactured(n);
        let nu = (n - 1) * (n - 1);
        let mut p = PdeParams::new(n, nu, n * n, 1, 1);
        p.max_iter = 20_000;
        let mut x = vec![0.0; nu];
        let mut work = vec![0.0; 4 * nu];
        let mut st = [cpu::CgState::default()];
        cpu::cg_solve_tol(Op::Q1, &p, 1e-13, &coef, &rhs, &mut x, &mut work, &mut st);
        assert_eq!(st[0].status, status::CONVERGED);
        cpu_errs.push((n, max_err(&x, &exact)));
    }
    let o = orders(&cpu_errs);
    eprintln!("cpu f64 max nodal errors {cpu_errs:?}, observed orders {o:?}");
    for v in &o {
        assert!(
            (1.8..=2.2).contains(v),
            "cpu order {v} outside [1.8, 2.2]: {cpu_errs:?}"
        );
    }

    let ctx = ctx();
    let mut gpu_errs = Vec::new();
    for n in [16usize, 32, 64, 128] {
        let (coef, rhs, exact) = manufactured(n);
        let nu = (n - 1) * (n - 1);
        let mut p = PdeParams::new(n, nu, n * n, 1, 1);
        p.tol = 1e-7;
        p.max_iter = 5000;
        // Bounded dispatches, as BatchedSolver records them.
        p.chunk = pdevi::physics::solver::max_chunk(nu, ctx.solver_wg).unwrap();
        let bp = ctx.uniform("p", &p);
        let bc = upload(ctx, "coef", &coef);
        let br = upload(ctx, "rhs", &rhs);
        let bx = ctx.storage("x", (nu * 4) as u64).unwrap();
        let bw = ctx.storage("work", (4 * nu * 4) as u64).unwrap();
        let bs = ctx.storage("state", 32).unwrap();
        let bufs = [&bp, &bc, &br, &bx, &bw, &bs];
        run(ctx, KernelId::CgStartQ1, &bufs, [1, 1]);
        for _ in 0..p.max_iter.div_ceil(p.chunk) {
            run(ctx, KernelId::CgIterateQ1, &bufs, [1, 1]);
        }
        let st: Vec<CgState> = ctx.read(&bs, 0, 1).unwrap();
        gpu_errs.push((
            n,
            max_err(&read(ctx, &bx, nu), &exact),
            st[0].iters,
            st[0].status,
        ));
    }
    let ge: Vec<(usize, f64)> = gpu_errs.iter().map(|e| (e.0, e.1)).collect();
    let o = orders(&ge);
    eprintln!("gpu f32 (n, max error, iters, status) {gpu_errs:?}, observed orders {o:?}");
    // f32 still resolves the O(h^2) error at n = 128 (the solution error
    // of the f32 solve is ~1e-6 relative, the discretisation error 1.5e-4).
    for v in &o {
        assert!(
            (1.8..=2.2).contains(v),
            "gpu order {v} outside [1.8, 2.2]: {gpu_errs:?}"
        );
    }
}

fn simulate_data(pb: &Problem, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut rng = Rng::new(seed);
    let xi_true = rng.vec_normal(pb.d);
    let fwd = reference::forward(pb, &xi_true, 1e-12, 100_000);
    let y: Vec<f64> = pb
        .sensors
        .iter()
        .map(|&s| fwd.u[s] + pb.sigma_n * rng.normal())
        .collect();
    (xi_true, y)
}

#[test]
fn adjoint_gradient_matches_finite_differences_on_cpu() {
    for (kind, n, d) in [
        (ProblemKind::Darcy2d, 16, 12),
        (ProblemKind::Poisson1d, 64, 16),
    ] {
        let pb = Problem::new(kind, n, d).unwrap();
        let (_, y) = simulate_data(&pb, 5);
        let xi = Rng::new(9).vec_normal(d);
        // J(xi) = 0.5 |P u(xi) - y|^2 (scale 1).
        let (j0, g) = reference::misfit_gradient(&pb, &xi, &pb.sensors, &y, 1.0, 1e-14);
        assert!(j0 > 0.0);
        let eps = 1e-5;
        let mut worst: f64 = 0.0;
        for k in 0..d {
            let mut xp = xi.clone();
            xp[k] += eps;
            let mut xm = xi.clone();
            xm[k] -= eps;
            let jp = reference::misfit_gradient(&pb, &xp, &pb.sensors, &y, 1.0, 1e-14).0;
            let jm = reference::misfit_gradient(&pb, &xm, &pb.sensors, &y, 1.0, 1e-14).0;
            let fd = (jp - jm) / (2.0 * eps);
            let gmax = g.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            let rel = (fd - g[k]).abs() / gmax;
            worst = worst.max(rel);
            assert!(
                rel < 1e-5,
                "{kind:?} dJ/dxi_{k}: adjoint {} fd {fd} (rel {rel:e})",
                g[k]
            );
        }
        eprintln!("{kind:?}: worst relative FD error {worst:e}");
    }
}

#[test]
fn gpu_gradient_matches_cpu() {
    let ctx = ctx();
    for (kind, n, d, batch) in [
        (ProblemKind::Darcy2d, 32, 16, 3),
        (ProblemKind::Poisson1d, 128, 32, 4),
    ] {
        let pb = Problem::new(kind, n, d).unwrap();
        let (_, y) = simulate_data(&pb, 3);
        let xi = Rng::new(21).vec_normal(batch * d);
        let cg = CgParams {
            rel_tol: 1e-6,
            ..Default::default()
        };
        let s = BatchedSolver::new(ctx, &pb, batch, cg, None, false).unwrap();
        s.set_data(ctx, &y).unwrap();
        let (mis, gxi, fi, ai) = s.misfit_gradient(ctx, &xi).unwrap();
        check_converged(&fi, "forward", &cg).unwrap();
        check_converged(&ai, "adjoint", &cg).unwrap();
        let scale = 1.0 / (pb.sigma_n * pb.sigma_n);
        for b in 0..batch {
            let (m, g) = reference::misfit_gradient(
                &pb,
                &xi[b * d..(b + 1) * d],
                &pb.sensors,
                &y,
                scale,
                1e-12,
            );
            let gmax = g.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            assert_close(
                &format!("{kind:?} misfit[{b}]"),
                &mis[b..b + 1],
                &[m],
                1e-3,
                2e-3,
            );
            assert_close(
                &format!("{kind:?} gradient[{b}]"),
                &gxi[b * d..(b + 1) * d],
                &g,
                2e-3 * gmax,
                2e-3,
            );
        }
    }
}

#[test]
fn cg_reaches_1e5_on_prior_draws_and_reports_caps() {
    let ctx = ctx();
    let pb = Problem::new(ProblemKind::Darcy2d, 64, 64).unwrap();
    let batch = 8;
    let xi = Rng::new(2024).vec_normal(batch * pb.d);
    let cg = CgParams {
        rel_tol: 1e-5,
        max_iters: 4000,
        chunk: 100,
        ..Default::default()
    };
    let s = BatchedSolver::new(ctx, &pb, batch, cg, None, false).unwrap();
    let info = s.solve(ctx, &xi).unwrap();
    eprintln!("prior draws n=64: {info:?}");
    check_converged(&info, "prior draws", &cg).unwrap();
    // The f32 solution against the f64 mirror, and its true residual in f64.
    // f32 rounding of A u (|A||u| ~ 1e3 |b| here) floors the true residual
    // near 1e-4 while the recursive residual reaches the tolerance.
    let u = s.read_u(ctx).unwrap();
    let z = s.read_z(ctx).unwrap();
    let nu = pb.nunk();
    let nc = pb.ncoef();
    for b in 0..batch {
        assert!(info[b].rel_residual <= 1e-5);
        let kappa: Vec<f64> = z[b * nc..(b + 1) * nc].iter().map(|v| v.exp()).collect();
        let p = PdeParams::new(pb.n, nu, nc, 1, pb.d);
        let mut au = vec![0.0; nu];
        cpu::q1_apply(&p, &kappa, &u[b * nu..(b + 1) * nu], &mut au);
        let bval = pb.h() * pb.h();
        let r: f64 = au.iter().map(|a| (bval - a).powi(2)).sum::<f64>().sqrt();
        let rel = r / (bval * (nu as f64).sqrt());
        assert!(rel < 5e-4, "system {b}: true relative residual {rel:e}");
        let reference = reference::forward(&pb, &xi[b * pb.d..(b + 1) * pb.d], 1e-12, 10_000);
        let ub = &u[b * nu..(b + 1) * nu];
        let diff: f64 = ub
            .iter()
            .zip(&reference.u)
            .map(|(a, c)| (a - c).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = reference.u.iter().map(|c| c * c).sum::<f64>().sqrt();
        eprintln!(
            "system {b}: true rel. residual {rel:.2e}, rel. error vs f64 {:.2e}",
            diff / norm
        );
        assert!(
            diff / norm < 1e-4,
            "system {b}: relative error vs f64 solve {:e}",
            diff / norm
        );
    }

    // Capped: reported as not converged, with the cap and the residual.
    let capped = CgParams {
        max_iters: 20,
        chunk: 7,
        ..cg
    };
    let s = BatchedSolver::new(ctx, &pb, batch, capped, None, false).unwrap();
    let info = s.solve(ctx, &xi).unwrap();
    for i in &info {
        assert_eq!(i.status, status::MAXITER);
        assert_eq!(i.iters, 20);
        assert!(!i.converged && i.rel_residual > 1e-5);
    }
    let err = check_converged(&info, "capped solve", &capped)
        .unwrap_err()
        .to_string();
    assert!(err.contains("iteration cap 20"), "{err}");

    // A NaN coefficient is a breakdown, not a wrong answer.
    let mut bad = xi.clone();
    bad[3] = f64::NAN;
    let s = BatchedSolver::new(ctx, &pb, batch, cg, None, false).unwrap();
    let info = s.solve(ctx, &bad).unwrap();
    assert_eq!(info[0].status, status::BREAKDOWN, "{:?}", info[0]);
    assert!(info[1].converged);
    let err = check_converged(&info, "nan", &cg).unwrap_err().to_string();
    assert!(err.contains("breakdown"), "{err}");
}

#[test]
fn warm_start_saves_iterations() {
    let ctx = ctx();
    let pb = Problem::new(ProblemKind::Darcy2d, 32, 16).unwrap();
    let xi = Rng::new(4).vec_normal(2 * pb.d);
    let cg = CgParams {
        warm_start: true,
        ..Default::default()
    };
    let s = BatchedSolver::new(ctx, &pb, 2, cg, None, false).unwrap();
    let cold = s.solve(ctx, &xi).unwrap();
    let near: Vec<f64> = xi.iter().map(|v| v + 1e-3).collect();
    let warm = s.solve(ctx, &near).unwrap();
    eprintln!("cold {cold:?}\nwarm {warm:?}");
    for (c, w) in cold.iter().zip(&warm) {
        assert!(
            w.converged && 3 * w.iters < 2 * c.iters,
            "warm {w:?} cold {c:?}"
        );
    }
}

#[test]
fn p1_direct_matches_cpu_and_cg() {
    let ctx = ctx();
    let (n, batch) = (128usize, 3usize);
    let nu = n - 1;
    let rhs = Rng::new(8).vec_uniform(batch * nu, -1.0, 1.0);
    let mut p = PdeParams::new(n, nu, nu, batch, 1);
    p.tol = 1e-13;
    p.max_iter = 1000;
    p.chunk = 1000;
    let mut x = vec![0.0; batch * nu];
    let mut st = vec![cpu::CgState::default(); batch];
    cpu::p1_direct(&p, &rhs, &mut x, &mut st);
    // The direct solution against f64 CG.
    let mut xc = vec![0.0; batch * nu];
    let mut work = vec![0.0; 4 * batch * nu];
    let mut stc = vec![cpu::CgState::default(); batch];
    cpu::cg_solve_tol(Op::P1, &p, 1e-13, &[], &rhs, &mut xc, &mut work, &mut stc);
    assert_close("p1_direct vs f64 CG", &x, &xc, 1e-10, 1e-9);
    for s in &st {
        assert!(s.rnorm2.sqrt() < 1e-12 * s.bnorm2.sqrt().max(1.0), "{s:?}");
    }
    let bp = ctx.uniform("p", &p);
    let br = upload(ctx, "rhs", &rhs);
    let bx = ctx.storage("x", (batch * nu * 4) as u64).unwrap();
    let bs = ctx.storage("state", (batch * 32) as u64).unwrap();
    run(ctx, KernelId::P1Direct, &[&bp, &br, &bx, &bs], [batch, 1]);
    let xmax = x.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    assert_close(
        "p1_direct gpu",
        &read(ctx, &bx, batch * nu),
        &x,
        1e-5 * xmax,
        1e-5,
    );
    let gst: Vec<CgState> = ctx.read(&bs, 0, batch).unwrap();
    for g in &gst {
        assert_eq!(g.status, status::CONVERGED);
        // The f32 evaluation of A u (|A||u| >> |b|) floors the reported residual.
        assert!(((g.rnorm2 / g.bnorm2) as f64).sqrt() < 1e-4, "{g:?}");
    }
}
