//! Validated models of the Kubernetes objects socklb proxies.
//!
//! `from_k8s` turns a k8s-openapi object into a model that later stages can trust,
//! with the API server's validation for every field socklb reads ([`fields`] has the
//! rules, with their sources) and the defaults the API server and kube-proxy apply.
//! Two kinds of problem are told apart:
//! - what the API server would reject makes the object invalid: `Err`, and the source
//!   skips it with a warning (a consumer keeps the last valid version it had);
//! - what the API server accepts but the data path cannot serve (an SCTP port, a
//!   multicast endpoint, a slice port without a number) is left out of the model and
//!   described in its `skipped` list, so the source can warn; the rest is served.
//!
//! `Ok(None)` means the object is valid but deliberately not proxied (headless,
//! ExternalName, owned by another proxy).

pub mod fields;

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, Ipv4Addr},
};

use k8s_openapi::{
    api::{
        core::v1::{Node, Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{debug, warn};

use self::fields::{
    endpoint_ip_problem, frontend_ip_problem, is_dns1123_label, is_dns1123_subdomain,
    is_label_value, parse_ip_sloppy, unservable_ip_problem,
};

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

/// Limits on counts. The EndpointSlice ones are the API server's; it has none for
/// Services, so those are socklb's own: far above real Services (a media server with
/// a few hundred ports), far below what would let one object fill the maps.
pub mod limits {
    /// endpoints[] of one EndpointSlice (API server: maxEndpoints).
    pub const SLICE_ENDPOINTS: usize = 1000;
    /// addresses[] of one endpoint (API server: maxAddresses).
    pub const ENDPOINT_ADDRESSES: usize = 100;
    /// ports[] of one EndpointSlice (API server: maxPorts).
    pub const SLICE_PORTS: usize = 20_000;
    /// hints.forZones and hints.forNodes of one endpoint (API server: maxZoneHints,
    /// maxNodeHints).
    pub const ENDPOINT_HINTS: usize = 8;
    /// spec.ports of one Service (socklb's limit).
    pub const SERVICE_PORTS: usize = 1000;
    /// spec.externalIPs, and status.loadBalancer.ingress, of one Service (socklb's).
    pub const SERVICE_ADDRESSES: usize = 64;
    /// spec.loadBalancerSourceRanges of one Service (socklb's).
    pub const SOURCE_RANGES: usize = 1000;
}

/// Why an object was rejected: what the API server would say, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidObject {
    #[error("metadata.name is missing or empty")]
    MissingName,
    #[error("{field}: {value:?} is not a valid {what}")]
    BadName {
        field: &'static str,
        value: String,
        what: &'static str,
    },
    #[error("spec.clusterIP is not set (the API server allocates one; a manifest must set it)")]
    MissingClusterIp,
    #[error("{field}: {value:?} is not a valid IP address")]
    BadIp { field: String, value: String },
    #[error("{field}: {value:?} {reason}")]
    SpecialIp {
        field: String,
        value: String,
        reason: &'static str,
    },
    #[error("{field}: {value:?} is not an {family} address")]
    WrongFamily {
        field: String,
        value: String,
        family: &'static str,
    },
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
    #[error("{field}: required")]
    Required { field: String },
    #[error("{field}: {reason}")]
    Forbidden { field: String, reason: &'static str },
    #[error("{field}: {count} entries, at most {max} allowed")]
    TooMany {
        field: String,
        count: usize,
        max: usize,
    },
    #[error("{field}: duplicate value {value}")]
    Duplicate { field: String, value: String },
    #[error("spec.clusterIPs[0]: {cluster_ips:?} must match spec.clusterIP {cluster_ip:?}")]
    ClusterIpsMismatch {
        cluster_ip: String,
        cluster_ips: String,
    },
    #[error(
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds: {0} is out of range (1-{max})",
        max = MAX_AFFINITY_TIMEOUT_S
    )]
    AffinityTimeout(i32),
    #[error("endpoints[{index}]: no addresses")]
    EndpointWithoutAddress { index: usize },
}

/// The namespace and name of a namespaced object (a Service, an EndpointSlice);
/// shown, and written in JSON, as "namespace/name".
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ObjectKey {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for ObjectKey {
    type Err = String;

    fn from_str(s: &str) -> Result<ObjectKey, String> {
        match s.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => {
                Ok(ObjectKey::new(namespace, name))
            }
            _ => Err(format!("{s:?} is not namespace/name")),
        }
    }
}

impl Serialize for ObjectKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ObjectKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
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

    /// The protocol of an IP protocol number, if the data path balances it.
    pub fn from_ipproto(proto: u8) -> Option<Protocol> {
        match proto {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
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
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
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
    /// Absent and "" both mean unset (the API server defaults them to Cluster).
    fn parse(field: &str, value: Option<&str>) -> Result<TrafficPolicy, InvalidObject> {
        match value {
            None | Some("") | Some("Cluster") => Ok(TrafficPolicy::Cluster),
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

/// An IP prefix such as 10.0.0.0/8 or fd00::/8 (the host bits are cleared).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpCidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl IpCidr {
    /// `addr` with the bits beyond `prefix_len` cleared; None when the length is
    /// longer than the family's.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<IpCidr> {
        let addr = match addr {
            IpAddr::V4(v4) if prefix_len <= 32 => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(prefix_len))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) if prefix_len <= 128 => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(prefix_len))
                    .unwrap_or(0);
                IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & mask))
            }
            _ => return None,
        };
        Some(IpCidr { addr, prefix_len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        IpCidr::new(ip, self.prefix_len).is_some_and(|c| c.addr == self.addr)
    }
}

impl std::str::FromStr for IpCidr {
    type Err = String;

    /// "address/len" or a plain address (a host prefix). Leading zeros and host bits
    /// are accepted, as the API server's legacy CIDR parse accepts them; host bits are
    /// cleared.
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = match s.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (s, None),
        };
        let addr = parse_ip_sloppy(addr).ok_or_else(|| format!("{s:?} is not an IP prefix"))?;
        let host_len = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len: u8 = match len {
            None => host_len,
            Some(len) => len
                .parse()
                .map_err(|_| format!("{s:?}: bad prefix length"))?,
        };
        IpCidr::new(addr, prefix_len).ok_or_else(|| format!("{s:?}: bad prefix length"))
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for IpCidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpCidr {
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
    /// The entries of spec.clusterIPs (or spec.clusterIP) of the families the data path
    /// serves (IPv4 today); a dual-stack Service is served on its IPv4 part. Never empty.
    pub cluster_ips: Vec<IpAddr>,
    /// TCP and UDP ports; SCTP ports are left out and described in `skipped`.
    pub ports: Vec<ServicePortModel>,
    pub internal_traffic_policy: TrafficPolicy,
    /// spec.externalTrafficPolicy as kube-proxy applies it (apiservice.ExternalPolicyLocal):
    /// Local only on an externally accessible Service (type NodePort or LoadBalancer, or
    /// a ClusterIP Service with spec.externalIPs of any family); Cluster otherwise.
    pub external_traffic_policy: TrafficPolicy,
    /// ClientIP affinity timeout; 0 means no affinity.
    pub session_affinity_timeout_s: u32,
    pub traffic_distribution: Option<String>,
    /// spec.externalIPs of the families served (IPv4 today).
    pub external_ips: Vec<IpAddr>,
    /// status.loadBalancer.ingress[].ip in VIP mode (ipMode unset or "VIP") of the
    /// families served (IPv4 today); a "Proxy" load balancer delivers to the nodes, not
    /// to its IP, so kube-proxy does not capture that IP.
    pub load_balancer_ips: Vec<IpAddr>,
    /// spec.loadBalancerSourceRanges of the families served: only these sources may use
    /// the LoadBalancer ingress IPs; empty = everyone.
    pub load_balancer_source_ranges: Vec<IpCidr>,
    pub health_check_node_port: Option<u16>,
    /// Valid parts the data path cannot serve (SCTP ports, multicast external IPs, ...),
    /// one human-readable line each, so the caller can warn about them.
    pub skipped: Vec<String>,
}

