//! Statistics for gold standards and calibration, in f64 on the CPU:
//! MCMC diagnostics (rank-normalised split R-hat, bulk ESS) and calibration
//! (coverage, SBC ranks, chi-square uniformity). Special functions live in
//! [`crate::math::special`], divergences between Gaussians (KL,
//! 2-Wasserstein) in [`crate::math::linalg`].
//!
//! Everything here is small, dense and run once per result, so plain loops
//! in f64 are used throughout; accuracy matters more than speed.
//!
//! Matrices are row-major `d x d` slices. Chains are `&[Vec<f64>]`, one
//! vector per chain, all of the same length.

use crate::math::special::{chi2_sf, norm_ppf};

// ---------------------------------------------------------------------------
// Quantiles and ranks
// ---------------------------------------------------------------------------

/// Quantile of sorted data by linear interpolation between order
/// statistics (Hyndman-Fan type 7, the default of R and NumPy), so the
/// numbers match what a reader gets from `numpy.quantile`. `p` is clamped
/// to [0, 1]; empty data give NaN.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    if n == 0 || p.is_nan() {
        return f64::NAN;
    }
    let h = (n - 1) as f64 * p.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    if lo + 1 >= n {
        return sorted[n - 1];
    }
    sorted[lo] + (h - lo as f64) * (sorted[lo + 1] - sorted[lo])
}

/// Sorted copy (total order, NaN last).
fn sorted_copy(x: &[f64]) -> Vec<f64> {
    let mut v = x.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// Ranks 1..=n of `x`, ties sharing their average rank (as R's
/// `rank(ties.method = "average")`), so tied draws map to one z-score.
pub fn ranks_average(x: &[f64]) -> Vec<f64> {
    let n = x.len();
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; n];
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && x[idx[j]] == x[idx[i]] {
            j += 1;
        }
        // Positions i..j (0-based) hold ranks i+1..=j; their mean:
        let r = (i + 1 + j) as f64 / 2.0;
        for &k in &idx[i..j] {
            ranks[k] = r;
        }
        i = j;
    }
    ranks
}

/// Rank-normalised z-scores `Phi^-1((r - 3/8) / (S + 1/4))` (Blom's
/// offsets, as in Vehtari et al. 2021): makes R-hat and ESS well defined
/// for heavy tails and invariant to monotone transforms.
pub fn rank_normalize(x: &[f64]) -> Vec<f64> {
    let s = x.len() as f64;
    ranks_average(x)
        .into_iter()
        .map(|r| norm_ppf((r - 0.375) / (s + 0.25)))
        .collect()
}

// ---------------------------------------------------------------------------
// MCMC diagnostics
// ---------------------------------------------------------------------------

/// Checks that all chains have the same length; returns it.
fn chain_len(chains: &[Vec<f64>]) -> usize {
    let n = chains.first().map_or(0, Vec::len);
    assert!(
        chains.iter().all(|c| c.len() == n),
        "all chains must have the same number of draws (got {:?})",
        chains.iter().map(Vec::len).collect::<Vec<_>>()
    );
    n
}

fn all_finite(chains: &[Vec<f64>]) -> bool {
    chains.iter().flatten().all(|v| v.is_finite())
}

/// Each chain cut into its first and last halves (the middle draw of an
/// odd-length chain is dropped, as in the `posterior` R package): a chain
/// that drifts shows up as two chains that disagree.
fn split_chains(chains: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = chain_len(chains);
    let half = n / 2;
    chains
        .iter()
        .flat_map(|c| [c[..half].to_vec(), c[n - half..].to_vec()])
        .collect()
}

/// Rank-normalises the pooled draws of all chains, keeping the chain shape.
fn rank_normalize_chains(chains: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let pooled: Vec<f64> = chains.iter().flatten().copied().collect();
    let z = rank_normalize(&pooled);
    let n = chain_len(chains);
    z.chunks(n.max(1)).map(<[f64]>::to_vec).collect()
}

