//! Phi-DVAE on sequences drawn from the spec (advdiff1d, methods.md A5):
//! for each seed, draw zeta from the prior, simulate the frames, fit the
//! model with default settings (or the given steps), and score q(zeta)
//! against the truth (error in zeta units and in posterior sd, the truth
//! within 3 sd) and the smoothed state against the true states (relative
//! L2). The first sequence also gets every file of `pdevi dvae`.
//!
//!     cargo run --release --example phi_dvae [-- --seeds 1,2,3 --steps 5000 --arch level --zeta-start frames --sigma-x0 0.05 --out DIR]
//!
//! Writes `results.json` and `table.md` (the printed table).

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::json;

use pdevi::cli::dvae::{rel_l2, write_outputs};
use pdevi::gpu::GpuContext;
use pdevi::infer::dvae::{fit, DvaeArch, DvaeData, DvaeSettings, ZetaStart};
use pdevi::output::files::{ensure_dir, write_bytes, write_json};
use pdevi::physics::advdiff::{physical, AdvDiff};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut seeds = vec![1u64, 2, 3];
    let mut s = DvaeSettings::default();
    let mut out = PathBuf::from("out/phi_dvae");
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv
            .get(i + 1)
            .ok_or(format!("{} needs a value", argv[i]))?;
        match argv[i].as_str() {
            "--seeds" => {
                seeds = v
                    .split(',')
                    .map(|x| x.trim().parse().map_err(|_| format!("bad seed `{x}`")))
                    .collect::<Result<_, _>>()?
            }
            "--steps" => s.steps = v.parse().map_err(|_| format!("bad --steps `{v}`"))?,
            "--arch" => s.arch = DvaeArch::parse(v).map_err(|e| e.to_string())?,
            "--zeta-start" => s.zeta_start = ZetaStart::parse(v).map_err(|e| e.to_string())?,
            "--sigma-x0" => s.sigma_x0 = v.parse().map_err(|_| format!("bad --sigma-x0 `{v}`"))?,
            "--out" => out = PathBuf::from(v),
            other => return Err(format!("unknown flag `{other}`")),
        }
        i += 2;
    }
    ensure_dir(&out).map_err(|e| e.to_string())?;
    let ctx = GpuContext::new().map_err(|e| e.to_string())?;
    let pb = AdvDiff::default();
    let mut rows = Vec::new();
    let mut table = String::from(
        "| seed | true zeta | start | q mean | q sd | error | error / q sd | calibrated sd | error / calibrated sd | within 3 calibrated sd | within 0.15 | state rel. L2 | time |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (k, &seed) in seeds.iter().enumerate() {
        let zeta = AdvDiff::prior_zeta(seed);
        let (u, frames) = pb.simulate(zeta, seed, true);
        let data = DvaeData::Frames(frames);
        let r = fit(&ctx, &pb, &data, &s, |_, _| {}).map_err(|e| e.to_string())?;
        let sm = r.smooth(&pb).map_err(|e| e.to_string())?;
        let err = [r.zeta_mean[0] - zeta[0], r.zeta_mean[1] - zeta[1]];
        let sd = [r.zeta_cov[0][0].sqrt(), r.zeta_cov[1][1].sqrt()];
        let zs = [err[0] / sd[0], err[1] / sd[1]];
        let cal = r.zeta_cov_calibrated;
        let sdc = [cal[0][0].sqrt(), cal[1][1].sqrt()];
        let zc = [err[0] / sdc[0], err[1] / sdc[1]];
        let within3 = zc.iter().all(|z| z.abs() <= 3.0);
        let within015 = err.iter().all(|e| e.abs() <= 0.15);
        let state = rel_l2(&sm.mean, &u);
        if k == 0 {
            let dir = out.join(format!("seed_{seed}"));
            ensure_dir(&dir).map_err(|e| e.to_string())?;
            write_outputs(&ctx, &pb, &data, &r, Some(&u), Some(zeta), &s, &dir)
                .map_err(|e| e.to_string())?;
        }
        let (c, nu) = physical(zeta);
        let f = |v: [f64; 2]| format!("{:.3}, {:.3}", v[0], v[1]);
        let line = format!(
            "| {seed} | {} | {} | {} | {:.4}, {:.4} | {} | {:.1}, {:.1} | {:.4}, {:.4} | {:.1}, {:.1} | {} | {} | {:.2} % | {:.0} s |",
            f(zeta),
            f(r.zeta_start),
            f(r.zeta_mean),
            sd[0],
            sd[1],
            f(err),
            zs[0],
            zs[1],
            sdc[0],
            sdc[1],
            zc[0],
            zc[1],
            if within3 { "yes" } else { "no" },
            if within015 { "yes" } else { "no" },
            100.0 * state,
            r.seconds
        );
        println!("{line}");
        writeln!(table, "{line}").ok();
        rows.push(json!({
            "seed": seed, "zeta_true": zeta, "c_true": c, "nu_true": nu,
            "q_start": r.zeta_start, "q_mean": r.zeta_mean, "q_cov": r.zeta_cov, "error": err, "error_in_sd": zs,
            "q_cov_calibrated": cal, "inflation": r.inflation, "error_in_calibrated_sd": zc,
            "within_3sd": within3, "within_0.15": within015,
            "state_relative_l2": state, "pseudo_obs_relative_l2": rel_l2(&r.x_mean, &u),
            "sigma_x": r.sigma_x, "seconds": r.seconds, "steps": r.steps,
        }));
    }
    writeln!(
        table,
        "\n{} steps, arch {}, zeta start {}, default settings otherwise, on {}",
        s.steps,
        s.arch.name(),
        s.zeta_start.name(),
        ctx.describe()
    )
    .ok();
    write_json(&out.join("results.json"), &json!({ "rows": rows })).map_err(|e| e.to_string())?;
    write_bytes(&out.join("table.md"), table.as_bytes()).map_err(|e| e.to_string())?;
    println!("wrote {}", out.display());
    Ok(())
}
