// Residual-based (virtual-observable) loss of the data-free probabilistic
// solver q(u | xi) = N(mu, diag(s^2)) for darcy2d (methods.md B6),
// assembled after common/op_q1: the negative ELBO of one minibatch row,
//   E_q[-log p(r_hat = 0 | u, z)] - H[q] (+ constants),
// and its gradient with respect to the network's head outputs.
//
// The network's head row is [mean outputs (nunk) | log-variance outputs (nunk)]:
//   mu = u_scale * mean output, log s^2 = log-variance output + lv0.
// Two forms of the residual likelihood:
//   form 0 (energy / Ritz): -log p = (E(u) - E*)/sigma_r^2, E(u) = u^T A u / 2 - b^T u,
//     i.e. N(0; r, sigma_r^2 A) (the residual weighted by A^{-1});
//     E_q = (E(mu) + sum A_kk s_k^2 / 2) / sigma_r^2.
//   form 1 (raw nodal residual): -log p = |A u - b|^2 / (2 sigma_r^2);
//     E_q = (|A mu - b|^2 + sum (A^2)_kk s_k^2) / (2 sigma_r^2).
// `sampled` = 0 uses these expectations (exact for a Gaussian q), 1 one
// reparameterised draw u = mu + s eps per row and step.
//
// Bindings: 0 params (n, nunk, ncoef, batch, inv_h), 1 R, 2 coef (kappa,
// B x ncoef), 3 head (B x 2 nunk), 4 work (planes of B x nunk: u or mu,
// r, eps, the draw / in_scale, then four scratch planes for the spectral
// kernel), 5 grad (B x 2 nunk), 6 losses (the MLP's loss buffer: one row
// loss at LOSS_ROWS + b), 7 dst (the (n-1) x (n-1) orthonormal sine
// matrix), 8 dscale (nunk spectral weights), 9 shape (nunk: the kappa = 1
// solution; with log_mean the nodal mean is shape exp(output), so a change
// of the field's overall level is a shift of the outputs).

struct ResidualParams {
    sigma_inv2: f32, // 1 / sigma_r^2
    u_scale: f32,    // mu = u_scale * mean output
    lv0: f32,        // log s^2 = log-variance output + lv0
    grad_scale: f32, // factor on the gradient (1 / rows: the minibatch mean)
    form: u32,       // 0 energy, 1 raw
    sampled: u32,    // 0 expectation, 1 one draw
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    stream: u32,
    in_scale: f32,   // the inverse map's input: draw / in_scale
    // The loop bounds, here rather than from the uniform P: lavapipe
    // inlines uniform values and unrolls constant-bound loops (the joint
    // kernel of residual_vi.wgsl ran 300x slower that way).
    nunk: u32,
    m: u32,          // n - 1
    log_mean: u32,   // nodal: 1 mu = shape exp(mean output), 0 mu = u_scale mean output
    _pad: array<u32, 2>,
}

// A read-only storage buffer, not a uniform: lavapipe recompiles a shader
// whose uniforms steer control flow when they change (the step does).
@group(0) @binding(1) var<storage, read> R: ResidualParams;
@group(0) @binding(2) var<storage, read> coef: array<f32>;
@group(0) @binding(3) var<storage, read> head: array<f32>;
@group(0) @binding(4) var<storage, read_write> work: array<f32>;
@group(0) @binding(5) var<storage, read_write> grad: array<f32>;
@group(0) @binding(6) var<storage, read_write> losses: array<f32>;
@group(0) @binding(7) var<storage, read> dst: array<f32>;
@group(0) @binding(8) var<storage, read> dscale: array<f32>;
@group(0) @binding(9) var<storage, read> shape: array<f32>;

const RES_LOSS_ROWS: u32 = 16u;

fn coef_at(sys: u32, cell: u32) -> f32 {
    return coef[sys * P.ncoef + cell];
}

fn vec_at(base: u32, k: u32) -> f32 {
    return work[base + k];
}

fn res_plane(p: u32) -> u32 {
    return p * P.batch * R.nunk;
}

// The nodal mean of row `hb`'s head at node k, and its derivative in the output.
fn res_mean(hb: u32, k: u32) -> f32 {
    if (R.log_mean == 1u) {
        return shape[k] * exp(head[hb + k]);
    }
    return R.u_scale * head[hb + k];
}

fn res_dmean(hb: u32, k: u32) -> f32 {
    if (R.log_mean == 1u) {
        return shape[k] * exp(head[hb + k]);
    }
    return R.u_scale;
}

