//! f64 mirrors of `shaders/infer/vi.wgsl` and `shaders/infer/adam.wgsl` (same names,
//! same argument order as the kernels' bindings).
#![allow(
    clippy::needless_range_loop,
    reason = "index loops keep the code comparable to the shaders"
)]

use crate::infer::adam::AdamParams;
use crate::infer::vi::family_code::{FULL_RANK, LOW_RANK, MEAN_FIELD};
use crate::infer::vi::{TolParams, ViParams};

/// Mirror of `cg_tol_noise` (shaders/infer/cg_tol.wgsl): the tolerance
/// asked of the next solves from the misfit gradients `gxi` (S x d); the
/// GPU also writes it into every CgState's `tol_next` and `scalars[3]`.
pub fn cg_tol_noise(t: &TolParams, gxi: &[f64]) -> f64 {
    let (s, d) = (t.samples as usize, t.d as usize);
    let (mut dev, mut sq) = (0.0, 0.0);
    for j in 0..d {
        let m = (0..s).map(|b| gxi[b * d + j]).sum::<f64>() / s as f64;
        for b in 0..s {
            let g = gxi[b * d + j];
            dev += (g - m) * (g - m);
            sq += g * g;
        }
    }
    let mean_sq = sq / s as f64;
    let mut tol = t.tol_min as f64;
    if s > 1 && mean_sq > 0.0 {
        let rel = (dev / (s as f64 - 1.0) / s as f64 / mean_sq).sqrt();
        tol = (t.factor as f64 * t.scale as f64 * rel).clamp(t.tol_min as f64, t.tol_max as f64);
    }
    if tol.is_nan() {
        tol = t.tol_min as f64;
    }
    tol
}

/// Noise entries per sample.
pub fn noise_dim(v: &ViParams) -> usize {
    if v.family == LOW_RANK {
        (v.r + v.d) as usize
    } else {
        v.d as usize
    }
}

/// eps = normals of (seed, ELBO stream, step).
pub fn vi_noise(v: &ViParams, eps: &mut [f64]) {
    let total = v.samples as usize * noise_dim(v);
    let seed = v.seed_lo as u64 | ((v.seed_hi as u64) << 32);
    let z = crate::rng::normals(seed, crate::rng::streams::ELBO, v.step, total);
    eps[..total].copy_from_slice(&z);
}

/// xi[s, i] = m_i + (L eps_s)_i (theta of row s when `per_row`).
pub fn vi_sample(v: &ViParams, theta: &[f64], eps: &[f64], xi: &mut [f64]) {
    let (d, r) = (v.d as usize, v.r as usize);
    let e = noise_dim(v);
    for s in 0..v.samples as usize {
        let theta = &theta[s * v.nparam as usize * v.per_row as usize..];
        for i in 0..d {
            let mut val = theta[i];
            match v.family {
                MEAN_FIELD => val += theta[d + i].exp() * eps[s * e + i],
                FULL_RANK => {
                    for j in 0..i {
                        val += theta[d + i * d + j] * eps[s * e + j];
                    }
                    val += theta[d + i * d + i].exp() * eps[s * e + i];
                }
                _ => {
                    for j in 0..r {
                        val += theta[d + i * r + j] * eps[s * e + j];
                    }
                    val += theta[d + d * r + i].exp() * eps[s * e + r + i];
                }
            }
            xi[s * d + i] = val;
        }
    }
}

/// KL(q || N(0, I)) into `scalars[0]` and `kl_scale` times its gradient into
/// grad; with `per_row`, one KL per theta row into `scalars[row]`.
pub fn vi_kl(v: &ViParams, theta: &[f64], grad: &mut [f64], scalars: &mut [f64]) {
    let np = v.nparam as usize;
    let rows = if v.per_row == 1 {
        v.samples as usize
    } else {
        1
    };
    for g in 0..rows {
        let t = &theta[g * np..(g + 1) * np];
        let gr = &mut grad[g * np..(g + 1) * np];
        scalars[g] = kl_one(v, t, gr);
        for x in gr.iter_mut() {
            *x *= v.kl_scale as f64;
        }
    }
}

