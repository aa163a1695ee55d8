//! Residual-based inference (methods.md B6-B7): the data-free probabilistic
//! solver `q_phi(u | xi) = N(mu(xi), diag s(xi)^2)` over darcy2d's interior
//! nodal values, trained on prior draws of `xi` only by maximising
//! `E_p(xi) E_q[log p(r_hat = 0 | u, z(xi))] + H[q]`; optionally with the
//! inverse map `p_theta(xi | u)` of the two-way model learned beside it
//! from the solver's own draws.
//!
//! Every step is one command encoder: the KL map of the minibatch's `xi`
//! (the engine's `kl_map`), the network's forward pass, `residual_loss`
//! (the residual, its likelihood, the entropy and the head gradient:
//! shaders/physics/residual.wgsl), the backward pass and Adam; with the
//! two-way model, the inverse network's step on the same draws. No CG
//! solve is used in training.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::layout::{PdeParams, ResidualParams};
use crate::gpu::{args, Dispatch, GpuContext};
use crate::nn::mlp::{slot, Activation, Arch, Head, Loss, Mlp, Workspace};
use crate::nn::train::{Dataset, StepExtra, TrainControl, TrainReport, TrainSettings};
use crate::physics::problem::{Problem, ProblemKind};

/// Which weighting of the residual the likelihood uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResidualForm {
    /// `N(0; r, sigma_r^2 A)`: the Ritz energy `E(u) - E*` over `sigma_r^2`.
    /// Its Hessian in `u` is `A` (condition ~ n^2).
    Energy,
    /// `N(0; r, sigma_r^2 I)`, the raw nodal residual. Its Hessian is `A^2`
    /// (condition ~ n^4; the residual's scale spans h^2 to 8).
    Raw,
}

impl ResidualForm {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "energy" | "ritz" => Ok(ResidualForm::Energy),
            "raw" => Ok(ResidualForm::Raw),
            other => Err(Error::setting(
                "form",
                other,
                "expected energy (the Ritz form, default) or raw",
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ResidualForm::Energy => "energy",
            ResidualForm::Raw => "raw",
        }
    }

    fn code(self) -> u32 {
        match self {
            ResidualForm::Energy => 0,
            ResidualForm::Raw => 1,
        }
    }
}

/// What the network's Gaussian head is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResidualBasis {
    /// The interior nodal values: q(u) = N(mu, diag s^2) node by node.
    Nodal,
    /// All (n-1)^2 sine modes, scaled by the inverse square root of the
    /// constant-coefficient operator's eigenvalues: q over the coefficients
    /// is mean-field, u's covariance is not; the energy's Hessian in the
    /// coefficients is near the identity (energy form only).
    Spectral,
}

impl ResidualBasis {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "nodal" => Ok(ResidualBasis::Nodal),
            "spectral" | "sine" => Ok(ResidualBasis::Spectral),
            other => Err(Error::setting(
                "basis",
                other,
                "expected nodal (default) or spectral",
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ResidualBasis::Nodal => "nodal",
            ResidualBasis::Spectral => "spectral",
        }
    }
}

/// Settings of [`train_residual`].
#[derive(Clone, Debug)]
pub struct ResidualSettings {
    /// The residual's noise level sigma_r.
    pub sigma_r: f64,
    pub form: ResidualForm,
    pub basis: ResidualBasis,
    /// Nodal basis: the mean is `u0 exp(output)` (u0 the kappa = 1
    /// solution), so the field's overall level is a shift of the outputs;
    /// false: `u_scale output`.
    pub log_mean: bool,
    /// One reparameterised draw per row and step instead of the closed-form
    /// expectation under q (nodal basis; the spectral kernel's mean gradient
    /// is exact and its spread's gradient always uses one draw).
    pub sampled: bool,
    pub hidden: Vec<usize>,
    pub act: Activation,
    pub epochs: usize,
    /// Prior draws per epoch (fresh every epoch).
    pub rows: usize,
    pub batch: usize,
    pub lr: f64,
    pub lr_final: f64,
    pub seed: u64,
    /// Learn the inverse map p_theta(xi | u) beside the solver (B7).
    pub two_way: bool,
    pub inverse_hidden: Vec<usize>,
    pub quiet: bool,
    pub control: TrainControl,
}

