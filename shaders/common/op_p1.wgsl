// P1 stiffness of poisson1d: A = (1/h) tridiag(-1, 2, -1) on the n-1 interior
// nodes, u(0) = u(1) = 0. The operator does not depend on the coefficient.
//
// The including module provides:
//   fn vec_at(base: u32, k: u32) -> f32      (entry k of the vector being applied)

fn op_apply(sys: u32, base: u32, k: u32) -> f32 {
    let m = P.n - 1u;
    var left = 0.0;
    var right = 0.0;
    if (k > 0u) {
        left = vec_at(base, k - 1u);
    }
    if (k + 1u < m) {
        right = vec_at(base, k + 1u);
    }
    return (2.0 * vec_at(base, k) - left - right) * P.inv_h;
}

fn op_diag(sys: u32, k: u32) -> f32 {
    return 2.0 * P.inv_h;
}
