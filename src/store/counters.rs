//! Counters kept in memory: the sled backend's throttle and lockout state
//! (written out by [`super::Store::checkpoint`] every second, so a restart
//! keeps an attacker's budget) and the per-route rate limits, which sit on
//! the proxy's hot path and never leave memory. The counting rules are the
//! pure [`Counter`] methods in [`super::domain`]; this is only the map,
//! bounded, and the set of keys changed since the last checkpoint.
//!
//! **What a full map gives up.** The map holds at most [`MAX_ENTRIES`]
//! counters. Two kinds live in it: *budgets* (per-IP and per-address
//! throttles, per-route limits: [`MemCounters::hit`]) and *attempt
//! counters* (the account lockout: [`MemCounters::reserve`] and
//! [`MemCounters::settle`]). When the map is full, counters that hold
//! nothing are dropped first (no loss), then the oldest budgets. An attempt
//! counter that holds failures, a lock or an attempt in flight is never
//! dropped to make room: a flood of other keys cannot reset an account's
//! failure count. When the map is full of such counters, a *new* key is
//! refused ([`REFUSED_RETRY_SECS`], a 429 to the client) rather than an
//! old one forgotten.

use std::collections::{HashMap, HashSet};

use parking_lot::Mutex;

use super::domain::LockoutPolicy;
use super::Counter;

/// Entries kept at most; beyond that, empty then the oldest budget entries
/// go first, and attempt counters holding anything never.
const MAX_ENTRIES: usize = 200_000;
/// Retry-After for a new key refused because the map is full of attempt
/// counters that hold state.
pub const REFUSED_RETRY_SECS: u64 = 60;
/// The window assumed for a counter loaded from disk until a call names
/// its own (the longest any caller uses by default).
const LOADED_WINDOW: u64 = 3600;

pub struct MemCounters {
    inner: Mutex<Inner>,
    max_entries: usize,
}

impl Default for MemCounters {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

#[derive(Default)]
struct Inner {
    counters: HashMap<String, Entry>,
    dirty: HashSet<String>,
    /// A full map found nothing to drop at this second: do not scan again
    /// before the next one (a flood of new keys would scan per request).
    full_at: Option<i64>,
}

#[derive(Clone, Copy)]
struct Entry {
    c: Counter,
    /// The window its caller counts in (for "holds nothing").
    window: u64,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A throttle budget: the oldest go first when the map is full.
    Budget,
    /// An attempt counter (lockout): never dropped while it holds state.
    Attempts,
    /// Loaded from disk and not used since: kept like an attempt counter
    /// until a call says what it is.
    Loaded,
}

impl Entry {
    /// Holds nothing a fresh counter would not: dropping it loses nothing.
    fn is_empty(&self, now: i64) -> bool {
        let c = &self.c;
        c.pending == 0
            && c.locked_until <= now
            && (c.count == 0 || now >= c.window_start.saturating_add(self.window as i64))
    }
}

impl MemCounters {
    pub fn new(saved: Vec<(String, Counter)>) -> Self {
        Self::with_capacity(saved, MAX_ENTRIES)
    }

    fn with_capacity(saved: Vec<(String, Counter)>, max_entries: usize) -> Self {
        let counters = saved
            .into_iter()
            .map(|(k, c)| {
                (
                    k,
                    Entry {
                        c,
                        window: LOADED_WINDOW,
                        kind: Kind::Loaded,
                    },
                )
            })
            .collect();
        Self {
            inner: Mutex::new(Inner {
                counters,
                ..Inner::default()
            }),
            max_entries,
        }
    }

    /// Count one event against `key`: at most `limit` per `window` seconds;
    /// `Err(retry_after)` when the budget is spent (or the map is full of
    /// attempt counters and `key` is new). A limit of 0 is "off".
    pub fn hit(&self, key: &str, limit: u32, window: u64, now: i64) -> Result<(), u64> {
        if limit == 0 {
            return Ok(());
        }
        let mut g = self.inner.lock();
        let e = g
            .entry(key, Kind::Budget, window, now, self.max_entries)
            .ok_or(REFUSED_RETRY_SECS)?;
        e.c.hit(now, limit, window)?;
        g.mark(key);
        Ok(())
    }

    /// Reserve one attempt (see [`Counter::reserve`]).
    pub fn reserve(&self, key: &str, policy: &LockoutPolicy, now: i64) -> Result<(), u64> {
        let mut g = self.inner.lock();
        let e = g
            .entry(
                key,
                Kind::Attempts,
                policy.window_secs,
                now,
                self.max_entries,
            )
            .ok_or(REFUSED_RETRY_SECS)?;
        e.c.reserve(now, policy)?;
        // In flight only: nothing to write out until it is settled.
        Ok(())
    }

