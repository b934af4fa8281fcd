//! The `socklb-probe` JSON reports (shared by the probe, which prints them, and the
//! tests, which parse them), its command lines, and errno names.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Output of `socklb-probe tcp`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpReport {
    /// The target (`IP:PORT`) as given.
    pub to: String,
    /// Connections tried.
    pub attempts: u64,
    /// Connections that connected and read a backend id.
    pub ok: u64,
    /// Backend id (the first line the server sent) -> connections.
    pub backends: BTreeMap<String, u64>,
    /// getpeername() result (`ip:port`) of connected sockets -> count.
    pub peers: BTreeMap<String, u64>,
    /// Failure name (errno name such as `ECONNREFUSED`, or `EOF`, `ECHO_MISMATCH`) -> count.
    pub errors: BTreeMap<String, u64>,
    /// The slowest failing attempt, in milliseconds (0 when none failed).
    pub max_error_ms: f64,
    /// The first failure, with the step that failed (`connect: ...`).
    pub first_error: Option<String>,
    /// Wall time of the whole run, in milliseconds.
    pub elapsed_ms: f64,
    /// With `--source-port`: source port -> backend id of its connection.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_source_port: BTreeMap<String, String>,
}

impl TcpReport {
    /// Count of one error name.
    pub fn error(&self, name: &str) -> u64 {
        self.errors.get(name).copied().unwrap_or(0)
    }

    /// All failures.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Output of `socklb-probe udp`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UdpReport {
    /// The target (`IP:PORT`) as given.
    pub to: String,
    /// Whether the sockets were connected (connect + send/recv).
    pub connected: bool,
    /// Datagrams sent successfully.
    pub sent: u64,
    /// Replies received.
    pub replies: u64,
    /// Backend id (the reply's payload) -> replies.
    pub backends: BTreeMap<String, u64>,
    /// Source address of replies (`ip:port`): what recvfrom() reported, or getpeername()
    /// for connected sockets -> count.
    pub reply_sources: BTreeMap<String, u64>,
    /// Per socket, the backend ids of its replies in order. With several targets
    /// (`--also`), one entry per (socket, target), socket-major: entry
    /// `socket * targets + target`.
    pub per_socket: Vec<Vec<String>>,
    /// Replies whose source was not the address the datagram was sent to (with
    /// several targets, a reply shown as coming from another service).
    pub wrong_source: u64,
    /// Failure name -> count (a failed connect counts once for its socket; a send
    /// failure or a reply that did not come within the timeout counts once each).
    pub errors: BTreeMap<String, u64>,
    /// The first failure, with the step that failed.
    pub first_error: Option<String>,
    /// Wall time of the whole run, in milliseconds.
    pub elapsed_ms: f64,
}

impl UdpReport {
    /// Count of one error name.
    pub fn error(&self, name: &str) -> u64 {
        self.errors.get(name).copied().unwrap_or(0)
    }

    /// All failures.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds another run's figures (a later round of the same probe).
    pub fn absorb(&mut self, other: UdpReport) {
        self.sent += other.sent;
        self.replies += other.replies;
        self.wrong_source += other.wrong_source;
        for (k, v) in other.backends {
            *self.backends.entry(k).or_default() += v;
        }
        for (k, v) in other.reply_sources {
            *self.reply_sources.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.per_socket.extend(other.per_socket);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.elapsed_ms += other.elapsed_ms;
    }

    /// Whether every socket got all its replies from a single backend.
    pub fn sockets_sticky(&self) -> bool {
        self.per_socket
            .iter()
            .all(|ids| ids.windows(2).all(|w| w[0] == w[1]))
    }
}

/// A `socklb-probe tcp` run.
#[derive(Clone, Debug, PartialEq)]
pub struct TcpProbe {
    pub to: SocketAddr,
    /// Number of connections (default 1 when no duration is set).
    pub count: Option<u64>,
    /// Keep connecting for this long (with `count`, whichever ends first).
    pub duration_ms: Option<u64>,
    /// Pause between connections.
    pub interval_ms: u64,
    /// connect and read timeout.
    pub timeout_ms: u64,
    /// After the id line, send a line and expect it echoed.
    pub echo: bool,
}

impl TcpProbe {
    pub fn new(to: SocketAddr) -> Self {
        Self {
            to,
            count: None,
            duration_ms: None,
            interval_ms: 0,
            timeout_ms: 1000,
            echo: false,
        }
    }
    pub fn count(mut self, n: u64) -> Self {
        self.count = Some(n);
        self
    }
    pub fn duration_ms(mut self, ms: u64) -> Self {
        self.duration_ms = Some(ms);
        self
    }
    pub fn interval_ms(mut self, ms: u64) -> Self {
        self.interval_ms = ms;
        self
    }
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = ms;
        self
    }
    pub fn echo(mut self, on: bool) -> Self {
        self.echo = on;
        self
    }

