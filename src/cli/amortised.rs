//! `pdevi simulate --count`, `pdevi train encoder` and `pdevi amortised`:
//! training sets, encoder training and amortised (optionally refined)
//! posteriors for one observation file or a folder of them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use crate::cli::run::{write_posterior, Setup};
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::infer::amortised::{train_encoder, AmortisedPosterior, Encoder, EncoderSettings};
use crate::infer::vi::{fit, FitSettings, ViEngine};
use crate::nn::dataset::SimSet;
use crate::output::files::{ensure_dir, write_json};
use crate::output::io;
use crate::output::plot::{self, Series};
use crate::physics::problem::{Problem, ProblemArgs};
use crate::physics::solver::{BatchedSolver, CgParams};

/// `pdevi simulate --count N --out FILE.safetensors`.
pub fn simulate_set(
    args: &ProblemArgs,
    count: usize,
    seed: u64,
    field: bool,
    out: &Path,
    quiet: bool,
    dry_run: bool,
) -> Result<serde_json::Value> {
    if out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return Err(Error::setting(
            "out",
            out.display(),
            "a training set is written as one .safetensors file (e.g. --out out/set.safetensors)",
        ));
    }
    let pb = args.build()?;
    // The set is held in f64 while it is made and in f32 when written.
    let per = (pb.d + pb.sensors.len() + if field { pb.nunk() } else { 0 }) as u128;
    crate::memory::check_host(
        "count",
        count,
        &format!("a training set of {count} draws ({per} values each, f64 while made and f32 when written)"),
        count as u128 * per * 12,
        "use a smaller --count (sets are written whole; make several and train on one at a time)",
    )?;
    let ctx = GpuContext::new()?;
    let cg = CgParams::auto(false);
    if dry_run {
        // One batch's solver: the device memory the simulation holds.
        let batch = count.clamp(1, 64);
        let _solver = BatchedSolver::new(&ctx, &pb, batch, cg, None, false)?;
        let host = count as u128 * per * 12;
        return Ok(json!({
            "dry_run": true, "command": "simulate", "problem": pb.kind.name(), "n": pb.n,
            "d": pb.d, "count": count, "values_per_draw": per as u64, "field": field,
            "batch": batch, "batches": count.div_ceil(batch),
            "device_bytes": ctx.allocated_bytes(),
            "device_size": crate::memory::fmt_bytes(ctx.allocated_bytes() as u128),
            "host_bytes_estimate": host as u64,
            "host_size_estimate": crate::memory::fmt_bytes(host),
            "file_bytes_estimate": (count as u128 * per * 4) as u64,
            "device": ctx.describe(),
        }));
    }
    let bar = crate::output::progress::progress_bar(count, quiet, "samples  {msg}");
    let set = SimSet::simulate(&ctx, &pb, count, seed, field, cg, 64, |done, rate| {
        bar.set_position(done as u64);
        bar.set_message(format!("{rate:.1} solves/s"));
    })?;
    bar.finish_and_clear();
    set.save(out)?;
    let made = set.settings.count;
    if made < count {
        return Err(Error::Interrupted(format!(
            "stopped after {made} of {count} draws; those are in {} (the same first {made} draws a full run makes)",
            out.display()
        )));
    }
    Ok(json!({
        "problem": pb.kind.name(), "n": pb.n, "d": pb.d, "count": count, "seed": seed,
        "sensors": set.m(), "field": field, "seconds": set.seconds,
        "solves_per_s": count as f64 / set.seconds.max(1e-9),
        "out": out.display().to_string(), "device": ctx.describe(),
    }))
}

