//! Watching a posterior form: the field's pointwise mean and std under the
//! current q computed on the GPU (shaders/render/live.wgsl), drawn by the
//! field renderer straight from those buffers with the ELBO trace beside
//! them, into a window (`--live`), into PNG frames (`--frames DIR --every K`)
//! or an animated GIF (`--gif`). Only the ELBO points go up to the GPU and
//! only two colour ranges come back, plus the pixels of a frame that is
//! written to disk.

use std::path::{Path, PathBuf};

use bytemuck::{Pod, Zeroable};
use glam::{UVec2, Vec2, Vec4};
use image::RgbImage;

use crate::error::{Error, Result};
use crate::gpu::render::{Draw, KIND_CELL, KIND_CURVE, KIND_RAMP};
use crate::gpu::{args, Dispatch, GpuContext};
use crate::infer::vi::{Family, ViEngine};
use crate::output::plot::{self, Align};
use crate::output::window::{LiveEventLoop, LiveWindow};
use crate::physics::problem::{Problem, ProblemKind};

/// `LiveParams` of shaders/render/live.wgsl (layout checked by tests/layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq)]
pub struct LiveParams {
    pub d: u32,
    pub r: u32,
    pub family: u32,
    pub ncoef: u32,
    pub nfields: u32,
    pub len: u32,
    pub _pad: [u32; 2],
}

/// ELBO points kept for the trace panel (older points are thinned).
pub const CURVE_POINTS: usize = 512;

/// The field's mean and std under q, and their colour ranges, on the GPU.
/// `fields` holds mean (ncoef), std (ncoef), then the ELBO trace points.
pub struct LiveFields {
    pub fields: wgpu::Buffer,
    pub ranges: wgpu::Buffer,
    pub ncoef: usize,
    _params: wgpu::Buffer,
    moments: Dispatch,
    range: Dispatch,
    /// The host writes mean and std ([`LiveFields::set_fields`]); only the
    /// ranges are computed.
    host_fields: bool,
}

impl LiveFields {
    /// For q with parameters `theta` (of `family`) over the KL coefficients
    /// whose basis (d x ncoef) is `basis`.
    pub fn new(
        ctx: &GpuContext,
        theta: &wgpu::Buffer,
        basis: &wgpu::Buffer,
        family: Family,
        d: usize,
        ncoef: usize,
    ) -> Result<Self> {
        let params = LiveParams {
            d: d as u32,
            r: family.rank() as u32,
            family: family.code(),
            ncoef: ncoef as u32,
            nfields: 2,
            len: ncoef as u32,
            _pad: [0; 2],
        };
        let params = ctx.uniform("live.params", &params);
        let fields = ctx.storage("live.fields", ((2 * ncoef + CURVE_POINTS) * 4) as u64)?;
        let ranges = ctx.storage("live.ranges", 16)?;
        let moments = ctx.prepare(
            &args::FieldMoments {
                params: &params,
                theta,
                basis,
                fields: &fields,
            },
            [ncoef, 1],
        )?;
        let range = ctx.prepare(
            &args::FieldRange {
                params: &params,
                fields: &fields,
                ranges: &ranges,
            },
            [1, 1],
        )?;
        Ok(LiveFields {
            fields,
            ranges,
            ncoef,
            _params: params,
            moments,
            range,
            host_fields: false,
        })
    }

    /// Write mean and std from the host (MCMC's running moments); from
    /// then on only the ranges are computed on the GPU.
    pub fn set_fields(&mut self, ctx: &GpuContext, mean: &[f64], std: &[f64]) {
        let f: Vec<f32> = mean.iter().chain(std).map(|&v| v as f32).collect();
        ctx.queue
            .write_buffer(&self.fields, 0, bytemuck::cast_slice(&f));
        self.host_fields = true;
    }

    /// For a VI engine's current q.
    pub fn for_engine(ctx: &GpuContext, engine: &ViEngine) -> Result<Self> {
        let pb = &engine.solver.problem;
        Self::new(
            ctx,
            &engine.theta,
            &engine.solver.basis,
            engine.family,
            pb.d,
            pb.ncoef(),
        )
    }

