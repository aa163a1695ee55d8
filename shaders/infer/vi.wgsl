// Gaussian variational families over xi in R^d and the reparameterised
// ELBO: noise, samples, the closed-form KL and its gradient, the gradient of
// -ELBO with respect to the variational parameters, and the ELBO value.
//
// Parameters theta (one flat buffer, so Adam is one dispatch):
//   m = theta[0..d]
//   MEAN_FIELD (0):  omega = theta[d..2d], s = exp(omega)
//   FULL_RANK (1):  L = theta[d..d+d*d] row-major, lower triangle used,
//                          diagonal entries hold omega_i = log L_ii
//   LOW_RANK (2):   W = theta[d..d+d*r] row-major (d x r),
//                          omega = theta[d+d*r..2d+d*r], s = exp(omega)
// Noise per sample: e = d entries (MEAN_FIELD, FULL_RANK) or r + d (LOW_RANK: e1 | e2).
//
// Bindings: 0 params, 1 theta, 2 eps (S x e), 3 xi (S x d),
// 4 gxi (S x d, d misfit / d xi from the adjoint), 5 grad (like theta),
// 6 misfit (S), 7 scalars (S_KL, S_ELBO, S_MISFIT, then the ELBO ring at
// S_RING; read as `ElboScalars` in src/infer/vi.rs).

// Mirrors `ViParams` in src/infer/vi.rs (layout checked by tests/layout.rs).
struct ViParams {
    d: u32,
    r: u32,
    family: u32,
    samples: u32,
    step: u32,
    seed_lo: u32,
    seed_hi: u32,
    nparam: u32,
    nobs: u32,
    history: u32,   // length of the ELBO ring in scalars
    log_norm: f32,  // -0.5 nobs log(2 pi sigma^2)
    // 0: one theta shared by all samples (VI); 1: sample s has its own theta
    // at s * nparam (a batch of Gaussian heads of an MLP encoder).
    per_row: u32,
    grad_scale: f32, // vi_grad: multiplies the summed reparameterisation term (1/S for VI)
    kl_scale: f32,   // vi_kl: multiplies the KL gradient (1 for VI; beta / batch for heads)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

// A read-only storage buffer, not a uniform: lavapipe (Mesa 22.3) inlines
// uniform values that steer control flow and recompiles the shader when
// they change, and `step` changes every step (poisson1d VI: 117 -> 163
// steps/s with this binding).
@group(0) @binding(0) var<storage, read> V: ViParams;
@group(0) @binding(1) var<storage, read> theta: array<f32>;
@group(0) @binding(2) var<storage, read_write> eps: array<f32>;
@group(0) @binding(3) var<storage, read_write> xi: array<f32>;
@group(0) @binding(4) var<storage, read> gxi: array<f32>;
@group(0) @binding(5) var<storage, read_write> grad: array<f32>;
@group(0) @binding(6) var<storage, read> misfit: array<f32>;
@group(0) @binding(7) var<storage, read_write> scalars: array<f32>;

const WG: u32 = 256u;
const MAX_RANK: u32 = 32u;
// scalars layout: [0] kl, [1] elbo of the last step, [2] mean misfit, [3] unused,
// [4 ..] ELBO ring of V.history entries indexed by step % history.
const MEAN_FIELD: u32 = 0u;
const FULL_RANK: u32 = 1u;
const LOW_RANK: u32 = 2u;

const S_KL: u32 = 0u;
const S_ELBO: u32 = 1u;
const S_MISFIT: u32 = 2u;
const S_RING: u32 = 4u;
// Stream of the reparameterisation noise (rng::streams::ELBO).
const STREAM_ELBO: u32 = 3u;

fn noise_dim() -> u32 {
    if (V.family == LOW_RANK) {
        return V.r + V.d;
    }
    return V.d;
}

// eps[s, :] = normals of (seed, ELBO stream, step), block (s e + i) / 4.
// Dispatch (ceil(S e / 4 / WG), 1, 1): one Philox block per invocation.
@compute @workgroup_size(256)
fn vi_noise(@builtin(global_invocation_id) gid: vec3<u32>) {
    let total = V.samples * noise_dim();
    let block = gid.x;
    if (block * 4u >= total) {
        return;
    }
    let z = normal4(vec2<u32>(V.seed_lo, V.seed_hi), STREAM_ELBO, V.step, block);
    for (var l = 0u; l < 4u; l++) {
        let i = block * 4u + l;
        if (i < total) {
            eps[i] = z[l];
        }
    }
}

// xi[s, i] = m_i + (L eps_s)_i. Dispatch (ceil(S d / WG), 1, 1).
@compute @workgroup_size(256)
fn vi_sample(@builtin(global_invocation_id) gid: vec3<u32>) {
    let d = V.d;
    let idx = gid.x;
    if (idx >= V.samples * d) {
        return;
    }
    let s = idx / d;
    let i = idx % d;
    let e = noise_dim();
    let tb = s * V.nparam * V.per_row;
    var v = theta[tb + i];
    if (V.family == MEAN_FIELD) {
        v += exp(theta[tb + d + i]) * eps[s * e + i];
    } else if (V.family == FULL_RANK) {
        for (var j = 0u; j < i; j++) {
            v += theta[tb + d + i * d + j] * eps[s * e + j];
        }
        v += exp(theta[tb + d + i * d + i]) * eps[s * e + i];
    } else {
        let r = V.r;
        for (var j = 0u; j < r; j++) {
            v += theta[tb + d + i * r + j] * eps[s * e + j];
        }
        v += exp(theta[tb + d + d * r + i]) * eps[s * e + r + i];
    }
    xi[idx] = v;
}

// vi_kl runs as one small workgroup: on drivers that run a workgroup as
// coroutines (lavapipe) its cost grows with the invocation count (47 ms at
// 256 invocations for d = 32, measured), and d is small.
const KL_WG: u32 = 64u;

var<workgroup> red: array<f32, 64>;
var<workgroup> cmat: array<f32, 1024>; // C, then its inverse (low-rank family)
var<workgroup> kl_out: f32;

fn wg_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = KL_WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        kl_out = red[0];
    }
    let r = workgroupUniformLoad(&kl_out);
    workgroupBarrier();
    return r;
}

