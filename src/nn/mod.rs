//! Neural networks as WGSL kernels: MLPs, their heads and training.

pub mod dataset;
pub mod mlp;
pub mod train;
pub mod vae;
