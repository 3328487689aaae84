//! Back-channel logout to clients (OIDC Back-Channel Logout 1.0): when a
//! client session ends, the store queues a notice in the outbox in the same
//! operation (`store::domain::backchannel_notice`); the outbox worker hands
//! it here, and it is signed and POSTed to the client's
//! `backchannel_logout_uri` (retried by the outbox, sent once across
//! gateways under its claim lease).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use uuid::Uuid;

use crate::accounts::AuthService;
use crate::mail::outbox::HttpDelivery;
use crate::outbound::{Outbound, OutboundOptions};
use crate::store::domain::BACKCHANNEL_KIND;
use crate::store::OutboxMessage;

/// The event a logout token carries.
pub const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// How long a logout token is valid.
const TOKEN_SECS: i64 = 120;
/// The bound on one POST.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct BackchannelSender {
    auth: Arc<AuthService>,
    /// Clients' `backchannel_logout_uri`s are `https://` (or loopback
    /// `http://`), checked again by the client on each send.
    outbound: Result<Outbound, String>,
}

impl BackchannelSender {
    pub fn new(auth: Arc<AuthService>) -> Self {
        let outbound = Outbound::new(OutboundOptions {
            ca_file: None,
            timeout: POST_TIMEOUT,
            max_body: 64 * 1024,
        })
        .map_err(|e| e.to_string());
        Self { auth, outbound }
    }
}

#[async_trait]
impl HttpDelivery for BackchannelSender {
    fn handles(&self, kind: &str) -> bool {
        kind == BACKCHANNEL_KIND
    }

    async fn send(&self, msg: &OutboxMessage) -> Result<(), String> {
        let cfg = self.auth.cfg();
        // A client no longer registered (or without the URI) is owed nothing.
        let Some(c) = cfg.oidc_provider.client(&msg.to) else {
            return Ok(());
        };
        let Some(uri) = &c.backchannel_logout_uri else {
            return Ok(());
        };
        let now = self.auth.clock.now();
        // No nonce (the spec forbids it); a fresh jti per attempt, since a
        // receiver refuses a jti it has seen.
        let claims = json!({
            "iss": cfg.oidc_provider.issuer,
            "aud": c.client_id,
            "iat": now,
            "exp": now + TOKEN_SECS,
            "jti": Uuid::new_v4().to_string(),
            "events": { EVENT: {} },
            "sid": msg.subject,
            "sub": msg.body,
        });
        let token = self.auth.provider_sign("logout+jwt", &claims)?;
        let outbound = self.outbound.as_ref().map_err(|e| e.clone())?;
        let answer = outbound
            .post_form(uri, &[("logout_token", token.as_str())], &[])
            .await
            .map_err(|e| e.to_string())?;
        let status = answer.status().as_u16();
        if status == 200 || status == 204 {
            tracing::info!(client = %c.client_id, "back-channel logout delivered");
            Ok(())
        } else {
            Err(format!("back-channel logout answered {status}"))
        }
    }
}
