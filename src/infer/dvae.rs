//! Phi-DVAE (methods.md A5) on advdiff1d: an encoder from frames to
//! pseudo-observations `x_t`, a decoder back to frames, the linear-Gaussian
//! state-space model `u_t = M(zeta) u_{t-1} + eta_t`, `x_t = u_t + delta_t`
//! whose marginal likelihood `p(x_1..T | zeta)` the Kalman filter gives
//! exactly, and a full-rank Gaussian `q(zeta)`, all learned together by one
//! ELBO on the GPU:
//!
//! `ELBO = E_q[log p(Y | x)] + E_q[log p(x | zeta)] + H[q(x | Y)] - KL(q(zeta) || N(0, I))`.
//!
//! One training step is one command encoder (see shaders/infer/dvae.wgsl);
//! the host reads the ELBO's terms back every `report_every` steps.
//!
//! Architecture. The encoder acts on one frame column at a time (`H`
//! pixels -> the value at one node), the same MLP for every node and frame:
//! pixel `(r, i)` of a frame depends on `u_t(x_i)` only, so this is the
//! structure of the data, it gives the network `T n` training rows instead
//! of `T`, and it keeps zeta identifiable: a decoder that sees the whole of
//! `x_t` could move the bump itself and explain the frames with any
//! advection speed (`--arch frame`, there to show it). The default decoder
//! draws each pixel from its level relative to the code (`DvaeArch::Level`,
//! the fused kernel `dvae_level`), which pins the code to `u + const`;
//! `--arch column` maps the value back to a whole column.

use std::time::Instant;

use crate::cpu::dvae::{stat, th};
use crate::cpu::kalman::{kalman_dense, Smoothed};
use crate::error::{Error, Result};
use crate::gpu::layout::DvaeParams;
use crate::gpu::{args, Dispatch, GpuContext};
use crate::infer::adam::{Adam, AdamParams};
use crate::nn::mlp::{Activation, Arch, Loss, Mlp, Workspace};
use crate::physics::advdiff::{physical, AdvDiff};

/// How the networks see a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DvaeArch {
    /// The column encoder, and a decoder that draws pixel `(r, i)` from
    /// `v_r - x_{t,i}` alone: the picture of a graph moves up with the
    /// graph. A column decoder can absorb any monotone change of the code
    /// (`x = u + g(u)`), and the Kalman term only weakly penalises one; a
    /// convex g makes the bump look as if it flattened faster, so nu came
    /// out 3-9 q-sd too high on every seed (README). Here any code but
    /// `u + const` draws the wrong picture.
    Level,
    /// One frame column (`H` pixels) <-> one node's value, shared weights.
    Column,
    /// A whole frame (`H n` pixels) <-> `x_t` (`n` values).
    Frame,
}

impl DvaeArch {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "level" => Ok(DvaeArch::Level),
            "column" => Ok(DvaeArch::Column),
            "frame" => Ok(DvaeArch::Frame),
            other => Err(Error::setting(
                "arch",
                other,
                "expected level, column or frame",
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DvaeArch::Level => "level",
            DvaeArch::Column => "column",
            DvaeArch::Frame => "frame",
        }
    }
}

