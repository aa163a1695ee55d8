//! MCMC on the GPU (`pdevi mcmc`): many chains of pCN or MALA at once, one
//! chain per batch slot of a [`BatchedSolver`], in whitened coordinates of
//! a reference Gaussian N(m, L L^T) (the prior, or the Laplace
//! approximation at the MAP), so the prior- and Laplace-preconditioned
//! samplers are the same code: chain state w, x = m + L w.
//!
//! * pCN, generalised w.r.t. the reference: `w' = rho w + beta eps`,
//!   `rho = sqrt(1 - beta^2)`, `log alpha = l(x') - l(x)` with
//!   `l(x) = -Phi(x) - |x|^2/2 + |w|^2/2` (textbook pCN with the prior as
//!   reference). Needs forward solves only.
//! * MALA in w: `w' = w + (h/2) g_w + sqrt(h) eps`, `g_w = L^T (-dPhi/dx - x)`
//!   from the adjoint, with the usual Metropolis-Hastings correction.
//!
//! Every step (propose, map, forward solve, misfit, [adjoint, L^T g],
//! accept) is recorded into one command encoder, many steps per submit; the
//! kept draws stay on the device until the end. During warm-up the step
//! size is adapted (Robbins-Monro on its logarithm) toward the acceptance
//! rate 0.3 (pCN) or 0.57 (MALA) from the mean acceptance over the chains,
//! read back (a few scalars per chain) every `adapt_every` steps.

use std::time::Instant;

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{args, Dispatch, GpuContext};
use crate::physics::problem::Problem;
use crate::physics::solver::{BatchedSolver, CgParams};

/// The proposal kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampler {
    /// Preconditioned Crank-Nicolson (forward solves only).
    Pcn,
    /// Metropolis-adjusted Langevin (forward and adjoint solves).
    Mala,
}

impl Sampler {
    pub fn parse(name: &str) -> Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "pcn" => Ok(Sampler::Pcn),
            "mala" => Ok(Sampler::Mala),
            other => Err(Error::setting("sampler", other, "expected pcn or mala")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Sampler::Pcn => "pcn",
            Sampler::Mala => "mala",
        }
    }

    pub fn code(self) -> u32 {
        match self {
            Sampler::Pcn => 0,
            Sampler::Mala => 1,
        }
    }

    /// Acceptance rate the warm-up adapts the step size toward.
    pub fn target_acceptance(self) -> f64 {
        match self {
            Sampler::Pcn => 0.3,
            Sampler::Mala => 0.57,
        }
    }

    /// Largest step size: beta <= 1 for pCN; h <= 4 for MALA (in whitened
    /// coordinates of a good reference the optimal h is about 1).
    pub fn max_step(self) -> f64 {
        match self {
            Sampler::Pcn => 1.0,
            Sampler::Mala => 4.0,
        }
    }

    /// Initial step size: the warm-up adapts it, this only sets where it starts.
    pub fn default_step(self, precondition: Precondition) -> f64 {
        match (self, precondition) {
            (Sampler::Pcn, Precondition::Laplace) => 0.5,
            (Sampler::Pcn, Precondition::Prior) => 0.1,
            (Sampler::Mala, Precondition::Laplace) => 0.5,
            (Sampler::Mala, Precondition::Prior) => 1e-3,
        }
    }
}

/// The reference Gaussian of the proposals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// N(0, I): textbook pCN / prior-preconditioned MALA.
    Prior,
    /// N(MAP, Laplace covariance) from Gauss-Newton.
    Laplace,
}

impl Precondition {
    pub fn parse(name: &str) -> Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "prior" | "none" => Ok(Precondition::Prior),
            "laplace" => Ok(Precondition::Laplace),
            other => Err(Error::setting(
                "precondition",
                other,
                "expected laplace or prior",
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precondition::Prior => "prior",
            Precondition::Laplace => "laplace",
        }
    }
}

/// `McmcParams` of shaders/infer/mcmc.wgsl (layout checked by tests/layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq)]
pub struct McmcParams {
    pub d: u32,
    pub chains: u32,
    /// 0 pCN, 1 MALA.
    pub sampler: u32,
    /// 0 step; 1 initialise (accept unconditionally, count nothing).
    pub mode: u32,
    pub seed_lo: u32,
    pub seed_hi: u32,
    pub warmup: u32,
    pub thin: u32,
    /// Kept draws per chain (capacity of the sample buffer).
    pub kept: u32,
    /// pCN: beta; MALA: h.
    pub step_size: f32,
    pub _pad: [u32; 2],
}

impl McmcParams {
    pub fn seed(&self) -> u64 {
        self.seed_lo as u64 | ((self.seed_hi as u64) << 32)
    }
}

/// `Chain` of shaders/infer/mcmc.wgsl (layout checked by tests/layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq)]
pub struct McmcChain {
    /// Steps taken (the Philox step counter).
    pub step: u32,
    pub accepts: u32,
    /// Draws written to the sample buffer.
    pub kept: u32,
    /// Proposals rejected because a solve did not converge.
    pub failed: u32,
    /// logpi(x) = -Phi(x) - |x|^2/2 of the current state.
    pub lp: f32,
    /// Phi(x) of the current state.
    pub phi: f32,
    pub _pad: [u32; 2],
}