impl Default for ResidualSettings {
    fn default() -> Self {
        ResidualSettings {
            sigma_r: 1e-3,
            form: ResidualForm::Energy,
            basis: ResidualBasis::Nodal,
            log_mean: true,
            sampled: false,
            hidden: vec![256, 256],
            act: Activation::Tanh,
            // 20800 steps: darcy2d n = 32, d = 32 in 13 minutes on lavapipe
            // (2 cores), 1.9 % mean error on held-out draws.
            epochs: 1300,
            rows: 1024,
            batch: 64,
            lr: 1e-2,
            lr_final: 0.01,
            seed: 0,
            two_way: false,
            inverse_hidden: vec![256, 256],
            quiet: true,
            control: TrainControl::default(),
        }
    }
}

/// What a trained solver needs besides its weights (written as
/// `residual.json` beside them).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResidualMeta {
    pub problem: String,
    pub n: usize,
    pub d: usize,
    pub sigma_r: f64,
    pub form: ResidualForm,
    pub basis: ResidualBasis,
    /// Nodal: mu = u0 exp(output) (u0 the kappa = 1 solution).
    #[serde(default)]
    pub log_mean: bool,
    pub sampled: bool,
    /// mu = u_scale * the network's mean output (nodal), or the mean
    /// coefficients are u_scale * D * the output (spectral).
    pub u_scale: f64,
    /// The inverse map's input is a field divided by this (max u at z = 0).
    pub in_scale: f64,
    /// log s^2 = the network's log-variance output + lv0.
    pub lv0: f64,
    /// Whether `inverse.safetensors` holds the two-way model's inverse map.
    pub two_way: bool,
}

/// The output scale: the largest value of the z = 0 solution `u0` (0.0737
/// on the unit square), so the network's outputs are O(1).
pub fn output_scale(u0: &[f64]) -> f64 {
    u0.iter().cloned().fold(0.0, f64::max).max(1e-12)
}

/// The kappa = 1 solution at the interior nodes (the log-mean's shape; the
/// scales are taken from it too), one f64 solve.
pub fn mean_shape(pb: &Problem) -> Vec<f64> {
    crate::physics::reference::forward(pb, &vec![0.0; pb.d], 1e-10, 100_000).u
}

/// The log-variance offset: the optimal log s^2 of an interior node at
/// kappa = 1 (s^2 = sigma_r^2 / A_kk for the energy form, sigma_r^2 /
/// (A^2)_kk for the raw one), so an output of 0 is already the right spread.
pub fn lv_offset(pb: &Problem, sigma_r: f64, form: ResidualForm) -> f64 {
    let ones = vec![1.0; pb.ncoef()];
    let k = (pb.n / 2 - 1) * (pb.n - 1) + pb.n / 2 - 1;
    let a = match form {
        ResidualForm::Energy => crate::cpu::physics::q1_op_diag(pb.n, &ones, k),
        ResidualForm::Raw => crate::cpu::residual::op_row_sq(pb.n, &ones, k),
    };
    (sigma_r * sigma_r / a).ln()
}

/// The spectral weights D = lambda^{-1/2} (constant-coefficient eigenvalues).
pub fn spectral_scale(n: usize) -> Vec<f64> {
    crate::cpu::residual::laplace_eigenvalues(n)
        .iter()
        .map(|l| 1.0 / l.sqrt())
        .collect()
}

/// The spectral output scale: the first sine coefficient of the z = 0
/// solution `u0` over its weight, so that output is 1 at z = 0.
pub fn spectral_output_scale(pb: &Problem, u0: &[f64]) -> f64 {
    let s = crate::cpu::residual::dst_matrix(pb.n);
    let c = crate::cpu::residual::dst2(pb.n, &s, u0);
    c[0] / spectral_scale(pb.n)[0]
}

impl ResidualMeta {
    pub fn new(pb: &Problem, s: &ResidualSettings) -> Self {
        Self::with_shape(pb, s, &mean_shape(pb))
    }

