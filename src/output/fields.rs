//! The field files of one solution or posterior: `.npy` arrays and PNG
//! figures of z / f and u, named the same way by every command.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::output::io;
use crate::output::plot::{self, Field2, Painter, Series};
use crate::physics::problem::{Problem, ProblemKind};

/// Files of one field set: darcy2d writes `<z>.npy` (n x n) and `<u>.npy`
/// ((n+1) x (n+1)); poisson1d writes `<f>.npy` and `<u>.npy` ((n+1,)).
/// PNGs beside them. `suffix` is appended to the stems (e.g. "_true").
pub fn write_fields(
    painter: Painter,
    out: &Path,
    pb: &Problem,
    field: &[f64],
    u_unknowns: &[f64],
    suffix: &str,
    what: &str,
) -> Result<Vec<PathBuf>> {
    let n = pb.n;
    let u = pb.nodal(u_unknowns);
    let mut files = Vec::new();
    match pb.kind {
        ProblemKind::Darcy2d => {
            let zp = out.join(format!("z{suffix}.npy"));
            io::write_npy(&zp, &[n, n], field)?;
            let up = out.join(format!("u{suffix}.npy"));
            io::write_npy(&up, &[n + 1, n + 1], &u)?;
            let zpng = out.join(format!("z{suffix}.png"));
            let sensors = pb.sensor_points();
            plot::write_field_png(
                painter,
                &zpng,
                &Field2::cells(field, n, n),
                &format!("log-permeability z ({what})"),
                "z",
                &sensors,
            )?;
            let upng = out.join(format!("u{suffix}.png"));
            plot::write_field_png(
                painter,
                &upng,
                &Field2::nodes(&u, n + 1, n + 1),
                &format!("pressure u ({what})"),
                "u",
                &sensors,
            )?;
            files.extend([zp, up, zpng, upng]);
        }
        ProblemKind::Poisson1d => {
            let mut f = vec![0.0; n + 1];
            f[1..n].copy_from_slice(field);
            let x: Vec<f64> = (0..=n).map(|i| i as f64 / n as f64).collect();
            let fp = out.join(format!("f{suffix}.npy"));
            io::write_npy(&fp, &[n + 1], &f)?;
            let up = out.join(format!("u{suffix}.npy"));
            io::write_npy(&up, &[n + 1], &u)?;
            for (name, vals, label) in [("f", &f, "source f"), ("u", &u, "solution u")] {
                let p = out.join(format!("{name}{suffix}.png"));
                plot::write_line_plot(
                    &p,
                    &format!("{label} ({what})"),
                    "x",
                    name,
                    &[Series {
                        label: name.to_string(),
                        x: &x,
                        y: vals,
                        band: None,
                        rgb: [31, 119, 180],
                        dashed: false,
                    }],
                    false,
                    None,
                )?;
                files.push(p);
            }
            files.extend([fp, up]);
        }
    }
    Ok(files)
}
