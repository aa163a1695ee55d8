//! Batched forward and adjoint solves on the GPU.
//!
//! [`BatchedSolver`] holds, for B systems of one problem, every buffer and
//! bind group of the pipeline
//! `xi -> z (KL) -> A(z) u = b (CG) -> misfit, adjoint CG -> dmisfit/dz -> dmisfit/dxi`,
//! built once. The `encode_*` methods only record work into a command
//! encoder; callers submit once per step and read back scalars.

use crate::error::{CgError, Error, Result};
use crate::gpu::layout::{status, CgState, PdeParams};
use crate::gpu::{args, Dispatch, GpuContext, KernelId};
use crate::physics::problem::{Problem, ProblemKind};

/// Settings of the iterative solver (shared by the GPU and CPU paths).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CgParams {
    /// Stop when ||b - A x|| <= rel_tol ||b|| (recursive residual).
    pub rel_tol: f64,
    /// Iteration cap per system.
    pub max_iters: u32,
    /// Iterations per dispatch (bounds one dispatch's run time).
    pub chunk: u32,
    /// Start from the previous solution instead of zero.
    pub warm_start: bool,
    /// poisson1d: solve the tridiagonal system directly (Thomas) instead of
    /// by CG. Exact in one pass; CG stays available for comparison.
    pub direct_1d: bool,
    /// darcy2d: the CG preconditioner.
    pub precond: Precond,
    /// darcy2d with multigrid: one workgroup per system, or each system
    /// over many workgroups.
    pub layout: SolverLayout,
}

/// How multigrid-preconditioned solves are spread over the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SolverLayout {
    /// Wide for small batches of large grids ([`wide_by_default`]), narrow
    /// otherwise.
    #[default]
    Auto,
    /// One workgroup per system runs the whole CG loop (a few dispatches per
    /// solve): right when the batch fills the device.
    Narrow,
    /// Each system over many workgroups, one dispatch per phase of the
    /// V-cycle and of the CG iteration, still no read-back per iteration
    /// (shaders/physics/multigrid.wgsl, `mgw_*`): for a batch too small to
    /// fill the device.
    Wide,
}

impl SolverLayout {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "auto" => Ok(SolverLayout::Auto),
            "narrow" => Ok(SolverLayout::Narrow),
            "wide" => Ok(SolverLayout::Wide),
            other => Err(Error::setting(
                "layout",
                other,
                "expected auto, narrow or wide",
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SolverLayout::Auto => "auto",
            SolverLayout::Narrow => "narrow",
            SolverLayout::Wide => "wide",
        }
    }
}

/// Iteration cap of the wide path, whose every iteration is recorded (a
/// stopped solve's dispatches are empty but still cost about 50 us each on
/// lavapipe): multigrid needs 6-7 iterations to 1e-5 on prior draws, and a
/// solve that needs more than this fails with the iteration cap named.
pub const WIDE_MAX_ITERS: u32 = 16;

/// Rows of a column segment, one invocation's walk in the wide path (the
/// shader's `MGW_SEG`).
pub const WIDE_SEGMENT: usize = 64;

/// Items (column segments) of a wide pass over a level with `m` unknowns
/// per side.
pub fn wide_items(m: usize) -> usize {
    m * m.div_ceil(WIDE_SEGMENT)
}

/// Floats of the wide path's `partials` per system (the shader's
/// `mgw_stride`): two banks of one sum per level-0 workgroup, then alpha,
/// beta and padding.
pub fn wide_partials(n: usize, wg: u32) -> usize {
    2 * wide_items(n - 1).div_ceil(wg as usize) + 4
}

/// Whether [`SolverLayout::Auto`] spreads each system over many workgroups:
/// when the batch leaves most of the device idle and a grid's passes are
/// large enough to pay for a dispatch per phase. On CPU devices (lavapipe,
/// llvmpipe) the device is `threads` cores and the crossover was measured
/// (docs/benchmarks.md, "Big single systems"). On GPUs the rule is an
/// estimate until measured on one: a GPU runs a hundred or more workgroups
/// at once, so one workgroup per system leaves most of it idle below that
/// many systems, and at n >= 128 a pass has thousands of column segments
/// to spread, while a dispatch costs microseconds.
pub fn wide_by_default(device: wgpu::DeviceType, threads: usize, batch: usize, n: usize) -> bool {
    match device {
        wgpu::DeviceType::Cpu => batch < threads.max(1) && n >= WIDE_MIN_N_CPU,
        _ => batch < 64 && n >= 128,
    }
}

/// Smallest grid that the wide path serves by default on CPU devices.
pub const WIDE_MIN_N_CPU: usize = 512;

/// The preconditioner of darcy2d's CG solves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precond {
    /// Multigrid where the device and grid allow it, Jacobi otherwise.
    #[default]
    Auto,
    /// The inverse diagonal: cheap per iteration, iterations grow like n.
    Jacobi,
    /// One multigrid V-cycle (Galerkin coarse operators, damped-Jacobi
    /// smoothing; shaders/physics/multigrid.wgsl): iterations flat in n.
    Multigrid,
}

impl Precond {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "auto" => Ok(Precond::Auto),
            "jacobi" => Ok(Precond::Jacobi),
            "mg" | "multigrid" => Ok(Precond::Multigrid),
            other => Err(Error::setting(
                "precond",
                other,
                "expected auto, jacobi or mg",
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precond::Auto => "auto",
            Precond::Jacobi => "jacobi",
            Precond::Multigrid => "mg",
        }
    }
}

/// Coarsen while the grid has more cells per side than this (the shader's
/// `MG_COARSEST`).
pub const MULTIGRID_COARSEST: usize = 4;

/// Iteration cap of multigrid-preconditioned CG (it needs 4-7 to 1e-5 on
/// prior draws at any n; more means something is wrong).
pub const MULTIGRID_MAX_ITERS: u32 = 40;

