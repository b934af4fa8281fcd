//! Probing the TC ingress program the agent attached, through BPF_PROG_TEST_RUN: the
//! program is found from the agent's own link pin (`link_tc_ingress_<ifindex>` ->
//! link info -> program id -> program fd), so what runs is exactly what the agent
//! loaded, with the maps it programmed. The runs happen on a thread that entered the
//! node's network namespace (the program's FIB lookups and the test run's device
//! belong to it). A test run never transmits: verdicts are only returned.

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// The MAC the node's device gets (frames to it are PACKET_HOST in a test run).
pub const DEVICE_MAC: [u8; 6] = [0x02, 0x00, 0x5c, 0x1b, 0xc8, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x5c, 0x1b, 0xc8, 0x02];

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// A `union bpf_attr`, written field by field at the kernel's offsets.
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes([
            self.0[off],
            self.0[off + 1],
            self.0[off + 2],
            self.0[off + 3],
        ])
    }
    fn call(&mut self, cmd: libc::c_long) -> std::io::Result<i64> {
        // SAFETY: the attr buffer is as large as the kernel may read (tail zeroed); the
        // pointers inside it point at live buffers of the sizes written next to them.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                self.0.as_mut_ptr(),
                self.0.len() as libc::c_uint,
            )
        };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }
}

fn fd(r: i64) -> OwnedFd {
    // SAFETY: a file descriptor the kernel just returned to us, owned from here.
    unsafe { OwnedFd::from_raw_fd(r as i32) }
}

/// The program of the link pinned at `pin`.
pub fn program_of_link_pin(pin: &Path) -> Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_bytes())?;
    let link = fd(Attr::new()
        .u64(0, path.as_ptr() as u64)
        .call(BPF_OBJ_GET)
        .with_context(|| format!("BPF_OBJ_GET {}", pin.display()))?);
    // struct bpf_link_info: type, id, prog_id, then per type.
    let mut info = [0u8; 256];
    Attr::new()
        .u32(0, link.as_raw_fd() as u32)
        .u32(4, info.len() as u32)
        .u64(8, info.as_mut_ptr() as u64)
        .call(BPF_OBJ_GET_INFO_BY_FD)
        .context("BPF_OBJ_GET_INFO_BY_FD of the link")?;
    let prog_id = u32::from_ne_bytes([info[8], info[9], info[10], info[11]]);
    if prog_id == 0 {
        bail!("the link {} has no program", pin.display());
    }
    Ok(fd(Attr::new()
        .u32(0, prog_id)
        .call(BPF_PROG_GET_FD_BY_ID)
        .with_context(|| {
            format!("BPF_PROG_GET_FD_BY_ID {prog_id}")
        })?))
}

/// What the program did with one frame.
#[derive(Clone, Debug)]
pub struct Run {
    pub verdict: u32,
    pub output: Vec<u8>,
}

/// Runs `frame` once through `prog` as received on `ifindex`.
pub fn test_run(prog: &OwnedFd, ifindex: u32, frame: &[u8]) -> Result<Run> {
    let mut out = vec![0u8; frame.len() + 512];
    // struct __sk_buff up to gso_size: ingress_ifindex (36) and ifindex (40), the rest
    // zero as the kernel requires.
    let mut ctx = [0u8; 180];
    ctx[36..40].copy_from_slice(&ifindex.to_ne_bytes());
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let mut a = Attr::new();
    a.u32(0, prog.as_raw_fd() as u32)
        .u32(8, frame.len() as u32)
        .u32(12, out.len() as u32)
        .u64(16, frame.as_ptr() as u64)
        .u64(24, out.as_mut_ptr() as u64)
        .u32(32, 1)
        .u32(40, ctx.len() as u32)
        .u64(48, ctx.as_ptr() as u64);
    a.call(BPF_PROG_TEST_RUN).context("BPF_PROG_TEST_RUN")?;
    let verdict = a.get_u32(4);
    let n = (a.get_u32(12) as usize).min(out.len());
    out.truncate(n);
    Ok(Run {
        verdict,
        output: out,
    })
}

/// Runs `f` on a new thread that entered the network namespace file `netns`.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(netns)
                .with_context(|| format!("opening {}", netns.display()))?;
            // SAFETY: setns on this thread only, with a namespace file we opened.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!(
                    "setns {}: {}",
                    netns.display(),
                    std::io::Error::last_os_error()
                );
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| bail!("the thread in {} panicked", netns.display()))
    })
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn v4(ip: IpAddr) -> Result<Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(a) => bail!("{a}: only IPv4 frames so far"),
    }
}

