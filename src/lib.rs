//! pdevi: a GPU compute-shader engine (wgpu + WGSL) for variational inference
//! in physics-informed models.
//!
//! Layout: [`gpu`] owns the device and the kernels, [`cpu`] holds the f64
//! mirror of every kernel, [`problem`] the reference problems of the spec,
//! [`solver`] the batched forward/adjoint solves, [`io`] and [`plot`] the
//! files people read.

pub mod check;
pub mod cli;
pub mod cpu;
pub mod error;
pub mod gpu;
pub mod infer;
pub mod math;
pub mod nn;
pub mod output;
pub mod physics;
pub mod rng;

pub use error::{Error, Result};
pub use gpu::GpuContext;
pub use physics::problem::{Problem, ProblemKind};
