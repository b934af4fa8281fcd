//! The maps as the agent sees them: what they should hold (`desired`), how to get
//! there with few writes and no reader ever seeing a half-written service (`diff`),
//! and an in-memory twin of them (`twin`) on which the ordering is tested. The real
//! maps live in the agent's data path edge, behind the same [`ServiceMaps`] trait.

pub mod desired;
pub mod diff;
pub mod family;
pub mod fit;
pub mod maglev;
pub mod twin;
pub mod v4;
pub mod v6;

use std::net::Ipv4Addr;

pub use desired::{BackendKey, DesiredFrontend, DesiredState, FrontendKey, Scope};
pub use diff::{Capacity, MapOp, ProgrammedState, SyncStats};
pub use family::{Family, V4, V6};
use lb_common::Svc4Value;

/// Something that holds one family's service and backend maps: the kernel, or a twin
/// in memory.
pub trait ServiceMaps<F: Family = V4> {
    type Error: std::error::Error + Send + Sync + 'static;

    fn apply(&mut self, op: &MapOp<F>) -> Result<(), Self::Error>;
    /// Every entry of the service map.
    fn dump_services(&self) -> Result<Vec<(F::SvcKey, Svc4Value)>, Self::Error>;
    /// Every entry of the backend map.
    fn dump_backends(&self) -> Result<Vec<(u32, F::Backend)>, Self::Error>;
    /// Every allowed-source entry: (key data, prefix length).
    fn dump_src_ranges(&self) -> Result<Vec<(F::SrcRangeKey, u32)>, Self::Error>;
    /// Every affinity match entry: (key, slot).
    fn dump_affinity_matches(&self) -> Result<Vec<(F::AffinityMatchKey, u16)>, Self::Error>;
    /// The entries of Maglev table `table` (1, 2, ...) as the maps hold them (backend
    /// ids, 0 for none); None when the maps have no such table.
    fn read_maglev_table(&self, table: u32) -> Result<Option<Vec<u32>>, Self::Error>;
}

/// IPv4 address as the maps store it (network byte order in a u32's memory).
pub fn ip_to_map(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub fn ip_from_map(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

/// L4 port as the maps store it (network byte order in a u16's memory).
pub fn port_to_map(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

pub fn port_from_map(raw: u16) -> u16 {
    u16::from_be_bytes(raw.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_matches_the_kernel_view() {
        // The kernel reads user_ip4 as the raw network-order bytes.
        let raw = ip_to_map(Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(raw.to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(ip_from_map(raw), Ipv4Addr::new(10, 96, 0, 1));
        let p = port_to_map(8080);
        assert_eq!(p.to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(port_from_map(p), 8080);
    }
}
