//! Services, EndpointSlices and Nodes from arbitrary values, as the JSON an API server
//! (or a hand-written manifest) would carry. Values come from small pools so that
//! names, addresses and ports collide (duplicate names, conflicting frontends, slices
//! of each other's Services), and every field is usually valid and sometimes hostile
//! (special and malformed addresses, out-of-range numbers, unknown names, lists at and
//! past every limit): an object is invalid when any one field is, so with fields
//! picked evenly almost no object would get past validation.
use arbitrary::{Arbitrary, Unstructured};
use serde_json::{Map, Value, json};

use crate::{
    builders,
    model::{
        DEFAULT_NAMESPACE, LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME,
        LABEL_TOPOLOGY_ZONE,
    },
};

/// Of 256 byte values, how many pick a valid value; the rest pick a hostile one.
const VALID_OF_256: u8 = 240;

/// A value from a pool of valid values, or (one time in sixteen) from a pool of
/// hostile ones.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct Pick(u8);

impl Pick {
    pub fn of<'a>(self, (valid, hostile): Pool<'a>) -> &'a str {
        let i = usize::from(self.0);
        if self.0 < VALID_OF_256 || hostile.is_empty() {
            valid[i % valid.len()]
        } else {
            hostile[i % hostile.len()]
        }
    }
}

/// (valid values, hostile values).
pub type Pool<'a> = (&'a [&'a str], &'a [&'a str]);

/// `Some` fifteen times in sixteen: a field that is usually there.
#[derive(Clone, Debug)]
pub struct Usually<T>(pub Option<T>);

/// `Some` one time in sixteen: a field whose presence is mostly an error (or costly).
#[derive(Clone, Debug)]
pub struct Rare<T>(pub Option<T>);

impl<'a, T: Arbitrary<'a>> Arbitrary<'a> for Usually<T> {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Usually(if u8::arbitrary(u)? < VALID_OF_256 {
            Some(T::arbitrary(u)?)
        } else {
            None
        }))
    }
}

impl<'a, T: Arbitrary<'a>> Arbitrary<'a> for Rare<T> {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Rare(if u8::arbitrary(u)? >= VALID_OF_256 {
            Some(T::arbitrary(u)?)
        } else {
            None
        }))
    }
}

pub const NAMESPACES: Pool = (&["demo", "default", "other"], &["", "Bad_NS", "x.y"]);
pub const SERVICE_NAMES: Pool = (&["web", "db", "dns", "a", "0lead"], &["Web", "x.y", ""]);
pub const SLICE_NAMES: Pool = (
    &["web-1", "web-2", "db-1", "dns-1", "a-1", "s.1"],
    &["Bad_", "", ".x"],
);
pub const NODE_NAMES: Pool = (&["node-a", "node-b", "node.c"], &["Node_D", ""]);
const ZONES: Pool = (&["z1", "z2"], &["", "bad zone"]);
const TIMES: Pool = (
    &[
        "2025-01-01T00:00:00Z",
        "2025-02-01T00:00:00Z",
        "1970-01-01T00:00:00Z",
    ],
    &["9999-12-31T23:59:59Z", "not a time", ""],
);
const SERVICE_TYPES: Pool = (
    &["ClusterIP", "NodePort", "LoadBalancer"],
    &["ExternalName", "", "Bogus"],
);
const PROTOCOLS: Pool = (&["TCP", "UDP"], &["SCTP", "tcp", ""]);
const PORT_NAMES: Pool = (
    &["", "http", "dns", "https", "metrics"],
    &["HTTP", "a-", "-a", "p_1", "a-very-long-port-name"],
);
const POLICIES: Pool = (&["Cluster", "Local"], &["", "Nope"]);
const AFFINITIES: Pool = (&["None", "ClientIP"], &["", "Sticky"]);
const DISTRIBUTIONS: Pool = (
    &["PreferClose", "PreferSameZone", "PreferSameNode"],
    &["Far", ""],
);
const FAMILIES: Pool = (&["IPv4", "IPv6"], &["IPv5", ""]);
const FAMILY_POLICIES: Pool = (
    &["SingleStack", "PreferDualStack"],
    &["RequireDualStack", "Any"],
);
/// One slice in four is IPv6 (its endpoints then take IPv6 addresses).
const ADDRESS_TYPES: Pool = (&["IPv4", "IPv4", "IPv4", "IPv6"], &["FQDN", "ipv4", ""]);
/// Addresses no field should take as they are: the ones ValidateEndpointIP and the
/// cluster IP allocator refuse, other families, and malformed text.
const SPECIAL_ADDRESSES: &[&str] = &[
    "0.0.0.0",
    "127.0.0.1",
    "169.254.169.254",
    "224.0.0.1",
    "255.255.255.255",
    "10.96.0.010",
    "None",
    "",
    "::1",
    "fd00::10",
    "::ffff:10.96.0.10",
    "10.96.0.300",
    "1.2.3",
    " 10.96.0.10",
    "10.96.0.10/32",
];
const CIDRS: Pool = (
    &["0.0.0.0/0", "10.0.0.0/8", "192.0.2.0/24", "203.0.113.7/32"],
    &[
        "10.0.0.1/8",
        "::/0",
        "fd00::/8",
        " 10.0.0.0/8 ",
        "10.0.0.0/33",
        "10.0.0.0",
        "",
    ],
);

