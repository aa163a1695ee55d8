//! `pdevi compare REF OTHER`: how far one posterior (VI, Laplace) is from a
//! reference (MCMC, an exact posterior), from the files the commands leave
//! in their output folders.
//!
//! Each folder must hold `posterior_mean_xi.npy` (d,) and
//! `posterior_cov_xi.npy` (d, d); when present, the field files
//! (`posterior_{mean,std}_z.npy` (n, n) for darcy2d,
//! `posterior_{mean,std}_f.npy` (n+1,) for poisson1d) and, in REF,
//! `samples_xi.npy` (N, d) are used too. The results go to `compare.json`
//! with two figures: `compare.png` (coverage of REF's draws against the
//! nominal level, or the xi marginals when REF has no draws) and
//! `compare_fields.png` (the two mean fields and the std ratio).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::check::stats;
use crate::error::{Error, Result};
use crate::math::linalg;
use crate::output::files::{ensure_dir, write_json};
use crate::output::io;
use crate::output::plot::{self, Colormap, Field2, Painter, Panel, Series};

/// Nominal levels of the central credible intervals whose coverage is
/// reported.
pub const COVERAGE_LEVELS: [f64; 4] = [0.5, 0.8, 0.9, 0.95];

const MEAN_XI: &str = "posterior_mean_xi.npy";
const COV_XI: &str = "posterior_cov_xi.npy";
const SAMPLES_XI: &str = "samples_xi.npy";
const POSTERIOR_SAMPLES_XI: &str = "posterior_samples_xi.npy";

