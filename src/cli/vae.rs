//! inclusions2d and the deep generative prior on the command line:
//! `pdevi simulate --problem inclusions2d` (one case, or a training set of
//! fields) and `pdevi train vae` (the VAE, its figures and scores).

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::nn::vae::{self, VaeReport, VaeSettings};
use crate::output::fields::write_fields;
use crate::output::files::{ensure_dir, write_json};
use crate::output::io::{self, Observation};
use crate::output::plot::{self, Colormap, Field2, Painter, Panel};
use crate::physics::inclusions;
use crate::physics::problem::Problem;

/// Whether a `--problem` names inclusions2d.
pub fn is_inclusions(name: &str) -> bool {
    matches!(
        name.trim().to_ascii_lowercase().as_str(),
        "inclusions2d" | "inclusions"
    )
}

/// The draw index of a single case (`simulate --seed S`): far from the rows
/// of any training set (rows 0..count), so a case is never a training field.
pub const CASE_INDEX: u32 = 0x8000_0000;

/// Noisy sensor readings of the field z (f64 reference solve, NOISE stream
/// of `seed`), and the solution.
pub fn observe(pb: &Problem, z: &[f64], seed: u64, sigma: f64) -> Result<(Vec<f64>, Vec<f64>)> {
    let fwd = crate::physics::reference::forward_field(pb, z, 1e-12, 100_000);
    if fwd.state.status != crate::gpu::layout::status::CONVERGED {
        return Err(Error::NoConvergence(format!(
            "simulate: the f64 reference solve stopped after {} iterations (status {})",
            fwd.state.iters, fwd.state.status
        )));
    }
    let eps = crate::rng::normals(seed, crate::rng::streams::NOISE, 0, pb.sensors.len());
    let y = pb
        .sensors
        .iter()
        .zip(&eps)
        .map(|(&k, e)| fwd.u[k] + sigma * e)
        .collect();
    Ok((y, fwd.u))
}

/// `pdevi simulate --problem inclusions2d --seed S --out DIR`: one case
/// like darcy2d's (obs.csv, z_true / u_true as .npy and .png, simulate.json
/// with the discs).
pub fn simulate_case(
    n: Option<usize>,
    seed: u64,
    noise: Option<f64>,
    out: &Path,
) -> Result<serde_json::Value> {
    let pb = inclusions::problem(n, None)?;
    let sigma = noise.unwrap_or(pb.sigma_n);
    if !(sigma.is_finite() && sigma >= 0.0) {
        return Err(Error::setting(
            "noise",
            sigma,
            "must be a finite, non-negative standard deviation",
        ));
    }
    let (discs, z) = inclusions::draw(pb.n, seed, CASE_INDEX);
    let (y, u) = observe(&pb, &z, seed, sigma)?;
    ensure_dir(out)?;
    let h = pb.h();
    let obs: Vec<Observation> = pb
        .sensors
        .iter()
        .zip(&y)
        .map(|(&k, &value)| {
            let (i, j) = pb.unknown_node(k);
            Observation {
                i,
                j,
                x: i as f64 * h,
                y: j as f64 * h,
                value,
            }
        })
        .collect();
    let csv = out.join("obs.csv");
    io::write_observations(&csv, 2, &obs)?;
    let ctx = crate::cli::commands::figure_context();
    write_fields(
        Painter::of(ctx.as_ref()),
        out,
        &pb,
        &z,
        &u,
        "_true",
        "truth",
    )?;
    let summary = serde_json::json!({
        "problem": "inclusions2d", "n": pb.n, "seed": seed, "noise": sigma,
        "sensors": obs.len(), "observations": csv.display().to_string(),
        "discs": discs,
        "inside_share": z.iter().filter(|&&v| v > 0.0).count() as f64 / z.len() as f64,
    });
    write_json(&out.join("simulate.json"), &summary)?;
    Ok(summary)
}

