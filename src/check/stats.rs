//! Statistics for gold standards and calibration, in f64 on the CPU:
//! MCMC diagnostics (rank-normalised split R-hat, bulk ESS), the normal
//! distribution, calibration (coverage, SBC ranks, chi-square uniformity)
//! and divergences between Gaussians (KL, 2-Wasserstein).
//!
//! Everything here is small, dense and run once per result, so plain loops
//! in f64 are used throughout; accuracy matters more than speed.
//!
//! Matrices are row-major `d x d` slices. Chains are `&[Vec<f64>]`, one
//! vector per chain, all of the same length.

use std::f64::consts::{PI, SQRT_2};

// ---------------------------------------------------------------------------
// Normal distribution
// ---------------------------------------------------------------------------

/// Complementary error function by W. J. Cody's rational Chebyshev
/// approximations (CALERF, Math. Comp. 1969; netlib specfun): relative
/// error near 1e-16 on the whole line, including the far tail where
/// `1 - erf(x)` would cancel.
// Cody's coefficients keep their published digits so they can be checked
// against the source.
#[allow(clippy::excessive_precision)]
pub fn erfc(x: f64) -> f64 {
    const A: [f64; 5] = [
        3.161_123_743_870_565_6e0,
        1.138_641_541_510_501_6e2,
        3.774_852_376_853_020_2e2,
        3.209_377_589_138_469_5e3,
        1.857_777_061_846_031_5e-1,
    ];
    const B: [f64; 4] = [
        2.360_129_095_234_412_1e1,
        2.440_246_379_344_441_7e2,
        1.282_616_526_077_372_3e3,
        2.844_236_833_439_170_6e3,
    ];
    const C: [f64; 9] = [
        5.641_884_969_886_700_9e-1,
        8.883_149_794_388_376e0,
        6.611_919_063_714_163e1,
        2.986_351_381_974_001_3e2,
        8.819_522_212_417_691e2,
        1.712_047_612_634_070_6e3,
        2.051_078_377_826_071_5e3,
        1.230_339_354_797_997_2e3,
        2.153_115_354_744_038_5e-8,
    ];
    const D: [f64; 8] = [
        1.574_492_611_070_983_5e1,
        1.176_939_508_913_125e2,
        5.371_811_018_620_098_6e2,
        1.621_389_574_566_690_2e3,
        3.290_799_235_733_459_6e3,
        4.362_619_090_143_247e3,
        3.439_367_674_143_721_6e3,
        1.230_339_354_803_749_4e3,
    ];
    const P: [f64; 6] = [
        3.053_266_349_612_323_4e-1,
        3.603_448_999_498_044e-1,
        1.257_817_261_112_292_5e-1,
        1.608_378_514_874_227_7e-2,
        6.587_491_615_298_378e-4,
        1.631_538_713_730_209_8e-2,
    ];
    const Q: [f64; 5] = [
        2.568_520_192_289_822_4e0,
        1.872_952_849_923_467_3e0,
        5.279_051_029_514_284e-1,
        6.051_834_131_244_132e-2,
        2.335_204_976_268_691_8e-3,
    ];
    const THRESH: f64 = 0.46875;
    const SQRPI: f64 = 5.641_895_835_477_562_9e-1; // 1 / sqrt(pi)
    const XBIG: f64 = 26.543;

    if x.is_nan() {
        return f64::NAN;
    }
    let y = x.abs();
    if y <= THRESH {
        // erf by a rational function of x^2; erfc = 1 - erf has no
        // cancellation here because erf(0.47) < 0.5.
        let ysq = y * y;
        let mut num = A[4] * ysq;
        let mut den = ysq;
        for i in 0..3 {
            num = (num + A[i]) * ysq;
            den = (den + B[i]) * ysq;
        }
        return 1.0 - x * (num + A[3]) / (den + B[3]);
    }
    let r = if y <= 4.0 {
        let mut num = C[8] * y;
        let mut den = y;
        for i in 0..7 {
            num = (num + C[i]) * y;
            den = (den + D[i]) * y;
        }
        let r = (num + C[7]) / (den + D[7]);
        tail_exp(y) * r
    } else if y >= XBIG {
        0.0
    } else {
        let ysq = 1.0 / (y * y);
        let mut num = P[5] * ysq;
        let mut den = ysq;
        for i in 0..4 {
            num = (num + P[i]) * ysq;
            den = (den + Q[i]) * ysq;
        }
        let r = ysq * (num + P[4]) / (den + Q[4]);
        tail_exp(y) * (SQRPI - r) / y
    };
    if x < 0.0 {
        2.0 - r
    } else {
        r
    }
}