/// The work extent of `kl_map` (shaders/physics/kl.wgsl): blocks of 4 cells
/// x 8 systems.
pub fn kl_map_extent(ncoef: usize, batch: usize) -> [usize; 2] {
    [ncoef.div_ceil(4), batch.div_ceil(8)]
}

/// The work extent of `kl_pullback_serial`: blocks of 4 modes x 8 systems.
pub fn kl_pullback_extent(d: usize, batch: usize) -> [usize; 2] {
    [d.div_ceil(4), batch.div_ceil(8)]
}

/// The multigrid hierarchy of shaders/physics/multigrid.wgsl for `n x n`
/// cells: interior unknowns per side of every level, coarsest last (the
/// same rule as the shader and as `cpu::multigrid::Hierarchy`).
pub fn multigrid_levels(n: usize) -> Vec<usize> {
    let (mut cells, mut m) = (n, vec![n - 1]);
    while m.len() < 12 && cells > MULTIGRID_COARSEST && cells % 2 == 0 && cells / 2 >= 2 {
        cells /= 2;
        m.push(cells - 1);
    }
    m
}

/// Floats of the multigrid solver's `work` per system: r, p, ap, z, then per
/// level its stencil, dinv, x, b, t, and the coarsest level's dense factor.
pub fn multigrid_floats(n: usize) -> usize {
    let levels = multigrid_levels(n);
    let last = levels.len() - 1;
    let mut total = 4 * (n - 1) * (n - 1);
    for (l, &m) in levels.iter().enumerate() {
        let nu = m * m;
        total += 13 * nu + if l == last { nu * nu } else { 0 };
    }
    total
}

/// How multigrid CG is dispatched for a grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultigridPlan {
    /// CG iterations per iterate dispatch.
    pub chunk: u32,
    /// The hierarchy's setup in a dispatch of its own (`mg_cg_setup`, then
    /// `mg_cg_start_reuse`): it and the first cycle do not fit one.
    pub separate_setup: bool,
}

/// The chunk of multigrid-CG iterations per dispatch under
/// [`LOOP_TRIP_BUDGET`], and whether the hierarchy's setup fits in the
/// start dispatch with them. The model counts the loop trips of one invocation in
/// shaders/physics/multigrid.wgsl: column walks make `ceil(m / wg) m`
/// trips, strided passes `ceil(m^2 / wg)`, the coarsest level's one
/// invocation its triangular solves and its factorisation.
pub fn multigrid_plan(n: usize, wg: u32) -> Result<MultigridPlan> {
    let levels = multigrid_levels(n);
    let wg = wg as usize;
    let coarsest = levels[levels.len() - 1].pow(2);
    if coarsest > 256 {
        return Err(Error::setting(
            "precond",
            "mg",
            format!(
                "n = {n} coarsens to {} unknowns on its coarsest grid (at most 256 are solved directly): use n = m 2^k with m <= 17, or --precond jacobi",
                coarsest
            ),
        ));
    }
    let strided = |m: usize| (m * m).div_ceil(wg);
    let walk = |m: usize| m.div_ceil(wg) * m;
    let last = levels.len() - 1;
    // Per V-cycle and level above the coarsest: the first sweep (strided),
    // two column walks down (sweep, residual), the restriction walk on the
    // coarse level, and three up (prolongation, two sweeps); 16 trips of
    // slack for the level loops.
    let cycle: usize = levels[..last]
        .iter()
        .zip(&levels[1..])
        .map(|(&m, &mc)| strided(m) + 5 * walk(m) + walk(mc) + 16)
        .sum::<usize>()
        + coarsest
        + strided(levels[0]);
    let cols = (wg as f64).sqrt() as usize;
    // Plus the CG's operator walk, two strided updates and two reductions.
    let per_iter = cycle + walk(n - 1) + 2 * strided(n - 1) + 4 * cols + 16;
    // Setup: level 0's diagonal; per coarse level its elements (the offset
    // loop adds l trips each), stencil walk and diagonal; the coarsest
    // level's dense matrix and Cholesky factor.
    let setup: usize = strided(levels[0])
        + levels
            .iter()
            .enumerate()
            .skip(1)
            .map(|(l, &m)| strided(m + 1) * (l + 1) + walk(m) + strided(m))
            .sum::<usize>()
        + coarsest * 10
        + coarsest.pow(3) / 3
        + 2 * strided(n - 1);
    let budget = LOOP_TRIP_BUDGET as usize;
    if setup.max(per_iter) > budget {
        return Err(Error::setting(
            "precond",
            "mg",
            format!(
                "n = {n} needs about {} loop trips per invocation for the multigrid setup or one iteration, over the budget of {budget} a software GPU allows: use a smaller n or --precond jacobi",
                setup.max(per_iter)
            ),
        ));
    }
    // The start dispatch runs the setup and one cycle (or, past the budget,
    // the setup gets a dispatch of its own); each iterate dispatch only
    // iterations.
    Ok(MultigridPlan {
        chunk: (budget / per_iter).max(1) as u32,
        separate_setup: setup + per_iter > budget,
    })
}

/// Largest chunk of multigrid-CG iterations per dispatch (see
/// [`multigrid_plan`]).
pub fn multigrid_max_chunk(n: usize, wg: u32) -> Result<u32> {
    multigrid_plan(n, wg).map(|p| p.chunk)
}

impl Default for CgParams {
    fn default() -> Self {
        CgParams {
            rel_tol: 1e-5,
            max_iters: 4000,
            // Capped by max_chunk (the loop-trip budget) per problem size.
            chunk: 1024,
            warm_start: false,
            direct_1d: true,
            precond: Precond::Jacobi,
            layout: SolverLayout::Auto,
        }
    }
}

