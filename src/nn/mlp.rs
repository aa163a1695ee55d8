//! Multilayer perceptrons on the GPU: the architecture, the parameters (one
//! flat buffer each for weights, gradients and Adam's moments, so the
//! optimiser is one dispatch), a per-batch-size workspace that records the
//! forward and backward passes into an encoder, Gaussian heads (through the
//! VI kernels), and weights on disk as safetensors with the architecture in
//! a JSON file beside them.
//!
//! Layout of layer l (input width `w_l`, output `o_l`): `W_l` (`w_l x o_l`,
//! row-major) then `b_l` (`o_l`); activations are row-major `batch x width`.
//! The training loop lives in [`crate::nn::train`].

use std::path::{Path, PathBuf};

use bytemuck::{Pod, Zeroable};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::{args, Dispatch, GpuContext, KernelId};
use crate::infer::adam::{Adam, AdamParams};
use crate::infer::gaussian::{GaussianBlock, GaussianBuffers};
use crate::infer::vi::{Family, ViParams};

/// `MlpParams` of shaders/nn/mlp.wgsl (layout checked by tests/layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq)]
pub struct MlpParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub act: u32,
    pub a_off: u32,
    pub a_rs: u32,
    pub a_cs: u32,
    pub b_off: u32,
    pub b_rs: u32,
    pub b_cs: u32,
    pub c_off: u32,
    pub c_rs: u32,
    pub bias_off: u32,
    pub flags: u32,
    pub scale: f32,
    pub slot: u32,
}

/// Activation functions (codes as in shaders/mlp.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Identity,
    Tanh,
    Relu,
    Silu,
    /// The tanh approximation of GELU.
    Gelu,
    Softplus,
}

impl Activation {
    pub const ALL: [Activation; 6] = [
        Activation::Identity,
        Activation::Tanh,
        Activation::Relu,
        Activation::Silu,
        Activation::Gelu,
        Activation::Softplus,
    ];

    pub fn code(self) -> u32 {
        Self::ALL.iter().position(|&a| a == self).unwrap_or(0) as u32
    }

    pub fn from_code(c: u32) -> Option<Self> {
        Self::ALL.get(c as usize).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Tanh => "tanh",
            Activation::Relu => "relu",
            Activation::Silu => "silu",
            Activation::Gelu => "gelu",
            Activation::Softplus => "softplus",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                Error::setting(
                    "activation",
                    s,
                    "expected identity, tanh, relu, silu, gelu or softplus",
                )
            })
    }

    /// Standard deviation factor of the initial weights (He for the
    /// ReLU-like, Glorot-like otherwise): std = gain / sqrt(fan_in).
    fn init_gain(self) -> f64 {
        match self {
            Activation::Relu | Activation::Silu | Activation::Gelu => 2f64.sqrt(),
            _ => 1.0,
        }
    }
}

/// One dense layer: `out` units and their activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub out: usize,
    pub act: Activation,
}

/// How the last layer's outputs are read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Head {
    /// Outputs as they are (regression with mean squared error).
    Plain,
    /// `dim` means then `dim` log-variances (Gaussian negative log-likelihood).
    MeanLogvar { dim: usize },
    /// One Gaussian over R^d per row, in the parameter layout of the VI
    /// family (`mean-field`, `full-rank`, `low-rank`): sampled and
    /// KL-penalised by the VI kernels, so the MLP is a variational encoder.
    Gaussian {
        family: String,
        d: usize,
        #[serde(default)]
        rank: usize,
    },
}

/// An MLP: input width, layers, head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arch {
    pub input: usize,
    pub layers: Vec<Layer>,
    pub head: Head,
}

/// The dispatches of one layer's backward pass.
pub struct BackStep {
    pub act: MlpParams,
    pub dw: MlpParams,
    pub db: MlpParams,
    pub dx: MlpParams,
}

impl Arch {
    /// `input -> hidden... (act) -> output (identity)` with a plain head.
    pub fn mlp(input: usize, hidden: &[usize], act: Activation, output: usize) -> Self {
        let mut layers: Vec<Layer> = hidden.iter().map(|&out| Layer { out, act }).collect();
        layers.push(Layer {
            out: output,
            act: Activation::Identity,
        });
        Arch {
            input,
            layers,
            head: Head::Plain,
        }
    }

