// Multigrid-preconditioned CG for darcy2d's Q1 operator, one workgroup per
// system (the algorithm of src/cpu/multigrid.rs, its f64 reference).
// Assembled after common/params, common/reduce, common/cg_state and
// common/op_q1. Same bindings as solver.wgsl; `work` is larger:
//
//   per system: r | p | ap | z (4 nu), then one block per level l:
//     stencil (9 nu_l) | dinv | x | b | t  (13 nu_l)
//     the coarsest level also: its dense Cholesky factor (nu_L^2)
//   Level 0 stays matrix-free (kappa); its stencil block holds the element
//   matrices of the coarse levels instead (see mg_setup).
//
// Levels: n, n/2, ... while the grid has more than MG_COARSEST cells per
// side, an even number of them, and the next has at least 2. Coarse
// operators are Galerkin products P^T A P (bilinear P), built from element
// matrices by `mg_cg_start` (or `mg_cg_setup`) from the current kappa; the
// V-cycle smooths with MG_SWEEPS damped-Jacobi sweeps before and after the
// coarse correction and solves the coarsest level by its Cholesky factor,
// so it is a symmetric positive definite preconditioner. Operator passes
// are column walks, other phases run over the level's nodes strided by
// invocation, with a barrier between phases.

const MG_COARSEST: u32 = 4u;
// One damped-Jacobi sweep before and after: 6 iterations to 1e-5 instead
// of 4 with two, at the same cost per solve, and 4 % more ELBO steps/s at
// the loose tolerances VI runs with (measured at n = 64 on lavapipe).
const MG_SWEEPS: u32 = 1u;
const MG_OMEGA: f32 = 0.7;
const MG_MAX_LEVELS: u32 = 12u;

@group(0) @binding(1) var<storage, read> coef: array<f32>;
@group(0) @binding(2) var<storage, read> rhs: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> work: array<f32>;
@group(0) @binding(5) var<storage, read_write> state: array<CgState>;

fn coef_at(sys: u32, cell: u32) -> f32 {
    return coef[sys * P.ncoef + cell];
}

fn vec_at(base: u32, k: u32) -> f32 {
    return work[base + k];
}

// ---- the hierarchy's shape (the same rule as Hierarchy::new) ----

fn mg_levels() -> u32 {
    var cells = P.n;
    var levels = 1u;
    while (levels < MG_MAX_LEVELS && cells > MG_COARSEST && cells % 2u == 0u && cells / 2u >= 2u) {
        cells = cells / 2u;
        levels += 1u;
    }
    return levels;
}

fn lvl_m(l: u32) -> u32 {
    return (P.n >> l) - 1u;
}

fn lvl_nu(l: u32) -> u32 {
    let m = lvl_m(l);
    return m * m;
}

fn lvl_block(l: u32, levels: u32) -> u32 {
    let nu = lvl_nu(l);
    var size = 13u * nu;
    if (l + 1u == levels) {
        size += nu * nu;
    }
    return size;
}

// Floats of `work` per system (mirrors multigrid_floats in src/physics/solver.rs).
fn mg_system_floats(levels: u32) -> u32 {
    var total = 4u * P.nunk;
    for (var l = 0u; l < levels; l++) {
        total += lvl_block(l, levels);
    }
    return total;
}

struct Lvl {
    m: u32,
    nu: u32,
    stencil: u32,
    dinv: u32,
    x: u32,
    b: u32,
    t: u32,
    chol: u32,    // coarsest level
}

fn lvl(sys: u32, l: u32, levels: u32) -> Lvl {
    var off = sys * mg_system_floats(levels) + 4u * P.nunk;
    for (var k = 0u; k < l; k++) {
        off += lvl_block(k, levels);
    }
    var v: Lvl;
    v.m = lvl_m(l);
    v.nu = v.m * v.m;
    v.stencil = off;
    let base = off + 9u * v.nu;
    v.dinv = base;
    v.x = base + v.nu;
    v.b = base + 2u * v.nu;
    v.t = base + 3u * v.nu;
    v.chol = base + 4u * v.nu;
    return v;
}

// ---- operators ----

// Entry `s` (3 (dj + 1) + di + 1) of the fine (level 0) stencil at unknown k,
// from the four surrounding cells' kappa (the Q1 element matrices).
fn fine_entry(sys: u32, k: u32, s: u32) -> f32 {
    let m = P.n - 1u;
    let iu = k % m + 1u;
    let ju = k / m + 1u;
    let di = i32(s % 3u) - 1;
    let dj = i32(s / 3u) - 1;
    let ni = i32(iu) + di;
    let nj = i32(ju) + dj;
    if (ni <= 0 || nj <= 0 || ni >= i32(P.n) || nj >= i32(P.n)) {
        return 0.0;
    }
    let k_sw = coef_at(sys, (ju - 1u) * P.n + iu - 1u);
    let k_se = coef_at(sys, (ju - 1u) * P.n + iu);
    let k_nw = coef_at(sys, ju * P.n + iu - 1u);
    let k_ne = coef_at(sys, ju * P.n + iu);
    switch s {
        case 0u: { return -2.0 * k_sw / 6.0; }
        case 1u: { return -(k_sw + k_se) / 6.0; }
        case 2u: { return -2.0 * k_se / 6.0; }
        case 3u: { return -(k_sw + k_nw) / 6.0; }
        case 4u: { return 4.0 * (k_sw + k_se + k_nw + k_ne) / 6.0; }
        case 5u: { return -(k_se + k_ne) / 6.0; }
        case 6u: { return -2.0 * k_nw / 6.0; }
        case 7u: { return -(k_nw + k_ne) / 6.0; }
        default: { return -2.0 * k_ne / 6.0; }
    }
}

