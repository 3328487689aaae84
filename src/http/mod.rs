//! The JSON front door: the `/auth/*` and `/.well-known/*` endpoints
//! (CONTRACT section 3). Each endpoint parses its body into a request type
//! of [`crate::wire`] (`body`), calls one operation of the account service
//! ([`crate::accounts`]) and serializes the answer; what went wrong is
//! mapped to status and code in one place (`error`). `routes` dispatches by
//! method and path; `api` is the transport-neutral request and response the
//! proxy (`src/proxy/`) converts Pingora sessions to and from.

mod account;
pub mod api;
mod apikeys;
pub mod body;
pub mod cors;
pub mod error;
pub mod federation;
mod mfa;
pub mod pages;
mod routes;
mod session;

use std::sync::Arc;

use crate::accounts::{AuthService, Client};
use crate::error::ApiError;
use crate::tokens::AccessClaims;
use api::{ApiRequest, ApiResponse};

type ApiResult = Result<ApiResponse, ApiError>;

/// The caller as the account service sees it.
pub fn client_of(req: &ApiRequest) -> Client {
    Client {
        ip: req.client_ip,
        user_agent: req.user_agent(),
        request_id: req.request_id.clone(),
    }
}

impl AuthService {
    /// The request's bearer token, verified (401 `unauthorized` else).
    pub(crate) fn require_bearer(&self, req: &ApiRequest) -> Result<Arc<AccessClaims>, ApiError> {
        self.authenticate(&req.headers)
            .map_err(|_| ApiError::Unauthorized)
    }
}

/// A user as the API shows it.
pub fn user_view(u: &crate::store::User) -> crate::wire::UserView {
    crate::wire::UserView::of(u)
}

/// `{user}` (through a JSON value, as it always was written).
fn user_envelope(status: u16, u: &crate::store::User) -> ApiResponse {
    json_of(status, &crate::wire::UserEnvelope { user: user_view(u) })
}

/// A wire type written through a JSON value.
fn json_of<T: serde::Serialize>(status: u16, v: &T) -> ApiResponse {
    ApiResponse::json(status, &serde_json::to_value(v).unwrap_or_default())
}

/// A token pair as `POST /auth/login`, `/auth/refresh`, `/auth/mfa/verify`
/// and `/auth/reauth` answer it.
pub fn token_response(s: &crate::accounts::Signed) -> crate::wire::TokenResponse {
    crate::wire::TokenResponse {
        access_token: s.access_token.clone(),
        refresh_token: s.refresh_token.clone(),
        token_type: "Bearer".into(),
        expires_in: s.expires_in,
        user: user_view(&s.user),
    }
}
