//! Each kernel on the GPU against its f64 CPU mirror, on seeded inputs of
//! several sizes (odd sizes, batch 1 and batch > 1).

mod common;

use common::mirror::{run_cases, Case};
use common::{assert_close, ctx, read, run, upload, Rng};
use pdevi::cpu::physics::{self as cpu, Op};
use pdevi::gpu::layout::{CgState, PdeParams};
use pdevi::gpu::{GpuContext, KernelId};
use pdevi::nn::mlp::MlpParams;
use pdevi::physics::problem::{Problem, ProblemKind};

fn params(n: usize, nunk: usize, ncoef: usize, batch: usize, d: usize) -> PdeParams {
    PdeParams::new(n, nunk, ncoef, batch, d)
}

/// The physics kernels against their mirrors, one case per kernel and size.
fn physics_cases(ctx: &GpuContext) -> Vec<Case> {
    let mut cases = Vec::new();
    // KL map and both pullbacks (odd sizes, batch 1 and > 1, both modes).
    for (kind, n, d, batch) in [
        (ProblemKind::Darcy2d, 16, 7, 1),
        (ProblemKind::Darcy2d, 24, 64, 3),
        (ProblemKind::Poisson1d, 128, 32, 5),
        (ProblemKind::Poisson1d, 16, 3, 2),
        // Blocks cut short in every direction: 31 nodes, 5 modes, 11 systems.
        (ProblemKind::Poisson1d, 32, 5, 11),
    ] {
        let pb = Problem::new(kind, n, d).unwrap();
        let mut rng = Rng::new(n as u64 * 31 + d as u64);
        let xi = rng.vec_normal(batch * d);
        let basis = pb.basis();
        let nc = pb.ncoef();
        for mode in [0u32, 1] {
            let mut p = params(n, pb.nunk(), nc, batch, d);
            p.kl_linear = mode;
            p.kl_scale = 0.37;
            let mut z = vec![0.0; batch * nc];
            let mut aux = vec![0.0; batch * nc];
            cpu::kl_map(&p, &xi, &basis, &mut z, &mut aux);
            cases.push(
                Case::new(
                    format!("kl_map {kind:?} n{n} d{d} b{batch} mode {mode}"),
                    KernelId::KlMap,
                    pdevi::physics::solver::kl_map_extent(nc, batch),
                )
                .params("params", &p)
                .f32("xi", &xi)
                .f32("basis", &basis)
                .expect("z", &z, 1e-5, 1e-5)
                .expect("kappa_or_load", &aux, 1e-5, 1e-5),
            );
        }
        let g = rng.vec_uniform(batch * nc, -1.0, 1.0);
        let mut p = params(n, pb.nunk(), nc, batch, d);
        p.kl_scale = -1.5;
        // Both mirrors add in their kernel's order, so f32 rounding is the
        // only difference left.
        let wg = ctx.workgroup_size(KernelId::KlPullback) as usize;
        let mut gxi = vec![0.0; batch * d];
        cpu::kl_pullback(&p, wg, &basis, &g, &mut gxi);
        let scale = gxi.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        cases.push(
            Case::new(
                format!("kl_pullback n{n} d{d} b{batch}"),
                KernelId::KlPullback,
                [d, batch],
            )
            .params("params", &p)
            .f32("basis", &basis)
            .f32("g", &g)
            .expect("gxi", &gxi, 2e-6 * scale, 1e-5),
        );
        let mut gxi = vec![0.0; batch * d];
        cpu::kl_pullback_serial(&p, &basis, &g, &mut gxi);
        cases.push(
            Case::new(
                format!("kl_pullback_serial n{n} d{d} b{batch}"),
                KernelId::KlPullbackSerial,
                pdevi::physics::solver::kl_pullback_extent(d, batch),
            )
            .params("params", &p)
            .f32("basis", &basis)
            .f32("g", &g)
            .expect("gxi", &gxi, 2e-6 * scale, 1e-5),
        );
    }
    // Q1 operator, diagonal and adjoint gradient.
    for (n, batch) in [(2usize, 1usize), (5, 2), (16, 3), (33, 1), (64, 2)] {
        let (nu, nc) = ((n - 1) * (n - 1), n * n);
        let mut rng = Rng::new(n as u64);
        let coef: Vec<f64> = rng
            .vec_uniform(batch * nc, -2.0, 2.0)
            .iter()
            .map(|z| z.exp())
            .collect();
        let v = rng.vec_uniform(batch * nu, -1.0, 1.0);
        let w = rng.vec_uniform(batch * nu, -1.0, 1.0);
        let p = params(n, nu, nc, batch, 1);
        let mut y = vec![0.0; batch * nu];
        let mut dg = vec![0.0; batch * nu];
        let mut g = vec![0.0; batch * nc];
        cpu::q1_apply(&p, &coef, &v, &mut y);
        cpu::q1_diag(&p, &coef, &mut dg);
        cpu::q1_adjoint_grad(&p, &coef, &v, &w, &mut g);
        cases.push(
            Case::new(
                format!("q1_apply n={n} b{batch}"),
                KernelId::Q1Apply,
                [nu, batch],
            )
            .params("params", &p)
            .f32("coef", &coef)
            .f32("v", &v)
            .expect("y", &y, 1e-5, 1e-5),
        );
        cases.push(
            Case::new(
                format!("q1_diag n={n} b{batch}"),
                KernelId::Q1Diag,
                [nu, batch],
            )
            .params("params", &p)
            .f32("coef", &coef)
            .expect("y", &dg, 1e-5, 1e-5),
        );
        cases.push(
            Case::new(
                format!("q1_adjoint_grad n={n} b{batch}"),
                KernelId::Q1AdjointGrad,
                [nc, batch],
            )
            .params("params", &p)
            .f32("coef", &coef)
            .f32("v", &v)
            .f32("w", &w)
            .expect("g", &g, 1e-5, 1e-5),
        );
    }
    // P1 operator and diagonal.
    for (n, batch) in [(16usize, 1usize), (128, 4), (1000, 2)] {
        let nu = n - 1;
        let v = Rng::new(n as u64).vec_uniform(batch * nu, -1.0, 1.0);
        let p = params(n, nu, nu, batch, 1);
        let mut y = vec![0.0; batch * nu];
        cpu::p1_apply(&p, &v, &mut y);
        cases.push(
            Case::new(
                format!("p1_apply n={n} b{batch}"),
                KernelId::P1Apply,
                [nu, batch],
            )
            .params("params", &p)
            .f32("v", &v)
            .expect("y", &y, 1e-5 * n as f64, 1e-5),
        );
        let mut dg = vec![0.0; batch * nu];
        cpu::p1_diag(&p, &mut dg);
        cases.push(
            Case::new(
                format!("p1_diag n={n} b{batch}"),
                KernelId::P1Diag,
                [nu, batch],
            )
            .params("params", &p)
            .expect("y", &dg, 0.0, 1e-6),
        );
    }
    // Sensor misfit, shared data (mode 0) and per-system data (mode 1).
    let (nu, batch) = (63 * 63, 3);
    let pb = Problem::new(ProblemKind::Darcy2d, 64, 8).unwrap();
    let sensors: Vec<u32> = pb.sensors.iter().map(|&s| s as u32).collect();
    let ns = sensors.len();
    let mut rng = Rng::new(11);
    let u = rng.vec_uniform(batch * nu, 0.0, 0.1);
    for mode in [0u32, 1] {
        let data = rng.vec_uniform(if mode == 1 { batch * ns } else { ns }, 0.0, 0.1);
        let mut p = params(64, nu, 64 * 64, batch, 8);
        p.nsens = ns as u32;
        p.noise_precision = 1e6;
        p.per_system_data = mode;
        let mut adj = vec![0.0; batch * nu];
        let mut mis = vec![0.0; batch];
        cpu::obs_misfit(&p, &sensors, &data, &u, &mut adj, &mut mis);
        cases.push(
            Case::new(
                format!("obs_misfit mode {mode}"),
                KernelId::ObsMisfit,
                [batch, 1],
            )
            .params("params", &p)
            .u32("sensors", &sensors)
            .f32("data", &data)
            .f32("u", &u)
            .expect("adj", &adj, 1e-2, 1e-5)
            .expect("misfit", &mis, 0.0, 1e-4),
        );
    }
    // The bandwidth probe.
    let nv = 1000usize;
    let mut rng = Rng::new(9);
    let b = rng.vec_uniform(4 * nv, -1.0, 1.0);
    let c = rng.vec_uniform(4 * nv, -1.0, 1.0);
    let p = PdeParams {
        nunk: nv as u32,
        triad_scale: 0.5,
        ..Default::default()
    };
    let mut a = vec![0.0; 4 * nv];
    cpu::stream_triad(&p, &b, &c, &mut a);
    // Every shape of the roofline probe; the grid-stride ones on a quarter
    // of the grid, so each invocation makes several trips.
    for (kernel, extent) in [
        (KernelId::StreamTriad, nv),
        (KernelId::StreamTriad64, nv),
        (KernelId::StreamTriadGrid, nv / 4),
        (KernelId::StreamTriadGrid64, nv / 4),
    ] {
        cases.push(
            Case::new(format!("{kernel:?}"), kernel, [extent, 1])
                .params("params", &p)
                .f32("sb", &b)
                .f32("sc", &c)
                .expect("sa", &a, 1e-6, 1e-6),
        );
    }
    let mut copy = vec![0.0; 4 * nv];
    cpu::stream_copy(&p, &b, &mut copy);
    cases.push(
        Case::new("stream_copy", KernelId::StreamCopy, [nv, 1])
            .params("params", &p)
            .f32("sb", &b)
            .expect("sa", &copy, 0.0, 1e-7),
    );
    // The FMA probe (a benchmark kernel, but it must compute what it claims).
    let p = MlpParams {
        k: 50,
        ..Default::default()
    };
    let count = ctx.workgroup_size(KernelId::FmaPeak) as usize;
    let mut xc = vec![0.0; count];
    pdevi::cpu::nn::mlp::fma_peak(&p, &mut xc);
    cases.push(
        Case::new("fma_peak", KernelId::FmaPeak, [count, 1])
            .params("params", &p)
            .expect("xc", &xc, 1e-4, 1e-5),
    );
    cases
}

