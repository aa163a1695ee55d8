//! Amortised posteriors (primer A2): an encoder `q_phi(xi | y)`, an MLP
//! with a Gaussian head in the layout of a VI family, trained on simulated
//! pairs by minimising `E[-log q_phi(xi | y)]` (neural posterior
//! estimation), with fresh observation noise every epoch. Inputs and
//! targets are standardised; the scalings are saved with the weights, so a
//! saved encoder maps raw readings to a posterior over raw `xi` in one
//! forward pass. `K > 1` members trained from different seeds form an
//! ensemble whose mixture is reported by its mean and covariance.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::infer::vi::Family;
use crate::nn::dataset::SimSet;
use crate::nn::mlp::{Activation, Arch, Head, Layer, Loss, Mlp, Workspace};
use crate::nn::train::{train, Dataset, TrainReport, TrainSettings};
use crate::physics::problem::{Problem, ProblemArgs, ProblemKind};

/// The encoder shipped with the sources: darcy2d n = 64, d = 64,
/// sigma_n = 1e-3 (its training settings are in its `encoder.json`).
pub const SHIPPED_ENCODER: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/assets/encoder-darcy2d-n64");

/// The file in an encoder folder that describes it.
pub const ENCODER_JSON: &str = "encoder.json";

/// An affine map of data vectors to standardised coordinates: per column
/// `(v - mean) / sd`, or with a `rotation` (PCA whitening)
/// `x_k = (U^T (v - mean))_k / sd_k`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scaling {
    pub mean: Vec<f64>,
    pub sd: Vec<f64>,
    /// `U^T`, row-major `w x w` (empty: no rotation).
    #[serde(default)]
    pub rotation: Vec<f64>,
}

impl Scaling {
    /// Column means and standard deviations of `rows` (`n x w`), with
    /// `extra_var[j]` added to each variance (the training noise); columns
    /// with no spread get sd 1.
    pub fn fit(rows: &[f64], w: usize, extra_var: &[f64]) -> Self {
        let n = (rows.len() / w).max(1) as f64;
        let mut mean = vec![0.0; w];
        for r in rows.chunks_exact(w) {
            for (m, v) in mean.iter_mut().zip(r) {
                *m += v / n;
            }
        }
        let mut var = vec![0.0; w];
        for r in rows.chunks_exact(w) {
            for j in 0..w {
                var[j] += (r[j] - mean[j]).powi(2) / n;
            }
        }
        let sd = (0..w)
            .map(|j| {
                let v = var[j] + extra_var[j];
                if v > 1e-30 {
                    v.sqrt()
                } else {
                    1.0
                }
            })
            .collect();
        Scaling {
            mean,
            sd,
            rotation: Vec::new(),
        }
    }

    /// PCA whitening of `rows` plus isotropic noise of variance `noise_var`:
    /// the whitened coordinates are uncorrelated with unit variance, and the
    /// noise in them is independent with sd `sqrt(noise_var) / sd_k`. Per-
    /// column scaling leaves the smooth, strongly correlated readings of a
    /// PDE ill-conditioned (eigenvalues over 5 decades on poisson1d), which
    /// stalls gradient training of the encoder's input layer.
    pub fn whiten(rows: &[f64], w: usize, noise_var: f64) -> Self {
        let (mean, mut cov) = moments(rows, w);
        for j in 0..w {
            cov[j * w + j] += noise_var;
        }
        let (vals, vecs) = crate::math::linalg::sym_eigen(&cov, w);
        let mut rotation = vec![0.0; w * w];
        for k in 0..w {
            for i in 0..w {
                rotation[k * w + i] = vecs[i * w + k];
            }
        }
        let sd = vals
            .iter()
            .map(|&v| if v > 1e-30 { v.sqrt() } else { 1.0 })
            .collect();
        Scaling { mean, sd, rotation }
    }

    /// Standard deviation of independent noise `sigma` per raw column in the
    /// standardised coordinates.
    pub fn noise_sd(&self, sigma: f64) -> Vec<f64> {
        self.sd.iter().map(|sd| sigma / sd).collect()
    }

    pub fn apply(&self, rows: &[f64]) -> Vec<f64> {
        let w = self.mean.len();
        let mut out = Vec::with_capacity(rows.len());
        for r in rows.chunks_exact(w) {
            if self.rotation.is_empty() {
                out.extend((0..w).map(|j| (r[j] - self.mean[j]) / self.sd[j]));
            } else {
                out.extend((0..w).map(|k| {
                    let u: f64 = (0..w)
                        .map(|i| self.rotation[k * w + i] * (r[i] - self.mean[i]))
                        .sum();
                    u / self.sd[k]
                }));
            }
        }
        out
    }

