//! Throttles and the account lockout, as the auth handlers see them. The
//! counting happens in the store ([`Store::hit_counter`],
//! [`Store::reserve_attempt`], …), so every gateway on one store shares
//! one budget: an attacker spreading guesses over three gateways gets what
//! one would give.
//!
//! Login attempts are *reserved* before the password is hashed and settled
//! afterwards ([`Reservation`]), so the lockout bounds how many guesses are
//! ever evaluated, not just how many are counted: with `max_failed_logins =
//! 5`, twenty guesses sent at once get five hashes and fifteen 429s.

use std::sync::Arc;

use crate::clock::Clock;
use crate::store::{Lease, LockoutPolicy, Store, StoreError};

/// How long a reservation holds if its gateway dies before settling it
/// (a hash waits in a bounded queue, so this is generous).
const LEASE_SECS: u64 = 120;

pub struct Throttle {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

/// The outcome of taking from a budget.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Limited { retry_after: u64 },
}

/// One reserved login attempt. Settle it with [`Reservation::fail`] or
/// [`Reservation::succeed`]; dropped unsettled (an error, a full hash
/// queue, a client gone), it gives its place back without counting.
#[must_use = "a reservation is settled by fail() or succeed()"]
pub struct Reservation {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// `None` when the lockout is off, or once settled.
    lease: Option<Lease>,
    policy: LockoutPolicy,
}

impl Reservation {
    /// The attempt failed: count it. True when this failure locked the key.
    pub async fn fail(mut self) -> Result<bool, StoreError> {
        match self.lease.take() {
            Some(lease) => {
                self.store
                    .settle_attempt(&lease, self.policy, true, self.clock.now())
                    .await
            }
            None => Ok(false),
        }
    }

    /// The password was right: give back this reservation only (earlier
    /// failures stay counted until their window ends).
    pub async fn succeed(mut self) -> Result<(), StoreError> {
        if let Some(lease) = self.lease.take() {
            self.store
                .settle_attempt(&lease, self.policy, false, self.clock.now())
                .await?;
        }
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        // Given back in the background; should that fail (no runtime, the
        // store is down), the lease lapses on its own.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (store, policy, now) = (self.store.clone(), self.policy, self.clock.now());
            rt.spawn(async move {
                if let Err(e) = store.settle_attempt(&lease, policy, false, now).await {
                    tracing::warn!(cause = %e, "giving back a login reservation");
                }
            });
        }
    }
}

impl Throttle {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Count one event against `key`: at most `limit` per `window` seconds.
    pub async fn hit(&self, key: &str, limit: u32, window: u64) -> Result<Verdict, StoreError> {
        if limit == 0 {
            return Ok(Verdict::Allowed);
        }
        Ok(
            match self
                .store
                .hit_counter(key, limit, window, self.clock.now())
                .await?
            {
                Ok(()) => Verdict::Allowed,
                Err(retry_after) => Verdict::Limited { retry_after },
            },
        )
    }

    /// Reserve one attempt against `key` before evaluating it;
    /// `Ok(Err(retry_after))` when the key is locked or its budget is taken
    /// by failures and attempts in flight. A policy of 0 failures is "off".
    pub async fn reserve(
        &self,
        key: &str,
        policy: LockoutPolicy,
    ) -> Result<Result<Reservation, u64>, StoreError> {
        let mut r = Reservation {
            store: self.store.clone(),
            clock: self.clock.clone(),
            lease: None,
            policy,
        };
        if policy.max_failures == 0 {
            return Ok(Ok(r));
        }
        match self
            .store
            .reserve_attempt(key, policy, self.clock.now(), LEASE_SECS)
            .await?
        {
            Ok(lease) => {
                r.lease = Some(lease);
                Ok(Ok(r))
            }
            Err(retry_after) => Ok(Err(retry_after)),
        }
    }

    /// Forget a key (a password reset lifts the lockout).
    pub async fn clear(&self, key: &str) -> Result<(), StoreError> {
        self.store.clear_counter(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::sled_store::SledStore;

    #[tokio::test]
    async fn reservations_settle_or_give_back_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let clock = Arc::new(ManualClock::new(1000));
        let t = Throttle::new(store, clock.clone());
        let p = LockoutPolicy {
            max_failures: 2,
            window_secs: 60,
            lock_secs: 30,
        };
        let a = t.reserve("k", p).await.unwrap().unwrap();
        let b = t.reserve("k", p).await.unwrap().unwrap();
        assert_eq!(
            t.reserve("k", p).await.unwrap().err(),
            Some(1),
            "two in flight"
        );
        drop(b);
        // The give-back runs as a task: let it.
        tokio::task::yield_now().await;
        assert!(!a.fail().await.unwrap());
        let c = t.reserve("k", p).await.unwrap().unwrap();
        assert!(c.fail().await.unwrap(), "the second failure locks");
        assert_eq!(t.reserve("k", p).await.unwrap().err(), Some(30));
        clock.advance(30);
        t.reserve("k", p)
            .await
            .unwrap()
            .unwrap()
            .succeed()
            .await
            .unwrap();
        // Off: no counting at all.
        let off = LockoutPolicy {
            max_failures: 0,
            ..p
        };
        for _ in 0..10 {
            let r = t.reserve("z", off).await.unwrap().unwrap();
            assert!(!r.fail().await.unwrap());
        }
    }
}
