//! [`GpuContext`]: the one owner of instance, adapter, device, queue and
//! every compute pipeline (built once, at creation).

use std::sync::{Arc, Mutex};

use bytemuck::Pod;
use wgpu::util::DeviceExt;

use super::kernels::{Bind, KernelArgs, KernelId};
use super::render::FieldRenderer;
use super::shaders::{self, ModuleId};
use crate::error::{Error, Result};

/// A kernel's pipeline, bind-group layout and workgroup size in x (read
/// from the validated WGSL by naga, so geometry never repeats it).
struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    wg_x: u32,
}

/// One kernel with its buffers bound and its workgroup counts computed:
/// built once, recorded into any number of passes.
#[derive(Clone, Debug)]
pub struct Dispatch {
    kernel: KernelId,
    pipeline: wgpu::ComputePipeline,
    group: wgpu::BindGroup,
    groups: [u32; 3],
}

impl Dispatch {
    /// Record this dispatch into `pass`.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.group, &[]);
        let [x, y, z] = self.groups;
        pass.dispatch_workgroups(x, y, z);
    }

    /// Record this dispatch with the workgroup counts at `offset` of `args`
    /// (written by an earlier dispatch: no read-back to decide the size).
    pub fn record_indirect(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        args: &wgpu::Buffer,
        offset: u64,
    ) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.group, &[]);
        pass.dispatch_workgroups_indirect(args, offset);
    }

    pub fn kernel(&self) -> KernelId {
        self.kernel
    }

    pub fn groups(&self) -> [u32; 3] {
        self.groups
    }
}

/// Device, queue and pipelines.
pub struct GpuContext {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// Invocations per workgroup of the solver kernels (one workgroup per
    /// system): 64 on CPU devices, where each barrier switches every
    /// invocation (measured 4x faster CG iterations on lavapipe for
    /// poisson1d, 1.9x for darcy2d n = 32), 256 on GPUs.
    /// `PDEVI_SOLVER_WG` (64 or 256) overrides.
    pub solver_wg: u32,
    /// The MLP product kernel: workgroup-memory tiles on GPUs, register
    /// blocks on CPU devices (`PDEVI_MATMUL=tiled|blocked` overrides).
    pub matmul: KernelId,
    /// Per kernel, in [`KernelId::ALL`] order.
    pipelines: Vec<Pipeline>,
    /// wgpu errors outside an error scope land here instead of panicking;
    /// [`GpuContext::check`] turns them into [`Error::Gpu`].
    uncaptured: Arc<Mutex<Option<String>>>,
    /// The instance the adapter came from (a window's surface needs it).
    pub instance: wgpu::Instance,
    renderer: std::sync::OnceLock<std::result::Result<FieldRenderer, String>>,
    allocated: std::sync::atomic::AtomicU64,
    allocations: Mutex<Vec<(String, u64)>>,
}

fn parse_backend(name: &str) -> Result<wgpu::Backends> {
    match name.trim().to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => Ok(wgpu::Backends::VULKAN),
        "metal" | "mtl" => Ok(wgpu::Backends::METAL),
        "dx12" | "d3d12" => Ok(wgpu::Backends::DX12),
        "gl" | "gles" | "opengl" => Ok(wgpu::Backends::GL),
        other => Err(Error::setting(
            "PDEVI_BACKEND",
            other,
            "expected one of vulkan, metal, dx12, gl",
        )),
    }
}

fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn backend_rank(b: wgpu::Backend) -> u32 {
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        wgpu::Backend::Gl => 1,
        _ => 2,
    }
}

/// What a caller may ask of adapter selection.
#[derive(Clone, Debug, Default)]
pub struct AdapterRequest {
    /// Backend name (vulkan, metal, dx12, gl); `None` = all.
    pub backend: Option<String>,
    /// Case-insensitive substring of the adapter name.
    pub adapter: Option<String>,
}

impl AdapterRequest {
    /// From `PDEVI_BACKEND` and `PDEVI_ADAPTER`.
    pub fn from_env() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        AdapterRequest {
            backend: get("PDEVI_BACKEND"),
            adapter: get("PDEVI_ADAPTER"),
        }
    }
}

impl GpuContext {
    /// The best adapter, as restricted by `PDEVI_BACKEND` / `PDEVI_ADAPTER`.
    pub fn new() -> Result<Self> {
        Self::with_request(&AdapterRequest::from_env())
    }

    pub fn with_request(req: &AdapterRequest) -> Result<Self> {
        Self::with_display(req, None)
    }