// (A^2)_kk = sum_j A_kj^2: the squares of row k's stencil entries over
// interior neighbours (boundary columns are eliminated).
fn op_row_sq(sys: u32, k: u32) -> f32 {
    let m = P.n - 1u;
    let iu = k % m + 1u;
    let ju = k / m + 1u;
    let k_sw = coef_at(sys, (ju - 1u) * P.n + iu - 1u);
    let k_se = coef_at(sys, (ju - 1u) * P.n + iu);
    let k_nw = coef_at(sys, ju * P.n + iu - 1u);
    let k_ne = coef_at(sys, ju * P.n + iu);
    let c = (4.0 / 6.0) * (k_sw + k_se + k_nw + k_ne);
    var acc = c * c;
    let lo_i = iu > 1u;
    let hi_i = iu < m;
    let lo_j = ju > 1u;
    let hi_j = ju < m;
    let w = (k_sw + k_nw) / 6.0;
    let e = (k_se + k_ne) / 6.0;
    let s = (k_sw + k_se) / 6.0;
    let nn = (k_nw + k_ne) / 6.0;
    if (lo_i) { acc += w * w; }
    if (hi_i) { acc += e * e; }
    if (lo_j) { acc += s * s; }
    if (hi_j) { acc += nn * nn; }
    if (lo_i && lo_j) { acc += 4.0 * k_sw * k_sw / 36.0; }
    if (hi_i && lo_j) { acc += 4.0 * k_se * k_se / 36.0; }
    if (lo_i && hi_j) { acc += 4.0 * k_nw * k_nw / 36.0; }
    if (hi_i && hi_j) { acc += 4.0 * k_ne * k_ne / 36.0; }
    return acc;
}

// One workgroup per system (row b). Phase 1 writes the draw, phase 2 the
// residual (and the energy form's gradient), phase 3 the raw form's
// gradient A r / sigma_r^2; the row's loss goes to losses[16 + b].
// Dispatch (B, 1, 1).
@compute @workgroup_size(WG)
fn residual_loss(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x;
    let nu = R.nunk;
    let hb = b * 2u * nu;
    let ub = b * nu;
    let seed = vec2<u32>(R.seed_lo, R.seed_hi);
    let h2 = 1.0 / (P.inv_h * P.inv_h);
    for (var k = lid; k < nu; k += WG) {
        let eps = normal4(seed, R.stream, R.step, ub + k).x;
        let mu = res_mean(hb, k);
        let sd = exp(0.5 * (head[hb + nu + k] + R.lv0));
        let draw = mu + sd * eps;
        work[res_plane(2u) + ub + k] = eps;
        work[res_plane(3u) + ub + k] = draw / R.in_scale;
        if (R.sampled == 1u) {
            work[ub + k] = draw;
        } else {
            work[ub + k] = mu;
        }
    }
    storageBarrier();
    var acc = 0.0;
    for (var k = lid; k < nu; k += WG) {
        let u = work[ub + k];
        let au = op_apply(b, ub, k);
        let r = au - h2;
        let lv = head[hb + nu + k] + R.lv0;
        let s2 = exp(lv);
        let eps = work[res_plane(2u) + ub + k];
        acc -= 0.5 * lv;
        if (R.form == 0u) {
            acc += (0.5 * u * au - h2 * u) * R.sigma_inv2;
            var glv = 0.0;
            if (R.sampled == 1u) {
                glv = 0.5 * (r * R.sigma_inv2 * sqrt(s2) * eps - 1.0);
            } else {
                let akk = op_diag(b, k);
                acc += 0.5 * akk * s2 * R.sigma_inv2;
                glv = 0.5 * (akk * s2 * R.sigma_inv2 - 1.0);
            }
            grad[hb + k] = R.grad_scale * res_dmean(hb, k) * r * R.sigma_inv2;
            grad[hb + nu + k] = R.grad_scale * glv;
        } else {
            work[res_plane(1u) + ub + k] = r;
            acc += 0.5 * r * r * R.sigma_inv2;
            if (R.sampled == 0u) {
                acc += 0.5 * op_row_sq(b, k) * s2 * R.sigma_inv2;
            }
        }
    }
    storageBarrier();
    if (R.form == 1u) {
        for (var k = lid; k < nu; k += WG) {
            let g = op_apply(b, res_plane(1u) + ub, k) * R.sigma_inv2;
            let s2 = exp(head[hb + nu + k] + R.lv0);
            var glv = 0.0;
            if (R.sampled == 1u) {
                glv = 0.5 * (g * sqrt(s2) * work[res_plane(2u) + ub + k] - 1.0);
            } else {
                glv = 0.5 * (op_row_sq(b, k) * s2 * R.sigma_inv2 - 1.0);
            }
            grad[hb + k] = R.grad_scale * res_dmean(hb, k) * g;
            grad[hb + nu + k] = R.grad_scale * glv;
        }
    }
    let tot = wg_sum(acc, lid);
    if (lid == 0u) {
        losses[RES_LOSS_ROWS + b] = tot;
    }
}