#[test]
fn physics_kernels_match_mirrors() {
    let ctx = ctx();
    run_cases(ctx, &physics_cases(ctx));
}

/// The harness fails when a kernel and its expectation disagree.
#[test]
fn mirror_harness_reports_a_wrong_expectation() {
    let ctx = ctx();
    let p = params(5, 16, 25, 1, 1);
    let v = vec![1.0; 16];
    let mut y = vec![0.0; 16];
    cpu::p1_apply(&params(17, 16, 16, 1, 1), &v, &mut y);
    y[3] += 1.0;
    let err = Case::new("wrong", KernelId::P1Apply, [16, 1])
        .params("params", &params(17, 16, 16, 1, 1))
        .f32("v", &v)
        .expect("y", &y, 1e-6, 1e-6)
        .check(ctx)
        .unwrap_err();
    assert!(err.contains("[3]"), "{err}");
    let missing = Case::new("missing", KernelId::Q1Apply, [16, 1])
        .params("params", &p)
        .check(ctx)
        .unwrap_err();
    assert!(missing.contains("no input for binding `coef`"), "{missing}");
}

#[test]
fn q1_operator_is_symmetric_and_matches_assembly() {
    // The matrix-free stencil against an explicit assembly of sum_c kappa_c K_c.
    let n = 5;
    let (nu, nc) = ((n - 1) * (n - 1), n * n);
    let mut rng = Rng::new(7);
    let coef: Vec<f64> = rng
        .vec_uniform(nc, -1.0, 1.0)
        .iter()
        .map(|z| z.exp())
        .collect();
    let k = [
        [4.0, -1.0, -2.0, -1.0],
        [-1.0, 4.0, -1.0, -2.0],
        [-2.0, -1.0, 4.0, -1.0],
        [-1.0, -2.0, -1.0, 4.0],
    ];
    let mut a = vec![0.0; nu * nu];
    let idx = |i: usize, j: usize| {
        (i >= 1 && j >= 1 && i < n && j < n).then(|| (j - 1) * (n - 1) + i - 1)
    };
    for j in 0..n {
        for i in 0..n {
            let nodes = [(i, j), (i + 1, j), (i + 1, j + 1), (i, j + 1)];
            for (a_, &(ia, ja)) in nodes.iter().enumerate() {
                for (b_, &(ib, jb)) in nodes.iter().enumerate() {
                    if let (Some(r), Some(c)) = (idx(ia, ja), idx(ib, jb)) {
                        a[r * nu + c] += coef[j * n + i] * k[a_][b_] / 6.0;
                    }
                }
            }
        }
    }
    let p = params(n, nu, nc, 1, 1);
    for col in 0..nu {
        let mut e = vec![0.0; nu];
        e[col] = 1.0;
        let mut y = vec![0.0; nu];
        cpu::q1_apply(&p, &coef, &e, &mut y);
        for row in 0..nu {
            assert!((y[row] - a[row * nu + col]).abs() < 1e-14, "A[{row},{col}]");
            assert!((a[row * nu + col] - a[col * nu + row]).abs() < 1e-14);
        }
    }
}

