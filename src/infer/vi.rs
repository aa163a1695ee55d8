//! Variational inference with the exact forward model (the primer's Bayes
//! VI, forward-model-based): Gaussian families over xi, the reparameterised
//! ELBO with adjoint gradients, and Adam, every step recorded into one
//! command encoder. Only scalars (the ELBO ring, solver states) come back
//! during the run.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::layout::status;
use crate::gpu::{args, Dispatch, GpuContext};
use crate::infer::adam::{Adam, AdamParams};
use crate::infer::gaussian::{GaussianBlock, GaussianBuffers};
use crate::physics::problem::Problem;
use crate::physics::solver::{BatchedSolver, CgInfo, CgParams};

/// A Gaussian variational family over xi in R^d.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    MeanField,
    FullRank,
    LowRank { rank: usize },
}

impl Family {
    pub fn parse(name: &str, rank: usize) -> Result<Self> {
        match name.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "mean-field" | "meanfield" | "mf" => Ok(Family::MeanField),
            "full-rank" | "fullrank" | "fr" => Ok(Family::FullRank),
            "low-rank" | "lowrank" | "lr" => {
                if rank == 0 || rank > 32 {
                    return Err(Error::setting(
                        "rank",
                        rank,
                        "the low-rank family needs 1 <= rank <= 32",
                    ));
                }
                Ok(Family::LowRank { rank })
            }
            other => Err(Error::setting(
                "family",
                other,
                "expected mean-field, full-rank or low-rank",
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::MeanField => "mean-field",
            Family::FullRank => "full-rank",
            Family::LowRank { .. } => "low-rank",
        }
    }

    pub fn code(self) -> u32 {
        match self {
            Family::MeanField => family_code::MEAN_FIELD,
            Family::FullRank => family_code::FULL_RANK,
            Family::LowRank { .. } => family_code::LOW_RANK,
        }
    }

    pub fn rank(self) -> usize {
        match self {
            Family::LowRank { rank } => rank,
            _ => 0,
        }
    }

    /// Number of variational parameters (see the layout in vi.wgsl).
    pub fn nparam(self, d: usize) -> usize {
        match self {
            Family::MeanField => 2 * d,
            Family::FullRank => d + d * d,
            Family::LowRank { rank } => 2 * d + d * rank,
        }
    }

    pub fn noise_dim(self, d: usize) -> usize {
        match self {
            Family::LowRank { rank } => rank + d,
            _ => d,
        }
    }

    /// q = N(0, I) (the prior), with a small seeded W for the low-rank family
    /// (W = 0 is a saddle of the ELBO in W).
    pub fn init_theta(self, d: usize, seed: u64) -> Vec<f64> {
        let mut t = vec![0.0; self.nparam(d)];
        if let Family::LowRank { rank } = self {
            let z = crate::rng::normals(seed, crate::rng::streams::INIT, 0, d * rank);
            for (k, v) in z.iter().enumerate() {
                t[d + k] = 0.01 * v;
            }
        }
        t
    }

    /// Parameters of the member of the family closest to N(m, cov): the
    /// exact one for full-rank, the diagonal for mean-field, and for
    /// low-rank the top `rank` eigenpairs (W = V sqrt(lambda - s2)) plus the
    /// remaining diagonal. Used to start VI from the Laplace approximation.
    pub fn theta_from_gaussian(self, d: usize, m: &[f64], cov: &[f64]) -> Result<Vec<f64>> {
        let mut t = vec![0.0; self.nparam(d)];
        t[..d].copy_from_slice(&m[..d]);
        match self {
            Family::MeanField => {
                for i in 0..d {
                    t[d + i] = 0.5 * cov[i * d + i].max(1e-30).ln();
                }
            }
            Family::FullRank => {
                let l = crate::math::linalg::cholesky(cov, d)
                    .map_err(|e| Error::not_spd("the covariance to start full-rank VI from", e))?;
                for i in 0..d {
                    for j in 0..i {
                        t[d + i * d + j] = l[i * d + j];
                    }
                    t[d + i * d + i] = l[i * d + i].max(1e-30).ln();
                }
            }
            Family::LowRank { rank } => {
                let (vals, vecs) = crate::math::linalg::sym_eigen(cov, d);
                // Ascending eigenvalues: the last `rank` are the largest. The
                // diagonal takes the mean of the rest (at least a floor).
                let rest = d - rank;
                let s2 = if rest > 0 {
                    (vals[..rest].iter().sum::<f64>() / rest as f64).max(1e-12)
                } else {
                    1e-6 * vals.last().copied().unwrap_or(1.0).max(1e-12)
                };
                for (a, k) in (rest..d).enumerate() {
                    let w = (vals[k] - s2).max(0.0).sqrt();
                    for i in 0..d {
                        t[d + i * rank + a] = vecs[i * d + k] * w;
                    }
                }
                for i in 0..d {
                    let ww: f64 = (0..rank).map(|a| t[d + i * rank + a].powi(2)).sum();
                    t[d + d * rank + i] = 0.5 * (cov[i * d + i] - ww).max(s2).ln();
                }
            }
        }
        Ok(t)
    }

    /// Mean and covariance (d x d, row-major) of q.
    pub fn moments(self, d: usize, theta: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let m = theta[..d].to_vec();
        let mut cov = vec![0.0; d * d];
        match self {
            Family::MeanField => {
                for i in 0..d {
                    cov[i * d + i] = (2.0 * theta[d + i]).exp();
                }
            }
            Family::FullRank => {
                let l = |i: usize, j: usize| {
                    if j < i {
                        theta[d + i * d + j]
                    } else if j == i {
                        theta[d + i * d + i].exp()
                    } else {
                        0.0
                    }
                };
                for i in 0..d {
                    for j in 0..d {
                        cov[i * d + j] = (0..=i.min(j)).map(|k| l(i, k) * l(j, k)).sum();
                    }
                }
            }
            Family::LowRank { rank } => {
                for i in 0..d {
                    for j in 0..d {
                        let mut v: f64 = (0..rank)
                            .map(|a| theta[d + i * rank + a] * theta[d + j * rank + a])
                            .sum();
                        if i == j {
                            v += (2.0 * theta[d + d * rank + i]).exp();
                        }
                        cov[i * d + j] = v;
                    }
                }
            }
        }
        (m, cov)
    }
}

/// `ViParams` of shaders/infer/vi.wgsl (layout checked by tests/layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq)]
pub struct ViParams {
    pub d: u32,
    pub r: u32,
    pub family: u32,
    pub samples: u32,
    pub step: u32,
    pub seed_lo: u32,
    pub seed_hi: u32,
    pub nparam: u32,
    pub nobs: u32,
    pub history: u32,
    pub log_norm: f32,
    /// 0: one theta shared by all samples (VI); 1: sample s has its own
    /// theta at `s * nparam` (a batch of Gaussian heads).
    pub per_row: u32,
    /// `vi_grad` multiplies its sum over samples by this (1/S for VI).
    pub grad_scale: f32,
    /// `vi_kl` multiplies the KL gradient by this (1 for VI).
    pub kl_scale: f32,
    pub _pad: [u32; 4],
}

impl ViParams {
    pub fn new(
        family: Family,
        d: usize,
        samples: usize,
        seed: u64,
        nobs: usize,
        sigma: f64,
    ) -> Self {
        ViParams {
            d: d as u32,
            r: family.rank() as u32,
            family: family.code(),
            samples: samples as u32,
            step: 0,
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            nparam: family.nparam(d) as u32,
            nobs: nobs as u32,
            history: HISTORY as u32,
            log_norm: (-0.5 * nobs as f64 * (2.0 * std::f64::consts::PI * sigma * sigma).ln())
                as f32,
            per_row: 0,
            grad_scale: (1.0 / samples as f64) as f32,
            kl_scale: 1.0,
            _pad: [0; 4],
        }
    }
}

/// `TolParams` of shaders/infer/cg_tol.wgsl (layout checked by
/// tests/layout.rs): the next step's CG tolerance from the Monte Carlo noise
/// of this step's misfit gradients.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq)]
pub struct TolParams {
    pub samples: u32,
    pub d: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    /// The tolerance is `factor` times the gradient's relative standard error ...
    pub factor: f32,
    /// ... times `scale` (lr_t / lr_0: tighter as the steps shrink) ...
    pub scale: f32,
    /// ... clamped to [tol_min, tol_max].
    pub tol_min: f32,
    pub tol_max: f32,
}

/// The head of `scalars` (shaders/infer/vi.wgsl: `S_KL`, `S_ELBO`,
/// `S_MISFIT`; the ELBO ring starts at `S_RING` = 4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ElboScalars {
    /// KL(q || N(0, I)).
    pub kl: f64,
    /// The ELBO estimate of the step.
    pub elbo: f64,
    /// The mean misfit 0.5 |y - G(xi)|^2 / sigma^2 over the samples.
    pub misfit: f64,
}

