//! `socklb-probe hold`: long-lived sockets that wait for what happens to them, as a
//! connected DNS resolver does: each socket has a thread blocked in recv()/read().
//!
//! - `--udp IP:PORT`: a connected UDP socket (connect, send/recv);
//! - `--udp-sendto IP:PORT`: an unconnected one (sendto/recvfrom), same local port
//!   for its whole life;
//! - `--udp-moved FIRST,THEN`: a UDP socket connected to FIRST and then connected
//!   again to THEN, its target (a resolver switching servers);
//! - `--tcp IP:PORT`: a TCP connection (the server's id line is its backend; a
//!   query's answer is the server's echo, reported as a reply with backend "hold");
//! - `--repeat N`: the whole list N times. Indexes count in that order: every
//!   `--udp`, then every `--udp-sendto`, every `--udp-moved`, every `--tcp`, N times
//!   over.
//!
//! Each socket sends one query at start and waits for the answer to learn its backend
//! (`--no-reply`: sends it and does not wait, for targets that do not answer). Then
//! it prints one line `{"event":"ready","sockets":[{index,kind,to,local,backend,error}]}`
//! and from then on one JSON line per thing that happens, as it happens:
//! - `{"event":"reply","index":I,"backend":ID,"from":ADDR}`
//! - `{"event":"error","index":I,"error":"ECONNABORTED","mono_ns":T}`: a blocked
//!   receive failed (T: CLOCK_MONOTONIC when it returned, comparable across
//!   processes); with `--reconnect` a new socket then connects to the same target and
//!   sends a query (its answer is a `reply` event), and a
//!   `{"event":"reconnected","index":I,"local":ADDR,"error":..}` line says how that went;
//! - `{"event":"eof","index":I}`: a TCP peer closed.
//!
//! Commands on stdin, one per line: `query` (every socket sends one query now; prints
//! `{"event":"queried","sockets":[{index,local,error}]}`), `quit` or end of input (prints
//! `{"event":"done"}` and exits 0).
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::{Value, json};
use socklb_tests::report::error_name;

/// What kind of socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Udp,
    UdpSendto,
    /// Connected to this address first, then to the target.
    UdpMoved(SocketAddr),
    Tcp,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Udp => "udp",
            Kind::UdpSendto => "udp-sendto",
            Kind::UdpMoved(_) => "udp-moved",
            Kind::Tcp => "tcp",
        }
    }
}

/// `FIRST,THEN` of `--udp-moved`.
pub fn parse_moved(s: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let (first, then) = s.split_once(',').ok_or("expected FIRST,THEN")?;
    let parse = |a: &str| a.parse::<SocketAddr>().map_err(|e| format!("{a}: {e}"));
    Ok((parse(first)?, parse(then)?))
}

/// How `hold` runs.
pub struct Options {
    pub sockets: Vec<(Kind, SocketAddr)>,
    pub repeat: usize,
    pub reply: bool,
    pub reconnect: bool,
    pub timeout: Duration,
}

/// One held socket. The reader thread owns a clone of it; the main thread sends.
enum Sock {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

struct Held {
    kind: Kind,
    to: SocketAddr,
    sock: Mutex<Sock>,
}

/// Where events go: a printer thread writes them out in order, at a low priority, so
/// that a socket's thread only takes the time and hands the event over (the printing
/// and whoever reads it do not delay the other sockets' threads).
type Out = mpsc::Sender<Value>;

fn emit(out: &Out, v: &Value) {
    let _ = out.send(v.clone());
}

/// The printer: one JSON line per event, flushed at once, until the `done` event.
fn printer(rx: mpsc::Receiver<Value>) {
    // SAFETY: plain syscalls on this thread's own id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
    let stdout = std::io::stdout();
    while let Ok(v) = rx.recv() {
        let mut o = stdout.lock();
        let _ = writeln!(o, "{v}");
        let _ = o.flush();
        if v["event"] == "done" {
            return;
        }
    }
}

/// CLOCK_MONOTONIC in ns (what the benchmark compares with its own clock reads).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

const QUERY: &[u8] = b"hold\n";

/// The unspecified address of `to`'s family, port 0: a UDP socket of that family.
fn any_of(to: SocketAddr) -> &'static str {
    if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
}

