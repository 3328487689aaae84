//! Browser users (issue 14): cookie sessions, the redirect target check,
//! the CSRF Origin check and CORS on `/auth/*`.
//!
//! A browser session is a `__Host-` cookie holding the session's refresh
//! token (opaque; never the JWT). The gateway keeps, in memory, the access
//! token it last issued for each cookie, and checks that token exactly as a
//! bearer one (signature, expiry, revocations). When it is missing, expired
//! or revoked, the cookie is rotated through the same store operation as
//! `POST /auth/refresh` (generation check, reuse detection), and the new
//! cookie goes out with the response. Concurrent requests carrying one
//! cookie share one rotation (a browser sends its requests in parallel,
//! and a second rotation of the same token would read as reuse); its result
//! is kept for [`ROTATION_WINDOW`] seconds for requests sent before the
//! browser saw the new cookie. Ending a session (logout, logout-all,
//! disable, password change) revokes its id, so both the cached token and
//! the next rotation fail.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::accounts::AuthService;
use crate::accounts::{AccountError, Client, Signed};
use crate::config::{BrowserConfig, Config};
use crate::error::ApiError;
use crate::tokens::AccessClaims;

/// How long a cookie rotation's outcome is handed to requests that still
/// carry the cookie it replaced (seconds).
pub const ROTATION_WINDOW: i64 = 10;
/// At most this many cached access tokens; beyond, the expired ones are
/// dropped (and then all: they are only a cache, and a cookie whose token
/// is forgotten is simply rotated). The rotation map is bounded otherwise
/// (see [`CookieSessions::rotation`]) and never emptied.
const MAX_ENTRIES: usize = 100_000;
/// The rotation map is swept of ended hand-overs each time it grows by
/// this many entries.
const SWEEP_ROTATIONS: usize = 1024;
/// The longest `rd` accepted.
const MAX_RD: usize = 2048;

type Digest32 = [u8; 32];

fn digest(s: &str) -> Digest32 {
    Sha256::digest(s.as_bytes()).into()
}

/// A browser request authenticated by its session cookie.
#[derive(Debug, Clone)]
pub struct CookieIdentity {
    pub claims: Arc<AccessClaims>,
    /// The access token the claims come from (for the portal's own calls).
    pub access: String,
    /// A new cookie value to send back, when the cookie was rotated.
    pub rotated: Option<String>,
}

/// Why a rotation gave no tokens: the session is refused, or nothing was
/// decided (the store or the hasher could not answer).
#[derive(Debug, Clone, Copy)]
enum RotationFailed {
    Refused,
    Busy,
}

type RotationResult = Result<(String, String), RotationFailed>;

struct Rotation {
    cell: tokio::sync::OnceCell<RotationResult>,
    started: i64,
}

/// The in-memory side of cookie sessions (see the module docs).
#[derive(Default)]
pub struct CookieSessions {
    /// cookie digest → (access token, its exp)
    access: Mutex<HashMap<Digest32, (String, i64)>>,
    /// cookie digest → the rotation replacing it
    rotations: Mutex<HashMap<Digest32, Arc<Rotation>>>,
}

impl CookieSessions {
    pub fn remember(&self, cookie: &str, access: &str, exp: i64, now: i64) {
        let mut m = self.access.lock();
        if m.len() >= MAX_ENTRIES {
            m.retain(|_, (_, e)| *e > now);
            if m.len() >= MAX_ENTRIES {
                m.clear();
            }
        }
        m.insert(digest(cookie), (access.to_string(), exp));
    }

    pub fn forget(&self, cookie: &str) {
        let d = digest(cookie);
        self.access.lock().remove(&d);
        self.rotations.lock().remove(&d);
    }

    fn cached(&self, d: &Digest32) -> Option<String> {
        self.access.lock().get(d).map(|(a, _)| a.clone())
    }

