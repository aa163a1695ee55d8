//! File input and output: NumPy `.npy` arrays, plain vectors (text or
//! `.npy`) and the observation CSV that carries the data the inference
//! conditions on.
//!
//! Every reader checks its input fully and reports the first problem as an
//! [`Error`] that names the file, the 1-based line and what to do about it,
//! so a user with a malformed file gets one actionable message instead of
//! a wrong result.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use npyz::{DType, Order, TypeChar, TypeStr, WriterBuilder};

use crate::error::{Error, Result};

/// Coordinates closer than this to a grid node count as on the node.
pub const NODE_TOLERANCE: f64 = 1e-9;

// ---------------------------------------------------------------------------
// .npy
// ---------------------------------------------------------------------------

/// Writes `data` (C order, shape `shape`) as little-endian `<f8`.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f64]) -> Result<()> {
    write_npy_typed(path, shape, data, "<f8")
}

/// Writes `data` (C order, shape `shape`) as little-endian `<f4`.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write_npy_typed(path, shape, data, "<f4")
}

fn write_npy_typed<T>(path: &Path, shape: &[usize], data: &[T], descr: &str) -> Result<()>
where
    T: npyz::Serialize + Copy,
{
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format_err(path, format!("shape {shape:?} overflows the address space")))?;
    if count != data.len() {
        return Err(format_err(
            path,
            format!(
                "shape {shape:?} holds {count} values but {} were given",
                data.len()
            ),
        ));
    }
    let type_str: TypeStr = descr
        .parse()
        .map_err(|e| format_err(path, format!("bad dtype `{descr}`: {e}")))?;
    let shape64: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    crate::output::files::write_atomic(path, |tmp| {
        let file = File::create(tmp).map_err(|e| Error::io(path, e))?;
        let mut out = BufWriter::new(file);
        let mut writer = npyz::WriteOptions::<T>::new()
            .dtype(DType::Plain(type_str))
            .shape(&shape64)
            .writer(&mut out)
            .begin_nd()
            .map_err(|e| Error::io(path, e))?;
        writer
            .extend(data.iter().copied())
            .map_err(|e| Error::io(path, e))?;
        writer.finish().map_err(|e| Error::io(path, e))?;
        out.flush().map_err(|e| Error::io(path, e))
    })
}

/// Reads a `.npy` array as `(shape, values)`, values in C order.
///
/// Accepts floats (`f4`, `f8`), signed and unsigned integers of 1-8 bytes
/// and booleans, in either byte order. 64-bit integers beyond 2^53 lose
/// precision in the conversion to `f64`. Fortran-ordered arrays are refused
/// unless at most one axis is longer than 1 (then both orders coincide).
pub fn read_npy(path: &Path) -> Result<(Vec<usize>, Vec<f64>)> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| Error::io(path, e))?;
    let mut rest: &[u8] = &bytes;
    let header = npyz::NpyHeader::from_reader(&mut rest)
        .map_err(|e| format_err(path, format!("not a valid .npy file: {e}")))?;
    let data_len = rest.len();
    let npy = npyz::NpyFile::with_header(header, rest);

    let shape = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<Vec<usize>, _>>()
        .map_err(|_| format_err(path, "array shape does not fit in memory"))?;
    let long_axes = shape.iter().filter(|&&d| d > 1).count();
    if npy.order() == Order::Fortran && long_axes > 1 {
        return Err(format_err(
            path,
            format!(
                "array of shape {shape:?} is stored in Fortran order; only C order is supported \
                 (save it with numpy.ascontiguousarray(a) first)"
            ),
        ));
    }
    let dtype = npy.dtype();
    let ts = match &dtype {
        DType::Plain(ts) => ts.clone(),
        other => {
            return Err(format_err(
                path,
                format!(
                    "dtype {} is structured; only plain numeric arrays are supported",
                    other.descr()
                ),
            ))
        }
    };
    let item_bytes = ts.num_bytes().unwrap_or(0);
    let expected = shape
        .iter()
        .try_fold(item_bytes, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format_err(path, "array size overflows the address space"))?;
    if data_len < expected {
        return Err(format_err(
            path,
            format!(
                "file is truncated: shape {shape:?} of `{ts}` needs {expected} data bytes but only {} are present",
                data_len
            ),
        ));
    }

    let unsupported = || {
        format_err(
            path,
            format!("dtype `{ts}` is not supported; use float32/float64 (or an integer type)"),
        )
    };
    let bad = |e: std::io::Error| format_err(path, format!("could not decode the data: {e}"));
    let values: Vec<f64> = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 8) => npy.into_vec::<f64>().map_err(bad)?,
        (TypeChar::Float, 4) => widen(npy.into_vec::<f32>().map_err(bad)?),
        (TypeChar::Int, 1) => widen(npy.into_vec::<i8>().map_err(bad)?),
        (TypeChar::Int, 2) => widen(npy.into_vec::<i16>().map_err(bad)?),
        (TypeChar::Int, 4) => widen(npy.into_vec::<i32>().map_err(bad)?),
        (TypeChar::Int, 8) => npy
            .into_vec::<i64>()
            .map_err(bad)?
            .into_iter()
            .map(|v| v as f64)
            .collect(),
        (TypeChar::Uint, 1) => widen(npy.into_vec::<u8>().map_err(bad)?),
        (TypeChar::Uint, 2) => widen(npy.into_vec::<u16>().map_err(bad)?),
        (TypeChar::Uint, 4) => widen(npy.into_vec::<u32>().map_err(bad)?),
        (TypeChar::Uint, 8) => npy
            .into_vec::<u64>()
            .map_err(bad)?
            .into_iter()
            .map(|v| v as f64)
            .collect(),
        (TypeChar::Bool, 1) => npy
            .into_vec::<bool>()
            .map_err(bad)?
            .into_iter()
            .map(|b| if b { 1.0 } else { 0.0 })
            .collect(),
        _ => return Err(unsupported()),
    };
    Ok((shape, values))
}

