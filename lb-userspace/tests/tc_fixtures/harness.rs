//! The kernel side of the TC fixtures: the embedded eBPF object loaded with its maps
//! pinned in a bpffs directory of the test's own (removed by a Drop guard, also when
//! the test panics), the maps programmed by the agent's own code from Kubernetes
//! objects, and packets run through `BPF_PROG_TEST_RUN`. Nothing is attached anywhere.
//!
//! The ingress program routes some packets itself (FIB lookup + redirect), so a test
//! run needs a known routing table: each fixture moves its thread into a network
//! namespace of its own with one device (the node's "uplink", a veth whose peer stays
//! in the namespace: node addresses, a route to the remote pods) and runs every packet
//! as received on that device. A test run never transmits (a redirect verdict is only
//! returned, nothing is sent): no packet leaves the test, and there is nowhere to go.
//!
//! A fixture runs one family's programs (`lb4_tc_*` or `lb6_tc_*`, the latter with
//! their tail calls in `lb6_tc_calls` filled as the agent fills them); the namespace
//! has the family's twins of the node's addresses and routes ([`crate::family`]).
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, Map, MapData},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use lb_common::{Counter, Ct4Key, Ct4Value, Ct6Key, Ct6Value, map_names};
use serde_json::Value;

use crate::family::{Family, test_sock};
use socklb::datapath::kernel::{self, Device, KernelMaps};
use socklb_core::{
    maps::{
        DesiredState, ProgrammedState, ServiceMaps as _, V4, V6,
        diff::Capacity,
        ip_from_map, ip_to_map,
        maglev::MaglevConfig,
        port_from_map, port_to_map,
        v6::{ip6_from_map, ip6_to_map},
    },
    model::{NodeModel, ServiceModel, SliceModel},
    plan::{Plan, compute_plan},
};

/// The node the fixtures run as.
pub const NODE: &str = "node-a";
/// bpffs, where the test's own pin directory goes.
const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
/// TC_ACT_UNSPEC (-1) as the u32 BPF_PROG_TEST_RUN returns: not this program's
/// family, the next program on the device decides (TCX_NEXT).
pub const TC_ACT_UNSPEC: u32 = u32::MAX;

/// The node's device in the fixture's network namespace (one end of a veth pair).
pub const DEVICE: &str = "socklb0";
/// The other end, left alone in the same namespace.
const PEER: &str = "socklb0p";

/// Whether `CI` says we run under CI (`true`, `1` or `yes`).
fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
        .unwrap_or(false)
}

/// The suite's rule (tests/src/privileges.rs): without root and bpffs a fixture fails
/// under `CI=true` and otherwise prints `SKIPPED: ...` and returns false.
pub fn require_root_and_bpf() -> bool {
    let why = check();
    match why {
        None => true,
        Some(why) if in_ci() => panic!("TC fixture cannot run under CI=true: {why}"),
        Some(why) => {
            // Straight to fd 2: the harness captures print macros of passing tests.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
            false
        }
    }
}

fn check() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(
            "needs root (BPF_PROG_LOAD, BPF_PROG_TEST_RUN, bpffs pins): run as root".into(),
        );
    }
    let path = std::ffi::CString::new(BPFFS).ok()?;
    // SAFETY: statfs writes into a zeroed struct of the right type; path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let ret = unsafe { libc::statfs(path.as_ptr(), &mut st) };
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width differs between libcs"
    )]
    if ret != 0 || st.f_type as i64 != BPF_FS_MAGIC {
        return Some(format!(
            "bpffs is not mounted at {BPFFS} (mount -t bpf bpf {BPFFS})"
        ));
    }
    let ip_ok = std::process::Command::new("ip")
        .arg("-V")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ip_ok {
        return Some("`ip` (iproute2) not found in PATH".into());
    }
    None
}

/// A pin directory of this test's own, removed with everything in it on drop.
pub struct PinDir(PathBuf);

