// Dense layers of an MLP, Y = act(X W + b), with their backward pass:
// one tiled matrix product that takes the three shapes of backprop
// (X W, dZ W^T, X^T dZ) through general strides, bias and activation fused
// into its epilogue; the activation's derivative; the bias gradient (a
// column sum); losses; the minibatch gather; and an FMA-bound probe that
// measures the device's arithmetic peak for the benchmark.
//
// Matrices are flat f32 arrays: element (i, j) of an operand lives at
// off + i * rs + j * cs, so a transpose is a swap of strides.

// Mirrors `MlpParams` in src/nn/mlp.rs (64 bytes; tests/layout.rs checks). Fields are read
// as documented at each entry point.
struct MlpParams {
    m: u32,        // rows of the output
    n: u32,        // columns of the output
    k: u32,        // inner dimension (matmul)
    act: u32,      // activation code (see act_f)
    a_off: u32,
    a_rs: u32,
    a_cs: u32,
    b_off: u32,
    b_rs: u32,
    b_cs: u32,
    c_off: u32,
    c_rs: u32,
    bias_off: u32,
    flags: u32,    // matmul: bit 0 add bias (from xb), bit 1 store pre-activation in xz
    scale: f32,
    slot: u32,
}

@group(0) @binding(0) var<uniform> M: MlpParams;
@group(0) @binding(1) var<storage, read> xa: array<f32>;
@group(0) @binding(2) var<storage, read> xb: array<f32>;
@group(0) @binding(3) var<storage, read_write> xc: array<f32>;
@group(0) @binding(4) var<storage, read_write> xz: array<f32>;
@group(0) @binding(5) var<storage, read> idx: array<u32>;

const ACT_IDENTITY: u32 = 0u;
const ACT_TANH: u32 = 1u;
const ACT_RELU: u32 = 2u;
const ACT_SILU: u32 = 3u;
const ACT_GELU: u32 = 4u;
const ACT_SOFTPLUS: u32 = 5u;
const GELU_C: f32 = 0.7978845608028654; // sqrt(2 / pi)
const GELU_A: f32 = 0.044715;

// tanh through exp(-2|x|): never inf / inf, unlike exp(2x) for large x.
fn tanh_safe(x: f32) -> f32 {
    let e = exp(-2.0 * abs(x));
    return sign(x) * (1.0 - e) / (1.0 + e);
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

fn act_f(code: u32, x: f32) -> f32 {
    switch code {
        case 1u: {
            return tanh_safe(x);
        }
        case 2u: {
            return max(x, 0.0);
        }
        case 3u: {
            return x * sigmoid(x);
        }
        case 4u: {
            return 0.5 * x * (1.0 + tanh_safe(GELU_C * (x + GELU_A * x * x * x)));
        }
        case 5u: {
            return max(x, 0.0) + log(1.0 + exp(-abs(x)));
        }
        default: {
            return x;
        }
    }
}

// d act / dz at the pre-activation z.
fn act_df(code: u32, z: f32) -> f32 {
    switch code {
        case 1u: {
            let t = tanh_safe(z);
            return 1.0 - t * t;
        }
        case 2u: {
            return select(0.0, 1.0, z > 0.0);
        }
        case 3u: {
            let s = sigmoid(z);
            return s * (1.0 + z * (1.0 - s));
        }
        case 4u: {
            let t = tanh_safe(GELU_C * (z + GELU_A * z * z * z));
            return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * z * z);
        }
        case 5u: {
            return sigmoid(z);
        }
        default: {
            return 1.0;
        }
    }
}

// ---- tiled product ---------------------------------------------------------
// C (m x n) = A (m x k) B (k x n) [+ bias]; xc = act(C), xz = C if flags & 2.
// A from xa, B and the bias from xb. A workgroup of 16 x 16 invocations
// computes a 64 x 64 tile, 4 x 4 outputs per invocation, through K tiles of
// 16 staged in workgroup memory as vec4s (A transposed): per inner step an
// invocation reads 2 vec4s and does 16 FMAs.
// Dispatch (ceil(n / 64), ceil(m / 64), 1).