    /// The rotation of cookie `d`: the one under way or handed over, else
    /// a new one.
    ///
    /// Bounded without forgetting live hand-overs: an entry stays only while
    /// its rotation runs (at most one per request in flight, and so bounded
    /// by `limits.max_connections`) or after it SUCCEEDED, i.e. after the
    /// store proved the cookie a valid refresh token, until its hand-over
    /// window is over. A failed rotation (a made-up cookie, a replay) is
    /// removed as soon as it is decided ([`Self::drop_rotation`]), so
    /// requests with random cookie values cannot fill the map, and nothing
    /// is ever evicted while its window is open: emptying the map would
    /// split one browser's rotation in two, and the second would read as
    /// refresh-token reuse and end the session.
    fn rotation(&self, d: Digest32, now: i64) -> Arc<Rotation> {
        let live = |r: &Rotation| r.started + ROTATION_WINDOW >= now || !r.cell.initialized();
        let mut m = self.rotations.lock();
        if let Some(r) = m.get(&d).filter(|r| live(r)) {
            return r.clone();
        }
        // Ended hand-overs are swept once per SWEEP_ROTATIONS entries
        // (amortized O(1) per rotation); live ones are never dropped.
        if !m.is_empty() && m.len().is_multiple_of(SWEEP_ROTATIONS) {
            m.retain(|_, r| live(r));
        }
        let r = Arc::new(Rotation {
            cell: tokio::sync::OnceCell::new(),
            started: now,
        });
        m.insert(d, r.clone());
        r
    }

    /// Rotations held (under way, or handed over within their window).
    pub fn rotations_held(&self) -> usize {
        self.rotations.lock().len()
    }

    fn drop_rotation(&self, d: &Digest32, r: &Arc<Rotation>) {
        let mut m = self.rotations.lock();
        if m.get(d).is_some_and(|x| Arc::ptr_eq(x, r)) {
            m.remove(d);
        }
    }
}

impl AuthService {
    /// The identity of a session cookie, rotating it when its access token
    /// is gone (see the module docs). `Unauthorized` when the session is
    /// not (or no longer) valid.
    pub async fn cookie_session(
        &self,
        cookie: &str,
        client_ip: IpAddr,
        user_agent: &str,
        request_id: &str,
    ) -> Result<CookieIdentity, ApiError> {
        let client = Client {
            ip: client_ip,
            user_agent: user_agent.to_string(),
            request_id: request_id.to_string(),
        };
        let client = &client;
        let d = digest(cookie);
        if let Some(access) = self.cookies.cached(&d) {
            if let Ok(claims) = self.check_token(&access) {
                return Ok(CookieIdentity {
                    claims,
                    access,
                    rotated: None,
                });
            }
            self.cookies.access.lock().remove(&d);
        }
        let now = self.clock.now();
        let rotation = self.cookies.rotation(d, now);
        let result = rotation
            .cell
            .get_or_init(|| self.rotate_cookie(cookie, client))
            .await
            .clone();
        match result {
            Ok((access, refresh)) => match self.check_token(&access) {
                Ok(claims) => Ok(CookieIdentity {
                    claims,
                    access,
                    rotated: Some(refresh),
                }),
                Err(_) => Err(ApiError::Unauthorized),
            },
            Err(RotationFailed::Busy) => {
                // Only proven refresh tokens keep an entry (see
                // `CookieSessions::rotation`); whoever waited on this one
                // holds it and shares its outcome.
                self.cookies.drop_rotation(&d, &rotation);
                // Nothing was decided: the next request tries again.
                Err(ApiError::Unavailable {
                    retry_after: 1,
                    cause: "cookie session refresh failed".into(),
                })
            }
            Err(RotationFailed::Refused) => {
                self.cookies.drop_rotation(&d, &rotation);
                Err(ApiError::Unauthorized)
            }
        }
    }