fn widen<T: Into<f64>>(v: Vec<T>) -> Vec<f64> {
    v.into_iter().map(Into::into).collect()
}

fn format_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------
// Plain vectors
// ---------------------------------------------------------------------------

/// Reads a vector of numbers.
///
/// A `.npy` file must hold a 1-D array (or shape `(1, d)` / `(d, 1)`).
/// Anything else is read as text: numbers separated by commas, whitespace
/// or newlines; `#` starts a comment; the first non-blank line may be a
/// header of non-numeric names. All values must be finite.
pub fn read_vector(path: &Path) -> Result<Vec<f64>> {
    let is_npy = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    if is_npy {
        let (shape, values) = read_npy(path)?;
        let ok = match shape.as_slice() {
            [_] => true,
            [a, b] => *a == 1 || *b == 1,
            _ => false,
        };
        if !ok {
            return Err(format_err(
                path,
                format!(
                    "expected a 1-D array (or shape (1, d) / (d, 1)) but found shape {shape:?}"
                ),
            ));
        }
        if values.is_empty() {
            return Err(format_err(
                path,
                "the array is empty; expected at least one value",
            ));
        }
        if let Some((k, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(format_err(
                path,
                format!("entry {k} is {v}; every value must be finite"),
            ));
        }
        return Ok(values);
    }

    let text = read_text(path)?;
    let mut values = Vec::new();
    let mut seen_content = false;
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        let tokens = split_tokens(line).map_err(|m| input_err(path, line_no, m))?;
        if !seen_content {
            seen_content = true;
            // A header is a first line made only of names.
            if tokens.iter().all(|t| t.parse::<f64>().is_err()) {
                continue;
            }
        }
        for t in tokens {
            let v: f64 = t.parse().map_err(|_| {
                input_err(
                    path,
                    line_no,
                    format!("`{t}` is not a number (only the first line may be a header of names)"),
                )
            })?;
            if !v.is_finite() {
                return Err(input_err(
                    path,
                    line_no,
                    format!("value `{t}` is not finite; every value must be a finite number"),
                ));
            }
            values.push(v);
        }
    }
    if values.is_empty() {
        return Err(input_err(
            path,
            1,
            "no numbers found; expected numbers separated by commas, spaces or newlines",
        ));
    }
    Ok(values)
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        input_err(path, line, "file is not valid UTF-8 text")
    })
}

fn strip_comment(line: &str) -> &str {
    match line.find('#') {
        Some(k) => &line[..k],
        None => line,
    }
}