const TILE: u32 = 64u;
const TK: u32 = 16u;
var<workgroup> ta: array<vec4<f32>, 256>; // [kk * 16 + row quad]
var<workgroup> tb: array<vec4<f32>, 256>; // [kk * 16 + column quad]

fn load_a(r: u32, kk: u32) -> f32 {
    if (r < M.m && kk < M.k) {
        return xa[M.a_off + r * M.a_rs + kk * M.a_cs];
    }
    return 0.0;
}

fn load_b(kk: u32, c: u32) -> f32 {
    if (kk < M.k && c < M.n) {
        return xb[M.b_off + kk * M.b_rs + c * M.b_cs];
    }
    return 0.0;
}

fn store_c(r: u32, c: u32, v: f32) {
    if (r < M.m && c < M.n) {
        var y = v;
        if ((M.flags & 1u) != 0u) {
            y += xb[M.bias_off + c];
        }
        let o = M.c_off + r * M.c_rs + c;
        if ((M.flags & 2u) != 0u) {
            xz[o] = y;
        }
        xc[o] = act_f(M.act, y);
    }
}

@compute @workgroup_size(256)
fn matmul(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let tx = lid % 16u; // column quad of the outputs
    let ty = lid / 16u; // row quad of the outputs
    // Staging: invocation lid loads 4 rows of A at one k and 4 columns of B at one k.
    let lk = lid / 16u;
    let lq = lid % 16u;
    let full_rows = row0 + TILE <= M.m;
    let full_cols = col0 + TILE <= M.n;
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    let ntiles = (M.k + TK - 1u) / TK;
    for (var t = 0u; t < ntiles; t++) {
        let kk = t * TK + lk;
        let ra = row0 + 4u * lq;
        let cb = col0 + 4u * lq;
        var av: vec4<f32>;
        var bv: vec4<f32>;
        if (full_rows && kk < M.k) {
            let base = M.a_off + kk * M.a_cs + ra * M.a_rs;
            av = vec4<f32>(xa[base], xa[base + M.a_rs], xa[base + 2u * M.a_rs], xa[base + 3u * M.a_rs]);
        } else {
            av = vec4<f32>(load_a(ra, kk), load_a(ra + 1u, kk), load_a(ra + 2u, kk), load_a(ra + 3u, kk));
        }
        if (full_cols && kk < M.k) {
            let base = M.b_off + kk * M.b_rs + cb * M.b_cs;
            bv = vec4<f32>(xb[base], xb[base + M.b_cs], xb[base + 2u * M.b_cs], xb[base + 3u * M.b_cs]);
        } else {
            bv = vec4<f32>(load_b(kk, cb), load_b(kk, cb + 1u), load_b(kk, cb + 2u), load_b(kk, cb + 3u));
        }
        ta[lk * 16u + lq] = av;
        tb[lk * 16u + lq] = bv;
        workgroupBarrier();
        for (var j = 0u; j < TK; j++) {
            let a = ta[j * 16u + ty];
            let b = tb[j * 16u + tx];
            c0 += a.x * b;
            c1 += a.y * b;
            c2 += a.z * b;
            c3 += a.w * b;
        }
        workgroupBarrier();
    }
    let r = row0 + 4u * ty;
    let c = col0 + 4u * tx;
    for (var q = 0u; q < 4u; q++) {
        store_c(r, c + q, c0[q]);
        store_c(r + 1u, c + q, c1[q]);
        store_c(r + 2u, c + q, c2[q]);
        store_c(r + 3u, c + q, c3[q]);
    }
}

// ---- register-blocked product for CPU devices -------------------------------
// The same product for devices that run invocations as SIMD lanes of a CPU
// (lavapipe). There workgroup memory is no faster than cached memory, and a
// storage or workgroup load inside a loop costs a scalar load per lane
// (measured: about 60 FMAs' time), so throughput is set by FMAs per loaded
// value. Each invocation computes an 8 x 8 block straight from A and B
// (16 loads, 64 FMAs per k): 1.8 GFLOP/s on lavapipe against 0.84 for the
// tiled kernel. A workgroup of 64 still covers 64 x 64 outputs.
// Dispatch (ceil(n / 64), ceil(m / 64), 1).