    /// One rotation of a cookie's refresh token: the service's own refresh
    /// (reuse detection included).
    async fn rotate_cookie(&self, cookie: &str, client: &Client) -> RotationResult {
        let signed = self
            .refresh_session(cookie, client)
            .await
            .map_err(|e| match e {
                AccountError::Busy { .. } | AccountError::Internal(_) => RotationFailed::Busy,
                _ => RotationFailed::Refused,
            })?;
        self.remember_cookie(&signed);
        self.cookies.access.lock().remove(&digest(cookie));
        Ok((signed.access_token, signed.refresh_token))
    }

    /// Keep a new session's access token for its cookie (the refresh
    /// token), so the cookie's next request needs no rotation.
    pub fn remember_cookie(&self, signed: &Signed) {
        self.cookies.remember(
            &signed.refresh_token,
            &signed.access_token,
            signed.access_exp,
            self.clock.now(),
        );
    }
}

pub use crate::names::{OWN_COOKIE_PREFIX, OWN_COOKIE_PREFIX_SECURE};

/// Every `;`-separated piece of the request's `Cookie` headers, trimmed,
/// as bytes: a `Cookie` line is not always visible ASCII (another app on
/// the host may set `pref=café`), and one such cookie must not hide the
/// others from the gateway. The one cookie parser of the crate.
fn cookie_pieces(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
}

/// A piece's `(name, value)`, both trimmed, the value without its quotes; a
/// piece without `=` is all name.
fn cookie_pair(piece: &[u8]) -> (&[u8], &[u8]) {
    match piece.iter().position(|b| *b == b'=') {
        Some(i) => {
            let v = piece[i + 1..].trim_ascii();
            let v = v.strip_prefix(b"\"").unwrap_or(v);
            let v = v.strip_suffix(b"\"").unwrap_or(v);
            (piece[..i].trim_ascii(), v)
        }
        None => (piece, &[]),
    }
}

/// The value of cookie `name`, when it is there exactly once and looks
/// like a value we issue (base64url, bounded); anything else is no cookie.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = cookie_pieces(headers)
        .map(cookie_pair)
        .filter(|(k, _)| *k == name.as_bytes())
        .map(|(_, v)| v);
    let v = found.next()?;
    if found.next().is_some() {
        return None;
    }
    let ok = !v.is_empty()
        && v.len() <= 256
        && v.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_');
    if !ok {
        return None;
    }
    std::str::from_utf8(v).ok()
}

/// Is this cookie name in the gateway's namespace? (ASCII case ignored:
/// browsers match the `__Host-` prefix that way.)
fn is_own_cookie_name(name: &[u8]) -> bool {
    [OWN_COOKIE_PREFIX, OWN_COOKIE_PREFIX_SECURE]
        .iter()
        .any(|p| name.len() >= p.len() && name[..p.len()].eq_ignore_ascii_case(p.as_bytes()))
}

/// Any cookie of ours (the session and CSRF cookies, under any name the
/// gateway may have used) in the request?
pub fn has_own_cookie(headers: &HeaderMap) -> bool {
    cookie_pieces(headers).any(|p| is_own_cookie_name(cookie_pair(p).0))
}

/// The `Cookie` header without our cookies (the upstream never sees the
/// session reference), byte for byte otherwise; `None` when nothing else
/// is left.
pub fn cookies_without_own(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut rest: Vec<u8> = Vec::new();
    for piece in cookie_pieces(headers).filter(|p| !is_own_cookie_name(cookie_pair(p).0)) {
        if !rest.is_empty() {
            rest.extend_from_slice(b"; ");
        }
        rest.extend_from_slice(piece);
    }
    // Every piece came from a valid header value, so this one is valid;
    // if it were not, nothing goes (closed).
    HeaderValue::from_bytes(&rest)
        .ok()
        .filter(|v| !v.is_empty())
}

pub fn csrf_cookie_name(b: &BrowserConfig) -> String {
    format!("{}-csrf", b.cookie_name)
}

