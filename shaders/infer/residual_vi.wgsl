// Residual-based inversion (methods.md B8): the negative log-likelihood of
// one sample x = (xi, v) of q over the latent field's coefficients and the
// solution, and its gradient, for the joint posterior
//   p(xi, u | y) ~ p(y | u) p(r_hat = 0 | u, z(xi)) p(u) p(xi),
// with u = gamma A0^{-1} v (A0 the kappa = 1 operator, applied by sine
// transforms; a fixed linear map, so a Gaussian q over (xi, v) is a
// Gaussian over (xi, u), and v ~ N(0, I) is p(u), a weak smoothness prior).
// Assembled after common/op_q1 (darcy2d); poisson1d's tridiagonal operator
// is written out here. P.kl_linear = 1 selects poisson1d (load b = kl_scale
// z, A independent of xi), 0 darcy2d (kappa = exp(z), b = h^2).
//
//   nll = |A u - b|^2 / (2 sigma_r^2) + |y - P u|^2 / (2 sigma_n^2)
//         (- |v|^2 / 2 with a flat p(u): the KL to N(0, I) that the VI
//         kernels add for v is cancelled, so the limit sigma_r -> 0 is the
//         exact-forward posterior)
//
// Bindings: 0 params (n, nunk, ncoef, batch, d, inv_h, kl_linear, kl_scale,
// nsens, noise_precision = 1 / sigma_n^2), 1 J, 2 basis (d x ncoef),
// 3 spec (nunk: gamma / lambda of A0 per sine mode), 4 dst (m x m sine
// matrix, m = n - 1), 5 sensors (unknown indices), 6 data (nsens),
// 7 xs (B x (d + nunk) samples), 8 gxs (B x (d + nunk), the gradient),
// 9 nll (B), 10 work (B x (ncoef + 5 nunk)).

// The sizes are repeated here, in a storage buffer, for the loop bounds:
// lavapipe inlines uniform values into the shader and then unrolls the
// constant-bound loops of the sine transforms (a 300x slower kernel and
// gigabytes of compiler memory at n = 32, measured).
struct JointParams {
    sigma_inv2: f32, // 1 / sigma_r^2
    dim: u32,        // d + nunk
    flat_u: u32,     // 1: p(u) flat (the N(0, I) term of v that q's KL adds is cancelled here)
    m: u32,          // n - 1
    nunk: u32,
    ncoef: u32,
    d: u32,
    nsens: u32,
}

@group(0) @binding(1) var<storage, read> J: JointParams;
@group(0) @binding(2) var<storage, read> basis: array<f32>;
@group(0) @binding(3) var<storage, read> spec: array<f32>;
@group(0) @binding(4) var<storage, read> dst: array<f32>;
@group(0) @binding(5) var<storage, read> sensors: array<u32>;
@group(0) @binding(6) var<storage, read> data: array<f32>;
@group(0) @binding(7) var<storage, read> xs: array<f32>;
@group(0) @binding(8) var<storage, read_write> gxs: array<f32>;
@group(0) @binding(9) var<storage, read_write> nll: array<f32>;
@group(0) @binding(10) var<storage, read_write> work: array<f32>;

// Per-sample scratch: [coef (ncoef) | u | r | gu | t1 | t2] (nunk each).
fn jw_base(b: u32) -> u32 {
    return b * (J.ncoef + 5u * J.nunk);
}

fn coef_at(sys: u32, cell: u32) -> f32 {
    return work[jw_base(sys) + cell];
}

fn vec_at(base: u32, k: u32) -> f32 {
    return work[base + k];
}

// poisson1d's A v = (1/h) tridiag(-1, 2, -1) v.
fn p1_apply(base: u32, k: u32) -> f32 {
    var left = 0.0;
    var right = 0.0;
    if (k > 0u) {
        left = work[base + k - 1u];
    }
    if (k + 1u < J.nunk) {
        right = work[base + k + 1u];
    }
    return (2.0 * work[base + k] - left - right) * P.inv_h;
}

fn apply_a(b: u32, base: u32, k: u32) -> f32 {
    if (P.kl_linear == 1u) {
        return p1_apply(base, k);
    }
    return op_apply(b, base, k);
}

// out = gamma A0^{-1} src: sine transform, scale by spec, sine transform
// (2-D: two passes each way; 1-D: one). t1, t2 are scratch planes.
fn joint_t(src: u32, out: u32, t1: u32, t2: u32, lid: u32) {
    let m = J.m;
    if (P.kl_linear == 1u) {
        for (var k = lid; k < m; k += WG) {
            var acc = 0.0;
            for (var i = 0u; i < m; i++) {
                acc += dst[i * m + k] * work[src + i];
            }
            work[t1 + k] = acc * spec[k];
        }
        storageBarrier();
        for (var k = lid; k < m; k += WG) {
            var acc = 0.0;
            for (var p = 0u; p < m; p++) {
                acc += dst[k * m + p] * work[t1 + p];
            }
            work[out + k] = acc;
        }
        storageBarrier();
        return;
    }
    // Along x, then along y (with the spectral scale), then back.
    for (var k = lid; k < J.nunk; k += WG) {
        let j = k / m;
        let p = k % m;
        var acc = 0.0;
        for (var i = 0u; i < m; i++) {
            acc += dst[i * m + p] * work[src + j * m + i];
        }
        work[t1 + k] = acc;
    }
    storageBarrier();
    for (var k = lid; k < J.nunk; k += WG) {
        let q = k / m;
        let p = k % m;
        var acc = 0.0;
        for (var j = 0u; j < m; j++) {
            acc += dst[j * m + q] * work[t1 + j * m + p];
        }
        work[t2 + k] = acc * spec[k];
    }
    storageBarrier();
    for (var k = lid; k < J.nunk; k += WG) {
        let q = k / m;
        let i = k % m;
        var acc = 0.0;
        for (var p = 0u; p < m; p++) {
            acc += dst[i * m + p] * work[t2 + q * m + p];
        }
        work[t1 + k] = acc;
    }
    storageBarrier();
    for (var k = lid; k < J.nunk; k += WG) {
        let j = k / m;
        let i = k % m;
        var acc = 0.0;
        for (var q = 0u; q < m; q++) {
            acc += dst[j * m + q] * work[t1 + q * m + i];
        }
        work[out + k] = acc;
    }
    storageBarrier();
}