    /// Checks sizes and that the head matches the last layer.
    pub fn validate(&self) -> Result<()> {
        let widths = format!(
            "{:?}",
            self.layers.iter().map(|l| l.out).collect::<Vec<_>>()
        );
        let Some(np) = self.nparam_checked() else {
            return Err(Error::setting(
                "layers",
                widths,
                "the parameter count of these widths overflows; use narrower layers",
            ));
        };
        // Before anything is allocated: the parameters and a few host
        // copies of them (initial values, f64 and f32).
        crate::memory::check_host(
            "hidden",
            widths,
            &format!("an MLP of {np} parameters"),
            np as u128 * 32,
            "use narrower or fewer hidden layers (--hidden)",
        )?;
        if self.input == 0 {
            return Err(Error::setting(
                "input",
                0,
                "an MLP needs at least one input",
            ));
        }
        if self.layers.is_empty() {
            return Err(Error::setting(
                "layers",
                0,
                "an MLP needs at least one layer",
            ));
        }
        for (l, layer) in self.layers.iter().enumerate() {
            if layer.out == 0 {
                return Err(Error::setting(
                    &format!("layers[{l}].out"),
                    0,
                    "every layer needs at least one unit",
                ));
            }
        }
        let out = self.output();
        let last = self.layers[self.layers.len() - 1].act;
        match &self.head {
            Head::Plain => {}
            Head::MeanLogvar { dim } => {
                if out != 2 * dim {
                    return Err(Error::setting(
                        "head",
                        format!("mean-logvar dim {dim}"),
                        format!("the last layer must have 2 x {dim} outputs, not {out}"),
                    ));
                }
            }
            Head::Gaussian { family, d, rank } => {
                let f = Family::parse(family, *rank)?;
                if out != f.nparam(*d) {
                    return Err(Error::setting(
                        "head",
                        format!("{family} d {d} rank {rank}"),
                        format!(
                            "the last layer must have {} outputs (the family's parameters), not {out}",
                            f.nparam(*d)
                        ),
                    ));
                }
            }
        }
        if self.head != Head::Plain && last != Activation::Identity {
            return Err(Error::setting(
                "head",
                last.name(),
                "a Gaussian head needs an identity last layer",
            ));
        }
        Ok(())
    }

    /// Input width of layer l.
    pub fn width(&self, l: usize) -> usize {
        if l == 0 {
            self.input
        } else {
            self.layers[l - 1].out
        }
    }

    pub fn output(&self) -> usize {
        self.layers.last().map(|l| l.out).unwrap_or(0)
    }

    /// (weight offset, bias offset) of each layer in the flat parameters.
    pub fn offsets(&self) -> Vec<(usize, usize)> {
        let mut off = 0;
        let mut v = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            let w = off;
            let b = w + self.width(l) * layer.out;
            off = b + layer.out;
            v.push((w, b));
        }
        v
    }

    /// The parameter count, or `None` when it does not fit in a `usize`
    /// (layer widths read from a file can be anything).
    pub fn nparam_checked(&self) -> Option<usize> {
        let mut total = 0usize;
        let mut width = self.input;
        for layer in &self.layers {
            let n = width.checked_add(1)?.checked_mul(layer.out)?;
            total = total.checked_add(n)?;
            width = layer.out;
        }
        Some(total)
    }

    pub fn nparam(&self) -> usize {
        self.layers
            .iter()
            .enumerate()
            .map(|(l, layer)| (self.width(l) + 1) * layer.out)
            .sum()
    }

    /// Seeded initial parameters: N(0, gain^2 / fan_in) weights, zero biases.
    pub fn init(&self, seed: u64) -> Vec<f64> {
        let z = crate::rng::normals(seed, crate::rng::streams::INIT, 1, self.nparam());
        let mut p = vec![0.0; self.nparam()];
        for (l, ((w, b), layer)) in self.offsets().into_iter().zip(&self.layers).enumerate() {
            let std = layer.act.init_gain() / (self.width(l) as f64).sqrt();
            for i in w..b {
                p[i] = z[i] * std;
            }
        }
        p
    }

    /// The product of each layer's forward pass (X from the previous
    /// activation buffer, W and b from the parameters).
    pub fn forward_params(&self, batch: usize) -> Vec<MlpParams> {
        let offs = self.offsets();
        self.layers
            .iter()
            .enumerate()
            .map(|(l, layer)| {
                let (w, b) = offs[l];
                let (k, n) = (self.width(l) as u32, layer.out as u32);
                MlpParams {
                    m: batch as u32,
                    n,
                    k,
                    act: layer.act.code(),
                    a_rs: k,
                    a_cs: 1,
                    b_off: w as u32,
                    b_rs: n,
                    b_cs: 1,
                    c_rs: n,
                    bias_off: b as u32,
                    flags: 3,
                    ..Default::default()
                }
            })
            .collect()
    }

    /// The dispatches of each layer's backward pass.
    pub fn backward_params(&self, batch: usize) -> Vec<BackStep> {
        let offs = self.offsets();
        let m = batch as u32;
        self.layers
            .iter()
            .enumerate()
            .map(|(l, layer)| {
                let (w, b) = offs[l];
                let (i, o) = (self.width(l) as u32, layer.out as u32);
                BackStep {
                    // delta *= act'(z)
                    act: MlpParams {
                        m,
                        n: o,
                        act: layer.act.code(),
                        a_rs: o,
                        c_rs: o,
                        ..Default::default()
                    },
                    // dW = X^T delta
                    dw: MlpParams {
                        m: i,
                        n: o,
                        k: m,
                        a_rs: 1,
                        a_cs: i,
                        b_rs: o,
                        b_cs: 1,
                        c_off: w as u32,
                        c_rs: o,
                        ..Default::default()
                    },
                    // db = column sums of delta
                    db: MlpParams {
                        m,
                        n: o,
                        a_rs: o,
                        c_off: b as u32,
                        ..Default::default()
                    },
                    // dX = delta W^T
                    dx: MlpParams {
                        m,
                        n: i,
                        k: o,
                        a_rs: o,
                        a_cs: 1,
                        b_off: w as u32,
                        b_rs: 1,
                        b_cs: o,
                        c_rs: i,
                        ..Default::default()
                    },
                }
            })
            .collect()
    }

    /// The VI family of a Gaussian head.
    pub fn head_family(&self) -> Result<Option<(Family, usize)>> {
        match &self.head {
            Head::Gaussian { family, d, rank } => Ok(Some((Family::parse(family, *rank)?, *d))),
            _ => Ok(None),
        }
    }
}

