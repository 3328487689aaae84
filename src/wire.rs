//! The JSON bodies of the `/auth/*` API (CONTRACT section 3), as Rust types.
//! Responses are serialized from these types by the handlers, and the
//! OpenAPI document ([`crate::openapi`]) derives its schemas from the same
//! types, so the two cannot drift apart. Request bodies are parsed field by
//! field in the handlers (every problem is collected into one
//! `validation_failed`); their types here describe what is accepted.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

// ----- responses

/// An account as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserView {
    /// UUID.
    #[schema(format = Uuid)]
    pub id: String,
    pub email: String,
    /// `null` when none was set.
    #[schema(required = true)]
    pub username: Option<String>,
    pub email_verified: bool,
    pub roles: Vec<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// `{user}`: register, email verification, `GET`/`PATCH /auth/me`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserEnvelope {
    pub user: UserView,
}

/// A new token pair: login, MFA verification and refresh.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenResponse {
    /// A JWT (`typ: at+jwt`), sent as `Authorization: Bearer`.
    pub access_token: String,
    /// Opaque and single use: each refresh returns a new one.
    pub refresh_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    pub token_type: String,
    /// Lifetime of the access token in seconds.
    pub expires_in: u64,
    pub user: UserView,
}

/// `POST /auth/verify`: the claims of a valid access token.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IntrospectResponse {
    /// Always `true` (an invalid token answers 401).
    pub valid: bool,
    pub claims: crate::auth::tokens::AccessClaims,
}

/// `GET /auth/verify`: the identity is in the response headers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ForwardAuthResponse {
    /// Always `true` (an invalid token answers 401).
    pub valid: bool,
}

/// `202 Accepted` of the mail-sending endpoints, whether or not an account
/// exists.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Accepted {
    /// Always `accepted`.
    #[schema(example = "accepted")]
    pub status: String,
}

/// One live session of the caller.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionView {
    #[schema(format = Uuid)]
    pub id: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub last_used_at: String,
    /// Client IP address the session was created from.
    pub ip: String,
    pub user_agent: String,
    /// The session of the token this request carries.
    pub current: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
}

/// One public key of `/.well-known/jwks.json` (RFC 7517).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Jwk {
    /// `OKP` for Ed25519.
    pub kty: String,
    pub crv: Option<String>,
    pub x: Option<String>,
    pub kid: Option<String>,
    pub alg: Option<String>,
    #[serde(rename = "use")]
    #[schema(rename = "use")]
    pub use_: Option<String>,
}

/// The signing keys' public halves; `{"keys": []}` under HS256.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// Every error: `{error, message}`, plus `fields` for `validation_failed`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code, e.g. `validation_failed`, `invalid_token`, `unauthorized`.
    pub error: String,
    /// Human-readable; never carries internals.
    pub message: String,
    /// Per field, its problems (`validation_failed` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

// ----- requests (described; the handlers parse them field by field)

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct RegisterRequest {
    #[schema(format = Email)]
    pub email: String,
    /// 8 to 128 Unicode scalar values; common passwords, and passwords
    /// containing the email's local part, are refused.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    /// Must equal `password`.
    #[schema(min_length = 8, max_length = 128)]
    pub password_confirm: String,
    /// At most 64 characters, no control characters.
    #[schema(max_length = 64, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
    pub username: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
    /// Optional: a live refresh token of this account marks a known device,
    /// which keeps its own failed-login budget when the account is locked.
    pub refresh_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct LogoutRequest {
    /// Ends this token's session; an unknown token is ignored.
    pub refresh_token: Option<String>,
}

/// A one-time token from an email link, or an access token to introspect.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct TokenRequest {
    pub token: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct EmailRequest {
    pub email: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ResetConfirmRequest {
    pub token: String,
    /// As `password` of register.
    #[schema(min_length = 8, max_length = 128)]
    pub new_password: String,
    /// Must equal `new_password`.
    #[schema(min_length = 8, max_length = 128)]
    pub new_password_confirm: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct PasswordChangeRequest {
    pub current_password: String,
    /// As `password` of register.
    #[schema(min_length = 8, max_length = 128)]
    pub new_password: String,
    /// Must equal `new_password`.
    #[schema(min_length = 8, max_length = 128)]
    pub new_password_confirm: String,
}

/// Only `username` can change; any other key is a `validation_failed`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMeRequest {
    /// A new name, or `null` (or `""`) to clear it; at most 64 characters,
    /// no control characters.
    #[schema(max_length = 64, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
    pub username: Option<String>,
}
