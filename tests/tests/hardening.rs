//! Bad input next to a healthy service: the real agent on the real kernel, with a
//! client using the healthy services the whole time while invalid or conflicting
//! objects are added to the manifest directory and removed again. The healthy
//! services must not lose a single connection or datagram.
//!
//! The bad-object test runs in both families (`::ipv4`, `::ipv6`): the healthy
//! services are of that family only, the special addresses are the family's own
//! (`::`, `::1`, `fe80::`, `ff02::` in IPv6), and each run adds objects of the other
//! family or with an address of the wrong family in one field.
//!
//! They need root, bpffs, cgroup v2 and iproute2: outside CI they print SKIPPED and
//! pass when those are missing; under CI=true they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, time::Duration};

use serde_json::{Value, json};
use socklb_core::builders;
use socklb_tests::{
    Cluster, ManifestDir, TcpProbe, UdpProbe, family::Family, require_privileges, wait_until,
};

const WEB: &str = "10.96.0.10:80";
const DNS: &str = "10.96.0.53:53";
const WAIT: Duration = Duration::from_secs(15);
/// The healthy services' age: rivals that are newer (or undated) lose to them.
const CREATED: &str = "2025-01-01T00:00:00Z";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// web and dns, rewritten for `f`.
fn healthy_manifests(f: Family) -> ManifestDir {
    let dir = ManifestDir::new().unwrap();
    dir.write(
        "web.yaml",
        &f.manifests(&web_manifest(&["10.244.0.11", "10.244.0.12"])),
    )
    .unwrap();
    let dns = builders::merge(
        builders::service_object("e2e", "dns", "10.96.0.53", &[("dns", "UDP", 53)]),
        json!({"metadata": {"creationTimestamp": CREATED}}),
    );
    let dns_slice = builders::slice_object(
        "e2e",
        "dns-1",
        "dns",
        &[("dns", "UDP", 5353)],
        &["10.244.0.21", "10.244.0.22"],
    );
    dir.write(
        "dns.yaml",
        &f.manifests(&builders::manifest_text(&[dns, dns_slice])),
    )
    .unwrap();
    dir
}

/// web (created at [`CREATED`]) and its slice with these endpoint addresses.
fn web_manifest(addresses: &[&str]) -> String {
    let web = builders::merge(
        builders::service_object("e2e", "web", "10.96.0.10", &[("http", "TCP", 80)]),
        json!({"metadata": {"creationTimestamp": CREATED}}),
    );
    builders::manifest_text(&[web, slice_object("web-1", "web", addresses)])
}

/// A Service `name` with `overrides` merged over a ClusterIP Service on 10.96.0.10:80.
fn service(name: &str, overrides: Value) -> Value {
    builders::merge(
        builders::service_object("e2e", name, "10.96.0.10", &[("http", "TCP", 80)]),
        overrides,
    )
}

/// An EndpointSlice `name` of Service `svc` with port http 8080 and these endpoints.
fn slice_object(name: &str, svc: &str, addresses: &[&str]) -> Value {
    builders::slice_object("e2e", name, svc, &[("http", "TCP", 8080)], addresses)
}

fn text(objects: &[Value]) -> String {
    builders::manifest_text(objects)
}

/// One bad input: a file to add (and remove again), and a log line that shows the
/// agent has read and judged it.
struct Bad {
    what: &'static str,
    file: &'static str,
    text: String,
    logged: &'static str,
}

/// The address family `f`'s special addresses that the API server refuses as
/// endpoints: (unspecified, loopback, link-local, multicast).
fn special_addresses(f: Family) -> [&'static str; 4] {
    match f {
        Family::V4 => ["0.0.0.0", "127.0.0.1", "169.254.169.254", "224.0.0.1"],
        Family::V6 => ["::", "::1", "fe80::1", "ff02::1"],
    }
}

/// The bad inputs of a run in family `f`: texts written with IPv4 test addresses
/// are rewritten for `f` (the family's special addresses are written as they are, and
/// the rewrite leaves IPv6 text alone), then the objects of the wrong family, as is.
fn bad_objects(f: Family) -> Vec<Bad> {
    let mut bad = bad_objects_of_any_family(f);
    for b in &mut bad {
        b.text = f.manifests(&b.text);
    }
    bad.extend(wrong_family_objects(f));
    bad
}

