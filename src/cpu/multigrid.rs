//! f64 reference of multigrid-preconditioned CG for darcy2d's Q1 operator:
//! the algorithm that the batched multigrid kernels are to mirror (issue 11),
//! written first on the CPU to settle its choices with numbers.
//!
//! * Levels: `n, n/2, n/4, ...` cells per side down to `coarsest` cells;
//!   the unknowns are the interior nodes, coarse node `(I, J)` sitting on
//!   fine node `(2I, 2J)`.
//! * Every level is a 9-point stencil per node. The fine one is assembled
//!   from the cell coefficients (it equals [`q1_op_apply`](super::physics::q1_op_apply));
//!   coarse ones are either Galerkin products `P^T A P` with bilinear `P`
//!   (built node by node from local 5 x 5 patches) or a rediscretisation
//!   with the geometric mean of the four child cells' coefficients.
//! * The V-cycle: `nu` damped-Jacobi sweeps before and after the coarse
//!   correction, `R = P^T`, a dense Cholesky solve on the coarsest level.
//!   Jacobi is symmetric and the post-smoother repeats the pre-smoother, so
//!   the cycle is a symmetric positive definite preconditioner, as CG needs.
#![allow(
    clippy::needless_range_loop,
    reason = "index loops keep the code comparable to the shaders"
)]

use crate::math::linalg;

/// A 9-point stencil on the `m x m` interior nodes of a grid: `a[k][3 (dj + 1) + di + 1]`
/// couples node `k = j m + i` with node `(i + di, j + dj)`; couplings to the
/// Dirichlet boundary are left out.
#[derive(Clone, Debug, PartialEq)]
pub struct Stencil {
    pub m: usize,
    pub a: Vec<[f64; 9]>,
}

fn slot(di: isize, dj: isize) -> usize {
    (3 * (dj + 1) + di + 1) as usize
}

impl Stencil {
    /// The Q1 stiffness matrix of `n x n` cells with cell coefficients `coef`
    /// (row-major, `n * n`), as a stencil.
    pub fn q1(n: usize, coef: &[f64]) -> Self {
        let m = n - 1;
        let mut a = vec![[0.0; 9]; m * m];
        for j in 1..n {
            for i in 1..n {
                let k_sw = coef[(j - 1) * n + i - 1];
                let k_se = coef[(j - 1) * n + i];
                let k_nw = coef[j * n + i - 1];
                let k_ne = coef[j * n + i];
                let s = &mut a[(j - 1) * m + i - 1];
                s[slot(0, 0)] = 4.0 * (k_sw + k_se + k_nw + k_ne) / 6.0;
                s[slot(-1, 0)] = -(k_sw + k_nw) / 6.0;
                s[slot(1, 0)] = -(k_se + k_ne) / 6.0;
                s[slot(0, -1)] = -(k_sw + k_se) / 6.0;
                s[slot(0, 1)] = -(k_nw + k_ne) / 6.0;
                s[slot(-1, -1)] = -2.0 * k_sw / 6.0;
                s[slot(1, -1)] = -2.0 * k_se / 6.0;
                s[slot(-1, 1)] = -2.0 * k_nw / 6.0;
                s[slot(1, 1)] = -2.0 * k_ne / 6.0;
            }
        }
        Stencil { m, a }.without_boundary()
    }

    /// Zero the couplings that point outside the interior.
    fn without_boundary(mut self) -> Self {
        let m = self.m as isize;
        for j in 0..m {
            for i in 0..m {
                for dj in -1..=1 {
                    for di in -1..=1 {
                        let (ii, jj) = (i + di, j + dj);
                        if ii < 0 || jj < 0 || ii >= m || jj >= m {
                            self.a[(j * m + i) as usize][slot(di, dj)] = 0.0;
                        }
                    }
                }
            }
        }
        self
    }

