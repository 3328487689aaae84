//! The outbox worker: delivers queued entries (mail, and HTTP deliveries
//! such as webhooks), retrying with exponential backoff. An entry that
//! fails for good is marked and logged, never dropped. Entries survive
//! restarts because they live in the store.
//!
//! One pass claims a batch, splits it into lanes (all mail is one lane;
//! HTTP deliveries one lane per receiver URL), and runs the
//! lanes at once, each in order. A lane whose receiver fails defers the
//! rest of its batch to that entry's next try, and a lane that has used
//! its time budget defers the rest to the next pass: so a slow or dead
//! receiver holds up nothing but its own entries, and no pass lasts much
//! longer than [`LANE_BUDGET`] plus one send.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::Notify;

use super::http::HttpSender;
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
/// claimed under one lease, but each entry's claim is renewed on the
/// current record right before it is sent (and skipped when another sender
/// took it meanwhile), so however long the batch takes, the lease always
/// covers the one send in progress.
const CLAIM_LEASE_SECS: u64 = 120;
/// Entries claimed per pass.
const CLAIM_BATCH: usize = 64;
/// The bound on one mail send (an HTTP delivery has its own timeout,
/// at most 300 s, also under the lease).
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// After this long, a lane sends nothing more in this pass: the rest of its
/// batch is released for the next one.
const LANE_BUDGET: Duration = Duration::from_secs(20);
/// HTTP deliveries: attempts before failing for good, and the first retry
/// delay (doubling, capped at an hour): about 7 hours of retries, so a
/// receiver down for hours loses nothing.
pub const HTTP_MAX_ATTEMPTS: u32 = 16;
pub const HTTP_RETRY_BASE_SECS: u64 = 5;

pub struct OutboxWorker {
    pub store: Arc<dyn Store>,
    /// The transport and retry policy in force (a reload swaps them).
    pub mail: Arc<ArcSwap<MailRuntime>>,
    /// HTTP deliveries (signing keys from the config in force).
    pub http: Arc<HttpSender>,
    pub clock: Arc<dyn Clock>,
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    /// The sender of the HTTP deliveries built at send time (the OpenID
    /// Provider's back-channel logouts: a fresh signed token per attempt).
    pub backchannel: Option<Arc<dyn HttpDelivery>>,
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
        backoff(self.retry_base_secs, attempts)
    }
}

/// The backoff before attempt `attempts + 1`: doubling from `base`, capped
/// at an hour.
pub fn backoff(base: u64, attempts: u32) -> u64 {
    base.saturating_mul(1u64 << attempts.saturating_sub(1).min(10))
        .min(3600)
}

/// What one pass's lanes share.
#[derive(Clone)]
struct Pass {
    store: Arc<dyn Store>,
    mail: Arc<MailRuntime>,
    http: Arc<HttpSender>,
    backchannel: Option<Arc<dyn HttpDelivery>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

/// The lane of an entry: all mail in one, HTTP by the receiver's URL.
fn lane(m: &OutboxMessage) -> String {
    match &m.http {
        None if m.kind == crate::store::domain::BACKCHANNEL_KIND => "back-channel logout".into(),
        None => "mail".into(),
        Some(p) => format!("http {}", p.url),
    }
}

impl OutboxWorker {
    /// One pass over the due entries. Each attempt is recorded on the
    /// current entry (durably) before the next one of its lane is sent.
    pub async fn deliver_due(&self) {
        let now = self.clock.now();
        // Claimed entries are leased to this sender: another gateway on
        // the same database does not send them too.
        let due = match self
            .store
            .claim_mail(now, CLAIM_LEASE_SECS, CLAIM_BATCH)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(cause = %e, "outbox: cannot claim due entries");
                return;
            }
        };
        if due.is_empty() {
            return;
        }
        let pass = Pass {
            store: self.store.clone(),
            mail: self.mail.load_full(),
            http: self.http.clone(),
            backchannel: self.backchannel.clone(),
            clock: self.clock.clone(),
            metrics: self.metrics.clone(),
        };
        let mut lanes: BTreeMap<String, Vec<OutboxMessage>> = BTreeMap::new();
        for m in due {
            lanes.entry(lane(&m)).or_default().push(m);
        }
        let mut running = tokio::task::JoinSet::new();
        for (_, entries) in lanes {
            running.spawn(pass.clone().run_lane(entries));
        }
        while running.join_next().await.is_some() {}
        // The pending gauges are computed when /metrics is scraped.
    }
}

