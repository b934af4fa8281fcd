//! `socklb status`: what the pinned maps hold, in the same terms as `socklb plan`.
use std::{fmt::Write as _, net::SocketAddr, path::Path};

use lb_common::{SVC_FLAG_WILDCARD, SvcAction};
use serde::{Deserialize, Serialize};

use socklb_core::maps::{
    Scope,
    diff::{Capacity, ProgrammedState},
};

use crate::datapath::{
    DatapathError,
    kernel::{self, KernelMaps},
};

/// One frontend as programmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgrammedFrontendView {
    /// "10.96.0.10:80", or "*:30080" for a NodePort.
    pub address: String,
    /// "internal" (connections started on this node) or "external" (TC).
    pub scope: String,
    pub protocol: String,
    pub action: String,
    pub backends: Vec<String>,
    pub affinity_timeout_s: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub pin_dir: String,
    /// Hooks whose link is pinned (attached).
    pub hooks: Vec<String>,
    pub frontends: Vec<ProgrammedFrontendView>,
    /// Cluster IPs whose other ports are refused (by the socket hooks).
    pub service_addresses: Vec<String>,
    /// LoadBalancer and external IPs whose other ports are refused to traffic from
    /// outside (answered by the TC program).
    #[serde(default)]
    pub external_service_addresses: Vec<String>,
    pub backends: usize,
    pub service_map_entries: usize,
    /// This node's addresses (where NodePorts answer).
    pub node_addresses: Vec<String>,
    /// Live conntrack entries (two per external flow).
    pub conntrack_entries: usize,
    pub counters: std::collections::BTreeMap<String, u64>,
}

pub fn read_status(pin_dir: &Path) -> Result<StatusReport, DatapathError> {
    let maps = KernelMaps::open_pinned(pin_dir)?;
    let (state, _) = ProgrammedState::adopt(&maps, Capacity::default())?;
    let mut frontends = Vec::new();
    let mut service_addresses = Vec::new();
    let mut external_service_addresses = Vec::new();
    let mut keys: Vec<_> = state.frontends().keys().copied().collect();
    keys.sort();
    for key in keys {
        let Some(fe) = state.frontends().get(&key) else {
            continue;
        };
        if key.is_wildcard() && fe.service.flags & SVC_FLAG_WILDCARD != 0 {
            match key.scope {
                Scope::Internal => service_addresses.push(key.ip.to_string()),
                Scope::External => external_service_addresses.push(key.ip.to_string()),
            }
            continue;
        }
        let mut backends: Vec<SocketAddr> = fe
            .slots
            .iter()
            .filter_map(|id| state.backend(*id))
            .map(|b| b.addr)
            .collect();
        backends.sort();
        frontends.push(ProgrammedFrontendView {
            address: if key.ip.is_unspecified() {
                format!("*:{}", key.port)
            } else {
                SocketAddr::new(key.ip, key.port).to_string()
            },
            scope: match key.scope {
                Scope::External => "external",
                Scope::Internal => "internal",
            }
            .to_string(),
            protocol: key.protocol.map_or("any", |p| p.as_str()).to_string(),
            action: match SvcAction::from_u8(fe.service.action) {
                Some(SvcAction::Forward) => "forward",
                Some(SvcAction::Reject) => "reject",
                Some(SvcAction::Drop) => "drop",
                None => "invalid",
            }
            .to_string(),
            backends: backends.iter().map(ToString::to_string).collect(),
            affinity_timeout_s: fe.service.affinity_timeout_s,
        });
    }
    let counters = maps
        .counters()?
        .into_iter()
        .map(|(c, v)| (c.name().to_string(), v))
        .collect();
    Ok(StatusReport {
        pin_dir: pin_dir.display().to_string(),
        hooks: kernel::attached_hooks(pin_dir),
        frontends,
        service_addresses,
        external_service_addresses,
        backends: state.backend_count(),
        service_map_entries: state.svc_entries(),
        node_addresses: maps
            .node_addresses()
            .iter()
            .map(ToString::to_string)
            .collect(),
        conntrack_entries: maps.conntrack_entries().len(),
        counters,
    })
}

impl StatusReport {
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "pin directory: {}", self.pin_dir);
        let _ = writeln!(
            out,
            "attached hooks: {}",
            if self.hooks.is_empty() {
                "none".into()
            } else {
                self.hooks.join(", ")
            }
        );
        let _ = writeln!(
            out,
            "service map entries: {}  backends: {}",
            self.service_map_entries, self.backends
        );
        let _ = writeln!(
            out,
            "service addresses (other ports refused): {}",
            self.service_addresses.join(" ")
        );
        let _ = writeln!(
            out,
            "external addresses (other ports refused from outside): {}",
            self.external_service_addresses.join(" ")
        );
        let _ = writeln!(
            out,
            "node addresses (NodePorts): {}",
            self.node_addresses.join(" ")
        );
        let _ = writeln!(out, "conntrack entries: {}", self.conntrack_entries);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<22} {:<5} {:<8} {:<8} {:>7}  BACKENDS",
            "ADDRESS", "PROTO", "SCOPE", "ACTION", "AFFINITY"
        );
        for fe in &self.frontends {
            let _ = writeln!(
                out,
                "{:<22} {:<5} {:<8} {:<8} {:>7}s  {}",
                fe.address,
                fe.protocol,
                fe.scope,
                fe.action,
                fe.affinity_timeout_s,
                if fe.backends.is_empty() {
                    "-".to_string()
                } else {
                    fe.backends.join(" ")
                }
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "counters:");
        for (name, v) in &self.counters {
            let _ = writeln!(out, "  {name:<22} {v}");
        }
        out
    }
}
