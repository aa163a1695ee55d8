//! `pdevi run`: variational inference from a TOML config and/or flags,
//! writing the posterior as arrays, images, an ELBO trace and metrics.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cli::commands;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::infer::predictive::{field_moments, predictive_u};
use crate::infer::vi::{variational_watched, Family, FitSettings, Start, ViRun};
use crate::output::files::write_json;
use crate::output::io;
use crate::output::live::{WatchOptions, Watcher};
use crate::output::plot::{self, Series};
use crate::physics::problem::ProblemArgs;
use crate::physics::problem::{Problem, ProblemKind};
use crate::physics::solver::{BatchedSolver, CgParams, Precond};

/// Settings of `pdevi run`, from a TOML file; flags override each key.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub problem: Option<String>,
    /// Observation CSV; when absent, data are simulated from the prior with
    /// `simulate_seed` and the truth is used for error maps.
    pub obs: Option<PathBuf>,
    pub noise: Option<f64>,
    pub family: Option<String>,
    pub rank: Option<usize>,
    pub samples: Option<usize>,
    pub steps: Option<usize>,
    pub lr: Option<f64>,
    /// The learning rate decays geometrically to lr * lr_final.
    pub lr_final: Option<f64>,
    pub seed: Option<u64>,
    pub simulate_seed: Option<u64>,
    pub n: Option<usize>,
    pub d: Option<usize>,
    /// Truth for error maps: xi (d,) or the field (.npy).
    pub truth: Option<PathBuf>,
    pub out: Option<PathBuf>,
    /// Monte Carlo samples through the solver for the mean/std of u.
    pub predictive_samples: Option<usize>,
    pub tol: Option<f64>,
    pub max_iters: Option<u32>,
    pub quiet: Option<bool>,
    /// `pdevi mcmc`: pcn or mala.
    pub sampler: Option<String>,
    /// `pdevi mcmc`: chains run at once (one batch slot each).
    pub chains: Option<usize>,
    /// `pdevi mcmc`: warm-up steps per chain (step size adapted, not kept).
    pub warmup: Option<usize>,
    /// `pdevi mcmc`: keep every thin-th step.
    pub thin: Option<usize>,
    /// `pdevi mcmc`: reference Gaussian of the proposals: laplace or prior.
    pub precondition: Option<String>,
    /// `pdevi laplace` (and the MCMC preconditioner): Gauss-Newton iterations at most.
    pub gn_iters: Option<usize>,
    /// `pdevi run`: start q at the Laplace approximation (`laplace`) or the prior (`prior`).
    pub init: Option<String>,
    /// `pdevi run`: CG tolerance of the first steps, tightened a decade at a
    /// time to `tol` over the first 60 % of the steps (off by default).
    pub tol_start: Option<f64>,
    /// `pdevi run`: each step's CG tolerance is this factor (default 0.5)
    /// times the last step's relative Monte Carlo standard error of the
    /// misfit gradient (times lr_t / lr_0), between `tol` and 3e-2; 0 turns
    /// it off (so does `tol_start`).
    pub tol_noise: Option<f64>,
    /// darcy2d's CG preconditioner: `auto` (default: multigrid where the
    /// grid and device allow it), `jacobi` or `mg`.
    pub precond: Option<String>,
    /// darcy2d with multigrid: `auto` (default: each system over many
    /// workgroups for small batches of large grids), `narrow` (a workgroup
    /// per system) or `wide`.
    pub solver_layout: Option<String>,
    /// The forward model in the likelihood: `exact` (default) or
    /// `surrogate:DIR` (a folder written by `pdevi train surrogate`).
    pub forward: Option<String>,
    /// With a surrogate: add its predicted variance to sigma_n^2.
    pub surrogate_variance: Option<bool>,
    /// `forward` (default) or `residual` (u latent, the residual a virtual observation).
    pub likelihood: Option<String>,
    /// With `likelihood = residual`: the residual's noise level.
    pub sigma_r: Option<f64>,
    /// `pdevi run`: a window showing the posterior forming (winit).
    pub live: Option<bool>,
    /// `pdevi run`: write a PNG frame of the posterior every `every` steps here.
    pub frames: Option<PathBuf>,
    /// Steps between frames (`--frames`, `--gif`, `--live`).
    pub every: Option<usize>,
    /// `pdevi run`: the frames as an animated GIF, `posterior_forming.gif` in `out`.
    pub gif: Option<bool>,
    /// Side of a heat map in pixels (figure size; 330 by default).
    pub figure_px: Option<u32>,
    /// Contour lines on the summary maps: this many bands (0 = none).
    pub contours: Option<u32>,
    /// Write `checkpoint.safetensors` into `out` every this many steps.
    pub checkpoint_every: Option<usize>,
    /// Continue the run whose `out` this is, from its checkpoint.
    pub resume: Option<PathBuf>,
    /// Build everything, print the plan (sizes, memory, dispatches per
    /// step) and stop before the first step.
    pub dry_run: Option<bool>,
    /// `pdevi run`: time the sections of every step with GPU timestamps.
    pub profile: Option<bool>,
    /// The prior of the field: `kl` (default, the spec's Gaussian random
    /// field) or `vae:DIR` (a deep generative prior from `pdevi train vae`;
    /// the latent vector is the decoder's w).
    pub prior: Option<String>,
    /// `--family flow`: coupling layers on top of the full-rank base.
    pub flow_layers: Option<usize>,
    /// `--family flow`: hidden widths of each layer's net, e.g. "32,32".
    pub flow_hidden: Option<String>,
    /// `--family flow`: the objective, `kl` (the ELBO) or `renyi:ALPHA`.
    pub divergence: Option<String>,
}