fn stencil_entry(lv: Lvl, k: u32, s: u32) -> f32 {
    return work[lv.stencil + 9u * k + s];
}

// ---- setup: element matrices, coarse stencils, diagonals, the coarsest factor ----
//
// Galerkin products by elements: with nested grids, bilinear interpolation
// inside a coarse cell is exact on each of its four children, so the coarse
// element matrix is the sum over the children of P_c^T E_c P_c, and P^T A P
// is again assembled from 4 x 4 element matrices (src/cpu/multigrid.rs:
// Elements). Level 1's children are kappa times the unit Q1 element.
// Element matrices of levels 1, 2, ... are kept in level 0's stencil block,
// which the matrix-free level 0 does not otherwise need (16 (n/2)^2 +
// 16 (n/4)^2 + ... < 9 (n-1)^2 floats).

// Interpolation from a coarse cell's corners to child (a, b)'s corners:
// column c (coarse corner sw, se, nw, ne), row p (child corner), bilinear.
fn child_p(a: u32, b: u32) -> mat4x4<f32> {
    let x = vec4<f32>(f32(a), f32(a + 1u), f32(a), f32(a + 1u)) * 0.5;
    let y = vec4<f32>(f32(b), f32(b), f32(b + 1u), f32(b + 1u)) * 0.5;
    return mat4x4<f32>(
        (1.0 - x) * (1.0 - y),
        x * (1.0 - y),
        (1.0 - x) * y,
        x * y,
    );
}

// Element matrices are symmetric: stored as 4 vec4 rows (= columns).
fn elem_load(at: u32) -> mat4x4<f32> {
    return mat4x4<f32>(
        vec4<f32>(work[at], work[at + 1u], work[at + 2u], work[at + 3u]),
        vec4<f32>(work[at + 4u], work[at + 5u], work[at + 6u], work[at + 7u]),
        vec4<f32>(work[at + 8u], work[at + 9u], work[at + 10u], work[at + 11u]),
        vec4<f32>(work[at + 12u], work[at + 13u], work[at + 14u], work[at + 15u]),
    );
}

fn elem_row(at: u32, r: u32) -> vec4<f32> {
    let o = at + 4u * r;
    return vec4<f32>(work[o], work[o + 1u], work[o + 2u], work[o + 3u]);
}

// Offset of level l's (l >= 1) element matrices within level 0's block.
fn elem_base(sys: u32, l: u32, levels: u32) -> u32 {
    var off = lvl(sys, 0u, levels).stencil;
    for (var k = 1u; k < l; k++) {
        let c = P.n >> k;
        off += 16u * c * c;
    }
    return off;
}

// Level l's element matrices from level l - 1's (or from kappa for l = 1).
fn mg_elements(sys: u32, lid: u32, l: u32, levels: u32) {
    let cells = P.n >> l;
    let out = elem_base(sys, l, levels);
    let fine = elem_base(sys, l - 1u, levels);
    for (var c = lid; c < cells * cells; c += WG) {
        element_cell(sys, l, c, cells, out, fine);
    }
    storageBarrier();
}

// Coarse cell c of level l: the sum over its children of P_c^T E_c P_c.
fn element_cell(sys: u32, l: u32, c: u32, cells: u32, out: u32, fine: u32) {
    // The unit Q1 element (corners sw, se, nw, ne) and the interpolations
    // to the four children (constants).
    let unit = mat4x4<f32>(
        vec4<f32>(4.0, -1.0, -1.0, -2.0),
        vec4<f32>(-1.0, 4.0, -2.0, -1.0),
        vec4<f32>(-1.0, -2.0, 4.0, -1.0),
        vec4<f32>(-2.0, -1.0, -1.0, 4.0),
    ) * (1.0 / 6.0);
    let p00 = child_p(0u, 0u);
    let p10 = child_p(1u, 0u);
    let p01 = child_p(0u, 1u);
    let p11 = child_p(1u, 1u);
    let fine_cells = 2u * cells;
    let ci = c % cells;
    let cj = c / cells;
    let f00 = 2u * cj * fine_cells + 2u * ci;
    let f10 = f00 + 1u;
    let f01 = f00 + fine_cells;
    let f11 = f01 + 1u;
    var e: mat4x4<f32>;
    if (l == 1u) {
        e = transpose(p00) * (unit * coef_at(sys, f00)) * p00
            + transpose(p10) * (unit * coef_at(sys, f10)) * p10
            + transpose(p01) * (unit * coef_at(sys, f01)) * p01
            + transpose(p11) * (unit * coef_at(sys, f11)) * p11;
    } else {
        e = transpose(p00) * elem_load(fine + 16u * f00) * p00
            + transpose(p10) * elem_load(fine + 16u * f10) * p10
            + transpose(p01) * elem_load(fine + 16u * f01) * p01
            + transpose(p11) * elem_load(fine + 16u * f11) * p11;
    }
    let o = out + 16u * c;
    for (var r = 0u; r < 4u; r++) {
        let col = e[r];
        work[o + 4u * r] = col.x;
        work[o + 4u * r + 1u] = col.y;
        work[o + 4u * r + 2u] = col.z;
        work[o + 4u * r + 3u] = col.w;
    }
}

