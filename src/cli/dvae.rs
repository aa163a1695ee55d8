//! `pdevi simulate --problem advdiff1d` and `pdevi dvae`: the dynamical
//! latent model (methods.md A5) from the command line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::infer::dvae::{fit, DvaeData, DvaeFit, DvaeSettings};
use crate::output::files::{ensure_dir, write_json};
use crate::output::io::{read_npy, write_npy};
use crate::output::plot::{self, Field2, Painter, Panel, Series};
use crate::physics::advdiff::AdvDiff;

/// Whether a `--problem` value names advdiff1d.
pub fn is_advdiff(problem: &str) -> bool {
    matches!(
        problem.trim().to_ascii_lowercase().as_str(),
        "advdiff1d" | "advdiff"
    )
}

/// Parse `--zeta A,B`.
pub fn parse_zeta(s: &str) -> Result<[f64; 2]> {
    let v: Vec<&str> = s.split(',').map(str::trim).collect();
    let bad = || {
        Error::setting(
            "zeta",
            s,
            "expected two finite numbers separated by a comma, e.g. --zeta 0.5,-1",
        )
    };
    if v.len() != 2 {
        return Err(bad());
    }
    let a: f64 = v[0].parse().map_err(|_| bad())?;
    let b: f64 = v[1].parse().map_err(|_| bad())?;
    if !(a.is_finite() && b.is_finite()) {
        return Err(bad());
    }
    Ok([a, b])
}

/// advdiff1d with `n` nodes (the spec's 64 by default).
pub fn problem(n: Option<usize>) -> Result<AdvDiff> {
    let pb = AdvDiff {
        n: n.unwrap_or(64),
        ..Default::default()
    };
    pb.validate()?;
    Ok(pb)
}

/// `pdevi simulate --problem advdiff1d [--zeta A,B] --seed S --out DIR`:
/// `frames.npy (T, H, n)`, `u_true.npy (T, n)`, `zeta_true.npy`, and a
/// picture of the truth and of the frames.
pub fn simulate(
    pb: &AdvDiff,
    zeta: Option<[f64; 2]>,
    seed: u64,
    out: &Path,
) -> Result<serde_json::Value> {
    let zeta = zeta.unwrap_or_else(|| AdvDiff::prior_zeta(seed));
    let (u, frames) = pb.simulate(zeta, seed, true);
    ensure_dir(out)?;
    write_npy(&out.join("frames.npy"), &[pb.t, pb.height, pb.n], &frames)?;
    write_npy(&out.join("u_true.npy"), &[pb.t, pb.n], &u)?;
    write_npy(&out.join("zeta_true.npy"), &[2], &zeta)?;
    let ctx = crate::cli::commands::figure_context();
    let painter = Painter::of(ctx.as_ref());
    let t = pb.t;
    let frame = |k: usize| &frames[k * pb.height * pb.n..(k + 1) * pb.height * pb.n];
    let mut panels = vec![Panel::new(
        "u(x, t) (x across, t up)",
        Field2::cells(&u, pb.n, t),
    )];
    for k in [0, t / 2, t - 1] {
        panels.push(Panel::new(
            format!("frame t = {}", k + 1),
            Field2::cells(frame(k), pb.n, pb.height),
        ));
    }
    plot::write_panels_png(
        painter,
        &out.join("truth.png"),
        "advdiff1d: the state and three of its frames",
        &panels,
    )?;
    let (c, nu) = crate::physics::advdiff::physical(zeta);
    let summary = serde_json::json!({
        "problem": "advdiff1d",
        "n": pb.n, "T": pb.t, "H": pb.height,
        "seed": seed,
        "zeta": zeta, "c": c, "nu": nu,
        "sigma_y": pb.sigma_y, "sigma_u": pb.sigma_u, "sigma_0": pb.sigma_0,
        "zeta_source": if zeta == AdvDiff::prior_zeta(seed) { format!("prior draw, seed {seed}") } else { "--zeta".into() },
    });
    write_json(&out.join("simulate.json"), &summary)?;
    Ok(summary)
}

