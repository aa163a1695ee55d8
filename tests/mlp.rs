//! MLPs: every kernel against its f64 mirror (odd sizes, batch 1, wide and
//! narrow layers), whole-network gradients against central differences and
//! GPU against CPU for every activation, Gaussian heads through the VI
//! kernels, two small learning problems, and weights on disk.

mod common;

use common::{assert_close, ctx, read, run, upload, Rng};
use pdevi::cpu::{infer::vi as cvi, nn::mlp as cm};
use pdevi::gpu::KernelId;
use pdevi::infer::adam::AdamParams;
use pdevi::infer::vi::Family;
use pdevi::nn::mlp::{self, Activation, Arch, Head, Layer, Loss, Mlp, MlpParams, Workspace};
use pdevi::nn::train::{self, Dataset, TrainSettings};

/// (m, k, n): batch 1, tile-aligned, odd, wide and narrow.
const SHAPES: &[(u32, u32, u32)] = &[
    (1, 1, 1),
    (1, 49, 256),
    (64, 64, 64),
    (65, 33, 17),
    (3, 200, 5),
    // One and three columns (matmul_thin).
    (300, 37, 1),
    (70, 2, 3),
    (70, 130, 190),
    (129, 7, 1),
];

#[test]
fn matmul_matches_cpu_in_the_three_backprop_shapes() {
    let ctx = ctx();
    let mut rng = Rng::new(11);
    for &(m, k, n) in SHAPES {
        // 0: A B (+ bias, activation, stored pre-activation), 1: A^T B, 2: A B^T.
        for shape in 0..3 {
            let act = Activation::ALL[(m + k + n + shape) as usize % 6];
            let (a_rs, a_cs) = if shape == 1 { (1, m) } else { (k, 1) };
            let (b_rs, b_cs) = if shape == 2 { (1, k) } else { (n, 1) };
            let a_off = 3;
            let b_off = 5;
            let bias_off = b_off + k * n + 2;
            let p = MlpParams {
                m,
                n,
                k,
                act: if shape == 0 { act.code() } else { 0 },
                a_off,
                a_rs,
                a_cs,
                b_off,
                b_rs,
                b_cs,
                c_off: 4,
                c_rs: n + 1,
                bias_off,
                flags: if shape == 0 { 3 } else { 0 },
                ..Default::default()
            };
            let a = rng.vec_uniform((a_off + m * k) as usize, -1.0, 1.0);
            let b = rng.vec_uniform((bias_off + n) as usize, -1.0, 1.0);
            let clen = (4 + m * (n + 1)) as usize;
            let c0 = rng.vec_uniform(clen, -1.0, 1.0);
            let mut c = c0.clone();
            let mut z = c0.clone();
            cm::matmul(&p, &a, &b, &mut c, &mut z);
            let (ba, bb, bc, bz) = (
                upload(ctx, "a", &a),
                upload(ctx, "b", &b),
                upload(ctx, "c", &c0),
                upload(ctx, "z", &c0),
            );
            let u = ctx.uniform("p", &p);
            // Both products run on every device (each is the default somewhere).
            // And the thin product wherever it applies.
            let thin = (n <= 4).then_some(KernelId::MatmulThin);
            for kernel in [KernelId::Matmul, KernelId::MatmulBlocked]
                .into_iter()
                .chain(thin)
            {
                ctx.write(&bc, &common::f32s(&c0));
                ctx.write(&bz, &common::f32s(&c0));
                let dims = if kernel == KernelId::MatmulThin {
                    [p.m as usize, 1]
                } else {
                    [p.n as usize, p.m as usize]
                };
                run(ctx, kernel, &[&u, &ba, &bb, &bc, &bz], dims);
                let tol = 2e-6 * (k as f64).sqrt();
                let name = format!("{kernel:?} m{m} k{k} n{n} shape {shape} {}", act.name());
                assert_close(&name, &read(ctx, &bc, clen), &c, tol, 1e-4);
                if shape == 0 {
                    assert_close(&format!("{name} z"), &read(ctx, &bz, clen), &z, tol, 1e-4);
                }
            }
        }
    }
}

