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

// (A_l v)_k for the vector at `vb` (level l's layout).
fn lvl_apply(sys: u32, l: u32, lv: Lvl, vb: u32, k: u32) -> f32 {
    if (l == 0u) {
        return op_apply(sys, vb, k);
    }
    let m = i32(lv.m);
    let i = i32(k % lv.m);
    let j = i32(k / lv.m);
    var acc = 0.0;
    for (var s = 0u; s < 9u; s++) {
        let ni = i + i32(s % 3u) - 1;
        let nj = j + i32(s / 3u) - 1;
        if (ni >= 0 && nj >= 0 && ni < m && nj < m) {
            acc += work[lv.stencil + 9u * k + s] * work[vb + u32(nj * m + ni)];
        }
    }
    return acc;
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

// t = A_l v for every node of the level (level 0 by common/pass_q1's
// column walk, which loads 3 values of v and 2 of kappa per node).
fn lvl_apply_all(sys: u32, lid: u32, l: u32, lv: Lvl, vb: u32, tb: u32) {
    if (l == 0u) {
        _ = op_pass(sys, vb, tb, lid);
    } else {
        for (var k = lid; k < lv.nu; k += WG) {
            work[tb + k] = lvl_apply(sys, l, lv, vb, k);
        }
    }
    storageBarrier();
}

// MG_SWEEPS damped-Jacobi sweeps; `from_zero`: x is zero, so the first
// sweep is x = omega D^-1 b without an operator application.
fn mg_smooth(sys: u32, lid: u32, l: u32, lv: Lvl, from_zero: bool) {
    for (var s = 0u; s < MG_SWEEPS; s++) {
        if (s == 0u && from_zero) {
            for (var k = lid; k < lv.nu; k += WG) {
                work[lv.x + k] = MG_OMEGA * work[lv.dinv + k] * work[lv.b + k];
            }
        } else {
            lvl_apply_all(sys, lid, l, lv, lv.x, lv.t);
            for (var k = lid; k < lv.nu; k += WG) {
                work[lv.x + k] += MG_OMEGA * work[lv.dinv + k] * (work[lv.b + k] - work[lv.t + k]);
            }
        }
        storageBarrier();
    }
}

fn vcycle(sys: u32, lid: u32, levels: u32, rb: u32, zb: u32) {
    let l0 = lvl(sys, 0u, levels);
    for (var k = lid; k < l0.nu; k += WG) {
        work[l0.b + k] = work[rb + k];
    }
    storageBarrier();
    // Down: smooth from zero, restrict the residual.
    for (var l = 0u; l + 1u < levels; l++) {
        let lv = lvl(sys, l, levels);
        let cv = lvl(sys, l + 1u, levels);
        mg_smooth(sys, lid, l, lv, true);
        lvl_apply_all(sys, lid, l, lv, lv.x, lv.t);
        for (var k = lid; k < lv.nu; k += WG) {
            work[lv.t + k] = work[lv.b + k] - work[lv.t + k];
        }
        storageBarrier();
        let mf = i32(lv.m);
        for (var kc = lid; kc < cv.nu; kc += WG) {
            let fi = 2 * i32(kc % cv.m) + 1;
            let fj = 2 * i32(kc / cv.m) + 1;
            var acc = 0.0;
            for (var oy = -1; oy <= 1; oy++) {
                for (var ox = -1; ox <= 1; ox++) {
                    acc += w1d(ox) * w1d(oy) * work[lv.t + u32((fj + oy) * mf + fi + ox)];
                }
            }
            work[cv.b + kc] = acc;
        }
        storageBarrier();
    }
    // Coarsest: L L^T x = b.
    let cv = lvl(sys, levels - 1u, levels);
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
    // Up: prolong the correction (a gather per fine node), smooth.
    for (var li = 1u; li < levels; li++) {
        let l = levels - 1u - li;
        let lv = lvl(sys, l, levels);
        let cvl = lvl(sys, l + 1u, levels);
        let mc = i32(cvl.m);
        for (var k = lid; k < lv.nu; k += WG) {
            // Fine grid node (i, j), 1-based; coarse node (I, J) sits at (2I, 2J).
            let i = i32(k % lv.m) + 1;
            let j = i32(k / lv.m) + 1;
            var acc = 0.0;
            for (var cj = (j - 1) / 2; cj <= (j + 1) / 2; cj++) {
                for (var ci = (i - 1) / 2; ci <= (i + 1) / 2; ci++) {
                    if (ci >= 1 && cj >= 1 && ci <= mc && cj <= mc) {
                        let wt = w1d(i - 2 * ci) * w1d(j - 2 * cj);
                        acc += wt * work[cvl.x + u32((cj - 1) * mc + ci - 1)];
                    }
                }
            }
            work[lv.x + k] += acc;
        }
        storageBarrier();
        mg_smooth(sys, lid, l, lv, false);
    }
    for (var k = lid; k < l0.nu; k += WG) {
        work[zb + k] = work[l0.x + k];
    }
    storageBarrier();
}

// ---- CG with the V-cycle as preconditioner ----

fn store_at(idx: u32, v: f32) {
    work[idx] = v;
}

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
    vcycle(sys, lid, levels, wr, wz);
    var accz = 0.0;
    for (var k = lid; k < nu; k += WG) {
        let z = work[wz + k];
        work[wp + k] = z;
        accz += work[wr + k] * z;
    }
    let rz = wg_sum(accz, lid);
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
        vcycle(sys, lid, levels, wr, wz);
        var rzp = 0.0;
        for (var k = lid; k < nu; k += WG) {
            rzp += work[wr + k] * work[wz + k];
        }
        let rz_new = wg_sum(rzp, lid);
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
