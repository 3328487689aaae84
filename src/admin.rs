//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and the user
//! administration API used by the CLI while the gateway holds the database.
//! The admin API needs the secret token from `data_dir/admin.token` even on
//! loopback, so an SSRF in an upstream app cannot create an admin.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use subtle::ConstantTimeEq;

use crate::accounts::admin::{AdminCommand, AdminError};
use crate::accounts::AuthService;
use crate::proxy::conn_limit::ConnLimit;

pub const TOKEN_FILE: &str = "admin.token";

pub struct AdminApp {
    pub auth: Arc<AuthService>,
    pub token: Vec<u8>,
    /// The public listeners' connection cap, for its metrics.
    pub connections: Arc<ConnLimit>,
    /// `POST /admin/reload`.
    pub reloader: Arc<crate::reload::Reloader>,
    /// What `/readyz` reports besides the store.
    pub readiness: Arc<Readiness>,
}

/// One listener the gateway was configured with, and whether it has been
/// seen accepting connections.
#[derive(Debug)]
struct Probe {
    /// The config key (`server.listen`, …), so `/readyz` names it.
    name: &'static str,
    addr: SocketAddr,
    /// Part of readiness (the admin listener is not: it answers `/readyz`
    /// itself; start-up still waits for it).
    reported: bool,
    accepting: AtomicBool,
}

