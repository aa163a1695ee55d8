//! The `pdevi` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use pdevi::cli::commands;
use pdevi::physics::problem::ProblemArgs;
use pdevi::physics::problem::ProblemKind;
use pdevi::physics::solver::CgParams;

#[derive(Parser)]
#[command(
    name = "pdevi",
    version,
    about = "GPU variational inference for PDE inverse problems"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct ProblemOpts {
    /// darcy2d or poisson1d.
    #[arg(long, default_value = "darcy2d")]
    problem: String,
    /// Cells per side (default: the spec's, 64 for darcy2d, 128 for poisson1d).
    #[arg(long)]
    n: Option<usize>,
    /// Number of KL modes (default: 64 for darcy2d, 32 for poisson1d).
    #[arg(long)]
    d: Option<usize>,
}

impl ProblemOpts {
    fn args(&self) -> pdevi::Result<ProblemArgs> {
        Ok(ProblemArgs {
            kind: ProblemKind::parse(&self.problem)?,
            n: self.n,
            d: self.d,
        })
    }
}

#[derive(Args, Clone)]
struct CgOpts {
    /// Relative residual tolerance of the CG solves.
    #[arg(long, default_value_t = 1e-5)]
    tol: f64,
    /// Iteration cap per solve.
    #[arg(long, default_value_t = 4000)]
    max_iters: u32,
}