/// Splits on commas and whitespace; an empty field between two commas is
/// an error rather than silently dropped, since it usually means a value
/// is missing. A single trailing comma is tolerated.
fn split_tokens(line: &str) -> std::result::Result<Vec<&str>, String> {
    let pieces: Vec<&str> = line.split(',').collect();
    let last = pieces.len() - 1;
    let mut tokens = Vec::new();
    for (k, piece) in pieces.iter().enumerate() {
        let piece = piece.trim();
        if piece.is_empty() {
            if k == last && k > 0 {
                continue;
            }
            return Err(format!(
                "empty field (field {} of `{line}`); a value seems to be missing",
                k + 1
            ));
        }
        tokens.extend(piece.split_whitespace());
    }
    Ok(tokens)
}

fn input_err(path: &Path, line: usize, message: impl Into<String>) -> Error {
    Error::Input {
        file: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------
// Observation CSV
// ---------------------------------------------------------------------------

/// One reading at grid node (i, j) (j = 0 for 1-D).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub i: usize,
    pub j: usize,
    pub x: f64,
    pub y: f64,
    pub value: f64,
}

/// The grid observations must lie on: the unit interval (dim 1) or unit
/// square (dim 2) with `n` cells per side, nodes at multiples of h = 1/n.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObsGrid {
    /// 1 or 2.
    pub dim: usize,
    /// Cells per side.
    pub n: usize,
}

impl ObsGrid {
    fn header(&self) -> &'static [&'static str] {
        if self.dim == 1 {
            &["x", "value"]
        } else {
            &["x", "y", "value"]
        }
    }
}

/// Reads the observation CSV: a header row (`x,value` in 1-D, `x,y,value`
/// in 2-D) and one row per reading at an interior grid node.
///
/// Lines starting with `#` are comments; fields may be padded with spaces.
/// Coordinates are snapped to the node they match to within
/// [`NODE_TOLERANCE`]. Rows are returned in file order.
pub fn read_observations(path: &Path, grid: &ObsGrid) -> Result<Vec<Observation>> {
    if grid.dim != 1 && grid.dim != 2 {
        return Err(Error::setting(
            "dim",
            grid.dim,
            "observations need a 1-D or 2-D grid",
        ));
    }
    if grid.n < 2 {
        return Err(Error::setting(
            "n",
            grid.n,
            "the grid needs at least 2 cells per side to have interior nodes",
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    // Spreadsheet exports often start with a UTF-8 byte-order mark.
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let lines = LineIndex::new(body);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(body);

    let expected = grid.header();
    let header_text = expected.join(",");
    let h = 1.0 / grid.n as f64;
    let mut header_line: Option<usize> = None;
    let mut seen: HashMap<(usize, usize), usize> = HashMap::new();
    let mut out = Vec::new();
    let mut record = csv::StringRecord::new();

    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_error(path, &lines, e)),
        }
        let line = record.position().map_or(0, |p| lines.record_line(p.byte()));
        // Fully empty rows (e.g. ",,") carry nothing; skip like blank lines.
        if record.iter().all(str::is_empty) {
            continue;
        }

        if header_line.is_none() {
            check_header(path, line, &record, grid, &header_text)?;
            header_line = Some(line);
            continue;
        }

        if record.len() != expected.len() {
            return Err(input_err(
                path,
                line,
                format!(
                    "expected {} columns ({header_text}) but found {}: `{}`",
                    expected.len(),
                    record.len(),
                    record.iter().collect::<Vec<_>>().join(",")
                ),
            ));
        }
        let mut nums = [0.0f64; 3];
        for (k, field) in record.iter().enumerate() {
            nums[k] = parse_field(path, line, expected[k], field)?;
        }

        let mut idx = [0usize; 2];
        for k in 0..grid.dim {
            idx[k] = grid_index(path, line, expected[k], nums[k], grid.n, h)?;
        }
        let value = nums[grid.dim];
        let (x, y) = if grid.dim == 1 {
            (nums[0], 0.0)
        } else {
            (nums[0], nums[1])
        };
        let on_boundary = idx[..grid.dim].iter().any(|&k| k == 0 || k == grid.n);
        if on_boundary {
            return Err(input_err(
                path,
                line,
                format!(
                    "point {} lies on the boundary, where u = 0 is prescribed, so it carries no \
                     information; remove this row",
                    point_text(grid.dim, x, y)
                ),
            ));
        }
        let key = (idx[0], idx[1]);
        if let Some(first) = seen.insert(key, line) {
            return Err(input_err(
                path,
                line,
                format!(
                    "duplicate point {}: it was already given on line {first}; keep one row per point \
                     (average repeated readings first)",
                    point_text(grid.dim, x, y)
                ),
            ));
        }
        let n = grid.n as f64;
        out.push(Observation {
            i: idx[0],
            j: idx[1],
            x: idx[0] as f64 / n,
            y: if grid.dim == 1 {
                0.0
            } else {
                idx[1] as f64 / n
            },
            value,
        });
    }

    match header_line {
        None => Err(input_err(
            path,
            1,
            format!("the file is empty; expected the header `{header_text}` followed by one row per reading"),
        )),
        Some(line) if out.is_empty() => Err(input_err(
            path,
            line,
            format!("no data rows after the header; add one row `{header_text}` per reading"),
        )),
        Some(_) => Ok(out),
    }
}

