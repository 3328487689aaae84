//! The provider's signing: ID tokens, client access tokens and logout
//! tokens are signed with the provider key set
//! ([`crate::tokens::provider_keys`], `oidc_provider.signing_alg`), whose
//! public keys are in the JWKS.

use jsonwebtoken::{Algorithm, Validation};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::accounts::AuthService;

impl AuthService {
    /// Sign `claims` with the provider key that signs now, header `typ`.
    pub(crate) fn provider_sign<T: Serialize>(
        &self,
        typ: &str,
        claims: &T,
    ) -> Result<String, String> {
        let v = serde_json::to_value(claims).map_err(|e| e.to_string())?;
        self.tokens
            .provider
            .sign(&v, typ)
            .map_err(|e| e.to_string())
    }

    /// Verify a token the provider signed: its `typ`, the signature by a
    /// live key, and (with `check_exp`) `exp` against the clock, with the
    /// token leeway. Nothing else is checked here.
    pub(crate) fn provider_verify<T: DeserializeOwned>(
        &self,
        typ: &str,
        token: &str,
        check_exp: bool,
    ) -> Option<T> {
        if token.len() > 8192 {
            return None;
        }
        let header = jsonwebtoken::decode_header(token).ok()?;
        if !header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(typ))
        {
            return None;
        }
        // The algorithm is the key set's (set by the verify).
        let mut v = Validation::new(Algorithm::RS256);
        v.validate_aud = false;
        v.validate_exp = false;
        v.validate_nbf = false;
        v.required_spec_claims.clear();
        let claims = self.tokens.provider.verify(token, &v).ok()?;
        if check_exp {
            let exp = claims.get("exp")?.as_i64()?;
            if exp + self.cfg().tokens.leeway_secs as i64 <= self.clock.now() {
                return None;
            }
        }
        serde_json::from_value(claims).ok()
    }
}
