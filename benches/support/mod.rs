//! Shared by the whole-path benches (`load`, `store_load`, `pg_load`): the
//! gateway config they boot, a tiny keep-alive upstream on its own thread,
//! a raw HTTP/1.1 keep-alive client with a timeout on every I/O, load
//! tasks, and the report helpers; and (`pg`) the integration tests'
//! throwaway PostgreSQL cluster. Included with
//! `#[path = "support/mod.rs"] mod support;`; not every bench uses every
//! item.
#![allow(dead_code)]

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The integration tests' throwaway PostgreSQL cluster (one per process,
/// stopped with it even after SIGKILL), shared rather than copied; it finds
/// `free_port` in this module.
#[path = "../../tests/it/common/pg.rs"]
pub mod pg;
pub mod writes;

// ------------------------------------------------------------------ gateway

/// What a bench's gateway differs in; everything else is [`gateway_config`]'s.
#[derive(Default)]
pub struct GatewaySpec<'a> {
    /// TOML appended to the common config: `[passwords]`, `[storage]`,
    /// more `[[routes]]`.
    pub extra: &'a str,
    /// The environment the config sees (`PORTCULLIS_JWT_SECRET`, …);
    /// nothing else of the real environment is read.
    pub env: &'a [(&'a str, &'a str)],
    /// argon2 below the validated OWASP minimum (m = 1024 KiB, t = 1), so
    /// the store, not the hash, is what is measured.
    pub cheap_argon: bool,
}

/// The config every whole-path bench boots: plain HTTP and the admin
/// listener on free loopback ports, no TLS, 2 server threads, no grace
/// period, throttling off, and `/` proxied to `upstream` with
/// `auth = "required"`; then `spec`. Its data dir is `data_dir/data`.
pub fn gateway_config(
    upstream: SocketAddr,
    data_dir: &Path,
    spec: &GatewaySpec<'_>,
) -> portcullis::Config {
    let gw_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let d = data_dir.display();
    let extra = spec.extra;
    let toml = format!(
        r#"
[server]
listen = "{gw_addr}"
tls_listen = ""
admin_listen = "{admin_addr}"
data_dir = "{d}/data"
threads = 2
grace_period_secs = 0

[throttle]
auth_per_minute = 0
max_failed_logins = 0

[[routes]]
prefix = "/"
upstream = "http://{upstream}"
auth = "required"

{extra}
"#
    );
    let env = |k: &str| {
        spec.env
            .iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.to_string())
    };
    let mut cfg = portcullis::Config::from_toml(&toml, &env, Path::new("."))
        .unwrap_or_else(|e| panic!("bench config invalid:\n{e}"));
    if spec.cheap_argon {
        // Below the validated OWASP minimum on purpose (bench only).
        cfg.passwords.argon2_memory_kib = 1024;
        cfg.passwords.argon2_iterations = 1;
    }
    cfg
}

/// A gateway booted from `cfg` with the real clock: the same
/// `portcullis::start` the binary runs. Its plain HTTP address.
pub fn start_gateway(cfg: portcullis::Config) -> (portcullis::GatewayHandle, SocketAddr) {
    let addr = cfg.server.listen.expect("bench config has server.listen");
    let handle = portcullis::start(cfg, Arc::new(portcullis::clock::SystemClock), false)
        .unwrap_or_else(|e| panic!("gateway failed to start: {e}"));
    (handle, addr)
}

// ---------------------------------------------------------------- upstream

pub const UPSTREAM_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of a header in a raw head (case-insensitive name).
pub fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

pub async fn upstream_conn(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut tmp = [0u8; 8192];
    loop {
        // Answer every complete request in the buffer (pipelining-safe).
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]);
            let cl: usize = header_value(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let total = end + 4 + cl;
            if buf.len() < total {
                break;
            }
            buf.drain(..total);
            out.extend_from_slice(UPSTREAM_RESPONSE);
        }
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub stop: watch::Sender<bool>,
    pub thread: std::thread::JoinHandle<()>,
}

pub fn start_upstream() -> Upstream {
    let std_listener = StdListener::bind("127.0.0.1:0").expect("upstream bind");
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let (stop, mut stop_rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("bench-upstream".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                loop {
                    tokio::select! {
                        r = listener.accept() => {
                            if let Ok((s, _)) = r {
                                tokio::spawn(upstream_conn(s));
                            }
                        }
                        _ = stop_rx.changed() => break,
                    }
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        })
        .unwrap();
    Upstream { addr, stop, thread }
}

// ------------------------------------------------------------------ client

pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
    pub close: bool,
}

