// darcy2d kernels outside the solver: the Q1 operator apply and diagonal
// (assembled after common/op_q1) and the adjoint gradient.
//
// Bindings: 0 params, 1 coef (B x ncoef, kappa), 2 v (B x nunk),
// 3 w (B x nunk), 4 y (B x nunk), 5 g (B x ncoef).

@group(0) @binding(1) var<storage, read> coef: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> g: array<f32>;

fn coef_at(sys: u32, cell: u32) -> f32 {
    return coef[sys * P.ncoef + cell];
}

fn vec_at(base: u32, k: u32) -> f32 {
    return v[base + k];
}

// y = A(z) v. Dispatch (ceil(nunk / WG), B, 1).
@compute @workgroup_size(WG)
fn q1_apply(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k = gid.x;
    let b = gid.y;
    if (k >= P.nunk || b >= P.batch) {
        return;
    }
    y[b * P.nunk + k] = op_apply(b, b * P.nunk, k);
}

// y = diag(A(z)). Dispatch (ceil(nunk / WG), B, 1).
@compute @workgroup_size(WG)
fn q1_diag(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k = gid.x;
    let b = gid.y;
    if (k >= P.nunk || b >= P.batch) {
        return;
    }
    y[b * P.nunk + k] = op_diag(b, k);
}

// Node value of w with the Dirichlet boundary as zero.
fn w_node(base: u32, i: u32, j: u32) -> f32 {
    if (i == 0u || j == 0u || i >= P.n || j >= P.n) {
        return 0.0;
    }
    return w[base + (j - 1u) * (P.n - 1u) + i - 1u];
}

// g_c = kappa_c lambda_c^T K u_c with u = v and lambda = w: the derivative of
// lambda^T A(z) u with respect to z_c. Dispatch (ceil(ncoef / WG), B, 1).
@compute @workgroup_size(WG)
fn q1_adjoint_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let b = gid.y;
    if (c >= P.ncoef || b >= P.batch) {
        return;
    }
    let i = c % P.n;
    let j = c / P.n;
    let base = b * P.nunk;
    // Local nodes in the order (i,j), (i+1,j), (i+1,j+1), (i,j+1).
    let u0 = q1_node(base, i32(i), i32(j));
    let u1 = q1_node(base, i32(i) + 1, i32(j));
    let u2 = q1_node(base, i32(i) + 1, i32(j) + 1);
    let u3 = q1_node(base, i32(i), i32(j) + 1);
    let l0 = w_node(base, i, j);
    let l1 = w_node(base, i + 1u, j);
    let l2 = w_node(base, i + 1u, j + 1u);
    let l3 = w_node(base, i, j + 1u);
    let ku0 = 4.0 * u0 - u1 - 2.0 * u2 - u3;
    let ku1 = -u0 + 4.0 * u1 - u2 - 2.0 * u3;
    let ku2 = -2.0 * u0 - u1 + 4.0 * u2 - u3;
    let ku3 = -u0 - 2.0 * u1 - u2 + 4.0 * u3;
    let q = l0 * ku0 + l1 * ku1 + l2 * ku2 + l3 * ku3;
    g[b * P.ncoef + c] = coef_at(b, c) * q * (1.0 / 6.0);
}
