//! The client side of OpenID Connect and OAuth 2.0 (CONTRACT 8.1): the
//! discovery document, the provider's JWKS, the authorization URL (state,
//! nonce, PKCE S256), the code exchange, the `id_token` checks and the
//! userinfo fetch. Every request goes through the shared outbound client
//! (https only, loopback http for tests, no redirects, capped, timed out).
//!
//! Why not the `openidconnect` crate: 4.1 brings a second generation of
//! the Ed25519 stack (`ed25519-dalek` 3, `curve25519-dalek` 5, `ed25519` 3)
//! beside the 2/4/2 this gateway signs with, plus `oauth2` 5 and its own
//! JSON helpers (`serde-value`, `serde_plain`, `ordered-float`,
//! `itertools`), and its HTTP and time handling would be adapters around
//! our `Outbound` and `Clock` anyway. The checks it would do are few and
//! written down (OIDC Core 3.1.3.7); `jsonwebtoken`, already verifying
//! this gateway's own tokens, does the signatures (RSA, ECDSA, EdDSA) from
//! JWKs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::Clock;
use crate::config::{provider_url_ok, IdentityProvider, ProviderKind};

use crate::outbound::{Outbound, OutboundOptions};

/// How long a discovery document and a JWKS are used before being read again.
const CACHE_SECS: i64 = 3600;
/// An unknown `kid` refetches the JWKS at most this often (per provider).
const JWKS_REFETCH_SECS: i64 = 60;
/// Leeway on `exp` and `iat`.
const LEEWAY_SECS: i64 = 60;
/// An `iat` older than this is absurd for a token just issued.
const MAX_AGE_SECS: i64 = 86_400;
/// Response bodies from a provider (discovery, JWKS, tokens, userinfo).
const MAX_BODY: usize = 256 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a step with the provider failed. Logged (never with a secret or a
/// token), and shown to the person as `provider_error` or `invalid_state`.
#[derive(Debug, thiserror::Error)]
pub enum FedError {
    /// The provider could not be reached or answered nonsense.
    #[error("provider unreachable or answered badly: {0}")]
    Provider(String),
    /// The provider's answer failed a check (signature, issuer, audience,
    /// nonce, expiry): someone else's token, or tampering.
    #[error("provider answer refused: {0}")]
    Refused(String),
}

/// What a provider vouches for, after every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedIdentity {
    pub provider: String,
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    /// Local roles, through `role_map` (unmapped values dropped).
    pub roles: Vec<String>,
    /// The provider's `amr` (oidc; empty for oauth2).
    pub amr: Vec<String>,
    /// The provider's session id (`sid`), for back-channel logout.
    pub sid: Option<String>,
}

/// The endpoints of `{issuer}/.well-known/openid-configuration`.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    pub jwks_uri: String,
    /// RFC 9207: the authorization response carries `iss`.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

/// A sign-in about to start: where to send the browser, and the secrets
/// the callback needs (kept in the browser-bound state).
#[derive(Debug, Clone)]
pub struct Authorization {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

/// What the callback received from the browser.
#[derive(Debug, Clone, Default)]
pub struct CallbackParams {
    pub code: Option<String>,
    pub state: Option<String>,
    /// RFC 9207.
    pub iss: Option<String>,
    pub error: Option<String>,
}

#[derive(Default)]
struct Cached {
    /// What the cache was filled for: a provider changed by a reload is read anew.
    fingerprint: String,
    outbound: Option<Arc<Outbound>>,
    discovery: Option<(Arc<Discovery>, i64)>,
    /// The keys and when they were read.
    jwks: Option<(Arc<Vec<Value>>, i64)>,
}

/// The outside providers' protocol client, shared by every request.
pub struct Federation {
    clock: Arc<dyn Clock>,
    cache: Mutex<HashMap<String, Cached>>,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The PKCE S256 challenge of a verifier (RFC 7636 4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    b64url(&Sha256::digest(verifier.as_bytes()))
}

/// Constant-time equality of two secrets.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn fingerprint(p: &IdentityProvider) -> String {
    format!(
        "{:?}|{}|{:?}|{}|{}",
        p.kind, p.issuer, p.ca_file, p.token_url, p.userinfo_url
    )
}

fn checked_url(what: &str, u: &str) -> Result<url::Url, FedError> {
    let parsed =
        url::Url::parse(u).map_err(|_| FedError::Provider(format!("{what}: not a URL")))?;
    if !provider_url_ok(&parsed) {
        return Err(FedError::Provider(format!(
            "{what}: must be https (http only to loopback)"
        )));
    }
    Ok(parsed)
}

impl Federation {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The cache entry of `p`, emptied when `p` changed (a reload).
    fn with_cache<R>(&self, p: &IdentityProvider, f: impl FnOnce(&mut Cached) -> R) -> R {
        let mut all = self.cache.lock();
        let fp = fingerprint(p);
        let entry = all.entry(p.id.clone()).or_default();
        if entry.fingerprint != fp {
            *entry = Cached {
                fingerprint: fp,
                ..Cached::default()
            };
        }
        f(entry)
    }

