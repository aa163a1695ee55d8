//! The library's front door: a problem, data, one call per inference method
//! returning its posterior, and the writer of the files every command
//! leaves. The `pdevi` binary's commands are built from the same calls.
//!
//! ```no_run
//! # fn main() -> pdevi::Result<()> {
//! use pdevi::{api, GpuContext, Problem, ProblemKind};
//!
//! let ctx = GpuContext::new()?;
//! let pb = Problem::new(ProblemKind::Darcy2d, 32, 16)?;
//! let data = api::simulate(&pb, 7);
//! let q = api::vi(&ctx, &pb, &data.obs, &api::ViSettings::default())?;
//! api::write_posterior(&ctx, &pb, &q, std::path::Path::new("out/lib-vi"), Some(&data.truth))?;
//! # Ok(())
//! # }
//! ```

use std::path::Path;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::infer::linear::LinearPosterior;
use crate::infer::mcmc::{reference_for, sample_posterior, McmcResult, McmcSettings};
use crate::infer::predictive::{field_moments, predictive_u};
use crate::infer::vi::{variational, Family, FitResult, FitSettings, Start};
use crate::physics::problem::{Problem, ProblemKind};
use crate::physics::reference::simulate_data;
use crate::physics::sensors::Observations;
use crate::physics::solver::{BatchedSolver, CgParams};

/// Observations simulated from a prior draw, with the truth.
pub struct Simulated {
    pub obs: Observations,
    /// The drawn xi.
    pub truth: Vec<f64>,
}

/// A prior draw of xi (seeded) and its noisy readings at the problem's
/// sensors, solved in f64.
///
/// ```
/// use pdevi::{api, Problem, ProblemKind};
/// let pb = Problem::new(ProblemKind::Poisson1d, 16, 4).unwrap();
/// let data = api::simulate(&pb, 3);
/// assert_eq!(data.obs.y.len(), pb.sensors.len());
/// assert_eq!(data.truth.len(), 4);
/// ```
pub fn simulate(problem: &Problem, seed: u64) -> Simulated {
    let (truth, y) = simulate_data(problem, seed);
    Simulated {
        obs: Observations {
            sensors: problem.sensors.clone(),
            y,
        },
        truth,
    }
}

/// A Gaussian posterior over the KL coefficients xi, from any method.
#[derive(Clone, Debug)]
pub struct GaussianPosterior {
    /// `exact`, `laplace`, `vi` or `mcmc` (moments of the draws).
    pub method: &'static str,
    /// Mean of xi (d).
    pub mean: Vec<f64>,
    /// Covariance of xi (d x d, row-major).
    pub cov: Vec<f64>,
}

impl GaussianPosterior {
    /// Marginal standard deviations of xi.
    pub fn std(&self) -> Vec<f64> {
        let d = self.mean.len();
        (0..d)
            .map(|i| self.cov[i * d + i].max(0.0).sqrt())
            .collect()
    }

    /// Pointwise mean and std of the field (z for darcy2d, f for poisson1d),
    /// exact: the field is linear in xi.
    pub fn field(&self, problem: &Problem) -> (Vec<f64>, Vec<f64>) {
        field_moments(problem, &self.mean, &self.cov)
    }
}

fn check_obs(problem: &Problem, obs: &Observations) -> Result<()> {
    if obs.sensors.len() != obs.y.len() || obs.y.is_empty() {
        return Err(Error::setting(
            "observations",
            obs.y.len(),
            format!("need one value per sensor ({} sensors)", obs.sensors.len()),
        ));
    }
    if let Some(&k) = obs.sensors.iter().find(|&&k| k >= problem.nunk()) {
        return Err(Error::setting(
            "sensor",
            k,
            format!("unknown index out of range 0..{}", problem.nunk()),
        ));
    }
    if let Some(v) = obs.y.iter().find(|v| !v.is_finite()) {
        return Err(Error::setting(
            "observation",
            v,
            "observations must be finite",
        ));
    }
    Ok(())
}

/// The exact posterior of the linear poisson1d problem (the gold standard
/// of the other methods).
///
/// ```
/// use pdevi::{api, Problem, ProblemKind};
/// let pb = Problem::new(ProblemKind::Poisson1d, 16, 4).unwrap();
/// let data = api::simulate(&pb, 3);
/// let q = api::exact(&pb, &data.obs).unwrap();
/// assert!(q.std().iter().all(|&s| s > 0.0 && s < 1.0));
/// ```
pub fn exact(problem: &Problem, obs: &Observations) -> Result<GaussianPosterior> {
    check_obs(problem, obs)?;
    if problem.kind != ProblemKind::Poisson1d || obs.sensors != problem.sensors {
        return Err(Error::setting(
            "method",
            "exact",
            "the exact posterior is known for poisson1d at its own sensors only; use laplace, vi or mcmc",
        ));
    }
    let lp = LinearPosterior::new(problem);
    Ok(GaussianPosterior {
        method: "exact",
        mean: lp.mean(problem, &obs.y),
        cov: lp.cov,
    })
}

