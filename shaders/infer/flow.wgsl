// A normalizing-flow variational family over xi (methods.md "Beyond
// Gaussian families"): a full-rank Gaussian base x_0 = m + L eps (the VI
// kernels), then K affine coupling layers x_{k+1} = T_k(x_k). Layer k keeps
// the coordinates a (i % 2 == parity) and moves the others, b:
//     x_{k+1, b} = x_{k, b} exp(s_b) + t_b,  s = S tanh(o_s / S),  t = o_t,
// with (o_s, o_t) = MLP_k(x_k masked to a), S = s_scale (a soft clamp of
// the log-scale). log|det dT_k/dx_k| = sum_b s_b.
//
// The loss of one step is the negative objective over S samples with
// per-sample weights w_s (1/S for the reverse KL; self-normalised
// importance weights w^(1 - alpha) for Renyi's alpha-divergence):
//     loss = sum_s w_s [misfit_s + |xi_s|^2 / 2 - sum_k logdet_{k,s}] - sum_i log L_ii
// (the last term: the base's entropy, whose reparameterised gradient is
// the same for every sample).
//
// Buffers: xs ((K+1) x S x d: every layer's input, layer k at k S d),
// gs (like xs: d loss / d x_k), o (S x 2d: one layer's net output),
// og (its gradient), ld (S: sum_k logdet), wt (S: weights).