impl ServiceModel {
    /// Validates a Service. `Ok(None)` when it is valid but not proxied: headless,
    /// ExternalName, labelled for another proxy, or without an IPv4 cluster IP.
    pub fn from_k8s(svc: &Service) -> Result<Option<ServiceModel>, InvalidObject> {
        let name = required_name(&svc.metadata)?;
        // DNS-1123 rather than the stricter DNS-1035 label: the API server's
        // RelaxedServiceNameValidation allows a leading digit, and the name never
        // reaches the data path.
        check_name("metadata.name", &name, is_dns1123_label, "DNS-1123 label")?;
        let namespace = namespace_or_default(&svc.metadata)?;
        let object = format!("{namespace}/{name}");
        if has_label(&svc.metadata, LABEL_SERVICE_PROXY_NAME) {
            debug!(service = %object, "labelled for another proxy: not proxied");
            return Ok(None);
        }
        let no_spec = ServiceSpec::default();
        let spec = svc.spec.as_ref().unwrap_or(&no_spec);

        let service_type = match spec.type_.as_deref() {
            None | Some("ClusterIP") => ServiceType::ClusterIP,
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => {
                debug!(service = %object, "ExternalName: not proxied");
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
        validate_ip_families(spec)?;

        let mut skipped = Vec::new();
        let Some(cluster_ips) = cluster_ips(spec)? else {
            debug!(service = %object, "headless: not proxied");
            return Ok(None);
        };
        validate_families_match(spec, &cluster_ips)?;

        let ports = spec.ports.as_deref().unwrap_or_default();
        if ports.is_empty() {
            return Err(InvalidObject::Required {
                field: "spec.ports".to_owned(),
            });
        }
        let ports = service_ports(ports, service_type, &mut skipped)?;

        let session_affinity_timeout_s = session_affinity(spec)?;

        let mut external_ips = external_ips(spec, &mut skipped)?;
        let externally_accessible = match service_type {
            ServiceType::NodePort | ServiceType::LoadBalancer => true,
            // externalIPs of any family count, the ones not served here too.
            ServiceType::ClusterIP => spec
                .external_ips
                .as_ref()
                .is_some_and(|ips| !ips.is_empty()),
        };
        let external_traffic_policy = match spec.external_traffic_policy.as_deref() {
            None | Some("") => TrafficPolicy::Cluster,
            Some(_) if !externally_accessible => {
                return Err(InvalidObject::Forbidden {
                    field: "spec.externalTrafficPolicy".to_owned(),
                    reason: "may only be set for externally-accessible services (NodePort, LoadBalancer, or with externalIPs)",
                });
            }
            value => TrafficPolicy::parse("spec.externalTrafficPolicy", value)?,
        };

        let mut load_balancer_ips = load_balancer_ips(svc, service_type, &object, &mut skipped)?;
        let mut load_balancer_source_ranges = source_ranges(spec, service_type)?;
        // As kube-proxy's per-family proxiers: an address of a family the Service has
        // no cluster IP of is not served (the API server accepts it).
        let has_family = |ip: &IpAddr| cluster_ips.iter().any(|c| c.is_ipv4() == ip.is_ipv4());
        let mut keep_served = |field: &str, ip: &IpAddr| {
            let served = has_family(ip);
            if !served {
                skipped.push(format!(
                    "{field} {ip}: the Service has no {} cluster IP; not served",
                    family_name(ip)
                ));
            }
            served
        };
        external_ips.retain(|ip| keep_served("spec.externalIPs", ip));
        load_balancer_ips.retain(|ip| keep_served("status.loadBalancer.ingress", ip));
        load_balancer_source_ranges.retain(|range| {
            let served = has_family(&range.addr);
            if !served {
                skipped.push(format!(
                    "spec.loadBalancerSourceRanges {range}: the Service has no {} cluster IP; not served",
                    family_name(&range.addr)
                ));
            }
            served
        });

        let health_check_node_port =
            optional_port("spec.healthCheckNodePort", spec.health_check_node_port)?;
        let needs_health_check = service_type == ServiceType::LoadBalancer
            && external_traffic_policy == TrafficPolicy::Local;
        if health_check_node_port.is_some() && !needs_health_check {
            return Err(InvalidObject::Forbidden {
                field: "spec.healthCheckNodePort".to_owned(),
                reason: "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            });
        }

        let traffic_distribution = match spec.traffic_distribution.as_deref() {
            None => None,
            Some(value @ ("PreferClose" | "PreferSameZone" | "PreferSameNode")) => {
                Some(value.to_owned())
            }
            Some(other) => {
                return Err(InvalidObject::UnknownValue {
                    field: "spec.trafficDistribution".to_owned(),
                    value: other.to_owned(),
                    expected: "PreferClose, PreferSameZone or PreferSameNode",
                });
            }
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
            traffic_distribution,
            external_ips,
            load_balancer_ips,
            load_balancer_source_ranges,
            health_check_node_port,
            skipped,
        }))
    }

    /// namespace/name: the key EndpointSlices join on.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }
}

/// "IPv4" or "IPv6".
fn family_name(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// The cluster IPs against spec.ipFamilies and spec.ipFamilyPolicy, as the API
/// server's validateServiceIPFamily: clusterIPs[i] is of family ipFamilies[i] (when
/// given), and SingleStack has one of each at most.
fn validate_families_match(
    spec: &ServiceSpec,
    cluster_ips: &[IpAddr],
) -> Result<(), InvalidObject> {
    let families = spec.ip_families.as_deref().unwrap_or_default();
    for (i, (ip, family)) in cluster_ips.iter().zip(families).enumerate() {
        if family_name(ip) != family {
            return Err(InvalidObject::WrongFamily {
                field: format!("spec.clusterIPs[{i}] (as ipFamilies[{i}] says)"),
                value: ip.to_string(),
                family: if family == "IPv4" { "IPv4" } else { "IPv6" },
            });
        }
    }
    if spec.ip_family_policy.as_deref() == Some("SingleStack") {
        if families.len() > 1 {
            return Err(InvalidObject::Forbidden {
                field: "spec.ipFamilyPolicy".to_owned(),
                reason: "must be 'RequireDualStack' or 'PreferDualStack' when multiple 'ipFamilies' are specified",
            });
        }
        if cluster_ips.len() > 1 {
            return Err(InvalidObject::Forbidden {
                field: "spec.ipFamilyPolicy".to_owned(),
                reason: "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified",
            });
        }
    }
    Ok(())
}

/// spec.ipFamilies and spec.ipFamilyPolicy: the values the API server accepts.
fn validate_ip_families(spec: &ServiceSpec) -> Result<(), InvalidObject> {
    let families = spec.ip_families.as_deref().unwrap_or_default();
    let mut seen = HashSet::new();
    for (i, family) in families.iter().enumerate() {
        if !matches!(family.as_str(), "IPv4" | "IPv6") {
            return Err(InvalidObject::UnknownValue {
                field: format!("spec.ipFamilies[{i}]"),
                value: family.clone(),
                expected: "IPv4 or IPv6",
            });
        }
        if !seen.insert(family.as_str()) {
            return Err(InvalidObject::Duplicate {
                field: format!("spec.ipFamilies[{i}]"),
                value: family.clone(),
            });
        }
    }
    match spec.ip_family_policy.as_deref() {
        None | Some("SingleStack" | "PreferDualStack" | "RequireDualStack") => Ok(()),
        Some(other) => Err(InvalidObject::UnknownValue {
            field: "spec.ipFamilyPolicy".to_owned(),
            value: other.to_owned(),
            expected: "SingleStack, PreferDualStack or RequireDualStack",
        }),
    }
}

/// The cluster IPs (`None`: headless). spec.clusterIPs supersedes spec.clusterIP,
/// whose value must be its first entry; at most two entries, of different families.
///
/// The API server only allocates cluster IPs from the service CIDR; a hand-written one
/// that could never be allocated (unspecified, loopback, link-local, multicast, the
/// broadcast address) is refused too: 0.0.0.0 would alias the NodePort entries and a
/// loopback address would capture the node's own loopback traffic.
fn cluster_ips(spec: &ServiceSpec) -> Result<Option<Vec<IpAddr>>, InvalidObject> {
    let single = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty());
    let list: Vec<&str> = spec
        .cluster_ips
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    let (entries, field): (Vec<&str>, fn(usize) -> String) = match (single, list.first()) {
        (None, None) => return Err(InvalidObject::MissingClusterIp),
        (Some(ip), None) => (vec![ip], |_| "spec.clusterIP".to_owned()),
        (Some(ip), Some(first)) if ip != *first => {
            return Err(InvalidObject::ClusterIpsMismatch {
                cluster_ip: ip.to_owned(),
                cluster_ips: (*first).to_owned(),
            });
        }
        (_, Some(_)) => (list, |i| format!("spec.clusterIPs[{i}]")),
    };
    if entries.len() > 2 {
        return Err(InvalidObject::TooMany {
            field: "spec.clusterIPs".to_owned(),
            count: entries.len(),
            max: 2,
        });
    }
    if entries[0] == "None" {
        return match entries.len() {
            1 => Ok(None),
            _ => Err(InvalidObject::Forbidden {
                field: "spec.clusterIPs".to_owned(),
                reason: "'None' must be the first and only value",
            }),
        };
    }
    let mut ips = Vec::with_capacity(entries.len());
    let mut families = HashSet::new();
    for (i, text) in entries.iter().enumerate() {
        let ip = parse_ip_sloppy(text).ok_or_else(|| InvalidObject::BadIp {
            field: field(i),
            value: (*text).to_owned(),
        })?;
        if let Some(reason) = frontend_ip_problem(ip) {
            return Err(InvalidObject::SpecialIp {
                field: field(i),
                value: (*text).to_owned(),
                reason,
            });
        }
        if !families.insert(ip.is_ipv4()) {
            return Err(InvalidObject::Forbidden {
                field: "spec.clusterIPs".to_owned(),
                reason: "may specify no more than one IP for each IP family",
            });
        }
        ips.push(ip);
    }
    Ok(Some(ips))
}

/// spec.ports as the API server validates them: names unique (by name alone) and
/// required when there is more than one port, (protocol, port) and (protocol,
/// nodePort) unique, nodePort only on NodePort and LoadBalancer Services. SCTP ports
/// are valid but skipped.
fn service_ports(
    ports: &[ServicePort],
    service_type: ServiceType,
    skipped: &mut Vec<String>,
) -> Result<Vec<ServicePortModel>, InvalidObject> {
    if ports.len() > limits::SERVICE_PORTS {
        return Err(InvalidObject::TooMany {
            field: "spec.ports".to_owned(),
            count: ports.len(),
            max: limits::SERVICE_PORTS,
        });
    }
    let mut models = Vec::with_capacity(ports.len());
    let mut names_seen = HashSet::new();
    let mut numbers_seen = HashSet::new();
    let mut node_ports_seen = HashSet::new();
    for (i, sp) in ports.iter().enumerate() {
        let name = sp.name.clone().unwrap_or_default();
        if name.is_empty() {
            if ports.len() > 1 {
                return Err(InvalidObject::Required {
                    field: format!("spec.ports[{i}].name"),
                });
            }
        } else {
            if !is_dns1123_label(&name) {
                return Err(InvalidObject::BadName {
                    field: "spec.ports[].name",
                    value: name,
                    what: "DNS-1123 label",
                });
            }
            if !names_seen.insert(name.clone()) {
                return Err(InvalidObject::Duplicate {
                    field: format!("spec.ports[{i}].name"),
                    value: format!("{name:?}"),
                });
            }
        }
        let port = valid_port(&format!("spec.ports[{i}].port"), sp.port)?;
        let node_port = optional_port(&format!("spec.ports[{i}].nodePort"), sp.node_port)?;
        let kube_protocol = parse_protocol(
            || format!("spec.ports[{i}].protocol"),
            sp.protocol.as_deref(),
        )?;
        if !numbers_seen.insert((port, kube_protocol)) {
            return Err(InvalidObject::Duplicate {
                field: format!("spec.ports[{i}]"),
                value: format!("port {port}/{}", protocol_name(kube_protocol)),
            });
        }
        if let Some(node_port) = node_port {
            if service_type == ServiceType::ClusterIP {
                return Err(InvalidObject::Forbidden {
                    field: format!("spec.ports[{i}].nodePort"),
                    reason: "may not be used when `type` is 'ClusterIP'",
                });
            }
            if !node_ports_seen.insert((node_port, kube_protocol)) {
                return Err(InvalidObject::Duplicate {
                    field: format!("spec.ports[{i}].nodePort"),
                    value: format!("{node_port}/{}", protocol_name(kube_protocol)),
                });
            }
        }
        if let Some(target) = &sp.target_port {
            validate_target_port(i, target)?;
        }
        let protocol = match kube_protocol {
            KubeProtocol::Supported(protocol) => protocol,
            KubeProtocol::Sctp => {
                skipped.push(format!(
                    "spec.ports[{i}] ({name:?} {port}/SCTP): SCTP is not supported by the data path; port skipped"
                ));
                continue;
            }
        };
        models.push(ServicePortModel {
            name,
            protocol,
            port,
            node_port,
        });
    }
    Ok(models)
}

fn protocol_name(protocol: KubeProtocol) -> &'static str {
    match protocol {
        KubeProtocol::Supported(p) => p.as_str(),
        KubeProtocol::Sctp => "SCTP",
    }
}

/// targetPort: a port number (0 means "the port"), or an IANA service name (at most 15
/// characters of `[a-z0-9-]` with a letter, no leading, trailing or double hyphen).
fn validate_target_port(
    i: usize,
    target: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
) -> Result<(), InvalidObject> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let field = || format!("spec.ports[{i}].targetPort");
    match target {
        IntOrString::Int(0) => Ok(()),
        IntOrString::Int(n) => valid_port(&field(), *n).map(drop),
        IntOrString::String(s) if s.is_empty() => Ok(()),
        IntOrString::String(s) => {
            let ok = s.len() <= 15
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && s.bytes().any(|b| b.is_ascii_lowercase())
                && !s.starts_with('-')
                && !s.ends_with('-')
                && !s.contains("--");
            if ok {
                Ok(())
            } else {
                Err(InvalidObject::UnknownValue {
                    field: field(),
                    value: s.clone(),
                    expected: "a port number (1-65535) or an IANA service name",
                })
            }
        }
    }
}

