//! f64 mirrors of the physics kernels (`shaders/physics/`, `shaders/common/`):
//! same names, same argument order (the kernel's bindings), same loop
//! structure. Tests compare the GPU against these; they are also the
//! reference solver for small problems.
#![allow(
    clippy::needless_range_loop,
    reason = "index loops keep the code comparable to the shaders"
)]

use crate::gpu::layout::{status, PdeParams};

/// Which operator a solver mirror applies (the GPU picks it by module).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Q1,
    P1,
}

/// Mirror of `CgState` in f64.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CgState {
    pub iters: u32,
    pub status: u32,
    pub rz: f64,
    pub bnorm2: f64,
    pub rnorm2: f64,
    /// The tolerance of the last solve (set by its start).
    pub tol: f64,
    /// The tolerance asked of the next start (0: `p.tol`).
    pub tol_next: f64,
}

/// Mirror of `cg_requested_tol` (common/cg_state.wgsl).
pub fn cg_requested_tol(st: &CgState, fixed: f64) -> f64 {
    if st.tol_next > 0.0 {
        st.tol_next
    } else {
        fixed
    }
}

// ---- kl.wgsl ----

/// z[b, c] = sum_k xi[b, k] basis[k, c]; kappa_or_load = exp(z), or kl_scale z
/// with `kl_linear`.
pub fn kl_map(p: &PdeParams, xi: &[f64], basis: &[f64], z: &mut [f64], kappa_or_load: &mut [f64]) {
    let (d, nc) = (p.d as usize, p.ncoef as usize);
    for b in 0..p.batch as usize {
        for c in 0..nc {
            let mut acc = 0.0;
            for k in 0..d {
                acc += xi[b * d + k] * basis[k * nc + c];
            }
            z[b * nc + c] = acc;
            kappa_or_load[b * nc + c] = if p.kl_linear == 0 {
                acc.exp()
            } else {
                p.kl_scale as f64 * acc
            };
        }
    }
}

/// A generative prior's field from decoder logits `xi` (B x ncoef):
/// z = tanh(l / 2) (l clamped to [-30, 30]), kappa = exp(z).
pub fn prior_field(p: &PdeParams, xi: &[f64], z: &mut [f64], kappa_or_load: &mut [f64]) {
    for idx in 0..(p.ncoef * p.batch) as usize {
        let zz = (0.5 * xi[idx].clamp(-30.0, 30.0)).tanh();
        z[idx] = zz;
        kappa_or_load[idx] = zz.exp();
    }
}

/// The gradient with respect to the logits: gxi = g (1 - z^2) / 2.
pub fn prior_field_grad(p: &PdeParams, z: &[f64], g: &[f64], gxi: &mut [f64]) {
    for idx in 0..(p.ncoef * p.batch) as usize {
        gxi[idx] = 0.5 * g[idx] * (1.0 - z[idx] * z[idx]);
    }
}

/// Mirror of `wg_sum` (common/reduce.wgsl) over one workgroup's partials, in
/// its order: `WG_COLS = sqrt(WG)` column sums of the strided partials
/// (column `l` adds partials `l, l + WG_COLS, ...`), then their sum.
pub fn wg_sum(partials: &[f64]) -> f64 {
    let cols = (partials.len() as f64).sqrt() as usize;
    debug_assert_eq!(cols * cols, partials.len(), "WG must be a square");
    (0..cols)
        .map(|l| (0..cols).map(|k| partials[k * cols + l]).sum::<f64>())
        .sum()
}

