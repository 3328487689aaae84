//! Prometheus metrics, one registry per gateway: [`Metrics`] is built in
//! `server::start`, shared by the proxy, the auth handlers, the hasher, the
//! outbox and the maintenance service, and rendered by the admin listener.
//! A process that runs several gateways (the integration tests do) reports
//! each one's own numbers, so tests can assert exact deltas.
//!
//! The hot path never looks a metric up by name: the bearer check holds one
//! counter per result, and each route its own [`RouteMetrics`], both
//! resolved when the gateway is built.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

use crate::tokens::rejection::TokenRejection;

const AUTH_EVENTS: [&str; 6] = [
    "register",
    "login",
    "refresh",
    "logout",
    "password_reset",
    "email_verify",
];
const OUTCOMES: [&str; 3] = ["success", "failure", "throttled"];
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// The rules a proxied request can be refused 403 by (the `rule` label of
/// `portcullis_route_denials_total`).
pub const ROUTE_DENIAL_RULES: [&str; 8] = [
    "networks",
    "schedule",
    "csrf",
    "scopes",
    "roles",
    "roles_all",
    "mfa",
    "auth",
];

/// Every metric of one gateway, registered in its own [`Registry`].
pub struct Metrics {
    registry: Registry,
    auth_events: IntCounterVec,
    token_checks: TokenChecks,
    throttled_vec: IntCounterVec,
    pub throttled_ip: IntCounter,
    pub throttled_account: IntCounter,
    pub throttled_route: IntCounter,
    upstream_duration: HistogramVec,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_errors: IntCounterVec,
    emails: IntCounterVec,
    emails_pending: IntGauge,
    pub hash_queue_rejected: IntCounter,
    swept: IntCounterVec,
    store_writable: IntGauge,
    store_write_failures: IntCounter,
    /// Webhook deliveries (CONTRACT 8.5), see [`WebhookMetrics`].
    pub webhooks: WebhookMetrics,
    store_recoveries: IntCounter,
    connections_open: IntGauge,
    connections_refused: IntCounter,
    /// `portcullis_config_reloads_total{result}`: applied, refused.
    pub config_reloads: IntCounterVec,
    /// Proxied requests refused 403 by a route rule (CONTRACT 8.4).
    route_denials: IntCounterVec,
    /// `portcullis_federated_logins_total{provider,outcome}` (CONTRACT 8.1).
    federated_logins: IntCounterVec,
    /// `portcullis_audit_chain_head_seq`: the stored audit chain's newest
    /// sequence number, as last published (CONTRACT 8.5).
    pub audit_chain_head_seq: IntGauge,
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registers once");
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registers once");
    c
}

