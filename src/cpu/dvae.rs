//! f64 mirrors of the Phi-DVAE kernels (`shaders/infer/dvae.wgsl`) and of
//! the batched Kalman kernel (`shaders/physics/kalman.wgsl`), on flat
//! buffers laid out as the kernels' bindings.

use crate::cpu::kalman::kalman_loglik as filter;
use crate::gpu::layout::DvaeParams;
use crate::physics::advdiff::{AdvDiff, C64};
use crate::rng::normal4;

/// Indices into theta (see shaders/common/dvae_params.wgsl).
pub mod th {
    pub const M1: usize = 0;
    pub const M2: usize = 1;
    pub const R1: usize = 2;
    pub const L21: usize = 3;
    pub const R2: usize = 4;
    pub const SX: usize = 5;
    pub const SQ: usize = 6;
    pub const SY: usize = 7;
    pub const LEN: usize = 8;
}

/// Slots of `tout` after the gradients.
pub mod stat {
    pub const RECON: usize = 0;
    pub const KALMAN: usize = 1;
    pub const ENTROPY: usize = 2;
    pub const KL: usize = 3;
    pub const ELBO: usize = 4;
    pub const SIGMA_X: usize = 5;
    pub const SIGMA_Q: usize = 6;
    pub const SIGMA_Y: usize = 7;
    pub const LEN: usize = 8;
}

const LOG_2PI: f64 = 1.837_877_066_409_345_5;

fn seed(dp: &DvaeParams) -> u64 {
    dp.seed_lo as u64 | ((dp.seed_hi as u64) << 32)
}

/// The normal behind entry i of x's draws.
pub fn eps_x(dp: &DvaeParams, i: usize) -> f64 {
    normal4(seed(dp), dp.stream, dp.step, (i / 4) as u32)[i % 4]
}

/// The two normals behind draw s of zeta.
pub fn eps_z(dp: &DvaeParams, s: usize) -> [f64; 2] {
    let e = normal4(seed(dp), dp.stream + 1, dp.step, s as u32);
    [e[0], e[1]]
}

/// (L11, L21, L22) of q(zeta).
pub fn chol(theta: &[f64]) -> [f64; 3] {
    [theta[th::R1].exp(), theta[th::L21], theta[th::R2].exp()]
}

/// The advdiff1d constants of a parameter block (n, T, dt, noises).
pub fn problem_of(dp: &DvaeParams) -> AdvDiff {
    AdvDiff {
        n: dp.n as usize,
        t: dp.t as usize,
        dt: dp.dt as f64,
        sigma_u: (dp.sigma_u2 as f64).sqrt(),
        sigma_0: (dp.sigma_02 as f64).sqrt(),
        height: dp.height as usize,
        ..Default::default()
    }
}

/// Mirror of `kalman_loglik`: every draw s of zeta with draw s % Sx of x.
pub fn kalman_loglik(
    dp: &DvaeParams,
    theta: &[f64],
    m0: &[C64],
    xs: &[f64],
    zs: &[f64],
    kout: &mut [f64],
    gx: &mut [f64],
) {
    let pb = problem_of(dp);
    let tn = pb.t * pb.n;
    // The filter over the first kt frames; no gradient beyond.
    let kt = pb.t.min(dp.t_kalman as usize);
    let short = AdvDiff {
        t: kt,
        ..pb.clone()
    };
    for s in 0..dp.samples as usize {
        let j = s % dp.x_samples as usize;
        let g = filter(
            &short,
            m0,
            &xs[j * tn..j * tn + kt * pb.n],
            [zs[2 * s], zs[2 * s + 1]],
            theta[th::SX].exp(),
        );
        kout[4 * s] = g.ll;
        kout[4 * s + 1] = g.d_zeta[0];
        kout[4 * s + 2] = g.d_zeta[1];
        kout[4 * s + 3] = g.d_log_sx2;
        gx[s * tn..(s + 1) * tn].fill(0.0);
        gx[s * tn..s * tn + kt * pb.n].copy_from_slice(&g.d_x);
    }
}

/// Mirror of `dvae_sample`.
pub fn dvae_sample(dp: &DvaeParams, theta: &[f64], mu: &[f64], xs: &mut [f64], zs: &mut [f64]) {
    let tn = (dp.t * dp.n) as usize;
    if dp.oracle == 0 {
        let sq = (0.5 * theta[th::SQ]).exp();
        for i in 0..dp.x_samples as usize * tn {
            xs[i] = mu[i % tn] + sq * eps_x(dp, i);
        }
    }
    let l = chol(theta);
    for s in 0..dp.samples as usize {
        let e = eps_z(dp, s);
        zs[2 * s] = theta[th::M1] + l[0] * e[0];
        zs[2 * s + 1] = theta[th::M2] + l[1] * e[0] + l[2] * e[1];
    }
}

