//! Signing keys, as a set with ids (`kid`), so they can be rotated.
//!
//! Each algorithm has its key-set file in `data_dir` (mode 0600):
//! `jwt-keys-hs256.json` (256-bit random secrets) or `jwt-keys-ed25519.json`
//! (Ed25519 keys), created on first start. Every key has a `kid`, the time
//! it signs from, and, once a newer key replaced it, the time until which
//! it still verifies: the new key's start plus the access-token lifetime
//! and leeway, so every token it signed has expired by then. After that it
//! verifies nothing, leaves the JWKS, and the next rotation drops it from
//! the file. `portcullis keys rotate` ([`rotate`]) adds a key; a running
//! gateway takes it up on its next reload (the command asks for one).
//!
//! Upgrades: a data dir holding only the single-key files of earlier
//! versions (`jwt-hs256.key`, `jwt-ed25519.pem`) has that key imported as
//! the set's first key (the Ed25519 key keeps its `kid`); the old file is
//! left alone and read no more.
//!
//! `PORTCULLIS_JWT_SECRET` overrides the HS256 set with that one secret (a
//! `kid` derived from it); tokens without a `kid` are accepted only in that
//! mode, where there is one key to try (tokens minted elsewhere with the
//! shared secret). Rotating it is the operator's: change the variable and
//! restart; tokens signed with the old secret stop verifying at once.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{TokenAlgorithm, TokenConfig};
use crate::fsutil::{write_atomic, Existing};

/// One key of a [`KeySet`].
pub struct Key {
    pub kid: String,
    encoding: EncodingKey,
    pub decoding: DecodingKey,
    /// Signs new tokens from this time (the newest such key signs).
    pub signs_from: i64,
    /// Verifies tokens until this time; `None` while it is the newest key.
    pub verifies_until: Option<i64>,
    /// Its public JWK (EdDSA).
    jwk: Option<serde_json::Value>,
}

impl Key {
    pub fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }

    fn live(&self, now: i64) -> bool {
        self.verifies_until.is_none_or(|t| now < t)
    }
}

/// The keys in force: one signs, every live one verifies.
pub struct KeySet {
    pub algorithm: Algorithm,
    /// Oldest first (by `signs_from`).
    pub keys: Vec<Key>,
    /// One key from `PORTCULLIS_JWT_SECRET`: a token without `kid` is
    /// verified with it.
    pub single: bool,
}

impl KeySet {
    /// The key that signs at `now`: the newest one whose time has come (or
    /// the oldest, if none has yet).
    pub fn signing(&self, now: i64) -> &Key {
        self.keys
            .iter()
            .rev()
            .find(|k| k.signs_from <= now && k.live(now))
            .unwrap_or(&self.keys[0])
    }

    /// The live key named `kid`.
    pub fn verifying(&self, kid: Option<&str>, now: i64) -> Option<&Key> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid == kid && k.live(now)),
            None if self.single => self.keys.first(),
            None => None,
        }
    }

    /// How many keys verify at `now`.
    pub fn live_count(&self, now: i64) -> usize {
        self.keys.iter().filter(|k| k.live(now)).count()
    }

    /// The JWKS document: every live public key (none under HS256).
    pub fn jwks(&self, now: i64) -> serde_json::Value {
        let keys: Vec<&serde_json::Value> = self
            .keys
            .iter()
            .filter(|k| k.live(now))
            .filter_map(|k| k.jwk.as_ref())
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

/// Read a secret file, or create it with `make` (mode 0600).
pub fn load_or_create_secret(
    path: &Path,
    make: impl FnOnce() -> Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(v) => Ok(v),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let bytes = make();
            write_atomic(path, &bytes, 0o600, Existing::Refuse)?;
            Ok(bytes)
        }
        Err(e) => Err(e),
    }
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut v);
    v
}

/// The key-set file as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub algorithm: String,
    pub keys: Vec<KeyEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub kid: String,
    pub created_at: i64,
    pub signs_from: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifies_until: Option<i64>,
    /// HS256: the secret, base64url. EdDSA: the PKCS#8 PEM.
    pub secret: String,
}

fn file_name(alg: TokenAlgorithm) -> &'static str {
    match alg {
        TokenAlgorithm::Hs256 => "jwt-keys-hs256.json",
        TokenAlgorithm::EdDsa => "jwt-keys-ed25519.json",
    }
}

fn alg_name(alg: TokenAlgorithm) -> &'static str {
    match alg {
        TokenAlgorithm::Hs256 => "HS256",
        TokenAlgorithm::EdDsa => "EdDSA",
    }
}

/// The key-set file of the configured algorithm.
pub fn key_file_path(cfg: &TokenConfig, data_dir: &Path) -> PathBuf {
    data_dir.join(file_name(cfg.algorithm))
}

pub(crate) fn short_hash(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(&Sha256::digest(bytes)[..12])
}

