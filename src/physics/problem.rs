//! The reference problems of `shared/spec/problems.md`: grids, the
//! Karhunen-Loeve prior, sensors and noise, for darcy2d and poisson1d.

use std::f64::consts::PI;

use crate::error::{Error, Result};

/// Which reference problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProblemKind {
    Darcy2d,
    Poisson1d,
}

impl ProblemKind {
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::Darcy2d => "darcy2d",
            ProblemKind::Poisson1d => "poisson1d",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "darcy2d" | "darcy" => Ok(ProblemKind::Darcy2d),
            "poisson1d" | "poisson" => Ok(ProblemKind::Poisson1d),
            other => Err(Error::setting(
                "problem",
                other,
                "expected darcy2d or poisson1d",
            )),
        }
    }

    /// Spec defaults: (n, d, sigma_n).
    pub fn defaults(self) -> (usize, usize, f64) {
        match self {
            ProblemKind::Darcy2d => (64, 64, 1e-3),
            ProblemKind::Poisson1d => (128, 32, 1e-2),
        }
    }
}

/// Refuse a grid whose KL basis (d x cells, f64, built on the host by
/// every command) would not fit in half of this machine's memory, before
/// anything is allocated (n = 8192 asked for 34 GB and aborted).
fn check_host_size(kind: ProblemKind, n: usize, d: usize) -> Result<()> {
    let cells = match kind {
        ProblemKind::Darcy2d => (n as u128) * (n as u128),
        ProblemKind::Poisson1d => n as u128,
    };
    // The KL expansion has at most one mode per coefficient point.
    if d as u128 > cells {
        return Err(Error::setting(
            "d",
            d,
            format!(
                "the {} KL expansion on {cells} cells has at most {cells} modes; use --d <= {cells}",
                kind.name()
            ),
        ));
    }
    crate::memory::check_host(
        "n",
        n,
        &format!(
            "the {} KL basis (d = {d} modes x {cells} cells x 8 bytes)",
            kind.name()
        ),
        cells * d as u128 * 8,
        "use a smaller --n or --d",
    )
}

/// A discretised reference problem with its prior and default sensors.
#[derive(Clone, Debug)]
pub struct Problem {
    pub kind: ProblemKind,
    /// Cells per side.
    pub n: usize,
    /// Number of KL modes.
    pub d: usize,
    /// KL eigenvalues lambda_1..lambda_d (normalised).
    pub lambda: Vec<f64>,
    /// darcy2d: mode pairs (p, q); poisson1d: (k, 0).
    pub modes: Vec<(usize, usize)>,
    /// Sensor positions as unknown indices.
    pub sensors: Vec<usize>,
    /// Noise standard deviation.
    pub sigma_n: f64,
    /// A deep generative prior (methods.md A4): the latent vector is the
    /// decoder's w (d = K) and the field is f(w) instead of the KL map.
    pub prior: Option<std::sync::Arc<crate::nn::vae::GenerativePrior>>,
}

impl Problem {
    /// The spec's problem with its defaults.
    pub fn default_for(kind: ProblemKind) -> Self {
        let (n, d, _) = kind.defaults();
        Self::new(kind, n, d).expect("spec defaults are valid")
    }

    pub fn new(kind: ProblemKind, n: usize, d: usize) -> Result<Self> {
        let (_, _, sigma_n) = kind.defaults();
        if d == 0 {
            return Err(Error::setting("d", d, "need at least one KL mode"));
        }
        check_host_size(kind, n, d)?;
        match kind {
            ProblemKind::Darcy2d => {
                if n < 8 || !n.is_multiple_of(8) {
                    return Err(Error::setting(
                        "n",
                        n,
                        "darcy2d needs n divisible by 8 (sensors at (k n/8, l n/8)), at least 8",
                    ));
                }
                let modes = darcy_modes(d);
                let w: Vec<f64> = modes
                    .iter()
                    .map(|&(p, q)| (PI * PI * ((p * p + q * q) as f64) + 9.0).powf(-2.0))
                    .collect();
                let lambda = normalise(&w, 1.0);
                let m = n - 1;
                let mut sensors = Vec::with_capacity(49);
                for l in 1..=7 {
                    for k in 1..=7 {
                        let (i, j) = (k * n / 8, l * n / 8);
                        sensors.push((j - 1) * m + (i - 1));
                    }
                }
                Ok(Problem {
                    kind,
                    n,
                    d,
                    lambda,
                    modes,
                    sensors,
                    sigma_n,
                    prior: None,
                })
            }
            ProblemKind::Poisson1d => {
                if n < 16 || !n.is_multiple_of(16) {
                    return Err(Error::setting(
                        "n",
                        n,
                        "poisson1d needs n divisible by 16 (sensors at x = k/16), at least 16",
                    ));
                }
                if d >= n {
                    return Err(Error::setting(
                        "d",
                        d,
                        format!(
                            "poisson1d needs d < n = {n} (modes sin(k pi x) beyond the grid alias)"
                        ),
                    ));
                }
                let modes: Vec<(usize, usize)> = (1..=d).map(|k| (k, 0)).collect();
                let w: Vec<f64> = (1..=d)
                    .map(|k| ((k * k) as f64 * PI * PI + 9.0).powf(-1.5))
                    .collect();
                let lambda = normalise(&w, 100.0);
                let sensors = (1..=15).map(|k| k * n / 16 - 1).collect();
                Ok(Problem {
                    kind,
                    n,
                    d,
                    lambda,
                    modes,
                    sensors,
                    sigma_n,
                    prior: None,
                })
            }
        }
    }

