//! Folders and JSON files: the one place the engine creates directories and
//! writes JSON, so every file error names its path the same way.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// Create `dir` (and parents).
pub fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// Write `value` as pretty JSON with a trailing newline.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Format {
        path: path.into(),
        message: format!("could not encode JSON: {e}"),
    })?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
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

/// Write an RGB image as PNG.
pub fn write_png(path: &Path, img: &image::RgbImage) -> Result<()> {
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| match e {
            image::ImageError::IoError(io) => Error::io(path, io),
            other => Error::Format {
                path: path.into(),
                message: format!("could not write PNG: {other}"),
            },
        })
}