/// Bring a counter mirrored from elsewhere up to `total`.
fn catch_up(c: &IntCounter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

/// The bearer check's counters, one per result.
pub struct TokenChecks {
    valid: IntCounter,
    missing: IntCounter,
    invalid: IntCounter,
    expired: IntCounter,
    revoked: IntCounter,
    api_key_valid: IntCounter,
    api_key_invalid: IntCounter,
    api_key_expired: IntCounter,
}

impl TokenChecks {
    /// Count one API key check (`result`: `api_key_valid`,
    /// `api_key_invalid`, `api_key_expired`).
    pub fn count_key(&self, rejection: Option<crate::tokens::rejection::KeyRejection>) {
        use crate::tokens::rejection::KeyRejection;
        match rejection {
            None => &self.api_key_valid,
            Some(KeyRejection::Invalid) => &self.api_key_invalid,
            Some(KeyRejection::Expired) => &self.api_key_expired,
        }
        .inc();
    }

    /// Count one check: `None` = valid.
    pub fn count(&self, rejection: Option<TokenRejection>) {
        match rejection {
            None => &self.valid,
            Some(TokenRejection::Missing) => &self.missing,
            Some(TokenRejection::Invalid) => &self.invalid,
            Some(TokenRejection::Expired) => &self.expired,
            Some(TokenRejection::Revoked) => &self.revoked,
        }
        .inc();
    }
}

/// One route's request metrics (`route` label resolved once).
pub struct RouteMetrics {
    /// By status class, in [`STATUS_CLASSES`] order.
    requests: [IntCounter; 6],
    pub request_duration: Histogram,
    pub upstream_duration: Histogram,
    pub upstream_errors: IntCounter,
}

impl RouteMetrics {
    /// Count one finished request with this response status (0 = none).
    pub fn request(&self, status: u16) {
        let i = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        self.requests[i].inc();
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(m.clone())).expect("registers once");
    m
}

/// The webhook side of the outbox: attempts by outcome, and what waits.
pub struct WebhookMetrics {
    deliveries: IntCounterVec,
    backlog: IntGauge,
}

/// The outcomes of one webhook delivery attempt.
pub const WEBHOOK_OUTCOMES: [&str; 3] = ["sent", "retry", "failed"];

impl WebhookMetrics {
    fn new(r: &Registry) -> Self {
        let deliveries = counter_vec(
            r,
            "portcullis_webhook_deliveries_total",
            "Webhook delivery attempts by outcome (sent, retry, failed: failed for good, kept).",
            &["outcome"],
        );
        for o in WEBHOOK_OUTCOMES {
            deliveries.with_label_values(&[o]);
        }
        let backlog = IntGauge::new(
            "portcullis_webhook_backlog",
            "Webhook deliveries waiting in the outbox (not yet sent, not failed for good).",
        )
        .expect("valid metric");
        r.register(Box::new(backlog.clone()))
            .expect("registers once");
        Self {
            deliveries,
            backlog,
        }
    }

    /// Count one delivery attempt (`outcome`: one of [`WEBHOOK_OUTCOMES`]).
    pub fn delivery(&self, outcome: &str) {
        self.deliveries.with_label_values(&[outcome]).inc();
    }

    /// Set at scrape time from the outbox, whatever `/readyz` says.
    pub fn set_backlog(&self, n: i64) {
        self.backlog.set(n);
    }
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let m = HistogramVec::new(HistogramOpts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(m.clone())).expect("registers once");
    m
}

/// Sign-ins and the checks of credentials: auth events, bearer and API
/// key checks, throttles.
struct AuthFamilies {
    auth_events: IntCounterVec,
    token_checks: TokenChecks,
    throttled_vec: IntCounterVec,
    federated_logins: IntCounterVec,
}

impl AuthFamilies {
    fn new(r: &Registry) -> Self {
        let auth_events = counter_vec(
            r,
            "portcullis_auth_events_total",
            "Auth events by event and outcome.",
            &["event", "outcome"],
        );
        for e in AUTH_EVENTS {
            for o in OUTCOMES {
                auth_events.with_label_values(&[e, o]);
            }
        }
        let checks = counter_vec(
            r,
            "portcullis_token_checks_total",
            "Bearer token checks by result.",
            &["result"],
        );
        let token_checks = TokenChecks {
            valid: checks.with_label_values(&["valid"]),
            missing: checks.with_label_values(&["missing"]),
            invalid: checks.with_label_values(&["invalid"]),
            expired: checks.with_label_values(&["expired"]),
            revoked: checks.with_label_values(&["revoked"]),
            api_key_valid: checks.with_label_values(&["api_key_valid"]),
            api_key_invalid: checks.with_label_values(&["api_key_invalid"]),
            api_key_expired: checks.with_label_values(&["api_key_expired"]),
        };
        let throttled_vec = counter_vec(
            r,
            "portcullis_throttled_total",
            "Requests refused by a throttle, by scope.",
            &["scope"],
        );
        let federated_logins = counter_vec(
            r,
            "portcullis_federated_logins_total",
            "Sign-ins with an outside provider, by provider and outcome.",
            &["provider", "outcome"],
        );
        Self {
            auth_events,
            token_checks,
            throttled_vec,
            federated_logins,
        }
    }
}

/// Requests by route: counts, latencies, upstream failures, rule denials.
struct ProxyFamilies {
    upstream_duration: HistogramVec,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_errors: IntCounterVec,
    route_denials: IntCounterVec,
}

impl ProxyFamilies {
    fn new(r: &Registry) -> Self {
        let upstream_duration = histogram_vec(
            r,
            "portcullis_upstream_duration_seconds",
            "Time from sending a proxied request upstream to the end of its response.",
            &["route"],
        );
        let requests = counter_vec(
            r,
            "portcullis_requests_total",
            "Requests handled, by route and status class.",
            &["route", "status"],
        );
        let request_duration = histogram_vec(
            r,
            "portcullis_request_duration_seconds",
            "Whole request latency as seen by the gateway, by route.",
            &["route"],
        );
        let upstream_errors = counter_vec(
            r,
            "portcullis_upstream_errors_total",
            "Proxied requests that failed upstream, by route.",
            &["route"],
        );
        let route_denials = counter_vec(
            r,
            "portcullis_route_denials_total",
            "Proxied requests refused 403 by a route rule, by rule.",
            &["rule"],
        );
        for rule in ROUTE_DENIAL_RULES {
            route_denials.with_label_values(&[rule]);
        }
        Self {
            upstream_duration,
            requests,
            request_duration,
            upstream_errors,
            route_denials,
        }
    }
}

/// Mail through the outbox, and the password hasher's queue.
struct OutboxFamilies {
    emails: IntCounterVec,
    emails_pending: IntGauge,
    hash_queue_rejected: IntCounter,
}

impl OutboxFamilies {
    fn new(r: &Registry) -> Self {
        let emails = counter_vec(
            r,
            "portcullis_emails_total",
            "Emails by kind and delivery outcome.",
            &["kind", "outcome"],
        );
        let emails_pending = IntGauge::new(
            "portcullis_emails_pending",
            "Messages waiting in the outbox.",
        )
        .expect("valid metric");
        r.register(Box::new(emails_pending.clone()))
            .expect("registers once");
        let hash_queue_rejected = IntCounter::new(
            "portcullis_hash_queue_rejected_total",
            "Requests refused with 503 because the password hashing queue was full.",
        )
        .expect("valid metric");
        r.register(Box::new(hash_queue_rejected.clone()))
            .expect("registers once");
        Self {
            emails,
            emails_pending,
            hash_queue_rejected,
        }
    }
}

/// The store: the sweep, and writes failing and recovering.
struct StoreFamilies {
    swept: IntCounterVec,
    store_writable: IntGauge,
    store_write_failures: IntCounter,
    store_recoveries: IntCounter,
}

impl StoreFamilies {
    fn new(r: &Registry) -> Self {
        let swept = counter_vec(
            r,
            "portcullis_swept_total",
            "Expired records removed by the maintenance sweep, by kind.",
            &["kind"],
        );
        let store_writable = gauge(
            r,
            "portcullis_store_writable",
            "1 while the store accepts writes; 0 from a failed write (a full disk) until it has recovered.",
        );
        store_writable.set(1);
        let store_write_failures = counter(
            r,
            "portcullis_store_write_failures_total",
            "Store commits that failed (every operation in them answered 503).",
        );
        let store_recoveries = counter(
            r,
            "portcullis_store_recoveries_total",
            "Recoveries from a failed store write without a restart.",
        );
        Self {
            swept,
            store_writable,
            store_write_failures,
            store_recoveries,
        }
    }
}

/// The server itself: config reloads and client connections.
struct ServerFamilies {
    config_reloads: IntCounterVec,
    connections_open: IntGauge,
    connections_refused: IntCounter,
}

impl ServerFamilies {
    fn new(r: &Registry) -> Self {
        let config_reloads = counter_vec(
            r,
            "portcullis_config_reloads_total",
            "Config reloads (SIGHUP, portcullis reload, portcullis keys rotate) by result: applied or refused.",
            &["result"],
        );
        for result in ["applied", "refused"] {
            config_reloads.with_label_values(&[result]);
        }
        let connections_open = gauge(
            r,
            "portcullis_connections_open",
            "Client connections open on the public listeners (after the TLS handshake).",
        );
        let connections_refused = counter(
            r,
            "portcullis_connections_refused_total",
            "Client connections closed at once because limits.max_connections were open.",
        );
        Self {
            config_reloads,
            connections_open,
            connections_refused,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered and every fixed label
    /// combination touched, so each is exported from the first scrape.
    pub fn new() -> Self {
        let r = Registry::new();
        let AuthFamilies {
            auth_events,
            token_checks,
            throttled_vec,
            federated_logins,
        } = AuthFamilies::new(&r);
        let ProxyFamilies {
            upstream_duration,
            requests,
            request_duration,
            upstream_errors,
            route_denials,
        } = ProxyFamilies::new(&r);
        let OutboxFamilies {
            emails,
            emails_pending,
            hash_queue_rejected,
        } = OutboxFamilies::new(&r);
        let StoreFamilies {
            swept,
            store_writable,
            store_write_failures,
            store_recoveries,
        } = StoreFamilies::new(&r);
        let ServerFamilies {
            config_reloads,
            connections_open,
            connections_refused,
        } = ServerFamilies::new(&r);
        let webhooks = WebhookMetrics::new(&r);
        let audit_chain_head_seq = gauge(
            &r,
            "portcullis_audit_chain_head_seq",
            "The stored audit chain's newest sequence number, as last published (its hash is in the log line audit_chain_head).",
        );
        let m = Self {
            webhooks,
            audit_chain_head_seq,
            store_writable,
            store_write_failures,
            store_recoveries,
            connections_open,
            connections_refused,
            config_reloads,
            throttled_ip: throttled_vec.with_label_values(&["ip"]),
            throttled_account: throttled_vec.with_label_values(&["account"]),
            throttled_route: throttled_vec.with_label_values(&["route"]),
            registry: r,
            auth_events,
            token_checks,
            throttled_vec,
            upstream_duration,
            requests,
            request_duration,
            upstream_errors,
            emails,
            emails_pending,
            hash_queue_rejected,
            swept,
            route_denials,
            federated_logins,
        };
        m.swept(&crate::store::SweepReport::default());
        m
    }

    pub fn auth_event(&self, event: &str, outcome: &str) {
        self.auth_events.with_label_values(&[event, outcome]).inc();
    }

    pub fn token_checks(&self) -> &TokenChecks {
        &self.token_checks
    }

    /// The handles for one `route` label (a route prefix, "auth" or
    /// "none"); call once per route when building the proxy.
    pub fn route(&self, label: &str) -> RouteMetrics {
        RouteMetrics {
            requests: STATUS_CLASSES.map(|c| self.requests.with_label_values(&[label, c])),
            request_duration: self.request_duration.with_label_values(&[label]),
            upstream_duration: self.upstream_duration.with_label_values(&[label]),
            upstream_errors: self.upstream_errors.with_label_values(&[label]),
        }
    }

    /// Count a 403 of a proxied request under the rule that decided it.
    pub fn route_denial(&self, rule: &str) {
        self.route_denials.with_label_values(&[rule]).inc();
    }

    /// Count one federated sign-in step's outcome (`success`,
    /// `mfa_required`, `linked`, or the error code shown).
    pub fn federated_login(&self, provider: &str, outcome: &str) {
        self.federated_logins
            .with_label_values(&[provider, outcome])
            .inc();
    }

    /// Count one email delivery attempt (`outcome`: sent, retry, failed).
    pub fn email(&self, kind: &str, outcome: &str) {
        self.emails.with_label_values(&[kind, outcome]).inc();
    }

    pub fn swept(&self, r: &crate::store::SweepReport) {
        for (kind, n) in [
            ("session", r.sessions),
            ("one_time_token", r.one_time),
            ("revocation", r.revocations),
            ("cutoff", r.cutoffs),
            ("failed_mail", r.mail),
            ("counter", r.counters),
        ] {
            self.swept.with_label_values(&[kind]).inc_by(n as u64);
        }
    }

    /// This gateway's registry in Prometheus text format, with the
    /// pending-mail gauge first set from its outbox (computed at scrape
    /// time, not by the outbox worker).
    pub fn render(&self, pending: Option<i64>) -> Vec<u8> {
        if let Some(n) = pending {
            self.emails_pending.set(n);
        }
        let mut buf = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }

    /// Mirror the store's health into the registry (at scrape time).
    pub fn observe_store(&self, s: &crate::store::StoreStats) {
        self.store_writable.set(i64::from(s.writable));
        catch_up(&self.store_write_failures, s.write_failures);
        catch_up(&self.store_recoveries, s.recoveries);
    }

    /// Mirror the connection limiter into the registry (at scrape time).
    pub fn observe_connections(&self, open: usize, refused: u64) {
        self.connections_open.set(open as i64);
        catch_up(&self.connections_refused, refused);
    }

    /// The throttled counter for a scope by name (not on the hot path).
    pub fn throttled(&self, scope: &str) -> IntCounter {
        self.throttled_vec.with_label_values(&[scope])
    }
}
