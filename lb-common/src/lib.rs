//! Map layouts shared by the kernel programs (lb-ebpf) and the agent (lb-userspace).
//!
//! Every type is `#[repr(C)]` with explicit padding, so the kernel and userspace agree
//! byte for byte and BTF describes every byte. Any change to a layout gets a new map
//! name (the `_vN` suffix) so that an upgraded agent never misreads a pinned map left
//! by an older one.
#![no_std]

pub mod maglev;
mod stale;
pub mod v6;
pub use stale::*;
pub use v6::{
    Addr6, Affinity6Key, AffinityMatch6Key, Backend6, Ct6Key, Ct6Value, Device6, Frag6Key,
    RevNat6Key, RevNat6Value, SOCK_STATE_FLAG_MAPPED, SRC_RANGE6_FRONTEND_BITS, SockBackend6Key,
    SockKill6Key, SockState6, SrcRange6Key, Svc6Key,
};

/// IP protocol numbers as they appear in keys.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Kernel and pin names of the maps. Kernel names are cut at 15 characters, so
/// these stay within 15.
pub mod map_names {
    /// Service table: frontends and their backend slots ([`super::Svc4Key`] -> [`super::Svc4Value`]).
    pub const SVC4: &str = "lb4_svc_v1";
    /// Backends by id ([`u32`] -> [`super::Backend4`]).
    pub const BACKEND4: &str = "lb4_be_v1";
    /// Reverse translation per socket ([`super::RevNat4Key`] -> [`super::RevNat4Value`]).
    pub const REVNAT4: &str = "lb4_rnat_v1";
    /// Backend chosen per UDP socket and service ([`super::SockBackend4Key`] -> [`super::SockBackend4Value`]).
    pub const SOCK_BACKEND4: &str = "lb4_sk_be_v1";
    /// Per-socket translation state in socket local storage ([`super::SockState4`]):
    /// the first service a socket talks to and its backend, freed with the socket.
    pub const SOCK_STATE4: &str = "lb4_sk_st_v1";
    /// Per-CPU counters indexed by [`super::Counter`] (v3: the reject answers' counters).
    pub const STATS: &str = "lb_stats_v3";
    /// Connection tracking of NodePort/LoadBalancer/external IP flows ([`super::Ct4Key`] -> [`super::Ct4Value`]).
    pub const CT4: &str = "lb4_ct_v1";
    /// This node's IPv4 addresses (u32 -> [`super::NodeAddr4`]): where NodePorts answer.
    pub const NODE_ADDR4: &str = "lb4_node_ip_v1";
    /// Per device (ifindex u32 -> [`super::Device4`]): the address SNAT uses.
    pub const DEVICE4: &str = "lb4_dev_v1";
    /// First fragments' ports, for the fragments after them ([`super::Frag4Key`] -> [`super::Frag4Value`]).
    pub const FRAG4: &str = "lb4_frag_v1";
    /// loadBalancerSourceRanges (LPM trie of [`super::SrcRange4Key`] -> u8).
    pub const SRC_RANGE4: &str = "lb4_srcrng_v1";
    /// ClientIP session affinity: (client, frontend) -> backend and when it was last
    /// used ([`super::Affinity4Key`] -> [`super::Affinity4Value`]).
    pub const AFFINITY4: &str = "lb4_aff_v1";
    /// The backends that still serve a frontend with affinity, and their slots
    /// ([`super::AffinityMatch4Key`] -> [`super::AffinityMatch4Value`]).
    pub const AFFINITY_MATCH4: &str = "lb4_affmatch_v1";
    /// What the agent last programmed, for `socklb status` (one [`super::AgentStatus`];
    /// written by the agent, read by nothing in the kernel).
    pub const AGENT_STATUS: &str = "lb_agent_v1";
    /// Per-CPU budget of the TC program's reject answers (one u64: see
    /// [`super::reject_rate`]).
    pub const REJECT_RATE4: &str = "lb4_rej_rate_v1";
    /// Stale-socket termination: (frontend, backend) pairs whose connected sockets
    /// the socket iterators destroy ([`super::SockKill4Key`] -> u8). Not pinned and
    /// not in [`ALL`]: the running agent fills it just before an iterator pass and
    /// empties it after, so nothing in it outlives the agent that wrote it.
    pub const SOCK_KILL4: &str = "lb4_sk_kill_v1";
    /// Maglev lookup tables of external frontends: one flat array of backend ids
    /// ([`u32`] index -> [`super::maglev::MaglevEntries`]), a header and then table
    /// after table (see [`super::maglev`]). Sized by the agent at load time.
    pub const MAGLEV4: &str = "lb4_maglev_v1";