/// Codes of the families in `ViParams.family` (the WGSL constants of the
/// same names in shaders/infer/vi.wgsl).
pub mod family_code {
    pub const MEAN_FIELD: u32 = 0;
    pub const FULL_RANK: u32 = 1;
    pub const LOW_RANK: u32 = 2;
}

/// Length of the ELBO ring on the device (read back every few steps).
pub const HISTORY: usize = 1024;
const SCALARS: usize = 4 + HISTORY;

/// The ELBO loop on the GPU: the batched solver (one system per sample)
/// plus the variational parameters, their gradient and Adam's moments.
pub struct ViEngine {
    pub solver: BatchedSolver,
    pub family: Family,
    /// Noise, samples, KL and gradient of q.
    pub gaussian: GaussianBlock,
    pub adam: Adam,
    pub theta: wgpu::Buffer,
    pub grad: wgpu::Buffer,
    /// ELBO, KL, expected log-likelihood, and the ELBO history ring.
    pub scalars: wgpu::Buffer,
    elbo: Dispatch,
    /// Section timings of every step, when profiling.
    pub profiler: Option<crate::gpu::profile::Profiler>,
    /// The CG tolerance from the gradient's Monte Carlo noise, when on.
    tol_noise: Option<TolNoise>,
}

/// The `cg_tol_noise` dispatch, its settings and their buffer.
struct TolNoise {
    params: TolParams,
    buf: wgpu::Buffer,
    dispatch: Dispatch,
}

