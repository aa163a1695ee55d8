//! Supervised training of an [`Mlp`] on a data set held on the GPU:
//! seeded shuffles, minibatches gathered on the device, one encoder and one
//! submit per step (gather, forward, loss, backward, clipping, Adam), the
//! epoch's training loss accumulated on the device and read once per epoch,
//! validation loss, early stopping that keeps the best weights.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::gpu::{args, GpuContext};
use crate::nn::mlp::{slot, Loss, Mlp, MlpParams, Workspace};

/// Inputs and targets, row-major (`n x input`, `n x target width`).
#[derive(Clone, Debug)]
pub struct Dataset {
    pub x: Vec<f64>,
    pub t: Vec<f64>,
    pub n: usize,
    pub input: usize,
    pub target: usize,
}

impl Dataset {
    /// Checks shapes and that every value is finite.
    pub fn new(x: Vec<f64>, t: Vec<f64>, input: usize, target: usize) -> Result<Self> {
        if input == 0 || target == 0 || !x.len().is_multiple_of(input) {
            return Err(Error::setting(
                "dataset",
                format!("{} inputs of width {input}", x.len()),
                "the input length must be a positive multiple of the width",
            ));
        }
        let n = x.len() / input;
        if t.len() != n * target {
            return Err(Error::setting(
                "dataset",
                format!("{} targets", t.len()),
                format!("expected {n} rows of {target}"),
            ));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::setting(
                "dataset",
                x[i],
                format!(
                    "input row {}, column {} is not finite",
                    i / input,
                    i % input
                ),
            ));
        }
        if let Some(i) = t.iter().position(|v| !v.is_finite()) {
            return Err(Error::setting(
                "dataset",
                t[i],
                format!(
                    "target row {}, column {} is not finite",
                    i / target,
                    i % target
                ),
            ));
        }
        Ok(Dataset {
            x,
            t,
            n,
            input,
            target,
        })
    }

    /// The first `n - k` rows and the last `k` rows.
    pub fn split(&self, k: usize) -> Result<(Dataset, Dataset)> {
        if k == 0 || k >= self.n {
            return Err(Error::setting(
                "validation rows",
                k,
                format!("must be in 1..{}", self.n),
            ));
        }
        let m = self.n - k;
        let a = Dataset::new(
            self.x[..m * self.input].to_vec(),
            self.t[..m * self.target].to_vec(),
            self.input,
            self.target,
        )?;
        let b = Dataset::new(
            self.x[m * self.input..].to_vec(),
            self.t[m * self.target..].to_vec(),
            self.input,
            self.target,
        )?;
        Ok((a, b))
    }
}

/// Settings of [`train`].
#[derive(Clone, Debug)]
pub struct TrainSettings {
    pub loss: Loss,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    /// Final learning rate as a fraction of `lr` (geometric decay per epoch).
    pub lr_final: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Largest gradient norm (0 = no clipping).
    pub clip_norm: f64,
    pub seed: u64,
    /// Stop after this many epochs without a better validation loss (0 = never).
    pub patience: usize,
    pub quiet: bool,
    /// Standard deviation of Gaussian noise added to each input column,
    /// drawn afresh every epoch (simulated observations with their noise
    /// not baked in); `None` = inputs as given.
    pub input_noise: Option<Vec<f64>>,
    /// Checkpoints, resume and Ctrl-C.
    pub control: TrainControl,
}

/// Checkpoints and resume of a training run (Ctrl-C is always honoured:
/// training stops after the current epoch, with a checkpoint when a path
/// is set).
#[derive(Clone, Debug, Default)]
pub struct TrainControl {
    /// Save here every `every` epochs (and on Ctrl-C).
    pub checkpoint: Option<(std::path::PathBuf, Option<usize>)>,
    /// Continue from this checkpoint.
    pub resume: Option<std::sync::Arc<crate::output::checkpoint::Checkpoint>>,
    /// Settings kept in the checkpoint.
    pub config: serde_json::Value,
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            loss: Loss::Mse,
            epochs: 100,
            batch: 64,
            lr: 1e-3,
            lr_final: 1.0,
            weight_decay: 0.0,
            clip_norm: 0.0,
            seed: 0,
            patience: 0,
            quiet: true,
            input_noise: None,
            control: TrainControl::default(),
        }
    }
}