    // The IPv6 twins ([`super::v6`]): the same meaning with 128-bit addresses.
    /// IPv6 service table ([`super::Svc6Key`] -> [`super::Svc4Value`]).
    pub const SVC6: &str = "lb6_svc_v1";
    /// IPv6 backends by id ([`u32`] -> [`super::Backend6`]); ids of their own.
    pub const BACKEND6: &str = "lb6_be_v1";
    /// IPv6 reverse translation ([`super::RevNat6Key`] -> [`super::RevNat6Value`]).
    pub const REVNAT6: &str = "lb6_rnat_v1";
    /// IPv6 UDP backend choice ([`super::SockBackend6Key`] -> [`super::SockBackend4Value`]).
    pub const SOCK_BACKEND6: &str = "lb6_sk_be_v1";
    /// Socket local storage of AF_INET6 sockets ([`super::SockState6`]).
    pub const SOCK_STATE6: &str = "lb6_sk_st_v1";
    /// IPv6 conntrack ([`super::Ct6Key`] -> [`super::Ct6Value`]).
    pub const CT6: &str = "lb6_ct_v1";
    /// This node's IPv6 addresses ([`super::Addr6`] -> [`super::NodeAddr4`]).
    pub const NODE_ADDR6: &str = "lb6_node_ip_v1";
    /// Per device, the IPv6 address SNAT uses (ifindex -> [`super::Device6`]).
    pub const DEVICE6: &str = "lb6_dev_v1";
    /// IPv6 first fragments' ports ([`super::Frag6Key`] -> [`super::Frag4Value`]).
    pub const FRAG6: &str = "lb6_frag_v1";
    /// IPv6 loadBalancerSourceRanges (LPM trie of [`super::SrcRange6Key`] -> u8).
    pub const SRC_RANGE6: &str = "lb6_srcrng_v1";
    /// IPv6 session affinity ([`super::Affinity6Key`] -> [`super::Affinity4Value`]).
    pub const AFFINITY6: &str = "lb6_aff_v1";
    /// IPv6 affinity matches ([`super::AffinityMatch6Key`] -> [`super::AffinityMatch4Value`]).
    pub const AFFINITY_MATCH6: &str = "lb6_affmatch_v1";
    /// Maglev tables of IPv6 external frontends (as [`MAGLEV4`], IPv6 backend ids).
    pub const MAGLEV6: &str = "lb6_maglev_v1";
    /// IPv6 kill map of stale-socket termination ([`super::SockKill6Key`] -> u8); not
    /// pinned, as [`SOCK_KILL4`].
    pub const SOCK_KILL6: &str = "lb6_sk_kill_v1";
    /// The IPv6 TC programs' tail calls (index [`super::tc6_calls`] -> program), filled
    /// by the agent after loading the programs. Pinned: the kernel empties a program
    /// array once no file descriptor or pin holds it, and the attached programs
    /// outlive the agent.
    pub const TC6_CALLS: &str = "lb6_tc_calls";

    /// Every map the data path pins, for inspection and uninstall.
    pub const ALL: [&str; 30] = [
        SVC4,
        BACKEND4,
        REVNAT4,
        SOCK_BACKEND4,
        SOCK_STATE4,
        STATS,
        CT4,
        NODE_ADDR4,
        DEVICE4,
        FRAG4,
        SRC_RANGE4,
        AFFINITY4,
        AFFINITY_MATCH4,
        AGENT_STATUS,
        REJECT_RATE4,
        MAGLEV4,
        SVC6,
        BACKEND6,
        REVNAT6,
        SOCK_BACKEND6,
        SOCK_STATE6,
        CT6,
        NODE_ADDR6,
        DEVICE6,
        FRAG6,
        SRC_RANGE6,
        AFFINITY6,
        AFFINITY_MATCH6,
        MAGLEV6,
        TC6_CALLS,
    ];
    /// Names earlier versions pinned and nothing reads any more: the agent removes
    /// their pins (a program of the old agent still running keeps its map alive
    /// until its link is replaced).
    pub const RETIRED: [&str; 2] = ["lb_stats_v1", "lb_stats_v2"];
}

/// Default map capacities. The agent may raise them when it creates the maps.
pub mod capacity {
    /// Frontend entries plus backend slots: 10 000 services x 10 endpoints with room.
    pub const SVC4: u32 = 262_144;
    /// Distinct backends (address, port, protocol).
    pub const BACKEND4: u32 = 131_072;
    /// LRU: translations of sockets that talk to more than one service (the first
    /// one lives in the socket's own storage); the oldest entries are evicted first.
    pub const REVNAT4: u32 = 262_144;
    /// LRU: (UDP socket, service) pairs with a chosen backend, for services after the
    /// socket's first.
    pub const SOCK_BACKEND4: u32 = 131_072;
    /// LRU: tracked flows, two entries each (original and reply direction).
    pub const CT4: u32 = 262_144;
    /// Node addresses.
    pub const NODE_ADDR4: u32 = 256;
    /// Devices the TC programs are attached to.
    pub const DEVICE4: u32 = 256;
    /// LRU: fragmented datagrams in flight.
    pub const FRAG4: u32 = 8_192;
    /// loadBalancerSourceRanges entries over all LoadBalancer frontends.
    pub const SRC_RANGE4: u32 = 16_384;
    /// LRU: (client, frontend) pairs of services with session affinity; the least
    /// recently used client is forgotten first.
    pub const AFFINITY4: u32 = 262_144;
    /// (frontend, backend) pairs of services with session affinity.
    pub const AFFINITY_MATCH4: u32 = 262_144;
    /// (frontend, backend) pairs of one stale-socket pass; larger batches of
    /// departures are run in several passes.
    pub const SOCK_KILL4: u32 = 16_384;
}