    /// The probe's command line arguments (after the program name).
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["tcp".to_string(), "--to".into(), self.to.to_string()];
        if let Some(n) = self.count {
            a.extend(["--count".into(), n.to_string()]);
        }
        if let Some(d) = self.duration_ms {
            a.extend(["--duration-ms".into(), d.to_string()]);
        }
        a.extend(["--interval-ms".into(), self.interval_ms.to_string()]);
        a.extend(["--timeout-ms".into(), self.timeout_ms.to_string()]);
        if self.echo {
            a.push("--echo".into());
        }
        a
    }

    /// An upper bound of how long the run can take, for the caller's own timeout.
    pub fn worst_case_ms(&self) -> u64 {
        let per = 2 * self.timeout_ms + self.interval_ms + 50;
        match (self.count, self.duration_ms) {
            (_, Some(d)) => d + per,
            (Some(n), None) => n.saturating_mul(per),
            (None, None) => per,
        }
    }
}

/// A `socklb-probe udp` run.
#[derive(Clone, Debug, PartialEq)]
pub struct UdpProbe {
    pub to: SocketAddr,
    /// Further targets: each socket sends to `to` and then to each of these in turn
    /// (unconnected sockets only).
    pub also: Vec<SocketAddr>,
    /// Number of sockets.
    pub sockets: u64,
    /// Datagrams per socket.
    pub count: u64,
    /// connect() the sockets and use send/recv instead of sendto/recvfrom.
    pub connected: bool,
    /// How long to wait for each reply.
    pub timeout_ms: u64,
    /// Repeat the run with new sockets until this much time has passed (None: once).
    pub duration_ms: Option<u64>,
    /// Pause between repetitions.
    pub interval_ms: u64,
}

impl UdpProbe {
    pub fn new(to: SocketAddr) -> Self {
        Self {
            to,
            also: Vec::new(),
            sockets: 1,
            count: 1,
            connected: false,
            timeout_ms: 1000,
            duration_ms: None,
            interval_ms: 0,
        }
    }
    /// Keep running rounds of new sockets for `ms` milliseconds.
    pub fn duration_ms(mut self, ms: u64) -> Self {
        self.duration_ms = Some(ms);
        self
    }
    pub fn interval_ms(mut self, ms: u64) -> Self {
        self.interval_ms = ms;
        self
    }
    pub fn sockets(mut self, n: u64) -> Self {
        self.sockets = n;
        self
    }
    pub fn count(mut self, n: u64) -> Self {
        self.count = n;
        self
    }
    pub fn connected(mut self, on: bool) -> Self {
        self.connected = on;
        self
    }
    /// Also send to `to` from the same sockets.
    pub fn also(mut self, to: SocketAddr) -> Self {
        self.also.push(to);
        self
    }
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = ms;
        self
    }

    /// The probe's command line arguments (after the program name).
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["udp".to_string(), "--to".into(), self.to.to_string()];
        for to in &self.also {
            a.extend(["--also".into(), to.to_string()]);
        }
        a.extend(["--sockets".into(), self.sockets.to_string()]);
        a.extend(["--count".into(), self.count.to_string()]);
        a.extend(["--timeout-ms".into(), self.timeout_ms.to_string()]);
        if self.connected {
            a.push("--connected".into());
        }
        if let Some(ms) = self.duration_ms {
            a.extend(["--duration-ms".into(), ms.to_string()]);
            a.extend(["--interval-ms".into(), self.interval_ms.to_string()]);
        }
        a
    }

    /// An upper bound of how long the run can take.
    pub fn worst_case_ms(&self) -> u64 {
        let round = self
            .sockets
            .saturating_mul(self.count)
            .saturating_mul(1 + self.also.len() as u64)
            .saturating_mul(self.timeout_ms + 10);
        round + self.duration_ms.unwrap_or(0) + 500
    }
}

