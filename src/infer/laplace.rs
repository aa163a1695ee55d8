//! MAP by Gauss-Newton with adjoint Jacobians, and the Laplace posterior
//! N(MAP, (I + J^T J / sigma^2)^-1) (`pdevi laplace`).
//!
//! The Jacobian J = dG/dxi (sensors x d) comes from one batched adjoint
//! solve: system k of a solver with per-system data and unit noise is given
//! the data `G(x) - e_k`, so its misfit gradient `-J^T (y_k - G) = J^T e_k`
//! is row k of J. The line search evaluates several step lengths in one
//! batched forward solve.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::math::linalg;
use crate::physics::problem::Problem;
use crate::physics::solver::{check_converged, BatchedSolver, CgParams};

/// The Laplace approximation at the MAP.
#[derive(Clone, Debug)]
pub struct Laplace {
    /// MAP estimate of xi (d).
    pub map: Vec<f64>,
    /// Covariance (I + J^T J / sigma^2)^-1 at the MAP (d x d, row-major).
    pub cov: Vec<f64>,
    /// Gauss-Newton iterations taken.
    pub iterations: usize,
    /// Negative log-posterior Phi + |xi|^2 / 2 at the MAP.
    pub objective: f64,
    /// Objective after each iteration (the first entry is the start).
    pub history: Vec<f64>,
    /// Newton decrement^2 / 2 of the last step (the predicted decrease).
    pub decrement: f64,
    /// Laplace estimate of log p(y).
    pub log_evidence: f64,
    pub seconds: f64,
    /// Wall seconds per phase (each ends with a read-back, so its wall
    /// time is its cost): Jacobians, line-search solves, host linear algebra.
    pub phases: Vec<(&'static str, f64)>,
}

/// Forward values and adjoint Jacobians through one batched solver.
pub struct GaussNewton {
    pub solver: BatchedSolver,
    pb: Problem,
    sensors: Vec<usize>,
    y: Vec<f64>,
    /// When set, G and J come from this surrogate instead of the solver.
    surrogate: Option<SurrogateModel>,
}

/// A surrogate as a forward model for Gauss-Newton: values by its forward
/// pass, Jacobian rows by its backward pass from one-hot output gradients
/// (one row of the batch per sensor).
struct SurrogateModel {
    ws: crate::nn::mlp::Workspace,
    /// Output column of each sensor, and its un-standardisation.
    cols: Vec<usize>,
    mean: Vec<f64>,
    sd: Vec<f64>,
    /// Outputs per row (with the log-variances, if any).
    width: usize,
}

/// Step lengths tried by the line search, in one batched solve.
const STEPS: [f64; 4] = [1.0, 0.5, 0.25, 0.0625];

impl GaussNewton {
    pub fn new(
        ctx: &GpuContext,
        pb: &Problem,
        sensors: &[usize],
        y: &[f64],
        cg: CgParams,
    ) -> Result<Self> {
        if y.len() != sensors.len() {
            return Err(Error::setting(
                "data",
                y.len(),
                format!("expected one value per sensor ({})", sensors.len()),
            ));
        }
        // Unit noise: the adjoint right-hand side is then -e_k exactly (a
        // 1/sigma^2 scale would be applied to a difference of f32 values).
        let mut unit = pb.clone();
        unit.sigma_n = 1.0;
        let batch = sensors.len().max(STEPS.len());
        let solver = BatchedSolver::new(ctx, &unit, batch, cg, Some(sensors), true)?;
        Ok(GaussNewton {
            solver,
            pb: pb.clone(),
            sensors: sensors.to_vec(),
            y: y.to_vec(),
            surrogate: None,
        })
    }

