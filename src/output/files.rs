//! Folders and JSON files: the one place the engine creates directories and
//! writes JSON, so every file error names its path the same way.

use std::path::Path;

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
