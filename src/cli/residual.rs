//! `pdevi train residual` (the data-free probabilistic solver, and the
//! two-way model), `pdevi solve --net` (using it) and `pdevi bench residual`
//! (network solves against CG on the same device).

use std::path::Path;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::infer::residual::{accuracy, train_residual, ResidualSettings, ResidualSolver};
use crate::output::files::write_json;
use crate::output::io;
use crate::output::plot::{self, Colormap, Field2, Painter, Panel, Series};
use crate::physics::problem::ProblemArgs;
use crate::physics::sensors::check_xi;

/// `run --likelihood residual` starts sigma_r this many times larger and
/// tightens it over the first half of the steps.
pub const ANNEAL: f64 = 100.0;

/// Held-out draws scored after training.
pub const EVAL_DRAWS: usize = 64;

/// `pdevi train residual`: train, save, score on held-out prior draws
/// against exact solves, and draw the figures.
pub fn train_residual_cmd(
    args: &ProblemArgs,
    s: &ResidualSettings,
    eval_draws: usize,
    out: &Path,
) -> Result<serde_json::Value> {
    let pb = args.build()?;
    crate::infer::residual::check_settings(&pb, s)?;
    let _lock = crate::output::files::OutLock::acquire(out)?;
    let ctx = GpuContext::new()?;
    let t = Instant::now();
    let (solver, rep) = train_residual(&ctx, &pb, s)?;
    let seconds = t.elapsed().as_secs_f64();
    solver.save(&ctx, out)?;
    let (acc, arrays) = accuracy(&ctx, &solver, eval_draws.max(1), s.seed + 1)?;
    write_accuracy_figures(&ctx, &solver, &acc, &arrays, out)?;
    let epochs: Vec<f64> = (1..=rep.train.train_loss.len()).map(|e| e as f64).collect();
    plot::write_line_plot(
        &out.join("loss.png"),
        &format!(
            "residual training, darcy2d n = {}, d = {}, sigma_r = {:e} ({} form)",
            pb.n,
            pb.d,
            s.sigma_r,
            s.form.name()
        ),
        "epoch",
        "negative ELBO per draw",
        &[Series {
            label: "solver".into(),
            x: &epochs,
            y: &rep.train.train_loss,
            band: None,
            rgb: [31, 119, 180],
            dashed: false,
        }],
        false,
        Some(plot::robust_range(&rep.train.train_loss)),
    )?;
    let m = serde_json::json!({
        "command": "train residual",
        "problem": pb.kind.name(), "n": pb.n, "d": pb.d,
        "sigma_r": s.sigma_r, "form": s.form.name(), "basis": s.basis.name(), "log_mean": solver.meta.log_mean, "sampled": s.sampled,
        "hidden": s.hidden, "activation": s.act.name(), "epochs": rep.train.epochs,
        "rows_per_epoch": s.rows, "batch": s.batch, "steps": rep.train.steps,
        "lr": s.lr, "lr_final": s.lr_final, "seed": s.seed, "two_way": s.two_way,
        "u_scale": solver.meta.u_scale, "lv0": solver.meta.lv0,
        "train_loss": rep.train.train_loss,
        "inverse_loss": rep.inverse_loss,
        "seconds": seconds,
        "steps_per_s": rep.train.steps as f64 / seconds,
        "interrupted": rep.train.interrupted.is_some(),
        "accuracy": acc,
        "inverse": if solver.inverse.is_some() { inverse_accuracy(&ctx, &solver, &arrays)? } else { serde_json::Value::Null },
        "device": ctx.describe(),
    });
    write_json(&out.join("metrics.json"), &m)?;
    if rep.train.interrupted.is_some() {
        return Err(Error::Interrupted(format!(
            "training stopped after epoch {}; the weights so far are in {}; continue with --resume {}",
            rep.train.epochs,
            out.display(),
            out.display()
        )));
    }
    Ok(m)
}

