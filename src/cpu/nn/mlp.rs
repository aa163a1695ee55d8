//! f64 mirrors of `shaders/nn/mlp.wgsl` (same names, same argument order as the
//! kernels' bindings), and a whole-network forward / backward built from
//! them for finite-difference checks.
#![allow(
    clippy::needless_range_loop,
    reason = "index loops keep the code comparable to the shaders"
)]

use crate::infer::vi::family_code::{FULL_RANK, LOW_RANK, MEAN_FIELD};
use crate::nn::mlp::{Activation, Arch, MlpParams, NPE_MAX_D, NPE_MAX_R};

const GELU_C: f64 = 0.797_884_560_802_865_4;
const GELU_A: f64 = 0.044715;
/// Index of the first row loss in the loss buffer.
pub const LOSS_ROWS: usize = 16;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn tanh_safe(x: f64) -> f64 {
    let e = (-2.0 * x.abs()).exp();
    x.signum() * (1.0 - e) / (1.0 + e)
}

/// The activation.
pub fn act_f(act: Activation, x: f64) -> f64 {
    match act {
        Activation::Identity => x,
        Activation::Tanh => tanh_safe(x),
        Activation::Relu => x.max(0.0),
        Activation::Silu => x * sigmoid(x),
        Activation::Gelu => 0.5 * x * (1.0 + tanh_safe(GELU_C * (x + GELU_A * x * x * x))),
        Activation::Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
    }
}

/// Its derivative at the pre-activation z.
pub fn act_df(act: Activation, z: f64) -> f64 {
    match act {
        Activation::Identity => 1.0,
        Activation::Tanh => {
            let t = tanh_safe(z);
            1.0 - t * t
        }
        Activation::Relu => {
            if z > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::Silu => {
            let s = sigmoid(z);
            s * (1.0 + z * (1.0 - s))
        }
        Activation::Gelu => {
            let t = tanh_safe(GELU_C * (z + GELU_A * z * z * z));
            0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * z * z)
        }
        Activation::Softplus => sigmoid(z),
    }
}

fn act_of(p: &MlpParams) -> Activation {
    Activation::from_code(p.act).unwrap_or(Activation::Identity)
}

/// C = A B [+ bias]; xc = act(C), xz = C when flags & 2 (see the kernel).
pub fn matmul(p: &MlpParams, xa: &[f64], xb: &[f64], xc: &mut [f64], xz: &mut [f64]) {
    let act = act_of(p);
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    for r in 0..m {
        for c in 0..n {
            let mut acc = 0.0;
            for l in 0..k {
                acc += xa[(p.a_off + r as u32 * p.a_rs + l as u32 * p.a_cs) as usize]
                    * xb[(p.b_off + l as u32 * p.b_rs + c as u32 * p.b_cs) as usize];
            }
            if p.flags & 1 != 0 {
                acc += xb[p.bias_off as usize + c];
            }
            let o = p.c_off as usize + r * p.c_rs as usize + c;
            if p.flags & 2 != 0 {
                xz[o] = acc;
            }
            xc[o] = act_f(act, acc);
        }
    }
}

/// Mirror of `matmul_thin`: the same product, for n <= 4.
pub fn matmul_thin(p: &MlpParams, xa: &[f64], xb: &[f64], xc: &mut [f64], xz: &mut [f64]) {
    matmul(p, xa, xb, xc, xz)
}

/// Mirror of `grad_rows`: per chunk z of `slot` rows, X^T dZ then the
/// column sums of dZ, into `xc[z (m n + n)..]`.
pub fn grad_rows(p: &MlpParams, xa: &[f64], xb: &[f64], xc: &mut [f64]) {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    let per = m * n + n;
    let chunk = p.slot as usize;
    for z in 0..k.div_ceil(chunk) {
        let rows = z * chunk..k.min((z + 1) * chunk);
        for e in 0..per {
            let mut acc = 0.0;
            for r in rows.clone() {
                let dz = |j: usize| xb[p.b_off as usize + r * p.b_rs as usize + j];
                acc += if e < m * n {
                    xa[p.a_off as usize + r * p.a_rs as usize + e / n] * dz(e % n)
                } else {
                    dz(e - m * n)
                };
            }
            xc[z * per + e] = acc;
        }
    }
}