    /// [`ResidualMeta::new`] with the z = 0 solution `u0` already computed.
    pub fn with_shape(pb: &Problem, s: &ResidualSettings, u0: &[f64]) -> Self {
        let in_scale = output_scale(u0);
        let (u_scale, lv0) = match s.basis {
            ResidualBasis::Nodal => (in_scale, lv_offset(pb, s.sigma_r, s.form)),
            // At kappa = 1 the coefficients' optimal variance is sigma_r^2.
            ResidualBasis::Spectral => {
                (spectral_output_scale(pb, u0), (s.sigma_r * s.sigma_r).ln())
            }
        };
        ResidualMeta {
            problem: pb.kind.name().to_string(),
            n: pb.n,
            d: pb.d,
            sigma_r: s.sigma_r,
            form: s.form,
            basis: s.basis,
            log_mean: s.log_mean && s.basis == ResidualBasis::Nodal,
            sampled: s.sampled,
            u_scale,
            in_scale,
            lv0,
            two_way: s.two_way,
        }
    }

    /// The kernel's parameter block for `rows` minibatch rows.
    pub fn params(&self, rows: usize, seed: u64) -> ResidualParams {
        ResidualParams {
            sigma_inv2: (1.0 / (self.sigma_r * self.sigma_r)) as f32,
            u_scale: self.u_scale as f32,
            lv0: self.lv0 as f32,
            grad_scale: (1.0 / rows as f64) as f32,
            form: self.form.code(),
            sampled: self.sampled as u32,
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            step: 0,
            stream: crate::rng::streams::RESIDUAL,
            in_scale: self.in_scale as f32,
            nunk: ((self.n - 1) * (self.n - 1)) as u32,
            m: (self.n - 1) as u32,
            log_mean: self.log_mean as u32,
            _pad: [0; 2],
        }
    }
}

/// Checks the settings against the problem.
pub fn check_settings(pb: &Problem, s: &ResidualSettings) -> Result<()> {
    if pb.kind != ProblemKind::Darcy2d {
        return Err(Error::setting(
            "problem",
            pb.kind.name(),
            "the residual-trained solver is built for darcy2d (its Q1 residual kernel)",
        ));
    }
    if !(s.sigma_r.is_finite() && s.sigma_r > 0.0) {
        return Err(Error::setting(
            "sigma-r",
            s.sigma_r,
            "must be a positive, finite noise level of the residual (e.g. 1e-3)",
        ));
    }
    if s.basis == ResidualBasis::Spectral && s.form != ResidualForm::Energy {
        return Err(Error::setting(
            "form",
            s.form.name(),
            "the spectral basis is preconditioned for the energy form: use --form energy or --basis nodal",
        ));
    }
    if s.rows == 0 || s.batch == 0 || s.batch > s.rows {
        return Err(Error::setting(
            "batch",
            s.batch,
            format!("must be in 1..={} (--rows, the draws per epoch)", s.rows),
        ));
    }
    Ok(())
}

/// The solver network: `d -> hidden -> 2 nunk` (means, then log-variances).
pub fn solver_arch(pb: &Problem, hidden: &[usize], act: Activation) -> Arch {
    let nu = pb.nunk();
    let mut a = Arch::mlp(pb.d, hidden, act, 2 * nu);
    a.head = Head::MeanLogvar { dim: nu };
    a
}

/// The inverse network of the two-way model: `nunk -> hidden -> 2 d`.
pub fn inverse_arch(pb: &Problem, hidden: &[usize], act: Activation) -> Arch {
    let mut a = Arch::mlp(pb.nunk(), hidden, act, 2 * pb.d);
    a.head = Head::MeanLogvar { dim: pb.d };
    a
}

/// The inverse network's training state inside [`ResidualTerm`].
struct InverseParts {
    net: Mlp,
    ws: Workspace,
    lr: f64,
    lr_final: f64,
    epochs: usize,
    epoch: usize,
    steps_per_epoch: usize,
    /// Mean loss (-log p_theta(xi | u) per row) of each finished epoch.
    losses: Vec<f64>,
}