fn ld_a(r: u32, kk: u32) -> f32 {
    return xa[M.a_off + min(r, M.m - 1u) * M.a_rs + kk * M.a_cs];
}

fn ld_b(kk: u32, c: u32) -> f32 {
    return xb[M.b_off + kk * M.b_rs + min(c, M.n - 1u) * M.b_cs];
}

@compute @workgroup_size(64)
fn matmul_blocked(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = wid.y * 64u + (lid / 8u) * 8u;
    let c = wid.x * 64u + (lid % 8u) * 8u;
    var p0 = vec4<f32>(0.0);
    var q0 = vec4<f32>(0.0);
    var p1 = vec4<f32>(0.0);
    var q1 = vec4<f32>(0.0);
    var p2 = vec4<f32>(0.0);
    var q2 = vec4<f32>(0.0);
    var p3 = vec4<f32>(0.0);
    var q3 = vec4<f32>(0.0);
    var p4 = vec4<f32>(0.0);
    var q4 = vec4<f32>(0.0);
    var p5 = vec4<f32>(0.0);
    var q5 = vec4<f32>(0.0);
    var p6 = vec4<f32>(0.0);
    var q6 = vec4<f32>(0.0);
    var p7 = vec4<f32>(0.0);
    var q7 = vec4<f32>(0.0);
    for (var kk = 0u; kk < M.k; kk++) {
        let b0 = vec4<f32>(ld_b(kk, c), ld_b(kk, c + 1u), ld_b(kk, c + 2u), ld_b(kk, c + 3u));
        let b1 = vec4<f32>(ld_b(kk, c + 4u), ld_b(kk, c + 5u), ld_b(kk, c + 6u), ld_b(kk, c + 7u));
        var a = ld_a(r, kk);
        p0 += a * b0;
        q0 += a * b1;
        a = ld_a(r + 1u, kk);
        p1 += a * b0;
        q1 += a * b1;
        a = ld_a(r + 2u, kk);
        p2 += a * b0;
        q2 += a * b1;
        a = ld_a(r + 3u, kk);
        p3 += a * b0;
        q3 += a * b1;
        a = ld_a(r + 4u, kk);
        p4 += a * b0;
        q4 += a * b1;
        a = ld_a(r + 5u, kk);
        p5 += a * b0;
        q5 += a * b1;
        a = ld_a(r + 6u, kk);
        p6 += a * b0;
        q6 += a * b1;
        a = ld_a(r + 7u, kk);
        p7 += a * b0;
        q7 += a * b1;
    }
    for (var q = 0u; q < 4u; q++) {
        store_c(r, c + q, p0[q]);
        store_c(r, c + 4u + q, q0[q]);
        store_c(r + 1u, c + q, p1[q]);
        store_c(r + 1u, c + 4u + q, q1[q]);
        store_c(r + 2u, c + q, p2[q]);
        store_c(r + 2u, c + 4u + q, q2[q]);
        store_c(r + 3u, c + q, p3[q]);
        store_c(r + 3u, c + 4u + q, q3[q]);
        store_c(r + 4u, c + q, p4[q]);
        store_c(r + 4u, c + 4u + q, q4[q]);
        store_c(r + 5u, c + q, p5[q]);
        store_c(r + 5u, c + 4u + q, q5[q]);
        store_c(r + 6u, c + q, p6[q]);
        store_c(r + 6u, c + 4u + q, q6[q]);
        store_c(r + 7u, c + q, p7[q]);
        store_c(r + 7u, c + 4u + q, q7[q]);
    }
}

// ---- thin products and long reductions ---------------------------------------
// Both 64 x 64 products compute whole blocks, so an output of one column
// (a decoder that draws one pixel per row, the dx of a one-input layer)
// does 64x its work; and a weight gradient X^T dZ over many rows with few
// outputs runs in one workgroup, serially. Found on Phi-DVAE's level
// decoder run as an MLP over its 81920 pixel rows (1 -> 32 -> 1), which is
// now a fused kernel of its own (infer/dvae.wgsl); these serve any MLP
// with a narrow output or a long batch.

