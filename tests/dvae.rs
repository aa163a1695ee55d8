//! The dynamical latent model (methods.md A5, advdiff1d): the spec's
//! simulation, the Kalman filter's log-likelihood against dense Gaussian
//! computations and its gradients against central differences, the GPU
//! kernels against their f64 mirrors, oracle mode against the grid
//! posterior, and a short end-to-end fit.
#![allow(
    clippy::needless_range_loop,
    reason = "finite differences walk the coordinates by index"
)]

mod common;

use common::Rng;
use pdevi::cpu::kalman;
use pdevi::physics::advdiff::{physical, AdvDiff};

fn tiny(n: usize, t: usize) -> AdvDiff {
    AdvDiff {
        n,
        t,
        // Larger noises than the spec's keep the dense joint well conditioned.
        sigma_u: 0.05,
        sigma_0: 0.1,
        ..Default::default()
    }
}

fn noisy_states(pb: &AdvDiff, zeta: [f64; 2], seed: u64, noise: f64) -> Vec<f64> {
    let (u, _) = pb.simulate(zeta, seed, true);
    let mut rng = Rng::new(seed + 100);
    u.iter().map(|v| v + noise * rng.normal()).collect()
}

#[test]
fn modal_filter_matches_dense_filter_and_joint_gaussian() {
    for (n, t) in [(6, 3), (7, 4), (8, 2)] {
        let pb = tiny(n, t);
        let zeta = [0.4, -0.8];
        let x = noisy_states(&pb, zeta, 3, 0.1);
        let sx2 = 0.02;
        let (c, nu) = physical(zeta);
        let m = pb.m_dense(c, nu);
        let m0 = pb.m0();
        let modal = kalman::kalman_loglik(&pb, &pb.to_modes(&m0), &x, zeta, sx2).ll;
        let dense = kalman::kalman_dense(&m, n, &m0, pb.sigma_0, pb.sigma_u, sx2, &x, t)
            .expect("spd")
            .ll;
        let joint = kalman::joint_loglik_dense(&m, n, &m0, pb.sigma_0, pb.sigma_u, sx2, &x, t)
            .expect("spd");
        assert!(
            (modal - joint).abs() < 1e-9 * joint.abs().max(1.0),
            "n {n} T {t}: modal {modal} joint {joint}"
        );
        assert!(
            (dense - joint).abs() < 1e-9 * joint.abs().max(1.0),
            "n {n} T {t}: dense {dense} joint {joint}"
        );
    }
}

#[test]
fn smoother_last_state_is_the_filtered_one_and_means_match_the_joint() {
    // The RTS smoother's last mean equals the filter's; with tiny x noise the
    // smoothed states approach x.
    let pb = tiny(8, 5);
    let zeta = [0.2, 0.3];
    let x = noisy_states(&pb, zeta, 5, 0.01);
    let (c, nu) = physical(zeta);
    let m = pb.m_dense(c, nu);
    let s = kalman::kalman_dense(&m, 8, &pb.m0(), pb.sigma_0, pb.sigma_u, 1e-4, &x, 5).unwrap();
    let last = 4 * 8;
    for i in 0..8 {
        assert!((s.mean[last + i] - s.filtered[last + i]).abs() < 1e-12);
    }
    let err: f64 = s
        .mean
        .iter()
        .zip(&x)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        err < 0.03,
        "smoothed states far from near-exact observations: {err}"
    );
    assert!(s.var.iter().all(|&v| v > 0.0 && v < 1e-4 + 1e-12));
}

