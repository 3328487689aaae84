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
use crate::store::domain::BACKCHANNEL_KIND;
use crate::store::OutboxMessage;

/// The event a logout token carries.
pub const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// How long a logout token is valid.
const TOKEN_SECS: i64 = 120;
/// The bound on one POST.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct BackchannelSender {
    pub auth: Arc<AuthService>,
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
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("logout_token", &token)
            .finish();
        let status = tokio::time::timeout(POST_TIMEOUT, post_form(uri, body.as_bytes()))
            .await
            .map_err(|_| "back-channel logout timed out".to_string())??;
        if status == 200 || status == 204 {
            tracing::info!(client = %c.client_id, "back-channel logout delivered");
            Ok(())
        } else {
            Err(format!("back-channel logout answered {status}"))
        }
    }
}

/// POST a form and return the status. Until the shared outbound client
/// (`src/outbound.rs`) is merged: plain HTTP/1.1 to a loopback address
/// only (what config validation lets through besides `https://`).
async fn post_form(uri: &url::Url, body: &[u8]) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !crate::config::oidc_provider::loopback_http(uri) {
        return Err("https back-channel logout needs the outbound client".into());
    }
    let host = uri.host_str().ok_or("no host")?;
    let port = uri.port_or_known_default().ok_or("no port")?;
    let mut path = uri.path().to_string();
    if let Some(q) = uri.query() {
        path.push('?');
        path.push_str(q);
    }
    let mut s = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    s.write_all(body).await.map_err(|e| format!("write: {e}"))?;
    let mut buf = vec![0u8; 1024];
    let mut got = 0;
    while got < buf.len() {
        let n = s
            .read(&mut buf[got..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        got += n;
        if buf[..got].windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    let line = String::from_utf8_lossy(&buf[..got]);
    line.split(' ')
        .nth(1)
        .and_then(|c| c.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "no HTTP status".to_string())
}
