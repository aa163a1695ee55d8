//! Residual-based inversion (methods.md B8): the posterior of the latent
//! field's coefficients and of the solution together,
//! `p(xi, u | y) ~ p(y | u) p(r_hat = 0 | u, z(xi)) p(u) p(xi)`,
//! with no solver in the loop: the physics enters as the virtual
//! observation `A(z) u - b = 0` with noise `sigma_r`, the data with
//! `sigma_n`, and the two noise levels weigh them.
//!
//! The Gaussian family is over `x = (xi, v)`, `u = gamma A0^{-1} v` (`A0`
//! the kappa = 1 operator, applied by sine transforms): a fixed linear map,
//! so q is a Gaussian over `(xi, u)`, and the raw residual's Hessian in `v`
//! is `gamma^2 (A A0^{-1})^2 / sigma_r^2`, near a multiple of the identity
//! (in `u` it is `A^2 / sigma_r^2`, condition ~ n^4). `p(u)` is flat.
//! One step: noise and samples of q (the VI kernels), `residual_joint`
//! (shaders/infer/residual_vi.wgsl), q's gradient and KL, the ELBO, Adam:
//! one command encoder.

use crate::error::{Error, Result};
use crate::gpu::layout::{JointParams, PdeParams};
use crate::gpu::{args, Dispatch, GpuContext};
use crate::infer::adam::{Adam, AdamParams};
use crate::infer::gaussian::{GaussianBlock, GaussianBuffers};
use crate::infer::vi::{lr_at, Family, FitResult, FitSettings, ViParams, HISTORY};
use crate::physics::problem::{Problem, ProblemKind};

/// The scale of `u = gamma A0^{-1} v`: the load of one node (darcy2d `h^2`;
/// poisson1d `h sigma_f`), so that `v` is O(1) at the posterior.
pub fn joint_gamma(pb: &Problem) -> f64 {
    match pb.kind {
        ProblemKind::Darcy2d => pb.h() * pb.h(),
        ProblemKind::Poisson1d => 10.0 * pb.h(),
    }
}

/// The sine matrix and `gamma / lambda` per mode of the problem's `A0`.
pub fn joint_transform(pb: &Problem) -> (Vec<f64>, Vec<f64>) {
    let two_d = pb.kind == ProblemKind::Darcy2d;
    (
        crate::cpu::residual::dst_matrix(pb.n),
        crate::cpu::residual::joint_spectrum(pb.n, two_d, joint_gamma(pb)),
    )
}

/// The kernel's physics parameter block.
pub fn joint_pde(pb: &Problem, batch: usize, nsens: usize) -> PdeParams {
    let mut p = PdeParams::new(pb.n, pb.nunk(), pb.ncoef(), batch, pb.d);
    if pb.kind == ProblemKind::Poisson1d {
        p.kl_linear = 1;
        p.kl_scale = pb.h() as f32;
    }
    p.nsens = nsens as u32;
    p.noise_precision = (1.0 / (pb.sigma_n * pb.sigma_n)) as f32;
    p
}

/// Variational inference over (xi, v) with the residual likelihood.
pub struct JointVi {
    pub pb: Problem,
    pub family: Family,
    pub dim: usize,
    pub samples: usize,
    pub sigma_r: f64,
    /// sigma_r starts this many times larger and shrinks geometrically to
    /// sigma_r over the first half of the steps (1 = no annealing): a loose
    /// residual first lets q find the region, then the physics is tightened.
    pub anneal: f64,
    jp: JointParams,
    jp_buf: wgpu::Buffer,
    pub gaussian: GaussianBlock,
    pub adam: Adam,
    pub theta: wgpu::Buffer,
    pub grad: wgpu::Buffer,
    pub scalars: wgpu::Buffer,
    joint: Dispatch,
    elbo: Dispatch,
    _bufs: Vec<wgpu::Buffer>,
}

