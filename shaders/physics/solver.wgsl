// Batched iterative solvers, one workgroup per system: Jacobi-preconditioned
// conjugate gradients and weighted Jacobi. Assembled after common/params,
// common/reduce and one operator file (common/op_q1 or common/op_p1).
//
// Dispatch: (B, 1, 1) workgroups of WG invocations; workgroup `sys` owns
// system `sys` and runs its whole iteration loop, so no per-iteration host
// round trip is needed. Each dispatch runs at most P.chunk iterations (so a
// driver watchdog never fires); the host records ceil(max_iter / chunk)
// dispatches of `cg_iterate` and systems that are done return at once.
//
// Bindings: 0 params, 1 coef (B x ncoef, kappa), 2 rhs (B x nunk),
// 3 x (B x nunk, initial guess in / solution out),
// 4 work (B x 4 nunk: r | p | ap | inverse diagonal), 5 state (B CgState).

// CgState and its status codes: common/cg_state.wgsl.

@group(0) @binding(1) var<storage, read> coef: array<f32>;
@group(0) @binding(2) var<storage, read> rhs: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> work: array<f32>;
@group(0) @binding(5) var<storage, read_write> state: array<CgState>;

fn coef_at(sys: u32, cell: u32) -> f32 {
    return coef[sys * P.ncoef + cell];
}

// The operator is always applied to the p slot of `work` (base = its offset).
fn vec_at(base: u32, k: u32) -> f32 {
    return work[base + k];
}

// Initialise: dinv, r = b - A x0, p = D^-1 r and the scalars of the state.
// With ||b|| = 0 the solution is x = 0 and the system is marked converged.
@compute @workgroup_size(WG)
fn cg_start(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let sys = wid.x;
    let nu = P.nunk;
    let xb = sys * nu;
    let wr = sys * 4u * nu;
    let wp = wr + nu;
    let wd = wr + 3u * nu;
    for (var k = lid; k < nu; k += WG) {
        work[wd + k] = 1.0 / op_diag(sys, k);
        work[wp + k] = x[xb + k];
    }
    storageBarrier();
    var acc = vec2<f32>(0.0, 0.0);
    var accz = 0.0;
    for (var k = lid; k < nu; k += WG) {
        let b = rhs[xb + k];
        let r = b - op_apply(sys, wp, k);
        work[wr + k] = r;
        acc += vec2<f32>(b * b, r * r);
        accz += r * r * work[wd + k];
    }
    let sums = wg_sum2(acc, lid);
    let rz = wg_sum(accz, lid);
    // Every invocation reads p values of its neighbours above: wait before overwriting p.
    storageBarrier();
    for (var k = lid; k < nu; k += WG) {
        work[wp + k] = work[wd + k] * work[wr + k];
    }
    if (lid == 0u) {
        let prev = state[sys];
        state[sys] = cg_start_state(sums.x, sums.y, rz, cg_requested_tol(prev, P.tol), prev);
    }
    // A zero right-hand side has the zero solution whatever the initial guess.
    if (sums.x == 0.0) {
        for (var k = lid; k < nu; k += WG) {
            x[xb + k] = 0.0;
        }
    }
}


// op_pass writes ap through this.
fn store_at(idx: u32, v: f32) {
    work[idx] = v;
}

// Up to P.chunk CG iterations for system `sys`, resuming from its state.
@compute @workgroup_size(WG)
fn cg_iterate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let sys = wid.x;
    let nu = P.nunk;
    let xb = sys * nu;
    let wr = sys * 4u * nu;
    let wp = wr + nu;
    let wa = wr + 2u * nu;
    let wd = wr + 3u * nu;
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
        // ap = A p and p^T A p in one pass.
        let part = op_pass(sys, wp, wa, lid);
        // ap entries are read next by other invocations than their writers.
        storageBarrier();
        let pap = wg_sum(part, lid);
        if (!(pap > 0.0) || !(rz > 0.0)) {
            status = BREAKDOWN;
            break;
        }
        let alpha = rz / pap;
        // x += alpha p, r -= alpha ap, and the new residual norms in one pass.
        var acc = vec2<f32>(0.0, 0.0);
        for (var k = lid; k < nu; k += WG) {
            x[xb + k] += alpha * work[wp + k];
            let r = work[wr + k] - alpha * work[wa + k];
            work[wr + k] = r;
            acc += vec2<f32>(r * r, r * r * work[wd + k]);
        }
        let sums = wg_sum2(acc, lid);
        iters += 1u;
        rnorm2 = sums.x;
        if (!(sums.x == sums.x)) {
            status = BREAKDOWN;
            break;
        }
        if (sums.x <= st0.tol * st0.tol * bnorm2) {
            status = CONVERGED;
            break;
        }
        if (iters >= P.max_iter) {
            status = MAXITER;
            break;
        }
        let beta = sums.y / rz;
        rz = sums.y;
        for (var k = lid; k < nu; k += WG) {
            work[wp + k] = work[wd + k] * work[wr + k] + beta * work[wp + k];
        }
        // Neighbouring p entries written by other invocations are read next.
        storageBarrier();
    }
    if (lid == 0u) {
        state[sys].status = status;
        state[sys].iters = iters;
        state[sys].rz = rz;
        state[sys].rnorm2 = rnorm2;
    }
}

// Weighted Jacobi, P.chunk sweeps of x <- x + omega D^-1 (b - A x) with
// omega = P.omega, then the residual norm into the state (status converged
// when ||b - A x|| <= tol ||b||, else iteration cap). The p slot holds the
// current iterate and the ap slot the next one.
@compute @workgroup_size(WG)
fn jacobi_run(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let sys = wid.x;
    let nu = P.nunk;
    let xb = sys * nu;
    let wr = sys * 4u * nu;
    let wp = wr + nu;
    let wa = wr + 2u * nu;
    let wd = wr + 3u * nu;
    for (var k = lid; k < nu; k += WG) {
        work[wd + k] = 1.0 / op_diag(sys, k);
        work[wp + k] = x[xb + k];
    }
    storageBarrier();
    for (var t = 0u; t < P.chunk; t++) {
        for (var k = lid; k < nu; k += WG) {
            let r = rhs[xb + k] - op_apply(sys, wp, k);
            work[wa + k] = work[wp + k] + P.omega * work[wd + k] * r;
        }
        storageBarrier();
        for (var k = lid; k < nu; k += WG) {
            work[wp + k] = work[wa + k];
        }
        storageBarrier();
    }
    var acc = vec2<f32>(0.0, 0.0);
    for (var k = lid; k < nu; k += WG) {
        let b = rhs[xb + k];
        let r = b - op_apply(sys, wp, k);
        work[wr + k] = r;
        x[xb + k] = work[wp + k];
        acc += vec2<f32>(b * b, r * r);
    }
    let sums = wg_sum2(acc, lid);
    if (lid == 0u) {
        var st: CgState;
        st.iters = state[sys].iters + P.chunk;
        st.status = MAXITER;
        if (sums.y <= P.tol * P.tol * sums.x) {
            st.status = CONVERGED;
        }
        st.rz = 0.0;
        st.bnorm2 = sums.x;
        st.rnorm2 = sums.y;
        state[sys] = st;
    }
}
