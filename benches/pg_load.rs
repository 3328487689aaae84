//! Issue 11's numbers: the gateway on PostgreSQL against the gateway on
//! sled, in one run, and revocation propagation across three instances on
//! one database. The real gateways (`portcullis::start`, what the binary
//! runs) run in-process on loopback with the benches' tiny keep-alive
//! upstream; a raw HTTP/1.1 client runs on a third runtime. PostgreSQL is
//! the integration tests' throwaway cluster (tests/it/common/pg.rs: the
//! `postgres` user, an ephemeral port, `fsync=off`), stopped at the end, and
//! by its watcher whenever this process ends, however it ends. Without
//! PostgreSQL binaries the bench says so and exits 0.
//!
//! One sled gateway and one PostgreSQL gateway (A) run side by side;
//! measurements alternate between them so drift and other load on the
//! machine hit both alike:
//! 1. proxied: 32 keep-alive connections loop `GET /api/item` with a bearer
//!    on a `required` route; `PG_LOAD_SLICES` slices of `PG_LOAD_SLICE_SECS`
//!    each per backend, in the order sled, pg, pg, sled, sled, pg, … (after
//!    1 s warm-up on each); the ratio is pg / sled over the sums, and the
//!    median of the ratios of adjacent slices is printed too;
//! 2. sequential latency: one keep-alive client, `PG_LOAD_SEQ` requests of
//!    each kind (register, login, refresh, logout), alternating sled and pg
//!    request by request; p50 / p99;
//! 3. writes with 64 concurrent clients (one keep-alive connection each):
//!    register, refresh (each task rotating its own session) and logout
//!    (from a pool of sessions logged in beforehand, the same size on both
//!    backends; the rate is over the time used), `LOAD_SECS` each, sled
//!    and pg in alternating order;
//! 4. propagation: gateways B and C join A on the same database (shared
//!    signing and refresh keys, as behind a load balancer). Per sample: log
//!    in on A, check the access token passes on B and C, log out on A, then
//!    poll B and C (a request every ~1 ms each) until they answer 401; the
//!    delay is from A's 204 to B's or C's 401. `PG_LOAD_SAMPLES` samples
//!    with B and C idle, then as many while B and C each serve 32 tasks
//!    looping `POST /auth/refresh` (their catch-up query then waits for CPU
//!    and for a pool connection behind the flood).
//!
//! argon2 would hide the store, so the hash is cheap (m = 1024 KiB, t = 1,
//! 2 concurrent hashes; below the validated minimum on purpose, set on the
//! validated config), as in `store_load`. Any status other than the
//! expected one counts as an error.
//!
//! Run: `cargo bench --bench pg_load` (about 2 minutes). Environment:
//! `LOAD_SECS` (default 5: each write scenario), `PG_LOAD_SLICES` (default
//! 6), `PG_LOAD_SLICE_SECS` (default 3), `PG_LOAD_SEQ` (default 300),
//! `PG_LOAD_SAMPLES` (default 300), `PG_LOAD_POOL` (logout pool per
//! backend, default 9600), `PG_BIN` (PostgreSQL's bin directory).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::store::Store;

#[path = "support/mod.rs"]
mod support;

use support::writes::{
    command_output, join_all, json_field, login, login_request, logout_task, merged,
    refresh_request, refresh_task, register_request, register_task, row, setup_pool, setup_user,
    Client, Rec, Row,
};
use support::{
    gateway_config, get_request, pg, post_json, run_tasks, start_gateway, start_upstream,
    status_error, summarize, GatewaySpec, Stats, Summary,
};

const WRITE_TASKS: usize = 64;
const PROXY_CONNS: usize = 32;
const POOL_SETUP_BUDGET: Duration = Duration::from_secs(30);
/// A sample whose revocation has not arrived by then counts as lost.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(5);
const JWT_SECRET: &str = "pg_load: a shared HS256 secret of at least 32 bytes";
const REFRESH_SECRET: &str = "pg_load: a shared refresh-token key of 32+ bytes";
const PASSWORDS: &str = "[passwords]\nmax_concurrent_hashes = 2\nmax_queued_hashes = 128\n";

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

