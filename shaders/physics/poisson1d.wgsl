// poisson1d kernels outside the solver: the P1 operator apply and diagonal
// (assembled after common/op_p1).
//
// Bindings: 0 params, 2 v (B x nunk), 4 y (B x nunk).

@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

fn vec_at(base: u32, k: u32) -> f32 {
    return v[base + k];
}

// y = A v. Dispatch (ceil(nunk / WG), B, 1).
@compute @workgroup_size(WG)
fn p1_apply(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k = gid.x;
    let b = gid.y;
    if (k >= P.nunk || b >= P.batch) {
        return;
    }
    y[b * P.nunk + k] = op_apply(b, b * P.nunk, k);
}

// y = diag(A). Dispatch (ceil(nunk / WG), B, 1).
@compute @workgroup_size(WG)
fn p1_diag(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k = gid.x;
    let b = gid.y;
    if (k >= P.nunk || b >= P.batch) {
        return;
    }
    y[b * P.nunk + k] = op_diag(b, k);
}
