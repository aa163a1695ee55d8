// The Gaussian likelihood of a learned surrogate forward model (primer A3):
// for every sample row s, the network's standardised outputs o (and, with a
// variance head, log-variances lv) are mapped back to data units,
// mu_j = mean_j + sd_j o[s, col_j], and compared with the observations:
//   misfit_s = 0.5 sum_j (y_j - mu_j)^2 / v_j + 0.5 sum_j log(v_j / sigma^2),
//   v_j = sigma^2 (+ sd_j^2 exp(lv[s, col_j]) with the variance head),
// so the ELBO's log-normaliser is that of N(0, sigma^2) as for the solver.
// The gradient d misfit / d outputs fills every column of the row (zero
// where nothing is observed), ready for the MLP's backward pass.

// Mirrors `SurrogateParams` in src/infer/surrogate.rs (32 bytes; tests/layout.rs checks).
struct SurrogateParams {
    rows: u32,     // sample rows
    nobs: u32,     // observations
    width: u32,    // outputs per row (row stride)
    lv_off: u32,   // column offset of the log-variances (used when has_lv = 1)
    has_lv: u32,
    slot: u32,     // misfit of row s goes to misfit[slot + s]
    sigma2: f32,   // observation noise variance
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: SurrogateParams;
// Outputs, rows x width.
@group(0) @binding(1) var<storage, read> outputs: array<f32>;
// [y (nobs), mean of each observation's column (nobs), sd (nobs)].
@group(0) @binding(2) var<storage, read> obs: array<f32>;
// Output column of each observation.
@group(0) @binding(3) var<storage, read> col: array<u32>;
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;
@group(0) @binding(5) var<storage, read_write> misfit: array<f32>;

// One invocation per row. Dispatch (ceil(rows / 64), 1, 1).
@compute @workgroup_size(64)
fn surrogate_misfit(@builtin(global_invocation_id) gid: vec3<u32>) {
    let s = gid.x;
    if (s >= P.rows) {
        return;
    }
    let base = s * P.width;
    for (var c = 0u; c < P.width; c++) {
        grad[base + c] = 0.0;
    }
    var acc = 0.0;
    for (var j = 0u; j < P.nobs; j++) {
        let c = col[j];
        let sd = obs[2u * P.nobs + j];
        let mu = obs[P.nobs + j] + sd * outputs[base + c];
        let r = obs[j] - mu;
        var v = P.sigma2;
        var ev = 0.0;
        if (P.has_lv == 1u) {
            ev = sd * sd * exp(outputs[base + P.lv_off + c]);
            v += ev;
            acc += log(v / P.sigma2);
            grad[base + P.lv_off + c] += 0.5 * (1.0 / v - r * r / (v * v)) * ev;
        }
        acc += r * r / v;
        // Several observations may read one column (a field surrogate).
        grad[base + c] += -r / v * sd;
    }
    misfit[P.slot + s] = 0.5 * acc;
}
