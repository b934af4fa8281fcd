//! socklb-probe: the sandbox's traffic tool, run inside its network namespaces.
//!
//! - `serve --id NAME [--tcp PORT]... [--udp PORT]...`: a backend. Binds 0.0.0.0; every
//!   TCP connection gets "NAME\n" and then an echo of what the client sends, every UDP
//!   datagram is answered with "NAME" to its sender. Prints one ready line (JSON) once
//!   every port is bound, and runs until SIGTERM.
//! - `tcp --to IP:PORT ...` and `udp --to IP:PORT ...`: clients. Print one JSON report
//!   (see `socklb_tests::report`) and exit 0 whatever happened to the attempts.
//!
//! Clients refuse to run in the host network namespace or in one with a default route
//! (unless the target is loopback): a packet whose translation failed must have nowhere
//! to go.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use socklb_tests::report::{TcpReport, UdpReport, error_name};

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
    },
    /// Send UDP datagrams from several sockets and report who answered.
    Udp {
        /// Target address.
        #[arg(long)]
        to: SocketAddr,
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve { id, tcp, udp } => serve(&id, &tcp, &udp),
        Cmd::Tcp {
            to,
            count,
            duration_ms,
            interval_ms,
            timeout_ms,
            echo,
        } => ensure_isolated(&to).and_then(|()| {
            print_json(&tcp_client(
                &to,
                count,
                duration_ms,
                interval_ms,
                timeout_ms,
                echo,
            ))
        }),
        Cmd::Udp {
            to,
            sockets,
            count,
            connected,
            timeout_ms,
        } => ensure_isolated(&to)
            .and_then(|()| print_json(&udp_client(&to, sockets, count, connected, timeout_ms))),
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
    if to.is_ipv6() {
        bail!("refusing {to}: outside loopback only IPv4 targets in sandbox namespaces");
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

/// Whether /proc/net/route text has a 0.0.0.0/0 route.
fn has_default_route(text: &str) -> bool {
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000"
    })
}

// ---------------------------------------------------------------------------- serve

fn serve(id: &str, tcp: &[u16], udp: &[u16]) -> Result<()> {
    if tcp.is_empty() && udp.is_empty() {
        bail!("serve needs at least one --tcp or --udp port");
    }
    let mut listeners = Vec::new();
    for &p in tcp {
        let l = TcpListener::bind(("0.0.0.0", p)).with_context(|| format!("bind tcp {p}"))?;
        listeners.push(l);
    }
    let mut udp_sockets = Vec::new();
    for &p in udp {
        let s = UdpSocket::bind(("0.0.0.0", p)).with_context(|| format!("bind udp {p}"))?;
        udp_sockets.push(s);
    }
    let mut threads = Vec::new();
    for l in listeners {
        let id = id.to_string();
        threads.push(std::thread::spawn(move || tcp_accept_loop(&l, &id)));
    }
    for s in udp_sockets {
        let id = id.to_string();
        threads.push(std::thread::spawn(move || udp_loop(&s, &id)));
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

fn tcp_accept_loop(l: &TcpListener, id: &str) {
    loop {
        match l.accept() {
            Ok((stream, _)) => {
                let id = id.to_string();
                std::thread::spawn(move || {
                    let _ = tcp_serve_one(stream, &id);
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

fn udp_loop(s: &UdpSocket, id: &str) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.recv_from(&mut buf) {
            Ok((_, from)) => {
                if let Err(e) = s.send_to(id.as_bytes(), from) {
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

/// One connection: connect, getpeername, read the id line, (echo), close.
fn tcp_attempt(
    to: &SocketAddr,
    timeout: Duration,
    echo: bool,
    seq: u64,
) -> Result<(String, SocketAddr), Failure> {
    let stream = step("connect", TcpStream::connect_timeout(to, timeout))?;
    let peer = step("getpeername", stream.peer_addr())?;
    step("setsockopt", stream.set_read_timeout(Some(timeout)))?;
    step("setsockopt", stream.set_write_timeout(Some(timeout)))?;
    let mut reader = BufReader::new(step("dup", stream.try_clone())?);
    let id = step("read id", read_line_limited(&mut reader))?;
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
    Ok((id, peer))
}

fn failure_name(f: &Failure) -> String {
    if f.step == "echo" {
        "ECHO_MISMATCH".into()
    } else {
        error_name(&f.err)
    }
}

fn tcp_client(
    to: &SocketAddr,
    count: Option<u64>,
    duration_ms: Option<u64>,
    interval_ms: u64,
    timeout_ms: u64,
    echo: bool,
) -> TcpReport {
    let timeout = Duration::from_millis(timeout_ms.max(1));
    let interval = Duration::from_millis(interval_ms);
    let start = Instant::now();
    let deadline = duration_ms.map(|d| start + Duration::from_millis(d));
    let max = count.unwrap_or(if deadline.is_some() { u64::MAX } else { 1 });
    let mut r = TcpReport {
        to: to.to_string(),
        ..Default::default()
    };
    while r.attempts < max {
        let t0 = Instant::now();
        let result = tcp_attempt(to, timeout, echo, r.attempts);
        r.attempts += 1;
        match result {
            Ok((id, peer)) => {
                r.ok += 1;
                bump(&mut r.backends, id);
                bump(&mut r.peers, peer.to_string());
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
    r
}

fn udp_client(
    to: &SocketAddr,
    sockets: u64,
    count: u64,
    connected: bool,
    timeout_ms: u64,
) -> UdpReport {
    let timeout = Duration::from_millis(timeout_ms.max(1));
    let start = Instant::now();
    let mut r = UdpReport {
        to: to.to_string(),
        connected,
        ..Default::default()
    };
    let record = |r: &mut UdpReport, f: Failure| {
        bump(&mut r.errors, error_name(&f.err));
        if r.first_error.is_none() {
            r.first_error = Some(format!("{}: {}", f.step, f.err));
        }
    };
    let bind_addr = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
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
        r.per_socket.push(Vec::new());
    }
    let mut buf = [0u8; 64 * 1024];
    for seq in 0..count {
        for (i, s) in socks.iter().enumerate() {
            let Some(s) = s else { continue };
            let payload = format!("probe {i} {seq}");
            let sent = if connected {
                s.send(payload.as_bytes())
            } else {
                s.send_to(payload.as_bytes(), to)
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
                    let id = String::from_utf8_lossy(&buf[..n]).into_owned();
                    r.replies += 1;
                    bump(&mut r.backends, id.clone());
                    bump(&mut r.reply_sources, from.to_string());
                    r.per_socket[i].push(id);
                }
                Err(err) => record(&mut r, Failure { step: "recv", err }),
            }
        }
    }
    r.elapsed_ms = ms(start.elapsed());
    r
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
}