fn kl_one(v: &ViParams, theta: &[f64], grad: &mut [f64]) -> f64 {
    let (d, r) = (v.d as usize, v.r as usize);
    let mut acc = 0.0;
    for i in 0..d {
        grad[i] = theta[i];
        acc += theta[i] * theta[i];
    }
    match v.family {
        MEAN_FIELD => {
            for i in 0..d {
                let w = theta[d + i];
                let s2 = (2.0 * w).exp();
                grad[d + i] = s2 - 1.0;
                acc += s2 - 1.0 - 2.0 * w;
            }
        }
        FULL_RANK => {
            for k in 0..d * d {
                let (i, j) = (k / d, k % d);
                let val = theta[d + k];
                if j < i {
                    grad[d + k] = val;
                    acc += val * val;
                } else if j == i {
                    let l2 = (2.0 * val).exp();
                    grad[d + k] = l2 - 1.0;
                    acc += l2 - 1.0 - 2.0 * val;
                } else {
                    grad[d + k] = 0.0;
                }
            }
        }
        _ => {
            let ow = d + d * r;
            let w = |i: usize, a: usize| theta[d + i * r + a];
            let dinv = |i: usize| (-2.0 * theta[ow + i]).exp();
            let mut c = vec![0.0; r * r];
            for a in 0..r {
                for b in 0..r {
                    let mut val = if a == b { 1.0 } else { 0.0 };
                    for i in 0..d {
                        val += w(i, a) * w(i, b) * dinv(i);
                    }
                    c[a * r + b] = val;
                }
            }
            // C = I + W^T D^-1 W >= I: SPD unless theta is not finite.
            let (cinv, logdet_c) = crate::math::linalg::spd_inverse(&c, r)
                .unwrap_or_else(|_| (vec![f64::NAN; r * r], f64::NAN));
            for k in 0..d * r {
                let (i, b) = (k / r, k % r);
                let mut wc = 0.0;
                for a in 0..r {
                    wc += w(i, a) * cinv[a * r + b];
                }
                grad[d + k] = theta[d + k] - dinv(i) * wc;
                acc += theta[d + k] * theta[d + k];
            }
            for i in 0..d {
                let om = theta[ow + i];
                let mut q = 0.0;
                for a in 0..r {
                    let mut t = 0.0;
                    for b in 0..r {
                        t += cinv[a * r + b] * w(i, b);
                    }
                    q += w(i, a) * t;
                }
                let s2 = (2.0 * om).exp();
                grad[ow + i] = s2 - 1.0 + q / s2;
                acc += s2 - 1.0 - 2.0 * om;
            }
            acc -= logdet_c;
        }
    }
    0.5 * acc
}

/// grad += grad_scale sum_s gxi_s (d xi_s / d theta); with `per_row`,
/// row s of grad only sees sample s.
pub fn vi_grad(v: &ViParams, theta: &[f64], eps: &[f64], gxi: &[f64], grad: &mut [f64]) {
    let (d, r) = (v.d as usize, v.r as usize);
    let e = noise_dim(v);
    let np = v.nparam as usize;
    let rows = if v.per_row == 1 {
        v.samples as usize
    } else {
        1
    };
    for row in 0..rows {
        let (s0, s1) = if v.per_row == 1 {
            (row, row + 1)
        } else {
            (0, v.samples as usize)
        };
        let tb = row * np;
        for p in 0..np {
            let mut acc = 0.0;
            if p < d {
                for s in s0..s1 {
                    acc += gxi[s * d + p];
                }
            } else if v.family == MEAN_FIELD {
                let i = p - d;
                for s in s0..s1 {
                    acc += gxi[s * d + i] * eps[s * e + i];
                }
                acc *= theta[tb + p].exp();
            } else if v.family == FULL_RANK {
                let (i, j) = ((p - d) / d, (p - d) % d);
                if j <= i {
                    for s in s0..s1 {
                        acc += gxi[s * d + i] * eps[s * e + j];
                    }
                    if j == i {
                        acc *= theta[tb + p].exp();
                    }
                }
            } else if p < d + d * r {
                let (i, j) = ((p - d) / r, (p - d) % r);
                for s in s0..s1 {
                    acc += gxi[s * d + i] * eps[s * e + j];
                }
            } else {
                let i = p - d - d * r;
                for s in s0..s1 {
                    acc += gxi[s * d + i] * eps[s * e + r + i];
                }
                acc *= theta[tb + p].exp();
            }
            grad[tb + p] += acc * v.grad_scale as f64;
        }
    }
}

