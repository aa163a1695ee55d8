//! Normalizing-flow VI and the sample distances: every flow kernel against
//! its f64 mirror; the flow's inverse and log-determinant against the
//! mirror and finite differences; an identity-initialised flow reproduces
//! its base (its draws are the base's, exactly); the GPU gradient of both objectives (ELBO, Renyi) against
//! central differences of the f64 loss for fixed noise; the energy distance
//! and sliced W2 against closed forms.
#![allow(
    clippy::needless_range_loop,
    reason = "finite differences walk the coordinates by index"
)]

mod common;

use common::mirror::{run_cases, Case};
use common::Rng;
use pdevi::cpu::flow as cf;
use pdevi::gpu::KernelId;
use pdevi::infer::flow::{Divergence, FlowEngine, FlowParams, FlowSpec, FlowState};
use pdevi::infer::vi::Family;
use pdevi::physics::problem::{Problem, ProblemKind};
use pdevi::physics::solver::CgParams;

#[test]
fn flow_kernels_match_their_mirrors() {
    let ctx = common::ctx();
    let mut rng = Rng::new(21);
    let (d, n, k) = (5usize, 3usize, 2usize);
    for layer in 0..k {
        let p = FlowParams {
            d: d as u32,
            samples: n as u32,
            layer: layer as u32,
            parity: (layer % 2) as u32,
            layers: k as u32,
            nobs: 7,
            history: 16,
            step: 21,
            s_scale: 2.0,
            alpha: if layer == 0 { 1.0 } else { 0.4 },
            log_norm: -3.5,
            _pad: 0,
        };
        let xs = rng.vec_normal((k + 1) * n * d);
        let o = rng.vec_uniform(n * 2 * d, -3.0, 3.0);
        let gs = rng.vec_normal((k + 1) * n * d);
        let ld = rng.vec_normal(n);
        let wt = rng.vec_uniform(n, 0.1, 0.5);
        let dx = rng.vec_normal(n * d);
        let theta = rng.vec_normal(d + d * d);
        let eps = rng.vec_normal(n * d);
        let misfit = rng.vec_uniform(n, 0.0, 5.0);
        let gxi = rng.vec_normal(n * d);

        let mut xin = vec![0.0; n * d];
        cf::flow_mask(&p, &xs, &mut xin);
        let (mut xs2, mut ld2) = (xs.clone(), ld.clone());
        cf::flow_couple(&p, &o, &mut xs2, &mut ld2);
        let (mut gs2, mut og) = (gs.clone(), vec![0.0; n * 2 * d]);
        cf::flow_couple_back(&p, &o, &xs, &mut gs2, &mut og, &wt);
        let mut gs3 = gs.clone();
        cf::flow_join(&p, &mut gs3, &dx);
        let (mut w, mut sc) = (vec![0.0; n], vec![0.0; 4 + 16]);
        cf::flow_weights(&p, &xs, &ld, &theta, &eps, &misfit, &mut w, &mut sc);
        let mut gs4 = gs.clone();
        cf::flow_top(&p, &xs, &mut gs4, &wt, &gxi);
        let mut g = theta.clone();
        cf::flow_entropy(&p, &mut g);
        let name = |k: &str| format!("{k}, layer {layer}");
        run_cases(
            ctx,
            &[
                Case::new(name("mask"), KernelId::FlowMask, [n * d, 1])
                    .params("params", &p)
                    .f32("xs", &xs)
                    .expect("xin", &xin, 1e-7, 1e-6),
                Case::new(name("couple"), KernelId::FlowCouple, [n, 1])
                    .params("params", &p)
                    .f32("o", &o)
                    .f32("xs", &xs)
                    .f32("ld", &ld)
                    .expect("xs", &xs2, 1e-5, 1e-5)
                    .expect("ld", &ld2, 1e-5, 1e-5),
                Case::new(name("couple_back"), KernelId::FlowCoupleBack, [n * d, 1])
                    .params("params", &p)
                    .f32("o", &o)
                    .f32("xs", &xs)
                    .f32("gs", &gs)
                    .f32("wt_in", &wt)
                    .expect("gs", &gs2, 1e-5, 1e-5)
                    .expect("og", &og, 1e-5, 1e-5),
                Case::new(name("join"), KernelId::FlowJoin, [n * d, 1])
                    .params("params", &p)
                    .f32("gs", &gs)
                    .f32("xin", &dx)
                    .expect("gs", &gs3, 1e-6, 1e-6),
                Case::new(name("weights"), KernelId::FlowWeights, [1, 1])
                    .params("params", &p)
                    .f32("xs", &xs)
                    .f32("ld", &ld)
                    .f32("theta", &theta)
                    .f32("eps", &eps)
                    .f32("misfit", &misfit)
                    .expect("wt", &w, 1e-5, 1e-4)
                    .expect("scalars", &sc, 1e-4, 1e-5),
                Case::new(name("top"), KernelId::FlowTop, [n * d, 1])
                    .params("params", &p)
                    .f32("xs", &xs)
                    .f32("gs", &gs)
                    .f32("wt_in", &wt)
                    .f32("gxi", &gxi)
                    .expect("gs", &gs4, 1e-6, 1e-6),
                Case::new(name("entropy"), KernelId::FlowEntropy, [d, 1])
                    .params("params", &p)
                    .f32("grad", &theta)
                    .expect("grad", &g, 1e-6, 1e-6),
            ],
        );
    }
}

