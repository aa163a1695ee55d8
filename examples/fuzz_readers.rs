//! Fuzzes every file reader of pdevi with random and mutated inputs for a
//! while and counts what happens: each input must be accepted or rejected
//! with an error that names the file; a panic, or a rejection that does not
//! say which file is wrong, is a failure, and so is a crash of the process
//! (an abort, e.g. on a huge allocation asked for by a file).
//!
//!     cargo run --release --example fuzz_readers -- --minutes M [--seed S] [--only NAME]
//!
//! Readers: the observation CSV (`read_obs`, darcy2d and poisson1d), the
//! run config (`RunConfig::load`), `.npy` arrays (`read_npy`), vectors
//! (`read_vector`, `.npy` and text), training sets (`SimSet::load`), MLP
//! weights (`load_weights`, and `Mlp::load` on the GPU) and the encoder and
//! surrogate folders (`Encoder::load`, `Surrogate::load`; the encoder both
//! small and as shipped in `assets/encoder-darcy2d-n64`).
//!
//! Each reader gets an equal share of the time. Inputs are valid files
//! written by the engine's own writers, then mutated (bytes flipped,
//! inserted or deleted, the file truncated, lines duplicated, dropped or
//! swapped, numbers replaced by NaN/inf/huge/negative/off-grid values,
//! words by others of the format, floats in the data by NaN/inf), or
//! replaced by random bytes or random token soup.
//!
//! The fuzzing runs in a child process, restarted after a crash, so that a
//! crash is counted and its input kept. Up to 5 failing inputs per reader
//! are saved under `target/fuzz-failures/<reader>/` with a `README.txt`
//! saying what went wrong; the folder is cleared at the start of a run.
//! The last line printed is a JSON summary; the exit status is 1 when any
//! failure was seen.
//!
//! `tests/fuzz.rs` includes this file as a module and drives the same
//! readers and mutations from proptest.
#![allow(dead_code, reason = "tests/fuzz.rs uses this file as a module")]

use std::collections::BTreeMap;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pdevi::gpu::GpuContext;
use pdevi::infer::amortised::{encoder_arch, Encoder, EncoderMeta, Scaling};
use pdevi::infer::surrogate::{surrogate_arch, Surrogate, SurrogateMeta, Target};
use pdevi::infer::vi::Family;
use pdevi::nn::dataset::{SimSet, SimSettings};
use pdevi::nn::mlp::{load_weights, save_weights, Activation, Arch, Mlp};
use pdevi::output::io::{self, Observation};
use pdevi::physics::problem::{Problem, ProblemArgs, ProblemKind};

// ---------------------------------------------------------------------------
// Random numbers
// ---------------------------------------------------------------------------

/// splitmix64: tiny, seeded, good enough for fuzz inputs.
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
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn usize(&mut self) -> usize {
        self.next_u64() as usize
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    pub fn normal(&mut self) -> f64 {
        let u1 = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

// ---------------------------------------------------------------------------
// Inputs: files with a layout, and mutations of them
// ---------------------------------------------------------------------------

/// How a binary file records the length of its text header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    /// Plain text (or no length field).
    None,
    /// `.npy`: u16 (version 1) or u32 (versions 2, 3) header length at byte 8.
    Npy { wide: bool },
    /// safetensors: u64 header length at byte 0.
    Safetensors,
}

/// One file of an input, with where its text and its numbers are.
#[derive(Clone, Debug)]
pub struct FileSpec {
    pub name: String,
    pub bytes: Vec<u8>,
    /// Bytes that are text (the whole file, or a binary file's header).
    pub text: Range<usize>,
    /// Bytes holding little-endian floats, and their size (4 or 8).
    pub data: Option<(Range<usize>, usize)>,
    pub prefix: Prefix,
}

impl FileSpec {
    pub fn text(name: &str, bytes: Vec<u8>) -> Self {
        let n = bytes.len();
        FileSpec {
            name: name.into(),
            bytes,
            text: 0..n,
            data: None,
            prefix: Prefix::None,
        }
    }

    /// A `.npy` file (written by pdevi) with `elem`-byte floats.
    pub fn npy(name: &str, bytes: Vec<u8>, elem: usize) -> Self {
        let wide = bytes.get(6).is_some_and(|&v| v >= 2);
        let (start, len) = if wide {
            (
                12,
                u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            )
        } else {
            (10, u16::from_le_bytes([bytes[8], bytes[9]]) as usize)
        };
        let n = bytes.len();
        FileSpec {
            name: name.into(),
            bytes,
            text: start..start + len,
            data: Some((start + len..n, elem)),
            prefix: Prefix::Npy { wide },
        }
    }

    /// A safetensors file of F32 tensors.
    pub fn safetensors(name: &str, bytes: Vec<u8>) -> Self {
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let n = bytes.len();
        FileSpec {
            name: name.into(),
            bytes,
            text: 8..8 + len,
            data: Some((8 + len..n, 4)),
            prefix: Prefix::Safetensors,
        }
    }

    /// Replace `range` of the text by `with`, keeping a binary file's
    /// header length field (and the layout) consistent.
    fn splice(&mut self, range: Range<usize>, with: &[u8]) {
        let delta = with.len() as isize - range.len() as isize;
        let shift = |p: usize| (p as isize + delta).max(0) as usize;
        self.bytes.splice(range.clone(), with.iter().copied());
        if range.start >= self.text.start && range.end <= self.text.end {
            self.text = self.text.start..shift(self.text.end);
            if let Some((d, e)) = &self.data {
                self.data = Some((shift(d.start)..shift(d.end), *e));
            }
            let len = self.text.len();
            match self.prefix {
                Prefix::None => {}
                Prefix::Npy { wide: false } if self.bytes.len() >= 10 => {
                    let v = (len.min(u16::MAX as usize) as u16).to_le_bytes();
                    self.bytes[8..10].copy_from_slice(&v);
                }
                Prefix::Npy { wide: true } if self.bytes.len() >= 12 => {
                    let v = (len as u32).to_le_bytes();
                    self.bytes[8..12].copy_from_slice(&v);
                }
                Prefix::Safetensors if self.bytes.len() >= 8 => {
                    self.bytes[..8].copy_from_slice(&(len as u64).to_le_bytes());
                }
                _ => {}
            }
        }
        self.clamp();
    }

    fn clamp(&mut self) {
        let n = self.bytes.len();
        self.text = self.text.start.min(n)..self.text.end.min(n);
        if let Some((d, e)) = &self.data {
            self.data = Some((d.start.min(n)..d.end.min(n), *e));
        }
    }
}

/// The files of one input (one file, or a folder).
#[derive(Clone, Debug)]
pub struct Input {
    pub files: Vec<FileSpec>,
}

/// Numbers that readers must survive: NaN, infinities, overflowing,
/// huge, negative, zero, off-grid and malformed ones.
#[rustfmt::skip]
pub const NUMBERS: &[&str] = &[
    "nan", "NaN", "inf", "-inf", "Infinity", "1e309", "-1e309", "1e300", "-1e300", "1e-320", "0",
    "-0", "-1", "1", "2", "3", "7", "33", "0.3", "0.5", "1.5", "-0.5", "0.03125", "0.0625",
    "0.9375", "1.0625", "0.25000000001", "255", "65535", "65536", "2147483648", "4294967295",
    "4294967296", "1000000000", "9007199254740993", "9223372036854775807", "18446744073709551615",
    "18446744073709551616", "99999999999999999999999999", "0x10", "1_000", "+1", "1e", ".", "-",
    "",
];

/// Values written over floats in a binary file's data.
pub const FLOATS: &[f64] = &[
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    0.0,
    -0.0,
    -1.0,
    1e38,
    3.4e38,
    f64::MAX,
    1e-45,
    f64::MIN_POSITIVE,
];

/// Separators of random token soup.
pub const SEPARATORS: &[&str] = &[
    "", " ", ",", "\n", "\r\n", ", ", "=", ":", "\"", "'", "#", "\t", "[", "]", "{", "}", ";",
];

/// One change to an input. Positions and choices are arbitrary numbers,
/// reduced modulo what is there when the change is applied, so any value
/// is valid and shrinking them to 0 stays meaningful.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// XOR one byte with `mask` (0 counts as 0xFF); in the text (header)
    /// when `header`.
    Flip {
        file: usize,
        at: usize,
        mask: u8,
        header: bool,
    },
    /// Cut the file at a point.
    Truncate {
        file: usize,
        at: usize,
    },
    /// Insert bytes; into the text (keeping a binary header's length
    /// consistent) when `header`.
    Insert {
        file: usize,
        at: usize,
        junk: Vec<u8>,
        header: bool,
    },
    /// Delete up to `len` bytes.
    Delete {
        file: usize,
        at: usize,
        len: usize,
    },
    DupLine {
        file: usize,
        at: usize,
    },
    DropLine {
        file: usize,
        at: usize,
    },
    SwapLines {
        file: usize,
        a: usize,
        b: usize,
    },
    /// Replace a number of the text by one of [`NUMBERS`].
    Number {
        file: usize,
        at: usize,
        with: usize,
    },
    /// Replace a word of the text by one of the reader's vocabulary.
    Word {
        file: usize,
        at: usize,
        with: usize,
    },
    /// Overwrite a float of the data with one of [`FLOATS`].
    Float {
        file: usize,
        at: usize,
        with: usize,
    },
    /// Replace the whole file by these bytes.
    Bytes {
        file: usize,
        bytes: Vec<u8>,
    },
    /// Replace the whole file by random tokens: (word or number, separator).
    Soup {
        file: usize,
        parts: Vec<(usize, usize)>,
    },
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_.+-<>|".contains(&b)
}