/// Settings of one MCMC run.
#[derive(Clone, Debug)]
pub struct McmcSettings {
    pub sampler: Sampler,
    /// Chains run at once (one batch slot of the solver each).
    pub chains: usize,
    /// Warm-up steps per chain (step size adapted, nothing kept).
    pub warmup: usize,
    /// Draws kept per chain after warm-up.
    pub samples: usize,
    /// Keep every thin-th step.
    pub thin: usize,
    /// Initial step size (beta for pCN, h for MALA); `None`: the sampler's default.
    pub step: Option<f64>,
    pub seed: u64,
    pub precondition: Precondition,
    /// Steps between acceptance read-backs (and step-size updates) in warm-up.
    pub adapt_every: usize,
    /// Steps recorded per submit after warm-up.
    pub steps_per_submit: usize,
    /// Error if more than this fraction of proposals had a failed solve.
    pub max_failed_fraction: f64,
}

/// The defaults: MALA with the Laplace reference, 64 chains, 500 warm-up
/// and 1000 kept steps each. R-hat < 1.01 needs about 100 autocorrelation times per
/// chain; MALA's is ~6 steps on poisson1d (64 x 500 kept gave R-hat 1.013,
/// 64 x 1000 stays below 1.01; 15 s on lavapipe).
impl Default for McmcSettings {
    fn default() -> Self {
        McmcSettings {
            sampler: Sampler::Mala,
            chains: 64,
            warmup: 500,
            samples: 1000,
            thin: 1,
            step: None,
            seed: 0,
            precondition: Precondition::Laplace,
            adapt_every: 20,
            steps_per_submit: 50,
            max_failed_fraction: 0.01,
        }
    }
}

impl McmcSettings {
    /// Initial step size.
    pub fn initial_step(&self) -> f64 {
        self.step
            .unwrap_or_else(|| self.sampler.default_step(self.precondition))
    }

    /// Total steps per chain.
    pub fn total_steps(&self) -> usize {
        self.warmup + self.samples * self.thin
    }

    /// Reject settings that cannot give a result.
    pub fn validate(&self) -> Result<()> {
        if self.chains == 0 {
            return Err(Error::setting("chains", 0, "need at least one chain"));
        }
        if self.thin == 0 {
            return Err(Error::setting(
                "thin",
                0,
                "must be at least 1 (1 keeps every step)",
            ));
        }
        if self.samples < 4 {
            return Err(Error::setting(
                "samples",
                self.samples,
                "need at least 4 kept draws per chain (split R-hat halves each chain)",
            ));
        }
        let total = self
            .samples
            .checked_mul(self.thin)
            .and_then(|k| k.checked_add(self.warmup));
        if total.is_none_or(|t| t >= u32::MAX as usize) {
            return Err(Error::setting(
                "warmup",
                self.warmup,
                format!(
                    "warmup + samples x thin (= {} + {} x {}) must stay below 2^32 steps",
                    self.warmup, self.samples, self.thin
                ),
            ));
        }
        if self.adapt_every == 0 || self.steps_per_submit == 0 {
            return Err(Error::setting(
                "adapt_every",
                self.adapt_every,
                "read-back intervals must be at least one step",
            ));
        }
        let s = self.initial_step();
        if !(s.is_finite() && s > 0.0 && s <= self.sampler.max_step()) {
            return Err(Error::setting(
                "step",
                s,
                format!(
                    "the {} step size must be in (0, {}]",
                    self.sampler.name(),
                    self.sampler.max_step()
                ),
            ));
        }
        Ok(())
    }
}

/// The chains on the GPU: the batched solver (one system per chain), the
/// reference, chain states, proposals and the kept draws.
pub struct McmcEngine {
    pub solver: BatchedSolver,
    pub params: McmcParams,
    pub sampler: Sampler,
    params_buf: wgpu::Buffer,
    /// [m (d) | L (d x d)].
    pub reference: wgpu::Buffer,
    /// C x 3d: [w | g_w | x] per chain.
    pub state: wgpu::Buffer,
    /// C x 2d: [w' | g_w'] per chain.
    pub prop: wgpu::Buffer,
    pub chains: wgpu::Buffer,
    /// C x kept x (d + 1): x, logpi(x).
    pub samples: wgpu::Buffer,
    /// Proposals in whitened coordinates (per chain, four coordinates per invocation).
    propose: Dispatch,
    /// x = m + L w into the solver's xi.
    map: Dispatch,
    /// MALA: g_w = L^T (-dPhi/dx - x).
    grad: Dispatch,
    /// Metropolis-Hastings and the kept draws.
    accept: Dispatch,
    /// A surrogate forward model in place of the solver, if any.
    pub surrogate: Option<crate::infer::surrogate::SurrogateForward>,
    /// Section timings of every step, when profiling.
    pub profiler: Option<crate::gpu::profile::Profiler>,
}

/// Check a reference Gaussian (m, lower Cholesky factor L).
pub fn check_reference(d: usize, m: &[f64], l: &[f64]) -> Result<()> {
    if m.len() != d || l.len() != d * d {
        return Err(Error::setting(
            "reference",
            format!("({}, {})", m.len(), l.len()),
            format!("expected a mean of length {d} and a {d} x {d} factor"),
        ));
    }
    if let Some(v) = m.iter().chain(l).find(|v| !v.is_finite()) {
        return Err(Error::setting(
            "reference",
            v,
            "the reference Gaussian must be finite (did the Laplace fit fail?)",
        ));
    }
    if let Some(i) = (0..d).find(|&i| l[i * d + i] <= 0.0) {
        return Err(Error::setting(
            "reference",
            l[i * d + i],
            format!("the Cholesky factor needs a positive diagonal (entry {i})"),
        ));
    }
    Ok(())
}

