//! f64 CPU mirrors of every WGSL kernel, in folders named like `shaders/`:
//! same kernel names, same argument order (the kernel's bindings), same loop
//! structure and, where tolerances depend on it, the same reduction order.
//! Tests compare the GPU against these.

pub mod dvae;
pub mod flow;
pub mod infer;
pub mod kalman;
pub mod multigrid;
pub mod nn;
pub mod physics;
pub mod render;
pub mod residual;
