//! Ctrl-C: the first SIGINT asks the running loop to stop after its current
//! step (it then writes the outputs of the last good state, marked as
//! interrupted, and a checkpoint, and the command exits non-zero); a second
//! SIGINT exits at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

static REQUESTED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// Exit status after a second Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_NOW: i32 = 130;

/// Install the handler (once per process; the binary calls this first).
pub fn install() {
    INSTALL.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if REQUESTED.swap(true, Ordering::SeqCst) {
                eprintln!("\ninterrupted again: exiting now");
                std::process::exit(EXIT_NOW);
            }
            eprintln!(
                "\ninterrupt: finishing the current step, then writing the outputs and a checkpoint (Ctrl-C again to exit now)"
            );
        });
    });
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Ask for a stop as Ctrl-C does (tests, and library users with their own
/// signal handling).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Forget a stop request (a library user starting another run).
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
}
