//! Browser-bound state of a sign-in with an outside provider, and the
//! `login_code` of code mode: both are short-lived values sealed with an
//! HMAC under a key every gateway sharing the refresh key derives alike
//! (so the callback may land on another gateway). Single use is enforced
//! by the caller through the store (a counter keyed by the value's id).

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

/// How long a sign-in may take at the provider.
pub const STATE_TTL_SECS: i64 = 600;
/// How long a `login_code` lives (CONTRACT 8.1).
pub const LOGIN_CODE_TTL_SECS: i64 = 60;
/// The state cookie: under the gateway's own `__Host-` namespace, so it is
/// stripped from every proxied request.
pub const STATE_COOKIE: &str = "__Host-portcullis-fed";

/// `Set-Cookie` of the sign-in state (`__Host-`: Secure, Path=/, no
/// Domain; Lax so the provider's redirect back carries it).
pub fn state_cookie(value: &str) -> String {
    format!(
        "{STATE_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={STATE_TTL_SECS}"
    )
}

/// `Set-Cookie` that removes it.
pub fn clear_state_cookie() -> String {
    format!("{STATE_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0")
}

/// Where the callback sends the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Session cookie, then 302 to `rd`.
    Browser,
    /// 302 to `rd` with `?login_code=…`.
    Code,
}

/// What the state cookie holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowState {
    /// The provider that started it (mix-up defence).
    pub provider: String,
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    pub rd: String,
    pub mode: Mode,
    /// Linking from a signed-in account: that account.
    #[serde(default)]
    pub link_user: Option<Uuid>,
    pub expires_at: i64,
}

/// Seals and opens the values above.
#[derive(Clone)]
pub struct Sealer {
    key: [u8; 32],
}

fn b64() -> base64::engine::general_purpose::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

impl Sealer {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    fn mac(&self, kind: &str, body: &[u8]) -> Vec<u8> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(kind.as_bytes());
        m.update(b"\0");
        m.update(body);
        m.finalize().into_bytes().to_vec()
    }

    /// `kind` separates uses.
    pub fn seal<T: Serialize>(&self, kind: &str, v: &T) -> String {
        let body = serde_json::to_vec(v).unwrap_or_default();
        format!(
            "{}.{}",
            b64().encode(&body),
            b64().encode(self.mac(kind, &body))
        )
    }

    /// The value, when its MAC is right (compared in constant time).
    pub fn open<T: DeserializeOwned>(&self, kind: &str, sealed: &str) -> Option<T> {
        if sealed.len() > 8192 {
            return None;
        }
        let (body, mac) = sealed.split_once('.')?;
        let body = b64().decode(body).ok()?;
        let mac = b64().decode(mac).ok()?;
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).ok()?;
        m.update(kind.as_bytes());
        m.update(b"\0");
        m.update(&body);
        m.verify_slice(&mac).ok()?;
        serde_json::from_slice(&body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_unchanged_under_their_key_and_kind() {
        let s = Sealer::new([1; 32]);
        let st = FlowState {
            provider: "corp".into(),
            state: "st".into(),
            nonce: "n".into(),
            verifier: "v".into(),
            rd: "/".into(),
            mode: Mode::Browser,
            link_user: None,
            expires_at: 10,
        };
        let sealed = s.seal("state", &st);
        assert_eq!(s.open::<FlowState>("state", &sealed), Some(st.clone()));
        assert_eq!(s.open::<FlowState>("code", &sealed), None);
        assert_eq!(
            Sealer::new([2; 32]).open::<FlowState>("state", &sealed),
            None
        );
        // One changed character of the body: refused.
        let mut t = sealed.clone().into_bytes();
        t[3] = if t[3] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            s.open::<FlowState>("state", &String::from_utf8(t).unwrap()),
            None
        );
        assert_eq!(s.open::<FlowState>("state", "garbage"), None);
    }
}