/// A namespace as the sources key objects by it: an empty one is "default".
pub fn namespace(pick: Pick) -> String {
    match pick.of(NAMESPACES) {
        "" => DEFAULT_NAMESPACE.to_owned(),
        namespace => namespace.to_owned(),
    }
}

/// Which range an address field usually takes its addresses from.
#[derive(Clone, Copy, Debug)]
pub enum Range {
    /// 10.96.0.x, x < 4: cluster IPs that collide.
    Service,
    /// 10.244.0.x, x < 8: pod addresses that collide.
    Pod,
    /// 203.0.113.x, x < 4: external and load balancer addresses that collide.
    External,
}

/// An address as text: usually from the field's own range, sometimes from another
/// field's (an external IP equal to a cluster IP), a special or malformed one, or any
/// IPv4 address.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct Address(u8, u32);

impl Address {
    fn text(self, range: Range) -> String {
        let Address(how, raw) = self;
        let range = match how {
            0..=223 => range,
            224..=231 => Range::Service,
            232..=239 => Range::Pod,
            240..=243 => Range::External,
            244..=251 => {
                return SPECIAL_ADDRESSES[raw as usize % SPECIAL_ADDRESSES.len()].to_owned();
            }
            252..=255 => return std::net::Ipv4Addr::from(raw).to_string(),
        };
        // One in eight of a Service's addresses is IPv6 (by the top bits, so that the
        // low bits still pick the same few addresses).
        self.in_family(range, raw >> 29 == 7)
    }

    /// The address of `range` in IPv6 or IPv4, or hostile as [`Self::text`].
    fn text_in(self, range: Range, ipv6: bool) -> String {
        match self.0 {
            0..=223 => self.in_family(range, ipv6),
            _ => self.text(range),
        }
    }

    fn in_family(self, range: Range, ipv6: bool) -> String {
        let raw = self.1;
        match (range, ipv6) {
            (Range::Service, false) => format!("10.96.0.{}", raw % 4),
            (Range::Pod, false) => format!("10.244.0.{}", raw % 8),
            (Range::External, false) => format!("203.0.113.{}", raw % 4),
            (Range::Service, true) => format!("fd00:96::{}", raw % 4),
            (Range::Pod, true) => format!("fd00:244::{}", raw % 8),
            (Range::External, true) => format!("2001:db8::{}", raw % 4),
        }
    }
}

fn texts(addresses: &[Address], range: Range) -> Value {
    addresses
        .iter()
        .map(|a| Value::from(a.text(range)))
        .collect()
}

/// A port number: usually a common one, sometimes zero, out of range or anything an
/// i32 holds.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct PortNumber(u8, i32);

