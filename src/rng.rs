//! Counter-based random numbers (Philox4x32-10), identical on the CPU and in
//! WGSL (`shaders/common/rng.wgsl`), so a seed gives the same draws on every
//! device and in the CPU mirrors.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// Philox4x32 with 10 rounds.
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for r in 0..10 {
        if r > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// Uniform in (0, 1) from the top 24 bits (exact in f32).
pub fn to_unit(x: u32) -> f64 {
    ((x >> 8) as f64 + 0.5) / 16_777_216.0
}

/// Four standard normals for block `block` of stream `stream` (two
/// Box-Muller pairs). Computed in f64; the WGSL version in f32.
pub fn normal4(seed: u64, stream: u32, step: u32, block: u32) -> [f64; 4] {
    let key = [seed as u32, (seed >> 32) as u32];
    let r = philox4x32([block, stream, step, 0x7064_6576], key);
    let bm = |a: u32, b: u32| {
        let rad = (-2.0 * to_unit(a).ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * to_unit(b);
        (rad * th.cos(), rad * th.sin())
    };
    let (a, b) = bm(r[0], r[1]);
    let (c, d) = bm(r[2], r[3]);
    [a, b, c, d]
}

/// `count` standard normals of (seed, stream, step): element i comes from
/// block i / 4, lane i % 4.
pub fn normals(seed: u64, stream: u32, step: u32, count: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(count);
    let mut block = 0u32;
    while out.len() < count {
        for v in normal4(seed, stream, step, block) {
            if out.len() < count {
                out.push(v);
            }
        }
        block += 1;
    }
    out
}

/// `count` uniforms in (0, 1) of (seed, stream, step): element i from
/// block i / 4, lane i % 4 (24-bit, as [`to_unit`]).
pub fn uniforms(seed: u64, stream: u32, step: u32, count: usize) -> Vec<f64> {
    let key = [seed as u32, (seed >> 32) as u32];
    (0..count.div_ceil(4) as u32)
        .flat_map(|b| philox4x32([b, stream, step, 0x756e_6966], key))
        .take(count)
        .map(to_unit)
        .collect()
}

/// A uniformly random permutation of 0..n for (seed, stream, step): the
/// indices sorted by one Philox draw each (ties, vanishingly rare, by index).
pub fn permutation(seed: u64, stream: u32, step: u32, n: usize) -> Vec<u32> {
    let key = [seed as u32, (seed >> 32) as u32];
    let mut keyed: Vec<(u64, u32)> = (0..n as u32)
        .map(|i| {
            let r = philox4x32([i, stream, step, 0x7065_726d], key);
            (((r[0] as u64) << 32) | r[1] as u64, i)
        })
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// Streams used by the engine (documented so users can reproduce draws).
pub mod streams {
    /// Prior draw of the true xi in `simulate`.
    pub const TRUTH: u32 = 1;
    /// Observation noise in `simulate`.
    pub const NOISE: u32 = 2;
    /// Reparameterisation noise of the ELBO.
    pub const ELBO: u32 = 3;
    /// Posterior predictive samples.
    pub const PREDICTIVE: u32 = 4;
    /// Initial values of variational parameters.
    pub const INIT: u32 = 5;
    /// Minibatch order of MLP training (step = epoch).
    pub const SHUFFLE: u32 = 6;
    /// MCMC proposal noise (step = MCMC step, blocks by chain).
    pub const MCMC: u32 = 7;
    /// MCMC accept/reject uniforms (step = MCMC step, block = chain).
    pub const MCMC_ACCEPT: u32 = 8;
    /// MCMC initial states (draws of the reference Gaussian).
    pub const MCMC_INIT: u32 = 9;
    /// Draws of the residual-trained solver's q (step = training step, block = row x node).
    pub const RESIDUAL: u32 = 10;
    /// Held-out prior draws that score a residual-trained solver.
    pub const RESIDUAL_EVAL: u32 = 11;
    /// advdiff1d simulation: the initial state and the state noise (step = t).
    pub const ADVDIFF_STATE: u32 = 12;
    /// advdiff1d simulation: the pixel noise of the frames (step = t).
    pub const ADVDIFF_PIXEL: u32 = 13;
    /// advdiff1d simulation: the prior draw of zeta.
    pub const ADVDIFF_ZETA: u32 = 14;
    /// Phi-DVAE training draws of x and zeta (step = training step).
    pub const DVAE: u32 = 15;
    /// inclusions2d: the discs of field `step` (a training set's row, or a case).
    pub const INCLUSIONS: u32 = 16;
    /// Draws of a generative prior's latent w (VAE training, prior samples).
    pub const VAE: u32 = 17;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answer() {
        // Random123's known-answer vector for philox4x32-10 with zero counter and key.
        assert_eq!(
            philox4x32([0, 0, 0, 0], [0, 0]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32([0xffff_ffff; 4], [0xffff_ffff; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
    }

    #[test]
    fn normals_have_unit_moments() {
        let v = normals(42, 3, 0, 200_000);
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64;
        assert!(m.abs() < 0.01, "mean {m}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }
}
