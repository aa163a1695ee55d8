// Adam / AdamW on one flat parameter buffer (one dispatch per step), with
// bias correction and optional gradient-norm clipping (the host passes the
// clipping factor). Minimises: param -= lr * mhat / (sqrt(vhat) + eps).
//
// Bindings: 0 params, 1 grad, 2 param, 3 m, 4 v.

// Keep in sync with `AdamParams` in src/optim.rs.
struct AdamParams {
    n: u32,
    step: u32,          // 1-based
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,  // AdamW decoupled decay (0 = Adam)
    grad_scale: f32,    // multiplies the gradient (clipping factor)
}

@group(0) @binding(0) var<uniform> A: AdamParams;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> m1: array<f32>;
@group(0) @binding(4) var<storage, read_write> m2: array<f32>;

// Dispatch (ceil(n / 256), 1, 1).
@compute @workgroup_size(256)
fn adam_step(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= A.n) {
        return;
    }
    let g = grad[i] * A.grad_scale;
    let m = A.beta1 * m1[i] + (1.0 - A.beta1) * g;
    let v = A.beta2 * m2[i] + (1.0 - A.beta2) * g * g;
    m1[i] = m;
    m2[i] = v;
    let t = f32(A.step);
    let mhat = m / (1.0 - pow(A.beta1, t));
    let vhat = v / (1.0 - pow(A.beta2, t));
    var p = param[i];
    p -= A.lr * A.weight_decay * p;
    p -= A.lr * mhat / (sqrt(vhat) + A.eps);
    param[i] = p;
}
