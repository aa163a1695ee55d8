//! Distances between posteriors given by samples that stay finite between
//! measures on function spaces (methods.md, C): the energy distance and the
//! sliced Wasserstein-2 distance, with closed forms for Gaussians that the
//! tests check them against.

/// Rows of `d` values.
fn rows(x: &[f64], d: usize) -> Vec<&[f64]> {
    x.chunks_exact(d).collect()
}

fn dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

fn mean_pair_dist(a: &[&[f64]], b: &[&[f64]], same: bool) -> f64 {
    let mut acc = 0.0;
    let mut count = 0usize;
    for (i, x) in a.iter().enumerate() {
        for (j, y) in b.iter().enumerate() {
            if same && i == j {
                continue;
            }
            acc += dist(x, y);
            count += 1;
        }
    }
    acc / count.max(1) as f64
}

/// The energy distance `2 E|X - Y| - E|X - X'| - E|Y - Y'|` between two
/// sample sets (`n x d` and `m x d`, row-major), with the unbiased
/// within-set terms (pairs i != j). Zero (up to sampling error) exactly when
/// the two laws agree; finite for any two laws with first moments.
pub fn energy_distance(x: &[f64], y: &[f64], d: usize) -> f64 {
    let (a, b) = (rows(x, d), rows(y, d));
    2.0 * mean_pair_dist(&a, &b, false)
        - mean_pair_dist(&a, &a, true)
        - mean_pair_dist(&b, &b, true)
}

/// Quantile `u` in [0, 1] of sorted values (linear between order statistics).
fn quantile(sorted: &[f64], u: f64) -> f64 {
    let n = sorted.len();
    let pos = u * n as f64 - 0.5;
    if pos <= 0.0 {
        return sorted[0];
    }
    let i = pos.floor() as usize;
    if i + 1 >= n {
        return sorted[n - 1];
    }
    let f = pos - i as f64;
    sorted[i] * (1.0 - f) + sorted[i + 1] * f
}

/// The sliced Wasserstein-2 distance: the root mean over `projections`
/// seeded random directions of the squared 1-D W2 between the projected
/// samples (matched by quantiles at max(n, m) levels).
pub fn sliced_wasserstein(x: &[f64], y: &[f64], d: usize, projections: usize, seed: u64) -> f64 {
    let (a, b) = (rows(x, d), rows(y, d));
    let levels = a.len().max(b.len()).max(1);
    let mut acc = 0.0;
    for p in 0..projections {
        let mut th = crate::rng::normals(seed, crate::rng::streams::PREDICTIVE, p as u32, d);
        let norm = th.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-300);
        th.iter_mut().for_each(|v| *v /= norm);
        let proj = |r: &[&[f64]]| {
            let mut v: Vec<f64> = r
                .iter()
                .map(|row| row.iter().zip(&th).map(|(x, t)| x * t).sum())
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let (pa, pb) = (proj(&a), proj(&b));
        let w2: f64 = (0..levels)
            .map(|k| {
                let u = (k as f64 + 0.5) / levels as f64;
                (quantile(&pa, u) - quantile(&pb, u)).powi(2)
            })
            .sum::<f64>()
            / levels as f64;
        acc += w2;
    }
    (acc / projections.max(1) as f64).sqrt()
}

/// E|Z| for Z ~ N(mu, s^2) (the folded normal's mean).
pub fn folded_normal_mean(mu: f64, s: f64) -> f64 {
    use crate::math::special::norm_cdf;
    s * (2.0 / std::f64::consts::PI).sqrt() * (-mu * mu / (2.0 * s * s)).exp()
        + mu * (1.0 - 2.0 * norm_cdf(-mu / s))
}

/// The energy distance between N(m1, s1^2) and N(m2, s2^2) in one
/// dimension, exactly.
pub fn energy_distance_gauss_1d(m1: f64, s1: f64, m2: f64, s2: f64) -> f64 {
    let cross = folded_normal_mean(m1 - m2, (s1 * s1 + s2 * s2).sqrt());
    let self1 = folded_normal_mean(0.0, (2.0f64).sqrt() * s1);
    let self2 = folded_normal_mean(0.0, (2.0f64).sqrt() * s2);
    2.0 * cross - self1 - self2
}

/// Sliced W2 between N(m1, s^2 I) and N(m2, s^2 I) in d dimensions: every
/// projection shifts by theta . (m1 - m2) with equal spreads, and the mean
/// of (theta . v)^2 over uniform directions is |v|^2 / d.
pub fn sliced_wasserstein_gauss_iso(m1: &[f64], m2: &[f64]) -> f64 {
    let d = m1.len() as f64;
    (m1.iter()
        .zip(m2)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        / d)
        .sqrt()
}

