//! Conntrack of external flows: lifetimes, and the refresh of both directions.
use lb_common::{
    CT_DIR_ORIGINAL, CT_FLAG_CLOSING, CT_FLAG_ESTABLISHED, Ct4Key, Ct4Value, IPPROTO_TCP,
    ct_lifetime,
};

use super::{
    hdr::tcp,
    parse::{Frag, Packet},
};
use crate::maps::CT4;

/// Conntrack entries are refreshed at most this often (or when the flow's flags change).
const CT_REFRESH_NS: u64 = 1_000_000_000;

/// The lifetime a packet gives its flow, and the flags it adds.
#[inline(always)]
pub fn lifetime(p: &Packet, flags: u8) -> (u64, u8) {
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
pub fn ct_track(p: &Packet, now: u64) -> Option<Ct4Value> {
    let key = p.ct_key();
    let entry = CT4.get_ptr_mut(&key)?;
    // SAFETY: a value pointer of this map; the entry may be updated concurrently by
    // another CPU, which at worst loses one refresh.
    let value = unsafe { &mut *entry };
    if value.expires_ns < now {
        return None;
    }
    // A client reusing the tuple of a closing flow starts a new flow (and may get
    // another backend), instead of inheriting the old one's last seconds.
    let first_syn = p.tcp_flags & tcp::SYN != 0 && p.tcp_flags & tcp::ACK == 0;
    if first_syn && value.flags & CT_FLAG_CLOSING != 0 && value.direction == CT_DIR_ORIGINAL {
        return None;
    }
    let (life, flags) = lifetime(p, value.flags);
    let expires = now + life;
    let closing_now = flags & CT_FLAG_CLOSING != 0 && value.flags & CT_FLAG_CLOSING == 0;
    // Refresh at most about once a second, or when the flow starts closing.
    if flags != value.flags
        || expires > value.expires_ns + CT_REFRESH_NS
        || expires < value.expires_ns
    {
        value.flags = flags;
        value.expires_ns = expires;
        // The flow lives as long as either direction is active: a one-way stream (say
        // UDP from the backend) keeps the other direction's entry too. A FIN or RST
        // closes the flow, not one direction: the other entry (which a RST's peer
        // never refreshes, and which may hold the SNAT port) expires as soon.
        let opposite = Ct4Key {
            saddr: value.to_daddr,
            daddr: value.to_saddr,
            sport: value.to_dport,
            dport: value.to_sport,
            proto: p.proto,
            pad: [0; 3],
        };
        if let Some(other) = CT4.get_ptr_mut(&opposite) {
            // SAFETY: as above.
            let other = unsafe { &mut *other };
            if closing_now {
                other.flags |= CT_FLAG_CLOSING;
                if other.expires_ns > expires {
                    other.expires_ns = expires;
                }
            } else if other.flags & CT_FLAG_CLOSING == 0 && other.expires_ns < expires {
                other.expires_ns = expires;
            }
        }
    }
    Some(*value)
}