/// Checkpoints of a training into `out` (`checkpoint` false: Ctrl-C
/// still stops it, without a checkpoint); with `resume`, the checkpoint of
/// `out`, whose settings must equal `config` (a difference is named).
pub fn train_control(
    out: &Path,
    checkpoint: bool,
    every: Option<usize>,
    resume: bool,
    config: serde_json::Value,
) -> Result<crate::nn::train::TrainControl> {
    use crate::output::checkpoint::{Checkpoint, FILE};
    let path = out.join(FILE);
    let resume = if resume {
        if !path.is_file() {
            return Err(Error::setting(
                "resume",
                out.display(),
                format!("has no {FILE}: resume a training run with --checkpoint-every K (or stopped with Ctrl-C)"),
            ));
        }
        let ck = Checkpoint::load(&path, "train")?;
        let saved = &ck.host["config"];
        if let (Some(a), Some(b)) = (saved.as_object(), config.as_object()) {
            for (k, v) in b {
                if a.get(k) != Some(v) {
                    return Err(Error::setting(
                        k.as_str(),
                        v,
                        format!(
                            "differs from the checkpoint's {}: resume with the flags of the interrupted run",
                            a.get(k).cloned().unwrap_or_default()
                        ),
                    ));
                }
            }
        }
        Some(std::sync::Arc::new(ck))
    } else {
        None
    };
    Ok(crate::nn::train::TrainControl {
        checkpoint: checkpoint.then_some((path, every.filter(|&k| k > 0))),
        resume,
        config,
    })
}

/// `pdevi train encoder --data FILE --out DIR`: trains, saves, and draws the loss curves.
pub fn train_encoder_cmd(
    data: &Path,
    out: &Path,
    s: &EncoderSettings,
) -> Result<serde_json::Value> {
    let set = SimSet::load(data)?;
    let _lock = crate::output::files::OutLock::acquire(out)?;
    let ctx = GpuContext::new()?;
    let (enc, tr) = train_encoder(&ctx, &set, s)?;
    enc.save(&ctx, out)?;
    let mut series = Vec::new();
    let xs: Vec<Vec<f64>> = tr
        .reports
        .iter()
        .map(|r| (1..=r.train_loss.len()).map(|e| e as f64).collect())
        .collect();
    let colours = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40]];
    for (k, r) in tr.reports.iter().enumerate() {
        let c = colours[k % colours.len()];
        series.push(Series {
            label: format!("train {k}"),
            x: &xs[k],
            y: &r.train_loss,
            band: None,
            rgb: c,
            dashed: false,
        });
        series.push(Series {
            label: format!("validation {k}"),
            x: &xs[k][..r.val_loss.len()],
            y: &r.val_loss,
            band: None,
            rgb: c,
            dashed: true,
        });
    }
    let all: Vec<f64> = tr
        .reports
        .iter()
        .flat_map(|r| r.train_loss.iter().chain(&r.val_loss).copied())
        .collect();
    plot::write_line_plot(
        &out.join("loss.png"),
        &format!(
            "encoder NPE loss -log q(xi | y) ({}, {} pairs)",
            s.family.name(),
            set.count()
        ),
        "epoch",
        "loss per pair",
        &series,
        false,
        Some(plot::robust_range(&all)),
    )?;
    let summary = json!({
        "data": data.display().to_string(),
        "out": out.display().to_string(),
        "family": s.family.name(), "rank": s.family.rank(),
        "hidden": s.hidden, "ensemble": s.ensemble, "noise": s.noise,
        "seconds": tr.seconds,
        "samples_per_s": tr.reports.iter().map(|r| r.samples_per_s).collect::<Vec<f64>>(),
        "epochs_run": tr.reports.iter().map(|r| r.epochs).collect::<Vec<usize>>(),
        "best_epoch": tr.reports.iter().map(|r| r.best_epoch).collect::<Vec<usize>>(),
        "best_val_loss": tr.reports.iter().map(|r| r.val_loss.get(r.best_epoch).copied().unwrap_or(f64::NAN)).collect::<Vec<f64>>(),
        "train_loss": tr.reports.iter().map(|r| r.train_loss.clone()).collect::<Vec<Vec<f64>>>(),
        "val_loss": tr.reports.iter().map(|r| r.val_loss.clone()).collect::<Vec<Vec<f64>>>(),
        "interrupted": tr.reports.iter().any(|r| r.interrupted.is_some()),
        "resumed_from_epoch": tr.reports.first().and_then(|r| r.resumed_from),
        "device": ctx.describe(),
    });
    write_json(&out.join("training.json"), &summary)?;
    if let Some(e) = tr.reports.iter().find_map(|r| r.interrupted) {
        return Err(Error::Interrupted(format!(
            "stopped after epoch {e} of {}; the encoder as trained so far (best validation epoch) is in {} (training.json says \"interrupted\": true); continue with the same flags and --resume {}",
            s.epochs,
            out.display(),
            out.display()
        )));
    }
    Ok(summary)
}