impl CgParams {
    /// The default tolerance and cap with the `auto` preconditioner
    /// (multigrid where the grid and device allow it); `warm_start` for
    /// sequences of nearby solves (VI steps), off for independent draws.
    pub fn auto(warm_start: bool) -> Self {
        CgParams {
            warm_start,
            precond: Precond::Auto,
            ..Default::default()
        }
    }
}

/// Outcome of one system's solve.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct CgInfo {
    pub iters: u32,
    /// ||r|| / ||b|| (recursive residual).
    pub rel_residual: f64,
    pub converged: bool,
    /// 1 converged, 2 iteration cap, 3 breakdown (not SPD or NaN).
    pub status: u32,
}

impl CgInfo {
    pub fn from_state(s: &CgState) -> Self {
        let rel = if s.bnorm2 > 0.0 {
            (s.rnorm2 as f64 / s.bnorm2 as f64).sqrt()
        } else {
            0.0
        };
        CgInfo {
            iters: s.iters,
            rel_residual: rel,
            converged: s.status == status::CONVERGED,
            status: s.status,
        }
    }
}

/// Turn per-system infos into an error if any system failed.
pub fn check_converged(infos: &[CgInfo], what: &str, params: &CgParams) -> Result<()> {
    let bad: Vec<(usize, &CgInfo)> = infos
        .iter()
        .enumerate()
        .filter(|(_, i)| !i.converged)
        .collect();
    if let Some(&(sys, info)) = bad.first() {
        debug_assert_eq!(status::BREAKDOWN, 3);
        return Err(Error::Cg(CgError {
            what: what.to_string(),
            failed: bad.len(),
            systems: infos.len(),
            first: sys,
            iters: info.iters,
            rel_residual: info.rel_residual,
            status: info.status,
            rel_tol: params.rel_tol,
            max_iters: params.max_iters,
        }));
    }
    Ok(())
}

/// Loop trips one invocation may make in one dispatch. llvmpipe (lavapipe,
/// and Mesa's GL) silently leaves any loop after 65535 trips per invocation
/// (gallivm's loop limiter), which corrupts a long CG dispatch without any
/// error; real GPUs have watchdogs instead. Both are avoided by bounding the
/// iterations per dispatch.
pub const LOOP_TRIP_BUDGET: u32 = 60_000;

/// Largest CG chunk (iterations per dispatch) that keeps one invocation
/// under [`LOOP_TRIP_BUDGET`] for `nunk` unknowns per system: each
/// iteration makes 3 strided passes of ceil(nunk / WG) trips plus 2
/// two-level reductions of 2 sqrt(WG) trips.
pub fn max_chunk(nunk: usize, wg: u32) -> Result<u32> {
    let cols = (wg as f64).sqrt() as u32;
    let per_iter = 3 * (nunk as u32).div_ceil(wg) + 4 * cols + 2;
    let c = LOOP_TRIP_BUDGET / per_iter;
    if c == 0 {
        return Err(Error::setting(
            "n",
            nunk,
            "too many unknowns per system for the one-workgroup-per-system solver (at most about 5 million)",
        ));
    }
    Ok(c)
}

/// Buffers and bind groups for B systems of one problem.
pub struct BatchedSolver {
    pub problem: Problem,
    pub batch: usize,
    pub cg: CgParams,
    pub params: PdeParams,
    // Buffers (f32 on the device).
    pub xi: wgpu::Buffer,
    pub basis: wgpu::Buffer,
    pub z: wgpu::Buffer,
    /// kappa = exp(z) (darcy2d) or the load h f (poisson1d).
    pub kappa_or_load: wgpu::Buffer,
    /// Constant load h^2 (darcy2d only; poisson1d uses `kappa_or_load`).
    pub rhs_const: wgpu::Buffer,
    pub u: wgpu::Buffer,
    pub lam: wgpu::Buffer,
    pub adj: wgpu::Buffer,
    pub work: wgpu::Buffer,
    pub state_fwd: wgpu::Buffer,
    pub state_adj: wgpu::Buffer,
    pub g: wgpu::Buffer,
    pub gxi: wgpu::Buffer,
    pub sensors: wgpu::Buffer,
    pub data: wgpu::Buffer,
    pub misfit: wgpu::Buffer,
    nsens: usize,
    per_system_data: bool,
    /// Parameter blocks the bind groups use (kept alive with them).
    _uniforms: Vec<wgpu::Buffer>,
    /// The solver kernels' parameter block (rewritten by [`set_tol`](Self::set_tol)).
    solver_params: wgpu::Buffer,
    /// xi -> z and the coefficient.
    kl: Dispatch,
    /// The forward solve (u) and the adjoint solve (lambda).
    fwd: Solve,
    adjoint: Solve,
    /// Misfit and adjoint right-hand side.
    obs: Dispatch,
    /// dmisfit/dz per cell (darcy2d only).
    grad: Option<Dispatch>,
    /// dmisfit/dxi.
    pull: Dispatch,
    /// A generative prior's decoder in place of the KL map and its pullback.
    decoder: Option<DecoderMap>,
}

/// `xi -> z` through a VAE decoder: the decoder's forward pass on the
/// latent rows, then `prior_field` (z = tanh(l / 2), kappa = exp z); and
/// back: `prior_field_grad`, then the decoder's backward pass to its input.
struct DecoderMap {
    _net: crate::nn::mlp::Mlp,
    ws: crate::nn::mlp::Workspace,
    field: Dispatch,
    grad: Dispatch,
    latent_bytes: u64,
}

/// How one batch of systems is solved.
enum Solve {
    /// CG: a start (after the multigrid setup, where that has a dispatch of
    /// its own), then bounded chunks of iterations.
    Cg {
        setup: Option<Dispatch>,
        start: Dispatch,
        iterate: Dispatch,
    },
    /// poisson1d with `cg.direct_1d`: the tridiagonal solve in one pass.
    Direct(Dispatch),
    /// Multigrid CG with each system over many workgroups.
    Wide(Box<WideSolve>),
}

