// The Kalman filter of advdiff1d's linear state-space model, batched over
// draws of zeta: u_0 ~ N(m_0, sigma_0^2 I), u_t = M(zeta) u_{t-1} +
// N(0, sigma_u^2 I), x_t = u_t + N(0, sigma_x^2 I), t = 1..T.
//
// M(zeta) is circulant (constant coefficients, periodic grid), so in the
// orthonormal real Fourier basis every covariance of the filter is diagonal
// and the filter is one scalar filter per mode, exact: mode k's complex
// coefficient is multiplied by lambda_k = (1 + dt/2 l_k) / (1 - dt/2 l_k),
// l_k = -c i sin(th)/h + nu (2 cos(th) - 2)/h^2, th = 2 pi k / n.
// Mirrors `kalman_loglik` in src/cpu/kalman.rs (the dense n x n filter there
// is the reference both are tested against).
//
// A workgroup per draw s of zeta (paired with draw s % Sx of x):
//   kout[s] = (log p(x | zeta), d/dzeta_1, d/dzeta_2, d/d log sigma_x^2)
//   gx[s]   = d log p / dx (T x n), by kalman_grad_x (a second dispatch)
// over the first t_kalman frames (the warm-up anchors the code with the
// first few, whose states hardly depend on zeta; zeros beyond).
// The zeta gradient is carried forward as three tangents (c, nu,
// log sigma_x^2) of each mode's filter; the x gradient by a reverse sweep
// of the mean recursion, which is linear in x.
//
// Bindings: 0 dp, 1 theta, 2 m0 (modes x 2: the initial mean's
// coefficients), 3 xs (Sx x T x n), 4 zs (S x 2), 5 work (S x T x modes x 6),
// 6 kout (S x 4), 7 gx (S x T x n).

const KWG: u32 = 64u;
const LOG_2PI: f32 = 1.8378770664093453;
const TAU: f32 = 6.283185307179586;

@group(0) @binding(0) var<storage, read> dp: DvaeParams;
@group(0) @binding(1) var<storage, read> theta: array<f32>;
@group(0) @binding(2) var<storage, read> m0: array<f32>;
@group(0) @binding(3) var<storage, read> xs: array<f32>;
@group(0) @binding(4) var<storage, read> zs: array<f32>;
@group(0) @binding(5) var<storage, read_write> work: array<f32>;
@group(0) @binding(6) var<storage, read_write> kout: array<f32>;
@group(0) @binding(7) var<storage, read_write> gx: array<f32>;

var<workgroup> kred: array<vec4<f32>, KWG>;

fn cmul(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}

fn cdiv(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let d = dot(b, b);
    return vec2<f32>(a.x * b.x + a.y * b.y, a.y * b.x - a.x * b.y) / d;
}

// Real degrees of freedom of mode k (1 for k = 0 and the Nyquist mode).
fn mode_dof(k: u32) -> f32 {
    if (k == 0u || 2u * k == dp.n) {
        return 1.0;
    }
    return 2.0;
}

// (cosine, sine) node values of mode k's orthonormal basis at node i.
fn basis(k: u32, i: u32) -> vec2<f32> {
    let th = TAU * f32((k * i) % dp.n) / f32(dp.n);
    if (mode_dof(k) == 1.0) {
        return vec2<f32>(cos(th) / sqrt(f32(dp.n)), 0.0);
    }
    return sqrt(2.0 / f32(dp.n)) * vec2<f32>(cos(th), sin(th));
}

struct Factor {
    lam: vec2<f32>,
    dc: vec2<f32>,
    dnu: vec2<f32>,
}

// lambda_k and its derivatives in c and nu.
fn mode_factor(k: u32, c: f32, nu: f32) -> Factor {
    let h = 1.0 / f32(dp.n);
    let th = TAU * f32(k) / f32(dp.n);
    let dlc = vec2<f32>(0.0, -sin(th) / h);
    let dlnu = vec2<f32>((2.0 * cos(th) - 2.0) / (h * h), 0.0);
    let l = c * dlc + nu * dlnu;
    let half = 0.5 * dp.dt;
    let num = vec2<f32>(1.0, 0.0) + half * l;
    let den = vec2<f32>(1.0, 0.0) - half * l;
    let dla = cdiv(vec2<f32>(2.0, 0.0), cmul(den, den));
    var f: Factor;
    f.lam = cdiv(num, den);
    f.dc = cmul(dla, half * dlc);
    f.dnu = cmul(dla, half * dlnu);
    return f;
}

fn wbase(s: u32, t: u32, k: u32) -> u32 {
    return ((s * dp.t + t) * dp.modes + k) * 6u;
}

