//! Figures for people to look at: heat maps of 2-D fields with colour bars,
//! multi-panel summary figures, and line plots with uncertainty bands.
//!
//! Heat maps, colour bars and sensor markers are drawn by the GPU's
//! rasteriser ([`crate::gpu::render`]) when a [`Painter::Gpu`] is given, and
//! by its CPU mirror ([`crate::cpu::render`]) otherwise; axes, ticks and
//! text are drawn in software on top, into an [`image::RgbImage`] saved as
//! PNG. Text uses the built-in monospace bitmap fonts of `embedded-graphics`
//! (ASCII only; other characters show as `?`), so no font files are needed.
//! Heat-map writers also leave a JSON side-car with the numbers behind the
//! picture, so a script can check a figure without looking at it.

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use embedded_graphics::mono_font::ascii::{
    FONT_6X10, FONT_7X13, FONT_8X13, FONT_8X13_BOLD, FONT_9X15_BOLD,
};
use embedded_graphics::mono_font::{MonoFont, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::{DrawTarget, OriginDimensions, Pixel, Point, RgbColor, Size};
use embedded_graphics::text::{Alignment, Baseline, Text, TextStyleBuilder};
use embedded_graphics::Drawable;
use glam::UVec2;
use image::{Rgb, RgbImage};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::gpu::render::{Draw, Values, KIND_CELL, KIND_NODAL, KIND_RAMP, MAX_DRAWS, MAX_MARKERS};
use crate::gpu::GpuContext;

pub use crate::output::colormap::{rdbu, viridis, Colormap, NAN_GREY};
const WHITE: [u8; 3] = [255, 255, 255];
const INK: [u8; 3] = [25, 25, 25];
const GRID: [u8; 3] = [228, 228, 228];

// ---------------------------------------------------------------------------
// Drawing primitives
// ---------------------------------------------------------------------------

/// `embedded-graphics` target over an `RgbImage`; off-image pixels are dropped.
struct Canvas<'a>(&'a mut RgbImage);

impl OriginDimensions for Canvas<'_> {
    fn size(&self) -> Size {
        Size::new(self.0.width(), self.0.height())
    }
}

impl DrawTarget for Canvas<'_> {
    type Color = Rgb888;
    type Error = Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Infallible>
    where
        I: IntoIterator<Item = Pixel<Rgb888>>,
    {
        let (w, h) = self.0.dimensions();
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < w && (p.y as u32) < h {
                self.0
                    .put_pixel(p.x as u32, p.y as u32, Rgb([c.r(), c.g(), c.b()]));
            }
        }
        Ok(())
    }
}

/// Replaces what the ASCII fonts cannot show; newlines would break layout.
fn clean_text(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ' '..='~' => c,
            c if c.is_control() => ' ',
            _ => '?',
        })
        .collect()
}

fn text_width(s: &str, font: &MonoFont) -> u32 {
    let n = u32::try_from(s.chars().count()).unwrap_or(u32::MAX);
    n.saturating_mul(font.character_size.width + font.character_spacing)
}

/// Shortens `s` with a trailing `...` so it fits in `max_w` pixels.
fn fit_text(s: &str, font: &MonoFont, max_w: u32) -> String {
    let s = clean_text(s);
    if text_width(&s, font) <= max_w {
        return s;
    }
    let per = font.character_size.width + font.character_spacing;
    let keep = (max_w / per).saturating_sub(3) as usize;
    let mut out: String = s.chars().take(keep).collect();
    out.push_str("...");
    out
}

fn draw_text(
    img: &mut RgbImage,
    s: &str,
    at: (i32, i32),
    font: &MonoFont,
    color: [u8; 3],
    align: Alignment,
    baseline: Baseline,
) {
    let s = clean_text(s);
    let style = MonoTextStyle::new(font, Rgb888::new(color[0], color[1], color[2]));
    let text_style = TextStyleBuilder::new()
        .alignment(align)
        .baseline(baseline)
        .build();
    let mut canvas = Canvas(img);
    let Ok(_) =
        Text::with_text_style(&s, Point::new(at.0, at.1), style, text_style).draw(&mut canvas);
}

/// Horizontal placement of [`caption`] text relative to its point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Centre,
    Right,
}

/// Text on a figure (the same fonts as every figure): `bold` for titles,
/// vertically centred on `at`.
pub fn caption(img: &mut RgbImage, s: &str, at: (i32, i32), align: Align, bold: bool) {
    let font = if bold { PANEL_TITLE_FONT } else { TICK_FONT };
    let align = match align {
        Align::Left => Alignment::Left,
        Align::Centre => Alignment::Center,
        Align::Right => Alignment::Right,
    };
    draw_text(img, s, at, font, INK, align, Baseline::Middle);
}

/// A 1-pixel ink outline just outside the rectangle (x, y, w, h).
pub fn outline(img: &mut RgbImage, x: i32, y: i32, w: i32, h: i32) {
    frame(img, x, y, w, h, INK);
}

/// Text reading bottom-to-top, centred on `centre`.
fn draw_text_vertical(
    img: &mut RgbImage,
    s: &str,
    centre: (i32, i32),
    font: &MonoFont,
    color: [u8; 3],
) {
    let s = clean_text(s);
    let w = text_width(&s, font).max(1);
    let h = font.character_size.height;
    let mut tmp = RgbImage::from_pixel(w, h, Rgb(WHITE));
    draw_text(
        &mut tmp,
        &s,
        (0, 0),
        font,
        color,
        Alignment::Left,
        Baseline::Top,
    );
    // 270 degrees clockwise = a quarter turn anticlockwise.
    let rot = image::imageops::rotate270(&tmp);
    let x0 = centre.0 - rot.width() as i32 / 2;
    let y0 = centre.1 - rot.height() as i32 / 2;
    for (x, y, p) in rot.enumerate_pixels() {
        if p.0 == color {
            put(img, x0 + x as i32, y0 + y as i32, color);
        }
    }
}

fn put(img: &mut RgbImage, x: i32, y: i32, c: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, Rgb(c));
    }
}

fn blend(img: &mut RgbImage, x: i32, y: i32, c: [u8; 3], alpha: f64) {
    if x < 0 || y < 0 || x as u32 >= img.width() || y as u32 >= img.height() {
        return;
    }
    let p = img.get_pixel_mut(x as u32, y as u32);
    for (dst, &src) in p.0.iter_mut().zip(&c) {
        let v = *dst as f64 + alpha * (src as f64 - *dst as f64);
        *dst = v.round().clamp(0.0, 255.0) as u8;
    }
}

/// 1-pixel outline just outside the rectangle (x, y, w, h).
fn frame(img: &mut RgbImage, x: i32, y: i32, w: i32, h: i32, c: [u8; 3]) {
    for xx in x - 1..=x + w {
        put(img, xx, y - 1, c);
        put(img, xx, y + h, c);
    }
    for yy in y - 1..=y + h {
        put(img, x - 1, yy, c);
        put(img, x + w, yy, c);
    }
}

fn hline(img: &mut RgbImage, x0: i32, x1: i32, y: i32, c: [u8; 3]) {
    for x in x0..=x1 {
        put(img, x, y, c);
    }
}

fn vline(img: &mut RgbImage, x: i32, y0: i32, y1: i32, c: [u8; 3]) {
    for y in y0..=y1 {
        put(img, x, y, c);
    }
}

fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    crate::output::files::write_png(path, img)
}

/// The JSON side-car of a figure (`path` with the extension `.json`).
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    crate::output::files::write_json(&path.with_extension("json"), value)
}

fn format_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------
// Number formatting and ticks
// ---------------------------------------------------------------------------

fn use_exponent(maxabs: f64) -> bool {
    maxabs >= 1e5 || (maxabs > 0.0 && maxabs < 1e-3)
}

/// Drops the sign of values that print as zero ("-0.00" looks like a bug).
fn tidy_zero(s: String) -> String {
    match s.strip_prefix('-') {
        Some(rest) if rest.parse::<f64>() == Ok(0.0) => rest.to_string(),
        _ => s,
    }
}

/// Labels for arbitrary levels (colour bars): at least three significant
/// digits, and more until neighbouring labels differ.
pub fn level_labels(values: &[f64]) -> Vec<String> {
    let maxabs = values
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    if maxabs == 0.0 {
        return values.iter().map(|_| "0".to_string()).collect();
    }
    let exp = use_exponent(maxabs);
    let p_min = if exp {
        2
    } else {
        (2.0 - maxabs.log10().floor()).max(0.0) as usize
    };
    let render = |p: usize| -> Vec<String> {
        values
            .iter()
            .map(|&v| {
                if v == 0.0 {
                    "0".to_string()
                } else if exp {
                    tidy_zero(format!("{v:.p$e}"))
                } else {
                    tidy_zero(format!("{v:.p$}"))
                }
            })
            .collect()
    };
    let mut labels = render(p_min);
    for p in p_min..=p_min + 8 {
        labels = render(p);
        if labels.windows(2).all(|w| w[0] != w[1]) {
            break;
        }
    }
    labels
}