    /// Gauss-Newton with a surrogate forward model (`pdevi laplace
    /// --forward surrogate:DIR`); the solver stays for the predictive.
    pub fn with_surrogate(
        ctx: &GpuContext,
        pb: &Problem,
        sensors: &[usize],
        y: &[f64],
        cg: CgParams,
        sur: &crate::infer::surrogate::Surrogate,
    ) -> Result<Self> {
        let mut gn = GaussNewton::new(ctx, pb, sensors, y, cg)?;
        let cols: Vec<usize> = sur
            .columns(sensors)?
            .into_iter()
            .map(|c| c as usize)
            .collect();
        let batch = sensors.len().max(STEPS.len());
        let ws =
            crate::nn::mlp::Workspace::new(ctx, &sur.net, batch, crate::nn::mlp::Loss::External)?;
        let sc = &sur.meta.out_scaling;
        gn.surrogate = Some(SurrogateModel {
            mean: cols.iter().map(|&c| sc.mean[c]).collect(),
            sd: cols.iter().map(|&c| sc.sd[c]).collect(),
            cols,
            width: sur.net.arch.output(),
            ws,
        });
        Ok(gn)
    }

    /// Replace the observations (same sensors): one solver serves many data sets.
    pub fn set_observations(&mut self, y: &[f64]) -> Result<()> {
        if y.len() != self.sensors.len() {
            return Err(Error::setting(
                "data",
                y.len(),
                format!("expected one value per sensor ({})", self.sensors.len()),
            ));
        }
        if let Some(v) = y.iter().find(|v| !v.is_finite()) {
            return Err(Error::setting("data", v, "observations must be finite"));
        }
        self.y = y.to_vec();
        Ok(())
    }

    /// G(x) at the sensors for each x (at most the batch; padded with the first).
    pub fn forward(&self, ctx: &GpuContext, xs: &[Vec<f64>]) -> Result<Vec<Vec<f64>>> {
        if let Some(sm) = &self.surrogate {
            let b = sm.ws.batch;
            let mut all = Vec::with_capacity(b * self.pb.d);
            for k in 0..b {
                all.extend_from_slice(&xs[k.min(xs.len() - 1)]);
            }
            let out = sm.ws.predict(ctx, &all)?;
            return Ok((0..xs.len())
                .map(|k| {
                    (0..sm.cols.len())
                        .map(|j| sm.mean[j] + sm.sd[j] * out[k * sm.width + sm.cols[j]])
                        .collect()
                })
                .collect());
        }
        let (d, b, nu) = (self.pb.d, self.solver.batch, self.pb.nunk());
        let mut all = Vec::with_capacity(b * d);
        for k in 0..b {
            all.extend_from_slice(&xs[k.min(xs.len() - 1)]);
        }
        debug_assert_eq!(all.len(), b * d);
        let info = self.solver.solve(ctx, &all)?;
        check_converged(
            &info[..xs.len()],
            "Gauss-Newton forward solves",
            &self.solver.cg,
        )?;
        let u = self.solver.read_u(ctx)?;
        Ok((0..xs.len())
            .map(|k| self.sensors.iter().map(|&s| u[k * nu + s]).collect())
            .collect())
    }

