use pdevi::physics::problem::{Problem, ProblemKind};
use pdevi::physics::solver::{BatchedSolver, CgParams, Precond};
fn main() {
    let ctx = pdevi::GpuContext::new().unwrap();
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(64);
    let pb = Problem::new(ProblemKind::Darcy2d, n, 64).unwrap();
    let batch = 16;
    let xi = pdevi::rng::normals(7, 0, 0, batch * 64);
    for (precond, tol) in [
        (Precond::Jacobi, 1e-5),
        (Precond::Multigrid, 1e-5),
        (Precond::Multigrid, 0.99),
    ] {
        let cg = CgParams {
            rel_tol: tol,
            precond,
            ..Default::default()
        };
        let s = BatchedSolver::new(&ctx, &pb, batch, cg, None, false).unwrap();
        s.solve(&ctx, &xi).unwrap();
        let t = std::time::Instant::now();
        let mut it = 0;
        for _ in 0..5 {
            it = s.solve(&ctx, &xi).unwrap()[0].iters;
        }
        println!(
            "{precond:?} tol {tol}: {:.1} ms per batch solve, {it} iters, chunk {}",
            t.elapsed().as_secs_f64() * 200.0,
            s.params.chunk
        );
    }
}
