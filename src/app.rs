//! The commands behind the `pdevi` binary (`info`, `solve`, `simulate`,
//! `bench`), as library functions so examples and tests can call them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::io::{self, ObsGrid, Observation};
use crate::plot::{self, Field2, Series};
use crate::problem::{Problem, ProblemKind};
use crate::solver::{check_converged, BatchedSolver, CgParams};

/// Create `dir` (and parents).
/// A progress bar of `len` units (hidden when `quiet`); `units` is the
/// rest of the template after the position, e.g. `"steps  {per_sec}  {msg}"`.
pub fn progress_bar(len: usize, quiet: bool, units: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {units}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

pub fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// Write pretty JSON.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Format {
        path: path.into(),
        message: e.to_string(),
    })?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

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

/// Check a latent vector's length and values.
pub fn check_xi(xi: &[f64], d: usize, source: &Path) -> Result<()> {
    if xi.len() != d {
        return Err(Error::Format {
            path: source.into(),
            message: format!("has {} values but d = {d} KL coefficients are expected (pass --d {} or a matching file)", xi.len(), xi.len()),
        });
    }
    if let Some((i, v)) = xi.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::Format {
            path: source.into(),
            message: format!("entry {i} is {v}; every coefficient must be finite"),
        });
    }
    Ok(())
}

/// Files of one field set: darcy2d writes `<z>.npy` (n x n) and `<u>.npy`
/// ((n+1) x (n+1)); poisson1d writes `<f>.npy` and `<u>.npy` ((n+1,)).
/// PNGs beside them. `suffix` is appended to the stems (e.g. "_true").
pub fn write_fields(
    out: &Path,
    pb: &Problem,
    field: &[f64],
    u_unknowns: &[f64],
    suffix: &str,
    what: &str,
) -> Result<Vec<PathBuf>> {
    let n = pb.n;
    let u = pb.nodal(u_unknowns);
    let mut files = Vec::new();
    match pb.kind {
        ProblemKind::Darcy2d => {
            let zp = out.join(format!("z{suffix}.npy"));
            io::write_npy(&zp, &[n, n], field)?;
            let up = out.join(format!("u{suffix}.npy"));
            io::write_npy(&up, &[n + 1, n + 1], &u)?;
            let zpng = out.join(format!("z{suffix}.png"));
            plot::write_field_png(
                &zpng,
                &Field2 {
                    values: field,
                    nx: n,
                    ny: n,
                },
                &format!("log-permeability z ({what})"),
                "z",
            )?;
            let upng = out.join(format!("u{suffix}.png"));
            plot::write_field_png(
                &upng,
                &Field2 {
                    values: &u,
                    nx: n + 1,
                    ny: n + 1,
                },
                &format!("pressure u ({what})"),
                "u",
            )?;
            files.extend([zp, up, zpng, upng]);
        }
        ProblemKind::Poisson1d => {
            let mut f = vec![0.0; n + 1];
            f[1..n].copy_from_slice(field);
            let x: Vec<f64> = (0..=n).map(|i| i as f64 / n as f64).collect();
            let fp = out.join(format!("f{suffix}.npy"));
            io::write_npy(&fp, &[n + 1], &f)?;
            let up = out.join(format!("u{suffix}.npy"));
            io::write_npy(&up, &[n + 1], &u)?;
            for (name, vals, label) in [("f", &f, "source f"), ("u", &u, "solution u")] {
                let p = out.join(format!("{name}{suffix}.png"));
                plot::write_line_plot(
                    &p,
                    &format!("{label} ({what})"),
                    "x",
                    name,
                    &[Series {
                        label: name.to_string(),
                        x: &x,
                        y: vals,
                        band: None,
                        rgb: [31, 119, 180],
                        dashed: false,
                    }],
                    false,
                    None,
                )?;
                files.push(p);
            }
            files.extend([fp, up]);
        }
    }
    Ok(files)
}

/// Settings shared by the commands.
#[derive(Clone, Debug)]
pub struct ProblemArgs {
    pub kind: ProblemKind,
    pub n: Option<usize>,
    pub d: Option<usize>,
}

impl ProblemArgs {
    pub fn build(&self) -> Result<Problem> {
        let (n0, d0, _) = self.kind.defaults();
        Problem::new(self.kind, self.n.unwrap_or(n0), self.d.unwrap_or(d0))
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
    ensure_dir(out)?;
    let ctx = GpuContext::new()?;
    let t = Instant::now();
    let s = BatchedSolver::new(&ctx, &pb, 1, cg, None, false)?;
    let info = s.solve(&ctx, &xi)?;
    check_converged(&info, "forward solve", &cg)?;
    let seconds = t.elapsed().as_secs_f64();
    let u = s.read_u(&ctx)?;
    let field = s.read_z(&ctx)?;
    write_fields(out, &pb, &field, &u, "", "forward solve")?;
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

/// Observation grid of a problem.
pub fn obs_grid(pb: &Problem) -> ObsGrid {
    ObsGrid {
        dim: match pb.kind {
            ProblemKind::Darcy2d => 2,
            ProblemKind::Poisson1d => 1,
        },
        n: pb.n,
    }
}

/// Read an observation CSV and map it to unknown indices and values.
pub fn read_obs(pb: &Problem, path: &Path) -> Result<(Vec<usize>, Vec<f64>)> {
    let obs = io::read_observations(path, &obs_grid(pb))?;
    let mut sensors = Vec::with_capacity(obs.len());
    let mut values = Vec::with_capacity(obs.len());
    for o in &obs {
        let k = pb.node_unknown(o.i, o.j).ok_or_else(|| Error::Format {
            path: path.into(),
            message: format!(
                "node ({}, {}) is not an interior node of the {} grid with n = {}",
                o.i,
                o.j,
                pb.kind.name(),
                pb.n
            ),
        })?;
        sensors.push(k);
        values.push(o.value);
    }
    Ok((sensors, values))
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
    let fwd = crate::cpu::forward(&pb, &xi, 1e-12, 100_000);
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
    write_fields(out, &pb, &fwd.field, &fwd.u, "_true", "truth")?;
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