/// The inverse map on held-out exact solutions: xi's relative error and
/// the share of coefficients within 2 predicted std.
fn inverse_accuracy(
    ctx: &GpuContext,
    solver: &ResidualSolver,
    arrays: &[Vec<f64>; 4],
) -> Result<serde_json::Value> {
    let d = solver.pb.d;
    let (xi, exact) = (&arrays[0], &arrays[1]);
    let (m, sd) = solver.propose(ctx, exact)?;
    let (mut num, mut den, mut inside) = (0.0, 0.0, 0usize);
    let (mut fnum, mut fden) = (0.0, 0.0);
    let basis = solver.pb.basis();
    let nc = solver.pb.ncoef();
    for r in 0..xi.len() / d {
        for k in 0..d {
            let e = m[r * d + k] - xi[r * d + k];
            num += e * e;
            den += xi[r * d + k] * xi[r * d + k];
            if e.abs() <= 2.0 * sd[r * d + k] {
                inside += 1;
            }
        }
        for c in 0..nc {
            let (mut zt, mut zm) = (0.0, 0.0);
            for k in 0..d {
                zt += basis[k * nc + c] * xi[r * d + k];
                zm += basis[k * nc + c] * m[r * d + k];
            }
            fnum += (zm - zt) * (zm - zt);
            fden += zt * zt;
        }
    }
    Ok(serde_json::json!({
        "xi_rel_l2": (num / den).sqrt(),
        "z_rel_l2": (fnum / fden).sqrt(),
        "xi_within_2sd": inside as f64 / xi.len() as f64,
        "input": "exact solutions of the held-out draws",
    }))
}

/// `accuracy.png` (exact | mean | |error| | 2 std for the first held-out
/// draw) and `error_vs_std.png` (RMS error against predicted std, nodes
/// binned by their std, all held-out draws).
fn write_accuracy_figures(
    ctx: &GpuContext,
    solver: &ResidualSolver,
    acc: &crate::infer::residual::SolverAccuracy,
    arrays: &[Vec<f64>; 4],
    out: &Path,
) -> Result<()> {
    let pb = &solver.pb;
    let nu = pb.nunk();
    let (exact, mean, sd) = (&arrays[1], &arrays[2], &arrays[3]);
    let ue = pb.nodal(&exact[..nu]);
    let um = pb.nodal(&mean[..nu]);
    let err: Vec<f64> = ue.iter().zip(&um).map(|(a, b)| (a - b).abs()).collect();
    let sd2: Vec<f64> = pb.nodal(&sd[..nu]).iter().map(|v| 2.0 * v).collect();
    let np = pb.n + 1;
    let r = ue.iter().cloned().fold(0.0, f64::max);
    let emax = err.iter().chain(&sd2).cloned().fold(0.0, f64::max);
    let mut p0 = Panel::new("exact u (CG)", Field2::nodes(&ue, np, np));
    p0.range = Some((0.0, r));
    let mut p1 = Panel::new("network mean", Field2::nodes(&um, np, np));
    p1.range = Some((0.0, r));
    let mut p2 = Panel::new("|error|", Field2::nodes(&err, np, np));
    p2.range = Some((0.0, emax));
    p2.cmap = Colormap::Viridis;
    let mut p3 = Panel::new("2 x predicted std", Field2::nodes(&sd2, np, np));
    p3.range = Some((0.0, emax));
    plot::write_panels_png(
        Painter::Gpu(ctx),
        &out.join("accuracy.png"),
        &format!(
            "residual solver on a held-out draw: rel. L2 error {:.2} %, {:.0} % of nodes within 2 std (all draws)",
            100.0 * acc.rel_l2[0],
            100.0 * acc.within_2sd
        ),
        &[p0, p1, p2, p3],
    )?;
    // Bins of equal node count by predicted std.
    let mut idx: Vec<usize> = (0..sd.len()).collect();
    idx.sort_by(|&a, &b| sd[a].total_cmp(&sd[b]));
    let bins = 20.min(idx.len());
    let (mut xs, mut ys, mut one, mut two) = (vec![], vec![], vec![], vec![]);
    for c in idx.chunks(idx.len().div_ceil(bins)) {
        let s = c.iter().map(|&k| sd[k]).sum::<f64>() / c.len() as f64;
        let e2 = c.iter().map(|&k| (mean[k] - exact[k]).powi(2)).sum::<f64>() / c.len() as f64;
        xs.push(s);
        ys.push(e2.sqrt());
        one.push(s);
        two.push(2.0 * s);
    }
    plot::write_line_plot(
        &out.join("error_vs_std.png"),
        &format!(
            "error against predicted std ({} held-out draws, nodes binned by std)",
            acc.draws
        ),
        "predicted std",
        "RMS error of the mean",
        &[
            Series {
                label: "RMS error".into(),
                x: &xs,
                y: &ys,
                band: None,
                rgb: [214, 39, 40],
                dashed: false,
            },
            Series {
                label: "error = std".into(),
                x: &xs,
                y: &one,
                band: None,
                rgb: [90, 90, 90],
                dashed: true,
            },
            Series {
                label: "error = 2 std".into(),
                x: &xs,
                y: &two,
                band: None,
                rgb: [160, 160, 160],
                dashed: true,
            },
        ],
        false,
        None,
    )
}