impl RunConfig {
    /// The factor of the noise-based CG tolerance VI runs with: `tol_noise`
    /// (0: off), else the default unless `tol_start` sets a schedule.
    pub fn tol_noise_factor(&self) -> Option<f64> {
        match self.tol_noise {
            Some(c) if c > 0.0 => Some(c),
            Some(_) => None,
            None if self.tol_start.is_some() => None,
            None => Some(crate::infer::vi::TOL_NOISE_DEFAULT),
        }
    }

    /// Parse a TOML file; errors name the file and line.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(0);
            Error::Input {
                file: path.into(),
                line,
                message: format!("{} (keys: see examples/darcy2d.toml)", e.message()),
            }
        })
    }

    /// Keys set in `over` win.
    pub fn merge(self, over: RunConfig) -> RunConfig {
        macro_rules! pick {
            ($($f:ident),*) => { RunConfig { $($f: over.$f.or(self.$f)),* } };
        }
        pick!(
            problem,
            obs,
            noise,
            family,
            rank,
            samples,
            steps,
            lr,
            lr_final,
            seed,
            simulate_seed,
            n,
            d,
            truth,
            out,
            predictive_samples,
            tol,
            max_iters,
            quiet,
            sampler,
            chains,
            warmup,
            thin,
            precondition,
            gn_iters,
            init,
            tol_start,
            tol_noise,
            precond,
            solver_layout,
            forward,
            surrogate_variance,
            likelihood,
            sigma_r,
            live,
            frames,
            every,
            gif,
            figure_px,
            contours,
            checkpoint_every,
            resume,
            dry_run,
            profile,
            prior,
            flow_layers,
            flow_hidden,
            divergence
        )
    }
}

/// Read a truth file: xi of length d, or the field itself.
fn read_truth(pb: &Problem, path: &Path) -> Result<(Option<Vec<f64>>, Vec<f64>)> {
    let (_, v) = io::read_npy(path)?;
    let n = pb.n;
    if v.len() == pb.d {
        crate::physics::sensors::check_xi(&v, pb.d, path)?;
        return Ok((Some(v.clone()), pb.field(&v)));
    }
    match pb.kind {
        ProblemKind::Darcy2d if v.len() == n * n => Ok((None, v)),
        ProblemKind::Poisson1d if v.len() == n + 1 => Ok((None, v[1..n].to_vec())),
        ProblemKind::Poisson1d if v.len() == n - 1 => Ok((None, v)),
        _ => Err(Error::Format {
            path: path.into(),
            message: format!(
                "has {} values: expected xi ({}) or the field ({})",
                v.len(),
                pb.d,
                match pb.kind {
                    ProblemKind::Darcy2d => format!("{n} x {n} cells"),
                    ProblemKind::Poisson1d => format!("{} nodes", n + 1),
                }
            ),
        }),
    }
}

/// Write a posterior given by its mean and covariance in xi (from any
/// method): `posterior_mean_xi.npy`, `posterior_cov_xi.npy`, the field
/// mean / std (exact, the field is linear in xi), the predictive u from
/// `predictive` (mean, std) or else by `npred` solver draws, the images and
/// the summary figure; error metrics against the truth go into `metrics`.
#[allow(clippy::too_many_arguments, reason = "one posterior and where it goes")]
pub fn write_posterior(
    ctx: &GpuContext,
    solver: &BatchedSolver,
    st: &Setup,
    label: &str,
    m: &[f64],
    cov: &[f64],
    predictive: Option<(Vec<f64>, Vec<f64>, usize)>,
    npred: usize,
    metrics: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    write_posterior_draws(
        ctx, solver, st, label, m, cov, predictive, npred, None, metrics,
    )
}