impl ViEngine {
    /// `sensors` (unknown indices) and `y` are the observations; sigma is the
    /// problem's noise level.
    #[allow(clippy::too_many_arguments, reason = "the settings of one inference")]
    pub fn new(
        ctx: &GpuContext,
        problem: &Problem,
        family: Family,
        samples: usize,
        sensors: &[usize],
        y: &[f64],
        seed: u64,
        cg: CgParams,
    ) -> Result<Self> {
        if samples == 0 {
            return Err(Error::setting(
                "samples",
                0,
                "need at least one sample per step",
            ));
        }
        let d = problem.d;
        if let Family::LowRank { rank } = family {
            if rank > d {
                return Err(Error::setting(
                    "rank",
                    rank,
                    format!("must not exceed d = {d}"),
                ));
            }
        }
        let solver = BatchedSolver::new(ctx, problem, samples, cg, Some(sensors), false)?;
        solver.set_data(ctx, y)?;
        let np = family.nparam(d);
        let vp = ViParams::new(family, d, samples, seed, sensors.len(), problem.sigma_n);
        let mut ap = AdamParams::new(np, 0.01);
        // The gradient of the log-scales shrinks by orders of magnitude as q
        // contracts (H s^2 with H ~ 1e5 on poisson1d); with beta2 = 0.999
        // Adam remembers the early, huge second moments for ~1000 steps and
        // stalls (measured: sd 15x too large after 3000 steps). 0.99 forgets
        // in ~100 steps.
        ap.beta2 = 0.99;
        let theta0: Vec<f32> = family
            .init_theta(d, seed)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let theta = ctx.upload("vi.theta", &theta0)?;
        let grad = ctx.storage("vi.grad", (np * 4) as u64)?;
        let scalars = ctx.storage("vi.scalars", (SCALARS * 4) as u64)?;
        let gaussian = GaussianBlock::new(
            ctx,
            "vi",
            family,
            vp,
            GaussianBuffers {
                theta: &theta,
                xi: &solver.xi,
                gxi: &solver.gxi,
                grad: &grad,
                kl: &scalars,
            },
        )?;
        let elbo = ctx.prepare(
            &args::ViElbo {
                params: &gaussian.params_buf,
                misfit: &solver.misfit,
                scalars: &scalars,
            },
            [1, 1],
        )?;
        let adam = Adam::new(ctx, "vi", ap, &theta, &grad)?;
        Ok(ViEngine {
            solver,
            family,
            gaussian,
            adam,
            theta,
            grad,
            scalars,
            elbo,
            profiler: None,
            tol_noise: None,
        })
    }