/// Settings of `pdevi amortised`.
#[derive(Clone, Debug)]
pub struct AmortisedSettings {
    pub encoder: PathBuf,
    pub obs: Option<PathBuf>,
    pub obs_dir: Option<PathBuf>,
    pub out: PathBuf,
    /// VI steps from the encoder's q per data set (0 = none).
    pub refine: usize,
    pub samples: usize,
    pub lr: f64,
    pub lr_final: f64,
    pub seed: u64,
    /// Truth (xi .npy) for error maps, single-file mode.
    pub truth: Option<PathBuf>,
    pub predictive_samples: usize,
    pub quiet: bool,
}

/// Readings of one CSV in the encoder's sensor order; a file whose sensors
/// differ from the encoder's is refused with the first difference.
pub fn encoder_inputs(pb: &Problem, enc: &Encoder, path: &Path) -> Result<Vec<f64>> {
    let (sensors, y) = crate::physics::sensors::read_obs(pb, path)?;
    let mut out = Vec::with_capacity(enc.meta.sensors.len());
    for &s in &enc.meta.sensors {
        match sensors.iter().position(|&k| k == s) {
            Some(i) => out.push(y[i]),
            None => {
                let (i, j) = pb.unknown_node(s);
                return Err(Error::Format {
                    path: path.into(),
                    message: format!(
                        "has no reading at node ({i}, {j}), one of the {} sensors the encoder was trained on",
                        enc.meta.sensors.len()
                    ),
                });
            }
        }
    }
    if sensors.len() != out.len() {
        return Err(Error::Format {
            path: path.into(),
            message: format!(
                "has {} readings but the encoder was trained on {} sensors; an amortised encoder takes exactly its training layout",
                sensors.len(),
                out.len()
            ),
        });
    }
    Ok(out)
}

/// The CSV files of a folder, sorted by name.
fn csv_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("csv"))
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(Error::setting(
            "obs-dir",
            dir.display(),
            "holds no *.csv observation files",
        ));
    }
    Ok(v)
}

/// VI from the encoder's posterior: `steps` Adam steps of the encoder's family.
#[allow(clippy::too_many_arguments, reason = "one refinement's settings")]
pub fn refine(
    ctx: &GpuContext,
    pb: &Problem,
    enc: &Encoder,
    post: &AmortisedPosterior,
    y: &[f64],
    steps: usize,
    s: &AmortisedSettings,
    cg: CgParams,
) -> Result<(Vec<f64>, Vec<f64>, ViEngine)> {
    let fam = enc.family;
    let mut engine = ViEngine::new(ctx, pb, fam, s.samples, &enc.meta.sensors, y, s.seed, cg)?;
    engine.set_theta(ctx, &fam.theta_from_gaussian(pb.d, &post.mean, &post.cov)?)?;
    let fs = FitSettings {
        family: fam,
        samples: s.samples,
        steps,
        lr: s.lr,
        lr_final: s.lr_final,
        seed: s.seed,
        cg,
        report_every: 10,
        tol_start: None,
        tol_noise: None,
        resume: None,
        first_step: 0,
        profile: false,
    };
    let mut last_good = Vec::new();
    let r = fit(ctx, &mut engine, &fs, &mut last_good, |_, _| {})?;
    let (m, cov) = fam.moments(pb.d, &r.theta);
    Ok((m, cov, engine))
}

