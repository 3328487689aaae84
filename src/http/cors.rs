//! CORS on the `/auth/*` API: the preflight answer and the headers of
//! every answer, for the origins `browser.allowed_origins` lists.

use http::Method;

use super::api::{ApiRequest, ApiResponse};
use crate::config::Config;
use crate::error::ApiError;

fn cors_applies(path: &str) -> bool {
    path.starts_with("/auth/") && !path.starts_with("/auth/ui/")
}

const CORS_METHODS: &str = "GET, HEAD, POST, PATCH, DELETE";
const CORS_HEADERS: [&str; 3] = ["authorization", "content-type", "x-api-key"];

/// The answer to a CORS preflight on `/auth/*`: allowlisted exact origins
/// get credentials; any other origin gets 403 and no CORS headers.
pub fn preflight(req: &ApiRequest, cfg: &Config) -> Option<ApiResponse> {
    if req.method != Method::OPTIONS || !cors_applies(&req.path) {
        return None;
    }
    let origin = req.header("origin")?;
    let wanted = req.header("access-control-request-method")?;
    let vary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";
    let allowed = cfg.browser.allowed_origins.iter().any(|o| o == origin);
    let method_ok = CORS_METHODS.split(", ").any(|m| m == wanted);
    let headers_ok = req
        .header("access-control-request-headers")
        .unwrap_or("")
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .all(|h| h.is_empty() || CORS_HEADERS.contains(&h.as_str()));
    if !(allowed && method_ok && headers_ok) {
        return Some(
            ApiError::Forbidden
                .into_response()
                .with_header("vary", vary),
        );
    }
    Some(
        ApiResponse::empty(204)
            .with_header("access-control-allow-origin", origin)
            .with_header("access-control-allow-credentials", "true")
            .with_header("access-control-allow-methods", CORS_METHODS)
            .with_header("access-control-allow-headers", CORS_HEADERS.join(", "))
            .with_header("access-control-max-age", "600")
            .with_header("vary", vary),
    )
}

/// CORS headers of an `/auth/*` answer: `Vary: Origin` always; the origin
/// and credentials only for an allowlisted origin (never `*`).
pub fn add_cors(req: &ApiRequest, cfg: &Config, resp: &mut ApiResponse) {
    if !cors_applies(&req.path) {
        return;
    }
    resp.headers.push(("vary", "Origin".into()));
    let Some(origin) = req.header("origin") else {
        return;
    };
    if cfg.browser.allowed_origins.iter().any(|o| o == origin) {
        resp.headers
            .push(("access-control-allow-origin", origin.to_string()));
        resp.headers
            .push(("access-control-allow-credentials", "true".into()));
        resp.headers.push((
            "access-control-expose-headers",
            "retry-after, www-authenticate".into(),
        ));
    }
}
