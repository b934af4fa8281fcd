//! Stale sockets: when a backend leaves a frontend (a slice change, a deleted pod),
//! the connected sockets that the socket hooks translated to it for that frontend
//! are destroyed, so the application gets ECONNABORTED and reconnects (to a backend
//! that exists) instead of sending into the void: the CoreDNS-restart case of
//! connected UDP resolvers.
//!
//! - Which pairs departed: the diff reports them per sync
//!   ([`socklb_core::maps::SyncStats::departed`], internal-scope frontends only).
//! - UDP always; TCP only when asked (`--terminate-stale-tcp`): like kube-proxy and
//!   Cilium, established TCP connections are left alone by default (an application
//!   may be in the middle of a request to a backend that is draining).
//! - Where: the kernel programs are socket iterators (lb-ebpf `stale.rs`), which see
//!   the sockets of one network namespace, the one they are created in. A pass runs
//!   them in the agent's own namespace and in every distinct namespace of the
//!   processes in the attached cgroup's subtree ([`super::netns`]), with the departed
//!   pairs in the kill maps `lb4_sk_kill_v1` and `lb6_sk_kill_v1` for the pass only
//!   (the iterators see AF_INET and AF_INET6 sockets; an AF_INET6 socket translated
//!   for an IPv4-mapped service address is named by an IPv4 pair). A worker thread runs
//!   the passes; it spreads the namespaces over a few short-lived threads (one per
//!   CPU, at most four) that enter theirs in turn with setns(2).
//! - Which sockets: only connected ones that socklb translated for that frontend to
//!   that backend (see lb-ebpf `stale.rs`): never unconnected UDP sockets (their
//!   source port would change under the application), never sockets that connected
//!   to a backend address directly, never sockets of another frontend that keeps the
//!   backend.
//! - Cost: nothing for a sync in which nothing departed. Otherwise the sync only
//!   queues the pairs; the worker coalesces what queued while it ran into one pass
//!   (a pass costs one iterator run per namespace: about 25 µs for UDP when nothing
//!   is destroyed, 0.5 ms for TCP, whose table is global, plus about 10 µs of CPU per
//!   socket destroyed, mostly waking its application). The sync path never waits.
//! - Kernels without `bpf_sock_destroy` (< 6.5) or without BTF: the agent says so
//!   once and everything else works; departures are then only logged (debug).
//!
//! Races, accepted: a socket that connects between the map write that removes a
//! backend and the pass has already seen the new slots; one whose connect4 read the
//! old slot just before the write but connects after the pass keeps the departed
//! backend (a window of the connect path's length). A backend that leaves and comes
//! back within one pass's delay gets its sockets destroyed anyway (they reconnect).
//! A restart between a sync and its pass loses that pass: the new agent's diff
//! starts from the maps, which no longer hold the backend.
use std::{
    collections::BTreeSet,
    fs::File,
    io::Read as _,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
    sync::mpsc,
    thread::JoinHandle,
    time::Instant,
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
    programs::{Iter, ProgramError},
};
use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd};
use lb_common::{
    Addr6, IPPROTO_TCP, IPPROTO_UDP, SOCK_KILL_PRESENT, SockDestroy, SockKill4Key, SockKill6Key,
    capacity, map_names,
};
use socklb_core::maps::{BackendKey, FrontendKey, port_from_map, v4, v6};
use tracing::{debug, info, warn};

use super::{kernel::LoadedObject, netns};
use crate::metrics::{ProtocolLabels, StaleSocketMetrics};

/// The iterator programs: (program, iterator target, section, protocol).
const ITERATORS: [(&str, &str, &str, u8); 2] = [
    ("sock_stale_udp", "udp", "iter/udp", IPPROTO_UDP),
    ("sock_stale_tcp", "tcp", "iter/tcp", IPPROTO_TCP),
];

/// Bytes asked for per read of an iterator (its seq_file buffer is 8 pages).
const READ_SIZE: usize = 64 * 1024;

/// The kfunc the iterators call.
const KFUNC: &str = "bpf_sock_destroy";