    /// y = A v.
    pub fn apply(&self, v: &[f64], y: &mut [f64]) {
        let m = self.m as isize;
        for j in 0..m {
            for i in 0..m {
                let s = &self.a[(j * m + i) as usize];
                let mut acc = 0.0;
                for dj in -1..=1 {
                    for di in -1..=1 {
                        let w = s[slot(di, dj)];
                        if w != 0.0 {
                            acc += w * v[((j + dj) * m + i + di) as usize];
                        }
                    }
                }
                y[(j * m + i) as usize] = acc;
            }
        }
    }

    /// The diagonal.
    pub fn diag(&self) -> Vec<f64> {
        self.a.iter().map(|s| s[slot(0, 0)]).collect()
    }

    /// The dense matrix (for the coarsest level and for tests).
    pub fn dense(&self) -> Vec<f64> {
        let nu = self.m * self.m;
        let mut d = vec![0.0; nu * nu];
        let mut e = vec![0.0; nu];
        let mut y = vec![0.0; nu];
        for c in 0..nu {
            e[c] = 1.0;
            self.apply(&e, &mut y);
            for r in 0..nu {
                d[r * nu + c] = y[r];
            }
            e[c] = 0.0;
        }
        d
    }
}

/// Bilinear interpolation weight of a fine node `o` steps from a coarse node.
fn w(o: isize) -> f64 {
    match o.abs() {
        0 => 1.0,
        1 => 0.5,
        _ => 0.0,
    }
}

/// `P^T A P` for the coarse grid of `fine.m + 1` / 2 cells, node by node:
/// column K of the product is `P^T A (P e_K)`, and `P e_K` lives on the 3 x 3
/// fine nodes around K, `A P e_K` on the 5 x 5.
pub fn galerkin(fine: &Stencil) -> Stencil {
    let nf = fine.m + 1;
    let nc = nf / 2;
    let (mf, mc) = (fine.m as isize, (nc - 1) as isize);
    let mut a = vec![[0.0; 9]; (mc * mc) as usize];
    for jc in 0..mc {
        for ic in 0..mc {
            // Fine index of coarse node (ic, jc) (0-based interior indices).
            let (fi, fj) = (2 * ic + 1, 2 * jc + 1);
            // y = A P e_K on the 5 x 5 patch around (fi, fj).
            let mut y = [[0.0f64; 5]; 5];
            for oy in -2..=2isize {
                for ox in -2..=2isize {
                    let (i, j) = (fi + ox, fj + oy);
                    if i < 0 || j < 0 || i >= mf || j >= mf {
                        continue;
                    }
                    let s = &fine.a[(j * mf + i) as usize];
                    let mut acc = 0.0;
                    for dj in -1..=1 {
                        for di in -1..=1 {
                            acc += s[slot(di, dj)] * w(ox + di) * w(oy + dj);
                        }
                    }
                    y[(oy + 2) as usize][(ox + 2) as usize] = acc;
                }
            }
            // Row L = K + (dI, dJ) of column K: P^T y at L.
            for dj in -1..=1isize {
                for di in -1..=1isize {
                    let (li, lj) = (ic + di, jc + dj);
                    if li < 0 || lj < 0 || li >= mc || lj >= mc {
                        continue;
                    }
                    let mut acc = 0.0;
                    for pj in -1..=1isize {
                        for pi in -1..=1isize {
                            let (ox, oy) = (2 * di + pi, 2 * dj + pj);
                            if ox.abs() <= 2 && oy.abs() <= 2 {
                                acc += w(pi) * w(pj) * y[(oy + 2) as usize][(ox + 2) as usize];
                            }
                        }
                    }
                    a[(lj * mc + li) as usize][slot(-di, -dj)] = acc;
                }
            }
        }
    }
    Stencil { m: mc as usize, a }
}

/// The Q1 element matrix for unit coefficient, corners ordered sw, se, nw,
/// ne: 1/6 of 4 on the diagonal, -1 along an edge, -2 across.
pub const Q1_ELEMENT: [[f64; 4]; 4] = [
    [4.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0, -2.0 / 6.0],
    [-1.0 / 6.0, 4.0 / 6.0, -2.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, -2.0 / 6.0, 4.0 / 6.0, -1.0 / 6.0],
    [-2.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0, 4.0 / 6.0],
];