/// `pdevi simulate --problem inclusions2d --count N --out FILE.safetensors`:
/// `z [N, n*n]` (row i is draw i of `seed`), and with `field` the solutions
/// `u [N, (n-1)^2]` (f64 reference solves).
pub fn simulate_set(
    n: Option<usize>,
    count: usize,
    seed: u64,
    field: bool,
    quiet: bool,
    out: &Path,
) -> Result<serde_json::Value> {
    let pb = inclusions::problem(n, None)?;
    if count == 0 {
        return Err(Error::setting("count", 0, "need at least one field"));
    }
    if count >= CASE_INDEX as usize {
        return Err(Error::setting("count", count, "at most 2^31 - 1 fields"));
    }
    let nc = pb.n * pb.n;
    let per = nc + if field { pb.nunk() } else { 0 };
    crate::memory::check_host(
        "count",
        count,
        "the training set",
        (count as u128) * (per as u128) * 12,
        "write fewer fields",
    )?;
    let mut z = Vec::with_capacity(count * nc);
    let mut u = Vec::new();
    let bar = crate::output::progress::progress_bar(count, quiet || !field, "fields {msg}");
    for i in 0..count {
        let (_, zi) = inclusions::draw(pb.n, seed, i as u32);
        if field {
            let f = crate::physics::reference::forward_field(&pb, &zi, 1e-10, 100_000);
            u.extend(f.u);
            bar.set_position(i as u64 + 1);
        }
        z.extend(zi);
    }
    bar.finish_and_clear();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pdevi-fields".to_string());
    meta.insert("class".to_string(), "inclusions2d".to_string());
    meta.insert("n".to_string(), pb.n.to_string());
    meta.insert("count".to_string(), count.to_string());
    meta.insert("seed".to_string(), seed.to_string());
    let mut tensors = vec![("z".to_string(), vec![count, nc], &z[..])];
    if field {
        tensors.push(("u".to_string(), vec![count, pb.nunk()], &u[..]));
    }
    io::write_safetensors_f32(out, &tensors, meta)?;
    let inside = z.iter().filter(|&&v| v > 0.0).count() as f64 / z.len() as f64;
    Ok(serde_json::json!({
        "problem": "inclusions2d", "count": count, "seed": seed, "n": pb.n,
        "field": field, "inside_share": inside, "out": out.display().to_string(),
    }))
}

/// Read the fields `z [N, n*n]` of a set written by [`simulate_set`]:
/// (fields, n, class).
pub fn load_fields(path: &Path) -> Result<(Vec<f64>, usize, String)> {
    use safetensors::tensor::Dtype;
    let bad = |message: String| Error::Format {
        path: path.into(),
        message,
    };
    let (data, meta) = io::read_safetensors_checked(
        path,
        "pdevi-fields",
        "a set of fields",
        "pdevi simulate --problem inclusions2d --count N --out FILE.safetensors",
    )?;
    let class = meta
        .get("class")
        .cloned()
        .unwrap_or_else(|| "unknown".into());
    let st = safetensors::SafeTensors::deserialize(&data)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let t = st
        .tensor("z")
        .map_err(|_| bad("tensor `z` is missing".into()))?;
    let shape = t.shape().to_vec();
    let n = (shape.get(1).copied().unwrap_or(0) as f64).sqrt().round() as usize;
    if t.dtype() != Dtype::F32 || shape.len() != 2 || n * n != shape[1] || shape[0] == 0 {
        return Err(bad(format!(
            "tensor `z` is {:?} {shape:?}: expected F32 [N, n*n]",
            t.dtype()
        )));
    }
    let z: Vec<f64> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
        .collect();
    if let Some(i) = z
        .iter()
        .position(|v| !v.is_finite() || v.abs() > 1.0 + 1e-6)
    {
        return Err(bad(format!(
            "tensor `z`: row {}, cell {} is {} (fields of a phase lie in [-1, 1])",
            i / shape[1],
            i % shape[1],
            z[i]
        )));
    }
    Ok((z, n, class))
}