/// `|x - median|` over the pooled draws: R-hat of the folded draws
/// detects chains that agree in location but not in scale.
fn fold_chains(chains: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let pooled = sorted_copy(&chains.iter().flatten().copied().collect::<Vec<_>>());
    let med = quantile(&pooled, 0.5);
    chains
        .iter()
        .map(|c| c.iter().map(|v| (v - med).abs()).collect())
        .collect()
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

/// Sample variance (divisor n - 1).
fn var(x: &[f64]) -> f64 {
    let m = mean(x);
    x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() as f64 - 1.0)
}

/// Gelman-Rubin potential scale reduction of the given chains (no
/// splitting): `sqrt(((n-1)/n W + B/n) / W)`, W the mean within-chain
/// variance, B/n the variance of the chain means.
fn rhat_chains(chains: &[Vec<f64>]) -> f64 {
    let m = chains.len();
    let n = chain_len(chains);
    if m < 2 || n < 2 {
        return f64::NAN;
    }
    let means: Vec<f64> = chains.iter().map(|c| mean(c)).collect();
    let w = chains.iter().map(|c| var(c)).sum::<f64>() / m as f64;
    let b_over_n = var(&means);
    let nf = n as f64;
    let var_plus = (nf - 1.0) / nf * w + b_over_n;
    (var_plus / w).sqrt()
}

/// Classic split R-hat on the raw draws (BDA3, section 11.4): no rank
/// normalisation, so it is what a hand computation gives. NaN with fewer
/// than 4 draws per chain, non-finite draws or constant chains.
///
/// Panics if the chains differ in length.
pub fn split_rhat_basic(chains: &[Vec<f64>]) -> f64 {
    if chain_len(chains) < 4 || !all_finite(chains) {
        return f64::NAN;
    }
    rhat_chains(&split_chains(chains))
}

/// Rank-normalised split R-hat (Vehtari, Gelman, Simpson, Carpenter,
/// Bürkner 2021): the larger of the split R-hat of the rank-normalised
/// draws (location) and of the rank-normalised folded draws `|x - median|`
/// (scale). Values above 1.01 mean the chains have not mixed. NaN with
/// fewer than 4 draws per chain, non-finite draws or constant chains.
///
/// Panics if the chains differ in length.
pub fn split_rhat(chains: &[Vec<f64>]) -> f64 {
    if chain_len(chains) < 4 || !all_finite(chains) {
        return f64::NAN;
    }
    let bulk = rhat_chains(&rank_normalize_chains(&split_chains(chains)));
    let tail = rhat_chains(&rank_normalize_chains(&split_chains(&fold_chains(chains))));
    bulk.max(tail)
}

/// Biased autocovariance (divisor n, as Geyer 1992 recommends) of a
/// centred chain at lag `t`.
fn autocov(centred: &[f64], t: usize) -> f64 {
    let n = centred.len();
    centred[..n - t]
        .iter()
        .zip(&centred[t..])
        .map(|(a, b)| a * b)
        .sum::<f64>()
        / n as f64
}

