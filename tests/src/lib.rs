//! socklb's end-to-end test sandbox.
//!
//! Everything here creates real kernel objects (network namespaces, veths, a bridge,
//! cgroups, bpffs pin directories, processes) and every one of them sits behind a Drop
//! guard, so a test that fails or panics halfway still leaves nothing behind.
//!
//! Safety rules the sandbox enforces by construction:
//! - traffic only inside network namespaces it creates, which have no default route
//!   (the `socklb-probe` clients also refuse to run in the host's network namespace);
//! - socket hooks only on a cgroup it creates ([`TestCgroup`]);
//! - pins only under a bpffs directory of its own ([`PinDir`]);
//! - processes are ended only by their own pid ([`Child`]).
//!
//! Typical use:
//! ```no_run
//! use socklb_tests::*;
//! if !require_privileges() { return; }
//! let mut sb = Topology::new().pod("10.244.1.10".parse().unwrap()).build().unwrap();
//! sb.serve("10.244.1.10".parse().unwrap(), "a", &[8080], &[]).unwrap();
//! let cg = TestCgroup::new().unwrap();
//! let r = sb.tcp_probe(Some(&cg), &TcpProbe::new("10.244.1.10:8080".parse().unwrap())).unwrap();
//! assert_eq!(r.ok, 1);
//! ```

pub mod agent;
pub mod cgroup;
pub mod chaos;
pub mod child;
pub mod cluster;
pub mod cluster_spec;
pub mod cmd;
pub mod container;
pub mod differential;
pub mod family;
pub mod hold;
pub mod http;
pub mod multinode;
pub mod names;
pub mod netns;
pub mod pins;
pub mod privileges;
pub mod release;
pub mod report;
pub mod sandbox;
pub mod tempdir;
pub mod wait;

pub use agent::{
    Agent, AgentConfig, probe_bin, socklb, socklb_bin, target_profile_dir, try_probe_bin,
    try_socklb_bin, uninstall,
};
pub use cgroup::TestCgroup;
pub use child::{Child, SpawnOpts};
pub use cluster::{Cluster, ClusterOptions, pod_id};
pub use cluster_spec::{ClusterSpec, Protocol, read_cluster_spec};
pub use hold::{HeldSocket, HoldProbe, HoldSpec};
pub use multinode::{
    AgentOptions, MultiNode, MultiNodeBuilder, Node, Origin, Plan, PlanFrontend, ServeSpec, Status,
    StatusFrontend, TcpRun, TcpRunReport, TransferReport, TransferRun, UdpRun, UdpRunReport,
};
pub use netns::NetNs;
pub use pins::PinDir;
pub use privileges::{Environment, cgroup2_root, check_privileges, require_privileges};
pub use report::{TcpProbe, TcpReport, UdpProbe, UdpReport, errno_name, error_name};
pub use sandbox::{Pod, Sandbox, Topology};
pub use tempdir::{ManifestDir, TempDir};
pub use wait::wait_until;