/// Settings of a fit (defaults: the spec's problem in a few minutes on the
/// 2-core software GPU).
#[derive(Clone, Debug)]
pub struct DvaeSettings {
    pub steps: usize,
    /// Adam's learning rate of the networks.
    pub lr: f64,
    /// Adam's learning rate of q(zeta) and the noise levels.
    pub lr_theta: f64,
    /// Both rates decay geometrically to this fraction at the last step.
    pub lr_final: f64,
    /// Draws of zeta per step.
    pub samples: usize,
    /// Draws of x per step.
    pub x_samples: usize,
    pub hidden: Vec<usize>,
    /// Hidden widths of the level arch's decoder (one scalar in, one pixel
    /// out, run on every pixel: small).
    pub level_hidden: Vec<usize>,
    pub act: Activation,
    pub arch: DvaeArch,
    /// Learn the pixel noise (else the spec's sigma_y).
    pub learn_sigma_y: bool,
    /// Initial pseudo-observation noise and encoder noise.
    pub sigma_x0: f64,
    pub sigma_q0: f64,
    /// Initial standard deviations of q(zeta).
    pub q_sd0: f64,
    pub seed: u64,
    pub report_every: usize,
    /// Warm-up, as fractions of the steps: the reconstruction term's weight
    /// rises geometrically from `warmup_gamma0` at `warmup.0` to 1 at
    /// `warmup.1`. While the physics dominates, the encoder learns a code
    /// that the Kalman term anchors to u; with the full reconstruction
    /// weight from the start the networks settle on a folded code
    /// (non-monotone in u) that the physics cannot undo (measured, README).
    pub warmup: (f64, f64),
    pub warmup_gamma0: f64,
    /// sigma_x stays at `sigma_x0` until this fraction of the steps: a
    /// learned sigma_x from the start grows to explain a code of any scale
    /// and the physics stops anchoring x to u (measured, README).
    pub learn_sigma_x_from: f64,
    /// q(zeta) stays at its start until this fraction of the steps, while
    /// the networks learn a code that the physics anchors to u; learned
    /// from the start, it runs to whatever explains random codes (an
    /// instantly diffusing state, measured) and does not come back.
    pub learn_zeta_from: f64,
    /// While q(zeta) is held, the Kalman term covers only the first
    /// `anchor_frames` frames (default: all). Measured at 8000 steps
    /// (README): over all frames seed 1 is recovered and seed 2 (a bump
    /// moving left, c = -0.7) is not; over 3 frames seed 2's c is found
    /// but the code folds near the peak and nu is lost on both seeds; over
    /// 1 frame both fail.
    pub anchor_frames: usize,
    /// Where q(zeta)'s mean starts (and stays during the warm-up).
    pub zeta_start: ZetaStart,
}

/// Where q(zeta)'s mean starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZetaStart {
    /// The prior's mean, zeta = 0 (c = 1).
    Prior,
    /// `zeta_1` from the advection speed that the frames' first Fourier
    /// mode turns at (`AdvDiff::speed_from_frames`: no encoder, no model
    /// of the rendering), `zeta_2` at the prior's mean. The warm-up holds
    /// q(zeta) while the physics anchors the code to u, so a start at
    /// c = 1 anchors a leftward bump's code to a rightward motion: seed 2
    /// (c = -0.70) ended at c = 1.5 from the prior's mean (README).
    Frames,
}

impl ZetaStart {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "prior" => Ok(ZetaStart::Prior),
            "frames" => Ok(ZetaStart::Frames),
            other => Err(Error::setting(
                "zeta-start",
                other,
                "expected frames or prior",
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ZetaStart::Prior => "prior",
            ZetaStart::Frames => "frames",
        }
    }
}

impl Default for DvaeSettings {
    fn default() -> Self {
        DvaeSettings {
            steps: 8000,
            lr: 5e-3,
            lr_theta: 2e-2,
            lr_final: 0.05,
            samples: 8,
            x_samples: 1,
            hidden: vec![64, 64],
            level_hidden: vec![32],
            act: Activation::Tanh,
            arch: DvaeArch::Level,
            learn_sigma_y: false,
            sigma_x0: 0.05,
            sigma_q0: 0.05,
            q_sd0: 0.3,
            seed: 0,
            report_every: 50,
            warmup: (0.0, 0.4),
            warmup_gamma0: 0.01,
            learn_sigma_x_from: 0.4,
            learn_zeta_from: 0.3,
            anchor_frames: usize::MAX,
            zeta_start: ZetaStart::Frames,
        }
    }
}

