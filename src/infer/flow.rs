//! Normalizing-flow VI (`pdevi run --family flow`): a full-rank Gaussian
//! base, then K affine coupling layers (RealNVP) whose shift and log-scale
//! come from small MLPs on the MLP kernels, trained by the reparameterised
//! objective with the adjoint gradient through the solver and back through
//! every layer (`shaders/infer/flow.wgsl`). The objective is the ELBO
//! (reverse KL), or Renyi's alpha-bound with self-normalised importance
//! weights (`--divergence renyi:ALPHA`, mass-covering as alpha -> 0).
//!
//! One step is one command encoder: the base's noise and draws, per layer
//! the mask, the net and the coupling, the solves and the adjoint, the
//! weights, then per layer (last first) the coupling's backward pass, the
//! net's backward pass and the join, the base's backward pass and its
//! entropy, and one Adam per block of parameters.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{args, Dispatch, GpuContext};
use crate::infer::adam::{Adam, AdamParams};
use crate::infer::gaussian::{GaussianBlock, GaussianBuffers};
use crate::infer::vi::{Family, ViParams, HISTORY};
use crate::nn::mlp::{Activation, Arch, Loss, Mlp, Workspace};
use crate::physics::problem::Problem;
use crate::physics::solver::{BatchedSolver, CgParams};

/// `FlowParams` of shaders/infer/flow.wgsl (layout checked by tests/layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq)]
pub struct FlowParams {
    pub d: u32,
    pub samples: u32,
    pub layer: u32,
    pub parity: u32,
    pub layers: u32,
    pub nobs: u32,
    pub history: u32,
    pub step: u32,
    pub s_scale: f32,
    pub alpha: f32,
    pub log_norm: f32,
    pub _pad: u32,
}

/// The objective a flow (or a Gaussian base alone) is trained by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Divergence {
    /// KL(q || p): the ELBO.
    ReverseKl,
    /// Renyi's alpha-divergence, alpha in [0, 1): mass-covering as alpha -> 0.
    Renyi(f64),
}

impl Divergence {
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        if t == "kl" || t == "reverse-kl" {
            return Ok(Divergence::ReverseKl);
        }
        if let Some(a) = t.strip_prefix("renyi:") {
            let alpha: f64 = a.parse().map_err(|_| {
                Error::setting(
                    "divergence",
                    s,
                    "renyi:ALPHA needs a number, e.g. renyi:0.5",
                )
            })?;
            if !(0.0..1.0).contains(&alpha) {
                return Err(Error::setting(
                    "divergence",
                    s,
                    "Renyi's alpha must lie in [0, 1) (alpha = 1 is the reverse KL: use kl)",
                ));
            }
            return Ok(Divergence::Renyi(alpha));
        }
        Err(Error::setting(
            "divergence",
            s,
            "expected kl or renyi:ALPHA with ALPHA in [0, 1)",
        ))
    }

    /// The `alpha` of the kernels (1 for the reverse KL).
    pub fn alpha(self) -> f64 {
        match self {
            Divergence::ReverseKl => 1.0,
            Divergence::Renyi(a) => a,
        }
    }

    pub fn name(self) -> String {
        match self {
            Divergence::ReverseKl => "kl".into(),
            Divergence::Renyi(a) => format!("renyi:{a}"),
        }
    }
}

/// The shape of a flow.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowSpec {
    pub layers: usize,
    pub hidden: Vec<usize>,
    pub act: Activation,
    /// Soft clamp of the log-scales: s = S tanh(raw / S).
    pub s_scale: f64,
}

impl Default for FlowSpec {
    fn default() -> Self {
        FlowSpec {
            layers: 4,
            hidden: vec![32, 32],
            act: Activation::Tanh,
            s_scale: 2.0,
        }
    }
}

impl FlowSpec {
    /// The net of one layer: d inputs (the moved coordinates zeroed) -> 2d
    /// outputs (raw log-scales, then shifts).
    pub fn arch(&self, d: usize) -> Arch {
        Arch::mlp(d, &self.hidden, self.act, 2 * d)
    }

    /// Weights of layer `k` with the last layer zeroed: T_k is the identity,
    /// so the flow starts as its base (a Laplace or Gaussian VI answer).
    pub fn identity_init(&self, d: usize, seed: u64, k: usize) -> Vec<f64> {
        let arch = self.arch(d);
        let mut p = arch.init(seed.wrapping_add(1000 + k as u64));
        if let Some(&(w, _)) = arch.offsets().last() {
            for v in &mut p[w..] {
                *v = 0.0;
            }
        }
        p
    }
}

