//! Probing the socket hooks without a server per backend: every backend address is
//! local in the node's namespace (one `local` route for the whole pod block), one
//! reflector listens on each backend port on 0.0.0.0 and tells each client which
//! local address it reached: the accepted TCP socket's own address (getsockname), or
//! a UDP datagram's destination (IP_PKTINFO), answered from that very address so a
//! connected client socket takes the answer.
//!
//! Both ends are run by `socklb-diffprobe` (`reflect` outside the cgroup, `probe` in
//! it); the functions are here so that the library's tests run them on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::report::error_name;

/// One target of a `probe` run: `n` fresh sockets to `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRequest {
    pub to: SocketAddr,
    /// "TCP" or "UDP".
    pub protocol: String,
    pub n: u32,
}

/// What one probe found: the backend address that answered (`ip:port`), or an error
/// name (`ECONNREFUSED`, `EHOSTUNREACH`, `ENETUNREACH`, `ETIMEDOUT`, ...).
pub type Outcome = String;

/// Whether an outcome names a backend.
pub fn is_backend(outcome: &str) -> bool {
    outcome.parse::<SocketAddr>().is_ok()
}

const TIMEOUT: Duration = Duration::from_millis(1000);

/// Serves TCP and UDP on `ports` of 0.0.0.0 (threads; never returns unless binding
/// fails). `ready` is called once every port is bound.
pub fn reflect(ports: &[u16], ready: impl FnOnce()) -> Result<()> {
    let mut threads = Vec::new();
    for &port in ports {
        let tcp = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("TCP {port}"))?;
        let udp = UdpSocket::bind(("0.0.0.0", port)).with_context(|| format!("UDP {port}"))?;
        set_pktinfo(&udp)?;
        threads.push(std::thread::spawn(move || {
            for stream in tcp.incoming().flatten() {
                let _ = reflect_tcp(stream);
            }
        }));
        threads.push(std::thread::spawn(move || {
            loop {
                let _ = reflect_udp(&udp, port);
            }
        }));
    }
    ready();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn reflect_tcp(mut stream: TcpStream) -> std::io::Result<()> {
    let local = stream.local_addr()?;
    stream.write_all(format!("{local}\n").as_bytes())
}

fn set_pktinfo(s: &UdpSocket) -> Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and a pointer to an int of the size given.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("IP_PKTINFO: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// One datagram in, one answer out: "ip:port" of the address it was sent to, sent
/// from that address.
fn reflect_udp(s: &UdpSocket, port: u16) -> std::io::Result<()> {
    let mut buf = [0u8; 512];
    // SAFETY: zeroed C structs are valid; every pointer below points at a local that
    // outlives the calls.
    unsafe {
        let mut peer: libc::sockaddr_in = std::mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut cbuf = [0u8; 128];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut peer as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = cbuf.len() as _;
        if libc::recvmsg(s.as_raw_fd(), &mut msg, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut dst = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>());
                dst = Some(info.ipi_addr);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        let Some(dst) = dst else {
            return Ok(());
        };
        let ip = Ipv4Addr::from(u32::from_be(dst.s_addr));
        let answer = format!("{}", SocketAddrV4::new(ip, port));
        let mut iov = libc::iovec {
            iov_base: answer.as_ptr() as *mut libc::c_void,
            iov_len: answer.len(),
        };
        let mut cbuf = [0u8; 64];
        let mut out: libc::msghdr = std::mem::zeroed();
        out.msg_name = (&mut peer as *mut libc::sockaddr_in).cast();
        out.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        out.msg_iov = &mut iov;
        out.msg_iovlen = 1;
        out.msg_control = cbuf.as_mut_ptr().cast();
        out.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::in_pktinfo>() as u32) as _;
        let c = libc::CMSG_FIRSTHDR(&out);
        (*c).cmsg_level = libc::IPPROTO_IP;
        (*c).cmsg_type = libc::IP_PKTINFO;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::in_pktinfo>() as u32) as _;
        let mut info: libc::in_pktinfo = std::mem::zeroed();
        info.ipi_spec_dst = dst;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>(), info);
        if libc::sendmsg(s.as_raw_fd(), &out, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs every request (fresh sockets, in sequence per request, `parallel` requests
/// at a time) and returns the outcomes in request order.
pub fn probe_all(reqs: &[ProbeRequest], parallel: usize) -> Vec<Vec<Outcome>> {
    let parallel = parallel.clamp(1, 16);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Vec<Outcome>>> =
        reqs.iter().map(|_| Default::default()).collect();
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(r) = reqs.get(i) else { break };
                    let out: Vec<Outcome> = (0..r.n).map(|_| probe_one(r)).collect();
                    *results[i].lock().unwrap_or_else(|e| e.into_inner()) = out;
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect()
}

fn probe_one(r: &ProbeRequest) -> Outcome {
    let got = if r.protocol == "UDP" {
        probe_udp(r.to)
    } else {
        probe_tcp(r.to)
    };
    match got {
        Ok(s) => s,
        Err(e) => error_name(&e),
    }
}

fn probe_tcp(to: SocketAddr) -> std::io::Result<String> {
    let stream = TcpStream::connect_timeout(&to, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream.take(128)).read_line(&mut line)?;
    answer(line)
}

fn probe_udp(to: SocketAddr) -> std::io::Result<String> {
    let bind = match to.ip() {
        IpAddr::V4(_) => "0.0.0.0:0",
        IpAddr::V6(_) => "[::]:0",
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(to)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.send(b"who")?;
    let mut buf = [0u8; 128];
    let n = s.recv(&mut buf)?;
    answer(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn answer(text: String) -> std::io::Result<String> {
    let t = text.trim();
    if is_backend(t) {
        Ok(t.to_string())
    } else {
        Err(std::io::Error::other(format!("unexpected answer {t:?}")))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_reflector_names_the_address_each_client_reached_on_loopback() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = reflect(&[port], move || {
                let _ = tx.send(());
            });
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let reqs: Vec<ProbeRequest> = ["127.0.0.1", "127.0.0.2"]
            .iter()
            .flat_map(|ip| {
                ["TCP", "UDP"].map(|p| ProbeRequest {
                    to: format!("{ip}:{port}").parse().unwrap(),
                    protocol: p.into(),
                    n: 2,
                })
            })
            .collect();
        let out = probe_all(&reqs, 2);
        for (r, o) in reqs.iter().zip(&out) {
            assert_eq!(o, &vec![r.to.to_string(); 2], "{r:?}");
        }
        let closed = ProbeRequest {
            to: "127.0.0.1:1".parse().unwrap(),
            protocol: "TCP".into(),
            n: 1,
        };
        assert_eq!(
            probe_all(&[closed], 1),
            vec![vec!["ECONNREFUSED".to_string()]]
        );
    }
}
