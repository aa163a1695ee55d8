//! The multigrid design study (issue 11), on the f64 reference: CG
//! iterations to a relative residual of 1e-5 on darcy2d prior draws, for
//! Jacobi-PCG and multigrid-PCG (Galerkin or rediscretised coarse
//! operators, 1 or 2 Jacobi sweeps), at several grid sizes and coefficient
//! contrasts (kappa = exp(c z), c = 1 is the prior). One JSON line per row.
//!
//!     cargo run --release --example multigrid_study

use pdevi::cpu::multigrid::{mg_pcg, Coarsening, MgSettings};
use pdevi::cpu::physics as cpu;
use pdevi::physics::problem::{Problem, ProblemKind};

fn main() {
    for n in [32usize, 64, 128, 256] {
        let pb = Problem::new(ProblemKind::Darcy2d, n, 64).expect("problem");
        for contrast in [1.0f64, 3.0] {
            for seed in [1u64, 2, 3] {
                let z = pb.field(&pdevi::rng::normals(seed, 0, 0, 64));
                let kappa: Vec<f64> = z.iter().map(|v| (contrast * v).exp()).collect();
                let (kmin, kmax) = kappa
                    .iter()
                    .fold((f64::INFINITY, 0.0f64), |(a, b), &k| (a.min(k), b.max(k)));
                let nu = (n - 1) * (n - 1);
                let h = 1.0 / n as f64;
                let rhs = vec![h * h; nu];
                let mut p = pdevi::gpu::layout::PdeParams::new(n, nu, n * n, 1, 1);
                p.max_iter = 100_000;
                let mut x = vec![0.0; nu];
                let mut work = vec![0.0; 4 * nu];
                let mut st = [cpu::CgState::default()];
                cpu::cg_solve_tol(
                    cpu::Op::Q1,
                    &p,
                    1e-5,
                    &kappa,
                    &rhs,
                    &mut x,
                    &mut work,
                    &mut st,
                );
                let mut row = serde_json::json!({
                    "n": n, "contrast": contrast, "seed": seed,
                    "kappa_ratio": kmax / kmin, "jacobi_pcg": st[0].iters,
                });
                for coarsening in [Coarsening::Galerkin, Coarsening::Rediscretise] {
                    for sweeps in [1usize, 2] {
                        let s = MgSettings {
                            coarsening,
                            sweeps,
                            ..Default::default()
                        };
                        let r = mg_pcg(n, &kappa, &rhs, 1e-5, 500, s);
                        let key = format!("mg_{coarsening:?}_{sweeps}").to_lowercase();
                        row[key] = if r.converged {
                            r.iters.into()
                        } else {
                            serde_json::Value::Null
                        };
                    }
                }
                println!("{row}");
            }
        }
    }
}
