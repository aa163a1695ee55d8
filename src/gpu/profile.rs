//! `--profile`: GPU timestamps between the sections of a step (where the
//! device has timestamp queries inside command encoders), summed over the
//! run and reported per section with its share of the step. Timestamps are
//! resolved into a buffer with the step's commands and read back only at
//! the loop's existing read-backs, so profiling adds no round trip.

use super::GpuContext;
use crate::error::Result;

/// Marks per batch of steps between read-backs (the query set's size).
const CAPACITY: u32 = 1024;

/// Section timings of a loop, from GPU timestamps.
pub struct Profiler {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    /// The label each mark closes (the time since the previous mark).
    labels: Vec<&'static str>,
    /// Marks written since the last read-back; `starts` are the indices
    /// that open a step (no section before them).
    used: u32,
    starts: Vec<u32>,
    /// Seconds per section label, summed, in first-seen order.
    pub totals: Vec<(&'static str, f64)>,
    pub steps: usize,
    period_ns: f64,
}

impl Profiler {
    /// `None` when the device cannot write timestamps inside encoders.
    pub fn new(ctx: &GpuContext) -> Option<Self> {
        let need =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        if !ctx.device.features().contains(need) {
            return None;
        }
        let queries = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("pdevi.profile"),
            ty: wgpu::QueryType::Timestamp,
            count: CAPACITY,
        });
        let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("pdevi.profile.resolve"),
            size: CAPACITY as u64 * 8,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Some(Profiler {
            queries,
            resolve,
            labels: Vec::new(),
            used: 0,
            starts: Vec::new(),
            totals: Vec::new(),
            steps: 0,
            period_ns: ctx.queue.get_timestamp_period() as f64,
        })
    }

    /// Open a step: the next mark starts its first section.
    pub fn begin(&mut self, enc: &mut wgpu::CommandEncoder) {
        if self.used + 16 > CAPACITY {
            // Too many marks before a read-back: skip this step's timings.
            return;
        }
        self.starts.push(self.used);
        self.mark(enc, "");
        self.steps += 1;
    }

    /// Close the section `label` (time since the previous mark).
    pub fn mark(&mut self, enc: &mut wgpu::CommandEncoder, label: &'static str) {
        if self.used >= CAPACITY || self.starts.is_empty() {
            return;
        }
        enc.write_timestamp(&self.queries, self.used);
        self.labels.push(label);
        self.used += 1;
    }

    /// Resolve this batch's marks (record after the last step's marks).
    pub fn resolve(&self, enc: &mut wgpu::CommandEncoder) {
        if self.used > 0 {
            enc.resolve_query_set(&self.queries, 0..self.used, &self.resolve, 0);
        }
    }

    /// Read the resolved marks back (at a read-back) and add them up.
    pub fn collect(&mut self, ctx: &GpuContext) -> Result<()> {
        if self.used == 0 {
            return Ok(());
        }
        let ticks: Vec<u64> = ctx.read(&self.resolve, 0, self.used as usize)?;
        for i in 1..self.used as usize {
            if self.starts.contains(&(i as u32)) {
                continue;
            }
            let dt = ticks[i].wrapping_sub(ticks[i - 1]) as f64 * self.period_ns * 1e-9;
            // A clock that goes backwards (a driver quirk) is not counted.
            if !(0.0..1e3).contains(&dt) {
                continue;
            }
            let label = self.labels[i];
            match self.totals.iter_mut().find(|(l, _)| *l == label) {
                Some((_, s)) => *s += dt,
                None => self.totals.push((label, dt)),
            }
        }
        self.used = 0;
        self.labels.clear();
        self.starts.clear();
        Ok(())
    }

    /// The sections as JSON (seconds, share of the profiled time, seconds
    /// per step) and as a table for people.
    pub fn report(&self) -> (serde_json::Value, String) {
        let total: f64 = self.totals.iter().map(|(_, s)| s).sum();
        let steps = self.steps.max(1) as f64;
        let mut table = format!(
            "{:<44} {:>10} {:>12} {:>7}\n",
            "section (GPU timestamps)", "seconds", "ms / step", "share"
        );
        let rows: Vec<serde_json::Value> = self
            .totals
            .iter()
            .map(|(l, s)| {
                let share = s / total.max(1e-300);
                table.push_str(&format!(
                    "{l:<44} {s:>10.3} {:>12.3} {:>6.1}%\n",
                    1e3 * s / steps,
                    100.0 * share
                ));
                serde_json::json!({ "section": l, "seconds": s, "share": share, "ms_per_step": 1e3 * s / steps })
            })
            .collect();
        table.push_str(&format!(
            "{:<44} {total:>10.3} {:>12.3}\n",
            "total",
            1e3 * total / steps
        ));
        (
            serde_json::json!({ "timestamps": true, "steps": self.steps, "seconds": total, "sections": rows }),
            table,
        )
    }
}

/// The table of a profile written by [`Profiler::report`] (for commands
/// that keep only the JSON).
pub fn table(v: &serde_json::Value) -> String {
    let steps = v["steps"].as_u64().unwrap_or(1).max(1) as f64;
    let mut t = format!(
        "{:<44} {:>10} {:>12} {:>7}\n",
        "section (GPU timestamps)", "seconds", "ms / step", "share"
    );
    for s in v["sections"].as_array().into_iter().flatten() {
        let secs = s["seconds"].as_f64().unwrap_or(0.0);
        t.push_str(&format!(
            "{:<44} {secs:>10.3} {:>12.3} {:>6.1}%\n",
            s["section"].as_str().unwrap_or("?"),
            1e3 * secs / steps,
            100.0 * s["share"].as_f64().unwrap_or(0.0)
        ));
    }
    let total = v["seconds"].as_f64().unwrap_or(0.0);
    t.push_str(&format!(
        "{:<44} {total:>10.3} {:>12.3}\n",
        "total",
        1e3 * total / steps
    ));
    t
}