    /// Moments then ranges, in one compute pass.
    pub fn encode(&self, enc: &mut wgpu::CommandEncoder) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("live"),
            timestamp_writes: None,
        });
        if !self.host_fields {
            self.moments.record(&mut pass);
        }
        self.range.record(&mut pass);
    }

    /// Upload the ELBO trace (thinned to [`CURVE_POINTS`]); returns the
    /// number of points and their plotted range.
    pub fn set_curve(&self, ctx: &GpuContext, elbo: &[f64]) -> (usize, (f64, f64)) {
        let pts = thin(elbo, CURVE_POINTS);
        let f: Vec<f32> = pts.iter().map(|&v| v as f32).collect();
        if !f.is_empty() {
            ctx.queue.write_buffer(
                &self.fields,
                (2 * self.ncoef * 4) as u64,
                bytemuck::cast_slice(&f),
            );
        }
        (pts.len(), plot::robust_range(&pts))
    }
}

/// At most `max` points of `v`, evenly spaced, the last one kept.
fn thin(v: &[f64], max: usize) -> Vec<f64> {
    if v.len() <= max {
        return v.to_vec();
    }
    (0..max).map(|k| v[k * (v.len() - 1) / (max - 1)]).collect()
}

/// Where the panels of a live frame go (pixels), for a problem.
#[derive(Clone, Copy, Debug)]
pub struct FrameLayout {
    pub size: UVec2,
    pub mean: (UVec2, UVec2),
    pub std: (UVec2, UVec2),
    pub mean_bar: (UVec2, UVec2),
    pub std_bar: (UVec2, UVec2),
    pub curve: (UVec2, UVec2),
    /// Cells along x1, x2 of the maps (1-D problems: values of the curve, 1).
    pub grid: (u32, u32),
    pub two_d: bool,
}

const TOP: u32 = 52;
const MARGIN: u32 = 16;
const BAR: u32 = 14;
const TICKS: u32 = 78;

impl FrameLayout {
    pub fn for_problem(pb: &Problem) -> Self {
        let two_d = pb.kind == ProblemKind::Darcy2d;
        let (side, grid) = if two_d {
            let s = (256 / pb.n).max(1) as u32;
            (pb.n as u32 * s, (pb.n as u32, pb.n as u32))
        } else {
            (256, (pb.ncoef() as u32, 1))
        };
        let map = UVec2::new(if two_d { side } else { 320 }, side);
        let bar = UVec2::new(BAR, side);
        let mut x = MARGIN;
        let mean = (UVec2::new(x, TOP), map);
        x += map.x + 8;
        let mean_bar = (UVec2::new(x, TOP), bar);
        x += BAR + TICKS;
        let std = (UVec2::new(x, TOP), map);
        x += map.x + 8;
        let std_bar = (UVec2::new(x, TOP), bar);
        x += BAR + TICKS;
        let curve = (UVec2::new(x, TOP), UVec2::new(320, side));
        x += 320 + MARGIN;
        FrameLayout {
            size: UVec2::new(x, TOP + side + MARGIN + 8),
            mean,
            std,
            mean_bar,
            std_bar,
            curve,
            grid,
            two_d,
        }
    }

    /// The draws of a frame: mean and std (GPU ranges 0 and 1), their
    /// colour bars, the ELBO trace of `points` values in (lo, hi). `window`
    /// is the visible part of the unit square (pan and zoom).
    pub fn draws(
        &self,
        ncoef: usize,
        points: usize,
        curve_range: (f64, f64),
        window: Vec4,
    ) -> Vec<Draw> {
        let mut out = Vec::with_capacity(5);
        for (slot, (origin, size)) in [self.mean, self.std].into_iter().enumerate() {
            let kind = if self.two_d { KIND_CELL } else { KIND_CURVE };
            let mut d = Draw::at(origin, size, self.size, kind);
            d.nx = self.grid.0;
            d.ny = self.grid.1;
            d.offset = (slot * ncoef) as u32;
            d.range_slot = slot as u32;
            if self.two_d {
                d = d.with_window(window);
            }
            out.push(d);
        }
        // Colour bars for maps; a 1-D trace is read against its tick labels.
        if self.two_d {
            for (origin, size) in [self.mean_bar, self.std_bar] {
                out.push(Draw::at(origin, size, self.size, KIND_RAMP));
            }
        }
        let mut c = Draw::at(self.curve.0, self.curve.1, self.size, KIND_CURVE);
        c.nx = points as u32;
        c.offset = (2 * ncoef) as u32;
        c.lo = curve_range.0 as f32;
        c.hi = curve_range.1 as f32;
        out.push(c);
        out
    }

