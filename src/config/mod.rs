//! Configuration: the file model (`file`), the environment overlay for
//! secrets, and one `validate` pass that turns both into the internal
//! [`Config`]. Every problem is collected, so `check-config` can print them
//! all at once; a config that has any problem never starts a gateway.

mod file;
pub mod oidc_provider;
mod providers;
mod routes;
mod schedule;
mod validate;
mod webhooks;

mod warnings;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use file::FileConfig;
pub use providers::{provider_url_ok, valid_provider_id, IdentityProvider, ProviderKind};
pub use routes::{method_allowed, normalize_host, HostPattern, RouteTable};
pub use schedule::Schedule;
pub use warnings::{warn_if_links_are_logged, warnings};
pub use webhooks::{
    decode_secret, url_allowed, WebhookConfig, WebhookKey, SECRET_PREFIX, WEBHOOK_EVENTS,
};

/// A secret value whose `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub tokens: TokenConfig,
    pub accounts: AccountsConfig,
    pub mail: MailConfig,
    pub throttle: ThrottleConfig,
    pub limits: LimitsConfig,
    pub passwords: PasswordConfig,
    pub log: LogConfig,
    /// The built-in echo upstream, when enabled.
    pub demo_echo: Option<SocketAddr>,
    pub routes: Vec<Route>,
    /// `routes` compiled for matching (built once, with the config).
    pub route_table: RouteTable,
    /// Where the state lives (`data_dir/db` in sled unless `[storage]` or
    /// `PORTCULLIS_DATABASE_URL` say otherwise).
    pub storage: Storage,
    pub browser: BrowserConfig,
    /// `[[identity_providers]]` (CONTRACT 8.1), in file order.
    pub identity_providers: Vec<IdentityProvider>,
    /// `[oidc_provider]` (CONTRACT 8.2).
    pub oidc_provider: OidcProviderConfig,
    /// `[[webhooks]]` (CONTRACT 8.5).
    pub webhooks: Vec<WebhookConfig>,
    pub admin_console: AdminConsoleConfig,
}

/// The algorithm of the provider's signing keys (`oidc_provider.signing_alg`):
/// ID tokens, client access tokens and the identity assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderAlgorithm {
    Rs256,
    Es256,
    EdDsa,
}

impl ProviderAlgorithm {
    /// As written in the config and in a JWT header's `alg`.
    pub fn name(self) -> &'static str {
        match self {
            ProviderAlgorithm::Rs256 => "RS256",
            ProviderAlgorithm::Es256 => "ES256",
            ProviderAlgorithm::EdDsa => "EdDSA",
        }
    }
}

/// `[oidc_provider]`: Portcullis as an OpenID Provider (CONTRACT 8.2).
#[derive(Debug, Clone)]
pub struct OidcProviderConfig {
    pub enabled: bool,
    /// The `iss` of ID tokens and assertions (default: `mail.link_base_url`).
    pub issuer: String,
    pub signing_alg: ProviderAlgorithm,
    /// How long an authorization code lives.
    pub code_ttl_secs: u64,
    /// Lifetime of client access tokens and ID tokens.
    pub access_ttl_secs: u64,
    /// The registered clients.
    pub clients: Vec<oidc_provider::OidcClient>,
}

impl OidcProviderConfig {
    /// The registered client `id`.
    pub fn client(&self, id: &str) -> Option<&oidc_provider::OidcClient> {
        self.clients.iter().find(|c| c.client_id == id)
    }
}

impl Config {
    /// Whether the provider's signing keys are in use: the provider is
    /// enabled, or some route sends the identity assertion (CONTRACT 8.3).
    pub fn provider_keys_in_use(&self) -> bool {
        self.oidc_provider.enabled || self.routes.iter().any(|r| r.identity_assertion)
    }
}

/// `[admin_console]` (CONTRACT 8.5): who may use `/auth/ui/admin/`.
#[derive(Debug, Clone)]
pub struct AdminConsoleConfig {
    pub enabled: bool,
    pub role: String,
    pub require_mfa: bool,
}