impl DvaeSettings {
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::setting("steps", 0, "need at least one step"));
        }
        if self.samples == 0 || self.x_samples == 0 || !self.samples.is_multiple_of(self.x_samples)
        {
            return Err(Error::setting(
                "samples",
                format!("{} (x-samples {})", self.samples, self.x_samples),
                "need samples >= 1 and a multiple of x-samples >= 1",
            ));
        }
        for (name, v) in [
            ("lr", self.lr),
            ("lr-theta", self.lr_theta),
            ("lr-final", self.lr_final),
            ("sigma-x0", self.sigma_x0),
            ("sigma-q0", self.sigma_q0),
            ("q-sd0", self.q_sd0),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::setting(name, v, "must be finite and positive"));
            }
        }
        if self.anchor_frames == 0 {
            return Err(Error::setting(
                "anchor-frames",
                0,
                "the warm-up needs at least one frame in the Kalman term",
            ));
        }
        let (a, b) = self.warmup;
        if !(0.0 <= a && a <= b && b < 1.0) {
            return Err(Error::setting(
                "warmup",
                format!("{a},{b}"),
                "need 0 <= start <= end < 1 (fractions of the steps)",
            ));
        }
        for (name, h) in [
            ("hidden", &self.hidden),
            ("level-hidden", &self.level_hidden),
        ] {
            if h.is_empty() || h.contains(&0) {
                return Err(Error::setting(
                    name,
                    format!("{h:?}"),
                    "need one or more hidden widths >= 1",
                ));
            }
        }
        if self.arch == DvaeArch::Level
            && (self.level_hidden.len() != 1 || self.level_hidden[0] > crate::cpu::dvae::LEVEL_MAX)
        {
            return Err(Error::setting(
                "level-hidden",
                format!("{:?}", self.level_hidden),
                format!(
                    "the level decoder has one hidden layer of at most {} units",
                    crate::cpu::dvae::LEVEL_MAX
                ),
            ));
        }
        Ok(())
    }

    /// Weight of the reconstruction term at `step`.
    pub fn gamma_at(&self, step: usize) -> f64 {
        let f = step as f64 / self.steps as f64;
        let (a, b) = self.warmup;
        let ramp = if f >= b {
            1.0
        } else if f < a {
            0.0
        } else {
            (f - a) / (b - a).max(1e-12)
        };
        self.warmup_gamma0.powf(1.0 - ramp)
    }

    pub fn lr_at(&self, base: f64, step: usize) -> f64 {
        let f = step as f64 / (self.steps.max(2) - 1) as f64;
        base * self.lr_final.powf(f)
    }
}

/// What the model learns from.
#[derive(Clone, Debug)]
pub enum DvaeData {
    /// Frames `(T, H, n)` as the spec stores them.
    Frames(Vec<f64>),
    /// Oracle mode: known noisy states `(T, n)` and their noise level; no
    /// encoder, no decoder, so only q(zeta) is learned.
    Oracle { x: Vec<f64>, noise: f64 },
}

/// One read-back of the ELBO's terms.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct TracePoint {
    pub step: usize,
    pub elbo: f64,
    pub recon: f64,
    pub kalman: f64,
    pub entropy: f64,
    pub kl: f64,
}

/// The answer of a fit.
#[derive(Clone, Debug)]
pub struct DvaeFit {
    pub theta: Vec<f64>,
    pub zeta_mean: [f64; 2],
    pub zeta_cov: [[f64; 2]; 2],
    /// q(zeta)'s starting mean (see `ZetaStart`).
    pub zeta_start: [f64; 2],
    /// q's covariance widened where the Kalman term's per-frame scores vary
    /// more than its curvature says (`calibrate_cov`): the uncertainty to
    /// report when the pseudo-observations carry the encoder's systematic
    /// error, which the model's independent noise does not describe.
    pub zeta_cov_calibrated: [[f64; 2]; 2],
    /// The factors on q's variances (>= 1) in `zeta_cov_calibrated`.
    pub inflation: [f64; 2],
    pub sigma_x: f64,
    pub sigma_q: f64,
    pub sigma_y: f64,
    pub trace: Vec<TracePoint>,
    /// The pseudo-observations at the encoder's means (oracle: the given x), `(T, n)`.
    pub x_mean: Vec<f64>,
    /// The decoder's frames at `x_mean`, `(T, H, n)` (none in oracle mode).
    pub recon: Option<Vec<f64>>,
    pub encoder: Option<(Arch, Vec<f64>)>,
    pub decoder: Option<(Arch, Vec<f64>)>,
    pub seconds: f64,
    pub steps: usize,
    pub interrupted: bool,
}

impl DvaeFit {
    /// Moments of c = 1 + 0.5 zeta_1 (normal) and nu = 0.005 exp(0.5 zeta_2)
    /// (log-normal) under q: ((mean, sd) of c, (mean, sd) of nu).
    pub fn physical_moments(&self) -> ([f64; 2], [f64; 2]) {
        physical_moments(self.zeta_mean, self.zeta_cov)
    }
}