/// A flow's parameters on the host: the base (full-rank layout) and each
/// layer's net weights.
#[derive(Clone, Debug)]
pub struct FlowState {
    pub d: usize,
    pub spec: FlowSpec,
    pub base: Vec<f64>,
    pub nets: Vec<Vec<f64>>,
}

struct Layer {
    net: Mlp,
    ws: Workspace,
    mask: Dispatch,
    couple: Dispatch,
    back: Dispatch,
    join: Dispatch,
}

/// Flow VI on the GPU: the solver (one system per sample), the base, the
/// layers and their optimisers.
pub struct FlowEngine {
    pub solver: BatchedSolver,
    pub d: usize,
    pub samples: usize,
    pub spec: FlowSpec,
    pub divergence: Divergence,
    pub base: GaussianBlock,
    pub theta: wgpu::Buffer,
    pub grad: wgpu::Buffer,
    pub adam: Adam,
    /// Every layer's input (`(K + 1) x S x d`).
    pub xs: wgpu::Buffer,
    pub gs: wgpu::Buffer,
    pub ld: wgpu::Buffer,
    pub wt: wgpu::Buffer,
    pub scalars: wgpu::Buffer,
    layers: Vec<Layer>,
    weights: Dispatch,
    top: Dispatch,
    entropy: Dispatch,
    /// The settings of the weights, top and entropy kernels (the step changes).
    main: FlowParams,
    u_main: wgpu::Buffer,
    _uniforms: Vec<wgpu::Buffer>,
}

impl FlowEngine {
    #[allow(clippy::too_many_arguments, reason = "the settings of one inference")]
    pub fn new(
        ctx: &GpuContext,
        pb: &Problem,
        spec: &FlowSpec,
        divergence: Divergence,
        samples: usize,
        sensors: &[usize],
        y: &[f64],
        seed: u64,
        cg: CgParams,
    ) -> Result<Self> {
        if samples < 2 {
            return Err(Error::setting(
                "samples",
                samples,
                "flow VI needs at least 2 samples per step",
            ));
        }
        if spec.layers > 64 || spec.hidden.is_empty() {
            return Err(Error::setting(
                "flow-layers",
                spec.layers,
                "need 0..=64 layers, each with at least one hidden layer",
            ));
        }
        if !(spec.s_scale.is_finite() && spec.s_scale > 0.0) {
            return Err(Error::setting("s-scale", spec.s_scale, "must be positive"));
        }
        let d = pb.d;
        let k = spec.layers;
        let solver = BatchedSolver::new(ctx, pb, samples, cg, Some(sensors), false)?;
        solver.set_data(ctx, y)?;
        let family = Family::FullRank;
        let np = family.nparam(d);
        let theta = ctx.upload(
            "flow.theta",
            &crate::nn::mlp::to_f32(&family.init_theta(d, seed)),
        )?;
        let grad = ctx.storage("flow.grad", (np * 4) as u64)?;
        let f4 = |n: usize| (n.max(1) * 4) as u64;
        let xs = ctx.storage("flow.xs", f4((k + 1) * samples * d))?;
        let gs = ctx.storage("flow.gs", f4((k + 1) * samples * d))?;
        let ld = ctx.storage("flow.ld", f4(samples))?;
        let wt = ctx.storage("flow.wt", f4(samples))?;
        let scalars = ctx.storage("flow.scalars", f4(4 + HISTORY))?;
        let misfit_scalars = ctx.storage("flow.base_kl", f4(4))?;
        let mut vp = ViParams::new(family, d, samples, seed, sensors.len(), pb.sigma_n);
        // The base's gradient comes from gs[0], already weighted; its KL
        // term is replaced by the entropy (flow_entropy).
        vp.grad_scale = 1.0;
        vp.kl_scale = 0.0;
        let base = GaussianBlock::new(
            ctx,
            "flow.base",
            family,
            vp,
            GaussianBuffers {
                theta: &theta,
                xi: &xs,
                gxi: &gs,
                grad: &grad,
                kl: &misfit_scalars,
            },
        )?;
        let mut ap = AdamParams::new(np, 0.01);
        ap.beta2 = 0.99;
        let adam = Adam::new(ctx, "flow.base", ap, &theta, &grad)?;
        let fp = FlowParams {
            d: d as u32,
            samples: samples as u32,
            layer: 0,
            parity: 0,
            layers: k as u32,
            nobs: sensors.len() as u32,
            history: HISTORY as u32,
            step: 0,
            s_scale: spec.s_scale as f32,
            alpha: divergence.alpha() as f32,
            log_norm: vp.log_norm,
            _pad: 0,
        };
        let mut uniforms = Vec::new();
        let sd = [samples * d, 1];
        let mut layers = Vec::with_capacity(k);
        for l in 0..k {
            let p = FlowParams {
                layer: l as u32,
                parity: (l % 2) as u32,
                ..fp
            };
            let u = ctx.uniform("flow.layer", &p);
            uniforms.push(u.clone());
            let net = Mlp::new(
                ctx,
                spec.arch(d),
                Some(&spec.identity_init(d, seed, l)),
                seed,
            )?;
            let ws = Workspace::new(ctx, &net, samples, Loss::External)?;
            let mask = ctx.prepare(
                &args::FlowMask {
                    params: &u,
                    xs: &xs,
                    xin: &ws.x,
                },
                sd,
            )?;
            let couple = ctx.prepare(
                &args::FlowCouple {
                    params: &u,
                    o: ws.output(),
                    xs: &xs,
                    ld: &ld,
                },
                [samples, 1],
            )?;
            let back = ctx.prepare(
                &args::FlowCoupleBack {
                    params: &u,
                    o: ws.output(),
                    xs: &xs,
                    gs: &gs,
                    og: ws.output_grad(),
                    wt_in: &wt,
                },
                sd,
            )?;
            let join = ctx.prepare(
                &args::FlowJoin {
                    params: &u,
                    gs: &gs,
                    xin: &ws.dx,
                },
                sd,
            )?;
            layers.push(Layer {
                net,
                ws,
                mask,
                couple,
                back,
                join,
            });
        }
        let u = ctx.uniform("flow.params", &fp);
        let weights = ctx.prepare(
            &args::FlowWeights {
                params: &u,
                xs: &xs,
                ld: &ld,
                theta: &theta,
                eps: &base.eps,
                misfit: &solver.misfit,
                wt: &wt,
                scalars: &scalars,
            },
            [1, 1],
        )?;
        let top = ctx.prepare(
            &args::FlowTop {
                params: &u,
                xs: &xs,
                gs: &gs,
                wt_in: &wt,
                gxi: &solver.gxi,
            },
            sd,
        )?;
        let entropy = ctx.prepare(
            &args::FlowEntropy {
                params: &u,
                grad: &grad,
            },
            [d, 1],
        )?;
        if k == 0 {
            // No layer writes ld: keep it zero.
            ctx.write(&ld, &vec![0f32; samples]);
        }
        uniforms.push(misfit_scalars);
        Ok(FlowEngine {
            solver,
            d,
            samples,
            spec: spec.clone(),
            divergence,
            base,
            theta,
            grad,
            adam,
            xs,
            gs,
            ld,
            wt,
            scalars,
            layers,
            weights,
            top,
            entropy,
            main: fp,
            u_main: u,
            _uniforms: uniforms,
        })
    }

