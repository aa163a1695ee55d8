//! The variational family's expressiveness, measured (issue: beyond
//! Gaussians): on a one-sensor darcy2d problem with d = 2 (a posterior
//! ridge that bends across the prior) and on the 49-sensor problem (n = 32,
//! d = 64), run mean-field, full-rank, low-rank and flow VI (all started at
//! Laplace) and MCMC (MALA, the reference), and report for each the final
//! ELBO, the energy distance and sliced W2 to the reference draws (the
//! exact grid posterior's for d = 2, where MCMC need not mix along the
//! ridge; MCMC's for d = 64), how often the reference draws fall in the
//! method's central intervals (50/80/90/95 %, marginals from the method's
//! own draws), the time to converge (the first
//! step whose 50-step mean ELBO is within 0.5 nat of the final one) and
//! steps/s. For d = 2 also the total variation of 20 x 20 histograms to the
//! exact grid posterior, and a figure: grid posterior | MCMC | full-rank |
//! flow.
//!
//!     cargo run --release --example family_ablation [-- --steps 1000 --out DIR --only one|many]
//!
//! Writes `results.json`, `table.md` and `one_sensor.png`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::{json, Value};

use pdevi::check::distance::*;
use pdevi::cli::flow::fit_flow;
use pdevi::gpu::GpuContext;
use pdevi::infer::flow::{Divergence, FlowSpec};
use pdevi::infer::vi::{variational, Family, FitSettings, Start};
use pdevi::output::files::{ensure_dir, write_bytes, write_json};
use pdevi::output::plot::{self, Field2, Painter, Panel};
use pdevi::physics::problem::{Problem, ProblemKind};
use pdevi::physics::solver::CgParams;

const LEVELS: [f64; 4] = [0.5, 0.8, 0.9, 0.95];

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Steps to converge: the first step whose trailing 50-step mean ELBO is
/// within 0.5 nat of the last 50 steps' mean.
fn converged_at(trace: &[(usize, f64, f64)]) -> (usize, f64) {
    let e: Vec<f64> = trace.iter().map(|t| t.1).collect();
    let w = 50.min(e.len());
    let last = e[e.len() - w..].iter().sum::<f64>() / w as f64;
    for k in w..=e.len() {
        let m = e[k - w..k].iter().sum::<f64>() / w as f64;
        if (m - last).abs() <= 0.5 {
            return (k, trace[k - 1].2);
        }
    }
    (e.len(), trace.last().map_or(0.0, |t| t.2))
}

/// Share of `reference` draws inside the central intervals of `draws`'
/// marginals, per level, averaged over coordinates.
fn coverage(draws: &[f64], reference: &[f64], d: usize) -> Vec<f64> {
    LEVELS
        .iter()
        .map(|&l| {
            let mut acc = 0.0;
            for i in 0..d {
                let mut v: Vec<f64> = draws.chunks_exact(d).map(|r| r[i]).collect();
                v.sort_by(f64::total_cmp);
                let q = |u: f64| v[((u * v.len() as f64) as usize).min(v.len() - 1)];
                let (lo, hi) = (q(0.5 - l / 2.0), q(0.5 + l / 2.0));
                let inside = reference
                    .chunks_exact(d)
                    .filter(|r| r[i] >= lo && r[i] <= hi)
                    .count();
                acc += inside as f64 / (reference.len() / d) as f64;
            }
            acc / d as f64
        })
        .collect()
}

fn thin(x: &[f64], d: usize, k: usize) -> Vec<f64> {
    let n = x.len() / d;
    let k = k.min(n);
    (0..k)
        .flat_map(|j| x[(j * n / k) * d..(j * n / k + 1) * d].iter().copied())
        .collect()
}

struct Case {
    name: &'static str,
    pb: Problem,
    y: Vec<f64>,
}