/// The budget of the TC program's answers for rejected traffic (TCP RST, ICMP
/// unreachable), so that the node cannot be made a reflector by spoofed sources: a
/// token bucket per CPU, kept as the theoretical arrival time of the next answer
/// (GCRA). An answer is sent when that time is at most [`reject_rate::BURST`]
/// intervals ahead of now; otherwise the packet is dropped unanswered.
/// The IPv6 TC programs' tail calls: the parts of the IPv6 path that run in a program
/// of their own (its headers and keys would not fit one program's 512 bytes of eBPF
/// stack), by their index in [`map_names::TC6_CALLS`]; [`tc6_calls::PROGRAMS`] names
/// the program each index holds.
pub mod tc6_calls {
    /// The rest of a new flow at ingress (backend, conntrack, SNAT, rewrite, route).
    pub const NEW_FLOW: u32 = 0;
    /// An ICMPv6 error at ingress.
    pub const ICMP_INGRESS: u32 = 1;
    /// An ICMPv6 error at egress.
    pub const ICMP_EGRESS: u32 = 2;
    /// The answer to a refused packet.
    pub const REJECT: u32 = 3;
    /// Entries of the map.
    pub const COUNT: u32 = 4;
    /// (index, program name), every index.
    pub const PROGRAMS: [(u32, &str); 4] = [
        (NEW_FLOW, "lb6_tc_new"),
        (ICMP_INGRESS, "lb6_tc_icmp_in"),
        (ICMP_EGRESS, "lb6_tc_icmp_eg"),
        (REJECT, "lb6_tc_reject"),
    ];
}

pub mod reject_rate {
    /// Answers per second and CPU, in the long run.
    pub const PER_SECOND: u64 = 1_000;
    /// Answers a CPU may send at once after a quiet second.
    pub const BURST: u64 = 1_000;
    /// Nanoseconds one answer costs.
    pub const INTERVAL_NS: u64 = 1_000_000_000 / PER_SECOND;
}

/// [`Svc4Key::scope`]: which traffic a frontend entry is for.
pub mod scope {
    /// Connections started on this node (socket hooks): ClusterIPs, and NodePorts,
    /// LoadBalancer and external IPs reached from the node or its pods.
    pub const INTERNAL: u8 = 0;
    /// Traffic arriving from outside the node (TC program): NodePorts, LoadBalancer and
    /// external IPs, with backends per externalTrafficPolicy.
    pub const EXTERNAL: u8 = 1;
}

/// What a frontend does with a new connection, in [`Svc4Value::action`] of slot 0.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SvcAction {
    /// Translate to one of `count` backends.
    Forward = 1,
    /// No usable endpoint: connect()/sendmsg() fail with ECONNREFUSED at once.
    Reject = 2,
    /// Endpoints exist, but none this node may use (a Local traffic policy):
    /// connect()/sendmsg() fail with EHOSTUNREACH.
    Drop = 3,
}

impl SvcAction {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Forward),
            2 => Some(Self::Reject),
            3 => Some(Self::Drop),
            _ => None,
        }
    }
}

/// Key of the service table.
///
/// A frontend (address, port, protocol) owns `count + 1` entries: slot 0 holds the
/// service itself and slots 1..=count hold backend ids. Readers look up slot 0 first
/// and then one slot below its count; the agent writes new slots before it raises the
/// count and removes slots only after it lowered the count, so no reader ever sees a
/// half-written service.
///
/// Each service address also has one wildcard entry (`dport` 0, `proto` 0, slot 0)
/// whose action is Reject: it makes a connect to a port the service does not have fail
/// with ECONNREFUSED instead of leaving on the wire towards an address nobody owns.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Svc4Key {
    /// Frontend IPv4 address, network byte order.
    pub address: u32,
    /// Frontend L4 port, network byte order; 0 in the address's wildcard entry.
    pub dport: u16,
    /// 0 = the service entry; 1..=count = a backend slot.
    pub backend_slot: u16,
    /// IP protocol ([`IPPROTO_TCP`] or [`IPPROTO_UDP`]); 0 in the wildcard entry.
    pub proto: u8,
    /// [`scope::INTERNAL`] or [`scope::EXTERNAL`].
    pub scope: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Svc4Key>() == 12);

impl Svc4Key {
    /// `address` and `dport` in network byte order.
    pub const fn new(address: u32, dport: u16, proto: u8, backend_slot: u16) -> Self {
        Self {
            address,
            dport,
            backend_slot,
            proto,
            scope: scope::INTERNAL,
            pad: [0; 2],
        }
    }

    /// The same frontend in another scope.
    pub const fn with_scope(self, scope: u8) -> Self {
        Self { scope, ..self }
    }

    /// The wildcard entry of a service address.
    pub const fn wildcard(address: u32) -> Self {
        Self::new(address, 0, 0, 0)
    }