    /// Replace the base (full-rank layout) and reset every optimiser.
    pub fn set_base(&self, ctx: &GpuContext, theta: &[f64]) -> Result<()> {
        if theta.len() != Family::FullRank.nparam(self.d) {
            return Err(Error::setting(
                "theta",
                theta.len(),
                "wrong number of base parameters",
            ));
        }
        ctx.write(&self.theta, &crate::nn::mlp::to_f32(theta));
        self.adam.reset(ctx);
        Ok(())
    }

    fn top_bytes(&self) -> (u64, u64) {
        let n = (self.samples * self.d * 4) as u64;
        (self.spec.layers as u64 * n, n)
    }

    /// Record the base's draws and the layers' forward passes (xs).
    fn record_sample(&self, enc: &mut wgpu::CommandEncoder) {
        let mut pass = enc.begin_compute_pass(&Default::default());
        self.base.record_sample(&mut pass);
        for l in &self.layers {
            l.mask.record(&mut pass);
            l.ws.encode_forward(&mut pass);
            l.couple.record(&mut pass);
        }
    }

    /// Record the objective and every gradient of step `step`'s noise.
    pub fn encode_objective(&self, enc: &mut wgpu::CommandEncoder) {
        self.record_sample(enc);
        let (off, n) = self.top_bytes();
        enc.copy_buffer_to_buffer(&self.xs, off, &self.solver.xi, 0, n);
        self.solver.encode_forward(enc);
        self.solver.encode_gradient(enc);
        let mut pass = enc.begin_compute_pass(&Default::default());
        self.weights.record(&mut pass);
        self.top.record(&mut pass);
        for l in self.layers.iter().rev() {
            l.back.record(&mut pass);
            l.ws.encode_backward(&mut pass, true);
            l.join.record(&mut pass);
        }
        self.base.record_backward(&mut pass);
        self.entropy.record(&mut pass);
    }

