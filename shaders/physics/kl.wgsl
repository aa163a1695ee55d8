// Karhunen-Loeve map and its pullback (batched).
// The basis is d x ncoef, row k holding sqrt(lambda_k) phi_k at the
// coefficient points (cell centres for darcy2d, interior nodes for poisson1d).
//
// Bindings: 0 params, 1 xi (B x d), 2 basis (d x ncoef), 3 z (B x ncoef),
// 4 kappa_or_load (B x ncoef), 5 g (B x ncoef), 6 gxi (B x d).

@group(0) @binding(1) var<storage, read> xi: array<f32>;
@group(0) @binding(2) var<storage, read> basis: array<f32>;
@group(0) @binding(3) var<storage, read_write> z: array<f32>;
@group(0) @binding(4) var<storage, read_write> kappa_or_load: array<f32>;
@group(0) @binding(5) var<storage, read> g: array<f32>;
@group(0) @binding(6) var<storage, read_write> gxi: array<f32>;

// Blocking of kl_map and kl_pullback_serial: an invocation owns 4 cells
// (or modes) x 8 systems, so each loaded value feeds several FMAs: 12
// loads per 32 FMAs instead of 2 per 1 (lavapipe pays a per-lane load for
// every value: this made the KL map and its pullback 4-5x faster). Indices
// past the ends are clamped to valid memory; their results are not stored.

fn kl_store(b: u32, c0: u32, v: vec4<f32>) {
    if (b >= P.batch) {
        return;
    }
    for (var i = 0u; i < 4u; i++) {
        let c = c0 + i;
        if (c < P.ncoef) {
            z[b * P.ncoef + c] = v[i];
            if (P.kl_linear == 0u) {
                kappa_or_load[b * P.ncoef + c] = exp(v[i]);
            } else {
                kappa_or_load[b * P.ncoef + c] = P.kl_scale * v[i];
            }
        }
    }
}

// z[b, c] = sum_k xi[b, k] basis[k, c]; kappa_or_load = exp(z) (darcy2d's
// coefficient kappa) or, with P.kl_linear, kl_scale * z (poisson1d's load h f).
// Dispatch: x = ceil(ncoef / 4) cell blocks, y = ceil(B / 8) system blocks.
@compute @workgroup_size(WG)
fn kl_map(@builtin(global_invocation_id) gid: vec3<u32>) {
    let nc = P.ncoef;
    let d = P.d;
    let c0 = 4u * gid.x;
    let b0 = 8u * gid.y;
    if (c0 >= nc || b0 >= P.batch) {
        return;
    }
    let lc = nc - 1u;
    let c1 = min(c0 + 1u, lc);
    let c2 = min(c0 + 2u, lc);
    let c3 = min(c0 + 3u, lc);
    let lb = P.batch - 1u;
    let x0 = min(b0, lb) * d;
    let x1 = min(b0 + 1u, lb) * d;
    let x2 = min(b0 + 2u, lb) * d;
    let x3 = min(b0 + 3u, lb) * d;
    let x4 = min(b0 + 4u, lb) * d;
    let x5 = min(b0 + 5u, lb) * d;
    let x6 = min(b0 + 6u, lb) * d;
    let x7 = min(b0 + 7u, lb) * d;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    for (var k = 0u; k < d; k++) {
        let r = k * nc;
        let bv = vec4<f32>(basis[r + c0], basis[r + c1], basis[r + c2], basis[r + c3]);
        a0 += xi[x0 + k] * bv;
        a1 += xi[x1 + k] * bv;
        a2 += xi[x2 + k] * bv;
        a3 += xi[x3 + k] * bv;
        a4 += xi[x4 + k] * bv;
        a5 += xi[x5 + k] * bv;
        a6 += xi[x6 + k] * bv;
        a7 += xi[x7 + k] * bv;
    }
    kl_store(b0, c0, a0);
    kl_store(b0 + 1u, c0, a1);
    kl_store(b0 + 2u, c0, a2);
    kl_store(b0 + 3u, c0, a3);
    kl_store(b0 + 4u, c0, a4);
    kl_store(b0 + 5u, c0, a5);
    kl_store(b0 + 6u, c0, a6);
    kl_store(b0 + 7u, c0, a7);
}

