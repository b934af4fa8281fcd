//! socklb-probe: the sandbox's traffic tool, run inside its network namespaces.
//!
//! - `serve --id NAME [--tcp PORT]... [--udp PORT]...`: a backend. Binds 0.0.0.0; every
//!   TCP connection gets "NAME\n" and then an echo of what the client sends, every UDP
//!   datagram is answered with "NAME" to its sender. Prints one ready line (JSON) once
//!   every port is bound, and runs until SIGTERM.
//!   With `--report-peer` the id is followed by the peer address the server sees:
//!   "NAME PEER_IP:PORT\n" on TCP, "NAME PEER_IP:PORT" on UDP (tests check which client
//!   address a backend sees through NAT).
//! - `tcp --to IP:PORT ...` and `udp --to IP:PORT [--also IP:PORT]...`: clients. Print one JSON report
//!   (see `socklb_tests::report`) and exit 0 whatever happened to the attempts. Both
//!   take `--bind IP` (the source address); `tcp` takes `--source-port P` (the n-th
//!   connection from port P + n, reported per port: flows a test can name) and
//!   `--parallel N` (N worker threads
//!   sharing `--count`) and `--hold` (every round of N connections is open at the same
//!   time before any is used further and closed). When the server reports the peer it
//!   sees, the report has an extra key `seen_from`: {backend id: {client ip: count}}.
//! - `transfer --to IP:PORT --bytes N [--seed S]`: one TCP connection to an echoing
//!   `serve`, sending a deterministic pseudo-random stream of N bytes while verifying
//!   what comes back byte for byte; prints {ok, bytes, received, mismatch_offset,
//!   sha256, ...}.
//! - `tx-csum --dev DEV... [--off|--on]`: turns TX checksum offload of interfaces of the
//!   current network namespace off or on (the `ethtool -K DEV tx off` ioctl), so that a
//!   wrong checksum written by the data path shows up as a dropped packet instead of
//!   being hidden by offload; prints the state read back ({"tx_csum": {DEV: on}}).
//!
//! Clients refuse to run in the host network namespace or in one with a default route
//! (unless the target is loopback): a packet whose translation failed must have nowhere
//! to go.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use socklb_tests::report::{TcpReport, UdpReport, error_name};

#[path = "../probe/hold.rs"]
mod hold;