/// One step of the wide path: a dispatch of fixed size, or one whose
/// workgroup count the last `mgw_system` step wrote into `ctrl` at this
/// byte offset (zero once no system is running).
enum WideStep {
    Direct(Dispatch),
    Indirect(Dispatch, u64),
}

/// The wide path's steps for one solve (shaders/physics/multigrid.wgsl,
/// `mgw_pass` and `mgw_system`): the hierarchy's setup (none for a solve
/// that reuses it), the start, one CG iteration (recorded `max_iter`
/// times) and the cap that marks a solve still running after them.
struct WideSolve {
    setup: Vec<WideStep>,
    start: Vec<WideStep>,
    iterate: Vec<WideStep>,
    cap: WideStep,
    ctrl: wgpu::Buffer,
}

/// Step codes of `mgw_pass` and `mgw_system` (the shader's `OP_*`, `SYS_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WideOp {
    Diag0 = 0,
    Elements = 1,
    Stencil = 2,
    StartCopy = 3,
    StartResidual = 4,
    Sweep0 = 5,
    Residual = 6,
    Restrict = 7,
    Prolong = 8,
    Sweep = 9,
    Apply = 10,
    Update = 11,
    Direction = 12,
    CopyZ = 13,
    Factor = 20,
    Start = 21,
    StartRz = 22,
    Coarse = 23,
    Alpha = 24,
    Rr = 25,
    Beta = 26,
    Cap = 27,
}

/// The buffers one wide solve binds.
struct WideBuffers<'a> {
    params: &'a wgpu::Buffer,
    coef: &'a wgpu::Buffer,
    rhs: &'a wgpu::Buffer,
    x: &'a wgpu::Buffer,
    work: &'a wgpu::Buffer,
    state: &'a wgpu::Buffer,
    partials: &'a wgpu::Buffer,
    ctrl: &'a wgpu::Buffer,
}

impl WideSolve {
    /// The steps, in the order of the narrow kernels' phases (the V-cycle of
    /// `vcycle`, the CG of `mg_start` and `mg_cg_iterate`).
    fn new(
        ctx: &GpuContext,
        b: &WideBuffers<'_>,
        n: usize,
        batch: usize,
        reuse: bool,
    ) -> Result<Self> {
        let m = multigrid_levels(n);
        let levels = m.len();
        if levels < 2 {
            return Err(Error::setting(
                "layout",
                "wide",
                format!("n = {n} has one multigrid level; the wide path needs two or more (use the narrow layout)"),
            ));
        }
        let step = |op: WideOp, l: usize, gated: bool, indirect: bool| -> Result<WideStep> {
            let phase = ctx.upload(
                "mg.wide.phase",
                &[crate::gpu::layout::MgPhase {
                    op: op as u32,
                    level: l as u32,
                    gated: gated as u32,
                    _pad: 0,
                }],
            )?;
            if (op as u32) >= WideOp::Factor as u32 {
                let a = args::MgWideSystemQ1 {
                    params: b.params,
                    x: b.x,
                    work: b.work,
                    state: b.state,
                    partials: b.partials,
                    ctrl: b.ctrl,
                    phase: &phase,
                };
                return Ok(WideStep::Direct(ctx.prepare(&a, [1, 1])?));
            }
            let a = args::MgWidePassQ1 {
                params: b.params,
                coef: b.coef,
                rhs: b.rhs,
                x: b.x,
                work: b.work,
                state: b.state,
                partials: b.partials,
                phase: &phase,
            };
            let items = if op == WideOp::Elements {
                (n >> l) * (n >> l)
            } else {
                wide_items(m[l])
            };
            let d = ctx.prepare(&a, [items, batch])?;
            Ok(if indirect {
                WideStep::Indirect(d, 12 * l as u64)
            } else {
                WideStep::Direct(d)
            })
        };
        let pass = |op, l| step(op, l, true, true);
        let system = |op| step(op, 0, true, false);
        let vcycle = |out: &mut Vec<WideStep>| -> Result<()> {
            for l in 0..levels - 1 {
                out.push(pass(WideOp::Sweep0, l)?);
                out.push(pass(WideOp::Residual, l)?);
                out.push(pass(WideOp::Restrict, l + 1)?);
            }
            out.push(system(WideOp::Coarse)?);
            for l in (0..levels - 1).rev() {
                out.push(pass(WideOp::Prolong, l)?);
                out.push(pass(WideOp::Sweep, l)?);
            }
            Ok(())
        };
        let mut setup = Vec::new();
        if !reuse {
            setup.push(step(WideOp::Diag0, 0, false, false)?);
            for l in 1..levels {
                setup.push(step(WideOp::Elements, l, false, false)?);
                setup.push(step(WideOp::Stencil, l, false, false)?);
            }
            setup.push(step(WideOp::Factor, 0, false, false)?);
        }
        let mut start = vec![
            step(WideOp::StartCopy, 0, false, false)?,
            step(WideOp::StartResidual, 0, false, false)?,
            step(WideOp::Start, 0, false, false)?,
        ];
        vcycle(&mut start)?;
        start.push(system(WideOp::StartRz)?);
        start.push(pass(WideOp::CopyZ, 0)?);
        let mut iterate = vec![
            pass(WideOp::Apply, 0)?,
            system(WideOp::Alpha)?,
            pass(WideOp::Update, 0)?,
            system(WideOp::Rr)?,
        ];
        vcycle(&mut iterate)?;
        iterate.push(system(WideOp::Beta)?);
        iterate.push(pass(WideOp::Direction, 0)?);
        Ok(WideSolve {
            setup,
            start,
            iterate,
            cap: system(WideOp::Cap)?,
            ctrl: b.ctrl.clone(),
        })
    }

