//! The Gaussian reparameterisation block shared by VI and by the Gaussian
//! heads of networks: noise, samples `xi = m + L eps`, the KL to N(0, I)
//! and the backward pass `dL/dtheta`, as prepared dispatches of the
//! `shaders/infer/vi.wgsl` kernels. One Gaussian (VI: `per_row = 0`, every
//! sample shares theta) or one per row (`per_row = 1`, a batch of heads).

use crate::error::Result;
use crate::gpu::{args, Dispatch, GpuContext, KernelId};
use crate::infer::vi::{Family, ViParams};

/// The buffers a [`GaussianBlock`] reads and writes (owned by its user).
pub struct GaussianBuffers<'a> {
    /// Variational parameters (one block, or one per row).
    pub theta: &'a wgpu::Buffer,
    /// Samples out (`samples x d`).
    pub xi: &'a wgpu::Buffer,
    /// d loss / d xi in (`samples x d`), written by the consumer of the samples.
    pub gxi: &'a wgpu::Buffer,
    /// d loss / d theta out (accumulated: the KL term, then the samples' term).
    pub grad: &'a wgpu::Buffer,
    /// The KL: scalars of VI (`[0]`), or one per row.
    pub kl: &'a wgpu::Buffer,
}

/// Noise, sample, KL and gradient dispatches of one family.
pub struct GaussianBlock {
    pub family: Family,
    pub d: usize,
    /// The settings as last written to the device.
    pub params: ViParams,
    /// `ViParams` on the device (a read-only storage buffer: lavapipe
    /// recompiles a shader whenever a uniform it reads changes, and the step
    /// counter changes every step).
    pub params_buf: wgpu::Buffer,
    /// Standard normal noise (`samples x noise_dim`).
    pub eps: wgpu::Buffer,
    noise: Dispatch,
    sample: Dispatch,
    kl: Dispatch,
    grad: Dispatch,
}

impl GaussianBlock {
    pub fn new(
        ctx: &GpuContext,
        label: &str,
        family: Family,
        params: ViParams,
        b: GaussianBuffers<'_>,
    ) -> Result<Self> {
        let (d, samples) = (params.d as usize, params.samples as usize);
        let rows = if params.per_row == 1 { samples } else { 1 };
        let e = family.noise_dim(d);
        let eps = ctx.storage(&format!("{label}.eps"), (samples * e * 4) as u64)?;
        let params_buf = ctx.upload(&format!("{label}.params"), &[params])?;
        let p = &params_buf;
        let noise = ctx.prepare(
            &args::ViNoise {
                params: p,
                eps: &eps,
            },
            [samples * e, 1],
        )?;
        let sample = ctx.prepare(
            &args::ViSample {
                params: p,
                theta: b.theta,
                eps: &eps,
                xi: b.xi,
            },
            [samples * d, 1],
        )?;
        let kl_args = args::ViKl {
            params: p,
            theta: b.theta,
            grad: b.grad,
            scalars: b.kl,
        };
        let kl = match family {
            Family::LowRank { .. } => ctx.prepare_as(KernelId::ViKlLowRank, &kl_args, [rows, 1])?,
            _ => ctx.prepare(&kl_args, [rows, 1])?,
        };
        let grad = ctx.prepare(
            &args::ViGrad {
                params: p,
                theta: b.theta,
                eps: &eps,
                gxi: b.gxi,
                grad: b.grad,
            },
            [rows * family.nparam(d), 1],
        )?;
        Ok(GaussianBlock {
            family,
            d,
            params,
            params_buf,
            eps,
            noise,
            sample,
            kl,
            grad,
        })
    }

    /// Use the noise of `step` from the next recorded sample on.
    pub fn set_step(&mut self, ctx: &GpuContext, step: u32) {
        self.params.step = step;
        ctx.write(&self.params_buf, &[self.params]);
    }

    /// Noise and samples.
    pub fn record_sample(&self, pass: &mut wgpu::ComputePass<'_>) {
        self.noise.record(pass);
        self.sample.record(pass);
    }

    /// The KL (and its gradient), then the samples' gradient into theta.
    pub fn record_backward(&self, pass: &mut wgpu::ComputePass<'_>) {
        self.kl.record(pass);
        self.grad.record(pass);
    }

    /// Dispatches per sample + backward.
    pub const DISPATCHES: usize = 4;
}
