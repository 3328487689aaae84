//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and the user
//! administration API used by the CLI while the gateway holds the database.
//! The admin API needs the secret token from `data_dir/admin.token` even on
//! loopback, so an SSRF in an upstream app cannot create an admin.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use subtle::ConstantTimeEq;

use crate::auth::admin::{AdminCommand, AdminError};
use crate::auth::AuthService;
use crate::proxy::conn_limit::ConnLimit;

pub const TOKEN_FILE: &str = "admin.token";

pub struct AdminApp {
    pub auth: Arc<AuthService>,
    pub token: Vec<u8>,
    /// The public listeners' connection cap, for its metrics.
    pub connections: Arc<ConnLimit>,
    /// `POST /admin/reload`.
    pub reloader: Arc<crate::reload::Reloader>,
}

fn reply(status: u16, ctype: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .header("content-length", body.len().to_string())
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .body(body)
        .unwrap_or_default()
}

fn json(status: u16, v: serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", v.to_string().into_bytes())
}

fn err(status: u16, code: &str, message: &str) -> Response<Vec<u8>> {
    json(
        status,
        serde_json::json!({ "error": code, "message": message }),
    )
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let path = s.req_header().uri.path().to_string();
        let method = s.req_header().method.clone();
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => {
                let pending = self
                    .auth
                    .store
                    .list_mail()
                    .await
                    .ok()
                    .map(|all| all.iter().filter(|m| !m.failed).count() as i64);
                self.auth.metrics.observe_store(&self.auth.store.stats());
                self.auth
                    .metrics
                    .observe_connections(self.connections.open(), self.connections.refused());
                reply(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.auth.metrics.render(pending),
                )
            }
            ("GET", "/healthz") => json(200, serde_json::json!({ "status": "ok" })),
            ("GET", "/readyz") => match self.auth.store.ping().await {
                Ok(_) => json(200, serde_json::json!({ "status": "ready" })),
                // A backend that refuses writes (a failed flush, a full
                // disk) says why: an I/O error names no secret.
                Err(e) if !self.auth.store.stats().writable => err(
                    503,
                    "not_ready",
                    &format!("Store writes are failing and being retried: {e}."),
                ),
                Err(_) => err(503, "not_ready", "The store is not available."),
            },
            ("POST", "/admin/users") => self.admin(s).await,
            ("GET", "/admin/backup") => self.backup(s).await,
            ("POST", "/admin/reload") => self.reload(s).await,
            _ => err(404, "not_found", "Not found."),
        }
    }
}

impl AdminApp {
    /// The admin token, compared in constant time.
    fn authorized(&self, s: &ServerSession) -> bool {
        let presented = s
            .req_header()
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .as_bytes()
            .to_vec();
        presented.len() == self.token.len() && bool::from(presented.ct_eq(&self.token))
    }

    /// Read the config file again and apply it (`portcullis reload`, and
    /// `portcullis keys rotate` to pick up the new key): 200 with what
    /// changed, or 409 `reload_refused` with every problem, each naming its
    /// key (the old config stays in force).
    async fn reload(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        if !self.authorized(s) {
            return err(401, "unauthorized", "The admin token is required.");
        }
        let reloader = self.reloader.clone();
        match tokio::task::spawn_blocking(move || reloader.reload("admin")).await {
            Ok(Ok(a)) => json(
                200,
                serde_json::json!({
                    "reloaded": true,
                    "changed": a.changed,
                    "signing_kid": a.signing_kid,
                    "verification_keys": a.verification_keys,
                }),
            ),
            Ok(Err(r)) => json(
                409,
                serde_json::json!({
                    "error": "reload_refused",
                    "message": format!("The reload was refused; the previous config stays in force: {r}"),
                    "problems": r.problems,
                }),
            ),
            Err(_) => err(500, "internal", "An internal error occurred."),
        }
    }

    /// A consistent copy of the whole store (see `store::copy`), for
    /// `portcullis backup` while the gateway runs.
    async fn backup(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        if !self.authorized(s) {
            return err(401, "unauthorized", "The admin token is required.");
        }
        let records = match self.auth.store.snapshot().await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(cause = %e, "backup snapshot");
                return err(503, "service_unavailable", "The store could not be read.");
            }
        };
        let mut out = Vec::new();
        match crate::store::copy::write_backup(&records, self.auth.clock.now(), &mut out) {
            Ok(()) => {
                tracing::info!(target: "audit", event = "backup", records = records.len());
                reply(200, "application/x-ndjson", out)
            }
            Err(e) => {
                tracing::error!(cause = %e, "writing a backup");
                err(500, "internal_error", "The backup could not be written.")
            }
        }
    }

    async fn admin(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        if !self.authorized(s) {
            return err(401, "unauthorized", "The admin token is required.");
        }
        let mut body = Vec::new();
        loop {
            match s.read_request_body().await {
                Ok(Some(c)) => {
                    if body.len() + c.len() > 64 * 1024 {
                        return err(413, "payload_too_large", "The request body is too large.");
                    }
                    body.extend_from_slice(&c);
                }
                Ok(None) => break,
                Err(_) => return err(400, "bad_request", "The request body could not be read."),
            }
        }
        let cmd: AdminCommand = match serde_json::from_slice(&body) {
            Ok(c) => c,
            Err(_) => return err(400, "bad_request", "Unknown or malformed admin command."),
        };
        let ip = s
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        let request_id = uuid::Uuid::new_v4().to_string();
        let actor = crate::audit::AuditCtx {
            ip,
            user_agent: "portcullis admin api",
            request_id: &request_id,
        };
        match self.auth.admin(cmd, &actor).await {
            Ok(v) => json(200, v),
            Err(AdminError::Invalid(m)) => err(400, "validation_failed", &m),
            Err(AdminError::NoSuchUser) => err(404, "not_found", "No user with that email."),
            Err(AdminError::Exists) => {
                err(409, "email_taken", "A user with that email already exists.")
            }
            Err(AdminError::Internal(m)) => {
                tracing::error!(cause = %m, "admin command failed");
                err(500, "internal", "An internal error occurred.")
            }
        }
    }
}