#[test]
fn elementwise_losses_and_gather_match_cpu() {
    let ctx = ctx();
    let mut rng = Rng::new(12);
    let (m, n) = (37u32, 5u32);
    // Activation derivatives, over a range that reaches the saturated parts.
    for act in Activation::ALL {
        let p = MlpParams {
            m,
            n,
            act: act.code(),
            a_off: 2,
            a_rs: n + 3,
            c_off: 1,
            c_rs: n,
            ..Default::default()
        };
        let za = rng.vec_uniform((2 + m * (n + 3)) as usize, -30.0, 30.0);
        let mut zz: Vec<f64> = za.iter().map(|v| v / 6.0).collect();
        zz[2] = 0.0;
        let d0 = rng.vec_uniform((1 + m * n) as usize, -1.0, 1.0);
        let mut d = d0.clone();
        cm::act_backward(&p, &zz, &mut d);
        let (bz, bd) = (upload(ctx, "z", &zz), upload(ctx, "d", &d0));
        let u = ctx.uniform("p", &p);
        run(
            ctx,
            KernelId::ActBackward,
            &[&u, &bz, &bd],
            [(m * n) as usize, 1],
        );
        assert_close(
            &format!("act_backward {}", act.name()),
            &read(ctx, &bd, d.len()),
            &d,
            1e-6,
            1e-5,
        );
    }
    // Bias gradient.
    let p = MlpParams {
        m,
        n,
        a_off: 3,
        a_rs: n,
        c_off: 2,
        ..Default::default()
    };
    let x = rng.vec_uniform((3 + m * n) as usize, -1.0, 1.0);
    let mut g = vec![0.0; (2 + n) as usize];
    cm::bias_grad(&p, &x, &mut g);
    let (bx, bg) = (upload(ctx, "x", &x), upload(ctx, "g", &vec![0.0; g.len()]));
    let u = ctx.uniform("p", &p);
    run(ctx, KernelId::BiasGrad, &[&u, &bx, &bg], [n as usize, 1]);
    assert_close(
        "bias_grad",
        &read(ctx, &bg, g.len())[2..],
        &g[2..],
        1e-5,
        1e-5,
    );

    // Losses and their reduction.
    for (kernel, width) in [
        (KernelId::LossMse, n),
        (KernelId::LossGaussNll, 2 * n),
        (KernelId::LossBce, n),
    ] {
        let p = MlpParams {
            m,
            n,
            a_rs: width,
            b_rs: n,
            c_rs: width,
            scale: 1.0 / (m * n) as f32,
            ..Default::default()
        };
        let y = rng.vec_uniform((m * width) as usize, -2.0, 2.0);
        let t = rng.vec_uniform((m * n) as usize, -2.0, 2.0);
        let mut gr = vec![0.0; y.len()];
        let mut losses = vec![0.0; 16 + m as usize];
        losses[1] = 0.25;
        let l0 = losses.clone();
        match kernel {
            KernelId::LossMse => cm::loss_mse(&p, &y, &t, &mut gr, &mut losses),
            KernelId::LossBce => cm::loss_bce(&p, &y, &t, &mut gr, &mut losses),
            _ => cm::loss_gauss_nll(&p, &y, &t, &mut gr, &mut losses),
        }
        let r = MlpParams {
            m,
            scale: 0.5,
            slot: 1,
            flags: 1,
            ..Default::default()
        };
        cm::loss_reduce(&r, &mut losses);
        let (by, bt, bgr, bl) = (
            upload(ctx, "y", &y),
            upload(ctx, "t", &t),
            upload(ctx, "g", &vec![0.0; gr.len()]),
            upload(ctx, "l", &l0),
        );
        let u = ctx.uniform("p", &p);
        run(ctx, kernel, &[&u, &by, &bt, &bgr, &bl], [p.m as usize, 1]);
        let ur = ctx.uniform("r", &r);
        run(ctx, KernelId::LossReduce, &[&ur, &bl], [1, 1]);
        let name = format!("{kernel:?}");
        assert_close(&name, &read(ctx, &bgr, gr.len()), &gr, 1e-6, 1e-5);
        assert_close(&name, &read(ctx, &bl, losses.len()), &losses, 1e-5, 1e-5);
    }

    // Gather.
    let rows = 50u32;
    let idx: Vec<u32> = pdevi::rng::permutation(3, 6, 0, rows as usize);
    let p = MlpParams {
        m: 9,
        n: 3,
        k: 7,
        c_off: 0,
        ..Default::default()
    };
    // Exactly representable in f32: a gather copies, so the match is exact.
    let src: Vec<f64> = rng
        .vec_uniform((rows * 3) as usize, -1.0, 1.0)
        .iter()
        .map(|&v| v as f32 as f64)
        .collect();
    let mut dst = vec![0.0; 27];
    cm::gather_rows(&p, &src, &mut dst, &idx);
    let bsrc = upload(ctx, "src", &src);
    let bidx = ctx.upload("idx", &idx).unwrap();
    let bdst = upload(ctx, "dst", &vec![0.0; 27]);
    let u = ctx.uniform("p", &p);
    run(
        ctx,
        KernelId::GatherRows,
        &[&u, &bsrc, &bdst, &bidx],
        [27, 1],
    );
    assert_close("gather_rows", &read(ctx, &bdst, 27), &dst, 0.0, 0.0);
}

#[test]
fn grad_clip_and_adamw_match_cpu() {
    let ctx = ctx();
    let mut rng = Rng::new(13);
    let n = 1000;
    for clip_norm in [0.0f32, 0.5, 1e6] {
        let mut a = AdamParams::new(n, 0.01);
        a.step = 3;
        a.weight_decay = 0.1;
        a.grad_scale = 0.7;
        a.clip_norm = clip_norm;
        let g = rng.vec_uniform(n, -0.1, 0.1);
        let p0 = rng.vec_uniform(n, -1.0, 1.0);
        let m0 = rng.vec_uniform(n, -0.01, 0.01);
        let v0 = rng.vec_uniform(n, 0.0, 0.01);
        let (mut p, mut m1, mut m2, mut clip) = (p0.clone(), m0.clone(), v0.clone(), vec![0.0; 2]);
        cvi::grad_clip(&a, &g, &mut clip);
        cvi::adam_step_clipped(&a, &g, &mut p, &mut m1, &mut m2, &clip);
        let u = ctx.uniform("a", &a);
        let (bg, bp, bm, bv, bc) = (
            upload(ctx, "g", &g),
            upload(ctx, "p", &p0),
            upload(ctx, "m", &m0),
            upload(ctx, "v", &v0),
            upload(ctx, "c", &[0.0, 0.0]),
        );
        run(ctx, KernelId::GradClip, &[&u, &bg, &bc], [1, 1]);
        run(
            ctx,
            KernelId::AdamStepClipped,
            &[&u, &bg, &bp, &bm, &bv, &bc],
            [n, 1],
        );
        let name = format!("clip {clip_norm}");
        assert_close(&name, &read(ctx, &bc, 2), &clip, 1e-6, 1e-5);
        if clip_norm == 0.5 {
            assert!(clip[0] < 0.5, "the 0.5 case must clip (factor {})", clip[0]);
        }
        assert_close(&name, &read(ctx, &bp, n), &p, 1e-6, 1e-5);
        assert_close(&name, &read(ctx, &bm, n), &m1, 1e-7, 1e-5);
        assert_close(&name, &read(ctx, &bv, n), &m2, 1e-9, 1e-5);
    }
}

fn mse_loss_cpu(arch: &Arch, p: &[f64], x: &[f64], t: &[f64], batch: usize) -> f64 {
    let tr = cm::forward(arch, p, x, batch);
    let y = &tr.a[arch.layers.len()];
    y.iter().zip(t).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / y.len() as f64
}

/// The mirror's gradients of the mean squared error: (parameters, input).
fn mse_gradients_cpu(
    arch: &Arch,
    p: &[f64],
    x: &[f64],
    t: &[f64],
    batch: usize,
) -> (Vec<f64>, Vec<f64>) {
    let tr = cm::forward(arch, p, x, batch);
    let y = &tr.a[arch.layers.len()];
    let dy: Vec<f64> = y
        .iter()
        .zip(t)
        .map(|(a, b)| 2.0 * (a - b) / y.len() as f64)
        .collect();
    cm::backward(arch, p, &tr, &dy, batch)
}

/// Forward, loss and backward of one batch on the GPU: (loss, grad, dx, output).
fn gpu_pass(net: &Mlp, ws: &Workspace, x: &[f64], t: &[f64]) -> (f64, Vec<f64>, Vec<f64>) {
    let ctx = ctx();
    ws.set_input(ctx, x).unwrap();
    ws.set_targets(ctx, t).unwrap();
    let mut enc = ctx.encoder("test.pass");
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        ws.encode_forward(&mut pass);
        ws.encode_loss(&mut pass);
        ws.encode_backward(&mut pass, true);
    }
    ctx.submit_wait(enc).unwrap();
    (
        ws.read_loss(ctx, mlp::slot::EVAL).unwrap(),
        net.read_grad(ctx).unwrap(),
        read(ctx, &ws.dx, x.len()),
    )
}

