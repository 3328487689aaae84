//! `X-User-Assertion` (CONTRACT 8.3): a short JWT signed with the
//! provider's key ([`crate::tokens::provider_keys`]) that an upstream can
//! verify with the gateway's JWKS, on routes with `identity_assertion`.
//!
//! Signing on every request would cost the hot path (RSA 2048 takes about
//! a millisecond), so each route keeps the assertions it signed, one per
//! session (or API key), and signs anew only when the cached one has less
//! than half its lifetime left, or when what it says (subject, email,
//! roles, `amr`) differs from the request's identity. The cache only saves
//! the signing: the identity is checked first, as on every route, so an
//! ended session gets no assertion. It is bounded ([`SHARD_CAP`] entries
//! per shard; a full shard sheds the stale entries, else empties) and
//! lives in the route's runtime, so a reload (new keys, a new audience or
//! issuer) starts it afresh.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use http::HeaderValue;
use parking_lot::Mutex;
use serde_json::json;
use uuid::Uuid;

use crate::tokens::provider_keys::{ProviderKeys, ASSERTION_TTL_SECS};

pub const HEADER: &str = "x-user-assertion";

const SHARDS: usize = 16;
/// Entries per shard: at most `16 * 4096` assertions per route.
pub const SHARD_CAP: usize = 4096;

/// Whose assertion: a session (`sid`) or an API key (its id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    Session(Uuid),
    ApiKey(Uuid),
}

/// What an assertion says about its holder.
pub struct Subject<'a> {
    pub sub: &'a str,
    pub email: &'a str,
    pub roles: &'a [String],
    pub amr: &'a [String],
}

struct Entry {
    value: HeaderValue,
    exp: i64,
    iat: i64,
    sub: String,
    email: String,
    roles: Vec<String>,
    amr: Vec<String>,
}

impl Entry {
    fn says(&self, s: &Subject<'_>) -> bool {
        self.sub == s.sub && self.email == s.email && self.roles == s.roles && self.amr == s.amr
    }

    /// Fresh enough to hand out at `now`: more than half its life left.
    fn fresh(&self, now: i64) -> bool {
        self.iat <= now && self.exp - now > (ASSERTION_TTL_SECS / 2) as i64
    }
}

/// The assertions of one route.
pub struct AssertionCache {
    shards: Vec<Mutex<HashMap<Holder, Entry>>>,
    /// The route's `assertion_audience`.
    audience: String,
}

impl AssertionCache {
    pub fn new(audience: String) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            audience,
        }
    }

    fn shard(&self, holder: &Holder) -> &Mutex<HashMap<Holder, Entry>> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        holder.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// How many assertions are cached (tests, metrics).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The assertion for `holder` saying `subject`: the cached one while
    /// it is fresh and says the same, else a new one (signed outside the
    /// lock). `None` when the provider keys are not loaded.
    pub fn get(
        &self,
        keys: &ProviderKeys,
        issuer: &str,
        holder: Holder,
        subject: &Subject<'_>,
        now: i64,
    ) -> Option<HeaderValue> {
        let shard = self.shard(&holder);
        if let Some(e) = shard.lock().get(&holder) {
            if e.fresh(now) && e.says(subject) {
                return Some(e.value.clone());
            }
        }
        let exp = now + ASSERTION_TTL_SECS as i64;
        let claims = json!({
            "iss": issuer,
            "aud": self.audience,
            "sub": subject.sub,
            "email": subject.email,
            "roles": subject.roles,
            "amr": subject.amr,
            "iat": now,
            "exp": exp,
            "jti": Uuid::new_v4().to_string(),
        });
        let token = keys.sign(&claims, "JWT").ok()?;
        let value = HeaderValue::from_str(&token).ok()?;
        let mut map = shard.lock();
        if map.len() >= SHARD_CAP && !map.contains_key(&holder) {
            map.retain(|_, e| e.fresh(now));
            if map.len() >= SHARD_CAP {
                map.clear();
            }
        }
        map.insert(
            holder,
            Entry {
                value: value.clone(),
                exp,
                iat: now,
                sub: subject.sub.to_string(),
                email: subject.email.to_string(),
                roles: subject.roles.to_vec(),
                amr: subject.amr.to_vec(),
            },
        );
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::ProviderAlgorithm;
    use std::sync::Arc;

    fn keys(clock: Arc<ManualClock>) -> (ProviderKeys, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let set = crate::tokens::provider_keys::load_set(ProviderAlgorithm::EdDsa, dir.path(), 0)
            .unwrap();
        let k = ProviderKeys::new(clock);
        k.set(Some(set));
        (k, dir)
    }

    fn payload(v: &HeaderValue) -> serde_json::Value {
        use base64::Engine;
        let p = v.to_str().unwrap().split('.').nth(1).unwrap();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap();
        serde_json::from_slice(&raw).unwrap()
    }

    #[test]
    fn cached_until_half_its_life_is_over_or_the_identity_changes() {
        let clock = Arc::new(ManualClock::new(1_000));
        let (k, _dir) = keys(clock.clone());
        let c = AssertionCache::new("http://up".into());
        let h = Holder::Session(Uuid::new_v4());
        let roles = vec!["a".to_string()];
        let s = Subject {
            sub: "u",
            email: "e@x",
            roles: &roles,
            amr: &[],
        };
        let a = c.get(&k, "iss", h, &s, 1_000).unwrap();
        let claims = payload(&a);
        assert_eq!(claims["aud"], "http://up");
        assert_eq!(claims["exp"], 1_060);
        assert_eq!(c.get(&k, "iss", h, &s, 1_029).unwrap(), a);
        let b = c.get(&k, "iss", h, &s, 1_030).unwrap();
        assert_ne!(b, a);
        assert_eq!(payload(&b)["iat"], 1_030);
        // New roles: a new assertion at once.
        let roles2 = vec!["b".to_string()];
        let s2 = Subject {
            roles: &roles2,
            ..s
        };
        let d = c.get(&k, "iss", h, &s2, 1_031).unwrap();
        assert_eq!(payload(&d)["roles"], json!(["b"]));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn the_cache_stays_bounded_under_many_identities() {
        let clock = Arc::new(ManualClock::new(0));
        let (k, _dir) = keys(clock);
        let c = AssertionCache::new("aud".into());
        let s = Subject {
            sub: "u",
            email: "e",
            roles: &[],
            amr: &[],
        };
        for _ in 0..(SHARDS * SHARD_CAP + 5_000) {
            c.get(&k, "iss", Holder::ApiKey(Uuid::new_v4()), &s, 0)
                .unwrap();
        }
        assert!(c.len() <= SHARDS * SHARD_CAP, "{}", c.len());
    }
}
