//! What `socklb plan -o json` allows, as probes with their expected outcomes, and the
//! judgement of what the kernel did.
//!
//! Per plan frontend:
//! - a ClusterIP frontend, from the node (socket hooks): its backends, or refused
//!   (`ECONNREFUSED`) for reject, or `EHOSTUNREACH` for drop; the cluster IP's other
//!   ports are refused;
//! - a NodePort, LoadBalancer or external IP frontend, from the node (socket hooks):
//!   the frontend's `from_node` set (the plan leaves it out where it is the
//!   frontend's own): the Cluster-policy endpoints whatever the policies, as
//!   kube-proxy short-circuits in-cluster clients (`UsesClusterEndpoints`: "we need
//!   Cluster endpoints to implement short circuiting"). As a cross-check, where that
//!   set differs from the ClusterIP frontend of the "cluster plan" (the plan of the
//!   same objects with internalTrafficPolicy Cluster, whose ClusterIP frontends get
//!   exactly kube-proxy's cluster endpoints), the probe carries a [`KubeProxyNote`]
//!   (target: none);
//! - the same frontend from outside (TC ingress, BPF_PROG_TEST_RUN): its own backends
//!   from a permitted source (DNAT), dropped for a source outside
//!   loadBalancerSourceRanges or under a Local policy with no endpoint here; a
//!   rejecting LoadBalancer or external IP is answered in place (TCP RST, ICMP
//!   unreachable), a rejecting NodePort is passed to the stack untouched (nothing may
//!   listen there, the stack answers); another port of a LoadBalancer or external IP
//!   is answered too.
//!
//! Over the probes of one frontend with session affinity (one client) every choice
//! must be the same backend, and a second packet of a tracked flow must go where the
//! first went.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::generate::Addresses;
use super::sock::Outcome;
use super::tc::{
    self, IPPROTO_TCP, IPPROTO_UDP, Parsed, Run, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
};

/// `socklb plan -o json`, the fields the oracle reads.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PlanJson {
    pub node: String,
    pub frontends: Vec<PlanEntry>,
    #[serde(default)]
    pub conflicts: Vec<serde_json::Value>,
}

/// One frontend of the plan, as printed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanEntry {
    pub service: String,
    #[serde(default)]
    pub port: String,
    pub protocol: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub address: String,
    pub action: String,
    #[serde(default)]
    pub backends: Vec<String>,
    #[serde(default)]
    pub affinity_timeout_s: u64,
    #[serde(default)]
    pub source_ranges: Vec<String>,
    /// An external frontend's set for the node's own clients, where it differs
    /// from its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_node: Option<FromNodeEntry>,
}

/// [`PlanEntry::from_node`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FromNodeEntry {
    pub action: String,
    #[serde(default)]
    pub backends: Vec<String>,
}

impl PlanEntry {
    /// One line for a report.
    pub fn shown(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    fn ip_port(&self, node: IpAddr) -> Option<SocketAddr> {
        match self.address.strip_prefix("*:") {
            Some(port) => Some(SocketAddr::new(node, port.parse().ok()?)),
            None => self.address.parse().ok(),
        }
    }
}

/// What a probe must find.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// One of these backends.
    Forward(BTreeSet<SocketAddr>),
    /// Socket hooks: ECONNREFUSED. TC: an answer from the frontend (RST, ICMP
    /// unreachable), or for a NodePort the packet passed untouched.
    Reject,
    /// Socket hooks: EHOSTUNREACH. TC: dropped.
    Drop,
}

impl Expect {
    fn of(e: &PlanEntry) -> Expect {
        match e.action.as_str() {
            "forward" => {
                Expect::Forward(e.backends.iter().filter_map(|b| b.parse().ok()).collect())
            }
            "drop" => Expect::Drop,
            _ => Expect::Reject,
        }
    }

