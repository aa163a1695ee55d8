//! Dense linear algebra for the small symmetric matrices of Gaussians
//! (covariances, precisions, Hessians), in f64 through the `faer` crate:
//! Cholesky factor, inverse, log-determinant and solves of symmetric
//! positive definite matrices, the symmetric eigen-decomposition, the
//! matrix square root, and the KL divergence and 2-Wasserstein distance
//! between Gaussians.
//!
//! Every matrix is a row-major `&[f64]`: a `d x d` matrix has length `d * d`
//! and entry `(i, j)` at `i * d + j`; results come back the same way.
//! Functions panic if a length does not match the dimensions given.
//!
//! # One rule for "not positive definite"
//!
//! Everything that needs a positive definite matrix ([`cholesky`],
//! [`spd_inverse`], [`logdet_spd`], [`solve_spd`], [`kl_gauss`]) factors it
//! the same way and fails the same way, with [`NotSpd`]: when an entry of
//! the lower triangle is not finite, or when faer's `LL^T` factorisation
//! meets a pivot that is not strictly positive. Nothing is floored or
//! jittered here; a caller that wants a regularised matrix adds its own
//! jitter and says so. The functions for positive *semi*-definite matrices
//! ([`psd_eigen`], [`sqrtm_psd`], [`w2_gauss`]) judge by the eigenvalues
//! instead: one below -1e-10 times the largest is refused, smaller negatives
//! are rounding and count as 0.

use faer::linalg::solvers::{DenseSolveCore, Llt, LltError, Solve};
use faer::{Mat, MatMut, MatRef, Side};
use std::fmt;

/// Why a matrix that should be symmetric positive definite is not: the
/// Cholesky factorisation stopped at pivot `pivot` (0-based), whose value
/// `a_kk - sum_{j<k} l_kj^2` was `value` (zero, negative or NaN). For a
/// non-finite input entry, `pivot` is the row of the first such entry of the
/// lower triangle (row by row) and `value` is that entry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NotSpd {
    /// 0-based index of the pivot (row) where the factorisation failed.
    pub pivot: usize,
    /// The offending pivot value, or the non-finite entry.
    pub value: f64,
}

impl fmt::Display for NotSpd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "matrix is not positive definite: pivot {} is {:e}",
            self.pivot, self.value
        )
    }
}

impl std::error::Error for NotSpd {}

/// Result of the factoring functions of this module.
pub type LinalgResult<T> = Result<T, NotSpd>;

/// Row-major view of a `rows x cols` slice, after checking its length.
fn view<'a>(a: &'a [f64], rows: usize, cols: usize, what: &str) -> MatRef<'a, f64> {
    assert_eq!(
        a.len(),
        rows * cols,
        "{what}: slice of length {} is not {rows} x {cols}",
        a.len()
    );
    MatRef::from_row_major_slice(a, rows, cols)
}

/// Copies a faer matrix into a new row-major vector.
fn to_row_major(m: MatRef<'_, f64>) -> Vec<f64> {
    let mut out = vec![0.0; m.nrows() * m.ncols()];
    MatMut::from_row_major_slice_mut(&mut out, m.nrows(), m.ncols()).copy_from(m);
    out
}

/// faer's `LL^T` factorisation of the lower triangle of `a`, under the rule
/// of [`cholesky`].
fn llt(a: &[f64], d: usize) -> LinalgResult<Llt<f64>> {
    let m = view(a, d, d, "cholesky");
    for i in 0..d {
        for j in 0..=i {
            let v = a[i * d + j];
            if !v.is_finite() {
                return Err(NotSpd { pivot: i, value: v });
            }
        }
    }
    Llt::new(m, Side::Lower).map_err(|e| match e {
        LltError::NonPositivePivot { index } => NotSpd {
            pivot: index,
            value: failed_pivot(m, index),
        },
    })
}

/// The pivot `a_kk - |x|^2` with `L_00 x = a[k, ..k]` at which faer's
/// factorisation stopped; faer reports only the index, and the leading
/// `k x k` block it had factored is positive definite. NaN if that block
/// does not factor after all.
fn failed_pivot(m: MatRef<'_, f64>, k: usize) -> f64 {
    let Ok(l00) = Llt::new(m.submatrix(0, 0, k, k), Side::Lower) else {
        return f64::NAN;
    };
    let mut x = m.submatrix(k, 0, 1, k).transpose().to_owned();
    l00.L().solve_lower_triangular_in_place(x.as_mut());
    m[(k, k)] - x.squared_norm_l2()
}

/// `ln det` of a matrix from its Cholesky factor: `2 sum ln l_ii`.
fn logdet_of_factor(l: MatRef<'_, f64>) -> f64 {
    2.0 * (0..l.nrows()).map(|i| l[(i, i)].ln()).sum::<f64>()
}

/// Cholesky factor `L` (`a = L L^T`; row-major, lower triangular, zeros
/// above) of the symmetric positive definite `d x d` matrix `a`. Only the
/// lower triangle of `a` (entries `(i, j)` with `j <= i`) is read.
///
/// This is the engine's one rule for "not positive definite": it fails with
/// [`NotSpd`] when an entry of that lower triangle is not finite, or when
/// faer's `LL^T` meets a pivot that is not strictly positive (the pivot's
/// index and value are reported). Nothing is floored: a pivot of 1e-300 is
/// accepted, a pivot of 0 is refused. A `0 x 0` matrix has the empty factor.
///
/// Panics if `a.len() != d * d`.
pub fn cholesky(a: &[f64], d: usize) -> LinalgResult<Vec<f64>> {
    Ok(to_row_major(llt(a, d)?.L()))
}

