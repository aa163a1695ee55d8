//! Progress bars for long loops (training, sampling, calibration).

/// A progress bar of `len` units (hidden when `quiet`); `units` is the
/// rest of the template after the position, e.g. `"steps  {per_sec}  {msg}"`.
pub fn progress_bar(len: usize, quiet: bool, units: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {units}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}
