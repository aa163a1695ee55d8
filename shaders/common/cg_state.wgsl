// The state of one system's iterative solve, written by the solver kernels
// (shaders/physics/solver.wgsl, p1_direct.wgsl) and read by the MCMC accept
// kernel. Mirrors `CgState` in src/gpu/layout.rs (layout checked by
// tests/layout.rs).
struct CgState {
    iters: u32,
    status: u32,   // 0 running, 1 converged, 2 iteration cap, 3 breakdown (not SPD / NaN)
    rz: f32,       // r^T D^-1 r
    bnorm2: f32,   // ||b||^2
    rnorm2: f32,   // ||r||^2 (recursive residual)
    tol: f32,      // the relative tolerance of this solve (set by its start)
    tol_next: f32, // the tolerance the next start is asked for; 0: P.tol
    _pad: u32,
}

const RUNNING: u32 = 0u;
const CONVERGED: u32 = 1u;
const MAXITER: u32 = 2u;
const BREAKDOWN: u32 = 3u;

// The tolerance a start uses: the one asked for in the state (by
// shaders/infer/cg_tol.wgsl, from the Monte Carlo noise of the last
// gradient) or else `fixed` (the parameter block's).
fn cg_requested_tol(st: CgState, fixed: f32) -> f32 {
    return select(fixed, st.tol_next, st.tol_next > 0.0);
}

// The state after a CG start from ||b||^2, ||r0||^2 and r0^T z0: converged
// at once for a zero right-hand side or a small enough initial residual,
// broken down on NaN. `prev` is the state before the start, whose request
// for the next tolerance is kept.
fn cg_start_state(bnorm2: f32, rnorm2: f32, rz: f32, tol: f32, prev: CgState) -> CgState {
    var st: CgState;
    st.tol = tol;
    st.tol_next = prev.tol_next;
    st.iters = 0u;
    st.status = RUNNING;
    st.rz = rz;
    st.bnorm2 = bnorm2;
    st.rnorm2 = rnorm2;
    if (bnorm2 == 0.0 || rnorm2 <= tol * tol * bnorm2) {
        st.status = CONVERGED;
    }
    if (!(rnorm2 == rnorm2) || !(rz == rz)) {
        st.status = BREAKDOWN;
    }
    return st;
}

var<workgroup> cg_shared: CgState;

// A system's state as one workgroup-uniform value (invocation 0 reads it),
// so the iteration loop may branch on it and still reach its barriers.
fn cg_uniform_state(st: CgState, lid: u32) -> CgState {
    if (lid == 0u) {
        cg_shared = st;
    }
    return workgroupUniformLoad(&cg_shared);
}
