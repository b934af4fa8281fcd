//! Backend choice by a Maglev table, for new flows from outside the node (TC): the
//! frontend's slot 0 names its table, the flow's hash picks an entry, the entry names
//! the backend. The agent builds and writes the tables (socklb-core maps::maglev);
//! both sides compute the same lb_common::maglev::flow_hash. An entry 0 (a table not
//! written yet) leaves the pick to chance; an entry naming a backend the backend map
//! lacks is the agent's inconsistency, like a slot's (counted, the packet passes).
//!
//! The table size and the hash seed are read-only globals the loader sets from the
//! agent's flags (the same flags wrote the tables): with the random algorithm the size
//! is 0 and the verifier, which knows frozen read-only data, drops this code.
use aya_ebpf::Global;
use lb_common::maglev::{ENTRIES_PER_VALUE, entry_position};

use crate::{family::Family, lb::Frontend};

const _: () = assert!(ENTRIES_PER_VALUE == 2, "select reads one of two entries");

/// Entries per table (M); 0 = no Maglev tables.
#[unsafe(no_mangle)]
static MAGLEV_TABLE_SIZE: Global<u32> = Global::new(0);

/// Seed of the flow hash; the same on every node.
#[unsafe(no_mangle)]
static MAGLEV_SEED: Global<u32> = Global::new(0);

/// The backend id the frontend's Maglev table gives a flow from `saddr`:`sport`
/// (network byte order), if the frontend has a table and its entry names a backend.
/// None lets the caller pick at random: a table being written never fails a flow.
#[inline(always)]
pub fn backend_id<F: Family>(fe: &Frontend<F>, saddr: &F::Addr, sport: u16) -> Option<u32> {
    // The size first: a constant to the verifier, so with the random algorithm it
    // stops here.
    let m = MAGLEV_TABLE_SIZE.load();
    if m == 0 {
        return None;
    }
    // Slot 0's backend id field holds the table (lb_common::Svc4Value::backend_id).
    let table = fe.svc.backend_id;
    if table == 0 {
        return None;
    }
    let hash = F::flow_hash(MAGLEV_SEED.load(), saddr, sport, &fe.key);
    let position = entry_position(table, m, hash);
    let value = u32::try_from(position / ENTRIES_PER_VALUE as u64).ok()?;
    let entries = F::maglev_entries(value)?;
    let backend_id = if position % ENTRIES_PER_VALUE as u64 == 0 {
        entries.backend_ids[0]
    } else {
        entries.backend_ids[1]
    };
    (backend_id != 0).then_some(backend_id)
}