// KL(q || N(0, I)) into scalars[S_KL] and its gradient into grad (which the
// reparameterisation term of vi_grad then adds to), mean-field and
// full-rank families. Dispatch (1, 1, 1).
@compute @workgroup_size(64)
fn vi_kl(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let d = V.d;
    // Workgroup g handles theta row g (per_row) and writes its KL to scalars[g].
    let tb = wid.x * V.nparam * V.per_row;
    let ks = V.kl_scale;
    var acc = 0.0;
    for (var i = lid; i < d; i += KL_WG) {
        let m = theta[tb + i];
        grad[tb + i] = ks * (m);
        acc += m * m;
    }
    if (V.family == MEAN_FIELD) {
        for (var i = lid; i < d; i += KL_WG) {
            let w = theta[tb + d + i];
            let s2 = exp(2.0 * w);
            grad[tb + d + i] = ks * (s2 - 1.0);
            acc += s2 - 1.0 - 2.0 * w;
        }
    } else {
        for (var k = lid; k < d * d; k += KL_WG) {
            let i = k / d;
            let j = k % d;
            let v = theta[tb + d + k];
            if (j < i) {
                grad[tb + d + k] = ks * (v);
                acc += v * v;
            } else if (j == i) {
                let l2 = exp(2.0 * v);
                grad[tb + d + k] = ks * (l2 - 1.0);
                acc += l2 - 1.0 - 2.0 * v;
            } else {
                grad[tb + d + k] = ks * (0.0);
            }
        }
    }
    let total = wg_sum(acc, lid);
    if (lid == 0u) {
        scalars[S_KL + wid.x] = 0.5 * total;
    }
}

