//! What people read: arrays (`.npy`), observation CSVs, JSON and figures.

pub mod checkpoint;
pub mod colormap;
pub mod fields;
pub mod files;
pub mod io;
pub mod live;
pub mod plot;
pub mod posterior;
pub mod progress;
pub mod window;
