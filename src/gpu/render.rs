//! The field renderer: heat maps, colour bars, traces and sensor markers
//! drawn by the GPU's rasteriser (shaders/render/field.wgsl) into an RGBA8
//! texture, read back once per figure. The layout (where each panel goes)
//! is the host's; each draw carries its rectangle as a glam matrix from the
//! unit square to clip space, so the same shaders draw into an offscreen
//! figure or a window, with the live view's pan and zoom as a window onto
//! the unit square. The CPU mirror is src/cpu/render.rs.

use std::collections::HashMap;
use std::sync::Mutex;

use bytemuck::{Pod, Zeroable};
use glam::{Mat4, UVec2, Vec3, Vec4};

use super::shaders::{self, ModuleId};
use super::GpuContext;
use crate::error::{Error, Result};
use crate::output::colormap::{Colormap, LUT_SIZE};

/// `Draw.kind`: a cell field (`nx x ny` values).
pub const KIND_CELL: u32 = 0;
/// `Draw.kind`: a nodal field (`(nx + 1) x (ny + 1)` values, bilinear).
pub const KIND_NODAL: u32 = 1;
/// `Draw.kind`: a colour bar (the map's ramp, low at the bottom).
pub const KIND_RAMP: u32 = 2;
/// `Draw.kind`: a line trace of `nx` values across the rectangle.
pub const KIND_CURVE: u32 = 3;
/// `Draw.range_slot` when the draw carries its own (lo, hi).
pub const NO_RANGE: u32 = u32::MAX;
/// Draws per render call (the uniform array of field.wgsl).
pub const MAX_DRAWS: usize = 48;
/// Sensor markers per figure (the uniform array of field.wgsl).
pub const MAX_MARKERS: usize = 1024;
/// The offscreen format: unorm bytes, written as computed (no sRGB step).
pub const FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8Unorm;

/// One draw: `Draw` of shaders/render/field.wgsl (layout checked by a test).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq)]
pub struct Draw {
    /// Unit square (x right, y up) to clip space: the rectangle's place.
    pub clip: [[f32; 4]; 4],
    /// Top-left pixel and size of the rectangle in the target.
    pub origin: [u32; 2],
    pub size: [u32; 2],
    /// Cells (or node intervals) along x1 and x2; values of a trace.
    pub nx: u32,
    pub ny: u32,
    pub kind: u32,
    pub cmap: u32,
    /// First value of the field in the values buffer.
    pub offset: u32,
    /// Contour bands (0 = none).
    pub contours: u32,
    pub range_slot: u32,
    /// Markers drawn over this draw (the first `nmarkers` of the figure's).
    pub nmarkers: u32,
    pub lo: f32,
    pub hi: f32,
    /// 0: the whole unit square (figures); 1: `window` (pan and zoom).
    pub view: u32,
    pub _pad: u32,
    /// The visible part of the unit square (x0, y0, x1, y1).
    pub window: [f32; 4],
}

impl Draw {
    /// A draw of the rectangle at `origin` (top-left, pixels) of `size` in a
    /// target of `target` pixels; the rest is set by the caller.
    pub fn at(origin: UVec2, size: UVec2, target: UVec2, kind: u32) -> Draw {
        Draw {
            clip: rect_to_clip(origin, size, target).to_cols_array_2d(),
            origin: origin.to_array(),
            size: size.to_array(),
            nx: 1,
            ny: 1,
            kind,
            cmap: Colormap::Viridis.code(),
            offset: 0,
            contours: 0,
            range_slot: NO_RANGE,
            nmarkers: 0,
            lo: 0.0,
            hi: 1.0,
            view: 0,
            _pad: 0,
            window: [0.0, 0.0, 1.0, 1.0],
        }
    }

    /// Show only `window` (x0, y0, x1, y1) of the unit square: pan and zoom.
    pub fn with_window(mut self, window: Vec4) -> Draw {
        self.window = window.to_array();
        self.view = u32::from(window != Vec4::new(0.0, 0.0, 1.0, 1.0));
        self
    }
}

/// The matrix taking the unit square (x right, y up) onto the pixel
/// rectangle at `origin` (top-left, y down) of `size` in a `target`, in
/// clip space (x right, y up, both in [-1, 1]).
pub fn rect_to_clip(origin: UVec2, size: UVec2, target: UVec2) -> Mat4 {
    let t = target.as_vec2();
    let o = origin.as_vec2();
    let s = size.as_vec2();
    let translate = Vec3::new(2.0 * o.x / t.x - 1.0, 1.0 - 2.0 * (o.y + s.y) / t.y, 0.0);
    let scale = Vec3::new(2.0 * s.x / t.x, 2.0 * s.y / t.y, 1.0);
    Mat4::from_translation(translate) * Mat4::from_scale(scale)
}

/// The pipelines of one target format.
struct Pipelines {
    field: wgpu::RenderPipeline,
    marker: wgpu::RenderPipeline,
}