    /// The titles, frames and tick labels of a frame written to disk.
    pub fn annotate(
        &self,
        img: &mut RgbImage,
        header: &str,
        ranges: [[f32; 2]; 2],
        curve_title: &str,
        curve: (f64, f64),
    ) {
        plot::caption(
            img,
            header,
            (self.size.x as i32 / 2, 14),
            Align::Centre,
            true,
        );
        let field = if self.two_d { "z" } else { "f" };
        let titles = [
            format!("posterior mean of {field}"),
            format!("posterior std of {field}"),
        ];
        for (((o, s), (bo, bs)), (title, r)) in
            [(self.mean, self.mean_bar), (self.std, self.std_bar)]
                .into_iter()
                .zip(titles.iter().zip(ranges))
        {
            plot::caption(
                img,
                title,
                ((o.x + s.x / 2) as i32, 38),
                Align::Centre,
                true,
            );
            plot::outline(img, o.x as i32, o.y as i32, s.x as i32, s.y as i32);
            if self.two_d {
                plot::outline(img, bo.x as i32, bo.y as i32, bs.x as i32, bs.y as i32);
            }
            let levels = [r[0] as f64, 0.5 * (r[0] as f64 + r[1] as f64), r[1] as f64];
            let labels = plot::level_labels(&levels);
            for (k, label) in labels.iter().enumerate() {
                let y = bo.y as i32 + bs.y as i32 - 1 - (k as i32 * (bs.y as i32 - 1)) / 2;
                plot::caption(
                    img,
                    label,
                    ((bo.x + bs.x + 4) as i32, y),
                    Align::Left,
                    false,
                );
            }
        }
        let (o, s) = self.curve;
        plot::caption(
            img,
            curve_title,
            ((o.x + s.x / 2) as i32, 38),
            Align::Centre,
            true,
        );
        plot::outline(img, o.x as i32, o.y as i32, s.x as i32, s.y as i32);
        let labels = plot::level_labels(&[curve.0, curve.1]);
        plot::caption(
            img,
            &labels[1],
            ((o.x + 4) as i32, (o.y + 8) as i32),
            Align::Left,
            false,
        );
        plot::caption(
            img,
            &labels[0],
            ((o.x + 4) as i32, (o.y + s.y - 8) as i32),
            Align::Left,
            false,
        );
    }
}

/// Frames of a run written as PNGs every `every` steps, and as one GIF.
pub struct FrameSink {
    pub dir: Option<PathBuf>,
    pub every: usize,
    pub gif: Option<PathBuf>,
    pub written: Vec<PathBuf>,
    gif_frames: Vec<image::RgbaImage>,
    /// Seconds spent on frames (render, read-back, PNG).
    pub seconds: f64,
}

impl FrameSink {
    pub fn new(dir: Option<PathBuf>, every: usize, gif: Option<PathBuf>) -> Result<Self> {
        if every == 0 {
            return Err(Error::setting(
                "every",
                0,
                "frames are taken every K >= 1 steps",
            ));
        }
        if let Some(d) = &dir {
            crate::output::files::ensure_dir(d)?;
        }
        Ok(FrameSink {
            dir,
            every,
            gif,
            written: Vec::new(),
            gif_frames: Vec::new(),
            seconds: 0.0,
        })
    }

    /// Render the frame of step `step` (0-based) from the GPU buffers.
    pub fn capture(
        &mut self,
        ctx: &GpuContext,
        live: &LiveFields,
        layout: &FrameLayout,
        step: usize,
        curve: (&str, &[f64]),
    ) -> Result<()> {
        let t0 = std::time::Instant::now();
        let img = render_frame(
            ctx,
            live,
            layout,
            step,
            curve,
            Vec4::new(0.0, 0.0, 1.0, 1.0),
        )?;
        if let Some(dir) = &self.dir {
            let p = dir.join(format!("frame_{:06}.png", step + 1));
            crate::output::files::write_png(&p, &img)?;
            self.written.push(p);
        }
        if self.gif.is_some() {
            self.gif_frames
                .push(image::DynamicImage::ImageRgb8(img).to_rgba8());
        }
        self.seconds += t0.elapsed().as_secs_f64();
        Ok(())
    }