/// The residual term recorded into every training step of the solver.
pub struct ResidualTerm {
    pb: Problem,
    /// The z = 0 solution (the nodal log-mean's shape).
    shape: Vec<f64>,
    basis: ResidualBasis,
    rp: ResidualParams,
    batch: usize,
    parts: Option<TermParts>,
    inverse: Option<InverseParts>,
}

struct TermParts {
    rp_buf: wgpu::Buffer,
    kl: Dispatch,
    loss: Dispatch,
    work: wgpu::Buffer,
    x: wgpu::Buffer,
    _bufs: Vec<wgpu::Buffer>,
}

impl ResidualTerm {
    pub fn new(
        pb: &Problem,
        meta: &ResidualMeta,
        shape: Vec<f64>,
        batch: usize,
        seed: u64,
    ) -> Self {
        ResidualTerm {
            pb: pb.clone(),
            shape,
            basis: meta.basis,
            rp: meta.params(batch, seed),
            batch,
            parts: None,
            inverse: None,
        }
    }

    /// Train the inverse network `net` on the solver's draws as well.
    pub fn with_inverse(
        mut self,
        ctx: &GpuContext,
        net: Mlp,
        s: &ResidualSettings,
    ) -> Result<Self> {
        let ws = Workspace::new(ctx, &net, self.batch, Loss::GaussNll)?;
        self.inverse = Some(InverseParts {
            net,
            ws,
            lr: s.lr,
            lr_final: s.lr_final,
            epochs: s.epochs,
            epoch: 0,
            steps_per_epoch: s.rows / s.batch,
            losses: Vec::new(),
        });
        Ok(self)
    }

    fn read_inverse_loss(&mut self, ctx: &GpuContext) -> Result<()> {
        if let Some(inv) = self.inverse.as_mut() {
            let l = inv.ws.read_loss(ctx, slot::TRAIN)?;
            inv.losses.push(l);
        }
        Ok(())
    }

    /// The inverse network and its per-epoch losses, after training.
    fn take_inverse(&mut self, ctx: &GpuContext) -> Result<Option<(Mlp, Vec<f64>)>> {
        if self.inverse.is_some() {
            self.read_inverse_loss(ctx)?;
        }
        Ok(self.inverse.take().map(|i| (i.net, i.losses)))
    }
}

impl StepExtra for ResidualTerm {
    fn attach(&mut self, ctx: &GpuContext, ws: &Workspace) -> Result<()> {
        let pb = &self.pb;
        let (nu, nc, b) = (pb.nunk(), pb.ncoef(), self.batch);
        let pp = PdeParams::new(pb.n, nu, nc, b, pb.d);
        let u_pde = ctx.uniform("residual.pde", &pp);
        let basis = ctx.upload("residual.basis", &crate::nn::mlp::to_f32(&pb.basis()))?;
        let z = ctx.storage("residual.z", (b * nc * 4) as u64)?;
        let kappa = ctx.storage("residual.kappa", (b * nc * 4) as u64)?;
        let planes = match self.basis {
            ResidualBasis::Nodal => 4,
            ResidualBasis::Spectral => 8,
        };
        let work = ctx.storage("residual.work", (planes * b * nu * 4) as u64)?;
        let rp_buf = ctx.upload("residual.rp", &[self.rp])?;
        let kl = ctx.prepare(
            &args::KlMap {
                params: &u_pde,
                xi: &ws.x,
                basis: &basis,
                z: &z,
                kappa_or_load: &kappa,
            },
            crate::physics::solver::kl_map_extent(nc, b),
        )?;
        let mut bufs = vec![];
        let loss = match self.basis {
            ResidualBasis::Nodal => {
                let shape = ctx.upload("residual.shape", &crate::nn::mlp::to_f32(&self.shape))?;
                let d = ctx.prepare(
                    &args::ResidualLoss {
                        params: &u_pde,
                        rp: &rp_buf,
                        coef: &kappa,
                        head: ws.output(),
                        work: &work,
                        grad: ws.output_grad(),
                        losses: &ws.losses,
                        shape: &shape,
                    },
                    [b, 1],
                )?;
                bufs.push(shape);
                d
            }
            ResidualBasis::Spectral => {
                let to32 = crate::nn::mlp::to_f32;
                let dst = ctx.upload(
                    "residual.dst",
                    &to32(&crate::cpu::residual::dst_matrix(pb.n)),
                )?;
                let dscale = ctx.upload("residual.dscale", &to32(&spectral_scale(pb.n)))?;
                let d = ctx.prepare(
                    &args::ResidualLossSpectral {
                        params: &u_pde,
                        rp: &rp_buf,
                        coef: &kappa,
                        head: ws.output(),
                        work: &work,
                        grad: ws.output_grad(),
                        losses: &ws.losses,
                        dst: &dst,
                        dscale: &dscale,
                    },
                    [b, 1],
                )?;
                bufs.extend([dst, dscale]);
                d
            }
        };
        if let Some(inv) = self.inverse.as_mut() {
            inv.ws
                .set_reduce(ctx, slot::TRAIN, 1.0 / inv.steps_per_epoch as f64, true);
        }
        let x = ws.x.clone();
        self.parts = Some(TermParts {
            rp_buf,
            kl,
            loss,
            work,
            x,
            _bufs: {
                bufs.extend([u_pde, basis, z, kappa]);
                bufs
            },
        });
        Ok(())
    }