/// Multi-chain effective sample size of the given chains, as in Stan and
/// the `posterior` package (`ess_rfun`): autocorrelations combined across
/// chains through the within/between variance, `rho_t = 1 - (W -
/// mean_c acov_c(t)) / var_plus`, summed in pairs up to Geyer's initial
/// positive sequence, made monotone (initial monotone sequence), and
/// `tau >= 1 / log10(S)` so antithetic chains cannot claim more than
/// `S log10 S` draws. Autocovariances are computed directly, lag by lag,
/// only as far as the truncation needs.
fn ess_chains(chains: &[Vec<f64>]) -> f64 {
    let m = chains.len();
    let n = chain_len(chains);
    if m == 0 || n < 4 {
        return f64::NAN;
    }
    let centred: Vec<Vec<f64>> = chains
        .iter()
        .map(|c| {
            let mu = mean(c);
            c.iter().map(|v| v - mu).collect()
        })
        .collect();
    let mean_acov = |t: usize| centred.iter().map(|c| autocov(c, t)).sum::<f64>() / m as f64;
    let nf = n as f64;
    let mean_var = mean_acov(0) * nf / (nf - 1.0);
    let mut var_plus = mean_var * (nf - 1.0) / nf;
    if m > 1 {
        let means: Vec<f64> = chains.iter().map(|c| mean(c)).collect();
        var_plus += var(&means);
    }
    if var_plus.is_nan() || var_plus <= 0.0 {
        return f64::NAN;
    }
    let rho = |t: usize| 1.0 - (mean_var - mean_acov(t)) / var_plus;

    // Geyer's initial positive sequence: sums of adjacent pairs stay > 0.
    let mut rho_t = vec![0.0; n];
    rho_t[0] = 1.0;
    let mut even = 1.0;
    let mut odd = rho(1);
    rho_t[1] = odd;
    let mut t = 0;
    while t + 5 < n && even + odd > 0.0 {
        t += 2;
        even = rho(t);
        odd = rho(t + 1);
        if even + odd >= 0.0 {
            rho_t[t] = even;
            rho_t[t + 1] = odd;
        }
    }
    let max_t = t;
    if even > 0.0 {
        rho_t[max_t] = even;
    }
    // Geyer's initial monotone sequence: pair sums non-increasing.
    let mut t = 0;
    while t + 4 <= max_t {
        t += 2;
        if rho_t[t] + rho_t[t + 1] > rho_t[t - 2] + rho_t[t - 1] {
            rho_t[t] = (rho_t[t - 2] + rho_t[t - 1]) / 2.0;
            rho_t[t + 1] = rho_t[t];
        }
    }
    let s = (m * n) as f64;
    let tau = -1.0 + 2.0 * rho_t[..max_t].iter().sum::<f64>() + rho_t[max_t];
    let tau = tau.max(1.0 / s.log10());
    s / tau
}

/// Effective sample size of the split chains on the raw draws (no rank
/// normalisation): the ESS of the mean for finite-variance targets. NaN
/// with fewer than 8 draws per chain, non-finite or constant draws.
///
/// Panics if the chains differ in length.
pub fn ess_basic(chains: &[Vec<f64>]) -> f64 {
    if !all_finite(chains) {
        return f64::NAN;
    }
    ess_chains(&split_chains(chains))
}

/// Bulk effective sample size (Vehtari et al. 2021): the ESS of the
/// rank-normalised split chains, robust to heavy tails. About the number
/// of draws for independent draws; a few hundred suffice for reporting
/// posterior means and central intervals.
///
/// Panics if the chains differ in length.
pub fn ess_bulk(chains: &[Vec<f64>]) -> f64 {
    if !all_finite(chains) {
        return f64::NAN;
    }
    ess_chains(&rank_normalize_chains(&split_chains(chains)))
}

// ---------------------------------------------------------------------------
// Calibration
// ---------------------------------------------------------------------------

/// Central credible interval of `N(mean, std^2)` holding probability
/// `level`: `mean -/+ Phi^-1((1 + level) / 2) std`.
pub fn central_interval_gauss(mean: f64, std: f64, level: f64) -> (f64, f64) {
    let z = norm_ppf(0.5 + 0.5 * level);
    (mean - z * std, mean + z * std)
}

/// Fraction of coordinates whose `truth` lies in the central `level`
/// interval of the Gaussian marginal `N(mean_i, std_i^2)` (closed
/// interval). NaN for empty input.
///
/// Panics if the slices differ in length.
pub fn coverage_gauss(truth: &[f64], mean: &[f64], std: &[f64], level: f64) -> f64 {
    assert!(
        truth.len() == mean.len() && truth.len() == std.len(),
        "coverage_gauss: truth, mean and std have lengths {}, {}, {}",
        truth.len(),
        mean.len(),
        std.len()
    );
    let inside = truth
        .iter()
        .zip(mean.iter().zip(std))
        .filter(|(&t, (&m, &s))| {
            let (lo, hi) = central_interval_gauss(m, s, level);
            lo <= t && t <= hi
        })
        .count();
    inside as f64 / truth.len() as f64
}

