//! Everything an end-to-end test of the agent needs, built from a manifests directory:
//! the sandbox (one pod per endpoint address, each serving its ports), a copy of the
//! manifests the test may edit, a cgroup, a pin directory and the running agent.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::agent::{Agent, AgentConfig, socklb, uninstall};
use crate::cgroup::TestCgroup;
use crate::cluster_spec::{ClusterSpec, read_cluster_spec};
use crate::multinode::{Plan, Status};
use crate::pins::PinDir;
use crate::report::{TcpProbe, TcpReport, UdpProbe, UdpReport};
use crate::sandbox::{Sandbox, Topology};
use crate::tempdir::ManifestDir;

/// The backend id of the pod at `ip`, as [`Cluster`] starts it.
pub fn pod_id(ip: Ipv4Addr) -> String {
    format!("pod-{ip}")
}

/// Options of [`Cluster::start_with`].
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// `--node`; default: the node most endpoints are on, else "socklb-test".
    pub node: Option<String>,
    /// More agent arguments (e.g. `--poll-interval-ms 50`).
    pub agent_args: Vec<String>,
    /// More agent environment (e.g. `RUST_LOG=debug`).
    pub agent_env: Vec<(String, String)>,
}

/// A running agent on a sandbox. Fields drop in order: the agent first (SIGTERM, then
/// SIGKILL), then the pins (links unpinned: hooks detached), the cgroup, the sandbox
/// (pods' processes, pod and node namespaces) and the manifests copy. Call
/// [`Cluster::shutdown`] to also check that the agent exits 0 and `socklb uninstall`
/// succeeds.
#[derive(Debug)]
pub struct Cluster {
    pub agent: Agent,
    pub pins: PinDir,
    pub cgroup: TestCgroup,
    pub sandbox: Sandbox,
    /// The directory the agent watches (a copy of the source directory).
    pub manifests: ManifestDir,
    /// What the manifests held when the cluster started (or at the last
    /// [`Cluster::sync_pods`]).
    pub model: ClusterSpec,
}

impl Cluster {
    /// [`Cluster::start_with`] with default options.
    pub fn start(src: &Path) -> Result<Cluster> {
        Self::start_with(src, &ClusterOptions::default())
    }

    /// Copies `src`, builds the sandbox from its EndpointSlices (one pod per endpoint
    /// address, serving every port it has, with id `pod-<ip>`), creates the cgroup and
    /// pin directory and starts the agent on them. It does not wait for the agent: see
    /// [`Cluster::wait_tcp`].
    pub fn start_with(src: &Path, opts: &ClusterOptions) -> Result<Cluster> {
        let manifests = ManifestDir::copy_from(src)?;
        let model = read_cluster_spec(manifests.path())?;
        let mut sandbox = Topology::new().build()?;
        sync_pods(&mut sandbox, &model)?;
        let cgroup = TestCgroup::new()?;
        let pins = PinDir::new()?;
        let node = opts
            .node
            .clone()
            .or_else(|| model.busiest_node())
            .unwrap_or_else(|| "socklb-test".to_string());
        let mut config = AgentConfig::new(manifests.path(), cgroup.path(), pins.path(), node);
        // The agent runs in the host's network namespace: never attach TC programs to
        // this machine's own interfaces (ClusterIP needs only the socket hooks).
        config.extra_args = vec!["--devices".into(), "none".into()];
        config.extra_args.extend(opts.agent_args.iter().cloned());
        config.env = opts.agent_env.clone();
        let agent = Agent::start(&config)?;
        Ok(Cluster {
            agent,
            pins,
            cgroup,
            sandbox,
            manifests,
            model,
        })
    }

    /// Re-reads the manifests directory and makes the pods match it: a pod (serving its
    /// ports) for every new endpoint address, and removes pods whose address is gone.
    /// Pods whose ports changed are restarted.
    pub fn sync_pods(&mut self) -> Result<()> {
        self.model = read_cluster_spec(self.manifests.path())?;
        sync_pods(&mut self.sandbox, &self.model)
    }

    /// TCP probe from the node namespace inside the cgroup (where the hooks apply).
    pub fn tcp(&self, probe: &TcpProbe) -> Result<TcpReport> {
        self.sandbox.tcp_probe(Some(&self.cgroup), probe)
    }

    /// UDP probe from the node namespace inside the cgroup.
    pub fn udp(&self, probe: &UdpProbe) -> Result<UdpReport> {
        self.sandbox.udp_probe(Some(&self.cgroup), probe)
    }

