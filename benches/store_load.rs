//! Account-state write throughput of the whole path: the real gateway
//! (`portcullis::start`, exactly what the binary runs) in-process on
//! loopback, a tiny keep-alive upstream on its own thread, and a raw
//! HTTP/1.1 keep-alive client on a third runtime; only HTTP is used.
//!
//! Scenarios, each for `LOAD_SECS`:
//! 1. `register`: 64 tasks loop `POST /auth/register`, a fresh email each
//!    time (201);
//! 2. `refresh`: 64 users (created and logged in before the timer), one
//!    task each, loop `POST /auth/refresh`, always with the newest token (200);
//! 3. `logout`: a pool of sessions is logged in before the timer (sized from
//!    2.'s rate, at most ~45 s of set-up); 64 tasks loop `POST /auth/logout`
//!    with their own sessions (204); a task that runs out stops, and the rate
//!    is over the time actually used;
//! 4. `proxied`: 32 keep-alive connections loop `GET /api/item` with a
//!    bearer on a `required` route, no other load;
//! 5. `proxied+refresh-flood`: 4. while 64 tasks loop as in 2., on fresh
//!    sessions logged in before the timer (target: proxied req/s >= 0.8 x 4.).
//!
//! Any status other than the expected one (503 included) is an error.
//!
//! Argon2 would hide the store, so by default the hash is cheap (m=1024 KiB,
//! t=1, 2 concurrent hashes). The config validation refuses values below the
//! OWASP minimum, so the cheap params are set on the validated `Config`
//! (bench only). `STORE_LOAD_DEFAULT_ARGON=1` keeps the defaults.
//!
//! Run: `cargo bench --bench store_load`. Environment:
//! - `LOAD_SECS` (default 10): the duration of each scenario;
//! - `STORE_LOAD_DEFAULT_ARGON=1`: the default argon2 params.
//! - `STORE_LOAD_ONLY=flood`: only scenarios 4 and 5 (proxied, and proxied
//!   during the refresh flood).
//!
//! Everything binds 127.0.0.1 only, every I/O has a timeout, and the
//! gateway is stopped at the end. Client, upstream and gateway share this
//! process and its cores, so the RSS figure includes all three.

use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use support::writes::{
    command_output, join_all, login, logout_task, merged, refresh_task, register_request,
    register_task, row, setup_pool, setup_user, user_email, Client, Rec, Row,
};
use support::{
    gateway_config, get_request, mib, proc_status_kib, run_tasks, start_gateway, start_upstream,
    status_error, summarize, GatewaySpec,
};

const WRITE_TASKS: usize = 64;
const PROXY_CONNS: usize = 32;
/// The logout pool's set-up stops after this long, whatever its size.
const POOL_SETUP_BUDGET: Duration = Duration::from_secs(45);
/// And never holds more than this many sessions.
const POOL_MAX: usize = 128_000;

// -------------------------------------------------------------------- main

