// What the live view and the frames show, computed where q lives: the
// pointwise mean and std of the field z = basis^T xi under the current
// Gaussian q (any VI family), and the colour range of each field, so a
// frame is drawn from GPU buffers with no copy to the host.
//
// theta layout as in infer/vi.wgsl:
//   m = theta[0..d]
//   MEAN_FIELD (0): s = exp(theta[d..2d])
//   FULL_RANK (1):  L lower triangle of theta[d..d+d*d] (row-major), diag exp
//   LOW_RANK (2):   W = theta[d..d+d*r] (d x r), s = exp(theta[d+d*r..2d+d*r])
//
// Bindings: 0 params, 1 theta, 2 basis (d x ncoef), 3 fields (mean at 0,
// std at ncoef), 4 ranges (lo, hi per field).

struct LiveParams {
    d: u32,
    r: u32,
    family: u32,
    ncoef: u32,
    nfields: u32,
    len: u32,
    _pad0: u32,
    _pad1: u32,
};

@group(0) @binding(0) var<uniform> L: LiveParams;
@group(0) @binding(1) var<storage, read> theta: array<f32>;
@group(0) @binding(2) var<storage, read> basis: array<f32>;
@group(0) @binding(3) var<storage, read_write> fields: array<f32>;
@group(0) @binding(4) var<storage, read_write> ranges: array<vec2<f32>>;

const LIVE_WG: u32 = 256u;

fn phi(k: u32, c: u32) -> f32 {
    return basis[k * L.ncoef + c];
}

// fields[c] = sum_k m_k phi_k(c); fields[ncoef + c] = sqrt(phi(c)^T Cov phi(c)),
// the variance as a sum of squares of the factor's columns (never negative).
// Dispatch (ceil(ncoef / 256), 1, 1).
@compute @workgroup_size(256)
fn field_moments(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= L.ncoef) {
        return;
    }
    let d = L.d;
    var mean = 0.0;
    for (var k = 0u; k < d; k++) {
        mean += theta[k] * phi(k, c);
    }
    var var_ = 0.0;
    if (L.family == 0u) {
        for (var k = 0u; k < d; k++) {
            let a = phi(k, c) * exp(theta[d + k]);
            var_ += a * a;
        }
    } else if (L.family == 1u) {
        // Column j of L: rows i >= j.
        for (var j = 0u; j < d; j++) {
            var a = phi(j, c) * exp(theta[d + j * d + j]);
            for (var i = j + 1u; i < d; i++) {
                a += phi(i, c) * theta[d + i * d + j];
            }
            var_ += a * a;
        }
    } else {
        let r = L.r;
        for (var b = 0u; b < r; b++) {
            var a = 0.0;
            for (var i = 0u; i < d; i++) {
                a += phi(i, c) * theta[d + i * r + b];
            }
            var_ += a * a;
        }
        for (var k = 0u; k < d; k++) {
            let a = phi(k, c) * exp(theta[d + d * r + k]);
            var_ += a * a;
        }
    }
    fields[c] = mean;
    fields[L.ncoef + c] = sqrt(var_);
}

var<workgroup> lo_wg: array<f32, LIVE_WG>;
var<workgroup> hi_wg: array<f32, LIVE_WG>;

fn finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

// ranges[f] = (min, max) of the finite values of fields[f * len ..][.. len],
// widened around a constant field as the CPU heat map does. One workgroup.
@compute @workgroup_size(256)
fn field_range(@builtin(local_invocation_index) lid: u32) {
    for (var f = 0u; f < L.nfields; f++) {
        var lo = 3.0e38;
        var hi = -3.0e38;
        for (var i = lid; i < L.len; i += LIVE_WG) {
            let v = fields[f * L.len + i];
            if (finite(v)) {
                lo = min(lo, v);
                hi = max(hi, v);
            }
        }
        lo_wg[lid] = lo;
        hi_wg[lid] = hi;
        workgroupBarrier();
        for (var s = LIVE_WG / 2u; s > 0u; s >>= 1u) {
            if (lid < s) {
                lo_wg[lid] = min(lo_wg[lid], lo_wg[lid + s]);
                hi_wg[lid] = max(hi_wg[lid], hi_wg[lid + s]);
            }
            workgroupBarrier();
        }
        if (lid == 0u) {
            var a = lo_wg[0];
            var b = hi_wg[0];
            if (a > b) {
                a = 0.0;
                b = 1.0;
            } else if (!(b > a)) {
                var w = 0.1 * abs(a);
                if (a == 0.0) {
                    w = 1.0;
                }
                a = a - w;
                b = b + w;
            }
            ranges[f] = vec2<f32>(a, b);
        }
        workgroupBarrier();
    }
}
