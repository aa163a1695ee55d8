//! `#[repr(C)]` mirrors of the structs shared with WGSL.

use bytemuck::{Pod, Zeroable};

/// Keep in sync with `PdeParams` in shaders/common/params.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq)]
pub struct PdeParams {
    pub n: u32,
    pub nunk: u32,
    pub ncoef: u32,
    pub batch: u32,
    pub d: u32,
    pub mode: u32,
    pub max_iter: u32,
    pub chunk: u32,
    pub tol: f32,
    pub scale: f32,
    pub inv_h: f32,
    pub aux: u32,
}

/// Keep in sync with `CgState` in shaders/solver.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq)]
pub struct CgState {
    pub iters: u32,
    pub status: u32,
    pub rz: f32,
    pub bnorm2: f32,
    pub rnorm2: f32,
    pub _pad: [u32; 3],
}

/// Status codes written by the solver kernels.
pub mod status {
    pub const RUNNING: u32 = 0;
    pub const CONVERGED: u32 = 1;
    pub const MAXITER: u32 = 2;
    pub const BREAKDOWN: u32 = 3;
}
