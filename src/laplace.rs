//! MAP by Gauss-Newton with adjoint Jacobians, and the Laplace posterior
//! N(MAP, (I + J^T J / sigma^2)^-1) (`pdevi laplace`).

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::run::Setup;

/// The Laplace approximation at the MAP.
#[derive(Clone, Debug)]
pub struct Laplace {
    /// MAP estimate of xi (d).
    pub map: Vec<f64>,
    /// Covariance (I + J^T J / sigma^2)^-1 at the MAP (d x d, row-major).
    pub cov: Vec<f64>,
    /// Gauss-Newton iterations taken.
    pub iterations: usize,
    /// Negative log-posterior (up to a constant) at the MAP.
    pub objective: f64,
}

/// Gauss-Newton MAP and Laplace covariance for the problem and data of `st`.
pub fn fit_laplace(_ctx: &GpuContext, st: &Setup, _max_iters: usize) -> Result<Laplace> {
    // Placeholder until the Gauss-Newton solver lands: the prior.
    let d = st.pb.d;
    let mut cov = vec![0.0; d * d];
    for i in 0..d {
        cov[i * d + i] = 1.0;
    }
    Ok(Laplace {
        map: vec![0.0; d],
        cov,
        iterations: 0,
        objective: f64::NAN,
    })
}
