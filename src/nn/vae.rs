//! A variational autoencoder of binary fields, the deep generative prior of
//! methods.md A4: an MLP encoder q(w | z) = N(mu(z), diag s(z)^2) (a
//! mean-field Gaussian head), w ~ q by the reparameterisation trick, and an
//! MLP decoder of logits l(w) with a Bernoulli likelihood on each cell's
//! phase (z = +1 with probability sigmoid(l)). The ELBO per field is
//! `sum_c log p(z_c | w) - beta KL(q(w | z) || N(0, I))`.
//!
//! Why Bernoulli: the fields are binary, so the Bernoulli is the exact
//! observation model of a cell, with no noise scale to choose; a Gaussian
//! on tanh outputs would make its variance an arbitrary weight between the
//! reconstruction and the KL, and its gradient vanishes where the tanh
//! saturates. The field a decoder hands the physics is the phase's mean
//! `f(w) = E[z | w] = tanh(l / 2)`, in (-1, 1) as the issue asks.
//!
//! One training step is one command encoder: gather the minibatch, the
//! encoder, the head's draws, the decoder, the Bernoulli loss, the
//! decoder's backward pass (with the gradient to w), the head's KL and
//! reparameterisation gradient, the encoder's backward pass and two Adams.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::{args, GpuContext};
use crate::infer::amortised::encoder_arch;
use crate::infer::vi::Family;
use crate::nn::mlp::{slot, Activation, Arch, GaussianHead, Loss, Mlp, MlpParams, Workspace};

/// Settings of [`train_vae`].
#[derive(Clone, Debug)]
pub struct VaeSettings {
    /// Latent dimension K.
    pub latent: usize,
    /// Hidden widths of the encoder (the decoder mirrors them).
    pub hidden: Vec<usize>,
    pub act: Activation,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    /// Final learning rate as a fraction of `lr` (geometric decay per epoch).
    pub lr_final: f64,
    /// Weight of the KL term (1 = the ELBO).
    pub beta: f64,
    /// Held-out fields (the last rows of the data), scored every epoch.
    pub validation: usize,
    pub seed: u64,
    pub quiet: bool,
}

impl Default for VaeSettings {
    fn default() -> Self {
        VaeSettings {
            latent: 16,
            hidden: vec![256, 128],
            act: Activation::Silu,
            epochs: 40,
            batch: 64,
            lr: 3e-3,
            lr_final: 0.1,
            beta: 1.0,
            validation: 512,
            seed: 0,
            quiet: true,
        }
    }
}

/// The description of a trained VAE (`vae.json` beside the weights).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VaeMeta {
    pub format: String,
    /// Cells per side of the fields (n x n, flat index j n + i).
    pub n: usize,
    pub latent: usize,
    /// The field class the training set came from (e.g. inclusions2d).
    pub class: String,
    pub beta: f64,
    pub epochs: usize,
    pub training_fields: usize,
    /// Scores of the held-out fields after training.
    pub validation: Option<VaeScore>,
}

/// Scores of a VAE on a set of fields.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct VaeScore {
    pub fields: usize,
    /// Mean over fields of -sum_c log p(z_c | w), w one draw of q(w | z).
    pub recon_nll: f64,
    /// Mean KL(q(w | z) || N(0, I)).
    pub kl: f64,
    /// Mean ELBO (one draw).
    pub elbo: f64,
    /// Share of cells whose phase sign f(mu(z)) gets wrong.
    pub phase_error: f64,
    /// Mean IoU of {f(mu(z)) > 0} against {z > 0}.
    pub iou: f64,
    /// Mean relative L2 error of f(mu(z)) against z.
    pub rel_l2: f64,
}

/// What [`train_vae`] did.
#[derive(Clone, Debug, Serialize)]
pub struct VaeReport {
    pub epochs: usize,
    pub steps: usize,
    /// Mean reconstruction NLL of the minibatches of each epoch.
    pub train_recon: Vec<f64>,
    /// Held-out ELBO after each epoch (empty without held-out fields).
    pub val_elbo: Vec<f64>,
    pub seconds: f64,
    pub fields_per_s: f64,
}

