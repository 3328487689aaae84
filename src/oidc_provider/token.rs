//! `POST /auth/oauth/token`, `GET|POST /auth/oauth/userinfo` and
//! `POST /auth/oauth/revoke`: client authentication, the code and refresh
//! grants, the signed ID and access tokens, RFC 6749 §5.2 errors.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{client, s256, scope_list, Params};
use crate::accounts::provider::{ClientSession, GrantError};
use crate::accounts::AuthService;
use crate::config::oidc_provider::OidcClient;
use crate::config::Config;
use crate::http::api::{ApiRequest, ApiResponse};
use crate::store::Revocation;
use crate::tokens::AccessClaims;

/// The claims of an ID token (also read back from an `id_token_hint`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub auth_time: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    pub amr: Vec<String>,
    pub sid: String,
    pub azp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
}

/// The claims of a client access token: the gateway's access-token claims
/// (so the revocation set applies to them as is) with the client and scope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientAccessClaims {
    #[serde(flatten)]
    pub base: AccessClaims,
    pub client_id: String,
    pub scope: String,
}

/// An RFC 6749 §5.2 error.
fn token_error(status: u16, error: &str, description: &str) -> ApiResponse {
    ApiResponse::json(
        status,
        &json!({ "error": error, "error_description": description }),
    )
    .with_header("cache-control", "no-store")
    .with_header("pragma", "no-cache")
}

fn invalid_client(basic: bool) -> ApiResponse {
    let r = token_error(401, "invalid_client", "client authentication failed");
    if basic {
        r.with_header("www-authenticate", "Basic realm=\"portcullis\"")
    } else {
        r
    }
}

fn form_decode(s: &str) -> Option<String> {
    let with_spaces = s.replace('+', " ");
    percent_encoding::percent_decode_str(&with_spaces)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// Authenticate the client of a token or revocation request:
/// `client_secret_basic` (id and secret form-urlencoded before base64,
/// RFC 6749 §2.3.1), `client_secret_post`, or a public client's bare
/// `client_id`. Secrets are compared in constant time.
fn authenticate_client<'a>(
    req: &ApiRequest,
    cfg: &'a Config,
    form: &Params,
) -> Result<&'a OidcClient, ApiResponse> {
    let basic = req
        .header("authorization")
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, v)| v.trim());
    let (id, secret, is_basic) = match basic {
        Some(b) => {
            if form.get("client_secret").is_some() {
                return Err(token_error(
                    400,
                    "invalid_request",
                    "one client authentication method only",
                ));
            }
            let decoded = STANDARD
                .decode(b)
                .ok()
                .and_then(|d| String::from_utf8(d).ok());
            let Some((id, secret)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
                return Err(invalid_client(true));
            };
            let (Some(id), Some(secret)) = (form_decode(id), form_decode(secret)) else {
                return Err(invalid_client(true));
            };
            if form.get("client_id").is_some_and(|c| c != id) {
                return Err(invalid_client(true));
            }
            (id, Some(secret), true)
        }
        None => match form.get("client_id") {
            Some(id) => (
                id.to_string(),
                form.get("client_secret").map(str::to_string),
                false,
            ),
            None => return Err(invalid_client(false)),
        },
    };
    let Some(c) = client(cfg, &id) else {
        return Err(invalid_client(is_basic));
    };
    match (&c.secret, secret) {
        (None, None) => Ok(c),
        (Some(want), Some(got)) if bool::from(want.0.as_bytes().ct_eq(got.as_bytes())) => Ok(c),
        _ => Err(invalid_client(is_basic)),
    }
}