/// Why stale sockets cannot be destroyed here.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("the kernel has no BTF (/sys/kernel/btf/vmlinux)")]
    NoBtf,
    #[error("the kernel has no {KFUNC} kfunc (Linux 6.5 or newer)")]
    NoKfunc,
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("loading {program}: {source}")]
    Load {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("the kill map: {0}")]
    Map(#[from] aya::maps::MapError),
}

/// The loaded iterators and the kill maps they read.
pub struct SocketIterators {
    ebpf: Ebpf,
    kill: BpfHashMap<MapData, SockKill4Key, u8>,
    kill6: BpfHashMap<MapData, SockKill6Key, u8>,
    tcp: bool,
}

/// A departed (frontend, backend) pair as a kill map keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum KillKey {
    V4(SockKill4Key),
    V6(SockKill6Key),
}

impl KillKey {
    fn proto(&self) -> u8 {
        match self {
            KillKey::V4(k) => k.proto,
            KillKey::V6(k) => k.proto,
        }
    }
}

impl SocketIterators {
    fn insert(&mut self, key: &KillKey) -> Result<(), aya::maps::MapError> {
        match key {
            KillKey::V4(k) => self.kill.insert(k, SOCK_KILL_PRESENT, 0),
            KillKey::V6(k) => self.kill6.insert(k, SOCK_KILL_PRESENT, 0),
        }
    }

    fn remove(&mut self, key: &KillKey) -> Result<(), aya::maps::MapError> {
        match key {
            KillKey::V4(k) => self.kill.remove(k),
            KillKey::V6(k) => self.kill6.remove(k),
        }
    }
}

impl SocketIterators {
    /// Loads the UDP iterator (and the TCP one when `tcp`) from the object `install`
    /// loaded; the kernel BTF is dropped afterwards (it is large).
    pub fn load(loaded: LoadedObject, tcp: bool) -> Result<SocketIterators, Unavailable> {
        let LoadedObject {
            mut ebpf,
            btf,
            kfuncs,
        } = loaded;
        let btf = btf.ok_or(Unavailable::NoBtf)?;
        for (program, target, section, proto) in ITERATORS {
            if proto == IPPROTO_TCP && !tcp {
                continue;
            }
            if kfuncs
                .iter()
                .any(|c| c.section == section && c.btf_id.is_none())
            {
                return Err(Unavailable::NoKfunc);
            }
            let prog: &mut Iter = ebpf
                .program_mut(program)
                .ok_or(Unavailable::Missing(program))?
                .try_into()
                .map_err(|source| Unavailable::Load { program, source })?;
            prog.load(target, &btf)
                .map_err(|source| Unavailable::Load { program, source })?;
        }
        let kill = ebpf
            .take_map(map_names::SOCK_KILL4)
            .ok_or(Unavailable::Missing(map_names::SOCK_KILL4))?;
        let kill6 = ebpf
            .take_map(map_names::SOCK_KILL6)
            .ok_or(Unavailable::Missing(map_names::SOCK_KILL6))?;
        Ok(SocketIterators {
            ebpf,
            kill: BpfHashMap::try_from(kill)?,
            kill6: BpfHashMap::try_from(kill6)?,
            tcp,
        })
    }

    /// The loaded iterator programs of the protocols in `protos`.
    fn programs(&self, protos: &[u8]) -> Vec<(u8, BorrowedFd<'_>)> {
        ITERATORS
            .iter()
            .filter(|i| protos.contains(&i.3))
            .filter_map(|(program, _, _, proto)| {
                let prog: &Iter = self.ebpf.program(program)?.try_into().ok()?;
                Some((*proto, prog.fd().ok()?.as_fd()))
            })
            .collect()
    }
}

/// Runs the iterator program `prog` once in the calling thread's network namespace;
/// what it destroyed. The namespace is bound when the iterator file is created
/// (BPF_ITER_CREATE), so each run makes a link and a file of its own, microseconds;
/// by hand rather than through aya's `Iter::attach`, which needs the program
/// mutably and so could not serve several threads at once.
fn iterate(prog: BorrowedFd<'_>) -> std::io::Result<Vec<SockDestroy>> {
    // SAFETY: bpf_attr is a plain C union, valid when zeroed.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.link_create.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    attr.link_create.attach_type = bpf_attach_type::BPF_TRACE_ITER as u32;
    let link = bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.iter_create.link_fd = link.as_raw_fd() as u32;
    // The iterator file holds the link; ours is closed on return.
    let mut file = File::from(bpf(bpf_cmd::BPF_ITER_CREATE, &mut attr)?);
    // Large reads: the kernel stops the iteration (and resumes it at the next read)
    // whenever the reader's buffer is full.
    let mut out = Vec::new();
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(parse_records(&out))
}

