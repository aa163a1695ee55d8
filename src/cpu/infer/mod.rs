//! Mirrors of `shaders/infer/`.

pub mod mcmc;
pub mod vi;
