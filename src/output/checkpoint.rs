//! Checkpoints: everything a long run needs to continue as if it had never
//! stopped, in one safetensors file written atomically. GPU state is kept
//! as the raw bytes of the engine's buffers (parameters, optimiser moments,
//! chain states, the solver's warm-start vectors), so a resumed run on the
//! same device repeats the uninterrupted one bit for bit; host state
//! (step, schedules, traces, RNG counters, the run's settings) is JSON in
//! the file's metadata.

use std::path::Path;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;

/// The format tag of a checkpoint file.
pub const FORMAT: &str = "pdevi-checkpoint";

/// Name of the checkpoint file inside a run's `--out`.
pub const FILE: &str = "checkpoint.safetensors";

/// Host state and raw GPU buffers.
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    /// What kind of run wrote it (`vi`, `mcmc`, ...): resuming another is refused.
    pub kind: String,
    pub host: serde_json::Value,
    pub buffers: Vec<(String, Vec<u8>)>,
    /// Where it was read from (for messages; empty when captured).
    pub path: std::path::PathBuf,
}

/// Named buffers of an engine, in a fixed order.
pub type Buffers<'a> = Vec<(&'static str, &'a wgpu::Buffer)>;

impl Checkpoint {
    /// Read every buffer back (whole) and keep `host`.
    pub fn capture(
        ctx: &GpuContext,
        kind: &str,
        buffers: &Buffers<'_>,
        host: serde_json::Value,
    ) -> Result<Self> {
        let mut out = Vec::with_capacity(buffers.len());
        for (name, b) in buffers {
            let bytes: Vec<u8> = ctx.read(b, 0, b.size() as usize)?;
            out.push((name.to_string(), bytes));
        }
        Ok(Checkpoint {
            kind: kind.into(),
            host,
            buffers: out,
            path: Default::default(),
        })
    }

    /// Write the bytes back into the same engine's buffers; names and sizes
    /// must match (the settings were checked before).
    pub fn restore(&self, ctx: &GpuContext, buffers: &Buffers<'_>, path: &Path) -> Result<()> {
        let bad = |message: String| Error::Format {
            path: path.into(),
            message,
        };
        if buffers.len() != self.buffers.len() {
            return Err(bad(format!(
                "holds {} buffers, the engine has {}: it was written by another version or other settings",
                self.buffers.len(),
                buffers.len()
            )));
        }
        for ((name, b), (saved, bytes)) in buffers.iter().zip(&self.buffers) {
            if *name != saved || b.size() != bytes.len() as u64 {
                return Err(bad(format!(
                    "buffer {saved} ({} bytes) does not fit the engine's {name} ({} bytes): resume with the settings of the checkpoint",
                    bytes.len(),
                    b.size()
                )));
            }
            ctx.queue.write_buffer(b, 0, bytes);
        }
        ctx.wait()
    }

    /// Save atomically (the previous checkpoint stays until the new one is whole).
    pub fn save(&self, path: &Path) -> Result<()> {
        use safetensors::tensor::{Dtype, TensorView};
        let views = self
            .buffers
            .iter()
            .map(|(name, bytes)| {
                TensorView::new(Dtype::U8, vec![bytes.len()], bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::Format {
                        path: path.into(),
                        message: format!("buffer {name}: {e}"),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert("kind".to_string(), self.kind.clone());
        meta.insert("host".to_string(), self.host.to_string());
        // Buffer order matters: keep it explicitly (safetensors sorts names).
        let order: Vec<&str> = self.buffers.iter().map(|(n, _)| n.as_str()).collect();
        meta.insert(
            "order".to_string(),
            serde_json::to_string(&order).unwrap_or_default(),
        );
        crate::output::files::write_atomic(path, |tmp| {
            safetensors::serialize_to_file(views, Some(meta), tmp).map_err(|e| Error::Format {
                path: path.into(),
                message: format!("writing the checkpoint: {e}"),
            })
        })
    }

    /// Read a checkpoint; `kind` is what the caller resumes.
    pub fn load(path: &Path, kind: &str) -> Result<Self> {
        let bad = |message: String| Error::Format {
            path: path.into(),
            message,
        };
        let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&data)
            .map_err(|e| bad(format!("not a checkpoint (safetensors): {e}")))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&data)
            .map_err(|e| bad(format!("not a checkpoint (safetensors): {e}")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let get = |k: &str| {
            meta.get(k)
                .cloned()
                .ok_or_else(|| bad(format!("metadata has no `{k}`: not a pdevi checkpoint")))
        };
        crate::output::files::check_format(path, &get("format")?, FORMAT)?;
        let found = get("kind")?;
        if found != kind {
            return Err(bad(format!(
                "is a checkpoint of `{found}`, not of `{kind}`: resume it with the command that wrote it"
            )));
        }
        let host: serde_json::Value = serde_json::from_str(&get("host")?)
            .map_err(|e| bad(format!("host state is not JSON: {e}")))?;
        let order: Vec<String> = serde_json::from_str(&get("order")?)
            .map_err(|e| bad(format!("buffer order is not JSON: {e}")))?;
        let mut buffers = Vec::with_capacity(order.len());
        for name in order {
            let t = st
                .tensor(&name)
                .map_err(|e| bad(format!("buffer {name}: {e}")))?;
            buffers.push((name, t.data().to_vec()));
        }
        Ok(Checkpoint {
            kind: kind.into(),
            host,
            buffers,
            path: path.into(),
        })
    }
}