// C = act(A B + b) for n <= 4 columns: one invocation per row, the same
// epilogue as the blocked product. Dispatch (ceil(m / 256), 1, 1).
@compute @workgroup_size(256)
fn matmul_thin(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= M.m) {
        return;
    }
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    let nc = min(M.n, 4u);
    for (var kk = 0u; kk < M.k; kk++) {
        let a = xa[M.a_off + r * M.a_rs + kk * M.a_cs];
        for (var c = 0u; c < nc; c++) {
            acc[c] += a * xb[M.b_off + kk * M.b_rs + c * M.b_cs];
        }
    }
    for (var c = 0u; c < nc; c++) {
        store_c(r, c, acc[c]);
    }
}

// One layer's parameter gradients over a chunk of rows: entry e of chunk z
// (z = workgroup y) is sum over rows r in [z slot, (z + 1) slot) of
// X[r][e / n] dZ[r][e % n] for e < m n (dW, m inputs, n outputs), and of
// dZ[r][e - m n] after (db). X from xa (a_off, row stride a_rs), dZ from xb
// (b_off, row stride b_rs), k rows in all; into xc[z (m n + n) + e].
// Dispatch (ceil((m n + n) / 256), chunks, 1); grad_sum adds the chunks.
@compute @workgroup_size(256)
fn grad_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let per = M.m * M.n + M.n;
    let e = gid.x;
    let z = gid.y;
    if (e >= per) {
        return;
    }
    let r0 = z * M.slot;
    let r1 = min(M.k, r0 + M.slot);
    var acc = 0.0;
    if (e < M.m * M.n) {
        let i = e / M.n;
        let j = e % M.n;
        for (var r = r0; r < r1; r++) {
            acc += xa[M.a_off + r * M.a_rs + i] * xb[M.b_off + r * M.b_rs + j];
        }
    } else {
        let j = e - M.m * M.n;
        for (var r = r0; r < r1; r++) {
            acc += xb[M.b_off + r * M.b_rs + j];
        }
    }
    xc[z * per + e] = acc;
}

// xc[c_off + e] = sum over chunks z < k of xa[z m + e], chunks in order,
// for e < m. Dispatch (ceil(m / 256), 1, 1).
@compute @workgroup_size(256)
fn grad_sum(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = gid.x;
    if (e >= M.m) {
        return;
    }
    var acc = 0.0;
    for (var z = 0u; z < M.k; z++) {
        acc += xa[z * M.m + e];
    }
    xc[M.c_off + e] = acc;
}

// ---- elementwise and reductions ----------------------------------------------

// xc[c_off + r c_rs + j] *= act'(xa[a_off + r a_rs + j]) for r < m, j < n:
// the upstream gradient times the activation's derivative at the
// pre-activation. Dispatch (ceil(m n / 256), 1, 1).
@compute @workgroup_size(256)
fn act_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = gid.x;
    if (e >= M.m * M.n) {
        return;
    }
    let r = e / M.n;
    let j = e % M.n;
    let o = M.c_off + r * M.c_rs + j;
    xc[o] *= act_df(M.act, xa[M.a_off + r * M.a_rs + j]);
}

// xc[c_off + j] = sum_r xa[a_off + r a_rs + j], rows in order (the bias
// gradient). Dispatch (ceil(n / 256), 1, 1).
@compute @workgroup_size(256)
fn bias_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (j >= M.n) {
        return;
    }
    var acc = 0.0;
    for (var r = 0u; r < M.m; r++) {
        acc += xa[M.a_off + r * M.a_rs + j];
    }
    xc[M.c_off + j] = acc;
}

// Loss buffer xz: [0, 16) scalar slots, then one partial loss per row.
const LOSS_ROWS: u32 = 16u;
// Offset of the skipped-row count from a loss slot (src/nn/mlp.rs `slot::SKIPPED`).
const SKIPPED: u32 = 8u;