/// Moments of c (normal) and nu (log-normal) under `N(mean, cov)` in zeta.
pub fn physical_moments(mean: [f64; 2], cov: [[f64; 2]; 2]) -> ([f64; 2], [f64; 2]) {
    let (c, _) = physical(mean);
    let sd_c = 0.5 * cov[0][0].sqrt();
    let v2 = 0.25 * cov[1][1];
    let mean_nu = 0.005 * (0.5 * mean[1] + 0.5 * v2).exp();
    let sd_nu = mean_nu * (v2.exp() - 1.0).sqrt();
    ([c, sd_c], [mean_nu, sd_nu])
}

impl DvaeFit {
    /// The Kalman smoother at the posterior mean of zeta, given the
    /// pseudo-observations (dense n x n covariances, f64).
    pub fn smooth(&self, pb: &AdvDiff) -> Result<Smoothed> {
        let (c, nu) = physical(self.zeta_mean);
        let m = pb.m_dense(c, nu);
        kalman_dense(
            &m,
            pb.n,
            &pb.m0(),
            pb.sigma_0,
            pb.sigma_u,
            self.sigma_x * self.sigma_x,
            &self.x_mean,
            pb.t,
        )
        .map_err(|e| Error::not_spd("the Kalman smoother's covariance", e))
    }
}

/// Frames `(T, H, n)` to column rows `(T, n, H)` (frame t's column i at row t n + i).
pub fn columns(pb: &AdvDiff, frames: &[f64]) -> Vec<f64> {
    let (n, h) = (pb.n, pb.height);
    let mut out = vec![0.0; frames.len()];
    for t in 0..pb.t {
        for r in 0..h {
            for i in 0..n {
                out[(t * n + i) * h + r] = frames[(t * h + r) * n + i];
            }
        }
    }
    out
}

/// Column rows `(T, n, H)` back to frames `(T, H, n)`.
pub fn uncolumns(pb: &AdvDiff, cols: &[f64]) -> Vec<f64> {
    let (n, h) = (pb.n, pb.height);
    let mut out = vec![0.0; cols.len()];
    for t in 0..pb.t {
        for r in 0..h {
            for i in 0..n {
                out[(t * h + r) * n + i] = cols[(t * n + i) * h + r];
            }
        }
    }
    out
}

struct Net {
    net: Mlp,
    ws: Workspace,
}

/// The level decoder: its parameters (with gradient and Adam state, as an
/// MLP 1 -> J -> 1) and the fused kernel's outputs.
struct Level {
    net: Mlp,
    ldx: wgpu::Buffer,
    gpart: wgpu::Buffer,
}

