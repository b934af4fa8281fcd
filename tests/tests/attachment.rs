//! Health that tells the truth: /healthz, /readyz and `socklb status` ask the kernel
//! whether the programs are attached (each pinned link's info), so a hook detached
//! behind the agent's back (here with `bpftool link detach`, as a removed cgroup or
//! another tool would) is reported, with the hook named, instead of "healthy".
//!
//! They need root, bpffs, cgroup v2, iproute2 and bpftool: outside CI they print
//! SKIPPED and pass when those are missing; under CI=true they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use socklb_core::builders;
use socklb_tests::http::{self, free_loopback_port};
use socklb_tests::{
    Cluster, ClusterOptions, ManifestDir, TcpProbe, TestCgroup, require_privileges, socklb,
    wait_until,
};

/// Longer than the agent's housekeeping interval (10 s), which runs the check.
const WAIT: Duration = Duration::from_secs(25);

fn status(c: &Cluster, cgroup: Option<&std::path::Path>) -> (bool, Value) {
    let pins = c.pins.path().display().to_string();
    let mut args = vec!["status", "-o", "json", "--bpffs", pins.as_str()];
    let cg;
    if let Some(path) = cgroup {
        cg = path.display().to_string();
        args.extend(["--cgroup", cg.as_str()]);
    }
    let out = socklb(args).unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status printed no report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

fn problems(report: &Value) -> Vec<String> {
    report["attachment_problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_detached_hook_makes_health_and_status_fail_and_names_the_hook() {
    if !require_privileges() {
        return;
    }
    let src = ManifestDir::new().unwrap();
    let service = builders::merge(
        builders::service_object("e2e", "web", "10.96.0.10", &[("http", "TCP", 80)]),
        serde_json::json!({"spec": {"ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}}),
    );
    let slice = builders::slice_object(
        "e2e",
        "web-1",
        "web",
        &[("http", "TCP", 8080)],
        &["10.244.0.11"],
    );
    src.write("web.yaml", &builders::manifest_text(&[service, slice]))
        .unwrap();
    let addr = free_loopback_port();
    let opts = ClusterOptions {
        agent_args: ["--health-addr", &addr.to_string()]
            .map(String::from)
            .to_vec(),
        ..ClusterOptions::default()
    };
    let mut c = Cluster::start_with(src.path(), &opts).unwrap();
    assert!(
        wait_until(WAIT, || c.agent.log().contains("ready")
            && http::status(addr, "/readyz") == Some(200)),
        "{}",
        c.agent.log()
    );
    let to = "10.96.0.10:80".parse().unwrap();
    assert_eq!(c.tcp(&TcpProbe::new(to).count(3)).unwrap().ok, 3);

    // Attached: healthy, and status agrees, for the right cgroup only.
    assert_eq!(http::status(addr, "/healthz"), Some(200));
    let (ok, report) = status(&c, Some(c.cgroup.path()));
    assert!(ok && problems(&report).is_empty(), "{report}");
    let cgroup_id = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(c.cgroup.path()).unwrap().ino()
    };
    let connect = report["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["pin"] == "link_connect4")
        .cloned()
        .unwrap();
    assert_eq!(
        connect["attached_to"],
        format!("cgroup {cgroup_id}"),
        "{report}"
    );
    let other = TestCgroup::new().unwrap();
    let (ok, report) = status(&c, Some(other.path()));
    assert!(!ok, "status must fail for another cgroup: {report}");
    assert!(
        problems(&report)
            .iter()
            .any(|p| p.contains("link_connect4 is attached to another cgroup")),
        "{report}"
    );

    // Detached behind the agent's back: connects are no longer translated, and every
    // report says so, naming the hook.
    let pin = c.pins.path().join("link_connect4");
    let out = Command::new("bpftool")
        .args(["link", "detach", "pinned"])
        .arg(&pin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = c.tcp(&TcpProbe::new(to).count(1).timeout_ms(300)).unwrap();
    assert_eq!(r.ok, 0, "untranslated now: {r:?}");
    assert!(
        wait_until(WAIT, || http::status(addr, "/healthz") == Some(503)),
        "/healthz still says healthy\n{}",
        c.agent.log_tail(20)
    );
    let body = http::body(addr, "/healthz").unwrap_or_default();
    assert!(body.contains("link_connect4 is detached"), "{body}");
    assert_eq!(http::status(addr, "/readyz"), Some(503));
    assert!(
        http::body(addr, "/readyz")
            .unwrap_or_default()
            .contains("data path not attached"),
    );
    assert!(c.agent.log().contains("the data path is not attached"));
    let (ok, report) = status(&c, None);
    assert!(!ok, "status must fail: {report}");
    assert!(
        problems(&report)
            .iter()
            .any(|p| p.contains("link_connect4 is detached")),
        "{report}"
    );
    c.shutdown().unwrap();
}
