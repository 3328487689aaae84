//! The Pingora hooks. A request flows:
//!
//! 1. `request_filter`: request id, client IP, header limits, path
//!    normalization. `/auth/*` and `/.well-known/*` are answered locally by
//!    [`crate::accounts::AuthService`]; every other path is matched to a route
//!    and its bearer token checked (401/403 end the request here).
//! 2. `upstream_peer`: round-robin over the route's upstreams.
//! 3. `upstream_request_filter`: strip client identity headers, inject
//!    `X-User-*`, `X-Request-Id` and `X-Forwarded-*`, set the normalized path.
//! 4. `response_filter`: a token-bearing upgrade (101) becomes a supervised
//!    tunnel, closed when its session ends ([`tunnel`]).
//! 5. `fail_to_proxy`: a JSON 502 that names nothing internal.
//! 6. `logging`: metrics and the access line ([`access`]).
//!
//! Beside the hooks: `live.rs`, the route table built from one config
//! (balancers, peers, metric handles); `api.rs`, the local `/auth/*`
//! answers; `respond.rs`, the writing of every answer the gateway gives
//! itself (errors, refusals, the 302 to the portal).

pub mod access;
mod api;
pub mod assertion;
pub mod client_ip;
pub mod conn_limit;
pub mod deadline;
pub mod explain;
pub mod headers;
pub mod identity;
pub mod inflight;
mod live;
pub mod target;
/// Path normalization lives in the leaf [`crate::request_path`] (config
/// checks route prefixes with it); re-exported under its old name.
pub use crate::request_path as path;
mod respond;
pub mod tunnel;
pub mod upgrade;

pub use live::{LiveProxy, ProxyConfig, RouteRuntime};

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::accounts::AuthService;
use crate::browser;
use crate::error::ApiError;
use crate::executor::AuthExecutor;
use crate::metrics::RouteMetrics;
use crate::tokens::jwt::AccessClaims;
use inflight::{InFlight, InFlightGuard};

pub struct Gateway {
    /// The config and routes in force (swapped by a reload).
    pub live: Arc<LiveProxy>,
    pub auth: Arc<AuthService>,
    /// Where `/auth/*` handlers run (at a lower OS priority).
    executor: Arc<AuthExecutor>,
    /// Whether this instance serves the TLS listener.
    tls: bool,
    inflight: Arc<InFlight>,
    /// Request metrics of `/auth/*` and of paths no route matched.
    auth_metrics: RouteMetrics,
    unrouted_metrics: RouteMetrics,
}

pub struct Ctx {
    /// The config and routes this request runs on (loaded once).
    live: Arc<ProxyConfig>,
    request_id: String,
    client_ip: Option<IpAddr>,
    route: Option<usize>,
    claims: Option<Arc<AccessClaims>>,
    /// The API key the request was authenticated with (instead of a token).
    api_key: Option<Arc<crate::accounts::apikeys::KeyEntry>>,
    /// The request presented an API key (valid or not): it never goes
    /// upstream, whatever `forward_authorization` says.
    key_presented: bool,
    path_and_query: Option<String>,
    started: Option<Instant>,
    upstream_started: Option<Instant>,
    local: bool,
    /// The socket peer, and whether it is one of `trusted_proxies`.
    peer: Option<IpAddr>,
    peer_trusted: bool,
    /// The connection's switch, once this request became a supervised tunnel.
    tunnel: Option<Arc<tunnel::TunnelSwitch>>,
    /// `Set-Cookie` values for the response (a rotated or ended browser
    /// session).
    set_cookies: Vec<String>,
    /// `X-Forwarded-Host` for the upstream of a host route.
    forwarded_host: Option<String>,
    /// The rule of a refusal (for the access line).
    rule: Option<&'static str>,
    /// Counts this request as in flight until the context is dropped.
    _inflight: Option<InFlightGuard>,
}

impl Gateway {
    pub fn new(
        live: Arc<LiveProxy>,
        auth: Arc<AuthService>,
        executor: Arc<AuthExecutor>,
        tls: bool,
    ) -> Self {
        Self {
            auth_metrics: auth.metrics.route("auth"),
            unrouted_metrics: auth.metrics.route("none"),
            live,
            auth,
            executor,
            tls,
            inflight: Arc::default(),
        }
    }