impl JointVi {
    #[allow(clippy::too_many_arguments, reason = "the settings of one inference")]
    pub fn new(
        ctx: &GpuContext,
        pb: &Problem,
        family: Family,
        samples: usize,
        sensors: &[usize],
        y: &[f64],
        sigma_r: f64,
        seed: u64,
    ) -> Result<Self> {
        if !(sigma_r.is_finite() && sigma_r > 0.0) {
            return Err(Error::setting(
                "sigma-r",
                sigma_r,
                "must be a positive, finite noise level of the residual (in the load's units: h^2 per node for darcy2d)",
            ));
        }
        if samples == 0 {
            return Err(Error::setting(
                "samples",
                0,
                "need at least one sample per step",
            ));
        }
        if sensors.len() != y.len() {
            return Err(Error::setting(
                "obs",
                y.len(),
                format!("{} sensors but {} readings", sensors.len(), y.len()),
            ));
        }
        let (nu, nc) = (pb.nunk(), pb.ncoef());
        if 2 * nu < nc {
            return Err(Error::setting(
                "n",
                pb.n,
                "grid too small for the joint kernel",
            ));
        }
        let dim = pb.d + nu;
        if let Family::LowRank { rank } = family {
            if rank > dim {
                return Err(Error::setting(
                    "rank",
                    rank,
                    format!("must not exceed d + nunk = {dim}"),
                ));
            }
        }
        let pp = joint_pde(pb, samples, sensors.len());
        let u_pde = ctx.uniform("joint.pde", &pp);
        let jp = JointParams::new(pb, sensors.len(), sigma_r);
        let to32 = crate::nn::mlp::to_f32;
        let jp_buf = ctx.upload("joint.params", &[jp])?;
        let jp_keep = jp_buf.clone();
        let basis = ctx.upload("joint.basis", &to32(&pb.basis()))?;
        let (dst, spec) = joint_transform(pb);
        let dst = ctx.upload("joint.dst", &to32(&dst))?;
        let spec = ctx.upload("joint.spec", &to32(&spec))?;
        let sens: Vec<u32> = sensors.iter().map(|&k| k as u32).collect();
        let sens = ctx.upload("joint.sensors", &sens)?;
        let data = ctx.upload("joint.data", &to32(y))?;
        let xs = ctx.storage("joint.xs", (samples * dim * 4) as u64)?;
        let gxs = ctx.storage("joint.gxs", (samples * dim * 4) as u64)?;
        let nll = ctx.storage("joint.nll", (samples.max(4) * 4) as u64)?;
        let work = ctx.storage("joint.work", (samples * (nc + 5 * nu) * 4) as u64)?;
        let joint = ctx.prepare(
            &args::ResidualJoint {
                params: &u_pde,
                jp: &jp_buf,
                basis: &basis,
                spec: &spec,
                dst: &dst,
                sensors: &sens,
                data: &data,
                xs: &xs,
                gxs: &gxs,
                nll: &nll,
                work: &work,
            },
            [samples, 1],
        )?;
        let np = family.nparam(dim);
        let mut vp = ViParams::new(family, dim, samples, seed, sensors.len(), pb.sigma_n);
        // The ELBO's constants: the data's and the residual's normalisers.
        vp.log_norm = (vp.log_norm as f64
            - 0.5 * nu as f64 * (2.0 * std::f64::consts::PI * sigma_r * sigma_r).ln())
            as f32;
        let mut ap = AdamParams::new(np, 0.01);
        ap.beta2 = 0.99;
        let theta = ctx.upload("joint.theta", &to32(&init_theta(pb, family, sigma_r, seed)))?;
        let grad = ctx.storage("joint.grad", (np * 4) as u64)?;
        let scalars = ctx.storage("joint.scalars", ((4 + HISTORY) * 4) as u64)?;
        let gaussian = GaussianBlock::new(
            ctx,
            "joint",
            family,
            vp,
            GaussianBuffers {
                theta: &theta,
                xi: &xs,
                gxi: &gxs,
                grad: &grad,
                kl: &scalars,
            },
        )?;
        let elbo = ctx.prepare(
            &args::ViElbo {
                params: &gaussian.params_buf,
                misfit: &nll,
                scalars: &scalars,
            },
            [1, 1],
        )?;
        let adam = Adam::new(ctx, "joint", ap, &theta, &grad)?;
        Ok(JointVi {
            pb: pb.clone(),
            family,
            dim,
            samples,
            sigma_r,
            anneal: 1.0,
            jp,
            jp_buf: jp_keep,
            gaussian,
            adam,
            theta,
            grad,
            scalars,
            joint,
            elbo,
            _bufs: vec![
                u_pde, jp_buf, basis, dst, spec, sens, data, xs, gxs, nll, work,
            ],
        })
    }

