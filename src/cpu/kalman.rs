//! f64 mirrors of the Kalman kernels (`shaders/physics/kalman.wgsl`), and the
//! dense references they are checked against.
//!
//! The state-space model of advdiff1d: `u_0 ~ N(m_0, sigma_0^2 I)`,
//! `u_t = M u_{t-1} + N(0, sigma_u^2 I)`, pseudo-observations
//! `x_t = u_t + N(0, sigma_x^2 I)`, t = 1..T.
//!
//! * [`kalman_loglik`] (the GPU kernel's mirror): `M` is circulant, so in the
//!   orthonormal real Fourier basis every covariance stays diagonal and the
//!   filter is one scalar filter per mode, exact. It returns
//!   `log p(x_1..T | zeta)` with its gradients in `x`, in `zeta` (forward-mode
//!   tangents through `lambda_k(c, nu)`) and in `log sigma_x^2`.
//! * [`kalman_dense`]: the textbook filter and RTS smoother with dense
//!   `n x n` covariances, for any `M` (the outputs' smoother, and the
//!   reference of the modal filter).
//! * [`joint_loglik_dense`]: `log N(x; mean, cov)` of the stacked `x_1..T`
//!   built directly (tiny sizes only).

use crate::math::linalg;
use crate::physics::advdiff::{cmul, physical, physical_grad, AdvDiff, C64};

const LOG_2PI: f64 = 1.837_877_066_409_345_5;

/// Result of [`kalman_loglik`].
#[derive(Clone, Debug)]
pub struct KalmanGrad {
    pub ll: f64,
    /// d ll / d zeta.
    pub d_zeta: [f64; 2],
    /// d ll / d log sigma_x^2.
    pub d_log_sx2: f64,
    /// d ll / d x, `(T, n)`.
    pub d_x: Vec<f64>,
}

fn cconj(a: C64) -> C64 {
    [a[0], -a[1]]
}

fn cadd(a: C64, b: C64) -> C64 {
    [a[0] + b[0], a[1] + b[1]]
}

fn cscale(s: f64, a: C64) -> C64 {
    [s * a[0], s * a[1]]
}

fn re_conj_mul(a: C64, b: C64) -> f64 {
    a[0] * b[0] + a[1] * b[1]
}

/// `log p(x_1..T | zeta)` of the modal filter and its gradients. `x` is
/// `(T, n)`; `m0_modes` the initial mean's coefficients (`to_modes(m_0)`).
/// Same loop order as the kernel: modes outermost, time inside.
pub fn kalman_loglik(
    pb: &AdvDiff,
    m0_modes: &[C64],
    x: &[f64],
    zeta: [f64; 2],
    sigma_x2: f64,
) -> KalmanGrad {
    let (n, tt) = (pb.n, pb.t);
    let (c, nu) = physical(zeta);
    let (dcz, dnuz) = physical_grad(zeta);
    let su2 = pb.sigma_u * pb.sigma_u;
    let mut ll = 0.0;
    let mut d_theta = [0.0; 3];
    let mut gmodes = vec![[0.0, 0.0]; tt * pb.modes()];
    let xm = x_modes(pb, x);
    for k in 0..pb.modes() {
        let dof = pb.mode_dof(k) as f64;
        let (lam, dlc, dlnu) = pb.mode_factor(k, c, nu);
        // Tangent directions: c, nu, log sigma_x^2.
        let dlam = [dlc, dlnu, [0.0, 0.0]];
        let dsx2 = [0.0, 0.0, sigma_x2];
        let lam2 = lam[0] * lam[0] + lam[1] * lam[1];
        let mut m = m0_modes[k];
        let mut p = pb.sigma_0 * pb.sigma_0;
        let mut dm = [[0.0, 0.0]; 3];
        let mut dp = [0.0; 3];
        let mut gains = Vec::with_capacity(tt);
        for xt in &xm {
            let mp = cmul(lam, m);
            let pp = lam2 * p + su2;
            let s = pp + sigma_x2;
            let e = [xt[k][0] - mp[0], xt[k][1] - mp[1]];
            let e2 = e[0] * e[0] + e[1] * e[1];
            ll += -0.5 * (e2 / s + dof * (s.ln() + LOG_2PI));
            let kg = pp / s;
            for j in 0..3 {
                let dmp = cadd(cmul(dlam[j], m), cmul(lam, dm[j]));
                let dpp = 2.0 * re_conj_mul(lam, dlam[j]) * p + lam2 * dp[j];
                let ds = dpp + dsx2[j];
                let de = cscale(-1.0, dmp);
                d_theta[j] +=
                    -0.5 * (2.0 * re_conj_mul(e, de) / s - e2 * ds / (s * s) + dof * ds / s);
                let dk = (dpp * s - pp * ds) / (s * s);
                dm[j] = cadd(cadd(dmp, cscale(dk, e)), cscale(kg, de));
                dp[j] = -dk * pp + (1.0 - kg) * dpp;
            }
            m = cadd(mp, cscale(kg, e));
            p = (1.0 - kg) * pp;
            gains.push((kg, s, e));
        }
        // Reverse sweep for d ll / d x (the mean recursion is linear in x).
        let mut g = [0.0, 0.0];
        for t in (0..tt).rev() {
            let (kg, s, e) = gains[t];
            let ge = cscale(-1.0 / s, e);
            gmodes[t * pb.modes() + k] = cadd(ge, cscale(kg, g));
            g = cmul(
                cconj(lam),
                [(1.0 - kg) * g[0] - ge[0], (1.0 - kg) * g[1] - ge[1]],
            );
        }
    }
    // Back to nodes: x-hat = Q^T x, so d/dx = Q d/dx-hat (with the sine
    // part's sign of `to_modes`).
    let mut d_x = vec![0.0; tt * n];
    for t in 0..tt {
        for i in 0..n {
            let mut acc = 0.0;
            for k in 0..pb.modes() {
                let (cb, sb) = pb.basis(k, i);
                let gk = gmodes[t * pb.modes() + k];
                acc += cb * gk[0] - sb * gk[1];
            }
            d_x[t * n + i] = acc;
        }
    }
    KalmanGrad {
        ll,
        d_zeta: [d_theta[0] * dcz, d_theta[1] * dnuz],
        d_log_sx2: d_theta[2],
        d_x,
    }
}