/// `exp(-y^2)` split as `exp(-ysq^2) exp(-(y - ysq)(y + ysq))` with `ysq`
/// rounded to 1/16 (Cody's trick): keeps full relative accuracy where `y^2`
/// itself would carry a rounding error amplified by the exponential.
fn tail_exp(y: f64) -> f64 {
    let ysq = (y * 16.0).trunc() / 16.0;
    let del = (y - ysq) * (y + ysq);
    (-ysq * ysq).exp() * (-del).exp()
}

/// Standard normal density.
pub fn norm_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * PI).sqrt()
}

/// Standard normal distribution function `Phi(x)`, via [`erfc`] so the
/// lower tail keeps its relative accuracy (Phi(-10) = 7.6e-24, not 0).
pub fn norm_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / SQRT_2)
}

/// Standard normal quantile `Phi^-1(p)`: P. J. Acklam's rational
/// approximation (relative error 1.15e-9) refined by one Halley step on
/// [`norm_cdf`], which brings it to about 1e-15. The upper half uses the
/// symmetry `Phi^-1(p) = -Phi^-1(1 - p)` (1 - p is exact for p > 1/2),
/// so the Halley residual is always computed in the accurate lower tail.
/// Returns -inf at 0, +inf at 1 and NaN outside [0, 1].
pub fn norm_ppf(p: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    if p > 0.5 {
        return -ppf_lower(1.0 - p);
    }
    ppf_lower(p)
}

/// Acklam + Halley for 0 < p <= 1/2.
fn ppf_lower(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const P_LOW: f64 = 0.02425;
    let x = if p < P_LOW {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    };
    // Halley step on Phi(x) - p.
    let e = norm_cdf(x) - p;
    let u = e * (2.0 * PI).sqrt() * (0.5 * x * x).exp();
    let refined = x - u / (1.0 + 0.5 * x * u);
    if refined.is_finite() {
        refined
    } else {
        x
    }
}

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

/// Survival function of the chi-square distribution with `dof` degrees of
/// freedom: `Q(dof/2, x/2)`.
pub fn chi2_sf(x: f64, dof: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    gamma_q(0.5 * dof, 0.5 * x)
}

/// `ln Gamma(x)` for x > 0 by the Lanczos approximation (g = 7, 9 terms;
/// relative error about 1e-15), with the reflection formula below 1/2.
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEF: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (PI / (PI * x).sin().abs()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = COEF[0];
    for (i, &c) in COEF.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Regularised upper incomplete gamma function `Q(a, x) = Gamma(a, x) /
/// Gamma(a)` for a > 0, x >= 0: the series for P when x < a + 1 (it
/// converges fast there) and Lentz's continued fraction for Q otherwise
/// (Numerical Recipes 6.2), so neither is used where it would cancel.
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if a.is_nan() || x.is_nan() || a <= 0.0 || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return 1.0;
    }
    if x.is_infinite() {
        return 0.0;
    }
    let log_prefactor = -x + a * x.ln() - ln_gamma(a);
    if x < a + 1.0 {
        1.0 - gamma_p_series(a, x, log_prefactor)
    } else {
        gamma_q_cf(a, x, log_prefactor)
    }
}

/// Regularised lower incomplete gamma function `P(a, x) = 1 - Q(a, x)`.
pub fn gamma_p(a: f64, x: f64) -> f64 {
    if a.is_nan() || x.is_nan() || a <= 0.0 || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return 0.0;
    }
    if x.is_infinite() {
        return 1.0;
    }
    let log_prefactor = -x + a * x.ln() - ln_gamma(a);
    if x < a + 1.0 {
        gamma_p_series(a, x, log_prefactor)
    } else {
        1.0 - gamma_q_cf(a, x, log_prefactor)
    }
}

