//! Prometheus metrics, registered once per process in the default registry
//! (what `pingora-prometheus` and the admin listener export).

use once_cell::sync::Lazy;
use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    HistogramVec, IntCounter, IntCounterVec, IntGauge,
};

pub static AUTH_EVENTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "portcullis_auth_events_total",
        "Auth events by event and outcome.",
        &["event", "outcome"]
    )
    .expect("metric registers once")
});

pub static TOKEN_CHECKS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "portcullis_token_checks_total",
        "Bearer token checks by result.",
        &["result"]
    )
    .expect("metric registers once")
});

pub static THROTTLED: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "portcullis_throttled_total",
        "Requests refused by a throttle, by scope.",
        &["scope"]
    )
    .expect("metric registers once")
});

pub static UPSTREAM_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    register_histogram_vec!(
        "portcullis_upstream_duration_seconds",
        "Time from sending a proxied request upstream to the end of its response.",
        &["route"]
    )
    .expect("metric registers once")
});

pub static REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "portcullis_requests_total",
        "Requests handled, by route and status class.",
        &["route", "status"]
    )
    .expect("metric registers once")
});

pub static REQUEST_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    register_histogram_vec!(
        "portcullis_request_duration_seconds",
        "Whole request latency as seen by the gateway, by route.",
        &["route"]
    )
    .expect("metric registers once")
});

pub static UPSTREAM_ERRORS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "portcullis_upstream_errors_total",
        "Proxied requests that failed upstream, by route.",
        &["route"]
    )
    .expect("metric registers once")
});

pub static EMAILS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "portcullis_emails_total",
        "Emails by kind and delivery outcome.",
        &["kind", "outcome"]
    )
    .expect("metric registers once")
});

pub static EMAILS_PENDING: Lazy<IntGauge> = Lazy::new(|| {
    register_int_gauge!(
        "portcullis_emails_pending",
        "Messages waiting in the outbox."
    )
    .expect("metric registers once")
});

pub static HASH_QUEUE_FULL: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "portcullis_hash_queue_rejected_total",
        "Requests refused with 503 because the password hashing queue was full."
    )
    .expect("metric registers once")
});

pub static SWEPT: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "portcullis_swept_total",
        "Expired records removed by the maintenance sweep, by kind.",
        &["kind"]
    )
    .expect("metric registers once")
});

pub fn swept(r: &crate::store::SweepReport) {
    for (kind, n) in [
        ("session", r.sessions),
        ("one_time_token", r.one_time),
        ("revocation", r.revocations),
        ("cutoff", r.cutoffs),
        ("failed_mail", r.mail),
    ] {
        SWEPT.with_label_values(&[kind]).inc_by(n as u64);
    }
}

/// Touch every metric so each family is exported from the first scrape.
pub fn init() {
    for e in [
        "register",
        "login",
        "refresh",
        "logout",
        "password_reset",
        "email_verify",
    ] {
        for o in ["success", "failure", "throttled"] {
            AUTH_EVENTS.with_label_values(&[e, o]);
        }
    }
    for r in ["valid", "missing", "invalid", "expired", "revoked"] {
        TOKEN_CHECKS.with_label_values(&[r]);
    }
    for s in ["ip", "account", "route"] {
        THROTTLED.with_label_values(&[s]);
    }
    Lazy::force(&UPSTREAM_DURATION);
    Lazy::force(&REQUESTS);
    Lazy::force(&REQUEST_DURATION);
    Lazy::force(&UPSTREAM_ERRORS);
    Lazy::force(&EMAILS);
    Lazy::force(&EMAILS_PENDING);
    Lazy::force(&HASH_QUEUE_FULL);
    swept(&crate::store::SweepReport::default());
}

pub fn auth_event(event: &str, outcome: &str) {
    AUTH_EVENTS.with_label_values(&[event, outcome]).inc();
}

/// Scrapes one at a time: see [`render_with_pending`].
static SCRAPE: parking_lot::Mutex<()> = parking_lot::const_mutex(());

/// [`render`], with the pending-mail gauge first set from the outbox of the
/// gateway being scraped. The gauge is computed at scrape time (not by the
/// outbox worker) so a process running several gateways, as the integration
/// tests do, never reports another gateway's outbox.
pub fn render_with_pending(pending: Option<i64>) -> Vec<u8> {
    let _one_scrape_at_a_time = SCRAPE.lock();
    if let Some(n) = pending {
        EMAILS_PENDING.set(n);
    }
    render()
}

/// The default registry in Prometheus text format.
pub fn render() -> Vec<u8> {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&prometheus::gather(), &mut buf);
    buf
}
