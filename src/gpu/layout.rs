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