// Level l's 9-point stencil from its element matrices: node (i, j) (1-based
// grid node) is the ne corner of its sw cell, the nw corner of its se cell,
// the se corner of its nw cell and the sw corner of its ne cell; each of
// those rows couples it to the cell's corners.
fn mg_stencil(sys: u32, lid: u32, l: u32, lv: Lvl, levels: u32) {
    let eb = elem_base(sys, l, levels);
    for (var iu = lid; iu < lv.m; iu += WG) {
        stencil_column(lv, eb, P.n >> l, iu, 0u, lv.m);
    }
    storageBarrier();
}

// Rows j0 .. j1 - 1 of column iu of level l's stencil (elements at eb).
fn stencil_column(lv: Lvl, eb: u32, cells: u32, iu: u32, j0: u32, j1: u32) {
    for (var ju = j0; ju < j1; ju++) {
        // Cell (cx, cy) = (iu, ju) is the node's sw cell.
        let c_sw = eb + 16u * (ju * cells + iu);
        let r_sw = elem_row(c_sw, 3u);
        let r_se = elem_row(c_sw + 16u, 2u);
        let r_nw = elem_row(c_sw + 16u * cells, 1u);
        let r_ne = elem_row(c_sw + 16u * cells + 16u, 0u);
        let st = lv.stencil + 9u * (ju * lv.m + iu);
        work[st] = r_sw.x;
        work[st + 1u] = r_sw.y + r_se.x;
        work[st + 2u] = r_se.y;
        work[st + 3u] = r_sw.z + r_nw.x;
        work[st + 4u] = r_sw.w + r_se.z + r_nw.y + r_ne.x;
        work[st + 5u] = r_se.w + r_ne.y;
        work[st + 6u] = r_nw.z;
        work[st + 7u] = r_nw.w + r_ne.z;
        work[st + 8u] = r_ne.w;
    }
}

fn mg_setup(sys: u32, lid: u32, levels: u32) {
    let l0 = lvl(sys, 0u, levels);
    for (var k = lid; k < l0.nu; k += WG) {
        work[l0.dinv + k] = 1.0 / op_diag(sys, k);
    }
    if (levels == 1u) {
        // The coarsest level is level 0: its stencil for the factor.
        for (var k = lid; k < l0.nu; k += WG) {
            for (var s = 0u; s < 9u; s++) {
                work[l0.stencil + 9u * k + s] = fine_entry(sys, k, s);
            }
        }
    }
    storageBarrier();
    for (var l = 1u; l < levels; l++) {
        let lv = lvl(sys, l, levels);
        mg_elements(sys, lid, l, levels);
        mg_stencil(sys, lid, l, lv, levels);
        for (var k = lid; k < lv.nu; k += WG) {
            work[lv.dinv + k] = 1.0 / stencil_entry(lv, k, 4u);
        }
        storageBarrier();
    }
    // The coarsest level: dense matrix, then its Cholesky factor in place
    // (one invocation: at most a few dozen unknowns).
    if (lid == 0u) {
        coarse_factor(lvl(sys, levels - 1u, levels));
    }
    storageBarrier();
}

// The coarsest level's dense matrix and its Cholesky factor, in place.
fn coarse_factor(cv: Lvl) {
    let nu = cv.nu;
    for (var r = 0u; r < nu; r++) {
        for (var c = 0u; c < nu; c++) {
            work[cv.chol + r * nu + c] = 0.0;
        }
        for (var s = 0u; s < 9u; s++) {
            let i = i32(r % cv.m) + i32(s % 3u) - 1;
            let j = i32(r / cv.m) + i32(s / 3u) - 1;
            if (i >= 0 && j >= 0 && i < i32(cv.m) && j < i32(cv.m)) {
                work[cv.chol + r * nu + u32(j) * cv.m + u32(i)] = stencil_entry(cv, r, s);
            }
        }
    }
    for (var j = 0u; j < nu; j++) {
        var d = work[cv.chol + j * nu + j];
        for (var k = 0u; k < j; k++) {
            let v = work[cv.chol + j * nu + k];
            d -= v * v;
        }
        let rj = sqrt(max(d, 1e-30));
        work[cv.chol + j * nu + j] = rj;
        for (var i = j + 1u; i < nu; i++) {
            var v = work[cv.chol + i * nu + j];
            for (var k = 0u; k < j; k++) {
                v -= work[cv.chol + i * nu + k] * work[cv.chol + j * nu + k];
            }
            work[cv.chol + i * nu + j] = v / rj;
        }
    }
}

// ---- the V-cycle: z = M r (r, z at rb, zb in level 0's layout) ----
//
// Every operator pass is a column walk (invocation `lid` owns whole grid
// columns and walks them upwards with a 3 x 3 window of the input), and a
// smoothing sweep or a residual is formed as the pass stores each node, so
// a sweep is one pass and one barrier. Sweeps ping-pong between a level's
// x and t (a node's neighbours still read the old iterate); level 0 reads
// r itself as its right-hand side and its last sweep writes z.

// What `store_at` does with the operator's value a = (A v)_k: store it
// (ST_APPLY, the CG's own pass), a damped-Jacobi sweep
// v_k + omega dinv_k (b_k - a) (ST_SWEEP, which also adds b_k times the
// value to `st_dot`: at level 0 b = r, so r^T z comes with the last sweep),
// or the residual b_k - a (ST_RESIDUAL, adding its square to `st_dot`).
// Set per pass; the same for every invocation.
const ST_APPLY: u32 = 0u;
const ST_SWEEP: u32 = 1u;
const ST_RESIDUAL: u32 = 2u;
var<private> st_mode: u32;
var<private> st_out: u32;
var<private> st_v: u32;
var<private> st_b: u32;
var<private> st_dinv: u32;
var<private> st_dot: f32;