/// A trained VAE on the device: encoder (Gaussian head over w) and decoder
/// (logits of the cells).
pub struct Vae {
    pub enc: Mlp,
    pub dec: Mlp,
    pub meta: VaeMeta,
}

/// The decoder `K -> hidden (reversed) -> n^2` logits.
pub fn decoder_arch(latent: usize, cells: usize, hidden: &[usize], act: Activation) -> Arch {
    let rev: Vec<usize> = hidden.iter().rev().copied().collect();
    Arch::mlp(latent, &rev, act, cells)
}

/// The field of decoder logits: the phase's mean tanh(l / 2) (the
/// `prior_field` kernel's map, clamped alike).
pub fn field_of_logits(l: &[f64]) -> Vec<f64> {
    l.iter()
        .map(|v| (0.5 * v.clamp(-30.0, 30.0)).tanh())
        .collect()
}

/// Bernoulli NLL of a field z in [-1, 1] under logits l (summed over cells).
pub fn bernoulli_nll(l: &[f64], z: &[f64]) -> f64 {
    l.iter()
        .zip(z)
        .map(|(&l, &t)| {
            let p = 0.5 * (t + 1.0);
            l.max(0.0) - p * l + (-l.abs()).exp().ln_1p()
        })
        .sum()
}

/// Cells in transition (|z| <= 0.8) per cell inside (z > 0), over a set of
/// fields: 0 for a binary class, large for blurred fields (their rims are
/// wide against their areas). A statistic of sharpness that the background
/// does not dominate (the share of |z| > 0.8 does: most cells are outside).
pub fn blur_ratio(z: &[f64]) -> f64 {
    let mid = z.iter().filter(|v| v.abs() <= 0.8).count() as f64;
    let inside = z.iter().filter(|&&v| v > 0.0).count() as f64;
    mid / inside.max(1.0)
}

fn check_fields(fields: &[f64], n: usize, what: &str) -> Result<usize> {
    let nc = n * n;
    if nc == 0 || fields.is_empty() || !fields.len().is_multiple_of(nc) {
        return Err(Error::setting(
            what,
            fields.len(),
            format!("expected rows of n^2 = {nc} cells"),
        ));
    }
    if let Some(i) = fields
        .iter()
        .position(|v| !v.is_finite() || v.abs() > 1.0 + 1e-9)
    {
        return Err(Error::setting(
            what,
            format!("row {}, cell {}: {}", i / nc, i % nc, fields[i]),
            "fields of a phase must lie in [-1, 1] (inclusions2d's are -1 or +1)",
        ));
    }
    Ok(fields.len() / nc)
}

