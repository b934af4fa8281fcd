//! `socklb explain`: what a connection to ADDR:PORT would get, from a process in a
//! cgroup of this node (the socket hooks) or from a client outside the node (the TC
//! program), and why, in plain words.
//!
//! The verdict comes from the live maps and links, read as `socklb status` reads
//! them (never from the agent's memory): the frontend entry the kernel would find
//! (the exact address, else a NodePort on a node address, else the address wildcard
//! that refuses a service address's other ports), its action, backends and source
//! ranges, whether the hooks are attached, and whether the caller's cgroup is under
//! the one they are attached to. With `--manifests`, the objects add the why: the
//! Service the frontend belongs to and its endpoints by condition and node (none at
//! all, none ready, only terminating, all on other nodes), and whether a frontend the
//! plan wants is missing from the maps (full maps).
//!
//! [`explain`] is pure (a status snapshot, the caller's cgroup facts, the objects in),
//! so every verdict is tested without a kernel; [`cgroup_facts`] and
//! [`cgroups_in_netns`] are the edges that look at the system.
use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Serialize;
use socklb_core::{
    model::{IpCidr, NodeModel, Protocol, ServiceModel, SliceModel},
    plan::{self, EndpointCensus, Frontend, FrontendKind, Plan, nodeport_address},
};

use crate::datapath::{
    attachment,
    kernel::{SOCKET_HOOKS, TC_HOOKS},
    status::{ProgrammedFrontendView, StatusReport},
};

/// Where the connection starts.
#[derive(Clone, Debug)]
pub enum Vantage {
    /// A process on this node, in this cgroup: the socket hooks decide.
    Cgroup(CgroupFacts),
    /// A packet that enters one of the node's devices from this source: the TC
    /// program decides.
    Outside { source: IpAddr },
}

/// A caller's cgroup and where it sits against the socket hooks' cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CgroupFacts {
    pub path: PathBuf,
    /// How it was chosen: "this process's", "process 42 in netns web", "--from-cgroup".
    pub found_as: String,
    /// The cgroup ids from `path` up to the cgroup2 root, with their paths.
    pub ancestry: Vec<(u64, PathBuf)>,
}

/// What the connection gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Translated to one of `backends`.
    Served,
    /// connect()/sendmsg() fails at once with ECONNREFUSED.
    Refused,
    /// connect()/sendmsg() fails at once with EHOSTUNREACH.
    Unreachable,
    /// From outside: the packet is dropped (the client times out).
    Dropped,
    /// From outside: answered in place (TCP RST, ICMP port unreachable).
    Answered,
    /// From outside: handed to the node's own stack untouched.
    PassedToStack,
    /// Not a service frontend for this caller: the connection goes where routing
    /// sends it, untranslated.
    NotTranslated,
    /// The programs that would decide are not attached.
    NotAttached,
}

/// The answer, for a person (`render`) and for a program (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// "10.96.0.10:80/TCP"
    pub target: String,
    /// "cgroup /sys/fs/cgroup/x (this process's)" or "outside the node, from 192.0.2.9"
    pub from: String,
    pub verdict: Verdict,
    /// One sentence: what happens and why.
    pub reason: String,
    pub backends: Vec<String>,
    /// The map entry the verdict comes from: "10.96.0.10:80/TCP internal".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// The Service and port name (with `--manifests`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// More facts: the endpoints by condition, affinity, the agent's state.
    pub notes: Vec<String>,
}

impl Explanation {
    pub fn render(&self) -> String {
        let mut out = format!("{} from {}\n", self.target, self.from);
        let verdict = match self.verdict {
            Verdict::Served => "served",
            Verdict::Refused => "refused",
            Verdict::Unreachable => "unreachable",
            Verdict::Dropped => "dropped",
            Verdict::Answered => "answered by the node",
            Verdict::PassedToStack => "passed to the node's stack",
            Verdict::NotTranslated => "not translated",
            Verdict::NotAttached => "not attached",
        };
        let _ = writeln!(out, "  verdict:  {verdict}: {}", self.reason);
        if let Some(service) = &self.service {
            let _ = writeln!(out, "  service:  {service}");
        }
        if !self.backends.is_empty() {
            let _ = writeln!(out, "  backends: {}", self.backends.join(", "));
        }
        if let Some(entry) = &self.entry {
            let _ = writeln!(out, "  entry:    {entry}");
        }
        for note in &self.notes {
            let _ = writeln!(out, "  note:     {note}");
        }
        out
    }
}

