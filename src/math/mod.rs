//! Numerics in f64 on the CPU, built on well-kept crates instead of
//! hand-written routines: [`linalg`] wraps `faer` (Cholesky, inverse,
//! log-determinant, solves and eigen-decomposition of small dense symmetric
//! matrices, plus the KL divergence and 2-Wasserstein distance between
//! Gaussians) and [`special`] wraps `statrs` (error function, normal
//! distribution, gamma functions, chi-square survival function).
//!
//! Matrices are row-major `&[f64]` slices; see [`linalg`] for the one rule by
//! which a matrix counts as "not positive definite" everywhere in the engine.

pub mod linalg;
pub mod special;
