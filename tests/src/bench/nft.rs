//! kube-proxy's nftables layout (pkg/proxy/nftables/proxier.go) for a
//! [`SynthCluster`], as `nft -f` input.
//!
//! Table `ip kube-proxy` with kube-proxy's base objects (the `cluster-ips` set, the
//! `service-ips` verdict map `ipv4_addr . inet_proto . inet_service : verdict`, the
//! hooked filter/nat chains, masquerading), then per service port:
//! ```text
//! add chain ip kube-proxy service-HASH-ns/svc/tcp/p
//! add rule ip kube-proxy service-... ip daddr VIP ip saddr != CLUSTER_CIDR jump mark-for-masquerade
//! add rule ip kube-proxy service-... numgen random mod N vmap { 0 : goto endpoint-A , 1 : goto endpoint-B ... }
//! add chain ip kube-proxy endpoint-HASH-ns/svc/tcp/p__EP/TP
//! add rule ip kube-proxy endpoint-... ip saddr EP jump mark-for-masquerade
//! add rule ip kube-proxy endpoint-... meta l4proto tcp dnat to EP:TP
//! add element ip kube-proxy cluster-ips { VIP }
//! add element ip kube-proxy service-ips { VIP . tcp . P : goto service-... }
//! ```
//! A full sync (what kube-proxy sends at start-up) adds and flushes every chain and
//! map before writing it; a change is one transaction that rewrites the changed
//! service's chains, flushes the endpoint chain that became stale and deletes the one
//! that became stale one change earlier (kube-proxy deletes stale chains only in a
//! later sync, after they have been unreferenced for a while).

use std::fmt::Write as _;

use super::model::{CLUSTER_CIDR, Change, PortSpec, SERVICE_CIDR, SynthCluster, hash32};

pub const TABLE: &str = "ip kube-proxy";

fn base_name(c: &SynthCluster, i: usize, p: &PortSpec) -> String {
    let port_name = format!("{}:{}", c.key(i), p.name);
    format!(
        "{}-{}/{}/{}",
        hash32(&format!("{port_name}{}", p.proto.lower()), 8),
        c.key(i),
        p.proto.lower(),
        p.name
    )
}

/// `service-HASH-ns/svc/proto/port`.
pub fn service_chain(c: &SynthCluster, i: usize, p: &PortSpec) -> String {
    format!("service-{}", base_name(c, i, p))
}

/// `endpoint-HASH-ns/svc/proto/port__EP/TP`.
pub fn endpoint_chain(c: &SynthCluster, i: usize, p: &PortSpec, ep: std::net::Ipv4Addr) -> String {
    let port_name = format!("{}:{}", c.key(i), p.name);
    let hash = hash32(
        &format!("{port_name}{}{ep}:{}", p.proto.lower(), p.target),
        8,
    );
    format!(
        "endpoint-{hash}-{}/{}/{}__{ep}/{}",
        c.key(i),
        p.proto.lower(),
        p.name,
        p.target
    )
}