/// A minimal HTTP/1.1 keep-alive client connection.
pub struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timeout"))??;
        s.set_nodelay(true)?;
        Ok(Self {
            s,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    async fn fill(&mut self) -> io::Result<()> {
        let mut tmp = [0u8; 16 * 1024];
        let n = self.s.read(&mut tmp).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    pub async fn request(&mut self, raw: &[u8]) -> io::Result<Resp> {
        tokio::time::timeout(IO_TIMEOUT, self.request_inner(raw))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timeout"))?
    }

    async fn request_inner(&mut self, raw: &[u8]) -> io::Result<Resp> {
        self.s.write_all(raw).await?;
        let end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
        let close =
            header_value(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        self.buf.drain(..end + 4);
        let chunked = header_value(&head, "transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let body = if chunked {
            self.read_chunked().await?
        } else {
            let cl: usize = match header_value(&head, "content-length") {
                Some(v) => v
                    .parse()
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad length"))?,
                None if status == 204 || status == 304 => 0,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "response without length",
                    ))
                }
            };
            while self.buf.len() < cl {
                self.fill().await?;
            }
            self.buf.drain(..cl).collect()
        };
        Ok(Resp {
            status,
            body,
            close,
        })
    }

    async fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                self.fill().await?;
            };
            let size_str = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // No trailers expected: just the final CRLF.
                while self.buf.len() < 2 {
                    self.fill().await?;
                }
                self.buf.drain(..2);
                return Ok(body);
            }
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }
}

pub fn get_request(path: &str, bearer: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nhost: bench.local\r\nauthorization: Bearer {bearer}\r\n\
         user-agent: portcullis-load\r\naccept: */*\r\n\r\n"
    )
    .into_bytes()
}

pub fn post_json(path: &str, body: &serde_json::Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nhost: bench.local\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nuser-agent: portcullis-load\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// An unexpected status and the start of its body, for the report.
pub fn status_error(r: &Resp) -> String {
    format!(
        "status {}: {}",
        r.status,
        String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
    )
}

/// What one load task saw.
#[derive(Default)]
pub struct Stats {
    /// Latencies of successful requests, microseconds.
    pub lat_us: Vec<u64>,
    /// Successes completed before the deadline.
    pub ok_in_window: u64,
    pub errors: u64,
    /// First unexpected status or I/O error, for the report.
    pub first_error: Option<String>,
}

impl Stats {
    pub fn merge(&mut self, o: Stats) {
        self.lat_us.extend(o.lat_us);
        self.ok_in_window += o.ok_in_window;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// Loop `raw` on one keep-alive connection until `deadline`, reconnecting
/// when the server closes; `expect` is the only status counted as a success.
pub async fn load_task(
    addr: SocketAddr,
    raw: Arc<Vec<u8>>,
    expect: u16,
    deadline: Instant,
) -> Stats {
    let mut st = Stats::default();
    let mut conn: Option<Conn> = None;
    while Instant::now() < deadline {
        let c = match &mut conn {
            Some(c) => c,
            None => match Conn::connect(addr).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    st.errors += 1;
                    st.first_error
                        .get_or_insert_with(|| format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let t0 = Instant::now();
        match c.request(&raw).await {
            Ok(r) => {
                let done = Instant::now();
                if r.status == expect {
                    // Percentiles and the rate count the same requests:
                    // those answered inside the window.
                    if done <= deadline {
                        st.lat_us.push(done.duration_since(t0).as_micros() as u64);
                        st.ok_in_window += 1;
                    }
                } else {
                    st.errors += 1;
                    st.first_error.get_or_insert_with(|| status_error(&r));
                }
                if r.close {
                    conn = None;
                }
            }
            Err(e) => {
                st.errors += 1;
                st.first_error.get_or_insert_with(|| format!("i/o: {e}"));
                conn = None;
            }
        }
    }
    st
}

pub async fn run_tasks(
    addr: SocketAddr,
    raw: Vec<u8>,
    expect: u16,
    n: usize,
    deadline: Instant,
) -> tokio::task::JoinHandle<Stats> {
    let raw = Arc::new(raw);
    let handles: Vec<_> = (0..n)
        .map(|_| tokio::spawn(load_task(addr, raw.clone(), expect, deadline)))
        .collect();
    tokio::spawn(async move {
        let mut all = Stats::default();
        for h in handles {
            if let Ok(s) = h.await {
                all.merge(s);
            }
        }
        all
    })
}

// ----------------------------------------------------------------- report

pub struct Summary {
    pub n: usize,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
    pub first_error: Option<String>,
}

pub fn summarize(mut st: Stats, window: Duration) -> Summary {
    st.lat_us.sort_unstable();
    let pct = |p: usize| -> f64 {
        if st.lat_us.is_empty() {
            return f64::NAN;
        }
        let i = ((st.lat_us.len() * p).div_ceil(100)).clamp(1, st.lat_us.len()) - 1;
        st.lat_us[i] as f64 / 1000.0
    };
    Summary {
        n: st.lat_us.len(),
        per_sec: st.ok_in_window as f64 / window.as_secs_f64(),
        p50_ms: pct(50),
        p99_ms: pct(99),
        max_ms: st.lat_us.last().map_or(f64::NAN, |&v| v as f64 / 1000.0),
        errors: st.errors,
        first_error: st.first_error,
    }
}

pub fn proc_status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
