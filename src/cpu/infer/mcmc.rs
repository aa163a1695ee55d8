//! f64 mirrors of `shaders/infer/mcmc.wgsl` (same names, same argument order as
//! the kernels' bindings), and the log-posterior the samplers target.
#![allow(
    clippy::needless_range_loop,
    reason = "index loops keep the code comparable to the shaders"
)]

use crate::cpu::physics::CgState;
use crate::gpu::layout::status;
use crate::infer::mcmc::{McmcChain, McmcParams};
use crate::rng;

/// Mirror of `Chain` in shaders/mcmc.wgsl, in f64.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Chain {
    pub step: u32,
    pub accepts: u32,
    pub kept: u32,
    pub failed: u32,
    pub lp: f64,
    pub phi: f64,
}

impl From<&McmcChain> for Chain {
    fn from(c: &McmcChain) -> Self {
        Chain {
            step: c.step,
            accepts: c.accepts,
            kept: c.kept,
            failed: c.failed,
            lp: c.lp as f64,
            phi: c.phi as f64,
        }
    }
}

impl From<&Chain> for McmcChain {
    fn from(c: &Chain) -> Self {
        McmcChain {
            step: c.step,
            accepts: c.accepts,
            kept: c.kept,
            failed: c.failed,
            lp: c.lp as f32,
            phi: c.phi as f32,
            _pad: [0; 2],
        }
    }
}

/// The accept uniform of chain `c` at `step`.
pub fn accept_uniform(seed: u64, c: u32, step: u32) -> f64 {
    let key = [seed as u32, (seed >> 32) as u32];
    let r = rng::philox4x32([c, rng::streams::MCMC_ACCEPT, step, 0x7064_6576], key);
    rng::to_unit(r[0])
}

/// prop[c, 0..d] = w' of each chain from state [w | g_w | x].
pub fn mcmc_propose(p: &McmcParams, state: &[f64], prop: &mut [f64], chains: &[Chain]) {
    let d = p.d as usize;
    let nb = d.div_ceil(4);
    let s = p.step_size as f64;
    for c in 0..p.chains as usize {
        let (sb, pb) = (c * 3 * d, c * 2 * d);
        for b in 0..nb {
            let z = rng::normal4(
                p.seed(),
                rng::streams::MCMC,
                chains[c].step,
                (c * nb + b) as u32,
            );
            for l in 0..4 {
                let i = 4 * b + l;
                if i >= d {
                    continue;
                }
                let w = state[sb + i];
                prop[pb + i] = if p.sampler == 0 {
                    (1.0 - s * s).max(0.0).sqrt() * w + s * z[l]
                } else {
                    w + 0.5 * s * state[sb + d + i] + s.sqrt() * z[l]
                };
            }
        }
    }
}

/// xp[c, i] = m_i + sum_{j <= i} L_ij w'[c, j]; `refm` = [m | L].
pub fn mcmc_map(p: &McmcParams, refm: &[f64], prop: &[f64], xp: &mut [f64]) {
    let d = p.d as usize;
    for c in 0..p.chains as usize {
        for i in 0..d {
            let mut v = refm[i];
            for j in 0..=i {
                v += refm[d + i * d + j] * prop[c * 2 * d + j];
            }
            xp[c * d + i] = v;
        }
    }
}

/// g_w'[c, j] = sum_{i >= j} L_ij (-gxi[c, i] - xp[c, i]) into prop[c, d..2d].
pub fn mcmc_grad(p: &McmcParams, refm: &[f64], prop: &mut [f64], xp: &[f64], gxi: &[f64]) {
    let d = p.d as usize;
    for c in 0..p.chains as usize {
        for j in 0..d {
            let mut v = 0.0;
            for i in j..d {
                v += refm[d + i * d + j] * (-gxi[c * d + i] - xp[c * d + i]);
            }
            prop[c * 2 * d + d + j] = v;
        }
    }
}

/// Accept or reject, advance the step counter, keep draws (see the kernel).
#[allow(clippy::too_many_arguments, reason = "mirrors the kernel's bindings")]
pub fn mcmc_accept(
    p: &McmcParams,
    state: &mut [f64],
    prop: &[f64],
    chains: &mut [Chain],
    xp: &[f64],
    misfit: &[f64],
    cg_fwd: &[CgState],
    cg_adj: &[CgState],
    samples: &mut [f64],
) {
    let d = p.d as usize;
    let h = p.step_size as f64;
    for c in 0..p.chains as usize {
        let (sb, pb) = (c * 3 * d, c * 2 * d);
        let ch = &mut chains[c];
        let phi = misfit[c];
        let (mut xx, mut ww_new, mut ww_old, mut fwd, mut bwd) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for i in 0..d {
            let (xn, wn, wo) = (xp[c * d + i], prop[pb + i], state[sb + i]);
            xx += xn * xn;
            ww_new += wn * wn;
            ww_old += wo * wo;
            if p.sampler == 1 {
                let a = wn - wo - 0.5 * h * state[sb + d + i];
                let r = wo - wn - 0.5 * h * prop[pb + d + i];
                fwd += a * a;
                bwd += r * r;
            }
        }
        let lp_new = -phi - 0.5 * xx;
        let mut ok = cg_fwd[c].status == status::CONVERGED && lp_new.is_finite();
        let la = if p.sampler == 0 {
            (lp_new + 0.5 * ww_new) - (ch.lp + 0.5 * ww_old)
        } else {
            ok = ok && cg_adj[c].status == status::CONVERGED;
            lp_new - ch.lp + (fwd - bwd) / (2.0 * h)
        };
        let t = ch.step;
        let mut accept = ok && accept_uniform(p.seed(), c as u32, t).ln() < la;
        if !ok {
            ch.failed += 1;
        }
        if p.mode == 1 {
            accept = true;
        } else if accept {
            ch.accepts += 1;
        }
        if accept {
            for i in 0..d {
                state[sb + i] = prop[pb + i];
                state[sb + d + i] = prop[pb + d + i];
                state[sb + 2 * d + i] = xp[c * d + i];
            }
            ch.lp = lp_new;
            ch.phi = phi;
        }
        if p.mode == 0 {
            let (warm, thin) = (p.warmup, p.thin);
            if t >= warm && (t - warm) % thin == thin - 1 {
                let k = (t - warm) / thin;
                if k < p.kept {
                    let o = (c * p.kept as usize + k as usize) * (d + 1);
                    for i in 0..d {
                        samples[o + i] = state[sb + 2 * d + i];
                    }
                    samples[o + d] = ch.lp;
                    ch.kept += 1;
                }
            }
            ch.step = t + 1;
        }
    }
}

/// logpi(x) = -Phi(x) - |x|^2 / 2 in f64 (the solver mirror at tolerance
/// `tol`), the density every sampler targets.
pub fn log_posterior(
    pb: &crate::physics::problem::Problem,
    sensors: &[usize],
    y: &[f64],
    x: &[f64],
    tol: f64,
) -> f64 {
    let fwd = crate::physics::reference::forward(pb, x, tol, 100_000);
    let s2 = pb.sigma_n * pb.sigma_n;
    let phi: f64 = sensors
        .iter()
        .zip(y)
        .map(|(&k, yv)| (yv - fwd.u[k]).powi(2))
        .sum::<f64>()
        * 0.5
        / s2;
    -phi - 0.5 * x.iter().map(|v| v * v).sum::<f64>()
}
