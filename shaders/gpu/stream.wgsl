// Streaming kernels that measure the device's own memory bandwidth (the
// roofline the solver's bandwidth is compared with): a = b + s c on vec4s,
// one element per invocation or as a grid-stride loop, and a = b. The host
// runs every shape (this module at two workgroup sizes), checks every
// element of each result, and takes the best.
//
// Bindings: 0 params (nunk = number of vec4 elements, triad_scale = s), 1 b, 2 c, 3 a.

@group(0) @binding(1) var<storage, read> sb: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> sc: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> sa: array<vec4<f32>>;

// Dispatch (ceil(nunk / WG), 1, 1), one element per invocation.
@compute @workgroup_size(WG)
fn stream_triad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < P.nunk) {
        sa[i] = sb[i] + P.triad_scale * sc[i];
    }
}

// The triad over every element by a grid-stride loop: the host sizes the
// grid so that each invocation makes a few trips.
@compute @workgroup_size(WG)
fn stream_triad_grid(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let stride = groups.x * WG;
    for (var i = gid.x; i < P.nunk; i += stride) {
        sa[i] = sb[i] + P.triad_scale * sc[i];
    }
}

// a = b, one element per invocation.
@compute @workgroup_size(WG)
fn stream_copy(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < P.nunk) {
        sa[i] = sb[i];
    }
}