    /// The same frontend at another slot.
    pub const fn with_slot(self, backend_slot: u16) -> Self {
        Self {
            backend_slot,
            ..self
        }
    }
}

/// Value of the service table; what the fields mean depends on the slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Svc4Value {
    /// Slot n >= 1: id of the backend in the backend map. Slot 0: the frontend's
    /// Maglev table in [`map_names::MAGLEV4`] (1, 2, ...; external frontends with
    /// `--lb-algorithm maglev` only), 0 = none: new flows pick a slot at random. (The
    /// field was always 0 in slot 0 before, so its layout and the map name stay.)
    pub backend_id: u32,
    /// Slot 0: number of backend slots in use (1..=count). Slot n: 0.
    pub count: u16,
    /// Slot 0: a [`SvcAction`] as u8. Slot n: 0.
    pub action: u8,
    /// Slot 0: `SVC_FLAG_*` bits. Slot n: 0.
    pub flags: u8,
    /// Slot 0: ClientIP session affinity timeout in seconds, 0 = no affinity.
    pub affinity_timeout_s: u32,
}
const _: () = assert!(core::mem::size_of::<Svc4Value>() == 12);

/// [`Svc4Value::flags`]: the frontend is an address wildcard (port not served).
pub const SVC_FLAG_WILDCARD: u8 = 1;
/// [`Svc4Value::flags`]: externalTrafficPolicy Cluster: a flow to a backend on another
/// node gets the node's address as source, so the reply comes back through this node.
pub const SVC_FLAG_SNAT: u8 = 2;
/// [`Svc4Value::flags`]: a NodePort: the key's address is 0 and the frontend answers on
/// every node address.
pub const SVC_FLAG_NODEPORT: u8 = 4;
/// [`Svc4Value::flags`]: only sources in the frontend's loadBalancerSourceRanges.
pub const SVC_FLAG_SOURCE_RANGES: u8 = 8;

/// [`Backend4::flags`]: the backend runs on this node.
pub const BACKEND_FLAG_LOCAL: u8 = 1;

impl Svc4Value {
    /// Slot 0 of a frontend.
    pub const fn service(
        action: SvcAction,
        count: u16,
        affinity_timeout_s: u32,
        flags: u8,
    ) -> Self {
        Self {
            backend_id: 0,
            count,
            action: action as u8,
            flags,
            affinity_timeout_s,
        }
    }

    /// Slot 0 with the frontend's Maglev table (0 = none).
    pub const fn with_maglev_table(self, table: u32) -> Self {
        Self {
            backend_id: table,
            ..self
        }
    }

    /// A backend slot.
    pub const fn slot(backend_id: u32) -> Self {
        Self {
            backend_id,
            count: 0,
            action: 0,
            flags: 0,
            affinity_timeout_s: 0,
        }
    }
}

/// A backend: where translated traffic goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend4 {
    /// Backend IPv4 address, network byte order.
    pub address: u32,
    /// Backend L4 port, network byte order.
    pub port: u16,
    /// IP protocol ([`IPPROTO_TCP`] or [`IPPROTO_UDP`]).
    pub proto: u8,
    /// `BACKEND_FLAG_*` bits.
    pub flags: u8,
}
const _: () = assert!(core::mem::size_of::<Backend4>() == 8);

/// Key of the reverse translation map: one socket talking to one backend.
///
/// Keyed by the socket cookie as well as the backend so that a backend behind several
/// services never answers with the wrong service's address (a 5-tuple collision).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNat4Key {
    /// Socket cookie (bpf_get_socket_cookie) of the client socket.
    pub cookie: u64,
    /// Backend IPv4 address the socket was translated to, network byte order.
    pub address: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// Explicit padding, always zero.
    pub pad: u16,
}
const _: () = assert!(core::mem::size_of::<RevNat4Key>() == 16);

/// Value of the reverse translation map: the service address the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNat4Value {
    /// Service IPv4 address, network byte order.
    pub address: u32,
    /// Service port, network byte order.
    pub port: u16,
    /// Explicit padding, always zero.
    pub pad: u16,
}
const _: () = assert!(core::mem::size_of::<RevNat4Value>() == 8);

/// Key of the per-socket backend choice for UDP: all datagrams one socket sends to
/// one service go to one backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockBackend4Key {
    /// Socket cookie of the UDP socket.
    pub cookie: u64,
    /// Service IPv4 address, network byte order.
    pub address: u32,
    /// Service port, network byte order.
    pub port: u16,
    /// Explicit padding, always zero.
    pub pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockBackend4Key>() == 16);

/// Value of the per-socket backend choice.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockBackend4Value {
    /// Chosen backend id; still valid only while slot `backend_slot` holds it.
    pub backend_id: u32,
    /// The service slot the backend was chosen from.
    pub backend_slot: u16,
    /// Explicit padding, always zero.
    pub pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockBackend4Value>() == 8);