/// Train the model on `data`. `progress(step, elbo)` is called at each read-back.
pub fn fit(
    ctx: &GpuContext,
    pb: &AdvDiff,
    data: &DvaeData,
    s: &DvaeSettings,
    mut progress: impl FnMut(usize, f64),
) -> Result<DvaeFit> {
    pb.validate()?;
    s.validate()?;
    let (n, tt, h) = (pb.n, pb.t, pb.height);
    let tn = tt * n;
    let oracle = matches!(data, DvaeData::Oracle { .. });
    match data {
        DvaeData::Frames(f) => check_values("frames", f, tt * h * n)?,
        DvaeData::Oracle { x, noise } => {
            check_values("oracle states", x, tn)?;
            if !(noise.is_finite() && *noise > 0.0) {
                return Err(Error::setting(
                    "oracle-noise",
                    noise,
                    "must be a finite, positive standard deviation",
                ));
            }
        }
    }
    let (sx, ns) = if oracle {
        (1, s.samples)
    } else {
        (s.x_samples, s.samples)
    };
    let mut dp = DvaeParams {
        n: n as u32,
        t: tt as u32,
        modes: pb.modes() as u32,
        samples: ns as u32,
        x_samples: sx as u32,
        height: h as u32,
        oracle: oracle as u32,
        step: 0,
        seed_lo: s.seed as u32,
        seed_hi: (s.seed >> 32) as u32,
        stream: crate::rng::streams::DVAE,
        learn: if oracle {
            8
        } else {
            1 | 4 | 8 | if s.learn_sigma_y { 2 } else { 0 }
        },
        dt: pb.dt as f32,
        sigma_u2: (pb.sigma_u * pb.sigma_u) as f32,
        sigma_02: (pb.sigma_0 * pb.sigma_0) as f32,
        inv_norm: 1.0 / tn as f32,
        beta: 1.0,
        gamma: 1.0,
        t_kalman: tt as u32,
        level_hidden: if !oracle && s.arch == DvaeArch::Level {
            s.level_hidden[0] as u32
        } else {
            0
        },
        level0: pb.level(0) as f32,
        dlevel: (pb.level(1) - pb.level(0)) as f32,
        _pad: [0; 1],
    };
    let sx0 = match data {
        DvaeData::Oracle { noise, .. } => *noise,
        _ => s.sigma_x0,
    };
    let zeta_start = match (data, s.zeta_start) {
        (DvaeData::Frames(f), ZetaStart::Frames) => {
            // No first mode to follow (a flat picture): the prior's mean.
            let c = pb.speed_from_frames(f, h).unwrap_or(1.0);
            [(2.0 * (c - 1.0)).clamp(-8.0, 8.0), 0.0]
        }
        _ => [0.0, 0.0],
    };
    let mut theta = vec![0.0; th::LEN];
    theta[th::M1] = zeta_start[0];
    theta[th::M2] = zeta_start[1];
    theta[th::R1] = s.q_sd0.ln();
    theta[th::R2] = s.q_sd0.ln();
    theta[th::SX] = (sx0 * sx0).ln();
    theta[th::SQ] = (s.sigma_q0 * s.sigma_q0).ln();
    theta[th::SY] = (pb.sigma_y * pb.sigma_y).ln();

    let f4 = |k: usize| (k.max(1) * 4) as u64;
    let dp_buf = ctx.upload("dvae.params", &[dp])?;
    let theta_buf = ctx.upload("dvae.theta", &crate::nn::mlp::to_f32(&theta))?;
    let tout = ctx.storage("dvae.tout", f4(th::LEN + stat::LEN))?;
    // A short memory of the squared gradient: q(zeta)'s gradients shrink by
    // orders of magnitude as its sd falls from the prior's to the
    // posterior's, and with beta2 = 0.999 the early ones kept the steps
    // tiny (the sd 7x too wide after 3000 steps, measured).
    let mut ap = AdamParams::new(th::LEN, s.lr_theta);
    ap.beta2 = 0.99;
    let mut theta_adam = Adam::new(ctx, "dvae.theta", ap, &theta_buf, &tout)?;
    let m0: Vec<f64> = pb
        .to_modes(&pb.m0())
        .iter()
        .flat_map(|c| [c[0], c[1]])
        .collect();
    let m0_buf = ctx.upload("dvae.m0", &crate::nn::mlp::to_f32(&m0))?;
    let zs = ctx.storage("dvae.zs", f4(2 * ns))?;
    let work = ctx.storage("dvae.kalman_work", f4(ns * tt * pb.modes() * 6))?;
    let kout = ctx.storage("dvae.kout", f4(4 * ns))?;
    let gx = ctx.storage("dvae.gx", f4(ns * tn))?;
    // Stand-ins for the networks' buffers in oracle mode (two: a buffer may
    // not be bound read-only and read-write in one dispatch).
    let dummy = ctx.storage("dvae.unused", 16)?;
    let dummy_w = ctx.storage("dvae.unused_w", 16)?;

    // The networks (none in oracle mode).
    let level_groups = (sx * tn).div_ceil(crate::cpu::dvae::LEVEL_ROWS);
    let (enc, dec, lev, oracle_x) = match data {
        DvaeData::Frames(frames) => {
            let (ein, eout, erows, din, dout, drows) = match s.arch {
                DvaeArch::Level | DvaeArch::Column => (h, 1, tn, 1, h, sx * tn),
                DvaeArch::Frame => (h * n, n, tt, n, h * n, sx * tt),
            };
            let earch = Arch::mlp(ein, &s.hidden, s.act, eout);
            let enet = Mlp::new(ctx, earch, None, s.seed.wrapping_add(1))?;
            let ews = Workspace::new(ctx, &enet, erows, Loss::External)?;
            ews.set_input(ctx, &columns(pb, frames))?;
            let (dec, lev) = if s.arch == DvaeArch::Level {
                let darch = Arch::mlp(1, &s.level_hidden, Activation::Tanh, 1);
                let net = Mlp::new(ctx, darch, None, s.seed.wrapping_add(2))?;
                let np = net.nparam();
                let lev = Level {
                    net,
                    ldx: ctx.storage("dvae.level_dx", f4(sx * tn))?,
                    gpart: ctx.storage("dvae.level_gpart", f4(level_groups * np))?,
                };
                (None, Some(lev))
            } else {
                let darch = Arch::mlp(din, &s.hidden, s.act, dout);
                let dnet = Mlp::new(ctx, darch, None, s.seed.wrapping_add(2))?;
                let dws = Workspace::new(ctx, &dnet, drows, Loss::External)?;
                (Some(Net { net: dnet, ws: dws }), None)
            };
            (Some(Net { net: enet, ws: ews }), dec, lev, None)
        }
        DvaeData::Oracle { x, .. } => (
            None,
            None,
            None,
            Some(ctx.upload("dvae.oracle_x", &crate::nn::mlp::to_f32(x))?),
        ),
    };
    // The level decoder reads x from a buffer of its own; otherwise x is
    // the decoder's input.
    let own_x = if lev.is_some() {
        Some(ctx.storage("dvae.xs", f4(sx * tn))?)
    } else {
        None
    };
    let xs: &wgpu::Buffer = match (&dec, &oracle_x, &own_x) {
        (_, _, Some(x)) => x,
        (Some(d), _, None) => &d.ws.x,
        (None, Some(x), _) => x,
        _ => unreachable!("frames have a decoder, oracle mode has x"),
    };
    let mu = enc.as_ref().map_or(&dummy, |e| e.ws.output());
    let frames_buf = enc.as_ref().map_or(&dummy, |e| &e.ws.x);
    let dec_out = dec.as_ref().map_or(&dummy, |d| d.ws.output());
    let dec_delta = dec.as_ref().map_or(&dummy, |d| d.ws.output_grad());
    let dxdec = match (&dec, &lev) {
        (Some(d), _) => &d.ws.dx,
        (None, Some(l)) => &l.ldx,
        _ => &dummy,
    };
    let mugrad = enc.as_ref().map_or(&dummy_w, |e| e.ws.output_grad());
    let rowsq = ctx.storage("dvae.rowsq", f4(sx * tn))?;

    let sample: Dispatch = ctx.prepare(
        &args::DvaeSample {
            dp: &dp_buf,
            theta: &theta_buf,
            mu,
            xs,
            zs: &zs,
        },
        [(sx * tn).max(ns), 1],
    )?;
    let recon: Dispatch = ctx.prepare(
        &args::DvaeRecon {
            dp: &dp_buf,
            theta: &theta_buf,
            dec_out,
            frames: frames_buf,
            dec_delta,
            rowsq: &rowsq,
        },
        [sx * tn, 1],
    )?;
    let level = match &lev {
        Some(l) => Some((
            ctx.prepare(
                &args::DvaeLevel {
                    dp: &dp_buf,
                    theta: &theta_buf,
                    xs,
                    frames: frames_buf,
                    rowsq: &rowsq,
                    dec_p: &l.net.params,
                    ldx: &l.ldx,
                    gpart: &l.gpart,
                },
                [level_groups, 1],
            )?,
            ctx.prepare(
                &args::DvaeLevelGrad {
                    dp: &dp_buf,
                    gpart: &l.gpart,
                    dgrad: &l.net.grad,
                },
                [l.net.nparam(), 1],
            )?,
        )),
        None => None,
    };
    let kalman: Dispatch = ctx.prepare(
        &args::KalmanLoglik {
            dp: &dp_buf,
            theta: &theta_buf,
            m0: &m0_buf,
            xs,
            zs: &zs,
            work: &work,
            kout: &kout,
        },
        [ns, 1],
    )?;
    let kalman_gx: Dispatch = ctx.prepare(
        &args::KalmanGradX {
            dp: &dp_buf,
            work: &work,
            gx: &gx,
        },
        [ns, 1],
    )?;
    let assemble: Dispatch = ctx.prepare(
        &args::DvaeAssemble {
            dp: &dp_buf,
            theta: &theta_buf,
            rowsq: &rowsq,
            kout: &kout,
            gxk: &gx,
            dxdec,
            mugrad,
            tout: &tout,
        },
        [1, 1],
    )?;

    let mut enc = enc;
    let mut dec = dec;
    let mut lev = lev;
    let start = Instant::now();
    let mut trace = Vec::new();
    let mut interrupted = false;
    let mut done = 0;
    for step in 0..s.steps {
        dp.step = step as u32;
        dp.gamma = s.gamma_at(step) as f32;
        if !oracle {
            let f = step as f64 / s.steps as f64;
            let sx_on = f >= s.learn_sigma_x_from;
            let z_on = f >= s.learn_zeta_from;
            dp.learn = (dp.learn & !(1 | 8)) | sx_on as u32 | (8 * z_on as u32);
            dp.t_kalman = if z_on {
                tt as u32
            } else {
                s.anchor_frames as u32
            };
        }
        ctx.write(&dp_buf, &[dp]);
        let a = (step + 1) as u32;
        theta_adam.set_step(ctx, a, s.lr_at(s.lr_theta, step));
        for net in [enc.as_mut(), dec.as_mut()].into_iter().flatten() {
            net.net.prepare_adam(ctx, a, s.lr_at(s.lr, step));
        }
        if let Some(l) = lev.as_mut() {
            l.net.prepare_adam(ctx, a, s.lr_at(s.lr, step));
        }
        let mut encoder = ctx.encoder("dvae.step");
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            if let Some(e) = &enc {
                e.ws.encode_forward(&mut pass);
            }
            sample.record(&mut pass);
            if let Some(d) = &dec {
                d.ws.encode_forward(&mut pass);
                recon.record(&mut pass);
                d.ws.encode_backward(&mut pass, true);
            }
            if let Some((fwd, grad)) = &level {
                fwd.record(&mut pass);
                grad.record(&mut pass);
            }
            kalman.record(&mut pass);
            kalman_gx.record(&mut pass);
            assemble.record(&mut pass);
            if let Some(e) = &enc {
                e.ws.encode_backward(&mut pass, false);
                e.net.encode_adam(&mut pass);
            }
            if let Some(d) = &dec {
                d.net.encode_adam(&mut pass);
            }
            if let Some(l) = &lev {
                l.net.encode_adam(&mut pass);
            }
            theta_adam.record(&mut pass);
        }
        ctx.queue.submit(Some(encoder.finish()));
        done = step + 1;
        if done % s.report_every == 0 || done == s.steps {
            // The terms are those of this step's draws, before its update.
            let v: Vec<f64> = ctx
                .read::<f32>(&tout, 0, th::LEN + stat::LEN)?
                .into_iter()
                .map(f64::from)
                .collect();
            let o = th::LEN;
            let p = TracePoint {
                step: done,
                elbo: v[o + stat::ELBO],
                recon: v[o + stat::RECON],
                kalman: v[o + stat::KALMAN],
                entropy: v[o + stat::ENTROPY],
                kl: v[o + stat::KL],
            };
            if !p.elbo.is_finite() {
                return Err(Error::Diverged(format!(
                    "Phi-DVAE: the ELBO is {} at step {done} (reconstruction {}, Kalman {}); lower --lr / --lr-theta or raise --sigma-x0",
                    p.elbo, p.recon, p.kalman
                )));
            }
            trace.push(p);
            progress(done, p.elbo);
            if crate::interrupt::requested() {
                interrupted = true;
                break;
            }
        }
    }
    ctx.check("Phi-DVAE training")?;
    let theta: Vec<f64> = ctx
        .read::<f32>(&theta_buf, 0, th::LEN)?
        .into_iter()
        .map(f64::from)
        .collect();
    let seconds = start.elapsed().as_secs_f64();
    let l = crate::cpu::dvae::chol(&theta);
    let zeta_cov = [
        [l[0] * l[0], l[0] * l[1]],
        [l[0] * l[1], l[1] * l[1] + l[2] * l[2]],
    ];
    // The encoder's means and the decoder's frames at them.
    let (x_mean, recon, encoder, decoder) = match (&enc, data) {
        (Some(e), _) => {
            // Forward the encoder once more: the last step's Adam moved it.
            let mut cmd = ctx.encoder("dvae.predict");
            {
                let mut pass = cmd.begin_compute_pass(&Default::default());
                e.ws.encode_forward(&mut pass);
            }
            ctx.submit_wait(cmd)?;
            let x: Vec<f64> = ctx
                .read::<f32>(e.ws.output(), 0, tn)?
                .into_iter()
                .map(f64::from)
                .collect();
            let (out, darch, dparams) = match (&dec, &lev) {
                (Some(d), _) => {
                    let xin: Vec<f64> = (0..sx).flat_map(|_| x.iter().copied()).collect();
                    (
                        d.ws.predict(ctx, &xin)?,
                        d.net.arch.clone(),
                        d.net.read_params(ctx)?,
                    )
                }
                (None, Some(l)) => {
                    let p = l.net.read_params(ctx)?;
                    (
                        crate::cpu::dvae::level_decode(&dp, &p, &x),
                        l.net.arch.clone(),
                        p,
                    )
                }
                _ => unreachable!("frames have a decoder"),
            };
            let frames = uncolumns(pb, &out[..tn * h]);
            (
                x,
                Some(frames),
                Some((e.net.arch.clone(), e.net.read_params(ctx)?)),
                Some((darch, dparams)),
            )
        }
        (None, DvaeData::Oracle { x, .. }) => (x.clone(), None, None, None),
        _ => unreachable!("frames have both networks"),
    };
    let zeta_mean = [theta[th::M1], theta[th::M2]];
    let sigma_x = (0.5 * theta[th::SX]).exp();
    let (zeta_cov_calibrated, inflation) =
        calibrate_cov(pb, &x_mean, zeta_mean, sigma_x * sigma_x, zeta_cov);
    Ok(DvaeFit {
        zeta_mean,
        zeta_cov,
        zeta_start,
        zeta_cov_calibrated,
        inflation,
        sigma_x: (0.5 * theta[th::SX]).exp(),
        sigma_q: (0.5 * theta[th::SQ]).exp(),
        sigma_y: (0.5 * theta[th::SY]).exp(),
        theta,
        trace,
        x_mean,
        recon,
        encoder,
        decoder,
        seconds,
        steps: done,
        interrupted,
    })
}

