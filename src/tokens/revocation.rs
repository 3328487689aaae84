//! Revocation state for the hot path: revoked token ids and session ids
//! with the time each entry may go, and per-user "tokens issued before T
//! are void" cutoffs. All in memory (O(1) per check), loaded from the store
//! at start; every store operation that revokes returns what it committed,
//! and the caller mirrors it here before answering.
//!
//! A million revoked ids must cost tens of MB, not hundreds (issue 26):
//! each set is an [`IdTimes`], a bucketed sorted array of 24-byte entries
//! plus a small map of recent additions merged into it in linear time.

use std::collections::HashMap;

use parking_lot::RwLock;
use uuid::Uuid;

use super::claims::AccessClaims;
use crate::store::Revocation;

#[derive(Default)]
struct Sets {
    tokens: IdTimes,
    sessions: IdTimes,
    cutoffs: IdTimes,
}

#[derive(Default)]
pub struct Revocations {
    sets: RwLock<Sets>,
}

impl Revocations {
    /// Built in bulk (one sort per set, no map growing entry by entry).
    pub fn new(entries: &[Revocation]) -> Self {
        let (mut tokens, mut sessions, mut cutoffs) = (Vec::new(), Vec::new(), Vec::new());
        for e in entries {
            match *e {
                Revocation::Token(id, at) => tokens.push(Entry::new(id, at)),
                Revocation::Session(id, at) => sessions.push(Entry::new(id, at)),
                Revocation::Cutoff(id, at) => cutoffs.push(Entry::new(id, at)),
                Revocation::Keys(..) => {}
            }
        }
        Self {
            sets: RwLock::new(Sets {
                tokens: IdTimes::from_entries(tokens),
                sessions: IdTimes::from_entries(sessions),
                cutoffs: IdTimes::from_entries(cutoffs),
            }),
        }
    }

    /// Is this (already verified) token revoked? Ids that do not parse
    /// count as revoked: fail closed.
    pub fn is_revoked(&self, c: &AccessClaims) -> bool {
        let (Ok(jti), Ok(sid), Ok(sub)) = (
            Uuid::parse_str(&c.jti),
            Uuid::parse_str(&c.sid),
            Uuid::parse_str(&c.sub),
        ) else {
            return true;
        };
        let s = self.sets.read();
        s.tokens.get(jti).is_some()
            || s.sessions.get(sid).is_some()
            || s.cutoffs.get(sub).is_some_and(|at| c.iat < at)
    }

    /// Mirror revocations the store has committed.
    pub fn apply(&self, entries: &[Revocation]) {
        if entries.is_empty() {
            return;
        }
        let mut s = self.sets.write();
        for e in entries {
            match *e {
                Revocation::Token(id, until) => s.tokens.keep_max(id, until),
                Revocation::Session(id, until) => s.sessions.keep_max(id, until),
                Revocation::Cutoff(id, at) => s.cutoffs.keep_max(id, at),
                // Voids no token: the API key index reloads the user.
                Revocation::Keys(..) => {}
            }
        }
    }

    /// Drop entries whose tokens are refused anyway: those older than
    /// `horizon` (now minus the store's token horizon), the very rule the
    /// store's sweep applies (`domain::revocation_is_dead`), so memory
    /// never lets go of an entry the store still keeps.
    pub fn prune(&self, horizon: i64) -> usize {
        let mut s = self.sets.write();
        let before = s.tokens.len() + s.sessions.len() + s.cutoffs.len();
        s.tokens.retain_from(horizon);
        s.sessions.retain_from(horizon);
        s.cutoffs.retain_from(horizon);
        before - (s.tokens.len() + s.sessions.len() + s.cutoffs.len())
    }