/// Round-number ticks covering [lo, hi]: multiples of 1, 2 or 5 x 10^k.
fn nice_ticks(lo: f64, hi: f64, target: f64) -> (Vec<f64>, f64) {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        let ticks = if hi > lo { vec![lo, hi] } else { vec![lo] };
        return (ticks, (hi * 0.5 - lo * 0.5).max(f64::MIN_POSITIVE));
    }
    let raw = span / target;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let step = mag
        * if norm < 1.5 {
            1.0
        } else if norm < 3.0 {
            2.0
        } else if norm < 7.0 {
            5.0
        } else {
            10.0
        };
    let first = (lo / step).ceil();
    let mut ticks = Vec::new();
    for k in 0..64 {
        let t = (first + k as f64) * step;
        if t > hi + step * 1e-9 {
            break;
        }
        ticks.push(t);
    }
    (ticks, step)
}

fn axis_label(v: f64, step: f64, maxabs: f64) -> String {
    if v.abs() < step * 1e-6 {
        return "0".to_string();
    }
    let step_exp = (step.log10() + 1e-9).floor();
    if use_exponent(maxabs) {
        let digits = (maxabs.log10().floor() - step_exp).clamp(0.0, 6.0) as usize;
        tidy_zero(format!("{v:.digits$e}"))
    } else {
        let dec = (-step_exp).clamp(0.0, 10.0) as usize;
        tidy_zero(format!("{v:.dec$}"))
    }
}

/// Ticks for an axis as (position in axis units, label). For a log axis the
/// axis units are log10 of the data.
fn axis_ticks(lo: f64, hi: f64, log: bool, target: f64) -> Vec<(f64, String)> {
    if log {
        let kmin = lo.ceil() as i64;
        let kmax = hi.floor() as i64;
        if kmax > kmin {
            let every = ((kmax - kmin) as f64 / target).ceil().max(1.0) as i64;
            // One style for the whole axis: plain numbers when all are short.
            let plain = kmin >= -3 && kmax <= 4;
            return (kmin..=kmax)
                .filter(|k| k.rem_euclid(every) == 0)
                .map(|k| {
                    let label = if plain {
                        let v = 10f64.powi(k as i32);
                        let dec = (-k).max(0) as usize;
                        format!("{v:.dec$}")
                    } else {
                        format!("1e{k}")
                    };
                    (k as f64, label)
                })
                .collect();
        }
        // Less than a decade: round numbers in data units, placed by log.
        let (a, b) = (10f64.powf(lo), 10f64.powf(hi));
        let (ticks, step) = nice_ticks(a, b, target);
        let maxabs = ticks.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        return ticks
            .into_iter()
            .filter(|&v| v > 0.0)
            .map(|v| (v.log10(), axis_label(v, step, maxabs)))
            .collect();
    }
    let (ticks, step) = nice_ticks(lo, hi, target);
    let maxabs = ticks.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    ticks
        .into_iter()
        .map(|v| (v, axis_label(v, step, maxabs)))
        .collect()
}

/// The [2 %, 100 %] quantile range of the finite values with a 5 % margin
/// on each side: for traces whose first values are far below the rest
/// (an ELBO early in training), so the interesting part fills the plot.
/// Returns (0, 1) when there is no finite value.
pub fn robust_range(y: &[f64]) -> (f64, f64) {
    let mut v: Vec<f64> = y.iter().copied().filter(|v| v.is_finite()).collect();
    if v.is_empty() {
        return (0.0, 1.0);
    }
    v.sort_by(f64::total_cmp);
    let pos = 0.02 * (v.len() - 1) as f64;
    let k = pos.floor() as usize;
    let lo = if k + 1 < v.len() {
        v[k] + (pos - k as f64) * (v[k + 1] - v[k])
    } else {
        v[k]
    };
    let hi = v[v.len() - 1];
    pad_range(lo, hi, 0.05)
}

/// Position of `v` in [lo, hi] as a fraction. Halving first keeps
/// `hi - lo` finite even for ranges near the f64 limits.
fn frac(v: f64, lo: f64, hi: f64) -> f64 {
    (v * 0.5 - lo * 0.5) / (hi * 0.5 - lo * 0.5)
}

/// Widens [lo, hi] by `frac` of its span, or around a single value.
fn pad_range(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    let half = hi * 0.5 - lo * 0.5;
    if half > 0.0 {
        let m = frac * half * 2.0;
        ((lo - m).max(f64::MIN), (hi + m).min(f64::MAX))
    } else {
        let d = if lo == 0.0 { 1.0 } else { 0.1 * lo.abs() };
        (lo - d, lo + d)
    }
}

// ---------------------------------------------------------------------------
// Heat maps
// ---------------------------------------------------------------------------

/// A 2-D field on an `nx` x `ny` grid, stored row-major with index
/// `j * nx + i` (i along x1, j along x2). Drawn with j increasing upwards:
/// as blocks per value for a cell field, bilinear between the values for a
/// nodal one (`nodal`: the values sit on the corners of `nx - 1` x `ny - 1`
/// cells, boundary included).
#[derive(Debug, Clone, Copy)]
pub struct Field2<'a> {
    pub values: &'a [f64],
    pub nx: usize,
    pub ny: usize,
    pub nodal: bool,
}

impl<'a> Field2<'a> {
    /// A cell field of `nx x ny` values.
    pub fn cells(values: &'a [f64], nx: usize, ny: usize) -> Self {
        Field2 {
            values,
            nx,
            ny,
            nodal: false,
        }
    }

    /// A nodal field of `nx x ny` values (corners of `(nx-1) x (ny-1)` cells).
    pub fn nodes(values: &'a [f64], nx: usize, ny: usize) -> Self {
        Field2 {
            values,
            nx,
            ny,
            nodal: true,
        }
    }

    /// Cells of the drawn grid along x1 and x2.
    fn cells_xy(&self) -> (usize, usize) {
        if self.nodal {
            (
                self.nx.saturating_sub(1).max(1),
                self.ny.saturating_sub(1).max(1),
            )
        } else {
            (self.nx, self.ny)
        }
    }
}

/// One heat map in a multi-panel figure.
#[derive(Debug, Clone)]
pub struct Panel<'a> {
    pub title: String,
    pub field: Field2<'a>,
    /// Colour scale (low, high); `Some` lets panels share a scale. `None`
    /// uses the data range (symmetric about 0 for [`Colormap::RdBu`]).
    pub range: Option<(f64, f64)>,
    pub cmap: Colormap,
    /// Sensor positions (x1, x2 in [0, 1]) drawn as markers on the map.
    pub markers: &'a [[f64; 2]],
    /// Contour bands drawn as lines (0 = none).
    pub contours: u32,
}

impl<'a> Panel<'a> {
    /// A viridis panel on the data's own range, no markers, no contours.
    pub fn new(title: impl Into<String>, field: Field2<'a>) -> Self {
        Panel {
            title: title.into(),
            field,
            range: None,
            cmap: Colormap::Viridis,
            markers: &[],
            contours: 0,
        }
    }
}

/// Who paints the heat maps of a figure: the GPU's rasteriser, or its CPU
/// mirror. Text and axes are drawn on the CPU either way.
#[derive(Clone, Copy)]
pub enum Painter<'a> {
    Cpu,
    Gpu(&'a GpuContext),
}

impl<'a> Painter<'a> {
    /// The GPU painter where there is a context, else the CPU one.
    pub fn of(ctx: Option<&'a GpuContext>) -> Self {
        ctx.map_or(Painter::Cpu, Painter::Gpu)
    }
}

impl std::fmt::Debug for Painter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Painter::Cpu => write!(f, "Painter::Cpu"),
            Painter::Gpu(ctx) => write!(f, "Painter::Gpu({})", ctx.info.name),
        }
    }
}

/// Paint the draws into `img`: on the GPU when the painter has one (one
/// render per 48 draws, read back once), else, or when the device cannot
/// render (said once, on stderr), with the CPU mirror.
pub fn paint(
    painter: Painter,
    img: &mut RgbImage,
    draws: &[Draw],
    values: &[f64],
    markers: &[[f64; 2]],
) {
    if let Painter::Gpu(ctx) = painter {
        match paint_gpu(ctx, img, draws, values, markers) {
            Ok(()) => return,
            Err(e) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    eprintln!("note: figures drawn on the CPU, the device cannot render them ({e})")
                });
            }
        }
    }
    crate::cpu::render::paint(img, draws, values, &[], markers);
}