impl McmcEngine {
    /// Allocate for `settings.chains` chains on the posterior of `problem`
    /// given `y` at `sensors`, with reference N(m, L L^T) (L lower, row-major).
    #[allow(clippy::too_many_arguments, reason = "the inputs of one posterior")]
    pub fn new(
        ctx: &GpuContext,
        problem: &Problem,
        sensors: &[usize],
        y: &[f64],
        cg: CgParams,
        settings: &McmcSettings,
        m: &[f64],
        l: &[f64],
    ) -> Result<Self> {
        Self::new_with(ctx, problem, sensors, y, cg, settings, m, l, None)
    }

    /// [`new`](Self::new) with a surrogate forward model (built for
    /// `settings.chains` rows) in place of the solver.
    #[allow(clippy::too_many_arguments, reason = "the inputs of one posterior")]
    pub fn new_with(
        ctx: &GpuContext,
        problem: &Problem,
        sensors: &[usize],
        y: &[f64],
        cg: CgParams,
        settings: &McmcSettings,
        m: &[f64],
        l: &[f64],
        surrogate: Option<crate::infer::surrogate::SurrogateForward>,
    ) -> Result<Self> {
        settings.validate()?;
        let d = problem.d;
        check_reference(d, m, l)?;
        if let Some(sf) = &surrogate {
            if sf.ws.batch != settings.chains {
                return Err(Error::setting(
                    "surrogate",
                    sf.ws.batch,
                    format!("rows must equal the chains ({})", settings.chains),
                ));
            }
        }
        let c = settings.chains;
        let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;
        if c > max_groups {
            return Err(Error::setting(
                "chains",
                c,
                format!("the device runs at most {max_groups} systems per dispatch"),
            ));
        }
        let sample_floats = (c as u64) * (settings.samples as u64) * (d as u64 + 1);
        if sample_floats * 4 > ctx.max_binding() {
            return Err(Error::TooLarge {
                what: format!(
                    "the kept draws ({c} chains x {} draws x {} floats; raise --thin or lower --samples)",
                    settings.samples,
                    d + 1
                ),
                bytes: sample_floats * 4,
                limit: ctx.max_binding(),
                limit_name: "storage buffer binding",
            });
        }
        let solver = BatchedSolver::new(ctx, problem, c, cg, Some(sensors), false)?;
        solver.set_data(ctx, y)?;
        let params = McmcParams {
            d: d as u32,
            chains: c as u32,
            sampler: settings.sampler.code(),
            mode: 0,
            seed_lo: settings.seed as u32,
            seed_hi: (settings.seed >> 32) as u32,
            warmup: settings.warmup as u32,
            thin: settings.thin as u32,
            kept: settings.samples as u32,
            step_size: settings.initial_step() as f32,
            _pad: [0; 2],
        };
        let refv: Vec<f32> = m.iter().chain(l).map(|&v| v as f32).collect();
        let reference = ctx.upload("mcmc.reference", &refv)?;
        let state = ctx.storage("mcmc.state", (c * 3 * d * 4) as u64)?;
        let prop = ctx.storage("mcmc.proposal", (c * 2 * d * 4) as u64)?;
        let chains = ctx.storage("mcmc.chains", (c * std::mem::size_of::<McmcChain>()) as u64)?;
        let samples = ctx.storage("mcmc.samples", sample_floats * 4)?;
        let params_buf = ctx.upload("mcmc.params", &[params])?;
        let s = &solver;
        // Where proposals go and where their misfit, gradient and solver
        // states come from: the solver, or the surrogate.
        let (xp, gxi, misfit, cg_fwd, cg_adj) = match &surrogate {
            Some(sf) => (&sf.ws.x, &sf.ws.dx, &sf.misfit, &sf.states, &sf.states),
            None => (&s.xi, &s.gxi, &s.misfit, &s.state_fwd, &s.state_adj),
        };
        let cd = [c * d, 1];
        let propose = ctx.prepare(
            &args::McmcPropose {
                params: &params_buf,
                state: &state,
                prop: &prop,
                chains: &chains,
            },
            [c * d.div_ceil(4), 1],
        )?;
        let map = ctx.prepare(
            &args::McmcMap {
                params: &params_buf,
                refm: &reference,
                prop: &prop,
                xp,
            },
            cd,
        )?;
        let grad = ctx.prepare(
            &args::McmcGrad {
                params: &params_buf,
                refm: &reference,
                prop: &prop,
                xp,
                gxi,
            },
            cd,
        )?;
        let accept = ctx.prepare(
            &args::McmcAccept {
                params: &params_buf,
                state: &state,
                prop: &prop,
                chains: &chains,
                xp,
                misfit,
                cg_fwd,
                cg_adj,
                samples: &samples,
            },
            [c, 1],
        )?;
        Ok(McmcEngine {
            solver,
            params,
            sampler: settings.sampler,
            params_buf,
            reference,
            state,
            prop,
            chains,
            samples,
            propose,
            map,
            grad,
            accept,
            surrogate,
            profiler: None,
        })
    }

    fn d(&self) -> usize {
        self.params.d as usize
    }

    fn c(&self) -> usize {
        self.params.chains as usize
    }