/// Render pipelines, the bind-group layout and the colour lookup texture;
/// built once per context on first use ([`GpuContext::renderer`]).
pub struct FieldRenderer {
    module: wgpu::ShaderModule,
    layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
    lut: wgpu::TextureView,
    pipelines: Mutex<HashMap<wgpu::TextureFormat, std::sync::Arc<Pipelines>>>,
}

/// Where the values of a render come from.
pub enum Values<'a> {
    /// Host values, uploaded as f32 for this render.
    Host(&'a [f32]),
    /// A GPU buffer the inference wrote (the live view and frames).
    Gpu(&'a wgpu::Buffer),
}

impl FieldRenderer {
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        let device = &ctx.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let asm = shaders::assemble(ModuleId::Render);
        shaders::validate(ModuleId::Render)?;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("render"),
            source: wgpu::ShaderSource::Wgsl(asm.text.into()),
        });
        let vf = wgpu::ShaderStages::VERTEX_FRAGMENT;
        let buffer = |binding, ty| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: vf,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let read = wgpu::BufferBindingType::Storage { read_only: true };
        let mut frag_read = buffer(1, read);
        frag_read.visibility = wgpu::ShaderStages::FRAGMENT;
        let mut ranges = buffer(2, read);
        ranges.visibility = wgpu::ShaderStages::FRAGMENT;
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("render"),
            entries: &[
                buffer(0, wgpu::BufferBindingType::Uniform),
                frag_read,
                ranges,
                buffer(3, wgpu::BufferBindingType::Uniform),
                wgpu::BindGroupLayoutEntry {
                    binding: 4,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Texture {
                        sample_type: wgpu::TextureSampleType::Float { filterable: false },
                        view_dimension: wgpu::TextureViewDimension::D2,
                        multisampled: false,
                    },
                    count: None,
                },
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("render"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        // The colour tables as one 256 x 2 texture, a row per map.
        let rows = Colormap::ALL.len() as u32;
        let lut = device.create_texture(&wgpu::TextureDescriptor {
            label: Some("render.lut"),
            size: wgpu::Extent3d {
                width: LUT_SIZE as u32,
                height: rows,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba8Unorm,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        let mut texels = Vec::with_capacity(LUT_SIZE * 4 * rows as usize);
        for c in Colormap::ALL {
            for rgb in c.table() {
                texels.extend_from_slice(&[rgb[0], rgb[1], rgb[2], 255]);
            }
        }
        ctx.queue.write_texture(
            wgpu::TexelCopyTextureInfo {
                texture: &lut,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            &texels,
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(LUT_SIZE as u32 * 4),
                rows_per_image: Some(rows),
            },
            wgpu::Extent3d {
                width: LUT_SIZE as u32,
                height: rows,
                depth_or_array_layers: 1,
            },
        );
        let lut = lut.create_view(&wgpu::TextureViewDescriptor::default());
        let r = FieldRenderer {
            module,
            layout,
            pipeline_layout,
            lut,
            pipelines: Mutex::new(HashMap::new()),
        };
        r.pipelines_for(ctx, FORMAT)?;
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu {
                context: "render pipeline creation".into(),
                message: e.to_string(),
            });
        }
        Ok(r)
    }

    fn pipelines_for(
        &self,
        ctx: &GpuContext,
        format: wgpu::TextureFormat,
    ) -> Result<std::sync::Arc<Pipelines>> {
        let mut map = self.pipelines.lock().map_err(|_| Error::Gpu {
            context: "renderer".into(),
            message: "pipeline cache poisoned by an earlier panic".into(),
        })?;
        if let Some(p) = map.get(&format) {
            return Ok(p.clone());
        }
        let make = |vs: &str, fs: &str| {
            ctx.device
                .create_render_pipeline(&wgpu::RenderPipelineDescriptor {
                    label: Some(fs),
                    layout: Some(&self.pipeline_layout),
                    vertex: wgpu::VertexState {
                        module: &self.module,
                        entry_point: Some(vs),
                        compilation_options: Default::default(),
                        buffers: &[],
                    },
                    primitive: wgpu::PrimitiveState::default(),
                    depth_stencil: None,
                    multisample: wgpu::MultisampleState::default(),
                    fragment: Some(wgpu::FragmentState {
                        module: &self.module,
                        entry_point: Some(fs),
                        compilation_options: Default::default(),
                        targets: &[Some(wgpu::ColorTargetState {
                            format,
                            blend: None,
                            write_mask: wgpu::ColorWrites::ALL,
                        })],
                    }),
                    multiview_mask: None,
                    cache: None,
                })
        };
        let p = std::sync::Arc::new(Pipelines {
            field: make("field_vs", "field_fs"),
            marker: make("marker_vs", "marker_fs"),
        });
        map.insert(format, p.clone());
        Ok(p)
    }

    /// Record the draws into `view` (a target of `format`), cleared to white
    /// first when `clear`. `ranges` holds GPU-computed (lo, hi) pairs for
    /// draws with a `range_slot`.
    #[allow(clippy::too_many_arguments, reason = "one render: target, data, draws")]
    pub fn encode(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        view: &wgpu::TextureView,
        format: wgpu::TextureFormat,
        values: &wgpu::Buffer,
        ranges: Option<&wgpu::Buffer>,
        draws: &[Draw],
        markers: &[[f32; 2]],
    ) -> Result<()> {
        if draws.len() > MAX_DRAWS {
            return Err(Error::Gpu {
                context: "render".into(),
                message: format!("{} draws in one figure; at most {MAX_DRAWS}", draws.len()),
            });
        }
        let pipes = self.pipelines_for(ctx, format)?;
        let mut dbuf = vec![Draw::zeroed(); MAX_DRAWS];
        dbuf[..draws.len()].copy_from_slice(draws);
        let mut mbuf = vec![[0f32; 4]; MAX_MARKERS];
        for (slot, m) in mbuf.iter_mut().zip(markers) {
            slot[0] = m[0];
            slot[1] = m[1];
        }
        let dbuf = ctx.uniform_slice("render.draws", &dbuf);
        let mbuf = ctx.uniform_slice("render.markers", &mbuf);
        // A storage binding must not be empty: a placeholder when no
        // draw reads GPU ranges.
        let placeholder;
        let ranges = match ranges {
            Some(r) => r,
            None => {
                placeholder = ctx.upload("render.ranges", &[0f32; 4])?;
                &placeholder
            }
        };
        let bind = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("render"),
            layout: &self.layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: dbuf.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: values.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: ranges.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: mbuf.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 4,
                    resource: wgpu::BindingResource::TextureView(&self.lut),
                },
            ],
        });
        let mut pass = enc.begin_render_pass(&wgpu::RenderPassDescriptor {
            label: Some("render.fields"),
            color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                view,
                depth_slice: None,
                resolve_target: None,
                ops: wgpu::Operations {
                    load: wgpu::LoadOp::Clear(wgpu::Color::WHITE),
                    store: wgpu::StoreOp::Store,
                },
            })],
            depth_stencil_attachment: None,
            timestamp_writes: None,
            occlusion_query_set: None,
            multiview_mask: None,
        });
        pass.set_bind_group(0, &bind, &[]);
        pass.set_pipeline(&pipes.field);
        pass.draw(0..6 * draws.len() as u32, 0..1);
        let nm = markers.len().min(MAX_MARKERS) as u32;
        pass.set_pipeline(&pipes.marker);
        for (k, d) in draws.iter().enumerate() {
            let m = d.nmarkers.min(nm);
            if m > 0 {
                let k = k as u32;
                pass.draw(6 * k..6 * k + 6, 0..m);
            }
        }
        Ok(())
    }

    /// Render the draws into a `size` figure (white elsewhere) and read it
    /// back as RGBA bytes, row by row.
    pub fn render(
        &self,
        ctx: &GpuContext,
        size: UVec2,
        values: Values<'_>,
        ranges: Option<&wgpu::Buffer>,
        draws: &[Draw],
        markers: &[[f32; 2]],
    ) -> Result<image::RgbaImage> {
        let max = ctx.limits.max_texture_dimension_2d;
        if size.x == 0 || size.y == 0 || size.x > max || size.y > max {
            return Err(Error::Gpu {
                context: "render".into(),
                message: format!(
                    "a {} x {} figure; the device allows 1 .. {max} pixels a side",
                    size.x, size.y
                ),
            });
        }
        let uploaded;
        let values = match values {
            Values::Gpu(b) => b,
            Values::Host(v) => {
                uploaded = if v.is_empty() {
                    ctx.upload("render.values", &[0f32])?
                } else {
                    ctx.upload("render.values", v)?
                };
                &uploaded
            }
        };
        let texture = ctx.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("render.target"),
            size: wgpu::Extent3d {
                width: size.x,
                height: size.y,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: FORMAT,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
        let row = (size.x * 4).next_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT);
        let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("render.readback"),
            size: row as u64 * size.y as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = ctx.encoder("render");
        self.encode(ctx, &mut enc, &view, FORMAT, values, ranges, draws, markers)?;
        enc.copy_texture_to_buffer(
            wgpu::TexelCopyTextureInfo {
                texture: &texture,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            wgpu::TexelCopyBufferInfo {
                buffer: &staging,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(row),
                    rows_per_image: Some(size.y),
                },
            },
            wgpu::Extent3d {
                width: size.x,
                height: size.y,
                depth_or_array_layers: 1,
            },
        );
        ctx.queue.submit([enc.finish()]);
        let bytes = ctx.map_read(&staging)?;
        let mut img = image::RgbaImage::new(size.x, size.y);
        for y in 0..size.y as usize {
            let src = &bytes[y * row as usize..y * row as usize + size.x as usize * 4];
            img.as_mut()[y * size.x as usize * 4..(y + 1) * size.x as usize * 4]
                .copy_from_slice(src);
        }
        ctx.check("render")?;
        Ok(img)
    }
}
