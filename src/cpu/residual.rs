//! f64 mirror of shaders/physics/residual.wgsl: the residual-likelihood
//! loss of the data-free probabilistic solver and its head gradient, with
//! the kernel's name, bindings and phases.
#![allow(
    clippy::needless_range_loop,
    reason = "index loops keep the code comparable to the shader"
)]

use crate::cpu::physics::{q1_op_apply, q1_op_diag};
use crate::gpu::layout::{PdeParams, ResidualParams};

/// Offset of the per-row losses in the MLP's loss buffer.
pub const LOSS_ROWS: usize = 16;

/// (A^2)_kk: the squares of row k's stencil entries over interior neighbours.
pub fn op_row_sq(n: usize, coef: &[f64], k: usize) -> f64 {
    let m = n - 1;
    let (iu, ju) = (k % m + 1, k / m + 1);
    let k_sw = coef[(ju - 1) * n + iu - 1];
    let k_se = coef[(ju - 1) * n + iu];
    let k_nw = coef[ju * n + iu - 1];
    let k_ne = coef[ju * n + iu];
    let c = 4.0 / 6.0 * (k_sw + k_se + k_nw + k_ne);
    let mut acc = c * c;
    let (lo_i, hi_i, lo_j, hi_j) = (iu > 1, iu < m, ju > 1, ju < m);
    let w = (k_sw + k_nw) / 6.0;
    let e = (k_se + k_ne) / 6.0;
    let s = (k_sw + k_se) / 6.0;
    let nn = (k_nw + k_ne) / 6.0;
    if lo_i {
        acc += w * w;
    }
    if hi_i {
        acc += e * e;
    }
    if lo_j {
        acc += s * s;
    }
    if hi_j {
        acc += nn * nn;
    }
    let d = |k: f64| 4.0 * k * k / 36.0;
    if lo_i && lo_j {
        acc += d(k_sw);
    }
    if hi_i && lo_j {
        acc += d(k_se);
    }
    if lo_i && hi_j {
        acc += d(k_nw);
    }
    if hi_i && hi_j {
        acc += d(k_ne);
    }
    acc
}

/// d mu / d output at node k: `shape_k exp(output)` (which is also mu) with
/// `log_mean`, else `u_scale`.
pub fn res_dmean(rp: &ResidualParams, shape: &[f64], out: f64, k: usize) -> f64 {
    if rp.log_mean == 1 {
        shape[k] * out.exp()
    } else {
        rp.u_scale as f64
    }
}

/// The noise of node `k` of row `b` (lane 0 of its own Philox block).
pub fn residual_eps(rp: &ResidualParams, nunk: usize, b: usize, k: usize) -> f64 {
    let seed = rp.seed_lo as u64 | ((rp.seed_hi as u64) << 32);
    crate::rng::normal4(seed, rp.stream, rp.step, (b * nunk + k) as u32)[0]
}

