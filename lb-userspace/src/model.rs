//! Validated models of the Kubernetes objects socklb proxies.
//!
//! `from_k8s` turns a k8s-openapi object into a model that later stages can trust:
//! addresses are parsed, ports are in range, defaults are applied the way the API server
//! and kube-proxy apply them. `Ok(None)` means the object is valid but deliberately not
//! proxied (headless, ExternalName, owned by another proxy, not IPv4); `Err` means the
//! object is invalid and the caller should log and skip it.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, Ipv4Addr},
    str::FromStr,
};

use k8s_openapi::{
    api::{
        core::v1::{Node, Service, ServicePort, ServiceSpec},
        discovery::v1::{EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::debug;

/// Label joining an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label marking a Service as owned by another proxy (kube-proxy skips these).
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label marking the EndpointSlices of a headless Service (kube-proxy skips these).
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Node label naming the node's zone, matched against `hints.forZones`.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when ClientIP affinity has no config.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10800;
/// The largest affinity timeout API validation accepts.
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86400;
/// Namespace of an object whose manifest leaves it out (what kubectl would apply).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Why an object was rejected. The message names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidObject {
    #[error("metadata.name is missing or empty")]
    MissingName,
    #[error("label {} is missing or empty", LABEL_SERVICE_NAME)]
    MissingServiceNameLabel,
    #[error("spec.clusterIP is not set (the API server allocates one; a manifest must set it)")]
    MissingClusterIp,
    #[error("{field}: {value:?} is not a valid IP address")]
    BadIp { field: String, value: String },
    #[error("{field}: {value:?} is not an IPv4 address")]
    NotIpv4 { field: String, value: String },
    #[error("{field}: {value} is not a valid port (1-65535)")]
    BadPort { field: String, value: i32 },
    #[error("{field}: unknown protocol {value:?} (expected TCP, UDP or SCTP)")]
    UnknownProtocol { field: String, value: String },
    #[error("{field}: unknown value {value:?} (expected {expected})")]
    UnknownValue {
        field: String,
        value: String,
        expected: &'static str,
    },
    #[error("spec.ports: port name {name:?} is used twice for {protocol}")]
    DuplicatePortName { name: String, protocol: Protocol },
    #[error("spec.ports: port {port}/{protocol} is listed twice")]
    DuplicatePortNumber { port: u16, protocol: Protocol },
    #[error(
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds: {0} is out of range (1-{max})",
        max = MAX_AFFINITY_TIMEOUT_S
    )]
    AffinityTimeout(i32),
    #[error("endpoints[{index}]: no addresses")]
    EndpointWithoutAddress { index: usize },
}

/// A transport protocol the data path balances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl Protocol {
    /// The IP protocol number (IPPROTO_TCP / IPPROTO_UDP).
    pub fn as_ipproto(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol field as Kubernetes allows it: SCTP is valid but the data path cannot
/// balance it, so it is skipped rather than rejected.
enum KubeProtocol {
    Supported(Protocol),
    Sctp,
}

/// Parses a protocol field; absent means TCP (the API server's default).
fn parse_protocol(
    field: impl FnOnce() -> String,
    value: Option<&str>,
) -> Result<KubeProtocol, InvalidObject> {
    match value.unwrap_or("TCP") {
        "TCP" => Ok(KubeProtocol::Supported(Protocol::Tcp)),
        "UDP" => Ok(KubeProtocol::Supported(Protocol::Udp)),
        "SCTP" => Ok(KubeProtocol::Sctp),
        other => Err(InvalidObject::UnknownProtocol {
            field: field(),
            value: other.to_owned(),
        }),
    }
}

/// internalTrafficPolicy / externalTrafficPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

impl TrafficPolicy {
    fn parse(field: &str, value: Option<&str>) -> Result<TrafficPolicy, InvalidObject> {
        match value {
            None | Some("Cluster") => Ok(TrafficPolicy::Cluster),
            Some("Local") => Ok(TrafficPolicy::Local),
            Some(other) => Err(InvalidObject::UnknownValue {
                field: field.to_owned(),
                value: other.to_owned(),
                expected: "Cluster or Local",
            }),
        }
    }
}

/// The Service types socklb proxies (ExternalName is never proxied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// One port of a Service, keyed within its Service by (name, protocol).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePortModel {
    /// The port's name, "" when unnamed (allowed for a single-port Service).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// Allocated node port (NodePort and LoadBalancer Services).
    pub node_port: Option<u16>,
}