/// Train a VAE on `fields` (rows of n x n cells in [-1, 1]); the last
/// `s.validation` rows are held out and scored after every epoch.
pub fn train_vae(
    ctx: &GpuContext,
    fields: &[f64],
    n: usize,
    class: &str,
    s: &VaeSettings,
) -> Result<(Vae, VaeReport)> {
    let rows = check_fields(fields, n, "training fields")?;
    let nc = n * n;
    if s.latent == 0 || s.latent > 256 {
        return Err(Error::setting(
            "latent",
            s.latent,
            "need 1 <= K <= 256 latent dimensions",
        ));
    }
    if !(s.beta.is_finite() && s.beta > 0.0) {
        return Err(Error::setting("beta", s.beta, "must be positive"));
    }
    if !(s.lr.is_finite() && s.lr > 0.0) {
        return Err(Error::setting("lr", s.lr, "must be positive"));
    }
    if s.epochs == 0 {
        return Err(Error::setting("epochs", 0, "need at least one epoch"));
    }
    let nval = s.validation.min(rows / 5);
    let ntrain = rows - nval;
    if s.batch == 0 || s.batch > ntrain {
        return Err(Error::setting(
            "batch",
            s.batch,
            format!("must be in 1..={ntrain} (the training fields)"),
        ));
    }
    let (train, val) = fields.split_at(ntrain * nc);
    let family = Family::MeanField;
    let enc_arch = encoder_arch(nc, s.latent, family, &s.hidden, s.act);
    let dec_arch = decoder_arch(s.latent, nc, &s.hidden, s.act);
    let mut enc = Mlp::new(
        ctx,
        enc_arch.clone(),
        Some(&crate::infer::amortised::small_head_init(&enc_arch, s.seed)),
        s.seed,
    )?;
    let mut dec = Mlp::new(ctx, dec_arch, None, s.seed.wrapping_add(1))?;
    let b = s.batch;
    let enc_ws = Workspace::new(ctx, &enc, b, Loss::External)?;
    let mut head = GaussianHead::new(ctx, &enc, &enc_ws, s.seed, s.beta)?;
    let mut dec_ws = Workspace::new(ctx, &dec, b, Loss::Bce)?;
    let steps_per_epoch = ntrain / b;
    dec_ws.set_reduce(ctx, slot::TRAIN, 1.0 / steps_per_epoch as f64, true);

    let data = ctx.upload("vae.data", &crate::nn::mlp::to_f32(train))?;
    let perm_buf = ctx.upload("vae.perm", &(0..ntrain as u32).collect::<Vec<u32>>())?;
    let mut gp = MlpParams {
        m: b as u32,
        n: nc as u32,
        ..Default::default()
    };
    let u_gather = ctx.uniform("vae.gather", &gp);
    let gather = ctx.prepare(
        &args::GatherRows {
            params: &u_gather,
            xa: &data,
            xc: &enc_ws.x,
            idx: &perm_buf,
        },
        [b * nc, 1],
    )?;
    let (wbytes, fbytes) = ((b * s.latent * 4) as u64, (b * nc * 4) as u64);

    let bar = crate::output::progress::progress_bar(s.epochs, s.quiet, "epochs  {msg}");
    let t0 = Instant::now();
    let mut report = VaeReport {
        epochs: 0,
        steps: 0,
        train_recon: Vec::new(),
        val_elbo: Vec::new(),
        seconds: 0.0,
        fields_per_s: 0.0,
    };
    let mut step = 0u32;
    for epoch in 0..s.epochs {
        let perm =
            crate::rng::permutation(s.seed, crate::rng::streams::SHUFFLE, epoch as u32, ntrain);
        ctx.write(&perm_buf, &perm);
        ctx.write(&dec_ws.losses, &[0f32; 16]);
        let decay = s.lr_final.powf(epoch as f64 / (s.epochs.max(2) - 1) as f64);
        for k in 0..steps_per_epoch {
            step += 1;
            gp.k = (k * b) as u32;
            ctx.write(&u_gather, &[gp]);
            head.set_step(ctx, step);
            enc.prepare_adam(ctx, step, s.lr * decay);
            dec.prepare_adam(ctx, step, s.lr * decay);
            let mut e = ctx.encoder("vae.step");
            {
                let mut pass = e.begin_compute_pass(&Default::default());
                gather.record(&mut pass);
                enc_ws.encode_forward(&mut pass);
                head.encode_sample(&mut pass);
            }
            e.copy_buffer_to_buffer(&head.xi, 0, &dec_ws.x, 0, wbytes);
            e.copy_buffer_to_buffer(&enc_ws.x, 0, &dec_ws.t, 0, fbytes);
            {
                let mut pass = e.begin_compute_pass(&Default::default());
                dec_ws.encode_forward(&mut pass);
                dec_ws.encode_loss(&mut pass);
                dec_ws.encode_backward(&mut pass, true);
            }
            e.copy_buffer_to_buffer(&dec_ws.dx, 0, &head.gxi, 0, wbytes);
            {
                let mut pass = e.begin_compute_pass(&Default::default());
                head.encode_backward(&mut pass);
                enc_ws.encode_backward(&mut pass, false);
                enc.encode_adam(&mut pass);
                dec.encode_adam(&mut pass);
            }
            ctx.queue.submit([e.finish()]);
        }
        report.steps += steps_per_epoch;
        let tl = dec_ws.read_loss(ctx, slot::TRAIN)?;
        if !tl.is_finite() {
            return Err(Error::Diverged(format!(
                "the VAE's reconstruction loss is {tl} in epoch {epoch}: lower --lr (now {})",
                s.lr
            )));
        }
        report.train_recon.push(tl);
        report.epochs = epoch + 1;
        let mut msg = format!("recon {tl:.2}");
        if nval > 0 {
            let sc = score(
                &enc.arch,
                &enc.read_params(ctx)?,
                &dec.arch,
                &dec.read_params(ctx)?,
                &val[..nval.min(256) * nc],
                n,
                s.beta,
                s.seed,
            )?;
            report.val_elbo.push(sc.elbo);
            msg.push_str(&format!(
                "  held-out ELBO {:.2}  phase error {:.4}",
                sc.elbo, sc.phase_error
            ));
        }
        bar.set_position(epoch as u64 + 1);
        bar.set_message(msg);
        if crate::interrupt::requested() && epoch + 1 < s.epochs {
            break;
        }
    }
    bar.finish_and_clear();
    report.seconds = t0.elapsed().as_secs_f64();
    report.fields_per_s = (report.steps * b) as f64 / report.seconds;
    let validation = if nval > 0 {
        Some(score(
            &enc.arch,
            &enc.read_params(ctx)?,
            &dec.arch,
            &dec.read_params(ctx)?,
            val,
            n,
            s.beta,
            s.seed,
        )?)
    } else {
        None
    };
    let meta = VaeMeta {
        format: "pdevi-vae".into(),
        n,
        latent: s.latent,
        class: class.into(),
        beta: s.beta,
        epochs: report.epochs,
        training_fields: ntrain,
        validation,
    };
    Ok((Vae { enc, dec, meta }, report))
}