    /// The residual's noise level at step `t` of `steps` (annealing).
    pub fn sigma_at(&self, t: usize, steps: usize) -> f64 {
        let half = (steps / 2).max(1) as f64;
        let left = (1.0 - t as f64 / half).max(0.0);
        self.sigma_r * self.anneal.max(1.0).powf(left)
    }

    fn set_sigma(&mut self, ctx: &GpuContext, sigma: f64) {
        let v = (1.0 / (sigma * sigma)) as f32;
        if v != self.jp.sigma_inv2 {
            self.jp.sigma_inv2 = v;
            ctx.write(&self.jp_buf, &[self.jp]);
        }
    }

    /// One step: samples, the joint likelihood and its gradient, q's
    /// gradient and KL, the ELBO, Adam; one encoder, nothing read back.
    pub fn step(&mut self, ctx: &GpuContext, step: u32, lr: f64) {
        self.gaussian.set_step(ctx, step);
        self.adam.set_step(ctx, step + 1, lr);
        let mut enc = ctx.encoder("pdevi.joint.step");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            self.gaussian.record_sample(&mut pass);
            self.joint.record(&mut pass);
            self.gaussian.record_backward(&mut pass);
            self.elbo.record(&mut pass);
            self.adam.record(&mut pass);
        }
        ctx.queue.submit([enc.finish()]);
    }

    /// Dispatches per step.
    pub fn dispatches_per_step(&self) -> usize {
        GaussianBlock::DISPATCHES + 1 + 1 + 1
    }

    pub fn read_theta(&self, ctx: &GpuContext) -> Result<Vec<f64>> {
        let v: Vec<f32> = ctx.read(&self.theta, 0, self.family.nparam(self.dim))?;
        Ok(v.into_iter().map(f64::from).collect())
    }

    /// Fit for `s.steps` steps (the ELBO read back every `s.report_every`),
    /// sigma_r annealed as [`JointVi::sigma_at`] says.
    pub fn fit(
        &mut self,
        ctx: &GpuContext,
        s: &FitSettings,
        progress: impl FnMut(usize, f64),
    ) -> Result<FitResult> {
        let scalars = self.scalars.clone();
        let sigma_r = self.sigma_r;
        let (trace, seconds, interrupted) = crate::infer::vi::step_loop(
            ctx,
            s,
            &scalars,
            |t| {
                let sig = self.sigma_at(t, s.steps);
                self.set_sigma(ctx, sig);
                self.step(ctx, t as u32, lr_at(s, t));
            },
            progress,
            |step, e| {
                Error::Diverged(format!(
                    "the residual-likelihood ELBO became {e} at step {step}: lower the learning rate (--lr, now {:.3e}) or loosen --sigma-r (now {sigma_r:e})",
                    lr_at(s, step)
                ))
            },
        )?;
        Ok(FitResult {
            theta: self.read_theta(ctx)?,
            trace,
            seconds,
            mean_cg_iters: 0.0,
            mean_cg_tol: None,
            unconverged_solves: 0,
            interrupted,
        })
    }

    /// The marginal of xi (mean, d x d covariance) under q.
    pub fn xi_marginal(&self, theta: &[f64]) -> (Vec<f64>, Vec<f64>) {
        marginal(self.family, self.dim, self.pb.d, theta)
    }

    /// Mean and standard deviation of u under q, from `count` draws of q
    /// mapped through `u = gamma A0^{-1} v` in f64.
    pub fn u_moments(&self, theta: &[f64], count: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
        u_moments(&self.pb, self.family, self.dim, theta, count, seed)
    }
}