/// Mirror of `residual_loss`: for every row b, the negative ELBO into
/// `losses[LOSS_ROWS + b]` and its gradient with respect to the head row
/// into `grad`; `work` holds the four planes (u or mu, r, eps, draw / u_scale).
#[allow(clippy::too_many_arguments, reason = "the kernel's bindings")]
pub fn residual_loss(
    p: &PdeParams,
    rp: &ResidualParams,
    coef: &[f64],
    head: &[f64],
    work: &mut [f64],
    grad: &mut [f64],
    losses: &mut [f64],
    shape: &[f64],
) {
    let (n, nu, nc, bs) = (
        p.n as usize,
        p.nunk as usize,
        p.ncoef as usize,
        p.batch as usize,
    );
    let plane = |q: usize| q * bs * nu;
    let h2 = 1.0 / (p.inv_h as f64 * p.inv_h as f64);
    let si2 = rp.sigma_inv2 as f64;
    let lv0 = rp.lv0 as f64;
    let gs = rp.grad_scale as f64;
    for b in 0..bs {
        let hb = b * 2 * nu;
        let ub = b * nu;
        let cf = &coef[b * nc..(b + 1) * nc];
        for k in 0..nu {
            let eps = residual_eps(rp, nu, b, k);
            let mu = res_dmean(rp, shape, head[hb + k], k)
                * if rp.log_mean == 1 { 1.0 } else { head[hb + k] };
            let sd = (0.5 * (head[hb + nu + k] + lv0)).exp();
            let draw = mu + sd * eps;
            work[plane(2) + ub + k] = eps;
            work[plane(3) + ub + k] = draw / rp.in_scale as f64;
            work[ub + k] = if rp.sampled == 1 { draw } else { mu };
        }
        let mut acc = 0.0;
        for k in 0..nu {
            let u = work[ub + k];
            let au = q1_op_apply(n, cf, &work[ub..ub + nu], k);
            let r = au - h2;
            let lv = head[hb + nu + k] + lv0;
            let s2 = lv.exp();
            let eps = work[plane(2) + ub + k];
            acc -= 0.5 * lv;
            if rp.form == 0 {
                acc += (0.5 * u * au - h2 * u) * si2;
                let glv = if rp.sampled == 1 {
                    0.5 * (r * si2 * s2.sqrt() * eps - 1.0)
                } else {
                    let akk = q1_op_diag(n, cf, k);
                    acc += 0.5 * akk * s2 * si2;
                    0.5 * (akk * s2 * si2 - 1.0)
                };
                grad[hb + k] = gs * res_dmean(rp, shape, head[hb + k], k) * r * si2;
                grad[hb + nu + k] = gs * glv;
            } else {
                work[plane(1) + ub + k] = r;
                acc += 0.5 * r * r * si2;
                if rp.sampled == 0 {
                    acc += 0.5 * op_row_sq(n, cf, k) * s2 * si2;
                }
            }
        }
        if rp.form == 1 {
            for k in 0..nu {
                let rb = plane(1) + ub;
                let g = q1_op_apply(n, cf, &work[rb..rb + nu], k) * si2;
                let s2 = (head[hb + nu + k] + lv0).exp();
                let glv = if rp.sampled == 1 {
                    0.5 * (g * s2.sqrt() * work[plane(2) + ub + k] - 1.0)
                } else {
                    0.5 * (op_row_sq(n, cf, k) * s2 * si2 - 1.0)
                };
                grad[hb + k] = gs * res_dmean(rp, shape, head[hb + k], k) * g;
                grad[hb + nu + k] = gs * glv;
            }
        }
        losses[LOSS_ROWS + b] = acc;
    }
}

/// The orthonormal sine matrix of an `(n-1)`-point grid:
/// `S[i][p] = sqrt(2/n) sin((i+1)(p+1) pi / n)` (symmetric, `S S = I`).
pub fn dst_matrix(n: usize) -> Vec<f64> {
    let m = n - 1;
    let c = (2.0 / n as f64).sqrt();
    let mut s = vec![0.0; m * m];
    for i in 0..m {
        for p in 0..m {
            s[i * m + p] = c * (((i + 1) * (p + 1)) as f64 * std::f64::consts::PI / n as f64).sin();
        }
    }
    s
}

/// Eigenvalues of darcy2d's operator at kappa = 1 on the sine modes
/// `(p, q)` (flat `q (n-1) + p`): `K1 x M1 + M1 x K1`, with the 1-D Q1
/// stiffness `(2/h)(1 - cos t)` and mass `(h/3)(2 + cos t)`, `t = (p+1) pi / n`.
pub fn laplace_eigenvalues(n: usize) -> Vec<f64> {
    let m = n - 1;
    let h = 1.0 / n as f64;
    let t = |p: usize| (p + 1) as f64 * std::f64::consts::PI / n as f64;
    let k1 = |p: usize| 2.0 / h * (1.0 - t(p).cos());
    let m1 = |p: usize| h / 3.0 * (2.0 + t(p).cos());
    let mut l = vec![0.0; m * m];
    for q in 0..m {
        for p in 0..m {
            l[q * m + p] = k1(p) * m1(q) + m1(p) * k1(q);
        }
    }
    l
}

fn dst_x(n: usize, s: &[f64], src: &[f64], out: &mut [f64]) {
    let m = n - 1;
    for k in 0..m * m {
        let (j, p) = (k / m, k % m);
        out[k] = (0..m).map(|i| s[i * m + p] * src[j * m + i]).sum();
    }
}

