//! Mirrors of `shaders/infer/`.

pub mod mcmc;
pub mod surrogate;
pub mod vi;
