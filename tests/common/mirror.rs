//! A table-driven GPU-vs-mirror harness: a [`Case`] names a kernel, the
//! extent of its work, its inputs by binding name (the kernel table gives
//! the order and the access) and the f64 mirror's expected outputs with
//! their tolerances. A new kernel gets its mirror test by adding a case to
//! a table; [`run_cases`] runs them all and reports every mismatch at once.

use bytemuck::Pod;
use pdevi::gpu::{Bind, GpuContext, KernelId};

use super::{f32s, read};

type MakeBuffer = Box<dyn Fn(&GpuContext, &str) -> wgpu::Buffer>;

/// One kernel run and what its mirror says it must produce.
pub struct Case {
    pub name: String,
    pub kernel: KernelId,
    pub extent: [usize; 2],
    inputs: Vec<(&'static str, MakeBuffer)>,
    expect: Vec<Expect>,
}

struct Expect {
    binding: &'static str,
    want: Vec<f64>,
    atol: f64,
    rtol: f64,
}

impl Case {
    pub fn new(name: impl Into<String>, kernel: KernelId, extent: [usize; 2]) -> Self {
        Case {
            name: name.into(),
            kernel,
            extent,
            inputs: Vec::new(),
            expect: Vec::new(),
        }
    }

    /// A parameter block (uniform or read-only storage, as the table says).
    pub fn params<T: Pod>(mut self, binding: &'static str, value: &T) -> Self {
        let bytes = bytemuck::bytes_of(value).to_vec();
        let kernel = self.kernel;
        self.inputs.push((
            binding,
            Box::new(move |ctx, label| {
                let uniform = kernel
                    .spec()
                    .bindings
                    .iter()
                    .any(|b| b.name == binding && b.kind == Bind::Uniform);
                if uniform {
                    use wgpu::util::DeviceExt;
                    ctx.device
                        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                            label: Some(label),
                            contents: &bytes,
                            usage: wgpu::BufferUsages::UNIFORM,
                        })
                } else {
                    ctx.upload(label, &bytes).expect("upload")
                }
            }),
        ));
        self
    }

    /// f32 values (uploaded from f64).
    pub fn f32(mut self, binding: &'static str, values: &[f64]) -> Self {
        let v = f32s(values);
        self.inputs.push((
            binding,
            Box::new(move |ctx, label| ctx.upload(label, &v).expect("upload")),
        ));
        self
    }

    /// u32 values.
    pub fn u32(mut self, binding: &'static str, values: &[u32]) -> Self {
        let v = values.to_vec();
        self.inputs.push((
            binding,
            Box::new(move |ctx, label| ctx.upload(label, &v).expect("upload")),
        ));
        self
    }

    /// An output the mirror computed: the binding starts zeroed (unless an
    /// input of the same name sets it) and must end within
    /// `atol + rtol |want|` of `want`, element by element.
    pub fn expect(mut self, binding: &'static str, want: &[f64], atol: f64, rtol: f64) -> Self {
        self.expect.push(Expect {
            binding,
            want: want.to_vec(),
            atol,
            rtol,
        });
        self
    }

    /// Run on the GPU and compare; the mismatches, if any, as one message.
    pub fn check(&self, ctx: &GpuContext) -> Result<(), String> {
        let spec = self.kernel.spec();
        let mut buffers = Vec::new();
        for b in spec.bindings {
            let label = format!("{}.{}", self.name, b.name);
            let buf = if let Some((_, make)) = self.inputs.iter().find(|(n, _)| *n == b.name) {
                make(ctx, &label)
            } else if let Some(e) = self.expect.iter().find(|e| e.binding == b.name) {
                ctx.upload(&label, &vec![0f32; e.want.len().max(1)])
                    .expect("upload")
            } else {
                let names: Vec<&str> = spec.bindings.iter().map(|b| b.name).collect();
                return Err(format!(
                    "{}: no input for binding `{}` of {} (bindings: {names:?})",
                    self.name,
                    b.name,
                    self.kernel.label()
                ));
            };
            buffers.push(buf);
        }
        for e in &self.expect {
            if !spec
                .bindings
                .iter()
                .any(|b| b.name == e.binding && b.kind == Bind::ReadWrite)
            {
                return Err(format!(
                    "{}: `{}` is not a read-write binding of {}",
                    self.name,
                    e.binding,
                    self.kernel.label()
                ));
            }
        }
        let refs: Vec<&wgpu::Buffer> = buffers.iter().collect();
        super::run(ctx, self.kernel, &refs, self.extent);
        let mut failures = Vec::new();
        for e in &self.expect {
            let i = spec
                .bindings
                .iter()
                .position(|b| b.name == e.binding)
                .expect("checked above");
            let got = read(ctx, &buffers[i], e.want.len());
            let what = format!("{} {}", self.name, e.binding);
            if let Err(msg) = super::compare(&what, &got, &e.want, e.atol, e.rtol) {
                failures.push(msg);
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("\n"))
        }
    }
}

/// Run every case; fail with all mismatches listed (not just the first).
#[track_caller]
pub fn run_cases(ctx: &GpuContext, cases: &[Case]) {
    assert!(!cases.is_empty(), "no cases");
    let failures: Vec<String> = cases.iter().filter_map(|c| c.check(ctx).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
