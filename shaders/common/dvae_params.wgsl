// Parameter block of the dynamical latent model's kernels (physics/kalman,
// infer/dvae). Mirrors `DvaeParams` in src/gpu/layout.rs (96 bytes; layout
// checked by tests/layout.rs). Bound as a read-only storage buffer: the
// sizes are loop bounds, and lavapipe unrolls loops whose bounds it can
// read from a uniform (see docs/benchmarks.md).
struct DvaeParams {
    n: u32,         // nodes
    t: u32,         // frames T
    modes: u32,     // n / 2 + 1
    samples: u32,   // S: draws of zeta per step (the Kalman term)
    x_samples: u32, // Sx: draws of x per step (draw s of zeta pairs with draw s % Sx of x)
    height: u32,    // H: pixels per frame column
    oracle: u32,    // 1: x is given (no encoder, no decoder)
    step: u32,      // training step (the random numbers' counter)
    seed_lo: u32,
    seed_hi: u32,
    stream: u32,
    learn: u32,     // bits: 1 sigma_x, 2 sigma_y, 4 the encoder's sigma_q, 8 q(zeta)
    dt: f32,
    sigma_u2: f32,  // state noise variance
    sigma_02: f32,  // initial state variance
    inv_norm: f32,  // 1 / (T n): the loss is -ELBO / (T n)
    beta: f32,      // weight of the Kalman term
    gamma: f32,     // weight of the reconstruction term (the warm-up ramps it up to 1)
    t_kalman: u32,  // the Kalman term covers frames 1..min(T, t_kalman)
    level_hidden: u32, // hidden width of the level decoder (dvae_level; 0: another arch)
    level0: f32,    // v_r = level0 + r dlevel
    dlevel: f32,
    _pad: u32,
}

// theta, the model's few scalars (one Adam state):
//   0, 1 the mean of q(zeta); 2 log L11; 3 L21; 4 log L22 (q's Cholesky
//   factor); 5 log sigma_x^2 (pseudo-observation noise); 6 log sigma_q^2
//   (the encoder's noise); 7 log sigma_y^2 (pixel noise).
const TH_M1: u32 = 0u;
const TH_M2: u32 = 1u;
const TH_R1: u32 = 2u;
const TH_L21: u32 = 3u;
const TH_R2: u32 = 4u;
const TH_SX: u32 = 5u;
const TH_SQ: u32 = 6u;
const TH_SY: u32 = 7u;
const TH_LEN: u32 = 8u;
