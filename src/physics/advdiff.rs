//! advdiff1d of the spec: advection-diffusion of a bump on a periodic line,
//! Crank-Nicolson in time, seen only through noisy pictures of its graph
//! (frames). The dynamical latent model (Phi-DVAE) learns its two
//! parameters from the frames.
//!
//! `M(z)` is circulant (constant coefficients on a periodic grid), so the
//! real Fourier basis diagonalises it: mode k is multiplied by the complex
//! number `lambda_k`. [`AdvDiff::mode_factor`] gives it; [`AdvDiff::m_dense`]
//! builds the dense matrix by an LU solve, independently, for the tests and
//! the dense Kalman filter.

use crate::error::{Error, Result};
use faer::linalg::solvers::Solve;
use faer::Mat;

/// The spec's constants (all overridable for tests, e.g. a tiny `n`).
#[derive(Clone, Debug, PartialEq)]
pub struct AdvDiff {
    /// Nodes on the periodic line.
    pub n: usize,
    /// Frames `t = 1..T`.
    pub t: usize,
    pub dt: f64,
    /// State noise per step.
    pub sigma_u: f64,
    /// Initial state noise about `m_0`.
    pub sigma_0: f64,
    /// Frame height in pixels.
    pub height: usize,
    /// Width of the rendered graph, in level units.
    pub w: f64,
    /// Pixel noise.
    pub sigma_y: f64,
    /// Centre and width of the initial bump.
    pub x0: f64,
    pub width0: f64,
}

impl Default for AdvDiff {
    fn default() -> Self {
        AdvDiff {
            n: 64,
            t: 40,
            dt: 0.01,
            sigma_u: 1e-3,
            sigma_0: 0.01,
            height: 32,
            w: 0.05,
            sigma_y: 0.05,
            x0: 0.3,
            width0: 0.05,
        }
    }
}

/// `c = 1 + 0.5 zeta_1`, `nu = 0.005 exp(0.5 zeta_2)`.
pub fn physical(zeta: [f64; 2]) -> (f64, f64) {
    (1.0 + 0.5 * zeta[0], 0.005 * (0.5 * zeta[1]).exp())
}

/// d(c, nu) / d(zeta_1, zeta_2) (diagonal).
pub fn physical_grad(zeta: [f64; 2]) -> (f64, f64) {
    (0.5, 0.5 * 0.005 * (0.5 * zeta[1]).exp())
}

/// A complex number as (re, im).
pub type C64 = [f64; 2];

pub fn cmul(a: C64, b: C64) -> C64 {
    [a[0] * b[0] - a[1] * b[1], a[0] * b[1] + a[1] * b[0]]
}

pub fn cdiv(a: C64, b: C64) -> C64 {
    let d = b[0] * b[0] + b[1] * b[1];
    [
        (a[0] * b[0] + a[1] * b[1]) / d,
        (a[1] * b[0] - a[0] * b[1]) / d,
    ]
}

impl AdvDiff {
    pub fn h(&self) -> f64 {
        1.0 / self.n as f64
    }