fn open(kind: Kind, to: SocketAddr, timeout: Duration) -> std::io::Result<Sock> {
    Ok(match kind {
        Kind::Udp => {
            let s = UdpSocket::bind(any_of(to))?;
            s.connect(to)?;
            Sock::Udp(s)
        }
        Kind::UdpSendto => Sock::Udp(UdpSocket::bind(any_of(to))?),
        Kind::UdpMoved(first) => {
            let s = UdpSocket::bind(any_of(first))?;
            s.connect(first)?;
            s.connect(to)?;
            Sock::Udp(s)
        }
        Kind::Tcp => {
            let s = TcpStream::connect_timeout(&to, timeout)?;
            let _ = s.set_nodelay(true);
            Sock::Tcp(s)
        }
    })
}

fn send_query(h: &Held) -> std::io::Result<()> {
    let sock = h
        .sock
        .lock()
        .map_err(|_| std::io::Error::other("poisoned"))?;
    match (&*sock, h.kind) {
        (Sock::Udp(s), Kind::UdpSendto) => s.send_to(QUERY, h.to).map(drop),
        (Sock::Udp(s), _) => s.send(QUERY).map(drop),
        (Sock::Tcp(s), _) => (&*s).write_all(QUERY),
    }
}

fn local(h: &Held) -> Option<String> {
    let sock = h.sock.lock().ok()?;
    match &*sock {
        Sock::Udp(s) => s.local_addr().ok(),
        Sock::Tcp(s) => s.local_addr().ok(),
    }
    .map(|a| a.to_string())
}

/// The first answer of a new socket (with a timeout), before its reader starts.
fn first_answer(sock: &Sock, timeout: Duration) -> std::io::Result<String> {
    let mut buf = [0u8; 2048];
    match sock {
        Sock::Udp(s) => {
            s.set_read_timeout(Some(timeout))?;
            let (n, _) = s.recv_from(&mut buf)?;
            s.set_read_timeout(None)?;
            Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
        }
        Sock::Tcp(s) => {
            s.set_read_timeout(Some(timeout))?;
            // The server's id line (before any query).
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while line.len() < 1024 {
                let n = (&*s).read(&mut byte)?;
                if n == 0 || byte[0] == b'\n' {
                    break;
                }
                line.push(byte[0]);
            }
            s.set_read_timeout(None)?;
            Ok(String::from_utf8_lossy(&line).into_owned())
        }
    }
}

