//! A deep generative prior against the Gaussian (KL) prior on inclusions2d
//! (methods.md A4): simulate training fields, train the VAE (or reuse one),
//! then invert simulated cases from the same 49 readings with both priors
//! (`pdevi run`: full-rank VI with the exact solver, started at Laplace) and
//! score the posterior means against the truth: relative L2 error, the share
//! of cells whose phase (sign z) is right, the IoU of the inclusion sets
//! ({mean > 0} against {truth > 0}), the Brier score of the phase
//! probability, and the truth within 2 posterior sd.
//!
//!     cargo run --release --example generative_prior [-- --fields 20000 --epochs 40
//!         --cases 1,2,3,4,5,6,7,8 --steps 500 --vae DIR --out DIR]
//!
//! Writes `side_by_side.png` (the first case: truth | KL-prior mean |
//! VAE-prior mean | VAE-prior std | phase probability), `results.json`,
//! `table.md`, and every file of `pdevi run` per case and prior.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use pdevi::cli::run::RunConfig;
use pdevi::gpu::GpuContext;
use pdevi::nn::vae::VaeSettings;
use pdevi::output::files::{ensure_dir, write_bytes, write_json};
use pdevi::output::plot::{self, Colormap, Field2, Painter, Panel};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("bad {flag} `{v}`"))
}

fn read(path: &Path) -> Result<Vec<f64>, String> {
    Ok(pdevi::output::io::read_npy(path)
        .map_err(|e| e.to_string())?
        .1)
}

