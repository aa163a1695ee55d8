//! Observations: the sensor grid of a problem, reading a CSV onto it, and
//! checks on latent vectors read from files.

use std::path::Path;

use crate::error::{Error, Result};
use crate::output::io::{self, ObsGrid};
use crate::physics::problem::{Problem, ProblemKind};

/// Sensor readings mapped onto a problem: unknown indices and values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observations {
    /// Unknown index of each sensor.
    pub sensors: Vec<usize>,
    /// Observed value of each sensor.
    pub y: Vec<f64>,
}

/// Check a latent vector's length and values.
pub fn check_xi(xi: &[f64], d: usize, source: &Path) -> Result<()> {
    if xi.len() != d {
        return Err(Error::Format {
            path: source.into(),
            message: format!("has {} values but d = {d} KL coefficients are expected (pass --d {} or a matching file)", xi.len(), xi.len()),
        });
    }
    if let Some((i, v)) = xi.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::Format {
            path: source.into(),
            message: format!("entry {i} is {v}; every coefficient must be finite"),
        });
    }
    Ok(())
}

/// Observation grid of a problem.
pub fn obs_grid(pb: &Problem) -> ObsGrid {
    ObsGrid {
        dim: match pb.kind {
            ProblemKind::Darcy2d => 2,
            ProblemKind::Poisson1d => 1,
        },
        n: pb.n,
    }
}

/// Read an observation CSV and map it to unknown indices and values.
pub fn read_obs(pb: &Problem, path: &Path) -> Result<(Vec<usize>, Vec<f64>)> {
    let obs = io::read_observations(path, &obs_grid(pb))?;
    let mut sensors = Vec::with_capacity(obs.len());
    let mut values = Vec::with_capacity(obs.len());
    for o in &obs {
        let k = pb.node_unknown(o.i, o.j).ok_or_else(|| Error::Format {
            path: path.into(),
            message: format!(
                "node ({}, {}) is not an interior node of the {} grid with n = {}",
                o.i,
                o.j,
                pb.kind.name(),
                pb.n
            ),
        })?;
        sensors.push(k);
        values.push(o.value);
    }
    Ok((sensors, values))
}