/// q's start: xi at the prior (mean 0, sd 1); v at the kappa = 1 solution
/// of the prior mean field with sd sigma_r / gamma (the residual's scale).
pub fn init_theta(pb: &Problem, family: Family, sigma_r: f64, seed: u64) -> Vec<f64> {
    let (d, nu) = (pb.d, pb.nunk());
    let dim = d + nu;
    let gamma = joint_gamma(pb);
    let mut t = family.init_theta(dim, seed);
    if pb.kind == ProblemKind::Darcy2d {
        // A0 u0 = b = h^2 at kappa = 1, so v0 = h^2 / gamma = 1.
        for v in t[d..dim].iter_mut() {
            *v = pb.h() * pb.h() / gamma;
        }
    }
    let lsd_v = (sigma_r / gamma).ln();
    let (ls_off, ls_len) = match family {
        Family::MeanField => (dim, dim),
        Family::FullRank => (dim, 0),
        Family::LowRank { rank } => (dim + dim * rank, dim),
    };
    if ls_len > 0 {
        for i in d..dim {
            t[ls_off + i] = lsd_v;
        }
    } else {
        // Full rank: the log-diagonal of L.
        for i in d..dim {
            t[ls_off + i * dim + i] = lsd_v;
        }
    }
    t
}

/// The first `d` coordinates' marginal of a Gaussian in the family's layout
/// (the leading block of [`Family::moments`]).
pub fn marginal(family: Family, dim: usize, d: usize, theta: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (m, cov) = family.moments(dim, theta);
    let mut c = vec![0.0; d * d];
    for i in 0..d {
        c[i * d..(i + 1) * d].copy_from_slice(&cov[i * dim..i * dim + d]);
    }
    (m[..d].to_vec(), c)
}

/// One draw of q in the family's layout from standard normals `e`
/// (`noise_dim` of them).
fn draw(family: Family, dim: usize, theta: &[f64], e: &[f64]) -> Vec<f64> {
    let mut x = theta[..dim].to_vec();
    match family {
        Family::MeanField => {
            for i in 0..dim {
                x[i] += theta[dim + i].exp() * e[i];
            }
        }
        Family::FullRank => {
            for i in 0..dim {
                let row = &theta[dim + i * dim..dim + i * dim + i];
                x[i] += row.iter().zip(e).map(|(a, b)| a * b).sum::<f64>()
                    + theta[dim + i * dim + i].exp() * e[i];
            }
        }
        Family::LowRank { rank } => {
            for i in 0..dim {
                let w = &theta[dim + i * rank..dim + (i + 1) * rank];
                x[i] += w.iter().zip(e).map(|(a, b)| a * b).sum::<f64>()
                    + theta[dim + dim * rank + i].exp() * e[rank + i];
            }
        }
    }
    x
}

