//! Inversion as observations go missing (primer B8, the seed's suggested
//! experiment): darcy2d with 49, 9 and 4 sensors (subsets of the spec's
//! 7 x 7 grid: all of it, k, l in {2, 4, 6}, and k, l in {3, 5}), one
//! truth and one noisy data set. Each subset is inverted twice:
//!
//! * exact forward model: the Laplace approximation (Gauss-Newton with
//!   adjoint Jacobians through the batched CG solver);
//! * residual likelihood: `pdevi run --likelihood residual`, u a latent
//!   beside xi, the PDE residual a virtual observation with noise sigma_r,
//!   no solver anywhere (low-rank VI over xi and the (n-1)^2 nodal values).
//!
//! Scored against the truth: relative L2 error of the posterior mean of z,
//! the share of cells whose truth lies within 2 posterior sd, the mean
//! posterior sd of z, and wall time.
//!
//!     cargo run --release --example missing_observations [-- --n 16 --d 16 --steps 12000
//!         --sigma-r-rel 0.1 --out DIR]
//!
//! `--sigma-r-rel` is sigma_r over the load per node (h^2). Writes
//! `results.json`, `table.md` (the printed table), `means.png` (truth and
//! both posterior means per subset), `stds.png` (posterior sds) and one
//! folder per run with the files of `pdevi run` / `pdevi laplace`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use pdevi::cli::run::RunConfig;
use pdevi::output::files::{ensure_dir, write_bytes, write_json};
use pdevi::output::io;
use pdevi::output::plot::{write_panels_png, Field2, Painter, Panel};

/// (label, the k = l indices of the sensors kept, k, l in 1..7).
const SUBSETS: [(&str, &[usize]); 3] = [
    ("49 sensors", &[1, 2, 3, 4, 5, 6, 7]),
    ("9 sensors", &[2, 4, 6]),
    ("4 sensors", &[3, 5]),
];

struct Args {
    n: usize,
    d: usize,
    steps: usize,
    sigma_r_rel: f64,
    seed: u64,
    out: PathBuf,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        n: 16,
        d: 16,
        steps: 12000,
        sigma_r_rel: 0.1,
        seed: 3,
        out: PathBuf::from("out/missing_observations"),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv
            .get(i + 1)
            .ok_or(format!("{} needs a value", argv[i]))?;
        let num = |s: &str| s.parse::<f64>().map_err(|e| format!("{}: {e}", argv[i]));
        match argv[i].as_str() {
            "--n" => a.n = num(v)? as usize,
            "--d" => a.d = num(v)? as usize,
            "--steps" => a.steps = num(v)? as usize,
            "--sigma-r-rel" => a.sigma_r_rel = num(v)?,
            "--seed" => a.seed = num(v)? as u64,
            "--out" => a.out = PathBuf::from(v),
            other => return Err(format!("unknown flag {other}")),
        }
        i += 2;
    }
    Ok(a)
}

/// The rows of the 49-sensor CSV whose sensor (k n/8, l n/8) has k and l in `keep`.
fn subset_csv(all: &Path, n: usize, keep: &[usize], out: &Path) -> Result<usize, String> {
    let text = std::fs::read_to_string(all).map_err(|e| format!("{}: {e}", all.display()))?;
    let mut lines = text.lines();
    let mut csv = String::new();
    csv.push_str(lines.next().unwrap_or("x,y,value"));
    csv.push('\n');
    let mut count = 0;
    for line in lines {
        let f: Vec<f64> = line
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        if f.len() < 3 {
            continue;
        }
        let k = (f[0] * 8.0).round() as usize;
        let l = (f[1] * 8.0).round() as usize;
        if keep.contains(&k) && keep.contains(&l) {
            csv.push_str(line);
            csv.push('\n');
            count += 1;
        }
    }
    let _ = n;
    write_bytes(out, csv.as_bytes()).map_err(|e| e.to_string())?;
    Ok(count)
}

fn mean_of(path: &Path) -> Result<f64, String> {
    let (_, v) = io::read_npy(path).map_err(|e| e.to_string())?;
    Ok(v.iter().sum::<f64>() / v.len().max(1) as f64)
}

