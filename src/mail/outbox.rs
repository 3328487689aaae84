//! The outbox worker: delivers queued messages, retrying with exponential
//! backoff. A message that fails for good is marked and logged, never
//! dropped. Messages survive restarts because they live in the store.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::Notify;

use super::Transport;
use crate::clock::Clock;
use crate::metrics;
use crate::store::Store;

pub struct OutboxWorker {
    pub store: Arc<dyn Store>,
    pub transport: Arc<dyn Transport>,
    pub clock: Arc<dyn Clock>,
    pub wake: Arc<Notify>,
    pub max_attempts: u32,
    pub retry_base_secs: u64,
}

impl OutboxWorker {
    /// One pass over the due messages.
    pub async fn deliver_due(&self) {
        let all = match self.store.list_mail() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(cause = %e, "outbox: cannot read");
                return;
            }
        };
        let now = self.clock.now();
        for mut msg in all
            .into_iter()
            .filter(|m| !m.failed && m.next_attempt_at <= now)
        {
            let sent = tokio::time::timeout(Duration::from_secs(60), self.transport.send(&msg))
                .await
                .unwrap_or_else(|_| Err("send timed out".into()));
            match sent {
                Ok(()) => {
                    metrics::EMAILS
                        .with_label_values(&[&msg.kind, "sent"])
                        .inc();
                    tracing::info!(kind = %msg.kind, id = %msg.id, "mail delivered");
                    if let Err(e) = self.store.delete_mail(&msg.id) {
                        tracing::error!(cause = %e, "outbox: cannot delete a sent message");
                    }
                }
                Err(err) => {
                    msg.attempts += 1;
                    msg.last_error = Some(err.clone());
                    if msg.attempts >= self.max_attempts {
                        msg.failed = true;
                        metrics::EMAILS
                            .with_label_values(&[&msg.kind, "failed"])
                            .inc();
                        tracing::error!(kind = %msg.kind, id = %msg.id, attempts = msg.attempts, cause = %err, "mail delivery failed for good; kept in the outbox");
                    } else {
                        let backoff = self
                            .retry_base_secs
                            .saturating_mul(1u64 << (msg.attempts - 1).min(10))
                            .min(3600);
                        msg.next_attempt_at = now + backoff as i64;
                        metrics::EMAILS
                            .with_label_values(&[&msg.kind, "retry"])
                            .inc();
                        tracing::warn!(kind = %msg.kind, id = %msg.id, attempts = msg.attempts, retry_in = backoff, cause = %err, "mail delivery failed; will retry");
                    }
                    if let Err(e) = self.store.update_mail(&msg) {
                        tracing::error!(cause = %e, "outbox: cannot update a message");
                    }
                }
            }
        }
        if let Err(e) = self.store.flush().await {
            tracing::error!(cause = %e, "outbox: flush failed");
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
