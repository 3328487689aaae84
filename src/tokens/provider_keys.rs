//! The OpenID Provider's signing keys (CONTRACT 8.2 "Keys"): ID tokens,
//! client access tokens and the identity assertion of 8.3 are signed with
//! them, and relying parties and upstreams verify them with the JWKS.
//!
//! A second key set beside the access-token set of [`super::keys`], in the
//! same file format and under the same lock, one file per algorithm in
//! `data_dir` (mode 0600): `oidc-keys-rs256.json` (RSA 2048),
//! `oidc-keys-es256.json` (P-256) or `oidc-keys-ed25519.json` (Ed25519),
//! each key a PKCS#8 PEM with its `kid`. It exists only while it is in use
//! ([`crate::config::Config::provider_keys_in_use`]): the provider is
//! enabled or a route sends the assertion; then its public keys are in
//! `/.well-known/jwks.json` beside the access-token keys (under HS256 too).
//!
//! Rotation follows the access-token set's rules: `portcullis keys rotate`
//! adds a key that signs from `now + activate_in`; every older key verifies
//! until every token it may have signed has expired ([`longest_lifetime`]
//! plus `tokens.leeway_secs` after the new key's start), then leaves the
//! JWKS and is dropped from the file by the next rotation. A running
//! gateway takes the set up on reload.
//!
//! Pure Rust (RustCrypto: `rsa`, `p256`, `ed25519-dalek`, the versions
//! jsonwebtoken's `rust_crypto` backend uses); the parsed signing keys are
//! held, so a signature parses nothing. RSA signs with blinding.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

use super::keys::{lock_keys, short_hash, write_key_file, KeyEntry, KeyFile, Rotation};
use crate::clock::Clock;
use crate::config::{Config, ProviderAlgorithm};

/// The longest an identity assertion lives (CONTRACT 8.3: `exp` at most
/// 60 s after `iat`).
pub const ASSERTION_TTL_SECS: u64 = 60;

/// The longest lifetime of any token the provider keys sign: the
/// assertion's, and the ID tokens' and client access tokens'. A key that
/// stops signing verifies this long (plus leeway) after its successor's
/// start.
pub fn longest_lifetime(cfg: &Config) -> u64 {
    // ID tokens and client access tokens (CONTRACT 8.2) live at most as
    // long as the gateway's access tokens unless `[oidc_provider]` says
    // otherwise; the provider's own lifetimes join this maximum where they
    // are configured.
    ASSERTION_TTL_SECS
        .max(cfg.tokens.access_ttl_secs)
        .max(cfg.oidc_provider.access_ttl_secs)
}

/// The key-set file of `alg` in `data_dir`.
pub fn key_file_path(alg: ProviderAlgorithm, data_dir: &Path) -> PathBuf {
    data_dir.join(match alg {
        ProviderAlgorithm::Rs256 => "oidc-keys-rs256.json",
        ProviderAlgorithm::Es256 => "oidc-keys-es256.json",
        ProviderAlgorithm::EdDsa => "oidc-keys-ed25519.json",
    })
}

fn jwt_algorithm(alg: ProviderAlgorithm) -> Algorithm {
    match alg {
        ProviderAlgorithm::Rs256 => Algorithm::RS256,
        ProviderAlgorithm::Es256 => Algorithm::ES256,
        ProviderAlgorithm::EdDsa => Algorithm::EdDSA,
    }
}

/// A parsed private key.
enum Signer {
    Rsa(Box<rsa::pkcs1v15::SigningKey<sha2::Sha256>>),
    Es(p256::ecdsa::SigningKey),
    Ed(ed25519_dalek::SigningKey),
}

impl Signer {
    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match self {
            Signer::Rsa(k) => {
                use rsa::signature::{RandomizedSigner, SignatureEncoding};
                k.sign_with_rng(&mut rand::rngs::OsRng, msg).to_vec()
            }
            Signer::Es(k) => {
                use p256::ecdsa::signature::Signer as _;
                let sig: p256::ecdsa::Signature = k.sign(msg);
                sig.to_bytes().to_vec()
            }
            Signer::Ed(k) => {
                use ed25519_dalek::Signer as _;
                k.sign(msg).to_bytes().to_vec()
            }
        }
    }
}

