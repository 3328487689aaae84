//! The serde model of `gateway.toml`. It mirrors the file exactly and is
//! converted into [`super::Config`] by validation; nothing outside the config
//! module sees it.

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct FileConfig {
    pub server: ServerFile,
    pub tokens: TokensFile,
    pub accounts: AccountsFile,
    pub mail: MailFile,
    pub throttle: ThrottleFile,
    pub limits: LimitsFile,
    pub passwords: PasswordsFile,
    pub log: LogFile,
    pub demo: DemoFile,
    pub storage: StorageFile,
    pub browser: BrowserFile,
    pub admin_console: AdminConsoleFile,
    pub routes: Option<Vec<RouteFile>>,
    pub identity_providers: Option<Vec<IdentityProviderFile>>,
    pub oidc_provider: OidcProviderFile,
    pub webhooks: Option<Vec<WebhookFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct ServerFile {
    pub listen: String,
    pub tls_listen: String,
    pub tls_cert: String,
    pub tls_key: String,
    pub admin_listen: String,
    pub data_dir: String,
    pub trusted_proxies: Vec<String>,
    /// The one header read from `trusted_proxies` for the client IP.
    pub client_ip_header: String,
    pub threads: usize,
    /// Pingora's work stealing between the proxy threads; off by default.
    pub work_stealing: bool,
    pub grace_period_secs: u64,
    /// Threads of the auth executor (`/auth/*` handlers); 0 = one per core.
    pub auth_threads: usize,
    /// Niceness of the auth executor's threads, 0..=19 (0 = as proxied).
    pub auth_nice: u8,
}

impl Default for ServerFile {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            tls_listen: "0.0.0.0:8443".into(),
            tls_cert: "certs/dev-cert.pem".into(),
            tls_key: "certs/dev-key.pem".into(),
            admin_listen: "127.0.0.1:9100".into(),
            data_dir: "data".into(),
            trusted_proxies: vec![],
            client_ip_header: "x-forwarded-for".into(),
            threads: 2,
            work_stealing: false,
            grace_period_secs: 5,
            auth_threads: 0,
            auth_nice: 10,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct TokensFile {
    pub algorithm: String,
    pub issuer: String,
    pub audience: String,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    pub refresh_idle_secs: u64,
    pub refresh_reuse_grace_secs: u64,
    pub leeway_secs: u64,
    /// How long an upgraded connection may outlive its access token's `exp`.
    pub tunnel_leeway_secs: u64,
}

impl Default for TokensFile {
    fn default() -> Self {
        Self {
            algorithm: "HS256".into(),
            issuer: "portcullis".into(),
            audience: "portcullis".into(),
            access_ttl_secs: 900,
            refresh_ttl_secs: 1_209_600,
            refresh_idle_secs: 604_800,
            refresh_reuse_grace_secs: 0,
            leeway_secs: 30,
            tunnel_leeway_secs: 30,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct AccountsFile {
    pub require_email_verification: bool,
    pub verify_token_ttl_secs: u64,
    pub reset_token_ttl_secs: u64,
    /// How recent a sign-in must be for sensitive changes (CONTRACT 8.6).
    pub reauth_secs: u64,
}

impl Default for AccountsFile {
    fn default() -> Self {
        Self {
            require_email_verification: false,
            verify_token_ttl_secs: 86_400,
            reset_token_ttl_secs: 1_800,
            reauth_secs: 300,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct MailFile {
    pub transport: String,
    pub from: String,
    pub smtp_host: String,
    pub smtp_port: u16,
    pub smtp_security: String,
    pub link_base_url: String,
    pub smtp_timeout_secs: u64,
    pub max_attempts: u32,
    pub retry_base_secs: u64,
    /// Extra PEM roots for the SMTP server's certificate (tests, private CAs).
    pub smtp_ca_file: String,
    /// Mail that failed for good is kept this long (for an operator to
    /// see), then removed by the maintenance sweep.
    pub failed_retention_secs: u64,
}

impl Default for MailFile {
    fn default() -> Self {
        Self {
            transport: "log".into(),
            from: "Portcullis <no-reply@localhost>".into(),
            smtp_host: "127.0.0.1".into(),
            smtp_port: 25,
            smtp_security: "none".into(),
            link_base_url: "https://localhost:8443".into(),
            smtp_timeout_secs: 10,
            max_attempts: 8,
            retry_base_secs: 5,
            smtp_ca_file: String::new(),
            failed_retention_secs: 30 * 86_400,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct ThrottleFile {
    pub auth_per_minute: u32,
    pub max_failed_logins: u32,
    pub lockout_secs: u64,
    pub failure_window_secs: u64,
    /// IPv6 clients are throttled per network of this prefix length.
    pub ipv6_prefix_len: u32,
}

impl Default for ThrottleFile {
    fn default() -> Self {
        Self {
            auth_per_minute: 20,
            max_failed_logins: 5,
            lockout_secs: 300,
            failure_window_secs: 900,
            ipv6_prefix_len: 64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct LimitsFile {
    pub max_body_bytes: usize,
    pub upstream_connect_timeout_secs: u64,
    pub upstream_read_timeout_secs: u64,
    pub downstream_read_timeout_secs: u64,
    /// A write to a client that makes no progress for this long ends the
    /// connection (a client that stops reading: slow-read).
    pub downstream_write_timeout_secs: u64,
    /// An HTTP/2 connection with no stream for this long is closed.
    pub h2_idle_timeout_secs: u64,
    pub max_header_count: usize,
    pub max_header_bytes: usize,
    /// Client connections open at once over the public listeners.
    pub max_connections: usize,
    /// The longest an upgraded connection (WebSocket) opened with an API
    /// key may stay open.
    pub max_api_key_tunnel_secs: u64,
}

impl Default for LimitsFile {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            upstream_connect_timeout_secs: 5,
            upstream_read_timeout_secs: 30,
            downstream_read_timeout_secs: 15,
            downstream_write_timeout_secs: 30,
            h2_idle_timeout_secs: 60,
            max_header_count: 100,
            max_header_bytes: 16 * 1024,
            max_connections: 10_000,
            max_api_key_tunnel_secs: 3600,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct PasswordsFile {
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// 0 = one per two cores (at least one).
    pub max_concurrent_hashes: usize,
    /// Hash requests that may wait for a slot; beyond that, 503.
    pub max_queued_hashes: usize,
}

impl Default for PasswordsFile {
    fn default() -> Self {
        Self {
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            max_concurrent_hashes: 0,
            max_queued_hashes: 32,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct LogFile {
    pub format: String,
    pub level: String,
    pub audit_file: String,
    /// One line per proxied request (target `access`).
    pub access_log: bool,
    /// Write the access lines to this file instead of the main log.
    pub access_file: String,
    /// Store audit events as a hash chain (CONTRACT 8.5).
    pub audit_chain: bool,
    /// Audit records older than this are cut off behind a signed
    /// checkpoint (0 = keep forever).
    pub audit_retention_days: u64,
}

impl Default for LogFile {
    fn default() -> Self {
        Self {
            format: "human".into(),
            level: "info".into(),
            audit_file: String::new(),
            access_log: true,
            access_file: String::new(),
            audit_chain: true,
            audit_retention_days: 0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct StorageFile {
    /// "sled" (embedded, the default) or "postgres".
    pub backend: String,
    /// `postgres://…` for the postgres backend (PORTCULLIS_DATABASE_URL
    /// overrides it).
    pub url: String,
    /// PEM file of the CA(s) that sign the database server's certificate,
    /// besides the public web roots.
    pub ca_file: String,
    /// sled's page cache, in MiB (sled's own default is 1 GiB).
    pub cache_mb: u64,
}

impl Default for StorageFile {
    fn default() -> Self {
        Self {
            backend: "sled".into(),
            url: String::new(),
            ca_file: String::new(),
            cache_mb: 64,
        }
    }
}

/// Browser users: the login portal, cookie sessions, CSRF and CORS.
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct BrowserFile {
    /// Cookie sessions, the portal under `/auth/ui/` and the redirect of
    /// unauthenticated browser requests to it.
    pub enabled: bool,
    /// Exact origins (`https://app.example.com`) trusted for CORS on
    /// `/auth/*` and for the CSRF Origin check, besides the gateway's own.
    pub allowed_origins: Vec<String>,
    /// Name of the session cookie (always `__Host-` prefixed).
    pub cookie_name: String,
    /// How long a passkey ceremony may take, in seconds.
    pub passkey_timeout_secs: u64,
    /// "example.test": one sign-in for every host under it (the cookie
    /// becomes `__Secure-` with that `Domain`); "" keeps the `__Host-` cookie.
    pub cookie_domain: String,
}

impl Default for BrowserFile {
    fn default() -> Self {
        Self {
            enabled: false,
            allowed_origins: vec![],
            cookie_name: "__Host-portcullis".into(),
            passkey_timeout_secs: 300,
            cookie_domain: String::new(),
        }
    }
}

/// `[admin_console]`: the user administration pages under `/auth/ui/admin/`.
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct AdminConsoleFile {
    /// Serve the console (needs `browser.enabled`).
    pub enabled: bool,
    /// The role a signed-in user must hold to use it.
    pub role: String,
    /// And only from a session that signed in with a second factor
    /// (`amr` holds `otp` or `webauthn`).
    pub require_mfa: bool,
}

impl Default for AdminConsoleFile {
    fn default() -> Self {
        Self {
            enabled: false,
            role: "admin".into(),
            require_mfa: true,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct DemoFile {
    /// Address of the built-in echo upstream; "" (the default) disables it.
    pub echo_listen: String,
}

#[derive(Debug, Deserialize)]
pub struct RouteFile {
    pub prefix: String,
    pub upstream: UpstreamFile,
    #[serde(default = "default_auth")]
    pub auth: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Proxied requests per minute per verified user (the token's `sub`),
    /// or per client IP when there is no verified identity; 0 = no limit.
    #[serde(default)]
    pub rate_per_minute: u32,
    /// Strip `;…` path parameters instead of refusing them.
    #[serde(default)]
    pub strip_path_params: bool,
    /// Pass the caller's `Authorization` header upstream; unset = false on
    /// public routes, true elsewhere.
    #[serde(default)]
    pub forward_authorization: Option<bool>,
    /// Tokens need a second factor (`amr` "otp" or "webauthn").
    #[serde(default)]
    pub mfa: bool,
    /// API keys need one of these scopes on this route.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// "" = any host; `app.example.test` or `*.example.test` (one label).
    #[serde(default)]
    pub host: String,
    /// [] = every method; else only these.
    #[serde(default)]
    pub methods: Vec<String>,
    /// On a required route, these methods pass without identity.
    #[serde(default)]
    pub public_methods: Vec<String>,
    /// Client networks (CIDRs) allowed on this route; [] = any.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Every one of these roles is needed (beside `roles`).
    #[serde(default)]
    pub roles_all: Vec<String>,
    /// "mon-fri 09:00-17:00 Europe/Berlin"; "" = always.
    #[serde(default)]
    pub schedule: String,
    /// The upstream also receives `X-User-Assertion` (CONTRACT 8.3).
    #[serde(default)]
    pub identity_assertion: bool,
    /// The assertion's `aud`; "" = the route's upstream origin.
    #[serde(default)]
    pub assertion_audience: String,
}

fn default_auth() -> String {
    "required".into()
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum UpstreamFile {
    One(String),
    Many(Vec<String>),
}

/// One `[[identity_providers]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct IdentityProviderFile {
    pub id: String,
    pub kind: String,
    pub display_name: String,
    pub issuer: String,
    pub authorize_url: String,
    pub token_url: String,
    pub userinfo_url: String,
    pub client_id: String,
    pub client_secret_env: String,
    pub scopes: Vec<String>,
    pub subject_claim: String,
    pub email_claim: String,
    pub email_verified_claim: String,
    pub allow_signup: bool,
    pub link_by_email: bool,
    pub roles_claim: String,
    pub role_map: std::collections::BTreeMap<String, String>,
    pub trust_mfa: bool,
    pub ca_file: String,
    pub redirect_uri: String,
}

impl Default for IdentityProviderFile {
    fn default() -> Self {
        Self {
            id: String::new(),
            kind: String::new(),
            display_name: String::new(),
            issuer: String::new(),
            authorize_url: String::new(),
            token_url: String::new(),
            userinfo_url: String::new(),
            client_id: String::new(),
            client_secret_env: String::new(),
            scopes: vec!["openid".into(), "email".into(), "profile".into()],
            subject_claim: "sub".into(),
            email_claim: "email".into(),
            email_verified_claim: "email_verified".into(),
            allow_signup: true,
            link_by_email: false,
            roles_claim: String::new(),
            role_map: std::collections::BTreeMap::new(),
            trust_mfa: false,
            ca_file: String::new(),
            redirect_uri: String::new(),
        }
    }
}

/// `[oidc_provider]` (CONTRACT 8.2): the keys the provider's signing keys
/// and the identity assertion (8.3) need.
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct OidcProviderFile {
    pub enabled: bool,
    /// "" = `mail.link_base_url`.
    pub issuer: String,
    /// "RS256" | "ES256" | "EdDSA".
    pub signing_alg: String,
    pub code_ttl_secs: u64,
    pub access_ttl_secs: u64,
    pub clients: Vec<OidcClientFile>,
}

impl Default for OidcProviderFile {
    fn default() -> Self {
        Self {
            enabled: false,
            issuer: String::new(),
            signing_alg: "RS256".into(),
            code_ttl_secs: 60,
            access_ttl_secs: 900,
            clients: vec![],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct OidcClientFile {
    pub client_id: String,
    pub client_secret_env: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub backchannel_logout_uri: String,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub consent: bool,
}

impl Default for OidcClientFile {
    fn default() -> Self {
        Self {
            client_id: String::new(),
            client_secret_env: String::new(),
            redirect_uris: vec![],
            post_logout_redirect_uris: vec![],
            backchannel_logout_uri: String::new(),
            scopes: ["openid", "email", "profile", "roles"]
                .map(String::from)
                .to_vec(),
            roles: vec![],
            consent: false,
        }
    }
}

/// One `[[webhooks]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct WebhookFile {
    pub url: String,
    pub events: Vec<String>,
    pub secret_env: String,
    pub ca_file: String,
    /// The bound on one delivery attempt.
    pub timeout_secs: u64,
}

impl Default for WebhookFile {
    fn default() -> Self {
        Self {
            url: String::new(),
            events: vec![],
            secret_env: String::new(),
            ca_file: String::new(),
            timeout_secs: 10,
        }
    }
}