    fn shown(&self) -> String {
        match self {
            Expect::Forward(b) => format!(
                "one of [{}]",
                b.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Expect::Reject => "reject".into(),
            Expect::Drop => "drop".into(),
        }
    }
}

/// Why a probe expects what it does: the plan entry (and the one its expectation
/// came from, when another).
#[derive(Clone, Debug)]
pub struct Reason {
    pub service: String,
    pub what: String,
    pub entry: PlanEntry,
    pub from: Option<PlanEntry>,
}

/// A probe through the socket hooks.
#[derive(Clone, Debug)]
pub struct SockProbe {
    pub to: SocketAddr,
    pub protocol: String,
    pub n: u32,
    pub expect: Expect,
    pub affinity: bool,
    pub reason: Reason,
    /// Where kube-proxy would allow another set (see the module).
    pub kube_proxy: Option<KubeProxyNote>,
}

/// The node's own connection to an external frontend: the data path's allowed set
/// (the ClusterIP frontend's) differs from kube-proxy's short-circuit set.
#[derive(Clone, Debug)]
pub struct KubeProxyNote {
    pub expect: Expect,
    pub entry: PlanEntry,
}

impl KubeProxyNote {
    /// One line for a report.
    pub fn line(&self, p: &SockProbe) -> String {
        format!(
            "{} {}/{} from the node: the data path allows {} (the plan's ClusterIP frontend {}), kube-proxy {} (its cluster endpoints: {})",
            p.reason.entry.kind,
            p.to,
            p.protocol,
            p.expect.shown(),
            p.reason
                .from
                .as_ref()
                .map(PlanEntry::shown)
                .unwrap_or_default(),
            self.expect.shown(),
            self.entry.shown()
        )
    }
}

/// A probe through the TC ingress program.
#[derive(Clone, Debug)]
pub struct TcProbe {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
    /// Further flows (source ports after `src`'s) from the same client.
    pub n: u32,
    pub expect: Expect,
    /// Answered in place (a LoadBalancer or external IP) rather than passed (NodePort)
    /// when rejected.
    pub answered: bool,
    pub affinity: bool,
    pub reason: Reason,
}

/// One finding: the probe, what was expected and what happened.
#[derive(Clone, Debug)]
pub struct Divergence {
    pub service: String,
    pub line: String,
}

/// Hands out TC clients: unique (address, port) pairs over the whole run.
#[derive(Clone, Debug, Default)]
pub struct Clients {
    next: u64,
}

impl Clients {
    /// A client address outside every source range with room for `n` source ports.
    fn outside(&mut self, a: Addresses, n: u32) -> SocketAddr {
        let (ip, port) = self.take(n);
        SocketAddr::new(a.outside_client(ip), port)
    }

    /// A client inside source range `k`.
    fn inside(&mut self, a: Addresses, k: u8, n: u32) -> SocketAddr {
        let (ip, port) = self.take(n);
        SocketAddr::new(a.client_in_range(k, (ip % 250 + 1) as u8), port)
    }

