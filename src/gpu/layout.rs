//! `#[repr(C)]` mirrors of the structs shared with WGSL.

use bytemuck::{Pod, Zeroable};

/// `PdeParams` of shaders/common/params.wgsl: the parameter block of every
/// physics kernel (layout checked by tests/layout.rs). Each kernel reads the
/// sizes and the few fields named for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq)]
pub struct PdeParams {
    /// Cells per side.
    pub n: u32,
    /// Unknowns per system.
    pub nunk: u32,
    /// Coefficient entries per system (cells for darcy2d, interior nodes for poisson1d).
    pub ncoef: u32,
    /// Systems in the batch.
    pub batch: u32,
    /// KL modes.
    pub d: u32,
    /// Solver: iteration cap per system.
    pub max_iter: u32,
    /// Solver: iterations per dispatch (bounds the time of one dispatch).
    pub chunk: u32,
    /// Solver: relative residual tolerance.
    pub tol: f32,
    /// 1 / h.
    pub inv_h: f32,
    /// `kl_map`: the second output is `kl_scale * z` (1, poisson1d's load)
    /// instead of `exp(z)` (0, darcy2d's coefficient).
    pub kl_linear: u32,
    /// `obs_misfit`: the data hold one vector per system (1) or one shared (0).
    pub per_system_data: u32,
    /// `obs_misfit`: number of sensors.
    pub nsens: u32,
    /// `kl_map` (linear) and the pullbacks: the factor applied to the output
    /// (h for poisson1d's load, -h or 1 for the pullback).
    pub kl_scale: f32,
    /// `obs_misfit`: 1 / sigma^2.
    pub noise_precision: f32,
    /// `jacobi_run`: the damping weight.
    pub omega: f32,
    /// `stream_triad`: s in a = b + s c.
    pub triad_scale: f32,
}

impl PdeParams {
    /// The block for `batch` systems of a grid with `n` cells per side,
    /// `nunk` unknowns, `ncoef` coefficients and `d` KL modes; the rest
    /// (mode, tolerances, scales) is set by the caller.
    pub fn new(n: usize, nunk: usize, ncoef: usize, batch: usize, d: usize) -> Self {
        PdeParams {
            n: n as u32,
            nunk: nunk as u32,
            ncoef: ncoef as u32,
            batch: batch as u32,
            d: d as u32,
            inv_h: n as f32,
            ..Default::default()
        }
    }
}

/// `CgState` of shaders/common/cg_state.wgsl (layout checked by tests/layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq)]
pub struct CgState {
    pub iters: u32,
    pub status: u32,
    pub rz: f32,
    pub bnorm2: f32,
    pub rnorm2: f32,
    /// The relative tolerance of the last solve (set by its start).
    pub tol: f32,
    /// The tolerance asked of the next start (0: the parameter block's).
    pub tol_next: f32,
    pub _pad: u32,
}

/// `MgPhase` of shaders/physics/multigrid.wgsl: the step one dispatch of
/// the wide multigrid path performs (`WideOp` in src/physics/solver.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq, Eq)]
pub struct MgPhase {
    pub op: u32,
    /// The level of a pass (0 the finest).
    pub level: u32,
    /// 1: only for systems whose solve is running.
    pub gated: u32,
    pub _pad: u32,
}

/// Status codes written by the solver kernels.
pub mod status {
    pub const RUNNING: u32 = 0;
    pub const CONVERGED: u32 = 1;
    pub const MAXITER: u32 = 2;
    pub const BREAKDOWN: u32 = 3;
}

/// `ResidualParams` of shaders/physics/residual.wgsl (64 bytes; layout
/// checked by tests/layout.rs): the residual-likelihood loss of the
/// data-free probabilistic solver.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq)]
pub struct ResidualParams {
    /// 1 / sigma_r^2.
    pub sigma_inv2: f32,
    /// mu = u_scale * the network's mean output.
    pub u_scale: f32,
    /// log s^2 = the network's log-variance output + lv0.
    pub lv0: f32,
    /// Factor on the gradient (1 / rows: the minibatch mean).
    pub grad_scale: f32,
    /// 0 energy (Ritz), 1 raw nodal residual.
    pub form: u32,
    /// 0 the closed-form expectation under q, 1 one reparameterised draw.
    pub sampled: u32,
    pub seed_lo: u32,
    pub seed_hi: u32,
    pub step: u32,
    pub stream: u32,
    /// The two-way model's input: the draw of u divided by this.
    pub in_scale: f32,
    /// Unknowns per system and n - 1: the loop bounds (see the WGSL).
    pub nunk: u32,
    pub m: u32,
    /// Nodal basis: 1 = the mean is `shape exp(output)` (shape = the kappa = 1
    /// solution), 0 = `u_scale output`.
    pub log_mean: u32,
    pub _pad: [u32; 2],
}

/// `JointParams` of shaders/infer/residual_vi.wgsl (layout checked by tests/layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq)]
pub struct JointParams {
    /// 1 / sigma_r^2.
    pub sigma_inv2: f32,
    /// d + nunk: the length of one sample (xi, v).
    pub dim: u32,
    /// 1: a flat prior on u (the N(0, I) term of v is cancelled).
    pub flat_u: u32,
    /// n - 1, the unknowns, the coefficients, d and the sensors: the loop
    /// bounds, from a storage buffer (see the WGSL).
    pub m: u32,
    pub nunk: u32,
    pub ncoef: u32,
    pub d: u32,
    pub nsens: u32,
}

impl JointParams {
    /// The block for `pb` with `nsens` sensors and noise level `sigma_r`.
    pub fn new(pb: &crate::physics::problem::Problem, nsens: usize, sigma_r: f64) -> Self {
        JointParams {
            sigma_inv2: (1.0 / (sigma_r * sigma_r)) as f32,
            dim: (pb.d + pb.nunk()) as u32,
            flat_u: 1,
            m: (pb.n - 1) as u32,
            nunk: pb.nunk() as u32,
            ncoef: pb.ncoef() as u32,
            d: pb.d as u32,
            nsens: nsens as u32,
        }
    }
}

/// `DvaeParams` of shaders/common/dvae_params.wgsl (96 bytes; layout
/// checked by tests/layout.rs): the dynamical latent model's kernels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq)]
pub struct DvaeParams {
    pub n: u32,
    pub t: u32,
    pub modes: u32,
    /// Draws of zeta per step.
    pub samples: u32,
    /// Draws of x per step (zeta draw s pairs with x draw s % x_samples).
    pub x_samples: u32,
    pub height: u32,
    /// 1: x is given (no encoder, no decoder).
    pub oracle: u32,
    pub step: u32,
    pub seed_lo: u32,
    pub seed_hi: u32,
    pub stream: u32,
    /// Bits: 1 sigma_x, 2 sigma_y, 4 the encoder's sigma_q, 8 q(zeta).
    pub learn: u32,
    pub dt: f32,
    pub sigma_u2: f32,
    pub sigma_02: f32,
    /// 1 / (T n): the loss is -ELBO / (T n).
    pub inv_norm: f32,
    /// Weight of the Kalman term.
    pub beta: f32,
    /// Weight of the reconstruction term (the warm-up ramps it up to 1).
    pub gamma: f32,
    /// The Kalman term covers frames 1..min(T, t_kalman).
    pub t_kalman: u32,
    /// Hidden width of the level decoder (`dvae_level`; 0: another arch).
    pub level_hidden: u32,
    /// The level of pixel row r is `level0 + r dlevel` (the spec's v_r).
    pub level0: f32,
    pub dlevel: f32,
    pub _pad: [u32; 1],
}