/// The level of pixel row r.
pub fn level(dp: &DvaeParams, r: usize) -> f64 {
    dp.level0 as f64 + r as f64 * dp.dlevel as f64
}

/// Mirror of `dvae_recon`.
pub fn dvae_recon(
    dp: &DvaeParams,
    theta: &[f64],
    dec_out: &[f64],
    frames: &[f64],
    dec_delta: &mut [f64],
    rowsq: &mut [f64],
) {
    let tn = (dp.t * dp.n) as usize;
    let h = dp.height as usize;
    let scale = dp.gamma as f64 * dp.inv_norm as f64 / (dp.x_samples as f64 * theta[th::SY].exp());
    for row in 0..dp.x_samples as usize * tn {
        let r = row % tn;
        let mut acc = 0.0;
        for p in 0..h {
            let d = dec_out[row * h + p] - frames[r * h + p];
            dec_delta[row * h + p] = scale * d;
            acc += d * d;
        }
        rowsq[row] = acc;
    }
}

/// Column rows per invocation of `dvae_level` (its `LEVEL_ROWS`).
pub const LEVEL_ROWS: usize = 4;
/// Widest level decoder (`dvae_level`'s `LEVEL_MAX`).
pub const LEVEL_MAX: usize = 32;

/// Mirror of `dvae_level`: the level decoder `f(v_r - x)` fused with the
/// frames' term, per group of `LEVEL_ROWS` column rows.
#[allow(clippy::too_many_arguments)]
pub fn dvae_level(
    dp: &DvaeParams,
    theta: &[f64],
    xs: &[f64],
    frames: &[f64],
    rowsq: &mut [f64],
    dec_p: &[f64],
    ldx: &mut [f64],
    gpart: &mut [f64],
) {
    let tn = (dp.t * dp.n) as usize;
    let rows = dp.x_samples as usize * tn;
    let hgt = dp.height as usize;
    let nh = (dp.level_hidden as usize).min(LEVEL_MAX);
    let (w1, b1, w2) = (&dec_p[..nh], &dec_p[nh..2 * nh], &dec_p[2 * nh..3 * nh]);
    let b2 = dec_p[3 * nh];
    let scale = dp.gamma as f64 * dp.inv_norm as f64 / (dp.x_samples as f64 * theta[th::SY].exp());
    let mut h = vec![0.0; nh];
    for g in 0..rows.div_ceil(LEVEL_ROWS) {
        let (mut gw1, mut gb1, mut gw2, mut gb2) =
            (vec![0.0; nh], vec![0.0; nh], vec![0.0; nh], 0.0);
        for row in g * LEVEL_ROWS..rows.min((g + 1) * LEVEL_ROWS) {
            let x = xs[row];
            let r = row % tn;
            let (mut acc, mut dx) = (0.0, 0.0);
            for p in 0..hgt {
                let s = level(dp, p) - x;
                let mut out = b2;
                for j in 0..nh {
                    h[j] = (w1[j] * s + b1[j]).tanh();
                    out += w2[j] * h[j];
                }
                let d = out - frames[r * hgt + p];
                acc += d * d;
                let gd = scale * d;
                gb2 += gd;
                let mut ds = 0.0;
                for j in 0..nh {
                    gw2[j] += gd * h[j];
                    let dz = gd * w2[j] * (1.0 - h[j] * h[j]);
                    gb1[j] += dz;
                    gw1[j] += dz * s;
                    ds += dz * w1[j];
                }
                dx -= ds;
            }
            rowsq[row] = acc;
            ldx[row] = dx;
        }
        let o = g * (3 * nh + 1);
        gpart[o..o + nh].copy_from_slice(&gw1);
        gpart[o + nh..o + 2 * nh].copy_from_slice(&gb1);
        gpart[o + 2 * nh..o + 3 * nh].copy_from_slice(&gw2);
        gpart[o + 3 * nh] = gb2;
    }
}

/// Mirror of `dvae_level_grad`: `dvae_level`'s partials added in order.
pub fn dvae_level_grad(dp: &DvaeParams, gpart: &[f64], dgrad: &mut [f64]) {
    let nh = (dp.level_hidden as usize).min(LEVEL_MAX);
    let np = 3 * nh + 1;
    let groups = (dp.x_samples * dp.t * dp.n) as usize;
    for (e, out) in dgrad.iter_mut().enumerate().take(np) {
        *out = (0..groups.div_ceil(LEVEL_ROWS))
            .map(|g| gpart[g * np + e])
            .sum();
    }
}