/// One key of a [`ProviderKeySet`].
pub struct ProviderKey {
    pub kid: String,
    signer: Signer,
    pub decoding: DecodingKey,
    /// Signs from this time (the newest such key signs).
    pub signs_from: i64,
    /// Verifies until this time; `None` while it is the newest key.
    pub verifies_until: Option<i64>,
    /// Its public JWK.
    pub jwk: Value,
}

impl ProviderKey {
    fn live(&self, now: i64) -> bool {
        self.verifies_until.is_none_or(|t| now < t)
    }
}

/// The provider keys in force: one signs, every live one verifies.
pub struct ProviderKeySet {
    pub algorithm: ProviderAlgorithm,
    /// Oldest first (by `signs_from`).
    pub keys: Vec<ProviderKey>,
}

impl ProviderKeySet {
    /// The key that signs at `now`: the newest whose time has come (or the
    /// oldest, if none has yet).
    pub fn signing(&self, now: i64) -> &ProviderKey {
        self.keys
            .iter()
            .rev()
            .find(|k| k.signs_from <= now && k.live(now))
            .unwrap_or(&self.keys[0])
    }

    /// The live key named `kid`.
    pub fn verifying(&self, kid: &str, now: i64) -> Option<&ProviderKey> {
        self.keys.iter().find(|k| k.kid == kid && k.live(now))
    }

    /// Every live public key, as JWKs.
    pub fn jwks_keys(&self, now: i64) -> Vec<Value> {
        self.keys
            .iter()
            .filter(|k| k.live(now))
            .map(|k| k.jwk.clone())
            .collect()
    }

    /// A compact JWS of `claims` with header `alg`, `typ`, `kid`, signed by
    /// the key that signs at `now`. Returns the token and the `kid`.
    pub fn sign(&self, claims: &Value, typ: &str, now: i64) -> (String, &str) {
        let key = self.signing(now);
        let header = json!({ "alg": self.algorithm.name(), "typ": typ, "kid": key.kid });
        let mut out = String::with_capacity(512);
        URL_SAFE_NO_PAD.encode_string(header.to_string(), &mut out);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut out);
        let sig = key.signer.sign(out.as_bytes());
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(sig, &mut out);
        (out, &key.kid)
    }

    /// Verify a token signed by one of these keys: its `alg` must be the
    /// set's, its `kid` a live key's, no key or key URL in its header;
    /// then the signature and whatever `validation` asks (its algorithms
    /// are set here). Returns the claims.
    pub fn verify(
        &self,
        token: &str,
        validation: &Validation,
        now: i64,
    ) -> Result<Value, ProviderKeyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| ProviderKeyError::Invalid)?;
        let alg = jwt_algorithm(self.algorithm);
        if header.alg != alg
            || header.jwk.is_some()
            || header.jku.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
        {
            return Err(ProviderKeyError::Invalid);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.verifying(kid, now))
            .ok_or(ProviderKeyError::Invalid)?;
        let mut validation = validation.clone();
        validation.algorithms = vec![alg];
        jsonwebtoken::decode::<Value>(token, &key.decoding, &validation)
            .map(|d| d.claims)
            .map_err(|_| ProviderKeyError::Invalid)
    }
}

/// Why a provider-key operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderKeyError {
    /// Neither the provider nor any route's assertion is configured.
    #[error("the provider signing keys are not in use")]
    NotInUse,
    #[error("invalid token")]
    Invalid,
}

/// The provider key set of a gateway, swapped whole by a reload; empty
/// while not in use. Held by [`super::jwt::TokenService`] (`provider`).
pub struct ProviderKeys {
    set: ArcSwapOption<ProviderKeySet>,
    clock: Arc<dyn Clock>,
}

