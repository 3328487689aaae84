//! TOTP (RFC 6238: HMAC-SHA1, 6 digits, 30-second steps) and what keeps
//! it safe at rest: secrets are sealed with ChaCha20-Poly1305 under a key
//! of the gateway's own (`data_dir/mfa.key`, mode 0600, or
//! `PORTCULLIS_MFA_KEY`), so a copy of the database alone reveals no
//! secret. Recovery codes are stored as SHA-256 hashes (each is 80 random
//! bits, so no slow hash is needed).
//!
//! Replay is refused by the store, not here: [`matching_step`] says which
//! step a code is for, and the store accepts a step only if it is newer
//! than the last one used (`store::domain::use_mfa`), inside its atomic
//! step.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hmac;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Entropy;
use crate::tokens::keys::{load_or_create_secret, random_bytes};

pub const DIGITS: u32 = 6;
pub const STEP_SECS: i64 = 30;
/// Steps of clock skew accepted either side.
pub const SKEW: i64 = 1;
pub const RECOVERY_CODES: usize = 10;
/// How long an `mfa_token` lasts.
pub const MFA_TOKEN_TTL_SECS: i64 = 300;

/// The HOTP value (RFC 4226) of `secret` at `counter`, as 6 digits.
pub fn hotp(secret: &[u8], counter: u64) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let mac = hmac::sign(&key, &counter.to_be_bytes());
    let d = mac.as_ref();
    let off = (d[19] & 0x0f) as usize;
    let bin = u32::from_be_bytes([d[off] & 0x7f, d[off + 1], d[off + 2], d[off + 3]]);
    bin % 10u32.pow(DIGITS)
}

/// The step `now` falls in.
pub fn step_at(now: i64) -> u64 {
    now.max(0).div_euclid(STEP_SECS) as u64
}

/// The step within ±[`SKEW`] of `now` whose code is `code`, if any. Every
/// candidate is compared (in constant time), so timing says nothing about
/// which matched.
pub fn matching_step(secret: &[u8], code: &str, now: i64) -> Option<u64> {
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = step_at(now) as i64;
    let mut found = None;
    for delta in -SKEW..=SKEW {
        let step = current + delta;
        if step < 0 {
            continue;
        }
        let want = format!("{:06}", hotp(secret, step as u64));
        if bool::from(want.as_bytes().ct_eq(code.as_bytes())) {
            // The newest matching step wins (codes of different steps
            // colliding is a 1-in-a-million event either way).
            found = Some(step as u64);
        }
    }
    found
}

/// A fresh 160-bit secret.
pub fn new_secret(rng: &dyn Entropy) -> Vec<u8> {
    rng.bytes(20)
}

pub fn base32(secret: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(secret)
}

/// The `otpauth://` URI authenticator apps read (usually from a QR code).
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    // The label is "issuer:account", each part percent-encoded.
    let label = format!("{}:{}", enc(issuer), enc(account)).replace('+', "%20");
    format!(
        "otpauth://totp/{label}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        base32(secret),
        enc(issuer).replace('+', "%20"),
    )
}

/// Ten fresh recovery codes (`xxxxx-xxxxx`, base32 lower case: 80 bits).
pub fn new_recovery_codes(rng: &dyn Entropy) -> Vec<String> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let s = data_encoding::BASE32_NOPAD
                .encode(&rng.bytes(10))
                .to_ascii_lowercase();
            format!("{}-{}", &s[..8], &s[8..])
        })
        .collect()
}

/// The stored form of a recovery code: its hash, after normalizing what a
/// person may type differently (case, spaces, dashes).
pub fn recovery_hash(code: &str) -> String {
    let norm: String = code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    let d = Sha256::digest(format!("portcullis-recovery:{norm}").as_bytes());
    data_encoding::HEXLOWER.encode(&d)
}

/// Does `code` look like a recovery code rather than a TOTP code?
pub fn is_recovery_shaped(code: &str) -> bool {
    let n = code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .count();
    n == 16 && code.len() <= 64
}

/// The key TOTP secrets are sealed with.
pub struct SealKey(LessSafeKey);