impl AuthService {
    /// `POST /auth/oauth/token`.
    pub(super) async fn token_endpoint(&self, req: &ApiRequest, cfg: Arc<Config>) -> ApiResponse {
        let form_ok = req
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        if !form_ok {
            return token_error(
                400,
                "invalid_request",
                "the body must be application/x-www-form-urlencoded",
            );
        }
        let form = match Params::parse(&req.body) {
            Ok(f) => f,
            Err(e) => return token_error(400, "invalid_request", e),
        };
        let c = match authenticate_client(req, &cfg, &form) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let caller = crate::http::client_of(req);
        let result = match form.get("grant_type") {
            Some("authorization_code") => {
                let Some(code) = form.get("code") else {
                    return token_error(400, "invalid_request", "code is missing");
                };
                let Some(grant) = crate::accounts::provider::code_grant(code) else {
                    return token_error(400, "invalid_grant", "the code is invalid");
                };
                if form.get("redirect_uri") != Some(grant.redirect_uri.as_str()) {
                    return token_error(
                        400,
                        "invalid_grant",
                        "redirect_uri does not match the authorization request",
                    );
                }
                match (&grant.code_challenge, form.get("code_verifier")) {
                    (Some(ch), Some(v))
                        if super::pkce_shaped(v)
                            && s256(v).as_bytes().ct_eq(ch.as_bytes()).into() => {}
                    (None, None) => {}
                    (Some(_), None) => {
                        return token_error(400, "invalid_grant", "code_verifier is missing")
                    }
                    _ => return token_error(400, "invalid_grant", "code_verifier does not match"),
                }
                match self.redeem_auth_code(code, &c.client_id, &caller).await {
                    Ok((s, grant)) => Ok((s, grant.nonce)),
                    Err(e) => Err(e),
                }
            }
            Some("refresh_token") => {
                let Some(rt) = form.get("refresh_token") else {
                    return token_error(400, "invalid_request", "refresh_token is missing");
                };
                match self.refresh_client_session(rt, &c.client_id, &caller).await {
                    Ok(s) => {
                        if let Some(asked) = form.get("scope") {
                            let granted = scope_list(
                                &s.session
                                    .client
                                    .as_ref()
                                    .map(|b| b.scope.clone())
                                    .unwrap_or_default(),
                            );
                            if scope_list(asked).iter().any(|a| !granted.contains(a)) {
                                return token_error(
                                    400,
                                    "invalid_scope",
                                    "more scope than was granted",
                                );
                            }
                        }
                        Ok((s, None))
                    }
                    Err(e) => Err(e),
                }
            }
            Some(_) => {
                return token_error(
                    400,
                    "unsupported_grant_type",
                    "authorization_code or refresh_token",
                )
            }
            None => return token_error(400, "invalid_request", "grant_type is missing"),
        };
        let (s, nonce) = match result {
            Ok(r) => r,
            Err(GrantError::Invalid) => {
                return token_error(
                    400,
                    "invalid_grant",
                    "the code or refresh token is invalid, used or expired",
                )
            }
            Err(GrantError::Account(e)) => return crate::error::ApiError::from(e).into_response(),
        };
        match self.client_tokens(&cfg, c, &s, nonce) {
            Ok(body) => ApiResponse::json(200, &body)
                .with_header("cache-control", "no-store")
                .with_header("pragma", "no-cache"),
            Err(e) => crate::error::ApiError::internal(e).into_response(),
        }
    }