/// Per-socket state in socket local storage (map [`map_names::SOCK_STATE4`]): the first
/// service a socket is translated for and the backend chosen for it.
///
/// Most sockets talk to one service (every TCP socket, most UDP ones); for them this
/// is the whole translation state, allocated with the socket and freed with it, so
/// there is no shared LRU map to insert into and reclaim from per new socket. A UDP
/// socket that sends to further services keeps those in [`map_names::SOCK_BACKEND4`]
/// and [`map_names::REVNAT4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockState4 {
    /// Service IPv4 address the application used (ClusterIP, node address of a
    /// NodePort, ...), network byte order; 0 while the storage is unused.
    pub svc_address: u32,
    /// Service port the application used, network byte order.
    pub svc_port: u16,
    /// The service slot the backend was chosen from (UDP stickiness).
    pub backend_slot: u16,
    /// Chosen backend id; still valid only while slot `backend_slot` holds it.
    pub backend_id: u32,
    /// Backend IPv4 address the socket was translated to, network byte order.
    pub backend_address: u32,
    /// Backend port, network byte order.
    pub backend_port: u16,
    /// `SOCK_STATE_FLAG_*` bits.
    pub flags: u16,
}
const _: () = assert!(core::mem::size_of::<SockState4>() == 20);

/// [`SockState4::flags`]: the socket also sends to other services, through the LRU
/// maps. Its replies are then looked up there first, and sends to its first service
/// record their reverse translation there too, since two of its services may share
/// a backend (the same reply source): the last datagram sent decides, as the kernel
/// cannot tell such replies apart.
pub const SOCK_STATE_FLAG_SHARED: u16 = 1;

/// Indexes into the per-CPU counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// connect()/sendmsg() translated to a backend.
    Translated = 0,
    /// Refused: no usable backend, or a port the service does not have.
    Rejected = 1,
    /// Refused with EHOSTUNREACH: endpoints exist but none may be used here.
    Dropped = 2,
    /// A lookup failed in a way that should not happen (slot or backend missing);
    /// the socket or packet proceeded untranslated.
    Inconsistent = 3,
    /// getpeername()/recvmsg() answers rewritten back to the service address.
    ReverseTranslated = 4,
    /// Reverse map updates that failed (the socket keeps working, getpeername shows
    /// the backend).
    RevNatUpdateFailed = 5,
    /// New external flows (NodePort, LoadBalancer, external IP) translated by TC.
    NpNewFlow = 6,
    /// Packets of tracked flows translated by TC (both directions).
    NpTracked = 7,
    /// External packets dropped: externalTrafficPolicy Local without local endpoints.
    NpDropped = 8,
    /// External packets from a source outside loadBalancerSourceRanges, dropped.
    NpSourceDenied = 9,
    /// New flows that could not get an SNAT port (all tried were taken), dropped.
    NpSnatExhausted = 10,
    /// Conntrack entries that could not be written (the flow passed untranslated).
    NpCtFailed = 11,
    /// Non-first fragments whose first fragment was not seen (passed untouched).
    NpFragUnknown = 12,
    /// ICMP errors about a tracked flow, translated.
    NpIcmpTranslated = 13,
    /// bind() to a NodePort refused.
    BindRefused = 14,
    /// External packets to a LoadBalancer or external IP frontend without endpoints,
    /// or to a port no service has on such an address, answered in place (TCP RST,
    /// ICMP destination unreachable) and dropped.
    NpRejected = 15,
    /// The same, dropped unanswered: over the answer budget ([`reject_rate`]).
    NpRejectLimited = 16,
    /// The same, dropped unanswered because no answer is due: a TCP RST, an ICMP
    /// message, a fragment after the first, a frame to a broadcast or multicast
    /// address, a source that is no unicast address.
    NpRejectUnanswered = 17,
}

impl Counter {
    pub const COUNT: u32 = 18;
    pub const ALL: [Counter; 18] = [
        Self::Translated,
        Self::Rejected,
        Self::Dropped,
        Self::Inconsistent,
        Self::ReverseTranslated,
        Self::RevNatUpdateFailed,
        Self::NpNewFlow,
        Self::NpTracked,
        Self::NpDropped,
        Self::NpSourceDenied,
        Self::NpSnatExhausted,
        Self::NpCtFailed,
        Self::NpFragUnknown,
        Self::NpIcmpTranslated,
        Self::BindRefused,
        Self::NpRejected,
        Self::NpRejectLimited,
        Self::NpRejectUnanswered,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Translated => "translated",
            Self::Rejected => "rejected",
            Self::Dropped => "dropped",
            Self::Inconsistent => "inconsistent",
            Self::ReverseTranslated => "reverse_translated",
            Self::RevNatUpdateFailed => "revnat_update_failed",
            Self::NpNewFlow => "nodeport_new_flows",
            Self::NpTracked => "nodeport_tracked_packets",
            Self::NpDropped => "nodeport_dropped",
            Self::NpSourceDenied => "nodeport_source_denied",
            Self::NpSnatExhausted => "nodeport_snat_exhausted",
            Self::NpCtFailed => "nodeport_ct_failed",
            Self::NpFragUnknown => "nodeport_fragment_unknown",
            Self::NpIcmpTranslated => "nodeport_icmp_translated",
            Self::BindRefused => "bind_refused",
            Self::NpRejected => "nodeport_rejected",
            Self::NpRejectLimited => "nodeport_reject_rate_limited",
            Self::NpRejectUnanswered => "nodeport_reject_unanswered",
        }
    }
}

