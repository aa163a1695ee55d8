//! Variational inference: KL kernels, Adam, the ELBO gradient (GPU vs CPU
//! mirror vs finite differences) and recovery of the exact poisson1d
//! posterior.

mod common;

use common::{assert_close, ctx, read, run, upload, Rng};
use pdevi::cpu::infer::vi as cvi;
use pdevi::gpu::KernelId;
use pdevi::infer::adam::AdamParams;
use pdevi::infer::vi::{fit, Family, FitSettings, ViEngine, ViParams};
use pdevi::physics::problem::{Problem, ProblemKind};
use pdevi::physics::reference;
use pdevi::physics::solver::CgParams;

fn families(d: usize) -> Vec<Family> {
    vec![
        Family::MeanField,
        Family::FullRank,
        Family::LowRank { rank: 3.min(d) },
    ]
}

fn random_theta(f: Family, d: usize, rng: &mut Rng) -> Vec<f64> {
    let mut t = rng.vec_uniform(f.nparam(d), -0.5, 0.5);
    if f == Family::FullRank {
        for i in 0..d {
            for j in i + 1..d {
                t[d + i * d + j] = 0.0;
            }
        }
    }
    t
}

/// Dense log-determinant by Cholesky.
fn logdet(a: &[f64], d: usize) -> f64 {
    let (_, ld) = pdevi::math::linalg::spd_inverse(a, d).unwrap();
    ld
}

#[test]
fn kl_matches_closed_form_and_its_gradient_fd() {
    let d = 7;
    let mut rng = Rng::new(1);
    for f in families(d) {
        let theta = random_theta(f, d, &mut rng);
        let v = ViParams::new(f, d, 1, 0, 1, 1.0);
        let mut grad = vec![0.0; f.nparam(d)];
        let mut sc = vec![0.0; 4 + v.history as usize];
        cvi::vi_kl(&v, &theta, &mut grad, &mut sc);
        let (m, cov) = f.moments(d, &theta);
        let tr: f64 = (0..d).map(|i| cov[i * d + i]).sum();
        let mm: f64 = m.iter().map(|x| x * x).sum();
        let kl = 0.5 * (tr + mm - d as f64 - logdet(&cov, d));
        assert!(
            (sc[0] - kl).abs() < 1e-10,
            "{f:?}: kl {} closed form {kl}",
            sc[0]
        );
        // Gradient by central differences of the closed form.
        let eps = 1e-6;
        for p in 0..f.nparam(d) {
            if f == Family::FullRank && (p - d.min(p)) % d > (p.saturating_sub(d)) / d && p >= d {
                continue; // upper triangle: unused
            }
            let mut tp = theta.clone();
            tp[p] += eps;
            let mut tm = theta.clone();
            tm[p] -= eps;
            let klf = |t: &[f64]| {
                let (m, cov) = f.moments(d, t);
                let tr: f64 = (0..d).map(|i| cov[i * d + i]).sum();
                let mm: f64 = m.iter().map(|x| x * x).sum();
                0.5 * (tr + mm - d as f64 - logdet(&cov, d))
            };
            let fd = (klf(&tp) - klf(&tm)) / (2.0 * eps);
            assert!(
                (fd - grad[p]).abs() < 1e-6 * (1.0 + fd.abs()),
                "{f:?} dKL/dtheta[{p}]: {} vs fd {fd}",
                grad[p]
            );
        }
    }
}