    fn take(&mut self, n: u32) -> (u32, u16) {
        // 60000 source ports per client address, from 2000 on.
        let per = 60_000u64;
        let mut i = self.next;
        if i % per + u64::from(n) > per {
            i = (i / per + 1) * per;
        }
        self.next = i + u64::from(n);
        ((i / per) as u32, (2000 + i % per) as u16)
    }
}

fn proto_num(p: &str) -> u8 {
    if p == "UDP" { IPPROTO_UDP } else { IPPROTO_TCP }
}

/// How many probes a frontend gets: enough to see most backends (several per
/// backend), one for a refusal.
fn count_for(e: &Expect, affinity: bool) -> u32 {
    match e {
        Expect::Forward(_) if affinity => 3,
        Expect::Forward(b) => (2 * b.len() as u32 + 1).min(8),
        Expect::Reject | Expect::Drop => 1,
    }
}

/// The probes `plan` asks for. `cluster` is the plan of the same objects with
/// internalTrafficPolicy Cluster (see the module).
pub fn probes(
    plan: &PlanJson,
    cluster: &PlanJson,
    a: Addresses,
    clients: &mut Clients,
) -> (Vec<SockProbe>, Vec<TcProbe>) {
    let node = a.node();
    let mut sock = Vec::new();
    let mut tcp = Vec::new();
    let by_port = |p: &'_ PlanJson| -> BTreeMap<(String, String, String), PlanEntry> {
        p.frontends
            .iter()
            .filter(|f| f.kind == "ClusterIP")
            .map(|f| {
                (
                    (f.service.clone(), f.port.clone(), f.protocol.clone()),
                    f.clone(),
                )
            })
            .collect()
    };
    let cluster_by_port = by_port(cluster);
    let cluster_fe: BTreeMap<(&str, &str, &str), &PlanEntry> = cluster_by_port
        .iter()
        .map(|((s, p, q), f)| ((s.as_str(), p.as_str(), q.as_str()), f))
        .collect();
    // Service addresses and their ports, for the "other port" probes.
    let mut cluster_ips: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut external_ips: BTreeMap<IpAddr, (String, PlanEntry)> = BTreeMap::new();
    for f in &plan.frontends {
        let Some(to) = f.ip_port(node) else { continue };
        let affinity = f.affinity_timeout_s > 0;
        let reason = |what: &str, from: Option<&PlanEntry>| Reason {
            service: f.service.clone(),
            what: what.to_string(),
            entry: f.clone(),
            from: from.cloned(),
        };
        if f.kind == "ClusterIP" {
            cluster_ips.insert(to.ip(), f.service.clone());
            let expect = Expect::of(f);
            sock.push(SockProbe {
                to,
                protocol: f.protocol.clone(),
                n: count_for(&expect, affinity),
                expect,
                affinity,
                reason: reason("from the node", None),
                kube_proxy: None,
            });
            continue;
        }
        if f.kind != "NodePort" {
            external_ips.insert(to.ip(), (f.service.clone(), f.clone()));
        }
        // From the node: the frontend's from_node set.
        let port_key = (f.service.as_str(), f.port.as_str(), f.protocol.as_str());
        let from = f.from_node.as_ref().map(|n| PlanEntry {
            action: n.action.clone(),
            backends: n.backends.clone(),
            from_node: None,
            ..f.clone()
        });
        let expect = Expect::of(from.as_ref().unwrap_or(f));
        let kube_proxy = cluster_fe.get(&port_key).and_then(|kp| {
            let want = Expect::of(kp);
            (want != expect).then(|| KubeProxyNote {
                expect: want,
                entry: (*kp).clone(),
            })
        });
        sock.push(SockProbe {
            to,
            protocol: f.protocol.clone(),
            n: count_for(&expect, affinity),
            expect,
            affinity,
            reason: reason(
                "from the node (the frontend's from_node set: the cluster endpoints)",
                from.as_ref(),
            ),
            kube_proxy,
        });
        // From outside.
        let proto = proto_num(&f.protocol);
        let expect = Expect::of(f);
        let n = count_for(&expect, affinity);
        let ranges: Vec<u8> = f
            .source_ranges
            .iter()
            .filter_map(|r| r.strip_prefix("100.64.")?.split('.').next()?.parse().ok())
            .collect();
        let src = match ranges.first() {
            Some(k) => clients.inside(a, *k, n),
            None => clients.outside(a, n),
        };
        tcp.push(TcProbe {
            src,
            dst: to,
            proto,
            n,
            expect,
            answered: f.kind != "NodePort",
            affinity,
            reason: reason("from outside", None),
        });
        if !f.source_ranges.is_empty() {
            tcp.push(TcProbe {
                src: clients.outside(a, 1),
                dst: to,
                proto,
                n: 1,
                expect: Expect::Drop,
                answered: true,
                affinity,
                reason: reason("from outside loadBalancerSourceRanges", None),
            });
        }
    }
    // A port no service has on a cluster IP (refused by the hooks) and on a
    // LoadBalancer or external IP (answered by TC). Port 7 is never generated.
    for (ip, service) in cluster_ips {
        for protocol in ["TCP", "UDP"] {
            let entry = PlanEntry {
                service: service.clone(),
                protocol: protocol.into(),
                kind: "ClusterIP".into(),
                address: SocketAddr::new(ip, 7).to_string(),
                action: "reject".into(),
                ..Default::default()
            };
            sock.push(SockProbe {
                to: SocketAddr::new(ip, 7),
                protocol: protocol.into(),
                n: 1,
                expect: Expect::Reject,
                affinity: false,
                reason: Reason {
                    service: service.clone(),
                    what: "a port the cluster IP does not have (address wildcard)".into(),
                    entry,
                    from: None,
                },
                kube_proxy: None,
            });
        }
    }
    for (ip, (service, f)) in external_ips {
        tcp.push(TcProbe {
            src: clients.outside(a, 1),
            dst: SocketAddr::new(ip, 7),
            proto: IPPROTO_TCP,
            n: 1,
            expect: Expect::Reject,
            answered: true,
            affinity: false,
            reason: Reason {
                service,
                what: "a port the address does not have (address wildcard)".into(),
                entry: f,
                from: None,
            },
        });
    }
    (sock, tcp)
}

fn reason_text(r: &Reason) -> String {
    let mut s = format!("plan entry {}", r.entry.shown());
    if let Some(from) = &r.from {
        s.push_str(&format!("; allowed set from the plan's {}", from.shown()));
    }
    s
}

