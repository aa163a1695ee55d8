// Observation operator P (point sensors at unknowns) and the Gaussian misfit.
//
// Bindings: 0 params (nsens = number of sensors S, noise_precision =
// 1 / sigma_n^2, per_system_data = 0: one data vector for all systems, 1:
// one per system),
// 1 sensors (S unknown indices), 2 data (S or B x S), 3 u (B x nunk),
// 4 adj (B x nunk, must be zero off the sensors), 5 misfit (B).

@group(0) @binding(1) var<storage, read> sensors: array<u32>;
@group(0) @binding(2) var<storage, read> data: array<f32>;
@group(0) @binding(3) var<storage, read> u: array<f32>;
@group(0) @binding(4) var<storage, read_write> adj: array<f32>;
@group(0) @binding(5) var<storage, read_write> misfit: array<f32>;

// e = y - P u; adj = P^T e * noise_precision (the adjoint right-hand side);
// misfit = 0.5 noise_precision |e|^2. Dispatch (B, 1, 1), one workgroup per system.
@compute @workgroup_size(WG)
fn obs_misfit(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x;
    let ns = P.nsens;
    var acc = 0.0;
    for (var s = lid; s < ns; s += WG) {
        let k = sensors[s];
        var yv = data[s];
        if (P.per_system_data == 1u) {
            yv = data[b * ns + s];
        }
        let e = yv - u[b * P.nunk + k];
        adj[b * P.nunk + k] = P.noise_precision * e;
        acc += e * e;
    }
    let s2 = wg_sum(acc, lid);
    if (lid == 0u) {
        misfit[b] = 0.5 * P.noise_precision * s2;
    }
}