impl PortNumber {
    fn value(self, common: &[i64]) -> i64 {
        const HOSTILE: &[i64] = &[0, 65535, 65536, -1];
        let PortNumber(how, raw) = self;
        match how {
            0..VALID_OF_256 => common[usize::from(how) % common.len()],
            _ if raw % 2 == 0 => HOSTILE[raw.unsigned_abs() as usize % HOSTILE.len()],
            _ => i64::from(raw),
        }
    }
}

const SERVICE_PORTS: &[i64] = &[80, 443, 53, 8080];
const TARGET_PORTS: &[i64] = &[8080, 5353, 80];
const NODE_PORTS: &[i64] = &[30080, 30081, 30082];

/// How many synthetic entries to add to a list: mostly none or a few, sometimes right
/// at or just past socklb's or the API server's limit for it (rarely: such lists make
/// a run a hundred times slower, and the fuzzer's time is better spent elsewhere).
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct Many(u8);

impl Many {
    fn count(self, limit: usize) -> usize {
        match self.0 {
            0..=239 => usize::from(self.0 % 4),
            240..=247 => limit,
            248..=255 => limit + 1,
        }
    }
}

#[derive(Arbitrary, Clone, Debug)]
pub struct ServicePortSpec {
    name: Pick,
    protocol: Option<Pick>,
    port: PortNumber,
    target_port: Option<TargetPort>,
    node_port: Option<PortNumber>,
}

#[derive(Arbitrary, Clone, Debug)]
pub enum TargetPort {
    Number(PortNumber),
    Name(Pick),
}

/// A v1 Service.
#[derive(Arbitrary, Clone, Debug)]
pub struct ServiceSpec {
    pub namespace: Pick,
    pub name: Pick,
    created: Option<Pick>,
    type_: Option<Pick>,
    cluster_ip: Usually<Address>,
    cluster_ips: Rare<Vec<Address>>,
    ip_families: Rare<Vec<Pick>>,
    ip_family_policy: Rare<Pick>,
    /// The first port; a Service without one is refused, and said so once is enough.
    port: ServicePortSpec,
    more_ports: Vec<ServicePortSpec>,
    /// Ports x0, x1, ... on 1, 2, ... (socklb takes at most 1 000).
    extra_ports: Many,
    external_ips: Rare<Vec<Address>>,
    extra_external_ips: Many,
    load_balancer_ips: Vec<Address>,
    source_ranges: Option<Vec<Pick>>,
    extra_source_ranges: Many,
    session_affinity: Option<Pick>,
    affinity_timeout: Rare<i32>,
    external_traffic_policy: Option<Pick>,
    internal_traffic_policy: Option<Pick>,
    health_check_node_port: Rare<PortNumber>,
    traffic_distribution: Rare<Pick>,
    other_proxy: Rare<()>,
    /// Write every field as picked, also where the API server refuses it for the
    /// Service's type (a nodePort on a ClusterIP Service, load balancer fields on a
    /// NodePort one) or in combination (unnamed or equally named ports). Without it
    /// such fields are left out or made unique: most Services are then valid and get
    /// as far as the maps.
    anything_goes: Rare<()>,
}

impl ServiceSpec {
    /// (namespace, name) as the sources key the object: no namespace is "default".
    pub fn key(&self) -> (String, String) {
        (
            namespace(self.namespace),
            self.name.of(SERVICE_NAMES).to_owned(),
        )
    }

    /// The ports as written (see `anything_goes`).
    pub fn ports(&self) -> impl Iterator<Item = &ServicePortSpec> {
        std::iter::once(&self.port).chain(&self.more_ports)
    }