/// [`write_posterior`] given draws of the latent vector (`rows x d`, e.g.
/// MCMC's): with a generative prior the field's moments and the phase map
/// are taken over them (else over draws of N(m, cov)).
#[allow(clippy::too_many_arguments, reason = "one posterior and where it goes")]
pub fn write_posterior_draws(
    ctx: &GpuContext,
    solver: &BatchedSolver,
    st: &Setup,
    label: &str,
    m: &[f64],
    cov: &[f64],
    predictive: Option<(Vec<f64>, Vec<f64>, usize)>,
    npred: usize,
    draws: Option<&[f64]>,
    metrics: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let d = st.pb.d;
    io::write_npy(&st.out.join("posterior_mean_xi.npy"), &[d], m)?;
    io::write_npy(&st.out.join("posterior_cov_xi.npy"), &[d, d], cov)?;
    let (fmean, fstd, phase) = match &st.pb.prior {
        Some(prior) => {
            // The latent vector is the decoder's w: its moments under the
            // names the issue gives, the field's by Monte Carlo through f.
            io::write_npy(&st.out.join("posterior_mean_w.npy"), &[d], m)?;
            io::write_npy(&st.out.join("posterior_cov_w.npy"), &[d, d], cov)?;
            let w = match draws {
                Some(x) => thin_rows(x, d, PRIOR_DRAWS),
                None => crate::infer::predictive::gaussian_draws(m, cov, PRIOR_DRAWS, st.seed)?,
            };
            let mc = crate::infer::predictive::prior_field_moments(prior, &w);
            metrics.insert("field_draws".into(), mc.draws.into());
            metrics.insert(
                "prior".into(),
                serde_json::json!({"kind": "vae", "dir": prior.dir.display().to_string(),
                    "latent": prior.latent(), "class": prior.meta.class}),
            );
            (mc.mean, mc.std, mc.phase)
        }
        None => {
            let (fm, fs) = field_moments(&st.pb, m, cov);
            // P(z_c > 0) of the Gaussian field, exact.
            let ph = fm
                .iter()
                .zip(&fs)
                .map(|(m, s)| {
                    if *s > 0.0 {
                        crate::math::special::norm_cdf(m / s)
                    } else {
                        f64::from(u8::from(*m > 0.0))
                    }
                })
                .collect();
            (fm, fs, ph)
        }
    };
    if st.pb.kind == ProblemKind::Darcy2d {
        crate::output::posterior::write_phase(
            plot::Painter::Gpu(ctx),
            &st.out,
            &st.pb,
            &phase,
            &fmean,
            st.truth.as_ref().map(|t| &t.1[..]),
            metrics,
        )?;
    }
    let (umean, ustd, nseen) = match predictive {
        Some(p) => p,
        None => predictive_u(ctx, solver, m, cov, npred, st.seed)?,
    };
    metrics.insert("predictive_samples".into(), nseen.into());
    crate::output::posterior::write_posterior_files(
        plot::Painter::Gpu(ctx),
        &st.out,
        &st.pb,
        label,
        &fmean,
        &fstd,
        &umean,
        &ustd,
        st.truth.as_ref().map(|t| &t.1[..]),
        &st.sensors,
        metrics,
    )
}

/// Draws of w pushed through a generative prior's decoder for the field's
/// moments and the phase map.
pub const PRIOR_DRAWS: usize = 1024;

/// At most `max` rows of `x` (rows of `d`), evenly spaced.
fn thin_rows(x: &[f64], d: usize, max: usize) -> Vec<f64> {
    let n = x.len() / d;
    let k = n.min(max).max(1);
    (0..k)
        .flat_map(|j| x[(j * n / k) * d..(j * n / k + 1) * d].iter().copied())
        .collect()
}

/// Finish the metrics of a solver-free VI fit (surrogate or residual
/// likelihood): the family and optimiser settings under `settings`, the
/// posterior's metrics, `interrupted`; written to `out/metrics.json`.
pub fn finish_fit_metrics(
    out: &Path,
    mut all: serde_json::Value,
    fs: &FitSettings,
    metrics: serde_json::Map<String, serde_json::Value>,
    interrupted: bool,
) -> Result<serde_json::Value> {
    if let Some(s) = all.get_mut("settings").and_then(|v| v.as_object_mut()) {
        s.insert("family".into(), fs.family.name().into());
        s.insert("rank".into(), fs.family.rank().into());
        s.insert("samples".into(), fs.samples.into());
        s.insert("lr".into(), fs.lr.into());
        s.insert("lr_final".into(), fs.lr_final.into());
    }
    if let Some(o) = all.as_object_mut() {
        o.extend(metrics);
        o.insert("interrupted".into(), interrupted.into());
    }
    write_json(&out.join("metrics.json"), &all)?;
    Ok(all)
}

/// `elbo.csv` and `elbo.png` of a fit's trace (step, ELBO, wall seconds);
/// returns the ELBO values.
pub fn write_elbo_trace(out: &Path, trace: &[(usize, f64, f64)], title: &str) -> Result<Vec<f64>> {
    let mut csv = String::from("step,elbo,wall_seconds\n");
    for (t, e, w) in trace {
        csv.push_str(&format!("{t},{e:.10e},{w:.6}\n"));
    }
    let csv_path = out.join("elbo.csv");
    crate::output::files::write_bytes(&csv_path, csv.as_bytes())?;
    let xs: Vec<f64> = trace.iter().map(|t| t.0 as f64).collect();
    let ys: Vec<f64> = trace.iter().map(|t| t.1).collect();
    plot::write_line_plot(
        &out.join("elbo.png"),
        title,
        "step",
        "ELBO",
        &[Series {
            label: "ELBO".into(),
            x: &xs,
            y: &ys,
            band: None,
            rgb: [31, 119, 180],
            dashed: false,
        }],
        false,
        Some(plot::robust_range(&ys)),
    )?;
    Ok(ys)
}