/// Mean and sd of u = gamma A0^{-1} v over `count` draws of q.
pub fn u_moments(
    pb: &Problem,
    family: Family,
    dim: usize,
    theta: &[f64],
    count: usize,
    seed: u64,
) -> (Vec<f64>, Vec<f64>) {
    let (d, nu) = (pb.d, pb.nunk());
    let two_d = pb.kind == ProblemKind::Darcy2d;
    let (dst, spec) = joint_transform(pb);
    let nd = family.noise_dim(dim);
    let mut s1 = vec![0.0; nu];
    let mut s2 = vec![0.0; nu];
    let count = count.max(2);
    for c in 0..count {
        let e = crate::rng::normals(seed, crate::rng::streams::PREDICTIVE, c as u32, nd);
        let x = draw(family, dim, theta, &e);
        let u = crate::cpu::residual::joint_t(pb.n, two_d, &dst, &spec, &x[d..]);
        for k in 0..nu {
            s1[k] += u[k];
            s2[k] += u[k] * u[k];
        }
    }
    let n = count as f64;
    let mean: Vec<f64> = s1.iter().map(|v| v / n).collect();
    let sd = s2
        .iter()
        .zip(&mean)
        .map(|(q, m)| ((q / n - m * m) * n / (n - 1.0)).max(0.0).sqrt())
        .collect();
    (mean, sd)
}

/// The exact joint posterior of (xi, v) for poisson1d (linear: Gaussian
/// for every sigma_r): precision `[[I + L^T L / s_r^2, -gamma L^T / s_r^2],
/// [-gamma L / s_r^2, gamma^2 I / s_r^2 + T^T P^T P T / s_n^2]]` with
/// `b = L xi`, `A T = gamma I`; returns (mean, covariance), row-major.
pub fn poisson_joint_exact(pb: &Problem, y: &[f64], sigma_r: f64) -> Result<(Vec<f64>, Vec<f64>)> {
    if pb.kind != ProblemKind::Poisson1d {
        return Err(Error::setting(
            "problem",
            pb.kind.name(),
            "the closed-form joint posterior is poisson1d's (linear)",
        ));
    }
    let (d, nu) = (pb.d, pb.nunk());
    let dim = d + nu;
    let gamma = joint_gamma(pb);
    let basis = pb.basis();
    let h = pb.h();
    // L[c][k] = h basis[k][c].
    let l = |c: usize, k: usize| h * basis[k * nu + c];
    let (dst, spec) = joint_transform(pb);
    // Columns of T at the sensors: (P T)[s][j] = T[sensor_s][j].
    let ns = pb.sensors.len();
    let mut pt = vec![0.0; ns * nu];
    for j in 0..nu {
        let mut e = vec![0.0; nu];
        e[j] = 1.0;
        let t = crate::cpu::residual::joint_t(pb.n, false, &dst, &spec, &e);
        for (s, &k) in pb.sensors.iter().enumerate() {
            pt[s * nu + j] = t[k];
        }
    }
    let (sr2, sn2) = (sigma_r * sigma_r, pb.sigma_n * pb.sigma_n);
    let mut prec = vec![0.0; dim * dim];
    for a in 0..d {
        for b in 0..d {
            prec[a * dim + b] =
                (0..nu).map(|c| l(c, a) * l(c, b)).sum::<f64>() / sr2 + f64::from(a == b);
        }
        for j in 0..nu {
            prec[a * dim + d + j] = -gamma * l(j, a) / sr2;
            prec[(d + j) * dim + a] = -gamma * l(j, a) / sr2;
        }
    }
    for i in 0..nu {
        for j in 0..nu {
            prec[(d + i) * dim + d + j] = (0..ns)
                .map(|s| pt[s * nu + i] * pt[s * nu + j])
                .sum::<f64>()
                / sn2
                + if i == j { gamma * gamma / sr2 } else { 0.0 };
        }
    }
    let cov = crate::math::linalg::spd_inverse(&prec, dim)
        .map_err(|e| Error::not_spd("the joint posterior precision", e))?
        .0;
    let mut lin = vec![0.0; dim];
    for j in 0..nu {
        lin[d + j] = (0..ns).map(|s| pt[s * nu + j] * y[s]).sum::<f64>() / sn2;
    }
    let mean = (0..dim)
        .map(|a| (0..dim).map(|b| cov[a * dim + b] * lin[b]).sum())
        .collect();
    Ok((mean, cov))
}