#[test]
fn network_gradients_match_finite_differences_and_gpu_for_every_activation() {
    let ctx = ctx();
    let mut rng = Rng::new(14);
    let batch = 7;
    for act in Activation::ALL {
        let arch = Arch::mlp(3, &[9, 6], act, 2);
        let p = arch.init(5);
        let x = rng.vec_uniform(batch * 3, -1.5, 1.5);
        let t = rng.vec_uniform(batch * 2, -1.0, 1.0);
        // CPU mirror: backward against central differences.
        let (g, dx) = mse_gradients_cpu(&arch, &p, &x, &t, batch);
        let h = 1e-6;
        let mut worst: f64 = 0.0;
        for i in 0..p.len() {
            let (mut pp, mut pm) = (p.clone(), p.clone());
            pp[i] += h;
            pm[i] -= h;
            let fd = (mse_loss_cpu(&arch, &pp, &x, &t, batch)
                - mse_loss_cpu(&arch, &pm, &x, &t, batch))
                / (2.0 * h);
            let err = (fd - g[i]).abs() / (g[i].abs().max(1e-3));
            worst = worst.max(err);
        }
        assert!(
            worst < 1e-5,
            "{}: parameter gradient vs FD rel err {worst:.2e}",
            act.name()
        );
        for i in 0..x.len() {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h;
            xm[i] -= h;
            let fd = (mse_loss_cpu(&arch, &p, &xp, &t, batch)
                - mse_loss_cpu(&arch, &p, &xm, &t, batch))
                / (2.0 * h);
            assert!(
                (fd - dx[i]).abs() <= 1e-6 + 1e-5 * fd.abs(),
                "{}: input gradient [{i}] {} vs FD {fd}",
                act.name(),
                dx[i]
            );
        }
        // GPU against the mirror.
        let net = Mlp::new(ctx, arch.clone(), Some(&p), 0).unwrap();
        let ws = Workspace::new(ctx, &net, batch, Loss::Mse).unwrap();
        let (loss, gg, gdx) = gpu_pass(&net, &ws, &x, &t);
        let lc = mse_loss_cpu(&arch, &p, &x, &t, batch);
        assert!(
            (loss - lc).abs() < 1e-5 * lc.abs() + 1e-7,
            "{}: loss {loss} vs {lc}",
            act.name()
        );
        let gmax = g.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        assert_close(&format!("{} grad", act.name()), &gg, &g, 2e-5 * gmax, 1e-3);
        assert_close(&format!("{} dx", act.name()), &gdx, &dx, 1e-6, 1e-3);
    }
}

#[test]
fn chunked_parameter_gradients_match_cpu() {
    let ctx = ctx();
    let mut rng = Rng::new(21);
    // The kernels: a chunk cut short, offsets and strides wider than the
    // layer.
    let (m, n, k, chunk) = (3u32, 5u32, 2500u32, 1024u32);
    let p = MlpParams {
        m,
        n,
        k,
        a_off: 2,
        a_rs: m + 1,
        b_off: 1,
        b_rs: n + 2,
        slot: chunk,
        ..Default::default()
    };
    let xa = rng.vec_uniform((2 + k * (m + 1)) as usize, -1.0, 1.0);
    let xb = rng.vec_uniform((1 + k * (n + 2)) as usize, -1.0, 1.0);
    let per = (m * n + n) as usize;
    let chunks = k.div_ceil(chunk) as usize;
    let mut part = vec![0.0; chunks * per];
    cm::grad_rows(&p, &xa, &xb, &mut part);
    let (ba, bb, bp) = (
        upload(ctx, "a", &xa),
        upload(ctx, "b", &xb),
        upload(ctx, "part", &vec![0.0; part.len()]),
    );
    let u = ctx.uniform("p", &p);
    run(ctx, KernelId::GradRows, &[&u, &ba, &bb, &bp], [per, chunks]);
    assert_close("grad_rows", &read(ctx, &bp, part.len()), &part, 1e-4, 1e-4);
    let s = MlpParams {
        m: per as u32,
        k: chunks as u32,
        c_off: 3,
        ..Default::default()
    };
    let mut g = vec![0.0; 3 + per];
    cm::grad_sum(&s, &part, &mut g);
    let bg = upload(ctx, "g", &vec![0.0; g.len()]);
    let u = ctx.uniform("s", &s);
    run(ctx, KernelId::GradSum, &[&u, &bp, &bg], [per, 1]);
    assert_close(
        "grad_sum",
        &read(ctx, &bg, g.len())[3..],
        &g[3..],
        1e-4,
        1e-4,
    );
    // A whole network at a batch that takes the chunked path (and one
    // output column, the thin product), against the mirror.
    let batch = mlp::GRAD_SPLIT_ROWS + 777;
    let arch = Arch::mlp(1, &[8], Activation::Tanh, 1);
    let p = arch.init(3);
    let x = rng.vec_uniform(batch, -1.5, 1.5);
    let t = rng.vec_uniform(batch, -1.0, 1.0);
    let (g, dx) = mse_gradients_cpu(&arch, &p, &x, &t, batch);
    let net = Mlp::new(ctx, arch.clone(), Some(&p), 0).unwrap();
    let ws = Workspace::new(ctx, &net, batch, Loss::Mse).unwrap();
    let (_, gg, gdx) = gpu_pass(&net, &ws, &x, &t);
    let gmax = g.iter().fold(0.0f64, |a, b| a.max(b.abs()));
    assert_close("chunked grad", &gg, &g, 1e-4 * gmax, 1e-3);
    let dmax = dx.iter().fold(0.0f64, |a, b| a.max(b.abs()));
    assert_close("chunked dx", &gdx, &dx, 1e-4 * dmax, 1e-3);
}