/// What "ready" means beyond the store answering: every configured
/// listener accepts connections (a self-probe sees it: Pingora has no bind
/// callback, and a bind that fails panics inside its service task, so a
/// listener that never came up stays "not accepting"), the start-up work is
/// done (key set, revocations, API key index loaded), and no graceful
/// shutdown has begun (503 from its first moment, so a balancer stops
/// sending while requests in flight finish).
#[derive(Debug)]
pub struct Readiness {
    probes: Vec<Probe>,
    started: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// `listeners`: `(config key, address, part of readiness)`.
    pub fn new(listeners: Vec<(&'static str, SocketAddr, bool)>) -> Self {
        Readiness {
            probes: listeners
                .into_iter()
                .map(|(name, addr, reported)| Probe {
                    name,
                    addr,
                    reported,
                    accepting: AtomicBool::new(false),
                })
                .collect(),
            started: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    /// The start-up work (key set, revocations, API key index) is done.
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    /// A graceful shutdown began: not ready from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Every listener (the admin one too) has been seen accepting.
    pub fn all_accepting(&self) -> bool {
        self.probes
            .iter()
            .all(|p| p.accepting.load(Ordering::SeqCst))
    }

    /// The listeners not (yet) seen accepting, as `key (addr)`.
    pub fn not_accepting(&self) -> Vec<String> {
        self.probes
            .iter()
            .filter(|p| !p.accepting.load(Ordering::SeqCst))
            .map(|p| format!("{} ({})", p.name, p.addr))
            .collect()
    }

    /// Why the gateway is not ready, the store aside; empty when it is.
    pub fn reasons(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.draining() {
            why.push("shutting down: draining the requests in flight".to_string());
        }
        if !self.started.load(Ordering::SeqCst) {
            why.push("start-up is not finished (key set, revocations, API keys)".to_string());
        }
        for p in self.probes.iter().filter(|p| p.reported) {
            if !p.accepting.load(Ordering::SeqCst) {
                why.push(format!(
                    "{} ({}) is not accepting connections",
                    p.name, p.addr
                ));
            }
        }
        why
    }

    /// One round of the self-probe, for each listener not yet seen
    /// accepting: this process holds a listening socket on its address
    /// (Linux: `/proc/net/tcp*` against our own descriptors, so another
    /// program listening on a port our bind failed to take is not mistaken
    /// for us), and a TCP connect to it succeeds (an unspecified address
    /// through loopback). Returns whether every listener has now been seen
    /// accepting.
    pub async fn probe(&self) -> bool {
        let pending: Vec<SocketAddr> = self
            .probes
            .iter()
            .filter(|p| !p.accepting.load(Ordering::SeqCst))
            .map(|p| p.addr)
            .collect();
        if pending.is_empty() {
            return true;
        }
        let owned = tokio::task::spawn_blocking(move || {
            pending
                .into_iter()
                .map(|a| (a, own_listener(a)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for p in &self.probes {
            if p.accepting.load(Ordering::SeqCst) {
                continue;
            }
            let ours = owned
                .iter()
                .find(|(a, _)| *a == p.addr)
                .and_then(|(_, o)| *o);
            if ours == Some(false) {
                continue;
            }
            let target = match p.addr.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => {
                    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), p.addr.port())
                }
                IpAddr::V6(ip) if ip.is_unspecified() => {
                    SocketAddr::new(Ipv6Addr::LOCALHOST.into(), p.addr.port())
                }
                _ => p.addr,
            };
            let connect = tokio::net::TcpStream::connect(target);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), connect).await {
                p.accepting.store(true, Ordering::SeqCst);
            }
        }
        self.all_accepting()
    }
}

/// Does this process hold a listening TCP socket on `addr`? `None` where
/// that cannot be known (no `/proc`); then the connect alone decides.
fn own_listener(addr: SocketAddr) -> Option<bool> {
    let ours: std::collections::HashSet<u64> = std::fs::read_dir("/proc/self/fd")
        .ok()?
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let mut seen = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        seen = true;
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            if parse_proc_addr(f[1]) == Some(addr)
                && f[9].parse::<u64>().is_ok_and(|i| ours.contains(&i))
            {
                return Some(true);
            }
        }
    }
    seen.then_some(false)
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6), as the
/// kernel prints them: each 32-bit word in host byte order.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<[u8; 4]> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<Vec<u32>>>()?
        .into_iter()
        .map(u32::to_ne_bytes)
        .collect();
    let ip: IpAddr = match (ip.len(), words.as_slice()) {
        (8, [w]) => Ipv4Addr::from(*w).into(),
        (32, [a, b, c, d]) => {
            let mut o = [0u8; 16];
            for (i, w) in [a, b, c, d].into_iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(w);
            }
            let v6 = Ipv6Addr::from(o);
            // A v4 listener never shows in tcp6; a mapped address is the
            // v4 one.
            v6.to_ipv4_mapped().map_or(v6.into(), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The self-probe as a background service: probes until every listener
/// has been seen accepting (a bind Pingora retries comes up late; one that
/// never does leaves `/readyz` at 503 naming it).
pub struct ReadinessProbe(pub Arc<Readiness>);

#[async_trait]
impl pingora::services::background::BackgroundService for ReadinessProbe {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            if self.0.probe().await {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
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

/// The response body of a streamed answer, as a backup's sink.
struct SessionSink<'a>(&'a mut ServerSession);

#[async_trait]
impl crate::store::copy::BackupSink for SessionSink<'_> {
    async fn write(&mut self, chunk: Vec<u8>) -> Result<(), String> {
        self.0
            .write_response_body(chunk.into(), false)
            .await
            .map_err(|e| format!("sending the backup: {e}"))
    }
}

/// Pingora's `ServeHttp` answers with a body built whole; the admin
/// listener serves its answers that way ([`AdminApp::response`]) except
/// the backup, which streams. This is Pingora's own `ServeHttp` loop
/// (`pingora_core::apps::http_app`) with that one branch.
#[async_trait]
impl HttpServerApp for AdminApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match http.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::debug!(cause = %e, "admin listener: reading a request");
                return None;
            }
        }
        if *shutdown.borrow() {
            http.set_keepalive(None);
        } else {
            http.set_keepalive(Some(60));
        }
        let head = http.req_header();
        if head.method == http::Method::GET
            && head.uri.path() == "/admin/backup"
            && self.authorized(&http)
        {
            return self.stream_backup(http).await;
        }
        let (parts, body) = self.response(&mut http).await.into_parts();
        let head: ResponseHeader = parts.into();
        if let Err(e) = http.write_response_header(Box::new(head)).await {
            tracing::debug!(cause = %e, "admin listener: writing an answer");
            return None;
        }
        if !body.is_empty() {
            if let Err(e) = http.write_response_body(body.into(), true).await {
                tracing::debug!(cause = %e, "admin listener: writing an answer");
                return None;
            }
        }
        let settings = HttpPersistentSettings::for_session(&http);
        match http.finish().await {
            Ok(c) => c.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(e) => {
                tracing::debug!(cause = %e, "admin listener: finishing an answer");
                None
            }
        }
    }
}