fn store_at(idx: u32, a: f32) {
    switch st_mode {
        case 1u: {
            let k = idx - st_out;
            let b = work[st_b + k];
            let v = work[st_v + k] + MG_OMEGA * work[st_dinv + k] * (b - a);
            work[idx] = v;
            st_dot += b * v;
        }
        case 2u: {
            let r = work[st_b + idx - st_out] - a;
            work[idx] = r;
            st_dot += r * r;
        }
        default: {
            work[idx] = a;
        }
    }
}

// Level l's value at node (i, j) (0-based), zero outside.
fn lvl_node(vb: u32, m: u32, i: i32, j: i32) -> f32 {
    if (i < 0 || j < 0 || i >= i32(m) || j >= i32(m)) {
        return 0.0;
    }
    return work[vb + u32(j) * m + u32(i)];
}

// The column walk of a coarse level's 9-point stencil (l > 0), storing
// through `store_at`.
fn lvl_pass(lv: Lvl, vb: u32, ob: u32, lid: u32) {
    for (var iu = lid; iu < lv.m; iu += WG) {
        lvl_column(lv, vb, ob, iu, 0u, lv.m);
    }
}

// Rows j0 .. j1 - 1 (0-based) of column iu of a coarse level's pass.
fn lvl_column(lv: Lvl, vb: u32, ob: u32, iu: u32, j0: u32, j1: u32) {
    let m = lv.m;
    let i = i32(iu);
    let jm = i32(j0) - 1;
    var w0 = vec3<f32>(lvl_node(vb, m, i - 1, jm), lvl_node(vb, m, i, jm), lvl_node(vb, m, i + 1, jm));
    var w1 = vec3<f32>(lvl_node(vb, m, i - 1, jm + 1), lvl_node(vb, m, i, jm + 1), lvl_node(vb, m, i + 1, jm + 1));
    for (var j = j0; j < j1; j++) {
        let jn = i32(j) + 1;
        let w2 = vec3<f32>(lvl_node(vb, m, i - 1, jn), lvl_node(vb, m, i, jn), lvl_node(vb, m, i + 1, jn));
        let k = j * m + iu;
        let s = lv.stencil + 9u * k;
        let a = work[s] * w0.x + work[s + 1u] * w0.y + work[s + 2u] * w0.z
            + work[s + 3u] * w1.x + work[s + 4u] * w1.y + work[s + 5u] * w1.z
            + work[s + 6u] * w2.x + work[s + 7u] * w2.y + work[s + 8u] * w2.z;
        store_at(ob + k, a);
        w0 = w1;
        w1 = w2;
    }
}

// One operator pass over level l: v at vb, output at ob, right-hand side
// at bb; `mode` is ST_APPLY, ST_SWEEP or ST_RESIDUAL. Ends with a barrier.
fn mg_pass(sys: u32, lid: u32, l: u32, lv: Lvl, vb: u32, ob: u32, bb: u32, mode: u32) {
    st_mode = mode;
    st_out = ob;
    st_v = vb;
    st_b = bb;
    st_dinv = lv.dinv;
    if (l == 0u) {
        _ = op_pass(sys, vb, ob, lid);
    } else {
        lvl_pass(lv, vb, ob, lid);
    }
    storageBarrier();
}

// The coarse right-hand side: full weighting of the fine residual at rb,
// walked by coarse columns (the 3 x 3 fine nodes of an interior coarse
// node are all unknowns, so no bounds checks).
fn mg_restrict(fv: Lvl, rb: u32, cv: Lvl, lid: u32) {
    for (var ic = lid; ic < cv.m; ic += WG) {
        restrict_column(fv, rb, cv, ic, 0u, cv.m);
    }
    storageBarrier();
}

// Coarse rows j0 .. j1 - 1 of coarse column ic of the restriction.
fn restrict_column(fv: Lvl, rb: u32, cv: Lvl, ic: u32, j0: u32, j1: u32) {
    let mf = fv.m;
    let fi = 2u * ic + 1u;
    for (var jc = j0; jc < j1; jc++) {
        let c = rb + (2u * jc + 1u) * mf + fi;
        let below = 0.5 * work[c - mf - 1u] + work[c - mf] + 0.5 * work[c - mf + 1u];
        let mid = 0.5 * work[c - 1u] + work[c] + 0.5 * work[c + 1u];
        let above = 0.5 * work[c + mf - 1u] + work[c + mf] + 0.5 * work[c + mf + 1u];
        work[cv.b + jc * cv.m + ic] = 0.5 * below + mid + 0.5 * above;
    }
}

// Coarse correction at the coarse node (ci, cj) (1-based, zero on the
// boundary) of the coarse vector at cb.
fn coarse_node(cb: u32, mc: u32, ci: u32, cj: u32) -> f32 {
    if (ci == 0u || cj == 0u || ci > mc || cj > mc) {
        return 0.0;
    }
    return work[cb + (cj - 1u) * mc + ci - 1u];
}

// Bilinear interpolation along one coarse row cj at fine column i (1-based).
fn prolong_row(cb: u32, mc: u32, i: u32, cj: u32) -> f32 {
    if (i % 2u == 0u) {
        return coarse_node(cb, mc, i / 2u, cj);
    }
    return 0.5 * (coarse_node(cb, mc, i / 2u, cj) + coarse_node(cb, mc, i / 2u + 1u, cj));
}

// x += P e, walked by fine columns (e at cb on the coarse level).
fn mg_prolong_add(fv: Lvl, xb: u32, cb: u32, mc: u32, lid: u32) {
    for (var iu = lid; iu < fv.m; iu += WG) {
        prolong_column(fv, xb, cb, mc, iu, 0u, fv.m);
    }
    storageBarrier();
}