#[derive(Parser, Debug)]
#[command(
    name = "socklb-probe",
    about = "Traffic tool of the socklb test sandbox",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve TCP and UDP ports, answering with the id (runs until SIGTERM).
    Serve {
        /// The id sent to every client ("pod-10.244.1.10").
        #[arg(long)]
        id: String,
        /// A TCP port to serve (repeatable).
        #[arg(long = "tcp", value_name = "PORT")]
        tcp: Vec<u16>,
        /// A UDP port to serve (repeatable).
        #[arg(long = "udp", value_name = "PORT")]
        udp: Vec<u16>,
        /// Answer "NAME PEER_IP:PORT" (the client address this server sees).
        #[arg(long = "report-peer")]
        report_peer: bool,
    },
    /// Make TCP connections in sequence and report who answered.
    Tcp {
        /// Target address.
        #[arg(long)]
        to: SocketAddr,
        /// Number of connections (default 1 when no duration is given).
        #[arg(long)]
        count: Option<u64>,
        /// Keep connecting for this many milliseconds (with --count: whichever ends first).
        #[arg(long = "duration-ms")]
        duration_ms: Option<u64>,
        /// Pause between connections, in milliseconds.
        #[arg(long = "interval-ms", default_value_t = 0)]
        interval_ms: u64,
        /// connect() and read timeout, in milliseconds.
        #[arg(long = "timeout-ms", default_value_t = 1000)]
        timeout_ms: u64,
        /// After the id line, send a line and check that it comes back.
        #[arg(long)]
        echo: bool,
        /// Source address to bind (default: chosen by routing).
        #[arg(long)]
        bind: Option<IpAddr>,
        /// The n-th connection binds source port P + n (with --count, one worker); the
        /// report's `by_source_port` says which backend each port reached.
        #[arg(long = "source-port", value_name = "P")]
        source_port: Option<u16>,
        /// Worker threads sharing the connections (each makes its share in sequence).
        #[arg(long, default_value_t = 1)]
        parallel: u64,
        /// With --parallel: each round's connections are all open at once (a barrier
        /// after the id line) before any is echoed and closed. Needs --count, a
        /// multiple of --parallel.
        #[arg(long)]
        hold: bool,
    },
    /// Send UDP datagrams from several sockets and report who answered.
    Udp {
        /// Target address.
        #[arg(long)]
        to: SocketAddr,
        /// Further targets: each socket sends to --to and then to each of these in turn.
        #[arg(long, value_name = "IP:PORT")]
        also: Vec<SocketAddr>,
        /// Number of sockets.
        #[arg(long, default_value_t = 1)]
        sockets: u64,
        /// Datagrams per socket (each waits for its reply).
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// connect() the sockets and use send/recv (default: sendto/recvfrom).
        #[arg(long)]
        connected: bool,
        /// How long to wait for each reply, in milliseconds.
        #[arg(long = "timeout-ms", default_value_t = 1000)]
        timeout_ms: u64,
        /// Source address to bind (default: chosen by routing).
        #[arg(long)]
        bind: Option<IpAddr>,
        /// Repeat the whole run with new sockets until this many milliseconds passed.
        #[arg(long = "duration-ms")]
        duration_ms: Option<u64>,
        /// With --duration-ms: pause between rounds, in milliseconds.
        #[arg(long = "interval-ms", default_value_t = 0)]
        interval_ms: u64,
    },
    /// Send a deterministic stream over one TCP connection to an echoing `serve` and
    /// verify what comes back, byte for byte.
    Transfer {
        /// Target address.
        #[arg(long)]
        to: SocketAddr,
        /// Bytes to send (and expect back).
        #[arg(long)]
        bytes: u64,
        /// Seed of the pseudo-random stream.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Source address to bind.
        #[arg(long)]
        bind: Option<IpAddr>,
        /// connect() timeout, and the longest a read or write may stall, in milliseconds.
        #[arg(long = "timeout-ms", default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Turn TX checksum offload of interfaces (in the current network namespace) off or
    /// on; without --off or --on only report it.
    TxCsum {
        /// Interface name (repeatable).
        #[arg(long = "dev", required = true)]
        dev: Vec<String>,
        /// Turn it off.
        #[arg(long, conflicts_with = "on")]
        off: bool,
        /// Turn it on.
        #[arg(long)]
        on: bool,
    },
    /// Try to bind IP:PORT (TCP and UDP; IP 0.0.0.0 unless given) and report what
    /// bind() answered; sends nothing.
    Bind {
        #[arg(long)]
        port: u16,
        /// The address to bind (`::` or an IPv6 address: an AF_INET6 socket).
        #[arg(long, default_value = "0.0.0.0")]
        ip: IpAddr,
    },
    /// Hold sockets open, each blocked in recv(), and report as JSON lines what happens
    /// to them (answers, errors with their time, reconnects); commands on stdin
    /// (`query`, `quit`). See tests/src/probe/hold.rs.
    Hold {
        /// A connected UDP socket to this target (repeatable).
        #[arg(long, value_name = "IP:PORT")]
        udp: Vec<SocketAddr>,
        /// An unconnected UDP socket sending to this target (repeatable).
        #[arg(long = "udp-sendto", value_name = "IP:PORT")]
        udp_sendto: Vec<SocketAddr>,
        /// A UDP socket connected to FIRST, then connected again to THEN (repeatable).
        #[arg(long = "udp-moved", value_name = "FIRST,THEN", value_parser = hold::parse_moved)]
        udp_moved: Vec<(SocketAddr, SocketAddr)>,
        /// A TCP connection to this target (repeatable).
        #[arg(long, value_name = "IP:PORT")]
        tcp: Vec<SocketAddr>,
        /// Open the whole list this many times.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Send the first query but do not wait for its answer (targets that do not
        /// answer).
        #[arg(long = "no-reply")]
        no_reply: bool,
        /// After an error, open a new socket to the same target and query it.
        #[arg(long)]
        reconnect: bool,
        /// connect() and first-answer timeout, in milliseconds.
        #[arg(long = "timeout-ms", default_value_t = 2000)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve {
            id,
            tcp,
            udp,
            report_peer,
        } => serve(&id, &tcp, &udp, report_peer),
        Cmd::Tcp {
            to,
            count,
            duration_ms,
            interval_ms,
            timeout_ms,
            echo,
            bind,
            source_port,
            parallel,
            hold,
        } => ensure_isolated(&to).and_then(|()| {
            let opts = TcpOpts {
                count,
                duration_ms,
                interval_ms,
                timeout_ms,
                echo,
                bind,
                source_port,
                parallel,
                hold,
            };
            opts.check()?;
            let (report, seen) = tcp_client_ext(&to, &opts);
            print_json(&with_seen_from(&report, &seen)?)
        }),
        Cmd::Udp {
            to,
            also,
            sockets,
            count,
            connected,
            timeout_ms,
            bind,
            duration_ms,
            interval_ms,
        } => also
            .iter()
            .try_for_each(ensure_isolated)
            .and_then(|()| ensure_isolated(&to))
            .and_then(|()| {
                if connected && !also.is_empty() {
                    bail!("--also needs unconnected sockets");
                }
                let targets: Vec<SocketAddr> = std::iter::once(to).chain(also).collect();
                let started = Instant::now();
                let (mut report, mut seen) =
                    udp_client_ext(&targets, sockets, count, connected, timeout_ms, bind);
                if let Some(duration) = duration_ms.map(Duration::from_millis) {
                    while started.elapsed() < duration {
                        std::thread::sleep(Duration::from_millis(interval_ms));
                        let (more, more_seen) =
                            udp_client_ext(&targets, sockets, count, connected, timeout_ms, bind);
                        report.absorb(more);
                        for (id, peers) in more_seen {
                            seen.entry(id).or_default().extend(peers);
                        }
                    }
                }
                print_json(&with_seen_from(&report, &seen)?)
            }),
        Cmd::Transfer {
            to,
            bytes,
            seed,
            bind,
            timeout_ms,
        } => ensure_isolated(&to)
            .and_then(|()| print_json(&transfer(&to, bytes, seed, bind, timeout_ms))),
        Cmd::Bind { port, ip } => {
            let answer = |r: std::io::Result<()>| match r {
                Ok(()) => "ok".to_string(),
                Err(e) => error_name(&e),
            };
            let tcp = answer(std::net::TcpListener::bind((ip, port)).map(drop));
            let udp = answer(std::net::UdpSocket::bind((ip, port)).map(drop));
            print_json(&serde_json::json!({"port": port, "tcp": tcp, "udp": udp}))
        }
        Cmd::Hold {
            udp,
            udp_sendto,
            udp_moved,
            tcp,
            repeat,
            no_reply,
            reconnect,
            timeout_ms,
        } => {
            let sockets: Vec<(hold::Kind, SocketAddr)> =
                (udp.iter().map(|a| (hold::Kind::Udp, *a)))
                    .chain(udp_sendto.iter().map(|a| (hold::Kind::UdpSendto, *a)))
                    .chain(
                        udp_moved
                            .iter()
                            .map(|(first, then)| (hold::Kind::UdpMoved(*first), *then)),
                    )
                    .chain(tcp.iter().map(|a| (hold::Kind::Tcp, *a)))
                    .collect();
            sockets
                .iter()
                .flat_map(|(kind, to)| match kind {
                    hold::Kind::UdpMoved(first) => vec![*first, *to],
                    _ => vec![*to],
                })
                .try_for_each(|to| ensure_isolated(&to))
                .and_then(|()| {
                    hold::hold(&hold::Options {
                        sockets,
                        repeat,
                        reply: !no_reply,
                        reconnect,
                        timeout: Duration::from_millis(timeout_ms.max(1)),
                    })
                })
        }
        Cmd::TxCsum { dev, off, on } => {
            let set = if off { Some(false) } else { on.then_some(true) };
            tx_csum(&dev, set).and_then(|r| print_json(&r))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("socklb-probe: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------- safety

/// Refuses non-loopback targets from the host network namespace or from a namespace
/// with a default route.
fn ensure_isolated(to: &SocketAddr) -> Result<()> {
    if to.ip().is_loopback() {
        return Ok(());
    }
    // IPv6 tests use ULA addresses (fd00::/8) only; an IPv4-mapped address is IPv4.
    if let IpAddr::V6(v6) = to.ip()
        && v6.to_ipv4_mapped().is_none()
        && v6.octets()[0] != 0xfd
    {
        bail!("refusing {to}: IPv6 targets outside loopback must be ULA fd00::/8 addresses");
    }
    let own = std::fs::metadata("/proc/self/ns/net").context("cannot stat /proc/self/ns/net")?;
    let host = host_netns().context(
        "cannot compare with the host network namespace (neither /proc/1/ns/net nor \
         kthreadd's /proc/2/ns/net is readable); refusing",
    )?;
    if own.ino() == host.ino() && own.dev() == host.dev() {
        bail!(
            "refusing to send to {to} from the host network namespace: run inside a sandbox \
             namespace (no default route)"
        );
    }
    let routes =
        std::fs::read_to_string("/proc/net/route").context("cannot read /proc/net/route")?;
    if has_default_route(&routes) {
        bail!("refusing to send to {to}: this network namespace has a default route");
    }
    // Without IPv6 in the namespace the file is absent: nothing can go out that way.
    let routes6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    if has_default_route6(&routes6) {
        bail!("refusing to send to {to}: this network namespace has an IPv6 default route");
    }
    Ok(())
}

/// The host's (initial) network namespace: init's, or, where init's is not readable
/// (a supervisor may be pid 1 and undumpable), kthreadd's, whose kernel threads always
/// live in the initial namespace.
fn host_netns() -> Option<std::fs::Metadata> {
    std::fs::metadata("/proc/1/ns/net").ok().or_else(|| {
        let comm = std::fs::read_to_string("/proc/2/comm").ok()?;
        if comm.trim() != "kthreadd" {
            return None;
        }
        std::fs::metadata("/proc/2/ns/net").ok()
    })
}

/// Whether /proc/net/ipv6_route text has a ::/0 route other than the kernel's
/// unreachable one (on lo, which every namespace has and which forwards nothing).
fn has_default_route6(text: &str) -> bool {
    text.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 10 && f[0] == "00000000000000000000000000000000" && f[1] == "00" && f[9] != "lo"
    })
}

/// Whether /proc/net/route text has a 0.0.0.0/0 route.
fn has_default_route(text: &str) -> bool {
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000"
    })
}