/// `[browser]`: cookie sessions and the portal (see `browser`).
#[derive(Debug, Clone)]
pub struct BrowserConfig {
    pub enabled: bool,
    /// Exact serialized origins (`scheme://host[:port]`), no trailing slash.
    pub allowed_origins: Vec<String>,
    pub cookie_name: String,
    pub passkey_timeout_secs: u64,
    /// One sign-in for every host under this domain (lower case, no
    /// leading dot); `None` keeps the `__Host-` cookie.
    pub cookie_domain: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Option<SocketAddr>,
    pub tls_listen: Option<SocketAddr>,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub admin_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub trusted_proxies: Vec<IpNet>,
    pub client_ip_header: ClientIpHeader,
    pub threads: usize,
    pub work_stealing: bool,
    pub grace_period_secs: u64,
    pub auth_threads: usize,
    pub auth_nice: u8,
}

/// The one header a trusted proxy names the client in (`server.client_ip_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpHeader {
    XForwardedFor,
    /// RFC 7239 `Forwarded`, its `for=` parameters.
    Forwarded,
    XRealIp,
}

impl ClientIpHeader {
    pub fn name(self) -> &'static str {
        match self {
            ClientIpHeader::XForwardedFor => "x-forwarded-for",
            ClientIpHeader::Forwarded => "forwarded",
            ClientIpHeader::XRealIp => "x-real-ip",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAlgorithm {
    Hs256,
    EdDsa,
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub algorithm: TokenAlgorithm,
    pub issuer: String,
    pub audience: String,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    pub refresh_idle_secs: u64,
    pub refresh_reuse_grace_secs: u64,
    pub leeway_secs: u64,
    /// How long an upgraded connection (WebSocket) may outlive its access
    /// token's `exp`; it is closed at once when its session is revoked.
    pub tunnel_leeway_secs: u64,
    /// `PORTCULLIS_JWT_SECRET`, overriding the generated HS256 key.
    pub jwt_secret: Option<Secret>,
    /// From `PORTCULLIS_REFRESH_SECRET`: the refresh-token MAC key, which
    /// gateways sharing one database must share (else `data_dir/refresh.key`).
    pub refresh_secret: Option<Secret>,
    /// From `PORTCULLIS_MFA_KEY`: the key TOTP secrets are sealed with,
    /// which gateways sharing one database must share (else
    /// `data_dir/mfa.key`).
    pub mfa_key: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct AccountsConfig {
    pub require_email_verification: bool,
    pub verify_token_ttl_secs: u64,
    pub reset_token_ttl_secs: u64,
    /// How recent the sign-in (`auth_time`) must be for sensitive changes.
    pub reauth_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailTransportKind {
    Log,
    Smtp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    None,
    StartTls,
    Tls,
}

#[derive(Debug, Clone)]
pub struct MailConfig {
    pub transport: MailTransportKind,
    pub from: String,
    pub smtp_host: String,
    pub smtp_port: u16,
    pub smtp_security: SmtpSecurity,
    pub smtp_username: Option<Secret>,
    pub smtp_password: Option<Secret>,
    pub smtp_timeout_secs: u64,
    pub smtp_ca_file: Option<PathBuf>,
    /// Without a trailing slash.
    pub link_base_url: String,
    pub max_attempts: u32,
    pub retry_base_secs: u64,
    /// Mail that failed for good is kept this long, then swept.
    pub failed_retention_secs: u64,
}

#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    pub auth_per_minute: u32,
    pub max_failed_logins: u32,
    pub lockout_secs: u64,
    pub failure_window_secs: u64,
    /// IPv6 clients share one per-IP budget per network of this length.
    pub ipv6_prefix_len: u8,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
    pub upstream_connect_timeout_secs: u64,
    pub upstream_read_timeout_secs: u64,
    pub downstream_read_timeout_secs: u64,
    /// Per write to a client: no progress for this long ends the
    /// connection (slow-read).
    pub downstream_write_timeout_secs: u64,
    pub h2_idle_timeout_secs: u64,
    pub max_header_count: usize,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// The longest an upgraded connection opened with an API key lives.
    pub max_api_key_tunnel_secs: u64,
}

#[derive(Debug, Clone)]
pub struct PasswordConfig {
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    pub max_concurrent_hashes: usize,
    pub max_queued_hashes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    pub audit_file: Option<PathBuf>,
    /// `log.access_log`: one line per request, target `access`.
    pub access_log: bool,
    /// `log.access_file`: the access lines go there instead.
    pub access_file: Option<PathBuf>,
    pub audit_chain: bool,
    pub audit_retention_days: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Required,
    Optional,
    Public,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub tls: bool,
    pub sni: String,
    /// `host:port` as written, for the `Host` header.
    pub authority: String,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Its place in the file (`routes[index]`).
    pub index: usize,
    /// The `route` label of its metrics and its rate-limit key: the prefix,
    /// after the host when the route names one.
    pub label: String,
    pub host: HostPattern,
    /// [] = every method (GET also takes HEAD).
    pub methods: Vec<http::Method>,
    /// On a required route: these methods pass without identity.
    pub public_methods: Vec<http::Method>,
    /// A client IP outside all of these gets 403; [] = any.
    pub networks: Vec<IpNet>,
    /// Every one of these roles is needed.
    pub roles_all: Vec<String>,
    /// Outside it, 403.
    pub schedule: Option<Schedule>,
    pub prefix: String,
    pub upstreams: Vec<Upstream>,
    pub auth: AuthMode,
    pub roles: Vec<String>,
    /// Requests per minute per verified user, or per client IP without
    /// one; 0 = no limit.
    pub rate_per_minute: u32,
    /// Strip `;…` path parameters (else they get 400).
    pub strip_path_params: bool,
    /// Pass the caller's `Authorization` header upstream.
    pub forward_authorization: bool,
    /// The access token must carry a second factor (`amr` "otp" or
    /// "webauthn"), else 403 `mfa_required`.
    pub mfa: bool,
    /// API keys holding one of these scopes may pass; none = API keys are
    /// refused on this route.
    pub scopes: Vec<String>,
    /// Send the upstream a signed `X-User-Assertion` (CONTRACT 8.3).
    pub identity_assertion: bool,
    /// Its `aud`: `assertion_audience`, else the first upstream's origin.
    pub assertion_audience: String,
}

/// Every problem found in one config, each naming its key.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

/// The storage backend.
#[derive(Debug, Clone)]
pub enum Storage {
    Sled {
        path: PathBuf,
        /// sled's page cache (`storage.cache_mb`).
        cache_bytes: u64,
    },
    Postgres {
        url: Secret,
        /// Extra trusted CAs for TLS to the server (`storage.ca_file`).
        ca_file: Option<PathBuf>,
    },
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where the config comes from: `--config`, else `$PORTCULLIS_CONFIG`, else
/// `./gateway.toml`. Only the implicit default may be absent (then the
/// embedded defaults apply).
pub fn resolve_path(cli: Option<&Path>) -> (PathBuf, bool) {
    if let Some(p) = cli {
        return (p.to_path_buf(), true);
    }
    if let Some(p) = std::env::var_os("PORTCULLIS_CONFIG").filter(|v| !v.is_empty()) {
        return (PathBuf::from(p), true);
    }
    (PathBuf::from("gateway.toml"), false)
}

impl Config {
    /// The route a request goes to (CONTRACT 8.4), by its host (as sent,
    /// normalized here), method and normalized path.
    pub fn match_route(
        &self,
        host: Option<&str>,
        method: &http::Method,
        path: &str,
    ) -> Option<usize> {
        let host = host.and_then(normalize_host);
        self.route_table
            .find(&self.routes, host.as_deref(), method, path)
    }

    /// Load and validate from a file, with secrets from the process environment.
    pub fn load(path: &Path, must_exist: bool) -> Result<Config, ConfigErrors> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => String::new(),
            Err(e) => {
                return Err(ConfigErrors(vec![format!(
                    "{}: cannot read config file: {}",
                    path.display(),
                    e.kind()
                )]))
            }
        };
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, &|k| std::env::var(k).ok(), base)
    }

    /// Parse, overlay the environment (through `env`), and validate.
    /// Relative paths in the file are taken relative to the working directory.
    pub fn from_toml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        _base: &Path,
    ) -> Result<Config, ConfigErrors> {
        let mut problems = Vec::new();
        let de = toml::Deserializer::new(text);
        let mut unknown = Vec::new();
        let file: FileConfig = match serde_ignored::deserialize(de, |p| unknown.push(key_path(&p)))
        {
            Ok(f) => f,
            Err(e) => {
                let mut msg = e.message().to_string();
                if let Some(span) = e.span() {
                    let line = text[..span.start].matches('\n').count() + 1;
                    msg = format!("line {line}: {msg}");
                }
                return Err(ConfigErrors(vec![format!("gateway.toml: {msg}")]));
            }
        };
        for key in unknown {
            problems.push(format!("{key}: unknown key"));
        }
        let cfg = validate::validate(file, env, &mut problems);
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(problems))
        }
    }
}

