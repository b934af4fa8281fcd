//! A Maglev table map (`lb4_maglev_v1` or `lb6_maglev_v1`, see lb_common::maglev)
//! through an mmap of it: a table has tens of thousands of entries, and a write or a read of one is a
//! memory access instead of a syscall. The map is created with BPF_F_MMAPABLE; its
//! values are laid out 8 bytes apart, two entries each, so the mapping is one dense
//! array of u32 entries: the header `[table size, seed]`, then table after table.
//!
//! The header says which tables the map holds (their size and hash seed). An agent
//! started with other Maglev flags than the ones a pinned map was made for does not
//! reuse it ([`pinned_layout_matches`]): it starts a new map, which its programs use
//! once attached, while the programs of the previous agent keep the old one until
//! their links are replaced. The new tables are then written by the first sync; until
//! then an entry 0 makes the kernel pick at random, so no flow fails.
use std::{os::fd::AsFd as _, os::fd::AsRawFd as _, path::Path, ptr::NonNull};

use aya::maps::{Map, MapData};
use lb_common::maglev::{ENTRIES_PER_VALUE, HEADER_ENTRIES, MaglevEntries};
use socklb_core::maps::maglev::MaglevConfig;

use super::DatapathError;

/// BPF_F_MMAPABLE (linux/bpf.h).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The map, mapped into this process.
pub struct MaglevMap {
    /// The map's name, for errors.
    name: &'static str,
    /// Keeps the map alive for the mapping's lifetime.
    _data: MapData,
    /// `entries` u32 entries, shared with the kernel.
    base: NonNull<u32>,
    entries: usize,
    /// Bytes mapped (a multiple of the page size).
    len: usize,
}

// SAFETY: the mapping is owned by this value alone (never aliased by another MaglevMap
// of this process except through the kernel, which synchronises nothing with us
// anyway: entries are single aligned u32 stores and loads), so it may move between
// threads.
unsafe impl Send for MaglevMap {}

fn inconsistent(name: &'static str, message: String) -> DatapathError {
    DatapathError::Inconsistent(format!("{name}: {message}"))
}

impl MaglevMap {
    /// Maps `map` (the Maglev map `name` of a loaded object or a pin).
    pub fn new(map: Map, name: &'static str) -> Result<Self, DatapathError> {
        let Map::Array(data) = map else {
            return Err(inconsistent(name, "not an array map".into()));
        };
        let info = data.info().map_err(|source| DatapathError::Map {
            map: name,
            op: "info",
            source,
        })?;
        if info.map_flags() & BPF_F_MMAPABLE == 0
            || info.value_size() as usize != std::mem::size_of::<MaglevEntries>()
        {
            return Err(inconsistent(
                name,
                format!(
                    "flags {:#x}, value size {}: not the layout this agent writes",
                    info.map_flags(),
                    info.value_size()
                ),
            ));
        }
        let entries = info.max_entries() as usize * ENTRIES_PER_VALUE;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = (entries * 4).div_ceil(page) * page;
        // SAFETY: a shared mapping of the map's fd over its whole value area, which the
        // kernel allows for mmapable arrays (rounded up to pages); checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DatapathError::Io {
                what: "mmap of the Maglev map",
                path: name.into(),
                source: std::io::Error::last_os_error(),
            });
        }
        let base = NonNull::new(ptr.cast::<u32>())
            .ok_or_else(|| inconsistent(name, "mmap returned null".into()))?;
        Ok(Self {
            name,
            _data: data,
            base,
            entries,
            len,
        })
    }

    fn load(&self, i: usize) -> u32 {
        debug_assert!(i < self.entries);
        // SAFETY: i < entries, inside the mapping; an aligned u32 the kernel may write
        // concurrently, hence volatile.
        unsafe { self.base.as_ptr().add(i).read_volatile() }
    }

    fn store(&mut self, i: usize, value: u32) {
        debug_assert!(i < self.entries);
        // SAFETY: as in `load`; a single aligned store, which a kernel reader sees
        // whole (old or new).
        unsafe { self.base.as_ptr().add(i).write_volatile(value) }
    }

    /// The header: (table size, seed).
    pub fn header(&self) -> (u32, u32) {
        (self.load(0), self.load(1))
    }

    pub fn write_header(&mut self, table_size: u32, seed: u32) {
        self.store(0, table_size);
        self.store(1, seed);
    }

    /// Tables of the header's size the map has room for.
    pub fn tables(&self) -> u32 {
        let (m, _) = self.header();
        if m == 0 {
            return 0;
        }
        u32::try_from((self.entries - HEADER_ENTRIES as usize) / m as usize).unwrap_or(u32::MAX)
    }

    /// Where entry `index` of table `table` is, if the map has it.
    fn position(&self, table: u32, index: u32) -> Option<usize> {
        let (m, _) = self.header();
        if table == 0 || table > self.tables() || index >= m {
            return None;
        }
        let at = HEADER_ENTRIES as usize + (table as usize - 1) * m as usize + index as usize;
        (at < self.entries).then_some(at)
    }

    pub fn put(&mut self, table: u32, index: u32, backend_id: u32) -> Result<(), DatapathError> {
        let at = self.position(table, index).ok_or_else(|| {
            inconsistent(
                self.name,
                format!(
                    "entry {index} of table {table}: the map holds {} tables of {}",
                    self.tables(),
                    self.header().0
                ),
            )
        })?;
        self.store(at, backend_id);
        Ok(())
    }

    /// Table `table`'s entries, None when the map has no such table.
    pub fn read_table(&self, table: u32) -> Option<Vec<u32>> {
        let (m, _) = self.header();
        let first = self.position(table, 0)?;
        Some((first..first + m as usize).map(|i| self.load(i)).collect())
    }
}

impl Drop for MaglevMap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Whether the Maglev map pinned at `pin` (if any) has the layout `config` needs:
/// Some(false) when it must be replaced, None when nothing is pinned there.
pub fn pinned_layout_matches(
    pin: &Path,
    name: &'static str,
    config: &MaglevConfig,
) -> Option<bool> {
    let data = MapData::from_pin(pin).ok()?;
    let Ok(info) = data.info() else {
        return Some(false);
    };
    if u64::from(info.max_entries()) != config.map_entries() {
        return Some(false);
    }
    if config.tables() == 0 {
        return Some(true);
    }
    let Ok(map) = MaglevMap::new(Map::Array(data), name) else {
        return Some(false);
    };
    Some(map.header() == (config.table_size, config.seed))
}