    /// Whether the sizes are consistent with `w` columns.
    pub fn fits(&self, w: usize) -> bool {
        self.mean.len() == w
            && self.sd.len() == w
            && (self.rotation.is_empty() || self.rotation.len() == w * w)
    }
}

/// Column means and the covariance (`w x w`) of `rows`.
fn moments(rows: &[f64], w: usize) -> (Vec<f64>, Vec<f64>) {
    let n = (rows.len() / w).max(1) as f64;
    let mut mean = vec![0.0; w];
    for r in rows.chunks_exact(w) {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += v / n;
        }
    }
    let mut cov = vec![0.0; w * w];
    for r in rows.chunks_exact(w) {
        for i in 0..w {
            let di = r[i] - mean[i];
            for j in 0..w {
                cov[i * w + j] += di * (r[j] - mean[j]) / n;
            }
        }
    }
    (mean, cov)
}

/// `per` sample rows for each of `groups` parameter rows: the parameters
/// gathered into one row per sample (`theta_rows[r] = theta[r / per]`),
/// and the sample rows' gradients summed back per group by one product
/// with a 0/1 matrix (`grad = A grad_rows`, `A[g, r] = 1` when
/// `r / per = g`), which overwrites `grad`.
pub struct SampleRows {
    pub theta_rows: wgpu::Buffer,
    pub grad_rows: wgpu::Buffer,
    pub gather: crate::gpu::Dispatch,
    pub sum: crate::gpu::Dispatch,
    _bufs: Vec<wgpu::Buffer>,
}

impl SampleRows {
    pub fn new(
        ctx: &GpuContext,
        label: &str,
        theta: &wgpu::Buffer,
        grad: &wgpu::Buffer,
        groups: usize,
        per: usize,
        np: usize,
    ) -> Result<Self> {
        use crate::gpu::args;
        use crate::nn::mlp::MlpParams;
        let rows = groups * per;
        let theta_rows = ctx.storage(&format!("{label}.theta_rows"), (rows * np * 4) as u64)?;
        let grad_rows = ctx.storage(&format!("{label}.grad_rows"), (rows * np * 4) as u64)?;
        let idx: Vec<u32> = (0..rows).map(|r| (r / per) as u32).collect();
        let idx_buf = ctx.upload(&format!("{label}.rows"), &idx)?;
        let u_gather = ctx.uniform(
            &format!("{label}.gather_rows"),
            &MlpParams {
                m: rows as u32,
                n: np as u32,
                ..Default::default()
            },
        );
        let gather = ctx.prepare(
            &args::GatherRows {
                params: &u_gather,
                xa: theta,
                xc: &theta_rows,
                idx: &idx_buf,
            },
            [rows * np, 1],
        )?;
        let mut a = vec![0f32; groups * rows];
        for r in 0..rows {
            a[(r / per) * rows + r] = 1.0;
        }
        let a_buf = ctx.upload(&format!("{label}.sum"), &a)?;
        let unused = ctx.storage(&format!("{label}.unused"), 16)?;
        let u_sum = ctx.uniform(
            &format!("{label}.sum"),
            &MlpParams {
                m: groups as u32,
                n: np as u32,
                k: rows as u32,
                a_rs: rows as u32,
                a_cs: 1,
                b_rs: np as u32,
                b_cs: 1,
                c_rs: np as u32,
                ..Default::default()
            },
        );
        let sum = ctx.prepare_as(
            ctx.matmul,
            &args::Matmul {
                params: &u_sum,
                xa: &a_buf,
                xb: &grad_rows,
                xc: grad,
                xz: &unused,
            },
            [np, groups],
        )?;
        Ok(SampleRows {
            theta_rows,
            grad_rows,
            gather,
            sum,
            _bufs: vec![idx_buf, u_gather, a_buf, unused, u_sum],
        })
    }
}