/// The objects of `--manifests`, for the why behind a verdict.
pub struct Objects {
    pub plan: Plan,
    pub services: Vec<ServiceModel>,
    pub slices: Vec<SliceModel>,
    pub node: NodeModel,
}

impl Objects {
    fn census(&self, fe: &Frontend) -> Option<EndpointCensus> {
        let svc = self.services.iter().find(|s| s.key() == fe.service)?;
        let slices: Vec<&SliceModel> = self.slices.iter().collect();
        Some(plan::endpoint_census(
            svc,
            &slices,
            &self.node,
            &fe.port_name,
            fe.protocol,
            fe.ip.is_ipv4(),
        ))
    }

    /// The plan's frontend for `target` in this scope, found the way the kernel
    /// finds entries: the exact address, else a NodePort on a node address.
    fn frontend(
        &self,
        target: SocketAddr,
        protocol: Protocol,
        nodeport: bool,
    ) -> Option<&Frontend> {
        self.plan.frontends.iter().find(|f| {
            f.protocol == protocol
                && f.port == target.port()
                && if nodeport {
                    f.kind == FrontendKind::NodePort && f.ip.is_ipv4() == target.is_ipv4()
                } else {
                    f.kind != FrontendKind::NodePort && f.ip == target.ip()
                }
        })
    }
}