/// Newey and West's lag for `t` frames, `floor(4 (t / 100)^(2/9))` (3 for
/// the spec's 40), at least 1.
pub fn newey_west_lag(t: usize) -> usize {
    ((4.0 * (t as f64 / 100.0).powf(2.0 / 9.0)).floor() as usize).max(1)
}

/// q(zeta)'s covariance, each variance scaled up by the ratio of the
/// sandwich's (`cpu::kalman::sandwich_cov` at the encoder's means) where
/// that is larger; q's correlation is kept, and a sandwich narrower than q
/// (a noisy estimate from 40 frames) leaves q as it is. Measured on seed 2
/// of the table (README): nu's error was 5.4 q-sd and 2.2 sandwich-sd.
pub fn calibrate_cov(
    pb: &AdvDiff,
    x: &[f64],
    zeta: [f64; 2],
    sigma_x2: f64,
    cov: [[f64; 2]; 2],
) -> ([[f64; 2]; 2], [f64; 2]) {
    let (sw, _) =
        crate::cpu::kalman::sandwich_cov(pb, x, zeta, sigma_x2, cov, newey_west_lag(pb.t));
    let f = [0, 1].map(|i| {
        let r = sw[i][i] / cov[i][i];
        if r.is_finite() {
            r.max(1.0)
        } else {
            1.0
        }
    });
    let mut out = cov;
    for i in 0..2 {
        for j in 0..2 {
            out[i][j] *= (f[i] * f[j]).sqrt();
        }
    }
    (out, f)
}

fn check_values(what: &str, v: &[f64], want: usize) -> Result<()> {
    if v.len() != want {
        return Err(Error::setting(
            what,
            format!("{} values", v.len()),
            format!("expected {want}"),
        ));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::setting(
            what,
            format!("value {} at index {i}", v[i]),
            "every value must be finite",
        ));
    }
    Ok(())
}