// ---------------------------------------------------------------------------- serve

fn serve(id: &str, tcp: &[u16], udp: &[u16], report_peer: bool) -> Result<()> {
    if tcp.is_empty() && udp.is_empty() {
        bail!("serve needs at least one --tcp or --udp port");
    }
    // IPv4 on 0.0.0.0 and, where the namespace has IPv6, IPv6 on [::] (IPv6 only: an
    // IPv4 client is seen with its IPv4 address, never as ::ffff:a.b.c.d).
    let has_v6 = std::path::Path::new("/proc/net/if_inet6").exists();
    let mut listeners = Vec::new();
    for &p in tcp {
        let l = TcpListener::bind(("0.0.0.0", p)).with_context(|| format!("bind tcp {p}"))?;
        listeners.push(l);
        if has_v6 {
            listeners.push(bind_v6_only(libc::SOCK_STREAM, p).map(TcpListener::from)?);
        }
    }
    let mut udp_sockets = Vec::new();
    for &p in udp {
        let s = UdpSocket::bind(("0.0.0.0", p)).with_context(|| format!("bind udp {p}"))?;
        udp_sockets.push(s);
        if has_v6 {
            udp_sockets.push(bind_v6_only(libc::SOCK_DGRAM, p).map(UdpSocket::from)?);
        }
    }
    let mut threads = Vec::new();
    for l in listeners {
        let id = id.to_string();
        threads.push(std::thread::spawn(move || {
            tcp_accept_loop_with(&l, &id, report_peer);
        }));
    }
    for s in udp_sockets {
        let id = id.to_string();
        threads.push(std::thread::spawn(move || {
            udp_loop_with(&s, &id, report_peer)
        }));
    }
    print_json(&serde_json::json!({
        "ready": true,
        "id": id,
        "pid": std::process::id(),
        "tcp": tcp,
        "udp": udp,
    }))?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// A socket of `kind` bound to [::]:port with IPV6_V6ONLY (listening, for TCP).
fn bind_v6_only(kind: libc::c_int, port: u16) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET6, kind | libc::SOCK_CLOEXEC, 0) })
        .with_context(|| format!("socket for [::]:{port}"))?;
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to a c_int and its size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .context("IPV6_V6ONLY")?;
    // SAFETY: setsockopt with a pointer to a c_int and its size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .context("SO_REUSEADDR")?;
    let local = sockaddr_in6(Ipv6Addr::UNSPECIFIED, port);
    // SAFETY: bind with a valid sockaddr_in6 and its size.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const local).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    })
    .with_context(|| format!("bind [::]:{port}"))?;
    if kind == libc::SOCK_STREAM {
        // SAFETY: listen on a bound stream socket.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), 1024) })
            .with_context(|| format!("listen [::]:{port}"))?;
    }
    Ok(fd)
}

#[cfg(test)]
fn tcp_accept_loop(l: &TcpListener, id: &str) {
    tcp_accept_loop_with(l, id, false);
}