#[test]
fn kalman_gradients_match_central_differences() {
    let pb = tiny(7, 4);
    let zeta = [0.3, -0.5];
    let x = noisy_states(&pb, zeta, 9, 0.05);
    let sx2 = 0.01;
    let m0 = pb.to_modes(&pb.m0());
    let g = kalman::kalman_loglik(&pb, &m0, &x, zeta, sx2);
    let f = |x: &[f64], z: [f64; 2], s: f64| kalman::kalman_loglik(&pb, &m0, x, z, s).ll;
    let h = 1e-6;
    for k in 0..2 {
        let mut zp = zeta;
        let mut zm = zeta;
        zp[k] += h;
        zm[k] -= h;
        let fd = (f(&x, zp, sx2) - f(&x, zm, sx2)) / (2.0 * h);
        assert!(
            (fd - g.d_zeta[k]).abs() < 1e-5 * fd.abs().max(1.0),
            "zeta {k}: fd {fd} analytic {}",
            g.d_zeta[k]
        );
    }
    let fd = (f(&x, zeta, sx2 * h.exp()) - f(&x, zeta, sx2 * (-h).exp())) / (2.0 * h);
    assert!(
        (fd - g.d_log_sx2).abs() < 1e-5 * fd.abs().max(1.0),
        "log sx2: fd {fd} analytic {}",
        g.d_log_sx2
    );
    for i in 0..x.len() {
        let mut xp = x.clone();
        let mut xm = x.clone();
        xp[i] += h;
        xm[i] -= h;
        let fd = (f(&xp, zeta, sx2) - f(&xm, zeta, sx2)) / (2.0 * h);
        assert!(
            (fd - g.d_x[i]).abs() < 1e-5 * fd.abs().max(1.0),
            "x[{i}]: fd {fd} analytic {}",
            g.d_x[i]
        );
    }
}

#[test]
fn spec_sanity_mass_is_conserved_and_the_peak_moves_c_t_dt() {
    let pb = AdvDiff::default();
    let (u, frames) = pb.simulate([0.0, 0.0], 0, false);
    assert_eq!(u.len(), pb.t * pb.n);
    assert_eq!(frames.len(), pb.t * pb.height * pb.n);
    let m0 = pb.m0();
    let mass0: f64 = m0.iter().sum::<f64>() / pb.n as f64;
    let last = &u[(pb.t - 1) * pb.n..];
    let mass_t: f64 = last.iter().sum::<f64>() / pb.n as f64;
    assert!((mass0 - mass_t).abs() < 1e-12, "mass {mass0} -> {mass_t}");
    // The peak: the centre of mass on the circle (robust to the grid).
    let centre = |u: &[f64]| {
        let (mut s, mut c) = (0.0, 0.0);
        for (i, v) in u.iter().enumerate() {
            let th = 2.0 * std::f64::consts::PI * i as f64 / pb.n as f64;
            s += v * th.sin();
            c += v * th.cos();
        }
        s.atan2(c) / (2.0 * std::f64::consts::PI)
    };
    let shift = (centre(last) - centre(&m0)).rem_euclid(1.0);
    let (c, _) = physical([0.0, 0.0]);
    let want = c * pb.t as f64 * pb.dt;
    assert!(
        (shift - want).abs() < 0.02,
        "peak moved {shift}, spec says about {want}"
    );
    // Faster advection moves it further.
    let (u2, _) = pb.simulate([1.0, 0.0], 0, false);
    let shift2 = (centre(&u2[(pb.t - 1) * pb.n..]) - centre(&m0)).rem_euclid(1.0);
    assert!(
        (shift2 - 1.5 * want).abs() < 0.03,
        "c = 1.5: moved {shift2}"
    );
}

// ---------------------------------------------------------------------------
// GPU kernels against their mirrors.

use common::ctx;
use common::mirror::{run_cases, Case};
use pdevi::cpu::dvae as mirror;
use pdevi::gpu::layout::DvaeParams;
use pdevi::gpu::KernelId;