/// Result of [`kalman_dense`]: the log-likelihood and the smoothed
/// (RTS) means and variances `(T, n)` of u_1..T.
#[derive(Clone, Debug)]
pub struct Smoothed {
    pub ll: f64,
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    /// Filtered means `(T, n)`.
    pub filtered: Vec<f64>,
}

fn transpose(a: &[f64], n: usize) -> Vec<f64> {
    let mut t = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            t[j * n + i] = a[i * n + j];
        }
    }
    t
}

fn symmetrise(a: &mut [f64], n: usize) {
    for i in 0..n {
        for j in 0..i {
            let v = 0.5 * (a[i * n + j] + a[j * n + i]);
            a[i * n + j] = v;
            a[j * n + i] = v;
        }
    }
}

/// The prediction step of the state: `(M mean, M cov M^T + sigma_u^2 I)`
/// (`mt` = M^T, both row-major `n x n`).
fn predict(
    m: &[f64],
    mt: &[f64],
    n: usize,
    mean: &[f64],
    cov: &[f64],
    sigma_u: f64,
) -> (Vec<f64>, Vec<f64>) {
    let mp = (0..n)
        .map(|i| (0..n).map(|j| m[i * n + j] * mean[j]).sum())
        .collect();
    let mut pp = linalg::matmul(&linalg::matmul(m, cov, n, n, n), mt, n, n, n);
    for i in 0..n {
        pp[i * n + i] += sigma_u * sigma_u;
    }
    (mp, pp)
}