impl ProviderKeys {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            set: ArcSwapOption::empty(),
            clock,
        }
    }

    /// Put a loaded set in force (`None`: not in use).
    pub fn set(&self, set: Option<ProviderKeySet>) {
        self.set.store(set.map(Arc::new));
    }

    /// The set in force.
    pub fn current(&self) -> Option<Arc<ProviderKeySet>> {
        self.set.load_full()
    }

    pub fn in_use(&self) -> bool {
        self.set.load().is_some()
    }

    /// Sign `claims` (a JSON object) as a JWT with header `typ`, `kid` and
    /// the configured algorithm, with the key that signs now.
    pub fn sign(&self, claims: &Value, typ: &str) -> Result<String, ProviderKeyError> {
        let set = self.set.load();
        let set = set.as_ref().ok_or(ProviderKeyError::NotInUse)?;
        Ok(set.sign(claims, typ, self.clock.now()).0)
    }

    /// Verify a token these keys signed (see [`ProviderKeySet::verify`]).
    pub fn verify(&self, token: &str, validation: &Validation) -> Result<Value, ProviderKeyError> {
        let set = self.set.load();
        let set = set.as_ref().ok_or(ProviderKeyError::NotInUse)?;
        set.verify(token, validation, self.clock.now())
    }

    /// The algorithm in force, as `alg` names it.
    pub fn algorithm(&self) -> Option<ProviderAlgorithm> {
        self.set.load().as_ref().map(|s| s.algorithm)
    }

    /// Every live public key as JWKs (none while not in use).
    pub fn jwks_keys(&self) -> Vec<Value> {
        match self.set.load().as_ref() {
            Some(s) => s.jwks_keys(self.clock.now()),
            None => Vec::new(),
        }
    }

    /// The JWKS document of the provider keys alone.
    pub fn jwks(&self) -> Value {
        json!({ "keys": self.jwks_keys() })
    }
}

fn new_entry(alg: ProviderAlgorithm, now: i64, signs_from: i64) -> Result<KeyEntry, String> {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    let lf = ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF;
    let (pem, public) = match alg {
        ProviderAlgorithm::Rs256 => {
            use rsa::pkcs8::EncodePrivateKey as _;
            use rsa::traits::PublicKeyParts as _;
            let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
                .map_err(|e| format!("cannot make a new RSA key: {e}"))?;
            let pem = key
                .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
                .map_err(|_| "cannot encode a new RSA key")?;
            (pem.to_string(), key.n().to_bytes_be())
        }
        ProviderAlgorithm::Es256 => {
            use p256::pkcs8::EncodePrivateKey as _;
            let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
            let pem = key
                .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
                .map_err(|_| "cannot encode a new P-256 key")?;
            let point = key.public_key().to_sec1_bytes().to_vec();
            (pem.to_string(), point)
        }
        ProviderAlgorithm::EdDsa => {
            let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
            let pem = key
                .to_pkcs8_pem(lf)
                .map_err(|_| "cannot encode a new Ed25519 key")?;
            (pem.to_string(), key.verifying_key().to_bytes().to_vec())
        }
    };
    Ok(KeyEntry {
        kid: short_hash(&[alg.name().as_bytes(), b" ", &public].concat()),
        created_at: now,
        signs_from,
        verifies_until: None,
        secret: pem,
    })
}