    /// Ask every step's solves for `factor` times the relative Monte Carlo
    /// standard error of the last step's misfit gradient as their relative
    /// tolerance, within [the solver's tolerance, `tol_max`] (see
    /// shaders/infer/cg_tol.wgsl). The first step solves at the solver's.
    pub fn enable_tol_noise(&mut self, ctx: &GpuContext, factor: f64, tol_max: f64) -> Result<()> {
        let params = TolParams {
            samples: self.solver.batch as u32,
            d: self.gaussian.d as u32,
            factor: factor as f32,
            scale: 1.0,
            tol_min: self.solver.cg.rel_tol as f32,
            tol_max: tol_max.max(self.solver.cg.rel_tol) as f32,
            ..Default::default()
        };
        let buf = ctx.upload("vi.tol_params", &[params])?;
        let dispatch = ctx.prepare(
            &args::CgTolNoise {
                params: &buf,
                gxi: &self.solver.gxi,
                state_fwd: &self.solver.state_fwd,
                state_adj: &self.solver.state_adj,
                scalars: &self.scalars,
            },
            [1, 1],
        )?;
        self.tol_noise = Some(TolNoise {
            params,
            buf,
            dispatch,
        });
        Ok(())
    }

    /// Drop the noise rule's requests from the solver states, so the next
    /// solves (the posterior predictive) use the solver's own tolerance.
    pub fn clear_tol_requests(&self, ctx: &GpuContext) {
        if self.tol_noise.is_some() {
            let fresh = vec![crate::gpu::layout::CgState::default(); self.solver.batch];
            ctx.write(&self.solver.state_fwd, &fresh);
            ctx.write(&self.solver.state_adj, &fresh);
        }
    }

    /// The step-size factor of the noise tolerance (lr_t / lr_0).
    pub fn set_tol_scale(&mut self, ctx: &GpuContext, scale: f64) {
        if let Some(t) = self.tol_noise.as_mut() {
            t.params.scale = scale as f32;
            t.params.tol_min = self.solver.cg.rel_tol as f32;
            ctx.write(&t.buf, &[t.params]);
        }
    }

    /// The tolerance the last step asked of the next solves (noise
    /// tolerance only).
    pub fn read_cg_tol(&self, ctx: &GpuContext) -> Result<Option<f64>> {
        if self.tol_noise.is_none() {
            return Ok(None);
        }
        let v: Vec<f32> = ctx.read(&self.scalars, 3, 1)?;
        Ok(Some(v[0] as f64))
    }

    /// The VI settings as last written to the device.
    pub fn vi_params(&self) -> ViParams {
        self.gaussian.params
    }

    /// Replace the variational parameters (and reset Adam's moments).
    pub fn set_theta(&self, ctx: &GpuContext, theta: &[f64]) -> Result<()> {
        if theta.len() != self.family.nparam(self.gaussian.d) {
            return Err(Error::setting(
                "theta",
                theta.len(),
                "wrong number of variational parameters",
            ));
        }
        let t: Vec<f32> = theta.iter().map(|&v| v as f32).collect();
        ctx.write(&self.theta, &t);
        self.adam.reset(ctx);
        Ok(())
    }

    /// Record the ELBO and its gradient for `step` (no optimiser update).
    pub fn encode_elbo(&self, enc: &mut wgpu::CommandEncoder) {
        self.encode_elbo_marked(enc, None);
    }

