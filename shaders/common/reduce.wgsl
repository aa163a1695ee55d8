// Workgroup sum reductions with three barriers: WG partials -> WG_COLS
// (each of WG_COLS invocations adds a strided column) -> 1. A tree over
// 256 would take nine; on drivers that run a workgroup as coroutines
// (lavapipe) every barrier is a full switch of all invocations, and the
// solver's per-iteration cost is dominated by them for small systems.
// The summation order is fixed, so results are deterministic.
// The result comes back through workgroupUniformLoad so callers may branch
// on it and still reach barriers in uniform control flow.

var<workgroup> red2: array<vec2<f32>, WG>;
var<workgroup> red16: array<vec2<f32>, WG_COLS>;
var<workgroup> red2_out: vec2<f32>;

// Sum of `v` over the workgroup; every invocation gets the same value.
// Back-to-back calls are safe: each buffer is rewritten only after a
// barrier that all of its previous readers have passed.
fn wg_sum2(v: vec2<f32>, lid: u32) -> vec2<f32> {
    red2[lid] = v;
    workgroupBarrier();
    if (lid < WG_COLS) {
        var acc = vec2<f32>(0.0, 0.0);
        for (var k = 0u; k < WG_COLS; k++) {
            acc += red2[k * WG_COLS + lid];
        }
        red16[lid] = acc;
    }
    workgroupBarrier();
    if (lid == 0u) {
        var acc = vec2<f32>(0.0, 0.0);
        for (var k = 0u; k < WG_COLS; k++) {
            acc += red16[k];
        }
        red2_out = acc;
    }
    return workgroupUniformLoad(&red2_out);
}

fn wg_sum(v: f32, lid: u32) -> f32 {
    return wg_sum2(vec2<f32>(v, 0.0), lid).x;
}
