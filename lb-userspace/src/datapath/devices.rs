//! This node's network interfaces: which devices get the TC programs, and the
//! addresses NodePorts answer on.
use std::{
    collections::BTreeMap,
    ffi::CStr,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::datapath::kernel::Device;

/// One interface with its IPv4 and IPv6 addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    pub up: bool,
    pub loopback: bool,
    pub addrs: Vec<IpAddr>,
}

impl Interface {
    fn v4(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.addrs.iter().filter_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
    }

    /// Its IPv6 addresses that can be a source or a NodePort address: not
    /// link-local (those are per link, and NDP's), not loopback.
    fn v6(&self) -> impl Iterator<Item = Ipv6Addr> + '_ {
        self.addrs.iter().filter_map(|a| match a {
            IpAddr::V6(v6) if !v6.is_unicast_link_local() && !v6.is_loopback() => Some(*v6),
            _ => None,
        })
    }
}

/// The interfaces of this network namespace (getifaddrs).
pub fn interfaces() -> io::Result<Vec<Interface>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut by_name: BTreeMap<String, Interface> = BTreeMap::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned, valid until freeifaddrs.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(entry.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let iface = by_name.entry(name.clone()).or_insert_with(|| Interface {
            ifindex: ifindex(&name),
            up: entry.ifa_flags & libc::IFF_UP as u32 != 0,
            loopback: entry.ifa_flags & libc::IFF_LOOPBACK as u32 != 0,
            name,
            addrs: Vec::new(),
        });
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it names.
            let family = unsafe { (*entry.ifa_addr).sa_family };
            if i32::from(family) == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                iface
                    .addrs
                    .push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into());
            } else if i32::from(family) == libc::AF_INET6 {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                iface
                    .addrs
                    .push(Ipv6Addr::from(sin6.sin6_addr.s6_addr).into());
            }
        }
    }
    // SAFETY: the list from getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(by_name.into_values().collect())
}