impl CgOpts {
    fn params(&self) -> CgParams {
        CgParams {
            rel_tol: self.tol,
            max_iters: self.max_iters,
            ..Default::default()
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the GPU adapter pdevi would use.
    Info,
    /// Forward solve for given KL coefficients (or z = 0).
    Solve {
        #[command(flatten)]
        problem: ProblemOpts,
        /// KL coefficients xi (.npy or CSV/text of d numbers).
        #[arg(long)]
        xi: Option<PathBuf>,
        #[command(flatten)]
        cg: CgOpts,
        /// Solve with a residual-trained network (`pdevi train residual --out DIR`) instead of
        /// CG: writes the mean u.npy and the predicted std u_std.npy; without --xi, a prior draw.
        #[arg(long)]
        net: Option<PathBuf>,
        /// With --net and a two-way model: propose xi for this field (.npy, like u.npy).
        #[arg(long)]
        u: Option<PathBuf>,
        /// With --net and no --xi: the seed of the prior draw.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "out/solve")]
        out: PathBuf,
    },
    /// Draw xi from the prior (or read it), solve, add noise; write the observation CSV and the truth.
    Simulate {
        #[command(flatten)]
        problem: ProblemOpts,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Use these KL coefficients instead of a prior draw.
        #[arg(long)]
        xi: Option<PathBuf>,
        /// advdiff1d: the parameters zeta = A,B instead of a prior draw.
        #[arg(long, allow_hyphen_values = true)]
        zeta: Option<String>,
        /// Noise standard deviation (default: the spec's sigma_n).
        #[arg(long)]
        noise: Option<f64>,
        /// Write a training set of COUNT prior draws and their noise-free sensor values
        /// (batched GPU solves) as one .safetensors file at --out.
        #[arg(long)]
        count: Option<usize>,
        /// With --count: also store the whole solution u of every draw.
        #[arg(long)]
        field: bool,
        /// With --count: print the plan (sizes, memory, solver batches) as JSON and stop.
        #[arg(long)]
        dry_run: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// A folder (one draw), or a .safetensors file with --count.
        #[arg(long, default_value = "out/simulate")]
        out: PathBuf,
    },
    /// Train networks on a simulated training set.
    Train {
        #[command(subcommand)]
        which: TrainCmd,
    },
    /// Amortised posteriors from a trained encoder: one forward pass for one CSV (--obs) or
    /// every CSV of a folder (--obs-dir), optionally refined by a few VI steps.
    Amortised(Box<AmortisedOpts>),
    /// Variational inference: posterior of the KL coefficients given observations.
    Run(Box<RunOpts>),
    /// MCMC (pCN or MALA, many chains on the GPU, Laplace- or prior-preconditioned): the gold
    /// standard posterior; same flags and output files as `run`, plus samples_xi.npy.
    Mcmc(Box<RunOpts>),
    /// Laplace approximation: MAP by Gauss-Newton with adjoint Jacobians and the
    /// covariance (I + J^T J / sigma^2)^-1; same flags and output files as `run`.
    Laplace(Box<RunOpts>),
    /// Simulation-based calibration: infer M prior draws, report the coverage of central
    /// intervals (50/80/90/95 %), SBC rank histograms and the expected coverage error.
    Calibrate(Box<CalibrateOpts>),
    /// Compare a posterior with a reference (output folders of `pdevi run`): field error, std
    /// ratios, KL and W2 in xi, coverage of REF's draws; writes compare.json and figures.
    Compare {
        /// Reference folder (e.g. an MCMC run; its samples_xi.npy gives the coverage).
        reference: PathBuf,
        /// Folder whose posterior is checked against the reference.
        other: PathBuf,
        /// Output folder (default: OTHER/compare_vs_<name of REF>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Side of a heat map in pixels, 128 .. 2048 (default 330).
        #[arg(long)]
        figure_px: Option<u32>,
    },
    /// Phi-DVAE (dynamical latent space) on advdiff1d: learn the physics' parameters zeta
    /// = (advection, diffusion) from frames with an encoder, a decoder, a Kalman filter and
    /// q(zeta); writes posterior_zeta.json, the smoothed state u_mean.npy / u_std.npy and figures.
    Dvae(Box<DvaeOpts>),
    /// Benchmarks (one JSON object per line).
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
}

#[derive(Args)]
struct RunOpts {
    /// TOML config (keys as the flags, e.g. examples/darcy2d.toml); flags win.
    config: Option<PathBuf>,
    /// The field's prior: kl (the spec's Gaussian random field) or vae:DIR (a deep generative
    /// prior from `pdevi train vae`; inference is over the decoder's latent w).
    #[arg(long)]
    prior: Option<String>,
    /// --family flow: affine coupling layers on top of the full-rank Gaussian base (default 4).
    #[arg(long)]
    flow_layers: Option<usize>,
    /// --family flow: hidden widths of each layer's net (default 32,32).
    #[arg(long)]
    flow_hidden: Option<String>,
    /// --family flow: kl (the ELBO, default) or renyi:ALPHA (alpha in [0, 1), mass-covering as
    /// alpha -> 0).
    #[arg(long)]
    divergence: Option<String>,
    #[arg(long)]
    problem: Option<String>,
    /// Observation CSV (x,y,value or x,value). Without it, data are simulated from the prior.
    #[arg(long)]
    obs: Option<PathBuf>,
    /// Noise standard deviation sigma_n of the observations.
    #[arg(long)]
    noise: Option<f64>,
    /// mean-field, full-rank or low-rank.
    #[arg(long)]
    family: Option<String>,
    /// Rank of the low-rank family.
    #[arg(long)]
    rank: Option<usize>,
    /// Monte Carlo samples per ELBO step (mcmc: draws kept per chain, default 1000).
    #[arg(long)]
    samples: Option<usize>,
    #[arg(long)]
    steps: Option<usize>,
    /// Adam learning rate (decays geometrically to lr * lr_final).
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    lr_final: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Seed of the simulated data when no --obs is given.
    #[arg(long)]
    simulate_seed: Option<u64>,
    #[arg(long)]
    n: Option<usize>,
    #[arg(long)]
    d: Option<usize>,
    /// Truth for error maps: xi (.npy of length d) or the field.
    #[arg(long)]
    truth: Option<PathBuf>,
    #[arg(long)]
    out: Option<PathBuf>,
    /// Solver samples for the posterior mean/std of u.
    #[arg(long)]
    predictive_samples: Option<usize>,
    /// CG relative tolerance.
    #[arg(long)]
    tol: Option<f64>,
    #[arg(long)]
    max_iters: Option<u32>,
    /// run: CG tolerance of the first steps, tightened a decade at a time to --tol.
    #[arg(long)]
    tol_start: Option<f64>,
    /// run: CG tolerance from the gradient's Monte Carlo noise: this factor
    /// (default 0.5) times its relative standard error (times lr_t / lr_0),
    /// between --tol and 3e-2; 0 turns it off (so does --tol-start).
    #[arg(long)]
    tol_noise: Option<f64>,
    /// darcy2d's CG preconditioner: auto (multigrid where the grid and device allow it), jacobi or mg.
    #[arg(long)]
    precond: Option<String>,
    /// Multigrid solves: auto (each system over many workgroups for small batches of large grids), narrow (a workgroup per system) or wide.
    #[arg(long)]
    solver_layout: Option<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// mcmc: pcn or mala.
    #[arg(long)]
    sampler: Option<String>,
    /// mcmc: chains run at once (one batch slot of the solver each).
    #[arg(long)]
    chains: Option<usize>,
    /// mcmc: warm-up steps per chain (step size adapted, draws not kept).
    #[arg(long)]
    warmup: Option<usize>,
    /// mcmc: keep every thin-th step after warm-up.
    #[arg(long)]
    thin: Option<usize>,
    /// mcmc: reference Gaussian of the proposals, laplace or prior.
    #[arg(long)]
    precondition: Option<String>,
    /// laplace (and the mcmc preconditioner): Gauss-Newton iterations at most.
    #[arg(long)]
    gn_iters: Option<usize>,
    /// run: start q at the Laplace approximation (laplace, default) or at the prior.
    #[arg(long)]
    init: Option<String>,
    /// run: the forward model in the likelihood, exact (default) or surrogate:DIR.
    #[arg(long)]
    forward: Option<String>,
    /// run: with a surrogate, add its predicted variance to sigma_n^2.
    #[arg(long)]
    surrogate_variance: bool,
    /// run: the likelihood of the physics, forward (default: y = P G(xi) + noise, a solver in
    /// the loop) or residual (u is a latent beside xi, the PDE residual a virtual observation
    /// with noise --sigma-r; no solver).
    #[arg(long)]
    likelihood: Option<String>,
    /// run --likelihood residual: the residual's noise level (in the load's units: h^2 per node
    /// for darcy2d).
    #[arg(long)]
    sigma_r: Option<f64>,
    /// run: open a window showing the posterior mean, std and ELBO as the loop runs
    /// (mouse wheel zooms the maps, drag pans, R resets).
    #[arg(long)]
    live: bool,
    /// run: write a PNG frame (mean | std | ELBO) every --every steps into this folder.
    #[arg(long)]
    frames: Option<PathBuf>,
    /// run: steps between frames of --frames, --gif and --live (default 10).
    #[arg(long)]
    every: Option<usize>,
    /// run: write the frames as an animated GIF, OUT/posterior_forming.gif.
    #[arg(long)]
    gif: bool,
    /// Side of a heat map in pixels, 128 .. 2048 (default 330; 990 for print at 300 dpi).
    #[arg(long)]
    figure_px: Option<u32>,
    /// Contour lines on the summary maps: this many bands (default 0 = none).
    #[arg(long)]
    contours: Option<u32>,
    /// run, mcmc: write OUT/checkpoint.safetensors every K steps (Ctrl-C writes one too).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// run, mcmc: continue the run whose --out is DIR from its checkpoint (same settings;
    /// flags may only change what is shown).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// run, mcmc, laplace: build everything, print the plan (device and host memory, the
    /// largest buffers, dispatches per step) as JSON and stop before the first step.
    #[arg(long)]
    dry_run: bool,
    /// run: time the sections of every step with GPU timestamps (where the device has them),
    /// print a table and add it to metrics.json.
    #[arg(long)]
    profile: bool,
}

#[derive(Args)]
struct AmortisedOpts {
    /// Folder written by `pdevi train encoder` (default: the shipped darcy2d n = 64, d = 64,
    /// sigma_n = 1e-3 encoder in assets/).
    #[arg(long, default_value = pdevi::infer::amortised::SHIPPED_ENCODER)]
    encoder: PathBuf,
    /// One observation CSV: writes the files `pdevi run` writes.
    #[arg(long)]
    obs: Option<PathBuf>,
    /// Every *.csv of a folder in one batch: a sub-folder per file (named after its stem).
    #[arg(long)]
    obs_dir: Option<PathBuf>,
    #[arg(long, default_value = "out/amortised")]
    out: PathBuf,
    /// Semi-amortised: run this many VI steps per data set from the encoder's q.
    #[arg(long, default_value_t = 0)]
    refine: usize,
    /// Monte Carlo samples per refinement step.
    #[arg(long, default_value_t = 16)]
    samples: usize,
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    #[arg(long, default_value_t = 0.3)]
    lr_final: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Truth (xi .npy) for error maps (with --obs).
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Solver samples for the posterior mean/std of u (with --obs).
    #[arg(long, default_value_t = 64)]
    predictive_samples: usize,
    #[arg(long)]
    quiet: bool,
}

#[derive(Subcommand)]
enum TrainCmd {
    /// Amortised encoder q(xi | y) by neural posterior estimation (minimise E[-log q(xi | y)]).
    Encoder(Box<EncoderOpts>),
    /// Surrogate forward model D(xi) ~ G(xi) (sensor values or the whole field).
    Surrogate(Box<SurrogateOpts>),
    /// Data-free probabilistic solver q(u | xi) trained on the PDE residual alone (no solver
    /// data): a Gaussian head over the nodal values; --two-way also learns p(xi | u).
    Residual(Box<ResidualOpts>),
    /// A VAE of fields (a deep generative prior): encoder q(w | z), Bernoulli decoder f(w),
    /// trained on `pdevi simulate --problem inclusions2d --count N` fields.
    Vae(Box<VaeOpts>),
}

#[derive(Args)]
struct VaeOpts {
    /// Training fields (.safetensors with z [N, n*n]).
    #[arg(long)]
    data: PathBuf,
    /// Latent dimension K.
    #[arg(long, default_value_t = 16)]
    latent: usize,
    /// Hidden widths of the encoder (the decoder mirrors them), e.g. 256,128.
    #[arg(long, default_value = "256,128", value_delimiter = ',')]
    hidden: Vec<String>,
    /// Hidden activation (silu, tanh, relu, gelu, softplus).
    #[arg(long, default_value = "silu")]
    act: String,
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Final learning rate as a fraction of --lr.
    #[arg(long, default_value_t = 0.1)]
    lr_final: f64,
    /// Weight of the KL term (1 = the ELBO).
    #[arg(long, default_value_t = 1.0)]
    beta: f64,
    /// Held-out fields (the last rows), scored every epoch.
    #[arg(long, default_value_t = 512)]
    validation: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    quiet: bool,
    #[arg(long, default_value = "out/vae")]
    out: PathBuf,
}

#[derive(Args)]
struct DvaeOpts {
    /// Frames of one sequence, .npy (T, H, n) (as `pdevi simulate --problem advdiff1d` writes).
    #[arg(long)]
    frames: Option<PathBuf>,
    /// Oracle mode: known noisy states (T, n) instead of frames; no encoder or decoder.
    #[arg(long)]
    oracle_states: Option<PathBuf>,
    /// Oracle mode: the states' noise level (sd).
    #[arg(long)]
    oracle_noise: Option<f64>,
    /// True states (T, n) for the error figures and metrics (u_true.npy).
    #[arg(long)]
    truth: Option<PathBuf>,
    /// True zeta (zeta_true.npy) for the metrics and the q(zeta) figure.
    #[arg(long)]
    zeta_truth: Option<PathBuf>,
    /// Training steps.
    #[arg(long, default_value_t = 8000)]
    steps: usize,
    /// Adam's learning rate of the encoder and decoder.
    #[arg(long, default_value_t = 5e-3)]
    lr: f64,
    /// Adam's learning rate of q(zeta) and the noise levels.
    #[arg(long, default_value_t = 2e-2)]
    lr_theta: f64,
    /// Both learning rates decay geometrically to this fraction.
    #[arg(long, default_value_t = 0.05)]
    lr_final: f64,
    /// Draws of zeta per step.
    #[arg(long, default_value_t = 8)]
    samples: usize,
    /// Draws of x per step (samples must be a multiple).
    #[arg(long, default_value_t = 1)]
    x_samples: usize,
    /// Hidden widths of the encoder (and of the column and frame decoders), e.g. 64,64.
    #[arg(long, default_value = "64,64", value_delimiter = ',')]
    hidden: Vec<usize>,
    /// Hidden activation of the encoder and of the column and frame decoders (tanh, relu, silu, gelu, ...; the level decoder is tanh).
    #[arg(long, default_value = "tanh")]
    act: String,
    /// Hidden widths of the level arch's decoder (a scalar level in, a pixel out).
    #[arg(long, default_value = "32", value_delimiter = ',')]
    level_hidden: Vec<usize>,
    /// level: column encoder, and a decoder that draws each pixel from its level relative to x (pins x to u); column: both networks see one frame column at a time (shared weights); frame: whole frames.
    #[arg(long, default_value = "level")]
    arch: String,
    /// Learn the pixel noise sigma_y (default: the spec's 0.05).
    #[arg(long)]
    learn_sigma_y: bool,
    /// The pseudo-observations' noise sigma_x during the warm-up (learned after it).
    #[arg(long, default_value_t = 0.05)]
    sigma_x0: f64,
    /// Frames in the Kalman term while q(zeta) is held (the warm-up's anchor; default all).
    #[arg(long)]
    anchor_frames: Option<usize>,
    /// Where q(zeta)'s mean starts: frames (zeta_1 from the speed the frames' first Fourier mode turns at) or prior (zeta = 0).
    #[arg(long, default_value = "frames")]
    zeta_start: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Steps between read-backs of the ELBO.
    #[arg(long, default_value_t = 50)]
    report_every: usize,
    /// No per-read-back lines on stderr.
    #[arg(long)]
    quiet: bool,
    #[arg(long, default_value = "out/dvae")]
    out: PathBuf,
}

#[derive(Args)]
struct ResidualOpts {
    #[command(flatten)]
    problem: ProblemOpts,
    /// Noise level sigma_r of the residual likelihood p(r_hat = 0 | u, z).
    #[arg(long, default_value_t = 1e-3)]
    sigma_r: f64,
    /// energy (the Ritz form: the residual weighted by A^-1) or raw (the nodal residual).
    #[arg(long, default_value = "energy")]
    form: String,
    /// nodal (a Gaussian over the interior nodal values) or spectral (over all sine modes,
    /// preconditioned by the constant-coefficient operator; energy form only).
    #[arg(long, default_value = "nodal")]
    basis: String,
    /// Nodal mean: log (u0 exp(output), u0 the kappa = 1 solution) or linear (u_scale output).
    #[arg(long, default_value = "log")]
    mean: String,
    /// One reparameterised draw of u per row and step instead of the exact expectation under q.
    #[arg(long)]
    sampled: bool,
    /// Also learn the inverse map p(xi | u) from the solver's draws (the two-way model).
    #[arg(long)]
    two_way: bool,
    #[arg(long, value_delimiter = ',', default_value = "256,256")]
    hidden: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "256,256")]
    inverse_hidden: Vec<String>,
    #[arg(long, default_value = "tanh")]
    activation: String,
    /// 1300 epochs of 16 steps: 13 minutes at n = 32, d = 32 on a 2-core software GPU.
    #[arg(long, default_value_t = 1300)]
    epochs: usize,
    /// Fresh prior draws per epoch.
    #[arg(long, default_value_t = 1024)]
    rows: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value_t = 1e-2)]
    lr: f64,
    /// Final learning rate as a fraction of --lr.
    #[arg(long, default_value_t = 0.01)]
    lr_final: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Held-out prior draws scored against exact CG solves after training.
    #[arg(long, default_value_t = 64)]
    eval_draws: usize,
    /// Write OUT/checkpoint.safetensors every K epochs (Ctrl-C writes one too).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Continue the training whose --out is DIR from its checkpoint (same flags).
    #[arg(long)]
    resume: Option<PathBuf>,
    #[arg(long, default_value = "out/residual")]
    out: PathBuf,
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct SurrogateOpts {
    /// Training set written by `pdevi simulate --count` (with --field for --target field).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "out/surrogate")]
    out: PathBuf,
    /// sensors or field.
    #[arg(long, default_value = "sensors")]
    target: String,
    /// Also predict a log-variance per output (Gaussian NLL training).
    #[arg(long)]
    variance: bool,
    #[arg(long, value_delimiter = ',', default_value = "256,256")]
    hidden: Vec<String>,
    #[arg(long, default_value = "gelu")]
    activation: String,
    #[arg(long, default_value_t = 100)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 0.05)]
    lr_final: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 0)]
    val_rows: usize,
    #[arg(long, default_value_t = 15)]
    patience: usize,
    /// Write OUT/checkpoint.safetensors every K epochs (Ctrl-C writes one too).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Continue the training whose --out is DIR from its checkpoint (same flags).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Print the plan (network size, memory estimates) as JSON and stop.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct EncoderOpts {
    /// Training set written by `pdevi simulate --count`.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "out/encoder")]
    out: PathBuf,
    /// Gaussian head: mean-field, low-rank, full-rank, or auto (full-rank up to d = 64, else
    /// mean-field; low-rank heads lose all digits in f32 on very tight posteriors).
    #[arg(long, default_value = "auto")]
    family: String,
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Hidden widths ("" for a linear encoder).
    #[arg(long, value_delimiter = ',', default_value = "256,256")]
    hidden: Vec<String>,
    /// Hidden activation: tanh, relu, silu, gelu, softplus.
    #[arg(long, default_value = "gelu")]
    activation: String,
    #[arg(long, default_value_t = 60)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Final learning rate as a fraction of --lr.
    #[arg(long, default_value_t = 0.05)]
    lr_final: f64,
    /// Observation noise sigma_n added to y, fresh every epoch (default: the set's problem's).
    #[arg(long)]
    noise: Option<f64>,
    /// Train K encoders from seeds seed..seed+K-1 and use their mixture.
    #[arg(long, default_value_t = 1)]
    ensemble: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Validation rows (default: a tenth of the set).
    #[arg(long, default_value_t = 0)]
    val_rows: usize,
    /// Stop after this many epochs without a better validation loss (0 = never).
    #[arg(long, default_value_t = 5)]
    patience: usize,
    /// UQ-VAE: add BETA x the ELBO of the exact physics decoder (one sample of each row's q
    /// through the batched solver per step, adjoint gradient into the head).
    #[arg(long, default_value_t = 0.0)]
    physics_weight: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// UQ-VAE: samples of each row's q through the solver per step.
    #[arg(long, default_value_t = 1)]
    physics_samples: usize,
    /// Write OUT/checkpoint.safetensors every K epochs (Ctrl-C writes one too).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Continue the training whose --out is DIR from its checkpoint (same flags).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Print the plan (network size, memory estimates) as JSON and stop.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    quiet: bool,
}

