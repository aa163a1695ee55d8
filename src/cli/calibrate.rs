//! `pdevi calibrate`: M problems drawn from the prior, each inferred with
//! the chosen method, scored by [`crate::check::calibrate`].

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use crate::check::calibrate::{
    score, simulate_batched, write_figures, CalibrateSettings, Method, Posterior, Tally,
};
use crate::check::compare::COVERAGE_LEVELS;
use crate::check::stats;
use crate::cli::mcmc::mcmc_settings;
use crate::cli::run::RunConfig;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::infer::laplace::{gauss_newton, GaussNewton};
use crate::infer::mcmc::{sample_posterior, Precondition};
use crate::infer::vi::{fit, FitSettings, ViEngine};
use crate::math::linalg::cholesky;
use crate::math::special::norm_ppf;
use crate::output::files::write_json;
use crate::physics::problem::{ProblemArgs, ProblemKind};
use crate::physics::solver::CgParams;
use crate::rng::{normals, streams};

/// Truths, data and posteriors of `M` problems, scored.
pub fn calibrate(cfg: &RunConfig, s: &CalibrateSettings) -> Result<serde_json::Value> {
    let t0 = Instant::now();
    if s.problems == 0 {
        return Err(Error::setting("problems", 0, "need at least one problem"));
    }
    if s.draws < 9 {
        return Err(Error::setting(
            "draws",
            s.draws,
            "need at least 9 posterior draws per problem for the ranks",
        ));
    }
    if s.bins == 0 || s.bins > s.draws + 1 {
        return Err(Error::setting(
            "bins",
            s.bins,
            format!("must be in 1..={} (draws + 1)", s.draws + 1),
        ));
    }
    if !(s.std_scale.is_finite() && s.std_scale > 0.0) {
        return Err(Error::setting("std_scale", s.std_scale, "must be positive"));
    }
    let kind = ProblemKind::parse(cfg.problem.as_deref().unwrap_or("poisson1d"))?;
    let mut pb = ProblemArgs {
        kind,
        n: cfg.n,
        d: cfg.d,
    }
    .build()?;
    if let Some(sn) = cfg.noise {
        if !(sn.is_finite() && sn > 0.0) {
            return Err(Error::setting("noise", sn, "must be positive"));
        }
        pb.sigma_n = sn;
    }
    if s.method == Method::Exact && kind != ProblemKind::Poisson1d {
        return Err(Error::setting(
            "method",
            "exact",
            "the exact posterior is known only for the linear poisson1d; use laplace, vi or mcmc",
        ));
    }
    // Truths, data, draws and ranks of every problem are kept on the host.
    crate::memory::check_host(
        "problems",
        s.problems,
        &format!(
            "{} problems (truth, data and {} draws of xi each)",
            s.problems, s.draws
        ),
        s.problems as u128 * ((pb.d * (s.draws + 2) + pb.sensors.len()) as u128) * 8,
        "use fewer --problems or --draws",
    )?;
    if s.problems > u32::MAX as usize {
        return Err(Error::setting(
            "problems",
            s.problems,
            "at most 2^32 - 1 problems (the seeds' counter is 32-bit)",
        ));
    }
    let out = cfg.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!("out/calibrate-{}-{}", kind.name(), s.method.name()))
    });
    let _lock = crate::output::files::OutLock::acquire(&out)?;
    let seed = cfg.seed.unwrap_or(0);
    let quiet = cfg.quiet.unwrap_or(false);
    let cg = CgParams {
        rel_tol: cfg.tol.unwrap_or(1e-5),
        max_iters: cfg.max_iters.unwrap_or(4000),
        warm_start: true,
        ..Default::default()
    };
    crate::cli::run::figure_settings(cfg)?;
    let ctx = GpuContext::new()?;
    let (d, m_prob) = (pb.d, s.problems);

    // Truths and data: one batched forward solve for all problems.
    let truths: Vec<Vec<f64>> = (0..m_prob)
        .map(|j| normals(seed, streams::TRUTH, j as u32, d))
        .collect();
    let data = simulate_batched(&ctx, &pb, &truths, seed, cg)?;

    let exact = if s.method == Method::Exact {
        Some(crate::infer::linear::LinearPosterior::new(&pb))
    } else {
        None
    };
    let mcmc = match s.method {
        Method::Mcmc => Some(mcmc_settings(cfg, seed)?),
        _ => None,
    };
    let needs_gn = s.method == Method::Laplace
        || mcmc
            .as_ref()
            .is_some_and(|m| m.precondition == Precondition::Laplace);
    let mut gn = match needs_gn {
        true => Some(GaussNewton::new(&ctx, &pb, &pb.sensors, &data[0], cg)?),
        false => None,
    };
    // Amortised: every problem's posterior in one batched forward pass.
    let mut amortised = match s.method {
        Method::Amortised => {
            let dir = s.encoder.as_ref().ok_or_else(|| {
                Error::setting("encoder", "none", "--method amortised needs --encoder DIR")
            })?;
            let enc = crate::infer::amortised::Encoder::load(&ctx, dir)?;
            let epb = enc.problem()?;
            if epb.kind != pb.kind
                || epb.n != pb.n
                || epb.d != pb.d
                || enc.meta.sensors != pb.sensors
            {
                return Err(Error::setting(
                    "encoder",
                    dir.display(),
                    format!(
                        "was trained on {} n = {} d = {}; calibrate with the same --problem, --n and --d",
                        epb.kind.name(),
                        epb.n,
                        epb.d
                    ),
                ));
            }
            if (enc.meta.noise - pb.sigma_n).abs() > 1e-12 * pb.sigma_n.max(1.0) {
                return Err(Error::setting(
                    "noise",
                    pb.sigma_n,
                    format!(
                        "the encoder was trained for sigma_n = {}: pass --noise {}",
                        enc.meta.noise, enc.meta.noise
                    ),
                ));
            }
            enc.posteriors(&ctx, &data)?.into_iter()
        }
        _ => Vec::new().into_iter(),
    };
    let surrogate = match s.method {
        Method::Surrogate(_) => {
            let dir = s.surrogate.as_ref().ok_or_else(|| {
                Error::setting(
                    "surrogate",
                    "none",
                    "--method surrogate needs --surrogate DIR",
                )
            })?;
            Some(crate::infer::surrogate::Surrogate::load(&ctx, dir)?)
        }
        _ => None,
    };
    let bar = crate::output::progress::progress_bar(m_prob, quiet, "problems  {msg}");
    let levels = COVERAGE_LEVELS;
    let zl: Vec<f64> = levels.iter().map(|&l| norm_ppf(0.5 + l / 2.0)).collect();
    let mut tally = Tally {
        inside_xi: vec![0; levels.len()],
        inside_z: vec![0; levels.len()],
        per_problem: Vec::new(),
        ranks: Vec::new(),
        n_xi: 0,
        n_z: 0,
        inside_cell: Vec::new(),
    };
    // Ctrl-C: stop before the next problem (a posterior cut short by the
    // interrupt is not scored) and report the problems scored so far.
    let mut interrupted = false;
    for (j, (truth, y)) in truths.iter().zip(&data).enumerate() {
        if crate::interrupt::requested() {
            interrupted = true;
            break;
        }
        let post = match s.method {
            Method::Exact => {
                let e = exact.as_ref().ok_or_else(|| {
                    Error::setting("method", "exact", "internal: no exact posterior")
                })?;
                Posterior::Gauss {
                    m: e.mean(&pb, y),
                    cov: e.cov.clone(),
                }
            }
            Method::Laplace => {
                let gn = gn.as_mut().ok_or_else(|| {
                    Error::setting("method", "laplace", "internal: no Gauss-Newton solver")
                })?;
                gn.set_observations(y)?;
                let lp = gauss_newton(&ctx, gn, &vec![0.0; d], cfg.gn_iters.unwrap_or(30))?;
                Posterior::Gauss {
                    m: lp.map,
                    cov: lp.cov,
                }
            }
            Method::Vi(family) => {
                let settings = FitSettings {
                    family,
                    samples: cfg.samples.unwrap_or(16),
                    steps: cfg.steps.unwrap_or(1000),
                    lr: cfg.lr.unwrap_or(0.05),
                    lr_final: cfg.lr_final.unwrap_or(0.1),
                    seed: seed.wrapping_add(j as u64),
                    cg,
                    report_every: 50,
                    tol_start: cfg.tol_start,
                    tol_noise: cfg.tol_noise_factor(),
                    resume: None,
                    first_step: 0,
                    profile: false,
                };
                let mut eng = ViEngine::new(
                    &ctx,
                    &pb,
                    family,
                    settings.samples,
                    &pb.sensors,
                    y,
                    settings.seed,
                    cg,
                )?;
                let mut last = Vec::new();
                let r = fit(&ctx, &mut eng, &settings, &mut last, |_, _| {})?;
                if r.interrupted.is_some() {
                    interrupted = true;
                    break;
                }
                let (m, cov) = family.moments(d, &r.theta);
                Posterior::Gauss { m, cov }
            }
            Method::Mcmc => {
                let mut ms = mcmc.clone().ok_or_else(|| {
                    Error::setting("method", "mcmc", "internal: no MCMC settings")
                })?;
                ms.seed = seed.wrapping_add(j as u64);
                // The reference Gaussian of the proposals: this problem's Laplace fit, or the prior.
                let (m, l) = match gn.as_mut() {
                    Some(gn) => {
                        gn.set_observations(y)?;
                        let lp = gauss_newton(&ctx, gn, &vec![0.0; d], cfg.gn_iters.unwrap_or(30))?;
                        let l = cholesky(&lp.cov, d).map_err(|e| {
                            Error::not_spd("the Laplace covariance of a problem", e)
                        })?;
                        (lp.map, l)
                    }
                    None => {
                        let mut l = vec![0.0; d * d];
                        for a in 0..d {
                            l[a * d + a] = 1.0;
                        }
                        (vec![0.0; d], l)
                    }
                };
                let r =
                    match sample_posterior(&ctx, &pb, &pb.sensors, y, cg, &ms, (&m, &l), |_, _| {})
                    {
                        Err(Error::Interrupted(_)) => {
                            interrupted = true;
                            break;
                        }
                        other => other?,
                    };
                if r.interrupted.is_some() {
                    interrupted = true;
                    break;
                }
                if r.max_rhat() > 1.05 && !quiet {
                    eprintln!(
                        "warning: problem {j}: max R-hat {:.3}; raise --warmup / --samples",
                        r.max_rhat()
                    );
                }
                Posterior::Draws(r.samples.chunks(d).map(|x| x.to_vec()).collect())
            }
            Method::Amortised => {
                let q = amortised.next().ok_or_else(|| {
                    Error::setting("method", "amortised", "internal: too few posteriors")
                })?;
                Posterior::Gauss {
                    m: q.mean,
                    cov: q.cov,
                }
            }
            Method::Surrogate(family) => {
                let sur = surrogate.as_ref().ok_or_else(|| {
                    Error::setting("method", "surrogate", "internal: no surrogate")
                })?;
                let settings = FitSettings {
                    family,
                    samples: cfg.samples.unwrap_or(16),
                    steps: cfg.steps.unwrap_or(3000),
                    lr: cfg.lr.unwrap_or(0.05),
                    lr_final: cfg.lr_final.unwrap_or(0.05),
                    seed: seed.wrapping_add(j as u64),
                    cg,
                    report_every: 500,
                    tol_start: None,
                    tol_noise: None,
                    resume: None,
                    first_step: 0,
                    profile: false,
                };
                let mut vi = crate::infer::surrogate::SurrogateVi::new(
                    &ctx,
                    sur,
                    family,
                    settings.samples,
                    &pb.sensors,
                    y,
                    pb.sigma_n,
                    cfg.surrogate_variance.unwrap_or(false),
                    settings.seed,
                )?;
                let r = vi.fit(&ctx, &settings, |_, _| {})?;
                let (m, cov) = family.moments(d, &r.theta);
                Posterior::Gauss { m, cov }
            }
        };
        score(&pb, truth, post, s, &zl, seed, j, &mut tally)?;
        bar.inc(1);
        let cov90 = tally.inside_xi[2] as f64 / tally.n_xi.max(1) as f64;
        bar.set_message(format!("coverage@90 {cov90:.3}"));
    }
    bar.finish_and_clear();
    // The problems scored (fewer than asked after Ctrl-C).
    let m_prob = tally.per_problem.len();
    if m_prob == 0 {
        return Err(Error::Interrupted(
            "stopped before the first problem was scored; nothing to report".into(),
        ));
    }

    // Aggregates.
    let cov_xi: Vec<f64> = tally
        .inside_xi
        .iter()
        .map(|&c| c as f64 / tally.n_xi as f64)
        .collect();
    let cov_z: Vec<f64> = tally
        .inside_z
        .iter()
        .map(|&c| c as f64 / tally.n_z as f64)
        .collect();
    // Standard error from the spread over problems (coordinates within one
    // problem are correlated; problems are independent).
    let se: Vec<f64> = (0..levels.len())
        .map(|l| {
            let v: Vec<f64> = tally.per_problem.iter().map(|p| p[l]).collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var =
                v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len().max(2) - 1) as f64;
            (var / v.len() as f64).sqrt()
        })
        .collect();
    let ece = stats::expected_coverage_error(&levels, &cov_xi);
    let ece_z = stats::expected_coverage_error(&levels, &cov_z);
    let hist = stats::rank_histogram(&tally.ranks, s.draws, s.bins);
    let chi2 = stats::chi2_rank_uniformity(&hist, s.draws);
    // Within 3 standard errors of nominal at every level (and at least a
    // binomial floor, for M so small that the spread is noisy).
    let flagged: Vec<f64> = levels
        .iter()
        .enumerate()
        .filter(|&(l, &p)| {
            let tol = (3.0 * se[l]).max(stats::binomial_halfwidth(p, m_prob, 3.0));
            (cov_xi[l] - p).abs() > tol
        })
        .map(|(_, &p)| p)
        .collect();
    let calibrated = flagged.is_empty() && chi2.p_value > 1e-3;
    let map = |v: &[f64]| -> serde_json::Value {
        let mut o = serde_json::Map::new();
        for (l, x) in levels.iter().zip(v) {
            o.insert(format!("{l}"), (*x).into());
        }
        serde_json::Value::Object(o)
    };
    let field_name = match kind {
        ProblemKind::Darcy2d => "z",
        ProblemKind::Poisson1d => "f",
    };
    let result = json!({
        "coverage": map(&cov_xi),
        "coverage_field": map(&cov_z),
        "field": field_name,
        "coverage_standard_error": map(&se),
        "expected_coverage_error": ece,
        "expected_coverage_error_field": ece_z,
        "calibrated": calibrated,
        "levels_outside_3se": flagged,
        "sbc": {
            "draws": s.draws,
            "bins": s.bins,
            "counts": hist,
            "chi2": chi2.statistic,
            "dof": chi2.dof,
            "p_value": chi2.p_value,
        },
        "method": s.method.name(),
        "problems": m_prob,
        "problems_asked": s.problems,
        "interrupted": interrupted,
        "std_scale": s.std_scale,
        "coordinates_scored": tally.n_xi,
        "cells_scored": tally.n_z,
        "seconds": t0.elapsed().as_secs_f64(),
        "device": ctx.describe(),
        "settings": {
            "problem": kind.name(), "n": pb.n, "d": d, "noise": pb.sigma_n, "seed": seed,
        },
    });
    let worst = crate::check::calibrate::write_coverage_map(
        crate::output::plot::Painter::Gpu(&ctx),
        &out,
        &pb,
        s,
        &tally,
        m_prob,
    )?;
    let mut result = result;
    if let Some(w) = worst {
        result["coverage_map"] = json!({
            "level": crate::check::calibrate::MAP_LEVEL,
            "worst_cell_deviation": w,
            "figure": "coverage_map.png",
        });
    }
    write_json(&out.join("calibration.json"), &result)?;
    write_figures(&out, s, &levels, &cov_xi, &cov_z, &se, &hist, field_name)?;
    if interrupted {
        return Err(Error::Interrupted(format!(
            "stopped after {m_prob} of {} problems; the calibration of those is in {} (calibration.json says \"interrupted\": true)",
            s.problems,
            out.display()
        )));
    }
    Ok(result)
}