/// The dense Kalman filter and RTS smoother for `u_t = M u_{t-1} + eta`,
/// `x_t = u_t + delta` (`m` row-major `n x n`). Errors when a covariance
/// stops being positive definite.
#[allow(clippy::too_many_arguments)]
pub fn kalman_dense(
    m: &[f64],
    n: usize,
    m0: &[f64],
    sigma_0: f64,
    sigma_u: f64,
    sigma_x2: f64,
    x: &[f64],
    tt: usize,
) -> linalg::LinalgResult<Smoothed> {
    let mt = transpose(m, n);
    let mut mean = m0.to_vec();
    let mut cov = vec![0.0; n * n];
    for i in 0..n {
        cov[i * n + i] = sigma_0 * sigma_0;
    }
    let mut ll = 0.0;
    let (mut fm, mut fp, mut pm, mut pp_all) = (vec![], vec![], vec![], vec![]);
    for t in 0..tt {
        let (mp, mut pp) = predict(m, &mt, n, &mean, &cov, sigma_u);
        symmetrise(&mut pp, n);
        let mut s = pp.clone();
        for i in 0..n {
            s[i * n + i] += sigma_x2;
        }
        let e: Vec<f64> = (0..n).map(|i| x[t * n + i] - mp[i]).collect();
        let sinv_e = linalg::solve_spd(&s, n, &e)?;
        let logdet = linalg::logdet_spd(&s, n)?;
        ll += -0.5
            * (e.iter().zip(&sinv_e).map(|(a, b)| a * b).sum::<f64>()
                + logdet
                + n as f64 * LOG_2PI);
        // K = Pp S^{-1} (S, Pp symmetric): K^T = S^{-1} Pp.
        let (sinv, _) = linalg::spd_inverse(&s, n)?;
        let k = linalg::matmul(&pp, &sinv, n, n, n);
        mean = (0..n)
            .map(|i| mp[i] + (0..n).map(|j| k[i * n + j] * e[j]).sum::<f64>())
            .collect();
        let kp = linalg::matmul(&k, &pp, n, n, n);
        cov = pp.iter().zip(&kp).map(|(a, b)| a - b).collect();
        symmetrise(&mut cov, n);
        fm.push(mean.clone());
        fp.push(cov.clone());
        pm.push(mp);
        pp_all.push(pp);
    }
    // RTS: J_t = P_t M^T Pp_{t+1}^{-1}.
    let mut sm = fm.clone();
    let mut sp = fp.clone();
    for t in (0..tt.saturating_sub(1)).rev() {
        let (ppinv, _) = linalg::spd_inverse(&pp_all[t + 1], n)?;
        let j = linalg::matmul(&linalg::matmul(&fp[t], &mt, n, n, n), &ppinv, n, n, n);
        let dm: Vec<f64> = (0..n).map(|i| sm[t + 1][i] - pm[t + 1][i]).collect();
        for i in 0..n {
            sm[t][i] = fm[t][i] + (0..n).map(|l| j[i * n + l] * dm[l]).sum::<f64>();
        }
        let dp: Vec<f64> = sp[t + 1]
            .iter()
            .zip(&pp_all[t + 1])
            .map(|(a, b)| a - b)
            .collect();
        let jdj = linalg::matmul(
            &linalg::matmul(&j, &dp, n, n, n),
            &transpose(&j, n),
            n,
            n,
            n,
        );
        let mut p: Vec<f64> = fp[t].iter().zip(&jdj).map(|(a, b)| a + b).collect();
        symmetrise(&mut p, n);
        sp[t] = p;
    }
    Ok(Smoothed {
        ll,
        mean: sm.concat(),
        var: sp
            .iter()
            .flat_map(|p| (0..n).map(move |i| p[i * n + i]))
            .collect(),
        filtered: fm.concat(),
    })
}

/// `log N(x; mu, Sigma)` of the stacked `x_1..T` from the joint moments:
/// `mu_t = M^t m_0`, `Cov(u_t, u_s) = M^{t-s} Cov(u_s)` for s <= t, plus
/// `sigma_x^2 I`. O((T n)^3): tiny sizes only.
#[allow(clippy::too_many_arguments)]
pub fn joint_loglik_dense(
    m: &[f64],
    n: usize,
    m0: &[f64],
    sigma_0: f64,
    sigma_u: f64,
    sigma_x2: f64,
    x: &[f64],
    tt: usize,
) -> linalg::LinalgResult<f64> {
    let mt = transpose(m, n);
    let d = tt * n;
    let mut mu = vec![0.0; d];
    let mut covs = Vec::new();
    let mut mean = m0.to_vec();
    let mut cov = vec![0.0; n * n];
    for i in 0..n {
        cov[i * n + i] = sigma_0 * sigma_0;
    }
    for t in 0..tt {
        (mean, cov) = predict(m, &mt, n, &mean, &cov, sigma_u);
        mu[t * n..(t + 1) * n].copy_from_slice(&mean);
        covs.push(cov.clone());
    }
    let mut big = vec![0.0; d * d];
    for s in 0..tt {
        // Cov(u_t, u_s) = M^{t-s} Cov(u_s), t >= s.
        let mut block = covs[s].clone();
        for t in s..tt {
            if t > s {
                block = linalg::matmul(m, &block, n, n, n);
            }
            for i in 0..n {
                for j in 0..n {
                    big[(t * n + i) * d + s * n + j] = block[i * n + j];
                    big[(s * n + j) * d + t * n + i] = block[i * n + j];
                }
            }
        }
    }
    for i in 0..d {
        big[i * d + i] += sigma_x2;
    }
    let e: Vec<f64> = x.iter().zip(&mu).map(|(a, b)| a - b).collect();
    let sol = linalg::solve_spd(&big, d, &e)?;
    let logdet = linalg::logdet_spd(&big, d)?;
    Ok(-0.5 * (e.iter().zip(&sol).map(|(a, b)| a * b).sum::<f64>() + logdet + d as f64 * LOG_2PI))
}