fn dparams(pb: &AdvDiff, samples: usize, x_samples: usize, oracle: bool) -> DvaeParams {
    DvaeParams {
        n: pb.n as u32,
        t: pb.t as u32,
        modes: pb.modes() as u32,
        samples: samples as u32,
        x_samples: x_samples as u32,
        height: pb.height as u32,
        oracle: oracle as u32,
        step: 7,
        seed_lo: 5,
        seed_hi: 1,
        stream: pdevi::rng::streams::DVAE,
        learn: 15,
        dt: pb.dt as f32,
        sigma_u2: (pb.sigma_u * pb.sigma_u) as f32,
        sigma_02: (pb.sigma_0 * pb.sigma_0) as f32,
        inv_norm: 1.0 / (pb.t * pb.n) as f32,
        beta: 0.7,
        gamma: 0.4,
        t_kalman: 1000,
        level_hidden: 0,
        level0: pb.level(0) as f32,
        dlevel: (pb.level(1) - pb.level(0)) as f32,
        _pad: [0; 1],
    }
}

fn theta0() -> Vec<f64> {
    vec![
        0.3,
        -0.2,
        -1.5,
        0.1,
        -1.2,
        (0.03f64 * 0.03).ln(),
        (0.02f64 * 0.02).ln(),
        (0.05f64 * 0.05).ln(),
    ]
}

fn flat_modes(pb: &AdvDiff) -> (Vec<[f64; 2]>, Vec<f64>) {
    let m = pb.to_modes(&pb.m0());
    let flat = m.iter().flat_map(|c| [c[0], c[1]]).collect();
    (m, flat)
}