/// The symbolic name of an errno value (`ECONNREFUSED`), or `errno N`.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::EPIPE => "EPIPE",
        libc::ENOBUFS => "ENOBUFS",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EPROTO => "EPROTO",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ENETRESET => "ENETRESET",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::EISCONN => "EISCONN",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::EDESTADDRREQ => "EDESTADDRREQ",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

/// The name under which a probe counts an I/O error. All probe sockets have timeouts, so
/// a timed-out wait (`TimedOut`, or `EAGAIN` from a read with SO_RCVTIMEO) counts as
/// `ETIMEDOUT`; an early end of stream is `EOF`.
pub fn error_name(e: &io::Error) -> String {
    match (e.raw_os_error(), e.kind()) {
        (Some(libc::EAGAIN), _) => "ETIMEDOUT".into(),
        (Some(n), _) => errno_name(n),
        (None, io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => "ETIMEDOUT".into(),
        (None, io::ErrorKind::UnexpectedEof) => "EOF".into(),
        (None, kind) => format!("{kind:?}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::ECONNREFUSED), "ECONNREFUSED");
        assert_eq!(errno_name(libc::ETIMEDOUT), "ETIMEDOUT");
        assert_eq!(errno_name(libc::EHOSTUNREACH), "EHOSTUNREACH");
        assert_eq!(errno_name(libc::ENETUNREACH), "ENETUNREACH");
        assert_eq!(errno_name(libc::EPERM), "EPERM");
        assert_eq!(errno_name(4242), "errno 4242");
    }

    #[test]
    fn io_error_names() {
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(error_name(&refused), "ECONNREFUSED");
        assert_eq!(
            error_name(&io::Error::from_raw_os_error(libc::EAGAIN)),
            "ETIMEDOUT"
        );
        assert_eq!(
            error_name(&io::Error::from(io::ErrorKind::TimedOut)),
            "ETIMEDOUT"
        );
        assert_eq!(
            error_name(&io::Error::from(io::ErrorKind::UnexpectedEof)),
            "EOF"
        );
    }

    #[test]
    fn tcp_report_json_shape() {
        let mut r = TcpReport {
            to: "10.96.0.10:80".into(),
            attempts: 3,
            ok: 2,
            ..Default::default()
        };
        r.backends.insert("pod-a".into(), 2);
        r.peers.insert("10.96.0.10:80".into(), 2);
        r.errors.insert("ECONNREFUSED".into(), 1);
        r.max_error_ms = 0.25;
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for key in [
            "to",
            "attempts",
            "ok",
            "backends",
            "peers",
            "errors",
            "max_error_ms",
            "first_error",
            "elapsed_ms",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["backends"]["pod-a"], 2);
        assert_eq!(v["errors"]["ECONNREFUSED"], 1);
        assert!(v["first_error"].is_null());
        let back: TcpReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.error("ECONNREFUSED"), 1);
        assert_eq!(back.failed(), 1);
        // Missing keys default (older or partial output still parses).
        let partial: TcpReport = serde_json::from_str(r#"{"attempts":1,"ok":1}"#).unwrap();
        assert_eq!(partial.ok, 1);
    }

    #[test]
    fn udp_report_json_shape_and_stickiness() {
        let r = UdpReport {
            sent: 4,
            replies: 4,
            per_socket: vec![vec!["a".into(), "a".into()], vec!["b".into(), "b".into()]],
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for key in [
            "sent",
            "replies",
            "backends",
            "reply_sources",
            "per_socket",
            "errors",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["per_socket"][1][0], "b");
        assert!(r.sockets_sticky());
        let mixed = UdpReport {
            per_socket: vec![vec!["a".into(), "b".into()]],
            ..r
        };
        assert!(!mixed.sockets_sticky());
    }

    #[test]
    fn probe_command_lines() {
        let to: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let t = TcpProbe::new(to).count(5).timeout_ms(300);
        assert_eq!(
            t.args(),
            [
                "tcp",
                "--to",
                "10.96.0.10:80",
                "--count",
                "5",
                "--interval-ms",
                "0",
                "--timeout-ms",
                "300"
            ]
        );
        let u = UdpProbe::new(to).sockets(4).count(3).connected(true);
        assert_eq!(
            u.args(),
            [
                "udp",
                "--to",
                "10.96.0.10:80",
                "--sockets",
                "4",
                "--count",
                "3",
                "--timeout-ms",
                "1000",
                "--connected"
            ]
        );
        assert!(t.worst_case_ms() >= 5 * 600);
    }
}