/// Problem, data, truth and output folder of one inference, from the
/// settings every inference command shares (`run`, `mcmc`, `laplace`).
pub struct Setup {
    pub kind: ProblemKind,
    pub args: ProblemArgs,
    pub pb: Problem,
    pub out: PathBuf,
    pub obs_path: PathBuf,
    pub truth_path: Option<PathBuf>,
    /// Sensor unknown indices and observed values.
    pub sensors: Vec<usize>,
    pub y: Vec<f64>,
    /// (xi if known, the field).
    pub truth: Option<(Option<Vec<f64>>, Vec<f64>)>,
    pub seed: u64,
    pub quiet: bool,
    pub cg: CgParams,
    /// This process's lock on `out` (two runs into one folder are refused).
    pub lock: Option<crate::output::files::OutLock>,
}

impl Setup {
    /// The settings block of metrics.json shared by every method.
    pub fn settings_json(&self) -> serde_json::Value {
        serde_json::json!({
            "problem": self.kind.name(), "n": self.pb.n, "d": self.pb.d, "noise": self.pb.sigma_n,
            "seed": self.seed, "obs": self.obs_path.display().to_string(),
            "truth": self.truth_path.as_ref().map(|p| p.display().to_string()),
            "cg_tol": self.cg.rel_tol, "cg_max_iters": self.cg.max_iters,
            "precond": self.cg.precond.name(), "solver_layout": self.cg.layout.name(),
        })
    }
}

/// `--figure-px` and `--contours`, for every figure the command writes.
pub fn figure_settings(cfg: &RunConfig) -> Result<()> {
    if let Some(px) = cfg.figure_px {
        plot::set_map_px(px)?;
    }
    if let Some(k) = cfg.contours {
        plot::set_contours(k)?;
    }
    Ok(())
}

/// Build the problem, read or simulate the data, create the output folder.
pub fn setup(cfg: &RunConfig) -> Result<Setup> {
    let name = cfg.problem.as_deref().unwrap_or("darcy2d");
    // inclusions2d is darcy2d with another field class (spec default n = 32).
    let inclusions = crate::cli::vae::is_inclusions(name);
    let prior = parse_prior(cfg.prior.as_deref())?;
    if prior.is_some() {
        // These paths map the latent vector to a field with the KL basis.
        refuse_options(
            cfg,
            false,
            "prior",
            cfg.prior.as_deref().unwrap_or_default(),
            "a generative prior (it draws fields with the KL basis); drop one of the two",
        )?;
    }
    let kind = if inclusions {
        ProblemKind::Darcy2d
    } else {
        ProblemKind::parse(name)?
    };
    let args = ProblemArgs {
        kind,
        n: cfg
            .n
            .or(prior.as_ref().map(|p| p.meta.n))
            .or(inclusions.then_some(32)),
        d: cfg.d,
    };
    let mut pb = args.build()?;
    if let Some(p) = &prior {
        if cfg.d.is_some_and(|d| d != p.latent()) {
            return Err(Error::setting(
                "d",
                cfg.d.unwrap_or(0),
                format!(
                    "with --prior vae the latent dimension is the decoder's K = {}: drop --d",
                    p.latent()
                ),
            ));
        }
        pb = pb.with_prior(p.clone())?;
    }
    if let Some(s) = cfg.noise {
        if !(s.is_finite() && s > 0.0) {
            return Err(Error::setting(
                "noise",
                s,
                "must be a positive, finite standard deviation",
            ));
        }
        pb.sigma_n = s;
    }
    let out = cfg
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("out/{}", kind.name())));
    let lock = crate::output::files::OutLock::acquire(&out)?;
    let seed = cfg.seed.unwrap_or(0);
    let quiet = cfg.quiet.unwrap_or(false);

    // Data: a CSV, or simulated from the prior (truth kept for error maps).
    let (obs_path, mut truth_path) = match &cfg.obs {
        Some(p) => (p.clone(), cfg.truth.clone()),
        None => {
            let sim_seed = cfg.simulate_seed.unwrap_or(seed);
            let data_dir = out.join("data");
            // A generative prior's class (or inclusions2d named as the
            // problem) is simulated as that class, not as a KL draw.
            let class = prior.as_ref().map(|p| p.meta.class.as_str());
            let truth = if inclusions || class == Some("inclusions2d") {
                crate::cli::vae::simulate_case(Some(pb.n), sim_seed, Some(pb.sigma_n), &data_dir)?;
                data_dir.join("z_true.npy")
            } else if prior.is_some() {
                return Err(Error::setting(
                    "obs",
                    "missing",
                    "a generative prior of an unknown field class cannot simulate its own data: give --obs",
                ));
            } else {
                commands::simulate(&args, sim_seed, None, Some(pb.sigma_n), &data_dir)?;
                data_dir.join("xi_true.npy")
            };
            if !quiet {
                eprintln!(
                    "no --obs given: simulated data (seed {sim_seed}) into {}",
                    data_dir.display()
                );
            }
            (data_dir.join("obs.csv"), Some(truth))
        }
    };
    if cfg.truth.is_some() {
        truth_path = cfg.truth.clone();
    }
    let (sensors, y) = crate::physics::sensors::read_obs(&pb, &obs_path)?;
    let truth = match &truth_path {
        Some(p) => Some(read_truth(&pb, p)?),
        None => None,
    };

    figure_settings(cfg)?;
    let cg = CgParams {
        rel_tol: cfg.tol.unwrap_or(1e-5),
        max_iters: cfg.max_iters.unwrap_or(4000),
        warm_start: true,
        precond: Precond::parse(cfg.precond.as_deref().unwrap_or("auto"))?,
        layout: crate::physics::solver::SolverLayout::parse(
            cfg.solver_layout.as_deref().unwrap_or("auto"),
        )?,
        ..Default::default()
    };
    Ok(Setup {
        kind,
        args,
        pb,
        out,
        obs_path,
        truth_path,
        sensors,
        y,
        truth,
        seed,
        quiet,
        cg,
        lock: Some(lock),
    })
}