    fn record_steps(&self, pass: &mut wgpu::ComputePass<'_>, steps: &[WideStep]) {
        for s in steps {
            match s {
                WideStep::Direct(d) => d.record(pass),
                WideStep::Indirect(d, offset) => d.record_indirect(pass, &self.ctrl, *offset),
            }
        }
    }

    fn record(&self, pass: &mut wgpu::ComputePass<'_>, iterations: u32) {
        self.record_steps(pass, &self.setup);
        self.record_steps(pass, &self.start);
        for _ in 0..iterations {
            self.record_steps(pass, &self.iterate);
        }
        self.record_steps(pass, std::slice::from_ref(&self.cap));
    }
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

impl BatchedSolver {
    /// Allocate for `batch` systems. `sensors` are unknown indices (the
    /// problem's defaults when `None`); `per_system_data` gives every
    /// system its own data vector.
    pub fn new(
        ctx: &GpuContext,
        problem: &Problem,
        batch: usize,
        cg: CgParams,
        sensors: Option<&[usize]>,
        per_system_data: bool,
    ) -> Result<Self> {
        if batch == 0 {
            return Err(Error::setting("batch", 0, "need at least one system"));
        }
        let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;
        if batch > max_groups {
            return Err(Error::setting(
                "batch",
                batch,
                format!("the device allows at most {max_groups} systems per dispatch"),
            ));
        }
        let pb = problem;
        let (nu, nc, d) = (pb.nunk(), pb.ncoef(), pb.d);
        let sens: Vec<u32> = sensors
            .unwrap_or(&pb.sensors)
            .iter()
            .map(|&s| s as u32)
            .collect();
        if sens.is_empty() {
            return Err(Error::setting("sensors", 0, "need at least one sensor"));
        }
        if let Some(&bad) = sens.iter().find(|&&s| s as usize >= nu) {
            return Err(Error::setting(
                "sensor",
                bad,
                format!("unknown index out of range 0..{nu}"),
            ));
        }
        let f = 4u64;
        let b = batch as u64;
        let multigrid = pb.kind == ProblemKind::Darcy2d
            && match cg.precond {
                Precond::Jacobi => false,
                // Refuse sizes the shader cannot handle before allocating.
                Precond::Multigrid => multigrid_max_chunk(pb.n, ctx.solver_wg).map(|_| true)?,
                Precond::Auto => multigrid_max_chunk(pb.n, ctx.solver_wg).is_ok(),
            };
        // Check the largest buffers before building anything (the basis of a
        // huge grid takes minutes to compute on the CPU).
        for (what, count) in [
            ("KL basis (d x n^2 floats)", d as u64 * nc as u64),
            (
                "solver work (CG vectors, and multigrid levels with --precond mg)",
                if multigrid {
                    b * multigrid_floats(pb.n) as u64
                } else {
                    4 * b * nu as u64
                },
            ),
            ("fields (batch x n^2 floats)", b * nc as u64),
        ] {
            if count * f > ctx.max_binding() {
                return Err(Error::TooLarge {
                    what: what.to_string(),
                    bytes: count * f,
                    limit: ctx.max_binding(),
                    limit_name: "storage buffer binding",
                });
            }
        }
        let mk = |label: &str, count: u64| ctx.storage(label, count * f);
        let xi = mk("xi", b * d as u64)?;
        let basis = ctx.upload("basis", &f32s(&pb.basis()))?;
        let z = mk("z", b * nc as u64)?;
        let kappa_or_load = mk("kappa_or_load", b * nc as u64)?;
        let rhs_const = match pb.kind {
            ProblemKind::Darcy2d => {
                ctx.upload("rhs", &vec![(pb.h() * pb.h()) as f32; batch * nu])?
            }
            ProblemKind::Poisson1d => mk("rhs", 4)?,
        };
        let u = mk("u", b * nu as u64)?;
        let lam = mk("lambda", b * nu as u64)?;
        let adj = mk("adjoint rhs", b * nu as u64)?;
        let work = if multigrid {
            mk(
                "multigrid solver work (CG vectors and every level's stencils and vectors)",
                b * multigrid_floats(pb.n) as u64,
            )?
        } else {
            mk("solver work (4 vectors per system)", 4 * b * nu as u64)?
        };
        let wide = multigrid
            && match cg.layout {
                SolverLayout::Narrow => false,
                SolverLayout::Wide => true,
                SolverLayout::Auto => {
                    multigrid_levels(pb.n).len() >= 2
                        && wide_by_default(
                            ctx.info.device_type,
                            std::thread::available_parallelism().map_or(1, |t| t.get()),
                            batch,
                            pb.n,
                        )
                }
            };
        // The wide path's partial sums and indirect dispatch arguments
        // (shared by the forward and adjoint solves, which run in turn).
        let (partials, ctrl) = if wide {
            (
                mk(
                    "multigrid wide partial sums",
                    b * wide_partials(pb.n, ctx.solver_wg) as u64,
                )?,
                ctx.storage_indirect(
                    "multigrid wide dispatch arguments",
                    12 * multigrid_levels(pb.n).len() as u64,
                )?,
            )
        } else {
            (mk("unused", 4)?, mk("unused", 4)?)
        };
        let state_bytes = (batch * std::mem::size_of::<CgState>()) as u64;
        let state_fwd = ctx.storage("state_fwd", state_bytes)?;
        let state_adj = ctx.storage("state_adj", state_bytes)?;
        let g = mk("dmisfit/dz", b * nc as u64)?;
        let gxi = mk("dmisfit/dxi", b * d as u64)?;
        let sensors_buf = ctx.upload("sensors", &sens)?;
        let data_len = if per_system_data {
            batch * sens.len()
        } else {
            sens.len()
        };
        let data = mk("data", data_len as u64)?;
        let misfit = mk("misfit", b)?;

        let mut params = crate::gpu::layout::PdeParams::new(pb.n, nu, nc, batch, d);
        params.tol = cg.rel_tol as f32;
        // Multigrid converges in a handful of iterations at any size: cap
        // it so that a solve records a few dispatches, not max_iters / chunk.
        params.max_iter = if wide {
            cg.max_iters.clamp(1, WIDE_MAX_ITERS)
        } else if multigrid {
            cg.max_iters.clamp(1, MULTIGRID_MAX_ITERS)
        } else {
            cg.max_iters.max(1)
        };
        params.chunk = cg.chunk.max(1).min(if multigrid {
            multigrid_max_chunk(pb.n, ctx.solver_wg)?
        } else {
            max_chunk(nu, ctx.solver_wg)?
        });
        let mut p_kl = params;
        match pb.kind {
            ProblemKind::Darcy2d => p_kl.kl_linear = 0,
            ProblemKind::Poisson1d => {
                p_kl.kl_linear = 1;
                p_kl.kl_scale = pb.h() as f32;
            }
        }
        let mut p_obs = params;
        p_obs.nsens = sens.len() as u32;
        p_obs.noise_precision = (1.0 / (pb.sigma_n * pb.sigma_n)) as f32;
        p_obs.per_system_data = per_system_data as u32;
        let mut p_pull = params;
        // dmisfit/dxi: darcy2d pulls back dmisfit/dz; poisson1d pulls back
        // -h lambda (the load is h f and dmisfit/db = -lambda).
        p_pull.kl_scale = match pb.kind {
            ProblemKind::Darcy2d => 1.0,
            ProblemKind::Poisson1d => -(pb.h() as f32),
        };
        let u_kl = ctx.uniform("params.kl", &p_kl);
        let u_solver = ctx.uniform("params.solver", &params);
        let u_obs = ctx.uniform("params.obs", &p_obs);
        let u_pull = ctx.uniform("params.pullback", &p_pull);

        let extent = [batch, 1];
        let rhs_fwd = match pb.kind {
            ProblemKind::Darcy2d => &rhs_const,
            ProblemKind::Poisson1d => &kappa_or_load,
        };
        let direct = pb.kind == ProblemKind::Poisson1d && cg.direct_1d;
        // One bind group layout serves start and iterate of both operators.
        // `reuse`: the adjoint solve, whose operator is the forward one's, so
        // with multigrid it starts from the hierarchy the forward start built.
        let solve = |rhs: &wgpu::Buffer,
                     x: &wgpu::Buffer,
                     state: &wgpu::Buffer,
                     reuse: bool|
         -> Result<Solve> {
            if direct {
                return Ok(Solve::Direct(ctx.prepare(
                    &args::P1Direct {
                        params: &u_solver,
                        rhs,
                        x,
                        state,
                    },
                    extent,
                )?));
            }
            if wide {
                let bufs = WideBuffers {
                    params: &u_solver,
                    coef: &kappa_or_load,
                    rhs,
                    x,
                    work: &work,
                    state,
                    partials: &partials,
                    ctrl: &ctrl,
                };
                return Ok(Solve::Wide(Box::new(WideSolve::new(
                    ctx, &bufs, pb.n, batch, reuse,
                )?)));
            }
            let a = args::CgStartQ1 {
                params: &u_solver,
                coef: &kappa_or_load,
                rhs,
                x,
                work: &work,
                state,
            };
            let separate = multigrid && multigrid_plan(pb.n, ctx.solver_wg)?.separate_setup;
            let (start, iterate) = if multigrid && (reuse || separate) {
                (KernelId::MgCgStartReuseQ1, KernelId::MgCgIterateQ1)
            } else if multigrid {
                (KernelId::MgCgStartQ1, KernelId::MgCgIterateQ1)
            } else {
                let (s, i, _) = Self::solver_kernels(pb.kind);
                (s, i)
            };
            let setup = if separate && !reuse {
                Some(ctx.prepare_as(KernelId::MgCgSetupQ1, &a, extent)?)
            } else {
                None
            };
            Ok(Solve::Cg {
                setup,
                start: ctx.prepare_as(start, &a, extent)?,
                iterate: ctx.prepare_as(iterate, &a, extent)?,
            })
        };
        let fwd = solve(rhs_fwd, &u, &state_fwd, false)?;
        let adjoint = solve(&adj, &lam, &state_adj, true)?;
        let kl = ctx.prepare(
            &args::KlMap {
                params: &u_kl,
                xi: &xi,
                basis: &basis,
                z: &z,
                kappa_or_load: &kappa_or_load,
            },
            kl_map_extent(nc, batch),
        )?;
        let obs = ctx.prepare(
            &args::ObsMisfit {
                params: &u_obs,
                sensors: &sensors_buf,
                data: &data,
                u: &u,
                adj: &adj,
                misfit: &misfit,
            },
            extent,
        )?;
        // darcy2d pulls back dmisfit/dz from the adjoint gradient; poisson1d
        // pulls back lambda itself.
        let (grad, pulled) = match pb.kind {
            ProblemKind::Darcy2d => (
                Some(ctx.prepare(
                    &args::Q1AdjointGrad {
                        params: &u_solver,
                        coef: &kappa_or_load,
                        v: &u,
                        w: &lam,
                        g: &g,
                    },
                    [nc, batch],
                )?),
                &g,
            ),
            ProblemKind::Poisson1d => (None, &lam),
        };
        let pull_args = args::KlPullbackSerial {
            params: &u_pull,
            basis: &basis,
            g: pulled,
            gxi: &gxi,
        };
        // Small fields: one invocation per output; large: a workgroup per
        // output (keeps each invocation's loop short).
        let pull = if nc <= 16_384 {
            ctx.prepare(&pull_args, kl_pullback_extent(d, batch))?
        } else {
            ctx.prepare_as(KernelId::KlPullback, &pull_args, [d, batch])?
        };
        let decoder = match &pb.prior {
            None => None,
            Some(prior) => {
                let net =
                    crate::nn::mlp::Mlp::new(ctx, prior.arch.clone(), Some(&prior.params), 0)?;
                let ws = crate::nn::mlp::Workspace::new(
                    ctx,
                    &net,
                    batch,
                    crate::nn::mlp::Loss::External,
                )?;
                let field = ctx.prepare(
                    &args::PriorField {
                        params: &u_kl,
                        xi: ws.output(),
                        z: &z,
                        kappa_or_load: &kappa_or_load,
                    },
                    [nc * batch, 1],
                )?;
                let grad = ctx.prepare(
                    &args::PriorFieldGrad {
                        params: &u_kl,
                        z: &z,
                        g: &g,
                        gxi: ws.output_grad(),
                    },
                    [nc * batch, 1],
                )?;
                Some(DecoderMap {
                    _net: net,
                    ws,
                    field,
                    grad,
                    latent_bytes: b * d as u64 * f,
                })
            }
        };
        Ok(BatchedSolver {
            problem: pb.clone(),
            batch,
            cg,
            params,
            xi,
            basis,
            z,
            kappa_or_load,
            rhs_const,
            u,
            lam,
            adj,
            work,
            state_fwd,
            state_adj,
            g,
            gxi,
            sensors: sensors_buf,
            data,
            misfit,
            nsens: sens.len(),
            per_system_data,
            solver_params: u_solver.clone(),
            _uniforms: vec![u_kl, u_solver, u_obs, u_pull],
            kl,
            fwd,
            adjoint,
            obs,
            grad,
            pull,
            decoder,
        })
    }