/// gxi[b, k] = scale sum_c basis[k, c] g[b, c], one workgroup of `wg`
/// invocations per output: invocation `l` sums `c = l, l + wg, ...`, then
/// [`wg_sum`] (the kernel's order).
pub fn kl_pullback(p: &PdeParams, wg: usize, basis: &[f64], g: &[f64], gxi: &mut [f64]) {
    let (d, nc) = (p.d as usize, p.ncoef as usize);
    let mut partials = vec![0.0; wg];
    for b in 0..p.batch as usize {
        for k in 0..d {
            for (l, acc) in partials.iter_mut().enumerate() {
                *acc = (l..nc)
                    .step_by(wg)
                    .map(|c| basis[k * nc + c] * g[b * nc + c])
                    .sum();
            }
            gxi[b * d + k] = p.kl_scale as f64 * wg_sum(&partials);
        }
    }
}

/// The same pullback, one invocation per output: four interleaved lanes
/// (`c mod 4`) over whole vec4s, a scalar tail, then lanes + tail (the
/// kernel's order).
pub fn kl_pullback_serial(p: &PdeParams, basis: &[f64], g: &[f64], gxi: &mut [f64]) {
    let (d, nc) = (p.d as usize, p.ncoef as usize);
    for b in 0..p.batch as usize {
        for k in 0..d {
            let mut acc = 0.0;
            for c in 0..nc {
                acc += basis[k * nc + c] * g[b * nc + c];
            }
            gxi[b * d + k] = p.kl_scale as f64 * acc;
        }
    }
}

// ---- common/op_q1.wgsl, darcy.wgsl ----

fn q1_node(n: usize, v: &[f64], i: isize, j: isize) -> f64 {
    let ni = n as isize;
    if i <= 0 || j <= 0 || i >= ni || j >= ni {
        return 0.0;
    }
    v[((j - 1) * (ni - 1) + (i - 1)) as usize]
}

/// (A(z) v)_k for one system (`coef` and `v` are that system's slices).
pub fn q1_op_apply(n: usize, coef: &[f64], v: &[f64], k: usize) -> f64 {
    let m = n - 1;
    let (iu, ju) = (k % m + 1, k / m + 1);
    let (i, j) = (iu as isize, ju as isize);
    let c = q1_node(n, v, i, j);
    let w = q1_node(n, v, i - 1, j);
    let e = q1_node(n, v, i + 1, j);
    let s = q1_node(n, v, i, j - 1);
    let nn = q1_node(n, v, i, j + 1);
    let sw = q1_node(n, v, i - 1, j - 1);
    let se = q1_node(n, v, i + 1, j - 1);
    let nw = q1_node(n, v, i - 1, j + 1);
    let ne = q1_node(n, v, i + 1, j + 1);
    let k_sw = coef[(ju - 1) * n + iu - 1];
    let k_se = coef[(ju - 1) * n + iu];
    let k_nw = coef[ju * n + iu - 1];
    let k_ne = coef[ju * n + iu];
    let c4 = 4.0 * c;
    let acc = k_sw * (c4 - w - s - 2.0 * sw)
        + k_se * (c4 - e - s - 2.0 * se)
        + k_nw * (c4 - w - nn - 2.0 * nw)
        + k_ne * (c4 - e - nn - 2.0 * ne);
    acc / 6.0
}

pub fn q1_op_diag(n: usize, coef: &[f64], k: usize) -> f64 {
    let m = n - 1;
    let (iu, ju) = (k % m + 1, k / m + 1);
    let sum = coef[(ju - 1) * n + iu - 1]
        + coef[(ju - 1) * n + iu]
        + coef[ju * n + iu - 1]
        + coef[ju * n + iu];
    sum * 4.0 / 6.0
}

/// y = A(z) v, batched.
pub fn q1_apply(p: &PdeParams, coef: &[f64], v: &[f64], y: &mut [f64]) {
    let (n, nu, nc) = (p.n as usize, p.nunk as usize, p.ncoef as usize);
    for b in 0..p.batch as usize {
        let cf = &coef[b * nc..(b + 1) * nc];
        let vb = &v[b * nu..(b + 1) * nu];
        for k in 0..nu {
            y[b * nu + k] = q1_op_apply(n, cf, vb, k);
        }
    }
}