fn new_entry(alg: TokenAlgorithm, now: i64, signs_from: i64) -> Result<KeyEntry, String> {
    Ok(match alg {
        TokenAlgorithm::Hs256 => KeyEntry {
            kid: URL_SAFE_NO_PAD.encode(random_bytes(12)),
            created_at: now,
            signs_from,
            verifies_until: None,
            secret: URL_SAFE_NO_PAD.encode(random_bytes(32)),
        },
        TokenAlgorithm::EdDsa => {
            let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
            let pem = key
                .to_pkcs8_pem(Default::default())
                .map_err(|_| "cannot encode a new Ed25519 key")?;
            KeyEntry {
                kid: short_hash(&key.verifying_key().to_bytes()),
                created_at: now,
                signs_from,
                verifies_until: None,
                secret: pem.to_string(),
            }
        }
    })
}

/// The first key of a new set: the key of an earlier version's single-key
/// file when there is one (an upgrade), else a new one.
fn first_entry(alg: TokenAlgorithm, data_dir: &Path, now: i64) -> Result<KeyEntry, String> {
    match alg {
        TokenAlgorithm::Hs256 => match std::fs::read(data_dir.join("jwt-hs256.key")) {
            Ok(raw) => {
                let secret = URL_SAFE_NO_PAD
                    .decode(raw.trim_ascii())
                    .map_err(|_| "the HS256 secret file is corrupt".to_string())?;
                Ok(KeyEntry {
                    kid: short_hash(&[b"portcullis kid ".as_slice(), &secret].concat()),
                    created_at: now,
                    signs_from: 0,
                    verifies_until: None,
                    secret: URL_SAFE_NO_PAD.encode(secret),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => new_entry(alg, now, 0),
            Err(e) => Err(format!("cannot read the HS256 secret file: {e}")),
        },
        TokenAlgorithm::EdDsa => match std::fs::read_to_string(data_dir.join("jwt-ed25519.pem")) {
            Ok(pem) => {
                let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
                    .map_err(|_| "the Ed25519 key file is corrupt".to_string())?;
                Ok(KeyEntry {
                    kid: short_hash(&key.verifying_key().to_bytes()),
                    created_at: now,
                    signs_from: 0,
                    verifies_until: None,
                    secret: pem,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => new_entry(alg, now, 0),
            Err(e) => Err(format!("cannot read the Ed25519 key file: {e}")),
        },
    }
}

/// Write the key-set file whole (temporary file, fsync, rename; 0600).
pub(crate) fn write_key_file(path: &Path, file: &KeyFile) -> Result<(), String> {
    let text = serde_json::to_vec_pretty(file).map_err(|e| e.to_string())?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating '{}': {e}", dir.display()))?;
    }
    write_atomic(path, &text, 0o600, Existing::Replace)
        .map_err(|e| format!("writing '{}': {e}", path.display()))
}

/// An exclusive lock over the data dir's key-set files, held while one is
/// created or rotated (read, change, write), so two `keys rotate` at once
/// cannot lose a key. Released when dropped.
pub(crate) fn lock_keys(data_dir: &Path) -> Result<std::fs::File, String> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("creating '{}': {e}", data_dir.display()))?;
    let path = data_dir.join("jwt-keys.lock");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let f = opts
        .open(&path)
        .map_err(|e| format!("opening '{}': {e}", path.display()))?;
    f.lock()
        .map_err(|e| format!("locking '{}': {e}", path.display()))?;
    Ok(f)
}

/// Read the configured algorithm's key-set file, creating it (first start,
/// or upgrade) when it is missing.
pub fn read_or_create(cfg: &TokenConfig, data_dir: &Path, now: i64) -> Result<KeyFile, String> {
    let path = key_file_path(cfg, data_dir);
    if path.exists() {
        return read_locked(cfg, data_dir, now);
    }
    let _lock = lock_keys(data_dir)?;
    read_locked(cfg, data_dir, now)
}

/// [`read_or_create`], the caller holding the lock where it may create.
fn read_locked(cfg: &TokenConfig, data_dir: &Path, now: i64) -> Result<KeyFile, String> {
    let path = key_file_path(cfg, data_dir);
    match std::fs::read(&path) {
        Ok(raw) => {
            let file: KeyFile = serde_json::from_slice(&raw)
                .map_err(|e| format!("'{}' is corrupt: {e}", path.display()))?;
            if file.algorithm != alg_name(cfg.algorithm) || file.keys.is_empty() {
                return Err(format!(
                    "'{}' holds no {} keys",
                    path.display(),
                    alg_name(cfg.algorithm)
                ));
            }
            Ok(file)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let file = KeyFile {
                algorithm: alg_name(cfg.algorithm).into(),
                keys: vec![first_entry(cfg.algorithm, data_dir, now)?],
            };
            write_key_file(&path, &file)?;
            Ok(file)
        }
        Err(e) => Err(format!("cannot read '{}': {e}", path.display())),
    }
}

fn build_key(alg: TokenAlgorithm, e: &KeyEntry, path: &Path) -> Result<Key, String> {
    let corrupt = || format!("'{}': key {} is corrupt", path.display(), e.kid);
    Ok(match alg {
        TokenAlgorithm::Hs256 => {
            let secret = URL_SAFE_NO_PAD.decode(&e.secret).map_err(|_| corrupt())?;
            if secret.len() < 32 {
                return Err(corrupt());
            }
            Key {
                kid: e.kid.clone(),
                encoding: EncodingKey::from_secret(&secret),
                decoding: DecodingKey::from_secret(&secret),
                signs_from: e.signs_from,
                verifies_until: e.verifies_until,
                jwk: None,
            }
        }
        TokenAlgorithm::EdDsa => {
            let key =
                ed25519_dalek::SigningKey::from_pkcs8_pem(&e.secret).map_err(|_| corrupt())?;
            let x = URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
            Key {
                kid: e.kid.clone(),
                encoding: EncodingKey::from_ed_pem(e.secret.as_bytes()).map_err(|_| corrupt())?,
                decoding: DecodingKey::from_ed_components(&x).map_err(|_| corrupt())?,
                signs_from: e.signs_from,
                verifies_until: e.verifies_until,
                jwk: Some(serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "x": x, "kid": e.kid,
                    "alg": "EdDSA", "use": "sig"
                })),
            }
        }
    })
}

/// The key set in force for `cfg`: `PORTCULLIS_JWT_SECRET` (HS256), else
/// the data dir's key-set file (created when missing).
pub fn load(cfg: &TokenConfig, data_dir: &Path, now: i64) -> Result<KeySet, String> {
    if let (TokenAlgorithm::Hs256, Some(s)) = (cfg.algorithm, &cfg.jwt_secret) {
        let secret = s.0.as_bytes();
        if secret.len() < 32 {
            tracing::warn!(
                bytes = secret.len(),
                "PORTCULLIS_JWT_SECRET is shorter than 32 bytes (256 bits); HS256 keys that short can be brute-forced"
            );
        }
        return Ok(KeySet {
            algorithm: Algorithm::HS256,
            keys: vec![Key {
                kid: short_hash(&[b"portcullis kid ".as_slice(), secret].concat()),
                encoding: EncodingKey::from_secret(secret),
                decoding: DecodingKey::from_secret(secret),
                signs_from: 0,
                verifies_until: None,
                jwk: None,
            }],
            single: true,
        });
    }
    let file = read_or_create(cfg, data_dir, now)?;
    let path = key_file_path(cfg, data_dir);
    let mut keys = file
        .keys
        .iter()
        .map(|e| build_key(cfg.algorithm, e, &path))
        .collect::<Result<Vec<_>, _>>()?;
    keys.sort_by_key(|k| k.signs_from);
    Ok(KeySet {
        algorithm: match cfg.algorithm {
            TokenAlgorithm::Hs256 => Algorithm::HS256,
            TokenAlgorithm::EdDsa => Algorithm::EdDSA,
        },
        keys,
        single: false,
    })
}

/// What [`rotate`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Rotation {
    pub kid: String,
    pub signs_from: i64,
    /// The keys kept for verification: (kid, verifies until).
    pub previous: Vec<(String, i64)>,
    /// Keys whose time was over, removed from the file.
    pub dropped: Vec<String>,
}

