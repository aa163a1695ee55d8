//! Training sets of simulated pairs for amortised inference and surrogates:
//! N prior draws `xi`, their noise-free sensor values `y = G(xi)` from
//! batched GPU solves and, optionally, the whole solution `u`, written as
//! one safetensors file with the settings in its metadata. Noise is not
//! baked in: trainers add fresh noise every epoch.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::physics::problem::{Problem, ProblemArgs, ProblemKind};
use crate::physics::solver::{check_converged, BatchedSolver, CgParams};
use crate::rng::{normals, streams};

/// Format tag in the metadata of a training-set file.
pub const FORMAT: &str = "pdevi-simset";

/// What a training set was simulated with (stored in the file's metadata).
#[derive(Clone, Debug, PartialEq)]
pub struct SimSettings {
    pub problem: ProblemKind,
    pub n: usize,
    pub d: usize,
    pub count: usize,
    pub seed: u64,
    /// The problem's default noise level (training adds its own).
    pub sigma_n: f64,
    pub cg_tol: f64,
    /// Sensor unknown indices (the problem's defaults).
    pub sensors: Vec<usize>,
}

/// A training set: `xi [count, d]`, `y [count, m]` and optionally `u [count, nunk]`.
#[derive(Clone, Debug)]
pub struct SimSet {
    pub settings: SimSettings,
    pub xi: Vec<f64>,
    pub y: Vec<f64>,
    pub u: Option<Vec<f64>>,
    /// Seconds the simulation took (0 when read from a file).
    pub seconds: f64,
}

/// The prior draw of sample `j` of a set with `seed`: the same for every
/// `count`, so a larger set extends a smaller one.
pub fn prior_draw(seed: u64, j: usize, d: usize) -> Vec<f64> {
    normals(seed, streams::TRUTH, j as u32, d)
}

impl SimSet {
    /// Number of sensors.
    pub fn m(&self) -> usize {
        self.settings.sensors.len()
    }

    pub fn count(&self) -> usize {
        self.settings.count
    }

    /// Validation rows held out for training (`requested`, or a tenth of
    /// the set when 0), checked to leave at least one batch of `batch`.
    pub fn validation_rows(&self, requested: usize, batch: usize) -> Result<usize> {
        let n = self.count();
        let val = if requested > 0 {
            requested
        } else {
            (n / 10).max(1)
        };
        if val >= n || n - val < batch {
            return Err(Error::setting(
                "count",
                n,
                format!(
                    "the training set is too small for {val} validation rows and batches of {batch}"
                ),
            ));
        }
        Ok(val)
    }

    /// The problem the set was simulated on.
    pub fn problem(&self) -> Result<Problem> {
        ProblemArgs {
            kind: self.settings.problem,
            n: Some(self.settings.n),
            d: Some(self.settings.d),
        }
        .build()
    }