// Fine rows j0 .. j1 - 1 (0-based) of fine column iu of x += P e.
fn prolong_column(fv: Lvl, xb: u32, cb: u32, mc: u32, iu: u32, j0: u32, j1: u32) {
    let mf = fv.m;
    let i = iu + 1u;
    for (var ju = j0; ju < j1; ju++) {
        let j = ju + 1u;
        var e = 0.0;
        if (j % 2u == 0u) {
            e = prolong_row(cb, mc, i, j / 2u);
        } else {
            e = 0.5 * (prolong_row(cb, mc, i, j / 2u) + prolong_row(cb, mc, i, j / 2u + 1u));
        }
        work[xb + ju * mf + iu] += e;
    }
}

// x = (L L^T)^-1 b on the coarsest level (one invocation).
fn coarse_solve(cv: Lvl) {
    let nu = cv.nu;
    for (var i = 0u; i < nu; i++) {
        var v = work[cv.b + i];
        for (var k = 0u; k < i; k++) {
            v -= work[cv.chol + i * nu + k] * work[cv.x + k];
        }
        work[cv.x + i] = v / work[cv.chol + i * nu + i];
    }
    for (var ii = 0u; ii < nu; ii++) {
        let i = nu - 1u - ii;
        var v = work[cv.x + i];
        for (var k = i + 1u; k < nu; k++) {
            v -= work[cv.chol + k * nu + i] * work[cv.x + k];
        }
        work[cv.x + i] = v / work[cv.chol + i * nu + i];
    }
}

// z = M r; returns this invocation's part of r^T z.
fn vcycle(sys: u32, lid: u32, levels: u32, rb: u32, zb: u32) -> f32 {
    // Where each level's smoothed iterate lives (its x or its t).
    var cur: array<u32, MG_MAX_LEVELS>;
    // Down: smooth from zero, restrict the residual.
    for (var l = 0u; l + 1u < levels; l++) {
        let lv = lvl(sys, l, levels);
        var bb = lv.b;
        if (l == 0u) {
            bb = rb;
        }
        // The first sweep from x = 0 needs no operator.
        for (var k = lid; k < lv.nu; k += WG) {
            work[lv.x + k] = MG_OMEGA * work[lv.dinv + k] * work[bb + k];
        }
        storageBarrier();
        var a = lv.x;
        var o = lv.t;
        for (var s = 1u; s < MG_SWEEPS; s++) {
            mg_pass(sys, lid, l, lv, a, o, bb, ST_SWEEP);
            let sw = a;
            a = o;
            o = sw;
        }
        cur[l] = a;
        mg_pass(sys, lid, l, lv, a, o, bb, ST_RESIDUAL);
        mg_restrict(lv, o, lvl(sys, l + 1u, levels), lid);
    }
    // Coarsest: L L^T x = b (a one-level hierarchy solves r directly).
    let cl = levels - 1u;
    let cv = lvl(sys, cl, levels);
    if (levels == 1u) {
        for (var k = lid; k < cv.nu; k += WG) {
            work[cv.b + k] = work[rb + k];
        }
        storageBarrier();
    }
    if (lid == 0u) {
        coarse_solve(cv);
    }
    storageBarrier();
    cur[cl] = cv.x;
    var dot = 0.0;
    if (levels == 1u) {
        for (var k = lid; k < cv.nu; k += WG) {
            let z = work[cv.x + k];
            work[zb + k] = z;
            dot += work[rb + k] * z;
        }
        storageBarrier();
    }
    // Up: prolong the correction, smooth (level 0's last sweep writes z).
    for (var li = 1u; li < levels; li++) {
        let l = levels - 1u - li;
        let lv = lvl(sys, l, levels);
        var bb = lv.b;
        if (l == 0u) {
            bb = rb;
        }
        var a = cur[l];
        var o = lv.x;
        if (a == lv.x) {
            o = lv.t;
        }
        mg_prolong_add(lv, a, cur[l + 1u], lvl_m(l + 1u), lid);
        for (var s = 0u; s < MG_SWEEPS; s++) {
            if (l == 0u && s + 1u == MG_SWEEPS) {
                o = zb;
            }
            st_dot = 0.0;
            mg_pass(sys, lid, l, lv, a, o, bb, ST_SWEEP);
            dot = st_dot;
            let sw = a;
            a = o;
            o = sw;
        }
        // Where the finer level's prolongation finds this correction.
        cur[l] = a;
    }
    return dot;
}

// ---- CG with the V-cycle as preconditioner ----

// Setup, r = b - A x0, z = M r, p = z and the state.
@compute @workgroup_size(WG)
fn mg_cg_start(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let levels = mg_levels();
    mg_setup(wid.x, lid, levels);
    mg_start(wid.x, lid, levels);
}

// The hierarchy alone, for grids whose setup and first cycle exceed one
// dispatch's loop budget on llvmpipe (mg_cg_start_reuse follows).
@compute @workgroup_size(WG)
fn mg_cg_setup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    mg_setup(wid.x, lid, mg_levels());
}

// The start for a second right-hand side with the same kappa (the adjoint
// solve after the forward one): the hierarchy the last `mg_cg_start` built
// in `work` is still valid, so the setup is skipped.
@compute @workgroup_size(WG)
fn mg_cg_start_reuse(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    mg_start(wid.x, lid, mg_levels());
}

