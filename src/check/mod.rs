//! Honest uncertainty: comparisons between posteriors, calibration, and the
//! statistics behind them (R-hat, ESS, coverage, SBC).

pub mod calibrate;
pub mod compare;
pub mod distance;
pub mod stats;