    /// [`encode_elbo`](Self::encode_elbo), with a timestamp after each section.
    fn encode_elbo_marked(
        &self,
        enc: &mut wgpu::CommandEncoder,
        mut prof: Option<&mut crate::gpu::profile::Profiler>,
    ) {
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("pdevi.vi.sample"),
                timestamp_writes: None,
            });
            self.gaussian.record_sample(&mut pass);
        }
        if let Some(p) = prof.as_deref_mut() {
            p.mark(enc, "samples of q (noise, reparameterisation)");
        }
        self.solver.encode_forward(enc);
        if let Some(p) = prof.as_deref_mut() {
            p.mark(enc, "forward solves (KL map, CG)");
        }
        self.solver.encode_gradient(enc);
        if let Some(p) = prof.as_deref_mut() {
            p.mark(enc, "misfit, adjoint solves, pullback to xi");
        }
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("pdevi.vi.grad"),
                timestamp_writes: None,
            });
            self.gaussian.record_backward(&mut pass);
            self.elbo.record(&mut pass);
            if let Some(t) = &self.tol_noise {
                t.dispatch.record(&mut pass);
            }
        }
        if let Some(p) = prof {
            p.mark(enc, "gradient of q, KL, ELBO");
        }
    }

    /// Compute the ELBO and gradient at the current parameters for `step`'s
    /// noise, without updating (for tests and diagnostics).
    pub fn evaluate(&mut self, ctx: &GpuContext, step: u32) -> Result<()> {
        self.gaussian.set_step(ctx, step);
        let mut enc = ctx.encoder("pdevi.vi.evaluate");
        self.encode_elbo(&mut enc);
        ctx.submit_wait(enc)
    }

    /// One optimisation step (0-based `step`) at learning rate `lr`: one
    /// command encoder, one submit, nothing read back.
    /// Every buffer whose contents carry from one step to the next, for
    /// checkpoints (q, Adam's moments, the solver's warm starts, the ELBO
    /// history, the noise).
    pub fn state_buffers(&self) -> crate::output::checkpoint::Buffers<'_> {
        let mut b = vec![
            ("vi.theta", &self.theta),
            ("vi.grad", &self.grad),
            ("vi.scalars", &self.scalars),
            ("vi.eps", &self.gaussian.eps),
        ];
        b.extend(self.adam.state_buffers());
        b.extend(self.solver.state_buffers());
        b
    }

    pub fn step(&mut self, ctx: &GpuContext, step: u32, lr: f64) {
        self.gaussian.set_step(ctx, step);
        self.adam.set_step(ctx, step + 1, lr);
        let mut enc = ctx.encoder("pdevi.vi.step");
        let mut prof = self.profiler.take();
        if let Some(p) = prof.as_mut() {
            p.begin(&mut enc);
        }
        self.encode_elbo_marked(&mut enc, prof.as_mut());
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("pdevi.adam"),
                timestamp_writes: None,
            });
            self.adam.record(&mut pass);
        }
        if let Some(p) = prof.as_mut() {
            p.mark(&mut enc, "Adam");
            p.resolve(&mut enc);
        }
        self.profiler = prof;
        ctx.queue.submit([enc.finish()]);
    }

    /// Dispatches recorded per step.
    pub fn dispatches_per_step(&self) -> usize {
        // noise, sample, kl_map, the forward solve, obs, the adjoint solve,
        // adjoint grad (darcy2d), pullback, kl, grad, elbo, adam
        let grad =
            usize::from(self.solver.problem.kind == crate::physics::problem::ProblemKind::Darcy2d);
        GaussianBlock::DISPATCHES
            + 1
            + self.solver.solve_dispatches(false)
            + 1
            + self.solver.solve_dispatches(true)
            + grad
            + 1
            + 1
            + 1
            + usize::from(self.tol_noise.is_some())
    }

    pub fn read_theta(&self, ctx: &GpuContext) -> Result<Vec<f64>> {
        let v: Vec<f32> = ctx.read(&self.theta, 0, self.family.nparam(self.gaussian.d))?;
        Ok(v.into_iter().map(f64::from).collect())
    }

    pub fn read_grad(&self, ctx: &GpuContext) -> Result<Vec<f64>> {
        let v: Vec<f32> = ctx.read(&self.grad, 0, self.family.nparam(self.gaussian.d))?;
        Ok(v.into_iter().map(f64::from).collect())
    }

    /// [kl, elbo, mean misfit, _] of the last step.
    /// The KL, ELBO and expected misfit of the last evaluation.
    pub fn read_scalars(&self, ctx: &GpuContext) -> Result<ElboScalars> {
        let v: Vec<f32> = ctx.read(&self.scalars, 0, 3)?;
        Ok(ElboScalars {
            kl: v[0] as f64,
            elbo: v[1] as f64,
            misfit: v[2] as f64,
        })
    }

    /// ELBO values of steps first..=last (at most HISTORY apart).
    pub fn read_history(&self, ctx: &GpuContext, first: u32, last: u32) -> Result<Vec<f64>> {
        let ring: Vec<f32> = ctx.read(&self.scalars, 4, HISTORY)?;
        Ok((first..=last)
            .map(|t| ring[t as usize % HISTORY] as f64)
            .collect())
    }
}

