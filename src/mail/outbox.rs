//! The outbox worker: delivers queued messages, retrying with exponential
//! backoff. A message that fails for good is marked and logged, never
//! dropped. Messages survive restarts because they live in the store.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::Notify;

use super::Transport;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::{Delivery, OutboxMessage, Store};

/// Delivers the outbox messages that are no mail: an HTTP POST (the OpenID
/// Provider's back-channel logouts). Same queue, claims, retries and
/// records as mail; only the send differs.
#[async_trait]
pub trait HttpDelivery: Send + Sync {
    /// Does this sender deliver messages of `kind`?
    fn handles(&self, kind: &str) -> bool;
    async fn send(&self, msg: &OutboxMessage) -> Result<(), String>;
}

/// How long a claim is this sender's: longer than one send may take
/// ([`SEND_TIMEOUT`]), after which another sender may retry. A batch is
/// claimed under one lease, but each message's claim is renewed on the
/// current record right before it is sent (and skipped when another sender
/// took it meanwhile), so however long the batch takes, the lease always
/// covers the one send in progress.
const CLAIM_LEASE_SECS: u64 = 120;
/// Messages claimed per pass.
const CLAIM_BATCH: usize = 64;
/// The bound on one send.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

pub struct OutboxWorker {
    pub store: Arc<dyn Store>,
    /// The transport and retry policy in force (a reload swaps them).
    pub mail: Arc<ArcSwap<MailRuntime>>,
    pub clock: Arc<dyn Clock>,
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    /// The sender of the messages that are HTTP deliveries, not mail.
    pub http: Option<Arc<dyn HttpDelivery>>,
}

/// What the worker derives from `[mail]`: built at start and by each
/// reload, loaded once per delivery pass.
pub struct MailRuntime {
    pub transport: Arc<dyn Transport>,
    pub max_attempts: u32,
    pub retry_base_secs: u64,
}

impl MailRuntime {
    pub fn build(cfg: &crate::config::MailConfig) -> Result<Self, String> {
        Ok(Self {
            transport: super::transport_for(cfg)?,
            max_attempts: cfg.max_attempts,
            retry_base_secs: cfg.retry_base_secs,
        })
    }

    /// The backoff before attempt `attempts + 1`: doubling from the base,
    /// capped at an hour.
    pub fn backoff(&self, attempts: u32) -> u64 {
        self.retry_base_secs
            .saturating_mul(1u64 << attempts.saturating_sub(1).min(10))
            .min(3600)
    }
}

impl OutboxWorker {
    /// One pass over the due messages. Each attempt is recorded on the
    /// current message (durably) before the next one is sent.
    pub async fn deliver_due(&self) {
        let now = self.clock.now();
        let mail = self.mail.load_full();
        // Claimed messages are leased to this sender: another gateway on
        // the same database does not send them too.
        let due = match self
            .store
            .claim_mail(now, CLAIM_LEASE_SECS, CLAIM_BATCH)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(cause = %e, "outbox: cannot claim due mail");
                return;
            }
        };
        for claimed in due {
            // The batch may have outlasted its lease: send only what is
            // still this sender's, under a lease renewed for this send.
            let now = self.clock.now();
            let msg = match self
                .store
                .renew_mail_claim(claimed.id, now, CLAIM_LEASE_SECS)
                .await
            {
                Ok(Some(m)) => m,
                Ok(None) => {
                    tracing::debug!(id = %claimed.id, "outbox: another sender has this message now");
                    continue;
                }
                Err(e) => {
                    tracing::error!(cause = %e, "outbox: cannot renew a claim; not sending");
                    continue;
                }
            };
            let send = async {
                match &self.http {
                    Some(h) if h.handles(&msg.kind) => h.send(&msg).await,
                    _ => mail.transport.send(&msg).await,
                }
            };
            let sent = tokio::time::timeout(SEND_TIMEOUT, send)
                .await
                .unwrap_or_else(|_| Err("send timed out".into()));
            let delivery = match sent {
                Ok(()) => {
                    self.metrics.email(&msg.kind, "sent");
                    tracing::info!(kind = %msg.kind, id = %msg.id, "mail delivered");
                    Delivery::Sent
                }
                Err(err) => {
                    let attempts = msg.attempts + 1;
                    let give_up = attempts >= mail.max_attempts;
                    let backoff = mail.backoff(attempts);
                    if give_up {
                        self.metrics.email(&msg.kind, "failed");
                        tracing::error!(kind = %msg.kind, id = %msg.id, attempts, cause = %err, "mail delivery failed for good; kept in the outbox");
                    } else {
                        self.metrics.email(&msg.kind, "retry");
                        tracing::warn!(kind = %msg.kind, id = %msg.id, attempts, retry_in = backoff, cause = %err, "mail delivery failed; will retry");
                    }
                    Delivery::Failed {
                        error: err,
                        retry_at: now + backoff as i64,
                        give_up,
                        now,
                    }
                }
            };
            if let Err(e) = self.store.record_delivery(msg.id, delivery).await {
                tracing::error!(cause = %e, "outbox: cannot record a delivery attempt");
            }
        }
        // The pending gauge is computed when /metrics is scraped.
    }
}

#[async_trait]
impl BackgroundService for OutboxWorker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            // Shutdown interrupts a pass: a message cut off mid-send stays
            // queued and goes out after the restart (at least once).
            tokio::select! {
                _ = self.deliver_due() => {}
                _ = shutdown.changed() => break,
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => break,
            }
        }
    }
}