impl Pass {
    async fn run_lane(self, entries: Vec<OutboxMessage>) {
        let started = tokio::time::Instant::now();
        // Set when this lane's receiver failed: the rest wait as long.
        let mut hold_until: Option<i64> = None;
        for claimed in entries {
            let now = self.clock.now();
            let deferred = match hold_until {
                Some(until) => Some(until),
                None if started.elapsed() >= LANE_BUDGET => Some(now),
                None => None,
            };
            if let Some(until) = deferred {
                self.record(claimed.id, Delivery::Deferred { until }).await;
                continue;
            }
            // The batch may have outlasted its lease: send only what is
            // still this sender's, under a lease renewed for this send.
            let msg = match self
                .store
                .renew_mail_claim(claimed.id, now, CLAIM_LEASE_SECS)
                .await
            {
                Ok(Some(m)) => m,
                Ok(None) => {
                    tracing::debug!(id = %claimed.id, "outbox: another sender has this entry now");
                    continue;
                }
                Err(e) => {
                    tracing::error!(cause = %e, "outbox: cannot renew a claim; not sending");
                    continue;
                }
            };
            let delivery = match &self.backchannel {
                Some(h) if h.handles(&msg.kind) => self.send_built(h.as_ref(), &msg, now).await,
                _ if msg.is_mail() => self.send_mail(&msg, now).await,
                _ => self.send_http(&msg, now).await,
            };
            if let Delivery::Failed { retry_at, .. } = &delivery {
                if !msg.is_mail() {
                    hold_until = Some(*retry_at);
                }
            }
            self.record(msg.id, delivery).await;
        }
    }

    async fn record(&self, id: uuid::Uuid, delivery: Delivery) {
        if let Err(e) = self.store.record_delivery(id, delivery).await {
            tracing::error!(cause = %e, "outbox: cannot record a delivery attempt");
        }
    }

    async fn send_mail(&self, msg: &OutboxMessage, now: i64) -> Delivery {
        let mail = &self.mail;
        let sent = tokio::time::timeout(SEND_TIMEOUT, mail.transport.send(msg))
            .await
            .unwrap_or_else(|_| Err("send timed out".into()));
        match sent {
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
        }
    }

    /// An HTTP delivery its handler builds at each attempt.
    async fn send_built(&self, h: &dyn HttpDelivery, msg: &OutboxMessage, now: i64) -> Delivery {
        let sent = tokio::time::timeout(SEND_TIMEOUT, h.send(msg))
            .await
            .unwrap_or_else(|_| Err("send timed out".into()));
        self.http_outcome(msg, sent, now, "")
    }

    async fn send_http(&self, msg: &OutboxMessage, now: i64) -> Delivery {
        let url = msg.http.as_ref().map(|p| p.url.as_str()).unwrap_or("");
        let sent = self.http.send(msg, now).await;
        self.http_outcome(msg, sent, now, url)
    }

    /// An HTTP attempt's result as a delivery: counted (webhooks), logged,
    /// and on failure retried under the HTTP policy.
    fn http_outcome(
        &self,
        msg: &OutboxMessage,
        sent: Result<(), String>,
        now: i64,
        url: &str,
    ) -> Delivery {
        let webhook = crate::webhooks::is_webhook(msg);
        let count = |outcome: &str| {
            if webhook {
                self.metrics.webhooks.delivery(outcome);
            }
        };
        match sent {
            Ok(()) => {
                count("sent");
                tracing::info!(kind = %msg.kind, id = %msg.id, url, "HTTP delivery sent");
                Delivery::Sent
            }
            Err(err) => {
                let attempts = msg.attempts + 1;
                let give_up = attempts >= HTTP_MAX_ATTEMPTS;
                let backoff = backoff(HTTP_RETRY_BASE_SECS, attempts);
                if give_up {
                    count("failed");
                    tracing::error!(kind = %msg.kind, id = %msg.id, url, attempts, cause = %err, "HTTP delivery failed for good; kept in the outbox");
                } else {
                    count("retry");
                    tracing::warn!(kind = %msg.kind, id = %msg.id, url, attempts, retry_in = backoff, cause = %err, "HTTP delivery failed; will retry");
                }
                Delivery::Failed {
                    error: err,
                    retry_at: now + backoff as i64,
                    give_up,
                    now,
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for OutboxWorker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            // Shutdown interrupts a pass: an entry cut off mid-send stays
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