/// bpf(2) for a command that returns a new file descriptor.
fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<OwnedFd> {
    // SAFETY: attr is a valid bpf_attr of the size passed; the kernel reads only it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// The iterator's output: whole [`SockDestroy`] records.
fn parse_records(bytes: &[u8]) -> Vec<SockDestroy> {
    bytes
        .chunks_exact(std::mem::size_of::<SockDestroy>())
        // SAFETY: each chunk holds exactly one record's bytes, written by the kernel
        // program from a SockDestroy (any byte pattern is a valid one: plain integers).
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<SockDestroy>()) })
        .collect()
}

/// Departed pairs of one or more syncs.
struct Batch {
    keys: Vec<KillKey>,
    /// The first change of the earliest sync they came from.
    since: Instant,
}

/// Stale-socket termination: queues departures to the worker thread.
pub struct StaleSockets {
    tx: Option<mpsc::Sender<Batch>>,
    worker: Option<JoinHandle<()>>,
    tcp: bool,
}

impl StaleSockets {
    /// Starts the worker that runs passes for `iterators` over the network namespaces
    /// of `cgroup`'s subtree.
    pub fn start(
        iterators: SocketIterators,
        cgroup: PathBuf,
        metrics: StaleSocketMetrics,
    ) -> std::io::Result<StaleSockets> {
        let tcp = iterators.tcp;
        let (tx, rx) = mpsc::channel::<Batch>();
        let worker = std::thread::Builder::new()
            .name("stale-sockets".into())
            .spawn(move || worker(iterators, &cgroup, &rx, &metrics))?;
        Ok(StaleSockets {
            tx: Some(tx),
            worker: Some(worker),
            tcp,
        })
    }

    /// Queues the sockets of `departed` for destruction; `since` is when the first
    /// change that led to them reached the agent. Returns the pairs queued (UDP ones,
    /// and TCP ones when enabled). Never blocks.
    pub fn submit(&self, departed: &[(FrontendKey, BackendKey)], since: Instant) -> usize {
        let keys = kill_keys(departed, self.tcp);
        let queued = keys.len();
        if queued > 0
            && let Some(tx) = &self.tx
            && tx.send(Batch { keys, since }).is_err()
        {
            warn!("the stale-socket worker has stopped; departed backends keep their sockets");
        }
        queued
    }
}

