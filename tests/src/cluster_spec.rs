//! The cluster a test or the demo builds, read from a directory of Service and
//! EndpointSlice manifests: pod addresses and their ports (the sandbox), and the
//! service addresses to probe.
//!
//! This is deliberately independent of the agent's own reading of manifest files
//! (socklb's `sources::manifest_files` and socklb_core's `model`): it reads YAML into
//! `serde_json::Value` and takes only a few fields, so a bug in the agent's parser is
//! not mirrored here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

/// L4 protocol of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Kubernetes' spelling; a missing protocol means TCP.
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// A Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name ("" when unnamed).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// The parts of a Service the sandbox uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// None for headless services (`clusterIP: None`) or when unset.
    pub cluster_ip: Option<IpAddr>,
    pub ports: Vec<ServicePort>,
}

impl Service {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// An EndpointSlice port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// An EndpointSlice endpoint (its first address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// The pod: its IPv4 address, also for an IPv6 slice (the IPv4 address the IPv6
    /// twin stands for, see [`crate::family`]): every sandbox pod has both.
    pub address: Ipv4Addr,
    /// `conditions.ready`; a missing value means ready.
    pub ready: bool,
    pub node_name: Option<String>,
}

/// The parts of an EndpointSlice the sandbox uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    pub namespace: String,
    pub name: String,
    /// The `kubernetes.io/service-name` label.
    pub service: String,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// Ports a pod address serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodPorts {
    pub tcp: BTreeSet<u16>,
    pub udp: BTreeSet<u16>,
}

/// What a manifests directory holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterSpec {
    pub services: Vec<Service>,
    pub slices: Vec<Slice>,
}

/// Reads every `*.yaml`/`*.yml`/`*.json` file of `dir` (multi-document files and `List`
/// objects included) and keeps Services and IPv4 EndpointSlices.
pub fn read_cluster_spec(dir: &Path) -> Result<ClusterSpec> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read manifests directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let hidden = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            let ext = p
                .extension()
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_default();
            !hidden && p.is_file() && matches!(ext.as_str(), "yaml" | "yml" | "json")
        })
        .collect();
    files.sort();
    let mut m = ClusterSpec::default();
    for f in files {
        // Broken files are the agent's business (it warns and skips them); the
        // sandbox only needs the pods of whatever it can read.
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        m.add_yaml_lenient(&text);
    }
    Ok(m)
}

impl ClusterSpec {
    /// Like [`ClusterSpec::add_yaml`], skipping documents and objects it cannot read.
    pub fn add_yaml_lenient(&mut self, text: &str) {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let Ok(v) = Value::deserialize(doc) else {
                return;
            };
            match v.get("kind").and_then(Value::as_str) {
                Some("List" | "ServiceList" | "EndpointSliceList") => {
                    for item in v
                        .get("items")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let _ = self.add_object(item);
                    }
                }
                _ => {
                    let _ = self.add_object(&v);
                }
            }
        }
    }

    /// Parses YAML text (one or more documents) and adds its Services and slices.
    pub fn add_yaml(&mut self, text: &str) -> Result<()> {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let v = Value::deserialize(doc)?;
            self.add_object(&v)?;
        }
        Ok(())
    }

    fn add_object(&mut self, v: &Value) -> Result<()> {
        match v.get("kind").and_then(Value::as_str) {
            Some("List") | Some("ServiceList") | Some("EndpointSliceList") => {
                for item in v
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    self.add_object(item)?;
                }
            }
            Some("Service") => self.services.push(parse_service(v)?),
            Some("EndpointSlice") => {
                if let Some(s) = parse_slice(v)? {
                    self.slices.push(s);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The service of `namespace/name`.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
    }

    /// Slices of a service.
    pub fn slices_of<'a>(&'a self, svc: &'a Service) -> impl Iterator<Item = &'a Slice> + 'a {
        self.slices
            .iter()
            .filter(move |s| s.namespace == svc.namespace && s.service == svc.name)
    }

    /// Ready endpoints (address, target port) of one service port, by port name and
    /// protocol as Kubernetes matches them.
    pub fn endpoints_for(&self, svc: &Service, port: &ServicePort) -> Vec<(Ipv4Addr, u16)> {
        let mut out = BTreeSet::new();
        for slice in self.slices_of(svc) {
            let Some(sp) = slice
                .ports
                .iter()
                .find(|p| p.name == port.name && p.protocol == port.protocol)
            else {
                continue;
            };
            for ep in slice.endpoints.iter().filter(|e| e.ready) {
                out.insert((ep.address, sp.port));
            }
        }
        out.into_iter().collect()
    }

    /// Every endpoint address with every port it has in the slices (what a pod at that
    /// address must serve).
    pub fn pod_ports(&self) -> BTreeMap<Ipv4Addr, PodPorts> {
        let mut out: BTreeMap<Ipv4Addr, PodPorts> = BTreeMap::new();
        for slice in &self.slices {
            for ep in &slice.endpoints {
                let pp = out.entry(ep.address).or_default();
                for p in &slice.ports {
                    match p.protocol {
                        Protocol::Tcp => pp.tcp.insert(p.port),
                        Protocol::Udp => pp.udp.insert(p.port),
                    };
                }
            }
        }
        out
    }

    /// The node name most endpoints are on (None when no endpoint names one).
    pub fn busiest_node(&self) -> Option<String> {
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for ep in self.slices.iter().flat_map(|s| &s.endpoints) {
            if let Some(n) = &ep.node_name {
                *count.entry(n).or_default() += 1;
            }
        }
        count
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
            .map(|(n, _)| n.to_string())
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn port_number(v: &Value, what: &str) -> Result<u16> {
    let n = v
        .get("port")
        .and_then(Value::as_u64)
        .with_context(|| format!("{what}: no port"))?;
    match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(p),
        _ => bail!("{what}: bad port {n}"),
    }
}

fn parse_service(v: &Value) -> Result<Service> {
    let name = str_at(v, &["metadata", "name"]).context("Service without metadata.name")?;
    let namespace = str_at(v, &["metadata", "namespace"]).unwrap_or("default");
    let what = format!("Service {namespace}/{name}");
    let cluster_ip = match str_at(v, &["spec", "clusterIP"]) {
        None | Some("None") | Some("") => None,
        Some(ip) => Some(
            ip.parse()
                .with_context(|| format!("{what}: bad clusterIP {ip}"))?,
        ),
    };
    let mut ports = Vec::new();
    for p in v
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let protocol = Protocol::parse(p.get("protocol").and_then(Value::as_str))
            .with_context(|| format!("{what}: unsupported protocol"))?;
        ports.push(ServicePort {
            name: p
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            protocol,
            port: port_number(p, &what)?,
        });
    }
    Ok(Service {
        namespace: namespace.into(),
        name: name.into(),
        cluster_ip,
        ports,
    })
}