    fn begin_epoch(&mut self, ctx: &GpuContext, epoch: usize, _perm: &[u32]) -> Result<()> {
        if epoch > 0
            && self
                .inverse
                .as_ref()
                .is_some_and(|i| i.losses.len() < epoch)
        {
            self.read_inverse_loss(ctx)?;
        }
        if let Some(inv) = self.inverse.as_mut() {
            inv.epoch = epoch;
            ctx.write(&inv.ws.losses, &[0f32; 9]);
        }
        Ok(())
    }

    fn set_step(&mut self, ctx: &GpuContext, _b: usize, step: u32) {
        self.rp.step = step;
        if let Some(p) = &self.parts {
            ctx.write(&p.rp_buf, &[self.rp]);
        }
        if let Some(inv) = self.inverse.as_mut() {
            let decay = inv
                .lr_final
                .powf(inv.epoch as f64 / (inv.epochs.max(2) - 1) as f64);
            inv.net.prepare_adam(ctx, step, inv.lr * decay);
        }
    }

    fn record(&self, enc: &mut wgpu::CommandEncoder) {
        let Some(p) = &self.parts else { return };
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            p.kl.record(&mut pass);
            p.loss.record(&mut pass);
        }
        if let Some(inv) = &self.inverse {
            // The inverse map learns xi from the solver's draw of u (plane 3,
            // already divided by u_scale): (u, xi) pairs of the generative model.
            let (nu, d, b) = (self.pb.nunk(), self.pb.d, self.batch);
            let plane = (3 * b * nu * 4) as u64;
            enc.copy_buffer_to_buffer(&p.work, plane, &inv.ws.x, 0, (b * nu * 4) as u64);
            enc.copy_buffer_to_buffer(&p.x, 0, &inv.ws.t, 0, (b * d * 4) as u64);
            let mut pass = enc.begin_compute_pass(&Default::default());
            inv.ws.encode_forward(&mut pass);
            inv.ws.encode_loss(&mut pass);
            inv.ws.encode_backward(&mut pass, false);
            inv.net.encode_adam(&mut pass);
        }
    }

    fn state_buffers(&self) -> crate::output::checkpoint::Buffers<'_> {
        match &self.inverse {
            Some(inv) => {
                let mut b = vec![("inverse.params", &inv.net.params)];
                b.extend(
                    inv.net
                        .adam
                        .state_buffers()
                        .into_iter()
                        .map(|(n, buf)| match n {
                            "adam.m1" => ("inverse.adam.m1", buf),
                            "adam.m2" => ("inverse.adam.m2", buf),
                            _ => ("inverse.adam.clip", buf),
                        }),
                );
                b
            }
            None => Vec::new(),
        }
    }

    fn accumulates(&self) -> bool {
        false
    }
}

