//! The one API error type, mapped to status, code and JSON in one place.
//! Server-side causes are logged here and never sent to the client.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::http::api::ApiResponse;

#[derive(Debug)]
pub enum ApiError {
    /// Malformed JSON or request.
    BadRequest(&'static str),
    Validation(BTreeMap<String, Vec<String>>),
    /// Token in a body (refresh, verify, reset): 400 or 401 as the contract says.
    InvalidToken(u16),
    InvalidCredentials,
    /// Missing or bad bearer token.
    Unauthorized,
    EmailNotVerified,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    EmailTaken,
    PayloadTooLarge,
    UnsupportedMediaType,
    HeadersTooLarge,
    /// The request (header or body) did not arrive in time.
    RequestTimeout,
    TooManyRequests {
        retry_after: u64,
    },
    BadGateway,
    /// The record changed under the request (a concurrent change won).
    Conflict,
    /// A wrong, malformed or already used second-factor code.
    InvalidCode,
    /// The route needs a second factor the token does not carry.
    MfaRequired,
    /// TOTP is already on for this account.
    AlreadyEnrolled,
    /// An API key without any of the route's scopes.
    InsufficientScope,
    /// A sensitive change needs a sign-in within `accounts.reauth_secs`
    /// (CONTRACT 8.6): `POST /auth/reauth` first.
    ReauthRequired,
    /// Temporarily unable to serve (the hash queue is full, the store
    /// cannot write); the cause is logged, the client is told when to retry.
    Unavailable {
        retry_after: u64,
        cause: String,
    },
    /// A server-side failure; the cause is logged, the client sees `internal`.
    Internal(String),
    /// An outcome with its own status and code (sign-in with an outside
    /// provider, CONTRACT 8.1: `identity_taken`, `last_sign_in_method`, …).
    Coded {
        status: u16,
        code: &'static str,
        message: &'static str,
    },
}

impl ApiError {
    pub fn validation(field: &str, problem: impl Into<String>) -> Self {
        let mut m = BTreeMap::new();
        m.insert(field.to_string(), vec![problem.into()]);
        ApiError::Validation(m)
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        ApiError::Internal(cause.to_string())
    }

    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) | ApiError::Validation(_) => 400,
            ApiError::InvalidToken(s) => *s,
            ApiError::InvalidCredentials | ApiError::Unauthorized => 401,
            ApiError::EmailNotVerified | ApiError::Forbidden => 403,
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed => 405,
            ApiError::EmailTaken => 409,
            ApiError::PayloadTooLarge => 413,
            ApiError::UnsupportedMediaType => 415,
            ApiError::HeadersTooLarge => 431,
            ApiError::RequestTimeout => 408,
            ApiError::TooManyRequests { .. } => 429,
            ApiError::BadGateway => 502,
            ApiError::Conflict => 409,
            ApiError::InvalidCode => 400,
            ApiError::MfaRequired | ApiError::InsufficientScope => 403,
            ApiError::ReauthRequired => 403,
            ApiError::AlreadyEnrolled => 409,
            ApiError::Unavailable { .. } => 503,
            ApiError::Internal(_) => 500,
            ApiError::Coded { status, .. } => *status,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Validation(_) => "validation_failed",
            ApiError::InvalidToken(_) => "invalid_token",
            ApiError::InvalidCredentials => "invalid_credentials",
            ApiError::Unauthorized => "unauthorized",
            ApiError::EmailNotVerified => "email_not_verified",
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::EmailTaken => "email_taken",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::HeadersTooLarge => "request_header_fields_too_large",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::TooManyRequests { .. } => "too_many_requests",
            ApiError::BadGateway => "bad_gateway",
            ApiError::Conflict => "conflict",
            ApiError::InvalidCode => "invalid_code",
            ApiError::MfaRequired => "mfa_required",
            ApiError::AlreadyEnrolled => "already_enrolled",
            ApiError::InsufficientScope => "forbidden",
            ApiError::ReauthRequired => "reauth_required",
            ApiError::Unavailable { .. } => "service_unavailable",
            ApiError::Internal(_) => "internal",
            ApiError::Coded { code, .. } => code,
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            ApiError::BadRequest(m) => m,
            ApiError::Validation(_) => "Some fields are invalid.",
            ApiError::InvalidToken(_) => "The token is invalid or expired.",
            ApiError::InvalidCredentials => "The email or password is incorrect.",
            ApiError::Unauthorized => "A valid bearer token is required.",
            ApiError::EmailNotVerified => "The email address has not been verified.",
            ApiError::Forbidden => "You do not have access to this resource.",
            ApiError::NotFound => "Not found.",
            ApiError::MethodNotAllowed => "Method not allowed.",
            ApiError::EmailTaken => "An account with this email already exists.",
            ApiError::PayloadTooLarge => "The request body is too large.",
            ApiError::UnsupportedMediaType => "The body must be application/json.",
            ApiError::HeadersTooLarge => "The request headers are too large.",
            ApiError::RequestTimeout => "The request was not received in time.",
            ApiError::TooManyRequests { .. } => "Too many requests; try again later.",
            ApiError::BadGateway => "The upstream service is unavailable.",
            ApiError::Conflict => "The resource was changed by another request; try again.",
            ApiError::InvalidCode => "The code is invalid or was already used.",
            ApiError::MfaRequired => "This resource needs a second factor; sign in again with it.",
            ApiError::AlreadyEnrolled => {
                "Two-factor authentication is already on; turn it off first."
            }
            ApiError::InsufficientScope => {
                "This API key has none of the scopes this resource needs."
            }
            ApiError::ReauthRequired => {
                "This change needs a recent sign-in; confirm it is you and try again."
            }
            ApiError::Unavailable { .. } => "The service is busy; try again shortly.",
            ApiError::Internal(_) => "An internal error occurred.",
            ApiError::Coded { message, .. } => message,
        }
    }

    pub fn into_response(self) -> ApiResponse {
        match &self {
            ApiError::Internal(cause) => tracing::error!(cause = %cause, "internal error"),
            ApiError::Unavailable { cause, .. } => {
                tracing::warn!(cause = %cause, "answered 503")
            }
            _ => {}
        }
        let mut body = serde_json::json!({ "error": self.code(), "message": self.message() });
        if let ApiError::Validation(fields) = &self {
            body["fields"] = serde_json::to_value(fields).unwrap_or_default();
        }
        let mut resp = ApiResponse::json(self.status(), &body);
        match &self {
            ApiError::Unauthorized => resp.headers.push((
                "www-authenticate",
                "Bearer error=\"invalid_token\"".to_string(),
            )),
            ApiError::InvalidToken(401) => resp.headers.push((
                "www-authenticate",
                "Bearer error=\"invalid_token\"".to_string(),
            )),
            ApiError::TooManyRequests { retry_after }
            | ApiError::Unavailable { retry_after, .. } => resp
                .headers
                .push(("retry-after", retry_after.max(&1).to_string())),
            _ => {}
        }
        resp
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::Conflict => ApiError::Conflict,
            // Nothing was acknowledged; the client may retry.
            StoreError::Backend(cause) => ApiError::Unavailable {
                retry_after: 1,
                cause: format!("store: {cause}"),
            },
            StoreError::Corrupt(_) => ApiError::Internal(e.to_string()),
        }
    }
}