    /// Settle a reservation (see [`Counter::settle`]); true when this
    /// failure locked the key.
    pub fn settle(&self, key: &str, policy: &LockoutPolicy, failed: bool, now: i64) -> bool {
        let mut g = self.inner.lock();
        // A reservation in flight keeps its counter: it is there (the
        // capacity is not asked again).
        let e = g.entry(key, Kind::Attempts, policy.window_secs, now, usize::MAX);
        let locked = e.is_some_and(|e| e.c.settle(now, policy, failed));
        g.mark(key);
        locked
    }

    /// Forget what `key` counted and lift its lock; attempts in flight
    /// stay in flight.
    pub fn clear(&self, key: &str) {
        let mut g = self.inner.lock();
        if let Some(e) = g.counters.get_mut(key) {
            e.c = Counter {
                pending: e.c.pending,
                ..Counter::default()
            };
            g.mark(key);
        }
    }

    /// The entries changed since the last call (`None`: delete it). On a
    /// failed write, hand them back with [`MemCounters::mark_dirty`].
    pub fn take_dirty(&self) -> Vec<(String, Option<Counter>)> {
        let mut g = self.inner.lock();
        let dirty: Vec<String> = g.dirty.drain().collect();
        dirty
            .into_iter()
            .map(|k| {
                let v = g.counters.get(&k).map(|e| Counter { pending: 0, ..e.c });
                (k, v)
            })
            .collect()
    }

    /// Set `key` as a copy found it (an import); not written out again.
    pub fn put(&self, key: String, c: Counter) {
        let mut g = self.inner.lock();
        let old = g.counters.get(&key).copied();
        let pending = old.map_or(0, |e| e.c.pending);
        g.counters.insert(
            key,
            Entry {
                c: Counter { pending, ..c },
                window: old.map_or(LOADED_WINDOW, |e| e.window),
                kind: old.map_or(Kind::Loaded, |e| e.kind),
            },
        );
    }

    pub fn mark_dirty(&self, keys: impl IntoIterator<Item = String>) {
        self.inner.lock().dirty.extend(keys);
    }

    /// Drop counters that hold nothing any more (no lock, nothing in
    /// flight, window over). Returns how many.
    pub fn forget_idle(&self, now: i64, window: u64) -> usize {
        let mut g = self.inner.lock();
        let idle: Vec<String> = g
            .counters
            .iter()
            .filter(|(_, e)| e.c.is_idle(now, window))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &idle {
            g.counters.remove(k);
            g.dirty.insert(k.clone());
        }
        idle.len()
    }

    #[cfg(test)]
    fn get(&self, key: &str) -> Option<Counter> {
        self.inner.lock().counters.get(key).map(|e| e.c)
    }
}

impl Inner {
    /// The entry of `key`, created if there is room (see [`Inner::make_room`]);
    /// `None` when the map is full of attempt counters holding state.
    fn entry(
        &mut self,
        key: &str,
        kind: Kind,
        window: u64,
        now: i64,
        max_entries: usize,
    ) -> Option<&mut Entry> {
        // No allocation for a key already counted (the common case).
        if !self.counters.contains_key(key) {
            if !self.make_room(now, max_entries) {
                return None;
            }
            self.counters.insert(
                key.to_string(),
                Entry {
                    c: Counter::default(),
                    window,
                    kind,
                },
            );
        }
        let e = self.counters.get_mut(key).expect("inserted above");
        // A counter loaded from disk learns its kind and window from use.
        e.window = window;
        if e.kind == Kind::Loaded {
            e.kind = kind;
        }
        Some(e)
    }

    fn mark(&mut self, key: &str) {
        if !self.dirty.contains(key) {
            self.dirty.insert(key.to_string());
        }
    }