#[derive(Clone, Copy)]
struct Backend {
    name: &'static str,
    addr: SocketAddr,
}

// -------------------------------------------------------------- sequential

/// One of the sequential kinds, on one backend: its client and what it
/// needs to go on (the session refreshed, a pool of sessions to log out).
struct Seq {
    c: Client,
    st: Stats,
    refresh: Option<String>,
    pool: Vec<String>,
}

impl Seq {
    fn record(&mut self, t0: Instant, res: Result<support::Resp, String>, expect: u16) -> bool {
        match res {
            Ok(r) if r.status == expect => {
                self.st.lat_us.push(t0.elapsed().as_micros() as u64);
                self.st.ok_in_window += 1;
                true
            }
            Ok(r) => {
                self.st.errors += 1;
                self.st.first_error.get_or_insert_with(|| status_error(&r));
                false
            }
            Err(e) => {
                self.st.errors += 1;
                self.st.first_error.get_or_insert(e);
                false
            }
        }
    }

    async fn step(&mut self, kind: &str, i: usize) {
        match kind {
            "register" => {
                let raw = register_request(&format!("seq{i}@bench.test"));
                let t0 = Instant::now();
                let res = self.c.send(&raw).await;
                self.record(t0, res, 201);
            }
            "login" => {
                let raw = login_request("seq@bench.test");
                let t0 = Instant::now();
                let res = self.c.send(&raw).await;
                self.record(t0, res, 200);
            }
            "refresh" => {
                let Some(t) = self.refresh.take() else {
                    self.st.errors += 1;
                    return;
                };
                let raw = refresh_request("/auth/refresh", &t);
                let t0 = Instant::now();
                let res = self.c.send(&raw).await;
                if let Ok(r) = &res {
                    self.refresh = json_field(r, "refresh_token");
                }
                self.record(t0, res, 200);
                if self.refresh.is_none() {
                    // Go on from a fresh session (not timed).
                    self.refresh = login(&mut self.c, "seq@bench.test")
                        .await
                        .ok()
                        .map(|(rt, _)| rt);
                }
            }
            "logout" => {
                let Some(t) = self.pool.pop() else {
                    self.st.errors += 1;
                    return;
                };
                let raw = refresh_request("/auth/logout", &t);
                let t0 = Instant::now();
                let res = self.c.send(&raw).await;
                self.record(t0, res, 204);
            }
            _ => unreachable!(),
        }
    }
}

async fn sequential(backends: [Backend; 2], n: usize) -> Vec<(&'static str, [Summary; 2])> {
    let mut out = Vec::new();
    let mut prep = Vec::new();
    for b in backends {
        let mut c = Client::new(b.addr);
        let r = c
            .send(&register_request("seq@bench.test"))
            .await
            .expect("register seq user");
        assert_eq!(r.status, 201, "{}: {}", b.name, status_error(&r));
        let refresh = login(&mut c, "seq@bench.test").await.expect("login").0;
        let mut pool = Vec::with_capacity(n);
        for _ in 0..n {
            pool.push(login(&mut c, "seq@bench.test").await.expect("login").0);
        }
        prep.push(Seq {
            c,
            st: Stats::default(),
            refresh: Some(refresh),
            pool,
        });
    }
    for kind in ["register", "login", "refresh", "logout"] {
        for s in prep.iter_mut() {
            s.st = Stats::default();
        }
        let t = Instant::now();
        for i in 0..n {
            // Alternate which backend goes first, too.
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for k in order {
                prep[k].step(kind, i).await;
            }
        }
        let took = t.elapsed() / 2;
        let sums = [
            summarize(std::mem::take(&mut prep[0].st), took),
            summarize(std::mem::take(&mut prep[1].st), took),
        ];
        out.push((kind, sums));
    }
    out
}