/// The table and its base objects, as kube-proxy's first sync writes them.
pub fn base() -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"add table {TABLE} {{ comment "rules for kube-proxy" ; }}
add set {TABLE} cluster-ips {{ type ipv4_addr ; comment "Active ClusterIPs" ; }}
add set {TABLE} nodeport-ips {{ type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }}
add map {TABLE} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }}
add map {TABLE} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }}
add map {TABLE} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }}
add map {TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }}
add map {TABLE} service-nodeports {{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }}
add chain {TABLE} cluster-ips-check
add chain {TABLE} filter-prerouting-pre-dnat {{ type filter hook prerouting priority -110 ; }}
add chain {TABLE} filter-output-pre-dnat {{ type filter hook output priority -110 ; }}
add chain {TABLE} filter-forward {{ type filter hook forward priority 0 ; }}
add chain {TABLE} filter-input {{ type filter hook input priority 0 ; }}
add chain {TABLE} filter-output {{ type filter hook output priority 0 ; }}
add chain {TABLE} firewall-check
add chain {TABLE} mark-for-masquerade
add chain {TABLE} masquerading
add chain {TABLE} nat-output {{ type nat hook output priority -100 ; }}
add chain {TABLE} nat-postrouting {{ type nat hook postrouting priority 100 ; }}
add chain {TABLE} nat-prerouting {{ type nat hook prerouting priority -100 ; }}
add chain {TABLE} nodeport-endpoints-check
add chain {TABLE} reject-chain {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}
add chain {TABLE} services
add chain {TABLE} service-endpoints-check
"#
    );
    for ch in [
        "cluster-ips-check",
        "filter-prerouting-pre-dnat",
        "filter-output-pre-dnat",
        "filter-forward",
        "filter-input",
        "filter-output",
        "firewall-check",
        "mark-for-masquerade",
        "masquerading",
        "nat-output",
        "nat-postrouting",
        "nat-prerouting",
        "nodeport-endpoints-check",
        "reject-chain",
        "services",
        "service-endpoints-check",
    ] {
        let _ = writeln!(s, "flush chain {TABLE} {ch}");
    }
    let _ = write!(
        s,
        r#"add rule {TABLE} cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule {TABLE} cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment "Drop traffic to unallocated ClusterIPs"
add rule {TABLE} filter-prerouting-pre-dnat ct state new jump firewall-check
add rule {TABLE} filter-forward ct state new jump service-endpoints-check
add rule {TABLE} filter-forward ct state new jump cluster-ips-check
add rule {TABLE} filter-input ct state new jump nodeport-endpoints-check
add rule {TABLE} filter-input ct state new jump service-endpoints-check
add rule {TABLE} filter-output ct state new jump service-endpoints-check
add rule {TABLE} filter-output-pre-dnat ct state new jump firewall-check
add rule {TABLE} filter-output ct state new jump cluster-ips-check
add rule {TABLE} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add rule {TABLE} mark-for-masquerade mark set mark or 0x4000
add rule {TABLE} masquerading mark and 0x4000 == 0 return
add rule {TABLE} masquerading mark set mark xor 0x4000
add rule {TABLE} masquerading masquerade fully-random
add rule {TABLE} nat-output jump services
add rule {TABLE} nat-postrouting jump masquerading
add rule {TABLE} nat-prerouting jump services
add rule {TABLE} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule {TABLE} reject-chain reject
add rule {TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips
add rule {TABLE} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add rule {TABLE} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
"#
    );
    for m in ["cluster-ips", "nodeport-ips"] {
        let _ = writeln!(s, "flush set {TABLE} {m}");
    }
    for m in [
        "firewall-ips",
        "no-endpoint-nodeports",
        "no-endpoint-services",
        "service-ips",
        "service-nodeports",
    ] {
        let _ = writeln!(s, "flush map {TABLE} {m}");
    }
    s
}

/// The chains of service i (all its ports) with `change` applied: the endpoint chains
/// first, since a rule may only name a chain that exists already.
fn write_service(s: &mut String, c: &SynthCluster, i: usize, change: Option<Change>) {
    let vip = c.vip(i);
    for p in c.ports(i) {
        let svc = service_chain(c, i, p);
        let eps = c.endpoints_of(i, change);
        for ep in &eps {
            let epc = endpoint_chain(c, i, p, *ep);
            let _ = writeln!(s, "add chain {TABLE} {epc}");
            let _ = writeln!(s, "flush chain {TABLE} {epc}");
            let _ = writeln!(
                s,
                "add rule {TABLE} {epc} ip saddr {ep} jump mark-for-masquerade"
            );
            let _ = writeln!(
                s,
                "add rule {TABLE} {epc} meta l4proto {} dnat to {ep}:{}",
                p.proto.lower(),
                p.target
            );
        }
        let _ = writeln!(s, "add chain {TABLE} {svc}");
        let _ = writeln!(s, "flush chain {TABLE} {svc}");
        let _ = writeln!(
            s,
            "add rule {TABLE} {svc} ip daddr {vip} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade"
        );
        let mut vmap = String::new();
        for (k, ep) in eps.iter().enumerate() {
            if k > 0 {
                vmap.push_str(" , ");
            }
            let _ = write!(vmap, "{k} : goto {}", endpoint_chain(c, i, p, *ep));
        }
        let _ = writeln!(
            s,
            "add rule {TABLE} {svc} numgen random mod {} vmap {{ {vmap} }}",
            eps.len()
        );
    }
}

fn write_elements(s: &mut String, c: &SynthCluster, i: usize) {
    let vip = c.vip(i);
    let _ = writeln!(s, "add element {TABLE} cluster-ips {{ {vip} }}");
    for p in c.ports(i) {
        let _ = writeln!(
            s,
            "add element {TABLE} service-ips {{ {vip} . {} . {} : goto {} }}",
            p.proto.lower(),
            p.port,
            service_chain(c, i, p)
        );
    }
}

