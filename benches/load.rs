//! Load benchmark of the whole path: the real gateway (`portcullis::start`,
//! exactly what the binary runs) in-process on loopback, a tiny keep-alive
//! upstream on its own runtime, and a raw HTTP/1.1 keep-alive client on a
//! third runtime.
//!
//! Scenarios (issue 3, "Numbers"):
//! - A: proxied `GET /api/item` with a bearer token, C=32 keep-alive
//!   connections, no other load;
//! - B: the same proxied load while 64 tasks loop on `POST /auth/login` with
//!   the correct password (target: B's proxied req/s >= 60% of A's);
//! - C: sequential logins, p50/p99 with the configured (default) argon2 params.
//!
//! Run: `cargo bench --bench load`. Environment:
//! - `LOAD_SECS` (default 10): the duration of A and B each;
//! - `LOAD_MAX_HASHES`: overrides `passwords.max_concurrent_hashes`;
//! - `LOAD_DEBUG_SMAPS=1`: print the largest resident mappings after B.
//!
//! Everything binds 127.0.0.1 only, every wait is bounded, and the gateway
//! is stopped at the end. The client, the upstream and the gateway share
//! this process and its cores, so the RSS figures include all three.

use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use support::{
    gateway_config, get_request, mib, post_json, proc_status_kib, run_tasks, start_gateway,
    start_upstream, summarize, Conn, GatewaySpec, Stats, Summary,
};

const PROXY_CONNS: usize = 32;
const LOGIN_TASKS: usize = 64;
const SEQ_LOGINS: usize = 50;
const EMAIL: &str = "loadbench@example.com";
const PASSWORD: &str = "Vx9-quartz-Lantern-47";
fn login_request() -> Vec<u8> {
    post_json(
        "/auth/login",
        &serde_json::json!({ "email": EMAIL, "password": PASSWORD }),
    )
}

/// Diagnostics (`LOAD_DEBUG_SMAPS=1`): the largest resident mappings, to
/// tell allocator arenas from the heap, stacks and the binary.
fn print_largest_mappings(n: usize) {
    let s = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut cur = "";
    let mut v: Vec<(u64, &str)> = Vec::new();
    for l in s.lines() {
        if let Some(r) = l.strip_prefix("Rss:") {
            let kib = r.split_whitespace().next().and_then(|k| k.parse().ok());
            v.push((kib.unwrap_or(0), cur));
        } else if l.starts_with(|c: char| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) {
            cur = l;
        }
    }
    v.sort_by_key(|e| std::cmp::Reverse(e.0));
    eprintln!("largest resident mappings (of {}):", v.len());
    for (kib, m) in v.iter().take(n) {
        eprintln!("{kib:>8} KiB  {m}");
    }
}

// ------------------------------------------------------------------- main