fn mg_start(sys: u32, lid: u32, levels: u32) {
    let nu = P.nunk;
    let xb = sys * nu;
    let wr = sys * mg_system_floats(levels);
    let wp = wr + nu;
    let wz = wr + 3u * nu;
    var bb = 0.0;
    for (var k = lid; k < nu; k += WG) {
        work[wp + k] = x[xb + k];
        let b = rhs[xb + k];
        work[wr + k] = b;
        bb += b * b;
    }
    storageBarrier();
    // r = b - A x0 in place, by the column walk (with ||r||^2).
    st_mode = ST_RESIDUAL;
    st_out = wr;
    st_b = wr;
    st_dot = 0.0;
    _ = op_pass(sys, wp, wr, lid);
    let sums = wg_sum2(vec2<f32>(bb, st_dot), lid);
    storageBarrier();
    let prev = cg_uniform_state(state[sys], lid);
    let tol = cg_requested_tol(prev, P.tol);
    // A warm start already within the tolerance needs no V-cycle.
    var rz = 0.0;
    if (!(sums.x == 0.0 || sums.y <= tol * tol * sums.x)) {
        rz = wg_sum(vcycle(sys, lid, levels, wr, wz), lid);
        for (var k = lid; k < nu; k += WG) {
            work[wp + k] = work[wz + k];
        }
    }
    if (lid == 0u) {
        state[sys] = cg_start_state(sums.x, sums.y, rz, tol, prev);
    }
    if (sums.x == 0.0) {
        for (var k = lid; k < nu; k += WG) {
            x[xb + k] = 0.0;
        }
    }
}

// Up to P.chunk preconditioned CG iterations, resuming from the state.
@compute @workgroup_size(WG)
fn mg_cg_iterate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let sys = wid.x;
    let nu = P.nunk;
    let levels = mg_levels();
    let xb = sys * nu;
    let wr = sys * mg_system_floats(levels);
    let wp = wr + nu;
    let wa = wr + 2u * nu;
    let wz = wr + 3u * nu;
    let st0 = cg_uniform_state(state[sys], lid);
    var status = st0.status;
    var iters = st0.iters;
    var rz = st0.rz;
    let bnorm2 = st0.bnorm2;
    var rnorm2 = st0.rnorm2;
    if (status != RUNNING) {
        return;
    }
    for (var t = 0u; t < P.chunk; t++) {
        if (iters >= P.max_iter) {
            status = MAXITER;
            break;
        }
        st_mode = ST_APPLY;
        let pap = wg_sum(op_pass(sys, wp, wa, lid), lid);
        if (!(pap > 0.0) || !(rz > 0.0)) {
            status = BREAKDOWN;
            break;
        }
        let alpha = rz / pap;
        var rr = 0.0;
        for (var k = lid; k < nu; k += WG) {
            x[xb + k] += alpha * work[wp + k];
            let r = work[wr + k] - alpha * work[wa + k];
            work[wr + k] = r;
            rr += r * r;
        }
        rnorm2 = wg_sum(rr, lid);
        iters += 1u;
        if (rnorm2 <= st0.tol * st0.tol * bnorm2) {
            status = CONVERGED;
            break;
        }
        if (!(rnorm2 == rnorm2)) {
            status = BREAKDOWN;
            break;
        }
        storageBarrier();
        let rz_new = wg_sum(vcycle(sys, lid, levels, wr, wz), lid);
        let beta = rz_new / rz;
        rz = rz_new;
        for (var k = lid; k < nu; k += WG) {
            work[wp + k] = work[wz + k] + beta * work[wp + k];
        }
        storageBarrier();
    }
    if (lid == 0u) {
        var st = state[sys];
        st.status = status;
        st.iters = iters;
        st.rz = rz;
        st.rnorm2 = rnorm2;
        state[sys] = st;
    }
}

// ---- the wide path: one system over many workgroups ----
//
// One workgroup per system leaves a device's other compute units idle when
// the batch is small (B = 1 at n = 256, 512). The wide path runs the same
// algorithm, pass for pass (the same column walks, V-cycle and CG updates,
// so the mirror is src/cpu/multigrid.rs as for the kernels above), with
// one dispatch per phase recorded by the host (`WideSolve` in
// src/physics/solver.rs):
//
// * `mgw_pass` does one pass over one level, one invocation per column
//   segment of MGW_SEG rows (neighbouring invocations own neighbouring
//   columns, as in the column walks); level-0 passes that end in a dot
//   product write one partial sum per workgroup to `partials`.
// * `mgw_system`, one workgroup looping over the systems, does what needs
//   a whole system: the partial sums in a fixed order (deterministic), the
//   CG scalars and the state, and the coarsest level's factor and solve.
//   It also writes `ctrl`, the indirect dispatch arguments of the passes:
//   zero workgroups once no system is running, so the iterations the host
//   recorded beyond convergence cost a dispatch each and no work.
//
// Each dispatch reads its step from `phase` (a small buffer per step:
// storage, since llvmpipe specialises pipelines on uniform values).

// Rows per column segment. On lavapipe at n = 512, B = 1 (ms per solve,
// narrow 386-394): 16 rows with two uniform-load barriers per workgroup
// 548, 32 rows without them 315, 64 rows 284. 64 still gives a 512 grid
// 4088 invocations per pass.
const MGW_SEG: u32 = 64u;