#[test]
fn vi_kernels_match_cpu() {
    let ctx = ctx();
    let (d, s) = (9usize, 5usize);
    let mut rng = Rng::new(2);
    for f in families(d) {
        let theta = random_theta(f, d, &mut rng);
        let mut v = ViParams::new(f, d, s, 0xDEAD_BEEF_1234, 49, 1e-3);
        v.step = 17;
        let e = f.noise_dim(d);
        let np = f.nparam(d);
        // noise (Philox in WGSL vs Rust) and samples
        let mut eps = vec![0.0; s * e];
        cvi::vi_noise(&v, &mut eps);
        let mut xi = vec![0.0; s * d];
        cvi::vi_sample(&v, &theta, &eps, &mut xi);
        let bv = ctx.upload("v", &[v]).unwrap();
        let bt = upload(ctx, "theta", &theta);
        let be = ctx.storage("eps", (s * e * 4) as u64).unwrap();
        let bx = ctx.storage("xi", (s * d * 4) as u64).unwrap();
        run(ctx, KernelId::ViNoise, &[&bv, &be], [s * e, 1]);
        assert_close(
            &format!("{f:?} noise"),
            &read(ctx, &be, s * e),
            &eps,
            2e-5,
            2e-5,
        );
        run(ctx, KernelId::ViSample, &[&bv, &bt, &be, &bx], [s * d, 1]);
        assert_close(
            &format!("{f:?} sample"),
            &read(ctx, &bx, s * d),
            &xi,
            1e-5,
            1e-5,
        );
        // kl + reparameterisation gradient
        let gxi = rng.vec_uniform(s * d, -2.0, 2.0);
        let mut grad = vec![0.0; np];
        let mut sc = vec![0.0; 4 + v.history as usize];
        cvi::vi_kl(&v, &theta, &mut grad, &mut sc);
        let kl_grad = grad.clone();
        cvi::vi_grad(&v, &theta, &eps, &gxi, &mut grad);
        let bg = ctx.storage("grad", (np * 4) as u64).unwrap();
        let bs = ctx
            .storage("scalars", ((4 + v.history as usize) * 4) as u64)
            .unwrap();
        let bgx = upload(ctx, "gxi", &gxi);
        let klk = if f.rank() > 0 {
            KernelId::ViKlLowRank
        } else {
            KernelId::ViKl
        };
        run(ctx, klk, &[&bv, &bt, &bg, &bs], [1, 1]);
        assert_close(
            &format!("{f:?} kl grad"),
            &read(ctx, &bg, np),
            &kl_grad,
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("{f:?} kl"),
            &read(ctx, &bs, 1),
            &sc[..1],
            1e-5,
            1e-5,
        );
        run(ctx, KernelId::ViGrad, &[&bv, &bt, &be, &bgx, &bg], [np, 1]);
        assert_close(
            &format!("{f:?} grad"),
            &read(ctx, &bg, np),
            &grad,
            1e-4,
            1e-4,
        );
        // elbo
        let misfit = rng.vec_uniform(s, 10.0, 20.0);
        let bm = upload(ctx, "misfit", &misfit);
        let mut v2 = v;
        v2.log_norm = 3.5;
        let bv2 = ctx.upload("v2", &[v2]).unwrap();
        cvi::vi_elbo(&v2, &misfit, &mut sc);
        run(ctx, KernelId::ViElbo, &[&bv2, &bm, &bs], [1, 1]);
        let got = read(ctx, &bs, 4 + v.history as usize);
        assert_close(&format!("{f:?} elbo"), &got[1..3], &sc[1..3], 1e-4, 1e-5);
        assert_close(
            &format!("{f:?} elbo ring"),
            &got[4 + 17..4 + 18],
            &sc[4 + 17..4 + 18],
            1e-4,
            1e-5,
        );
    }
}

#[test]
fn adam_matches_cpu() {
    let ctx = ctx();
    let n = 1000;
    let mut rng = Rng::new(3);
    let mut param = rng.vec_uniform(n, -1.0, 1.0);
    let mut m1 = vec![0.0; n];
    let mut m2 = vec![0.0; n];
    let bp = upload(ctx, "p", &param);
    let bm = ctx.storage("m", (n * 4) as u64).unwrap();
    let bv = ctx.storage("v", (n * 4) as u64).unwrap();
    for step in 1..=5u32 {
        let grad = rng.vec_uniform(n, -3.0, 3.0);
        let mut a = AdamParams::new(n, 0.01);
        a.step = step;
        a.weight_decay = if step > 3 { 0.1 } else { 0.0 };
        a.grad_scale = 0.5;
        cvi::adam_step(&a, &grad, &mut param, &mut m1, &mut m2);
        let ba = ctx.uniform("a", &a);
        let bg = upload(ctx, "g", &grad);
        run(ctx, KernelId::AdamStep, &[&ba, &bg, &bp, &bm, &bv], [n, 1]);
    }
    assert_close("adam param", &read(ctx, &bp, n), &param, 1e-5, 1e-5);
    assert_close("adam m", &read(ctx, &bm, n), &m1, 1e-5, 1e-5);
    assert_close("adam v", &read(ctx, &bv, n), &m2, 1e-5, 1e-5);
}

fn simulate(pb: &Problem, seed: u64) -> Vec<f64> {
    reference::simulate_data(pb, seed).1
}