    /// (G(x), J) with J row-major (sensors x d).
    pub fn jacobian(&self, ctx: &GpuContext, x: &[f64]) -> Result<(Vec<f64>, Vec<f64>)> {
        if let Some(sm) = &self.surrogate {
            // Row k of the batch carries the one-hot gradient of sensor k.
            let (d, ns) = (self.pb.d, self.sensors.len());
            let g = self.forward(ctx, &[x.to_vec()])?.swap_remove(0);
            let mut og = vec![0f32; sm.ws.batch * sm.width];
            for k in 0..ns {
                og[k * sm.width + sm.cols[k]] = sm.sd[k] as f32;
            }
            ctx.write(sm.ws.output_grad(), &og);
            let mut enc = ctx.encoder("laplace.surrogate_jacobian");
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                // The forward pass of `forward` left every row at x.
                sm.ws.encode_backward(&mut pass, true);
            }
            ctx.submit_wait(enc)?;
            let dx: Vec<f32> = ctx.read(&sm.ws.dx, 0, ns * d)?;
            return Ok((g, dx.into_iter().map(f64::from).collect()));
        }
        let (d, b, ns) = (self.pb.d, self.solver.batch, self.sensors.len());
        let g = self.forward(ctx, &vec![x.to_vec(); b])?.swap_remove(0);
        let mut data = vec![0.0; b * ns];
        for k in 0..b {
            data[k * ns..(k + 1) * ns].copy_from_slice(&g);
            if k < ns {
                data[k * ns + k] -= 1.0;
            }
        }
        self.solver.set_data(ctx, &data)?;
        let mut enc = ctx.encoder("laplace.jacobian");
        // The forward solution is still in place (same x): only the adjoint.
        self.solver.encode_gradient(&mut enc);
        ctx.submit_wait(enc)?;
        check_converged(
            &self.solver.adjoint_info(ctx)?[..ns],
            "Jacobian adjoint solves",
            &self.solver.cg,
        )?;
        let j = self.solver.read_f64(ctx, &self.solver.gxi, ns * d)?;
        Ok((g, j))
    }

    /// Phi(x) + |x|^2 / 2 from the sensor values G(x).
    pub fn objective(&self, x: &[f64], g: &[f64]) -> f64 {
        let s2 = self.pb.sigma_n * self.pb.sigma_n;
        let phi: f64 = self
            .y
            .iter()
            .zip(g)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            / (2.0 * s2);
        phi + 0.5 * x.iter().map(|v| v * v).sum::<f64>()
    }

    /// H = I + J^T J / sigma^2 and the gradient x - J^T r / sigma^2.
    fn normal_equations(&self, x: &[f64], g: &[f64], j: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let (d, ns) = (self.pb.d, self.sensors.len());
        let s2 = self.pb.sigma_n * self.pb.sigma_n;
        let mut h = vec![0.0; d * d];
        for a in 0..d {
            h[a * d + a] = 1.0;
            for b in 0..d {
                let mut acc = 0.0;
                for k in 0..ns {
                    acc += j[k * d + a] * j[k * d + b];
                }
                h[a * d + b] += acc / s2;
            }
        }
        let grad = (0..d)
            .map(|a| {
                x[a] - (0..ns)
                    .map(|k| j[k * d + a] * (self.y[k] - g[k]))
                    .sum::<f64>()
                    / s2
            })
            .collect();
        (h, grad)
    }
}

/// Gauss-Newton from `x0` until the Newton decrement is negligible, then the
/// Laplace covariance at the MAP.
pub fn gauss_newton(
    ctx: &GpuContext,
    gn: &GaussNewton,
    x0: &[f64],
    max_iters: usize,
) -> Result<Laplace> {
    gauss_newton_watched(ctx, gn, x0, max_iters, None)
}

/// What a caller may do at every Gauss-Newton iterate: look at the Laplace
/// approximation there (mean, covariance H^-1) after `iteration` steps,
/// with the objective's history.
pub type GnWatch<'a> = dyn FnMut(&[f64], &[f64], usize, &[f64]) -> Result<()> + 'a;

