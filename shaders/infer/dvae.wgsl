// Phi-DVAE (methods.md A5) on advdiff1d: the draws of one training step,
// the frames' reconstruction term, and the assembly of every gradient that
// is not an MLP's. One step, in one command encoder:
//   encoder forward (frame columns -> mu_t) -> dvae_sample (x = mu +
//   sigma_q eps, zeta = m + L eps) -> decoder forward (x -> frame columns)
//   -> dvae_recon -> decoder backward (d/dx) -> kalman_loglik ->
//   dvae_assemble (d/dmu, d/dtheta) -> encoder backward -> Adam x 3.
// The loss is F = -ELBO / (T n),
//   ELBO = E_q[log p(Y | x)] + E_q[log p(x | zeta)] + H[q(x | Y)] - KL(q(zeta) || N(0, I)).
// Mirrors in src/cpu/dvae.rs, same names and argument order.

const DWG: u32 = 256u;

@group(0) @binding(0) var<storage, read> dp: DvaeParams;
@group(0) @binding(1) var<storage, read> theta: array<f32>;

// Lower-triangular factor of q(zeta): (L11, L21, L22).
fn chol() -> vec3<f32> {
    return vec3<f32>(exp(theta[TH_R1]), theta[TH_L21], exp(theta[TH_R2]));
}

// Bindings (numbers unique in the module): 2 mu (T n, the encoder's
// output), 3 xs (Sx T n), 5 zs (S x 2), 7 dec_out (Sx T n x H), 8 frames
// (T n x H: frame t's column i at row t n + i), 9 dec_delta (Sx T n x H),
// 10 rowsq (Sx T n), 11 kout (S x 4, from kalman_loglik), 12 gxk (S x T n),
// 13 dxdec (Sx T n, the decoder's input gradient), 14 mugrad (T n, the
// encoder's output gradient), 15 tout (TH_LEN gradients of theta, then
// the ELBO's terms, see dvae_assemble); the level decoder's: 16 dec_p
// (its parameters), 17 ldx (Sx T n, dF/dx from the frames' term), 18
// gpart (its parameter gradients per invocation), 19 dgrad (their sum).
@group(0) @binding(2) var<storage, read> mu: array<f32>;
@group(0) @binding(3) var<storage, read_write> xs: array<f32>;
@group(0) @binding(5) var<storage, read_write> zs: array<f32>;
@group(0) @binding(7) var<storage, read> dec_out: array<f32>;
@group(0) @binding(8) var<storage, read> frames: array<f32>;
@group(0) @binding(9) var<storage, read_write> dec_delta: array<f32>;
@group(0) @binding(10) var<storage, read_write> rowsq: array<f32>;
@group(0) @binding(11) var<storage, read> kout: array<f32>;
@group(0) @binding(12) var<storage, read> gxk: array<f32>;
@group(0) @binding(13) var<storage, read> dxdec: array<f32>;
@group(0) @binding(14) var<storage, read_write> mugrad: array<f32>;
@group(0) @binding(15) var<storage, read_write> tout: array<f32>;
@group(0) @binding(16) var<storage, read> dec_p: array<f32>;
@group(0) @binding(17) var<storage, read_write> ldx: array<f32>;
@group(0) @binding(18) var<storage, read_write> gpart: array<f32>;
@group(0) @binding(19) var<storage, read_write> dgrad: array<f32>;

// The standard normal behind entry i of x's draws (recomputed where
// needed instead of stored: counter-based, so it costs no buffer).
fn eps_x(i: u32) -> f32 {
    return normal4(vec2<u32>(dp.seed_lo, dp.seed_hi), dp.stream, dp.step, i / 4u)[i % 4u];
}

// The two standard normals behind draw s of zeta.
fn eps_z(s: u32) -> vec2<f32> {
    return normal4(vec2<u32>(dp.seed_lo, dp.seed_hi), dp.stream + 1u, dp.step, s).xy;
}

// x = mu + sigma_q eps (Sx draws; none in oracle mode, where xs is given)
// and zeta = m + L eps (S draws). One invocation per x entry and per draw.
@compute @workgroup_size(256)
fn dvae_sample(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let tn = dp.t * dp.n;
    if (dp.oracle == 0u && i < dp.x_samples * tn) {
        xs[i] = mu[i % tn] + exp(0.5 * theta[TH_SQ]) * eps_x(i);
    }
    if (i < dp.samples) {
        let e = eps_z(i);
        let l = chol();
        zs[2u * i] = theta[TH_M1] + l.x * e.x;
        zs[2u * i + 1u] = theta[TH_M2] + l.y * e.x + l.z * e.y;
    }
}

// The frames' Gaussian log-likelihood under the decoder: per column row
// (draw j, frame t, node i) the squared error over its H pixels, and the
// decoder's output gradient dF/dout = gamma (out - y) / (Sx sigma_y^2 T n).
@compute @workgroup_size(256)
fn dvae_recon(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    let tn = dp.t * dp.n;
    if (row >= dp.x_samples * tn) {
        return;
    }
    let r = row % tn;
    let scale = dp.gamma * dp.inv_norm / (f32(dp.x_samples) * exp(theta[TH_SY]));
    var acc = 0.0;
    for (var p = 0u; p < dp.height; p++) {
        let d = dec_out[row * dp.height + p] - frames[r * dp.height + p];
        dec_delta[row * dp.height + p] = scale * d;
        acc += d * d;
    }
    rowsq[row] = acc;
}

