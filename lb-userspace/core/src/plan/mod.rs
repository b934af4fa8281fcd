//! Kubernetes Service semantics, as pure functions: which frontends this node serves and
//! which backends each one forwards to. The rules follow kube-proxy (pkg/proxy
//! endpointslicecache.go, topology.go and the nftables/iptables proxiers) so workloads
//! behave as they do under kube-proxy.
//!
//! Every service port gets one frontend per cluster IP, computed per
//! internalTrafficPolicy, and its external frontends (NodePort, LoadBalancer ingress IPs,
//! external IPs), computed per externalTrafficPolicy. Both come from one categorisation
//! of the port's endpoints, as kube-proxy's `CategorizeEndpoints`: the cluster set
//! (ready, narrowed by topology hints; else serving-and-terminating) and this node's set
//! (ready; else serving-and-terminating; no hints).
//!
//! `frontends_for_service` recomputes one Service, so a change to one Service or one of
//! its slices costs work proportional to that Service.

use std::{
    collections::HashMap,
    fmt::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

mod claims;
mod endpoints;
pub mod health_checks;

pub use claims::{ClaimRank, Claimant, Conflict};
use endpoints::{Categorized, endpoints_for_port};
pub use endpoints::{EndpointCensus, is_local};

use crate::{
    maps::maglev::{self, LbAlgorithm, MaglevConfig, human_bytes},
    model::{
        IpCidr, NodeModel, ObjectKey, Protocol, ServiceModel, ServiceType, SliceModel,
        TrafficPolicy,
    },
    table,
};

/// How a frontend address is reached. Match on this enum exhaustively so adding a kind
/// shows every place to update. The declaration order is the sort order among frontends
/// of one (address, port, protocol): ClusterIP first, so a cluster IP always wins a
/// conflict with an external address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FrontendKind {
    /// A cluster IP and service port; internalTrafficPolicy applies.
    ClusterIP,
    /// The service port's nodePort on every address of this node (`ip` is 0.0.0.0,
    /// shown as `*`); externalTrafficPolicy applies.
    NodePort,
    /// A `status.loadBalancer.ingress[].ip` (VIP mode) and service port;
    /// externalTrafficPolicy applies.
    LoadBalancer,
    /// A `spec.externalIPs` entry and service port; externalTrafficPolicy applies.
    ExternalIP,
}

impl FrontendKind {
    /// True for the kinds that carry external traffic (externalTrafficPolicy).
    pub fn is_external(self) -> bool {
        match self {
            FrontendKind::ClusterIP => false,
            FrontendKind::NodePort | FrontendKind::LoadBalancer | FrontendKind::ExternalIP => true,
        }
    }

    /// The spelling in `socklb plan` ("type").
    pub fn as_str(self) -> &'static str {
        match self {
            FrontendKind::ClusterIP => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::LoadBalancer => "LoadBalancer",
            FrontendKind::ExternalIP => "ExternalIP",
        }
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the data path does with a connection to a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Translate to one of `backends` (never empty).
    Forward,
    /// No usable endpoint anywhere: refuse at once (kube-proxy's REJECT).
    Reject,
    /// A Local traffic policy (internal for ClusterIP frontends, external for the
    /// others) with usable endpoints elsewhere but none on this node (kube-proxy's DROP).
    Drop,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Forward => "forward",
            Action::Reject => "reject",
            Action::Drop => "drop",
        })
    }
}

/// One address:port/protocol this node serves, and what to do with its traffic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "FrontendJson", try_from = "FrontendJson")]
pub struct Frontend {
    /// The Service.
    pub service: ObjectKey,
    /// The Service port's name, "" when unnamed.
    pub port_name: String,
    pub protocol: Protocol,
    pub kind: FrontendKind,
    /// The frontend address; the unspecified address ("any address of this node") for
    /// NodePort, and only there.
    pub ip: IpAddr,
    /// The service port, or the nodePort for a NodePort frontend.
    pub port: u16,
    pub action: Action,
    /// Sorted, without duplicates; empty unless `action` is Forward.
    pub backends: Vec<SocketAddr>,
    /// ClientIP affinity timeout; 0 when the Service has none.
    pub affinity_timeout_s: u32,
    /// The backends that run on this node (a subset of `backends`): replies of their
    /// external flows come back through this node without SNAT.
    pub local_backends: Vec<SocketAddr>,
    /// loadBalancerSourceRanges of a LoadBalancer frontend; empty = every source.
    pub source_ranges: Vec<IpCidr>,
    /// How a new flow picks its backend: Maglev for the external frontends that
    /// forward when the agent runs with `--lb-algorithm maglev` (see
    /// [`Plan::with_balancing`]), else random.
    pub algorithm: LbAlgorithm,
    /// External frontends (NodePort, LoadBalancer, external IP): what a connection
    /// that this node or one of its pods starts gets (the socket hooks). None for
    /// ClusterIP frontends.
    pub from_node: Option<FromNode>,
}

/// What an external frontend gives the node's own clients: the service port's
/// Cluster-policy endpoints whatever the traffic policies, as kube-proxy sends
/// in-cluster traffic to external destinations to its cluster chain ("route LOCAL
/// traffic ... to the policy=cluster chain"; pod traffic is short-circuited there
/// too). It differs from the frontend's own set under externalTrafficPolicy Local, and
/// from the ClusterIP frontend's under internalTrafficPolicy Local.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FromNode {
    /// Forward, or Reject when no endpoint is usable anywhere (never Drop: the
    /// Cluster policy has no "none here").
    pub action: Action,
    /// Sorted, without duplicates; empty unless `action` is Forward.
    pub backends: Vec<SocketAddr>,
    /// The backends that run on this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_backends: Vec<SocketAddr>,
}

impl Frontend {
    /// `ip:port`; 0.0.0.0:nodePort for a NodePort frontend (see `address_string`).
    pub fn address(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// The address as `socklb plan` shows it: "10.96.0.10:80", or "*:30080" for a
    /// NodePort frontend (every address of the node).
    pub fn address_string(&self) -> String {
        match self.kind {
            FrontendKind::NodePort => nodeport_address(self.ip, self.port),
            FrontendKind::ClusterIP | FrontendKind::LoadBalancer | FrontendKind::ExternalIP => {
                self.address().to_string()
            }
        }
    }

    /// What identifies a frontend in the data path.
    pub fn key(&self) -> FrontendAddr {
        FrontendAddr {
            ip: self.ip,
            port: self.port,
            protocol: self.protocol,
        }
    }
}

/// A frontend as the data path keys it: address, port and protocol. A NodePort's
/// address is the unspecified address of its family ("every address of this node").
/// At most one Service owns each (see `claims`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendAddr {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for FrontendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ip.is_unspecified() {
            write!(f, "*:{}/{}", self.port, self.protocol)
        } else {
            write!(
                f,
                "{}/{}",
                SocketAddr::new(self.ip, self.port),
                self.protocol
            )
        }
    }
}

/// How a NodePort's address is shown: "*:30080" for IPv4 (every IPv4 address of the
/// node), "[*]:30080" for IPv6.
pub fn nodeport_address(ip: IpAddr, port: u16) -> String {
    if ip.is_ipv4() {
        format!("*:{port}")
    } else {
        format!("[*]:{port}")
    }
}

/// The JSON form of a Frontend (`socklb plan -o json`): address and backends as
/// "ip:port" strings, a NodePort address as "*:port" (IPv4) or "[*]:port" (IPv6).
#[derive(Serialize, Deserialize)]
struct FrontendJson {
    service: ObjectKey,
    port: String,
    protocol: Protocol,
    #[serde(rename = "type")]
    kind: FrontendKind,
    address: String,
    action: Action,
    backends: Vec<SocketAddr>,
    affinity_timeout_s: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    local_backends: Vec<SocketAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    source_ranges: Vec<IpCidr>,
    /// Left out for random (the default, and kube-proxy's).
    #[serde(default, skip_serializing_if = "is_random")]
    algorithm: LbAlgorithm,
    /// An external frontend's [`FromNode`], left out where it is the frontend's own
    /// action and backends (externalTrafficPolicy Cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from_node: Option<FromNode>,
}