/// Add a new signing key that signs from `now + activate_in` (so several
/// gateways can all learn it first); every older key verifies until every
/// token it may sign by then has expired (`access_ttl_secs + leeway_secs`
/// after that), and keys past that are dropped from the file.
pub fn rotate(
    cfg: &TokenConfig,
    data_dir: &Path,
    now: i64,
    activate_in: u64,
) -> Result<Rotation, String> {
    if let (TokenAlgorithm::Hs256, Some(_)) = (cfg.algorithm, &cfg.jwt_secret) {
        return Err(
            "PORTCULLIS_JWT_SECRET is set: the HS256 key comes from the environment, \
                    not the data dir. Rotate it there (set the new secret and restart; tokens \
                    signed with the old one stop verifying at once), or unset it to use \
                    rotating keys from the data dir"
                .into(),
        );
    }
    let _lock = lock_keys(data_dir)?;
    let mut file = read_locked(cfg, data_dir, now)?;
    let signs_from = now + activate_in as i64;
    let until = signs_from + cfg.access_ttl_secs as i64 + cfg.leeway_secs as i64;
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
    let entry = new_entry(cfg.algorithm, now, signs_from)?;
    let kid = entry.kid.clone();
    let previous = file
        .keys
        .iter()
        .map(|k| (k.kid.clone(), k.verifies_until.unwrap_or(until)))
        .collect();
    file.keys.push(entry);
    write_key_file(&key_file_path(cfg, data_dir), &file)?;
    Ok(Rotation {
        kid,
        signs_from,
        previous,
        dropped,
    })
}
