//! Benchmarks users run on their own GPU (`pdevi bench ...`): one JSON
//! object per line on stdout.

use std::time::Instant;

use crate::error::Result;
use crate::gpu::layout::PdeParams;
use crate::gpu::{args, GpuContext, KernelId};
use crate::physics::problem::{Problem, ProblemKind};
use crate::physics::solver::{BatchedSolver, CgParams, Precond, SolverLayout};

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

/// Bytes one multigrid-preconditioned solve of `iters` CG iterations moves
/// per system (darcy2d), by the same rule as [`cg_bytes_per_iter`]: every
/// array a pass touches is read or written once per pass, neighbours
/// reused (the compulsory traffic of shaders/physics/multigrid.wgsl; the
/// column walks re-read a third of each window, so the real traffic is
/// higher). With `nu` a level's unknowns and `nc` the cells:
///
/// * an iteration: the CG's apply, update and direction (11 nu + nc), and
///   the V-cycle: on level 0 the sweep from zero, the residual pass, the
///   restriction, the prolongation and the last sweep (13 nu + 2 nc); on
///   each coarse level the same with its 9-point stencil read twice
///   (33 nu_l); on the coarsest its dense factor and vectors
///   (nu_L^2 + 5 nu_L);
/// * the start: the copies and the residual (9 nu + nc), one V-cycle and
///   the copy of z (2 nu);
/// * the setup (forward solves): level 0's diagonal (nu + nc), each coarse
///   level's elements from the finer level's (kappa for level 1), its
///   stencil from them and its diagonal, and the coarsest dense factor.
pub fn mg_bytes_per_solve(n: usize, iters: f64) -> f64 {
    let m = crate::physics::solver::multigrid_levels(n);
    let nu: Vec<f64> = m.iter().map(|&m| (m * m) as f64).collect();
    let nc = (n * n) as f64;
    let last = nu.len() - 1;
    let mut coarse = 0.0;
    for (l, &v) in nu.iter().enumerate().skip(1) {
        coarse += if l == last { v * v + 5.0 * v } else { 33.0 * v };
    }
    if last == 0 {
        // One level: the dense solve of level 0 itself.
        coarse = nu[0] * nu[0];
    }
    let vcycle = 13.0 * nu[0] + 2.0 * nc + coarse;
    let iter = 11.0 * nu[0] + nc + vcycle;
    let start = 11.0 * nu[0] + nc + vcycle;
    let mut setup = nu[0] + nc;
    for (l, &v) in nu.iter().enumerate().skip(1) {
        let cells = (n >> l) as f64;
        let fine = if l == 1 {
            nc
        } else {
            16.0 * (2.0 * cells).powi(2)
        };
        setup += fine + 16.0 * cells * cells; // elements
        setup += 16.0 * cells * cells + 9.0 * v; // stencil
        setup += 2.0 * v; // diagonal
    }
    setup += 2.0 * nu[last] * nu[last];
    4.0 * (setup + start + iters * iter)
}