/// ELBO = -(1/S) sum misfit + log_norm - KL.
pub fn vi_elbo(v: &ViParams, misfit: &[f64], scalars: &mut [f64]) {
    let ns = v.samples as usize;
    let m = misfit[..ns].iter().sum::<f64>() / ns as f64;
    let elbo = -m + v.log_norm as f64 - scalars[0];
    scalars[2] = m;
    scalars[1] = elbo;
    scalars[4 + (v.step % v.history) as usize] = elbo;
}

/// One Adam(W) step.
pub fn adam_step(a: &AdamParams, grad: &[f64], param: &mut [f64], m1: &mut [f64], m2: &mut [f64]) {
    adam_scaled(a, 1.0, grad, param, m1, m2);
}

fn adam_scaled(
    a: &AdamParams,
    extra: f64,
    grad: &[f64],
    param: &mut [f64],
    m1: &mut [f64],
    m2: &mut [f64],
) {
    let (b1, b2) = (a.beta1 as f64, a.beta2 as f64);
    let t = a.step as f64;
    let lr = a.lr as f64;
    for i in 0..a.n as usize {
        let g = grad[i] * a.grad_scale as f64 * extra;
        let m = b1 * m1[i] + (1.0 - b1) * g;
        let v = b2 * m2[i] + (1.0 - b2) * g * g;
        m1[i] = m;
        m2[i] = v;
        let mhat = m / (1.0 - b1.powf(t));
        let vhat = v / (1.0 - b2.powf(t));
        let mut p = param[i];
        p -= lr * a.weight_decay as f64 * p;
        p -= lr * mhat / (vhat.sqrt() + a.eps as f64);
        param[i] = p;
    }
}

/// Adam(W) with the gradient also scaled by `clip[0]` (from `grad_clip`).
pub fn adam_step_clipped(
    a: &AdamParams,
    grad: &[f64],
    param: &mut [f64],
    m1: &mut [f64],
    m2: &mut [f64],
    clip: &[f64],
) {
    adam_scaled(a, clip[0], grad, param, m1, m2);
}

/// `clip[1] = |grad_scale grad|`, `clip[0] = min(1, clip_norm / clip[1])`.
/// Same order as the kernel: 256 strided partial sums, then a tree.
pub fn grad_clip(a: &AdamParams, grad: &[f64], clip: &mut [f64]) {
    let mut part = [0.0f64; 256];
    for (l, p) in part.iter_mut().enumerate() {
        let mut i = l;
        while i < a.n as usize {
            let g = grad[i] * a.grad_scale as f64;
            *p += g * g;
            i += 256;
        }
    }
    let mut s = 128;
    while s > 0 {
        for l in 0..s {
            part[l] += part[l + s];
        }
        s >>= 1;
    }
    let norm = part[0].sqrt();
    let cn = a.clip_norm as f64;
    clip[0] = if cn > 0.0 && norm > cn {
        cn / norm
    } else {
        1.0
    };
    clip[1] = norm;
}

/// The whole ELBO step of the GPU in f64 for given noise: returns
/// (elbo, kl, gradient of -ELBO with respect to theta).
pub fn elbo_and_grad(
    pb: &crate::physics::problem::Problem,
    v: &ViParams,
    theta: &[f64],
    eps: &[f64],
    sensors: &[usize],
    y: &[f64],
) -> (f64, f64, Vec<f64>) {
    let (d, ns) = (v.d as usize, v.samples as usize);
    let mut xi = vec![0.0; ns * d];
    vi_sample(v, theta, eps, &mut xi);
    let scale = 1.0 / (pb.sigma_n * pb.sigma_n);
    let mut misfit = vec![0.0; ns];
    let mut gxi = vec![0.0; ns * d];
    for s in 0..ns {
        let (m, g) = crate::physics::reference::misfit_gradient(
            pb,
            &xi[s * d..(s + 1) * d],
            sensors,
            y,
            scale,
            1e-12,
        );
        misfit[s] = m;
        gxi[s * d..(s + 1) * d].copy_from_slice(&g);
    }
    let mut grad = vec![0.0; v.nparam as usize];
    let mut scalars = vec![0.0; 4 + v.history as usize];
    vi_kl(v, theta, &mut grad, &mut scalars);
    vi_grad(v, theta, eps, &gxi, &mut grad);
    let mut vv = *v;
    // log_norm in f64 (the f32 field is only for the GPU).
    vv.log_norm = 0.0;
    vi_elbo(&vv, &misfit, &mut scalars);
    let log_norm = -0.5 * sensors.len() as f64 * (2.0 * std::f64::consts::PI / scale).ln();
    (scalars[1] + log_norm, scalars[0], grad)
}