/// Posterior mean and pointwise std of the field, as written by `pdevi run`.
#[derive(Debug, Clone)]
pub struct FieldPosterior {
    /// `z` (darcy2d cells) or `f` (poisson1d nodes).
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// The posterior files of one output folder.
#[derive(Debug, Clone)]
pub struct PosteriorDir {
    pub dir: PathBuf,
    pub d: usize,
    pub mean_xi: Vec<f64>,
    /// Row-major d x d.
    pub cov_xi: Vec<f64>,
    pub field: Option<FieldPosterior>,
    /// Posterior draws of xi (one vector of length d per draw), if any.
    pub samples_xi: Option<Vec<Vec<f64>>>,
    /// What made it, for figure titles ("MCMC (pCN)", "VI, full-rank"):
    /// from the folder's metrics.json, else the folder's name.
    pub label: String,
}

/// A method's name for figures, from a metrics.json of `run`, `mcmc`,
/// `laplace` or `amortised`.
pub fn method_label(metrics: &Value) -> Option<String> {
    let method = metrics.get("method")?.as_str()?;
    let setting = |k: &str| {
        metrics
            .get("settings")
            .and_then(|s| s.get(k))
            .or_else(|| metrics.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Some(match method {
        "mcmc" => match setting("sampler").as_deref() {
            Some("pcn") => "MCMC (pCN)".into(),
            Some("mala") => "MCMC (MALA)".into(),
            Some(other) => format!("MCMC ({other})"),
            None => "MCMC".into(),
        },
        "vi" => match setting("family") {
            Some(f) => format!("VI, {f}"),
            None => "VI".into(),
        },
        "laplace" => "Laplace".into(),
        "laplace-surrogate" => "Laplace (surrogate)".into(),
        m if m.starts_with("amortised") => match setting("family") {
            Some(f) => format!("{m}, {f}"),
            None => m.into(),
        },
        m => m.into(),
    })
}

/// The sensors of the data a posterior folder was inferred from (its
/// metrics.json names the problem and the observation file), as points of
/// the unit square for the figure's markers; none when that cannot be read
/// (the markers are a help, not a requirement).
fn dir_sensors(dir: &Path) -> Vec<[f64; 2]> {
    let read = || -> Option<Vec<[f64; 2]>> {
        let text = std::fs::read_to_string(dir.join("metrics.json")).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        let st = v.get("settings")?;
        let kind =
            crate::physics::problem::ProblemKind::parse(st.get("problem")?.as_str()?).ok()?;
        let n = st.get("n")?.as_u64()? as usize;
        let obs = std::path::PathBuf::from(st.get("obs")?.as_str()?);
        // d = 1: only the grid and the sensors are needed, not the prior.
        let pb = crate::physics::problem::Problem::new(kind, n, 1).ok()?;
        let (sensors, _) = crate::physics::sensors::read_obs(&pb, &obs).ok()?;
        Some(pb.points_of(&sensors))
    };
    read().unwrap_or_default()
}

fn dir_label(dir: &Path) -> String {
    let from_metrics = std::fs::read_to_string(dir.join("metrics.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| method_label(&v));
    from_metrics.unwrap_or_else(|| {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string())
    })
}

fn format_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads a required array; a missing file says which command writes it.
fn read_required(dir: &Path, name: &str) -> Result<(Vec<usize>, Vec<f64>)> {
    let path = dir.join(name);
    if !path.is_file() {
        return Err(format_err(
            &path,
            format!(
                "file not found; `pdevi compare` reads the posterior files of an output folder: \
                 run `pdevi run --out {}` first (or point to a folder that has `{name}`)",
                dir.display()
            ),
        ));
    }
    read_finite(&path)
}

/// Reads an array and refuses NaN/inf: one bad value would turn every
/// statistic into NaN without saying where it came from.
fn read_finite(path: &Path) -> Result<(Vec<usize>, Vec<f64>)> {
    let (shape, v) = io::read_npy(path)?;
    if let Some(k) = v.iter().position(|x| !x.is_finite()) {
        return Err(format_err(
            path,
            format!(
                "value {} (flat index {k}) is not finite; the run that wrote it diverged",
                v[k]
            ),
        ));
    }
    Ok((shape, v))
}

fn read_optional(dir: &Path, name: &str) -> Result<Option<(Vec<usize>, Vec<f64>)>> {
    let path = dir.join(name);
    if path.is_file() {
        read_finite(&path).map(Some)
    } else {
        Ok(None)
    }
}

/// Reads the field mean/std pair if the mean is there (z first, then f).
fn read_field(dir: &Path) -> Result<Option<FieldPosterior>> {
    for (name, dims) in [("z", 2usize), ("f", 1)] {
        let mean_name = format!("posterior_mean_{name}.npy");
        let Some((shape, mean)) = read_optional(dir, &mean_name)? else {
            continue;
        };
        let mean_path = dir.join(&mean_name);
        if shape.len() != dims || shape.contains(&0) {
            return Err(format_err(
                &mean_path,
                format!("has shape {shape:?}; expected {dims} non-empty axes"),
            ));
        }
        let std_name = format!("posterior_std_{name}.npy");
        let (std_shape, std) = read_required(dir, &std_name)?;
        if std_shape != shape {
            return Err(format_err(
                &dir.join(&std_name),
                format!("has shape {std_shape:?} but {mean_name} has {shape:?}"),
            ));
        }
        return Ok(Some(FieldPosterior {
            name,
            shape,
            mean,
            std,
        }));
    }
    Ok(None)
}

/// Loads and checks the posterior files of `dir`.
pub fn load_posterior(dir: &Path) -> Result<PosteriorDir> {
    if !dir.is_dir() {
        return Err(format_err(
            dir,
            "not a folder; give an output folder of `pdevi run --out DIR`",
        ));
    }
    let (mshape, mean_xi) = read_required(dir, MEAN_XI)?;
    let d = match mshape.as_slice() {
        [d] if *d > 0 => *d,
        _ => {
            return Err(format_err(
                &dir.join(MEAN_XI),
                format!("has shape {mshape:?}; expected (d,)"),
            ))
        }
    };
    let (cshape, cov_xi) = read_required(dir, COV_XI)?;
    if cshape != [d, d] {
        return Err(format_err(
            &dir.join(COV_XI),
            format!("has shape {cshape:?}; expected ({d}, {d}) to match {MEAN_XI}"),
        ));
    }
    // MCMC writes samples_xi.npy; flow VI writes both names.
    let found = match read_optional(dir, SAMPLES_XI)? {
        Some(v) => Some(v),
        None => read_optional(dir, POSTERIOR_SAMPLES_XI)?,
    };
    let samples_xi = match found {
        None => None,
        Some((shape, v)) => match shape.as_slice() {
            [n, dd] if *dd == d && *n > 0 => Some(v.chunks(d).map(<[f64]>::to_vec).collect()),
            _ => {
                return Err(format_err(
                    &dir.join(SAMPLES_XI),
                    format!("has shape {shape:?}; expected (N, {d}) draws of xi"),
                ))
            }
        },
    };
    Ok(PosteriorDir {
        dir: dir.to_path_buf(),
        d,
        mean_xi,
        cov_xi,
        field: read_field(dir)?,
        samples_xi,
        label: dir_label(dir),
    })
}

/// `OTHER/compare_vs_<name of REF's folder>`.
pub fn default_out_dir(ref_dir: &Path, other_dir: &Path) -> PathBuf {
    let name = ref_dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .or_else(|| {
            ref_dir
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()))
        })
        .unwrap_or_else(|| "ref".into());
    other_dir.join(format!("compare_vs_{name}"))
}

fn norm(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// `|other - ref| / |ref|` (Euclidean).
fn rel_l2(reference: &[f64], other: &[f64]) -> f64 {
    let diff: Vec<f64> = other.iter().zip(reference).map(|(a, b)| a - b).collect();
    norm(&diff) / norm(reference)
}

/// Median and 5/95 % quantiles of `other / ref` over the entries where the
/// reference std is positive (a zero std, e.g. on a Dirichlet boundary,
/// has no meaningful ratio).
fn ratio_summary(reference: &[f64], other: &[f64]) -> Value {
    let mut r: Vec<f64> = reference
        .iter()
        .zip(other)
        .filter(|(a, _)| **a > 0.0)
        .map(|(a, b)| b / a)
        .collect();
    r.sort_by(f64::total_cmp);
    json!({
        "median": stats::quantile(&r, 0.5),
        "q05": stats::quantile(&r, 0.05),
        "q95": stats::quantile(&r, 0.95),
        "count": r.len(),
        "skipped_zero_ref_std": reference.len() - r.len(),
    })
}

fn marginal_std(cov: &[f64], d: usize) -> Vec<f64> {
    (0..d).map(|i| cov[i * d + i].max(0.0).sqrt()).collect()
}

/// Fraction of (draw, coordinate) pairs inside the central `level`
/// interval of the Gaussian marginals `N(mean_i, std_i^2)`.
fn coverage_of_draws(draws: &[Vec<f64>], mean: &[f64], std: &[f64], level: f64) -> f64 {
    let bounds: Vec<(f64, f64)> = mean
        .iter()
        .zip(std)
        .map(|(&m, &s)| stats::central_interval_gauss(m, s, level))
        .collect();
    let inside: usize = draws
        .iter()
        .map(|x| {
            x.iter()
                .zip(&bounds)
                .filter(|(v, (lo, hi))| lo <= *v && *v <= hi)
                .count()
        })
        .sum();
    inside as f64 / (draws.len() * mean.len()) as f64
}

fn level_map(values: &[f64]) -> Value {
    let map: serde_json::Map<String, Value> = COVERAGE_LEVELS
        .iter()
        .zip(values)
        .map(|(l, v)| (format!("{l}"), json!(v)))
        .collect();
    Value::Object(map)
}

/// Compares the posterior in `other_dir` with the reference in `ref_dir`
/// and writes `compare.json`, `compare.png` and (with field files)
/// `compare_fields.png` into `out_dir` (default [`default_out_dir`]).
/// Returns the JSON written.
///
/// Reported: relative L2 error of the posterior mean field and of the mean
/// of xi; the ratio of posterior stds (other / ref) over cells and over the
/// xi marginals (median, 5 and 95 %); KL(N_other || N_ref), KL(N_ref ||
/// N_other) and the 2-Wasserstein distance between the Gaussians in xi
/// (null, with a warning, where a covariance is not positive
/// (semi-)definite); and, when REF has `samples_xi.npy`, the fraction of
/// REF's draws inside OTHER's central Gaussian marginal intervals per
/// nominal level, with REF's own Gaussian as a baseline.
pub fn compare(
    painter: Painter,
    ref_dir: &Path,
    other_dir: &Path,
    out_dir: Option<&Path>,
) -> Result<Value> {
    let reference = load_posterior(ref_dir)?;
    let mut other = load_posterior(other_dir)?;
    if other.label == reference.label {
        other.label.push_str(" (other)");
    }
    let (rl, ol) = (reference.label.as_str(), other.label.as_str());
    let d = reference.d;
    if other.d != d {
        return Err(format_err(
            &other_dir.join(MEAN_XI),
            format!(
                "has d = {} but the reference {} has d = {d}; compare posteriors of the same problem",
                other.d,
                ref_dir.join(MEAN_XI).display()
            ),
        ));
    }
    let out = out_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_out_dir(ref_dir, other_dir));
    let mut warnings: Vec<String> = Vec::new();
    let mut report = serde_json::Map::new();
    report.insert("ref".into(), json!(ref_dir.display().to_string()));
    report.insert("other".into(), json!(other_dir.display().to_string()));
    report.insert("d".into(), json!(d));

    // Field.
    let field = match (&reference.field, &other.field) {
        (Some(rf), Some(of)) => {
            if rf.name != of.name || rf.shape != of.shape {
                return Err(format_err(
                    &other_dir.join(format!("posterior_mean_{}.npy", of.name)),
                    format!(
                        "holds field `{}` of shape {:?} but the reference holds `{}` of shape {:?}; \
                         compare runs of the same problem and grid",
                        of.name, of.shape, rf.name, rf.shape
                    ),
                ));
            }
            Some((rf, of))
        }
        (Some(rf), None) => {
            return Err(format_err(
                &other_dir.join(format!("posterior_mean_{}.npy", rf.name)),
                format!(
                    "file not found but the reference has it; run `pdevi run --out {}` to write \
                     the field files",
                    other_dir.display()
                ),
            ))
        }
        (None, Some(_)) => {
            warnings
                .push("the reference has no posterior field files; field metrics skipped".into());
            None
        }
        (None, None) => None,
    };
    if let Some((rf, of)) = field {
        report.insert("field".into(), json!(rf.name));
        report.insert("field_shape".into(), json!(rf.shape));
        report.insert(
            "rel_l2_mean_field".into(),
            json!(rel_l2(&rf.mean, &of.mean)),
        );
        report.insert("std_ratio_field".into(), ratio_summary(&rf.std, &of.std));
    }

    // Gaussians in xi.
    let ref_std = marginal_std(&reference.cov_xi, d);
    let other_std = marginal_std(&other.cov_xi, d);
    report.insert(
        "rel_l2_mean_xi".into(),
        json!(rel_l2(&reference.mean_xi, &other.mean_xi)),
    );
    report.insert("std_ratio_xi".into(), ratio_summary(&ref_std, &other_std));
    let (mr, sr, mo, so) = (
        &reference.mean_xi,
        &reference.cov_xi,
        &other.mean_xi,
        &other.cov_xi,
    );
    let kl_or = linalg::kl_gauss(mo, so, mr, sr, d);
    let kl_ro = linalg::kl_gauss(mr, sr, mo, so, d);
    if kl_or.is_none() {
        warnings.push(format!(
            "KL not computed: {} or {} is not positive definite",
            ref_dir.join(COV_XI).display(),
            other_dir.join(COV_XI).display()
        ));
    }
    let w2 = linalg::w2_gauss(mo, so, mr, sr, d);
    if w2.is_none() {
        warnings.push("W2 not computed: a covariance of xi is not positive semi-definite".into());
    }
    report.insert("kl_other_ref_xi".into(), json!(kl_or));
    report.insert("kl_ref_other_xi".into(), json!(kl_ro));
    report.insert("w2_xi".into(), json!(w2));

    // Coverage of the reference draws.
    let coverage = reference.samples_xi.as_ref().map(|draws| {
        let by_other: Vec<f64> = COVERAGE_LEVELS
            .iter()
            .map(|&l| coverage_of_draws(draws, mo, &other_std, l))
            .collect();
        let by_ref: Vec<f64> = COVERAGE_LEVELS
            .iter()
            .map(|&l| coverage_of_draws(draws, mr, &ref_std, l))
            .collect();
        (draws.len(), by_other, by_ref)
    });
    if let Some((n, by_other, by_ref)) = &coverage {
        report.insert("n_ref_samples".into(), json!(n));
        report.insert("coverage_of_ref_samples".into(), level_map(by_other));
        report.insert(
            "coverage_of_ref_samples_by_ref_gaussian".into(),
            level_map(by_ref),
        );
        report.insert(
            "coverage_error".into(),
            json!(stats::expected_coverage_error(&COVERAGE_LEVELS, by_other)),
        );
    }

    // Distances that stay finite between measures on function spaces,
    // between draws of each side (its own, or of its Gaussian when it has
    // none), at most 1000 a side.
    let draws_of = |p: &PosteriorDir, seed: u64| -> Option<Vec<f64>> {
        match &p.samples_xi {
            Some(rows) => {
                let k = rows.len().min(1000);
                Some(
                    (0..k)
                        .flat_map(|j| rows[j * rows.len() / k].iter().copied())
                        .collect(),
                )
            }
            None => {
                crate::infer::predictive::gaussian_draws(&p.mean_xi, &p.cov_xi, 1000, seed).ok()
            }
        }
    };
    match (draws_of(&reference, 1), draws_of(&other, 2)) {
        (Some(a), Some(b)) => {
            use crate::check::distance::{energy_distance, sliced_wasserstein};
            report.insert(
                "energy_distance_xi".into(),
                json!(energy_distance(&a, &b, d)),
            );
            report.insert(
                "sliced_wasserstein_xi".into(),
                json!(sliced_wasserstein(&a, &b, d, 200, 3)),
            );
            report.insert(
                "distance_draws".into(),
                json!({
                    "ref": if reference.samples_xi.is_some() { "samples" } else { "gaussian" },
                    "other": if other.samples_xi.is_some() { "samples" } else { "gaussian" },
                }),
            );
        }
        _ => warnings.push(
            "energy distance not computed: a covariance of xi is not positive definite".into(),
        ),
    }

    // Figures.
    ensure_dir(&out)?;
    let mut figures = vec!["compare.png"];
    let blue = [31, 119, 180];
    let orange = [255, 127, 14];
    let grey = [120, 120, 120];
    let png = out.join("compare.png");
    if let Some((_, by_other, by_ref)) = &coverage {
        let diag = [0.45, 1.0];
        plot::write_line_plot(
            &png,
            &format!("coverage of {rl}'s draws by central intervals"),
            "nominal level",
            "fraction inside",
            &[
                Series {
                    label: "nominal".into(),
                    x: &diag,
                    y: &diag,
                    band: None,
                    rgb: grey,
                    dashed: true,
                },
                Series {
                    label: format!("{ol}'s Gaussian"),
                    x: &COVERAGE_LEVELS,
                    y: by_other,
                    band: None,
                    rgb: blue,
                    dashed: false,
                },
                Series {
                    label: format!("{rl}'s Gaussian"),
                    x: &COVERAGE_LEVELS,
                    y: by_ref,
                    band: None,
                    rgb: orange,
                    dashed: false,
                },
            ],
            false,
            None,
        )?;
    } else {
        let x: Vec<f64> = (0..d).map(|i| i as f64).collect();
        let band = |s: &[f64]| s.iter().map(|v| 2.0 * v).collect::<Vec<f64>>();
        let (rb, ob) = (band(&ref_std), band(&other_std));
        plot::write_line_plot(
            &png,
            "posterior of xi: mean +- 2 sd",
            "KL mode",
            "xi",
            &[
                Series {
                    label: rl.into(),
                    x: &x,
                    y: mr,
                    band: Some(&rb),
                    rgb: orange,
                    dashed: false,
                },
                Series {
                    label: ol.into(),
                    x: &x,
                    y: mo,
                    band: Some(&ob),
                    rgb: blue,
                    dashed: true,
                },
            ],
            false,
            None,
        )?;
    }
    if let Some((rf, of)) = field {
        figures.push("compare_fields.png");
        let sensors = dir_sensors(ref_dir);
        write_field_figure(
            painter,
            &out.join("compare_fields.png"),
            (rf, rl),
            (of, ol),
            &sensors,
        )?;
    }
    report.insert("figures".into(), json!(figures));
    report.insert("warnings".into(), json!(warnings));
    let report = Value::Object(report);
    write_json(&out.join("compare.json"), &report)?;
    Ok(report)
}

/// darcy2d: REF mean | OTHER mean (shared scale) | std OTHER / REF
/// (diverging, centred on 1), titled with the methods' names. poisson1d:
/// both means with 2-sd bands.
fn write_field_figure(
    painter: Painter,
    path: &Path,
    (rf, rl): (&FieldPosterior, &str),
    (of, ol): (&FieldPosterior, &str),
    sensors: &[[f64; 2]],
) -> Result<()> {
    if rf.shape.len() == 2 {
        let (ny, nx) = (rf.shape[0], rf.shape[1]);
        let lo = rf
            .mean
            .iter()
            .chain(&of.mean)
            .fold(f64::INFINITY, |a, &b| a.min(b));
        let hi = rf
            .mean
            .iter()
            .chain(&of.mean)
            .fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let ratio: Vec<f64> = rf
            .std
            .iter()
            .zip(&of.std)
            .map(|(a, b)| if *a > 0.0 { b / a } else { f64::NAN })
            .collect();
        let spread = ratio
            .iter()
            .filter(|v| v.is_finite())
            .fold(0.05f64, |m, v| m.max((v - 1.0).abs()));
        plot::write_panels_png(
            painter,
            path,
            &format!("posterior of {}: {rl} vs {ol}", rf.name),
            &[
                Panel {
                    range: Some((lo, hi)),
                    markers: sensors,
                    ..Panel::new(format!("{rl}: mean"), Field2::cells(&rf.mean, nx, ny))
                },
                Panel {
                    range: Some((lo, hi)),
                    markers: sensors,
                    ..Panel::new(format!("{ol}: mean"), Field2::cells(&of.mean, nx, ny))
                },
                Panel {
                    range: Some((1.0 - spread, 1.0 + spread)),
                    cmap: Colormap::RdBu,
                    markers: sensors,
                    ..Panel::new(
                        format!("std ratio {ol} / {rl}"),
                        Field2::cells(&ratio, nx, ny),
                    )
                },
            ],
        )
    } else {
        let n = rf.mean.len();
        let x: Vec<f64> = (0..n).map(|i| i as f64 / (n - 1).max(1) as f64).collect();
        let rb: Vec<f64> = rf.std.iter().map(|s| 2.0 * s).collect();
        let ob: Vec<f64> = of.std.iter().map(|s| 2.0 * s).collect();
        plot::write_line_plot(
            path,
            &format!("posterior of {}: mean +- 2 sd", rf.name),
            "x",
            rf.name,
            &[
                Series {
                    label: rl.into(),
                    x: &x,
                    y: &rf.mean,
                    band: Some(&rb),
                    rgb: [255, 127, 14],
                    dashed: false,
                },
                Series {
                    label: ol.into(),
                    x: &x,
                    y: &of.mean,
                    band: Some(&ob),
                    rgb: [31, 119, 180],
                    dashed: true,
                },
            ],
            false,
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::special;
    use crate::rng::normals;

    fn test_dir(name: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/tmp/pdevi_compare_tests")
            .join(name);
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A correlated SPD covariance: B B^T / d + 0.2 I.
    fn covariance(d: usize) -> Vec<f64> {
        let b = normals(41, 30, 0, d * d);
        let mut s = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                s[i * d + j] = (0..d).map(|k| b[i * d + k] * b[j * d + k]).sum::<f64>() / d as f64;
            }
            s[i * d + i] += 0.2;
        }
        s
    }

    /// (name, shape, mean, std)
    type FieldSpec<'a> = (&'a str, Vec<usize>, Vec<f64>, Vec<f64>);

    struct Folder<'a> {
        mean: &'a [f64],
        cov: &'a [f64],
        field: Option<FieldSpec<'a>>,
        samples: Option<(usize, Vec<f64>)>,
    }

    fn write_folder(dir: &Path, f: &Folder) {
        std::fs::create_dir_all(dir).unwrap();
        let d = f.mean.len();
        io::write_npy(&dir.join(MEAN_XI), &[d], f.mean).unwrap();
        io::write_npy(&dir.join(COV_XI), &[d, d], f.cov).unwrap();
        if let Some((name, shape, m, s)) = &f.field {
            io::write_npy(&dir.join(format!("posterior_mean_{name}.npy")), shape, m).unwrap();
            io::write_npy(&dir.join(format!("posterior_std_{name}.npy")), shape, s).unwrap();
        }
        if let Some((n, v)) = &f.samples {
            io::write_npy(&dir.join(SAMPLES_XI), &[*n, d], v).unwrap();
        }
    }

    /// `n` draws from N(mean, cov), flat (n, d).
    fn gaussian_draws(mean: &[f64], cov: &[f64], n: usize) -> Vec<f64> {
        let d = mean.len();
        let l = crate::math::linalg::cholesky(cov, d).unwrap();
        let mut out = Vec::with_capacity(n * d);
        for k in 0..n {
            let e = normals(42, 31, k as u32, d);
            for i in 0..d {
                out.push(mean[i] + (0..=i).map(|j| l[i * d + j] * e[j]).sum::<f64>());
            }
        }
        out
    }

    fn num(v: &Value, path: &[&str]) -> f64 {
        let mut x = v;
        for p in path {
            x = &x[*p];
        }
        x.as_f64()
            .unwrap_or_else(|| panic!("{path:?} is not a number: {x}"))
    }

    #[test]
    fn compare_identical_folders() {
        let root = test_dir("identical");
        let d = 5;
        let n = 6;
        let mean: Vec<f64> = (0..d).map(|i| 0.3 * i as f64 - 0.5).collect();
        let cov = covariance(d);
        let zm: Vec<f64> = (0..n * n).map(|c| (c as f64 * 0.3).sin()).collect();
        let zs: Vec<f64> = (0..n * n).map(|c| 0.2 + 0.01 * c as f64).collect();
        let folder = Folder {
            mean: &mean,
            cov: &cov,
            field: Some(("z", vec![n, n], zm, zs)),
            samples: Some((500, gaussian_draws(&mean, &cov, 500))),
        };
        let (r, o) = (root.join("mcmc"), root.join("vi"));
        write_folder(&r, &folder);
        write_folder(&o, &folder);
        let v = compare(Painter::Cpu, &r, &o, None).unwrap();
        assert_eq!(v["field"], "z");
        assert_eq!(num(&v, &["rel_l2_mean_field"]), 0.0);
        for q in ["median", "q05", "q95"] {
            assert_eq!(num(&v, &["std_ratio_field", q]), 1.0);
            assert!((num(&v, &["std_ratio_xi", q]) - 1.0).abs() < 1e-15);
        }
        assert!(num(&v, &["kl_other_ref_xi"]).abs() < 1e-12);
        assert!(num(&v, &["kl_ref_other_xi"]).abs() < 1e-12);
        assert!(num(&v, &["w2_xi"]) < 1e-6);
        // Both Gaussians are the same, so the two coverages coincide.
        assert_eq!(
            v["coverage_of_ref_samples"],
            v["coverage_of_ref_samples_by_ref_gaussian"]
        );
        let out = o.join("compare_vs_mcmc");
        for f in ["compare.json", "compare.png", "compare_fields.png"] {
            assert!(out.join(f).is_file(), "{f} missing");
        }
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap())
                .unwrap();
        assert_eq!(written, v);
    }