/// `pdevi simulate --problem advdiff1d --count N --out FILE.safetensors`:
/// `frames [N, T, H, n]`, `u_true [N, T, n]`, `zeta [N, 2]` (f32), sequence
/// i drawn with seed `seed + i` (zeta from the prior unless given).
pub fn simulate_set(
    pb: &AdvDiff,
    zeta: Option<[f64; 2]>,
    count: usize,
    seed: u64,
    out: &Path,
) -> Result<serde_json::Value> {
    if count == 0 {
        return Err(Error::setting("count", 0, "need at least one sequence"));
    }
    let per = pb.t * pb.height * pb.n;
    let bytes = count.checked_mul(per * 4).filter(|&b| b <= 1 << 34);
    if bytes.is_none() {
        return Err(Error::setting(
            "count",
            count,
            format!("{count} sequences of {per} pixels exceed 16 GiB; write fewer"),
        ));
    }
    let (mut f, mut u, mut z) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..count {
        let s = seed.wrapping_add(i as u64);
        let zi = zeta.unwrap_or_else(|| AdvDiff::prior_zeta(s));
        let (ui, fi) = pb.simulate(zi, s, true);
        f.extend(fi);
        u.extend(ui);
        z.extend(zi);
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pdevi-advdiff1d".to_string());
    meta.insert("count".to_string(), count.to_string());
    meta.insert("seed".to_string(), seed.to_string());
    crate::output::io::write_safetensors_f32(
        out,
        &[
            ("frames".into(), vec![count, pb.t, pb.height, pb.n], &f),
            ("u_true".into(), vec![count, pb.t, pb.n], &u),
            ("zeta".into(), vec![count, 2], &z),
        ],
        meta,
    )?;
    Ok(serde_json::json!({
        "problem": "advdiff1d", "count": count, "seed": seed,
        "n": pb.n, "T": pb.t, "H": pb.height,
        "out": out.display().to_string(),
    }))
}

/// Inputs of `pdevi dvae`.
#[derive(Clone, Debug, Default)]
pub struct DvaeInputs {
    pub frames: Option<PathBuf>,
    pub oracle_states: Option<PathBuf>,
    pub oracle_noise: Option<f64>,
    pub truth: Option<PathBuf>,
    pub zeta_truth: Option<PathBuf>,
    pub out: PathBuf,
    pub quiet: bool,
}

fn read_shaped(path: &Path, dims: usize, what: &str) -> Result<(Vec<usize>, Vec<f64>)> {
    let (shape, v) = read_npy(path)?;
    if shape.len() != dims {
        return Err(Error::Format {
            path: path.into(),
            message: format!("{what} must be a {dims}-D array, got shape {shape:?}"),
        });
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::Format {
            path: path.into(),
            message: format!("value {} at flat index {i} is not finite", v[i]),
        });
    }
    Ok((shape, v))
}

/// `pdevi dvae`: fit, smooth, write the posterior, the states and the figures.
pub fn run(inp: &DvaeInputs, s: &DvaeSettings) -> Result<serde_json::Value> {
    let (pb, data) = match (&inp.frames, &inp.oracle_states) {
        (Some(f), None) => {
            if inp.oracle_noise.is_some() {
                return Err(Error::setting(
                    "oracle-noise",
                    inp.oracle_noise.unwrap_or_default(),
                    "goes with --oracle-states",
                ));
            }
            let (shape, v) = read_shaped(f, 3, "frames (T, H, n)")?;
            let pb = AdvDiff {
                t: shape[0],
                height: shape[1],
                n: shape[2],
                ..Default::default()
            };
            pb.validate().map_err(|e| Error::Format {
                path: f.clone(),
                message: format!("shape {shape:?}: {e}"),
            })?;
            (pb, DvaeData::Frames(v))
        }
        (None, Some(x)) => {
            let (shape, v) = read_shaped(x, 2, "oracle states (T, n)")?;
            let noise = inp.oracle_noise.ok_or_else(|| {
                Error::setting(
                    "oracle-noise",
                    "missing",
                    "--oracle-states needs the states' noise level, --oracle-noise S",
                )
            })?;
            let pb = AdvDiff {
                t: shape[0],
                n: shape[1],
                ..Default::default()
            };
            pb.validate().map_err(|e| Error::Format {
                path: x.clone(),
                message: format!("shape {shape:?}: {e}"),
            })?;
            (pb, DvaeData::Oracle { x: v, noise })
        }
        _ => {
            return Err(Error::setting(
                "frames",
                "missing",
                "give --frames FILE.npy (T, H, n), or --oracle-states FILE.npy (T, n) with --oracle-noise S",
            ))
        }
    };
    let truth = match &inp.truth {
        Some(p) => {
            let (shape, v) = read_shaped(p, 2, "true states (T, n)")?;
            if shape != [pb.t, pb.n] {
                return Err(Error::Format {
                    path: p.clone(),
                    message: format!(
                        "shape {shape:?} does not match the frames' (T, n) = ({}, {})",
                        pb.t, pb.n
                    ),
                });
            }
            Some(v)
        }
        None => None,
    };
    let zeta_truth = match &inp.zeta_truth {
        Some(p) => {
            let (_, v) = read_shaped(p, 1, "zeta (2,)")?;
            if v.len() != 2 {
                return Err(Error::Format {
                    path: p.clone(),
                    message: format!("expected 2 values, got {}", v.len()),
                });
            }
            Some([v[0], v[1]])
        }
        None => None,
    };
    ensure_dir(&inp.out)?;
    let ctx = GpuContext::new()?;
    crate::interrupt::install();
    let quiet = inp.quiet;
    let result = fit(&ctx, &pb, &data, s, |step, elbo| {
        if !quiet {
            eprintln!("step {step:>6}  ELBO {elbo:.6e}");
        }
    })?;
    write_outputs(
        &ctx,
        &pb,
        &data,
        &result,
        truth.as_deref(),
        zeta_truth,
        s,
        &inp.out,
    )
}