fn dst_y(n: usize, s: &[f64], src: &[f64], out: &mut [f64]) {
    let m = n - 1;
    for k in 0..m * m {
        let (q, i) = (k / m, k % m);
        out[k] = (0..m).map(|j| s[j * m + q] * src[j * m + i]).sum();
    }
}

/// The 2-D sine transform of one grid (coefficients to nodes and back).
pub fn dst2(n: usize, s: &[f64], x: &[f64]) -> Vec<f64> {
    let mut t = vec![0.0; x.len()];
    let mut y = vec![0.0; x.len()];
    dst_x(n, s, x, &mut t);
    dst_y(n, s, &t, &mut y);
    y
}

/// Mirror of `residual_loss_spectral` (planes 0 u_mean, 1 u_noise, 2 eps,
/// 3 draw / in_scale; the scratch planes are not mirrored).
#[allow(clippy::too_many_arguments, reason = "the kernel's bindings")]
pub fn residual_loss_spectral(
    p: &PdeParams,
    rp: &ResidualParams,
    coef: &[f64],
    head: &[f64],
    work: &mut [f64],
    grad: &mut [f64],
    losses: &mut [f64],
    dst: &[f64],
    dscale: &[f64],
) {
    let (n, nu, nc, bs) = (
        p.n as usize,
        p.nunk as usize,
        p.ncoef as usize,
        p.batch as usize,
    );
    let plane = |q: usize| q * bs * nu;
    let h2 = 1.0 / (p.inv_h as f64 * p.inv_h as f64);
    let si2 = rp.sigma_inv2 as f64;
    let (us, lv0, gs) = (rp.u_scale as f64, rp.lv0 as f64, rp.grad_scale as f64);
    for b in 0..bs {
        let hb = b * 2 * nu;
        let ub = b * nu;
        let cf = &coef[b * nc..(b + 1) * nc];
        let mut xm = vec![0.0; nu];
        let mut xn = vec![0.0; nu];
        for c in 0..nu {
            let eps = residual_eps(rp, nu, b, c);
            let sd = (0.5 * (head[hb + nu + c] + lv0)).exp();
            work[plane(2) + ub + c] = eps;
            xm[c] = dscale[c] * us * head[hb + c];
            xn[c] = dscale[c] * sd * eps;
        }
        let u = dst2(n, dst, &xm);
        let v = dst2(n, dst, &xn);
        let mut acc = 0.0;
        let mut r = vec![0.0; nu];
        let mut w = vec![0.0; nu];
        for k in 0..nu {
            work[ub + k] = u[k];
            work[plane(1) + ub + k] = v[k];
            work[plane(3) + ub + k] = (u[k] + v[k]) / rp.in_scale as f64;
            let au = q1_op_apply(n, cf, &u, k);
            let av = q1_op_apply(n, cf, &v, k);
            acc += (0.5 * u[k] * au - h2 * u[k] + 0.5 * v[k] * av) * si2;
            r[k] = au - h2;
            w[k] = av;
        }
        let gr = dst2(n, dst, &r);
        let gw = dst2(n, dst, &w);
        for c in 0..nu {
            let lv = head[hb + nu + c] + lv0;
            let sd = (0.5 * lv).exp();
            acc -= 0.5 * lv;
            grad[hb + c] = gs * us * dscale[c] * gr[c] * si2;
            grad[hb + nu + c] =
                gs * 0.5 * (dscale[c] * gw[c] * si2 * sd * work[plane(2) + ub + c] - 1.0);
        }
        losses[LOSS_ROWS + b] = acc;
    }
}

/// `gamma / lambda` per sine mode of the kappa = 1 operator (darcy2d: the
/// 2-D modes; poisson1d: `(2/h)(1 - cos t)`, t = (p+1) pi / n).
pub fn joint_spectrum(n: usize, two_d: bool, gamma: f64) -> Vec<f64> {
    if two_d {
        laplace_eigenvalues(n).iter().map(|l| gamma / l).collect()
    } else {
        let h = 1.0 / n as f64;
        (0..n - 1)
            .map(|p| {
                let t = (p + 1) as f64 * std::f64::consts::PI / n as f64;
                gamma / (2.0 / h * (1.0 - t.cos()))
            })
            .collect()
    }
}