    /// Set the chains to w0 (C x d, whitened): solves at x = m + L w0 and
    /// stores logpi and its gradient; counters restart at zero.
    pub fn init(&mut self, ctx: &GpuContext, w0: &[f64]) -> Result<()> {
        let (c, d) = (self.c(), self.d());
        if w0.len() != c * d {
            return Err(Error::setting(
                "w0",
                w0.len(),
                format!("expected {c} x {d} values"),
            ));
        }
        let mut prop = vec![0f32; c * 2 * d];
        for k in 0..c {
            for i in 0..d {
                prop[k * 2 * d + i] = w0[k * d + i] as f32;
            }
        }
        ctx.write(&self.prop, &prop);
        ctx.write(&self.chains, &vec![McmcChain::default(); c]);
        let mut p = self.params;
        p.mode = 1;
        ctx.write(&self.params_buf, &[p]);
        let mut enc = ctx.encoder("pdevi.mcmc.init");
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("pdevi.mcmc.map"),
                timestamp_writes: None,
            });
            self.map.record(&mut pass);
        }
        self.encode_evaluate(&mut enc, None);
        ctx.submit_wait(enc)?;
        ctx.write(&self.params_buf, &[self.params]);
        let ch = self.read_chains(ctx)?;
        let bad: Vec<usize> = (0..c).filter(|&k| ch[k].failed > 0).collect();
        if let Some(&first) = bad.first() {
            let x = self.read_state(ctx)?;
            let x0: Vec<String> = x[first * 3 * d + 2 * d..first * 3 * d + 2 * d + d.min(4)]
                .iter()
                .map(|v| format!("{v:.3}"))
                .collect();
            return Err(Error::NoConvergence(format!(
                "MCMC initial states: the solves of {} of {c} chains did not converge or gave a non-finite log-density (first: chain {first}, x starts [{}, ...]); raise --max-iters or loosen --tol, or check the reference Gaussian",
                bad.len(),
                x0.join(", ")
            )));
        }
        Ok(())
    }

    /// Forward solve and misfit (and for MALA the adjoint and g_w') at the
    /// proposal already in the solver's xi, then the accept kernel; with a
    /// profiler, a timestamp after each section.
    fn encode_evaluate(
        &self,
        enc: &mut wgpu::CommandEncoder,
        mut prof: Option<&mut crate::gpu::profile::Profiler>,
    ) {
        if let Some(sf) = &self.surrogate {
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("pdevi.mcmc.surrogate"),
                    timestamp_writes: None,
                });
                sf.record(&mut pass, self.sampler == Sampler::Mala);
            }
            if let Some(p) = prof.as_deref_mut() {
                p.mark(enc, "surrogate forward (and backward)");
            }
        } else {
            self.solver.encode_forward(enc);
            if let Some(p) = prof.as_deref_mut() {
                p.mark(enc, "forward solves (KL map, CG)");
            }
            match self.sampler {
                Sampler::Pcn => self.solver.encode_misfit(enc),
                Sampler::Mala => self.solver.encode_gradient(enc),
            }
            if let Some(p) = prof.as_deref_mut() {
                p.mark(enc, "misfit (MALA: adjoint solves, gradient)");
            }
        }
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("pdevi.mcmc.accept"),
            timestamp_writes: None,
        });
        if self.sampler == Sampler::Mala {
            self.grad.record(&mut pass);
        }
        self.accept.record(&mut pass);
        drop(pass);
        if let Some(p) = prof {
            p.mark(enc, "accept / reject, kept draws");
        }
    }

    /// Record one MCMC step of every chain.
    pub fn encode_step(&self, enc: &mut wgpu::CommandEncoder) {
        self.encode_step_marked(enc, None);
    }

    fn encode_step_marked(
        &self,
        enc: &mut wgpu::CommandEncoder,
        mut prof: Option<&mut crate::gpu::profile::Profiler>,
    ) {
        if let Some(p) = prof.as_deref_mut() {
            p.begin(enc);
        }
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("pdevi.mcmc.propose"),
                timestamp_writes: None,
            });
            self.propose.record(&mut pass);
            self.map.record(&mut pass);
        }
        if let Some(p) = prof.as_deref_mut() {
            p.mark(enc, "proposals (pCN / MALA)");
        }
        self.encode_evaluate(enc, prof);
    }

    /// Record `n` steps into one encoder, submit and wait.
    pub fn run_steps(&mut self, ctx: &GpuContext, n: usize) -> Result<()> {
        let mut enc = ctx.encoder("pdevi.mcmc.steps");
        let mut prof = self.profiler.take();
        for _ in 0..n {
            self.encode_step_marked(&mut enc, prof.as_mut());
        }
        if let Some(p) = prof.as_mut() {
            p.resolve(&mut enc);
        }
        self.profiler = prof;
        let done = ctx.submit_wait(enc);
        if let Some(p) = self.profiler.as_mut() {
            p.collect(ctx)?;
        }
        done
    }

    /// Change the step size (beta or h) for the following steps.
    pub fn set_step_size(&mut self, ctx: &GpuContext, s: f64) {
        self.params.step_size = s as f32;
        ctx.write(&self.params_buf, &[self.params]);
    }

    /// Every buffer that carries from one step to the next (chain states,
    /// proposals, counters, the kept draws, the solver's warm starts), for
    /// checkpoints.
    pub fn state_buffers(&self) -> crate::output::checkpoint::Buffers<'_> {
        let mut b = vec![
            ("mcmc.state", &self.state),
            ("mcmc.prop", &self.prop),
            ("mcmc.chains", &self.chains),
            ("mcmc.samples", &self.samples),
        ];
        b.extend(self.solver.state_buffers());
        b
    }

    /// Dispatches recorded per step.
    pub fn dispatches_per_step(&self) -> usize {
        let fwd = 1 + self.solver.solve_dispatches(false) + 1; // kl_map, solve, misfit
        let solve = self.solver.solve_dispatches(true);
        let grad =
            usize::from(self.solver.problem.kind == crate::physics::problem::ProblemKind::Darcy2d);
        match self.sampler {
            Sampler::Pcn => 2 + fwd + 1,
            Sampler::Mala => 2 + fwd + solve + grad + 1 + 1 + 1,
        }
    }

    pub fn read_chains(&self, ctx: &GpuContext) -> Result<Vec<McmcChain>> {
        ctx.read(&self.chains, 0, self.c())
    }

    /// The chain states, C x 3d: [w | g_w | x] per chain.
    pub fn read_state(&self, ctx: &GpuContext) -> Result<Vec<f64>> {
        self.solver
            .read_f64(ctx, &self.state, self.c() * 3 * self.d())
    }

    /// The chains' current points x, C x d.
    pub fn read_x(&self, ctx: &GpuContext) -> Result<Vec<f64>> {
        let d = self.d();
        let s = self.read_state(ctx)?;
        Ok(s.chunks(3 * d).flat_map(|c| c[2 * d..].to_vec()).collect())
    }

    /// The proposals, C x 2d: [w' | g_w'] per chain.
    pub fn read_proposal(&self, ctx: &GpuContext) -> Result<Vec<f64>> {
        self.solver
            .read_f64(ctx, &self.prop, self.c() * 2 * self.d())
    }

    /// The kept draws: x (C x kept x d) and logpi (C x kept).
    pub fn read_samples(&self, ctx: &GpuContext) -> Result<(Vec<f64>, Vec<f64>)> {
        let (c, d, k) = (self.c(), self.d(), self.params.kept as usize);
        let raw = self.solver.read_f64(ctx, &self.samples, c * k * (d + 1))?;
        let mut x = Vec::with_capacity(c * k * d);
        let mut lp = Vec::with_capacity(c * k);
        for row in raw.chunks(d + 1) {
            x.extend_from_slice(&row[..d]);
            lp.push(row[d]);
        }
        Ok((x, lp))
    }
}