/// A trained residual solver (and, for the two-way model, its inverse map).
pub struct ResidualSolver {
    pub pb: Problem,
    pub meta: ResidualMeta,
    /// The z = 0 solution (interior nodes), computed once.
    pub shape: Vec<f64>,
    pub net: Mlp,
    pub inverse: Option<Mlp>,
}

/// What [`train_residual`] did.
pub struct ResidualReport {
    pub train: TrainReport,
    /// Mean -log p_theta(xi | u) per epoch of the inverse map (two-way only).
    pub inverse_loss: Vec<f64>,
}

/// Train the data-free solver (and the inverse map with `s.two_way`).
pub fn train_residual(
    ctx: &GpuContext,
    pb: &Problem,
    s: &ResidualSettings,
) -> Result<(ResidualSolver, ResidualReport)> {
    check_settings(pb, s)?;
    let shape = mean_shape(pb);
    let meta = ResidualMeta::with_shape(pb, s, &shape);
    let arch = solver_arch(pb, &s.hidden, s.act);
    let mut net = Mlp::new(ctx, arch, None, s.seed)?;
    let rows = s.rows - s.rows % s.batch;
    // Inputs are zeros plus unit noise drawn afresh every epoch: fresh
    // prior draws xi ~ N(0, I) (the trainer's input noise), no data.
    let data = Dataset::new(vec![0.0; rows * pb.d], vec![0.0; rows], pb.d, 1)?;
    let ts = TrainSettings {
        loss: Loss::External,
        epochs: s.epochs,
        batch: s.batch,
        lr: s.lr,
        lr_final: s.lr_final,
        seed: s.seed,
        quiet: s.quiet,
        input_noise: Some(vec![1.0; pb.d]),
        control: s.control.clone(),
        ..Default::default()
    };
    let mut term = ResidualTerm::new(pb, &meta, shape.clone(), s.batch, s.seed);
    if s.two_way {
        let ia = inverse_arch(pb, &s.inverse_hidden, s.act);
        let inv = Mlp::new(ctx, ia, None, s.seed ^ 0x1357)?;
        term = term.with_inverse(ctx, inv, s)?;
    }
    let train = crate::nn::train::train_with(ctx, &mut net, &data, None, &ts, Some(&mut term))?;
    let (inverse, inverse_loss) = match term.take_inverse(ctx)? {
        Some((n, l)) => (Some(n), l),
        None => (None, Vec::new()),
    };
    Ok((
        ResidualSolver {
            shape,
            pb: pb.clone(),
            meta,
            net,
            inverse,
        },
        ResidualReport {
            train,
            inverse_loss,
        },
    ))
}

impl ResidualSolver {
    /// Save into `dir`: `solver.{safetensors,json}`, `residual.json` and,
    /// for the two-way model, `inverse.{safetensors,json}`.
    pub fn save(&self, ctx: &GpuContext, dir: &Path) -> Result<()> {
        crate::output::files::ensure_dir(dir)?;
        self.net.save(ctx, &dir.join("solver"))?;
        if let Some(inv) = &self.inverse {
            inv.save(ctx, &dir.join("inverse"))?;
        }
        let j = serde_json::to_value(&self.meta).map_err(|e| Error::Format {
            path: dir.join("residual.json"),
            message: e.to_string(),
        })?;
        crate::output::files::write_json(&dir.join("residual.json"), &j)
    }

    /// Load a solver written by [`ResidualSolver::save`].
    pub fn load(ctx: &GpuContext, dir: &Path) -> Result<Self> {
        let mp = dir.join("residual.json");
        let text = std::fs::read_to_string(&mp).map_err(|e| Error::Input {
            file: mp.clone(),
            line: 0,
            message: format!(
                "{e}: not a residual solver folder (train one with `pdevi train residual --out DIR`)"
            ),
        })?;
        let meta: ResidualMeta = serde_json::from_str(&text).map_err(|e| Error::Input {
            file: mp.clone(),
            line: e.line(),
            message: format!("not a residual solver description: {e}"),
        })?;
        let kind = ProblemKind::parse(&meta.problem)?;
        let pb = Problem::new(kind, meta.n, meta.d)?;
        let net = Mlp::load(ctx, &dir.join("solver"))?;
        let want = solver_arch(&pb, &[], Activation::Identity);
        if net.arch.input != pb.d || net.arch.output() != want.output() {
            return Err(Error::Format {
                path: dir.join("solver.json"),
                message: format!(
                    "the network maps {} -> {} values; n = {}, d = {} needs {} -> {}",
                    net.arch.input,
                    net.arch.output(),
                    meta.n,
                    meta.d,
                    pb.d,
                    want.output()
                ),
            });
        }
        let inverse = if meta.two_way {
            Some(Mlp::load(ctx, &dir.join("inverse"))?)
        } else {
            None
        };
        Ok(ResidualSolver {
            shape: mean_shape(&pb),
            pb,
            meta,
            net,
            inverse,
        })
    }