// The same for the low-rank family, by the matrix determinant lemma on the
// r x r capacitance C = I + W^T D^-1 W (D = diag(s^2)):
// KL = 0.5 (|W|^2 + sum s^2 + |m|^2 - d - log det C - sum log s^2),
// dKL/dW = W - D^-1 W C^-1, dKL/domega_i = s_i^2 - 1 + W_i C^-1 W_i^T / s_i^2.
// Dispatch (1, 1, 1).
@compute @workgroup_size(64)
fn vi_kl_lowrank(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let d = V.d;
    // Workgroup g handles theta row g (per_row) and writes its KL to scalars[g].
    let tb = wid.x * V.nparam * V.per_row;
    let ks = V.kl_scale;
    let r = V.r;
    let ow = d + d * r;
    var acc = 0.0;
    for (var i = lid; i < d; i += KL_WG) {
        let m = theta[tb + i];
        grad[tb + i] = ks * (m);
        acc += m * m;
    }
    for (var ab = lid; ab < r * r; ab += KL_WG) {
        let a = ab / r;
        let b = ab % r;
        var c = select(0.0, 1.0, a == b);
        for (var i = 0u; i < d; i++) {
            c += theta[tb + d + i * r + a] * theta[tb + d + i * r + b] * exp(-2.0 * theta[tb + ow + i]);
        }
        cmat[ab] = c;
    }
    workgroupBarrier();
    // Cholesky C = R R^T in place (lower), then C^-1 = R^-T R^-1, by one
    // invocation: r is small (at most MAX_RANK).
    var logdet_c = 0.0;
    if (lid == 0u) {
        for (var j = 0u; j < r; j++) {
            var dj = cmat[j * r + j];
            for (var k = 0u; k < j; k++) {
                dj -= cmat[j * r + k] * cmat[j * r + k];
            }
            let rj = sqrt(max(dj, 1e-30));
            cmat[j * r + j] = rj;
            logdet_c += 2.0 * log(rj);
            for (var i = j + 1u; i < r; i++) {
                var v = cmat[i * r + j];
                for (var k = 0u; k < j; k++) {
                    v -= cmat[i * r + k] * cmat[j * r + k];
                }
                cmat[i * r + j] = v / rj;
            }
        }
        // Invert the lower factor in place (R^-1 lower).
        for (var j = 0u; j < r; j++) {
            cmat[j * r + j] = 1.0 / cmat[j * r + j];
            for (var i = j + 1u; i < r; i++) {
                var v = 0.0;
                for (var k = j; k < i; k++) {
                    v -= cmat[i * r + k] * cmat[k * r + j];
                }
                cmat[i * r + j] = v / cmat[i * r + i];
            }
        }
        // C^-1 = R^-T R^-1 (symmetric; compute the lower part, then mirror).
        for (var i = 0u; i < r; i++) {
            for (var j = 0u; j <= i; j++) {
                var v = 0.0;
                for (var k = i; k < r; k++) {
                    v += cmat[k * r + i] * cmat[k * r + j];
                }
                // Row i (lower part, j <= i) is read later only at k >= i.
                cmat[j * r + i] = v;
            }
        }
        for (var i = 0u; i < r; i++) {
            for (var j = 0u; j < i; j++) {
                cmat[i * r + j] = cmat[j * r + i];
            }
        }
        kl_out = logdet_c;
    }
    let ldc = workgroupUniformLoad(&kl_out);
    workgroupBarrier();
    // W terms: ||W||^2; grad W = W - D^-1 W C^-1.
    for (var k = lid; k < d * r; k += KL_WG) {
        let i = k / r;
        let b = k % r;
        let wv = theta[tb + d + k];
        var wc = 0.0;
        for (var a = 0u; a < r; a++) {
            wc += theta[tb + d + i * r + a] * cmat[a * r + b];
        }
        grad[tb + d + k] = ks * (wv - exp(-2.0 * theta[tb + ow + i]) * wc);
        acc += wv * wv;
    }
    // s terms: s^2 - 1 - log s^2; grad omega = s^2 - 1 + q_i / s^2 with
    // q_i = W_i C^-1 W_i^T.
    for (var i = lid; i < d; i += KL_WG) {
        let w = theta[tb + ow + i];
        var q = 0.0;
        for (var a = 0u; a < r; a++) {
            var t = 0.0;
            for (var b = 0u; b < r; b++) {
                t += cmat[a * r + b] * theta[tb + d + i * r + b];
            }
            q += theta[tb + d + i * r + a] * t;
        }
        let s2 = exp(2.0 * w);
        grad[tb + ow + i] = ks * (s2 - 1.0 + q / s2);
        acc += s2 - 1.0 - 2.0 * w;
    }
    if (lid == 0u) {
        acc -= ldc;
    }
    let total = wg_sum(acc, lid);
    if (lid == 0u) {
        scalars[S_KL + wid.x] = 0.5 * total;
    }
}