/// Refuse the options a path cannot honour: the live view and frames, a
/// surrogate forward model, the residual likelihood, and with `long_run`
/// also checkpoints, resume, `--dry-run`, `--profile`, `--tol-start` and
/// `--tol-noise`.
/// The error names the first such option and `what` it clashes with.
pub fn refuse_options(
    cfg: &RunConfig,
    long_run: bool,
    key: &str,
    value: &str,
    what: &str,
) -> Result<()> {
    let unsupported = [
        ("live", cfg.live == Some(true)),
        ("frames", cfg.frames.is_some()),
        ("gif", cfg.gif == Some(true)),
        (
            "forward surrogate",
            cfg.forward.as_deref().is_some_and(|f| f != "exact"),
        ),
        (
            "likelihood residual",
            cfg.likelihood.as_deref().is_some_and(|l| l != "forward"),
        ),
        (
            "checkpoint-every",
            long_run && cfg.checkpoint_every.is_some(),
        ),
        ("resume", long_run && cfg.resume.is_some()),
        ("dry-run", long_run && cfg.dry_run == Some(true)),
        ("profile", long_run && cfg.profile == Some(true)),
        ("tol-start", long_run && cfg.tol_start.is_some()),
        (
            "tol-noise",
            long_run && cfg.tol_noise.is_some_and(|c| c > 0.0),
        ),
    ];
    match unsupported.iter().find(|u| u.1) {
        Some((option, _)) => Err(Error::setting(
            key,
            value,
            format!("--{option} is not available with {what}"),
        )),
        None => Ok(()),
    }
}

/// `--prior`: `kl` (none: the problem's Gaussian field) or `vae:DIR`.
pub fn parse_prior(
    spec: Option<&str>,
) -> Result<Option<std::sync::Arc<crate::nn::vae::GenerativePrior>>> {
    match spec.map(str::trim) {
        None | Some("kl") | Some("gaussian") => Ok(None),
        Some(s) => match s.strip_prefix("vae:") {
            Some(dir) if !dir.is_empty() => {
                Ok(Some(crate::nn::vae::GenerativePrior::load(Path::new(dir))?))
            }
            _ => Err(Error::setting(
                "prior",
                s,
                "expected kl or vae:DIR (a folder written by `pdevi train vae`)",
            )),
        },
    }
}