fn gamma_p_series(a: f64, x: f64, log_prefactor: f64) -> f64 {
    let mut ap = a;
    let mut del = 1.0 / a;
    let mut sum = del;
    for _ in 0..10_000 {
        ap += 1.0;
        del *= x / ap;
        sum += del;
        if del.abs() < sum.abs() * 1e-17 {
            break;
        }
    }
    sum * log_prefactor.exp()
}

fn gamma_q_cf(a: f64, x: f64, log_prefactor: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / TINY;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..10_000 {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < TINY {
            d = TINY;
        }
        c = b + an / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    log_prefactor.exp() * h
}

// ---------------------------------------------------------------------------
// Dense linear algebra for Gaussians
// ---------------------------------------------------------------------------

/// Cholesky factor `L` (row-major, lower triangular, zeros above) of the
/// symmetric matrix `a` (only its lower triangle is read), or `None` when
/// `a` is not numerically positive definite or holds non-finite values.
pub fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    assert_eq!(a.len(), d * d, "cholesky: matrix is not {d} x {d}");
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s = a[i * d + j] - (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum::<f64>();
            if i == j {
                if !s.is_finite() || s <= 0.0 {
                    return None;
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
                if !l[i * d + j].is_finite() {
                    return None;
                }
            }
        }
    }
    Some(l)
}

/// Solves `L x = b` in place for lower-triangular row-major `L`.
fn forward_solve(l: &[f64], d: usize, b: &mut [f64]) {
    for i in 0..d {
        let s = b[i] - (0..i).map(|k| l[i * d + k] * b[k]).sum::<f64>();
        b[i] = s / l[i * d + i];
    }
}

/// `KL(N(m0, s0) || N(m1, s1))` for full covariances (row-major `d x d`):
/// `1/2 [tr(s1^-1 s0) + (m1 - m0)^T s1^-1 (m1 - m0) - d + ln det s1 -
/// ln det s0]`, every term through the Cholesky factors (`tr(s1^-1 s0) =
/// |L1^-1 L0|_F^2`) so no inverse is formed. `None` if either covariance
/// is not positive definite (then the KL is infinite or undefined).
///
/// Panics if the lengths do not match `d`.
pub fn kl_gauss(m0: &[f64], s0: &[f64], m1: &[f64], s1: &[f64], d: usize) -> Option<f64> {
    assert!(
        m0.len() == d && m1.len() == d,
        "kl_gauss: means must have length {d}"
    );
    let l0 = cholesky(s0, d)?;
    let l1 = cholesky(s1, d)?;
    let logdet = |l: &[f64]| (0..d).map(|i| l[i * d + i].ln()).sum::<f64>() * 2.0;
    // tr(s1^-1 s0) = sum over columns c of L0 of |L1^-1 c|^2.
    let mut trace = 0.0;
    let mut col = vec![0.0; d];
    for j in 0..d {
        for (i, c) in col.iter_mut().enumerate() {
            *c = l0[i * d + j];
        }
        forward_solve(&l1, d, &mut col);
        trace += col.iter().map(|v| v * v).sum::<f64>();
    }
    let mut diff: Vec<f64> = m1.iter().zip(m0).map(|(a, b)| a - b).collect();
    forward_solve(&l1, d, &mut diff);
    let maha = diff.iter().map(|v| v * v).sum::<f64>();
    let kl = 0.5 * (trace + maha - d as f64 + logdet(&l1) - logdet(&l0));
    kl.is_finite().then_some(kl.max(0.0))
}