/// Inverse and log-determinant `(a^-1, ln det a)` of the symmetric positive
/// definite `a` through its Cholesky factor (faer's `LL^T` inverse). The
/// inverse is exactly symmetric. Fails, and reads `a`, as [`cholesky`].
///
/// Panics if `a.len() != d * d`.
pub fn spd_inverse(a: &[f64], d: usize) -> LinalgResult<(Vec<f64>, f64)> {
    let f = llt(a, d)?;
    Ok((to_row_major(f.inverse().as_ref()), logdet_of_factor(f.L())))
}

/// `ln det a` of the symmetric positive definite `a`, as `2 sum ln l_ii`
/// from its Cholesky factor (no overflow for tiny or huge determinants).
/// Fails, and reads `a`, as [`cholesky`].
///
/// Panics if `a.len() != d * d`.
pub fn logdet_spd(a: &[f64], d: usize) -> LinalgResult<f64> {
    Ok(logdet_of_factor(llt(a, d)?.L()))
}

/// Solves `L x = b` in place (`b` becomes `x`) for the row-major
/// lower-triangular `d x d` matrix `l`, e.g. a factor from [`cholesky`].
/// Only the lower triangle of `l` is read; a zero on its diagonal gives
/// infinities or NaN, as division by zero does.
///
/// Panics if `l.len() != d * d` or `b.len() != d`.
pub fn solve_lower_in_place(l: &[f64], d: usize, b: &mut [f64]) {
    let l = view(l, d, d, "solve_lower_in_place");
    assert_eq!(b.len(), d, "solve_lower_in_place: b must have length {d}");
    l.solve_lower_triangular_in_place(MatMut::from_column_major_slice_mut(b, d, 1));
}

/// Solution `x` of `a x = b` for the symmetric positive definite `a`,
/// through its Cholesky factor. Fails, and reads `a`, as [`cholesky`].
///
/// Panics if `a.len() != d * d` or `b.len() != d`.
pub fn solve_spd(a: &[f64], d: usize, b: &[f64]) -> LinalgResult<Vec<f64>> {
    assert_eq!(b.len(), d, "solve_spd: b must have length {d}");
    let f = llt(a, d)?;
    let mut x = b.to_vec();
    f.solve_in_place(MatMut::from_column_major_slice_mut(&mut x, d, 1));
    Ok(x)
}

/// Matrix product `a b` of the row-major `m x k` matrix `a` and `k x n`
/// matrix `b`, as a row-major `m x n` matrix.
///
/// Panics if `a.len() != m * k` or `b.len() != k * n`.
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let c = view(a, m, k, "matmul (a)") * view(b, k, n, "matmul (b)");
    to_row_major(c.as_ref())
}

/// `(a + a^T) / 2` as a faer matrix.
fn symmetrised(a: MatRef<'_, f64>) -> Mat<f64> {
    Mat::from_fn(a.nrows(), a.ncols(), |i, j| 0.5 * (a[(i, j)] + a[(j, i)]))
}

/// Eigen-decomposition of a symmetric `d x d` matrix (row-major; the input
/// is symmetrised first as `(a + a^T) / 2`) by faer's self-adjoint
/// eigensolver (tridiagonalisation, then divide and conquer / implicit QR):
/// eigenvalues to an absolute accuracy of a few `eps * |a|`. Returns the
/// eigenvalues in ascending order and the eigenvectors as the COLUMNS of a
/// row-major `d x d` matrix (`a = V diag(l) V^T`). If `a` has a non-finite
/// entry, or faer does not converge, every returned number is NaN.
///
/// Panics if `a.len() != d * d`.
pub fn sym_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let m = view(a, d, d, "sym_eigen");
    let failed = || (vec![f64::NAN; d], vec![f64::NAN; d * d]);
    if a.iter().any(|v| !v.is_finite()) {
        return failed();
    }
    if d == 0 {
        // faer 0.24's EVD workspace size computes `n - 1` (overflow for n = 0).
        return (vec![], vec![]);
    }
    // faer sorts the eigenvalues in nondecreasing order (documented).
    match symmetrised(m).self_adjoint_eigen(Side::Lower) {
        Ok(e) => (
            e.S().column_vector().iter().copied().collect(),
            to_row_major(e.U()),
        ),
        Err(_) => failed(),
    }
}

/// Sets the rounding-level negative eigenvalues of a matrix that should be
/// positive semi-definite to 0, or returns false if one is clearly negative
/// (below -1e-10 times `scale` or the largest magnitude among `vals`,
/// whichever is larger) or any is not finite.
fn clamp_psd(vals: &mut [f64], scale: f64) -> bool {
    if vals.iter().any(|v| !v.is_finite()) {
        return false;
    }
    let top = vals.iter().fold(scale, |m, v| m.max(v.abs()));
    if vals.iter().any(|&l| l < -1e-10 * top) {
        return false;
    }
    for l in vals {
        *l = l.max(0.0);
    }
    true
}