/// Encoder means and log-sds (rows x K each) of fields, on the f64 mirror.
pub fn encode(enc: &Arch, enc_p: &[f64], fields: &[f64], latent: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = fields.len() / enc.input;
    let out = crate::cpu::nn::mlp::forward(enc, enc_p, fields, rows)
        .a
        .pop()
        .unwrap_or_default();
    let (mut mu, mut ls) = (Vec::new(), Vec::new());
    for r in out.chunks(2 * latent) {
        mu.extend_from_slice(&r[..latent]);
        ls.extend_from_slice(&r[latent..]);
    }
    (mu, ls)
}

/// Decoder logits (rows x n^2) of latent rows, on the f64 mirror.
pub fn decode_logits(dec: &Arch, dec_p: &[f64], w: &[f64]) -> Vec<f64> {
    let rows = w.len() / dec.input;
    crate::cpu::nn::mlp::forward(dec, dec_p, w, rows)
        .a
        .pop()
        .unwrap_or_default()
}

/// Scores of a VAE on fields (f64 mirror; one seeded draw of w per field).
#[allow(clippy::too_many_arguments, reason = "two networks and their data")]
pub fn score(
    enc: &Arch,
    enc_p: &[f64],
    dec: &Arch,
    dec_p: &[f64],
    fields: &[f64],
    n: usize,
    beta: f64,
    seed: u64,
) -> Result<VaeScore> {
    let rows = check_fields(fields, n, "fields to score")?;
    let nc = n * n;
    let k = dec.input;
    let (mu, ls) = encode(enc, enc_p, fields, k);
    let eps = crate::rng::normals(seed, crate::rng::streams::VAE, u32::MAX, rows * k);
    let w: Vec<f64> = (0..rows * k)
        .map(|i| mu[i] + ls[i].exp() * eps[i])
        .collect();
    let l_draw = decode_logits(dec, dec_p, &w);
    let l_mean = decode_logits(dec, dec_p, &mu);
    let (mut nll, mut kl, mut wrong, mut iou, mut rel) = (0.0, 0.0, 0usize, 0.0, 0.0);
    for r in 0..rows {
        let z = &fields[r * nc..(r + 1) * nc];
        nll += bernoulli_nll(&l_draw[r * nc..(r + 1) * nc], z);
        kl += (0..k)
            .map(|i| {
                let (m, s) = (mu[r * k + i], ls[r * k + i]);
                0.5 * (m * m + (2.0 * s).exp() - 1.0 - 2.0 * s)
            })
            .sum::<f64>();
        let f = field_of_logits(&l_mean[r * nc..(r + 1) * nc]);
        wrong += f
            .iter()
            .zip(z)
            .filter(|(a, b)| (**a > 0.0) != (**b > 0.0))
            .count();
        iou += crate::physics::inclusions::iou(&f, z);
        rel += crate::physics::inclusions::rel_l2(&f, z);
    }
    let m = rows as f64;
    Ok(VaeScore {
        fields: rows,
        recon_nll: nll / m,
        kl: kl / m,
        elbo: -(nll + beta * kl) / m,
        phase_error: wrong as f64 / (m * nc as f64),
        iou: iou / m,
        rel_l2: rel / m,
    })
}

