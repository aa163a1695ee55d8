//! Simulation-based calibration of an inference method (`pdevi calibrate`).
//!
//! M problems are drawn from the prior (`xi*_j`, data simulated in one
//! batched GPU solve), each is inferred with the chosen method, and the
//! truths are scored against the posteriors: empirical coverage of central
//! credible intervals at 50/80/90/95 % for xi and for the field z (f for
//! poisson1d), SBC rank histograms of xi* among posterior draws, and the
//! expected coverage error. A calibrated method covers at the nominal rate
//! and gives uniform ranks; `--std-scale` shrinks or widens every posterior
//! on purpose, to see what a miscalibrated one looks like.

use crate::check::stats;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::infer::predictive::field_moments;
use crate::infer::vi::Family;
use crate::math::linalg::cholesky;
use crate::output::plot::{self, Series};
use crate::physics::problem::Problem;
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
    /// An amortised encoder (`CalibrateSettings::encoder`): one batched forward pass.
    Amortised,
    /// VI of a family with a surrogate forward model (`CalibrateSettings::surrogate`).
    Surrogate(Family),
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
            "amortised" => Ok(Method::Amortised),
            "surrogate" => Ok(Method::Surrogate(Family::parse(
                family.unwrap_or("full-rank"),
                rank,
            )?)),
            _ => Err(Error::setting(
                "method",
                name,
                "expected exact, laplace, vi, mcmc, amortised or surrogate",
            )),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Method::Exact => "exact".into(),
            Method::Laplace => "laplace".into(),
            Method::Vi(f) => format!("vi-{}", f.name()),
            Method::Mcmc => "mcmc".into(),
            Method::Amortised => "amortised".into(),
            Method::Surrogate(f) => format!("surrogate-vi-{}", f.name()),
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
    /// Encoder folder of [`Method::Amortised`].
    pub encoder: Option<std::path::PathBuf>,
    /// Surrogate folder of [`Method::Surrogate`].
    pub surrogate: Option<std::path::PathBuf>,
}

/// A posterior as the scorer sees it: Gaussian moments, or draws.
pub enum Posterior {
    /// Mean and covariance of xi.
    Gauss { m: Vec<f64>, cov: Vec<f64> },
    /// Draws of xi.
    Draws(Vec<Vec<f64>>),
}

/// Counts accumulated over problems.
#[derive(Default)]
pub struct Tally {
    /// Per level: truths of xi inside the interval.
    pub inside_xi: Vec<usize>,
    /// Per level: truths of the field inside the interval.
    pub inside_z: Vec<usize>,
    /// Per problem, per level: coverage of xi (for the standard error).
    pub per_problem: Vec<Vec<f64>>,
    /// SBC ranks of xi among the draws.
    pub ranks: Vec<usize>,
    /// Coordinates of xi scored.
    pub n_xi: usize,
    /// Field values scored.
    pub n_z: usize,
    /// Per cell (coefficient point) of the field: problems whose truth lies
    /// inside the central interval at [`MAP_LEVEL`].
    pub inside_cell: Vec<usize>,
}

/// The level of the per-cell coverage map.
pub const MAP_LEVEL: f64 = 0.9;

/// Noisy data of every truth: forward solves batched on the GPU.
pub fn simulate_batched(
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
pub fn score(
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
            let l = cholesky(&cov, d).map_err(|e| {
                Error::not_spd(format!("the posterior covariance of problem {j}"), e)
            })?;
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
    if let Some(l) = s_level_index(zl) {
        let z = zl[l];
        if t.inside_cell.len() != zt.len() {
            t.inside_cell = vec![0; zt.len()];
        }
        for (c, ((a, b), sd)) in zt.iter().zip(&fm).zip(&fs).enumerate() {
            if (a - b).abs() <= z * sd {
                t.inside_cell[c] += 1;
            }
        }
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

/// Index of the [`MAP_LEVEL`] interval among the half-widths `zl`.
fn s_level_index(zl: &[f64]) -> Option<usize> {
    let want = crate::math::special::norm_ppf(0.5 + MAP_LEVEL / 2.0);
    zl.iter().position(|&z| (z - want).abs() < 1e-9)
}

/// `coverage_map.png` (darcy2d): per cell, the share of problems whose true
/// field lies inside the central 90 % interval, on a diverging scale centred
/// on 0.9: blue where the posterior is over-confident, red where it is too
/// wide; sensors marked.
pub fn write_coverage_map(
    painter: plot::Painter,
    out: &std::path::Path,
    pb: &crate::physics::problem::Problem,
    s: &CalibrateSettings,
    t: &Tally,
    problems: usize,
) -> Result<Option<f64>> {
    if pb.kind != crate::physics::problem::ProblemKind::Darcy2d
        || t.inside_cell.len() != pb.n * pb.n
        || problems == 0
    {
        return Ok(None);
    }
    let share: Vec<f64> = t
        .inside_cell
        .iter()
        .map(|&k| k as f64 / problems as f64)
        .collect();
    let sensors = pb.sensor_points();
    let worst = share
        .iter()
        .fold(0.0f64, |a, v| a.max((v - MAP_LEVEL).abs()));
    let half = worst.max(0.05);
    plot::write_panels_png(
        painter,
        &out.join("coverage_map.png"),
        &format!(
            "Per-cell coverage of the 90 % interval of z ({}, {problems} problems)",
            s.method.name()
        ),
        &[plot::Panel {
            range: Some((MAP_LEVEL - half, MAP_LEVEL + half)),
            cmap: plot::Colormap::RdBu,
            markers: &sensors,
            ..plot::Panel::new(
                "share of truths inside",
                plot::Field2::cells(&share, pb.n, pb.n),
            )
        }],
    )?;
    Ok(Some(worst))
}

#[allow(clippy::too_many_arguments, reason = "the numbers of one figure set")]
pub fn write_figures(
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
