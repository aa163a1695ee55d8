//! `pdevi laplace`: Gauss-Newton MAP and the Laplace covariance, written
//! like every other posterior.

use crate::cli::run::{context_and_watcher, setup, write_posterior, RunConfig};
use crate::error::Result;
use crate::infer::laplace::{gauss_newton_watched, GaussNewton};
use crate::output::files::write_json;

/// `pdevi laplace`: the same inputs and output files as `pdevi run`, with
/// the MAP as the mean.
pub fn run_laplace(cfg: &RunConfig) -> Result<serde_json::Value> {
    let st = setup(cfg)?;
    let max_iters = cfg.gn_iters.unwrap_or(30);
    // Frames every iteration unless --every says otherwise.
    let mut wcfg = cfg.clone();
    if cfg.frames.is_some() || cfg.gif == Some(true) || cfg.live == Some(true) {
        wcfg.every = cfg.every.or(Some(1));
    }
    let (ctx, mut shown) =
        context_and_watcher(&wcfg, &st.out, &st.pb, max_iters + 1, "-log posterior")?;
    let forward = crate::cli::surrogate::parse_forward(cfg.forward.as_deref())?;
    if forward.is_some() && cfg.surrogate_variance == Some(true) {
        return Err(crate::error::Error::setting(
            "surrogate-variance",
            "on",
            "Gauss-Newton uses the surrogate's mean only; drop --surrogate-variance for laplace (run accepts it)",
        ));
    }
    if cfg.dry_run == Some(true) && forward.is_none() {
        let _gn = GaussNewton::new(&ctx, &st.pb, &st.sensors, &st.y, st.cg)?;
        let host = (st.pb.d * st.pb.ncoef()) as u128 * 12 + (st.pb.d * st.pb.d) as u128 * 8 * 4;
        return Ok(crate::cli::run::plan_json(
            &ctx,
            "laplace",
            &st,
            serde_json::json!({ "gn_iters": max_iters }),
            host,
        ));
    }
    let gn = match forward {
        Some(dir) => {
            let sur = crate::cli::surrogate::load_for(&ctx, dir, &st.pb)?;
            GaussNewton::with_surrogate(&ctx, &st.pb, &st.sensors, &st.y, st.cg, &sur)?
        }
        None => GaussNewton::new(&ctx, &st.pb, &st.sensors, &st.y, st.cg)?,
    };
    let lp = {
        let (ctx_ref, pb_ref) = (&ctx, &st.pb);
        let mut show = shown.as_mut().map(|w| {
            move |x: &[f64], cov: &[f64], it: usize, hist: &[f64]| -> Result<()> {
                if w.due(it) || it == 0 {
                    w.show_gaussian(ctx_ref, pb_ref, x, cov, it, hist)?;
                }
                Ok(())
            }
        });
        gauss_newton_watched(
            &ctx,
            &gn,
            &vec![0.0; st.pb.d],
            max_iters,
            show.as_mut()
                .map(|f| f as &mut crate::infer::laplace::GnWatch<'_>),
        )?
    };
    let shown = match &mut shown {
        Some(w) => Some(w.finish()?),
        None => None,
    };
    if lp.iterations >= max_iters && !st.quiet {
        eprintln!(
            "warning: Gauss-Newton stopped at --gn-iters {max_iters} with a predicted decrease of {:.3e}; raise --gn-iters",
            lp.decrement
        );
    }
    let mut metrics = serde_json::Map::new();
    let npred = cfg.predictive_samples.unwrap_or(64);
    write_posterior(
        &ctx,
        &gn.solver,
        &st,
        &format!(
            "Laplace{} ({} Gauss-Newton steps)",
            if forward.is_some() {
                " with a surrogate"
            } else {
                ""
            },
            lp.iterations
        ),
        &lp.map,
        &lp.cov,
        None,
        npred,
        &mut metrics,
    )?;
    let mut all = serde_json::json!({
        "method": if forward.is_some() { "laplace-surrogate" } else { "laplace" },
        "forward": cfg.forward.as_deref().unwrap_or("exact"),
        "gauss_newton_iterations": lp.iterations,
        "map_objective": lp.objective,
        "objective_history": lp.history,
        "newton_decrement": lp.decrement,
        "log_evidence_laplace": lp.log_evidence,
        "wall_seconds": lp.seconds,
        "device": ctx.describe(),
        "settings": st.settings_json(),
    });
    if let Some(s) = all.get_mut("settings").and_then(|v| v.as_object_mut()) {
        s.insert("gn_iters".into(), max_iters.into());
    }
    if let Some(obj) = all.as_object_mut() {
        obj.extend(metrics);
    }
    if let Some(v) = shown {
        all["live"] = v;
    }
    if cfg.profile == Some(true) {
        // Each phase ends with a read-back, so wall time is its cost.
        let total: f64 = lp.phases.iter().map(|p| p.1).sum();
        let sections: Vec<serde_json::Value> = lp
            .phases
            .iter()
            .map(|(l, s)| serde_json::json!({ "section": l, "seconds": s, "share": s / total.max(1e-300) }))
            .collect();
        let v = serde_json::json!({
            "timestamps": false,
            "clock": "wall time per phase (each ends with a read-back)",
            "steps": lp.iterations + 1,
            "seconds": total,
            "sections": sections,
        });
        eprintln!(
            "{}",
            crate::gpu::profile::table(&v).replace("(GPU timestamps)", "(wall time)     ")
        );
        all["profile"] = v;
    }
    write_json(&st.out.join("metrics.json"), &all)?;
    Ok(all)
}
