//! The synthetic cluster every benchmark mode is generated from: N services, each with
//! one TCP port (and the measured ones also a UDP port) and E endpoints.
//!
//! Addresses:
//! - cluster IPs: 10.96.0.0/16, service i at 10.96.0.0 + 1 + i (only ever used inside the
//!   benchmark's own network namespaces);
//! - the measured services (the first and the last of the list) have the real pods of the
//!   sandbox as endpoints (10.244.1.1 ...);
//! - every other endpoint is an address that exists only in the rules and the maps,
//!   in 10.224.0.0/12 (never routed anywhere, never contacted);
//! - the cluster CIDR (kube-proxy's `--cluster-cidr`) is 10.224.0.0/11, which holds
//!   both, and the client namespaces' own addresses (10.244.255.x): service traffic from
//!   them is not masqueraded, the cheapest path for kube-proxy's rules.

use std::net::Ipv4Addr;

/// The namespace of every synthetic service.
pub const NAMESPACE: &str = "bench";
/// The service CIDR (kube-proxy's `--service-cluster-ip-range`).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// kube-proxy's `--cluster-cidr` for the generated rules.
pub const CLUSTER_CIDR: &str = "10.224.0.0/11";
/// Service TCP port, its name, and the pods' port.
pub const TCP_PORT: u16 = 80;
pub const TCP_PORT_NAME: &str = "http";
pub const TCP_TARGET: u16 = 8080;
/// Service UDP port (measured services only), its name, and the pods' port.
pub const UDP_PORT: u16 = 53;
pub const UDP_PORT_NAME: &str = "dns";
pub const UDP_TARGET: u16 = 5353;
/// Most services the address plan supports (cluster IPs in one /16).
pub const MAX_SERVICES: usize = 60_000;
/// The node every benchmark agent runs as (endpoints of NodePort clusters are on it).
pub const NODE_NAME: &str = "bench-node";

const VIP_BASE: u32 = 0x0a60_0000; // 10.96.0.0
const FAKE_BASE: u32 = 0x0ae0_0000; // 10.224.0.0
const POD_NET: u32 = 0x0af4_0000; // 10.244.0.0, the sandbox's pod network
/// Addresses per endpoint slot (see [`Change`]).
const ALTERNATES: u32 = 4;

/// L4 protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// iptables / nft spelling.
    pub fn lower(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
    /// Kubernetes' spelling.
    pub fn upper(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

/// One service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub name: &'static str,
    pub proto: Proto,
    pub port: u16,
    pub target: u16,
}

pub const TCP: PortSpec = PortSpec {
    name: TCP_PORT_NAME,
    proto: Proto::Tcp,
    port: TCP_PORT,
    target: TCP_TARGET,
};
pub const UDP: PortSpec = PortSpec {
    name: UDP_PORT_NAME,
    proto: Proto::Udp,
    port: UDP_PORT,
    target: UDP_TARGET,
};

/// One endpoint change: endpoint 0 of `service` moves to its generation-`generation`
/// address. Four addresses take turns: generations 0, 4, 8, ... are the original one,
/// so a chain made stale by one change is never the one the next change needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub service: usize,
    pub generation: u32,
}

/// N services with E endpoints each.
#[derive(Clone, Debug)]
pub struct SynthCluster {
    pub services: usize,
    pub endpoints: usize,
    /// Endpoints of the measured services (the sandbox's real pods).
    pub real_pods: Vec<Ipv4Addr>,
    /// NodePort services (the NodePort measurement): service i gets NodePort `base + i`
    /// on each of its ports, and its endpoints are on [`NODE_NAME`]. None: ClusterIP
    /// services.
    pub node_port_base: Option<u16>,
}

impl SynthCluster {
    pub fn new(services: usize, endpoints: usize, real_pods: Vec<Ipv4Addr>) -> Self {
        assert!(
            (1..=MAX_SERVICES).contains(&services),
            "1..={MAX_SERVICES} services"
        );
        assert!(
            (1..=1000).contains(&endpoints),
            "1..=1000 endpoints per service"
        );
        assert!(!real_pods.is_empty(), "at least one real pod");
        // The fake endpoints (and their alternates) stay below the sandbox's 10.244.0.0/16.
        assert!(
            (services * endpoints) as u64 * u64::from(ALTERNATES) + 1
                < u64::from(POD_NET - FAKE_BASE),
            "{services} services x {endpoints} endpoints do not fit the address plan"
        );
        Self {
            services,
            endpoints,
            real_pods,
            node_port_base: None,
        }
    }

    /// The same cluster with NodePort services: service i on NodePort `base + i`
    /// (a range wider than the default 30000-32767, as `--service-node-port-range`
    /// allows, so that 10 000 services fit).
    pub fn with_node_ports(mut self, base: u16) -> Self {
        assert!(
            usize::from(base) + self.services <= usize::from(u16::MAX),
            "{} NodePorts from {base} do not fit in the port space",
            self.services
        );
        self.node_port_base = Some(base);
        self
    }

    /// Service i's NodePort, if the cluster has them.
    pub fn node_port(&self, i: usize) -> Option<u16> {
        self.node_port_base.map(|base| base + i as u16)
    }

    /// The first service of the list (first in KUBE-SERVICES).
    pub fn first(&self) -> usize {
        0
    }

    /// The last service of the list (last in KUBE-SERVICES: kube-proxy's worst case).
    pub fn last(&self) -> usize {
        self.services - 1
    }

