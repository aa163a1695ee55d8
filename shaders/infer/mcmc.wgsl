// MCMC in whitened coordinates of a reference Gaussian N(m, L L^T): chain
// state w (d per chain), x = m + L w. Chain c is batch slot c of the solver.
//
//   pCN (sampler 0), generalised w.r.t. the reference:
//     w' = rho w + beta eps, rho = sqrt(1 - beta^2),
//     log alpha = l(x') - l(x), l(x) = -Phi(x) - |x|^2 / 2 + |w|^2 / 2.
//   MALA (sampler 1) on logpi(x) = -Phi(x) - |x|^2 / 2 in w:
//     g_w = L^T (-dPhi/dx - x), w' = w + (h/2) g_w + sqrt(h) eps,
//     log alpha = logpi(x') - logpi(x) + log q(w | w') - log q(w' | w),
//     log q(a | b) = -|a - b - (h/2) g_w(b)|^2 / (2 h).
//
// One step: mcmc_propose, mcmc_map (x' into the solver's xi), the forward
// solve and misfit (MALA: also the adjoint and mcmc_grad), mcmc_accept.
//
// Bindings: 0 params, 1 reference [m (d) | L (d x d, row-major, lower)],
// 2 state (C x 3d: [w | g_w | x] per chain), 3 proposal (C x 2d: [w' | g_w']),
// 4 chains (C Chain), 5 xp (C x d, the solver's xi: x' = m + L w'),
// 6 gxi (C x d, dPhi/dx' from the adjoint), 7 misfit (C, Phi(x')),
// 8 forward and 9 adjoint solver states (C CgState),
// 10 samples (C x kept x (d + 1): x, then logpi(x), per kept draw).

// Mirrors `McmcParams` in src/infer/mcmc.rs (48 bytes; tests/layout.rs checks). Bound as a
// read-only storage buffer, not a uniform: lavapipe (Mesa 22.3) inlines
// uniform values that bound loops and recompiles such a shader at every
// dispatch (measured: mcmc_accept 70 ms per dispatch as a uniform, 0.12 ms
// as storage).
struct McmcParams {
    d: u32,
    chains: u32,
    sampler: u32,    // 0 pCN, 1 MALA
    mode: u32,       // 0 step; 1 initialise: accept unconditionally, count nothing
    seed_lo: u32,
    seed_hi: u32,
    warmup: u32,     // steps before the first kept draw
    thin: u32,       // keep every thin-th step after warm-up
    kept: u32,       // capacity of the sample buffer in draws per chain
    step_size: f32,  // pCN: beta in (0, 1]; MALA: h
    _pad0: u32,
    _pad1: u32,
}

// Mirrors `McmcChain` in src/infer/mcmc.rs (32 bytes; tests/layout.rs checks).
struct Chain {
    step: u32,     // MCMC steps taken (the Philox step counter)
    accepts: u32,  // accepted proposals
    kept: u32,     // draws written to the sample buffer
    failed: u32,   // proposals whose forward or adjoint solve did not converge (rejected)
    lp: f32,       // logpi(x) = -Phi(x) - |x|^2 / 2 of the current state
    phi: f32,      // Phi(x) of the current state
    _pad0: u32,
    _pad1: u32,
}

// CgState (of the solver's systems): common/cg_state.wgsl.

@group(0) @binding(0) var<storage, read> P: McmcParams;
@group(0) @binding(1) var<storage, read> refm: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<f32>;
@group(0) @binding(3) var<storage, read_write> prop: array<f32>;
@group(0) @binding(4) var<storage, read_write> chains: array<Chain>;
@group(0) @binding(5) var<storage, read_write> xp: array<f32>;
@group(0) @binding(6) var<storage, read> gxi: array<f32>;
@group(0) @binding(7) var<storage, read> misfit: array<f32>;
@group(0) @binding(8) var<storage, read> cg_fwd: array<CgState>;
@group(0) @binding(9) var<storage, read> cg_adj: array<CgState>;
@group(0) @binding(10) var<storage, read_write> samples: array<f32>;

// rng::streams::MCMC and MCMC_ACCEPT.
const STREAM_MCMC: u32 = 7u;
const STREAM_ACCEPT: u32 = 8u;