/// A product `m x n` = (`m x k`)(`k x n`) with the context's product kernel
/// (tiled or register-blocked; both cover 64 x 64 outputs per workgroup).
fn product(ctx: &GpuContext, p: &MlpParams, a: args::Matmul<'_>) -> Result<Dispatch> {
    if p.n as usize <= THIN {
        // The 64 x 64 products would compute 64 columns for these.
        return ctx.prepare_as(KernelId::MatmulThin, &a, [p.m as usize, 1]);
    }
    ctx.prepare_as(ctx.matmul, &a, [p.n as usize, p.m as usize])
}

/// Widest output that `matmul_thin` takes.
const THIN: usize = 4;
/// From this many rows on, a layer's parameter gradients are summed in
/// chunks of `GRAD_CHUNK` rows in parallel (`grad_rows`, then `grad_sum`
/// in chunk order) instead of by one workgroup of the product.
pub const GRAD_SPLIT_ROWS: usize = 8192;
pub const GRAD_CHUNK: usize = 1024;

/// An MLP's parameters on the device, with its gradient and optimiser state.
pub struct Mlp {
    pub arch: Arch,
    pub params: wgpu::Buffer,
    pub grad: wgpu::Buffer,
    pub adam: Adam,
}

impl Mlp {
    /// Upload `params` (length `arch.nparam()`), or the seeded initial values.
    pub fn new(ctx: &GpuContext, arch: Arch, params: Option<&[f64]>, seed: u64) -> Result<Self> {
        arch.validate()?;
        let np = arch.nparam();
        // Before any allocation: parameters, gradient and Adam's two
        // moments on the device, a copy or two on the host.
        ctx.check_size("MLP parameters (4 bytes each)", np as u64 * 4)?;
        let p: Vec<f32> = match params {
            Some(p) => {
                if p.len() != np {
                    return Err(Error::setting(
                        "params",
                        p.len(),
                        format!("the architecture has {np} parameters"),
                    ));
                }
                p.iter().map(|&v| v as f32).collect()
            }
            None => arch.init(seed).iter().map(|&v| v as f32).collect(),
        };
        let params = ctx.upload("mlp.params", &p)?;
        let grad = ctx.storage("mlp.grad", (np * 4) as u64)?;
        let adam = Adam::new(ctx, "mlp", AdamParams::new(np, 1e-3), &params, &grad)?;
        Ok(Mlp {
            arch,
            params,
            grad,
            adam,
        })
    }

    pub fn nparam(&self) -> usize {
        self.arch.nparam()
    }

    pub fn read_params(&self, ctx: &GpuContext) -> Result<Vec<f64>> {
        Ok(ctx
            .read::<f32>(&self.params, 0, self.nparam())?
            .into_iter()
            .map(f64::from)
            .collect())
    }

    pub fn read_grad(&self, ctx: &GpuContext) -> Result<Vec<f64>> {
        Ok(ctx
            .read::<f32>(&self.grad, 0, self.nparam())?
            .into_iter()
            .map(f64::from)
            .collect())
    }

    /// Replace the parameters and reset Adam's moments.
    pub fn set_params(&mut self, ctx: &GpuContext, p: &[f64]) -> Result<()> {
        if p.len() != self.nparam() {
            return Err(Error::setting(
                "params",
                p.len(),
                format!("the architecture has {} parameters", self.nparam()),
            ));
        }
        let v: Vec<f32> = p.iter().map(|&x| x as f32).collect();
        ctx.write(&self.params, &v);
        self.adam.reset(ctx);
        self.adam.settings.step = 1;
        Ok(())
    }

