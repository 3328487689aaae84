//! Header rules for proxied requests and the gateway's own responses.

use pingora::http::{RequestHeader, ResponseHeader};

/// `X-User-*` identity headers for a verified token (proxied requests and
/// `GET /auth/verify`'s forward-auth answer).
pub use crate::tokens::claims::identity_headers;

/// Whether a client-sent header belongs to the identity family: its name,
/// case-insensitively and with `_` read as `-`, starts with `x-user-`.
pub fn is_identity_header(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 7
        && b[..7].iter().zip(b"x-user-").all(|(c, want)| {
            let c = c.to_ascii_lowercase();
            c == *want || (c == b'_' && *want == b'-')
        })
}

/// Forwarding headers that describe the original request; believed only
/// from `trusted_proxies`, removed otherwise.
pub const FORWARDED_ORIGIN: [&str; 3] =
    ["x-forwarded-host", "x-forwarded-port", "x-forwarded-prefix"];

/// Headers by which some frameworks (Symfony, IIS URL Rewrite, Zend) let a
/// request name a different path than its request line. The upstream must
/// serve the path that was checked, so these are removed from every
/// proxied request, whoever sent them.
pub const PATH_OVERRIDE: [&str; 5] = [
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-forwarded-uri",
    "x-forwarded-path",
];

/// The client-address headers the gateway writes itself (from the client
/// IP it decided on), so whatever a client sent under them goes.
pub const CLIENT_ADDRESS: [&str; 3] = ["x-forwarded-for", "forwarded", "x-real-ip"];

/// Whether an `Authorization` value presents one of our API keys: a
/// bearer (scheme in any case) starting with the key prefix `pk_`, well
/// formed or not.
pub fn is_api_key_authorization(v: &[u8]) -> bool {
    let v = v.trim_ascii();
    let Some(sp) = v.iter().position(|b| *b == b' ' || *b == b'\t') else {
        return false;
    };
    v[..sp].eq_ignore_ascii_case(b"bearer")
        && v[sp..]
            .trim_ascii()
            .starts_with(crate::accounts::apikeys::PREFIX.as_bytes())
}

/// Remove, from a request on its way upstream, every header the client may
/// not pass: the identity family, path overrides, client-address headers,
/// the original-host headers unless the peer is a trusted proxy,
/// `Authorization` unless the route forwards it, and a presented API key
/// on every route (`X-API-Key`, and an `Authorization` bearer with the key
/// prefix even where the route forwards `Authorization`: public routes
/// never check keys, and a key must never reach an upstream).
///
/// One pass over the names received (usually a handful, and usually none
/// to remove) instead of one lookup per forbidden name: this runs on every
/// proxied request.
pub fn strip_for_upstream(req: &mut RequestHeader, keep_authorization: bool, trusted_peer: bool) {
    let doomed: smallvec::SmallVec<[http::HeaderName; 4]> = req
        .headers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            is_identity_header(n)
                || PATH_OVERRIDE.contains(&n)
                || CLIENT_ADDRESS.contains(&n)
                || (!trusted_peer && FORWARDED_ORIGIN.contains(&n))
                || n == "x-api-key"
                || (n == "authorization"
                    && (!keep_authorization
                        || req
                            .headers
                            .get_all(*name)
                            .iter()
                            .any(|v| is_api_key_authorization(v.as_bytes()))))
        })
        .cloned()
        .collect();
    for name in &doomed {
        while req.remove_header(name).is_some() {}
    }
}

/// Whether the request asks to upgrade to cleartext HTTP/2 (`Upgrade:
/// h2c`, or an `HTTP2-Settings` header). Through a proxy such an upgrade
/// would turn the connection into a tunnel of unchecked HTTP/2 streams
/// ("h2c smuggling"), so it is refused.
pub fn is_h2c_upgrade(req: &RequestHeader) -> bool {
    req.headers.contains_key("http2-settings")
        || req.headers.get_all("upgrade").iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c"))
        })
}

/// Security headers on every response the gateway writes itself.
pub fn add_security_headers(resp: &mut ResponseHeader, tls: bool) {
    let _ = resp.insert_header("x-content-type-options", "nosniff");
    let _ = resp.insert_header("cache-control", "no-store");
    let _ = resp.insert_header("pragma", "no-cache");
    if resp.headers.get("referrer-policy").is_none() {
        let _ = resp.insert_header("referrer-policy", "no-referrer");
    }
    if resp.headers.get("x-frame-options").is_none() {
        let _ = resp.insert_header("x-frame-options", "DENY");
    }
    if tls {
        let _ = resp.insert_header(
            "strict-transport-security",
            "max-age=31536000; includeSubDomains",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_family() {
        for n in [
            "x-user-id",
            "X-User-Id",
            "X_USER_ID",
            "x_user-email",
            "X-User-Anything",
        ] {
            assert!(is_identity_header(n), "{n}");
        }
        for n in ["x-userid", "x-use-id", "user-id", "x-request-id"] {
            assert!(!is_identity_header(n), "{n}");
        }
    }

    #[test]
    fn api_key_bearers() {
        for v in ["Bearer pk_abc", "bearer  pk_", " BEARER\tpk_x "] {
            assert!(is_api_key_authorization(v.as_bytes()), "{v:?}");
        }
        for v in [
            "Bearer a.b.c",
            "Basic pk_abc",
            "Bearerpk_abc",
            "pk_abc",
            "Bearer PK_abc",
        ] {
            assert!(!is_api_key_authorization(v.as_bytes()), "{v:?}");
        }
    }
}