/// `pdevi solve --net DIR`: the trained solver's mean and std of u for xi
/// (or a prior draw); with `--u FIELD` and a two-way model, the proposal
/// of xi for that field instead.
pub fn solve_net(
    net: &Path,
    xi_file: Option<&Path>,
    u_file: Option<&Path>,
    seed: u64,
    out: &Path,
) -> Result<serde_json::Value> {
    let _lock = crate::output::files::OutLock::acquire(out)?;
    let ctx = GpuContext::new()?;
    let solver = ResidualSolver::load(&ctx, net)?;
    let pb = solver.pb.clone();
    let (n, nu) = (pb.n, pb.nunk());
    if let Some(up) = u_file {
        if xi_file.is_some() {
            return Err(Error::setting(
                "u",
                up.display(),
                "--u proposes xi from a field; drop --xi",
            ));
        }
        let (shape, v) = io::read_npy(up)?;
        let inner: Vec<f64> = if shape == [n + 1, n + 1] {
            (1..n)
                .flat_map(|j| (1..n).map(move |i| (i, j)))
                .map(|(i, j)| v[j * (n + 1) + i])
                .collect()
        } else if v.len() == nu {
            v
        } else {
            return Err(Error::Input {
                file: up.to_path_buf(),
                line: 0,
                message: format!(
                    "shape {shape:?}: expected a nodal field ({0} x {0}, like u.npy) or the {nu} interior values",
                    n + 1
                ),
            });
        };
        if let Some(i) = inner.iter().position(|x| !x.is_finite()) {
            return Err(Error::Input {
                file: up.to_path_buf(),
                line: 0,
                message: format!(
                    "interior value {i} is {}: the field must be finite",
                    inner[i]
                ),
            });
        }
        let (m, sd) = solver.propose(&ctx, &inner)?;
        crate::output::files::ensure_dir(out)?;
        io::write_npy(&out.join("xi_proposal.npy"), &[pb.d], &m)?;
        io::write_npy(&out.join("xi_proposal_std.npy"), &[pb.d], &sd)?;
        let z = pb.field(&m);
        io::write_npy(&out.join("z_proposal.npy"), &[n, n], &z)?;
        plot::write_field_png(
            Painter::Gpu(&ctx),
            &out.join("z_proposal.png"),
            &Field2::cells(&z, n, n),
            "log-permeability z proposed by the inverse map p(xi | u)",
            "z",
            &[],
        )?;
        let s = serde_json::json!({
            "net": net.display().to_string(), "u": up.display().to_string(),
            "xi_mean": m, "xi_std": sd, "device": ctx.describe(),
        });
        write_json(&out.join("solve.json"), &s)?;
        return Ok(s);
    }
    let xi = match xi_file {
        Some(p) => {
            let v = io::read_vector(p)?;
            check_xi(&v, pb.d, p)?;
            v
        }
        None => crate::rng::normals(seed, crate::rng::streams::TRUTH, 0, pb.d),
    };
    let t = Instant::now();
    let (mean, sd) = solver.predict(&ctx, &xi)?;
    let seconds = t.elapsed().as_secs_f64();
    let z = pb.field(&xi);
    crate::output::fields::write_fields(
        Painter::Gpu(&ctx),
        out,
        &pb,
        &z,
        &mean,
        "",
        "residual-trained solver, mean",
    )?;
    let sdn = pb.nodal(&sd);
    io::write_npy(&out.join("u_std.npy"), &[n + 1, n + 1], &sdn)?;
    plot::write_field_png(
        Painter::Gpu(&ctx),
        &out.join("u_std.png"),
        &Field2::nodes(&sdn, n + 1, n + 1),
        "pressure u: predicted std (residual-trained solver)",
        "std",
        &[],
    )?;
    let s = serde_json::json!({
        "net": net.display().to_string(),
        "xi_source": xi_file.map(|p| p.display().to_string()).unwrap_or_else(|| format!("prior draw, seed {seed}")),
        "sigma_r": solver.meta.sigma_r, "form": solver.meta.form,
        "max_u": mean.iter().cloned().fold(f64::MIN, f64::max),
        "mean_std": sd.iter().sum::<f64>() / sd.len() as f64,
        "seconds": seconds, "device": ctx.describe(),
    });
    write_json(&out.join("solve.json"), &s)?;
    Ok(s)
}

