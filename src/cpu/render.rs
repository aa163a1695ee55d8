//! f64 mirror of shaders/render/field.wgsl: the colour of every pixel of a
//! draw, with the same names and the same integer pixel arithmetic, so the
//! GPU image can be compared with this one pixel for pixel. It is also the
//! drawing path where a device cannot render.

use crate::gpu::render::{Draw, KIND_CELL, KIND_CURVE, KIND_RAMP, NO_RANGE};
use crate::output::colormap::{Colormap, NAN_GREY};

const INK: [f64; 3] = [25.0, 25.0, 25.0];
const WHITE: [u8; 3] = [255, 255, 255];
const CURVE: [u8; 3] = [31, 119, 180];
/// Marker disc radii in pixels, squared (white inside, ink to the outer).
pub const R_IN2: f64 = 4.0;
pub const R_OUT2: f64 = 12.25;
pub const R_BOX: f64 = 4.5;
const CONTOUR_ALPHA: f64 = 0.6;

fn cmap(code: u32) -> Colormap {
    if code == 1 {
        Colormap::RdBu
    } else {
        Colormap::Viridis
    }
}

/// The colour scale of a draw: its own, or one of `ranges` (GPU-computed).
pub fn draw_range(d: &Draw, ranges: &[[f64; 2]]) -> [f64; 2] {
    if d.range_slot != NO_RANGE {
        return ranges[d.range_slot as usize];
    }
    [d.lo as f64, d.hi as f64]
}

fn lut_colour(code: u32, t: f64) -> [u8; 3] {
    // Not NaN here: the callers test the value first, as the shader does.
    cmap(code).map(t.clamp(0.0, 1.0))
}

/// Fraction of the colour scale; halving first keeps hi - lo finite.
pub fn frac(v: f64, r: [f64; 2]) -> f64 {
    (v * 0.5 - r[0] * 0.5) / (r[1] * 0.5 - r[0] * 0.5)
}

fn unit_point(d: &Draw, px: u32, py: u32) -> [f64; 2] {
    let u = (px as f64 + 0.5) / d.size[0] as f64;
    let v = 1.0 - (py as f64 + 0.5) / d.size[1] as f64;
    let w = d.window.map(|x| x as f64);
    [w[0] + u * (w[2] - w[0]), w[1] + v * (w[3] - w[1])]
}

/// The field's value at pixel (px, py) of the draw's rectangle.
pub fn field_value(d: &Draw, values: &[f64], px: u32, py: u32) -> f64 {
    let (nx, ny, off) = (d.nx as usize, d.ny as usize, d.offset as usize);
    if d.kind == KIND_CELL && d.view == 0 {
        let i = px as usize * nx / d.size[0] as usize;
        let j = ny - 1 - py as usize * ny / d.size[1] as usize;
        return values[off + j * nx + i];
    }
    let p = unit_point(d, px, py);
    if d.kind == KIND_CELL {
        let i = ((p[0].max(0.0) * nx as f64) as usize).min(nx - 1);
        let j = ((p[1].max(0.0) * ny as f64) as usize).min(ny - 1);
        return values[off + j * nx + i];
    }
    let s = p[0].clamp(0.0, 1.0) * nx as f64;
    let r = p[1].clamp(0.0, 1.0) * ny as f64;
    let i0 = (s as usize).min(nx - 1);
    let j0 = (r as usize).min(ny - 1);
    let (fx, fy) = (s - i0 as f64, r - j0 as f64);
    let w = nx + 1;
    let a = values[off + j0 * w + i0];
    let b = values[off + j0 * w + i0 + 1];
    let c = values[off + (j0 + 1) * w + i0];
    let e = values[off + (j0 + 1) * w + i0 + 1];
    (a * (1.0 - fx) + b * fx) * (1.0 - fy) + (c * (1.0 - fx) + e * fx) * fy
}

/// Contour band of a value.
pub fn contour_level(v: f64, r: [f64; 2], levels: u32) -> i64 {
    (frac(v, r).clamp(0.0, 1.0) * levels as f64).floor() as i64
}

fn curve_row(d: &Draw, values: &[f64], r: [f64; 2], px: u32, last: u32, h: f64) -> f64 {
    let n = d.nx as usize;
    let s = px as f64 * (n - 1) as f64 / last.max(1) as f64;
    let k = (s as usize).min(n - 1);
    let k1 = (k + 1).min(n - 1);
    let (a, b) = (
        values[d.offset as usize + k],
        values[d.offset as usize + k1],
    );
    if a.is_nan() || b.is_nan() {
        return -10.0;
    }
    let v = a + (s - k as f64) * (b - a);
    (1.0 - frac(v, r).clamp(0.0, 1.0)) * (h - 1.0) + 0.5
}

