//! The load-balancing core shared by the socket hooks and the TC program (as Cilium's
//! lib/lb.h serves bpf_sock.c and the NodePort path): frontend lookup, the frontend's
//! action and source ranges, backend selection and slot resolution.
//!
//! The service table is two-level: a frontend's slot 0 holds its action and slot count,
//! slots 1..=count hold backend ids, and the backends live in their own map (see
//! [`lb_common::Svc4Key`]). Backend selection happens in [`select_backend`] only.
use aya_ebpf::{helpers::bpf_get_prandom_u32, programs::SockAddrContext};
use lb_common::{
    Backend4, SRC_RANGE_FRONTEND_BITS, SVC_FLAG_SOURCE_RANGES, SrcRange4Key, Svc4Key, Svc4Value,
    SvcAction,
};

use crate::{
    error::{Cause, Error},
    maps::{BACKEND4, SRC_RANGE4, SVC4, SrcRangeKey, get_copy, is_node_addr},
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
#[expect(
    dead_code,
    reason = "read by the backend selections to come: session affinity, Maglev"
)]
pub enum Flow<'a> {
    /// connect()/sendmsg() on this node: the client is the socket (its cookies, its
    /// network namespace are read from the context by a pick that needs them).
    Socket(&'a SockAddrContext),
    /// A packet from outside the node: its source, network byte order.
    Packet { saddr: u32, sport: u16 },
}

/// A backend picked for a flow, with the slot it came from: a choice kept for later
/// (UDP per socket) is still valid while that slot holds the same backend id.
#[derive(Clone, Copy)]
pub struct Selection {
    /// The frontend's slot, 1..=count.
    pub slot: u16,
    /// The backend id the slot held.
    pub backend_id: u32,
    /// The backend.
    pub backend: Backend4,
}

/// Picks the backend of a new flow to `fe`, a frontend whose action is Forward. The
/// one place a backend is chosen, for every hook: session affinity and a Maglev table
/// go here, in front of the random pick (today the only one).
#[inline(always)]
pub fn select_backend(fe: &Frontend, _flow: Flow) -> Result<Selection, Error> {
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
