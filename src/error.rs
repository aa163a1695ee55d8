//! The crate's error type: every failure a user can cause (bad files, bad
//! settings, a device that cannot hold the problem, a solver that does not
//! converge) becomes one of these, with enough context to act on.

use std::path::PathBuf;

/// Errors returned by pdevi.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No GPU adapter matched; the message says how to get one.
    #[error("no GPU adapter found{detail}\n  On Linux without a GPU install the software Vulkan driver: `apt-get install -y mesa-vulkan-drivers libvulkan1`\n  (or EGL for the GL backend: `apt-get install -y libegl1 libgl1-mesa-dri`).\n  PDEVI_BACKEND (vulkan, metal, dx12, gl) and PDEVI_ADAPTER (substring of the adapter name) restrict the choice.")]
    NoAdapter { detail: String },

    #[error("could not create the GPU device: {0}")]
    RequestDevice(#[from] wgpu::RequestDeviceError),

    /// A WGSL kernel failed to parse or validate (shown with file and line).
    #[error("shader `{kernel}` is invalid:\n{message}")]
    Shader { kernel: String, message: String },

    /// wgpu reported a validation or out-of-memory error.
    #[error("GPU error in {context}: {message}")]
    Gpu { context: String, message: String },

    /// A buffer would exceed what the device allows.
    #[error("{what} needs {bytes} bytes but the device allows at most {limit} bytes per {limit_name}; reduce the grid size or the batch")]
    TooLarge {
        what: String,
        bytes: u64,
        limit: u64,
        limit_name: &'static str,
    },

    /// Bad content in an input file, with the place it was found.
    #[error("{}:{line}: {message}", file.display())]
    Input {
        file: PathBuf,
        line: usize,
        message: String,
    },

    /// Bad setting (flag or config value).
    #[error("invalid setting `{name}` = {value}: {message}")]
    Setting {
        name: String,
        value: String,
        message: String,
    },

    /// Batched CG solves that did not all converge, with their figures.
    #[error("{0}")]
    Cg(#[from] CgError),

    /// An iterative method (Gauss-Newton, an f64 reference solve, the MCMC
    /// start) did not reach its goal.
    #[error("{0}")]
    NoConvergence(String),

    /// A matrix that must be symmetric positive definite (a covariance, a
    /// Gauss-Newton Hessian) is not.
    #[error("{what}: {source}")]
    NotPositiveDefinite {
        what: String,
        source: crate::math::linalg::NotSpd,
    },

    /// The optimisation diverged (NaN/inf objective).
    #[error("{0}")]
    Diverged(String),

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },

    /// Stopped by Ctrl-C after writing the last good state.
    #[error("interrupted: {0}")]
    Interrupted(String),
}

/// The figures of a batch of CG solves of which some did not converge.
#[derive(Clone, Debug, PartialEq)]
pub struct CgError {
    /// What the solves were for ("posterior predictive solves").
    pub what: String,
    /// Systems that did not converge, of `systems`.
    pub failed: usize,
    pub systems: usize,
    /// The first system that failed, its iterations, relative residual and
    /// status (2: iteration cap, 3: breakdown, not SPD or NaN).
    pub first: usize,
    pub iters: u32,
    pub rel_residual: f64,
    pub status: u32,
    /// The solver's settings.
    pub rel_tol: f64,
    pub max_iters: u32,
}

impl std::fmt::Display for CgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = if self.status == 3 {
            "breakdown: the operator is not positive definite or the data contain NaN/inf (check the coefficient field)".to_string()
        } else {
            format!(
                "iteration cap {} reached with relative residual {:.3e} > {:.1e} (raise max_iters or loosen the tolerance)",
                self.max_iters, self.rel_residual, self.rel_tol
            )
        };
        write!(
            f,
            "{}: {} of {} systems did not converge; first is system {}: {why}",
            self.what, self.failed, self.systems, self.first
        )
    }
}

impl std::error::Error for CgError {}

/// Crate result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for an I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A matrix that should have been SPD, named.
    pub fn not_spd(what: impl Into<String>, source: crate::math::linalg::NotSpd) -> Self {
        Error::NotPositiveDefinite {
            what: what.into(),
            source,
        }
    }

    /// Shorthand for a bad setting.
    pub fn setting(name: &str, value: impl std::fmt::Display, message: impl Into<String>) -> Self {
        Error::Setting {
            name: name.to_string(),
            value: value.to_string(),
            message: message.into(),
        }
    }
}