/// y = diag(A(z)), batched.
pub fn q1_diag(p: &PdeParams, coef: &[f64], y: &mut [f64]) {
    let (n, nu, nc) = (p.n as usize, p.nunk as usize, p.ncoef as usize);
    for b in 0..p.batch as usize {
        for k in 0..nu {
            y[b * nu + k] = q1_op_diag(n, &coef[b * nc..(b + 1) * nc], k);
        }
    }
}

/// g_c = kappa_c lambda_c^T K u_c (u = v, lambda = w), batched.
pub fn q1_adjoint_grad(p: &PdeParams, coef: &[f64], v: &[f64], w: &[f64], g: &mut [f64]) {
    let (n, nu, nc) = (p.n as usize, p.nunk as usize, p.ncoef as usize);
    for b in 0..p.batch as usize {
        let vb = &v[b * nu..(b + 1) * nu];
        let wb = &w[b * nu..(b + 1) * nu];
        for c in 0..nc {
            let (i, j) = ((c % n) as isize, (c / n) as isize);
            let u0 = q1_node(n, vb, i, j);
            let u1 = q1_node(n, vb, i + 1, j);
            let u2 = q1_node(n, vb, i + 1, j + 1);
            let u3 = q1_node(n, vb, i, j + 1);
            let l0 = q1_node(n, wb, i, j);
            let l1 = q1_node(n, wb, i + 1, j);
            let l2 = q1_node(n, wb, i + 1, j + 1);
            let l3 = q1_node(n, wb, i, j + 1);
            let ku0 = 4.0 * u0 - u1 - 2.0 * u2 - u3;
            let ku1 = -u0 + 4.0 * u1 - u2 - 2.0 * u3;
            let ku2 = -2.0 * u0 - u1 + 4.0 * u2 - u3;
            let ku3 = -u0 - 2.0 * u1 - u2 + 4.0 * u3;
            let q = l0 * ku0 + l1 * ku1 + l2 * ku2 + l3 * ku3;
            g[b * nc + c] = coef[b * nc + c] * q / 6.0;
        }
    }
}

// ---- common/op_p1.wgsl, poisson1d.wgsl ----

pub fn p1_op_apply(n: usize, inv_h: f64, v: &[f64], k: usize) -> f64 {
    let m = n - 1;
    let left = if k > 0 { v[k - 1] } else { 0.0 };
    let right = if k + 1 < m { v[k + 1] } else { 0.0 };
    (2.0 * v[k] - left - right) * inv_h
}

/// y = A v, batched.
pub fn p1_apply(p: &PdeParams, v: &[f64], y: &mut [f64]) {
    let nu = p.nunk as usize;
    for b in 0..p.batch as usize {
        for k in 0..nu {
            y[b * nu + k] = p1_op_apply(p.n as usize, p.inv_h as f64, &v[b * nu..(b + 1) * nu], k);
        }
    }
}

/// y = diag(A), batched.
pub fn p1_diag(p: &PdeParams, y: &mut [f64]) {
    let nu = p.nunk as usize;
    for b in 0..p.batch as usize {
        for k in 0..nu {
            y[b * nu + k] = 2.0 * p.inv_h as f64;
        }
    }
}

// ---- obs.wgsl ----

/// e = y - P u; `adj[sensor]` = noise_precision e; misfit = 0.5 noise_precision |e|^2.
pub fn obs_misfit(
    p: &PdeParams,
    sensors: &[u32],
    data: &[f64],
    u: &[f64],
    adj: &mut [f64],
    misfit: &mut [f64],
) {
    let (nu, ns) = (p.nunk as usize, p.nsens as usize);
    let scale = p.noise_precision as f64;
    for b in 0..p.batch as usize {
        let mut acc = 0.0;
        for s in 0..ns {
            let k = sensors[s] as usize;
            let yv = if p.per_system_data == 1 {
                data[b * ns + s]
            } else {
                data[s]
            };
            let e = yv - u[b * nu + k];
            adj[b * nu + k] = scale * e;
            acc += e * e;
        }
        misfit[b] = 0.5 * scale * acc;
    }
}