/// Everything `pdevi dvae` writes; returns metrics.json's content.
#[allow(clippy::too_many_arguments)]
pub fn write_outputs(
    ctx: &GpuContext,
    pb: &AdvDiff,
    data: &DvaeData,
    r: &DvaeFit,
    truth: Option<&[f64]>,
    zeta_truth: Option<[f64; 2]>,
    s: &DvaeSettings,
    out: &Path,
) -> Result<serde_json::Value> {
    let sm = r.smooth(pb)?;
    let u_std: Vec<f64> = sm.var.iter().map(|v| v.max(0.0).sqrt()).collect();
    write_npy(&out.join("u_mean.npy"), &[pb.t, pb.n], &sm.mean)?;
    write_npy(&out.join("u_std.npy"), &[pb.t, pb.n], &u_std)?;
    write_npy(&out.join("x_mean.npy"), &[pb.t, pb.n], &r.x_mean)?;
    let (c, nu) = r.physical_moments();
    let (cc, nuc) = crate::infer::dvae::physical_moments(r.zeta_mean, r.zeta_cov_calibrated);
    let post = serde_json::json!({
        "mean": r.zeta_mean,
        "cov": r.zeta_cov,
        "c": {"mean": c[0], "sd": c[1]},
        "nu": {"mean": nu[0], "sd": nu[1]},
        // q's covariance widened by the Kalman scores' sandwich (Newey-West):
        // the uncertainty to quote when the encoder's error is systematic.
        "calibrated": {
            "cov": r.zeta_cov_calibrated,
            "inflation": r.inflation,
            "lag": crate::infer::dvae::newey_west_lag(pb.t),
            "c": {"mean": cc[0], "sd": cc[1]},
            "nu": {"mean": nuc[0], "sd": nuc[1]},
        },
    });
    write_json(&out.join("posterior_zeta.json"), &post)?;
    if let Some((a, p)) = &r.encoder {
        crate::nn::mlp::save_weights(a, p, &out.join("encoder"))?;
    }
    if let Some((a, p)) = &r.decoder {
        crate::nn::mlp::save_weights(a, p, &out.join("decoder"))?;
    }
    let painter = Painter::of(Some(ctx));
    // The state in space-time.
    let mut panels = vec![Panel::new(
        "smoothed mean",
        Field2::cells(&sm.mean, pb.n, pb.t),
    )];
    let err: Option<Vec<f64>> =
        truth.map(|u| u.iter().zip(&sm.mean).map(|(a, b)| (a - b).abs()).collect());
    if let Some(u) = truth {
        panels.push(Panel::new("truth", Field2::cells(u, pb.n, pb.t)));
    }
    if let Some(e) = &err {
        panels.push(Panel::new("|error|", Field2::cells(e, pb.n, pb.t)));
    }
    panels.push(Panel::new(
        "smoothed std",
        Field2::cells(&u_std, pb.n, pb.t),
    ));
    if let Some(u) = truth {
        let lo = u
            .iter()
            .chain(&sm.mean)
            .fold(f64::INFINITY, |a, &v| a.min(v));
        let hi = u
            .iter()
            .chain(&sm.mean)
            .fold(f64::NEG_INFINITY, |a, &v| a.max(v));
        panels[0].range = Some((lo, hi));
        panels[1].range = Some((lo, hi));
    }
    plot::write_panels_png(
        painter,
        &out.join("state.png"),
        "u(x, t): x across, t = 1..T up (Kalman smoother at the posterior mean of zeta)",
        &panels,
    )?;
    // Frames next to their reconstructions.
    if let (DvaeData::Frames(frames), Some(rec)) = (data, &r.recon) {
        let fsz = pb.height * pb.n;
        let mut panels = Vec::new();
        for k in [0, pb.t / 2, pb.t - 1] {
            panels.push(Panel {
                range: Some((-0.2, 1.2)),
                ..Panel::new(
                    format!("frame {}", k + 1),
                    Field2::cells(&frames[k * fsz..(k + 1) * fsz], pb.n, pb.height),
                )
            });
            panels.push(Panel {
                range: Some((-0.2, 1.2)),
                ..Panel::new(
                    format!("decoded {}", k + 1),
                    Field2::cells(&rec[k * fsz..(k + 1) * fsz], pb.n, pb.height),
                )
            });
        }
        plot::write_panels_png(
            painter,
            &out.join("frames.png"),
            "frames and the decoder's frames at the encoder's means",
            &panels,
        )?;
    }
    // The ELBO curve.
    let xs: Vec<f64> = r.trace.iter().map(|p| p.step as f64).collect();
    let ys: Vec<f64> = r.trace.iter().map(|p| p.elbo).collect();
    if !xs.is_empty() {
        plot::write_line_plot(
            &out.join("elbo.png"),
            "ELBO (one draw per read-back)",
            "step",
            "ELBO",
            &[Series {
                label: "ELBO".into(),
                x: &xs,
                y: &ys,
                band: None,
                rgb: [31, 119, 180],
                dashed: false,
            }],
            false,
            Some(plot::robust_range(&ys)),
        )?;
    }
    write_q_figures(out, r, zeta_truth)?;
    // Metrics.
    let mut m = serde_json::json!({
        "problem": "advdiff1d",
        "mode": if matches!(data, DvaeData::Oracle { .. }) { "oracle" } else { "frames" },
        "n": pb.n, "T": pb.t, "H": pb.height,
        "posterior_zeta": post,
        "sigma_x": r.sigma_x, "sigma_q": r.sigma_q, "sigma_y": r.sigma_y,
        "elbo": r.trace.last().map(|p| p.elbo),
        "trace": r.trace,
        "steps": r.steps, "interrupted": r.interrupted,
        "seconds": r.seconds,
        "steps_per_second": r.steps as f64 / r.seconds.max(1e-9),
        "settings": {
            "steps": s.steps, "lr": s.lr, "lr_theta": s.lr_theta, "lr_final": s.lr_final,
            "samples": s.samples, "x_samples": s.x_samples, "hidden": s.hidden, "level_hidden": s.level_hidden,
            "act": s.act.name(), "arch": s.arch.name(), "learn_sigma_y": s.learn_sigma_y,
            "seed": s.seed, "zeta_start": s.zeta_start.name(),
            "anchor_frames": (s.anchor_frames != usize::MAX).then_some(s.anchor_frames),
        },
        "zeta_start": r.zeta_start,
        "device": ctx.describe(),
    });
    if let Some(u) = truth {
        let rel = rel_l2(&sm.mean, u);
        let within: f64 = u
            .iter()
            .zip(&sm.mean)
            .zip(&u_std)
            .filter(|((a, b), s)| (*a - *b).abs() <= 3.0 * **s)
            .count() as f64
            / u.len() as f64;
        m["state_relative_l2"] = serde_json::json!(rel);
        m["state_within_3sd"] = serde_json::json!(within);
        m["pseudo_obs_relative_l2"] = serde_json::json!(rel_l2(&r.x_mean, u));
    }
    if let Some(z) = zeta_truth {
        let err = [z[0] - r.zeta_mean[0], z[1] - r.zeta_mean[1]];
        let sd = [r.zeta_cov[0][0].sqrt(), r.zeta_cov[1][1].sqrt()];
        m["zeta_true"] = serde_json::json!(z);
        m["zeta_error"] = serde_json::json!(err);
        m["zeta_error_in_sd"] = serde_json::json!([err[0] / sd[0], err[1] / sd[1]]);
        let cal = r.zeta_cov_calibrated;
        m["zeta_error_in_calibrated_sd"] =
            serde_json::json!([err[0] / cal[0][0].sqrt(), err[1] / cal[1][1].sqrt()]);
    }
    write_json(&out.join("metrics.json"), &m)?;
    Ok(m)
}

