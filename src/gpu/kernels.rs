//! The table of compute kernels: module, entry point and binding kinds.
//! Bind-group layouts and pipelines are generated from it once, when the
//! [`GpuContext`](super::GpuContext) is created.

use super::shaders::ModuleId;

/// How a binding is used by a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind {
    Uniform,
    Read,
    ReadWrite,
}

/// One compute entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelId {
    CgStartQ1,
    CgIterateQ1,
    JacobiRunQ1,
    CgStartP1,
    CgIterateP1,
    JacobiRunP1,
    KlMap,
    KlPullback,
    KlPullbackSerial,
    Q1Apply,
    Q1Diag,
    Q1AdjointGrad,
    P1Apply,
    P1Diag,
    ObsMisfit,
    StreamTriad,
    ViNoise,
    ViSample,
    ViKl,
    ViKlLowRank,
    ViGrad,
    ViElbo,
    AdamStep,
    P1Direct,
    AdamStepClipped,
    GradClip,
    Matmul,
    MatmulBlocked,
    ActBackward,
    BiasGrad,
    LossMse,
    LossGaussNll,
    LossReduce,
    GatherRows,
    FmaPeak,
    McmcPropose,
    McmcMap,
    McmcGrad,
    McmcAccept,
}

use Bind::{Read as R, ReadWrite as W, Uniform as U};

const SOLVER_BINDS: &[(u32, Bind)] = &[(0, U), (1, R), (2, R), (3, W), (4, W), (5, W)];

/// Uniform, A, B (read), C, Z (read-write): products and losses of shaders/mlp.wgsl.
const MLP_ABCZ: &[(u32, Bind)] = &[(0, U), (1, R), (2, R), (3, W), (4, W)];

