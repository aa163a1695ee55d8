//! `pdevi train surrogate` and `pdevi run --forward surrogate:DIR`.

use std::path::Path;

use serde_json::json;

use crate::cli::run::{setup, write_posterior, RunConfig};
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::infer::surrogate::{train_surrogate, Surrogate, SurrogateSettings, SurrogateVi};
use crate::infer::vi::{Family, FitSettings};
use crate::nn::dataset::SimSet;
use crate::output::files::write_json;
use crate::output::plot::{self, Series};
use crate::physics::solver::BatchedSolver;

/// `pdevi train surrogate --data FILE --out DIR`.
pub fn train_surrogate_cmd(
    data: &Path,
    out: &Path,
    s: &SurrogateSettings,
) -> Result<serde_json::Value> {
    let set = SimSet::load(data)?;
    let _lock = crate::output::files::OutLock::acquire(out)?;
    let ctx = GpuContext::new()?;
    let (sur, rep) = train_surrogate(&ctx, &set, s)?;
    sur.save(&ctx, out)?;
    let xs: Vec<f64> = (1..=rep.train_loss.len()).map(|e| e as f64).collect();
    let all: Vec<f64> = rep
        .train_loss
        .iter()
        .chain(&rep.val_loss)
        .copied()
        .collect();
    plot::write_line_plot(
        &out.join("loss.png"),
        &format!("surrogate loss ({} pairs)", set.count()),
        "epoch",
        if s.variance {
            "Gaussian NLL"
        } else {
            "MSE (standardised)"
        },
        &[
            Series {
                label: "train".into(),
                x: &xs,
                y: &rep.train_loss,
                band: None,
                rgb: [31, 119, 180],
                dashed: false,
            },
            Series {
                label: "validation".into(),
                x: &xs[..rep.val_loss.len()],
                y: &rep.val_loss,
                band: None,
                rgb: [255, 127, 14],
                dashed: true,
            },
        ],
        !s.variance,
        if s.variance {
            Some(plot::robust_range(&all))
        } else {
            None
        },
    )?;
    let summary = json!({
        "data": data.display().to_string(), "out": out.display().to_string(),
        "target": s.target, "variance": s.variance, "hidden": s.hidden,
        "seconds": rep.seconds, "samples_per_s": rep.samples_per_s,
        "epochs_run": rep.epochs, "best_epoch": rep.best_epoch,
        "best_val_loss": rep.val_loss.get(rep.best_epoch).copied().unwrap_or(f64::NAN),
        "train_loss": rep.train_loss, "val_loss": rep.val_loss,
        "interrupted": rep.interrupted.is_some(),
        "resumed_from_epoch": rep.resumed_from,
        "device": ctx.describe(),
    });
    write_json(&out.join("training.json"), &summary)?;
    if let Some(e) = rep.interrupted {
        return Err(Error::Interrupted(format!(
            "stopped after epoch {e} of {}; the surrogate as trained so far is in {}; continue with the same flags and --resume {}",
            s.epochs,
            out.display(),
            out.display()
        )));
    }
    Ok(summary)
}

/// The folder of a `--forward` setting: `exact` gives `None`.
pub fn parse_forward(forward: Option<&str>) -> Result<Option<&Path>> {
    match forward {
        None | Some("exact") => Ok(None),
        Some(f) => match f.strip_prefix("surrogate:") {
            Some(dir) if !dir.is_empty() => Ok(Some(Path::new(dir))),
            _ => Err(Error::setting(
                "forward",
                f,
                "expected exact or surrogate:DIR (a folder written by `pdevi train surrogate`)",
            )),
        },
    }
}

