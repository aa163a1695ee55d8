//! `pdevi run --family flow`: normalizing-flow VI started at the Laplace
//! approximation (the base) with identity layers, trained by the ELBO or a
//! Renyi bound; the posterior's moments from its draws, the draws
//! themselves (`posterior_samples_xi.npy`, also as `samples_xi.npy` for
//! `pdevi compare`), distances to the Laplace Gaussian, and for d = 2 the
//! density of q as a contour map.

use std::path::Path;

use crate::cli::run::{setup, write_elbo_trace, write_posterior, RunConfig};
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::infer::flow::{Divergence, FlowEngine, FlowSpec, FlowState};
use crate::infer::vi::{lr_at, step_loop, Family, FitSettings};
use crate::output::files::write_json;
use crate::output::io;
use crate::output::plot::{self, Field2, Painter, Panel};

/// A flow fit's results.
pub struct FlowFit {
    pub engine: FlowEngine,
    pub state: FlowState,
    pub trace: Vec<(usize, f64, f64)>,
    pub seconds: f64,
    pub laplace: Option<(Vec<f64>, Vec<f64>)>,
    pub interrupted: Option<usize>,
}

/// Laplace start (unless `prior_start`), then `s.steps` steps.
#[allow(clippy::too_many_arguments, reason = "the settings of one inference")]
pub fn fit_flow(
    ctx: &GpuContext,
    pb: &crate::physics::problem::Problem,
    sensors: &[usize],
    y: &[f64],
    spec: &FlowSpec,
    divergence: Divergence,
    s: &FitSettings,
    gn_iters: Option<usize>,
    mut progress: impl FnMut(usize, f64),
) -> Result<FlowFit> {
    let mut engine = FlowEngine::new(
        ctx, pb, spec, divergence, s.samples, sensors, y, s.seed, s.cg,
    )?;
    let laplace = match gn_iters {
        Some(it) => {
            let lp = crate::infer::laplace::fit_laplace(ctx, pb, sensors, y, s.cg, it)?;
            let base = Family::FullRank.theta_from_gaussian(pb.d, &lp.map, &lp.cov)?;
            engine.set_base(ctx, &base)?;
            Some((lp.map, lp.cov))
        }
        None => None,
    };
    let (trace, seconds, interrupted) = {
        let eng = &mut engine;
        step_loop(
            ctx,
            s,
            &eng.scalars.clone(),
            |t| eng.step(ctx, t as u32, lr_at(s, t)),
            &mut progress,
            |k, e| {
                Error::Diverged(format!(
                    "the flow's ELBO is {e} at step {k}: lower --lr (now {}) or use fewer --flow-layers",
                    s.lr
                ))
            },
        )?
    };
    let state = engine.state(ctx)?;
    Ok(FlowFit {
        engine,
        state,
        trace,
        seconds,
        laplace,
        interrupted,
    })
}

fn parse_hidden(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .ok()
                .filter(|&w| w > 0)
                .ok_or_else(|| Error::setting("flow-hidden", s, "expected widths like 32,32"))
        })
        .collect()
}