    /// Set the optimiser's settings for the next `encode_adam` (the uniform
    /// is written now; call once per step, before recording it).
    pub fn prepare_adam(&mut self, ctx: &GpuContext, step: u32, lr: f64) {
        self.adam.set_step(ctx, step, lr);
    }

    /// Record gradient clipping (when `adam.settings.clip_norm > 0`) and one
    /// Adam(W) step.
    pub fn encode_adam(&self, pass: &mut wgpu::ComputePass<'_>) {
        self.adam.record(pass);
    }

    /// Save the weights (`<stem>.safetensors`) and the architecture
    /// (`<stem>.json`); `path` may name either file or the stem.
    pub fn save(&self, ctx: &GpuContext, path: &Path) -> Result<(PathBuf, PathBuf)> {
        save_weights(&self.arch, &self.read_params(ctx)?, path)
    }

    /// Load an MLP saved by [`Mlp::save`].
    pub fn load(ctx: &GpuContext, path: &Path) -> Result<Self> {
        let (arch, p) = load_weights(path)?;
        Mlp::new(ctx, arch, Some(&p), 0)
    }
}

/// The two files of a saved network.
pub fn weight_paths(path: &Path) -> (PathBuf, PathBuf) {
    let stem = match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") | Some("json") => path.with_extension(""),
        _ => path.to_path_buf(),
    };
    (
        stem.with_extension("safetensors"),
        stem.with_extension("json"),
    )
}

fn tensor_names(l: usize) -> (String, String) {
    (format!("layers.{l}.weight"), format!("layers.{l}.bias"))
}

/// Write `params` of `arch` as safetensors (f32, `layers.{l}.weight` of
/// shape `[in, out]` and `layers.{l}.bias` of shape `[out]`) plus the
/// architecture as JSON.
pub fn save_weights(arch: &Arch, params: &[f64], path: &Path) -> Result<(PathBuf, PathBuf)> {
    let (st_path, json_path) = weight_paths(path);
    let mut tensors: Vec<(String, Vec<usize>, &[f64])> = Vec::new();
    for (l, (w, b)) in arch.offsets().into_iter().enumerate() {
        let (wn, bn) = tensor_names(l);
        let out = arch.layers[l].out;
        tensors.push((wn, vec![arch.width(l), out], &params[w..b]));
        tensors.push((bn, vec![out], &params[b..b + out]));
    }
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pdevi-mlp".to_string());
    crate::output::io::write_safetensors_f32(&st_path, &tensors, meta)?;
    let json = serde_json::to_value(arch).map_err(|e| Error::Format {
        path: json_path.clone(),
        message: e.to_string(),
    })?;
    crate::output::files::write_json(&json_path, &json)?;
    Ok((st_path, json_path))
}

/// Read a network written by [`save_weights`]; every tensor is checked
/// against the architecture in the JSON file.
pub fn load_weights(path: &Path) -> Result<(Arch, Vec<f64>)> {
    use safetensors::tensor::Dtype;
    let (st_path, json_path) = weight_paths(path);
    let text = std::fs::read_to_string(&json_path).map_err(|e| Error::io(&json_path, e))?;
    let arch: Arch = serde_json::from_str(&text).map_err(|e| Error::Input {
        file: json_path.clone(),
        line: e.line(),
        message: format!("not a pdevi MLP architecture: {e}"),
    })?;
    arch.validate().map_err(|e| Error::Format {
        path: json_path.clone(),
        message: e.to_string(),
    })?;
    let data = std::fs::read(&st_path).map_err(|e| Error::io(&st_path, e))?;
    let st = safetensors::SafeTensors::deserialize(&data).map_err(|e| Error::Format {
        path: st_path.clone(),
        message: format!("not a safetensors file: {e}"),
    })?;
    let mut params = vec![0.0; arch.nparam()];
    let mut expected = Vec::new();
    for (l, (w, b)) in arch.offsets().into_iter().enumerate() {
        let (wn, bn) = tensor_names(l);
        let out = arch.layers[l].out;
        for (name, shape, off) in [(wn, vec![arch.width(l), out], w), (bn, vec![out], b)] {
            let t = st.tensor(&name).map_err(|_| Error::Format {
                path: st_path.clone(),
                message: format!(
                    "tensor `{name}` is missing; {} describes {} layers: was this file saved with another architecture?",
                    json_path.display(),
                    arch.layers.len()
                ),
            })?;
            if t.dtype() != Dtype::F32 {
                return Err(Error::Format {
                    path: st_path.clone(),
                    message: format!("tensor `{name}` is {:?}, expected F32", t.dtype()),
                });
            }
            if t.shape() != shape.as_slice() {
                return Err(Error::Format {
                    path: st_path.clone(),
                    message: format!(
                        "tensor `{name}` has shape {:?} but the architecture in {} needs {:?}",
                        t.shape(),
                        json_path.display(),
                        shape
                    ),
                });
            }
            for (i, c) in t.data().chunks_exact(4).enumerate() {
                params[off + i] = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64;
            }
            expected.push(name);
        }
    }
    let extra: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| !expected.iter().any(|e| e == n))
        .map(|n| n.to_string())
        .collect();
    if !extra.is_empty() {
        return Err(Error::Format {
            path: st_path.clone(),
            message: format!(
                "tensors {extra:?} are not part of the architecture in {}",
                json_path.display()
            ),
        });
    }
    if let Some(i) = params.iter().position(|v| !v.is_finite()) {
        return Err(Error::Format {
            path: st_path,
            message: format!("parameter {i} is not finite"),
        });
    }
    Ok((arch, params))
}