/// An exact posterior of a d = 2 problem on a grid: the normalised
/// probabilities of the cells of a `g x g` grid over the box `[x0, x1] x
/// [y0, y1]` (cell (i, j) at index j g + i), from the f64 reference solver
/// at every cell centre (log-likelihood plus the N(0, I) prior).
pub fn grid_posterior_2d(
    pb: &crate::physics::problem::Problem,
    sensors: &[usize],
    y: &[f64],
    bx: (f64, f64),
    by: (f64, f64),
    g: usize,
) -> Vec<f64> {
    let scale = 1.0 / (pb.sigma_n * pb.sigma_n);
    let mut lp = vec![0.0; g * g];
    for j in 0..g {
        for i in 0..g {
            let x = [
                bx.0 + (i as f64 + 0.5) / g as f64 * (bx.1 - bx.0),
                by.0 + (j as f64 + 0.5) / g as f64 * (by.1 - by.0),
            ];
            let f = crate::physics::reference::forward(pb, &x, 1e-12, 100_000);
            let mis: f64 = sensors
                .iter()
                .zip(y)
                .map(|(&k, &v)| 0.5 * scale * (f.u[k] - v).powi(2))
                .sum();
            lp[j * g + i] = -mis - 0.5 * (x[0] * x[0] + x[1] * x[1]);
        }
    }
    let top = lp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = lp.iter().map(|v| (v - top).exp()).collect();
    let s: f64 = w.iter().sum();
    w.iter().map(|v| v / s).collect()
}

/// The share of draws (`n x 2`) in each cell of the grid of
/// [`grid_posterior_2d`] (draws outside the box are counted in no cell).
pub fn histogram_2d(draws: &[f64], bx: (f64, f64), by: (f64, f64), g: usize) -> Vec<f64> {
    let mut h = vec![0.0; g * g];
    let n = draws.len() / 2;
    for r in draws.chunks_exact(2) {
        let i = ((r[0] - bx.0) / (bx.1 - bx.0) * g as f64).floor();
        let j = ((r[1] - by.0) / (by.1 - by.0) * g as f64).floor();
        if i >= 0.0 && j >= 0.0 && (i as usize) < g && (j as usize) < g {
            h[j as usize * g + i as usize] += 1.0 / n as f64;
        }
    }
    h
}

/// Total variation between two discrete distributions on the same cells
/// (mass outside the grid counts as a difference).
pub fn total_variation(p: &[f64], q: &[f64]) -> f64 {
    let inside: f64 = p.iter().zip(q).map(|(a, b)| (a - b).abs()).sum();
    let outside = (1.0 - p.iter().sum::<f64>()).abs() + (1.0 - q.iter().sum::<f64>()).abs();
    0.5 * (inside + outside)
}

/// Sum a `g x g` grid into `(g / f) x (g / f)` blocks of `f x f` cells.
pub fn coarsen(p: &[f64], g: usize, f: usize) -> Vec<f64> {
    let c = g / f;
    let mut out = vec![0.0; c * c];
    for j in 0..c * f {
        for i in 0..c * f {
            out[(j / f) * c + i / f] += p[j * g + i];
        }
    }
    out
}

/// `n` draws (`n x 2`) of a grid posterior (cells by their probabilities,
/// uniform within a cell; seeded).
pub fn grid_draws(
    p: &[f64],
    bx: (f64, f64),
    by: (f64, f64),
    g: usize,
    n: usize,
    seed: u64,
) -> Vec<f64> {
    let mut cdf = Vec::with_capacity(p.len());
    let mut acc = 0.0;
    for v in p {
        acc += v;
        cdf.push(acc);
    }
    let u = crate::rng::uniforms(seed, crate::rng::streams::PREDICTIVE, 7, 3 * n);
    let mut out = Vec::with_capacity(2 * n);
    for k in 0..n {
        let target = u[3 * k] * acc;
        let c = cdf.partition_point(|&v| v < target).min(p.len() - 1);
        let (i, j) = (c % g, c / g);
        out.push(bx.0 + (i as f64 + u[3 * k + 1]) / g as f64 * (bx.1 - bx.0));
        out.push(by.0 + (j as f64 + u[3 * k + 2]) / g as f64 * (by.1 - by.0));
    }
    out
}
