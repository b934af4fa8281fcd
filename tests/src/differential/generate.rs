//! The generator: random Services and their EndpointSlices, seeded and reproducible.
//!
//! Services live in numbered slots (`svc-<slot>` in namespace [`NS`], one manifest file
//! per slot). A slot keeps its addresses and NodePorts for the whole run, so the
//! services of one round never collide, and rewriting a slot in a later round is an
//! update of the same Service as the agent sees it (slot-stable diff, backends shared
//! with other slots, affinity entries left by the earlier version). Each round
//! regenerates some slots entirely, gives others new endpoints only, empties a few and
//! leaves the rest alone.
//!
//! Every address the generator hands out comes from [`Addresses`] (IPv4 only for
//! now): a family is added there.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use rand::{Rng, rngs::StdRng, seq::IndexedRandom};
use serde_json::{Value, json};
use socklb_core::builders;

/// The namespace of every generated object.
pub const NS: &str = "diff";
/// The node the agent runs as.
pub const NODE: &str = "diff-node";
/// Other nodes' names (endpoints elsewhere).
pub const OTHER_NODES: [&str; 2] = ["diff-other-1", "diff-other-2"];
/// Zones: the node is in the first.
pub const ZONES: [&str; 2] = ["zone-a", "zone-b"];
/// The backend ports endpoints use (the reflector serves each, TCP and UDP).
pub const TARGET_PORTS: [u16; 5] = [8080, 8081, 8443, 5353, 9090];
/// Service ports the generator picks from.
const SERVICE_PORTS: [u16; 6] = [80, 443, 53, 8080, 9000, 9001];
/// The first NodePort; slot `s` owns `NODE_PORT_BASE + 4 s ..+ 4`.
const NODE_PORT_BASE: u16 = 30000;
/// Slots fit in the NodePort range (4 per slot) and the address blocks.
pub const MAX_SLOTS: usize = 600;

/// Where every address of the run comes from: one place, so another family is added
/// here. All of them are inside the test's own namespace, which has no default route.
#[derive(Clone, Copy, Debug)]
pub struct Addresses;

impl Addresses {
    fn in_block(block: [u8; 2], n: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(
            block[0],
            block[1],
            (n / 250) as u8,
            (n % 250 + 1) as u8,
        ))
    }

    /// Slot `s`'s cluster IP (10.96.0.0/16).
    pub fn cluster_ip(self, s: usize) -> IpAddr {
        Self::in_block([10, 96], s)
    }

    /// Slot `s`'s `j`-th LoadBalancer ingress IP (172.20.0.0/14: blocks per j).
    pub fn lb_ip(self, s: usize, j: usize) -> IpAddr {
        Self::in_block([172, 20 + j as u8], s)
    }

    /// Slot `s`'s `j`-th external IP (172.24.0.0/14).
    pub fn external_ip(self, s: usize, j: usize) -> IpAddr {
        Self::in_block([172, 24 + j as u8], s)
    }

    /// Pod `n` of the pool (10.244.0.0/16; the node's namespace routes it all to
    /// itself, see `Sandbox`).
    pub fn pod(self, n: usize) -> IpAddr {
        Self::in_block([10, 244], n)
    }

    /// Where the pod at `address` runs: this node, another or none named (a slice
    /// without nodeName), and its zone (or none), fixed per address.
    pub fn placement(self, address: IpAddr) -> (Option<&'static str>, Option<&'static str>) {
        let n = match address {
            IpAddr::V4(a) => u32::from(a),
            IpAddr::V6(a) => (u128::from(a) & 0xffff_ffff) as u32,
        };
        let h = n.wrapping_mul(2_654_435_761) >> 16;
        let node = match h % 20 {
            0..=6 => Some(NODE),
            7..=11 => Some(OTHER_NODES[0]),
            12..=16 => Some(OTHER_NODES[1]),
            _ => None,
        };
        let zone = match (h / 20) % 10 {
            0..=2 => None,
            3..=6 => Some(ZONES[0]),
            _ => Some(ZONES[1]),
        };
        (node, zone)
    }

    /// The block of every pod address, as a route.
    pub fn pod_block(self) -> &'static str {
        "10.244.0.0/16"
    }

    /// The node's address on its device (NodePorts answer there).
    pub fn node(self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 168, 200, 1))
    }

    /// The node address's prefix length.
    pub fn node_prefix(self) -> u8 {
        24
    }

    /// loadBalancerSourceRanges are /24s of 100.64.0.0/16: range `k` is 100.64.k.0/24.
    pub fn source_range(self, k: u8) -> String {
        format!("100.64.{k}.0/24")
    }

    /// A client inside source range `k` (host `h`).
    pub fn client_in_range(self, k: u8, h: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(100, 64, k, h.max(1)))
    }

    /// Client `n` outside every source range (198.18.0.0/15, benchmark addresses).
    pub fn outside_client(self, n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(
            u32::from(Ipv4Addr::new(198, 18, 0, 1)) + n % 100_000,
        ))
    }
}