    /// Mean and standard deviation of u (interior unknowns, `B x nunk`
    /// each) for the rows of `xi` (`B x d`), in one forward pass.
    pub fn predict(&self, ctx: &GpuContext, xi: &[f64]) -> Result<(Vec<f64>, Vec<f64>)> {
        let b = xi.len() / self.pb.d;
        let ws = Workspace::new(ctx, &self.net, b, Loss::External)?;
        let out = ws.predict(ctx, xi)?;
        Ok(self.split(&out, b))
    }

    /// The head rows (`B x 2 nunk`) as u's mean and standard deviation
    /// (spectral: u = S D c, so std_k^2 = sum_c (S x S)_kc^2 D_c^2 s_c^2).
    pub fn split(&self, out: &[f64], b: usize) -> (Vec<f64>, Vec<f64>) {
        let nu = self.pb.nunk();
        let n = self.pb.n;
        let mut mean = Vec::with_capacity(b * nu);
        let mut sd = Vec::with_capacity(b * nu);
        let spectral = self.meta.basis == ResidualBasis::Spectral;
        let shape = &self.shape;
        let (s, s2, dsc) = if spectral {
            let s = crate::cpu::residual::dst_matrix(n);
            let s2: Vec<f64> = s.iter().map(|v| v * v).collect();
            (s, s2, spectral_scale(n))
        } else {
            (vec![], vec![], vec![])
        };
        for r in 0..b {
            let row = &out[r * 2 * nu..(r + 1) * 2 * nu];
            if spectral {
                let c: Vec<f64> = (0..nu)
                    .map(|k| dsc[k] * self.meta.u_scale * row[k])
                    .collect();
                let v: Vec<f64> = (0..nu)
                    .map(|k| dsc[k] * dsc[k] * (row[nu + k] + self.meta.lv0).exp())
                    .collect();
                mean.extend(crate::cpu::residual::dst2(n, &s, &c));
                sd.extend(
                    crate::cpu::residual::dst2(n, &s2, &v)
                        .into_iter()
                        .map(|x| x.max(0.0).sqrt()),
                );
            } else if self.meta.log_mean {
                mean.extend(row[..nu].iter().zip(shape).map(|(v, u0)| u0 * v.exp()));
                sd.extend(row[nu..].iter().map(|v| (0.5 * (v + self.meta.lv0)).exp()));
            } else {
                mean.extend(row[..nu].iter().map(|v| v * self.meta.u_scale));
                sd.extend(row[nu..].iter().map(|v| (0.5 * (v + self.meta.lv0)).exp()));
            }
        }
        (mean, sd)
    }

    /// The two-way model's proposal for xi from fields u (`B x nunk`):
    /// the mean and standard deviation of p_theta(xi | u).
    pub fn propose(&self, ctx: &GpuContext, u: &[f64]) -> Result<(Vec<f64>, Vec<f64>)> {
        let inv = self.inverse.as_ref().ok_or_else(|| {
            Error::setting(
                "net",
                "one-way",
                "this solver has no inverse map: train it with `pdevi train residual --two-way`",
            )
        })?;
        let (nu, d) = (self.pb.nunk(), self.pb.d);
        let b = u.len() / nu;
        let ws = Workspace::new(ctx, inv, b, Loss::External)?;
        let x: Vec<f64> = u.iter().map(|v| v / self.meta.in_scale).collect();
        let out = ws.predict(ctx, &x)?;
        let mut mean = Vec::with_capacity(b * d);
        let mut sd = Vec::with_capacity(b * d);
        for r in 0..b {
            let row = &out[r * 2 * d..(r + 1) * 2 * d];
            mean.extend_from_slice(&row[..d]);
            sd.extend(row[d..].iter().map(|v| (0.5 * v).exp()));
        }
        Ok((mean, sd))
    }
}

