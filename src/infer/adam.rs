//! Optimiser settings shared by the GPU kernel (`shaders/adam.wgsl`) and its
//! CPU mirror (`cpu::vi::adam_step`).

use bytemuck::{Pod, Zeroable};

/// Keep in sync with `AdamParams` in shaders/adam.wgsl.
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
