//! Resource exhaustion (ASVS 4.0.3 V11.1.4, V12.1.x; CWE-400, CWE-770):
//! header floods, slowloris, 10,000 idle connections (against the real
//! binary), the `limits.max_connections` cap and HTTP/2 rapid reset
//! (CVE-2023-44487). During every attack a normal request keeps
//! being served, and the process's resident memory (`VmRSS`, which includes
//! the in-process gateway; tests run in parallel, so the bounds are loose)
//! stays bounded.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use super::*;

/// The attacks here run one at a time, so each one's memory reading is not
/// another's attack.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A normal request on a fresh connection, answered within `within`.
async fn assert_served(gw: &TestGateway, within: Duration, what: &str) {
    let t = Instant::now();
    let r = tokio::time::timeout(
        within,
        http::request(gw.addr, "GET", "/public/ok", &[], None),
    )
    .await
    .unwrap_or_else(|_| panic!("{what}: a normal request was not served within {within:?}"))
    .unwrap_or_else(|e| panic!("{what}: normal request failed: {e}"));
    assert_eq!(r.status, 200, "{what}: {r:?}");
    eprintln!("{what}: normal request served in {:?}", t.elapsed());
}

async fn short_deadline_gateway(secs: u64) -> TestGateway {
    TestGateway::start_with(Builder {
        extra: format!("[limits]\ndownstream_read_timeout_secs = {secs}\n"),
        ..Default::default()
    })
    .await
}

/// Header flood (CWE-770): more than `limits.max_header_count` headers,
/// more than `limits.max_header_bytes`, and far more than either (10,000
/// headers, 1 MB) from 50 connections at once: 431
/// `request_header_fields_too_large` (or a closed connection for what
/// exceeds Pingora's own parser limit), never a 5xx, nothing proxied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_flood_is_431_and_bounded() {
    let _one = ONE_AT_A_TIME.lock().await;
    let gw = TestGateway::start().await;
    let rss0 = vm_rss_kib();
    let many: Vec<(String, String)> = (0..150).map(|i| (format!("X-F{i}"), "v".into())).collect();
    let h: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_error(
        &get_with(&gw, "/public/x", &h).await,
        431,
        "request_header_fields_too_large",
    );
    let big = "v".repeat(20_000);
    assert_error(
        &get_with(&gw, "/public/x", &[("X-Big", &big)]).await,
        431,
        "request_header_fields_too_large",
    );
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let addr = gw.addr;
        tasks.spawn(async move {
            let mut raw = String::from("GET /public/x HTTP/1.1\r\nHost: a\r\n");
            if i % 2 == 0 {
                for j in 0..10_000 {
                    raw.push_str(&format!("X-H{j}: v\r\n"));
                }
            } else {
                raw.push_str(&format!("X-Big: {}\r\n", "v".repeat(1 << 20)));
            }
            raw.push_str("\r\n");
            http::send_raw(addr, raw.as_bytes())
                .await
                .ok()
                .map(|r| r.status)
        });
    }
    let probe = assert_served(&gw, Duration::from_secs(5), "header flood");
    probe.await;
    while let Some(st) = tasks.join_next().await {
        if let Some(st) = st.unwrap() {
            assert!((400..500).contains(&st), "header flood answered {st}");
        }
    }
    assert_eq!(gw.upstream.hits(), 1, "only the probe was proxied");
    let grown = vm_rss_kib().saturating_sub(rss0);
    eprintln!("header flood: VmRSS grew {grown} KiB");
    assert!(grown < 256 * 1024, "VmRSS grew {grown} KiB");
}

/// Slowloris (CWE-400; the whole-header deadline of
/// `limits.downstream_read_timeout_secs`): 300 connections trickling a
/// header one byte at a time are closed at the deadline, while normal
/// requests keep being served; nothing is proxied for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_at_the_deadline() {
    let _one = ONE_AT_A_TIME.lock().await;
    let gw = short_deadline_gateway(2).await;
    let rss0 = vm_rss_kib();
    let mut conns = Vec::new();
    for _ in 0..300 {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /public/x HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        conns.push(s);
    }
    let started = Instant::now();
    let mut closed = 0;
    // Trickle one header byte per connection every 200 ms for 4 s.
    while started.elapsed() < Duration::from_secs(4) {
        closed = 0;
        for s in conns.iter_mut() {
            if s.write_all(b"X").await.is_err() {
                closed += 1;
            }
        }
        assert_served(&gw, Duration::from_secs(2), "slowloris").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A write only fails once the peer's RST arrived: check by reading.
    let mut open = 0;
    for s in conns.iter_mut() {
        let mut b = [0u8; 512];
        match tokio::time::timeout(
            Duration::from_millis(50),
            tokio::io::AsyncReadExt::read(s, &mut b),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(_)) => {} // a 408 was written: being closed
            Err(_) => open += 1,
        }
    }
    eprintln!("slowloris: {closed} writes failed, {open} of 300 still open after 4 s");
    assert_eq!(open, 0, "slow connections outlived the 2 s header deadline");
    for r in gw.upstream.requests() {
        assert_eq!(r["path"], "/public/ok", "a slow request was proxied");
    }
    let grown = vm_rss_kib().saturating_sub(rss0);
    eprintln!("slowloris: VmRSS grew {grown} KiB");
    assert!(grown < 128 * 1024, "VmRSS grew {grown} KiB");
}

