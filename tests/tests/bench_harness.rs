//! The benchmark harness (`socklb-bench run`, what `cargo xtask bench` drives) at a tiny
//! scale: 10 services, one short repetition of every item (data path direct / socklb /
//! iptables / nft over TCP and UDP, the control plane, the agent's memory), so that it
//! keeps working. It asserts only that the results are well formed and that every mode
//! moved traffic — never how fast: timings on a shared machine are not test material.
//!
//! Needs root, bpffs, cgroup v2, iproute2 (outside CI: SKIPPED when missing; under
//! CI=true: fails), and iptables and nftables, which it installs from Debian's packages
//! when they are missing, as `cargo xtask bench` does. Writes only into a temp dir.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;
use socklb_tests::{TempDir, require_privileges};

const KINDS: [&str; 3] = ["tcp-short", "tcp-long", "udp"];
const MODES: [&str; 5] = ["direct", "socklb", "iptables", "iptables-first", "nft"];

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// iptables-legacy-restore and nft, from Debian's packages when missing.
fn ensure_baseline_tools() {
    if have("iptables-legacy-restore") && have("iptables-nft-restore") && have("nft") {
        return;
    }
    let ok = Command::new("sh")
        .arg("-c")
        .arg("apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends iptables nftables")
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok && have("iptables-legacy-restore") && have("nft"),
        "could not install iptables and nftables (apt-get)"
    );
}

fn spread_ok(v: &Value, what: &str, n: u64) {
    let s = &v[what];
    assert_eq!(s["n"].as_u64(), Some(n), "{what}: {s}");
    for k in ["median", "q1", "q3", "min", "max"] {
        let x = s[k].as_f64().unwrap_or(f64::NAN);
        assert!(x.is_finite() && x >= 0.0, "{what}.{k} = {x}");
    }
    assert!(
        s["min"].as_f64() <= s["median"].as_f64() && s["median"].as_f64() <= s["max"].as_f64(),
        "{what}: {s}"
    );
}

