//! `socklb status`: what the pinned maps hold, in the same terms as `socklb plan`.
use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use lb_common::{SVC_FLAG_WILDCARD, SvcAction};
use serde::{Deserialize, Serialize};

use lb_common::{Affinity4Value, Svc4Key, Svc6Key};
use socklb_core::{
    maps::{
        Family, FrontendKey, Scope, V4, V6, diff::ProgrammedState, ip_from_map,
        maglev::human_bytes, v4, v6,
    },
    plan::nodeport_address,
};

use crate::datapath::{
    DatapathError,
    attachment::{self, LinkTarget},
    kernel::{self, Device, KernelMaps},
    service_maps::fill_by_map,
};

/// One frontend as programmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgrammedFrontendView {
    /// "10.96.0.10:80", "[fd00::10]:80", or "*:30080" ("[*]:30080" for IPv6) for a
    /// NodePort.
    pub address: String,
    /// "internal" (connections started on this node) or "external" (TC).
    pub scope: String,
    pub protocol: String,
    pub action: String,
    pub backends: Vec<String>,
    pub affinity_timeout_s: u32,
    /// The Maglev table slot 0 names (new flows pick by it); left out (0) when new
    /// flows pick at random.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub maglev_table: u32,
    /// loadBalancerSourceRanges the frontend admits (external entries only); left
    /// out when every source is admitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<String>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// The Maglev tables as the pinned map holds them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaglevView {
    /// Entries per table.
    pub table_size: u32,
    /// The hash seed the tables were built with.
    pub seed: u32,
    /// Tables the map has room for.
    pub tables: u32,
    /// Tables a frontend's slot 0 names.
    pub in_use: usize,
    /// Bytes per table (one per frontend that picks by Maglev).
    pub table_bytes: u64,
    /// Bytes of the map (preallocated).
    pub map_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub pin_dir: String,
    /// Hooks whose link is pinned (attached).
    pub hooks: Vec<String>,
    /// Every pinned link and what the kernel says it is attached to.
    #[serde(default)]
    pub links: Vec<LinkView>,
    /// Where the data path is not attached as it should be (asked of the kernel):
    /// empty when every hook is attached; `socklb status` then fails.
    #[serde(default)]
    pub attachment_problems: Vec<String>,
    pub frontends: Vec<ProgrammedFrontendView>,
    /// Cluster IPs whose other ports are refused (by the socket hooks).
    pub service_addresses: Vec<String>,
    /// LoadBalancer and external IPs whose other ports are refused to traffic from
    /// outside (answered by the TC program).
    #[serde(default)]
    pub external_service_addresses: Vec<String>,
    pub backends: usize,
    pub service_map_entries: usize,
    /// This node's addresses (where NodePorts answer).
    pub node_addresses: Vec<String>,
    /// Live conntrack entries (two per external flow).
    pub conntrack_entries: usize,
    /// Clients that stick to a backend (session affinity) and have not expired.
    #[serde(default)]
    pub affinity: Vec<AffinityView>,
    /// The Maglev tables; left out when the map holds none (the random algorithm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<MaglevView>,
    pub counters: std::collections::BTreeMap<String, u64>,
    /// What the agent said about its last sync; `None`: no agent has synced these
    /// maps.
    #[serde(default)]
    pub agent: Option<AgentView>,
    /// Entries and size of the maps that grow with the cluster, by map name.
    #[serde(default)]
    pub map_fill: std::collections::BTreeMap<String, MapFillView>,
}

/// One pinned link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkView {
    pub pin: String,
    /// "cgroup <id>", "ifindex <n>", "detached", or why the link could not be read.
    pub attached_to: String,
}