/// Mirror of `grad_sum`: `xc[c_off + e]` = the sum over `k` chunks of
/// `xa[z m + e]`, in order.
pub fn grad_sum(p: &MlpParams, xa: &[f64], xc: &mut [f64]) {
    for e in 0..p.m as usize {
        let mut acc = 0.0;
        for z in 0..p.k as usize {
            acc += xa[z * p.m as usize + e];
        }
        xc[p.c_off as usize + e] = acc;
    }
}

/// xc *= act'(xa) elementwise over m x n.
pub fn act_backward(p: &MlpParams, xa: &[f64], xc: &mut [f64]) {
    let act = act_of(p);
    for r in 0..p.m as usize {
        for j in 0..p.n as usize {
            let o = p.c_off as usize + r * p.c_rs as usize + j;
            xc[o] *= act_df(act, xa[p.a_off as usize + r * p.a_rs as usize + j]);
        }
    }
}

/// xc[c_off + j] = sum over rows of xa (rows in order).
pub fn bias_grad(p: &MlpParams, xa: &[f64], xc: &mut [f64]) {
    for j in 0..p.n as usize {
        let mut acc = 0.0;
        for r in 0..p.m as usize {
            acc += xa[p.a_off as usize + r * p.a_rs as usize + j];
        }
        xc[p.c_off as usize + j] = acc;
    }
}

/// Mean squared error: gradient into xc, row sums of squares into xz.
pub fn loss_mse(p: &MlpParams, xa: &[f64], xb: &[f64], xc: &mut [f64], xz: &mut [f64]) {
    for r in 0..p.m as usize {
        let mut acc = 0.0;
        for j in 0..p.n as usize {
            let d = xa[p.a_off as usize + r * p.a_rs as usize + j]
                - xb[p.b_off as usize + r * p.b_rs as usize + j];
            acc += d * d;
            xc[p.c_off as usize + r * p.c_rs as usize + j] = 2.0 * d * p.scale as f64;
        }
        xz[LOSS_ROWS + r] = acc;
    }
}

/// Bernoulli NLL of a phase t in [-1, 1] with logits (p = (t + 1) / 2):
/// row sums of softplus(l) - p l into xz, (sigmoid(l) - p) scale into xc.
pub fn loss_bce(p: &MlpParams, xa: &[f64], xb: &[f64], xc: &mut [f64], xz: &mut [f64]) {
    for r in 0..p.m as usize {
        let mut acc = 0.0;
        for j in 0..p.n as usize {
            let l = xa[p.a_off as usize + r * p.a_rs as usize + j];
            let q = 0.5 * (xb[p.b_off as usize + r * p.b_rs as usize + j] + 1.0);
            acc += l.max(0.0) - q * l + (-l.abs()).exp().ln_1p();
            xc[p.c_off as usize + r * p.c_rs as usize + j] =
                (1.0 / (1.0 + (-l).exp()) - q) * p.scale as f64;
        }
        xz[LOSS_ROWS + r] = acc;
    }
}

/// Gaussian NLL with predicted log-variance (means then log-variances per row).
pub fn loss_gauss_nll(p: &MlpParams, xa: &[f64], xb: &[f64], xc: &mut [f64], xz: &mut [f64]) {
    let n = p.n as usize;
    let ln2pi = (2.0 * std::f64::consts::PI).ln();
    for r in 0..p.m as usize {
        let ya = p.a_off as usize + r * p.a_rs as usize;
        let yc = p.c_off as usize + r * p.c_rs as usize;
        let mut acc = 0.0;
        for j in 0..n {
            let mu = xa[ya + j];
            let lv = xa[ya + n + j];
            let d = xb[p.b_off as usize + r * p.b_rs as usize + j] - mu;
            let w = (-lv).exp();
            acc += lv + d * d * w + ln2pi;
            xc[yc + j] = -d * w * p.scale as f64;
            xc[yc + n + j] = 0.5 * (1.0 - d * d * w) * p.scale as f64;
        }
        xz[LOSS_ROWS + r] = 0.5 * acc;
    }
}