    pub fn validate(&self) -> Result<()> {
        if self.n < 3 || self.t == 0 || self.height == 0 {
            return Err(Error::setting(
                "advdiff1d",
                format!("n {} T {} H {}", self.n, self.t, self.height),
                "needs n >= 3 nodes, T >= 1 frames and H >= 1 rows",
            ));
        }
        for (name, v) in [
            ("dt", self.dt),
            ("sigma_u", self.sigma_u),
            ("sigma_0", self.sigma_0),
            ("w", self.w),
            ("sigma_y", self.sigma_y),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::setting(name, v, "must be finite and positive"));
            }
        }
        Ok(())
    }

    /// Modes of the real Fourier basis: `0..=n/2` (k = 0 and, for even n,
    /// k = n/2 are real; the others carry a cosine and a sine).
    pub fn modes(&self) -> usize {
        self.n / 2 + 1
    }

    /// Real degrees of freedom of mode `k` (1 or 2).
    pub fn mode_dof(&self, k: usize) -> usize {
        if k == 0 || 2 * k == self.n {
            1
        } else {
            2
        }
    }

    /// Node values of the orthonormal basis functions of mode `k` at node
    /// `i`: (cosine part, sine part). The complex coefficient of `u` is
    /// `sum_i u_i (cos_i - i sin_i)`, so `M` multiplies it by `lambda_k`.
    pub fn basis(&self, k: usize, i: usize) -> (f64, f64) {
        let n = self.n;
        // The angle from (k i mod n) keeps the argument small.
        let th = 2.0 * std::f64::consts::PI * ((k * i) % n) as f64 / n as f64;
        if self.mode_dof(k) == 1 {
            (th.cos() / (n as f64).sqrt(), 0.0)
        } else {
            let s = (2.0 / n as f64).sqrt();
            (s * th.cos(), s * th.sin())
        }
    }

    /// Complex coefficients of a nodal vector in the basis.
    pub fn to_modes(&self, u: &[f64]) -> Vec<C64> {
        (0..self.modes())
            .map(|k| {
                let mut a = [0.0, 0.0];
                for (i, &v) in u.iter().enumerate() {
                    let (c, s) = self.basis(k, i);
                    a[0] += c * v;
                    a[1] -= s * v;
                }
                a
            })
            .collect()
    }

    /// Nodal vector of complex coefficients (the transpose of `to_modes`).
    pub fn from_modes(&self, a: &[C64]) -> Vec<f64> {
        (0..self.n)
            .map(|i| {
                (0..self.modes())
                    .map(|k| {
                        let (c, s) = self.basis(k, i);
                        c * a[k][0] - s * a[k][1]
                    })
                    .sum()
            })
            .collect()
    }

    /// Eigenvalue of `L = -c D1 + nu D2` on mode `k`, and its derivatives
    /// in c and nu.
    pub fn l_eigen(&self, k: usize, c: f64, nu: f64) -> (C64, C64, C64) {
        let h = self.h();
        let th = 2.0 * std::f64::consts::PI * k as f64 / self.n as f64;
        let dc = [0.0, -th.sin() / h];
        let dnu = [(2.0 * th.cos() - 2.0) / (h * h), 0.0];
        ([c * dc[0] + nu * dnu[0], c * dc[1]], dc, dnu)
    }

    /// `lambda_k = (1 + dt/2 l) / (1 - dt/2 l)` and its derivatives in c, nu.
    pub fn mode_factor(&self, k: usize, c: f64, nu: f64) -> (C64, C64, C64) {
        let (l, dlc, dlnu) = self.l_eigen(k, c, nu);
        let a = [0.5 * self.dt * l[0], 0.5 * self.dt * l[1]];
        let num = [1.0 + a[0], a[1]];
        let den = [1.0 - a[0], -a[1]];
        let lam = cdiv(num, den);
        // d lambda / d a = 2 / (1 - a)^2.
        let dla = cdiv([2.0, 0.0], cmul(den, den));
        let half = 0.5 * self.dt;
        let dc = cmul(dla, [half * dlc[0], half * dlc[1]]);
        let dnu = cmul(dla, [half * dlnu[0], half * dlnu[1]]);
        (lam, dc, dnu)
    }

    /// The initial mean `m_0(x_i) = exp(-dist(x_i, x0)^2 / (2 width0^2))`
    /// with the periodic distance.
    pub fn m0(&self) -> Vec<f64> {
        let h = self.h();
        (0..self.n)
            .map(|i| {
                let d = (i as f64 * h - self.x0).abs();
                let d = d.min(1.0 - d);
                (-d * d / (2.0 * self.width0 * self.width0)).exp()
            })
            .collect()
    }

    /// `L(z)` as a dense row-major matrix.
    pub fn l_dense(&self, c: f64, nu: f64) -> Vec<f64> {
        let n = self.n;
        let h = self.h();
        let mut l = vec![0.0; n * n];
        for i in 0..n {
            let ip = (i + 1) % n;
            let im = (i + n - 1) % n;
            l[i * n + ip] += -c / (2.0 * h) + nu / (h * h);
            l[i * n + im] += c / (2.0 * h) + nu / (h * h);
            l[i * n + i] += -2.0 * nu / (h * h);
        }
        l
    }

    /// `M(z) = (I - dt/2 L)^{-1} (I + dt/2 L)` as a dense row-major matrix,
    /// by a partially pivoted LU solve (independent of the modal form).
    pub fn m_dense(&self, c: f64, nu: f64) -> Vec<f64> {
        let n = self.n;
        let l = self.l_dense(c, nu);
        let half = 0.5 * self.dt;
        let eye = |i: usize, j: usize| if i == j { 1.0 } else { 0.0 };
        let a = Mat::from_fn(n, n, |i, j| eye(i, j) - half * l[i * n + j]);
        let b = Mat::from_fn(n, n, |i, j| eye(i, j) + half * l[i * n + j]);
        let lu = a.partial_piv_lu();
        let m = lu.solve(&b);
        let mut out = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                out[i * n + j] = m[(i, j)];
            }
        }
        out
    }

    /// Level of pixel row `r`.
    pub fn level(&self, r: usize) -> f64 {
        -0.25 + 1.5 * (r as f64 + 0.5) / self.height as f64
    }

    /// The noise-free frame of a state: `(H, n)`, row 0 the lowest level.
    pub fn render(&self, u: &[f64]) -> Vec<f64> {
        let mut f = vec![0.0; self.height * self.n];
        for r in 0..self.height {
            let v = self.level(r);
            for (i, &ui) in u.iter().enumerate() {
                let d = v - ui;
                f[r * self.n + i] = (-d * d / (2.0 * self.w * self.w)).exp();
            }
        }
        f
    }

    /// Simulate per the spec: `u_0 ~ N(m_0, sigma_0^2)`, `u_t = M u_{t-1} +
    /// eta_t`, frames with pixel noise. With `noise = false` there is no
    /// noise at all (the spec's sanity check). Returns the states `(T, n)`
    /// for t = 1..T and the frames `(T, H, n)`.
    pub fn simulate(&self, zeta: [f64; 2], seed: u64, noise: bool) -> (Vec<f64>, Vec<f64>) {
        use crate::rng::{normals, streams};
        let n = self.n;
        let (c, nu) = physical(zeta);
        let lam: Vec<C64> = (0..self.modes())
            .map(|k| self.mode_factor(k, c, nu).0)
            .collect();
        let mut u = self.m0();
        if noise {
            let e = normals(seed, streams::ADVDIFF_STATE, 0, n);
            for (ui, ei) in u.iter_mut().zip(e) {
                *ui += self.sigma_0 * ei;
            }
        }
        let mut states = Vec::with_capacity(self.t * n);
        let mut frames = Vec::with_capacity(self.t * self.height * n);
        for t in 1..=self.t {
            // M u in the modal basis (exact: M is circulant).
            let a: Vec<C64> = self
                .to_modes(&u)
                .iter()
                .zip(&lam)
                .map(|(&a, &l)| cmul(l, a))
                .collect();
            u = self.from_modes(&a);
            if noise {
                let e = normals(seed, streams::ADVDIFF_STATE, t as u32, n);
                for (ui, ei) in u.iter_mut().zip(e) {
                    *ui += self.sigma_u * ei;
                }
            }
            states.extend_from_slice(&u);
            let mut f = self.render(&u);
            if noise {
                let e = normals(seed, streams::ADVDIFF_PIXEL, t as u32, f.len());
                for (p, ei) in f.iter_mut().zip(e) {
                    *p += self.sigma_y * ei;
                }
            }
            frames.extend(f);
        }
        (states, frames)
    }

    /// A moment estimate of the advection speed from pictures alone, with
    /// no encoder and no model of the rendering: advection translates
    /// every row of every frame, and a translation by `s` multiplies a
    /// row's first Fourier coefficient `a = sum_i Y_i exp(-2 pi i x_i)` by
    /// `exp(-2 pi i s)`, whatever the row's shape (a bump diffusing
    /// symmetrically keeps its phase). So `arg sum_{t,r} a_{t+1,r}
    /// conj(a_{t,r})` is one step's phase, which `arg lambda_1(c, nu)`
    /// turns into `c` (solved by bisection at the prior's median `nu`; the
    /// phase hardly depends on `nu`). `data` is `(T, rows, n)`: frames with
    /// `rows = H`, or states with `rows = 1`. Returns `None` when the rows
    /// carry no first mode to follow (a flat picture).
    pub fn speed_from_frames(&self, data: &[f64], rows: usize) -> Option<f64> {
        let n = self.n;
        if rows == 0 || n < 3 || data.len() != self.t * rows * n || self.t < 2 {
            return None;
        }
        let coef = |t: usize, r: usize| -> C64 {
            let row = &data[(t * rows + r) * n..(t * rows + r + 1) * n];
            let mut a = [0.0, 0.0];
            for (i, &v) in row.iter().enumerate() {
                let th = 2.0 * std::f64::consts::PI * i as f64 / n as f64;
                a[0] += v * th.cos();
                a[1] -= v * th.sin();
            }
            a
        };
        let (mut sum, mut power) = ([0.0, 0.0], 0.0);
        for r in 0..rows {
            let mut prev = coef(0, r);
            for t in 1..self.t {
                let a = coef(t, r);
                // a conj(prev)
                sum[0] += a[0] * prev[0] + a[1] * prev[1];
                sum[1] += a[1] * prev[0] - a[0] * prev[1];
                power += prev[0] * prev[0] + prev[1] * prev[1];
                prev = a;
            }
        }
        let mag = (sum[0] * sum[0] + sum[1] * sum[1]).sqrt();
        // Against the pictures' energy: a flat picture's first mode is
        // rounding error.
        let energy: f64 = data.iter().map(|v| v * v).sum();
        if !(mag.is_finite() && power > 1e-12 * energy && mag > 1e-6 * power) {
            return None;
        }
        let phase = sum[1].atan2(sum[0]);
        let nu = physical([0.0, 0.0]).1;
        let arg = |c: f64| {
            let l = self.mode_factor(1, c, nu).0;
            l[1].atan2(l[0])
        };
        // arg lambda_1 = atan2(b, 1 + a) + atan2(b, 1 - a) with `dt/2 l_1 =
        // a + i b`, `b` proportional to -c: monotone in c, onto (-pi, pi).
        let th1 = 2.0 * std::f64::consts::PI / n as f64;
        let cmax = 2e3 * self.h() / (self.dt * th1.sin());
        let (mut lo, mut hi) = (-cmax, cmax);
        if !(arg(lo) >= phase && phase >= arg(hi)) {
            return None;
        }
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if arg(mid) > phase {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(0.5 * (lo + hi))
    }

    /// `zeta ~ N(0, I)` for a seed (the `simulate` default).
    pub fn prior_zeta(seed: u64) -> [f64; 2] {
        let z = crate::rng::normals(seed, crate::rng::streams::ADVDIFF_ZETA, 0, 2);
        [z[0], z[1]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modal_and_dense_m_agree() {
        let pb = AdvDiff {
            n: 9,
            ..Default::default()
        };
        let (c, nu) = physical([0.7, -0.4]);
        let m = pb.m_dense(c, nu);
        let u: Vec<f64> = (0..pb.n).map(|i| ((i * 7 % 5) as f64) - 1.3).collect();
        let dense: Vec<f64> = (0..pb.n)
            .map(|i| (0..pb.n).map(|j| m[i * pb.n + j] * u[j]).sum())
            .collect();
        let a: Vec<C64> = pb
            .to_modes(&u)
            .iter()
            .enumerate()
            .map(|(k, &a)| cmul(pb.mode_factor(k, c, nu).0, a))
            .collect();
        let modal = pb.from_modes(&a);
        for i in 0..pb.n {
            assert!(
                (dense[i] - modal[i]).abs() < 1e-12,
                "{i}: {} {}",
                dense[i],
                modal[i]
            );
        }
        // And the basis round trip for an even n.
        let pb = AdvDiff {
            n: 8,
            ..Default::default()
        };
        let u: Vec<f64> = (0..8).map(|i| (i as f64).sin()).collect();
        let back = pb.from_modes(&pb.to_modes(&u));
        for i in 0..8 {
            assert!((back[i] - u[i]).abs() < 1e-12);
        }
    }

    #[test]
    fn speed_from_frames_finds_the_advection_speed() {
        let pb = AdvDiff::default();
        // Noise-free states at the prior's median nu: the first mode turns
        // by exactly arg lambda_1, so the estimate is exact.
        for z1 in [-3.4, -1.0, 0.0, 0.6, 2.5] {
            let (u, _) = pb.simulate([z1, 0.0], 1, false);
            let c = pb.speed_from_frames(&u, 1).expect("a bump to follow");
            let truth = physical([z1, 0.0]).0;
            assert!((c - truth).abs() < 1e-9, "zeta_1 {z1}: {c} vs {truth}");
        }
        // Noisy frames drawn from the prior: within 0.05 of c.
        let mut worst: f64 = 0.0;
        for seed in 1..=12 {
            let zeta = AdvDiff::prior_zeta(seed);
            let (_, frames) = pb.simulate(zeta, seed, true);
            let c = pb.speed_from_frames(&frames, pb.height).expect("frames");
            let truth = physical(zeta).0;
            worst = worst.max((c - truth).abs());
            assert!(
                (c - truth).abs() < 0.05,
                "seed {seed}: zeta {zeta:?}, c {c} vs {truth}"
            );
        }
        eprintln!("worst speed error over 12 seeds: {worst:.4}");
        // A flat picture has no phase to follow.
        let flat = vec![0.5; pb.t * pb.height * pb.n];
        assert!(pb.speed_from_frames(&flat, pb.height).is_none());
        assert!(pb.speed_from_frames(&flat[1..], pb.height).is_none());
    }
}