impl Vae {
    /// Save `vae.json`, `encoder.{json,safetensors}` and
    /// `decoder.{json,safetensors}` into `dir`.
    pub fn save(&self, ctx: &GpuContext, dir: &Path) -> Result<()> {
        crate::output::files::ensure_dir(dir)?;
        self.enc.save(ctx, &dir.join("encoder"))?;
        self.dec.save(ctx, &dir.join("decoder"))?;
        crate::output::files::write_json(&dir.join("vae.json"), &self.meta)
    }
}

/// A trained VAE's decoder as a prior on fields: z = f(w), w ~ N(0, I).
/// Held by a [`Problem`](crate::physics::problem::Problem) whose latent
/// vector is w; the batched solver then runs the decoder (and its
/// backward pass) in place of the KL map.
#[derive(Clone, Debug)]
pub struct GenerativePrior {
    pub dir: PathBuf,
    pub meta: VaeMeta,
    pub arch: Arch,
    pub params: Vec<f64>,
}

impl GenerativePrior {
    /// Load the decoder of a VAE folder (`pdevi train vae --out DIR`).
    pub fn load(dir: &Path) -> Result<Arc<Self>> {
        let meta_path = dir.join("vae.json");
        let text = std::fs::read_to_string(&meta_path).map_err(|e| Error::Io {
            path: meta_path.clone(),
            source: e,
        })?;
        let meta: VaeMeta = serde_json::from_str(&text).map_err(|e| Error::Format {
            path: meta_path.clone(),
            message: format!("not a VAE description ({e}); train one with `pdevi train vae`"),
        })?;
        if meta.format != "pdevi-vae" {
            return Err(Error::Format {
                path: meta_path,
                message: format!("format is {:?}, expected \"pdevi-vae\"", meta.format),
            });
        }
        let (arch, params) = crate::nn::mlp::load_weights(&dir.join("decoder"))?;
        if arch.input != meta.latent || arch.output() != meta.n * meta.n {
            return Err(Error::Format {
                path: dir.join("decoder.json"),
                message: format!(
                    "the decoder maps {} -> {} but vae.json says K = {} and n = {} ({} cells)",
                    arch.input,
                    arch.output(),
                    meta.latent,
                    meta.n,
                    meta.n * meta.n
                ),
            });
        }
        Ok(Arc::new(GenerativePrior {
            dir: dir.to_path_buf(),
            meta,
            arch,
            params,
        }))
    }

    /// A prior from a decoder in memory (tests).
    pub fn from_parts(arch: Arch, params: Vec<f64>, n: usize) -> Arc<Self> {
        Arc::new(GenerativePrior {
            dir: PathBuf::new(),
            meta: VaeMeta {
                format: "pdevi-vae".into(),
                n,
                latent: arch.input,
                class: "none".into(),
                beta: 1.0,
                epochs: 0,
                training_fields: 0,
                validation: None,
            },
            arch,
            params,
        })
    }

    pub fn latent(&self) -> usize {
        self.arch.input
    }

    /// Fields f(w) of latent rows (rows x n^2), on the f64 mirror.
    pub fn fields(&self, w: &[f64]) -> Vec<f64> {
        field_of_logits(&decode_logits(&self.arch, &self.params, w))
    }

    /// The gradient of a loss with respect to w given its gradient `g` with
    /// respect to the field f(w) (one row), on the f64 mirror: the
    /// decoder's backward pass after the logits' map.
    pub fn pullback(&self, w: &[f64], g: &[f64]) -> Vec<f64> {
        let tr = crate::cpu::nn::mlp::forward(&self.arch, &self.params, w, 1);
        let f = field_of_logits(tr.a.last().map_or(&[][..], |v| &v[..]));
        let dl: Vec<f64> = g
            .iter()
            .zip(&f)
            .map(|(g, z)| 0.5 * g * (1.0 - z * z))
            .collect();
        crate::cpu::nn::mlp::backward(&self.arch, &self.params, &tr, &dl, 1).1
    }
}
