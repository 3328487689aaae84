//! Config reload without a restart (SIGHUP, `portcullis reload` through the
//! admin listener, and `portcullis keys rotate`).
//!
//! A reload reads the config the gateway was started from again, validates
//! it whole, refuses it when it changes a key that only a restart can change
//! ([`FIXED`]), builds everything derived from it (the route table with its
//! upstream balancers, the mail transport, the token settings, the signing
//! keys) and only then swaps each into place. Until the swap nothing has
//! changed, so a refused reload leaves the old config in force. Requests
//! load the config once when they start (one atomic load) and finish on the
//! one they started with; connections are never touched.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::accounts::AuthService;
use crate::config::{Config, ConfigErrors, Storage};
use crate::mail::outbox::MailRuntime;
use crate::proxy::{LiveProxy, ProxyConfig};

/// Where a reload reads the config from (the binary: the file it started
/// with, secrets from the environment).
pub type ConfigSource = Arc<dyn Fn() -> Result<Config, ConfigErrors> + Send + Sync>;

/// The config file at `path`, read again on each call.
pub fn file_source(path: PathBuf, must_exist: bool) -> ConfigSource {
    Arc::new(move || Config::load(&path, must_exist))
}

/// The keys a reload cannot change: the listeners and what they were built
/// with, where the state lives, and what is set up once per process. A
/// reload that changes any of them is refused, naming each.
pub const FIXED: &[&str] = &[
    "server.listen",
    "server.tls_listen",
    "server.tls_cert",
    "server.tls_key",
    "server.admin_listen",
    "server.data_dir",
    "server.threads",
    "server.work_stealing",
    "server.auth_threads",
    "server.auth_nice",
    "server.grace_period_secs",
    "storage",
    "tokens.algorithm",
    "tokens.jwt_secret",
    "tokens.refresh_secret",
    "limits.max_connections",
    "limits.downstream_read_timeout_secs",
    "limits.h2_idle_timeout_secs",
    "passwords",
    "log",
    "demo.echo_listen",
];

/// Which of [`FIXED`] differ between two configs.
pub fn fixed_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let (o, n) = (&old.server, &new.server);
    let storage_differs = match (&old.storage, &new.storage) {
        (
            Storage::Sled {
                path: a,
                cache_bytes: ca,
            },
            Storage::Sled {
                path: b,
                cache_bytes: cb,
            },
        ) => a != b || ca != cb,
        (
            Storage::Postgres {
                url: a,
                ca_file: ca,
            },
            Storage::Postgres {
                url: b,
                ca_file: cb,
            },
        ) => a != b || ca != cb,
        _ => true,
    };
    let checks: [(&'static str, bool); 21] = [
        ("server.listen", o.listen != n.listen),
        ("server.tls_listen", o.tls_listen != n.tls_listen),
        ("server.tls_cert", o.tls_cert != n.tls_cert),
        ("server.tls_key", o.tls_key != n.tls_key),
        ("server.admin_listen", o.admin_listen != n.admin_listen),
        ("server.data_dir", o.data_dir != n.data_dir),
        ("server.threads", o.threads != n.threads),
        ("server.work_stealing", o.work_stealing != n.work_stealing),
        ("server.auth_threads", o.auth_threads != n.auth_threads),
        ("server.auth_nice", o.auth_nice != n.auth_nice),
        (
            "server.grace_period_secs",
            o.grace_period_secs != n.grace_period_secs,
        ),
        ("storage", storage_differs),
        (
            "tokens.algorithm",
            old.tokens.algorithm != new.tokens.algorithm,
        ),
        (
            "tokens.jwt_secret",
            old.tokens.jwt_secret != new.tokens.jwt_secret,
        ),
        (
            "tokens.refresh_secret",
            old.tokens.refresh_secret != new.tokens.refresh_secret,
        ),
        (
            "limits.max_connections",
            old.limits.max_connections != new.limits.max_connections,
        ),
        (
            "limits.downstream_read_timeout_secs",
            old.limits.downstream_read_timeout_secs != new.limits.downstream_read_timeout_secs,
        ),
        (
            "limits.h2_idle_timeout_secs",
            old.limits.h2_idle_timeout_secs != new.limits.h2_idle_timeout_secs,
        ),
        ("passwords", differs(&old.passwords, &new.passwords)),
        ("log", differs(&old.log, &new.log)),
        ("demo.echo_listen", old.demo_echo != new.demo_echo),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(k, _)| k)
        .collect()
}

/// The sections a reload changed (for the log line and the answer).
fn changed_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let mut out = Vec::new();
    for (name, changed) in [
        ("server", differs(&old.server, &new.server)),
        ("tokens", differs(&old.tokens, &new.tokens)),
        ("accounts", differs(&old.accounts, &new.accounts)),
        ("mail", differs(&old.mail, &new.mail)),
        ("throttle", differs(&old.throttle, &new.throttle)),
        ("limits", differs(&old.limits, &new.limits)),
        ("routes", differs(&old.routes, &new.routes)),
        ("webhooks", differs(&old.webhooks, &new.webhooks)),
    ] {
        if changed {
            out.push(name);
        }
    }
    out
}

