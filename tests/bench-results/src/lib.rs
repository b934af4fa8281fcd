//! The results of `cargo xtask bench`, as types, defined once:
//!
//! - `socklb-bench run` (in socklb-tests) measures and writes them ([`Results`]);
//! - `cargo xtask bench` adds lb-userspace's criterion figures
//!   ([`SocklbControlPlane`]), saves them in `bench/results/<name>.json`, reads them
//!   back and renders `docs/bench/` from them;
//! - [`targets`] judges a run against socklb's targets, with the thresholds in one
//!   place;
//! - [`format`] writes figures the way the summary and the targets show them.
//!
//! Only serde here (and clap behind the `clap` feature), so that xtask stays light.

mod chaos;
mod differential;
pub mod format;
mod results;
mod spread;
mod stale;
pub mod targets;

pub use chaos::*;
pub use differential::*;
pub use results::*;
pub use spread::{Spread, quantile};
pub use stale::{Percentiles, StaleSocketsRow};