    fn solver_kernels(kind: ProblemKind) -> (KernelId, KernelId, KernelId) {
        match kind {
            ProblemKind::Darcy2d => (
                KernelId::CgStartQ1,
                KernelId::CgIterateQ1,
                KernelId::JacobiRunQ1,
            ),
            ProblemKind::Poisson1d => (
                KernelId::CgStartP1,
                KernelId::CgIterateP1,
                KernelId::JacobiRunP1,
            ),
        }
    }

    /// Dispatches recorded per solve after the start (the CG iterations, or
    /// none for a direct solve).
    /// Every buffer a solve writes (the warm-start vectors among them), for
    /// checkpoints: restored, the next solve starts where it would have.
    pub fn state_buffers(&self) -> crate::output::checkpoint::Buffers<'_> {
        vec![
            ("solver.xi", &self.xi),
            ("solver.z", &self.z),
            ("solver.kappa_or_load", &self.kappa_or_load),
            ("solver.u", &self.u),
            ("solver.lam", &self.lam),
            ("solver.adj", &self.adj),
            ("solver.work", &self.work),
            ("solver.state_fwd", &self.state_fwd),
            ("solver.state_adj", &self.state_adj),
            ("solver.g", &self.g),
            ("solver.gxi", &self.gxi),
            ("solver.misfit", &self.misfit),
        ]
    }