#[test]
fn dvae_kernels_match_mirrors() {
    let mut cases = Vec::new();
    // The Kalman kernel at the spec's size and at odd / tiny sizes, with
    // more draws of zeta than of x.
    for (n, t, s, sx) in [(64, 40, 3, 2), (9, 5, 2, 1), (130, 3, 1, 1)] {
        let pb = AdvDiff {
            n,
            t,
            ..Default::default()
        };
        let mut dp = dparams(&pb, s, sx, false);
        if n == 9 {
            // The warm-up's filter over the first frames only.
            dp.t_kalman = 2;
        }
        let theta = theta0();
        let (m0, m0f) = flat_modes(&pb);
        let mut xs = Vec::new();
        for j in 0..sx {
            xs.extend(noisy_states(&pb, [0.2, -0.3], j as u64, 0.03));
        }
        let mut rng = Rng::new(n as u64);
        let zs: Vec<f64> = (0..2 * s).map(|_| 0.3 * rng.normal()).collect();
        let tn = t * n;
        let mut kout = vec![0.0; 4 * s];
        let mut gx = vec![0.0; s * tn];
        mirror::kalman_loglik(&dp, &theta, &m0, &xs, &zs, &mut kout, &mut gx);
        let scale = kout.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        let gscale = gx.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        cases.push(
            Case::new(
                format!("kalman n {n} T {t}"),
                KernelId::KalmanLoglik,
                [s, 1],
            )
            .params("dp", &dp)
            .f32("theta", &theta)
            .f32("m0", &m0f)
            .f32("xs", &xs)
            .f32("zs", &zs)
            .f32("work", &vec![0.0; s * t * pb.modes() * 6])
            .expect("kout", &kout, 2e-4 * scale, 2e-3),
        );
        // The node gradient: kalman_grad_x after kalman_loglik (its input
        // is the first kernel's scratch, so the two run as a pair).
        let c = ctx();
        let dpb = c.upload("dp", &[dp]).unwrap();
        let up = |v: &[f64]| common::upload(c, "in", v);
        let (thb, m0b, xsb, zsb) = (up(&theta), up(&m0f), up(&xs), up(&zs));
        let work = up(&vec![0.0; s * t * pb.modes() * 6]);
        let ko = up(&vec![0.0; 4 * s]);
        let gxb = up(&vec![0.0; s * tn]);
        common::run(
            c,
            KernelId::KalmanLoglik,
            &[&dpb, &thb, &m0b, &xsb, &zsb, &work, &ko],
            [s, 1],
        );
        common::run(c, KernelId::KalmanGradX, &[&dpb, &work, &gxb], [s, 1]);
        common::assert_close(
            &format!("kalman n {n} T {t} gx"),
            &common::read(c, &gxb, s * tn),
            &gx,
            2e-4 * gscale,
            2e-3,
        );
    }
    // Sample, recon and assemble at a small size.
    let pb = AdvDiff {
        n: 12,
        t: 5,
        height: 6,
        ..Default::default()
    };
    let (s, sx) = (4, 2);
    let tn = pb.t * pb.n;
    let mut rng = Rng::new(3);
    for oracle in [false, true] {
        let dp = dparams(&pb, s, sx, oracle);
        let theta = theta0();
        let mu = rng.vec_uniform(tn, -0.2, 1.0);
        let mut xs = if oracle {
            rng.vec_uniform(sx * tn, -0.2, 1.0)
        } else {
            vec![0.0; sx * tn]
        };
        let xs_in = xs.clone();
        let mut zs = vec![0.0; 2 * s];
        mirror::dvae_sample(&dp, &theta, &mu, &mut xs, &mut zs);
        let mut c = Case::new(
            format!("sample oracle {oracle}"),
            KernelId::DvaeSample,
            [sx * tn, 1],
        )
        .params("dp", &dp)
        .f32("theta", &theta)
        .f32("mu", &mu);
        if oracle {
            c = c.f32("xs", &xs_in);
        }
        cases.push(
            c.expect("xs", &xs, 1e-5, 1e-4)
                .expect("zs", &zs, 1e-5, 1e-4),
        );
        let dec_out = rng.vec_uniform(sx * tn * pb.height, -0.1, 1.1);
        let frames = rng.vec_uniform(tn * pb.height, -0.1, 1.1);
        let mut delta = vec![0.0; dec_out.len()];
        let mut rowsq = vec![0.0; sx * tn];
        mirror::dvae_recon(&dp, &theta, &dec_out, &frames, &mut delta, &mut rowsq);
        if !oracle {
            cases.push(
                Case::new("recon", KernelId::DvaeRecon, [sx * tn, 1])
                    .params("dp", &dp)
                    .f32("theta", &theta)
                    .f32("dec_out", &dec_out)
                    .f32("frames", &frames)
                    .expect("dec_delta", &delta, 1e-6, 1e-4)
                    .expect("rowsq", &rowsq, 1e-6, 1e-4),
            );
        }
        let kout: Vec<f64> = (0..4 * s)
            .map(|i| {
                if i % 4 == 0 {
                    -50.0 + i as f64
                } else {
                    rng.uniform(-20.0, 20.0)
                }
            })
            .collect();
        let gxk = rng.vec_uniform(s * tn, -30.0, 30.0);
        let dxdec = rng.vec_uniform(sx * tn, -0.01, 0.01);
        let mut mugrad = vec![0.0; tn];
        let mut tout = vec![0.0; 16];
        mirror::dvae_assemble(
            &dp,
            &theta,
            &rowsq,
            &kout,
            &gxk,
            &dxdec,
            &mut mugrad,
            &mut tout,
        );
        let mut c = Case::new(
            format!("assemble oracle {oracle}"),
            KernelId::DvaeAssemble,
            [1, 1],
        )
        .params("dp", &dp)
        .f32("theta", &theta)
        .f32("rowsq", &rowsq)
        .f32("kout", &kout)
        .f32("gxk", &gxk)
        .f32("dxdec", &dxdec)
        .expect("tout", &tout, 1e-4, 1e-4);
        if !oracle {
            c = c.expect("mugrad", &mugrad, 1e-6, 1e-4);
        } else {
            c = c.f32("mugrad", &[0.0]);
        }
        cases.push(c);
    }
    // The level decoder fused with the frames' term, and its gradient sum:
    // rows not a multiple of LEVEL_ROWS (the last group cut short), a
    // hidden width below and at the kernel's maximum.
    let pb = AdvDiff {
        n: 7,
        t: 3,
        height: 6,
        ..Default::default()
    };
    let tn = pb.t * pb.n;
    for (nh, theta_sy) in [(5usize, -4.0), (mirror::LEVEL_MAX, -5.0)] {
        let mut dp = dparams(&pb, s, 3, false);
        dp.level_hidden = nh as u32;
        let rows = 3 * tn;
        let mut theta = theta0();
        theta[mirror::th::SY] = theta_sy;
        let xs = rng.vec_uniform(rows, -0.1, 1.1);
        let frames = rng.vec_uniform(tn * pb.height, -0.1, 1.1);
        let np = 3 * nh + 1;
        let dec_p = rng.vec_uniform(np, -2.0, 2.0);
        let groups = rows.div_ceil(mirror::LEVEL_ROWS);
        let (mut rowsq, mut ldx, mut gpart) =
            (vec![0.0; rows], vec![0.0; rows], vec![0.0; groups * np]);
        mirror::dvae_level(
            &dp, &theta, &xs, &frames, &mut rowsq, &dec_p, &mut ldx, &mut gpart,
        );
        let mut dgrad = vec![0.0; np];
        mirror::dvae_level_grad(&dp, &gpart, &mut dgrad);
        let scale = |v: &[f64]| v.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        cases.push(
            Case::new(format!("level J {nh}"), KernelId::DvaeLevel, [groups, 1])
                .params("dp", &dp)
                .f32("theta", &theta)
                .f32("xs", &xs)
                .f32("frames", &frames)
                .f32("dec_p", &dec_p)
                .expect("rowsq", &rowsq, 1e-5 * scale(&rowsq), 1e-4)
                .expect("ldx", &ldx, 1e-5 * scale(&ldx), 1e-3)
                .expect("gpart", &gpart, 1e-5 * scale(&gpart), 1e-3),
        );
        cases.push(
            Case::new(
                format!("level grad J {nh}"),
                KernelId::DvaeLevelGrad,
                [np, 1],
            )
            .params("dp", &dp)
            .f32("gpart", &gpart)
            .expect("dgrad", &dgrad, 1e-5 * scale(&dgrad), 1e-4),
        );
        // The fused gradients against central differences of the frames'
        // term (f64 mirror): F = gamma inv_norm / (2 Sx sigma_y^2) sum rowsq.
        let loss = |p: &[f64], x: &[f64]| {
            let (mut rq, mut a, mut b) = (vec![0.0; rows], vec![0.0; rows], vec![0.0; groups * np]);
            mirror::dvae_level(&dp, &theta, x, &frames, &mut rq, p, &mut a, &mut b);
            dp.gamma as f64 * dp.inv_norm as f64 / (2.0 * 3.0 * theta_sy.exp())
                * rq.iter().sum::<f64>()
        };
        let e = 1e-6;
        for k in [0, nh / 2, nh + 1, 2 * nh + 2, 3 * nh] {
            let (mut pp, mut pm) = (dec_p.clone(), dec_p.clone());
            pp[k] += e;
            pm[k] -= e;
            let fd = (loss(&pp, &xs) - loss(&pm, &xs)) / (2.0 * e);
            assert!(
                (fd - dgrad[k]).abs() <= 1e-6 * fd.abs().max(1.0),
                "level J {nh}: d/dparam {k} {} against central differences {fd}",
                dgrad[k]
            );
        }
        for k in [0, rows / 2, rows - 1] {
            let (mut xp, mut xm) = (xs.clone(), xs.clone());
            xp[k] += e;
            xm[k] -= e;
            let fd = (loss(&dec_p, &xp) - loss(&dec_p, &xm)) / (2.0 * e);
            assert!(
                (fd - ldx[k]).abs() <= 1e-6 * fd.abs().max(1.0),
                "level J {nh}: d/dx {k} {} against central differences {fd}",
                ldx[k]
            );
        }
    }
    run_cases(ctx(), &cases);
}