/// `Domain=…; ` of the session cookie when `browser.cookie_domain` shares
/// it across subdomains (the name is then `__Secure-`); else nothing (a
/// `__Host-` cookie has no `Domain`).
fn domain_attr(b: &BrowserConfig) -> String {
    match &b.cookie_domain {
        Some(d) => format!("Domain={d}; "),
        None => String::new(),
    }
}

/// `Set-Cookie` for the session cookie.
pub fn session_cookie(b: &BrowserConfig, value: &str, max_age: u64) -> String {
    format!(
        "{}={value}; Path=/; {}Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}",
        b.cookie_name,
        domain_attr(b)
    )
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_session_cookie(b: &BrowserConfig) -> String {
    format!(
        "{}=; Path=/; {}Secure; HttpOnly; SameSite=Lax; Max-Age=0",
        b.cookie_name,
        domain_attr(b)
    )
}

/// The host of `mail.link_base_url` (where the portal lives), normalized.
fn portal_host(cfg: &Config) -> Option<String> {
    url::Url::parse(&cfg.mail.link_base_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
}

/// With `browser.cookie_domain`: is `host` (as sent) one of the hosts the
/// shared sign-in covers, i.e. under the domain, and the portal's own host
/// or a host a host route names (exact, or under a wildcard)? Routes for
/// any host do not count: they would let every name under the domain in.
pub fn shared_host(host: &str, cfg: &Config) -> bool {
    let Some(d) = &cfg.browser.cookie_domain else {
        return false;
    };
    let Some(h) = crate::config::normalize_host(host) else {
        return false;
    };
    let under = h == d.as_str() || h.strip_suffix(d.as_str()).is_some_and(|p| p.ends_with('.'));
    under
        && (portal_host(cfg).as_deref() == Some(&*h)
            || cfg
                .routes
                .iter()
                .any(|r| r.host != crate::config::HostPattern::Any && r.host.matches(&h)))
}

/// An `https://` origin of a [`shared_host`] (CSRF origins extend to those
/// hosts, and only to them).
fn shared_origin(origin: &str, cfg: &Config) -> bool {
    origin
        .strip_prefix("https://")
        .is_some_and(|h| !h.contains(['/', '@']) && shared_host(h, cfg))
}

/// `Set-Cookie` for the CSRF (double-submit) cookie.
pub fn csrf_cookie(b: &BrowserConfig, value: &str) -> String {
    format!(
        "{}={value}; Path=/; Secure; HttpOnly; SameSite=Strict",
        csrf_cookie_name(b)
    )
}

/// A fresh CSRF token (256 bits, base64url).
pub fn new_csrf_token(entropy: &dyn crate::entropy::Entropy) -> String {
    entropy.token(32)
}

/// Does the form's token equal the cookie's? Constant-time.
pub fn csrf_matches(cookie: Option<&str>, presented: Option<&str>) -> bool {
    match (cookie, presented) {
        (Some(c), Some(p)) if c.len() >= 32 => c.as_bytes().ct_eq(p.as_bytes()).into(),
        _ => false,
    }
}

pub fn is_safe_method(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A top-level browser navigation: GET or HEAD that accepts HTML.
pub fn is_browser_navigation(m: &Method, headers: &HeaderMap) -> bool {
    (*m == Method::GET || *m == Method::HEAD)
        && headers
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("text/html"))
}

/// The origin of `mail.link_base_url`: the deployment's own.
pub fn own_origin(cfg: &Config) -> Option<String> {
    url::Url::parse(&cfg.mail.link_base_url)
        .ok()
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null")
}

/// Does the request ask to switch protocols (`Upgrade`, e.g. a WebSocket
/// handshake)? Such a GET still needs the CSRF Origin check.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::UPGRADE)
}

/// Is this `Origin` value one the deployment trusts: its own (the link
/// base, or this very host), or one of `browser.allowed_origins`? A
/// request that came over TLS trusts only the `https` origin of its host:
/// `http://{host}` is another origin, one a network attacker can speak for.
pub fn trusted_origin(origin: &str, host: Option<&str>, tls: bool, cfg: &Config) -> bool {
    if origin == "null" || origin.is_empty() {
        return false;
    }
    if own_origin(cfg).as_deref() == Some(origin)
        || cfg.browser.allowed_origins.iter().any(|o| o == origin)
        || shared_origin(origin, cfg)
    {
        return true;
    }
    host.is_some_and(|h| {
        origin.strip_prefix("https://") == Some(h)
            || (!tls && origin.strip_prefix("http://") == Some(h))
    })
}

/// The CSRF Origin check of a state-changing request: its one `Origin`
/// header (else the origin of its `Referer`) must be trusted; no origin at
/// all fails (closed). `authority` (HTTP/2's `:authority`) stands in for a
/// missing `Host`; `tls` says whether the request came over TLS (see
/// [`trusted_origin`]).
pub fn origin_allowed_for(
    headers: &HeaderMap,
    authority: Option<&str>,
    tls: bool,
    cfg: &Config,
) -> bool {
    let host = one_header(headers, "host").or(authority);
    let origin = match headers.get_all(http::header::ORIGIN).iter().count() {
        0 => one_header(headers, "referer")
            .and_then(|r| url::Url::parse(r).ok())
            .map(|u| u.origin().ascii_serialization()),
        1 => one_header(headers, "origin").map(str::to_string),
        _ => None,
    };
    origin.is_some_and(|o| trusted_origin(&o, host, tls, cfg))
}

fn one_header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut all = headers.get_all(name).iter();
    let v = all.next()?;
    if all.next().is_some() {
        return None;
    }
    v.to_str().ok()
}

