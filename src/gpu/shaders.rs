//! WGSL sources and their assembly into shader modules.
//!
//! Kernel families live one per file under `shaders/`, shared pieces under
//! `shaders/common/`. A module is the concatenation of a fixed list of files
//! (no preprocessor); naga errors are mapped back to the original file and
//! line so a broken shader is reported as `shaders/<file>.wgsl:<line>`.

use crate::error::{Error, Result};

/// One WGSL source file, embedded at build time.
#[derive(Clone, Copy, Debug)]
pub struct Source {
    pub path: &'static str,
    pub text: &'static str,
}

macro_rules! wgsl {
    ($p:literal) => {
        Source {
            path: concat!("shaders/", $p),
            text: include_str!(concat!("../../shaders/", $p)),
        }
    };
}

pub const PARAMS: Source = wgsl!("common/params.wgsl");
pub const REDUCE: Source = wgsl!("common/reduce.wgsl");
pub const OP_Q1: Source = wgsl!("common/op_q1.wgsl");
pub const OP_P1: Source = wgsl!("common/op_p1.wgsl");
pub const PASS_Q1: Source = wgsl!("common/pass_q1.wgsl");
pub const PASS_P1: Source = wgsl!("common/pass_p1.wgsl");
pub const SOLVER: Source = wgsl!("physics/solver.wgsl");
pub const KL: Source = wgsl!("physics/kl.wgsl");
pub const DARCY: Source = wgsl!("physics/darcy.wgsl");
pub const POISSON1D: Source = wgsl!("physics/poisson1d.wgsl");
pub const OBS: Source = wgsl!("physics/obs.wgsl");
pub const STREAM: Source = wgsl!("gpu/stream.wgsl");
pub const RNG: Source = wgsl!("common/rng.wgsl");
pub const VI: Source = wgsl!("infer/vi.wgsl");
pub const ADAM: Source = wgsl!("infer/adam.wgsl");
pub const P1_DIRECT: Source = wgsl!("physics/p1_direct.wgsl");
pub const MLP: Source = wgsl!("nn/mlp.wgsl");
pub const MCMC: Source = wgsl!("infer/mcmc.wgsl");

/// Every WGSL file of the project (a test checks that each is used by a module
/// and that this list matches the `shaders/` folder).
pub const ALL_SOURCES: &[Source] = &[
    PARAMS, REDUCE, OP_Q1, OP_P1, PASS_Q1, PASS_P1, SOLVER, KL, DARCY, POISSON1D, OBS, STREAM, RNG,
    VI, ADAM, P1_DIRECT, MLP, MCMC,
];

/// A shader module: a name and the files concatenated to form it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModuleId {
    SolverQ1,
    SolverP1,
    Kl,
    Darcy,
    Poisson1d,
    Obs,
    Stream,
    Vi,
    Adam,
    P1Direct,
    Mlp,
    Mcmc,
}

impl ModuleId {
    pub const ALL: &'static [ModuleId] = &[
        ModuleId::SolverQ1,
        ModuleId::SolverP1,
        ModuleId::Kl,
        ModuleId::Darcy,
        ModuleId::Poisson1d,
        ModuleId::Obs,
        ModuleId::Stream,
        ModuleId::Vi,
        ModuleId::Adam,
        ModuleId::P1Direct,
        ModuleId::Mlp,
        ModuleId::Mcmc,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ModuleId::SolverQ1 => "solver_q1",
            ModuleId::SolverP1 => "solver_p1",
            ModuleId::Kl => "kl",
            ModuleId::Darcy => "darcy",
            ModuleId::Poisson1d => "poisson1d",
            ModuleId::Obs => "obs",
            ModuleId::Stream => "stream",
            ModuleId::Vi => "vi",
            ModuleId::Adam => "adam",
            ModuleId::P1Direct => "p1_direct",
            ModuleId::Mlp => "mlp",
            ModuleId::Mcmc => "mcmc",
        }
    }

    /// Whether the module's workgroup size is chosen per device.
    pub fn is_solver(self) -> bool {
        matches!(self, ModuleId::SolverQ1 | ModuleId::SolverP1)
    }

    pub fn sources(self) -> &'static [Source] {
        match self {
            ModuleId::SolverQ1 => &[PARAMS, REDUCE, OP_Q1, PASS_Q1, SOLVER],
            ModuleId::SolverP1 => &[PARAMS, REDUCE, OP_P1, PASS_P1, SOLVER],
            ModuleId::Kl => &[PARAMS, REDUCE, KL],
            ModuleId::Darcy => &[PARAMS, OP_Q1, DARCY],
            ModuleId::Poisson1d => &[PARAMS, OP_P1, POISSON1D],
            ModuleId::Obs => &[PARAMS, REDUCE, OBS],
            ModuleId::Stream => &[PARAMS, STREAM],
            ModuleId::Vi => &[RNG, VI],
            ModuleId::Adam => &[ADAM],
            ModuleId::P1Direct => &[PARAMS, P1_DIRECT],
            ModuleId::Mlp => &[MLP],
            ModuleId::Mcmc => &[RNG, MCMC],
        }
    }
}