// Separable sine transforms of one system's (n-1) x (n-1) grid (x fastest):
// along x, out[j][p] = sum_i S[i][p] in[j][i]; along y, out[q][i] =
// sum_j S[j][q] in[j][i]. S is symmetric and orthonormal, so the same two
// passes map coefficients to nodes and nodes to coefficients.
fn dst_x(src: u32, dst_base: u32, lid: u32) {
    let m = R.m;
    for (var k = lid; k < R.nunk; k += WG) {
        let j = k / m;
        let p = k % m;
        var acc = 0.0;
        for (var i = 0u; i < m; i++) {
            acc += dst[i * m + p] * work[src + j * m + i];
        }
        work[dst_base + k] = acc;
    }
}

fn dst_y(src: u32, dst_base: u32, lid: u32) {
    let m = R.m;
    for (var k = lid; k < R.nunk; k += WG) {
        let q = k / m;
        let i = k % m;
        var acc = 0.0;
        for (var j = 0u; j < m; j++) {
            acc += dst[j * m + q] * work[src + j * m + i];
        }
        work[dst_base + k] = acc;
    }
}

// The energy form over spectral coefficients: the head row is [mean
// coefficients c | log-variances] of q(c) = N(mu_c, diag s_c^2), and
// u = S (D (u_scale mu_c + s eps)) S with D = dscale (the inverse square
// root of the constant-coefficient operator's eigenvalues), so the loss's
// Hessian in c is close to the identity whatever n is. The mean's gradient
// is exact (E_q[A u - b] = A u_mean - b); the spread's is the unbiased
// estimate eps_c s_c (D S A S D s eps)_c from the row's draw.
// Planes: 0 u_mean, 1 u_noise, 2 eps, 3 draw / in_scale, 4-7 scratch.
// Dispatch (B, 1, 1).
@compute @workgroup_size(WG)
fn residual_loss_spectral(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x;
    let nu = R.nunk;
    let hb = b * 2u * nu;
    let ub = b * nu;
    let seed = vec2<u32>(R.seed_lo, R.seed_hi);
    let h2 = 1.0 / (P.inv_h * P.inv_h);
    for (var c = lid; c < nu; c += WG) {
        let eps = normal4(seed, R.stream, R.step, ub + c).x;
        let sd = exp(0.5 * (head[hb + nu + c] + R.lv0));
        work[res_plane(2u) + ub + c] = eps;
        work[res_plane(4u) + ub + c] = dscale[c] * R.u_scale * head[hb + c];
        work[res_plane(5u) + ub + c] = dscale[c] * sd * eps;
    }
    storageBarrier();
    dst_x(res_plane(4u) + ub, res_plane(6u) + ub, lid);
    dst_x(res_plane(5u) + ub, res_plane(7u) + ub, lid);
    storageBarrier();
    dst_y(res_plane(6u) + ub, ub, lid);
    dst_y(res_plane(7u) + ub, res_plane(1u) + ub, lid);
    storageBarrier();
    var acc = 0.0;
    for (var k = lid; k < nu; k += WG) {
        let u = work[ub + k];
        let v = work[res_plane(1u) + ub + k];
        work[res_plane(3u) + ub + k] = (u + v) / R.in_scale;
        let au = op_apply(b, ub, k);
        let av = op_apply(b, res_plane(1u) + ub, k);
        acc += (0.5 * u * au - h2 * u + 0.5 * v * av) * R.sigma_inv2;
        work[res_plane(4u) + ub + k] = au - h2;
        work[res_plane(5u) + ub + k] = av;
    }
    storageBarrier();
    dst_x(res_plane(4u) + ub, res_plane(6u) + ub, lid);
    dst_x(res_plane(5u) + ub, res_plane(7u) + ub, lid);
    storageBarrier();
    dst_y(res_plane(6u) + ub, res_plane(4u) + ub, lid);
    dst_y(res_plane(7u) + ub, res_plane(5u) + ub, lid);
    storageBarrier();
    for (var c = lid; c < nu; c += WG) {
        let lv = head[hb + nu + c] + R.lv0;
        let sd = exp(0.5 * lv);
        let gr = dscale[c] * work[res_plane(4u) + ub + c] * R.sigma_inv2;
        let gw = dscale[c] * work[res_plane(5u) + ub + c] * R.sigma_inv2;
        acc -= 0.5 * lv;
        grad[hb + c] = R.grad_scale * R.u_scale * gr;
        grad[hb + nu + c] = R.grad_scale * 0.5 * (gw * sd * work[res_plane(2u) + ub + c] - 1.0);
    }
    let tot = wg_sum(acc, lid);
    if (lid == 0u) {
        losses[RES_LOSS_ROWS + b] = tot;
    }
}
