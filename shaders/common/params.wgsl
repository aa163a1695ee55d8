// Shared parameter block of every PDE kernel.
// Keep in sync with `PdeParams` in src/gpu/layout.rs (48 bytes, 16-byte aligned).
struct PdeParams {
    n: u32,        // cells per side
    nunk: u32,     // unknowns per system
    ncoef: u32,    // coefficient entries per system (cells for darcy2d, interior nodes for poisson1d)
    batch: u32,    // number of systems B
    d: u32,        // latent dimension (KL modes)
    mode: u32,     // kernel-specific switch, documented at each entry point
    max_iter: u32, // solver: total iteration cap per system
    chunk: u32,    // solver: iterations per dispatch (bounds the time of one dispatch)
    tol: f32,      // solver: relative residual tolerance ||r|| <= tol ||b||
    scale: f32,    // kernel-specific scale (Jacobi weight, rhs scale, sign, 1/sigma^2)
    inv_h: f32,    // 1 / h
    aux: u32,      // kernel-specific count (number of sensors in obs kernels)
}

@group(0) @binding(0) var<uniform> P: PdeParams;

const WG: u32 = 256u;