/// Neural posterior estimation: -log q(target) for a Gaussian head in the
/// layout of the VI family `act` (`infer::vi::family_code`), dimension
/// `n`, rank `k` (low-rank). Row r of xa is theta, row r of xb the target;
/// the row loss (with its 0.5 d log 2 pi) goes to `xz[LOSS_ROWS + r]`,
/// `scale` times its gradient to row r of xc. A non-positive Cholesky pivot,
/// a non-finite loss or sizes over `NPE_MAX_D` / `NPE_MAX_R` give a NaN
/// row loss and a zero gradient row, as in the kernel.
pub fn loss_npe(p: &MlpParams, xa: &[f64], xb: &[f64], xc: &mut [f64], xz: &mut [f64]) {
    let (d, k) = (p.n as usize, p.k as usize);
    let ln2pi = (2.0 * std::f64::consts::PI).ln();
    let s = p.scale as f64;
    let fits = d <= NPE_MAX_D;
    for r in 0..p.m as usize {
        let ya = p.a_off as usize + r * p.a_rs as usize;
        let yb = p.b_off as usize + r * p.b_rs as usize;
        let yc = p.c_off as usize + r * p.c_rs as usize;
        // With flags & 1 the gradient is added to what xc holds.
        let np_row = match p.act {
            MEAN_FIELD => 2 * d,
            FULL_RANK => d + d * d,
            LOW_RANK => 2 * d + d * k,
            _ => 0,
        };
        let before: Vec<f64> = xc[yc..yc + np_row].to_vec();
        let (np, f) = match p.act {
            MEAN_FIELD => (
                2 * d,
                fits.then(|| npe_mean_field(d, s, &xa[ya..], &xb[yb..], &mut xc[yc..])),
            ),
            FULL_RANK => (
                d + d * d,
                fits.then(|| npe_full_rank(d, s, &xa[ya..], &xb[yb..], &mut xc[yc..])),
            ),
            LOW_RANK => (
                2 * d + d * k,
                (fits && k <= NPE_MAX_R)
                    .then(|| npe_low_rank(d, k, s, &xa[ya..], &xb[yb..], &mut xc[yc..])),
            ),
            _ => (0, None),
        };
        match f {
            Some(f) if f.is_finite() => {
                xz[LOSS_ROWS + r] = f + 0.5 * d as f64 * ln2pi;
                if p.flags & 1 == 1 {
                    for (x, b) in xc[yc..yc + np].iter_mut().zip(&before) {
                        *x += b;
                    }
                }
            }
            _ => {
                xz[LOSS_ROWS + r] = f64::NAN;
                xc[yc..yc + np].fill(0.0);
            }
        }
    }
}

/// Mean-field row of [`loss_npe`] without the constant.
fn npe_mean_field(d: usize, s: f64, th: &[f64], x: &[f64], g: &mut [f64]) -> f64 {
    let mut f = 0.0;
    for i in 0..d {
        let t = th[d + i];
        let w = (-t).exp();
        let e = (x[i] - th[i]) * w;
        f += 0.5 * e * e + t;
        g[i] = -e * w * s;
        g[d + i] = (1.0 - e * e) * s;
    }
    f
}

/// Full-rank row of [`loss_npe`]: e = L^-1 (x - m), v = L^-T e.
fn npe_full_rank(d: usize, s: f64, th: &[f64], x: &[f64], g: &mut [f64]) -> f64 {
    let l = &th[d..];
    let mut e = vec![0.0; d];
    let mut v = vec![0.0; d];
    let mut f = 0.0;
    for i in 0..d {
        let mut acc = x[i] - th[i];
        for j in 0..i {
            acc -= l[i * d + j] * e[j];
        }
        let lraw = l[i * d + i];
        e[i] = acc * (-lraw).exp();
        f += 0.5 * e[i] * e[i] + lraw;
    }
    for i in (0..d).rev() {
        let mut acc = e[i];
        for j in i + 1..d {
            acc -= l[j * d + i] * v[j];
        }
        v[i] = acc * (-l[i * d + i]).exp();
    }
    for i in 0..d {
        g[i] = -v[i] * s;
        let o = d + i * d;
        for j in 0..d {
            g[o + j] = if j < i {
                -v[i] * e[j] * s
            } else if j == i {
                (1.0 - l[i * d + i].exp() * v[i] * e[i]) * s
            } else {
                0.0
            };
        }
    }
    f
}

