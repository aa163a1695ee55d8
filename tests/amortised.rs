//! Amortised posteriors and surrogates (primer A2, A3): the surrogate
//! likelihood kernel against its mirror and finite differences, training
//! sets on disk (round trip, bad files), NPE on the linear-Gaussian
//! poisson1d against the exact posterior, a surrogate of poisson1d's linear
//! map and VI with it against the exact posterior, and darcy2d n = 16:
//! coverage of amortised posteriors on held-out prior problems and
//! refinement toward per-instance VI.

mod common;

use common::{assert_close, ctx, read, run, upload, Rng};
use pdevi::api;
use pdevi::cpu::infer::surrogate as cs;
use pdevi::gpu::KernelId;
use pdevi::infer::amortised::{train_encoder, EncoderSettings};
use pdevi::infer::surrogate::{
    train_surrogate, SurrogateParams, SurrogateSettings, SurrogateVi, Target,
};
use pdevi::infer::vi::{Family, FitSettings};
use pdevi::nn::dataset::SimSet;
use pdevi::physics::solver::{CgParams, Precond};
use pdevi::{Problem, ProblemKind};

fn cg() -> CgParams {
    CgParams {
        rel_tol: 1e-6,
        max_iters: 4000,
        warm_start: false,
        precond: Precond::Auto,
        ..Default::default()
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("pdevi-amortised-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// max_i |m_i - e_i| / sd_i and the range of the sd ratios.
fn mean_sd_errors(m: &[f64], cov: &[f64], em: &[f64], ecov: &[f64]) -> (f64, f64, f64) {
    let d = m.len();
    let mut worst: f64 = 0.0;
    let (mut lo, mut hi) = (f64::INFINITY, 0f64);
    for i in 0..d {
        let sd = ecov[i * d + i].sqrt();
        worst = worst.max((m[i] - em[i]).abs() / sd);
        let r = cov[i * d + i].sqrt() / sd;
        lo = lo.min(r);
        hi = hi.max(r);
    }
    (worst, lo, hi)
}

#[test]
fn surrogate_misfit_matches_cpu_and_finite_differences() {
    let ctx = ctx();
    let mut rng = Rng::new(11);
    for has_lv in [0u32, 1] {
        let (rows, nobs, w) = (5usize, 4usize, 6usize);
        let width = if has_lv == 1 { 2 * w } else { w };
        let p = SurrogateParams {
            rows: rows as u32,
            nobs: nobs as u32,
            width: width as u32,
            lv_off: w as u32,
            has_lv,
            slot: 2,
            sigma2: 0.04,
            _pad: 0,
        };
        let outputs = rng.vec_uniform(rows * width, -1.5, 1.5);
        let mut obs = rng.vec_uniform(nobs, -1.0, 1.0);
        obs.extend(rng.vec_uniform(nobs, -0.5, 0.5));
        obs.extend(rng.vec_uniform(nobs, 0.2, 1.5));
        // Two observations read column 3 (a field surrogate may do so).
        let col = [0u32, 3, 3, 5];
        let mut grad = vec![7.0; rows * width];
        let mut misfit = vec![0.0; 2 + rows];
        cs::surrogate_misfit(&p, &outputs, &obs, &col, &mut grad, &mut misfit);
        let u = ctx.uniform("p", &p);
        let (bo, bobs) = (upload(ctx, "o", &outputs), upload(ctx, "obs", &obs));
        let bcol = ctx.upload("col", &col).unwrap();
        let bg = upload(ctx, "g", &vec![7.0; rows * width]);
        let bm = upload(ctx, "m", &vec![0.0; 2 + rows]);
        run(
            ctx,
            KernelId::SurrogateMisfit,
            &[&u, &bo, &bobs, &bcol, &bg, &bm],
            [rows, 1],
        );
        let name = format!("surrogate_misfit has_lv {has_lv}");
        assert_close(&name, &read(ctx, &bg, grad.len()), &grad, 1e-5, 1e-4);
        assert_close(&name, &read(ctx, &bm, misfit.len()), &misfit, 1e-5, 1e-4);
        // The mirror's gradient against central differences of its misfit.
        let h = 1e-6;
        for k in 0..outputs.len() {
            let f = |o: &[f64]| {
                let mut g = vec![0.0; o.len()];
                let mut m = vec![0.0; 2 + rows];
                cs::surrogate_misfit(&p, o, &obs, &col, &mut g, &mut m);
                m[2 + k / width]
            };
            let (mut a, mut b) = (outputs.clone(), outputs.clone());
            a[k] += h;
            b[k] -= h;
            let fd = (f(&a) - f(&b)) / (2.0 * h);
            assert!(
                (fd - grad[k]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{name}: d misfit / d output {k}: finite differences {fd}, mirror {}",
                grad[k]
            );
        }
    }
}

#[test]
fn training_sets_round_trip_and_bad_files_are_refused() {
    let ctx = ctx();
    let pb = Problem::new(ProblemKind::Poisson1d, 32, 6).unwrap();
    let set = SimSet::simulate(ctx, &pb, 10, 4, true, cg(), 4, |_, _| {}).unwrap();
    // The noise-free sensor values are the f64 reference solve's, to f32 accuracy.
    for j in [0usize, 9] {
        let xi = pdevi::nn::dataset::prior_draw(4, j, 6);
        assert_eq!(&set.xi[j * 6..(j + 1) * 6], &xi[..]);
        let f = pdevi::physics::reference::forward(&pb, &xi, 1e-12, 10_000);
        let want: Vec<f64> = pb.sensors.iter().map(|&s| f.u[s]).collect();
        assert_close(
            "simulated y",
            &set.y[j * set.m()..(j + 1) * set.m()],
            &want,
            1e-5,
            1e-4,
        );
    }
    let dir = tmp("sets");
    let path = dir.join("set.safetensors");
    set.save(&path).unwrap();
    let back = SimSet::load(&path).unwrap();
    assert_eq!(back.settings, set.settings);
    let f32r = |v: &[f64]| v.iter().map(|&x| x as f32 as f64).collect::<Vec<f64>>();
    assert_eq!(back.xi, f32r(&set.xi));
    assert_eq!(back.y, f32r(&set.y));
    assert_eq!(
        back.u.as_deref(),
        Some(&f32r(set.u.as_deref().unwrap())[..])
    );
    back.check_matches(&pb, &path).unwrap();
    let other = Problem::new(ProblemKind::Poisson1d, 32, 5).unwrap();
    let e = back.check_matches(&other, &path).unwrap_err().to_string();
    assert!(
        e.contains("d = 6 (command: 5)") && e.contains("set.safetensors"),
        "{e}"
    );

    // Bad files: not safetensors, another format, a missing tensor, a wrong shape.
    use safetensors::tensor::{Dtype, TensorView};
    let write = |name: &str, meta: &[(&str, &str)], tensors: &[(&str, Vec<usize>)]| {
        let p = dir.join(name);
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, s)| vec![0u8; 4 * s.iter().product::<usize>()])
            .collect();
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .zip(&bytes)
            .map(|((n, s), b)| {
                (
                    n.to_string(),
                    TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let meta = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        safetensors::serialize_to_file(views, Some(meta), &p).unwrap();
        p
    };
    let sensors = serde_json::to_string(&pb.sensors).unwrap();
    let good_meta: Vec<(&str, &str)> = vec![
        ("format", "pdevi-simset"),
        ("problem", "poisson1d"),
        ("n", "32"),
        ("d", "6"),
        ("count", "3"),
        ("seed", "0"),
        ("sigma_n", "1e-2"),
        ("cg_tol", "1e-5"),
        ("sensors", &sensors),
    ];
    let m = pb.sensors.len();
    let cases: Vec<(std::path::PathBuf, &str)> = vec![
        (
            {
                let p = dir.join("text.safetensors");
                std::fs::write(&p, "not a tensor file").unwrap();
                p
            },
            "not a safetensors file",
        ),
        (
            write(
                "other.safetensors",
                &[("format", "pdevi-mlp")],
                &[("xi", vec![3, 6])],
            ),
            "not a pdevi training set",
        ),
        (
            write("noy.safetensors", &good_meta, &[("xi", vec![3, 6])]),
            "tensor `y` is missing",
        ),
        (
            write(
                "shape.safetensors",
                &good_meta,
                &[("xi", vec![3, 5]), ("y", vec![3, m])],
            ),
            "tensor `xi` has shape [3, 5]",
        ),
        (
            write(
                "nocount.safetensors",
                &good_meta[..4],
                &[("xi", vec![3, 6]), ("y", vec![3, m])],
            ),
            "metadata key `count` is missing",
        ),
    ];
    for (p, want) in cases {
        let e = SimSet::load(&p).unwrap_err().to_string();
        assert!(
            e.contains(want) && e.contains(p.file_name().unwrap().to_str().unwrap()),
            "{}: expected an error with {want:?}, got: {e}",
            p.display()
        );
    }
}

/// Training set and held-out problems of the linear-Gaussian poisson1d.
fn poisson_set() -> (Problem, SimSet) {
    let pb = Problem::new(ProblemKind::Poisson1d, 32, 8).unwrap();
    let set = SimSet::simulate(ctx(), &pb, 4000, 1, false, cg(), 64, |_, _| {}).unwrap();
    (pb, set)
}

#[test]
fn npe_with_a_linear_encoder_recovers_the_exact_poisson1d_posterior() {
    let ctx = ctx();
    let (pb, set) = poisson_set();
    let s = EncoderSettings {
        family: Family::FullRank,
        hidden: vec![],
        epochs: 100,
        batch: 64,
        lr: 1e-2,
        lr_final: 0.01,
        noise: pb.sigma_n,
        patience: 0,
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let (enc, tr) = train_encoder(ctx, &set, &s).unwrap();
    eprintln!(
        "NPE training: {:.1} s, final validation loss {:?}",
        t0.elapsed().as_secs_f64(),
        tr.reports[0].val_loss.last()
    );
    // Held-out data sets (seeds the training set never used), one batch.
    let data: Vec<_> = (0..6).map(|k| api::simulate(&pb, 1000 + k)).collect();
    let ys: Vec<Vec<f64>> = data.iter().map(|x| x.obs.y.clone()).collect();
    let posts = enc.posteriors(ctx, &ys).unwrap();
    for (k, (x, q)) in data.iter().zip(&posts).enumerate() {
        let e = api::exact(&pb, &x.obs).unwrap();
        let (worst, lo, hi) = mean_sd_errors(&q.mean, &q.cov, &e.mean, &e.cov);
        let kl = pdevi::math::linalg::kl_gauss(&e.mean, &e.cov, &q.mean, &q.cov, pb.d).unwrap();
        eprintln!("problem {k}: mean error {worst:.3} sd, sd ratio [{lo:.3}, {hi:.3}], KL {kl:.4}");
        // Measured (lavapipe, 6 problems): mean within 0.39 sd (the most
        // constrained mode; 3600 pairs fix the linear map only so well), sd
        // ratios in [0.95, 1.16], KL 0.03-0.09.
        assert!(
            worst < 0.6,
            "problem {k}: the NPE mean is {worst:.3} posterior sd from the exact mean"
        );
        assert!(
            lo > 0.85 && hi < 1.25,
            "problem {k}: sd ratios [{lo:.3}, {hi:.3}] outside [0.85, 1.25]"
        );
        assert!(kl < 0.2, "problem {k}: KL(exact || NPE) = {kl:.4}");
    }
    // The saved encoder gives the same posteriors.
    let dir = tmp("encoder");
    enc.save(ctx, &dir).unwrap();
    let back = pdevi::infer::amortised::Encoder::load(ctx, &dir).unwrap();
    let again = back.posteriors(ctx, &ys).unwrap();
    for (a, b) in posts.iter().zip(&again) {
        assert_close("reloaded encoder mean", &b.mean, &a.mean, 1e-9, 1e-9);
        assert_close("reloaded encoder cov", &b.cov, &a.cov, 1e-9, 1e-9);
    }
}

#[test]
fn a_linear_surrogate_of_poisson1d_and_vi_with_it_match_the_exact_answers() {
    let ctx = ctx();
    let (pb, set) = poisson_set();
    let s = SurrogateSettings {
        target: Target::Sensors,
        hidden: vec![],
        epochs: 60,
        lr: 1e-2,
        ..Default::default()
    };
    let (sur, _) = train_surrogate(ctx, &set, &s).unwrap();
    // Predictions against the f64 forward map on fresh draws.
    let ws =
        pdevi::nn::mlp::Workspace::new(ctx, &sur.net, 4, pdevi::nn::mlp::Loss::External).unwrap();
    let xis: Vec<f64> = (0..4)
        .flat_map(|j| pdevi::nn::dataset::prior_draw(77, j, pb.d))
        .collect();
    let out = ws.predict(ctx, &xis).unwrap();
    let sc = &sur.meta.out_scaling;
    let mut worst: f64 = 0.0;
    for j in 0..4 {
        let f =
            pdevi::physics::reference::forward(&pb, &xis[j * pb.d..(j + 1) * pb.d], 1e-12, 10_000);
        for (c, &s) in pb.sensors.iter().enumerate() {
            let pred = sc.mean[c] + sc.sd[c] * out[j * sur.width() + c];
            worst = worst.max((pred - f.u[s]).abs());
        }
    }
    // 10 % of the noise level sigma_n = 1e-2.
    assert!(
        worst < 1e-3,
        "the surrogate misses the forward map by {worst:.2e}"
    );

    let x = api::simulate(&pb, 2024);
    let e = api::exact(&pb, &x.obs).unwrap();
    let fam = Family::FullRank;
    let mut vi = SurrogateVi::new(
        ctx,
        &sur,
        fam,
        16,
        &pb.sensors,
        &x.obs.y,
        pb.sigma_n,
        false,
        3,
    )
    .unwrap();
    let fs = FitSettings {
        family: fam,
        samples: 16,
        steps: 3000,
        lr: 0.05,
        lr_final: 0.05,
        seed: 3,
        cg: cg(),
        report_every: 100,
        tol_start: None,
        tol_noise: None,
        resume: None,
        first_step: 0,
        profile: false,
    };
    let r = vi.fit(ctx, &fs, |_, _| {}).unwrap();
    let (m, cov) = fam.moments(pb.d, &r.theta);
    let (worst, lo, hi) = mean_sd_errors(&m, &cov, &e.mean, &e.cov);
    eprintln!(
        "surrogate VI: {:.0} steps/s, mean error {worst:.3} sd, sd ratio [{lo:.3}, {hi:.3}]",
        3000.0 / r.seconds
    );
    assert!(
        worst < 0.3,
        "surrogate VI mean is {worst:.3} sd from the exact mean"
    );
    assert!(
        lo > 0.85 && hi < 1.15,
        "surrogate VI sd ratios [{lo:.3}, {hi:.3}]"
    );
    // Laplace with the surrogate (Jacobian rows by the MLP's backward pass):
    // the linear map makes it the exact posterior up to the surrogate's error.
    let gn = pdevi::infer::laplace::GaussNewton::with_surrogate(
        ctx,
        &pb,
        &pb.sensors,
        &x.obs.y,
        cg(),
        &sur,
    )
    .unwrap();
    let lp = pdevi::infer::laplace::gauss_newton(ctx, &gn, &vec![0.0; pb.d], 20).unwrap();
    let (lw, llo, lhi) = mean_sd_errors(&lp.map, &lp.cov, &e.mean, &e.cov);
    eprintln!("surrogate Laplace: mean error {lw:.4} sd, sd ratio [{llo:.4}, {lhi:.4}]");
    assert!(
        lw < 0.1,
        "surrogate Laplace MAP is {lw:.3} sd from the exact mean"
    );
    assert!(
        llo > 0.97 && lhi < 1.03,
        "surrogate Laplace sd ratios [{llo:.4}, {lhi:.4}]"
    );
    // MALA with the surrogate in every chain, from the surrogate's Laplace fit.
    let ms = pdevi::infer::mcmc::McmcSettings {
        chains: 32,
        warmup: 300,
        samples: 300,
        seed: 4,
        ..Default::default()
    };
    let l = pdevi::math::linalg::cholesky(&lp.cov, pb.d).unwrap();
    let sf = pdevi::infer::surrogate::SurrogateForward::new(
        ctx,
        &sur,
        ms.chains,
        &pb.sensors,
        &x.obs.y,
        pb.sigma_n,
        false,
    )
    .unwrap();
    let r = pdevi::infer::mcmc::sample_posterior_with(
        ctx,
        &pb,
        &pb.sensors,
        &x.obs.y,
        cg(),
        &ms,
        (&lp.map, &l),
        Some(sf),
        |_, _| {},
        None,
        &Default::default(),
    )
    .unwrap();
    let (mm, mc) = r.moments();
    let (mw, mlo, mhi) = mean_sd_errors(&mm, &mc, &e.mean, &e.cov);
    eprintln!(
        "surrogate MCMC: max R-hat {:.3}, mean error {mw:.3} sd, sd ratio [{mlo:.3}, {mhi:.3}]",
        r.max_rhat()
    );
    // 9600 correlated draws: Monte Carlo error of a few percent of an sd.
    assert!(
        mw < 0.15,
        "surrogate MCMC mean is {mw:.3} sd from the exact mean"
    );
    assert!(
        mlo > 0.85 && mhi < 1.15,
        "surrogate MCMC sd ratios [{mlo:.3}, {mhi:.3}]"
    );
}

#[test]
fn darcy16_amortised_posteriors_cover_at_nominal_rates_and_refine_toward_vi() {
    let ctx = ctx();
    let pb = Problem::new(ProblemKind::Darcy2d, 16, 8).unwrap();
    let set = SimSet::simulate(ctx, &pb, 3000, 2, false, cg(), 64, |_, _| {}).unwrap();
    let s = EncoderSettings {
        family: Family::FullRank,
        hidden: vec![64, 64],
        epochs: 60,
        batch: 64,
        lr: 3e-3,
        lr_final: 0.05,
        noise: pb.sigma_n,
        patience: 0,
        ..Default::default()
    };
    let (enc, _) = train_encoder(ctx, &set, &s).unwrap();
    // Held-out prior problems: coverage of central intervals of xi.
    let m = 80;
    let data: Vec<_> = (0..m)
        .map(|k| api::simulate(&pb, 5000 + k as u64))
        .collect();
    let ys: Vec<Vec<f64>> = data.iter().map(|x| x.obs.y.clone()).collect();
    let posts = enc.posteriors(ctx, &ys).unwrap();
    let d = pb.d;
    for (level, z) in [
        (0.5, 0.674_489_750_196_081_7),
        (0.9, 1.644_853_626_951_472_2),
    ] {
        let mut inside = 0usize;
        for (x, q) in data.iter().zip(&posts) {
            for i in 0..d {
                let sd = q.cov[i * d + i].sqrt();
                if (x.truth[i] - q.mean[i]).abs() <= z * sd {
                    inside += 1;
                }
            }
        }
        let n = (m * d) as f64;
        let cov = inside as f64 / n;
        // Binomial error of m problems (coordinates of one problem are
        // correlated, so count problems, not coordinates): 3 sd.
        let tol = 3.0 * (level * (1.0 - level) / m as f64).sqrt();
        eprintln!("coverage at {level}: {cov:.3} (tolerance {tol:.3})");
        assert!(
            (cov - level).abs() <= tol,
            "amortised coverage {cov:.3} at the {level} level (tolerance {tol:.3})"
        );
    }
    // Refinement moves the mean toward per-instance VI.
    let cfg = pdevi::cli::amortised::AmortisedSettings {
        encoder: tmp("unused"),
        obs: None,
        obs_dir: None,
        out: tmp("unused"),
        refine: 150,
        samples: 16,
        lr: 0.01,
        lr_final: 0.3,
        seed: 1,
        truth: None,
        predictive_samples: 0,
        quiet: true,
    };
    let vis: Vec<_> = (0..3)
        .map(|k| api::vi(ctx, &pb, &data[k].obs, &api::ViSettings::default()).unwrap())
        .collect();
    let mut moved = 0;
    for k in 0..3 {
        let x = &data[k];
        let v = &vis[k];
        let (rm, _, _) = pdevi::cli::amortised::refine(
            ctx,
            &pb,
            &enc,
            &posts[k],
            &x.obs.y,
            cfg.refine,
            &cfg,
            cg(),
        )
        .unwrap();
        let dist = |a: &[f64]| -> f64 {
            (0..d)
                .map(|i| (a[i] - v.mean[i]).powi(2) / v.cov[i * d + i])
                .sum::<f64>()
                .sqrt()
        };
        let (before, after) = (dist(&posts[k].mean), dist(&rm));
        eprintln!("problem {k}: distance to VI (in VI sd) {before:.3} -> {after:.3}");
        if after < before {
            moved += 1;
        }
    }
    assert!(
        moved >= 2,
        "refinement moved the mean toward VI in only {moved} of 3 problems"
    );
    // The same three refined in one batched solve per step.
    let fs = FitSettings {
        family: Family::FullRank,
        samples: 16,
        steps: cfg.refine,
        lr: cfg.lr,
        lr_final: cfg.lr_final,
        seed: 1,
        cg: cg(),
        report_every: 10,
        tol_start: None,
        tol_noise: None,
        resume: None,
        first_step: 0,
        profile: false,
    };
    let starts: Vec<(Vec<f64>, Vec<f64>)> = posts[..3]
        .iter()
        .map(|p| (p.mean.clone(), p.cov.clone()))
        .collect();
    let ys3: Vec<Vec<f64>> = data[..3].iter().map(|x| x.obs.y.clone()).collect();
    let refined = pdevi::infer::amortised::refine_batched(
        ctx,
        &pb,
        Family::FullRank,
        &starts,
        &ys3,
        &pb.sensors,
        &fs,
    )
    .unwrap();
    let mut moved = 0;
    for k in 0..3 {
        let v = &vis[k];
        let dist = |a: &[f64]| -> f64 {
            (0..d)
                .map(|i| (a[i] - v.mean[i]).powi(2) / v.cov[i * d + i])
                .sum::<f64>()
                .sqrt()
        };
        let (before, after) = (dist(&posts[k].mean), dist(&refined[k].0));
        eprintln!(
            "batched refine, problem {k}: distance to VI (in VI sd) {before:.3} -> {after:.3}"
        );
        if after < before {
            moved += 1;
        }
    }
    assert!(
        moved >= 2,
        "batched refinement moved the mean toward VI in only {moved} of 3 problems"
    );
}

/// The UQ-VAE step's output gradient = NPE gradient + beta / B times the
/// gradient of each row's negative ELBO (one reparameterised sample through
/// the exact solver, plus the KL), checked against central differences of
/// that ELBO in f64 (reference solver, the block's own noise).
#[test]
fn uq_vae_gradient_matches_finite_differences_of_the_f64_elbo() {
    use pdevi::cpu::infer::vi as cvi;
    use pdevi::cpu::nn::mlp as cm;
    use pdevi::infer::amortised::{encoder_arch, PhysicsTerm, Scaling};
    use pdevi::infer::vi::ViParams;
    use pdevi::nn::mlp::{Activation, Loss, Mlp, Workspace};
    use pdevi::nn::train::StepExtra;
    let ctx = ctx();
    let pb = Problem::new(ProblemKind::Poisson1d, 32, 4).unwrap();
    let (d, m, b) = (pb.d, pb.sensors.len(), 3usize);
    let set = SimSet::simulate(ctx, &pb, 8, 6, false, cg(), 8, |_, _| {}).unwrap();
    let scaling = Scaling::whiten(&set.y, m, pb.sigma_n * pb.sigma_n);
    for (family, sp) in [
        (Family::MeanField, 1usize),
        (Family::FullRank, 1),
        (Family::LowRank { rank: 2 }, 1),
        (Family::FullRank, 3),
    ] {
        let beta = 0.7;
        let arch = encoder_arch(m, d, family, &[], Activation::Identity);
        // Weights small enough that q is a sensible Gaussian.
        let init: Vec<f64> = arch.init(5).iter().map(|v| 0.05 * v).collect();
        let net = Mlp::new(ctx, arch.clone(), Some(&init), 5).unwrap();
        let ws = Workspace::new(ctx, &net, b, Loss::Npe).unwrap();
        let mut term = PhysicsTerm::new(
            &pb,
            family,
            beta,
            b,
            set.y.clone(),
            scaling.clone(),
            pb.sigma_n,
            9,
        );
        term.samples = sp;
        term.attach(ctx, &ws).unwrap();
        let perm: Vec<u32> = vec![5, 2, 7, 0, 1, 3, 4, 6];
        term.begin_epoch(ctx, 0, &perm).unwrap();
        let step = 4u32;
        term.set_step(ctx, 0, step);
        // Inputs: whitened noisy readings of the permuted rows; targets: their xi.
        let raw = term.noisy_raw(0);
        let rows: Vec<usize> = perm[..b].iter().map(|&r| r as usize).collect();
        let x: Vec<f64> = rows
            .iter()
            .flat_map(|&r| scaling.apply(&raw[r * m..(r + 1) * m]))
            .collect();
        let t: Vec<f64> = rows
            .iter()
            .flat_map(|&r| set.xi[r * d..(r + 1) * d].to_vec())
            .collect();
        ws.set_input(ctx, &x).unwrap();
        ws.set_targets(ctx, &t).unwrap();
        ws.set_loss_accumulate(ctx, true);
        let mut enc = ctx.encoder("uqvae");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            ws.encode_forward(&mut pass);
        }
        term.record(&mut enc);
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            ws.encode_loss(&mut pass);
        }
        ctx.submit_wait(enc).unwrap();
        let np = family.nparam(d);
        let theta = read(ctx, ws.output(), b * np);
        let got = read(ctx, ws.output_grad(), b * np);
        // The NPE part from the mirror, on the GPU's theta.
        let mut npe = vec![0.0; b * np];
        let mut losses = vec![0.0; 16 + b];
        let lp = pdevi::nn::mlp::MlpParams {
            m: b as u32,
            n: d as u32,
            k: family.rank() as u32,
            act: family.code(),
            a_rs: np as u32,
            b_rs: d as u32,
            c_rs: np as u32,
            scale: 1.0 / b as f32,
            ..Default::default()
        };
        cm::loss_npe(&lp, &theta, &t, &mut npe, &mut losses);
        // The block's noise for this step.
        let mut vp = ViParams::new(family, d, b * sp, 9, m, pb.sigma_n);
        vp.per_row = 1;
        vp.step = step;
        let e = family.noise_dim(d);
        let mut eps = vec![0.0; b * sp * e];
        cvi::vi_noise(&vp, &mut eps);
        let prec = 1.0 / (pb.sigma_n * pb.sigma_n);
        for (k, &r) in rows.iter().enumerate() {
            let y = &raw[r * m..(r + 1) * m];
            let neg_elbo = |th: &[f64]| -> f64 {
                // Mean over this row's samples of misfit + KL.
                let mut v1 = vp;
                v1.samples = 1;
                v1.per_row = 0;
                let mut total = 0.0;
                for q in 0..sp {
                    let r0 = k * sp + q;
                    let mut xi = vec![0.0; d];
                    cvi::vi_sample(&v1, th, &eps[r0 * e..(r0 + 1) * e], &mut xi);
                    let (mis, _) = pdevi::physics::reference::misfit_gradient(
                        &pb,
                        &xi,
                        &pb.sensors,
                        y,
                        prec,
                        1e-13,
                    );
                    let mut g = vec![0.0; np];
                    let mut kl = vec![0.0; 1];
                    cvi::vi_kl(&v1, th, &mut g, &mut kl);
                    total += mis + kl[0];
                }
                total / sp as f64
            };
            let th = &theta[k * np..(k + 1) * np];
            let mut worst: f64 = 0.0;
            for p in 0..np {
                if family == Family::FullRank && (p - d.min(p)) % d > (p.saturating_sub(d)) / d {
                    continue; // the unused upper triangle of L
                }
                let h = 1e-5 * (1.0 + th[p].abs());
                let (mut a, mut c) = (th.to_vec(), th.to_vec());
                a[p] += h;
                c[p] -= h;
                let fd = (neg_elbo(&a) - neg_elbo(&c)) / (2.0 * h);
                let want = npe[k * np + p] + beta / b as f64 * fd;
                let g = got[k * np + p];
                let err = (g - want).abs() / (1e-3 + want.abs());
                worst = worst.max(err);
                assert!(
                    err < 1e-3,
                    "{} row {k} parameter {p}: GPU {g:.6e}, NPE {:.6e} + beta/B x finite differences {fd:.6e} = {want:.6e}",
                    family.name(),
                    npe[k * np + p]
                );
            }
            eprintln!(
                "{} ({sp} samples) row {k}: worst relative error {worst:.2e}",
                family.name()
            );
        }
    }
}

/// The encoder shipped in assets/ (darcy2d n = 64, d = 64, sigma_n = 1e-3)
/// loads, records how it was trained, and still covers fresh prior
/// problems (seeds its training set never used) at about the nominal rates.
#[test]
fn the_shipped_encoder_still_calibrates_on_fresh_darcy_problems() {
    let ctx = ctx();
    let dir = std::path::Path::new(pdevi::infer::amortised::SHIPPED_ENCODER);
    let enc = pdevi::infer::amortised::Encoder::load(ctx, dir).unwrap_or_else(|e| {
        panic!(
            "the shipped encoder in {} does not load: {e}",
            dir.display()
        )
    });
    let pb = enc.problem().unwrap();
    assert_eq!((pb.kind, pb.n, pb.d), (ProblemKind::Darcy2d, 64, 64));
    assert_eq!(enc.meta.noise, 1e-3);
    let t = &enc.meta.training;
    for key in [
        "set_count",
        "set_seed",
        "seed",
        "epochs",
        "batch",
        "lr",
        "best_val_loss",
    ] {
        assert!(
            t.get(key).is_some(),
            "encoder.json records no training `{key}`"
        );
    }
    let m = 40;
    let truths: Vec<Vec<f64>> = (0..m)
        .map(|j| pdevi::rng::normals(777, pdevi::rng::streams::TRUTH, j as u32, pb.d))
        .collect();
    let data = pdevi::check::calibrate::simulate_batched(ctx, &pb, &truths, 777, cg()).unwrap();
    let posts = enc.posteriors(ctx, &data).unwrap();
    let d = pb.d;
    for (level, z, tol) in [
        (0.5, 0.674_489_750_196_081_7, 0.12),
        (0.9, 1.644_853_626_951_472_2, 0.08),
    ] {
        let mut inside = 0usize;
        for (x, q) in truths.iter().zip(&posts) {
            for (i, xi) in x.iter().enumerate() {
                if (xi - q.mean[i]).abs() <= z * q.cov[i * d + i].sqrt() {
                    inside += 1;
                }
            }
        }
        let cov = inside as f64 / (m * d) as f64;
        eprintln!("shipped encoder: coverage {cov:.3} at {level}");
        assert!(
            (cov - level).abs() <= tol,
            "the shipped encoder covers {cov:.3} at the {level} level (tolerance {tol})"
        );
    }
}

/// An ensemble of two encoders: both members saved and reloaded, and the
/// reported posterior is the moment-matched mixture of the members'.
#[test]
fn an_ensemble_reports_the_mixture_of_its_members() {
    let ctx = ctx();
    let pb = Problem::new(ProblemKind::Poisson1d, 32, 4).unwrap();
    let set = SimSet::simulate(ctx, &pb, 600, 8, false, cg(), 64, |_, _| {}).unwrap();
    let s = EncoderSettings {
        family: Family::MeanField,
        hidden: vec![8],
        epochs: 3,
        batch: 50,
        noise: pb.sigma_n,
        ensemble: 2,
        seed: 5,
        ..Default::default()
    };
    let (enc, tr) = train_encoder(ctx, &set, &s).unwrap();
    assert_eq!(tr.reports.len(), 2);
    let dir = tmp("ensemble");
    enc.save(ctx, &dir).unwrap();
    let back = pdevi::infer::amortised::Encoder::load(ctx, &dir).unwrap();
    assert_eq!(back.nets.len(), 2);
    let y = api::simulate(&pb, 31).obs.y;
    let q = back.posteriors(ctx, &[y]).unwrap().remove(0);
    assert_eq!(q.members.len(), 2);
    let d = pb.d;
    let (m0, c0) = &q.members[0];
    let (m1, c1) = &q.members[1];
    assert!(m0 != m1, "two seeds gave the same member");
    for i in 0..d {
        let mean = 0.5 * (m0[i] + m1[i]);
        assert!((q.mean[i] - mean).abs() < 1e-12);
        for j in 0..d {
            let want = 0.5 * (c0[i * d + j] + c1[i * d + j])
                + 0.5 * ((m0[i] - mean) * (m0[j] - mean) + (m1[i] - mean) * (m1[j] - mean));
            assert!(
                (q.cov[i * d + j] - want).abs() < 1e-12,
                "mixture covariance ({i}, {j})"
            );
        }
    }
}