/// An IPv4 prefix such as 10.0.0.0/8 (the host bits are cleared).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    fn mask(prefix_len: u8) -> u32 {
        if prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix_len))
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix_len) == u32::from(self.addr)
    }
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 prefix"))?;
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("{s:?}: bad prefix length"))?;
        Ok(Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & Self::mask(prefix_len)),
            prefix_len,
        })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A Service that socklb proxies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceModel {
    pub namespace: String,
    pub name: String,
    /// metadata.creationTimestamp. Of two Services that claim one frontend, the older
    /// keeps it; `None` (a hand-written manifest without one) ranks after every time.
    pub created: Option<Timestamp>,
    pub service_type: ServiceType,
    /// The IPv4 entries of spec.clusterIPs (or spec.clusterIP); a dual-stack Service is
    /// served on its IPv4 part. Never empty.
    pub cluster_ips: Vec<Ipv4Addr>,
    /// TCP and UDP ports; SCTP ports are left out and described in `skipped_ports`.
    pub ports: Vec<ServicePortModel>,
    pub internal_traffic_policy: TrafficPolicy,
    /// spec.externalTrafficPolicy as kube-proxy applies it (apiservice.ExternalPolicyLocal):
    /// Local only on an externally accessible Service (type NodePort or LoadBalancer, or
    /// a ClusterIP Service with spec.externalIPs of any family); Cluster otherwise.
    pub external_traffic_policy: TrafficPolicy,
    /// ClientIP affinity timeout; 0 means no affinity.
    pub session_affinity_timeout_s: u32,
    pub traffic_distribution: Option<String>,
    /// IPv4 entries of spec.externalIPs.
    pub external_ips: Vec<Ipv4Addr>,
    /// IPv4 entries of status.loadBalancer.ingress[].ip in VIP mode (ipMode unset or
    /// "VIP"); a "Proxy" load balancer delivers to the nodes, not to its IP, so kube-proxy
    /// does not capture that IP.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// spec.loadBalancerSourceRanges (IPv4 ones): only these sources may use the
    /// LoadBalancer ingress IPs; empty = everyone.
    pub load_balancer_source_ranges: Vec<Ipv4Cidr>,
    pub health_check_node_port: Option<u16>,
    /// Valid ports the data path cannot serve (SCTP), one human-readable line each, so
    /// the caller can warn about them.
    pub skipped_ports: Vec<String>,
}

impl ServiceModel {
    /// Validates a Service. `Ok(None)` when it is valid but not proxied: headless,
    /// ExternalName, labelled for another proxy, or without an IPv4 cluster IP.
    pub fn from_k8s(svc: &Service) -> Result<Option<ServiceModel>, InvalidObject> {
        let name = required_name(&svc.metadata)?;
        let namespace = namespace_or_default(&svc.metadata);
        if has_label(&svc.metadata, LABEL_SERVICE_PROXY_NAME) {
            debug!(service = %format_args!("{namespace}/{name}"), "labelled for another proxy: not proxied");
            return Ok(None);
        }
        let no_spec = ServiceSpec::default();
        let spec = svc.spec.as_ref().unwrap_or(&no_spec);

        let service_type = match spec.type_.as_deref() {
            None | Some("ClusterIP") => ServiceType::ClusterIP,
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => {
                debug!(service = %format_args!("{namespace}/{name}"), "ExternalName: not proxied");
                return Ok(None);
            }
            Some(other) => {
                return Err(InvalidObject::UnknownValue {
                    field: "spec.type".to_owned(),
                    value: other.to_owned(),
                    expected: "ClusterIP, NodePort, LoadBalancer or ExternalName",
                });
            }
        };

        // spec.clusterIPs supersedes spec.clusterIP (its first entry equals clusterIP).
        let cluster_ip_strings: Vec<(String, &str)> = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => ips
                .iter()
                .enumerate()
                .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.as_str()))
                .collect(),
            _ => spec
                .cluster_ip
                .iter()
                .map(|ip| ("spec.clusterIP".to_owned(), ip.as_str()))
                .collect(),
        };
        match cluster_ip_strings.first() {
            None | Some((_, "")) => return Err(InvalidObject::MissingClusterIp),
            Some((_, "None")) => {
                debug!(service = %format_args!("{namespace}/{name}"), "headless: not proxied");
                return Ok(None);
            }
            Some(_) => {}
        }
        let mut cluster_ips = Vec::new();
        for (field, value) in cluster_ip_strings {
            if let Some(ip) = parse_ip_keep_v4(&field, value)? {
                cluster_ips.push(ip);
            }
        }
        if cluster_ips.is_empty() {
            debug!(service = %format_args!("{namespace}/{name}"), "no IPv4 cluster IP: not proxied");
            return Ok(None);
        }

        let (ports, skipped_ports) = service_ports(spec.ports.as_deref().unwrap_or_default())?;

        let session_affinity_timeout_s = match spec.session_affinity.as_deref() {
            None | Some("None") => 0,
            Some("ClientIP") => {
                let configured = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|config| config.client_ip.as_ref())
                    .and_then(|client_ip| client_ip.timeout_seconds);
                match configured {
                    None => DEFAULT_AFFINITY_TIMEOUT_S,
                    Some(seconds) => u32::try_from(seconds)
                        .ok()
                        .filter(|s| (1..=MAX_AFFINITY_TIMEOUT_S).contains(s))
                        .ok_or(InvalidObject::AffinityTimeout(seconds))?,
                }
            }
            Some(other) => {
                return Err(InvalidObject::UnknownValue {
                    field: "spec.sessionAffinity".to_owned(),
                    value: other.to_owned(),
                    expected: "None or ClientIP",
                });
            }
        };

        let mut external_ips = Vec::new();
        for (i, value) in spec.external_ips.iter().flatten().enumerate() {
            if let Some(ip) = parse_ip_keep_v4(&format!("spec.externalIPs[{i}]"), value)? {
                external_ips.push(ip);
            }
        }
        let mut load_balancer_ips = Vec::new();
        let ingress = svc
            .status
            .as_ref()
            .and_then(|status| status.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for (i, entry) in ingress.into_iter().flatten().enumerate() {
            // Entries with only a hostname have no IP to serve; an IP in Proxy mode is
            // not captured (kube-proxy's IsVIPMode).
            let Some(value) = entry.ip.as_deref().filter(|ip| !ip.is_empty()) else {
                continue;
            };
            let field = format!("status.loadBalancer.ingress[{i}].ip");
            let Some(ip) = parse_ip_keep_v4(&field, value)? else {
                continue;
            };
            match entry.ip_mode.as_deref() {
                None | Some("VIP") => load_balancer_ips.push(ip),
                Some(mode) => {
                    debug!(service = %format_args!("{namespace}/{name}"), %ip, ip_mode = mode, "load balancer IP not in VIP mode: not captured");
                }
            }
        }

        let mut load_balancer_source_ranges = Vec::new();
        for (i, range) in spec
            .load_balancer_source_ranges
            .iter()
            .flatten()
            .enumerate()
        {
            let field = format!("spec.loadBalancerSourceRanges[{i}]");
            let range = range.trim();
            // IPv6 ranges belong to the IPv6 part of the service, not served here.
            if range.contains(':') {
                continue;
            }
            let cidr = range
                .parse::<Ipv4Cidr>()
                .map_err(|_| InvalidObject::BadIp {
                    field,
                    value: range.to_string(),
                })?;
            load_balancer_source_ranges.push(cidr);
        }

        let external_traffic_policy = TrafficPolicy::parse(
            "spec.externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
        )?;
        // kube-proxy (apiservice.ExternalPolicyLocal) ignores the field unless the
        // Service is externally accessible; the API server rejects it elsewhere anyway.
        let externally_accessible = match service_type {
            ServiceType::NodePort | ServiceType::LoadBalancer => true,
            ServiceType::ClusterIP => spec
                .external_ips
                .as_ref()
                .is_some_and(|ips| !ips.is_empty()),
        };
        let external_traffic_policy = if externally_accessible {
            external_traffic_policy
        } else {
            TrafficPolicy::Cluster
        };

        Ok(Some(ServiceModel {
            namespace,
            name,
            created: svc.metadata.creation_timestamp.as_ref().map(|t| t.0),
            service_type,
            cluster_ips,
            ports,
            internal_traffic_policy: TrafficPolicy::parse(
                "spec.internalTrafficPolicy",
                spec.internal_traffic_policy.as_deref(),
            )?,
            external_traffic_policy,
            session_affinity_timeout_s,
            traffic_distribution: spec.traffic_distribution.clone(),
            external_ips,
            load_balancer_ips,
            load_balancer_source_ranges,
            health_check_node_port: optional_port(
                "spec.healthCheckNodePort",
                spec.health_check_node_port,
            )?,
            skipped_ports,
        }))
    }

    /// (namespace, name): the key EndpointSlices join on.
    pub fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }

    /// "namespace/name".
    pub fn display_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Validates spec.ports: returns the supported ports and a description of each SCTP port.