// Mean squared error over m rows x n outputs: outputs xa (row stride a_rs),
// targets xb (row stride b_rs); gradient 2 (y - t) scale into xc (row
// stride c_rs), row sums of squares into xz. scale = 1 / (m n).
// Dispatch (ceil(m / 256), 1, 1).
@compute @workgroup_size(256)
fn loss_mse(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= M.m) {
        return;
    }
    var acc = 0.0;
    for (var j = 0u; j < M.n; j++) {
        let d = xa[M.a_off + r * M.a_rs + j] - xb[M.b_off + r * M.b_rs + j];
        acc += d * d;
        xc[M.c_off + r * M.c_rs + j] = 2.0 * d * M.scale;
    }
    xz[LOSS_ROWS + r] = acc;
}

// Bernoulli negative log-likelihood of a binary phase with logits: row r
// of xa holds n logits l, row r of xb the targets t in [-1, 1] (the phase;
// p = (t + 1) / 2 the probability of +1). Row loss sum_j softplus(l) - p l,
// written in the overflow-free form max(l, 0) - p l + log(1 + exp(-|l|));
// gradient (sigmoid(l) - p) scale into xc. Dispatch (ceil(m / 256), 1, 1).
@compute @workgroup_size(256)
fn loss_bce(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= M.m) {
        return;
    }
    var acc = 0.0;
    for (var j = 0u; j < M.n; j++) {
        let l = xa[M.a_off + r * M.a_rs + j];
        let p = 0.5 * (xb[M.b_off + r * M.b_rs + j] + 1.0);
        acc += max(l, 0.0) - p * l + log(1.0 + exp(-abs(l)));
        xc[M.c_off + r * M.c_rs + j] = (sigmoid(l) - p) * M.scale;
    }
    xz[LOSS_ROWS + r] = acc;
}

// Gaussian negative log-likelihood with a predicted log-variance: row r of
// xa holds n means then n log-variances; targets xb (n per row).
// Row loss 0.5 sum_j (lv + (t - mu)^2 exp(-lv) + log 2 pi); gradients (times
// scale = 1 / m) into xc (2n per row). Dispatch (ceil(m / 256), 1, 1).
@compute @workgroup_size(256)
fn loss_gauss_nll(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= M.m) {
        return;
    }
    let n = M.n;
    var acc = 0.0;
    for (var j = 0u; j < n; j++) {
        let ya = M.a_off + r * M.a_rs;
        let mu = xa[ya + j];
        let lv = xa[ya + n + j];
        let d = xb[M.b_off + r * M.b_rs + j] - mu;
        let w = exp(-lv);
        acc += lv + d * d * w + 1.8378770664093453;
        let yc = M.c_off + r * M.c_rs;
        xc[yc + j] = -d * w * M.scale;
        xc[yc + n + j] = 0.5 * (1.0 - d * d * w) * M.scale;
    }
    xz[LOSS_ROWS + r] = 0.5 * acc;
}

// Neural posterior estimation: row r of xa is the parameter vector theta of
// a Gaussian q over R^d in the layout of the VI families (infer/vi.wgsl):
//   mean-field  [m (d), t (d)], sd exp(t_i);
//   full-rank   [m (d), Lraw (d x d row-major)], L_ij = Lraw_ij (j < i),
//               L_ii = exp(Lraw_ii), entries j > i ignored (gradient 0);
//   low-rank    [m (d), W (d x k row-major), t (d)], Sigma = W W^T + diag(exp(2 t)).
// Row loss -log q(x) = 0.5 (x - m)^T Sigma^-1 (x - m) + 0.5 log det Sigma
// + 0.5 d log 2 pi for the target row x of xb (unscaled, into
// xz[LOSS_ROWS + r]); its gradient with respect to theta, times scale, into
// xc (the whole row of np parameters). Fields: m rows, n = d, k = rank
// (low-rank), act = family code (infer::vi::family_code), a_off / a_rs the
// theta rows, b_off / b_rs the targets, c_off / c_rs the gradient rows,
// scale = 1 / batch. A non-positive Cholesky pivot, a non-finite loss, or
// d > NPE_MAX_D, k > NPE_MAX_R give a NaN row loss (the host stops on it)
// and a zero gradient row. Dispatch (ceil(m / 64), 1, 1).
const NPE_MAX_D: u32 = 256u;
const NPE_MAX_R: u32 = 16u;
const NPE_MAX_R2: u32 = 256u; // NPE_MAX_R^2
const NPE_MEAN_FIELD: u32 = 0u;
const NPE_FULL_RANK: u32 = 1u;
const NPE_LOW_RANK: u32 = 2u;
const LN_2PI: f32 = 1.8378770664093453;

