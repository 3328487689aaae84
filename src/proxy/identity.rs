//! The identity decision of a proxied request, as one call: [`identify`]
//! takes what the request says ([`RequestParts`], no Pingora types) and
//! its route, and answers who is asking ([`Identity`]) or what to refuse
//! ([`Refusal`]: 400, 401, 403, 429, 503, or the 302 to the portal).
//!
//! It runs in four steps, each a function of its own:
//! 0. [`gate`]: the route's `networks` and `schedule` (no identity needed).
//! 1. [`credential`]: an API key (`X-API-Key` or a bearer without `.`), a
//!    bearer token, or the browser's session cookie (with the CSRF Origin
//!    check on unsafe methods and upgrades, and the cookie's rotation);
//!    nothing on a required route is 401, or the 302 for a browser
//!    navigation ([`when_anonymous`]).
//! 2. [`permits`]: the route's rules on that identity (scopes, roles,
//!    `roles_all`, a second factor). Pure, like [`gate`], [`mode_for`] and
//!    [`when_anonymous`]: `policy explain` calls the very same functions.
//! 3. the rate limits (per key, per route), which count.
//!
//! `request_filter` in [`super`] only turns the request into
//! [`RequestParts`] and a [`Refusal`] into a response.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::accounts::apikeys::KeyEntry;
use crate::accounts::AuthService;
use crate::browser;
use crate::config::{AuthMode, Config, Route};
use crate::error::ApiError;
use crate::executor::AuthExecutor;
use crate::tokens::jwt::{AccessClaims, TokenRejection};

/// What the identity decision reads of a request.
pub struct RequestParts<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    /// HTTP/2's `:authority` (or an absolute-form target's), standing in
    /// for a missing `Host`.
    pub authority: Option<&'a str>,
    /// The host the request names (`Host` or `:authority`), as sent; read
    /// only when some route names a host or `browser.cookie_domain` is set.
    pub host: Option<&'a str>,
    /// The normalized path the route was matched on.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// As the gateway resolved it (behind `trusted_proxies`, the forwarded one).
    pub client_ip: IpAddr,
    pub request_id: &'a str,
    /// Whether the request came over TLS.
    pub tls: bool,
}

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Identity {
    Anonymous,
    Token(Arc<AccessClaims>),
    ApiKey(Arc<KeyEntry>),
}

/// What the route rules look at of an identity.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    Anonymous,
    /// A user signed in with a token (or a cookie session).
    User {
        roles: &'a [String],
        second_factor: bool,
    },
    /// An API key: its owner's roles and its own scopes.
    Key {
        roles: &'a [String],
        scopes: &'a [String],
    },
}

impl Identity {
    pub fn who(&self) -> Who<'_> {
        match self {
            Identity::Anonymous => Who::Anonymous,
            Identity::Token(c) => Who::User {
                roles: &c.roles,
                second_factor: c.has_second_factor(),
            },
            Identity::ApiKey(k) => Who::Key {
                roles: &k.roles,
                scopes: &k.scopes,
            },
        }
    }
}

/// Why a request does not go upstream.
#[derive(Debug)]
pub enum Refusal {
    /// An error answer, naming the rule that decided (`roles`, `mfa`,
    /// `csrf`, `auth`, …; see [`Refusal::rule`]).
    Deny { error: ApiError, rule: &'static str },
    /// A browser navigation without a session: 302 to the portal's sign-in.
    SignIn { location: String },
}

impl Refusal {
    fn deny(error: ApiError, rule: &'static str) -> Self {
        Refusal::Deny { error, rule }
    }

    /// The rule that decided.
    pub fn rule(&self) -> &'static str {
        match self {
            Refusal::Deny { rule, .. } => rule,
            Refusal::SignIn { .. } => "auth",
        }
    }

    /// The status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Deny { error, .. } => error.status(),
            Refusal::SignIn { .. } => 302,
        }
    }
}