// ---------------------------------------------------------------------------
// Fits.

use pdevi::infer::dvae::{fit, DvaeData, DvaeSettings};

#[test]
fn oracle_mode_matches_the_grid_posterior() {
    // Known noisy states: q(zeta) must match the exact posterior of this
    // 2-D problem, computed on a grid with the f64 filter.
    let pb = AdvDiff::default();
    let noise = 0.02;
    for (zeta, seed) in [([0.5, -0.5], 21u64), ([-0.8, 0.9], 22)] {
        let x = noisy_states(&pb, zeta, seed, noise);
        let (gm, gc) = kalman::grid_posterior(&pb, &x, noise * noise);
        let s = DvaeSettings {
            steps: 3000,
            samples: 16,
            lr_theta: 2e-2,
            lr_final: 0.01,
            seed,
            ..Default::default()
        };
        let r = fit(ctx(), &pb, &DvaeData::Oracle { x, noise }, &s, |_, _| {}).expect("oracle fit");
        for k in 0..2 {
            let sd = gc[k][k].sqrt();
            let qsd = r.zeta_cov[k][k].sqrt();
            eprintln!(
                "zeta {zeta:?} coordinate {k}: grid {:.5} +- {:.5}, q {:.5} +- {:.5}",
                gm[k], sd, r.zeta_mean[k], qsd
            );
            assert!(
                (r.zeta_mean[k] - gm[k]).abs() < 0.25 * sd,
                "zeta {zeta:?} coordinate {k}: q's mean {} is {:.2} grid sd from the grid's {}",
                r.zeta_mean[k],
                (r.zeta_mean[k] - gm[k]).abs() / sd,
                gm[k]
            );
            assert!(
                (qsd / sd - 1.0).abs() < 0.2,
                "zeta {zeta:?} coordinate {k}: q's sd {qsd} against the grid's {sd}"
            );
        }
        // The model holds here, so the scores' sandwich does not widen q
        // much (40 frames make it a noisy estimate).
        assert!(
            r.inflation.iter().all(|f| (1.0..2.0).contains(f)),
            "zeta {zeta:?}: calibration inflation {:?} with exact states",
            r.inflation
        );
        // The grid posterior itself holds the truth.
        for k in 0..2 {
            assert!(
                (gm[k] - zeta[k]).abs() < 4.0 * gc[k][k].sqrt(),
                "grid posterior far from the truth"
            );
        }
    }
}