/// A flow with random (non-identity) nets.
fn random_state(d: usize, layers: usize, seed: u64) -> FlowState {
    let spec = FlowSpec {
        layers,
        hidden: vec![6],
        ..Default::default()
    };
    let mut rng = Rng::new(seed);
    let nets = (0..layers)
        .map(|_| {
            spec.arch(d)
                .init(rng.next_u64())
                .iter()
                .map(|v| 0.7 * v)
                .collect()
        })
        .collect();
    let mut base = vec![0.0; d + d * d];
    for v in base.iter_mut() {
        *v = 0.3 * rng.normal();
    }
    FlowState {
        d,
        spec,
        base,
        nets,
    }
}

#[test]
fn inverse_and_log_determinant_match_finite_differences() {
    let d = 3;
    let st = random_state(d, 4, 5);
    let mut rng = Rng::new(9);
    for _ in 0..5 {
        let x0 = rng.vec_normal(d);
        let (xk, ld) = cf::forward(&st, &x0);
        let (back, ld_inv) = cf::inverse(&st, &xk);
        for i in 0..d {
            assert!(
                (back[i] - x0[i]).abs() < 1e-12,
                "inverse: {back:?} vs {x0:?}"
            );
        }
        assert!(
            (ld - ld_inv).abs() < 1e-12,
            "logdet forward {ld} inverse {ld_inv}"
        );
        // log |det J| by central differences of the forward map.
        let h = 1e-6;
        let mut jac = vec![0.0; d * d];
        for j in 0..d {
            let (mut p, mut m) = (x0.clone(), x0.clone());
            p[j] += h;
            m[j] -= h;
            let (fp, _) = cf::forward(&st, &p);
            let (fm, _) = cf::forward(&st, &m);
            for i in 0..d {
                jac[i * d + j] = (fp[i] - fm[i]) / (2.0 * h);
            }
        }
        let det = jac[0] * (jac[4] * jac[8] - jac[5] * jac[7])
            - jac[1] * (jac[3] * jac[8] - jac[5] * jac[6])
            + jac[2] * (jac[3] * jac[7] - jac[4] * jac[6]);
        assert!(
            (det.abs().ln() - ld).abs() < 1e-7,
            "log|det J| {} against {ld}",
            det.abs().ln()
        );
    }
    // The density integrates to 1 (d = 2, a fine grid).
    let st2 = random_state(2, 3, 8);
    let (g, lo, hi) = (400usize, -9.0, 9.0);
    let h = (hi - lo) / g as f64;
    let mut mass = 0.0;
    for j in 0..g {
        for i in 0..g {
            let x = [lo + (i as f64 + 0.5) * h, lo + (j as f64 + 0.5) * h];
            mass += cf::log_density(&st2, &x).exp() * h * h;
        }
    }
    assert!((mass - 1.0).abs() < 2e-3, "q integrates to {mass}");
}

fn poisson(d: usize) -> (Problem, Vec<f64>) {
    let mut pb = Problem::new(ProblemKind::Poisson1d, 16, d).unwrap();
    pb.sigma_n = 0.05;
    let (_, y) = pdevi::physics::reference::simulate_data(&pb, 4);
    (pb, y)
}