    fn set_step(&mut self, ctx: &GpuContext, step: u32) {
        self.base.set_step(ctx, step);
        // The weights kernel indexes the ELBO ring by the step.
        self.main.step = step;
        ctx.write(&self.u_main, &[self.main]);
    }

    /// Evaluate the objective and gradients at the current parameters
    /// with `step`'s noise (no update; for tests).
    pub fn evaluate(&mut self, ctx: &GpuContext, step: u32) -> Result<()> {
        self.set_step(ctx, step);
        let mut enc = ctx.encoder("flow.evaluate");
        self.encode_objective(&mut enc);
        ctx.submit_wait(enc)
    }

    /// One optimisation step (0-based) at learning rate `lr`.
    pub fn step(&mut self, ctx: &GpuContext, step: u32, lr: f64) {
        self.set_step(ctx, step);
        self.adam.set_step(ctx, step + 1, lr);
        for l in &mut self.layers {
            l.net.prepare_adam(ctx, step + 1, lr);
        }
        let mut enc = ctx.encoder("flow.step");
        self.encode_objective(&mut enc);
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            self.adam.record(&mut pass);
            for l in &self.layers {
                l.net.encode_adam(&mut pass);
            }
        }
        ctx.queue.submit([enc.finish()]);
    }

    /// Dispatches per step.
    pub fn dispatches_per_step(&self) -> usize {
        let per_layer_fwd = 2 + self.layers.first().map_or(0, |l| l.net.arch.layers.len());
        let per_layer_bwd = 2 + self
            .layers
            .first()
            .map_or(0, |l| 4 * l.net.arch.layers.len());
        GaussianBlock::DISPATCHES
            + self.spec.layers * (per_layer_fwd + per_layer_bwd + 1)
            + 2
            + self.solver.solve_dispatches(false)
            + self.solver.solve_dispatches(true)
            + 2
            + 3
            + 1
    }

    /// Draws of q (`count x d`), in batches of S with noise steps counted
    /// down from `u32::MAX` (never a training step's).
    pub fn draws(&mut self, ctx: &GpuContext, count: usize) -> Result<Vec<f64>> {
        let (off, n) = self.top_bytes();
        let mut out = Vec::with_capacity(count * self.d);
        let mut b = 0u32;
        while out.len() < count * self.d {
            self.base.set_step(ctx, u32::MAX - b);
            let mut enc = ctx.encoder("flow.draws");
            self.record_sample(&mut enc);
            ctx.submit_wait(enc)?;
            let v: Vec<f32> = ctx.read(&self.xs, (off / 4) as usize, (n / 4) as usize)?;
            let want = count * self.d - out.len();
            out.extend(v.iter().take(want).map(|&x| x as f64));
            b += 1;
        }
        Ok(out)
    }

    /// The parameters on the host.
    pub fn state(&self, ctx: &GpuContext) -> Result<FlowState> {
        let base: Vec<f32> = ctx.read(&self.theta, 0, Family::FullRank.nparam(self.d))?;
        let nets = self
            .layers
            .iter()
            .map(|l| l.net.read_params(ctx))
            .collect::<Result<Vec<_>>>()?;
        Ok(FlowState {
            d: self.d,
            spec: self.spec.clone(),
            base: base.into_iter().map(f64::from).collect(),
            nets,
        })
    }

    /// (ELBO, the objective's bound, mean misfit, the weights' ESS) of the last step.
    pub fn read_scalars(&self, ctx: &GpuContext) -> Result<[f64; 4]> {
        let v: Vec<f32> = ctx.read(&self.scalars, 0, 4)?;
        Ok([v[0] as f64, v[1] as f64, v[2] as f64, v[3] as f64])
    }

    /// The base's gradient and each layer's net gradient (after `evaluate`).
    pub fn read_grads(&self, ctx: &GpuContext) -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
        let g: Vec<f32> = ctx.read(&self.grad, 0, Family::FullRank.nparam(self.d))?;
        let nets = self
            .layers
            .iter()
            .map(|l| l.net.read_grad(ctx))
            .collect::<Result<Vec<_>>>()?;
        Ok((g.into_iter().map(f64::from).collect(), nets))
    }

    /// Set every layer's net weights.
    pub fn set_nets(&mut self, ctx: &GpuContext, nets: &[Vec<f64>]) -> Result<()> {
        for (l, p) in self.layers.iter_mut().zip(nets) {
            l.net.set_params(ctx, p)?;
        }
        Ok(())
    }
}