/// The per-frame terms add up to the filter's log-likelihood, and the
/// scores' sandwich (`kalman::sandwich_cov`, the calibrated covariance of
/// `pdevi dvae`) is close to the posterior covariance when the model holds.
#[test]
fn sandwich_is_near_the_posterior_when_the_model_holds() {
    let pb = AdvDiff::default();
    let noise = 0.004;
    let zeta = [0.4, 0.6];
    let m0 = pb.to_modes(&pb.m0());
    let lag = pdevi::infer::dvae::newey_west_lag(pb.t);
    assert_eq!(lag, 3);
    let mut ratios = [Vec::new(), Vec::new()];
    for seed in 31..35u64 {
        let x = noisy_states(&pb, zeta, seed, noise);
        let xm = kalman::x_modes(&pb, &x);
        let steps = kalman::loglik_steps(&pb, &m0, &xm, zeta, noise * noise);
        let whole = kalman::loglik_modes(&pb, &m0, &xm, zeta, noise * noise);
        assert!((steps.iter().sum::<f64>() - whole).abs() < 1e-9 * whole.abs());
        let (gm, gc) = kalman::grid_posterior(&pb, &x, noise * noise);
        let (sw, _) = kalman::sandwich_cov(&pb, &x, gm, noise * noise, gc, lag);
        for k in 0..2 {
            ratios[k].push(sw[k][k] / gc[k][k]);
        }
    }
    // From 40 frames the sandwich is a noisy estimate (0.3 to 1.4 of the
    // posterior variance per sequence, measured): its mean over four
    // sequences is near 1.
    eprintln!("sandwich / posterior variance with exact states: {ratios:?}");
    for k in 0..2 {
        let mean = ratios[k].iter().sum::<f64>() / ratios[k].len() as f64;
        assert!(
            (0.5..1.6).contains(&mean),
            "coordinate {k}: mean variance ratio {mean} with exact states"
        );
    }
}