fn run() -> Result<(), String> {
    let mut out = PathBuf::from("out/generative_prior");
    let mut vae_dir: Option<PathBuf> = None;
    let mut fields = 20_000usize;
    let mut cases = vec![1u64, 2, 3, 4, 5, 6, 7, 8];
    let mut steps = 500usize;
    let mut s = VaeSettings {
        quiet: false,
        ..Default::default()
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let (flag, v) = (
            argv[i].as_str(),
            argv.get(i + 1)
                .ok_or(format!("{} needs a value", argv[i]))?,
        );
        match flag {
            "--out" => out = PathBuf::from(v),
            "--vae" => vae_dir = Some(PathBuf::from(v)),
            "--fields" => fields = num(flag, v)?,
            "--epochs" => s.epochs = num(flag, v)?,
            "--latent" => s.latent = num(flag, v)?,
            "--steps" => steps = num(flag, v)?,
            "--cases" => {
                cases = v
                    .split(',')
                    .map(|x| num("--cases", x.trim()))
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown flag `{other}`")),
        }
        i += 2;
    }
    ensure_dir(&out).map_err(|e| e.to_string())?;
    let e = |e: pdevi::Error| e.to_string();
    let ctx = GpuContext::new().map_err(e)?;

    // 1. The VAE: trained here on fresh fields unless one is given.
    let mut training = Value::Null;
    let vae_dir = match vae_dir {
        Some(d) => d,
        None => {
            let data = out.join("train.safetensors");
            pdevi::cli::vae::simulate_set(Some(32), fields, 100, false, true, &data).map_err(e)?;
            let dir = out.join("vae");
            let t0 = Instant::now();
            training = pdevi::cli::vae::train(&ctx, &data, &s, &dir).map_err(e)?;
            eprintln!(
                "trained the VAE in {:.0} s: {}",
                t0.elapsed().as_secs_f64(),
                training["validation"]
            );
            dir
        }
    };

    // 2. Each case inverted with both priors from the same readings.
    let mut rows = Vec::new();
    let keys = [
        ("rel_l2", "rel_l2_error_posterior_mean"),
        ("phase_accuracy", "phase_accuracy_posterior_mean"),
        ("iou", "iou_posterior_mean"),
        ("within_2sd", "truth_within_2sd"),
    ];
    let mut sums = [[0.0f64; 5]; 2];
    for (k, &seed) in cases.iter().enumerate() {
        let dir = out.join(format!("case_{seed}"));
        let data = dir.join("data");
        pdevi::cli::vae::simulate_case(Some(32), seed, None, &data).map_err(e)?;
        let mut row = json!({ "seed": seed });
        for (p, prior) in [None, Some(format!("vae:{}", vae_dir.display()))]
            .into_iter()
            .enumerate()
        {
            let name = if p == 0 { "kl" } else { "vae" };
            let cfg = RunConfig {
                problem: Some("inclusions2d".into()),
                obs: Some(data.join("obs.csv")),
                truth: Some(data.join("z_true.npy")),
                out: Some(dir.join(name)),
                steps: Some(steps),
                seed: Some(seed),
                quiet: Some(true),
                prior,
                ..Default::default()
            };
            let t0 = Instant::now();
            let m = pdevi::cli::run::run(&cfg).map_err(e)?;
            let secs = t0.elapsed().as_secs_f64();
            let mut r = json!({ "seconds": secs });
            for (j, (short, key)) in keys.iter().enumerate() {
                let v = m[*key].as_f64().unwrap_or(f64::NAN);
                r[*short] = v.into();
                sums[p][j] += v / cases.len() as f64;
            }
            let brier = m["phase_calibration"]["brier"].as_f64().unwrap_or(f64::NAN);
            r["brier"] = brier.into();
            sums[p][4] += brier / cases.len() as f64;
            row[name] = r;
        }
        eprintln!("case {seed}: {row}");
        rows.push(row);

        if k == 0 {
            // truth | KL-prior mean | VAE-prior mean | VAE-prior std | phase probability
            let truth = read(&data.join("z_true.npy"))?;
            let kl = read(&dir.join("kl/posterior_mean_z.npy"))?;
            let vm = read(&dir.join("vae/posterior_mean_z.npy"))?;
            let vs = read(&dir.join("vae/posterior_std_z.npy"))?;
            let ph = read(&dir.join("vae/phase_probability.npy"))?;
            let pb = pdevi::physics::inclusions::problem(Some(32), None).map_err(e)?;
            let sensors = pb.sensor_points();
            let n = 32;
            let cell = |v| Field2::cells(v, n, n);
            let phase = |t: &str, v| Panel {
                range: Some((-1.0, 1.0)),
                markers: &sensors,
                ..Panel::new(t, cell(v))
            };
            let panels = [
                phase("truth z", &truth),
                phase("KL prior: posterior mean", &kl),
                phase("VAE prior: posterior mean", &vm),
                Panel {
                    markers: &sensors,
                    ..Panel::new("VAE prior: posterior std", cell(&vs))
                },
                Panel {
                    range: Some((0.0, 1.0)),
                    cmap: Colormap::Viridis,
                    markers: &sensors,
                    ..Panel::new("VAE prior: P(z > 0 | y)", cell(&ph))
                },
            ];
            plot::write_panels_png(
                Painter::Gpu(&ctx),
                &out.join("side_by_side.png"),
                &format!("inclusions2d case {seed}, 49 readings, sigma_n = 1e-3"),
                &panels,
            )
            .map_err(e)?;
        }
    }

    let mut table = String::from(
        "| case | KL rel. L2 | VAE rel. L2 | KL phase acc. | VAE phase acc. | KL IoU | VAE IoU | KL Brier | VAE Brier | VAE within 2 sd |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let f = |v: &Value| format!("{:.3}", v.as_f64().unwrap_or(f64::NAN));
    for r in &rows {
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r["seed"],
            f(&r["kl"]["rel_l2"]),
            f(&r["vae"]["rel_l2"]),
            f(&r["kl"]["phase_accuracy"]),
            f(&r["vae"]["phase_accuracy"]),
            f(&r["kl"]["iou"]),
            f(&r["vae"]["iou"]),
            f(&r["kl"]["brier"]),
            f(&r["vae"]["brier"]),
            f(&r["vae"]["within_2sd"]),
        );
    }
    let [k, v] = sums;
    let _ = writeln!(
        table,
        "| mean | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
        k[0], v[0], k[1], v[1], k[2], v[2], k[4], v[4], v[3]
    );
    let _ = writeln!(
        table,
        "\nVAE / KL relative L2 error: {:.3} (target <= 0.7); mean VAE IoU {:.3} (target >= 0.85)",
        v[0] / k[0],
        v[2]
    );
    print!("{table}");
    write_bytes(&out.join("table.md"), table.as_bytes()).map_err(e)?;
    write_json(
        &out.join("results.json"),
        &json!({
            "vae": vae_dir.display().to_string(), "training": training,
            "steps": steps, "cases": rows,
            "mean": {
                "kl": {"rel_l2": k[0], "phase_accuracy": k[1], "iou": k[2], "within_2sd": k[3], "brier": k[4]},
                "vae": {"rel_l2": v[0], "phase_accuracy": v[1], "iou": v[2], "within_2sd": v[3], "brier": v[4]},
            },
            "ratio_rel_l2_vae_over_kl": v[0] / k[0],
            "device": ctx.describe(),
        }),
    )
    .map_err(e)?;
    Ok(())
}