/// y = C^-1 y for C = K K^T, K lower (k x k, row-major).
fn npe_chol_solve(kc: &[f64], k: usize, y: &mut [f64]) {
    for i in 0..k {
        let mut acc = y[i];
        for j in 0..i {
            acc -= kc[i * k + j] * y[j];
        }
        y[i] = acc / kc[i * k + i];
    }
    for i in (0..k).rev() {
        let mut acc = y[i];
        for j in i + 1..k {
            acc -= kc[j * k + i] * y[j];
        }
        y[i] = acc / kc[i * k + i];
    }
}

/// Low-rank row of [`loss_npe`], by Woodbury on C = I + W^T D^-1 W.
fn npe_low_rank(d: usize, k: usize, s: f64, th: &[f64], x: &[f64], g: &mut [f64]) -> f64 {
    let w = &th[d..d + d * k];
    let t = &th[d + d * k..2 * d + d * k];
    let mut kc = vec![0.0; k * k];
    let mut u = vec![0.0; k];
    let mut b = vec![0.0; k];
    let mut av = vec![0.0; d];
    for a in 0..k {
        kc[a * k + a] = 1.0;
    }
    for i in 0..d {
        let dinv = (-2.0 * t[i]).exp();
        let y = dinv * (x[i] - th[i]);
        av[i] = y;
        for a in 0..k {
            u[a] += w[i * k + a] * y;
            for c in 0..=a {
                kc[a * k + c] += dinv * w[i * k + a] * w[i * k + c];
            }
        }
    }
    let mut ldc = 0.0;
    for j in 0..k {
        let mut dj = kc[j * k + j];
        for q in 0..j {
            dj -= kc[j * k + q] * kc[j * k + q];
        }
        if !dj.is_finite() {
            return f64::NAN;
        }
        // Every pivot of C = I + W^T D^-1 W is >= 1 in exact arithmetic (a
        // Schur complement of I + PSD); the floor undoes f32 cancellation
        // when D is tiny, as in the kernel.
        let rj = dj.max(1.0).sqrt();
        kc[j * k + j] = rj;
        ldc += 2.0 * rj.ln();
        for i in j + 1..k {
            let mut acc = kc[i * k + j];
            for q in 0..j {
                acc -= kc[i * k + q] * kc[j * k + q];
            }
            kc[i * k + j] = acc / rj;
        }
    }
    npe_chol_solve(&kc, k, &mut u);
    let mut quad = 0.0;
    for i in 0..d {
        let wz: f64 = (0..k).map(|a| w[i * k + a] * u[a]).sum();
        let ai = av[i] - (-2.0 * t[i]).exp() * wz;
        av[i] = ai;
        quad += (x[i] - th[i]) * ai;
        for a in 0..k {
            b[a] += w[i * k + a] * ai;
        }
    }
    let mut gi = vec![0.0; k];
    for i in 0..d {
        let dinv = (-2.0 * t[i]).exp();
        let ai = av[i];
        gi.copy_from_slice(&w[i * k..(i + 1) * k]);
        npe_chol_solve(&kc, k, &mut gi);
        let mut wg = 0.0;
        for a in 0..k {
            wg += w[i * k + a] * gi[a];
            g[d + i * k + a] = (dinv * gi[a] - ai * b[a]) * s;
        }
        g[i] = -ai * s;
        g[d + d * k + i] = (1.0 - dinv * wg - (2.0 * t[i]).exp() * ai * ai) * s;
    }
    0.5 * quad + 0.5 * ldc + t.iter().sum::<f64>()
}

