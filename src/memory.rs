//! Sizes before allocation: what a request needs on the host, checked
//! against the machine's memory before anything is allocated, so an
//! oversized request exits with the figure, the limit and what to change
//! instead of aborting in the allocator. (Device buffers are checked
//! against the adapter's limits by [`crate::gpu::GpuContext::storage`].)

use crate::error::{Error, Result};

/// This machine's memory in bytes (Linux: /proc/meminfo; elsewhere 16 GiB
/// is assumed).
pub fn host_total() -> u64 {
    meminfo("MemTotal:").unwrap_or(16 << 30)
}

/// Memory available to a new allocation now (Linux: MemAvailable).
pub fn host_available() -> u64 {
    meminfo("MemAvailable:").unwrap_or_else(|| host_total() / 2)
}

fn meminfo(key: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    })
}

/// Bytes for people: 1.5 GiB, 12.0 MiB, 512 B.
pub fn fmt_bytes(b: u128) -> String {
    const K: f64 = 1024.0;
    let f = b as f64;
    if f >= K * K * K {
        format!("{:.1} GiB", f / (K * K * K))
    } else if f >= K * K {
        format!("{:.1} MiB", f / (K * K))
    } else if f >= K {
        format!("{:.1} KiB", f / K)
    } else {
        format!("{b} B")
    }
}

/// Refuse `bytes` of host memory for `what` when they exceed half of this
/// machine's memory; `setting`/`value` name the flag to change and `hint`
/// says how.
pub fn check_host(
    setting: &str,
    value: impl std::fmt::Display,
    what: &str,
    bytes: u128,
    hint: &str,
) -> Result<()> {
    let total = host_total() as u128;
    let limit = total / 2;
    if bytes > limit {
        return Err(Error::setting(
            setting,
            value,
            format!(
                "{what} needs {} of host memory, more than half of this machine's {}; {hint}",
                fmt_bytes(bytes),
                fmt_bytes(total)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_host_requests_are_refused_with_the_figure() {
        let e = check_host(
            "count",
            1u64 << 40,
            "the training set",
            1u128 << 60,
            "use a smaller --count",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("count") && e.contains("GiB") && e.contains("--count"),
            "{e}"
        );
        check_host("count", 10, "a small set", 1 << 20, "").unwrap();
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(3 << 20), "3.0 MiB");
    }
}