/// Accuracy against spread on held-out prior draws.
#[derive(Clone, Debug, Serialize)]
pub struct SolverAccuracy {
    pub draws: usize,
    /// Relative L2 error of the mean against the exact (CG, 1e-6) solve, per draw.
    pub rel_l2: Vec<f64>,
    pub rel_l2_mean: f64,
    pub rel_l2_median: f64,
    pub rel_l2_max: f64,
    /// Share of nodes whose exact value lies within 2 predicted std of the mean.
    pub within_2sd: f64,
    /// Root mean square of the error and of the predicted std over all nodes.
    pub rms_error: f64,
    pub rms_sd: f64,
    /// For scale: the mean relative L2 error of the z = 0 solution used as
    /// the answer for every draw.
    pub rel_l2_baseline: f64,
    pub seconds_network: f64,
    pub seconds_cg: f64,
}

/// Compare the solver with exact CG solves on `count` prior draws (seed
/// stream distinct from training's). Returns the accuracy and, for
/// figures, the draws, exact solutions, means and std.
#[allow(clippy::type_complexity, reason = "a plain tuple of arrays")]
pub fn accuracy(
    ctx: &GpuContext,
    solver: &ResidualSolver,
    count: usize,
    seed: u64,
) -> Result<(SolverAccuracy, [Vec<f64>; 4])> {
    let pb = &solver.pb;
    let xi = crate::rng::normals(seed, crate::rng::streams::RESIDUAL_EVAL, 0, count * pb.d);
    let t = std::time::Instant::now();
    let (mean, sd) = solver.predict(ctx, &xi)?;
    let seconds_network = t.elapsed().as_secs_f64();
    let cg = crate::physics::solver::CgParams {
        rel_tol: 1e-6,
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let s = crate::physics::solver::BatchedSolver::new(ctx, pb, count, cg, None, false)?;
    let info = s.solve(ctx, &xi)?;
    crate::physics::solver::check_converged(&info, "reference solve", &cg)?;
    let exact = s.read_u(ctx)?;
    let seconds_cg = t.elapsed().as_secs_f64();
    let nu = pb.nunk();
    let u0 = &solver.shape;
    let mut base = 0.0;
    let mut rel = Vec::with_capacity(count);
    let (mut inside, mut e2, mut s2) = (0usize, 0.0, 0.0);
    for r in 0..count {
        let (mut num, mut den) = (0.0, 0.0);
        for k in r * nu..(r + 1) * nu {
            let e = mean[k] - exact[k];
            num += e * e;
            den += exact[k] * exact[k];
            e2 += e * e;
            s2 += sd[k] * sd[k];
            if e.abs() <= 2.0 * sd[k] {
                inside += 1;
            }
        }
        rel.push((num / den.max(1e-300)).sqrt());
        let b2: f64 = (0..nu).map(|k| (u0[k] - exact[r * nu + k]).powi(2)).sum();
        base += (b2 / den.max(1e-300)).sqrt() / count as f64;
    }
    let mut sorted = rel.clone();
    sorted.sort_by(f64::total_cmp);
    let tot = (count * nu) as f64;
    let acc = SolverAccuracy {
        draws: count,
        rel_l2_mean: rel.iter().sum::<f64>() / count as f64,
        rel_l2_median: sorted[count / 2],
        rel_l2_max: sorted[count - 1],
        rel_l2: rel,
        within_2sd: inside as f64 / tot,
        rms_error: (e2 / tot).sqrt(),
        rms_sd: (s2 / tot).sqrt(),
        rel_l2_baseline: base,
        seconds_network,
        seconds_cg,
    };
    Ok((acc, [xi, exact, mean, sd]))
}