// ---- stream.wgsl ----

/// a = b + scale c (the bandwidth probe).
pub fn stream_triad(p: &PdeParams, b: &[f64], c: &[f64], a: &mut [f64]) {
    for i in 0..4 * p.nunk as usize {
        a[i] = b[i] + p.triad_scale as f64 * c[i];
    }
}

/// Mirror of `stream_triad_grid`: the same result, whatever the grid.
pub fn stream_triad_grid(p: &PdeParams, b: &[f64], c: &[f64], a: &mut [f64]) {
    stream_triad(p, b, c, a);
}

/// a = b on `nunk` vec4s.
pub fn stream_copy(p: &PdeParams, b: &[f64], a: &mut [f64]) {
    let n = 4 * p.nunk as usize;
    a[..n].copy_from_slice(&b[..n]);
}

// ---- p1_direct.wgsl ----

/// Thomas algorithm for A = (1/h) tridiag(-1, 2, -1) with closed-form pivots.
pub fn p1_direct(p: &PdeParams, rhs: &[f64], x: &mut [f64], state: &mut [CgState]) {
    let m = p.nunk as usize;
    let inv_h = p.inv_h as f64;
    let h = 1.0 / inv_h;
    for sys in 0..p.batch as usize {
        let b = &rhs[sys * m..(sys + 1) * m];
        let u = &mut x[sys * m..(sys + 1) * m];
        let mut dprev = 0.0;
        let mut bb = 0.0;
        for k in 0..m {
            bb += b[k] * b[k];
            let i = (k + 1) as f64;
            dprev = (h * b[k] + dprev) * i / (i + 1.0);
            u[k] = dprev;
        }
        let mut unext = 0.0;
        for k in (0..m).rev() {
            let i = (k + 1) as f64;
            unext = u[k] + i / (i + 1.0) * unext;
            u[k] = unext;
        }
        let mut rr = 0.0;
        for k in 0..m {
            let r = b[k] - p1_op_apply(p.n as usize, inv_h, u, k);
            rr += r * r;
        }
        state[sys] = CgState {
            iters: 1,
            status: if rr.is_nan() {
                status::BREAKDOWN
            } else {
                status::CONVERGED
            },
            rz: 0.0,
            bnorm2: bb,
            rnorm2: rr,
            ..Default::default()
        };
    }
}

// ---- solver.wgsl ----

fn op_apply(op: Op, p: &PdeParams, coef: &[f64], v: &[f64], k: usize) -> f64 {
    match op {
        Op::Q1 => q1_op_apply(p.n as usize, coef, v, k),
        Op::P1 => p1_op_apply(p.n as usize, p.inv_h as f64, v, k),
    }
}

fn op_diag(op: Op, p: &PdeParams, coef: &[f64], k: usize) -> f64 {
    match op {
        Op::Q1 => q1_op_diag(p.n as usize, coef, k),
        Op::P1 => 2.0 * p.inv_h as f64,
    }
}

/// Work slots of one system: r, p, ap, inverse diagonal.
fn slots(work: &mut [f64], nu: usize) -> (&mut [f64], &mut [f64], &mut [f64], &mut [f64]) {
    let (r, rest) = work.split_at_mut(nu);
    let (pp, rest) = rest.split_at_mut(nu);
    let (ap, dinv) = rest.split_at_mut(nu);
    (r, pp, ap, &mut dinv[..nu])
}