/// [`sym_eigen`] of a symmetric matrix that should be positive
/// semi-definite, with rounding-level negative eigenvalues set to 0; `None`
/// if one is clearly negative (below -1e-10 times the largest in magnitude)
/// or `a` has a non-finite entry.
///
/// Panics if `a.len() != d * d`.
pub fn psd_eigen(a: &[f64], d: usize) -> Option<(Vec<f64>, Vec<f64>)> {
    let (mut vals, vecs) = sym_eigen(a, d);
    clamp_psd(&mut vals, 0.0).then_some((vals, vecs))
}

/// Eigenvalues only, as [`psd_eigen`] (faer skips the eigenvectors), with
/// negatives judged against `scale` as in [`clamp_psd`].
fn psd_eigenvalues(a: MatRef<'_, f64>, scale: f64) -> Option<Vec<f64>> {
    if a.col_iter().any(|c| c.iter().any(|v| !v.is_finite())) {
        return None;
    }
    if a.nrows() == 0 {
        // faer 0.24's EVD workspace size computes `n - 1` (overflow for n = 0).
        return Some(vec![]);
    }
    let mut vals = symmetrised(a).self_adjoint_eigenvalues(Side::Lower).ok()?;
    clamp_psd(&mut vals, scale).then_some(vals)
}

/// `V diag(sqrt(l)) V^T` from eigenvalues `l >= 0` and eigenvectors (columns
/// of the row-major `v`), exactly symmetric.
fn sqrt_from_eigen(vals: &[f64], v: &[f64], d: usize) -> Mat<f64> {
    let v = view(v, d, d, "sqrtm_psd");
    let scaled = Mat::from_fn(d, d, |i, j| v[(i, j)] * vals[j].sqrt());
    let r = scaled * v.transpose();
    // faer's product need not round (i, j) and (j, i) alike.
    symmetrised(r.as_ref())
}

/// Symmetric square root `V diag(sqrt(l)) V^T` of a positive semi-definite
/// matrix (row-major, symmetrised first; the result is exactly symmetric);
/// `None` under the rule of [`psd_eigen`].
///
/// Panics if `a.len() != d * d`.
pub fn sqrtm_psd(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let (vals, vecs) = psd_eigen(a, d)?;
    Some(to_row_major(sqrt_from_eigen(&vals, &vecs, d).as_ref()))
}

/// `KL(N(m0, s0) || N(m1, s1))` for full covariances (row-major `d x d`):
/// `1/2 [tr(s1^-1 s0) + (m1 - m0)^T s1^-1 (m1 - m0) - d + ln det s1 -
/// ln det s0]`, every term through the Cholesky factors (`tr(s1^-1 s0) =
/// |L1^-1 L0|_F^2`) so no inverse is formed. `None` if either covariance
/// fails [`cholesky`] (then the KL is infinite or undefined) or the result
/// is not finite; rounding-level negatives are returned as 0.
///
/// Panics if the lengths do not match `d`.
pub fn kl_gauss(m0: &[f64], s0: &[f64], m1: &[f64], s1: &[f64], d: usize) -> Option<f64> {
    assert!(
        m0.len() == d && m1.len() == d,
        "kl_gauss: means must have length {d}"
    );
    let f0 = llt(s0, d).ok()?;
    let f1 = llt(s1, d).ok()?;
    let (l0, l1) = (f0.L(), f1.L());
    // tr(s1^-1 s0) = |L1^-1 L0|_F^2.
    let mut x = l0.to_owned();
    l1.solve_lower_triangular_in_place(x.as_mut());
    let trace = x.squared_norm_l2();
    let mut diff = Mat::from_fn(d, 1, |i, _| m1[i] - m0[i]);
    l1.solve_lower_triangular_in_place(diff.as_mut());
    let maha = diff.squared_norm_l2();
    let kl = 0.5 * (trace + maha - d as f64 + logdet_of_factor(l1) - logdet_of_factor(l0));
    kl.is_finite().then_some(kl.max(0.0))
}

