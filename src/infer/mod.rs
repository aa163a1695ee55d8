//! Inference methods: variational families and VI, Laplace, MCMC, and the
//! optimiser they share.

pub mod adam;
pub mod amortised;
pub mod dvae;
pub mod flow;
pub mod gaussian;
pub mod laplace;
pub mod linear;
pub mod mcmc;
pub mod predictive;
pub mod residual;
pub mod residual_vi;
pub mod surrogate;
pub mod vi;