fn build_key(alg: ProviderAlgorithm, e: &KeyEntry, path: &Path) -> Result<ProviderKey, String> {
    let corrupt = || format!("'{}': key {} is corrupt", path.display(), e.kid);
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let (signer, decoding, jwk) = match alg {
        ProviderAlgorithm::Rs256 => {
            use rsa::pkcs8::DecodePrivateKey as _;
            use rsa::traits::PublicKeyParts as _;
            let key = rsa::RsaPrivateKey::from_pkcs8_pem(&e.secret).map_err(|_| corrupt())?;
            let (n, ex) = (b64(&key.n().to_bytes_be()), b64(&key.e().to_bytes_be()));
            let decoding = DecodingKey::from_rsa_components(&n, &ex).map_err(|_| corrupt())?;
            let jwk = json!({ "kty": "RSA", "n": n, "e": ex });
            (
                Signer::Rsa(Box::new(rsa::pkcs1v15::SigningKey::new(key))),
                decoding,
                jwk,
            )
        }
        ProviderAlgorithm::Es256 => {
            use p256::pkcs8::DecodePrivateKey as _;
            let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&e.secret).map_err(|_| corrupt())?;
            let point = key.verifying_key().to_encoded_point(false);
            let (Some(x), Some(y)) = (point.x(), point.y()) else {
                return Err(corrupt());
            };
            let (x, y) = (b64(x), b64(y));
            let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|_| corrupt())?;
            let jwk = json!({ "kty": "EC", "crv": "P-256", "x": x, "y": y });
            (Signer::Es(key), decoding, jwk)
        }
        ProviderAlgorithm::EdDsa => {
            use ed25519_dalek::pkcs8::DecodePrivateKey as _;
            let key =
                ed25519_dalek::SigningKey::from_pkcs8_pem(&e.secret).map_err(|_| corrupt())?;
            let x = b64(&key.verifying_key().to_bytes());
            let decoding = DecodingKey::from_ed_components(&x).map_err(|_| corrupt())?;
            let jwk = json!({ "kty": "OKP", "crv": "Ed25519", "x": x });
            (Signer::Ed(key), decoding, jwk)
        }
    };
    let mut jwk = jwk;
    jwk["kid"] = json!(e.kid);
    jwk["alg"] = json!(alg.name());
    jwk["use"] = json!("sig");
    Ok(ProviderKey {
        kid: e.kid.clone(),
        signer,
        decoding,
        signs_from: e.signs_from,
        verifies_until: e.verifies_until,
        jwk,
    })
}

/// Read the key-set file of `alg`, the caller holding the lock where it
/// may create it (first use).
fn read_locked(alg: ProviderAlgorithm, data_dir: &Path, now: i64) -> Result<KeyFile, String> {
    let path = key_file_path(alg, data_dir);
    match std::fs::read(&path) {
        Ok(raw) => {
            let file: KeyFile = serde_json::from_slice(&raw)
                .map_err(|e| format!("'{}' is corrupt: {e}", path.display()))?;
            if file.algorithm != alg.name() || file.keys.is_empty() {
                return Err(format!("'{}' holds no {} keys", path.display(), alg.name()));
            }
            Ok(file)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let file = KeyFile {
                algorithm: alg.name().into(),
                keys: vec![new_entry(alg, now, 0)?],
            };
            write_key_file(&path, &file)?;
            Ok(file)
        }
        Err(e) => Err(format!("cannot read '{}': {e}", path.display())),
    }
}

/// Read the key-set file of `alg`, creating it when missing.
pub fn read_or_create(
    alg: ProviderAlgorithm,
    data_dir: &Path,
    now: i64,
) -> Result<KeyFile, String> {
    if key_file_path(alg, data_dir).exists() {
        return read_locked(alg, data_dir, now);
    }
    let _lock = lock_keys(data_dir)?;
    read_locked(alg, data_dir, now)
}

/// The provider key set of `alg` from `data_dir` (created when missing).
pub fn load_set(
    alg: ProviderAlgorithm,
    data_dir: &Path,
    now: i64,
) -> Result<ProviderKeySet, String> {
    let file = read_or_create(alg, data_dir, now)?;
    let path = key_file_path(alg, data_dir);
    let mut keys = file
        .keys
        .iter()
        .map(|e| build_key(alg, e, &path))
        .collect::<Result<Vec<_>, _>>()?;
    keys.sort_by_key(|k| k.signs_from);
    Ok(ProviderKeySet {
        algorithm: alg,
        keys,
    })
}

