//! The GPU field renderer against its CPU mirror, pixel by pixel; sensor
//! markers on their pixels; the live view's moments and ranges against
//! the f64 posterior moments; frames and the GIF of `pdevi run`.

mod common;

use common::{ctx, Rng};
use glam::UVec2;
use image::RgbImage;
use pdevi::gpu::render::{Draw, Values, KIND_CELL};
use pdevi::gpu::KernelId;
use pdevi::infer::vi::Family;
use pdevi::output::live::LiveFields;
use pdevi::output::plot::{panels_image, Colormap, Field2, Painter, Panel};
use pdevi::physics::problem::{ProblemArgs, ProblemKind};

/// Largest channel difference allowed between the GPU image and the
/// mirror: one step of the 256-entry colour table (values computed in f32
/// on the GPU, f64 on the CPU, can fall either side of an entry's edge)
/// and unorm rounding.
const TOL: u8 = 4;

/// (pixels compared, pixels over `tol`, the largest difference, the first
/// mismatches as text).
fn diff(gpu: &RgbImage, cpu: &RgbImage, tol: u8) -> (usize, usize, u8, String) {
    assert_eq!(gpu.dimensions(), cpu.dimensions());
    let (mut over, mut max, mut first) = (0, 0u8, String::new());
    for (x, y, a) in gpu.enumerate_pixels() {
        let b = cpu.get_pixel(x, y);
        let d = (0..3).map(|c| a.0[c].abs_diff(b.0[c])).max().unwrap_or(0);
        max = max.max(d);
        if d > tol {
            over += 1;
            if over <= 5 {
                first.push_str(&format!("  ({x}, {y}): gpu {:?} cpu {:?}\n", a.0, b.0));
            }
        }
    }
    ((gpu.width() * gpu.height()) as usize, over, max, first)
}

fn random_field(rng: &mut Rng, len: usize, scale: f64) -> Vec<f64> {
    (0..len).map(|_| rng.uniform(-scale, scale)).collect()
}

fn both(panels: &[Panel]) -> (RgbImage, RgbImage) {
    let gpu = panels_image(Painter::Gpu(ctx()), "render test", panels).expect("gpu figure");
    let cpu = panels_image(Painter::Cpu, "render test", panels).expect("cpu figure");
    (gpu, cpu)
}

fn check_same(what: &str, panels: &[Panel], tol: u8, max_share: f64) {
    let (gpu, cpu) = both(panels);
    let (n, over, max, first) = diff(&gpu, &cpu, tol);
    let share = over as f64 / n as f64;
    eprintln!("{what}: {n} pixels, {over} over {tol}, max channel difference {max}");
    if share > max_share {
        let _ = gpu.save(std::env::temp_dir().join(format!("pdevi-render-{what}-gpu.png")));
        let _ = cpu.save(std::env::temp_dir().join(format!("pdevi-render-{what}-cpu.png")));
        panic!(
            "{what}: {over} of {n} pixels differ by more than {tol} (allowed share {max_share}); first:\n{first}"
        );
    }
}

#[test]
fn cell_nodal_constant_and_nan_fields_match_the_mirror() {
    let mut rng = Rng::new(7);
    let n = 16;
    let cells = random_field(&mut rng, n * n, 3.0);
    let nodes = random_field(&mut rng, (n + 1) * (n + 1), 1.0);
    let constant = vec![0.25; n * n];
    let mut holes = random_field(&mut rng, n * n, 1.0);
    for k in [0, 5, 17, 100, n * n - 1] {
        holes[k] = f64::NAN;
    }
    let signed = random_field(&mut rng, 24 * 24, 2.0);
    let pb = ProblemArgs {
        kind: ProblemKind::Darcy2d,
        n: Some(n),
        d: Some(4),
    }
    .build()
    .unwrap();
    let sensors = pb.sensor_points();
    let panels = vec![
        Panel {
            markers: &sensors,
            ..Panel::new("cells", Field2::cells(&cells, n, n))
        },
        Panel::new("nodes", Field2::nodes(&nodes, n + 1, n + 1)),
        Panel::new("constant", Field2::cells(&constant, n, n)),
        Panel {
            markers: &sensors,
            ..Panel::new("NaN cells", Field2::cells(&holes, n, n))
        },
        Panel {
            cmap: Colormap::RdBu,
            ..Panel::new("diverging", Field2::cells(&signed, 24, 24))
        },
    ];
    check_same("fields", &panels, TOL, 0.0);
    // The NaN cells are grey on the GPU too.
    let gpu = panels_image(Painter::Gpu(ctx()), "render test", &panels[3..4]).unwrap();
    let grey = gpu.pixels().filter(|p| p.0 == [128, 128, 128]).count();
    assert!(grey > 5 * 300, "NaN cells drawn grey: {grey} grey pixels");
}

