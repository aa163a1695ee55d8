// Multigrid-preconditioned CG for darcy2d's Q1 operator, one workgroup per
// system (the algorithm of src/cpu/multigrid.rs, its f64 reference).
// Assembled after common/params, common/reduce, common/cg_state and
// common/op_q1. Same bindings as solver.wgsl; `work` is larger:
//
//   per system: r | p | ap | z (4 nu), then one block per level l:
//     stencil (9 nu_l) | dinv | x | b | t  (13 nu_l)
//     the coarsest level also: its dense Cholesky factor (nu_L^2)
//   Level 0's stencil is assembled from kappa once per solve, so the
//   Galerkin products read one value per entry (the smoother's level-0
//   operator stays matrix-free).
//
// Levels: n, n/2, ... while the grid has more than MG_COARSEST cells per
// side, an even number of them, and the next has at least 2. Coarse
// operators are Galerkin products P^T A P (bilinear P), built by
// `mg_cg_start` from the current kappa; the V-cycle smooths with MG_SWEEPS
// damped-Jacobi sweeps before and after the coarse correction and solves
// the coarsest level by its Cholesky factor, so it is a symmetric positive
// definite preconditioner. Every phase runs over the level's nodes strided
// by invocation, with a barrier between phases.

const MG_COARSEST: u32 = 4u;
const MG_SWEEPS: u32 = 2u;
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

fn w1d(o: i32) -> f32 {
    switch abs(o) {
        case 0: { return 1.0; }
        case 1: { return 0.5; }
        default: { return 0.0; }
    }
}

// ---- setup: diagonals, Galerkin coarse stencils, the coarsest factor ----

fn mg_setup(sys: u32, lid: u32, levels: u32) {
    let l0 = lvl(sys, 0u, levels);
    for (var k = lid; k < l0.nu; k += WG) {
        for (var s = 0u; s < 9u; s++) {
            work[l0.stencil + 9u * k + s] = fine_entry(sys, k, s);
        }
    }
    storageBarrier();
    for (var l = 0u; l < levels; l++) {
        let lv = lvl(sys, l, levels);
        if (l > 0u) {
            // Galerkin: column K of P^T A_{l-1} P, as in galerkin() of the mirror.
            let fv = lvl(sys, l - 1u, levels);
            let mf = i32(fv.m);
            let mc = i32(lv.m);
            for (var kc = lid; kc < lv.nu; kc += WG) {
                let ic = i32(kc % lv.m);
                let jc = i32(kc / lv.m);
                let fi = 2 * ic + 1;
                let fj = 2 * jc + 1;
                var y: array<f32, 25>;
                for (var oy = -2; oy <= 2; oy++) {
                    for (var ox = -2; ox <= 2; ox++) {
                        let i = fi + ox;
                        let j = fj + oy;
                        var acc = 0.0;
                        if (i >= 0 && j >= 0 && i < mf && j < mf) {
                            let kf = u32(j * mf + i);
                            for (var s = 0u; s < 9u; s++) {
                                let di = i32(s % 3u) - 1;
                                let dj = i32(s / 3u) - 1;
                                let wt = w1d(ox + di) * w1d(oy + dj);
                                if (wt != 0.0) {
                                    acc += stencil_entry(fv, kf, s) * wt;
                                }
                            }
                        }
                        y[(oy + 2) * 5 + ox + 2] = acc;
                    }
                }
                for (var dj = -1; dj <= 1; dj++) {
                    for (var di = -1; di <= 1; di++) {
                        let li = ic + di;
                        let lj = jc + dj;
                        if (li < 0 || lj < 0 || li >= mc || lj >= mc) {
                            continue;
                        }
                        var acc = 0.0;
                        for (var pj = -1; pj <= 1; pj++) {
                            for (var pi = -1; pi <= 1; pi++) {
                                let ox = 2 * di + pi;
                                let oy = 2 * dj + pj;
                                if (abs(ox) <= 2 && abs(oy) <= 2) {
                                    acc += w1d(pi) * w1d(pj) * y[(oy + 2) * 5 + ox + 2];
                                }
                            }
                        }
                        let s = u32((1 - dj) * 3 + (1 - di));
                        work[lv.stencil + 9u * u32(lj * mc + li) + s] = acc;
                    }
                }
            }
            storageBarrier();
        }
        for (var k = lid; k < lv.nu; k += WG) {
            work[lv.dinv + k] = 1.0 / stencil_entry(lv, k, 4u);
        }
        storageBarrier();
    }
    // The coarsest level: dense matrix, then its Cholesky factor in place
    // (one invocation: at most a few dozen unknowns).
    let cl = levels - 1u;
    let cv = lvl(sys, cl, levels);
    let nu = cv.nu;
    if (lid == 0u) {
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
    storageBarrier();
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
// or the residual b_k - a (ST_RESIDUAL). Set per pass by `mg_pass`; the
// same for every invocation.
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
            work[idx] = work[st_b + idx - st_out] - a;
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
    let m = lv.m;
    for (var iu = lid; iu < m; iu += WG) {
        let i = i32(iu);
        var w0 = vec3<f32>(0.0);
        var w1 = vec3<f32>(lvl_node(vb, m, i - 1, 0), lvl_node(vb, m, i, 0), lvl_node(vb, m, i + 1, 0));
        for (var j = 0u; j < m; j++) {
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
    let mf = fv.m;
    for (var ic = lid; ic < cv.m; ic += WG) {
        let fi = 2u * ic + 1u;
        for (var jc = 0u; jc < cv.m; jc++) {
            let c = rb + (2u * jc + 1u) * mf + fi;
            let below = 0.5 * work[c - mf - 1u] + work[c - mf] + 0.5 * work[c - mf + 1u];
            let mid = 0.5 * work[c - 1u] + work[c] + 0.5 * work[c + 1u];
            let above = 0.5 * work[c + mf - 1u] + work[c + mf] + 0.5 * work[c + mf + 1u];
            work[cv.b + jc * cv.m + ic] = 0.5 * below + mid + 0.5 * above;
        }
    }
    storageBarrier();
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
    let mf = fv.m;
    for (var iu = lid; iu < mf; iu += WG) {
        let i = iu + 1u;
        for (var ju = 0u; ju < mf; ju++) {
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
    storageBarrier();
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
    }
    return dot;
}

// ---- CG with the V-cycle as preconditioner ----

// Setup, r = b - A x0, z = M r, p = z and the state.
@compute @workgroup_size(WG)
fn mg_cg_start(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let sys = wid.x;
    let nu = P.nunk;
    let levels = mg_levels();
    let xb = sys * nu;
    let wr = sys * mg_system_floats(levels);
    let wp = wr + nu;
    let wz = wr + 3u * nu;
    mg_setup(sys, lid, levels);
    for (var k = lid; k < nu; k += WG) {
        work[wp + k] = x[xb + k];
    }
    storageBarrier();
    var acc = vec2<f32>(0.0, 0.0);
    for (var k = lid; k < nu; k += WG) {
        let b = rhs[xb + k];
        let r = b - op_apply(sys, wp, k);
        work[wr + k] = r;
        acc += vec2<f32>(b * b, r * r);
    }
    let sums = wg_sum2(acc, lid);
    storageBarrier();
    let rz = wg_sum(vcycle(sys, lid, levels, wr, wz), lid);
    for (var k = lid; k < nu; k += WG) {
        work[wp + k] = work[wz + k];
    }
    if (lid == 0u) {
        state[sys] = cg_start_state(sums.x, sums.y, rz, P.tol);
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
        if (rnorm2 <= P.tol * P.tol * bnorm2) {
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
