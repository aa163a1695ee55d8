//! pdevi: a GPU compute-shader engine (wgpu + WGSL) for variational inference
//! in physics-informed models.
//!
//! Layout: [`gpu`] owns the device and the kernels, [`cpu`] holds the f64
//! mirror of every kernel, [`problem`] the reference problems of the spec,
//! [`solver`] the batched forward/adjoint solves, [`io`] and [`plot`] the
//! files people read.

pub mod app;
pub mod bench;
pub mod calibrate;
pub mod compare;
pub mod cpu;
pub mod error;
pub mod gpu;
pub mod io;
pub mod laplace;
pub mod mcmc;
pub mod mlp;
pub mod optim;
pub mod plot;
pub mod problem;
pub mod rng;
pub mod run;
pub mod solver;
pub mod stats;
pub mod train;
pub mod vi;

pub use error::{Error, Result};
pub use gpu::GpuContext;
pub use problem::{Problem, ProblemKind};