/// spec.sessionAffinity and its timeout (default 10800 s, 1..=86400).
fn session_affinity(spec: &ServiceSpec) -> Result<u32, InvalidObject> {
    match spec.session_affinity.as_deref() {
        // With None, the API server's defaulting drops any sessionAffinityConfig.
        None | Some("") | Some("None") => Ok(0),
        Some("ClientIP") => {
            let configured = spec
                .session_affinity_config
                .as_ref()
                .and_then(|config| config.client_ip.as_ref())
                .and_then(|client_ip| client_ip.timeout_seconds);
            match configured {
                None => Ok(DEFAULT_AFFINITY_TIMEOUT_S),
                Some(seconds) => u32::try_from(seconds)
                    .ok()
                    .filter(|s| (1..=MAX_AFFINITY_TIMEOUT_S).contains(s))
                    .ok_or(InvalidObject::AffinityTimeout(seconds)),
            }
        }
        Some(other) => Err(InvalidObject::UnknownValue {
            field: "spec.sessionAffinity".to_owned(),
            value: other.to_owned(),
            expected: "None or ClientIP",
        }),
    }
}

/// spec.externalIPs: each a valid IP that ValidateEndpointIP accepts; the IPv4 ones
/// are served, multicast and broadcast ones skipped.
fn external_ips(
    spec: &ServiceSpec,
    skipped: &mut Vec<String>,
) -> Result<Vec<IpAddr>, InvalidObject> {
    let entries = spec.external_ips.as_deref().unwrap_or_default();
    if entries.len() > limits::SERVICE_ADDRESSES {
        return Err(InvalidObject::TooMany {
            field: "spec.externalIPs".to_owned(),
            count: entries.len(),
            max: limits::SERVICE_ADDRESSES,
        });
    }
    let mut ips = Vec::new();
    for (i, text) in entries.iter().enumerate() {
        let field = format!("spec.externalIPs[{i}]");
        let ip = parse_ip_sloppy(text).ok_or_else(|| InvalidObject::BadIp {
            field: field.clone(),
            value: text.clone(),
        })?;
        if let Some(reason) = endpoint_ip_problem(ip) {
            return Err(InvalidObject::SpecialIp {
                field,
                value: text.clone(),
                reason,
            });
        }
        if let Some(reason) = unservable_ip_problem(ip) {
            skipped.push(format!("{field} {text:?} {reason}; not served"));
            continue;
        }
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

/// The VIP-mode addresses of status.loadBalancer.ingress (LoadBalancer Services
/// only). The API server only parses these; an address that cannot be a frontend here
/// (unspecified, loopback, link-local, multicast) is skipped with a warning.
fn load_balancer_ips(
    svc: &Service,
    service_type: ServiceType,
    object: &str,
    skipped: &mut Vec<String>,
) -> Result<Vec<IpAddr>, InvalidObject> {
    let ingress = svc
        .status
        .as_ref()
        .and_then(|status| status.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    if ingress.is_empty() {
        return Ok(Vec::new());
    }
    if service_type != ServiceType::LoadBalancer {
        return Err(InvalidObject::Forbidden {
            field: "status.loadBalancer.ingress".to_owned(),
            reason: "may only be set when `type` is 'LoadBalancer'",
        });
    }
    if ingress.len() > limits::SERVICE_ADDRESSES {
        return Err(InvalidObject::TooMany {
            field: "status.loadBalancer.ingress".to_owned(),
            count: ingress.len(),
            max: limits::SERVICE_ADDRESSES,
        });
    }
    let mut ips = Vec::new();
    for (i, entry) in ingress.iter().enumerate() {
        let field = format!("status.loadBalancer.ingress[{i}].ip");
        // Entries with only a hostname have no IP to serve.
        let Some(text) = entry.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            if entry.ip_mode.is_some() {
                return Err(InvalidObject::Forbidden {
                    field: format!("status.loadBalancer.ingress[{i}].ipMode"),
                    reason: "may not be specified when `ip` is not set",
                });
            }
            continue;
        };
        let ip = parse_ip_sloppy(text).ok_or_else(|| InvalidObject::BadIp {
            field: field.clone(),
            value: text.to_owned(),
        })?;
        // A "Proxy" load balancer delivers to the nodes, not to its IP: kube-proxy does
        // not capture that IP (IsVIPMode).
        match entry.ip_mode.as_deref() {
            None | Some("VIP") => {}
            Some("Proxy") => {
                debug!(service = %object, %ip, "load balancer IP in Proxy mode: not captured");
                continue;
            }
            Some(other) => {
                return Err(InvalidObject::UnknownValue {
                    field: format!("status.loadBalancer.ingress[{i}].ipMode"),
                    value: other.to_owned(),
                    expected: "VIP or Proxy",
                });
            }
        }
        if let Some(reason) = frontend_ip_problem(ip) {
            skipped.push(format!("{field} {text:?} {reason}; not served"));
            continue;
        }
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

/// spec.loadBalancerSourceRanges (LoadBalancer Services only), trimmed as the API
/// server trims them; the IPv6 ones belong to the IPv6 part of the Service.
fn source_ranges(
    spec: &ServiceSpec,
    service_type: ServiceType,
) -> Result<Vec<IpCidr>, InvalidObject> {
    let ranges = spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or_default();
    if ranges.is_empty() {
        return Ok(Vec::new());
    }
    if service_type != ServiceType::LoadBalancer {
        return Err(InvalidObject::Forbidden {
            field: "spec.loadBalancerSourceRanges".to_owned(),
            reason: "may only be used when `type` is 'LoadBalancer'",
        });
    }
    if ranges.len() > limits::SOURCE_RANGES {
        return Err(InvalidObject::TooMany {
            field: "spec.loadBalancerSourceRanges".to_owned(),
            count: ranges.len(),
            max: limits::SOURCE_RANGES,
        });
    }
    let mut out = Vec::new();
    for (i, range) in ranges.iter().enumerate() {
        let range = range.trim();
        let bad = || InvalidObject::BadIp {
            field: format!("spec.loadBalancerSourceRanges[{i}]"),
            value: range.to_owned(),
        };
        // Validated whatever its family; kept when its family is served.
        if !range.contains('/') {
            return Err(bad());
        }
        let cidr = range.parse::<IpCidr>().map_err(|_| bad())?;
        out.push(cidr);
    }
    Ok(out)
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
    /// addresses[0], as kube-proxy uses (the others are validated, then ignored); of
    /// the slice's address type.
    pub address: IpAddr,
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
    /// Valid parts the data path cannot use (ports without a number, multicast
    /// endpoints), one human-readable line each, so the caller can warn about a
    /// hand-written slice.
    pub skipped: Vec<String>,
}

impl SliceModel {
    /// Validates an EndpointSlice. `Ok(None)` when it is valid but not used: FQDN,
    /// labelled headless, or without the label naming its Service.
    pub fn from_k8s(slice: &EndpointSlice) -> Result<Option<SliceModel>, InvalidObject> {
        let name = required_name(&slice.metadata)?;
        check_name(
            "metadata.name",
            &name,
            is_dns1123_subdomain,
            "DNS-1123 subdomain",
        )?;
        let namespace = namespace_or_default(&slice.metadata)?;
        let object = format!("{namespace}/{name}");
        let address_type = slice.address_type.as_str();
        if !matches!(address_type, "IPv4" | "IPv6" | "FQDN") {
            return Err(InvalidObject::UnknownValue {
                field: "addressType".to_owned(),
                value: address_type.to_owned(),
                expected: "IPv4, IPv6 or FQDN",
            });
        }
        let ports = slice.ports.as_deref().unwrap_or_default();
        if ports.len() > limits::SLICE_PORTS {
            return Err(InvalidObject::TooMany {
                field: "ports".to_owned(),
                count: ports.len(),
                max: limits::SLICE_PORTS,
            });
        }
        let endpoints = slice.endpoints.as_deref().unwrap_or_default();
        if endpoints.len() > limits::SLICE_ENDPOINTS {
            return Err(InvalidObject::TooMany {
                field: "endpoints".to_owned(),
                count: endpoints.len(),
                max: limits::SLICE_ENDPOINTS,
            });
        }
        // The whole object is validated before deciding whether it is used: an invalid
        // object is reported as such whatever its labels say.
        let mut skipped = Vec::new();
        let ports = slice_ports(ports, &mut skipped)?;
        let endpoints = match address_type {
            "IPv4" => slice_endpoints(endpoints, SliceFamily::V4, &mut skipped)?,
            "IPv6" => slice_endpoints(endpoints, SliceFamily::V6, &mut skipped)?,
            _ => Vec::new(),
        };

        if has_label(&slice.metadata, LABEL_HEADLESS) {
            debug!(slice = %object, "headless: not used");
            return Ok(None);
        }
        // kube-proxy ignores FQDN slices (deprecated): say so, they serve nothing.
        if address_type == "FQDN" {
            warn!(slice = %object, "addressType FQDN: not used (kube-proxy ignores FQDN slices)");
            return Ok(None);
        }
        let Some(service_name) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(LABEL_SERVICE_NAME))
            .filter(|service| !service.is_empty())
            .cloned()
        else {
            // Valid (the API server does not require the label), but kube-proxy joins
            // slices to Services by it only.
            warn!(slice = %object, "no {LABEL_SERVICE_NAME} label: belongs to no Service, not used");
            return Ok(None);
        };

        Ok(Some(SliceModel {
            namespace,
            name,
            service_name,
            ports,
            endpoints,
            skipped,
        }))
    }

    /// namespace/name of the slice.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }

    /// namespace/name of the Service this slice belongs to.
    pub fn service_key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.service_name)
    }
}

/// The ports of a slice: names unique and DNS-1123 labels (a missing name is "", as
/// the API server defaults it), protocols known. The API server does not check the
/// number; kube-proxy ignores a port without one, and one out of range is skipped too.
fn slice_ports(
    ports: &[EndpointPort],
    skipped: &mut Vec<String>,
) -> Result<Vec<SlicePortModel>, InvalidObject> {
    let mut out = Vec::with_capacity(ports.len());
    let mut names = HashSet::new();
    for (i, ep) in ports.iter().enumerate() {
        let name = ep.name.clone().unwrap_or_default();
        if !name.is_empty() && !is_dns1123_label(&name) {
            return Err(InvalidObject::BadName {
                field: "ports[].name",
                value: name,
                what: "DNS-1123 label",
            });
        }
        if !names.insert(name.clone()) {
            return Err(InvalidObject::Duplicate {
                field: format!("ports[{i}].name"),
                value: format!("{name:?}"),
            });
        }
        let protocol =
            match parse_protocol(|| format!("ports[{i}].protocol"), ep.protocol.as_deref())? {
                KubeProtocol::Supported(protocol) => protocol,
                // The Service's own SCTP port is already reported; no second warning.
                KubeProtocol::Sctp => continue,
            };
        let port = match ep.port {
            None | Some(0) => {
                skipped.push(format!(
                    "ports[{i}] ({name:?}) has no port number; port skipped"
                ));
                continue;
            }
            Some(port) => match u16::try_from(port) {
                Ok(port) => port,
                Err(_) => {
                    skipped.push(format!(
                        "ports[{i}] ({name:?}): {port} is not a port number (1-65535); port skipped"
                    ));
                    continue;
                }
            },
        };
        out.push(SlicePortModel {
            name,
            protocol,
            port,
        });
    }
    Ok(out)
}

/// The address family of an IPv4 or IPv6 slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SliceFamily {
    V4,
    V6,
}