/// The UQ-VAE term of encoder training: for every minibatch row, one
/// sample of its q through the batched exact solver, and `beta` times the
/// gradient of that row's negative ELBO (misfit + KL to the prior) written
/// into the output gradient before the NPE loss adds its own. The solver's
/// data are the rows' noisy readings in raw units (the same noise draw as
/// the whitened inputs of the epoch), gathered on the device.
pub struct PhysicsTerm {
    pub beta: f64,
    /// Samples of each row's q per step (1 by default).
    pub samples: usize,
    pb: Problem,
    family: Family,
    batch: usize,
    cg: crate::physics::solver::CgParams,
    /// Clean training readings (`n x m`) and the whitening of the inputs.
    y: Vec<f64>,
    scaling: Scaling,
    noise: f64,
    seed: u64,
    parts: Option<PhysicsParts>,
}

struct PhysicsParts {
    solver: crate::physics::solver::BatchedSolver,
    block: crate::infer::gaussian::GaussianBlock,
    y_raw: wgpu::Buffer,
    perm: wgpu::Buffer,
    gather: crate::gpu::Dispatch,
    u_gather: wgpu::Buffer,
    gp: crate::nn::mlp::MlpParams,
    /// With several samples per row: theta rows per sample, and the sum of
    /// the sample rows' gradients back into the output gradient.
    spread: Option<SampleRows>,
    _bufs: Vec<wgpu::Buffer>,
}

impl PhysicsTerm {
    #[allow(clippy::too_many_arguments, reason = "the settings of one term")]
    pub fn new(
        pb: &Problem,
        family: Family,
        beta: f64,
        batch: usize,
        y: Vec<f64>,
        scaling: Scaling,
        noise: f64,
        seed: u64,
    ) -> Self {
        let mut pb = pb.clone();
        pb.sigma_n = noise;
        PhysicsTerm {
            beta,
            samples: 1,
            pb,
            family,
            batch,
            cg: crate::physics::solver::CgParams::default(),
            y,
            scaling,
            noise,
            seed,
            parts: None,
        }
    }

    /// The training rows' readings plus the epoch's noise, in raw units:
    /// `y + sigma U eps` for the `eps` that [`crate::nn::train::noisy_inputs`]
    /// scales by `sigma / sd_k` in the whitened coordinates.
    pub fn noisy_raw(&self, epoch: usize) -> Vec<f64> {
        let m = self.scaling.mean.len();
        let n = self.y.len() / m;
        let eps = crate::rng::normals(self.seed, crate::rng::streams::NOISE, epoch as u32, n * m);
        let rot = &self.scaling.rotation;
        let mut out = self.y.clone();
        for r in 0..n {
            for i in 0..m {
                let e: f64 = if rot.is_empty() {
                    eps[r * m + i]
                } else {
                    (0..m).map(|k| rot[k * m + i] * eps[r * m + k]).sum()
                };
                out[r * m + i] += self.noise * e;
            }
        }
        out
    }
}