/// The agent's record of its last sync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    pub pid: u32,
    /// Seconds since the last sync finished.
    pub synced_s_ago: u64,
    /// Frontends (and address wildcards) wanted in the maps.
    pub wanted: u32,
    /// Wanted but not programmed (or left as they were): the maps are full.
    pub not_programmed_maps_full: u32,
    /// Programmed with fewer backends than wanted: the maps are full.
    pub backends_truncated: u32,
    /// Of an address family the maps do not hold.
    pub not_programmed_address_family: u32,
    /// Every wanted frontend is programmed as wanted (address family aside).
    pub complete: bool,
}

/// How full one map is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFillView {
    pub entries: usize,
    pub capacity: usize,
}

/// One client's session affinity to a backend of a frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffinityView {
    /// The frontend, as `address` of [`ProgrammedFrontendView`].
    pub frontend: String,
    pub protocol: String,
    pub scope: String,
    /// "netns:<cookie>" (a client on this node: its network namespace) or the source
    /// address of a client from outside.
    pub client: String,
    pub backend: String,
    /// Seconds since the client last started a flow through it.
    pub idle_s: u64,
}

/// What `socklb status` checks the links against: the cgroup the hooks must be
/// attached to (`--cgroup`; None: any live cgroup).
#[derive(Clone, Debug, Default)]
pub struct StatusOptions {
    pub cgroup: Option<std::path::PathBuf>,
}

pub fn read_status(pin_dir: &Path, options: &StatusOptions) -> Result<StatusReport, DatapathError> {
    let maps = KernelMaps::open_pinned(pin_dir)?;
    let (links, attachment_problems) = link_report(pin_dir, options);
    let capacity = maps.sizes().capacity();
    let (state4, _) = ProgrammedState::<V4>::adopt(&maps, capacity)?;
    let (state6, _) = ProgrammedState::<V6>::adopt(&maps, capacity)?;
    let mut views = FrontendViews::default();
    views.add(&state4);
    views.add(&state6);
    let FrontendViews {
        frontends,
        service_addresses,
        external_service_addresses,
    } = views;
    let (table_size, seed, tables) = maps.maglev_layout();
    let maglev = (table_size != 0).then(|| {
        let table_bytes = u64::from(table_size) * socklb_core::maps::maglev::ENTRY_BYTES;
        MaglevView {
            table_size,
            seed,
            tables,
            in_use: frontends.iter().filter(|f| f.maglev_table != 0).count(),
            table_bytes,
            // Both families' maps.
            map_bytes: 2
                * lb_common::maglev::map_values(tables, table_size)
                * std::mem::size_of::<lb_common::maglev::MaglevEntries>() as u64,
        }
    });
    let counters = maps
        .counters()?
        .into_iter()
        .map(|(c, v)| (c.name().to_string(), v))
        .collect();
    let mut affinity = affinity_views4(&maps, &state4);
    affinity.extend(affinity_views6(&maps, &state6));
    affinity.sort_by(|a, b| (&a.frontend, &a.client).cmp(&(&b.frontend, &b.client)));
    let mut map_fill: std::collections::BTreeMap<String, MapFillView> = Default::default();
    for (map, entries, capacity) in fill_by_map::<V4>(&state4.fill())
        .into_iter()
        .chain(fill_by_map::<V6>(&state6.fill()))
    {
        map_fill.insert(map.to_string(), MapFillView { entries, capacity });
    }
    Ok(StatusReport {
        pin_dir: pin_dir.display().to_string(),
        hooks: kernel::attached_hooks(pin_dir),
        links,
        attachment_problems,
        frontends,
        service_addresses,
        external_service_addresses,
        backends: state4.backend_count() + state6.backend_count(),
        service_map_entries: state4.svc_entries() + state6.svc_entries(),
        node_addresses: maps
            .node_addresses()
            .iter()
            .map(ToString::to_string)
            .chain(maps.node_addresses6().iter().map(ToString::to_string))
            .collect(),
        conntrack_entries: maps.conntrack_entries().len() + maps.conntrack6_entries().len(),
        affinity,
        maglev,
        counters,
        agent: agent_view(&maps)?,
        map_fill,
    })
}