#[test]
fn contour_lines_match_the_mirror_but_for_band_edges() {
    let mut rng = Rng::new(11);
    let n = 32;
    let nodes = random_field(&mut rng, (n + 1) * (n + 1), 1.0);
    let cells = random_field(&mut rng, n * n, 1.0);
    let panels = vec![
        Panel {
            contours: 6,
            ..Panel::new("nodal contours", Field2::nodes(&nodes, n + 1, n + 1))
        },
        Panel {
            contours: 4,
            ..Panel::new("cell contours", Field2::cells(&cells, n, n))
        },
    ];
    // A pixel whose value sits on a band edge may fall either side in f32
    // and f64: allow 0.5 % of the pixels there.
    check_same("contours", &panels, TOL, 0.005);
    let gpu = panels_image(Painter::Gpu(ctx()), "render test", &panels).unwrap();
    let plain = panels_image(
        Painter::Gpu(ctx()),
        "render test",
        &[
            Panel::new("nodal contours", Field2::nodes(&nodes, n + 1, n + 1)),
            Panel::new("cell contours", Field2::cells(&cells, n, n)),
        ],
    )
    .unwrap();
    let (_, changed, _, _) = diff(&gpu, &plain, 0);
    assert!(changed > 2000, "contours drawn: {changed} pixels changed");
}

/// Centres of the white discs of the markers, found in a GPU image.
#[test]
fn sensor_markers_land_on_their_pixels() {
    for n in [16usize, 32, 64] {
        let pb = ProblemArgs {
            kind: ProblemKind::Darcy2d,
            n: Some(n),
            d: Some(4),
        }
        .build()
        .unwrap();
        let sensors = pb.sensor_points();
        let side = (n * (330 / n)) as u32;
        let size = UVec2::new(side + 20, side + 10);
        let origin = UVec2::new(12, 4);
        let mut d = Draw::at(origin, UVec2::splat(side), size, KIND_CELL);
        d.nx = n as u32;
        d.ny = n as u32;
        d.lo = -1.0;
        d.hi = 1.0;
        d.nmarkers = sensors.len() as u32;
        let values = vec![0.0f32; n * n];
        let m32: Vec<[f32; 2]> = sensors.iter().map(|m| [m[0] as f32, m[1] as f32]).collect();
        let img = ctx()
            .renderer()
            .unwrap()
            .render(ctx(), size, Values::Host(&values), None, &[d], &m32)
            .unwrap();
        for m in &sensors {
            let cx = origin.x as f64 + m[0] * side as f64;
            let cy = origin.y as f64 + (1.0 - m[1]) * side as f64;
            let (mut sx, mut sy, mut count, mut ink) = (0.0, 0.0, 0, 0);
            for y in (cy - 5.0) as u32..(cy + 5.0) as u32 {
                for x in (cx - 5.0) as u32..(cx + 5.0) as u32 {
                    match img.get_pixel(x, y).0 {
                        [255, 255, 255, _] => {
                            sx += x as f64 + 0.5;
                            sy += y as f64 + 0.5;
                            count += 1;
                        }
                        [25, 25, 25, _] => ink += 1,
                        _ => {}
                    }
                }
            }
            assert!(
                (8..=16).contains(&count) && ink >= 16,
                "n = {n}: marker at ({}, {}) has {count} white and {ink} ink pixels",
                m[0],
                m[1]
            );
            let (ex, ey) = (sx / count as f64 - cx, sy / count as f64 - cy);
            assert!(
                ex.abs() <= 0.5 && ey.abs() <= 0.5,
                "n = {n}: marker at ({}, {}) centred {ex:+.2}, {ey:+.2} px off",
                m[0],
                m[1]
            );
        }
    }
}

/// KernelId::FieldMoments and KernelId::FieldRange, run directly.
#[test]
fn live_moments_and_ranges_match_the_f64_posterior() {
    // field_range reduces in one workgroup of LIVE_WG = 256 invocations.
    assert_eq!(ctx().workgroup_size(KernelId::FieldRange), 256);
    assert_eq!(ctx().workgroup_size(KernelId::FieldMoments), 256);
    let pb = ProblemArgs {
        kind: ProblemKind::Darcy2d,
        n: Some(16),
        d: Some(12),
    }
    .build()
    .unwrap();
    let (d, nc) = (pb.d, pb.ncoef());
    let basis: Vec<f32> = pb.basis().iter().map(|&v| v as f32).collect();
    let basis = ctx().upload("basis", &basis).unwrap();
    let mut rng = Rng::new(3);
    for family in [
        Family::MeanField,
        Family::FullRank,
        Family::LowRank { rank: 3 },
    ] {
        let theta: Vec<f64> = (0..family.nparam(d))
            .map(|_| rng.uniform(-0.3, 0.3))
            .collect();
        let t32: Vec<f32> = theta.iter().map(|&v| v as f32).collect();
        let tbuf = ctx().upload("theta", &t32).unwrap();
        let live = LiveFields::new(ctx(), &tbuf, &basis, family, d, nc).unwrap();
        let mut enc = ctx().encoder("live test");
        live.encode(&mut enc);
        ctx().submit_wait(enc).unwrap();
        let got: Vec<f32> = ctx().read(&live.fields, 0, 2 * nc).unwrap();
        let ranges: Vec<f32> = ctx().read(&live.ranges, 0, 4).unwrap();
        let (m, cov) = family.moments(d, &theta);
        let (mean, std) = pdevi::infer::predictive::field_moments(&pb, &m, &cov);
        let want: Vec<f64> = mean.iter().chain(&std).copied().collect();
        let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= 2e-5 * scale,
                "{}: value {k}: gpu {g}, f64 {w}",
                family.name()
            );
        }
        for (f, field) in [&mean, &std].iter().enumerate() {
            let lo = field.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = field.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            assert!(
                (ranges[2 * f] as f64 - lo).abs() <= 2e-5 * scale,
                "{}",
                family.name()
            );
            assert!(
                (ranges[2 * f + 1] as f64 - hi).abs() <= 2e-5 * scale,
                "{}",
                family.name()
            );
        }
    }
}

