//! The load-balancing core shared by the socket hooks and the TC program (as Cilium's
//! lib/lb.h serves bpf_sock.c and the NodePort path): frontend lookup, the frontend's
//! action and source ranges, backend selection and slot resolution.
//!
//! The service table is two-level: a frontend's slot 0 holds its action and slot count,
//! slots 1..=count hold backend ids, and the backends live in their own map (see
//! [`lb_common::Svc4Key`]). Backend selection happens in [`select_backend`] only.
use aya_ebpf::{
    EbpfContext,
    bindings::BPF_ANY,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, generated::bpf_get_netns_cookie},
    programs::SockAddrContext,
};
use lb_common::{
    Affinity4Key, Affinity4Value, AffinityMatch4Key, Backend4, SRC_RANGE_FRONTEND_BITS,
    SVC_FLAG_SOURCE_RANGES, SrcRange4Key, Svc4Key, Svc4Value, SvcAction,
};

use crate::{
    error::{Cause, Error},
    maglev,
    maps::{
        AFFINITY_MATCH4, AFFINITY4, BACKEND4, SRC_RANGE4, SVC4, SrcRangeKey, get_copy, is_node_addr,
    },
};

/// A frontend found in the service table: its slot-0 entry.
#[derive(Clone, Copy)]
pub struct Frontend {
    /// The slot-0 key; the frontend's backend slots are this key at slots 1..=count.
    pub key: Svc4Key,
    /// The slot-0 value: action, slot count, flags.
    pub svc: Svc4Value,
    /// Found as a NodePort (key address 0) because the address is one of this node's.
    pub nodeport: bool,
}

/// The frontend of `address:port` (network byte order) and `proto` in `scope`
/// ([`lb_common::scope`]): the exact address (ClusterIP, LoadBalancer or external IP),
/// else a NodePort when the address is one of this node's.
#[inline(always)]
pub fn lookup_frontend(address: u32, port: u16, proto: u8, scope: u8) -> Option<Frontend> {
    let exact = Svc4Key::new(address, port, proto, 0).with_scope(scope);
    if let Some(svc) = lookup_service(&exact) {
        return Some(Frontend {
            key: exact,
            svc,
            nodeport: false,
        });
    }
    if !is_node_addr(address) {
        return None;
    }
    let nodeport = Svc4Key::new(0, port, proto, 0).with_scope(scope);
    lookup_service(&nodeport).map(|svc| Frontend {
        key: nodeport,
        svc,
        nodeport: true,
    })
}

/// One entry of the service table: a frontend, an address wildcard or a backend slot.
#[inline(always)]
pub fn lookup_service(key: &Svc4Key) -> Option<Svc4Value> {
    get_copy(&SVC4, key)
}

/// Whether `address` is a service address (it has a wildcard entry), whatever the port.
#[inline(always)]
pub fn is_service_address(address: u32) -> bool {
    lookup_service(&Svc4Key::wildcard(address)).is_some()
}

impl Frontend {
    /// What the frontend does with a new flow. A frontend that forwards has at least
    /// one backend slot; one without is the agent's inconsistency, an error.
    #[inline(always)]
    pub fn action(&self) -> Result<SvcAction, Error> {
        match SvcAction::from_u8(self.svc.action) {
            Some(SvcAction::Forward) if self.svc.count == 0 => Err(Cause::NoSlots.into()),
            Some(action) => Ok(action),
            None => Err(Cause::UnknownAction.into()),
        }
    }

    /// Whether a flow from `saddr` may use the frontend: always, unless it has
    /// loadBalancerSourceRanges and none of them holds `saddr`.
    #[inline(always)]
    pub fn admits(&self, saddr: u32) -> bool {
        if self.svc.flags & SVC_FLAG_SOURCE_RANGES == 0 {
            return true;
        }
        let lpm = SrcRangeKey::new(
            SRC_RANGE_FRONTEND_BITS + 32,
            SrcRange4Key {
                address: self.key.address,
                dport: self.key.dport,
                proto: self.key.proto,
                pad: 0,
                source: saddr,
            },
        );
        SRC_RANGE4.get(&lpm).is_some()
    }
}

/// What the hook asking [`select_backend`] knows of the flow. The random pick reads
/// none of it; a pick by session affinity (by client) or by a Maglev table (by a hash
/// of the flow) reads it here, and each hook already passes what it has.
#[derive(Clone, Copy)]
pub enum Flow<'a> {
    /// connect()/sendmsg() on this node: the client is the socket (its cookies, its
    /// network namespace are read from the context by a pick that needs them).
    Socket(&'a SockAddrContext),
    /// A packet from outside the node: its source, network byte order. With the
    /// frontend (its address as keyed, 0 for a NodePort, port and protocol) this is
    /// the flow a Maglev table hashes.
    Packet { saddr: u32, sport: u16 },
}

impl Flow<'_> {
    /// The client as session affinity knows it: the socket's network namespace (a
    /// pod, or the node: at connect() the source address is not chosen yet), or the
    /// packet's source address.
    #[inline(always)]
    fn affinity_client(&self) -> u64 {
        match self {
            // SAFETY: helper call with the program's own context.
            Flow::Socket(ctx) => unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
            Flow::Packet { saddr, .. } => u64::from(*saddr),
        }
    }
}

