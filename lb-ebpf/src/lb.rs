//! The load-balancing core shared by the socket hooks and the TC program (as Cilium's
//! lib/lb.h serves bpf_sock.c and the NodePort path): frontend lookup, the frontend's
//! action and source ranges, backend selection and slot resolution; once, for both
//! address families ([`Family`]).
//!
//! The service table is two-level: a frontend's slot 0 holds its action and slot count,
//! slots 1..=count hold backend ids, and the backends live in their own map (see
//! [`lb_common::Svc4Key`]). Backend selection happens in [`select_backend`] only.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, generated::bpf_get_netns_cookie},
    programs::SockAddrContext,
};
use lb_common::{Affinity4Value, SVC_FLAG_SOURCE_RANGES, Svc4Value, SvcAction};

use crate::{
    error::{Cause, Error},
    family::Family,
    maglev,
};

/// A frontend found in the service table: its slot-0 entry.
#[derive(Clone, Copy)]
pub struct Frontend<F: Family> {
    /// The slot-0 key; the frontend's backend slots are this key at slots 1..=count.
    pub key: F::SvcKey,
    /// The slot-0 value: action, slot count, flags.
    pub svc: Svc4Value,
    /// Found as a NodePort (key address 0) because the address is one of this node's.
    pub nodeport: bool,
}

/// The frontend of `address:port` (network byte order) and `proto` in `scope`
/// ([`lb_common::scope`]): the exact address (ClusterIP, LoadBalancer or external IP),
/// else a NodePort when the address is one of this node's.
#[inline(always)]
pub fn lookup_frontend<F: Family>(
    address: F::Addr,
    port: u16,
    proto: u8,
    scope: u8,
) -> Option<Frontend<F>> {
    let exact = F::svc_key(address, port, proto, scope);
    if let Some(svc) = F::lookup_service(&exact) {
        return Some(Frontend {
            key: exact,
            svc,
            nodeport: false,
        });
    }
    if !F::is_node_addr(&address) {
        return None;
    }
    let nodeport = F::nodeport_key(port, proto, scope);
    F::lookup_service(&nodeport).map(|svc| Frontend {
        key: nodeport,
        svc,
        nodeport: true,
    })
}

/// One entry of the service table: a frontend, an address wildcard or a backend slot.
#[inline(always)]
pub fn lookup_service<F: Family>(key: &F::SvcKey) -> Option<Svc4Value> {
    F::lookup_service(key)
}

/// Whether `address` is a service address (it has a wildcard entry), whatever the port.
#[inline(always)]
pub fn is_service_address<F: Family>(address: F::Addr) -> bool {
    F::lookup_service(&F::wildcard(address)).is_some()
}

impl<F: Family> Frontend<F> {
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
    pub fn admits(&self, saddr: &F::Addr) -> bool {
        if self.svc.flags & SVC_FLAG_SOURCE_RANGES == 0 {
            return true;
        }
        F::source_allowed(&self.key, saddr)
    }
}

/// What the hook asking [`select_backend`] knows of the flow. The random pick reads
/// none of it; a pick by session affinity (by client) or by a Maglev table (by a hash
/// of the flow) reads it here, and each hook already passes what it has.
#[derive(Clone, Copy)]
pub enum Flow<'a, F: Family> {
    /// connect()/sendmsg() on this node: the client is the socket (its cookies, its
    /// network namespace are read from the context by a pick that needs them).
    Socket(&'a SockAddrContext),
    /// A packet from outside the node: its source, network byte order. With the
    /// frontend (its address as keyed, 0 for a NodePort, port and protocol) this is
    /// the flow a Maglev table hashes.
    Packet { saddr: F::Addr, sport: u16 },
}

impl<F: Family> Flow<'_, F> {
    /// The client as session affinity knows it: the socket's network namespace (a
    /// pod, or the node: at connect() the source address is not chosen yet), or the
    /// packet's source address.
    #[inline(always)]
    fn affinity_client(&self) -> F::Client {
        match self {
            // SAFETY: helper call with the program's own context.
            Flow::Socket(ctx) => F::client_of_netns(unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }),
            Flow::Packet { saddr, .. } => F::client_of_addr(saddr),
        }
    }
}

