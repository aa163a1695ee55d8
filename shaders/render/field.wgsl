// Field images: heat maps of cell and nodal fields, colour bars, line
// traces and sensor markers, drawn by the rasteriser into an RGBA8 target.
//
// Every draw is one entry of `draws`; the vertex shader places a quad over
// the draw's pixel rectangle with the draw's `clip` matrix (unit square ->
// clip space, built on the host with glam), and the fragment shader works
// in whole pixels of that rectangle (`@builtin(position)` minus `origin`),
// so the CPU mirror (src/cpu/render.rs) can reproduce it pixel for pixel:
// the same integer cell lookup, the same 256-entry colour table, the same
// marker discs. Draw k of the field pass is vertices 6k .. 6k + 6; the
// marker pass draws 6 vertices per instance (one instance per marker).
//
// Bindings: 0 draws (uniform: the vertex stage reads them, and storage
// buffers in vertex shaders are not portable), 1 values (f32 fields, each
// draw at its offset), 2 ranges (lo, hi pairs written by field_range for
// GPU-resident fields), 3 markers (x1, x2 in the unit square; uniform),
// 4 lut (256 x 2 texels: row 0 viridis, row 1 the diverging map).

struct Draw {
    clip: mat4x4<f32>,
    origin: vec2<u32>,
    size: vec2<u32>,
    nx: u32,
    ny: u32,
    kind: u32,
    cmap: u32,
    offset: u32,
    contours: u32,
    range_slot: u32,
    nmarkers: u32,
    lo: f32,
    hi: f32,
    view: u32,
    _pad: u32,
    // The visible part of the unit square (x0, y0, x1, y1): the live view's
    // pan and zoom. (0, 0, 1, 1) for figures.
    window: vec4<f32>,
};

const KIND_CELL: u32 = 0u;
const KIND_NODAL: u32 = 1u;
const KIND_RAMP: u32 = 2u;
const KIND_CURVE: u32 = 3u;
const NO_RANGE: u32 = 0xffffffffu;
// Marker disc radii in pixels, squared (white inside R_IN, ink to R_OUT).
const R_IN2: f32 = 4.0;
const R_OUT2: f32 = 12.25;
const R_BOX: f32 = 4.5;
const NAN_GREY: vec3<f32> = vec3<f32>(128.0, 128.0, 128.0) / 255.0;
const INK: vec3<f32> = vec3<f32>(25.0, 25.0, 25.0) / 255.0;
const WHITE: vec3<f32> = vec3<f32>(1.0, 1.0, 1.0);
const CONTOUR_ALPHA: f32 = 0.6;

const MAX_DRAWS: u32 = 48u;
const MAX_MARKERS: u32 = 1024u;

@group(0) @binding(0) var<uniform> draws: array<Draw, MAX_DRAWS>;
@group(0) @binding(1) var<storage, read> values: array<f32>;
@group(0) @binding(2) var<storage, read> ranges: array<vec2<f32>>;
@group(0) @binding(3) var<uniform> markers: array<vec4<f32>, MAX_MARKERS>;
@group(0) @binding(4) var lut: texture_2d<f32>;

struct VOut {
    @builtin(position) pos: vec4<f32>,
    @location(0) @interpolate(flat) draw: u32,
    @location(1) @interpolate(flat) marker: u32,
};

fn corner(c: u32) -> vec2<f32> {
    // Two triangles over the unit square.
    switch c {
        case 0u: { return vec2<f32>(0.0, 0.0); }
        case 1u: { return vec2<f32>(1.0, 0.0); }
        case 2u: { return vec2<f32>(1.0, 1.0); }
        case 3u: { return vec2<f32>(0.0, 0.0); }
        case 4u: { return vec2<f32>(1.0, 1.0); }
        default: { return vec2<f32>(0.0, 1.0); }
    }
}

