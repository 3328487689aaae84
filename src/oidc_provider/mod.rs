//! Portcullis as an OpenID Provider (CONTRACT 8.2): the front door of the
//! `/auth/oauth/*` endpoints and discovery. It turns OAuth 2.0 / OpenID
//! Connect requests into calls of the account service
//! ([`crate::accounts::provider`]) and the answers into redirects, pages
//! and RFC 6749 JSON; it signs the ID tokens and client access tokens
//! ([`sign`]).
//!
//! RFC 9700 is the checklist: exact `redirect_uri` match, PKCE S256 (never
//! `plain`; required of public clients), codes single use, short lived,
//! stored hashed and bound to client, redirect URI and challenge; a bad
//! client or redirect URI is never redirected to.

mod authorize;
pub mod backchannel;
mod pages;
mod sign;
mod token;

use http::Method;
use serde_json::json;

use crate::accounts::AuthService;
use crate::config::oidc_provider::OidcClient;
use crate::config::{Config, OidcProviderConfig};
use crate::error::ApiError;
use crate::http::api::{ApiRequest, ApiResponse};

type ApiResult = Result<ApiResponse, ApiError>;

/// The paths this front door serves.
pub fn is_provider_path(path: &str) -> bool {
    path == "/.well-known/openid-configuration" || path.starts_with("/auth/oauth/")
}

/// The endpoints, by path (for the OpenAPI document and `Allow`).
pub const ENDPOINTS: [&str; 6] = [
    "/auth/oauth/authorize",
    "/auth/oauth/token",
    "/auth/oauth/userinfo",
    "/auth/oauth/revoke",
    "/auth/oauth/logout",
    "/.well-known/openid-configuration",
];

/// The provider config, when it is on.
fn provider(cfg: &Config) -> Option<&OidcProviderConfig> {
    Some(&cfg.oidc_provider).filter(|p| p.enabled)
}

impl AuthService {
    /// Serve the provider's endpoints (404 while `oidc_provider.enabled`
    /// is false).
    pub(crate) async fn oidc_provider(&self, req: &ApiRequest) -> ApiResult {
        let cfg = self.cfg();
        if provider(&cfg).is_none() {
            return Err(ApiError::NotFound);
        }
        let m = &req.method;
        let get = *m == Method::GET || *m == Method::HEAD;
        let post = *m == Method::POST;
        match req.path.as_str() {
            "/.well-known/openid-configuration" if get => Ok(discovery(&cfg)),
            "/auth/oauth/authorize" if get => self.authorize(req, cfg).await,
            "/auth/oauth/authorize" if post => self.consent_submit(req, cfg).await,
            "/auth/oauth/token" if post => Ok(self.token_endpoint(req, cfg).await),
            "/auth/oauth/userinfo" if get || post => Ok(self.userinfo(req, cfg).await),
            "/auth/oauth/revoke" if post => Ok(self.revoke_endpoint(req, cfg).await),
            "/auth/oauth/logout" if get || post => self.rp_logout(req, cfg).await,
            p if ENDPOINTS.contains(&p) => Err(ApiError::MethodNotAllowed),
            _ => Err(ApiError::NotFound),
        }
    }
}

/// `GET /.well-known/openid-configuration`.
fn discovery(cfg: &Config) -> ApiResponse {
    let p = &cfg.oidc_provider;
    let iss = &p.issuer;
    let alg = p.signing_alg.name();
    let doc = json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/auth/oauth/authorize"),
        "token_endpoint": format!("{iss}/auth/oauth/token"),
        "userinfo_endpoint": format!("{iss}/auth/oauth/userinfo"),
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "revocation_endpoint": format!("{iss}/auth/oauth/revoke"),
        "end_session_endpoint": format!("{iss}/auth/oauth/logout"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [alg],
        "userinfo_signing_alg_values_supported": ["none"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": crate::config::oidc_provider::KNOWN_SCOPES,
        "claims_supported": [
            "iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "amr", "sid",
            "email", "email_verified", "preferred_username", "roles"
        ],
        "prompt_values_supported": ["none", "login"],
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "authorization_response_iss_parameter_supported": true,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "claims_parameter_supported": false,
    });
    ApiResponse::json(200, &doc).with_header("cache-control", "public, max-age=300")
}

/// A request's parameters (query or form body), refusing any given twice
/// (RFC 6749 §3.1).
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(raw: &[u8]) -> Result<Self, &'static str> {
        let mut v: Vec<(String, String)> = Vec::new();
        for (k, val) in url::form_urlencoded::parse(raw) {
            if v.iter().any(|(o, _)| *o == k) {
                return Err("a parameter is given more than once");
            }
            v.push((k.into_owned(), val.into_owned()));
        }
        Ok(Params(v))
    }

    /// The value of `name`; an empty value counts as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// The S256 transform of a PKCE verifier (RFC 7636 §4.2).
pub(crate) fn s256(verifier: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// A PKCE verifier or challenge: 43 to 128 unreserved characters.
pub(crate) fn pkce_shaped(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// The client named `id`, if registered.
pub(crate) fn client<'a>(cfg: &'a Config, id: &str) -> Option<&'a OidcClient> {
    cfg.oidc_provider.client(id)
}

/// Scopes as a list, each once, in request order.
pub(crate) fn scope_list(scope: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in scope.split(' ').filter(|s| !s.is_empty()) {
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    out
}