impl SliceFamily {
    fn name(self) -> &'static str {
        match self {
            SliceFamily::V4 => "IPv4",
            SliceFamily::V6 => "IPv6",
        }
    }
}

/// The endpoints of an IPv4 or IPv6 slice: every address of the slice's family that
/// ValidateEndpointIP accepts (an IPv4-mapped IPv6 address is IPv4, as
/// netutils.IsIPv6 says) (1 to 100 of them), node names and hints well formed. The first address is
/// the endpoint's; an endpoint whose first address is multicast or broadcast is
/// skipped.
fn slice_endpoints(
    endpoints: &[Endpoint],
    family: SliceFamily,
    skipped: &mut Vec<String>,
) -> Result<Vec<EndpointModel>, InvalidObject> {
    let mut out = Vec::with_capacity(endpoints.len());
    for (index, endpoint) in endpoints.iter().enumerate() {
        let addresses = &endpoint.addresses;
        if addresses.is_empty() {
            return Err(InvalidObject::EndpointWithoutAddress { index });
        }
        if addresses.len() > limits::ENDPOINT_ADDRESSES {
            return Err(InvalidObject::TooMany {
                field: format!("endpoints[{index}].addresses"),
                count: addresses.len(),
                max: limits::ENDPOINT_ADDRESSES,
            });
        }
        let mut first = None;
        for (i, text) in addresses.iter().enumerate() {
            let field = || format!("endpoints[{index}].addresses[{i}]");
            let ip = match parse_ip_sloppy(text) {
                Some(ip) if ip.is_ipv4() == (family == SliceFamily::V4) => ip,
                Some(_) => {
                    return Err(InvalidObject::WrongFamily {
                        field: field(),
                        value: text.clone(),
                        family: family.name(),
                    });
                }
                None => {
                    return Err(InvalidObject::BadIp {
                        field: field(),
                        value: text.clone(),
                    });
                }
            };
            if let Some(reason) = endpoint_ip_problem(ip) {
                return Err(InvalidObject::SpecialIp {
                    field: field(),
                    value: text.clone(),
                    reason,
                });
            }
            first.get_or_insert(ip);
        }
        let Some(address) = first else {
            return Err(InvalidObject::EndpointWithoutAddress { index });
        };
        if let Some(node) = &endpoint.node_name
            && !is_dns1123_subdomain(node)
        {
            return Err(InvalidObject::BadName {
                field: "endpoints[].nodeName",
                value: node.clone(),
                what: "node name (DNS-1123 subdomain)",
            });
        }
        let hints = endpoint.hints.as_ref();
        let zones: Vec<String> = hints
            .and_then(|h| h.for_zones.as_ref())
            .into_iter()
            .flatten()
            .map(|zone| zone.name.clone())
            .collect();
        let nodes: Vec<String> = hints
            .and_then(|h| h.for_nodes.as_ref())
            .into_iter()
            .flatten()
            .map(|node| node.name.clone())
            .collect();
        check_hints(index, "forZones", &zones, is_label_value)?;
        check_hints(index, "forNodes", &nodes, is_dns1123_subdomain)?;
        if let Some(reason) = unservable_ip_problem(address) {
            skipped.push(format!(
                "endpoints[{index}] {address} {reason}; endpoint skipped"
            ));
            continue;
        }
        let conditions = endpoint.conditions.as_ref();
        out.push(EndpointModel {
            address,
            ready: conditions.and_then(|c| c.ready).unwrap_or(true),
            serving: conditions.and_then(|c| c.serving).unwrap_or(true),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            node_name: endpoint.node_name.clone(),
            zone: endpoint.zone.clone(),
            hints_zones: (!zones.is_empty()).then_some(zones),
            hints_nodes: (!nodes.is_empty()).then_some(nodes),
        });
    }
    Ok(out)
}