/// What a connection to `target` over `protocol` from `vantage` gets.
pub fn explain(
    status: &StatusReport,
    target: SocketAddr,
    protocol: Protocol,
    vantage: &Vantage,
    objects: Option<&Objects>,
) -> Explanation {
    let mut notes = Vec::new();
    // An IPv4-mapped address on an AF_INET6 socket is served from the IPv4 maps.
    let target = match target.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => {
                notes.push(format!(
                    "{} is IPv4-mapped: an AF_INET6 socket connecting to it is served as {v4} and sees the mapped address back",
                    target.ip()
                ));
                SocketAddr::new(IpAddr::V4(v4), target.port())
            }
            None => target,
        },
        IpAddr::V4(_) => target,
    };
    let (scope, from) = match vantage {
        Vantage::Cgroup(c) => (
            "internal",
            format!("cgroup {} ({})", c.path.display(), c.found_as),
        ),
        Vantage::Outside { source } => ("external", format!("outside the node, from {source}")),
    };
    let mut e = Explanation {
        target: format!("{target}/{protocol}"),
        from,
        verdict: Verdict::NotTranslated,
        reason: String::new(),
        backends: Vec::new(),
        entry: None,
        service: None,
        notes,
    };
    if let Some(problem) = not_attached(status, target, protocol, vantage) {
        e.verdict = Verdict::NotAttached;
        e.reason = problem;
        e.notes.extend(status.attachment_problems.iter().cloned());
        return e;
    }
    if let Vantage::Cgroup(c) = vantage
        && let Some(why) = outside_the_hooks(status, c)
    {
        e.verdict = Verdict::NotTranslated;
        e.reason = why;
        return e;
    }

    let node_address = status
        .node_addresses
        .iter()
        .any(|a| a.parse::<IpAddr>().ok() == Some(target.ip()));
    let exact = find(
        status,
        scope,
        protocol,
        &SocketAddr::new(target.ip(), target.port()).to_string(),
    );
    let (view, nodeport) = match exact {
        Some(v) => (Some(v), false),
        None if node_address => {
            let unspecified: IpAddr = if target.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            let np = find(
                status,
                scope,
                protocol,
                &nodeport_address(unspecified, target.port()),
            );
            (np, np.is_some())
        }
        None => (None, false),
    };
    let wanted = objects.and_then(|o| {
        o.frontend(
            target,
            protocol,
            nodeport || (view.is_none() && node_address),
        )
    });
    if let Some(fe) = wanted {
        e.service = Some(service_port(fe));
    }

    let Some(view) = view else {
        not_a_frontend(
            &mut e,
            status,
            target,
            protocol,
            vantage,
            node_address,
            objects,
            wanted,
        );
        return e;
    };
    e.entry = Some(format!("{}/{} {}", view.address, view.protocol, view.scope));
    if nodeport {
        e.notes.push(format!(
            "{} is one of this node's addresses: the NodePort {} answers on it",
            target.ip(),
            view.address
        ));
    }
    let census = wanted.and_then(|fe| objects.and_then(|o| o.census(fe)));
    match (view.action.as_str(), vantage) {
        ("forward", Vantage::Outside { source }) if !admitted(view, *source) => {
            e.verdict = Verdict::Dropped;
            e.reason = format!(
                "{source} is not in the frontend's loadBalancerSourceRanges ({}): the packet is dropped",
                view.source_ranges.join(", ")
            );
        }
        ("forward", _) => {
            e.verdict = Verdict::Served;
            e.backends = view.backends.clone();
            let n = view.backends.len();
            e.reason = match vantage {
                Vantage::Cgroup(_) => format!(
                    "{} translated to {} (the application keeps seeing {target})",
                    match protocol {
                        Protocol::Tcp => "connect() is",
                        Protocol::Udp => "a socket's first sendmsg() (or connect()) is",
                    },
                    one_of(n)
                ),
                Vantage::Outside { .. } => format!(
                    "new flows are sent to {} (DNAT; replies translated back by conntrack)",
                    one_of(n)
                ),
            };
            if view.maglev_table != 0 {
                e.notes.push(format!(
                    "a new flow picks by Maglev table {} (the same backend on every node)",
                    view.maglev_table
                ));
            } else if n > 1 {
                e.notes
                    .push("each new connection picks at random".to_string());
            }
            if view.affinity_timeout_s > 0 {
                e.notes.push(format!(
                    "sessionAffinity ClientIP: a client keeps its backend for {} s after its last connection",
                    view.affinity_timeout_s
                ));
            }
            if let Some(c) = census
                && c.ready == 0
                && c.serving_terminating > 0
            {
                e.notes.push(format!(
                    "no endpoint is ready: {} serving and terminating ones take the traffic (KEP-1669)",
                    c.serving_terminating
                ));
            }
        }
        ("reject", Vantage::Cgroup(_)) => {
            e.verdict = Verdict::Refused;
            e.reason = format!(
                "connect() fails at once with ECONNREFUSED: {}",
                no_usable(census)
            );
        }
        ("reject", Vantage::Outside { .. }) if nodeport => {
            e.verdict = Verdict::PassedToStack;
            e.reason = format!(
                "the NodePort has no usable endpoint ({}): the packet goes to the node's own stack, where nothing may listen on the port, so the node answers (TCP RST, ICMP port unreachable)",
                no_usable(census)
            );
        }
        ("reject", Vantage::Outside { .. }) => {
            e.verdict = Verdict::Answered;
            e.reason = format!(
                "answered at once with a TCP RST or an ICMP port unreachable: {}",
                no_usable(census)
            );
        }
        ("drop", v) => {
            e.verdict = match v {
                Vantage::Cgroup(_) => Verdict::Unreachable,
                Vantage::Outside { .. } => Verdict::Dropped,
            };
            let policy = match v {
                Vantage::Cgroup(_) => "internalTrafficPolicy",
                Vantage::Outside { .. } => "externalTrafficPolicy",
            };
            let what = match v {
                Vantage::Cgroup(_) => "connect() fails at once with EHOSTUNREACH",
                Vantage::Outside { .. } => "the packet is dropped (the client times out)",
            };
            e.reason = format!("{what}: {policy} Local, and {}", none_here(census));
        }
        (other, _) => {
            e.verdict = Verdict::Refused;
            e.reason = format!("the entry's action is {other:?}, which the programs refuse");
        }
    }
    if let (Some(fe), Some(programmed)) = (wanted, Some(view)) {
        let wanted_backends = match (&fe.from_node, vantage) {
            (Some(n), Vantage::Cgroup(_)) => n.backends.len(),
            _ => fe.backends.len(),
        };
        if programmed.backends.len() < wanted_backends {
            e.notes.push(format!(
                "the plan wants {wanted_backends} backends, the maps hold {}: the backend map was full (--map-size-backends)",
                programmed.backends.len()
            ));
        }
    }
    agent_notes(&mut e, status);
    e
}