/// `pdevi bench residual`: network solves per second against batched CG
/// (the engine's default preconditioner, 1e-5) on the same device, at
/// batch 1 and 256; one JSON line per row. Without `--net`, an untrained
/// network of the default size is timed (speed does not depend on training).
pub fn bench_residual(
    args: &ProblemArgs,
    net: Option<&Path>,
    reps: usize,
) -> Result<Vec<serde_json::Value>> {
    let ctx = GpuContext::new()?;
    let solver = match net {
        Some(p) => ResidualSolver::load(&ctx, p)?,
        None => {
            let pb = args.build()?;
            let s = ResidualSettings::default();
            crate::infer::residual::check_settings(&pb, &s)?;
            let shape = crate::infer::residual::mean_shape(&pb);
            let meta = crate::infer::residual::ResidualMeta::with_shape(&pb, &s, &shape);
            let arch = crate::infer::residual::solver_arch(&pb, &s.hidden, s.act);
            ResidualSolver {
                shape,
                net: crate::nn::mlp::Mlp::new(&ctx, arch, None, 0)?,
                pb,
                meta,
                inverse: None,
            }
        }
    };
    let pb = solver.pb.clone();
    let mut rows = Vec::new();
    for &b in &[1usize, 256] {
        let xi = crate::rng::normals(7, crate::rng::streams::RESIDUAL_EVAL, 1, b * pb.d);
        // Network: the workspace built once; each rep uploads xi, runs the
        // forward pass and reads the head back (what a user's solve does).
        let ws =
            crate::nn::mlp::Workspace::new(&ctx, &solver.net, b, crate::nn::mlp::Loss::External)?;
        ws.predict(&ctx, &xi)?;
        let t = Instant::now();
        for _ in 0..reps {
            ws.predict(&ctx, &xi)?;
        }
        let net_s = t.elapsed().as_secs_f64() / reps as f64;
        let cg = crate::physics::solver::CgParams::default();
        let s = crate::physics::solver::BatchedSolver::new(&ctx, &pb, b, cg, None, false)?;
        s.solve(&ctx, &xi)?;
        let t = Instant::now();
        let mut iters = 0.0;
        for _ in 0..reps {
            let info = s.solve(&ctx, &xi)?;
            s.read_u(&ctx)?;
            iters += info.iter().map(|i| i.iters as f64).sum::<f64>() / b as f64;
        }
        let cg_s = t.elapsed().as_secs_f64() / reps as f64;
        let row = serde_json::json!({
            "bench": "residual", "problem": pb.kind.name(), "n": pb.n, "d": pb.d, "batch": b,
            "network_solves_per_s": b as f64 / net_s,
            "cg_solves_per_s": b as f64 / cg_s,
            "speedup": cg_s / net_s,
            "cg_iterations": iters / reps as f64,
            "network_params": solver.net.nparam(),
            "device": ctx.describe(),
        });
        println!("{row}");
        rows.push(row);
    }
    Ok(rows)
}

