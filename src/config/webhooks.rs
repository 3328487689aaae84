//! `[[webhooks]]` (CONTRACT 8.5): where events are POSTed, which ones, and
//! the Standard Webhooks key each is signed with (read from the environment
//! variable the config names, never from the file).

use std::fmt;
use std::path::{Path, PathBuf};

use super::file::WebhookFile;
use base64::Engine;

/// The events a webhook can subscribe to (CONTRACT 8.5).
pub const WEBHOOK_EVENTS: [&str; 14] = [
    "user.created",
    "user.login",
    "user.login_failed",
    "user.locked",
    "user.disabled",
    "user.enabled",
    "user.password_changed",
    "user.roles_changed",
    "session.revoked",
    "mfa.enabled",
    "mfa.disabled",
    "api_key.created",
    "api_key.revoked",
    "identity.linked",
];

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A signing key whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookKey(pub Vec<u8>);

impl fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookKey(<redacted>)")
    }
}

/// One validated webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    pub url: String,
    /// Empty: every event.
    pub events: Vec<String>,
    /// The NAME of the environment variable the key came from: what an
    /// outbox entry records to be signed with (never the key).
    pub secret_env: String,
    pub key: WebhookKey,
    pub ca_file: Option<PathBuf>,
    pub timeout_secs: u64,
}

impl WebhookConfig {
    /// Whether this webhook wants events of type `kind`.
    pub fn wants(&self, kind: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == kind)
    }
}

/// Whether `url` is one an outbound request may go to: `https://`, or
/// `http://` to a loopback address (CONTRACT 8.1).
pub fn url_allowed(url: &url::Url) -> bool {
    crate::outbound::check_url(url).is_ok()
}

/// Decode a `whsec_` + base64 secret into its key bytes.
pub fn decode_secret(value: &str) -> Result<Vec<u8>, String> {
    let Some(b64) = value.trim().strip_prefix(SECRET_PREFIX) else {
        return Err(format!("does not start with \"{SECRET_PREFIX}\""));
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| format!("is not \"{SECRET_PREFIX}\" followed by base64"))?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "holds a key of {} bytes; use 24 to 64 random bytes",
            key.len()
        ));
    }
    Ok(key)
}

