//! The table of compute kernels, written once in `kernel_table!`: for each
//! kernel its module, entry point, dispatch geometry and named bindings.
//! From that one row come the [`KernelId`] variant, its [`KernelSpec`], and a
//! typed argument struct in [`args`] whose fields are the kernel's buffers by
//! name, so a bind group cannot be built with buffers in the wrong order.
//! Bind-group layouts and pipelines are generated from the table once, when
//! the [`GpuContext`](super::GpuContext) is created; a test checks every row
//! against naga's reflection of the WGSL (binding numbers, access, geometry).

use super::shaders::ModuleId;

/// How a binding is used by a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind {
    /// `var<uniform>`.
    Uniform,
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`.
    ReadWrite,
}

/// One binding of a kernel: its number in group 0, its access and the name
/// of the field that carries it in the kernel's [`args`] struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    pub binding: u32,
    pub kind: Bind,
    pub name: &'static str,
}

/// How a kernel's work maps onto workgroups. Callers give the extent of the
/// work in items (`[x, y]`); the kernel's geometry and its workgroup size
/// (read from the WGSL by naga) give the dispatch, so no caller computes
/// workgroup counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Geometry {
    /// One invocation per item in x; one workgroup row per item in y.
    Invocation,
    /// One invocation per four items in x (`vec4` kernels); y as above.
    Vec4,
    /// One workgroup per item in x and in y (a system, a row, a mode).
    Workgroup,
    /// One workgroup per 64 x 64 output tile (x = columns, y = rows).
    Tile64,
    /// A single workgroup does all the work.
    Single,
}

impl Geometry {
    /// Workgroup counts for `extent` items with workgroups of `wg` invocations in x.
    pub fn groups(self, wg: u32, extent: [usize; 2]) -> [u64; 3] {
        let (x, y) = (extent[0] as u64, extent[1] as u64);
        let wg = u64::from(wg.max(1));
        match self {
            Geometry::Invocation => [x.div_ceil(wg), y, 1],
            Geometry::Vec4 => [x.div_ceil(4).div_ceil(wg), y, 1],
            Geometry::Workgroup => [x, y, 1],
            Geometry::Tile64 => [x.div_ceil(64), y.div_ceil(64), 1],
            Geometry::Single => [1, 1, 1],
        }
    }
}

/// Everything the engine knows about one kernel.
#[derive(Clone, Copy, Debug)]
pub struct KernelSpec {
    pub module: ModuleId,
    pub entry: &'static str,
    pub geometry: Geometry,
    /// In binding order.
    pub bindings: &'static [Binding],
}

/// The buffers of one kernel in its binding order; implemented by the
/// typed structs of [`args`].
pub trait KernelArgs<'a> {
    /// The kernel these buffers are for.
    const KERNEL: KernelId;
    /// The buffers, in the order of [`KernelSpec::bindings`].
    fn buffers(&self) -> Vec<&'a wgpu::Buffer>;
}

macro_rules! kernel_table {
    ($(
        $(#[$doc:meta])*
        $id:ident => $module:ident . $entry:literal, $geometry:ident,
            { $($name:ident : $kind:ident @ $binding:literal),* $(,)? }
    )*) => {
        /// One compute entry point.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum KernelId {
            $($(#[$doc])* $id,)*
        }

        const SPECS: &[KernelSpec] = &[$(
            KernelSpec {
                module: ModuleId::$module,
                entry: $entry,
                geometry: Geometry::$geometry,
                bindings: &[$(Binding { binding: $binding, kind: Bind::$kind, name: stringify!($name) }),*],
            },
        )*];

        impl KernelId {
            /// Every kernel, in table order (the order of the pipelines).
            pub const ALL: &'static [KernelId] = &[$(KernelId::$id,)*];
        }

        /// Typed bind-group arguments, one struct per kernel, named like the
        /// kernel and holding its buffers by binding name.
        pub mod args {
            use super::{KernelArgs, KernelId};
            $(
                #[doc = concat!("Buffers of `", $entry, "` (", stringify!($module), ").")]
                pub struct $id<'a> {
                    $(pub $name: &'a wgpu::Buffer,)*
                }

                impl<'a> KernelArgs<'a> for $id<'a> {
                    const KERNEL: KernelId = KernelId::$id;
                    fn buffers(&self) -> Vec<&'a wgpu::Buffer> {
                        vec![$(self.$name),*]
                    }
                }
            )*
        }
    };
}

kernel_table! {
    /// CG start (residual, preconditioner, first direction), Q1 operator.
    CgStartQ1 => SolverQ1."cg_start", Workgroup,
        { params: Uniform @ 0, coef: Read @ 1, rhs: Read @ 2, x: ReadWrite @ 3, work: ReadWrite @ 4, state: ReadWrite @ 5 }
    /// A bounded chunk of CG iterations, Q1 operator.
    CgIterateQ1 => SolverQ1."cg_iterate", Workgroup,
        { params: Uniform @ 0, coef: Read @ 1, rhs: Read @ 2, x: ReadWrite @ 3, work: ReadWrite @ 4, state: ReadWrite @ 5 }
    /// Weighted Jacobi sweeps, Q1 operator.
    JacobiRunQ1 => SolverQ1."jacobi_run", Workgroup,
        { params: Uniform @ 0, coef: Read @ 1, rhs: Read @ 2, x: ReadWrite @ 3, work: ReadWrite @ 4, state: ReadWrite @ 5 }
    /// CG start, P1 operator.
    CgStartP1 => SolverP1."cg_start", Workgroup,
        { params: Uniform @ 0, coef: Read @ 1, rhs: Read @ 2, x: ReadWrite @ 3, work: ReadWrite @ 4, state: ReadWrite @ 5 }
    /// A bounded chunk of CG iterations, P1 operator.
    CgIterateP1 => SolverP1."cg_iterate", Workgroup,
        { params: Uniform @ 0, coef: Read @ 1, rhs: Read @ 2, x: ReadWrite @ 3, work: ReadWrite @ 4, state: ReadWrite @ 5 }
    /// Weighted Jacobi sweeps, P1 operator.
    JacobiRunP1 => SolverP1."jacobi_run", Workgroup,
        { params: Uniform @ 0, coef: Read @ 1, rhs: Read @ 2, x: ReadWrite @ 3, work: ReadWrite @ 4, state: ReadWrite @ 5 }
    /// Multigrid-preconditioned CG start (Galerkin hierarchy, r, z = M r, p), Q1 operator.
    MgCgStartQ1 => SolverQ1Mg."mg_cg_start", Workgroup,
        { params: Uniform @ 0, coef: Read @ 1, rhs: Read @ 2, x: ReadWrite @ 3, work: ReadWrite @ 4, state: ReadWrite @ 5 }
    /// The multigrid hierarchy alone, for grids whose setup and first cycle exceed one dispatch's loop budget.
    MgCgSetupQ1 => SolverQ1Mg."mg_cg_setup", Workgroup,
        { params: Uniform @ 0, coef: Read @ 1, rhs: Read @ 2, x: ReadWrite @ 3, work: ReadWrite @ 4, state: ReadWrite @ 5 }
    /// The multigrid CG start reusing the hierarchy in `work` (same kappa as the last `MgCgStartQ1`).
    MgCgStartReuseQ1 => SolverQ1Mg."mg_cg_start_reuse", Workgroup,
        { params: Uniform @ 0, coef: Read @ 1, rhs: Read @ 2, x: ReadWrite @ 3, work: ReadWrite @ 4, state: ReadWrite @ 5 }
    /// A bounded chunk of multigrid-preconditioned CG iterations, Q1 operator.
    MgCgIterateQ1 => SolverQ1Mg."mg_cg_iterate", Workgroup,
        { params: Uniform @ 0, coef: Read @ 1, rhs: Read @ 2, x: ReadWrite @ 3, work: ReadWrite @ 4, state: ReadWrite @ 5 }
    /// Wide multigrid CG: one phase (`phase`) of one level, an invocation per column segment; x = segments, y = systems.
    /// (Its workgroup counts come from `ctrl`, so it cannot bind it.)
    MgWidePassQ1 => SolverQ1Mg."mgw_pass", Invocation,
        { params: Uniform @ 0, coef: Read @ 1, rhs: Read @ 2, x: ReadWrite @ 3, work: ReadWrite @ 4, state: ReadWrite @ 5, partials: ReadWrite @ 6, phase: Read @ 8 }
    /// Wide multigrid CG: the per-system step of `phase` (sums, scalars, state, coarsest level, dispatch sizes), one workgroup.
    MgWideSystemQ1 => SolverQ1Mg."mgw_system", Single,
        { params: Uniform @ 0, x: ReadWrite @ 3, work: ReadWrite @ 4, state: ReadWrite @ 5, partials: ReadWrite @ 6, ctrl: ReadWrite @ 7, phase: Read @ 8 }
    /// z = basis^T xi and kappa = exp(z) or the load kl_scale z; an invocation per 4 cells
    /// x 8 systems (`physics::solver::kl_map_extent`).
    KlMap => Kl."kl_map", Invocation,
        { params: Uniform @ 0, xi: Read @ 1, basis: Read @ 2, z: ReadWrite @ 3, kappa_or_load: ReadWrite @ 4 }
    /// gxi = kl_scale basis g, a workgroup per (mode, system); x = modes, y = systems.
    KlPullback => Kl."kl_pullback", Workgroup,
        { params: Uniform @ 0, basis: Read @ 2, g: Read @ 5, gxi: ReadWrite @ 6 }
    /// gxi = kl_scale basis g, an invocation per 4 modes x 8 systems (`kl_pullback_extent`).
    KlPullbackSerial => Kl."kl_pullback_serial", Invocation,
        { params: Uniform @ 0, basis: Read @ 2, g: Read @ 5, gxi: ReadWrite @ 6 }
    /// A generative prior's field from decoder logits: z = tanh(l / 2), kappa = exp(z); x = cells x systems.
    PriorField => Kl."prior_field", Invocation,
        { params: Uniform @ 0, xi: Read @ 1, z: ReadWrite @ 3, kappa_or_load: ReadWrite @ 4 }
    /// dmisfit/dl = g (1 - z^2) / 2 into gxi (the decoder's output gradient); x = cells x systems.
    PriorFieldGrad => Kl."prior_field_grad", Invocation,
        { params: Uniform @ 0, z: ReadWrite @ 3, g: Read @ 5, gxi: ReadWrite @ 6 }
    /// The residual-likelihood loss of the data-free solver and its head gradient, a workgroup per row.
    ResidualLoss => Residual."residual_loss", Workgroup,
        { params: Uniform @ 0, rp: Read @ 1, coef: Read @ 2, head: Read @ 3, work: ReadWrite @ 4, grad: ReadWrite @ 5, losses: ReadWrite @ 6, shape: Read @ 9 }
    /// The energy-form loss over sine-basis coefficients (preconditioned by the constant-coefficient operator), a workgroup per row.
    ResidualLossSpectral => Residual."residual_loss_spectral", Workgroup,
        { params: Uniform @ 0, rp: Read @ 1, coef: Read @ 2, head: Read @ 3, work: ReadWrite @ 4, grad: ReadWrite @ 5, losses: ReadWrite @ 6, dst: Read @ 7, dscale: Read @ 8 }
    /// The joint residual-and-data negative log-likelihood of samples of (xi, v) and its gradient, a workgroup per sample.
    ResidualJoint => ResidualVi."residual_joint", Workgroup,
        { params: Uniform @ 0, jp: Read @ 1, basis: Read @ 2, spec: Read @ 3, dst: Read @ 4, sensors: Read @ 5, data: Read @ 6, xs: Read @ 7, gxs: ReadWrite @ 8, nll: ReadWrite @ 9, work: ReadWrite @ 10 }
    /// The modal Kalman filter of advdiff1d: log p(x | zeta) and its gradients, a workgroup per draw of zeta.
    KalmanLoglik => Kalman."kalman_loglik", Workgroup,
        { dp: Read @ 0, theta: Read @ 1, m0: Read @ 2, xs: Read @ 3, zs: Read @ 4, work: ReadWrite @ 5, kout: ReadWrite @ 6 }
    /// d log p / dx at the nodes from kalman_loglik's modal gradients, a workgroup per draw of zeta.
    KalmanGradX => Kalman."kalman_grad_x", Workgroup,
        { dp: Read @ 0, work: ReadWrite @ 5, gx: ReadWrite @ 7 }
    /// Phi-DVAE draws: x = mu + sigma_q eps and zeta = m + L eps; x = max(Sx T n, S).
    DvaeSample => Dvae."dvae_sample", Invocation,
        { dp: Read @ 0, theta: Read @ 1, mu: Read @ 2, xs: ReadWrite @ 3, zs: ReadWrite @ 5 }
    /// Phi-DVAE's level decoder fused with the frames' term: rowsq, dF/dx and per-invocation parameter gradients; x = groups of LEVEL_ROWS column rows.
    DvaeLevel => Dvae."dvae_level", Invocation,
        { dp: Read @ 0, theta: Read @ 1, xs: ReadWrite @ 3, frames: Read @ 8, rowsq: ReadWrite @ 10, dec_p: Read @ 16, ldx: ReadWrite @ 17, gpart: ReadWrite @ 18 }
    /// The level decoder's parameter gradients: dvae_level's partials added in order; x = parameters.
    DvaeLevelGrad => Dvae."dvae_level_grad", Invocation,
        { dp: Read @ 0, gpart: ReadWrite @ 18, dgrad: ReadWrite @ 19 }
    /// Phi-DVAE frames' reconstruction term and the decoder's output gradient; x = column rows.
    DvaeRecon => Dvae."dvae_recon", Invocation,
        { dp: Read @ 0, theta: Read @ 1, dec_out: Read @ 7, frames: Read @ 8, dec_delta: ReadWrite @ 9, rowsq: ReadWrite @ 10 }
    /// Phi-DVAE gradients of the encoder's output and of theta, and the ELBO's terms.
    DvaeAssemble => Dvae."dvae_assemble", Single,
        { dp: Read @ 0, theta: Read @ 1, rowsq: ReadWrite @ 10, kout: Read @ 11, gxk: Read @ 12, dxdec: Read @ 13, mugrad: ReadWrite @ 14, tout: ReadWrite @ 15 }
    /// y = A(coef) v for the Q1 operator; x = unknowns, y = systems.
    Q1Apply => Darcy."q1_apply", Invocation,
        { params: Uniform @ 0, coef: Read @ 1, v: Read @ 2, y: ReadWrite @ 4 }
    /// diag A(coef) for the Q1 operator; x = unknowns, y = systems.
    Q1Diag => Darcy."q1_diag", Invocation,
        { params: Uniform @ 0, coef: Read @ 1, y: ReadWrite @ 4 }
    /// Adjoint gradient kappa_c lambda_c^T K u_c per cell; x = cells, y = systems.
    Q1AdjointGrad => Darcy."q1_adjoint_grad", Invocation,
        { params: Uniform @ 0, coef: Read @ 1, v: Read @ 2, w: Read @ 3, g: ReadWrite @ 5 }
    /// y = A v for the P1 operator; x = unknowns, y = systems.
    P1Apply => Poisson1d."p1_apply", Invocation,
        { params: Uniform @ 0, v: Read @ 2, y: ReadWrite @ 4 }
    /// diag A for the P1 operator; x = unknowns, y = systems.
    P1Diag => Poisson1d."p1_diag", Invocation,
        { params: Uniform @ 0, y: ReadWrite @ 4 }
    /// Sensor misfit and the adjoint right-hand side, a workgroup per system.
    ObsMisfit => Obs."obs_misfit", Workgroup,
        { params: Uniform @ 0, sensors: Read @ 1, data: Read @ 2, u: Read @ 3, adj: ReadWrite @ 4, misfit: ReadWrite @ 5 }
    /// a = b + s c on vec4s (a bandwidth probe); x = vec4s.
    StreamTriad => Stream."stream_triad", Invocation,
        { params: Uniform @ 0, sb: Read @ 1, sc: Read @ 2, sa: ReadWrite @ 3 }
    /// The triad as a grid-stride loop (the host sizes the grid for the trips per invocation).
    StreamTriadGrid => Stream."stream_triad_grid", Invocation,
        { params: Uniform @ 0, sb: Read @ 1, sc: Read @ 2, sa: ReadWrite @ 3 }
    /// a = b on vec4s (two buffers instead of three).
    StreamCopy => Stream."stream_copy", Invocation,
        { params: Uniform @ 0, sb: Read @ 1, sa: ReadWrite @ 3 }
    /// The triad with 64 invocations per workgroup.
    StreamTriad64 => Stream64."stream_triad", Invocation,
        { params: Uniform @ 0, sb: Read @ 1, sc: Read @ 2, sa: ReadWrite @ 3 }
    /// The grid-stride triad with 64 invocations per workgroup.
    StreamTriadGrid64 => Stream64."stream_triad_grid", Invocation,
        { params: Uniform @ 0, sb: Read @ 1, sc: Read @ 2, sa: ReadWrite @ 3 }
    /// Standard normal noise of the ELBO's samples; x = noise values.
    ViNoise => Vi."vi_noise", Vec4,
        { params: Read @ 0, eps: ReadWrite @ 2 }
    /// xi = mean + factor eps per sample; x = samples x d.
    ViSample => Vi."vi_sample", Invocation,
        { params: Read @ 0, theta: Read @ 1, eps: ReadWrite @ 2, xi: ReadWrite @ 3 }
    /// KL(q || N(0, I)) and its gradient (mean-field and full-rank); x = rows
    /// (one Gaussian, or one per row of a batch of heads).
    ViKl => Vi."vi_kl", Workgroup,
        { params: Read @ 0, theta: Read @ 1, grad: ReadWrite @ 5, scalars: ReadWrite @ 7 }
    /// KL(q || N(0, I)) and its gradient (low-rank plus diagonal); x = rows.
    ViKlLowRank => Vi."vi_kl_lowrank", Workgroup,
        { params: Read @ 0, theta: Read @ 1, grad: ReadWrite @ 5, scalars: ReadWrite @ 7 }
    /// The reparameterised misfit gradient pulled back to theta; x = parameters.
    ViGrad => Vi."vi_grad", Invocation,
        { params: Read @ 0, theta: Read @ 1, eps: ReadWrite @ 2, gxi: Read @ 4, grad: ReadWrite @ 5 }
    /// The ELBO from the misfits and the KL, into the history.
    ViElbo => Vi."vi_elbo", Single,
        { params: Read @ 0, misfit: Read @ 6, scalars: ReadWrite @ 7 }
    /// The next step's CG tolerance from the Monte Carlo noise of the misfit gradients.
    CgTolNoise => CgTol."cg_tol_noise", Single,
        { params: Read @ 0, gxi: Read @ 1, state_fwd: ReadWrite @ 2, state_adj: ReadWrite @ 3, scalars: ReadWrite @ 4 }
    /// A flow layer's net input: x_k masked to the kept coordinates; x = samples x d.
    FlowMask => Flow."flow_mask", Invocation,
        { params: Uniform @ 0, xs: ReadWrite @ 2, xin: ReadWrite @ 7 }
    /// An affine coupling layer x_{k+1} = T_k(x_k) and its log-determinant; x = samples.
    FlowCouple => Flow."flow_couple", Invocation,
        { params: Uniform @ 0, o: Read @ 1, xs: ReadWrite @ 2, ld: ReadWrite @ 4 }
    /// A coupling layer's backward pass: its net's output gradient and the direct part of d/dx_k; x = samples x d.
    FlowCoupleBack => Flow."flow_couple_back", Invocation,
        { params: Uniform @ 0, o: Read @ 1, xs: ReadWrite @ 2, gs: ReadWrite @ 3, og: ReadWrite @ 5, wt_in: Read @ 6 }
    /// Adds a layer net's input gradient to d/dx_k on the kept coordinates; x = samples x d.
    FlowJoin => Flow."flow_join", Invocation,
        { params: Uniform @ 0, gs: ReadWrite @ 3, xin: ReadWrite @ 7 }
    /// The samples' log importance weights, the objective's weights and its scalars.
    FlowWeights => Flow."flow_weights", Single,
        { params: Uniform @ 0, xs: ReadWrite @ 2, ld: ReadWrite @ 4, theta: Read @ 8, eps: Read @ 9, misfit: Read @ 10, wt: ReadWrite @ 12, scalars: ReadWrite @ 13 }
    /// The loss's gradient at the flow's output, w_s (d misfit / d xi + xi); x = samples x d.
    FlowTop => Flow."flow_top", Invocation,
        { params: Uniform @ 0, xs: ReadWrite @ 2, gs: ReadWrite @ 3, wt_in: Read @ 6, gxi: Read @ 11 }
    /// The base's entropy gradient on the log-diagonal of L; x = d.
    FlowEntropy => Flow."flow_entropy", Invocation,
        { params: Uniform @ 0, grad: ReadWrite @ 14 }
    /// A surrogate's Gaussian likelihood: misfit per sample row and its
    /// gradient with respect to the network's outputs; x = rows.
    SurrogateMisfit => Surrogate."surrogate_misfit", Invocation,
        { params: Uniform @ 0, outputs: Read @ 1, obs: Read @ 2, col: Read @ 3, grad: ReadWrite @ 4, misfit: ReadWrite @ 5 }
    /// One Adam step; x = parameters.
    AdamStep => Adam."adam_step", Invocation,
        { params: Uniform @ 0, grad: Read @ 1, param: ReadWrite @ 2, m1: ReadWrite @ 3, m2: ReadWrite @ 4 }
    /// Tridiagonal direct solve of the P1 systems; x = systems.
    P1Direct => P1Direct."p1_direct", Invocation,
        { params: Uniform @ 0, rhs: Read @ 2, x: ReadWrite @ 3, state: ReadWrite @ 5 }
    /// One Adam step with the gradient scaled by the clip factor; x = parameters.
    AdamStepClipped => Adam."adam_step_clipped", Invocation,
        { params: Uniform @ 0, grad: Read @ 1, param: ReadWrite @ 2, m1: ReadWrite @ 3, m2: ReadWrite @ 4, clip: ReadWrite @ 5 }
    /// The global gradient norm and clip factor.
    GradClip => Adam."grad_clip", Single,
        { params: Uniform @ 0, grad: Read @ 1, clip: ReadWrite @ 5 }
    /// C = act(A B + b), 64 x 64 workgroup-memory tiles; x = columns, y = rows.
    Matmul => Mlp."matmul", Tile64,
        { params: Uniform @ 0, xa: Read @ 1, xb: Read @ 2, xc: ReadWrite @ 3, xz: ReadWrite @ 4 }
    /// C = act(A B + b), 8 x 8 register blocks; x = columns, y = rows.
    MatmulBlocked => Mlp."matmul_blocked", Tile64,
        { params: Uniform @ 0, xa: Read @ 1, xb: Read @ 2, xc: ReadWrite @ 3, xz: ReadWrite @ 4 }
    /// C = act(A B + b) for n <= 4 columns, an invocation per row; x = rows.
    MatmulThin => Mlp."matmul_thin", Invocation,
        { params: Uniform @ 0, xa: Read @ 1, xb: Read @ 2, xc: ReadWrite @ 3, xz: ReadWrite @ 4 }
    /// One layer's weight and bias gradients over chunks of rows; x = gradient entries, y = chunks.
    GradRows => Mlp."grad_rows", Invocation,
        { params: Uniform @ 0, xa: Read @ 1, xb: Read @ 2, xc: ReadWrite @ 3 }
    /// The chunks' gradients added in order; x = entries.
    GradSum => Mlp."grad_sum", Invocation,
        { params: Uniform @ 0, xa: Read @ 1, xc: ReadWrite @ 3 }
    /// dZ = dC act'(Z) in place; x = elements.
    ActBackward => Mlp."act_backward", Invocation,
        { params: Uniform @ 0, xa: Read @ 1, xc: ReadWrite @ 3 }
    /// Bias gradient (column sums); x = columns.
    BiasGrad => Mlp."bias_grad", Invocation,
        { params: Uniform @ 0, xa: Read @ 1, xc: ReadWrite @ 3 }
    /// Mean squared error and its gradient; x = rows.
    LossMse => Mlp."loss_mse", Invocation,
        { params: Uniform @ 0, xa: Read @ 1, xb: Read @ 2, xc: ReadWrite @ 3, xz: ReadWrite @ 4 }
    /// Gaussian NLL with a predicted log-variance and its gradient; x = rows.
    LossGaussNll => Mlp."loss_gauss_nll", Invocation,
        { params: Uniform @ 0, xa: Read @ 1, xb: Read @ 2, xc: ReadWrite @ 3, xz: ReadWrite @ 4 }
    /// Bernoulli NLL of a phase in [-1, 1] from logits, and its gradient; x = rows.
    LossBce => Mlp."loss_bce", Invocation,
        { params: Uniform @ 0, xa: Read @ 1, xb: Read @ 2, xc: ReadWrite @ 3, xz: ReadWrite @ 4 }
    /// Neural posterior estimation: -log q(target) for a Gaussian head in a VI
    /// family's layout, and its gradient; x = rows.
    LossNpe => Mlp."loss_npe", Invocation,
        { params: Uniform @ 0, xa: Read @ 1, xb: Read @ 2, xc: ReadWrite @ 3, xz: ReadWrite @ 4 }
    /// Sum of the per-row losses into a slot.
    LossReduce => Mlp."loss_reduce", Single,
        { params: Uniform @ 0, xz: ReadWrite @ 4 }
    /// Gather minibatch rows by index; x = elements.
    GatherRows => Mlp."gather_rows", Invocation,
        { params: Uniform @ 0, xa: Read @ 1, xc: ReadWrite @ 3, idx: Read @ 5 }
    /// FMA-bound probe for the benchmark; x = invocations.
    FmaPeak => Mlp."fma_peak", Invocation,
        { params: Uniform @ 0, xc: ReadWrite @ 3 }
    /// pCN / MALA proposals in whitened coordinates; x = chains x ceil(d / 4).
    McmcPropose => Mcmc."mcmc_propose", Invocation,
        { params: Read @ 0, state: ReadWrite @ 2, prop: ReadWrite @ 3, chains: ReadWrite @ 4 }
    /// x = m + L w for every chain; x = chains x d.
    McmcMap => Mcmc."mcmc_map", Invocation,
        { params: Read @ 0, refm: Read @ 1, prop: ReadWrite @ 3, xp: ReadWrite @ 5 }
    /// g_w = L^T (-dPhi/dx - x) for every chain; x = chains x d.
    McmcGrad => Mcmc."mcmc_grad", Invocation,
        { params: Read @ 0, refm: Read @ 1, prop: ReadWrite @ 3, xp: ReadWrite @ 5, gxi: Read @ 6 }
    /// Metropolis-Hastings accept / reject and the kept draws; x = chains.
    McmcAccept => Mcmc."mcmc_accept", Invocation,
        { params: Read @ 0, state: ReadWrite @ 2, prop: ReadWrite @ 3, chains: ReadWrite @ 4, xp: ReadWrite @ 5,
          misfit: Read @ 7, cg_fwd: Read @ 8, cg_adj: Read @ 9, samples: ReadWrite @ 10 }
    /// Pointwise mean and std of the field under the current q; x = cells.
    FieldMoments => Live."field_moments", Invocation,
        { params: Uniform @ 0, theta: Read @ 1, basis: Read @ 2, fields: ReadWrite @ 3 }
    /// (min, max) of the finite values of each field, for the colour scale.
    FieldRange => Live."field_range", Single,
        { params: Uniform @ 0, fields: ReadWrite @ 3, ranges: ReadWrite @ 4 }
}

impl KernelId {
    /// Position in [`KernelId::ALL`] (and in the context's pipelines).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The kernel's row of the table.
    pub fn spec(self) -> &'static KernelSpec {
        &SPECS[self.index()]
    }

    /// `pdevi.<module>.<entry>`, the label of its pipeline and bind groups.
    pub fn label(self) -> String {
        let s = self.spec();
        format!("pdevi.{}.{}", s.module.name(), s.entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_declaration_order() {
        assert_eq!(KernelId::ALL.len(), SPECS.len());
        for (i, k) in KernelId::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?}");
        }
    }

    #[test]
    fn bindings_are_unique_and_ascending() {
        for &k in KernelId::ALL {
            let b = k.spec().bindings;
            for w in b.windows(2) {
                assert!(w[0].binding < w[1].binding, "{k:?}: bindings out of order");
                assert_ne!(w[0].name, w[1].name, "{k:?}: two bindings named alike");
            }
        }
    }

    #[test]
    fn geometry_counts() {
        assert_eq!(Geometry::Invocation.groups(256, [257, 3]), [2, 3, 1]);
        assert_eq!(Geometry::Vec4.groups(256, [1025, 1]), [2, 1, 1]);
        assert_eq!(Geometry::Workgroup.groups(64, [5, 2]), [5, 2, 1]);
        assert_eq!(Geometry::Tile64.groups(256, [65, 64]), [2, 1, 1]);
        assert_eq!(Geometry::Single.groups(64, [1000, 9]), [1, 1, 1]);
    }
}
