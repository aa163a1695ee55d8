//! A posterior over xi pushed forward: the field's moments (exact, the
//! field is linear in xi) and the solution's moments by batched solves of
//! posterior draws.

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::physics::problem::Problem;
use crate::physics::solver::BatchedSolver;

/// Pointwise mean and std of the field z = basis^T xi under N(m, cov), exact.
pub fn field_moments(pb: &Problem, m: &[f64], cov: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (d, nc) = (pb.d, pb.ncoef());
    let basis = pb.basis();
    let mean = pb.field(m);
    let mut std = vec![0.0; nc];
    let mut phi = vec![0.0; d];
    for c in 0..nc {
        for k in 0..d {
            phi[k] = basis[k * nc + c];
        }
        let mut v = 0.0;
        for i in 0..d {
            let row: f64 = (0..d).map(|j| cov[i * d + j] * phi[j]).sum();
            v += phi[i] * row;
        }
        std[c] = v.max(0.0).sqrt();
    }
    (mean, std)
}

/// `count` draws of N(m, cov) (`count x d`, the predictive stream).
pub fn gaussian_draws(m: &[f64], cov: &[f64], count: usize, seed: u64) -> Result<Vec<f64>> {
    let d = m.len();
    let l = crate::math::linalg::cholesky(cov, d)
        .map_err(|e| Error::not_spd("the posterior covariance of the latent vector", e))?;
    let eps = crate::rng::normals(seed, crate::rng::streams::PREDICTIVE, u32::MAX, count * d);
    let mut out = Vec::with_capacity(count * d);
    for e in eps.chunks(d) {
        for i in 0..d {
            out.push(m[i] + (0..=i).map(|j| l[i * d + j] * e[j]).sum::<f64>());
        }
    }
    Ok(out)
}

/// A posterior over w pushed through a generative prior's decoder.
pub struct PriorMoments {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// P(z_c > 0): the share of draws whose field is inside at cell c.
    pub phase: Vec<f64>,
    pub draws: usize,
}

/// Pointwise mean, std and phase probability of f(w) over draws of w
/// (`rows x K`), on the f64 mirror of the decoder.
pub fn prior_field_moments(prior: &crate::nn::vae::GenerativePrior, w: &[f64]) -> PriorMoments {
    let k = prior.latent();
    let nc = prior.meta.n * prior.meta.n;
    let rows = w.len() / k;
    let (mut mean, mut m2, mut phase) = (vec![0.0; nc], vec![0.0; nc], vec![0.0; nc]);
    for chunk in w.chunks(256 * k) {
        let f = prior.fields(chunk);
        for row in f.chunks(nc) {
            for c in 0..nc {
                mean[c] += row[c];
                m2[c] += row[c] * row[c];
                phase[c] += f64::from(u8::from(row[c] > 0.0));
            }
        }
    }
    let n = rows.max(1) as f64;
    let std = (0..nc)
        .map(|c| (m2[c] / n - (mean[c] / n).powi(2)).max(0.0).sqrt())
        .collect();
    PriorMoments {
        mean: mean.iter().map(|v| v / n).collect(),
        std,
        phase: phase.iter().map(|v| v / n).collect(),
        draws: rows,
    }
}

/// Monte Carlo mean and std of u through the GPU solver, xi drawn from
/// N(m, cov) with the predictive stream (in batches of the solver's size).
pub fn predictive_u(
    ctx: &GpuContext,
    solver: &BatchedSolver,
    m: &[f64],
    cov: &[f64],
    count: usize,
    seed: u64,
) -> Result<(Vec<f64>, Vec<f64>, usize)> {
    let (d, b) = (solver.problem.d, solver.batch);
    let l = crate::math::linalg::cholesky(cov, d)
        .map_err(|e| Error::not_spd("the posterior covariance of xi", e))?;
    let batches = count.div_ceil(b).max(1);
    let mut xis = Vec::with_capacity(batches * b * d);
    for batch in 0..batches {
        let eps = crate::rng::normals(seed, crate::rng::streams::PREDICTIVE, batch as u32, b * d);
        for k in 0..b {
            for i in 0..d {
                xis.push(m[i] + (0..=i).map(|j| l[i * d + j] * eps[k * d + j]).sum::<f64>());
            }
        }
    }
    predictive_u_draws(ctx, solver, &xis)
}

/// Mean and std of u over the given draws of xi (`count x d`), solved in
/// batches of the solver's size (a final partial batch is padded with the
/// first draw and not counted).
pub fn predictive_u_draws(
    ctx: &GpuContext,
    solver: &BatchedSolver,
    xis: &[f64],
) -> Result<(Vec<f64>, Vec<f64>, usize)> {
    let s = solver;
    let (d, nu, b) = (s.problem.d, s.problem.nunk(), s.batch);
    let count = xis.len() / d;
    let mut mean = vec![0.0; nu];
    let mut m2 = vec![0.0; nu];
    let mut seen = 0usize;
    for chunk in xis.chunks(b * d) {
        let used = chunk.len() / d;
        let mut xi = chunk.to_vec();
        while xi.len() < b * d {
            xi.extend_from_slice(&chunk[..d]);
        }
        let info = s.solve(ctx, &xi)?;
        crate::physics::solver::check_converged(&info, "posterior predictive solves", &s.cg)?;
        let u = s.read_u(ctx)?;
        for k in 0..used {
            seen += 1;
            for i in 0..nu {
                let x = u[k * nu + i];
                let delta = x - mean[i];
                mean[i] += delta / seen as f64;
                m2[i] += delta * (x - mean[i]);
            }
        }
    }
    debug_assert_eq!(seen, count);
    let std = m2
        .iter()
        .map(|v| (v / (seen.max(2) - 1) as f64).sqrt())
        .collect();
    Ok((mean, std, seen))
}
