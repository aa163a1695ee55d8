//! `pdevi run`: variational inference from a TOML config and/or flags,
//! writing the posterior as arrays, images, an ELBO trace and metrics.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::commands;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::infer::vi::{fit, Family, FitSettings, ViEngine};
use crate::output::files::{ensure_dir, write_json};
use crate::output::io;
use crate::output::plot::{self, Colormap, Field2, Panel, Series};
use crate::physics::problem::ProblemArgs;
use crate::physics::problem::{Problem, ProblemKind};
use crate::physics::solver::{BatchedSolver, CgParams};

/// Settings of `pdevi run`, from a TOML file; flags override each key.
#[derive(Clone, Debug, Default, Deserialize)]
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
}

impl RunConfig {
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
            init
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

/// Pointwise mean and std of the field z = basis^T xi under N(m, cov), exact.
pub fn field_moments(pb: &Problem, m: &[f64], cov: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (d, nc) = (pb.d, pb.ncoef());
    let basis = pb.basis();
    let mean = pb.field(m);
    let mut std = vec![0.0; nc];
    let mut phi = vec![0.0; d];
    for c in 0..nc {
        for k in 0..d {
            phi[k] = basis[k * nc + c];
        }
        let mut v = 0.0;
        for i in 0..d {
            let row: f64 = (0..d).map(|j| cov[i * d + j] * phi[j]).sum();
            v += phi[i] * row;
        }
        std[c] = v.max(0.0).sqrt();
    }
    (mean, std)
}

/// Lower Cholesky factor of an SPD matrix (with a tiny jitter if needed).
pub fn cholesky(a: &[f64], d: usize) -> Vec<f64> {
    let mut l = vec![0.0; d * d];
    let scale = (0..d)
        .map(|i| a[i * d + i])
        .fold(0.0f64, f64::max)
        .max(1e-300);
    for j in 0..d {
        let mut dj = a[j * d + j];
        for k in 0..j {
            dj -= l[j * d + k] * l[j * d + k];
        }
        let r = dj.max(1e-14 * scale).sqrt();
        l[j * d + j] = r;
        for i in j + 1..d {
            let mut v = a[i * d + j];
            for k in 0..j {
                v -= l[i * d + k] * l[j * d + k];
            }
            l[i * d + j] = v / r;
        }
    }
    l
}

/// Monte Carlo mean and std of u through the GPU solver, xi drawn from
/// N(m, cov) with the predictive stream (in batches of the solver's size).
pub fn predictive_u(
    ctx: &GpuContext,
    solver: &BatchedSolver,
    m: &[f64],
    cov: &[f64],
    count: usize,
    seed: u64,
) -> Result<(Vec<f64>, Vec<f64>, usize)> {
    let (d, b) = (solver.problem.d, solver.batch);
    let l = cholesky(cov, d);
    let batches = count.div_ceil(b).max(1);
    let mut xis = Vec::with_capacity(batches * b * d);
    for batch in 0..batches {
        let eps = crate::rng::normals(seed, crate::rng::streams::PREDICTIVE, batch as u32, b * d);
        for k in 0..b {
            for i in 0..d {
                xis.push(m[i] + (0..=i).map(|j| l[i * d + j] * eps[k * d + j]).sum::<f64>());
            }
        }
    }
    predictive_u_draws(ctx, solver, &xis)
}

/// Mean and std of u over the given draws of xi (`count x d`), solved in
/// batches of the solver's size (a final partial batch is padded with the
/// first draw and not counted).
pub fn predictive_u_draws(
    ctx: &GpuContext,
    solver: &BatchedSolver,
    xis: &[f64],
) -> Result<(Vec<f64>, Vec<f64>, usize)> {
    let s = solver;
    let (d, nu, b) = (s.problem.d, s.problem.nunk(), s.batch);
    let count = xis.len() / d;
    let mut mean = vec![0.0; nu];
    let mut m2 = vec![0.0; nu];
    let mut seen = 0usize;
    for chunk in xis.chunks(b * d) {
        let used = chunk.len() / d;
        let mut xi = chunk.to_vec();
        while xi.len() < b * d {
            xi.extend_from_slice(&chunk[..d]);
        }
        let info = s.solve(ctx, &xi)?;
        crate::physics::solver::check_converged(&info, "posterior predictive solves", &s.cg)?;
        let u = s.read_u(ctx)?;
        for k in 0..used {
            seen += 1;
            for i in 0..nu {
                let x = u[k * nu + i];
                let delta = x - mean[i];
                mean[i] += delta / seen as f64;
                m2[i] += delta * (x - mean[i]);
            }
        }
    }
    debug_assert_eq!(seen, count);
    let std = m2
        .iter()
        .map(|v| (v / (seen.max(2) - 1) as f64).sqrt())
        .collect();
    Ok((mean, std, seen))
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
    m: &[f64],
    cov: &[f64],
    predictive: Option<(Vec<f64>, Vec<f64>, usize)>,
    npred: usize,
    metrics: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let d = st.pb.d;
    io::write_npy(&st.out.join("posterior_mean_xi.npy"), &[d], m)?;
    io::write_npy(&st.out.join("posterior_cov_xi.npy"), &[d, d], cov)?;
    let (fmean, fstd) = field_moments(&st.pb, m, cov);
    let (umean, ustd, nseen) = match predictive {
        Some(p) => p,
        None => predictive_u(ctx, solver, m, cov, npred, st.seed)?,
    };
    metrics.insert("predictive_samples".into(), nseen.into());
    write_posterior_files(
        &st.out,
        &st.pb,
        &fmean,
        &fstd,
        &umean,
        &ustd,
        st.truth.as_ref().map(|t| &t.1[..]),
        metrics,
    )
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
}

impl Setup {
    /// The settings block of metrics.json shared by every method.
    pub fn settings_json(&self) -> serde_json::Value {
        serde_json::json!({
            "problem": self.kind.name(), "n": self.pb.n, "d": self.pb.d, "noise": self.pb.sigma_n,
            "seed": self.seed, "obs": self.obs_path.display().to_string(),
            "truth": self.truth_path.as_ref().map(|p| p.display().to_string()),
            "cg_tol": self.cg.rel_tol, "cg_max_iters": self.cg.max_iters,
        })
    }
}

/// Build the problem, read or simulate the data, create the output folder.
pub fn setup(cfg: &RunConfig) -> Result<Setup> {
    let kind = ProblemKind::parse(cfg.problem.as_deref().unwrap_or("darcy2d"))?;
    let args = ProblemArgs {
        kind,
        n: cfg.n,
        d: cfg.d,
    };
    let mut pb = args.build()?;
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
    ensure_dir(&out)?;
    let seed = cfg.seed.unwrap_or(0);
    let quiet = cfg.quiet.unwrap_or(false);

    // Data: a CSV, or simulated from the prior (truth kept for error maps).
    let (obs_path, mut truth_path) = match &cfg.obs {
        Some(p) => (p.clone(), cfg.truth.clone()),
        None => {
            let sim_seed = cfg.simulate_seed.unwrap_or(seed);
            let data_dir = out.join("data");
            commands::simulate(&args, sim_seed, None, Some(pb.sigma_n), &data_dir)?;
            if !quiet {
                eprintln!(
                    "no --obs given: simulated data from a prior draw (seed {sim_seed}) into {}",
                    data_dir.display()
                );
            }
            (data_dir.join("obs.csv"), Some(data_dir.join("xi_true.npy")))
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

    let cg = CgParams {
        rel_tol: cfg.tol.unwrap_or(1e-5),
        max_iters: cfg.max_iters.unwrap_or(4000),
        warm_start: true,
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
    })
}

/// Run inference as configured; returns the metrics written to metrics.json.
pub fn run(cfg: &RunConfig) -> Result<serde_json::Value> {
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
    let ctx = GpuContext::new()?;
    let settings = FitSettings {
        family,
        samples,
        steps,
        lr,
        lr_final,
        seed,
        cg,
        report_every: 10,
    };
    let mut engine = ViEngine::new(&ctx, pb, family, samples, sensors, y, seed, cg)?;
    // Start from the Laplace approximation: Adam then refines a good
    // Gaussian instead of shrinking the prior by orders of magnitude.
    let init = cfg.init.as_deref().unwrap_or("laplace");
    let mut laplace_seconds = 0.0;
    match init {
        "prior" => {}
        "laplace" => {
            match crate::infer::laplace::fit_laplace(&ctx, &st, cfg.gn_iters.unwrap_or(30)) {
                Ok(lp) => {
                    laplace_seconds = lp.seconds;
                    engine.set_theta(&ctx, &family.theta_from_gaussian(pb.d, &lp.map, &lp.cov))?;
                }
                Err(e) => {
                    if !quiet {
                        eprintln!("warning: no Laplace start ({e}); starting from the prior");
                    }
                }
            }
        }
        other => return Err(Error::setting("init", other, "expected laplace or prior")),
    }
    let bar = crate::output::progress::progress_bar(steps, quiet, "steps  {per_sec}  ELBO {msg}");
    let mut last_good = Vec::new();
    let result = fit(&ctx, &mut engine, &settings, &mut last_good, |t, e| {
        bar.set_position(t as u64 + 1);
        bar.set_message(format!("{e:.4e}"));
    });
    bar.finish_and_clear();
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            // Keep the last good parameters for the user.
            let (m, cov) = family.moments(pb.d, &last_good);
            io::write_npy(&out.join("last_good_mean_xi.npy"), &[pb.d], &m)?;
            io::write_npy(&out.join("last_good_cov_xi.npy"), &[pb.d, pb.d], &cov)?;
            return Err(e);
        }
    };