fn main() {
    let secs: u64 = std::env::var("LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(10);
    let window = Duration::from_secs(secs);
    // Optional override of passwords.max_concurrent_hashes (default 0 = half the cores,
    // per core), to compare hashing concurrency against proxy throughput.
    let max_hashes: Option<usize> = std::env::var("LOAD_MAX_HASHES")
        .ok()
        .and_then(|v| v.parse().ok());
    let passwords = max_hashes.map_or_else(String::new, |n| {
        format!("[passwords]\nmax_concurrent_hashes = {n}\n")
    });

    let upstream = start_upstream();
    let dir = tempfile::tempdir().expect("temp dir");
    let extra = format!(
        "{passwords}\n[[routes]]\nprefix = \"/public\"\nupstream = \"http://{}\"\nauth = \"public\"\n",
        upstream.addr
    );
    let cfg = gateway_config(
        upstream.addr,
        dir.path(),
        &GatewaySpec {
            extra: &extra,
            ..Default::default()
        },
    );
    let pw = cfg.passwords.clone();
    let threads = cfg.server.threads;
    let rss_start = proc_status_kib("VmRSS:");
    let (handle, gw_addr) = start_gateway(cfg);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .unwrap();

    let report = rt.block_on(async move {
        // Setup: register, log in, check both routes answer.
        let mut c = Conn::connect(gw_addr).await.expect("connect gateway");
        let r = c
            .request(&post_json(
                "/auth/register",
                &serde_json::json!({
                    "email": EMAIL, "password": PASSWORD, "password_confirm": PASSWORD
                }),
            ))
            .await
            .expect("register");
        assert_eq!(
            r.status,
            201,
            "register: {}",
            String::from_utf8_lossy(&r.body)
        );
        if r.close {
            c = Conn::connect(gw_addr).await.unwrap();
        }
        let r = c.request(&login_request()).await.expect("login");
        assert_eq!(r.status, 200, "login: {}", String::from_utf8_lossy(&r.body));
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("login json");
        let token = v["access_token"]
            .as_str()
            .expect("access_token")
            .to_string();
        let mut c = Conn::connect(gw_addr).await.unwrap();
        let r = c.request(&get_request("/api/item", &token)).await.unwrap();
        assert_eq!(
            r.status,
            200,
            "proxied: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.body, b"ok");
        let r = c.request(&get_request("/api/item", "nope")).await.unwrap();
        assert_eq!(r.status, 401, "bad token must be refused");
        let r = c
            .request(b"GET /public/x HTTP/1.1\r\nhost: bench.local\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "public route");
        drop(c);

        let rss_before = proc_status_kib("VmRSS:");
        let proxied = get_request("/api/item", &token);

        // Warm-up (connections, upstream pool), not measured.
        let warm = Instant::now() + Duration::from_secs(1);
        let _ = run_tasks(gw_addr, proxied.clone(), 200, PROXY_CONNS, warm)
            .await
            .await;

        // A: proxied, no flood.
        let start = Instant::now();
        let a = run_tasks(gw_addr, proxied.clone(), 200, PROXY_CONNS, start + window)
            .await
            .await
            .unwrap();
        let a = summarize(a, window);
        let rss_after_a = proc_status_kib("VmRSS:");

        // B: proxied during a login flood.
        let start = Instant::now();
        let deadline = start + window;
        let flood = run_tasks(gw_addr, login_request(), 200, LOGIN_TASKS, deadline).await;
        let b = run_tasks(gw_addr, proxied.clone(), 200, PROXY_CONNS, deadline).await;
        // RSS and threads sampled while B runs (their peaks), not after.
        let sampler = tokio::spawn(async move {
            let (mut rss, mut threads) = (None::<u64>, 0usize);
            while Instant::now() < deadline {
                rss = rss.max(proc_status_kib("VmRSS:"));
                threads =
                    threads.max(std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count()));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (rss, threads)
        });
        let b = summarize(b.await.unwrap(), window);
        let (rss_during_b, threads_b) = sampler.await.unwrap();
        if std::env::var_os("LOAD_DEBUG_SMAPS").is_some() {
            print_largest_mappings(20);
        }
        let logins = summarize(flood.await.unwrap(), window);
        let flood_drained = start.elapsed();

        // C: sequential logins.
        let mut c = Conn::connect(gw_addr).await.unwrap();
        let raw = login_request();
        let mut st = Stats::default();
        let t_c = Instant::now();
        for _ in 0..SEQ_LOGINS {
            let t0 = Instant::now();
            match c.request(&raw).await {
                Ok(r) if r.status == 200 => {
                    st.lat_us.push(t0.elapsed().as_micros() as u64);
                    st.ok_in_window += 1;
                    if r.close {
                        c = Conn::connect(gw_addr).await.unwrap();
                    }
                }
                Ok(r) => {
                    st.errors += 1;
                    st.first_error
                        .get_or_insert_with(|| format!("status {}", r.status));
                }
                Err(e) => {
                    st.errors += 1;
                    st.first_error.get_or_insert_with(|| format!("i/o: {e}"));
                    c = Conn::connect(gw_addr).await.unwrap();
                }
            }
        }
        let seq = summarize(st, t_c.elapsed());
        let rss_after = proc_status_kib("VmRSS:");
        (
            a,
            b,
            logins,
            flood_drained,
            seq,
            [rss_before, rss_after_a, rss_during_b, rss_after],
            threads_b,
        )
    });
    let (a, b, logins, flood_drained, seq, rss, threads_b) = report;
    let hwm = proc_status_kib("VmHWM:");

    handle.stop();
    let _ = upstream.stop.send(true);
    let _ = upstream.thread.join();
    rt.shutdown_timeout(Duration::from_secs(2));

    // ---------------------------------------------------------- the table
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("portcullis load benchmark");
    println!(
        "  {cores} cores; gateway server.threads = {threads}; client runtime 2 workers; \
         upstream 1 thread (all in this process)"
    );
    println!(
        "  argon2id m={} KiB t={} p={}; max_concurrent_hashes = {} (default: half the cores, at least 1)",
        pw.argon2_memory_kib, pw.argon2_iterations, pw.argon2_parallelism, pw.max_concurrent_hashes
    );
    println!(
        "  window {secs} s per scenario; {PROXY_CONNS} keep-alive connections for proxied \
         GET /api/item; {LOGIN_TASKS} login tasks in B"
    );
    println!();
    println!(
        "{:<40} {:>10} {:>9} {:>9} {:>9} {:>8} {:>7}",
        "scenario", "req/s", "p50 ms", "p99 ms", "max ms", "n", "errors"
    );
    println!("{}", "-".repeat(98));
    let row = |name: &str, s: &Summary| {
        println!(
            "{:<40} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>7}",
            name, s.per_sec, s.p50_ms, s.p99_ms, s.max_ms, s.n, s.errors
        );
    };
    row("A proxied, no flood", &a);
    row("B proxied, during login flood", &b);
    row("B logins (64 concurrent, flood)", &logins);
    row("C logins, sequential", &seq);
    println!("{}", "-".repeat(98));
    let ratio = b.per_sec / a.per_sec * 100.0;
    println!(
        "B/A proxied throughput: {ratio:.1}%  (issue 3 target >= 60%: {})",
        if ratio >= 60.0 { "MET" } else { "NOT MET" }
    );
    println!(
        "login flood drained {:.2} s after start (window {secs} s)",
        flood_drained.as_secs_f64()
    );
    println!(
        "RSS (whole process: gateway + upstream + client): start {}, before load {}, \
         after A {}, peak during B {}, end {}, peak (VmHWM) {}",
        mib(rss_start),
        mib(rss[0]),
        mib(rss[1]),
        mib(rss[2]),
        mib(rss[3]),
        mib(hwm)
    );
    println!("process threads, most during the flood window: {threads_b}");
    for (name, s) in [("A", &a), ("B", &b), ("B logins", &logins), ("C", &seq)] {
        if let Some(e) = &s.first_error {
            println!("first error in {name}: {e}");
        }
    }
    println!("gateway stopped");
    drop(dir);
}