impl crate::nn::train::StepExtra for PhysicsTerm {
    fn state_buffers(&self) -> crate::output::checkpoint::Buffers<'_> {
        match &self.parts {
            Some(p) => {
                let mut b = vec![("physics.eps", &p.block.eps)];
                b.extend(p.solver.state_buffers());
                b
            }
            None => Vec::new(),
        }
    }

    fn attach(&mut self, ctx: &GpuContext, ws: &Workspace) -> Result<()> {
        use crate::gpu::args;
        use crate::infer::gaussian::{GaussianBlock, GaussianBuffers};
        use crate::infer::vi::ViParams;
        let (b, d, m) = (self.batch, self.pb.d, self.scaling.mean.len());
        let sp = self.samples.max(1);
        let rows = b * sp;
        let np = self.family.nparam(d);
        let solver = crate::physics::solver::BatchedSolver::new(
            ctx,
            &self.pb,
            rows,
            self.cg,
            Some(&self.pb.sensors),
            true,
        )?;
        let mut vp = ViParams::new(self.family, d, rows, self.seed, m, self.noise);
        vp.per_row = 1;
        vp.grad_scale = (self.beta / rows as f64) as f32;
        vp.kl_scale = (self.beta / rows as f64) as f32;
        let kl = ctx.storage("uqvae.kl", (rows.max(4) * 4) as u64)?;
        let mut bufs = Vec::new();
        // One sample per row: the head's rows directly. Several: theta
        // gathered per sample row, gradients summed back by one product.
        let (block, spread) = if sp == 1 {
            let block = GaussianBlock::new(
                ctx,
                "uqvae",
                self.family,
                vp,
                GaussianBuffers {
                    theta: ws.output(),
                    xi: &solver.xi,
                    gxi: &solver.gxi,
                    grad: ws.output_grad(),
                    kl: &kl,
                },
            )?;
            (block, None)
        } else {
            let spread = SampleRows::new(ctx, "uqvae", ws.output(), ws.output_grad(), b, sp, np)?;
            let block = GaussianBlock::new(
                ctx,
                "uqvae",
                self.family,
                vp,
                GaussianBuffers {
                    theta: &spread.theta_rows,
                    xi: &solver.xi,
                    gxi: &solver.gxi,
                    grad: &spread.grad_rows,
                    kl: &kl,
                },
            )?;
            (block, Some(spread))
        };
        let n = self.y.len() / m;
        let y_raw = ctx.storage("uqvae.y", (n * m * 4) as u64)?;
        // The epoch's permutation with every entry repeated per sample.
        let perm = ctx.storage("uqvae.perm", (n * sp * 4) as u64)?;
        let gp = crate::nn::mlp::MlpParams {
            m: rows as u32,
            n: m as u32,
            ..Default::default()
        };
        let u_gather = ctx.uniform("uqvae.gather", &gp);
        let gather = ctx.prepare(
            &args::GatherRows {
                params: &u_gather,
                xa: &y_raw,
                xc: &solver.data,
                idx: &perm,
            },
            [rows * m, 1],
        )?;
        bufs.push(kl);
        self.parts = Some(PhysicsParts {
            solver,
            block,
            y_raw,
            perm,
            gather,
            u_gather,
            gp,
            spread,
            _bufs: bufs,
        });
        Ok(())
    }

    fn begin_epoch(&mut self, ctx: &GpuContext, epoch: usize, perm: &[u32]) -> Result<()> {
        let raw = self.noisy_raw(epoch);
        let p = self.parts.as_ref().ok_or_else(|| {
            Error::setting(
                "physics term",
                "detached",
                "internal: attach before training",
            )
        })?;
        ctx.write(&p.y_raw, &crate::nn::mlp::to_f32(&raw));
        let sp = self.samples.max(1);
        let rep: Vec<u32> = perm
            .iter()
            .flat_map(|&r| std::iter::repeat_n(r, sp))
            .collect();
        ctx.write(&p.perm, &rep);
        Ok(())
    }

    fn set_step(&mut self, ctx: &GpuContext, b: usize, step: u32) {
        if let Some(p) = self.parts.as_mut() {
            p.gp.k = (b * self.batch * self.samples.max(1)) as u32;
            ctx.write(&p.u_gather, &[p.gp]);
            p.block.set_step(ctx, step);
        }
    }

    fn record(&self, enc: &mut wgpu::CommandEncoder) {
        let Some(p) = &self.parts else { return };
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            p.gather.record(&mut pass);
            if let Some(sr) = &p.spread {
                sr.gather.record(&mut pass);
            }
            p.block.record_sample(&mut pass);
        }
        p.solver.encode_forward(enc);
        p.solver.encode_gradient(enc);
        let mut pass = enc.begin_compute_pass(&Default::default());
        p.block.record_backward(&mut pass);
        if let Some(sr) = &p.spread {
            sr.sum.record(&mut pass);
        }
    }
}

/// Settings of [`train_encoder`].
#[derive(Clone, Debug)]
pub struct EncoderSettings {
    pub family: Family,
    pub hidden: Vec<usize>,
    pub act: Activation,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub lr_final: f64,
    /// Observation noise sigma_n added to `y`, fresh every epoch.
    pub noise: f64,
    /// Members of the ensemble (trained from seeds `seed`, `seed + 1`, ...).
    pub ensemble: usize,
    pub seed: u64,
    /// Rows held out for validation and early stopping.
    pub val_rows: usize,
    pub patience: usize,
    pub clip_norm: f64,
    /// AdamW's decoupled weight decay (a remedy for the overfitting of
    /// large heads on small training sets).
    pub weight_decay: f64,
    pub quiet: bool,
    /// Weight beta of the UQ-VAE term (0 = plain NPE).
    pub physics_weight: f64,
    /// Samples of each row's q through the solver per step (UQ-VAE term).
    pub physics_samples: usize,
    /// Checkpoints and resume (one network: not with an ensemble).
    pub control: crate::nn::train::TrainControl,
}

impl Default for EncoderSettings {
    fn default() -> Self {
        EncoderSettings {
            family: Family::FullRank,
            hidden: vec![256, 256],
            act: Activation::Gelu,
            epochs: 60,
            batch: 128,
            lr: 1e-3,
            lr_final: 0.05,
            noise: 1e-3,
            ensemble: 1,
            seed: 0,
            val_rows: 0,
            patience: 5,
            clip_norm: 10.0,
            weight_decay: 0.0,
            quiet: true,
            physics_weight: 0.0,
            physics_samples: 1,
            control: Default::default(),
        }
    }
}

