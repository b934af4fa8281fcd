//! kube-proxy's iptables layout (pkg/proxy/iptables/proxier.go) for a [`SynthCluster`],
//! as `iptables-restore` input.
//!
//! - [`base`]: what kube-proxy creates once at start-up with `iptables -N` / `-I`
//!   (its "ensure" step): the KUBE chains and the jumps from the built-in chains
//!   (nat PREROUTING/OUTPUT -> KUBE-SERVICES, POSTROUTING -> KUBE-POSTROUTING, filter
//!   INPUT/FORWARD/OUTPUT -> the filter KUBE chains);
//! - [`full`]: a full sync (`iptables-restore --noflush --counters`, every chain
//!   declared and rewritten);
//! - [`partial`]: a partial sync after one endpoint changed (kube-proxy >= 1.27,
//!   MinimizeIPTablesRestore): the filter chains and nat KUBE-SERVICES (one rule per
//!   service port, always rewritten), KUBE-NODEPORTS, KUBE-POSTROUTING, KUBE-MARK-MASQ,
//!   then only the changed service's KUBE-SVC and KUBE-SEP chains, and the stale
//!   KUBE-SEP chain declared and deleted (`-X`).
//!
//! Per service port (VIP, P, n endpoints), in KUBE-SERVICES order (service 0 first):
//! ```text
//! -A KUBE-SERVICES -m comment --comment "ns/svc:p cluster IP" -m tcp -p tcp -d VIP --dport P -j KUBE-SVC-x
//! -A KUBE-SVC-x -m comment --comment "ns/svc:p cluster IP" -m tcp -p tcp -d VIP --dport P ! -s CLUSTER_CIDR -j KUBE-MARK-MASQ
//! -A KUBE-SVC-x [-m comment ...] -m statistic --mode random --probability 0.1000000000 -j KUBE-SEP-1
//! ...
//! -A KUBE-SVC-x [-m comment ...] -j KUBE-SEP-n
//! -A KUBE-SEP-1 [-m comment ...] -s EP1 -j KUBE-MARK-MASQ
//! -A KUBE-SEP-1 [-m comment ...] -m tcp -p tcp -j DNAT --to-destination EP1:TP
//! ```
//! and last in KUBE-SERVICES the NodePort rule
//! (`-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`). NodePort services
//! (externalTrafficPolicy Cluster) add, per port:
//! ```text
//! -A KUBE-NODEPORTS -m comment --comment "ns/svc:p" -m tcp -p tcp --dport NP -j KUBE-EXT-x
//! -A KUBE-EXT-x -m comment --comment "masquerade traffic for ns/svc:p external destinations" -j KUBE-MARK-MASQ
//! -A KUBE-EXT-x -j KUBE-SVC-x
//! ``` Probabilities are 1/(n-i)
//! printed with "%0.10f". As kube-proxy does above 1 000 endpoints ("large cluster
//! mode"), the per-endpoint comments are left out then.

use std::fmt::Write as _;

use super::model::{CLUSTER_CIDR, Change, PortSpec, SynthCluster, hash32};

/// kube-proxy's threshold for leaving per-endpoint comments out.
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

fn port_name(c: &SynthCluster, i: usize, p: &PortSpec) -> String {
    format!("{}:{}", c.key(i), p.name)
}

/// `KUBE-SVC-` + 16 characters of a hash of the service port name and protocol.
pub fn svc_chain(c: &SynthCluster, i: usize, p: &PortSpec) -> String {
    format!(
        "KUBE-SVC-{}",
        hash32(&format!("{}{}", port_name(c, i, p), p.proto.lower()), 16)
    )
}

/// `KUBE-EXT-` + the service chain's hash: NodePort (external) traffic of the port.
pub fn ext_chain(c: &SynthCluster, i: usize, p: &PortSpec) -> String {
    svc_chain(c, i, p).replacen("KUBE-SVC-", "KUBE-EXT-", 1)
}

/// `KUBE-SEP-` + 16 characters of a hash of the service port, protocol and endpoint.
pub fn sep_chain(c: &SynthCluster, i: usize, p: &PortSpec, ep: std::net::Ipv4Addr) -> String {
    format!(
        "KUBE-SEP-{}",
        hash32(
            &format!(
                "{}{}{}:{}",
                port_name(c, i, p),
                p.proto.lower(),
                ep,
                p.target
            ),
            16
        )
    )
}

/// "%0.10f" of 1/n.
pub fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

const FILTER_CHAINS: [&str; 5] = [
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-FORWARD",
    "KUBE-NODEPORTS",
    "KUBE-PROXY-FIREWALL",
];
const NAT_CHAINS: [&str; 4] = [
    "KUBE-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
];

/// kube-proxy's start-up "ensure" step, as one restore (`--noflush`): the KUBE chains
/// and the jumps to them from the built-in chains.
pub fn base() -> String {
    let mut s = String::new();
    s.push_str("*filter\n");
    for ch in FILTER_CHAINS {
        let _ = writeln!(s, ":{ch} - [0:0]");
    }
    s.push_str(concat!(
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n",
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "COMMIT\n",
        "*nat\n",
    ));
    for ch in NAT_CHAINS {
        let _ = writeln!(s, ":{ch} - [0:0]");
    }
    s.push_str(concat!(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
        "COMMIT\n",
    ));
    s
}