/// `pdevi run --family flow`.
pub fn run_flow(cfg: &RunConfig) -> Result<serde_json::Value> {
    crate::cli::run::refuse_options(
        cfg,
        true,
        "family",
        "flow",
        "the flow family yet; drop it, or use a Gaussian family",
    )?;
    let st = setup(cfg)?;
    let pb = &st.pb;
    let d = pb.d;
    let spec = FlowSpec {
        layers: cfg.flow_layers.unwrap_or(4),
        hidden: parse_hidden(cfg.flow_hidden.as_deref().unwrap_or("32,32"))?,
        ..Default::default()
    };
    let divergence = Divergence::parse(cfg.divergence.as_deref().unwrap_or("kl"))?;
    let steps = cfg.steps.unwrap_or(1000);
    if steps == 0 || steps > u32::MAX as usize / 2 {
        return Err(Error::setting("steps", steps, "need 1 ..= 2^31 steps"));
    }
    let s = FitSettings {
        family: Family::FullRank,
        samples: cfg.samples.unwrap_or(16),
        steps,
        lr: cfg.lr.unwrap_or(0.01),
        lr_final: cfg.lr_final.unwrap_or(0.1),
        seed: st.seed,
        cg: st.cg,
        report_every: 10,
        ..Default::default()
    };
    let gn = match cfg.init.as_deref().unwrap_or("laplace") {
        "laplace" => Some(cfg.gn_iters.unwrap_or(30)),
        "prior" => None,
        other => return Err(Error::setting("init", other, "expected laplace or prior")),
    };
    let ctx = GpuContext::new()?;
    let bar =
        crate::output::progress::progress_bar(steps, st.quiet, "steps  {per_sec}  ELBO {msg}");
    let r = fit_flow(
        &ctx,
        pb,
        &st.sensors,
        &st.y,
        &spec,
        divergence,
        &s,
        gn,
        |t, e| {
            bar.set_position(t as u64 + 1);
            bar.set_message(format!("{e:.4e}"));
        },
    )?;
    bar.finish_and_clear();
    let FlowFit {
        mut engine,
        state,
        trace,
        seconds,
        laplace,
        interrupted,
    } = r;
    let nsamp = cfg.predictive_samples.unwrap_or(1000).max(2);
    let draws = engine.draws(&ctx, nsamp)?;
    let (m, cov) = crate::infer::mcmc::sample_moments(&draws, d);
    let out = &st.out;
    io::write_npy(&out.join("posterior_samples_xi.npy"), &[nsamp, d], &draws)?;
    io::write_npy(&out.join("samples_xi.npy"), &[nsamp, d], &draws)?;
    let npred = nsamp.min(64);
    let pred =
        crate::infer::predictive::predictive_u_draws(&ctx, &engine.solver, &draws[..npred * d])?;
    let mut metrics = serde_json::Map::new();
    write_posterior(
        &ctx,
        &engine.solver,
        &st,
        &format!(
            "flow VI ({} layers, {}), {} samples/step, {steps} steps",
            spec.layers,
            divergence.name(),
            s.samples
        ),
        &m,
        &cov,
        Some(pred),
        npred,
        &mut metrics,
    )?;
    let ys = write_elbo_trace(
        out,
        &trace,
        &format!("ELBO (flow, {} layers, {})", spec.layers, divergence.name()),
    )?;
    if let Some((lm, lc)) = &laplace {
        let ref_draws = crate::infer::predictive::gaussian_draws(lm, lc, nsamp.min(1000), st.seed)?;
        let mine = &draws[..nsamp.min(1000) * d];
        metrics.insert(
            "energy_distance_to_laplace".into(),
            crate::check::distance::energy_distance(mine, &ref_draws, d).into(),
        );
        metrics.insert(
            "sliced_wasserstein_to_laplace".into(),
            crate::check::distance::sliced_wasserstein(mine, &ref_draws, d, 200, st.seed).into(),
        );
    }
    if d == 2 {
        write_density_2d(
            Painter::Gpu(&ctx),
            &out.join("q_density.png"),
            &state,
            &draws,
        )?;
    }
    let sc = engine.read_scalars(&ctx)?;
    let done = interrupted.unwrap_or(steps);
    let mut all = serde_json::json!({
        "method": "vi", "family": "flow", "divergence": divergence.name(),
        "flow_layers": spec.layers, "flow_hidden": spec.hidden,
        "final_elbo": ys.last().copied().unwrap_or(f64::NAN),
        "final_bound": sc[1], "weights_ess": sc[3],
        "steps": steps, "steps_done": done, "interrupted": interrupted.is_some(),
        "wall_seconds": seconds, "steps_per_s": done as f64 / seconds,
        "dispatches_per_step": engine.dispatches_per_step(),
        "posterior_samples": nsamp, "device": ctx.describe(),
        "settings": st.settings_json(),
    });
    if let Some(o) = all["settings"].as_object_mut() {
        o.insert("family".into(), "flow".into());
        o.insert("samples".into(), s.samples.into());
        o.insert("lr".into(), s.lr.into());
        o.insert("lr_final".into(), s.lr_final.into());
    }
    if let Some(o) = all.as_object_mut() {
        o.extend(metrics);
    }
    write_json(&out.join("metrics.json"), &all)?;
    if interrupted.is_some() {
        return Err(Error::Interrupted(format!(
            "stopped after step {done} of {steps}; the outputs of that state are in {}",
            out.display()
        )));
    }
    Ok(all)
}

/// The density of q on a 120 x 120 grid over the box holding its draws
/// (their 0.5 % to 99.5 % quantiles per axis, widened by a quarter, within
/// the prior's [-5, 5]), from the f64 mirror's inverse flow, as a heat map
/// with contours; the title gives the box (the panel's axes are the unit
/// square mapped onto it).
pub fn write_density_2d(
    painter: Painter,
    path: &Path,
    st: &FlowState,
    draws: &[f64],
) -> Result<()> {
    let g = 120usize;
    let axis = |k: usize| {
        let mut v: Vec<f64> = draws.chunks_exact(2).map(|r| r[k]).collect();
        v.sort_by(f64::total_cmp);
        let q = |u: f64| v[((u * v.len() as f64) as usize).min(v.len() - 1)];
        let (lo, hi) = (q(0.005), q(0.995));
        let pad = 0.25 * (hi - lo).max(1e-6);
        ((lo - pad).max(-5.0), (hi + pad).min(5.0))
    };
    let (bx, by) = (axis(0), axis(1));
    let mut dens = vec![0.0; g * g];
    for j in 0..g {
        for i in 0..g {
            let x = [
                bx.0 + (i as f64 + 0.5) / g as f64 * (bx.1 - bx.0),
                by.0 + (j as f64 + 0.5) / g as f64 * (by.1 - by.0),
            ];
            dens[j * g + i] = crate::cpu::flow::log_density(st, &x).exp();
        }
    }
    plot::write_panels_png(
        painter,
        path,
        &format!(
            "flow q(xi): xi_1 in [{:.2}, {:.2}] (x1 axis), xi_2 in [{:.2}, {:.2}] (x2 axis)",
            bx.0, bx.1, by.0, by.1
        ),
        &[Panel {
            contours: 8,
            ..Panel::new("q(xi_1, xi_2)", Field2::cells(&dens, g, g))
        }],
    )
}