// ---- the level decoder ------------------------------------------------------
// Pixel (r, i) of frame t drawn from its level relative to the code,
// f(v_r - x_{t,i}), with f(s) = b2 + sum_j w2_j tanh(w1_j s + b1_j) (an
// MLP 1 -> J -> 1, parameters in dec_p as src/nn/mlp.rs lays them out:
// w1 [J], b1 [J], w2 [J], b2). Fused with the frames' term: run as an MLP
// over the T n H pixel rows, a step took 151 ms on lavapipe at the spec's
// size (the MLP's activations go through memory, and each load costs a
// scalar load per lane); fused, 40 ms. One invocation per LEVEL_ROWS
// column rows keeps the weights and the gradient sums in private arrays.
const LEVEL_ROWS: u32 = 4u;
const LEVEL_MAX: u32 = 32u;

fn tanh_l(z: f32) -> f32 {
    let e = exp(-2.0 * abs(z));
    return sign(z) * (1.0 - e) / (1.0 + e);
}

// Per column row (draw j, frame t, node i): rowsq = the squared error over
// its H pixels and ldx = dF/dx (dF/dout = gamma (out - y) / (Sx sigma_y^2
// T n), as dvae_recon); gpart[g (3J + 1)..] = invocation g's sums of
// dF/d(dec_p). Dispatch (ceil(Sx T n / LEVEL_ROWS), 1, 1).
@compute @workgroup_size(64)
fn dvae_level(@builtin(global_invocation_id) gid: vec3<u32>) {
    let g = gid.x;
    let tn = dp.t * dp.n;
    let rows = dp.x_samples * tn;
    let first = g * LEVEL_ROWS;
    if (first >= rows) {
        return;
    }
    let nh = min(dp.level_hidden, LEVEL_MAX);
    var w1: array<f32, LEVEL_MAX>;
    var b1: array<f32, LEVEL_MAX>;
    var w2: array<f32, LEVEL_MAX>;
    var h: array<f32, LEVEL_MAX>;
    var gw1: array<f32, LEVEL_MAX>;
    var gb1: array<f32, LEVEL_MAX>;
    var gw2: array<f32, LEVEL_MAX>;
    for (var j = 0u; j < nh; j++) {
        w1[j] = dec_p[j];
        b1[j] = dec_p[nh + j];
        w2[j] = dec_p[2u * nh + j];
        gw1[j] = 0.0;
        gb1[j] = 0.0;
        gw2[j] = 0.0;
    }
    let b2 = dec_p[3u * nh];
    var gb2 = 0.0;
    let scale = dp.gamma * dp.inv_norm / (f32(dp.x_samples) * exp(theta[TH_SY]));
    for (var row = first; row < min(first + LEVEL_ROWS, rows); row++) {
        let x = xs[row];
        let r = row % tn;
        var acc = 0.0;
        var dx = 0.0;
        for (var p = 0u; p < dp.height; p++) {
            let s = dp.level0 + f32(p) * dp.dlevel - x;
            var out = b2;
            for (var j = 0u; j < nh; j++) {
                h[j] = tanh_l(w1[j] * s + b1[j]);
                out += w2[j] * h[j];
            }
            let d = out - frames[r * dp.height + p];
            acc += d * d;
            let gd = scale * d;
            gb2 += gd;
            var ds = 0.0;
            for (var j = 0u; j < nh; j++) {
                gw2[j] += gd * h[j];
                let dz = gd * w2[j] * (1.0 - h[j] * h[j]);
                gb1[j] += dz;
                gw1[j] += dz * s;
                ds += dz * w1[j];
            }
            // ds/dx = -1.
            dx -= ds;
        }
        rowsq[row] = acc;
        ldx[row] = dx;
    }
    let o = g * (3u * nh + 1u);
    for (var j = 0u; j < nh; j++) {
        gpart[o + j] = gw1[j];
        gpart[o + nh + j] = gb1[j];
        gpart[o + 2u * nh + j] = gw2[j];
    }
    gpart[o + 3u * nh] = gb2;
}

// dgrad[e] = sum over dvae_level's invocations of their gpart entry e, in
// order. Dispatch (3J + 1, 1, 1).
@compute @workgroup_size(64)
fn dvae_level_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = gid.x;
    let nh = min(dp.level_hidden, LEVEL_MAX);
    let np = 3u * nh + 1u;
    if (e >= np) {
        return;
    }
    let groups = (dp.x_samples * dp.t * dp.n + LEVEL_ROWS - 1u) / LEVEL_ROWS;
    var acc = 0.0;
    for (var g = 0u; g < groups; g++) {
        acc += gpart[g * np + e];
    }
    dgrad[e] = acc;
}

