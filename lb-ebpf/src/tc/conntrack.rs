//! Conntrack of external flows: one entry per direction, created with the flow and
//! refreshed by its packets in both directions; once for both families.
use aya_ebpf::{bindings::BPF_ANY, programs::TcContext};
use lb_common::{
    CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_FLAG_CLOSING, CT_FLAG_ESTABLISHED, CT_FLAG_ROUTE,
    CT_FLAG_SNAT, IPPROTO_TCP, ct_lifetime,
};

use super::{
    family::{CtValue, TcFamily, Tuple},
    hdr::tcp,
    parse::{Frag, Packet},
    snat,
};
use crate::{error::Error, family::Family, lb::Selection};

/// Conntrack entries are refreshed at most this often (or when the flow's flags change).
const CT_REFRESH_NS: u64 = 1_000_000_000;

/// The lifetime a packet gives its flow, and the flags it adds.
#[inline(always)]
pub fn lifetime<F: Family>(p: &Packet<F>, flags: u8) -> (u64, u8) {
    if p.proto != IPPROTO_TCP {
        return (ct_lifetime::UDP_NS, flags);
    }
    if p.tcp_flags & (tcp::FIN | tcp::RST) != 0 || flags & CT_FLAG_CLOSING != 0 {
        return (ct_lifetime::TCP_CLOSING_NS, flags | CT_FLAG_CLOSING);
    }
    let first_syn = p.tcp_flags & tcp::SYN != 0 && p.tcp_flags & tcp::ACK == 0;
    if first_syn && flags & CT_FLAG_ESTABLISHED == 0 {
        (ct_lifetime::TCP_SYN_NS, flags)
    } else if p.frag == Frag::Later {
        (ct_lifetime::TCP_ESTABLISHED_NS, flags)
    } else {
        (ct_lifetime::TCP_ESTABLISHED_NS, flags | CT_FLAG_ESTABLISHED)
    }
}

/// The live conntrack entry for this packet, refreshed; None when absent or expired.
#[inline(always)]
pub fn ct_track<F: TcFamily>(p: &Packet<F>, now: u64) -> Option<F::CtValue> {
    let map = F::ct_map();
    let entry = map.get_ptr_mut(&p.ct_key())?;
    // SAFETY: a value pointer of this map; the entry may be updated concurrently by
    // another CPU, which at worst loses one refresh.
    let value = unsafe { &mut *entry };
    if value.expires_ns() < now {
        return None;
    }
    // A client reusing the tuple of a closing flow starts a new flow (and may get
    // another backend), instead of inheriting the old one's last seconds.
    let first_syn = p.tcp_flags & tcp::SYN != 0 && p.tcp_flags & tcp::ACK == 0;
    if first_syn && value.flags() & CT_FLAG_CLOSING != 0 && value.direction() == CT_DIR_ORIGINAL {
        return None;
    }
    let (life, flags) = lifetime(p, value.flags());
    let expires = now + life;
    let closing_now = flags & CT_FLAG_CLOSING != 0 && value.flags() & CT_FLAG_CLOSING == 0;
    // Refresh at most about once a second, or when the flow starts closing.
    if flags != value.flags()
        || expires > value.expires_ns() + CT_REFRESH_NS
        || expires < value.expires_ns()
    {
        value.set_flags(flags);
        value.set_expires_ns(expires);
        // The flow lives as long as either direction is active: a one-way stream (say
        // UDP from the backend) keeps the other direction's entry too. A FIN or RST
        // closes the flow, not one direction: the other entry (which a RST's peer
        // never refreshes, and which may hold the SNAT port) expires as soon.
        let opposite = F::ct_key(&value.to().reversed(), p.proto);
        if let Some(other) = map.get_ptr_mut(&opposite) {
            // SAFETY: as above.
            let other = unsafe { &mut *other };
            if closing_now {
                other.set_flags(other.flags() | CT_FLAG_CLOSING);
                if other.expires_ns() > expires {
                    other.set_expires_ns(expires);
                }
            } else if other.flags() & CT_FLAG_CLOSING == 0 && other.expires_ns() < expires {
                other.set_expires_ns(expires);
            }
        }
    }
    Some(*value)
}

/// What creating a new flow's entries came to.
pub enum Created<V> {
    /// Both directions are tracked; the packet is rewritten as this original-direction
    /// entry says.
    Tracked(V),
    /// The flow needs SNAT and every port tried was taken: nothing was written.
    NoSnatPort,
    /// An entry could not be written (the map is full): nothing is left behind.
    Failed,
}

/// Writes the entries of a new flow from the packet `p` to `picked`, the reply
/// direction first (it holds the SNAT port), with the source rewritten to the node's
/// address and a free port when `snat`.
#[inline(always)]
pub fn create<F: TcFamily>(
    ctx: &TcContext,
    p: &Packet<F>,
    picked: &Selection<F>,
    snat: bool,
    now: u64,
) -> Result<Created<F::CtValue>, Error> {
    let map = F::ct_map();
    let backend_id = picked.backend_id;
    let (backend_addr, backend_port, _) = F::backend(&picked.backend);
    let (life, flags) = lifetime(p, 0);
    // The reply direction: backend -> (node address, SNAT port) or -> client.
    let mut reply_tuple = Tuple {
        saddr: backend_addr,
        daddr: p.saddr,
        sport: backend_port,
        dport: p.sport,
    };
    let flags = flags | if snat { CT_FLAG_SNAT } else { 0 };
    // Replies leave as the frontend: a NodePort's frontend is a node address.
    let reply_route = if F::is_node_addr(&p.daddr) {
        CT_FLAG_ROUTE
    } else {
        0
    };
    let reply = F::CtValue::new(
        &p.tuple().reversed(),
        flags | reply_route,
        CT_DIR_REPLY,
        now + life,
        backend_id,
    );
    if snat {
        reply_tuple.daddr = snat::address::<F>(ctx)?;
        if !snat::insert_with_free_port::<F>(&mut reply_tuple, p.proto, &reply) {
            return Ok(Created::NoSnatPort);
        }
    } else if map
        .insert(&F::ct_key(&reply_tuple, p.proto), &reply, BPF_ANY as u64)
        .is_err()
    {
        return Ok(Created::Failed);
    }
    let original = F::CtValue::new(
        &reply_tuple.reversed(),
        // SNATed packets leave with the device's (node) address.
        flags | if snat { CT_FLAG_ROUTE } else { 0 },
        CT_DIR_ORIGINAL,
        now + life,
        backend_id,
    );
    if map.insert(&p.ct_key(), &original, BPF_ANY as u64).is_err() {
        let _ = map.remove(&F::ct_key(&reply_tuple, p.proto));
        return Ok(Created::Failed);
    }
    Ok(Created::Tracked(original))
}