/// What [`sample_posterior`] returns.
#[derive(Clone, Debug)]
pub struct McmcResult {
    /// Stopped by Ctrl-C after this many steps (the draws kept until then).
    pub interrupted: Option<usize>,
    /// Section timings (`--profile`; null without timestamps).
    pub profile: serde_json::Value,
    pub sampler: Sampler,
    pub chains: usize,
    /// Kept draws per chain.
    pub kept: usize,
    pub d: usize,
    /// x of the kept draws, chains x kept x d (pooled chain-major: N x d).
    pub samples: Vec<f64>,
    /// logpi(x) = -Phi - |x|^2/2 of the kept draws, chains x kept.
    pub logpost: Vec<f64>,
    /// Acceptance rate after warm-up (mean over chains).
    pub acceptance: f64,
    /// Acceptance rate of each chain after warm-up.
    pub acceptance_per_chain: Vec<f64>,
    /// Step size after warm-up (beta for pCN, h for MALA).
    pub step: f64,
    /// (step, step size, acceptance over the interval) at each warm-up read-back.
    pub adaptation: Vec<(usize, f64, f64)>,
    /// (step, logpi per chain) at each warm-up read-back.
    pub warmup_trace: Vec<(usize, Vec<f64>)>,
    /// Rank-normalised split R-hat per coordinate of xi.
    pub rhat: Vec<f64>,
    /// Bulk effective sample size per coordinate of xi.
    pub ess_bulk: Vec<f64>,
    /// Proposals rejected because a solve failed, and all proposals.
    pub failed_solves: u64,
    pub proposals: u64,
    pub warmup_seconds: f64,
    pub sampling_seconds: f64,
    pub seconds: f64,
    pub dispatches_per_step: usize,
}

impl McmcResult {
    /// Number of pooled draws.
    pub fn n(&self) -> usize {
        self.chains * self.kept
    }

    /// Largest R-hat over xi (NaN-aware: NaN if any is NaN).
    pub fn max_rhat(&self) -> f64 {
        self.rhat.iter().fold(f64::NEG_INFINITY, |a, &b| {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.max(b)
            }
        })
    }

    pub fn min_ess(&self) -> f64 {
        self.ess_bulk.iter().fold(f64::INFINITY, |a, &b| {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.min(b)
            }
        })
    }

    pub fn median_ess(&self) -> f64 {
        let mut v = self.ess_bulk.clone();
        v.sort_by(f64::total_cmp);
        crate::check::stats::quantile(&v, 0.5)
    }

    /// Minimum bulk ESS over xi per second of sampling (after warm-up).
    pub fn ess_per_second(&self) -> f64 {
        self.min_ess() / self.sampling_seconds.max(1e-12)
    }

    /// The draws of coordinate i, one vector per chain.
    pub fn coordinate(&self, i: usize) -> Vec<Vec<f64>> {
        let (k, d) = (self.kept, self.d);
        (0..self.chains)
            .map(|c| (0..k).map(|t| self.samples[(c * k + t) * d + i]).collect())
            .collect()
    }

    /// Mean and covariance (d x d, divisor N - 1) of the pooled draws.
    pub fn moments(&self) -> (Vec<f64>, Vec<f64>) {
        sample_moments(&self.samples, self.d)
    }
}