/// `rd` as a redirect target: only ever a same-origin relative path.
/// Refused: anything not starting with exactly one `/` (`//evil`,
/// `https:`, `/\evil`), backslashes, control characters and spaces,
/// non-ASCII, and whatever is refused after up to three more
/// percent-decodings (`/%2F%2Fevil`, `/%252F%252Fevil`, `%0d%0a`).
pub fn safe_redirect(rd: &str) -> Option<String> {
    fn plain_ok(s: &str) -> bool {
        let b = s.as_bytes();
        b.first() == Some(&b'/')
            && b.get(1) != Some(&b'/')
            && b.get(1) != Some(&b'\\')
            && b.iter().all(|&c| c.is_ascii_graphic() && c != b'\\')
    }
    if rd.is_empty() || rd.len() > MAX_RD || !plain_ok(rd) {
        return None;
    }
    // Each further decoding must still be a plain path (however many
    // times a later hop decodes it).
    let mut decoded = rd.to_string();
    for _ in 0..3 {
        decoded = percent_encoding::percent_decode_str(&decoded)
            .decode_utf8()
            .ok()?
            .into_owned();
        if !plain_ok(&decoded) {
            return None;
        }
    }
    // The auth API is no place to land a browser; the portal is.
    // (The provider's authorization request is where a sign-in for an
    // OpenID client comes back to.)
    if rd.starts_with("/auth/")
        && !rd.starts_with("/auth/ui/")
        && !rd.starts_with("/auth/oauth/authorize?")
    {
        return None;
    }
    Some(rd.to_string())
}

/// [`safe_redirect`], or, with `browser.cookie_domain`, an absolute
/// `https://` URL on a [`shared_host`] whose path and query pass
/// [`safe_redirect`]: `rd` may name any host the shared sign-in covers,
/// nothing else.
pub fn safe_redirect_for(rd: &str, cfg: &Config) -> Option<String> {
    if rd.starts_with('/') || cfg.browser.cookie_domain.is_none() {
        return safe_redirect(rd);
    }
    let rest = rd.strip_prefix("https://")?;
    let cut = rest.find('/')?;
    let (authority, path) = rest.split_at(cut);
    if rd.len() > MAX_RD || authority.contains('@') || !shared_host(authority, cfg) {
        return None;
    }
    let path = safe_redirect(path)?;
    let u = url::Url::parse(&format!("https://{authority}{path}")).ok()?;
    (u.scheme() == "https" && u.username().is_empty() && u.password().is_none())
        .then(|| format!("https://{authority}{path}"))
}