    /// Share the in-flight request count that a graceful shutdown waits on.
    pub fn with_inflight(mut self, inflight: Arc<InFlight>) -> Self {
        self.inflight = inflight;
        self
    }

    /// What is refused before the path is even read: too many or too
    /// large headers (431), and an h2c upgrade (an h2c tunnel would carry
    /// HTTP/2 streams no route ever checks).
    fn precheck(
        l: &crate::config::LimitsConfig,
        req: &RequestHeader,
    ) -> std::result::Result<(), ApiError> {
        if req.headers.len() > l.max_header_count {
            return Err(ApiError::HeadersTooLarge);
        }
        let total: usize = req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if total > l.max_header_bytes {
            return Err(ApiError::HeadersTooLarge);
        }
        if headers::is_h2c_upgrade(req) {
            return Err(ApiError::BadRequest("Upgrading to h2c is not supported."));
        }
        Ok(())
    }
}

impl Gateway {
    /// The `X-User-Assertion` of a request with an identity on a route
    /// with `identity_assertion` (CONTRACT 8.3), from the route's cache.
    fn assertion(&self, ctx: &Ctx) -> Option<http::HeaderValue> {
        let cache = ctx.live.routes.get(ctx.route?)?.assertions.as_ref()?;
        let (holder, subject) = match (&ctx.claims, &ctx.api_key) {
            (Some(c), _) => (
                assertion::Holder::Session(uuid::Uuid::parse_str(&c.sid).ok()?),
                assertion::Subject {
                    sub: &c.sub,
                    email: &c.email,
                    roles: &c.roles,
                    amr: &c.amr,
                },
            ),
            (None, Some(k)) => (
                assertion::Holder::ApiKey(k.id),
                assertion::Subject {
                    sub: &k.user_id_str,
                    email: &k.email,
                    roles: &k.roles,
                    amr: &[],
                },
            ),
            (None, None) => return None,
        };
        cache.get(
            &self.auth.tokens.provider,
            &ctx.live.cfg.oidc_provider.issuer,
            holder,
            &subject,
            self.auth.clock.now(),
        )
    }

    /// The request metrics of the `route` label: a configured prefix,
    /// "auth", or "none".
    fn route_metrics<'a>(&'a self, ctx: &'a Ctx) -> &'a RouteMetrics {
        match ctx.route.and_then(|i| ctx.live.routes.get(i)) {
            Some(r) => &r.metrics,
            None if ctx.local => &self.auth_metrics,
            None => &self.unrouted_metrics,
        }
    }
}

/// The tunnel switch of the downstream HTTP/1 connection (every one is a
/// [`deadline::DeadlineStream`]); `None` on HTTP/2.
fn downstream_tunnel_switch(session: &Session) -> Option<Arc<tunnel::TunnelSwitch>> {
    let stream: &dyn pingora::protocols::IO = session.as_downstream().stream()?.as_ref();
    stream
        .as_any()
        .downcast_ref::<deadline::DeadlineStream>()
        .map(|d| d.tunnel().clone())
}

/// Tell the HTTP/1 connection's stream that this request reached our hooks
/// (see `deadline`: Pingora's own error answers are rewritten otherwise).
fn mark_handled(session: &Session) {
    if let Some(stream) = session.as_downstream().stream() {
        let stream: &dyn pingora::protocols::IO = stream.as_ref();
        if let Some(d) = stream.as_any().downcast_ref::<deadline::DeadlineStream>() {
            d.mark_handled();
        }
    }
}

pub(crate) fn is_local(path: &str) -> bool {
    path == "/auth" || path.starts_with("/auth/") || path.starts_with("/.well-known/")
}