// gxi[b, k] = kl_scale * sum_c basis[k, c] g[b, c] (the transpose of kl_map,
// pulling a gradient with respect to z back to xi).
// Dispatch (d, B, 1): one workgroup per output, tree reduction.
@compute @workgroup_size(WG)
fn kl_pullback(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = wid.x;
    let b = wid.y;
    var acc = 0.0;
    for (var c = lid; c < P.ncoef; c += WG) {
        acc += basis[k * P.ncoef + c] * g[b * P.ncoef + c];
    }
    let s = wg_sum(acc, lid);
    if (lid == 0u) {
        gxi[b * P.d + k] = P.kl_scale * s;
    }
}

fn gxi_store(b: u32, k0: u32, v: vec4<f32>) {
    if (b >= P.batch) {
        return;
    }
    for (var i = 0u; i < 4u; i++) {
        if (k0 + i < P.d) {
            gxi[b * P.d + k0 + i] = P.kl_scale * v[i];
        }
    }
}

// The same pullback without a workgroup reduction, for ncoef small enough
// for one invocation's loop (no barriers, which on coroutine-based drivers
// (lavapipe) cost more than the sum): an invocation owns 4 modes x 8
// systems and sums over the cells in order.
// Dispatch: x = ceil(d / 4) mode blocks, y = ceil(B / 8) system blocks.
@compute @workgroup_size(WG)
fn kl_pullback_serial(@builtin(global_invocation_id) gid: vec3<u32>) {
    let nc = P.ncoef;
    let k0 = 4u * gid.x;
    let b0 = 8u * gid.y;
    if (k0 >= P.d || b0 >= P.batch) {
        return;
    }
    let lk = P.d - 1u;
    let m0 = k0 * nc;
    let m1 = min(k0 + 1u, lk) * nc;
    let m2 = min(k0 + 2u, lk) * nc;
    let m3 = min(k0 + 3u, lk) * nc;
    let lb = P.batch - 1u;
    let g0 = min(b0, lb) * nc;
    let g1 = min(b0 + 1u, lb) * nc;
    let g2 = min(b0 + 2u, lb) * nc;
    let g3 = min(b0 + 3u, lb) * nc;
    let g4 = min(b0 + 4u, lb) * nc;
    let g5 = min(b0 + 5u, lb) * nc;
    let g6 = min(b0 + 6u, lb) * nc;
    let g7 = min(b0 + 7u, lb) * nc;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    for (var c = 0u; c < nc; c++) {
        let bv = vec4<f32>(basis[m0 + c], basis[m1 + c], basis[m2 + c], basis[m3 + c]);
        a0 += g[g0 + c] * bv;
        a1 += g[g1 + c] * bv;
        a2 += g[g2 + c] * bv;
        a3 += g[g3 + c] * bv;
        a4 += g[g4 + c] * bv;
        a5 += g[g5 + c] * bv;
        a6 += g[g6 + c] * bv;
        a7 += g[g7 + c] * bv;
    }
    gxi_store(b0, k0, a0);
    gxi_store(b0 + 1u, k0, a1);
    gxi_store(b0 + 2u, k0, a2);
    gxi_store(b0 + 3u, k0, a3);
    gxi_store(b0 + 4u, k0, a4);
    gxi_store(b0 + 5u, k0, a5);
    gxi_store(b0 + 6u, k0, a6);
    gxi_store(b0 + 7u, k0, a7);
}

// A deep generative prior's field (methods.md A4): xi holds the decoder's
// logits l (B x ncoef), the field is the Bernoulli phase's mean
// z = tanh(l / 2) = 2 sigmoid(l) - 1 in (-1, 1), kappa = exp(z). The logit
// is clamped so no backend's tanh meets an overflowing exp.
// Dispatch (ceil(ncoef B / WG), 1, 1).
@compute @workgroup_size(WG)
fn prior_field(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x;
    if (idx >= P.ncoef * P.batch) {
        return;
    }
    let h = 0.5 * clamp(xi[idx], -30.0, 30.0);
    let e = exp(-2.0 * abs(h));
    let zz = sign(h) * (1.0 - e) / (1.0 + e);
    z[idx] = zz;
    kappa_or_load[idx] = exp(zz);
}

// Its transpose: the gradient with respect to the logits,
// gxi = g (1 - z^2) / 2 (B x ncoef). Dispatch (ceil(ncoef B / WG), 1, 1).
@compute @workgroup_size(WG)
fn prior_field_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x;
    if (idx >= P.ncoef * P.batch) {
        return;
    }
    let zz = z[idx];
    gxi[idx] = 0.5 * g[idx] * (1.0 - zz * zz);
}
