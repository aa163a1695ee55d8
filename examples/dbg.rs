use pdevi::gpu::layout::CgState;
use pdevi::gpu::KernelId;
use pdevi::*;
fn main() {
    let ctx = GpuContext::new().unwrap();
    let n: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    let (nu, nc) = ((n - 1) * (n - 1), n * n);
    let coef = vec![1.0f32; nc];
    let rhs = vec![(1.0 / (n * n) as f64) as f32; nu];
    for chunk in [20u32, 50, 100, 200, 400, 10000] {
        let mut p = cpu::params(n, nu, nc, 1, 1);
        p.tol = 1e-5;
        p.max_iter = 100000;
        p.chunk = chunk;
        let bp = ctx.uniform("p", &p);
        let bc = ctx.upload("c", &coef).unwrap();
        let br = ctx.upload("r", &rhs).unwrap();
        let bx = ctx.storage("x", (nu * 4) as u64).unwrap();
        let bw = ctx.storage("w", (4 * nu * 4) as u64).unwrap();
        let bs = ctx.storage("s", 32).unwrap();
        let bufs = [&bp, &bc, &br, &bx, &bw, &bs];
        let run = |k| {
            let bg = ctx.bind(k, &bufs);
            let mut e = ctx.encoder("x");
            {
                let mut ps = e.begin_compute_pass(&Default::default());
                ctx.dispatch(&mut ps, k, &bg, [1, 1, 1]);
            }
            let t = std::time::Instant::now();
            ctx.submit_wait(e).unwrap();
            t.elapsed().as_secs_f64()
        };
        run(KernelId::CgStartQ1);
        let dt = run(KernelId::CgIterateQ1);
        let s: Vec<CgState> = ctx.read(&bs, 0, 1).unwrap();
        println!(
            "n {n} chunk {chunk}: {dt:.3}s it {} status {} rel {:.3e}",
            s[0].iters,
            s[0].status,
            (s[0].rnorm2 / s[0].bnorm2).sqrt()
        );
    }
}