/// One solver benchmark configuration's result.
#[derive(Debug, serde::Serialize)]
pub struct SolverBench {
    pub bench: &'static str,
    pub problem: &'static str,
    pub precond: &'static str,
    /// Multigrid's layout as built (narrow: a workgroup per system; wide:
    /// each system over many workgroups); "-" for Jacobi.
    pub layout: &'static str,
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
#[allow(
    clippy::too_many_arguments,
    reason = "the bench's axes and its two output streams, each a CLI flag"
)]
pub fn solver(
    ctx: &GpuContext,
    sizes: &[usize],
    batches: &[usize],
    min_seconds: f64,
    preconds: &[Precond],
    layouts: &[SolverLayout],
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
        // Jacobi has one layout.
        let lays: &[SolverLayout] = if precond == Precond::Jacobi {
            &[SolverLayout::Narrow]
        } else {
            layouts
        };
        for (&batch, &layout) in batches
            .iter()
            .flat_map(|b| lays.iter().map(move |l| (b, l)))
        {
            let cg = CgParams {
                rel_tol: 1e-5,
                max_iters: 20 * n as u32,
                chunk: 128,
                precond,
                layout,
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
            // One untimed solve: llvmpipe compiles a pipeline per set of
            // uniform values at its first dispatch, which took seconds.
            let info = s.solve(ctx, &xi)?;
            crate::physics::solver::check_converged(&info, "benchmark solve", &cg)?;
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
            let bw = match precond {
                Precond::Jacobi => iters * cg_bytes_per_iter(&pb) / dt / 1e9,
                Precond::Multigrid => {
                    let per = iters / (reps * batch) as f64;
                    mg_bytes_per_solve(n, per) * (reps * batch) as f64 / dt / 1e9
                }
                // Whichever the solver chose: no model to apply.
                Precond::Auto => f64::NAN,
            };
            let r = SolverBench {
                bench: "solver",
                problem: "darcy2d",
                precond: precond.name(),
                layout: match (precond, s.is_wide()) {
                    (Precond::Jacobi, _) => "-",
                    (_, true) => "wide",
                    (_, false) => "narrow",
                },
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
    /// The noise rule's mean CG tolerance (null: fixed at 1e-5).
    pub mean_cg_tol: Option<f64>,
    pub dispatches_per_step: usize,
    pub device: String,
    /// GPU time per section of a step (null where the device has no
    /// timestamps inside encoders).
    pub profile: serde_json::Value,
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
        // Timestamps between the sections of every timed step (no extra read-back).
        eng.profiler = crate::gpu::profile::Profiler::new(ctx);
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
            mean_cg_tol: r.mean_cg_tol,
            dispatches_per_step: eng.dispatches_per_step(),
            device: ctx.describe(),
            profile: eng
                .profiler
                .as_ref()
                .map_or(serde_json::Value::Null, |p| p.report().0),
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

/// Settings of `pdevi bench amortised`.
#[derive(Clone, Debug)]
pub struct AmortisedBench {
    /// darcy2d or poisson1d.
    pub problem: String,
    pub n: usize,
    pub d: usize,
    /// Training pairs simulated for the encoder and the surrogate.
    pub count: usize,
    /// Training epochs of the encoder and of the surrogate.
    pub epochs: usize,
    /// Held-out problems (prior draws with seeds `100_000 + k`).
    pub held_out: usize,
    /// VI steps of the semi-amortised refinement.
    pub refine: usize,
    /// Steps of exact VI (the darcy2d reference runs three times as many).
    pub vi_steps: usize,
    /// Steps of VI with the surrogate (from the prior, as `pdevi run --forward surrogate:`).
    pub surrogate_steps: usize,
    pub seed: u64,
}

fn median(v: &[f64]) -> f64 {
    let mut r = v.to_vec();
    r.sort_by(f64::total_cmp);
    match r.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => r[n / 2],
        n => 0.5 * (r[n / 2 - 1] + r[n / 2]),
    }
}

/// Accumulated accuracy of one method against the reference posteriors.
#[derive(Default)]
struct Accuracy {
    seconds: Vec<f64>,
    sq_err: Vec<f64>,
    ratios: Vec<f64>,
    inside: usize,
    coords: usize,
}

impl Accuracy {
    /// Score `(mean, cov)` against the reference `(rm, rcov)` and the truth.
    fn add(&mut self, mean: &[f64], cov: &[f64], rm: &[f64], rcov: &[f64], truth: &[f64]) {
        // z of the central 90 % interval.
        const Z90: f64 = 1.644_853_626_951_472_2;
        let d = mean.len();
        for i in 0..d {
            let sd = cov[i * d + i].max(0.0).sqrt();
            let rsd = rcov[i * d + i].max(0.0).sqrt();
            self.sq_err.push(((mean[i] - rm[i]) / rsd).powi(2));
            self.ratios.push(sd / rsd);
            if (truth[i] - mean[i]).abs() <= Z90 * sd {
                self.inside += 1;
            }
            self.coords += 1;
        }
    }

    fn per_inference(&self) -> f64 {
        self.seconds.iter().sum::<f64>() / self.seconds.len().max(1) as f64
    }

    fn rms_err(&self) -> f64 {
        (self.sq_err.iter().sum::<f64>() / self.sq_err.len().max(1) as f64).sqrt()
    }

    fn median_ratio(&self) -> f64 {
        median(&self.ratios)
    }

    /// Median of |mean - ref mean| / ref sd over coordinates (the RMS is
    /// dominated by the best-constrained coordinates).
    fn median_err(&self) -> f64 {
        median(&self.sq_err.iter().map(|e| e.sqrt()).collect::<Vec<f64>>())
    }

    fn coverage(&self) -> f64 {
        self.inside as f64 / self.coords.max(1) as f64
    }
}

/// `pdevi bench amortised`: when does amortisation pay for itself? In one
/// process on one device: the seconds to simulate a training set and train
/// an encoder (NPE) and a surrogate, the seconds per inference of the
/// encoder, encoder + refinement, VI with the surrogate, exact VI and
/// Laplace on held-out prior problems, their accuracy against a reference
/// posterior (poisson1d: the exact one; darcy2d: exact VI with three times
/// the steps from the Laplace start, another seed), and the number of
/// inferences after which each amortised method has paid for its training
/// against exact VI (`null` when it is not faster per inference). `emit`
/// sees one JSON object per method and the summary, which is returned.
pub fn amortised(
    ctx: &GpuContext,
    o: &AmortisedBench,
    mut emit: impl FnMut(&serde_json::Value),
) -> Result<serde_json::Value> {
    use crate::api;
    use crate::cli::amortised::{refine, AmortisedSettings};
    use crate::error::Error;
    use crate::infer::amortised::{train_encoder, EncoderSettings};
    use crate::infer::surrogate::{train_surrogate, SurrogateSettings, SurrogateVi, Target};
    use crate::infer::vi::{Family, FitSettings, Start};
    use crate::nn::dataset::SimSet;
    use crate::nn::mlp::Activation;
    use serde_json::json;

    const HELD_OUT_SEED: u64 = 100_000;
    if o.held_out == 0 || o.vi_steps == 0 || o.surrogate_steps == 0 || o.epochs == 0 {
        return Err(Error::setting(
            "held-out/vi-steps/surrogate-steps/epochs",
            format!(
                "{}/{}/{}/{}",
                o.held_out, o.vi_steps, o.surrogate_steps, o.epochs
            ),
            "need at least one of each",
        ));
    }
    // The held-out problems (and the warm-up one) are `api::simulate(pb,
    // 100_000 + k)`, i.e. stream TRUTH, step 0 of seeds 100_000..: the
    // training set uses steps 0..count of `seed` itself.
    if (HELD_OUT_SEED..=HELD_OUT_SEED + o.held_out as u64).contains(&o.seed) {
        return Err(Error::setting(
            "seed",
            o.seed,
            format!(
                "seeds {HELD_OUT_SEED}..={} draw the held-out problems",
                HELD_OUT_SEED + o.held_out as u64
            ),
        ));
    }
    let kind = ProblemKind::parse(&o.problem)?;
    let pb = Problem::new(kind, o.n, o.d)?;
    let d = pb.d;
    // As `pdevi train encoder --family auto`.
    let family = if d <= 64 {
        Family::FullRank
    } else {
        Family::MeanField
    };
    let device = ctx.describe();

    // 1. The training set (as `pdevi simulate --count`).
    let sim_cg = CgParams::auto(false);
    let set = SimSet::simulate(ctx, &pb, o.count, o.seed, false, sim_cg, 64, |_, _| {})?;
    let simulate_seconds = set.seconds;
    eprintln!("simulated {} pairs in {simulate_seconds:.2} s", o.count);

    // 2. Encoder and surrogate.
    let hidden = vec![128, 128];
    let es = EncoderSettings {
        family,
        hidden: hidden.clone(),
        act: Activation::Gelu,
        epochs: o.epochs,
        batch: 64,
        lr: 3e-3,
        lr_final: 0.05,
        noise: pb.sigma_n,
        seed: o.seed,
        quiet: true,
        ..Default::default()
    };
    let t = Instant::now();
    let (enc, etr) = train_encoder(ctx, &set, &es)?;
    let encoder_seconds = t.elapsed().as_secs_f64();
    eprintln!("encoder trained in {encoder_seconds:.2} s");
    let ss = SurrogateSettings {
        target: Target::Sensors,
        hidden: hidden.clone(),
        act: Activation::Gelu,
        variance: false,
        epochs: o.epochs,
        batch: 64,
        lr: 3e-3,
        lr_final: 0.05,
        seed: o.seed,
        quiet: true,
        ..Default::default()
    };
    let t = Instant::now();
    let (sur, srep) = train_surrogate(ctx, &set, &ss)?;
    let surrogate_seconds = t.elapsed().as_secs_f64();
    eprintln!("surrogate trained in {surrogate_seconds:.2} s");

    // 3. Per-inference settings.
    let cg = CgParams::auto(true);
    let gn_iters = 30;
    let vi_fit = |steps: usize, seed: u64| api::ViSettings {
        fit: FitSettings {
            family,
            samples: 16,
            steps,
            lr: 0.05,
            lr_final: 0.1,
            seed,
            cg,
            report_every: 10,
            tol_start: None,
            tol_noise: None,
            resume: None,
            first_step: 0,
            profile: false,
        },
        start: Start::Laplace { gn_iters },
    };
    let rs = AmortisedSettings {
        encoder: Default::default(),
        obs: None,
        obs_dir: None,
        out: Default::default(),
        refine: o.refine,
        samples: 16,
        lr: 0.01,
        lr_final: 0.3,
        seed: o.seed,
        truth: None,
        predictive_samples: 0,
        quiet: true,
    };
    let sfit = |steps: usize| FitSettings {
        family,
        samples: 16,
        steps,
        lr: 0.05,
        lr_final: 0.05,
        seed: o.seed,
        cg,
        report_every: 50,
        tol_start: None,
        tol_noise: None,
        resume: None,
        first_step: 0,
        profile: false,
    };
    let sur_vi = |y: &[f64], steps: usize| -> Result<(Vec<f64>, Vec<f64>)> {
        let mut v = SurrogateVi::new(
            ctx,
            &sur,
            family,
            16,
            &pb.sensors,
            y,
            pb.sigma_n,
            false,
            o.seed,
        )?;
        let r = v.fit(ctx, &sfit(steps), |_, _| {})?;
        Ok(family.moments(d, &r.theta))
    };

    // Warm-up on one more prior problem (pipelines compile at first use),
    // with short runs; not scored.
    let t = Instant::now();
    {
        let w = api::simulate(&pb, HELD_OUT_SEED + o.held_out as u64);
        let p = enc.posteriors(ctx, std::slice::from_ref(&w.obs.y))?;
        if o.refine > 0 {
            refine(ctx, &pb, &enc, &p[0], &w.obs.y, 5, &rs, cg)?;
        }
        api::vi(ctx, &pb, &w.obs, &vi_fit(5, o.seed))?;
        sur_vi(&w.obs.y, 5)?;
        api::laplace(ctx, &pb, &w.obs, cg, gn_iters)?;
    }
    let warmup_seconds = t.elapsed().as_secs_f64();

    let data: Vec<api::Simulated> = (0..o.held_out)
        .map(|k| api::simulate(&pb, HELD_OUT_SEED + k as u64))
        .collect();
    let ys: Vec<Vec<f64>> = data.iter().map(|x| x.obs.y.clone()).collect();
    let t = Instant::now();
    let posts = enc.posteriors(ctx, &ys)?;
    let encoder_batch_seconds = t.elapsed().as_secs_f64();

    let names = [
        "reference",
        "encoder",
        "encoder+refine",
        "surrogate_vi",
        "vi",
        "laplace",
    ];
    let mut acc: Vec<Accuracy> = names.iter().map(|_| Accuracy::default()).collect();
    let mut single = Vec::new();
    let reference_name = match kind {
        ProblemKind::Poisson1d => "exact (analytic linear-Gaussian posterior)".to_string(),
        ProblemKind::Darcy2d => format!(
            "exact VI, {} family, {} steps (3 x --vi-steps) from the Laplace start, seed {}",
            family.name(),
            3 * o.vi_steps,
            o.seed + 1
        ),
    };
    for (k, x) in data.iter().enumerate() {
        let t = Instant::now();
        let (rm, rc) = match kind {
            ProblemKind::Poisson1d => {
                let e = api::exact(&pb, &x.obs)?;
                (e.mean, e.cov)
            }
            ProblemKind::Darcy2d => {
                let e = api::vi(ctx, &pb, &x.obs, &vi_fit(3 * o.vi_steps, o.seed + 1))?;
                (e.mean, e.cov)
            }
        };
        acc[0].seconds.push(t.elapsed().as_secs_f64());
        acc[0].add(&rm, &rc, &rm, &rc, &x.truth);

        let t = Instant::now();
        let p1 = enc.posteriors(ctx, std::slice::from_ref(&x.obs.y))?;
        single.push(t.elapsed().as_secs_f64());
        drop(p1);
        acc[1]
            .seconds
            .push(encoder_batch_seconds / o.held_out as f64);
        acc[1].add(&posts[k].mean, &posts[k].cov, &rm, &rc, &x.truth);

        let t = Instant::now();
        let (m, c) = if o.refine > 0 {
            let (m, c, _) = refine(ctx, &pb, &enc, &posts[k], &x.obs.y, o.refine, &rs, cg)?;
            (m, c)
        } else {
            (posts[k].mean.clone(), posts[k].cov.clone())
        };
        // The encoder's share (batched) plus the refinement.
        acc[2]
            .seconds
            .push(t.elapsed().as_secs_f64() + encoder_batch_seconds / o.held_out as f64);
        acc[2].add(&m, &c, &rm, &rc, &x.truth);

        let t = Instant::now();
        let (m, c) = sur_vi(&x.obs.y, o.surrogate_steps)?;
        acc[3].seconds.push(t.elapsed().as_secs_f64());
        acc[3].add(&m, &c, &rm, &rc, &x.truth);

        let t = Instant::now();
        let v = api::vi(ctx, &pb, &x.obs, &vi_fit(o.vi_steps, o.seed))?;
        acc[4].seconds.push(t.elapsed().as_secs_f64());
        acc[4].add(&v.mean, &v.cov, &rm, &rc, &x.truth);

        let t = Instant::now();
        let l = api::laplace(ctx, &pb, &x.obs, cg, gn_iters)?;
        acc[5].seconds.push(t.elapsed().as_secs_f64());
        acc[5].add(&l.mean, &l.cov, &rm, &rc, &x.truth);
        eprintln!("held-out problem {}/{} done", k + 1, o.held_out);
    }
    let encoder_single = single.iter().sum::<f64>() / single.len().max(1) as f64;

    let mut rows = Vec::new();
    for (name, a) in names.iter().zip(&acc) {
        let mut row = json!({
            "bench": "amortised",
            "method": name,
            "seconds_per_inference": a.per_inference(),
            "mean_err_sd": a.rms_err(),
            "mean_err_sd_median": a.median_err(),
            "sd_ratio": a.median_ratio(),
            "coverage90": a.coverage(),
            "problems": o.held_out,
        });
        if *name == "encoder" {
            row["seconds_single"] = json!(encoder_single);
            row["seconds_batch"] = json!(encoder_batch_seconds);
        }
        if *name == "encoder+refine" {
            row["refine_steps"] = json!(o.refine);
        }
        if *name == "surrogate_vi" {
            row["steps"] = json!(o.surrogate_steps);
        }
        if *name == "vi" {
            row["steps"] = json!(o.vi_steps);
        }
        emit(&row);
        rows.push(row);
    }

    // 5. Break-even against exact VI (and, for the record, against Laplace).
    let per = |i: usize| acc[i].per_inference();
    let break_even = |fixed: f64, baseline: f64, method: f64| -> serde_json::Value {
        let gain = baseline - method;
        if gain > 0.0 {
            json!(fixed / gain)
        } else {
            serde_json::Value::Null
        }
    };
    let enc_fixed = simulate_seconds + encoder_seconds;
    let sur_fixed = simulate_seconds + surrogate_seconds;
    let against = |baseline: f64| {
        json!({
            "encoder": break_even(enc_fixed, baseline, per(1)),
            "encoder_single": break_even(enc_fixed, baseline, encoder_single),
            "encoder+refine": break_even(enc_fixed, baseline, per(2)),
            "surrogate_vi": break_even(sur_fixed, baseline, per(3)),
        })
    };
    let summary = json!({
        "bench": "amortised",
        "summary": true,
        "problem": kind.name(), "n": pb.n, "d": d, "sensors": pb.sensors.len(),
        "sigma_n": pb.sigma_n,
        "reference": reference_name,
        "training": {
            "simulate_seconds": simulate_seconds,
            "encoder_seconds": encoder_seconds,
            "encoder_epochs_run": etr.reports.iter().map(|r| r.epochs).collect::<Vec<usize>>(),
            "encoder_best_val_loss": etr.reports.iter().map(|r| r.val_loss.get(r.best_epoch).copied().unwrap_or(f64::NAN)).collect::<Vec<f64>>(),
            "surrogate_seconds": surrogate_seconds,
            "surrogate_epochs_run": srep.epochs,
            "surrogate_best_val_loss": srep.val_loss.get(srep.best_epoch).copied().unwrap_or(f64::NAN),
            "encoder_total_seconds": enc_fixed,
            "surrogate_total_seconds": sur_fixed,
        },
        "seconds_per_inference": names.iter().zip(&acc).map(|(n, a)| (n.to_string(), json!(a.per_inference()))).collect::<serde_json::Map<String, serde_json::Value>>(),
        "break_even_vs_vi": against(per(4)),
        "break_even_vs_laplace": against(per(5)),
        "warmup_seconds": warmup_seconds,
        "device": device,
        "settings": {
            "count": o.count, "epochs": o.epochs, "held_out": o.held_out,
            "held_out_seeds": format!("{}..{}", HELD_OUT_SEED, HELD_OUT_SEED + o.held_out as u64),
            "refine": o.refine, "vi_steps": o.vi_steps, "surrogate_steps": o.surrogate_steps,
            "seed": o.seed, "family": family.name(), "rank": family.rank(),
            "hidden": hidden, "activation": "gelu", "train_batch": 64, "train_lr": 3e-3,
            "samples": 16, "vi_lr": [0.05, 0.1], "refine_lr": [0.01, 0.3],
            "surrogate_vi_lr": 0.05, "surrogate_vi_start": "prior",
            "vi_start": format!("laplace (gn_iters {gn_iters})"),
            "cg_tol": cg.rel_tol, "precond": "auto",
        },
    });
    emit(&summary);

    // The table on stderr.
    let f = |v: f64| {
        if v.is_finite() {
            format!("{v:.3}")
        } else {
            "-".into()
        }
    };
    let secs = |v: f64| {
        if v < 0.01 {
            format!("{:.2} ms", v * 1e3)
        } else {
            format!("{v:.3} s")
        }
    };
    eprintln!();
    eprintln!(
        "{} n = {} d = {}, {} held-out problems; reference: {reference_name}; device: {device}",
        kind.name(),
        pb.n,
        d,
        o.held_out
    );
    eprintln!();
    eprintln!(
        "| method | s / inference | mean err (ref sd, RMS) | mean err (ref sd, median) | sd ratio (median) | coverage 90 % |"
    );
    eprintln!("|---|---|---|---|---|---|");
    for (name, a) in names.iter().zip(&acc) {
        let label = match *name {
            "encoder" => format!(
                "encoder (batch of {}; single {})",
                o.held_out,
                secs(encoder_single)
            ),
            "encoder+refine" => format!("encoder + {} refine steps", o.refine),
            "surrogate_vi" => format!("surrogate VI ({} steps, prior start)", o.surrogate_steps),
            "vi" => format!("exact VI ({} steps, Laplace start)", o.vi_steps),
            _ => name.to_string(),
        };
        eprintln!(
            "| {label} | {} | {} | {} | {} | {} |",
            secs(a.per_inference()),
            f(a.rms_err()),
            f(a.median_err()),
            f(a.median_ratio()),
            f(a.coverage())
        );
    }
    let be = |v: &serde_json::Value| match v.as_f64() {
        Some(x) => format!("{:.0} ({x:.2})", x.ceil()),
        None => "never".into(),
    };
    let (bv, bl) = (
        &summary["break_even_vs_vi"],
        &summary["break_even_vs_laplace"],
    );
    eprintln!();
    eprintln!("| amortised method | training cost (simulate + train) | break-even vs exact VI | vs Laplace |");
    eprintln!("|---|---|---|---|");
    for (key, fixed) in [
        ("encoder", enc_fixed),
        ("encoder_single", enc_fixed),
        ("encoder+refine", enc_fixed),
        ("surrogate_vi", sur_fixed),
    ] {
        eprintln!(
            "| {key} | {fixed:.2} s ({simulate_seconds:.2} + {:.2}) | {} | {} |",
            fixed - simulate_seconds,
            be(&bv[key]),
            be(&bl[key])
        );
    }
    Ok(summary)
}

/// One line of `pdevi bench render`.
#[derive(Debug, serde::Serialize)]
pub struct RenderBench {
    pub bench: &'static str,
    /// `figure` (a whole single-map figure: layout, map, colour bar, markers,
    /// text, no PNG encoding), `summary` (four maps), `frame` (a live frame:
    /// moments of q on the GPU, render, read-back) or `elbo_step`.
    pub what: &'static str,
    /// `gpu` or `cpu` (the mirror).
    pub painter: &'static str,
    pub n: usize,
    pub d: usize,
    pub count: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub device: String,
}

/// Rendering 200 posterior panels against the ELBO steps that made them:
/// figures on the GPU and on the CPU mirror, live frames, and ELBO steps
/// (full-rank, S = 16) at the same size.
pub fn render(
    ctx: &GpuContext,
    n: usize,
    d: usize,
    count: usize,
    mut emit: impl FnMut(&RenderBench),
) -> Result<Vec<RenderBench>> {
    use crate::infer::vi::{fit, Family, FitSettings, ViEngine};
    use crate::output::plot::{panels_image, Field2, Painter, Panel};
    let pb = Problem::new(ProblemKind::Darcy2d, n, d)?;
    let (xi, y) = crate::physics::reference::simulate_data(&pb, 7);
    let field = pb.field(&xi);
    let sensors = pb.sensor_points();
    let mut out = Vec::new();
    let mut push = |what, painter, count: usize, seconds: f64, out: &mut Vec<RenderBench>| {
        let b = RenderBench {
            bench: "render",
            what,
            painter,
            n,
            d,
            count,
            seconds,
            per_second: count as f64 / seconds,
            device: ctx.describe(),
        };
        emit(&b);
        out.push(b);
    };
    let one = [Panel {
        markers: &sensors,
        ..Panel::new("posterior mean z", Field2::cells(&field, n, n))
    }];
    let four: Vec<Panel> = ["truth z", "posterior mean z", "posterior std z", "|error|"]
        .iter()
        .map(|t| Panel {
            markers: &sensors,
            ..Panel::new(*t, Field2::cells(&field, n, n))
        })
        .collect();
    // First use builds the render pipelines: not timed.
    panels_image(Painter::Gpu(ctx), "warm-up", &one)?;
    for (name, painter) in [("gpu", Painter::Gpu(ctx)), ("cpu", Painter::Cpu)] {
        let t = Instant::now();
        for k in 0..count {
            panels_image(painter, &format!("figure {k}"), &one)?;
        }
        push("figure", name, count, t.elapsed().as_secs_f64(), &mut out);
        let figures = count.div_ceil(4);
        let t = Instant::now();
        for k in 0..figures {
            panels_image(painter, &format!("summary {k}"), &four)?;
        }
        push(
            "summary",
            name,
            4 * figures,
            t.elapsed().as_secs_f64(),
            &mut out,
        );
    }
    // ELBO steps and live frames of the same engine.
    let s = FitSettings {
        family: Family::FullRank,
        samples: 16,
        steps: 20,
        report_every: 20,
        ..Default::default()
    };
    let mut eng = ViEngine::new(ctx, &pb, s.family, s.samples, &pb.sensors, &y, 0, s.cg)?;
    eng.step(ctx, 0, 1e-3);
    ctx.wait()?;
    let mut good = Vec::new();
    let r = fit(ctx, &mut eng, &s, &mut good, |_, _| {})?;
    push("elbo_step", "gpu", s.steps, r.seconds, &mut out);
    let live = crate::output::live::LiveFields::for_engine(ctx, &eng)?;
    let layout = crate::output::live::FrameLayout::for_problem(&pb);
    let trace: Vec<f64> = r.trace.iter().map(|t| t.1).collect();
    let unit = glam::Vec4::new(0.0, 0.0, 1.0, 1.0);
    crate::output::live::render_frame(ctx, &live, &layout, 0, ("ELBO", &trace), unit)?;
    let frames = count.div_ceil(10);
    let t = Instant::now();
    for k in 0..frames {
        crate::output::live::render_frame(ctx, &live, &layout, k, ("ELBO", &trace), unit)?;
    }
    push("frame", "gpu", frames, t.elapsed().as_secs_f64(), &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multigrid_byte_model() {
        // n = 8: levels of 7^2 and 3^2 unknowns, 64 cells. By hand: the
        // setup 950 floats, the start 1494 and each iteration 1494.
        assert_eq!(mg_bytes_per_solve(8, 0.0), 4.0 * (950.0 + 1494.0));
        assert_eq!(
            mg_bytes_per_solve(8, 2.0) - mg_bytes_per_solve(8, 1.0),
            4.0 * 1494.0
        );
        // An iteration moves 2-4 Jacobi iterations' bytes at n = 64 (the
        // V-cycle's fine-level passes dominate).
        let pb = Problem::new(ProblemKind::Darcy2d, 64, 4).expect("darcy2d n = 64");
        let per = mg_bytes_per_solve(64, 11.0) - mg_bytes_per_solve(64, 10.0);
        let ratio = per / cg_bytes_per_iter(&pb);
        assert!(
            (2.0..4.0).contains(&ratio),
            "multigrid / Jacobi bytes per iteration {ratio}"
        );
    }
}