/// Loss attached to a workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Mean over rows and outputs of (y - t)^2.
    Mse,
    /// Mean over rows of the Gaussian NLL of a mean / log-variance head.
    GaussNll,
    /// Neural posterior estimation: mean over rows of -log q(target | Gaussian
    /// head), q the head's Gaussian in its VI family's layout (the
    /// `loss_npe` kernel); needs `d <= NPE_MAX_D` and `rank <= NPE_MAX_R`.
    Npe,
    /// Mean over rows of the Bernoulli NLL of a phase in [-1, 1] (targets)
    /// given logits (outputs), summed over outputs: a VAE decoder of binary
    /// fields.
    Bce,
    /// The output gradient is written by the caller (e.g. a Gaussian head).
    External,
}

/// Largest Gaussian dimension `d` of [`Loss::Npe`] (the kernel's private arrays).
pub const NPE_MAX_D: usize = 256;
/// Largest low-rank rank of [`Loss::Npe`] (the kernel's private arrays).
pub const NPE_MAX_R: usize = 16;

/// Slots of the loss buffer read by the host.
pub mod slot {
    /// Training loss accumulated over an epoch.
    pub const TRAIN: u32 = 0;
    /// Loss of the last evaluation.
    pub const EVAL: u32 = 1;
    /// Offset from a slot to its count of rows left out of the sum (their
    /// loss was not finite; see `loss_reduce`).
    pub const SKIPPED: u32 = 8;
}

/// Buffers and recorded dispatches of one network at one batch size.
pub struct Workspace {
    pub batch: usize,
    pub loss: Loss,
    /// Input (`batch x input`).
    pub x: wgpu::Buffer,
    /// Targets (`batch x target width`).
    pub t: wgpu::Buffer,
    /// Output of each layer; the last is the network's output.
    pub acts: Vec<wgpu::Buffer>,
    /// Pre-activation of each layer.
    pub pre: Vec<wgpu::Buffer>,
    /// Gradient of the loss with respect to each layer's output (then, in
    /// place, to its pre-activation); the last is the output gradient.
    pub delta: Vec<wgpu::Buffer>,
    /// Gradient with respect to the input.
    pub dx: wgpu::Buffer,
    /// [0, 16) scalar slots, then one partial loss per row.
    pub losses: wgpu::Buffer,
    fwd: Vec<Dispatch>,
    bwd: Vec<Dispatch>,
    bwd_dx: Option<Dispatch>,
    loss_ops: Vec<Dispatch>,
    u_reduce: wgpu::Buffer,
    reduce_op: Dispatch,
    reduce: MlpParams,
    /// The loss kernel's parameter block (rewritten by `set_loss_accumulate`).
    loss_uniform: Option<(wgpu::Buffer, MlpParams)>,
    _uniforms: Vec<wgpu::Buffer>,
}