/// The assembled text of a module and where each file starts in it.
pub struct Assembled {
    pub text: String,
    /// (path, first line in `text` (1-based), number of lines)
    pub map: Vec<(&'static str, usize, usize)>,
}

impl Assembled {
    /// Map a 1-based line of the assembled text to (file, line in file).
    pub fn origin(&self, line: usize) -> (&'static str, usize) {
        for &(path, start, count) in &self.map {
            if line >= start && line < start + count {
                return (path, line - start + 1);
            }
        }
        ("<assembled>", line)
    }
}

/// Workgroup size of every module except the solver's.
pub const DEFAULT_WG: u32 = 256;

/// Workgroup sizes the solver modules accept (squares, for the two-level reduction).
pub const SOLVER_WGS: &[u32] = &[16, 64, 256];

/// `assemble_with` at the default workgroup size.
pub fn assemble(id: ModuleId) -> Assembled {
    assemble_with(id, DEFAULT_WG)
}

/// Assemble a module; modules built on common/params get `const WG` (and
/// `WG_COLS` = sqrt(WG)) generated in front.
pub fn assemble_with(id: ModuleId, wg: u32) -> Assembled {
    let mut text = String::new();
    let mut map = Vec::new();
    let mut line = 1;
    if id.sources().iter().any(|s| s.path == PARAMS.path) {
        let cols = (wg as f64).sqrt() as u32;
        text.push_str(&format!(
            "const WG: u32 = {wg}u;\nconst WG_COLS: u32 = {cols}u;\n"
        ));
        map.push(("<generated>", 1, 2));
        line = 3;
    }
    for src in id.sources() {
        let count = src.text.lines().count() + 1;
        map.push((src.path, line, count));
        text.push_str(src.text);
        if !src.text.ends_with('\n') {
            text.push('\n');
        }
        text.push('\n');
        line += count;
    }
    Assembled { text, map }
}

/// Parse and validate a module with naga (no device needed). Errors name the
/// original file and line.
pub fn validate(id: ModuleId) -> Result<naga::Module> {
    validate_with(id, DEFAULT_WG)
}

/// [`validate`] at a given workgroup size.
pub fn validate_with(id: ModuleId, wg: u32) -> Result<naga::Module> {
    validate_assembled(id.name(), &assemble_with(id, wg))
}

/// Validate assembled text (also used on deliberately broken sources in tests).
pub fn validate_assembled(name: &str, asm: &Assembled) -> Result<naga::Module> {
    validate_assembled_info(name, asm).map(|(m, _)| m)
}

/// [`validate`] with naga's analysis of the module (which globals each
/// entry point uses, and how): the reflection the kernel-table test reads.
pub fn reflect(id: ModuleId) -> Result<(naga::Module, naga::valid::ModuleInfo)> {
    validate_assembled_info(id.name(), &assemble(id))
}

fn validate_assembled_info(
    name: &str,
    asm: &Assembled,
) -> Result<(naga::Module, naga::valid::ModuleInfo)> {
    let fail = |line: Option<usize>, detail: String| {
        let place = match line {
            Some(l) => {
                let (path, l) = asm.origin(l);
                format!("{path}:{l}: ")
            }
            None => String::new(),
        };
        Error::Shader {
            kernel: name.to_string(),
            message: format!("{place}{detail}"),
        }
    };
    let module = naga::front::wgsl::parse_str(&asm.text).map_err(|e| {
        let line = e.location(&asm.text).map(|l| l.line_number as usize);
        fail(line, e.emit_to_string(&asm.text))
    })?;
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    );
    let info = validator.validate(&module).map_err(|e| {
        let line = e.location(&asm.text).map(|l| l.line_number as usize);
        fail(line, e.emit_to_string(&asm.text))
    })?;
    Ok((module, info))
}
