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

/// `POST /auth/mfa/totp/enroll`: the new secret, not yet in force.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EnrollResponse {
    /// The 160-bit secret in base32 (no padding), as in the URI.
    pub secret: String,
    /// `otpauth://totp/…` with the issuer, SHA1, 6 digits and a 30 s period.
    pub otpauth_uri: String,
}

/// `POST /auth/mfa/totp/confirm`: TOTP is on.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConfirmResponse {
    /// Ten single-use recovery codes, shown once.
    pub recovery_codes: Vec<String>,
}

/// `POST /auth/login` with TOTP on: no tokens yet, a second step first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MfaChallenge {
    /// Always `true`.
    pub mfa_required: bool,
    /// Opaque, single use, valid 5 minutes: send it to `/auth/mfa/verify`.
    pub mfa_token: String,
}

/// `POST /auth/login`: a token pair, or with TOTP on, a second step first.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum LoginResponse {
    Tokens(TokenResponse),
    Mfa(MfaChallenge),
}

/// `POST /auth/api-keys`: the new key; `key` is never shown again.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedApiKey {
    #[schema(format = Uuid)]
    pub id: String,
    /// `pk_` and 43 base64url characters (256 random bits).
    pub key: String,
    pub name: String,
    pub scopes: Vec<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// `null`: the key does not expire.
    #[schema(required = true, format = DateTime)]
    pub expires_at: Option<String>,
    /// Requests per minute allowed with this key; 0 = no limit of its own.
    pub rate_per_minute: u32,
}

/// One key in `GET /auth/api-keys` (never the key itself).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiKeyView {
    #[schema(format = Uuid)]
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(required = true, format = DateTime)]
    pub expires_at: Option<String>,
    /// `null` until first used; written at most every 10 s.
    #[schema(required = true, format = DateTime)]
    pub last_used_at: Option<String>,
    pub rate_per_minute: u32,
}

impl ApiKeyView {
    /// The view of a stored key, last used at `last_used_at` (the record's,
    /// or a newer use this gateway has not written yet).
    pub fn new(k: &crate::store::ApiKey, last_used_at: Option<i64>) -> Self {
        use crate::clock::rfc3339;
        Self {
            id: k.id.to_string(),
            name: k.name.clone(),
            scopes: k.scopes.clone(),
            created_at: rfc3339(k.created_at),
            expires_at: k.expires_at.map(rfc3339),
            last_used_at: last_used_at.map(rfc3339),
            rate_per_minute: k.rate_per_minute,
        }
    }
}

/// `GET /auth/api-keys`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKeyView>,
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

/// `POST /auth/reauth`: the password (every account has one today) and,
/// when TOTP is on, a TOTP or recovery code as well.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ReauthRequest {
    /// Required when the account has a password.
    pub password: Option<String>,
    /// A TOTP code or a recovery code; required when TOTP is on.
    pub code: Option<String>,
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

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CodeRequest {
    /// A 6-digit TOTP code.
    pub code: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct TotpDisableRequest {
    pub password: String,
    /// A TOTP code or a recovery code.
    pub code: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct MfaVerifyRequest {
    /// From the login's `{mfa_required, mfa_token}` answer.
    pub mfa_token: String,
    /// A TOTP code or a recovery code.
    pub code: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ApiKeyCreateRequest {
    /// 1 to 100 characters, no control characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// At least one; a route's `scopes` decide where the key passes.
    pub scopes: Vec<String>,
    /// Seconds until the key stops working (at most ten years).
    #[schema(minimum = 1, maximum = 315360000)]
    pub expires_in_secs: Option<u64>,
    /// A per-key limit in requests per minute (0 or absent: none).
    #[schema(maximum = 1000000)]
    pub rate_per_minute: Option<u32>,
}