fn child_vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A gauge or counter from a Prometheus text page.
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn scrape(admin: std::net::SocketAddr, name: &str) -> f64 {
    let page = http::request(admin, "GET", "/metrics", &[], None)
        .await
        .unwrap()
        .text();
    metric(&page, name).unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Wait (bounded) until the gauge `name` satisfies `ok`.
async fn wait_metric(
    admin: std::net::SocketAddr,
    name: &str,
    limit: Duration,
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        let v = scrape(admin, name).await;
        if ok(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{name} stayed at {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One request on an already open connection; the status, or `None` when
/// the connection was closed without an answer.
async fn status_on(s: &mut tokio::net::TcpStream) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    s.write_all(b"GET /public/ok HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no answer and no close within 5 s"),
        }
    }
    std::str::from_utf8(&buf[9..12]).ok()?.parse().ok()
}

/// Connection exhaustion (CWE-770): 10,000 idle TCP connections held open
/// at once against the real binary, run as a child process so each side
/// has its own RLIMIT_NOFILE (each raises its soft limit to the hard one).
/// The gateway counts every one of them open (`portcullis_connections_open`),
/// real traffic keeps being served the whole time (a client loop on fresh
/// connections, and probes every 1,000), and the child's memory (`VmRSS`
/// from `/proc/PID/status`) stays bounded per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let _one = ONE_AT_A_TIME.lock().await;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    const TARGET: usize = 10_000;
    // The client side holds TARGET descriptors; the tests alongside need some.
    assert!(
        hard >= TARGET as u64 + 2_000,
        "RLIMIT_NOFILE hard limit {hard} is too low for {TARGET} connections"
    );
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = bin::write_config(
        dir.path(),
        &up.url(),
        &format!(
            "[limits]\ndownstream_read_timeout_secs = 120\nmax_connections = 12000\n\n\
             [log]\nlevel = \"warn\"\n\n\
             [[routes]]\nprefix = \"/public\"\nupstream = \"{}\"\nauth = \"public\"\n",
            up.url()
        ),
    );
    let mut gw = bin::Served::start(&cfg).await;
    let pid = gw.child.id();
    let addr = cfg.listen;
    let probe = move |what: &'static str| async move {
        let t = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            http::request(addr, "GET", "/public/ok", &[], None),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: a normal request was not served within 5 s"))
        .unwrap_or_else(|e| panic!("{what}: normal request failed: {e}"));
        assert_eq!(r.status, 200, "{what}: {r:?}");
        t.elapsed()
    };
    probe("warm-up").await;
    let rss0 = child_vm_rss_kib(pid);
    // Real traffic all along: one client in a loop on fresh connections.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut served, mut slowest) = (0u32, Duration::ZERO);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                slowest = slowest.max(probe("traffic").await);
                served += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (served, slowest)
        })
    };
    let mut conns = Vec::with_capacity(TARGET);
    let t = Instant::now();
    while conns.len() < TARGET {
        match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(s)) => conns.push(s),
            Ok(Err(e)) => panic!("connect failed after {}: {e}", conns.len()),
            Err(_) => panic!("connect timed out after {}", conns.len()),
        }
        if conns.len().is_multiple_of(1000) {
            probe("idle connections").await;
        }
    }
    eprintln!(
        "idle connections: {} open in {:?}",
        conns.len(),
        t.elapsed()
    );
    // The gateway holds every one of them (and the traffic's own).
    let open = wait_metric(
        cfg.admin,
        "portcullis_connections_open",
        Duration::from_secs(30),
        |v| v >= TARGET as f64,
    )
    .await;
    let served_in = probe("all open").await;
    let rss = child_vm_rss_kib(pid);
    let grown = rss.saturating_sub(rss0);
    let per_conn = grown * 1024 / TARGET as u64;
    eprintln!(
        "idle connections: gateway counts {open} open; probe served in {served_in:?}; \
         gateway VmRSS {rss0} -> {rss} KiB (+{grown} KiB, {per_conn} B per connection)"
    );
    // Every client end is still open (none was closed by the gateway).
    let mut closed = 0;
    for s in conns.iter_mut().step_by(50) {
        let mut b = [0u8; 16];
        if let Ok(r) = tokio::time::timeout(
            Duration::from_millis(2),
            tokio::io::AsyncReadExt::read(s, &mut b),
        )
        .await
        {
            let _ = r;
            closed += 1;
        }
    }
    assert_eq!(closed, 0, "the gateway closed idle connections early");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, slowest) = traffic.await.unwrap();
    eprintln!("idle connections: traffic served {served} requests meanwhile, slowest {slowest:?}");
    assert!(served > 10, "traffic served only {served} requests");
    // Measured: about 60 KB per idle connection (Pingora's per-connection
    // task and buffers); this bound catches a regression.
    assert!(per_conn < 128 * 1024, "{per_conn} B per idle connection");
    drop(conns);
    wait_metric(
        cfg.admin,
        "portcullis_connections_open",
        Duration::from_secs(30),
        |v| v < 10.0,
    )
    .await;
    probe("after idle connections").await;
    assert!(gw.child.try_wait().unwrap().is_none(), "{}", gw.stderr());
    gw.crash();
}

