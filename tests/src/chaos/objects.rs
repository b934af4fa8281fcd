//! The chaos run's Services and EndpointSlices: the stable ones the clients use, and
//! the churn around them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use rand::{Rng, rngs::StdRng, seq::IndexedRandom};
use serde_json::{Value, json};
use socklb_core::builders;

use crate::tempdir::ManifestDir;

const NS: &str = "chaos";
/// The stable services' cluster IPs, ports and NodePorts.
pub const WEB_IP: &str = "10.96.0.10";
pub const WEB_PORT: u16 = 80;
pub const WEB_NODE_PORT: u16 = 30080;
pub const DNS_IP: &str = "10.96.0.53";
pub const DNS_PORT: u16 = 53;
pub const DNS_NODE_PORT: u16 = 30053;
/// What the stable services' pods serve.
pub const WEB_TARGET: u16 = 8080;
pub const DNS_TARGET: u16 = 5353;
/// The first NodePort of the bulk services (100 per file at most).
const BULK_NODE_PORT: u16 = 31000;

/// The objects that change, and what they are now.
pub struct Churn {
    /// web's and dns's pods: the first two always in their slice, the third coming
    /// and going.
    pub web_pods: [Ipv4Addr; 3],
    pub dns_pods: [Ipv4Addr; 3],
    /// The `nodeName` of the pods' endpoints (the agent's node: local backends).
    pub node: Option<String>,
    /// Whether web, dns and one bulk service in ten are NodePorts (TC path).
    pub node_ports: bool,
    web_third: bool,
    dns_third: bool,
    /// Last octets of the affinity service's endpoints (10.245.250.x).
    aff: Vec<u8>,
    /// Whether the service without endpoints exists.
    empty: bool,
    /// Which bulk files exist.
    bulk: Vec<bool>,
    pub services_per_file: usize,
    pub endpoints_per_service: usize,
}

/// A created Service keeps its age: rivals on its addresses would lose to it.
fn created(svc: Value) -> Value {
    builders::merge(
        svc,
        json!({"metadata": {"creationTimestamp": "2025-01-01T00:00:00Z"}}),
    )
}

fn on_off(on: bool) -> &'static str {
    if on { "in" } else { "out" }
}

pub fn bulk_file(k: usize) -> String {
    format!("bulk-{k}.yaml")
}

impl Churn {
    pub fn new(
        web_pods: [Ipv4Addr; 3],
        dns_pods: [Ipv4Addr; 3],
        node: Option<String>,
        node_ports: bool,
        bulk_files: usize,
        services_per_file: usize,
        endpoints_per_service: usize,
    ) -> Churn {
        Churn {
            web_pods,
            dns_pods,
            node,
            node_ports,
            web_third: true,
            dns_third: true,
            aff: vec![1, 2, 3],
            empty: false,
            bulk: vec![false; bulk_files.max(1)],
            services_per_file: services_per_file.max(1),
            endpoints_per_service: endpoints_per_service.clamp(1, 200),
        }
    }

    pub fn bulk_files(&self) -> usize {
        self.bulk.len()
    }

    /// An EndpointSlice of `svc` with these endpoints (ready), each on `node` when
    /// given.
    fn slice(&self, name: &str, svc: &str, ports: &[(&str, &str, u16)], eps: &[Endpoint]) -> Value {
        let endpoints: Vec<Value> = eps
            .iter()
            .map(|e| match &e.node {
                Some(node) => json!({"addresses": [e.address], "nodeName": node}),
                None => json!({"addresses": [e.address]}),
            })
            .collect();
        builders::merge(
            builders::slice_object(NS, name, svc, ports, &[]),
            json!({ "endpoints": endpoints }),
        )
    }

    /// A Service on `ip` with one port, a NodePort when `node_port` is given.
    fn service(name: &str, ip: &str, ports: &[(&str, &str, u16, Option<u16>)]) -> Value {
        let plain: Vec<(&str, &str, u16)> = ports.iter().map(|p| (p.0, p.1, p.2)).collect();
        let svc = builders::service_object(NS, name, ip, &plain);
        if ports.iter().all(|p| p.3.is_none()) {
            return svc;
        }
        let ports: Vec<Value> = ports
            .iter()
            .map(|(name, protocol, port, node_port)| {
                let mut p = json!({"name": name, "protocol": protocol, "port": port});
                if let Some(np) = node_port {
                    p["nodePort"] = json!(np);
                }
                p
            })
            .collect();
        builders::merge(svc, json!({"spec": {"type": "NodePort", "ports": ports}}))
    }