/// kube-proxy's full sync: everything, as one transaction.
pub fn full(c: &SynthCluster, change: Option<Change>) -> String {
    let mut s = base();
    s.reserve(c.services * c.endpoints * 420);
    for i in 0..c.services {
        write_service(&mut s, c, i, change);
        write_elements(&mut s, c, i);
    }
    s
}

/// One transaction applying `change` when the table holds `previous` (generation 0:
/// the original addresses), and held `before_previous` one change earlier (None: there
/// was no earlier change), whose stale chain is deleted now.
pub fn change_tx(
    c: &SynthCluster,
    change: Change,
    previous: Change,
    before_previous: Option<Change>,
) -> String {
    let i = change.service;
    let mut s = String::new();
    write_service(&mut s, c, i, Some(change));
    for p in c.ports(i) {
        let now: Vec<_> = c.endpoints_of(i, Some(change));
        let prev: Vec<_> = c.endpoints_of(i, Some(previous));
        // Newly stale: flushed now.
        for ep in prev.iter().filter(|e| !now.contains(e)) {
            let _ = writeln!(s, "flush chain {TABLE} {}", endpoint_chain(c, i, p, *ep));
        }
        // Stale since the previous change (and not back in use): deleted now.
        if let Some(bp) = before_previous {
            for ep in c
                .endpoints_of(i, Some(bp))
                .iter()
                .filter(|e| !now.contains(e) && !prev.contains(e))
            {
                let _ = writeln!(s, "delete chain {TABLE} {}", endpoint_chain(c, i, p, *ep));
            }
        }
    }
    s
}

/// Rules (`add rule` lines) in an nft script.
pub fn rule_count(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("add rule ")).count()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::bench::model::TCP;

    fn cluster(n: usize) -> SynthCluster {
        SynthCluster::new(
            n,
            3,
            (1..=3).map(|i| Ipv4Addr::new(10, 244, 1, i)).collect(),
        )
    }

    #[test]
    fn layout_of_a_small_ruleset() {
        let c = cluster(2);
        let t = full(&c, None);
        let svc = service_chain(&c, 1, &TCP);
        assert!(
            svc.starts_with("service-") && svc.ends_with("-bench/svc-00001/tcp/http"),
            "{svc}"
        );
        assert!(t.contains(&format!(
            "add element ip kube-proxy service-ips {{ 10.96.0.2 . tcp . 80 : goto {svc} }}"
        )));
        assert!(t.contains(&format!(
            "add rule ip kube-proxy {svc} numgen random mod 3 vmap {{ 0 : goto endpoint-"
        )));
        assert!(t.contains("meta l4proto tcp dnat to 10.244.1.3:8080"));
        assert!(t.contains("meta l4proto udp dnat to 10.244.1.3:5353"));
    }

    #[test]
    fn a_change_rewrites_one_service_and_retires_chains_late() {
        let c = cluster(5);
        let i = c.changing();
        let c1 = Change {
            service: i,
            generation: 1,
        };
        let c2 = Change {
            service: i,
            generation: 2,
        };
        let c0 = Change {
            service: i,
            generation: 0,
        };
        let first = change_tx(&c, c1, c0, None);
        assert_eq!(
            first
                .lines()
                .filter(|l| l.starts_with("flush chain") && l.contains("endpoint-"))
                .count(),
            3 + 1
        );
        assert!(!first.contains("delete chain"));
        let second = change_tx(&c, c2, c1, Some(c0));
        let deleted: Vec<&str> = second
            .lines()
            .filter(|l| l.starts_with("delete chain"))
            .collect();
        assert_eq!(deleted.len(), 1);
        assert!(deleted[0].ends_with(&format!("__{}/8080", c.endpoint(i, 0, None))));
        let third = change_tx(
            &c,
            Change {
                service: i,
                generation: 3,
            },
            c2,
            Some(c1),
        );
        let deleted: Vec<&str> = third
            .lines()
            .filter(|l| l.starts_with("delete chain"))
            .collect();
        assert_eq!(deleted.len(), 1);
        assert!(deleted[0].ends_with(&format!("__{}/8080", c.endpoint(i, 0, Some(c1)))));
    }
}