/// What [`train`] did.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub epochs: usize,
    pub steps: usize,
    /// Mean training loss of each epoch.
    pub train_loss: Vec<f64>,
    /// Validation loss after each epoch (empty without validation data).
    pub val_loss: Vec<f64>,
    /// Epoch (0-based) whose weights were kept.
    pub best_epoch: usize,
    pub stopped_early: bool,
    pub seconds: f64,
    pub samples_per_s: f64,
    /// Training rows left out because their loss was not finite (summed
    /// over epochs; each epoch allows at most 1 %).
    pub skipped_rows: usize,
    /// Stopped by Ctrl-C after this many epochs.
    pub interrupted: Option<usize>,
    /// The epoch training resumed at (from a checkpoint).
    pub resumed_from: Option<usize>,
}

/// A data set uploaded once, with the permutation of the current epoch.
struct GpuData {
    x: wgpu::Buffer,
    t: wgpu::Buffer,
    perm: wgpu::Buffer,
}

impl GpuData {
    fn new(ctx: &GpuContext, d: &Dataset) -> Result<Self> {
        Ok(GpuData {
            x: ctx.upload("data.x", &crate::nn::mlp::to_f32(&d.x))?,
            t: ctx.upload("data.t", &crate::nn::mlp::to_f32(&d.t))?,
            perm: ctx.upload("data.perm", &(0..d.n as u32).collect::<Vec<u32>>())?,
        })
    }
}

/// Train `net` on `data`, validating on `val` after every epoch; on return
/// the network holds the weights of the best validation epoch (the last
/// epoch without validation data).
pub fn train(
    ctx: &GpuContext,
    net: &mut Mlp,
    data: &Dataset,
    val: Option<&Dataset>,
    s: &TrainSettings,
) -> Result<TrainReport> {
    train_with(ctx, net, data, val, s, None)
}

/// A term recorded into every training step between the forward pass and
/// the loss (e.g. the physics ELBO of UQ-VAE training, which writes its
/// part of the output gradient before the loss adds its own).
pub trait StepExtra {
    /// Called once, with the training workspace, before the first step.
    fn attach(&mut self, ctx: &GpuContext, ws: &Workspace) -> Result<()>;
    /// Called at the start of every epoch with its row permutation.
    fn begin_epoch(&mut self, ctx: &GpuContext, epoch: usize, perm: &[u32]) -> Result<()>;
    /// Called before step `b` of the epoch (minibatch rows `perm[b * batch..]`).
    fn set_step(&mut self, ctx: &GpuContext, b: usize, step: u32);
    /// Record the term after the forward pass.
    fn record(&self, enc: &mut wgpu::CommandEncoder);
    /// Whether the loss must add its gradient to the output gradient.
    /// Buffers that carry from one step to the next (for checkpoints).
    fn state_buffers(&self) -> crate::output::checkpoint::Buffers<'_> {
        Vec::new()
    }

    fn accumulates(&self) -> bool {
        true
    }
}