#[test]
fn end_to_end_on_a_short_sequence_recovers_zeta_and_the_states() {
    // A smaller grid than the spec's (n = 32, T = 20) keeps the test short;
    // the spec-size figures are in the README (examples/phi_dvae.rs).
    let pb = AdvDiff {
        n: 32,
        t: 20,
        ..Default::default()
    };
    let zeta = [0.6, -0.7];
    let (u, frames) = pb.simulate(zeta, 5, true);
    let s = DvaeSettings {
        steps: 3000,
        seed: 1,
        ..Default::default()
    };
    let r = fit(ctx(), &pb, &DvaeData::Frames(frames), &s, |_, _| {}).expect("fit");
    let sm = r.smooth(&pb).expect("smoother");
    let rel = pdevi::cli::dvae::rel_l2(&sm.mean, &u);
    let (c_true, nu_true) = physical(zeta);
    let (c, nu) = r.physical_moments();
    eprintln!(
        "zeta {:?} sd {:.4} {:.4}; c {:.4} +- {:.4} (true {c_true:.4}); nu {:.5} +- {:.5} (true {nu_true:.5}); state rel. L2 {rel:.4}; ELBO {:?}",
        r.zeta_mean,
        r.zeta_cov[0][0].sqrt(),
        r.zeta_cov[1][1].sqrt(),
        c[0],
        c[1],
        nu[0],
        nu[1],
        r.trace.last().map(|p| p.elbo)
    );
    assert!(
        (c[0] - c_true).abs() < 3.0 * c[1],
        "c {} +- {} against {c_true}",
        c[0],
        c[1]
    );
    assert!(
        (nu[0] - nu_true).abs() < 3.0 * nu[1],
        "nu {} +- {} against {nu_true}",
        nu[0],
        nu[1]
    );
    assert!(
        rel < 0.1,
        "smoothed state {rel} from the truth (relative L2)"
    );
    // The target in zeta units too.
    for i in 0..2 {
        assert!(
            (r.zeta_mean[i] - zeta[i]).abs() < 0.15,
            "zeta_{} {} against {}",
            i + 1,
            r.zeta_mean[i],
            zeta[i]
        );
    }
    // The ELBO rose.
    let first = r.trace.first().map(|p| p.elbo).unwrap_or(f64::NAN);
    let last = r.trace.last().map(|p| p.elbo).unwrap_or(f64::NAN);
    assert!(last > first, "ELBO {first} -> {last}");
}

#[test]
fn bad_settings_and_inputs_are_refused_with_their_names() {
    let pb = AdvDiff {
        n: 8,
        t: 3,
        height: 4,
        ..Default::default()
    };
    let bad = |s: DvaeSettings, d: DvaeData, want: &str| {
        let e = fit(ctx(), &pb, &d, &s, |_, _| {})
            .expect_err("must fail")
            .to_string();
        assert!(e.contains(want), "error `{e}` does not name `{want}`");
    };
    let frames = DvaeData::Frames(vec![0.0; 3 * 4 * 8]);
    bad(
        DvaeSettings {
            samples: 3,
            x_samples: 2,
            ..Default::default()
        },
        frames.clone(),
        "samples",
    );
    bad(
        DvaeSettings {
            steps: 0,
            ..Default::default()
        },
        frames.clone(),
        "steps",
    );
    // The level decoder's private arrays hold one layer of at most 32.
    for lh in [vec![33], vec![8, 8]] {
        bad(
            DvaeSettings {
                level_hidden: lh,
                ..Default::default()
            },
            frames.clone(),
            "level-hidden",
        );
    }
    bad(
        DvaeSettings {
            lr: f64::NAN,
            ..Default::default()
        },
        frames,
        "lr",
    );
    let mut v = vec![0.0; 3 * 4 * 8];
    v[5] = f64::NAN;
    bad(DvaeSettings::default(), DvaeData::Frames(v), "index 5");
    bad(
        DvaeSettings::default(),
        DvaeData::Frames(vec![0.0; 7]),
        "frames",
    );
    bad(
        DvaeSettings::default(),
        DvaeData::Oracle {
            x: vec![0.0; 24],
            noise: -1.0,
        },
        "oracle-noise",
    );
}