/// The pinned links as the kernel sees them, and what is not attached: every socket
/// hook (to `options.cgroup` when given) and, for each device with a TC link pinned,
/// every TC program.
fn link_report(pin_dir: &Path, options: &StatusOptions) -> (Vec<LinkView>, Vec<String>) {
    let links: Vec<LinkView> = attachment::pinned_links(pin_dir)
        .into_iter()
        .map(|(pin, target)| LinkView {
            pin,
            attached_to: match target {
                Ok(LinkTarget::Cgroup(id)) => format!("cgroup {id}"),
                Ok(LinkTarget::Device(ifindex)) => format!("ifindex {ifindex}"),
                Ok(LinkTarget::Detached) => "detached".to_string(),
                Err(e) => e,
            },
        })
        .collect();
    // The devices are the ones with any TC link pinned (status has no --devices).
    let mut devices: Vec<Device> = links
        .iter()
        .filter_map(|l| {
            let (_, _, prefix) = kernel::TC_HOOKS
                .iter()
                .find(|(_, _, prefix)| l.pin.starts_with(prefix))?;
            let ifindex: u32 = l.pin.strip_prefix(prefix)?.parse().ok()?;
            Some(Device {
                name: format!("ifindex {ifindex}"),
                ifindex,
                snat_addr: std::net::Ipv4Addr::UNSPECIFIED,
                snat_addr6: std::net::Ipv6Addr::UNSPECIFIED,
            })
        })
        .collect();
    devices.sort_by_key(|d| d.ifindex);
    devices.dedup_by_key(|d| d.ifindex);
    let cgroup = match &options.cgroup {
        Some(path) => match attachment::cgroup_id(path) {
            Some(id) => Some(id),
            None => {
                return (
                    links,
                    vec![format!("cgroup {} does not exist", path.display())],
                );
            }
        },
        None => None,
    };
    let problems = attachment::check(
        pin_dir,
        &attachment::Expected {
            cgroup,
            devices: &devices,
        },
    );
    (links, problems)
}

/// The frontends of both families' maps, as `status` shows them.
#[derive(Default)]
struct FrontendViews {
    frontends: Vec<ProgrammedFrontendView>,
    service_addresses: Vec<String>,
    external_service_addresses: Vec<String>,
}

impl FrontendViews {
    fn add<F: Family>(&mut self, state: &ProgrammedState<F>) {
        let mut keys: Vec<_> = state.frontends().keys().copied().collect();
        keys.sort();
        for key in keys {
            let Some(fe) = state.frontends().get(&key) else {
                continue;
            };
            if key.is_wildcard() && fe.service.flags & SVC_FLAG_WILDCARD != 0 {
                match key.scope {
                    Scope::Internal => self.service_addresses.push(key.ip.to_string()),
                    Scope::External => self.external_service_addresses.push(key.ip.to_string()),
                }
                continue;
            }
            let mut backends: Vec<SocketAddr> = fe
                .slots
                .iter()
                .filter_map(|id| state.backend(*id))
                .map(|b| b.addr)
                .collect();
            backends.sort();
            self.frontends.push(ProgrammedFrontendView {
                address: frontend_address(key.ip, key.port),
                scope: scope_name(key.scope).to_string(),
                protocol: key.protocol.map_or("any", |p| p.as_str()).to_string(),
                action: match SvcAction::from_u8(fe.service.action) {
                    Some(SvcAction::Forward) => "forward",
                    Some(SvcAction::Reject) => "reject",
                    Some(SvcAction::Drop) => "drop",
                    None => "invalid",
                }
                .to_string(),
                backends: backends.iter().map(ToString::to_string).collect(),
                affinity_timeout_s: fe.service.affinity_timeout_s,
                maglev_table: fe.service.backend_id,
                source_ranges: fe.source_ranges.iter().map(ToString::to_string).collect(),
            });
        }
    }
}

