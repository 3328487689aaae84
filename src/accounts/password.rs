//! Password policy and argon2id hashing. Hashing runs on the blocking pool
//! behind a semaphore sized to the cores, so a login flood queues instead of
//! starving the proxy or growing memory without bound. The queue itself is
//! bounded too: when it is full a request is refused at once
//! ([`HashError::Busy`], answered 503 with `Retry-After`) instead of waiting
//! for seconds behind hundreds of others.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use prometheus::IntCounter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    /// Requests waiting for a permit, and how many may wait.
    queued: Arc<AtomicUsize>,
    queue_limit: usize,
    /// argon2's working memory, one buffer per permit, reused.
    memory: Arc<MemoryPool>,
    /// A real hash of a random password, verified against for unknown
    /// accounts so their timing matches known ones.
    dummy: Arc<String>,
    /// Requests refused because the queue was full.
    rejected: IntCounter,
    stats: Arc<HashStats>,
    /// Where salts come from (fixed in tests).
    entropy: Arc<dyn crate::entropy::Entropy>,
}

/// What the hasher has done, for tests and benchmarks: argon2 runs by
/// kind, and the most that ever ran at once (never above
/// `max_concurrent_hashes`).
#[derive(Debug, Default)]
pub struct HashStats {
    pub hashes: AtomicU64,
    /// Verifies, the dummy ones for unknown accounts included.
    pub verifies: AtomicU64,
    running: AtomicUsize,
    pub high_water: AtomicUsize,
}

impl HashStats {
    fn run<T>(&self, counter: &AtomicU64, f: impl FnOnce() -> T) -> T {
        counter.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.high_water.fetch_max(now, Ordering::SeqCst);
        let out = f();
        self.running.fetch_sub(1, Ordering::SeqCst);
        out
    }
}

/// Reused argon2 working memory (m KiB per hash). Allocating and freeing it
/// for every hash on whichever blocking-pool thread runs it leaves a copy
/// resident in many glibc per-thread arenas: a login flood with two permits
/// grew the process by ~350 MiB instead of 2 x 19 MiB (benches/load.rs).
/// With the pool, the memory is bounded by permits x m KiB. Reuse is safe:
/// argon2 overwrites every block in its first pass before reading it.
struct MemoryPool {
    free: Mutex<Vec<Vec<Block>>>,
    /// Block count for the configured params; other sizes are not kept.
    blocks: usize,
    keep: usize,
}

impl MemoryPool {
    fn take(&self, blocks: usize) -> Vec<Block> {
        let mut free = self.free.lock();
        match free.iter().position(|m| m.len() >= blocks) {
            Some(i) => free.swap_remove(i),
            None => {
                drop(free);
                vec![Block::default(); blocks]
            }
        }
    }