    // Posterior in xi, fields, predictive.
    let (m, cov) = family.moments(pb.d, &r.theta);
    let mut metrics = serde_json::Map::new();
    let npred = cfg.predictive_samples.unwrap_or(64);
    write_posterior(
        &ctx,
        &engine.solver,
        &st,
        &m,
        &cov,
        None,
        npred,
        &mut metrics,
    )?;

    // ELBO trace.
    let mut csv = String::from("step,elbo,wall_seconds\n");
    for (t, e, w) in &r.trace {
        csv.push_str(&format!("{t},{e:.10e},{w:.6}\n"));
    }
    let csv_path = out.join("elbo.csv");
    std::fs::write(&csv_path, csv).map_err(|e| Error::io(&csv_path, e))?;
    let xs: Vec<f64> = r.trace.iter().map(|t| t.0 as f64).collect();
    let ys: Vec<f64> = r.trace.iter().map(|t| t.1).collect();
    plot::write_line_plot(
        &out.join("elbo.png"),
        &format!("ELBO ({}, {} samples/step)", family.name(), samples),
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

    let final_elbo = ys.last().copied().unwrap_or(f64::NAN);
    let mut all = serde_json::json!({
        "final_elbo": final_elbo,
        "steps": steps,
        "wall_seconds": r.seconds,
        "steps_per_s": steps as f64 / r.seconds,
        "mean_cg_iters": r.mean_cg_iters,
        "unconverged_solves_sampled": r.unconverged_solves,
        "dispatches_per_step": engine.dispatches_per_step(),
        "device": ctx.describe(),
        "method": "vi",
        "init": init,
        "laplace_seconds": laplace_seconds,
        "settings": st.settings_json(),
    });
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
    Ok(all)
}

/// The posterior arrays, their images and the summary figure.
#[allow(clippy::too_many_arguments, reason = "the fields of one posterior")]
fn write_posterior_files(
    out: &Path,
    pb: &Problem,
    fmean: &[f64],
    fstd: &[f64],
    umean: &[f64],
    ustd: &[f64],
    truth: Option<&[f64]>,
    metrics: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let n = pb.n;
    let um = pb.nodal(umean);
    let us = pb.nodal(ustd);
    if let Some(t) = truth {
        let err: f64 = t
            .iter()
            .zip(fmean)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = t.iter().map(|a| a * a).sum::<f64>().sqrt();
        let inside = |k: f64| {
            t.iter()
                .zip(fmean)
                .zip(fstd)
                .filter(|((a, b), s)| (*a - *b).abs() <= k * **s)
                .count() as f64
                / t.len() as f64
        };
        metrics.insert(
            "rel_l2_error_posterior_mean".into(),
            (err / norm.max(1e-300)).into(),
        );
        metrics.insert("rel_l2_error_prior_mean".into(), 1.0.into());
        metrics.insert("truth_within_2sd".into(), inside(2.0).into());
        metrics.insert("truth_within_3sd".into(), inside(3.0).into());
    }
    match pb.kind {
        ProblemKind::Darcy2d => {
            io::write_npy(&out.join("posterior_mean_z.npy"), &[n, n], fmean)?;
            io::write_npy(&out.join("posterior_std_z.npy"), &[n, n], fstd)?;
            io::write_npy(&out.join("posterior_mean_u.npy"), &[n + 1, n + 1], &um)?;
            io::write_npy(&out.join("posterior_std_u.npy"), &[n + 1, n + 1], &us)?;
            let var: Vec<f64> = fstd.iter().map(|s| s * s).collect();
            io::write_npy(&out.join("posterior_var_z.npy"), &[n, n], &var)?;
            fn cell(v: &[f64], n: usize) -> Field2<'_> {
                Field2 {
                    values: v,
                    nx: n,
                    ny: n,
                }
            }
            fn node(v: &[f64], n: usize) -> Field2<'_> {
                Field2 {
                    values: v,
                    nx: n + 1,
                    ny: n + 1,
                }
            }
            let images: [(&str, Field2, &str, &str); 5] = [
                (
                    "posterior_mean_z",
                    cell(fmean, n),
                    "posterior mean of z",
                    "z",
                ),
                (
                    "posterior_std_z",
                    cell(fstd, n),
                    "posterior std of z",
                    "std z",
                ),
                (
                    "posterior_var_z",
                    cell(&var, n),
                    "posterior variance of z",
                    "var z",
                ),
                ("posterior_mean_u", node(&um, n), "posterior mean of u", "u"),
                (
                    "posterior_std_u",
                    node(&us, n),
                    "posterior std of u",
                    "std u",
                ),
            ];
            for (stem, field, title, label) in &images {
                plot::write_field_png(&out.join(format!("{stem}.png")), field, title, label)?;
            }
            fn panel<'a>(title: &str, field: Field2<'a>, range: Option<(f64, f64)>) -> Panel<'a> {
                Panel {
                    title: title.into(),
                    field,
                    range,
                    cmap: Colormap::Viridis,
                }
            }
            let abs_err: Vec<f64>;
            let panels = if let Some(t) = truth {
                // Truth and mean share one colour scale.
                let lo = t.iter().chain(fmean).cloned().fold(f64::INFINITY, f64::min);
                let hi = t
                    .iter()
                    .chain(fmean)
                    .cloned()
                    .fold(f64::NEG_INFINITY, f64::max);
                abs_err = t.iter().zip(fmean).map(|(a, b)| (a - b).abs()).collect();
                vec![
                    panel("truth z", cell(t, n), Some((lo, hi))),
                    panel("posterior mean z", cell(fmean, n), Some((lo, hi))),
                    panel("posterior std z", cell(fstd, n), None),
                    panel("|error| of mean", cell(&abs_err, n), None),
                ]
            } else {
                vec![
                    panel("posterior mean z", cell(fmean, n), None),
                    panel("posterior std z", cell(fstd, n), None),
                    panel("posterior mean u", node(&um, n), None),
                ]
            };
            plot::write_panels_png(
                &out.join("summary.png"),
                "darcy2d: log-permeability posterior",
                &panels,
            )?;
        }
        ProblemKind::Poisson1d => {
            let mut f = vec![0.0; n + 1];
            f[1..n].copy_from_slice(fmean);
            let mut fs = vec![0.0; n + 1];
            fs[1..n].copy_from_slice(fstd);
            io::write_npy(&out.join("posterior_mean_f.npy"), &[n + 1], &f)?;
            io::write_npy(&out.join("posterior_std_f.npy"), &[n + 1], &fs)?;
            io::write_npy(&out.join("posterior_mean_u.npy"), &[n + 1], &um)?;
            io::write_npy(&out.join("posterior_std_u.npy"), &[n + 1], &us)?;
            let x: Vec<f64> = (0..=n).map(|i| i as f64 / n as f64).collect();
            let band2 = |s: &[f64]| s.iter().map(|v| 2.0 * v).collect::<Vec<f64>>();
            let (fb, ub) = (band2(&fs), band2(&us));
            let tf: Option<Vec<f64>> = truth.map(|t| {
                let mut v = vec![0.0; n + 1];
                v[1..n].copy_from_slice(t);
                v
            });
            let blue = [31, 119, 180];
            let mut series = vec![Series {
                label: "posterior mean +- 2 sd".into(),
                x: &x,
                y: &f,
                band: Some(&fb),
                rgb: blue,
                dashed: false,
            }];
            if let Some(t) = &tf {
                series.push(Series {
                    label: "truth".into(),
                    x: &x,
                    y: t,
                    band: None,
                    rgb: [214, 39, 40],
                    dashed: true,
                });
            }
            plot::write_line_plot(
                &out.join("summary.png"),
                "poisson1d: source f, posterior",
                "x",
                "f",
                &series,
                false,
                None,
            )?;
            plot::write_line_plot(
                &out.join("posterior_mean_f.png"),
                "posterior of f (mean +- 2 sd)",
                "x",
                "f",
                &series[..1],
                false,
                None,
            )?;
            let useries = [Series {
                label: "posterior mean +- 2 sd".into(),
                x: &x,
                y: &um,
                band: Some(&ub),
                rgb: blue,
                dashed: false,
            }];
            plot::write_line_plot(
                &out.join("posterior_mean_u.png"),
                "posterior of u (mean +- 2 sd)",
                "x",
                "u",
                &useries,
                false,
                None,
            )?;
        }
    }
    Ok(())
}