#[test]
fn elbo_gradient_gpu_cpu_and_finite_differences() {
    let ctx = ctx();
    for (kind, n, d) in [
        (ProblemKind::Darcy2d, 16, 8),
        (ProblemKind::Poisson1d, 64, 8),
    ] {
        let pb = Problem::new(kind, n, d).unwrap();
        let y = simulate(&pb, 4);
        let s = 4;
        for f in families(d) {
            let mut rng = Rng::new(5);
            let theta: Vec<f64> = random_theta(f, d, &mut rng)
                .iter()
                .map(|v| 0.3 * v)
                .collect();
            let cg = CgParams {
                rel_tol: 1e-6,
                ..Default::default()
            };
            let mut eng = ViEngine::new(ctx, &pb, f, s, &pb.sensors, &y, 77, cg).unwrap();
            eng.set_theta(ctx, &theta).unwrap();
            eng.evaluate(ctx, 3).unwrap();
            let g_gpu = eng.read_grad(ctx).unwrap();
            let sc = eng.read_scalars(ctx).unwrap();
            let mut v = eng.vi_params();
            v.step = 3;
            let mut eps = vec![0.0; s * f.noise_dim(d)];
            cvi::vi_noise(&v, &mut eps);
            let (elbo, kl, g) = cvi::elbo_and_grad(&pb, &v, &theta, &eps, &pb.sensors, &y);
            let gmax = g.iter().fold(0.0f64, |a, x| a.max(x.abs()));
            assert_close(
                &format!("{kind:?} {f:?} -ELBO gradient"),
                &g_gpu,
                &g,
                3e-3 * gmax,
                3e-3,
            );
            assert!(
                (sc.elbo - elbo).abs() < 1e-3 * elbo.abs().max(1.0),
                "{kind:?} {f:?} elbo gpu {} cpu {elbo}",
                sc.elbo
            );
            assert!((sc.kl - kl).abs() < 1e-4 * kl.abs().max(1.0));
            // Finite differences of the CPU ELBO with common random numbers.
            let h = 1e-5;
            for p in 0..f.nparam(d) {
                if f == Family::FullRank && p >= d && (p - d) % d > (p - d) / d {
                    continue;
                }
                let mut tp = theta.clone();
                tp[p] += h;
                let mut tm = theta.clone();
                tm[p] -= h;
                let ep = cvi::elbo_and_grad(&pb, &v, &tp, &eps, &pb.sensors, &y).0;
                let em = cvi::elbo_and_grad(&pb, &v, &tm, &eps, &pb.sensors, &y).0;
                let fd = -(ep - em) / (2.0 * h);
                let err = (fd - g[p]).abs() / gmax;
                assert!(
                    err < 1e-5,
                    "{kind:?} {f:?} d(-ELBO)/dtheta[{p}] = {} fd {fd} rel {err:e}",
                    g[p]
                );
            }
        }
    }
}

/// Exact posterior of poisson1d: G column by column with f64 solves.
fn exact_posterior(pb: &Problem, y: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let e = pdevi::infer::linear::LinearPosterior::new(pb);
    (e.mean(pb, y), e.prec)
}

#[test]
fn poisson1d_vi_recovers_exact_posterior() {
    let ctx = ctx();
    let pb = Problem::default_for(ProblemKind::Poisson1d);
    let d = pb.d;
    let y = simulate(&pb, 11);
    let (mu, prec) = exact_posterior(&pb, &y);
    let (cov, _) = pdevi::math::linalg::spd_inverse(&prec, d).unwrap();
    for f in [Family::FullRank, Family::MeanField] {
        let settings = FitSettings {
            family: f,
            samples: 64,
            steps: 3000,
            lr: 0.1,
            lr_final: 0.05,
            seed: 3,
            report_every: 100,
            ..Default::default()
        };
        let mut eng = ViEngine::new(
            ctx,
            &pb,
            f,
            settings.samples,
            &pb.sensors,
            &y,
            settings.seed,
            settings.cg,
        )
        .unwrap();
        let mut good = Vec::new();
        let r = fit(ctx, &mut eng, &settings, &mut good, |_, _| {}).unwrap();
        let (m, q) = f.moments(d, &r.theta);
        // The target covariance: exact (full-rank) or 1/diag(precision) (mean-field).
        let target: Vec<f64> = match f {
            Family::FullRank => cov.clone(),
            _ => (0..d * d)
                .map(|k| if k % (d + 1) == 0 { 1.0 / prec[k] } else { 0.0 })
                .collect(),
        };
        // Errors measured in units of the posterior std of each coordinate.
        let mut worst_mean: f64 = 0.0;
        let mut worst_sd: f64 = 0.0;
        for i in 0..d {
            let sd = target[i * d + i].sqrt();
            let em = (m[i] - mu[i]).abs() / sd;
            let es = (q[i * d + i].sqrt() / sd - 1.0).abs();
            if em > 0.05 || es > 0.05 {
                eprintln!(
                    "  {f:?} xi_{i}: target sd {sd:.3e}, q sd {:.3e}, mean error {em:.3} sd",
                    q[i * d + i].sqrt()
                );
            }
            worst_mean = worst_mean.max(em);
            worst_sd = worst_sd.max(es);
        }
        let mut worst_corr: f64 = 0.0;
        if f == Family::FullRank {
            for i in 0..d {
                for j in 0..i {
                    let c = |a: &[f64]| a[i * d + j] / (a[i * d + i] * a[j * d + j]).sqrt();
                    worst_corr = worst_corr.max((c(&q) - c(&target)).abs());
                }
            }
        }
        eprintln!(
            "{f:?}: {} steps in {:.1}s, worst |mean error|/sd {worst_mean:.3}, worst |sd ratio - 1| {worst_sd:.3}, worst corr error {worst_corr:.3}, final elbo {:.3}",
            settings.steps,
            r.seconds,
            r.trace.last().unwrap().1
        );
        // The final iterate fluctuates around the optimum with the step size
        // (Adam moves each parameter by up to lr_final * lr = 5e-3 per step,
        // with S = 64 noisy gradients): measured 0.08-0.16 sd in the mean and
        // < 5% in the sd. A wrong posterior is off by O(1) sd (the prior
        // mean is off by |mu_i| / sd_i >> 1 for the identified modes).
        assert!(worst_mean < 0.25, "{f:?}: mean off by {worst_mean} sd");
        assert!(worst_sd < 0.1, "{f:?}: sd off by {worst_sd}");
        assert!(worst_corr < 0.1, "{f:?}: correlation off by {worst_corr}");
    }
}

