//! Revocation state for the hot path: revoked `jti`s and session ids with
//! their expiry, and per-user "tokens issued before T are void" cutoffs.
//! Both are hash maps in memory (O(1) per check), loaded from and written
//! through to the store.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use uuid::Uuid;

use super::tokens::AccessClaims;
use crate::store::{Store, StoreResult};

pub struct Revocations {
    revoked: RwLock<HashMap<String, i64>>,
    cutoffs: RwLock<HashMap<Uuid, i64>>,
    store: Arc<dyn Store>,
}

pub fn jti_key(jti: &str) -> String {
    format!("jti:{jti}")
}

pub fn sid_key(sid: &Uuid) -> String {
    format!("sid:{sid}")
}

impl Revocations {
    pub fn load(store: Arc<dyn Store>) -> StoreResult<Self> {
        let revoked = store.list_revocations()?.into_iter().collect();
        let cutoffs = store.list_cutoffs()?.into_iter().collect();
        Ok(Self {
            revoked: RwLock::new(revoked),
            cutoffs: RwLock::new(cutoffs),
            store,
        })
    }

    pub fn is_revoked(&self, c: &AccessClaims) -> bool {
        {
            let r = self.revoked.read();
            if r.contains_key(&jti_key(&c.jti)) {
                return true;
            }
            if let Ok(sid) = Uuid::parse_str(&c.sid) {
                if r.contains_key(&sid_key(&sid)) {
                    return true;
                }
            }
        }
        match Uuid::parse_str(&c.sub) {
            Ok(uid) => self.cutoffs.read().get(&uid).is_some_and(|&at| c.iat < at),
            Err(_) => true,
        }
    }

    /// Persist, then publish. The caller flushes before acknowledging.
    pub fn revoke(&self, keys: Vec<(String, i64)>) -> StoreResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        self.store.revoke(&keys)?;
        let mut r = self.revoked.write();
        for (k, exp) in keys {
            r.insert(k, exp);
        }
        Ok(())
    }

    pub fn set_cutoff(&self, user: Uuid, at: i64) -> StoreResult<()> {
        self.store.set_cutoff(&user, at)?;
        self.cutoffs.write().insert(user, at);
        Ok(())
    }

    /// Drop entries whose tokens have expired anyway.
    pub fn prune(&self, now: i64) -> StoreResult<usize> {
        let n = self.store.prune_revocations(now)?;
        self.revoked.write().retain(|_, exp| *exp > now);
        Ok(n)
    }

    pub fn len(&self) -> usize {
        self.revoked.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