impl Workspace {
    pub fn new(ctx: &GpuContext, net: &Mlp, batch: usize, loss: Loss) -> Result<Self> {
        if batch == 0 {
            return Err(Error::setting("batch", 0, "need at least one row"));
        }
        let arch = &net.arch;
        let mut npe = None;
        let tw = match loss {
            Loss::Mse | Loss::Bce => arch.output(),
            Loss::GaussNll => match arch.head {
                Head::MeanLogvar { dim } => dim,
                _ => {
                    return Err(Error::setting(
                        "loss",
                        "gaussian-nll",
                        "needs a network with a mean-logvar head",
                    ))
                }
            },
            Loss::Npe => {
                let (family, d) = arch.head_family()?.ok_or_else(|| {
                    Error::setting("loss", "npe", "needs a network with a Gaussian head")
                })?;
                if d > NPE_MAX_D {
                    return Err(Error::setting(
                        "head",
                        format!("d {d}"),
                        format!("the NPE loss supports Gaussians of dimension up to {NPE_MAX_D}"),
                    ));
                }
                if family.rank() > NPE_MAX_R {
                    return Err(Error::setting(
                        "head",
                        format!("rank {}", family.rank()),
                        format!("the NPE loss supports low-rank heads of rank up to {NPE_MAX_R}"),
                    ));
                }
                npe = Some(family);
                d
            }
            Loss::External => 1,
        };
        let f4 = |n: usize| (n * 4) as u64;
        let x = ctx.storage("mlp.x", f4(batch * arch.input))?;
        let t = ctx.storage("mlp.t", f4(batch * tw))?;
        let dx = ctx.storage("mlp.dx", f4(batch * arch.input))?;
        let losses = ctx.storage("mlp.losses", f4(16 + batch))?;
        let dummy = ctx.storage("mlp.unused", 16)?;
        let mut acts = Vec::new();
        let mut pre = Vec::new();
        let mut delta = Vec::new();
        for layer in &arch.layers {
            acts.push(ctx.storage("mlp.act", f4(batch * layer.out))?);
            pre.push(ctx.storage("mlp.pre", f4(batch * layer.out))?);
            delta.push(ctx.storage("mlp.delta", f4(batch * layer.out))?);
        }
        let mut uniforms = Vec::new();
        let mut un = |p: &MlpParams| {
            let u = ctx.uniform("mlp.params", p);
            uniforms.push(u.clone());
            u
        };
        let mut fwd = Vec::new();
        for (l, p) in arch.forward_params(batch).iter().enumerate() {
            let u = un(p);
            let input = if l == 0 { &x } else { &acts[l - 1] };
            fwd.push(product(
                ctx,
                p,
                args::Matmul {
                    params: &u,
                    xa: input,
                    xb: &net.params,
                    xc: &acts[l],
                    xz: &pre[l],
                },
            )?);
        }
        let mut bwd = Vec::new();
        let mut bwd_dx = None;
        let steps = arch.backward_params(batch);
        let split = batch >= GRAD_SPLIT_ROWS;
        let chunks = batch.div_ceil(GRAD_CHUNK);
        let per_max = (0..arch.layers.len())
            .map(|l| arch.width(l) * arch.layers[l].out + arch.layers[l].out)
            .max()
            .unwrap_or(1);
        let partials = if split {
            ctx.storage("mlp.grad_chunks", f4(chunks * per_max))?
        } else {
            ctx.storage("mlp.unused", 16)?
        };
        for l in (0..arch.layers.len()).rev() {
            let s = &steps[l];
            if arch.layers[l].act != Activation::Identity {
                let u = un(&s.act);
                bwd.push(ctx.prepare(
                    &args::ActBackward {
                        params: &u,
                        xa: &pre[l],
                        xc: &delta[l],
                    },
                    [(s.act.m * s.act.n) as usize, 1],
                )?);
            }
            let input = if l == 0 { &x } else { &acts[l - 1] };
            if split {
                let (i, o) = (arch.width(l), arch.layers[l].out);
                let per = i * o + o;
                let rows = MlpParams {
                    m: i as u32,
                    n: o as u32,
                    k: batch as u32,
                    a_rs: i as u32,
                    b_rs: o as u32,
                    slot: GRAD_CHUNK as u32,
                    ..Default::default()
                };
                let u = un(&rows);
                bwd.push(ctx.prepare(
                    &args::GradRows {
                        params: &u,
                        xa: input,
                        xb: &delta[l],
                        xc: &partials,
                    },
                    [per, chunks],
                )?);
                let sum = MlpParams {
                    m: per as u32,
                    k: chunks as u32,
                    c_off: s.dw.c_off,
                    ..Default::default()
                };
                let u = un(&sum);
                bwd.push(ctx.prepare(
                    &args::GradSum {
                        params: &u,
                        xa: &partials,
                        xc: &net.grad,
                    },
                    [per, 1],
                )?);
            } else {
                let u = un(&s.dw);
                bwd.push(product(
                    ctx,
                    &s.dw,
                    args::Matmul {
                        params: &u,
                        xa: input,
                        xb: &delta[l],
                        xc: &net.grad,
                        xz: &dummy,
                    },
                )?);
                let u = un(&s.db);
                bwd.push(ctx.prepare(
                    &args::BiasGrad {
                        params: &u,
                        xa: &delta[l],
                        xc: &net.grad,
                    },
                    [s.db.n as usize, 1],
                )?);
            }
            let u = un(&s.dx);
            let target = if l == 0 { &dx } else { &delta[l - 1] };
            let d = product(
                ctx,
                &s.dx,
                args::Matmul {
                    params: &u,
                    xa: &delta[l],
                    xb: &net.params,
                    xc: target,
                    xz: &dummy,
                },
            )?;
            if l == 0 {
                bwd_dx = Some(d);
            } else {
                bwd.push(d);
            }
        }
        let out = arch.output() as u32;
        let last = arch.layers.len() - 1;
        let mut loss_ops = Vec::new();
        let (kernel, lp) = match loss {
            Loss::Mse => (
                Some(KernelId::LossMse),
                MlpParams {
                    m: batch as u32,
                    n: out,
                    a_rs: out,
                    b_rs: out,
                    c_rs: out,
                    scale: (1.0 / (batch as f64 * out as f64)) as f32,
                    ..Default::default()
                },
            ),
            Loss::GaussNll => (
                Some(KernelId::LossGaussNll),
                MlpParams {
                    m: batch as u32,
                    n: tw as u32,
                    a_rs: out,
                    b_rs: tw as u32,
                    c_rs: out,
                    scale: (1.0 / batch as f64) as f32,
                    ..Default::default()
                },
            ),
            Loss::Bce => (
                Some(KernelId::LossBce),
                MlpParams {
                    m: batch as u32,
                    n: out,
                    a_rs: out,
                    b_rs: out,
                    c_rs: out,
                    scale: (1.0 / batch as f64) as f32,
                    ..Default::default()
                },
            ),
            Loss::Npe => {
                let family = npe.expect("checked above");
                (
                    Some(KernelId::LossNpe),
                    MlpParams {
                        m: batch as u32,
                        n: tw as u32,
                        k: family.rank() as u32,
                        act: family.code(),
                        a_rs: out,
                        b_rs: tw as u32,
                        c_rs: out,
                        scale: (1.0 / batch as f64) as f32,
                        ..Default::default()
                    },
                )
            }
            Loss::External => (None, MlpParams::default()),
        };
        let mut loss_uniform = None;
        if let Some(k) = kernel {
            let u = un(&lp);
            loss_uniform = Some((u.clone(), lp));
            let a = args::LossMse {
                params: &u,
                xa: &acts[last],
                xb: &t,
                xc: &delta[last],
                xz: &losses,
            };
            loss_ops.push(ctx.prepare_as(k, &a, [batch, 1])?);
        }
        // Loss reduce: the mean over rows (and outputs for MSE); the uniform is
        // rewritten by `set_reduce` (slot, accumulate flag, extra factor).
        let reduce = MlpParams {
            m: batch as u32,
            scale: match loss {
                Loss::Mse => lp.scale,
                _ => (1.0 / batch as f64) as f32,
            },
            slot: slot::EVAL,
            ..Default::default()
        };
        let u_reduce = ctx.uniform("mlp.reduce", &reduce);
        let reduce_op = ctx.prepare(
            &args::LossReduce {
                params: &u_reduce,
                xz: &losses,
            },
            [1, 1],
        )?;
        Ok(Workspace {
            batch,
            loss,
            x,
            t,
            acts,
            pre,
            delta,
            dx,
            losses,
            fwd,
            bwd,
            bwd_dx,
            loss_ops,
            u_reduce,
            reduce_op,
            reduce,
            loss_uniform,
            _uniforms: uniforms,
        })
    }

