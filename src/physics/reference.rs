//! The f64 reference solver at the problem level: forward and adjoint
//! solves of one system, chained from the kernel mirrors in
//! [`crate::cpu::physics`] exactly like [`BatchedSolver`](super::solver::BatchedSolver)
//! chains the kernels, and the noisy data that tests and benchmarks share.

use crate::cpu::physics::{
    cg_solve_tol, kl_map, kl_pullback_serial, obs_misfit, q1_adjoint_grad, CgState, Op,
};
use crate::gpu::layout::PdeParams;
use crate::physics::problem::{Problem, ProblemKind};

/// The solver mirror's operator for a problem.
pub fn op_for(kind: ProblemKind) -> Op {
    match kind {
        ProblemKind::Darcy2d => Op::Q1,
        ProblemKind::Poisson1d => Op::P1,
    }
}

/// CPU result of a forward (and optionally adjoint) solve of one system.
#[derive(Clone, Debug)]
pub struct CpuSolve {
    /// z (darcy2d) or f (poisson1d).
    pub field: Vec<f64>,
    /// kappa (darcy2d) or the load h f (poisson1d).
    pub kappa_or_load: Vec<f64>,
    pub u: Vec<f64>,
    pub state: CgState,
}

/// Forward solve of one system in f64, mirroring `BatchedSolver::encode_forward`.
pub fn forward(pb: &Problem, xi: &[f64], tol: f64, max_iter: u32) -> CpuSolve {
    if let Some(prior) = &pb.prior {
        return forward_field(pb, &prior.fields(xi), tol, max_iter);
    }
    let nc = pb.ncoef();
    let mut pk = PdeParams::new(pb.n, pb.nunk(), nc, 1, pb.d);
    if pb.kind == ProblemKind::Poisson1d {
        pk.kl_linear = 1;
        pk.kl_scale = pb.h() as f32;
    }
    let mut field = vec![0.0; nc];
    let mut kappa_or_load = vec![0.0; nc];
    kl_map(&pk, xi, &pb.basis(), &mut field, &mut kappa_or_load);
    solve_coefficient(pb, field, kappa_or_load, tol, max_iter)
}

/// Forward solve of one darcy2d system for a given log-permeability field
/// z (n x n cells), whatever its prior (inclusions2d, a generative prior).
pub fn forward_field(pb: &Problem, z: &[f64], tol: f64, max_iter: u32) -> CpuSolve {
    let kappa = z.iter().map(|v| v.exp()).collect();
    solve_coefficient(pb, z.to_vec(), kappa, tol, max_iter)
}

fn solve_coefficient(
    pb: &Problem,
    field: Vec<f64>,
    kappa_or_load: Vec<f64>,
    tol: f64,
    max_iter: u32,
) -> CpuSolve {
    let (nu, nc) = (pb.nunk(), pb.ncoef());
    let mut p = PdeParams::new(pb.n, nu, nc, 1, pb.d);
    p.tol = tol as f32;
    p.max_iter = max_iter;
    p.chunk = max_iter;
    let rhs = match pb.kind {
        ProblemKind::Darcy2d => vec![pb.h() * pb.h(); nu],
        ProblemKind::Poisson1d => kappa_or_load.clone(),
    };
    let mut u = vec![0.0; nu];
    let mut work = vec![0.0; 4 * nu];
    let mut st = [CgState::default()];
    // f32 cannot hold tolerances below ~1e-7 in `p.tol`; the f64 path uses its own.
    cg_solve_tol(
        op_for(pb.kind),
        &p,
        tol,
        &kappa_or_load,
        &rhs,
        &mut u,
        &mut work,
        &mut st,
    );
    CpuSolve {
        field,
        kappa_or_load,
        u,
        state: st[0],
    }
}

/// Misfit 0.5 |y - P u|^2 / sigma^2 and its gradient with respect to xi, in
/// f64 (mirrors `BatchedSolver::encode_gradient`). `scale` = 1 / sigma^2.
pub fn misfit_gradient(
    pb: &Problem,
    xi: &[f64],
    sensors: &[usize],
    y: &[f64],
    scale: f64,
    tol: f64,
) -> (f64, Vec<f64>) {
    let (nu, nc) = (pb.nunk(), pb.ncoef());
    let fwd = forward(pb, xi, tol, 100_000);
    let mut p = PdeParams::new(pb.n, nu, nc, 1, pb.d);
    p.max_iter = 100_000;
    let sens: Vec<u32> = sensors.iter().map(|&s| s as u32).collect();
    let mut po = p;
    po.nsens = sens.len() as u32;
    // obs_misfit takes the f32 params block; apply the f64 scale afterwards.
    po.noise_precision = 1.0;
    let mut adj = vec![0.0; nu];
    let mut misfit = [0.0];
    obs_misfit(&po, &sens, y, &fwd.u, &mut adj, &mut misfit);
    for a in adj.iter_mut() {
        *a *= scale;
    }
    let mut lam = vec![0.0; nu];
    let mut work = vec![0.0; 4 * nu];
    let mut st = [CgState::default()];
    cg_solve_tol(
        op_for(pb.kind),
        &p,
        tol,
        &fwd.kappa_or_load,
        &adj,
        &mut lam,
        &mut work,
        &mut st,
    );
    let basis = pb.basis();
    let mut gxi = vec![0.0; pb.d];
    let mut pp = p;
    match pb.kind {
        ProblemKind::Darcy2d => {
            let mut g = vec![0.0; nc];
            q1_adjoint_grad(&p, &fwd.kappa_or_load, &fwd.u, &lam, &mut g);
            if let Some(prior) = &pb.prior {
                // The adjoint chained through the decoder (prior_field_grad,
                // then the decoder's backward pass).
                gxi = prior.pullback(xi, &g);
            } else {
                pp.kl_scale = 1.0;
                kl_pullback_serial(&pp, &basis, &g, &mut gxi);
            }
        }
        ProblemKind::Poisson1d => {
            pp.kl_scale = 1.0;
            kl_pullback_serial(&pp, &basis, &lam, &mut gxi);
            for v in gxi.iter_mut() {
                *v *= -pb.h();
            }
        }
    }
    (misfit[0] * scale, gxi)
}

/// A prior draw xi (seed, TRUTH stream) and its noisy sensor data (NOISE
/// stream), solved in f64: the data of benchmarks and tests.
pub fn simulate_data(pb: &Problem, seed: u64) -> (Vec<f64>, Vec<f64>) {
    use crate::rng::{normals, streams};
    let xi = normals(seed, streams::TRUTH, 0, pb.d);
    let fwd = forward(pb, &xi, 1e-12, 100_000);
    let e = normals(seed, streams::NOISE, 0, pb.sensors.len());
    let y = pb
        .sensors
        .iter()
        .zip(&e)
        .map(|(&k, e)| fwd.u[k] + pb.sigma_n * e)
        .collect();
    (xi, y)
}
