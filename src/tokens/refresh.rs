//! Refresh tokens, derived rather than stored: a token names its session
//! and generation, and carries an HMAC-SHA256 over both and the session's
//! own random seed, keyed with a secret in `data_dir` (0600). So:
//! - nothing per token is stored, and a session record never grows;
//! - the database alone cannot mint a token (no key), nor the key alone
//!   (no seed);
//! - the reuse grace window can hand out the current token again without
//!   keeping it in plain text;
//! - a token is checked (constant-time) before its session is touched, so
//!   a forged token can never trigger reuse detection on someone's session.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::keys::{load_or_create_secret, random_bytes};
use crate::store::SessionRecord;

pub const KEY_FILE: &str = "refresh.key";
const CONTEXT: &[u8] = b"portcullis refresh v1";
const MAC_LEN: usize = 32;
const RAW_LEN: usize = 16 + 8 + MAC_LEN;

/// A refresh token taken apart: which session and generation it claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presented {
    pub sid: Uuid,
    pub generation: u64,
    mac: [u8; MAC_LEN],
}

pub struct RefreshKeys {
    key: Vec<u8>,
}

impl RefreshKeys {
    /// The key from `data_dir`, generated on first use.
    pub fn load(data_dir: &Path) -> Result<Self, String> {
        let key = load_or_create_secret(&data_dir.join(KEY_FILE), || random_bytes(32))
            .map_err(|e| format!("refresh key: {e}"))?;
        if key.len() < 32 {
            return Err(format!(
                "refresh key '{}' is shorter than 32 bytes",
                data_dir.join(KEY_FILE).display()
            ));
        }
        Ok(Self { key })
    }

    /// An operator-supplied key (`PORTCULLIS_REFRESH_SECRET`), which every
    /// gateway sharing one database must have.
    pub fn from_secret(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    /// The key audit checkpoints are signed with (`audit::chain`): derived
    /// from this one, which every gateway of a cluster shares.
    pub fn audit_checkpoint_key(&self) -> Vec<u8> {
        crate::audit::chain::checkpoint_key(&self.key)
    }

    #[cfg(test)]
    fn with_key(key: &[u8]) -> Self {
        Self::from_secret(key)
    }

    /// A new random seed for a session.
    pub fn new_seed() -> String {
        data_encoding::HEXLOWER.encode(&random_bytes(16))
    }

    /// A key of its own for another use of this secret (`context` names
    /// the use): what every gateway sharing the refresh key derives alike.
    pub fn derive(&self, context: &[u8]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(b"portcullis derive\0");
        m.update(context);
        m.finalize().into_bytes().into()
    }

    fn mac(&self, sid: &Uuid, generation: u64, seed: &str) -> [u8; MAC_LEN] {
        // HMAC accepts keys of any length.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(CONTEXT);
        m.update(sid.as_bytes());
        m.update(&generation.to_be_bytes());
        m.update(seed.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// The token of a session's current generation.
    pub fn token(&self, s: &SessionRecord) -> String {
        let mut raw = Vec::with_capacity(RAW_LEN);
        raw.extend_from_slice(s.id.as_bytes());
        raw.extend_from_slice(&s.generation.to_be_bytes());
        raw.extend_from_slice(&self.mac(&s.id, s.generation, &s.seed));
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Take a token apart; `None` unless it has the right shape.
    pub fn parse(token: &str) -> Option<Presented> {
        if token.len() > 128 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        if raw.len() != RAW_LEN {
            return None;
        }
        let sid = Uuid::from_slice(&raw[..16]).ok()?;
        let generation = u64::from_be_bytes(raw[16..24].try_into().ok()?);
        let mac = raw[24..].try_into().ok()?;
        Some(Presented {
            sid,
            generation,
            mac,
        })
    }

    /// Was `p` issued for this session (any generation)? Constant-time.
    pub fn is_authentic(&self, p: &Presented, s: &SessionRecord) -> bool {
        if p.sid != s.id || s.seed.is_empty() {
            return false;
        }
        let expected = self.mac(&s.id, p.generation, &s.seed);
        expected.ct_eq(&p.mac).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(generation: u64) -> SessionRecord {
        SessionRecord {
            id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            generation,
            seed: RefreshKeys::new_seed(),
            rotated_at: 0,
            created_at: 0,
            last_used_at: 0,
            expires_at: 10,
            ip: String::new(),
            user_agent: String::new(),
            amr: vec![],
            auth_time: None,
            federation: None,
            client: None,
        }
    }

    #[test]
    fn tokens_name_their_session_and_generation_and_are_authentic() {
        let k = RefreshKeys::with_key(&[7; 32]);
        let s = session(3);
        let t = k.token(&s);
        assert!(
            t.len() >= 22
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        let p = RefreshKeys::parse(&t).unwrap();
        assert_eq!((p.sid, p.generation), (s.id, 3));
        assert!(k.is_authentic(&p, &s));
        // Deterministic: the same generation gives the same token.
        assert_eq!(k.token(&s), t);
    }

    #[test]
    fn seeds_are_32_lower_case_hex_digits() {
        let s = RefreshKeys::new_seed();
        assert_eq!(s.len(), 32);
        assert!(
            s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{s}"
        );
        assert_ne!(s, RefreshKeys::new_seed());
    }

    #[test]
    fn forgeries_are_refused() {
        let k = RefreshKeys::with_key(&[7; 32]);
        let s = session(3);
        let p = RefreshKeys::parse(&k.token(&s)).unwrap();
        // Another key, another seed, another session, another generation.
        assert!(!RefreshKeys::with_key(&[8; 32]).is_authentic(&p, &s));
        let mut other_seed = s.clone();
        other_seed.seed = RefreshKeys::new_seed();
        assert!(!k.is_authentic(&p, &other_seed));
        let other = session(3);
        assert!(!k.is_authentic(&p, &other));
        let bumped = Presented { generation: 2, ..p };
        assert!(!k.is_authentic(&bumped, &s));
        // A session without a seed (written by an older version) has no
        // valid token at all.
        let mut legacy = s.clone();
        legacy.seed.clear();
        assert!(!k.is_authentic(&p, &legacy));
        for bad in ["", "x", "!!!!", &"A".repeat(75), &"A".repeat(500)] {
            assert!(
                RefreshKeys::parse(bad).is_none()
                    || !k.is_authentic(&RefreshKeys::parse(bad).unwrap(), &s)
            );
        }
    }
}
