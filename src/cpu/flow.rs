//! f64 mirrors of `shaders/infer/flow.wgsl` (same names, same argument
//! order, sums in the kernels' order), and the whole flow on the host: its
//! forward map, inverse, log-density and the loss of one step for fixed
//! noise (what the GPU's gradient is checked against by central
//! differences).

use crate::infer::flow::{FlowParams, FlowState};

fn in_a(p: &FlowParams, i: usize) -> bool {
    (i % 2) as u32 == p.parity
}

fn log_scale(p: &FlowParams, raw: f64) -> f64 {
    let s = p.s_scale as f64;
    s * (raw / s).tanh()
}

/// xin = x_k masked to the kept coordinates.
pub fn flow_mask(p: &FlowParams, xs: &[f64], xin: &mut [f64]) {
    let (n, d) = (p.samples as usize, p.d as usize);
    let base = p.layer as usize * n * d;
    for idx in 0..n * d {
        xin[idx] = if in_a(p, idx % d) {
            xs[base + idx]
        } else {
            0.0
        };
    }
}

/// x_{k+1} = T_k(x_k), ld (+)= sum_b s_b.
pub fn flow_couple(p: &FlowParams, o: &[f64], xs: &mut [f64], ld: &mut [f64]) {
    let (n, d) = (p.samples as usize, p.d as usize);
    for s in 0..n {
        let src = p.layer as usize * n * d + s * d;
        let dst = src + n * d;
        let mut acc = 0.0;
        for i in 0..d {
            let x = xs[src + i];
            if in_a(p, i) {
                xs[dst + i] = x;
            } else {
                let sc = log_scale(p, o[s * 2 * d + i]);
                xs[dst + i] = x * sc.exp() + o[s * 2 * d + d + i];
                acc += sc;
            }
        }
        if p.layer == 0 {
            ld[s] = acc;
        } else {
            ld[s] += acc;
        }
    }
}

/// The coupling's backward pass: og and the direct part of gs[k].
pub fn flow_couple_back(
    p: &FlowParams,
    o: &[f64],
    xs: &[f64],
    gs: &mut [f64],
    og: &mut [f64],
    wt_in: &[f64],
) {
    let (n, d) = (p.samples as usize, p.d as usize);
    let sc_ = p.s_scale as f64;
    for idx in 0..n * d {
        let (s, i) = (idx / d, idx % d);
        let here = p.layer as usize * n * d + idx;
        let g = gs[here + n * d];
        if in_a(p, i) {
            gs[here] = g;
            og[s * 2 * d + i] = 0.0;
            og[s * 2 * d + d + i] = 0.0;
            continue;
        }
        let th = (o[s * 2 * d + i] / sc_).tanh();
        let e = (sc_ * th).exp();
        gs[here] = g * e;
        let dsc = g * xs[here] * e - wt_in[s];
        og[s * 2 * d + i] = dsc * (1.0 - th * th);
        og[s * 2 * d + d + i] = g;
    }
}

/// gs[k] += the net's input gradient on the kept coordinates.
pub fn flow_join(p: &FlowParams, gs: &mut [f64], xin: &[f64]) {
    let (n, d) = (p.samples as usize, p.d as usize);
    for idx in 0..n * d {
        if in_a(p, idx % d) {
            gs[p.layer as usize * n * d + idx] += xin[idx];
        }
    }
}

/// Log importance weight of sample s (as the kernel's `log_weight`).
pub fn log_weight(
    p: &FlowParams,
    xs: &[f64],
    ld: &[f64],
    theta: &[f64],
    eps: &[f64],
    misfit: &[f64],
    s: usize,
) -> f64 {
    let (n, d) = (p.samples as usize, p.d as usize);
    let top = p.layers as usize * n * d + s * d;
    let mut v = p.log_norm as f64 - misfit[s] + ld[s];
    for i in 0..d {
        let (x, e) = (xs[top + i], eps[s * d + i]);
        v += 0.5 * (e * e - x * x) + theta[d + i * d + i];
    }
    v
}