/// The portal's sign-in page, to come back to `rd` afterwards.
pub fn login_location(rd: &str) -> String {
    let rd = safe_redirect(rd).unwrap_or_else(|| "/".into());
    let enc: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
    format!("/auth/ui/login?rd={enc}")
}

/// [`login_location`] for a request to `host`: with `browser.cookie_domain`
/// and a host other than the portal's, the portal's own sign-in page (on
/// `mail.link_base_url`), to come back to `https://{host}{rd}`.
pub fn login_location_for(host: Option<&str>, rd: &str, cfg: &Config) -> String {
    let elsewhere = host.filter(|h| {
        shared_host(h, cfg)
            && crate::config::normalize_host(h).as_deref() != portal_host(cfg).as_deref()
    });
    let Some(h) = elsewhere else {
        return login_location(rd);
    };
    let rd = safe_redirect(rd).unwrap_or_else(|| "/".into());
    let back = format!("https://{h}{rd}");
    let enc: String = url::form_urlencoded::byte_serialize(back.as_bytes()).collect();
    format!("{}/auth/ui/login?rd={enc}", cfg.mail.link_base_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_targets() {
        for ok in [
            "/",
            "/app",
            "/app/x?y=1&z=%2F",
            "/auth/ui/sessions",
            "/a/b/../c",
            // Not escapes: kept as they are, and plain.
            "/x%",
            "/x%2",
            "/x%zz",
        ] {
            assert_eq!(safe_redirect(ok).as_deref(), Some(ok), "{ok}");
        }
        for bad in [
            "",
            "//evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "https://evil.com",
            "https:evil.com",
            "javascript:alert(1)",
            "evil.com",
            "/%2F%2Fevil.com",
            "/%252F%252Fevil.com",
            "/%2fevil.com",
            "/%5Cevil.com",
            "/%5cevil.com",
            "/a\r\nSet-Cookie: x=1",
            "/a%0d%0aSet-Cookie:x",
            "/a%0aLocation:x",
            "/ a",
            "/a\tb",
            "/é",
            "/auth/refresh",
            "%2F%2Fevil.com",
            // An escape at the very end, non-ASCII and non-UTF-8 once decoded.
            "/%2F",
            "/%5c",
            "/a%C3%A9",
            "/a%FF",
        ] {
            assert_eq!(safe_redirect(bad), None, "{bad:?}");
        }
        assert_eq!(safe_redirect(&format!("/{}", "a".repeat(3000))), None);
    }

    #[test]
    fn cookie_parsing() {
        let mut h = HeaderMap::new();
        h.append(
            "cookie",
            HeaderValue::from_static("a=1; __Host-p=abc_-9; b=2"),
        );
        assert_eq!(cookie_value(&h, "__Host-p"), Some("abc_-9"));
        h.append("cookie", HeaderValue::from_static("__Host-p=other"));
        assert_eq!(cookie_value(&h, "__Host-p"), None, "twice is none");
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("__Host-p=a.b"));
        assert_eq!(cookie_value(&h, "__Host-p"), None);
    }

    #[test]
    fn csrf_compare() {
        let t = new_csrf_token(&crate::entropy::OsEntropy);
        assert!(csrf_matches(Some(&t), Some(&t)));
        assert!(!csrf_matches(Some(&t), Some("x")));
        assert!(!csrf_matches(None, Some(&t)));
        assert!(!csrf_matches(Some("short"), Some("short")));
    }
}