/// What an encoder folder's `encoder.json` records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EncoderMeta {
    pub format: String,
    pub problem: ProblemKind,
    pub n: usize,
    pub d: usize,
    pub sensors: Vec<usize>,
    pub noise: f64,
    pub family: String,
    pub rank: usize,
    pub hidden: Vec<usize>,
    pub activation: Activation,
    pub members: Vec<String>,
    pub y_scaling: Scaling,
    pub xi_scaling: Scaling,
    /// The training settings and figures, for the record.
    pub training: serde_json::Value,
}

/// A trained encoder (one or more members) with its scalings.
pub struct Encoder {
    pub meta: EncoderMeta,
    pub family: Family,
    pub nets: Vec<Mlp>,
}

/// Everything [`train_encoder`] measured.
pub struct EncoderTraining {
    pub reports: Vec<TrainReport>,
    pub seconds: f64,
}

/// The architecture of an encoder: `m -> hidden -> nparam` with a Gaussian head.
pub fn encoder_arch(m: usize, d: usize, family: Family, hidden: &[usize], act: Activation) -> Arch {
    let mut layers: Vec<Layer> = hidden.iter().map(|&out| Layer { out, act }).collect();
    layers.push(Layer {
        out: family.nparam(d),
        act: Activation::Identity,
    });
    Arch {
        input: m,
        layers,
        head: Head::Gaussian {
            family: family.name().into(),
            d,
            rank: family.rank(),
        },
    }
}

/// Initial weights with the output layer's weights shrunk 100-fold: the
/// head starts near q = N(0, I) for every input (a full-rank factor with
/// O(1) random entries is ill-conditioned enough to overflow f32 in the
/// triangular solve of the NPE loss).
pub fn small_head_init(arch: &Arch, seed: u64) -> Vec<f64> {
    let mut p = arch.init(seed);
    if let Some(&(w, b)) = arch.offsets().last() {
        for v in &mut p[w..b] {
            *v *= 1e-2;
        }
    }
    p
}

