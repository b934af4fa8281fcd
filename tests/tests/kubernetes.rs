//! The agent against a Kubernetes API server, end to end: the real `socklb agent`
//! watches an in-process fake API server (real list/watch protocol and JSON, on
//! 127.0.0.1) through a kubeconfig, and programs the real kernel in a sandbox of the
//! test's own; a client in the sandbox sees every change take effect.
//!
//! They need root, bpffs, cgroup v2 and iproute2: outside CI they print SKIPPED and
//! pass when those are missing; under CI=true they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../lb-userspace/tests/kube_fake/mod.rs"]
mod kube_fake;

use socklb_tests::http::{body as http_body, free_loopback_port, status as http_status};
use std::{
    collections::BTreeMap,
    io::Read as _,
    net::{Ipv4Addr, SocketAddr},
    process::{Command, Stdio},
    time::Duration,
};

use kube_fake::{FakeApiServer, Resource};
use serde_json::{Value, json};
use socklb_tests::{
    Agent, AgentConfig, PinDir, Sandbox, TcpProbe, TcpReport, TempDir, TestCgroup, Topology,
    cluster::pod_id, probe_bin, require_privileges, wait_until,
};

const WEB: &str = "10.96.0.10:80";
const NODE: &str = "node-1";
const WAIT: Duration = Duration::from_secs(20);
const PODS: [&str; 3] = ["10.244.0.11", "10.244.0.12", "10.244.0.13"];

fn service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "e2e"},
        "spec": {
            "type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]
        }
    })
}

/// The service's slice with these (address, ready) endpoints.
fn slice(endpoints: &[(&str, bool)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready}, "nodeName": NODE}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc12", "namespace": "e2e", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

fn node() -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "labels": {"topology.kubernetes.io/zone": "z1"}}})
}

/// Sandbox, cgroup, pins, the fake API server and its kubeconfig.
struct Env {
    runtime: tokio::runtime::Runtime,
    api: FakeApiServer,
    kubeconfig_dir: TempDir,
    sandbox: Sandbox,
    cgroup: TestCgroup,
    pins: PinDir,
}