fn run() -> Result<(), String> {
    let a = parse()?;
    ensure_dir(&a.out).map_err(|e| e.to_string())?;
    let args = pdevi::physics::problem::ProblemArgs {
        kind: pdevi::ProblemKind::Darcy2d,
        n: Some(a.n),
        d: Some(a.d),
    };
    let data = a.out.join("data");
    pdevi::cli::commands::simulate(&args, a.seed, None, None, &data).map_err(|e| e.to_string())?;
    let truth = data.join("xi_true.npy");
    let h = 1.0 / a.n as f64;
    let sigma_r = a.sigma_r_rel * h * h;
    let mut rows: Vec<Value> = Vec::new();
    let mut table = String::new();
    writeln!(
        table,
        "| sensors | method | rel. L2 error of mean z | truth within 2 sd | mean sd of z | seconds |"
    )
    .ok();
    writeln!(table, "|---|---|---|---|---|---|").ok();
    let mut means: Vec<(String, Vec<f64>)> = Vec::new();
    let mut stds: Vec<(String, Vec<f64>)> = Vec::new();
    for (label, keep) in SUBSETS {
        let tag = label.split(' ').next().unwrap_or("x");
        let obs = a.out.join(format!("obs_{tag}.csv"));
        let count = subset_csv(&data.join("obs.csv"), a.n, keep, &obs)?;
        for method in ["exact (Laplace)", "residual (VI)"] {
            let out = a.out.join(format!(
                "{tag}_{}",
                if method.starts_with("exact") {
                    "exact"
                } else {
                    "residual"
                }
            ));
            let mut cfg = RunConfig {
                problem: Some("darcy2d".into()),
                n: Some(a.n),
                d: Some(a.d),
                obs: Some(obs.clone()),
                truth: Some(truth.clone()),
                out: Some(out.clone()),
                seed: Some(a.seed),
                quiet: Some(true),
                ..Default::default()
            };
            let t = Instant::now();
            let m = if method.starts_with("exact") {
                pdevi::cli::laplace::run_laplace(&cfg)
            } else {
                cfg.likelihood = Some("residual".into());
                cfg.sigma_r = Some(sigma_r);
                cfg.steps = Some(a.steps);
                pdevi::cli::run::run(&cfg)
            }
            .map_err(|e| format!("{label}, {method}: {e}"))?;
            let seconds = t.elapsed().as_secs_f64();
            let err = m["rel_l2_error_posterior_mean"]
                .as_f64()
                .unwrap_or(f64::NAN);
            let cover = m["truth_within_2sd"].as_f64().unwrap_or(f64::NAN);
            let sd = mean_of(&out.join("posterior_std_z.npy"))?;
            writeln!(
                table,
                "| {count} | {method} | {err:.4} | {cover:.3} | {sd:.4} | {seconds:.1} |"
            )
            .ok();
            let row = json!({
                "sensors": count, "method": method, "rel_l2_error_mean_z": err,
                "truth_within_2sd": cover, "mean_sd_z": sd, "seconds": seconds,
                "relative_residual_of_mean": m.get("relative_residual_of_mean"),
                "folder": out.display().to_string(),
            });
            println!("{row}");
            rows.push(row);
            let (_, mz) =
                io::read_npy(&out.join("posterior_mean_z.npy")).map_err(|e| e.to_string())?;
            let (_, sz) =
                io::read_npy(&out.join("posterior_std_z.npy")).map_err(|e| e.to_string())?;
            let short = if method.starts_with("exact") {
                "exact"
            } else {
                "residual"
            };
            means.push((format!("{count}: {short}"), mz));
            stds.push((format!("{count}: {short}"), sz));
        }
    }
    print!("{table}");
    write_bytes(&a.out.join("table.md"), table.as_bytes()).map_err(|e| e.to_string())?;
    // Figures: the truth and every posterior mean on one scale; the sds on another.
    let (_, zt) = io::read_npy(&data.join("z_true.npy")).map_err(|e| e.to_string())?;
    let n = a.n;
    let lo = zt.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = zt.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut panels = vec![Panel::new("truth", Field2::cells(&zt, n, n))];
    for (t, v) in &means {
        panels.push(Panel::new(t.clone(), Field2::cells(v, n, n)));
    }
    for p in panels.iter_mut() {
        p.range = Some((lo, hi));
    }
    write_panels_png(
        Painter::Cpu,
        &a.out.join("means.png"),
        "posterior mean of z as sensors go missing: exact forward model (Laplace) and residual likelihood (VI)",
        &panels,
    )
    .map_err(|e| e.to_string())?;
    let smax = stds
        .iter()
        .flat_map(|(_, v)| v.iter().cloned())
        .fold(0.0, f64::max);
    let mut panels: Vec<Panel> = stds
        .iter()
        .map(|(t, v)| Panel::new(t.clone(), Field2::cells(v, n, n)))
        .collect();
    for p in panels.iter_mut() {
        p.range = Some((0.0, smax));
    }
    write_panels_png(
        Painter::Cpu,
        &a.out.join("stds.png"),
        "posterior sd of z",
        &panels,
    )
    .map_err(|e| e.to_string())?;
    write_json(
        &a.out.join("results.json"),
        &json!({
            "problem": "darcy2d", "n": a.n, "d": a.d, "seed": a.seed,
            "sigma_r": sigma_r, "sigma_r_over_load": a.sigma_r_rel, "steps": a.steps,
            "rows": rows,
        }),
    )
    .map_err(|e| e.to_string())?;
    println!("wrote {}", a.out.display());
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