/// The provider key set `cfg` needs: `None` while not in use.
pub fn load(cfg: &Config, now: i64) -> Result<Option<ProviderKeySet>, String> {
    if !cfg.provider_keys_in_use() {
        return Ok(None);
    }
    load_set(cfg.oidc_provider.signing_alg, &cfg.server.data_dir, now).map(Some)
}

/// Add a new provider key of `alg` that signs from `now + activate_in`;
/// every older key verifies until `lifetime_secs + leeway_secs` after
/// that, and keys past their time are dropped (the rules of
/// [`super::keys::rotate`]).
pub fn rotate_set(
    alg: ProviderAlgorithm,
    data_dir: &Path,
    now: i64,
    activate_in: u64,
    lifetime_secs: u64,
    leeway_secs: u64,
) -> Result<Rotation, String> {
    let _lock = lock_keys(data_dir)?;
    let mut file = read_locked(alg, data_dir, now)?;
    let signs_from = now + activate_in as i64;
    let until = signs_from + lifetime_secs as i64 + leeway_secs as i64;
    let mut dropped = Vec::new();
    file.keys.retain(|k| match k.verifies_until {
        Some(t) if t <= now => {
            dropped.push(k.kid.clone());
            false
        }
        _ => true,
    });
    for k in &mut file.keys {
        k.verifies_until = Some(k.verifies_until.map_or(until, |t| t.min(until)));
    }
    let entry = new_entry(alg, now, signs_from)?;
    let kid = entry.kid.clone();
    let previous = file
        .keys
        .iter()
        .map(|k| (k.kid.clone(), k.verifies_until.unwrap_or(until)))
        .collect();
    file.keys.push(entry);
    write_key_file(&key_file_path(alg, data_dir), &file)?;
    Ok(Rotation {
        kid,
        signs_from,
        previous,
        dropped,
    })
}