/// How much of what the generator does (shares are probabilities).
#[derive(Clone, Debug)]
pub struct GenOptions {
    /// Service slots.
    pub slots: usize,
    /// Distinct pod addresses endpoints are drawn from (small: backends are shared).
    pub pod_pool: usize,
    /// In each round after the first: slots regenerated entirely, slots whose
    /// endpoints change only, slots emptied (no Service).
    pub regenerate: f64,
    pub endpoints_only: f64,
    pub remove: f64,
}

impl Default for GenOptions {
    fn default() -> Self {
        Self {
            slots: 100,
            pod_pool: 400,
            regenerate: 0.35,
            endpoints_only: 0.2,
            remove: 0.05,
        }
    }
}

/// One Service port as generated.
#[derive(Clone, Debug)]
struct Port {
    name: String,
    protocol: &'static str,
    port: u16,
    node_port: Option<u16>,
}

/// One endpoint as generated.
#[derive(Clone, Debug)]
struct Endpoint {
    address: IpAddr,
    /// None: the condition is left out (nil).
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
    node: Option<&'static str>,
    zone: Option<&'static str>,
    hint_zones: Vec<&'static str>,
}

/// One slot's Service and slices.
#[derive(Clone, Debug)]
pub struct Case {
    pub slot: usize,
    /// The round this version was generated in.
    pub round: usize,
    service: Value,
    ports: Vec<Port>,
    slices: Vec<Value>,
}

impl Case {
    /// The Service's name.
    pub fn name(&self) -> String {
        slot_name(self.slot)
    }

    /// `namespace/name`, as `socklb plan` names the Service.
    pub fn key(&self) -> String {
        format!("{NS}/{}", self.name())
    }

    /// The manifest file of this slot.
    pub fn file(&self) -> String {
        slot_file(self.slot)
    }

    /// The objects (Service first), as the manifest file holds them.
    pub fn objects(&self) -> Vec<Value> {
        std::iter::once(self.service.clone())
            .chain(self.slices.iter().cloned())
            .collect()
    }

    pub fn text(&self) -> String {
        builders::manifest_text(&self.objects())
    }

    /// The same objects with internalTrafficPolicy Cluster (see `oracle`).
    pub fn cluster_policy_text(&self) -> String {
        let svc = builders::merge(
            self.service.clone(),
            json!({"spec": {"internalTrafficPolicy": "Cluster"}}),
        );
        builders::manifest_text(
            &std::iter::once(svc)
                .chain(self.slices.iter().cloned())
                .collect::<Vec<_>>(),
        )
    }

    /// Service ports: (protocol, port), to find a port the Service does not have.
    pub fn service_ports(&self) -> BTreeSet<(String, u16)> {
        self.ports
            .iter()
            .map(|p| (p.protocol.to_string(), p.port))
            .collect()
    }
}

pub fn slot_name(slot: usize) -> String {
    format!("svc-{slot}")
}

pub fn slot_file(slot: usize) -> String {
    format!("svc-{slot}.yaml")
}

/// The Node object of the agent's node (its zone decides topology hints).
pub fn node_object() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": NODE, "labels": {"topology.kubernetes.io/zone": ZONES[0]}},
    })
}

/// What changed in a round.
#[derive(Clone, Debug, Default)]
pub struct RoundChanges {
    /// Slots written (new or changed versions).
    pub written: Vec<usize>,
    /// Slots whose Service was removed.
    pub removed: Vec<usize>,
    /// Of `written`: slots whose Service was (re)generated (new cases); the others
    /// got new endpoints only.
    pub regenerated: usize,
}

/// The generator's state: the slots' current cases.
pub struct Generator {
    pub opts: GenOptions,
    pub addrs: Addresses,
    pub slots: Vec<Option<Case>>,
}

fn maybe_bool(rng: &mut StdRng, p_true: f64) -> Option<bool> {
    // A third of the "true"s are left out (nil means true for ready and serving).
    if rng.random_bool(p_true) {
        if rng.random_bool(0.33) {
            None
        } else {
            Some(true)
        }
    } else {
        Some(false)
    }
}

impl Generator {
    pub fn new(opts: GenOptions) -> Generator {
        let slots = opts.slots.clamp(1, MAX_SLOTS);
        Generator {
            opts: GenOptions { slots, ..opts },
            addrs: Addresses,
            slots: vec![None; slots],
        }
    }

