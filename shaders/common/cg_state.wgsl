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
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const RUNNING: u32 = 0u;
const CONVERGED: u32 = 1u;
const MAXITER: u32 = 2u;
const BREAKDOWN: u32 = 3u;
