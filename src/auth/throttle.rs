//! Throttle counters: a bounded in-memory map in front of the store. The hot
//! path only touches memory; dirty entries are written to sled in batches by
//! a background task, so a restart keeps an attacker's budget.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::clock::Clock;
use crate::store::{Counter, Store, StoreResult};

const MAX_ENTRIES: usize = 200_000;

pub struct Throttle {
    inner: Mutex<Inner>,
    store: Arc<dyn Store>,
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

impl Throttle {
    pub fn load(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> StoreResult<Self> {
        let counters: HashMap<String, Counter> = store.load_counters()?.into_iter().collect();
        Ok(Self {
            inner: Mutex::new(Inner {
                counters,
                dirty: HashSet::new(),
            }),
            store,
            clock,
        })
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Count one event against `key`: at most `limit` per `window` seconds.
    pub fn hit(&self, key: &str, limit: u32, window: u64) -> Verdict {
        if limit == 0 {
            return Verdict::Allowed;
        }
        let now = self.clock.now();
        let mut g = self.inner.lock();
        let c = g.current(key, now, window);
        if c.count >= limit {
            let retry = (c.window_start + window as i64 - now).max(1) as u64;
            return Verdict::Limited { retry_after: retry };
        }
        c.count += 1;
        g.dirty.insert(key.to_string());
        Verdict::Allowed
    }

    /// Seconds left on a lock, if `key` is locked.
    pub fn locked_for(&self, key: &str) -> Option<u64> {
        let now = self.clock.now();
        let g = self.inner.lock();
        let c = g.counters.get(key)?;
        (c.locked_until > now).then(|| (c.locked_until - now) as u64)
    }

    /// Record a failure; after `max` failures inside `window`, lock for
    /// `lock_secs`. Returns true when this failure caused the lock.
    pub fn fail(&self, key: &str, max: u32, window: u64, lock_secs: u64) -> bool {
        if max == 0 {
            return false;
        }
        let now = self.clock.now();
        let mut g = self.inner.lock();
        let c = g.current(key, now, window);
        c.count += 1;
        let locked = c.count >= max;
        if locked {
            c.locked_until = now + lock_secs as i64;
            c.count = 0;
            c.window_start = now;
        }
        g.dirty.insert(key.to_string());
        locked
    }

    pub fn clear(&self, key: &str) {
        let mut g = self.inner.lock();
        if g.counters.remove(key).is_some() {
            g.dirty.insert(key.to_string());
        }
    }

    /// Write dirty counters to the store (called by the background task and
    /// at shutdown).
    pub fn persist(&self) -> StoreResult<usize> {
        let batch: Vec<(String, Option<Counter>)> = {
            let mut g = self.inner.lock();
            let dirty: Vec<String> = g.dirty.drain().collect();
            dirty
                .into_iter()
                .map(|k| {
                    let v = g.counters.get(&k).copied();
                    (k, v)
                })
                .collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        self.store.save_counters(&batch)?;
        Ok(batch.len())
    }
}

impl Inner {
    /// The counter for `key`, its window restarted if it has run out.
    fn current(&mut self, key: &str, now: i64, window: u64) -> &mut Counter {
        self.make_room(now, window);
        let c = self.counters.entry(key.to_string()).or_default();
        if now >= c.window_start + window as i64 {
            c.window_start = now;
            c.count = 0;
        }
        c
    }

    /// Keep the map bounded: drop stale windows first, then the oldest.
    fn make_room(&mut self, now: i64, window: u64) {
        if self.counters.len() < MAX_ENTRIES {
            return;
        }
        let horizon = now - window.max(3600) as i64;
        let stale: Vec<String> = self
            .counters
            .iter()
            .filter(|(_, c)| c.window_start < horizon && c.locked_until <= now)
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
                .filter(|(_, c)| c.locked_until <= now)
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