#[test]
fn gaussian_heads_use_the_vi_kernels_and_match_cpu() {
    let ctx = ctx();
    let mut rng = Rng::new(15);
    let (batch, d) = (5usize, 4usize);
    for (family, fname, rank) in [
        (Family::MeanField, "mean-field", 0),
        (Family::FullRank, "full-rank", 0),
        (Family::LowRank { rank: 2 }, "low-rank", 2),
    ] {
        let np = family.nparam(d);
        let arch = Arch {
            input: 3,
            layers: vec![
                Layer {
                    out: 8,
                    act: Activation::Tanh,
                },
                Layer {
                    out: np,
                    act: Activation::Identity,
                },
            ],
            head: Head::Gaussian {
                family: fname.into(),
                d,
                rank,
            },
        };
        let mut p = arch.init(2);
        for v in p.iter_mut() {
            *v *= 0.5;
        }
        let net = Mlp::new(ctx, arch.clone(), Some(&p), 0).unwrap();
        let ws = Workspace::new(ctx, &net, batch, Loss::External).unwrap();
        let mut head = mlp::GaussianHead::new(ctx, &net, &ws, 9, 0.7).unwrap();
        head.set_step(ctx, 4);
        let x = rng.vec_uniform(batch * 3, -1.0, 1.0);
        let gxi = rng.vec_uniform(batch * d, -1.0, 1.0);
        ws.set_input(ctx, &x).unwrap();
        ctx.write(&head.gxi, &common::f32s(&gxi));
        let mut enc = ctx.encoder("test.head");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            ws.encode_forward(&mut pass);
            head.encode_sample(&mut pass);
            head.encode_backward(&mut pass);
        }
        ctx.submit_wait(enc).unwrap();
        // CPU: the same VI mirrors, row by row.
        let theta = read(ctx, ws.output(), batch * np);
        let v = head.vi_params();
        let mut eps = vec![0.0; batch * family.noise_dim(d)];
        cvi::vi_noise(&v, &mut eps);
        let mut xi = vec![0.0; batch * d];
        cvi::vi_sample(&v, &theta, &eps, &mut xi);
        let mut grad = vec![0.0; batch * np];
        let mut kl = vec![0.0; batch];
        cvi::vi_kl(&v, &theta, &mut grad, &mut kl);
        cvi::vi_grad(&v, &theta, &eps, &gxi, &mut grad);
        // Per row, the KL is the family's closed form for that row's theta.
        for (r, klr) in kl.iter().enumerate() {
            let (m, cov) = family.moments(d, &theta[r * np..(r + 1) * np]);
            let tr: f64 = (0..d).map(|i| cov[i * d + i]).sum();
            let mm: f64 = m.iter().map(|a| a * a).sum();
            let (_, ld) = pdevi::math::linalg::spd_inverse(&cov, d).unwrap();
            let want = 0.5 * (tr + mm - d as f64 - ld);
            assert!(
                (klr - want).abs() < 1e-9,
                "{fname} row {r}: kl {klr} vs {want}"
            );
        }
        assert_close(
            &format!("{fname} xi"),
            &read(ctx, &head.xi, xi.len()),
            &xi,
            1e-5,
            1e-4,
        );
        assert_close(
            &format!("{fname} kl"),
            &read(ctx, &head.kl, batch),
            &kl,
            1e-5,
            1e-4,
        );
        assert_close(
            &format!("{fname} output grad"),
            &read(ctx, ws.output_grad(), grad.len()),
            &grad,
            1e-5,
            1e-4,
        );
    }
}

#[test]
fn mlp_learns_a_smooth_2d_function() {
    let ctx = ctx();
    let f =
        |x: f64, y: f64| (std::f64::consts::PI * x).sin() * (0.5 * std::f64::consts::PI * y).cos();
    let grid = 40;
    let mut xs = Vec::new();
    let mut ts = Vec::new();
    let mut rng = Rng::new(16);
    for _ in 0..grid * grid {
        let (a, b) = (rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0));
        xs.extend([a, b]);
        ts.push(f(a, b));
    }
    let data = Dataset::new(xs, ts, 2, 1).unwrap();
    let (tr, val) = data.split(320).unwrap();
    let arch = Arch::mlp(2, &[32, 32], Activation::Tanh, 1);
    let mut net = Mlp::new(ctx, arch, None, 1).unwrap();
    let s = TrainSettings {
        epochs: 150,
        batch: 64,
        lr: 1e-2,
        lr_final: 0.05,
        seed: 3,
        patience: 40,
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let rep = train::train(ctx, &mut net, &tr, Some(&val), &s).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let val_mse = train::evaluate(ctx, &net, &val, Loss::Mse).unwrap();
    // Independent check on a fresh grid, through predict.
    let ws = Workspace::new(ctx, &net, 100, Loss::Mse).unwrap();
    let mut x = Vec::new();
    let mut want = Vec::new();
    for i in 0..10 {
        for j in 0..10 {
            let (a, b) = (-0.9 + 0.2 * i as f64, -0.9 + 0.2 * j as f64);
            x.extend([a, b]);
            want.push(f(a, b));
        }
    }
    let y = ws.predict(ctx, &x).unwrap();
    let max_err = y
        .iter()
        .zip(&want)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    eprintln!(
        "smooth 2-D fit: {} epochs, {:.1} s, {:.0} samples/s, val MSE {val_mse:.2e}, max error on grid {max_err:.3}",
        rep.epochs, secs, rep.samples_per_s
    );
    assert!(val_mse < 1e-3, "validation MSE {val_mse}");
    assert!(max_err < 0.08, "max error on the grid {max_err}");
    assert!(rep.train_loss[rep.train_loss.len() - 1] < rep.train_loss[0] * 0.05);
}