/// `pdevi run --likelihood residual --sigma-r R`: the posterior of xi and u
/// together from `p(y | u) p(r_hat = 0 | u, z) p(u) p(xi)`, by VI over
/// `(xi, v)` (`u = gamma A0^{-1} v`) with no solver in the loop; the files
/// of `run`, plus `posterior_mean_u`/`posterior_std_u` from q's own u.
pub fn run_residual(cfg: &crate::cli::run::RunConfig) -> Result<serde_json::Value> {
    use crate::infer::residual_vi::JointVi;
    use crate::infer::vi::{Family, FitSettings};
    let sigma_r = cfg.sigma_r.ok_or_else(|| {
        Error::setting(
            "sigma-r",
            "unset",
            "--likelihood residual needs the residual's noise level, e.g. --sigma-r 1e-5 for darcy2d at n = 32 (the load is h^2 = 1e-3 per node)",
        )
    })?;
    for (flag, set) in [
        ("forward", cfg.forward.is_some()),
        ("resume", cfg.resume.is_some()),
        ("checkpoint-every", cfg.checkpoint_every.is_some()),
        ("live", cfg.live.unwrap_or(false)),
        ("frames", cfg.frames.is_some()),
    ] {
        if set {
            return Err(Error::setting(
                flag,
                "set",
                "is not available with --likelihood residual (it has no solver; its runs take seconds)",
            ));
        }
    }
    let st = crate::cli::run::setup(cfg)?;
    let ctx = GpuContext::new()?;
    let (d, nu) = (st.pb.d, st.pb.nunk());
    let dim = d + nu;
    let default_family = match st.pb.kind {
        crate::physics::problem::ProblemKind::Poisson1d => "full-rank",
        crate::physics::problem::ProblemKind::Darcy2d => "low-rank",
    };
    let family = Family::parse(
        cfg.family.as_deref().unwrap_or(default_family),
        cfg.rank.unwrap_or(d.min(32)),
    )?;
    let samples = cfg.samples.unwrap_or(16);
    // Measured on darcy2d n = 16: the ELBO levels off after 4000 (mean-field)
    // to 12000 (low-rank) steps from q's start.
    let steps = cfg.steps.unwrap_or(12000);
    let fs = FitSettings {
        family,
        samples,
        steps,
        lr: cfg.lr.unwrap_or(0.05),
        lr_final: cfg.lr_final.unwrap_or(0.01),
        seed: st.seed,
        report_every: 50,
        ..Default::default()
    };
    if steps == 0 || !(fs.lr.is_finite() && fs.lr > 0.0) {
        return Err(Error::setting(
            "steps/lr",
            format!("{steps}/{}", fs.lr),
            "need steps >= 1 and lr > 0",
        ));
    }
    let mut vi = JointVi::new(
        &ctx,
        &st.pb,
        family,
        samples,
        &st.sensors,
        &st.y,
        sigma_r,
        st.seed,
    )?;
    vi.anneal = ANNEAL;
    if cfg.dry_run.unwrap_or(false) {
        let plan = serde_json::json!({
            "command": "run --likelihood residual", "dimension": dim,
            "family": family.name(), "parameters": family.nparam(dim),
            "dispatches_per_step": vi.dispatches_per_step(),
            "device_bytes": ctx.allocated_bytes(), "device": ctx.describe(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&plan).unwrap_or_default()
        );
        return Ok(plan);
    }
    let bar =
        crate::output::progress::progress_bar(steps, st.quiet, "steps  {per_sec}  ELBO {msg}");
    let r = vi.fit(&ctx, &fs, |t, e| {
        bar.set_position(t as u64 + 1);
        bar.set_message(format!("{e:.4e}"));
    })?;
    bar.finish_and_clear();
    let (m, cov) = vi.xi_marginal(&r.theta);
    let npred = cfg.predictive_samples.unwrap_or(256).max(2);
    let (umean, ustd) = vi.u_moments(&r.theta, npred, st.seed);
    // How well the posterior mean satisfies the physics: the relative
    // residual of u's mean at the field of xi's mean.
    let rel_res = relative_residual(&st.pb, &m, &umean);
    let solver = crate::physics::solver::BatchedSolver::new(
        &ctx,
        &st.pb,
        1,
        st.cg,
        Some(&st.sensors),
        false,
    )?;
    let mut metrics = serde_json::Map::new();
    crate::cli::run::write_posterior(
        &ctx,
        &solver,
        &st,
        &format!(
            "VI, {}, residual likelihood (sigma_r = {sigma_r:e})",
            family.name()
        ),
        &m,
        &cov,
        Some((umean, ustd, npred)),
        0,
        &mut metrics,
    )?;
    let ys = crate::cli::run::write_elbo_trace(
        &st.out,
        &r.trace,
        &format!(
            "ELBO, residual likelihood ({}, d + nunk = {dim}, {samples} samples/step)",
            family.name()
        ),
    )?;
    let all = serde_json::json!({
        "method": "vi-residual",
        "likelihood": "residual",
        "sigma_r": sigma_r,
        "dimension": dim,
        "final_elbo": ys.last().copied().unwrap_or(f64::NAN),
        "steps": r.trace.len(),
        "wall_seconds": r.seconds,
        "steps_per_s": r.trace.len() as f64 / r.seconds.max(1e-9),
        "dispatches_per_step": vi.dispatches_per_step(),
        "relative_residual_of_mean": rel_res,
        "device": ctx.describe(),
        "settings": st.settings_json(),
    });
    let all =
        crate::cli::run::finish_fit_metrics(&st.out, all, &fs, metrics, r.interrupted.is_some())?;
    if let Some(done) = r.interrupted {
        return Err(Error::Interrupted(format!(
            "stopped after {done} of {steps} steps; the posterior so far is in {}",
            st.out.display()
        )));
    }
    Ok(all)
}

/// `|A(z(xi)) u - b| / |b|` in f64.
#[allow(clippy::needless_range_loop, reason = "k indexes the operator's rows")]
pub fn relative_residual(pb: &crate::physics::problem::Problem, xi: &[f64], u: &[f64]) -> f64 {
    use crate::physics::problem::ProblemKind;
    let nu = pb.nunk();
    let field = pb.field(xi);
    let kappa: Vec<f64> = field.iter().map(|z| z.exp()).collect();
    let (mut num, mut den) = (0.0, 0.0);
    for k in 0..nu {
        let (au, b) = match pb.kind {
            ProblemKind::Darcy2d => (
                crate::cpu::physics::q1_op_apply(pb.n, &kappa, u, k),
                pb.h() * pb.h(),
            ),
            ProblemKind::Poisson1d => (
                crate::cpu::physics::p1_op_apply(pb.n, pb.n as f64, u, k),
                pb.h() * field[k],
            ),
        };
        num += (au - b) * (au - b);
        den += b * b;
    }
    (num / den.max(1e-300)).sqrt()
}
