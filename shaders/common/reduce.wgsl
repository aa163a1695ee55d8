// Workgroup tree reductions (WG = 256 invocations). The result is returned
// through workgroupUniformLoad so callers may branch on it and still reach
// barriers in uniform control flow.

var<workgroup> red2: array<vec2<f32>, 256>;
var<workgroup> red2_out: vec2<f32>;

// Sum of `v` over the workgroup; every invocation gets the same value.
fn wg_sum2(v: vec2<f32>, lid: u32) -> vec2<f32> {
    red2[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red2[lid] = red2[lid] + red2[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        red2_out = red2[0];
    }
    let r = workgroupUniformLoad(&red2_out);
    // The next call overwrites red2/red2_out: nobody may still be reading.
    workgroupBarrier();
    return r;
}

fn wg_sum(v: f32, lid: u32) -> f32 {
    return wg_sum2(vec2<f32>(v, 0.0), lid).x;
}