    fn pods(&self, all: &[Ipv4Addr; 3], third: bool) -> Vec<Endpoint> {
        all.iter()
            .take(if third { 3 } else { 2 })
            .map(|ip| Endpoint {
                address: ip.to_string(),
                node: self.node.clone(),
            })
            .collect()
    }

    pub fn web(&self) -> String {
        let np = self.node_ports.then_some(WEB_NODE_PORT);
        let svc = Self::service("web", WEB_IP, &[("http", "TCP", WEB_PORT, np)]);
        let eps = self.pods(&self.web_pods, self.web_third);
        let slice = self.slice("web-1", "web", &[("http", "TCP", WEB_TARGET)], &eps);
        builders::manifest_text(&[created(svc), slice])
    }

    pub fn dns(&self) -> String {
        let np = self.node_ports.then_some(DNS_NODE_PORT);
        let svc = Self::service("dns", DNS_IP, &[("dns", "UDP", DNS_PORT, np)]);
        let eps = self.pods(&self.dns_pods, self.dns_third);
        let slice = self.slice("dns-1", "dns", &[("dns", "UDP", DNS_TARGET)], &eps);
        builders::manifest_text(&[created(svc), slice])
    }

    pub fn aff(&self) -> String {
        let svc = builders::merge(
            builders::service_object(NS, "aff", "10.96.0.30", &[("http", "TCP", 80)]),
            json!({"spec": {"sessionAffinity": "ClientIP"}}),
        );
        let eps: Vec<Endpoint> = self
            .aff
            .iter()
            .map(|o| Endpoint::remote(format!("10.245.250.{o}")))
            .collect();
        let slice = self.slice("aff-1", "aff", &[("http", "TCP", 8080)], &eps);
        builders::manifest_text(&[svc, slice])
    }

    fn empty(&self) -> String {
        builders::manifest_text(&[builders::service_object(
            NS,
            "empty",
            "10.96.0.99",
            &[("http", "TCP", 80)],
        )])
    }

    /// Bulk file `k`: services `bulk-K-I` on 10.(100+K).x.y, every fourth with a UDP
    /// port too and (with NodePorts) one in ten of the first thousand a NodePort, each
    /// with random endpoints in 10.245.K.0/24; about one in twenty also has web's
    /// first backend, so backends are shared with a service in use.
    pub fn bulk_text(&self, k: usize, rng: &mut StdRng) -> String {
        let mut objects = Vec::with_capacity(self.services_per_file * 2);
        for i in 0..self.services_per_file {
            let name = format!("bulk-{k}-{i}");
            let ip = format!("10.{}.{}.{}", 100 + k, i / 250, 1 + i % 250);
            let node_port = (self.node_ports && i % 10 == 0 && i < 1000)
                .then(|| BULK_NODE_PORT + (k * 100 + i / 10) as u16);
            let mut ports = vec![("http", "TCP", 80u16, node_port)];
            let mut target = vec![("http", "TCP", WEB_TARGET)];
            if i % 4 == 0 {
                ports.push(("dns", "UDP", 53, None));
                target.push(("dns", "UDP", DNS_TARGET));
            }
            objects.push(Self::service(&name, &ip, &ports));
            let mut octets: BTreeSet<u8> = BTreeSet::new();
            while octets.len() < self.endpoints_per_service {
                octets.insert(rng.random_range(1..=250));
            }
            let mut eps: Vec<Endpoint> = octets
                .iter()
                .map(|o| Endpoint::remote(format!("10.245.{k}.{o}")))
                .collect();
            if rng.random_ratio(1, 20) {
                eps[0] = Endpoint {
                    address: self.web_pods[0].to_string(),
                    node: self.node.clone(),
                };
            }
            objects.push(self.slice(&format!("{name}-1"), &name, &target, &eps));
        }
        builders::manifest_text(&objects)
    }

    /// The files the topology starts from: the stable services (whose endpoints get
    /// pods).
    pub fn initial(&self, dir: &ManifestDir) -> Result<()> {
        dir.write("web.yaml", &self.web())?;
        dir.write("dns.yaml", &self.dns())
    }