fn is_random(algorithm: &LbAlgorithm) -> bool {
    *algorithm == LbAlgorithm::Random
}

impl From<Frontend> for FrontendJson {
    fn from(f: Frontend) -> FrontendJson {
        let from_node = f.from_node.clone().filter(|n| {
            n.action != f.action || n.backends != f.backends || n.local_backends != f.local_backends
        });
        FrontendJson {
            address: f.address_string(),
            service: f.service,
            port: f.port_name,
            protocol: f.protocol,
            kind: f.kind,
            action: f.action,
            backends: f.backends,
            affinity_timeout_s: f.affinity_timeout_s,
            local_backends: f.local_backends,
            source_ranges: f.source_ranges,
            algorithm: f.algorithm,
            from_node,
        }
    }
}

impl TryFrom<FrontendJson> for Frontend {
    type Error = String;

    fn try_from(f: FrontendJson) -> Result<Frontend, String> {
        let nodeport = match (f.address.strip_prefix("*:"), f.address.strip_prefix("[*]:")) {
            (Some(port), _) => Some((IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)),
            (_, Some(port)) => Some((IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)),
            _ => None,
        };
        let (ip, port) = match (f.kind, nodeport) {
            (FrontendKind::NodePort, Some((ip, port))) => (
                ip,
                u16::from_str(port).map_err(|e| format!("address {:?}: {e}", f.address))?,
            ),
            (FrontendKind::NodePort, None) => {
                return Err(format!(
                    "address {:?}: a NodePort frontend's address is \"*:<nodePort>\" (IPv4) or \"[*]:<nodePort>\" (IPv6)",
                    f.address
                ));
            }
            (kind, _) => {
                let addr = SocketAddr::from_str(&f.address)
                    .map_err(|e| format!("address {:?}: {e}", f.address))?;
                if addr.ip().is_unspecified() {
                    return Err(format!(
                        "address {:?}: a {kind} frontend needs an address",
                        f.address
                    ));
                }
                (addr.ip(), addr.port())
            }
        };
        let from_node = match (f.kind.is_external(), f.from_node) {
            (true, Some(n)) => Some(n),
            (true, None) => Some(FromNode {
                action: f.action,
                backends: f.backends.clone(),
                local_backends: f.local_backends.clone(),
            }),
            (false, None) => None,
            (false, Some(_)) => {
                return Err(format!(
                    "{}: from_node is for NodePort, LoadBalancer and external IP frontends",
                    f.address
                ));
            }
        };
        Ok(Frontend {
            service: f.service,
            port_name: f.port,
            protocol: f.protocol,
            kind: f.kind,
            ip,
            port,
            action: f.action,
            backends: f.backends,
            affinity_timeout_s: f.affinity_timeout_s,
            local_backends: f.local_backends,
            source_ranges: f.source_ranges,
            algorithm: f.algorithm,
            from_node,
        })
    }
}

/// Everything one node serves.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Plan {
    pub node: String,
    /// Sorted by (ip, port, protocol, type), NodePort frontends (0.0.0.0) first; at most
    /// one per (ip, port, protocol).
    pub frontends: Vec<Frontend>,
    /// Claims that lost a frontend to another Service, by address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<Conflict>,
    /// The Maglev tables the frontends need, and their memory per service (with
    /// `--lb-algorithm maglev`; see [`Plan::with_balancing`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<MaglevSummary>,
}

/// The memory of the Maglev tables of a plan: one table per frontend that picks by
/// Maglev, the same size each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaglevSummary {
    /// Entries per table (M).
    pub table_size: u32,
    /// Bytes per table in the kernel map.
    pub table_bytes: u64,
    /// Tables the frontends need.
    pub tables: usize,
    /// Tables the agent's map has room for (`--maglev-max-tables`).
    pub max_tables: u32,
    /// Bytes of the agent's map, preallocated for `max_tables`.
    pub map_bytes: u64,
    /// Bytes of the tables the frontends need.
    pub bytes: u64,
    /// Per service ("ns/name"): tables and their bytes.
    pub services: Vec<MaglevServiceMemory>,
}

/// The Maglev tables of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaglevServiceMemory {
    pub service: ObjectKey,
    pub tables: usize,
    pub bytes: u64,
}

impl Plan {
    /// Pretty JSON (the schema of `socklb plan -o json`).
    pub fn to_json(&self) -> String {
        #[allow(
            clippy::expect_used,
            reason = "plain structs with string keys always serialize"
        )]
        serde_json::to_string_pretty(self).expect("a Plan serializes to JSON")
    }

    pub fn from_json(json: &str) -> Result<Plan, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The plan as an agent with these balancing flags programs it: which frontends
    /// pick by a Maglev table (the rule the diff follows, [`maglev::has_table`]), and
    /// the tables' memory per service.
    pub fn with_balancing(mut self, config: &MaglevConfig) -> Plan {
        let mut per_service: std::collections::BTreeMap<ObjectKey, usize> = Default::default();
        for f in &mut self.frontends {
            let forwards = f.action == Action::Forward && !f.backends.is_empty();
            f.algorithm = if maglev::has_table(config.algorithm, f.kind.is_external(), forwards) {
                *per_service.entry(f.service.clone()).or_default() += 1;
                LbAlgorithm::Maglev
            } else {
                LbAlgorithm::Random
            };
        }
        self.maglev = (config.algorithm == LbAlgorithm::Maglev).then(|| {
            let table_bytes = config.table_bytes();
            let tables = per_service.values().sum();
            MaglevSummary {
                table_size: config.table_size,
                table_bytes,
                tables,
                max_tables: config.max_tables,
                map_bytes: config.map_bytes(),
                bytes: tables as u64 * table_bytes,
                services: per_service
                    .into_iter()
                    .map(|(service, tables)| MaglevServiceMemory {
                        service,
                        tables,
                        bytes: tables as u64 * table_bytes,
                    })
                    .collect(),
            }
        });
        self
    }

    /// An aligned table, one frontend per line; then the conflicts, if any. With
    /// Maglev (see [`Self::with_balancing`]) an ALGORITHM column, and the tables'
    /// memory per service after the frontends.
    pub fn render_table(&self) -> String {
        let dash_if_empty = |s: String| if s.is_empty() { "-".to_owned() } else { s };
        let rows: Vec<[String; 8]> = self
            .frontends
            .iter()
            .map(|f| {
                [
                    f.service.to_string(),
                    dash_if_empty(f.port_name.clone()),
                    f.protocol.to_string(),
                    f.kind.to_string(),
                    f.address_string(),
                    f.action.to_string(),
                    f.algorithm.to_string(),
                    dash_if_empty(
                        f.backends
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                ]
            })
            .collect();
        let mut out = if self.maglev.is_some() {
            table::render(
                [
                    "SERVICE",
                    "PORT",
                    "PROTO",
                    "TYPE",
                    "ADDRESS",
                    "ACTION",
                    "ALGORITHM",
                    "BACKENDS",
                ],
                &rows,
            )
        } else {
            // Without Maglev every frontend picks at random: the table kube-proxy
            // users know, as before.
            let rows: Vec<[String; 7]> = rows
                .into_iter()
                .map(|[a, b, c, d, e, f, _, h]| [a, b, c, d, e, f, h])
                .collect();
            table::render(
                [
                    "SERVICE", "PORT", "PROTO", "TYPE", "ADDRESS", "ACTION", "BACKENDS",
                ],
                &rows,
            )
        };
        if let Some(m) = &self.maglev {
            let _ = write!(
                out,
                "\nmaglev: {} table{} of {} entries, {} each: {} (room for {}: {} preallocated)",
                m.tables,
                if m.tables == 1 { "" } else { "s" },
                m.table_size,
                human_bytes(m.table_bytes),
                human_bytes(m.bytes),
                m.max_tables,
                human_bytes(m.map_bytes),
            );
            let over = m.tables.saturating_sub(m.max_tables as usize);
            if over > 0 {
                let _ = write!(
                    out,
                    "; {over} more than there is room for: those pick at random"
                );
            }
            out.push('\n');
            let rows: Vec<[String; 3]> = m
                .services
                .iter()
                .map(|s| {
                    [
                        s.service.to_string(),
                        s.tables.to_string(),
                        human_bytes(s.bytes),
                    ]
                })
                .collect();
            out.push_str(&table::render(["SERVICE", "TABLES", "MEMORY"], &rows));
        }
        let from_node: Vec<[String; 4]> = self
            .frontends
            .iter()
            .filter_map(|f| {
                let n = f.from_node.as_ref()?;
                let differs = n.action != f.action || n.backends != f.backends;
                differs.then(|| {
                    [
                        f.address_string(),
                        f.protocol.to_string(),
                        n.action.to_string(),
                        dash_if_empty(
                            n.backends
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(","),
                        ),
                    ]
                })
            })
            .collect();
        if !from_node.is_empty() {
            out.push_str(
                "\nfrom this node and its pods: the cluster endpoints (as kube-proxy short-circuits in-cluster clients)\n",
            );
            out.push_str(&table::render(
                ["ADDRESS", "PROTO", "ACTION", "BACKENDS"],
                &from_node,
            ));
        }
        if !self.conflicts.is_empty() {
            let rows: Vec<[String; 5]> = self
                .conflicts
                .iter()
                .map(|c| {
                    [
                        c.address.clone(),
                        c.protocol.to_string(),
                        format!("{} ({})", c.kept, c.kept_type),
                        format!("{} ({})", c.dropped, c.dropped_type),
                        c.reason.clone(),
                    ]
                })
                .collect();
            out.push_str("\nconflicts: frontends claimed by more than one service\n");
            out.push_str(&table::render(
                ["ADDRESS", "PROTO", "KEPT BY", "NOT SERVED FOR", "WHY"],
                &rows,
            ));
        }
        out
    }
}

