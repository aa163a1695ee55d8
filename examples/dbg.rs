use pdevi::*;
fn main() {
    let ctx = GpuContext::new().unwrap();
    let pb = Problem::new(ProblemKind::Poisson1d, 128, 32).unwrap();
    let cg = solver::CgParams { rel_tol: 1e-6, direct_1d: true, ..Default::default() };
    let s = solver::BatchedSolver::new(&ctx, &pb, 4, cg, None, false).unwrap();
    let xi = rng::normals(1, 1, 0, 4 * pb.d);
    s.set_data(&ctx, &vec![0.1; 15]).unwrap();
    let info = s.solve(&ctx, &xi).unwrap();
    println!("solve: {:?}", info[0]);
    let (_, _, f, a) = s.misfit_gradient(&ctx, &xi).unwrap();
    println!("grad: fwd {:?} adj {:?}", f[0], a[0]);
}