/// Conntrack key: a packet's tuple as it arrives, before translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ct4Key {
    /// Source address, network byte order.
    pub saddr: u32,
    /// Destination address, network byte order.
    pub daddr: u32,
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<Ct4Key>() == 16);

/// Conntrack value: what a packet matching the key is rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ct4Value {
    /// New source address, network byte order.
    pub to_saddr: u32,
    /// New destination address, network byte order.
    pub to_daddr: u32,
    /// New source port, network byte order.
    pub to_sport: u16,
    /// New destination port, network byte order.
    pub to_dport: u16,
    /// `CT_FLAG_*` bits.
    pub flags: u8,
    /// [`CT_DIR_ORIGINAL`] (client to frontend) or [`CT_DIR_REPLY`] (backend to client).
    pub direction: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 2],
    /// When the entry expires (bpf_ktime_get_ns clock); refreshed by traffic.
    pub expires_ns: u64,
    /// Backend id of the flow (for inspection).
    pub backend_id: u32,
    /// Explicit padding, always zero.
    pub pad2: u32,
}
const _: () = assert!(core::mem::size_of::<Ct4Value>() == 32);

/// [`Ct4Value::direction`] values.
pub const CT_DIR_ORIGINAL: u8 = 0;
pub const CT_DIR_REPLY: u8 = 1;
/// [`Ct4Value::flags`]: the flow's source was rewritten to a node address.
pub const CT_FLAG_SNAT: u8 = 1;
/// [`Ct4Value::flags`]: a TCP FIN or RST was seen: the flow is closing.
pub const CT_FLAG_CLOSING: u8 = 2;
/// [`Ct4Value::flags`]: a TCP packet other than the first SYN was seen.
pub const CT_FLAG_ESTABLISHED: u8 = 4;
/// [`Ct4Value::flags`]: packets of this direction leave with one of the node's own
/// addresses as source, so the TC program routes them itself (the input path would
/// drop them as martians). Decided once, when the flow is created.
pub const CT_FLAG_ROUTE: u8 = 8;

/// Conntrack lifetimes, refreshed by each packet of the flow.
pub mod ct_lifetime {
    /// TCP before the handshake completes.
    pub const TCP_SYN_NS: u64 = 60 * 1_000_000_000;
    /// Established TCP (as Cilium's default).
    pub const TCP_ESTABLISHED_NS: u64 = 21_600 * 1_000_000_000;
    /// After FIN or RST.
    pub const TCP_CLOSING_NS: u64 = 10 * 1_000_000_000;
    /// UDP, idle time.
    pub const UDP_NS: u64 = 60 * 1_000_000_000;
}

/// Ports SNAT picks from: above the default ephemeral range (32768-60999) so that
/// they never collide with the node's own outgoing connections.
pub const SNAT_PORT_MIN: u16 = 61_000;
pub const SNAT_PORT_MAX: u16 = 65_535;

/// Value of the node address map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeAddr4 {
    /// Reserved bits; 0 today.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<NodeAddr4>() == 4);

/// Value of the device map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Device4 {
    /// Address used as the source of SNATed flows leaving through this device,
    /// network byte order.
    pub snat_addr: u32,
}
const _: () = assert!(core::mem::size_of::<Device4>() == 4);

/// Key of the fragment map: one IPv4 datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frag4Key {
    /// Source address, network byte order.
    pub saddr: u32,
    /// Destination address, network byte order.
    pub daddr: u32,
    /// IP identification, network byte order.
    pub id: u16,
    /// IP protocol.
    pub proto: u8,
    /// Explicit padding, always zero.
    pub pad: u8,
}
const _: () = assert!(core::mem::size_of::<Frag4Key>() == 12);

/// Value of the fragment map: the L4 ports from the first fragment.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frag4Value {
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
}
const _: () = assert!(core::mem::size_of::<Frag4Value>() == 4);

/// Data of the loadBalancerSourceRanges LPM key. The prefix length covers the 64 bits
/// of frontend (always fully) plus the source prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SrcRange4Key {
    /// Frontend address, network byte order.
    pub address: u32,
    /// Frontend port, network byte order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Explicit padding, always zero.
    pub pad: u8,
    /// Source address (prefix), network byte order.
    pub source: u32,
}
const _: () = assert!(core::mem::size_of::<SrcRange4Key>() == 12);

/// Bits of a [`SrcRange4Key`] that are always matched (address, port, proto, pad).
pub const SRC_RANGE_FRONTEND_BITS: u32 = 64;