/// The frontends of one Service on `node`, sorted as in a [`Plan`]. `slices` are the
/// Service's EndpointSlices (others are ignored), in any order.
pub fn frontends_for_service(
    svc: &ServiceModel,
    slices: &[&SliceModel],
    node: &NodeModel,
) -> Vec<Frontend> {
    let mut own_slices: Vec<&SliceModel> = slices
        .iter()
        .copied()
        .filter(|slice| slice.service_key() == svc.key())
        .collect();
    // Name order makes the choice between duplicate endpoints independent of the order
    // the slices arrived in.
    own_slices.sort_by(|a, b| a.name.cmp(&b.name));

    // Like kube-proxy's serviceport.go: a nodePort opens a NodePort frontend (the API
    // server only allows one on NodePort and LoadBalancer services).
    let has_node_ports = matches!(
        svc.service_type,
        ServiceType::NodePort | ServiceType::LoadBalancer
    );
    let mut frontends = Vec::with_capacity(
        svc.ports.len()
            * (svc.cluster_ips.len()
                + usize::from(has_node_ports)
                + svc.load_balancer_ips.len()
                + svc.external_ips.len()),
    );
    // A family's frontends are served by the slices of that family only (each slice
    // is of one family: its endpoints all are); as in kube-proxy, one proxier per
    // family.
    let (slices4, slices6): (Vec<&SliceModel>, Vec<&SliceModel>) = own_slices
        .iter()
        .copied()
        .filter(|slice| !slice.endpoints.is_empty())
        .partition(|slice| slice.endpoints[0].address.is_ipv4());
    for port in &svc.ports {
        let endpoints4 = endpoints_for_port(&slices4, &port.name, port.protocol);
        let endpoints6 = endpoints_for_port(&slices6, &port.name, port.protocol);
        let categorized4 = Categorized::new(&endpoints4, node);
        let categorized6 = Categorized::new(&endpoints6, node);
        let frontend = |kind: FrontendKind, ip: IpAddr, port_number: u16| {
            let policy = if kind.is_external() {
                svc.external_traffic_policy
            } else {
                svc.internal_traffic_policy
            };
            let (endpoints, categorized) = if ip.is_ipv4() {
                (&endpoints4, &categorized4)
            } else {
                (&endpoints6, &categorized6)
            };
            let local_of = |backends: &[SocketAddr]| -> Vec<SocketAddr> {
                backends
                    .iter()
                    .filter(|b| endpoints.get(b).is_some_and(|e| is_local(e, node)))
                    .copied()
                    .collect()
            };
            let (action, backends) = categorized.traffic(policy);
            let local_backends = local_of(&backends);
            let from_node = kind.is_external().then(|| {
                let (action, backends) = categorized.traffic(TrafficPolicy::Cluster);
                let local_backends = local_of(&backends);
                FromNode {
                    action,
                    backends,
                    local_backends,
                }
            });
            // kube-proxy keeps the ranges of the frontend's family (none of them: the
            // frontend is open to all).
            let source_ranges = if kind == FrontendKind::LoadBalancer {
                svc.load_balancer_source_ranges
                    .iter()
                    .filter(|range| range.addr.is_ipv4() == ip.is_ipv4())
                    .copied()
                    .collect()
            } else {
                Vec::new()
            };
            Frontend {
                service: svc.key(),
                port_name: port.name.clone(),
                protocol: port.protocol,
                kind,
                ip,
                port: port_number,
                action,
                backends,
                affinity_timeout_s: svc.session_affinity_timeout_s,
                local_backends,
                source_ranges,
                algorithm: LbAlgorithm::Random,
                from_node,
            }
        };
        for ip in &svc.cluster_ips {
            frontends.push(frontend(FrontendKind::ClusterIP, *ip, port.port));
        }
        if has_node_ports && let Some(node_port) = port.node_port {
            // One NodePort per family the Service has: every address of that family.
            let (v4, v6) = (
                svc.cluster_ips.iter().any(IpAddr::is_ipv4),
                svc.cluster_ips.iter().any(IpAddr::is_ipv6),
            );
            if v4 {
                let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
                frontends.push(frontend(FrontendKind::NodePort, any, node_port));
            }
            if v6 {
                let any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
                frontends.push(frontend(FrontendKind::NodePort, any, node_port));
            }
        }
        for ip in &svc.load_balancer_ips {
            frontends.push(frontend(FrontendKind::LoadBalancer, *ip, port.port));
        }
        for ip in &svc.external_ips {
            frontends.push(frontend(FrontendKind::ExternalIP, *ip, port.port));
        }
    }
    frontends.sort_by(frontend_order);
    // One address listed twice in one Service (say an external IP that is also an
    // ingress IP): keep the first (same policy, same backends).
    frontends.dedup_by(|later, kept| later.key() == kept.key());
    frontends
}

/// The census of the endpoints behind one port of `svc` in one address family
/// (`ipv4`), as [`frontends_for_service`] chooses them.
pub fn endpoint_census(
    svc: &ServiceModel,
    slices: &[&SliceModel],
    node: &NodeModel,
    port_name: &str,
    protocol: Protocol,
    ipv4: bool,
) -> EndpointCensus {
    let mut own: Vec<&SliceModel> = slices
        .iter()
        .copied()
        .filter(|slice| slice.service_key() == svc.key())
        .filter(|slice| {
            slice
                .endpoints
                .first()
                .is_some_and(|e| e.address.is_ipv4() == ipv4)
        })
        .collect();
    own.sort_by(|a, b| a.name.cmp(&b.name));
    EndpointCensus::of(&endpoints_for_port(&own, port_name, protocol), node)
}