#[test]
fn run_writes_frames_and_a_gif_that_decodes() {
    let out = std::env::temp_dir().join(format!("pdevi-render-frames-{}", std::process::id()));
    let frames = out.join("frames");
    let _ = std::fs::remove_dir_all(&out);
    let cfg = pdevi::cli::run::RunConfig {
        problem: Some("darcy2d".into()),
        n: Some(16),
        d: Some(8),
        steps: Some(25),
        samples: Some(4),
        frames: Some(frames.clone()),
        every: Some(5),
        gif: Some(true),
        out: Some(out.clone()),
        quiet: Some(true),
        predictive_samples: Some(16),
        ..Default::default()
    };
    let m = pdevi::cli::run::run(&cfg).expect("run with frames");
    let mut pngs: Vec<_> = std::fs::read_dir(&frames)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    pngs.sort();
    assert_eq!(pngs.len(), 5, "frames: {pngs:?}");
    assert!(pngs[0].ends_with("frame_000005.png"), "{pngs:?}");
    assert_eq!(m["live"]["frames"], 5, "{}", m["live"]);
    let first = image::open(&pngs[0]).unwrap().to_rgb8();
    let last = image::open(&pngs[4]).unwrap().to_rgb8();
    let (_, changed, _, _) = diff(&first, &last, 0);
    assert!(
        changed > 100,
        "the frames change as q moves: {changed} pixels"
    );
    use image::AnimationDecoder;
    let file =
        std::io::BufReader::new(std::fs::File::open(out.join("posterior_forming.gif")).unwrap());
    let gif = image::codecs::gif::GifDecoder::new(file).expect("GIF header");
    let decoded = gif.into_frames().collect_frames().expect("GIF frames");
    assert_eq!(decoded.len(), 5);
    assert_eq!(decoded[0].buffer().dimensions(), first.dimensions());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn every_without_frames_is_refused() {
    let cfg = pdevi::cli::run::RunConfig {
        problem: Some("poisson1d".into()),
        every: Some(5),
        steps: Some(5),
        quiet: Some(true),
        out: Some(std::env::temp_dir().join(format!("pdevi-render-every-{}", std::process::id()))),
        ..Default::default()
    };
    let e = pdevi::cli::run::run(&cfg).unwrap_err().to_string();
    assert!(e.contains("--frames"), "{e}");
}

fn png_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn laplace_and_mcmc_write_frames_and_live_without_a_display_is_said() {
    let root = std::env::temp_dir().join(format!("pdevi-render-lm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let base = pdevi::cli::run::RunConfig {
        problem: Some("darcy2d".into()),
        n: Some(16),
        d: Some(8),
        quiet: Some(true),
        predictive_samples: Some(8),
        ..Default::default()
    };
    // Laplace: a frame per Gauss-Newton iterate.
    let lp = pdevi::cli::laplace::run_laplace(&pdevi::cli::run::RunConfig {
        out: Some(root.join("laplace")),
        frames: Some(root.join("laplace-frames")),
        ..base.clone()
    })
    .expect("laplace with frames");
    let iters = lp["gauss_newton_iterations"].as_u64().unwrap() as usize;
    assert_eq!(
        png_count(&root.join("laplace-frames")),
        iters + 1,
        "{}",
        lp["live"]
    );
    // MCMC: a frame at the first read-back at or after every 100 steps.
    let mc = pdevi::cli::mcmc::run_mcmc(&pdevi::cli::run::RunConfig {
        out: Some(root.join("mcmc")),
        frames: Some(root.join("mcmc-frames")),
        every: Some(100),
        chains: Some(4),
        samples: Some(50),
        warmup: Some(100),
        ..base.clone()
    })
    .expect("mcmc with frames");
    let frames = mc["live"]["frames"].as_u64().unwrap() as usize;
    assert!(frames >= 2, "{}", mc["live"]);
    assert_eq!(png_count(&root.join("mcmc-frames")), frames);
    // --live: the window opens where there is a display; where there is
    // none, the run still finishes and says why.
    let run = pdevi::cli::run::run(&pdevi::cli::run::RunConfig {
        out: Some(root.join("live")),
        live: Some(true),
        steps: Some(10),
        samples: Some(4),
        ..base
    })
    .expect("run --live finishes with or without a display");
    let live = &run["live"];
    assert!(
        live.get("window_frames").is_some()
            || live["window_error"]
                .as_str()
                .is_some_and(|e| e.contains("--frames")),
        "{live}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
