//! `socklb explain` against the real agent's maps and links, one verdict at a time, in
//! both families: served, refused (no endpoints; another port of a service address),
//! unreachable (internalTrafficPolicy Local, none here), not translated (not a service
//! address; a cgroup outside the hooks' one), not attached (a detached hook; no TC
//! program for traffic from outside), and a client found by its network namespace.
//! Each verdict is checked against what a real connection gets where one is made.
//!
//! They need root, bpffs, cgroup v2, iproute2 and bpftool: outside CI they print
//! SKIPPED and pass when those are missing; under CI=true they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use socklb_tests::family::Family;
use socklb_tests::{
    Child, Cluster, ClusterOptions, ManifestDir, SpawnOpts, TcpProbe, TestCgroup,
    require_privileges, socklb,
};

const WAIT: Duration = Duration::from_secs(15);

const MANIFESTS: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: e2e}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, protocol: TCP, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: web-1, namespace: e2e, labels: {kubernetes.io/service-name: web}}
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints:
- {addresses: [10.244.0.11], nodeName: here}
- {addresses: [10.244.0.12], nodeName: here}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: e2e}
spec:
  clusterIP: 10.96.0.99
  ports: [{name: http, protocol: TCP, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: e2e}
spec:
  clusterIP: 10.96.0.40
  internalTrafficPolicy: Local
  ports: [{name: http, protocol: TCP, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata: {name: local-1, namespace: e2e, labels: {kubernetes.io/service-name: local}}
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints:
- {addresses: [10.244.0.51], nodeName: elsewhere}
";

/// `socklb explain -o json ... TARGET`: the one answer (or several, for a netns).
fn explain(c: &Cluster, args: &[&str], target: &str) -> Vec<Value> {
    let pins = c.pins.path().display().to_string();
    let manifests = c.manifests.path().display().to_string();
    let mut all = vec![
        "explain",
        "-o",
        "json",
        "--bpffs",
        pins.as_str(),
        "--manifests",
        manifests.as_str(),
        "--node",
        "here",
    ];
    all.extend_from_slice(args);
    all.push(target);
    let out = socklb(&all).unwrap();
    assert!(
        out.status.success(),
        "socklb {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn one(answers: Vec<Value>) -> Value {
    assert_eq!(answers.len(), 1, "{answers:?}");
    answers.into_iter().next().unwrap()
}

fn text(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap_or_default().to_string()
}

socklb_tests::each_family!(explain_says_what_a_connection_gets_and_why);

fn explain_says_what_a_connection_gets_and_why(f: Family) {
    if !require_privileges() {
        return;
    }
    let src = ManifestDir::new().unwrap();
    src.write("objects.yaml", &f.manifests(MANIFESTS)).unwrap();
    let opts = ClusterOptions {
        node: Some("here".into()),
        ..Default::default()
    };
    let mut c = Cluster::start_with(src.path(), &opts).unwrap();
    let web = f.sock_str("10.96.0.10:80");
    c.wait_tcp(&TcpProbe::new(web).count(2), WAIT, |r| r.ok == 2)
        .unwrap();
    let s = |v4: &str| f.sock_str(v4).to_string();
    let cgroup = c.cgroup.path().display().to_string();
    let from = ["--from-cgroup", cgroup.as_str()];

    // Served: the backends, and a real connection agrees.
    let e = one(explain(&c, &from, &s("10.96.0.10:80")));
    assert_eq!(e["verdict"], "served", "{e:#}");
    let backends: Vec<String> = e["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        backends,
        [s("10.244.0.11:8080"), s("10.244.0.12:8080")],
        "{e:#}"
    );
    assert_eq!(text(&e, "service"), "e2e/web port http (ClusterIP)");

    // Refused: no endpoints at all, said as such; connect() agrees.
    let e = one(explain(&c, &from, &s("10.96.0.99:80")));
    assert_eq!(e["verdict"], "refused", "{e:#}");
    assert!(
        text(&e, "reason").contains("no endpoints for this port"),
        "{e:#}"
    );
    let r = c
        .tcp(&TcpProbe::new(f.sock_str("10.96.0.99:80")).count(1))
        .unwrap();
    assert_eq!(r.error("ECONNREFUSED"), 1, "{r:?}");

    // Refused: another port of a service address (the address wildcard).
    let e = one(explain(&c, &from, &s("10.96.0.10:81")));
    assert_eq!(e["verdict"], "refused", "{e:#}");
    assert!(text(&e, "reason").contains("without port 81/TCP"), "{e:#}");

    // Unreachable: internalTrafficPolicy Local, the only endpoint elsewhere.
    let e = one(explain(&c, &from, &s("10.96.0.40:80")));
    assert_eq!(e["verdict"], "unreachable", "{e:#}");
    assert!(
        text(&e, "reason").contains("none of its 1 endpoints runs on this node"),
        "{e:#}"
    );
    let r = c
        .tcp(&TcpProbe::new(f.sock_str("10.96.0.40:80")).count(1))
        .unwrap();
    assert_eq!(r.error("EHOSTUNREACH"), 1, "{r:?}");

    // Not translated: an address no service has.
    let e = one(explain(&c, &from, &s("192.0.2.200:80")));
    assert_eq!(e["verdict"], "not-translated", "{e:#}");
    assert!(
        text(&e, "reason").contains("is not a service address"),
        "{e:#}"
    );

    // Not translated: a cgroup beside the hooks' one.
    let beside = TestCgroup::new().unwrap();
    let beside_path = beside.path().display().to_string();
    let e = one(explain(
        &c,
        &["--from-cgroup", beside_path.as_str()],
        &s("10.96.0.10:80"),
    ));
    assert_eq!(e["verdict"], "not-translated", "{e:#}");
    assert!(
        text(&e, "reason").contains("is not under the cgroup the socket hooks are attached to"),
        "{e:#}"
    );

    // A client found by its network namespace: a process of the hooks' cgroup in the
    // node's namespace.
    let mut sleeper = Command::new("sleep");
    sleeper.arg("60");
    let sleeper = Child::spawn(
        sleeper,
        &SpawnOpts::new()
            .netns(c.sandbox.node().path())
            .cgroup(c.cgroup.path()),
    )
    .unwrap();
    let answers = explain(
        &c,
        &["--from-netns", c.sandbox.node().name()],
        &s("10.96.0.10:80"),
    );
    let mine = answers
        .iter()
        .find(|a| text(a, "from").contains(&format!("process {}", sleeper.pid())))
        .unwrap_or_else(|| panic!("the sleeper is not among {answers:#?}"));
    assert_eq!(mine["verdict"], "served", "{mine:#}");
    drop(sleeper);

    // From outside: this agent runs without TC programs (--devices none).
    let client = f.ip_str("192.0.2.9").to_string();
    let e = one(explain(
        &c,
        &["--from-outside", client.as_str()],
        &s("10.96.0.10:80"),
    ));
    assert_eq!(e["verdict"], "not-attached", "{e:#}");
    assert!(
        text(&e, "reason").contains("TC ingress program is attached to any device"),
        "{e:#}"
    );

    // Not attached: the family's connect hook detached behind the agent's back.
    let hook = match f {
        Family::V4 => "link_connect4",
        Family::V6 => "link_connect6",
    };
    let out = Command::new("bpftool")
        .args(["link", "detach", "pinned"])
        .arg(c.pins.path().join(hook))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = one(explain(&c, &from, &s("10.96.0.10:80")));
    assert_eq!(e["verdict"], "not-attached", "{e:#}");
    assert!(
        text(&e, "reason").contains(&format!(
            "{} hook is not attached",
            hook.trim_start_matches("link_")
        )),
        "{e:#}"
    );
    let r = c.tcp(&TcpProbe::new(web).count(1).timeout_ms(300)).unwrap();
    assert_eq!(r.ok, 0, "untranslated now: {r:?}");
    c.shutdown().unwrap();
}

/// The plain-text form names the verdict, the reason and the backends.
#[test]
fn explain_prints_a_readable_answer() {
    if !require_privileges() {
        return;
    }
    let src = ManifestDir::new().unwrap();
    src.write("objects.yaml", MANIFESTS).unwrap();
    let opts = ClusterOptions {
        node: Some("here".into()),
        ..Default::default()
    };
    let mut c = Cluster::start_with(src.path(), &opts).unwrap();
    c.wait_tcp(
        &TcpProbe::new("10.96.0.10:80".parse().unwrap()).count(1),
        WAIT,
        |r| r.ok == 1,
    )
    .unwrap();
    let pins = c.pins.path().display().to_string();
    let cgroup = c.cgroup.path().display().to_string();
    let out = socklb([
        "explain",
        "--bpffs",
        pins.as_str(),
        "--from-cgroup",
        cgroup.as_str(),
        "10.96.0.99:80",
    ])
    .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut more = String::new();
    for target in ["10.96.0.10:80", "10.96.0.40:80"] {
        let manifests = c.manifests.path().display().to_string();
        let out = socklb([
            "explain",
            "--bpffs",
            &pins,
            "--from-cgroup",
            &cgroup,
            "--manifests",
            &manifests,
            "--node",
            "here",
            target,
        ])
        .unwrap();
        more.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    assert!(
        more.contains("  verdict:  served: connect() is translated to one of its 2 backends (the application keeps seeing 10.96.0.10:80)\n\
                       \x20 service:  e2e/web port http (ClusterIP)\n\
                       \x20 backends: 10.244.0.11:8080, 10.244.0.12:8080\n"),
        "{more}"
    );
    assert!(
        more.contains("  verdict:  unreachable: connect() fails at once with EHOSTUNREACH: internalTrafficPolicy Local, and none of its 1 endpoints runs on this node (1 ready elsewhere)\n"),
        "{more}"
    );
    assert!(text.starts_with("10.96.0.99:80/TCP from cgroup "), "{text}");
    assert!(
        text.contains("  verdict:  refused: connect() fails at once with ECONNREFUSED: the service has no usable endpoint"),
        "{text}"
    );
    c.shutdown().unwrap();
}
