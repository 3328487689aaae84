//! Access tokens whose signature and fixed claims were already checked.
//!
//! A client sends the same bearer token with every request until it
//! expires, and checking its signature is most of the cost of a protected
//! route (an HMAC or an Ed25519 verification, base64 and JSON). Remembering
//! the claims of each token that passed makes the repeat check a hash-map
//! lookup. What can change is still checked on every request: the time
//! claims against the clock, and revocation.
//!
//! Only tokens that passed every check are remembered, under their full
//! text, so nothing can be looked up that the signing key did not sign. The
//! map is bounded: when it is full it is emptied and refills with the
//! tokens in use. It belongs to one [`super::tokens::TokenService`], so a
//! new key set starts with an empty one.

use std::collections::HashMap;

use parking_lot::RwLock;

use super::tokens::AccessClaims;

/// How many tokens are remembered (about 1 KiB each).
pub const CAPACITY: usize = 8192;

pub struct VerifiedTokens {
    map: RwLock<HashMap<Box<str>, AccessClaims>>,
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
            map: RwLock::new(HashMap::new()),
            capacity,
        }
    }

    /// The claims of a token that passed before.
    pub fn get(&self, token: &str) -> Option<AccessClaims> {
        self.map.read().get(token).cloned()
    }

    /// Remember a token that passed every check.
    pub fn insert(&self, token: &str, claims: &AccessClaims) {
        let mut map = self.map.write();
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(token.into(), claims.clone());
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

    fn claims(sub: &str) -> AccessClaims {
        AccessClaims {
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
        }
    }

    #[test]
    fn remembers_exact_tokens_only_and_stays_bounded() {
        let v = VerifiedTokens::with_capacity(2);
        v.insert("a.b.c", &claims("1"));
        assert_eq!(v.get("a.b.c").map(|c| c.sub), Some("1".into()));
        assert!(v.get("a.b.C").is_none());
        assert!(v.get("a.b.c ").is_none());
        v.insert("d.e.f", &claims("2"));
        v.insert("g.h.i", &claims("3"));
        assert!(v.len() <= 2);
        assert_eq!(v.get("g.h.i").map(|c| c.sub), Some("3".into()));
    }
}