// Mirrors `FlowParams` in src/infer/flow.rs (layout checked by tests/layout.rs).
struct FlowParams {
    d: u32,
    samples: u32,
    layer: u32,
    parity: u32,
    layers: u32,
    nobs: u32,
    history: u32,
    step: u32,
    s_scale: f32,
    alpha: f32,     // 1: reverse KL (uniform weights); else Renyi's alpha in [0, 1)
    log_norm: f32,  // -0.5 nobs log(2 pi sigma^2)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> F: FlowParams;
@group(0) @binding(1) var<storage, read> o: array<f32>;
@group(0) @binding(2) var<storage, read_write> xs: array<f32>;
@group(0) @binding(3) var<storage, read_write> gs: array<f32>;
@group(0) @binding(4) var<storage, read_write> ld: array<f32>;
@group(0) @binding(5) var<storage, read_write> og: array<f32>;
@group(0) @binding(6) var<storage, read> wt_in: array<f32>;
@group(0) @binding(7) var<storage, read_write> xin: array<f32>;

fn in_a(i: u32) -> bool {
    return (i % 2u) == F.parity;
}

fn log_scale(raw: f32) -> f32 {
    return F.s_scale * tanh(raw / F.s_scale);
}

// xin[s, i] = x_k[s, i] for i in a, else 0 (the layer net's input).
// Dispatch (ceil(S d / WG), 1, 1).
@compute @workgroup_size(256)
fn flow_mask(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x;
    if (idx >= F.samples * F.d) {
        return;
    }
    let i = idx % F.d;
    var v = 0.0;
    if (in_a(i)) {
        v = xs[F.layer * F.samples * F.d + idx];
    }
    xin[idx] = v;
}

// x_{k+1} = T_k(x_k) and ld[s] (+)= sum_b s_b (layer 0 writes, others add).
// One invocation per sample (its logdet sums in order). Dispatch (ceil(S / WG), 1, 1).
@compute @workgroup_size(256)
fn flow_couple(@builtin(global_invocation_id) gid: vec3<u32>) {
    let s = gid.x;
    if (s >= F.samples) {
        return;
    }
    let d = F.d;
    let src = F.layer * F.samples * d + s * d;
    let dst = src + F.samples * d;
    var acc = 0.0;
    for (var i = 0u; i < d; i++) {
        let x = xs[src + i];
        if (in_a(i)) {
            xs[dst + i] = x;
        } else {
            let sc = log_scale(o[s * 2u * d + i]);
            xs[dst + i] = x * exp(sc) + o[s * 2u * d + d + i];
            acc += sc;
        }
    }
    if (F.layer == 0u) {
        ld[s] = acc;
    } else {
        ld[s] += acc;
    }
}

// The backward pass of T_k from gs[k + 1]: the net's output gradient og
// (d/do_s, d/do_t; zero on a) and the direct part of gs[k] (b: g exp(s);
// a: g; the net's input gradient is added by flow_join). The logdet's
// weight -w_s enters d/ds. Dispatch (ceil(S d / WG), 1, 1).
@compute @workgroup_size(256)
fn flow_couple_back(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x;
    let d = F.d;
    if (idx >= F.samples * d) {
        return;
    }
    let s = idx / d;
    let i = idx % d;
    let here = F.layer * F.samples * d + idx;
    let g = gs[here + F.samples * d];
    if (in_a(i)) {
        gs[here] = g;
        og[s * 2u * d + i] = 0.0;
        og[s * 2u * d + d + i] = 0.0;
        return;
    }
    let raw = o[s * 2u * d + i];
    let th = tanh(raw / F.s_scale);
    let sc = F.s_scale * th;
    let e = exp(sc);
    let x = xs[here];
    gs[here] = g * e;
    let dsc = g * x * e - wt_in[s];
    og[s * 2u * d + i] = dsc * (1.0 - th * th);
    og[s * 2u * d + d + i] = g;
}

// gs[k][s, i] += xin[s, i] for i in a: the net's input gradient (its dx,
// bound as xin), masked as the input was. Dispatch (ceil(S d / WG), 1, 1).
@compute @workgroup_size(256)
fn flow_join(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x;
    if (idx >= F.samples * F.d) {
        return;
    }
    if (in_a(idx % F.d)) {
        gs[F.layer * F.samples * F.d + idx] += xin[idx];
    }
}

@group(0) @binding(8) var<storage, read> theta: array<f32>;
@group(0) @binding(9) var<storage, read> eps: array<f32>;
@group(0) @binding(10) var<storage, read> misfit: array<f32>;
@group(0) @binding(11) var<storage, read> gxi: array<f32>;
@group(0) @binding(12) var<storage, read_write> wt: array<f32>;
@group(0) @binding(13) var<storage, read_write> scalars: array<f32>;
@group(0) @binding(14) var<storage, read_write> grad: array<f32>;

// scalars: [0] ELBO estimate (the mean log weight), [1] the objective's
// bound (Renyi's; the ELBO for KL), [2] mean misfit, [3] the weights'
// effective sample size, [4 ..] the ELBO ring indexed by step % history.
const S_ELBO: u32 = 0u;
const S_BOUND: u32 = 1u;
const S_MISFIT: u32 = 2u;
const S_ESS: u32 = 3u;
const S_RING: u32 = 4u;

// The log importance weight of sample s, log p(xi, y) - log q(xi):
// log_norm - misfit - |xi|^2 / 2 + |eps|^2 / 2 + sum_i log L_ii + ld.
fn log_weight(s: u32) -> f32 {
    let d = F.d;
    let top = F.layers * F.samples * d + s * d;
    var v = F.log_norm - misfit[s] + ld[s];
    for (var i = 0u; i < d; i++) {
        let x = xs[top + i];
        let e = eps[s * d + i];
        v += 0.5 * (e * e - x * x) + theta[d + i * d + i];
    }
    return v;
}

// The weights of the step and its scalars. alpha = 1: w_s = 1/S (the
// reverse KL's reparameterised gradient); else w_s proportional to
// exp((1 - alpha) log_weight_s), normalised, and the bound
// log mean exp((1 - alpha) lw) / (1 - alpha). One invocation (S is small;
// the sums run in sample order, as the mirror's).
@compute @workgroup_size(1)
fn flow_weights() {
    let n = F.samples;
    var mean = 0.0;
    var mis = 0.0;
    var top = -3.0e38;
    let beta = 1.0 - F.alpha;
    for (var s = 0u; s < n; s++) {
        let lw = log_weight(s);
        wt[s] = lw;
        mean += lw;
        mis += misfit[s];
        top = max(top, beta * lw);
    }
    mean /= f32(n);
    var bound = mean;
    var ess = f32(n);
    if (F.alpha == 1.0) {
        for (var s = 0u; s < n; s++) {
            wt[s] = 1.0 / f32(n);
        }
    } else {
        var sum = 0.0;
        for (var s = 0u; s < n; s++) {
            let v = exp(beta * wt[s] - top);
            wt[s] = v;
            sum += v;
        }
        var sq = 0.0;
        for (var s = 0u; s < n; s++) {
            wt[s] /= sum;
            sq += wt[s] * wt[s];
        }
        ess = 1.0 / sq;
        if (beta > 0.0) {
            bound = (top + log(sum / f32(n))) / beta;
        }
    }
    scalars[S_ELBO] = mean;
    scalars[S_BOUND] = bound;
    scalars[S_MISFIT] = mis / f32(n);
    scalars[S_ESS] = ess;
    scalars[S_RING + F.step % F.history] = mean;
}

// gs[K][s, i] = w_s (d misfit / d xi + xi): the loss's gradient at the
// flow's output. Dispatch (ceil(S d / WG), 1, 1).
@compute @workgroup_size(256)
fn flow_top(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x;
    if (idx >= F.samples * F.d) {
        return;
    }
    let k = F.layers * F.samples * F.d + idx;
    gs[k] = wt_in[idx / F.d] * (gxi[idx] + xs[k]);
}

// The base's entropy: d(-sum_i log L_ii) / d(log L_ii) = -1, added to the
// base's gradient after the VI kernels wrote it. Dispatch (ceil(d / WG), 1, 1).
@compute @workgroup_size(256)
fn flow_entropy(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= F.d) {
        return;
    }
    grad[F.d + i * F.d + i] -= 1.0;
}