fn parse_slice(v: &Value) -> Result<Option<Slice>> {
    let name = str_at(v, &["metadata", "name"]).context("EndpointSlice without metadata.name")?;
    let namespace = str_at(v, &["metadata", "namespace"]).unwrap_or("default");
    let what = format!("EndpointSlice {namespace}/{name}");
    if !matches!(
        v.get("addressType")
            .and_then(Value::as_str)
            .unwrap_or("IPv4"),
        "IPv4" | "IPv6"
    ) {
        return Ok(None);
    }
    let service = v
        .pointer("/metadata/labels/kubernetes.io~1service-name")
        .and_then(Value::as_str)
        .with_context(|| format!("{what}: no kubernetes.io/service-name label"))?;
    let mut ports = Vec::new();
    for p in v
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let protocol = Protocol::parse(p.get("protocol").and_then(Value::as_str))
            .with_context(|| format!("{what}: unsupported protocol"))?;
        ports.push(SlicePort {
            name: p
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            protocol,
            port: port_number(p, &what)?,
        });
    }
    let mut endpoints = Vec::new();
    for e in v
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(addr) = e.pointer("/addresses/0").and_then(Value::as_str) else {
            continue;
        };
        let address = addr
            .parse()
            .ok()
            .and_then(crate::family::pod_key)
            .with_context(|| {
                format!("{what}: {addr} is not a test address (IPv4, or the IPv6 twin of one)")
            })?;
        let ready = e
            .pointer("/conditions/ready")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let node_name = e
            .get("nodeName")
            .and_then(Value::as_str)
            .map(str::to_string);
        endpoints.push(SliceEndpoint {
            address,
            ready,
            node_name,
        });
    }
    Ok(Some(Slice {
        namespace: namespace.into(),
        name: name.into(),
        service: service.into(),
        ports,
        endpoints,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const YAML: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: [10.244.1.10]
  conditions: {ready: true}
  nodeName: node-a
- addresses: [10.244.1.11]
  nodeName: node-a
- addresses: [10.244.2.10]
  conditions: {ready: false}
  nodeName: node-b
---
kind: List
items:
- kind: Service
  metadata: {name: empty}
  spec: {clusterIP: 10.96.0.99, ports: [{port: 80}]}
- kind: ConfigMap
  metadata: {name: ignored}
"#;

    #[test]
    fn reads_services_and_slices() {
        let mut m = ClusterSpec::default();
        m.add_yaml(YAML).unwrap();
        assert_eq!(m.services.len(), 2);
        let web = m.service("demo", "web").unwrap();
        assert_eq!(web.cluster_ip, Some(Ipv4Addr::new(10, 96, 0, 10).into()));
        assert_eq!(web.ports[1].protocol, Protocol::Udp);
        let empty = m.service("default", "empty").unwrap();
        assert_eq!(empty.ports[0].protocol, Protocol::Tcp);
        assert!(m.endpoints_for(empty, &empty.ports[0]).is_empty());
        assert_eq!(
            m.endpoints_for(web, &web.ports[0]),
            vec![
                (Ipv4Addr::new(10, 244, 1, 10), 8080),
                (Ipv4Addr::new(10, 244, 1, 11), 8080)
            ]
        );
        assert_eq!(m.endpoints_for(web, &web.ports[1]).len(), 2);
    }

    #[test]
    fn pod_ports_cover_every_endpoint_address() {
        let mut m = ClusterSpec::default();
        m.add_yaml(YAML).unwrap();
        let pp = m.pod_ports();
        assert_eq!(pp.len(), 3);
        let p = &pp[&Ipv4Addr::new(10, 244, 2, 10)];
        assert_eq!(p.tcp.iter().copied().collect::<Vec<_>>(), vec![8080]);
        assert_eq!(p.udp.iter().copied().collect::<Vec<_>>(), vec![5353]);
        assert_eq!(m.busiest_node().as_deref(), Some("node-a"));
    }

    #[test]
    fn rejects_bad_input() {
        let mut m = ClusterSpec::default();
        assert!(
            m.add_yaml("kind: Service\nmetadata: {name: x}\nspec: {clusterIP: nope}\n")
                .is_err()
        );
        assert!(
            m.add_yaml("kind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 70000}]}\n")
                .is_err()
        );
    }
}