fn check_header(
    path: &Path,
    line: usize,
    record: &csv::StringRecord,
    grid: &ObsGrid,
    header_text: &str,
) -> Result<()> {
    let expected = grid.header();
    if record.iter().all(|f| f.parse::<f64>().is_ok()) {
        return Err(input_err(
            path,
            line,
            format!(
                "missing header: the first row `{}` is numeric; add the line `{header_text}` at the top",
                record.iter().collect::<Vec<_>>().join(",")
            ),
        ));
    }
    let names: Vec<String> = record.iter().map(|f| f.to_ascii_lowercase()).collect();
    if names
        .iter()
        .map(String::as_str)
        .eq(expected.iter().copied())
    {
        return Ok(());
    }
    let found = record.iter().collect::<Vec<_>>().join(",");
    let hint = match (grid.dim, record.len()) {
        (2, 2) => " (this looks like a 1-D file, but the problem is 2-D)",
        (1, 3) => " (this looks like a 2-D file, but the problem is 1-D)",
        _ => "",
    };
    Err(input_err(
        path,
        line,
        format!(
            "wrong header `{found}`{hint}; a {}-D problem expects the header `{header_text}`",
            grid.dim
        ),
    ))
}

fn parse_field(path: &Path, line: usize, column: &str, field: &str) -> Result<f64> {
    if field.is_empty() {
        return Err(input_err(
            path,
            line,
            format!("column `{column}` is empty; every row needs a number there"),
        ));
    }
    let v: f64 = field.parse().map_err(|_| {
        input_err(
            path,
            line,
            format!(
                "column `{column}`: \"{field}\" is not a number; write a plain number such as 0.25 or 1e-3"
            ),
        )
    })?;
    if v.is_nan() {
        return Err(input_err(
            path,
            line,
            format!("column `{column}` is NaN (\"{field}\"); fix or remove this row"),
        ));
    }
    if v.is_infinite() {
        return Err(input_err(
            path,
            line,
            format!(
                "column `{column}` is infinite (\"{field}\"); every value must be a finite number"
            ),
        ));
    }
    Ok(v)
}

/// Maps a coordinate to its node index, or explains why it has none.
fn grid_index(path: &Path, line: usize, name: &str, c: f64, n: usize, h: f64) -> Result<usize> {
    if !(-NODE_TOLERANCE..=1.0 + NODE_TOLERANCE).contains(&c) {
        return Err(input_err(
            path,
            line,
            format!("{name} = {c} is outside the domain [0, 1]; move or remove this row"),
        ));
    }
    // In range, so the rounded index is within 0..=n.
    let k = (c * n as f64).round().clamp(0.0, n as f64) as usize;
    let node = k as f64 / n as f64;
    if (c - node).abs() > NODE_TOLERANCE {
        return Err(input_err(
            path,
            line,
            format!(
                "{name} = {c} is not on a grid node: the nearest node is {name} = {node} (index {k}); \
                 nodes are multiples of h = 1/{n} = {h} (to within {NODE_TOLERANCE:e}), so move the \
                 reading to a node or remove this row"
            ),
        ));
    }
    Ok(k)
}

