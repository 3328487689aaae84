//! The JSON bodies of the `/auth/*` API (CONTRACT section 3), as Rust types.
//! Responses are serialized from these types by the handlers, and the
//! OpenAPI document ([`crate::openapi`]) derives its schemas from the same
//! types, so the two cannot drift apart. Request bodies are parsed INTO the
//! request types here (`crate::http::body`): each field is a [`Field`], so
//! a missing or mistyped one is judged afterwards and every problem is
//! collected into one `validation_failed`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// A request body field as read: absent, `null`, of another type than the
/// one asked for, or a value. Never fails the parse of its body.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Field<T> {
    #[default]
    Absent,
    Null,
    /// Present, but not a `T`.
    Wrong,
    Value(T),
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match serde_json::Value::deserialize(d)? {
            serde_json::Value::Null => Field::Null,
            v => serde_json::from_value(v).map_or(Field::Wrong, Field::Value),
        })
    }
}

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

impl UserView {
    /// An account record as the API shows it.
    pub fn of(u: &crate::store::User) -> Self {
        Self {
            id: u.id.to_string(),
            email: u.email.clone(),
            username: u.username.clone(),
            email_verified: u.email_verified,
            roles: u.roles.clone(),
            created_at: crate::clock::rfc3339(u.created_at),
        }
    }

    /// The same as a JSON value.
    pub fn json(u: &crate::store::User) -> serde_json::Value {
        serde_json::to_value(Self::of(u)).unwrap_or_default()
    }
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
    pub claims: crate::tokens::claims::AccessClaims,
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
    /// `OKP` for Ed25519; the provider's keys (CONTRACT 8.2) also `RSA`
    /// (RS256) and `EC` (ES256, P-256).
    pub kty: String,
    pub crv: Option<String>,
    pub x: Option<String>,
    /// EC: the y coordinate.
    pub y: Option<String>,
    /// RSA: modulus and exponent.
    pub n: Option<String>,
    pub e: Option<String>,
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

// ----- requests (parsed into these; see `Field`)
//
// Every field is `#[serde(default)]` (absent reads as `Field::Absent`); the
// schema states the type accepted and whether it is required.

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct RegisterRequest {
    #[serde(default)]
    #[schema(value_type = String, required = true, format = Email)]
    pub email: Field<String>,
    /// 8 to 128 Unicode scalar values; common passwords, and passwords
    /// containing the email's local part, are refused.
    #[serde(default)]
    #[schema(value_type = String, required = true, min_length = 8, max_length = 128)]
    pub password: Field<String>,
    /// Must equal `password`.
    #[serde(default)]
    #[schema(value_type = String, required = true, min_length = 8, max_length = 128)]
    pub password_confirm: Field<String>,
    /// At most 64 characters, no control characters.
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 64, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
    pub username: Field<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct LoginRequest {
    #[serde(default)]
    #[schema(value_type = String, required = true)]
    pub email: Field<String>,
    #[serde(default)]
    #[schema(value_type = String, required = true)]
    pub password: Field<String>,
    /// Optional: a live refresh token of this account marks a known device,
    /// which keeps its own failed-login budget when the account is locked.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub refresh_token: Field<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct RefreshRequest {
    #[serde(default)]
    #[schema(value_type = String, required = true)]
    pub refresh_token: Field<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct LogoutRequest {
    /// Ends this token's session; an unknown token is ignored.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub refresh_token: Field<String>,
}

/// A one-time token from an email link, or an access token to introspect.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct TokenRequest {
    #[serde(default)]
    #[schema(value_type = String, required = true)]
    pub token: Field<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct EmailRequest {
    #[serde(default)]
    #[schema(value_type = String, required = true)]
    pub email: Field<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ResetConfirmRequest {
    #[serde(default)]
    #[schema(value_type = String, required = true)]
    pub token: Field<String>,
    /// As `password` of register.
    #[serde(default)]
    #[schema(value_type = String, required = true, min_length = 8, max_length = 128)]
    pub new_password: Field<String>,
    /// Must equal `new_password`.
    #[serde(default)]
    #[schema(value_type = String, required = true, min_length = 8, max_length = 128)]
    pub new_password_confirm: Field<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct PasswordChangeRequest {
    #[serde(default)]
    #[schema(value_type = String, required = true)]
    pub current_password: Field<String>,
    /// As `password` of register.
    #[serde(default)]
    #[schema(value_type = String, required = true, min_length = 8, max_length = 128)]
    pub new_password: Field<String>,
    /// Must equal `new_password`.
    #[serde(default)]
    #[schema(value_type = String, required = true, min_length = 8, max_length = 128)]
    pub new_password_confirm: Field<String>,
}

/// `POST /auth/reauth`: the password (every account has one today) and,
/// when TOTP is on, a TOTP or recovery code as well.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ReauthRequest {
    /// Required when the account has a password.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub password: Field<String>,
    /// A TOTP code or a recovery code; required when TOTP is on.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub code: Field<String>,
}

/// Only `username` can change; any other key is a `validation_failed`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMeRequest {
    /// A new name, or `null` (or `""`) to clear it; at most 64 characters,
    /// no control characters.
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 64, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
    pub username: Field<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CodeRequest {
    /// A 6-digit TOTP code.
    #[serde(default)]
    #[schema(value_type = String, required = true)]
    pub code: Field<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct TotpDisableRequest {
    #[serde(default)]
    #[schema(value_type = String, required = true)]
    pub password: Field<String>,
    /// A TOTP code or a recovery code.
    #[serde(default)]
    #[schema(value_type = String, required = true)]
    pub code: Field<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct MfaVerifyRequest {
    /// From the login's `{mfa_required, mfa_token}` answer.
    #[serde(default)]
    #[schema(value_type = String, required = true)]
    pub mfa_token: Field<String>,
    /// A TOTP code or a recovery code.
    #[serde(default)]
    #[schema(value_type = String, required = true)]
    pub code: Field<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ApiKeyCreateRequest {
    /// 1 to 100 characters, no control characters.
    #[serde(default)]
    #[schema(value_type = String, required = true, min_length = 1, max_length = 100)]
    pub name: Field<String>,
    /// At least one; a route's `scopes` decide where the key passes.
    #[serde(default)]
    #[schema(value_type = Vec<String>, required = true)]
    pub scopes: Field<Vec<serde_json::Value>>,
    /// Seconds until the key stops working (at most ten years).
    #[serde(default)]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 315360000)]
    pub expires_in_secs: Field<serde_json::Value>,
    /// A per-key limit in requests per minute (0 or absent: none).
    #[serde(default)]
    #[schema(value_type = Option<u32>, maximum = 1000000)]
    pub rate_per_minute: Field<serde_json::Value>,
}

// ----- the OpenID Provider (CONTRACT 8.2): documentation of its bodies

/// An RFC 6749 §5.2 error of the token, revocation and userinfo endpoints.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OAuthError {
    /// `invalid_request`, `invalid_client`, `invalid_grant`,
    /// `unsupported_grant_type`, `invalid_scope` or `invalid_token`.
    pub error: String,
    pub error_description: String,
}

/// The token endpoint's answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OidcTokenResponse {
    /// A JWT (`typ: at+jwt`, `aud` = the client) signed with the provider key.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
    /// Seconds (`oidc_provider.access_ttl_secs`).
    pub expires_in: u64,
    pub refresh_token: String,
    /// The ID token (`typ: JWT`).
    pub id_token: String,
    /// The granted scopes, space-separated.
    pub scope: String,
}

/// Claims about the user, for the scopes granted to the access token.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserInfo {
    /// The user's id.
    pub sub: String,
    /// Scope `email`.
    pub email: Option<String>,
    /// Scope `email`.
    pub email_verified: Option<bool>,
    /// Scope `profile`.
    pub preferred_username: Option<String>,
    /// Scope `roles`.
    pub roles: Option<Vec<String>>,
}

/// OpenID Connect Discovery 1.0 metadata (the fields every client reads;
/// the document has more, see `docs/api.md`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OidcDiscovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub userinfo_endpoint: String,
    pub jwks_uri: String,
    pub revocation_endpoint: String,
    pub end_session_endpoint: String,
    pub response_types_supported: Vec<String>,
    pub subject_types_supported: Vec<String>,
    pub id_token_signing_alg_values_supported: Vec<String>,
    pub code_challenge_methods_supported: Vec<String>,
    pub grant_types_supported: Vec<String>,
    pub scopes_supported: Vec<String>,
}

/// `POST /auth/oauth/token` (form-urlencoded).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct OAuthTokenForm {
    /// `authorization_code` or `refresh_token`.
    pub grant_type: String,
    /// `authorization_code`: the code.
    pub code: Option<String>,
    /// `authorization_code`: exactly as in the authorization request.
    pub redirect_uri: Option<String>,
    /// `authorization_code`: the PKCE verifier (when a challenge was sent).
    pub code_verifier: Option<String>,
    /// `refresh_token`: the refresh token.
    pub refresh_token: Option<String>,
    /// `refresh_token`: at most the granted scopes.
    pub scope: Option<String>,
    /// `client_secret_post` and public clients.
    pub client_id: Option<String>,
    /// `client_secret_post`.
    pub client_secret: Option<String>,
}

/// `POST /auth/oauth/revoke` (RFC 7009, form-urlencoded).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct OAuthRevokeForm {
    pub token: String,
    /// `refresh_token` or `access_token` (a hint only).
    pub token_type_hint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

/// `POST /auth/oauth/userinfo` (form-urlencoded, RFC 6750 §2.2).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct OAuthUserinfoForm {
    /// The access token, when it is not in the `Authorization` header.
    pub access_token: Option<String>,
}

/// The consent page's form (`POST /auth/oauth/authorize`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct OAuthConsentForm {
    /// The portal's CSRF token (its cookie's value).
    pub csrf: String,
    /// The authorization request's query, as the page carried it.
    pub request: String,
    /// `allow`; anything else denies.
    pub decision: String,
}

