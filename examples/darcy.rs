//! The example a new user runs first: simulate darcy2d data from a prior draw
//! (fixed seed), infer the log-permeability posterior by full-rank VI on the
//! GPU, and write the images (summary.png, posterior mean/std fields, ELBO,
//! and the posterior forming as frames and a GIF, all drawn by the GPU's
//! rasteriser).
//!
//!     cargo run --release --example darcy [-- --out DIR]
//!
//! Settings: examples/darcy2d.toml.

use std::path::PathBuf;

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let mut out: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = args.next().map(PathBuf::from),
            other => {
                eprintln!("unknown argument {other}; usage: cargo run --release --example darcy [-- --out DIR]");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let toml = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/darcy2d.toml");
    let result = pdevi::cli::run::RunConfig::load(&toml).and_then(|cfg| {
        let cfg = cfg.merge(pdevi::cli::run::RunConfig {
            out: out.clone(),
            ..Default::default()
        });
        let dir = cfg
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("out/darcy2d"));
        // The posterior forming, drawn by the GPU renderer every 10 steps:
        // frames/frame_*.png and posterior_forming.gif.
        let cfg = pdevi::cli::run::RunConfig {
            frames: Some(dir.join("frames")),
            every: Some(10),
            gif: Some(true),
            ..cfg
        };
        pdevi::cli::run::run(&cfg).map(|m| (m, dir))
    });
    match result {
        Ok((m, dir)) => {
            println!(
                "device: {}\nsteps: {} in {:.1} s ({:.1} steps/s)\nfinal ELBO: {:.3}\nrelative L2 error of the posterior mean of z: {:.3} (prior mean: 1.0)\ntruth within 3 posterior sd: {:.1}% of cells\nwrote {}/summary.png, the posterior forming (frames/, posterior_forming.gif) and the other outputs",
                m["device"].as_str().unwrap_or("?"),
                m["steps"],
                m["wall_seconds"].as_f64().unwrap_or(0.0),
                m["steps_per_s"].as_f64().unwrap_or(0.0),
                m["final_elbo"].as_f64().unwrap_or(f64::NAN),
                m["rel_l2_error_posterior_mean"].as_f64().unwrap_or(f64::NAN),
                100.0 * m["truth_within_3sd"].as_f64().unwrap_or(f64::NAN),
                dir.display()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