fn service_ports(
    ports: &[ServicePort],
) -> Result<(Vec<ServicePortModel>, Vec<String>), InvalidObject> {
    let mut models = Vec::with_capacity(ports.len());
    let mut skipped = Vec::new();
    let mut names_seen = HashSet::new();
    let mut numbers_seen = HashSet::new();
    for (i, sp) in ports.iter().enumerate() {
        let name = sp.name.clone().unwrap_or_default();
        let port = valid_port(&format!("spec.ports[{i}].port"), sp.port)?;
        let node_port = optional_port(&format!("spec.ports[{i}].nodePort"), sp.node_port)?;
        let protocol = match parse_protocol(
            || format!("spec.ports[{i}].protocol"),
            sp.protocol.as_deref(),
        )? {
            KubeProtocol::Supported(protocol) => protocol,
            KubeProtocol::Sctp => {
                skipped.push(format!(
                    "spec.ports[{i}] ({name:?} {port}/SCTP): SCTP is not supported by the data path; port skipped"
                ));
                continue;
            }
        };
        // kube-proxy keys a service port by (name, protocol); a duplicate would be ambiguous.
        if !names_seen.insert((name.clone(), protocol)) {
            return Err(InvalidObject::DuplicatePortName { name, protocol });
        }
        // Two entries for one port number would be two frontends for one address.
        if !numbers_seen.insert((port, protocol)) {
            return Err(InvalidObject::DuplicatePortNumber { port, protocol });
        }
        models.push(ServicePortModel {
            name,
            protocol,
            port,
            node_port,
        });
    }
    Ok((models, skipped))
}

/// One port of an EndpointSlice: the backend port for the Service port of the same
/// name and protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlicePortModel {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One endpoint of an EndpointSlice, with its conditions defaulted as kube-proxy does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointModel {
    /// addresses[0], as kube-proxy uses (the others are ignored).
    pub address: Ipv4Addr,
    /// conditions.ready; absent means true.
    pub ready: bool,
    /// conditions.serving; absent means true.
    pub serving: bool,
    /// conditions.terminating; absent means false.
    pub terminating: bool,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    /// hints.forZones names; `None` when absent or empty (both mean "no hints").
    pub hints_zones: Option<Vec<String>>,
    /// hints.forNodes names; `None` when absent or empty.
    pub hints_nodes: Option<Vec<String>>,
}