// `mgw_pass` steps (`WideOp` in src/physics/solver.rs).
const OP_DIAG0: u32 = 0u;
const OP_ELEMENTS: u32 = 1u;
const OP_STENCIL: u32 = 2u;
const OP_START_COPY: u32 = 3u;
const OP_START_RESIDUAL: u32 = 4u;
const OP_SWEEP0: u32 = 5u;
const OP_RESIDUAL: u32 = 6u;
const OP_RESTRICT: u32 = 7u;
const OP_PROLONG: u32 = 8u;
const OP_SWEEP: u32 = 9u;
const OP_APPLY: u32 = 10u;
const OP_UPDATE: u32 = 11u;
const OP_DIRECTION: u32 = 12u;
const OP_COPY_Z: u32 = 13u;
// `mgw_system` steps.
const SYS_FACTOR: u32 = 20u;
const SYS_START: u32 = 21u;
const SYS_START_RZ: u32 = 22u;
const SYS_COARSE: u32 = 23u;
const SYS_ALPHA: u32 = 24u;
const SYS_RR: u32 = 25u;
const SYS_BETA: u32 = 26u;
const SYS_CAP: u32 = 27u;

struct MgPhase {
    op: u32,
    level: u32,
    // 1: only for systems whose solve is running.
    gated: u32,
    _pad: u32,
}

// Per system: two banks of one partial sum per level-0 workgroup (bank 1
// holds ||b||^2 of the start while bank 0 takes ||r0||^2), then alpha, beta.
@group(0) @binding(6) var<storage, read_write> partials: array<f32>;
// Per level l: the indirect dispatch (x, y, z) of its passes.
@group(0) @binding(7) var<storage, read_write> ctrl: array<u32>;
@group(0) @binding(8) var<storage, read> phase: MgPhase;

var<workgroup> mgw_phase: MgPhase;

// Workgroups of a pass over level l (mirrors `wide_groups` in solver.rs).
fn mgw_groups(l: u32) -> u32 {
    let m = lvl_m(l);
    return (m * ((m + MGW_SEG - 1u) / MGW_SEG) + WG - 1u) / WG;
}

fn mgw_stride() -> u32 {
    return 2u * mgw_groups(0u) + 4u;
}

fn mgw_uniform_phase(lid: u32) -> MgPhase {
    if (lid == 0u) {
        mgw_phase = phase;
    }
    return workgroupUniformLoad(&mgw_phase);
}

// Does step `op` end in a partial sum (all are level-0 passes)?
fn mgw_has_partial(op: u32, l: u32) -> bool {
    return op == OP_START_COPY || op == OP_START_RESIDUAL || op == OP_APPLY || op == OP_UPDATE
        || (op == OP_SWEEP && l == 0u);
}

@compute @workgroup_size(WG)
fn mgw_pass(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let sys = wid.y;
    // No barriers to make these workgroup-uniform: on lavapipe every
    // barrier switches all of a workgroup's invocations, and a wide pass
    // has hundreds of workgroups. `phase` is read-only (uniform); a system
    // whose solve has stopped skips the work but still takes part in the
    // partial sum (which its system steps then ignore).
    let ph = phase;
    let live = ph.gated == 0u || state[sys].status == RUNNING;
    let levels = mg_levels();
    let l = ph.level;
    let item = wid.x * WG + lid;
    if (ph.op == OP_ELEMENTS) {
        // One invocation per coarse cell.
        let cells = P.n >> l;
        if (item < cells * cells) {
            element_cell(sys, l, item, cells, elem_base(sys, l, levels), elem_base(sys, l - 1u, levels));
        }
        return;
    }
    let lv = lvl(sys, l, levels);
    let m = lv.m;
    let in_range = item < m * ((m + MGW_SEG - 1u) / MGW_SEG);
    let iu = item % m;
    let j0 = (item / m) * MGW_SEG;
    let j1 = min(j0 + MGW_SEG, m);
    let nu0 = P.nunk;
    let xb = sys * nu0;
    let wr = sys * mg_system_floats(levels);
    let wp = wr + nu0;
    let wa = wr + 2u * nu0;
    let wz = wr + 3u * nu0;
    let pb = sys * mgw_stride();
    let g0 = mgw_groups(0u);
    var bb = lv.b;
    if (l == 0u) {
        bb = wr;
    }
    var part = 0.0;
    if (in_range && live) {
        switch ph.op {
            case OP_DIAG0: {
                for (var j = j0; j < j1; j++) {
                    let k = j * m + iu;
                    work[lv.dinv + k] = 1.0 / op_diag(sys, k);
                }
            }
            case OP_STENCIL: {
                stencil_column(lv, elem_base(sys, l, levels), P.n >> l, iu, j0, j1);
                for (var j = j0; j < j1; j++) {
                    let k = j * m + iu;
                    work[lv.dinv + k] = 1.0 / stencil_entry(lv, k, 4u);
                }
            }
            case OP_START_COPY: {
                for (var j = j0; j < j1; j++) {
                    let k = j * m + iu;
                    work[wp + k] = x[xb + k];
                    let b = rhs[xb + k];
                    work[wr + k] = b;
                    part += b * b;
                }
            }
            case OP_START_RESIDUAL: {
                st_mode = ST_RESIDUAL;
                st_out = wr;
                st_b = wr;
                st_dot = 0.0;
                _ = op_column(sys, wp, wr, iu + 1u, j0 + 1u, j1 + 1u);
                part = st_dot;
            }
            case OP_SWEEP0: {
                for (var j = j0; j < j1; j++) {
                    let k = j * m + iu;
                    work[lv.x + k] = MG_OMEGA * work[lv.dinv + k] * work[bb + k];
                }
            }
            case OP_RESIDUAL, OP_SWEEP: {
                // One sweep before and after (MG_SWEEPS = 1): the down leg's
                // iterate is x and its residual goes to t; the up leg sweeps
                // x (after the prolongation) into t, or into z on level 0.
                st_mode = ST_RESIDUAL;
                var o = lv.t;
                if (ph.op == OP_SWEEP) {
                    st_mode = ST_SWEEP;
                    if (l == 0u) {
                        o = wz;
                    }
                }
                st_out = o;
                st_v = lv.x;
                st_b = bb;
                st_dinv = lv.dinv;
                st_dot = 0.0;
                if (l == 0u) {
                    _ = op_column(sys, lv.x, o, iu + 1u, j0 + 1u, j1 + 1u);
                } else {
                    lvl_column(lv, lv.x, o, iu, j0, j1);
                }
                part = st_dot;
            }
            case OP_RESTRICT: {
                let fv = lvl(sys, l - 1u, levels);
                restrict_column(fv, fv.t, lv, iu, j0, j1);
            }
            case OP_PROLONG: {
                // The coarser level's correction: the coarsest level's
                // solution in x, any other's last sweep in t.
                let cv = lvl(sys, l + 1u, levels);
                var cb = cv.t;
                if (l + 2u == levels) {
                    cb = cv.x;
                }
                prolong_column(lv, lv.x, cb, cv.m, iu, j0, j1);
            }
            case OP_APPLY: {
                st_mode = ST_APPLY;
                part = op_column(sys, wp, wa, iu + 1u, j0 + 1u, j1 + 1u);
            }
            case OP_UPDATE: {
                let alpha = partials[pb + 2u * g0];
                for (var j = j0; j < j1; j++) {
                    let k = j * m + iu;
                    x[xb + k] += alpha * work[wp + k];
                    let r = work[wr + k] - alpha * work[wa + k];
                    work[wr + k] = r;
                    part += r * r;
                }
            }
            case OP_DIRECTION: {
                let beta = partials[pb + 2u * g0 + 1u];
                for (var j = j0; j < j1; j++) {
                    let k = j * m + iu;
                    work[wp + k] = work[wz + k] + beta * work[wp + k];
                }
            }
            case OP_COPY_Z: {
                for (var j = j0; j < j1; j++) {
                    let k = j * m + iu;
                    work[wp + k] = work[wz + k];
                }
            }
            default: {}
        }
    }
    if (mgw_has_partial(ph.op, l)) {
        let s = wg_sum(part, lid);
        if (lid == 0u) {
            var bank = 0u;
            if (ph.op == OP_START_COPY) {
                bank = g0;
            }
            partials[pb + bank + wid.x] = s;
        }
    }
}

