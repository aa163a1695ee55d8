//! The default example's posterior three ways, and how the variational one
//! compares with the gold standard: full-rank VI, Laplace at the
//! Gauss-Newton MAP, and MCMC (Laplace-preconditioned pCN, many chains), all
//! on the data of examples/darcy2d.toml; then `compare` of VI and Laplace
//! against the MCMC draws (field error, std ratios, KL / W2 in xi, coverage
//! of the MCMC draws by the others' credible intervals).
//!
//!     cargo run --release --example gold_standard [-- --out DIR] [--chains C] [--samples N]
//!
//! About 5 minutes on a 2-core software GPU; seconds on a real one.

use std::path::PathBuf;

use pdevi::cli::run::RunConfig;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> pdevi::Result<()> {
    let mut out = PathBuf::from("out/gold_standard");
    let mut chains = 32usize;
    let mut samples = 1000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next();
        match (a.as_str(), v) {
            ("--out", Some(v)) => out = PathBuf::from(v),
            ("--chains", Some(v)) => chains = v.parse().unwrap_or(chains),
            ("--samples", Some(v)) => samples = v.parse().unwrap_or(samples),
            (other, _) => {
                return Err(pdevi::Error::setting(
                    "argument",
                    other,
                    "usage: --out DIR --chains C --samples N",
                ))
            }
        }
    }
    let toml = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/darcy2d.toml");
    let base = RunConfig::load(&toml)?;
    let with = |dir: &str, extra: RunConfig| {
        base.clone().merge(RunConfig {
            out: Some(out.join(dir)),
            quiet: Some(true),
            ..extra
        })
    };
    eprintln!("VI (full-rank) ...");
    let vi = pdevi::cli::run::run(&with("vi", RunConfig::default()))?;
    eprintln!("Laplace ...");
    let lp = pdevi::cli::laplace::run_laplace(&with("laplace", RunConfig::default()))?;
    eprintln!("MCMC ({chains} chains x {samples} draws, pCN with the Laplace reference) ...");
    let mc = pdevi::cli::mcmc::run_mcmc(&with(
        "mcmc",
        RunConfig {
            sampler: Some("pcn".into()),
            chains: Some(chains),
            samples: Some(samples),
            ..Default::default()
        },
    ))?;
    let ctx = pdevi::cli::commands::figure_context();
    let painter = pdevi::output::plot::Painter::of(ctx.as_ref());
    let c_vi = pdevi::check::compare::compare(
        painter,
        &out.join("mcmc"),
        &out.join("vi"),
        Some(&out.join("vi_vs_mcmc")),
    )?;
    let c_lp = pdevi::check::compare::compare(
        painter,
        &out.join("mcmc"),
        &out.join("laplace"),
        Some(&out.join("laplace_vs_mcmc")),
    )?;
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!("device: {}", vi["device"].as_str().unwrap_or("?"));
    println!(
        "seconds: VI {:.1}, Laplace {:.1}, MCMC {:.1} (max R-hat {:.3}, min ESS {:.0})",
        f(&vi, "wall_seconds"),
        f(&lp, "wall_seconds"),
        f(&mc, "seconds"),
        f(&mc, "max_rhat"),
        f(&mc, "min_ess_bulk")
    );
    for (name, c) in [("VI", &c_vi), ("Laplace", &c_lp)] {
        println!(
            "{name} vs MCMC: rel. L2 error of the mean field {:.3}, std ratio median {:.2} (5-95 %: {:.2}-{:.2}), KL(q || MCMC Gaussian) {:.3}, coverage of MCMC draws at 90 %: {:.3}",
            f(c, "rel_l2_mean_field"),
            c["std_ratio_field"]["median"].as_f64().unwrap_or(f64::NAN),
            c["std_ratio_field"]["q05"].as_f64().unwrap_or(f64::NAN),
            c["std_ratio_field"]["q95"].as_f64().unwrap_or(f64::NAN),
            f(c, "kl_other_ref_xi"),
            c["coverage_of_ref_samples"]["0.9"].as_f64().unwrap_or(f64::NAN),
        );
    }
    println!("wrote {}", out.display());
    Ok(())
}