/// An IPv4 EndpointSlice of a proxied Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SliceModel {
    pub namespace: String,
    pub name: String,
    /// Label kubernetes.io/service-name: the Service in `namespace` this slice belongs to.
    pub service_name: String,
    pub ports: Vec<SlicePortModel>,
    pub endpoints: Vec<EndpointModel>,
    /// Ports kube-proxy ignores because their name or port number is unset, one
    /// human-readable line each, so the caller can warn about a hand-written slice.
    pub skipped_ports: Vec<String>,
}

impl SliceModel {
    /// Validates an EndpointSlice. `Ok(None)` when it is valid but not used: not IPv4,
    /// or labelled headless.
    pub fn from_k8s(slice: &EndpointSlice) -> Result<Option<SliceModel>, InvalidObject> {
        let name = required_name(&slice.metadata)?;
        let namespace = namespace_or_default(&slice.metadata);
        if has_label(&slice.metadata, LABEL_HEADLESS) {
            debug!(slice = %format_args!("{namespace}/{name}"), "headless: not used");
            return Ok(None);
        }
        match slice.address_type.as_str() {
            "IPv4" => {}
            "IPv6" | "FQDN" => {
                debug!(slice = %format_args!("{namespace}/{name}"), address_type = %slice.address_type, "not IPv4: not used");
                return Ok(None);
            }
            other => {
                return Err(InvalidObject::UnknownValue {
                    field: "addressType".to_owned(),
                    value: other.to_owned(),
                    expected: "IPv4, IPv6 or FQDN",
                });
            }
        }
        let service_name = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(LABEL_SERVICE_NAME))
            .filter(|service| !service.is_empty())
            .ok_or(InvalidObject::MissingServiceNameLabel)?
            .clone();

        let mut ports = Vec::new();
        let mut skipped_ports = Vec::new();
        for (i, ep) in slice.ports.iter().flatten().enumerate() {
            match slice_port(i, ep)? {
                SlicePort::Used(port) => ports.push(port),
                SlicePort::Skipped(reason) => skipped_ports.push(reason),
                SlicePort::Sctp => {
                    // The Service's own SCTP port is already reported; no second warning.
                    debug!(slice = %format_args!("{namespace}/{name}"), index = i, "SCTP port skipped");
                }
            }
        }

        let mut endpoints = Vec::new();
        for (index, endpoint) in slice.endpoints.iter().flatten().enumerate() {
            let first = endpoint
                .addresses
                .first()
                .ok_or(InvalidObject::EndpointWithoutAddress { index })?;
            let field = || format!("endpoints[{index}].addresses[0]");
            let address = match IpAddr::from_str(first) {
                Ok(IpAddr::V4(ip)) => ip,
                Ok(IpAddr::V6(_)) => {
                    return Err(InvalidObject::NotIpv4 {
                        field: field(),
                        value: first.clone(),
                    });
                }
                Err(_) => {
                    return Err(InvalidObject::BadIp {
                        field: field(),
                        value: first.clone(),
                    });
                }
            };
            let conditions = endpoint.conditions.as_ref();
            let hints = endpoint.hints.as_ref();
            endpoints.push(EndpointModel {
                address,
                ready: conditions.and_then(|c| c.ready).unwrap_or(true),
                serving: conditions.and_then(|c| c.serving).unwrap_or(true),
                terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                node_name: endpoint.node_name.clone(),
                zone: endpoint.zone.clone(),
                hints_zones: non_empty_names(
                    hints
                        .and_then(|h| h.for_zones.as_ref())
                        .map(|zones| zones.iter().map(|zone| zone.name.clone()).collect()),
                ),
                hints_nodes: non_empty_names(
                    hints
                        .and_then(|h| h.for_nodes.as_ref())
                        .map(|nodes| nodes.iter().map(|node| node.name.clone()).collect()),
                ),
            });
        }

        Ok(Some(SliceModel {
            namespace,
            name,
            service_name,
            ports,
            endpoints,
            skipped_ports,
        }))
    }

    /// (namespace, service name): the key of the Service this slice belongs to.
    pub fn service_key(&self) -> (&str, &str) {
        (&self.namespace, &self.service_name)
    }
}

enum SlicePort {
    Used(SlicePortModel),
    /// A port kube-proxy ignores, with the reason.
    Skipped(String),
    Sctp,
}

fn slice_port(i: usize, ep: &EndpointPort) -> Result<SlicePort, InvalidObject> {
    let protocol = match parse_protocol(|| format!("ports[{i}].protocol"), ep.protocol.as_deref())?
    {
        KubeProtocol::Supported(protocol) => protocol,
        KubeProtocol::Sctp => return Ok(SlicePort::Sctp),
    };
    // kube-proxy ignores a port without a name (the EndpointSlice controller always
    // sets one, "" for an unnamed Service port) and a port without a number.
    let Some(name) = &ep.name else {
        return Ok(SlicePort::Skipped(format!(
            "ports[{i}] has no name (use name: \"\" for an unnamed Service port); port skipped"
        )));
    };
    let port = match ep.port {
        None | Some(0) => {
            return Ok(SlicePort::Skipped(format!(
                "ports[{i}] ({name:?}) has no port number; port skipped"
            )));
        }
        Some(port) => valid_port(&format!("ports[{i}].port"), port)?,
    };
    Ok(SlicePort::Used(SlicePortModel {
        name: name.clone(),
        protocol,
        port,
    }))
}