/// `u = gamma A0^{-1} v` by sine transforms (`spec` from [`joint_spectrum`]).
pub fn joint_t(n: usize, two_d: bool, dst: &[f64], spec: &[f64], v: &[f64]) -> Vec<f64> {
    let m = n - 1;
    if two_d {
        let mut c = dst2(n, dst, v);
        for (x, s) in c.iter_mut().zip(spec) {
            *x *= s;
        }
        dst2(n, dst, &c)
    } else {
        let c: Vec<f64> = (0..m)
            .map(|p| (0..m).map(|i| dst[i * m + p] * v[i]).sum::<f64>() * spec[p])
            .collect();
        (0..m)
            .map(|k| (0..m).map(|p| dst[k * m + p] * c[p]).sum())
            .collect()
    }
}

/// Mirror of `residual_joint` (shaders/infer/residual_vi.wgsl): per sample
/// `x = (xi, v)`, `nll = |A u - b|^2 / (2 sigma_r^2) + |y - P u|^2 /
/// (2 sigma_n^2)` with `u = T v`, and its gradient in `x`.
#[allow(clippy::too_many_arguments, reason = "the kernel's bindings")]
pub fn residual_joint(
    p: &PdeParams,
    jp: &crate::gpu::layout::JointParams,
    basis: &[f64],
    spec: &[f64],
    dst: &[f64],
    sensors: &[u32],
    data: &[f64],
    xs: &[f64],
    gxs: &mut [f64],
    nll: &mut [f64],
) {
    let (n, nu, nc, d) = (
        p.n as usize,
        p.nunk as usize,
        p.ncoef as usize,
        p.d as usize,
    );
    let dim = jp.dim as usize;
    let two_d = p.kl_linear == 0;
    let si2 = jp.sigma_inv2 as f64;
    let h2 = 1.0 / (p.inv_h as f64 * p.inv_h as f64);
    let inv_h = p.inv_h as f64;
    let p1 = |v: &[f64], k: usize| {
        let l = if k > 0 { v[k - 1] } else { 0.0 };
        let r = if k + 1 < nu { v[k + 1] } else { 0.0 };
        (2.0 * v[k] - l - r) * inv_h
    };
    for b in 0..p.batch as usize {
        let x = &xs[b * dim..(b + 1) * dim];
        let cf: Vec<f64> = (0..nc)
            .map(|c| {
                let z: f64 = (0..d).map(|k| x[k] * basis[k * nc + c]).sum();
                if two_d {
                    z.exp()
                } else {
                    p.kl_scale as f64 * z
                }
            })
            .collect();
        let u = joint_t(n, two_d, dst, spec, &x[d..]);
        let apply = |v: &[f64], k: usize| {
            if two_d {
                crate::cpu::physics::q1_op_apply(n, &cf, v, k)
            } else {
                p1(v, k)
            }
        };
        let mut acc = 0.0;
        let mut rs = vec![0.0; nu];
        for k in 0..nu {
            let load = if two_d { h2 } else { cf[k] };
            let r = apply(&u, k) - load;
            rs[k] = r * si2;
            acc += 0.5 * r * r * si2;
        }
        let mut gu: Vec<f64> = (0..nu).map(|k| apply(&rs, k)).collect();
        let np = p.noise_precision as f64;
        for (s, &k) in sensors.iter().enumerate().take(p.nsens as usize) {
            let e = data[s] - u[k as usize];
            gu[k as usize] -= np * e;
            acc += 0.5 * np * e * e;
        }
        let mut gv = joint_t(n, two_d, dst, spec, &gu);
        if jp.flat_u == 1 {
            for (g, v) in gv.iter_mut().zip(&x[d..]) {
                *g -= v;
                acc -= 0.5 * v * v;
            }
        }
        gxs[b * dim + d..(b + 1) * dim].copy_from_slice(&gv);
        let gz: Vec<f64> = if two_d {
            let mut g = vec![0.0; nc];
            let mut pp = *p;
            pp.batch = 1;
            crate::cpu::physics::q1_adjoint_grad(&pp, &cf, &u, &rs, &mut g);
            g
        } else {
            rs.iter().map(|r| -(p.kl_scale as f64) * r).collect()
        };
        for k in 0..d {
            gxs[b * dim + k] = (0..nc).map(|c| basis[k * nc + c] * gz[c]).sum();
        }
        nll[b] = acc;
    }
}