/// A frontend as `plan` shows it: "10.96.0.10:80", "[fd00::10]:80", and a
/// NodePort "*:30080" (IPv4) or "[*]:30080" (IPv6).
fn frontend_address(ip: IpAddr, port: u16) -> String {
    if ip.is_unspecified() {
        nodeport_address(ip, port)
    } else {
        SocketAddr::new(ip, port).to_string()
    }
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::External => "external",
        Scope::Internal => "internal",
    }
}

fn agent_view(maps: &KernelMaps) -> Result<Option<AgentView>, DatapathError> {
    let a = maps.agent_status()?;
    if a.synced_at_ns == 0 {
        return Ok(None);
    }
    Ok(Some(AgentView {
        pid: a.agent_pid,
        synced_s_ago: kernel::monotonic_ns().saturating_sub(a.synced_at_ns) / 1_000_000_000,
        wanted: a.wanted,
        not_programmed_maps_full: a.maps_full,
        backends_truncated: a.backends_truncated,
        not_programmed_address_family: a.address_family,
        complete: a.maps_full == 0 && a.backends_truncated == 0,
    }))
}

/// An affinity entry that is still in effect: not expired, and naming a backend the
/// frontend still has.
fn affinity_view<F: Family>(
    state: &ProgrammedState<F>,
    fkey: FrontendKey,
    client: String,
    value: &Affinity4Value,
    now: u64,
) -> Option<AffinityView> {
    let fe = state.frontends().get(&fkey)?;
    let idle_ns = now.saturating_sub(value.last_used_ns);
    let timeout_ns = u64::from(fe.service.affinity_timeout_s) * 1_000_000_000;
    if idle_ns > timeout_ns || !fe.slots.contains(&value.backend_id) {
        return None;
    }
    let backend = state.backend(value.backend_id)?;
    Some(AffinityView {
        frontend: frontend_address(fkey.ip, fkey.port),
        protocol: fkey.protocol.map_or("any", |p| p.as_str()).to_string(),
        scope: scope_name(fkey.scope).to_string(),
        client,
        backend: backend.addr.to_string(),
        idle_s: idle_ns / 1_000_000_000,
    })
}

fn affinity_views4(maps: &KernelMaps, state: &ProgrammedState<V4>) -> Vec<AffinityView> {
    let now = kernel::monotonic_ns();
    maps.affinity_entries()
        .into_iter()
        .filter_map(|(key, value)| {
            let svc_key = Svc4Key::new(key.address, key.dport, key.proto, 0).with_scope(key.scope);
            let fkey = v4::frontend_key(&svc_key)?;
            let client = match fkey.scope {
                Scope::Internal => format!("netns:{}", key.client),
                Scope::External => ip_from_map(key.client as u32).to_string(),
            };
            affinity_view(state, fkey, client, &value, now)
        })
        .collect()
}

fn affinity_views6(maps: &KernelMaps, state: &ProgrammedState<V6>) -> Vec<AffinityView> {
    let now = kernel::monotonic_ns();
    maps.affinity6_entries()
        .into_iter()
        .filter_map(|(key, value)| {
            let svc_key = Svc6Key::new(key.address, key.dport, key.proto, 0).with_scope(key.scope);
            let fkey = v6::frontend_key(&svc_key)?;
            let client = match fkey.scope {
                // The netns cookie, as a u64 in the first two words' memory.
                Scope::Internal => {
                    let [a, b, ..] = key.client;
                    let mut bytes = [0u8; 8];
                    bytes[..4].copy_from_slice(&a.to_ne_bytes());
                    bytes[4..].copy_from_slice(&b.to_ne_bytes());
                    format!("netns:{}", u64::from_ne_bytes(bytes))
                }
                Scope::External => v6::ip6_from_map(&key.client).to_string(),
            };
            affinity_view(state, fkey, client, &value, now)
        })
        .collect()
}