/// Physical line numbers for csv records. The csv crate reports where it
/// *started* reading a record, which is before any blank or comment lines
/// it skipped, so its own line numbers can point at a comment.
struct LineIndex<'a> {
    text: &'a [u8],
    /// Byte offset of the start of each line.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a [u8]) -> Self {
        let mut starts = vec![0];
        starts.extend(
            text.iter()
                .enumerate()
                .filter(|(_, &b)| b == b'\n')
                .map(|(k, _)| k + 1),
        );
        LineIndex { text, starts }
    }

    /// 1-based line of the first non-blank, non-comment line at or after `byte`.
    fn record_line(&self, byte: u64) -> usize {
        let mut pos = usize::try_from(byte)
            .unwrap_or(usize::MAX)
            .min(self.text.len());
        while pos < self.text.len() {
            let end = self.text[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(self.text.len(), |k| pos + k);
            let line = &self.text[pos..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !(line.is_empty() || line[0] == b'#') {
                break;
            }
            pos = end + 1;
        }
        // Number of line starts at or before `pos` = 1-based line number.
        self.starts.partition_point(|&s| s <= pos).max(1)
    }
}

fn point_text(dim: usize, x: f64, y: f64) -> String {
    if dim == 1 {
        format!("x = {x}")
    } else {
        format!("(x, y) = ({x}, {y})")
    }
}

fn csv_error(path: &Path, lines: &LineIndex, e: csv::Error) -> Error {
    let line = e.position().map_or(0, |p| lines.record_line(p.byte()));
    match e.into_kind() {
        csv::ErrorKind::Io(io) => Error::io(path, io),
        csv::ErrorKind::Utf8 { err, .. } => input_err(
            path,
            line,
            format!("field {} is not valid UTF-8 text", err.field() + 1),
        ),
        other => input_err(path, line, format!("could not parse CSV: {other:?}")),
    }
}

/// Writes observations as CSV (header, then one row per reading), with
/// numbers in shortest round-trip form so reading them back is exact.
pub fn write_observations(path: &Path, dim: usize, obs: &[Observation]) -> Result<()> {
    if dim != 1 && dim != 2 {
        return Err(Error::setting(
            "dim",
            dim,
            "observations need a 1-D or 2-D grid",
        ));
    }
    for (k, o) in obs.iter().enumerate() {
        if !(o.x.is_finite() && o.y.is_finite() && o.value.is_finite()) {
            return Err(format_err(
                path,
                format!("observation {k} has a non-finite entry ({o:?}); cannot write it"),
            ));
        }
    }
    let mut text = String::with_capacity(32 * (obs.len() + 1));
    text.push_str(if dim == 1 { "x,value\n" } else { "x,y,value\n" });
    for o in obs {
        text.push_str(&fmt_exact(o.x));
        if dim == 2 {
            text.push(',');
            text.push_str(&fmt_exact(o.y));
        }
        text.push(',');
        text.push_str(&fmt_exact(o.value));
        text.push('\n');
    }
    crate::output::files::write_bytes(path, text.as_bytes())
}

/// Shortest text that parses back to exactly `v`; plain notation for
/// moderate magnitudes (readable), scientific otherwise (compact).
fn fmt_exact(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 || (1e-4..1e15).contains(&a) {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

// ---------------------------------------------------------------------------
// .safetensors
// ---------------------------------------------------------------------------

/// Writes f32 tensors `(name, shape, values)` and string metadata as one
/// `.safetensors` file, atomically, creating the parent folder.
pub fn write_safetensors_f32(
    path: &Path,
    tensors: &[(String, Vec<usize>, &[f64])],
    meta: HashMap<String, String>,
) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| format_err(path, format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            crate::output::files::ensure_dir(dir)?;
        }
    }
    crate::output::files::write_atomic(path, |tmp| {
        safetensors::serialize_to_file(views, Some(meta), tmp)
            .map_err(|e| format_err(path, format!("writing safetensors: {e}")))
    })
}

/// Reads a `.safetensors` file written by [`write_safetensors_f32`] and
/// checks its metadata `format`: (the file's bytes, its metadata). A wrong
/// format says the file is not `what` and how to write one (`how`).
pub fn read_safetensors_checked(
    path: &Path,
    format: &str,
    what: &str,
    how: &str,
) -> Result<(Vec<u8>, HashMap<String, String>)> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&data)
        .map_err(|e| format_err(path, format!("not a safetensors file: {e}")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(format) {
        return Err(format_err(
            path,
            format!(
                "not {what} (metadata format is {:?}, expected {format:?}); write one with `{how}`",
                meta.get("format")
            ),
        ));
    }
    Ok((data, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    fn temp_path(ext: &str) -> PathBuf {
        let k = COUNTER.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("pdevi_io_test_{}_{k}.{ext}", std::process::id()))
    }

    fn write_temp(ext: &str, content: &str) -> PathBuf {
        let p = temp_path(ext);
        std::fs::write(&p, content).unwrap();
        p
    }

    const G2: ObsGrid = ObsGrid { dim: 2, n: 4 };
    const G1: ObsGrid = ObsGrid { dim: 1, n: 8 };

    /// Reads `content` as an observation file and returns (line, message).
    fn obs_err(grid: &ObsGrid, content: &str) -> (usize, String) {
        let p = write_temp("csv", content);
        let r = read_observations(&p, grid);
        std::fs::remove_file(&p).ok();
        match r {
            Err(Error::Input {
                line,
                message,
                file,
            }) => {
                assert_eq!(file, p);
                (line, message)
            }
            other => panic!("expected Error::Input, got {other:?}"),
        }
    }

    fn assert_obs_err(grid: &ObsGrid, content: &str, line: usize, needle: &str) {
        let (l, m) = obs_err(grid, content);
        assert!(m.contains(needle), "message `{m}` lacks `{needle}`");
        assert_eq!(l, line, "wrong line for message `{m}`");
    }

    #[test]
    fn obs_missing_file_is_io_error() {
        let p = temp_path("csv");
        match read_observations(&p, &G2) {
            Err(Error::Io { path, .. }) => assert_eq!(path, p),
            other => panic!("expected Io, got {other:?}"),
        }
    }

    #[test]
    fn obs_empty_file() {
        assert_obs_err(&G2, "", 1, "file is empty");
        assert_obs_err(&G2, "\n# only a comment\n\n", 1, "file is empty");
    }

    #[test]
    fn obs_missing_header() {
        assert_obs_err(&G2, "0.25,0.5,1.0\n", 1, "missing header");
        let (_, m) = obs_err(&G2, "0.25,0.5,1.0\n");
        assert!(m.contains("x,y,value"));
    }

    #[test]
    fn obs_wrong_header() {
        assert_obs_err(
            &G2,
            "a,b,c\n0.25,0.5,1\n",
            1,
            "expects the header `x,y,value`",
        );
        assert_obs_err(&G2, "x,value\n0.25,1\n", 1, "looks like a 1-D file");
        assert_obs_err(&G1, "x,y,value\n", 1, "expects the header `x,value`");
        // Case and padding are forgiven.
        let p = write_temp("csv", " X , Y ,Value\n0.25,0.5,1\n");
        assert_eq!(read_observations(&p, &G2).unwrap().len(), 1);
        std::fs::remove_file(&p).ok();
    }

    #[test]
    fn obs_wrong_column_count() {
        assert_obs_err(
            &G2,
            "x,y,value\n0.25,0.5,1\n0.5,0.5\n",
            3,
            "expected 3 columns",
        );
        assert_obs_err(&G1, "x,value\n0.25,1,2\n", 2, "but found 3");
    }

    #[test]
    fn obs_not_a_number() {
        assert_obs_err(&G2, "x,y,value\n0.25,abc,1\n", 2, "\"abc\" is not a number");
        assert_obs_err(&G2, "x,y,value\n0.25,,1\n", 2, "column `y` is empty");
    }

    #[test]
    fn obs_non_finite() {
        assert_obs_err(&G2, "x,y,value\n0.25,0.5,nan\n", 2, "column `value` is NaN");
        assert_obs_err(
            &G2,
            "x,y,value\n# c\n0.25,0.5,1\n0.5,0.5,-inf\n",
            4,
            "is infinite",
        );
        assert_obs_err(&G1, "x,value\nNaN,1\n", 2, "column `x` is NaN");
    }

    #[test]
    fn obs_outside_domain() {
        assert_obs_err(
            &G2,
            "x,y,value\n1.25,0.5,1\n",
            2,
            "x = 1.25 is outside the domain",
        );
        assert_obs_err(&G2, "x,y,value\n0.5,-0.25,1\n", 2, "y = -0.25 is outside");
    }

    #[test]
    fn obs_off_grid() {
        let (l, m) = obs_err(&G2, "x,y,value\n0.25,0.5,1\n0.3,0.5,1\n");
        assert_eq!(l, 3);
        assert!(m.contains("x = 0.3 is not on a grid node"), "{m}");
        assert!(m.contains("nearest node is x = 0.25"), "{m}");
        assert!(m.contains("h = 1/4 = 0.25"), "{m}");
        // Within tolerance is fine and gets snapped.
        let p = write_temp("csv", "x,y,value\n0.2500000000001,0.5,1\n");
        let obs = read_observations(&p, &G2).unwrap();
        assert_eq!((obs[0].i, obs[0].j, obs[0].x), (1, 2, 0.25));
        std::fs::remove_file(&p).ok();
    }

    #[test]
    fn obs_boundary() {
        assert_obs_err(&G2, "x,y,value\n0,0.5,1\n", 2, "lies on the boundary");
        assert_obs_err(&G2, "x,y,value\n0.5,1.0,1\n", 2, "(x, y) = (0.5, 1)");
        assert_obs_err(&G1, "x,value\n1,2\n", 2, "x = 1 lies on the boundary");
    }

    #[test]
    fn obs_duplicate() {
        assert_obs_err(
            &G2,
            "x,y,value\n0.25,0.5,1\n0.75,0.5,1\n0.25,0.50000000000001,2\n",
            4,
            "already given on line 2",
        );
    }

    #[test]
    fn obs_no_data_rows() {
        assert_obs_err(&G2, "# comment\nx,y,value\n", 2, "no data rows");
    }

    #[test]
    fn obs_line_numbers_skip_blank_and_comment_lines() {
        assert_obs_err(
            &G2,
            "\u{feff}# data\n\nx,y,value\n\n# more\n0.25,0.5,1\r\n\r\n0.5,0.3,2\n",
            8,
            "y = 0.3 is not on a grid node",
        );
        assert_obs_err(&G2, "# a\n\n0.25,0.5,1\n", 3, "missing header");
    }

    #[test]
    fn obs_bad_grid_is_setting_error() {
        let p = write_temp("csv", "x,value\n0.5,1\n");
        assert!(matches!(
            read_observations(&p, &ObsGrid { dim: 3, n: 4 }),
            Err(Error::Setting { .. })
        ));
        std::fs::remove_file(&p).ok();
    }

    #[test]
    fn obs_round_trip_2d() {
        let n = 16;
        let obs: Vec<Observation> = [
            (1usize, 2usize, 0.1f64),
            (5, 3, -1.0 / 3.0),
            (15, 15, 1e-300),
        ]
        .iter()
        .map(|&(i, j, v)| Observation {
            i,
            j,
            x: i as f64 / n as f64,
            y: j as f64 / n as f64,
            value: v,
        })
        .collect();
        let p = temp_path("csv");
        write_observations(&p, 2, &obs).unwrap();
        let back = read_observations(&p, &ObsGrid { dim: 2, n }).unwrap();
        std::fs::remove_file(&p).ok();
        assert_eq!(back, obs);
    }

    #[test]
    fn obs_round_trip_1d() {
        let n = 10;
        let obs: Vec<Observation> = (1..n)
            .map(|i| Observation {
                i,
                j: 0,
                x: i as f64 / n as f64,
                y: 0.0,
                value: (i as f64 * 0.7).sin() * 1e5 + 1.0 / 7.0,
            })
            .collect();
        let p = temp_path("csv");
        write_observations(&p, 1, &obs).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("x,value\n"));
        let back = read_observations(&p, &ObsGrid { dim: 1, n }).unwrap();
        std::fs::remove_file(&p).ok();
        assert_eq!(back, obs);
    }

    #[test]
    fn npy_round_trip_f64_and_f32() {
        let p = temp_path("npy");
        let data: Vec<f64> = (0..6).map(|k| k as f64 / 3.0 - 1e-300).collect();
        write_npy(&p, &[2, 3], &data).unwrap();
        let header = std::fs::read(&p).unwrap();
        assert!(String::from_utf8_lossy(&header[..80]).contains("'<f8'"));
        assert_eq!(read_npy(&p).unwrap(), (vec![2, 3], data));

        let data32: Vec<f32> = vec![1.5, -2.25, 1e-30, 3.0e30];
        write_npy_f32(&p, &[4], &data32).unwrap();
        let header = std::fs::read(&p).unwrap();
        assert!(String::from_utf8_lossy(&header[..80]).contains("'<f4'"));
        let (shape, back) = read_npy(&p).unwrap();
        assert_eq!(shape, vec![4]);
        assert_eq!(back, data32.iter().map(|&v| v as f64).collect::<Vec<_>>());
        std::fs::remove_file(&p).ok();
    }

    #[test]
    fn npy_shape_mismatch_and_bad_files() {
        let p = temp_path("npy");
        assert!(matches!(
            write_npy(&p, &[2, 2], &[1.0, 2.0, 3.0]),
            Err(Error::Format { .. })
        ));
        std::fs::write(&p, b"not numpy at all").unwrap();
        match read_npy(&p) {
            Err(Error::Format { message, .. }) => assert!(message.contains("not a valid .npy")),
            other => panic!("{other:?}"),
        }
        // Truncated data.
        write_npy(&p, &[4], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 8]).unwrap();
        match read_npy(&p) {
            Err(Error::Format { message, .. }) => assert!(message.contains("truncated")),
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(&p).ok();
        assert!(matches!(read_npy(&p), Err(Error::Io { .. })));
    }

    #[test]
    fn npy_fortran_refused_and_ints_accepted() {
        let p = temp_path("npy");
        {
            let mut out = File::create(&p).unwrap();
            let mut w = npyz::WriteOptions::new()
                .default_dtype()
                .order(Order::Fortran)
                .shape(&[2, 3])
                .writer(&mut out)
                .begin_nd()
                .unwrap();
            w.extend([1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
            w.finish().unwrap();
        }
        match read_npy(&p) {
            Err(Error::Format { message, .. }) => assert!(message.contains("Fortran order")),
            other => panic!("{other:?}"),
        }
        {
            let mut out = File::create(&p).unwrap();
            let mut w = npyz::WriteOptions::new()
                .default_dtype()
                .shape(&[3])
                .writer(&mut out)
                .begin_nd()
                .unwrap();
            w.extend([-1i32, 0, 7]).unwrap();
            w.finish().unwrap();
        }
        assert_eq!(read_npy(&p).unwrap(), (vec![3], vec![-1.0, 0.0, 7.0]));
        std::fs::remove_file(&p).ok();
    }

    #[test]
    fn read_vector_npy() {
        let p = temp_path("npy");
        write_npy(&p, &[1, 3], &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(read_vector(&p).unwrap(), vec![1.0, 2.0, 3.0]);
        write_npy(&p, &[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!(matches!(read_vector(&p), Err(Error::Format { .. })));
        write_npy(&p, &[2], &[1.0, f64::NAN]).unwrap();
        match read_vector(&p) {
            Err(Error::Format { message, .. }) => assert!(message.contains("entry 1 is NaN")),
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(&p).ok();
    }

    #[test]
    fn read_vector_text() {
        let p = write_temp("csv", "theta\n1.5, 2\n\n-3e-2 4 # note\n5,\n");
        assert_eq!(read_vector(&p).unwrap(), vec![1.5, 2.0, -0.03, 4.0, 5.0]);
        std::fs::remove_file(&p).ok();

        let p = write_temp("txt", "1\n2\nabc\n");
        match read_vector(&p) {
            Err(Error::Input { line, message, .. }) => {
                assert_eq!(line, 3);
                assert!(message.contains("`abc` is not a number"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(&p).ok();

        let p = write_temp("txt", "1 2\n3 inf\n");
        match read_vector(&p) {
            Err(Error::Input { line, message, .. }) => {
                assert_eq!(line, 2);
                assert!(message.contains("`inf` is not finite"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(&p).ok();

        let p = write_temp("txt", "1,,2\n");
        match read_vector(&p) {
            Err(Error::Input { line, message, .. }) => {
                assert_eq!(line, 1);
                assert!(message.contains("empty field"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(&p).ok();

        let p = write_temp("txt", "# nothing\n\n");
        assert!(matches!(read_vector(&p), Err(Error::Input { .. })));
        std::fs::remove_file(&p).ok();
    }
}