/// An Ethernet frame to the node's device: a TCP SYN or a UDP datagram from `src`
/// to `dst`, checksums correct.
pub fn frame(src: SocketAddr, dst: SocketAddr, proto: u8) -> Result<Vec<u8>> {
    let (s, d) = (v4(src.ip())?, v4(dst.ip())?);
    let l4: Vec<u8> = if proto == IPPROTO_TCP {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&src.port().to_be_bytes());
        t[2..4].copy_from_slice(&dst.port().to_be_bytes());
        t[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = TCP_SYN;
        t[14..16].copy_from_slice(&64240u16.to_be_bytes());
        t
    } else {
        let payload = b"who";
        let mut u = vec![0u8; 8 + payload.len()];
        u[0..2].copy_from_slice(&src.port().to_be_bytes());
        u[2..4].copy_from_slice(&dst.port().to_be_bytes());
        let len = u.len() as u16;
        u[4..6].copy_from_slice(&len.to_be_bytes());
        u[8..].copy_from_slice(payload);
        u
    };
    let mut pseudo = Vec::with_capacity(12 + l4.len());
    pseudo.extend_from_slice(&s.octets());
    pseudo.extend_from_slice(&d.octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&l4);
    let mut l4 = l4;
    let csum_off = if proto == IPPROTO_TCP { 16 } else { 6 };
    let c = fold(sum16(&pseudo));
    l4[csum_off..csum_off + 2].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());

    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&s.octets());
    ip[16..20].copy_from_slice(&d.octets());
    let c = fold(sum16(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());

    let mut f = Vec::with_capacity(14 + ip.len() + l4.len());
    f.extend_from_slice(&DEVICE_MAC);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&l4);
    Ok(f)
}

/// The parts of an output frame the checks look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// TCP/UDP ports (0 for ICMP).
    pub sport: u16,
    pub dport: u16,
    /// TCP flags; ICMP type.
    pub tcp_flags: u8,
    pub icmp_type: u8,
}

impl Parsed {
    pub fn dst_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.dst), self.dport)
    }

    pub fn is_rst(&self) -> bool {
        self.proto == IPPROTO_TCP && self.tcp_flags & TCP_RST != 0
    }

    /// ICMP destination unreachable.
    pub fn is_unreachable(&self) -> bool {
        self.proto == IPPROTO_ICMP && self.icmp_type == 3
    }
}

/// Parses an Ethernet + IPv4 frame (None when it is not one).
pub fn parse(f: &[u8]) -> Option<Parsed> {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] || f[14] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(f[14] & 0xf) * 4;
    let ip = &f[14..];
    let l4 = ip.get(ihl..)?;
    let addr = |o: usize| Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]);
    let proto = ip[9];
    let port = |o: usize| {
        l4.get(o..o + 2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
    };
    Some(Parsed {
        src: addr(12),
        dst: addr(16),
        proto,
        sport: if proto == IPPROTO_ICMP { 0 } else { port(0) },
        dport: if proto == IPPROTO_ICMP { 0 } else { port(2) },
        tcp_flags: if proto == IPPROTO_TCP {
            l4.get(13).copied().unwrap_or(0)
        } else {
            0
        },
        icmp_type: if proto == IPPROTO_ICMP {
            l4.first().copied().unwrap_or(0)
        } else {
            0
        },
    })
}

/// A verdict's name, for reports.
pub fn verdict_name(v: u32) -> String {
    match v {
        TC_ACT_OK => "TC_ACT_OK".into(),
        TC_ACT_SHOT => "TC_ACT_SHOT".into(),
        TC_ACT_REDIRECT => "TC_ACT_REDIRECT".into(),
        other => format!("verdict {other}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn frames_parse_back_with_valid_checksums() {
        let src: SocketAddr = "100.64.1.7:40000".parse().unwrap();
        let dst: SocketAddr = "172.20.0.1:80".parse().unwrap();
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            let f = frame(src, dst, proto).unwrap();
            let p = parse(&f).unwrap();
            assert_eq!(
                (p.src, p.dst, p.proto),
                (
                    Ipv4Addr::new(100, 64, 1, 7),
                    Ipv4Addr::new(172, 20, 0, 1),
                    proto
                )
            );
            assert_eq!((p.sport, p.dport), (40000, 80));
            // The IP header sums to 0xffff, the L4 segment with its pseudo-header too.
            assert_eq!(fold(sum16(&f[14..34])), 0);
            let l4 = &f[34..];
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&f[26..34]);
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            pseudo.extend_from_slice(l4);
            assert_eq!(fold(sum16(&pseudo)), 0);
        }
        assert!(parse(&f_short()).is_none());
    }

    fn f_short() -> Vec<u8> {
        vec![0u8; 20]
    }
}
