//! Benchmarks users run on their own GPU (`pdevi bench ...`): one JSON
//! object per line on stdout.

use std::time::Instant;

use crate::error::Result;
use crate::gpu::layout::PdeParams;
use crate::gpu::{args, GpuContext, KernelId};
use crate::physics::problem::{Problem, ProblemKind};
use crate::physics::solver::{BatchedSolver, CgParams, Precond};

/// One shape of the streaming probe.
#[derive(Debug, serde::Serialize)]
pub struct StreamShape {
    pub bench: &'static str,
    /// `triad` (a = b + s c, one vec4 per invocation), `triad_grid` (the
    /// same as a grid-stride loop of `trips` per invocation) or `copy` (a = b).
    pub shape: &'static str,
    pub workgroup_size: u32,
    pub trips: u32,
    /// Bytes moved per f32 element (12 for the triad, 8 for the copy).
    pub bytes_per_element: u32,
    pub gbs: f64,
    /// Every element of the result was checked against the CPU.
    pub verified: bool,
    pub device: String,
}

/// The device's streaming roofline: every shape of the probe, best of `reps`
/// runs each over `n` f32, every element of each result checked (llvmpipe
/// silently cuts loops, which would inflate a figure), measured in this
/// process. `emit` sees each shape; the best verified GB/s is returned.
pub fn stream_roofline(
    ctx: &GpuContext,
    n: usize,
    reps: usize,
    mut emit: impl FnMut(&StreamShape),
) -> Result<f64> {
    let nv = (n / 4).max(1);
    let n = 4 * nv;
    let bv: Vec<f32> = (0..n).map(|i| (i % 1021) as f32 * 0.25).collect();
    let cv: Vec<f32> = (0..n).map(|i| (i % 997) as f32 * 0.5).collect();
    let b = ctx.upload("stream.b", &bv)?;
    let c = ctx.upload("stream.c", &cv)?;
    let a = ctx.storage("stream.a", (n * 4) as u64)?;
    let p = PdeParams {
        nunk: nv as u32,
        triad_scale: 0.5,
        ..Default::default()
    };
    let u = ctx.uniform("stream.params", &p);
    let triad = args::StreamTriad {
        params: &u,
        sb: &b,
        sc: &c,
        sa: &a,
    };
    let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;
    let mut best = 0.0f64;
    for (kernel, shape, trips) in [
        (KernelId::StreamTriad, "triad", 1u32),
        (KernelId::StreamTriad64, "triad", 1),
        (KernelId::StreamTriadGrid, "triad_grid", 16),
        (KernelId::StreamTriadGrid64, "triad_grid", 16),
        (KernelId::StreamCopy, "copy", 1),
    ] {
        let wg = ctx.workgroup_size(kernel);
        let groups = nv.div_ceil(wg as usize * trips as usize);
        if groups > max_groups {
            continue;
        }
        let d = if kernel == KernelId::StreamCopy {
            ctx.prepare_groups(
                &args::StreamCopy {
                    params: &u,
                    sb: &b,
                    sa: &a,
                },
                [groups as u32, 1, 1],
            )
        } else {
            ctx.prepare_groups_as(kernel, &triad, [groups as u32, 1, 1])?
        };
        let mut fastest = f64::INFINITY;
        for r in 0..=reps {
            ctx.write(&a, &[0f32; 4]);
            let mut enc = ctx.encoder("stream");
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("stream"),
                    timestamp_writes: None,
                });
                d.record(&mut pass);
            }
            let t = Instant::now();
            ctx.submit_wait(enc)?;
            if r > 0 {
                fastest = fastest.min(t.elapsed().as_secs_f64());
            }
        }
        let got: Vec<f32> = ctx.read(&a, 0, n)?;
        let verified = got.iter().enumerate().all(|(i, &g)| {
            let want = if kernel == KernelId::StreamCopy {
                bv[i]
            } else {
                bv[i] + 0.5 * cv[i]
            };
            (g - want).abs() <= 1e-6 * want.abs().max(1.0)
        });
        let bytes_per_element = if kernel == KernelId::StreamCopy {
            8
        } else {
            12
        };
        let gbs = (bytes_per_element * n) as f64 / fastest / 1e9;
        if verified {
            best = best.max(gbs);
        }
        emit(&StreamShape {
            bench: "stream",
            shape,
            workgroup_size: wg,
            trips,
            bytes_per_element: bytes_per_element as u32,
            gbs,
            verified,
            device: ctx.describe(),
        });
    }
    if best == 0.0 {
        return Err(crate::error::Error::Gpu {
            context: "stream roofline".into(),
            message: "no probe shape wrote the right result: the device cuts or skips work".into(),
        });
    }
    Ok(best)
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
    pub precond: &'static str,
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
    preconds: &[Precond],
    emit_stream: impl FnMut(&StreamShape),
    mut emit: impl FnMut(&SolverBench),
) -> Result<Vec<SolverBench>> {
    // The roofline, in this process, right before the solver rows.
    // 15 M floats: one vec4 per invocation at 64 per workgroup stays under
    // 65535 workgroups.
    let stream = stream_roofline(ctx, 15 << 20, 5, emit_stream)?;
    // Warm-up once: drivers compile a pipeline at its first dispatch.
    {
        let pb = Problem::new(ProblemKind::Darcy2d, 16, 4)?;
        BatchedSolver::new(ctx, &pb, 1, CgParams::default(), None, false)?.solve(ctx, &[0.0; 4])?;
    }
    let mut out = Vec::new();
    for (&n, &precond) in sizes
        .iter()
        .flat_map(|n| preconds.iter().map(move |p| (n, p)))
    {
        let pb = Problem::new(ProblemKind::Darcy2d, n, 64)?;
        for &batch in batches {
            let cg = CgParams {
                rel_tol: 1e-5,
                max_iters: 20 * n as u32,
                chunk: 128,
                precond,
                ..Default::default()
            };
            let s = match BatchedSolver::new(ctx, &pb, batch, cg, None, false) {
                Ok(s) => s,
                // Sizes the multigrid shader refuses on this device are
                // skipped, so the other rows still come.
                Err(e) if precond == Precond::Multigrid => {
                    eprintln!("skipped n = {n}, batch {batch}, mg: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let xi = crate::rng::normals(7, crate::rng::streams::TRUTH, 0, batch * pb.d);
            let mut reps = 0;
            let mut iters = 0.0;
            let t = Instant::now();
            while reps == 0 || t.elapsed().as_secs_f64() < min_seconds {
                let info = s.solve(ctx, &xi)?;
                crate::physics::solver::check_converged(&info, "benchmark solve", &cg)?;
                iters += info.iter().map(|i| i.iters as f64).sum::<f64>();
                reps += 1;
            }
            let dt = t.elapsed().as_secs_f64();
            // The byte model is Jacobi-PCG's; a multigrid iteration moves
            // several times more (every level's smoothing), so no fraction.
            let bw = match precond {
                Precond::Jacobi => iters * cg_bytes_per_iter(&pb) / dt / 1e9,
                _ => f64::NAN,
            };
            let r = SolverBench {
                bench: "solver",
                problem: "darcy2d",
                precond: precond.name(),
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
    pub precond: &'static str,
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
    preconds: &[Precond],
    mut emit: impl FnMut(&ViBench),
) -> Result<Vec<ViBench>> {
    use crate::infer::vi::{fit, Family, FitSettings, ViEngine};
    let pb = Problem::new(ProblemKind::Darcy2d, n, d)?;
    let (_, y) = crate::physics::reference::simulate_data(&pb, 7);
    let mut out = Vec::new();
    let families = [
        Family::MeanField,
        Family::FullRank,
        Family::LowRank { rank: 8 },
    ];
    for (&precond, family) in preconds
        .iter()
        .flat_map(|p| families.iter().map(move |f| (p, *f)))
    {
        let mut s = FitSettings {
            family,
            samples,
            steps,
            report_every: steps,
            ..Default::default()
        };
        s.cg.precond = precond;
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
            precond: precond.name(),
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

/// One line of `pdevi bench mlp`.
#[derive(Debug, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MlpBench {
    /// Square product `size^3` (2 size^3 flops) against the FMA probe.
    Matmul {
        size: usize,
        seconds: f64,
        gflops: f64,
        fma_peak_gflops: f64,
        fraction_of_peak: f64,
        device: String,
    },
    /// Whole-network gradient, GPU (f32) against the f64 mirror:
    /// max |gpu - cpu| / max |cpu| over all parameters.
    Gradcheck {
        activation: &'static str,
        max_rel_err: f64,
        arch: String,
        batch: usize,
    },
    /// Training throughput (gather, forward, MSE, backward, Adam per step).
    Train {
        arch: String,
        batch: usize,
        steps: usize,
        seconds: f64,
        samples_per_s: f64,
        steps_per_s: f64,
        dispatches_per_step: usize,
        device: String,
    },
}

/// GFLOP/s of the FMA probe (8 independent vec4 chains per invocation).
pub fn fma_peak_gflops(ctx: &GpuContext) -> Result<f64> {
    use crate::nn::mlp::MlpParams;
    let groups = 256u32;
    let iters = 4096u32;
    let wg = ctx.workgroup_size(KernelId::FmaPeak);
    let out = ctx.storage("fma.out", (groups * wg) as u64 * 4)?;
    let p = MlpParams {
        k: iters,
        ..Default::default()
    };
    let u = ctx.uniform("fma.params", &p);
    let probe = ctx.prepare_groups(
        &args::FmaPeak {
            params: &u,
            xc: &out,
        },
        [groups, 1, 1],
    );
    let mut best = f64::INFINITY;
    for r in 0..3 {
        let mut enc = ctx.encoder("fma");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            probe.record(&mut pass);
        }
        let t = Instant::now();
        ctx.submit_wait(enc)?;
        if r > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    Ok((groups * wg) as f64 * iters as f64 * 64.0 / best / 1e9)
}

/// Best time of a square product C = A B of `size` (seconds).
pub fn matmul_seconds(ctx: &GpuContext, size: usize, min_seconds: f64) -> Result<f64> {
    use crate::nn::mlp::MlpParams;
    let n = size as u32;
    let bytes = (size * size * 4) as u64;
    let init: Vec<f32> = (0..size * size)
        .map(|i| ((i % 7) as f32 - 3.0) * 0.1)
        .collect();
    let a = ctx.upload("mm.a", &init)?;
    let b = ctx.upload("mm.b", &init)?;
    let c = ctx.storage("mm.c", bytes)?;
    let z = ctx.storage("mm.z", 16)?;
    let p = MlpParams {
        m: n,
        n,
        k: n,
        a_rs: n,
        a_cs: 1,
        b_rs: n,
        b_cs: 1,
        c_rs: n,
        ..Default::default()
    };
    let u = ctx.uniform("mm.params", &p);
    let product = ctx.prepare_as(
        ctx.matmul,
        &args::Matmul {
            params: &u,
            xa: &a,
            xb: &b,
            xc: &c,
            xz: &z,
        },
        [size, size],
    )?;
    let once = || -> Result<f64> {
        let mut enc = ctx.encoder("mm");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            product.record(&mut pass);
        }
        let t = Instant::now();
        ctx.submit_wait(enc)?;
        Ok(t.elapsed().as_secs_f64())
    };
    let first = once()?;
    let mut best = first;
    let mut spent = first;
    while spent < min_seconds {
        let t = once()?;
        best = best.min(t);
        spent += t;
    }
    Ok(best)
}

/// `pdevi bench mlp`: products, gradient checks per activation, training.
pub fn mlp(
    ctx: &GpuContext,
    sizes: &[usize],
    train_steps: usize,
    mut emit: impl FnMut(&MlpBench),
) -> Result<()> {
    use crate::nn::mlp::{Activation, Arch, Loss, Mlp, Workspace};
    let device = ctx.describe();
    for &s in sizes {
        // The peak is measured beside each product (same run, same state).
        let peak = fma_peak_gflops(ctx)?;
        let secs = matmul_seconds(ctx, s, if s >= 4096 { 0.0 } else { 1.0 })?;
        let gflops = 2.0 * (s as f64).powi(3) / secs / 1e9;
        emit(&MlpBench::Matmul {
            size: s,
            seconds: secs,
            gflops,
            fma_peak_gflops: peak,
            fraction_of_peak: gflops / peak,
            device: device.clone(),
        });
    }
    let batch = 16;
    for act in Activation::ALL {
        let arch = Arch::mlp(49, &[64, 64], act, 8);
        let p = arch.init(1);
        let x: Vec<f64> = crate::rng::normals(2, 0, 0, batch * 49);
        let t: Vec<f64> = crate::rng::normals(3, 0, 0, batch * 8);
        let tr = crate::cpu::nn::mlp::forward(&arch, &p, &x, batch);
        let y = &tr.a[arch.layers.len()];
        let dy: Vec<f64> = y
            .iter()
            .zip(&t)
            .map(|(a, b)| 2.0 * (a - b) / y.len() as f64)
            .collect();
        let (g, _) = crate::cpu::nn::mlp::backward(&arch, &p, &tr, &dy, batch);
        let net = Mlp::new(ctx, arch, Some(&p), 0)?;
        let ws = Workspace::new(ctx, &net, batch, Loss::Mse)?;
        ws.set_input(ctx, &x)?;
        ws.set_targets(ctx, &t)?;
        let mut enc = ctx.encoder("bench.gradcheck");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            ws.encode_forward(&mut pass);
            ws.encode_loss(&mut pass);
            ws.encode_backward(&mut pass, false);
        }
        ctx.submit_wait(enc)?;
        let gg = net.read_grad(ctx)?;
        let gmax = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = gg
            .iter()
            .zip(&g)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()))
            / gmax;
        emit(&MlpBench::Gradcheck {
            activation: act.name(),
            max_rel_err: err,
            arch: "49-64-64-8".into(),
            batch,
        });
    }
    // Training throughput on random data.
    let batch = 256;
    let rows = batch * 8;
    let arch = Arch::mlp(49, &[256, 256], Activation::Tanh, 128);
    let data = crate::nn::train::Dataset::new(
        crate::rng::normals(4, 0, 0, rows * 49),
        crate::rng::normals(5, 0, 0, rows * 128),
        49,
        128,
    )?;
    let mut net = Mlp::new(ctx, arch, None, 1)?;
    let epochs = train_steps.div_ceil(rows / batch).max(1);
    let s = crate::nn::train::TrainSettings {
        epochs,
        batch,
        lr: 1e-3,
        ..Default::default()
    };
    // Warm-up epoch, then the timed run.
    crate::nn::train::train(
        ctx,
        &mut net,
        &data,
        None,
        &crate::nn::train::TrainSettings {
            epochs: 1,
            ..s.clone()
        },
    )?;
    let rep = crate::nn::train::train(ctx, &mut net, &data, None, &s)?;
    emit(&MlpBench::Train {
        arch: "49-256-256-128".into(),
        batch,
        steps: rep.steps,
        seconds: rep.seconds,
        samples_per_s: rep.samples_per_s,
        steps_per_s: rep.steps as f64 / rep.seconds,
        dispatches_per_step: crate::nn::train::dispatches_per_step(&net),
        device,
    });
    Ok(())
}

/// One line of `pdevi bench mcmc`.
#[derive(Debug, serde::Serialize)]
pub struct McmcBench {
    pub bench: &'static str,
    pub problem: &'static str,
    pub n: usize,
    pub d: usize,
    pub chains: usize,
    pub sampler: &'static str,
    pub precondition: &'static str,
    pub warmup: usize,
    pub kept_per_chain: usize,
    pub acceptance: f64,
    pub step_size: f64,
    pub min_ess_bulk: f64,
    pub median_ess_bulk: f64,
    pub max_rhat: f64,
    pub sampling_seconds: f64,
    pub steps_per_s: f64,
    /// Min bulk ESS over xi per second of sampling (after warm-up).
    pub ess_per_s: f64,
    pub dispatches_per_step: usize,
    pub device: String,
}

/// Effective samples per second of pCN and MALA on darcy2d (data simulated
/// from a prior draw), `steps` per chain: half warm-up, half kept.
pub fn mcmc(
    ctx: &GpuContext,
    n: usize,
    d: usize,
    chains: usize,
    steps: usize,
    precondition: &str,
    mut emit: impl FnMut(&McmcBench),
) -> Result<Vec<McmcBench>> {
    use crate::infer::mcmc::{
        reference_for, sample_posterior, McmcSettings, Precondition, Sampler,
    };
    let precondition = Precondition::parse(precondition)?;
    let pb = Problem::new(ProblemKind::Darcy2d, n, d)?;
    let (_, y) = crate::physics::reference::simulate_data(&pb, 7);
    let cg = CgParams {
        warm_start: true,
        ..Default::default()
    };
    let (m, l, _) = reference_for(ctx, &pb, &pb.sensors, &y, cg, precondition, 30)?;
    let mut out = Vec::new();
    for sampler in [Sampler::Pcn, Sampler::Mala] {
        let s = McmcSettings {
            sampler,
            chains,
            warmup: steps / 2,
            samples: (steps - steps / 2).max(4),
            precondition,
            seed: 1,
            ..Default::default()
        };
        let r = sample_posterior(ctx, &pb, &pb.sensors, &y, cg, &s, (&m, &l), |_, _| {})?;
        let b = McmcBench {
            bench: "mcmc",
            problem: "darcy2d",
            n,
            d,
            chains,
            sampler: sampler.name(),
            precondition: precondition.name(),
            warmup: s.warmup,
            kept_per_chain: s.samples,
            acceptance: r.acceptance,
            step_size: r.step,
            min_ess_bulk: r.min_ess(),
            median_ess_bulk: r.median_ess(),
            max_rhat: r.max_rhat(),
            sampling_seconds: r.sampling_seconds,
            steps_per_s: (s.samples * s.thin) as f64 / r.sampling_seconds,
            ess_per_s: r.ess_per_second(),
            dispatches_per_step: r.dispatches_per_step,
            device: ctx.describe(),
        };
        emit(&b);
        out.push(b);
    }
    Ok(out)
}