/// Byte ranges of the words of `t` (within `region`).
fn words(t: &[u8], region: Range<usize>) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = region.start;
    while i < region.end {
        if is_word_byte(t[i]) {
            let s = i;
            while i < region.end && is_word_byte(t[i]) {
                i += 1;
            }
            out.push(s..i);
        } else {
            i += 1;
        }
    }
    out
}

/// Byte ranges of the numbers of `t` (within `region`): digits with signs,
/// points, exponents and underscores, not part of a name.
fn numbers(t: &[u8], region: Range<usize>) -> Vec<Range<usize>> {
    let numeric = |b: u8| b.is_ascii_digit() || b".eE+-_".contains(&b);
    let mut out = Vec::new();
    let mut i = region.start;
    while i < region.end {
        let starts = t[i].is_ascii_digit()
            || (b"+-.".contains(&t[i]) && i + 1 < region.end && t[i + 1].is_ascii_digit());
        let after_name = i > region.start && (t[i - 1].is_ascii_alphanumeric() || t[i - 1] == b'_');
        if starts && !after_name {
            let s = i;
            i += 1;
            while i < region.end && numeric(t[i]) {
                i += 1;
            }
            out.push(s..i);
        } else {
            i += 1;
        }
    }
    out
}

/// Line ranges (with their newline) of `t`.
fn lines(t: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut s = 0;
    for (i, &b) in t.iter().enumerate() {
        if b == b'\n' {
            out.push(s..i + 1);
            s = i + 1;
        }
    }
    if s < t.len() {
        out.push(s..t.len());
    }
    out
}