/// 2-Wasserstein distance between `N(m0, s0)` and `N(m1, s1)`:
/// `sqrt(|m0 - m1|^2 + tr(s0 + s1 - 2 (s1^1/2 s0 s1^1/2)^1/2))`. Unlike the
/// KL it stays finite for singular covariances, so it compares posteriors
/// that are degenerate in some directions. `None` if a covariance is not
/// positive semi-definite under the rule of [`psd_eigen`].
///
/// The eigenvalues carry absolute errors of about `eps * |s|`, so the
/// distance between (nearly) equal Gaussians comes out near
/// `sqrt(eps * |s|)` ~ 1e-8, not 0.
///
/// Panics if the lengths do not match `d`.
pub fn w2_gauss(m0: &[f64], s0: &[f64], m1: &[f64], s1: &[f64], d: usize) -> Option<f64> {
    assert!(
        m0.len() == d && m1.len() == d && s0.len() == d * d && s1.len() == d * d,
        "w2_gauss: inputs do not match d = {d}"
    );
    let s0m = view(s0, d, d, "w2_gauss");
    let top = |v: &[f64]| v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let top0 = top(&psd_eigenvalues(s0m, 0.0)?);
    let (vals1, vecs1) = psd_eigen(s1, d)?;
    let r1 = sqrt_from_eigen(&vals1, &vecs1, d);
    let cross = &r1 * s0m * &r1;
    // The cross matrix's rounding errors scale with |s0| |s1|, not with its
    // own size: for (near-)orthogonal singular covariances it is pure noise
    // that may be slightly negative.
    let vals = psd_eigenvalues(cross.as_ref(), top0 * top(&vals1))?;
    let trace = |s: &[f64]| (0..d).map(|i| s[i * d + i]).sum::<f64>();
    let mean_sq: f64 = m0.iter().zip(m1).map(|(a, b)| (a - b) * (a - b)).sum();
    let w2sq = mean_sq + trace(s0) + trace(s1) - 2.0 * vals.iter().map(|l| l.sqrt()).sum::<f64>();
    w2sq.is_finite().then(|| w2sq.max(0.0).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    /// Deterministic standard normals (SplitMix64 + Box-Muller), so the tests
    /// need nothing outside this module.
    fn normals(seed: u64, n: usize) -> Vec<f64> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        let mut uniform = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let (u, v) = (uniform(), uniform());
                (-2.0 * u.ln()).sqrt() * (2.0 * PI * v).cos()
            })
            .collect()
    }

    /// B B^T / d + 0.1 I for a standard normal B: well conditioned SPD.
    fn random_spd(seed: u64, d: usize) -> Vec<f64> {
        let b = normals(seed, d * d);
        let mut s = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                s[i * d + j] = (0..d).map(|k| b[i * d + k] * b[j * d + k]).sum::<f64>() / d as f64;
            }
            s[i * d + i] += 0.1;
        }
        s
    }

    /// Q diag(v) Q^T for an orthogonal Q.
    fn rotate_diag(q: &[f64], v: &[f64], d: usize) -> Vec<f64> {
        let mut s = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                s[i * d + j] = (0..d).map(|k| q[i * d + k] * v[k] * q[j * d + k]).sum();
            }
        }
        s
    }

    fn mat_vec(q: &[f64], x: &[f64], d: usize) -> Vec<f64> {
        (0..d)
            .map(|i| (0..d).map(|k| q[i * d + k] * x[k]).sum())
            .collect()
    }

    fn naive_matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
        let mut c = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                c[i * d + j] = (0..d).map(|k| a[i * d + k] * b[k * d + j]).sum();
            }
        }
        c
    }

    fn transpose(a: &[f64], d: usize) -> Vec<f64> {
        let mut t = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                t[j * d + i] = a[i * d + j];
            }
        }
        t
    }

    fn diag(v: &[f64]) -> Vec<f64> {
        let d = v.len();
        let mut s = vec![0.0; d * d];
        for i in 0..d {
            s[i * d + i] = v[i];
        }
        s
    }

    // ----- ported from stats.rs -----

    #[test]
    fn sym_eigen_of_known_matrices() {
        let (vals, _) = sym_eigen(&[2.0, 1.0, 1.0, 2.0], 2);
        assert!((vals[0] - 1.0).abs() < 1e-15 && (vals[1] - 3.0).abs() < 1e-15);
        // Second-difference matrix: eigenvalues 2 - 2 cos(k pi / (d + 1)).
        let d = 40;
        let mut t = vec![0.0; d * d];
        for i in 0..d {
            t[i * d + i] = 2.0;
            if i + 1 < d {
                t[i * d + i + 1] = -1.0;
                t[(i + 1) * d + i] = -1.0;
            }
        }
        let (vals, _) = sym_eigen(&t, d);
        for (k, l) in vals.iter().enumerate() {
            let want = 2.0 - 2.0 * ((k + 1) as f64 * PI / (d + 1) as f64).cos();
            assert!((l - want).abs() < 1e-13, "eigenvalue {k}: {l} vs {want}");
        }
        // Random SPD, d = 128: V diag(l) V^T reproduces A, V is orthogonal.
        let d = 128;
        let a = random_spd(31, d);
        let (vals, vecs) = sym_eigen(&a, d);
        let back = rotate_diag(&vecs, &vals, d);
        let err = max_abs_diff(&a, &back);
        assert!(err < 1e-12, "reconstruction error {err}");
        let r = sqrtm_psd(&a, d).unwrap();
        let err = max_abs_diff(&a, &naive_matmul(&r, &r, d));
        assert!(err < 1e-12, "sqrtm error {err}");
    }

    #[test]
    fn kl_closed_forms() {
        let d = 6;
        let s = random_spd(32, d);
        let m: Vec<f64> = normals(132, d);
        assert!(kl_gauss(&m, &s, &m, &s, d).unwrap().abs() < 1e-12);
        // 1-D: ln(s1/s0) + (s0^2 + (m0-m1)^2) / (2 s1^2) - 1/2.
        let (m0, s0, m1, s1) = (0.3, 0.7, -1.1, 1.9f64);
        let want = (s1 / s0).ln() + (s0 * s0 + (m0 - m1) * (m0 - m1)) / (2.0 * s1 * s1) - 0.5;
        let got = kl_gauss(&[m0], &[s0 * s0], &[m1], &[s1 * s1], 1).unwrap();
        assert!((got - want).abs() < 1e-14, "{got} vs {want}");
        // Diagonal, and the same pair rotated by a common orthogonal Q
        // (full covariances, same KL).
        let v0: Vec<f64> = (0..d).map(|i| 0.2 + 0.3 * i as f64).collect();
        let v1: Vec<f64> = (0..d).map(|i| 1.5 - 0.2 * i as f64).collect();
        let m1v: Vec<f64> = (0..d).map(|i| 0.1 * i as f64).collect();
        let want: f64 = (0..d)
            .map(|i| {
                0.5 * (v0[i] / v1[i] + (m1v[i] - m[i]).powi(2) / v1[i] - 1.0 + (v1[i] / v0[i]).ln())
            })
            .sum();
        let got = kl_gauss(&m, &diag(&v0), &m1v, &diag(&v1), d).unwrap();
        assert!(rel(got, want) < 1e-13, "{got} vs {want}");
        let (_, q) = sym_eigen(&s, d);
        let got = kl_gauss(
            &mat_vec(&q, &m, d),
            &rotate_diag(&q, &v0, d),
            &mat_vec(&q, &m1v, d),
            &rotate_diag(&q, &v1, d),
            d,
        )
        .unwrap();
        assert!(rel(got, want) < 1e-12, "rotated {got} vs {want}");
        // Not positive definite.
        assert!(kl_gauss(
            &[0.0; 2],
            &[1.0, 2.0, 2.0, 1.0],
            &[0.0; 2],
            &[1.0, 0.0, 0.0, 1.0],
            2
        )
        .is_none());
    }

    #[test]
    fn w2_closed_forms() {
        let d = 6;
        let s = random_spd(33, d);
        let m = normals(133, d);
        assert!(w2_gauss(&m, &s, &m, &s, d).unwrap() < 1e-7);
        // Commuting covariances: W2^2 = |m0 - m1|^2 + sum (sqrt a - sqrt b)^2,
        // diagonal and rotated by a common Q.
        let a: Vec<f64> = (0..d).map(|i| 0.2 + 0.3 * i as f64).collect();
        let b: Vec<f64> = (0..d).map(|i| 1.5 - 0.2 * i as f64).collect();
        let m1: Vec<f64> = (0..d).map(|i| 0.1 * i as f64).collect();
        let want = (m.iter().zip(&m1).map(|(x, y)| (x - y).powi(2)).sum::<f64>()
            + a.iter()
                .zip(&b)
                .map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2))
                .sum::<f64>())
        .sqrt();
        let got = w2_gauss(&m, &diag(&a), &m1, &diag(&b), d).unwrap();
        assert!(rel(got, want) < 1e-13, "{got} vs {want}");
        let (_, q) = sym_eigen(&s, d);
        let got = w2_gauss(
            &mat_vec(&q, &m, d),
            &rotate_diag(&q, &a, d),
            &mat_vec(&q, &m1, d),
            &rotate_diag(&q, &b, d),
            d,
        )
        .unwrap();
        assert!(rel(got, want) < 1e-12, "rotated {got} vs {want}");
        // Non-commuting: symmetric in its arguments although the formula is not.
        let s2 = random_spd(34, d);
        let w01 = w2_gauss(&m, &s, &m1, &s2, d).unwrap();
        let w10 = w2_gauss(&m1, &s2, &m, &s, d).unwrap();
        assert!(rel(w01, w10) < 1e-12, "{w01} vs {w10}");
        // Finite for a singular covariance, None for an indefinite one.
        let sing = diag(&[1.0, 0.0, 1.0, 1.0, 0.0, 1.0]);
        assert!(w2_gauss(&m, &sing, &m, &diag(&[1.0; 6]), d).unwrap() > 0.0);
        assert!(w2_gauss(
            &[0.0; 2],
            &[1.0, 2.0, 2.0, 1.0],
            &[0.0; 2],
            &[1.0, 0.0, 0.0, 1.0],
            2
        )
        .is_none());
    }

    // ----- Cholesky and the one failure rule -----

    #[test]
    fn cholesky_known_factor_and_lower_triangle_only() {
        // [[4, 2], [2, 5]] = L L^T with L = [[2, 0], [1, 2]].
        let l = cholesky(&[4.0, 2.0, 2.0, 5.0], 2).unwrap();
        assert_eq!(l, vec![2.0, 0.0, 1.0, 2.0]);
        // The upper triangle is never read: garbage there changes nothing.
        let l2 = cholesky(&[4.0, f64::NAN, 2.0, 5.0], 2).unwrap();
        assert_eq!(l, l2);
        // Random SPD, d = 50 (past faer's blocking): L L^T = A, zeros above.
        let d = 50;
        let a = random_spd(40, d);
        let l = cholesky(&a, d).unwrap();
        for i in 0..d {
            for j in i + 1..d {
                assert_eq!(l[i * d + j], 0.0);
            }
        }
        let err = max_abs_diff(&a, &naive_matmul(&l, &transpose(&l, d), d));
        assert!(err < 1e-13, "L L^T error {err}");
    }

    #[test]
    fn near_singular_covariance_factors() {
        // [[1, 1], [1, 1 + 1e-12]]: pivot 1 is 1e-12 (to rounding), accepted.
        let a = [1.0, 1.0, 1.0, 1.0 + 1e-12];
        let l = cholesky(&a, 2).unwrap();
        assert_eq!((l[0], l[2]), (1.0, 1.0));
        assert!(rel(l[3], 1e-6) < 1e-4, "l_11 = {}", l[3]);
        let ld = logdet_spd(&a, 2).unwrap();
        assert!(rel(ld, (1e-12f64).ln()) < 1e-4, "logdet {ld}");
    }

    #[test]
    fn singular_and_indefinite_matrices_are_refused_with_the_pivot() {
        // [[1, 1], [1, 1]]: pivot 1 is exactly 0.
        let e = cholesky(&[1.0, 1.0, 1.0, 1.0], 2).unwrap_err();
        assert_eq!(
            e,
            NotSpd {
                pivot: 1,
                value: 0.0
            }
        );
        assert_eq!(
            e.to_string(),
            "matrix is not positive definite: pivot 1 is 0e0"
        );
        // Eigenvalues 3 and -1: pivot 1 is 1 - 2^2 = -3.
        let e = cholesky(&[1.0, 2.0, 2.0, 1.0], 2).unwrap_err();
        assert_eq!(
            e,
            NotSpd {
                pivot: 1,
                value: -3.0
            }
        );
        // Negative first pivot.
        let e = cholesky(&[-2.0, 0.0, 0.0, 1.0], 2).unwrap_err();
        assert_eq!(
            e,
            NotSpd {
                pivot: 0,
                value: -2.0
            }
        );
        // Deep inside a larger matrix (past faer's blocking): SPD A of size
        // 60 with row/column 37 replaced so that pivot 37 is -0.5 exactly
        // in exact arithmetic.
        let d = 60;
        let mut a = random_spd(41, d);
        let l = cholesky(&a, d).unwrap();
        let k = 37;
        let sum_sq: f64 = (0..k).map(|j| l[k * d + j] * l[k * d + j]).sum();
        a[k * d + k] = sum_sq - 0.5;
        let e = cholesky(&a, d).unwrap_err();
        assert_eq!(e.pivot, k);
        assert!((e.value + 0.5).abs() < 1e-12, "pivot value {}", e.value);
        // The same error from everything that factors.
        assert_eq!(spd_inverse(&a, d).unwrap_err(), e);
        assert_eq!(logdet_spd(&a, d).unwrap_err(), e);
        assert_eq!(solve_spd(&a, d, &vec![1.0; d]).unwrap_err(), e);
    }

    #[test]
    fn non_finite_input_is_refused() {
        let e = cholesky(&[1.0, 0.0, f64::NAN, 1.0], 2).unwrap_err();
        assert_eq!(e.pivot, 1);
        assert!(e.value.is_nan());
        assert_eq!(
            e.to_string(),
            "matrix is not positive definite: pivot 1 is NaN"
        );
        let e = cholesky(&[f64::INFINITY, 0.0, 0.0, 1.0], 2).unwrap_err();
        assert_eq!(
            e,
            NotSpd {
                pivot: 0,
                value: f64::INFINITY
            }
        );
        assert!(spd_inverse(&[1.0, 0.0, 0.0, f64::NAN], 2).is_err());
        assert!(kl_gauss(&[0.0], &[f64::NAN], &[0.0], &[1.0], 1).is_none());
        assert!(w2_gauss(&[0.0], &[f64::NAN], &[0.0], &[1.0], 1).is_none());
        let (vals, vecs) = sym_eigen(&[1.0, f64::NAN, 0.0, 1.0], 2);
        assert!(vals.iter().chain(&vecs).all(|v| v.is_nan()));
        assert!(psd_eigen(&[1.0, f64::INFINITY, 0.0, 1.0], 2).is_none());
        assert!(sqrtm_psd(&[f64::NAN], 1).is_none());
    }

    #[test]
    fn tiny_variances_factor_and_invert() {
        // diag(1e-20, 1): no flooring, exact factor, inverse and logdet.
        let a = [1e-20, 0.0, 0.0, 1.0];
        let l = cholesky(&a, 2).unwrap();
        assert!(rel(l[0], 1e-10) < 1e-15 && l[1] == 0.0 && l[2] == 0.0 && l[3] == 1.0);
        let (inv, logdet) = spd_inverse(&a, 2).unwrap();
        assert!(rel(inv[0], 1e20) < 1e-15 && inv[1] == 0.0 && inv[2] == 0.0);
        assert!(rel(inv[3], 1.0) < 1e-15);
        assert!(rel(logdet, (1e-20f64).ln()) < 1e-15, "logdet {logdet}");
        assert_eq!(logdet_spd(&a, 2).unwrap(), logdet);
        // A pivot of 1e-300 is still positive and accepted.
        assert!(cholesky(&[1e-300], 1).is_ok());
        // A correlated pair with a tiny conditional variance:
        // [[1, 1], [1, 1 + 1e-20]] rounds to [[1, 1], [1, 1]] and is refused.
        assert!(cholesky(&[1.0, 1.0, 1.0, 1.0 + 1e-20], 2).is_err());
    }

    #[test]
    fn one_by_one_and_empty_matrices() {
        assert_eq!(cholesky(&[4.0], 1).unwrap(), vec![2.0]);
        let (inv, logdet) = spd_inverse(&[4.0], 1).unwrap();
        assert_eq!(inv, vec![0.25]);
        assert!(rel(logdet, 4f64.ln()) < 1e-15);
        assert_eq!(solve_spd(&[4.0], 1, &[2.0]).unwrap(), vec![0.5]);
        assert_eq!(
            cholesky(&[0.0], 1).unwrap_err(),
            NotSpd {
                pivot: 0,
                value: 0.0
            }
        );
        let (vals, vecs) = sym_eigen(&[-3.0], 1);
        assert_eq!((vals, vecs), (vec![-3.0], vec![1.0]));
        assert_eq!(sqrtm_psd(&[9.0], 1).unwrap(), vec![3.0]);
        // 0 x 0: empty factor and inverse, ln det = ln 1 = 0, KL = W2 = 0.
        assert_eq!(cholesky(&[], 0).unwrap(), Vec::<f64>::new());
        assert_eq!(spd_inverse(&[], 0).unwrap(), (vec![], 0.0));
        assert_eq!(logdet_spd(&[], 0).unwrap(), 0.0);
        assert_eq!(solve_spd(&[], 0, &[]).unwrap(), Vec::<f64>::new());
        let mut b: [f64; 0] = [];
        solve_lower_in_place(&[], 0, &mut b);
        assert_eq!(sym_eigen(&[], 0), (vec![], vec![]));
        assert_eq!(sqrtm_psd(&[], 0).unwrap(), Vec::<f64>::new());
        assert_eq!(kl_gauss(&[], &[], &[], &[], 0), Some(0.0));
        assert_eq!(w2_gauss(&[], &[], &[], &[], 0), Some(0.0));
        assert_eq!(matmul(&[], &[], 0, 3, 0), Vec::<f64>::new());
        assert_eq!(matmul(&[], &[], 2, 0, 2), vec![0.0; 4]);
    }

    #[test]
    fn spd_inverse_of_random_8x8_times_a_is_identity() {
        let d = 8;
        let a = random_spd(42, d);
        let (inv, logdet) = spd_inverse(&a, d).unwrap();
        assert_eq!(inv, transpose(&inv, d), "inverse not exactly symmetric");
        let prod = naive_matmul(&a, &inv, d);
        let mut eye = vec![0.0; d * d];
        for i in 0..d {
            eye[i * d + i] = 1.0;
        }
        let err = max_abs_diff(&prod, &eye);
        assert!(err < 1e-12, "|A inv(A) - I|_max = {err}");
        // ln det from the eigenvalues.
        let (vals, _) = sym_eigen(&a, d);
        let want: f64 = vals.iter().map(|l| l.ln()).sum();
        assert!(rel(logdet, want) < 1e-12, "{logdet} vs {want}");
    }

    #[test]
    fn solves_and_matmul() {
        let d = 9;
        let a = random_spd(43, d);
        let x_true = normals(44, d);
        let b = mat_vec(&a, &x_true, d);
        let x = solve_spd(&a, d, &b).unwrap();
        assert!(max_abs_diff(&x, &x_true) < 1e-12);
        // L y = b by forward substitution, upper triangle of L never read.
        let mut l = cholesky(&a, d).unwrap();
        let mut y = b.clone();
        solve_lower_in_place(&l, d, &mut y);
        assert!(max_abs_diff(&mat_vec(&l, &y, d), &b) < 1e-12);
        for i in 0..d {
            for j in i + 1..d {
                l[i * d + j] = f64::NAN;
            }
        }
        let mut y2 = b.clone();
        solve_lower_in_place(&l, d, &mut y2);
        assert_eq!(y, y2);
        // Rectangular product against the naive triple loop.
        let (m, k, n) = (3, 5, 4);
        let p = normals(45, m * k);
        let q = normals(46, k * n);
        let c = matmul(&p, &q, m, k, n);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|t| p[i * k + t] * q[t * n + j]).sum();
                assert!((c[i * n + j] - want).abs() < 1e-14);
            }
        }
    }

    #[test]
    fn sym_eigen_reconstruction_ordering_and_symmetrisation() {
        let d = 30;
        let a = random_spd(47, d);
        let (vals, vecs) = sym_eigen(&a, d);
        assert!(vals.windows(2).all(|w| w[0] <= w[1]), "not ascending");
        assert!(max_abs_diff(&a, &rotate_diag(&vecs, &vals, d)) < 1e-13);
        // V^T V = I.
        let vtv = naive_matmul(&transpose(&vecs, d), &vecs, d);
        let mut eye = vec![0.0; d * d];
        for i in 0..d {
            eye[i * d + i] = 1.0;
        }
        assert!(max_abs_diff(&vtv, &eye) < 1e-13);
        // Each column is an eigenvector: A v_k = l_k v_k.
        for k in 0..d {
            let v: Vec<f64> = (0..d).map(|i| vecs[i * d + k]).collect();
            let av = mat_vec(&a, &v, d);
            let lv: Vec<f64> = v.iter().map(|x| vals[k] * x).collect();
            assert!(max_abs_diff(&av, &lv) < 1e-13, "column {k}");
        }
        // Indefinite matrix with known spectrum, eigenvalues ascending.
        let (vals, _) = sym_eigen(&[0.0, 0.0, 5.0, 0.0, -2.0, 0.0, 5.0, 0.0, 0.0], 3);
        let want = [-5.0, -2.0, 5.0];
        assert!(max_abs_diff(&vals, &want) < 1e-14, "{vals:?}");
        // A non-symmetric input is symmetrised: [[1, 3], [1, 1]] -> [[1, 2], [2, 1]].
        let (vals, _) = sym_eigen(&[1.0, 3.0, 1.0, 1.0], 2);
        assert!(max_abs_diff(&vals, &[-1.0, 3.0]) < 1e-15, "{vals:?}");
    }

    #[test]
    fn psd_rules_and_sqrtm_of_singular_matrices() {
        // Rank-1 [[1, 1], [1, 1]]: eigenvalues 0 and 2, sqrt = A / sqrt 2.
        let r = sqrtm_psd(&[1.0, 1.0, 1.0, 1.0], 2).unwrap();
        let want = 1.0 / 2f64.sqrt();
        assert!(max_abs_diff(&r, &[want; 4]) < 1e-8, "{r:?}");
        assert_eq!(r[1], r[2]);
        // Rounding-level negative eigenvalue is set to 0, a clear one refuses.
        let (vals, _) = psd_eigen(&[1.0, 0.0, 0.0, -1e-12], 2).unwrap();
        assert_eq!(vals, vec![0.0, 1.0]);
        assert!(psd_eigen(&[1.0, 0.0, 0.0, -1e-9], 2).is_none());
        assert!(sqrtm_psd(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
    }

    #[test]
    fn kl_of_identical_gaussians_is_zero_and_1d_value() {
        for d in [1, 4, 20] {
            let s = random_spd(48 + d as u64, d);
            let m = normals(60 + d as u64, d);
            let kl = kl_gauss(&m, &s, &m, &s, d).unwrap();
            assert!(kl.abs() < 1e-12, "d = {d}: {kl}");
        }
        // KL(N(0, 1) || N(1, 4)) = ln 2 + (1 + 1) / 8 - 1/2 = ln 2 - 1/4.
        let kl = kl_gauss(&[0.0], &[1.0], &[1.0], &[4.0], 1).unwrap();
        assert!((kl - (2f64.ln() - 0.25)).abs() < 1e-15, "{kl}");
        // Singular covariances have no KL.
        assert!(kl_gauss(
            &[0.0; 2],
            &[1.0, 1.0, 1.0, 1.0],
            &[0.0; 2],
            &diag(&[1.0; 2]),
            2
        )
        .is_none());
        assert!(kl_gauss(
            &[0.0; 2],
            &diag(&[1.0; 2]),
            &[0.0; 2],
            &diag(&[1.0, 0.0]),
            2
        )
        .is_none());
    }

    #[test]
    fn w2_with_singular_covariances() {
        // Both point masses: W2 = |m0 - m1|.
        let zero = vec![0.0; 4];
        let w = w2_gauss(&[0.0, 0.0], &zero, &[3.0, 4.0], &zero, 2).unwrap();
        assert!((w - 5.0).abs() < 1e-15, "{w}");
        // Point mass vs N(0, S): W2^2 = tr S.
        let s = random_spd(49, 3);
        let tr = s[0] + s[4] + s[8];
        let w = w2_gauss(&[0.0; 3], &[0.0; 9], &[0.0; 3], &s, 3).unwrap();
        assert!(rel(w, tr.sqrt()) < 1e-13, "{w} vs {}", tr.sqrt());
        let w = w2_gauss(&[0.0; 3], &s, &[0.0; 3], &[0.0; 9], 3).unwrap();
        assert!(rel(w, tr.sqrt()) < 1e-13, "{w} vs {}", tr.sqrt());
        // Rank-1 covariances along the same direction u: W2 = |sqrt a - sqrt b|
        // for variances a, b along u (both degenerate, commuting).
        let u = [0.6, 0.8];
        let outer = |c: f64| {
            vec![
                c * u[0] * u[0],
                c * u[0] * u[1],
                c * u[1] * u[0],
                c * u[1] * u[1],
            ]
        };
        let w = w2_gauss(&[0.0; 2], &outer(4.0), &[0.0; 2], &outer(9.0), 2).unwrap();
        assert!((w - 1.0).abs() < 1e-7, "{w}");
        // Orthogonal rank-1 covariances: W2^2 = a + b.
        let v = [-0.8, 0.6];
        let outer_v = vec![v[0] * v[0], v[0] * v[1], v[1] * v[0], v[1] * v[1]];
        let w = w2_gauss(&[0.0; 2], &outer(4.0), &[0.0; 2], &outer_v, 2).unwrap();
        assert!((w - 5f64.sqrt()).abs() < 1e-7, "{w}");
    }

    #[test]
    fn not_spd_is_an_error_type() {
        fn takes_error(_: &dyn std::error::Error) {}
        let e = NotSpd {
            pivot: 3,
            value: -1.5,
        };
        takes_error(&e);
        assert_eq!(
            e.to_string(),
            "matrix is not positive definite: pivot 3 is -1.5e0"
        );
    }
}
