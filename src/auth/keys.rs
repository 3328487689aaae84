//! Signing keys. HS256 uses a 256-bit random secret and EdDSA an Ed25519
//! key, both generated into `data_dir` (mode 0600) on first start.
//! `PORTCULLIS_JWT_SECRET` overrides the HS256 secret.

use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::config::{TokenAlgorithm, TokenConfig};

pub struct KeyMaterial {
    pub algorithm: Algorithm,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    pub kid: Option<String>,
    /// The JWKS document served at `/.well-known/jwks.json`.
    pub jwks: serde_json::Value,
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
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(path)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
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

pub fn load(cfg: &TokenConfig, data_dir: &Path, _now: i64) -> Result<KeyMaterial, String> {
    match cfg.algorithm {
        TokenAlgorithm::Hs256 => {
            let secret = match &cfg.jwt_secret {
                Some(s) => s.0.as_bytes().to_vec(),
                None => {
                    let raw = load_or_create_secret(&data_dir.join("jwt-hs256.key"), || {
                        URL_SAFE_NO_PAD.encode(random_bytes(32)).into_bytes()
                    })
                    .map_err(|e| format!("cannot read or create the HS256 secret: {e}"))?;
                    URL_SAFE_NO_PAD
                        .decode(raw.trim_ascii())
                        .map_err(|_| "the HS256 secret file is corrupt".to_string())?
                }
            };
            if secret.len() < 32 {
                tracing::warn!(
                    bytes = secret.len(),
                    "PORTCULLIS_JWT_SECRET is shorter than 32 bytes (256 bits); HS256 keys that short can be brute-forced"
                );
            }
            Ok(KeyMaterial {
                algorithm: Algorithm::HS256,
                encoding: EncodingKey::from_secret(&secret),
                decoding: DecodingKey::from_secret(&secret),
                kid: None,
                jwks: serde_json::json!({ "keys": [] }),
            })
        }
        TokenAlgorithm::EdDsa => {
            let pem = load_or_create_secret(&data_dir.join("jwt-ed25519.pem"), || {
                let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
                key.to_pkcs8_pem(Default::default())
                    .map(|p| p.as_bytes().to_vec())
                    .unwrap_or_default()
            })
            .map_err(|e| format!("cannot read or create the Ed25519 key: {e}"))?;
            let pem_str =
                std::str::from_utf8(&pem).map_err(|_| "the Ed25519 key file is corrupt")?;
            let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem_str)
                .map_err(|_| "the Ed25519 key file is corrupt".to_string())?;
            let public = key.verifying_key().to_bytes();
            let x = URL_SAFE_NO_PAD.encode(public);
            let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(public)[..12]);
            let encoding = EncodingKey::from_ed_pem(&pem)
                .map_err(|_| "the Ed25519 key file is corrupt".to_string())?;
            let decoding = DecodingKey::from_ed_components(&x)
                .map_err(|_| "the Ed25519 public key is invalid".to_string())?;
            Ok(KeyMaterial {
                algorithm: Algorithm::EdDSA,
                encoding,
                decoding,
                kid: Some(kid.clone()),
                jwks: serde_json::json!({ "keys": [{
                    "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid,
                    "alg": "EdDSA", "use": "sig"
                }]}),
            })
        }
    }
}