    /// Write the GIF, if one was asked for; returns its path.
    pub fn finish(&mut self) -> Result<Option<PathBuf>> {
        let Some(path) = self.gif.clone() else {
            return Ok(None);
        };
        write_gif(&path, std::mem::take(&mut self.gif_frames), 100)?;
        Ok(Some(path))
    }
}

/// Animated GIF of `frames`, `delay_ms` apart, looping.
pub fn write_gif(path: &Path, frames: Vec<image::RgbaImage>, delay_ms: u32) -> Result<()> {
    use image::codecs::gif::{GifEncoder, Repeat};
    if frames.is_empty() {
        return Err(Error::setting(
            "gif",
            path.display(),
            "no frames were taken (the run had fewer steps than --every)",
        ));
    }
    crate::output::files::write_atomic(path, |tmp| {
        let file = std::fs::File::create(tmp).map_err(|e| Error::io(path, e))?;
        let mut enc = GifEncoder::new_with_speed(std::io::BufWriter::new(file), 10);
        let fail = |e: image::ImageError| Error::Format {
            path: path.to_path_buf(),
            message: format!("could not write the GIF: {e}"),
        };
        enc.set_repeat(Repeat::Infinite).map_err(fail)?;
        let delay = image::Delay::from_numer_denom_ms(delay_ms, 1);
        enc.encode_frames(
            frames
                .into_iter()
                .map(|f| image::Frame::from_parts(f, 0, 0, delay)),
        )
        .map_err(fail)
    })
}

/// One frame: moments and ranges on the GPU, the draws rendered from those
/// buffers, the two ranges read back for the colour-bar labels.
pub fn render_frame(
    ctx: &GpuContext,
    live: &LiveFields,
    layout: &FrameLayout,
    step: usize,
    (curve_title, values): (&str, &[f64]),
    window: Vec4,
) -> Result<RgbImage> {
    let (points, curve) = live.set_curve(ctx, values);
    let mut enc = ctx.encoder("live");
    live.encode(&mut enc);
    ctx.queue.submit([enc.finish()]);
    let draws = layout.draws(live.ncoef, points, curve, window);
    let rgba = ctx.renderer()?.render(
        ctx,
        layout.size,
        crate::gpu::render::Values::Gpu(&live.fields),
        Some(&live.ranges),
        &draws,
        &[],
    )?;
    let r: Vec<f32> = ctx.read(&live.ranges, 0, 4)?;
    let mut img = image::DynamicImage::ImageRgba8(rgba).to_rgb8();
    let last = values.last().copied().unwrap_or(f64::NAN);
    layout.annotate(
        &mut img,
        &format!("step {}   {curve_title} {last:.6e}", step + 1),
        [[r[0], r[1]], [r[2], r[3]]],
        curve_title,
        curve,
    );
    Ok(img)
}

/// What a command was asked to show while it runs.
#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    /// PNG frames into this folder.
    pub frames: Option<PathBuf>,
    /// Steps (iterations) between frames; 10 by default.
    pub every: Option<usize>,
    /// `posterior_forming.gif` in the output folder.
    pub gif: bool,
    /// A window.
    pub live: bool,
}

/// Frames, GIF and live window of one run: what they show is computed on
/// the GPU every `every` steps, from the engine's q (VI), from a Gaussian
/// (Laplace's iterates) or from host moments (MCMC's running draws).
pub struct Watcher {
    every: usize,
    steps: usize,
    layout: FrameLayout,
    sink: Option<FrameSink>,
    want_window: bool,
    window: Option<LiveWindow>,
    fields: Option<LiveFields>,
    /// Theta (full-rank) and basis buffers for Gaussians given by the host.
    own: Option<(wgpu::Buffer, wgpu::Buffer)>,
    curve_title: String,
    start: std::time::Instant,
    /// Why the window did not open, for metrics.json.
    window_error: Option<String>,
    event_loop: Option<LiveEventLoop>,
}