/// Mean and covariance (divisor N - 1) of draws stored N x d.
pub fn sample_moments(x: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = x.len() / d;
    let mut mean = vec![0.0; d];
    for row in x.chunks(d) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    for m in mean.iter_mut() {
        *m /= n.max(1) as f64;
    }
    let mut cov = vec![0.0; d * d];
    let mut c = vec![0.0; d];
    for row in x.chunks(d) {
        for i in 0..d {
            c[i] = row[i] - mean[i];
        }
        for i in 0..d {
            for j in 0..=i {
                cov[i * d + j] += c[i] * c[j];
            }
        }
    }
    let div = (n.max(2) - 1) as f64;
    for i in 0..d {
        for j in 0..=i {
            let v = cov[i * d + j] / div;
            cov[i * d + j] = v;
            cov[j * d + i] = v;
        }
    }
    (mean, cov)
}

/// Robbins-Monro gain on log(step) after k - 1 read-backs near the target.
fn adapt_gain(k: usize) -> f64 {
    2.0 / (k as f64).powf(0.6)
}

/// Acceptance within this of the target counts as near it (gain decays).
const ADAPT_NEAR: f64 = 0.2;

/// Initial whitened states: draws of the reference Gaussian, w ~ N(0, I).
pub fn initial_states(seed: u64, chains: usize, d: usize) -> Vec<f64> {
    crate::rng::normals(seed, crate::rng::streams::MCMC_INIT, 0, chains * d)
}

/// Run the chains on the posterior of `pb` given `y` at `sensors`, with the
/// reference Gaussian N(m, L L^T) (`reference` = (m, L), L lower and
/// row-major). `progress(step, total)` is called at every read-back.
#[allow(clippy::too_many_arguments, reason = "the inputs of one posterior")]
pub fn sample_posterior(
    ctx: &GpuContext,
    pb: &Problem,
    sensors: &[usize],
    y: &[f64],
    cg: CgParams,
    settings: &McmcSettings,
    reference: (&[f64], &[f64]),
    progress: impl FnMut(usize, usize),
) -> Result<McmcResult> {
    sample_posterior_with(
        ctx,
        pb,
        sensors,
        y,
        cg,
        settings,
        reference,
        None,
        progress,
        None,
        &McmcControl::default(),
    )
}

/// Checkpoints, resume and Ctrl-C for [`sample_posterior_with`].
#[derive(Clone, Debug, Default)]
pub struct McmcControl {
    /// Continue from this checkpoint (same settings and reference).
    pub resume: Option<std::sync::Arc<crate::output::checkpoint::Checkpoint>>,
    /// Save a checkpoint here every `every` steps (at the first read-back
    /// at or after each multiple), and when Ctrl-C stops the run.
    pub checkpoint: Option<(std::path::PathBuf, Option<usize>)>,
    /// Settings kept in the checkpoint (what `--resume` checks against).
    pub config: serde_json::Value,
    /// GPU timestamps between the sections of every step (`--profile`).
    pub profile: bool,
}

/// What a caller may do at each read-back of [`sample_posterior_with`]:
/// look at the chains' current states (`x`, chains x d) after step `t`.
pub type McmcWatch<'a> = dyn FnMut(usize, &[f64], &[McmcChain]) -> Result<()> + 'a;