    /// Round `round`'s changes: every slot in round 0, then random slots.
    pub fn round(&mut self, round: usize, rng: &mut StdRng) -> RoundChanges {
        let mut ch = RoundChanges::default();
        for s in 0..self.slots.len() {
            let x: f64 = rng.random();
            let o = &self.opts;
            let current = self.slots[s].clone();
            match current {
                None if round == 0 || x < o.regenerate + o.remove => {
                    self.slots[s] = Some(self.service(s, round, rng));
                    ch.written.push(s);
                    ch.regenerated += 1;
                }
                None => {}
                Some(_) if x < o.regenerate => {
                    self.slots[s] = Some(self.service(s, round, rng));
                    ch.written.push(s);
                    ch.regenerated += 1;
                }
                Some(_) if x < o.regenerate + o.remove => {
                    self.slots[s] = None;
                    ch.removed.push(s);
                }
                Some(mut case) if x < o.regenerate + o.remove + o.endpoints_only => {
                    case.slices = self.slices(s, &case.ports, rng);
                    case.round = round;
                    self.slots[s] = Some(case);
                    ch.written.push(s);
                }
                Some(_) => {}
            }
        }
        ch
    }

    /// A new random Service for slot `s`, with its slices.
    fn service(&self, s: usize, round: usize, rng: &mut StdRng) -> Case {
        let a = self.addrs;
        let kind = *["ClusterIP", "ClusterIP", "NodePort", "LoadBalancer"]
            .choose(rng)
            .unwrap_or(&"ClusterIP");
        let n_ports = *[1usize, 1, 2, 3].choose(rng).unwrap_or(&1);
        let mut ports: Vec<Port> = Vec::new();
        let mut used = BTreeSet::new();
        for i in 0..n_ports {
            let protocol = if rng.random_bool(0.35) { "UDP" } else { "TCP" };
            let port = *SERVICE_PORTS.choose(rng).unwrap_or(&80);
            if !used.insert((protocol, port)) {
                continue;
            }
            let node_port = (kind != "ClusterIP").then(|| NODE_PORT_BASE + (4 * s + i) as u16);
            ports.push(Port {
                name: format!("p{i}"),
                protocol,
                port,
                node_port,
            });
        }
        let spec_ports: Vec<Value> = ports
            .iter()
            .map(|p| {
                let mut v = json!({"name": p.name, "protocol": p.protocol, "port": p.port});
                if let Some(np) = p.node_port {
                    v["nodePort"] = json!(np);
                }
                v
            })
            .collect();
        let mut spec = json!({"type": kind, "ports": spec_ports});
        if rng.random_bool(0.25) {
            spec["internalTrafficPolicy"] = json!("Local");
        }
        let external = kind != "ClusterIP";
        if external && rng.random_bool(0.4) {
            spec["externalTrafficPolicy"] = json!("Local");
        }
        if rng.random_bool(0.2) {
            let n = rng.random_range(1..=2);
            spec["externalIPs"] = json!(
                (0..n)
                    .map(|j| a.external_ip(s, j).to_string())
                    .collect::<Vec<_>>()
            );
            if !external && rng.random_bool(0.3) {
                // Allowed on a ClusterIP Service with external IPs.
                spec["externalTrafficPolicy"] = json!("Local");
            }
        }
        if rng.random_bool(0.2) {
            spec["sessionAffinity"] = json!("ClientIP");
            if rng.random_bool(0.5) {
                let t: u32 = rng.random_range(60..=86_400);
                spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": t}});
            }
        }
        let mut svc = builders::merge(
            builders::service_object(NS, &slot_name(s), &a.cluster_ip(s).to_string(), &[]),
            json!({"spec": spec}),
        );
        if kind == "LoadBalancer" {
            let n = *[0usize, 1, 1, 2].choose(rng).unwrap_or(&1);
            let ingress: Vec<Value> = (0..n)
                .map(|j| json!({"ip": a.lb_ip(s, j).to_string(), "ipMode": "VIP"}))
                .collect();
            svc = builders::merge(
                svc,
                json!({"status": {"loadBalancer": {"ingress": ingress}}}),
            );
            if rng.random_bool(0.4) {
                let mut ranges = BTreeSet::new();
                for _ in 0..rng.random_range(1..=2) {
                    ranges.insert(a.source_range(rng.random_range(0..8)));
                }
                svc["spec"]["loadBalancerSourceRanges"] = json!(ranges);
            }
            if svc["spec"]["externalTrafficPolicy"] == "Local" {
                svc["spec"]["healthCheckNodePort"] = json!(NODE_PORT_BASE + (4 * s + 3) as u16);
            }
        }
        let slices = self.slices(s, &ports, rng);
        Case {
            slot: s,
            round,
            service: svc,
            ports,
            slices,
        }
    }