    /// N prior draws solved in batches of `batch` on the GPU; `progress(done,
    /// solves/s)` after every batch.
    #[allow(clippy::too_many_arguments, reason = "the settings of one simulation")]
    pub fn simulate(
        ctx: &GpuContext,
        pb: &Problem,
        count: usize,
        seed: u64,
        field: bool,
        cg: CgParams,
        batch: usize,
        mut progress: impl FnMut(usize, f64),
    ) -> Result<SimSet> {
        if count == 0 {
            return Err(Error::setting("count", 0, "need at least one sample"));
        }
        let (d, nu) = (pb.d, pb.nunk());
        let batch = batch.clamp(1, count);
        let solver = BatchedSolver::new(ctx, pb, batch, cg, None, false)?;
        let m = pb.sensors.len();
        let mut xi = Vec::with_capacity(count * d);
        let mut y = Vec::with_capacity(count * m);
        let mut u_all = field.then(|| Vec::with_capacity(count * nu));
        let t0 = Instant::now();
        for start in (0..count).step_by(batch) {
            let rows = batch.min(count - start);
            let mut x = Vec::with_capacity(batch * d);
            for k in 0..batch {
                // Pad a short last batch with its last draw (solved, not kept).
                x.extend(prior_draw(seed, start + k.min(rows - 1), d));
            }
            let info = solver.solve(ctx, &x)?;
            check_converged(&info[..rows], "training-set solves", &cg)?;
            let u = solver.read_u(ctx)?;
            for k in 0..rows {
                let uk = &u[k * nu..(k + 1) * nu];
                if let Some(bad) = uk.iter().find(|v| !v.is_finite()) {
                    return Err(Error::NoConvergence(format!(
                        "training-set sample {} has a non-finite solution value {bad}",
                        start + k
                    )));
                }
                y.extend(pb.sensors.iter().map(|&s| uk[s]));
                if let Some(ua) = u_all.as_mut() {
                    ua.extend_from_slice(uk);
                }
            }
            xi.extend_from_slice(&x[..rows * d]);
            let done = start + rows;
            progress(done, done as f64 / t0.elapsed().as_secs_f64().max(1e-9));
            // Ctrl-C: keep the draws made so far (draw j is the same for
            // every count, so the set is a prefix of the full one).
            if crate::interrupt::requested() && done < count {
                break;
            }
        }
        let count = xi.len() / d;
        Ok(SimSet {
            settings: SimSettings {
                problem: pb.kind,
                n: pb.n,
                d,
                count,
                seed,
                sigma_n: pb.sigma_n,
                cg_tol: cg.rel_tol,
                sensors: pb.sensors.clone(),
            },
            xi,
            y,
            u: u_all,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Write `xi`, `y` (and `u`) as f32 tensors with the settings as metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        let s = &self.settings;
        let mut tensors: Vec<(String, Vec<usize>, &[f64])> = vec![
            ("xi".into(), vec![s.count, s.d], &self.xi),
            ("y".into(), vec![s.count, self.m()], &self.y),
        ];
        if let Some(u) = &self.u {
            tensors.push(("u".into(), vec![s.count, u.len() / s.count], u));
        }
        let mut meta = HashMap::new();
        meta.insert("format".into(), FORMAT.into());
        meta.insert("problem".into(), s.problem.name().into());
        meta.insert("n".into(), s.n.to_string());
        meta.insert("d".into(), s.d.to_string());
        meta.insert("count".into(), s.count.to_string());
        meta.insert("seed".into(), s.seed.to_string());
        meta.insert("sigma_n".into(), format!("{:e}", s.sigma_n));
        meta.insert("cg_tol".into(), format!("{:e}", s.cg_tol));
        meta.insert(
            "sensors".into(),
            serde_json::to_string(&s.sensors).unwrap_or_default(),
        );
        meta.insert("field".into(), self.u.is_some().to_string());
        crate::output::io::write_safetensors_f32(path, &tensors, meta)
    }

    /// Read a set written by [`save`](Self::save); shapes, metadata and
    /// values are checked, and every problem names the file and the tensor.
    pub fn load(path: &Path) -> Result<SimSet> {
        use safetensors::tensor::Dtype;
        let bad = |message: String| Error::Format {
            path: path.into(),
            message,
        };
        let (data, meta) = crate::output::io::read_safetensors_checked(
            path,
            FORMAT,
            "a pdevi training set",
            "pdevi simulate --count N --out FILE.safetensors",
        )?;
        let get = |k: &str| -> Result<&String> {
            meta.get(k)
                .ok_or_else(|| bad(format!("metadata key `{k}` is missing")))
        };
        let num = |k: &str| -> Result<usize> {
            get(k)?
                .parse()
                .map_err(|_| bad(format!("metadata `{k}` = {:?} is not a count", get(k))))
        };
        let flt = |k: &str| -> Result<f64> {
            get(k)?
                .parse()
                .map_err(|_| bad(format!("metadata `{k}` = {:?} is not a number", get(k))))
        };
        let problem =
            ProblemKind::parse(get("problem")?).map_err(|e| bad(format!("metadata: {e}")))?;
        let (n, d, count) = (num("n")?, num("d")?, num("count")?);
        let seed: u64 = get("seed")?
            .parse()
            .map_err(|_| bad("metadata `seed` is not an integer".into()))?;
        let sensors: Vec<usize> = serde_json::from_str(get("sensors")?)
            .map_err(|e| bad(format!("metadata `sensors` is not a list of indices: {e}")))?;
        let st = safetensors::SafeTensors::deserialize(&data)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let read = |name: &str, cols: Option<usize>| -> Result<Option<(Vec<f64>, usize)>> {
            let t = match st.tensor(name) {
                Ok(t) => t,
                Err(_) => return Ok(None),
            };
            if t.dtype() != Dtype::F32 {
                return Err(bad(format!(
                    "tensor `{name}` is {:?}, expected F32",
                    t.dtype()
                )));
            }
            let shape = t.shape();
            let ok = shape.len() == 2 && shape[0] == count && cols.is_none_or(|c| shape[1] == c);
            if !ok {
                return Err(bad(format!(
                    "tensor `{name}` has shape {shape:?}, expected [{count}, {}] (count from the metadata)",
                    cols.map(|c| c.to_string()).unwrap_or("nunk".into())
                )));
            }
            let v: Vec<f64> = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(bad(format!(
                    "tensor `{name}` row {}, column {} is not finite",
                    i / shape[1],
                    i % shape[1]
                )));
            }
            Ok(Some((v, shape[1])))
        };
        let missing = |name: &str| bad(format!("tensor `{name}` is missing"));
        let (xi, _) = read("xi", Some(d))?.ok_or_else(|| missing("xi"))?;
        let (y, _) = read("y", Some(sensors.len()))?.ok_or_else(|| missing("y"))?;
        let u = read("u", None)?;
        let settings = SimSettings {
            problem,
            n,
            d,
            count,
            seed,
            sigma_n: flt("sigma_n")?,
            cg_tol: flt("cg_tol")?,
            sensors,
        };
        let set = SimSet {
            settings,
            xi,
            y,
            u: u.map(|(v, _)| v),
            seconds: 0.0,
        };
        let pb = set.problem().map_err(|e| bad(format!("settings: {e}")))?;
        if let Some(u) = &set.u {
            if u.len() != count * pb.nunk() {
                return Err(bad(format!(
                    "tensor `u` has {} columns, the {} problem at n = {n} has {} unknowns",
                    u.len() / count,
                    problem.name(),
                    pb.nunk()
                )));
            }
        }
        if let Some(&s) = set.settings.sensors.iter().find(|&&s| s >= pb.nunk()) {
            return Err(bad(format!(
                "sensor index {s} is off the grid ({} unknowns)",
                pb.nunk()
            )));
        }
        Ok(set)
    }

    /// Refuse a set simulated with other settings than `pb`'s (problem, n,
    /// d, sensors), naming each difference.
    pub fn check_matches(&self, pb: &Problem, path: &Path) -> Result<()> {
        let s = &self.settings;
        let mut diffs = Vec::new();
        if s.problem != pb.kind {
            diffs.push(format!(
                "problem {} (command: {})",
                s.problem.name(),
                pb.kind.name()
            ));
        }
        if s.n != pb.n {
            diffs.push(format!("n = {} (command: {})", s.n, pb.n));
        }
        if s.d != pb.d {
            diffs.push(format!("d = {} (command: {})", s.d, pb.d));
        }
        if s.sensors != pb.sensors {
            diffs.push(format!(
                "{} sensors (command: {})",
                s.sensors.len(),
                pb.sensors.len()
            ));
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(Error::Format {
                path: path.into(),
                message: format!(
                    "was simulated with {}; simulate a set with the command's settings or drop the differing flags",
                    diffs.join(", ")
                ),
            })
        }
    }
}
