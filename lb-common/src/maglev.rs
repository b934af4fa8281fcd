//! Maglev lookup tables (map [`super::map_names::MAGLEV4`]): their layout in the map, and
//! the flow hash the kernel and the agent both compute, so the agent can predict (and
//! tests check) which backend the kernel picks for a flow.
//!
//! The map is one flat array of backend ids. Its first value is a header (the table
//! size M and the hash seed the tables were built for); table `t` (1, 2, ...) holds the
//! entries `HEADER_ENTRIES + (t - 1) * M .. HEADER_ENTRIES + t * M`. A flow to a frontend
//! whose slot 0 names table `t` goes to the backend of entry `flow_hash(..) % M` of that
//! table; an entry 0 names no backend (the kernel then picks at random).
//!
//! Each map value holds [`ENTRIES_PER_VALUE`] entries: the kernel lays array values out
//! 8 bytes apart, so a 4-byte value would leave half of the memory unused, and with two
//! per value the map's memory (mmapped by the agent) is one dense `u32` array.

/// Entries per map value.
pub const ENTRIES_PER_VALUE: usize = 2;

/// Entries taken by the header (the first value): `[table size, hash seed]`.
pub const HEADER_ENTRIES: u64 = ENTRIES_PER_VALUE as u64;

/// The table sizes the agent accepts: primes, as Maglev needs, each about twice the
/// one before (Cilium's list; the rule of thumb is M >= 100 x the backends of a
/// service, so that each backend's share is within 1% of 1/N).
pub const TABLE_SIZES: [u32; 10] = [
    251, 509, 1_021, 2_039, 4_093, 8_191, 16_381, 32_749, 65_521, 131_071,
];

/// The default table size (Cilium's).
pub const DEFAULT_TABLE_SIZE: u32 = 16_381;

/// A value of the Maglev map: consecutive entries of the flat table space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MaglevEntries {
    /// Backend ids (keys of the backend map); 0 names no backend. In the header value:
    /// the table size and the hash seed.
    pub backend_ids: [u32; ENTRIES_PER_VALUE],
}
const _: () = assert!(core::mem::size_of::<MaglevEntries>() == 8);

/// The map position (entry, counting from 0) of entry `hash % table_size` of table
/// `table` (1-based). `table_size` must not be 0.
#[inline(always)]
pub fn entry_position(table: u32, table_size: u32, hash: u32) -> u64 {
    HEADER_ENTRIES
        + u64::from(table.wrapping_sub(1)) * u64::from(table_size)
        + u64::from(hash % table_size)
}

/// The number of map values that hold the header and `tables` tables of `table_size`.
pub const fn map_values(tables: u32, table_size: u32) -> u64 {
    let entries = tables as u64 * table_size as u64;
    1 + entries.div_ceil(ENTRIES_PER_VALUE as u64)
}

/// The flow hash that indexes a Maglev table: Bob Jenkins' lookup3 final mix of three
/// words, as the Linux kernel's `jhash_3words`, over the flow's source address, the
/// frontend's address as the service table keys it (0 for a NodePort, so a flow hashes
/// the same on every node and every node address), both ports and the protocol (folded
/// into the seed). Addresses and ports are the raw map values (network byte order in
/// the integer's memory), as the kernel reads them from the packet.
#[inline(always)]
pub fn flow_hash(
    seed: u32,
    saddr: u32,
    frontend_addr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
) -> u32 {
    let ports = (u32::from(sport) << 16) | u32::from(dport);
    jhash_3words(
        saddr,
        frontend_addr,
        ports,
        seed.wrapping_add(u32::from(proto)),
    )
}

/// [`flow_hash`] of an IPv6 flow: each address folded to 32 bits (the XOR of its four
/// words, in the same raw order), so the same table layout and entry positions serve
/// both families.
#[inline(always)]
pub fn flow_hash6(
    seed: u32,
    saddr: &[u32; 4],
    frontend_addr: &[u32; 4],
    sport: u16,
    dport: u16,
    proto: u8,
) -> u32 {
    flow_hash(
        seed,
        fold6(saddr),
        fold6(frontend_addr),
        sport,
        dport,
        proto,
    )
}

/// An IPv6 address folded to one word.
#[inline(always)]
pub fn fold6(a: &[u32; 4]) -> u32 {
    a[0] ^ a[1] ^ a[2] ^ a[3]
}

/// The kernel's `jhash_3words` (include/linux/jhash.h).
#[inline(always)]
pub fn jhash_3words(a: u32, b: u32, c: u32, initval: u32) -> u32 {
    const JHASH_INITVAL: u32 = 0xdead_beef;
    let init = initval.wrapping_add(JHASH_INITVAL).wrapping_add(3 << 2);
    let (mut a, mut b, mut c) = (
        a.wrapping_add(init),
        b.wrapping_add(init),
        c.wrapping_add(init),
    );
    // __jhash_final
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c.wrapping_sub(b.rotate_left(24))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(map_values(0, DEFAULT_TABLE_SIZE), 1, "the header only");
        // 2 tables of 251: 502 entries in 251 values, after the header.
        assert_eq!(map_values(2, 251), 252);
        assert_eq!(map_values(1, 251), 1 + 126);
        assert_eq!(entry_position(1, 251, 0), 2);
        assert_eq!(entry_position(1, 251, 251), 2, "hash modulo the size");
        assert_eq!(entry_position(2, 251, 250), 2 + 251 + 250);
        // The last entry of the last table fits in the map.
        let (tables, m) = (1024, 131_071);
        let last = entry_position(tables, m, m - 1);
        assert!(last / (ENTRIES_PER_VALUE as u64) < map_values(tables, m));
        for pair in TABLE_SIZES.windows(2) {
            assert!(pair[0] < pair[1]);
        }
        assert!(TABLE_SIZES.contains(&DEFAULT_TABLE_SIZE));
    }

    #[test]
    fn jhash_matches_the_kernel() {
        // Values computed with the kernel's jhash_3words (include/linux/jhash.h) in C.
        assert_eq!(jhash_3words(0, 0, 0, 0), 0x1b68_e557);
        assert_eq!(jhash_3words(1, 2, 3, 4), 0x8103_143f);
        assert_eq!(
            jhash_3words(0x0a00_0001, 0, 0x1f90_c350, 0x5eed),
            0xe40b_68c3
        );
    }
}