/// A level's operator as 4 x 4 element matrices, one per cell (row-major
/// cells, corners sw, se, nw, ne). Galerkin coarsening keeps this form: with
/// nested grids bilinear interpolation inside a coarse cell is exact on each
/// child, so the coarse element is the sum over the four children of
/// `P_c^T E_c P_c` (what the GPU builds, cell by cell, in
/// `shaders/physics/multigrid.wgsl`).
#[derive(Clone, Debug, PartialEq)]
pub struct Elements {
    pub cells: usize,
    pub e: Vec<[[f64; 4]; 4]>,
}

/// Weight of coarse corner `c` (sw, se, nw, ne) at corner `p` of child
/// `(a, b)` of a coarse cell (bilinear, in half-cell steps).
pub fn child_weight(a: usize, b: usize, p: usize, c: usize) -> f64 {
    let x = (a + (p & 1)) as f64 * 0.5;
    let y = (b + (p >> 1)) as f64 * 0.5;
    let wx = if c & 1 == 1 { x } else { 1.0 - x };
    let wy = if c >> 1 == 1 { y } else { 1.0 - y };
    wx * wy
}

impl Elements {
    /// kappa_c times the unit element, per cell.
    pub fn q1(n: usize, coef: &[f64]) -> Self {
        let e = coef
            .iter()
            .map(|&k| Q1_ELEMENT.map(|row| row.map(|v| k * v)))
            .collect();
        Elements { cells: n, e }
    }

    /// The next coarser level: `sum over children of P^T E P`.
    pub fn coarsen(&self) -> Self {
        let nc = self.cells / 2;
        let mut out = vec![[[0.0; 4]; 4]; nc * nc];
        for cj in 0..nc {
            for ci in 0..nc {
                let acc = &mut out[cj * nc + ci];
                for b in 0..2 {
                    for a in 0..2 {
                        let ec = &self.e[(2 * cj + b) * self.cells + 2 * ci + a];
                        for r in 0..4 {
                            for c in 0..4 {
                                let mut v = 0.0;
                                for p in 0..4 {
                                    for q in 0..4 {
                                        v += child_weight(a, b, p, r)
                                            * ec[p][q]
                                            * child_weight(a, b, q, c);
                                    }
                                }
                                acc[r][c] += v;
                            }
                        }
                    }
                }
            }
        }
        Elements { cells: nc, e: out }
    }

    /// The 9-point stencil on the interior nodes (each node sums the four
    /// cells around it).
    pub fn stencil(&self) -> Stencil {
        let n = self.cells;
        let m = n - 1;
        let mut a = vec![[0.0; 9]; m * m];
        for j in 1..n {
            for i in 1..n {
                let s = &mut a[(j - 1) * m + i - 1];
                for cy in j - 1..=j {
                    for cx in i - 1..=i {
                        let e = &self.e[cy * n + cx];
                        let me = (i - cx) + 2 * (j - cy);
                        for q in 0..4 {
                            let (px, py) = (cx + (q & 1), cy + (q >> 1));
                            let (di, dj) = (px as isize - i as isize, py as isize - j as isize);
                            s[slot(di, dj)] += e[me][q];
                        }
                    }
                }
            }
        }
        Stencil { m, a }.without_boundary()
    }
}

/// Coarse cell coefficients: the geometric mean of the four children.
pub fn coarsen_coef(n: usize, coef: &[f64]) -> Vec<f64> {
    let nc = n / 2;
    let mut out = vec![0.0; nc * nc];
    for j in 0..nc {
        for i in 0..nc {
            let s: f64 = [(0, 0), (1, 0), (0, 1), (1, 1)]
                .iter()
                .map(|(di, dj)| coef[(2 * j + dj) * n + 2 * i + di].ln())
                .sum();
            out[j * nc + i] = (s / 4.0).exp();
        }
    }
    out
}