/// Train an encoder on `set`: NPE on standardised pairs, fresh noise of
/// `s.noise` on `y` every epoch, the last `val_rows` rows for validation
/// (with one fixed noise draw).
pub fn train_encoder(
    ctx: &GpuContext,
    set: &SimSet,
    s: &EncoderSettings,
) -> Result<(Encoder, EncoderTraining)> {
    let (d, m) = (set.settings.d, set.m());
    if !(s.noise.is_finite() && s.noise > 0.0) {
        return Err(Error::setting(
            "noise",
            s.noise,
            "the encoder needs the positive observation noise sigma_n of the data it will see",
        ));
    }
    if !(s.weight_decay.is_finite() && s.weight_decay >= 0.0) {
        return Err(Error::setting(
            "weight-decay",
            s.weight_decay,
            "must be a finite decay >= 0",
        ));
    }
    if !(s.physics_weight.is_finite() && s.physics_weight >= 0.0) {
        return Err(Error::setting(
            "physics-weight",
            s.physics_weight,
            "must be a finite weight >= 0 (0 = plain NPE)",
        ));
    }
    if s.ensemble == 0 {
        return Err(Error::setting("ensemble", 0, "need at least one member"));
    }
    let n = set.count();
    let val_rows = set.validation_rows(s.val_rows, s.batch)?;
    let y_scaling = Scaling::whiten(&set.y, m, s.noise * s.noise);
    // xi ~ N(0, I) by construction: the identity scaling keeps the head in
    // raw units, where the physics term samples it and the KL is to N(0, I).
    let xi_scaling = Scaling {
        mean: vec![0.0; d],
        sd: vec![1.0; d],
        rotation: Vec::new(),
    };
    let x = y_scaling.apply(&set.y);
    let t = xi_scaling.apply(&set.xi);
    let all = Dataset::new(x, t, m, d)?;
    let (tr, mut val) = all.split(val_rows)?;
    // One fixed noise draw on the validation rows, so its loss is comparable
    // across epochs.
    let noise_std = y_scaling.noise_sd(s.noise);
    let vx = crate::nn::train::noisy_inputs(&val, &noise_std, s.seed ^ 0x5eed_0fa1, 0);
    val.x = vx.iter().map(|&v| v as f64).collect();

    let t0 = Instant::now();
    let mut reports = Vec::new();
    let mut nets = Vec::new();
    for k in 0..s.ensemble {
        let seed = s.seed + k as u64;
        let arch = encoder_arch(m, d, s.family, &s.hidden, s.act);
        arch.validate()?;
        let init = small_head_init(&arch, seed);
        let mut net = Mlp::new(ctx, arch, Some(&init), seed)?;
        let ts = TrainSettings {
            loss: Loss::Npe,
            epochs: s.epochs,
            batch: s.batch,
            lr: s.lr,
            lr_final: s.lr_final,
            weight_decay: s.weight_decay,
            clip_norm: s.clip_norm,
            seed,
            patience: s.patience,
            quiet: s.quiet,
            input_noise: Some(noise_std.clone()),
            control: s.control.clone(),
        };
        let rep = if s.physics_weight > 0.0 {
            let pb = set.problem()?;
            let mut term = PhysicsTerm::new(
                &pb,
                s.family,
                s.physics_weight,
                s.batch,
                set.y[..(n - val_rows) * m].to_vec(),
                y_scaling.clone(),
                s.noise,
                seed,
            );
            term.samples = s.physics_samples.max(1);
            crate::nn::train::train_with(ctx, &mut net, &tr, Some(&val), &ts, Some(&mut term))?
        } else {
            train(ctx, &mut net, &tr, Some(&val), &ts)?
        };
        let stopped = rep.interrupted.is_some();
        reports.push(rep);
        nets.push(net);
        // Ctrl-C: the members trained so far make the encoder.
        if stopped {
            break;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let meta = EncoderMeta {
        format: "pdevi-encoder".into(),
        problem: set.settings.problem,
        n: set.settings.n,
        d,
        sensors: set.settings.sensors.clone(),
        noise: s.noise,
        family: s.family.name().into(),
        rank: s.family.rank(),
        hidden: s.hidden.clone(),
        activation: s.act,
        members: (0..nets.len()).map(|k| format!("member_{k}")).collect(),
        y_scaling,
        xi_scaling,
        training: serde_json::json!({
            "set_count": n,
            "set_seed": set.settings.seed,
            "validation_rows": val_rows,
            "epochs": s.epochs,
            "batch": s.batch,
            "lr": s.lr,
            "lr_final": s.lr_final,
            "clip_norm": s.clip_norm,
            "weight_decay": s.weight_decay,
            "patience": s.patience,
            "seed": s.seed,
            "ensemble": s.ensemble,
            "physics_weight": s.physics_weight,
            "physics_samples": s.physics_samples,
            "seconds": seconds,
            "best_val_loss": reports.iter().map(|r| r.val_loss.get(r.best_epoch).copied().unwrap_or(f64::NAN)).collect::<Vec<f64>>(),
            "epochs_run": reports.iter().map(|r| r.epochs).collect::<Vec<usize>>(),
        }),
    };
    Ok((
        Encoder {
            meta,
            family: s.family,
            nets,
        },
        EncoderTraining { reports, seconds },
    ))
}

/// One posterior of an encoder: Gaussian moments in raw `xi`, and the
/// members' own moments (one for a single network).
#[derive(Clone, Debug)]
pub struct AmortisedPosterior {
    pub mean: Vec<f64>,
    pub cov: Vec<f64>,
    pub members: Vec<(Vec<f64>, Vec<f64>)>,
}

/// A head's parameters on standardised targets mapped to raw `xi`
/// (`xi = mean + sd * x`): the mean shifts and scales, each row of the
/// factor scales by `sd_i` (log-scales shift by `log sd_i`).
pub fn unstandardise_theta(family: Family, d: usize, theta: &[f64], sc: &Scaling) -> Vec<f64> {
    let mut t = theta.to_vec();
    for i in 0..d {
        t[i] = sc.mean[i] + sc.sd[i] * theta[i];
    }
    let ls = |i: usize| sc.sd[i].ln();
    match family {
        Family::MeanField => {
            for i in 0..d {
                t[d + i] += ls(i);
            }
        }
        Family::FullRank => {
            for i in 0..d {
                for j in 0..i {
                    t[d + i * d + j] *= sc.sd[i];
                }
                t[d + i * d + i] += ls(i);
            }
        }
        Family::LowRank { rank } => {
            for i in 0..d {
                for a in 0..rank {
                    t[d + i * rank + a] *= sc.sd[i];
                }
                t[d + d * rank + i] += ls(i);
            }
        }
    }
    t
}

/// Mean and covariance of an equal-weight mixture of Gaussians.
pub fn mixture_moments(parts: &[(Vec<f64>, Vec<f64>)], d: usize) -> (Vec<f64>, Vec<f64>) {
    let k = parts.len() as f64;
    let mut m = vec![0.0; d];
    for (pm, _) in parts {
        for i in 0..d {
            m[i] += pm[i] / k;
        }
    }
    let mut cov = vec![0.0; d * d];
    for (pm, pc) in parts {
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] += (pc[i * d + j] + (pm[i] - m[i]) * (pm[j] - m[j])) / k;
            }
        }
    }
    (m, cov)
}