/// A backend picked for a flow, with the slot it came from: a choice kept for later
/// (UDP per socket) is still valid while that slot holds the same backend id.
#[derive(Clone, Copy)]
pub struct Selection<F: Family> {
    /// The frontend's slot, 1..=count; 0 when a Maglev table picked the backend (only
    /// for packets from outside, where nothing keeps the slot).
    pub slot: u16,
    /// The backend id the slot (or the Maglev table's entry) held.
    pub backend_id: u32,
    /// The backend.
    pub backend: F::Backend,
}

/// Picks the backend of a new flow to `fe`, a frontend whose action is Forward. The
/// one place a backend is chosen, for every hook: by session affinity when the
/// frontend has it, else by the frontend's Maglev table when it has one (external
/// frontends with `--lb-algorithm maglev`), else at random.
#[inline(always)]
pub fn select_backend<F: Family>(fe: &Frontend<F>, flow: Flow<F>) -> Result<Selection<F>, Error> {
    if fe.svc.affinity_timeout_s != 0 {
        return select_by_affinity(fe, flow.affinity_client(), &flow);
    }
    select_new(fe, &flow)
}

/// A backend for a flow no affinity decides: by the frontend's Maglev table for a
/// packet from outside when the table names one, else at random.
#[inline(always)]
fn select_new<F: Family>(fe: &Frontend<F>, flow: &Flow<F>) -> Result<Selection<F>, Error> {
    if let Flow::Packet { saddr, sport } = flow
        && let Some(backend_id) = maglev::backend_id(fe, saddr, *sport)
    {
        let backend = F::lookup_backend(backend_id).ok_or(Cause::BackendMissing)?;
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
fn select_by_affinity<F: Family>(
    fe: &Frontend<F>,
    client: F::Client,
    flow: &Flow<F>,
) -> Result<Selection<F>, Error> {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = F::affinity_key(client, &fe.key);
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
    F::remember_affinity(&key, &remembered);
    Ok(sel)
}

/// The backend `key`'s client sticks to, renewed, if the affinity holds.
#[inline(always)]
fn affined_backend<F: Family>(
    fe: &Frontend<F>,
    key: &F::AffinityKey,
    now: u64,
) -> Option<Selection<F>> {
    let entry = F::affinity_entry(key)?;
    // SAFETY: a value pointer of this LRU map, valid for this run; copied out at once
    // (another CPU may renew it concurrently: at worst one renewal is lost).
    let affinity = unsafe { *entry };
    let timeout_ns = u64::from(fe.svc.affinity_timeout_s) * 1_000_000_000;
    if now.saturating_sub(affinity.last_used_ns) > timeout_ns {
        return None;
    }
    let matched = F::affinity_match(&fe.key, affinity.backend_id)?;
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
fn select_at_random<F: Family>(fe: &Frontend<F>) -> Result<Selection<F>, Error> {
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
pub fn resolve_slot<F: Family>(key: &F::SvcKey, slot: u16) -> Result<Selection<F>, Error> {
    let slot_val = F::lookup_service(&F::with_slot(key, slot)).ok_or(Cause::SlotMissing)?;
    let backend = F::lookup_backend(slot_val.backend_id).ok_or(Cause::BackendMissing)?;
    Ok(Selection {
        slot,
        backend_id: slot_val.backend_id,
        backend,
    })
}

/// The backend picked earlier from `slot`, if the frontend still has that slot and
/// the slot still holds `backend_id`.
#[inline(always)]
pub fn still_selected<F: Family>(
    fe: &Frontend<F>,
    slot: u16,
    backend_id: u32,
) -> Option<F::Backend> {
    if slot < 1 || slot > fe.svc.count {
        return None;
    }
    let slot_val = F::lookup_service(&F::with_slot(&fe.key, slot))?;
    if slot_val.backend_id != backend_id {
        return None;
    }
    F::lookup_backend(backend_id)
}