// grad += grad_scale sum_s (d misfit_s / d xi_s) (d xi_s / d theta): the
// gradient of -E_q[log p(y | xi)] (grad_scale = 1/S). Run after vi_kl.
// With per_row, entry p of row s only sees sample s.
// Dispatch (ceil(nparam * (per_row ? S : 1) / WG), 1, 1).
@compute @workgroup_size(256)
fn vi_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let d = V.d;
    let np = V.nparam;
    var rows = 1u;
    if (V.per_row == 1u) {
        rows = V.samples;
    }
    if (gid.x >= np * rows) {
        return;
    }
    let row = gid.x / np;
    let p = gid.x % np;
    let tb = row * np;
    var s0 = 0u;
    var s1 = V.samples;
    if (V.per_row == 1u) {
        s0 = row;
        s1 = row + 1u;
    }
    let e = noise_dim();
    var acc = 0.0;
    if (p < d) {
        for (var s = s0; s < s1; s++) {
            acc += gxi[s * d + p];
        }
    } else if (V.family == MEAN_FIELD) {
        let i = p - d;
        for (var s = s0; s < s1; s++) {
            acc += gxi[s * d + i] * eps[s * e + i];
        }
        acc *= exp(theta[tb + p]);
    } else if (V.family == FULL_RANK) {
        let i = (p - d) / d;
        let j = (p - d) % d;
        if (j <= i) {
            for (var s = s0; s < s1; s++) {
                acc += gxi[s * d + i] * eps[s * e + j];
            }
            if (j == i) {
                acc *= exp(theta[tb + p]);
            }
        }
    } else {
        let r = V.r;
        if (p < d + d * r) {
            let i = (p - d) / r;
            let j = (p - d) % r;
            for (var s = s0; s < s1; s++) {
                acc += gxi[s * d + i] * eps[s * e + j];
            }
        } else {
            let i = p - d - d * r;
            for (var s = s0; s < s1; s++) {
                acc += gxi[s * d + i] * eps[s * e + r + i];
            }
            acc *= exp(theta[tb + p]);
        }
    }
    grad[tb + p] += acc * V.grad_scale;
}

// ELBO = -(1/S) sum_s misfit_s + log_norm - KL, into scalars and the ring.
// Dispatch (1, 1, 1).
@compute @workgroup_size(1)
fn vi_elbo() {
    var m = 0.0;
    for (var s = 0u; s < V.samples; s++) {
        m += misfit[s];
    }
    m /= f32(V.samples);
    let elbo = -m + V.log_norm - scalars[S_KL];
    scalars[S_MISFIT] = m;
    scalars[S_ELBO] = elbo;
    scalars[S_RING + V.step % V.history] = elbo;
}