/// `xz[slot]` = scale * sum of the finite row losses and `xz[slot +
/// SKIPPED]` = the number of the others (both added when flags & 1).
pub fn loss_reduce(p: &MlpParams, xz: &mut [f64]) {
    let rows = &xz[LOSS_ROWS..LOSS_ROWS + p.m as usize];
    let s: f64 = rows.iter().filter(|v| v.is_finite()).sum();
    let bad = rows.iter().filter(|v| !v.is_finite()).count() as f64;
    let v = s * p.scale as f64;
    let k = p.slot as usize + crate::nn::mlp::slot::SKIPPED as usize;
    if p.flags & 1 != 0 {
        xz[p.slot as usize] += v;
        xz[k] += bad;
    } else {
        xz[p.slot as usize] = v;
        xz[k] = bad;
    }
}

/// Row r of xc = row idx[k + r] of xa (n columns).
pub fn gather_rows(p: &MlpParams, xa: &[f64], xc: &mut [f64], idx: &[u32]) {
    let n = p.n as usize;
    for r in 0..p.m as usize {
        let src = idx[p.k as usize + r] as usize;
        for j in 0..n {
            xc[p.c_off as usize + r * n + j] = xa[src * n + j];
        }
    }
}

/// Activations of a forward pass: `a[0]` is the input, `a[l + 1]` the output
/// of layer l, `z[l]` its pre-activation.
pub struct Trace {
    pub a: Vec<Vec<f64>>,
    pub z: Vec<Vec<f64>>,
}

/// Forward pass of a batch (row-major, `batch x arch.input`).
pub fn forward(arch: &Arch, params: &[f64], x: &[f64], batch: usize) -> Trace {
    let mut a = vec![x.to_vec()];
    let mut zs = Vec::new();
    for (l, p) in arch.forward_params(batch).iter().enumerate() {
        let size = batch * arch.layers[l].out;
        let mut out = vec![0.0; size];
        let mut z = vec![0.0; size];
        matmul(p, &a[l], params, &mut out, &mut z);
        a.push(out);
        zs.push(z);
    }
    Trace { a, z: zs }
}

/// Backward pass: the gradient of a loss with output gradient `dy` with
/// respect to the parameters, and to the input.
pub fn backward(
    arch: &Arch,
    params: &[f64],
    trace: &Trace,
    dy: &[f64],
    batch: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut grad = vec![0.0; arch.nparam()];
    let mut delta = dy.to_vec();
    let steps = arch.backward_params(batch);
    for l in (0..arch.layers.len()).rev() {
        let s = &steps[l];
        act_backward(&s.act, &trace.z[l], &mut delta);
        let mut dummy = vec![];
        matmul(&s.dw, &trace.a[l], &delta, &mut grad, &mut dummy);
        bias_grad(&s.db, &delta, &mut grad);
        let mut prev = vec![0.0; batch * arch.width(l)];
        matmul(&s.dx, &delta, params, &mut prev, &mut dummy);
        delta = prev;
    }
    (grad, delta)
}

/// Mirror of `fma_peak`: eight vec4 chains `s = s a + b` of `k` steps per
/// invocation, summed; `xc` holds one value per invocation.
pub fn fma_peak(p: &MlpParams, xc: &mut [f64]) {
    for (i, out) in xc.iter_mut().enumerate() {
        // The kernel's inputs are f32: round them the same way.
        let x = (i as f32 * 1e-9) as f64;
        let a = [0.999f32, 0.998, 0.997, 0.996].map(|v| (v + x as f32) as f64);
        let b = [1e-3f32, 2e-3, 3e-3, 4e-3].map(f64::from);
        let mut total = 0.0;
        for chain in 0..8 {
            let start = (x as f32 + chain as f32) as f64;
            for lane in 0..4 {
                let mut s = if chain == 0 { x } else { start };
                for _ in 0..p.k {
                    s = s * a[lane] + b[lane];
                }
                total += s;
            }
        }
        *out = total;
    }
}