impl Drop for StaleSockets {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The kill-map keys of `departed`: UDP, and TCP when `tcp`.
fn kill_keys(departed: &[(FrontendKey, BackendKey)], tcp: bool) -> Vec<KillKey> {
    departed
        .iter()
        .filter_map(|(frontend, backend)| {
            v4::sock_kill_key(frontend, backend)
                .map(KillKey::V4)
                .or_else(|| v6::sock_kill_key(frontend, backend).map(KillKey::V6))
        })
        .filter(|k| k.proto() == IPPROTO_UDP || (tcp && k.proto() == IPPROTO_TCP))
        .collect()
}

/// What one pass did.
#[derive(Debug, Default)]
struct Pass {
    pairs: usize,
    namespaces: usize,
    /// Namespaces it could not enter or run in.
    namespace_errors: usize,
    destroyed_udp: u64,
    destroyed_tcp: u64,
    failed_udp: u64,
    failed_tcp: u64,
    /// cgroup processes outside the agent's PID namespace (not visited).
    invisible: usize,
    /// cgroup processes whose network namespace the agent may not open.
    denied: usize,
}

fn worker(
    mut iterators: SocketIterators,
    cgroup: &Path,
    rx: &mpsc::Receiver<Batch>,
    metrics: &StaleSocketMetrics,
) {
    let home = match netns::own() {
        Ok(home) => home,
        Err(e) => {
            warn!(error = %e, "cannot open the agent's network namespace; stale sockets are not destroyed");
            return;
        }
    };
    let mut warned_invisible = false;
    let mut warned_denied = false;
    while let Ok(first) = rx.recv() {
        let mut since = first.since;
        let mut keys: BTreeSet<KillKey> = first.keys.into_iter().collect();
        // What queued while the last pass ran: one pass for all of it.
        while let Ok(more) = rx.try_recv() {
            since = since.min(more.since);
            keys.extend(more.keys);
        }
        let started = Instant::now();
        let pass = run_pass(&mut iterators, &keys, &home, cgroup);
        let took = started.elapsed();
        let total = since.elapsed();
        metrics.passes.inc();
        metrics
            .namespaces
            .set(i64::try_from(pass.namespaces).unwrap_or(i64::MAX));
        metrics.duration_seconds.observe(total.as_secs_f64());
        for (protocol, destroyed, failed) in [
            ("udp", pass.destroyed_udp, pass.failed_udp),
            ("tcp", pass.destroyed_tcp, pass.failed_tcp),
        ] {
            let labels = ProtocolLabels { protocol };
            if destroyed > 0 {
                metrics.destroyed.get_or_create(&labels).inc_by(destroyed);
            }
            if failed > 0 {
                metrics
                    .destroy_failures
                    .get_or_create(&labels)
                    .inc_by(failed);
            }
        }
        if pass.invisible > 0 && !warned_invisible {
            warned_invisible = true;
            warn!(
                cgroup = %cgroup.display(),
                processes = pass.invisible,
                "processes of the cgroup are outside the agent's PID namespace (no hostPID?): their network namespaces are not searched for stale sockets"
            );
        }
        if (pass.denied > 0 || pass.namespace_errors > 0) && !warned_denied {
            warned_denied = true;
            warn!(
                cgroup = %cgroup.display(),
                not_opened = pass.denied,
                not_entered = pass.namespace_errors,
                "network namespaces of processes in the cgroup could not be opened or entered: their stale sockets are not destroyed (opening /proc/PID/ns/net of a process with other capabilities needs CAP_SYS_PTRACE, entering it CAP_SYS_ADMIN)"
            );
        }
        let destroyed = pass.destroyed_udp + pass.destroyed_tcp;
        let failed = pass.failed_udp + pass.failed_tcp;
        if destroyed > 0 || failed > 0 || pass.namespace_errors > 0 {
            info!(
                udp = pass.destroyed_udp,
                tcp = pass.destroyed_tcp,
                failed,
                pairs = pass.pairs,
                netns = pass.namespaces,
                netns_errors = pass.namespace_errors,
                pass_us = took.as_micros() as u64,
                since_change_us = total.as_micros() as u64,
                "stale sockets destroyed"
            );
        } else {
            debug!(
                pairs = pass.pairs,
                netns = pass.namespaces,
                pass_us = took.as_micros() as u64,
                "no stale sockets"
            );
        }
    }
}

/// Threads a pass spreads the namespaces over (at most; one per CPU). A pass wakes
/// every application whose socket it destroys, and those compete with it for the
/// CPUs: on more of them it is done sooner.
const MAX_PASS_THREADS: usize = 4;

/// One pass: the pairs in the kill map (in chunks of its capacity), the iterators
/// run in every namespace, the map emptied again. The namespaces are spread over a
/// few short-lived threads, each entering its share in turn; the worker thread itself
/// never leaves the agent's namespace.
fn run_pass(
    iterators: &mut SocketIterators,
    keys: &BTreeSet<KillKey>,
    home: &File,
    cgroup: &Path,
) -> Pass {
    let found = netns::cgroup_namespaces(home, cgroup);
    let mut pass = Pass {
        pairs: keys.len(),
        namespaces: found.namespaces.len(),
        invisible: found.invisible,
        denied: found.denied,
        ..Pass::default()
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_PASS_THREADS)
        .min(found.namespaces.len().max(1));
    let share = found.namespaces.len().div_ceil(threads).max(1);
    let keys: Vec<KillKey> = keys.iter().copied().collect();
    for chunk in keys.chunks(capacity::SOCK_KILL4 as usize) {
        let mut written = Vec::with_capacity(chunk.len());
        for key in chunk {
            match iterators.insert(key) {
                Ok(()) => written.push(*key),
                Err(e) => {
                    warn!(error = %e, "writing the kill map failed; that pair keeps its sockets")
                }
            }
        }
        let protocols: Vec<u8> = [IPPROTO_UDP, IPPROTO_TCP]
            .into_iter()
            .filter(|p| written.iter().any(|k| k.proto() == *p))
            .collect();
        let programs = iterators.programs(&protocols);
        let parts: Vec<(Vec<SockDestroy>, usize)> = std::thread::scope(|scope| {
            let handles: Vec<_> = found
                .namespaces
                .chunks(share)
                .map(|namespaces| {
                    let programs = &programs;
                    scope.spawn(move || pass_over(namespaces, programs))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| (Vec::new(), 1)))
                .collect()
        });
        for (records, errors) in parts {
            count(&mut pass, &records);
            pass.namespace_errors += errors;
        }
        for key in &written {
            if let Err(e) = iterators.remove(key) {
                debug!(error = %e, "removing a kill-map entry failed");
            }
        }
    }
    pass
}

/// Runs `programs` in each of `namespaces` in turn, on the calling (short-lived)
/// thread: what they destroyed, and the namespaces or runs that failed.
fn pass_over(
    namespaces: &[netns::Netns],
    programs: &[(u8, BorrowedFd<'_>)],
) -> (Vec<SockDestroy>, usize) {
    let (mut records, mut errors) = (Vec::new(), 0);
    for ns in namespaces {
        if let Err(e) = netns::enter(&ns.file) {
            // A process that left meanwhile keeps its namespace open through our
            // file; entering fails only without privileges.
            debug!(pid = ?ns.pid, error = %e, "cannot enter network namespace");
            errors += 1;
            continue;
        }
        for (proto, prog) in programs {
            match iterate(*prog) {
                Ok(r) => records.extend(r),
                Err(e) => {
                    debug!(pid = ?ns.pid, proto, error = %e, "socket iterator failed");
                    errors += 1;
                }
            }
        }
    }
    (records, errors)
}

/// An address of a record: IPv6, an IPv4 one mapped (`::ffff:a.b.c.d`).
fn record_ip(raw: &Addr6) -> IpAddr {
    IpAddr::V6(v6::ip6_from_map(raw)).to_canonical()
}

fn count(pass: &mut Pass, records: &[SockDestroy]) {
    for r in records {
        let (destroyed, failed) = match r.proto {
            IPPROTO_TCP => (&mut pass.destroyed_tcp, &mut pass.failed_tcp),
            _ => (&mut pass.destroyed_udp, &mut pass.failed_udp),
        };
        if r.result == 0 {
            *destroyed += 1;
        } else {
            *failed += 1;
        }
        debug!(
            cookie = r.cookie,
            service = %SocketAddr::new(record_ip(&r.svc_address), port_from_map(r.svc_port)),
            backend = %SocketAddr::new(record_ip(&r.backend_address), port_from_map(r.backend_port)),
            proto = r.proto,
            result = r.result,
            "stale socket destroyed"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use std::net::Ipv4Addr;

    use socklb_core::{
        maps::{Scope, ip_to_map, port_to_map},
        model::Protocol,
        plan::FrontendAddr,
    };

    use super::*;

    fn pair(protocol: Protocol, backend: &str) -> (FrontendKey, BackendKey) {
        (
            FrontendKey::new(
                FrontendAddr {
                    ip: "10.96.0.10".parse().unwrap(),
                    port: 53,
                    protocol,
                },
                Scope::Internal,
            ),
            BackendKey {
                addr: backend.parse().unwrap(),
                protocol,
                local: false,
            },
        )
    }

    #[test]
    fn udp_always_tcp_only_when_asked() {
        let departed = [
            pair(Protocol::Udp, "10.244.0.21:5353"),
            pair(Protocol::Tcp, "10.244.0.21:5353"),
            pair(Protocol::Udp, "[fd00::1]:53"),
        ];
        let udp_only = kill_keys(&departed, false);
        // The IPv6 backend of an IPv4 frontend is no pair of either family.
        assert_eq!(udp_only.len(), 1);
        let KillKey::V4(k) = udp_only[0] else {
            panic!("{udp_only:?}")
        };
        assert_eq!(k.proto, IPPROTO_UDP);
        assert_eq!(k.svc_address, ip_to_map(Ipv4Addr::new(10, 96, 0, 10)));
        assert_eq!(
            (k.svc_port, k.backend_port),
            (port_to_map(53), port_to_map(5353))
        );
        let both = kill_keys(&departed, true);
        assert_eq!(both.len(), 2);
        assert!(both.iter().any(|k| k.proto() == IPPROTO_TCP));
    }

    #[test]
    fn ipv6_pairs_go_to_the_ipv6_kill_map() {
        let departed = [(
            FrontendKey::new(
                FrontendAddr {
                    ip: "fd00:96::a".parse().unwrap(),
                    port: 53,
                    protocol: Protocol::Udp,
                },
                Scope::Internal,
            ),
            BackendKey {
                addr: "[fd00:244::21]:5353".parse().unwrap(),
                protocol: Protocol::Udp,
                local: false,
            },
        )];
        let keys = kill_keys(&departed, false);
        let [KillKey::V6(k)] = keys[..] else {
            panic!("{keys:?}")
        };
        assert_eq!(k.svc_address, v6::ip6_to_map("fd00:96::a".parse().unwrap()));
        assert_eq!(
            (k.svc_port, k.backend_port, k.proto),
            (port_to_map(53), port_to_map(5353), IPPROTO_UDP)
        );
    }

    #[test]
    fn records_are_read_whole() {
        let rec = SockDestroy {
            cookie: 7,
            result: -2,
            proto: IPPROTO_UDP,
            ..Default::default()
        };
        let mut bytes = Vec::new();
        for _ in 0..3 {
            // SAFETY: a plain repr(C) value without padding, viewed as bytes.
            bytes.extend_from_slice(unsafe {
                std::slice::from_raw_parts(
                    std::ptr::from_ref(&rec).cast::<u8>(),
                    std::mem::size_of::<SockDestroy>(),
                )
            });
        }
        bytes.push(0); // a torn tail is ignored
        let got = parse_records(&bytes);
        assert_eq!(got, vec![rec; 3]);
        let mut pass = Pass::default();
        count(&mut pass, &got);
        assert_eq!((pass.destroyed_udp, pass.failed_udp), (0, 3));
    }
}

/// The offsets of vmlinux `struct sock_common` that lb-ebpf `stale.rs` reads (Rust has
/// no CO-RE: they are fixed there), against the running kernel's BTF.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod sock_common_layout {
    use std::process::Command;

    /// (field, byte offset) as `stale.rs` has them.
    const FIELDS: [(&str, u64); 4] = [
        ("skc_family", 16),
        ("skc_state", 18),
        ("skc_v6_daddr", 56),
        ("skc_v6_rcv_saddr", 72),
    ];

    #[test]
    fn sock_common_layout() {
        let in_ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        let dump = Command::new("bpftool")
            .args([
                "btf",
                "dump",
                "file",
                "/sys/kernel/btf/vmlinux",
                "format",
                "raw",
            ])
            .output();
        let dump = match dump {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
            other => {
                assert!(!in_ci, "bpftool btf dump of the kernel's BTF: {other:?}");
                eprintln!("SKIPPED: no bpftool or no kernel BTF ({other:?})");
                return;
            }
        };
        let members: Vec<&str> = dump
            .lines()
            .skip_while(|l| !l.contains("STRUCT 'sock_common' "))
            .skip(1)
            .take_while(|l| l.starts_with('\t'))
            .collect();
        assert!(
            !members.is_empty(),
            "no struct sock_common in the kernel's BTF"
        );
        for (field, offset) in FIELDS {
            let line = members
                .iter()
                .find(|l| l.trim_start().starts_with(&format!("'{field}' ")))
                .unwrap_or_else(|| panic!("sock_common has no {field}"));
            let bits: u64 = line
                .split("bits_offset=")
                .nth(1)
                .and_then(|b| b.split_whitespace().next())
                .expect("a bits_offset")
                .parse()
                .expect("a number");
            assert_eq!(bits, offset * 8, "sock_common.{field}");
        }
    }
}