/// The plan of `node`: every Service's frontends, slices joined to Services by
/// (namespace, service name). Slices of a Service that is absent yield nothing.
pub fn compute_plan(services: &[ServiceModel], slices: &[SliceModel], node: &NodeModel) -> Plan {
    let mut slices_by_service: HashMap<ObjectKey, Vec<&SliceModel>> = HashMap::new();
    for slice in slices {
        slices_by_service
            .entry(slice.service_key())
            .or_default()
            .push(slice);
    }
    let mut claims: Vec<(ClaimRank, Frontend)> = services
        .iter()
        .flat_map(|svc| {
            let own = slices_by_service
                .get(&svc.key())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let claimant = Claimant::of(svc);
            frontends_for_service(svc, own, node)
                .into_iter()
                .map(move |fe| (claimant.rank(fe.kind), fe))
        })
        .collect();
    // The API server never gives two Services one frontend, but hand-written manifests
    // (and controllers that bypass it) can; the data path holds one entry per frontend:
    // the best-ranked claim keeps it, the others are reported.
    claims.sort_by(|(rank_a, a), (rank_b, b)| (a.key(), rank_a).cmp(&(b.key(), rank_b)));
    let mut frontends: Vec<Frontend> = Vec::with_capacity(claims.len());
    let mut kept_rank: Option<ClaimRank> = None;
    let mut conflicts = Vec::new();
    for (rank, fe) in claims {
        match (frontends.last(), &kept_rank) {
            (Some(kept), Some(kept_by)) if kept.key() == fe.key() => {
                conflicts.push(Conflict::new(kept, kept_by, &rank));
            }
            _ => {
                frontends.push(fe);
                kept_rank = Some(rank);
            }
        }
    }
    frontends.sort_by(frontend_order);
    Plan {
        node: node.name.clone(),
        frontends,
        conflicts,
        maglev: None,
    }
}