/// [`gauss_newton`], calling `watch` at every iterate (the live view).
pub fn gauss_newton_watched(
    ctx: &GpuContext,
    gn: &GaussNewton,
    x0: &[f64],
    max_iters: usize,
    mut watch: Option<&mut GnWatch<'_>>,
) -> Result<Laplace> {
    let t0 = Instant::now();
    let d = gn.pb.d;
    let mut x = x0.to_vec();
    let (mut t_jac, mut t_line, mut t_host) = (0.0, 0.0, 0.0);
    let tj = Instant::now();
    let (mut g, mut j) = gn.jacobian(ctx, &x)?;
    t_jac += tj.elapsed().as_secs_f64();
    let mut f = gn.objective(&x, &g);
    if !f.is_finite() {
        return Err(Error::NoConvergence(format!(
            "the objective at the starting point is {f}: check the data for huge values"
        )));
    }
    let mut history = vec![f];
    let mut iterations = 0;
    let mut decrement;
    loop {
        let th = Instant::now();
        let (h, grad) = gn.normal_equations(&x, &g, &j);
        t_host += th.elapsed().as_secs_f64();
        if let Some(w) = watch.as_deref_mut() {
            let (cov, _) = linalg::spd_inverse(&h, d)
                .map_err(|e| Error::not_spd("the Gauss-Newton Hessian", e))?;
            w(&x, &cov, iterations, &history)?;
        }
        // H = I + J^T J / sigma^2 >= I: only a non-finite Jacobian breaks it.
        let th = Instant::now();
        let step: Vec<f64> = linalg::solve_spd(&h, d, &grad)
            .map_err(|e| Error::not_spd("the Gauss-Newton Hessian", e))?
            .iter()
            .map(|v| -v)
            .collect();
        t_host += th.elapsed().as_secs_f64();
        // Newton decrement^2 / 2 = the decrease the quadratic model predicts.
        decrement = -0.5 * step.iter().zip(&grad).map(|(a, b)| a * b).sum::<f64>();
        if decrement <= 1e-9 * (1.0 + f.abs()) || iterations >= max_iters {
            break;
        }
        let trials: Vec<Vec<f64>> = STEPS
            .iter()
            .map(|&a| x.iter().zip(&step).map(|(xi, s)| xi + a * s).collect())
            .collect();
        let tl = Instant::now();
        let gs = gn.forward(ctx, &trials)?;
        t_line += tl.elapsed().as_secs_f64();
        // Armijo: the first step length that gives a quarter of the predicted decrease.
        let mut accepted = None;
        for (k, &a) in STEPS.iter().enumerate() {
            let fk = gn.objective(&trials[k], &gs[k]);
            if fk.is_finite() && fk <= f - 0.25 * a * (2.0 - a) * decrement {
                accepted = Some(k);
                break;
            }
        }
        let Some(k) = accepted else {
            // No step decreases the objective by more than f32 noise: at the MAP.
            break;
        };
        x = trials[k].clone();
        iterations += 1;
        let tj = Instant::now();
        let (g2, j2) = gn.jacobian(ctx, &x)?;
        t_jac += tj.elapsed().as_secs_f64();
        g = g2;
        j = j2;
        f = gn.objective(&x, &g);
        history.push(f);
    }
    let (h, _) = gn.normal_equations(&x, &g, &j);
    let (cov, logdet_h) =
        linalg::spd_inverse(&h, d).map_err(|e| Error::not_spd("the Gauss-Newton Hessian", e))?;
    let ns = gn.sensors.len() as f64;
    let s2 = gn.pb.sigma_n * gn.pb.sigma_n;
    // log p(y) ~ -f(MAP) - 1/2 log det H - ns/2 log(2 pi sigma^2).
    let log_evidence = -f - 0.5 * logdet_h - 0.5 * ns * (2.0 * std::f64::consts::PI * s2).ln();
    Ok(Laplace {
        map: x,
        cov,
        iterations,
        objective: f,
        history,
        decrement,
        log_evidence,
        seconds: t0.elapsed().as_secs_f64(),
        phases: vec![
            ("Jacobians (forward + d adjoint solves)", t_jac),
            ("line search (forward solves of trial points)", t_line),
            ("normal equations and step (host)", t_host),
        ],
    })
}

/// Gauss-Newton MAP and Laplace covariance of the posterior of `pb` given
/// `y` at `sensors`, started at the prior mean.
pub fn fit_laplace(
    ctx: &GpuContext,
    pb: &Problem,
    sensors: &[usize],
    y: &[f64],
    cg: CgParams,
    max_iters: usize,
) -> Result<Laplace> {
    let gn = GaussNewton::new(ctx, pb, sensors, y, cg)?;
    gauss_newton(ctx, &gn, &vec![0.0; pb.d], max_iters)
}