/// Apply `muts` in order to a copy of `base`.
pub fn mutate(base: &Input, muts: &[Mutation], vocab: &[&str]) -> Input {
    let mut input = base.clone();
    let nf = input.files.len();
    for m in muts {
        let fi = match m {
            Mutation::Flip { file, .. }
            | Mutation::Truncate { file, .. }
            | Mutation::Insert { file, .. }
            | Mutation::Delete { file, .. }
            | Mutation::DupLine { file, .. }
            | Mutation::DropLine { file, .. }
            | Mutation::SwapLines { file, .. }
            | Mutation::Number { file, .. }
            | Mutation::Word { file, .. }
            | Mutation::Float { file, .. }
            | Mutation::Bytes { file, .. }
            | Mutation::Soup { file, .. } => file % nf,
        };
        let f = &mut input.files[fi];
        let n = f.bytes.len();
        match m {
            Mutation::Flip {
                at, mask, header, ..
            } => {
                let r = if *header && !f.text.is_empty() {
                    f.text.clone()
                } else {
                    0..n
                };
                if !r.is_empty() {
                    let p = r.start + at % r.len();
                    f.bytes[p] ^= if *mask == 0 { 0xFF } else { *mask };
                }
            }
            Mutation::Truncate { at, .. } => {
                f.bytes.truncate(at % (n + 1));
                f.clamp();
            }
            Mutation::Insert {
                at, junk, header, ..
            } => {
                if *header && f.text.end > f.text.start {
                    let p = f.text.start + at % (f.text.len() + 1);
                    f.splice(p..p, junk);
                } else {
                    let p = at % (n + 1);
                    f.bytes.splice(p..p, junk.iter().copied());
                    f.clamp();
                }
            }
            Mutation::Delete { at, len, .. } => {
                if n > 0 {
                    let p = at % n;
                    let e = (p + 1 + len % 16).min(n);
                    f.bytes.drain(p..e);
                    f.clamp();
                }
            }
            Mutation::DupLine { at, .. } => {
                let ls = lines(&f.bytes);
                if !ls.is_empty() {
                    let l = ls[at % ls.len()].clone();
                    let mut copy = f.bytes[l.clone()].to_vec();
                    if copy.last() != Some(&b'\n') {
                        copy.insert(0, b'\n');
                    }
                    f.bytes.splice(l.end..l.end, copy);
                    f.clamp();
                }
            }
            Mutation::DropLine { at, .. } => {
                let ls = lines(&f.bytes);
                if !ls.is_empty() {
                    f.bytes.drain(ls[at % ls.len()].clone());
                    f.clamp();
                }
            }
            Mutation::SwapLines { a, b, .. } => {
                let ls = lines(&f.bytes);
                if ls.len() > 1 {
                    let (mut i, mut j) = (a % ls.len(), b % ls.len());
                    if i > j {
                        std::mem::swap(&mut i, &mut j);
                    }
                    if i != j {
                        let li = f.bytes[ls[i].clone()].to_vec();
                        let lj = f.bytes[ls[j].clone()].to_vec();
                        let lj_fixed = if lj.last() == Some(&b'\n') {
                            lj
                        } else {
                            [lj, b"\n".to_vec()].concat()
                        };
                        f.bytes.splice(ls[j].clone(), li);
                        f.bytes.splice(ls[i].clone(), lj_fixed);
                        f.clamp();
                    }
                }
            }
            Mutation::Number { at, with, .. } => {
                let ns = numbers(&f.bytes, f.text.clone());
                if !ns.is_empty() {
                    let r = ns[at % ns.len()].clone();
                    f.splice(r, NUMBERS[with % NUMBERS.len()].as_bytes());
                }
            }
            Mutation::Word { at, with, .. } => {
                let ws = words(&f.bytes, f.text.clone());
                if !ws.is_empty() && !vocab.is_empty() {
                    let r = ws[at % ws.len()].clone();
                    f.splice(r, vocab[with % vocab.len()].as_bytes());
                }
            }
            Mutation::Float { at, with, .. } => {
                if let Some((d, e)) = f.data.clone() {
                    let count = d.len() / e;
                    if count > 0 {
                        let p = d.start + (at % count) * e;
                        let v = FLOATS[with % FLOATS.len()];
                        if e == 4 {
                            f.bytes[p..p + 4].copy_from_slice(&(v as f32).to_le_bytes());
                        } else {
                            f.bytes[p..p + 8].copy_from_slice(&v.to_le_bytes());
                        }
                    }
                }
            }
            Mutation::Bytes { bytes, .. } => {
                *f = FileSpec::text(&f.name.clone(), bytes.clone());
            }
            Mutation::Soup { parts, .. } => {
                let mut t = String::new();
                for &(w, s) in parts {
                    let k = w % (vocab.len() + NUMBERS.len());
                    t.push_str(if k < vocab.len() {
                        vocab[k]
                    } else {
                        NUMBERS[k - vocab.len()]
                    });
                    t.push_str(SEPARATORS[s % SEPARATORS.len()]);
                }
                *f = FileSpec::text(&f.name.clone(), t.into_bytes());
            }
        }
    }
    input
}

/// A random mutation (for the example; the test draws them with proptest).
pub fn random_mutation(rng: &mut Rng) -> Mutation {
    let file = rng.usize();
    let at = rng.usize();
    match rng.below(13) {
        0 | 1 => Mutation::Flip {
            file,
            at,
            mask: rng.next_u64() as u8,
            header: rng.chance(0.7),
        },
        2 => Mutation::Truncate { file, at },
        3 => {
            let len = rng.below(12);
            Mutation::Insert {
                file,
                at,
                junk: rng.bytes(len),
                header: rng.chance(0.7),
            }
        }
        4 => Mutation::Delete {
            file,
            at,
            len: rng.usize(),
        },
        5 => Mutation::DupLine { file, at },
        6 => Mutation::DropLine { file, at },
        7 => Mutation::SwapLines {
            file,
            a: at,
            b: rng.usize(),
        },
        8 | 9 => Mutation::Number {
            file,
            at,
            with: rng.usize(),
        },
        10 | 11 => Mutation::Word {
            file,
            at,
            with: rng.usize(),
        },
        _ => Mutation::Float {
            file,
            at,
            with: rng.usize(),
        },
    }
}

/// A random input derived from one of `bases`: mostly 1-4 mutations, else
/// random bytes or random token soup in one file.
pub fn random_input(rng: &mut Rng, reader: &Reader) -> (usize, Vec<Mutation>) {
    let base = rng.below(reader.bases.len());
    let muts = match rng.below(10) {
        0 => {
            let len = rng.below(300);
            vec![Mutation::Bytes {
                file: rng.usize(),
                bytes: rng.bytes(len),
            }]
        }
        1 => {
            let parts = (0..rng.below(40))
                .map(|_| (rng.usize(), rng.usize()))
                .collect();
            vec![Mutation::Soup {
                file: rng.usize(),
                parts,
            }]
        }
        _ => (0..1 + rng.below(4))
            .map(|_| random_mutation(rng))
            .collect(),
    };
    (base, muts)
}

// ---------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------

/// What the readers need besides the file: the problems and a GPU.
pub struct Env {
    pub darcy: Problem,
    pub poisson: Problem,
    pub ctx: Option<&'static GpuContext>,
}

impl Env {
    pub fn new(ctx: Option<&'static GpuContext>) -> Self {
        let pb = |kind| {
            ProblemArgs {
                kind,
                n: Some(16),
                d: Some(4),
            }
            .build()
            .expect("test problem")
        };
        Env {
            darcy: pb(ProblemKind::Darcy2d),
            poisson: pb(ProblemKind::Poisson1d),
            ctx,
        }
    }
}

/// How a reader is called on an input written into `dir`.
pub type Call = fn(&Env, &Path) -> pdevi::Result<()>;