/// [`sample_posterior`] with a surrogate forward model (rows = chains) in
/// place of the solver.
#[allow(clippy::too_many_arguments, reason = "the inputs of one posterior")]
pub fn sample_posterior_with(
    ctx: &GpuContext,
    pb: &Problem,
    sensors: &[usize],
    y: &[f64],
    cg: CgParams,
    settings: &McmcSettings,
    reference: (&[f64], &[f64]),
    surrogate: Option<crate::infer::surrogate::SurrogateForward>,
    mut progress: impl FnMut(usize, usize),
    mut watch: Option<&mut McmcWatch<'_>>,
    control: &McmcControl,
) -> Result<McmcResult> {
    let t0 = Instant::now();
    let s = settings;
    let (c, d) = (s.chains, pb.d);
    let mut eng = McmcEngine::new_with(
        ctx,
        pb,
        sensors,
        y,
        cg,
        s,
        reference.0,
        reference.1,
        surrogate,
    )?;
    let total = s.total_steps();
    if control.profile {
        eng.profiler = crate::gpu::profile::Profiler::new(ctx);
    }
    let target = s.sampler.target_acceptance();
    let max_log = s.sampler.max_step().ln();
    let mut log_step = s.initial_step().ln();
    let mut adaptation = Vec::new();
    let mut warmup_trace = Vec::new();
    let mut prev = vec![0u32; c];
    let mut t = 0usize;
    let mut k = 0usize;
    let mut at_warmup: Vec<u32> = Vec::new();
    let mut warmup_seconds = 0.0;
    if let Some(ck) = &control.resume {
        ck.restore(ctx, &eng.state_buffers(), &ck.path)?;
        let h = &ck.host;
        let get = |k: &str| h.get(k).cloned().unwrap_or_default();
        let bad = |what: &str| Error::Format {
            path: ck.path.clone(),
            message: format!("the checkpoint's {what} does not read back"),
        };
        t = get("t").as_u64().ok_or_else(|| bad("step"))? as usize;
        k = get("k").as_u64().ok_or_else(|| bad("adaptation count"))? as usize;
        log_step = get("log_step").as_f64().ok_or_else(|| bad("step size"))?;
        prev = serde_json::from_value(get("prev")).map_err(|_| bad("accept counts"))?;
        at_warmup = serde_json::from_value(get("at_warmup")).map_err(|_| bad("accept counts"))?;
        adaptation = serde_json::from_value(get("adaptation")).map_err(|_| bad("adaptation"))?;
        warmup_trace =
            serde_json::from_value(get("warmup_trace")).map_err(|_| bad("warm-up trace"))?;
        warmup_seconds = get("warmup_seconds").as_f64().unwrap_or(0.0);
        eng.set_step_size(ctx, log_step.exp());
    } else {
        eng.init(ctx, &initial_states(s.seed, c, d))?;
    }
    let mut next_ck = control
        .checkpoint
        .as_ref()
        .and_then(|(_, every)| *every)
        .map(|e| t + e.max(1));
    // A checkpoint of the state after step `t` (host state as JSON).
    #[allow(clippy::too_many_arguments, reason = "the sampler's host state")]
    fn save(
        ctx: &GpuContext,
        eng: &McmcEngine,
        control: &McmcControl,
        t: usize,
        k: usize,
        log_step: f64,
        prev: &[u32],
        at_warmup: &[u32],
        adaptation: &[(usize, f64, f64)],
        warmup_trace: &[(usize, Vec<f64>)],
        warmup_seconds: f64,
    ) -> Result<()> {
        let Some((path, _)) = &control.checkpoint else {
            return Ok(());
        };
        let host = serde_json::json!({
            "t": t, "k": k, "log_step": log_step, "prev": prev, "at_warmup": at_warmup,
            "adaptation": adaptation, "warmup_trace": warmup_trace,
            "warmup_seconds": warmup_seconds, "config": control.config,
            "device": ctx.describe(),
        });
        crate::output::checkpoint::Checkpoint::capture(ctx, "mcmc", &eng.state_buffers(), host)?
            .save(path)
    }
    // Save the state after step `t` and move the next checkpoint on (the
    // warm-up and the sampling loops both do; the locals are the host state).
    let ck_every = control.checkpoint.as_ref().and_then(|c| c.1).unwrap_or(1);
    macro_rules! checkpoint_now {
        ($warmup_seconds:expr) => {{
            save(
                ctx,
                &eng,
                control,
                t,
                k,
                log_step,
                &prev,
                &at_warmup,
                &adaptation,
                &warmup_trace,
                $warmup_seconds,
            )?;
            next_ck = next_ck.map(|at| at.max(t) + ck_every);
        }};
    }
    let check_failed = |ch: &[McmcChain], t: usize| -> Result<u64> {
        let failed: u64 = ch.iter().map(|x| x.failed as u64).sum();
        let props = (t * c) as u64;
        if failed > 0 && failed as f64 > s.max_failed_fraction * props as f64 {
            return Err(Error::NoConvergence(format!(
                "MCMC step {t}: {failed} of {props} proposals had a solve that did not converge (more than {:.1} %); raise --max-iters or loosen --tol (the proposals reach fields the solver cannot handle)",
                100.0 * s.max_failed_fraction
            )));
        }
        Ok(failed)
    };
    while t < s.warmup {
        let n = s.adapt_every.min(s.warmup - t);
        eng.run_steps(ctx, n)?;
        t += n;
        let ch = eng.read_chains(ctx)?;
        check_failed(&ch, t)?;
        let acc: u64 = ch
            .iter()
            .zip(&prev)
            .map(|(x, p)| (x.accepts - p) as u64)
            .sum();
        let rate = acc as f64 / (c * n) as f64;
        adaptation.push((t, log_step.exp(), rate));
        warmup_trace.push((t, ch.iter().map(|x| x.lp as f64).collect()));
        prev = ch.iter().map(|x| x.accepts).collect();
        // The gain decays only once the acceptance is near the target, so a
        // poor initial step is corrected at full speed (x2.4 or /3 per read-back).
        if (rate - target).abs() <= ADAPT_NEAR {
            k += 1;
        }
        log_step = (log_step + adapt_gain(k + 1) * (rate - target)).min(max_log);
        if !log_step.is_finite() {
            log_step = s.initial_step().ln();
        }
        eng.set_step_size(ctx, log_step.exp());
        progress(t, total);
        if let Some(w) = watch.as_deref_mut() {
            w(t, &eng.read_x(ctx)?, &ch)?;
        }
        let stop = crate::interrupt::requested();
        if next_ck.is_some_and(|at| t >= at) || stop {
            checkpoint_now!(warmup_seconds + t0.elapsed().as_secs_f64());
        }
        if stop {
            return Err(Error::Interrupted(format!(
                "stopped during the warm-up, after step {t} of {}; no draws kept yet{}",
                s.warmup,
                match &control.checkpoint {
                    Some((p, _)) => format!(
                        "; continue with `pdevi mcmc --resume {}`",
                        p.parent()
                            .map(|d| d.display().to_string())
                            .unwrap_or_default()
                    ),
                    None => String::new(),
                }
            )));
        }
    }
    if control.resume.is_none() || t == s.warmup {
        warmup_seconds += t0.elapsed().as_secs_f64();
    }
    let t1 = Instant::now();
    let mut ch = eng.read_chains(ctx)?;
    if at_warmup.is_empty() {
        at_warmup = ch.iter().map(|x| x.accepts).collect();
    }
    let mut interrupted = None;
    while t < total {
        let n = s.steps_per_submit.min(total - t);
        eng.run_steps(ctx, n)?;
        t += n;
        ch = eng.read_chains(ctx)?;
        check_failed(&ch, t)?;
        progress(t, total);
        if let Some(w) = watch.as_deref_mut() {
            w(t, &eng.read_x(ctx)?, &ch)?;
        }
        let stop = crate::interrupt::requested() && t < total;
        if (next_ck.is_some_and(|at| t >= at) && t < total) || stop {
            checkpoint_now!(warmup_seconds);
        }
        if stop {
            interrupted = Some(t);
            break;
        }
    }
    let (mut samples, mut logpost) = eng.read_samples(ctx)?;
    let sampling_seconds = t1.elapsed().as_secs_f64();
    // Interrupted: the draws kept so far (the same number in every chain).
    let kept = ch.first().map_or(0, |x| x.kept as usize);
    if interrupted.is_some() {
        if kept < 4 {
            return Err(Error::Interrupted(format!(
                "stopped after step {t} with {kept} draws per chain (R-hat needs 4); continue with --resume"
            )));
        }
        let cap = s.samples;
        samples = (0..c)
            .flat_map(|j| samples[j * cap * d..(j * cap + kept) * d].to_vec())
            .collect();
        logpost = (0..c)
            .flat_map(|j| logpost[j * cap..j * cap + kept].to_vec())
            .collect();
    }
    let want = if interrupted.is_some() {
        kept
    } else {
        s.samples
    };
    if let Some((i, x)) = ch.iter().enumerate().find(|(_, x)| x.kept as usize != want) {
        return Err(Error::Gpu {
            context: "MCMC".into(),
            message: format!("chain {i} kept {} draws, expected {want}", x.kept),
        });
    }
    let steps_after = (t - s.warmup).max(1) as f64;
    let acceptance_per_chain: Vec<f64> = ch
        .iter()
        .zip(&at_warmup)
        .map(|(x, a)| (x.accepts - a) as f64 / steps_after)
        .collect();
    let acceptance = acceptance_per_chain.iter().sum::<f64>() / c as f64;
    let failed_solves = check_failed(&ch, t)?;
    let mut r = McmcResult {
        interrupted,
        profile: eng
            .profiler
            .as_ref()
            .map_or(serde_json::Value::Null, |p| p.report().0),
        sampler: s.sampler,
        chains: c,
        kept: want,
        d,
        samples,
        logpost,
        acceptance,
        acceptance_per_chain,
        step: eng.params.step_size as f64,
        adaptation,
        warmup_trace,
        rhat: Vec::new(),
        ess_bulk: Vec::new(),
        failed_solves,
        proposals: (t * c) as u64,
        warmup_seconds,
        sampling_seconds,
        seconds: 0.0,
        dispatches_per_step: eng.dispatches_per_step(),
    };
    if let Some(i) = r.samples.iter().position(|v| !v.is_finite()) {
        return Err(Error::Diverged(format!(
            "MCMC draw {} of chain {} holds a non-finite value",
            (i / d) % want,
            i / d / want
        )));
    }
    for i in 0..d {
        let chains_i = r.coordinate(i);
        r.rhat.push(crate::check::stats::split_rhat(&chains_i));
        r.ess_bulk.push(crate::check::stats::ess_bulk(&chains_i));
    }
    r.seconds = t0.elapsed().as_secs_f64();
    Ok(r)
}