impl Encoder {
    /// The problem the encoder was trained on, with its noise level.
    pub fn problem(&self) -> Result<Problem> {
        let mut pb = ProblemArgs {
            kind: self.meta.problem,
            n: Some(self.meta.n),
            d: Some(self.meta.d),
        }
        .build()?;
        pb.sigma_n = self.meta.noise;
        Ok(pb)
    }

    /// Write `encoder.json` and one weight file pair per member into `dir`.
    pub fn save(&self, ctx: &GpuContext, dir: &Path) -> Result<()> {
        crate::output::files::ensure_dir(dir)?;
        for (name, net) in self.meta.members.iter().zip(&self.nets) {
            net.save(ctx, &dir.join(name))?;
        }
        crate::output::files::write_json(&dir.join(ENCODER_JSON), &self.meta)
    }

    /// Read an encoder folder written by [`save`](Self::save).
    pub fn load(ctx: &GpuContext, dir: &Path) -> Result<Encoder> {
        let path: PathBuf = dir.join(ENCODER_JSON);
        let meta: EncoderMeta =
            crate::output::files::read_json(&path, "a pdevi encoder description")?;
        crate::output::files::check_format(&path, &meta.format, "pdevi-encoder")?;
        let family = Family::parse(&meta.family, meta.rank.max(1)).map_err(|e| Error::Format {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let m = meta.sensors.len();
        let bad = |message: String| Error::Format {
            path: path.clone(),
            message,
        };
        if !meta.y_scaling.fits(m)
            || !meta.xi_scaling.fits(meta.d)
            || !meta.xi_scaling.rotation.is_empty()
        {
            return Err(bad(format!(
                "the scalings do not match {m} sensors and d = {}",
                meta.d
            )));
        }
        if meta.members.is_empty() {
            return Err(bad("lists no members".into()));
        }
        let mut nets = Vec::new();
        for name in &meta.members {
            let net = Mlp::load(ctx, &dir.join(name))?;
            let want = encoder_arch(m, meta.d, family, &meta.hidden, meta.activation);
            if net.arch != want {
                return Err(bad(format!(
                    "member {name} does not have the architecture {ENCODER_JSON} describes"
                )));
            }
            nets.push(net);
        }
        Ok(Encoder { meta, family, nets })
    }

    /// Posteriors for a batch of observation vectors (raw sensor values, in
    /// the order of `meta.sensors`): one forward pass per member.
    pub fn posteriors(&self, ctx: &GpuContext, ys: &[Vec<f64>]) -> Result<Vec<AmortisedPosterior>> {
        let (d, m) = (self.meta.d, self.meta.sensors.len());
        if ys.is_empty() {
            return Ok(Vec::new());
        }
        let mut x = Vec::with_capacity(ys.len() * m);
        for (k, y) in ys.iter().enumerate() {
            if y.len() != m {
                return Err(Error::setting(
                    "observations",
                    y.len(),
                    format!("data set {k}: the encoder takes {m} sensor values"),
                ));
            }
            x.extend(self.meta.y_scaling.apply(y));
        }
        let np = self.family.nparam(d);
        let mut out: Vec<Vec<(Vec<f64>, Vec<f64>)>> = vec![Vec::new(); ys.len()];
        for net in &self.nets {
            let ws = Workspace::new(ctx, net, ys.len(), Loss::External)?;
            let theta = ws.predict(ctx, &x)?;
            for (k, row) in theta.chunks_exact(np).enumerate() {
                if let Some(v) = row.iter().find(|v| !v.is_finite()) {
                    return Err(Error::Diverged(format!(
                        "the encoder's output for data set {k} is {v}: are the readings on the scale of the training set?"
                    )));
                }
                let t = unstandardise_theta(self.family, d, row, &self.meta.xi_scaling);
                out[k].push(self.family.moments(d, &t));
            }
        }
        Ok(out
            .into_iter()
            .map(|members| {
                let (mean, cov) = if members.len() == 1 {
                    members[0].clone()
                } else {
                    mixture_moments(&members, d)
                };
                AmortisedPosterior { mean, cov, members }
            })
            .collect())
    }
}

/// Semi-amortised refinement of many data sets at once: VI of `family`
/// for every file, started at its encoder posterior, all files and all
/// their samples in one batched solve per step. Row `f * samples + s` of
/// the batch is sample s of file f: the files' parameters are gathered into
/// one row per sample, every row gets its own reparameterised ELBO
/// gradient (scaled 1 / samples), and one product with a 0/1 matrix sums
/// each file's rows back before Adam. Returns the moments per file.
#[allow(clippy::too_many_arguments, reason = "the settings of one refinement")]
pub fn refine_batched(
    ctx: &GpuContext,
    pb: &Problem,
    family: Family,
    starts: &[(Vec<f64>, Vec<f64>)],
    ys: &[Vec<f64>],
    sensors: &[usize],
    settings: &crate::infer::vi::FitSettings,
) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
    use crate::infer::adam::{Adam, AdamParams};
    use crate::infer::gaussian::{GaussianBlock, GaussianBuffers};
    use crate::infer::vi::ViParams;
    let (f, s, d) = (starts.len(), settings.samples, pb.d);
    if f == 0 || s == 0 || ys.len() != f {
        return Err(Error::setting(
            "refine",
            format!("{f} starts, {} data sets, {s} samples", ys.len()),
            "need one start per data set and at least one sample",
        ));
    }
    let (np, rows, m) = (family.nparam(d), f * s, sensors.len());
    let mut theta0 = Vec::with_capacity(f * np);
    for (mean, cov) in starts {
        theta0.extend(family.theta_from_gaussian(d, mean, cov)?);
    }
    let theta = ctx.upload("refine.theta", &crate::nn::mlp::to_f32(&theta0))?;
    let grad = ctx.storage("refine.grad", (f * np * 4) as u64)?;
    let kl = ctx.storage("refine.kl", (rows.max(4) * 4) as u64)?;
    let solver = crate::physics::solver::BatchedSolver::new(
        ctx,
        pb,
        rows,
        settings.cg,
        Some(sensors),
        true,
    )?;
    let mut data = Vec::with_capacity(rows * m);
    for y in ys {
        for _ in 0..s {
            data.extend_from_slice(y);
        }
    }
    solver.set_data(ctx, &data)?;
    let mut vp = ViParams::new(family, d, rows, settings.seed, m, pb.sigma_n);
    vp.per_row = 1;
    vp.grad_scale = (1.0 / s as f64) as f32;
    vp.kl_scale = (1.0 / s as f64) as f32;
    let sr = SampleRows::new(ctx, "refine", &theta, &grad, f, s, np)?;
    let mut block = GaussianBlock::new(
        ctx,
        "refine",
        family,
        vp,
        GaussianBuffers {
            theta: &sr.theta_rows,
            xi: &solver.xi,
            gxi: &solver.gxi,
            grad: &sr.grad_rows,
            kl: &kl,
        },
    )?;
    let mut ap = AdamParams::new(f * np, settings.lr);
    ap.beta2 = 0.99;
    let mut adam = Adam::new(ctx, "refine", ap, &theta, &grad)?;
    for t in 0..settings.steps {
        block.set_step(ctx, t as u32);
        adam.set_step(ctx, t as u32 + 1, crate::infer::vi::lr_at(settings, t));
        let mut enc = ctx.encoder("refine.step");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            sr.gather.record(&mut pass);
            block.record_sample(&mut pass);
        }
        solver.encode_forward(&mut enc);
        solver.encode_gradient(&mut enc);
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            block.record_backward(&mut pass);
            sr.sum.record(&mut pass);
            adam.record(&mut pass);
        }
        ctx.queue.submit([enc.finish()]);
    }
    let out: Vec<f32> = ctx.read(&theta, 0, f * np)?;
    let out: Vec<f64> = out.into_iter().map(f64::from).collect();
    if let Some(i) = out.iter().position(|v| !v.is_finite()) {
        return Err(Error::Diverged(format!(
            "batched refinement: the parameters of data set {} became non-finite; lower --lr (now {})",
            i / np,
            settings.lr
        )));
    }
    Ok(out.chunks_exact(np).map(|t| family.moments(d, t)).collect())
}