/// Fraction of coordinates whose `truth` lies in the central `level`
/// interval of the posterior draws (`samples[k][i]`: draw k, coordinate
/// i), the interval ends being the empirical (1 -/+ level)/2 quantiles
/// (type 7). NaN without draws or coordinates.
///
/// Panics if a draw's length differs from `truth`'s.
pub fn coverage_samples(truth: &[f64], samples: &[Vec<f64>], level: f64) -> f64 {
    let d = truth.len();
    assert!(
        samples.iter().all(|s| s.len() == d),
        "coverage_samples: every draw must have {d} coordinates"
    );
    if samples.is_empty() || d == 0 {
        return f64::NAN;
    }
    let a = 0.5 * (1.0 - level);
    let mut col = vec![0.0; samples.len()];
    let mut inside = 0usize;
    for (i, &t) in truth.iter().enumerate() {
        for (c, s) in col.iter_mut().zip(samples) {
            *c = s[i];
        }
        col.sort_by(f64::total_cmp);
        if quantile(&col, a) <= t && t <= quantile(&col, 1.0 - a) {
            inside += 1;
        }
    }
    inside as f64 / d as f64
}

/// Simulation-based calibration rank (Talts et al. 2018): the number of
/// posterior draws strictly below the true value, in 0..=draws.len().
/// Uniform over that range when inference is calibrated (for continuous
/// draws; ties are not randomised).
pub fn sbc_rank(truth: f64, draws: &[f64]) -> usize {
    draws.iter().filter(|&&v| v < truth).count()
}

/// Histogram of SBC ranks (each in 0..=n_draws) in `bins` equal-width
/// bins: rank r goes to bin `r * bins / (n_draws + 1)`. The bins hold
/// equally many rank values when `bins` divides `n_draws + 1`; otherwise
/// [`chi2_rank_uniformity`] accounts for the difference.
///
/// Panics if `bins` is 0 or a rank exceeds `n_draws`.
pub fn rank_histogram(ranks: &[usize], n_draws: usize, bins: usize) -> Vec<usize> {
    assert!(bins > 0, "rank_histogram: bins must be positive");
    let mut h = vec![0usize; bins];
    for &r in ranks {
        assert!(r <= n_draws, "rank {r} exceeds n_draws = {n_draws}");
        h[r * bins / (n_draws + 1)] += 1;
    }
    h
}

/// Mean absolute difference between nominal levels and the empirical
/// coverages: one number for a calibration curve. NaN for empty input.
///
/// Panics if the slices differ in length.
pub fn expected_coverage_error(levels: &[f64], empirical: &[f64]) -> f64 {
    assert_eq!(
        levels.len(),
        empirical.len(),
        "levels and coverages differ in length"
    );
    levels
        .iter()
        .zip(empirical)
        .map(|(a, b)| (a - b).abs())
        .sum::<f64>()
        / levels.len() as f64
}

/// `z sqrt(p (1 - p) / n)`: the half-width a coverage estimated from `n`
/// independent trials may stray from its true value `p` (z = 3: about one
/// failure in 370), used as a test tolerance.
pub fn binomial_halfwidth(p: f64, n: usize, z: f64) -> f64 {
    z * (p * (1.0 - p) / n as f64).sqrt()
}

/// Result of a chi-square goodness-of-fit test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chi2Test {
    pub statistic: f64,
    pub dof: usize,
    /// P(chi2_dof >= statistic): small values reject uniformity.
    pub p_value: f64,
}