/// y_c = P^T r (coarse `mc x mc` from fine `2 mc + 1`).
pub fn restrict(mf: usize, r: &[f64], rc: &mut [f64]) {
    let mc = (mf - 1) / 2;
    let mf = mf as isize;
    for jc in 0..mc {
        for ic in 0..mc {
            let (fi, fj) = (2 * ic as isize + 1, 2 * jc as isize + 1);
            let mut acc = 0.0;
            for oy in -1..=1 {
                for ox in -1..=1 {
                    acc += w(ox) * w(oy) * r[((fj + oy) * mf + fi + ox) as usize];
                }
            }
            rc[jc * mc + ic] = acc;
        }
    }
}

/// x += P e_c.
pub fn prolong_add(mf: usize, ec: &[f64], x: &mut [f64]) {
    let mc = (mf - 1) / 2;
    let mf = mf as isize;
    for jc in 0..mc {
        for ic in 0..mc {
            let (fi, fj) = (2 * ic as isize + 1, 2 * jc as isize + 1);
            let e = ec[jc * mc + ic];
            for oy in -1..=1 {
                for ox in -1..=1 {
                    x[((fj + oy) * mf + fi + ox) as usize] += w(ox) * w(oy) * e;
                }
            }
        }
    }
}

/// How coarse operators are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coarsening {
    /// `P^T A P`.
    Galerkin,
    /// Q1 on the coarse grid with geometric-mean coefficients.
    Rediscretise,
}

/// Settings of the V-cycle.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MgSettings {
    pub coarsening: Coarsening,
    /// Damped-Jacobi sweeps before and after the coarse correction.
    pub sweeps: usize,
    /// Jacobi damping.
    pub omega: f64,
    /// Coarsen while the grid has more cells per side than this.
    pub coarsest: usize,
}

impl Default for MgSettings {
    fn default() -> Self {
        MgSettings {
            coarsening: Coarsening::Galerkin,
            sweeps: 1,
            omega: 0.7,
            coarsest: 4,
        }
    }
}

/// The operators of every level, and the coarsest one factored.
pub struct Hierarchy {
    pub levels: Vec<Stencil>,
    dinv: Vec<Vec<f64>>,
    coarse_l: Vec<f64>,
    pub settings: MgSettings,
}

impl Hierarchy {
    /// Levels for `n x n` cells (`n` a power of two times `coarsest`, at
    /// least) with cell coefficients `coef`.
    pub fn new(n: usize, coef: &[f64], s: MgSettings) -> Self {
        let mut levels = vec![Stencil::q1(n, coef)];
        let (mut cells, mut kappa) = (n, coef.to_vec());
        // Galerkin products by elements, as the GPU forms them.
        let mut elements = Elements::q1(n, coef);
        while cells > s.coarsest && cells % 2 == 0 && cells / 2 >= 2 {
            let next = match s.coarsening {
                Coarsening::Galerkin => {
                    elements = elements.coarsen();
                    elements.stencil()
                }
                Coarsening::Rediscretise => {
                    kappa = coarsen_coef(cells, &kappa);
                    Stencil::q1(cells / 2, &kappa)
                }
            };
            levels.push(next);
            cells /= 2;
        }
        let dinv = levels
            .iter()
            .map(|l| l.diag().iter().map(|d| 1.0 / d).collect())
            .collect();
        let last = levels.last().expect("one level");
        let nu = last.m * last.m;
        // SPD by construction (a Galerkin product or a Q1 matrix of positive
        // coefficients); a failure here means a non-finite coefficient.
        let coarse_l =
            linalg::cholesky(&last.dense(), nu).unwrap_or_else(|_| vec![f64::NAN; nu * nu]);
        Hierarchy {
            levels,
            dinv,
            coarse_l,
            settings: s,
        }
    }