    /// Whether service i has real pods behind it (and a UDP port).
    pub fn measured(&self, i: usize) -> bool {
        i == self.first() || i == self.last()
    }

    /// The service whose endpoint the control-plane benchmarks change (never a measured
    /// one, unless N is 1 or 2).
    pub fn changing(&self) -> usize {
        self.services / 2
    }

    pub fn name(&self, i: usize) -> String {
        format!("svc-{i:05}")
    }

    /// `bench/svc-00042`.
    pub fn key(&self, i: usize) -> String {
        format!("{NAMESPACE}/{}", self.name(i))
    }

    pub fn vip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::from(VIP_BASE + 1 + i as u32)
    }

    pub fn ports(&self, i: usize) -> &'static [PortSpec] {
        if self.measured(i) {
            &[TCP, UDP]
        } else {
            &[TCP]
        }
    }

    /// Endpoint e of service i under `change` (None: original addresses).
    pub fn endpoint(&self, i: usize, e: usize, change: Option<Change>) -> Ipv4Addr {
        let generation = match change {
            Some(c) if c.service == i && e == 0 => c.generation % ALTERNATES,
            _ => 0,
        };
        if self.measured(i) && generation == 0 {
            return self.real_pods[e % self.real_pods.len()];
        }
        // Four addresses per (service, endpoint) slot: the original and its alternates.
        let slot = (i * self.endpoints + e) as u32;
        Ipv4Addr::from(FAKE_BASE + 1 + slot * ALTERNATES + generation)
    }

    /// All endpoints of service i, in order, deduplicated (a measured service with
    /// more endpoints than real pods lists each pod once).
    pub fn endpoints_of(&self, i: usize, change: Option<Change>) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = Vec::with_capacity(self.endpoints);
        for e in 0..self.endpoints {
            let a = self.endpoint(i, e, change);
            if !v.contains(&a) {
                v.push(a);
            }
        }
        v
    }

    /// Total endpoint count (what the agent, the rules and the maps hold).
    pub fn total_endpoints(&self) -> usize {
        (0..self.services)
            .map(|i| {
                if self.measured(i) {
                    self.endpoints_of(i, None).len()
                } else {
                    self.endpoints
                }
            })
            .sum()
    }
}

/// A short hash of `s` in kube-proxy's chain-name alphabet (base32, upper case).
/// kube-proxy uses SHA-256; any well-mixed hash of the same length gives chain names
/// of the same length, which is all that matters to the tools that load them.
pub fn hash32(s: &str, len: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(len);
    let mut round = 0u64;
    while out.len() < len {
        // FNV-1a 64, seeded per round.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for b in s.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Finalizer (splitmix64) so that every 5-bit group is well mixed.
        h ^= h >> 30;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 27;
        h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        for k in 0..12 {
            if out.len() == len {
                break;
            }
            out.push(ALPHABET[((h >> (k * 5)) & 31) as usize] as char);
        }
        round += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<Ipv4Addr> {
        (1..=10).map(|i| Ipv4Addr::new(10, 244, 1, i)).collect()
    }

    #[test]
    fn addresses() {
        let c = SynthCluster::new(10_000, 10, pods());
        assert_eq!(c.vip(0), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(c.vip(9_999), Ipv4Addr::new(10, 96, 39, 16));
        assert_eq!(c.endpoint(0, 3, None), Ipv4Addr::new(10, 244, 1, 4));
        assert_eq!(c.endpoint(9_999, 0, None), Ipv4Addr::new(10, 244, 1, 1));
        let fake = c.endpoint(5, 0, None);
        let moved = c.endpoint(
            5,
            0,
            Some(Change {
                service: 5,
                generation: 1,
            }),
        );
        assert_ne!(fake, moved);
        assert_ne!(
            c.endpoint(
                5,
                0,
                Some(Change {
                    service: 5,
                    generation: 2
                })
            ),
            moved
        );
        assert_eq!(
            c.endpoint(
                5,
                0,
                Some(Change {
                    service: 5,
                    generation: 4
                })
            ),
            fake
        );
        assert_eq!(
            c.endpoint(
                0,
                0,
                Some(Change {
                    service: 0,
                    generation: 8
                })
            ),
            Ipv4Addr::new(10, 244, 1, 1)
        );
        assert_eq!(
            c.endpoint(
                5,
                1,
                Some(Change {
                    service: 5,
                    generation: 1
                })
            ),
            c.endpoint(5, 1, None)
        );
        // The fake range never reaches the sandbox's pod network.
        let top = c.endpoint(
            9_998,
            9,
            Some(Change {
                service: 9_998,
                generation: 3,
            }),
        );
        assert!(u32::from(top) < u32::from(Ipv4Addr::new(10, 244, 0, 0)));
        let c30 = SynthCluster::new(30_000, 10, pods());
        let top = c30.endpoint(
            29_998,
            9,
            Some(Change {
                service: 29_998,
                generation: 3,
            }),
        );
        assert!(u32::from(top) < u32::from(Ipv4Addr::new(10, 244, 0, 0)));
        assert_eq!(c.total_endpoints(), 100_000);
        assert_eq!(c.ports(0).len(), 2);
        assert_eq!(c.ports(1).len(), 1);
    }

    #[test]
    fn hashes_are_stable_and_sized() {
        assert_eq!(hash32("a", 16).len(), 16);
        assert_eq!(hash32("a", 16), hash32("a", 16));
        assert_ne!(hash32("a", 16), hash32("b", 16));
        assert!(
            hash32("x", 8)
                .bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        );
    }
}
