//! Surrogate forward models (primer A3): an MLP `D_theta(xi) ≈ G(xi)` trained
//! on solver outputs (the sensor values, or the whole solution `u`),
//! optionally with a predicted log-variance, and Gaussian VI of every family
//! with the surrogate in the likelihood: samples go through the network,
//! the misfit and its output gradient come from `surrogate_misfit`, and the
//! MLP's backward pass gives `d misfit / d xi` for the reparameterised
//! gradient. The same noise, KL, gradient and Adam kernels as exact VI.

use std::path::{Path, PathBuf};

use bytemuck::{Pod, Zeroable};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::{args, Dispatch, GpuContext};
use crate::infer::adam::{Adam, AdamParams};
use crate::infer::amortised::Scaling;
use crate::infer::gaussian::{GaussianBlock, GaussianBuffers};
use crate::infer::vi::{lr_at, Family, FitResult, FitSettings, ViParams, HISTORY};
use crate::nn::dataset::SimSet;
use crate::nn::mlp::{Activation, Arch, Head, Layer, Loss, Mlp, Workspace};
use crate::nn::train::{train, Dataset, TrainReport, TrainSettings};
use crate::physics::problem::{Problem, ProblemArgs, ProblemKind};

/// The file in a surrogate folder that describes it.
pub const SURROGATE_JSON: &str = "surrogate.json";

/// `SurrogateParams` of shaders/infer/surrogate.wgsl (layout checked by tests/layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq)]
pub struct SurrogateParams {
    pub rows: u32,
    pub nobs: u32,
    pub width: u32,
    pub lv_off: u32,
    pub has_lv: u32,
    pub slot: u32,
    pub sigma2: f32,
    pub _pad: u32,
}

/// What a surrogate predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The sensor values of the training set.
    Sensors,
    /// The whole solution u (every unknown): any sensor layout.
    Field,
}

impl Target {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "sensors" => Ok(Target::Sensors),
            "field" => Ok(Target::Field),
            _ => Err(Error::setting("target", s, "expected sensors or field")),
        }
    }
}

/// Settings of [`train_surrogate`].
#[derive(Clone, Debug)]
pub struct SurrogateSettings {
    pub target: Target,
    pub hidden: Vec<usize>,
    pub act: Activation,
    /// Train a log-variance head (Gaussian NLL) besides the mean.
    pub variance: bool,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub lr_final: f64,
    pub seed: u64,
    pub val_rows: usize,
    pub patience: usize,
    pub quiet: bool,
    /// Checkpoints and resume.
    pub control: crate::nn::train::TrainControl,
}

impl Default for SurrogateSettings {
    fn default() -> Self {
        SurrogateSettings {
            target: Target::Sensors,
            hidden: vec![256, 256],
            act: Activation::Gelu,
            variance: false,
            epochs: 100,
            batch: 128,
            lr: 1e-3,
            lr_final: 0.05,
            seed: 0,
            val_rows: 0,
            patience: 15,
            quiet: true,
            control: Default::default(),
        }
    }
}

/// `surrogate.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SurrogateMeta {
    pub format: String,
    pub problem: ProblemKind,
    pub n: usize,
    pub d: usize,
    /// Training-set sensors (the outputs of a `sensors` surrogate).
    pub sensors: Vec<usize>,
    pub target: Target,
    pub variance: bool,
    pub hidden: Vec<usize>,
    pub activation: Activation,
    /// Scaling of the outputs (the network predicts standardised values).
    pub out_scaling: Scaling,
    pub training: serde_json::Value,
}

/// A trained surrogate.
pub struct Surrogate {
    pub meta: SurrogateMeta,
    pub net: Mlp,
}

/// The surrogate's architecture: `d -> hidden -> width` (plus log-variances).
pub fn surrogate_arch(
    d: usize,
    width: usize,
    s_hidden: &[usize],
    act: Activation,
    variance: bool,
) -> Arch {
    let mut layers: Vec<Layer> = s_hidden.iter().map(|&out| Layer { out, act }).collect();
    layers.push(Layer {
        out: if variance { 2 * width } else { width },
        act: Activation::Identity,
    });
    Arch {
        input: d,
        layers,
        head: if variance {
            Head::MeanLogvar { dim: width }
        } else {
            Head::Plain
        },
    }
}