    pub fn object(&self) -> Value {
        let (namespace, name) = (self.namespace.of(NAMESPACES), self.name.of(SERVICE_NAMES));
        let anything_goes = self.anything_goes.0.is_some();
        let type_ = self.type_.map(|t| t.of(SERVICE_TYPES));
        let load_balancer = type_ == Some("LoadBalancer") || anything_goes;
        let node_ports = matches!(type_, Some("NodePort" | "LoadBalancer")) || anything_goes;
        let mut spec = Map::new();
        if let Some(t) = type_ {
            spec.insert("type".into(), t.into());
        }
        if let Some(ip) = self.cluster_ip.0 {
            spec.insert("clusterIP".into(), ip.text(Range::Service).into());
        }
        if let Some(ips) = &self.cluster_ips.0 {
            spec.insert("clusterIPs".into(), texts(ips, Range::Service));
        }
        if let Some(families) = &self.ip_families.0 {
            let families: Vec<&str> = families.iter().map(|f| f.of(FAMILIES)).collect();
            spec.insert("ipFamilies".into(), json!(families));
        }
        if let Some(policy) = self.ip_family_policy.0 {
            spec.insert("ipFamilyPolicy".into(), policy.of(FAMILY_POLICIES).into());
        }
        let several = !self.more_ports.is_empty() || self.extra_ports.count(1000) > 0;
        let mut names = std::collections::BTreeSet::new();
        let mut ports: Vec<Value> = Vec::new();
        for (i, port) in self.ports().enumerate() {
            let mut out = service_port(port, node_ports);
            let name = out["name"].as_str().unwrap_or_default().to_owned();
            if !anything_goes && several && (name.is_empty() || !names.insert(name)) {
                out["name"] = format!("port{i}").into();
            }
            ports.push(out);
        }
        ports.extend((0..self.extra_ports.count(1000)).map(|i| {
            let mut out = json!({"name": format!("x{i}"), "port": 1 + i});
            if node_ports {
                out["nodePort"] = (30_000 + i).into();
            }
            out
        }));
        spec.insert("ports".into(), ports.into());
        let mut external: Vec<Value> = self
            .external_ips
            .0
            .iter()
            .flatten()
            .map(|a| a.text(Range::External).into())
            .collect();
        external.extend(
            (0..self.extra_external_ips.count(64)).map(|i| json!(format!("198.51.100.{}", i + 1))),
        );
        let externally_accessible = node_ports || !external.is_empty();
        spec.insert("externalIPs".into(), external.into());
        if load_balancer {
            let mut ranges: Vec<Value> = self
                .source_ranges
                .iter()
                .flatten()
                .map(|r| r.of(CIDRS).into())
                .collect();
            ranges.extend(
                (0..self.extra_source_ranges.count(1000))
                    .map(|i| json!(format!("10.{}.{}.0/24", i / 256, i % 256))),
            );
            spec.insert("loadBalancerSourceRanges".into(), ranges.into());
        }
        if let Some(affinity) = self.session_affinity {
            spec.insert("sessionAffinity".into(), affinity.of(AFFINITIES).into());
        }
        if let Some(timeout) = self.affinity_timeout.0 {
            spec.insert(
                "sessionAffinityConfig".into(),
                json!({"clientIP": {"timeoutSeconds": timeout}}),
            );
        }
        if let Some(policy) = self.external_traffic_policy
            && externally_accessible
        {
            spec.insert("externalTrafficPolicy".into(), policy.of(POLICIES).into());
        }
        if let Some(policy) = self.internal_traffic_policy {
            spec.insert("internalTrafficPolicy".into(), policy.of(POLICIES).into());
        }
        if let Some(port) = self.health_check_node_port.0
            && load_balancer
        {
            spec.insert("healthCheckNodePort".into(), port.value(NODE_PORTS).into());
        }
        if let Some(distribution) = self.traffic_distribution.0 {
            spec.insert(
                "trafficDistribution".into(),
                distribution.of(DISTRIBUTIONS).into(),
            );
        }
        let ingress: Vec<Value> = if load_balancer {
            self.load_balancer_ips
                .iter()
                .map(|ip| json!({"ip": ip.text(Range::External)}))
                .collect()
        } else {
            Vec::new()
        };
        let mut metadata = json!({});
        if let Some(created) = self.created {
            metadata["creationTimestamp"] = created.of(TIMES).into();
        }
        if self.other_proxy.0.is_some() {
            metadata["labels"] = json!({LABEL_SERVICE_PROXY_NAME: "other"});
        }
        let base = builders::service_object(namespace, name, "", &[]);
        let mut object = builders::merge(
            base,
            json!({
                "metadata": metadata,
                "status": {"loadBalancer": {"ingress": ingress}},
            }),
        );
        // Replaced, not merged: a Service may lack a cluster IP.
        object["spec"] = spec.into();
        object
    }
}

