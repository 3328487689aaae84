//! Counters kept in memory: the sled backend's throttle and lockout state
//! (written out by [`super::Store::checkpoint`] every second, so a restart
//! keeps an attacker's budget) and the per-route rate limits, which sit on
//! the proxy's hot path and never leave memory. The counting rules are the
//! pure [`Counter`] methods in [`super::domain`]; this is only the map,
//! bounded, and the set of keys changed since the last checkpoint.

use std::collections::{HashMap, HashSet};

use parking_lot::Mutex;

use super::domain::LockoutPolicy;
use super::Counter;

/// Entries kept at most; beyond that, idle then oldest entries go first.
const MAX_ENTRIES: usize = 200_000;

#[derive(Default)]
pub struct MemCounters {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    counters: HashMap<String, Counter>,
    dirty: HashSet<String>,
}

impl MemCounters {
    pub fn new(saved: Vec<(String, Counter)>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                counters: saved.into_iter().collect(),
                dirty: HashSet::new(),
            }),
        }
    }

    /// Count one event against `key`: at most `limit` per `window` seconds;
    /// `Err(retry_after)` when the budget is spent. A limit of 0 is "off".
    pub fn hit(&self, key: &str, limit: u32, window: u64, now: i64) -> Result<(), u64> {
        if limit == 0 {
            return Ok(());
        }
        let mut g = self.inner.lock();
        g.make_room(now, window);
        g.entry(key).hit(now, limit, window)?;
        g.mark(key);
        Ok(())
    }

    /// Reserve one attempt (see [`Counter::reserve`]).
    pub fn reserve(&self, key: &str, policy: &LockoutPolicy, now: i64) -> Result<(), u64> {
        let mut g = self.inner.lock();
        g.make_room(now, policy.window_secs);
        g.entry(key).reserve(now, policy)?;
        // In flight only: nothing to write out until it is settled.
        Ok(())
    }

    /// Settle a reservation (see [`Counter::settle`]); true when this
    /// failure locked the key.
    pub fn settle(&self, key: &str, policy: &LockoutPolicy, failed: bool, now: i64) -> bool {
        let mut g = self.inner.lock();
        let locked = g.entry(key).settle(now, policy, failed);
        g.mark(key);
        locked
    }

    /// Forget what `key` counted and lift its lock; attempts in flight
    /// stay in flight.
    pub fn clear(&self, key: &str) {
        let mut g = self.inner.lock();
        if let Some(c) = g.counters.get_mut(key) {
            *c = Counter {
                pending: c.pending,
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
                let v = g.counters.get(&k).map(|c| Counter { pending: 0, ..*c });
                (k, v)
            })
            .collect()
    }

    /// Set `key` as a copy found it (an import); not written out again.
    pub fn put(&self, key: String, c: Counter) {
        let mut g = self.inner.lock();
        let pending = g.counters.get(&key).map_or(0, |old| old.pending);
        g.counters.insert(key, Counter { pending, ..c });
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
            .filter(|(_, c)| c.is_idle(now, window))
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
        self.inner.lock().counters.get(key).copied()
    }
}

impl Inner {
    fn entry(&mut self, key: &str) -> &mut Counter {
        // No allocation for a key already counted (the common case).
        if !self.counters.contains_key(key) {
            self.counters.insert(key.to_string(), Counter::default());
        }
        self.counters.get_mut(key).expect("inserted above")
    }

    fn mark(&mut self, key: &str) {
        if !self.dirty.contains(key) {
            self.dirty.insert(key.to_string());
        }
    }

    /// Keep the map bounded: drop stale windows first, then the oldest.
    fn make_room(&mut self, now: i64, window: u64) {
        if self.counters.len() < MAX_ENTRIES {
            return;
        }
        let horizon = window.max(3600);
        let stale: Vec<String> = self
            .counters
            .iter()
            .filter(|(_, c)| c.is_idle(now, horizon))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.counters.remove(&k);
            self.dirty.insert(k);
        }
        if self.counters.len() >= MAX_ENTRIES {
            let mut by_age: Vec<(i64, String)> = self
                .counters
                .iter()
                .filter(|(_, c)| c.locked_until <= now && c.pending == 0)
                .map(|(k, c)| (c.window_start, k.clone()))
                .collect();
            by_age.sort();
            for (_, k) in by_age.into_iter().take(MAX_ENTRIES / 10) {
                self.counters.remove(&k);
                self.dirty.insert(k);
            }
        }
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
}
