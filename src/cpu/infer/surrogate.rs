//! f64 mirror of `shaders/infer/surrogate.wgsl`.

use crate::infer::surrogate::SurrogateParams;

/// Misfit of every sample row into `misfit[slot + s]` and its gradient with
/// respect to the outputs into `grad` (every column of the row written).
pub fn surrogate_misfit(
    p: &SurrogateParams,
    outputs: &[f64],
    obs: &[f64],
    col: &[u32],
    grad: &mut [f64],
    misfit: &mut [f64],
) {
    let (nobs, width) = (p.nobs as usize, p.width as usize);
    let sigma2 = p.sigma2 as f64;
    for s in 0..p.rows as usize {
        let base = s * width;
        grad[base..base + width].fill(0.0);
        let mut acc = 0.0;
        for j in 0..nobs {
            let c = col[j] as usize;
            let sd = obs[2 * nobs + j];
            let mu = obs[nobs + j] + sd * outputs[base + c];
            let r = obs[j] - mu;
            let mut v = sigma2;
            if p.has_lv == 1 {
                let lo = p.lv_off as usize;
                let ev = sd * sd * outputs[base + lo + c].exp();
                v += ev;
                acc += (v / sigma2).ln();
                grad[base + lo + c] += 0.5 * (1.0 / v - r * r / (v * v)) * ev;
            }
            acc += r * r / v;
            grad[base + c] += -r / v * sd;
        }
        misfit[p.slot as usize + s] = 0.5 * acc;
    }
}
