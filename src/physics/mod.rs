//! The forward models: the reference problems of the spec (KL priors,
//! operators, sensors) and the batched GPU solver with its adjoint.

pub mod advdiff;
pub mod inclusions;
pub mod problem;
pub mod reference;
pub mod sensors;
pub mod solver;