/// Train a surrogate on `set` (the field target needs a set written with `--field`).
pub fn train_surrogate(
    ctx: &GpuContext,
    set: &SimSet,
    s: &SurrogateSettings,
) -> Result<(Surrogate, TrainReport)> {
    let d = set.settings.d;
    let (targets, width) = match s.target {
        Target::Sensors => (set.y.clone(), set.m()),
        Target::Field => match &set.u {
            Some(u) => (u.clone(), u.len() / set.count()),
            None => {
                return Err(Error::setting(
                    "target",
                    "field",
                    "the training set holds no field u: simulate it with --field",
                ))
            }
        },
    };
    let n = set.count();
    let val_rows = set.validation_rows(s.val_rows, s.batch)?;
    let out_scaling = Scaling::fit(&targets, width, &vec![0.0; width]);
    let all = Dataset::new(set.xi.clone(), out_scaling.apply(&targets), d, width)?;
    let (tr, val) = all.split(val_rows)?;
    let arch = surrogate_arch(d, width, &s.hidden, s.act, s.variance);
    let mut net = Mlp::new(ctx, arch, None, s.seed)?;
    let ts = TrainSettings {
        loss: if s.variance {
            Loss::GaussNll
        } else {
            Loss::Mse
        },
        epochs: s.epochs,
        batch: s.batch,
        lr: s.lr,
        lr_final: s.lr_final,
        clip_norm: 10.0,
        seed: s.seed,
        patience: s.patience,
        quiet: s.quiet,
        control: s.control.clone(),
        ..Default::default()
    };
    let rep = train(ctx, &mut net, &tr, Some(&val), &ts)?;
    let meta = SurrogateMeta {
        format: "pdevi-surrogate".into(),
        problem: set.settings.problem,
        n: set.settings.n,
        d,
        sensors: set.settings.sensors.clone(),
        target: s.target,
        variance: s.variance,
        hidden: s.hidden.clone(),
        activation: s.act,
        out_scaling,
        training: serde_json::json!({
            "set_count": n, "set_seed": set.settings.seed, "validation_rows": val_rows,
            "epochs": s.epochs, "epochs_run": rep.epochs, "best_epoch": rep.best_epoch,
            "batch": s.batch, "lr": s.lr, "lr_final": s.lr_final, "seed": s.seed,
            "best_val_loss": rep.val_loss.get(rep.best_epoch).copied().unwrap_or(f64::NAN),
            "seconds": rep.seconds,
        }),
    };
    Ok((Surrogate { meta, net }, rep))
}

impl Surrogate {
    /// Outputs per row (without the log-variances).
    pub fn width(&self) -> usize {
        self.meta.out_scaling.mean.len()
    }

    pub fn problem(&self) -> Result<Problem> {
        ProblemArgs {
            kind: self.meta.problem,
            n: Some(self.meta.n),
            d: Some(self.meta.d),
        }
        .build()
    }

    pub fn save(&self, ctx: &GpuContext, dir: &Path) -> Result<()> {
        crate::output::files::ensure_dir(dir)?;
        self.net.save(ctx, &dir.join("net"))?;
        crate::output::files::write_json(&dir.join(SURROGATE_JSON), &self.meta)
    }

    pub fn load(ctx: &GpuContext, dir: &Path) -> Result<Surrogate> {
        let path: PathBuf = dir.join(SURROGATE_JSON);
        let meta: SurrogateMeta =
            crate::output::files::read_json(&path, "a pdevi surrogate description")?;
        crate::output::files::check_format(&path, &meta.format, "pdevi-surrogate")?;
        let net = Mlp::load(ctx, &dir.join("net"))?;
        let width = meta.out_scaling.mean.len();
        let want = surrogate_arch(meta.d, width, &meta.hidden, meta.activation, meta.variance);
        if net.arch != want || meta.out_scaling.sd.len() != width {
            return Err(Error::Format {
                path,
                message: "the network does not have the architecture surrogate.json describes"
                    .into(),
            });
        }
        Ok(Surrogate { meta, net })
    }

    /// Output column of each observed unknown index, or an error naming the
    /// first sensor the surrogate cannot predict.
    pub fn columns(&self, sensors: &[usize]) -> Result<Vec<u32>> {
        sensors
            .iter()
            .map(|&s| match self.meta.target {
                Target::Field => {
                    if s < self.width() {
                        Ok(s as u32)
                    } else {
                        Err(Error::setting("sensor", s, "is off the surrogate's grid"))
                    }
                }
                Target::Sensors => self
                    .meta
                    .sensors
                    .iter()
                    .position(|&k| k == s)
                    .map(|p| p as u32)
                    .ok_or_else(|| {
                        Error::setting(
                            "sensor",
                            s,
                            "is not one of the sensors this surrogate predicts (train one with --target field for other layouts)",
                        )
                    }),
            })
            .collect()
    }
}

