//! `pdevi mcmc`: the same inputs and output files as `pdevi run`, plus the
//! draws, per-coordinate diagnostics and a trace figure.

use std::path::Path;
use std::time::Instant;

use crate::cli::run::{setup, RunConfig};
use crate::error::{Error, Result};
use crate::infer::mcmc::{
    reference_for, sample_posterior_with, McmcResult, McmcSettings, Precondition, Sampler,
};
use crate::output::files::write_json;
use crate::output::io;
use crate::output::plot::{self, Series};
use crate::physics::solver::BatchedSolver;

/// The settings of `pdevi mcmc` from a run config (defaults for unset keys).
pub fn mcmc_settings(cfg: &RunConfig, seed: u64) -> Result<McmcSettings> {
    let d = McmcSettings::default();
    let s = McmcSettings {
        sampler: Sampler::parse(cfg.sampler.as_deref().unwrap_or("mala"))?,
        chains: cfg.chains.unwrap_or(d.chains),
        warmup: cfg.warmup.unwrap_or(d.warmup),
        samples: cfg.samples.unwrap_or(d.samples),
        thin: cfg.thin.unwrap_or(d.thin),
        precondition: Precondition::parse(cfg.precondition.as_deref().unwrap_or("laplace"))?,
        seed,
        ..d
    };
    s.validate()?;
    Ok(s)
}