/// Run inference as configured; returns the metrics written to metrics.json.
pub fn run(cfg: &RunConfig) -> Result<serde_json::Value> {
    match cfg.likelihood.as_deref().unwrap_or("forward") {
        "forward" => {}
        "residual" => return crate::cli::residual::run_residual(cfg),
        other => {
            return Err(Error::setting(
                "likelihood",
                other,
                "expected forward (a solver in the loop) or residual (virtual observations)",
            ))
        }
    }
    if cfg.sigma_r.is_some() {
        return Err(Error::setting(
            "sigma-r",
            cfg.sigma_r.unwrap_or_default(),
            "is the residual's noise: use it with --likelihood residual",
        ));
    }
    if let Some(dir) = crate::cli::surrogate::parse_forward(cfg.forward.as_deref())? {
        return crate::cli::surrogate::run_surrogate(cfg, dir);
    }
    if cfg.family.as_deref().map(str::trim) == Some("flow") {
        return crate::cli::flow::run_flow(cfg);
    }
    for (key, set) in [
        ("flow-layers", cfg.flow_layers.is_some()),
        ("flow-hidden", cfg.flow_hidden.is_some()),
        ("divergence", cfg.divergence.is_some()),
    ] {
        if set {
            return Err(Error::setting(
                key,
                "given",
                "is a setting of the flow family: add --family flow",
            ));
        }
    }
    let (cfg, resume) = resume_config(cfg, "vi")?;
    let cfg = &cfg;
    let st = setup(cfg)?;
    let Setup {
        pb,
        out,
        sensors,
        y,
        seed,
        quiet,
        cg,
        ..
    } = &st;
    let (seed, quiet, cg) = (*seed, *quiet, *cg);
    let family = Family::parse(
        cfg.family.as_deref().unwrap_or("full-rank"),
        cfg.rank.unwrap_or(8),
    )?;
    let samples = cfg.samples.unwrap_or(16);
    let steps = cfg.steps.unwrap_or(1000);
    if steps > u32::MAX as usize {
        return Err(Error::setting(
            "steps",
            steps,
            "at most 2^32 - 1 steps (the kernels count steps in 32 bits); a run that long would not finish anyway",
        ));
    }
    if steps == 0 {
        return Err(Error::setting(
            "steps",
            0,
            "need at least one optimisation step",
        ));
    }
    let lr = cfg.lr.unwrap_or(0.05);
    let lr_final = cfg.lr_final.unwrap_or(0.1);
    if !(lr.is_finite() && lr > 0.0) {
        return Err(Error::setting("lr", lr, "must be positive"));
    }
    if !(lr_final.is_finite() && lr_final > 0.0 && lr_final <= 1.0) {
        return Err(Error::setting(
            "lr_final",
            lr_final,
            "must be in (0, 1] (a fraction of lr)",
        ));
    }
    if let Some(c) = cfg.tol_noise {
        if !(c.is_finite() && c >= 0.0) {
            return Err(Error::setting(
                "tol_noise",
                c,
                "must be a factor >= 0 (0 turns the noise-based tolerance off)",
            ));
        }
        if c > 0.0 && cfg.tol_start.is_some() {
            return Err(Error::setting(
                "tol_noise",
                c,
                "--tol-start and --tol-noise both set the CG tolerance: give one",
            ));
        }
    }
    if let Some(t) = cfg.tol_start {
        if !(t.is_finite() && t > 0.0 && t < 1.0) {
            return Err(Error::setting(
                "tol_start",
                t,
                "must be a relative tolerance in (0, 1), looser than --tol",
            ));
        }
    }
    let (ctx, mut watcher) = context_and_watcher(cfg, out, pb, steps, "ELBO")?;
    let settings = FitSettings {
        family,
        samples,
        steps,
        lr,
        lr_final,
        seed,
        cg,
        report_every: 10,
        tol_start: cfg.tol_start,
        tol_noise: cfg.tol_noise_factor(),
        resume: None,
        first_step: 0,
        profile: false,
    };
    // Start from the Laplace approximation: Adam then refines a good
    // Gaussian instead of shrinking the prior by orders of magnitude.
    let start = match cfg.init.as_deref().unwrap_or("laplace") {
        "prior" => Start::Prior,
        "laplace" => Start::Laplace {
            gn_iters: cfg.gn_iters.unwrap_or(30),
        },
        other => return Err(Error::setting("init", other, "expected laplace or prior")),
    };
    let prior_trace: Vec<(usize, f64, f64)> = resume
        .as_ref()
        .and_then(|ck| serde_json::from_value(ck.host["trace"].clone()).ok())
        .unwrap_or_default();
    let first_step = resume
        .as_ref()
        .and_then(|ck| ck.host["next_step"].as_u64())
        .unwrap_or(0) as usize;
    let ck_every = cfg.checkpoint_every.filter(|&k| k > 0);
    let settings = FitSettings {
        report_every: watcher.as_ref().map_or(10, Watcher::report_every),
        first_step,
        resume: resume.clone(),
        profile: cfg.profile.unwrap_or(false),
        ..settings
    };
    let config = config_json(cfg);
    let mut next_ck = ck_every.map(|k| first_step + k);
    if cfg.dry_run == Some(true) {
        let engine =
            crate::infer::vi::ViEngine::new(&ctx, pb, family, samples, sensors, y, seed, cg)?;
        let host = (pb.d * pb.ncoef()) as u128 * 12 + steps as u128 * 24;
        return Ok(plan_json(
            &ctx,
            "run",
            &st,
            serde_json::json!({
                "family": family.name(), "samples": samples, "steps": steps,
                "dispatches_per_step": engine.dispatches_per_step(),
                "variational_parameters": family.nparam(pb.d),
            }),
            host,
        ));
    }
    let bar = crate::output::progress::progress_bar(steps, quiet, "steps  {per_sec}  ELBO {msg}");
    let mut last_good = Vec::new();
    let result = variational_watched(
        &ctx,
        pb,
        sensors,
        y,
        &settings,
        start,
        &mut last_good,
        |t, e| {
            bar.set_position(t as u64 + 1);
            bar.set_message(format!("{e:.4e}"));
        },
        &mut |engine, t, trace| {
            if let Some(w) = &mut watcher {
                if w.due(t) {
                    let elbo: Vec<f64> = prior_trace.iter().chain(trace).map(|p| p.1).collect();
                    w.show_engine(&ctx, engine, t, &elbo)?;
                }
            }
            if let (Some(k), Some(at)) = (ck_every, next_ck) {
                if t + 1 >= at && t + 1 < steps {
                    let all: Vec<_> = prior_trace.iter().chain(trace).copied().collect();
                    save_vi_checkpoint(&ctx, engine, out, t + 1, &all, &config)?;
                    next_ck = Some(t + 1 + k);
                }
            }
            Ok(())
        },
    );
    bar.finish_and_clear();
    let watched = match &mut watcher {
        Some(w) => w.finish()?,
        None => serde_json::Value::Null,
    };
    let ViRun {
        engine,
        fit: r,
        laplace_seconds,
        start_warning,
    } = match result {
        Ok(r) => r,
        Err(e) => {
            if last_good.len() == family.nparam(pb.d) {
                // Keep the last good parameters for the user.
                let (m, cov) = family.moments(pb.d, &last_good);
                io::write_npy(&out.join("last_good_mean_xi.npy"), &[pb.d], &m)?;
                io::write_npy(&out.join("last_good_cov_xi.npy"), &[pb.d, pb.d], &cov)?;
            }
            return Err(e);
        }
    };
    if let (Some(w), false) = (&start_warning, quiet) {
        eprintln!("warning: {w}");
    }

    // Ctrl-C: a checkpoint of the last good state, then the outputs.
    let done = r.interrupted.unwrap_or(steps);
    let trace: Vec<(usize, f64, f64)> = prior_trace.iter().chain(&r.trace).copied().collect();
    if r.interrupted.is_some() || (ck_every.is_some() && first_step < steps) {
        // Interrupted, or the last checkpoint of a checkpointed run: the
        // final state (resuming it runs no step, and says so).
        save_vi_checkpoint(&ctx, &engine, out, done, &trace, &config)?;
    }

    // Posterior in xi, fields, predictive.
    let (m, cov) = family.moments(pb.d, &r.theta);
    let mut metrics = serde_json::Map::new();
    let npred = cfg.predictive_samples.unwrap_or(64);
    write_posterior(
        &ctx,
        &engine.solver,
        &st,
        &format!(
            "VI, {}, {samples} samples/step, {steps} steps",
            family.name()
        ),
        &m,
        &cov,
        None,
        npred,
        &mut metrics,
    )?;

    // ELBO trace.
    let ys = write_elbo_trace(
        out,
        &trace,
        &format!("ELBO ({}, {} samples/step)", family.name(), samples),
    )?;

    let final_elbo = ys.last().copied().unwrap_or(f64::NAN);
    let mut all = serde_json::json!({
        "final_elbo": final_elbo,
        "steps": steps,
        "steps_done": done,
        "interrupted": r.interrupted.is_some(),
        "resumed_from": resume.as_ref().map(|_| first_step),
        "wall_seconds": r.seconds,
        "steps_per_s": (done - first_step) as f64 / r.seconds,
        "mean_cg_iters": r.mean_cg_iters,
        "cg_tol": serde_json::json!({
            "mode": if settings.tol_noise.is_some() {
                "noise"
            } else if settings.tol_start.is_some() {
                "schedule"
            } else {
                "fixed"
            },
            "tol": settings.cg.rel_tol,
            "noise_factor": settings.tol_noise,
            "noise_max": settings.tol_noise.map(|_| crate::infer::vi::TOL_NOISE_MAX),
            "mean_over_readbacks": r.mean_cg_tol,
        }),
        "unconverged_solves_sampled": r.unconverged_solves,
        "dispatches_per_step": engine.dispatches_per_step(),
        "device": ctx.describe(),
        "method": "vi",
        "init": cfg.init.as_deref().unwrap_or("laplace"),
        "laplace_seconds": laplace_seconds,
        "settings": st.settings_json(),
    });
    if !watched.is_null() {
        all["live"] = watched;
    }
    if cfg.profile == Some(true) {
        let done_here = (done - first_step).max(1);
        all["profile"] = match &engine.profiler {
            Some(p) => {
                let (json, table) = p.report();
                eprintln!("{table}");
                let mut json = json;
                json["wall_seconds_per_step"] = (r.seconds / done_here as f64).into();
                json
            }
            // No timestamps inside encoders on this device (GL): wall time only.
            None => serde_json::json!({
                "timestamps": false,
                "wall_seconds_per_step": r.seconds / done_here as f64,
                "note": "this device has no timestamp queries inside command encoders; only the wall time per step (read-backs included) is measured",
            }),
        };
    }
    if let Some(s) = all.get_mut("settings").and_then(|v| v.as_object_mut()) {
        s.insert("family".into(), family.name().into());
        s.insert("rank".into(), family.rank().into());
        s.insert("samples".into(), samples.into());
        s.insert("steps".into(), steps.into());
        s.insert("lr".into(), lr.into());
        s.insert("lr_final".into(), lr_final.into());
    }
    if let Some(obj) = all.as_object_mut() {
        obj.extend(metrics);
    }
    write_json(&out.join("metrics.json"), &all)?;
    if r.unconverged_solves > 0 && !quiet {
        eprintln!(
            "warning: {} sampled CG solves hit the iteration cap; raise --max-iters or loosen --tol",
            r.unconverged_solves
        );
    }
    if r.interrupted.is_some() {
        return Err(Error::Interrupted(format!(
            "stopped after step {done} of {steps}; the outputs of that state are in {} (metrics.json says \"interrupted\": true); continue with `pdevi run --resume {}`",
            out.display(),
            out.display()
        )));
    }
    Ok(all)
}