fn bad_objects_of_any_family(f: Family) -> Vec<Bad> {
    let [unspecified, loopback, link_local, multicast] = special_addresses(f);
    let conflict = "two services claim one frontend";
    let many_endpoints: Vec<String> = (0..1001)
        .map(|i| format!("10.244.{}.{}", 100 + i / 250, 1 + i % 250))
        .collect();
    let many_endpoints: Vec<&str> = many_endpoints.iter().map(String::as_str).collect();
    let created = |t: &str| json!({"metadata": {"creationTimestamp": t}});
    vec![
        Bad {
            what: "a newer Service on web's cluster IP and port, without endpoints",
            file: "conflict-newer.yaml",
            text: text(&[service("conflict-newer", created("2025-06-01T00:00:00Z"))]),
            logged: conflict,
        },
        Bad {
            what: "an undated Service on web's frontend whose name sorts first",
            file: "aaa.yaml",
            text: text(&[service("aaa", json!({}))]),
            logged: conflict,
        },
        Bad {
            what: "an undated UDP Service on dns's frontend",
            file: "aaa-dns.yaml",
            text: text(&[builders::service_object(
                "e2e",
                "aaa-dns",
                "10.96.0.53",
                &[("dns", "UDP", 53)],
            )]),
            logged: conflict,
        },
        Bad {
            what: "an older Service with web's cluster IP as an external IP",
            file: "extip.yaml",
            text: text(&[service(
                "extip",
                builders::merge(
                    created("2000-01-01T00:00:00Z"),
                    json!({"spec": {"clusterIP": "10.96.0.77", "externalIPs": ["10.96.0.10"]}}),
                ),
            )]),
            logged: conflict,
        },
        Bad {
            what: "an unspecified endpoint (0.0.0.0, ::) in a second slice of web",
            file: "web-unspecified.yaml",
            text: text(&[slice_object("web-bad", "web", &[unspecified])]),
            logged: "web-bad",
        },
        Bad {
            what: "loopback, link-local and multicast endpoints for web",
            file: "web-special.yaml",
            text: text(&[
                slice_object("web-loopback", "web", &[loopback]),
                slice_object("web-linklocal", "web", &[link_local]),
                slice_object("web-multicast", "web", &[multicast]),
            ]),
            logged: "web-multicast",
        },
        Bad {
            what: "a slice of web with more endpoints than the API allows",
            file: "web-huge.yaml",
            text: text(&[slice_object("web-huge", "web", &many_endpoints)]),
            logged: "web-huge",
        },
        Bad {
            what: "an unspecified cluster IP (the NodePort key) on web's port",
            file: "zero.yaml",
            text: text(&[service("zero", json!({"spec": {"clusterIP": unspecified}}))]),
            logged: "Service e2e/zero",
        },
        Bad {
            what: "a loopback cluster IP",
            file: "loop.yaml",
            text: text(&[service("loop", json!({"spec": {"clusterIP": loopback}}))]),
            logged: "Service e2e/loop",
        },
        Bad {
            what: "an unspecified external IP",
            file: "extzero.yaml",
            text: text(&[service(
                "extzero",
                json!({"spec": {"clusterIP": "10.96.0.78", "externalIPs": [unspecified]}}),
            )]),
            logged: "Service e2e/extzero",
        },
        Bad {
            what: "ports out of range, unknown protocols, duplicate names",
            file: "ports.yaml",
            text: text(&[
                service(
                    "port-range",
                    json!({"spec": {"ports": [{"name": "http", "port": 70000}]}}),
                ),
                service(
                    "proto",
                    json!({"spec": {"ports": [{"name": "http", "port": 80, "protocol": "tcp"}]}}),
                ),
                service(
                    "dup-names",
                    json!({"spec": {"ports": [
                        {"name": "a", "port": 80, "protocol": "TCP"},
                        {"name": "a", "port": 81, "protocol": "UDP"},
                    ]}}),
                ),
            ]),
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

/// Objects that are wrong for the family `f` of the healthy services (the API server
/// accepts the first two: they are warnings that serve nothing, not errors).
fn wrong_family_objects(f: Family) -> Vec<Bad> {
    let other = match f {
        Family::V4 => Family::V6,
        Family::V6 => Family::V4,
    };
    let ip = |family: Family, v4: &str| family.ip_str(v4).to_string();
    let other_pod = ip(other, "10.244.0.99");
    vec![
        Bad {
            what: "a slice of web of the other family (web has no cluster IP of it)",
            file: "web-other-family.yaml",
            text: other.manifests(&text(&[slice_object("web-other", "web", &["10.244.0.99"])])),
            logged: "EndpointSlice of a Service without an",
        },
        Bad {
            what: "an external IP of the other family (web's frontend kept)",
            file: "ext-other-family.yaml",
            text: text(&[service(
                "ext-other",
                json!({"spec": {
                    "clusterIP": ip(f, "10.96.0.80"),
                    "externalIPs": [ip(other, "10.96.0.10")],
                }}),
            )]),
            logged: "cluster IP; not served",
        },
        Bad {
            what: "an endpoint of the other family in a slice of web's family",
            file: "web-mixed.yaml",
            text: text(&[builders::merge(
                slice_object("web-mixed", "web", &[other_pod.as_str()]),
                json!({"addressType": f.name()}),
            )]),
            logged: "web-mixed",
        },
        Bad {
            what: "a cluster IP of the other family than spec.ipFamilies says",
            file: "wrong-family.yaml",
            text: text(&[service(
                "wrong-family",
                json!({"spec": {"clusterIP": ip(other, "10.96.0.79"), "ipFamilies": [f.name()]}}),
            )]),
            logged: "Service e2e/wrong-family",
        },
        Bad {
            what: "clusterIPs of two families under SingleStack",
            file: "single-two.yaml",
            text: text(&[service(
                "single-two",
                json!({"spec": {
                    "clusterIP": ip(f, "10.96.0.81"),
                    "clusterIPs": [ip(f, "10.96.0.81"), ip(other, "10.96.0.81")],
                    "ipFamilyPolicy": "SingleStack",
                }}),
            )]),
            logged: "Service e2e/single-two",
        },
    ]
}

// Bad input of each family next to healthy services of that family.
socklb_tests::each_family!(bad_objects_never_disturb_a_healthy_service);

fn bad_objects_never_disturb_a_healthy_service(f: Family) {
    if !require_privileges() {
        return;
    }
    let addr = |s: &str| f.sock_str(s);
    let src = healthy_manifests(f);
    let mut c = Cluster::start(src.path()).unwrap();
    c.wait_tcp(&TcpProbe::new(addr(WEB)).count(20), WAIT, |r| r.ok == 20)
        .unwrap();
    c.wait_udp(&UdpProbe::new(addr(DNS)).sockets(4), WAIT, |r| {
        r.replies == 4
    })
    .unwrap();
    let bad = bad_objects(f);
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
                &f.manifests(&web_manifest(&[
                    "10.244.0.11",
                    "10.244.0.12",
                    special_addresses(f)[0],
                ])),
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

#[test]
fn a_second_agent_on_the_same_pin_directory_refuses_and_the_first_serves_on() {
    if !require_privileges() {
        return;
    }
    let src = healthy_manifests(Family::V4);
    let mut c = Cluster::start(src.path()).unwrap();
    c.wait_tcp(&TcpProbe::new(addr(WEB)).count(5), WAIT, |r| r.ok == 5)
        .unwrap();
    let mut second = socklb_tests::Agent::start(c.agent.config()).unwrap();
    let exited = wait_until(WAIT, || !matches!(second.try_wait(), Ok(None)));
    assert!(exited, "the second agent kept running:\n{}", second.log());
    let status = second.try_wait().unwrap().unwrap();
    assert!(!status.success(), "{status}");
    assert!(
        second.log().contains("is in use by another socklb agent"),
        "{}",
        second.log()
    );
    // `socklb uninstall` refuses too while the agent runs.
    let pins = c.pins.path().display().to_string();
    let out = socklb_tests::socklb(["uninstall", "--bpffs", pins.as_str()]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    let r = c.tcp(&TcpProbe::new(addr(WEB)).count(50)).unwrap();
    assert_eq!(r.ok, 50, "the first agent's data path is untouched: {r:?}");
    c.shutdown().unwrap();
}