/// The encoder's family; `auto` picks by the training set's d.
fn encoder_family(
    name: &str,
    rank: usize,
    data: &std::path::Path,
) -> pdevi::Result<pdevi::infer::vi::Family> {
    use pdevi::infer::vi::Family;
    if name != "auto" {
        return Family::parse(name, rank);
    }
    // Low-rank heads are fragile for NPE in f32: with posteriors as tight as
    // darcy2d's at sigma_n = 1e-3 the capacitance solve of the low-rank
    // density loses all digits and training stops (measured, d = 64).
    let _ = rank;
    let d = pdevi::nn::dataset::SimSet::load(data)?.settings.d;
    if d <= 64 {
        Ok(Family::FullRank)
    } else {
        Ok(Family::MeanField)
    }
}

fn parse_hidden(h: &[String]) -> pdevi::Result<Vec<usize>> {
    h.iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .ok()
                .filter(|&w| w > 0)
                .ok_or_else(|| {
                    pdevi::Error::setting(
                        "hidden",
                        s,
                        "expected comma-separated positive widths, e.g. 256,256",
                    )
                })
        })
        .collect()
}

#[derive(Args)]
struct CalibrateOpts {
    #[command(flatten)]
    run: RunOpts,
    /// exact (poisson1d only: checks the checker), laplace, vi (with --family), mcmc,
    /// amortised (with --encoder) or surrogate (with --surrogate and --family).
    #[arg(long, default_value = "laplace")]
    method: String,
    /// Number of problems drawn from the prior.
    #[arg(long, default_value_t = 100)]
    problems: usize,
    /// Posterior draws per problem for the SBC ranks.
    #[arg(long, default_value_t = 99)]
    draws: usize,
    /// Bins of the rank histogram.
    #[arg(long, default_value_t = 20)]
    bins: usize,
    /// Multiply every posterior std by this (e.g. 0.5 to see an over-confident posterior flagged).
    #[arg(long, default_value_t = 1.0)]
    std_scale: f64,
    /// --method amortised: the encoder folder (problems drawn from the prior with a seed the
    /// training set did not use: set --seed).
    #[arg(long)]
    encoder: Option<PathBuf>,
    /// --method surrogate: the surrogate folder.
    #[arg(long)]
    surrogate: Option<PathBuf>,
}