/// The GPU context of a command, and its watcher: a window's event loop
/// is made first, so the context can present to it on every backend.
pub fn context_and_watcher(
    cfg: &RunConfig,
    out: &Path,
    pb: &Problem,
    steps: usize,
    curve_title: &str,
) -> Result<(GpuContext, Option<Watcher>)> {
    let mut w = watcher(cfg, out, pb, steps, curve_title)?;
    let display = w.as_mut().and_then(Watcher::display);
    let ctx = GpuContext::with_display(&crate::gpu::AdapterRequest::from_env(), display)?;
    if let Some(w) = &mut w {
        w.open_window(&ctx);
    }
    Ok((ctx, w))
}

/// The frames, GIF and live window a command was asked for (`--frames`,
/// `--every`, `--gif`, `--live`); `None` when none.
pub fn watcher(
    cfg: &RunConfig,
    out: &Path,
    pb: &Problem,
    steps: usize,
    curve_title: &str,
) -> Result<Option<Watcher>> {
    Watcher::new(
        &WatchOptions {
            frames: cfg.frames.clone(),
            every: cfg.every,
            gif: cfg.gif.unwrap_or(false),
            live: cfg.live.unwrap_or(false),
        },
        out,
        pb,
        steps,
        curve_title,
    )
}

/// Settings a resumed run may change: how it is shown, not what it computes.
const DISPLAY_KEYS: &[&str] = &[
    "quiet",
    "live",
    "frames",
    "every",
    "gif",
    "figure_px",
    "contours",
    "checkpoint_every",
    "resume",
    "predictive_samples",
    "dry_run",
    "profile",
];

