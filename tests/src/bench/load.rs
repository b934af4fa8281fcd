//! The benchmark's own backend server and load generator.
//!
//! Protocol: the client sends a request of `size` bytes whose first byte says what to do
//! next (`S`: answer, then the server closes: a short connection; `L`: answer and keep
//! the connection). The server answers with the same number of bytes, the first four
//! replaced by its own IPv4 address, so the client can tell which backend answered. A
//! UDP datagram gets the same answer. The server closes short connections first, so
//! TIME_WAIT stays on the server side and the client's ephemeral ports are free again
//! at once (as with an HTTP/1.0 server).
//!
//! The client is closed-loop: `threads` threads, each doing one operation after the
//! other for `warmup + duration`, recording the latency of every operation that
//! finished inside the measured window:
//! - `tcp-short`: socket, connect, write the request, read the answer, read the end of
//!   stream, close (the latency of the whole connection);
//! - `tcp-long`: one connection per thread; each operation is one request and answer;
//! - `udp`: DNS-like: a new unconnected socket per query, sendto, recvfrom, close.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use socklb_bench_results::{Kind, Latency, LoadReport};
use socklb_tests::report::error_name;

use super::stats::percentile_u32;

// ----------------------------------------------------------------------------- server

/// Serves TCP and UDP until killed. Prints `{"ready":true,...}` once both are bound.
pub fn serve(ip: Ipv4Addr, tcp: u16, udp: u16, workers: usize) -> Result<()> {
    let listener =
        TcpListener::bind(("0.0.0.0", tcp)).with_context(|| format!("bind tcp {tcp}"))?;
    let socket = UdpSocket::bind(("0.0.0.0", udp)).with_context(|| format!("bind udp {udp}"))?;
    let mut threads = Vec::new();
    for _ in 0..workers.max(1) {
        let l = listener.try_clone()?;
        threads.push(std::thread::spawn(move || {
            loop {
                match l.accept() {
                    Ok((s, _)) => {
                        let _ = serve_connection(s, ip);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        }));
    }
    threads.push(std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        loop {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                if n >= 4 {
                    buf[..4].copy_from_slice(&ip.octets());
                }
                let _ = socket.send_to(&buf[..n], from);
            }
        }
    }));
    println!(
        "{}",
        serde_json::json!({"ready": true, "pid": std::process::id(), "ip": ip.to_string(), "tcp": tcp, "udp": udp})
    );
    std::io::stdout().flush()?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn serve_connection(mut s: TcpStream, ip: Ipv4Addr) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = [0u8; 2048];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let close = buf[0] == b'S';
        if n >= 4 {
            buf[..4].copy_from_slice(&ip.octets());
        }
        s.write_all(&buf[..n])?;
        if close {
            return Ok(()); // dropped: the server closes first
        }
    }
}

// ----------------------------------------------------------------------------- client

/// What `socklb-bench load` does.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub kind: Kind,
    /// Where to send: one address (a service) or several (direct: picked at random).
    pub targets: Vec<SocketAddrV4>,
    pub threads: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Request size in bytes (>= 4).
    pub size: usize,
    pub timeout: Duration,
}

#[derive(Default)]
struct ThreadResult {
    latencies_ns: Vec<u32>,
    ops: u64,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
    backends: BTreeMap<[u8; 4], u64>,
    wrong_source: u64,
}

impl ThreadResult {
    fn fail(&mut self, step: &str, e: &std::io::Error) {
        *self.errors.entry(error_name(e)).or_default() += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{step}: {e}"));
        }
    }
}

/// xorshift64*: cheap per-thread randomness for picking a direct target.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[(self.next() % v.len() as u64) as usize]
    }
}

