//! Shared test helpers: the one GPU context of a test binary, seeded inputs
//! and a comparison that reports the first mismatches.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::sync::OnceLock;

use pdevi::gpu::{GpuContext, KernelId};

pub mod mirror;

/// The test binary's GPU context; a missing adapter fails the test with install instructions.
pub fn ctx() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| match GpuContext::new() {
        Ok(c) => {
            eprintln!("adapter: {}", c.describe());
            if let Ok(want) = std::env::var("PDEVI_EXPECT_BACKEND") {
                let got = format!("{:?}", c.info.backend).to_ascii_lowercase();
                assert!(
                    got.contains(&want.to_ascii_lowercase()),
                    "expected backend {want}, got {got} ({})",
                    c.describe()
                );
            }
            c
        }
        Err(e) => panic!("GPU tests need an adapter: {e}"),
    })
}

/// splitmix64: tiny, seeded, good enough for test inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform(1e-300, 1.0);
        let u2 = self.uniform(0.0, 1.0);
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn vec_uniform(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
    pub fn vec_normal(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.normal()).collect()
    }
}

/// Check |gpu - cpu| <= atol + rtol |cpu| elementwise; on failure list the
/// first 10 mismatches and the worst one. NaN on either side is a mismatch.
#[track_caller]
pub fn assert_close(name: &str, gpu: &[f64], cpu: &[f64], atol: f64, rtol: f64) {
    if let Err(msg) = compare(name, gpu, cpu, atol, rtol) {
        panic!("{msg}");
    }
}

/// [`assert_close`] as a result, for harnesses that collect failures.
pub fn compare(name: &str, gpu: &[f64], cpu: &[f64], atol: f64, rtol: f64) -> Result<(), String> {
    if gpu.len() != cpu.len() {
        return Err(format!(
            "{name}: length differs (gpu {}, cpu {})",
            gpu.len(),
            cpu.len()
        ));
    }
    let mut bad = Vec::new();
    let mut worst = (0usize, 0.0f64);
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let err = (g - c).abs();
        let ok = g.is_finite() && c.is_finite() && err <= atol + rtol * c.abs();
        if !ok {
            if bad.len() < 10 {
                bad.push(format!("  [{i}] gpu {g:.9e} cpu {c:.9e} |diff| {err:.3e}"));
            }
            if !err.is_finite() || err > worst.1 {
                worst = (i, if err.is_finite() { err } else { f64::INFINITY });
            }
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{name}: mismatches (atol {atol:e}, rtol {rtol:e}), worst at [{}] |diff| {:.3e}:\n{}",
        worst.0,
        worst.1,
        bad.join("\n")
    ))
}

pub fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Run one kernel on the given buffers (in its binding order) over `extent`
/// items of work (the kernel table's geometry sizes the dispatch), and wait.
pub fn run(ctx: &GpuContext, k: KernelId, buffers: &[&wgpu::Buffer], extent: [usize; 2]) {
    let groups = ctx.groups(k, extent).expect("dispatch too large");
    let bg = ctx.bind(k, buffers);
    let mut enc = ctx.encoder("test");
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("test"),
            timestamp_writes: None,
        });
        ctx.dispatch(&mut pass, k, &bg, groups);
    }
    ctx.submit_wait(enc).expect("GPU work failed");
}

pub fn read(ctx: &GpuContext, buf: &wgpu::Buffer, count: usize) -> Vec<f64> {
    let v: Vec<f32> = ctx.read(buf, 0, count).expect("readback failed");
    v.into_iter().map(f64::from).collect()
}

pub fn upload(ctx: &GpuContext, label: &str, v: &[f64]) -> wgpu::Buffer {
    ctx.upload(label, &f32s(v)).expect("upload failed")
}

/// Run the `pdevi` binary: (exit code, stdout and stderr).
pub fn pdevi(args: &[&str]) -> (Option<i32>, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pdevi"))
        .args(args)
        .output()
        .expect("run pdevi");
    (
        o.status.code(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}