#[test]
fn gaussian_head_learns_a_heteroscedastic_noise_level() {
    let ctx = ctx();
    let sd = |x: f64| 0.05 + 0.25 * (x + 1.0) / 2.0;
    let mean = |x: f64| (2.0 * x).sin();
    let n = 4000;
    let mut rng = Rng::new(17);
    let mut xs = Vec::new();
    let mut ts = Vec::new();
    for _ in 0..n {
        let x = rng.uniform(-1.0, 1.0);
        xs.push(x);
        ts.push(mean(x) + sd(x) * rng.normal());
    }
    let data = Dataset::new(xs, ts, 1, 1).unwrap();
    let (tr, val) = data.split(500).unwrap();
    let mut arch = Arch::mlp(1, &[32, 32], Activation::Silu, 2);
    arch.head = Head::MeanLogvar { dim: 1 };
    let mut net = Mlp::new(ctx, arch, None, 2).unwrap();
    let s = TrainSettings {
        loss: Loss::GaussNll,
        epochs: 60,
        batch: 100,
        lr: 5e-3,
        lr_final: 0.1,
        clip_norm: 10.0,
        seed: 4,
        ..Default::default()
    };
    let rep = train::train(ctx, &mut net, &tr, Some(&val), &s).unwrap();
    let ws = Workspace::new(ctx, &net, 9, Loss::External).unwrap();
    let x: Vec<f64> = (0..9).map(|i| -0.8 + 0.2 * i as f64).collect();
    let y = ws.predict(ctx, &x).unwrap();
    let mut worst: f64 = 0.0;
    for (i, &xi) in x.iter().enumerate() {
        let (mu, lv) = (y[2 * i], y[2 * i + 1]);
        let s_hat = (0.5 * lv).exp();
        let rel = (s_hat / sd(xi) - 1.0).abs();
        eprintln!(
            "x {xi:+.1}: mean {mu:+.3} (true {:+.3}), sd {s_hat:.3} (true {:.3})",
            mean(xi),
            sd(xi)
        );
        assert!(
            (mu - mean(xi)).abs() < 0.05,
            "mean at {xi}: {mu} vs {}",
            mean(xi)
        );
        worst = worst.max(rel);
    }
    eprintln!(
        "heteroscedastic fit: {} epochs, {:.1} s, worst relative sd error {worst:.3}",
        rep.epochs, rep.seconds
    );
    assert!(
        worst < 0.25,
        "worst relative error of the predicted sd {worst}"
    );
}