/// The frontend entry of `address` ("10.96.0.10:80", "*:30080") in `scope`.
fn find<'a>(
    status: &'a StatusReport,
    scope: &str,
    protocol: Protocol,
    address: &str,
) -> Option<&'a ProgrammedFrontendView> {
    status
        .frontends
        .iter()
        .find(|f| f.scope == scope && f.protocol == protocol.as_str() && f.address == address)
}

fn admitted(view: &ProgrammedFrontendView, source: IpAddr) -> bool {
    view.source_ranges.is_empty()
        || view
            .source_ranges
            .iter()
            .filter_map(|r| r.parse::<IpCidr>().ok())
            .any(|r| r.contains(source))
}

fn one_of(n: usize) -> String {
    if n == 1 {
        "its only backend".to_string()
    } else {
        format!("one of its {n} backends")
    }
}

fn service_port(fe: &Frontend) -> String {
    if fe.port_name.is_empty() {
        format!("{} ({})", fe.service, fe.kind)
    } else {
        format!("{} port {} ({})", fe.service, fe.port_name, fe.kind)
    }
}

/// Why a frontend rejects: no usable endpoint anywhere.
fn no_usable(census: Option<EndpointCensus>) -> String {
    match census {
        None => {
            "the service has no usable endpoint (pass --manifests to see its endpoints)".to_string()
        }
        Some(c) if c.total == 0 => {
            "the service has no endpoints for this port (no EndpointSlice lists one)".to_string()
        }
        Some(c) => format!(
            "none of its {} endpoints is ready, and none is serving while terminating",
            c.total
        ),
    }
}

/// Why a Local policy drops: usable endpoints exist, none on this node.
fn none_here(census: Option<EndpointCensus>) -> String {
    match census {
        None => "none of the usable endpoints is on this node".to_string(),
        Some(c) if c.here == 0 => format!(
            "none of its {} endpoints runs on this node ({} ready elsewhere)",
            c.total, c.ready
        ),
        Some(c) => format!(
            "its {} endpoints on this node are neither ready nor serving while terminating ({} ready elsewhere)",
            c.here,
            c.ready - c.here_ready
        ),
    }
}

/// The hooks that decide for this caller, when they are not attached.
fn not_attached(
    status: &StatusReport,
    target: SocketAddr,
    protocol: Protocol,
    vantage: &Vantage,
) -> Option<String> {
    let attached = |pin: &str| {
        status.links.iter().any(|l| {
            l.pin == pin
                && (l.attached_to.starts_with("cgroup ") || l.attached_to.starts_with("ifindex "))
        })
    };
    match vantage {
        Vantage::Cgroup(_) => {
            let hook = match (protocol, target.is_ipv4()) {
                (Protocol::Tcp, true) => "link_connect4",
                (Protocol::Udp, true) => "link_sendmsg4",
                (Protocol::Tcp, false) => "link_connect6",
                (Protocol::Udp, false) => "link_sendmsg6",
            };
            debug_assert!(SOCKET_HOOKS.iter().any(|(_, pin)| *pin == hook));
            (!attached(hook)).then(|| {
                format!(
                    "the {} hook is not attached (no live link {hook} in {}): the connection is not translated",
                    hook.trim_start_matches("link_"),
                    status.pin_dir
                )
            })
        }
        Vantage::Outside { .. } => {
            let prefix = if target.is_ipv4() {
                TC_HOOKS[0].2
            } else {
                TC_HOOKS[2].2
            };
            let any = status.links.iter().any(|l| {
                l.pin.starts_with(prefix)
                    && l.pin[prefix.len()..].bytes().all(|b| b.is_ascii_digit())
                    && l.attached_to.starts_with("ifindex ")
            });
            (!any).then(|| {
                format!(
                    "no {} TC ingress program is attached to any device (agent --devices): packets from outside are not translated",
                    if target.is_ipv4() { "IPv4" } else { "IPv6" }
                )
            })
        }
    }
}