    /// Tests: a discovery document and keys as if just read.
    #[cfg(test)]
    fn prime(&self, p: &IdentityProvider, d: Discovery, keys: Vec<Value>) {
        let now = self.clock.now();
        self.with_cache(p, |c| {
            c.discovery = Some((Arc::new(d), now));
            c.jwks = Some((Arc::new(keys), now));
        });
    }

    fn outbound(&self, p: &IdentityProvider) -> Result<Arc<Outbound>, FedError> {
        if let Some(o) = self.with_cache(p, |c| c.outbound.clone()) {
            return Ok(o);
        }
        let o = Arc::new(
            Outbound::new(OutboundOptions {
                ca_file: p.ca_file.clone(),
                timeout: TIMEOUT,
                max_body: MAX_BODY,
            })
            .map_err(|e| FedError::Provider(format!("outbound client: {e}")))?,
        );
        self.with_cache(p, |c| c.outbound = Some(o.clone()));
        Ok(o)
    }

    async fn send(
        &self,
        p: &IdentityProvider,
        req: http::Request<Vec<u8>>,
        what: &str,
    ) -> Result<Bytes, FedError> {
        let out = self.outbound(p)?;
        let resp = out
            .send(req)
            .await
            .map_err(|e| FedError::Provider(format!("{what}: {e}")))?;
        if !resp.status().is_success() {
            return Err(FedError::Provider(format!(
                "{what}: status {}",
                resp.status().as_u16()
            )));
        }
        Ok(resp.into_body())
    }

    async fn get_json(
        &self,
        p: &IdentityProvider,
        url: &url::Url,
        bearer: Option<&str>,
        what: &str,
    ) -> Result<Value, FedError> {
        let mut b = http::Request::get(url.as_str())
            .header(http::header::ACCEPT, "application/json")
            // GitHub's API refuses requests without one.
            .header(http::header::USER_AGENT, "portcullis");
        if let Some(t) = bearer {
            b = b.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = b
            .body(Vec::new())
            .map_err(|e| FedError::Provider(format!("{what}: {e}")))?;
        let body = self.send(p, req, what).await?;
        serde_json::from_slice(&body).map_err(|_| FedError::Provider(format!("{what}: not JSON")))
    }

    /// The discovery document (oidc), cached; its `issuer` must equal the
    /// configured one and every endpoint must be an acceptable URL.
    pub async fn discovery(&self, p: &IdentityProvider) -> Result<Arc<Discovery>, FedError> {
        let now = self.clock.now();
        if let Some((d, at)) = self.with_cache(p, |c| c.discovery.clone()) {
            if now - at < CACHE_SECS {
                return Ok(d);
            }
        }
        let base = p.issuer.trim_end_matches('/');
        let url = checked_url(
            "discovery",
            &format!("{base}/.well-known/openid-configuration"),
        )?;
        let v = self.get_json(p, &url, None, "discovery").await?;
        let d: Discovery =
            serde_json::from_value(v).map_err(|e| FedError::Provider(format!("discovery: {e}")))?;
        if d.issuer != p.issuer {
            return Err(FedError::Refused(format!(
                "discovery names issuer '{}', not the configured one",
                d.issuer
            )));
        }
        checked_url("authorization_endpoint", &d.authorization_endpoint)?;
        checked_url("token_endpoint", &d.token_endpoint)?;
        checked_url("jwks_uri", &d.jwks_uri)?;
        if let Some(u) = &d.userinfo_endpoint {
            checked_url("userinfo_endpoint", u)?;
        }
        let d = Arc::new(d);
        self.with_cache(p, |c| c.discovery = Some((d.clone(), now)));
        Ok(d)
    }

    /// The authorization URL of a new sign-in; `secrets` gives the state,
    /// nonce and PKCE verifier (fresh random values, from the caller's
    /// entropy).
    pub async fn authorize(
        &self,
        p: &IdentityProvider,
        state: String,
        nonce: String,
        verifier: String,
    ) -> Result<Authorization, FedError> {
        let endpoint = match p.kind {
            ProviderKind::Oidc => self.discovery(p).await?.authorization_endpoint.clone(),
            ProviderKind::OAuth2 => p.authorize_url.clone(),
        };
        let mut url = checked_url("authorization_endpoint", &endpoint)?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &p.client_id)
                .append_pair("redirect_uri", &p.redirect_uri)
                .append_pair("scope", &p.scopes.join(" "))
                .append_pair("state", &state)
                .append_pair("code_challenge", &pkce_challenge(&verifier))
                .append_pair("code_challenge_method", "S256");
            if p.kind == ProviderKind::Oidc {
                q.append_pair("nonce", &nonce);
            }
        }
        Ok(Authorization {
            url: url.to_string(),
            state,
            nonce,
            verifier,
        })
    }