fn finite(v: f32) -> bool {
    // Exponent bits all set: inf or NaN (a bit test survives fast-math).
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

// w' from the current state: one Philox block (4 coordinates) per
// invocation, block c * ceil(d / 4) + b of (seed, MCMC stream, chain step).
// Dispatch (ceil(C ceil(d / 4) / 256), 1, 1).
@compute @workgroup_size(256)
fn mcmc_propose(@builtin(global_invocation_id) gid: vec3<u32>) {
    let d = P.d;
    let nb = (d + 3u) / 4u;
    if (gid.x >= P.chains * nb) {
        return;
    }
    let c = gid.x / nb;
    let b = gid.x % nb;
    let z = normal4(vec2<u32>(P.seed_lo, P.seed_hi), STREAM_MCMC, chains[c].step, gid.x);
    let s = P.step_size;
    let sb = c * 3u * d;
    let pb = c * 2u * d;
    for (var l = 0u; l < 4u; l++) {
        let i = 4u * b + l;
        if (i < d) {
            let w = state[sb + i];
            if (P.sampler == 0u) {
                let rho = sqrt(max(1.0 - s * s, 0.0));
                prop[pb + i] = rho * w + s * z[l];
            } else {
                prop[pb + i] = w + 0.5 * s * state[sb + d + i] + sqrt(s) * z[l];
            }
        }
    }
}

// xp[c, i] = m_i + sum_{j <= i} L_ij w'[c, j]. Dispatch (ceil(C d / 256), 1, 1).
@compute @workgroup_size(256)
fn mcmc_map(@builtin(global_invocation_id) gid: vec3<u32>) {
    let d = P.d;
    if (gid.x >= P.chains * d) {
        return;
    }
    let c = gid.x / d;
    let i = gid.x % d;
    let pb = c * 2u * d;
    var v = refm[i];
    for (var j = 0u; j <= i; j++) {
        v += refm[d + i * d + j] * prop[pb + j];
    }
    xp[gid.x] = v;
}

// g_w'[c, j] = sum_{i >= j} L_ij (-gxi[c, i] - xp[c, i]) (MALA, after the
// adjoint). Dispatch (ceil(C d / 256), 1, 1).
@compute @workgroup_size(256)
fn mcmc_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let d = P.d;
    if (gid.x >= P.chains * d) {
        return;
    }
    let c = gid.x / d;
    let j = gid.x % d;
    var v = 0.0;
    for (var i = j; i < d; i++) {
        v += refm[d + i * d + j] * (-gxi[c * d + i] - xp[c * d + i]);
    }
    prop[c * 2u * d + d + j] = v;
}

// Accept or reject the proposal of each chain, advance its step counter
// and, after warm-up every thin-th step, append x and logpi(x) to the
// sample buffer. A proposal whose solves did not converge (or whose
// log-density is not finite) is rejected and counted in `failed`.
// One invocation per chain. Dispatch (ceil(C / 64), 1, 1).
@compute @workgroup_size(64)
fn mcmc_accept(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= P.chains) {
        return;
    }
    let d = P.d;
    let sb = c * 3u * d;
    let pb = c * 2u * d;
    let h = P.step_size;
    var ch = chains[c];
    let phi = misfit[c];
    var xx = 0.0;
    var ww_new = 0.0;
    var ww_old = 0.0;
    var fwd = 0.0;
    var bwd = 0.0;
    for (var i = 0u; i < d; i++) {
        let xn = xp[c * d + i];
        let wn = prop[pb + i];
        let wo = state[sb + i];
        xx += xn * xn;
        ww_new += wn * wn;
        ww_old += wo * wo;
        if (P.sampler == 1u) {
            let a = wn - wo - 0.5 * h * state[sb + d + i];
            let r = wo - wn - 0.5 * h * prop[pb + d + i];
            fwd += a * a;
            bwd += r * r;
        }
    }
    let lp_new = -phi - 0.5 * xx;
    var ok = cg_fwd[c].status == CONVERGED && finite(lp_new);
    var la = 0.0;
    if (P.sampler == 0u) {
        la = (lp_new + 0.5 * ww_new) - (ch.lp + 0.5 * ww_old);
    } else {
        ok = ok && cg_adj[c].status == CONVERGED;
        la = lp_new - ch.lp + (fwd - bwd) / (2.0 * h);
    }
    let t = ch.step;
    let r = philox4x32(vec4<u32>(c, STREAM_ACCEPT, t, 0x70646576u), vec2<u32>(P.seed_lo, P.seed_hi));
    var accept = ok && log(to_unit(r.x)) < la;
    if (!ok) {
        ch.failed += 1u;
    }
    if (P.mode == 1u) {
        accept = true;
    } else if (accept) {
        ch.accepts += 1u;
    }
    if (accept) {
        for (var i = 0u; i < d; i++) {
            state[sb + i] = prop[pb + i];
            state[sb + d + i] = prop[pb + d + i];
            state[sb + 2u * d + i] = xp[c * d + i];
        }
        ch.lp = lp_new;
        ch.phi = phi;
    }
    if (P.mode == 0u) {
        if (t >= P.warmup && (t - P.warmup) % P.thin == P.thin - 1u) {
            let k = (t - P.warmup) / P.thin;
            if (k < P.kept) {
                let o = (c * P.kept + k) * (d + 1u);
                for (var i = 0u; i < d; i++) {
                    samples[o + i] = state[sb + 2u * d + i];
                }
                samples[o + d] = ch.lp;
                ch.kept += 1u;
            }
        }
        ch.step = t + 1u;
    }
    chains[c] = ch;
}