/// Run `cg_start` then `iters` single-iteration dispatches on GPU and CPU
/// and compare the iterates (f32 vs f64 after a fixed number of steps).
#[test]
fn cg_and_jacobi_match_cpu_after_fixed_iterations() {
    let ctx = ctx();
    for (op, n, batch) in [(Op::Q1, 9usize, 2usize), (Op::Q1, 32, 3), (Op::P1, 64, 2)] {
        let (nu, nc) = match op {
            Op::Q1 => ((n - 1) * (n - 1), n * n),
            Op::P1 => (n - 1, n - 1),
        };
        let mut rng = Rng::new(n as u64 + 100);
        let coef: Vec<f64> = rng
            .vec_uniform(batch * nc, -1.0, 1.0)
            .iter()
            .map(|z| z.exp())
            .collect();
        let rhs = rng.vec_uniform(batch * nu, 0.0, 1.0);
        let mut p = params(n, nu, nc, batch, 1);
        p.tol = 1e-30;
        p.max_iter = 1000;
        p.chunk = 5;
        let (start, iterate, jacobi) = match op {
            Op::Q1 => (
                KernelId::CgStartQ1,
                KernelId::CgIterateQ1,
                KernelId::JacobiRunQ1,
            ),
            Op::P1 => (
                KernelId::CgStartP1,
                KernelId::CgIterateP1,
                KernelId::JacobiRunP1,
            ),
        };
        let mut x = vec![0.0; batch * nu];
        let mut work = vec![0.0; 4 * batch * nu];
        let mut st = vec![cpu::CgState::default(); batch];
        cpu::cg_start(op, &p, &coef, &rhs, &mut x, &mut work, &mut st);
        cpu::cg_iterate(op, &p, &coef, &mut x, &mut work, &mut st);
        cpu::cg_iterate(op, &p, &coef, &mut x, &mut work, &mut st);
        let bp = ctx.uniform("p", &p);
        let bc = upload(ctx, "coef", &coef);
        let br = upload(ctx, "rhs", &rhs);
        let bx = ctx.storage("x", (batch * nu * 4) as u64).unwrap();
        let bw = ctx.storage("work", (4 * batch * nu * 4) as u64).unwrap();
        let bs = ctx.storage("state", (batch * 32) as u64).unwrap();
        let bufs = [&bp, &bc, &br, &bx, &bw, &bs];
        run(ctx, start, &bufs, [batch, 1]);
        run(ctx, iterate, &bufs, [batch, 1]);
        run(ctx, iterate, &bufs, [batch, 1]);
        let gx = read(ctx, &bx, batch * nu);
        let xmax = x.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        assert_close(
            &format!("cg x after 10 its ({op:?}, n={n})"),
            &gx,
            &x,
            1e-3 * xmax,
            1e-3,
        );
        let gst: Vec<CgState> = ctx.read(&bs, 0, batch).unwrap();
        for (g, c) in gst.iter().zip(&st) {
            assert_eq!(g.iters, c.iters, "iteration counts");
            assert_eq!(g.status, c.status);
            let (gr, cr) = ((g.rnorm2 as f64).sqrt(), c.rnorm2.sqrt());
            assert!(
                (gr - cr).abs() <= 1e-2 * cr + 1e-12,
                "residual norm gpu {gr} cpu {cr}"
            );
        }

        // Weighted Jacobi: 2 dispatches of `chunk` sweeps.
        let mut pj = p;
        pj.omega = 0.8;
        pj.chunk = 7;
        let mut x = vec![0.0; batch * nu];
        let mut st = vec![cpu::CgState::default(); batch];
        cpu::jacobi_run(op, &pj, &coef, &rhs, &mut x, &mut work, &mut st);
        cpu::jacobi_run(op, &pj, &coef, &rhs, &mut x, &mut work, &mut st);
        let bp = ctx.uniform("pj", &pj);
        let bx = ctx.storage("x", (batch * nu * 4) as u64).unwrap();
        let bs = ctx.storage("state", (batch * 32) as u64).unwrap();
        let bufs = [&bp, &bc, &br, &bx, &bw, &bs];
        run(ctx, jacobi, &bufs, [batch, 1]);
        run(ctx, jacobi, &bufs, [batch, 1]);
        let xmax = x.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        assert_close(
            &format!("jacobi x ({op:?}, n={n})"),
            &read(ctx, &bx, batch * nu),
            &x,
            1e-4 * xmax,
            1e-4,
        );
        let gst: Vec<CgState> = ctx.read(&bs, 0, batch).unwrap();
        for (g, c) in gst.iter().zip(&st) {
            assert_eq!(g.iters, 14);
            assert_eq!(g.iters, c.iters);
            let (gr, cr) = ((g.rnorm2 as f64).sqrt(), c.rnorm2.sqrt());
            assert!(
                (gr - cr).abs() <= 1e-3 * cr + 1e-9,
                "jacobi residual gpu {gr} cpu {cr}"
            );
        }
    }
}