var<workgroup> dred: array<vec2<f32>, DWG>;

// Every gradient that is not an MLP's, in one workgroup:
//   mugrad = dF/dmu (sum over the draws of x of the decoder's and the
//            Kalman term's dF/dx),
//   tout[0..8) = dF/dtheta (zeros for what is not learned),
//   tout[8..16) = (E log p(Y | x), E log p(x | zeta), H[q(x | Y)],
//                  KL(q(zeta) || N(0, I)), ELBO, sigma_x, sigma_q, sigma_y).
@compute @workgroup_size(256)
fn dvae_assemble(@builtin(local_invocation_index) lid: u32) {
    let tn = dp.t * dp.n;
    let ns = dp.samples;
    let nx = dp.x_samples;
    let w = dp.beta * dp.inv_norm / f32(ns);
    var part = vec2<f32>(0.0);
    if (dp.oracle == 0u) {
        for (var r = lid; r < tn; r += DWG) {
            var gmu = 0.0;
            for (var j = 0u; j < nx; j++) {
                var g = dxdec[j * tn + r];
                for (var s = j; s < ns; s += nx) {
                    g -= w * gxk[s * tn + r];
                }
                gmu += g;
                part.x += g * eps_x(j * tn + r);
                part.y += rowsq[j * tn + r];
            }
            mugrad[r] = gmu;
        }
    }
    dred[lid] = part;
    workgroupBarrier();
    for (var half = DWG / 2u; half > 0u; half = half / 2u) {
        if (lid < half) {
            dred[lid] += dred[lid + half];
        }
        workgroupBarrier();
    }
    if (lid != 0u) {
        return;
    }
    let qacc = dred[0].x;
    let sq = dred[0].y;
    var ll = 0.0;
    var gm = vec2<f32>(0.0);
    var gl = vec3<f32>(0.0);
    var gsx = 0.0;
    for (var s = 0u; s < ns; s++) {
        let e = eps_z(s);
        let g = vec2<f32>(kout[4u * s + 1u], kout[4u * s + 2u]);
        ll += kout[4u * s];
        gm += g;
        gl += vec3<f32>(g.x * e.x, g.y * e.x, g.y * e.y);
        gsx += kout[4u * s + 3u];
    }
    let l = chol();
    let m = vec2<f32>(theta[TH_M1], theta[TH_M2]);
    let nn = dp.inv_norm;
    // q(zeta) is held while the networks warm up (learn bit 8 off).
    let lz = select(0.0, 1.0, (dp.learn & 8u) != 0u);
    tout[TH_M1] = lz * (-w * gm.x + nn * m.x);
    tout[TH_M2] = lz * (-w * gm.y + nn * m.y);
    tout[TH_R1] = lz * (-w * gl.x * l.x + nn * (l.x * l.x - 1.0));
    tout[TH_L21] = lz * (-w * gl.y + nn * l.y);
    tout[TH_R2] = lz * (-w * gl.z * l.z + nn * (l.z * l.z - 1.0));
    tout[TH_SX] = select(0.0, -w * gsx, (dp.learn & 1u) != 0u);
    let sq_sd = exp(0.5 * theta[TH_SQ]);
    let sy2 = exp(theta[TH_SY]);
    let learn_q = dp.oracle == 0u && (dp.learn & 4u) != 0u;
    let learn_y = dp.oracle == 0u && (dp.learn & 2u) != 0u;
    // H[q(x | Y)] = T n / 2 (log(2 pi sigma_q^2) + 1): dF/dlog sigma_q^2 gets -1/2.
    tout[TH_SQ] = select(0.0, 0.5 * sq_sd * qacc - 0.5 * f32(tn) * nn, learn_q);
    let pixels = f32(tn * dp.height);
    tout[TH_SY] = select(0.0, -dp.gamma * (nn / f32(nx)) * (0.5 * sq / sy2 - 0.5 * f32(nx) * pixels), learn_y);
    var recon = 0.0;
    var ent = 0.0;
    if (dp.oracle == 0u) {
        recon = -0.5 * sq / (f32(nx) * sy2) - 0.5 * pixels * (LOG_2PI_D + theta[TH_SY]);
        ent = 0.5 * f32(tn) * (LOG_2PI_D + theta[TH_SQ] + 1.0);
    }
    let kl = 0.5 * (dot(l, l) + dot(m, m) - 2.0) - (theta[TH_R1] + theta[TH_R2]);
    // The ELBO's terms are reported unweighted.
    let kal = ll / f32(ns);
    tout[TH_LEN] = recon;
    tout[TH_LEN + 1u] = kal;
    tout[TH_LEN + 2u] = ent;
    tout[TH_LEN + 3u] = kl;
    tout[TH_LEN + 4u] = recon + kal + ent - kl;
    tout[TH_LEN + 5u] = exp(0.5 * theta[TH_SX]);
    tout[TH_LEN + 6u] = sq_sd;
    tout[TH_LEN + 7u] = sqrt(sy2);
}

const LOG_2PI_D: f32 = 1.8378770664093453;