    #[test]
    fn compare_halved_std_undercovers() {
        let root = test_dir("halved");
        let d = 5;
        let n = 9;
        let draws = 4000;
        let mean: Vec<f64> = (0..d).map(|i| 0.2 * i as f64).collect();
        let cov = covariance(d);
        let quarter: Vec<f64> = cov.iter().map(|c| 0.25 * c).collect();
        let fm: Vec<f64> = (0..=n).map(|i| (i as f64).cos()).collect();
        let fs: Vec<f64> = (0..=n)
            .map(|i| if i == 0 { 0.0 } else { 0.1 * i as f64 })
            .collect();
        let fs_half: Vec<f64> = fs.iter().map(|s| 0.5 * s).collect();
        let fm_other: Vec<f64> = fm.iter().map(|v| 1.1 * v).collect();
        let (r, o) = (root.join("ref"), root.join("other"));
        write_folder(
            &r,
            &Folder {
                mean: &mean,
                cov: &cov,
                field: Some(("f", vec![n + 1], fm.clone(), fs)),
                samples: Some((draws, gaussian_draws(&mean, &cov, draws))),
            },
        );
        write_folder(
            &o,
            &Folder {
                mean: &mean,
                cov: &quarter,
                field: Some(("f", vec![n + 1], fm_other, fs_half)),
                samples: None,
            },
        );
        let out = root.join("out");
        let v = compare(Painter::Cpu, &r, &o, Some(&out)).unwrap();
        assert!((num(&v, &["rel_l2_mean_field"]) - 0.1).abs() < 1e-12);
        for key in ["std_ratio_field", "std_ratio_xi"] {
            for q in ["median", "q05", "q95"] {
                assert!((num(&v, &[key, q]) - 0.5).abs() < 1e-12, "{key} {q}");
            }
        }
        // The zero std at node 0 is left out of the ratio.
        assert_eq!(v["std_ratio_field"]["skipped_zero_ref_std"], 1);
        // S_other = S / 4: KL(other || ref) = d/2 (1/4 - 1 + ln 4),
        // KL(ref || other) = d/2 (4 - 1 - ln 4), W2 = sqrt(tr S) / 2.
        let df = d as f64;
        let ln4 = 4f64.ln();
        assert!((num(&v, &["kl_other_ref_xi"]) - 0.5 * df * (0.25 - 1.0 + ln4)).abs() < 1e-12);
        assert!((num(&v, &["kl_ref_other_xi"]) - 0.5 * df * (3.0 - ln4)).abs() < 1e-12);
        let tr: f64 = (0..d).map(|i| cov[i * d + i]).sum();
        assert!((num(&v, &["w2_xi"]) - 0.5 * tr.sqrt()).abs() < 1e-9);
        // REF's draws against intervals half as wide: a draw lies inside
        // with probability P(|Z| <= z_l / 2) = 2 Phi(z_l / 2) - 1, with
        // z_l = Phi^-1((1 + l) / 2); at l = 0.9 that is 2 Phi(0.8224) - 1
        // = 0.58917. Tolerance: 4 binomial sd for `draws` trials (the d
        // coordinates of one draw are correlated, so count draws, not pairs).
        for l in COVERAGE_LEVELS {
            let key = format!("{l}");
            let want = 2.0 * special::norm_cdf(0.5 * special::norm_ppf(0.5 + 0.5 * l)) - 1.0;
            let got = num(&v, &["coverage_of_ref_samples", &key]);
            let tol = stats::binomial_halfwidth(want, draws, 4.0);
            assert!(
                (got - want).abs() < tol,
                "level {l}: {got} vs {want} +- {tol}"
            );
            assert!(got < l - 0.1, "level {l}: {got} not clearly below nominal");
            let base = num(&v, &["coverage_of_ref_samples_by_ref_gaussian", &key]);
            let tol = stats::binomial_halfwidth(l, draws, 4.0);
            assert!((base - l).abs() < tol, "baseline level {l}: {base}");
        }
        let at90 = 2.0 * special::norm_cdf(0.5 * 1.644_853_626_951_472_2) - 1.0;
        assert!((at90 - 0.589_166).abs() < 1e-6, "{at90}");
        for f in ["compare.json", "compare.png", "compare_fields.png"] {
            assert!(out.join(f).is_file(), "{f} missing");
        }
    }