/// Settings of one inference run.
#[derive(Clone, Debug)]
pub struct FitSettings {
    pub family: Family,
    pub samples: usize,
    pub steps: usize,
    /// Initial learning rate; decays geometrically to `lr * lr_final`.
    pub lr: f64,
    pub lr_final: f64,
    pub seed: u64,
    pub cg: CgParams,
    /// Read the ELBO back every this many steps.
    pub report_every: usize,
    /// Solves only as accurate as the step needs: the CG tolerance starts
    /// here and tightens a decade at a time to `cg.rel_tol` over the first
    /// 60 % of the steps (a stochastic gradient needs its solves about as
    /// accurate as its own sampling noise). A few decades, not a change per
    /// step: drivers that inline uniforms recompile the solver at each.
    pub tol_start: Option<f64>,
    /// Solves as accurate as the gradient's Monte Carlo noise needs: each
    /// step's CG tolerance is this factor times the last step's relative
    /// standard error of the misfit gradient, times lr_t / lr_0, within
    /// [`cg.rel_tol`, [`TOL_NOISE_MAX`]] (computed on the GPU: no read-back,
    /// no uniform change). `None`: `cg.rel_tol` (or `tol_start`'s schedule).
    pub tol_noise: Option<f64>,
    /// Resume: the first step to run, with the engine restored from this
    /// checkpoint (no Laplace start).
    pub resume: Option<std::sync::Arc<crate::output::checkpoint::Checkpoint>>,
    pub first_step: usize,
    /// GPU timestamps between the sections of every step (`--profile`).
    pub profile: bool,
}

impl Default for FitSettings {
    fn default() -> Self {
        FitSettings {
            family: Family::FullRank,
            samples: 16,
            steps: 1000,
            lr: 0.05,
            lr_final: 0.05,
            seed: 0,
            cg: CgParams {
                warm_start: true,
                ..Default::default()
            },
            report_every: 10,
            tol_start: None,
            tol_noise: Some(TOL_NOISE_DEFAULT),
            resume: None,
            first_step: 0,
            profile: false,
        }
    }
}

/// The loosest CG tolerance the noise rule may ask for. Measured at n = 64,
/// d = 64, S = 16 (300 full-rank steps from the Laplace start, against
/// fixed 1e-5 solves): KL between the two q of 0.007 with a cap of 1e-2,
/// 0.074 with 3e-2 and 0.13 with 1e-1, where two seeds of the fixed run
/// differ by 5.4; 33, 37 and 39 steps/s. 3e-2 lets the rule (about 0.026
/// there) act rather than the cap.
pub const TOL_NOISE_MAX: f64 = 3e-2;

/// The default factor of the noise rule ([`FitSettings::tol_noise`]).
pub const TOL_NOISE_DEFAULT: f64 = 0.5;

/// The CG tolerance of step `t` (see [`FitSettings::tol_start`]).
pub fn tol_at(s: &FitSettings, t: usize) -> f64 {
    let last = s.cg.rel_tol;
    let Some(first) = s.tol_start.filter(|&f| f > last) else {
        return last;
    };
    let decades = (first / last).log10().ceil().max(1.0) as usize;
    let ramp = (0.6 * s.steps as f64).max(1.0);
    let level = ((t as f64 / ramp) * (decades + 1) as f64) as usize;
    if level >= decades {
        last
    } else {
        (first / 10f64.powi(level as i32)).max(last)
    }
}

/// What a fit returns.
#[derive(Clone, Debug)]
pub struct FitResult {
    pub theta: Vec<f64>,
    /// (step, elbo, wall seconds) for every step.
    pub trace: Vec<(usize, f64, f64)>,
    pub seconds: f64,
    pub mean_cg_iters: f64,
    /// The mean CG tolerance over the read-backs (the noise rule's; `None`
    /// without it).
    pub mean_cg_tol: Option<f64>,
    pub unconverged_solves: usize,
    /// Stopped by Ctrl-C after this many steps (of `steps`).
    pub interrupted: Option<usize>,
}

/// The loop of an engine without a solver (surrogate or residual
/// likelihood): `step(t)` records and submits step t; the ELBO ring in
/// `scalars` is read every `s.report_every` steps, a non-finite value stops
/// with `diverged(step, value)`, and Ctrl-C stops at the next read-back.
/// Returns (step, ELBO, wall seconds) per step, the seconds and the step
/// count where an interrupt stopped the loop.
#[allow(clippy::type_complexity, reason = "a plain tuple of results")]
pub fn step_loop(
    ctx: &GpuContext,
    s: &FitSettings,
    scalars: &wgpu::Buffer,
    mut step: impl FnMut(usize),
    mut progress: impl FnMut(usize, f64),
    diverged: impl Fn(usize, f64) -> Error,
) -> Result<(Vec<(usize, f64, f64)>, f64, Option<usize>)> {
    let t0 = std::time::Instant::now();
    let every = s.report_every.clamp(1, HISTORY);
    let mut trace = Vec::with_capacity(s.steps);
    let mut first = 0usize;
    let mut interrupted = None;
    for t in 0..s.steps {
        step(t);
        if (t + 1) % every == 0 || t + 1 == s.steps {
            let ring: Vec<f32> = ctx.read(scalars, 4, HISTORY)?;
            let now = t0.elapsed().as_secs_f64();
            for k in first..=t {
                let e = ring[k % HISTORY] as f64;
                if !e.is_finite() {
                    return Err(diverged(k, e));
                }
                trace.push((k, e, now));
            }
            progress(t, trace.last().map(|x| x.1).unwrap_or(f64::NAN));
            first = t + 1;
            if crate::interrupt::requested() && t + 1 < s.steps {
                interrupted = Some(t + 1);
                break;
            }
        }
    }
    Ok((trace, t0.elapsed().as_secs_f64(), interrupted))
}