/// The reference Gaussian of `precondition` for the posterior of `pb` given
/// `y` at `sensors`: (m, L, description for metrics.json).
pub fn reference_for(
    ctx: &GpuContext,
    pb: &Problem,
    sensors: &[usize],
    y: &[f64],
    cg: CgParams,
    precondition: Precondition,
    gn_iters: usize,
) -> Result<(Vec<f64>, Vec<f64>, serde_json::Value)> {
    let d = pb.d;
    match precondition {
        Precondition::Prior => {
            let mut l = vec![0.0; d * d];
            for i in 0..d {
                l[i * d + i] = 1.0;
            }
            Ok((vec![0.0; d], l, serde_json::json!({ "kind": "prior" })))
        }
        Precondition::Laplace => {
            let lap = crate::infer::laplace::fit_laplace(ctx, pb, sensors, y, cg, gn_iters)?;
            if lap.map.len() != d
                || lap.cov.len() != d * d
                || lap.map.iter().chain(&lap.cov).any(|v| !v.is_finite())
            {
                return Err(Error::Diverged(
                    "the Laplace fit for the MCMC reference is not finite; use --precondition prior"
                        .into(),
                ));
            }
            let l = crate::math::linalg::cholesky(&lap.cov, d)
                .map_err(|e| Error::not_spd("the Laplace covariance (MCMC reference)", e))?;
            Ok((
                lap.map,
                l,
                serde_json::json!({
                    "kind": "laplace",
                    "gn_iterations": lap.iterations,
                    "objective": lap.objective,
                }),
            ))
        }
    }
}