pub fn hold(opts: &Options) -> Result<()> {
    if opts.sockets.is_empty() {
        bail!("hold needs at least one --udp, --udp-sendto or --tcp socket");
    }
    let (out, events) = mpsc::channel::<Value>();
    let printer = std::thread::spawn(move || printer(events));
    let mut held: Vec<Arc<Held>> = Vec::new();
    let mut ready = Vec::new();
    for _ in 0..opts.repeat.max(1) {
        for (kind, to) in &opts.sockets {
            let index = held.len();
            let opened = open(*kind, *to, opts.timeout);
            let (sock, mut error) = match opened {
                Ok(s) => (s, None),
                Err(e) => {
                    ready.push(
                        json!({"index": index, "kind": kind.name(), "to": to.to_string(),
                        "local": null, "backend": null, "error": error_name(&e)}),
                    );
                    continue;
                }
            };
            let h = Arc::new(Held {
                kind: *kind,
                to: *to,
                sock: Mutex::new(sock),
            });
            let mut backend = None;
            // TCP: the server speaks first; UDP: one query.
            if *kind != Kind::Tcp
                && let Err(e) = send_query(&h)
            {
                error = Some(error_name(&e));
            }
            if opts.reply && error.is_none() {
                let answer = h
                    .sock
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))
                    .and_then(|s| Ok(first_answer(&s, opts.timeout)?));
                match answer {
                    Ok(id) => backend = Some(id),
                    Err(e) => error = Some(format!("{e:#}")),
                }
            }
            ready.push(
                json!({"index": index, "kind": kind.name(), "to": to.to_string(),
                "local": local(&h), "backend": backend, "error": error}),
            );
            held.push(h);
        }
    }
    emit(&out, &json!({"event": "ready", "sockets": ready}));
    for (index, h) in held.iter().enumerate() {
        let (h, out, reconnect, timeout) = (h.clone(), out.clone(), opts.reconnect, opts.timeout);
        std::thread::spawn(move || reader(index, &h, &out, reconnect, timeout));
    }
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "query" => {
                let sockets: Vec<Value> = held
                    .iter()
                    .enumerate()
                    .map(|(index, h)| {
                        let error = send_query(h).err().map(|e| error_name(&e));
                        json!({"index": index, "local": local(h), "error": error})
                    })
                    .collect();
                emit(&out, &json!({"event": "queried", "sockets": sockets}));
            }
            "quit" => break,
            "" => {}
            other => emit(&out, &json!({"event": "unknown-command", "command": other})),
        }
    }
    emit(&out, &json!({"event": "done"}));
    let _ = printer.join();
    Ok(())
}

/// Blocks in recv()/read() on its own handle of the socket, reporting each answer or
/// error as it happens.
fn reader(index: usize, h: &Held, out: &Out, reconnect: bool, timeout: Duration) {
    let mut buf = [0u8; 2048];
    loop {
        // A handle of its own: the main thread may send meanwhile (and, after a
        // reconnect, the socket is a new one).
        let handle = match h.sock.lock().map(|s| match &*s {
            Sock::Udp(u) => u.try_clone().map(Sock::Udp),
            Sock::Tcp(t) => t.try_clone().map(Sock::Tcp),
        }) {
            Ok(Ok(handle)) => handle,
            _ => return,
        };
        let got = match &handle {
            Sock::Udp(s) if h.kind == Kind::UdpSendto => {
                s.recv_from(&mut buf).map(|(n, from)| (n, Some(from)))
            }
            Sock::Udp(s) => s.recv(&mut buf).map(|n| (n, s.peer_addr().ok())),
            Sock::Tcp(s) => (&*s).read(&mut buf).map(|n| (n, s.peer_addr().ok())),
        };
        match got {
            Ok((0, _)) if matches!(handle, Sock::Tcp(_)) => {
                emit(out, &json!({"event": "eof", "index": index}));
                return;
            }
            Ok((n, from)) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                for answer in text.lines().filter(|l| !l.is_empty()) {
                    emit(
                        out,
                        &json!({"event": "reply", "index": index, "backend": answer,
                        "from": from.map(|f| f.to_string())}),
                    );
                }
            }
            Err(e) => {
                let at = monotonic_ns();
                emit(
                    out,
                    &json!({"event": "error", "index": index, "error": error_name(&e), "mono_ns": at}),
                );
                if !reconnect {
                    return;
                }
                let renewed = open(h.kind, h.to, timeout);
                let error = match renewed {
                    Ok(sock) => {
                        if let Ok(mut slot) = h.sock.lock() {
                            *slot = sock;
                        }
                        if h.kind == Kind::Tcp {
                            None // the server speaks first: its id line is the reply
                        } else {
                            send_query(h).err().map(|e| error_name(&e))
                        }
                    }
                    Err(e) => Some(error_name(&e)),
                };
                emit(
                    out,
                    &json!({"event": "reconnected", "index": index, "local": local(h), "error": error}),
                );
                if error.is_some() {
                    return;
                }
            }
        }
    }
}
