//! Access tokens (RFC 9068 shaped JWTs) and opaque random tokens.
//!
//! Verification allows exactly the configured algorithm, requires
//! `typ: at+jwt`, and checks `iss`, `aud`, `exp`, `nbf` and `iat` against the
//! injected clock with `leeway_secs`. Refresh, reset and verification tokens
//! are opaque random strings, so they can never pass as bearer tokens.

use std::collections::HashSet;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::keys::{random_bytes, KeyMaterial};
use crate::clock::Clock;
use crate::config::TokenConfig;

pub const ACCESS_TYP: &str = "at+jwt";

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
}

/// Why a token was refused; also the `result` label of
/// `portcullis_token_checks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    Missing,
    Invalid,
    Expired,
    Revoked,
}

impl TokenRejection {
    pub fn label(self) -> &'static str {
        match self {
            TokenRejection::Missing => "missing",
            TokenRejection::Invalid => "invalid",
            TokenRejection::Expired => "expired",
            TokenRejection::Revoked => "revoked",
        }
    }
}

pub struct TokenService {
    keys: KeyMaterial,
    validation: Validation,
    cfg: TokenConfig,
    clock: Arc<dyn Clock>,
}

impl TokenService {
    pub fn new(keys: KeyMaterial, cfg: TokenConfig, clock: Arc<dyn Clock>) -> Self {
        let mut validation = Validation::new(keys.algorithm);
        validation.algorithms = vec![keys.algorithm];
        // Time claims are checked against the injected clock below.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_issuer(&[cfg.issuer.as_str()]);
        validation.set_audience(&[cfg.audience.as_str()]);
        validation.required_spec_claims =
            HashSet::from(["exp", "iat", "iss", "aud", "sub"].map(String::from));
        Self {
            keys,
            validation,
            cfg,
            clock,
        }
    }

    pub fn jwks(&self) -> &serde_json::Value {
        &self.keys.jwks
    }

    pub fn access_ttl(&self) -> u64 {
        self.cfg.access_ttl_secs
    }

    /// Sign an access token for a user and session.
    pub fn issue(
        &self,
        user_id: &Uuid,
        email: &str,
        roles: &[String],
        sid: &Uuid,
    ) -> Result<(String, AccessClaims), jsonwebtoken::errors::Error> {
        let now = self.clock.now();
        let claims = AccessClaims {
            iss: self.cfg.issuer.clone(),
            aud: self.cfg.audience.clone(),
            sub: user_id.to_string(),
            exp: now + self.cfg.access_ttl_secs as i64,
            iat: now,
            nbf: None,
            jti: Uuid::new_v4().to_string(),
            sid: sid.to_string(),
            email: email.to_string(),
            roles: roles.to_vec(),
        };
        let mut header = Header::new(self.keys.algorithm);
        header.typ = Some(ACCESS_TYP.into());
        header.kid = self.keys.kid.clone();
        let token = jsonwebtoken::encode(&header, &claims, &self.keys.encoding)?;
        Ok((token, claims))
    }

    /// Verify signature, type and claims. Revocation is checked separately.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenRejection> {
        if token.is_empty() {
            return Err(TokenRejection::Missing);
        }
        if token.len() > 8192 {
            return Err(TokenRejection::Invalid);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRejection::Invalid)?;
        if !header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case(ACCESS_TYP) || t.eq_ignore_ascii_case("application/at+jwt")
        }) {
            return Err(TokenRejection::Invalid);
        }
        if header.alg != self.keys.algorithm {
            return Err(TokenRejection::Invalid);
        }
        // A token never chooses its own key (RFC 8725 §3.10): our tokens
        // carry no key or key URL, so one that does is forged. With a `kid`
        // (EdDSA) it must name our key exactly.
        if header.jwk.is_some()
            || header.jku.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
            || header.x5t.is_some()
            || header.x5t_s256.is_some()
        {
            return Err(TokenRejection::Invalid);
        }
        if let Some(kid) = &self.keys.kid {
            if header.kid.as_deref() != Some(kid.as_str()) {
                return Err(TokenRejection::Invalid);
            }
        }
        let data =
            jsonwebtoken::decode::<AccessClaims>(token, &self.keys.decoding, &self.validation)
                .map_err(|_| TokenRejection::Invalid)?;
        let c = data.claims;
        let now = self.clock.now();
        let leeway = self.cfg.leeway_secs as i64;
        if c.iat > now + leeway {
            return Err(TokenRejection::Invalid);
        }
        if c.nbf.is_some_and(|nbf| nbf > now + leeway) {
            return Err(TokenRejection::Invalid);
        }
        if c.exp <= now - leeway {
            return Err(TokenRejection::Expired);
        }
        if Uuid::parse_str(&c.sub).is_err() || Uuid::parse_str(&c.sid).is_err() {
            return Err(TokenRejection::Invalid);
        }
        Ok(c)
    }
}

/// A fresh opaque token of `bytes` random bytes, URL-safe.
pub fn opaque_token(bytes: usize) -> String {
    URL_SAFE_NO_PAD.encode(random_bytes(bytes))
}

/// SHA-256 hex of an opaque token: what is stored instead of the token.
pub fn token_hash(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    let mut s = String::with_capacity(64);
    for b in d {
        s.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
        s.push(char::from(b"0123456789abcdef"[(b & 15) as usize]));
    }
    s
}