/// Judges the outcomes of a socket probe.
pub fn judge_sock(p: &SockProbe, outcomes: &[Outcome], seen: &mut Coverage) -> Vec<Divergence> {
    let mut out = Vec::new();
    let mut chosen = BTreeSet::new();
    for o in outcomes {
        let ok = match &p.expect {
            Expect::Forward(b) => match o.parse::<SocketAddr>() {
                Ok(addr) => {
                    chosen.insert(addr);
                    b.contains(&addr)
                }
                Err(_) => false,
            },
            Expect::Reject => o == "ECONNREFUSED",
            Expect::Drop => o == "EHOSTUNREACH",
        };
        if !ok {
            out.push(Divergence {
                service: p.reason.service.clone(),
                line: format!(
                    "socket hooks: {} {}/{} {}: got {o}, want {}; {}",
                    p.reason.entry.kind,
                    p.to,
                    p.protocol,
                    p.reason.what,
                    p.expect.shown(),
                    reason_text(&p.reason)
                ),
            });
            break;
        }
    }
    if p.affinity && chosen.len() > 1 {
        out.push(Divergence {
            service: p.reason.service.clone(),
            line: format!(
                "socket hooks: {} {}/{} with session affinity: one client reached {chosen:?}; {}",
                p.reason.entry.kind,
                p.to,
                p.protocol,
                reason_text(&p.reason)
            ),
        });
    }
    if let Expect::Forward(b) = &p.expect
        && !p.affinity
    {
        seen.add(b.len(), chosen.len());
    }
    out
}

/// The outcome of one TC probe: one run per flow, each flow's packet sent twice.
#[derive(Clone, Debug)]
pub struct TcOutcome {
    /// (first run, second run of the same packet), per flow.
    pub runs: Vec<(Run, Run)>,
    /// The frames sent, per flow.
    pub frames: Vec<Vec<u8>>,
}

fn shown_run(r: &Run) -> String {
    match tc::parse(&r.output) {
        Some(p) => format!(
            "{} {}:{} -> {}:{} proto {}{}",
            tc::verdict_name(r.verdict),
            p.src,
            p.sport,
            p.dst,
            p.dport,
            p.proto,
            if p.is_rst() {
                " RST"
            } else if p.is_unreachable() {
                " ICMP unreachable"
            } else {
                ""
            }
        ),
        None => format!("{} ({} bytes)", tc::verdict_name(r.verdict), r.output.len()),
    }
}

/// Judges a TC probe's runs.
pub fn judge_tc(p: &TcProbe, o: &TcOutcome, seen: &mut Coverage) -> Vec<Divergence> {
    let mut out = Vec::new();
    let mut chosen = BTreeSet::new();
    let src_ip = p.src.ip();
    for (i, ((first, again), sent)) in o.runs.iter().zip(&o.frames).enumerate() {
        let parsed: Option<Parsed> = tc::parse(&first.output);
        let bad = match &p.expect {
            Expect::Forward(b) => match &parsed {
                Some(x) if first.verdict != TC_ACT_SHOT && x.proto == p.proto => {
                    chosen.insert(x.dst_addr());
                    if !b.contains(&x.dst_addr()) {
                        Some("a backend the plan does not allow".to_string())
                    } else if tc::parse(&again.output).map(|y| y.dst_addr()) != Some(x.dst_addr()) {
                        Some(format!(
                            "the flow's second packet went elsewhere: {}",
                            shown_run(again)
                        ))
                    } else {
                        None
                    }
                }
                _ => Some("not forwarded".into()),
            },
            Expect::Drop => (first.verdict != TC_ACT_SHOT).then(|| "not dropped".to_string()),
            Expect::Reject if p.answered => match &parsed {
                Some(x)
                    if first.verdict == TC_ACT_REDIRECT
                        && (x.is_rst() || x.is_unreachable())
                        && IpAddr::V4(x.dst) == src_ip
                        && IpAddr::V4(x.src) == p.dst.ip() =>
                {
                    None
                }
                _ => Some("not answered (RST or ICMP unreachable from the frontend)".into()),
            },
            Expect::Reject => (first.verdict != TC_ACT_OK || first.output != *sent)
                .then(|| "not passed untouched to the stack".to_string()),
        };
        if let Some(why) = bad {
            out.push(Divergence {
                service: p.reason.service.clone(),
                line: format!(
                    "TC ingress: {} {}/{} {} (flow {} from {}:{}): {why}: got {}, want {}; {}",
                    p.reason.entry.kind,
                    p.dst,
                    if p.proto == IPPROTO_UDP { "UDP" } else { "TCP" },
                    p.reason.what,
                    i,
                    p.src.ip(),
                    p.src.port() as u32 + i as u32,
                    shown_run(first),
                    p.expect.shown(),
                    reason_text(&p.reason)
                ),
            });
            break;
        }
    }
    if p.affinity && chosen.len() > 1 {
        out.push(Divergence {
            service: p.reason.service.clone(),
            line: format!(
                "TC ingress: {} {} with session affinity: client {} reached {chosen:?}; {}",
                p.reason.entry.kind,
                p.dst,
                p.src.ip(),
                reason_text(&p.reason)
            ),
        });
    }
    if let Expect::Forward(b) = &p.expect
        && !p.affinity
    {
        seen.add(b.len(), chosen.len());
    }
    out
}

