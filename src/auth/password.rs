//! Password policy and argon2id hashing. Hashing runs on the blocking pool
//! behind a semaphore sized to the cores, so a login flood queues instead of
//! starving the proxy or growing memory without bound.

use std::collections::HashSet;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use once_cell::sync::Lazy;
use tokio::sync::Semaphore;

use crate::config::PasswordConfig;

pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 128;

static COMMON: Lazy<HashSet<&'static str>> =
    Lazy::new(|| include_str!("common_passwords.txt").lines().collect());

/// Policy problems for a new password (empty = acceptable). Length is
/// counted in Unicode scalar values; the password is never altered.
pub fn policy_problems(password: &str, email: &str) -> Vec<String> {
    let n = password.chars().count();
    let mut out = Vec::new();
    if n < MIN_LEN {
        out.push(format!("must be at least {MIN_LEN} characters"));
        return out;
    }
    if n > MAX_LEN {
        out.push(format!("must be at most {MAX_LEN} characters"));
        return out;
    }
    if COMMON.contains(password.to_lowercase().as_str()) {
        out.push("is too common".into());
    }
    let local = email.split('@').next().unwrap_or("").to_lowercase();
    if local.chars().count() >= 3 && password.to_lowercase().contains(&local) {
        out.push("must not contain your email address".into());
    }
    out
}

#[derive(Clone)]
pub struct Hasher {
    params: Params,
    permits: Arc<Semaphore>,
    /// A real hash of a random password, verified against for unknown
    /// accounts so their timing matches known ones.
    dummy: Arc<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("argon2: {0}")]
    Argon2(String),
    #[error("hashing task failed")]
    Join,
}

impl Hasher {
    pub fn new(cfg: &PasswordConfig) -> Result<Self, HashError> {
        let params = Params::new(
            cfg.argon2_memory_kib,
            cfg.argon2_iterations,
            cfg.argon2_parallelism,
            None,
        )
        .map_err(|e| HashError::Argon2(e.to_string()))?;
        let dummy = hash_blocking(&params, &super::tokens::opaque_token(16))?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(cfg.max_concurrent_hashes.max(1))),
            dummy: Arc::new(dummy),
        })
    }

    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let _permit = self.permits.acquire().await.map_err(|_| HashError::Join)?;
        let params = self.params.clone();
        let pw = password.to_string();
        tokio::task::spawn_blocking(move || hash_blocking(&params, &pw))
            .await
            .map_err(|_| HashError::Join)?
    }

    /// Constant-time verify (argon2's own comparison).
    pub async fn verify(&self, password: &str, hash: &str) -> Result<bool, HashError> {
        let _permit = self.permits.acquire().await.map_err(|_| HashError::Join)?;
        let pw = password.to_string();
        let hash = hash.to_string();
        tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&hash).map_err(|e| HashError::Argon2(e.to_string()))?;
            Ok(Argon2::default()
                .verify_password(pw.as_bytes(), &parsed)
                .is_ok())
        })
        .await
        .map_err(|_| HashError::Join)?
    }

    /// Spend one verify on the dummy hash (unknown accounts).
    pub async fn verify_dummy(&self, password: &str) {
        let dummy = self.dummy.clone();
        let _ = self.verify(password, &dummy).await;
    }
}

fn hash_blocking(params: &Params, password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Argon2(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        assert!(!policy_problems("short", "a@b.c").is_empty());
        assert!(!policy_problems(&"x".repeat(129), "a@b.c").is_empty());
        assert!(policy_problems(&"x".repeat(128), "a@b.c").is_empty());
        assert!(!policy_problems("password1", "a@b.c").is_empty());
        assert!(!policy_problems("Password", "a@b.c").is_empty());
        assert!(!policy_problems("xxalicexx!", "alice@b.c").is_empty());
        // 8 scalar values, multi-byte.
        assert!(policy_problems("ééééééé€", "a@b.c").is_empty());
        assert!(!policy_problems("éééé", "a@b.c").is_empty());
    }
}
