//! Webhooks (CONTRACT 8.5): an event that `[[webhooks]]` subscribe to
//! becomes one outbox entry per subscribed webhook, written in the same
//! store operation as the change, and delivered by the outbox worker as an
//! HTTP POST signed the Standard Webhooks way at each attempt:
//!
//! - body `{"type", "timestamp", "data"}` (fixed when the event happens);
//! - `webhook-id`: the outbox entry's id, the same on every attempt, so a
//!   receiver that dedupes on it sees each event once;
//! - `webhook-timestamp`: the attempt's time, in seconds;
//! - `webhook-signature`: `v1,` + base64(HMAC-SHA256(key, id "." timestamp
//!   "." body)), the key being the bytes of the `whsec_` secret.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::audit::AuditEvent;
use crate::config::{WebhookConfig, WEBHOOK_EVENTS};
use crate::store::{HttpPost, OutboxMessage};

/// The outbox `kind` of a webhook delivery.
pub const WEBHOOK_KIND: &str = "webhook";

/// Whether an outbox entry is a webhook delivery (for the backlog gauge).
pub fn is_webhook(m: &OutboxMessage) -> bool {
    m.http.is_some() && m.kind == WEBHOOK_KIND
}

/// The `webhook-signature` of one attempt.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

/// The three Standard Webhooks headers of one attempt at `msg` at `now`.
pub fn signed_headers(key: &[u8], msg: &OutboxMessage, now: i64) -> [(&'static str, String); 3] {
    let id = msg.id.to_string();
    let sig = signature(key, &id, now, msg.body.as_bytes());
    [
        ("webhook-id", id),
        ("webhook-timestamp", now.to_string()),
        ("webhook-signature", sig),
    ]
}

/// What happened, as a webhook tells it: an event type from
/// [`crate::config::WEBHOOK_EVENTS`], when, and its data (ids and names,
/// never a password, token or key).
#[derive(Debug, Clone, PartialEq)]
pub struct HookEvent {
    pub kind: String,
    pub at: i64,
    pub data: serde_json::Value,
}

/// The body of a webhook for `event`.
pub fn body(event: &HookEvent) -> String {
    serde_json::json!({
        "type": event.kind,
        "timestamp": crate::clock::rfc3339(event.at),
        "data": event.data,
    })
    .to_string()
}

/// One outbox entry per webhook in `hooks` that subscribes to `event`, due
/// at once; to be written in the same store operation as the change.
pub fn deliveries(hooks: &[WebhookConfig], event: &HookEvent) -> Vec<OutboxMessage> {
    let body = body(event);
    hooks
        .iter()
        .filter(|h| h.wants(&event.kind))
        .map(|h| OutboxMessage {
            id: Uuid::new_v4(),
            kind: WEBHOOK_KIND.into(),
            to: h.url.clone(),
            subject: event.kind.clone(),
            body: body.clone(),
            created_at: event.at,
            attempts: 0,
            next_attempt_at: event.at,
            failed: false,
            last_error: None,
            failed_at: None,
            claim: None,
            http: Some(HttpPost {
                url: h.url.clone(),
                headers: vec![("content-type".into(), "application/json".into())],
                ca_file: h.ca_file.clone(),
                timeout_secs: h.timeout_secs,
                sign_with: Some(h.secret_env.clone()),
            }),
        })
        .collect()
}

/// The webhook view of an audit event, when its type is one webhooks can
/// subscribe to: `data` holds the user's id, the acting admin (if any), the
/// outcome, the request id and the event's own small details (never a
/// password, token, key or hash: the audit event holds none).
pub fn from_audit(e: &AuditEvent) -> Option<HookEvent> {
    if !WEBHOOK_EVENTS.contains(&e.kind.as_str()) {
        return None;
    }
    let mut data = serde_json::Map::new();
    data.insert("user_id".into(), e.user_id.map(|u| u.to_string()).into());
    if let Some(actor) = &e.actor {
        data.insert("actor".into(), actor.clone().into());
    }
    data.insert("outcome".into(), e.outcome.clone().into());
    data.insert("request_id".into(), e.request_id.clone().into());
    if let serde_json::Value::Object(details) = &e.data {
        for (k, v) in details {
            data.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    Some(HookEvent {
        kind: e.kind.clone(),
        at: e.at,
        data: serde_json::Value::Object(data),
    })
}

/// Every delivery `events` cause for `hooks`, in event order.
pub fn deliveries_for_audit(hooks: &[WebhookConfig], events: &[AuditEvent]) -> Vec<OutboxMessage> {
    if hooks.is_empty() {
        return Vec::new();
    }
    events
        .iter()
        .filter_map(from_audit)
        .flat_map(|ev| deliveries(hooks, &ev))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WebhookKey;

    fn hook(url: &str, events: &[&str]) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            secret_env: "HOOK_SECRET".into(),
            key: WebhookKey(b"0123456789abcdef01234567".to_vec()),
            ca_file: None,
            timeout_secs: 10,
        }
    }

    #[test]
    fn audit_events_map_to_webhook_events_without_client_details() {
        let ctx = crate::audit::AuditCtx {
            ip: "192.0.2.7".parse().unwrap(),
            user_agent: "Firefox",
            request_id: "r1",
        };
        let user = Uuid::new_v4();
        let roles = AuditEvent::new(&ctx, "user.roles_changed", "success", Some(user), 5)
            .actor(Some("admin_api".into()))
            .with("role", "ops");
        let other = AuditEvent::new(&ctx, "refresh", "success", Some(user), 5);
        assert!(from_audit(&other).is_none(), "not a webhook event");
        let ev = from_audit(&roles).unwrap();
        assert_eq!(ev.kind, "user.roles_changed");
        assert_eq!(
            ev.data,
            serde_json::json!({
                "user_id": user.to_string(),
                "actor": "admin_api",
                "outcome": "success",
                "request_id": "r1",
                "role": "ops",
            })
        );
        let hooks = [hook("https://a.test/", &["user.roles_changed"])];
        let out = deliveries_for_audit(&hooks, &[other, roles]);
        assert_eq!(out.len(), 1);
        assert!(!out[0].body.contains("192.0.2.7") && !out[0].body.contains("Firefox"));
        assert!(deliveries_for_audit(&[], &[]).is_empty());
    }

    #[test]
    fn the_signature_is_the_standard_webhooks_one() {
        // The example of the Standard Webhooks reference implementations
        // (their test suite): secret, id, timestamp, payload, signature.
        let key = crate::config::decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn events_become_one_delivery_per_subscribed_hook_with_a_fixed_body() {
        let hooks = [
            hook("https://a.test/", &[]),
            hook("https://b.test/", &["user.login"]),
            hook("https://c.test/", &["user.created", "user.disabled"]),
        ];
        let ev = HookEvent {
            kind: "user.created".into(),
            at: 1_700_000_000,
            data: serde_json::json!({ "user_id": "u1" }),
        };
        let out = deliveries(&hooks, &ev);
        let urls: Vec<_> = out.iter().map(|m| m.to.as_str()).collect();
        assert_eq!(urls, ["https://a.test/", "https://c.test/"]);
        let body: serde_json::Value = serde_json::from_str(&out[0].body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "type": "user.created",
                "timestamp": "2023-11-14T22:13:20Z",
                "data": { "user_id": "u1" },
            })
        );
        assert!(out.iter().all(is_webhook) && out[0].id != out[1].id);
        let http = out[0].http.as_ref().unwrap();
        assert_eq!(http.sign_with.as_deref(), Some("HOOK_SECRET"));
        // The id is stable; the timestamp and signature are the attempt's.
        let first = signed_headers(&hooks[0].key.0, &out[0], 100);
        let later = signed_headers(&hooks[0].key.0, &out[0], 4000);
        assert_eq!(first[0], later[0]);
        assert_eq!(first[0].1, out[0].id.to_string());
        assert_ne!(first[2], later[2]);
        assert_eq!(
            later[2].1,
            signature(
                &hooks[0].key.0,
                &out[0].id.to_string(),
                4000,
                out[0].body.as_bytes()
            )
        );
    }
}