fn tcp_accept_loop_with(l: &TcpListener, id: &str, report_peer: bool) {
    loop {
        match l.accept() {
            Ok((stream, peer)) => {
                let line = if report_peer {
                    format!("{id} {peer}")
                } else {
                    id.to_string()
                };
                std::thread::spawn(move || {
                    let _ = tcp_serve_one(stream, &line);
                });
            }
            Err(e) => {
                eprintln!("socklb-probe serve {id}: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn tcp_serve_one(mut stream: TcpStream, id: &str) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    stream.write_all(format!("{id}\n").as_bytes())?;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}

#[cfg(test)]
fn udp_loop(s: &UdpSocket, id: &str) {
    udp_loop_with(s, id, false);
}

fn udp_loop_with(s: &UdpSocket, id: &str, report_peer: bool) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.recv_from(&mut buf) {
            Ok((_, from)) => {
                let reply = if report_peer {
                    format!("{id} {from}")
                } else {
                    id.to_string()
                };
                if let Err(e) = s.send_to(reply.as_bytes(), from) {
                    eprintln!("socklb-probe serve {id}: reply to {from}: {e}");
                }
            }
            Err(e) => {
                eprintln!("socklb-probe serve {id}: recv: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

// ---------------------------------------------------------------------------- clients

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn bump(map: &mut BTreeMap<String, u64>, key: String) {
    *map.entry(key).or_default() += 1;
}

struct Failure {
    step: &'static str,
    err: std::io::Error,
}

fn step<T>(step: &'static str, r: std::io::Result<T>) -> Result<T, Failure> {
    r.map_err(|err| Failure { step, err })
}

fn read_line_limited(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = Vec::new();
    r.take(4096).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    line.pop();
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Splits a server's answer "ID" or "ID PEER_IP:PORT" (`serve --report-peer`) into the
/// id and the peer address the server saw.
fn split_id(answer: &str) -> (String, Option<SocketAddr>) {
    if let Some((id, peer)) = answer.rsplit_once(' ')
        && let Ok(peer) = peer.parse::<SocketAddr>()
    {
        return (id.to_string(), Some(peer));
    }
    (answer.to_string(), None)
}

/// IP_BIND_ADDRESS_NO_PORT (linux/in.h): bind() only the address, choose the port at
/// connect() time from the whole 4-tuple (many connections from one bound address).
const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;

fn sockaddr_in(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = port.to_be();
    sa.sin_addr = libc::in_addr {
        s_addr: u32::from(ip).to_be(),
    };
    sa
}

fn sockaddr_in6(ip: Ipv6Addr, port: u16) -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = port.to_be();
    sa.sin6_addr = libc::in6_addr {
        s6_addr: ip.octets(),
    };
    sa
}

fn cvt(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// connect() with a timeout, from `bind` (and source port `port`) when given.
fn connect_from(
    bind: Option<IpAddr>,
    port: Option<u16>,
    to: &SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    if bind.is_none() && port.is_none() {
        return TcpStream::connect_timeout(to, timeout);
    }
    let bind = bind.unwrap_or(match to {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    });
    if bind.is_ipv4() != to.is_ipv4() {
        return Err(std::io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
    }
    let domain = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned by `stream` right away.
    let fd = cvt(unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: fd is a fresh socket nobody else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // A chosen port may still be in TIME_WAIT towards another destination: reuse it.
    // Without one, the port is chosen at connect() time from the whole 4-tuple.
    // IP_BIND_ADDRESS_NO_PORT is an IPPROTO_IP option on both families' sockets.
    let (level, option) = match port {
        Some(_) => (libc::SOL_SOCKET, libc::SO_REUSEADDR),
        None => (libc::IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT),
    };
    // SAFETY: setsockopt with a pointer to a c_int and its size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    let connected = match (bind, to) {
        (IpAddr::V4(bind), SocketAddr::V4(to4)) => {
            let local = sockaddr_in(bind, port.unwrap_or(0));
            let sa_len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            // SAFETY: bind with a valid sockaddr_in and its size.
            cvt(unsafe { libc::bind(fd, (&raw const local).cast(), sa_len) })?;
            let remote = sockaddr_in(*to4.ip(), to4.port());
            // SAFETY: connect with a valid sockaddr_in and its size.
            unsafe { libc::connect(fd, (&raw const remote).cast(), sa_len) }
        }
        (IpAddr::V6(bind), SocketAddr::V6(to6)) => {
            let local = sockaddr_in6(bind, port.unwrap_or(0));
            let sa_len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            // SAFETY: bind with a valid sockaddr_in6 and its size.
            cvt(unsafe { libc::bind(fd, (&raw const local).cast(), sa_len) })?;
            let remote = sockaddr_in6(*to6.ip(), to6.port());
            // SAFETY: connect with a valid sockaddr_in6 and its size.
            unsafe { libc::connect(fd, (&raw const remote).cast(), sa_len) }
        }
        _ => return Err(std::io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
    };
    if connected != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: poll on one valid pollfd.
        let n = cvt(unsafe { libc::poll(&raw mut pfd, 1, ms) })?;
        if n == 0 {
            return Err(std::io::Error::from_raw_os_error(libc::ETIMEDOUT));
        }
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// A successful connection.
struct Answer {
    id: String,
    peer: SocketAddr,
    seen_as: Option<SocketAddr>,
}

/// One connection: connect, getpeername, read the id line, (wait for the round's other
/// connections), (echo), close.
fn tcp_attempt(
    to: &SocketAddr,
    timeout: Duration,
    echo: bool,
    seq: u64,
    bind: Option<IpAddr>,
    source_port: Option<u16>,
    hold: Option<&Barrier>,
) -> Result<Answer, Failure> {
    let opened = (|| {
        let stream = step("connect", connect_from(bind, source_port, to, timeout))?;
        let peer = step("getpeername", stream.peer_addr())?;
        step("setsockopt", stream.set_read_timeout(Some(timeout)))?;
        step("setsockopt", stream.set_write_timeout(Some(timeout)))?;
        let mut reader = BufReader::new(step("dup", stream.try_clone())?);
        let line = step("read id", read_line_limited(&mut reader))?;
        Ok((stream, reader, peer, line))
    })();
    // Every worker reaches the barrier once per round, whatever happened.
    if let Some(b) = hold {
        b.wait();
    }
    let (stream, mut reader, peer, line) = opened?;
    let (id, seen_as) = split_id(&line);
    if echo {
        let msg = format!("echo {seq}");
        step("write", (&stream).write_all(format!("{msg}\n").as_bytes()))?;
        let back = step("read echo", read_line_limited(&mut reader))?;
        if back != msg {
            return Err(Failure {
                step: "echo",
                err: std::io::Error::other(format!("ECHO_MISMATCH: sent {msg:?}, got {back:?}")),
            });
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(Answer { id, peer, seen_as })
}

fn failure_name(f: &Failure) -> String {
    if f.step == "echo" {
        "ECHO_MISMATCH".into()
    } else {
        error_name(&f.err)
    }
}

/// Backend id -> client IP the backend saw -> count (`serve --report-peer`).
type SeenFrom = BTreeMap<String, BTreeMap<String, u64>>;

fn note_seen(seen: &mut SeenFrom, id: &str, seen_as: Option<SocketAddr>) {
    if let Some(a) = seen_as {
        bump(seen.entry(id.to_string()).or_default(), a.ip().to_string());
    }
}

/// The report as JSON, with `seen_from` added when any server reported its peer.
fn with_seen_from<T: serde::Serialize>(report: &T, seen: &SeenFrom) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(report)?;
    if !seen.is_empty()
        && let Some(o) = v.as_object_mut()
    {
        o.insert("seen_from".into(), serde_json::to_value(seen)?);
    }
    Ok(v)
}

/// What `tcp` does.
#[derive(Clone, Debug)]
struct TcpOpts {
    count: Option<u64>,
    duration_ms: Option<u64>,
    interval_ms: u64,
    timeout_ms: u64,
    echo: bool,
    bind: Option<IpAddr>,
    source_port: Option<u16>,
    parallel: u64,
    hold: bool,
}

impl TcpOpts {
    fn check(&self) -> Result<()> {
        if self.parallel == 0 || self.parallel > 4096 {
            bail!("--parallel must be 1..=4096");
        }
        if let Some(port) = self.source_port {
            let Some(count) = self.count else {
                bail!("--source-port needs --count");
            };
            if self.parallel != 1 || port == 0 || u64::from(port) + count > 65_536 {
                bail!("--source-port P needs one worker and P + --count <= 65536");
            }
        }
        if self.hold {
            let Some(count) = self.count else {
                bail!("--hold needs --count");
            };
            if self.duration_ms.is_some() || count % self.parallel != 0 {
                bail!(
                    "--hold needs a --count that is a multiple of --parallel, and no --duration-ms"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
fn tcp_client(
    to: &SocketAddr,
    count: Option<u64>,
    duration_ms: Option<u64>,
    interval_ms: u64,
    timeout_ms: u64,
    echo: bool,
) -> TcpReport {
    let opts = TcpOpts {
        count,
        duration_ms,
        interval_ms,
        timeout_ms,
        echo,
        bind: None,
        source_port: None,
        parallel: 1,
        hold: false,
    };
    tcp_client_ext(to, &opts).0
}

fn tcp_client_ext(to: &SocketAddr, opts: &TcpOpts) -> (TcpReport, SeenFrom) {
    let start = Instant::now();
    let deadline = opts.duration_ms.map(|d| start + Duration::from_millis(d));
    let total = opts
        .count
        .unwrap_or(if deadline.is_some() { u64::MAX } else { 1 });
    if opts.parallel <= 1 {
        let (mut r, seen) = tcp_worker(to, opts, total, deadline, None);
        r.elapsed_ms = ms(start.elapsed());
        return (r, seen);
    }
    let barrier = opts
        .hold
        .then(|| Arc::new(Barrier::new(opts.parallel as usize)));
    let workers: Vec<_> = (0..opts.parallel)
        .map(|i| {
            // An even share of the count (the first ones take the remainder).
            let share = if total == u64::MAX {
                u64::MAX
            } else {
                total / opts.parallel + u64::from(i < total % opts.parallel)
            };
            let to = *to;
            let opts = opts.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || tcp_worker(&to, &opts, share, deadline, barrier.as_deref()))
        })
        .collect();
    let mut r = TcpReport {
        to: to.to_string(),
        ..Default::default()
    };
    let mut seen = SeenFrom::new();
    for w in workers {
        let Ok((part, part_seen)) = w.join() else {
            bump(&mut r.errors, "WORKER_PANIC".into());
            continue;
        };
        r.attempts += part.attempts;
        r.ok += part.ok;
        for (k, n) in part.backends {
            *r.backends.entry(k).or_default() += n;
        }
        for (k, n) in part.peers {
            *r.peers.entry(k).or_default() += n;
        }
        for (k, n) in part.errors {
            *r.errors.entry(k).or_default() += n;
        }
        r.max_error_ms = r.max_error_ms.max(part.max_error_ms);
        if r.first_error.is_none() {
            r.first_error = part.first_error;
        }
        for (id, ips) in part_seen {
            let e = seen.entry(id).or_default();
            for (ip, n) in ips {
                *e.entry(ip).or_default() += n;
            }
        }
    }
    r.elapsed_ms = ms(start.elapsed());
    (r, seen)
}

/// Makes up to `max` connections in sequence (until `deadline`).
fn tcp_worker(
    to: &SocketAddr,
    opts: &TcpOpts,
    max: u64,
    deadline: Option<Instant>,
    hold: Option<&Barrier>,
) -> (TcpReport, SeenFrom) {
    let timeout = Duration::from_millis(opts.timeout_ms.max(1));
    let interval = Duration::from_millis(opts.interval_ms);
    let start = Instant::now();
    let mut r = TcpReport {
        to: to.to_string(),
        ..Default::default()
    };
    let mut seen = SeenFrom::new();
    while r.attempts < max {
        let t0 = Instant::now();
        let source_port = opts.source_port.map(|p| p + r.attempts as u16);
        let result = tcp_attempt(
            to,
            timeout,
            opts.echo,
            r.attempts,
            opts.bind,
            source_port,
            hold,
        );
        r.attempts += 1;
        match result {
            Ok(a) => {
                r.ok += 1;
                if let Some(port) = source_port {
                    r.by_source_port.insert(port.to_string(), a.id.clone());
                }
                note_seen(&mut seen, &a.id, a.seen_as);
                bump(&mut r.backends, a.id);
                bump(&mut r.peers, a.peer.to_string());
            }
            Err(f) => {
                r.max_error_ms = r.max_error_ms.max(ms(t0.elapsed()));
                bump(&mut r.errors, failure_name(&f));
                if r.first_error.is_none() {
                    r.first_error = Some(format!("{}: {}", f.step, f.err));
                }
            }
        }
        // Stop when the count is reached or the next attempt (after the pause) would
        // start past the deadline.
        if r.attempts >= max || deadline.is_some_and(|d| Instant::now() + interval >= d) {
            break;
        }
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
    r.elapsed_ms = ms(start.elapsed());
    (r, seen)
}

#[cfg(test)]
fn udp_client(
    to: &SocketAddr,
    sockets: u64,
    count: u64,
    connected: bool,
    timeout_ms: u64,
) -> UdpReport {
    udp_client_ext(&[*to], sockets, count, connected, timeout_ms, None).0
}

/// Each socket sends to every target in turn, `count` rounds.
fn udp_client_ext(
    targets: &[SocketAddr],
    sockets: u64,
    count: u64,
    connected: bool,
    timeout_ms: u64,
    bind: Option<IpAddr>,
) -> (UdpReport, SeenFrom) {
    let timeout = Duration::from_millis(timeout_ms.max(1));
    let start = Instant::now();
    let Some(to) = targets.first() else {
        return (UdpReport::default(), SeenFrom::new());
    };
    let mut r = UdpReport {
        to: to.to_string(),
        connected,
        ..Default::default()
    };
    let mut seen = SeenFrom::new();
    let record = |r: &mut UdpReport, f: Failure| {
        bump(&mut r.errors, error_name(&f.err));
        if r.first_error.is_none() {
            r.first_error = Some(format!("{}: {}", f.step, f.err));
        }
    };
    let bind_addr: SocketAddr = match (bind, to.is_ipv6()) {
        (Some(ip), _) => SocketAddr::from((ip, 0)),
        (None, true) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
        (None, false) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
    };
    let mut socks: Vec<Option<UdpSocket>> = Vec::new();
    for _ in 0..sockets {
        let setup = (|| -> Result<UdpSocket, Failure> {
            let s = step("bind", UdpSocket::bind(bind_addr))?;
            step("setsockopt", s.set_read_timeout(Some(timeout)))?;
            if connected {
                step("connect", s.connect(to))?;
            }
            Ok(s)
        })();
        match setup {
            Ok(s) => socks.push(Some(s)),
            Err(f) => {
                record(&mut r, f);
                socks.push(None);
            }
        }
        r.per_socket.extend(targets.iter().map(|_| Vec::new()));
    }
    let mut buf = [0u8; 64 * 1024];
    for seq in 0..count {
        for (i, s) in socks.iter().enumerate() {
            let Some(s) = s else { continue };
            for (t, target) in targets.iter().enumerate() {
                let payload = format!("probe {i} {seq}");
                let sent = if connected {
                    s.send(payload.as_bytes())
                } else {
                    s.send_to(payload.as_bytes(), target)
                };
                if let Err(err) = sent {
                    record(&mut r, Failure { step: "send", err });
                    continue;
                }
                r.sent += 1;
                let got = if connected {
                    s.recv(&mut buf).and_then(|n| Ok((n, s.peer_addr()?)))
                } else {
                    s.recv_from(&mut buf)
                };
                match got {
                    Ok((n, from)) => {
                        let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let (id, seen_as) = split_id(&answer);
                        r.replies += 1;
                        note_seen(&mut seen, &id, seen_as);
                        bump(&mut r.backends, id.clone());
                        bump(&mut r.reply_sources, from.to_string());
                        if from != *target {
                            r.wrong_source += 1;
                        }
                        r.per_socket[i * targets.len() + t].push(id);
                    }
                    Err(err) => record(&mut r, Failure { step: "recv", err }),
                }
            }
        }
    }
    r.elapsed_ms = ms(start.elapsed());
    (r, seen)
}

// ---------------------------------------------------------------------------- transfer

/// The deterministic stream of `transfer`: xorshift64* words, little-endian.
struct Stream {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Stream {
    fn new(seed: u64) -> Stream {
        Stream {
            // xorshift must not start at 0.
            state: seed ^ 0x9e37_79b9_7f4a_7c15,
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes()
    }

    fn fill(&mut self, mut buf: &mut [u8]) {
        // The rest of a word started by the previous call.
        while self.used < 8 && !buf.is_empty() {
            buf[0] = self.word[self.used];
            self.used += 1;
            buf = &mut buf[1..];
        }
        let mut words = buf.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_word());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            self.word = self.next_word();
            let n = tail.len();
            tail.copy_from_slice(&self.word[..n]);
            self.used = n;
        }
    }
}

/// Output of `transfer`.
#[derive(Debug, Default, serde::Serialize)]
struct TransferReport {
    to: String,
    /// Every byte came back, in order, and then the server closed.
    ok: bool,
    /// The backend id (first line of the server).
    id: Option<String>,
    /// The client address the server saw (`serve --report-peer`).
    seen_as: Option<String>,
    /// getpeername() of the connection.
    peer: Option<String>,
    seed: u64,
    /// Bytes requested.
    bytes: u64,
    /// Bytes written.
    sent: u64,
    /// Bytes read back (after the id line).
    received: u64,
    /// Offset of the first byte that came back different (none: all equal so far).
    mismatch_offset: Option<u64>,
    /// SHA-256 (hex) of the bytes read back.
    sha256: String,
    /// The first failure.
    error: Option<String>,
    elapsed_ms: f64,
    /// Payload throughput one way, in Mbit/s.
    mbit_per_s: f64,
}

fn transfer(
    to: &SocketAddr,
    bytes: u64,
    seed: u64,
    bind: Option<IpAddr>,
    timeout_ms: u64,
) -> TransferReport {
    let timeout = Duration::from_millis(timeout_ms.max(1));
    let start = Instant::now();
    let mut r = TransferReport {
        to: to.to_string(),
        seed,
        bytes,
        ..Default::default()
    };
    let mut sha = Sha256::new();
    if let Err(f) = transfer_inner(to, bytes, seed, bind, timeout, &mut r, &mut sha) {
        r.error = Some(format!("{}: {}", f.step, f.err));
    }
    r.sha256 = sha.finish_hex();
    r.ok =
        r.error.is_none() && r.mismatch_offset.is_none() && r.sent == bytes && r.received == bytes;
    let elapsed = start.elapsed();
    r.elapsed_ms = ms(elapsed);
    r.mbit_per_s = (r.received as f64) * 8.0 / 1e6 / elapsed.as_secs_f64().max(1e-9);
    r
}

fn transfer_inner(
    to: &SocketAddr,
    bytes: u64,
    seed: u64,
    bind: Option<IpAddr>,
    timeout: Duration,
    r: &mut TransferReport,
    sha: &mut Sha256,
) -> Result<(), Failure> {
    let stream = step("connect", connect_from(bind, None, to, timeout))?;
    r.peer = Some(step("getpeername", stream.peer_addr())?.to_string());
    step("setsockopt", stream.set_read_timeout(Some(timeout)))?;
    step("setsockopt", stream.set_write_timeout(Some(timeout)))?;
    let mut reader = BufReader::with_capacity(256 * 1024, step("dup", stream.try_clone())?);
    let line = step("read id", read_line_limited(&mut reader))?;
    let (id, seen_as) = split_id(&line);
    r.id = Some(id);
    r.seen_as = seen_as.map(|a| a.to_string());

    // The writer runs beside the reader: the echo needs both directions to flow.
    let mut writer = step("dup", stream.try_clone())?;
    let sender = std::thread::spawn(move || -> (u64, Option<std::io::Error>) {
        let mut source = Stream::new(seed);
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        while sent < bytes {
            let n = usize::try_from((bytes - sent).min(buf.len() as u64)).unwrap_or(buf.len());
            source.fill(&mut buf[..n]);
            if let Err(e) = writer.write_all(&buf[..n]) {
                return (sent, Some(e));
            }
            sent += n as u64;
        }
        let err = writer.shutdown(std::net::Shutdown::Write).err();
        (sent, err)
    });

    let mut expect = Stream::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let read_result = loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        let got = &buf[..n];
        sha.update(got);
        // Bytes past the stream's end are a mismatch too.
        let in_stream = usize::try_from(bytes.saturating_sub(r.received))
            .unwrap_or(n)
            .min(n);
        expect.fill(&mut want[..in_stream]);
        if r.mismatch_offset.is_none() {
            if got[..in_stream] != want[..in_stream]
                && let Some(i) = (0..in_stream).find(|&i| got[i] != want[i])
            {
                r.mismatch_offset = Some(r.received + i as u64);
            } else if in_stream < n {
                r.mismatch_offset = Some(r.received + in_stream as u64);
            }
        }
        r.received += n as u64;
    };
    // A read error ends the connection for the writer too.
    if read_result.is_err() {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    let (sent, write_err) = sender.join().unwrap_or((0, None));
    r.sent = sent;
    step("read", read_result)?;
    step("write", write_err.map_or(Ok(()), Err))?;
    if r.received < bytes {
        return Err(Failure {
            step: "read",
            err: std::io::ErrorKind::UnexpectedEof.into(),
        });
    }
    Ok(())
}

/// SHA-256 (FIPS 180-4), enough for a transfer digest without another dependency.
struct Sha256 {
    h: [u32; 8],
    block: [u8; 64],
    used: usize,
    len: u64,
}

const SHA256_K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

impl Sha256 {
    fn new() -> Sha256 {
        Sha256 {
            h: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            block: [0; 64],
            used: 0,
            len: 0,
        }
    }

    fn compress(h: &mut [u32; 8], block: &[u8]) {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = *h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(SHA256_K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        if self.used > 0 {
            let take = (64 - self.used).min(data.len());
            self.block[self.used..self.used + take].copy_from_slice(&data[..take]);
            self.used += take;
            data = &data[take..];
            if self.used < 64 {
                return;
            }
            Self::compress(&mut self.h, &self.block);
            self.used = 0;
        }
        let mut chunks = data.chunks_exact(64);
        for c in &mut chunks {
            Self::compress(&mut self.h, c);
        }
        let rest = chunks.remainder();
        self.block[..rest.len()].copy_from_slice(rest);
        self.used = rest.len();
    }

    fn finish_hex(mut self) -> String {
        let bits = self.len.wrapping_mul(8);
        let mut pad = vec![0x80u8];
        let fill = (64 + 56 - (self.used + 1) % 64) % 64;
        pad.extend(std::iter::repeat_n(0u8, fill));
        pad.extend(bits.to_be_bytes());
        let len = self.len;
        self.update(&pad);
        self.len = len;
        self.h.iter().map(|x| format!("{x:08x}")).collect()
    }
}

// ---------------------------------------------------------------------------- tx-csum

/// SIOCETHTOOL and the legacy TX checksum commands (linux/ethtool.h); the kernel maps
/// them onto the tx-checksum-* features, as `ethtool -K DEV tx off` does.
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// struct ifreq with the ifr_data member of its union (40 bytes on 64-bit Linux).
#[repr(C)]
struct IfreqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

fn ethtool_value(fd: libc::c_int, dev: &str, cmd: u32, data: u32) -> std::io::Result<u32> {
    if dev.is_empty() || dev.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut value = EthtoolValue { cmd, data };
    let mut ifr = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: &raw mut value,
        _pad: [0; 16],
    };
    ifr.name[..dev.len()].copy_from_slice(dev.as_bytes());
    // SAFETY: SIOCETHTOOL with an ifreq whose ifr_data points at a live ethtool_value.
    cvt(unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &raw mut ifr) })?;
    Ok(value.data)
}

/// Sets (when `set` is given) and reads back TX checksum offload of `devs`:
/// {"tx_csum": {dev: on}}.
fn tx_csum(devs: &[String], set: Option<bool>) -> Result<serde_json::Value> {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .or_else(|_| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .context("socket for SIOCETHTOOL")?;
    let fd = sock.as_raw_fd();
    let mut state = serde_json::Map::new();
    for dev in devs {
        if let Some(on) = set {
            ethtool_value(fd, dev, ETHTOOL_STXCSUM, u32::from(on))
                .with_context(|| format!("ETHTOOL_STXCSUM {dev}"))?;
        }
        let now = ethtool_value(fd, dev, ETHTOOL_GTXCSUM, 0)
            .with_context(|| format!("ETHTOOL_GTXCSUM {dev}"))?;
        if set.is_some_and(|on| (now != 0) != on) {
            bail!(
                "{dev}: tx checksumming still {}",
                if now != 0 { "on" } else { "off" }
            );
        }
        state.insert(dev.clone(), serde_json::Value::Bool(now != 0));
    }
    Ok(serde_json::json!({ "tx_csum": state }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn default_route_detection() {
        let none = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    br0\t0000F40A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert!(!has_default_route(none));
        let with = format!("{none}eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n");
        assert!(has_default_route(&with));
    }

    #[test]
    fn loopback_is_always_allowed() {
        assert!(ensure_isolated(&"127.0.0.1:9".parse().unwrap()).is_ok());
    }

    #[test]
    fn serve_and_clients_on_loopback() {
        // Loopback only: a server thread on an ephemeral port, then both clients.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_to = l.local_addr().unwrap();
        std::thread::spawn(move || tcp_accept_loop(&l, "t1"));
        let r = tcp_client(&tcp_to, Some(3), None, 0, 1000, true);
        assert_eq!((r.attempts, r.ok), (3, 3), "{r:?}");
        assert_eq!(r.backends["t1"], 3);
        assert_eq!(r.peers[&tcp_to.to_string()], 3);

        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_to = u.local_addr().unwrap();
        std::thread::spawn(move || udp_loop(&u, "u1"));
        for connected in [false, true] {
            let r = udp_client(&udp_to, 2, 3, connected, 1000);
            assert_eq!((r.sent, r.replies), (6, 6), "{r:?}");
            assert_eq!(r.per_socket, vec![vec!["u1".to_string(); 3]; 2]);
            assert_eq!(r.reply_sources[&udp_to.to_string()], 6);
        }
    }

    #[test]
    fn duration_mode_is_bounded_by_interval_and_count() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        std::thread::spawn(move || tcp_accept_loop(&l, "d"));
        // Each round sleeps 10 ms, so at most 100 / 10 + 1 rounds fit in 100 ms.
        let r = tcp_client(&to, None, Some(100), 10, 1000, false);
        assert!((1..=11).contains(&r.attempts), "{r:?}");
        assert_eq!(r.ok, r.attempts);
        // With a count too, whichever ends first.
        let r = tcp_client(&to, Some(3), Some(60_000), 0, 1000, false);
        assert_eq!(r.attempts, 3);
    }

    #[test]
    fn refused_connections_are_counted_by_errno_name() {
        // Bind then drop to get a loopback port nobody listens on.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let r = tcp_client(&port, Some(2), None, 0, 500, false);
        assert_eq!((r.attempts, r.ok), (2, 0));
        assert_eq!(r.error("ECONNREFUSED"), 2, "{r:?}");
        assert!(r.first_error.as_deref().unwrap().starts_with("connect:"));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["errors"]["ECONNREFUSED"], 2);
    }

    #[test]
    fn sha256_known_answers() {
        let hex = |data: &[u8], split: usize| {
            let mut h = Sha256::new();
            h.update(&data[..split]);
            h.update(&data[split..]);
            h.finish_hex()
        };
        assert_eq!(
            hex(b"", 0),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(b"abc", 1),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let two_blocks = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        for split in [0, 1, 55, 56] {
            assert_eq!(
                hex(two_blocks, split),
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
            );
        }
        let million = vec![b'a'; 1_000_000];
        assert_eq!(
            hex(&million, 333_333),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

    #[test]
    fn the_stream_is_deterministic_whatever_the_chunking() {
        let mut a = Stream::new(7);
        let mut whole = vec![0u8; 1000];
        a.fill(&mut whole);
        let mut b = Stream::new(7);
        let mut parts = vec![0u8; 1000];
        for chunk in parts.chunks_mut(13) {
            b.fill(chunk);
        }
        assert_eq!(whole, parts);
        let mut c = Stream::new(8);
        let mut other = vec![0u8; 1000];
        c.fill(&mut other);
        assert_ne!(whole, other);
    }

    #[test]
    fn ids_with_and_without_the_peer() {
        assert_eq!(split_id("pod-a"), ("pod-a".to_string(), None));
        assert_eq!(
            split_id("pod-10.244.1.10 192.0.2.11:40000"),
            (
                "pod-10.244.1.10".to_string(),
                Some("192.0.2.11:40000".parse().unwrap())
            )
        );
        assert_eq!(split_id("a b c"), ("a b c".to_string(), None));
    }

    #[test]
    fn report_peer_bind_parallel_hold_and_transfer_on_loopback() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        std::thread::spawn(move || tcp_accept_loop_with(&l, "p", true));
        let opts = TcpOpts {
            count: Some(40),
            duration_ms: None,
            interval_ms: 0,
            timeout_ms: 2000,
            echo: true,
            bind: Some(Ipv4Addr::new(127, 0, 0, 2).into()),
            source_port: None,
            parallel: 20,
            hold: true,
        };
        opts.check().unwrap();
        // Chosen source ports: the n-th connection from port P + n, reported per port
        // (the server saw those ports).
        let ports = TcpOpts {
            count: Some(5),
            bind: Some(Ipv4Addr::new(127, 0, 0, 3).into()),
            source_port: Some(45_000),
            parallel: 1,
            hold: false,
            ..opts.clone()
        };
        ports.check().unwrap();
        let (r, seen) = tcp_client_ext(&to, &ports);
        assert_eq!((r.attempts, r.ok), (5, 5), "{r:?}");
        let by_port: Vec<(&str, &str)> = r
            .by_source_port
            .iter()
            .map(|(p, id)| (p.as_str(), id.as_str()))
            .collect();
        assert_eq!(
            by_port,
            [
                ("45000", "p"),
                ("45001", "p"),
                ("45002", "p"),
                ("45003", "p"),
                ("45004", "p")
            ]
        );
        assert_eq!(seen["p"]["127.0.0.3"], 5, "{seen:?}");
        assert!(
            TcpOpts {
                parallel: 2,
                ..ports.clone()
            }
            .check()
            .is_err(),
            "one worker only"
        );
        let (r, seen) = tcp_client_ext(&to, &opts);
        assert_eq!((r.attempts, r.ok), (40, 40), "{r:?}");
        assert_eq!(r.backends["p"], 40);
        assert_eq!(seen["p"]["127.0.0.2"], 40, "{seen:?}");
        let v = with_seen_from(&r, &seen).unwrap();
        assert_eq!(v["seen_from"]["p"]["127.0.0.2"], 40);
        assert!(
            TcpOpts {
                count: Some(30),
                ..opts.clone()
            }
            .check()
            .is_err()
        );

        let t = transfer(
            &to,
            1_000_003,
            5,
            Some(Ipv4Addr::new(127, 0, 0, 3).into()),
            5000,
        );
        assert!(t.ok, "{t:?}");
        assert_eq!(
            (t.sent, t.received, t.mismatch_offset),
            (1_000_003, 1_000_003, None)
        );
        assert_eq!(t.id.as_deref(), Some("p"));
        assert_eq!(
            t.seen_as.as_deref().map(|s| s.starts_with("127.0.0.3:")),
            Some(true)
        );
        let mut expected = vec![0u8; 1_000_003];
        Stream::new(5).fill(&mut expected);
        let mut h = Sha256::new();
        h.update(&expected);
        assert_eq!(t.sha256, h.finish_hex());

        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_to = u.local_addr().unwrap();
        std::thread::spawn(move || udp_loop_with(&u, "q", true));
        let (r, seen) = udp_client_ext(
            &[udp_to],
            3,
            2,
            false,
            1000,
            Some(Ipv4Addr::new(127, 0, 0, 4).into()),
        );
        assert_eq!(r.replies, 6, "{r:?}");
        assert_eq!(r.backends["q"], 6);
        assert_eq!(seen["q"]["127.0.0.4"], 6);
    }

    #[test]
    fn a_transfer_to_a_server_that_does_not_echo_fails_with_the_offset() {
        // A server that sends its id and then garbage instead of the echo.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"bad\n").unwrap();
            let mut buf = [0u8; 4096];
            let mut first = true;
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if first {
                    buf[10] ^= 0xff;
                    first = false;
                }
                s.write_all(&buf[..n]).unwrap();
            }
        });
        let t = transfer(&to, 100_000, 1, None, 5000);
        assert!(!t.ok);
        assert_eq!(t.mismatch_offset, Some(10), "{t:?}");
    }
}