impl RunOpts {
    fn config(&self) -> pdevi::Result<pdevi::cli::run::RunConfig> {
        let base = match &self.config {
            Some(p) => pdevi::cli::run::RunConfig::load(p)?,
            None => Default::default(),
        };
        Ok(base.merge(pdevi::cli::run::RunConfig {
            problem: self.problem.clone(),
            obs: self.obs.clone(),
            noise: self.noise,
            family: self.family.clone(),
            rank: self.rank,
            samples: self.samples,
            steps: self.steps,
            lr: self.lr,
            lr_final: self.lr_final,
            seed: self.seed,
            simulate_seed: self.simulate_seed,
            n: self.n,
            d: self.d,
            truth: self.truth.clone(),
            out: self.out.clone(),
            predictive_samples: self.predictive_samples,
            tol: self.tol,
            max_iters: self.max_iters,
            precond: self.precond.clone(),
            solver_layout: self.solver_layout.clone(),
            tol_start: self.tol_start,
            tol_noise: self.tol_noise,
            quiet: self.quiet.then_some(true),
            sampler: self.sampler.clone(),
            chains: self.chains,
            warmup: self.warmup,
            thin: self.thin,
            precondition: self.precondition.clone(),
            gn_iters: self.gn_iters,
            init: self.init.clone(),
            forward: self.forward.clone(),
            surrogate_variance: self.surrogate_variance.then_some(true),
            likelihood: self.likelihood.clone(),
            sigma_r: self.sigma_r,
            live: self.live.then_some(true),
            frames: self.frames.clone(),
            every: self.every,
            gif: self.gif.then_some(true),
            figure_px: self.figure_px,
            contours: self.contours,
            checkpoint_every: self.checkpoint_every,
            resume: self.resume.clone(),
            dry_run: self.dry_run.then_some(true),
            profile: self.profile.then_some(true),
            prior: self.prior.clone(),
            flow_layers: self.flow_layers,
            flow_hidden: self.flow_hidden.clone(),
            divergence: self.divergence.clone(),
        }))
    }
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Batched CG solves on darcy2d: solves/s and bandwidth against the device's streaming roofline.
    Solver {
        #[arg(long, value_delimiter = ',', default_value = "64,128,256")]
        sizes: Vec<usize>,
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        batches: Vec<usize>,
        /// Minimum timed seconds per configuration.
        #[arg(long, default_value_t = 1.0)]
        min_seconds: f64,
        /// Preconditioners to measure: jacobi, mg (multigrid).
        #[arg(long, value_delimiter = ',', default_value = "jacobi")]
        precond: Vec<String>,
        /// Multigrid layouts to measure: auto, narrow (a workgroup per system), wide (each system over many workgroups).
        #[arg(long, value_delimiter = ',', default_value = "auto")]
        layout: Vec<String>,
    },
    /// ELBO steps per second on darcy2d for each variational family.
    Vi {
        #[arg(long, default_value_t = 64)]
        n: usize,
        #[arg(long, default_value_t = 64)]
        d: usize,
        #[arg(long, default_value_t = 16)]
        samples: usize,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Preconditioners to measure: jacobi, mg (multigrid).
        #[arg(long, value_delimiter = ',', default_value = "jacobi")]
        precond: Vec<String>,
    },
    /// MCMC effective samples per second (min bulk ESS over xi / sampling time) on darcy2d,
    /// pCN and MALA with many chains.
    Mcmc {
        #[arg(long, default_value_t = 64)]
        n: usize,
        #[arg(long, default_value_t = 64)]
        d: usize,
        #[arg(long, default_value_t = 64)]
        chains: usize,
        /// Steps per chain: half warm-up, half kept.
        #[arg(long, default_value_t = 200)]
        steps: usize,
        /// Reference Gaussian of the proposals: laplace or prior.
        #[arg(long, default_value = "laplace")]
        precondition: String,
    },
    /// Figures on the GPU renderer against its CPU mirror (200 single-map figures, 4-map
    /// summaries), live frames, and the ELBO steps at the same size, as JSON lines.
    Render {
        #[arg(long, default_value_t = 64)]
        n: usize,
        #[arg(long, default_value_t = 64)]
        d: usize,
        /// Panels rendered by each painter.
        #[arg(long, default_value_t = 200)]
        count: usize,
    },
    /// The residual-trained solver against CG on the same device: solves/s at batch 1 and 256.
    Residual {
        #[command(flatten)]
        problem: ProblemOpts,
        /// A trained solver (default: an untrained network of the default size).
        #[arg(long)]
        net: Option<PathBuf>,
        /// Timed repetitions per batch size.
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// MLP kernels: square products against the device's FMA peak, gradient
    /// checks per activation, training throughput of a 49-256-256-128 MLP.
    Mlp {
        #[arg(long, value_delimiter = ',', default_value = "256,1024,4096")]
        sizes: Vec<usize>,
        /// Timed training steps (batch 256).
        #[arg(long, default_value_t = 64)]
        steps: usize,
    },
    /// When does amortisation pay for itself? Simulation and training seconds of an encoder
    /// and a surrogate, seconds per inference and accuracy (against a reference posterior) of
    /// encoder, encoder + refine, surrogate VI, exact VI and Laplace on held-out prior
    /// problems, and the break-even number of inferences.
    Amortised {
        /// darcy2d or poisson1d.
        #[arg(long, default_value = "darcy2d")]
        problem: String,
        #[arg(long, default_value_t = 16)]
        n: usize,
        #[arg(long, default_value_t = 16)]
        d: usize,
        /// Training pairs.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Training epochs of the encoder and of the surrogate.
        #[arg(long, default_value_t = 30)]
        epochs: usize,
        /// Held-out prior problems (seeds 100000..).
        #[arg(long, default_value_t = 5)]
        held_out: usize,
        /// VI steps of the refinement from the encoder's q.
        #[arg(long, default_value_t = 50)]
        refine: usize,
        /// Exact VI steps (Laplace start); the darcy2d reference runs 3x as many.
        #[arg(long, default_value_t = 100)]
        vi_steps: usize,
        /// Steps of VI with the surrogate (prior start).
        #[arg(long, default_value_t = 500)]
        surrogate_steps: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn run(cli: Cli) -> pdevi::Result<()> {
    match cli.cmd {
        Cmd::Info => print!("{}", commands::info()?),
        Cmd::Solve {
            net: Some(net),
            xi,
            u,
            seed,
            out,
            ..
        } => {
            let s = pdevi::cli::residual::solve_net(&net, xi.as_deref(), u.as_deref(), seed, &out)?;
            println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            println!("wrote {}", out.display());
        }
        Cmd::Solve { u: Some(_), .. } => {
            return Err(pdevi::Error::setting(
                "u",
                "set",
                "--u proposes xi with a two-way model: give it --net DIR",
            ));
        }
        Cmd::Solve {
            problem,
            xi,
            cg,
            out,
            ..
        } => {
            let s = commands::solve(&problem.args()?, xi.as_deref(), cg.params(), &out)?;
            println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            println!("wrote {}", out.display());
        }
        Cmd::Simulate {
            problem,
            seed,
            count,
            out,
            xi,
            noise,
            field,
            dry_run,
            zeta,
            ..
        } if pdevi::cli::dvae::is_advdiff(&problem.problem) => {
            if xi.is_some() || noise.is_some() || field || dry_run || problem.d.is_some() {
                return Err(pdevi::Error::setting(
                    "problem",
                    "advdiff1d",
                    "takes --zeta A,B (or a prior draw), --seed, --n, --count and --out; --xi, --noise, --d, --field and --dry-run are for the KL problems",
                ));
            }
            let pb = pdevi::cli::dvae::problem(problem.n)?;
            let z = zeta
                .as_deref()
                .map(pdevi::cli::dvae::parse_zeta)
                .transpose()?;
            let s = match count {
                Some(c) => pdevi::cli::dvae::simulate_set(&pb, z, c, seed, &out)?,
                None => pdevi::cli::dvae::simulate(&pb, z, seed, &out)?,
            };
            println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            println!("wrote {}", out.display());
        }
        Cmd::Simulate {
            problem,
            seed,
            count,
            out,
            xi,
            noise,
            field,
            dry_run,
            zeta: None,
            quiet,
        } if pdevi::cli::vae::is_inclusions(&problem.problem) => {
            if xi.is_some() || dry_run || problem.d.is_some() {
                return Err(pdevi::Error::setting(
                    "problem",
                    "inclusions2d",
                    "takes --seed, --n, --noise, and --count N [--field] for a training set; --xi, --d and --dry-run are for the KL problems",
                ));
            }
            let s = match count {
                Some(c) => pdevi::cli::vae::simulate_set(problem.n, c, seed, field, quiet, &out)?,
                None if field => {
                    return Err(pdevi::Error::setting(
                        "field",
                        "on",
                        "--field stores u in a training set: it needs --count N",
                    ))
                }
                None => pdevi::cli::vae::simulate_case(problem.n, seed, noise, &out)?,
            };
            println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            println!("wrote {}", out.display());
        }
        Cmd::Simulate { zeta: Some(_), .. } => {
            return Err(pdevi::Error::setting(
                "zeta",
                "given",
                "--zeta sets advdiff1d's parameters: use it with --problem advdiff1d",
            ));
        }
        Cmd::Dvae(o) => {
            let settings = pdevi::infer::dvae::DvaeSettings {
                steps: o.steps,
                lr: o.lr,
                lr_theta: o.lr_theta,
                lr_final: o.lr_final,
                samples: o.samples,
                x_samples: o.x_samples,
                hidden: o.hidden.clone(),
                level_hidden: o.level_hidden.clone(),
                act: pdevi::nn::mlp::Activation::parse(&o.act)?,
                arch: pdevi::infer::dvae::DvaeArch::parse(&o.arch)?,
                learn_sigma_y: o.learn_sigma_y,
                sigma_x0: o.sigma_x0,
                anchor_frames: o.anchor_frames.unwrap_or(usize::MAX),
                zeta_start: pdevi::infer::dvae::ZetaStart::parse(&o.zeta_start)?,
                seed: o.seed,
                report_every: o.report_every.max(1),
                ..Default::default()
            };
            let inp = pdevi::cli::dvae::DvaeInputs {
                frames: o.frames.clone(),
                oracle_states: o.oracle_states.clone(),
                oracle_noise: o.oracle_noise,
                truth: o.truth.clone(),
                zeta_truth: o.zeta_truth.clone(),
                out: o.out.clone(),
                quiet: o.quiet,
            };
            let m = pdevi::cli::dvae::run(&inp, &settings)?;
            let keys = [
                "posterior_zeta",
                "sigma_x",
                "sigma_y",
                "state_relative_l2",
                "zeta_error_in_sd",
                "seconds",
                "steps_per_second",
            ];
            let brief: serde_json::Map<String, serde_json::Value> = keys
                .iter()
                .filter_map(|k| m.get(*k).map(|v| (k.to_string(), v.clone())))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&brief).unwrap_or_default()
            );
            println!("wrote {}", o.out.display());
        }
        Cmd::Simulate {
            problem,
            seed,
            count: Some(count),
            field,
            quiet,
            out,
            xi,
            noise,
            dry_run,
            ..
        } => {
            if xi.is_some() || noise.is_some() {
                return Err(pdevi::Error::setting(
                    "count",
                    count,
                    "a training set holds prior draws and noise-free readings: drop --xi and --noise (the trainers add noise, `train encoder --noise`)",
                ));
            }
            let s = pdevi::cli::amortised::simulate_set(
                &problem.args()?,
                count,
                seed,
                field,
                &out,
                quiet,
                dry_run,
            )?;
            println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        }
        Cmd::Simulate {
            problem,
            seed,
            xi,
            noise,
            out,
            field,
            dry_run,
            ..
        } => {
            if dry_run {
                return Err(pdevi::Error::setting(
                    "dry-run",
                    "on",
                    "plans a training set: use it with --count (one draw needs no plan)",
                ));
            }
            if field {
                return Err(pdevi::Error::setting(
                    "field",
                    "on",
                    "--field stores u in a training set: it needs --count N",
                ));
            }
            let s = commands::simulate(&problem.args()?, seed, xi.as_deref(), noise, &out)?;
            println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            println!("wrote {}", out.display());
        }
        Cmd::Train {
            which: TrainCmd::Vae(o),
        } => {
            let s = pdevi::nn::vae::VaeSettings {
                latent: o.latent,
                hidden: parse_hidden(&o.hidden)?,
                act: pdevi::nn::mlp::Activation::parse(&o.act)?,
                epochs: o.epochs,
                batch: o.batch,
                lr: o.lr,
                lr_final: o.lr_final,
                beta: o.beta,
                validation: o.validation,
                seed: o.seed,
                quiet: o.quiet,
            };
            let ctx = pdevi::gpu::GpuContext::new()?;
            let r = pdevi::cli::vae::train(&ctx, &o.data, &s, &o.out)?;
            println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            println!("wrote {}", o.out.display());
        }
        Cmd::Train {
            which: TrainCmd::Encoder(o),
        } => {
            let set_noise = match o.noise {
                Some(v) => v,
                None => pdevi::nn::dataset::SimSet::load(&o.data)?.settings.sigma_n,
            };
            let s = pdevi::infer::amortised::EncoderSettings {
                family: encoder_family(&o.family, o.rank, &o.data)?,
                hidden: parse_hidden(&o.hidden)?,
                act: pdevi::nn::mlp::Activation::parse(&o.activation)?,
                epochs: o.epochs,
                batch: o.batch,
                lr: o.lr,
                lr_final: o.lr_final,
                noise: set_noise,
                ensemble: o.ensemble,
                seed: o.seed,
                val_rows: o.val_rows,
                patience: o.patience,
                quiet: o.quiet,
                physics_weight: o.physics_weight,
                physics_samples: o.physics_samples,
                weight_decay: o.weight_decay,
                ..Default::default()
            };
            let out = o.resume.clone().unwrap_or_else(|| o.out.clone());
            let config = serde_json::json!({
                "data": o.data, "family": o.family, "rank": o.rank, "hidden": o.hidden,
                "activation": o.activation, "epochs": o.epochs, "batch": o.batch, "lr": o.lr,
                "lr_final": o.lr_final, "noise": o.noise, "ensemble": o.ensemble, "seed": o.seed,
                "val_rows": o.val_rows, "patience": o.patience, "physics_weight": o.physics_weight,
                "weight_decay": o.weight_decay, "physics_samples": o.physics_samples,
            });
            if o.ensemble > 1 && (o.checkpoint_every.is_some() || o.resume.is_some()) {
                return Err(pdevi::Error::setting(
                    "ensemble",
                    o.ensemble,
                    "checkpoints cover one network: train the members one by one (--ensemble 1 with seeds S, S+1, ...) to checkpoint them",
                ));
            }
            let s = pdevi::infer::amortised::EncoderSettings {
                control: pdevi::cli::amortised::train_control(
                    &out,
                    o.ensemble == 1,
                    o.checkpoint_every,
                    o.resume.is_some(),
                    config,
                )?,
                ..s
            };
            if o.dry_run {
                let set = pdevi::nn::dataset::SimSet::load(&o.data)?;
                let arch = pdevi::infer::amortised::encoder_arch(
                    set.m(),
                    set.settings.d,
                    s.family,
                    &s.hidden,
                    s.act,
                );
                let plan = pdevi::cli::amortised::train_plan(
                    "train encoder",
                    &set,
                    &arch,
                    s.batch,
                    s.epochs,
                )?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&plan).unwrap_or_default()
                );
                return Ok(());
            }
            let m = pdevi::cli::amortised::train_encoder_cmd(&o.data, &out, &s)?;
            println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
        }
        Cmd::Train {
            which: TrainCmd::Residual(o),
        } => {
            let out = o.resume.clone().unwrap_or_else(|| o.out.clone());
            let config = serde_json::json!({
                "problem": o.problem.problem, "n": o.problem.n, "d": o.problem.d,
                "sigma_r": o.sigma_r, "form": o.form, "basis": o.basis, "mean": o.mean, "sampled": o.sampled, "two_way": o.two_way,
                "hidden": o.hidden, "inverse_hidden": o.inverse_hidden, "activation": o.activation,
                "epochs": o.epochs, "rows": o.rows, "batch": o.batch, "lr": o.lr,
                "lr_final": o.lr_final, "seed": o.seed,
            });
            let s = pdevi::infer::residual::ResidualSettings {
                sigma_r: o.sigma_r,
                form: pdevi::infer::residual::ResidualForm::parse(&o.form)?,
                basis: pdevi::infer::residual::ResidualBasis::parse(&o.basis)?,
                log_mean: match o.mean.as_str() {
                    "log" => true,
                    "linear" => false,
                    other => {
                        return Err(pdevi::Error::setting(
                            "mean",
                            other,
                            "expected log (default) or linear",
                        ))
                    }
                },
                sampled: o.sampled,
                hidden: parse_hidden(&o.hidden)?,
                act: pdevi::nn::mlp::Activation::parse(&o.activation)?,
                epochs: o.epochs,
                rows: o.rows,
                batch: o.batch,
                lr: o.lr,
                lr_final: o.lr_final,
                seed: o.seed,
                two_way: o.two_way,
                inverse_hidden: parse_hidden(&o.inverse_hidden)?,
                quiet: o.quiet,
                control: pdevi::cli::amortised::train_control(
                    &out,
                    true,
                    o.checkpoint_every,
                    o.resume.is_some(),
                    config,
                )?,
            };
            let m = pdevi::cli::residual::train_residual_cmd(
                &o.problem.args()?,
                &s,
                o.eval_draws,
                &out,
            )?;
            println!(
                "{}",
                serde_json::to_string_pretty(&m["accuracy"]).unwrap_or_default()
            );
            println!("wrote {}", out.display());
        }
        Cmd::Train {
            which: TrainCmd::Surrogate(o),
        } => {
            let s = pdevi::infer::surrogate::SurrogateSettings {
                target: pdevi::infer::surrogate::Target::parse(&o.target)?,
                hidden: parse_hidden(&o.hidden)?,
                act: pdevi::nn::mlp::Activation::parse(&o.activation)?,
                variance: o.variance,
                epochs: o.epochs,
                batch: o.batch,
                lr: o.lr,
                lr_final: o.lr_final,
                seed: o.seed,
                val_rows: o.val_rows,
                patience: o.patience,
                quiet: o.quiet,
                control: Default::default(),
            };
            let out = o.resume.clone().unwrap_or_else(|| o.out.clone());
            let config = serde_json::json!({
                "data": o.data, "target": o.target, "variance": o.variance, "hidden": o.hidden,
                "activation": o.activation, "epochs": o.epochs, "batch": o.batch, "lr": o.lr,
                "lr_final": o.lr_final, "seed": o.seed, "val_rows": o.val_rows,
                "patience": o.patience,
            });
            let s = pdevi::infer::surrogate::SurrogateSettings {
                control: pdevi::cli::amortised::train_control(
                    &out,
                    true,
                    o.checkpoint_every,
                    o.resume.is_some(),
                    config,
                )?,
                ..s
            };
            if o.dry_run {
                let set = pdevi::nn::dataset::SimSet::load(&o.data)?;
                let width = match s.target {
                    pdevi::infer::surrogate::Target::Sensors => set.m(),
                    pdevi::infer::surrogate::Target::Field => set.problem()?.nunk(),
                };
                let arch = pdevi::infer::surrogate::surrogate_arch(
                    set.settings.d,
                    width,
                    &s.hidden,
                    s.act,
                    s.variance,
                );
                let plan = pdevi::cli::amortised::train_plan(
                    "train surrogate",
                    &set,
                    &arch,
                    s.batch,
                    s.epochs,
                )?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&plan).unwrap_or_default()
                );
                return Ok(());
            }
            let m = pdevi::cli::surrogate::train_surrogate_cmd(&o.data, &out, &s)?;
            println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
        }
        Cmd::Amortised(o) => {
            let s = pdevi::cli::amortised::AmortisedSettings {
                encoder: o.encoder,
                obs: o.obs,
                obs_dir: o.obs_dir,
                out: o.out,
                refine: o.refine,
                samples: o.samples,
                lr: o.lr,
                lr_final: o.lr_final,
                seed: o.seed,
                truth: o.truth,
                predictive_samples: o.predictive_samples,
                quiet: o.quiet,
            };
            let m = pdevi::cli::amortised::amortised(&s)?;
            println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
        }
        Cmd::Run(opts) => {
            let cfg = opts.config()?;
            let m = pdevi::cli::run::run(&cfg)?;
            println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
        }
        Cmd::Mcmc(opts) => {
            let cfg = opts.config()?;
            let m = pdevi::cli::mcmc::run_mcmc(&cfg)?;
            println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
        }
        Cmd::Calibrate(opts) => {
            let cfg = opts.run.config()?;
            let settings = pdevi::check::calibrate::CalibrateSettings {
                method: pdevi::check::calibrate::Method::parse(
                    &opts.method,
                    cfg.family.as_deref(),
                    cfg.rank.unwrap_or(8),
                )?,
                problems: opts.problems,
                draws: opts.draws,
                bins: opts.bins,
                std_scale: opts.std_scale,
                encoder: opts.encoder.clone(),
                surrogate: opts.surrogate.clone(),
            };
            let m = pdevi::cli::calibrate::calibrate(&cfg, &settings)?;
            println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
        }
        Cmd::Laplace(opts) => {
            let cfg = opts.config()?;
            let m = pdevi::cli::laplace::run_laplace(&cfg)?;
            println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
        }
        Cmd::Compare {
            reference,
            other,
            out,
            figure_px,
        } => {
            if let Some(px) = figure_px {
                pdevi::output::plot::set_map_px(px)?;
            }
            let out =
                out.unwrap_or_else(|| pdevi::check::compare::default_out_dir(&reference, &other));
            // A device only for the field figure (drawn by its rasteriser).
            let ctx = pdevi::cli::commands::figure_context();
            let painter = pdevi::output::plot::Painter::of(ctx.as_ref());
            let v = pdevi::check::compare::compare(painter, &reference, &other, Some(&out))?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            eprintln!("wrote {}", out.display());
        }
        Cmd::Bench { which } => match which {
            BenchCmd::Solver {
                sizes,
                batches,
                min_seconds,
                precond,
                layout,
            } => {
                let preconds = parse_preconds(&precond)?;
                let layouts = layout
                    .iter()
                    .map(|l| pdevi::physics::solver::SolverLayout::parse(l))
                    .collect::<pdevi::Result<Vec<_>>>()?;
                let ctx = pdevi::GpuContext::new()?;
                eprintln!("device: {}", ctx.describe());
                pdevi::cli::bench::solver(
                    &ctx,
                    &sizes,
                    &batches,
                    min_seconds,
                    &preconds,
                    &layouts,
                    |s| println!("{}", serde_json::to_string(s).unwrap_or_default()),
                    |r| println!("{}", serde_json::to_string(r).unwrap_or_default()),
                )?;
            }
            BenchCmd::Vi {
                n,
                d,
                samples,
                steps,
                precond,
            } => {
                let preconds = parse_preconds(&precond)?;
                let ctx = pdevi::GpuContext::new()?;
                eprintln!("device: {}", ctx.describe());
                pdevi::cli::bench::vi(&ctx, n, d, samples, steps, &preconds, |r| {
                    println!("{}", serde_json::to_string(r).unwrap_or_default())
                })?;
            }
            BenchCmd::Mcmc {
                n,
                d,
                chains,
                steps,
                precondition,
            } => {
                let ctx = pdevi::GpuContext::new()?;
                eprintln!("device: {}", ctx.describe());
                pdevi::cli::bench::mcmc(&ctx, n, d, chains, steps, &precondition, |r| {
                    println!("{}", serde_json::to_string(r).unwrap_or_default())
                })?;
            }
            BenchCmd::Render { n, d, count } => {
                let ctx = pdevi::GpuContext::new()?;
                eprintln!("device: {}", ctx.describe());
                pdevi::cli::bench::render(&ctx, n, d, count, |r| {
                    println!("{}", serde_json::to_string(r).unwrap_or_default())
                })?;
            }
            BenchCmd::Mlp { sizes, steps } => {
                let ctx = pdevi::GpuContext::new()?;
                eprintln!("device: {}", ctx.describe());
                pdevi::cli::bench::mlp(&ctx, &sizes, steps, |r| {
                    println!("{}", serde_json::to_string(r).unwrap_or_default())
                })?;
            }
            BenchCmd::Residual { problem, net, reps } => {
                pdevi::cli::residual::bench_residual(
                    &problem.args()?,
                    net.as_deref(),
                    reps.max(1),
                )?;
            }
            BenchCmd::Amortised {
                problem,
                n,
                d,
                count,
                epochs,
                held_out,
                refine,
                vi_steps,
                surrogate_steps,
                seed,
            } => {
                let ctx = pdevi::GpuContext::new()?;
                eprintln!("device: {}", ctx.describe());
                let o = pdevi::cli::bench::AmortisedBench {
                    problem,
                    n,
                    d,
                    count,
                    epochs,
                    held_out,
                    refine,
                    vi_steps,
                    surrogate_steps,
                    seed,
                };
                pdevi::cli::bench::amortised(&ctx, &o, |r| {
                    println!("{}", serde_json::to_string(r).unwrap_or_default())
                })?;
            }
        },
    }
    Ok(())
}

fn main() -> ExitCode {
    pdevi::interrupt::install();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ pdevi::Error::Interrupted(_)) => {
            eprintln!("{e}");
            ExitCode::from(pdevi::interrupt::EXIT_NOW as u8)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_preconds(names: &[String]) -> pdevi::Result<Vec<pdevi::physics::solver::Precond>> {
    names
        .iter()
        .map(|n| pdevi::physics::solver::Precond::parse(n))
        .collect()
}