/// Pearson chi-square test that a rank histogram (from [`rank_histogram`]
/// with the same `n_draws`) is uniform: each bin's expected count is
/// proportional to the number of rank values 0..=n_draws it holds, so
/// unequal bins are handled exactly.
///
/// Panics if the histogram is empty or has more bins than rank values.
pub fn chi2_rank_uniformity(hist: &[usize], n_draws: usize) -> Chi2Test {
    let bins = hist.len();
    assert!(
        bins > 0 && bins <= n_draws + 1,
        "chi2_rank_uniformity: {bins} bins for {} rank values",
        n_draws + 1
    );
    let mut width = vec![0usize; bins];
    for r in 0..=n_draws {
        width[r * bins / (n_draws + 1)] += 1;
    }
    let total: usize = hist.iter().sum();
    let statistic = hist
        .iter()
        .zip(&width)
        .map(|(&o, &w)| {
            let e = total as f64 * w as f64 / (n_draws + 1) as f64;
            let diff = o as f64 - e;
            if e > 0.0 {
                diff * diff / e
            } else {
                0.0
            }
        })
        .sum::<f64>();
    let dof = bins - 1;
    let p_value = if dof == 0 {
        1.0
    } else {
        chi2_sf(statistic, dof as f64)
    };
    Chi2Test {
        statistic,
        dof,
        p_value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::special::norm_cdf;
    use crate::rng::normals;

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    // ----- normal distribution -----

    #[test]
    fn quantile_type7_and_average_ranks() {
        let x = [1.0, 2.0, 4.0, 8.0];
        // h = 3 p: p = 0.5 -> h = 1.5 -> 2 + 0.5 * 2 = 3; p = 0.9 -> h = 2.7 -> 4 + 0.7 * 4.
        assert_eq!(quantile(&x, 0.5), 3.0);
        assert!((quantile(&x, 0.9) - 6.8).abs() < 1e-12);
        assert_eq!(quantile(&x, 0.0), 1.0);
        assert_eq!(quantile(&x, 1.0), 8.0);
        assert_eq!(quantile(&[5.0], 0.3), 5.0);
        assert!(quantile(&[], 0.3).is_nan());
        assert_eq!(
            ranks_average(&[3.0, 1.0, 4.0, 1.0, 5.0, 4.0, 4.0]),
            vec![3.0, 1.5, 5.0, 1.5, 7.0, 5.0, 5.0]
        );
    }

    // ----- R-hat and ESS -----

    fn iid_chains(seed: u64, m: usize, n: usize) -> Vec<Vec<f64>> {
        (0..m).map(|c| normals(seed, 9, c as u32, n)).collect()
    }

    fn ar1_chains(seed: u64, m: usize, n: usize, phi: f64) -> Vec<Vec<f64>> {
        (0..m)
            .map(|c| {
                let e = normals(seed, 10, c as u32, n);
                let mut x = Vec::with_capacity(n);
                let mut prev = e[0]; // stationary start
                x.push(prev);
                for v in &e[1..] {
                    prev = phi * prev + (1.0 - phi * phi).sqrt() * v;
                    x.push(prev);
                }
                x
            })
            .collect()
    }

    #[test]
    fn split_rhat_basic_hand_computed() {
        // Chains [1,2,3,4] and [3,4,5,6] split into [1,2] [3,4] [3,4] [5,6]
        // (n = 2 draws each, M = 4 chains).
        // Chain means 1.5, 3.5, 3.5, 5.5; grand mean 3.5.
        // Within variances (divisor n-1 = 1): 0.5 each -> W = 0.5.
        // B/n = variance of the means = (4 + 0 + 0 + 4) / 3 = 8/3.
        // var+ = (n-1)/n W + B/n = 0.25 + 8/3 = 35/12.
        // R-hat = sqrt(var+ / W) = sqrt(35/6) = 2.41523...
        let chains = vec![vec![1.0, 2.0, 3.0, 4.0], vec![3.0, 4.0, 5.0, 6.0]];
        let got = split_rhat_basic(&chains);
        assert!((got - (35.0f64 / 6.0).sqrt()).abs() < 1e-14, "got {got}");
        // Odd length: the middle draw is dropped ([1,2,|9|,3,4] -> [1,2] [3,4]).
        let odd = vec![
            vec![1.0, 2.0, 9.0, 3.0, 4.0],
            vec![3.0, 4.0, -9.0, 5.0, 6.0],
        ];
        assert!((split_rhat_basic(&odd) - got).abs() < 1e-14);
        // Ranks are monotone-invariant: exp() of the draws changes the
        // basic R-hat but not the rank-normalised one.
        let expd: Vec<Vec<f64>> = chains
            .iter()
            .map(|c| c.iter().map(|v| v.exp()).collect())
            .collect();
        assert!((split_rhat(&expd) - split_rhat(&chains)).abs() < 1e-14);
        assert!((split_rhat_basic(&expd) - got).abs() > 0.1);
        assert!(split_rhat(&[vec![1.0; 8], vec![1.0; 8]]).is_nan());
        assert!(split_rhat(&[vec![1.0, 2.0, 3.0]]).is_nan());
    }

    #[test]
    fn independent_draws_mix() {
        let (m, n) = (4, 5000);
        let chains = iid_chains(11, m, n);
        let s = (m * n) as f64;
        let r = split_rhat(&chains);
        let rb = split_rhat_basic(&chains);
        let eb = ess_bulk(&chains);
        let e = ess_basic(&chains);
        eprintln!(
            "iid: rhat {r:.5} basic {rb:.5}, ess_bulk/S {:.4}, ess_basic/S {:.4}",
            eb / s,
            e / s
        );
        assert!(r < 1.01 && rb < 1.01, "rhat {r} {rb}");
        assert!(rel(eb, s) < 0.1, "ess_bulk {eb} of {s}");
        assert!(rel(e, s) < 0.1, "ess_basic {e} of {s}");
    }

    #[test]
    fn ar1_ess_matches_theory() {
        // For AR(1), tau = (1 + phi) / (1 - phi), so ESS / S = 1/19 at phi = 0.9.
        let (m, n, phi) = (4, 20_000, 0.9);
        let chains = ar1_chains(12, m, n, phi);
        let s = (m * n) as f64;
        let want = (1.0 - phi) / (1.0 + phi);
        let eb = ess_bulk(&chains) / s;
        let e = ess_basic(&chains) / s;
        let r = split_rhat(&chains);
        eprintln!(
            "AR(1) phi 0.9: ess_bulk/S {eb:.5} ess_basic/S {e:.5} (theory {want:.5}), rhat {r:.5}"
        );
        assert!(rel(e, want) < 0.2, "ess_basic/S {e}, want {want}");
        assert!(rel(eb, want) < 0.2, "ess_bulk/S {eb}, want {want}");
        assert!(r < 1.01, "rhat {r}");
    }

    #[test]
    fn antithetic_chains_hit_the_ess_cap() {
        // phi = -0.9 would give ESS = 19 S; the cap tau >= 1/log10(S) limits it to S log10 S.
        let (m, n) = (2, 2000);
        let chains = ar1_chains(13, m, n, -0.9);
        let s = (m * n) as f64;
        let e = ess_basic(&chains);
        assert!(
            rel(e, s * s.log10()) < 1e-12,
            "ess {e}, cap {}",
            s * s.log10()
        );
    }

    #[test]
    fn shifted_and_rescaled_chains_are_flagged() {
        let (m, n) = (4, 1000);
        let mut chains = iid_chains(14, m, n);
        for v in &mut chains[3] {
            *v += 2.0;
        }
        let r = split_rhat(&chains);
        let rb = split_rhat_basic(&chains);
        eprintln!("shifted: rhat {r:.4} basic {rb:.4}");
        assert!(r > 1.1 && rb > 1.1, "rhat {r} basic {rb}");

        // Same location, different scale: only the folded R-hat sees it.
        let mut chains = iid_chains(15, m, n);
        for c in &mut chains[2..] {
            for v in c.iter_mut() {
                *v *= 4.0;
            }
        }
        let r = split_rhat(&chains);
        let rb = split_rhat_basic(&chains);
        eprintln!("rescaled: rhat {r:.4} basic {rb:.4}");
        assert!(rb < 1.02, "basic {rb}");
        assert!(r > 1.1, "rhat {r}");

        // One chain drifting: splitting exposes it.
        let drift = vec![(0..2000)
            .map(|i| i as f64 / 500.0)
            .zip(normals(16, 9, 0, 2000))
            .map(|(a, b)| a + b)
            .collect::<Vec<f64>>()];
        let r = split_rhat(&drift);
        assert!(r > 1.1, "drift rhat {r}");
    }

    // ----- calibration -----

    #[test]
    fn gaussian_intervals_and_coverage() {
        let (lo, hi) = central_interval_gauss(1.0, 2.0, 0.95);
        assert!((lo - (1.0 - 2.0 * 1.959_963_984_540_054)).abs() < 1e-12);
        assert!((hi - (1.0 + 2.0 * 1.959_963_984_540_054)).abs() < 1e-12);
        let d = 20_000;
        let e = normals(21, 11, 0, d);
        let mean: Vec<f64> = (0..d).map(|i| (i as f64).sin()).collect();
        let std: Vec<f64> = (0..d).map(|i| 0.5 + (i % 7) as f64 * 0.1).collect();
        let truth: Vec<f64> = (0..d).map(|i| mean[i] + std[i] * e[i]).collect();
        let half: Vec<f64> = std.iter().map(|s| 0.5 * s).collect();
        for level in [0.5, 0.8, 0.9, 0.95] {
            let c = coverage_gauss(&truth, &mean, &std, level);
            assert!(
                (c - level).abs() < binomial_halfwidth(level, d, 4.0),
                "level {level}: {c}"
            );
            // std halved: P(|Z| <= z/2) = 2 Phi(z/2) - 1.
            let want = 2.0 * norm_cdf(0.5 * norm_ppf(0.5 + 0.5 * level)) - 1.0;
            let c = coverage_gauss(&truth, &mean, &half, level);
            assert!(
                (c - want).abs() < binomial_halfwidth(want, d, 4.0),
                "level {level}: {c} vs {want}"
            );
        }
        let ece = expected_coverage_error(&[0.5, 0.9], &[0.4, 0.95]);
        assert!((ece - 0.075).abs() < 1e-15);
        assert!((binomial_halfwidth(0.5, 100, 2.0) - 0.1).abs() < 1e-15);
    }

    #[test]
    fn sample_coverage_uses_empirical_quantiles() {
        // 5 draws 0..4 of one coordinate: the 80 % interval is
        // [q(0.1), q(0.9)] = [0.4, 3.6] (type 7, h = 4 p).
        let samples: Vec<Vec<f64>> = (0..5).map(|k| vec![k as f64, 10.0 * k as f64]).collect();
        assert_eq!(coverage_samples(&[0.5, 37.0], &samples, 0.8), 0.5);
        assert_eq!(coverage_samples(&[0.3, 35.0], &samples, 0.8), 0.5);
        assert_eq!(coverage_samples(&[3.6, 4.0], &samples, 0.8), 1.0);
        // Calibrated draws: truth and draws from the same N(0, 1) per coordinate.
        let (d, k) = (3000, 200);
        let truth = normals(22, 12, 0, d);
        let draws: Vec<Vec<f64>> = (0..k).map(|j| normals(22, 13, j as u32, d)).collect();
        let c = coverage_samples(&truth, &draws, 0.9);
        // Empirical quantiles of 200 draws widen the interval slightly; the
        // coverage is 0.9 to within sampling error of the d coordinates.
        assert!(
            (c - 0.9).abs() < binomial_halfwidth(0.9, d, 4.0) + 0.01,
            "coverage {c}"
        );
    }

    #[test]
    fn sbc_ranks_detect_miscalibration() {
        assert_eq!(sbc_rank(0.5, &[0.1, 0.9, 0.4, 0.5]), 2);
        assert_eq!(
            rank_histogram(&[0, 1, 2, 3, 4, 4], 4, 5),
            vec![1, 1, 1, 1, 2]
        );
        let (trials, draws, bins) = (2000, 99, 20);
        // Calibrated: posterior = prior = N(0, 1) and truth from the prior.
        let truth = normals(23, 14, 0, trials);
        let ranks: Vec<usize> = (0..trials)
            .map(|t| sbc_rank(truth[t], &normals(23, 15, t as u32, draws)))
            .collect();
        let good = chi2_rank_uniformity(&rank_histogram(&ranks, draws, bins), draws);
        // Overconfident: posterior draws with half the spread -> U-shaped ranks.
        let ranks: Vec<usize> = (0..trials)
            .map(|t| {
                let d: Vec<f64> = normals(23, 15, t as u32, draws)
                    .iter()
                    .map(|v| 0.5 * v)
                    .collect();
                sbc_rank(truth[t], &d)
            })
            .collect();
        let bad = chi2_rank_uniformity(&rank_histogram(&ranks, draws, bins), draws);
        eprintln!("SBC chi2: calibrated {good:?}, overconfident {bad:?}");
        assert_eq!(good.dof, bins - 1);
        assert!(good.p_value > 0.01, "{good:?}");
        assert!(bad.p_value < 1e-10, "{bad:?}");
        // Bins that do not divide the rank count: expected counts follow the bin widths.
        let flat = rank_histogram(&(0..=10).collect::<Vec<_>>(), 10, 3);
        assert_eq!(flat, vec![4, 4, 3]);
        assert_eq!(chi2_rank_uniformity(&flat, 10).statistic, 0.0);
    }
}