#[test]
fn weights_round_trip_through_safetensors_and_mismatches_are_refused() {
    let ctx = ctx();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mlp_weights");
    let _ = std::fs::remove_dir_all(&dir);
    let mut arch = Arch::mlp(4, &[16, 8], Activation::Gelu, 6);
    arch.head = Head::MeanLogvar { dim: 3 };
    let net = Mlp::new(ctx, arch.clone(), None, 7).unwrap();
    let (st, js) = net.save(ctx, &dir.join("enc")).unwrap();
    assert!(st.ends_with("enc.safetensors") && js.ends_with("enc.json"));
    let back = Mlp::load(ctx, &st).unwrap();
    assert_eq!(back.arch, arch);
    let x = Rng::new(18).vec_uniform(5 * 4, -1.0, 1.0);
    let y0 = Workspace::new(ctx, &net, 5, Loss::External)
        .unwrap()
        .predict(ctx, &x)
        .unwrap();
    let y1 = Workspace::new(ctx, &back, 5, Loss::External)
        .unwrap()
        .predict(ctx, &x)
        .unwrap();
    assert_eq!(y0, y1, "outputs differ after save and load");

    // Another architecture beside the same weights: refused, naming the tensor.
    let mut other = arch.clone();
    other.layers[0].out = 12;
    std::fs::write(&js, serde_json::to_string(&other).unwrap()).unwrap();
    let err = Mlp::load(ctx, &st)
        .err()
        .expect("a mismatched architecture must fail")
        .to_string();
    assert!(
        err.contains("layers.0.weight") && err.contains("[4, 16]"),
        "{err}"
    );
    // Fewer layers than the file holds.
    let fewer = Arch {
        input: 4,
        layers: vec![Layer {
            out: 16,
            act: Activation::Gelu,
        }],
        head: Head::Plain,
    };
    std::fs::write(&js, serde_json::to_string(&fewer).unwrap()).unwrap();
    let err = Mlp::load(ctx, &st)
        .err()
        .expect("extra tensors must fail")
        .to_string();
    assert!(err.contains("not part of the architecture"), "{err}");
    // A broken JSON names its line; a missing file its path.
    std::fs::write(&js, "{\n \"input\": 4,\n oops }").unwrap();
    let err = Mlp::load(ctx, &st).err().unwrap().to_string();
    assert!(err.contains("enc.json:3"), "{err}");
    let err = Mlp::load(ctx, &dir.join("absent"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("absent.json"), "{err}");
}

#[test]
fn early_stopping_keeps_the_best_weights_and_divergence_is_an_error() {
    let ctx = ctx();
    // Targets are pure noise: the validation loss stops improving quickly.
    let mut rng = Rng::new(19);
    let n = 600;
    let x = rng.vec_uniform(n * 3, -1.0, 1.0);
    let t = rng.vec_normal(n);
    let data = Dataset::new(x, t, 3, 1).unwrap();
    let (tr, val) = data.split(200).unwrap();
    let mut net = Mlp::new(ctx, Arch::mlp(3, &[64, 64], Activation::Relu, 1), None, 3).unwrap();
    let s = TrainSettings {
        epochs: 200,
        batch: 50,
        lr: 1e-2,
        patience: 5,
        seed: 1,
        ..Default::default()
    };
    let rep = train::train(ctx, &mut net, &tr, Some(&val), &s).unwrap();
    assert!(
        rep.stopped_early,
        "should stop early: {} epochs",
        rep.epochs
    );
    assert_eq!(rep.epochs, rep.best_epoch + 1 + 5);
    let best = rep.val_loss[rep.best_epoch];
    assert!(rep.val_loss.iter().all(|&v| v >= best));
    // The network holds the best epoch's weights.
    let now = train::evaluate(ctx, &net, &val, Loss::Mse).unwrap();
    assert!(
        (now - best).abs() < 1e-5 * best,
        "restored {now} vs best {best}"
    );

    // A learning rate far too large: an error that says what to do, not NaN weights.
    let mut net = Mlp::new(ctx, Arch::mlp(3, &[64], Activation::Identity, 1), None, 3).unwrap();
    let big: Vec<f64> = data.t.iter().map(|v| v * 1e30).collect();
    let wild = Dataset::new(data.x.clone(), big, 3, 1).unwrap();
    let s = TrainSettings {
        epochs: 5,
        batch: 50,
        lr: 1e3,
        ..Default::default()
    };
    let err = train::train(ctx, &mut net, &wild, None, &s)
        .unwrap_err()
        .to_string();
    assert!(err.contains("learning rate"), "{err}");
    // Bad settings are errors too.
    let s = TrainSettings {
        batch: 10_000,
        ..Default::default()
    };
    assert!(train::train(ctx, &mut net, &tr, None, &s).is_err());
    assert!(Dataset::new(vec![f64::NAN, 1.0], vec![1.0], 2, 1).is_err());
}

// ---------------------------------------------------------------------------
// Neural posterior estimation (`loss_npe`): -log q(x) for a Gaussian head.

/// The three VI families at d = 5 (rank 2 for low-rank), with their names.
const NPE_FAMILIES: &[(Family, &str)] = &[
    (Family::MeanField, "mean-field"),
    (Family::FullRank, "full-rank"),
    (Family::LowRank { rank: 2 }, "low-rank"),
];

/// A batch of `m` random Gaussian heads in `family`'s layout (means in
/// [-1, 1], log-scales in [-1, 0.5], full-rank off-diagonals and low-rank
/// factors in [-0.7, 0.7], the ignored full-rank upper triangle filled with
/// junk) and targets in [-2, 2], at odd offsets and row strides.
fn npe_case(rng: &mut Rng, family: Family, d: usize, m: usize) -> (MlpParams, Vec<f64>, Vec<f64>) {
    let np = family.nparam(d);
    let p = MlpParams {
        m: m as u32,
        n: d as u32,
        k: family.rank() as u32,
        act: family.code(),
        a_off: 3,
        a_rs: (np + 2) as u32,
        b_off: 1,
        b_rs: (d + 1) as u32,
        c_off: 2,
        c_rs: (np + 3) as u32,
        scale: 1.0 / m as f32,
        ..Default::default()
    };
    let mut theta = rng.vec_uniform(3 + m * (np + 2), -5.0, 5.0);
    for r in 0..m {
        let th = &mut theta[3 + r * (np + 2)..];
        for v in &mut th[..d] {
            *v = rng.uniform(-1.0, 1.0);
        }
        match family {
            Family::MeanField => {
                for i in 0..d {
                    th[d + i] = rng.uniform(-1.0, 0.5);
                }
            }
            Family::FullRank => {
                for i in 0..d {
                    for j in 0..i {
                        th[d + i * d + j] = rng.uniform(-0.7, 0.7);
                    }
                    th[d + i * d + i] = rng.uniform(-1.0, 0.5);
                }
            }
            Family::LowRank { rank } => {
                for v in &mut th[d..d + d * rank] {
                    *v = rng.uniform(-0.7, 0.7);
                }
                for i in 0..d {
                    th[d + d * rank + i] = rng.uniform(-1.0, 0.5);
                }
            }
        }
    }
    let x = rng.vec_uniform(1 + m * (d + 1), -2.0, 2.0);
    (p, theta, x)
}

/// Mirror of `loss_npe` on fresh buffers: (gradient buffer, loss buffer).
fn npe_mirror(p: &MlpParams, theta: &[f64], x: &[f64], c0: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut c = c0.to_vec();
    let mut z = vec![0.0; cm::LOSS_ROWS + p.m as usize];
    cm::loss_npe(p, theta, x, &mut c, &mut z);
    (c, z)
}

#[test]
fn npe_loss_matches_cpu_for_every_family() {
    let ctx = ctx();
    let mut rng = Rng::new(31);
    let (d, m) = (5usize, 7usize);
    for &(family, fname) in NPE_FAMILIES {
        let (p, theta, x) = npe_case(&mut rng, family, d, m);
        // Junk around and between the gradient rows must be left alone.
        let c0 = rng.vec_uniform(2 + m * p.c_rs as usize, -1.0, 1.0);
        let (c, z) = npe_mirror(&p, &theta, &x, &c0);
        let (bt, bx, bc, bz) = (
            upload(ctx, "theta", &theta),
            upload(ctx, "x", &x),
            upload(ctx, "c", &c0),
            upload(ctx, "z", &vec![0.0; z.len()]),
        );
        let u = ctx.uniform("p", &p);
        run(ctx, KernelId::LossNpe, &[&u, &bt, &bx, &bc, &bz], [m, 1]);
        // f32 against f64: 1e-5 absolute plus 1e-4 relative.
        assert_close(
            &format!("loss_npe {fname} gradient"),
            &read(ctx, &bc, c.len()),
            &c,
            1e-5,
            1e-4,
        );
        assert_close(
            &format!("loss_npe {fname} row losses"),
            &read(ctx, &bz, z.len()),
            &z,
            1e-5,
            1e-4,
        );
        // With flags & 1 the gradient is added to what xc holds (the UQ-VAE
        // term writes its part first).
        let mut pa = p;
        pa.flags = 1;
        let (ca, _) = npe_mirror(&pa, &theta, &x, &c0);
        let bca = upload(ctx, "ca", &c0);
        let ua = ctx.uniform("pa", &pa);
        run(ctx, KernelId::LossNpe, &[&ua, &bt, &bx, &bca, &bz], [m, 1]);
        assert_close(
            &format!("loss_npe {fname} accumulated gradient"),
            &read(ctx, &bca, ca.len()),
            &ca,
            1e-5,
            1e-4,
        );

        // A non-finite target: NaN row loss and a zero gradient row (the
        // other row is untouched by it), on both sides.
        let mut p2 = p;
        p2.m = 2;
        let mut x2 = x.clone();
        x2[1 + (d + 1) + 2] = f64::INFINITY;
        let (c, z) = npe_mirror(&p2, &theta, &x2, &c0);
        let bx2 = upload(ctx, "x2", &x2);
        let bc2 = upload(ctx, "c2", &c0);
        let bz2 = upload(ctx, "z2", &vec![0.0; z.len()]);
        let u2 = ctx.uniform("p2", &p2);
        run(
            ctx,
            KernelId::LossNpe,
            &[&u2, &bt, &bx2, &bc2, &bz2],
            [2, 1],
        );
        let (gc, gz) = (read(ctx, &bc2, c.len()), read(ctx, &bz2, z.len()));
        let np = family.nparam(d);
        let row1 = 2 + p.c_rs as usize..2 + p.c_rs as usize + np;
        for (name, cc, zz) in [("cpu", &c, &z), ("gpu", &gc, &gz)] {
            assert!(zz[cm::LOSS_ROWS].is_finite(), "{fname} {name}: row 0 loss");
            assert!(
                zz[cm::LOSS_ROWS + 1].is_nan(),
                "{fname} {name}: row 1 loss {}",
                zz[cm::LOSS_ROWS + 1]
            );
            assert!(
                cc[row1.clone()].iter().all(|&v| v == 0.0),
                "{fname} {name}: row 1 gradient"
            );
        }
        let row0 = 2..2 + np;
        assert_close(
            &format!("{fname} finite row"),
            &gc[row0.clone()],
            &c[row0],
            1e-5,
            1e-4,
        );
    }
}

#[test]
fn npe_loss_gradient_matches_central_differences() {
    let mut rng = Rng::new(32);
    let (d, m) = (5usize, 3usize);
    for &(family, fname) in NPE_FAMILIES {
        let (p, theta, x) = npe_case(&mut rng, family, d, m);
        let c0 = vec![0.0; 2 + m * p.c_rs as usize];
        let (c, _) = npe_mirror(&p, &theta, &x, &c0);
        let total = |th: &[f64]| -> f64 {
            let (_, z) = npe_mirror(&p, th, &x, &c0);
            z[cm::LOSS_ROWS..].iter().sum()
        };
        let np = family.nparam(d);
        let h = 1e-6;
        let (mut fd, mut an) = (Vec::new(), Vec::new());
        for r in 0..m {
            for j in 0..np {
                let o = p.a_off as usize + r * p.a_rs as usize + j;
                let mut tp = theta.clone();
                tp[o] += h;
                let mut tm = theta.clone();
                tm[o] -= h;
                fd.push(p.scale as f64 * (total(&tp) - total(&tm)) / (2.0 * h));
                an.push(c[p.c_off as usize + r * p.c_rs as usize + j]);
            }
        }
        // 1e-6 relative; 1e-7 absolute covers the O(eps |f| / h) rounding of
        // the differences (|f| ~ 10) near zero entries.
        assert_close(
            &format!("loss_npe {fname} vs differences"),
            &an,
            &fd,
            1e-7,
            1e-6,
        );
    }
}

#[test]
fn npe_loss_matches_a_dense_gaussian_log_density() {
    use pdevi::math::linalg;
    let mut rng = Rng::new(33);
    let (d, m) = (5usize, 4usize);
    let ln2pi = (2.0 * std::f64::consts::PI).ln();
    for &(family, fname) in NPE_FAMILIES {
        let (p, theta, x) = npe_case(&mut rng, family, d, m);
        let c0 = vec![0.0; 2 + m * p.c_rs as usize];
        let (_, z) = npe_mirror(&p, &theta, &x, &c0);
        for r in 0..m {
            let th = &theta[p.a_off as usize + r * p.a_rs as usize..];
            let xr = &x[p.b_off as usize + r * p.b_rs as usize..][..d];
            // Sigma written out from the layout (not through the mirror's solves).
            let mut sigma = vec![0.0; d * d];
            match family {
                Family::MeanField => {
                    for i in 0..d {
                        sigma[i * d + i] = (2.0 * th[d + i]).exp();
                    }
                }
                Family::FullRank => {
                    let mut l = vec![0.0; d * d];
                    for i in 0..d {
                        for j in 0..i {
                            l[i * d + j] = th[d + i * d + j];
                        }
                        l[i * d + i] = th[d + i * d + i].exp();
                    }
                    let mut lt = vec![0.0; d * d];
                    for i in 0..d {
                        for j in 0..d {
                            lt[j * d + i] = l[i * d + j];
                        }
                    }
                    sigma = linalg::matmul(&l, &lt, d, d, d);
                }
                Family::LowRank { rank } => {
                    for i in 0..d {
                        for j in 0..d {
                            sigma[i * d + j] = (0..rank)
                                .map(|a| th[d + i * rank + a] * th[d + j * rank + a])
                                .sum();
                        }
                        sigma[i * d + i] += (2.0 * th[d + d * rank + i]).exp();
                    }
                }
            }
            let res: Vec<f64> = (0..d).map(|i| xr[i] - th[i]).collect();
            let sol = linalg::solve_spd(&sigma, d, &res).unwrap();
            let quad: f64 = res.iter().zip(&sol).map(|(a, b)| a * b).sum();
            let ld = linalg::logdet_spd(&sigma, d).unwrap();
            let want = 0.5 * quad + 0.5 * ld + 0.5 * d as f64 * ln2pi;
            let got = z[cm::LOSS_ROWS + r];
            assert!(
                (got - want).abs() <= 1e-10 * want.abs().max(1.0),
                "{fname} row {r}: loss_npe {got} vs dense {want}"
            );
        }
    }
}

#[test]
fn npe_training_recovers_a_linear_gaussian_posterior() {
    let ctx = ctx();
    // x ~ N(0, I_2), y = A x + 0.1 noise: the posterior of x given y is
    // N(cov A^T y / 0.01, cov), cov = (I + A^T A / 0.01)^-1, with correlation
    // about -0.93 (columns of A nearly parallel), so a full-rank head is
    // needed. A linear network (one identity layer) represents it exactly.
    let a = [[1.0, 0.8], [0.5, 0.7], [0.2, -0.1]];
    let noise2 = 0.01;
    let mut prec = [[1.0, 0.0], [0.0, 1.0]];
    for i in 0..2 {
        for j in 0..2 {
            prec[i][j] += (0..3).map(|k| a[k][i] * a[k][j]).sum::<f64>() / noise2;
        }
    }
    let det = prec[0][0] * prec[1][1] - prec[0][1] * prec[1][0];
    let cov = [
        [prec[1][1] / det, -prec[0][1] / det],
        [-prec[1][0] / det, prec[0][0] / det],
    ];
    let post_mean = |y: &[f64]| -> [f64; 2] {
        let aty: Vec<f64> = (0..2)
            .map(|i| (0..3).map(|k| a[k][i] * y[k]).sum::<f64>() / noise2)
            .collect();
        [
            cov[0][0] * aty[0] + cov[0][1] * aty[1],
            cov[1][0] * aty[0] + cov[1][1] * aty[1],
        ]
    };
    let simulate = |rng: &mut Rng| -> Vec<f64> {
        let x = [rng.normal(), rng.normal()];
        (0..3)
            .map(|k| a[k][0] * x[0] + a[k][1] * x[1] + 0.1 * rng.normal())
            .chain(x)
            .collect()
    };
    let mut rng = Rng::new(34);
    let n = 4000;
    let (mut ys, mut xs) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let s = simulate(&mut rng);
        ys.extend_from_slice(&s[..3]);
        xs.extend_from_slice(&s[3..]);
    }
    let data = Dataset::new(ys, xs, 3, 2).unwrap();
    let (tr, val) = data.split(400).unwrap();
    let family = Family::FullRank;
    let d = 2;
    let arch = Arch {
        input: 3,
        layers: vec![Layer {
            out: family.nparam(d),
            act: Activation::Identity,
        }],
        head: Head::Gaussian {
            family: "full-rank".into(),
            d,
            rank: 0,
        },
    };
    let mut net = Mlp::new(ctx, arch, None, 5).unwrap();
    let s = TrainSettings {
        loss: Loss::Npe,
        epochs: 150,
        batch: 100,
        lr: 5e-2,
        lr_final: 0.01,
        seed: 6,
        ..Default::default()
    };
    let rep = train::train(ctx, &mut net, &tr, Some(&val), &s).unwrap();
    // The exact posterior's loss on the same validation rows.
    let ideal = (0..val.n)
        .map(|r| {
            let mu = post_mean(&val.x[3 * r..3 * r + 3]);
            let e = [val.t[2 * r] - mu[0], val.t[2 * r + 1] - mu[1]];
            let quad = (0..2)
                .map(|i| (0..2).map(|j| e[i] * prec[i][j] * e[j]).sum::<f64>())
                .sum::<f64>();
            0.5 * quad - 0.5 * det.ln() + (2.0 * std::f64::consts::PI).ln()
        })
        .sum::<f64>()
        / val.n as f64;
    let best = rep.val_loss[rep.best_epoch];
    eprintln!(
        "NPE linear-Gaussian: {} epochs, {:.1} s, val loss {best:.4} (exact posterior {ideal:.4})",
        rep.epochs, rep.seconds
    );
    let y: Vec<f64> = (0..6)
        .flat_map(|_| simulate(&mut rng)[..3].to_vec())
        .collect();
    let theta = Workspace::new(ctx, &net, 6, Loss::External)
        .unwrap()
        .predict(ctx, &y)
        .unwrap();
    let (sd0, sd1) = (cov[0][0].sqrt(), cov[1][1].sqrt());
    let corr = cov[0][1] / (sd0 * sd1);
    let np = family.nparam(d);
    for r in 0..6 {
        let th = &theta[r * np..(r + 1) * np];
        let want = post_mean(&y[3 * r..3 * r + 3]);
        let (l00, l10, l11) = (th[2].exp(), th[4], th[5].exp());
        let (c00, c01, c11) = (l00 * l00, l10 * l00, l10 * l10 + l11 * l11);
        let (s0, s1) = (c00.sqrt(), c11.sqrt());
        let rho = c01 / (s0 * s1);
        eprintln!(
            "y {r}: mean ({:+.4}, {:+.4}) vs ({:+.4}, {:+.4}), sd ({s0:.4}, {s1:.4}) vs ({sd0:.4}, {sd1:.4}), corr {rho:+.4} vs {corr:+.4}",
            th[0], th[1], want[0], want[1]
        );
        // 1800 pairs leave a sampling error in the fitted affine maps of
        // about 0.07 posterior sd in the means and 2-5 % in the sds at
        // |y| ~ 2; the bounds are twice that: means within 0.2 posterior sd,
        // sds within 10 %, correlation within 0.03.
        assert!(
            (th[0] - want[0]).abs() < 0.2 * sd0,
            "row {r}: mean 0 {} vs {}",
            th[0],
            want[0]
        );
        assert!(
            (th[1] - want[1]).abs() < 0.2 * sd1,
            "row {r}: mean 1 {} vs {}",
            th[1],
            want[1]
        );
        assert!(
            (s0 / sd0 - 1.0).abs() < 0.1 && (s1 / sd1 - 1.0).abs() < 0.1,
            "row {r}: sd ({s0}, {s1}) vs ({sd0}, {sd1})"
        );
        assert!(
            (rho - corr).abs() < 0.03,
            "row {r}: correlation {rho} vs {corr}"
        );
    }
    // The fitted q scores the validation rows within 0.02 nats of the exact posterior.
    assert!(
        (best - ideal).abs() < 0.02,
        "validation loss {best} vs the exact posterior's {ideal}"
    );
}