    /// CG iterate dispatches recorded per narrow solve (none for a direct
    /// or a wide solve).
    pub fn iterate_dispatches(&self) -> u32 {
        if !matches!(self.fwd, Solve::Cg { .. }) {
            return 0;
        }
        self.params.max_iter.div_ceil(self.params.chunk)
    }

    /// Dispatches recorded per solve: the forward's, or the adjoint's
    /// (which reuses the forward's multigrid hierarchy).
    pub fn solve_dispatches(&self, adjoint: bool) -> usize {
        match if adjoint { &self.adjoint } else { &self.fwd } {
            Solve::Direct(_) => 1,
            Solve::Cg { setup, .. } => {
                usize::from(setup.is_some()) + 1 + self.iterate_dispatches() as usize
            }
            Solve::Wide(w) => {
                w.setup.len() + w.start.len() + self.params.max_iter as usize * w.iterate.len() + 1
            }
        }
    }

    /// The kernels one forward solve dispatches, in order.
    pub fn solve_kernels(&self) -> Vec<KernelId> {
        match &self.fwd {
            Solve::Direct(d) => vec![d.kernel()],
            Solve::Cg {
                setup,
                start,
                iterate,
            } => setup
                .iter()
                .chain([start, iterate])
                .map(|d| d.kernel())
                .collect(),
            Solve::Wide(w) => w
                .setup
                .iter()
                .chain(&w.start)
                .chain(&w.iterate)
                .map(|s| match s {
                    WideStep::Direct(d) | WideStep::Indirect(d, _) => d.kernel(),
                })
                .collect(),
        }
    }

    /// Whether solves spread each system over many workgroups.
    pub fn is_wide(&self) -> bool {
        matches!(self.fwd, Solve::Wide(_))
    }

    /// Change the relative tolerance of the following solves (warm starts
    /// keep the work done so far).
    pub fn set_tol(&mut self, ctx: &GpuContext, tol: f64) {
        self.params.tol = tol as f32;
        self.cg.rel_tol = tol;
        ctx.write(&self.solver_params, &[self.params]);
    }

    /// Upload B x d latent vectors.
    pub fn set_xi(&self, ctx: &GpuContext, xi: &[f64]) -> Result<()> {
        self.check_len("xi", xi.len(), self.batch * self.problem.d)?;
        ctx.write(&self.xi, &f32s(xi));
        Ok(())
    }

    /// Upload the observations (S values, or B x S with per-system data).
    pub fn set_data(&self, ctx: &GpuContext, y: &[f64]) -> Result<()> {
        let want = if self.per_system_data {
            self.batch * self.nsens
        } else {
            self.nsens
        };
        self.check_len("data", y.len(), want)?;
        if let Some(v) = y.iter().find(|v| !v.is_finite()) {
            return Err(Error::setting("data", v, "observations must be finite"));
        }
        ctx.write(&self.data, &f32s(y));
        Ok(())
    }