impl PinDir {
    fn create() -> Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let path = PathBuf::from(BPFFS).join(format!(
            "socklb-fixtures-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.0) {
            eprintln!("warning: could not remove {}: {e}", self.0.display());
        }
    }
}

/// Which TC program a packet goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    /// The name of this hook's program of family `f`.
    pub fn program(self, f: Family) -> String {
        match self {
            Hook::Ingress => format!("{}_tc_ingress", f.programs()),
            Hook::Egress => format!("{}_tc_egress", f.programs()),
        }
    }
}

/// A conntrack key in test addresses (either family's map).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtKey {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub proto: u8,
}

/// A conntrack value in test addresses (either family's map).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    pub to_src: SocketAddrV4,
    pub to_dst: SocketAddrV4,
    pub flags: u8,
    pub direction: u8,
    pub expires_ns: u64,
    pub backend_id: u32,
}

/// The fixture family's conntrack map.
enum CtMap {
    V4(BpfHashMap<MapData, Ct4Key, Ct4Value>),
    V6(BpfHashMap<MapData, Ct6Key, Ct6Value>),
}

/// The IPv6 twin of a test socket address's address.
fn twin(sa: SocketAddrV4) -> std::net::Ipv6Addr {
    crate::family::v6_of(*sa.ip())
}

/// The test socket address an IPv6 address and port stand for.
fn test_sock6(ip: std::net::Ipv6Addr, port: u16) -> SocketAddrV4 {
    test_sock((ip, port).into())
}

impl CtMap {
    fn get(&self, k: &CtKey) -> Option<CtEntry> {
        match self {
            CtMap::V4(m) => m.get(&key4(k), 0).ok().map(|v| entry4(&v)),
            CtMap::V6(m) => m.get(&key6(k), 0).ok().map(|v| entry6(&v)),
        }
    }

    fn put(&mut self, k: &CtKey, e: &CtEntry) {
        let r = match self {
            CtMap::V4(m) => {
                let value = Ct4Value {
                    to_saddr: ip_to_map(*e.to_src.ip()),
                    to_daddr: ip_to_map(*e.to_dst.ip()),
                    to_sport: port_to_map(e.to_src.port()),
                    to_dport: port_to_map(e.to_dst.port()),
                    flags: e.flags,
                    direction: e.direction,
                    pad: [0; 2],
                    expires_ns: e.expires_ns,
                    backend_id: e.backend_id,
                    pad2: 0,
                };
                m.insert(key4(k), value, 0)
            }
            CtMap::V6(m) => {
                let value = Ct6Value {
                    to_saddr: ip6_to_map(twin(e.to_src)),
                    to_daddr: ip6_to_map(twin(e.to_dst)),
                    to_sport: port_to_map(e.to_src.port()),
                    to_dport: port_to_map(e.to_dst.port()),
                    flags: e.flags,
                    direction: e.direction,
                    pad: [0; 2],
                    expires_ns: e.expires_ns,
                    backend_id: e.backend_id,
                    pad2: 0,
                };
                m.insert(key6(k), value, 0)
            }
        };
        r.expect("writing a conntrack entry");
    }

    fn remove(&mut self, k: &CtKey) {
        match self {
            CtMap::V4(m) => {
                let _ = m.remove(&key4(k));
            }
            CtMap::V6(m) => {
                let _ = m.remove(&key6(k));
            }
        }
    }
}

fn key4(k: &CtKey) -> Ct4Key {
    Ct4Key {
        saddr: ip_to_map(*k.src.ip()),
        daddr: ip_to_map(*k.dst.ip()),
        sport: port_to_map(k.src.port()),
        dport: port_to_map(k.dst.port()),
        proto: k.proto,
        pad: [0; 3],
    }
}

fn key6(k: &CtKey) -> Ct6Key {
    Ct6Key {
        saddr: ip6_to_map(twin(k.src)),
        daddr: ip6_to_map(twin(k.dst)),
        sport: port_to_map(k.src.port()),
        dport: port_to_map(k.dst.port()),
        proto: k.proto,
        pad: [0; 3],
    }
}