/// Which services get their KUBE-SVC/KUBE-SEP chains written.
enum Scope<'a> {
    All,
    /// A partial sync: this service, plus stale KUBE-SEP chains to delete.
    One {
        service: usize,
        stale: &'a [String],
    },
}

/// A full sync of the whole ruleset (with `change` applied).
pub fn full(c: &SynthCluster, change: Option<Change>) -> String {
    write_rules(c, change, Scope::All)
}

/// A partial sync after `change` replaced `previous` (the generation the rules hold
/// now; generation 0 is the original): only the changed service's chains, plus the
/// stale endpoint chain removed.
pub fn partial(c: &SynthCluster, change: Change, previous: Change) -> String {
    let stale = stale_chains(c, change, previous);
    write_rules(
        c,
        Some(change),
        Scope::One {
            service: change.service,
            stale: &stale,
        },
    )
}

/// KUBE-SEP chains of `previous` that `change` no longer has.
pub fn stale_chains(c: &SynthCluster, change: Change, previous: Change) -> Vec<String> {
    let i = change.service;
    let mut out = Vec::new();
    for p in c.ports(i) {
        let now: Vec<String> = c
            .endpoints_of(i, Some(change))
            .into_iter()
            .map(|ep| sep_chain(c, i, p, ep))
            .collect();
        for ep in c.endpoints_of(i, Some(previous)) {
            let ch = sep_chain(c, i, p, ep);
            if !now.contains(&ch) {
                out.push(ch);
            }
        }
    }
    out
}

fn write_rules(c: &SynthCluster, change: Option<Change>, scope: Scope<'_>) -> String {
    let large = c.total_endpoints() > LARGE_CLUSTER_ENDPOINTS;
    let mut chains = String::new();
    let mut rules = String::with_capacity(c.services * c.endpoints * 260);

    // filter: always written in full.
    let mut s = String::from("*filter\n");
    for ch in FILTER_CHAINS {
        let _ = writeln!(s, ":{ch} - [0:0]");
    }
    s.push_str(concat!(
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n",
        "COMMIT\n",
        "*nat\n",
    ));

    for ch in NAT_CHAINS {
        let _ = writeln!(chains, ":{ch} - [0:0]");
    }
    rules.push_str(concat!(
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n",
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
    ));
    for i in 0..c.services {
        let write_chains = match &scope {
            Scope::All => true,
            Scope::One { service, .. } => *service == i,
        };
        let vip = c.vip(i);
        for p in c.ports(i) {
            let pn = port_name(c, i, p);
            let proto = p.proto.lower();
            let svc = svc_chain(c, i, p);
            // KUBE-SERVICES: one rule per service port, always written.
            let _ = writeln!(
                rules,
                "-A KUBE-SERVICES -m comment --comment \"{pn} cluster IP\" -m {proto} -p {proto} -d {vip} --dport {} -j {svc}",
                p.port
            );
            // KUBE-NODEPORTS: one rule per NodePort, always written (like KUBE-SERVICES).
            let node_port = c.node_port(i);
            if let Some(np) = node_port {
                let ext = ext_chain(c, i, p);
                let _ = writeln!(
                    rules,
                    "-A KUBE-NODEPORTS -m comment --comment {pn} -m {proto} -p {proto} --dport {np} -j {ext}"
                );
            }
            if !write_chains {
                continue;
            }
            if node_port.is_some() {
                let ext = ext_chain(c, i, p);
                let _ = writeln!(chains, ":{ext} - [0:0]");
                let _ = writeln!(
                    rules,
                    "-A {ext} -m comment --comment \"masquerade traffic for {pn} external destinations\" -j KUBE-MARK-MASQ"
                );
                let _ = writeln!(rules, "-A {ext} -j {svc}");
            }
            let eps = c.endpoints_of(i, change);
            let _ = writeln!(chains, ":{svc} - [0:0]");
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment \"{pn} cluster IP\" -m {proto} -p {proto} -d {vip} --dport {} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
                p.port
            );
            let n = eps.len();
            for (k, ep) in eps.iter().enumerate() {
                let sep = sep_chain(c, i, p, *ep);
                let comment = if large {
                    String::new()
                } else {
                    format!("-m comment --comment \"{pn} -> {ep}:{}\" ", p.target)
                };
                if k + 1 < n {
                    let _ = writeln!(
                        rules,
                        "-A {svc} {comment}-m statistic --mode random --probability {} -j {sep}",
                        probability(n - k)
                    );
                } else {
                    let _ = writeln!(rules, "-A {svc} {comment}-j {sep}");
                }
            }
            for ep in &eps {
                let sep = sep_chain(c, i, p, *ep);
                let comment = if large {
                    String::new()
                } else {
                    format!("-m comment --comment {pn} ")
                };
                let _ = writeln!(chains, ":{sep} - [0:0]");
                let _ = writeln!(rules, "-A {sep} {comment}-s {ep} -j KUBE-MARK-MASQ");
                let _ = writeln!(
                    rules,
                    "-A {sep} {comment}-m {proto} -p {proto} -j DNAT --to-destination {ep}:{}",
                    p.target
                );
            }
        }
    }
    rules.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    if let Scope::One { stale, .. } = &scope {
        for ch in stale.iter() {
            let _ = writeln!(chains, ":{ch} - [0:0]");
            let _ = writeln!(rules, "-X {ch}");
        }
    }
    s.push_str(&chains);
    s.push_str(&rules);
    s.push_str("COMMIT\n");
    s
}