/// One port of a Service; `node_port` says whether its type has node ports.
fn service_port(port: &ServicePortSpec, node_port: bool) -> Value {
    let mut out = json!({"name": port.name.of(PORT_NAMES), "port": port.port.value(SERVICE_PORTS)});
    if let Some(protocol) = port.protocol {
        out["protocol"] = protocol.of(PROTOCOLS).into();
    }
    match port.target_port {
        Some(TargetPort::Number(n)) => out["targetPort"] = n.value(TARGET_PORTS).into(),
        Some(TargetPort::Name(name)) => out["targetPort"] = name.of(PORT_NAMES).into(),
        None => {}
    }
    if let Some(number) = port.node_port
        && node_port
    {
        out["nodePort"] = number.value(NODE_PORTS).into();
    }
    out
}

#[derive(Arbitrary, Clone, Debug)]
pub struct SlicePortSpec {
    name: Usually<Pick>,
    protocol: Option<Pick>,
    port: Usually<PortNumber>,
}

#[derive(Arbitrary, Clone, Debug)]
pub struct EndpointSpec {
    address: Usually<Address>,
    more_addresses: Rare<Vec<Address>>,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
    node_name: Option<Pick>,
    zone: Option<Pick>,
    for_zones: Rare<Vec<Pick>>,
    for_nodes: Rare<Vec<Pick>>,
}

/// A discovery.k8s.io/v1 EndpointSlice.
#[derive(Arbitrary, Clone, Debug)]
pub struct SliceSpec {
    pub namespace: Pick,
    pub name: Pick,
    /// The kubernetes.io/service-name label ("" when hostile: no Service).
    service: Pick,
    headless: Rare<()>,
    address_type: Pick,
    ports: Vec<SlicePortSpec>,
    /// Ports x0, ..., x7, q8, q9, ... (the API server takes at most 20 000): only the
    /// first eight are named like a Service's extra ports, so that a large Service and a large
    /// slice do not multiply into a million backends on every run.
    extra_ports: Many,
    endpoints: Vec<EndpointSpec>,
    /// Ready endpoints 10.244.x.y (at most 1 000 per slice).
    extra_endpoints: Many,
}

impl SliceSpec {
    /// (namespace, name) as the sources key the object: no namespace is "default".
    pub fn key(&self) -> (String, String) {
        self.key_of(None)
    }

    /// The key of [`Self::object_of`].
    pub fn key_of(&self, service: Option<&ServiceSpec>) -> (String, String) {
        let namespace_pick = service.map_or(self.namespace, |s| s.namespace);
        (
            namespace(namespace_pick),
            self.name.of(SLICE_NAMES).to_owned(),
        )
    }

    pub fn object(&self) -> Value {
        self.object_of(None)
    }