/// What the decision leaves for the response, whatever its verdict.
#[derive(Debug, Default)]
pub struct Carry {
    /// `Set-Cookie` values (a rotated or ended cookie session): they go out
    /// with any answer, a refusal too.
    pub set_cookies: Vec<String>,
    /// An API key was presented (valid or not): it never goes upstream.
    pub key_presented: bool,
}

/// The services the decision asks.
pub struct Edge<'a> {
    pub auth: &'a Arc<AuthService>,
    /// Where cookie rotations run (the store's refresh logic).
    pub executor: &'a AuthExecutor,
    pub cfg: &'a Config,
}

/// The identity of a request on `route`, or the refusal (see the module
/// docs).
pub async fn identify(
    req: &RequestParts<'_>,
    route: &Route,
    edge: &Edge<'_>,
    carry: &mut Carry,
) -> Result<Identity, Refusal> {
    // The clock is read only for a route with a schedule (issue 26: the
    // token check pays for nothing it does not use).
    gate(route, req.client_ip, || edge.auth.clock.now())?;
    let id = credential(req, route, edge, carry).await?;
    permits(route, id.who())?;
    limit(req, route, &id, edge)?;
    Ok(id)
}

/// The rules of a route that need no identity: the client IP must be in
/// one of its `networks`, and `now` (the gateway's clock, read only when
/// the route has a `schedule`) inside its `schedule`.
pub fn gate(route: &Route, client_ip: IpAddr, now: impl FnOnce() -> i64) -> Result<(), Refusal> {
    if !route.networks.is_empty() && !route.networks.iter().any(|n| n.contains(&client_ip)) {
        return Err(Refusal::deny(ApiError::Forbidden, "networks"));
    }
    if route.schedule.as_ref().is_some_and(|s| !s.allows(now())) {
        return Err(Refusal::deny(ApiError::Forbidden, "schedule"));
    }
    Ok(())
}

/// How much identity `method` needs on `route`: a required route's
/// `public_methods` pass without one (identity is still taken when
/// presented), as on an optional route.
pub fn mode_for(route: &Route, method: &Method) -> AuthMode {
    if route.auth == AuthMode::Required
        && crate::config::method_allowed(&route.public_methods, method)
        && !route.public_methods.is_empty()
    {
        return AuthMode::Optional;
    }
    route.auth
}

/// The route's rules on an identity: an API key needs one of the route's
/// scopes and is never a second factor; either needs one of `roles` and
/// every one of `roles_all`; a token needs `amr` otp or webauthn on an
/// `mfa` route. Anonymous callers got here only where the route lets them.
pub fn permits(route: &Route, who: Who<'_>) -> Result<(), Refusal> {
    let (roles, second_factor) = match who {
        Who::Anonymous => return Ok(()),
        Who::User {
            roles,
            second_factor,
        } => (roles, second_factor),
        Who::Key { roles, scopes } => {
            if !route.scopes.iter().any(|s| scopes.contains(s)) {
                return Err(Refusal::deny(ApiError::InsufficientScope, "scopes"));
            }
            // A key is one factor, however it is used.
            (roles, false)
        }
    };
    if !route.roles.is_empty() && !roles.iter().any(|r| route.roles.contains(r)) {
        return Err(Refusal::deny(ApiError::Forbidden, "roles"));
    }
    if !route.roles_all.iter().all(|r| roles.contains(r)) {
        return Err(Refusal::deny(ApiError::Forbidden, "roles_all"));
    }
    if route.mfa && !second_factor {
        return Err(Refusal::deny(ApiError::MfaRequired, "mfa"));
    }
    Ok(())
}