/// The surrogate as the forward model of `rows` samples: inputs `ws.x`
/// (`rows x d`), then its forward pass, the misfit per row (`misfit`) and,
/// when asked, `d misfit / d xi` in `ws.dx` by the backward pass. `states`
/// holds one converged solver state per row, for kernels that check the
/// exact solver's convergence.
pub struct SurrogateForward {
    pub ws: Workspace,
    pub misfit: wgpu::Buffer,
    pub states: wgpu::Buffer,
    lik: Dispatch,
    _bufs: Vec<wgpu::Buffer>,
}

impl SurrogateForward {
    /// `sensors` (unknown indices) and `y` are the observations, `sigma`
    /// their noise; `add_variance` adds the surrogate's predicted variance.
    #[allow(clippy::too_many_arguments, reason = "one likelihood's inputs")]
    pub fn new(
        ctx: &GpuContext,
        sur: &Surrogate,
        rows: usize,
        sensors: &[usize],
        y: &[f64],
        sigma: f64,
        add_variance: bool,
    ) -> Result<Self> {
        if add_variance && !sur.meta.variance {
            return Err(Error::setting(
                "surrogate-variance",
                "on",
                "this surrogate has no variance head (train it with --variance)",
            ));
        }
        if let Some(v) = y.iter().find(|v| !v.is_finite()) {
            return Err(Error::setting("data", v, "observations must be finite"));
        }
        let cols = sur.columns(sensors)?;
        if y.len() != cols.len() {
            return Err(Error::setting(
                "data",
                y.len(),
                format!("expected one value per sensor ({})", cols.len()),
            ));
        }
        let ws = Workspace::new(ctx, &sur.net, rows, Loss::External)?;
        let misfit = ctx.storage("surrogate.misfit", (rows.max(4) * 4) as u64)?;
        let st = crate::gpu::layout::CgState {
            status: crate::gpu::layout::status::CONVERGED,
            ..Default::default()
        };
        let states = ctx.upload("surrogate.states", &vec![st; rows])?;
        let width = sur.width();
        let sc = &sur.meta.out_scaling;
        let mut obs: Vec<f32> = y.iter().map(|&v| v as f32).collect();
        obs.extend(cols.iter().map(|&c| sc.mean[c as usize] as f32));
        obs.extend(cols.iter().map(|&c| sc.sd[c as usize] as f32));
        let obs_buf = ctx.upload("surrogate.obs", &obs)?;
        let col_buf = ctx.upload("surrogate.cols", &cols)?;
        let p = SurrogateParams {
            rows: rows as u32,
            nobs: cols.len() as u32,
            width: if sur.meta.variance { 2 * width } else { width } as u32,
            lv_off: width as u32,
            has_lv: add_variance as u32,
            slot: 0,
            sigma2: (sigma * sigma) as f32,
            _pad: 0,
        };
        let u = ctx.uniform("surrogate.params", &p);
        let lik = ctx.prepare(
            &args::SurrogateMisfit {
                params: &u,
                outputs: ws.output(),
                obs: &obs_buf,
                col: &col_buf,
                grad: ws.output_grad(),
                misfit: &misfit,
            },
            [rows, 1],
        )?;
        Ok(SurrogateForward {
            ws,
            misfit,
            states,
            lik,
            _bufs: vec![obs_buf, col_buf, u],
        })
    }

    /// Forward pass and misfit; with `gradient`, also `d misfit / d xi`.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>, gradient: bool) {
        self.ws.encode_forward(pass);
        self.lik.record(pass);
        if gradient {
            self.ws.encode_backward(pass, true);
        }
    }
}

/// Gaussian VI with the surrogate in the likelihood.
pub struct SurrogateVi {
    pub family: Family,
    pub d: usize,
    pub samples: usize,
    pub gaussian: GaussianBlock,
    pub adam: Adam,
    pub fwd: SurrogateForward,
    pub theta: wgpu::Buffer,
    pub grad: wgpu::Buffer,
    pub scalars: wgpu::Buffer,
    elbo: Dispatch,
}