/// Body of an error, for places that build responses by hand.
pub fn error_body(code: &str, message: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "error": code, "message": message }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_status_and_code() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::BadRequest("x"), 400, "bad_request"),
            (
                ApiError::validation("email", "bad"),
                400,
                "validation_failed",
            ),
            (ApiError::InvalidToken(400), 400, "invalid_token"),
            (ApiError::InvalidToken(401), 401, "invalid_token"),
            (ApiError::InvalidCredentials, 401, "invalid_credentials"),
            (ApiError::Unauthorized, 401, "unauthorized"),
            (ApiError::EmailNotVerified, 403, "email_not_verified"),
            (ApiError::Forbidden, 403, "forbidden"),
            (ApiError::NotFound, 404, "not_found"),
            (ApiError::EmailTaken, 409, "email_taken"),
            (ApiError::PayloadTooLarge, 413, "payload_too_large"),
            (
                ApiError::TooManyRequests { retry_after: 5 },
                429,
                "too_many_requests",
            ),
            (ApiError::Internal("secret cause".into()), 500, "internal"),
            (ApiError::Conflict, 409, "conflict"),
            (
                ApiError::Unavailable {
                    retry_after: 1,
                    cause: "secret cause".into(),
                },
                503,
                "service_unavailable",
            ),
            (ApiError::BadGateway, 502, "bad_gateway"),
            (ApiError::ReauthRequired, 403, "reauth_required"),
        ];
        for (e, status, code) in cases {
            let r = e.into_response();
            assert_eq!(r.status, status);
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["error"], code);
            assert!(!String::from_utf8_lossy(&r.body).contains("secret cause"));
        }
    }

    #[test]
    fn unauthorized_carries_www_authenticate_and_429_retry_after() {
        let r = ApiError::Unauthorized.into_response();
        assert!(r.headers.iter().any(|(k, _)| *k == "www-authenticate"));
        let r = ApiError::TooManyRequests { retry_after: 7 }.into_response();
        assert!(r
            .headers
            .iter()
            .any(|(k, v)| *k == "retry-after" && v == "7"));
        let r = ApiError::validation("password", "too short").into_response();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["fields"]["password"][0], "too short");
    }
}