fn entry4(v: &Ct4Value) -> CtEntry {
    CtEntry {
        to_src: SocketAddrV4::new(ip_from_map(v.to_saddr), port_from_map(v.to_sport)),
        to_dst: SocketAddrV4::new(ip_from_map(v.to_daddr), port_from_map(v.to_dport)),
        flags: v.flags,
        direction: v.direction,
        expires_ns: v.expires_ns,
        backend_id: v.backend_id,
    }
}

fn entry6(v: &Ct6Value) -> CtEntry {
    CtEntry {
        to_src: test_sock6(ip6_from_map(&v.to_saddr), port_from_map(v.to_sport)),
        to_dst: test_sock6(ip6_from_map(&v.to_daddr), port_from_map(v.to_dport)),
        flags: v.flags,
        direction: v.direction,
        expires_ns: v.expires_ns,
        backend_id: v.backend_id,
    }
}

/// What a program did with a packet.
#[derive(Clone, Debug)]
pub struct Run {
    pub verdict: u32,
    pub output: Vec<u8>,
}

/// The loaded programs and their maps, programmed for one cluster.
///
/// Field order matters for drop: programs and map handles close before the pin
/// directory goes.
pub struct Fixture {
    pub family: Family,
    ebpf: Ebpf,
    pub maps: KernelMaps,
    ct: CtMap,
    pub plan: Plan,
    /// The agent's mirrors of the maps (one per family, as the agent has), for
    /// [`Fixture::reprogram`].
    state: ProgrammedState<V4>,
    state6: ProgrammedState<V6>,
    /// The device packets arrive on (and leave through).
    pub ifindex: u32,
    pins: PinDir,
}

/// The node's network as the fixture's namespace has it, in test addresses (the
/// family's twins in an IPv6 fixture).
pub struct Network<'a> {
    /// The node's addresses (address, prefix length), all on [`DEVICE`].
    pub node_addresses: &'a [(Ipv4Addr, u8)],
    /// The address SNAT uses on [`DEVICE`].
    pub snat_addr: Ipv4Addr,
    /// Routes: (destination CIDR, gateway).
    pub routes: &'a [(&'a str, Ipv4Addr)],
}

/// Moves the calling thread into a new network namespace with `net` on device
/// [`DEVICE`], forwarding on; returns the device's ifindex. The namespace lives as long
/// as the thread (a test's thread ends with the test).
fn private_netns(f: Family, net: &Network<'_>) -> u32 {
    // SAFETY: unshare affects only the calling thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    }
    // Children spawned from this thread start in its namespace.
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&["link", "set", "lo", "up"]);
    // A veth pair whose peer stays in the namespace too (kernels without the dummy
    // driver have veth: the end-to-end suites need it).
    ip(&["link", "add", DEVICE, "type", "veth", "peer", "name", PEER]);
    // The fixture frames' destination, so a test run takes them as addressed to this
    // host (the kernel sets pkt_type by comparing with the device's address).
    let mac = crate::packet::DST_MAC.map(|b| format!("{b:02x}")).join(":");
    ip(&["link", "set", DEVICE, "address", &mac]);
    ip(&["link", "set", PEER, "up"]);
    ip(&["link", "set", DEVICE, "up"]);
    for (addr, len) in net.node_addresses {
        let addr = format!("{}/{}", f.ip(*addr), f.prefix(*len));
        // nodad: usable at once (duplicate address detection would keep it
        // tentative for a while; nobody else is on this link).
        match f {
            Family::V4 => ip(&["addr", "add", &addr, "dev", DEVICE]),
            Family::V6 => ip(&["-6", "addr", "add", &addr, "dev", DEVICE, "nodad"]),
        }
    }
    for (dst, via) in net.routes {
        let (dst, via) = (f.cidr(dst), f.ip(*via).to_string());
        ip(&["route", "add", &dst, "via", &via, "dev", DEVICE]);
    }
    // /proc/sys/net is the namespace of the thread that opens it. The FIB lookup of
    // either family refuses to route without forwarding on.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("enabling forwarding");
    std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
        .expect("enabling IPv6 forwarding");
    let name = std::ffi::CString::new(DEVICE).expect("a device name");
    // SAFETY: a NUL-terminated name; the lookup runs in this thread's namespace.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(ifindex, 0, "{DEVICE} has no ifindex");
    ifindex
}