/// `pdevi amortised`: posteriors for one CSV (`--obs`, all the files `pdevi
/// run` writes) or every CSV of a folder (`--obs-dir`, one batched forward
/// pass; per file a sub-folder with the posterior in xi and the field).
pub fn amortised(s: &AmortisedSettings) -> Result<serde_json::Value> {
    let files = match (&s.obs, &s.obs_dir) {
        (Some(f), None) => vec![f.clone()],
        (None, Some(d)) => csv_files(d)?,
        _ => {
            return Err(Error::setting(
                "obs",
                "",
                "give exactly one of --obs FILE.csv and --obs-dir DIR",
            ))
        }
    };
    let ctx = GpuContext::new()?;
    let enc = Encoder::load(&ctx, &s.encoder)?;
    let pb = enc.problem()?;
    let ys: Vec<Vec<f64>> = files
        .iter()
        .map(|f| encoder_inputs(&pb, &enc, f))
        .collect::<Result<_>>()?;
    let t0 = Instant::now();
    let posts = enc.posteriors(&ctx, &ys)?;
    let encode_seconds = t0.elapsed().as_secs_f64();
    let _lock = crate::output::files::OutLock::acquire(&s.out)?;
    let cg = CgParams::auto(true);
    let single = s.obs.is_some();
    let mut refine_seconds = 0.0;
    // A folder: every file refined in one batched solve per step (chunks of
    // files so that files x samples stays within 256 systems).
    let mut batched: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
    if !single && s.refine > 0 {
        let t = Instant::now();
        let fs = FitSettings {
            family: enc.family,
            samples: s.samples,
            steps: s.refine,
            lr: s.lr,
            lr_final: s.lr_final,
            seed: s.seed,
            cg,
            report_every: 10,
            tol_start: None,
            tol_noise: None,
            resume: None,
            first_step: 0,
            profile: false,
        };
        let per = (256 / s.samples.max(1)).max(1);
        for (pc, yc) in posts.chunks(per).zip(ys.chunks(per)) {
            let starts: Vec<(Vec<f64>, Vec<f64>)> =
                pc.iter().map(|p| (p.mean.clone(), p.cov.clone())).collect();
            batched.extend(crate::infer::amortised::refine_batched(
                &ctx,
                &pb,
                enc.family,
                &starts,
                yc,
                &enc.meta.sensors,
                &fs,
            )?);
        }
        refine_seconds = t.elapsed().as_secs_f64();
    }
    let mut written = Vec::new();
    let d = pb.d;
    for (k, (file, post)) in files.iter().zip(&posts).enumerate() {
        let dir = if single {
            s.out.clone()
        } else {
            let stem = file
                .file_stem()
                .and_then(|x| x.to_str())
                .unwrap_or("obs")
                .to_string();
            s.out.join(stem)
        };
        ensure_dir(&dir)?;
        let t = Instant::now();
        let (m, cov, engine) = if !batched.is_empty() {
            (batched[k].0.clone(), batched[k].1.clone(), None)
        } else if s.refine > 0 {
            let (m, cov, e) = refine(&ctx, &pb, &enc, post, &ys[k], s.refine, s, cg)?;
            (m, cov, Some(e))
        } else {
            (post.mean.clone(), post.cov.clone(), None)
        };
        refine_seconds += t.elapsed().as_secs_f64();
        let mut metrics = serde_json::Map::new();
        if single {
            let truth = match &s.truth {
                Some(p) => {
                    let v = io::read_vector(p)?;
                    crate::physics::sensors::check_xi(&v, d, p)?;
                    Some((Some(v.clone()), pb.field(&v)))
                }
                None => None,
            };
            let st = Setup {
                kind: pb.kind,
                args: ProblemArgs {
                    kind: pb.kind,
                    n: Some(pb.n),
                    d: Some(pb.d),
                },
                pb: pb.clone(),
                out: dir.clone(),
                obs_path: file.clone(),
                truth_path: s.truth.clone(),
                sensors: enc.meta.sensors.clone(),
                y: ys[k].clone(),
                truth,
                seed: s.seed,
                quiet: s.quiet,
                cg,
                lock: None,
            };
            let owned;
            let solver = match &engine {
                Some(e) => &e.solver,
                None => {
                    owned = BatchedSolver::new(&ctx, &pb, 16, cg, Some(&enc.meta.sensors), false)?;
                    &owned
                }
            };
            write_posterior(
                &ctx,
                solver,
                &st,
                &if s.refine > 0 {
                    format!("amortised ({}) + {} VI steps", enc.family.name(), s.refine)
                } else {
                    format!("amortised encoder ({})", enc.family.name())
                },
                &m,
                &cov,
                None,
                s.predictive_samples,
                &mut metrics,
            )?;
        } else {
            io::write_npy(&dir.join("posterior_mean_xi.npy"), &[d], &m)?;
            io::write_npy(&dir.join("posterior_cov_xi.npy"), &[d, d], &cov)?;
            let (fm, fs) = crate::infer::predictive::field_moments(&pb, &m, &cov);
            io::write_npy(&dir.join("posterior_mean_field.npy"), &[fm.len()], &fm)?;
            io::write_npy(&dir.join("posterior_std_field.npy"), &[fs.len()], &fs)?;
        }
        let mut all = json!({
            "method": if s.refine > 0 { "amortised+refine" } else { "amortised" },
            "encoder": s.encoder.display().to_string(),
            "obs": file.display().to_string(),
            "members": enc.nets.len(),
            "family": enc.family.name(),
            "refine_steps": s.refine,
            "encode_seconds_batch": encode_seconds,
            "batch": files.len(),
            "device": ctx.describe(),
            "settings": {
                "problem": pb.kind.name(), "n": pb.n, "d": d, "noise": pb.sigma_n,
                "seed": s.seed, "samples": s.samples, "lr": s.lr, "lr_final": s.lr_final,
            },
        });
        if let Some(o) = all.as_object_mut() {
            o.extend(metrics);
        }
        write_json(&dir.join("metrics.json"), &all)?;
        written.push(dir.display().to_string());
    }
    Ok(json!({
        "files": files.len(),
        "out": s.out.display().to_string(),
        "encode_seconds": encode_seconds,
        "refine_seconds": refine_seconds,
        "written": if written.len() <= 8 { json!(written) } else { json!(written.len()) },
        "device": ctx.describe(),
    }))
}