/// `pdevi mcmc`: the same inputs and output files as `pdevi run`, plus the
/// draws (`samples_xi.npy` N x d, `chains_xi.npy` chains x kept x d,
/// `chains_logpost.npy`), per-coordinate diagnostics and a trace figure.
pub fn run_mcmc(cfg: &RunConfig) -> Result<serde_json::Value> {
    let (cfg, resume) = crate::cli::run::resume_config(cfg, "mcmc")?;
    let cfg = &cfg;
    let forward = crate::cli::surrogate::parse_forward(cfg.forward.as_deref())?;
    // Settings first: a bad one fails before any data are simulated.
    let mut settings = mcmc_settings(cfg, cfg.seed.unwrap_or(0))?;
    let st = setup(cfg)?;
    settings.seed = st.seed;
    let total = settings.total_steps();
    let (ctx, mut shown) =
        crate::cli::run::context_and_watcher(cfg, &st.out, &st.pb, total, "mean log posterior")?;
    let d = st.pb.d;
    let gn_iters = cfg.gn_iters.unwrap_or(30);
    if cfg.dry_run == Some(true) {
        // The engine with an identity reference: the same buffers.
        let mut l = vec![0.0; d * d];
        for i in 0..d {
            l[i * d + i] = 1.0;
        }
        let eng = crate::infer::mcmc::McmcEngine::new_with(
            &ctx,
            &st.pb,
            &st.sensors,
            &st.y,
            st.cg,
            &settings,
            &vec![0.0; d],
            &l,
            None,
        )?;
        let draws = settings.chains * settings.samples;
        let host = (d * st.pb.ncoef()) as u128 * 12 + draws as u128 * (d as u128 + 1) * 8 * 3;
        return Ok(crate::cli::run::plan_json(
            &ctx,
            "mcmc",
            &st,
            serde_json::json!({
                "sampler": settings.sampler.name(), "chains": settings.chains,
                "warmup": settings.warmup, "samples": settings.samples, "thin": settings.thin,
                "steps": total, "dispatches_per_step": eng.dispatches_per_step(),
            }),
            host,
        ));
    }
    let t_ref = Instant::now();
    // With a surrogate: its likelihood in every chain, and its Laplace fit
    // as the reference.
    let surrogate = match forward {
        Some(dir) => Some(crate::cli::surrogate::load_for(&ctx, dir, &st.pb)?),
        None => None,
    };
    let (m, l, ref_json) = match (&surrogate, settings.precondition) {
        (Some(sur), Precondition::Laplace) => {
            let gn = crate::infer::laplace::GaussNewton::with_surrogate(
                &ctx,
                &st.pb,
                &st.sensors,
                &st.y,
                st.cg,
                sur,
            )?;
            let lap = crate::infer::laplace::gauss_newton(&ctx, &gn, &vec![0.0; d], gn_iters)?;
            let l = crate::math::linalg::cholesky(&lap.cov, d).map_err(|e| {
                Error::not_spd("the surrogate's Laplace covariance (MCMC reference)", e)
            })?;
            let j = serde_json::json!({
                "kind": "laplace-surrogate",
                "gn_iterations": lap.iterations,
                "objective": lap.objective,
            });
            (lap.map, l, j)
        }
        _ => reference_for(
            &ctx,
            &st.pb,
            &st.sensors,
            &st.y,
            st.cg,
            settings.precondition,
            gn_iters,
        )?,
    };
    let sf = match &surrogate {
        Some(sur) => Some(crate::infer::surrogate::SurrogateForward::new(
            &ctx,
            sur,
            settings.chains,
            &st.sensors,
            &st.y,
            st.pb.sigma_n,
            cfg.surrogate_variance.unwrap_or(false),
        )?),
        None => None,
    };
    let reference_seconds = t_ref.elapsed().as_secs_f64();

    let mut running = RunningField::new(&st.pb, settings.warmup);
    let mut lp_trace = Vec::new();
    let state_buf = ctx.upload("live.placeholder", &[0f32; 4])?;
    let mut next_frame = 0usize;
    let (ctx_ref, pb_ref, buf_ref) = (&ctx, &st.pb, &state_buf);
    let mut watcher = shown.as_mut().map(|w| {
        let every = w.every();
        move |t: usize, x: &[f64], ch: &[crate::infer::mcmc::McmcChain]| -> Result<()> {
            running.add(t, x);
            lp_trace.push(ch.iter().map(|c| c.lp as f64).sum::<f64>() / ch.len().max(1) as f64);
            if t < next_frame && t != total {
                return Ok(());
            }
            next_frame = t + every;
            let (mean, std) = running.moments();
            w.show_fields(ctx_ref, pb_ref, buf_ref, &mean, &std, t - 1, &lp_trace)
        }
    });
    let bar = crate::output::progress::progress_bar(total, st.quiet, "steps  {per_sec}  {msg}");
    bar.set_message(format!(
        "{} x {} chains",
        settings.sampler.name(),
        settings.chains
    ));
    let r = sample_posterior_with(
        &ctx,
        &st.pb,
        &st.sensors,
        &st.y,
        st.cg,
        &settings,
        (&m, &l),
        sf,
        |t, _| bar.set_position(t as u64),
        watcher
            .as_mut()
            .map(|w| w as &mut crate::infer::mcmc::McmcWatch<'_>),
        &crate::infer::mcmc::McmcControl {
            resume,
            // Always a path: Ctrl-C writes a checkpoint even without --checkpoint-every.
            checkpoint: Some((
                st.out.join(crate::output::checkpoint::FILE),
                cfg.checkpoint_every.filter(|&k| k > 0),
            )),
            config: crate::cli::run::config_json(cfg),
            profile: cfg.profile.unwrap_or(false),
        },
    );
    bar.finish_and_clear();
    let r = r?;
    let out = &st.out;
    let (c, k, n) = (r.chains, r.kept, r.n());
    io::write_npy(&out.join("samples_xi.npy"), &[n, d], &r.samples)?;
    io::write_npy(&out.join("chains_xi.npy"), &[c, k, d], &r.samples)?;
    io::write_npy(&out.join("chains_logpost.npy"), &[c, k], &r.logpost)?;
    drop(watcher);
    let shown = match &mut shown {
        Some(w) => w.finish()?,
        None => serde_json::Value::Null,
    };
    let shown = (!shown.is_null()).then_some(shown);
    let (mean, cov) = r.moments();
    write_diagnostics(&out.join("diagnostics.csv"), &r, &mean, &cov)?;

    // Posterior predictive of u over evenly spaced kept draws.
    let npred = cfg.predictive_samples.unwrap_or(64).clamp(1, 64).min(n);
    let picks: Vec<f64> = (0..npred)
        .flat_map(|j| {
            let idx = j * n / npred;
            r.samples[idx * d..(idx + 1) * d].to_vec()
        })
        .collect();
    let pred_solver = BatchedSolver::new(&ctx, &st.pb, npred, st.cg, Some(&st.sensors), false)?;
    let pred = crate::infer::predictive::predictive_u_draws(&ctx, &pred_solver, &picks)?;
    let mut metrics = serde_json::Map::new();
    crate::cli::run::write_posterior_draws(
        &ctx,
        &pred_solver,
        &st,
        &format!(
            "MCMC ({}), {} chains x {} draws",
            match settings.sampler.name() {
                "pcn" => "pCN",
                "mala" => "MALA",
                other => other,
            },
            c,
            k
        ),
        &mean,
        &cov,
        Some(pred),
        npred,
        Some(&r.samples),
        &mut metrics,
    )?;
    write_trace(&out.join("trace.png"), &r, settings.warmup, settings.thin)?;

    let (max_rhat, min_ess) = (r.max_rhat(), r.min_ess());
    let finite_or_null = |v: f64| {
        if v.is_finite() {
            serde_json::json!(v)
        } else {
            serde_json::Value::Null
        }
    };
    let mut all = serde_json::json!({
        "method": if surrogate.is_some() { "mcmc-surrogate" } else { "mcmc" },
        "forward": cfg.forward.as_deref().unwrap_or("exact"),
        "sampler": r.sampler.name(),
        "precondition": settings.precondition.name(),
        "reference": ref_json,
        "chains": c,
        "kept_per_chain": k,
        "draws": n,
        "acceptance": r.acceptance,
        "acceptance_min_chain": r.acceptance_per_chain.iter().cloned().fold(f64::INFINITY, f64::min),
        "step_size": r.step,
        "max_rhat": finite_or_null(max_rhat),
        "min_ess_bulk": finite_or_null(min_ess),
        "median_ess_bulk": finite_or_null(r.median_ess()),
        "ess_per_s": finite_or_null(r.ess_per_second()),
        "failed_solves": r.failed_solves,
        "proposals": r.proposals,
        "warmup_seconds": r.warmup_seconds,
        "sampling_seconds": r.sampling_seconds,
        "reference_seconds": reference_seconds,
        "seconds": r.seconds + reference_seconds,
        "steps_per_s": r.interrupted.unwrap_or(total) as f64 / r.seconds,
        "interrupted": r.interrupted.is_some(),
        "steps_done": r.interrupted.unwrap_or(total),
        "dispatches_per_step": r.dispatches_per_step,
        "device": ctx.describe(),
        "settings": st.settings_json(),
    });
    if let Some(sj) = all.get_mut("settings").and_then(|v| v.as_object_mut()) {
        sj.insert("sampler".into(), settings.sampler.name().into());
        sj.insert("chains".into(), c.into());
        sj.insert("warmup".into(), settings.warmup.into());
        sj.insert("samples".into(), settings.samples.into());
        sj.insert("thin".into(), settings.thin.into());
        sj.insert("initial_step".into(), settings.initial_step().into());
        sj.insert("precondition".into(), settings.precondition.name().into());
        sj.insert("gn_iters".into(), gn_iters.into());
        sj.insert("adapt_every".into(), settings.adapt_every.into());
    }
    if let Some(obj) = all.as_object_mut() {
        obj.extend(metrics);
    }
    if let Some(v) = shown {
        all["live"] = v;
    }
    if cfg.profile == Some(true) {
        all["profile"] = if r.profile.is_null() {
            serde_json::json!({
                "timestamps": false,
                "wall_seconds_per_step": r.seconds / r.interrupted.unwrap_or(total).max(1) as f64,
                "note": "this device has no timestamp queries inside command encoders; only the wall time per step is measured",
            })
        } else {
            eprintln!("{}", crate::gpu::profile::table(&r.profile));
            r.profile.clone()
        };
    }
    write_json(&out.join("metrics.json"), &all)?;
    if max_rhat.is_nan() || max_rhat > 1.01 {
        let hint = match settings.precondition {
            Precondition::Prior => " or use --precondition laplace",
            Precondition::Laplace => "",
        };
        eprintln!(
            "warning: max R-hat over xi is {max_rhat:.4} > 1.01: the chains have not mixed; run longer (--samples, --warmup){hint}"
        );
    }
    if min_ess.is_nan() || min_ess < 100.0 {
        eprintln!(
            "warning: min bulk ESS over xi is {min_ess:.1} < 100: too few effective draws for reliable means and intervals; run longer or use more chains"
        );
    }
    if r.failed_solves > 0 {
        eprintln!(
            "warning: {} of {} proposals were rejected because a solve did not converge",
            r.failed_solves, r.proposals
        );
    }
    if let Some(t) = r.interrupted {
        return Err(crate::error::Error::Interrupted(format!(
            "stopped after step {t} of {total} with {k} draws per chain; the outputs of those draws are in {} (metrics.json says \"interrupted\": true); continue with `pdevi mcmc --resume {}`",
            out.display(),
            out.display()
        )));
    }
    Ok(all)
}

/// Per-coordinate mean, sd, R-hat and bulk ESS.
fn write_diagnostics(path: &Path, r: &McmcResult, mean: &[f64], cov: &[f64]) -> Result<()> {
    let d = r.d;
    let mut csv = String::from("i,mean,sd,rhat,ess_bulk\n");
    for i in 0..d {
        csv.push_str(&format!(
            "{i},{:.10e},{:.10e},{:.6},{:.2}\n",
            mean[i],
            cov[i * d + i].max(0.0).sqrt(),
            r.rhat[i],
            r.ess_bulk[i]
        ));
    }
    crate::output::files::write_bytes(path, csv.as_bytes())
}

/// logpi per chain against the step: the warm-up read-backs, then every
/// kept draw (at most 8 chains drawn).
fn write_trace(path: &Path, r: &McmcResult, warmup: usize, thin: usize) -> Result<()> {
    const COLOURS: [[u8; 3]; 8] = [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
        [127, 127, 127],
    ];
    let shown = r.chains.min(COLOURS.len());
    let mut xs = Vec::with_capacity(shown);
    let mut ys = Vec::with_capacity(shown);
    for c in 0..shown {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for (t, lp) in &r.warmup_trace {
            x.push(*t as f64);
            y.push(lp[c]);
        }
        for j in 0..r.kept {
            x.push((warmup + (j + 1) * thin) as f64);
            y.push(r.logpost[c * r.kept + j]);
        }
        xs.push(x);
        ys.push(y);
    }
    let series: Vec<Series> = (0..shown)
        .map(|c| Series {
            label: if c == 0 {
                format!("{shown} of {} chains", r.chains)
            } else {
                String::new()
            },
            x: &xs[c],
            y: &ys[c],
            band: None,
            rgb: COLOURS[c],
            dashed: false,
        })
        .collect();
    let all: Vec<f64> = ys.iter().flatten().copied().collect();
    plot::write_line_plot(
        path,
        &format!(
            "log posterior ({}, warm-up {warmup} steps, then kept draws)",
            r.sampler.name()
        ),
        "step",
        "log posterior (up to a constant)",
        &series,
        false,
        Some(plot::robust_range(&all)),
    )
}

/// Pointwise mean and std of the field over the chains' states seen so
/// far: during warm-up the current states only (they are not draws yet),
/// then every state read back after it (what `pdevi mcmc --live` shows).
struct RunningField {
    basis: Vec<f64>,
    d: usize,
    nc: usize,
    sum: Vec<f64>,
    sum2: Vec<f64>,
    count: usize,
    warmup: usize,
}

impl RunningField {
    fn new(pb: &crate::physics::problem::Problem, warmup: usize) -> Self {
        let nc = pb.ncoef();
        RunningField {
            basis: pb.basis(),
            d: pb.d,
            nc,
            sum: vec![0.0; nc],
            sum2: vec![0.0; nc],
            count: 0,
            warmup,
        }
    }

    /// The states `x` (chains x d) after step `t`.
    fn add(&mut self, t: usize, x: &[f64]) {
        if t <= self.warmup {
            self.sum.iter_mut().for_each(|v| *v = 0.0);
            self.sum2.iter_mut().for_each(|v| *v = 0.0);
            self.count = 0;
        }
        for row in x.chunks(self.d) {
            for c in 0..self.nc {
                let z: f64 = (0..self.d)
                    .map(|k| row[k] * self.basis[k * self.nc + c])
                    .sum();
                self.sum[c] += z;
                self.sum2[c] += z * z;
            }
            self.count += 1;
        }
    }

    fn moments(&self) -> (Vec<f64>, Vec<f64>) {
        let n = self.count.max(1) as f64;
        let mean: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let std = self
            .sum2
            .iter()
            .zip(&mean)
            .map(|(s2, m)| (s2 / n - m * m).max(0.0).sqrt())
            .collect();
        (mean, std)
    }
}