/// The exact posterior of zeta given pseudo-observations `x` (known
/// `sigma_x`), on grids of log p(zeta) + log p(x | zeta) by the modal
/// filter: the best point of a coarse grid over [-4, 4]^2, the moments on a
/// grid about it, then twice the moments on a grid over +-6 sd of the last
/// answer. Returns (mean, covariance).
pub fn grid_posterior(pb: &AdvDiff, x: &[f64], sigma_x2: f64) -> ([f64; 2], [[f64; 2]; 2]) {
    let m0 = pb.to_modes(&pb.m0());
    let xm = x_modes(pb, x);
    let eval =
        |z: [f64; 2]| loglik_modes(pb, &m0, &xm, z, sigma_x2) - 0.5 * (z[0] * z[0] + z[1] * z[1]);
    let grid = |lo: [f64; 2], hi: [f64; 2], k: usize| {
        let mut pts = Vec::with_capacity(k * k);
        for a in 0..k {
            for b in 0..k {
                let z = [
                    lo[0] + (hi[0] - lo[0]) * a as f64 / (k - 1) as f64,
                    lo[1] + (hi[1] - lo[1]) * b as f64 / (k - 1) as f64,
                ];
                pts.push((z, eval(z)));
            }
        }
        pts
    };
    let moments = |pts: &[([f64; 2], f64)]| {
        let top = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let mut w = 0.0;
        let mut m = [0.0; 2];
        let mut s = [[0.0; 2]; 2];
        for (z, l) in pts {
            let p = (l - top).exp();
            w += p;
            m[0] += p * z[0];
            m[1] += p * z[1];
        }
        m = [m[0] / w, m[1] / w];
        for (z, l) in pts {
            let p = (l - top).exp() / w;
            let d = [z[0] - m[0], z[1] - m[1]];
            for i in 0..2 {
                for j in 0..2 {
                    s[i][j] += p * d[i] * d[j];
                }
            }
        }
        (m, s)
    };
    let coarse = grid([-4.0, -4.0], [4.0, 4.0], 81);
    let best = coarse
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|p| p.0)
        .unwrap_or([0.0, 0.0]);
    let (mut m, mut s) = moments(&grid(
        [best[0] - 0.2, best[1] - 0.2],
        [best[0] + 0.2, best[1] + 0.2],
        81,
    ));
    for _ in 0..2 {
        let sd = [s[0][0].sqrt().max(1e-4), s[1][1].sqrt().max(1e-4)];
        let lo = [m[0] - 6.0 * sd[0], m[1] - 6.0 * sd[1]];
        let hi = [m[0] + 6.0 * sd[0], m[1] + 6.0 * sd[1]];
        (m, s) = moments(&grid(lo, hi, 121));
    }
    (m, s)
}

/// Modal coefficients of each frame of `x` `(T, n)`.
pub fn x_modes(pb: &AdvDiff, x: &[f64]) -> Vec<Vec<C64>> {
    (0..pb.t)
        .map(|t| pb.to_modes(&x[t * pb.n..(t + 1) * pb.n]))
        .collect()
}