impl Fixture {
    /// Loads the programs of family `f` and programs the maps as the agent would for
    /// `objects` (Services and EndpointSlices as the API server sends them) on node
    /// [`NODE`] with `net` (node addresses, SNAT address of the device, routes), as an
    /// agent with the balancing flags `maglev` (the Maglev map sized and the programs'
    /// globals set by the agent's loader), in a network namespace of the calling
    /// thread's own (see [`private_netns`]): use the fixture on that thread only. None
    /// (after printing SKIPPED) when the machine cannot run it.
    pub fn with_balancing(
        f: Family,
        objects: &[Value],
        net: &Network<'_>,
        maglev: MaglevConfig,
    ) -> Option<Self> {
        if !require_root_and_bpf() {
            return None;
        }
        let ifindex = private_netns(f, net);
        let (ebpf, pins) = load_programs(f, &maglev);
        let mut maps = KernelMaps::open_pinned(pins.path()).expect("opening the pinned maps");
        let capacity = Capacity {
            maglev,
            ..Capacity::default()
        };
        let mut state = ProgrammedState::with_capacity(capacity);
        let mut state6 = ProgrammedState::with_capacity(capacity);
        let plan = program(&mut maps, &mut state, &mut state6, objects);
        // The agent's view of the node: its addresses in both families (the v4 test
        // addresses and their twins), so each family's programs see their own.
        let node_addresses: Vec<Ipv4Addr> = net.node_addresses.iter().map(|(a, _)| *a).collect();
        maps.set_node_addresses(&node_addresses)
            .expect("writing node addresses");
        let node_addresses6: Vec<_> = node_addresses
            .iter()
            .map(|a| crate::family::v6_of(*a))
            .collect();
        maps.set_node_addresses6(&node_addresses6)
            .expect("writing IPv6 node addresses");
        maps.set_devices(&[Device {
            name: DEVICE.into(),
            ifindex,
            snat_addr: net.snat_addr,
            snat_addr6: crate::family::v6_of(net.snat_addr),
        }])
        .expect("writing devices");

        let ct_name = match f {
            Family::V4 => map_names::CT4,
            Family::V6 => map_names::CT6,
        };
        let ct_map =
            MapData::from_pin(pins.path().join(ct_name)).expect("opening the conntrack pin");
        let ct_map = Map::from_map_data(ct_map).expect("a map");
        let ct = match f {
            Family::V4 => CtMap::V4(BpfHashMap::try_from(ct_map).expect("the conntrack map")),
            Family::V6 => CtMap::V6(BpfHashMap::try_from(ct_map).expect("the conntrack map")),
        };
        Some(Self {
            family: f,
            ebpf,
            maps,
            ct,
            plan,
            state,
            state6,
            ifindex,
            pins,
        })
    }

    /// Programs the maps for `objects` instead, as the agent does when they change:
    /// the diff from what the maps hold, op by op.
    pub fn reprogram(&mut self, objects: &[Value]) {
        self.plan = program(&mut self.maps, &mut self.state, &mut self.state6, objects);
    }
}

