//! Access tokens (RFC 9068 shaped JWTs) and opaque random tokens.
//!
//! Every token names its signing key in `kid` ([`super::keys`]); the
//! claims are [`super::claims::AccessClaims`].
//! Verification allows exactly the configured algorithm, requires
//! `typ: at+jwt` and a `kid` naming a live key, and checks `iss`, `aud`, `exp`, `nbf` and `iat` against the
//! injected clock with `leeway_secs`. Refresh, reset and verification tokens
//! are opaque random strings, so they can never pass as bearer tokens.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Header, Validation};

use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use super::claims::AccessClaims;
use super::keys::{random_bytes, KeySet};
use super::provider_keys::ProviderKeys;
pub use super::rejection::TokenRejection;
use super::verified::{Verified, VerifiedTokens};
use crate::clock::Clock;
use crate::config::TokenConfig;
use crate::entropy::{Entropy, OsEntropy};

pub const ACCESS_TYP: &str = "at+jwt";

pub struct TokenService {
    /// The signing and verification keys, swapped whole by a reload.
    keys: ArcSwap<KeySet>,
    /// The token settings in force, swapped whole by a reload.
    settings: ArcSwap<Settings>,
    clock: Arc<dyn Clock>,
    /// Where `jti`s come from (fixed in tests).
    entropy: Arc<dyn Entropy>,
    /// Tokens that passed: a repeat check skips the signature.
    verified: VerifiedTokens,
    /// The OpenID Provider's signing keys (CONTRACT 8.2, 8.3), when in use.
    pub provider: ProviderKeys,
}

/// The `[tokens]` settings and the validation built from them.
struct Settings {
    cfg: TokenConfig,
    validation: Validation,
}

impl Settings {
    fn new(algorithm: jsonwebtoken::Algorithm, cfg: TokenConfig) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        // Time claims are checked against the injected clock below.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_issuer(&[cfg.issuer.as_str()]);
        validation.set_audience(&[cfg.audience.as_str()]);
        validation.required_spec_claims =
            HashSet::from(["exp", "iat", "iss", "aud", "sub"].map(String::from));
        Self { cfg, validation }
    }
}

impl TokenService {
    pub fn new(keys: KeySet, cfg: TokenConfig, clock: Arc<dyn Clock>) -> Self {
        let settings = ArcSwap::from_pointee(Settings::new(keys.algorithm, cfg));
        Self {
            keys: ArcSwap::from_pointee(keys),
            settings,
            provider: ProviderKeys::new(clock.clone()),
            clock,
            entropy: Arc::new(OsEntropy),
            verified: VerifiedTokens::default(),
        }
    }

    /// Draw `jti`s from `entropy` (tests fix it).
    pub fn set_entropy(&mut self, entropy: Arc<dyn Entropy>) {
        self.entropy = entropy;
    }

    /// Put reloaded `[tokens]` settings in force (issuer, audience,
    /// lifetimes, leeway); the algorithm is fixed at start.
    pub fn reconfigure(&self, cfg: TokenConfig) {
        let algorithm = self.keys.load().algorithm;
        self.settings.store(Arc::new(Settings::new(algorithm, cfg)));
        self.verified.invalidate();
    }

    /// Put a reloaded key set in force.
    pub fn set_keys(&self, keys: KeySet) {
        self.keys.store(Arc::new(keys));
        self.verified.invalidate();
    }

    /// The signing key's id now, and how many keys verify.
    pub fn key_summary(&self) -> (Option<String>, usize) {
        let keys = self.keys.load();
        let now = self.clock.now();
        (Some(keys.signing(now).kid.clone()), keys.live_count(now))
    }

    /// Every live public key (`{"keys":[]}` under HS256), and the
    /// provider's keys when they are in use.
    pub fn jwks(&self) -> serde_json::Value {
        let mut jwks = self.keys.load().jwks(self.clock.now());
        let provider = self.provider.jwks_keys();
        if !provider.is_empty() {
            if let Some(keys) = jwks["keys"].as_array_mut() {
                keys.extend(provider);
            }
        }
        jwks
    }

    pub fn access_ttl(&self) -> u64 {
        self.settings.load().cfg.access_ttl_secs
    }

    /// Sign an access token for a user and session (without `auth_time`).
    pub fn issue(
        &self,
        user_id: &Uuid,
        email: &str,
        roles: &[String],
        sid: &Uuid,
        amr: &[String],
    ) -> Result<(String, AccessClaims), jsonwebtoken::errors::Error> {
        self.issue_for_session(user_id, email, roles, sid, amr, None)
    }