impl AdminApp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let path = s.req_header().uri.path().to_string();
        let method = s.req_header().method.clone();
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => {
                let outbox = self.auth.store.list_mail().await.ok();
                let waiting = |of: fn(&crate::store::OutboxMessage) -> bool| {
                    outbox
                        .as_ref()
                        .map(|all| all.iter().filter(|m| !m.failed && of(m)).count() as i64)
                };
                let pending = waiting(crate::store::OutboxMessage::is_mail);
                if let Some(n) = waiting(crate::webhooks::is_webhook) {
                    self.auth.metrics.webhooks.set_backlog(n);
                }
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
            ("GET", "/readyz") => self.readyz().await,
            ("POST", "/admin/users") => self.admin(s).await,
            ("GET", "/admin/backup") => self.backup(s).await,
            ("GET", "/admin/audit") => self.audit(s).await,
            ("POST", "/admin/reload") => self.reload(s).await,
            ("POST", "/admin/explain") => self.explain(s).await,
            _ => err(404, "not_found", "Not found."),
        }
    }
}

impl AdminApp {
    /// 200 only when the listeners accept, start-up is done, no shutdown
    /// is draining and the store answers; else 503 `not_ready` saying why
    /// (`message`, and each cause in `reasons`).
    async fn readyz(&self) -> Response<Vec<u8>> {
        let mut why = self.readiness.reasons();
        match self.auth.store.ping().await {
            Ok(_) => {}
            // A backend that refuses writes (a failed flush, a full
            // disk) says why: an I/O error names no secret.
            Err(e) if !self.auth.store.stats().writable => {
                why.push(format!("Store writes are failing and being retried: {e}."))
            }
            Err(_) => why.push("The store is not available.".to_string()),
        }
        if why.is_empty() {
            return json(200, serde_json::json!({ "status": "ready" }));
        }
        json(
            503,
            serde_json::json!({
                "error": "not_ready",
                "message": why.join("; "),
                "reasons": why,
            }),
        )
    }

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

    /// `GET /admin/backup` without the admin token (with it, the copy
    /// streams: [`AdminApp::stream_backup`]).
    async fn backup(&self, _s: &mut ServerSession) -> Response<Vec<u8>> {
        err(401, "unauthorized", "The admin token is required.")
    }