fn cg() -> CgParams {
    CgParams {
        rel_tol: 1e-7,
        max_iters: 500,
        ..Default::default()
    }
}

#[test]
fn gpu_flow_forward_matches_the_mirror_and_identity_reproduces_the_base() {
    let ctx = common::ctx();
    let (pb, y) = poisson(3);
    let d = 3;
    let spec = FlowSpec {
        layers: 3,
        hidden: vec![6],
        ..Default::default()
    };
    let samples = 4;
    let mut eng = FlowEngine::new(
        ctx,
        &pb,
        &spec,
        Divergence::ReverseKl,
        samples,
        &pb.sensors,
        &y,
        7,
        cg(),
    )
    .unwrap();
    let st = random_state(d, 3, 2);
    let base = Family::FullRank
        .theta_from_gaussian(
            d,
            &[0.2, -0.1, 0.3],
            &[0.5, 0.1, 0.0, 0.1, 0.4, 0.05, 0.0, 0.05, 0.3],
        )
        .unwrap();
    eng.set_base(ctx, &base).unwrap();
    // Identity layers: x_K = x_0 exactly and the log-determinants are 0,
    // and the gradient of the base is full-rank Gaussian VI's.
    eng.evaluate(ctx, 3).unwrap();
    let n = samples * d;
    let xs: Vec<f32> = ctx.read(&eng.xs, 0, 4 * n).unwrap();
    assert_eq!(&xs[..n], &xs[3 * n..], "identity layers moved the draws");
    let ld: Vec<f32> = ctx.read(&eng.ld, 0, samples).unwrap();
    assert!(ld.iter().all(|&v| v == 0.0), "log-determinants {ld:?}");
    // The draws are the base's, m + L eps with the ELBO stream's noise.
    let eps = pdevi::rng::normals(7, pdevi::rng::streams::ELBO, 3, n);
    for s in 0..samples {
        let want = cf::base_sample(d, &base, &eps[s * d..(s + 1) * d]);
        let got: Vec<f64> = xs[3 * n + s * d..3 * n + (s + 1) * d]
            .iter()
            .map(|&v| v as f64)
            .collect();
        common::assert_close(
            &format!("identity flow, sample {s}"),
            &got,
            &want,
            1e-6,
            1e-5,
        );
    }

    // Random layers: every layer's output and the log-determinants match
    // the mirror's map of the base draws.
    eng.set_nets(ctx, &st.nets).unwrap();
    eng.evaluate(ctx, 3).unwrap();
    let xs: Vec<f32> = ctx.read(&eng.xs, 0, 4 * n).unwrap();
    let ld: Vec<f32> = ctx.read(&eng.ld, 0, samples).unwrap();
    for s in 0..samples {
        let x0: Vec<f64> = xs[s * d..(s + 1) * d].iter().map(|&v| v as f64).collect();
        let (xk, l) = cf::forward(&st, &x0);
        let got: Vec<f64> = xs[3 * n + s * d..3 * n + (s + 1) * d]
            .iter()
            .map(|&v| v as f64)
            .collect();
        common::assert_close(&format!("x_K, sample {s}"), &got, &xk, 1e-5, 1e-5);
        assert!((ld[s] as f64 - l).abs() < 1e-5, "logdet {} vs {l}", ld[s]);
    }
}

/// The f64 loss of one step for fixed noise: sum_s w_s (-log weight_s)
/// for the ELBO (w = 1/S), or -bound for Renyi.
fn loss(pb: &Problem, y: &[f64], st: &FlowState, eps: &[f64], alpha: f64) -> f64 {
    let d = st.d;
    let scale = 1.0 / (pb.sigma_n * pb.sigma_n);
    let lw: Vec<f64> = eps
        .chunks(d)
        .map(|e| {
            let x0 = cf::base_sample(d, &st.base, e);
            let (x, ld) = cf::forward(st, &x0);
            let (mis, _) =
                pdevi::physics::reference::misfit_gradient(pb, &x, &pb.sensors, y, scale, 1e-13);
            let mut v = -mis + ld;
            for i in 0..d {
                v += 0.5 * (e[i] * e[i] - x[i] * x[i]) + st.base[d + i * d + i];
            }
            v
        })
        .collect();
    let n = lw.len() as f64;
    if alpha == 1.0 {
        -lw.iter().sum::<f64>() / n
    } else {
        let b = 1.0 - alpha;
        let top = lw.iter().map(|v| b * v).fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = lw.iter().map(|v| (b * v - top).exp()).sum();
        -(top + (sum / n).ln()) / b
    }
}