    /// Revoked tokens and sessions held (cutoffs not counted).
    pub fn len(&self) -> usize {
        let s = self.sets.read();
        s.tokens.len() + s.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One entry of an [`IdTimes`]: the id as two words (so an entry is 24
/// bytes; a `u128` would align it to 32) and its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    hi: u64,
    lo: u64,
    at: i64,
}

impl Entry {
    fn new(id: Uuid, at: i64) -> Self {
        let (hi, lo) = id.as_u64_pair();
        Self { hi, lo, at }
    }

    /// The sort key: a mix of every bit of the id, so the buckets stay
    /// even whatever version the ids are (v4 random, v7 time-ordered).
    fn mix(&self) -> u64 {
        mix(self.hi, self.lo)
    }

    fn order(&self) -> (u64, u64, u64) {
        (self.mix(), self.hi, self.lo)
    }
}

fn mix(hi: u64, lo: u64) -> u64 {
    (hi ^ lo.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Ids with a time each, keeping the larger time for an id given twice.
/// `base` is sorted by [`Entry::order`]; `starts[b]` is where the ids whose
/// mix has `b` as its top bits begin (about four per bucket), so a look-up
/// is two or three cache misses, like a hash map, at 24 bytes an entry and
/// 4 bytes a bucket. Additions go to `recent` until it holds an eighth of
/// `base`, then both are merged (linear: `recent` alone is sorted).
#[derive(Default)]
struct IdTimes {
    base: Vec<Entry>,
    starts: Vec<u32>,
    /// 64 minus the bucket bits.
    shift: u32,
    recent: HashMap<(u64, u64), i64, foldhash::fast::RandomState>,
}

impl IdTimes {
    fn from_entries(mut entries: Vec<Entry>) -> Self {
        entries.sort_unstable_by_key(Entry::order);
        // Equal ids are next to each other: keep the larger time.
        entries.dedup_by(|later, kept| {
            let same = later.hi == kept.hi && later.lo == kept.lo;
            if same {
                kept.at = kept.at.max(later.at);
            }
            same
        });
        let mut s = Self {
            base: entries,
            ..Self::default()
        };
        s.index();
        s
    }

    /// Rebuild `starts` for `base`.
    fn index(&mut self) {
        self.base.shrink_to_fit();
        let buckets = (self.base.len() / 4).next_power_of_two().max(16);
        let bits = buckets.trailing_zeros();
        self.shift = 64 - bits;
        let mut starts = vec![0u32; buckets + 1];
        let mut i = 0usize;
        for (b, start) in starts.iter_mut().enumerate() {
            while i < self.base.len() && ((self.base[i].mix() >> self.shift) as usize) < b {
                i += 1;
            }
            *start = i as u32;
        }
        self.starts = starts;
    }

    fn find(&self, hi: u64, lo: u64) -> Option<usize> {
        if self.base.is_empty() {
            return None;
        }
        let b = (mix(hi, lo) >> self.shift) as usize;
        let (from, to) = (self.starts[b] as usize, self.starts[b + 1] as usize);
        self.base[from..to]
            .iter()
            .position(|e| e.hi == hi && e.lo == lo)
            .map(|i| from + i)
    }

    fn get(&self, id: Uuid) -> Option<i64> {
        let (hi, lo) = id.as_u64_pair();
        if let Some(&at) = self.recent.get(&(hi, lo)) {
            return Some(at);
        }
        self.find(hi, lo).map(|i| self.base[i].at)
    }

    fn keep_max(&mut self, id: Uuid, at: i64) {
        let (hi, lo) = id.as_u64_pair();
        if let Some(i) = self.find(hi, lo) {
            let e = &mut self.base[i];
            e.at = e.at.max(at);
            return;
        }
        let e = self.recent.entry((hi, lo)).or_insert(at);
        *e = (*e).max(at);
        if self.recent.len() > (self.base.len() / 8).max(1024) {
            self.merge();
        }
    }

    /// Move `recent` into `base` (the ids in `recent` are not in `base`).
    fn merge(&mut self) {
        let mut add: Vec<Entry> = self
            .recent
            .drain()
            .map(|((hi, lo), at)| Entry { hi, lo, at })
            .collect();
        add.sort_unstable_by_key(Entry::order);
        let old = std::mem::take(&mut self.base);
        let mut out = Vec::with_capacity(old.len() + add.len());
        let (mut a, mut b) = (old.into_iter().peekable(), add.into_iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.order() <= y.order() => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            out.extend(next);
        }
        self.base = out;
        self.index();
        self.recent.shrink_to_fit();
    }

    /// Keep only the entries whose time is at least `horizon`.
    fn retain_from(&mut self, horizon: i64) {
        let before = self.base.len();
        self.base.retain(|e| e.at >= horizon);
        if self.base.len() != before {
            self.index();
        }
        self.recent.retain(|_, at| *at >= horizon);
    }

    fn len(&self) -> usize {
        self.base.len() + self.recent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_times_find_every_id_through_merges_and_prunes() {
        let ids: Vec<Uuid> = (0..20_000).map(|_| Uuid::new_v4()).collect();
        // Half in bulk (one id twice: the larger time stays), half one by
        // one (several merges).
        let mut bulk: Vec<Entry> = ids[..10_000]
            .iter()
            .enumerate()
            .map(|(i, id)| Entry::new(*id, i as i64))
            .collect();
        bulk.push(Entry::new(ids[0], 50_000));
        let mut set = IdTimes::from_entries(bulk);
        for (i, id) in ids.iter().enumerate().skip(10_000) {
            set.keep_max(*id, i as i64);
        }
        set.keep_max(ids[15_000], 1);
        assert_eq!(set.len(), 20_000);
        assert_eq!(set.get(ids[0]), Some(50_000));
        assert_eq!(set.get(ids[15_000]), Some(15_000));
        for (i, id) in ids.iter().enumerate().skip(1) {
            assert_eq!(set.get(*id), Some(i as i64), "entry {i}");
        }
        assert_eq!(set.get(Uuid::new_v4()), None);
        // Time-ordered ids share their top bits: still found.
        let v7: Vec<Uuid> = (0..5_000u64)
            .map(|i| Uuid::from_u64_pair(0x0190_0000_0000_7000 | i << 16, i))
            .collect();
        let mut set = IdTimes::from_entries(v7.iter().map(|id| Entry::new(*id, 7)).collect());
        assert!(v7.iter().all(|id| set.get(*id) == Some(7)));
        set.keep_max(v7[0], 9);
        set.retain_from(8);
        assert_eq!(
            (set.len(), set.get(v7[0]), set.get(v7[1])),
            (1, Some(9), None)
        );
    }
}
