//! `--live`: a winit window showing the frames of [`super::live`] as the
//! ELBO loop runs. The loop keeps control: after each frame the window's
//! events are pumped without waiting (winit's pump_events), so the window
//! costs only its frames. The mouse wheel zooms the maps about the cursor,
//! a drag pans them (glam does the view arithmetic), R resets the view,
//! closing the window stops the live view, not the run.

use std::sync::Arc;
use std::time::Duration;

use glam::{UVec2, Vec2, Vec4};
use winit::application::ApplicationHandler;
use winit::dpi::PhysicalSize;
use winit::event::{ElementState, MouseButton, MouseScrollDelta, WindowEvent};
use winit::event_loop::{ActiveEventLoop, EventLoop};
use winit::keyboard::{Key, NamedKey};
use winit::platform::pump_events::EventLoopExtPumpEvents;
use winit::window::{Window, WindowId};

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::output::live::{pan, zoom, FrameLayout, LiveFields};

const UNIT: Vec4 = Vec4::new(0.0, 0.0, 1.0, 1.0);

struct App {
    size: UVec2,
    window: Option<Arc<Window>>,
    error: Option<String>,
    closed: bool,
    view: Vec4,
    cursor: Vec2,
    dragging: bool,
    /// The map rectangle the cursor acts on (origin, size), pixels.
    map: (Vec2, Vec2),
}

impl App {
    /// The cursor as a point of the unit square under the current view.
    fn unit_at(&self, p: Vec2) -> Vec2 {
        let (o, s) = self.map;
        let u = ((p - o) / s).clamp(Vec2::ZERO, Vec2::ONE);
        let u = Vec2::new(u.x, 1.0 - u.y);
        Vec2::new(self.view.x, self.view.y)
            + u * (Vec2::new(self.view.z, self.view.w) - Vec2::new(self.view.x, self.view.y))
    }
}

impl ApplicationHandler for App {
    fn resumed(&mut self, el: &ActiveEventLoop) {
        if self.window.is_some() {
            return;
        }
        let attrs = Window::default_attributes()
            .with_title("pdevi: posterior forming")
            .with_inner_size(PhysicalSize::new(self.size.x, self.size.y))
            .with_resizable(false);
        match el.create_window(attrs) {
            Ok(w) => self.window = Some(Arc::new(w)),
            Err(e) => self.error = Some(e.to_string()),
        }
    }

    fn window_event(&mut self, _el: &ActiveEventLoop, _id: WindowId, event: WindowEvent) {
        match event {
            WindowEvent::CloseRequested | WindowEvent::Destroyed => self.closed = true,
            WindowEvent::CursorMoved { position, .. } => {
                let p = Vec2::new(position.x as f32, position.y as f32);
                if self.dragging {
                    let (_, s) = self.map;
                    let span = Vec2::new(self.view.z - self.view.x, self.view.w - self.view.y);
                    let d = (p - self.cursor) / s * span;
                    self.view = pan(self.view, Vec2::new(-d.x, d.y));
                }
                self.cursor = p;
            }
            WindowEvent::MouseInput {
                state,
                button: MouseButton::Left,
                ..
            } => self.dragging = state == ElementState::Pressed,
            WindowEvent::MouseWheel { delta, .. } => {
                let lines = match delta {
                    MouseScrollDelta::LineDelta(_, y) => y,
                    MouseScrollDelta::PixelDelta(p) => p.y as f32 / 40.0,
                };
                let at = self.unit_at(self.cursor);
                self.view = zoom(self.view, at, 0.85f32.powf(lines));
            }
            WindowEvent::KeyboardInput { event, .. } if event.state == ElementState::Pressed => {
                if let Key::Character(c) = &event.logical_key {
                    if c.eq_ignore_ascii_case("r") {
                        self.view = UNIT;
                    }
                }
                if event.logical_key == Key::Named(NamedKey::Escape) {
                    self.closed = true;
                }
            }
            _ => {}
        }
    }
}

/// The live window and its surface.
pub struct LiveWindow {
    event_loop: EventLoop<()>,
    app: App,
    surface: wgpu::Surface<'static>,
    format: wgpu::TextureFormat,
    /// Seconds spent drawing and presenting.
    pub seconds: f64,
    pub frames: usize,
}

fn no_window(why: impl std::fmt::Display) -> Error {
    Error::Gpu {
        context: "live view".into(),
        message: format!(
            "{why}; on a machine without a display use --frames DIR (and --gif) instead of --live"
        ),
    }
}

/// The window system's event loop, made before the GPU context so the
/// context's instance can know the display (GL needs it to present).
pub struct LiveEventLoop(EventLoop<()>);