#[test]
fn gradients_of_both_objectives_match_central_differences() {
    let ctx = common::ctx();
    let (pb, y) = poisson(3);
    let d = 3;
    let samples = 4;
    for div in [Divergence::ReverseKl, Divergence::Renyi(0.5)] {
        let st = random_state(d, 2, 13);
        let mut eng =
            FlowEngine::new(ctx, &pb, &st.spec, div, samples, &pb.sensors, &y, 11, cg()).unwrap();
        eng.set_base(ctx, &st.base).unwrap();
        eng.set_nets(ctx, &st.nets).unwrap();
        let step = 5u32;
        eng.evaluate(ctx, step).unwrap();
        let (gb, gn) = eng.read_grads(ctx).unwrap();
        let eps = pdevi::rng::normals(11, pdevi::rng::streams::ELBO, step, samples * d);
        let alpha = div.alpha();
        let h = 1e-5;
        let fd = |f: &dyn Fn(&mut FlowState, f64)| {
            let (mut p, mut m) = (st.clone(), st.clone());
            f(&mut p, h);
            f(&mut m, -h);
            (loss(&pb, &y, &p, &eps, alpha) - loss(&pb, &y, &m, &eps, alpha)) / (2.0 * h)
        };
        // Base: the mean, a strictly lower entry and a log-diagonal entry.
        for &i in &[0usize, 2, d + d, d + d + 1, d + 2 * d + 2] {
            let want = fd(&|s: &mut FlowState, h| s.base[i] += h);
            assert!(
                (gb[i] - want).abs() <= 2e-3 * want.abs().max(1.0),
                "{div:?} base[{i}]: gpu {} fd {want}",
                gb[i]
            );
        }
        // A few weights of each layer's net (first and last layer).
        for l in 0..2 {
            let np = st.nets[l].len();
            for &j in &[0usize, 5, np - 3, np - 1] {
                let want = fd(&|s: &mut FlowState, h| s.nets[l][j] += h);
                assert!(
                    (gn[l][j] - want).abs() <= 2e-3 * want.abs().max(1.0),
                    "{div:?} layer {l} weight {j}: gpu {} fd {want}",
                    gn[l][j]
                );
            }
        }
    }
}

#[test]
fn distances_match_closed_forms_for_gaussians() {
    use pdevi::check::distance::*;
    let mut rng = Rng::new(4);
    let n = 3000;
    let a: Vec<f64> = (0..n).map(|_| 0.3 + 1.0 * rng.normal()).collect();
    let b: Vec<f64> = (0..n).map(|_| -0.5 + 1.6 * rng.normal()).collect();
    let ed = energy_distance(&a, &b, 1);
    let exact = energy_distance_gauss_1d(0.3, 1.0, -0.5, 1.6);
    assert!(
        (ed - exact).abs() < 0.04 * exact + 0.01,
        "energy distance {ed} vs {exact}"
    );
    let same: Vec<f64> = (0..n).map(|_| 0.3 + 1.0 * rng.normal()).collect();
    assert!(energy_distance(&a, &same, 1).abs() < 0.02);
    // Sliced W2 between isotropic Gaussians of equal spread in d = 4.
    let d = 4;
    let m1 = [0.0, 1.0, -0.5, 0.2];
    let m2 = [0.5, -0.3, 0.0, 0.2];
    let x: Vec<f64> = (0..n * d).map(|i| m1[i % d] + 0.7 * rng.normal()).collect();
    let y: Vec<f64> = (0..n * d).map(|i| m2[i % d] + 0.7 * rng.normal()).collect();
    let sw = sliced_wasserstein(&x, &y, d, 400, 1);
    let exact = sliced_wasserstein_gauss_iso(&m1, &m2);
    assert!(
        (sw - exact).abs() < 0.05 * exact,
        "sliced W2 {sw} vs {exact}"
    );
    // 1-D: W2 between N(m1, s1^2) and N(m2, s2^2) is sqrt(dm^2 + ds^2).
    let sw1 = sliced_wasserstein(&a, &b, 1, 1, 1);
    let w2 = ((0.8f64).powi(2) + (0.6f64).powi(2)).sqrt();
    assert!((sw1 - w2).abs() < 0.05 * w2, "1-D W2 {sw1} vs {w2}");
}