#[test]
fn npe_loss_needs_a_gaussian_head_within_the_kernel_limits() {
    let ctx = ctx();
    let gaussian = |family: &str, d: usize, rank: usize| {
        let f = Family::parse(family, rank).unwrap();
        let arch = Arch {
            input: 2,
            layers: vec![Layer {
                out: f.nparam(d),
                act: Activation::Identity,
            }],
            head: Head::Gaussian {
                family: family.into(),
                d,
                rank,
            },
        };
        Mlp::new(ctx, arch, None, 0).unwrap()
    };
    let plain = Mlp::new(ctx, Arch::mlp(2, &[], Activation::Identity, 4), None, 0).unwrap();
    let err = |net: &Mlp| {
        Workspace::new(ctx, net, 4, Loss::Npe)
            .err()
            .expect("must fail")
            .to_string()
    };
    assert!(err(&plain).contains("Gaussian head"), "{}", err(&plain));
    let e = err(&gaussian("mean-field", mlp::NPE_MAX_D + 1, 0));
    assert!(e.contains(&mlp::NPE_MAX_D.to_string()), "{e}");
    let e = err(&gaussian("low-rank", 3, mlp::NPE_MAX_R + 1));
    assert!(e.contains(&mlp::NPE_MAX_R.to_string()), "{e}");
    let ws = Workspace::new(ctx, &gaussian("low-rank", 3, 2), 4, Loss::Npe).unwrap();
    assert_eq!(ws.t.size(), 4 * 3 * 4, "targets are d wide");
}