/// A backend picked for a flow, with the slot it came from: a choice kept for later
/// (UDP per socket) is still valid while that slot holds the same backend id.
#[derive(Clone, Copy)]
pub struct Selection {
    /// The frontend's slot, 1..=count; 0 when a Maglev table picked the backend (only
    /// for packets from outside, where nothing keeps the slot).
    pub slot: u16,
    /// The backend id the slot (or the Maglev table's entry) held.
    pub backend_id: u32,
    /// The backend.
    pub backend: Backend4,
}

/// Picks the backend of a new flow to `fe`, a frontend whose action is Forward. The
/// one place a backend is chosen, for every hook: by session affinity when the
/// frontend has it, else by the frontend's Maglev table when it has one (external
/// frontends with `--lb-algorithm maglev`), else at random.
#[inline(always)]
pub fn select_backend(fe: &Frontend, flow: Flow) -> Result<Selection, Error> {
    if fe.svc.affinity_timeout_s != 0 {
        return select_by_affinity(fe, flow.affinity_client(), &flow);
    }
    select_new(fe, &flow)
}

/// A backend for a flow no affinity decides: by the frontend's Maglev table for a
/// packet from outside when the table names one, else at random.
#[inline(always)]
fn select_new(fe: &Frontend, flow: &Flow) -> Result<Selection, Error> {
    if let Flow::Packet { saddr, sport } = flow
        && let Some(backend_id) = maglev::backend_id(fe, *saddr, *sport)
    {
        let backend = get_copy(&BACKEND4, &backend_id).ok_or(Cause::BackendMissing)?;
        return Ok(Selection {
            slot: 0,
            backend_id,
            backend,
        });
    }
    select_at_random(fe)
}

/// ClientIP session affinity, as kube-proxy's: the client keeps its backend while the
/// backend still serves the frontend (the agent's match map says so) and the client
/// started a flow within the timeout; each new flow renews it. Otherwise a new pick
/// ([`select_new`]: the Maglev table or random), remembered.
#[inline(always)]
fn select_by_affinity(fe: &Frontend, client: u64, flow: &Flow) -> Result<Selection, Error> {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = Affinity4Key {
        client,
        address: fe.key.address,
        dport: fe.key.dport,
        proto: fe.key.proto,
        scope: fe.key.scope,
    };
    if let Some(sel) = affined_backend(fe, &key, now) {
        return Ok(sel);
    }
    let sel = select_new(fe, flow)?;
    let remembered = Affinity4Value {
        last_used_ns: now,
        backend_id: sel.backend_id,
        pad: 0,
    };
    // Failing to remember only costs this client its stickiness for the next flow.
    let _ = AFFINITY4.insert(&key, &remembered, BPF_ANY as u64);
    Ok(sel)
}

/// The backend `key`'s client sticks to, renewed, if the affinity holds.
#[inline(always)]
fn affined_backend(fe: &Frontend, key: &Affinity4Key, now: u64) -> Option<Selection> {
    let entry = AFFINITY4.get_ptr_mut(key)?;
    // SAFETY: a value pointer of this LRU map, valid for this run; copied out at once
    // (another CPU may renew it concurrently: at worst one renewal is lost).
    let affinity = unsafe { *entry };
    let timeout_ns = u64::from(fe.svc.affinity_timeout_s) * 1_000_000_000;
    if now.saturating_sub(affinity.last_used_ns) > timeout_ns {
        return None;
    }
    let matched = get_copy(
        &AFFINITY_MATCH4,
        &AffinityMatch4Key {
            address: key.address,
            dport: key.dport,
            proto: key.proto,
            scope: key.scope,
            backend_id: affinity.backend_id,
        },
    )?;
    let sel = resolve_slot(&fe.key, matched.slot).ok()?;
    if sel.backend_id != affinity.backend_id {
        return None;
    }
    // SAFETY: as above; a plain store into the value.
    unsafe { (*entry).last_used_ns = now };
    Some(sel)
}

/// A backend slot picked uniformly at random.
#[inline(always)]
fn select_at_random(fe: &Frontend) -> Result<Selection, Error> {
    let count = fe.svc.count;
    if count == 0 {
        return Err(Cause::NoSlots.into());
    }
    // SAFETY: helper without arguments.
    let rnd = unsafe { bpf_get_prandom_u32() };
    let slot = 1 + (rnd % count as u32) as u16;
    resolve_slot(&fe.key, slot)
}

/// The backend in slot `slot` of the frontend keyed `key` (its slot-0 key).
#[inline(always)]
pub fn resolve_slot(key: &Svc4Key, slot: u16) -> Result<Selection, Error> {
    let slot_val = lookup_service(&key.with_slot(slot)).ok_or(Cause::SlotMissing)?;
    let backend = get_copy(&BACKEND4, &slot_val.backend_id).ok_or(Cause::BackendMissing)?;
    Ok(Selection {
        slot,
        backend_id: slot_val.backend_id,
        backend,
    })
}

/// The backend picked earlier from `slot`, if the frontend still has that slot and
/// the slot still holds `backend_id`.
#[inline(always)]
pub fn still_selected(fe: &Frontend, slot: u16, backend_id: u32) -> Option<Backend4> {
    if slot < 1 || slot > fe.svc.count {
        return None;
    }
    let slot_val = lookup_service(&fe.key.with_slot(slot))?;
    if slot_val.backend_id != backend_id {
        return None;
    }
    get_copy(&BACKEND4, &backend_id)
}
