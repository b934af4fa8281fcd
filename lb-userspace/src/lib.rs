//! socklb: an eBPF Kubernetes service load balancer. This library is the agent's core;
//! the `socklb` binary (src/main.rs) is its command line.

pub mod agent;
pub mod datapath;
pub mod health;
pub mod kube_source;
pub mod manifest_source;
pub mod manifests;
pub mod model;
pub mod node;
pub mod plan;
pub mod reconcile;
pub mod service_health;
pub mod source;
pub mod state;
pub mod status;
pub mod table;