fn fit(steps: usize, samples: usize, lr: f64, seed: u64) -> pdevi::infer::vi::FitSettings {
    pdevi::infer::vi::FitSettings {
        family: Family::FullRank,
        samples,
        steps,
        lr,
        lr_final: 0.1,
        seed,
        cg: cg(),
        report_every: 50,
        ..Default::default()
    }
}

/// Full-rank Gaussian VI from the Laplace start: (mean, cov).
fn full_rank(
    ctx: &pdevi::GpuContext,
    pb: &Problem,
    y: &[f64],
    s: &pdevi::infer::vi::FitSettings,
) -> (Vec<f64>, Vec<f64>) {
    let mut last = Vec::new();
    let r = pdevi::infer::vi::variational(
        ctx,
        pb,
        &pb.sensors,
        y,
        &pdevi::infer::vi::FitSettings {
            lr: 0.05,
            ..s.clone()
        },
        pdevi::infer::vi::Start::Laplace { gn_iters: 30 },
        &mut last,
        |_, _| {},
    )
    .unwrap();
    Family::FullRank.moments(pb.d, &r.fit.theta)
}

#[test]
fn flow_recovers_the_exact_poisson1d_posterior() {
    let ctx = common::ctx();
    let pb = Problem::new(ProblemKind::Poisson1d, 32, 6).unwrap();
    let (_, y) = pdevi::physics::reference::simulate_data(&pb, 2);
    let exact = pdevi::infer::linear::LinearPosterior::new(&pb);
    let m_exact = exact.mean(&pb, &y);
    let sd: Vec<f64> = (0..pb.d).map(|i| exact.cov[i * pb.d + i].sqrt()).collect();
    let s = fit(300, 32, 0.002, 3);
    let spec = FlowSpec {
        layers: 2,
        hidden: vec![16],
        ..Default::default()
    };
    let mut r = pdevi::cli::flow::fit_flow(
        ctx,
        &pb,
        &pb.sensors,
        &y,
        &spec,
        Divergence::ReverseKl,
        &s,
        Some(30),
        |_, _| {},
    )
    .unwrap();
    let draws = r.engine.draws(ctx, 4000).unwrap();
    let (mf, cf_) = pdevi::infer::mcmc::sample_moments(&draws, pb.d);
    let (mg, cg_) = full_rank(ctx, &pb, &y, &s);
    // Errors in units of the exact sd: the mean, and the sd ratio.
    let score = |m: &[f64], c: &[f64]| {
        let mean = (0..pb.d)
            .map(|i| ((m[i] - m_exact[i]) / sd[i]).abs())
            .fold(0.0, f64::max);
        let ratio = (0..pb.d)
            .map(|i| ((c[i * pb.d + i].sqrt() / sd[i]) - 1.0).abs())
            .fold(0.0, f64::max);
        (mean, ratio)
    };
    let (fm, fs) = score(&mf, &cf_);
    let (gm, gs) = score(&mg, &cg_);
    eprintln!("poisson1d: flow mean err {fm:.3} sd, sd err {fs:.3}; full-rank {gm:.3}, {gs:.3}");
    // Both carry the optimiser's noise (about 0.1 sd in the mean after 300
    // steps, measured); 4000 draws add about 0.02 sd. Not worse than
    // full-rank, and close to exact.
    assert!(
        fm < gm + 0.1 && fm < 0.25,
        "flow mean {fm} sd off (full-rank {gm})"
    );
    assert!(
        fs < gs + 0.05 && fs < 0.1,
        "flow sd {fs} off (full-rank {gs})"
    );
}