    /// darcy2d with a generative prior: latent w of the decoder's K
    /// dimensions, fields f(w). The grid must be the decoder's.
    pub fn with_prior(
        &self,
        prior: std::sync::Arc<crate::nn::vae::GenerativePrior>,
    ) -> Result<Self> {
        if self.kind != ProblemKind::Darcy2d {
            return Err(Error::setting(
                "prior",
                "vae",
                "a generative prior gives log-permeability fields: use it with darcy2d (or inclusions2d)",
            ));
        }
        if prior.meta.n != self.n {
            return Err(Error::setting(
                "n",
                self.n,
                format!(
                    "the VAE in {} was trained on {m} x {m} fields: use --n {m}",
                    prior.dir.display(),
                    m = prior.meta.n
                ),
            ));
        }
        let mut pb = Problem::new(self.kind, self.n, prior.latent())?;
        pb.sigma_n = self.sigma_n;
        pb.sensors = self.sensors.clone();
        pb.prior = Some(prior);
        Ok(pb)
    }

    pub fn h(&self) -> f64 {
        1.0 / self.n as f64
    }

    /// Unknowns per system.
    pub fn nunk(&self) -> usize {
        match self.kind {
            ProblemKind::Darcy2d => (self.n - 1) * (self.n - 1),
            ProblemKind::Poisson1d => self.n - 1,
        }
    }

    /// Entries of the latent field per system (cells or interior nodes).
    pub fn ncoef(&self) -> usize {
        match self.kind {
            ProblemKind::Darcy2d => self.n * self.n,
            ProblemKind::Poisson1d => self.n - 1,
        }
    }

    /// The KL basis, d x ncoef row-major: row k is sqrt(lambda_k) phi_k at
    /// the cell centres (darcy2d) or interior nodes (poisson1d).
    pub fn basis(&self) -> Vec<f64> {
        let nc = self.ncoef();
        let h = self.h();
        let mut out = vec![0.0; self.d * nc];
        for (k, (&(p, q), &lam)) in self.modes.iter().zip(&self.lambda).enumerate() {
            let s = lam.sqrt();
            let row = &mut out[k * nc..(k + 1) * nc];
            match self.kind {
                ProblemKind::Darcy2d => {
                    let cp = if p == 0 { 1.0 } else { 2f64.sqrt() };
                    let cq = if q == 0 { 1.0 } else { 2f64.sqrt() };
                    for j in 0..self.n {
                        let x2 = (j as f64 + 0.5) * h;
                        let fy = cq * (q as f64 * PI * x2).cos();
                        for i in 0..self.n {
                            let x1 = (i as f64 + 0.5) * h;
                            row[j * self.n + i] = s * cp * (p as f64 * PI * x1).cos() * fy;
                        }
                    }
                }
                ProblemKind::Poisson1d => {
                    for (i, r) in row.iter_mut().enumerate() {
                        let x = (i + 1) as f64 * h;
                        *r = s * 2f64.sqrt() * (p as f64 * PI * x).sin();
                    }
                }
            }
        }
        out
    }

    /// The field z (darcy2d, per cell) or f (poisson1d, per interior node) of `xi`.
    pub fn field(&self, xi: &[f64]) -> Vec<f64> {
        if let Some(p) = &self.prior {
            return p.fields(xi);
        }
        let (basis, nc) = (self.basis(), self.ncoef());
        // The field is linear in xi: z_c = sum_k xi_k basis[k, c] (as kl_map).
        (0..nc)
            .map(|c| (0..self.d).map(|k| xi[k] * basis[k * nc + c]).sum())
            .collect()
    }