/// A UUID v4 for `X-Request-Id`, from the thread's userspace CSPRNG (ChaCha,
/// reseeded from the OS): `Uuid::new_v4` makes a `getrandom` system call
/// per request, the one syscall the proxy path added to bare Pingora's.
fn request_id() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::thread_rng().gen();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut buf)
        .to_string()
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            live: self.live.load_full(),
            request_id: String::new(),
            client_ip: None,
            route: None,
            claims: None,
            api_key: None,
            key_presented: false,
            path_and_query: None,
            started: None,
            upstream_started: None,
            local: false,
            peer: None,
            peer_trusted: false,
            tunnel: None,
            set_cookies: Vec::new(),
            forwarded_host: None,
            rule: None,
            _inflight: Some(self.inflight.enter()),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        mark_handled(session);
        ctx.started = Some(Instant::now());
        ctx.request_id = request_id();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let live = ctx.live.clone();
        let cfg = &live.cfg;
        let trusted = &cfg.server.trusted_proxies;
        ctx.peer_trusted = trusted.iter().any(|n| n.contains(&peer));
        ctx.peer = Some(peer);
        let client_ip = client_ip::client_ip(
            peer,
            &session.req_header().headers,
            trusted,
            cfg.server.client_ip_header,
        );
        ctx.client_ip = Some(client_ip);
        session.set_read_timeout(Some(Duration::from_secs(
            cfg.limits.downstream_read_timeout_secs,
        )));
        session.set_write_timeout(Some(Duration::from_secs(
            cfg.limits.downstream_write_timeout_secs,
        )));
        if let Err(e) = Self::precheck(&cfg.limits, session.req_header()) {
            session.set_keepalive(None);
            return self.respond_error(session, ctx, e).await;
        }
        // Path parameters are stripped before matching, so `/admin;x/users`
        // is matched as `/admin/users`; only then is it known whether the
        // route accepts them.
        let (normalized, had_params) =
            match path::normalize_request(session.req_header().uri.path()) {
                Ok(p) => (p.path, p.had_params),
                Err(e) => {
                    tracing::debug!(reason = %e, "rejected path");
                    let e = ApiError::BadRequest("The request path cannot be normalized safely.");
                    return self.respond_error(session, ctx, e).await;
                }
            };
        let local = is_local(&normalized);
        // The host is read only when some route names one.
        let host = match cfg.route_table.by_host || cfg.browser.cookie_domain.is_some() {
            true => match target::request_host(session.req_header()) {
                Ok(h) => h,
                Err(e) => return self.respond_error(session, ctx, e).await,
            },
            false => None,
        };
        let idx = if local {
            None
        } else {
            cfg.match_route(host, &session.req_header().method, &normalized)
        };
        if had_params && !idx.is_some_and(|i| live.routes[i].route.strip_path_params) {
            tracing::debug!("rejected path parameters");
            let e = ApiError::BadRequest("The request path has ';' path parameters.");
            return self.respond_error(session, ctx, e).await;
        }
        if local {
            return self.serve_local(session, ctx, normalized).await;
        }
        let Some(idx) = idx else {
            return self.respond_error(session, ctx, ApiError::NotFound).await;
        };
        let route = &live.routes[idx].route;
        ctx.route = Some(idx);
        if route.host != crate::config::HostPattern::Any {
            // A host route's upstream learns the host it was asked for.
            ctx.forwarded_host = host
                .and_then(crate::config::normalize_host)
                .map(|h| h.into_owned());
        }
        let req = session.req_header();
        let parts = identity::RequestParts {
            method: &req.method,
            headers: &req.headers,
            authority: req.uri.authority().map(|a| a.as_str()),
            host,
            path: &normalized,
            query: req.uri.query(),
            client_ip,
            request_id: &ctx.request_id,
            tls: self.tls,
        };
        let edge = identity::Edge {
            auth: &self.auth,
            executor: &self.executor,
            cfg,
        };
        let mut carry = identity::Carry::default();
        let verdict = identity::identify(&parts, route, &edge, &mut carry).await;
        ctx.set_cookies = carry.set_cookies;
        ctx.key_presented = carry.key_presented;
        match verdict {
            Ok(identity::Identity::Token(c)) => ctx.claims = Some(c),
            Ok(identity::Identity::ApiKey(k)) => ctx.api_key = Some(k),
            Ok(identity::Identity::Anonymous) => {}
            Err(refusal) => return self.refuse(session, ctx, refusal).await,
        }
        ctx.path_and_query = target::upstream_target(session.req_header(), normalized);
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let idx = ctx
            .route
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route"))?;
        // Round-robin ignores the selection key.
        let peer = ctx
            .live
            .pick_upstream(idx, b"")
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no upstream"))?;
        let mut peer = Box::new(peer.clone());
        if session.as_downstream().is_upgrade_req() {
            // See `upgrade`: a connection Pingora cannot tear down at birth.
            let timeout = peer
                .options
                .connection_timeout
                .unwrap_or(Duration::from_secs(5));
            peer.group_key = upgrade::UPGRADE_GROUP;
            peer.options.custom_l4 = Some(Arc::new(upgrade::UpgradeConnector { timeout }));
        }
        Ok(peer)
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (peer_ip, trusted_peer) = (ctx.peer, ctx.peer_trusted);
        // The received chain is extended only when it is the one header the
        // trusted proxy vouches for; otherwise the upstream gets the client.
        let extends_xff = trusted_peer
            && ctx.live.cfg.server.client_ip_header == crate::config::ClientIpHeader::XForwardedFor;
        let client = ctx.client_ip.map(|i| i.to_string()).unwrap_or_default();
        let xff = match (
            extends_xff,
            up.headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok()),
        ) {
            (true, Some(prev)) if prev.len() < 2048 => {
                format!(
                    "{prev}, {}",
                    peer_ip.map(|i| i.to_string()).unwrap_or_default()
                )
            }
            _ => client.clone(),
        };
        let forward_authorization = ctx
            .route
            .is_none_or(|i| ctx.live.routes[i].route.forward_authorization);
        // Only a trusted proxy may speak for the original host and port;
        // from anyone else those would steer an upstream's links.
        // A presented API key never goes upstream, nor its Authorization
        // (`X-API-Key` and a `pk_` bearer go on every route, too).
        headers::strip_for_upstream(
            up,
            forward_authorization && !ctx.key_presented,
            trusted_peer,
        );
        // The session reference (and the CSRF token) stay here, on every
        // route and whatever `[browser]` says now (see
        // `browser::OWN_COOKIE_PREFIX`), whatever bytes the line holds.
        if browser::has_own_cookie(&up.headers) {
            let rest = browser::cookies_without_own(&up.headers);
            while up.remove_header("cookie").is_some() {}
            if let Some(rest) = rest {
                up.insert_header("cookie", rest)?;
            }
        }
        up.insert_header("x-forwarded-for", xff)?;
        if ctx.client_ip.is_some() {
            up.insert_header("x-real-ip", client)?;
        }
        up.insert_header("x-forwarded-proto", if self.tls { "https" } else { "http" })?;
        up.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some(h) = &ctx.forwarded_host {
            // Checked against the route table (a trusted proxy's own
            // X-Forwarded-Host, if any, is replaced: this is the one the
            // route was chosen by).
            up.insert_header("x-forwarded-host", h.as_str())?;
        }
        if let Some(c) = &ctx.claims {
            for (k, v) in headers::identity_headers(c) {
                up.insert_header(k, v)?;
            }
            up.insert_header("x-user-auth-method", "jwt")?;
        } else if let Some(k) = &ctx.api_key {
            up.insert_header("x-user-id", k.user_id_str.as_str())?;
            up.insert_header("x-user-email", k.email.as_str())?;
            up.insert_header("x-user-roles", k.roles.join(","))?;
            up.insert_header("x-user-auth-method", "api_key")?;
            up.insert_header("x-user-api-key-id", k.id_str.as_str())?;
        }
        if let Some(v) = self.assertion(ctx) {
            up.insert_header(assertion::HEADER, v)?;
        }
        if let Some(pq) = &ctx.path_and_query {
            let uri = pq
                .parse::<http::Uri>()
                .map_err(|_| Error::explain(ErrorType::InternalError, "bad normalized uri"))?;
            up.set_uri(uri);
        }
        ctx.upstream_started = Some(Instant::now());
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if !ctx.set_cookies.is_empty() {
            // It carries a credential: no shared cache may keep it,
            // whatever the upstream said about its own content.
            resp.insert_header("cache-control", "no-store")?;
            for c in ctx.set_cookies.drain(..) {
                resp.append_header("set-cookie", c)?;
            }
        }
        if resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
            return Ok(());
        }
        // Anonymous tunnels have no session to end; token- and key-bearing
        // ones are closed when it ends (or the key goes, or its time is
        // up), or refused if they cannot be watched.
        let opener = match (&ctx.claims, &ctx.api_key) {
            (Some(claims), _) => tunnel::Opener::Token {
                claims: claims.clone(),
                leeway_secs: ctx.live.cfg.tokens.tunnel_leeway_secs,
            },
            (None, Some(key)) => tunnel::Opener::ApiKey {
                key: key.clone(),
                until: self.auth.clock.now().saturating_add(
                    i64::try_from(ctx.live.cfg.limits.max_api_key_tunnel_secs).unwrap_or(i64::MAX),
                ),
            },
            (None, None) => return Ok(()),
        };
        let Some(switch) = downstream_tunnel_switch(session) else {
            return Error::e_explain(ErrorType::InternalError, "upgrade cannot be supervised");
        };
        tunnel::supervise(&switch, self.auth.clone(), opener, ctx.request_id.clone());
        ctx.tunnel = Some(switch);
        Ok(())
    }

    /// A tunnel we closed on purpose is logged by [`tunnel::supervise`],
    /// not as a proxy failure.
    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, _e: &Error) -> bool {
        ctx.tunnel.as_ref().is_some_and(|t| t.is_closed())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let err = match e.esource() {
            ErrorSource::Upstream => ApiError::BadGateway,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                    return FailToProxy {
                        error_code: 0,
                        can_reuse_downstream: false,
                    }
                }
                ErrorType::ReadTimedout => ApiError::RequestTimeout,
                _ => ApiError::BadRequest("The request could not be read."),
            },
            _ => match e.etype() {
                ErrorType::ConnectTimedout
                | ErrorType::ConnectRefused
                | ErrorType::ConnectNoRoute
                | ErrorType::ConnectError => ApiError::BadGateway,
                _ => ApiError::Internal(e.to_string()),
            },
        };
        if matches!(err, ApiError::BadGateway) {
            self.route_metrics(ctx).upstream_errors.inc();
            tracing::warn!(request_id = %ctx.request_id, cause = %e, "upstream failed");
        }
        let status = err.status();
        let resp = err.into_response();
        session.set_keepalive(None);
        let _ = self.respond(session, ctx, resp).await;
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// Pingora quotes this in its own error lines: never with the query,
    /// which can carry a reset or verification token.
    fn request_summary(&self, session: &Session, _ctx: &Ctx) -> String {
        crate::logging::scrub_queries(&session.as_ref().request_summary()).into_owned()
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let m = self.route_metrics(ctx);
        m.request(status);
        let elapsed = ctx.started.map(|t| t.elapsed());
        if let Some(d) = elapsed {
            m.request_duration.observe(d.as_secs_f64());
        }
        if let Some(t) = ctx.upstream_started {
            m.upstream_duration.observe(t.elapsed().as_secs_f64());
        }
        if ctx.live.cfg.log.access_log && access::enabled() {
            let req = session.req_header();
            // The host as sent, labelled only if the config names it; a
            // request naming two hosts is `other`.
            let host = ctx
                .live
                .hosts
                .label(target::request_host(req).ok().flatten());
            access::write(&access::Line {
                method: req.method.as_str(),
                host,
                path: &access::path_only(req.uri.path().as_bytes()),
                status,
                route: ctx.route,
                rule: ctx.rule,
                duration_us: elapsed.map_or(0, |d| d.as_micros() as u64),
                request_id: &ctx.request_id,
                client_ip: ctx.client_ip,
            });
        }
    }
}

#[cfg(test)]
mod request_id_tests {
    #[test]
    fn request_ids_are_distinct_uuid_v4() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = super::request_id();
            let u = uuid::Uuid::parse_str(&id).unwrap();
            assert_eq!(u.get_version_num(), 4, "{id}");
            assert_eq!(id, u.hyphenated().to_string());
            assert!(seen.insert(id));
        }
    }
}