    /// Adds bulk file `k` (calibration).
    pub fn add_bulk(&mut self, k: usize, dir: &ManifestDir, rng: &mut StdRng) -> Result<()> {
        self.bulk[k] = true;
        dir.write(&bulk_file(k), &self.bulk_text(k, rng))
    }

    /// Writes `n` random changes, each to another file (two changes of one file could
    /// cancel out); returns what they were.
    pub fn changes(&mut self, n: usize, dir: &ManifestDir, rng: &mut StdRng) -> Result<String> {
        let mut touched = BTreeSet::new();
        let mut done = Vec::new();
        while done.len() < n {
            let (file, what) = self.change(dir, rng, &touched)?;
            touched.insert(file);
            done.push(what);
        }
        Ok(done.join(", "))
    }

    /// Writes one random change to a file not in `touched`; returns the file and what
    /// the change was. Bulk changes weigh most (they make syncs long), then the
    /// stable services' third endpoints (changes of services in use).
    fn change(
        &mut self,
        dir: &ManifestDir,
        rng: &mut StdRng,
        touched: &BTreeSet<String>,
    ) -> Result<(String, String)> {
        let free = |f: &str| !touched.contains(f);
        let bulk_free: Vec<usize> = (0..self.bulk.len())
            .filter(|k| free(&bulk_file(*k)))
            .collect();
        let mut choices: Vec<Change> = Vec::new();
        for (what, file, weight) in [
            (Change::Web, "web.yaml", 2),
            (Change::Dns, "dns.yaml", 2),
            (Change::Aff, "aff.yaml", 1),
            (Change::Empty, "empty.yaml", 1),
        ] {
            if free(file) {
                choices.extend(std::iter::repeat_n(what, weight));
            }
        }
        if !bulk_free.is_empty() {
            choices.extend([Change::BulkToggle; 3]);
            choices.extend([Change::BulkRewrite; 3]);
        }
        let what = *choices.choose(rng).context("every file changed already")?;
        Ok(match what {
            Change::Web => {
                self.web_third = !self.web_third;
                dir.write("web.yaml", &self.web())?;
                (
                    "web.yaml".into(),
                    format!("web third endpoint {}", on_off(self.web_third)),
                )
            }
            Change::Dns => {
                self.dns_third = !self.dns_third;
                dir.write("dns.yaml", &self.dns())?;
                (
                    "dns.yaml".into(),
                    format!("dns third endpoint {}", on_off(self.dns_third)),
                )
            }
            Change::Aff => {
                let n = rng.random_range(1..=4);
                let mut set = BTreeSet::new();
                while set.len() < n {
                    set.insert(rng.random_range(1..=20u8));
                }
                self.aff = set.into_iter().collect();
                dir.write("aff.yaml", &self.aff())?;
                ("aff.yaml".into(), format!("aff endpoints {:?}", self.aff))
            }
            Change::Empty => {
                self.empty = !self.empty;
                if self.empty {
                    dir.write("empty.yaml", &self.empty())?;
                } else {
                    dir.remove("empty.yaml")?;
                }
                (
                    "empty.yaml".into(),
                    format!("service without endpoints {}", on_off(self.empty)),
                )
            }
            Change::BulkToggle | Change::BulkRewrite => {
                let k = *bulk_free.choose(rng).context("no bulk file left")?;
                let file = bulk_file(k);
                let what = if what == Change::BulkToggle || !self.bulk[k] {
                    self.bulk[k] = !self.bulk[k];
                    if self.bulk[k] {
                        dir.write(&file, &self.bulk_text(k, rng))?;
                        format!("bulk-{k} added")
                    } else {
                        dir.remove(&file)?;
                        format!("bulk-{k} removed")
                    }
                } else {
                    dir.write(&file, &self.bulk_text(k, rng))?;
                    format!("bulk-{k} new endpoints")
                };
                (file, what)
            }
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Web,
    Dns,
    Aff,
    Empty,
    BulkToggle,
    BulkRewrite,
}

/// One endpoint of a slice.
struct Endpoint {
    address: String,
    node: Option<String>,
}

impl Endpoint {
    /// An address on no node (no pod: only the maps have it).
    fn remote(address: String) -> Endpoint {
        Endpoint {
            address,
            node: None,
        }
    }
}