/// Why a caller's connections escape the socket hooks, if they do: its cgroup is not
/// the hooks' cgroup or below it.
fn outside_the_hooks(status: &StatusReport, c: &CgroupFacts) -> Option<String> {
    let hook_cgroups: Vec<u64> = status
        .links
        .iter()
        .filter(|l| SOCKET_HOOKS.iter().any(|(_, pin)| *pin == l.pin))
        .filter_map(|l| l.attached_to.strip_prefix("cgroup ")?.parse().ok())
        .collect();
    if c.ancestry.iter().any(|(id, _)| hook_cgroups.contains(id)) {
        return None;
    }
    let ids: Vec<String> = {
        let mut ids: Vec<u64> = hook_cgroups;
        ids.sort_unstable();
        ids.dedup();
        ids.iter().map(u64::to_string).collect()
    };
    Some(format!(
        "the cgroup {} is not under the cgroup the socket hooks are attached to (id {}): its connections are not translated",
        c.path.display(),
        ids.join(", ")
    ))
}

/// The entry is missing: a plain address, a service address's other port, or a
/// frontend the plan wants that the maps do not hold.
#[allow(
    clippy::too_many_arguments,
    reason = "one caller; the facts of one query"
)]
fn not_a_frontend(
    e: &mut Explanation,
    status: &StatusReport,
    target: SocketAddr,
    protocol: Protocol,
    vantage: &Vantage,
    node_address: bool,
    objects: Option<&Objects>,
    wanted: Option<&Frontend>,
) {
    let ip = target.ip().to_string();
    let (service_addresses, scope) = match vantage {
        Vantage::Cgroup(_) => (&status.service_addresses, "internal"),
        Vantage::Outside { .. } => (&status.external_service_addresses, "external"),
    };
    if let Some(fe) = wanted {
        let full = status
            .agent
            .as_ref()
            .is_some_and(|a| a.not_programmed_maps_full > 0);
        e.verdict = if service_addresses.contains(&ip) {
            Verdict::Refused
        } else {
            Verdict::NotTranslated
        };
        e.reason = if full {
            format!(
                "the plan has this {} frontend, but the maps do not: it was not programmed because the maps were full (see `socklb status`; --map-size-services, --map-size-backends)",
                fe.kind
            )
        } else {
            format!(
                "the plan has this {} frontend, but the maps do not: the agent has not programmed it (is it running on these manifests?)",
                fe.kind
            )
        };
        agent_notes(e, status);
        return;
    }
    if service_addresses.contains(&ip) {
        e.entry = Some(format!("{ip}:* {scope} (address wildcard)"));
        match vantage {
            Vantage::Cgroup(_) => {
                e.verdict = Verdict::Refused;
                e.reason = format!(
                    "{ip} is a service address without port {}/{protocol}: connect() fails at once with ECONNREFUSED",
                    target.port()
                );
            }
            Vantage::Outside { .. } => {
                e.verdict = Verdict::Answered;
                e.reason = format!(
                    "{ip} is a service address without port {}/{protocol}: answered at once with a TCP RST or an ICMP port unreachable",
                    target.port()
                );
            }
        }
        return;
    }
    e.verdict = Verdict::NotTranslated;
    e.reason = if node_address {
        format!(
            "{ip} is one of this node's addresses, but no NodePort {}/{protocol} is programmed: the node's own sockets answer",
            target.port()
        )
    } else {
        format!(
            "{ip} is not a service address: the connection goes where routing sends it, untranslated"
        )
    };
    if objects.is_none()
        && status
            .agent
            .as_ref()
            .is_some_and(|a| a.not_programmed_maps_full > 0)
    {
        e.notes.push(
            "the agent reports frontends it could not program (maps full): pass --manifests to know whether this is one"
                .to_string(),
        );
    }
    agent_notes(e, status);
}

fn agent_notes(e: &mut Explanation, status: &StatusReport) {
    match &status.agent {
        None => e.notes.push("no agent has synced these maps".to_string()),
        Some(a) if !a.complete => e.notes.push(format!(
            "the agent's last sync ({} s ago) left {} frontends unprogrammed and {} with fewer backends (maps full)",
            a.synced_s_ago, a.not_programmed_maps_full, a.backends_truncated
        )),
        Some(_) => {}
    }
}