/// Relative L2 distance |a - b| / |b|.
pub fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

/// Points of the `k`-sd ellipse of N(m, cov).
fn ellipse(m: [f64; 2], cov: [[f64; 2]; 2], k: f64) -> (Vec<f64>, Vec<f64>) {
    let l11 = cov[0][0].max(0.0).sqrt();
    let l21 = if l11 > 0.0 { cov[0][1] / l11 } else { 0.0 };
    let l22 = (cov[1][1] - l21 * l21).max(0.0).sqrt();
    (0..=96)
        .map(|i| {
            let a = 2.0 * std::f64::consts::PI * i as f64 / 96.0;
            let (e1, e2) = (k * a.cos(), k * a.sin());
            (m[0] + l11 * e1, m[1] + l21 * e1 + l22 * e2)
        })
        .unzip()
}

/// `q_zeta.png`: q's 1 and 2 sd ellipses against the prior's (and the
/// truth); `q_zeta_zoom.png`: the same about q.
fn write_q_figures(out: &Path, r: &DvaeFit, truth: Option<[f64; 2]>) -> Result<()> {
    let eye = [[1.0, 0.0], [0.0, 1.0]];
    let p1 = ellipse([0.0, 0.0], eye, 1.0);
    let p2 = ellipse([0.0, 0.0], eye, 2.0);
    let q1 = ellipse(r.zeta_mean, r.zeta_cov, 1.0);
    let q2 = ellipse(r.zeta_mean, r.zeta_cov, 2.0);
    let sd = [r.zeta_cov[0][0].sqrt(), r.zeta_cov[1][1].sqrt()];
    let mark = |c: [f64; 2], size: [f64; 2]| {
        (
            vec![c[0] - size[0], c[0] + size[0], c[0], c[0], c[0]],
            vec![c[1], c[1], c[1], c[1] - size[1], c[1] + size[1]],
        )
    };
    for (file, zoom) in [("q_zeta.png", false), ("q_zeta_zoom.png", true)] {
        let size = if zoom {
            [0.3 * sd[0], 0.3 * sd[1]]
        } else {
            [0.15, 0.15]
        };
        let tm = truth.map(|t| mark(t, size));
        let mut series = Vec::new();
        if !zoom {
            series.push(Series {
                label: "prior 1 and 2 sd".into(),
                x: &p1.0,
                y: &p1.1,
                band: None,
                rgb: [150, 150, 150],
                dashed: true,
            });
            series.push(Series {
                label: String::new(),
                x: &p2.0,
                y: &p2.1,
                band: None,
                rgb: [150, 150, 150],
                dashed: true,
            });
        }
        series.push(Series {
            label: "q(zeta) 1 and 2 sd".into(),
            x: &q1.0,
            y: &q1.1,
            band: None,
            rgb: [214, 39, 40],
            dashed: false,
        });
        series.push(Series {
            label: String::new(),
            x: &q2.0,
            y: &q2.1,
            band: None,
            rgb: [214, 39, 40],
            dashed: false,
        });
        if let Some((x, y)) = &tm {
            series.push(Series {
                label: "truth".into(),
                x,
                y,
                band: None,
                rgb: [0, 0, 0],
                dashed: false,
            });
        }
        plot::write_line_plot(
            &out.join(file),
            if zoom {
                "q(zeta), zoomed"
            } else {
                "q(zeta) against the prior N(0, I)"
            },
            "zeta_1 (c = 1 + zeta_1 / 2)",
            "zeta_2 (nu = 0.005 exp(zeta_2 / 2))",
            &series,
            false,
            None,
        )?;
    }
    Ok(())
}
