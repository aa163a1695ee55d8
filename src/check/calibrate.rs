//! `pdevi calibrate`: simulation-based calibration of an inference method.
//!
//! M problems are drawn from the prior (`xi*_j`, data simulated in one
//! batched GPU solve), each is inferred with the chosen method, and the
//! truths are scored against the posteriors: empirical coverage of central
//! credible intervals at 50/80/90/95 % for xi and for the field z (f for
//! poisson1d), SBC rank histograms of xi* among posterior draws, and the
//! expected coverage error. A calibrated method covers at the nominal rate
//! and gives uniform ranks; `--std-scale` shrinks or widens every posterior
//! on purpose, to see what a miscalibrated one looks like.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use crate::check::compare::COVERAGE_LEVELS;
use crate::check::stats;
use crate::cli::run::{cholesky, field_moments, RunConfig};
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::infer::laplace::{gauss_newton, GaussNewton};
use crate::infer::mcmc::{sample_posterior, McmcSettings, Precondition};
use crate::infer::vi::{fit, Family, FitSettings, ViEngine};
use crate::output::files::{ensure_dir, write_json};
use crate::output::plot::{self, Series};
use crate::physics::problem::ProblemArgs;
use crate::physics::problem::{Problem, ProblemKind};
use crate::physics::solver::{check_converged, BatchedSolver, CgParams};
use crate::rng::{normals, streams};

/// How each problem is inferred.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// The exact Gaussian posterior (linear-Gaussian poisson1d only): checks the checker.
    Exact,
    Laplace,
    Vi(Family),
    Mcmc,
}

impl Method {
    pub fn parse(name: &str, family: Option<&str>, rank: usize) -> Result<Self> {
        match name {
            "exact" => Ok(Method::Exact),
            "laplace" => Ok(Method::Laplace),
            "vi" => Ok(Method::Vi(Family::parse(
                family.unwrap_or("full-rank"),
                rank,
            )?)),
            "mcmc" => Ok(Method::Mcmc),
            _ => Err(Error::setting(
                "method",
                name,
                "expected exact, laplace, vi or mcmc",
            )),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Method::Exact => "exact".into(),
            Method::Laplace => "laplace".into(),
            Method::Vi(f) => format!("vi-{}", f.name()),
            Method::Mcmc => "mcmc".into(),
        }
    }
}

/// Settings of `pdevi calibrate` beyond the shared inference settings.
#[derive(Clone, Debug)]
pub struct CalibrateSettings {
    pub method: Method,
    /// Number of simulated problems M.
    pub problems: usize,
    /// Posterior draws per problem for the SBC ranks.
    pub draws: usize,
    /// Bins of the rank histogram.
    pub bins: usize,
    /// Multiplies every posterior standard deviation (1 = as inferred).
    pub std_scale: f64,
}

/// A posterior as the scorer sees it: Gaussian moments, or draws.
enum Posterior {
    Gauss { m: Vec<f64>, cov: Vec<f64> },
    Draws(Vec<Vec<f64>>),
}

/// Counts accumulated over problems.
struct Tally {
    inside_xi: Vec<usize>,
    inside_z: Vec<usize>,
    /// Per problem, per level: coverage of xi (for the standard error).
    per_problem: Vec<Vec<f64>>,
    ranks: Vec<usize>,
    n_xi: usize,
    n_z: usize,
}

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
    let out = cfg.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!("out/calibrate-{}-{}", kind.name(), s.method.name()))
    });
    ensure_dir(&out)?;
    let seed = cfg.seed.unwrap_or(0);
    let quiet = cfg.quiet.unwrap_or(false);
    let cg = CgParams {
        rel_tol: cfg.tol.unwrap_or(1e-5),
        max_iters: cfg.max_iters.unwrap_or(4000),
        warm_start: true,
        ..Default::default()
    };
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
        Method::Mcmc => Some(McmcSettings::from_config(cfg, seed)?),
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
    let bar = crate::output::progress::progress_bar(m_prob, quiet, "problems  {msg}");
    let levels = COVERAGE_LEVELS;
    let zl: Vec<f64> = levels
        .iter()
        .map(|&l| stats::norm_ppf(0.5 + l / 2.0))
        .collect();
    let mut tally = Tally {
        inside_xi: vec![0; levels.len()],
        inside_z: vec![0; levels.len()],
        per_problem: Vec::new(),
        ranks: Vec::new(),
        n_xi: 0,
        n_z: 0,
    };
    for (j, (truth, y)) in truths.iter().zip(&data).enumerate() {
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
                        (lp.map, cholesky(&lp.cov, d))
                    }
                    None => {
                        let mut l = vec![0.0; d * d];
                        for a in 0..d {
                            l[a * d + a] = 1.0;
                        }
                        (vec![0.0; d], l)
                    }
                };
                let r = sample_posterior(&ctx, &pb, &pb.sensors, y, cg, &ms, (&m, &l), |_, _| {})?;
                if r.max_rhat() > 1.05 && !quiet {
                    eprintln!(
                        "warning: problem {j}: max R-hat {:.3}; raise --warmup / --samples",
                        r.max_rhat()
                    );
                }
                Posterior::Draws(r.samples.chunks(d).map(|x| x.to_vec()).collect())
            }
        };
        score(&pb, truth, post, s, &zl, seed, j, &mut tally)?;
        bar.inc(1);
        let cov90 = tally.inside_xi[2] as f64 / tally.n_xi.max(1) as f64;
        bar.set_message(format!("coverage@90 {cov90:.3}"));
    }
    bar.finish_and_clear();

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
        "std_scale": s.std_scale,
        "coordinates_scored": tally.n_xi,
        "cells_scored": tally.n_z,
        "seconds": t0.elapsed().as_secs_f64(),
        "device": ctx.describe(),
        "settings": {
            "problem": kind.name(), "n": pb.n, "d": d, "noise": pb.sigma_n, "seed": seed,
        },
    });
    write_json(&out.join("calibration.json"), &result)?;
    write_figures(&out, s, &levels, &cov_xi, &cov_z, &se, &hist, field_name)?;
    Ok(result)
}