/// Key of the session-affinity map: one client of one frontend.
///
/// The client of a connection started on this node (socket hooks) is its network
/// namespace, by cookie: one pod, or the node itself; the source address is not known
/// yet when connect() runs. The client of traffic from outside (TC) is its source
/// address, as kube-proxy's ClientIP affinity has it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Affinity4Key {
    /// Internal scope: the netns cookie; external scope: the IPv4 source address
    /// (network byte order) in the low 32 bits.
    pub client: u64,
    /// Frontend address as the service table keys it (0 for a NodePort), network byte
    /// order.
    pub address: u32,
    /// Frontend port, network byte order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`scope::INTERNAL`] or [`scope::EXTERNAL`]: also says what `client` is.
    pub scope: u8,
}
const _: () = assert!(core::mem::size_of::<Affinity4Key>() == 16);

/// Value of the session-affinity map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Affinity4Value {
    /// When the client last started a flow through this entry (bpf_ktime_get_ns
    /// clock): the affinity ends `affinity_timeout_s` after it.
    pub last_used_ns: u64,
    /// The backend the client sticks to, valid while the match map says the frontend
    /// still has it.
    pub backend_id: u32,
    /// Explicit padding, always zero.
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<Affinity4Value>() == 16);

/// Key of the affinity match map: a backend of a frontend with session affinity. The
/// agent keeps one entry per (frontend, backend) while the backend serves it, so an
/// affinity to a backend that left the frontend ends at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityMatch4Key {
    /// Frontend address as the service table keys it, network byte order.
    pub address: u32,
    /// Frontend port, network byte order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`scope::INTERNAL`] or [`scope::EXTERNAL`].
    pub scope: u8,
    /// The backend id.
    pub backend_id: u32,
}
const _: () = assert!(core::mem::size_of::<AffinityMatch4Key>() == 12);

/// Value of the affinity match map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityMatch4Value {
    /// The frontend's slot (1..=count) that holds the backend.
    pub slot: u16,
    /// Explicit padding, always zero.
    pub pad: u16,
}
const _: () = assert!(core::mem::size_of::<AffinityMatch4Value>() == 4);