    fn give(&self, memory: Vec<Block>) {
        let mut free = self.free.lock();
        if memory.len() == self.blocks && free.len() < self.keep {
            free.push(memory);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("argon2: {0}")]
    Argon2(String),
    #[error("hashing task failed")]
    Join,
    /// The hash queue is full; try again shortly.
    #[error("the password hashing queue is full")]
    Busy,
}

/// A place in the hash queue, given back on drop.
struct QueueSlot(Arc<AtomicUsize>);

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
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
        let permits = cfg.max_concurrent_hashes.max(1);
        let memory = Arc::new(MemoryPool {
            free: Mutex::new(Vec::new()),
            blocks: params.block_count(),
            keep: permits,
        });
        let entropy: Arc<dyn crate::entropy::Entropy> = Arc::new(crate::entropy::OsEntropy);
        let dummy = hash_blocking(
            &params,
            &crate::tokens::jwt::opaque_token(16),
            &salt(&*entropy)?,
            &memory,
        )?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(permits)),
            queued: Arc::new(AtomicUsize::new(0)),
            queue_limit: cfg.max_queued_hashes,
            memory,
            dummy: Arc::new(dummy),
            rejected: IntCounter::new("hash_queue_rejected", "detached").map_err(argon2_err)?,
            stats: Arc::default(),
            entropy,
        })
    }

    /// Count queue-full refusals in `counter` (the gateway's metric).
    pub fn count_rejections_in(mut self, counter: IntCounter) -> Self {
        self.rejected = counter;
        self
    }

    pub fn stats(&self) -> &HashStats {
        &self.stats
    }

    /// A hashing slot: at once if one is free, else after waiting in the
    /// queue if it has room, else [`HashError::Busy`].
    async fn permit(&self) -> Result<OwnedSemaphorePermit, HashError> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Ok(p);
        }
        let ahead = self.queued.fetch_add(1, Ordering::SeqCst);
        let _slot = QueueSlot(self.queued.clone());
        if ahead >= self.queue_limit {
            self.rejected.inc();
            return Err(HashError::Busy);
        }
        self.permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HashError::Join)
    }

    /// Draw salts from `entropy` (tests fix it).
    pub fn with_entropy(mut self, entropy: Arc<dyn crate::entropy::Entropy>) -> Self {
        self.entropy = entropy;
        self
    }

    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let _permit = self.permit().await?;
        let params = self.params.clone();
        let memory = self.memory.clone();
        let pw = password.to_string();
        let stats = self.stats.clone();
        let salt = salt(&*self.entropy)?;
        tokio::task::spawn_blocking(move || {
            stats.run(&stats.hashes, || {
                hash_blocking(&params, &pw, &salt, &memory)
            })
        })
        .await
        .map_err(|_| HashError::Join)?
    }

    /// Verify with the hash's own algorithm, version and params; the output
    /// comparison is constant-time (`Output`'s `PartialEq`).
    pub async fn verify(&self, password: &str, hash: &str) -> Result<bool, HashError> {
        let _permit = self.permit().await?;
        let memory = self.memory.clone();
        let pw = password.to_string();
        // An account without a password (made by a federated sign-in,
        // CONTRACT 8.1) stores "": no password is right for it, and
        // finding that out takes as long as for any other account.
        let never = hash.is_empty();
        let hash = if never {
            self.dummy.to_string()
        } else {
            hash.to_string()
        };
        let stats = self.stats.clone();
        let ok = tokio::task::spawn_blocking(move || {
            stats.run(&stats.verifies, || verify_blocking(&pw, &hash, &memory))
        })
        .await
        .map_err(|_| HashError::Join)??;
        Ok(ok && !never)
    }

    /// Spend one verify on the dummy hash (unknown accounts), so their
    /// timing matches known ones; only a full queue is reported.
    pub async fn verify_dummy(&self, password: &str) -> Result<(), HashError> {
        let dummy = self.dummy.clone();
        match self.verify(password, &dummy).await {
            Err(HashError::Busy) => Err(HashError::Busy),
            _ => Ok(()),
        }
    }
}

fn argon2_err(e: impl std::fmt::Display) -> HashError {
    HashError::Argon2(e.to_string())
}

/// Run argon2 into `out` with working memory from the pool.
fn compute(
    argon: &Argon2<'_>,
    params: &Params,
    password: &str,
    salt: &Salt<'_>,
    out: &mut [u8],
    memory: &MemoryPool,
) -> Result<(), HashError> {
    let mut salt_buf = [0u8; Salt::MAX_LENGTH];
    let salt = salt.decode_b64(&mut salt_buf).map_err(argon2_err)?;
    let mut blocks = memory.take(params.block_count());
    let r = argon.hash_password_into_with_memory(password.as_bytes(), salt, out, &mut blocks);
    memory.give(blocks);
    r.map_err(argon2_err)
}

/// A fresh 16-byte salt (argon2's recommended length).
fn salt(entropy: &dyn crate::entropy::Entropy) -> Result<SaltString, HashError> {
    SaltString::encode_b64(&entropy.bytes(16)).map_err(argon2_err)
}

/// A PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`), as argon2's
/// `PasswordHasher` writes it.
fn hash_blocking(
    params: &Params,
    password: &str,
    salt: &SaltString,
    memory: &MemoryPool,
) -> Result<String, HashError> {
    let salt = salt.as_salt();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = Output::init_with(len, |out| {
        compute(&argon, params, password, &salt, out, memory)
            .map_err(|_| argon2::password_hash::Error::Crypto)
    })
    .map_err(argon2_err)?;
    Ok(PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(argon2_err)?,
        salt: Some(salt),
        hash: Some(output),
    }
    .to_string())
}

