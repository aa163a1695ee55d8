//! Colour maps: 256-entry tables shipped in `assets/colormaps/` and embedded
//! at build time, shared by the GPU renderer (as a lookup texture) and the
//! CPU drawing (its mirror), so both paint a value with the same entry.

use std::sync::OnceLock;

/// Entries per table.
pub const LUT_SIZE: usize = 256;

/// Colour used for NaN values.
pub const NAN_GREY: [u8; 3] = [128, 128, 128];

/// Colour map choice for a heat map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colormap {
    /// Perceptually uniform, for magnitudes.
    Viridis,
    /// Diverging, for signed fields; centred on 0 unless a range is given.
    RdBu,
}

const VIRIDIS_CSV: &str = include_str!("../../assets/colormaps/viridis.csv");
const RDBU_CSV: &str = include_str!("../../assets/colormaps/rdbu.csv");

/// Parse a table: `#` comments, a header `r,g,b`, then 256 rows of bytes.
/// The tables are embedded, so a malformed one is a build defect that the
/// unit test below catches; the error names the asset and the line.
pub fn parse_table(name: &str, text: &str) -> Result<Vec<[u8; 3]>, String> {
    let mut rows = Vec::with_capacity(LUT_SIZE);
    let mut header = false;
    for (k, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !header {
            if line != "r,g,b" {
                return Err(format!("{name}:{}: expected the header r,g,b", k + 1));
            }
            header = true;
            continue;
        }
        let parts: Vec<&str> = line.split(',').collect();
        let bytes: Vec<u8> = parts.iter().filter_map(|p| p.trim().parse().ok()).collect();
        if parts.len() != 3 || bytes.len() != 3 {
            return Err(format!(
                "{name}:{}: expected three bytes, got {line:?}",
                k + 1
            ));
        }
        rows.push([bytes[0], bytes[1], bytes[2]]);
    }
    if rows.len() != LUT_SIZE {
        return Err(format!(
            "{name}: {} entries, expected {LUT_SIZE}",
            rows.len()
        ));
    }
    Ok(rows)
}

fn load(name: &str, text: &str) -> Vec<[u8; 3]> {
    // Embedded and tested: a failure here is a build defect, not bad input.
    parse_table(name, text).unwrap_or_else(|e| panic!("embedded colour table: {e}"))
}

impl Colormap {
    /// Every map, in the row order of the GPU lookup texture.
    pub const ALL: [Colormap; 2] = [Colormap::Viridis, Colormap::RdBu];

    /// The 256 colours of the map.
    pub fn table(self) -> &'static [[u8; 3]] {
        static VIRIDIS: OnceLock<Vec<[u8; 3]>> = OnceLock::new();
        static RDBU: OnceLock<Vec<[u8; 3]>> = OnceLock::new();
        match self {
            Colormap::Viridis => {
                VIRIDIS.get_or_init(|| load("assets/colormaps/viridis.csv", VIRIDIS_CSV))
            }
            Colormap::RdBu => RDBU.get_or_init(|| load("assets/colormaps/rdbu.csv", RDBU_CSV)),
        }
    }

    /// Row of the map in the lookup texture (`Draw.cmap` in the shader).
    pub fn code(self) -> u32 {
        match self {
            Colormap::Viridis => 0,
            Colormap::RdBu => 1,
        }
    }

    /// The colour of `t` in [0, 1] (clamped); NaN gives [`NAN_GREY`].
    pub fn map(self, t: f64) -> [u8; 3] {
        if t.is_nan() {
            return NAN_GREY;
        }
        self.table()[lut_index(t)]
    }

    pub fn name(self) -> &'static str {
        match self {
            Colormap::Viridis => "viridis",
            Colormap::RdBu => "rdbu",
        }
    }
}

/// Table entry of `t` (clamped to [0, 1]): `lut_index` of shaders/render/field.wgsl.
pub fn lut_index(t: f64) -> usize {
    ((t.clamp(0.0, 1.0) * LUT_SIZE as f64).floor() as usize).min(LUT_SIZE - 1)
}

/// Viridis colour for `t` in [0, 1] (clamped); NaN gives [`NAN_GREY`].
pub fn viridis(t: f64) -> [u8; 3] {
    Colormap::Viridis.map(t)
}

/// Diverging blue-white-red map for signed quantities: t = 0 is dark blue,
/// 0.5 is near-white, 1 is dark red (matplotlib's `RdBu_r`). Clamped; NaN
/// gives [`NAN_GREY`].
pub fn rdbu(t: f64) -> [u8; 3] {
    Colormap::RdBu.map(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_tables_parse_and_run_dark_to_light() {
        for c in Colormap::ALL {
            let t = c.table();
            assert_eq!(t.len(), LUT_SIZE, "{}", c.name());
        }
        let v = Colormap::Viridis.table();
        let lum = |c: [u8; 3]| 0.3 * c[0] as f64 + 0.59 * c[1] as f64 + 0.11 * c[2] as f64;
        // Viridis rises in lightness monotonically (its defining property).
        for k in 1..LUT_SIZE {
            assert!(lum(v[k]) >= lum(v[k - 1]) - 0.5, "viridis entry {k}");
        }
        assert_eq!(viridis(0.0), v[0]);
        assert_eq!(viridis(1.0), v[LUT_SIZE - 1]);
        assert_eq!(viridis(f64::NAN), NAN_GREY);
        assert_eq!(lut_index(0.5), 128);
        assert_eq!(lut_index(-3.0), 0);
    }

    #[test]
    fn malformed_tables_are_named() {
        let e = parse_table("x.csv", "r,g,b\n1,2\n").unwrap_err();
        assert!(e.contains("x.csv:2"), "{e}");
        let e = parse_table("x.csv", "rgb\n").unwrap_err();
        assert!(e.contains("header"), "{e}");
        let e = parse_table("x.csv", "r,g,b\n1,2,3\n").unwrap_err();
        assert!(e.contains("1 entries"), "{e}");
    }
}