/// Learning rate of step t.
pub fn lr_at(s: &FitSettings, t: usize) -> f64 {
    let frac = t as f64 / s.steps.max(1) as f64;
    s.lr * s.lr_final.powf(frac)
}

/// Run the ELBO optimisation. `progress(step, elbo)` is called at each
/// read-back. On a non-finite ELBO the error names the step and the last
/// good parameters are returned inside the error path via `last_good`.
pub fn fit(
    ctx: &GpuContext,
    engine: &mut ViEngine,
    s: &FitSettings,
    last_good: &mut Vec<f64>,
    progress: impl FnMut(usize, f64),
) -> Result<FitResult> {
    fit_watched(ctx, engine, s, last_good, progress, &mut |_, _, _| Ok(()))
}

/// What a caller may do at each read-back of [`fit_watched`]: look at the
/// engine (its q is on the GPU) after step `t`, with the trace so far.
pub type Watch<'a> = dyn FnMut(&ViEngine, usize, &[(usize, f64, f64)]) -> Result<()> + 'a;

/// [`fit`], calling `watch` after every read-back (the live view, frames);
/// an error from `watch` stops the fit.
pub fn fit_watched(
    ctx: &GpuContext,
    engine: &mut ViEngine,
    s: &FitSettings,
    last_good: &mut Vec<f64>,
    mut progress: impl FnMut(usize, f64),
    watch: &mut Watch<'_>,
) -> Result<FitResult> {
    let t0 = std::time::Instant::now();
    // Grown as steps run: a huge --steps must not reserve memory up front.
    let mut trace = Vec::with_capacity(s.steps.min(1 << 16));
    let mut iters_total = 0.0;
    let mut solves = 0usize;
    let mut unconverged = 0usize;
    *last_good = engine.read_theta(ctx)?;
    let every = s.report_every.clamp(1, HISTORY);
    let mut first = s.first_step;
    let mut tol = s.cg.rel_tol;
    let mut interrupted = None;
    // A tolerance schedule (tol_start) takes precedence over the noise rule.
    if let (Some(factor), None) = (s.tol_noise, s.tol_start) {
        engine.enable_tol_noise(ctx, factor, TOL_NOISE_MAX)?;
    }
    let mut noise_tols = Vec::new();
    for t in s.first_step..s.steps {
        let want = tol_at(s, t);
        if want != tol {
            tol = want;
            engine.solver.set_tol(ctx, tol);
        }
        engine.set_tol_scale(ctx, lr_at(s, t) / s.lr);
        engine.step(ctx, t as u32, lr_at(s, t));
        if (t + 1) % every == 0 || t + 1 == s.steps {
            let elbos = engine.read_history(ctx, first as u32, t as u32)?;
            noise_tols.extend(engine.read_cg_tol(ctx)?);
            if let Some(p) = engine.profiler.as_mut() {
                p.collect(ctx)?;
            }
            let now = t0.elapsed().as_secs_f64();
            let infos: Vec<CgInfo> = engine
                .solver
                .forward_info(ctx)?
                .into_iter()
                .chain(engine.solver.adjoint_info(ctx)?)
                .collect();
            for i in &infos {
                iters_total += i.iters as f64;
                solves += 1;
                if !i.converged {
                    unconverged += 1;
                }
            }
            if let Some(bad) = infos.iter().find(|i| i.status == status::BREAKDOWN) {
                return Err(Error::Diverged(format!(
                    "step {t}: a CG solve broke down (status {}, residual {:.2e}): the sampled field is extreme or NaN; lower the learning rate (--lr) or check the data",
                    bad.status, bad.rel_residual
                )));
            }
            for (k, e) in elbos.iter().enumerate() {
                let step = first + k;
                if !e.is_finite() {
                    return Err(Error::Diverged(format!(
                        "the ELBO became {e} at step {step}: lower the learning rate (--lr, now {:.3e}) or raise the noise level (--noise) if the data are very precise; the last good parameters were kept",
                        lr_at(s, step)
                    )));
                }
                trace.push((step, *e, now));
            }
            *last_good = engine.read_theta(ctx)?;
            progress(t, *elbos.last().unwrap_or(&f64::NAN));
            watch(engine, t, &trace)?;
            first = t + 1;
            // Ctrl-C: stop after a read-back, whose state is the last good one.
            if crate::interrupt::requested() && t + 1 < s.steps {
                interrupted = Some(t + 1);
                break;
            }
        }
    }
    // Solves after the fit (the posterior predictive) are tight again.
    engine.clear_tol_requests(ctx);
    let theta = engine.read_theta(ctx)?;
    Ok(FitResult {
        theta,
        trace,
        seconds: t0.elapsed().as_secs_f64(),
        mean_cg_iters: if solves > 0 {
            iters_total / solves as f64
        } else {
            0.0
        },
        mean_cg_tol: (!noise_tols.is_empty())
            .then(|| noise_tols.iter().sum::<f64>() / noise_tols.len() as f64),
        unconverged_solves: unconverged,
        interrupted,
    })
}

