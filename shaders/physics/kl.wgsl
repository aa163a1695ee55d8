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

// z[b, c] = sum_k xi[b, k] basis[k, c]; kappa_or_load = exp(z) (darcy2d's
// coefficient kappa) or, with P.kl_linear, kl_scale * z (poisson1d's load h f).
// Dispatch (ceil(ncoef / WG), B, 1).
@compute @workgroup_size(WG)
fn kl_map(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let b = gid.y;
    if (c >= P.ncoef || b >= P.batch) {
        return;
    }
    var acc = 0.0;
    for (var k = 0u; k < P.d; k++) {
        acc += xi[b * P.d + k] * basis[k * P.ncoef + c];
    }
    z[b * P.ncoef + c] = acc;
    if (P.kl_linear == 0u) {
        kappa_or_load[b * P.ncoef + c] = exp(acc);
    } else {
        kappa_or_load[b * P.ncoef + c] = P.kl_scale * acc;
    }
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

// The same pullback with one invocation per output (b, k), for small ncoef:
// no barriers, which on coroutine-based drivers (lavapipe) is 10x cheaper
// than a workgroup reduction per output. Dispatch (ceil(d B / WG), 1, 1).
@compute @workgroup_size(WG)
fn kl_pullback_serial(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x;
    if (idx >= P.d * P.batch) {
        return;
    }
    let b = idx / P.d;
    let k = idx % P.d;
    let nc = P.ncoef;
    var acc = vec4<f32>(0.0);
    var c = 0u;
    for (; c + 4u <= nc; c += 4u) {
        let bb = k * nc + c;
        let gg = b * nc + c;
        acc += vec4<f32>(basis[bb], basis[bb + 1u], basis[bb + 2u], basis[bb + 3u])
            * vec4<f32>(g[gg], g[gg + 1u], g[gg + 2u], g[gg + 3u]);
    }
    var tail = 0.0;
    for (; c < nc; c++) {
        tail += basis[k * nc + c] * g[b * nc + c];
    }
    gxi[b * P.d + k] = P.kl_scale * (acc.x + acc.y + acc.z + acc.w + tail);
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