/// An unknown key's path as the other problems name keys: `routes[0].extra`.
fn key_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => match key_path(parent) {
            pp if pp.is_empty() => key.clone(),
            pp => format!("{pp}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigErrors> {
        Config::from_toml(text, &|_| None, Path::new("."))
    }

    #[test]
    fn defaults_are_valid() {
        let c = load("").unwrap();
        assert_eq!(c.tokens.access_ttl_secs, 900);
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].auth, AuthMode::Required);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let e = load(
            "[server]\nlisten = \"nope\"\nbogus = 1\ntrusted_proxies = [\"10.0.0.0/99\"]\n[tokens]\nalgorithm = \"none\"\n[[routes]]\nprefix = \"/\"\nupstream = \"ftp://x\"\nauth = \"maybe\"\nextra = true\n",
        )
        .unwrap_err();
        let all = e.to_string();
        for key in [
            "server.listen",
            "server.bogus",
            "server.trusted_proxies[0]",
            "tokens.algorithm",
            "routes[0].upstream[0]",
            "routes[0].auth",
            "routes[0].extra",
        ] {
            assert!(all.contains(key), "{key} missing from: {all}");
        }
    }

    #[test]
    fn new_security_keys_are_validated_and_defaulted() {
        let c = load("[[routes]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\n[[routes]]\nprefix = \"/pub\"\nupstream = \"http://127.0.0.1:1\"\nauth = \"public\"\nstrip_path_params = true\n").unwrap();
        assert_eq!(c.server.client_ip_header, ClientIpHeader::XForwardedFor);
        assert_eq!(c.throttle.ipv6_prefix_len, 64);
        let public = c.routes.iter().find(|r| r.prefix == "/pub").unwrap();
        let required = c.routes.iter().find(|r| r.prefix == "/").unwrap();
        assert!(!public.forward_authorization && public.strip_path_params);
        assert!(required.forward_authorization && !required.strip_path_params);
        let c =
            load("[server]\nclient_ip_header = \"x-real-ip\"\n[throttle]\nipv6_prefix_len = 48\n")
                .unwrap();
        assert_eq!(c.server.client_ip_header, ClientIpHeader::XRealIp);
        assert_eq!(c.throttle.ipv6_prefix_len, 48);
        let e = load("[server]\nclient_ip_header = \"true-client-ip\"\n[throttle]\nipv6_prefix_len = 129\n[[routes]]\nprefix = \"/a;b\"\nupstream = \"http://127.0.0.1:1\"\n").unwrap_err().to_string();
        for key in [
            "server.client_ip_header",
            "throttle.ipv6_prefix_len",
            "routes[0].prefix",
        ] {
            assert!(e.contains(key), "{key} missing from: {e}");
        }
        assert!(load("[throttle]\nipv6_prefix_len = 0\n").is_err());
    }

    #[test]
    fn overlapping_listeners_are_rejected() {
        let e = load("[server]\nlisten = \"0.0.0.0:9100\"\nadmin_listen = \"127.0.0.1:9100\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("server.admin_listen"), "{e}");
    }

    #[test]
    fn routes_sort_longest_first_and_upstream_may_be_a_list() {
        let c = load(
            "[[routes]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\n[[routes]]\nprefix = \"/api/\"\nupstream = [\"http://127.0.0.1:2\", \"http://127.0.0.1:3\"]\nauth = \"public\"\n",
        )
        .unwrap();
        assert_eq!(c.routes[0].prefix, "/api/");
        assert_eq!(c.routes[0].upstreams.len(), 2);
    }

    #[test]
    fn jwt_secret_comes_from_the_environment_and_is_redacted() {
        let c = Config::from_toml(
            "",
            &|k| (k == "PORTCULLIS_JWT_SECRET").then(|| "operator-chosen".into()),
            Path::new("."),
        )
        .unwrap();
        let secret = c.tokens.jwt_secret.as_ref().unwrap();
        assert_eq!(secret.0, "operator-chosen");
        assert!(!format!("{c:?}").contains("operator-chosen"));
    }

    #[test]
    fn storage_backend_follows_the_url_and_the_environment() {
        let with_env = |text: &str, url: &'static str| {
            Config::from_toml(
                text,
                &move |k| (k == "PORTCULLIS_DATABASE_URL").then(|| url.to_string()),
                Path::new("."),
            )
        };
        // sled's cache: 64 MiB unless configured; 0 or absurd sizes refused.
        assert!(matches!(load("").unwrap().storage,
            Storage::Sled { cache_bytes, .. } if cache_bytes == 64 << 20));
        assert!(
            matches!(load("[storage]\ncache_mb = 16\n").unwrap().storage,
            Storage::Sled { cache_bytes, .. } if cache_bytes == 16 << 20)
        );
        for bad in ["0", "2000000"] {
            let e = load(&format!("[storage]\ncache_mb = {bad}\n")).unwrap_err();
            assert!(e.to_string().contains("storage.cache_mb"), "{e}");
        }
        // The default: sled under data_dir.
        assert!(matches!(load("").unwrap().storage,
            Storage::Sled { ref path, .. } if path == Path::new("data/db")));
        // postgres with its url; the url is a secret (it may hold a password).
        let pg =
            load("[storage]\nbackend = \"postgres\"\nurl = \"postgres://u:pw@db/x\"\n").unwrap();
        assert!(
            matches!(pg.storage, Storage::Postgres { ref url, .. } if url.0 == "postgres://u:pw@db/x")
        );
        assert!(!format!("{pg:?}").contains("pw@"));
        // The environment overrides the url, and its scheme picks the backend.
        let c = with_env("", "postgres://env@db/y").unwrap();
        assert!(
            matches!(c.storage, Storage::Postgres { ref url, .. } if url.0 == "postgres://env@db/y")
        );
        let c = with_env(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://file@db/x\"\n",
            "postgres://env@db/y",
        )
        .unwrap();
        assert!(matches!(c.storage, Storage::Postgres { ref url, .. } if url.0.contains("env@")));
        let c = with_env("", "sled:/var/lib/p/db").unwrap();
        assert!(
            matches!(c.storage, Storage::Sled { ref path, .. } if path == Path::new("/var/lib/p/db"))
        );
        // Every inconsistency names its key.
        for (text, key) in [
            ("[storage]\nbackend = \"postgres\"\n", "storage.url"),
            ("[storage]\nbackend = \"mysql\"\n", "storage.backend"),
            ("[storage]\nurl = \"postgres://x/y\"\n", "storage.url"),
            ("[storage]\nurl = \"mysql://x/y\"\n", "storage.url"),
        ] {
            let e = load(text).unwrap_err();
            assert!(e.0.iter().any(|p| p.starts_with(key)), "{text}: {e:?}");
        }
        let e = with_env("", "redis://x").unwrap_err();
        assert!(
            e.0.iter().any(|p| p.starts_with("PORTCULLIS_DATABASE_URL")),
            "{e:?}"
        );
    }
}
