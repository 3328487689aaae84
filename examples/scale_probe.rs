//! Where a start's memory goes on a large sled data dir (issue 26,
//! `docs/benchmarks.md`): the resident size after each step a gateway takes
//! at start, by kind: sled itself, the revocations read, the in-memory
//! revocation set, the API key holders; and, for comparison, what the
//! steps it no longer takes would cost (every user read for the key index,
//! the `revoked` tree read whole).
//!
//! `scale_probe DB_PATH [CACHE_MB]` (the `db` directory in a data dir; run
//! it while no gateway has it open). `SCALE_PROBE_OLD=1` adds the old steps;
//! `SCALE_PROBE_SWEEP=1` ends with a maintenance sweep that removes nothing
//! (what writes the revocation snapshot, as a gateway's first sweep does);
//! `SCALE_PROBE_SIZES=1` then sums the bytes of every tree's keys and
//! values (what the data would take without sled's own overhead).
//! Uses mimalloc like the binary, so the figures compare with its RSS.

use std::path::Path;
use std::time::Instant;

use portcullis::store::{RecordKind, Store};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

struct Steps {
    last: f64,
    started: Instant,
}

impl Steps {
    fn step(&mut self, what: &str) {
        let now = rss_mib();
        println!(
            "{:>8.1} MiB  {:>+8.1} MiB  {:>6.2} s  {what}",
            now,
            now - self.last,
            self.started.elapsed().as_secs_f64()
        );
        self.last = now;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: scale_probe DB_PATH [CACHE_MB]");
        std::process::exit(2);
    };
    let cache_mb: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let old = std::env::var("SCALE_PROBE_OLD").is_ok_and(|v| v == "1");
    let mut s = Steps {
        last: rss_mib(),
        started: Instant::now(),
    };
    println!("     RSS      change   clock  step");
    s.step("process start");
    let store =
        portcullis::store::sled_store::SledStore::open_with(Path::new(path), 0, cache_mb << 20)
            .unwrap_or_else(|e| panic!("opening {path}: {e}"));
    s.step(&format!("sled open (cache {cache_mb} MiB)"));
    let revs = run(store.list_revocations());
    s.step(&format!(
        "revocations read: {} entries ({:?})",
        revs.len(),
        store.revocation_load()
    ));
    let set = portcullis::tokens::revocation::Revocations::new(&revs);
    s.step(&format!("revocation set built ({} ids)", set.len()));
    drop(revs);
    s.step("the list read dropped: the set alone stays");
    let holders = run(store.api_key_holders()).unwrap_or_default();
    s.step(&format!("API key holders read ({} users)", holders.len()));
    if old {
        let mut users = 0usize;
        let mut cursor = None;
        loop {
            let page = run(store.export(RecordKind::Users, cursor, 2000));
            users += page.records.len();
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        s.step(&format!("old: every user read for the key index ({users})"));
        let all = run(store.export(RecordKind::Revocations, None, usize::MAX));
        s.step(&format!(
            "old: the revoked tree read whole ({} entries)",
            all.records.len()
        ));
    }
    drop(set);
    if std::env::var("SCALE_PROBE_SWEEP").is_ok_and(|v| v == "1") {
        let now = portcullis::clock::Clock::now(&portcullis::clock::SystemClock);
        let year = 366 * 86_400;
        run(store.sweep(portcullis::store::Retention {
            now,
            idle_secs: year,
            failed_mail_secs: year,
            revocation_horizon: now - year as i64,
            counter_idle_secs: year,
        }));
        s.step("a sweep that removes nothing (writes the revocation snapshot)");
    }
    drop(store);
    if std::env::var("SCALE_PROBE_SIZES").is_ok_and(|v| v == "1") {
        sizes(Path::new(path));
    }
}

/// Every tree's records and the bytes of their keys and values.
fn sizes(path: &Path) {
    let db = sled::Config::new()
        .path(path)
        .cache_capacity(64 << 20)
        .open()
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut total = 0u64;
    for name in db.tree_names() {
        let tree = db.open_tree(&name).unwrap();
        let (mut n, mut bytes) = (0u64, 0u64);
        for kv in tree.iter() {
            let (k, v) = kv.unwrap();
            n += 1;
            bytes += (k.len() + v.len()) as u64;
        }
        total += bytes;
        println!(
            "tree {:<22} {n:>9} records {:>9.1} MiB of keys and values",
            String::from_utf8_lossy(&name),
            bytes as f64 / 1048576.0
        );
    }
    println!(
        "all trees: {:.1} MiB of keys and values",
        total as f64 / 1048576.0
    );
}

fn run<T>(f: impl std::future::Future<Output = portcullis::store::StoreResult<T>>) -> T {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(f).unwrap_or_else(|e| panic!("store: {e}"))
}