/// What a request with no identity gets on a route of this `mode`: through
/// (optional, public), the 302 to the portal (a browser navigation, with
/// `[browser]` on), else 401.
pub fn when_anonymous(
    mode: AuthMode,
    cfg: &Config,
    navigation: bool,
    host: Option<&str>,
    rd: impl FnOnce() -> String,
) -> Result<Identity, Refusal> {
    match mode {
        AuthMode::Required if cfg.browser.enabled && navigation => Err(Refusal::SignIn {
            location: browser::login_location_for(host, &rd(), cfg),
        }),
        AuthMode::Required => Err(Refusal::deny(ApiError::Unauthorized, "auth")),
        _ => Ok(Identity::Anonymous),
    }
}

/// Step 1: the credential the request presents, checked.
async fn credential(
    req: &RequestParts<'_>,
    route: &Route,
    edge: &Edge<'_>,
    carry: &mut Carry,
) -> Result<Identity, Refusal> {
    let mode = mode_for(route, req.method);
    if mode == AuthMode::Public {
        return Ok(Identity::Anonymous);
    }
    // The API key path runs only for an `X-API-Key` header or a bearer
    // that is not JWT-shaped: the token path is unchanged.
    // `Authorization` is read once, for both the key and the token check.
    let bearer = crate::accounts::service::bearer(req.headers);
    let key = api_key_presented(req.headers, &bearer).map_err(|e| Refusal::deny(e, "auth"))?;
    if let Some(key) = key {
        carry.key_presented = true;
        return match edge.auth.authenticate_key(key) {
            Ok(e) => Ok(Identity::ApiKey(e)),
            Err(_) if mode == AuthMode::Required => {
                Err(Refusal::deny(ApiError::Unauthorized, "auth"))
            }
            Err(_) => Ok(Identity::Anonymous),
        };
    }
    let verdict = if query_has_token(req.query) {
        Err(TokenRejection::Invalid)
    } else {
        edge.auth.check_presented(bearer)
    };
    // No credential at all: perhaps a browser, with the session cookie.
    let anonymous = matches!(verdict, Err(TokenRejection::Missing));
    let verdict = match verdict {
        Err(TokenRejection::Missing) if edge.cfg.browser.enabled => {
            match browser::cookie_value(req.headers, &edge.cfg.browser.cookie_name) {
                Some(cookie) => cookie_session(req, edge, carry, cookie).await?,
                None => None,
            }
        }
        v => v.ok(),
    };
    match verdict {
        Some(c) => Ok(Identity::Token(c)),
        None => when_anonymous(
            mode,
            edge.cfg,
            anonymous && browser::is_browser_navigation(req.method, req.headers),
            req.host,
            || match req.query {
                Some(q) => format!("{}?{q}", req.path),
                None => req.path.to_string(),
            },
        ),
    }
}

/// The identity of a session cookie: CSRF first (a state-changing request
/// riding on the cookie, or an upgrade, must come from a trusted origin:
/// a cross-site POST or WebSocket never reaches the upstream), then the
/// cached access token or a rotation on the auth executor. `None` when the
/// session is not valid (the cookie is then cleared).
async fn cookie_session(
    req: &RequestParts<'_>,
    edge: &Edge<'_>,
    carry: &mut Carry,
    cookie: &str,
) -> Result<Option<Arc<AccessClaims>>, Refusal> {
    if (!browser::is_safe_method(req.method) || browser::is_upgrade(req.headers))
        && !browser::origin_allowed_for(req.headers, req.authority, req.tls, edge.cfg)
    {
        return Err(Refusal::deny(ApiError::Forbidden, "csrf"));
    }
    let ua = req
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(256)
        .collect::<String>();
    let (auth, ip, rid, cookie) = (
        edge.auth.clone(),
        req.client_ip,
        req.request_id.to_string(),
        cookie.to_string(),
    );
    let resolved = edge
        .executor
        .run(async move { auth.cookie_session(&cookie, ip, &ua, &rid).await })
        .await;
    let browser_cfg = &edge.cfg.browser;
    match resolved {
        Some(Ok(id)) => {
            if let Some(new) = &id.rotated {
                carry.set_cookies.push(browser::session_cookie(
                    browser_cfg,
                    new,
                    edge.cfg.tokens.refresh_ttl_secs,
                ));
            }
            Ok(Some(id.claims))
        }
        Some(Err(ApiError::Unauthorized)) => {
            carry
                .set_cookies
                .push(browser::clear_session_cookie(browser_cfg));
            Ok(None)
        }
        Some(Err(e)) => Err(Refusal::deny(e, "auth")),
        None => Err(Refusal::deny(
            ApiError::Unavailable {
                retry_after: 1,
                cause: "the auth executor is stopping".into(),
            },
            "auth",
        )),
    }
}

