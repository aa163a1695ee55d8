//! WGSL sources and their assembly into shader modules.
//!
//! Kernel families live one per file under `shaders/<layer>/`, shared pieces
//! under `shaders/common/`. A module is the concatenation of a fixed list of
//! files (no preprocessor); naga errors are mapped back to the original file
//! and line so a broken shader is reported as `shaders/<file>.wgsl:<line>`.
//!
//! A new kernel family is one row in `sources!` and one in `modules!`;
//! its kernels are rows of the table in [`super::kernels`].

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

/// Every WGSL file, one row each: the constant and [`ALL_SOURCES`] come
/// from the row (a test checks the list against the `shaders/` folder).
macro_rules! sources {
    ($($name:ident = $path:literal;)*) => {
        $(pub const $name: Source = wgsl!($path);)*
        /// Every WGSL file of the project.
        pub const ALL_SOURCES: &[Source] = &[$($name),*];
    };
}

sources! {
    PARAMS = "common/params.wgsl";
    REDUCE = "common/reduce.wgsl";
    CG_STATE = "common/cg_state.wgsl";
    RNG = "common/rng.wgsl";
    OP_Q1 = "common/op_q1.wgsl";
    OP_P1 = "common/op_p1.wgsl";
    PASS_Q1 = "common/pass_q1.wgsl";
    PASS_P1 = "common/pass_p1.wgsl";
    SOLVER = "physics/solver.wgsl";
    KL = "physics/kl.wgsl";
    DARCY = "physics/darcy.wgsl";
    POISSON1D = "physics/poisson1d.wgsl";
    OBS = "physics/obs.wgsl";
    P1_DIRECT = "physics/p1_direct.wgsl";
    MULTIGRID = "physics/multigrid.wgsl";
    RESIDUAL = "physics/residual.wgsl";
    RESIDUAL_VI = "infer/residual_vi.wgsl";
    DVAE_PARAMS = "common/dvae_params.wgsl";
    KALMAN = "physics/kalman.wgsl";
    DVAE = "infer/dvae.wgsl";
    STREAM = "gpu/stream.wgsl";
    VI = "infer/vi.wgsl";
    FLOW = "infer/flow.wgsl";
    ADAM = "infer/adam.wgsl";
    CG_TOL = "infer/cg_tol.wgsl";
    MCMC = "infer/mcmc.wgsl";
    SURROGATE = "infer/surrogate.wgsl";
    MLP = "nn/mlp.wgsl";
    RENDER_FIELD = "render/field.wgsl";
    LIVE = "render/live.wgsl";
}

/// Every shader module, one row each: its name and the files concatenated
/// to form it, in order. Solver modules get their workgroup size per device.
macro_rules! modules {
    ($($id:ident = $name:literal [$($src:ident),*] $(solver = $solver:literal)? $(wg = $wg:literal)?;)*) => {
        /// A shader module: a name and the files concatenated to form it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ModuleId {
            $($id,)*
        }

        impl ModuleId {
            pub const ALL: &'static [ModuleId] = &[$(ModuleId::$id,)*];

            pub fn name(self) -> &'static str {
                match self {
                    $(ModuleId::$id => $name,)*
                }
            }

            pub fn sources(self) -> &'static [Source] {
                match self {
                    $(ModuleId::$id => &[$($src),*],)*
                }
            }

            /// Whether the module's workgroup size is chosen per device.
            pub fn is_solver(self) -> bool {
                match self {
                    $(ModuleId::$id => false $(|| $solver)?,)*
                }
            }

            /// A fixed workgroup size other than [`DEFAULT_WG`], if the row sets one.
            pub fn fixed_wg(self) -> Option<u32> {
                match self {
                    $(ModuleId::$id => None $(.or(Some($wg)))?,)*
                }
            }

            /// The workgroup size the module is assembled with, given the
            /// device's solver workgroup size.
            pub fn wg(self, solver_wg: u32) -> u32 {
                if self.is_solver() {
                    solver_wg
                } else {
                    self.fixed_wg().unwrap_or(DEFAULT_WG)
                }
            }
        }
    };
}

modules! {
    SolverQ1 = "solver_q1" [PARAMS, REDUCE, CG_STATE, OP_Q1, PASS_Q1, SOLVER] solver = true;
    SolverP1 = "solver_p1" [PARAMS, REDUCE, CG_STATE, OP_P1, PASS_P1, SOLVER] solver = true;
    SolverQ1Mg = "solver_q1_mg" [PARAMS, REDUCE, CG_STATE, OP_Q1, PASS_Q1, MULTIGRID] solver = true;
    Kl = "kl" [PARAMS, REDUCE, KL];
    Residual = "residual" [PARAMS, REDUCE, RNG, OP_Q1, RESIDUAL] solver = true;
    ResidualVi = "residual_vi" [PARAMS, REDUCE, OP_Q1, RESIDUAL_VI] solver = true;
    Kalman = "kalman" [DVAE_PARAMS, KALMAN];
    Dvae = "dvae" [RNG, DVAE_PARAMS, DVAE];
    Darcy = "darcy" [PARAMS, OP_Q1, DARCY];
    Poisson1d = "poisson1d" [PARAMS, OP_P1, POISSON1D];
    Obs = "obs" [PARAMS, REDUCE, OBS];
    Stream = "stream" [PARAMS, STREAM];
    Stream64 = "stream_64" [PARAMS, STREAM] wg = 64;
    Vi = "vi" [RNG, VI];
    Flow = "flow" [FLOW];
    Adam = "adam" [ADAM];
    CgTol = "cg_tol" [CG_STATE, CG_TOL];
    P1Direct = "p1_direct" [PARAMS, CG_STATE, P1_DIRECT];
    Mlp = "mlp" [MLP];
    Mcmc = "mcmc" [RNG, CG_STATE, MCMC];
    Surrogate = "surrogate" [SURROGATE];
    Render = "render" [RENDER_FIELD];
    Live = "live" [LIVE];
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
    assemble_with(id, id.fixed_wg().unwrap_or(DEFAULT_WG))
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
    validate_with(id, id.fixed_wg().unwrap_or(DEFAULT_WG))
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