    /// RFC 9207: an `iss` in the authorization response must be the
    /// provider's; a provider that promises it must send it.
    pub async fn check_response_issuer(
        &self,
        p: &IdentityProvider,
        iss: Option<&str>,
    ) -> Result<(), FedError> {
        if p.kind != ProviderKind::Oidc {
            // No configured issuer: an RFC 9207 `iss` must at least name
            // the server the browser was sent to (another one is a mix-up).
            return match iss {
                None => Ok(()),
                Some(i) if issuer_serves(i, &p.authorize_url) => Ok(()),
                Some(_) => Err(FedError::Refused(
                    "the authorization response names another server".into(),
                )),
            };
        }
        match iss {
            Some(i) if i == p.issuer => Ok(()),
            Some(_) => Err(FedError::Refused(
                "the authorization response names another issuer".into(),
            )),
            None if self
                .discovery(p)
                .await?
                .authorization_response_iss_parameter_supported =>
            {
                Err(FedError::Refused(
                    "the authorization response lacks iss".into(),
                ))
            }
            None => Ok(()),
        }
    }

    /// Exchange the code, check what comes back, and say who this is.
    pub async fn finish(
        &self,
        p: &IdentityProvider,
        code: &str,
        nonce: &str,
        verifier: &str,
    ) -> Result<VerifiedIdentity, FedError> {
        let (token_url, userinfo) = match p.kind {
            ProviderKind::Oidc => {
                let d = self.discovery(p).await?;
                let ui = if p.userinfo_url.is_empty() {
                    d.userinfo_endpoint.clone()
                } else {
                    Some(p.userinfo_url.clone())
                };
                (d.token_endpoint.clone(), ui)
            }
            ProviderKind::OAuth2 => (p.token_url.clone(), Some(p.userinfo_url.clone())),
        };
        let tokens = self.exchange(p, &token_url, code, verifier).await?;
        let access = tokens
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| FedError::Provider("token response without access_token".into()))?
            .to_string();
        let mut claims = match p.kind {
            ProviderKind::Oidc => {
                let id_token = tokens
                    .get("id_token")
                    .and_then(Value::as_str)
                    .ok_or_else(|| FedError::Provider("token response without id_token".into()))?;
                self.verify_id_token(p, id_token, Some(nonce)).await?
            }
            ProviderKind::OAuth2 => Map::new(),
        };
        // The claims the id_token lacks come from userinfo (oauth2: all).
        let need_userinfo = p.kind == ProviderKind::OAuth2
            || !claims.contains_key(&p.email_claim)
            || p.roles_claim
                .as_ref()
                .is_some_and(|r| !claims.contains_key(r));
        if let (true, Some(ui)) = (need_userinfo, userinfo) {
            let url = checked_url("userinfo_url", &ui)?;
            let info = match self.get_json(p, &url, Some(&access), "userinfo").await? {
                Value::Object(m) => m,
                _ => return Err(FedError::Provider("userinfo: not an object".into())),
            };
            if p.kind == ProviderKind::Oidc {
                // OIDC Core 5.3.2: userinfo's sub must be the id_token's.
                if info.get("sub") != claims.get("sub") {
                    return Err(FedError::Refused("userinfo names another subject".into()));
                }
            }
            for (k, v) in info {
                claims.entry(k).or_insert(v);
            }
        }
        identity_from_claims(p, &claims)
    }

    /// The token request: client_secret_basic for oidc (RFC 6749 2.3.1:
    /// form-encoded before base64), client_secret_post for oauth2 (what
    /// GitHub documents); JSON asked for.
    async fn exchange(
        &self,
        p: &IdentityProvider,
        token_url: &str,
        code: &str,
        verifier: &str,
    ) -> Result<Map<String, Value>, FedError> {
        let url = checked_url("token_endpoint", token_url)?;
        let mut b = http::Request::post(url.as_str())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "portcullis")
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "authorization_code")
                .append_pair("code", code)
                .append_pair("redirect_uri", &p.redirect_uri)
                .append_pair("code_verifier", verifier);
            match p.kind {
                ProviderKind::Oidc => {
                    let enc = |s: &str| {
                        url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                    };
                    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                        "{}:{}",
                        enc(&p.client_id),
                        enc(&p.client_secret.0)
                    ));
                    b = b.header(http::header::AUTHORIZATION, format!("Basic {basic}"));
                }
                ProviderKind::OAuth2 => {
                    form.append_pair("client_id", &p.client_id)
                        .append_pair("client_secret", &p.client_secret.0);
                }
            }
            form.finish()
        };
        let req = b
            .body(form.into_bytes())
            .map_err(|e| FedError::Provider(format!("token request: {e}")))?;
        let body = self.send(p, req, "token request").await?;
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) if m.contains_key("error") => Err(FedError::Provider(format!(
                "token request: error {}",
                m.get("error").and_then(Value::as_str).unwrap_or("?")
            ))),
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(FedError::Provider(
                "token response: not a JSON object".into(),
            )),
        }
    }

    /// The provider's keys, cached; `refresh` reads them again (an unknown
    /// `kid`), at most once a minute.
    async fn jwks(&self, p: &IdentityProvider, refresh: bool) -> Result<Arc<Vec<Value>>, FedError> {
        let now = self.clock.now();
        if let Some((keys, at)) = self.with_cache(p, |c| c.jwks.clone()) {
            let fresh = now - at < CACHE_SECS;
            if fresh && (!refresh || now - at < JWKS_REFETCH_SECS) {
                return Ok(keys);
            }
        }
        let d = self.discovery(p).await?;
        let url = checked_url("jwks_uri", &d.jwks_uri)?;
        let v = self.get_json(p, &url, None, "jwks").await?;
        let keys = v
            .get("keys")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| FedError::Provider("jwks: no keys".into()))?;
        let keys = Arc::new(keys);
        self.with_cache(p, |c| c.jwks = Some((keys.clone(), now)));
        Ok(keys)
    }

    /// Check a JWT signed by the provider (an `id_token`, a
    /// `logout_token`): a key of its JWKS, an asymmetric algorithm, `iss`
    /// exactly the issuer, `aud` holding the client id (`azp` equal to it
    /// when present or when there are several audiences), `exp`, `iat` not
    /// absurd, and, when `nonce` is given, the nonce. Returns the claims.
    pub async fn verify_id_token(
        &self,
        p: &IdentityProvider,
        token: &str,
        nonce: Option<&str>,
    ) -> Result<Map<String, Value>, FedError> {
        let claims = self.verify_jwt(p, token, true).await?;
        if let Some(n) = nonce {
            match claims.get("nonce").and_then(Value::as_str) {
                Some(got) if same_secret(got, n) => {}
                _ => return Err(FedError::Refused("nonce does not match".into())),
            }
        }
        Ok(claims)
    }

    /// The signature and the registered claims of a provider's JWT
    /// (`expiring`: `exp` required and checked).
    pub async fn verify_jwt(
        &self,
        p: &IdentityProvider,
        token: &str,
        expiring: bool,
    ) -> Result<Map<String, Value>, FedError> {
        if p.kind != ProviderKind::Oidc {
            return Err(FedError::Refused("not an oidc provider".into()));
        }
        let refused = |why: &str| FedError::Refused(why.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(|_| refused("not a JWT"))?;
        let alg = header.alg;
        if !matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        ) {
            return Err(refused("algorithm not accepted"));
        }
        let mut keys = self.jwks(p, false).await?;
        let mut candidates = matching_keys(&keys, header.kid.as_deref(), alg);
        if candidates.is_empty() {
            keys = self.jwks(p, true).await?;
            candidates = matching_keys(&keys, header.kid.as_deref(), alg);
        }
        if candidates.is_empty() {
            return Err(refused("no key of the provider's JWKS matches"));
        }
        let mut v = Validation::new(alg);
        v.algorithms = vec![alg];
        v.validate_exp = false;
        v.validate_nbf = false;
        v.leeway = 0;
        v.set_issuer(&[p.issuer.as_str()]);
        v.set_audience(&[p.client_id.as_str()]);
        let mut required = vec!["iss", "aud", "iat"];
        if expiring {
            required.push("exp");
        }
        v.required_spec_claims = required
            .into_iter()
            .map(String::from)
            .collect::<HashSet<_>>();
        let mut claims = None;
        for key in candidates {
            if let Ok(d) = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v) {
                claims = Some(d.claims);
                break;
            }
        }
        let claims = claims.ok_or_else(|| refused("signature, issuer or audience check failed"))?;
        let now = self.clock.now();
        let num = |k: &str| claims.get(k).and_then(Value::as_i64);
        if expiring {
            match num("exp") {
                Some(exp) if exp + LEEWAY_SECS > now => {}
                _ => return Err(refused("expired")),
            }
        }
        match num("iat") {
            Some(iat) if iat <= now + LEEWAY_SECS && iat > now - MAX_AGE_SECS => {}
            _ => return Err(refused("iat out of range")),
        }
        if let Some(nbf) = num("nbf") {
            if nbf > now + LEEWAY_SECS {
                return Err(refused("not yet valid"));
            }
        }
        let several = matches!(claims.get("aud"), Some(Value::Array(a)) if a.len() > 1);
        match claims.get("azp").and_then(Value::as_str) {
            Some(azp) if azp != p.client_id => return Err(refused("azp is another client")),
            None if several => return Err(refused("several audiences and no azp")),
            _ => {}
        }
        Ok(claims)
    }
}

