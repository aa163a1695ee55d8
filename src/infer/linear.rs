//! The exact posterior of a linear-Gaussian problem (poisson1d), the gold
//! standard that VI, Laplace and MCMC are tested against.

use crate::math::linalg;
use crate::physics::problem::Problem;
use crate::physics::reference::forward;

/// The exact posterior of a linear-Gaussian problem (poisson1d), in f64:
/// G column by column from unit solves, precision `I + G^T G / sigma^2`.
pub struct LinearPosterior {
    /// G (sensors x d, row-major).
    pub g: Vec<f64>,
    pub prec: Vec<f64>,
    pub cov: Vec<f64>,
}

impl LinearPosterior {
    /// G, precision and covariance (independent of the data).
    pub fn new(pb: &Problem) -> Self {
        let (d, ns) = (pb.d, pb.sensors.len());
        let mut g = vec![0.0; ns * d];
        for k in 0..d {
            let mut e = vec![0.0; d];
            e[k] = 1.0;
            let u = forward(pb, &e, 1e-14, 100_000).u;
            for (s, &i) in pb.sensors.iter().enumerate() {
                g[s * d + k] = u[i];
            }
        }
        let s2 = pb.sigma_n * pb.sigma_n;
        let mut prec = vec![0.0; d * d];
        for a in 0..d {
            for b in 0..d {
                prec[a * d + b] = (0..ns).map(|s| g[s * d + a] * g[s * d + b]).sum::<f64>() / s2
                    + if a == b { 1.0 } else { 0.0 };
            }
        }
        // I + G^T G / sigma^2 >= I: positive definite for any finite G.
        let cov = linalg::spd_inverse(&prec, d)
            .expect("I + G^T G / sigma^2 is positive definite")
            .0;
        LinearPosterior { g, prec, cov }
    }

    /// The posterior mean `cov G^T y / sigma^2` for data `y`.
    pub fn mean(&self, pb: &Problem, y: &[f64]) -> Vec<f64> {
        let (d, ns) = (pb.d, pb.sensors.len());
        let s2 = pb.sigma_n * pb.sigma_n;
        let gty: Vec<f64> = (0..d)
            .map(|a| (0..ns).map(|k| self.g[k * d + a] * y[k]).sum::<f64>() / s2)
            .collect();
        (0..d)
            .map(|a| (0..d).map(|b| self.cov[a * d + b] * gty[b]).sum())
            .collect()
    }
}