impl StatusReport {
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "pin directory: {}", self.pin_dir);
        let _ = writeln!(
            out,
            "attached hooks: {}",
            if self.hooks.is_empty() {
                "none".into()
            } else {
                self.hooks.join(", ")
            }
        );
        if self.attachment_problems.is_empty() {
            let _ = writeln!(
                out,
                "attachment: every hook attached (checked in the kernel)"
            );
        } else {
            let _ = writeln!(
                out,
                "attachment: NOT ATTACHED: {}",
                self.attachment_problems.join("; ")
            );
        }
        match &self.agent {
            None => {
                let _ = writeln!(out, "agent: no agent has synced these maps");
            }
            Some(a) => {
                let state = if a.complete {
                    "complete".to_string()
                } else {
                    format!(
                        "INCOMPLETE: {} frontends not programmed (maps full), {} with fewer backends than wanted",
                        a.not_programmed_maps_full, a.backends_truncated
                    )
                };
                let _ = writeln!(
                    out,
                    "data path: {state} ({} frontends wanted; last sync by pid {} {}s ago)",
                    a.wanted, a.pid, a.synced_s_ago
                );
                if a.not_programmed_address_family > 0 {
                    let _ = writeln!(
                        out,
                        "  {} frontends of an address family the maps do not hold",
                        a.not_programmed_address_family
                    );
                }
            }
        }
        let fill: Vec<String> = self
            .map_fill
            .iter()
            .map(|(map, f)| format!("{map} {}/{}", f.entries, f.capacity))
            .collect();
        let _ = writeln!(
            out,
            "service map entries: {}  backends: {}  (fill: {})",
            self.service_map_entries,
            self.backends,
            fill.join(", ")
        );
        let _ = writeln!(
            out,
            "service addresses (other ports refused): {}",
            self.service_addresses.join(" ")
        );
        let _ = writeln!(
            out,
            "external addresses (other ports refused from outside): {}",
            self.external_service_addresses.join(" ")
        );
        let _ = writeln!(
            out,
            "node addresses (NodePorts): {}",
            self.node_addresses.join(" ")
        );
        let _ = writeln!(out, "conntrack entries: {}", self.conntrack_entries);
        if let Some(m) = &self.maglev {
            let _ = writeln!(
                out,
                "maglev tables: {} of {} in use, {} entries ({}) each, seed {:#x}: {} of {} preallocated",
                m.in_use,
                m.tables,
                m.table_size,
                human_bytes(m.table_bytes),
                m.seed,
                human_bytes(m.in_use as u64 * m.table_bytes),
                human_bytes(m.map_bytes),
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<22} {:<5} {:<8} {:<8} {:>7}  BACKENDS",
            "ADDRESS", "PROTO", "SCOPE", "ACTION", "AFFINITY"
        );
        for fe in &self.frontends {
            // A frontend that picks by a Maglev table says which.
            let table = if fe.maglev_table != 0 {
                format!("maglev table {}: ", fe.maglev_table)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "{:<22} {:<5} {:<8} {:<8} {:>7}s  {table}{}",
                fe.address,
                fe.protocol,
                fe.scope,
                fe.action,
                fe.affinity_timeout_s,
                if fe.backends.is_empty() {
                    "-".to_string()
                } else {
                    fe.backends.join(" ")
                }
            );
        }
        if !self.affinity.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(out, "session affinity ({} clients):", self.affinity.len());
            let rows: Vec<[String; 6]> = self
                .affinity
                .iter()
                .map(|a| {
                    [
                        a.frontend.clone(),
                        a.protocol.clone(),
                        a.scope.clone(),
                        a.client.clone(),
                        a.backend.clone(),
                        format!("{}s", a.idle_s),
                    ]
                })
                .collect();
            out.push_str(&socklb_core::table::render(
                ["FRONTEND", "PROTO", "SCOPE", "CLIENT", "BACKEND", "IDLE"],
                &rows,
            ));
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "counters:");
        for (name, v) in &self.counters {
            let _ = writeln!(out, "  {name:<22} {v}");
        }
        out
    }
}