/// Validate every `[[webhooks]]` table, pushing each problem with its key.
pub(super) fn validate(
    hooks: Option<Vec<WebhookFile>>,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<String>,
) -> Vec<WebhookConfig> {
    let mut out = Vec::new();
    for (i, h) in hooks.unwrap_or_default().into_iter().enumerate() {
        let at = |key: &str| format!("webhooks[{i}].{key}");
        let before = p.len();
        match url::Url::parse(&h.url) {
            Ok(u) if url_allowed(&u) && u.fragment().is_none() && u.username().is_empty() && u.password().is_none() => {}
            Ok(_) => p.push(format!(
                "{}: '{}' must be https:// (http:// only to a loopback address), without user, password or fragment",
                at("url"),
                h.url.escape_debug()
            )),
            Err(_) => p.push(format!(
                "{}: '{}' is not an absolute URL",
                at("url"),
                h.url.escape_debug()
            )),
        }
        for (j, e) in h.events.iter().enumerate() {
            if !WEBHOOK_EVENTS.contains(&e.as_str()) {
                p.push(format!(
                    "webhooks[{i}].events[{j}]: '{}' is not an event; use one of {}",
                    e.escape_debug(),
                    WEBHOOK_EVENTS.join(", ")
                ));
            }
        }
        let mut key = Vec::new();
        if h.secret_env.is_empty() {
            p.push(format!(
                "{}: name the environment variable that holds the secret (\"{SECRET_PREFIX}\" + base64)",
                at("secret_env")
            ));
        } else if h.secret_env.starts_with(SECRET_PREFIX) {
            p.push(format!(
                "{}: holds a secret; it must be the NAME of the environment variable that holds it",
                at("secret_env")
            ));
        } else {
            match env(&h.secret_env).filter(|v| !v.is_empty()) {
                None => p.push(format!(
                    "{}: the environment variable {} is not set",
                    at("secret_env"),
                    h.secret_env
                )),
                Some(v) => match decode_secret(&v) {
                    Ok(k) => key = k,
                    Err(why) => p.push(format!(
                        "{}: the value of {} {why}",
                        at("secret_env"),
                        h.secret_env
                    )),
                },
            }
        }
        let ca_file = (!h.ca_file.is_empty()).then(|| PathBuf::from(&h.ca_file));
        if let Some(ca) = &ca_file {
            if !Path::new(ca).is_file() {
                p.push(format!("{}: '{}' does not exist", at("ca_file"), h.ca_file));
            }
        }
        if !(1..=300).contains(&h.timeout_secs) {
            p.push(format!("{}: must be 1 to 300", at("timeout_secs")));
        }
        if p.len() == before {
            out.push(WebhookConfig {
                url: h.url,
                events: h.events,
                secret_env: h.secret_env,
                key: WebhookKey(key),
                ca_file,
                timeout_secs: h.timeout_secs,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    const GOOD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn check(text: &str, env: &[(&str, &str)]) -> Result<Vec<WebhookConfig>, String> {
        #[derive(Deserialize)]
        struct F {
            webhooks: Option<Vec<WebhookFile>>,
        }
        let f: F = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut p = Vec::new();
        let lookup = |k: &str| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        let out = validate(f.webhooks, &lookup, &mut p);
        if p.is_empty() {
            Ok(out)
        } else {
            Err(p.join("\n"))
        }
    }

    #[test]
    fn a_good_webhook_reads_its_key_from_the_named_variable() {
        let hooks = check(
            "[[webhooks]]\nurl = \"https://hooks.example.test/p\"\nevents = [\"user.created\"]\nsecret_env = \"S\"\n",
            &[("S", GOOD)],
        )
        .unwrap();
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0].key.0.len(), 24);
        assert!(hooks[0].wants("user.created") && !hooks[0].wants("user.login"));
        assert!(
            !format!("{hooks:?}").contains("MfKQ"),
            "the key is redacted"
        );
        let every = check(
            "[[webhooks]]\nurl = \"http://127.0.0.1:9/p\"\nsecret_env = \"S\"\n",
            &[("S", GOOD)],
        )
        .unwrap();
        assert!(every[0].wants("identity.linked"));
    }

    #[test]
    fn bad_webhooks_are_refused_naming_each_key() {
        let e = check(
            "[[webhooks]]\nurl = \"http://hooks.example.test/p\"\nevents = [\"user.nope\"]\nsecret_env = \"MISSING\"\nca_file = \"/no/such/ca.pem\"\ntimeout_secs = 0\n[[webhooks]]\nurl = \"not a url\"\nsecret_env = \"BAD\"\n[[webhooks]]\nurl = \"https://x.test/\"\nsecret_env = \"whsec_abc\"\n[[webhooks]]\nurl = \"ftp://x.test/\"\nsecret_env = \"SHORT\"\n",
            &[("BAD", "nope"), ("SHORT", "whsec_c2hvcnQ=")],
        )
        .unwrap_err();
        for key in [
            "webhooks[0].url",
            "webhooks[0].events[0]",
            "webhooks[0].secret_env: the environment variable MISSING is not set",
            "webhooks[0].ca_file",
            "webhooks[0].timeout_secs",
            "webhooks[1].url",
            "webhooks[1].secret_env: the value of BAD does not start with \"whsec_\"",
            "webhooks[2].secret_env: holds a secret",
            "webhooks[3].url",
            "webhooks[3].secret_env: the value of SHORT holds a key of 5 bytes",
        ] {
            assert!(e.contains(key), "{key} missing from: {e}");
        }
        assert!(!e.contains("c2hvcnQ"), "no secret in the errors: {e}");
    }
}