fn paint_gpu(
    ctx: &GpuContext,
    img: &mut RgbImage,
    draws: &[Draw],
    values: &[f64],
    markers: &[[f64; 2]],
) -> Result<()> {
    let renderer = ctx.renderer()?;
    let v32: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    let m32: Vec<[f32; 2]> = markers.iter().map(|m| [m[0] as f32, m[1] as f32]).collect();
    let size = UVec2::new(img.width(), img.height());
    for chunk in draws.chunks(MAX_DRAWS) {
        let rgba = renderer.render(ctx, size, Values::Host(&v32), None, chunk, &m32)?;
        for d in chunk {
            for y in d.origin[1]..d.origin[1] + d.size[1] {
                for x in d.origin[0]..d.origin[0] + d.size[0] {
                    let p = rgba.get_pixel(x, y).0;
                    img.put_pixel(x, y, Rgb([p[0], p[1], p[2]]));
                }
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Stats {
    min: Option<f64>,
    max: Option<f64>,
    mean: Option<f64>,
    nan_count: usize,
    inf_count: usize,
}

fn stats(values: &[f64]) -> Stats {
    let mut s = Stats {
        min: None,
        max: None,
        mean: None,
        nan_count: 0,
        inf_count: 0,
    };
    let (mut lo, mut hi, mut mean, mut n) = (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0usize);
    for &v in values {
        if v.is_nan() {
            s.nan_count += 1;
        } else if v.is_infinite() {
            s.inf_count += 1;
        } else {
            lo = lo.min(v);
            hi = hi.max(v);
            n += 1;
            // Running mean: a plain sum can overflow for huge values.
            mean += (v - mean) / n as f64;
        }
    }
    if n > 0 {
        s.min = Some(lo);
        s.max = Some(hi);
        s.mean = Some(mean);
    }
    s
}

fn check_field(path: &Path, what: &str, f: &Field2) -> Result<()> {
    if f.nx == 0 || f.ny == 0 {
        return Err(format_err(
            path,
            format!("{what}: field is empty (nx = {}, ny = {})", f.nx, f.ny),
        ));
    }
    if f.nx.checked_mul(f.ny) != Some(f.values.len()) {
        return Err(format_err(
            path,
            format!(
                "{what}: field has {} values but nx * ny = {} * {}",
                f.values.len(),
                f.nx,
                f.ny
            ),
        ));
    }
    Ok(())
}

/// Target side of a heat map in pixels (`--figure-px`); see [`map_size`].
static MAP_PX: AtomicU32 = AtomicU32::new(330);

/// Contour bands drawn on heat maps that ask for none (`--contours`).
static CONTOURS: AtomicU32 = AtomicU32::new(0);

/// Draw `k` contour bands on every heat map (0 = none, at most 32).
pub fn set_contours(k: u32) -> Result<()> {
    if k > 32 {
        return Err(Error::setting("contours", k, "at most 32 contour bands"));
    }
    CONTOURS.store(k, Ordering::Relaxed);
    Ok(())
}

/// Set the target side of heat maps in pixels (128 .. 2048), e.g. for
/// print: 330 gives about 3.4 in at 96 dpi, 990 about 3.3 in at 300 dpi.
pub fn set_map_px(px: u32) -> Result<()> {
    if !(128..=2048).contains(&px) {
        return Err(Error::setting(
            "figure-px",
            px,
            "the side of a heat map must be 128 .. 2048 pixels",
        ));
    }
    MAP_PX.store(px, Ordering::Relaxed);
    Ok(())
}

/// On-screen size of a heat map of `nx` x `ny` cells: small grids are
/// upscaled by a whole number so every cell is a square block about
/// 0.8-1x the target side in all; mid-size grids are drawn 1:1; very large
/// ones are subsampled.
fn map_size(nx: usize, ny: usize) -> (u32, u32) {
    let target = MAP_PX.load(Ordering::Relaxed) as usize;
    let m = nx.max(ny);
    if m <= target {
        let s = (target / m).max(1);
        ((nx * s) as u32, (ny * s) as u32)
    } else if m <= 1024.max(target) {
        (nx as u32, ny as u32)
    } else {
        let f = (target as f64 * 1.55) / m as f64;
        let w = ((nx as f64 * f).round() as u32).max(1);
        let h = ((ny as f64 * f).round() as u32).max(1);
        (w, h)
    }
}

/// Everything needed to lay out and draw one heat map with its colour bar.
struct MapPanel<'a> {
    title: String,
    field: Field2<'a>,
    lo: f64,
    hi: f64,
    cmap: Colormap,
    /// Colour-bar caption, drawn vertically to its right.
    label: Option<String>,
    stats: Stats,
    map_w: u32,
    map_h: u32,
    ticks: Vec<(f64, String)>,
    markers: &'a [[f64; 2]],
    contours: u32,
}

const PAD: i32 = 14;
const TITLE_FONT: &MonoFont = &FONT_9X15_BOLD;
const PANEL_TITLE_FONT: &MonoFont = &FONT_8X13_BOLD;
const TICK_FONT: &MonoFont = &FONT_7X13;
const AXIS_FONT: &MonoFont = &FONT_6X10;
const LABEL_FONT: &MonoFont = &FONT_8X13;
const BAR_W: i32 = 16;
const BAR_GAP: i32 = 14;
/// Left of the map: the x2 name, its tick labels and tick marks.
const X2_COL: i32 = 44;
/// Below the map: tick marks, tick labels and the x1 name.
const X1_ROW: i32 = 30;
const PANEL_TITLE_H: i32 = 13 + 8;
const MAX_TITLE_W: u32 = 420;
/// Domain ticks of both axes (the unit square).
const DOMAIN_TICKS: [(f64, &str); 3] = [(0.0, "0"), (0.5, "0.5"), (1.0, "1")];

impl<'a> MapPanel<'a> {
    #[allow(clippy::too_many_arguments, reason = "one panel's settings")]
    fn new(
        path: &Path,
        title: &str,
        field: Field2<'a>,
        range: Option<(f64, f64)>,
        cmap: Colormap,
        label: Option<&str>,
        markers: &'a [[f64; 2]],
        contours: u32,
    ) -> Result<Self> {
        check_field(path, title, &field)?;
        if field.nodal && (field.nx < 2 || field.ny < 2) {
            return Err(format_err(
                path,
                format!(
                    "{title}: a nodal field needs at least 2 x 2 values, got {} x {}",
                    field.nx, field.ny
                ),
            ));
        }
        if let Some(m) = markers
            .iter()
            .find(|m| !(m[0].is_finite() && m[1].is_finite()))
        {
            return Err(format_err(
                path,
                format!(
                    "{title}: a sensor marker at ({}, {}) is not finite",
                    m[0], m[1]
                ),
            ));
        }
        let stats = stats(field.values);
        let (lo, hi) = match range {
            Some((a, b)) => {
                if !(a.is_finite() && b.is_finite() && a <= b) {
                    return Err(format_err(
                        path,
                        format!("{title}: colour range ({a}, {b}) must be finite with low <= high"),
                    ));
                }
                (a, b)
            }
            None => match (stats.min, stats.max, cmap) {
                (Some(a), Some(b), Colormap::RdBu) => {
                    let m = a.abs().max(b.abs());
                    (-m, m)
                }
                (Some(a), Some(b), Colormap::Viridis) => (a, b),
                _ => (0.0, 1.0),
            },
        };
        // A constant field gets a small range around its value, so the
        // colour scale is defined and the colour bar stays readable.
        let (lo, hi) = if hi > lo {
            (lo, hi)
        } else {
            pad_range(lo, lo, 0.0)
        };
        let levels: Vec<f64> = (0..5)
            .map(|k| {
                let f = k as f64 / 4.0;
                lo * (1.0 - f) + hi * f
            })
            .collect();
        let labels = level_labels(&levels);
        let ticks = levels.into_iter().zip(labels).collect();
        let (cx, cy) = field.cells_xy();
        let (map_w, map_h) = map_size(cx, cy);
        Ok(MapPanel {
            title: title.to_string(),
            field,
            lo,
            hi,
            cmap,
            label: label.map(str::to_string),
            stats,
            map_w,
            map_h,
            ticks,
            markers,
            contours: if contours == 0 {
                CONTOURS.load(Ordering::Relaxed)
            } else {
                contours
            },
        })
    }

    fn title_h(&self) -> i32 {
        if self.title.is_empty() {
            0
        } else {
            PANEL_TITLE_H
        }
    }

    fn bar_h(&self) -> i32 {
        (self.map_h as i32).max(150)
    }

    fn tick_w(&self) -> i32 {
        self.ticks
            .iter()
            .map(|(_, s)| text_width(s, TICK_FONT) as i32)
            .max()
            .unwrap_or(0)
    }

    /// Width of map, colour bar, tick labels and caption.
    fn content_w(&self) -> i32 {
        let mut w = X2_COL + self.map_w as i32 + BAR_GAP + BAR_W + 5 + self.tick_w();
        if self.label.is_some() {
            w += 8 + LABEL_FONT.character_size.height as i32;
        }
        w
    }

    fn size(&self) -> (i32, i32) {
        let title_w = text_width(&clean_text(&self.title), PANEL_TITLE_FONT).min(MAX_TITLE_W);
        let w = self.content_w().max(title_w as i32);
        let body = (self.map_h as i32 + X1_ROW).max(self.bar_h());
        (w, self.title_h() + body)
    }

    /// Top-left of the map for the panel at (ox, oy).
    fn map_origin(&self, ox: i32, oy: i32) -> (i32, i32) {
        (ox + X2_COL, oy + self.title_h())
    }

    /// The map's and the colour bar's draws; the field's values start at
    /// `offset` in the figure's values, its markers are the figure's first
    /// `markers`.
    fn draws(&self, ox: i32, oy: i32, target: UVec2, offset: u32, markers: u32) -> [Draw; 2] {
        let (left, top) = self.map_origin(ox, oy);
        let (cx, cy) = self.field.cells_xy();
        let origin = UVec2::new(left as u32, top as u32);
        let kind = if self.field.nodal {
            KIND_NODAL
        } else {
            KIND_CELL
        };
        let mut map = Draw::at(origin, UVec2::new(self.map_w, self.map_h), target, kind);
        map.nx = cx as u32;
        map.ny = cy as u32;
        map.cmap = self.cmap.code();
        map.offset = offset;
        map.lo = self.lo as f32;
        map.hi = self.hi as f32;
        map.contours = self.contours;
        map.nmarkers = markers;
        let bx = left + self.map_w as i32 + BAR_GAP;
        let mut bar = Draw::at(
            UVec2::new(bx as u32, top as u32),
            UVec2::new(BAR_W as u32, self.bar_h() as u32),
            target,
            KIND_RAMP,
        );
        bar.cmap = self.cmap.code();
        [map, bar]
    }

    /// Titles, frames, axes, ticks and labels around the painted map and bar.
    fn draw_chrome(&self, img: &mut RgbImage, ox: i32, oy: i32) {
        let (w, _) = self.size();
        if !self.title.is_empty() {
            let t = fit_text(&self.title, PANEL_TITLE_FONT, w as u32);
            draw_text(
                img,
                &t,
                (ox + w / 2, oy),
                PANEL_TITLE_FONT,
                INK,
                Alignment::Center,
                Baseline::Top,
            );
        }
        let (left, top) = self.map_origin(ox, oy);
        let (mw, mh) = (self.map_w as i32, self.map_h as i32);
        frame(img, left, top, mw, mh, INK);
        // Domain axes: ticks at 0, 0.5 and 1 on x1 (below) and x2 (left).
        for (v, label) in DOMAIN_TICKS {
            let x = left - 1 + (v * (mw + 1) as f64).round() as i32;
            vline(img, x, top + mh, top + mh + 3, INK);
            draw_text(
                img,
                label,
                (x, top + mh + 5),
                AXIS_FONT,
                INK,
                Alignment::Center,
                Baseline::Top,
            );
            let y = top + mh - (v * (mh + 1) as f64).round() as i32;
            hline(img, left - 4, left - 1, y, INK);
            draw_text(
                img,
                label,
                (left - 6, y),
                AXIS_FONT,
                INK,
                Alignment::Right,
                Baseline::Middle,
            );
        }
        draw_text(
            img,
            "x1",
            (left + mw / 2, top + mh + 17),
            AXIS_FONT,
            INK,
            Alignment::Center,
            Baseline::Top,
        );
        // Between the 0.5 and 1 ticks, clear of their labels.
        draw_text(
            img,
            "x2",
            (left - 28, top + mh / 4),
            AXIS_FONT,
            INK,
            Alignment::Right,
            Baseline::Middle,
        );

        let bx = left + mw + BAR_GAP;
        let bh = self.bar_h();
        frame(img, bx, top, BAR_W, bh, INK);
        for (v, label) in &self.ticks {
            let t = frac(*v, self.lo, self.hi);
            let y = top + ((1.0 - t) * (bh - 1) as f64).round() as i32;
            hline(img, bx + BAR_W, bx + BAR_W + 3, y, INK);
            draw_text(
                img,
                label,
                (bx + BAR_W + 6, y),
                TICK_FONT,
                INK,
                Alignment::Left,
                Baseline::Middle,
            );
        }
        if let Some(label) = &self.label {
            let lh = LABEL_FONT.character_size.height as i32;
            let x = bx + BAR_W + 6 + self.tick_w() + 8 + lh / 2;
            let t = fit_text(label, LABEL_FONT, bh.max(0) as u32);
            draw_text_vertical(img, &t, (x, top + bh / 2), LABEL_FONT, INK);
        }
    }
}

/// Lays panels out side by side under an optional figure title: the maps
/// and colour bars painted by `painter`, the text on top.
fn render_panels(painter: Painter, suptitle: &str, panels: &[MapPanel]) -> RgbImage {
    const GAP: i32 = 28;
    let sizes: Vec<(i32, i32)> = panels.iter().map(MapPanel::size).collect();
    let body_w: i32 = sizes.iter().map(|s| s.0).sum::<i32>() + GAP * (sizes.len() as i32 - 1);
    let body_h = sizes.iter().map(|s| s.1).max().unwrap_or(0);
    let sup = clean_text(suptitle);
    let sup_w = text_width(&sup, TITLE_FONT).min(2 * MAX_TITLE_W) as i32;
    let top = if sup.trim().is_empty() {
        PAD
    } else {
        PAD + TITLE_FONT.character_size.height as i32 + 12
    };
    let width = (body_w.max(sup_w) + 2 * PAD) as u32;
    let height = (top + body_h + PAD) as u32;
    let mut img = RgbImage::from_pixel(width, height, Rgb(WHITE));
    if top > PAD {
        let t = fit_text(&sup, TITLE_FONT, width - 2 * PAD as u32);
        draw_text(
            &mut img,
            &t,
            (width as i32 / 2, PAD),
            TITLE_FONT,
            INK,
            Alignment::Center,
            Baseline::Top,
        );
    }
    // One marker set per figure: the first panel's that has any.
    let markers: &[[f64; 2]] = panels
        .iter()
        .map(|p| p.markers)
        .find(|m| !m.is_empty())
        .unwrap_or(&[]);
    let target = UVec2::new(width, height);
    let mut values = Vec::new();
    let mut draws = Vec::new();
    let mut x = PAD + (body_w.max(sup_w) - body_w) / 2;
    let mut origins = Vec::with_capacity(panels.len());
    for (p, s) in panels.iter().zip(&sizes) {
        let nm = if p.markers.is_empty() {
            0
        } else {
            markers.len().min(MAX_MARKERS) as u32
        };
        draws.extend(p.draws(x, top, target, values.len() as u32, nm));
        values.extend_from_slice(p.field.values);
        origins.push(x);
        x += s.0 + GAP;
    }
    paint(painter, &mut img, &draws, &values, markers);
    for (p, &ox) in panels.iter().zip(&origins) {
        p.draw_chrome(&mut img, ox, top);
    }
    img
}

#[derive(Serialize)]
struct FieldSummary<'a> {
    title: &'a str,
    label: &'a str,
    min: Option<f64>,
    max: Option<f64>,
    mean: Option<f64>,
    nx: usize,
    ny: usize,
    nan_count: usize,
    inf_count: usize,
    colormap: &'static str,
    /// The colour scale actually drawn (low, high).
    range: [f64; 2],
}

impl<'a> FieldSummary<'a> {
    fn of(p: &'a MapPanel, label: &'a str) -> Self {
        FieldSummary {
            title: &p.title,
            label,
            min: p.stats.min,
            max: p.stats.max,
            mean: p.stats.mean,
            nx: p.field.nx,
            ny: p.field.ny,
            nan_count: p.stats.nan_count,
            inf_count: p.stats.inf_count,
            colormap: p.cmap.name(),
            range: [p.lo, p.hi],
        }
    }
}

/// Writes a viridis heat map of `field` with a colour bar (caption `label`)
/// and title, plus `<stem>.json` beside it holding min, max, mean, nx, ny,
/// colormap, label and the NaN / infinity counts. NaN cells are grey and,
/// like infinities, left out of the statistics and the colour range.
pub fn write_field_png(
    painter: Painter,
    path: &Path,
    field: &Field2,
    title: &str,
    label: &str,
    markers: &[[f64; 2]],
) -> Result<()> {
    let panel = MapPanel::new(
        path,
        "",
        *field,
        None,
        Colormap::Viridis,
        (!label.is_empty()).then_some(label),
        markers,
        0,
    )?;
    let img = render_panels(painter, title, std::slice::from_ref(&panel));
    save_png(&img, path)?;
    let mut summary = FieldSummary::of(&panel, label);
    summary.title = title;
    write_json(path, &summary)
}

/// The image [`write_panels_png`] saves (for tests and callers that
/// compose figures themselves).
pub fn panels_image(painter: Painter, suptitle: &str, panels: &[Panel]) -> Result<RgbImage> {
    let here = Path::new("<figure>");
    let maps = panels
        .iter()
        .map(|p| {
            MapPanel::new(
                here, &p.title, p.field, p.range, p.cmap, None, p.markers, p.contours,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(render_panels(painter, suptitle, &maps))
}

/// Writes panels side by side, each with its own title, colour bar and
/// ticks, under `suptitle` (e.g. truth | posterior mean | posterior std |
/// |error|), plus `<stem>.json` with each panel's statistics.
pub fn write_panels_png(
    painter: Painter,
    path: &Path,
    suptitle: &str,
    panels: &[Panel],
) -> Result<()> {
    if panels.is_empty() {
        return Err(format_err(path, "no panels to draw"));
    }
    let maps = panels
        .iter()
        .map(|p| {
            MapPanel::new(
                path, &p.title, p.field, p.range, p.cmap, None, p.markers, p.contours,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let img = render_panels(painter, suptitle, &maps);
    save_png(&img, path)?;
    #[derive(Serialize)]
    struct Summary<'a> {
        suptitle: &'a str,
        panels: Vec<FieldSummary<'a>>,
    }
    let summary = Summary {
        suptitle,
        panels: maps.iter().map(|m| FieldSummary::of(m, "")).collect(),
    };
    write_json(path, &summary)
}

// ---------------------------------------------------------------------------
// Line plots
// ---------------------------------------------------------------------------

/// One curve in a line plot.
#[derive(Debug, Clone)]
pub struct Series<'a> {
    /// Legend text; empty keeps the series out of the legend.
    pub label: String,
    pub x: &'a [f64],
    pub y: &'a [f64],
    /// Half-width of a shaded band around `y` (e.g. 2 std), same length.
    pub band: Option<&'a [f64]>,
    pub rgb: [u8; 3],
    pub dashed: bool,
}

const PLOT_W: u32 = 640;
const PLOT_H: u32 = 400;
const LINE_W: f64 = 2.0;
const BAND_ALPHA: f64 = 0.22;
const DASH_ON: f64 = 8.0;
const DASH_PERIOD: f64 = 13.0;

/// Coverage mask over the plot area. Curves and bands are rasterised into
/// it first and composited once, so overlapping pieces of one curve do not
/// darken each other.
struct Mask {
    x0: i32,
    y0: i32,
    w: i32,
    h: i32,
    a: Vec<f32>,
}

impl Mask {
    fn new(x0: i32, y0: i32, w: i32, h: i32) -> Self {
        Mask {
            x0,
            y0,
            w,
            h,
            a: vec![0.0; (w.max(0) * h.max(0)) as usize],
        }
    }

    fn clear(&mut self) {
        self.a.iter_mut().for_each(|v| *v = 0.0);
    }

    fn set_max(&mut self, x: i32, y: i32, v: f32) {
        let (lx, ly) = (x - self.x0, y - self.y0);
        if lx >= 0 && ly >= 0 && lx < self.w && ly < self.h {
            let k = (ly * self.w + lx) as usize;
            if v > self.a[k] {
                self.a[k] = v;
            }
        }
    }

    /// Anti-aliased thick segment p-q; `dash` = arc length at p, for
    /// dashed curves.
    fn segment(&mut self, p: (f64, f64), q: (f64, f64), width: f64, dash: Option<f64>) {
        let r = width / 2.0 + 1.0;
        let (xmin, xmax) = (self.x0 as f64 - r, (self.x0 + self.w) as f64 + r);
        let (ymin, ymax) = (self.y0 as f64 - r, (self.y0 + self.h) as f64 + r);
        let Some((t0, t1)) = clip_segment(p, q, (xmin, ymin, xmax, ymax)) else {
            return;
        };
        let (dx, dy) = (q.0 - p.0, q.1 - p.1);
        let len2 = dx * dx + dy * dy;
        let len = len2.sqrt();
        let a = (p.0 + t0 * dx, p.1 + t0 * dy);
        let b = (p.0 + t1 * dx, p.1 + t1 * dy);
        let bx0 = (a.0.min(b.0) - r).floor().max(self.x0 as f64) as i32;
        let bx1 = (a.0.max(b.0) + r).ceil().min((self.x0 + self.w - 1) as f64) as i32;
        let by0 = (a.1.min(b.1) - r).floor().max(self.y0 as f64) as i32;
        let by1 = (a.1.max(b.1) + r).ceil().min((self.y0 + self.h - 1) as f64) as i32;
        for y in by0..=by1 {
            for x in bx0..=bx1 {
                let (cx, cy) = (x as f64 + 0.5, y as f64 + 0.5);
                let t = if len2 > 0.0 {
                    (((cx - p.0) * dx + (cy - p.1) * dy) / len2).clamp(t0, t1)
                } else {
                    0.0
                };
                if let Some(s0) = dash {
                    if (s0 + t * len).rem_euclid(DASH_PERIOD) >= DASH_ON {
                        continue;
                    }
                }
                let (ex, ey) = (cx - (p.0 + t * dx), cy - (p.1 + t * dy));
                let d = (ex * ex + ey * ey).sqrt();
                let cov = (width / 2.0 + 0.5 - d).clamp(0.0, 1.0);
                if cov > 0.0 {
                    self.set_max(x, y, cov as f32);
                }
            }
        }
    }

    /// Fills the region between two (x, y_low, y_high) columns.
    fn trapezoid(&mut self, a: (f64, f64, f64), b: (f64, f64, f64)) {
        let (a, b) = if a.0 <= b.0 { (a, b) } else { (b, a) };
        let x0 = (a.0 - 0.5).ceil().max(self.x0 as f64) as i32;
        let x1 = (b.0 - 0.5).floor().min((self.x0 + self.w - 1) as f64) as i32;
        for x in x0..=x1 {
            let cx = x as f64 + 0.5;
            let f = if b.0 > a.0 {
                (cx - a.0) / (b.0 - a.0)
            } else {
                0.0
            };
            let top = a.1 + f * (b.1 - a.1);
            let bot = a.2 + f * (b.2 - a.2);
            let (top, bot) = (top.min(bot), top.max(bot));
            let y0 = (top - 0.5).ceil().max(self.y0 as f64) as i32;
            let y1 = (bot - 0.5).floor().min((self.y0 + self.h - 1) as f64) as i32;
            for y in y0..=y1 {
                self.set_max(x, y, 1.0);
            }
        }
    }

    fn composite(&self, img: &mut RgbImage, c: [u8; 3], alpha: f64) {
        for ly in 0..self.h {
            for lx in 0..self.w {
                let v = self.a[(ly * self.w + lx) as usize];
                if v > 0.0 {
                    blend(img, self.x0 + lx, self.y0 + ly, c, alpha * v as f64);
                }
            }
        }
    }
}

/// Liang-Barsky: the parameter interval of p + t (q - p), t in [0, 1],
/// inside the rectangle (xmin, ymin, xmax, ymax).
fn clip_segment(p: (f64, f64), q: (f64, f64), rect: (f64, f64, f64, f64)) -> Option<(f64, f64)> {
    let (dx, dy) = (q.0 - p.0, q.1 - p.1);
    let mut t0 = 0.0f64;
    let mut t1 = 1.0f64;
    let checks = [
        (-dx, p.0 - rect.0),
        (dx, rect.2 - p.0),
        (-dy, p.1 - rect.1),
        (dy, rect.3 - p.1),
    ];
    for (pk, qk) in checks {
        if pk == 0.0 {
            if qk < 0.0 {
                return None;
            }
        } else {
            let r = qk / pk;
            if pk < 0.0 {
                t0 = t0.max(r);
            } else {
                t1 = t1.min(r);
            }
        }
    }
    (t0 <= t1).then_some((t0, t1))
}

/// Data-to-pixel mapping of the plot area.
struct Axes {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    x: (f64, f64),
    y: (f64, f64),
    log_y: bool,
}

impl Axes {
    /// Pixel position, or None where the point cannot be drawn. Far-away
    /// points are pulled in to +-1e6 px: that keeps the visible part of a
    /// segment to them right while avoiding overflow.
    fn px(&self, x: f64, y: f64) -> Option<(f64, f64)> {
        let ty = self.ty(y)?;
        if !x.is_finite() {
            return None;
        }
        let fx = frac(x, self.x.0, self.x.1);
        let fy = frac(ty, self.y.0, self.y.1);
        let px = self.left + fx * (self.right - self.left);
        let py = self.bottom - fy * (self.bottom - self.top);
        let lim = 1e6;
        Some((px.clamp(-lim, lim), py.clamp(-lim, lim)))
    }

    /// The y value in axis units; None where it cannot be shown.
    fn ty(&self, y: f64) -> Option<f64> {
        if !y.is_finite() {
            return None;
        }
        if self.log_y {
            (y > 0.0).then(|| y.log10())
        } else {
            Some(y)
        }
    }

    /// Pixel row for a band edge; a log-axis edge at or below zero sits
    /// far below the plot.
    fn band_py(&self, y: f64) -> Option<f64> {
        if self.log_y && y.is_finite() && y <= 0.0 {
            return Some(1e6);
        }
        self.px(self.x.0, y).map(|p| p.1)
    }
}

/// Writes a line plot (640 x 400): axes with ticks and numeric labels, a
/// legend, and shaded bands where a series has one. Non-finite points (and
/// y <= 0 on a log axis) break the line. With `y_range = None` the y axis
/// spans all finite y (and band edges) with a 5 % margin; pass
/// [`robust_range`] of the data to ignore a few extreme values.
pub fn write_line_plot(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[Series],
    log_y: bool,
    y_range: Option<(f64, f64)>,
) -> Result<()> {
    for s in series {
        if s.x.len() != s.y.len() {
            return Err(format_err(
                path,
                format!(
                    "series `{}`: x has {} points but y has {}",
                    s.label,
                    s.x.len(),
                    s.y.len()
                ),
            ));
        }
        if let Some(b) = s.band {
            if b.len() != s.y.len() {
                return Err(format_err(
                    path,
                    format!(
                        "series `{}`: band has {} values but y has {}",
                        s.label,
                        b.len(),
                        s.y.len()
                    ),
                ));
            }
        }
    }
    let to_axis = |v: f64| -> Option<f64> {
        if !v.is_finite() {
            None
        } else if log_y {
            (v > 0.0).then(|| v.log10())
        } else {
            Some(v)
        }
    };

    // x range: all finite x that come with a drawable y.
    let mut xr = (f64::INFINITY, f64::NEG_INFINITY);
    let mut yr = (f64::INFINITY, f64::NEG_INFINITY);
    let mut any = false;
    for s in series {
        for k in 0..s.x.len() {
            let (x, y) = (s.x[k], s.y[k]);
            let Some(ty) = to_axis(y) else { continue };
            if !x.is_finite() {
                continue;
            }
            any = true;
            xr = (xr.0.min(x), xr.1.max(x));
            yr = (yr.0.min(ty), yr.1.max(ty));
            if let Some(b) = s.band {
                let b = b[k].abs();
                for e in [y - b, y + b] {
                    if let Some(te) = to_axis(e) {
                        yr = (yr.0.min(te), yr.1.max(te));
                    }
                }
            }
        }
    }
    let x_axis = if !any {
        (0.0, 1.0)
    } else if xr.1 > xr.0 {
        xr
    } else {
        pad_range(xr.0, xr.1, 0.0)
    };
    let y_axis = match y_range {
        Some((a, b)) => {
            let valid = a.is_finite() && b.is_finite() && a < b && (!log_y || a > 0.0);
            if !valid {
                let need = if log_y {
                    "0 < low < high"
                } else {
                    "low < high"
                };
                return Err(format_err(
                    path,
                    format!("y range ({a}, {b}) is invalid: need finite values with {need}"),
                ));
            }
            if log_y {
                (a.log10(), b.log10())
            } else {
                (a, b)
            }
        }
        None if any => pad_range(yr.0, yr.1, 0.05),
        None => (0.0, 1.0),
    };

    let xticks = axis_ticks(x_axis.0, x_axis.1, false, 7.0);
    let yticks = axis_ticks(y_axis.0, y_axis.1, log_y, 6.0);
    let ytick_w = yticks
        .iter()
        .map(|(_, s)| text_width(s, TICK_FONT) as i32)
        .max()
        .unwrap_or(0);
    let label_h = LABEL_FONT.character_size.height as i32;
    let left = 10 + label_h + 8 + ytick_w + 7;
    let (right, top, bottom) = (PLOT_W as i32 - 18, 36, PLOT_H as i32 - 46);
    let axes = Axes {
        left: left as f64,
        right: right as f64,
        top: top as f64,
        bottom: bottom as f64,
        x: x_axis,
        y: y_axis,
        log_y,
    };
    let mut img = RgbImage::from_pixel(PLOT_W, PLOT_H, Rgb(WHITE));

    // Grid and tick labels.
    let to_px_x = |v: f64| left as f64 + frac(v, x_axis.0, x_axis.1) * (right - left) as f64;
    let to_px_y = |v: f64| bottom as f64 - frac(v, y_axis.0, y_axis.1) * (bottom - top) as f64;
    for (v, label) in &xticks {
        let x = to_px_x(*v).round() as i32;
        if x < left || x > right {
            continue;
        }
        vline(&mut img, x, top, bottom, GRID);
        vline(&mut img, x, bottom, bottom + 4, INK);
        draw_text(
            &mut img,
            label,
            (x, bottom + 7),
            TICK_FONT,
            INK,
            Alignment::Center,
            Baseline::Top,
        );
    }
    for (v, label) in &yticks {
        let y = to_px_y(*v).round() as i32;
        if y < top || y > bottom {
            continue;
        }
        hline(&mut img, left, right, y, GRID);
        hline(&mut img, left - 4, left, y, INK);
        draw_text(
            &mut img,
            label,
            (left - 7, y),
            TICK_FONT,
            INK,
            Alignment::Right,
            Baseline::Middle,
        );
    }

    // Bands first, then curves on top.
    let mut mask = Mask::new(left, top, right - left + 1, bottom - top + 1);
    for s in series {
        let Some(band) = s.band else { continue };
        mask.clear();
        let mut prev: Option<(f64, f64, f64)> = None;
        for ((&x, &y), &b) in s.x.iter().zip(s.y).zip(band) {
            let b = b.abs();
            let col = axes.px(x, y).and_then(|(px, _)| {
                let hi = axes.band_py(y + b)?;
                let lo = axes.band_py(y - b)?;
                b.is_finite().then_some((px, hi, lo))
            });
            if let (Some(a), Some(c)) = (prev, col) {
                mask.trapezoid(a, c);
            }
            prev = col;
        }
        mask.composite(&mut img, s.rgb, BAND_ALPHA);
    }
    for s in series {
        mask.clear();
        let mut prev: Option<(f64, f64)> = None;
        let mut arc = 0.0;
        let mut run = 0usize;
        for k in 0..s.x.len() {
            let p = axes.px(s.x[k], s.y[k]);
            match (prev, p) {
                (Some(a), Some(b)) => {
                    mask.segment(a, b, LINE_W, s.dashed.then_some(arc));
                    arc += ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
                    run += 1;
                }
                (Some(a), None) if run == 0 => {
                    // An isolated point would otherwise vanish.
                    mask.segment(a, a, LINE_W + 2.0, None);
                }
                _ => {}
            }
            if p.is_none() || prev.is_none() {
                run = 0;
                arc = 0.0;
            }
            prev = p;
        }
        if let (Some(a), 0) = (prev, run) {
            mask.segment(a, a, LINE_W + 2.0, None);
        }
        mask.composite(&mut img, s.rgb, 1.0);
    }

    frame(&mut img, left, top, right - left + 1, bottom - top + 1, INK);
    let t = fit_text(title, TITLE_FONT, PLOT_W - 20);
    draw_text(
        &mut img,
        &t,
        (PLOT_W as i32 / 2, 10),
        TITLE_FONT,
        INK,
        Alignment::Center,
        Baseline::Top,
    );
    let xl = fit_text(xlabel, LABEL_FONT, (right - left) as u32);
    draw_text(
        &mut img,
        &xl,
        ((left + right) / 2, PLOT_H as i32 - 8),
        LABEL_FONT,
        INK,
        Alignment::Center,
        Baseline::Bottom,
    );
    let yl = fit_text(ylabel, LABEL_FONT, (bottom - top) as u32);
    draw_text_vertical(
        &mut img,
        &yl,
        (10 + label_h / 2, (top + bottom) / 2),
        LABEL_FONT,
        INK,
    );
    if !any {
        draw_text(
            &mut img,
            "no finite data",
            ((left + right) / 2, (top + bottom) / 2),
            LABEL_FONT,
            INK,
            Alignment::Center,
            Baseline::Middle,
        );
    }
    draw_legend(&mut img, &axes, series);
    save_png(&img, path)
}

/// Legend in whichever inner corner hides the fewest data points.
fn draw_legend(img: &mut RgbImage, axes: &Axes, series: &[Series]) {
    let entries: Vec<(&Series, String)> = series
        .iter()
        .filter(|s| !s.label.is_empty())
        .map(|s| (s, fit_text(&s.label, TICK_FONT, 240)))
        .collect();
    if entries.is_empty() {
        return;
    }
    const ROW: i32 = 16;
    const SAMPLE: i32 = 26;
    let text_w = entries
        .iter()
        .map(|(_, l)| text_width(l, TICK_FONT) as i32)
        .max()
        .unwrap_or(0);
    let bw = 8 + SAMPLE + 6 + text_w + 8;
    let bh = 6 + ROW * entries.len() as i32 + 2;
    let (l, r, t, b) = (
        axes.left as i32 + 8,
        axes.right as i32 - 8 - bw,
        axes.top as i32 + 8,
        axes.bottom as i32 - 8 - bh,
    );
    let corners = [(r, t), (l, t), (r, b), (l, b)];
    let hidden = |(cx, cy): (i32, i32)| -> usize {
        series
            .iter()
            .flat_map(|s| s.x.iter().zip(s.y))
            .filter_map(|(&x, &y)| axes.px(x, y))
            .filter(|&(px, py)| {
                px >= cx as f64
                    && px <= (cx + bw) as f64
                    && py >= cy as f64
                    && py <= (cy + bh) as f64
            })
            .count()
    };
    let (x0, y0) = corners
        .iter()
        .copied()
        .min_by_key(|&c| hidden(c))
        .unwrap_or(corners[0]);
    for yy in y0..y0 + bh {
        for xx in x0..x0 + bw {
            blend(img, xx, yy, WHITE, 0.88);
        }
    }
    frame(img, x0, y0, bw, bh, [170, 170, 170]);
    let mut mask = Mask::new(x0, y0, bw, bh);
    for (k, (s, label)) in entries.iter().enumerate() {
        let cy = y0 + 6 + ROW * k as i32 + ROW / 2 - 2;
        let sx = x0 + 8;
        if s.band.is_some() {
            for yy in cy - 5..=cy + 5 {
                for xx in sx..sx + SAMPLE {
                    blend(img, xx, yy, s.rgb, BAND_ALPHA);
                }
            }
        }
        mask.clear();
        let y = cy as f64 + 0.5;
        mask.segment(
            (sx as f64, y),
            ((sx + SAMPLE) as f64, y),
            LINE_W,
            s.dashed.then_some(0.0),
        );
        mask.composite(img, s.rgb, 1.0);
        draw_text(
            img,
            label,
            (sx + SAMPLE + 6, cy),
            TICK_FONT,
            INK,
            Alignment::Left,
            Baseline::Middle,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    fn temp_png(tag: &str) -> PathBuf {
        let k = COUNTER.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!(
            "pdevi_plot_test_{}_{tag}_{k}.png",
            std::process::id()
        ))
    }

    fn close(a: [u8; 3], b: [u8; 3]) -> bool {
        a.iter()
            .zip(b)
            .all(|(&x, y)| (x as i32 - y as i32).abs() <= 2)
    }

    fn read_json(png: &Path) -> serde_json::Value {
        let text = std::fs::read_to_string(png.with_extension("json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn cleanup(png: &Path) {
        std::fs::remove_file(png).ok();
        std::fs::remove_file(png.with_extension("json")).ok();
    }

    #[test]
    fn colormap_endpoints_and_nan() {
        assert!(close(viridis(0.0), [0x44, 0x01, 0x54]));
        assert!(close(viridis(1.0), [0xfd, 0xe7, 0x25]));
        assert!(close(viridis(-5.0), [0x44, 0x01, 0x54]));
        assert!(close(viridis(7.0), [0xfd, 0xe7, 0x25]));
        // matplotlib's viridis(0.5) is #21918c.
        assert!(
            close(viridis(0.5), [0x21, 0x91, 0x8c]),
            "{:?}",
            viridis(0.5)
        );
        assert_eq!(viridis(f64::NAN), NAN_GREY);
        assert_eq!(rdbu(f64::NAN), NAN_GREY);
        assert!(close(rdbu(0.5), [0xf7, 0xf7, 0xf7]));
        assert!(rdbu(0.0)[2] > rdbu(0.0)[0], "low end is blue");
        assert!(rdbu(1.0)[0] > rdbu(1.0)[2], "high end is red");
    }

    #[test]
    fn field_png_dimensions_json_and_orientation() {
        let (nx, ny) = (32, 16);
        // Increases with j only, so the top of the map must be bright.
        let values: Vec<f64> = (0..nx * ny).map(|k| (k / nx) as f64 * 0.5 - 2.0).collect();
        let p = temp_png("field");
        let f = Field2 {
            values: &values,
            nx,
            ny,
            nodal: false,
        };
        write_field_png(Painter::Cpu, &p, &f, "increasing in x2", "u", &[]).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        let (mw, mh) = map_size(nx, ny);
        assert_eq!((mw, mh), (320, 160));
        let panel = MapPanel::new(&p, "", f, None, Colormap::Viridis, Some("u"), &[], 0).unwrap();
        let expect = render_panels(
            Painter::Cpu,
            "increasing in x2",
            std::slice::from_ref(&panel),
        );
        assert_eq!(img.dimensions(), expect.dimensions());
        assert!(img.width() >= mw && img.height() >= mh);

        // Find the map: its top-left pixel is at (PAD + X2_COL, top).
        let top = (PAD + TITLE_FONT.character_size.height as i32 + 12) as u32;
        let left = (PAD + X2_COL) as u32;
        let top_px = img.get_pixel(left + 5, top + 2).0;
        let bottom_px = img.get_pixel(left + 5, top + mh - 3).0;
        assert!(close(top_px, viridis(1.0)), "top {top_px:?}");
        assert!(close(bottom_px, viridis(0.0)), "bottom {bottom_px:?}");

        let j = read_json(&p);
        assert_eq!(j["min"], -2.0);
        assert_eq!(j["max"], 5.5);
        assert_eq!(j["nx"], 32);
        assert_eq!(j["ny"], 16);
        assert_eq!(j["colormap"], "viridis");
        assert_eq!(j["label"], "u");
        assert_eq!(j["nan_count"], 0);
        cleanup(&p);
    }

    #[test]
    fn field_png_nan_and_constant() {
        let mut values = vec![3.0; 16];
        values[5] = f64::NAN;
        values[6] = f64::NAN;
        let p = temp_png("const");
        let f = Field2 {
            values: &values,
            nx: 4,
            ny: 4,
            nodal: false,
        };
        write_field_png(Painter::Cpu, &p, &f, "constant", "", &[]).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert!(img.width() > 320);
        let j = read_json(&p);
        assert_eq!(j["min"], 3.0);
        assert_eq!(j["max"], 3.0);
        assert_eq!(j["mean"], 3.0);
        assert_eq!(j["nan_count"], 2);
        // Cell (i=1, j=1) is NaN: drawn grey. Image row for j=1 of 4 is the
        // third block from the top.
        let s = map_size(4, 4).0 / 4;
        let top = (PAD + TITLE_FONT.character_size.height as i32 + 12) as u32;
        let left = (PAD + X2_COL) as u32;
        assert_eq!(
            img.get_pixel(left + s + s / 2, top + 2 * s + s / 2).0,
            NAN_GREY
        );
        cleanup(&p);

        // All NaN: still a figure, with null statistics.
        let values = vec![f64::NAN; 4];
        let f = Field2 {
            values: &values,
            nx: 2,
            ny: 2,
            nodal: false,
        };
        write_field_png(Painter::Cpu, &p, &f, "all nan", "u", &[]).unwrap();
        let j = read_json(&p);
        assert!(j["min"].is_null());
        assert_eq!(j["nan_count"], 4);
        cleanup(&p);
    }

    #[test]
    fn field_png_bad_input_is_error() {
        let p = temp_png("bad");
        let values = vec![1.0; 5];
        let f = Field2 {
            values: &values,
            nx: 2,
            ny: 2,
            nodal: false,
        };
        assert!(matches!(
            write_field_png(Painter::Cpu, &p, &f, "t", "u", &[]),
            Err(Error::Format { .. })
        ));
        let f = Field2 {
            values: &[],
            nx: 0,
            ny: 3,
            nodal: false,
        };
        assert!(matches!(
            write_field_png(Painter::Cpu, &p, &f, "t", "u", &[]),
            Err(Error::Format { .. })
        ));
        let dir = std::env::temp_dir().join("pdevi_no_such_dir_for_tests/x.png");
        let values = vec![1.0; 4];
        let f = Field2 {
            values: &values,
            nx: 2,
            ny: 2,
            nodal: false,
        };
        assert!(matches!(
            write_field_png(Painter::Cpu, &dir, &f, "t", "u", &[]),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn large_field_is_subsampled() {
        assert_eq!(map_size(64, 64), (320, 320));
        assert_eq!(map_size(129, 129), (258, 258));
        assert_eq!(map_size(500, 250), (500, 250));
        assert_eq!(map_size(2048, 1024), (512, 256));
        assert_eq!(map_size(1, 1), (330, 330));
    }

    #[test]
    fn panels_png() {
        let n = 24;
        let truth: Vec<f64> = (0..n * n)
            .map(|k| ((k % n) as f64 / n as f64 * 3.0).sin() * ((k / n) as f64 / n as f64))
            .collect();
        let mean: Vec<f64> = truth.iter().map(|v| v * 0.95).collect();
        let std: Vec<f64> = truth.iter().map(|v| 0.01 + 0.1 * v.abs()).collect();
        let err: Vec<f64> = truth.iter().zip(&mean).map(|(a, b)| a - b).collect();
        fn f(values: &[f64]) -> Field2<'_> {
            let n = (values.len() as f64).sqrt() as usize;
            Field2::cells(values, n, n)
        }
        let (truth, mean, std, err) = (&truth[..], &mean[..], &std[..], &err[..]);
        let range = Some((-1.0, 1.0));
        let panels = [
            Panel {
                title: "truth".into(),
                field: f(truth),
                range,
                cmap: Colormap::Viridis,
                markers: &[],
                contours: 0,
            },
            Panel {
                title: "posterior mean".into(),
                field: f(mean),
                range,
                cmap: Colormap::Viridis,
                markers: &[],
                contours: 0,
            },
            Panel {
                title: "posterior std".into(),
                field: f(std),
                range: None,
                cmap: Colormap::Viridis,
                markers: &[],
                contours: 0,
            },
            Panel {
                title: "error".into(),
                field: f(err),
                range: None,
                cmap: Colormap::RdBu,
                markers: &[],
                contours: 0,
            },
        ];
        let p = temp_png("panels");
        write_panels_png(Painter::Cpu, &p, "Poisson 2-D: posterior summary", &panels).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        let maps: Vec<MapPanel> = panels
            .iter()
            .map(|q| MapPanel::new(&p, &q.title, q.field, q.range, q.cmap, None, &[], 0).unwrap())
            .collect();
        let expect = render_panels(Painter::Cpu, "Poisson 2-D: posterior summary", &maps);
        assert_eq!(img.dimensions(), expect.dimensions());
        assert!(img.width() > 4 * 264);
        let j = read_json(&p);
        assert_eq!(j["panels"].as_array().unwrap().len(), 4);
        assert_eq!(j["panels"][0]["range"][0], -1.0);
        assert_eq!(j["panels"][3]["colormap"], "rdbu");
        // Diverging panel without a range is symmetric about zero.
        let r = &j["panels"][3]["range"];
        assert_eq!(r[0].as_f64().unwrap(), -r[1].as_f64().unwrap());
        cleanup(&p);

        assert!(matches!(
            write_panels_png(Painter::Cpu, &p, "none", &[]),
            Err(Error::Format { .. })
        ));
        let bad = [Panel {
            title: "x".into(),
            field: f(truth),
            range: Some((1.0, f64::NAN)),
            cmap: Colormap::Viridis,
            markers: &[],
            contours: 0,
        }];
        assert!(matches!(
            write_panels_png(Painter::Cpu, &p, "bad", &bad),
            Err(Error::Format { .. })
        ));
    }

    #[test]
    fn line_plot() {
        let x: Vec<f64> = (0..=100).map(|k| k as f64 / 100.0).collect();
        let y: Vec<f64> = x.iter().map(|x| (6.0 * x).sin()).collect();
        let band: Vec<f64> = x.iter().map(|x| 0.1 + 0.2 * x).collect();
        let mut y2: Vec<f64> = x.iter().map(|x| (6.0 * x).sin() * 0.8).collect();
        y2[50] = f64::NAN;
        let series = [
            Series {
                label: "posterior mean +- 2 std".into(),
                x: &x,
                y: &y,
                band: Some(&band),
                rgb: [31, 119, 180],
                dashed: false,
            },
            Series {
                label: "truth".into(),
                x: &x,
                y: &y2,
                band: None,
                rgb: [214, 39, 40],
                dashed: true,
            },
        ];
        let p = temp_png("line");
        write_line_plot(&p, "1-D posterior", "x", "u(x)", &series, false, None).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (PLOT_W, PLOT_H));
        cleanup(&p);

        // An ELBO-like trace on a log axis, with a robust range.
        let it: Vec<f64> = (1..=500).map(|k| k as f64).collect();
        let loss: Vec<f64> = it.iter().map(|k| 1e6 / (k * k) + 3.0).collect();
        let s = [Series {
            label: "loss".into(),
            x: &it,
            y: &loss,
            band: None,
            rgb: [0, 0, 0],
            dashed: false,
        }];
        write_line_plot(&p, "loss", "step", "-ELBO", &s, true, None).unwrap();
        let (lo, hi) = robust_range(&loss);
        write_line_plot(&p, "loss", "step", "-ELBO", &s, false, Some((lo, hi))).unwrap();
        assert_eq!(
            image::open(&p).unwrap().to_rgb8().dimensions(),
            (PLOT_W, PLOT_H)
        );
        cleanup(&p);

        // Bad input is an error, not a panic.
        let bad = [Series {
            label: "bad".into(),
            x: &it,
            y: &loss[..10],
            band: None,
            rgb: [0, 0, 0],
            dashed: false,
        }];
        assert!(write_line_plot(&p, "t", "x", "y", &bad, false, None).is_err());
        assert!(write_line_plot(&p, "t", "x", "y", &s, true, Some((0.0, 1.0))).is_err());
        // Nothing finite: an empty frame, not an error.
        let nan = vec![f64::NAN; 3];
        let empty = [Series {
            label: String::new(),
            x: &nan,
            y: &nan,
            band: None,
            rgb: [0, 0, 0],
            dashed: false,
        }];
        write_line_plot(&p, "t", "x", "y", &empty, false, None).unwrap();
        write_line_plot(&p, "t", "x", "y", &[], true, None).unwrap();
        cleanup(&p);
    }

    #[test]
    fn extreme_values_do_not_break_plots() {
        let p = temp_png("extreme");
        let v = [f64::MAX, -f64::MAX, f64::INFINITY, 0.0];
        let f = Field2 {
            values: &v,
            nx: 2,
            ny: 2,
            nodal: false,
        };
        write_field_png(Painter::Cpu, &p, &f, "extreme", "u", &[]).unwrap();
        let j = read_json(&p);
        assert_eq!(j["max"], f64::MAX);
        assert_eq!(j["inf_count"], 1);
        let x = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [f64::MAX, -f64::MAX, 1.0, f64::NAN, 2.0, f64::NAN];
        let s = [Series {
            label: "wild".into(),
            x: &x,
            y: &y,
            band: Some(&[1.0, f64::INFINITY, f64::NAN, 1.0, -1.0, 0.0]),
            rgb: [0, 0, 0],
            dashed: true,
        }];
        write_line_plot(&p, "wild", "x", "y", &s, false, None).unwrap();
        write_line_plot(&p, "wild", "x", "y", &s, true, None).unwrap();
        // A single point and a constant series.
        let one = [Series {
            label: "one".into(),
            x: &[3.0],
            y: &[7.0],
            band: None,
            rgb: [0, 0, 0],
            dashed: false,
        }];
        write_line_plot(&p, "one", "x", "y", &one, false, None).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        // The lone point is drawn as a dot in the middle of the plot.
        let dark = img
            .enumerate_pixels()
            .filter(|(x, y, px)| {
                (*x as i32 - 340).abs() < 60 && (*y as i32 - 195).abs() < 20 && px.0[0] < 100
            })
            .count();
        assert!(dark > 3, "{dark}");
        cleanup(&p);
    }

    #[test]
    fn robust_range_ignores_early_outliers() {
        let mut y: Vec<f64> = (0..1000).map(|k| -100.0 + k as f64 * 0.01).collect();
        y[0] = -1e30;
        y[1] = f64::NEG_INFINITY;
        y[2] = f64::NAN;
        let (lo, hi) = robust_range(&y);
        assert!(lo > -101.0 && lo < -99.0, "{lo}");
        assert!(hi > -90.0 && hi < -89.0, "{hi}");
        assert_eq!(robust_range(&[]), (0.0, 1.0));
        let (a, b) = robust_range(&[2.0, 2.0]);
        assert!(a < 2.0 && b > 2.0);
    }

    #[test]
    fn labels_are_distinct_and_compact() {
        let l = level_labels(&[0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(l, ["0", "0.25", "0.50", "0.75", "1.00"]);
        let l = level_labels(&[1.0, 1.0 + 1e-6, 1.0 + 2e-6]);
        assert!(l.windows(2).all(|w| w[0] != w[1]), "{l:?}");
        let l = level_labels(&[-2e-5, 0.0, 2e-5]);
        assert_eq!(l, ["-2.00e-5", "0", "2.00e-5"]);
        let t = axis_ticks(0.0, 1.0, false, 6.0);
        let labels: Vec<&str> = t.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let t = axis_ticks(-3.0, 2.0, true, 6.0);
        let labels: Vec<&str> = t.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["0.001", "0.01", "0.1", "1", "10", "100"]);
    }
}
