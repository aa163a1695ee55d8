//! Neural networks as WGSL kernels: MLPs, their heads and training.

pub mod mlp;
pub mod train;
