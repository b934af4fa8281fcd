//! socklb: an eBPF Kubernetes service load balancer. This library is the agent with
//! its IO at the edges; the pure core (models, plan, desired state, diff) is the
//! `socklb-core` crate, and the `socklb` binary (src/main.rs) is the command line.
//!
//! - `sources`: where objects come from (the Kubernetes API, a manifest directory);
//! - `datapath`: the kernel's maps and links, this node's devices, `socklb status`;
//! - `http`: listeners (/healthz, /readyz, /metrics; healthCheckNodePort servers);
//! - `agent`: the loop that joins them;
//! - `explain`: `socklb explain`, the verdict of the live maps for one address;
//! - `bpffs`: mounting bpffs where the host has none (the DaemonSet's init container).

pub mod agent;
pub mod bpffs;
pub mod datapath;
pub mod explain;
pub mod http;
pub mod metrics;
pub mod sources;