    /// Output buffer (`batch x output`).
    pub fn output(&self) -> &wgpu::Buffer {
        &self.acts[self.acts.len() - 1]
    }

    /// Output gradient buffer (written by the loss, or by the caller).
    pub fn output_grad(&self) -> &wgpu::Buffer {
        &self.delta[self.delta.len() - 1]
    }

    pub fn encode_forward(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.fwd {
            d.record(pass);
        }
    }

    /// The loss, its output gradient and its reduction into the slot set by
    /// [`set_reduce`](Self::set_reduce) (nothing for an external loss).
    pub fn encode_loss(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.loss_ops {
            d.record(pass);
        }
        // An external loss writes its row losses itself (e.g. the residual
        // term); the reduction still runs.
        if !self.loss_ops.is_empty() || self.loss == Loss::External {
            self.reduce_op.record(pass);
        }
    }

    /// Whether the NPE loss adds its gradient to the output gradient already
    /// written (by another term recorded before it) instead of overwriting it.
    pub fn set_loss_accumulate(&self, ctx: &GpuContext, accumulate: bool) {
        if let Some((u, p)) = &self.loss_uniform {
            let mut p = *p;
            p.flags = accumulate as u32;
            ctx.write(u, &[p]);
        }
    }

    /// Where the next reductions write: `slot`, multiplied by `factor`,
    /// added to the slot's value when `accumulate`.
    pub fn set_reduce(&mut self, ctx: &GpuContext, slot: u32, factor: f64, accumulate: bool) {
        let mut r = self.reduce;
        r.slot = slot;
        r.scale = (r.scale as f64 * factor) as f32;
        r.flags = accumulate as u32;
        ctx.write(&self.u_reduce, &[r]);
    }

    /// The backward pass from the output gradient; parameter gradients into
    /// the network's `grad` (overwritten), and the input gradient into `dx`
    /// when `want_dx`.
    pub fn encode_backward(&self, pass: &mut wgpu::ComputePass<'_>, want_dx: bool) {
        for d in &self.bwd {
            d.record(pass);
        }
        if want_dx {
            if let Some(d) = &self.bwd_dx {
                d.record(pass);
            }
        }
    }