@compute @workgroup_size(64)
fn kalman_loglik(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = wid.x;
    let n = dp.n;
    let xbase = (s % dp.x_samples) * dp.t * n;
    let z = vec2<f32>(zs[2u * s], zs[2u * s + 1u]);
    let c = 1.0 + 0.5 * z.x;
    let nu = 0.005 * exp(0.5 * z.y);
    let sx2 = exp(theta[TH_SX]);
    // The filter runs over the first kt frames (all but in the warm-up).
    let kt = min(dp.t, dp.t_kalman);
    // (ll, d/dc, d/dnu, d/dlog sx2) of this invocation's modes.
    var acc = vec4<f32>(0.0);
    for (var k = lid; k < dp.modes; k += KWG) {
        let dof = mode_dof(k);
        let f = mode_factor(k, c, nu);
        let lam = f.lam;
        let lam2 = dot(lam, lam);
        var m = vec2<f32>(m0[2u * k], m0[2u * k + 1u]);
        var p = dp.sigma_02;
        // Tangents in c, nu, log sigma_x^2.
        var dm0 = vec2<f32>(0.0);
        var dm1 = vec2<f32>(0.0);
        var dm2 = vec2<f32>(0.0);
        var dpv = vec3<f32>(0.0);
        for (var t = 0u; t < kt; t++) {
            // This mode's coefficient of x_t (x-hat = Q^T x).
            var xh = vec2<f32>(0.0);
            for (var i = 0u; i < n; i++) {
                let b = basis(k, i);
                let v = xs[xbase + t * n + i];
                xh += vec2<f32>(b.x * v, -b.y * v);
            }
            let mp = cmul(lam, m);
            let pp = lam2 * p + dp.sigma_u2;
            let sv = pp + sx2;
            let e = xh - mp;
            let e2 = dot(e, e);
            acc.x += -0.5 * (e2 / sv + dof * (log(sv) + LOG_2PI));
            let kg = pp / sv;
            // The three tangents (written out: no arrays of vec2 in registers).
            let dmp0 = cmul(f.dc, m) + cmul(lam, dm0);
            let dmp1 = cmul(f.dnu, m) + cmul(lam, dm1);
            let dmp2 = cmul(lam, dm2);
            let dpp = vec3<f32>(
                2.0 * dot(lam, f.dc) * p + lam2 * dpv.x,
                2.0 * dot(lam, f.dnu) * p + lam2 * dpv.y,
                lam2 * dpv.z,
            );
            let ds = dpp + vec3<f32>(0.0, 0.0, sx2);
            let dll = -0.5 * (
                2.0 * vec3<f32>(dot(e, -dmp0), dot(e, -dmp1), dot(e, -dmp2)) / sv
                - e2 * ds / (sv * sv) + dof * ds / sv);
            acc.y += dll.x;
            acc.z += dll.y;
            acc.w += dll.z;
            let dk = (dpp * sv - pp * ds) / (sv * sv);
            dm0 = dmp0 + dk.x * e - kg * dmp0;
            dm1 = dmp1 + dk.y * e - kg * dmp1;
            dm2 = dmp2 + dk.z * e - kg * dmp2;
            dpv = -dk * pp + (1.0 - kg) * dpp;
            m = mp + kg * e;
            p = (1.0 - kg) * pp;
            let w = wbase(s, t, k);
            work[w] = kg;
            work[w + 1u] = sv;
            work[w + 2u] = e.x;
            work[w + 3u] = e.y;
        }
        // Reverse sweep: G = d ll / d m_t; d ll / d x-hat_t = ge + K G.
        var g = vec2<f32>(0.0);
        for (var tt = 0u; tt < kt; tt++) {
            let t = kt - 1u - tt;
            let w = wbase(s, t, k);
            let kg = work[w];
            let ge = -vec2<f32>(work[w + 2u], work[w + 3u]) / work[w + 1u];
            let gx_hat = ge + kg * g;
            work[w + 4u] = gx_hat.x;
            work[w + 5u] = gx_hat.y;
            g = cmul(vec2<f32>(lam.x, -lam.y), (1.0 - kg) * g - ge);
        }
    }
    kred[lid] = acc;
    workgroupBarrier();
    for (var half = KWG / 2u; half > 0u; half = half / 2u) {
        if (lid < half) {
            kred[lid] += kred[lid + half];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let r = kred[0];
        let dcz = 0.5;
        let dnuz = 0.5 * nu;
        kout[4u * s] = r.x;
        kout[4u * s + 1u] = r.y * dcz;
        kout[4u * s + 2u] = r.z * dnuz;
        kout[4u * s + 3u] = r.w;
    }
}

// Back to nodes, d/dx = Q d/dx-hat, from the modal gradients kalman_loglik
// left in `work`. A dispatch of its own: on GL (llvmpipe) invocations of
// one workgroup read zeros there after storageBarrier (measured: every
// node handled by an invocation with no mode of its own).
@compute @workgroup_size(64)
fn kalman_grad_x(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = wid.x;
    let n = dp.n;
    let kt = min(dp.t, dp.t_kalman);
    for (var i = lid; i < n; i += KWG) {
        for (var t = 0u; t < dp.t; t++) {
            var a = 0.0;
            // Frames beyond the filtered ones have no gradient.
            let km = select(0u, dp.modes, t < kt);
            for (var k = 0u; k < km; k++) {
                let b = basis(k, i);
                let w = wbase(s, t, k);
                a += b.x * work[w + 4u] - b.y * work[w + 5u];
            }
            gx[(s * dp.t + t) * n + i] = a;
        }
    }
}