/// A file reader of the engine, its valid inputs and the vocabulary its
/// word mutations draw from.
pub struct Reader {
    pub name: &'static str,
    pub gpu: bool,
    /// Called on the folder (folder readers) or on the one file.
    pub call: Call,
    /// The reader takes the folder (else the first file): its error must
    /// name the folder, else the file.
    pub folder: bool,
    pub bases: Vec<Input>,
    pub vocab: &'static [&'static str],
}

#[rustfmt::skip]
pub const CSV_VOCAB: &[&str] = &[
    "x", "y", "value", "X", "Value", "x,y,value", "x,value", "nan", "inf", "-inf", "0.3",
    "0.03125", "0.0625", "0.9375", "1.0625", "-0.0625", "1", "0", "0.25000000001", "0.2500001",
    "\"0.5\"", "\"x\"", "\"", "\"\"", "#", "# comment", "\u{feff}", "\r", ",", ",,", "  ",
    "\u{bd}", "\u{0}",
];

#[rustfmt::skip]
pub const TOML_VOCAB: &[&str] = &[
    "problem", "obs", "noise", "family", "rank", "samples", "steps", "lr", "lr_final", "seed",
    "n", "d", "truth", "out", "tol", "max_iters", "quiet", "sampler", "chains", "precond",
    "forward", "live", "every", "figure_px", "contours", "bogus", "=", "\"darcy2d\"", "\"\"",
    "''", "'''", "\"\"\"", "true", "false", "nan", "inf", "-inf", "1e999", "-1",
    "18446744073709551616", "9223372036854775808", "[1, 2]", "[]", "{}", "{a = 1}", "[table]",
    "[[arr]]", "1979-05-27T07:32:00Z", "0x1F", "0o17", "0b11", "1_000", "\"\\u00e9\"",
    "\"\\uD800\"", "\"\\x\"", "#", "\u{e9}", "\t", "\r",
];

#[rustfmt::skip]
pub const NPY_VOCAB: &[&str] = &[
    "<f8", "<f4", ">f8", ">f4", "<f2", "<i4", "<i8", ">i2", "|u1", "<u8", "|b1", "<c16", "|O",
    "<U3", "|V8", "<M8", "descr", "fortran_order", "shape", "True", "False", "None", "()", "(0,)",
    "(-1,)", "(3,)", "(2, 2)", "(1, 2, 3)", "(18446744073709551615,)", "(4294967296, 4294967296)",
    "[('a', '<f8')]", "'", "{", "}",
];

#[rustfmt::skip]
pub const SAFETENSORS_VOCAB: &[&str] = &[
    "F32", "F64", "F16", "BF16", "I64", "I32", "U8", "BOOL", "F8_E4M3", "C64", "xi", "y", "u",
    "__metadata__", "format", "pdevi-simset", "pdevi-mlp", "problem", "darcy2d", "poisson1d",
    "darcy3d", "darcy", "n", "d", "count", "seed", "sigma_n", "cg_tol", "sensors", "field",
    "true", "null", "dtype", "shape", "data_offsets", "0", "1", "3", "8", "16", "17", "-1",
    "4294967296", "18446744073709551615", "1e400", "NaN", "inf", "[]", "[[]]", "{}",
    "layers.0.weight", "layers.0.bias", "layers.1.bias", "layers.9.bias",
];

static WRITE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh, empty folder under the system temp folder.
pub fn fresh_dir(tag: &str) -> PathBuf {
    let k = WRITE_COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pdevi-fuzz-{}-{k}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temp folder");
    dir
}

/// Write `input` into `dir`.
pub fn materialise(input: &Input, dir: &Path) {
    for f in &input.files {
        std::fs::write(dir.join(&f.name), &f.bytes).expect("write a fuzz input");
    }
}

/// What the reader did with one input.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Accepted,
    /// Rejected with an error naming the file (the message).
    Named(String),
    /// Rejected without naming the file: a failure (the message).
    Unnamed(String),
    /// The reader panicked: a failure (message and place).
    Panicked(String),
}

impl Outcome {
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Unnamed(_) | Outcome::Panicked(_))
    }
}

thread_local! {
    /// The message and place of this thread's last panic (set by the hook
    /// of [`install_panic_recorder`]).
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    /// Inside [`run_reader`]: the hook records the panic without printing it.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Record the message and place of every panic; panics inside
/// [`run_reader`] are not printed (they are reported as outcomes), others
/// go to the previous hook.
pub fn install_panic_recorder() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
                s.to_string()
            } else if let Some(s) = info.payload().downcast_ref::<String>() {
                s.clone()
            } else {
                "(non-string panic payload)".to_string()
            };
            let place = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_else(|| "?".into());
            // The innermost pdevi function on the stack says where in the
            // engine a panic raised in std (e.g. a failed allocation) came from.
            let bt = std::backtrace::Backtrace::force_capture().to_string();
            let engine_fn = bt
                .lines()
                .map(str::trim)
                .filter_map(|l| l.split_once(": ").map(|(_, f)| f))
                .find(|f| f.starts_with("pdevi::"))
                .map(|f| format!(" (in {f})"))
                .unwrap_or_default();
            LAST_PANIC
                .with(|p| *p.borrow_mut() = Some(format!("panicked at {place}{engine_fn}: {msg}")));
            if !QUIET.with(|q| q.get()) {
                prev(info);
            }
        }));
    });
}

/// What the error of `reader` on an input in `dir` must mention.
pub fn needle(reader: &Reader, input: &Input, dir: &Path) -> String {
    if reader.folder {
        dir.display().to_string()
    } else {
        input.files[0].name.clone()
    }
}

/// Run `reader` on `input` written into `dir`: no panic may escape, and an
/// error must name the file (or the folder, for folder readers).
pub fn run_reader(env: &Env, reader: &Reader, input: &Input, dir: &Path) -> Outcome {
    materialise(input, dir);
    let target = if reader.folder {
        dir.to_path_buf()
    } else {
        dir.join(&input.files[0].name)
    };
    install_panic_recorder();
    LAST_PANIC.with(|p| *p.borrow_mut() = None);
    QUIET.with(|q| q.set(true));
    let result = catch_unwind(AssertUnwindSafe(|| (reader.call)(env, &target)));
    QUIET.with(|q| q.set(false));
    match result {
        Ok(Ok(())) => Outcome::Accepted,
        Ok(Err(e)) => {
            let msg = e.to_string();
            if msg.contains(&needle(reader, input, dir)) {
                Outcome::Named(msg)
            } else {
                Outcome::Unnamed(msg)
            }
        }
        Err(payload) => {
            let recorded = LAST_PANIC.with(|p| p.borrow_mut().take());
            Outcome::Panicked(recorded.unwrap_or_else(|| {
                payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(non-string panic payload)".into())
            }))
        }
    }
}