#[test]
fn one_sensor_flow_matches_the_grid_posterior_better_than_full_rank() {
    use pdevi::check::distance::*;
    let ctx = common::ctx();
    let pb = Problem::new(ProblemKind::Darcy2d, 16, 2).unwrap();
    // One sensor at (0.25, 0.25): a ridge that bends across the prior.
    let sensor = pb.node_unknown(4, 4).unwrap();
    let (_, y49) = pdevi::physics::reference::simulate_data(&pb, 3);
    let k = pb.sensors.iter().position(|&s| s == sensor).unwrap();
    let mut one = pb.clone();
    one.sensors = vec![sensor];
    let y = vec![y49[k]];
    let s = fit(800, 32, 0.01, 5);
    let spec = FlowSpec::default();
    let mut r = pdevi::cli::flow::fit_flow(
        ctx,
        &one,
        &one.sensors,
        &y,
        &spec,
        Divergence::ReverseKl,
        &s,
        Some(30),
        |_, _| {},
    )
    .unwrap();
    let n = 6000;
    let flow = r.engine.draws(ctx, n).unwrap();
    let (mg, cg_) = full_rank(ctx, &one, &y, &s);
    let gauss = pdevi::infer::predictive::gaussian_draws(&mg, &cg_, n, 1).unwrap();
    let (bx, by, g) = ((-1.0, 2.0), (-4.0, 4.0), 120);
    let p = coarsen(&grid_posterior_2d(&one, &one.sensors, &y, bx, by, g), g, 6);
    let tv = |d: &[f64]| total_variation(&p, &coarsen(&histogram_2d(d, bx, by, g), g, 6));
    let (tf, tg) = (tv(&flow), tv(&gauss));
    eprintln!("TV to the grid posterior (20 x 20 bins): flow {tf:.3}, full-rank {tg:.3}");
    assert!(tf < 0.7 * tg, "flow TV {tf} against full-rank {tg}");
}

#[test]
fn cli_flow_run_writes_draws_density_and_distances() {
    let dir = std::env::temp_dir().join(format!("pdevi_flow_cli_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let run = common::pdevi;
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let (pf, pr, px, py) = (p("flow"), p("renyi"), p("x"), p("y"));
    std::fs::write(dir.join("one.csv"), "x,y,value\n0.25,0.25,0.0259\n").unwrap();
    let base = [
        "run",
        "--n",
        "16",
        "--d",
        "2",
        "--obs",
        &p("one.csv"),
        "--steps",
        "20",
        "--samples",
        "8",
        "--predictive-samples",
        "300",
        "--quiet",
    ];
    let mut a = base.to_vec();
    a.extend(["--family", "flow", "--flow-layers", "2", "--out", &pf]);
    let (code, err) = run(&a);
    assert_eq!(code, Some(0), "{err}");
    let f = dir.join("flow");
    let (shape, _) = pdevi::output::io::read_npy(&f.join("posterior_samples_xi.npy")).unwrap();
    assert_eq!(shape, vec![300, 2]);
    for name in [
        "q_density.png",
        "summary.png",
        "posterior_mean_xi.npy",
        "elbo.png",
        "samples_xi.npy",
    ] {
        assert!(f.join(name).exists(), "{name} missing");
    }
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["family"], "flow");
    for k in [
        "final_elbo",
        "energy_distance_to_laplace",
        "sliced_wasserstein_to_laplace",
    ] {
        assert!(m[k].as_f64().is_some_and(f64::is_finite), "{k}: {}", m[k]);
    }
    // Renyi, and compare between two sample-based posteriors.
    let mut a = base.to_vec();
    a.extend([
        "--family",
        "flow",
        "--divergence",
        "renyi:0.5",
        "--out",
        &pr,
    ]);
    let (code, err) = run(&a);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = run(&["compare", &p("flow"), &p("renyi"), "--out", &p("cmp")]);
    assert_eq!(code, Some(0), "{err}");
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cmp/compare.json")).unwrap())
            .unwrap();
    assert_eq!(c["distance_draws"]["other"], "samples");
    assert!(c["energy_distance_xi"].as_f64().is_some());
    assert!(c["sliced_wasserstein_xi"].as_f64().is_some());
    // Clear errors.
    let mut a = base.to_vec();
    a.extend(["--divergence", "renyi:0.5", "--out", &px]);
    let (code, err) = run(&a);
    assert!(code != Some(0) && err.contains("--family flow"), "{err}");
    let mut a = base.to_vec();
    a.extend([
        "--family",
        "flow",
        "--divergence",
        "renyi:1.5",
        "--out",
        &py,
    ]);
    let (code, err) = run(&a);
    assert!(code != Some(0) && err.contains("[0, 1)"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