/// Step 3: the key's own rate limit (and its sampled use), then the
/// route's, keyed on the verified identity when there is one (a user
/// cannot spread over addresses, and users behind one NAT do not share a
/// budget), else on the client IP.
fn limit(
    req: &RequestParts<'_>,
    route: &Route,
    id: &Identity,
    edge: &Edge<'_>,
) -> Result<(), Refusal> {
    // Nothing to count (a token or no identity on a route without a rate
    // limit, the bench's required route): no clock read, no key built.
    if route.rate_per_minute == 0 && !matches!(id, Identity::ApiKey(_)) {
        return Ok(());
    }
    let auth = edge.auth;
    let now = auth.clock.now();
    let hit = |key: &str, per_minute: u32| {
        auth.route_limits
            .hit(key, per_minute, 60, now)
            .map_err(|retry_after| {
                auth.metrics.throttled_route.inc();
                Refusal::deny(ApiError::TooManyRequests { retry_after }, "rate_limit")
            })
    };
    if let Identity::ApiKey(e) = id {
        if e.rate_per_minute > 0 {
            hit(&format!("apikey:{}", e.id_str), e.rate_per_minute)?;
        }
        if auth.api_keys.record_use(e, now) {
            // Sampled: the first use of each key per write interval.
            let ua = req
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let actx = crate::audit::AuditCtx {
                ip: req.client_ip,
                user_agent: ua,
                request_id: req.request_id,
            };
            crate::audit::key_event(&actx, "api_key_used", &e.id_str, &e.user_id_str);
        }
    }
    if route.rate_per_minute > 0 {
        let key = match id {
            Identity::Token(c) => format!("route:{}:sub:{}", route.label, c.sub),
            Identity::ApiKey(k) => format!("route:{}:sub:{}", route.label, k.user_id_str),
            Identity::Anonymous => format!(
                "route:{}:ip:{}",
                route.label,
                crate::net::throttle_key(req.client_ip, edge.cfg.throttle.ipv6_prefix_len)
            ),
        };
        hit(&key, route.rate_per_minute)?;
    }
    Ok(())
}

/// The API key a request presents, if any: `X-API-Key`, or a bearer that
/// is not JWT-shaped (no `.`). A key sent both ways, or `X-API-Key` beside
/// any `Authorization`, or twice, is ambiguous: 400.
fn api_key_presented<'a>(
    headers: &'a HeaderMap,
    bearer: &Result<&'a str, TokenRejection>,
) -> Result<Option<&'a str>, ApiError> {
    let mut x = headers.get_all("x-api-key").iter();
    let Some(first) = x.next() else {
        return Ok(match bearer {
            Ok(t) if !t.contains('.') => Some(*t),
            _ => None,
        });
    };
    if x.next().is_some() || headers.contains_key(http::header::AUTHORIZATION) {
        return Err(ApiError::BadRequest(
            "Send an API key in one header only: X-API-Key or Authorization.",
        ));
    }
    // Not a visible string: an invalid key (the lookup refuses it).
    Ok(Some(first.to_str().unwrap_or("").trim()))
}

/// An `access_token` in the query is refused, never read (it would be
/// logged and cached along the way).
fn query_has_token(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .any(|(k, _)| k.eq_ignore_ascii_case("access_token"))
    })
}