    /// z = M r: one V-cycle from a zero guess.
    pub fn vcycle(&self, r: &[f64]) -> Vec<f64> {
        self.cycle(0, r)
    }

    fn cycle(&self, l: usize, r: &[f64]) -> Vec<f64> {
        let a = &self.levels[l];
        let nu = a.m * a.m;
        if l + 1 == self.levels.len() {
            let mut x = r.to_vec();
            linalg::solve_lower_in_place(&self.coarse_l, nu, &mut x);
            // L^T x = y: the transpose solve, by hand on the small factor.
            for i in (0..nu).rev() {
                let s: f64 = (i + 1..nu).map(|k| self.coarse_l[k * nu + i] * x[k]).sum();
                x[i] = (x[i] - s) / self.coarse_l[i * nu + i];
            }
            return x;
        }
        let (omega, dinv) = (self.settings.omega, &self.dinv[l]);
        let mut x = vec![0.0; nu];
        let mut ax = vec![0.0; nu];
        let smooth = |x: &mut Vec<f64>, ax: &mut Vec<f64>| {
            for _ in 0..self.settings.sweeps {
                a.apply(x, ax);
                for k in 0..nu {
                    x[k] += omega * dinv[k] * (r[k] - ax[k]);
                }
            }
        };
        smooth(&mut x, &mut ax);
        a.apply(&x, &mut ax);
        let res: Vec<f64> = (0..nu).map(|k| r[k] - ax[k]).collect();
        let mc = self.levels[l + 1].m;
        let mut rc = vec![0.0; mc * mc];
        restrict(a.m, &res, &mut rc);
        let ec = self.cycle(l + 1, &rc);
        prolong_add(a.m, &ec, &mut x);
        smooth(&mut x, &mut ax);
        x
    }
}

/// Outcome of [`mg_pcg`].
#[derive(Clone, Debug)]
pub struct MgSolve {
    pub x: Vec<f64>,
    pub iters: u32,
    pub rel_residual: f64,
    pub converged: bool,
}

/// CG on the Q1 system preconditioned by one V-cycle per iteration, from
/// x = 0, until `||r|| <= tol ||b||` (recursive residual) or `max_iter`.
pub fn mg_pcg(
    n: usize,
    coef: &[f64],
    rhs: &[f64],
    tol: f64,
    max_iter: u32,
    s: MgSettings,
) -> MgSolve {
    let h = Hierarchy::new(n, coef, s);
    let a = &h.levels[0];
    let nu = a.m * a.m;
    let mut x = vec![0.0; nu];
    let mut r = rhs.to_vec();
    let bb: f64 = rhs.iter().map(|v| v * v).sum();
    let mut z = h.vcycle(&r);
    let mut p = z.clone();
    let mut rz: f64 = r.iter().zip(&z).map(|(a, b)| a * b).sum();
    let mut ap = vec![0.0; nu];
    let mut rr = bb;
    let mut iters = 0;
    while iters < max_iter && rr > tol * tol * bb {
        a.apply(&p, &mut ap);
        let pap: f64 = p.iter().zip(&ap).map(|(a, b)| a * b).sum();
        if pap.is_nan() || pap <= 0.0 || rz.is_nan() || rz <= 0.0 {
            break;
        }
        let alpha = rz / pap;
        for k in 0..nu {
            x[k] += alpha * p[k];
            r[k] -= alpha * ap[k];
        }
        rr = r.iter().map(|v| v * v).sum();
        iters += 1;
        z = h.vcycle(&r);
        let rz_new: f64 = r.iter().zip(&z).map(|(a, b)| a * b).sum();
        let beta = rz_new / rz;
        rz = rz_new;
        for k in 0..nu {
            p[k] = z[k] + beta * p[k];
        }
    }
    let rel = if bb > 0.0 { (rr / bb).sqrt() } else { 0.0 };
    MgSolve {
        x,
        iters,
        rel_residual: rel,
        converged: rr <= tol * tol * bb,
    }
}