    /// `GET /admin/backup` with the admin token, for `portcullis backup`
    /// while the gateway runs: the whole store as a backup file (see
    /// [`crate::store::copy::write_backup_streamed`]), written into a
    /// chunked body page by page as it is read, so memory holds a page, not
    /// the copy. A failure mid-way drops the connection before the last
    /// chunk: the client sees a cut body (and a file without its end line),
    /// never a complete-looking copy.
    async fn stream_backup(&self, mut http: ServerSession) -> Option<ReusedHttpStream> {
        // A client that stops reading ends the copy instead of holding the
        // store's read open for ever.
        http.set_write_timeout(Some(std::time::Duration::from_secs(
            self.auth.cfg().limits.downstream_write_timeout_secs,
        )));
        let mut head = ResponseHeader::build(200, Some(5)).ok()?;
        for (name, value) in [
            ("content-type", "application/x-ndjson"),
            ("transfer-encoding", "chunked"),
            ("cache-control", "no-store"),
            ("x-content-type-options", "nosniff"),
        ] {
            head.insert_header(name, value).ok()?;
        }
        if let Err(e) = http.write_response_header(Box::new(head)).await {
            tracing::warn!(cause = %e, "backup: the client went away");
            return None;
        }
        let mut sink = SessionSink(&mut http);
        let now = self.auth.clock.now();
        match crate::store::copy::write_backup_streamed(&*self.auth.store, now, &mut sink).await {
            Ok(h) => {
                let records: u64 = h.counts.values().sum();
                tracing::info!(target: "audit", event = "backup", records);
            }
            Err(e) => {
                tracing::error!(cause = %e, "writing a backup");
                return None;
            }
        }
        let settings = HttpPersistentSettings::for_session(&http);
        match http.finish().await {
            Ok(c) => c.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(e) => {
                tracing::warn!(cause = %e, "backup: finishing the answer");
                None
            }
        }
    }

    /// `GET /admin/audit?since=RFC3339&limit=N` (or `after_seq=N`, to page
    /// through the chain): stored audit records in chain order, with the
    /// chain's head and checkpoint (CONTRACT 8.5). Bad parameters: 400.
    async fn audit(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        if !self.authorized(s) {
            return err(401, "unauthorized", "The admin token is required.");
        }
        let q = match crate::audit::query::parse_query(s.req_header().uri.query()) {
            Ok(q) => q,
            Err(m) => return err(400, "bad_request", &m),
        };
        match crate::audit::query::answer(&self.auth.store, &q).await {
            Ok(v) => json(200, v),
            Err(e) => {
                tracing::error!(cause = %e, "reading the audit trail");
                err(503, "service_unavailable", "The store could not be read.")
            }
        }
    }

    /// `POST /admin/explain` (CONTRACT 8.4): the decision the running
    /// config takes on a request, by the proxy's own code
    /// ([`crate::proxy::explain`]): 200 `{route, decision, rule}`.
    async fn explain(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        if !self.authorized(s) {
            return err(401, "unauthorized", "The admin token is required.");
        }
        let mut body = Vec::new();
        loop {
            match s.read_request_body().await {
                Ok(Some(c)) if body.len() + c.len() > 64 * 1024 => {
                    return err(413, "payload_too_large", "The request body is too large.");
                }
                Ok(Some(c)) => body.extend_from_slice(&c),
                Ok(None) => break,
                Err(_) => return err(400, "bad_request", "The request body could not be read."),
            }
        }
        let q: crate::proxy::explain::Question = match serde_json::from_slice(&body) {
            Ok(q) => q,
            Err(_) => {
                return err(
                    400,
                    "bad_request",
                    "Expected {method, url, email?, api_key_scopes?, ip?, at?}.",
                )
            }
        };
        let cfg = self.auth.cfg();
        let now = self.auth.clock.now();
        match crate::proxy::explain::explain(&cfg, Some(self.auth.store.as_ref()), &q, now).await {
            Ok(a) => json(200, serde_json::to_value(a).unwrap_or_default()),
            Err(e) => err(400, "validation_failed", &e.0),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_parse() {
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_proc_addr("0100007F:1F90"),
                Some("127.0.0.1:8080".parse().unwrap())
            );
            assert_eq!(
                parse_proc_addr("00000000:20FB"),
                Some("0.0.0.0:8443".parse().unwrap())
            );
            assert_eq!(
                parse_proc_addr("00000000000000000000000001000000:0050"),
                Some("[::1]:80".parse().unwrap())
            );
        }
        assert_eq!(parse_proc_addr("zz"), None);
    }

    /// A listener this process holds is seen; a port another process
    /// listens on is not ours.
    #[test]
    fn own_listeners_are_told_from_others() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert_eq!(own_listener(addr), Some(true));
        drop(l);
        assert_eq!(own_listener(addr), Some(false));
    }
}