    /// Zero to three slices for the Service ports `ports`: endpoints from the pool on
    /// this node, other nodes or none, in every combination of conditions, sometimes
    /// with zone hints; a slice may lack a port or map it to another target port.
    fn slices(&self, s: usize, ports: &[Port], rng: &mut StdRng) -> Vec<Value> {
        let n = *[0usize, 1, 1, 1, 2, 3].choose(rng).unwrap_or(&1);
        let mut out = Vec::with_capacity(n);
        for k in 0..n {
            let mut slice_ports: Vec<(&str, &str, u16)> = Vec::new();
            for p in ports {
                if rng.random_bool(0.9) {
                    let target = *TARGET_PORTS.choose(rng).unwrap_or(&8080);
                    slice_ports.push((p.name.as_str(), p.protocol, target));
                }
            }
            let hinted = rng.random_bool(0.25);
            let mut addrs = BTreeSet::new();
            let mut eps = Vec::new();
            for _ in 0..rng.random_range(0..=5) {
                let address = self
                    .addrs
                    .pod(rng.random_range(0..self.opts.pod_pool.max(1)));
                if !addrs.insert(address) {
                    continue;
                }
                eps.push(self.endpoint(address, hinted, rng));
            }
            let endpoints: Vec<Value> = eps.iter().map(endpoint_json).collect();
            out.push(builders::merge(
                builders::slice_object(
                    NS,
                    &format!("{}-{k}", slot_name(s)),
                    &slot_name(s),
                    &slice_ports,
                    &[],
                ),
                json!({"endpoints": endpoints}),
            ));
        }
        out
    }

    fn endpoint(&self, address: IpAddr, hinted: bool, rng: &mut StdRng) -> Endpoint {
        let x: f64 = rng.random();
        // ready; serving and terminating; neither; terminating only.
        let (ready, serving, terminating) = if x < 0.7 {
            (
                maybe_bool(rng, 1.0),
                maybe_bool(rng, 1.0),
                rng.random_bool(0.5).then_some(false),
            )
        } else if x < 0.85 {
            (Some(false), maybe_bool(rng, 1.0), Some(true))
        } else if x < 0.95 {
            (
                Some(false),
                Some(false),
                rng.random_bool(0.5).then_some(false),
            )
        } else {
            (Some(false), Some(false), Some(true))
        };
        // A pod runs on one node in one zone: every slice that lists its address
        // says so (the agent keys a backend by whether it is local, too).
        let (node, zone) = self.addrs.placement(address);
        let hint_zones = if hinted {
            // Mostly the endpoint's own zone, sometimes both, sometimes none (then
            // not every endpoint has hints and all are ignored).
            match rng.random_range(0..10) {
                0 => vec![],
                1 => ZONES.to_vec(),
                _ => vec![zone.unwrap_or(ZONES[1])],
            }
        } else {
            vec![]
        };
        Endpoint {
            address,
            ready,
            serving,
            terminating,
            node,
            zone,
            hint_zones,
        }
    }
}

fn endpoint_json(e: &Endpoint) -> Value {
    let mut conditions = serde_json::Map::new();
    for (k, v) in [
        ("ready", e.ready),
        ("serving", e.serving),
        ("terminating", e.terminating),
    ] {
        if let Some(v) = v {
            conditions.insert(k.into(), json!(v));
        }
    }
    let mut ep = json!({"addresses": [e.address.to_string()], "conditions": conditions});
    if let Some(n) = e.node {
        ep["nodeName"] = json!(n);
    }
    if let Some(z) = e.zone {
        ep["zone"] = json!(z);
    }
    if !e.hint_zones.is_empty() {
        let zones: Vec<Value> = e.hint_zones.iter().map(|z| json!({"name": z})).collect();
        ep["hints"] = json!({"forZones": zones});
    }
    ep
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_same_seed_makes_the_same_objects() {
        let run = |seed| {
            let mut g = Generator::new(GenOptions::default());
            let mut rng = StdRng::seed_from_u64(seed);
            let mut texts = Vec::new();
            for r in 0..3 {
                let ch = g.round(r, &mut rng);
                for s in ch.written {
                    texts.push(g.slots[s].as_ref().map(Case::text).unwrap_or_default());
                }
            }
            texts
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn addresses_of_slots_do_not_collide() {
        let a = Addresses;
        let mut seen = BTreeSet::new();
        for s in 0..MAX_SLOTS {
            for ip in [
                a.cluster_ip(s),
                a.lb_ip(s, 0),
                a.lb_ip(s, 1),
                a.external_ip(s, 0),
                a.external_ip(s, 1),
            ] {
                assert!(seen.insert(ip), "{ip} twice");
            }
        }
        assert!(usize::from(NODE_PORT_BASE) + 4 * MAX_SLOTS <= 32768);
    }
}