#[test]
fn cli_simulates_and_fits_and_writes_every_output() {
    let exe = env!("CARGO_BIN_EXE_pdevi");
    let dir = std::env::temp_dir().join(format!("pdevi_dvae_cli_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sim = dir.join("sim");
    let run = |args: &[&str]| {
        let o = std::process::Command::new(exe)
            .args(args)
            .output()
            .expect("run pdevi");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, err) = run(&[
        "simulate",
        "--problem",
        "advdiff1d",
        "--n",
        "16",
        "--zeta",
        "0.5,-0.5",
        "--seed",
        "3",
        "--out",
        sim.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (shape, frames) = pdevi::output::io::read_npy(&sim.join("frames.npy")).unwrap();
    assert_eq!(shape, vec![40, 32, 16]);
    let pb = AdvDiff {
        n: 16,
        ..Default::default()
    };
    let (u_want, f_want) = pb.simulate([0.5, -0.5], 3, true);
    assert_eq!(frames, f_want, "frames.npy is the spec's simulation");
    let (shape, u) = pdevi::output::io::read_npy(&sim.join("u_true.npy")).unwrap();
    assert_eq!((shape, u), (vec![40, 16], u_want));
    let (_, z) = pdevi::output::io::read_npy(&sim.join("zeta_true.npy")).unwrap();
    assert_eq!(z, vec![0.5, -0.5]);
    // A training set of sequences.
    let set = dir.join("set.safetensors");
    let (code, err) = run(&[
        "simulate",
        "--problem",
        "advdiff1d",
        "--n",
        "16",
        "--count",
        "3",
        "--out",
        set.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let bytes = std::fs::read(&set).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("frames").unwrap().shape(), &[3, 40, 32, 16]);
    assert_eq!(st.tensor("u_true").unwrap().shape(), &[3, 40, 16]);
    assert_eq!(st.tensor("zeta").unwrap().shape(), &[3, 2]);
    // A (short) fit writes every file.
    let out = dir.join("fit");
    let (code, err) = run(&[
        "dvae",
        "--frames",
        sim.join("frames.npy").to_str().unwrap(),
        "--truth",
        sim.join("u_true.npy").to_str().unwrap(),
        "--zeta-truth",
        sim.join("zeta_true.npy").to_str().unwrap(),
        "--steps",
        "40",
        "--report-every",
        "10",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    for f in [
        "posterior_zeta.json",
        "u_mean.npy",
        "u_std.npy",
        "x_mean.npy",
        "state.png",
        "frames.png",
        "elbo.png",
        "q_zeta.png",
        "q_zeta_zoom.png",
        "metrics.json",
        "encoder.safetensors",
        "decoder.safetensors",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let post: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("posterior_zeta.json")).unwrap()).unwrap();
    for k in ["mean", "cov", "c", "nu"] {
        assert!(post.get(k).is_some(), "posterior_zeta.json lacks {k}");
    }
    assert!(post["c"]["sd"].as_f64().unwrap() > 0.0 && post["nu"]["mean"].as_f64().unwrap() > 0.0);
    let (shape, _) = pdevi::output::io::read_npy(&out.join("u_std.npy")).unwrap();
    assert_eq!(shape, vec![40, 16]);
    // Bad input: one line naming the problem.
    let (code, err) = run(&[
        "dvae",
        "--frames",
        sim.join("u_true.npy").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("u_true.npy") && err.contains("3-D"), "{err}");
    let (code, err) = run(&[
        "simulate",
        "--problem",
        "advdiff1d",
        "--zeta",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("zeta"), "{err}");
    let (code, err) = run(&[
        "dvae",
        "--oracle-states",
        sim.join("u_true.npy").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("oracle-noise"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
