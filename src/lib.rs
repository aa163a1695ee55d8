//! pdevi: a GPU compute-shader engine (wgpu + WGSL) for variational inference
//! in physics-informed models, laid out by the layers of the primer:
//!
//! * [`gpu`]: the device, shader assembly and the kernel table;
//! * [`physics`]: the reference problems, sensors and the batched solver;
//! * [`infer`]: VI, Laplace, MCMC, the exact linear posterior, predictives;
//! * [`nn`]: MLPs and their training;
//! * [`check`]: comparisons, calibration and MCMC diagnostics;
//! * [`output`]: arrays, CSV, JSON and figures;
//! * [`math`]: dense linear algebra and special functions;
//! * [`cpu`]: the f64 mirror of every kernel;
//! * [`cli`]: the commands of the `pdevi` binary.
//!
//! [`api`] is the short way in: a problem, data, one call per method.
//!
//! ```
//! use pdevi::{api, Problem, ProblemKind};
//!
//! // The linear poisson1d problem and its exact posterior.
//! let pb = Problem::new(ProblemKind::Poisson1d, 32, 8)?;
//! let data = api::simulate(&pb, 1);
//! let q = api::exact(&pb, &data.obs)?;
//! let (field_mean, field_std) = q.field(&pb);
//! assert_eq!(field_mean.len(), 31);
//! assert!(field_std.iter().all(|&s| s > 0.0));
//! # Ok::<(), pdevi::Error>(())
//! ```

pub mod api;
pub mod check;
pub mod cli;
pub mod cpu;
pub mod error;
pub mod gpu;
pub mod infer;
pub mod interrupt;
pub mod math;
pub mod memory;
pub mod nn;
pub mod output;
pub mod physics;
pub mod rng;

pub use error::{Error, Result};
pub use gpu::GpuContext;
pub use physics::problem::{Problem, ProblemKind};
pub use physics::sensors::Observations;
pub use physics::solver::CgParams;