    #[test]
    fn compare_reports_missing_and_mismatched_files() {
        let root = test_dir("errors");
        let d = 3;
        let mean = vec![0.0; d];
        let cov = covariance(d);
        let field = Some(("z", vec![4, 4], vec![1.0; 16], vec![0.5; 16]));
        let (r, o) = (root.join("ref"), root.join("other"));
        write_folder(
            &r,
            &Folder {
                mean: &mean,
                cov: &cov,
                field: field.clone(),
                samples: None,
            },
        );
        write_folder(
            &o,
            &Folder {
                mean: &mean,
                cov: &cov,
                field: None,
                samples: None,
            },
        );
        // OTHER lacks the field files the reference has.
        let e = compare(Painter::Cpu, &r, &o, None).unwrap_err().to_string();
        assert!(
            e.contains("posterior_mean_z.npy") && e.contains("pdevi run"),
            "{e}"
        );
        // OTHER lacks its covariance.
        std::fs::remove_file(o.join(COV_XI)).unwrap();
        let e = compare(Painter::Cpu, &r, &o, None).unwrap_err().to_string();
        assert!(e.contains(COV_XI) && e.contains("pdevi run --out"), "{e}");
        // Different d.
        write_folder(
            &o,
            &Folder {
                mean: &[0.0; 4],
                cov: &covariance(4),
                field,
                samples: None,
            },
        );
        let e = compare(Painter::Cpu, &r, &o, None).unwrap_err().to_string();
        assert!(e.contains("d = 4") && e.contains("d = 3"), "{e}");
        // Not a folder at all.
        let e = compare(Painter::Cpu, &root.join("nope"), &o, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("not a folder"), "{e}");
        // Samples of the wrong width.
        io::write_npy(&r.join(SAMPLES_XI), &[2, 4], &[0.0; 8]).unwrap();
        let e = load_posterior(&r).unwrap_err().to_string();
        assert!(e.contains(SAMPLES_XI) && e.contains("(N, 3)"), "{e}");
    }

    #[test]
    fn default_out_dir_names_the_reference() {
        assert_eq!(
            default_out_dir(Path::new("out/mcmc/"), Path::new("out/vi")),
            Path::new("out/vi/compare_vs_mcmc")
        );
    }
}