/// The agent's report on its last sync, in [`map_names::AGENT_STATUS`] (index 0): a
/// `socklb status` run without the agent's objects can still say whether the data
/// path is complete.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AgentStatus {
    /// When the last sync finished (CLOCK_MONOTONIC, ns, as `bpf_ktime_get_ns`); 0:
    /// no agent has synced these maps.
    pub synced_at_ns: u64,
    /// Service map entries of slot 0 the agent wants (frontends and wildcards).
    pub wanted: u32,
    /// Of these, not programmed (or left as they were) because the maps are full.
    pub maps_full: u32,
    /// Programmed with fewer backends than wanted because the maps are full.
    pub backends_truncated: u32,
    /// Of an address family the maps do not hold.
    pub address_family: u32,
    /// Process id of the agent that wrote this.
    pub agent_pid: u32,
    /// Explicit padding, always zero.
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<AgentStatus>() == 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is repr(C), Copy, and has no implicit padding (the size
    // assertions above equal the sum of the field sizes), so any byte pattern of the
    // right length is a valid value.
    unsafe impl aya::Pod for super::Svc4Key {}
    unsafe impl aya::Pod for super::Svc6Key {}
    unsafe impl aya::Pod for super::Backend6 {}
    unsafe impl aya::Pod for super::RevNat6Key {}
    unsafe impl aya::Pod for super::RevNat6Value {}
    unsafe impl aya::Pod for super::SockBackend6Key {}
    unsafe impl aya::Pod for super::SockState6 {}
    unsafe impl aya::Pod for super::Ct6Key {}
    unsafe impl aya::Pod for super::Ct6Value {}
    unsafe impl aya::Pod for super::Device6 {}
    unsafe impl aya::Pod for super::Frag6Key {}
    unsafe impl aya::Pod for super::SrcRange6Key {}
    unsafe impl aya::Pod for super::Affinity6Key {}
    unsafe impl aya::Pod for super::AffinityMatch6Key {}
    unsafe impl aya::Pod for super::SockKill6Key {}
    unsafe impl aya::Pod for super::AgentStatus {}
    unsafe impl aya::Pod for super::Svc4Value {}
    unsafe impl aya::Pod for super::Backend4 {}
    unsafe impl aya::Pod for super::RevNat4Key {}
    unsafe impl aya::Pod for super::RevNat4Value {}
    unsafe impl aya::Pod for super::SockBackend4Key {}
    unsafe impl aya::Pod for super::SockBackend4Value {}
    unsafe impl aya::Pod for super::SockState4 {}
    unsafe impl aya::Pod for super::Ct4Key {}
    unsafe impl aya::Pod for super::Ct4Value {}
    unsafe impl aya::Pod for super::NodeAddr4 {}
    unsafe impl aya::Pod for super::Device4 {}
    unsafe impl aya::Pod for super::Frag4Key {}
    unsafe impl aya::Pod for super::Frag4Value {}
    unsafe impl aya::Pod for super::SrcRange4Key {}
    unsafe impl aya::Pod for super::Affinity4Key {}
    unsafe impl aya::Pod for super::Affinity4Value {}
    unsafe impl aya::Pod for super::AffinityMatch4Key {}
    unsafe impl aya::Pod for super::AffinityMatch4Value {}
    unsafe impl aya::Pod for super::SockKill4Key {}
    unsafe impl aya::Pod for super::SockDestroy {}
    unsafe impl aya::Pod for super::maglev::MaglevEntries {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    #[test]
    fn svc_key_layout_matches_kernel_expectations() {
        assert_eq!(size_of::<Svc4Key>(), 12);
        assert_eq!(align_of::<Svc4Key>(), 4);
        assert_eq!(offset_of!(Svc4Key, address), 0);
        assert_eq!(offset_of!(Svc4Key, dport), 4);
        assert_eq!(offset_of!(Svc4Key, backend_slot), 6);
        assert_eq!(offset_of!(Svc4Key, proto), 8);
        assert_eq!(offset_of!(Svc4Key, scope), 9);
        assert_eq!(offset_of!(Svc4Key, pad), 10);
    }

    #[test]
    fn svc_value_layout() {
        assert_eq!(size_of::<Svc4Value>(), 12);
        assert_eq!(offset_of!(Svc4Value, backend_id), 0);
        assert_eq!(offset_of!(Svc4Value, count), 4);
        assert_eq!(offset_of!(Svc4Value, action), 6);
        assert_eq!(offset_of!(Svc4Value, flags), 7);
        assert_eq!(offset_of!(Svc4Value, affinity_timeout_s), 8);
    }

    #[test]
    fn backend_and_revnat_layouts() {
        assert_eq!(size_of::<Backend4>(), 8);
        assert_eq!(offset_of!(Backend4, port), 4);
        assert_eq!(offset_of!(Backend4, proto), 6);
        assert_eq!(size_of::<RevNat4Key>(), 16);
        assert_eq!(align_of::<RevNat4Key>(), 8);
        assert_eq!(offset_of!(RevNat4Key, address), 8);
        assert_eq!(offset_of!(RevNat4Key, port), 12);
        assert_eq!(size_of::<RevNat4Value>(), 8);
        assert_eq!(size_of::<SockBackend4Key>(), 16);
        assert_eq!(size_of::<SockBackend4Value>(), 8);
        assert_eq!(size_of::<SockState4>(), 20);
        assert_eq!(offset_of!(SockState4, backend_id), 8);
        assert_eq!(offset_of!(SockState4, backend_port), 16);
    }

    #[test]
    fn nodeport_layouts() {
        assert_eq!(offset_of!(Ct4Key, proto), 12);
        assert_eq!(offset_of!(Ct4Value, flags), 12);
        assert_eq!(offset_of!(Ct4Value, expires_ns), 16);
        assert_eq!(align_of::<Ct4Value>(), 8);
        assert_eq!(offset_of!(Frag4Key, id), 8);
        assert_eq!(offset_of!(SrcRange4Key, source), 8);
        assert_eq!(
            SRC_RANGE_FRONTEND_BITS as usize,
            offset_of!(SrcRange4Key, source) * 8
        );
        const { assert!(SNAT_PORT_MIN > 60_999) };
    }

    #[test]
    fn affinity_layouts() {
        assert_eq!(offset_of!(Affinity4Key, address), 8);
        assert_eq!(offset_of!(Affinity4Key, scope), 15);
        assert_eq!(align_of::<Affinity4Key>(), 8);
        assert_eq!(offset_of!(Affinity4Value, backend_id), 8);
        assert_eq!(offset_of!(AffinityMatch4Key, backend_id), 8);
        assert_eq!(offset_of!(AffinityMatch4Value, pad), 2);
    }

    #[test]
    fn constructors_zero_the_padding() {
        let k = Svc4Key::new(0x0a60_000a, 80u16.to_be(), IPPROTO_TCP, 3);
        assert_eq!(k.pad, [0, 0]);
        assert_eq!(k.scope, 0);
        assert_eq!(k.with_slot(0).backend_slot, 0);
        let w = Svc4Key::wildcard(1);
        assert_eq!((w.dport, w.proto, w.backend_slot), (0, 0, 0));
    }

    #[test]
    fn map_names_fit_the_kernel() {
        for name in map_names::ALL
            .iter()
            .chain([&map_names::SOCK_KILL4, &map_names::SOCK_KILL6])
        {
            assert!(name.len() <= 15, "{name} is longer than 15 characters");
            assert!(!map_names::RETIRED.contains(name), "{name} is retired");
        }
    }

    #[test]
    fn the_reject_budget_is_whole_intervals() {
        assert_eq!(
            reject_rate::INTERVAL_NS * reject_rate::PER_SECOND,
            1_000_000_000
        );
        const { assert!(reject_rate::BURST >= 1) };
    }

    #[test]
    fn action_round_trips() {
        for a in [SvcAction::Forward, SvcAction::Reject, SvcAction::Drop] {
            assert_eq!(SvcAction::from_u8(a as u8), Some(a));
        }
        assert_eq!(SvcAction::from_u8(0), None);
        assert_eq!(Counter::ALL.len() as u32, Counter::COUNT);
    }
}
