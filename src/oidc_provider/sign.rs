//! The provider's signing: ID tokens, client access tokens and logout
//! tokens. One place signs and verifies, so the key set behind it can
//! change (helper "keys" brings the RS256/ES256/EdDSA set; until it is
//! merged, an Ed25519 key set of the data dir's `oidc-provider/` signs,
//! whatever `signing_alg` says).

use std::sync::Arc;

use jsonwebtoken::{Header, Validation};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::{Config, TokenAlgorithm};
use crate::tokens::keys::{self, KeySet};

/// The provider's key set, loaded on first use.
#[derive(Default)]
pub struct ProviderKeys {
    set: Mutex<Option<Arc<KeySet>>>,
}

impl ProviderKeys {
    fn load(&self, cfg: &Config, now: i64) -> Result<Arc<KeySet>, String> {
        let mut slot = self.set.lock();
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let mut tcfg = cfg.tokens.clone();
        tcfg.algorithm = TokenAlgorithm::EdDsa;
        tcfg.jwt_secret = None;
        let dir = cfg.server.data_dir.join("oidc-provider");
        let set = Arc::new(keys::load(&tcfg, &dir, now)?);
        *slot = Some(set.clone());
        Ok(set)
    }

    /// The algorithm tokens are signed with now.
    pub fn alg_name(&self) -> &'static str {
        "EdDSA"
    }

    /// Sign `claims` with header `typ`.
    pub fn sign<T: Serialize>(
        &self,
        cfg: &Config,
        now: i64,
        typ: &str,
        claims: &T,
    ) -> Result<String, String> {
        let set = self.load(cfg, now)?;
        let key = set.signing(now);
        let mut header = Header::new(set.algorithm);
        header.typ = Some(typ.into());
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, key.encoding()).map_err(|e| e.to_string())
    }

    /// Verify a token this provider signed: `typ`, signature by a live key,
    /// `exp` (with the token leeway); nothing else is checked here.
    pub fn verify<T: DeserializeOwned>(
        &self,
        cfg: &Config,
        now: i64,
        typ: &str,
        token: &str,
        check_exp: bool,
    ) -> Option<T> {
        if token.len() > 8192 {
            return None;
        }
        let set = self.load(cfg, now).ok()?;
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != set.algorithm || !header.typ.as_deref().is_some_and(|t| t.eq_ignore_ascii_case(typ)) {
            return None;
        }
        let key = set.verifying(header.kid.as_deref(), now)?;
        let mut v = Validation::new(set.algorithm);
        v.validate_aud = false;
        v.validate_exp = false;
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.decoding, &v).ok()?;
        if check_exp {
            let exp = data.claims.get("exp")?.as_i64()?;
            if exp + cfg.tokens.leeway_secs as i64 <= now {
                return None;
            }
        }
        serde_json::from_value(data.claims).ok()
    }

    /// The public keys for the JWKS.
    pub fn jwks_keys(&self, cfg: &Config, now: i64) -> Vec<serde_json::Value> {
        match self.load(cfg, now) {
            Ok(set) => set.jwks(now)["keys"].as_array().cloned().unwrap_or_default(),
            Err(e) => {
                tracing::error!(error = %e, "the OpenID Provider's keys cannot be loaded");
                vec![]
            }
        }
    }
}
