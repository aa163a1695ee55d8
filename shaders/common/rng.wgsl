// Philox4x32-10 counter-based random numbers and Box-Muller normals.
// Bit-identical to `philox4x32` in src/rng.rs (the normals differ only by
// f32 rounding of log/cos).

fn mulhilo(a: u32, b: u32) -> vec2<u32> {
    // 32 x 32 -> 64-bit product from 16-bit halves (WGSL has no u64).
    let al = a & 0xffffu;
    let ah = a >> 16u;
    let bl = b & 0xffffu;
    let bh = b >> 16u;
    let ll = al * bl;
    let hl = ah * bl;
    let lh = al * bh;
    let hh = ah * bh;
    let cross = (ll >> 16u) + (hl & 0xffffu) + (lh & 0xffffu);
    let hi = hh + (hl >> 16u) + (lh >> 16u) + (cross >> 16u);
    return vec2<u32>(hi, a * b);
}

fn philox4x32(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var r = 0u; r < 10u; r++) {
        if (r > 0u) {
            k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
        }
        let p0 = mulhilo(0xD2511F53u, c.x);
        let p1 = mulhilo(0xCD9E8D57u, c.z);
        c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
    }
    return c;
}

fn to_unit(x: u32) -> f32 {
    return (f32(x >> 8u) + 0.5) / 16777216.0;
}

// Four standard normals of (seed, stream, step, block), as `normal4` in src/rng.rs.
fn normal4(seed: vec2<u32>, stream: u32, step: u32, block: u32) -> vec4<f32> {
    let r = philox4x32(vec4<u32>(block, stream, step, 0x70646576u), seed);
    let tau = 6.283185307179586;
    let ra = sqrt(-2.0 * log(to_unit(r.x)));
    let rb = sqrt(-2.0 * log(to_unit(r.z)));
    let ta = tau * to_unit(r.y);
    let tb = tau * to_unit(r.w);
    return vec4<f32>(ra * cos(ta), ra * sin(ta), rb * cos(tb), rb * sin(tb));
}
