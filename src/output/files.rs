//! Folders and files: the one place the engine creates directories and
//! writes output files, so every file error names its path the same way,
//! and every file appears whole or not at all: it is written to a
//! temporary sibling and renamed over the target, so a crash or a kill
//! never leaves a half-written `.npy`, PNG, JSON or safetensors file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// Create `dir` (and parents).
pub fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// A temporary sibling of `path` (same folder, so the rename is atomic):
/// `.<name>.tmp-<pid>-<k>`.
pub fn temp_sibling(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let k = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp-{}-{k}", std::process::id()))
}

/// Write `path` whole or not at all: `write` fills a temporary sibling,
/// which is then renamed over `path`. On any error the temporary file is
/// removed and an existing `path` is left as it was.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    write_atomic_checked(path, write, || Ok(()))
}

/// [`write_atomic`] with a step between writing and renaming (a test
/// interrupts there to show the old file survives).
pub fn write_atomic_checked(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<()>,
    before_rename: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let tmp = temp_sibling(path);
    let result = write(&tmp)
        .and_then(|()| before_rename())
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Write bytes to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| Error::io(path, e))
    })
}

/// Write `value` as pretty JSON with a trailing newline (atomically).
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Format {
        path: path.into(),
        message: format!("could not encode JSON: {e}"),
    })?;
    write_bytes(path, (text + "\n").as_bytes())
}

/// Read a JSON file into `T`; a parse error names the file, the line and
/// `what` the file should have been.
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Input {
        file: path.into(),
        line: e.line(),
        message: format!("not {what}: {e}"),
    })
}

/// Refuse a description whose `format` tag is not `want`.
pub fn check_format(path: &Path, got: &str, want: &str) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::Format {
            path: path.into(),
            message: format!("format is {got:?}, expected {want:?}"),
        })
    }
}

/// Write an RGB image as PNG (atomically).
pub fn write_png(path: &Path, img: &image::RgbImage) -> Result<()> {
    write_atomic(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|e| match e {
                image::ImageError::IoError(io) => Error::io(path, io),
                other => Error::Format {
                    path: path.into(),
                    message: format!("could not write PNG: {other}"),
                },
            })
    })
}

/// Name of the lock file in an output folder.
pub const LOCK_NAME: &str = ".pdevi.lock";

/// One process writing an output folder: two runs into the same `--out`
/// at once are refused, naming the other process. Removed on drop; a lock
/// left by a process that no longer runs (killed) is taken over.
#[derive(Debug)]
pub struct OutLock {
    path: PathBuf,
}

impl OutLock {
    pub fn acquire(dir: &Path) -> Result<OutLock> {
        ensure_dir(dir)?;
        let path = dir.join(LOCK_NAME);
        let me = format!(
            "pid {}\ncommand {}\n",
            std::process::id(),
            std::env::args().collect::<Vec<_>>().join(" ")
        );
        for _ in 0..3 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(me.as_bytes())
                        .map_err(|e| Error::io(&path, e))?;
                    return Ok(OutLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let pid = text
                        .lines()
                        .find_map(|l| l.strip_prefix("pid "))
                        .and_then(|p| p.trim().parse::<u32>().ok());
                    match pid {
                        Some(p) if p != std::process::id() && process_alive(p) => {
                            let cmd = text
                                .lines()
                                .find_map(|l| l.strip_prefix("command "))
                                .unwrap_or("?");
                            return Err(Error::setting(
                                "out",
                                dir.display(),
                                format!(
                                    "another pdevi (pid {p}: `{cmd}`) is writing this folder; wait for it, \
                                     choose another --out, or remove {} if that process is gone",
                                    path.display()
                                ),
                            ));
                        }
                        // Stale (its process is gone) or ours: take it over.
                        _ => {
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Err(Error::setting(
            "out",
            dir.display(),
            format!("could not take the lock {}", path.display()),
        ))
    }
}

impl Drop for OutLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether process `pid` runs (Linux: /proc; elsewhere assumed to run, so
/// a stale lock there is removed by hand, as the message says).
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pdevi-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_interrupted_write_leaves_the_old_file() {
        let d = tmp("atomic");
        let p = d.join("posterior_mean_xi.npy");
        std::fs::write(&p, b"old contents").unwrap();
        let e = write_atomic_checked(
            &p,
            |t| std::fs::write(t, b"new, half written").map_err(|e| Error::io(t, e)),
            || {
                Err(Error::setting(
                    "test",
                    "kill",
                    "interrupted before the rename",
                ))
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("interrupted"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old contents");
        let left: Vec<_> = std::fs::read_dir(&d).unwrap().collect();
        assert_eq!(left.len(), 1, "the temporary file is removed: {left:?}");
        write_bytes(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_second_writer_is_refused_and_a_stale_lock_taken_over() {
        let d = tmp("lock");
        let a = OutLock::acquire(&d).unwrap();
        // A live process that is not us holds it: pid 1 (init) always runs.
        std::fs::write(d.join(LOCK_NAME), "pid 1\ncommand pdevi run --out x\n").unwrap();
        let e = OutLock::acquire(&d).unwrap_err().to_string();
        assert!(
            e.contains("pid 1") && e.contains("pdevi run --out x"),
            "{e}"
        );
        drop(a);
        // A process that no longer runs: taken over.
        std::fs::write(d.join(LOCK_NAME), "pid 4000000000\ncommand gone\n").unwrap();
        let b = OutLock::acquire(&d).unwrap();
        assert!(std::fs::read_to_string(d.join(LOCK_NAME))
            .unwrap()
            .contains(&format!("pid {}", std::process::id())));
        drop(b);
        assert!(!d.join(LOCK_NAME).exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