/// The caller's cgroup facts: `path` (a cgroup2 directory) and its ancestors up to
/// the cgroup2 root, each with its id (the directory's inode number).
pub fn cgroup_facts(path: &Path, found_as: String) -> Result<CgroupFacts, String> {
    let root = crate::datapath::kernel::cgroup2_root()
        .ok_or_else(|| "no cgroup2 mount found".to_string())?;
    let path = path
        .canonicalize()
        .map_err(|e| format!("cgroup {}: {e}", path.display()))?;
    if !path.starts_with(&root) {
        return Err(format!(
            "{} is not a cgroup2 directory (the cgroup2 mount is {})",
            path.display(),
            root.display()
        ));
    }
    let mut ancestry = Vec::new();
    let mut at = Some(path.as_path());
    while let Some(dir) = at {
        if !dir.starts_with(&root) {
            break;
        }
        let id = attachment::cgroup_id(dir)
            .ok_or_else(|| format!("cgroup {} is gone", dir.display()))?;
        ancestry.push((id, dir.to_path_buf()));
        at = dir.parent();
    }
    Ok(CgroupFacts {
        path,
        found_as,
        ancestry,
    })
}

/// The cgroup2 directory of process `pid` ("0::/path" in /proc/PID/cgroup).
pub fn cgroup_of_pid(pid: &str) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("process {pid}: {e}"))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| format!("process {pid} is in no cgroup2 cgroup"))?;
    let root = crate::datapath::kernel::cgroup2_root()
        .ok_or_else(|| "no cgroup2 mount found".to_string())?;
    Ok(root.join(rel.trim_start_matches('/')))
}