/// (ip, port, protocol, kind), then service and port name so the order is total.
fn frontend_order(a: &Frontend, b: &Frontend) -> std::cmp::Ordering {
    (a.key(), a.kind, &a.service, &a.port_name).cmp(&(b.key(), b.kind, &b.service, &b.port_name))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use crate::{
        builders::{self, EndpointExt, TCP, UDP, ep},
        model::{EndpointModel, ServiceType, TrafficPolicy},
    };

    /// A ClusterIP Service of namespace demo.
    fn service(name: &str, ip: &str, ports: &[(&str, Protocol, u16)]) -> ServiceModel {
        builders::service("demo", name, ip, ports)
    }

    fn web() -> ServiceModel {
        service("web", "10.96.0.10", &[("http", TCP, 80)])
    }

    /// `web` as a NodePort Service (nodePort 30080) with an external IP and, when
    /// `load_balancer`, type LoadBalancer with an ingress IP.
    fn external_web(load_balancer: bool, policy: TrafficPolicy) -> ServiceModel {
        let mut svc = web();
        svc.service_type = if load_balancer {
            ServiceType::LoadBalancer
        } else {
            ServiceType::NodePort
        };
        svc.ports[0].node_port = Some(30080);
        svc.external_ips = vec!["192.0.2.10".parse().unwrap()];
        if load_balancer {
            svc.load_balancer_ips = vec!["198.51.100.7".parse().unwrap()];
        }
        svc.external_traffic_policy = policy;
        svc
    }

    fn local(mut svc: ServiceModel) -> ServiceModel {
        svc.internal_traffic_policy = TrafficPolicy::Local;
        svc
    }

    /// A slice of namespace demo.
    fn slice(
        service: &str,
        name: &str,
        ports: &[(&str, Protocol, u16)],
        endpoints: Vec<EndpointModel>,
    ) -> SliceModel {
        builders::slice("demo", name, service, ports, endpoints)
    }

    /// A slice of `web` with port http -> 8080.
    fn web_slice(name: &str, endpoints: Vec<EndpointModel>) -> SliceModel {
        slice("web", name, &[("http", TCP, 8080)], endpoints)
    }

    fn node_in_zone(zone: &str) -> NodeModel {
        builders::node_in_zone("node-a", zone)
    }

    /// "address/PROTO action backend,backend" per frontend: easy to read in a table.
    fn summary(frontends: &[Frontend]) -> Vec<String> {
        frontends
            .iter()
            .map(|f| {
                let backends: Vec<String> = f.backends.iter().map(ToString::to_string).collect();
                let kind = match f.kind {
                    FrontendKind::ClusterIP => String::new(),
                    other => format!("{other} "),
                };
                format!(
                    "{kind}{}/{} {} {}",
                    f.address_string(),
                    f.protocol,
                    f.action,
                    backends.join(",")
                )
                .trim_end()
                .to_owned()
            })
            .collect()
    }

    struct Case {
        name: &'static str,
        services: Vec<ServiceModel>,
        slices: Vec<SliceModel>,
        node: NodeModel,
        want: &'static [&'static str],
    }

    fn cases() -> Vec<Case> {
        let node_a = NodeModel::named("node-a");
        vec![
            Case {
                name: "ready endpoints, sorted",
                services: vec![web()],
                slices: vec![web_slice(
                    "web-1",
                    vec![ep("10.244.0.13"), ep("10.244.0.11"), ep("10.244.0.12")],
                )],
                node: node_a.clone(),
                want: &[
                    "10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080,10.244.0.13:8080",
                ],
            },
            Case {
                name: "multi-port: each service port takes its own slice port",
                services: vec![service(
                    "dns",
                    "10.96.0.53",
                    &[("dns", UDP, 53), ("dns-tcp", TCP, 53)],
                )],
                slices: vec![slice(
                    "dns",
                    "dns-1",
                    &[("dns", UDP, 5353), ("dns-tcp", TCP, 5354)],
                    vec![ep("10.244.0.21"), ep("10.244.0.22")],
                )],
                node: node_a.clone(),
                want: &[
                    "10.96.0.53:53/TCP forward 10.244.0.21:5354,10.244.0.22:5354",
                    "10.96.0.53:53/UDP forward 10.244.0.21:5353,10.244.0.22:5353",
                ],
            },
            Case {
                name: "named targetPort: backends of one port on different numbers",
                services: vec![web()],
                slices: vec![
                    web_slice("web-1", vec![ep("10.244.0.11")]),
                    slice(
                        "web",
                        "web-2",
                        &[("http", TCP, 9090)],
                        vec![ep("10.244.0.12")],
                    ),
                    // A pod without the named port is absent.
                    slice(
                        "web",
                        "web-3",
                        &[("metrics", TCP, 9100)],
                        vec![ep("10.244.0.13")],
                    ),
                ],
                node: node_a.clone(),
                want: &["10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:9090"],
            },
            Case {
                name: "protocol must match as well as name",
                services: vec![web()],
                slices: vec![slice(
                    "web",
                    "web-1",
                    &[("http", UDP, 8080)],
                    vec![ep("10.244.0.11")],
                )],
                node: node_a.clone(),
                want: &["10.96.0.10:80/TCP reject"],
            },
            Case {
                name: "duplicates across slices",
                services: vec![web()],
                slices: vec![
                    web_slice("web-1", vec![ep("10.244.0.11"), ep("10.244.0.12")]),
                    web_slice(
                        "web-2",
                        vec![ep("10.244.0.12"), ep("10.244.0.13"), ep("10.244.0.13")],
                    ),
                ],
                node: node_a.clone(),
                want: &[
                    "10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080,10.244.0.13:8080",
                ],
            },
            Case {
                name: "duplicate: a ready copy beats a terminating one in an earlier slice",
                services: vec![web()],
                slices: vec![
                    web_slice(
                        "web-1",
                        vec![
                            ep("10.244.0.11").terminating(false),
                            ep("10.244.0.12").terminating(true),
                        ],
                    ),
                    web_slice("web-2", vec![ep("10.244.0.11")]),
                ],
                node: node_a.clone(),
                want: &["10.96.0.10:80/TCP forward 10.244.0.11:8080"],
            },
            Case {
                name: "duplicate: a ready copy is not replaced by a terminating one in a later slice",
                services: vec![web()],
                slices: vec![
                    web_slice("web-2", vec![ep("10.244.0.11").terminating(false)]),
                    web_slice("web-1", vec![ep("10.244.0.11")]),
                ],
                node: node_a.clone(),
                want: &["10.96.0.10:80/TCP forward 10.244.0.11:8080"],
            },
            Case {
                name: "not ready endpoints are excluded; terminating unused while any is ready",
                services: vec![web()],
                slices: vec![web_slice(
                    "web-1",
                    vec![
                        ep("10.244.0.11"),
                        ep("10.244.0.12").not_ready(),
                        ep("10.244.0.13").terminating(true),
                    ],
                )],
                node: node_a.clone(),
                want: &["10.96.0.10:80/TCP forward 10.244.0.11:8080"],
            },
            Case {
                name: "no ready endpoint: fall back to serving terminating, never non-serving",
                services: vec![web()],
                slices: vec![web_slice(
                    "web-1",
                    vec![
                        ep("10.244.0.11").terminating(true),
                        ep("10.244.0.12").terminating(false),
                        ep("10.244.0.13").not_ready(),
                    ],
                )],
                node: node_a.clone(),
                want: &["10.96.0.10:80/TCP forward 10.244.0.11:8080"],
            },
            Case {
                name: "only non-serving terminating and not-ready endpoints: reject",
                services: vec![web()],
                slices: vec![web_slice(
                    "web-1",
                    vec![
                        ep("10.244.0.11").terminating(false),
                        ep("10.244.0.12").not_ready(),
                    ],
                )],
                node: node_a.clone(),
                want: &["10.96.0.10:80/TCP reject"],
            },
            Case {
                name: "slice without endpoints: reject",
                services: vec![web()],
                slices: vec![web_slice("web-1", vec![])],
                node: node_a.clone(),
                want: &["10.96.0.10:80/TCP reject"],
            },
            Case {
                name: "service without slices: reject",
                services: vec![web()],
                slices: vec![],
                node: node_a.clone(),
                want: &["10.96.0.10:80/TCP reject"],
            },
            Case {
                name: "internalTrafficPolicy Local: only this node's endpoints",
                services: vec![local(web())],
                slices: vec![web_slice(
                    "web-1",
                    vec![
                        ep("10.244.0.11").on("node-a"),
                        ep("10.244.0.12").on("node-b"),
                        ep("10.244.0.13"),
                    ],
                )],
                node: node_a.clone(),
                want: &["10.96.0.10:80/TCP forward 10.244.0.11:8080"],
            },
            Case {
                name: "internalTrafficPolicy Local: endpoints only elsewhere: drop",
                services: vec![local(web())],
                slices: vec![web_slice("web-1", vec![ep("10.244.0.12").on("node-b")])],
                node: node_a.clone(),
                want: &["10.96.0.10:80/TCP drop"],
            },
            Case {
                name: "internalTrafficPolicy Local: serving terminating elsewhere counts: drop",
                services: vec![local(web())],
                slices: vec![web_slice(
                    "web-1",
                    vec![ep("10.244.0.12").on("node-b").terminating(true)],
                )],
                node: node_a.clone(),
                want: &["10.96.0.10:80/TCP drop"],
            },
            Case {
                name: "internalTrafficPolicy Local: no usable endpoint anywhere: reject",
                services: vec![local(web())],
                slices: vec![web_slice(
                    "web-1",
                    vec![
                        ep("10.244.0.11").on("node-a").not_ready(),
                        ep("10.244.0.12").on("node-b").terminating(false),
                    ],
                )],
                node: node_a.clone(),
                want: &["10.96.0.10:80/TCP reject"],
            },
            Case {
                name: "internalTrafficPolicy Local: local terminating fallback despite ready remote ones",
                services: vec![local(web())],
                slices: vec![web_slice(
                    "web-1",
                    vec![
                        ep("10.244.0.11").on("node-a").terminating(true),
                        ep("10.244.0.12").on("node-b"),
                    ],
                )],
                node: node_a.clone(),
                want: &["10.96.0.10:80/TCP forward 10.244.0.11:8080"],
            },
            Case {
                name: "internalTrafficPolicy Local ignores hints",
                services: vec![local(web())],
                slices: vec![web_slice(
                    "web-1",
                    vec![
                        ep("10.244.0.11").on("node-a").for_zones(&["zone-b"]),
                        ep("10.244.0.12").on("node-a").for_zones(&["zone-a"]),
                    ],
                )],
                node: node_in_zone("zone-a"),
                want: &["10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080"],
            },
            Case {
                name: "zone hints honoured",
                services: vec![web()],
                slices: vec![web_slice(
                    "web-1",
                    vec![
                        ep("10.244.0.11").for_zones(&["zone-a"]),
                        ep("10.244.0.12").for_zones(&["zone-b"]),
                        ep("10.244.0.13").for_zones(&["zone-b", "zone-a"]),
                    ],
                )],
                node: node_in_zone("zone-a"),
                want: &["10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.13:8080"],
            },
            Case {
                name: "zone hints ignored: one ready endpoint lacks hints",
                services: vec![web()],
                slices: vec![web_slice(
                    "web-1",
                    vec![ep("10.244.0.11").for_zones(&["zone-a"]), ep("10.244.0.12")],
                )],
                node: node_in_zone("zone-a"),
                want: &["10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080"],
            },
            Case {
                name: "zone hints: endpoints that are not ready do not count (ready, not serving, is checked)",
                services: vec![web()],
                slices: vec![web_slice(
                    "web-1",
                    vec![
                        ep("10.244.0.11").for_zones(&["zone-a"]),
                        ep("10.244.0.12").for_zones(&["zone-b"]),
                        // Serving and terminating but not ready, without hints: not counted.
                        ep("10.244.0.13").terminating(true),
                    ],
                )],
                node: node_in_zone("zone-a"),
                want: &["10.96.0.10:80/TCP forward 10.244.0.11:8080"],
            },
            Case {
                name: "zone hints ignored: none for this zone",
                services: vec![web()],
                slices: vec![web_slice(
                    "web-1",
                    vec![
                        ep("10.244.0.11").for_zones(&["zone-b"]),
                        ep("10.244.0.12").for_zones(&["zone-c"]),
                    ],
                )],
                node: node_in_zone("zone-a"),
                want: &["10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080"],
            },
            Case {
                name: "zone hints ignored: node has no zone label",
                services: vec![web()],
                slices: vec![web_slice(
                    "web-1",
                    vec![
                        ep("10.244.0.11").for_zones(&["zone-a"]),
                        ep("10.244.0.12").for_zones(&["zone-b"]),
                    ],
                )],
                node: node_a.clone(),
                want: &["10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080"],
            },
            Case {
                name: "node hints honoured before zone hints",
                services: vec![web()],
                slices: vec![web_slice(
                    "web-1",
                    vec![
                        ep("10.244.0.11")
                            .for_nodes(&["node-a"])
                            .for_zones(&["zone-b"]),
                        ep("10.244.0.12")
                            .for_nodes(&["node-b"])
                            .for_zones(&["zone-a"]),
                    ],
                )],
                node: node_in_zone("zone-a"),
                want: &["10.96.0.10:80/TCP forward 10.244.0.11:8080"],
            },
            Case {
                name: "node hints for other nodes only: zone hints decide",
                services: vec![web()],
                slices: vec![web_slice(
                    "web-1",
                    vec![
                        ep("10.244.0.11")
                            .for_nodes(&["node-c"])
                            .for_zones(&["zone-b"]),
                        ep("10.244.0.12")
                            .for_nodes(&["node-b"])
                            .for_zones(&["zone-a"]),
                    ],
                )],
                node: node_in_zone("zone-a"),
                want: &["10.96.0.10:80/TCP forward 10.244.0.12:8080"],
            },
            Case {
                name: "node hints ignored: one ready endpoint lacks them",
                services: vec![web()],
                slices: vec![web_slice(
                    "web-1",
                    vec![ep("10.244.0.11").for_nodes(&["node-a"]), ep("10.244.0.12")],
                )],
                node: node_a.clone(),
                want: &["10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080"],
            },
            Case {
                name: "hints of the chosen duplicate count",
                services: vec![web()],
                slices: vec![
                    web_slice(
                        "web-1",
                        vec![
                            ep("10.244.0.11").for_zones(&["zone-a"]),
                            ep("10.244.0.12").for_zones(&["zone-b"]),
                        ],
                    ),
                    // Same endpoint, no hints, later slice: the first copy (with hints) stays.
                    web_slice("web-2", vec![ep("10.244.0.12")]),
                ],
                node: node_in_zone("zone-a"),
                want: &["10.96.0.10:80/TCP forward 10.244.0.11:8080"],
            },
            Case {
                name: "slices of other services or namespaces are not joined",
                services: vec![web()],
                slices: vec![
                    web_slice("web-1", vec![ep("10.244.0.11")]),
                    slice(
                        "other",
                        "other-1",
                        &[("http", TCP, 8080)],
                        vec![ep("10.244.0.99")],
                    ),
                    SliceModel {
                        namespace: "elsewhere".into(),
                        ..web_slice("web-x", vec![ep("10.244.0.98")])
                    },
                ],
                node: node_a.clone(),
                want: &["10.96.0.10:80/TCP forward 10.244.0.11:8080"],
            },
            Case {
                name: "a slice without its service yields nothing",
                services: vec![],
                slices: vec![web_slice("web-1", vec![ep("10.244.0.11")])],
                node: node_a.clone(),
                want: &[],
            },
            Case {
                name: "frontends sorted by ip, port, protocol across services",
                services: vec![
                    service("z", "10.96.0.2", &[("b", TCP, 90), ("a", TCP, 80)]),
                    service("y", "10.96.0.1", &[("u", UDP, 53), ("t", TCP, 53)]),
                    service("x", "10.96.0.10", &[("", TCP, 1)]),
                ],
                slices: vec![],
                node: node_a.clone(),
                want: &[
                    "10.96.0.1:53/TCP reject",
                    "10.96.0.1:53/UDP reject",
                    "10.96.0.2:80/TCP reject",
                    "10.96.0.2:90/TCP reject",
                    "10.96.0.10:1/TCP reject",
                ],
            },
            Case {
                name: "one frontend per cluster IP",
                services: vec![ServiceModel {
                    cluster_ips: vec!["10.96.0.10".parse().unwrap(), "10.96.0.11".parse().unwrap()],
                    ..web()
                }],
                slices: vec![web_slice("web-1", vec![ep("10.244.0.11")])],
                node: node_a.clone(),
                want: &[
                    "10.96.0.10:80/TCP forward 10.244.0.11:8080",
                    "10.96.0.11:80/TCP forward 10.244.0.11:8080",
                ],
            },
            Case {
                name: "NodePort, LoadBalancer and ExternalIP frontends under the Cluster policy",
                services: vec![external_web(true, TrafficPolicy::Cluster)],
                slices: vec![web_slice(
                    "web-1",
                    vec![
                        ep("10.244.0.11").on("node-a"),
                        ep("10.244.0.12").on("node-b"),
                    ],
                )],
                node: node_a.clone(),
                want: &[
                    "NodePort *:30080/TCP forward 10.244.0.11:8080,10.244.0.12:8080",
                    "10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080",
                    "ExternalIP 192.0.2.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080",
                    "LoadBalancer 198.51.100.7:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080",
                ],
            },
            Case {
                name: "externalTrafficPolicy Local: external frontends use this node's endpoints",
                services: vec![external_web(true, TrafficPolicy::Local)],
                slices: vec![web_slice(
                    "web-1",
                    vec![
                        ep("10.244.0.11").on("node-a"),
                        ep("10.244.0.12").on("node-b"),
                    ],
                )],
                node: node_a.clone(),
                want: &[
                    "NodePort *:30080/TCP forward 10.244.0.11:8080",
                    "10.96.0.10:80/TCP forward 10.244.0.11:8080,10.244.0.12:8080",
                    "ExternalIP 192.0.2.10:80/TCP forward 10.244.0.11:8080",
                    "LoadBalancer 198.51.100.7:80/TCP forward 10.244.0.11:8080",
                ],
            },
            Case {
                name: "externalTrafficPolicy Local: none here, some elsewhere: external drop",
                services: vec![external_web(false, TrafficPolicy::Local)],
                slices: vec![web_slice("web-1", vec![ep("10.244.0.12").on("node-b")])],
                node: node_a.clone(),
                want: &[
                    "NodePort *:30080/TCP drop",
                    "10.96.0.10:80/TCP forward 10.244.0.12:8080",
                    "ExternalIP 192.0.2.10:80/TCP drop",
                ],
            },
            Case {
                name: "externalTrafficPolicy Local: no endpoint anywhere: reject",
                services: vec![external_web(false, TrafficPolicy::Local)],
                slices: vec![],
                node: node_a.clone(),
                want: &[
                    "NodePort *:30080/TCP reject",
                    "10.96.0.10:80/TCP reject",
                    "ExternalIP 192.0.2.10:80/TCP reject",
                ],
            },
            Case {
                name: "internalTrafficPolicy Local does not narrow external Cluster traffic",
                services: vec![local(external_web(false, TrafficPolicy::Cluster))],
                slices: vec![web_slice("web-1", vec![ep("10.244.0.12").on("node-b")])],
                node: node_a.clone(),
                want: &[
                    "NodePort *:30080/TCP forward 10.244.0.12:8080",
                    "10.96.0.10:80/TCP drop",
                    "ExternalIP 192.0.2.10:80/TCP forward 10.244.0.12:8080",
                ],
            },
            Case {
                name: "a ClusterIP Service with a nodePort gets no NodePort frontend",
                services: vec![ServiceModel {
                    created: None,
                    service_type: ServiceType::ClusterIP,
                    external_ips: vec![],
                    ..external_web(false, TrafficPolicy::Cluster)
                }],
                slices: vec![],
                node: node_a.clone(),
                want: &["10.96.0.10:80/TCP reject"],
            },
            Case {
                name: "an address that is both an ingress IP and an external IP is listed once",
                services: vec![ServiceModel {
                    external_ips: vec!["198.51.100.7".parse().unwrap()],
                    ..external_web(true, TrafficPolicy::Cluster)
                }],
                slices: vec![],
                node: node_a.clone(),
                want: &[
                    "NodePort *:30080/TCP reject",
                    "10.96.0.10:80/TCP reject",
                    "LoadBalancer 198.51.100.7:80/TCP reject",
                ],
            },
            Case {
                name: "a cluster IP beats another service's external IP on the same address",
                services: vec![
                    ServiceModel {
                        name: "a".into(),
                        external_ips: vec!["10.96.0.10".parse().unwrap()],
                        ..service("a", "10.96.0.20", &[("http", TCP, 80)])
                    },
                    service("b", "10.96.0.10", &[("http", TCP, 80)]),
                ],
                slices: vec![],
                node: node_a.clone(),
                want: &["10.96.0.10:80/TCP reject", "10.96.0.20:80/TCP reject"],
            },
            Case {
                name: "an endpoint with an empty nodeName is not local to a node without a name",
                services: vec![local(web())],
                slices: vec![web_slice("web-1", vec![ep("10.244.0.11").on("")])],
                node: NodeModel::named(""),
                want: &["10.96.0.10:80/TCP drop"],
            },
            Case {
                name: "two services on one address: the first by name is kept",
                services: vec![
                    service("web-b", "10.96.0.10", &[("http", TCP, 80)]),
                    service("web-a", "10.96.0.10", &[("http", TCP, 80)]),
                ],
                slices: vec![slice(
                    "web-a",
                    "web-a-1",
                    &[("http", TCP, 8080)],
                    vec![ep("10.244.0.11")],
                )],
                node: node_a.clone(),
                want: &["10.96.0.10:80/TCP forward 10.244.0.11:8080"],
            },
        ]
    }

    #[test]
    fn plan_rules() {
        for case in cases() {
            let plan = compute_plan(&case.services, &case.slices, &case.node);
            assert_eq!(plan.node, case.node.name, "{}", case.name);
            assert_eq!(summary(&plan.frontends), case.want, "{}", case.name);
            for frontend in &plan.frontends {
                assert_eq!(
                    frontend.action == Action::Forward,
                    !frontend.backends.is_empty(),
                    "{}",
                    case.name
                );
            }
        }
    }

    #[test]
    fn frontends_for_service_matches_compute_plan_and_ignores_slice_order() {
        for case in cases().into_iter().filter(|case| case.services.len() == 1) {
            let svc = &case.services[0];
            let forward: Vec<&SliceModel> = case.slices.iter().collect();
            let reversed: Vec<&SliceModel> = case.slices.iter().rev().collect();
            let a = frontends_for_service(svc, &forward, &case.node);
            let b = frontends_for_service(svc, &reversed, &case.node);
            assert_eq!(a, b, "{}", case.name);
            assert_eq!(summary(&a), case.want, "{}", case.name);
        }
    }

    #[test]
    fn frontend_fields() {
        let mut svc = service("dns", "10.96.0.53", &[("dns", UDP, 53)]);
        svc.session_affinity_timeout_s = 10800;
        let slices = [slice(
            "dns",
            "dns-1",
            &[("dns", UDP, 5353)],
            vec![ep("10.244.0.21")],
        )];
        let plan = compute_plan(&[svc], &slices, &NodeModel::named("n"));
        assert_eq!(
            plan.frontends,
            vec![Frontend {
                service: ObjectKey::new("demo", "dns"),
                port_name: "dns".into(),
                protocol: UDP,
                kind: FrontendKind::ClusterIP,
                ip: "10.96.0.53".parse().unwrap(),
                port: 53,
                action: Action::Forward,
                backends: vec!["10.244.0.21:5353".parse().unwrap()],
                affinity_timeout_s: 10800,
                local_backends: vec![],
                source_ranges: vec![],
                algorithm: LbAlgorithm::Random,
                from_node: None,
            }]
        );
    }

    fn sample_plan() -> Plan {
        let mut dns = service("dns", "10.96.0.53", &[("dns", UDP, 53)]);
        dns.session_affinity_timeout_s = 60;
        let services = [web(), dns, service("empty", "10.96.0.99", &[("", TCP, 80)])];
        let slices = [web_slice("web-1", vec![ep("10.244.1.5"), ep("10.244.1.6")])];
        compute_plan(&services, &slices, &NodeModel::named("node-a"))
    }

    #[test]
    fn json_schema() {
        let value: serde_json::Value = serde_json::from_str(&sample_plan().to_json()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "node": "node-a",
                "frontends": [
                    {"service": "demo/web", "port": "http", "protocol": "TCP", "type": "ClusterIP",
                     "address": "10.96.0.10:80", "action": "forward",
                     "backends": ["10.244.1.5:8080", "10.244.1.6:8080"], "affinity_timeout_s": 0},
                    {"service": "demo/dns", "port": "dns", "protocol": "UDP", "type": "ClusterIP",
                     "address": "10.96.0.53:53", "action": "reject", "backends": [], "affinity_timeout_s": 60},
                    {"service": "demo/empty", "port": "", "protocol": "TCP", "type": "ClusterIP",
                     "address": "10.96.0.99:80", "action": "reject", "backends": [], "affinity_timeout_s": 0},
                ],
            })
        );
    }

    /// A LoadBalancer Service with externalTrafficPolicy Local, affinity and an external
    /// IP, one endpoint here and one elsewhere.
    fn external_plan() -> Plan {
        let mut svc = external_web(true, TrafficPolicy::Local);
        svc.session_affinity_timeout_s = 10800;
        let slices = [web_slice(
            "web-1",
            vec![ep("10.244.1.5").on("node-a"), ep("10.244.1.6").on("node-b")],
        )];
        compute_plan(&[svc], &slices, &NodeModel::named("node-a"))
    }

    #[test]
    fn json_schema_external_frontends() {
        let value: serde_json::Value = serde_json::from_str(&external_plan().to_json()).unwrap();
        let frontend = |kind: &str, address: &str, backends: &[&str]| {
            // 10.244.1.5 runs on node-a: listed as local (the data path sends it
            // external traffic without SNAT).
            serde_json::json!({"service": "demo/web", "port": "http", "protocol": "TCP",
                "type": kind, "address": address, "action": "forward",
                "backends": backends, "affinity_timeout_s": 10800,
                "local_backends": ["10.244.1.5:8080"]})
        };
        // externalTrafficPolicy Local: the node's own clients get every cluster
        // endpoint (kube-proxy's short circuit), shown as from_node.
        let external = |kind: &str, address: &str| {
            let mut f = frontend(kind, address, &["10.244.1.5:8080"]);
            f["from_node"] = serde_json::json!({"action": "forward",
                "backends": ["10.244.1.5:8080", "10.244.1.6:8080"],
                "local_backends": ["10.244.1.5:8080"]});
            f
        };
        assert_eq!(
            value,
            serde_json::json!({
                "node": "node-a",
                "frontends": [
                    external("NodePort", "*:30080"),
                    frontend("ClusterIP", "10.96.0.10:80", &["10.244.1.5:8080", "10.244.1.6:8080"]),
                    external("ExternalIP", "192.0.2.10:80"),
                    external("LoadBalancer", "198.51.100.7:80"),
                ],
            })
        );
        assert_eq!(
            Plan::from_json(&external_plan().to_json()).unwrap(),
            external_plan()
        );
    }

    #[test]
    fn with_maglev_the_external_frontends_say_so_and_the_tables_memory_is_shown() {
        let config = MaglevConfig::maglev(16_381, 1024, 1).unwrap();
        let plan = external_plan().with_balancing(&config);
        let value: serde_json::Value = serde_json::from_str(&plan.to_json()).unwrap();
        let algorithms: Vec<(&str, Option<&str>)> = value["frontends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["type"].as_str().unwrap(), f["algorithm"].as_str()))
            .collect();
        assert_eq!(
            algorithms,
            [
                ("NodePort", Some("maglev")),
                ("ClusterIP", None),
                ("ExternalIP", Some("maglev")),
                ("LoadBalancer", Some("maglev")),
            ],
            "the socket hooks (ClusterIP) pick at random: the field is left out"
        );
        assert_eq!(
            value["maglev"],
            serde_json::json!({"table_size": 16381, "table_bytes": 65524, "tables": 3,
                "max_tables": 1024, "map_bytes": 67_096_584, "bytes": 196572,
                "services": [{"service": "demo/web", "tables": 3, "bytes": 196572}]})
        );
        assert_eq!(Plan::from_json(&plan.to_json()).unwrap(), plan);
        let table = plan.render_table();
        assert!(table.starts_with("SERVICE   PORT  PROTO  TYPE          ADDRESS          ACTION   ALGORITHM  BACKENDS\n"), "{table}");
        assert!(table.contains("maglev: 3 tables of 16381 entries, 64.0 KiB each: 192.0 KiB (room for 1024: 64.0 MiB preallocated)\n"), "{table}");
        assert!(table.contains("demo/web  3       192.0 KiB\n"), "{table}");
        // The random algorithm changes nothing, not even the table's columns.
        let random = external_plan().with_balancing(&MaglevConfig::default());
        assert_eq!(random, external_plan());
        assert!(!random.render_table().contains("ALGORITHM"));
    }

    #[test]
    fn json_round_trip() {
        let external = external_plan();
        assert_eq!(Plan::from_json(&external.to_json()).unwrap(), external);
        assert_eq!(external.frontends[0].ip, Ipv4Addr::UNSPECIFIED);
        let plan = sample_plan();
        let json = plan.to_json();
        assert!(json.contains('\n'), "pretty JSON");
        assert_eq!(Plan::from_json(&json).unwrap(), plan);
        let drop_plan = Plan {
            node: "n".into(),
            frontends: vec![Frontend {
                action: Action::Drop,
                backends: vec![],
                ..plan.frontends[0].clone()
            }],
            conflicts: vec![],
            maglev: None,
        };
        assert_eq!(Plan::from_json(&drop_plan.to_json()).unwrap(), drop_plan);
        assert!(drop_plan.to_json().contains("\"drop\""));
    }

    #[test]
    fn json_rejects_bad_input() {
        for bad in [
            r#"{"node": "n", "frontends": [{"service": "a/b", "port": "", "protocol": "SCTP", "type": "ClusterIP",
                "address": "10.0.0.1:80", "action": "forward", "backends": [], "affinity_timeout_s": 0}]}"#,
            r#"{"node": "n", "frontends": [{"service": "a/b", "port": "", "protocol": "TCP", "type": "ClusterIP",
                "address": "10.0.0.1", "action": "forward", "backends": [], "affinity_timeout_s": 0}]}"#,
            r#"{"node": "n", "frontends": [{"service": "a/b", "port": "", "protocol": "TCP", "type": "ClusterIP",
                "address": "10.0.0.1:80", "action": "FORWARD", "backends": [], "affinity_timeout_s": 0}]}"#,
            r#"{"node": "n"}"#,
            // "*" is the NodePort address, and only its.
            r#"{"node": "n", "frontends": [{"service": "a/b", "port": "", "protocol": "TCP", "type": "ClusterIP",
                "address": "*:80", "action": "reject", "backends": [], "affinity_timeout_s": 0}]}"#,
            r#"{"node": "n", "frontends": [{"service": "a/b", "port": "", "protocol": "TCP", "type": "NodePort",
                "address": "10.0.0.1:30080", "action": "reject", "backends": [], "affinity_timeout_s": 0}]}"#,
            r#"{"node": "n", "frontends": [{"service": "a/b", "port": "", "protocol": "TCP", "type": "ExternalIP",
                "address": "0.0.0.0:80", "action": "reject", "backends": [], "affinity_timeout_s": 0}]}"#,
            r#"{"node": "n", "frontends": [{"service": "a/b", "port": "", "protocol": "TCP", "type": "NodePort",
                "address": "*:http", "action": "reject", "backends": [], "affinity_timeout_s": 0}]}"#,
            r#"{"node": "n", "frontends": [{"service": "a/b", "port": "", "protocol": "TCP", "type": "Ingress",
                "address": "10.0.0.1:80", "action": "reject", "backends": [], "affinity_timeout_s": 0}]}"#,
        ] {
            assert!(Plan::from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn conflicts_keep_the_older_service_and_are_shown_in_json_and_table() {
        let mut web = web();
        web.created = Some("2025-01-01T00:00:00Z".parse().unwrap());
        // Sorts first by name and has no creation time: still loses.
        let rival = service("aaa", "10.96.0.10", &[("http", TCP, 80)]);
        let mut extip = service("extip", "10.96.0.77", &[("http", TCP, 80)]);
        extip.created = Some("2000-01-01T00:00:00Z".parse().unwrap());
        extip.external_ips = vec![Ipv4Addr::new(10, 96, 0, 10).into()];
        let slices = [web_slice("web-1", vec![ep("10.244.1.5")])];
        let plan = compute_plan(
            &[rival.clone(), extip.clone(), web.clone()],
            &slices,
            &NodeModel::named("n"),
        );
        assert_eq!(
            summary(&plan.frontends),
            [
                "10.96.0.10:80/TCP forward 10.244.1.5:8080",
                "10.96.0.77:80/TCP reject"
            ]
        );
        assert_eq!(plan.frontends[0].service.to_string(), "demo/web");
        let dropped: Vec<(String, String, FrontendKind)> = plan
            .conflicts
            .iter()
            .map(|c| (c.kept.to_string(), c.dropped.to_string(), c.dropped_type))
            .collect();
        assert_eq!(
            dropped,
            [
                (
                    "demo/web".into(),
                    "demo/aaa".into(),
                    FrontendKind::ClusterIP
                ),
                (
                    "demo/web".into(),
                    "demo/extip".into(),
                    FrontendKind::ExternalIP
                )
            ]
        );
        assert!(
            plan.conflicts[0].reason.contains("no creationTimestamp"),
            "{:?}",
            plan.conflicts
        );
        assert!(
            plan.conflicts[1].reason.contains("ClusterIP"),
            "{:?}",
            plan.conflicts
        );
        // The input order does not matter.
        assert_eq!(
            compute_plan(&[web, extip, rival], &slices, &NodeModel::named("n")),
            plan
        );

        let json: serde_json::Value = serde_json::from_str(&plan.to_json()).unwrap();
        assert_eq!(json["conflicts"][0]["kept"], "demo/web");
        assert_eq!(json["conflicts"][0]["dropped"], "demo/aaa");
        assert_eq!(json["conflicts"][0]["address"], "10.96.0.10:80");
        assert_eq!(Plan::from_json(&plan.to_json()).unwrap(), plan);
        let table = plan.render_table();
        assert!(table.contains("conflicts:"), "{table}");
        assert!(table.contains("demo/aaa (ClusterIP)"), "{table}");
        // A plan without conflicts has no such section, nor the key in JSON.
        assert!(!sample_plan().render_table().contains("conflicts"));
        assert!(!sample_plan().to_json().contains("conflicts"));
    }

    #[test]
    fn table() {
        let table = sample_plan().render_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "SERVICE", "PORT", "PROTO", "TYPE", "ADDRESS", "ACTION", "BACKENDS"
            ]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "demo/web",
                "http",
                "TCP",
                "ClusterIP",
                "10.96.0.10:80",
                "forward",
                "10.244.1.5:8080,10.244.1.6:8080"
            ]
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            [
                "demo/empty",
                "-",
                "TCP",
                "ClusterIP",
                "10.96.0.99:80",
                "reject",
                "-"
            ]
        );
        // Columns are aligned: every column starts at the same offset on every line.
        let action_column = lines[0].find("ACTION").unwrap();
        for line in &lines[1..] {
            assert!(
                line[action_column..].starts_with("forward")
                    || line[action_column..].starts_with("reject"),
                "{table}"
            );
        }
        assert!(lines.iter().all(|line| !line.ends_with(' ')));
        assert_eq!(Plan::default().render_table().lines().count(), 1);
    }

    #[test]
    fn table_shows_external_kinds() {
        let table = external_plan().render_table();
        let rows: Vec<Vec<&str>> = table
            .lines()
            .skip(1)
            .take_while(|line| !line.is_empty())
            .map(|line| line.split_whitespace().collect())
            .collect();
        assert!(
            table.ends_with(
                "from this node and its pods: the cluster endpoints (as kube-proxy short-circuits in-cluster clients)\n\
                 ADDRESS          PROTO  ACTION   BACKENDS\n\
                 *:30080          TCP    forward  10.244.1.5:8080,10.244.1.6:8080\n\
                 192.0.2.10:80    TCP    forward  10.244.1.5:8080,10.244.1.6:8080\n\
                 198.51.100.7:80  TCP    forward  10.244.1.5:8080,10.244.1.6:8080\n"
            ),
            "{table}"
        );
        let kind_and_address: Vec<(&str, &str)> = rows.iter().map(|r| (r[3], r[4])).collect();
        assert_eq!(
            kind_and_address,
            [
                ("NodePort", "*:30080"),
                ("ClusterIP", "10.96.0.10:80"),
                ("ExternalIP", "192.0.2.10:80"),
                ("LoadBalancer", "198.51.100.7:80"),
            ],
            "{table}"
        );
    }
}