// -------------------------------------------------------------- concurrent

/// 64 tasks of `kind` on `b` for `window`; the row.
async fn flood(b: Backend, kind: &'static str, window: Duration, pool_size: usize) -> Row {
    let addr = b.addr;
    match kind {
        "register" => {
            let start = Instant::now();
            let deadline = start + window;
            let hs = (0..WRITE_TASKS)
                .map(|t| tokio::spawn(register_task(addr, t, start, deadline)))
                .collect();
            row(
                "register",
                merged(join_all(hs).await, start, deadline),
                window.as_secs_f64(),
            )
        }
        "refresh" => {
            let hs = (0..WRITE_TASKS)
                .map(|i| tokio::spawn(setup_user(addr, i)))
                .collect();
            let tokens: Vec<String> = join_all(hs)
                .await
                .into_iter()
                .map(|r| r.unwrap_or_else(|e| panic!("{}: refresh users: {e}", b.name)))
                .collect();
            let start = Instant::now();
            let deadline = start + window;
            let hs = tokens
                .into_iter()
                .enumerate()
                .map(|(i, t)| tokio::spawn(refresh_task(addr, i, Some(t), start, deadline)))
                .collect();
            let (recs, _): (Vec<Rec>, Vec<Option<String>>) = join_all(hs).await.into_iter().unzip();
            row(
                "refresh",
                merged(recs, start, deadline),
                window.as_secs_f64(),
            )
        }
        "logout" => {
            // The users of "refresh" (which runs first) log in again.
            let per_task = pool_size.div_ceil(WRITE_TASKS);
            let until = Instant::now() + POOL_SETUP_BUDGET;
            let hs = (0..WRITE_TASKS)
                .map(|i| tokio::spawn(setup_pool(addr, i, per_task, until)))
                .collect();
            let pools: Vec<(Vec<String>, Option<String>)> = join_all(hs).await;
            if let Some(e) = pools.iter().find_map(|p| p.1.clone()) {
                println!("  {}: logout pool set-up: first error: {e}", b.name);
            }
            let start = Instant::now();
            let deadline = start + window;
            let hs = pools
                .into_iter()
                .map(|(p, _)| tokio::spawn(logout_task(addr, p, start, deadline)))
                .collect();
            let rec = merged(join_all(hs).await, start, deadline);
            let used = rec.last_done.min(deadline).duration_since(start);
            row("logout", rec, used.as_secs_f64().max(0.001))
        }
        _ => unreachable!(),
    }
}

// ------------------------------------------------------------- propagation

