//! Access tokens whose signature and fixed claims were already checked.
//!
//! A client sends the same bearer token with every request until it
//! expires, and checking its signature is most of the cost of a protected
//! route (an HMAC or an Ed25519 verification, base64 and JSON). Remembering
//! the claims of each token that passed makes the repeat check a hash-map
//! lookup. What can change is still checked on every request: the time
//! claims against the clock, the end of its key's verification time, and
//! revocation.
//!
//! Only tokens that passed every check are remembered, under their full
//! text, so nothing can be looked up that a live key did not sign. A new
//! key set or new token settings (a reload, a rotation) start a new
//! generation, and entries of an older one are never found. The map is
//! bounded: when it is full it is emptied and refills with the tokens in
//! use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::claims::AccessClaims;

/// How many tokens are remembered (about 1 KiB each).
pub const CAPACITY: usize = 8192;

/// What a check established about one token.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Shared, so a hit costs a reference count, not a copy of every claim.
    pub claims: Arc<AccessClaims>,
    /// Its key stops verifying then (`None`: the newest key).
    pub key_verifies_until: Option<i64>,
    /// The generation of keys and settings it was checked under.
    pub generation: u64,
}

pub struct VerifiedTokens {
    /// foldhash, seeded per process: a hit hashes the whole token (a few
    /// hundred bytes), which SipHash made a visible part of a protected
    /// request; only verified tokens are ever inserted.
    map: RwLock<HashMap<Box<str>, Verified, foldhash::fast::RandomState>>,
    generation: AtomicU64,
    capacity: usize,
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl VerifiedTokens {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            map: RwLock::new(HashMap::default()),
            generation: AtomicU64::new(0),
            capacity,
        }
    }

    /// The current generation: read it before loading the keys and
    /// settings a check uses, and stamp the entry with it.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Call after new keys or settings are in force: nothing checked
    /// before is found again.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.map.write().clear();
    }

    /// What a check of this exact token established, in `generation`.
    pub fn get(&self, token: &str, generation: u64) -> Option<Verified> {
        self.map
            .read()
            .get(token)
            .filter(|v| v.generation == generation)
            .cloned()
    }

    /// Remember a token that passed every check.
    pub fn insert(&self, token: &str, v: Verified) {
        let mut map = self.map.write();
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(token.into(), v);
    }

    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(sub: &str, generation: u64) -> Verified {
        Verified {
            claims: Arc::new(AccessClaims {
                iss: "i".into(),
                aud: "a".into(),
                sub: sub.into(),
                exp: 10,
                iat: 0,
                nbf: None,
                jti: "j".into(),
                sid: "s".into(),
                email: "e@example.com".into(),
                roles: vec![],
                amr: vec![],
                auth_time: None,
            }),
            key_verifies_until: None,
            generation,
        }
    }

    #[test]
    fn remembers_exact_tokens_only_and_stays_bounded() {
        let v = VerifiedTokens::with_capacity(2);
        v.insert("a.b.c", verified("1", 0));
        assert_eq!(
            v.get("a.b.c", 0).map(|c| c.claims.sub.clone()),
            Some("1".into())
        );
        assert!(v.get("a.b.C", 0).is_none());
        assert!(v.get("a.b.c ", 0).is_none());
        v.insert("d.e.f", verified("2", 0));
        v.insert("g.h.i", verified("3", 0));
        assert!(v.len() <= 2);
        assert_eq!(
            v.get("g.h.i", 0).map(|c| c.claims.sub.clone()),
            Some("3".into())
        );
    }

    #[test]
    fn a_new_generation_forgets_what_an_older_one_checked() {
        let v = VerifiedTokens::default();
        let g = v.generation();
        v.invalidate();
        // A check that began before the new keys finishes after them.
        v.insert("a.b.c", verified("1", g));
        assert!(v.get("a.b.c", v.generation()).is_none());
        v.insert("a.b.c", verified("1", v.generation()));
        assert!(v.get("a.b.c", v.generation()).is_some());
        v.invalidate();
        assert!(v.is_empty());
    }
}