@compute @workgroup_size(WG)
fn mgw_system(@builtin(local_invocation_index) lid: u32) {
    let ph = mgw_uniform_phase(lid);
    let levels = mg_levels();
    let g0 = mgw_groups(0u);
    var running = 0u;
    for (var sys = 0u; sys < P.batch; sys++) {
        var st = cg_uniform_state(state[sys], lid);
        let pb = sys * mgw_stride();
        if (ph.op == SYS_FACTOR) {
            if (lid == 0u) {
                coarse_factor(lvl(sys, levels - 1u, levels));
            }
            continue;
        }
        // The phase's sums over the level-0 workgroups, in a fixed order.
        var acc = vec2<f32>(0.0);
        for (var g = lid; g < g0; g += WG) {
            acc += vec2<f32>(partials[pb + g], partials[pb + g0 + g]);
        }
        let total = wg_sum2(acc, lid);
        if (ph.op == SYS_START) {
            let tol = cg_requested_tol(st, P.tol);
            st = cg_start_state(total.y, total.x, 0.0, tol, st);
            if (total.y == 0.0) {
                for (var k = lid; k < P.nunk; k += WG) {
                    x[sys * P.nunk + k] = 0.0;
                }
            }
        } else if (st.status == RUNNING) {
            switch ph.op {
                case SYS_START_RZ: {
                    st.rz = total.x;
                    if (!(total.x == total.x)) {
                        st.status = BREAKDOWN;
                    }
                }
                case SYS_COARSE: {
                    if (lid == 0u) {
                        coarse_solve(lvl(sys, levels - 1u, levels));
                    }
                }
                case SYS_ALPHA: {
                    if (st.iters >= P.max_iter) {
                        st.status = MAXITER;
                    } else if (!(total.x > 0.0) || !(st.rz > 0.0)) {
                        st.status = BREAKDOWN;
                    } else if (lid == 0u) {
                        partials[pb + 2u * g0] = st.rz / total.x;
                    }
                }
                case SYS_RR: {
                    st.rnorm2 = total.x;
                    st.iters += 1u;
                    if (total.x <= st.tol * st.tol * st.bnorm2) {
                        st.status = CONVERGED;
                    } else if (!(total.x == total.x)) {
                        st.status = BREAKDOWN;
                    }
                }
                case SYS_BETA: {
                    if (lid == 0u) {
                        partials[pb + 2u * g0 + 1u] = total.x / st.rz;
                    }
                    st.rz = total.x;
                }
                case SYS_CAP: {
                    st.status = MAXITER;
                }
                default: {}
            }
        }
        if (lid == 0u && ph.op != SYS_COARSE) {
            state[sys] = st;
        }
        if (st.status == RUNNING) {
            running += 1u;
        }
    }
    if (lid == 0u && ph.op != SYS_FACTOR) {
        for (var l = 0u; l < levels; l++) {
            ctrl[3u * l] = select(0u, mgw_groups(l), running > 0u);
            ctrl[3u * l + 1u] = P.batch;
            ctrl[3u * l + 2u] = 1u;
        }
    }
}