/// Poll `addr` with `access` until it answers 401; the time since `from`,
/// or `None` past [`PROPAGATION_LIMIT`].
async fn until_refused(addr: SocketAddr, access: String, from: Instant) -> Option<Duration> {
    let mut c = Client::new(addr);
    let raw = get_request("/api/item", &access);
    loop {
        if let Ok(r) = c.send(&raw).await {
            if r.status == 401 {
                return Some(from.elapsed());
            }
        }
        if from.elapsed() > PROPAGATION_LIMIT {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

struct Propagation {
    /// B's and C's delays, each sample.
    each: Vec<u64>,
    /// The later of the two, each sample: when the token is dead everywhere.
    both: Vec<u64>,
    /// A's logout latency.
    logout: Vec<u64>,
    lost: usize,
    errors: usize,
}

async fn propagation(a: SocketAddr, others: [SocketAddr; 2], samples: usize) -> Propagation {
    let mut c = Client::new(a);
    let mut checks: Vec<Client> = others.iter().map(|&o| Client::new(o)).collect();
    let mut out = Propagation {
        each: Vec::new(),
        both: Vec::new(),
        logout: Vec::new(),
        lost: 0,
        errors: 0,
    };
    // Two warm-up samples, not recorded: B's and C's listeners connect.
    for i in 0..samples + 2 {
        let Ok((refresh, access)) = login(&mut c, "prop@bench.test").await else {
            out.errors += 1;
            continue;
        };
        let mut live = true;
        for k in checks.iter_mut() {
            let r = k.send(&get_request("/api/item", &access)).await;
            live &= r.is_ok_and(|r| r.status == 200);
        }
        if !live {
            out.errors += 1;
            continue;
        }
        let raw = post_json(
            "/auth/logout",
            &serde_json::json!({ "refresh_token": refresh }),
        );
        let t0 = Instant::now();
        let r = c.send(&raw).await;
        let acked = Instant::now();
        if !r.is_ok_and(|r| r.status == 204) {
            out.errors += 1;
            continue;
        }
        let polls: Vec<_> = others
            .iter()
            .map(|&o| tokio::spawn(until_refused(o, access.clone(), acked)))
            .collect();
        let delays: Vec<Option<Duration>> = join_all(polls).await;
        if i < 2 {
            continue;
        }
        out.logout.push(acked.duration_since(t0).as_micros() as u64);
        if delays.iter().any(Option::is_none) {
            out.lost += 1;
            continue;
        }
        let us: Vec<u64> = delays
            .iter()
            .map(|d| d.unwrap_or_default().as_micros() as u64)
            .collect();
        out.both.push(us.iter().copied().max().unwrap_or(0));
        out.each.extend(us);
    }
    out
}

/// [`propagation`] while B and C each serve 32 refresh tasks (the users
/// of the refresh scenario, on A's database): the feed's catch-up query
/// then queues for a pool connection and for CPU behind the flood. The
/// samples and the refreshes per second of the flood.
async fn propagation_loaded(
    a: SocketAddr,
    others: [SocketAddr; 2],
    stores: [Arc<dyn Store>; 2],
    samples: usize,
) -> (Propagation, f64) {
    let hs = (0..WRITE_TASKS)
        .map(|i| {
            let addr = others[i % 2];
            tokio::spawn(async move {
                login(&mut Client::new(addr), &support::writes::user_email(i))
                    .await
                    .map(|(rt, _)| rt)
            })
        })
        .collect();
    let tokens: Vec<String> = join_all(hs)
        .await
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("flood sessions on B and C: {e}")))
        .collect();
    let start = Instant::now();
    // Ended by `abort` once the samples are taken.
    let deadline = start + Duration::from_secs(600);
    let flood: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| tokio::spawn(refresh_task(others[i % 2], i, Some(t), start, deadline)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    // Write operations acknowledged by B and C: the flood's refreshes (and
    // nothing else: the samples write on A).
    let writes = || stores.iter().map(|s| s.stats().ops).sum::<u64>();
    let before = writes();
    let out = propagation(a, others, samples).await;
    let rate = (writes() - before) as f64 / t.elapsed().as_secs_f64();
    for h in flood {
        h.abort();
    }
    (out, rate)
}

fn pct_ms(v: &[u64], p: usize) -> f64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() * p).div_ceil(100)).clamp(1, v.len()) - 1;
    v[i] as f64 / 1000.0
}

// -------------------------------------------------------------------- main

