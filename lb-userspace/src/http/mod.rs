//! The agent's HTTP listeners: its own health and metrics endpoint (`health`) and one
//! server per healthCheckNodePort (`service_health`), answering as kube-proxy does.

pub mod health;
pub mod service_health;