/// The modal filter's log-likelihood split by frame: entry t is
/// `log p(x_t | x_1..t-1, zeta)` (summed over the modes). Their sum is
/// [`loglik_modes`].
pub fn loglik_steps(
    pb: &AdvDiff,
    m0_modes: &[C64],
    xm: &[Vec<C64>],
    zeta: [f64; 2],
    sigma_x2: f64,
) -> Vec<f64> {
    let (c, nu) = physical(zeta);
    let su2 = pb.sigma_u * pb.sigma_u;
    let mut ll = vec![0.0; xm.len()];
    for k in 0..pb.modes() {
        let dof = pb.mode_dof(k) as f64;
        let lam = pb.mode_factor(k, c, nu).0;
        let lam2 = lam[0] * lam[0] + lam[1] * lam[1];
        let mut m = m0_modes[k];
        let mut p = pb.sigma_0 * pb.sigma_0;
        for (t, xt) in xm.iter().enumerate() {
            let mp = cmul(lam, m);
            let pp = lam2 * p + su2;
            let s = pp + sigma_x2;
            let e = [xt[k][0] - mp[0], xt[k][1] - mp[1]];
            ll[t] += -0.5 * ((e[0] * e[0] + e[1] * e[1]) / s + dof * (s.ln() + LOG_2PI));
            let kg = pp / s;
            m = cadd(mp, cscale(kg, e));
            p = (1.0 - kg) * pp;
        }
    }
    ll
}

/// The sandwich covariance of zeta for a misspecified filter: with `cov`
/// the posterior covariance (the inverse of the curvature H) and `g_t` the
/// per-frame scores `d/dzeta log p(x_t | x_1..t-1, zeta)` at `zeta` (central
/// differences of [`loglik_steps`]), `cov J cov` where J is the scores'
/// long-run covariance with Bartlett weights up to `lag` frames (Newey and
/// West). When the model holds, J = H and the sandwich is `cov`; when the
/// pseudo-observations carry errors the model does not know of (an
/// encoder's systematic error, correlated across nodes and frames), the
/// scores vary more than H says and the sandwich is wider. Returns the
/// sandwich and the per-frame scores.
pub fn sandwich_cov(
    pb: &AdvDiff,
    x: &[f64],
    zeta: [f64; 2],
    sigma_x2: f64,
    cov: [[f64; 2]; 2],
    lag: usize,
) -> ([[f64; 2]; 2], Vec<[f64; 2]>) {
    let m0 = pb.to_modes(&pb.m0());
    let xm = x_modes(pb, x);
    let tt = xm.len();
    let mut g = vec![[0.0; 2]; tt];
    for i in 0..2 {
        let d = 1e-4 * cov[i][i].sqrt().max(1e-3);
        let mut zp = zeta;
        let mut zm = zeta;
        zp[i] += d;
        zm[i] -= d;
        let lp = loglik_steps(pb, &m0, &xm, zp, sigma_x2);
        let lm = loglik_steps(pb, &m0, &xm, zm, sigma_x2);
        for t in 0..tt {
            g[t][i] = (lp[t] - lm[t]) / (2.0 * d);
        }
    }
    let mean = [
        g.iter().map(|v| v[0]).sum::<f64>() / tt as f64,
        g.iter().map(|v| v[1]).sum::<f64>() / tt as f64,
    ];
    let mut j = [[0.0; 2]; 2];
    for l in 0..=lag.min(tt.saturating_sub(1)) {
        let w = if l == 0 {
            1.0
        } else {
            2.0 * (1.0 - l as f64 / (lag + 1) as f64)
        };
        let mut c = [[0.0; 2]; 2];
        for t in l..tt {
            for a in 0..2 {
                for b in 0..2 {
                    c[a][b] += (g[t][a] - mean[a]) * (g[t - l][b] - mean[b]);
                }
            }
        }
        for a in 0..2 {
            for b in 0..2 {
                // Lags enter as (C_l + C_l^T) / 2 each side: symmetric.
                j[a][b] += w * 0.5 * (c[a][b] + c[b][a]);
            }
        }
    }
    let mut out = [[0.0; 2]; 2];
    for a in 0..2 {
        for b in 0..2 {
            for p in 0..2 {
                for q in 0..2 {
                    out[a][b] += cov[a][p] * j[p][q] * cov[q][b];
                }
            }
        }
    }
    (out, g)
}

/// The log-likelihood of the modal filter alone (no gradients), from the
/// modal coefficients of x: the sum of [`loglik_steps`].
pub fn loglik_modes(
    pb: &AdvDiff,
    m0_modes: &[C64],
    xm: &[Vec<C64>],
    zeta: [f64; 2],
    sigma_x2: f64,
) -> f64 {
    loglik_steps(pb, m0_modes, xm, zeta, sigma_x2).iter().sum()
}