/// A TCP socket with NODELAY and send/receive timeouts, connected to `to` (the
/// timeouts also bound the blocking connect).
fn tcp_connect(to: SocketAddrV4, timeout: Duration) -> std::io::Result<TcpStream> {
    // SAFETY: plain socket syscalls on a descriptor we own; it is wrapped in a
    // TcpStream (closed on drop) right after creation.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        let set = |level, name, val: *const libc::c_void, len| {
            if libc::setsockopt(fd, level, name, val, len) != 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        let tvlen = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
        set(
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&raw const one).cast(),
            4,
        )?;
        set(
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            tvlen,
        )?;
        set(
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            tvlen,
        )?;
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: to.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(to.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        if libc::connect(
            fd,
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

fn request(size: usize, mode: u8) -> Vec<u8> {
    let mut r = vec![b'x'; size.max(4)];
    r[0] = mode;
    r
}

fn backend_of(answer: &[u8]) -> [u8; 4] {
    let mut b = [0u8; 4];
    b.copy_from_slice(&answer[..4]);
    b
}

/// Runs the load and returns its report.
pub fn run(spec: &LoadSpec) -> Result<LoadReport> {
    if spec.targets.is_empty() {
        bail!("no target");
    }
    if spec.size < 4 || spec.size > 1024 {
        bail!("request size must be 4..=1024 bytes");
    }
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let mut handles = Vec::new();
    for t in 0..spec.threads.max(1) {
        let spec = spec.clone();
        let seed =
            0x9e37_79b9_7f4a_7c15u64 ^ (u64::from(std::process::id()) << 16) ^ (t as u64 + 1);
        handles.push(std::thread::spawn(move || {
            worker(&spec, Rng(seed), measure_from, end)
        }));
    }
    let mut all = ThreadResult::default();
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
        all.latencies_ns.extend(r.latencies_ns);
        all.ops += r.ops;
        for (k, v) in r.errors {
            *all.errors.entry(k).or_default() += v;
        }
        if all.first_error.is_none() {
            all.first_error = r.first_error;
        }
        for (k, v) in r.backends {
            *all.backends.entry(k).or_default() += v;
        }
        all.wrong_source += r.wrong_source;
    }
    all.latencies_ns.sort_unstable();
    let lat = &all.latencies_ns;
    let us = |ns: u32| f64::from(ns) / 1000.0;
    let mean = if lat.is_empty() {
        0.0
    } else {
        lat.iter().map(|&x| f64::from(x)).sum::<f64>() / lat.len() as f64 / 1000.0
    };
    let duration_s = spec.duration.as_secs_f64();
    Ok(LoadReport {
        kind: spec.kind,
        threads: spec.threads.max(1),
        duration_s,
        ops: all.ops,
        ops_per_s: all.ops as f64 / duration_s,
        errors: all.errors,
        first_error: all.first_error,
        latency_us: Latency {
            p50: us(percentile_u32(lat, 50.0)),
            p90: us(percentile_u32(lat, 90.0)),
            p99: us(percentile_u32(lat, 99.0)),
            p999: us(percentile_u32(lat, 99.9)),
            max: us(lat.last().copied().unwrap_or(0)),
            mean,
        },
        backends: all
            .backends
            .into_iter()
            .map(|(k, v)| (Ipv4Addr::from(k).to_string(), v))
            .collect(),
        wrong_source: all.wrong_source,
    })
}

fn worker(spec: &LoadSpec, mut rng: Rng, measure_from: Instant, end: Instant) -> ThreadResult {
    let mut r = ThreadResult {
        latencies_ns: Vec::with_capacity(1 << 16),
        ..Default::default()
    };
    let record = |r: &mut ThreadResult, t0: Instant, t1: Instant, backend: [u8; 4]| {
        *r.backends.entry(backend).or_default() += 1;
        if t0 >= measure_from && t1 <= end {
            r.ops += 1;
            r.latencies_ns
                .push(u32::try_from((t1 - t0).as_nanos()).unwrap_or(u32::MAX));
        }
    };
    match spec.kind {
        Kind::TcpShort => {
            let req = request(spec.size, b'S');
            let mut answer = vec![0u8; spec.size];
            let mut rest = [0u8; 16];
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let to = *rng.pick(&spec.targets);
                let mut s = match tcp_connect(to, spec.timeout) {
                    Ok(s) => s,
                    Err(e) => {
                        r.fail("connect", &e);
                        continue;
                    }
                };
                if let Err(e) = s.write_all(&req) {
                    r.fail("write", &e);
                    continue;
                }
                if let Err(e) = s.read_exact(&mut answer) {
                    r.fail("read", &e);
                    continue;
                }
                // The server closes: wait for the end of stream, then close.
                match s.read(&mut rest) {
                    Ok(0) => {}
                    Ok(_) => {
                        r.fail(
                            "read",
                            &std::io::Error::other("extra data after the answer"),
                        );
                        continue;
                    }
                    Err(e) => {
                        r.fail("read eof", &e);
                        continue;
                    }
                }
                drop(s);
                record(&mut r, t0, Instant::now(), backend_of(&answer));
            }
        }
        Kind::TcpLong => {
            let req = request(spec.size, b'L');
            let mut answer = vec![0u8; spec.size];
            let mut conn: Option<TcpStream> = None;
            loop {
                if Instant::now() >= end {
                    break;
                }
                let s = match conn.as_mut() {
                    Some(s) => s,
                    None => match tcp_connect(*rng.pick(&spec.targets), spec.timeout) {
                        Ok(s) => conn.insert(s),
                        Err(e) => {
                            r.fail("connect", &e);
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    },
                };
                let t0 = Instant::now();
                let done = s.write_all(&req).and_then(|()| s.read_exact(&mut answer));
                let t1 = Instant::now();
                match done {
                    Ok(()) => record(&mut r, t0, t1, backend_of(&answer)),
                    Err(e) => {
                        r.fail("request", &e);
                        conn = None;
                    }
                }
            }
        }
        Kind::Udp => {
            let req = request(spec.size, b'U');
            let mut answer = [0u8; 2048];
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let to = *rng.pick(&spec.targets);
                let result = (|| -> Result<(usize, SocketAddr), (&'static str, std::io::Error)> {
                    let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| ("bind", e))?;
                    s.set_read_timeout(Some(spec.timeout))
                        .map_err(|e| ("setsockopt", e))?;
                    s.send_to(&req, to).map_err(|e| ("sendto", e))?;
                    s.recv_from(&mut answer).map_err(|e| ("recvfrom", e))
                })();
                let t1 = Instant::now();
                match result {
                    Ok((n, from)) if n >= 4 => {
                        if from != SocketAddr::V4(to) {
                            r.wrong_source += 1;
                        }
                        record(&mut r, t0, t1, backend_of(&answer[..n]));
                    }
                    Ok(_) => r.fail("recvfrom", &std::io::Error::other("short answer")),
                    Err((step, e)) => r.fail(step, &e),
                }
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_kind_on_loopback() {
        // Loopback only: a server on two free ports of 127.0.0.1.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = l.local_addr().unwrap().port();
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp = u.local_addr().unwrap().port();
        let ip = Ipv4Addr::new(127, 0, 0, 1);
        std::thread::spawn(move || {
            loop {
                if let Ok((s, _)) = l.accept() {
                    std::thread::spawn(move || serve_connection(s, ip));
                }
            }
        });
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            loop {
                if let Ok((n, from)) = u.recv_from(&mut buf) {
                    buf[..4].copy_from_slice(&ip.octets());
                    let _ = u.send_to(&buf[..n], from);
                }
            }
        });
        for kind in Kind::ALL {
            let port = if kind == Kind::Udp { udp } else { tcp };
            let spec = LoadSpec {
                kind,
                targets: vec![SocketAddrV4::new(ip, port)],
                threads: 2,
                duration: Duration::from_millis(150),
                warmup: Duration::from_millis(20),
                size: 32,
                timeout: Duration::from_secs(1),
            };
            let r = run(&spec).unwrap();
            assert!(r.ops > 0, "{kind:?}: {r:?}");
            assert!(r.errors.is_empty(), "{kind:?}: {r:?}");
            assert_eq!(
                r.backends.keys().collect::<Vec<_>>(),
                vec!["127.0.0.1"],
                "{kind:?}"
            );
            assert!(r.latency_us.p50 > 0.0 && r.latency_us.p99 >= r.latency_us.p50);
            assert_eq!(r.wrong_source, 0);
        }
    }
}
