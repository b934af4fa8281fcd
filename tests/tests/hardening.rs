//! Bad input next to a healthy service: the real agent on the real kernel, with a
//! client using the healthy services the whole time while invalid or conflicting
//! objects are added to the manifest directory and removed again. The healthy
//! services must not lose a single connection or datagram.
//!
//! They need root, bpffs, cgroup v2 and iproute2: outside CI they print SKIPPED and
//! pass when those are missing; under CI=true they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, time::Duration};

use socklb_tests::{Cluster, ManifestDir, TcpProbe, UdpProbe, require_privileges, wait_until};

const WEB: &str = "10.96.0.10:80";
const DNS: &str = "10.96.0.53:53";
const WAIT: Duration = Duration::from_secs(15);
/// The healthy services' age: rivals that are newer (or undated) lose to them.
const CREATED: &str = "2025-01-01T00:00:00Z";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn healthy_manifests() -> ManifestDir {
    let dir = ManifestDir::new().unwrap();
    dir.write(
        "web.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: e2e, creationTimestamp: \"{CREATED}\"}}\n\
             spec: {{clusterIP: 10.96.0.10, ports: [{{name: http, port: 80, protocol: TCP}}]}}\n---\n{}",
            web_slice(&["10.244.0.11", "10.244.0.12"])
        ),
    )
    .unwrap();
    dir.write(
        "dns.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: dns, namespace: e2e, creationTimestamp: \"{CREATED}\"}}\n\
             spec: {{clusterIP: 10.96.0.53, ports: [{{name: dns, port: 53, protocol: UDP}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
             metadata: {{name: dns-1, namespace: e2e, labels: {{kubernetes.io/service-name: dns}}}}\n\
             ports: [{{name: dns, port: 5353, protocol: UDP}}]\n\
             endpoints: [{{addresses: [10.244.0.21]}}, {{addresses: [10.244.0.22]}}]\n"
        ),
    )
    .unwrap();
    dir
}

/// web's slice with these endpoint addresses (quoted: they may be anything).
fn web_slice(addresses: &[&str]) -> String {
    let eps: Vec<String> = addresses
        .iter()
        .map(|a| format!("{{addresses: [\"{a}\"]}}"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
         metadata: {{name: web-1, namespace: e2e, labels: {{kubernetes.io/service-name: web}}}}\n\
         ports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints: [{}]\n",
        eps.join(", ")
    )
}

/// A Service `name` with the given metadata extras and spec (flow YAML inside `{}`).
fn service(name: &str, meta: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: e2e{meta}}}\nspec: {{{spec}}}\n"
    )
}

