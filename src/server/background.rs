//! The gateway's background services: periodic upkeep (checkpoint and
//! sweep) and, on a shared backend, the revocation feed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::accounts::AuthService;

/// Periodic upkeep, every second of real time: write out the store's
/// in-memory state ([`crate::store::Store::checkpoint`]); and once per [`SWEEP_EVERY`] seconds of *clock* time (so tests
/// move the clock instead of waiting) sweep expired sessions, one-time
/// tokens, revocations and long-failed mail from the store and memory.
pub(super) struct Maintenance {
    pub(super) auth: Arc<AuthService>,
    /// Sweeps done so far (tests wait for the next one).
    pub(super) sweeps: Arc<std::sync::atomic::AtomicU64>,
}

/// Clock seconds between two sweeps.
pub const SWEEP_EVERY: i64 = 60;

impl Maintenance {
    /// Write out what the store keeps in memory (sled's counters); on a
    /// failure, it keeps them for the next second's try.
    async fn checkpoint(&self) {
        if let Err(e) = self.auth.store.checkpoint().await {
            tracing::error!(cause = %e, "store checkpoint");
        }
    }

    async fn sweep(&self) {
        let a = &self.auth;
        let now = a.clock.now();
        let cfg = a.cfg();
        // Revocations are kept by the store's token horizon (the longest
        // lifetime plus leeway ever in force on it), read afresh; without
        // it nothing is swept this round (fail closed).
        let horizon = match a.read_token_horizon().await {
            Ok(secs) => now - secs as i64,
            Err(e) => {
                tracing::error!(cause = %e, "maintenance sweep: reading the token horizon");
                self.sweeps
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return;
            }
        };
        let retention = crate::store::Retention {
            now,
            idle_secs: cfg.tokens.refresh_idle_secs,
            failed_mail_secs: cfg.mail.failed_retention_secs,
            revocation_horizon: horizon,
            counter_idle_secs: cfg.throttle.failure_window_secs.max(3600),
        };
        match a.store.sweep(retention).await {
            Ok(r) => {
                a.metrics.swept(&r);
                if r.total() > 0 {
                    tracing::info!(
                        sessions = r.sessions,
                        one_time_tokens = r.one_time,
                        revocations = r.revocations,
                        cutoffs = r.cutoffs,
                        failed_mail = r.mail,
                        counters = r.counters,
                        "maintenance sweep"
                    );
                }
            }
            Err(e) => tracing::error!(cause = %e, "maintenance sweep"),
        }
        a.revocations.prune(horizon);
        a.route_limits.forget_idle(now, 60);
        // The audit chain: retention, then its head published.
        a.audit_upkeep().await;
        self.sweeps
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait]
impl BackgroundService for Maintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut next_sweep = self.auth.clock.now();
        let mut ticks: u64 = 0;
        loop {
            if self.auth.clock.now() >= next_sweep {
                self.sweep().await;
                next_sweep = self.auth.clock.now() + SWEEP_EVERY;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => break,
            }
            self.checkpoint().await;
            ticks += 1;
            if ticks.is_multiple_of(crate::accounts::apikeys::USE_FLUSH_SECS) {
                self.auth.flush_key_uses().await;
            }
        }
        self.auth.flush_key_uses().await;
        self.checkpoint().await;
    }
}

/// For a backend several gateways share: learn of revocations committed by
/// the other instances. Woken by the store's notifications (PostgreSQL
/// `LISTEN`), and at least once a second regardless, so a lost
/// notification costs at most a second; after a reconnect the query
/// catches up from the last sequence seen (sequences commit in order).
pub(super) struct RevocationFeed {
    pub(super) auth: Arc<AuthService>,
}

#[async_trait]
impl BackgroundService for RevocationFeed {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use std::sync::atomic::Ordering;
        let Some(mut events) = self.auth.store.revocation_events() else {
            return;
        };
        loop {
            tokio::select! {
                _ = events.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => break,
            }
            let seq = self.auth.revocation_seq.load(Ordering::SeqCst);
            match self.auth.store.revocations_since(seq).await {
                Ok(Some((revs, last))) => {
                    self.auth.revocations.apply(&revs);
                    // API keys of users whose keys, roles or state changed
                    // on any gateway: reloaded from the store. A failed
                    // reload leaves the keys out and the sequence unmoved,
                    // so the next round tries again.
                    let mut users: Vec<uuid::Uuid> = revs
                        .iter()
                        .filter_map(|r| match r {
                            crate::store::Revocation::Keys(u, _) => Some(*u),
                            _ => None,
                        })
                        .collect();
                    users.sort_unstable();
                    users.dedup();
                    let mut reloaded = true;
                    for u in users {
                        if let Err(e) = self.auth.reload_keys(u).await {
                            tracing::warn!(cause = %e, "revocation feed: cannot reload API keys");
                            reloaded = false;
                        }
                    }
                    if reloaded {
                        self.auth.revocation_seq.store(last, Ordering::SeqCst);
                    }
                }
                Ok(None) => return,
                // The database is away: tokens keep being checked against
                // what is already known; catch up when it is back.
                Err(e) => tracing::warn!(cause = %e, "revocation feed: cannot read"),
            }
        }
    }
}
