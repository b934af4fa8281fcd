//! socklb's pure core: what the data path should hold, computed from Kubernetes
//! objects, without the eBPF toolchain, a kernel or any IO. It builds and tests on
//! stable Rust (`cargo test -p socklb-core`).
//!
//! ```text
//! k8s objects --model--> validated models --events--> state (ClusterState)
//!   --plan--> frontends of the touched services --maps::desired--> map keys that changed
//!   --maps::diff--> ordered map writes --> a ServiceMaps (the kernel's, or maps::twin)
//! ```

#[cfg(any(test, feature = "builders"))]
pub mod builders;
pub mod events;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod manifest;
pub mod maps;
pub mod model;
pub mod plan;
pub mod state;
pub mod table;