/// Mirror of `cg_start`.
#[allow(clippy::too_many_arguments, reason = "mirrors the kernel's bindings")]
pub fn cg_start(
    op: Op,
    p: &PdeParams,
    coef: &[f64],
    rhs: &[f64],
    x: &mut [f64],
    work: &mut [f64],
    state: &mut [CgState],
) {
    let (nu, nc) = (p.nunk as usize, p.ncoef as usize);
    for sys in 0..p.batch as usize {
        let tol = cg_requested_tol(&state[sys], p.tol as f64);
        let cf = &coef[(sys * nc).min(coef.len())..((sys + 1) * nc).min(coef.len())];
        let xb = &mut x[sys * nu..(sys + 1) * nu];
        let b = &rhs[sys * nu..(sys + 1) * nu];
        let (r, pp, _ap, dinv) = slots(&mut work[sys * 4 * nu..(sys + 1) * 4 * nu], nu);
        for k in 0..nu {
            dinv[k] = 1.0 / op_diag(op, p, cf, k);
            pp[k] = xb[k];
        }
        let (mut bb, mut rr, mut rz) = (0.0, 0.0, 0.0);
        for k in 0..nu {
            r[k] = b[k] - op_apply(op, p, cf, pp, k);
            bb += b[k] * b[k];
            rr += r[k] * r[k];
            rz += r[k] * r[k] * dinv[k];
        }
        for k in 0..nu {
            pp[k] = dinv[k] * r[k];
        }
        let mut st = CgState {
            iters: 0,
            status: status::RUNNING,
            rz,
            bnorm2: bb,
            rnorm2: rr,
            tol,
            tol_next: state[sys].tol_next,
        };
        if bb == 0.0 || rr <= tol * tol * bb {
            st.status = status::CONVERGED;
        }
        if rr.is_nan() || rz.is_nan() {
            st.status = status::BREAKDOWN;
        }
        if bb == 0.0 {
            xb.fill(0.0);
        }
        state[sys] = st;
    }
}

/// Mirror of `cg_iterate` (up to p.chunk iterations per system).
#[allow(clippy::too_many_arguments, reason = "mirrors the kernel's bindings")]
pub fn cg_iterate(
    op: Op,
    p: &PdeParams,
    coef: &[f64],
    x: &mut [f64],
    work: &mut [f64],
    state: &mut [CgState],
) {
    let (nu, nc) = (p.nunk as usize, p.ncoef as usize);
    for sys in 0..p.batch as usize {
        let mut st = state[sys];
        if st.status != status::RUNNING {
            continue;
        }
        let tol = st.tol;
        let cf = &coef[(sys * nc).min(coef.len())..((sys + 1) * nc).min(coef.len())];
        let xb = &mut x[sys * nu..(sys + 1) * nu];
        let (r, pp, ap, dinv) = slots(&mut work[sys * 4 * nu..(sys + 1) * 4 * nu], nu);
        for _ in 0..p.chunk {
            let mut pap = 0.0;
            for k in 0..nu {
                ap[k] = op_apply(op, p, cf, pp, k);
                pap += ap[k] * pp[k];
            }
            if pap.is_nan() || pap <= 0.0 || st.rz.is_nan() || st.rz <= 0.0 {
                st.status = status::BREAKDOWN;
                break;
            }
            let alpha = st.rz / pap;
            let (mut rr, mut rz) = (0.0, 0.0);
            for k in 0..nu {
                xb[k] += alpha * pp[k];
                r[k] -= alpha * ap[k];
                rr += r[k] * r[k];
                rz += r[k] * r[k] * dinv[k];
            }
            st.iters += 1;
            st.rnorm2 = rr;
            if rr.is_nan() {
                st.status = status::BREAKDOWN;
                break;
            }
            if rr <= tol * tol * st.bnorm2 {
                st.status = status::CONVERGED;
                break;
            }
            if st.iters >= p.max_iter {
                st.status = status::MAXITER;
                break;
            }
            let beta = rz / st.rz;
            st.rz = rz;
            for k in 0..nu {
                pp[k] = dinv[k] * r[k] + beta * pp[k];
            }
        }
        state[sys] = st;
    }
}