/// Rules (`-A` lines) in a restore text.
pub fn rule_count(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("-A ")).count()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn cluster(n: usize) -> SynthCluster {
        SynthCluster::new(
            n,
            3,
            (1..=3).map(|i| Ipv4Addr::new(10, 244, 1, i)).collect(),
        )
    }

    #[test]
    fn probabilities_are_printed_like_kube_proxy() {
        assert_eq!(probability(3), "0.3333333333");
        assert_eq!(probability(2), "0.5000000000");
        assert_eq!(probability(10), "0.1000000000");
    }

    #[test]
    fn layout_of_a_small_ruleset() {
        let c = cluster(3);
        let t = full(&c, None);
        let svc = svc_chain(&c, 2, &super::super::model::TCP);
        // The last service port is the last KUBE-SERVICES rule before the NodePort one.
        let services: Vec<&str> = t
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES"))
            .collect();
        assert_eq!(services.len(), 2 + 1 + 2 + 1, "{t}");
        assert!(services[services.len() - 1].contains("--dst-type LOCAL -j KUBE-NODEPORTS"));
        assert!(services[services.len() - 2].contains("-p udp -d 10.96.0.3 --dport 53"));
        assert!(
            services[services.len() - 3].contains(&format!("-d 10.96.0.3 --dport 80 -j {svc}"))
        );
        assert!(t.contains(&format!("-A {svc} -m comment --comment \"bench/svc-00002:http -> 10.244.1.1:8080\" -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-")));
        assert!(t.contains("-m tcp -p tcp -j DNAT --to-destination 10.244.1.3:8080"));
        assert!(t.contains("! -s 10.224.0.0/11 -j KUBE-MARK-MASQ"));
        assert!(t.starts_with("*filter\n") && t.ends_with("COMMIT\n"));
        // Every referenced chain is declared.
        for l in t.lines().filter(|l| l.starts_with("-A ")) {
            if let Some(target) = l.split(" -j ").nth(1) {
                let target = target.split(' ').next().unwrap_or_default();
                if target.starts_with("KUBE-") {
                    assert!(
                        t.contains(&format!(":{target} - [0:0]")),
                        "{target} undeclared"
                    );
                }
            }
        }
    }

    #[test]
    fn partial_sync_rewrites_one_service_and_drops_the_stale_endpoint() {
        let c = cluster(5);
        let ch = Change {
            service: c.changing(),
            generation: 1,
        };
        let prev = Change {
            service: ch.service,
            generation: 0,
        };
        let t = partial(&c, ch, prev);
        let stale = stale_chains(&c, ch, prev);
        assert_eq!(stale.len(), 1);
        assert!(t.contains(&format!("-X {}", stale[0])));
        // KUBE-SERVICES is complete, only one KUBE-SVC chain is declared.
        assert_eq!(
            t.lines()
                .filter(|l| l.starts_with("-A KUBE-SERVICES"))
                .count(),
            5 + 2 + 1
        );
        assert_eq!(t.lines().filter(|l| l.starts_with(":KUBE-SVC-")).count(), 1);
        // 7 service ports x (1 + 1 + 3 + 3 x 2) + POSTROUTING/MARK-MASQ 4 + NodePort 1 + filter 3.
        assert_eq!(rule_count(&full(&c, None)), 7 * 11 + 4 + 1 + 3);
    }

    #[test]
    fn node_ports_go_through_kube_nodeports_and_kube_ext() {
        let c = cluster(3).with_node_ports(20000);
        let t = full(&c, None);
        let p = &super::super::model::TCP;
        let (ext, svc) = (ext_chain(&c, 2, p), svc_chain(&c, 2, p));
        assert_eq!(&ext[9..], &svc[9..], "the same hash as the service chain");
        assert!(t.contains(&format!(":{ext} - [0:0]")), "{t}");
        assert!(
            t.contains(&format!("-m tcp -p tcp --dport 20002 -j {ext}\n")),
            "{t}"
        );
        assert!(t.contains(&format!("-A {ext} -j {svc}\n")), "{t}");
        // One NodePort rule per service port (the measured services also have UDP).
        let nodeports = t
            .lines()
            .filter(|l| l.starts_with("-A KUBE-NODEPORTS"))
            .count();
        assert_eq!(nodeports, 2 + 1 + 2);
        // ClusterIP clusters have none.
        assert!(!full(&cluster(3), None).contains("-A KUBE-NODEPORTS"));
    }
}