/// Where [`variational`] starts q.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// q = the prior N(0, I) (shrunk by Adam over many steps).
    Prior,
    /// q = the Laplace approximation after at most `gn_iters` Gauss-Newton
    /// steps (the default of `pdevi run`): Adam refines a good Gaussian.
    Laplace { gn_iters: usize },
}

/// What [`variational`] returns.
pub struct ViRun {
    /// The engine; its solver serves the posterior predictive.
    pub engine: ViEngine,
    pub fit: FitResult,
    /// Seconds spent on the Laplace start (0 from the prior).
    pub laplace_seconds: f64,
    /// Why the Laplace start was given up for the prior, if it was.
    pub start_warning: Option<String>,
}

/// Gaussian VI of the posterior of `pb` given `y` at `sensors`: the engine,
/// the start (a failed Laplace fit falls back to the prior, with the reason
/// in [`ViRun::start_warning`]) and the fit. If the fit fails, `last_good`
/// holds the last finite parameters.
#[allow(clippy::too_many_arguments, reason = "the inputs of one inference")]
pub fn variational(
    ctx: &GpuContext,
    pb: &Problem,
    sensors: &[usize],
    y: &[f64],
    s: &FitSettings,
    start: Start,
    last_good: &mut Vec<f64>,
    progress: impl FnMut(usize, f64),
) -> Result<ViRun> {
    let mut none = |_: &ViEngine, _, _: &[(usize, f64, f64)]| Ok(());
    variational_watched(
        ctx, pb, sensors, y, s, start, last_good, progress, &mut none,
    )
}

/// [`variational`] with a [`Watch`] on the fit.
#[allow(clippy::too_many_arguments, reason = "the inputs of one inference")]
pub fn variational_watched(
    ctx: &GpuContext,
    pb: &Problem,
    sensors: &[usize],
    y: &[f64],
    s: &FitSettings,
    start: Start,
    last_good: &mut Vec<f64>,
    progress: impl FnMut(usize, f64),
    watch: &mut Watch<'_>,
) -> Result<ViRun> {
    let mut engine = ViEngine::new(ctx, pb, s.family, s.samples, sensors, y, s.seed, s.cg)?;
    if s.profile {
        engine.profiler = crate::gpu::profile::Profiler::new(ctx);
    }
    let mut laplace_seconds = 0.0;
    let mut start_warning = None;
    if let Some(ck) = &s.resume {
        ck.restore(ctx, &engine.state_buffers(), &ck.path)?;
    } else if let Start::Laplace { gn_iters } = start {
        match crate::infer::laplace::fit_laplace(ctx, pb, sensors, y, s.cg, gn_iters) {
            Ok(lp) => {
                laplace_seconds = lp.seconds;
                let theta = s.family.theta_from_gaussian(pb.d, &lp.map, &lp.cov)?;
                engine.set_theta(ctx, &theta)?;
            }
            Err(e) => {
                start_warning = Some(format!("no Laplace start ({e}); starting from the prior"))
            }
        }
    }
    let fit = fit_watched(ctx, &mut engine, s, last_good, progress, watch)?;
    Ok(ViRun {
        engine,
        fit,
        laplace_seconds,
        start_warning,
    })
}
