fn main() {
    let ctx = pdevi::GpuContext::new().unwrap();
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(64);
    let b: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(16);
    pdevi::bench::solver(&ctx, &[n], &[b], 0.5, |r| {
        println!("{}", serde_json::to_string(r).unwrap())
    })
    .unwrap();
}