    /// Keep the map bounded: drop what holds nothing, then the oldest
    /// budgets; never an attempt counter that holds state. False when
    /// there is still no room.
    fn make_room(&mut self, now: i64, max_entries: usize) -> bool {
        if self.counters.len() < max_entries {
            return true;
        }
        if self.full_at == Some(now) {
            return false;
        }
        let empty: Vec<String> = self
            .counters
            .iter()
            .filter(|(_, e)| e.is_empty(now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in empty {
            self.counters.remove(&k);
            self.dirty.insert(k);
        }
        if self.counters.len() >= max_entries {
            let mut by_age: Vec<(i64, String)> = self
                .counters
                .iter()
                .filter(|(_, e)| e.kind == Kind::Budget)
                .map(|(k, e)| (e.c.window_start, k.clone()))
                .collect();
            by_age.sort();
            for (_, k) in by_age.into_iter().take((max_entries / 10).max(1)) {
                self.counters.remove(&k);
                self.dirty.insert(k);
            }
        }
        let room = self.counters.len() < max_entries;
        self.full_at = (!room).then_some(now);
        room
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_count_only_when_settled_as_failures() {
        let m = MemCounters::default();
        let p = LockoutPolicy {
            max_failures: 2,
            window_secs: 60,
            lock_secs: 30,
        };
        m.reserve("k", &p, 1000).unwrap();
        m.reserve("k", &p, 1000).unwrap();
        assert_eq!(m.reserve("k", &p, 1000), Err(1), "two in flight");
        assert!(m.take_dirty().is_empty(), "reservations are not state");
        assert!(!m.settle("k", &p, false, 1000));
        assert!(!m.settle("k", &p, true, 1000));
        m.reserve("k", &p, 1000).unwrap();
        assert!(m.settle("k", &p, true, 1000), "the second failure locks");
        assert_eq!(m.reserve("k", &p, 1010), Err(20));
        let dirty = m.take_dirty();
        assert_eq!(dirty.len(), 1);
        assert_eq!(dirty[0].1.unwrap().locked_until, 1030);
        m.clear("k");
        m.reserve("k", &p, 1010).unwrap();
        assert_eq!(
            m.get("k").unwrap().pending,
            1,
            "clear keeps what is in flight"
        );
        assert_eq!(m.take_dirty()[0].1.unwrap().pending, 0, "never written");
    }

    #[test]
    fn hits_are_bounded_per_window_and_idle_keys_are_forgotten() {
        let m = MemCounters::default();
        assert_eq!(m.hit("ip", 2, 60, 100), Ok(()));
        assert_eq!(m.hit("ip", 2, 60, 110), Ok(()));
        assert_eq!(m.hit("ip", 2, 60, 120), Err(40));
        assert_eq!(m.hit("off", 0, 60, 120), Ok(()));
        assert_eq!(m.forget_idle(150, 60), 0);
        assert_eq!(m.hit("ip", 2, 60, 160), Ok(()), "a new window");
        assert_eq!(m.forget_idle(230, 60), 1);
        assert!(m.get("ip").is_none());
    }

    #[test]
    fn a_flood_of_other_keys_never_drops_a_failure_count() {
        let m = MemCounters::with_capacity(Vec::new(), 100);
        let p = LockoutPolicy {
            max_failures: 5,
            window_secs: 300,
            lock_secs: 300,
        };
        for _ in 0..4 {
            m.reserve("lock:victim", &p, 1000).unwrap();
            assert!(!m.settle("lock:victim", &p, true, 1000));
        }
        // Ten times the capacity of budgets, newer than the failures.
        for i in 0..1000 {
            assert_eq!(m.hit(&format!("ip:{i}"), 20, 60, 1001), Ok(()));
        }
        assert_eq!(m.get("lock:victim").unwrap().count, 4, "still counted");
        m.reserve("lock:victim", &p, 1002).unwrap();
        assert!(m.settle("lock:victim", &p, true, 1002), "the fifth locks");

        // Full of attempt counters that hold failures: a new key is
        // refused rather than an old one forgotten.
        let full = MemCounters::with_capacity(Vec::new(), 10);
        for i in 0..10 {
            let k = format!("lock:{i}");
            full.reserve(&k, &p, 1000).unwrap();
            full.settle(&k, &p, true, 1000);
        }
        assert_eq!(full.reserve("lock:new", &p, 1000), Err(REFUSED_RETRY_SECS));
        assert_eq!(full.hit("ip:new", 20, 60, 1000), Err(REFUSED_RETRY_SECS));
        for i in 0..10 {
            assert_eq!(full.get(&format!("lock:{i}")).unwrap().count, 1);
        }
        // Once their window is over they hold nothing, and make room.
        assert!(full.reserve("lock:new", &p, 1300).is_ok());
        // Counters loaded from disk are kept like attempt counters.
        let c = Counter {
            window_start: 1000,
            count: 3,
            locked_until: 0,
            pending: 0,
        };
        let loaded = MemCounters::with_capacity(vec![("lock:a".into(), c)], 1);
        assert_eq!(loaded.hit("ip:x", 20, 60, 1001), Err(REFUSED_RETRY_SECS));
        assert_eq!(loaded.get("lock:a").unwrap().count, 3);
    }
}