/// A Node, for the topology of this node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeModel {
    pub name: String,
    /// Label topology.kubernetes.io/zone.
    pub zone: Option<String>,
}

impl NodeModel {
    pub fn from_k8s(node: &Node) -> Result<NodeModel, InvalidObject> {
        let name = required_name(&node.metadata)?;
        let zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(LABEL_TOPOLOGY_ZONE))
            .cloned();
        Ok(NodeModel { name, zone })
    }

    /// A node known only by name (no Node object available): no zone, so zone hints are
    /// ignored.
    pub fn named(name: impl Into<String>) -> NodeModel {
        NodeModel {
            name: name.into(),
            zone: None,
        }
    }
}

fn required_name(meta: &ObjectMeta) -> Result<String, InvalidObject> {
    meta.name
        .clone()
        .filter(|name| !name.is_empty())
        .ok_or(InvalidObject::MissingName)
}

fn namespace_or_default(meta: &ObjectMeta) -> String {
    meta.namespace
        .clone()
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
}

fn has_label(meta: &ObjectMeta, key: &str) -> bool {
    meta.labels
        .as_ref()
        .is_some_and(|labels| labels.contains_key(key))
}

/// Parses an IP field: `Some` for IPv4, `None` for IPv6 (served by another family), an
/// error for anything else.
fn parse_ip_keep_v4(field: &str, value: &str) -> Result<Option<Ipv4Addr>, InvalidObject> {
    match IpAddr::from_str(value) {
        Ok(IpAddr::V4(ip)) => Ok(Some(ip)),
        Ok(IpAddr::V6(_)) => Ok(None),
        Err(_) => Err(InvalidObject::BadIp {
            field: field.to_owned(),
            value: value.to_owned(),
        }),
    }
}

fn valid_port(field: &str, value: i32) -> Result<u16, InvalidObject> {
    u16::try_from(value)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| InvalidObject::BadPort {
            field: field.to_owned(),
            value,
        })
}

/// A port that may be unset: absent and 0 both mean unset (0 asks the API server to
/// allocate one).
fn optional_port(field: &str, value: Option<i32>) -> Result<Option<u16>, InvalidObject> {
    match value {
        None | Some(0) => Ok(None),
        Some(port) => valid_port(field, port).map(Some),
    }
}