/// Non-finite row losses are left out of the reduction and counted in
/// `slot + SKIPPED`, on the device as in the mirror (the host stops
/// training when more than 1 % of an epoch's rows are left out).
#[test]
fn loss_reduce_leaves_out_and_counts_non_finite_rows() {
    let ctx = ctx();
    let m = 6u32;
    let mut losses = vec![0.0; 16 + m as usize];
    losses[1] = 2.0;
    losses[9] = 1.0;
    for r in 0..m as usize {
        losses[16 + r] = r as f64 + 0.5;
    }
    losses[16 + 2] = f64::NAN;
    losses[16 + 4] = f64::INFINITY;
    let p = MlpParams {
        m,
        scale: 0.25,
        slot: 1,
        flags: 1,
        ..Default::default()
    };
    let mut want = losses.clone();
    cm::loss_reduce(&p, &mut want);
    assert_eq!(want[1], 2.0 + 0.25 * (0.5 + 1.5 + 3.5 + 5.5));
    assert_eq!(want[1 + mlp::slot::SKIPPED as usize], 3.0);
    let bl = upload(ctx, "l", &losses);
    let u = ctx.uniform("p", &p);
    run(ctx, KernelId::LossReduce, &[&u, &bl], [1, 1]);
    let got = read(ctx, &bl, 16);
    assert_close(
        "loss_reduce with non-finite rows",
        &got,
        &want[..16],
        1e-6,
        1e-6,
    );
}