/// Gauss-Newton MAP and the Laplace covariance (at most `gn_iters` steps).
///
/// ```
/// use pdevi::{api, CgParams, GpuContext, Problem, ProblemKind};
/// let ctx = GpuContext::new()?;
/// let pb = Problem::new(ProblemKind::Poisson1d, 16, 4)?;
/// let data = api::simulate(&pb, 3);
/// // poisson1d is linear: one Gauss-Newton step lands on the exact posterior.
/// let q = api::laplace(&ctx, &pb, &data.obs, CgParams::default(), 5)?;
/// let exact = api::exact(&pb, &data.obs)?;
/// for (a, b) in q.std().iter().zip(exact.std()) {
///     assert!((a - b).abs() < 1e-3 * b);
/// }
/// # Ok::<(), pdevi::Error>(())
/// ```
pub fn laplace(
    ctx: &GpuContext,
    problem: &Problem,
    obs: &Observations,
    cg: CgParams,
    gn_iters: usize,
) -> Result<GaussianPosterior> {
    check_obs(problem, obs)?;
    let lp = crate::infer::laplace::fit_laplace(ctx, problem, &obs.sensors, &obs.y, cg, gn_iters)?;
    Ok(GaussianPosterior {
        method: "laplace",
        mean: lp.map,
        cov: lp.cov,
    })
}

/// Settings of [`vi`]: the fit (family, samples, steps, learning rate,
/// seed, solver) and where q starts.
#[derive(Clone, Debug)]
pub struct ViSettings {
    pub fit: FitSettings,
    pub start: Start,
}

impl Default for ViSettings {
    fn default() -> Self {
        ViSettings {
            fit: FitSettings {
                steps: 300,
                ..FitSettings::default()
            },
            start: Start::Laplace { gn_iters: 30 },
        }
    }
}

/// Gaussian VI with the exact (GPU) forward model and adjoint gradients.
pub fn vi(
    ctx: &GpuContext,
    problem: &Problem,
    obs: &Observations,
    s: &ViSettings,
) -> Result<GaussianPosterior> {
    vi_with_trace(ctx, problem, obs, s).map(|(q, _)| q)
}

/// [`vi`] with the fit's ELBO trace and solver figures.
pub fn vi_with_trace(
    ctx: &GpuContext,
    problem: &Problem,
    obs: &Observations,
    s: &ViSettings,
) -> Result<(GaussianPosterior, FitResult)> {
    check_obs(problem, obs)?;
    let mut last_good = Vec::new();
    let run = variational(
        ctx,
        problem,
        &obs.sensors,
        &obs.y,
        &s.fit,
        s.start,
        &mut last_good,
        |_, _| {},
    )?;
    let family: Family = s.fit.family;
    let (mean, cov) = family.moments(problem.d, &run.fit.theta);
    Ok((
        GaussianPosterior {
            method: "vi",
            mean,
            cov,
        },
        run.fit,
    ))
}

/// MCMC (pCN or MALA, many chains on the GPU) in whitened coordinates of
/// the reference Gaussian of `settings.precondition`; the draws and their
/// Gaussian moments.
pub fn mcmc(
    ctx: &GpuContext,
    problem: &Problem,
    obs: &Observations,
    settings: &McmcSettings,
    cg: CgParams,
) -> Result<(GaussianPosterior, McmcResult)> {
    check_obs(problem, obs)?;
    let (m, l, _) = reference_for(
        ctx,
        problem,
        &obs.sensors,
        &obs.y,
        cg,
        settings.precondition,
        30,
    )?;
    let r = sample_posterior(
        ctx,
        problem,
        &obs.sensors,
        &obs.y,
        cg,
        settings,
        (&m, &l),
        |_, _| {},
    )?;
    let (mean, cov) = r.moments();
    Ok((
        GaussianPosterior {
            method: "mcmc",
            mean,
            cov,
        },
        r,
    ))
}

/// The files of a posterior, as `pdevi run` writes them: `posterior_mean_xi.npy`,
/// `posterior_cov_xi.npy`, the field's and the solution's mean and std
/// (`.npy` and PNG), error maps against `truth_xi` when given, the summary
/// figure, and `posterior.json` with the method and the figures' ranges.
pub fn write_posterior(
    ctx: &GpuContext,
    problem: &Problem,
    q: &GaussianPosterior,
    dir: &Path,
    truth_xi: Option<&[f64]>,
) -> Result<()> {
    let d = problem.d;
    if q.mean.len() != d || q.cov.len() != d * d {
        return Err(Error::setting(
            "posterior",
            q.mean.len(),
            format!("expected a mean of length d = {d} and a d x d covariance"),
        ));
    }
    crate::output::files::ensure_dir(dir)?;
    crate::output::io::write_npy(&dir.join("posterior_mean_xi.npy"), &[d], &q.mean)?;
    crate::output::io::write_npy(&dir.join("posterior_cov_xi.npy"), &[d, d], &q.cov)?;
    let (fmean, fstd) = q.field(problem);
    let cg = CgParams {
        warm_start: true,
        ..CgParams::default()
    };
    let solver = BatchedSolver::new(ctx, problem, 16, cg, None, false)?;
    let (umean, ustd, seen) = predictive_u(ctx, &solver, &q.mean, &q.cov, 64, 0)?;
    let truth = truth_xi.map(|t| problem.field(t));
    let mut metrics = serde_json::Map::new();
    metrics.insert("method".into(), q.method.into());
    metrics.insert("predictive_samples".into(), seen.into());
    crate::output::posterior::write_posterior_files(
        crate::output::plot::Painter::Gpu(ctx),
        dir,
        problem,
        q.method,
        &fmean,
        &fstd,
        &umean,
        &ustd,
        truth.as_deref(),
        &problem.sensors,
        &mut metrics,
    )?;
    crate::output::files::write_json(&dir.join("posterior.json"), &metrics)
}
