//! Revocation state for the hot path: revoked token ids and session ids
//! with the time each entry may go, and per-user "tokens issued before T
//! are void" cutoffs. All in memory (O(1) per check), loaded from the store
//! at start; every store operation that revokes returns what it committed,
//! and the caller mirrors it here before answering.

use std::collections::HashMap;

use parking_lot::RwLock;
use uuid::Uuid;

use super::claims::AccessClaims;
use crate::store::Revocation;

#[derive(Default)]
struct Sets {
    tokens: HashMap<Uuid, i64>,
    sessions: HashMap<Uuid, i64>,
    cutoffs: HashMap<Uuid, i64>,
}

#[derive(Default)]
pub struct Revocations {
    sets: RwLock<Sets>,
}

impl Revocations {
    pub fn new(entries: &[Revocation]) -> Self {
        let r = Self::default();
        r.apply(entries);
        r
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
        s.tokens.contains_key(&jti)
            || s.sessions.contains_key(&sid)
            || s.cutoffs.get(&sub).is_some_and(|&at| c.iat < at)
    }

    /// Mirror revocations the store has committed.
    pub fn apply(&self, entries: &[Revocation]) {
        if entries.is_empty() {
            return;
        }
        let mut s = self.sets.write();
        for e in entries {
            match *e {
                Revocation::Token(id, until) => keep_max(&mut s.tokens, id, until),
                Revocation::Session(id, until) => keep_max(&mut s.sessions, id, until),
                Revocation::Cutoff(id, at) => keep_max(&mut s.cutoffs, id, at),
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
        s.tokens.retain(|_, at| *at >= horizon);
        s.sessions.retain(|_, at| *at >= horizon);
        s.cutoffs.retain(|_, at| *at >= horizon);
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

fn keep_max(m: &mut HashMap<Uuid, i64>, id: Uuid, at: i64) {
    let e = m.entry(id).or_insert(at);
    *e = (*e).max(at);
}