    /// The problem's sensors as points (x1, x2) of the unit square, for
    /// markers on figures.
    pub fn sensor_points(&self) -> Vec<[f64; 2]> {
        self.points_of(&self.sensors)
    }

    /// Unknowns as points (x1, x2) of the unit square (x2 = 0 in 1-D).
    pub fn points_of(&self, unknowns: &[usize]) -> Vec<[f64; 2]> {
        let h = 1.0 / self.n as f64;
        unknowns
            .iter()
            .map(|&k| {
                let (i, j) = self.unknown_node(k);
                [i as f64 * h, j as f64 * h]
            })
            .collect()
    }

    /// Sensor (i, j) node coordinates (j = 0 in 1-D).
    pub fn sensor_nodes(&self) -> Vec<(usize, usize)> {
        self.sensors.iter().map(|&k| self.unknown_node(k)).collect()
    }

    /// Node (i, j) of unknown k.
    pub fn unknown_node(&self, k: usize) -> (usize, usize) {
        match self.kind {
            ProblemKind::Darcy2d => (k % (self.n - 1) + 1, k / (self.n - 1) + 1),
            ProblemKind::Poisson1d => (k + 1, 0),
        }
    }

    /// Unknown index of an interior node (i, j); None on the boundary.
    pub fn node_unknown(&self, i: usize, j: usize) -> Option<usize> {
        match self.kind {
            ProblemKind::Darcy2d => (i >= 1 && j >= 1 && i < self.n && j < self.n)
                .then(|| (j - 1) * (self.n - 1) + (i - 1)),
            ProblemKind::Poisson1d => (i >= 1 && i < self.n && j == 0).then(|| i - 1),
        }
    }

    /// Spread unknowns into the full nodal field, boundary included
    /// ((n+1)^2 row-major with [j, i], or n+1 in 1-D).
    pub fn nodal(&self, u: &[f64]) -> Vec<f64> {
        match self.kind {
            ProblemKind::Darcy2d => {
                let np = self.n + 1;
                let mut out = vec![0.0; np * np];
                for (k, &v) in u.iter().enumerate() {
                    let (i, j) = self.unknown_node(k);
                    out[j * np + i] = v;
                }
                out
            }
            ProblemKind::Poisson1d => {
                let mut out = vec![0.0; self.n + 1];
                out[1..self.n].copy_from_slice(u);
                out
            }
        }
    }

    /// The right-hand side b for a field (darcy2d: h^2 everywhere, since f = 1;
    /// poisson1d: h f at the interior nodes).
    pub fn rhs(&self, field: &[f64]) -> Vec<f64> {
        match self.kind {
            ProblemKind::Darcy2d => vec![self.h() * self.h(); self.nunk()],
            ProblemKind::Poisson1d => field.iter().map(|f| self.h() * f).collect(),
        }
    }
}

fn normalise(w: &[f64], sigma2: f64) -> Vec<f64> {
    let total: f64 = w.iter().sum();
    w.iter().map(|v| sigma2 * v / total).collect()
}

/// The first d pairs (p, q) ordered by p^2 + q^2, ties by p.
fn darcy_modes(d: usize) -> Vec<(usize, usize)> {
    let mut r = 1;
    loop {
        let mut all: Vec<(usize, usize)> = (0..=r)
            .flat_map(|p| (0..=r).map(move |q| (p, q)))
            .filter(|&(p, q)| p * p + q * q <= r * r)
            .collect();
        // Every pair with p^2 + q^2 <= r^2 is present, so the first d are exact
        // once there are at least d of them.
        if all.len() >= d {
            all.sort_by_key(|&(p, q)| (p * p + q * q, p));
            all.truncate(d);
            return all;
        }
        r += 1;
    }
}

/// A problem kind with optional sizes (the spec's defaults otherwise), as
/// the commands and configs name it.
#[derive(Clone, Debug)]
pub struct ProblemArgs {
    pub kind: ProblemKind,
    pub n: Option<usize>,
    pub d: Option<usize>,
}

impl ProblemArgs {
    /// The problem, with the spec's default `n` and `d` where not given.
    pub fn build(&self) -> Result<Problem> {
        let (n0, d0, _) = self.kind.defaults();
        Problem::new(self.kind, self.n.unwrap_or(n0), self.d.unwrap_or(d0))
    }
}
