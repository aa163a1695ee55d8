//! Benchmarks users run on their own GPU (`pdevi bench ...`): one JSON
//! object per line on stdout.

use std::time::Instant;

use crate::error::Result;
use crate::gpu::layout::PdeParams;
use crate::gpu::{GpuContext, KernelId};
use crate::problem::{Problem, ProblemKind};
use crate::solver::{BatchedSolver, CgParams};

/// Best-of-`reps` bandwidth of `a = b + s c` over `n` f32 (GB/s, 12 bytes
/// per element): the device's own streaming roofline.
pub fn stream_gbs(ctx: &GpuContext, n: usize, reps: usize) -> Result<f64> {
    let n = (n / 4).max(1) * 4;
    let nv = n / 4;
    let bytes = (n * 4) as u64;
    let b = ctx.storage("stream.b", bytes)?;
    let c = ctx.storage("stream.c", bytes)?;
    let a = ctx.storage("stream.a", bytes)?;
    let p = PdeParams {
        nunk: nv as u32,
        scale: 0.5,
        ..Default::default()
    };
    let u = ctx.uniform("stream.params", &p);
    let bg = ctx.bind(KernelId::StreamTriad, &[&u, &b, &c, &a]);
    let groups = (nv as u32)
        .div_ceil(256)
        .min(ctx.limits.max_compute_workgroups_per_dimension);
    let mut best = f64::INFINITY;
    for r in 0..=reps {
        let mut enc = ctx.encoder("stream");
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("stream"),
                timestamp_writes: None,
            });
            ctx.dispatch(&mut pass, KernelId::StreamTriad, &bg, [groups, 1, 1]);
        }
        let t = Instant::now();
        ctx.submit_wait(enc)?;
        let dt = t.elapsed().as_secs_f64();
        if r > 0 {
            best = best.min(dt);
        }
    }
    Ok(3.0 * bytes as f64 / best / 1e9)
}

/// Bytes one CG iteration moves per system, by the model documented in the
/// README: apply (read p, kappa; write ap), update (read x, p, r, ap, dinv;
/// write x, r), direction (read dinv, r, p; write p): 13 nunk + ncoef floats.
pub fn cg_bytes_per_iter(pb: &Problem) -> f64 {
    let coef = match pb.kind {
        ProblemKind::Darcy2d => pb.ncoef(),
        ProblemKind::Poisson1d => 0,
    };
    4.0 * (13 * pb.nunk() + coef) as f64
}

/// One solver benchmark configuration's result.
#[derive(Debug, serde::Serialize)]
pub struct SolverBench {
    pub bench: &'static str,
    pub problem: &'static str,
    pub n: usize,
    pub batch: usize,
    pub reps: usize,
    pub seconds: f64,
    pub solves_per_s: f64,
    pub cg_iters: f64,
    pub bandwidth_gbs: f64,
    pub stream_gbs: f64,
    pub bandwidth_fraction: f64,
    pub device: String,
}

/// Time forward solves of prior draws on darcy2d (tolerance 1e-5).
pub fn solver(
    ctx: &GpuContext,
    sizes: &[usize],
    batches: &[usize],
    min_seconds: f64,
    mut emit: impl FnMut(&SolverBench),
) -> Result<Vec<SolverBench>> {
    let stream = stream_gbs(ctx, 1 << 24, 5)?;
    // Warm-up once: drivers compile a pipeline at its first dispatch.
    {
        let pb = Problem::new(ProblemKind::Darcy2d, 16, 4)?;
        BatchedSolver::new(ctx, &pb, 1, CgParams::default(), None, false)?.solve(ctx, &[0.0; 4])?;
    }
    let mut out = Vec::new();
    for &n in sizes {
        let pb = Problem::new(ProblemKind::Darcy2d, n, 64)?;
        for &batch in batches {
            let cg = CgParams {
                rel_tol: 1e-5,
                max_iters: 20 * n as u32,
                chunk: 128,
                ..Default::default()
            };
            let s = BatchedSolver::new(ctx, &pb, batch, cg, None, false)?;
            let xi = crate::rng::normals(7, crate::rng::streams::TRUTH, 0, batch * pb.d);
            let mut reps = 0;
            let mut iters = 0.0;
            let t = Instant::now();
            while reps == 0 || t.elapsed().as_secs_f64() < min_seconds {
                let info = s.solve(ctx, &xi)?;
                crate::solver::check_converged(&info, "benchmark solve", &cg)?;
                iters += info.iter().map(|i| i.iters as f64).sum::<f64>();
                reps += 1;
            }
            let dt = t.elapsed().as_secs_f64();
            let bw = iters * cg_bytes_per_iter(&pb) / dt / 1e9;
            let r = SolverBench {
                bench: "solver",
                problem: "darcy2d",
                n,
                batch,
                reps,
                seconds: dt,
                solves_per_s: (reps * batch) as f64 / dt,
                cg_iters: iters / (reps * batch) as f64,
                bandwidth_gbs: bw,
                stream_gbs: stream,
                bandwidth_fraction: bw / stream,
                device: ctx.describe(),
            };
            emit(&r);
            out.push(r);
        }
    }
    Ok(out)
}

/// One VI benchmark result.
#[derive(Debug, serde::Serialize)]
pub struct ViBench {
    pub bench: &'static str,
    pub problem: &'static str,
    pub n: usize,
    pub d: usize,
    pub samples: usize,
    pub family: &'static str,
    pub steps: usize,
    pub steps_per_s: f64,
    pub mean_cg_iters: f64,
    pub dispatches_per_step: usize,
    pub device: String,
}

/// ELBO steps per second on darcy2d for each family (warm-started CG),
/// data simulated from a prior draw.
pub fn vi(
    ctx: &GpuContext,
    n: usize,
    d: usize,
    samples: usize,
    steps: usize,
    mut emit: impl FnMut(&ViBench),
) -> Result<Vec<ViBench>> {
    use crate::vi::{fit, Family, FitSettings, ViEngine};
    let pb = Problem::new(ProblemKind::Darcy2d, n, d)?;
    let xi = crate::rng::normals(7, crate::rng::streams::TRUTH, 0, d);
    let fwd = crate::cpu::forward(&pb, &xi, 1e-10, 100_000);
    let eps = crate::rng::normals(7, crate::rng::streams::NOISE, 0, pb.sensors.len());
    let y: Vec<f64> = pb
        .sensors
        .iter()
        .zip(&eps)
        .map(|(&k, e)| fwd.u[k] + pb.sigma_n * e)
        .collect();
    let mut out = Vec::new();
    for family in [
        Family::MeanField,
        Family::FullRank,
        Family::LowRank { rank: 8 },
    ] {
        let s = FitSettings {
            family,
            samples,
            steps,
            report_every: steps,
            ..Default::default()
        };
        let mut eng = ViEngine::new(ctx, &pb, family, samples, &pb.sensors, &y, 0, s.cg)?;
        // One warm-up step (pipeline first use).
        eng.step(ctx, 0, 1e-3);
        ctx.wait()?;
        let mut good = Vec::new();
        let r = fit(ctx, &mut eng, &s, &mut good, |_, _| {})?;
        let b = ViBench {
            bench: "vi",
            problem: "darcy2d",
            n,
            d,
            samples,
            family: family.name(),
            steps,
            steps_per_s: steps as f64 / r.seconds,
            mean_cg_iters: r.mean_cg_iters,
            dispatches_per_step: eng.dispatches_per_step(),
            device: ctx.describe(),
        };
        emit(&b);
        out.push(b);
    }
    Ok(out)
}