/// Eigen-decomposition of a symmetric matrix (row-major `d x d`; the
/// input is symmetrised first) by cyclic Jacobi rotations: slow (O(d^3)
/// per sweep) but unconditionally stable and accurate to working
/// precision for every eigenvalue, which the matrix square roots of
/// [`w2_gauss`] need. Returns the eigenvalues in ascending order and the
/// eigenvectors as the columns of a row-major `d x d` matrix.
pub fn sym_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), d * d, "sym_eigen: matrix is not {d} x {d}");
    let mut m = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            m[i * d + j] = 0.5 * (a[i * d + j] + a[j * d + i]);
        }
    }
    let mut v = vec![0.0; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    let total: f64 = m.iter().map(|x| x * x).sum();
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * d + j] * m[i * d + j])
            .sum();
        if off.is_nan() || off <= f64::EPSILON * f64::EPSILON * total {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = m[p * d + q];
                if apq == 0.0 {
                    continue;
                }
                // Rotation angle zeroing a_pq (Rutishauser's stable form).
                let theta = (m[q * d + q] - m[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // m <- m J (columns p, q), then J^T m (rows p, q).
                for k in 0..d {
                    let (kp, kq) = (m[k * d + p], m[k * d + q]);
                    m[k * d + p] = c * kp - s * kq;
                    m[k * d + q] = s * kp + c * kq;
                }
                for k in 0..d {
                    let (pk, qk) = (m[p * d + k], m[q * d + k]);
                    m[p * d + k] = c * pk - s * qk;
                    m[q * d + k] = s * pk + c * qk;
                }
                m[p * d + q] = 0.0;
                m[q * d + p] = 0.0;
                for k in 0..d {
                    let (kp, kq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * kp - s * kq;
                    v[k * d + q] = s * kp + c * kq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&i, &j| m[i * d + i].total_cmp(&m[j * d + j]));
    let vals = order.iter().map(|&i| m[i * d + i]).collect();
    let mut vecs = vec![0.0; d * d];
    for (new, &old) in order.iter().enumerate() {
        for k in 0..d {
            vecs[k * d + new] = v[k * d + old];
        }
    }
    (vals, vecs)
}

/// Eigenvalues of a symmetric matrix that should be positive
/// semi-definite, with rounding-level negatives set to 0; `None` if one is
/// clearly negative (below -1e-10 of the largest) or not finite.
fn psd_eigen(a: &[f64], d: usize) -> Option<(Vec<f64>, Vec<f64>)> {
    if a.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let (mut vals, vecs) = sym_eigen(a, d);
    let top = vals.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if vals.iter().any(|&l| l < -1e-10 * top) {
        return None;
    }
    for l in &mut vals {
        *l = l.max(0.0);
    }
    Some((vals, vecs))
}

/// Symmetric square root `V diag(sqrt(lambda)) V^T` of a positive
/// semi-definite matrix; `None` if it has a clearly negative eigenvalue.
pub fn sqrtm_psd(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let (vals, vecs) = psd_eigen(a, d)?;
    let roots: Vec<f64> = vals.iter().map(|l| l.sqrt()).collect();
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s = (0..d)
                .map(|k| vecs[i * d + k] * roots[k] * vecs[j * d + k])
                .sum::<f64>();
            out[i * d + j] = s;
            out[j * d + i] = s;
        }
    }
    Some(out)
}

/// 2-Wasserstein distance between `N(m0, s0)` and `N(m1, s1)`:
/// `sqrt(|m0 - m1|^2 + tr(s0 + s1 - 2 (s1^1/2 s0 s1^1/2)^1/2))`. Unlike the
/// KL it stays finite for singular covariances, so it compares posteriors
/// that are degenerate in some directions. `None` if a covariance is not
/// positive semi-definite.
///
/// Panics if the lengths do not match `d`.
pub fn w2_gauss(m0: &[f64], s0: &[f64], m1: &[f64], s1: &[f64], d: usize) -> Option<f64> {
    assert!(
        m0.len() == d && m1.len() == d && s0.len() == d * d && s1.len() == d * d,
        "w2_gauss: inputs do not match d = {d}"
    );
    psd_eigen(s0, d)?;
    let r1 = sqrtm_psd(s1, d)?;
    let matmul = |a: &[f64], b: &[f64]| {
        let mut c = vec![0.0; d * d];
        for i in 0..d {
            for k in 0..d {
                let aik = a[i * d + k];
                if aik != 0.0 {
                    for j in 0..d {
                        c[i * d + j] += aik * b[k * d + j];
                    }
                }
            }
        }
        c
    };
    let cross = matmul(&matmul(&r1, s0), &r1);
    let (vals, _) = psd_eigen(&cross, d)?;
    let trace = |s: &[f64]| (0..d).map(|i| s[i * d + i]).sum::<f64>();
    let mean_sq: f64 = m0.iter().zip(m1).map(|(a, b)| (a - b) * (a - b)).sum();
    let w2sq = mean_sq + trace(s0) + trace(s1) - 2.0 * vals.iter().map(|l| l.sqrt()).sum::<f64>();
    w2sq.is_finite().then(|| w2sq.max(0.0).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::normals;

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    // ----- normal distribution -----

    #[test]
    fn erfc_and_norm_cdf_known_values() {
        // Reference values from mpmath (50 digits, rounded).
        let erfc_cases = [
            (0.0, 1.0),
            (0.25, 0.723_673_609_831_763_1),
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.157_299_207_050_285_13),
            (2.0, 4.677_734_981_047_266e-3),
            (3.0, 2.209_049_699_858_544e-5),
            (5.0, 1.537_459_794_428_034_8e-12),
            (10.0, 2.088_487_583_762_545e-45),
            (-1.0, 1.842_700_792_949_715),
        ];
        for (x, want) in erfc_cases {
            let got = erfc(x);
            assert!(rel(got, want) < 1e-14, "erfc({x}) = {got:e}, want {want:e}");
        }
        let cdf_cases = [
            (0.0, 0.5),
            (-1.0, 0.158_655_253_931_457_05),
            (1.959_963_984_540_054, 0.975),
            (-3.0, 1.349_898_031_630_094_6e-3),
            (-5.0, 2.866_515_718_791_939e-7),
            (-10.0, 7.619_853_024_160_527e-24),
            (0.3, 0.617_911_422_188_952_7),
        ];
        for (x, want) in cdf_cases {
            let got = norm_cdf(x);
            assert!(rel(got, want) < 1e-14, "Phi({x}) = {got:e}, want {want:e}");
        }
    }

    #[test]
    fn norm_cdf_matches_quadrature_of_the_density() {
        // Independent check: Phi(x) - 1/2 = int_0^x pdf, composite Simpson
        // with h = 1e-3 (error ~1e-15 for this smooth integrand).
        for &x in &[0.37f64, 1.0, 2.2, -1.7] {
            let steps = (x.abs() / 1e-3).round() as usize * 2;
            let h = x / steps as f64;
            let mut s = norm_pdf(0.0) + norm_pdf(x);
            for k in 1..steps {
                let w = if k % 2 == 1 { 4.0 } else { 2.0 };
                s += w * norm_pdf(k as f64 * h);
            }
            let integral = s * h / 3.0;
            let got = norm_cdf(x) - 0.5;
            assert!(
                (got - integral).abs() < 1e-13,
                "x = {x}: {got} vs {integral}"
            );
        }
    }

    #[test]
    fn norm_ppf_known_values_and_round_trip() {
        let cases = [
            (0.5, 0.0),
            (0.75, 0.674_489_750_196_081_7),
            (0.9, 1.281_551_565_544_600_5),
            (0.95, 1.644_853_626_951_472_2),
            (0.975, 1.959_963_984_540_054),
            (0.995, 2.575_829_303_548_900_4),
            (0.025, -1.959_963_984_540_054),
            (1e-10, -6.361_340_902_404_056),
        ];
        for (p, want) in cases {
            let got = norm_ppf(p);
            assert!(
                (got - want).abs() < 1e-12 * want.abs().max(1.0),
                "ppf({p}) = {got}, want {want}"
            );
        }
        for k in 1..2000 {
            let p = k as f64 / 2000.0;
            let x = norm_ppf(p);
            // Phi(x) - p, relative to the smaller tail, after one Halley step.
            let tail = p.min(1.0 - p);
            assert!(
                (norm_cdf(x) - p).abs() < 1e-14 * tail.max(1e-3) * 10.0,
                "p = {p}"
            );
        }
        for e in 2..300 {
            let p = 10f64.powi(-e);
            let x = norm_ppf(p);
            assert!(
                rel(norm_cdf(x), p) < 1e-12,
                "p = 1e-{e}: Phi(x) = {}",
                norm_cdf(x)
            );
        }
        assert_eq!(norm_ppf(0.0), f64::NEG_INFINITY);
        assert_eq!(norm_ppf(1.0), f64::INFINITY);
        assert!(norm_ppf(1.5).is_nan());
    }

    // ----- quantiles and ranks -----

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

    #[test]
    fn incomplete_gamma_and_chi2() {
        assert!((ln_gamma(0.5) - 0.572_364_942_924_700_1).abs() < 1e-14);
        assert!(ln_gamma(1.0).abs() < 1e-14 && ln_gamma(2.0).abs() < 1e-14);
        assert!(rel(ln_gamma(10.0), 362_880f64.ln()) < 1e-14);
        assert!(rel(ln_gamma(100.0), 359.134_205_369_575_4) < 1e-14);
        for &x in &[0.01, 0.5, 1.0, 3.0, 10.0, 40.0] {
            // Q(1, x) = exp(-x); Q(1/2, x) = erfc(sqrt x).
            assert!(rel(gamma_q(1.0, x), (-x).exp()) < 1e-13, "Q(1, {x})");
            assert!(rel(gamma_q(0.5, x), erfc(x.sqrt())) < 1e-12, "Q(1/2, {x})");
            // Integer a: Q(5, x) = exp(-x) sum_{k<5} x^k / k!.
            let mut term = 1.0;
            let mut sum = 0.0;
            for k in 0..5 {
                if k > 0 {
                    term *= x / k as f64;
                }
                sum += term;
            }
            let want = (-x).exp() * sum;
            assert!(
                rel(gamma_q(5.0, x), want) < 1e-12,
                "Q(5, {x}) = {} vs {want}",
                gamma_q(5.0, x)
            );
            assert!((gamma_p(5.0, x) + gamma_q(5.0, x) - 1.0).abs() < 1e-14);
        }
        // Upper 5 % points of chi-square with 1 and 10 degrees of freedom.
        assert!((chi2_sf(3.841_458_820_694_124, 1.0) - 0.05).abs() < 1e-12);
        assert!((chi2_sf(18.307_038_053_275_146, 10.0) - 0.05).abs() < 1e-12);
        assert_eq!(chi2_sf(0.0, 3.0), 1.0);
    }

    // ----- Gaussian divergences -----

    fn random_spd(seed: u64, d: usize) -> Vec<f64> {
        let b = normals(seed, 16, 0, d * d);
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

    #[test]
    fn jacobi_eigen_of_known_matrices() {
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
        let err = a
            .iter()
            .zip(&back)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-12, "reconstruction error {err}");
        let r = sqrtm_psd(&a, d).unwrap();
        let mut rr = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                rr[i * d + j] = (0..d).map(|k| r[i * d + k] * r[k * d + j]).sum();
            }
        }
        let err = a
            .iter()
            .zip(&rr)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-12, "sqrtm error {err}");
    }

    #[test]
    fn kl_closed_forms() {
        let d = 6;
        let s = random_spd(32, d);
        let m: Vec<f64> = normals(32, 17, 0, d);
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
        let mut diag0 = vec![0.0; d * d];
        let mut diag1 = vec![0.0; d * d];
        for i in 0..d {
            diag0[i * d + i] = v0[i];
            diag1[i * d + i] = v1[i];
        }
        let got = kl_gauss(&m, &diag0, &m1v, &diag1, d).unwrap();
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
        let m = normals(33, 17, 0, d);
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
        let eye = |v: &[f64]| {
            let mut s = vec![0.0; d * d];
            for i in 0..d {
                s[i * d + i] = v[i];
            }
            s
        };
        let got = w2_gauss(&m, &eye(&a), &m1, &eye(&b), d).unwrap();
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
        let sing = eye(&[1.0, 0.0, 1.0, 1.0, 0.0, 1.0]);
        assert!(w2_gauss(&m, &sing, &m, &eye(&[1.0; 6]), d).unwrap() > 0.0);
        assert!(w2_gauss(
            &[0.0; 2],
            &[1.0, 2.0, 2.0, 1.0],
            &[0.0; 2],
            &[1.0, 0.0, 0.0, 1.0],
            2
        )
        .is_none());
    }
}