/// `portcullis keys rotate` for the provider set of `cfg`: `None` while it
/// is not in use (nothing is created then).
pub fn rotate(cfg: &Config, now: i64, activate_in: u64) -> Result<Option<Rotation>, String> {
    if !cfg.provider_keys_in_use() {
        return Ok(None);
    }
    rotate_set(
        cfg.oidc_provider.signing_alg,
        &cfg.server.data_dir,
        now,
        activate_in,
        longest_lifetime(cfg),
        cfg.tokens.leeway_secs,
    )
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALGS: [ProviderAlgorithm; 3] = [
        ProviderAlgorithm::Rs256,
        ProviderAlgorithm::Es256,
        ProviderAlgorithm::EdDsa,
    ];

    fn validation() -> Validation {
        let mut v = Validation::new(Algorithm::RS256);
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        v
    }

    /// Verify `token` with the JWK of the published set named by its kid,
    /// as a relying party would.
    fn verify_with_jwks(token: &str, jwks: &[Value]) -> Result<Value, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        let kid = header.kid.ok_or("no kid")?;
        let jwk = jwks
            .iter()
            .find(|k| k["kid"] == kid.as_str())
            .ok_or("kid not published")?;
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(jwk.clone()).map_err(|e| e.to_string())?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
        let mut v = validation();
        v.algorithms = vec![header.alg];
        jsonwebtoken::decode::<Value>(token, &key, &v)
            .map(|d| d.claims)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn each_algorithm_signs_and_verifies_with_its_published_jwk() {
        for alg in ALGS {
            let dir = tempfile::tempdir().unwrap();
            let set = load_set(alg, dir.path(), 1000).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(key_file_path(alg, dir.path()))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{alg:?}");
            }
            let claims = json!({ "sub": "u1", "iat": 1000, "exp": 1060 });
            let (token, kid) = set.sign(&claims, "JWT", 1000);
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.alg, jwt_algorithm(alg));
            assert_eq!(header.typ.as_deref(), Some("JWT"));
            assert_eq!(header.kid.as_deref(), Some(kid));
            let jwks = set.jwks_keys(1000);
            assert_eq!(jwks.len(), 1);
            assert_eq!(jwks[0]["alg"], alg.name());
            assert_eq!(jwks[0]["use"], "sig");
            assert!(jwks[0].get("d").is_none(), "no private part: {alg:?}");
            assert_eq!(verify_with_jwks(&token, &jwks).unwrap(), claims, "{alg:?}");
            assert_eq!(set.verify(&token, &validation(), 1000).unwrap(), claims);
            // A changed payload fails.
            let mut parts: Vec<&str> = token.split('.').collect();
            let other = URL_SAFE_NO_PAD.encode(json!({ "sub": "u2" }).to_string());
            parts[1] = &other;
            let forged = parts.join(".");
            assert!(verify_with_jwks(&forged, &jwks).is_err(), "{alg:?}");
            assert!(set.verify(&forged, &validation(), 1000).is_err());
            // Loading again reads the same key.
            let again = load_set(alg, dir.path(), 2000).unwrap();
            assert_eq!(again.keys.len(), 1);
            assert_eq!(again.keys[0].kid, kid);
        }
    }

    #[test]
    fn rotation_keeps_old_keys_verifying_until_their_tokens_expired() {
        for alg in ALGS {
            let dir = tempfile::tempdir().unwrap();
            let old = load_set(alg, dir.path(), 1000).unwrap();
            let (old_token, old_kid) = old.sign(&json!({ "sub": "a" }), "JWT", 1000);
            let old_kid = old_kid.to_string();
            // Active in 10 s; tokens live 60 s; leeway 5 s.
            let r = rotate_set(alg, dir.path(), 1000, 10, 60, 5).unwrap();
            assert_ne!(r.kid, old_kid);
            assert_eq!(r.signs_from, 1010);
            assert_eq!(r.previous, vec![(old_kid.clone(), 1075)]);
            let set = load_set(alg, dir.path(), 1000).unwrap();
            // Before the new key's start the old one still signs.
            assert_eq!(set.signing(1005).kid, old_kid);
            assert_eq!(set.signing(1010).kid, r.kid);
            let (new_token, new_kid) = set.sign(&json!({ "sub": "b" }), "JWT", 1010);
            assert_eq!(new_kid, r.kid);
            // Both published and verifying during the overlap.
            let jwks = set.jwks_keys(1074);
            assert_eq!(jwks.len(), 2, "{alg:?}");
            verify_with_jwks(&old_token, &jwks).unwrap();
            verify_with_jwks(&new_token, &jwks).unwrap();
            assert!(set.verify(&old_token, &validation(), 1074).is_ok());
            // After it, the old key verifies nothing and leaves the JWKS.
            let jwks = set.jwks_keys(1075);
            assert_eq!(jwks.len(), 1);
            assert!(verify_with_jwks(&old_token, &jwks).is_err());
            assert!(set.verify(&old_token, &validation(), 1075).is_err());
            assert!(set.verify(&new_token, &validation(), 1075).is_ok());
            // The next rotation drops it from the file.
            let r2 = rotate_set(alg, dir.path(), 2000, 0, 60, 5).unwrap();
            assert_eq!(r2.dropped, vec![old_kid.clone()]);
            let file = read_or_create(alg, dir.path(), 2000).unwrap();
            assert_eq!(file.keys.len(), 2);
        }
    }

    #[test]
    fn a_token_of_another_algorithm_or_an_unknown_kid_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let es = load_set(ProviderAlgorithm::Es256, dir.path(), 0).unwrap();
        let ed = load_set(ProviderAlgorithm::EdDsa, dir.path(), 0).unwrap();
        let (t, _) = ed.sign(&json!({ "sub": "x" }), "JWT", 0);
        assert_eq!(
            es.verify(&t, &validation(), 0),
            Err(ProviderKeyError::Invalid)
        );
        let keys = ProviderKeys::new(Arc::new(crate::clock::SystemClock));
        assert_eq!(
            keys.sign(&json!({}), "JWT"),
            Err(ProviderKeyError::NotInUse)
        );
        assert!(keys.jwks_keys().is_empty());
    }
}