fn run() -> Result<(), String> {
    let mut out = PathBuf::from("out/family_ablation");
    let mut steps = 1000usize;
    let mut only: Option<String> = None;
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv
            .get(i + 1)
            .ok_or(format!("{} needs a value", argv[i]))?;
        match argv[i].as_str() {
            "--out" => out = PathBuf::from(v),
            "--steps" => steps = v.parse().map_err(|_| format!("bad --steps `{v}`"))?,
            "--only" => only = Some(v.clone()),
            other => return Err(format!("unknown flag `{other}`")),
        }
        i += 2;
    }
    let e = |e: pdevi::Error| e.to_string();
    ensure_dir(&out).map_err(e)?;
    let ctx = GpuContext::new().map_err(e)?;

    // The two problems.
    let mut cases = Vec::new();
    if only.as_deref() != Some("many") {
        let pb = Problem::new(ProblemKind::Darcy2d, 16, 2).map_err(e)?;
        let sensor = pb.node_unknown(4, 4).ok_or("no sensor node")?;
        let (_, y49) = pdevi::physics::reference::simulate_data(&pb, 3);
        let k = pb
            .sensors
            .iter()
            .position(|&s| s == sensor)
            .ok_or("sensor")?;
        let mut one = pb.clone();
        one.sensors = vec![sensor];
        cases.push(Case {
            name: "one sensor, d = 2 (n = 16)",
            pb: one,
            y: vec![y49[k]],
        });
    }
    if only.as_deref() != Some("one") {
        let pb = Problem::new(ProblemKind::Darcy2d, 32, 64).map_err(e)?;
        let (_, y) = pdevi::physics::reference::simulate_data(&pb, 1);
        cases.push(Case {
            name: "49 sensors, d = 64 (n = 32)",
            pb,
            y,
        });
    }
    let cg = CgParams {
        rel_tol: 1e-5,
        max_iters: 4000,
        warm_start: true,
        ..Default::default()
    };
    let mut table = String::new();
    let mut results = Vec::new();
    for case in &cases {
        let (pb, y, d) = (&case.pb, &case.y, case.pb.d);
        eprintln!("== {} ==", case.name);
        // The reference: MALA, 64 chains, Laplace-preconditioned.
        let t0 = Instant::now();
        let lp = pdevi::infer::laplace::fit_laplace(&ctx, pb, &pb.sensors, y, cg, 30).map_err(e)?;
        let ms = pdevi::infer::mcmc::McmcSettings::default();
        let mc = pdevi::infer::mcmc::sample_posterior(
            &ctx,
            pb,
            &pb.sensors,
            y,
            cg,
            &ms,
            (&lp.map, &lp.cov),
            |_, _| {},
        )
        .map_err(e)?;
        let mcmc_secs = t0.elapsed().as_secs_f64();
        // Chains that stopped moving (acceptance under 5 % after warm-up)
        // are left out of MCMC's draws: one stuck chain of 64 is enough to
        // put R-hat above 3 on the 49-sensor problem (measured).
        let per = mc.kept * d;
        let moving: Vec<usize> = (0..mc.chains)
            .filter(|&c| mc.acceptance_per_chain[c] >= 0.05)
            .collect();
        let kept: Vec<f64> = moving
            .iter()
            .flat_map(|&c| mc.samples[c * per..(c + 1) * per].iter().copied())
            .collect();
        eprintln!("MCMC: {} of {} chains moving", moving.len(), mc.chains);
        // The reference draws: the exact grid posterior for d = 2 (MCMC
        // need not mix along a thin ridge), else MCMC's.
        let box2 = ((-1.0, 2.0), (-4.0, 4.0));
        let reference = if d == 2 {
            let (bx, by) = box2;
            let grid = grid_posterior_2d(pb, &pb.sensors, y, bx, by, 240);
            grid_draws(&grid, bx, by, 240, 2000, 5)
        } else {
            thin(&kept, d, 2000)
        };
        let ref_name = if d == 2 {
            "the exact grid posterior"
        } else {
            "MCMC"
        };
        eprintln!(
            "MCMC: {:.0} s, max R-hat {:.3}, min ESS {:.0}",
            mcmc_secs,
            mc.max_rhat(),
            mc.min_ess()
        );
        let mut rows: Vec<Value> = Vec::new();
        let mut densities: Vec<(String, Vec<f64>)> = Vec::new();
        let fams = [
            ("mean-field", Some(Family::MeanField)),
            ("full-rank", Some(Family::FullRank)),
            ("low-rank (r = 8)", Some(Family::LowRank { rank: 8.min(d) })),
            ("flow (4 layers)", None),
        ];
        for (name, fam) in fams {
            if d == 2 && matches!(fam, Some(Family::LowRank { .. })) {
                continue; // rank 2 of d = 2 is full-rank plus a diagonal
            }
            let s = FitSettings {
                family: fam.unwrap_or(Family::FullRank),
                samples: 16,
                steps,
                lr: if fam.is_some() { 0.05 } else { 0.01 },
                lr_final: 0.1,
                seed: 1,
                cg,
                report_every: 50,
                ..Default::default()
            };
            let t0 = Instant::now();
            let (draws, trace, secs, state) = match fam {
                Some(f) => {
                    let mut last = Vec::new();
                    let r = variational(
                        &ctx,
                        pb,
                        &pb.sensors,
                        y,
                        &s,
                        Start::Laplace { gn_iters: 30 },
                        &mut last,
                        |_, _| {},
                    )
                    .map_err(e)?;
                    let (m, c) = f.moments(d, &r.fit.theta);
                    let dr =
                        pdevi::infer::predictive::gaussian_draws(&m, &c, 4000, 2).map_err(e)?;
                    (dr, r.fit.trace, r.fit.seconds, None)
                }
                None => {
                    let mut r = fit_flow(
                        &ctx,
                        pb,
                        &pb.sensors,
                        y,
                        &FlowSpec::default(),
                        Divergence::ReverseKl,
                        &s,
                        Some(30),
                        |_, _| {},
                    )
                    .map_err(e)?;
                    let dr = r.engine.draws(&ctx, 4000).map_err(e)?;
                    (dr, r.trace, r.seconds, Some(r.state))
                }
            };
            let wall = t0.elapsed().as_secs_f64();
            let elbo = {
                let w = 50.min(trace.len());
                trace[trace.len() - w..].iter().map(|t| t.1).sum::<f64>() / w as f64
            };
            let (conv_step, conv_secs) = converged_at(&trace);
            let mine = thin(&draws, d, 2000);
            let ed = energy_distance(&mine, &reference, d);
            let sw = sliced_wasserstein(&mine, &reference, d, 200, 7);
            let cov = coverage(&draws, &reference, d);
            let mut row = json!({
                "method": name, "elbo": elbo, "energy_distance_to_reference": ed,
                "sliced_w2_to_reference": sw, "coverage_of_reference": cov,
                "converged_step": conv_step, "converged_seconds": conv_secs,
                "steps_per_s": steps as f64 / secs, "wall_seconds": wall,
            });
            if d == 2 {
                let (bx, by) = box2;
                let g = 120;
                let p = coarsen(&grid_posterior_2d(pb, &pb.sensors, y, bx, by, g), g, 6);
                let h = coarsen(&histogram_2d(&draws, bx, by, g), g, 6);
                row["tv_to_grid_posterior"] = total_variation(&p, &h).into();
                // The method's density on the figure's grid.
                let dens: Vec<f64> = match &state {
                    Some(st) => grid_of(bx, by, g, |x| pdevi::cpu::flow::log_density(st, x).exp()),
                    None => {
                        let (m, c) = pdevi::infer::mcmc::sample_moments(&draws, 2);
                        let det = c[0] * c[3] - c[1] * c[2];
                        grid_of(bx, by, g, |x| {
                            let (a, b) = (x[0] - m[0], x[1] - m[1]);
                            let q = (c[3] * a * a - 2.0 * c[1] * a * b + c[0] * b * b) / det;
                            (-0.5 * q).exp() / (2.0 * std::f64::consts::PI * det.sqrt())
                        })
                    }
                };
                if name == "full-rank" || name.starts_with("flow") {
                    densities.push((name.to_string(), dens));
                }
            }
            eprintln!("{row}");
            rows.push(row);
        }
        let mut mrow = json!({
            "method": "MCMC (MALA, 64 chains)", "wall_seconds": mcmc_secs,
            "max_rhat": mc.max_rhat(), "min_ess": mc.min_ess(),
            "chains_moving": moving.len(), "acceptance": mc.acceptance,
            "steps_per_s": (ms.warmup + ms.samples) as f64 / mc.seconds,
        });
        if d == 2 {
            let mine = thin(&mc.samples, d, 2000);
            mrow["energy_distance_to_reference"] = energy_distance(&mine, &reference, d).into();
            mrow["sliced_w2_to_reference"] =
                sliced_wasserstein(&mine, &reference, d, 200, 7).into();
            mrow["coverage_of_reference"] = json!(coverage(&mc.samples, &reference, d));
            let (bx, by) = box2;
            let g = 120;
            let p = coarsen(&grid_posterior_2d(pb, &pb.sensors, y, bx, by, g), g, 6);
            let h = coarsen(&histogram_2d(&mc.samples, bx, by, g), g, 6);
            mrow["tv_to_grid_posterior"] = total_variation(&p, &h).into();
        }
        rows.push(mrow);
        if d == 2 {
            let (bx, by) = box2;
            let g = 120;
            let grid = grid_posterior_2d(pb, &pb.sensors, y, bx, by, g);
            let hist = histogram_2d(&mc.samples, bx, by, g);
            let mut panels = vec![
                Panel {
                    contours: 8,
                    ..Panel::new("exact (grid)", Field2::cells(&grid, g, g))
                },
                Panel {
                    contours: 0,
                    ..Panel::new("MCMC draws", Field2::cells(&hist, g, g))
                },
            ];
            for (n, dns) in &densities {
                panels.push(Panel {
                    contours: 8,
                    ..Panel::new(n.clone(), Field2::cells(dns, g, g))
                });
            }
            plot::write_panels_png(
                Painter::Gpu(&ctx),
                &out.join("one_sensor.png"),
                &format!(
                    "one sensor, d = 2: xi_1 in [{}, {}] (x1 axis), xi_2 in [{}, {}] (x2 axis)",
                    bx.0, bx.1, by.0, by.1
                ),
                &panels,
            )
            .map_err(e)?;
        }
        let _ = writeln!(
            table,
            "\n**{}** ({steps} steps, 16 samples/step; reference: {ref_name}; MCMC {:.0} s, max R-hat {:.3} over all chains, {} of {} chains moving)\n",
            case.name,
            mcmc_secs,
            mc.max_rhat(),
            moving.len(),
            mc.chains
        );
        let _ = writeln!(
            table,
            "| method | ELBO | energy dist. to ref. | sliced W2 | ref. draws in 50/80/90/95 % | converged (step, s) | steps/s |{}\n|---|---|---|---|---|---|---|{}",
            if d == 2 { " TV to grid |" } else { "" },
            if d == 2 { "---|" } else { "" }
        );
        for r in rows
            .iter()
            .filter(|r| r.get("energy_distance_to_reference").is_some())
        {
            let c: Vec<String> = r["coverage_of_reference"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| format!("{:.2}", v.as_f64().unwrap_or(0.0)))
                        .collect()
                })
                .unwrap_or_default();
            let _ = writeln!(
                table,
                "| {} | {:.2} | {:.4} | {:.4} | {} | {}, {:.0} | {:.1} |{}",
                r["method"].as_str().unwrap_or(""),
                r["elbo"].as_f64().unwrap_or(f64::NAN),
                r["energy_distance_to_reference"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
                r["sliced_w2_to_reference"].as_f64().unwrap_or(f64::NAN),
                c.join(" / "),
                r.get("converged_step")
                    .map_or("-".to_string(), |v| v.to_string()),
                r["converged_seconds"].as_f64().unwrap_or(f64::NAN),
                r["steps_per_s"].as_f64().unwrap_or(f64::NAN),
                if d == 2 {
                    format!(
                        " {:.3} |",
                        r["tv_to_grid_posterior"].as_f64().unwrap_or(f64::NAN)
                    )
                } else {
                    String::new()
                }
            );
        }
        results.push(json!({ "problem": case.name, "rows": rows }));
    }
    print!("{table}");
    write_bytes(&out.join("table.md"), table.as_bytes()).map_err(e)?;
    write_json(
        &out.join("results.json"),
        &json!({ "steps": steps, "cases": results, "device": ctx.describe() }),
    )
    .map_err(e)?;
    Ok(())
}

fn grid_of(bx: (f64, f64), by: (f64, f64), g: usize, f: impl Fn(&[f64; 2]) -> f64) -> Vec<f64> {
    let mut v = vec![0.0; g * g];
    for j in 0..g {
        for i in 0..g {
            let x = [
                bx.0 + (i as f64 + 0.5) / g as f64 * (bx.1 - bx.0),
                by.0 + (j as f64 + 0.5) / g as f64 * (by.1 - by.0),
            ];
            v[j * g + i] = f(&x);
        }
    }
    v
}
