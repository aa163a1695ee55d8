//! The commands of the `pdevi` binary: configuration, command bodies,
//! benchmarks and progress display, on top of the library layers.

pub mod amortised;
pub mod bench;
pub mod calibrate;
pub mod commands;
pub mod dvae;
pub mod flow;
pub mod laplace;
pub mod mcmc;
pub mod residual;
pub mod run;
pub mod surrogate;
pub mod vae;