/// The usable keys of a JWKS for `kid` and `alg` (no `kid`: every key of
/// the right family). Symmetric keys are never used.
fn matching_keys(keys: &[Value], kid: Option<&str>, alg: Algorithm) -> Vec<DecodingKey> {
    let mut out = Vec::new();
    for k in keys {
        let Ok(jwk) = serde_json::from_value::<jsonwebtoken::jwk::Jwk>(k.clone()) else {
            continue;
        };
        if matches!(
            jwk.algorithm,
            jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
        ) {
            continue;
        }
        if let (Some(want), Some(have)) = (kid, jwk.common.key_id.as_deref()) {
            if want != have {
                continue;
            }
        } else if kid.is_some() {
            continue;
        }
        if let Some(u) = &jwk.common.public_key_use {
            if *u != jsonwebtoken::jwk::PublicKeyUse::Signature {
                continue;
            }
        }
        if let Some(ka) = jwk.common.key_algorithm {
            if format!("{ka:?}") != format!("{alg:?}") {
                continue;
            }
        }
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            out.push(key);
        }
    }
    out
}

/// A claim as text: a string, or a number's decimal form (GitHub's `id`).
fn text_claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The identity a provider's (checked) claims describe.
pub fn identity_from_claims(
    p: &IdentityProvider,
    claims: &Map<String, Value>,
) -> Result<VerifiedIdentity, FedError> {
    let subject = text_claim(claims, &p.subject_claim)
        .filter(|s| s.len() <= 255 && !s.chars().any(char::is_control))
        .ok_or_else(|| FedError::Provider(format!("no usable '{}' claim", p.subject_claim)))?;
    let email = match claims.get(&p.email_claim) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let email_verified = email.is_some()
        && p.email_verified_claim.as_ref().is_some_and(|c| {
            matches!(claims.get(c), Some(Value::Bool(true)))
                || matches!(claims.get(c), Some(Value::String(s)) if s == "true")
        });
    let mut roles = Vec::new();
    if let Some(rc) = &p.roles_claim {
        let values: Vec<&str> = match claims.get(rc) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        for v in values {
            if let Some(local) = p.role_map.get(v) {
                if !roles.contains(local) {
                    roles.push(local.clone());
                }
            }
        }
    }
    let amr = match claims.get("amr") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        _ => vec![],
    };
    Ok(VerifiedIdentity {
        provider: p.id.clone(),
        subject,
        email,
        email_verified,
        roles,
        amr,
        sid: text_claim(claims, "sid"),
    })
}

/// Is `url` at `issuer` (the issuer itself or a path below it)?
fn issuer_serves(issuer: &str, url: &str) -> bool {
    let base = issuer.trim_end_matches('/');
    !base.is_empty()
        && url
            .strip_prefix(base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests;