/// `pdevi train vae --data FILE --out DIR`: train, save, and write
/// `reconstructions.png` (held-out fields above their reconstructions),
/// `prior_samples.png` (fields decoded from w ~ N(0, I)), `elbo.png` and
/// `train.json` (settings, report, scores, the prior samples' statistics).
pub fn train(
    ctx: &GpuContext,
    data: &Path,
    s: &VaeSettings,
    out: &Path,
) -> Result<serde_json::Value> {
    let (fields, n, class) = load_fields(data)?;
    let (vae, report) = vae::train_vae(ctx, &fields, n, &class, s)?;
    vae.save(ctx, out)?;
    let enc_p = vae.enc.read_params(ctx)?;
    let dec_p = vae.dec.read_params(ctx)?;
    let nc = n * n;
    let rows = fields.len() / nc;
    let held = &fields[(rows - 4.min(rows)) * nc..];
    let (mu, _) = vae::encode(&vae.enc.arch, &enc_p, held, s.latent);
    let recon = vae::field_of_logits(&vae::decode_logits(&vae.dec.arch, &dec_p, &mu));
    let painter = Painter::Gpu(ctx);
    let panels = |a: &[f64], titles: &dyn Fn(usize) -> String| -> Vec<(String, Vec<f64>)> {
        a.chunks(nc)
            .enumerate()
            .map(|(i, c)| (titles(i), c.to_vec()))
            .collect()
    };
    let truth = panels(held, &|i| format!("field {}", i + 1));
    let rec = panels(&recon, &|i| format!("reconstruction {}", i + 1));
    let mut both = Vec::new();
    for (t, r) in truth.iter().zip(&rec) {
        both.push(t.clone());
        both.push(r.clone());
    }
    write_row(
        painter,
        &out.join("reconstructions.png"),
        "held-out fields and their reconstructions f(mu(z))",
        &both,
        n,
    )?;
    let w = crate::rng::normals(s.seed, crate::rng::streams::VAE, 0, 256 * s.latent);
    let samples = vae::field_of_logits(&vae::decode_logits(&vae.dec.arch, &dec_p, &w));
    let shown = panels(&samples[..6 * nc], &|i| {
        format!("w ~ N(0, I), draw {}", i + 1)
    });
    write_row(
        painter,
        &out.join("prior_samples.png"),
        "fields decoded from the prior w ~ N(0, I)",
        &shown,
        n,
    )?;
    let stats = field_stats(&samples);
    let train_stats = field_stats(&fields);
    write_training_trace(out, &report)?;
    let summary = serde_json::json!({
        "data": data.display().to_string(), "class": class, "n": n,
        "fields": rows, "latent": s.latent, "hidden": s.hidden, "act": s.act.name(),
        "epochs": s.epochs, "batch": s.batch, "lr": s.lr, "lr_final": s.lr_final,
        "beta": s.beta, "seed": s.seed,
        "report": report, "validation": vae.meta.validation,
        "prior_samples": stats, "training_fields": train_stats,
        "device": ctx.describe(),
    });
    write_json(&out.join("train.json"), &summary)?;
    Ok(summary)
}

/// Statistics of fields that a blur fails: the share of cells with
/// |z| > 0.8 (sharp), the blur ratio (cells with |z| <= 0.8 per cell
/// inside) and the share inside (z > 0).
pub fn field_stats(z: &[f64]) -> serde_json::Value {
    let m = z.len().max(1) as f64;
    serde_json::json!({
        "sharp_share": z.iter().filter(|v| v.abs() > 0.8).count() as f64 / m,
        "blur_ratio": vae::blur_ratio(z),
        "inside_share": z.iter().filter(|&&v| v > 0.0).count() as f64 / m,
    })
}

/// One row of field panels on the phase's scale [-1, 1].
pub fn write_row(
    painter: Painter,
    path: &Path,
    title: &str,
    fields: &[(String, Vec<f64>)],
    n: usize,
) -> Result<()> {
    let panels: Vec<Panel> = fields
        .iter()
        .map(|(t, v)| Panel {
            range: Some((-1.0, 1.0)),
            cmap: Colormap::Viridis,
            ..Panel::new(t.clone(), Field2::cells(v, n, n))
        })
        .collect();
    plot::write_panels_png(painter, path, title, &panels)
}

fn write_training_trace(out: &Path, r: &VaeReport) -> Result<()> {
    let xs: Vec<f64> = (1..=r.train_recon.len()).map(|e| e as f64).collect();
    let neg: Vec<f64> = r.train_recon.iter().map(|v| -v).collect();
    let mut series = vec![plot::Series {
        label: "-recon NLL (training minibatches)".into(),
        x: &xs,
        y: &neg,
        band: None,
        rgb: [31, 119, 180],
        dashed: false,
    }];
    if !r.val_elbo.is_empty() {
        series.push(plot::Series {
            label: "held-out ELBO".into(),
            x: &xs[..r.val_elbo.len()],
            y: &r.val_elbo,
            band: None,
            rgb: [214, 39, 40],
            dashed: false,
        });
    }
    let all: Vec<f64> = neg.iter().chain(&r.val_elbo).copied().collect();
    plot::write_line_plot(
        &out.join("elbo.png"),
        "VAE training (per field, nats)",
        "epoch",
        "nats",
        &series,
        false,
        Some(plot::robust_range(&all)),
    )
}