impl SurrogateVi {
    /// `sensors` (unknown indices) and `y` are the observations, `sigma`
    /// their noise; `add_variance` adds the surrogate's predicted variance.
    #[allow(clippy::too_many_arguments, reason = "the settings of one inference")]
    pub fn new(
        ctx: &GpuContext,
        sur: &Surrogate,
        family: Family,
        samples: usize,
        sensors: &[usize],
        y: &[f64],
        sigma: f64,
        add_variance: bool,
        seed: u64,
    ) -> Result<Self> {
        if samples == 0 {
            return Err(Error::setting(
                "samples",
                0,
                "need at least one sample per step",
            ));
        }
        let d = sur.meta.d;
        let fwd = SurrogateForward::new(ctx, sur, samples, sensors, y, sigma, add_variance)?;
        let np = family.nparam(d);
        let vp = ViParams::new(family, d, samples, seed, sensors.len(), sigma);
        let mut ap = AdamParams::new(np, 0.01);
        ap.beta2 = 0.99;
        let theta0: Vec<f32> = family
            .init_theta(d, seed)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let theta = ctx.upload("svi.theta", &theta0)?;
        let grad = ctx.storage("svi.grad", (np * 4) as u64)?;
        let scalars = ctx.storage("svi.scalars", ((4 + HISTORY) * 4) as u64)?;
        let gaussian = GaussianBlock::new(
            ctx,
            "svi",
            family,
            vp,
            GaussianBuffers {
                theta: &theta,
                xi: &fwd.ws.x,
                gxi: &fwd.ws.dx,
                grad: &grad,
                kl: &scalars,
            },
        )?;
        let elbo = ctx.prepare(
            &args::ViElbo {
                params: &gaussian.params_buf,
                misfit: &fwd.misfit,
                scalars: &scalars,
            },
            [1, 1],
        )?;
        let adam = Adam::new(ctx, "svi", ap, &theta, &grad)?;
        Ok(SurrogateVi {
            family,
            d,
            samples,
            gaussian,
            adam,
            fwd,
            theta,
            grad,
            scalars,
            elbo,
        })
    }

    pub fn set_theta(&self, ctx: &GpuContext, theta: &[f64]) -> Result<()> {
        if theta.len() != self.family.nparam(self.d) {
            return Err(Error::setting(
                "theta",
                theta.len(),
                "wrong number of variational parameters",
            ));
        }
        ctx.write(
            &self.theta,
            &theta.iter().map(|&v| v as f32).collect::<Vec<f32>>(),
        );
        self.adam.reset(ctx);
        Ok(())
    }

    /// Record sample, surrogate forward, misfit, backward to xi, the
    /// Gaussian's gradient and the ELBO.
    pub fn encode_elbo(&self, pass: &mut wgpu::ComputePass<'_>) {
        self.gaussian.record_sample(pass);
        self.fwd.record(pass, true);
        self.gaussian.record_backward(pass);
        self.elbo.record(pass);
    }

    /// ELBO and gradient at the current parameters for `step`'s noise.
    pub fn evaluate(&mut self, ctx: &GpuContext, step: u32) -> Result<()> {
        self.gaussian.set_step(ctx, step);
        let mut enc = ctx.encoder("pdevi.svi.evaluate");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            self.encode_elbo(&mut pass);
        }
        ctx.submit_wait(enc)
    }

    /// One Adam step: one encoder, one submit.
    pub fn step(&mut self, ctx: &GpuContext, step: u32, lr: f64) {
        self.gaussian.set_step(ctx, step);
        self.adam.set_step(ctx, step + 1, lr);
        let mut enc = ctx.encoder("pdevi.svi.step");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            self.encode_elbo(&mut pass);
            self.adam.record(&mut pass);
        }
        ctx.queue.submit([enc.finish()]);
    }

    pub fn read_theta(&self, ctx: &GpuContext) -> Result<Vec<f64>> {
        let v: Vec<f32> = ctx.read(&self.theta, 0, self.family.nparam(self.d))?;
        Ok(v.into_iter().map(f64::from).collect())
    }

    pub fn read_grad(&self, ctx: &GpuContext) -> Result<Vec<f64>> {
        let v: Vec<f32> = ctx.read(&self.grad, 0, self.family.nparam(self.d))?;
        Ok(v.into_iter().map(f64::from).collect())
    }

    /// [KL, ELBO, mean misfit] of the last evaluation.
    pub fn read_scalars(&self, ctx: &GpuContext) -> Result<[f64; 3]> {
        let v: Vec<f32> = ctx.read(&self.scalars, 0, 3)?;
        Ok([v[0] as f64, v[1] as f64, v[2] as f64])
    }

    /// Run `s.steps` Adam steps, reading the ELBO ring every `report_every`.
    pub fn fit(
        &mut self,
        ctx: &GpuContext,
        s: &FitSettings,
        progress: impl FnMut(usize, f64),
    ) -> Result<FitResult> {
        let scalars = self.scalars.clone();
        let (trace, seconds, interrupted) = crate::infer::vi::step_loop(
            ctx,
            s,
            &scalars,
            |t| self.step(ctx, t as u32, lr_at(s, t)),
            progress,
            |step, e| {
                Error::Diverged(format!(
                    "the surrogate ELBO became {e} at step {step}: lower the learning rate (--lr, now {:.3e})",
                    lr_at(s, step)
                ))
            },
        )?;
        Ok(FitResult {
            theta: self.read_theta(ctx)?,
            trace,
            seconds,
            mean_cg_iters: 0.0,
            mean_cg_tol: None,
            unconverged_solves: 0,
            interrupted,
        })
    }
}