/// `limits.max_connections` (CWE-770): with a cap of 50, fifty idle
/// connections are held; the 51st is closed without an answer (and
/// counted in `portcullis_connections_refused_total`), the held ones still
/// serve requests, and once ten of them close, new connections are served
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_caps_open_connections() {
    let _one = ONE_AT_A_TIME.lock().await;
    let gw = TestGateway::start_with(Builder {
        extra: "[limits]\nmax_connections = 50\ndownstream_read_timeout_secs = 60\n".into(),
        ..Default::default()
    })
    .await;
    assert_served(&gw, Duration::from_secs(5), "below the cap").await;
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    }
    wait_metric(
        gw.admin_addr,
        "portcullis_connections_open",
        Duration::from_secs(10),
        |v| v >= 50.0,
    )
    .await;
    // The 51st: accepted by the kernel, closed by the gateway unanswered.
    let mut extra = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(status_on(&mut extra).await, None, "the 51st was served");
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        http::request(gw.addr, "GET", "/public/ok", &[], None),
    )
    .await
    .expect("refused at once");
    assert!(r.is_err(), "a request over the cap was answered: {r:?}");
    assert!(scrape(gw.admin_addr, "portcullis_connections_refused_total").await >= 2.0);
    // The held connections work.
    for s in held.iter_mut().take(3) {
        assert_eq!(status_on(s).await, Some(200));
    }
    // Ten close: room again.
    held.truncate(40);
    wait_metric(
        gw.admin_addr,
        "portcullis_connections_open",
        Duration::from_secs(10),
        |v| v <= 40.0,
    )
    .await;
    assert_served(&gw, Duration::from_secs(5), "after ten closed").await;
    let mut again = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(status_on(&mut again).await, Some(200));
    assert_eq!(status_on(&mut held[0]).await, Some(200));
}

/// HTTP/2 rapid reset (CVE-2023-44487): 20,000 streams opened and reset at
/// once on TLS connections. The gateway ends such a connection (GOAWAY)
/// long before that many, nothing reaches the upstream for the reset
/// streams beyond a handful, normal requests keep being served, and memory
/// stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_is_cut_off() {
    let _one = ONE_AT_A_TIME.lock().await;
    use tokio_rustls::rustls::pki_types::ServerName;
    let gw = TestGateway::start().await;
    let rss0 = vm_rss_kib();
    let config = http::tls_client_config(&gw.cert_path(), &["h2"]).unwrap();
    let mut total_sent = 0usize;
    for round in 0..4 {
        let tcp = tokio::net::TcpStream::connect(gw.tls_addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let (mut client, conn) = h2::client::Builder::new()
            .max_concurrent_reset_streams(100_000)
            .handshake::<_, bytes::Bytes>(tls)
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let mut sent = 0usize;
        for _ in 0..5_000 {
            let req = ::http::Request::builder()
                .method("POST")
                .uri(format!(
                    "https://localhost:{}/public/rr",
                    gw.tls_addr.port()
                ))
                .body(())
                .unwrap();
            let ready = match tokio::time::timeout(Duration::from_secs(2), client.ready()).await {
                Ok(Ok(c)) => c,
                _ => break,
            };
            client = ready;
            match client.send_request(req, false) {
                Ok((_resp, mut stream)) => {
                    stream.send_reset(h2::Reason::CANCEL);
                    sent += 1;
                }
                Err(_) => break,
            }
            if sent.is_multiple_of(1000) {
                tokio::task::yield_now().await;
            }
        }
        let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
        eprintln!(
            "rapid reset round {round}: {sent} streams reset; connection ended: {}",
            ended.is_ok()
        );
        total_sent += sent;
        assert_served(&gw, Duration::from_secs(5), "rapid reset").await;
        assert!(
            ended.is_ok(),
            "round {round}: the gateway kept the connection after {sent} resets"
        );
    }
    let hits = gw.upstream.hits();
    eprintln!("rapid reset: {total_sent} streams reset, upstream got {hits} requests");
    assert!(
        hits <= 4 + total_sent / 10,
        "upstream got {hits} requests for {total_sent} reset streams"
    );
    let grown = vm_rss_kib().saturating_sub(rss0);
    eprintln!("rapid reset: VmRSS grew {grown} KiB");
    assert!(grown < 256 * 1024, "VmRSS grew {grown} KiB");
}
