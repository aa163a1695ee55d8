//! inclusions2d (`shared/spec/problems.md`): log-permeability fields made
//! of one to three discs, z = +1 inside and -1 outside, on darcy2d's grid,
//! sensors and noise. A Gaussian prior cannot express them; a generative
//! prior (`crate::nn::vae`) is trained on draws of this class.

use crate::physics::problem::Problem;
use crate::rng::{streams, uniforms};

/// One inclusion: centre (x1, x2) and radius.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Disc {
    pub x1: f64,
    pub x2: f64,
    pub r: f64,
}

/// The discs of draw `index` of `seed`: K uniform on {1, 2, 3}, centres
/// uniform on [0.15, 0.85]^2, radii uniform on [0.08, 0.20].
pub fn draw_discs(seed: u64, index: u32) -> Vec<Disc> {
    let u = uniforms(seed, streams::INCLUSIONS, index, 10);
    let k = 1 + ((u[0] * 3.0) as usize).min(2);
    (0..k)
        .map(|i| Disc {
            x1: 0.15 + 0.7 * u[1 + 3 * i],
            x2: 0.15 + 0.7 * u[2 + 3 * i],
            r: 0.08 + 0.12 * u[3 + 3 * i],
        })
        .collect()
}

/// The cell field of `discs` on an n x n grid (flat index j n + i): +1
/// where the cell centre lies within distance r of some disc's centre.
pub fn field(n: usize, discs: &[Disc]) -> Vec<f64> {
    let h = 1.0 / n as f64;
    let mut z = vec![-1.0; n * n];
    for j in 0..n {
        let x2 = (j as f64 + 0.5) * h;
        for i in 0..n {
            let x1 = (i as f64 + 0.5) * h;
            if discs
                .iter()
                .any(|d| (x1 - d.x1).powi(2) + (x2 - d.x2).powi(2) <= d.r * d.r)
            {
                z[j * n + i] = 1.0;
            }
        }
    }
    z
}

/// Draw `index` of `seed`: its discs and field.
pub fn draw(n: usize, seed: u64, index: u32) -> (Vec<Disc>, Vec<f64>) {
    let discs = draw_discs(seed, index);
    let z = field(n, &discs);
    (discs, z)
}

/// The darcy2d problem inclusions2d is posed on (spec default n = 32; the
/// KL modes are only used by a Gaussian-prior comparison).
pub fn problem(n: Option<usize>, d: Option<usize>) -> crate::Result<Problem> {
    Problem::new(
        crate::physics::problem::ProblemKind::Darcy2d,
        n.unwrap_or(32),
        d.unwrap_or(64),
    )
}

/// Share of cells (of two fields) on the same side of zero.
pub fn phase_accuracy(a: &[f64], b: &[f64]) -> f64 {
    let same = a
        .iter()
        .zip(b)
        .filter(|(x, y)| (**x > 0.0) == (**y > 0.0))
        .count();
    same as f64 / a.len().max(1) as f64
}

/// Intersection over union of the sets {a > 0} and {b > 0} (1 when both
/// are empty).
pub fn iou(a: &[f64], b: &[f64]) -> f64 {
    let (mut inter, mut union) = (0usize, 0usize);
    for (x, y) in a.iter().zip(b) {
        let (p, q) = (*x > 0.0, *y > 0.0);
        inter += usize::from(p && q);
        union += usize::from(p || q);
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// Relative L2 error |a - t| / |t|.
pub fn rel_l2(a: &[f64], t: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(t).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = t.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_follow_the_spec() {
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let d = draw_discs(7, i);
            counts[d.len() - 1] += 1;
            for c in &d {
                assert!((0.15..=0.85).contains(&c.x1) && (0.15..=0.85).contains(&c.x2));
                assert!((0.08..=0.20).contains(&c.r));
            }
        }
        // K uniform on {1, 2, 3}: 1000 each, sd ~26.
        for c in counts {
            assert!((880..1120).contains(&c), "K counts {counts:?}");
        }
        let (discs, z) = draw(32, 3, 0);
        assert!(z.iter().all(|&v| v == 1.0 || v == -1.0));
        // The area inside is close to the discs' (no overlap for one disc).
        let one = [discs[0]];
        let z1 = field(64, &one);
        let inside = z1.iter().filter(|&&v| v > 0.0).count() as f64 / (64.0 * 64.0);
        let area = std::f64::consts::PI * one[0].r * one[0].r;
        assert!((inside - area).abs() < 0.15 * area, "{inside} vs {area}");
        assert_eq!(iou(&z, &z), 1.0);
        assert_eq!(phase_accuracy(&z, &z), 1.0);
    }
}