impl SealKey {
    /// From `PORTCULLIS_MFA_KEY` (hashed to 256 bits), or the key file in
    /// `data_dir`, created on first start.
    pub fn load(configured: Option<&str>, data_dir: &Path) -> Result<Self, String> {
        let raw: Vec<u8> = match configured {
            Some(s) => Sha256::digest(format!("portcullis-mfa-key:{s}").as_bytes()).to_vec(),
            None => {
                let file = load_or_create_secret(&data_dir.join("mfa.key"), || {
                    URL_SAFE_NO_PAD.encode(random_bytes(32)).into_bytes()
                })
                .map_err(|e| format!("cannot read or create the MFA key: {e}"))?;
                URL_SAFE_NO_PAD
                    .decode(file.trim_ascii())
                    .ok()
                    .filter(|k| k.len() == 32)
                    .ok_or("the MFA key file is corrupt")?
            }
        };
        let key = UnboundKey::new(&CHACHA20_POLY1305, &raw).map_err(|_| "bad MFA key")?;
        Ok(Self(LessSafeKey::new(key)))
    }

    /// Seal a secret for `user` (the user id is bound in as associated
    /// data, so a sealed secret copied to another account does not open).
    pub fn seal(&self, user: &uuid::Uuid, secret: &[u8]) -> String {
        let nonce_bytes = random_bytes(NONCE_LEN);
        let mut buf = secret.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(&nonce_bytes).expect("nonce length");
        self.0
            .seal_in_place_append_tag(nonce, Aad::from(user.as_bytes()), &mut buf)
            .expect("sealing cannot fail for a short secret");
        let mut out = nonce_bytes;
        out.extend_from_slice(&buf);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Open a sealed secret; `None` when it was not sealed by this key for
    /// this user.
    pub fn open(&self, user: &uuid::Uuid, sealed: &str) -> Option<Vec<u8>> {
        let raw = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if raw.len() <= NONCE_LEN {
            return None;
        }
        let (n, ct) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(n).ok()?;
        let mut buf = ct.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(user.as_bytes()), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_hashes_are_lower_case_hex_as_before() {
        // Stored hashes of unused codes must still match after an upgrade.
        assert_eq!(
            recovery_hash("ABCD-1234"),
            "a001973d7eaa4ccb9bc6128d88413c5cb1062002e3aacec56720f06a9f006ecf"
        );
    }

    #[test]
    fn rfc6238_sha1_vectors() {
        // RFC 6238 appendix B (SHA-1), last 6 of the 8 digits.
        let secret = b"12345678901234567890";
        for (t, code8) in [
            (59, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            assert_eq!(hotp(secret, step_at(t)), code8 % 1_000_000, "t = {t}");
        }
    }

    #[test]
    fn skew_and_shape() {
        let s = b"12345678901234567890";
        let now = 1_000_000;
        let code = |step: u64| format!("{:06}", hotp(s, step));
        let cur = step_at(now);
        assert_eq!(matching_step(s, &code(cur), now), Some(cur));
        assert_eq!(matching_step(s, &code(cur - 1), now), Some(cur - 1));
        assert_eq!(matching_step(s, &code(cur + 1), now), Some(cur + 1));
        assert_eq!(matching_step(s, &code(cur + 2), now), None);
        assert_eq!(matching_step(s, &code(cur - 2), now), None);
        assert_eq!(matching_step(s, "12345", now), None);
        assert_eq!(matching_step(s, "12345a", now), None);
    }

    #[test]
    fn sealed_secrets_open_only_for_their_user_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let k = SealKey::load(None, dir.path()).unwrap();
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let sealed = k.seal(&a, b"secret-bytes-here!!!");
        assert!(!sealed.contains("secret"));
        assert_eq!(k.open(&a, &sealed).unwrap(), b"secret-bytes-here!!!");
        assert!(k.open(&b, &sealed).is_none());
        let other = SealKey::load(Some("another key, 32 bytes or longer.."), dir.path()).unwrap();
        assert!(other.open(&a, &sealed).is_none());
        // The same file gives the same key.
        let again = SealKey::load(None, dir.path()).unwrap();
        assert!(again.open(&a, &sealed).is_some());
    }

    #[test]
    fn recovery_codes_normalize() {
        let codes = new_recovery_codes(&super::super::OsEntropy);
        assert_eq!(codes.len(), 10);
        let c = &codes[0];
        assert!(is_recovery_shaped(c));
        assert_eq!(recovery_hash(c), recovery_hash(&c.to_uppercase()));
        assert_eq!(recovery_hash(c), recovery_hash(&c.replace('-', "")));
        assert_ne!(recovery_hash(c), recovery_hash(&codes[1]));
    }
}
