//! Throttle counters: a bounded in-memory map in front of the store. The hot
//! path only touches memory; changed entries are written to the store in
//! batches by the maintenance task, so a restart keeps an attacker's budget.
//!
//! Login attempts are *reserved* before the password is hashed and settled
//! afterwards ([`Reservation`]), so the lockout bounds how many guesses are
//! ever evaluated, not just how many are counted: with `max_failed_logins =
//! 5`, twenty guesses sent at once get five hashes and fifteen 429s. The
//! counting rules are the pure [`Counter`] methods in `store::domain`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::clock::Clock;
use crate::store::domain::LockoutPolicy;
use crate::store::Counter;

const MAX_ENTRIES: usize = 200_000;

pub struct Throttle {
    inner: Arc<Mutex<Inner>>,
    clock: Arc<dyn Clock>,
}

struct Inner {
    counters: HashMap<String, Counter>,
    dirty: HashSet<String>,
}

/// The outcome of taking from a budget.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Limited { retry_after: u64 },
}

/// One reserved login attempt. Settle it with [`Reservation::fail`] or
/// [`Reservation::succeed`]; dropped unsettled (an error, a full hash
/// queue), it gives its place back without counting.
#[must_use = "a reservation is settled by fail() or succeed()"]
pub struct Reservation {
    inner: Option<Arc<Mutex<Inner>>>,
    clock: Arc<dyn Clock>,
    key: String,
    policy: LockoutPolicy,
}

impl Reservation {
    /// The attempt failed: count it. True when this failure locked the key.
    pub fn fail(mut self) -> bool {
        self.settle(true)
    }

    /// The password was right: give back this reservation only (earlier
    /// failures stay counted until their window ends).
    pub fn succeed(mut self) {
        self.settle(false);
    }

    fn settle(&mut self, failed: bool) -> bool {
        let Some(inner) = self.inner.take() else {
            return false;
        };
        let now = self.clock.now();
        let mut g = inner.lock();
        let Inner { counters, dirty } = &mut *g;
        let c = counters.entry(self.key.clone()).or_default();
        let locked = c.settle(now, &self.policy, failed);
        dirty.insert(self.key.clone());
        locked
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.settle(false);
    }
}

impl Throttle {
    pub fn new(saved: Vec<(String, Counter)>, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                counters: saved.into_iter().collect(),
                dirty: HashSet::new(),
            })),
            clock,
        }
    }

    /// Count one event against `key`: at most `limit` per `window` seconds.
    pub fn hit(&self, key: &str, limit: u32, window: u64) -> Verdict {
        if limit == 0 {
            return Verdict::Allowed;
        }
        let now = self.clock.now();
        let mut g = self.inner.lock();
        g.make_room(now, window);
        let c = g.counters.entry(key.to_string()).or_default();
        match c.hit(now, limit, window) {
            Ok(()) => {
                g.dirty.insert(key.to_string());
                Verdict::Allowed
            }
            Err(retry_after) => Verdict::Limited { retry_after },
        }
    }

    /// Reserve one attempt against `key` before evaluating it;
    /// `Err(retry_after)` when the key is locked or its budget is taken by
    /// failures and attempts in flight. A policy of 0 failures is "off".
    pub fn reserve(&self, key: &str, policy: LockoutPolicy) -> Result<Reservation, u64> {
        let mut r = Reservation {
            inner: None,
            clock: self.clock.clone(),
            key: key.to_string(),
            policy,
        };
        if policy.max_failures == 0 {
            return Ok(r);
        }
        let now = self.clock.now();
        let mut g = self.inner.lock();
        g.make_room(now, policy.window_secs);
        g.counters
            .entry(key.to_string())
            .or_default()
            .reserve(now, &policy)?;
        r.inner = Some(self.inner.clone());
        Ok(r)
    }

    /// Seconds left on a lock, if `key` is locked.
    pub fn locked_for(&self, key: &str) -> Option<u64> {
        let now = self.clock.now();
        self.inner.lock().counters.get(key)?.locked_for(now)
    }

    /// Forget a key (a password reset lifts the lockout).
    pub fn clear(&self, key: &str) {
        let mut g = self.inner.lock();
        if let Some(c) = g.counters.get_mut(key) {
            let pending = c.pending;
            *c = Counter {
                pending,
                ..Counter::default()
            };
            g.dirty.insert(key.to_string());
        }
    }

    /// The entries changed since the last call, for the store (`None`:
    /// delete it). Taken out of the dirty set; on a failed write, hand
    /// them back with [`Throttle::mark_dirty`].
    pub fn take_dirty(&self) -> Vec<(String, Option<Counter>)> {
        let mut g = self.inner.lock();
        let dirty: Vec<String> = g.dirty.drain().collect();
        dirty
            .into_iter()
            .map(|k| {
                let v = g.counters.get(&k).copied();
                (k, v)
            })
            .collect()
    }

    pub fn mark_dirty(&self, keys: impl IntoIterator<Item = String>) {
        self.inner.lock().dirty.extend(keys);
    }

    /// Drop counters that hold nothing any more (no lock, nothing in
    /// flight, window over). Returns how many.
    pub fn forget_idle(&self, window: u64) -> usize {
        let now = self.clock.now();
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
}

impl Inner {
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
    use crate::clock::ManualClock;

    #[test]
    fn reservations_settle_or_give_back_on_drop() {
        let clock = Arc::new(ManualClock::new(1000));
        let t = Throttle::new(vec![], clock.clone());
        let p = LockoutPolicy {
            max_failures: 2,
            window_secs: 60,
            lock_secs: 30,
        };
        let a = t.reserve("k", p).unwrap();
        let b = t.reserve("k", p).unwrap();
        assert_eq!(t.reserve("k", p).err(), Some(1), "two in flight");
        drop(b);
        assert!(!a.fail());
        let c = t.reserve("k", p).unwrap();
        assert!(c.fail(), "the second failure locks");
        assert_eq!(t.locked_for("k"), Some(30));
        assert_eq!(t.reserve("k", p).err(), Some(30));
        clock.advance(30);
        t.reserve("k", p).unwrap().succeed();
        // Off: no counting at all.
        let off = LockoutPolicy {
            max_failures: 0,
            ..p
        };
        for _ in 0..10 {
            assert!(!t.reserve("z", off).unwrap().fail());
        }
        assert!(t.take_dirty().iter().all(|(k, _)| k == "k"));
    }
}