/// `--resume DIR`: the checkpoint of `DIR` and the settings it was written
/// with; flags given now may only change what is shown (a flag that would
/// change the result is refused, named).
pub fn resume_config(
    cfg: &RunConfig,
    kind: &str,
) -> Result<(
    RunConfig,
    Option<std::sync::Arc<crate::output::checkpoint::Checkpoint>>,
)> {
    use crate::output::checkpoint::{Checkpoint, FILE};
    let Some(dir) = &cfg.resume else {
        return Ok((cfg.clone(), None));
    };
    let path = dir.join(FILE);
    if !path.is_file() {
        return Err(Error::setting(
            "resume",
            dir.display(),
            format!(
                "has no {FILE}: resume a folder written with --checkpoint-every K (or by a run stopped with Ctrl-C)"
            ),
        ));
    }
    let ck = Checkpoint::load(&path, kind)?;
    let saved = ck.host.get("config").cloned().unwrap_or_default();
    let now = serde_json::to_value(cfg)
        .map_err(|e| Error::setting("resume", dir.display(), e.to_string()))?;
    let (Some(saved_obj), Some(now_obj)) = (saved.as_object(), now.as_object()) else {
        return Err(Error::Format {
            path,
            message: "the checkpoint holds no settings".into(),
        });
    };
    let mut merged = saved_obj.clone();
    for (k, v) in now_obj {
        if v.is_null() || k == "out" {
            // `out` is where the checkpoint lives.
            continue;
        }
        if DISPLAY_KEYS.contains(&k.as_str()) {
            merged.insert(k.clone(), v.clone());
        } else if saved_obj.get(k) != Some(v) {
            return Err(Error::setting(
                k.as_str(),
                v,
                format!(
                    "differs from the checkpoint's {}: a resumed run keeps its settings (drop the flag, or start a new run)",
                    saved_obj.get(k).cloned().unwrap_or_default()
                ),
            ));
        }
    }
    merged.insert("out".into(), serde_json::json!(dir));
    merged.insert("resume".into(), serde_json::json!(dir));
    let cfg: RunConfig =
        serde_json::from_value(serde_json::Value::Object(merged)).map_err(|e| Error::Format {
            path: path.clone(),
            message: format!("its settings do not read back: {e}"),
        })?;
    Ok((cfg, Some(std::sync::Arc::new(ck))))
}

/// The settings a checkpoint keeps (`resume` left out).
pub fn config_json(cfg: &RunConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(cfg).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("resume");
    }
    v
}

/// Save the VI state after `next_step` steps, with the trace so far.
fn save_vi_checkpoint(
    ctx: &GpuContext,
    engine: &crate::infer::vi::ViEngine,
    out: &Path,
    next_step: usize,
    trace: &[(usize, f64, f64)],
    config: &serde_json::Value,
) -> Result<()> {
    let host = serde_json::json!({
        "next_step": next_step,
        "trace": trace,
        "config": config,
        "device": ctx.describe(),
    });
    crate::output::checkpoint::Checkpoint::capture(ctx, "vi", &engine.state_buffers(), host)?
        .save(&out.join(crate::output::checkpoint::FILE))
}

/// What `--dry-run` prints: the problem, the device memory the engine
/// allocated (by buffer), the host memory estimate against this machine's,
/// and `extra` (dispatches per step, ...). Nothing has run.
pub fn plan_json(
    ctx: &GpuContext,
    command: &str,
    st: &Setup,
    extra: serde_json::Value,
    host_bytes: u128,
) -> serde_json::Value {
    use crate::memory::{fmt_bytes, host_total};
    let largest: Vec<serde_json::Value> = ctx
        .largest_allocations(6)
        .into_iter()
        .map(|(l, b)| serde_json::json!({ "buffer": l, "bytes": b, "size": fmt_bytes(b as u128) }))
        .collect();
    let mut v = serde_json::json!({
        "dry_run": true,
        "command": command,
        "problem": st.kind.name(), "n": st.pb.n, "d": st.pb.d,
        "unknowns_per_system": st.pb.nunk(), "sensors": st.sensors.len(),
        "device": ctx.describe(),
        "device_bytes": ctx.allocated_bytes(),
        "device_size": fmt_bytes(ctx.allocated_bytes() as u128),
        "device_limit_per_buffer": ctx.max_binding(),
        "largest_buffers": largest,
        "host_bytes_estimate": host_bytes as u64,
        "host_size_estimate": fmt_bytes(host_bytes),
        "host_total": fmt_bytes(host_total() as u128),
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v
}