impl Watcher {
    /// `None` when nothing is to be shown.
    pub fn new(
        o: &WatchOptions,
        out: &Path,
        pb: &Problem,
        steps: usize,
        curve_title: &str,
    ) -> Result<Option<Self>> {
        if o.frames.is_none() && !o.gif && !o.live {
            if let Some(k) = o.every {
                return Err(Error::setting(
                    "every",
                    k,
                    "--every sets the steps between frames: use it with --frames, --gif or --live",
                ));
            }
            return Ok(None);
        }
        let every = o.every.unwrap_or(10);
        let sink = if o.frames.is_some() || o.gif {
            Some(FrameSink::new(
                o.frames.clone(),
                every,
                o.gif.then(|| out.join("posterior_forming.gif")),
            )?)
        } else {
            None
        };
        Ok(Some(Watcher {
            every,
            steps,
            layout: FrameLayout::for_problem(pb),
            sink,
            want_window: o.live,
            window: None,
            fields: None,
            own: None,
            curve_title: curve_title.to_string(),
            start: std::time::Instant::now(),
            window_error: None,
            event_loop: None,
        }))
    }

    /// The window system's display, when a window was asked for: create
    /// the GPU context with it ([`GpuContext::with_display`]).
    pub fn display(&mut self) -> Option<Box<dyn wgpu::wgt::WgpuHasDisplayHandle>> {
        if !self.want_window {
            return None;
        }
        match LiveEventLoop::new() {
            Ok(el) => {
                let d = el.display();
                self.event_loop = Some(el);
                Some(d)
            }
            Err(e) => {
                eprintln!("warning: no live view: {e}");
                self.window_error = Some(e.to_string());
                None
            }
        }
    }

    /// Open the window, if one was asked for; without a display the run
    /// goes on and says why (even with --quiet: the window was asked for).
    pub fn open_window(&mut self, ctx: &GpuContext) {
        if let Some(el) = self.event_loop.take() {
            match LiveWindow::open(ctx, &self.layout, el) {
                Ok(w) => self.window = Some(w),
                Err(e) => {
                    eprintln!("warning: no live view: {e}");
                    self.window_error = Some(e.to_string());
                }
            }
        }
        self.start = std::time::Instant::now();
    }

    /// Read-backs every gcd(every, 10) steps, so frames land on their steps.
    pub fn report_every(&self) -> usize {
        fn gcd(a: usize, b: usize) -> usize {
            if b == 0 {
                a
            } else {
                gcd(b, a % b)
            }
        }
        gcd(self.every, 10)
    }

    /// Steps between frames.
    pub fn every(&self) -> usize {
        self.every
    }

    /// Whether step `t` (0-based) gets a frame: every `every`-th and the last.
    pub fn due(&self, t: usize) -> bool {
        (t + 1).is_multiple_of(self.every) || t + 1 == self.steps
    }

    fn show(&mut self, ctx: &GpuContext, t: usize, curve: &[f64]) -> Result<()> {
        let Some(fields) = &self.fields else {
            return Ok(());
        };
        if let Some(s) = &mut self.sink {
            s.capture(ctx, fields, &self.layout, t, (&self.curve_title, curve))?;
        }
        if let Some(w) = &mut self.window {
            if !w.closed() {
                w.show(ctx, fields, &self.layout, t, curve)?;
            }
        }
        Ok(())
    }

    /// A frame of a VI engine's current q (moments on the GPU from its theta).
    pub fn show_engine(
        &mut self,
        ctx: &GpuContext,
        engine: &ViEngine,
        t: usize,
        curve: &[f64],
    ) -> Result<()> {
        if self.fields.is_none() {
            self.fields = Some(LiveFields::for_engine(ctx, engine)?);
        }
        self.show(ctx, t, curve)
    }

    /// A frame of N(m, cov) over xi (Laplace's iterates): the full-rank
    /// factor goes up, the field's moments are computed on the GPU.
    pub fn show_gaussian(
        &mut self,
        ctx: &GpuContext,
        pb: &Problem,
        m: &[f64],
        cov: &[f64],
        t: usize,
        curve: &[f64],
    ) -> Result<()> {
        let d = pb.d;
        let theta = Family::FullRank.theta_from_gaussian(d, m, cov)?;
        let t32: Vec<f32> = theta.iter().map(|&v| v as f32).collect();
        if self.own.is_none() {
            let basis: Vec<f32> = pb.basis().iter().map(|&v| v as f32).collect();
            let tb = ctx.upload("live.theta", &t32)?;
            let bb = ctx.upload("live.basis", &basis)?;
            self.fields = Some(LiveFields::new(
                ctx,
                &tb,
                &bb,
                Family::FullRank,
                d,
                pb.ncoef(),
            )?);
            self.own = Some((tb, bb));
        }
        if let Some((tb, _)) = &self.own {
            ctx.write(tb, &t32);
        }
        self.show(ctx, t, curve)
    }

