//! Randomness, injected like the [`crate::clock::Clock`]: the account
//! service draws its one-time tokens, session ids and seeds, the token
//! service its `jti`s, the hasher its salts and the portal its CSRF tokens
//! from an [`Entropy`], so a test can fix them. The real one is the
//! operating system's generator. (Long-lived keys are always drawn from
//! the operating system.)

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use uuid::Uuid;

pub trait Entropy: Send + Sync {
    /// `n` random bytes.
    fn bytes(&self, n: usize) -> Vec<u8>;

    /// An opaque URL-safe token of `n` random bytes.
    fn token(&self, n: usize) -> String {
        URL_SAFE_NO_PAD.encode(self.bytes(n))
    }

    /// A random (version 4) UUID.
    fn uuid(&self) -> Uuid {
        let mut b = [0u8; 16];
        b.copy_from_slice(&self.bytes(16));
        uuid::Builder::from_random_bytes(b).into_uuid()
    }
}

/// The operating system's generator.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn bytes(&self, n: usize) -> Vec<u8> {
        crate::tokens::keys::random_bytes(n)
    }
}

/// A seeded, repeatable generator for tests (never for production).
pub struct FixedEntropy(parking_lot::Mutex<rand::rngs::StdRng>);

impl FixedEntropy {
    pub fn new(seed: u64) -> Self {
        use rand::SeedableRng;
        Self(parking_lot::Mutex::new(rand::rngs::StdRng::seed_from_u64(
            seed,
        )))
    }
}

impl Entropy for FixedEntropy {
    fn bytes(&self, n: usize) -> Vec<u8> {
        use rand::RngCore;
        let mut v = vec![0u8; n];
        self.0.lock().fill_bytes(&mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_entropy_repeats_and_uuids_are_v4() {
        let (a, b) = (FixedEntropy::new(7), FixedEntropy::new(7));
        assert_eq!(a.token(32), b.token(32));
        let u = a.uuid();
        assert_eq!(u.get_version_num(), 4);
        assert_ne!(OsEntropy.token(16), OsEntropy.token(16));
    }
}
