//! An MLP with a Gaussian (mean, log-variance) head learns a noise level
//! that grows along x, trained on the GPU; writes the fit with its ±2 sd
//! band, the loss curves, and the weights (safetensors + architecture JSON).
//!
//!     cargo run --release --example heteroscedastic -- [OUT_DIR]

use pdevi::nn::mlp::{Activation, Arch, Head, Loss, Mlp, Workspace};
use pdevi::nn::train::{self, Dataset, TrainSettings};
use pdevi::output::plot::{self, Series};

fn main() -> pdevi::Result<()> {
    let out = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "out/heteroscedastic".into()),
    );
    pdevi::output::files::ensure_dir(&out)?;
    let sd = |x: f64| 0.05 + 0.25 * (x + 1.0) / 2.0;
    let mean = |x: f64| (2.0 * x).sin();
    let n = 4000;
    let u = pdevi::rng::normals(1, 9, 0, 2 * n);
    // x uniform on [-1, 1] from the normal CDF of the first half of the draws.
    let xs: Vec<f64> = u[..n]
        .iter()
        .map(|z| 2.0 * pdevi::math::special::norm_cdf(*z) - 1.0)
        .collect();
    let ts: Vec<f64> = xs
        .iter()
        .zip(&u[n..])
        .map(|(&x, e)| mean(x) + sd(x) * e)
        .collect();
    let data = Dataset::new(xs.clone(), ts.clone(), 1, 1)?;
    let (tr, val) = data.split(500)?;

    let ctx = pdevi::GpuContext::new()?;
    eprintln!("device: {}", ctx.describe());
    let mut arch = Arch::mlp(1, &[32, 32], Activation::Silu, 2);
    arch.head = Head::MeanLogvar { dim: 1 };
    let mut net = Mlp::new(&ctx, arch, None, 2)?;
    let s = TrainSettings {
        loss: Loss::GaussNll,
        epochs: 60,
        batch: 100,
        lr: 5e-3,
        lr_final: 0.1,
        clip_norm: 10.0,
        seed: 4,
        patience: 15,
        quiet: false,
        ..Default::default()
    };
    let rep = train::train(&ctx, &mut net, &tr, Some(&val), &s)?;
    eprintln!(
        "{} epochs in {:.1} s ({:.0} samples/s), best validation NLL {:.4}",
        rep.epochs, rep.seconds, rep.samples_per_s, rep.val_loss[rep.best_epoch]
    );

    // Prediction on a grid.
    let m = 101;
    let grid: Vec<f64> = (0..m)
        .map(|i| -1.0 + 2.0 * i as f64 / (m - 1) as f64)
        .collect();
    let y = Workspace::new(&ctx, &net, m, Loss::External)?.predict(&ctx, &grid)?;
    let mu: Vec<f64> = (0..m).map(|i| y[2 * i]).collect();
    let band: Vec<f64> = (0..m).map(|i| 2.0 * (0.5 * y[2 * i + 1]).exp()).collect();
    let true_mu: Vec<f64> = grid.iter().map(|&x| mean(x)).collect();
    let true_band: Vec<f64> = grid.iter().map(|&x| 2.0 * sd(x)).collect();
    let lo: Vec<f64> = true_mu.iter().zip(&true_band).map(|(a, b)| a - b).collect();
    let hi: Vec<f64> = true_mu.iter().zip(&true_band).map(|(a, b)| a + b).collect();
    plot::write_line_plot(
        &out.join("fit.png"),
        "Gaussian-head MLP: mean and 2 sd (shaded) vs the truth (dashed)",
        "x",
        "y",
        &[
            Series {
                label: "MLP mean, 2 sd".into(),
                x: &grid,
                y: &mu,
                band: Some(&band),
                rgb: [31, 119, 180],
                dashed: false,
            },
            Series {
                label: "true mean".into(),
                x: &grid,
                y: &true_mu,
                band: None,
                rgb: [60, 60, 60],
                dashed: true,
            },
            Series {
                label: "true 2 sd".into(),
                x: &grid,
                y: &lo,
                band: None,
                rgb: [214, 39, 40],
                dashed: true,
            },
            Series {
                label: String::new(),
                x: &grid,
                y: &hi,
                band: None,
                rgb: [214, 39, 40],
                dashed: true,
            },
        ],
        false,
        None,
    )?;
    let ep: Vec<f64> = (1..=rep.epochs).map(|e| e as f64).collect();
    plot::write_line_plot(
        &out.join("loss.png"),
        "Gaussian NLL per epoch",
        "epoch",
        "NLL",
        &[
            Series {
                label: "train".into(),
                x: &ep,
                y: &rep.train_loss,
                band: None,
                rgb: [31, 119, 180],
                dashed: false,
            },
            Series {
                label: "validation".into(),
                x: &ep,
                y: &rep.val_loss,
                band: None,
                rgb: [255, 127, 14],
                dashed: false,
            },
        ],
        false,
        None,
    )?;
    let (w, a) = net.save(&ctx, &out.join("model"))?;
    eprintln!(
        "wrote {}, {}, {} and {}",
        out.join("fit.png").display(),
        out.join("loss.png").display(),
        w.display(),
        a.display()
    );
    Ok(())
}