fn npe_finite(v: f32) -> bool {
    // Exponent bits all set: inf or NaN (a bit test survives fast-math).
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

fn npe_nan() -> f32 {
    return bitcast<f32>(0x7fc00000u);
}

// Mean-field: e_i = (x_i - m_i) / s_i; f = 0.5 e.e + sum t_i;
// df/dm_i = -e_i / s_i, df/dt_i = 1 - e_i^2.
// The gradient of the loss into xc: overwritten, or added to what is there
// when M.flags & 1 (another term, e.g. the physics ELBO of UQ-VAE training,
// wrote its part first).
fn npe_put(o: u32, v: f32) {
    if ((M.flags & 1u) != 0u) {
        xc[o] += v;
    } else {
        xc[o] = v;
    }
}

fn npe_mean_field(ra: u32, rb: u32, rc: u32) -> f32 {
    let d = M.n;
    var f = 0.0;
    for (var i = 0u; i < d; i++) {
        let t = xa[ra + d + i];
        let w = exp(-t);
        let e = (xb[rb + i] - xa[ra + i]) * w;
        f += 0.5 * e * e + t;
        npe_put(rc + i, -e * w * M.scale);
        npe_put(rc + d + i, (1.0 - e * e) * M.scale);
    }
    return f;
}

// Full-rank: e = L^-1 (x - m), v = L^-T e; f = 0.5 e.e + sum Lraw_ii;
// df/dm = -v, df/dLraw_ij = -v_i e_j (j < i), 1 - L_ii v_i e_i (j = i).
fn npe_full_rank(ra: u32, rb: u32, rc: u32) -> f32 {
    let d = M.n;
    let tl = ra + d;
    var e: array<f32, NPE_MAX_D>;
    var v: array<f32, NPE_MAX_D>;
    var f = 0.0;
    for (var i = 0u; i < d; i++) {
        var acc = xb[rb + i] - xa[ra + i];
        for (var j = 0u; j < i; j++) {
            acc -= xa[tl + i * d + j] * e[j];
        }
        let lraw = xa[tl + i * d + i];
        let ei = acc * exp(-lraw);
        e[i] = ei;
        f += 0.5 * ei * ei + lraw;
    }
    for (var ii = 0u; ii < d; ii++) {
        let i = d - 1u - ii;
        var acc = e[i];
        for (var j = i + 1u; j < d; j++) {
            acc -= xa[tl + j * d + i] * v[j];
        }
        v[i] = acc * exp(-xa[tl + i * d + i]);
    }
    let s = M.scale;
    for (var i = 0u; i < d; i++) {
        let vi = v[i];
        npe_put(rc + i, -vi * s);
        let o = rc + d + i * d;
        for (var j = 0u; j < i; j++) {
            npe_put(o + j, -vi * e[j] * s);
        }
        npe_put(o + i, (1.0 - exp(xa[tl + i * d + i]) * vi * e[i]) * s);
        for (var j = i + 1u; j < d; j++) {
            npe_put(o + j, 0.0);
        }
    }
    return f;
}

// y = C^-1 y in place for C = K K^T, K lower (k x k, row-major) in kc.
fn npe_chol_solve(kc: ptr<function, array<f32, NPE_MAX_R2>>, k: u32, y: ptr<function, array<f32, NPE_MAX_R>>) {
    for (var i = 0u; i < k; i++) {
        var acc = (*y)[i];
        for (var j = 0u; j < i; j++) {
            acc -= (*kc)[i * k + j] * (*y)[j];
        }
        (*y)[i] = acc / (*kc)[i * k + i];
    }
    for (var ii = 0u; ii < k; ii++) {
        let i = k - 1u - ii;
        var acc = (*y)[i];
        for (var j = i + 1u; j < k; j++) {
            acc -= (*kc)[j * k + i] * (*y)[j];
        }
        (*y)[i] = acc / (*kc)[i * k + i];
    }
}

// Low-rank plus diagonal, by Woodbury on the k x k capacitance
// C = I + W^T D^-1 W (D = diag(exp(2 t))), C = K K^T:
// a = Sigma^-1 (x - m) = D^-1 res - D^-1 W C^-1 W^T D^-1 res,
// log det Sigma = log det C + 2 sum t; with g_i = C^-1 w_i and b = W^T a:
// df/dm = -a, df/dW_ia = g_ia / D_i - a_i b_a,
// df/dt_i = 1 - w_i.g_i / D_i - D_i a_i^2.
fn npe_low_rank(ra: u32, rb: u32, rc: u32) -> f32 {
    let d = M.n;
    let k = M.k;
    let tw = ra + d;
    let tt = ra + d + d * k;
    var kc: array<f32, NPE_MAX_R2>;
    var u: array<f32, NPE_MAX_R>;
    var b: array<f32, NPE_MAX_R>;
    var g: array<f32, NPE_MAX_R>;
    var av: array<f32, NPE_MAX_D>;
    for (var a = 0u; a < k; a++) {
        kc[a * k + a] = 1.0;
    }
    var sum_t = 0.0;
    for (var i = 0u; i < d; i++) {
        let t = xa[tt + i];
        sum_t += t;
        let dinv = exp(-2.0 * t);
        let y = dinv * (xb[rb + i] - xa[ra + i]);
        av[i] = y;
        for (var a = 0u; a < k; a++) {
            let wa = xa[tw + i * k + a];
            u[a] += wa * y;
            let dw = dinv * wa;
            for (var c = 0u; c <= a; c++) {
                kc[a * k + c] += dw * xa[tw + i * k + c];
            }
        }
    }
    // Cholesky in place (lower triangle).
    var ldc = 0.0;
    for (var j = 0u; j < k; j++) {
        var dj = kc[j * k + j];
        for (var p = 0u; p < j; p++) {
            dj -= kc[j * k + p] * kc[j * k + p];
        }
        if (!npe_finite(dj)) {
            return npe_nan();
        }
        // Every pivot of C = I + PSD is >= 1 in exact arithmetic: the floor
        // undoes f32 cancellation when D is tiny (training would stop on NaN).
        let rj = sqrt(max(dj, 1.0));
        kc[j * k + j] = rj;
        ldc += 2.0 * log(rj);
        for (var i = j + 1u; i < k; i++) {
            var acc = kc[i * k + j];
            for (var p = 0u; p < j; p++) {
                acc -= kc[i * k + p] * kc[j * k + p];
            }
            kc[i * k + j] = acc / rj;
        }
    }
    npe_chol_solve(&kc, k, &u);
    // a = y - D^-1 W z (z = C^-1 W^T y, in u); b = W^T a; quad = res.a.
    var quad = 0.0;
    for (var i = 0u; i < d; i++) {
        var wz = 0.0;
        for (var a = 0u; a < k; a++) {
            wz += xa[tw + i * k + a] * u[a];
        }
        let ai = av[i] - exp(-2.0 * xa[tt + i]) * wz;
        av[i] = ai;
        quad += (xb[rb + i] - xa[ra + i]) * ai;
        for (var a = 0u; a < k; a++) {
            b[a] += xa[tw + i * k + a] * ai;
        }
    }
    let s = M.scale;
    for (var i = 0u; i < d; i++) {
        let t = xa[tt + i];
        let dinv = exp(-2.0 * t);
        let ai = av[i];
        for (var a = 0u; a < k; a++) {
            g[a] = xa[tw + i * k + a];
        }
        npe_chol_solve(&kc, k, &g);
        var wg = 0.0;
        for (var a = 0u; a < k; a++) {
            wg += xa[tw + i * k + a] * g[a];
            npe_put(rc + d + i * k + a, (dinv * g[a] - ai * b[a]) * s);
        }
        npe_put(rc + i, -ai * s);
        npe_put(rc + d + d * k + i, (1.0 - dinv * wg - exp(2.0 * t) * ai * ai) * s);
    }
    return 0.5 * quad + 0.5 * ldc + sum_t;
}

@compute @workgroup_size(64)
fn loss_npe(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= M.m) {
        return;
    }
    let d = M.n;
    let ra = M.a_off + r * M.a_rs;
    let rb = M.b_off + r * M.b_rs;
    let rc = M.c_off + r * M.c_rs;
    // Parameters per row (0 for an unknown family: nothing is written).
    var np = 0u;
    var f = npe_nan();
    let fits = d <= NPE_MAX_D;
    if (M.act == NPE_MEAN_FIELD) {
        np = 2u * d;
        if (fits) {
            f = npe_mean_field(ra, rb, rc);
        }
    } else if (M.act == NPE_FULL_RANK) {
        np = d + d * d;
        if (fits) {
            f = npe_full_rank(ra, rb, rc);
        }
    } else if (M.act == NPE_LOW_RANK) {
        np = 2u * d + d * M.k;
        if (fits && M.k <= NPE_MAX_R) {
            f = npe_low_rank(ra, rb, rc);
        }
    }
    if (npe_finite(f)) {
        xz[LOSS_ROWS + r] = f + 0.5 * f32(d) * LN_2PI;
    } else {
        xz[LOSS_ROWS + r] = npe_nan();
        for (var j = 0u; j < np; j++) {
            xc[rc + j] = 0.0;
        }
    }
}