/// `--dry-run` of a training: the network's size, what the set and the
/// training buffers take on the device and the host, against the limits;
/// nothing is allocated on the device.
pub fn train_plan(
    command: &str,
    set: &SimSet,
    arch: &crate::nn::mlp::Arch,
    batch: usize,
    epochs: usize,
) -> Result<serde_json::Value> {
    use crate::memory::{fmt_bytes, host_total};
    arch.validate()?;
    let np = arch.nparam() as u128;
    let widest = arch
        .layers
        .iter()
        .map(|l| l.out)
        .max()
        .unwrap_or(0)
        .max(arch.input) as u128;
    let rows = set.count() as u128;
    let cols = (arch.input + arch.output()) as u128;
    // Parameters, gradient, Adam's moments and the best copy; the set (x, t)
    // and its noisy copy; activations and their gradients of a batch.
    let device = np * 4 * 5
        + rows * cols * 4 * 2
        + batch as u128 * widest * 4 * 4 * (arch.layers.len() as u128 + 1);
    let host = rows * cols * 8 * 2 + np * 32;
    Ok(json!({
        "dry_run": true, "command": command,
        "rows": set.count(), "inputs": arch.input, "outputs": arch.output(),
        "hidden": arch.layers.iter().map(|l| l.out).collect::<Vec<_>>(),
        "parameters": np as u64, "batch": batch, "epochs": epochs,
        "steps_per_epoch": set.count() / batch.max(1),
        "device_bytes_estimate": device as u64, "device_size_estimate": fmt_bytes(device),
        "host_bytes_estimate": host as u64, "host_size_estimate": fmt_bytes(host),
        "host_total": fmt_bytes(host_total() as u128),
    }))
}
