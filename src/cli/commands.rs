//! The commands behind the `pdevi` binary (`info`, `solve`, `simulate`,
//! `bench`), as library functions so examples and tests can call them.

use std::path::Path;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::output::fields::write_fields;
use crate::output::files::{ensure_dir, write_json};
use crate::output::io::{self, Observation};
use crate::output::plot::Painter;
use crate::physics::problem::ProblemArgs;
use crate::physics::sensors::{check_xi, obs_grid};
use crate::physics::solver::{check_converged, BatchedSolver, CgParams};

/// `pdevi info`: the chosen adapter and every adapter seen.
pub fn info() -> Result<String> {
    let ctx = GpuContext::new()?;
    let l = &ctx.limits;
    let mut s = String::new();
    s.push_str(&format!("adapter: {}\n", ctx.info.name));
    s.push_str(&format!("backend: {:?}\n", ctx.info.backend));
    s.push_str(&format!("type: {:?}\n", ctx.info.device_type));
    s.push_str(&format!(
        "driver: {} {}\n",
        ctx.info.driver, ctx.info.driver_info
    ));
    s.push_str(&format!(
        "limits: max_storage_buffer_binding_size {} B, max_buffer_size {} B, max_storage_buffers_per_shader_stage {}, max_compute_workgroup_storage_size {} B, max_compute_invocations_per_workgroup {}, max_compute_workgroups_per_dimension {}\n",
        l.max_storage_buffer_binding_size,
        l.max_buffer_size,
        l.max_storage_buffers_per_shader_stage,
        l.max_compute_workgroup_storage_size,
        l.max_compute_invocations_per_workgroup,
        l.max_compute_workgroups_per_dimension
    ));
    s.push_str(&format!(
        "host memory: {} total, {} available; a request is refused above half the total\n",
        crate::memory::fmt_bytes(crate::memory::host_total() as u128),
        crate::memory::fmt_bytes(crate::memory::host_available() as u128)
    ));
    let f = ctx.adapter.features();
    s.push_str(&format!(
        "optional features available (unused by default): shader_f64 {}, subgroup {}, timestamp_query {}\n",
        f.contains(wgpu::Features::SHADER_F64),
        f.contains(wgpu::Features::SUBGROUP),
        f.contains(wgpu::Features::TIMESTAMP_QUERY)
    ));
    s.push_str(
        "select with PDEVI_BACKEND=vulkan|metal|dx12|gl and PDEVI_ADAPTER=<name substring>\n",
    );
    Ok(s)
}

/// A device for a command's figures when the command needs none otherwise;
/// `None` (said in one line) where there is no adapter, and the figures
/// are drawn by the CPU mirror.
pub fn figure_context() -> Option<GpuContext> {
    match GpuContext::new() {
        Ok(ctx) => Some(ctx),
        Err(e) => {
            eprintln!("note: figures drawn on the CPU: {e}");
            None
        }
    }
}

/// `pdevi solve`: forward solve for `xi` (or z = 0), files into `out`.
pub fn solve(
    args: &ProblemArgs,
    xi_file: Option<&Path>,
    cg: CgParams,
    out: &Path,
) -> Result<serde_json::Value> {
    let pb = args.build()?;
    let xi = match xi_file {
        Some(p) => {
            let v = io::read_vector(p)?;
            check_xi(&v, pb.d, p)?;
            v
        }
        None => vec![0.0; pb.d],
    };
    let _lock = crate::output::files::OutLock::acquire(out)?;
    let ctx = GpuContext::new()?;
    let t = Instant::now();
    let s = BatchedSolver::new(&ctx, &pb, 1, cg, None, false)?;
    let info = s.solve(&ctx, &xi)?;
    check_converged(&info, "forward solve", &cg)?;
    let seconds = t.elapsed().as_secs_f64();
    let u = s.read_u(&ctx)?;
    let field = s.read_z(&ctx)?;
    write_fields(
        Painter::Gpu(&ctx),
        out,
        &pb,
        &field,
        &u,
        "",
        "forward solve",
    )?;
    let summary = serde_json::json!({
        "problem": pb.kind.name(),
        "n": pb.n,
        "d": pb.d,
        "xi_source": xi_file.map(|p| p.display().to_string()).unwrap_or_else(|| "zero (z = 0)".into()),
        "cg": info[0],
        "max_u": u.iter().cloned().fold(f64::MIN, f64::max),
        "seconds": seconds,
        "device": ctx.describe(),
    });
    write_json(&out.join("solve.json"), &summary)?;
    Ok(summary)
}

/// `pdevi simulate`: draw (or read) xi, solve in f64 (the data should not
/// carry the f32 solver's error), add noise, write the observation CSV and
/// the truth files.
pub fn simulate(
    args: &ProblemArgs,
    seed: u64,
    xi_file: Option<&Path>,
    noise: Option<f64>,
    out: &Path,
) -> Result<serde_json::Value> {
    let pb = args.build()?;
    let sigma = noise.unwrap_or(pb.sigma_n);
    if !(sigma.is_finite() && sigma >= 0.0) {
        return Err(Error::setting(
            "noise",
            sigma,
            "must be a finite, non-negative standard deviation",
        ));
    }
    let xi = match xi_file {
        Some(p) => {
            let v = io::read_vector(p)?;
            check_xi(&v, pb.d, p)?;
            v
        }
        None => crate::rng::normals(seed, crate::rng::streams::TRUTH, 0, pb.d),
    };
    ensure_dir(out)?;
    let fwd = crate::physics::reference::forward(&pb, &xi, 1e-12, 100_000);
    if fwd.state.status != crate::gpu::layout::status::CONVERGED {
        return Err(Error::NoConvergence(format!(
            "simulate: the f64 reference solve stopped after {} iterations (status {}); is xi extreme?",
            fwd.state.iters, fwd.state.status
        )));
    }
    let eps = crate::rng::normals(seed, crate::rng::streams::NOISE, 0, pb.sensors.len());
    let h = pb.h();
    let obs: Vec<Observation> = pb
        .sensors
        .iter()
        .zip(&eps)
        .map(|(&k, e)| {
            let (i, j) = pb.unknown_node(k);
            Observation {
                i,
                j,
                x: i as f64 * h,
                y: j as f64 * h,
                value: fwd.u[k] + sigma * e,
            }
        })
        .collect();
    let csv = out.join("obs.csv");
    io::write_observations(&csv, obs_grid(&pb).dim, &obs)?;
    io::write_npy(&out.join("xi_true.npy"), &[pb.d], &xi)?;
    // The truth's figures on the GPU's rasteriser when there is a device.
    let ctx = figure_context();
    write_fields(
        Painter::of(ctx.as_ref()),
        out,
        &pb,
        &fwd.field,
        &fwd.u,
        "_true",
        "truth",
    )?;
    let summary = serde_json::json!({
        "problem": pb.kind.name(),
        "n": pb.n,
        "d": pb.d,
        "seed": seed,
        "noise": sigma,
        "sensors": obs.len(),
        "observations": csv.display().to_string(),
        "xi_source": xi_file.map(|p| p.display().to_string()).unwrap_or_else(|| format!("prior draw, seed {seed}")),
    });
    write_json(&out.join("simulate.json"), &summary)?;
    Ok(summary)
}