    /// The token response of a client session: access, refresh and ID token.
    fn client_tokens(
        &self,
        cfg: &Config,
        c: &OidcClient,
        s: &ClientSession,
        nonce: Option<String>,
    ) -> Result<serde_json::Value, String> {
        let now = self.clock.now();
        let p = &cfg.oidc_provider;
        let scope = s
            .session
            .client
            .as_ref()
            .map(|b| b.scope.clone())
            .unwrap_or_default();
        let scopes = scope_list(&scope);
        let has = |x: &str| scopes.iter().any(|s| s == x);
        let u = &s.user;
        let amr = if s.session.amr.is_empty() {
            vec!["pwd".to_string()]
        } else {
            s.session.amr.clone()
        };
        let auth_time = s.session.auth_time.unwrap_or(s.session.created_at);
        let access = ClientAccessClaims {
            base: AccessClaims {
                iss: p.issuer.clone(),
                aud: c.client_id.clone(),
                sub: u.id.to_string(),
                exp: now + p.access_ttl_secs as i64,
                iat: now,
                nbf: None,
                jti: Uuid::new_v4().to_string(),
                sid: s.session.id.to_string(),
                email: u.email.clone(),
                roles: u.roles.clone(),
                amr: amr.clone(),
                auth_time: Some(auth_time),
            },
            client_id: c.client_id.clone(),
            scope: scope.clone(),
        };
        let id = IdClaims {
            iss: p.issuer.clone(),
            sub: u.id.to_string(),
            aud: c.client_id.clone(),
            exp: now + p.access_ttl_secs as i64,
            iat: now,
            auth_time,
            nonce,
            amr,
            sid: s.session.id.to_string(),
            azp: c.client_id.clone(),
            email: has("email").then(|| u.email.clone()),
            email_verified: has("email").then_some(u.email_verified),
            preferred_username: if has("profile") {
                Some(u.username.clone().unwrap_or_else(|| u.email.clone()))
            } else {
                None
            },
            roles: has("roles").then(|| u.roles.clone()),
        };
        let access_token = self.provider_sign(crate::tokens::jwt::ACCESS_TYP, &access)?;
        let id_token = self.provider_sign("JWT", &id)?;
        Ok(json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": p.access_ttl_secs,
            "refresh_token": s.refresh_token,
            "id_token": id_token,
            "scope": scope,
        }))
    }

    /// A client access token, verified: signature, type, `exp`, issuer, a
    /// registered client as audience, not revoked.
    fn client_access(&self, cfg: &Config, token: &str) -> Option<ClientAccessClaims> {
        let c: ClientAccessClaims =
            self.provider_verify(crate::tokens::jwt::ACCESS_TYP, token, true)?;
        let ok = c.base.iss == cfg.oidc_provider.issuer
            && client(cfg, &c.base.aud).is_some()
            && c.client_id == c.base.aud
            && !self.revocations.is_revoked(&c.base);
        ok.then_some(c)
    }

    /// `GET|POST /auth/oauth/userinfo` with a client access token.
    pub(super) async fn userinfo(&self, req: &ApiRequest, cfg: Arc<Config>) -> ApiResponse {
        let refuse = || {
            ApiResponse::json(
                401,
                &json!({"error": "invalid_token", "error_description": "the access token is invalid"}),
            )
            .with_header("www-authenticate", "Bearer error=\"invalid_token\"")
        };
        let token = match crate::accounts::service::bearer(&req.headers) {
            Ok(t) => t.to_string(),
            Err(_) => {
                // RFC 6750 §2.2: the form body parameter.
                let from_form = (req.method == http::Method::POST)
                    .then(|| Params::parse(&req.body).ok())
                    .flatten()
                    .and_then(|f| f.get("access_token").map(str::to_string));
                match from_form {
                    Some(t) => t,
                    None => return ApiResponse::json(
                        401,
                        &json!({"error": "invalid_token", "error_description": "no access token"}),
                    )
                    .with_header("www-authenticate", "Bearer"),
                }
            }
        };
        let Some(c) = self.client_access(&cfg, &token) else {
            return refuse();
        };
        let user = match Uuid::parse_str(&c.base.sub) {
            Ok(uid) => match self.provider_user(uid).await {
                Ok(Some(u)) => u,
                Ok(None) => return refuse(),
                Err(e) => return crate::error::ApiError::from(e).into_response(),
            },
            Err(_) => return refuse(),
        };
        let scopes = scope_list(&c.scope);
        let has = |x: &str| scopes.iter().any(|s| s == x);
        let mut body = json!({ "sub": user.id.to_string() });
        if has("email") {
            body["email"] = json!(user.email);
            body["email_verified"] = json!(user.email_verified);
        }
        if has("profile") {
            body["preferred_username"] =
                json!(user.username.clone().unwrap_or_else(|| user.email.clone()));
        }
        if has("roles") {
            body["roles"] = json!(user.roles);
        }
        ApiResponse::json(200, &body).with_header("cache-control", "no-store")
    }

    /// `POST /auth/oauth/revoke` (RFC 7009): a refresh token ends its
    /// session, an access token is revoked; an unknown token is 200 too.
    pub(super) async fn revoke_endpoint(&self, req: &ApiRequest, cfg: Arc<Config>) -> ApiResponse {
        let form = match Params::parse(&req.body) {
            Ok(f) => f,
            Err(e) => return token_error(400, "invalid_request", e),
        };
        let c = match authenticate_client(req, &cfg, &form) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let Some(token) = form.get("token") else {
            return token_error(400, "invalid_request", "token is missing");
        };
        let caller = crate::http::client_of(req);
        if token.contains('.') && token.split('.').count() == 3 {
            if let Some(a) = self.client_access(&cfg, token) {
                if a.client_id == c.client_id {
                    if let Ok(jti) = Uuid::parse_str(&a.base.jti) {
                        let revoked = vec![Revocation::Token(jti, a.base.exp)];
                        if let Err(e) = self.store.revoke(revoked.clone()).await {
                            return crate::error::ApiError::from(
                                crate::accounts::AccountError::from(e),
                            )
                            .into_response();
                        }
                        self.revocations.apply(&revoked);
                    }
                }
            }
        } else if let Err(e) = self
            .revoke_client_refresh(token, &c.client_id, &caller)
            .await
        {
            return crate::error::ApiError::from(e).into_response();
        }
        ApiResponse::empty(200).with_header("cache-control", "no-store")
    }
}
