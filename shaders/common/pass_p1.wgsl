// The CG's operator pass for P1: ap = A p for system `sys` and the partial
// p^T ap of this invocation (a plain strided loop: the stencil is 3 wide).
//
// The including module provides vec_at(base, k) and store_at(idx, value).

fn op_pass(sys: u32, base: u32, abase: u32, lid: u32) -> f32 {
    var part = 0.0;
    for (var k = lid; k < P.nunk; k += WG) {
        let a = op_apply(sys, base, k);
        store_at(abase + k, a);
        part += a * vec_at(base, k);
    }
    return part;
}