/// The input's files for a report: plain text as it is, anything else
/// with its bytes escaped (`\n`, `\xNN`), each cut to `limit` characters.
pub fn describe(input: &Input, limit: usize) -> String {
    let mut s = String::new();
    for f in &input.files {
        let plain = std::str::from_utf8(&f.bytes)
            .ok()
            .filter(|t| !t.chars().any(|c| c.is_control() && !"\n\t".contains(c)));
        let (shown, how) = match plain {
            Some(t) => (t.to_string(), "text"),
            None => (f.bytes.escape_ascii().to_string(), "escaped"),
        };
        let total = shown.chars().count();
        let cut: String = shown.chars().take(limit).collect();
        let more = if total > limit {
            format!(", first {limit} of {total} characters")
        } else {
            String::new()
        };
        s.push_str(&format!(
            "--- {} ({} bytes, {how}{more}):\n{cut}\n",
            f.name,
            f.bytes.len()
        ));
    }
    s
}

fn obs_base(dim: usize, n: usize, pts: &[(usize, usize)], rng: &mut Rng) -> Vec<u8> {
    let obs: Vec<Observation> = pts
        .iter()
        .map(|&(i, j)| Observation {
            i,
            j,
            x: i as f64 / n as f64,
            y: j as f64 / n as f64,
            value: rng.normal() * 1e-2,
        })
        .collect();
    let dir = fresh_dir("base");
    let p = dir.join("obs.csv");
    io::write_observations(&p, dim, &obs).expect("write observations");
    let bytes = std::fs::read(&p).expect("read back");
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

fn npy_base(name: &str, shape: &[usize], f32: bool, rng: &mut Rng) -> FileSpec {
    let count: usize = shape.iter().product();
    let dir = fresh_dir("base");
    let p = dir.join(name);
    if f32 {
        let v: Vec<f32> = (0..count).map(|_| rng.normal() as f32).collect();
        io::write_npy_f32(&p, shape, &v).expect("write npy");
    } else {
        let v: Vec<f64> = (0..count).map(|_| rng.normal()).collect();
        io::write_npy(&p, shape, &v).expect("write npy");
    }
    let bytes = std::fs::read(&p).expect("read back");
    let _ = std::fs::remove_dir_all(&dir);
    FileSpec::npy(name, bytes, if f32 { 4 } else { 8 })
}

fn simset_base(pb: &Problem, count: usize, field: bool, rng: &mut Rng) -> FileSpec {
    let mut v = |k: usize| (0..k).map(|_| rng.normal()).collect::<Vec<f64>>();
    let set = SimSet {
        settings: SimSettings {
            problem: pb.kind,
            n: pb.n,
            d: pb.d,
            count,
            seed: 5,
            sigma_n: pb.sigma_n,
            cg_tol: 1e-6,
            sensors: pb.sensors.clone(),
        },
        xi: v(count * pb.d),
        y: v(count * pb.sensors.len()),
        u: field.then(|| v(count * pb.nunk())),
        seconds: 0.0,
    };
    let dir = fresh_dir("base");
    let p = dir.join("set.safetensors");
    set.save(&p).expect("save a training set");
    let bytes = std::fs::read(&p).expect("read back");
    let _ = std::fs::remove_dir_all(&dir);
    FileSpec::safetensors("set.safetensors", bytes)
}

/// `<stem>.json` and `<stem>.safetensors` of `arch` with seeded parameters.
fn mlp_files(stem: &str, arch: &Arch, seed: u64) -> Vec<FileSpec> {
    let dir = fresh_dir("base");
    save_weights(arch, &arch.init(seed), &dir.join(stem)).expect("save weights");
    let json = std::fs::read(dir.join(format!("{stem}.json"))).expect("read back");
    let st = std::fs::read(dir.join(format!("{stem}.safetensors"))).expect("read back");
    let _ = std::fs::remove_dir_all(&dir);
    vec![
        FileSpec::text(&format!("{stem}.json"), json),
        FileSpec::safetensors(&format!("{stem}.safetensors"), st),
    ]
}

fn json_file(name: &str, value: &impl serde::Serialize) -> FileSpec {
    let text = serde_json::to_string_pretty(value).expect("encode JSON") + "\n";
    FileSpec::text(name, text.into_bytes())
}

fn scaling(w: usize, rng: &mut Rng) -> Scaling {
    Scaling {
        mean: (0..w).map(|_| rng.normal() * 1e-3).collect(),
        sd: (0..w).map(|_| 1e-3 + rng.normal().abs() * 1e-3).collect(),
        rotation: Vec::new(),
    }
}

const CONFIG: &str = r#"# every key of `pdevi run`
problem = "darcy2d"
obs = "obs.csv"
noise = 1e-3
family = "low-rank"
rank = 4
samples = 8
steps = 100
lr = 0.05
lr_final = 0.2
seed = 3
simulate_seed = 7
n = 32
d = 16
truth = "truth.npy"
out = "out/fuzz"
predictive_samples = 16
tol = 1e-6
max_iters = 500
quiet = true
sampler = "pcn"
chains = 4
warmup = 100
thin = 2
precondition = "laplace"
gn_iters = 10
init = "prior"
tol_start = 1e-3
precond = "auto"
forward = "surrogate:sur"
surrogate_variance = false
live = false
frames = "frames"
every = 10
gif = false
figure_px = 330
contours = 8
"#;

/// Every reader with its valid inputs; the GPU readers only with a context.
pub fn readers(env: &Env) -> Vec<Reader> {
    let mut rng = Rng::new(2024);
    let one = |f: FileSpec| Input { files: vec![f] };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();

    // Observation CSVs, as `pdevi simulate` writes them and hand-made.
    let n = env.darcy.n;
    out.push(Reader {
        name: "obs-darcy2d",
        gpu: false,
        call: |env, p| sensors_read(&env.darcy, p),
        folder: false,
        bases: vec![
            one(FileSpec::text(
                "obs.csv",
                obs_base(
                    2,
                    n,
                    &[(2, 2), (4, 2), (8, 8), (14, 14), (1, 15), (15, 1), (7, 9)],
                    &mut rng,
                ),
            )),
            one(FileSpec::text(
                "obs.csv",
                b"\xEF\xBB\xBF# readings\n x , Y ,Value\r\n0.25,0.25,0.001\r\n\n# gap\n0.5, 0.75 ,-2e-3\n0.0625,0.9375,1e-300\n"
                    .to_vec(),
            )),
        ],
        vocab: CSV_VOCAB,
    });
    let n1 = env.poisson.n;
    out.push(Reader {
        name: "obs-poisson1d",
        gpu: false,
        call: |env, p| sensors_read(&env.poisson, p),
        folder: false,
        bases: vec![
            one(FileSpec::text(
                "obs.csv",
                obs_base(1, n1, &[(1, 0), (3, 0), (8, 0), (12, 0), (15, 0)], &mut rng),
            )),
            one(FileSpec::text(
                "obs.csv",
                b"x,value\n# left\n0.0625,1.5\n0.5 , -0.25\n\n0.9375,3e-4\n".to_vec(),
            )),
        ],
        vocab: CSV_VOCAB,
    });

    // Run configs: every key, and the shipped examples.
    let mut configs = vec![one(FileSpec::text("run.toml", CONFIG.as_bytes().to_vec()))];
    for ex in ["examples/darcy2d.toml", "examples/poisson1d.toml"] {
        if let Ok(b) = std::fs::read(root.join(ex)) {
            configs.push(one(FileSpec::text("run.toml", b)));
        }
    }
    out.push(Reader {
        name: "config-toml",
        gpu: false,
        call: |_, p| pdevi::cli::run::RunConfig::load(p).map(|_| ()),
        folder: false,
        bases: configs,
        vocab: TOML_VOCAB,
    });

    // .npy arrays.
    out.push(Reader {
        name: "npy",
        gpu: false,
        call: |_, p| io::read_npy(p).map(|_| ()),
        folder: false,
        bases: vec![
            one(npy_base("a.npy", &[2, 3], false, &mut rng)),
            one(npy_base("a.npy", &[4], true, &mut rng)),
            one(npy_base("a.npy", &[1, 2, 2], false, &mut rng)),
        ],
        vocab: NPY_VOCAB,
    });
    out.push(Reader {
        name: "vector-npy",
        gpu: false,
        call: |_, p| io::read_vector(p).map(|_| ()),
        folder: false,
        bases: vec![
            one(npy_base("v.npy", &[4], false, &mut rng)),
            one(npy_base("v.npy", &[1, 3], true, &mut rng)),
        ],
        vocab: NPY_VOCAB,
    });
    out.push(Reader {
        name: "vector-text",
        gpu: false,
        call: |_, p| io::read_vector(p).map(|_| ()),
        folder: false,
        bases: vec![
            one(FileSpec::text(
                "v.txt",
                b"theta\n1.5, 2\n\n-3e-2 4 # note\n5,\n".to_vec(),
            )),
            one(FileSpec::text("v.csv", b"0.125,-0.5,1e-3,4\n".to_vec())),
        ],
        vocab: CSV_VOCAB,
    });

    // Training sets.
    out.push(Reader {
        name: "simset",
        gpu: false,
        call: |_, p| SimSet::load(p).map(|_| ()),
        folder: false,
        bases: vec![
            one(simset_base(&env.darcy, 3, false, &mut rng)),
            one(simset_base(&env.poisson, 2, true, &mut rng)),
        ],
        vocab: SAFETENSORS_VOCAB,
    });

    // MLP weights: plain, Gaussian and mean-logvar heads.
    let archs = [
        Arch::mlp(3, &[4], Activation::Tanh, 2),
        encoder_arch(3, 2, Family::LowRank { rank: 1 }, &[4], Activation::Relu),
        surrogate_arch(2, 3, &[5], Activation::Silu, true),
    ];
    let mlp_bases: Vec<Input> = archs
        .iter()
        .enumerate()
        .map(|(k, a)| Input {
            files: mlp_files("net", a, k as u64),
        })
        .collect();
    out.push(Reader {
        name: "mlp-weights",
        gpu: false,
        call: |_, p| load_weights(&p.join("net")).map(|_| ()),
        folder: true,
        bases: mlp_bases.clone(),
        vocab: FOLDER_VOCAB,
    });

    let Some(_) = env.ctx else {
        return out;
    };
    out.push(Reader {
        name: "mlp-gpu",
        gpu: true,
        call: |env, p| Mlp::load(gpu(env), &p.join("net")).map(|_| ()),
        folder: true,
        bases: mlp_bases,
        vocab: FOLDER_VOCAB,
    });

    // A small encoder (two members) and the shipped one.
    let pb = &env.darcy;
    let m = pb.sensors.len();
    let hidden = vec![8];
    let meta = EncoderMeta {
        format: "pdevi-encoder".into(),
        problem: pb.kind,
        n: pb.n,
        d: pb.d,
        sensors: pb.sensors.clone(),
        noise: 1e-3,
        family: "mean-field".into(),
        rank: 0,
        hidden: hidden.clone(),
        activation: Activation::Gelu,
        members: vec!["member_0".into(), "member_1".into()],
        y_scaling: scaling(m, &mut rng),
        xi_scaling: scaling(pb.d, &mut rng),
        training: serde_json::json!({ "note": "fuzz base" }),
    };
    let arch = encoder_arch(m, pb.d, Family::MeanField, &hidden, Activation::Gelu);
    let mut files = vec![json_file("encoder.json", &meta)];
    files.extend(mlp_files("member_0", &arch, 1));
    files.extend(mlp_files("member_1", &arch, 2));
    out.push(Reader {
        name: "encoder",
        gpu: true,
        call: |env, p| Encoder::load(gpu(env), p).map(|_| ()),
        folder: true,
        bases: vec![Input { files }],
        vocab: FOLDER_VOCAB,
    });
    let asset = root.join("assets/encoder-darcy2d-n64");
    let read = |name: &str| std::fs::read(asset.join(name)).ok();
    if let (Some(e), Some(j), Some(s)) = (
        read("encoder.json"),
        read("member_0.json"),
        read("member_0.safetensors"),
    ) {
        out.push(Reader {
            name: "encoder-asset",
            gpu: true,
            call: |env, p| Encoder::load(gpu(env), p).map(|_| ()),
            folder: true,
            bases: vec![Input {
                files: vec![
                    FileSpec::text("encoder.json", e),
                    FileSpec::text("member_0.json", j),
                    FileSpec::safetensors("member_0.safetensors", s),
                ],
            }],
            vocab: FOLDER_VOCAB,
        });
    }

    // A surrogate of the sensors with predicted variances.
    let width = m;
    let smeta = SurrogateMeta {
        format: "pdevi-surrogate".into(),
        problem: pb.kind,
        n: pb.n,
        d: pb.d,
        sensors: pb.sensors.clone(),
        target: Target::Sensors,
        variance: true,
        hidden: hidden.clone(),
        activation: Activation::Tanh,
        out_scaling: scaling(width, &mut rng),
        training: serde_json::json!({ "note": "fuzz base" }),
    };
    let sarch = surrogate_arch(pb.d, width, &hidden, Activation::Tanh, true);
    let mut files = vec![json_file("surrogate.json", &smeta)];
    files.extend(mlp_files("net", &sarch, 3));
    out.push(Reader {
        name: "surrogate",
        gpu: true,
        call: |env, p| Surrogate::load(gpu(env), p).map(|_| ()),
        folder: true,
        bases: vec![Input { files }],
        vocab: FOLDER_VOCAB,
    });
    out
}

/// JSON words and safetensors words, for folders of both (encoder, surrogate, MLP).
#[rustfmt::skip]
pub const FOLDER_VOCAB: &[&str] = &[
    "null", "true", "[]", "{}", "\"\"", "\"gelu\"", "\"bogus\"", "\"mean-field\"",
    "\"full-rank\"", "\"low-rank\"", "\"gaussian\"", "\"plain\"", "\"mean-logvar\"",
    "\"poisson1d\"", "\"pdevi-encoder\"", "\"member_0\"", "\"../member_0\"", "NaN", "-1", "0",
    "1", "33", "1e400", "4294967296", "1000000000", "18446744073709551615", "[0]", "\"\\ud800\"",
    "gelu", "relu", "identity", "mean-field", "low-rank", "full-rank", "gaussian", "mean-logvar",
    "plain", "poisson1d", "darcy3d", "sensors", "field", "member_1", "kind", "layers", "out",
    "act", "head", "dim", "rank", "input", "rotation", "members", "hidden", "F64", "F16", "I64",
    "BOOL", "layers.0.weight", "layers.0.bias", "layers.9.bias", "pdevi-mlp", "dtype", "shape",
    "data_offsets", "__metadata__",
];

fn gpu(env: &Env) -> &'static GpuContext {
    env.ctx.expect("a GPU reader needs a context")
}