/// How many of the allowed backends the probes of forwarding frontends reached (a
/// figure, not a check: choices are random).
#[derive(Clone, Copy, Debug, Default)]
pub struct Coverage {
    pub allowed: u64,
    pub reached: u64,
}

impl Coverage {
    fn add(&mut self, allowed: usize, reached: usize) {
        self.allowed += allowed as u64;
        self.reached += reached as u64;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn clients_never_repeat_a_flow() {
        let mut c = Clients::default();
        let mut seen = BTreeSet::new();
        for i in 0..200_000u32 {
            let s = c.outside(Addresses, 1 + i % 8);
            for k in 0..(1 + i % 8) {
                assert!(seen.insert((s.ip(), s.port() as u32 + k)), "{s} again");
            }
        }
    }

    #[test]
    fn external_frontends_from_the_node_take_their_from_node_set_as_kube_proxy() {
        let fe = |kind: &str, address: &str, action: &str, backends: &[&str]| PlanEntry {
            service: "diff/svc-0".into(),
            port: "p0".into(),
            protocol: "TCP".into(),
            kind: kind.into(),
            address: address.into(),
            action: action.into(),
            backends: backends.iter().map(|b| b.to_string()).collect(),
            ..Default::default()
        };
        // internalTrafficPolicy Local, nothing here: the ClusterIP drops; the node's
        // own connections to the NodePort get the cluster endpoints (from_node), as
        // kube-proxy short-circuits them.
        let mut nodeport = fe("NodePort", "*:30000", "drop", &[]);
        nodeport.from_node = Some(FromNodeEntry {
            action: "forward".into(),
            backends: vec!["10.244.0.2:8080".into()],
        });
        let plan = PlanJson {
            frontends: vec![nodeport, fe("ClusterIP", "10.96.0.1:80", "drop", &[])],
            ..Default::default()
        };
        let cluster = PlanJson {
            frontends: vec![
                fe("NodePort", "*:30000", "forward", &["10.244.0.2:8080"]),
                fe("ClusterIP", "10.96.0.1:80", "forward", &["10.244.0.2:8080"]),
            ],
            ..Default::default()
        };
        let (sock, tc) = probes(&plan, &cluster, Addresses, &mut Clients::default());
        let np = sock.iter().find(|p| p.to.port() == 30000).unwrap();
        assert_eq!(
            np.expect,
            Expect::Forward(["10.244.0.2:8080".parse().unwrap()].into())
        );
        assert!(np.kube_proxy.is_none(), "the same set as kube-proxy's");
        let cip = sock.iter().find(|p| p.to.port() == 80).unwrap();
        assert_eq!(cip.expect, Expect::Drop);
        assert_eq!(tc.len(), 1);
        assert_eq!(
            tc[0].expect,
            Expect::Drop,
            "from outside: its own (none here)"
        );
        assert_eq!(sock.iter().filter(|p| p.to.port() == 7).count(), 2);

        // Without from_node the frontend's own set; a different cluster plan is noted.
        let plan = PlanJson {
            frontends: vec![fe("NodePort", "*:30000", "drop", &[])],
            ..Default::default()
        };
        let (sock, _) = probes(&plan, &cluster, Addresses, &mut Clients::default());
        let np = sock.iter().find(|p| p.to.port() == 30000).unwrap();
        assert_eq!(np.expect, Expect::Drop);
        assert!(np.kube_proxy.is_some());
    }
}