    /// The slice as one of `service`'s: its namespace, labelled with its name, and
    /// its ports named after the Service's where this spec leaves a name out (slices
    /// that match their Service are rare when everything is picked independently).
    pub fn object_of(&self, service: Option<&ServiceSpec>) -> Value {
        let namespace = service
            .map_or(self.namespace, |s| s.namespace)
            .of(NAMESPACES);
        let name = self.name.of(SLICE_NAMES);
        let service_name = service.map_or(self.service, |s| s.name).of(SERVICE_NAMES);
        let mut ports: Vec<Value> = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut out = json!({});
                let like_service = service.and_then(|s| s.ports().nth(i)).map(|sp| sp.name);
                if let Some(name) = p.name.0.or(like_service) {
                    out["name"] = name.of(PORT_NAMES).into();
                }
                if let Some(protocol) = p.protocol {
                    out["protocol"] = protocol.of(PROTOCOLS).into();
                }
                if let Some(port) = p.port.0 {
                    out["port"] = port.value(TARGET_PORTS).into();
                }
                out
            })
            .collect();
        ports.extend((0..self.extra_ports.count(20_000)).map(|i| {
            let name = if i < 8 {
                format!("x{i}")
            } else {
                format!("q{i}")
            };
            json!({"name": name, "port": 1 + i % 65_535})
        }));
        let address_type = self.address_type.of(ADDRESS_TYPES);
        let ipv6 = address_type == "IPv6";
        let mut endpoints: Vec<Value> = self.endpoints.iter().map(|e| endpoint(e, ipv6)).collect();
        endpoints.extend((0..self.extra_endpoints.count(1000)).map(|i| {
            let address = if ipv6 {
                format!("fd00:244:{}::{}", 1 + i / 250, 1 + i % 250)
            } else {
                format!("10.244.{}.{}", 1 + i / 250, 1 + i % 250)
            };
            json!({"addresses": [address]})
        }));
        let mut labels = Map::new();
        labels.insert(LABEL_SERVICE_NAME.into(), service_name.into());
        if self.headless.0.is_some() {
            labels.insert(LABEL_HEADLESS.into(), "".into());
        }
        let base = builders::slice_object(namespace, name, "", &[], &[]);
        let mut object = builders::merge(
            base,
            json!({
                "addressType": address_type,
                "ports": ports,
                "endpoints": endpoints,
            }),
        );
        object["metadata"]["labels"] = labels.into();
        object
    }
}

/// One endpoint of an IPv4 or (`ipv6`) IPv6 slice.
fn endpoint(spec: &EndpointSpec, ipv6: bool) -> Value {
    let mut addresses: Vec<Value> = spec
        .address
        .0
        .iter()
        .map(|a| a.text_in(Range::Pod, ipv6).into())
        .collect();
    if let Some(more) = &spec.more_addresses.0 {
        addresses.extend(
            more.iter()
                .map(|a| Value::from(a.text_in(Range::Pod, ipv6))),
        );
    }
    let mut out = json!({"addresses": addresses});
    let mut conditions = Map::new();
    for (name, value) in [
        ("ready", spec.ready),
        ("serving", spec.serving),
        ("terminating", spec.terminating),
    ] {
        if let Some(value) = value {
            conditions.insert(name.into(), value.into());
        }
    }
    out["conditions"] = conditions.into();
    if let Some(node) = spec.node_name {
        out["nodeName"] = node.of(NODE_NAMES).into();
    }
    if let Some(zone) = spec.zone {
        out["zone"] = zone.of(ZONES).into();
    }
    let mut hints = Map::new();
    if let Some(zones) = &spec.for_zones.0 {
        let zones: Vec<Value> = zones.iter().map(|z| json!({"name": z.of(ZONES)})).collect();
        hints.insert("forZones".into(), zones.into());
    }
    if let Some(nodes) = &spec.for_nodes.0 {
        let nodes: Vec<Value> = nodes
            .iter()
            .map(|n| json!({"name": n.of(NODE_NAMES)}))
            .collect();
        hints.insert("forNodes".into(), nodes.into());
    }
    if !hints.is_empty() {
        out["hints"] = hints.into();
    }
    out
}

/// A v1 Node.
#[derive(Arbitrary, Clone, Debug)]
pub struct NodeSpec {
    pub name: Pick,
    zone: Option<Pick>,
}

impl NodeSpec {
    pub fn name(&self) -> &'static str {
        self.name.of(NODE_NAMES)
    }

    pub fn object(&self) -> Value {
        let mut labels = Map::new();
        if let Some(zone) = self.zone {
            labels.insert(LABEL_TOPOLOGY_ZONE.into(), zone.of(ZONES).into());
        }
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name(), "labels": labels},
        })
    }
}