/// The weights and scalars of a step (see the kernel).
#[allow(clippy::too_many_arguments, reason = "the kernel's bindings")]
pub fn flow_weights(
    p: &FlowParams,
    xs: &[f64],
    ld: &[f64],
    theta: &[f64],
    eps: &[f64],
    misfit: &[f64],
    wt: &mut [f64],
    scalars: &mut [f64],
) {
    let n = p.samples as usize;
    let beta = 1.0 - p.alpha as f64;
    let lw: Vec<f64> = (0..n)
        .map(|s| log_weight(p, xs, ld, theta, eps, misfit, s))
        .collect();
    let mean = lw.iter().sum::<f64>() / n as f64;
    let top = lw
        .iter()
        .map(|v| beta * v)
        .fold(f64::NEG_INFINITY, f64::max);
    let (mut bound, mut ess) = (mean, n as f64);
    if p.alpha == 1.0 {
        wt[..n].iter_mut().for_each(|w| *w = 1.0 / n as f64);
    } else {
        let e: Vec<f64> = lw.iter().map(|v| (beta * v - top).exp()).collect();
        let sum: f64 = e.iter().sum();
        for s in 0..n {
            wt[s] = e[s] / sum;
        }
        ess = 1.0 / wt[..n].iter().map(|w| w * w).sum::<f64>();
        if beta > 0.0 {
            bound = (top + (sum / n as f64).ln()) / beta;
        }
    }
    scalars[0] = mean;
    scalars[1] = bound;
    scalars[2] = misfit[..n].iter().sum::<f64>() / n as f64;
    scalars[3] = ess;
    scalars[4 + (p.step % p.history.max(1)) as usize] = mean;
}

/// gs[K] = w_s (gxi + xi).
pub fn flow_top(p: &FlowParams, xs: &[f64], gs: &mut [f64], wt_in: &[f64], gxi: &[f64]) {
    let (n, d) = (p.samples as usize, p.d as usize);
    for idx in 0..n * d {
        let k = p.layers as usize * n * d + idx;
        gs[k] = wt_in[idx / d] * (gxi[idx] + xs[k]);
    }
}

/// grad[log L_ii] -= 1.
pub fn flow_entropy(p: &FlowParams, grad: &mut [f64]) {
    let d = p.d as usize;
    for i in 0..d {
        grad[d + i * d + i] -= 1.0;
    }
}

/// The base's draw m + L eps (full-rank layout, log-diagonal).
pub fn base_sample(d: usize, theta: &[f64], eps: &[f64]) -> Vec<f64> {
    (0..d)
        .map(|i| {
            let mut v = theta[i];
            for j in 0..i {
                v += theta[d + i * d + j] * eps[j];
            }
            v + theta[d + i * d + i].exp() * eps[i]
        })
        .collect()
}

fn layer_st(st: &FlowState, k: usize, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let d = st.d;
    let arch = st.spec.arch(d);
    let masked: Vec<f64> = (0..d)
        .map(|i| if i % 2 == k % 2 { x[i] } else { 0.0 })
        .collect();
    let o = crate::cpu::nn::mlp::forward(&arch, &st.nets[k], &masked, 1)
        .a
        .pop()
        .unwrap_or_default();
    let sc = st.spec.s_scale;
    let s = (0..d).map(|i| sc * (o[i] / sc).tanh()).collect();
    (s, o[d..2 * d].to_vec())
}

/// The flow's map of one base point x_0: (x_K, sum of the log-determinants).
pub fn forward(st: &FlowState, x0: &[f64]) -> (Vec<f64>, f64) {
    let d = st.d;
    let mut x = x0.to_vec();
    let mut ld = 0.0;
    for k in 0..st.spec.layers {
        let (s, t) = layer_st(st, k, &x);
        for i in 0..d {
            if i % 2 != k % 2 {
                x[i] = x[i] * s[i].exp() + t[i];
                ld += s[i];
            }
        }
    }
    (x, ld)
}

/// The inverse map: (x_0, sum of the forward log-determinants at x_0).
pub fn inverse(st: &FlowState, xk: &[f64]) -> (Vec<f64>, f64) {
    let d = st.d;
    let mut x = xk.to_vec();
    let mut ld = 0.0;
    for k in (0..st.spec.layers).rev() {
        // The kept coordinates are unchanged, so s and t come from x as is.
        let (s, t) = layer_st(st, k, &x);
        for i in 0..d {
            if i % 2 != k % 2 {
                x[i] = (x[i] - t[i]) * (-s[i]).exp();
                ld += s[i];
            }
        }
    }
    (x, ld)
}

/// log q(xi): the base's density at the inverse image minus the layers'
/// log-determinants.
pub fn log_density(st: &FlowState, xi: &[f64]) -> f64 {
    let d = st.d;
    let (x0, ld) = inverse(st, xi);
    // Solve L eps = x0 - m (lower triangular, exp on the diagonal).
    let mut eps = vec![0.0; d];
    let mut logdet = 0.0;
    for i in 0..d {
        let row = &st.base[d + i * d..d + i * d + i];
        let v = x0[i] - st.base[i] - row.iter().zip(&eps).map(|(l, e)| l * e).sum::<f64>();
        let lii = st.base[d + i * d + i];
        eps[i] = v * (-lii).exp();
        logdet += lii;
    }
    let q: f64 = eps.iter().map(|e| e * e).sum();
    -0.5 * q - 0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln() - logdet - ld
}