    /// Upload an input batch (`batch x input`, row-major).
    pub fn set_input(&self, ctx: &GpuContext, x: &[f64]) -> Result<()> {
        self.check_len("input", x.len(), self.batch * self.input_width())?;
        ctx.write(&self.x, &to_f32(x));
        Ok(())
    }

    /// Upload targets (`batch x target width`).
    pub fn set_targets(&self, ctx: &GpuContext, t: &[f64]) -> Result<()> {
        let tw = (self.t.size() / 4) as usize / self.batch;
        self.check_len("targets", t.len(), self.batch * tw)?;
        ctx.write(&self.t, &to_f32(t));
        Ok(())
    }

    fn input_width(&self) -> usize {
        (self.x.size() / 4) as usize / self.batch
    }

    fn check_len(&self, what: &str, got: usize, want: usize) -> Result<()> {
        if got < want {
            return Err(Error::setting(
                what,
                got,
                format!("expected {want} values (batch {})", self.batch),
            ));
        }
        Ok(())
    }

    /// Run the forward pass on `x` and read the outputs back.
    pub fn predict(&self, ctx: &GpuContext, x: &[f64]) -> Result<Vec<f64>> {
        self.set_input(ctx, x)?;
        let mut enc = ctx.encoder("mlp.predict");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            self.encode_forward(&mut pass);
        }
        ctx.submit_wait(enc)?;
        let n = (self.output().size() / 4) as usize;
        Ok(ctx
            .read::<f32>(self.output(), 0, n)?
            .into_iter()
            .map(f64::from)
            .collect())
    }

    /// Read slot `s` of the loss buffer.
    pub fn read_loss(&self, ctx: &GpuContext, s: u32) -> Result<f64> {
        Ok(ctx.read::<f32>(&self.losses, s as usize, 1)?[0] as f64)
    }
}

pub fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// A Gaussian head evaluated by the VI kernels, one Gaussian per row of the
/// network's output: noise, reparameterised samples `xi` (`batch x d`), the
/// KL of each row to N(0, I) and the backward pass into the output gradient,
/// through the same [`GaussianBlock`] as VI.
pub struct GaussianHead {
    pub family: Family,
    pub d: usize,
    pub block: GaussianBlock,
    pub xi: wgpu::Buffer,
    /// d loss / d xi (`batch x d`), written by whatever consumes the samples.
    pub gxi: wgpu::Buffer,
    /// KL per row.
    pub kl: wgpu::Buffer,
}

impl GaussianHead {
    /// `kl_weight` multiplies the KL term of the loss (the loss is the mean
    /// over rows of `(consumer loss) + kl_weight KL`).
    pub fn new(
        ctx: &GpuContext,
        net: &Mlp,
        ws: &Workspace,
        seed: u64,
        kl_weight: f64,
    ) -> Result<Self> {
        let (family, d) = net.arch.head_family()?.ok_or_else(|| {
            Error::setting("head", "plain", "a GaussianHead needs a Gaussian head")
        })?;
        let b = ws.batch;
        let mut vp = ViParams::new(family, d, b, seed, 0, 1.0);
        vp.per_row = 1;
        vp.grad_scale = 1.0;
        vp.kl_scale = (kl_weight / b as f64) as f32;
        let xi = ctx.storage("head.xi", (b * d * 4) as u64)?;
        let gxi = ctx.storage("head.gxi", (b * d * 4) as u64)?;
        let kl = ctx.storage("head.kl", (b.max(4) * 4) as u64)?;
        let block = GaussianBlock::new(
            ctx,
            "head",
            family,
            vp,
            GaussianBuffers {
                theta: ws.output(),
                xi: &xi,
                gxi: &gxi,
                grad: ws.output_grad(),
                kl: &kl,
            },
        )?;
        Ok(GaussianHead {
            family,
            d,
            block,
            xi,
            gxi,
            kl,
        })
    }

    /// The head's VI settings as last written to the device.
    pub fn vi_params(&self) -> ViParams {
        self.block.params
    }

    /// Use the noise of `step` in the next `encode_sample`.
    pub fn set_step(&mut self, ctx: &GpuContext, step: u32) {
        self.block.set_step(ctx, step);
    }

    /// Noise and samples xi = m + L eps for every row (after the forward pass).
    pub fn encode_sample(&self, pass: &mut wgpu::ComputePass<'_>) {
        self.block.record_sample(pass);
    }

    /// KL per row, and the output gradient: kl_weight / batch dKL/dtheta plus
    /// the reparameterisation term from `gxi`.
    pub fn encode_backward(&self, pass: &mut wgpu::ComputePass<'_>) {
        self.block.record_backward(pass);
    }
}