#[test]
fn families_start_from_a_given_gaussian() {
    // theta_from_gaussian is the inverse of moments where the family can
    // represent the Gaussian: exactly for full-rank, the diagonal for
    // mean-field, and low-rank + isotropic covariances for low-rank.
    let d = 6;
    let mut rng = Rng::new(21);
    let m = rng.vec_normal(d);
    let a = rng.vec_normal(d * d);
    let mut cov = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            cov[i * d + j] = (0..d).map(|k| a[i * d + k] * a[j * d + k]).sum::<f64>() / d as f64
                + if i == j { 0.1 } else { 0.0 };
        }
    }
    let (m1, c1) = Family::FullRank.moments(
        d,
        &Family::FullRank.theta_from_gaussian(d, &m, &cov).unwrap(),
    );
    assert_close("full-rank mean", &m1, &m, 1e-12, 0.0);
    assert_close("full-rank cov", &c1, &cov, 1e-10, 0.0);
    let (_, c2) = Family::MeanField.moments(
        d,
        &Family::MeanField.theta_from_gaussian(d, &m, &cov).unwrap(),
    );
    for i in 0..d {
        assert!((c2[i * d + i] - cov[i * d + i]).abs() < 1e-12);
    }
    // W W^T + 0.3 I with W of rank 2.
    let w = rng.vec_normal(d * 2);
    let mut lr = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            lr[i * d + j] = (0..2).map(|k| w[i * 2 + k] * w[j * 2 + k]).sum::<f64>()
                + if i == j { 0.3 } else { 0.0 };
        }
    }
    let f = Family::LowRank { rank: 2 };
    let (_, c3) = f.moments(d, &f.theta_from_gaussian(d, &m, &lr).unwrap());
    assert_close("low-rank cov", &c3, &lr, 1e-9, 1e-9);
}

/// The tolerance schedule of `--tol-start`: a decade at a time from the
/// start to `cg.rel_tol`, reached by 60 % of the steps, and off by default.
#[test]
fn tolerance_schedule_tightens_by_decades() {
    let mut s = FitSettings {
        steps: 1000,
        ..Default::default()
    };
    s.cg.rel_tol = 1e-5;
    assert!((0..1000).all(|t| pdevi::infer::vi::tol_at(&s, t) == 1e-5));
    s.tol_start = Some(1e-2);
    let tols: Vec<f64> = (0..1000).map(|t| pdevi::infer::vi::tol_at(&s, t)).collect();
    assert!((tols[0] - 1e-2).abs() < 1e-15, "{}", tols[0]);
    assert!(tols.windows(2).all(|w| w[1] <= w[0]), "not monotone");
    assert!(
        tols[600..].iter().all(|&t| t == 1e-5),
        "not tight after 60 %"
    );
    let mut levels: Vec<f64> = tols.clone();
    levels.dedup();
    assert_eq!(levels.len(), 4, "{levels:?}");
}
