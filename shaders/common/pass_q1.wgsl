// The CG's operator pass for Q1: ap = A(z) p for all unknowns of system
// `sys` and the partial p^T ap of this invocation. Invocation `lid` owns
// whole grid columns i = lid + 1, lid + 1 + WG, ... and walks each one
// upwards, keeping a 3 x 3 window of p and a 2 x 2 window of kappa in
// registers: 3 new p values and 2 new kappas per node instead of 9 and 4
// (the pass is bound by memory accesses on lavapipe), and neighbouring
// invocations touch neighbouring addresses (coalesced on GPUs).
//
// The including module provides coef_at(sys, cell), vec_at(base, k) and
// store_at(idx, value).

// p at node (i, j) with the Dirichlet boundary as zero (unknowns' layout at base).
fn pw(base: u32, i: u32, j: u32) -> f32 {
    if (i == 0u || j == 0u || i >= P.n || j >= P.n) {
        return 0.0;
    }
    return vec_at(base, (j - 1u) * (P.n - 1u) + i - 1u);
}

// kappa of cell (c, r), zero outside (only ever asked for valid cells).
fn kw(sys: u32, c: u32, r: u32) -> f32 {
    return coef_at(sys, r * P.n + c);
}

fn op_pass(sys: u32, base: u32, abase: u32, lid: u32) -> f32 {
    var part = 0.0;
    for (var i = lid + 1u; i < P.n; i += WG) {
        part += op_column(sys, base, abase, i, 1u, P.n);
    }
    return part;
}

// Rows j0 .. j1 - 1 (1-based grid rows, j1 <= n) of grid column i: the
// walk of one invocation (the whole column for op_pass, a segment for the
// wide multigrid path).
fn op_column(sys: u32, base: u32, abase: u32, i: u32, j0: u32, j1: u32) -> f32 {
    let n = P.n;
    var part = 0.0;
    // Window rows j-1, j, j+1 at columns i-1, i, i+1 (row 0 is the boundary).
    var w0 = vec3<f32>(pw(base, i - 1u, j0 - 1u), pw(base, i, j0 - 1u), pw(base, i + 1u, j0 - 1u));
    var w1 = vec3<f32>(pw(base, i - 1u, j0), pw(base, i, j0), pw(base, i + 1u, j0));
    var k0 = vec2<f32>(kw(sys, i - 1u, j0 - 1u), kw(sys, i, j0 - 1u)); // cells below row j
    for (var j = j0; j < j1; j++) {
        let w2 = vec3<f32>(pw(base, i - 1u, j + 1u), pw(base, i, j + 1u), pw(base, i + 1u, j + 1u));
        let k1 = vec2<f32>(kw(sys, i - 1u, j), kw(sys, i, j));
        let c4 = 4.0 * w1.y;
        // Cells sw = (i-1, j-1), se = (i, j-1), nw = (i-1, j), ne = (i, j).
        let acc = k0.x * (c4 - w1.x - w0.y - 2.0 * w0.x)
            + k0.y * (c4 - w1.z - w0.y - 2.0 * w0.z)
            + k1.x * (c4 - w1.x - w2.y - 2.0 * w2.x)
            + k1.y * (c4 - w1.z - w2.y - 2.0 * w2.z);
        let a = acc * (1.0 / 6.0);
        store_at(abase + (j - 1u) * (n - 1u) + i - 1u, a);
        part += a * w1.y;
        w0 = w1;
        w1 = w2;
        k0 = k1;
    }
    return part;
}