/// hints.forZones / forNodes: at most 8, unique, each name well formed.
fn check_hints(
    index: usize,
    which: &str,
    names: &[String],
    well_formed: fn(&str) -> bool,
) -> Result<(), InvalidObject> {
    let field = || format!("endpoints[{index}].hints.{which}");
    if names.len() > limits::ENDPOINT_HINTS {
        return Err(InvalidObject::TooMany {
            field: field(),
            count: names.len(),
            max: limits::ENDPOINT_HINTS,
        });
    }
    let mut seen = HashSet::new();
    for name in names {
        if !well_formed(name) {
            return Err(InvalidObject::UnknownValue {
                field: field(),
                value: name.clone(),
                expected: "a valid name",
            });
        }
        if !seen.insert(name) {
            return Err(InvalidObject::Duplicate {
                field: field(),
                value: name.clone(),
            });
        }
    }
    Ok(())
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

fn check_name(
    field: &'static str,
    value: &str,
    valid: fn(&str) -> bool,
    what: &'static str,
) -> Result<(), InvalidObject> {
    if valid(value) {
        Ok(())
    } else {
        Err(InvalidObject::BadName {
            field,
            value: value.to_owned(),
            what,
        })
    }
}

/// metadata.namespace, "default" when absent; a DNS-1123 label.
fn namespace_or_default(meta: &ObjectMeta) -> Result<String, InvalidObject> {
    let namespace = meta
        .namespace
        .clone()
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    check_name(
        "metadata.namespace",
        &namespace,
        is_dns1123_label,
        "DNS-1123 label",
    )?;
    Ok(namespace)
}

fn has_label(meta: &ObjectMeta, key: &str) -> bool {
    meta.labels
        .as_ref()
        .is_some_and(|labels| labels.contains_key(key))
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
                cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 10).into()],
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
                skipped: vec![],
            }
        );
        assert_eq!(model.key(), ObjectKey::new("demo", "web"));
        assert_eq!(model.key().to_string(), "demo/web");
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
    fn dual_stack_keeps_both_families_in_order() {
        let v4: IpAddr = Ipv4Addr::new(10, 96, 0, 10).into();
        let v6: IpAddr = "fd00::10".parse().unwrap();
        for (ips, want) in [
            (json!(["fd00::10", "10.96.0.10"]), vec![v6, v4]),
            (json!(["10.96.0.10", "fd00::10"]), vec![v4, v6]),
            (json!(["fd00::10"]), vec![v6]),
        ] {
            let first = ips[0].clone();
            let model = service(service_with(json!({"clusterIP": first, "clusterIPs": ips})))
                .unwrap()
                .unwrap();
            assert_eq!(model.cluster_ips, want);
        }
    }

    #[test]
    fn addresses_of_a_family_without_a_cluster_ip_are_not_served() {
        let mut value = service_with(json!({
            "type": "LoadBalancer",
            "externalIPs": ["192.0.2.1", "fd00:1::1"],
            "loadBalancerSourceRanges": ["192.0.2.0/24", "fd00:2::/64"],
        }));
        value["status"] =
            json!({"loadBalancer": {"ingress": [{"ip": "fd00:3::7"}, {"ip": "198.51.100.7"}]}});
        let model = service(value).unwrap().unwrap();
        assert_eq!(
            model.external_ips,
            vec![IpAddr::from(Ipv4Addr::new(192, 0, 2, 1))]
        );
        assert_eq!(
            model.load_balancer_ips,
            vec![IpAddr::from(Ipv4Addr::new(198, 51, 100, 7))]
        );
        assert_eq!(model.load_balancer_source_ranges.len(), 1);
        for field in [
            "spec.externalIPs fd00:1::1",
            "status.loadBalancer.ingress fd00:3::7",
            "spec.loadBalancerSourceRanges fd00:2::",
        ] {
            assert!(
                model
                    .skipped
                    .iter()
                    .any(|s| s.starts_with(field) && s.contains("no IPv6 cluster IP")),
                "{field}: {:?}",
                model.skipped
            );
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
        let mut with_status = service_with(json!({"type": "LoadBalancer"}));
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
        assert_eq!(model.skipped.len(), 2);
        assert!(model.skipped[0].contains("SCTP"), "{:?}", model.skipped);
        assert!(
            model.skipped[1].contains("2001:db8::1"),
            "{:?}",
            model.skipped
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
            // Unset on a Service that is not externally accessible.
            (json!({"externalTrafficPolicy": ""}), TrafficPolicy::Cluster),
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
            {"hostname": "lb.example.com"},
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
    fn unnamed_port_missing_namespace_and_one_number_per_protocol() {
        let mut value = service_with(json!({"ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
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
        assert_eq!(model.service_key(), ObjectKey::new("demo", "web"));
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
                    address: Ipv4Addr::new(10, 244, 0, 11).into(),
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
                    address: Ipv4Addr::new(10, 244, 0, 12).into(),
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
            {"name": "big", "port": 70000},
            {"port": 9090},
            {"name": "assoc", "port": 9000, "protocol": "SCTP"},
            {"name": "dns", "port": 53, "protocol": "UDP"},
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
                // A missing name is "", as the API server defaults it.
                SlicePortModel {
                    name: "".into(),
                    protocol: Protocol::Tcp,
                    port: 9090
                },
                SlicePortModel {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 53
                },
            ]
        );
        assert_eq!(model.skipped.len(), 3, "{:?}", model.skipped);
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

    /// What validation makes of an object.
    #[derive(Debug, PartialEq)]
    enum Outcome {
        /// Rejected; the error message contains this.
        Invalid(&'static str),
        /// Accepted, with a skipped part whose description contains this.
        Skips(&'static str),
        /// Valid, not proxied (Ok(None)).
        NotProxied,
        /// Valid and used whole.
        Valid,
    }

    fn outcome_of(value: &Value) -> Result<Vec<String>, String> {
        let kind = value["kind"].as_str().unwrap_or_default();
        let result = match kind {
            "Service" => service(value.clone()).map(|m| m.map(|m| m.skipped)),
            _ => slice(value.clone()).map(|m| m.map(|m| m.skipped)),
        };
        match result {
            Ok(Some(skipped)) => Ok(skipped),
            Ok(None) => Err("not proxied".into()),
            Err(e) => Err(format!("invalid: {e}")),
        }
    }

    fn check(rule: &str, value: Value, want: Outcome) {
        let got = outcome_of(&value);
        let ok = match (&want, &got) {
            (Outcome::Invalid(part), Err(e)) => e.starts_with("invalid: ") && e.contains(part),
            (Outcome::Skips(part), Ok(skipped)) => skipped.iter().any(|s| s.contains(part)),
            (Outcome::NotProxied, Err(e)) => e == "not proxied",
            (Outcome::Valid, Ok(skipped)) => skipped.is_empty(),
            _ => false,
        };
        assert!(ok, "{rule}: want {want:?}, got {got:?}");
    }

    fn with_meta(mut value: Value, meta: Value) -> Value {
        if let (Some(m), Value::Object(o)) = (value["metadata"].as_object_mut(), meta) {
            m.extend(o);
        }
        value
    }

    fn with_status(mut value: Value, status: Value) -> Value {
        value["status"] = status;
        value
    }

    /// Every rule of the API server's validation that socklb applies, and the parts
    /// socklb skips because the data path cannot serve them, one row each.
    #[test]
    fn every_validation_rule() {
        use Outcome::*;
        let lb = |spec: Value| {
            let mut base = json!({"type": "LoadBalancer"});
            if let (Some(b), Value::Object(o)) = (base.as_object_mut(), spec) {
                b.extend(o);
            }
            service_with(base)
        };
        let ingress = |entries: Value| {
            with_status(lb(json!({})), json!({"loadBalancer": {"ingress": entries}}))
        };
        let ports = |list: Value| service_with(json!({"ports": list}));
        let eps = |list: Value| slice_with(json!({"endpoints": list}));
        let addrs = |a: &[&str]| eps(json!([{"addresses": a}]));
        let many = |n: usize, f: &dyn Fn(usize) -> Value| Value::Array((0..n).map(f).collect());
        let rows: Vec<(&str, Value, Outcome)> = vec![
            // ---- Service metadata
            ("the base Service", service_with(json!({})), Valid),
            (
                "no name",
                with_meta(service_with(json!({})), json!({"name": null})),
                Invalid("metadata.name"),
            ),
            (
                "upper-case name",
                with_meta(service_with(json!({})), json!({"name": "Web"})),
                Invalid("metadata.name"),
            ),
            (
                "name of 64 characters",
                with_meta(service_with(json!({})), json!({"name": "a".repeat(64)})),
                Invalid("metadata.name"),
            ),
            (
                "name with a dot",
                with_meta(service_with(json!({})), json!({"name": "a.b"})),
                Invalid("metadata.name"),
            ),
            (
                "leading digit (RelaxedServiceNameValidation)",
                with_meta(service_with(json!({})), json!({"name": "1web"})),
                Valid,
            ),
            (
                "bad namespace",
                with_meta(service_with(json!({})), json!({"namespace": "Demo_1"})),
                Invalid("metadata.namespace"),
            ),
            (
                "labelled for another proxy",
                with_meta(
                    service_with(json!({})),
                    json!({"labels": {LABEL_SERVICE_PROXY_NAME: "x"}}),
                ),
                NotProxied,
            ),
            // ---- type
            (
                "unknown type",
                service_with(json!({"type": "Magic"})),
                Invalid("spec.type"),
            ),
            (
                "ExternalName",
                service_with(json!({"type": "ExternalName", "externalName": "a.example"})),
                NotProxied,
            ),
            // ---- cluster IPs
            (
                "no clusterIP",
                service_with(json!({"clusterIP": ""})),
                Invalid("spec.clusterIP"),
            ),
            (
                "bad clusterIP",
                service_with(json!({"clusterIP": "10.96.300.1"})),
                Invalid("spec.clusterIP"),
            ),
            (
                "clusterIP 0.0.0.0 (would alias NodePorts)",
                service_with(json!({"clusterIP": "0.0.0.0"})),
                Invalid("unspecified"),
            ),
            (
                "loopback clusterIP",
                service_with(json!({"clusterIP": "127.0.0.1"})),
                Invalid("loopback"),
            ),
            (
                "link-local clusterIP",
                service_with(json!({"clusterIP": "169.254.1.1"})),
                Invalid("link-local"),
            ),
            (
                "multicast clusterIP",
                service_with(json!({"clusterIP": "239.1.1.1"})),
                Invalid("multicast"),
            ),
            (
                "broadcast clusterIP",
                service_with(json!({"clusterIP": "255.255.255.255"})),
                Invalid("broadcast"),
            ),
            (
                "leading zeros are decimal (ParseIPSloppy)",
                service_with(json!({"clusterIP": "010.096.000.010"})),
                Valid,
            ),
            (
                "IPv4-mapped clusterIP is IPv4",
                service_with(json!({"clusterIP": "::ffff:10.96.0.10"})),
                Valid,
            ),
            (
                "clusterIPs[0] differs from clusterIP",
                service_with(json!({"clusterIPs": ["10.96.0.11"]})),
                Invalid("must match"),
            ),
            (
                "bad clusterIPs entry",
                service_with(json!({"clusterIPs": ["10.96.0.10", "nope"]})),
                Invalid("spec.clusterIPs[1]"),
            ),
            (
                "three clusterIPs",
                service_with(json!({"clusterIPs": ["10.96.0.10", "fd00::1", "10.96.0.11"]})),
                Invalid("at most 2"),
            ),
            (
                "two clusterIPs of one family",
                service_with(json!({"clusterIPs": ["10.96.0.10", "10.96.0.11"]})),
                Invalid("one IP for each IP family"),
            ),
            (
                "dual stack",
                service_with(json!({"clusterIPs": ["10.96.0.10", "fd00::10"]})),
                Valid,
            ),
            (
                "headless",
                service_with(json!({"clusterIP": "None"})),
                NotProxied,
            ),
            (
                "None with another IP",
                service_with(json!({"clusterIP": "None", "clusterIPs": ["None", "10.96.0.10"]})),
                Invalid("'None'"),
            ),
            (
                "IPv6 only",
                service_with(json!({"clusterIP": "fd00::10"})),
                Valid,
            ),
            (
                "dual-stack",
                service_with(
                    json!({"clusterIP": "fd00::10", "clusterIPs": ["fd00::10", "10.96.0.10"], "ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "RequireDualStack"}),
                ),
                Valid,
            ),
            (
                "clusterIPs against ipFamilies",
                service_with(
                    json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"], "ipFamilies": ["IPv6", "IPv4"]}),
                ),
                Invalid("spec.clusterIPs[0]"),
            ),
            (
                "SingleStack with two families",
                service_with(
                    json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"], "ipFamilyPolicy": "SingleStack"}),
                ),
                Invalid("spec.ipFamilyPolicy"),
            ),
            (
                "SingleStack with two ipFamilies",
                service_with(
                    json!({"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "SingleStack"}),
                ),
                Invalid("spec.ipFamilyPolicy"),
            ),
            (
                "an external IP of a family without a cluster IP",
                service_with(json!({"externalIPs": ["fd00:1::1"]})),
                Skips("no IPv6 cluster IP"),
            ),
            (
                "unknown ipFamilies entry",
                service_with(json!({"ipFamilies": ["IPv5"]})),
                Invalid("spec.ipFamilies[0]"),
            ),
            (
                "duplicate ipFamilies",
                service_with(json!({"ipFamilies": ["IPv4", "IPv4"]})),
                Invalid("duplicate"),
            ),
            (
                "unknown ipFamilyPolicy",
                service_with(json!({"ipFamilyPolicy": "Whatever"})),
                Invalid("spec.ipFamilyPolicy"),
            ),
            // ---- ports
            (
                "no ports",
                service_with(json!({"ports": []})),
                Invalid("spec.ports: required"),
            ),
            (
                "port 0",
                ports(json!([{"port": 0}])),
                Invalid("spec.ports[0].port"),
            ),
            (
                "port 70000",
                ports(json!([{"port": 70000}])),
                Invalid("spec.ports[0].port"),
            ),
            (
                "port -1",
                ports(json!([{"port": -1}])),
                Invalid("spec.ports[0].port"),
            ),
            (
                "protocol in lower case",
                ports(json!([{"port": 80, "protocol": "tcp"}])),
                Invalid("tcp"),
            ),
            (
                "unknown protocol",
                ports(json!([{"port": 80, "protocol": "FOO"}])),
                Invalid("FOO"),
            ),
            (
                "SCTP is valid but skipped",
                ports(
                    json!([{"name": "a", "port": 80}, {"name": "s", "port": 9, "protocol": "SCTP"}]),
                ),
                Skips("SCTP"),
            ),
            ("unnamed single port", ports(json!([{"port": 80}])), Valid),
            (
                "unnamed port among several",
                ports(json!([{"name": "a", "port": 80}, {"port": 81}])),
                Invalid("spec.ports[1].name: required"),
            ),
            (
                "port name not a DNS label",
                ports(json!([{"name": "HTTP", "port": 80}])),
                Invalid("spec.ports[].name"),
            ),
            (
                "duplicate name",
                ports(json!([{"name": "a", "port": 80}, {"name": "a", "port": 81}])),
                Invalid("duplicate"),
            ),
            (
                "duplicate name across protocols",
                ports(
                    json!([{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns", "port": 53, "protocol": "TCP"}]),
                ),
                Invalid("duplicate"),
            ),
            (
                "duplicate port and protocol",
                ports(json!([{"name": "a", "port": 80}, {"name": "b", "port": 80}])),
                Invalid("80/TCP"),
            ),
            (
                "one number on two protocols",
                ports(
                    json!([{"name": "a", "port": 53, "protocol": "UDP"}, {"name": "b", "port": 53}]),
                ),
                Valid,
            ),
            (
                "nodePort on a ClusterIP Service",
                ports(json!([{"port": 80, "nodePort": 30080}])),
                Invalid("nodePort"),
            ),
            (
                "nodePort out of range",
                lb(json!({"ports": [{"port": 80, "nodePort": 70000}]})),
                Invalid("nodePort"),
            ),
            (
                "duplicate nodePort",
                lb(
                    json!({"ports": [{"name": "a", "port": 80, "nodePort": 30080}, {"name": "b", "port": 81, "nodePort": 30080}]}),
                ),
                Invalid("30080/TCP"),
            ),
            (
                "targetPort number out of range",
                ports(json!([{"port": 80, "targetPort": 70000}])),
                Invalid("targetPort"),
            ),
            (
                "targetPort name too long",
                ports(json!([{"port": 80, "targetPort": "a-very-long-port-name"}])),
                Invalid("targetPort"),
            ),
            (
                "targetPort name without a letter",
                ports(json!([{"port": 80, "targetPort": "80-80"}])),
                Invalid("targetPort"),
            ),
            (
                "targetPort name",
                ports(json!([{"port": 80, "targetPort": "http-alt"}])),
                Valid,
            ),
            (
                "more ports than socklb's limit",
                ports(many(
                    limits::SERVICE_PORTS + 1,
                    &|i| json!({"name": format!("p{i}"), "port": i + 1}),
                )),
                Invalid("at most 1000"),
            ),
            // ---- policies and affinity
            (
                "unknown internalTrafficPolicy",
                service_with(json!({"internalTrafficPolicy": "Nearby"})),
                Invalid("internalTrafficPolicy"),
            ),
            (
                "externalTrafficPolicy on a ClusterIP Service",
                service_with(json!({"externalTrafficPolicy": "Local"})),
                Invalid("externally-accessible"),
            ),
            (
                "externalTrafficPolicy with externalIPs",
                service_with(
                    json!({"externalIPs": ["192.0.2.1"], "externalTrafficPolicy": "Local"}),
                ),
                Valid,
            ),
            (
                "unknown externalTrafficPolicy",
                lb(json!({"externalTrafficPolicy": "Nearby"})),
                Invalid("externalTrafficPolicy"),
            ),
            (
                "unknown sessionAffinity",
                service_with(json!({"sessionAffinity": "Cookie"})),
                Invalid("sessionAffinity"),
            ),
            (
                "affinity timeout 0",
                service_with(
                    json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}),
                ),
                Invalid("timeoutSeconds"),
            ),
            (
                "affinity timeout 86401",
                service_with(
                    json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}}),
                ),
                Invalid("timeoutSeconds"),
            ),
            (
                "affinity config with None is dropped by defaulting",
                service_with(
                    json!({"sessionAffinity": "None", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 5}}}),
                ),
                Valid,
            ),
            (
                "unknown trafficDistribution",
                service_with(json!({"trafficDistribution": "Anywhere"})),
                Invalid("trafficDistribution"),
            ),
            (
                "trafficDistribution PreferSameNode",
                service_with(json!({"trafficDistribution": "PreferSameNode"})),
                Valid,
            ),
            (
                "healthCheckNodePort without Local",
                lb(json!({"healthCheckNodePort": 32000})),
                Invalid("healthCheckNodePort"),
            ),
            (
                "healthCheckNodePort on LoadBalancer Local",
                lb(json!({"externalTrafficPolicy": "Local", "healthCheckNodePort": 32000})),
                Valid,
            ),
            (
                "healthCheckNodePort out of range",
                lb(json!({"externalTrafficPolicy": "Local", "healthCheckNodePort": 70000})),
                Invalid("healthCheckNodePort"),
            ),
            // ---- external IPs
            (
                "bad external IP",
                service_with(json!({"externalIPs": ["1.2.3"]})),
                Invalid("spec.externalIPs[0]"),
            ),
            (
                "external IP 0.0.0.0",
                service_with(json!({"externalIPs": ["0.0.0.0"]})),
                Invalid("unspecified"),
            ),
            (
                "loopback external IP",
                service_with(json!({"externalIPs": ["127.0.0.2"]})),
                Invalid("loopback"),
            ),
            (
                "link-local external IP",
                service_with(json!({"externalIPs": ["169.254.0.9"]})),
                Invalid("link-local"),
            ),
            (
                "link-local multicast external IP",
                service_with(json!({"externalIPs": ["224.0.0.5"]})),
                Invalid("multicast"),
            ),
            (
                "global multicast external IP: accepted, not served",
                service_with(json!({"externalIPs": ["239.1.1.1"]})),
                Skips("multicast"),
            ),
            (
                "broadcast external IP: accepted, not served",
                service_with(json!({"externalIPs": ["255.255.255.255"]})),
                Skips("broadcast"),
            ),
            (
                "too many external IPs",
                service_with(
                    json!({"externalIPs": many(limits::SERVICE_ADDRESSES + 1, &|i| json!(format!("192.0.2.{}", i + 1)))}),
                ),
                Invalid("at most 64"),
            ),
            // ---- load balancer status and source ranges
            (
                "ingress on a ClusterIP Service",
                with_status(
                    service_with(json!({})),
                    json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}),
                ),
                Invalid("status.loadBalancer.ingress"),
            ),
            (
                "bad ingress IP",
                ingress(json!([{"ip": "198.51.100"}])),
                Invalid("ingress[0].ip"),
            ),
            (
                "ingress IP 0.0.0.0: not served",
                ingress(json!([{"ip": "0.0.0.0"}])),
                Skips("unspecified"),
            ),
            (
                "loopback ingress IP: not served",
                ingress(json!([{"ip": "127.0.0.1"}])),
                Skips("loopback"),
            ),
            (
                "unknown ipMode",
                ingress(json!([{"ip": "198.51.100.1", "ipMode": "Tunnel"}])),
                Invalid("ipMode"),
            ),
            (
                "ipMode without ip",
                ingress(json!([{"hostname": "lb.example", "ipMode": "Proxy"}])),
                Invalid("ipMode"),
            ),
            (
                "source ranges on a ClusterIP Service",
                service_with(json!({"loadBalancerSourceRanges": ["10.0.0.0/8"]})),
                Invalid("loadBalancerSourceRanges"),
            ),
            (
                "bad source range",
                lb(json!({"loadBalancerSourceRanges": ["10.0.0.0/33"]})),
                Invalid("loadBalancerSourceRanges[0]"),
            ),
            (
                "source range padded with spaces, host bits set",
                lb(json!({"loadBalancerSourceRanges": [" 10.1.2.3/8 "]})),
                Valid,
            ),
            (
                "source range of a family without a cluster IP",
                lb(json!({"loadBalancerSourceRanges": ["10.0.0.0/8", "fd00::/8"]})),
                Skips("spec.loadBalancerSourceRanges fd00::/8: the Service has no IPv6 cluster IP"),
            ),
            // ---- EndpointSlice metadata and type
            ("the base slice", slice_with(json!({})), Valid),
            (
                "slice name with upper case",
                with_meta(slice_with(json!({})), json!({"name": "Web-1"})),
                Invalid("metadata.name"),
            ),
            (
                "slice name with dots",
                with_meta(slice_with(json!({})), json!({"name": "web.1.abc"})),
                Valid,
            ),
            (
                "no service-name label",
                with_meta(slice_with(json!({})), json!({"labels": {}})),
                NotProxied,
            ),
            (
                "empty service-name label",
                with_meta(
                    slice_with(json!({})),
                    json!({"labels": {LABEL_SERVICE_NAME: ""}}),
                ),
                NotProxied,
            ),
            (
                "headless label",
                with_meta(
                    slice_with(json!({})),
                    json!({"labels": {LABEL_SERVICE_NAME: "web", LABEL_HEADLESS: ""}}),
                ),
                NotProxied,
            ),
            (
                "unknown addressType",
                slice_with(json!({"addressType": "IPv5"})),
                Invalid("addressType"),
            ),
            (
                "IPv6 slice",
                slice_with(
                    json!({"addressType": "IPv6", "endpoints": [{"addresses": ["fd00::1"]}]}),
                ),
                Valid,
            ),
            (
                "IPv4 address in an IPv6 slice",
                slice_with(
                    json!({"addressType": "IPv6", "endpoints": [{"addresses": ["10.244.0.1"]}]}),
                ),
                Invalid("not an IPv6"),
            ),
            (
                "IPv4-mapped address in an IPv6 slice",
                slice_with(
                    json!({"addressType": "IPv6", "endpoints": [{"addresses": ["::ffff:10.244.0.1"]}]}),
                ),
                Invalid("not an IPv6"),
            ),
            (
                "loopback IPv6 endpoint",
                slice_with(json!({"addressType": "IPv6", "endpoints": [{"addresses": ["::1"]}]})),
                Invalid("loopback"),
            ),
            (
                "link-local IPv6 endpoint",
                slice_with(
                    json!({"addressType": "IPv6", "endpoints": [{"addresses": ["fe80::1"]}]}),
                ),
                Invalid("link-local"),
            ),
            (
                "FQDN slice",
                slice_with(
                    json!({"addressType": "FQDN", "endpoints": [{"addresses": ["a.example"]}]}),
                ),
                NotProxied,
            ),
            // ---- endpoint addresses (ValidateEndpointIP)
            (
                "endpoint 0.0.0.0",
                addrs(&["0.0.0.0"]),
                Invalid("unspecified"),
            ),
            (
                "loopback endpoint",
                addrs(&["127.0.0.1"]),
                Invalid("loopback"),
            ),
            (
                "link-local endpoint",
                addrs(&["169.254.169.254"]),
                Invalid("link-local"),
            ),
            (
                "link-local multicast endpoint",
                addrs(&["224.0.0.1"]),
                Invalid("multicast"),
            ),
            (
                "a bad second address counts too",
                addrs(&["10.244.0.1", "127.0.0.1"]),
                Invalid("addresses[1]"),
            ),
            (
                "global multicast endpoint: accepted, not served",
                addrs(&["239.1.2.3"]),
                Skips("multicast"),
            ),
            (
                "broadcast endpoint: accepted, not served",
                addrs(&["255.255.255.255"]),
                Skips("broadcast"),
            ),
            (
                "bad address",
                addrs(&["10.244.0.999"]),
                Invalid("endpoints[0].addresses[0]"),
            ),
            (
                "IPv6 address in an IPv4 slice",
                addrs(&["fd00::1"]),
                Invalid("not an IPv4"),
            ),
            (
                "IPv4-mapped address in an IPv4 slice",
                addrs(&["::ffff:10.244.0.1"]),
                Valid,
            ),
            (
                "leading zeros in an endpoint",
                addrs(&["010.244.000.001"]),
                Valid,
            ),
            (
                "no addresses",
                eps(json!([{"addresses": []}])),
                Invalid("no addresses"),
            ),
            (
                "101 addresses",
                addrs(&vec!["10.244.0.1"; 101]),
                Invalid("at most 100"),
            ),
            (
                "1001 endpoints",
                eps(many(
                    1001,
                    &|i| json!({"addresses": [format!("10.244.{}.{}", i / 250, 1 + i % 250)]}),
                )),
                Invalid("at most 1000"),
            ),
            (
                "1000 endpoints",
                eps(many(
                    1000,
                    &|i| json!({"addresses": [format!("10.244.{}.{}", i / 250, 1 + i % 250)]}),
                )),
                Valid,
            ),
            (
                "bad nodeName",
                eps(json!([{"addresses": ["10.244.0.1"], "nodeName": "Node_1"}])),
                Invalid("nodeName"),
            ),
            (
                "conditions and zone are free",
                eps(
                    json!([{"addresses": ["10.244.0.1"], "zone": "Any Zone!", "conditions": {"ready": false}}]),
                ),
                Valid,
            ),
            (
                "nine zone hints",
                eps(
                    json!([{"addresses": ["10.244.0.1"], "hints": {"forZones": many(9, &|i| json!({"name": format!("z{i}")}))}}]),
                ),
                Invalid("at most 8"),
            ),
            (
                "duplicate zone hints",
                eps(
                    json!([{"addresses": ["10.244.0.1"], "hints": {"forZones": [{"name": "a"}, {"name": "a"}]}}]),
                ),
                Invalid("duplicate"),
            ),
            (
                "bad node hint",
                eps(
                    json!([{"addresses": ["10.244.0.1"], "hints": {"forNodes": [{"name": "Node A"}]}}]),
                ),
                Invalid("forNodes"),
            ),
            // ---- slice ports
            (
                "slice port name not a DNS label",
                slice_with(json!({"ports": [{"name": "HTTP", "port": 80}]})),
                Invalid("ports[].name"),
            ),
            (
                "duplicate slice port names",
                slice_with(
                    json!({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81, "protocol": "UDP"}]}),
                ),
                Invalid("duplicate"),
            ),
            (
                "unknown slice protocol",
                slice_with(json!({"ports": [{"name": "http", "port": 80, "protocol": "FOO"}]})),
                Invalid("FOO"),
            ),
            (
                "slice port out of range: accepted, skipped",
                slice_with(json!({"ports": [{"name": "http", "port": 70000}]})),
                Skips("not a port number"),
            ),
            (
                "slice port without a number: skipped",
                slice_with(json!({"ports": [{"name": "http"}]})),
                Skips("no port number"),
            ),
            (
                "more slice ports than the API allows",
                slice_with(
                    json!({"ports": many(limits::SLICE_PORTS + 1, &|i| json!({"name": format!("p{i}"), "port": 1 + i % 60000}))}),
                ),
                Invalid("at most 20000"),
            ),
        ];
        for (rule, value, want) in rows {
            check(rule, value, want);
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