fn main() {
    let secs = env_num("LOAD_SECS", 5) as u64;
    let window = Duration::from_secs(secs);
    let slices = env_num("PG_LOAD_SLICES", 6);
    let slice = Duration::from_secs(env_num("PG_LOAD_SLICE_SECS", 3) as u64);
    let seq_n = env_num("PG_LOAD_SEQ", 300);
    let samples = env_num("PG_LOAD_SAMPLES", 300);
    let pool_size = env_num("PG_LOAD_POOL", 9600);

    let cluster = match pg::cluster() {
        Ok(c) => c,
        Err(why) => {
            let why = why.trim();
            println!("pg_load skipped: no PostgreSQL to run ({why}); set PG_BIN or install it");
            return;
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .unwrap();
    let url = rt.block_on(cluster.database());
    let pg_version = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect to the bench cluster");
        let conn = tokio::spawn(conn);
        let v: String = client
            .query_one("SHOW server_version", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or_else(|_| "?".into());
        drop(client);
        let _ = conn.await;
        v
    });

    let upstream = start_upstream();
    let env = [
        ("PORTCULLIS_JWT_SECRET", JWT_SECRET),
        ("PORTCULLIS_REFRESH_SECRET", REFRESH_SECRET),
    ];
    let pg_extra = format!("{PASSWORDS}\n[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\n");
    let boot = |extra: &str| {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = gateway_config(
            upstream.addr,
            dir.path(),
            &GatewaySpec {
                extra,
                env: &env,
                cheap_argon: true,
            },
        );
        let pw = cfg.passwords.clone();
        let (handle, addr) = start_gateway(cfg);
        (handle, addr, dir, pw)
    };
    let t_total = Instant::now();
    let (sled_gw, sled_addr, _sled_dir, pw) = boot(PASSWORDS);
    let (pg_a, a_addr, _a_dir, _) = boot(&pg_extra);
    let sled = Backend {
        name: "sled",
        addr: sled_addr,
    };
    let pgb = Backend {
        name: "postgres",
        addr: a_addr,
    };
    let backends = [sled, pgb];

    println!(
        "pg_load: PostgreSQL {pg_version} on 127.0.0.1:{} (fsync=off); argon2id m={} KiB t={} \
         (cheap bench params), max_concurrent_hashes = {}",
        cluster.port, pw.argon2_memory_kib, pw.argon2_iterations, pw.max_concurrent_hashes
    );

    let (proxied, seq, writes) = rt.block_on(async {
        // Sanity, and a token for the proxied load on each backend.
        let mut tokens = Vec::new();
        for b in backends {
            let mut c = Client::new(b.addr);
            let r = c
                .send(&register_request("probe@bench.test"))
                .await
                .expect("register");
            assert_eq!(r.status, 201, "{}: register: {}", b.name, status_error(&r));
            let (_, access) = login(&mut c, "probe@bench.test").await.expect("login");
            let r = c
                .send(&get_request("/api/item", &access))
                .await
                .expect("proxied");
            assert_eq!(r.status, 200, "{}: proxied: {}", b.name, status_error(&r));
            assert_eq!(r.body, b"ok");
            tokens.push(get_request("/api/item", &access));
        }

        // 1. proxied, alternating.
        println!(
            "[1/3] proxied: {slices} slices of {} s per backend, {PROXY_CONNS} connections",
            slice.as_secs()
        );
        for (k, b) in backends.iter().enumerate() {
            let warm = Instant::now() + Duration::from_secs(1);
            let _ = run_tasks(b.addr, tokens[k].clone(), 200, PROXY_CONNS, warm)
                .await
                .await;
        }
        let mut proxied: [(Stats, Vec<f64>); 2] = Default::default();
        for s in 0..slices * 2 {
            // sled, pg, pg, sled, sled, pg, …
            let k = s.div_ceil(2) % 2;
            let start = Instant::now();
            let st = run_tasks(
                backends[k].addr,
                tokens[k].clone(),
                200,
                PROXY_CONNS,
                start + slice,
            )
            .await
            .await
            .expect("proxied tasks");
            proxied[k]
                .1
                .push(st.ok_in_window as f64 / slice.as_secs_f64());
            proxied[k].0.merge(st);
        }
        let proxied = proxied.map(|(st, per)| (summarize(st, slice * slices as u32), per));

        // 2. sequential latency.
        println!(
            "[2/3] sequential: {seq_n} of each kind per backend, alternating request by request"
        );
        let seq = sequential(backends, seq_n).await;

        // 3. 64 concurrent clients.
        let mut writes: Vec<[Option<Row>; 2]> = Vec::new();
        for (j, kind) in ["register", "refresh", "logout"].into_iter().enumerate() {
            println!(
                "[3/3] {kind}: {WRITE_TASKS} tasks, {secs} s per backend{}",
                if kind == "logout" {
                    format!(", from a pool of {pool_size} sessions each")
                } else {
                    String::new()
                }
            );
            let mut pair: [Option<Row>; 2] = [None, None];
            let order = if j % 2 == 0 { [0, 1] } else { [1, 0] };
            for k in order {
                pair[k] = Some(flood(backends[k], kind, window, pool_size).await);
            }
            writes.push(pair);
        }
        (proxied, seq, writes)
    });

    // 4. propagation: B and C join A on the same database.
    println!("[4/4] propagation: gateways B and C on A's database; {samples} samples, idle");
    let (pg_b, b_addr, _b_dir, _) = boot(&pg_extra);
    let (pg_c, c_addr, _c_dir, _) = boot(&pg_extra);
    let stores = [pg_b.auth.store.clone(), pg_c.auth.store.clone()];
    let (prop, loaded, flood_rate) = rt.block_on(async {
        let mut c = Client::new(a_addr);
        let r = c
            .send(&register_request("prop@bench.test"))
            .await
            .expect("register prop user");
        assert_eq!(r.status, 201, "{}", status_error(&r));
        let idle = propagation(a_addr, [b_addr, c_addr], samples).await;
        println!("[4/4] propagation while B and C serve 64 refresh tasks; {samples} samples");
        let (loaded, rate) = propagation_loaded(a_addr, [b_addr, c_addr], stores, samples).await;
        (idle, loaded, rate)
    });

    let store_stats = pg_a.auth.store.stats();
    for h in [sled_gw, pg_a, pg_b, pg_c] {
        h.stop();
    }
    let _ = upstream.stop.send(true);
    let _ = upstream.thread.join();
    rt.shutdown_timeout(Duration::from_secs(2));
    let cluster_stopped = cluster.stop();
    let total = t_total.elapsed();

    // ---------------------------------------------------------- the tables
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("portcullis pg_load: PostgreSQL against sled, same run");
    println!(
        "  machine: nproc {cores}, kernel {}; {}; PostgreSQL {pg_version} (fsync=off, local)",
        command_output("uname", &["-r"]),
        command_output("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"])
    );
    println!(
        "  each gateway: server.threads = 2; client runtime 2 workers; upstream 1 thread; \
         all in this process"
    );
    println!();
    println!(
        "{:<44} {:>18} {:>18} {:>8}",
        "proxied GET, 32 connections", "sled", "postgres", "pg/sled"
    );
    println!("{}", "-".repeat(92));
    let (ps, pp) = (&proxied[0].0, &proxied[1].0);
    println!(
        "{:<44} {:>18.0} {:>18.0} {:>7.3}x",
        "req/s",
        ps.per_sec,
        pp.per_sec,
        pp.per_sec / ps.per_sec
    );
    println!(
        "{:<44} {:>18} {:>18}",
        "p50 / p99 ms",
        format!("{:.2} / {:.2}", ps.p50_ms, ps.p99_ms),
        format!("{:.2} / {:.2}", pp.p50_ms, pp.p99_ms)
    );
    let slice_list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("  per slice, sled: {}", slice_list(&proxied[0].1));
    println!("  per slice, pg:   {}", slice_list(&proxied[1].1));
    // Slices run sled, pg, pg, sled, …: slice i of each backend is adjacent.
    let mut pairs: Vec<f64> = proxied[1]
        .1
        .iter()
        .zip(&proxied[0].1)
        .map(|(p, s)| p / s)
        .collect();
    pairs.sort_by(f64::total_cmp);
    println!(
        "  pg/sled of adjacent slices: {} (median {:.3}x)",
        pairs
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(" "),
        pairs.get(pairs.len() / 2).copied().unwrap_or(f64::NAN)
    );
    println!(
        "  target >= 0.95x: {}",
        if pp.per_sec / ps.per_sec >= 0.95 {
            "MET"
        } else {
            "NOT MET"
        }
    );
    println!();
    println!(
        "{:<44} {:>18} {:>18} {:>8}",
        "sequential, 1 client: p50 / p99 ms", "sled", "postgres", "p50 pg/s"
    );
    println!("{}", "-".repeat(92));
    for (kind, s) in &seq {
        println!(
            "{:<44} {:>18} {:>18} {:>7.2}x",
            format!("{kind} (n = {} / {})", s[0].n, s[1].n),
            format!("{:.2} / {:.2}", s[0].p50_ms, s[0].p99_ms),
            format!("{:.2} / {:.2}", s[1].p50_ms, s[1].p99_ms),
            s[1].p50_ms / s[0].p50_ms
        );
    }
    println!();
    println!(
        "{:<44} {:>18} {:>18} {:>8}",
        "64 clients: ops/s (p50 / p99 ms)", "sled", "postgres", "pg/sled"
    );
    println!("{}", "-".repeat(92));
    for pair in &writes {
        let [Some(s), Some(p)] = pair else { continue };
        println!(
            "{:<44} {:>18} {:>18} {:>7.2}x",
            format!("{} ({:.1} s / {:.1} s)", s.name, s.secs, p.secs),
            format!("{:.0} ({:.1} / {:.1})", s.s.per_sec, s.s.p50_ms, s.s.p99_ms),
            format!("{:.0} ({:.1} / {:.1})", p.s.per_sec, p.s.p50_ms, p.s.p99_ms),
            p.s.per_sec / s.s.per_sec
        );
    }
    println!();
    println!(
        "revocation propagation, A -> B and C: logout on A, from A's 204 to B's / C's 401 \
         (polled every ~1 ms)"
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>8}",
        "", "p50 ms", "p99 ms", "max ms", "n"
    );
    println!("{}", "-".repeat(92));
    let mut met = true;
    for (label, p) in [
        ("idle".to_string(), &prop),
        (
            format!("B and C under a refresh flood ({flood_rate:.0}/s)"),
            &loaded,
        ),
    ] {
        println!("{label}:");
        for (name, v) in [
            ("  each instance (B and C, 2 per sample)", &p.each),
            ("  both (the later of B and C)", &p.both),
            ("  A's logout itself (latency)", &p.logout),
        ] {
            println!(
                "{:<44} {:>9.2} {:>9.2} {:>9.2} {:>8}",
                name,
                pct_ms(v, 50),
                pct_ms(v, 99),
                pct_ms(v, 100),
                v.len()
            );
        }
        println!(
            "  lost (no 401 within {} s): {}; sample errors: {}",
            PROPAGATION_LIMIT.as_secs(),
            p.lost,
            p.errors
        );
        met &= p.lost == 0 && pct_ms(&p.both, 99) < 1000.0;
    }
    println!(
        "  target p99 < 1 s: {}",
        if met { "MET" } else { "NOT MET" }
    );
    println!();
    let mut errors = Vec::new();
    for (k, b) in backends.iter().enumerate() {
        if let Some(e) = &proxied[k].0.first_error {
            errors.push(format!("proxied {}: {e}", b.name));
        }
        for (kind, s) in &seq {
            if let Some(e) = &s[k].first_error {
                errors.push(format!("sequential {kind} {}: {e}", b.name));
            }
        }
        for pair in &writes {
            if let Some(r) = &pair[k] {
                if r.s.errors > 0 {
                    errors.push(format!(
                        "{} {}: {} errors, first: {}",
                        r.name,
                        b.name,
                        r.s.errors,
                        r.s.first_error.as_deref().unwrap_or("?")
                    ));
                }
            }
        }
    }
    for e in &errors {
        println!("error: {e}");
    }
    println!(
        "postgres A: {} commits for {} write operations, most in flight {}",
        store_stats.commits, store_stats.ops, store_stats.max_in_flight
    );
    println!(
        "whole run {:.1} s; gateways stopped; PostgreSQL cluster {}",
        total.as_secs_f64(),
        if cluster_stopped {
            "stopped and removed"
        } else {
            "NOT seen stopping (its watcher stops it when this process exits)"
        }
    );
}