fn sensors_read(pb: &Problem, p: &Path) -> pdevi::Result<()> {
    pdevi::physics::sensors::read_obs(pb, p).map(|_| ())
}

// ---------------------------------------------------------------------------
// The fuzzing loop (a child process) and its driver
// ---------------------------------------------------------------------------

/// Counts of one reader.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub inputs: u64,
    pub accepted: u64,
    pub rejected_named: u64,
    pub rejected_unnamed: u64,
    pub panics: u64,
    /// The process died on this reader's input (abort, signal).
    pub crashes: u64,
    pub seconds: f64,
}

impl Counts {
    pub fn failures(&self) -> u64 {
        self.rejected_unnamed + self.panics + self.crashes
    }
    fn add(&mut self, o: &Counts) {
        self.inputs += o.inputs;
        self.accepted += o.accepted;
        self.rejected_named += o.rejected_named;
        self.rejected_unnamed += o.rejected_unnamed;
        self.panics += o.panics;
        self.crashes += o.crashes;
        self.seconds += o.seconds;
    }
}

fn failures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures")
}

/// Keep a failing input (up to 5 per reader) with a README saying what went wrong.
fn save_failure(reader: &str, input_dir: &Path, what: &str) -> Option<PathBuf> {
    let base = failures_dir().join(reader);
    let _ = std::fs::create_dir_all(&base);
    let kept = std::fs::read_dir(&base).map(|d| d.count()).unwrap_or(0);
    if kept >= 5 {
        return None;
    }
    let dest = base.join(format!("{}-{}", std::process::id(), kept));
    std::fs::create_dir_all(&dest).ok()?;
    for e in std::fs::read_dir(input_dir).ok()?.flatten() {
        let _ = std::fs::copy(e.path(), dest.join(e.file_name()));
    }
    let _ = std::fs::write(dest.join("README.txt"), what);
    Some(dest)
}