/// Mirror of `jacobi_run` (p.chunk weighted Jacobi sweeps, omega = p.omega).
#[allow(clippy::too_many_arguments, reason = "mirrors the kernel's bindings")]
pub fn jacobi_run(
    op: Op,
    p: &PdeParams,
    coef: &[f64],
    rhs: &[f64],
    x: &mut [f64],
    work: &mut [f64],
    state: &mut [CgState],
) {
    let (nu, nc) = (p.nunk as usize, p.ncoef as usize);
    let tol = p.tol as f64;
    let omega = p.omega as f64;
    for sys in 0..p.batch as usize {
        let cf = &coef[(sys * nc).min(coef.len())..((sys + 1) * nc).min(coef.len())];
        let xb = &mut x[sys * nu..(sys + 1) * nu];
        let b = &rhs[sys * nu..(sys + 1) * nu];
        let (r, pp, ap, dinv) = slots(&mut work[sys * 4 * nu..(sys + 1) * 4 * nu], nu);
        for k in 0..nu {
            dinv[k] = 1.0 / op_diag(op, p, cf, k);
            pp[k] = xb[k];
        }
        for _ in 0..p.chunk {
            for k in 0..nu {
                let res = b[k] - op_apply(op, p, cf, pp, k);
                ap[k] = pp[k] + omega * dinv[k] * res;
            }
            pp.copy_from_slice(ap);
        }
        let (mut bb, mut rr) = (0.0, 0.0);
        for k in 0..nu {
            r[k] = b[k] - op_apply(op, p, cf, pp, k);
            xb[k] = pp[k];
            bb += b[k] * b[k];
            rr += r[k] * r[k];
        }
        let prev = state[sys].iters;
        state[sys] = CgState {
            iters: prev + p.chunk,
            status: if rr <= tol * tol * bb {
                status::CONVERGED
            } else {
                status::MAXITER
            },
            rz: 0.0,
            bnorm2: bb,
            rnorm2: rr,
            ..Default::default()
        };
    }
}

/// The whole CG solve as the GPU records it: `cg_start` then `cg_iterate`
/// dispatches until every system stops.
#[allow(clippy::too_many_arguments, reason = "mirrors the kernel's bindings")]
pub fn cg_solve(
    op: Op,
    p: &PdeParams,
    coef: &[f64],
    rhs: &[f64],
    x: &mut [f64],
    work: &mut [f64],
    state: &mut [CgState],
) {
    cg_start(op, p, coef, rhs, x, work, state);
    let dispatches = p.max_iter.div_ceil(p.chunk.max(1));
    for _ in 0..dispatches {
        cg_iterate(op, p, coef, x, work, state);
    }
}

/// `cg_solve` with an f64 tolerance (for reference solves tighter than f32).
#[allow(clippy::too_many_arguments, reason = "mirrors the kernel's bindings")]
pub fn cg_solve_tol(
    op: Op,
    p: &PdeParams,
    tol: f64,
    coef: &[f64],
    rhs: &[f64],
    x: &mut [f64],
    work: &mut [f64],
    state: &mut [CgState],
) {
    // Run with tol = 0 in the params and test the f64 tolerance here.
    let mut q = *p;
    q.tol = 0.0;
    q.chunk = 1;
    cg_start(op, &q, coef, rhs, x, work, state);
    let nb = p.batch as usize;
    for s in 0..nb {
        if state[s].bnorm2 == 0.0 || state[s].rnorm2 <= tol * tol * state[s].bnorm2 {
            state[s].status = status::CONVERGED;
        }
    }
    for _ in 0..p.max_iter {
        if state.iter().all(|s| s.status != status::RUNNING) {
            break;
        }
        cg_iterate(op, &q, coef, x, work, state);
        for s in state.iter_mut() {
            if s.status == status::RUNNING && s.rnorm2 <= tol * tol * s.bnorm2 {
                s.status = status::CONVERGED;
            }
        }
    }
}