/// The level decoder's frames at the codes `x` (`(rows, H)`, column rows).
pub fn level_decode(dp: &DvaeParams, dec_p: &[f64], x: &[f64]) -> Vec<f64> {
    let hgt = dp.height as usize;
    let nh = (dp.level_hidden as usize).min(LEVEL_MAX);
    let mut out = Vec::with_capacity(x.len() * hgt);
    for &xv in x {
        for p in 0..hgt {
            let s = level(dp, p) - xv;
            let mut y = dec_p[3 * nh];
            for j in 0..nh {
                y += dec_p[2 * nh + j] * (dec_p[j] * s + dec_p[nh + j]).tanh();
            }
            out.push(y);
        }
    }
    out
}

/// Mirror of `dvae_assemble` (same sums, but summed in index order).
#[allow(clippy::too_many_arguments)]
pub fn dvae_assemble(
    dp: &DvaeParams,
    theta: &[f64],
    rowsq: &[f64],
    kout: &[f64],
    gxk: &[f64],
    dxdec: &[f64],
    mugrad: &mut [f64],
    tout: &mut [f64],
) {
    let tn = (dp.t * dp.n) as usize;
    let ns = dp.samples as usize;
    let nx = dp.x_samples as usize;
    let nn = dp.inv_norm as f64;
    let w = dp.beta as f64 * nn / ns as f64;
    let (mut qacc, mut sq) = (0.0, 0.0);
    if dp.oracle == 0 {
        for r in 0..tn {
            let mut gmu = 0.0;
            for j in 0..nx {
                let mut g = dxdec[j * tn + r];
                for s in (j..ns).step_by(nx) {
                    g -= w * gxk[s * tn + r];
                }
                gmu += g;
                qacc += g * eps_x(dp, j * tn + r);
                sq += rowsq[j * tn + r];
            }
            mugrad[r] = gmu;
        }
    }
    let (mut ll, mut gm, mut gl, mut gsx) = (0.0, [0.0; 2], [0.0; 3], 0.0);
    for s in 0..ns {
        let e = eps_z(dp, s);
        let g = [kout[4 * s + 1], kout[4 * s + 2]];
        ll += kout[4 * s];
        gm[0] += g[0];
        gm[1] += g[1];
        gl[0] += g[0] * e[0];
        gl[1] += g[1] * e[0];
        gl[2] += g[1] * e[1];
        gsx += kout[4 * s + 3];
    }
    let l = chol(theta);
    let m = [theta[th::M1], theta[th::M2]];
    let lz = if dp.learn & 8 != 0 { 1.0 } else { 0.0 };
    tout[th::M1] = lz * (-w * gm[0] + nn * m[0]);
    tout[th::M2] = lz * (-w * gm[1] + nn * m[1]);
    tout[th::R1] = lz * (-w * gl[0] * l[0] + nn * (l[0] * l[0] - 1.0));
    tout[th::L21] = lz * (-w * gl[1] + nn * l[1]);
    tout[th::R2] = lz * (-w * gl[2] * l[2] + nn * (l[2] * l[2] - 1.0));
    tout[th::SX] = if dp.learn & 1 != 0 { -w * gsx } else { 0.0 };
    let sq_sd = (0.5 * theta[th::SQ]).exp();
    let sy2 = theta[th::SY].exp();
    let learn_q = dp.oracle == 0 && dp.learn & 4 != 0;
    let learn_y = dp.oracle == 0 && dp.learn & 2 != 0;
    tout[th::SQ] = if learn_q {
        0.5 * sq_sd * qacc - 0.5 * tn as f64 * nn
    } else {
        0.0
    };
    let pixels = (tn * dp.height as usize) as f64;
    tout[th::SY] = if learn_y {
        -dp.gamma as f64 * (nn / nx as f64) * (0.5 * sq / sy2 - 0.5 * nx as f64 * pixels)
    } else {
        0.0
    };
    let (recon, ent) = if dp.oracle == 0 {
        (
            -0.5 * sq / (nx as f64 * sy2) - 0.5 * pixels * (LOG_2PI + theta[th::SY]),
            0.5 * tn as f64 * (LOG_2PI + theta[th::SQ] + 1.0),
        )
    } else {
        (0.0, 0.0)
    };
    let kl = 0.5 * (l.iter().map(|v| v * v).sum::<f64>() + m[0] * m[0] + m[1] * m[1] - 2.0)
        - (theta[th::R1] + theta[th::R2]);
    let kal = ll / ns as f64;
    let o = th::LEN;
    tout[o + stat::RECON] = recon;
    tout[o + stat::KALMAN] = kal;
    tout[o + stat::ENTROPY] = ent;
    tout[o + stat::KL] = kl;
    tout[o + stat::ELBO] = recon + kal + ent - kl;
    tout[o + stat::SIGMA_X] = (0.5 * theta[th::SX]).exp();
    tout[o + stat::SIGMA_Q] = sq_sd;
    tout[o + stat::SIGMA_Y] = sy2.sqrt();
}