fn is_nan(v: f32) -> bool {
    // Bit test: `v != v` may be folded away by a compiler assuming no NaNs.
    let b = bitcast<u32>(v);
    return (b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0u;
}

// The colour scale of a draw: its own (lo, hi), or one written on the GPU.
fn draw_range(d: Draw) -> vec2<f32> {
    if (d.range_slot != NO_RANGE) {
        return ranges[d.range_slot];
    }
    return vec2<f32>(d.lo, d.hi);
}

// Index into the 256-entry table for t (clamped); as `lut_index` on the CPU.
fn lut_index(t: f32) -> i32 {
    return clamp(i32(floor(clamp(t, 0.0, 1.0) * 256.0)), 0, 255);
}

fn lut_colour(cmap: u32, t: f32) -> vec3<f32> {
    return textureLoad(lut, vec2<i32>(lut_index(t), i32(cmap)), 0).rgb;
}

// Fraction of the colour scale; halving first keeps hi - lo finite.
fn frac(v: f32, r: vec2<f32>) -> f32 {
    return (v * 0.5 - r.x * 0.5) / (r.y * 0.5 - r.x * 0.5);
}

// The unit-square point of pixel (px, py) of a w x h rectangle (py from
// the top), through the draw's visible window.
fn unit_point(d: Draw, px: u32, py: u32) -> vec2<f32> {
    let u = (f32(px) + 0.5) / f32(d.size.x);
    let v = 1.0 - (f32(py) + 0.5) / f32(d.size.y);
    return d.window.xy + vec2<f32>(u, v) * (d.window.zw - d.window.xy);
}

// The field's value at pixel (px, py) of the draw's rectangle.
fn field_value(d: Draw, px: u32, py: u32) -> f32 {
    if (d.kind == KIND_CELL && d.view == 0u) {
        // Integer lookup, as the CPU heat map: no rounding at cell edges.
        let i = px * d.nx / d.size.x;
        let j = d.ny - 1u - py * d.ny / d.size.y;
        return values[d.offset + j * d.nx + i];
    }
    let p = unit_point(d, px, py);
    if (d.kind == KIND_CELL) {
        let i = min(u32(max(p.x, 0.0) * f32(d.nx)), d.nx - 1u);
        let j = min(u32(max(p.y, 0.0) * f32(d.ny)), d.ny - 1u);
        return values[d.offset + j * d.nx + i];
    }
    // Nodal: (nx + 1) x (ny + 1) values, bilinear between nodes.
    let s = clamp(p.x, 0.0, 1.0) * f32(d.nx);
    let r = clamp(p.y, 0.0, 1.0) * f32(d.ny);
    let i0 = min(u32(s), d.nx - 1u);
    let j0 = min(u32(r), d.ny - 1u);
    let fx = s - f32(i0);
    let fy = r - f32(j0);
    let w = d.nx + 1u;
    let a = values[d.offset + j0 * w + i0];
    let b = values[d.offset + j0 * w + i0 + 1u];
    let c = values[d.offset + (j0 + 1u) * w + i0];
    let e = values[d.offset + (j0 + 1u) * w + i0 + 1u];
    return (a * (1.0 - fx) + b * fx) * (1.0 - fy) + (c * (1.0 - fx) + e * fx) * fy;
}

// Contour band of a value: floor of its scaled position times the levels.
fn contour_level(v: f32, r: vec2<f32>, levels: u32) -> i32 {
    return i32(floor(clamp(frac(v, r), 0.0, 1.0) * f32(levels)));
}

// A line trace: values[offset .. offset + nx] across the rectangle, one
// segment per pixel column joining this column's value to the next one's.
fn curve_colour(d: Draw, px: u32, py: u32) -> vec3<f32> {
    let r = draw_range(d);
    let n = d.nx;
    if (n == 0u) {
        return WHITE;
    }
    let h = f32(d.size.y);
    let last = max(d.size.x, 2u) - 1u;
    let a = curve_row(d, r, min(px, last), last, h);
    let b = curve_row(d, r, min(px + 1u, last), last, h);
    let y = f32(py) + 0.5;
    if (y >= min(a, b) - 1.0 && y <= max(a, b) + 1.0) {
        return vec3<f32>(31.0, 119.0, 180.0) / 255.0;
    }
    return WHITE;
}

fn curve_row(d: Draw, r: vec2<f32>, px: u32, last: u32, h: f32) -> f32 {
    // Linear between the trace's points at this column's position.
    let s = f32(px) * f32(d.nx - 1u) / f32(max(last, 1u));
    let k = min(u32(s), d.nx - 1u);
    let k1 = min(k + 1u, d.nx - 1u);
    let a = values[d.offset + k];
    let b = values[d.offset + k1];
    if (is_nan(a) || is_nan(b)) {
        return -10.0;
    }
    let v = a + (s - f32(k)) * (b - a);
    return (1.0 - clamp(frac(v, r), 0.0, 1.0)) * (h - 1.0) + 0.5;
}

// The colour of pixel (px, py) of draw d (before markers).
fn field_colour(d: Draw, px: u32, py: u32) -> vec3<f32> {
    if (d.kind == KIND_RAMP) {
        let t = 1.0 - (f32(py) + 0.5) / f32(d.size.y);
        return lut_colour(d.cmap, t);
    }
    if (d.kind == KIND_CURVE) {
        return curve_colour(d, px, py);
    }
    let r = draw_range(d);
    let v = field_value(d, px, py);
    if (is_nan(v)) {
        return NAN_GREY;
    }
    var c = lut_colour(d.cmap, frac(v, r));
    if (d.contours > 0u) {
        // A pixel whose band differs from its right or lower neighbour's.
        let l = contour_level(v, r, d.contours);
        var edge = false;
        if (px + 1u < d.size.x) {
            let vr = field_value(d, px + 1u, py);
            edge = edge || (!is_nan(vr) && contour_level(vr, r, d.contours) != l);
        }
        if (py + 1u < d.size.y) {
            let vd = field_value(d, px, py + 1u);
            edge = edge || (!is_nan(vd) && contour_level(vd, r, d.contours) != l);
        }
        if (edge) {
            c = mix(c, INK, CONTOUR_ALPHA);
        }
    }
    return c;
}

@vertex
fn field_vs(@builtin(vertex_index) vi: u32) -> VOut {
    let k = vi / 6u;
    let d = draws[k];
    var out: VOut;
    out.pos = d.clip * vec4<f32>(corner(vi % 6u), 0.0, 1.0);
    out.draw = k;
    out.marker = 0u;
    return out;
}

@fragment
fn field_fs(in: VOut) -> @location(0) vec4<f32> {
    let d = draws[in.draw];
    let p = vec2<u32>(in.pos.xy) - d.origin;
    return vec4<f32>(field_colour(d, p.x, p.y), 1.0);
}

// The marker's centre in the draw's pixels (x right, y down), through the
// visible window.
fn marker_centre(d: Draw, m: vec2<f32>) -> vec2<f32> {
    let u = (m - d.window.xy) / (d.window.zw - d.window.xy);
    return vec2<f32>(u.x * f32(d.size.x), (1.0 - u.y) * f32(d.size.y));
}

@vertex
fn marker_vs(@builtin(vertex_index) vi: u32, @builtin(instance_index) m: u32) -> VOut {
    let k = vi / 6u;
    let d = draws[k];
    let c = marker_centre(d, markers[m].xy);
    // A box of R_BOX pixels around the centre, in the unit square of the rectangle.
    let q = (c + (corner(vi % 6u) * 2.0 - 1.0) * R_BOX) / vec2<f32>(d.size);
    var out: VOut;
    out.pos = d.clip * vec4<f32>(q.x, 1.0 - q.y, 0.0, 1.0);
    out.draw = k;
    out.marker = m;
    return out;
}

@fragment
fn marker_fs(in: VOut) -> @location(0) vec4<f32> {
    let d = draws[in.draw];
    let p = vec2<f32>(vec2<u32>(in.pos.xy) - d.origin) + 0.5;
    let e = p - marker_centre(d, markers[in.marker].xy);
    let r2 = dot(e, e);
    if (r2 > R_OUT2 || p.x < 0.0 || p.y < 0.0 || p.x > f32(d.size.x) || p.y > f32(d.size.y)) {
        discard;
    }
    if (r2 <= R_IN2) {
        return vec4<f32>(WHITE, 1.0);
    }
    return vec4<f32>(INK, 1.0);
}