/// Noisy data of every truth: forward solves batched on the GPU.
fn simulate_batched(
    ctx: &GpuContext,
    pb: &Problem,
    truths: &[Vec<f64>],
    seed: u64,
    cg: CgParams,
) -> Result<Vec<Vec<f64>>> {
    let (d, nu, ns) = (pb.d, pb.nunk(), pb.sensors.len());
    let batch = truths.len().min(64);
    let solver = BatchedSolver::new(ctx, pb, batch, cg, None, false)?;
    let mut out = Vec::with_capacity(truths.len());
    for (c, chunk) in truths.chunks(batch).enumerate() {
        let mut xi = Vec::with_capacity(batch * d);
        for k in 0..batch {
            xi.extend_from_slice(&chunk[k.min(chunk.len() - 1)]);
        }
        let info = solver.solve(ctx, &xi)?;
        check_converged(&info[..chunk.len()], "simulated data solves", &cg)?;
        let u = solver.read_u(ctx)?;
        for k in 0..chunk.len() {
            let j = c * batch + k;
            let e = normals(seed, streams::NOISE, j as u32, ns);
            out.push(
                pb.sensors
                    .iter()
                    .zip(&e)
                    .map(|(&i, e)| u[k * nu + i] + pb.sigma_n * e)
                    .collect(),
            );
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments, reason = "one problem's scoring state")]
fn score(
    pb: &Problem,
    truth: &[f64],
    post: Posterior,
    s: &CalibrateSettings,
    zl: &[f64],
    seed: u64,
    j: usize,
    t: &mut Tally,
) -> Result<()> {
    let d = pb.d;
    let k2 = s.std_scale * s.std_scale;
    let zt = pb.field(truth);
    // Posterior draws (for ranks; and for everything when the method gives draws).
    let (m, cov, draws) = match post {
        Posterior::Gauss { m, mut cov } => {
            for v in cov.iter_mut() {
                *v *= k2;
            }
            let l = cholesky(&cov, d);
            let eps = normals(seed, streams::PREDICTIVE, j as u32, s.draws * d);
            let draws: Vec<Vec<f64>> = (0..s.draws)
                .map(|r| {
                    (0..d)
                        .map(|a| m[a] + (0..=a).map(|b| l[a * d + b] * eps[r * d + b]).sum::<f64>())
                        .collect()
                })
                .collect();
            (m, cov, draws)
        }
        Posterior::Draws(v) => {
            let n = v.len() as f64;
            let mut m = vec![0.0; d];
            for x in &v {
                for a in 0..d {
                    m[a] += x[a] / n;
                }
            }
            // Draws scaled about their mean by std_scale.
            let v: Vec<Vec<f64>> = v
                .iter()
                .map(|x| (0..d).map(|a| m[a] + s.std_scale * (x[a] - m[a])).collect())
                .collect();
            let mut cov = vec![0.0; d * d];
            for x in &v {
                for a in 0..d {
                    for b in 0..d {
                        cov[a * d + b] += (x[a] - m[a]) * (x[b] - m[b]) / (n - 1.0);
                    }
                }
            }
            // Thin evenly to the requested number of rank draws.
            let step = (v.len() / s.draws).max(1);
            let draws = v.iter().step_by(step).take(s.draws).cloned().collect();
            (m, cov, draws)
        }
    };
    if m.iter().chain(&cov).any(|v| !v.is_finite()) {
        return Err(Error::Diverged(format!(
            "problem {j}: the posterior has non-finite moments"
        )));
    }
    let sd: Vec<f64> = (0..d).map(|a| cov[a * d + a].max(0.0).sqrt()).collect();
    let (fm, fs) = field_moments(pb, &m, &cov);
    let mut per = Vec::with_capacity(zl.len());
    for (l, &z) in zl.iter().enumerate() {
        let inside = (0..d)
            .filter(|&a| (truth[a] - m[a]).abs() <= z * sd[a])
            .count();
        t.inside_xi[l] += inside;
        per.push(inside as f64 / d as f64);
        t.inside_z[l] += zt
            .iter()
            .zip(&fm)
            .zip(&fs)
            .filter(|((a, b), c)| (*a - *b).abs() <= z * **c)
            .count();
    }
    t.per_problem.push(per);
    t.n_xi += d;
    t.n_z += zt.len();
    for a in 0..d {
        let col: Vec<f64> = draws.iter().map(|x| x[a]).collect();
        t.ranks.push(stats::sbc_rank(truth[a], &col));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments, reason = "the numbers of one figure set")]
fn write_figures(
    out: &std::path::Path,
    s: &CalibrateSettings,
    levels: &[f64],
    cov_xi: &[f64],
    cov_z: &[f64],
    se: &[f64],
    hist: &[usize],
    field: &str,
) -> Result<()> {
    let band: Vec<f64> = se.iter().map(|v| 2.0 * v).collect();
    let diag = [0.4, 1.0];
    plot::write_line_plot(
        &out.join("coverage.png"),
        &format!(
            "Coverage of central intervals ({}, {} problems{})",
            s.method.name(),
            s.problems,
            if s.std_scale != 1.0 {
                format!(", std x {}", s.std_scale)
            } else {
                String::new()
            }
        ),
        "nominal level",
        "empirical coverage",
        &[
            Series {
                label: "nominal".into(),
                x: &diag,
                y: &diag,
                band: None,
                rgb: [120, 120, 120],
                dashed: true,
            },
            Series {
                label: "xi (band: 2 s.e.)".into(),
                x: levels,
                y: cov_xi,
                band: Some(&band),
                rgb: [31, 119, 180],
                dashed: false,
            },
            Series {
                label: format!("field {field}"),
                x: levels,
                y: cov_z,
                band: None,
                rgb: [214, 39, 40],
                dashed: false,
            },
        ],
        false,
        Some((0.0, 1.0)),
    )?;
    // Rank histogram as a step line, with the uniform expectation and its
    // 2-sigma binomial band.
    let total: usize = hist.iter().sum();
    let nb = hist.len();
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for (b, &c) in hist.iter().enumerate() {
        xs.extend([b as f64, (b + 1) as f64]);
        ys.extend([c as f64, c as f64]);
    }
    let width = (s.draws + 1) as f64 / nb as f64;
    let expect: Vec<f64> = (0..nb)
        .map(|b| {
            // Ranks per bin as rank_histogram assigns them.
            let lo = (b as f64 * width).ceil();
            let hi = ((b + 1) as f64 * width).ceil().min((s.draws + 1) as f64);
            total as f64 * (hi - lo) / (s.draws + 1) as f64
        })
        .collect();
    let mut ex = Vec::new();
    let mut ey = Vec::new();
    let mut eb = Vec::new();
    for (b, &e) in expect.iter().enumerate() {
        let p = e / total.max(1) as f64;
        let sd = (total as f64 * p * (1.0 - p)).sqrt();
        ex.extend([b as f64, (b + 1) as f64]);
        ey.extend([e, e]);
        eb.extend([2.0 * sd, 2.0 * sd]);
    }
    let ymax = ys.iter().chain(&ey).fold(0.0f64, |a, v| a.max(*v)) * 1.3;
    plot::write_line_plot(
        &out.join("sbc_ranks.png"),
        &format!(
            "SBC ranks of xi* among {} posterior draws ({})",
            s.draws,
            s.method.name()
        ),
        "rank bin",
        "count",
        &[
            Series {
                label: "uniform (band: 2 sd)".into(),
                x: &ex,
                y: &ey,
                band: Some(&eb),
                rgb: [120, 120, 120],
                dashed: true,
            },
            Series {
                label: "ranks".into(),
                x: &xs,
                y: &ys,
                band: None,
                rgb: [31, 119, 180],
                dashed: false,
            },
        ],
        false,
        Some((0.0, ymax.max(1.0))),
    )
}
