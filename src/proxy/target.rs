//! The request's target as the proxy reads and rewrites it: the host it
//! names (for host routes) and the path the upstream gets.

use pingora::http::RequestHeader;

use crate::error::ApiError;

/// The host a request names, for matching host routes: an absolute-form
/// target's or HTTP/2's `:authority`, else its one `Host` header. Both
/// present and naming different hosts (or two `Host` headers) is
/// ambiguous: the upstream might serve the other one, so 400.
pub fn request_host(req: &RequestHeader) -> std::result::Result<Option<&str>, ApiError> {
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(ApiError::BadRequest("The request names two hosts.")),
        (Some(v), None) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadRequest("The Host header is not a host."))?,
        ),
        _ => None,
    };
    let authority = req.uri.authority().map(|a| a.as_str());
    match (authority, header) {
        (Some(a), Some(h))
            if crate::config::normalize_host(a) != crate::config::normalize_host(h) =>
        {
            Err(ApiError::BadRequest(
                "The request target and the Host header name different hosts.",
            ))
        }
        (Some(a), _) => Ok(Some(a)),
        (None, h) => Ok(h),
    }
}

/// The target the upstream gets: exactly the path that was checked, so
/// the target is rewritten unless it already is that path (plus the
/// query), as received (Pingora sends an absolute-form target verbatim).
pub fn upstream_target(req: &RequestHeader, normalized: String) -> Option<String> {
    let unchanged = req.raw_path_is_utf8()
        && req
            .raw_path()
            .strip_prefix(normalized.as_bytes())
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'?');
    (!unchanged).then(|| match req.uri.query() {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized,
    })
}
