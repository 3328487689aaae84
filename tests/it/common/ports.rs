//! Ports for the gateways, upstreams, SMTP receivers and PostgreSQL
//! clusters the tests start, without races.
//!
//! The old way (bind `:0`, close, hand the number to the gateway later)
//! raced: the kernel hands the same ephemeral range to every `:0` bind and
//! every outgoing connection's source port, in this process and in any
//! other, so a port could be taken between the reservation and the
//! gateway's bind (issue 27: `Connection refused` right after a start).
//! Pingora cannot bind `:0` and report the port, so the harness chooses
//! the ports itself, under two rules:
//!
//! - **Outside the OS ephemeral range** (`/proc/sys/net/ipv4/ip_local_port_range`):
//!   no `:0` bind and no outgoing connection is ever given one of them.
//! - **Owned by one test process**: ports are taken in blocks of
//!   [`BLOCK`]; a block belongs to the process that holds the lock of its
//!   file under [`lock_dir`] (`flock`, released by the kernel when the
//!   process ends, however it ends), so two suites running at once never
//!   share a port. Within a process no port is handed out twice.
//!
//! A port something else on the machine already listens on is skipped.
//! Every test that needs "a free port" or "a dead port" (an upstream
//! nobody listens on, a second gateway binary) takes it from
//! [`free_port`]: nothing else may choose a port number.

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;

/// Ports per block (one lock file each).
pub const BLOCK: u16 = 100;

/// The lowest port used: below are well-known and registered services
/// (PostgreSQL's 5432, 8080, 9100, …).
const FLOOR: u16 = 10_000;

/// Where the block locks live: shared by every test process on the
/// machine (`PORTCULLIS_TEST_PORT_LOCKS` overrides it).
pub fn lock_dir() -> PathBuf {
    std::env::var_os("PORTCULLIS_TEST_PORT_LOCKS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/portcullis-test-ports"))
}

/// The OS ephemeral range, inclusive (Linux's default when unreadable).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// The first port of every block wholly outside the ephemeral range.
fn blocks() -> Vec<u16> {
    let (lo, hi) = ephemeral_range();
    let mut out = Vec::new();
    let mut start = FLOOR;
    while let Some(end) = start.checked_add(BLOCK - 1) {
        if end < lo || start > hi {
            out.push(start);
        }
        match start.checked_add(BLOCK) {
            Some(next) => start = next,
            None => break,
        }
    }
    out
}

struct Owned {
    /// Locks held for the life of the process.
    locks: Vec<File>,
    /// The block being handed out: its next port and its end (exclusive).
    next: u16,
    end: u16,
}

static OWNED: Mutex<Owned> = Mutex::new(Owned {
    locks: Vec::new(),
    next: 0,
    end: 0,
});

/// Lock one more block that no other process holds; its first port.
fn take_block(held: &mut Vec<File>) -> u16 {
    let dir = lock_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let all = blocks();
    assert!(!all.is_empty(), "no port block outside the ephemeral range");
    // Start at a place that depends on the process, so concurrent suites
    // rarely try the same files first.
    let first = std::process::id() as usize % all.len();
    for i in 0..all.len() {
        let start = all[(first + i) % all.len()];
        let path = dir.join(format!("block-{start}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if file.try_lock().is_ok() {
            held.push(file);
            return start;
        }
    }
    panic!(
        "every test port block under {} is held by another process",
        dir.display()
    )
}

/// Is nothing listening on (or bound to) `port` on any IPv4 address?
fn bindable(port: u16) -> bool {
    TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// A loopback port this process owns (see the module's rules): nobody
/// else binds it, nobody connects from it; never handed out twice.
pub fn free_port() -> u16 {
    let mut owned = OWNED.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if owned.next >= owned.end {
            let start = take_block(&mut owned.locks);
            owned.next = start;
            owned.end = start + BLOCK;
        }
        let port = owned.next;
        owned.next += 1;
        if bindable(port) {
            return port;
        }
    }
}

/// A lock shared by every test process on the machine, taken (waiting)
/// under `name` and held until the returned file is dropped: for the few
/// tests that must use fixed ports (the built-in defaults 8080, 8443,
/// 9100), so two suites never race for them.
pub fn machine_lock(name: &str) -> File {
    let dir = lock_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let path = dir.join(format!("{name}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    file
}

#[test]
fn blocks_lie_outside_the_ephemeral_range() {
    let (lo, hi) = ephemeral_range();
    let all = blocks();
    assert!(all.len() > 10, "{all:?}");
    for b in all {
        assert!(b + BLOCK - 1 < lo || b > hi, "{b} overlaps {lo}-{hi}");
        assert!(b >= FLOOR);
    }
    let p = free_port();
    assert!(p < lo || p > hi, "{p}");
    assert_ne!(p, free_port());
}