struct Args {
    minutes: f64,
    seed: u64,
    only: Option<String>,
    child: Option<PathBuf>,
    until_ms: u128,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        minutes: 1.0,
        seed: 1,
        only: None,
        child: None,
        until_ms: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--minutes" => {
                a.minutes = val()?
                    .parse()
                    .map_err(|_| "--minutes takes a number".to_string())?;
                if !(a.minutes.is_finite() && a.minutes >= 0.0) {
                    return Err("--minutes must be a non-negative number".into());
                }
            }
            "--seed" => a.seed = val()?.parse().map_err(|_| "--seed takes an integer")?,
            "--only" => a.only = Some(val()?),
            "--child" => a.child = Some(PathBuf::from(val()?)),
            "--until-ms" => a.until_ms = val()?.parse().map_err(|_| "--until-ms")?,
            other => {
                return Err(format!(
                    "unknown argument {other}; usage: cargo run --release --example fuzz_readers -- --minutes M [--seed S] [--only READER]"
                ))
            }
        }
    }
    Ok(a)
}

/// How long past the deadline a fuzzing process may take to finish its input.
const HANG_MS: u128 = 60_000;

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn write_counts(work: &Path, counts: &BTreeMap<String, Counts>) {
    let tmp = work.join("counts.json.tmp");
    if let Ok(t) = serde_json::to_string(counts) {
        if std::fs::write(&tmp, t).is_ok() {
            let _ = std::fs::rename(&tmp, work.join("counts.json"));
        }
    }
}