impl Env {
    fn new(api_up: bool) -> Env {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let api = if api_up {
            runtime.block_on(FakeApiServer::start_new())
        } else {
            runtime.block_on(async { FakeApiServer::unreachable() })
        };
        let kubeconfig_dir = TempDir::new("kubeconfig").unwrap();
        std::fs::write(
            kubeconfig_dir.path().join("config"),
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
                 clusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\n\
                 users: [{{name: fake, user: {{}}}}]\n\
                 contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n",
                api.url()
            ),
        )
        .unwrap();
        let mut sandbox = Topology::new().build().unwrap();
        for ip in PODS {
            let ip: Ipv4Addr = ip.parse().unwrap();
            sandbox.add_pod(ip).unwrap();
            sandbox.serve(ip, &pod_id(ip), &[8080], &[]).unwrap();
        }
        Env {
            runtime,
            api,
            kubeconfig_dir,
            sandbox,
            cgroup: TestCgroup::new().unwrap(),
            pins: PinDir::new().unwrap(),
        }
    }

    fn agent_config(&self, extra: &[&str]) -> AgentConfig {
        let mut config = AgentConfig::kubernetes(
            self.kubeconfig_dir.path().join("config"),
            self.cgroup.path(),
            self.pins.path(),
            NODE,
        );
        // In the host's network namespace: no TC programs on this machine's interfaces.
        config.extra_args = ["--devices", "none"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
        config
    }

    fn tcp(&self, count: u64) -> TcpReport {
        self.sandbox
            .tcp_probe(
                Some(&self.cgroup),
                &TcpProbe::new(WEB.parse().unwrap())
                    .count(count)
                    .timeout_ms(3000),
            )
            .unwrap()
    }

    /// Probes until `done` accepts a report; panics with the agent's log on timeout.
    fn wait(
        &self,
        agent: &mut Agent,
        count: u64,
        what: &str,
        done: impl Fn(&TcpReport) -> bool,
    ) -> TcpReport {
        let mut last = None;
        let ok = wait_until(WAIT, || {
            assert!(agent.is_running(), "the agent exited:\n{}", agent.log());
            let r = self.tcp(count);
            let accepted = done(&r);
            last = Some(r);
            accepted
        });
        assert!(
            ok,
            "{what}: not reached; last report {last:?}\nagent log:\n{}",
            agent.log_tail(60)
        );
        last.unwrap()
    }

    fn shutdown(&self, agent: &mut Agent) {
        let status = agent.stop().unwrap();
        assert!(status.success(), "agent exit {status}");
        let out = socklb_tests::uninstall(self.cgroup.path(), self.pins.path()).unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

fn pod(ip: &str) -> String {
    pod_id(ip.parse().unwrap())
}

fn backends(r: &TcpReport) -> Vec<String> {
    r.backends.keys().cloned().collect()
}

#[test]
fn api_changes_reach_the_kernel() {
    if !require_privileges() {
        return;
    }
    let env = Env::new(true);
    env.api.apply(node());
    env.api.apply(service());
    env.api.apply(slice(&[(PODS[0], true), (PODS[1], true)]));
    let mut agent = Agent::start(&env.agent_config(&[])).unwrap();

    let r = env.wait(&mut agent, 100, "initial sync", |r| {
        r.ok == 100 && r.backends.len() == 2
    });
    assert_eq!(backends(&r), [pod(PODS[0]), pod(PODS[1])]);
    assert_eq!(
        r.peers,
        BTreeMap::from([(WEB.to_string(), 100)]),
        "getpeername shows the service"
    );

    // Scale up.
    env.api
        .apply(slice(&[(PODS[0], true), (PODS[1], true), (PODS[2], true)]));
    env.wait(&mut agent, 150, "scale-up", |r| {
        r.ok == 150 && r.backends.len() == 3
    });
    // Scale down: .11 leaves (its pod still answers, so a connection sent there shows).
    env.api.apply(slice(&[(PODS[1], true), (PODS[2], true)]));
    let r = env.wait(&mut agent, 150, "scale-down", |r| {
        r.ok == 150 && !r.backends.contains_key(&pod(PODS[0]))
    });
    assert_eq!(backends(&r), [pod(PODS[1]), pod(PODS[2])]);
    // Readiness flip.
    env.api.apply(slice(&[(PODS[1], false), (PODS[2], true)]));
    let r = env.wait(&mut agent, 60, "readiness flip", |r| {
        r.ok == 60 && r.backends.len() == 1
    });
    assert_eq!(backends(&r), [pod(PODS[2])]);
    // Slice deleted: no endpoints, refused.
    env.api
        .delete(Resource::EndpointSlices, "e2e", "web-abc12")
        .unwrap();
    env.wait(&mut agent, 1, "slice deleted", |r| {
        r.error("ECONNREFUSED") == 1
    });
    // Service deleted: the address is not translated any more (and has no route).
    env.api.apply(slice(&[(PODS[0], true)]));
    env.wait(&mut agent, 5, "slice back", |r| r.ok == 5);
    env.api.delete(Resource::Services, "e2e", "web").unwrap();
    env.wait(&mut agent, 1, "service deleted", |r| {
        r.error("ENETUNREACH") == 1
    });
    env.shutdown(&mut agent);
}

#[test]
fn watch_expiry_and_dropped_connections_do_not_disturb_the_data_path() {
    if !require_privileges() {
        return;
    }
    let env = Env::new(true);
    env.api.apply(node());
    env.api.apply(service());
    env.api.apply(slice(&[(PODS[0], true), (PODS[1], true)]));
    let mut agent = Agent::start(&env.agent_config(&[])).unwrap();
    env.wait(&mut agent, 50, "initial sync", |r| {
        r.ok == 50 && r.backends.len() == 2
    });

    // A client connecting continuously while the API misbehaves.
    let mut cmd = Command::new(probe_bin());
    cmd.args(
        TcpProbe::new(WEB.parse().unwrap())
            .duration_ms(4000)
            .interval_ms(2)
            .timeout_ms(2000)
            .args(),
    );
    cmd.stdout(Stdio::piped());
    let mut client = env.sandbox.spawn_in_node(cmd, Some(&env.cgroup)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // 410 Gone on every watch: the agent relists. Then every connection dropped.
    env.api.expire_watches();
    std::thread::sleep(Duration::from_millis(700));
    env.runtime.block_on(env.api.drop_connections());
    std::thread::sleep(Duration::from_millis(700));
    env.api.expire_watches();

    assert!(
        client
            .wait_timeout(Duration::from_secs(30))
            .unwrap()
            .is_some(),
        "client did not finish"
    );
    let mut stdout = String::new();
    client
        .take_stdout()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let r: TcpReport = serde_json::from_str(&stdout).unwrap();
    assert!(r.attempts > 100, "{r:?}");
    assert_eq!(
        r.failed(),
        0,
        "a relist or reconnection must not disturb the data path: {r:?}"
    );

    // The agent still follows the API after all that.
    env.api.apply(slice(&[(PODS[2], true)]));
    let r = env.wait(&mut agent, 40, "change after relist", |r| {
        r.ok == 40 && r.backends.len() == 1
    });
    assert_eq!(backends(&r), [pod(PODS[2])]);
    assert!(agent.log().contains("data path updated"));
    env.shutdown(&mut agent);
}

#[test]
fn unreachable_api_server_at_start_is_retried_and_reported_not_ready() {
    if !require_privileges() {
        return;
    }
    let env = Env::new(false);
    env.api.apply(node());
    env.api.apply(service());
    env.api.apply(slice(&[(PODS[0], true)]));
    let health = free_loopback_port();
    let mut agent = Agent::start(&env.agent_config(&[
        "--health-addr",
        &health.to_string(),
        "--metrics-bind-address",
        &health.to_string(),
    ]))
    .unwrap();

    // Up but not ready while the API server cannot be reached; healthy meanwhile
    // (nothing queued), so a liveness probe would not restart it.
    assert!(
        wait_until(WAIT, || http_status(health, "/readyz") == Some(503)),
        "{}",
        agent.log()
    );
    assert_eq!(http_status(health, "/healthz"), Some(200));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        http_status(health, "/readyz"),
        Some(503),
        "not ready without the API"
    );
    assert!(agent.is_running(), "{}", agent.log());

    {
        let _runtime = env.runtime.enter();
        env.api.start();
    }
    env.wait(&mut agent, 10, "sync once the API is up", |r| r.ok == 10);
    assert!(
        wait_until(WAIT, || http_status(health, "/readyz") == Some(200)),
        "{}",
        agent.log()
    );
    let metrics = http_body(health, "/metrics").unwrap();
    assert!(metrics.contains("socklb_syncs_total"), "{metrics}");
    env.shutdown(&mut agent);
}

#[test]
fn min_sync_period_coalesces_a_burst_of_events() {
    if !require_privileges() {
        return;
    }
    let env = Env::new(true);
    env.api.apply(node());
    env.api.apply(service());
    env.api.apply(slice(&[(PODS[0], true)]));
    let health = free_loopback_port();
    let config = env.agent_config(&[
        "--health-addr",
        &health.to_string(),
        "--metrics-bind-address",
        &health.to_string(),
        "--min-sync-period",
        "2s",
    ]);
    let mut agent = Agent::start(&config).unwrap();
    env.wait(&mut agent, 5, "initial sync", |r| r.ok == 5);
    // Past the first period, so the burst starts a fresh one.
    std::thread::sleep(Duration::from_millis(2100));
    let before = syncs(health);

    // 30 changes in a burst, ending on PODS[2] alone.
    for i in 0..30 {
        let ready = [(PODS[i % 2], true), (PODS[2], i % 3 == 0)];
        env.api.apply(slice(&ready));
    }
    env.api.apply(slice(&[(PODS[2], true)]));
    env.wait(&mut agent, 20, "burst applied", |r| {
        r.ok == 20 && backends(r) == [pod(PODS[2])]
    });
    let after = syncs(health);
    // At most one sync per 2 s period over the burst (plus one at its edge).
    assert!(
        after - before <= 3,
        "31 events took {} syncs; expected them coalesced",
        after - before
    );
    env.shutdown(&mut agent);
}

/// socklb_syncs_total from /metrics.
fn syncs(health: SocketAddr) -> u64 {
    let body = http_body(health, "/metrics").expect("metrics");
    body.lines()
        .find_map(|l| {
            l.strip_prefix("socklb_syncs_total ")
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no socklb_syncs_total in {body}"))
}