/// Load a surrogate and check that it was trained on `pb`'s problem, n and d.
pub fn load_for(
    ctx: &GpuContext,
    dir: &Path,
    pb: &crate::physics::problem::Problem,
) -> Result<Surrogate> {
    let sur = Surrogate::load(ctx, dir)?;
    let spb = sur.problem()?;
    if spb.kind != pb.kind || spb.n != pb.n || spb.d != pb.d {
        return Err(Error::setting(
            "forward",
            dir.display(),
            format!(
                "the surrogate was trained on {} n = {} d = {}, the run is {} n = {} d = {}",
                spb.kind.name(),
                spb.n,
                spb.d,
                pb.kind.name(),
                pb.n,
                pb.d
            ),
        ));
    }
    Ok(sur)
}

/// `pdevi run --forward surrogate:DIR`: VI from the prior with the surrogate
/// in the likelihood; the predictive u is still drawn with the exact solver.
pub fn run_surrogate(cfg: &RunConfig, dir: &Path) -> Result<serde_json::Value> {
    let st = setup(cfg)?;
    let ctx = GpuContext::new()?;
    let sur = load_for(&ctx, dir, &st.pb)?;
    let family = Family::parse(
        cfg.family.as_deref().unwrap_or("full-rank"),
        cfg.rank.unwrap_or(8),
    )?;
    let samples = cfg.samples.unwrap_or(16);
    let steps = cfg.steps.unwrap_or(3000);
    let fs = FitSettings {
        family,
        samples,
        steps,
        lr: cfg.lr.unwrap_or(0.05),
        lr_final: cfg.lr_final.unwrap_or(0.05),
        seed: st.seed,
        cg: st.cg,
        report_every: 50,
        tol_start: None,
        tol_noise: None,
        resume: None,
        first_step: 0,
        profile: false,
    };
    if steps == 0 || !(fs.lr.is_finite() && fs.lr > 0.0) {
        return Err(Error::setting(
            "steps/lr",
            format!("{steps}/{}", fs.lr),
            "need steps >= 1 and lr > 0",
        ));
    }
    let add_var = cfg.surrogate_variance.unwrap_or(false);
    let mut vi = SurrogateVi::new(
        &ctx,
        &sur,
        family,
        samples,
        &st.sensors,
        &st.y,
        st.pb.sigma_n,
        add_var,
        st.seed,
    )?;
    let bar =
        crate::output::progress::progress_bar(steps, st.quiet, "steps  {per_sec}  ELBO {msg}");
    let r = vi.fit(&ctx, &fs, |t, e| {
        bar.set_position(t as u64 + 1);
        bar.set_message(format!("{e:.4e}"));
    })?;
    bar.finish_and_clear();
    let (m, cov) = family.moments(st.pb.d, &r.theta);
    let solver = BatchedSolver::new(&ctx, &st.pb, 16, st.cg, Some(&st.sensors), false)?;
    let mut metrics = serde_json::Map::new();
    write_posterior(
        &ctx,
        &solver,
        &st,
        &format!("VI, {}, surrogate forward model", family.name()),
        &m,
        &cov,
        None,
        cfg.predictive_samples.unwrap_or(64),
        &mut metrics,
    )?;
    let ys = crate::cli::run::write_elbo_trace(
        &st.out,
        &r.trace,
        &format!(
            "ELBO with the surrogate ({}, {samples} samples/step)",
            family.name()
        ),
    )?;
    let all = json!({
        "method": "vi-surrogate",
        "forward": format!("surrogate:{}", dir.display()),
        "surrogate_variance": add_var,
        "final_elbo": ys.last().copied().unwrap_or(f64::NAN),
        "steps": steps,
        "wall_seconds": r.seconds,
        "steps_per_s": steps as f64 / r.seconds.max(1e-9),
        "device": ctx.describe(),
        "settings": st.settings_json(),
    });
    let all =
        crate::cli::run::finish_fit_metrics(&st.out, all, &fs, metrics, r.interrupted.is_some())?;
    if let Some(done) = r.interrupted {
        return Err(Error::Interrupted(format!(
            "stopped after {done} of {steps} steps; the posterior so far is in {}",
            st.out.display()
        )));
    }
    Ok(all)
}