/// An EndpointSlice `name` of Service `svc` with one TCP port 8080 and these endpoints.
fn slice(name: &str, svc: &str, addresses: &[&str]) -> String {
    let eps: Vec<String> = addresses
        .iter()
        .map(|a| format!("{{addresses: [\"{a}\"]}}"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
         metadata: {{name: {name}, namespace: e2e, labels: {{kubernetes.io/service-name: {svc}}}}}\n\
         ports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints: [{}]\n",
        eps.join(", ")
    )
}

/// One bad input: a file to add (and remove again), and a log line that shows the
/// agent has read and judged it.
struct Bad {
    what: &'static str,
    file: &'static str,
    text: String,
    logged: &'static str,
}

fn bad_objects() -> Vec<Bad> {
    let conflict = "two services claim one frontend";
    let port80 = "ports: [{name: http, port: 80, protocol: TCP}]";
    let many_endpoints: Vec<String> = (0..1001)
        .map(|i| format!("10.244.{}.{}", 100 + i / 250, 1 + i % 250))
        .collect();
    let many_endpoints: Vec<&str> = many_endpoints.iter().map(String::as_str).collect();
    vec![
        Bad {
            what: "a newer Service on web's cluster IP and port, without endpoints",
            file: "conflict-newer.yaml",
            text: service(
                "conflict-newer",
                ", creationTimestamp: \"2025-06-01T00:00:00Z\"",
                &format!("clusterIP: 10.96.0.10, {port80}"),
            ),
            logged: conflict,
        },
        Bad {
            what: "an undated Service on web's frontend whose name sorts first",
            file: "aaa.yaml",
            text: service("aaa", "", &format!("clusterIP: 10.96.0.10, {port80}")),
            logged: conflict,
        },
        Bad {
            what: "an undated UDP Service on dns's frontend",
            file: "aaa-dns.yaml",
            text: service(
                "aaa-dns",
                "",
                "clusterIP: 10.96.0.53, ports: [{name: dns, port: 53, protocol: UDP}]",
            ),
            logged: conflict,
        },
        Bad {
            what: "an older Service with web's cluster IP as an external IP",
            file: "extip.yaml",
            text: service(
                "extip",
                ", creationTimestamp: \"2000-01-01T00:00:00Z\"",
                &format!("clusterIP: 10.96.0.77, externalIPs: [10.96.0.10], {port80}"),
            ),
            logged: conflict,
        },
        Bad {
            what: "an endpoint 0.0.0.0 in a second slice of web",
            file: "web-unspecified.yaml",
            text: slice("web-bad", "web", &["0.0.0.0"]),
            logged: "web-bad",
        },
        Bad {
            what: "loopback, link-local and multicast endpoints for web",
            file: "web-special.yaml",
            text: [
                slice("web-loopback", "web", &["127.0.0.1"]),
                slice("web-linklocal", "web", &["169.254.169.254"]),
                slice("web-multicast", "web", &["224.0.0.1"]),
            ]
            .join("---\n"),
            logged: "web-multicast",
        },
        Bad {
            what: "a slice of web with more endpoints than the API allows",
            file: "web-huge.yaml",
            text: slice("web-huge", "web", &many_endpoints),
            logged: "web-huge",
        },
        Bad {
            what: "a cluster IP 0.0.0.0 (the NodePort key) on web's port",
            file: "zero.yaml",
            text: service("zero", "", &format!("clusterIP: 0.0.0.0, {port80}")),
            logged: "Service e2e/zero",
        },
        Bad {
            what: "a loopback cluster IP",
            file: "loop.yaml",
            text: service("loop", "", &format!("clusterIP: 127.0.0.1, {port80}")),
            logged: "Service e2e/loop",
        },
        Bad {
            what: "an external IP 0.0.0.0",
            file: "extzero.yaml",
            text: service(
                "extzero",
                "",
                &format!("clusterIP: 10.96.0.78, externalIPs: [0.0.0.0], {port80}"),
            ),
            logged: "Service e2e/extzero",
        },
        Bad {
            what: "ports out of range, unknown protocols, duplicate names",
            file: "ports.yaml",
            text: [
                service(
                    "port-range",
                    "",
                    "clusterIP: 10.96.0.10, ports: [{name: http, port: 70000}]",
                ),
                service(
                    "proto",
                    "",
                    "clusterIP: 10.96.0.10, ports: [{name: http, port: 80, protocol: tcp}]",
                ),
                service(
                    "dup-names",
                    "",
                    "clusterIP: 10.96.0.10, ports: [{name: a, port: 80, protocol: TCP}, {name: a, port: 81, protocol: UDP}]",
                ),
            ]
            .join("---\n"),
            logged: "Service e2e/dup-names",
        },
        Bad {
            what: "a file that is not YAML",
            file: "garbage.yaml",
            text: "kind: Service\nspec: [this is not\n".into(),
            logged: "garbage.yaml",
        },
    ]
}

#[test]
fn bad_objects_never_disturb_a_healthy_service() {
    if !require_privileges() {
        return;
    }
    let src = healthy_manifests();
    let mut c = Cluster::start(src.path()).unwrap();
    c.wait_tcp(&TcpProbe::new(addr(WEB)).count(20), WAIT, |r| r.ok == 20)
        .unwrap();
    c.wait_udp(&UdpProbe::new(addr(DNS)).sockets(4), WAIT, |r| {
        r.replies == 4
    })
    .unwrap();
    let bad = bad_objects();
    // About 1.5 s per bad object: the clients outlast the whole sequence.
    let duration_ms = 1_500 * (bad.len() as u64 + 2) + 2_000;
    let tcp = TcpProbe::new(addr(WEB))
        .duration_ms(duration_ms)
        .interval_ms(2)
        .timeout_ms(2_000);
    let udp = UdpProbe::new(addr(DNS))
        .sockets(2)
        .count(2)
        .timeout_ms(2_000)
        .duration_ms(duration_ms)
        .interval_ms(5);

    let c = &c;
    let (tcp_report, udp_report) = std::thread::scope(|s| {
        let tcp_client = s.spawn(|| c.tcp(&tcp));
        let udp_client = s.spawn(|| c.udp(&udp));
        std::thread::sleep(Duration::from_millis(500));
        for b in &bad {
            let before = c.agent.log().matches(b.logged).count();
            c.manifests.write(b.file, &b.text).unwrap();
            assert!(
                wait_until(WAIT, || c.agent.log().matches(b.logged).count() > before),
                "{}: the agent never reported {:?}; log tail:\n{}",
                b.what,
                b.logged,
                c.agent.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(400));
            c.manifests.remove(b.file).unwrap();
            std::thread::sleep(Duration::from_millis(700));
        }
        // A broken edit of the healthy slice itself: its last valid version stays.
        c.manifests
            .write(
                "web.yaml",
                &format!(
                    "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: e2e, creationTimestamp: \"{CREATED}\"}}\n\
                     spec: {{clusterIP: 10.96.0.10, ports: [{{name: http, port: 80, protocol: TCP}}]}}\n---\n{}",
                    web_slice(&["10.244.0.11", "10.244.0.12", "0.0.0.0"])
                ),
            )
            .unwrap();
        assert!(
            wait_until(WAIT, || c
                .agent
                .log()
                .contains("its last valid version stays in effect")),
            "the invalid edit was not reported; log tail:\n{}",
            c.agent.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(700));
        (
            tcp_client.join().unwrap().unwrap(),
            udp_client.join().unwrap().unwrap(),
        )
    });
    assert!(
        tcp_report.attempts > 1_000,
        "the TCP client ran: {tcp_report:?}"
    );
    assert_eq!(
        tcp_report.failed(),
        0,
        "web's clients must never notice: {tcp_report:?}"
    );
    assert!(
        tcp_report
            .backends
            .keys()
            .all(|b| b == "pod-10.244.0.11" || b == "pod-10.244.0.12"),
        "{tcp_report:?}"
    );
    assert!(udp_report.sent > 100, "the UDP client ran: {udp_report:?}");
    assert_eq!(
        udp_report.failed(),
        0,
        "dns's clients must never notice: {udp_report:?}"
    );
    assert_eq!(udp_report.replies, udp_report.sent, "{udp_report:?}");
    assert_eq!(udp_report.wrong_source, 0, "{udp_report:?}");
}