// One workgroup per sample. Dispatch (B, 1, 1).
@compute @workgroup_size(WG)
fn residual_joint(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x;
    let nu = J.nunk;
    let nc = J.ncoef;
    let dim = J.dim;
    let xb = b * dim;
    let wb = jw_base(b);
    let cf = wb;
    let up = wb + nc;
    let rp = up + nu;
    let gp = rp + nu;
    let t1 = gp + nu;
    let t2 = t1 + nu;
    let h2 = 1.0 / (P.inv_h * P.inv_h);
    // The coefficient (darcy2d: kappa) or the load (poisson1d) of xi.
    for (var c = lid; c < nc; c += WG) {
        var z = 0.0;
        for (var k = 0u; k < J.d; k++) {
            z += xs[xb + k] * basis[k * nc + c];
        }
        if (P.kl_linear == 1u) {
            work[cf + c] = P.kl_scale * z;
        } else {
            work[cf + c] = exp(z);
        }
    }
    // v into the r plane (free until the residual), then u = T v.
    for (var k = lid; k < nu; k += WG) {
        work[rp + k] = xs[xb + J.d + k];
    }
    storageBarrier();
    joint_t(rp, up, t1, t2, lid);
    var acc = 0.0;
    for (var k = lid; k < nu; k += WG) {
        var load = h2;
        if (P.kl_linear == 1u) {
            load = work[cf + k];
        }
        let r = apply_a(b, up, k) - load;
        work[rp + k] = r * J.sigma_inv2;
        acc += 0.5 * r * r * J.sigma_inv2;
    }
    storageBarrier();
    // gu = A (r / sigma_r^2) - P^T (y - P u) / sigma_n^2.
    for (var k = lid; k < nu; k += WG) {
        work[gp + k] = apply_a(b, rp, k);
    }
    storageBarrier();
    for (var s = lid; s < J.nsens; s += WG) {
        let k = sensors[s];
        let e = data[s] - work[up + k];
        work[gp + k] -= P.noise_precision * e;
        acc += 0.5 * P.noise_precision * e * e;
    }
    storageBarrier();
    // The gradient in v: T^T gu = T gu (T is symmetric); into the u plane's
    // scratch (u is still needed for xi's gradient, so t1 / t2 and then gxs).
    joint_t(gp, gp, t1, t2, lid);
    for (var k = lid; k < nu; k += WG) {
        var g = work[gp + k];
        if (J.flat_u == 1u) {
            let v = xs[xb + J.d + k];
            g -= v;
            acc -= 0.5 * v * v;
        }
        gxs[xb + J.d + k] = g;
    }
    // xi: darcy2d, d/dz_c of |A u - b|^2 / (2 sigma_r^2) is kappa_c
    // (r / sigma_r^2)_c^T K u_c / 6 (the adjoint-gradient form), one cell
    // per invocation into the scratch planes t1..t2 (2 nunk >= ncoef), then
    // pulled back by the basis. poisson1d: dr/dxi_k = -kl_scale basis_k.
    if (P.kl_linear == 0u) {
        for (var c = lid; c < nc; c += WG) {
            let i = i32(c % P.n);
            let j = i32(c / P.n);
            let u0 = q1_node(up, i, j);
            let u1 = q1_node(up, i + 1, j);
            let u2 = q1_node(up, i + 1, j + 1);
            let u3 = q1_node(up, i, j + 1);
            let l0 = q1_node(rp, i, j);
            let l1 = q1_node(rp, i + 1, j);
            let l2 = q1_node(rp, i + 1, j + 1);
            let l3 = q1_node(rp, i, j + 1);
            let q = l0 * (4.0 * u0 - u1 - 2.0 * u2 - u3)
                + l1 * (-u0 + 4.0 * u1 - u2 - 2.0 * u3)
                + l2 * (-2.0 * u0 - u1 + 4.0 * u2 - u3)
                + l3 * (-u0 - 2.0 * u1 - u2 + 4.0 * u3);
            work[t1 + c] = work[cf + c] * q * (1.0 / 6.0);
        }
    } else {
        for (var c = lid; c < nc; c += WG) {
            work[t1 + c] = -P.kl_scale * work[rp + c];
        }
    }
    storageBarrier();
    for (var k = lid; k < J.d; k += WG) {
        var g = 0.0;
        for (var c = 0u; c < nc; c++) {
            g += basis[k * nc + c] * work[t1 + c];
        }
        gxs[xb + k] = g;
    }
    let tot = wg_sum(acc, lid);
    if (lid == 0u) {
        nll[b] = tot;
    }
}
