// Adam / AdamW on one flat parameter buffer (one dispatch per step), with
// bias correction and optional gradient-norm clipping (the host passes the
// clipping factor). Minimises: param -= lr * mhat / (sqrt(vhat) + eps).
//
// Bindings: 0 params, 1 grad, 2 param, 3 m, 4 v, 5 clip ([0] factor, [1] norm).

// Mirrors `AdamParams` in src/infer/adam.rs (tests/layout.rs checks).
struct AdamParams {
    n: u32,
    step: u32,          // 1-based
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,  // AdamW decoupled decay (0 = Adam)
    grad_scale: f32,    // multiplies the gradient
    clip_norm: f32,     // grad_clip: largest allowed gradient norm (0 = no clipping)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> A: AdamParams;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> m1: array<f32>;
@group(0) @binding(4) var<storage, read_write> m2: array<f32>;
@group(0) @binding(5) var<storage, read_write> clip: array<f32>;

fn adam_update(i: u32, g: f32) {
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

// Dispatch (ceil(n / 256), 1, 1).
@compute @workgroup_size(256)
fn adam_step(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= A.n) {
        return;
    }
    adam_update(i, grad[i] * A.grad_scale);
}

// The same, with the gradient also scaled by clip[0] (from grad_clip).
@compute @workgroup_size(256)
fn adam_step_clipped(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= A.n) {
        return;
    }
    adam_update(i, grad[i] * A.grad_scale * clip[0]);
}

var<workgroup> part: array<f32, 256>;

// clip[1] = |grad_scale * grad|, clip[0] = min(1, clip_norm / clip[1]) (1
// when clip_norm = 0). One workgroup: invocation l sums entries l, l + 256,
// ... in order, then a tree over the 256 partial sums. Dispatch (1, 1, 1).
@compute @workgroup_size(256)
fn grad_clip(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < A.n; i += 256u) {
        let g = grad[i] * A.grad_scale;
        acc += g * g;
    }
    part[lid] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            part[lid] += part[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let norm = sqrt(part[0]);
        var f = 1.0;
        if (A.clip_norm > 0.0 && norm > A.clip_norm) {
            f = A.clip_norm / norm;
        }
        clip[0] = f;
        clip[1] = norm;
    }
}