/// [`train`] with an extra term in every step.
pub fn train_with(
    ctx: &GpuContext,
    net: &mut Mlp,
    data: &Dataset,
    val: Option<&Dataset>,
    s: &TrainSettings,
    mut extra: Option<&mut dyn StepExtra>,
) -> Result<TrainReport> {
    if s.batch == 0 || s.batch > data.n {
        return Err(Error::setting(
            "batch",
            s.batch,
            format!("must be in 1..={} (the training rows)", data.n),
        ));
    }
    if s.epochs == 0 {
        return Err(Error::setting("epochs", 0, "need at least one epoch"));
    }
    if !(s.lr.is_finite() && s.lr > 0.0) {
        return Err(Error::setting("lr", s.lr, "must be positive"));
    }
    if !(s.clip_norm.is_finite() && s.clip_norm >= 0.0) {
        return Err(Error::setting("clip_norm", s.clip_norm, "must be >= 0"));
    }
    if data.input != net.arch.input {
        return Err(Error::setting(
            "dataset",
            data.input,
            format!("the network takes {} inputs", net.arch.input),
        ));
    }
    let mut ws = Workspace::new(ctx, net, s.batch, s.loss)?;
    let tw = (ws.t.size() / 4) as usize / s.batch;
    if data.target != tw {
        return Err(Error::setting(
            "dataset",
            data.target,
            format!("the loss expects targets of width {tw}"),
        ));
    }
    if let Some(sd) = &s.input_noise {
        if sd.len() != data.input || sd.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(Error::setting(
                "input noise",
                format!("{} values", sd.len()),
                format!(
                    "need {} finite, non-negative standard deviations (one per input)",
                    data.input
                ),
            ));
        }
    }
    let gd = GpuData::new(ctx, data)?;
    let steps_per_epoch = data.n / s.batch;
    // Gathers: the uniform's k (offset into the permutation) changes per step.
    let gather = |cols: usize| MlpParams {
        m: s.batch as u32,
        n: cols as u32,
        ..Default::default()
    };
    let mut gx = gather(data.input);
    let mut gt = gather(data.target);
    let u_gx = ctx.uniform("train.gather.x", &gx);
    let u_gt = ctx.uniform("train.gather.t", &gt);
    let gather_x = ctx.prepare(
        &args::GatherRows {
            params: &u_gx,
            xa: &gd.x,
            xc: &ws.x,
            idx: &gd.perm,
        },
        [s.batch * data.input, 1],
    )?;
    let gather_t = ctx.prepare(
        &args::GatherRows {
            params: &u_gt,
            xa: &gd.t,
            xc: &ws.t,
            idx: &gd.perm,
        },
        [s.batch * data.target, 1],
    )?;
    ws.set_reduce(ctx, slot::TRAIN, 1.0 / steps_per_epoch as f64, true);

    let val_ws = match val {
        Some(v) => {
            if v.input != data.input || v.target != data.target {
                return Err(Error::setting(
                    "validation set",
                    format!("{} x {}", v.input, v.target),
                    "must have the training set's widths",
                ));
            }
            let w = Workspace::new(ctx, net, v.n, s.loss)?;
            w.set_input(ctx, &v.x)?;
            w.set_targets(ctx, &v.t)?;
            Some(w)
        }
        None => None,
    };
    let best = ctx.storage("train.best", (net.nparam() * 4) as u64)?;
    net.adam.settings.weight_decay = s.weight_decay as f32;
    net.adam.settings.clip_norm = s.clip_norm as f32;

    if let Some(x) = extra.as_deref_mut() {
        x.attach(ctx, &ws)?;
    }
    ws.set_loss_accumulate(ctx, extra.as_deref().is_some_and(|x| x.accumulates()));
    let bar = crate::output::progress::progress_bar(s.epochs, s.quiet, "epochs  {msg}");
    let t0 = Instant::now();
    let mut report = TrainReport {
        epochs: 0,
        steps: 0,
        train_loss: Vec::new(),
        val_loss: Vec::new(),
        best_epoch: 0,
        stopped_early: false,
        seconds: 0.0,
        samples_per_s: 0.0,
        skipped_rows: 0,
        interrupted: None,
        resumed_from: None,
    };
    let mut best_val = f64::INFINITY;
    let mut since_best = 0;
    let mut step = 0u32;
    let mut first_epoch = 0;
    if let Some(ck) = &s.control.resume {
        let b = train_state(net, extra.as_deref(), &best);
        ck.restore(ctx, &b, &ck.path)?;
        let h = &ck.host;
        let bad = |what: &str| Error::Format {
            path: ck.path.clone(),
            message: format!("the checkpoint's {what} does not read back"),
        };
        first_epoch = h["next_epoch"].as_u64().ok_or_else(|| bad("epoch"))? as usize;
        step = h["step"].as_u64().ok_or_else(|| bad("step"))? as u32;
        best_val = h["best_val"].as_f64().unwrap_or(f64::INFINITY);
        since_best = h["since_best"].as_u64().unwrap_or(0) as usize;
        report.train_loss =
            serde_json::from_value(h["train_loss"].clone()).map_err(|_| bad("losses"))?;
        report.val_loss =
            serde_json::from_value(h["val_loss"].clone()).map_err(|_| bad("losses"))?;
        report.best_epoch = h["best_epoch"].as_u64().unwrap_or(0) as usize;
        report.skipped_rows = h["skipped_rows"].as_u64().unwrap_or(0) as usize;
        report.steps = h["steps"].as_u64().unwrap_or(0) as usize;
        report.epochs = first_epoch;
        report.resumed_from = Some(first_epoch);
    }
    for epoch in first_epoch..s.epochs {
        let perm =
            crate::rng::permutation(s.seed, crate::rng::streams::SHUFFLE, epoch as u32, data.n);
        ctx.write(&gd.perm, &perm);
        if let Some(sd) = &s.input_noise {
            ctx.write(&gd.x, &noisy_inputs(data, sd, s.seed, epoch));
        }
        if let Some(x) = extra.as_deref_mut() {
            x.begin_epoch(ctx, epoch, &perm)?;
        }
        ctx.write(&ws.losses, &[0f32; 9]);
        let decay = s.lr_final.powf(epoch as f64 / (s.epochs.max(2) - 1) as f64);
        for b in 0..steps_per_epoch {
            step += 1;
            gx.k = (b * s.batch) as u32;
            gt.k = gx.k;
            ctx.write(&u_gx, &[gx]);
            ctx.write(&u_gt, &[gt]);
            net.prepare_adam(ctx, step, s.lr * decay);
            let mut enc = ctx.encoder("train.step");
            if let Some(x) = extra.as_deref_mut() {
                x.set_step(ctx, b, step);
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    gather_x.record(&mut pass);
                    gather_t.record(&mut pass);
                    ws.encode_forward(&mut pass);
                }
                x.record(&mut enc);
            }
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                if extra.is_none() {
                    gather_x.record(&mut pass);
                    gather_t.record(&mut pass);
                    ws.encode_forward(&mut pass);
                }
                ws.encode_loss(&mut pass);
                ws.encode_backward(&mut pass, false);
                net.encode_adam(&mut pass);
            }
            ctx.queue.submit([enc.finish()]);
        }
        report.steps += steps_per_epoch;
        let tl = ws.read_loss(ctx, slot::TRAIN)?;
        let skipped = ws.read_loss(ctx, slot::TRAIN + slot::SKIPPED)? as usize;
        report.skipped_rows += skipped;
        // A row whose loss is not finite in f32 gets a zero gradient and is
        // left out; a few are transient (an extreme head output on one
        // input), many mean the training diverged.
        if skipped * 100 > steps_per_epoch * s.batch {
            return Err(Error::Diverged(format!(
                "{skipped} of {} training rows had a non-finite loss in epoch {epoch}: lower the learning rate (now {}) or set a gradient clip norm",
                steps_per_epoch * s.batch,
                s.lr
            )));
        }
        if !tl.is_finite() {
            return Err(Error::Diverged(format!(
                "training loss is {tl} in epoch {epoch}: lower the learning rate (now {}) or set a gradient clip norm",
                s.lr
            )));
        }
        report.train_loss.push(tl);
        report.epochs = epoch + 1;
        let mut msg = format!("loss {tl:.4e}");
        if let Some(vw) = &val_ws {
            let mut enc = ctx.encoder("train.validate");
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                vw.encode_forward(&mut pass);
                vw.encode_loss(&mut pass);
            }
            ctx.submit_wait(enc)?;
            let vl = vw.read_loss(ctx, slot::EVAL)?;
            report.val_loss.push(vl);
            msg.push_str(&format!("  val {vl:.4e}"));
            if vl < best_val {
                best_val = vl;
                report.best_epoch = epoch;
                since_best = 0;
                let mut enc = ctx.encoder("train.keep_best");
                enc.copy_buffer_to_buffer(&net.params, 0, &best, 0, (net.nparam() * 4) as u64);
                ctx.queue.submit([enc.finish()]);
            } else {
                since_best += 1;
                if s.patience > 0 && since_best >= s.patience {
                    report.stopped_early = true;
                    bar.set_position(epoch as u64 + 1);
                    break;
                }
            }
        } else {
            report.best_epoch = epoch;
        }
        bar.set_position(epoch as u64 + 1);
        bar.set_message(msg);
        // Checkpoint every K epochs, and on Ctrl-C (then stop).
        let stop = crate::interrupt::requested() && epoch + 1 < s.epochs;
        let due = s
            .control
            .checkpoint
            .as_ref()
            .and_then(|c| c.1)
            .is_some_and(|k| k > 0 && (epoch + 1).is_multiple_of(k) && epoch + 1 < s.epochs);
        if let (Some((path, _)), true) = (&s.control.checkpoint, stop || due) {
            let b = train_state(net, extra.as_deref(), &best);
            let host = serde_json::json!({
                "next_epoch": epoch + 1, "step": step, "best_val": best_val,
                "since_best": since_best, "train_loss": report.train_loss,
                "val_loss": report.val_loss, "best_epoch": report.best_epoch,
                "skipped_rows": report.skipped_rows, "steps": report.steps,
                "config": s.control.config, "device": ctx.describe(),
            });
            crate::output::checkpoint::Checkpoint::capture(ctx, "train", &b, host)?.save(path)?;
        }
        if stop {
            report.interrupted = Some(epoch + 1);
            break;
        }
    }
    bar.finish_and_clear();
    if val_ws.is_some() {
        let mut enc = ctx.encoder("train.restore_best");
        enc.copy_buffer_to_buffer(&best, 0, &net.params, 0, (net.nparam() * 4) as u64);
        ctx.submit_wait(enc)?;
    } else {
        ctx.wait()?;
    }
    report.seconds = t0.elapsed().as_secs_f64();
    report.samples_per_s = (report.steps * s.batch) as f64 / report.seconds;
    Ok(report)
}

