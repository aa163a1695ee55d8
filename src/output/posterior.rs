//! The files of a posterior, the same for every method: the field's and the
//! solution's mean and std as `.npy` and PNG, error maps against a truth,
//! and one summary figure.

use std::path::Path;

use crate::error::Result;
use crate::output::io;
use crate::output::plot::{self, Field2, Painter, Panel, Series};
use crate::physics::problem::{Problem, ProblemKind};

/// The posterior arrays, their images and the summary figure.
#[allow(clippy::too_many_arguments, reason = "the fields of one posterior")]
pub fn write_posterior_files(
    painter: Painter,
    out: &Path,
    pb: &Problem,
    label: &str,
    fmean: &[f64],
    fstd: &[f64],
    umean: &[f64],
    ustd: &[f64],
    truth: Option<&[f64]>,
    sensors: &[usize],
    metrics: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let n = pb.n;
    let um = pb.nodal(umean);
    let us = pb.nodal(ustd);
    if let Some(t) = truth {
        let err: f64 = t
            .iter()
            .zip(fmean)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = t.iter().map(|a| a * a).sum::<f64>().sqrt();
        let inside = |k: f64| {
            t.iter()
                .zip(fmean)
                .zip(fstd)
                .filter(|((a, b), s)| (*a - *b).abs() <= k * **s)
                .count() as f64
                / t.len() as f64
        };
        metrics.insert(
            "rel_l2_error_posterior_mean".into(),
            (err / norm.max(1e-300)).into(),
        );
        metrics.insert("rel_l2_error_prior_mean".into(), 1.0.into());
        metrics.insert("truth_within_2sd".into(), inside(2.0).into());
        metrics.insert("truth_within_3sd".into(), inside(3.0).into());
    }
    match pb.kind {
        ProblemKind::Darcy2d => {
            io::write_npy(&out.join("posterior_mean_z.npy"), &[n, n], fmean)?;
            io::write_npy(&out.join("posterior_std_z.npy"), &[n, n], fstd)?;
            io::write_npy(&out.join("posterior_mean_u.npy"), &[n + 1, n + 1], &um)?;
            io::write_npy(&out.join("posterior_std_u.npy"), &[n + 1, n + 1], &us)?;
            let var: Vec<f64> = fstd.iter().map(|s| s * s).collect();
            io::write_npy(&out.join("posterior_var_z.npy"), &[n, n], &var)?;
            fn cell(v: &[f64], n: usize) -> Field2<'_> {
                Field2::cells(v, n, n)
            }
            fn node(v: &[f64], n: usize) -> Field2<'_> {
                Field2::nodes(v, n + 1, n + 1)
            }
            let sensors = pb.points_of(sensors);
            let images: [(&str, Field2, &str, &str); 5] = [
                (
                    "posterior_mean_z",
                    cell(fmean, n),
                    "posterior mean of z",
                    "z",
                ),
                (
                    "posterior_std_z",
                    cell(fstd, n),
                    "posterior std of z",
                    "std z",
                ),
                (
                    "posterior_var_z",
                    cell(&var, n),
                    "posterior variance of z",
                    "var z",
                ),
                ("posterior_mean_u", node(&um, n), "posterior mean of u", "u"),
                (
                    "posterior_std_u",
                    node(&us, n),
                    "posterior std of u",
                    "std u",
                ),
            ];
            for (stem, field, title, bar) in &images {
                plot::write_field_png(
                    painter,
                    &out.join(format!("{stem}.png")),
                    field,
                    &format!("{title}: {label}"),
                    bar,
                    &sensors,
                )?;
            }
            let panel = |title: &str, field, range| Panel {
                range,
                markers: &sensors,
                ..Panel::new(title, field)
            };
            let abs_err: Vec<f64>;
            let panels = if let Some(t) = truth {
                // Truth and mean share one colour scale.
                let lo = t.iter().chain(fmean).cloned().fold(f64::INFINITY, f64::min);
                let hi = t
                    .iter()
                    .chain(fmean)
                    .cloned()
                    .fold(f64::NEG_INFINITY, f64::max);
                abs_err = t.iter().zip(fmean).map(|(a, b)| (a - b).abs()).collect();
                vec![
                    panel("truth z", cell(t, n), Some((lo, hi))),
                    panel("posterior mean z", cell(fmean, n), Some((lo, hi))),
                    panel("posterior std z", cell(fstd, n), None),
                    panel("|error| of mean", cell(&abs_err, n), None),
                ]
            } else {
                vec![
                    panel("posterior mean z", cell(fmean, n), None),
                    panel("posterior std z", cell(fstd, n), None),
                    panel("posterior mean u", node(&um, n), None),
                ]
            };
            plot::write_panels_png(
                painter,
                &out.join("summary.png"),
                &match &pb.prior {
                    Some(_) => format!(
                        "darcy2d, VAE prior (n = {n}, K = {}, sigma_n = {}): {label}",
                        pb.d, pb.sigma_n
                    ),
                    None => format!(
                        "darcy2d (n = {n}, d = {}, sigma_n = {}): {label}",
                        pb.d, pb.sigma_n
                    ),
                },
                &panels,
            )?;
        }
        ProblemKind::Poisson1d => {
            let mut f = vec![0.0; n + 1];
            f[1..n].copy_from_slice(fmean);
            let mut fs = vec![0.0; n + 1];
            fs[1..n].copy_from_slice(fstd);
            io::write_npy(&out.join("posterior_mean_f.npy"), &[n + 1], &f)?;
            io::write_npy(&out.join("posterior_std_f.npy"), &[n + 1], &fs)?;
            io::write_npy(&out.join("posterior_mean_u.npy"), &[n + 1], &um)?;
            io::write_npy(&out.join("posterior_std_u.npy"), &[n + 1], &us)?;
            let x: Vec<f64> = (0..=n).map(|i| i as f64 / n as f64).collect();
            let band2 = |s: &[f64]| s.iter().map(|v| 2.0 * v).collect::<Vec<f64>>();
            let (fb, ub) = (band2(&fs), band2(&us));
            let tf: Option<Vec<f64>> = truth.map(|t| {
                let mut v = vec![0.0; n + 1];
                v[1..n].copy_from_slice(t);
                v
            });
            let blue = [31, 119, 180];
            let mut series = vec![Series {
                label: "posterior mean +- 2 sd".into(),
                x: &x,
                y: &f,
                band: Some(&fb),
                rgb: blue,
                dashed: false,
            }];
            if let Some(t) = &tf {
                series.push(Series {
                    label: "truth".into(),
                    x: &x,
                    y: t,
                    band: None,
                    rgb: [214, 39, 40],
                    dashed: true,
                });
            }
            plot::write_line_plot(
                &out.join("summary.png"),
                &format!(
                    "poisson1d (n = {n}, d = {}, sigma_n = {}): {label}",
                    pb.d, pb.sigma_n
                ),
                "x",
                "f",
                &series,
                false,
                None,
            )?;
            plot::write_line_plot(
                &out.join("posterior_mean_f.png"),
                &format!("posterior of f (mean +- 2 sd): {label}"),
                "x",
                "f",
                &series[..1],
                false,
                None,
            )?;
            let useries = [Series {
                label: "posterior mean +- 2 sd".into(),
                x: &x,
                y: &um,
                band: Some(&ub),
                rgb: blue,
                dashed: false,
            }];
            plot::write_line_plot(
                &out.join("posterior_mean_u.png"),
                &format!("posterior of u (mean +- 2 sd): {label}"),
                "x",
                "u",
                &useries,
                false,
                None,
            )?;
        }
    }
    Ok(())
}