impl KernelId {
    pub const ALL: &'static [KernelId] = &[
        KernelId::CgStartQ1,
        KernelId::CgIterateQ1,
        KernelId::JacobiRunQ1,
        KernelId::CgStartP1,
        KernelId::CgIterateP1,
        KernelId::JacobiRunP1,
        KernelId::KlMap,
        KernelId::KlPullback,
        KernelId::KlPullbackSerial,
        KernelId::Q1Apply,
        KernelId::Q1Diag,
        KernelId::Q1AdjointGrad,
        KernelId::P1Apply,
        KernelId::P1Diag,
        KernelId::ObsMisfit,
        KernelId::StreamTriad,
        KernelId::ViNoise,
        KernelId::ViSample,
        KernelId::ViKl,
        KernelId::ViKlLowRank,
        KernelId::ViGrad,
        KernelId::ViElbo,
        KernelId::AdamStep,
        KernelId::P1Direct,
        KernelId::AdamStepClipped,
        KernelId::GradClip,
        KernelId::Matmul,
        KernelId::MatmulBlocked,
        KernelId::ActBackward,
        KernelId::BiasGrad,
        KernelId::LossMse,
        KernelId::LossGaussNll,
        KernelId::LossReduce,
        KernelId::GatherRows,
        KernelId::FmaPeak,
        KernelId::McmcPropose,
        KernelId::McmcMap,
        KernelId::McmcGrad,
        KernelId::McmcAccept,
    ];

    pub fn index(self) -> usize {
        Self::ALL.iter().position(|&k| k == self).unwrap_or(0)
    }

    /// (module, entry point, bindings in binding order).
    pub fn spec(self) -> (ModuleId, &'static str, &'static [(u32, Bind)]) {
        use KernelId::*;
        match self {
            CgStartQ1 => (ModuleId::SolverQ1, "cg_start", SOLVER_BINDS),
            CgIterateQ1 => (ModuleId::SolverQ1, "cg_iterate", SOLVER_BINDS),
            JacobiRunQ1 => (ModuleId::SolverQ1, "jacobi_run", SOLVER_BINDS),
            CgStartP1 => (ModuleId::SolverP1, "cg_start", SOLVER_BINDS),
            CgIterateP1 => (ModuleId::SolverP1, "cg_iterate", SOLVER_BINDS),
            JacobiRunP1 => (ModuleId::SolverP1, "jacobi_run", SOLVER_BINDS),
            KlMap => (
                ModuleId::Kl,
                "kl_map",
                &[(0, U), (1, R), (2, R), (3, W), (4, W)],
            ),
            KlPullback => (
                ModuleId::Kl,
                "kl_pullback",
                &[(0, U), (2, R), (5, R), (6, W)],
            ),
            KlPullbackSerial => (
                ModuleId::Kl,
                "kl_pullback_serial",
                &[(0, U), (2, R), (5, R), (6, W)],
            ),
            Q1Apply => (
                ModuleId::Darcy,
                "q1_apply",
                &[(0, U), (1, R), (2, R), (4, W)],
            ),
            Q1Diag => (ModuleId::Darcy, "q1_diag", &[(0, U), (1, R), (4, W)]),
            Q1AdjointGrad => (
                ModuleId::Darcy,
                "q1_adjoint_grad",
                &[(0, U), (1, R), (2, R), (3, R), (5, W)],
            ),
            P1Apply => (ModuleId::Poisson1d, "p1_apply", &[(0, U), (2, R), (4, W)]),
            P1Diag => (ModuleId::Poisson1d, "p1_diag", &[(0, U), (4, W)]),
            ObsMisfit => (
                ModuleId::Obs,
                "obs_misfit",
                &[(0, U), (1, R), (2, R), (3, R), (4, W), (5, W)],
            ),
            StreamTriad => (
                ModuleId::Stream,
                "stream_triad",
                &[(0, U), (1, R), (2, R), (3, W)],
            ),
            ViNoise => (ModuleId::Vi, "vi_noise", &[(0, R), (2, W)]),
            ViSample => (ModuleId::Vi, "vi_sample", &[(0, R), (1, R), (2, W), (3, W)]),
            ViKl => (ModuleId::Vi, "vi_kl", &[(0, R), (1, R), (5, W), (7, W)]),
            ViKlLowRank => (
                ModuleId::Vi,
                "vi_kl_lowrank",
                &[(0, R), (1, R), (5, W), (7, W)],
            ),
            ViGrad => (
                ModuleId::Vi,
                "vi_grad",
                &[(0, R), (1, R), (2, W), (4, R), (5, W)],
            ),
            ViElbo => (ModuleId::Vi, "vi_elbo", &[(0, R), (6, R), (7, W)]),
            AdamStep => (
                ModuleId::Adam,
                "adam_step",
                &[(0, U), (1, R), (2, W), (3, W), (4, W)],
            ),
            P1Direct => (
                ModuleId::P1Direct,
                "p1_direct",
                &[(0, U), (2, R), (3, W), (5, W)],
            ),
            AdamStepClipped => (
                ModuleId::Adam,
                "adam_step_clipped",
                &[(0, U), (1, R), (2, W), (3, W), (4, W), (5, W)],
            ),
            GradClip => (ModuleId::Adam, "grad_clip", &[(0, U), (1, R), (5, W)]),
            Matmul => (ModuleId::Mlp, "matmul", MLP_ABCZ),
            MatmulBlocked => (ModuleId::Mlp, "matmul_blocked", MLP_ABCZ),
            ActBackward => (ModuleId::Mlp, "act_backward", &[(0, U), (1, R), (3, W)]),
            BiasGrad => (ModuleId::Mlp, "bias_grad", &[(0, U), (1, R), (3, W)]),
            LossMse => (ModuleId::Mlp, "loss_mse", MLP_ABCZ),
            LossGaussNll => (ModuleId::Mlp, "loss_gauss_nll", MLP_ABCZ),
            LossReduce => (ModuleId::Mlp, "loss_reduce", &[(0, U), (4, W)]),
            GatherRows => (
                ModuleId::Mlp,
                "gather_rows",
                &[(0, U), (1, R), (3, W), (5, R)],
            ),
            FmaPeak => (ModuleId::Mlp, "fma_peak", &[(0, U), (3, W)]),
            McmcPropose => (
                ModuleId::Mcmc,
                "mcmc_propose",
                &[(0, R), (2, W), (3, W), (4, W)],
            ),
            McmcMap => (
                ModuleId::Mcmc,
                "mcmc_map",
                &[(0, R), (1, R), (3, W), (5, W)],
            ),
            McmcGrad => (
                ModuleId::Mcmc,
                "mcmc_grad",
                &[(0, R), (1, R), (3, W), (5, W), (6, R)],
            ),
            McmcAccept => (
                ModuleId::Mcmc,
                "mcmc_accept",
                &[
                    (0, R),
                    (2, W),
                    (3, W),
                    (4, W),
                    (5, W),
                    (7, R),
                    (8, R),
                    (9, R),
                    (10, W),
                ],
            ),
        }
    }

    pub fn label(self) -> String {
        let (m, e, _) = self.spec();
        format!("pdevi.{}.{}", m.name(), e)
    }
}