    /// A frame of field moments computed on the host (MCMC's running draws).
    #[allow(clippy::too_many_arguments, reason = "one frame's inputs")]
    pub fn show_fields(
        &mut self,
        ctx: &GpuContext,
        pb: &Problem,
        theta_for_layout: &wgpu::Buffer,
        mean: &[f64],
        std: &[f64],
        t: usize,
        curve: &[f64],
    ) -> Result<()> {
        if self.fields.is_none() {
            // The moments kernel is never run here; it needs some bindings.
            let basis = ctx.upload("live.basis", &[0f32; 4])?;
            self.fields = Some(LiveFields::new(
                ctx,
                theta_for_layout,
                &basis,
                Family::MeanField,
                1,
                pb.ncoef(),
            )?);
        }
        if let Some(f) = &mut self.fields {
            f.set_fields(ctx, mean, std);
        }
        self.show(ctx, t, curve)
    }

    /// Write the GIF; what was shown and what it cost, for metrics.json.
    pub fn finish(&mut self) -> Result<serde_json::Value> {
        let total = self.start.elapsed().as_secs_f64();
        let mut v = serde_json::json!({ "every": self.every });
        if let Some(s) = &mut self.sink {
            let gif = s.finish()?;
            v["frames"] = s.written.len().into();
            v["frames_dir"] = s.dir.as_ref().map(|d| d.display().to_string()).into();
            v["gif"] = gif.map(|g| g.display().to_string()).into();
            v["frame_seconds"] = s.seconds.into();
            v["frame_share_of_run"] = (s.seconds / total.max(1e-9)).into();
        }
        if let Some(e) = &self.window_error {
            v["window_error"] = e.as_str().into();
        }
        if let Some(w) = &self.window {
            v["window_frames"] = w.frames.into();
            v["window_seconds"] = w.seconds.into();
            v["window_share_of_run"] = (w.seconds / total.max(1e-9)).into();
        }
        Ok(v)
    }
}

/// Zoom `window` (x0, y0, x1, y1 of the unit square) by `factor` (< 1 zooms
/// in) about the unit-square point `at`, kept inside the unit square.
pub fn zoom(window: Vec4, at: Vec2, factor: f32) -> Vec4 {
    let lo = at + (Vec2::new(window.x, window.y) - at) * factor;
    let hi = at + (Vec2::new(window.z, window.w) - at) * factor;
    clamp_window(lo, hi)
}

/// Move `window` by `delta` (unit-square units), kept inside the unit square.
pub fn pan(window: Vec4, delta: Vec2) -> Vec4 {
    clamp_window(
        Vec2::new(window.x, window.y) + delta,
        Vec2::new(window.z, window.w) + delta,
    )
}

fn clamp_window(lo: Vec2, hi: Vec2) -> Vec4 {
    let size = (hi - lo).clamp(Vec2::splat(1.0 / 64.0), Vec2::ONE);
    let lo = lo.clamp(Vec2::ZERO, Vec2::ONE - size);
    Vec4::new(lo.x, lo.y, lo.x + size.x, lo.y + size.y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zoom_and_pan_stay_in_the_unit_square() {
        let w = Vec4::new(0.0, 0.0, 1.0, 1.0);
        let z = zoom(w, Vec2::new(0.5, 0.5), 0.5);
        assert_eq!(z, Vec4::new(0.25, 0.25, 0.75, 0.75));
        let p = pan(z, Vec2::new(1.0, 0.0));
        assert_eq!(p, Vec4::new(0.5, 0.25, 1.0, 0.75));
        assert_eq!(zoom(z, Vec2::new(0.5, 0.5), 4.0), w);
    }

    #[test]
    fn thinning_keeps_ends() {
        let v: Vec<f64> = (0..2000).map(f64::from).collect();
        let t = thin(&v, 512);
        assert_eq!(t.len(), 512);
        assert_eq!(t[0], 0.0);
        assert_eq!(t[511], 1999.0);
    }
}
