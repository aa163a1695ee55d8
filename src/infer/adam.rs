//! Adam(W): the settings shared by the kernels (`shaders/infer/adam.wgsl`)
//! and their CPU mirror (`cpu::infer::vi::adam_step`), and the optimiser
//! state on the device.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{args, Dispatch, GpuContext};

/// `AdamParams` of shaders/infer/adam.wgsl (layout checked by tests/layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq)]
pub struct AdamParams {
    pub n: u32,
    /// 1-based step (bias correction).
    pub step: u32,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// AdamW's decoupled weight decay (0 for Adam).
    pub weight_decay: f32,
    /// Multiplies the gradient (1 = as is).
    pub grad_scale: f32,
    /// `grad_clip`: the largest gradient norm let through (0 = no clipping).
    pub clip_norm: f32,
    pub _pad: [u32; 3],
}

impl AdamParams {
    pub fn new(n: usize, lr: f64) -> Self {
        AdamParams {
            n: n as u32,
            step: 1,
            lr: lr as f32,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            grad_scale: 1.0,
            clip_norm: 0.0,
            _pad: [0; 3],
        }
    }
}

/// Adam(W) on the device for one flat parameter buffer: the settings, both
/// moments, the clipping scalars and the prepared dispatches. One type for
/// every optimised quantity (variational parameters, network weights).
pub struct Adam {
    pub settings: AdamParams,
    /// `AdamParams` on the device (written by [`Adam::set_step`]).
    settings_buf: wgpu::Buffer,
    m1: wgpu::Buffer,
    m2: wgpu::Buffer,
    /// `[0]` clipping factor, `[1]` gradient norm of the last step.
    pub clip: wgpu::Buffer,
    step: Dispatch,
    step_clipped: Dispatch,
    grad_clip: Dispatch,
}

impl Adam {
    /// The moments and the clip state, for checkpoints.
    pub fn state_buffers(&self) -> crate::output::checkpoint::Buffers<'_> {
        vec![
            ("adam.m1", &self.m1),
            ("adam.m2", &self.m2),
            ("adam.clip", &self.clip),
        ]
    }

    /// The optimiser of `params` (`settings.n` floats) driven by `grad`.
    pub fn new(
        ctx: &GpuContext,
        label: &str,
        settings: AdamParams,
        params: &wgpu::Buffer,
        grad: &wgpu::Buffer,
    ) -> Result<Self> {
        let n = settings.n as usize;
        let m1 = ctx.storage(&format!("{label}.adam.m"), (n * 4) as u64)?;
        let m2 = ctx.storage(&format!("{label}.adam.v"), (n * 4) as u64)?;
        let clip = ctx.upload(&format!("{label}.adam.clip"), &[1.0f32, 0.0])?;
        let settings_buf = ctx.uniform(&format!("{label}.adam.params"), &settings);
        let a = args::AdamStepClipped {
            params: &settings_buf,
            grad,
            param: params,
            m1: &m1,
            m2: &m2,
            clip: &clip,
        };
        let step_clipped = ctx.prepare(&a, [n, 1])?;
        let step = ctx.prepare(
            &args::AdamStep {
                params: a.params,
                grad,
                param: params,
                m1: &m1,
                m2: &m2,
            },
            [n, 1],
        )?;
        let grad_clip = ctx.prepare(
            &args::GradClip {
                params: &settings_buf,
                grad,
                clip: &clip,
            },
            [1, 1],
        )?;
        Ok(Adam {
            settings,
            settings_buf,
            m1,
            m2,
            clip,
            step,
            step_clipped,
            grad_clip,
        })
    }

    /// Zero both moments (after the parameters are replaced).
    pub fn reset(&self, ctx: &GpuContext) {
        let zeros = vec![0f32; self.settings.n as usize];
        ctx.write(&self.m1, &zeros);
        ctx.write(&self.m2, &zeros);
    }

    /// Set the 1-based step and learning rate of the next recorded step and
    /// upload the settings (call once per step, before recording it).
    pub fn set_step(&mut self, ctx: &GpuContext, step: u32, lr: f64) {
        self.settings.step = step;
        self.settings.lr = lr as f32;
        ctx.write(&self.settings_buf, &[self.settings]);
    }

    /// Record gradient clipping (when `clip_norm > 0`) and one step.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        if self.settings.clip_norm > 0.0 {
            self.grad_clip.record(pass);
            self.step_clipped.record(pass);
        } else {
            self.step.record(pass);
        }
    }

    /// Dispatches per recorded step.
    pub fn dispatches(&self) -> usize {
        if self.settings.clip_norm > 0.0 {
            2
        } else {
            1
        }
    }
}