/// The buffers of a training run that carry from one step to the next.
fn train_state<'a>(
    net: &'a Mlp,
    extra: Option<&'a dyn StepExtra>,
    best: &'a wgpu::Buffer,
) -> crate::output::checkpoint::Buffers<'a> {
    let mut b: crate::output::checkpoint::Buffers<'a> = vec![("net.params", &net.params)];
    b.extend(net.adam.state_buffers());
    if let Some(x) = extra {
        b.extend(x.state_buffers());
    }
    b.push(("train.best", best));
    b
}

/// The inputs of `data` plus fresh noise of standard deviation `sd[j]` in
/// column j: the draws of `epoch` (seeded, so a run reproduces).
pub fn noisy_inputs(data: &Dataset, sd: &[f64], seed: u64, epoch: usize) -> Vec<f32> {
    let eps = crate::rng::normals(
        seed,
        crate::rng::streams::NOISE,
        epoch as u32,
        data.n * data.input,
    );
    data.x
        .iter()
        .zip(&eps)
        .enumerate()
        .map(|(k, (x, e))| (x + sd[k % data.input] * e) as f32)
        .collect()
}

/// Mean loss of `net` on `data` (one batch of all rows).
pub fn evaluate(ctx: &GpuContext, net: &Mlp, data: &Dataset, loss: Loss) -> Result<f64> {
    let ws = Workspace::new(ctx, net, data.n, loss)?;
    ws.set_input(ctx, &data.x)?;
    ws.set_targets(ctx, &data.t)?;
    let mut enc = ctx.encoder("mlp.evaluate");
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        ws.encode_forward(&mut pass);
        ws.encode_loss(&mut pass);
    }
    ctx.submit_wait(enc)?;
    ws.read_loss(ctx, slot::EVAL)
}

/// Dispatches one training step records (gathers, forward, loss, backward, optimiser).
pub fn dispatches_per_step(net: &Mlp) -> usize {
    let l = net.arch.layers.len();
    let acts = net
        .arch
        .layers
        .iter()
        .filter(|x| x.act != crate::nn::mlp::Activation::Identity)
        .count();
    let adam = if net.adam.settings.clip_norm > 0.0 {
        2
    } else {
        1
    };
    2 + l + 2 + acts + 3 * l - 1 + adam
}