fn curve_colour(d: &Draw, values: &[f64], ranges: &[[f64; 2]], px: u32, py: u32) -> [u8; 3] {
    let r = draw_range(d, ranges);
    if d.nx == 0 {
        return WHITE;
    }
    let h = d.size[1] as f64;
    let last = d.size[0].max(2) - 1;
    let a = curve_row(d, values, r, px.min(last), last, h);
    let b = curve_row(d, values, r, (px + 1).min(last), last, h);
    let y = py as f64 + 0.5;
    if y >= a.min(b) - 1.0 && y <= a.max(b) + 1.0 {
        CURVE
    } else {
        WHITE
    }
}

/// The colour of pixel (px, py) of draw `d` (before markers).
pub fn field_colour(d: &Draw, values: &[f64], ranges: &[[f64; 2]], px: u32, py: u32) -> [u8; 3] {
    if d.kind == KIND_RAMP {
        let t = 1.0 - (py as f64 + 0.5) / d.size[1] as f64;
        return lut_colour(d.cmap, t);
    }
    if d.kind == KIND_CURVE {
        return curve_colour(d, values, ranges, px, py);
    }
    let r = draw_range(d, ranges);
    let v = field_value(d, values, px, py);
    if v.is_nan() {
        return NAN_GREY;
    }
    let c = lut_colour(d.cmap, frac(v, r));
    if d.contours > 0 {
        let l = contour_level(v, r, d.contours);
        let mut edge = false;
        if px + 1 < d.size[0] {
            let vr = field_value(d, values, px + 1, py);
            edge |= !vr.is_nan() && contour_level(vr, r, d.contours) != l;
        }
        if py + 1 < d.size[1] {
            let vd = field_value(d, values, px, py + 1);
            edge |= !vd.is_nan() && contour_level(vd, r, d.contours) != l;
        }
        if edge {
            let mut out = [0u8; 3];
            for k in 0..3 {
                let x =
                    c[k] as f64 / 255.0 * (1.0 - CONTOUR_ALPHA) + INK[k] / 255.0 * CONTOUR_ALPHA;
                out[k] = (x * 255.0).round() as u8;
            }
            return out;
        }
    }
    c
}

/// The marker's centre in the draw's pixels (x right, y down).
pub fn marker_centre(d: &Draw, m: [f64; 2]) -> [f64; 2] {
    let w = d.window.map(|x| x as f64);
    let u = [(m[0] - w[0]) / (w[2] - w[0]), (m[1] - w[1]) / (w[3] - w[1])];
    [u[0] * d.size[0] as f64, (1.0 - u[1]) * d.size[1] as f64]
}

/// The marker's colour at pixel (px, py) of the draw, if it covers it.
pub fn marker_colour(d: &Draw, m: [f64; 2], px: u32, py: u32) -> Option<[u8; 3]> {
    let c = marker_centre(d, m);
    let e = [px as f64 + 0.5 - c[0], py as f64 + 0.5 - c[1]];
    let r2 = e[0] * e[0] + e[1] * e[1];
    if r2 > R_OUT2 {
        None
    } else if r2 <= R_IN2 {
        Some(WHITE)
    } else {
        Some([25, 25, 25])
    }
}

/// Paint every draw into an RGB buffer of `width` pixels per row (the
/// pixels outside the draws are left alone), then the markers of the draws
/// that carry them: what the GPU's field and marker passes do.
pub fn paint(
    rgb: &mut image::RgbImage,
    draws: &[Draw],
    values: &[f64],
    ranges: &[[f64; 2]],
    markers: &[[f64; 2]],
) {
    for d in draws {
        for py in 0..d.size[1] {
            for px in 0..d.size[0] {
                let c = field_colour(d, values, ranges, px, py);
                rgb.put_pixel(d.origin[0] + px, d.origin[1] + py, image::Rgb(c));
            }
        }
    }
    for d in draws.iter().filter(|d| d.nmarkers > 0) {
        for &m in markers.iter().take(d.nmarkers as usize) {
            let c = marker_centre(d, m);
            let x0 = (c[0] - R_BOX).floor().max(0.0) as u32;
            let y0 = (c[1] - R_BOX).floor().max(0.0) as u32;
            let x1 = ((c[0] + R_BOX).ceil().max(0.0) as u32).min(d.size[0]);
            let y1 = ((c[1] + R_BOX).ceil().max(0.0) as u32).min(d.size[1]);
            for py in y0..y1 {
                for px in x0..x1 {
                    if let Some(col) = marker_colour(d, m, px, py) {
                        rgb.put_pixel(d.origin[0] + px, d.origin[1] + py, image::Rgb(col));
                    }
                }
            }
        }
    }
}