fn main() {
    let secs: u64 = std::env::var("LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(10);
    let window = Duration::from_secs(secs);
    let default_argon = std::env::var("STORE_LOAD_DEFAULT_ARGON").is_ok_and(|v| v == "1");
    let flood_only = std::env::var("STORE_LOAD_ONLY").is_ok_and(|v| v == "flood");
    // 64 clients hash at once: the queue holds them all (the default bound
    // of 32 would answer some with 503, which this bench counts as errors).
    let passwords = if default_argon {
        "[passwords]\nmax_queued_hashes = 128\n"
    } else {
        "[passwords]\nmax_concurrent_hashes = 2\nmax_queued_hashes = 128\n"
    };

    let upstream = start_upstream();
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = gateway_config(
        upstream.addr,
        dir.path(),
        &GatewaySpec {
            extra: passwords,
            cheap_argon: !default_argon,
            ..Default::default()
        },
    );
    let pw = cfg.passwords.clone();
    let threads = cfg.server.threads;
    let t_total = Instant::now();
    let (handle, gw_addr) = start_gateway(cfg);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .unwrap();

    println!(
        "argon2id m={} KiB t={} p={}; max_concurrent_hashes = {} ({})",
        pw.argon2_memory_kib,
        pw.argon2_iterations,
        pw.argon2_parallelism,
        pw.max_concurrent_hashes,
        if default_argon {
            "defaults, STORE_LOAD_DEFAULT_ARGON=1"
        } else {
            "cheap bench params; STORE_LOAD_DEFAULT_ARGON=1 for the defaults"
        }
    );

    let (rows, notes) = rt.block_on(async move {
        let mut notes: Vec<String> = Vec::new();

        // Sanity: one user, a token, the proxied route answers.
        let mut c = Client::new(gw_addr);
        let r = c
            .send(&register_request("probe@bench.test"))
            .await
            .expect("register");
        assert_eq!(r.status, 201, "register: {}", status_error(&r));
        let (_, access) = login(&mut c, "probe@bench.test").await.expect("login");
        let r = c
            .send(&get_request("/api/item", &access))
            .await
            .expect("proxied");
        assert_eq!(r.status, 200, "proxied: {}", status_error(&r));
        assert_eq!(r.body, b"ok");
        drop(c);
        let mut rows = Vec::new();

        if flood_only {
            println!("STORE_LOAD_ONLY=flood: scenarios 1-3 skipped");
        }
        // 1. register
        if !flood_only {
        println!("[1/5] register: {WRITE_TASKS} tasks, {secs} s");
        let start = Instant::now();
        let deadline = start + window;
        let hs = (0..WRITE_TASKS)
            .map(|t| tokio::spawn(register_task(gw_addr, t, start, deadline)))
            .collect();
        let rec = merged(join_all(hs).await, start, deadline);
        rows.push(row("register", rec, secs as f64));

        // 2. refresh
        let t_setup = Instant::now();
        let hs = (0..WRITE_TASKS)
            .map(|i| tokio::spawn(setup_user(gw_addr, i)))
            .collect();
        let tokens: Vec<String> = join_all(hs)
            .await
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("set-up of the refresh users: {e}")))
            .collect();
        println!(
            "[2/5] refresh: {WRITE_TASKS} users set up in {:.1} s; {WRITE_TASKS} tasks, {secs} s",
            t_setup.elapsed().as_secs_f64()
        );
        let start = Instant::now();
        let deadline = start + window;
        let hs = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| tokio::spawn(refresh_task(gw_addr, i, Some(t), start, deadline)))
            .collect();
        let (recs, _): (Vec<Rec>, Vec<Option<String>>) = join_all(hs).await.into_iter().unzip();
        let rec = merged(recs, start, deadline);
        let refresh_rate = rec.st.ok_in_window as f64 / secs as f64;
        rows.push(row("refresh", rec, secs as f64));

        // 3. logout, from a pool logged in beforehand.
        let target = ((refresh_rate * secs as f64 * 2.0) as usize)
            .clamp(WRITE_TASKS * 20, POOL_MAX)
            .div_ceil(WRITE_TASKS);
        let t_setup = Instant::now();
        let until = t_setup + POOL_SETUP_BUDGET;
        let hs = (0..WRITE_TASKS)
            .map(|i| tokio::spawn(setup_pool(gw_addr, i, target, until)))
            .collect();
        let pools: Vec<(Vec<String>, Option<String>)> = join_all(hs).await;
        let setup_secs = t_setup.elapsed().as_secs_f64();
        let pool_size: usize = pools.iter().map(|p| p.0.len()).sum();
        let smallest = pools.iter().map(|p| p.0.len()).min().unwrap_or(0);
        if let Some(e) = pools.iter().find_map(|p| p.1.clone()) {
            notes.push(format!("logout pool set-up: first login error: {e}"));
        }
        let note = format!(
            "logout pool: {pool_size} sessions ({smallest}..{} per task) logged in in {setup_secs:.1} s \
             (target {} = 2 x the refresh rate x {secs} s, set-up budget {} s)",
            pools.iter().map(|p| p.0.len()).max().unwrap_or(0),
            target * WRITE_TASKS,
            POOL_SETUP_BUDGET.as_secs()
        );
        println!("[3/5] logout: {note}; {WRITE_TASKS} tasks, up to {secs} s");
        notes.push(note);
        let start = Instant::now();
        let deadline = start + window;
        let hs = pools
            .into_iter()
            .map(|(p, _)| tokio::spawn(logout_task(gw_addr, p, start, deadline)))
            .collect();
        let rec = merged(join_all(hs).await, start, deadline);
        let used = rec.last_done.min(deadline).duration_since(start);
        if rec.ran_out > 0 {
            notes.push(format!(
                "logout: {} of {WRITE_TASKS} tasks ran out of sessions; ops/s is over the \
                 {:.2} s used",
                rec.ran_out,
                used.as_secs_f64()
            ));
        }
        rows.push(row("logout", rec, used.as_secs_f64().max(0.001)));
        }

        // 4. proxied, after a 1 s warm-up.
        println!("[4/5] proxied: {PROXY_CONNS} connections, {secs} s (after 1 s warm-up)");
        let proxied = get_request("/api/item", &access);
        let warm = Instant::now() + Duration::from_secs(1);
        let _ = run_tasks(gw_addr, proxied.clone(), 200, PROXY_CONNS, warm)
            .await
            .await;
        let start = Instant::now();
        let a = run_tasks(gw_addr, proxied.clone(), 200, PROXY_CONNS, start + window)
            .await
            .await
            .expect("proxied tasks");
        rows.push(Row {
            name: "proxied",
            s: summarize(a, window),
            secs: secs as f64,
            per_sec: vec![],
        });

        // 5. proxied during a refresh flood, on fresh sessions: a session
        // gets slower to rotate the more often it was rotated (it keeps
        // every previous hash), so 2.'s sessions would carry 2.'s rate over.
        let hs = (0..WRITE_TASKS)
            .map(|i| {
                tokio::spawn(async move {
                    if flood_only {
                        // Scenario 2 did not create the users.
                        return setup_user(gw_addr, i).await;
                    }
                    login(&mut Client::new(gw_addr), &user_email(i))
                        .await
                        .map(|(rt, _)| rt)
                })
            })
            .collect();
        let tokens: Vec<String> = join_all(hs)
            .await
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("fresh sessions for 5.: {e}")))
            .collect();
        println!(
            "[5/5] proxied+refresh-flood: {PROXY_CONNS} connections + {WRITE_TASKS} refresh \
             tasks on fresh sessions, {secs} s"
        );
        let start = Instant::now();
        let deadline = start + window;
        let flood: Vec<_> = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| tokio::spawn(refresh_task(gw_addr, i, Some(t), start, deadline)))
            .collect();
        let b = run_tasks(gw_addr, proxied, 200, PROXY_CONNS, deadline).await;
        let b = b.await.expect("proxied tasks");
        let (recs, _): (Vec<Rec>, Vec<Option<String>>) =
            join_all(flood).await.into_iter().unzip();
        let drained = start.elapsed();
        rows.push(Row {
            name: "proxied (during refresh flood)",
            s: summarize(b, window),
            secs: secs as f64,
            per_sec: vec![],
        });
        rows.push(row(
            "refresh flood (with proxied)",
            merged(recs, start, deadline),
            secs as f64,
        ));
        notes.push(format!(
            "refresh flood drained {:.2} s after its start (window {secs} s)",
            drained.as_secs_f64()
        ));
        (rows, notes)
    });
    let rss_end = proc_status_kib("VmRSS:");
    let hwm = proc_status_kib("VmHWM:");

    let store_stats = handle.auth.store.stats();
    handle.stop();
    let _ = upstream.stop.send(true);
    let _ = upstream.thread.join();
    rt.shutdown_timeout(Duration::from_secs(2));
    let total = t_total.elapsed();

    // ---------------------------------------------------------- the table
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("portcullis store load benchmark (account-state writes over HTTP)");
    println!(
        "  machine: nproc {cores}, kernel {}; {}",
        command_output("uname", &["-r"]),
        command_output("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"])
    );
    println!(
        "  gateway server.threads = {threads}; client runtime 2 workers; upstream 1 thread \
         (all in this process)"
    );
    println!(
        "  argon2id m={} KiB t={} p={}; max_concurrent_hashes = {}{}",
        pw.argon2_memory_kib,
        pw.argon2_iterations,
        pw.argon2_parallelism,
        pw.max_concurrent_hashes,
        if default_argon {
            " (defaults)"
        } else {
            " (cheap bench params)"
        }
    );
    println!(
        "  window {secs} s per scenario; {WRITE_TASKS} write tasks and {PROXY_CONNS} proxied \
         connections, one keep-alive connection each"
    );
    println!();
    println!(
        "{:<32} {:>10} {:>9} {:>9} {:>9} {:>8} {:>7} {:>7}",
        "scenario", "ops/s", "p50 ms", "p99 ms", "max ms", "n", "errors", "secs"
    );
    println!("{}", "-".repeat(98));
    for r in &rows {
        println!(
            "{:<32} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>7} {:>7.2}",
            r.name, r.s.per_sec, r.s.p50_ms, r.s.p99_ms, r.s.max_ms, r.s.n, r.s.errors, r.secs
        );
    }
    println!("{}", "-".repeat(98));
    let rate = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .map_or(f64::NAN, |r| r.s.per_sec)
    };
    let ratio = rate("proxied (during refresh flood)") / rate("proxied");
    println!(
        "proxied during refresh flood / proxied alone: {ratio:.2}x  (target >= 0.80x: {})",
        if ratio >= 0.8 { "MET" } else { "NOT MET" }
    );
    for n in &notes {
        println!("{n}");
    }
    for r in rows.iter().filter(|r| !r.per_sec.is_empty()) {
        let v: Vec<String> = r.per_sec.iter().map(u64::to_string).collect();
        println!("{} successes per second: {}", r.name, v.join(" "));
    }
    for r in &rows {
        if let Some(e) = &r.s.first_error {
            println!("first error in {}: {e}", r.name);
        }
    }
    println!(
        "RSS at the end (whole process: gateway + upstream + client): {}, peak (VmHWM) {}",
        mib(rss_end),
        mib(hwm)
    );
    println!(
        "store: {} commits for {} write operations ({:.1} per flush on average), \
         largest batch {}, most writes in flight {}",
        store_stats.commits,
        store_stats.ops,
        store_stats.ops as f64 / store_stats.commits.max(1) as f64,
        store_stats.max_batch,
        store_stats.max_in_flight
    );
    println!(
        "whole run (set-ups included): {:.1} s; gateway stopped",
        total.as_secs_f64()
    );
    drop(dir);
}