// xz[slot] = scale * sum of the m row losses, in row order (added to
// xz[slot] when flags & 1, to average over an epoch on the device).
// Dispatch (1, 1, 1).
@compute @workgroup_size(1)
fn loss_reduce() {
    // Non-finite row losses (a row the NPE kernel could not evaluate in
    // f32; its gradient row is zero) are left out and counted in
    // xz[slot + SKIPPED]; the host stops when they are more than a few.
    var acc = 0.0;
    var bad = 0.0;
    for (var r = 0u; r < M.m; r++) {
        let v = xz[LOSS_ROWS + r];
        if (npe_finite(v)) {
            acc += v;
        } else {
            bad += 1.0;
        }
    }
    if ((M.flags & 1u) != 0u) {
        xz[M.slot] += acc * M.scale;
        xz[M.slot + SKIPPED] += bad;
    } else {
        xz[M.slot] = acc * M.scale;
        xz[M.slot + SKIPPED] = bad;
    }
}

// Minibatch gather: row r of xc (n columns) = row idx[k + r] of xa.
// Dispatch (ceil(m n / 256), 1, 1).
@compute @workgroup_size(256)
fn gather_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = gid.x;
    if (e >= M.m * M.n) {
        return;
    }
    let r = e / M.n;
    let j = e % M.n;
    xc[M.c_off + r * M.n + j] = xa[idx[M.k + r] * M.n + j];
}