    fn check_len(&self, what: &str, got: usize, want: usize) -> Result<()> {
        if got != want {
            return Err(Error::setting(what, got, format!("expected {want} values")));
        }
        Ok(())
    }

    /// Record the KL map and the forward CG solve.
    pub fn encode_forward(&self, enc: &mut wgpu::CommandEncoder) {
        if !self.cg.warm_start {
            enc.clear_buffer(&self.u, 0, None);
        }
        if let Some(dm) = &self.decoder {
            enc.copy_buffer_to_buffer(&self.xi, 0, &dm.ws.x, 0, dm.latent_bytes);
        }
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("pdevi.forward"),
            timestamp_writes: None,
        });
        match &self.decoder {
            Some(dm) => {
                dm.ws.encode_forward(&mut pass);
                dm.field.record(&mut pass);
            }
            None => self.kl.record(&mut pass),
        }
        self.encode_solve(&mut pass, &self.fwd);
    }

    fn encode_solve(&self, pass: &mut wgpu::ComputePass<'_>, solve: &Solve) {
        match solve {
            Solve::Direct(d) => d.record(pass),
            Solve::Cg {
                setup,
                start,
                iterate,
            } => {
                if let Some(s) = setup {
                    s.record(pass);
                }
                start.record(pass);
                for _ in 0..self.iterate_dispatches() {
                    iterate.record(pass);
                }
            }
            Solve::Wide(w) => w.record(pass, self.params.max_iter),
        }
    }

    /// Record the misfit only (after [`encode_forward`](Self::encode_forward)),
    /// for callers that need no gradient (pCN). It also writes the adjoint
    /// right-hand side at the sensors, which nothing then reads.
    pub fn encode_misfit(&self, enc: &mut wgpu::CommandEncoder) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("pdevi.misfit"),
            timestamp_writes: None,
        });
        self.obs.record(&mut pass);
    }

    /// Record the misfit, the adjoint solve and the gradient with respect to
    /// xi (after [`encode_forward`](Self::encode_forward)). It must follow a
    /// forward solve of the same xi with no other solve of this solver in
    /// between: with multigrid the adjoint reuses that solve's hierarchy.
    pub fn encode_gradient(&self, enc: &mut wgpu::CommandEncoder) {
        enc.clear_buffer(&self.adj, 0, None);
        if !self.cg.warm_start {
            enc.clear_buffer(&self.lam, 0, None);
        }
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("pdevi.adjoint"),
            timestamp_writes: None,
        });
        self.obs.record(&mut pass);
        self.encode_solve(&mut pass, &self.adjoint);
        if let Some(g) = &self.grad {
            g.record(&mut pass);
        }
        match &self.decoder {
            Some(dm) => {
                dm.grad.record(&mut pass);
                dm.ws.encode_backward(&mut pass, true);
                drop(pass);
                enc.copy_buffer_to_buffer(&dm.ws.dx, 0, &self.gxi, 0, dm.latent_bytes);
            }
            None => self.pull.record(&mut pass),
        }
    }

    /// Forward solves for B latent vectors; returns per-system solver info.
    pub fn solve(&self, ctx: &GpuContext, xi: &[f64]) -> Result<Vec<CgInfo>> {
        self.set_xi(ctx, xi)?;
        let mut enc = ctx.encoder("pdevi.solve");
        self.encode_forward(&mut enc);
        ctx.submit_wait(enc)?;
        self.forward_info(ctx)
    }

    /// Forward + adjoint: returns (misfit per system, dmisfit/dxi (B x d),
    /// forward infos, adjoint infos).
    #[allow(clippy::type_complexity, reason = "a plain tuple of results")]
    pub fn misfit_gradient(
        &self,
        ctx: &GpuContext,
        xi: &[f64],
    ) -> Result<(Vec<f64>, Vec<f64>, Vec<CgInfo>, Vec<CgInfo>)> {
        self.set_xi(ctx, xi)?;
        let mut enc = ctx.encoder("pdevi.gradient");
        self.encode_forward(&mut enc);
        self.encode_gradient(&mut enc);
        ctx.submit_wait(enc)?;
        let misfit = self.read_f64(ctx, &self.misfit, self.batch)?;
        let gxi = self.read_f64(ctx, &self.gxi, self.batch * self.problem.d)?;
        Ok((
            misfit,
            gxi,
            self.forward_info(ctx)?,
            self.adjoint_info(ctx)?,
        ))
    }

    pub fn forward_info(&self, ctx: &GpuContext) -> Result<Vec<CgInfo>> {
        let st: Vec<CgState> = ctx.read(&self.state_fwd, 0, self.batch)?;
        Ok(st.iter().map(CgInfo::from_state).collect())
    }

    pub fn adjoint_info(&self, ctx: &GpuContext) -> Result<Vec<CgInfo>> {
        let st: Vec<CgState> = ctx.read(&self.state_adj, 0, self.batch)?;
        Ok(st.iter().map(CgInfo::from_state).collect())
    }

    /// Read `count` f32 values from a buffer as f64.
    pub fn read_f64(&self, ctx: &GpuContext, buf: &wgpu::Buffer, count: usize) -> Result<Vec<f64>> {
        let v: Vec<f32> = ctx.read(buf, 0, count)?;
        Ok(v.into_iter().map(f64::from).collect())
    }

    /// The solutions u (B x nunk).
    pub fn read_u(&self, ctx: &GpuContext) -> Result<Vec<f64>> {
        self.read_f64(ctx, &self.u, self.batch * self.problem.nunk())
    }

    /// The fields z (darcy2d) or f (poisson1d), B x ncoef.
    pub fn read_z(&self, ctx: &GpuContext) -> Result<Vec<f64>> {
        self.read_f64(ctx, &self.z, self.batch * self.problem.ncoef())
    }
}