/// The processes in the network namespace `name` (/run/netns/NAME) and their
/// cgroups: one (pid, cgroup) per distinct cgroup. Connections are translated by
/// cgroup, not by namespace: these are the cgroups whose view of the service a
/// client in that namespace has.
pub fn cgroups_in_netns(name: &str) -> Result<Vec<(String, PathBuf)>, String> {
    use std::os::unix::fs::MetadataExt as _;
    let ns_path = Path::new("/run/netns").join(name);
    let ns = std::fs::metadata(&ns_path)
        .map_err(|e| format!("netns {name}: {}: {e}", ns_path.display()))?;
    let key = (ns.dev(), ns.ino());
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    let procs = std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
    for entry in procs.filter_map(Result::ok) {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(net) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        if (net.dev(), net.ino()) != key {
            continue;
        }
        if let Ok(cgroup) = cgroup_of_pid(&pid)
            && !found.iter().any(|(_, c)| *c == cgroup)
        {
            found.push((pid, cgroup));
        }
    }
    found.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(found)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use crate::datapath::status::{AgentView, LinkView};

    fn view(address: &str, scope: &str, action: &str, backends: &[&str]) -> ProgrammedFrontendView {
        ProgrammedFrontendView {
            address: address.into(),
            scope: scope.into(),
            protocol: "TCP".into(),
            action: action.into(),
            backends: backends.iter().map(|b| b.to_string()).collect(),
            affinity_timeout_s: 0,
            maglev_table: 0,
            source_ranges: vec![],
        }
    }

    fn link(pin: &str, to: &str) -> LinkView {
        LinkView {
            pin: pin.into(),
            attached_to: to.into(),
        }
    }

    fn status(frontends: Vec<ProgrammedFrontendView>) -> StatusReport {
        StatusReport {
            pin_dir: "/sys/fs/bpf/t".into(),
            hooks: vec![],
            links: vec![
                link("link_connect4", "cgroup 7"),
                link("link_sendmsg4", "cgroup 7"),
                link("link_connect6", "cgroup 7"),
                link("link_sendmsg6", "cgroup 7"),
                link("link_tc_ingress_3", "ifindex 3"),
            ],
            attachment_problems: vec![],
            frontends,
            service_addresses: vec!["10.96.0.10".into(), "10.96.0.99".into()],
            external_service_addresses: vec!["198.51.100.7".into()],
            backends: 2,
            service_map_entries: 0,
            node_addresses: vec!["192.0.2.11".into()],
            conntrack_entries: 0,
            affinity: vec![],
            maglev: None,
            counters: Default::default(),
            agent: Some(AgentView {
                pid: 1,
                synced_s_ago: 1,
                wanted: 3,
                not_programmed_maps_full: 0,
                backends_truncated: 0,
                not_programmed_address_family: 0,
                complete: true,
            }),
            map_fill: Default::default(),
        }
    }

    fn sample() -> StatusReport {
        let mut lb = view(
            "198.51.100.7:80",
            "external",
            "forward",
            &["10.244.0.11:8080"],
        );
        lb.source_ranges = vec!["192.0.2.0/24".into()];
        status(vec![
            view(
                "10.96.0.10:80",
                "internal",
                "forward",
                &["10.244.0.11:8080", "10.244.0.12:8080"],
            ),
            view("10.96.0.99:80", "internal", "reject", &[]),
            view("10.96.0.40:80", "internal", "drop", &[]),
            view("*:30080", "internal", "forward", &["10.244.0.11:8080"]),
            view("*:30080", "external", "reject", &[]),
            lb,
        ])
    }

    fn in_cgroup(ids: &[u64]) -> Vantage {
        Vantage::Cgroup(CgroupFacts {
            path: "/sys/fs/cgroup/pod".into(),
            found_as: "--from-cgroup".into(),
            ancestry: ids
                .iter()
                .map(|id| (*id, PathBuf::from(format!("/c/{id}"))))
                .collect(),
        })
    }

    fn ask(s: &StatusReport, to: &str, v: &Vantage) -> Explanation {
        explain(s, to.parse().unwrap(), Protocol::Tcp, v, None)
    }

    #[test]
    fn every_verdict_from_a_cgroup() {
        let s = sample();
        let inside = in_cgroup(&[9, 7, 1]);
        let e = ask(&s, "10.96.0.10:80", &inside);
        assert_eq!(e.verdict, Verdict::Served, "{e:?}");
        assert_eq!(e.backends, ["10.244.0.11:8080", "10.244.0.12:8080"]);
        assert!(e.reason.contains("one of its 2 backends"), "{}", e.render());
        assert_eq!(e.entry.as_deref(), Some("10.96.0.10:80/TCP internal"));

        let e = ask(&s, "10.96.0.99:80", &inside);
        assert_eq!(e.verdict, Verdict::Refused);
        assert!(e.reason.contains("ECONNREFUSED"), "{}", e.render());

        let e = ask(&s, "10.96.0.40:80", &inside);
        assert_eq!(e.verdict, Verdict::Unreachable);
        assert!(
            e.reason.contains("EHOSTUNREACH") && e.reason.contains("internalTrafficPolicy Local")
        );

        let e = ask(&s, "10.96.0.10:81", &inside);
        assert_eq!(
            e.verdict,
            Verdict::Refused,
            "another port of a service address"
        );
        assert!(e.reason.contains("without port 81/TCP"), "{}", e.render());

        let e = ask(&s, "192.0.2.11:30080", &inside);
        assert_eq!(e.verdict, Verdict::Served, "a NodePort on a node address");
        assert_eq!(e.entry.as_deref(), Some("*:30080/TCP internal"));

        let e = ask(&s, "192.0.2.99:30080", &inside);
        assert_eq!(e.verdict, Verdict::NotTranslated, "not a node address");

        let e = ask(&s, "[::ffff:10.96.0.10]:80", &inside);
        assert_eq!(e.verdict, Verdict::Served);
        assert!(e.notes[0].contains("IPv4-mapped"));

        let outside_hooks = in_cgroup(&[9, 1]);
        let e = ask(&s, "10.96.0.10:80", &outside_hooks);
        assert_eq!(e.verdict, Verdict::NotTranslated);
        assert!(
            e.reason
                .contains("not under the cgroup the socket hooks are attached to (id 7)"),
            "{}",
            e.render()
        );

        let mut detached = sample();
        detached.links[0].attached_to = "detached".into();
        detached.attachment_problems = vec!["link_connect4 is detached".into()];
        let e = ask(&detached, "10.96.0.10:80", &inside);
        assert_eq!(e.verdict, Verdict::NotAttached);
        assert!(
            e.reason.contains("connect4 hook is not attached"),
            "{}",
            e.render()
        );
        let udp = explain(
            &detached,
            "10.96.0.10:80".parse().unwrap(),
            Protocol::Udp,
            &inside,
            None,
        );
        assert_ne!(
            udp.verdict,
            Verdict::NotAttached,
            "UDP goes through sendmsg4"
        );
    }

    #[test]
    fn every_verdict_from_outside() {
        let s = sample();
        let from = |ip: &str| Vantage::Outside {
            source: ip.parse().unwrap(),
        };
        let e = ask(&s, "198.51.100.7:80", &from("192.0.2.50"));
        assert_eq!(e.verdict, Verdict::Served, "{}", e.render());
        let e = ask(&s, "198.51.100.7:80", &from("203.0.113.5"));
        assert_eq!(e.verdict, Verdict::Dropped);
        assert!(
            e.reason.contains("loadBalancerSourceRanges (192.0.2.0/24)"),
            "{}",
            e.render()
        );
        let e = ask(&s, "198.51.100.7:443", &from("192.0.2.50"));
        assert_eq!(e.verdict, Verdict::Answered, "another port of an LB IP");
        let e = ask(&s, "192.0.2.11:30080", &from("192.0.2.50"));
        assert_eq!(e.verdict, Verdict::PassedToStack, "{}", e.render());
        let e = ask(&s, "10.96.0.10:80", &from("192.0.2.50"));
        assert_eq!(
            e.verdict,
            Verdict::NotTranslated,
            "cluster IPs are not external frontends"
        );
        let e = ask(&s, "[fd00::1]:80", &from("fd00::9"));
        assert_eq!(e.verdict, Verdict::NotAttached, "no IPv6 TC link");
    }

    fn objects(slices_yaml: &str, node: &str) -> Objects {
        let dir =
            std::env::temp_dir().join(format!("socklb-explain-{}-{node}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("objects.yaml"), slices_yaml).unwrap();
        let set = crate::sources::manifest_files::load_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let node = set.node(node);
        Objects {
            plan: plan::compute_plan(&set.services, &set.slices, &node),
            services: set.services,
            slices: set.slices,
            node,
        }
    }

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\n\
        spec:\n  clusterIP: 10.96.0.10\n  internalTrafficPolicy: Local\n  ports: [{name: http, protocol: TCP, port: 80}]\n";

    fn slice(endpoints: &str) -> String {
        format!(
            "{SVC}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
             metadata: {{name: web-1, namespace: demo, labels: {{kubernetes.io/service-name: web}}}}\n\
             ports: [{{name: http, protocol: TCP, port: 8080}}]\nendpoints: {endpoints}\n"
        )
    }

    #[test]
    fn the_objects_say_why() {
        let inside = in_cgroup(&[7]);
        let refused = status(vec![view("10.96.0.10:80", "internal", "reject", &[])]);
        let dropped = status(vec![view("10.96.0.10:80", "internal", "drop", &[])]);
        let why = |s: &StatusReport, yaml: &str| {
            let o = objects(yaml, "here");
            explain(
                s,
                "10.96.0.10:80".parse().unwrap(),
                Protocol::Tcp,
                &inside,
                Some(&o),
            )
        };
        let e = why(&refused, SVC);
        assert!(
            e.reason.contains("no endpoints for this port"),
            "{}",
            e.render()
        );
        assert_eq!(e.service.as_deref(), Some("demo/web port http (ClusterIP)"));
        let e = why(
            &refused,
            &slice(
                "[{addresses: [10.244.0.11], conditions: {ready: false, serving: false, terminating: true}}]",
            ),
        );
        assert!(
            e.reason.contains("none of its 1 endpoints is ready"),
            "{}",
            e.render()
        );
        let e = why(
            &dropped,
            &slice("[{addresses: [10.244.0.11], nodeName: elsewhere}]"),
        );
        assert!(
            e.reason
                .contains("none of its 1 endpoints runs on this node (1 ready elsewhere)"),
            "{}",
            e.render()
        );
        let served = status(vec![view(
            "10.96.0.10:80",
            "internal",
            "forward",
            &["10.244.0.11:8080"],
        )]);
        let e = why(
            &served,
            &slice(
                "[{addresses: [10.244.0.11], nodeName: here, conditions: {ready: false, serving: true, terminating: true}}]",
            ),
        );
        assert_eq!(e.verdict, Verdict::Served);
        assert!(
            e.notes.iter().any(|n| n.contains("KEP-1669")),
            "{}",
            e.render()
        );

        // Wanted by the plan, absent from full maps.
        let mut full = status(vec![]);
        if let Some(a) = full.agent.as_mut() {
            a.not_programmed_maps_full = 1;
            a.complete = false;
        }
        let e = why(
            &full,
            &slice("[{addresses: [10.244.0.11], nodeName: here}]"),
        );
        assert_eq!(
            e.verdict,
            Verdict::Refused,
            "the address wildcard still refuses"
        );
        assert!(e.reason.contains("the maps were full"), "{}", e.render());
    }
}