fn non_empty_names(names: Option<Vec<String>>) -> Option<Vec<String>> {
    names.filter(|names| !names.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn service(value: Value) -> Result<Option<ServiceModel>, InvalidObject> {
        let svc: Service = serde_json::from_value(value).unwrap();
        ServiceModel::from_k8s(&svc)
    }

    fn slice(value: Value) -> Result<Option<SliceModel>, InvalidObject> {
        let s: EndpointSlice = serde_json::from_value(value).unwrap();
        SliceModel::from_k8s(&s)
    }

    /// A valid ClusterIP Service with `spec` merged over a one-port default.
    fn service_with(spec: Value) -> Value {
        let mut base = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "demo"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        });
        if let (Some(base_spec), Value::Object(overrides)) = (base["spec"].as_object_mut(), spec) {
            base_spec.extend(overrides);
        }
        base
    }

    fn slice_with(body: Value) -> Value {
        let mut base = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "demo", "labels": {LABEL_SERVICE_NAME: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.0.11"]}],
        });
        if let (Some(object), Value::Object(overrides)) = (base.as_object_mut(), body) {
            object.extend(overrides);
        }
        base
    }

    #[test]
    fn protocol_numbers_and_names() {
        assert_eq!(Protocol::Tcp.as_ipproto(), 6);
        assert_eq!(Protocol::Udp.as_ipproto(), 17);
        assert_eq!(serde_json::to_string(&Protocol::Udp).unwrap(), "\"UDP\"");
        assert_eq!(Protocol::Tcp.to_string(), "TCP");
    }

    #[test]
    fn valid_service_with_defaults() {
        let model = service(service_with(json!({}))).unwrap().unwrap();
        assert_eq!(
            model,
            ServiceModel {
                namespace: "demo".into(),
                name: "web".into(),
                created: None,
                service_type: ServiceType::ClusterIP,
                cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 10)],
                ports: vec![ServicePortModel {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    node_port: None
                }],
                internal_traffic_policy: TrafficPolicy::Cluster,
                external_traffic_policy: TrafficPolicy::Cluster,
                session_affinity_timeout_s: 0,
                traffic_distribution: None,
                external_ips: vec![],
                load_balancer_ips: vec![],
                load_balancer_source_ranges: vec![],
                health_check_node_port: None,
                skipped_ports: vec![],
            }
        );
        assert_eq!(model.key(), ("demo", "web"));
        assert_eq!(model.display_name(), "demo/web");
    }

    #[test]
    fn services_not_proxied() {
        let cases = [
            (
                "headless clusterIP",
                service_with(json!({"clusterIP": "None"})),
            ),
            (
                "headless clusterIPs",
                service_with(json!({"clusterIP": "None", "clusterIPs": ["None"]})),
            ),
            (
                "ExternalName",
                service_with(json!({"type": "ExternalName", "externalName": "example.com"})),
            ),
            (
                "IPv6 only",
                service_with(json!({"clusterIP": "fd00::10", "clusterIPs": ["fd00::10"]})),
            ),
            ("other proxy", {
                let mut v = service_with(json!({}));
                v["metadata"]["labels"] = json!({LABEL_SERVICE_PROXY_NAME: "other"});
                v
            }),
        ];
        for (name, value) in cases {
            assert_eq!(service(value), Ok(None), "{name}");
        }
    }

    #[test]
    fn dual_stack_keeps_ipv4() {
        for ips in [
            json!(["fd00::10", "10.96.0.10"]),
            json!(["10.96.0.10", "fd00::10"]),
        ] {
            let first = ips[0].clone();
            let model = service(service_with(json!({"clusterIP": first, "clusterIPs": ips})))
                .unwrap()
                .unwrap();
            assert_eq!(model.cluster_ips, vec![Ipv4Addr::new(10, 96, 0, 10)]);
        }
    }

    #[test]
    fn service_field_parsing() {
        let model = service(service_with(json!({
            "type": "LoadBalancer",
            "ports": [
                {"name": "http", "port": 80, "nodePort": 30080},
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "assoc", "port": 9000, "protocol": "SCTP"},
            ],
            "internalTrafficPolicy": "Local",
            "externalTrafficPolicy": "Local",
            "healthCheckNodePort": 32000,
            "externalIPs": ["192.0.2.1", "2001:db8::1"],
            "trafficDistribution": "PreferClose",
        })))
        .unwrap()
        .unwrap();
        let mut with_status = service_with(json!({}));
        with_status["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}, {"hostname": "lb.example.com"}]}});
        let lb = service(with_status).unwrap().unwrap();

        assert_eq!(model.service_type, ServiceType::LoadBalancer);
        assert_eq!(
            model.ports,
            vec![
                ServicePortModel {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    node_port: Some(30080)
                },
                ServicePortModel {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 53,
                    node_port: None
                },
            ]
        );
        assert_eq!(model.skipped_ports.len(), 1);
        assert!(
            model.skipped_ports[0].contains("SCTP"),
            "{:?}",
            model.skipped_ports
        );
        assert_eq!(model.internal_traffic_policy, TrafficPolicy::Local);
        assert_eq!(model.external_traffic_policy, TrafficPolicy::Local);
        assert_eq!(model.health_check_node_port, Some(32000));
        assert_eq!(model.external_ips, vec![Ipv4Addr::new(192, 0, 2, 1)]);
        assert_eq!(model.traffic_distribution.as_deref(), Some("PreferClose"));
        assert_eq!(lb.load_balancer_ips, vec![Ipv4Addr::new(198, 51, 100, 7)]);
    }

    #[test]
    fn external_traffic_policy_as_kube_proxy_applies_it() {
        let policy = |spec: Value| {
            service(service_with(spec))
                .unwrap()
                .unwrap()
                .external_traffic_policy
        };
        for (spec, want) in [
            (
                json!({"type": "NodePort", "externalTrafficPolicy": "Local"}),
                TrafficPolicy::Local,
            ),
            (
                json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local"}),
                TrafficPolicy::Local,
            ),
            (json!({"type": "LoadBalancer"}), TrafficPolicy::Cluster),
            (
                json!({"externalIPs": ["192.0.2.1"], "externalTrafficPolicy": "Local"}),
                TrafficPolicy::Local,
            ),
            // Externally accessible through an IPv6 external IP: the field still counts.
            (
                json!({"externalIPs": ["2001:db8::1"], "externalTrafficPolicy": "Local"}),
                TrafficPolicy::Local,
            ),
            // A ClusterIP Service without external IPs is not externally accessible.
            (
                json!({"externalTrafficPolicy": "Local"}),
                TrafficPolicy::Cluster,
            ),
            (
                json!({"type": "ClusterIP", "externalIPs": [], "externalTrafficPolicy": "Local"}),
                TrafficPolicy::Cluster,
            ),
        ] {
            assert_eq!(policy(spec.clone()), want, "{spec}");
        }
    }

    #[test]
    fn load_balancer_ingress_ip_modes() {
        let mut value = service_with(json!({"type": "LoadBalancer"}));
        value["status"] = json!({"loadBalancer": {"ingress": [
            {"ip": "198.51.100.1"},
            {"ip": "198.51.100.2", "ipMode": "VIP"},
            {"ip": "198.51.100.3", "ipMode": "Proxy"},
            {"ip": "2001:db8::7"},
            {"ip": ""},
            {"hostname": "lb.example.com", "ipMode": "Proxy"},
        ]}});
        assert_eq!(
            service(value).unwrap().unwrap().load_balancer_ips,
            [
                Ipv4Addr::new(198, 51, 100, 1),
                Ipv4Addr::new(198, 51, 100, 2)
            ]
        );
    }

    #[test]
    fn unnamed_port_missing_namespace_and_same_name_per_protocol() {
        let mut value = service_with(json!({"ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns", "port": 53, "protocol": "TCP"},
        ]}));
        value["metadata"] = json!({"name": "dns"});
        let model = service(value).unwrap().unwrap();
        assert_eq!(model.namespace, "default");
        assert_eq!(model.ports.len(), 2);

        let unnamed = service(service_with(json!({"ports": [{"port": 80}]})))
            .unwrap()
            .unwrap();
        assert_eq!(unnamed.ports[0].name, "");
        assert_eq!(unnamed.ports[0].protocol, Protocol::Tcp);
    }

    #[test]
    fn session_affinity() {
        let timeout = |spec: Value| {
            service(service_with(spec)).map(|m| m.map(|m| m.session_affinity_timeout_s))
        };
        assert_eq!(timeout(json!({"sessionAffinity": "None"})), Ok(Some(0)));
        assert_eq!(
            timeout(json!({"sessionAffinity": "ClientIP"})),
            Ok(Some(10800))
        );
        assert_eq!(
            timeout(
                json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {}}})
            ),
            Ok(Some(10800))
        );
        let with_timeout = |seconds: i64| {
            timeout(json!({
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": seconds}},
            }))
        };
        assert_eq!(with_timeout(60), Ok(Some(60)));
        assert_eq!(with_timeout(1), Ok(Some(1)));
        assert_eq!(with_timeout(86400), Ok(Some(86400)));
        assert_eq!(with_timeout(0), Err(InvalidObject::AffinityTimeout(0)));
        assert_eq!(
            with_timeout(86401),
            Err(InvalidObject::AffinityTimeout(86401))
        );
        assert_eq!(with_timeout(-5), Err(InvalidObject::AffinityTimeout(-5)));
    }

    #[test]
    fn invalid_services() {
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "bad clusterIP",
                service_with(json!({"clusterIP": "10.96.300.1"})),
                "spec.clusterIP",
            ),
            (
                "bad clusterIPs entry",
                service_with(json!({"clusterIPs": ["10.96.0.10", "nope"]})),
                "spec.clusterIPs[1]",
            ),
            (
                "no clusterIP",
                service_with(json!({"clusterIP": ""})),
                "spec.clusterIP",
            ),
            (
                "port 70000",
                service_with(json!({"ports": [{"port": 70000}]})),
                "spec.ports[0].port",
            ),
            (
                "port 0",
                service_with(json!({"ports": [{"port": 0}]})),
                "spec.ports[0].port",
            ),
            (
                "port -1",
                service_with(json!({"ports": [{"port": -1}]})),
                "spec.ports[0].port",
            ),
            (
                "nodePort 70000",
                service_with(json!({"ports": [{"port": 80, "nodePort": 70000}]})),
                "nodePort",
            ),
            (
                "protocol FOO",
                service_with(json!({"ports": [{"port": 80, "protocol": "FOO"}]})),
                "FOO",
            ),
            (
                "protocol tcp",
                service_with(json!({"ports": [{"port": 80, "protocol": "tcp"}]})),
                "tcp",
            ),
            (
                "duplicate name",
                service_with(
                    json!({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}),
                ),
                "\"a\"",
            ),
            (
                "duplicate number",
                service_with(
                    json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}),
                ),
                "80/TCP",
            ),
            (
                "unknown type",
                service_with(json!({"type": "Magic"})),
                "spec.type",
            ),
            (
                "unknown policy",
                service_with(json!({"internalTrafficPolicy": "Nearby"})),
                "internalTrafficPolicy",
            ),
            (
                "unknown affinity",
                service_with(json!({"sessionAffinity": "Cookie"})),
                "sessionAffinity",
            ),
            (
                "bad external IP",
                service_with(json!({"externalIPs": ["1.2.3"]})),
                "spec.externalIPs[0]",
            ),
            (
                "no name",
                json!({"metadata": {"namespace": "demo"}, "spec": {"clusterIP": "10.96.0.1"}}),
                "name",
            ),
            ("no spec", json!({"metadata": {"name": "x"}}), "clusterIP"),
        ];
        for (name, value, message_part) in cases {
            match service(value) {
                Err(e) => assert!(e.to_string().contains(message_part), "{name}: {e}"),
                Ok(m) => panic!("{name}: accepted: {m:?}"),
            }
        }
    }

    #[test]
    fn valid_slice() {
        let model = slice(slice_with(json!({
            "endpoints": [
                {"addresses": ["10.244.0.11", "10.244.9.9"], "nodeName": "n1", "zone": "z1",
                 "conditions": {"ready": false, "serving": true, "terminating": true},
                 "hints": {"forZones": [{"name": "z1"}], "forNodes": [{"name": "n1"}]}},
                {"addresses": ["10.244.0.12"], "hints": {"forZones": []}},
            ],
        })))
        .unwrap()
        .unwrap();
        assert_eq!(model.service_key(), ("demo", "web"));
        assert_eq!(
            model.ports,
            vec![SlicePortModel {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080
            }]
        );
        assert_eq!(
            model.endpoints,
            vec![
                EndpointModel {
                    address: Ipv4Addr::new(10, 244, 0, 11),
                    ready: false,
                    serving: true,
                    terminating: true,
                    node_name: Some("n1".into()),
                    zone: Some("z1".into()),
                    hints_zones: Some(vec!["z1".into()]),
                    hints_nodes: Some(vec!["n1".into()]),
                },
                // Absent conditions: ready and serving, not terminating; empty hints: none.
                EndpointModel {
                    address: Ipv4Addr::new(10, 244, 0, 12),
                    ready: true,
                    serving: true,
                    terminating: false,
                    node_name: None,
                    zone: None,
                    hints_zones: None,
                    hints_nodes: None,
                },
            ]
        );
    }

    #[test]
    fn slice_ports_kube_proxy_ignores() {
        let model = slice(slice_with(json!({"ports": [
            {"name": "http", "port": 8080},
            {"name": "noport"},
            {"name": "zero", "port": 0},
            {"port": 9090},
            {"name": "assoc", "port": 9000, "protocol": "SCTP"},
            {"name": "", "port": 53, "protocol": "UDP"},
        ]})))
        .unwrap()
        .unwrap();
        assert_eq!(
            model.ports,
            vec![
                SlicePortModel {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 8080
                },
                SlicePortModel {
                    name: "".into(),
                    protocol: Protocol::Udp,
                    port: 53
                },
            ]
        );
        assert_eq!(model.skipped_ports.len(), 3, "{:?}", model.skipped_ports);
    }

    #[test]
    fn slices_not_used() {
        let headless = {
            let mut v = slice_with(json!({}));
            v["metadata"]["labels"][LABEL_HEADLESS] = json!("");
            v
        };
        let cases = [
            (
                "IPv6",
                slice_with(
                    json!({"addressType": "IPv6", "endpoints": [{"addresses": ["fd00::1"]}]}),
                ),
            ),
            (
                "FQDN",
                slice_with(
                    json!({"addressType": "FQDN", "endpoints": [{"addresses": ["a.example"]}]}),
                ),
            ),
            ("headless", headless),
        ];
        for (name, value) in cases {
            assert_eq!(slice(value), Ok(None), "{name}");
        }
    }

    #[test]
    fn empty_and_missing_endpoints() {
        for body in [
            json!({"endpoints": []}),
            json!({"endpoints": null}),
            json!({"ports": null, "endpoints": null}),
        ] {
            let model = slice(slice_with(body.clone())).unwrap().unwrap();
            assert!(model.endpoints.is_empty(), "{body}");
        }
    }

    #[test]
    fn invalid_slices() {
        let no_label = {
            let mut v = slice_with(json!({}));
            v["metadata"]["labels"] = json!({});
            v
        };
        let empty_label = {
            let mut v = slice_with(json!({}));
            v["metadata"]["labels"][LABEL_SERVICE_NAME] = json!("");
            v
        };
        let cases: Vec<(&str, Value, InvalidObject)> = vec![
            ("no label", no_label, InvalidObject::MissingServiceNameLabel),
            (
                "empty label",
                empty_label,
                InvalidObject::MissingServiceNameLabel,
            ),
            (
                "bad address",
                slice_with(json!({"endpoints": [{"addresses": ["10.244.0.999"]}]})),
                InvalidObject::BadIp {
                    field: "endpoints[0].addresses[0]".into(),
                    value: "10.244.0.999".into(),
                },
            ),
            (
                "IPv6 in IPv4 slice",
                slice_with(
                    json!({"endpoints": [{"addresses": ["10.244.0.1"]}, {"addresses": ["fd00::1"]}]}),
                ),
                InvalidObject::NotIpv4 {
                    field: "endpoints[1].addresses[0]".into(),
                    value: "fd00::1".into(),
                },
            ),
            (
                "no addresses",
                slice_with(json!({"endpoints": [{"addresses": []}]})),
                InvalidObject::EndpointWithoutAddress { index: 0 },
            ),
            (
                "port 70000",
                slice_with(json!({"ports": [{"name": "http", "port": 70000}]})),
                InvalidObject::BadPort {
                    field: "ports[0].port".into(),
                    value: 70000,
                },
            ),
            (
                "protocol FOO",
                slice_with(json!({"ports": [{"name": "http", "port": 80, "protocol": "FOO"}]})),
                InvalidObject::UnknownProtocol {
                    field: "ports[0].protocol".into(),
                    value: "FOO".into(),
                },
            ),
            (
                "unknown address type",
                slice_with(json!({"addressType": "IPv5"})),
                InvalidObject::UnknownValue {
                    field: "addressType".into(),
                    value: "IPv5".into(),
                    expected: "IPv4, IPv6 or FQDN",
                },
            ),
        ];
        for (name, value, want) in cases {
            assert_eq!(slice(value), Err(want), "{name}");
        }
    }

    #[test]
    fn nodes() {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "labels": {LABEL_TOPOLOGY_ZONE: "zone-a"}},
        }))
        .unwrap();
        assert_eq!(
            NodeModel::from_k8s(&node),
            Ok(NodeModel {
                name: "n1".into(),
                zone: Some("zone-a".into())
            })
        );
        let unlabelled: Node = serde_json::from_value(json!({"metadata": {"name": "n2"}})).unwrap();
        assert_eq!(NodeModel::from_k8s(&unlabelled), Ok(NodeModel::named("n2")));
        let nameless: Node = serde_json::from_value(json!({"metadata": {}})).unwrap();
        assert_eq!(
            NodeModel::from_k8s(&nameless),
            Err(InvalidObject::MissingName)
        );
    }
}
