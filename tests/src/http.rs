//! A minimal HTTP/1.1 client for the agent's own endpoints (/healthz, /readyz,
//! /metrics) on loopback.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A loopback address with a port that was free a moment ago.
pub fn free_loopback_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// The whole response (status line, headers, body) to `GET path`, or None when the
/// server cannot be reached.
pub fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// The status code of `GET path`.
pub fn status(addr: SocketAddr, path: &str) -> Option<u16> {
    get(addr, path)?.split_whitespace().nth(1)?.parse().ok()
}

/// The body of `GET path`.
pub fn body(addr: SocketAddr, path: &str) -> Option<String> {
    get(addr, path)?
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
}

/// The value of one sample of a Prometheus/OpenMetrics text, e.g.
/// `sample(text, "socklb_map_capacity{map=\"lb4_svc_v1\"}")`.
pub fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name_and_labels)?;
        rest.strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}