    /// [`GpuContext::with_request`] on an instance that knows the window
    /// system's display (a window's surface on the GL backend needs it).
    pub fn with_display(
        req: &AdapterRequest,
        display: Option<Box<dyn wgpu::wgt::WgpuHasDisplayHandle>>,
    ) -> Result<Self> {
        let backends = match &req.backend {
            Some(b) => parse_backend(b)?,
            None => wgpu::Backends::all(),
        };
        let mut desc = match display {
            Some(d) => wgpu::InstanceDescriptor::new_with_display_handle_from_env(d),
            None => wgpu::InstanceDescriptor::new_without_display_handle_from_env(),
        };
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        let seen: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?})", i.name, i.backend)
            })
            .collect();
        let mut candidates: Vec<wgpu::Adapter> = adapters
            .into_iter()
            .filter(|a| {
                let caps = a.get_downlevel_capabilities();
                caps.flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
                    && a.limits().max_storage_buffers_per_shader_stage >= 6
            })
            .filter(|a| match &req.adapter {
                Some(s) => a
                    .get_info()
                    .name
                    .to_ascii_lowercase()
                    .contains(&s.to_ascii_lowercase()),
                None => true,
            })
            .collect();
        candidates.sort_by_key(|a| {
            let i = a.get_info();
            (type_rank(i.device_type), backend_rank(i.backend))
        });
        let Some(adapter) = candidates.into_iter().next() else {
            let mut detail = String::new();
            if let Some(b) = &req.backend {
                detail.push_str(&format!(" for PDEVI_BACKEND={b}"));
            }
            if let Some(a) = &req.adapter {
                detail.push_str(&format!(" matching PDEVI_ADAPTER={a}"));
            }
            if seen.is_empty() {
                detail.push_str(" (no adapters at all)");
            } else {
                detail.push_str(&format!(
                    " with compute shaders (adapters seen: {})",
                    seen.join(", ")
                ));
            }
            return Err(Error::NoAdapter { detail });
        };
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) =
            pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("pdevi"),
                // Timestamps inside encoders where the adapter has them
                // (`--profile`); nothing else beyond WebGPU core.
                required_features: adapter.features()
                    & (wgpu::Features::TIMESTAMP_QUERY
                        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS),
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            }))?;
        let uncaptured = Arc::new(Mutex::new(None));
        {
            let slot = uncaptured.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                if let Ok(mut s) = slot.lock() {
                    s.get_or_insert_with(|| e.to_string());
                }
            }));
            // A lost device (driver reset, GPU removed) is reported at the
            // next check, with what to do; the last good state (checkpoint,
            // last_good_*.npy) is on disk already.
            let slot = uncaptured.clone();
            device.set_device_lost_callback(move |reason, message| {
                if reason != wgpu::DeviceLostReason::Destroyed {
                    if let Ok(mut s) = slot.lock() {
                        s.get_or_insert_with(|| {
                            format!(
                                "the device was lost ({reason:?}: {message}); the outputs and checkpoint written before are intact: resume with --resume OUT"
                            )
                        });
                    }
                }
            });
        }
        let solver_wg = match std::env::var("PDEVI_SOLVER_WG") {
            Ok(v) => {
                let wg: u32 = v.trim().parse().unwrap_or(0);
                if !shaders::SOLVER_WGS.contains(&wg) {
                    return Err(Error::setting(
                        "PDEVI_SOLVER_WG",
                        v,
                        format!("expected one of {:?}", shaders::SOLVER_WGS),
                    ));
                }
                wg
            }
            Err(_) if info.device_type == wgpu::DeviceType::Cpu => 64,
            Err(_) => 256,
        };
        let matmul = match std::env::var("PDEVI_MATMUL").as_deref() {
            Ok("tiled") => KernelId::Matmul,
            Ok("blocked") => KernelId::MatmulBlocked,
            Ok(v) => {
                return Err(Error::setting(
                    "PDEVI_MATMUL",
                    v,
                    "expected `tiled` or `blocked`",
                ))
            }
            Err(_) if info.device_type == wgpu::DeviceType::Cpu => KernelId::MatmulBlocked,
            Err(_) => KernelId::Matmul,
        };
        let mut ctx = GpuContext {
            adapter,
            device,
            queue,
            info,
            limits,
            solver_wg,
            matmul,
            pipelines: Vec::new(),
            uncaptured,
            instance,
            renderer: std::sync::OnceLock::new(),
            allocated: Default::default(),
            allocations: Mutex::new(Vec::new()),
        };
        ctx.build_pipelines()?;
        Ok(ctx)
    }

    fn build_pipelines(&mut self) -> Result<()> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut modules = std::collections::HashMap::new();
        let mut entry_wg = std::collections::HashMap::new();
        for &m in ModuleId::ALL {
            // Render modules have no compute kernels: FieldRenderer builds them.
            if !KernelId::ALL.iter().any(|k| k.spec().module == m) {
                continue;
            }
            // naga validation first: a readable error with file and line.
            let wg = m.wg(self.solver_wg);
            let naga_module = shaders::validate_with(m, wg)?;
            for ep in &naga_module.entry_points {
                entry_wg.insert((m, ep.name.clone()), ep.workgroup_size[0]);
            }
            let asm = shaders::assemble_with(m, wg);
            let module = self
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(m.name()),
                    source: wgpu::ShaderSource::Wgsl(asm.text.into()),
                });
            modules.insert(m, module);
        }
        for &k in KernelId::ALL {
            let spec = k.spec();
            let (m, entry) = (spec.module, spec.entry);
            let wg_x = *entry_wg
                .get(&(m, entry.to_string()))
                .ok_or_else(|| Error::Shader {
                    kernel: k.label(),
                    message: format!("module {} has no entry point {entry}", m.name()),
                })?;
            let entries: Vec<wgpu::BindGroupLayoutEntry> = spec
                .bindings
                .iter()
                .map(|b| wgpu::BindGroupLayoutEntry {
                    binding: b.binding,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: match b.kind {
                        Bind::Uniform => wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Uniform,
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        Bind::Read | Bind::ReadWrite => wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage {
                                read_only: b.kind == Bind::Read,
                            },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                    },
                    count: None,
                })
                .collect();
            let label = k.label();
            let bgl = self
                .device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(&label),
                    entries: &entries,
                });
            let layout = self
                .device
                .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some(&label),
                    bind_group_layouts: &[Some(&bgl)],
                    immediate_size: 0,
                });
            // A scope per kernel: a driver that cannot build one is named.
            let kernel_scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
            let pipeline = self
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&label),
                    layout: Some(&layout),
                    module: &modules[&m],
                    entry_point: Some(entry),
                    // Every kernel writes its workgroup memory before reading
                    // it; zero-filling it costs a whole-array store per
                    // workgroup (47 ms per vi_kl dispatch on lavapipe).
                    compilation_options: wgpu::PipelineCompilationOptions {
                        zero_initialize_workgroup_memory: false,
                        ..Default::default()
                    },
                    cache: None,
                });
            if let Some(e) = pollster::block_on(kernel_scope.pop()) {
                return Err(Error::Shader {
                    kernel: label,
                    message: format!(
                        "the driver of {} ({:?}) could not build its pipeline: {e}",
                        self.info.name, self.info.backend
                    ),
                });
            }
            self.pipelines.push(Pipeline {
                pipeline,
                layout: bgl,
                wg_x,
            });
        }
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu {
                context: format!("pipeline creation on {}", self.info.name),
                message: e.to_string(),
            });
        }
        Ok(())
    }

    /// One line describing the adapter.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?}, driver {} {}, solver workgroup {})",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            self.info.driver,
            self.info.driver_info,
            self.solver_wg
        )
    }

    /// Turn any error wgpu reported outside a scope into an [`Error`].
    pub fn check(&self, context: &str) -> Result<()> {
        let taken = self.uncaptured.lock().ok().and_then(|mut s| s.take());
        match taken {
            // The device is named: a fault on an unusual driver must say where.
            Some(message) => Err(Error::Gpu {
                context: format!("{context} on {} ({:?})", self.info.name, self.info.backend),
                message,
            }),
            None => Ok(()),
        }
    }

    /// A bind group of `k` from buffers in its binding order (the order of
    /// [`KernelSpec::bindings`](super::kernels::KernelSpec)). Engine code
    /// uses the typed [`prepare`](Self::prepare); this positional form serves
    /// table-driven tests.
    pub fn bind(&self, k: KernelId, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let binds = k.spec().bindings;
        assert_eq!(
            binds.len(),
            buffers.len(),
            "{}: wrong number of buffers",
            k.label()
        );
        let entries: Vec<wgpu::BindGroupEntry> = binds
            .iter()
            .zip(buffers)
            .map(|(b, buf)| wgpu::BindGroupEntry {
                binding: b.binding,
                resource: buf.as_entire_binding(),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&k.label()),
            layout: &self.pipelines[k.index()].layout,
            entries: &entries,
        })
    }

    /// Workgroup counts of `k` for `extent` items (see
    /// [`Geometry`](super::kernels::Geometry)), checked against the device's
    /// per-dimension limit.
    pub fn groups(&self, k: KernelId, extent: [usize; 2]) -> Result<[u32; 3]> {
        let g = k
            .spec()
            .geometry
            .groups(self.pipelines[k.index()].wg_x, extent);
        let max = u64::from(self.limits.max_compute_workgroups_per_dimension);
        if let Some(&over) = g.iter().find(|&&v| v > max) {
            return Err(Error::setting(
                "size",
                over,
                format!(
                    "{} needs {over} workgroups in one dimension for {extent:?} items; the device allows {max}: use a smaller batch or grid",
                    k.label()
                ),
            ));
        }
        Ok(g.map(|v| v as u32))
    }

    /// Workgroup size in x of `k`, as the WGSL declares it.
    pub fn workgroup_size(&self, k: KernelId) -> u32 {
        self.pipelines[k.index()].wg_x
    }

    /// Bind `args` and size the dispatch for `extent` items of work.
    pub fn prepare<'a, A: KernelArgs<'a>>(&self, args: &A, extent: [usize; 2]) -> Result<Dispatch> {
        self.prepare_as(A::KERNEL, args, extent)
    }

    /// [`prepare`](Self::prepare) for kernel `k`, which must have the same
    /// bindings as the kernel `args` names (the variants of one family: the
    /// Q1 and P1 solvers, CG start and iterate, the two products).
    pub fn prepare_as<'a, A: KernelArgs<'a>>(
        &self,
        k: KernelId,
        args: &A,
        extent: [usize; 2],
    ) -> Result<Dispatch> {
        if k.spec().bindings != A::KERNEL.spec().bindings {
            return Err(Error::Gpu {
                context: k.label(),
                message: format!(
                    "bound with the arguments of {}, whose bindings differ",
                    A::KERNEL.label()
                ),
            });
        }
        let groups = self.groups(k, extent)?;
        Ok(self.dispatch_of(k, &args.buffers(), groups))
    }

    /// [`prepare_groups`](Self::prepare_groups) for kernel `k` of the same
    /// bindings as the kernel `args` names.
    pub fn prepare_groups_as<'a, A: KernelArgs<'a>>(
        &self,
        k: KernelId,
        args: &A,
        groups: [u32; 3],
    ) -> Result<Dispatch> {
        if k.spec().bindings != A::KERNEL.spec().bindings {
            return Err(Error::Gpu {
                context: k.label(),
                message: format!(
                    "bound with the arguments of {}, whose bindings differ",
                    A::KERNEL.label()
                ),
            });
        }
        Ok(self.dispatch_of(k, &args.buffers(), groups))
    }

    /// [`prepare`](Self::prepare) with explicit workgroup counts (probes
    /// and benchmarks that size their own grids).
    pub fn prepare_groups<'a, A: KernelArgs<'a>>(&self, args: &A, groups: [u32; 3]) -> Dispatch {
        self.dispatch_of(A::KERNEL, &args.buffers(), groups)
    }

    fn dispatch_of(&self, k: KernelId, buffers: &[&wgpu::Buffer], groups: [u32; 3]) -> Dispatch {
        Dispatch {
            kernel: k,
            pipeline: self.pipelines[k.index()].pipeline.clone(),
            group: self.bind(k, buffers),
            groups,
        }
    }

    /// Record one dispatch of `k` into `pass` (with a bind group from
    /// [`bind`](Self::bind)); engine code records [`Dispatch`]es.
    pub fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        k: KernelId,
        bg: &wgpu::BindGroup,
        groups: [u32; 3],
    ) {
        pass.set_pipeline(&self.pipelines[k.index()].pipeline);
        pass.set_bind_group(0, bg, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
    }

    /// Largest storage binding the device allows, in bytes.
    pub fn max_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Refuse a buffer larger than the device binds, naming it.
    pub fn check_size(&self, what: &str, bytes: u64) -> Result<()> {
        let limit = self.max_binding();
        if bytes > limit {
            return Err(Error::TooLarge {
                what: what.to_string(),
                bytes,
                limit,
                limit_name: "storage buffer binding",
            });
        }
        Ok(())
    }

    /// A zero-filled storage buffer of `bytes` (at least 16), checked against the limits.
    pub fn storage(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        self.storage_with(label, bytes, wgpu::BufferUsages::empty())
    }

    /// A storage buffer that dispatches may also read their workgroup
    /// counts from.
    pub fn storage_indirect(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        self.storage_with(label, bytes, wgpu::BufferUsages::INDIRECT)
    }

    fn storage_with(
        &self,
        label: &str,
        bytes: u64,
        extra: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        self.check_size(label, bytes)?;
        self.count(label, bytes);
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(16).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST
                | extra,
            mapped_at_creation: false,
        }))
    }

    /// A storage buffer holding `data` (padded to at least 16 bytes).
    pub fn upload<T: Pod>(&self, label: &str, data: &[T]) -> Result<wgpu::Buffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        self.check_size(label, bytes.len() as u64)?;
        self.count(label, bytes.len() as u64);
        let mut padded = bytes.to_vec();
        padded.resize(bytes.len().max(16).next_multiple_of(4), 0);
        Ok(self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &padded,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            }))
    }

    /// Record an allocation (for `--dry-run` plans and `allocated_bytes`).
    fn count(&self, label: &str, bytes: u64) {
        self.allocated
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut v) = self.allocations.lock() {
            v.push((label.to_string(), bytes));
        }
    }

    /// Bytes of storage buffers allocated through this context so far.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The largest allocations so far, by label (summed), largest first.
    pub fn largest_allocations(&self, k: usize) -> Vec<(String, u64)> {
        let mut by: std::collections::BTreeMap<String, u64> = Default::default();
        if let Ok(v) = self.allocations.lock() {
            for (l, b) in v.iter() {
                *by.entry(l.clone()).or_default() += b;
            }
        }
        let mut v: Vec<(String, u64)> = by.into_iter().collect();
        v.sort_by_key(|x| std::cmp::Reverse(x.1));
        v.truncate(k);
        v
    }

    /// A uniform buffer holding `value`.
    pub fn uniform<T: Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::bytes_of(value),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// Overwrite the start of `buf` with `data`.
    pub fn write<T: Pod>(&self, buf: &wgpu::Buffer, data: &[T]) {
        self.queue.write_buffer(buf, 0, bytemuck::cast_slice(data));
    }

    pub fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    /// Submit and wait for completion.
    pub fn submit_wait(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        self.queue.submit([encoder.finish()]);
        self.wait()
    }

    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu {
                context: "waiting for the device".into(),
                message: e.to_string(),
            })?;
        self.check("device work")
    }

    /// Copy `count` elements of `T` starting at element `offset` of `buf` back to the host.
    pub fn read<T: Pod>(&self, buf: &wgpu::Buffer, offset: usize, count: usize) -> Result<Vec<T>> {
        let sz = std::mem::size_of::<T>() as u64;
        let bytes = (count as u64 * sz).next_multiple_of(4);
        if count == 0 {
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("pdevi.readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.encoder("pdevi.readback");
        enc.copy_buffer_to_buffer(buf, offset as u64 * sz, &staging, 0, bytes);
        self.queue.submit([enc.finish()]);
        let view = self.map_read(&staging)?;
        let out = bytemuck::pod_collect_to_vec::<u8, T>(&view[..(count as u64 * sz) as usize]);
        Ok(out)
    }

    /// Wait for the work submitted so far, then copy a MAP_READ buffer's
    /// bytes to the host.
    pub fn map_read(&self, staging: &wgpu::Buffer) -> Result<Vec<u8>> {
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        let fail = |message: String| Error::Gpu {
            context: "readback".into(),
            message,
        };
        rx.recv()
            .map_err(|e| fail(e.to_string()))?
            .map_err(|e| fail(e.to_string()))?;
        let out = staging
            .get_mapped_range(..)
            .map_err(|e| fail(e.to_string()))?
            .to_vec();
        staging.unmap();
        Ok(out)
    }

    /// A uniform buffer holding `values`.
    pub fn uniform_slice<T: Pod>(&self, label: &str, values: &[T]) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(values),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// The field renderer, built on first use and kept with the context
    /// (render pipelines are built once, like the compute pipelines).
    pub fn renderer(&self) -> Result<&FieldRenderer> {
        self.renderer
            .get_or_init(|| FieldRenderer::new(self).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::Gpu {
                context: "field renderer".into(),
                message: e.clone(),
            })
    }
}