/// What argon2's `PasswordVerifier` does, with pooled memory: an unparsable
/// hash is an error; a hash argon2 cannot check (unknown algorithm, bad
/// params, no salt) is a mismatch.
fn verify_blocking(password: &str, hash: &str, memory: &MemoryPool) -> Result<bool, HashError> {
    let parsed = PasswordHash::new(hash).map_err(argon2_err)?;
    let check = || -> Option<bool> {
        let (salt, expected) = (parsed.salt?, parsed.hash?);
        let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
        let version = match parsed.version {
            Some(v) => Version::try_from(v).ok()?,
            None => Version::default(),
        };
        let params = Params::try_from(&parsed).ok()?;
        let argon = Argon2::new(algorithm, version, params.clone());
        let computed = Output::init_with(expected.len(), |out| {
            compute(&argon, &params, password, &salt, out, memory)
                .map_err(|_| argon2::password_hash::Error::Crypto)
        })
        .ok()?;
        Some(computed == expected)
    };
    Ok(check().unwrap_or(false))
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

    fn small() -> PasswordConfig {
        PasswordConfig {
            argon2_memory_kib: 256,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            max_concurrent_hashes: 2,
            max_queued_hashes: 4,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_at_once() {
        let cfg = PasswordConfig {
            max_concurrent_hashes: 1,
            max_queued_hashes: 2,
            argon2_memory_kib: 19_456,
            ..small()
        };
        let h = Hasher::new(&cfg).unwrap();
        let hash = h.hash("correct horse").await.unwrap();
        // 1 running + 2 queued; the rest are refused without waiting.
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (h, hash) = (h.clone(), hash.clone());
            set.spawn(async move { h.verify("correct horse", &hash).await });
        }
        let mut ok = 0;
        let mut busy = 0;
        while let Some(r) = set.join_next().await {
            match r.unwrap() {
                Ok(true) => ok += 1,
                Err(HashError::Busy) => busy += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(ok >= 3, "{ok} ran");
        assert!(busy >= 1 && ok + busy == 8, "{ok} ran, {busy} refused");
        assert_eq!(h.queued.load(Ordering::SeqCst), 0, "slots are given back");
    }

    #[tokio::test]
    async fn salts_come_from_the_injected_entropy() {
        use crate::entropy::FixedEntropy;
        let fixed = |seed| {
            Hasher::new(&small())
                .unwrap()
                .with_entropy(Arc::new(FixedEntropy::new(seed)))
        };
        let (a, b) = (fixed(1), fixed(1));
        let first = a.hash("correct horse").await.unwrap();
        assert_eq!(first, b.hash("correct horse").await.unwrap());
        assert_ne!(first, fixed(2).hash("correct horse").await.unwrap());
        assert_ne!(first, a.hash("correct horse").await.unwrap());
        assert!(a.verify("correct horse", &first).await.unwrap());
    }

    #[tokio::test]
    async fn pooled_hash_round_trips_and_matches_argon2() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let h = Hasher::new(&small()).unwrap();
        let a = h.hash("correct horse").await.unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=256,t=2,p=1$"), "{a}");
        // Twice, so the second run reuses pooled memory.
        for _ in 0..2 {
            assert!(h.verify("correct horse", &a).await.unwrap());
            assert!(!h.verify("correct horsf", &a).await.unwrap());
        }
        // argon2's own verifier accepts ours, and we accept its hashes
        // (including other params than the configured ones).
        let parsed = PasswordHash::new(&a).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let other = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(512, 3, 2, None).unwrap(),
        )
        .hash_password(b"pw-other-params", &salt)
        .unwrap()
        .to_string();
        assert!(h.verify("pw-other-params", &other).await.unwrap());
        assert!(!h.verify("pw-other-paramz", &other).await.unwrap());
        assert!(h.verify("x", "not a phc string").await.is_err());
        let scrypt = format!("$scrypt$ln=4,r=8,p=1$c2FsdHNhbHQ${}", "A".repeat(43));
        assert!(!h.verify("x", &scrypt).await.unwrap());
        assert!(h.memory.free.lock().len() <= 2);
    }
}