#[test]
fn socklb_bench_run_produces_well_formed_results() {
    if !require_privileges() {
        return;
    }
    ensure_baseline_tools();
    let tmp = TempDir::new("bench-harness").unwrap();
    let out = tmp.path().join("results.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_socklb-bench"))
        .args([
            "run",
            "--services",
            "10",
            "--reps",
            "1",
            "--control-reps",
            "1",
            "--changes",
            "2",
        ])
        .args([
            "--duration-ms",
            "200",
            "--warmup-ms",
            "50",
            "--threads",
            "1",
            "--agent-timeout-s",
            "60",
        ])
        .arg("--out")
        .arg(&out)
        .spawn()
        .unwrap();
    let pid = child.id();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "socklb-bench run failed ({status}); see its output above"
    );

    let r: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(r["schema"], 1);
    assert_eq!(r["meta"]["services"], serde_json::json!([10]));
    assert!(
        r["meta"]["finished_unix"].as_u64().unwrap() >= r["meta"]["started_unix"].as_u64().unwrap()
    );

    // NodePort from outside (item 3): every kind x (direct, socklb, iptables), each with
    // traffic. direct and socklb without errors and with replies from the address the
    // client sent to; iptables' masquerade may time out a connection now and then (its
    // reused ports meet the pods' TIME_WAIT), which is a figure, not a harness failure.
    let np = r["nodeport"].as_array().unwrap();
    assert_eq!(np.len(), KINDS.len() * 3, "{np:?}");
    for kind in KINDS {
        for mode in ["direct", "socklb", "iptables"] {
            let row = np
                .iter()
                .find(|d| d["kind"] == kind && d["mode"] == mode)
                .unwrap_or_else(|| panic!("no NodePort {kind} {mode} row"));
            let run = &row["runs"][0];
            assert!(
                run["ops"].as_u64().unwrap() > 0,
                "NodePort {kind} {mode} moved no traffic: {run}"
            );
            if mode != "iptables" {
                assert_eq!(row["errors"], 0, "NodePort {kind} {mode}: {run}");
                assert_eq!(run["wrong_source"], 0, "NodePort {kind} {mode}: {run}");
            }
            spread_ok(row, "ratio_ops_per_s", 1);
        }
    }
    let np_notes: Vec<&str> = r["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .filter(|n| n.contains("NodePort") && !n.contains(" iptables:"))
        .collect();
    assert!(np_notes.is_empty(), "{np_notes:?}");

    // Data path: every kind x mode once, each with traffic and its ratio to direct.
    let rows = r["datapath"].as_array().unwrap();
    assert_eq!(rows.len(), KINDS.len() * MODES.len(), "{rows:?}");
    for kind in KINDS {
        for mode in MODES {
            let row = rows
                .iter()
                .find(|d| d["kind"] == kind && d["mode"] == mode)
                .unwrap_or_else(|| panic!("no {kind} {mode} row"));
            assert_eq!(row["services"], 10);
            assert_eq!(row["runs"].as_array().unwrap().len(), 1);
            for f in [
                "ops_per_s",
                "p50_us",
                "p99_us",
                "ratio_ops_per_s",
                "ratio_p50",
                "ratio_p99",
            ] {
                spread_ok(row, f, 1);
            }
            let run = &row["runs"][0];
            assert!(
                run["ops"].as_u64().unwrap() > 0,
                "{kind} {mode} moved no traffic: {run}"
            );
            assert!(
                row["backends_seen"].as_u64().unwrap() >= 1,
                "{kind} {mode}: {row}"
            );
            assert!(
                run["latency_us"]["p99"].as_f64().unwrap()
                    >= run["latency_us"]["p50"].as_f64().unwrap()
            );
        }
        let direct = rows
            .iter()
            .find(|d| d["kind"] == kind && d["mode"] == "direct")
            .unwrap();
        assert_eq!(direct["ratio_ops_per_s"]["median"].as_f64(), Some(1.0));
    }

    // Control plane: both iptables backends (10 <= the default cap), nft, the agent.
    let cp = &r["control_plane"];
    for backend in ["legacy", "nft"] {
        let row = cp["iptables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["backend"] == backend)
            .unwrap_or_else(|| panic!("no iptables {backend} row"));
        assert!(row["rules"].as_u64().unwrap() > 10 * 10);
        spread_ok(row, "cold_ms", 1);
        spread_ok(row, "full_sync_ms", 1);
        spread_ok(row, "partial_sync_ms", 2);
    }
    let nft = &cp["nft"][0];
    assert!(nft["rules"].as_u64().unwrap() > 10 * 10);
    spread_ok(nft, "cold_ms", 1);
    spread_ok(nft, "change_ms", 2);
    let agent = &cp["agent"][0];
    assert_eq!(agent["changes"], 2);
    spread_ok(agent, "latency_us", 2);
    spread_ok(agent, "wall_ms", 2);
    assert!(agent["map_ops"]["min"].as_f64().unwrap() > 0.0, "{agent}");

    // Memory.
    let mem = &r["memory"][0];
    assert_eq!(mem["services"], 10);
    assert_eq!(mem["endpoints"], 100);
    for f in [
        "ready_ms",
        "rss_mib",
        "hwm_mib",
        "bpf_maps_mib",
        "agent_fd_maps_mib",
    ] {
        spread_ok(mem, f, 1);
    }
    assert!(mem["rss_mib"]["median"].as_f64().unwrap() > 0.0);
    assert!(!mem["maps"].as_array().unwrap().is_empty());

    // Nothing left behind by the harness (its names carry its pid).
    let netns = String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        !netns.contains(&format!("slb{pid}-")),
        "network namespaces left:\n{netns}"
    );
    let leftover = |dir: &str| {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()).any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("socklb-test-{pid}-"))
                })
            })
            .unwrap_or(false)
    };
    assert!(
        !leftover("/sys/fs/bpf"),
        "pin directories left in /sys/fs/bpf"
    );
    let cgroup_root = socklb_tests::cgroup2_root().unwrap();
    assert!(
        !leftover(cgroup_root.to_str().unwrap()),
        "cgroups left in {}",
        cgroup_root.display()
    );
    assert!(
        !leftover(std::env::temp_dir().to_str().unwrap()),
        "temp dirs left"
    );
}
