//! The claims of an access token: a leaf (serde and the schema only), so
//! the wire types and the proxy take them without climbing up.

use serde::{Deserialize, Serialize};

/// The claims of an access token (also the `claims` of `POST /auth/verify`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub jti: String,
    pub sid: String,
    pub email: String,
    pub roles: Vec<String>,
    /// How the session was authenticated (RFC 8176): `pwd`, `otp`,
    /// `webauthn`. Tokens issued before the claim existed read as empty.
    #[serde(default)]
    pub amr: Vec<String>,
    /// When the user last really authenticated (a sign-in or
    /// `POST /auth/reauth`, never a refresh): OIDC's `auth_time`, seconds
    /// since the epoch. Missing in tokens of sessions older than the claim,
    /// which count as not recent (CONTRACT 8.6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
}

impl AccessClaims {
    /// Does the token carry a second factor? Its own (`otp`, `webauthn`),
    /// or `mfa` of a federated sign-in: the gateway adds that only when the
    /// provider has `trust_mfa` and asserted it (CONTRACT 8.1).
    pub fn has_second_factor(&self) -> bool {
        self.has_local_second_factor()
            || (self.amr.iter().any(|m| m == "fed") && self.amr.iter().any(|m| m == "mfa"))
    }

    /// A second factor proven to this gateway (`otp` or `webauthn`): what
    /// the admin console's `require_mfa` asks for (CONTRACT 8.5).
    pub fn has_local_second_factor(&self) -> bool {
        self.amr.iter().any(|m| m == "otp" || m == "webauthn")
    }

    /// Was the user authenticated within `max_age` seconds of `now`?
    /// A token without `auth_time` never was.
    pub fn authenticated_within(&self, now: i64, max_age: u64) -> bool {
        self.auth_time
            .is_some_and(|t| t <= now && now - t <= max_age as i64)
    }
}

/// `X-User-*` identity headers for a verified token.
pub fn identity_headers(c: &AccessClaims) -> [(&'static str, String); 3] {
    [
        ("x-user-id", c.sub.clone()),
        ("x-user-email", c.email.clone()),
        ("x-user-roles", c.roles.join(",")),
    ]
}
