// The CG tolerance of the next step from the Monte Carlo noise of this
// step's gradient (issue 11: solves only as accurate as the step needs).
//
// gxi (S x d) holds each sample's misfit gradient g_s = d misfit / d xi, the
// only Monte Carlo part of the ELBO gradient (the KL is in closed form).
// The relative standard error of their mean is
//     rel = sqrt(sum_j var_s(g_sj) / S) / sqrt(mean_s |g_s|^2),
// and the next solves are asked for
//     tol = clamp(factor * scale * rel, tol_min, tol_max)
// (scale = lr_t / lr_0 tightens it as the steps shrink). A solve error of
// relative size tol perturbs each g_s by about tol |g_s|, so with factor
// well below 1 it stays under the gradient's own sampling noise. With one
// sample, or a zero gradient, there is no noise estimate: tol_min.
// The request goes into every system's CgState.tol_next (forward and
// adjoint), which the next CG starts read; scalars[3] keeps it for the host.
//
// Mirror: cpu::infer::vi::cg_tol_noise.

// Mirrors `TolParams` in src/infer/vi.rs (layout checked by tests/layout.rs).
struct TolParams {
    samples: u32,
    d: u32,
    _pad0: u32,
    _pad1: u32,
    factor: f32,
    scale: f32,
    tol_min: f32,
    tol_max: f32,
}

@group(0) @binding(0) var<storage, read> T: TolParams;
@group(0) @binding(1) var<storage, read> gxi: array<f32>;
@group(0) @binding(2) var<storage, read_write> state_fwd: array<CgState>;
@group(0) @binding(3) var<storage, read_write> state_adj: array<CgState>;
@group(0) @binding(4) var<storage, read_write> scalars: array<f32>;

const TOL_WG: u32 = 64u;
var<workgroup> tol_red: array<vec2<f32>, TOL_WG>;

@compute @workgroup_size(64)
fn cg_tol_noise(@builtin(local_invocation_index) lid: u32) {
    let s = T.samples;
    let d = T.d;
    // (sum over samples of squared deviations, sum of squares) per coordinate.
    var acc = vec2<f32>(0.0, 0.0);
    for (var j = lid; j < d; j += TOL_WG) {
        var m = 0.0;
        for (var b = 0u; b < s; b++) {
            m += gxi[b * d + j];
        }
        m /= f32(s);
        for (var b = 0u; b < s; b++) {
            let g = gxi[b * d + j];
            acc += vec2<f32>((g - m) * (g - m), g * g);
        }
    }
    tol_red[lid] = acc;
    workgroupBarrier();
    for (var w = TOL_WG / 2u; w > 0u; w /= 2u) {
        if (lid < w) {
            tol_red[lid] += tol_red[lid + w];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let sums = tol_red[0];
        let fs = f32(s);
        let mean_sq = sums.y / fs;
        var tol = T.tol_min;
        if (s > 1u && mean_sq > 0.0) {
            let rel = sqrt(sums.x / (fs - 1.0) / fs / mean_sq);
            tol = clamp(T.factor * T.scale * rel, T.tol_min, T.tol_max);
        }
        // NaN gradients: the tight tolerance (the step reports them).
        if (!(tol == tol)) {
            tol = T.tol_min;
        }
        for (var b = 0u; b < s; b++) {
            state_fwd[b].tol_next = tol;
            state_adj[b].tol_next = tol;
        }
        scalars[3] = tol;
    }
}