/// A reload that was refused: every problem, each naming its key. The old
/// config stays in force.
#[derive(Debug, Clone)]
pub struct Refused {
    pub problems: Vec<String>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.problems.join("; "))
    }
}

/// A reload that was applied.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The config sections that changed.
    pub changed: Vec<&'static str>,
    /// The signing key in use after the reload, and how many are accepted.
    pub signing_kid: Option<String>,
    pub verification_keys: usize,
}

/// Everything a reload swaps, and the lock that keeps two reloads from
/// interleaving.
pub struct Reloader {
    source: Option<ConfigSource>,
    auth: Arc<AuthService>,
    proxy: Arc<LiveProxy>,
    mail: Arc<ArcSwap<MailRuntime>>,
    lock: std::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(
        source: Option<ConfigSource>,
        auth: Arc<AuthService>,
        proxy: Arc<LiveProxy>,
        mail: Arc<ArcSwap<MailRuntime>>,
    ) -> Self {
        Self {
            source,
            auth,
            proxy,
            mail,
            lock: std::sync::Mutex::new(()),
        }
    }

    /// Read the config source again and apply it; logs the outcome (INFO
    /// applied, ERROR refused, with every reason) and counts it.
    /// `trigger` says what asked (for the log).
    pub fn reload(&self, trigger: &str) -> Result<Applied, Refused> {
        let result = match &self.source {
            None => Err(Refused {
                problems: vec![
                    "this gateway was started without a config file to read again".into(),
                ],
            }),
            Some(source) => match source() {
                Ok(cfg) => self.apply(cfg),
                Err(errors) => Err(Refused { problems: errors.0 }),
            },
        };
        self.record(trigger, &result);
        result
    }

    /// Apply `new` (already validated) unless it changes a [`FIXED`] key or
    /// something derived from it cannot be built; nothing changes then.
    pub fn apply(&self, new: Config) -> Result<Applied, Refused> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.auth.cfg();
        let fixed = fixed_changes(&old, &new);
        if !fixed.is_empty() {
            return Err(Refused {
                problems: fixed
                    .iter()
                    .map(|k| {
                        format!(
                            "{k}: cannot be changed by a reload; restart the gateway to change it"
                        )
                    })
                    .collect(),
            });
        }
        let new = Arc::new(new);
        let mut problems = Vec::new();
        let proxy = ProxyConfig::build(new.clone(), &self.auth.metrics)
            .map_err(|e| problems.push(format!("routes: {e}")))
            .ok();
        let mail = MailRuntime::build(&new.mail)
            .map_err(|e| problems.push(format!("mail: {e}")))
            .ok();
        let keys =
            crate::tokens::keys::load(&new.tokens, &new.server.data_dir, self.auth.clock.now())
                .map_err(|e| problems.push(format!("tokens: signing keys: {e}")))
                .ok();
        let provider_keys = crate::tokens::provider_keys::load(&new, self.auth.clock.now())
            .map_err(|e| problems.push(format!("oidc_provider: signing keys: {e}")))
            .ok();
        let (Some(proxy), Some(mail), Some(keys), Some(provider_keys), true) =
            (proxy, mail, keys, provider_keys, problems.is_empty())
        else {
            return Err(Refused { problems });
        };
        // Record the new token lifetime in the store before any token is
        // signed under it (revocations are kept by the longest ever).
        if let Err(e) = self.auth.raise_token_horizon(&new) {
            return Err(Refused {
                problems: vec![format!("tokens: {e}")],
            });
        }
        let changed = changed_sections(&old, &new);
        self.auth.tokens.set_keys(keys);
        self.auth.tokens.provider.set(provider_keys);
        self.mail.store(Arc::new(mail));
        self.proxy.store(Arc::new(proxy));
        crate::config::warn_if_links_are_logged(&new);
        self.auth.swap_config(new);
        let (signing_kid, verification_keys) = self.auth.tokens.key_summary();
        Ok(Applied {
            changed,
            signing_kid,
            verification_keys,
        })
    }

    fn record(&self, trigger: &str, result: &Result<Applied, Refused>) {
        let m = &self.auth.metrics.config_reloads;
        match result {
            Ok(a) => {
                m.with_label_values(&["applied"]).inc();
                tracing::info!(
                    trigger,
                    changed = %a.changed.join(","),
                    signing_kid = a.signing_kid.as_deref().unwrap_or(""),
                    verification_keys = a.verification_keys,
                    "config reloaded"
                );
            }
            Err(r) => {
                m.with_label_values(&["refused"]).inc();
                tracing::error!(
                    trigger,
                    reason = %r,
                    "config reload refused; the previous config stays in force"
                );
            }
        }
    }
}