/// `POST /auth/oauth/logout` (form-urlencoded; the same as the GET's query).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct OAuthLogoutForm {
    pub id_token_hint: Option<String>,
    pub post_logout_redirect_uri: Option<String>,
    pub state: Option<String>,
}

// ----- sign-in with an outside provider (CONTRACT 8.1)

/// `POST /auth/oidc/exchange`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct LoginCodeRequest {
    /// From the callback's redirect (`?login_code=…`): single use, 60 s.
    #[serde(default)]
    #[schema(value_type = String, required = true)]
    pub login_code: Field<String>,
}

/// One identity at an outside provider linked to the account.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IdentityView {
    /// The provider's `id` in `[[identity_providers]]`.
    pub provider: String,
    /// The provider's identifier of the person.
    pub subject: String,
    /// The email the provider gave when it was linked.
    pub email: Option<String>,
    /// RFC 3339.
    pub linked_at: String,
}

/// `GET /auth/identities`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IdentityList {
    pub identities: Vec<IdentityView>,
}

/// `POST /auth/identities/{provider}`: send the browser there (with the
/// state cookie this answer sets) to link that identity.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuthorizeUrl {
    pub authorize_url: String,
}

/// `POST /auth/oidc/{id}/backchannel-logout`: the provider's form.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct LogoutTokenForm {
    /// The provider's signed `logout_token` (OIDC Back-Channel Logout 1.0).
    pub logout_token: String,
}