impl LiveEventLoop {
    pub fn new() -> Result<Self> {
        let mut builder = EventLoop::builder();
        // `pdevi run --live` calls this from the main thread; library users
        // and tests may not, and winit would panic there on Linux.
        #[cfg(all(
            unix,
            not(any(target_os = "macos", target_os = "ios", target_os = "android"))
        ))]
        {
            use winit::platform::x11::EventLoopBuilderExtX11;
            builder.with_any_thread(true);
        }
        Ok(LiveEventLoop(builder.build().map_err(no_window)?))
    }

    /// The display, for [`GpuContext::with_display`].
    pub fn display(&self) -> Box<dyn wgpu::wgt::WgpuHasDisplayHandle> {
        Box::new(self.0.owned_display_handle())
    }
}

impl LiveWindow {
    /// Open a window the size of `layout`'s frame on the context's device.
    pub fn open(ctx: &GpuContext, layout: &FrameLayout, event_loop: LiveEventLoop) -> Result<Self> {
        let mut event_loop = event_loop.0;
        let mut app = App {
            size: layout.size,
            window: None,
            error: None,
            closed: false,
            view: UNIT,
            cursor: Vec2::ZERO,
            dragging: false,
            map: (layout.mean.0.as_vec2(), layout.mean.1.as_vec2()),
        };
        // The window is created on the first resume.
        for _ in 0..50 {
            let _ = event_loop.pump_app_events(Some(Duration::from_millis(10)), &mut app);
            if app.window.is_some() || app.error.is_some() {
                break;
            }
        }
        if let Some(e) = app.error.take() {
            return Err(no_window(e));
        }
        let window = app
            .window
            .clone()
            .ok_or_else(|| no_window("the window system created no window"))?;
        let surface = ctx.instance.create_surface(window).map_err(no_window)?;
        let caps = surface.get_capabilities(&ctx.adapter);
        // The shader writes display-ready bytes: prefer a non-sRGB format.
        let format = caps
            .formats
            .iter()
            .copied()
            .find(|f| !f.is_srgb())
            .or_else(|| caps.formats.first().copied())
            .ok_or_else(|| no_window(format!("{} cannot present to this window", ctx.info.name)))?;
        let config = wgpu::SurfaceConfiguration {
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT,
            format,
            width: layout.size.x,
            height: layout.size.y,
            present_mode: wgpu::PresentMode::AutoNoVsync,
            desired_maximum_frame_latency: 2,
            alpha_mode: caps.alpha_modes[0],
            view_formats: vec![],
            color_space: wgpu::SurfaceColorSpace::Auto,
        };
        surface.configure(&ctx.device, &config);
        Ok(LiveWindow {
            event_loop,
            app,
            surface,
            format,
            seconds: 0.0,
            frames: 0,
        })
    }

    /// Whether the person closed the window.
    pub fn closed(&self) -> bool {
        self.app.closed
    }

    /// Draw the current q (moments computed into `live`) and the ELBO.
    pub fn show(
        &mut self,
        ctx: &GpuContext,
        live: &LiveFields,
        layout: &FrameLayout,
        step: usize,
        values: &[f64],
    ) -> Result<()> {
        let t0 = std::time::Instant::now();
        let _ = self
            .event_loop
            .pump_app_events(Some(Duration::ZERO), &mut self.app);
        if self.app.closed {
            return Ok(());
        }
        let (points, curve) = live.set_curve(ctx, values);
        let draws = layout.draws(live.ncoef, points, curve, self.app.view);
        let frame = match self.surface.get_current_texture() {
            wgpu::CurrentSurfaceTexture::Success(t)
            | wgpu::CurrentSurfaceTexture::Suboptimal(t) => t,
            // Occluded, timed out or outdated: skip this frame.
            _ => return Ok(()),
        };
        let view = frame
            .texture
            .create_view(&wgpu::TextureViewDescriptor::default());
        let mut enc = ctx.encoder("live.window");
        live.encode(&mut enc);
        ctx.renderer()?.encode(
            ctx,
            &mut enc,
            &view,
            self.format,
            &live.fields,
            Some(&live.ranges),
            &draws,
            &[],
        )?;
        ctx.queue.submit([enc.finish()]);
        ctx.queue.present(frame);
        if let Some(w) = &self.app.window {
            let last = values.last().copied().unwrap_or(f64::NAN);
            w.set_title(&format!("pdevi: step {}, {last:.6e}", step + 1));
        }
        self.frames += 1;
        self.seconds += t0.elapsed().as_secs_f64();
        Ok(())
    }
}