/// Loads the object with its maps pinned in a fresh [`PinDir`] and the family's
/// programs (IPv6: with the tail calls filled).
///
/// The verifier gives up with EAGAIN when a signal is pending on the loading thread
/// (another test's `ip` child exiting); the IPv6 programs take long enough to verify
/// to meet that now and then, so such a load is tried again, from a fresh object.
fn load_programs(f: Family, maglev: &MaglevConfig) -> (Ebpf, PinDir) {
    const ATTEMPTS: usize = 5;
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        let pins = PinDir::create();
        match try_load_programs(f, maglev, pins.path()) {
            Ok(ebpf) => return (ebpf, pins),
            Err(e) if e.contains("WouldBlock") => last = e,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("loading the programs: EAGAIN {ATTEMPTS} times: {last}");
}

fn try_load_programs(f: Family, maglev: &MaglevConfig, pins: &Path) -> Result<Ebpf, String> {
    let mut ebpf = kernel::load_object_with(pins, maglev)
        .map_err(|e| format!("loading the embedded eBPF object: {e:?}"))?;
    for hook in [Hook::Ingress, Hook::Egress] {
        let name = hook.program(f);
        let prog: &mut SchedClassifier = ebpf
            .program_mut(&name)
            .unwrap_or_else(|| panic!("the object has no program {name}"))
            .try_into()
            .expect("a classifier");
        prog.load().map_err(|e| format!("loading {name}: {e:?}"))?;
    }
    if f == Family::V6 {
        kernel::fill_tc6_calls(&mut ebpf).map_err(|e| format!("filling lb6_tc_calls: {e:?}"))?;
    }
    Ok(ebpf)
}

/// The agent's path: objects -> models -> plan -> desired state -> map ops, applied to
/// `maps` from the mirror `state`. Returns the plan.
fn program(
    maps: &mut KernelMaps,
    state: &mut ProgrammedState<V4>,
    state6: &mut ProgrammedState<V6>,
    objects: &[Value],
) -> Plan {
    {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for object in objects {
            match object["kind"].as_str() {
                Some("Service") => {
                    let svc: Service = serde_json::from_value(object.clone()).expect("a Service");
                    services.push(
                        ServiceModel::from_k8s(&svc)
                            .expect("a valid Service")
                            .expect("a proxied Service"),
                    );
                }
                Some("EndpointSlice") => {
                    let slice: EndpointSlice =
                        serde_json::from_value(object.clone()).expect("an EndpointSlice");
                    slices.push(
                        SliceModel::from_k8s(&slice)
                            .expect("a valid slice")
                            .expect("a used slice"),
                    );
                }
                other => panic!("unexpected object kind {other:?}"),
            }
        }
        let plan = compute_plan(&services, &slices, &NodeModel::named(NODE));
        assert!(
            plan.conflicts.is_empty(),
            "conflicting frontends: {:?}",
            plan.conflicts
        );
        let desired = DesiredState::from_frontends(&plan.frontends);
        let (ops, stats) = state.sync_all(&desired);
        assert!(
            stats.skipped_full.is_empty() && stats.maglev_full.is_empty(),
            "maps full: {stats:?}"
        );
        for op in &ops {
            maps.apply(op)
                .unwrap_or_else(|e| panic!("applying {op:?}: {e}"));
        }
        let (ops, stats) = state6.sync_all(&desired);
        assert!(
            stats.skipped_full.is_empty() && stats.maglev_full.is_empty(),
            "IPv6 maps full: {stats:?}"
        );
        for op in &ops {
            maps.apply(op)
                .unwrap_or_else(|e| panic!("applying {op:?}: {e}"));
        }
        plan
    }
}

impl Fixture {
    pub fn pin_dir(&self) -> &Path {
        self.pins.path()
    }

    /// How many instructions the verifier processed when it loaded `program` (a
    /// hook's, or an IPv6 tail-call target; the kernel's `verified_insns`); None on a
    /// kernel that does not report it.
    pub fn verified_insns(&self, program: &str) -> Option<u32> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(program)
            .expect("program present")
            .try_into()
            .expect("a classifier");
        prog.info()
            .expect("the program's info")
            .verified_instruction_count()
    }

    /// Runs `frame` through a program once (BPF_PROG_TEST_RUN), as received on (or
    /// sent through) [`DEVICE`].
    pub fn run(&self, hook: Hook, frame: &[u8]) -> Run {
        self.run_gso(hook, frame, 0, 0)
    }

    /// [`Fixture::run`] for a packet the kernel holds as `gso_segs` segments of
    /// `gso_size` bytes (a GRO-merged one); 0 and 0 for a plain packet.
    pub fn run_gso(&self, hook: Hook, frame: &[u8], gso_segs: u32, gso_size: u32) -> Run {
        let name = hook.program(self.family);
        let prog: &SchedClassifier = self
            .ebpf
            .program(&name)
            .expect("program present")
            .try_into()
            .expect("a classifier");
        let mut out = vec![0u8; frame.len() + 512];
        // struct __sk_buff up to gso_size: ingress_ifindex (offset 36, what the
        // program's FIB lookup starts from), ifindex (offset 40, the skb's device),
        // gso_segs (164) and gso_size (176), the fields a test run takes; the kernel
        // wants every other one zero.
        let mut skb_ctx = [0u8; 180];
        skb_ctx[36..40].copy_from_slice(&self.ifindex.to_ne_bytes());
        skb_ctx[40..44].copy_from_slice(&self.ifindex.to_ne_bytes());
        skb_ctx[164..168].copy_from_slice(&gso_segs.to_ne_bytes());
        skb_ctx[176..180].copy_from_slice(&gso_size.to_ne_bytes());
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&skb_ctx),
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {name}: {e:?}"));
        out.truncate(result.data_size_out as usize);
        Run {
            verdict: result.return_value,
            output: out,
        }
    }

    pub fn ingress(&self, frame: &[u8]) -> Run {
        self.run(Hook::Ingress, frame)
    }

    pub fn egress(&self, frame: &[u8]) -> Run {
        self.run(Hook::Egress, frame)
    }

    /// A conntrack entry of the fixture's family.
    pub fn ct(&self, key: &CtKey) -> Option<CtEntry> {
        self.ct.get(key)
    }

    /// Writes a conntrack entry (for setups the programs cannot produce, such as an
    /// expired entry).
    pub fn put_ct(&mut self, key: CtKey, value: CtEntry) {
        self.ct.put(&key, &value);
    }

    /// Removes a conntrack entry (the flow's next packet is a new flow).
    pub fn remove_ct(&mut self, key: &CtKey) {
        self.ct.remove(key);
    }

    /// Every conntrack entry of the fixture's family, through the agent's reader.
    pub fn ct_entries(&self) -> Vec<(CtKey, CtEntry)> {
        match self.family {
            Family::V4 => self
                .maps
                .conntrack_entries()
                .iter()
                .map(|(k, v)| {
                    let key = CtKey {
                        src: SocketAddrV4::new(ip_from_map(k.saddr), port_from_map(k.sport)),
                        dst: SocketAddrV4::new(ip_from_map(k.daddr), port_from_map(k.dport)),
                        proto: k.proto,
                    };
                    (key, entry4(v))
                })
                .collect(),
            Family::V6 => self
                .maps
                .conntrack6_entries()
                .iter()
                .map(|(k, v)| {
                    let key = CtKey {
                        src: test_sock6(ip6_from_map(&k.saddr), port_from_map(k.sport)),
                        dst: test_sock6(ip6_from_map(&k.daddr), port_from_map(k.dport)),
                        proto: k.proto,
                    };
                    (key, entry6(v))
                })
                .collect(),
        }
    }

    /// A counter summed over CPUs, through the agent's reader.
    pub fn counter(&self, counter: Counter) -> u64 {
        self.maps
            .counters()
            .expect("reading counters")
            .into_iter()
            .find(|(c, _)| *c == counter)
            .map_or(0, |(_, v)| v)
    }

    /// All counters, by name (for failure messages).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        self.maps
            .counters()
            .expect("reading counters")
            .into_iter()
            .map(|(c, v)| (c.name(), v))
            .collect()
    }
}

/// The clock of bpf_ktime_get_ns (CLOCK_MONOTONIC), in ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
