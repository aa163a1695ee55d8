// Matrix-free Q1 (bilinear) stiffness operator of darcy2d:
// A(z) = sum_c kappa_c K_c, K = 1/6 [[4,-1,-2,-1],[-1,4,-1,-2],[-2,-1,4,-1],[-1,-2,-1,4]],
// boundary nodes eliminated (u = 0). Unknown k <-> node (i, j) = (k % (n-1) + 1, k / (n-1) + 1).
// Cell (i, j) has flat index j n + i.
//
// The including module provides:
//   fn coef_at(sys: u32, cell: u32) -> f32   (kappa of a cell)
//   fn vec_at(base: u32, k: u32) -> f32      (entry k of the vector being applied)

// Nodal value with the Dirichlet boundary as zero.
fn q1_node(base: u32, i: i32, j: i32) -> f32 {
    let n = i32(P.n);
    if (i <= 0 || j <= 0 || i >= n || j >= n) {
        return 0.0;
    }
    return vec_at(base, u32((j - 1) * (n - 1) + (i - 1)));
}

// (A(z) v)_k. Each of the four cells around node (i, j) contributes
// kappa/6 (4 v_ij - v_(edge x) - v_(edge y) - 2 v_(opposite)).
fn op_apply(sys: u32, base: u32, k: u32) -> f32 {
    let m = P.n - 1u;
    let iu = k % m + 1u;
    let ju = k / m + 1u;
    let i = i32(iu);
    let j = i32(ju);
    let c = q1_node(base, i, j);
    let w = q1_node(base, i - 1, j);
    let e = q1_node(base, i + 1, j);
    let s = q1_node(base, i, j - 1);
    let nn = q1_node(base, i, j + 1);
    let sw = q1_node(base, i - 1, j - 1);
    let se = q1_node(base, i + 1, j - 1);
    let nw = q1_node(base, i - 1, j + 1);
    let ne = q1_node(base, i + 1, j + 1);
    let k_sw = coef_at(sys, (ju - 1u) * P.n + iu - 1u);
    let k_se = coef_at(sys, (ju - 1u) * P.n + iu);
    let k_nw = coef_at(sys, ju * P.n + iu - 1u);
    let k_ne = coef_at(sys, ju * P.n + iu);
    let c4 = 4.0 * c;
    let acc = k_sw * (c4 - w - s - 2.0 * sw) + k_se * (c4 - e - s - 2.0 * se)
        + k_nw * (c4 - w - nn - 2.0 * nw) + k_ne * (c4 - e - nn - 2.0 * ne);
    return acc * (1.0 / 6.0);
}

// Diagonal of A(z): (4/6) times the sum of the four surrounding kappas.
fn op_diag(sys: u32, k: u32) -> f32 {
    let m = P.n - 1u;
    let iu = k % m + 1u;
    let ju = k / m + 1u;
    let sum = coef_at(sys, (ju - 1u) * P.n + iu - 1u) + coef_at(sys, (ju - 1u) * P.n + iu)
        + coef_at(sys, ju * P.n + iu - 1u) + coef_at(sys, ju * P.n + iu);
    return sum * (4.0 / 6.0);
}