/// The phase map of a darcy2d posterior: `phase_probability.npy` (n x n,
/// P(z_c > 0)) and `.png`. With a truth, the metrics of the sign of z: the
/// share of cells the posterior mean puts on the right side of 0, the IoU
/// of {mean > 0} with {truth > 0}, and how well the phase probability is
/// calibrated (Brier score, log loss, and per probability bin the share of
/// cells truly inside).
pub fn write_phase(
    painter: Painter,
    out: &Path,
    pb: &Problem,
    phase: &[f64],
    fmean: &[f64],
    truth: Option<&[f64]>,
    metrics: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let n = pb.n;
    io::write_npy(&out.join("phase_probability.npy"), &[n, n], phase)?;
    let sensors = pb.sensor_points();
    plot::write_panels_png(
        painter,
        &out.join("phase_probability.png"),
        "probability that a cell is inside an inclusion, P(z > 0 | y)",
        &[Panel {
            range: Some((0.0, 1.0)),
            markers: &sensors,
            ..Panel::new("P(z > 0 | y)", Field2::cells(phase, n, n))
        }],
    )?;
    let Some(t) = truth else {
        return Ok(());
    };
    use crate::physics::inclusions::{iou, phase_accuracy};
    metrics.insert(
        "phase_accuracy_posterior_mean".into(),
        phase_accuracy(fmean, t).into(),
    );
    metrics.insert("iou_posterior_mean".into(), iou(fmean, t).into());
    let inside: Vec<f64> = t.iter().map(|v| f64::from(u8::from(*v > 0.0))).collect();
    let m = t.len().max(1) as f64;
    let brier = phase
        .iter()
        .zip(&inside)
        .map(|(p, o)| (p - o).powi(2))
        .sum::<f64>()
        / m;
    let logloss = phase
        .iter()
        .zip(&inside)
        .map(|(p, o)| {
            let p = p.clamp(1e-3, 1.0 - 1e-3);
            -(o * p.ln() + (1.0 - o) * (1.0 - p).ln())
        })
        .sum::<f64>()
        / m;
    let bins: Vec<serde_json::Value> = (0..5)
        .map(|b| {
            let (lo, hi) = (b as f64 * 0.2, (b + 1) as f64 * 0.2);
            let cells: Vec<usize> = (0..phase.len())
                .filter(|&c| phase[c] >= lo && (phase[c] < hi || (b == 4 && phase[c] <= 1.0)))
                .collect();
            let k = cells.len();
            let mean_p = cells.iter().map(|&c| phase[c]).sum::<f64>() / k.max(1) as f64;
            let truly = cells.iter().map(|&c| inside[c]).sum::<f64>() / k.max(1) as f64;
            serde_json::json!({"bin": [lo, hi], "cells": k, "mean_probability": mean_p, "share_inside": truly})
        })
        .collect();
    metrics.insert(
        "phase_calibration".into(),
        serde_json::json!({"brier": brier, "log_loss": logloss, "bins": bins}),
    );
    Ok(())
}