/// The fuzzing loop: readers take turns by time used, until `until_ms`.
/// Before each input it writes `inflight.txt` and the input under
/// `work/input`, so the driver can keep the input if the process dies.
fn child(args: &Args, work: &Path) -> std::process::ExitCode {
    let ctx: Option<&'static GpuContext> = match GpuContext::new() {
        Ok(c) => Some(Box::leak(Box::new(c))),
        Err(e) => {
            eprintln!("no GPU ({e}); skipping the GPU readers");
            None
        }
    };
    let env = Env::new(ctx);
    let readers: Vec<Reader> = readers(&env)
        .into_iter()
        .filter(|r| args.only.as_deref().is_none_or(|o| o == r.name))
        .collect();
    if readers.is_empty() {
        eprintln!("no reader matches --only");
        return std::process::ExitCode::from(2);
    }
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    for r in &readers {
        counts.insert(r.name.into(), Counts::default());
    }
    install_panic_recorder();
    let mut rng = Rng::new(args.seed);
    let input_dir = work.join("input");
    let mut last_save = Instant::now();
    while now_ms() < args.until_ms {
        // The reader with the least time so far.
        let r = readers
            .iter()
            .min_by(|a, b| counts[a.name].seconds.total_cmp(&counts[b.name].seconds))
            .expect("readers");
        let (base, muts) = random_input(&mut rng, r);
        let input = mutate(&r.bases[base], &muts, r.vocab);
        let _ = std::fs::remove_dir_all(&input_dir);
        let _ = std::fs::create_dir_all(&input_dir);
        let what = format!("reader: {}\nbase: {base}\nmutations: {muts:?}\n", r.name);
        let _ = std::fs::write(work.join("inflight.txt"), &what);
        let t = Instant::now();
        let outcome = run_reader(&env, r, &input, &input_dir);
        let c = counts.get_mut(r.name).expect("counts");
        c.seconds += t.elapsed().as_secs_f64();
        c.inputs += 1;
        match &outcome {
            Outcome::Accepted => c.accepted += 1,
            Outcome::Named(_) => c.rejected_named += 1,
            Outcome::Unnamed(_) => c.rejected_unnamed += 1,
            Outcome::Panicked(_) => c.panics += 1,
        }
        if outcome.is_failure() {
            let target = if r.folder {
                input_dir.display().to_string()
            } else {
                input_dir.join(&input.files[0].name).display().to_string()
            };
            let _ = save_failure(
                r.name,
                &input_dir,
                &format!(
                    "{what}outcome: {outcome:?}\nthe reader was called on {target} (the files here were there)\n"
                ),
            );
        }
        if last_save.elapsed() > Duration::from_millis(500) {
            write_counts(work, &counts);
            last_save = Instant::now();
        }
    }
    write_counts(work, &counts);
    let _ = std::fs::remove_file(work.join("inflight.txt"));
    std::process::ExitCode::SUCCESS
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(work) = &args.child {
        return child(&args, work);
    }

    // The driver: run the loop in a child process, restarting it (with the
    // next seed) after a crash, until the time is up.
    let t0 = Instant::now();
    let until = now_ms() + (args.minutes * 60_000.0) as u128;
    let _ = std::fs::remove_dir_all(failures_dir());
    let work = fresh_dir("driver");
    let exe = std::env::current_exe().expect("own executable");
    let mut totals: BTreeMap<String, Counts> = BTreeMap::new();
    let mut seed = args.seed;
    let mut status_ok = true;
    loop {
        let _ = std::fs::remove_file(work.join("counts.json"));
        let _ = std::fs::remove_file(work.join("inflight.txt"));
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["--child", &work.display().to_string()])
            .args(["--seed", &seed.to_string()])
            .args(["--until-ms", &until.to_string()]);
        if let Some(o) = &args.only {
            cmd.args(["--only", o]);
        }
        let mut proc = match cmd.spawn() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("could not start the fuzzing process: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        // A child still running a minute after the deadline hangs on its input.
        let (success, status) = loop {
            match proc.try_wait() {
                Ok(Some(s)) => break (s.success(), s.to_string()),
                Ok(None) if now_ms() > until + HANG_MS => {
                    let _ = proc.kill();
                    let _ = proc.wait();
                    break (
                        false,
                        format!(
                            "hung: still reading {} s after the deadline",
                            HANG_MS / 1000
                        ),
                    );
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => break (false, format!("lost: {e}")),
            }
        };
        if let Ok(t) = std::fs::read_to_string(work.join("counts.json")) {
            if let Ok(c) = serde_json::from_str::<BTreeMap<String, Counts>>(&t) {
                for (k, v) in c {
                    totals.entry(k).or_default().add(&v);
                }
            }
        }
        if success {
            break;
        }
        match std::fs::read_to_string(work.join("inflight.txt")) {
            Ok(what) => {
                let reader = what
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix("reader: "))
                    .unwrap_or("?")
                    .to_string();
                let c = totals.entry(reader.clone()).or_default();
                c.crashes += 1;
                c.inputs += 1;
                let kept = save_failure(
                    &reader,
                    &work.join("input"),
                    &format!("{what}outcome: the process died ({status})\n"),
                );
                eprintln!(
                    "CRASH ({status}) on a {reader} input{}",
                    kept.map(|p| format!("; kept in {}", p.display()))
                        .unwrap_or_default()
                );
            }
            Err(_) => {
                eprintln!("the fuzzing process failed ({status}) outside a reader");
                status_ok = false;
                break;
            }
        }
        seed = seed.wrapping_add(0x1000_0000);
        if now_ms() >= until {
            break;
        }
    }
    let _ = std::fs::remove_dir_all(&work);

    let mut all = Counts::default();
    println!(
        "{:<15} {:>8} {:>9} {:>15} {:>17} {:>7} {:>8}",
        "reader", "inputs", "accepted", "rejected+named", "rejected-unnamed", "panics", "crashes"
    );
    for (name, c) in &totals {
        println!(
            "{:<15} {:>8} {:>9} {:>15} {:>17} {:>7} {:>8}",
            name, c.inputs, c.accepted, c.rejected_named, c.rejected_unnamed, c.panics, c.crashes
        );
        all.add(c);
    }
    let failures = all.failures();
    if failures > 0 {
        println!(
            "{failures} failures; inputs kept in {}",
            failures_dir().display()
        );
    }
    let by_reader: serde_json::Map<String, serde_json::Value> = totals
        .iter()
        .map(|(k, c)| {
            (
                k.clone(),
                serde_json::json!({
                    "inputs": c.inputs, "accepted": c.accepted,
                    "rejected_named": c.rejected_named, "rejected_unnamed": c.rejected_unnamed,
                    "panics": c.panics, "crashes": c.crashes, "failures": c.failures(),
                }),
            )
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "minutes": args.minutes,
            "seconds": (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "seed": args.seed,
            "inputs": all.inputs,
            "accepted": all.accepted,
            "rejected_named": all.rejected_named,
            "failures": failures,
            "rejected_unnamed": all.rejected_unnamed,
            "panics": all.panics,
            "crashes": all.crashes,
            "by_reader": by_reader,
        })
    );
    if failures > 0 || !status_ok {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