fn ifindex(name: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(name) else {
        return 0;
    };
    // SAFETY: a valid NUL-terminated name.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// Interfaces that are never a node's own network: pod veths, bridges of container
/// runtimes, other CNIs' devices.
const NOT_NODE_DEVICES: [&str; 9] = [
    "veth",
    "lxc",
    "cni",
    "docker",
    "br-",
    "cilium",
    "flannel",
    "kube-ipvs",
    "virbr",
];

/// The devices the TC programs attach to: the ones named (each must exist and have
/// an IPv4 or a global IPv6 address, the source of SNATed flows), else every
/// interface that is up, not loopback, has such an address and is not a pod or
/// runtime device. The first address of each family is the SNAT source.
pub fn select_devices(
    ifaces: &[Interface],
    requested: Option<&[String]>,
) -> Result<Vec<Device>, String> {
    let device = |i: &Interface| -> Option<Device> {
        let (v4, v6) = (i.v4().next(), i.v6().next());
        if v4.is_none() && v6.is_none() {
            return None;
        }
        Some(Device {
            name: i.name.clone(),
            ifindex: i.ifindex,
            snat_addr: v4.unwrap_or(Ipv4Addr::UNSPECIFIED),
            snat_addr6: v6.unwrap_or(Ipv6Addr::UNSPECIFIED),
        })
    };
    match requested {
        Some(names) => names
            .iter()
            .map(|name| {
                let iface = ifaces
                    .iter()
                    .find(|i| &i.name == name)
                    .ok_or_else(|| format!("no interface {name:?}"))?;
                device(iface).ok_or_else(|| {
                    format!("interface {name:?} has no IPv4 and no global IPv6 address")
                })
            })
            .collect(),
        None => Ok(ifaces
            .iter()
            .filter(|i| {
                i.up && !i.loopback && !NOT_NODE_DEVICES.iter().any(|p| i.name.starts_with(p))
            })
            .filter_map(device)
            .collect()),
    }
}

/// Where IPv4 NodePorts answer: every IPv4 address of this node but loopback ones.
pub fn node_addresses(ifaces: &[Interface]) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = ifaces
        .iter()
        .filter(|i| !i.loopback)
        .flat_map(Interface::v4)
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Where IPv6 NodePorts answer: every IPv6 address of this node but loopback and
/// link-local ones.
pub fn node_addresses6(ifaces: &[Interface]) -> Vec<Ipv6Addr> {
    let mut out: Vec<Ipv6Addr> = ifaces
        .iter()
        .filter(|i| !i.loopback)
        .flat_map(Interface::v6)
        .filter(|a| !a.is_unspecified())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, ifindex: u32, addrs: &[[u8; 4]], loopback: bool) -> Interface {
        Interface {
            name: name.into(),
            ifindex,
            up: true,
            loopback,
            addrs: addrs.iter().map(|a| Ipv4Addr::from(*a).into()).collect(),
        }
    }

    fn with_v6(mut iface: Interface, addrs: &[&str]) -> Interface {
        iface
            .addrs
            .extend(addrs.iter().map(|a| a.parse::<IpAddr>().unwrap()));
        iface
    }

    #[test]
    fn auto_selection_skips_loopback_pod_devices_and_addressless_ones() {
        let ifaces = vec![
            iface("lo", 1, &[[127, 0, 0, 1]], true),
            iface("eth0", 2, &[[192, 0, 2, 11], [192, 0, 2, 99]], false),
            iface("veth1234", 3, &[[10, 244, 1, 1]], false),
            iface("eth1", 4, &[], false),
            iface("cilium_host", 5, &[[10, 0, 0, 1]], false),
        ];
        let devices = select_devices(&ifaces, None).unwrap();
        assert_eq!(
            devices,
            vec![Device {
                name: "eth0".into(),
                ifindex: 2,
                snat_addr: Ipv4Addr::new(192, 0, 2, 11),
                snat_addr6: Ipv6Addr::UNSPECIFIED,
            }]
        );
        assert_eq!(
            node_addresses(&ifaces),
            [
                [10, 0, 0, 1],
                [10, 244, 1, 1],
                [192, 0, 2, 11],
                [192, 0, 2, 99]
            ]
            .map(Ipv4Addr::from)
            .to_vec()
        );
    }

    #[test]
    fn ipv6_addresses_serve_as_snat_source_and_nodeport_addresses_but_link_local_ones() {
        let ifaces = vec![
            with_v6(iface("lo", 1, &[[127, 0, 0, 1]], true), &["::1"]),
            with_v6(
                iface("eth0", 2, &[[192, 0, 2, 11]], false),
                &["fe80::1", "fd00:192::11"],
            ),
            with_v6(iface("eth1", 3, &[], false), &["fe80::2", "fd00:193::11"]),
            with_v6(iface("eth2", 4, &[], false), &["fe80::3"]),
        ];
        let devices = select_devices(&ifaces, None).unwrap();
        let v6: Ipv6Addr = "fd00:192::11".parse().unwrap();
        assert_eq!(devices.len(), 2, "{devices:?}");
        assert_eq!(devices[0].snat_addr6, v6);
        assert_eq!(devices[1].snat_addr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            devices[1].snat_addr6,
            "fd00:193::11".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            node_addresses6(&ifaces),
            vec![v6, "fd00:193::11".parse().unwrap()]
        );
        assert!(
            select_devices(&ifaces, Some(&["eth2".into()]))
                .unwrap_err()
                .contains("no global IPv6")
        );
    }

    #[test]
    fn requested_devices_must_exist_and_have_an_address() {
        let ifaces = vec![
            iface("eth0", 2, &[[192, 0, 2, 11]], false),
            iface("eth1", 4, &[], false),
        ];
        assert_eq!(
            select_devices(&ifaces, Some(&["eth0".into()]))
                .unwrap()
                .len(),
            1
        );
        assert!(
            select_devices(&ifaces, Some(&["eth9".into()]))
                .unwrap_err()
                .contains("no interface")
        );
        assert!(
            select_devices(&ifaces, Some(&["eth1".into()]))
                .unwrap_err()
                .contains("no IPv4 and no global IPv6")
        );
    }

    #[test]
    fn this_namespace_has_a_loopback() {
        let ifaces = interfaces().unwrap();
        assert!(ifaces.iter().any(|i| i.loopback && i.ifindex > 0));
    }
}