    /// Sign an access token for a user and session that authenticated at
    /// `auth_time`.
    pub fn issue_for_session(
        &self,
        user_id: &Uuid,
        email: &str,
        roles: &[String],
        sid: &Uuid,
        amr: &[String],
        auth_time: Option<i64>,
    ) -> Result<(String, AccessClaims), jsonwebtoken::errors::Error> {
        let now = self.clock.now();
        let settings = self.settings.load();
        let cfg = &settings.cfg;
        let claims = AccessClaims {
            iss: cfg.issuer.clone(),
            aud: cfg.audience.clone(),
            sub: user_id.to_string(),
            exp: now + cfg.access_ttl_secs as i64,
            iat: now,
            nbf: None,
            jti: self.entropy.uuid().to_string(),
            sid: sid.to_string(),
            email: email.to_string(),
            roles: roles.to_vec(),
            amr: amr.to_vec(),
            auth_time,
        };
        let keys = self.keys.load();
        let key = keys.signing(now);
        let mut header = Header::new(keys.algorithm);
        header.typ = Some(ACCESS_TYP.into());
        header.kid = Some(key.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, key.encoding())?;
        Ok((token, claims))
    }

    /// Verify signature, type and claims. Revocation is checked separately.
    pub fn verify(&self, token: &str) -> Result<Arc<AccessClaims>, TokenRejection> {
        if token.is_empty() {
            return Err(TokenRejection::Missing);
        }
        if token.len() > 8192 {
            return Err(TokenRejection::Invalid);
        }
        // Read before the keys and settings: an entry made under ones that
        // have since been replaced is never found.
        let generation = self.verified.generation();
        let now = self.clock.now();
        if let Some(v) = self.verified.get(token, generation) {
            if v.key_verifies_until.is_some_and(|t| now >= t) {
                return Err(TokenRejection::Invalid);
            }
            let leeway = self.settings.load().cfg.leeway_secs as i64;
            check_times(&v.claims, now, leeway)?;
            return Ok(v.claims);
        }
        if !token.bytes().all(is_token_char) {
            return Err(TokenRejection::Invalid);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRejection::Invalid)?;
        if !header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case(ACCESS_TYP) || t.eq_ignore_ascii_case("application/at+jwt")
        }) {
            return Err(TokenRejection::Invalid);
        }
        let keys = self.keys.load();
        if header.alg != keys.algorithm {
            return Err(TokenRejection::Invalid);
        }
        // A token never chooses its own key (RFC 8725 §3.10): our tokens
        // carry no key or key URL, so one that does is forged. Its `kid`
        // must name one of our live keys; without one it is refused, unless
        // the one key is PORTCULLIS_JWT_SECRET (see `keys`).
        if header.jwk.is_some()
            || header.jku.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
            || header.x5t.is_some()
            || header.x5t_s256.is_some()
        {
            return Err(TokenRejection::Invalid);
        }
        let key = keys
            .verifying(header.kid.as_deref(), now)
            .ok_or(TokenRejection::Invalid)?;
        let settings = self.settings.load();
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &settings.validation)
            .map_err(|_| TokenRejection::Invalid)?;
        let c = Arc::new(data.claims);
        if Uuid::parse_str(&c.sub).is_err() || Uuid::parse_str(&c.sid).is_err() {
            return Err(TokenRejection::Invalid);
        }
        check_times(&c, now, settings.cfg.leeway_secs as i64)?;
        self.verified.insert(
            token,
            Verified {
                claims: c.clone(),
                key_verifies_until: key.verifies_until,
                generation,
            },
        );
        Ok(c)
    }
}

/// The time claims against `now`, with `leeway` seconds.
fn check_times(c: &AccessClaims, now: i64, leeway: i64) -> Result<(), TokenRejection> {
    if c.iat > now + leeway {
        return Err(TokenRejection::Invalid);
    }
    if c.nbf.is_some_and(|nbf| nbf > now + leeway) {
        return Err(TokenRejection::Invalid);
    }
    if c.exp <= now - leeway {
        return Err(TokenRejection::Expired);
    }
    Ok(())
}

/// The characters a bearer token may hold: base64url (with `~`, and the
/// standard alphabet's `+`, `/` and `=`), per RFC 6750's `b64token`.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+' | b'/' | b'=')
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::entropy::FixedEntropy;

    fn service(dir: &std::path::Path, seed: u64) -> TokenService {
        let cfg = crate::config::Config::from_toml("", &|_| None, std::path::Path::new("."))
            .unwrap()
            .tokens;
        let keys = super::super::keys::load(&cfg, dir, 1_700_000_000).unwrap();
        let clock = Arc::new(ManualClock::new(1_700_000_000));
        let mut s = TokenService::new(keys, cfg, clock);
        s.set_entropy(Arc::new(FixedEntropy::new(seed)));
        s
    }

    #[test]
    fn jti_comes_from_the_injected_entropy() {
        let dir = tempfile::tempdir().unwrap();
        let (user, sid) = (Uuid::nil(), Uuid::nil());
        let jti = |s: &TokenService| s.issue(&user, "a@b.test", &[], &sid, &[]).unwrap().1.jti;
        let (a, b, c) = (
            service(dir.path(), 7),
            service(dir.path(), 7),
            service(dir.path(), 8),
        );
        let first = jti(&a);
        assert_eq!(first, jti(&b), "the same seed gives the same jti");
        assert_ne!(first, jti(&c), "another seed another jti");
        assert_ne!(first, jti(&a), "and one generator never repeats itself");
    }
}