// FMA-bound probe: 8 independent vec4 chains of k steps per invocation
// (64 flops a step), in the same `acc += a * b` form as the product above.
// Writes one value per invocation so nothing is optimised away.
// Dispatch (m, 1, 1).
@compute @workgroup_size(256)
fn fma_peak(@builtin(global_invocation_id) gid: vec3<u32>) {
    let x = f32(gid.x) * 1e-9;
    let a = vec4<f32>(0.999, 0.998, 0.997, 0.996) + x;
    let b = vec4<f32>(1e-3, 2e-3, 3e-3, 4e-3);
    var s0 = vec4<f32>(x);
    var s1 = vec4<f32>(x + 1.0);
    var s2 = vec4<f32>(x + 2.0);
    var s3 = vec4<f32>(x + 3.0);
    var s4 = vec4<f32>(x + 4.0);
    var s5 = vec4<f32>(x + 5.0);
    var s6 = vec4<f32>(x + 6.0);
    var s7 = vec4<f32>(x + 7.0);
    for (var i = 0u; i < M.k; i++) {
        s0 = s0 * a + b;
        s1 = s1 * a + b;
        s2 = s2 * a + b;
        s3 = s3 * a + b;
        s4 = s4 * a + b;
        s5 = s5 * a + b;
        s6 = s6 * a + b;
        s7 = s7 * a + b;
    }
    let s = s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;
    xc[gid.x] = s.x + s.y + s.z + s.w;
}