    /// Runs `probe` every 100 ms until `done` accepts its report; fails (with the agent's
    /// log tail) on timeout or when the agent exited.
    pub fn wait_tcp(
        &mut self,
        probe: &TcpProbe,
        timeout: Duration,
        done: impl Fn(&TcpReport) -> bool,
    ) -> Result<TcpReport> {
        self.wait_for(&probe.to, timeout, |c| c.tcp(probe), done)
    }

    /// Like [`Cluster::wait_tcp`] for UDP.
    pub fn wait_udp(
        &mut self,
        probe: &UdpProbe,
        timeout: Duration,
        done: impl Fn(&UdpReport) -> bool,
    ) -> Result<UdpReport> {
        self.wait_for(&probe.to, timeout, |c| c.udp(probe), done)
    }

    fn wait_for<R: std::fmt::Debug>(
        &mut self,
        to: &dyn std::fmt::Display,
        timeout: Duration,
        run: impl Fn(&Cluster) -> Result<R>,
        done: impl Fn(&R) -> bool,
    ) -> Result<R> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_agent()?;
            let r = run(self)?;
            if done(&r) {
                return Ok(r);
            }
            if Instant::now() >= deadline {
                bail!(
                    "no acceptable answer from {to} within {timeout:?}; last report {r:?}\nagent log tail:\n{}",
                    self.agent.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn check_agent(&mut self) -> Result<()> {
        if let Some(status) = self.agent.try_wait()? {
            bail!(
                "the agent exited ({status}); its log:\n{}",
                self.agent.log()
            );
        }
        Ok(())
    }

    /// `socklb plan --manifests DIR --node NODE -o json` of the manifests the agent
    /// watches, for its node.
    pub fn plan(&self) -> Result<Plan> {
        plan_of(self.manifests.path(), &self.agent.config().node)
    }

    /// `socklb status --bpffs PINS -o json`: what the pinned maps hold.
    pub fn status(&self) -> Result<Status> {
        status_of(self.pins.path())
    }

    /// Stops the agent (SIGTERM; it must exit 0) and runs `socklb uninstall`; the guards
    /// remove the rest when the cluster is dropped. Both steps run even if the first
    /// fails.
    pub fn shutdown(&mut self) -> Result<()> {
        let stopped = self.agent.stop();
        let uninstalled = uninstall(self.cgroup.path(), self.pins.path());
        match (stopped, uninstalled) {
            (Ok(_), Ok(_)) => Ok(()),
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
            (Err(a), Err(b)) => Err(a.context(format!("and then: {b:#}"))),
        }
    }
}

/// `socklb plan --manifests DIR --node NODE -o json`.
pub fn plan_of(manifests: &Path, node: &str) -> Result<Plan> {
    socklb_json(vec![
        "plan".into(),
        "--manifests".into(),
        manifests.into(),
        "--node".into(),
        node.into(),
        "-o".into(),
        "json".into(),
    ])
}

/// `socklb status --bpffs PINS -o json`.
pub fn status_of(pins: &Path) -> Result<Status> {
    socklb_json(vec![
        "status".into(),
        "--bpffs".into(),
        pins.into(),
        "-o".into(),
        "json".into(),
    ])
}

/// Runs `socklb ARGS` and parses what it printed (it must exit 0).
fn socklb_json<T: serde::de::DeserializeOwned>(args: Vec<std::ffi::OsString>) -> Result<T> {
    let shown = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = socklb(args)?;
    if !out.status.success() {
        bail!(
            "socklb {shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "socklb {shown} printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn sync_pods(sandbox: &mut Sandbox, model: &ClusterSpec) -> Result<()> {
    let want = model.pod_ports();
    for ip in sandbox.pod_ips() {
        let keep = want.get(&ip).is_some_and(|p| {
            sandbox
                .pod(ip)
                .is_some_and(|pod| pod.served_tcp() == p.tcp && pod.served_udp() == p.udp)
        });
        if !keep {
            sandbox.remove_pod(ip)?;
        }
    }
    for (ip, ports) in &want {
        if sandbox.pod(*ip).is_some() {
            continue;
        }
        sandbox
            .add_pod(*ip)
            .with_context(|| format!("adding pod {ip}"))?;
        let tcp: Vec<u16> = ports.tcp.iter().copied().collect();
        let udp: Vec<u16> = ports.udp.iter().copied().collect();
        if !tcp.is_empty() || !udp.is_empty() {
            sandbox.serve(*ip, &pod_id(*ip), &tcp, &udp)?;
        }
    }
    Ok(())
}
