//! Configuration: the file model (`file`), the environment overlay for
//! secrets, and one `validate` pass that turns both into the internal
//! [`Config`]. Every problem is collected, so `check-config` can print them
//! all at once; a config that has any problem never starts a gateway.

mod file;

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use file::{FileConfig, UpstreamFile};

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
    /// Where the state lives (`data_dir/db` in sled unless `[storage]` or
    /// `PORTCULLIS_DATABASE_URL` say otherwise).
    pub storage: Storage,
    pub browser: BrowserConfig,
}

/// `[browser]`: cookie sessions and the portal (see `auth::browser`).
#[derive(Debug, Clone)]
pub struct BrowserConfig {
    pub enabled: bool,
    /// Exact serialized origins (`scheme://host[:port]`), no trailing slash.
    pub allowed_origins: Vec<String>,
    pub cookie_name: String,
    pub passkey_timeout_secs: u64,
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
        let cfg = validate(file, env, &mut problems);
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(problems))
        }
    }
}

fn parse_listen(key: &str, v: &str, problems: &mut Vec<String>) -> Option<SocketAddr> {
    if v.is_empty() {
        return None;
    }
    match v.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(format!(
                "{key}: '{v}' is not an IP:port socket address (use \"\" to disable)"
            ));
            None
        }
    }
}

fn addrs_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn positive(key: &str, v: u64, problems: &mut Vec<String>) {
    if v == 0 {
        problems.push(format!("{key}: must be greater than 0"));
    }
}

fn has_ctl(s: &str) -> bool {
    s.chars().any(|c| c.is_control())
}

fn validate(f: FileConfig, env: &dyn Fn(&str) -> Option<String>, p: &mut Vec<String>) -> Config {
    // --- server
    let s = &f.server;
    let listen = parse_listen("server.listen", &s.listen, p);
    let tls_listen = parse_listen("server.tls_listen", &s.tls_listen, p);
    let admin_listen = parse_listen("server.admin_listen", &s.admin_listen, p);
    let demo_echo = parse_listen("demo.echo_listen", &f.demo.echo_listen, p);
    if s.listen.is_empty() && s.tls_listen.is_empty() {
        p.push("server.listen: no public listener: set server.listen or server.tls_listen".into());
    }
    let named = [
        ("server.listen", listen),
        ("server.tls_listen", tls_listen),
        ("server.admin_listen", admin_listen),
        ("demo.echo_listen", demo_echo),
    ];
    for i in 0..named.len() {
        for j in i + 1..named.len() {
            if let (Some(a), Some(b)) = (named[i].1, named[j].1) {
                if addrs_overlap(a, b) {
                    p.push(format!(
                        "{}: {a} overlaps {} ({b}); every listener needs its own address",
                        named[j].0, named[i].0
                    ));
                }
            }
        }
    }
    if tls_listen.is_some() {
        if s.tls_cert.is_empty() {
            p.push("server.tls_cert: required when server.tls_listen is set".into());
        }
        if s.tls_key.is_empty() {
            p.push("server.tls_key: required when server.tls_listen is set".into());
        }
        if !s.tls_cert.is_empty() && !s.tls_key.is_empty() {
            let cert_exists = Path::new(&s.tls_cert).exists();
            let key_exists = Path::new(&s.tls_key).exists();
            if cert_exists && !key_exists {
                p.push(format!(
                    "server.tls_key: '{}' is missing while server.tls_cert exists (give both files, or neither to generate a dev pair)",
                    s.tls_key
                ));
            } else if key_exists && !cert_exists {
                p.push(format!(
                    "server.tls_cert: '{}' is missing while server.tls_key exists (give both files, or neither to generate a dev pair)",
                    s.tls_cert
                ));
            } else if cert_exists && key_exists {
                if let Err(e) =
                    crate::tls::check_pair(Path::new(&s.tls_cert), Path::new(&s.tls_key))
                {
                    p.push(format!("server.tls_cert: {e}"));
                }
            }
        }
    }
    if s.data_dir.is_empty() {
        p.push("server.data_dir: must not be empty".into());
    }
    let mut trusted_proxies = Vec::new();
    for (i, c) in s.trusted_proxies.iter().enumerate() {
        match c.parse::<IpNet>() {
            Ok(n) => trusted_proxies.push(n.trunc()),
            Err(_) => match c.parse::<IpAddr>() {
                Ok(a) => trusted_proxies.push(IpNet::from(a)),
                Err(_) => p.push(format!(
                    "server.trusted_proxies[{i}]: '{c}' is not a CIDR or IP address"
                )),
            },
        }
    }
    let client_ip_header = match s.client_ip_header.as_str() {
        "x-forwarded-for" => ClientIpHeader::XForwardedFor,
        "forwarded" => ClientIpHeader::Forwarded,
        "x-real-ip" => ClientIpHeader::XRealIp,
        other => {
            p.push(format!(
                "server.client_ip_header: '{other}' is not \"x-forwarded-for\", \"forwarded\" or \"x-real-ip\""
            ));
            ClientIpHeader::XForwardedFor
        }
    };
    if s.threads == 0 || s.threads > 256 {
        p.push("server.threads: must be between 1 and 256".into());
    }
    if s.auth_threads > 256 {
        p.push("server.auth_threads: must be between 0 (one per core) and 256".into());
    }
    if s.auth_nice > 19 {
        p.push("server.auth_nice: must be between 0 and 19".into());
    }

    // --- tokens
    let t = &f.tokens;
    let algorithm = match t.algorithm.as_str() {
        "HS256" => TokenAlgorithm::Hs256,
        "EdDSA" => TokenAlgorithm::EdDsa,
        other => {
            p.push(format!(
                "tokens.algorithm: '{other}' is not supported (use \"HS256\" or \"EdDSA\")"
            ));
            TokenAlgorithm::Hs256
        }
    };
    if t.issuer.is_empty() || has_ctl(&t.issuer) {
        p.push("tokens.issuer: must be a non-empty printable string".into());
    }
    if t.audience.is_empty() || has_ctl(&t.audience) {
        p.push("tokens.audience: must be a non-empty printable string".into());
    }
    positive("tokens.access_ttl_secs", t.access_ttl_secs, p);
    positive("tokens.refresh_ttl_secs", t.refresh_ttl_secs, p);
    positive("tokens.refresh_idle_secs", t.refresh_idle_secs, p);
    if t.access_ttl_secs > 86_400 {
        p.push("tokens.access_ttl_secs: at most 86400 (one day); use refresh tokens".into());
    }
    if t.leeway_secs > 300 {
        p.push("tokens.leeway_secs: at most 300".into());
    }
    if t.tunnel_leeway_secs > 86_400 {
        p.push("tokens.tunnel_leeway_secs: at most 86400 (one day)".into());
    }
    // A short operator-supplied key is the operator's choice: it is
    // accepted with a warning at start (see `auth::keys`), since refusing it
    // would leave a gateway that will not start on a working key.
    let jwt_secret = env("PORTCULLIS_JWT_SECRET").filter(|v| !v.is_empty());
    let refresh_secret = env("PORTCULLIS_REFRESH_SECRET").filter(|v| !v.is_empty());
    let mfa_key = env("PORTCULLIS_MFA_KEY").filter(|v| !v.is_empty());
    if mfa_key.as_ref().is_some_and(|v| v.len() < 32) {
        p.push("PORTCULLIS_MFA_KEY: must be at least 32 bytes".into());
    }
    if refresh_secret.as_ref().is_some_and(|v| v.len() < 32) {
        p.push("PORTCULLIS_REFRESH_SECRET: must be at least 32 bytes".into());
    }

    // --- accounts
    let a = &f.accounts;
    positive("accounts.verify_token_ttl_secs", a.verify_token_ttl_secs, p);
    positive("accounts.reset_token_ttl_secs", a.reset_token_ttl_secs, p);
    positive("accounts.reauth_secs", a.reauth_secs, p);

    // --- mail
    let m = &f.mail;
    let transport = match m.transport.as_str() {
        "log" => MailTransportKind::Log,
        "smtp" => MailTransportKind::Smtp,
        other => {
            p.push(format!(
                "mail.transport: '{other}' is not \"smtp\" or \"log\""
            ));
            MailTransportKind::Log
        }
    };
    let smtp_security = match m.smtp_security.as_str() {
        "none" => SmtpSecurity::None,
        "starttls" => SmtpSecurity::StartTls,
        "tls" => SmtpSecurity::Tls,
        other => {
            p.push(format!(
                "mail.smtp_security: '{other}' is not \"none\", \"starttls\" or \"tls\""
            ));
            SmtpSecurity::None
        }
    };
    if m.from.parse::<lettre::message::Mailbox>().is_err() || has_ctl(&m.from) {
        p.push(format!(
            "mail.from: '{}' is not a valid mailbox",
            m.from.escape_debug()
        ));
    }
    if m.smtp_host.is_empty() || has_ctl(&m.smtp_host) {
        p.push("mail.smtp_host: must be a host name or address".into());
    }
    if m.smtp_port == 0 {
        p.push("mail.smtp_port: must not be 0".into());
    }
    let link_base_url = m.link_base_url.trim_end_matches('/').to_string();
    match url::Url::parse(&m.link_base_url) {
        Ok(u)
            if (u.scheme() == "https" || u.scheme() == "http")
                && u.host().is_some()
                && u.query().is_none()
                && u.fragment().is_none() => {}
        _ => p.push(format!(
            "mail.link_base_url: '{}' is not an absolute http(s) URL without query or fragment",
            m.link_base_url
        )),
    }
    positive("mail.smtp_timeout_secs", m.smtp_timeout_secs, p);
    if m.max_attempts == 0 {
        p.push("mail.max_attempts: must be greater than 0".into());
    }
    positive("mail.retry_base_secs", m.retry_base_secs, p);
    let smtp_ca_file = if m.smtp_ca_file.is_empty() {
        None
    } else {
        if !Path::new(&m.smtp_ca_file).is_file() {
            p.push(format!(
                "mail.smtp_ca_file: '{}' does not exist",
                m.smtp_ca_file
            ));
        }
        Some(PathBuf::from(&m.smtp_ca_file))
    };

    // --- throttle
    let th = &f.throttle;
    if th.max_failed_logins > 0 {
        positive("throttle.lockout_secs", th.lockout_secs, p);
    }
    positive("throttle.failure_window_secs", th.failure_window_secs, p);
    if th.ipv6_prefix_len == 0 || th.ipv6_prefix_len > 128 {
        p.push("throttle.ipv6_prefix_len: must be between 1 and 128".into());
    }

    // --- limits
    let l = &f.limits;
    if l.max_body_bytes < 1024 || l.max_body_bytes > 16 * 1024 * 1024 {
        p.push("limits.max_body_bytes: must be between 1024 and 16777216".into());
    }
    positive(
        "limits.upstream_connect_timeout_secs",
        l.upstream_connect_timeout_secs,
        p,
    );
    positive(
        "limits.upstream_read_timeout_secs",
        l.upstream_read_timeout_secs,
        p,
    );
    positive(
        "limits.downstream_read_timeout_secs",
        l.downstream_read_timeout_secs,
        p,
    );
    positive("limits.h2_idle_timeout_secs", l.h2_idle_timeout_secs, p);
    if l.max_header_count < 10 {
        p.push("limits.max_header_count: must be at least 10".into());
    }
    if l.max_header_bytes < 1024 {
        p.push("limits.max_header_bytes: must be at least 1024".into());
    }
    if l.max_connections < 10 || l.max_connections > 1_000_000 {
        p.push("limits.max_connections: must be between 10 and 1000000".into());
    }
    if l.max_api_key_tunnel_secs == 0 || l.max_api_key_tunnel_secs > 604_800 {
        p.push("limits.max_api_key_tunnel_secs: must be between 1 and 604800 (one week)".into());
    }

    // --- passwords
    let pw = &f.passwords;
    if pw.argon2_memory_kib < 19_456 {
        p.push("passwords.argon2_memory_kib: below the OWASP minimum of 19456".into());
    }
    if pw.argon2_iterations < 2 {
        p.push("passwords.argon2_iterations: below the OWASP minimum of 2".into());
    }
    if pw.argon2_parallelism == 0 || pw.argon2_parallelism > 16 {
        p.push("passwords.argon2_parallelism: must be between 1 and 16".into());
    }
    // By default one argon2 job per two cores: a login flood can then take
    // at most half the CPU, and proxied traffic keeps the rest.
    let max_concurrent_hashes = if pw.max_concurrent_hashes == 0 {
        (std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            / 2)
        .max(1)
    } else {
        pw.max_concurrent_hashes
    };

    // --- log
    let format = match f.log.format.as_str() {
        "human" => LogFormat::Human,
        "json" => LogFormat::Json,
        other => {
            p.push(format!(
                "log.format: '{other}' is not \"human\" or \"json\""
            ));
            LogFormat::Human
        }
    };
    if tracing_subscriber::EnvFilter::try_new(&f.log.level).is_err() {
        p.push(format!(
            "log.level: '{}' is not a valid filter",
            f.log.level
        ));
    }

    // --- routes
    let route_files = f.routes.unwrap_or_else(|| {
        vec![file::RouteFile {
            prefix: "/".into(),
            upstream: UpstreamFile::One("http://127.0.0.1:8081".into()),
            auth: "required".into(),
            roles: vec![],
            rate_per_minute: 0,
            strip_path_params: false,
            forward_authorization: None,
            mfa: false,
            scopes: vec![],
        }]
    });
    let mut routes: Vec<Route> = Vec::new();
    for (i, r) in route_files.into_iter().enumerate() {
        let key = format!("routes[{i}]");
        if !r.prefix.starts_with('/') {
            p.push(format!("{key}.prefix: '{}' must start with '/'", r.prefix));
        } else if crate::proxy::path::normalize(&r.prefix).as_deref() != Ok(r.prefix.as_str()) {
            p.push(format!(
                "{key}.prefix: '{}' is not a normalized path",
                r.prefix
            ));
        }
        if r.prefix.starts_with("/auth/")
            || r.prefix == "/auth"
            || r.prefix.starts_with("/.well-known")
        {
            p.push(format!(
                "{key}.prefix: '{}' is reserved for the gateway",
                r.prefix
            ));
        }
        if routes.iter().any(|o| o.prefix == r.prefix) {
            p.push(format!("{key}.prefix: '{}' is defined twice", r.prefix));
        }
        let auth = match r.auth.as_str() {
            "required" => AuthMode::Required,
            "optional" => AuthMode::Optional,
            "public" => AuthMode::Public,
            other => {
                p.push(format!(
                    "{key}.auth: '{other}' is not \"required\", \"optional\" or \"public\""
                ));
                AuthMode::Required
            }
        };
        for (j, role) in r.roles.iter().enumerate() {
            if !crate::auth::valid_role(role) {
                p.push(format!(
                    "{key}.roles[{j}]: '{role}' is not a valid role name"
                ));
            }
        }
        let list = match r.upstream {
            UpstreamFile::One(u) => vec![u],
            UpstreamFile::Many(v) => v,
        };
        if list.is_empty() {
            p.push(format!("{key}.upstream: at least one upstream is needed"));
        }
        let mut upstreams = Vec::new();
        for (j, u) in list.iter().enumerate() {
            match parse_upstream(u) {
                Ok(up) => upstreams.push(up),
                Err(e) => p.push(format!("{key}.upstream[{j}]: {e}")),
            }
        }
        for (j, scope) in r.scopes.iter().enumerate() {
            if !crate::auth::apikeys::valid_scope(scope) {
                p.push(format!(
                    "{key}.scopes[{j}]: '{scope}' is not a valid scope name"
                ));
            }
        }
        routes.push(Route {
            mfa: r.mfa,
            scopes: r.scopes,
            prefix: r.prefix,
            upstreams,
            auth,
            roles: r.roles,
            rate_per_minute: r.rate_per_minute,
            strip_path_params: r.strip_path_params,
            // A public upstream never asked for the caller's credentials.
            forward_authorization: r.forward_authorization.unwrap_or(auth != AuthMode::Public),
        });
    }
    // Longest prefix first, so matching is the first hit.
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));

    let data_dir = PathBuf::from(&s.data_dir);
    let storage = storage(&f.storage, env("PORTCULLIS_DATABASE_URL"), &data_dir, p);
    let browser = validate_browser(&f.browser, p);

    Config {
        server: ServerConfig {
            listen,
            tls_listen,
            tls_cert: PathBuf::from(&s.tls_cert),
            tls_key: PathBuf::from(&s.tls_key),
            admin_listen,
            data_dir,
            trusted_proxies,
            client_ip_header,
            threads: s.threads,
            work_stealing: s.work_stealing,
            grace_period_secs: s.grace_period_secs,
            auth_threads: if s.auth_threads == 0 {
                std::thread::available_parallelism().map_or(2, |n| n.get())
            } else {
                s.auth_threads
            },
            auth_nice: s.auth_nice,
        },
        tokens: TokenConfig {
            algorithm,
            issuer: t.issuer.clone(),
            audience: t.audience.clone(),
            access_ttl_secs: t.access_ttl_secs,
            refresh_ttl_secs: t.refresh_ttl_secs,
            refresh_idle_secs: t.refresh_idle_secs,
            refresh_reuse_grace_secs: t.refresh_reuse_grace_secs,
            leeway_secs: t.leeway_secs,
            tunnel_leeway_secs: t.tunnel_leeway_secs,
            jwt_secret: jwt_secret.map(Secret),
            refresh_secret: refresh_secret.map(Secret),
            mfa_key: mfa_key.map(Secret),
        },
        accounts: AccountsConfig {
            require_email_verification: a.require_email_verification,
            verify_token_ttl_secs: a.verify_token_ttl_secs,
            reset_token_ttl_secs: a.reset_token_ttl_secs,
            reauth_secs: a.reauth_secs,
        },
        mail: MailConfig {
            transport,
            from: m.from.clone(),
            smtp_host: m.smtp_host.clone(),
            smtp_port: m.smtp_port,
            smtp_security,
            smtp_username: env("PORTCULLIS_SMTP_USERNAME")
                .filter(|v| !v.is_empty())
                .map(Secret),
            smtp_password: env("PORTCULLIS_SMTP_PASSWORD")
                .filter(|v| !v.is_empty())
                .map(Secret),
            smtp_timeout_secs: m.smtp_timeout_secs,
            smtp_ca_file,
            link_base_url,
            max_attempts: m.max_attempts,
            retry_base_secs: m.retry_base_secs,
            failed_retention_secs: m.failed_retention_secs,
        },
        throttle: ThrottleConfig {
            auth_per_minute: th.auth_per_minute,
            max_failed_logins: th.max_failed_logins,
            lockout_secs: th.lockout_secs,
            failure_window_secs: th.failure_window_secs,
            ipv6_prefix_len: th.ipv6_prefix_len.clamp(1, 128) as u8,
        },
        limits: LimitsConfig {
            max_body_bytes: l.max_body_bytes,
            upstream_connect_timeout_secs: l.upstream_connect_timeout_secs,
            upstream_read_timeout_secs: l.upstream_read_timeout_secs,
            downstream_read_timeout_secs: l.downstream_read_timeout_secs,
            h2_idle_timeout_secs: l.h2_idle_timeout_secs,
            max_header_count: l.max_header_count,
            max_header_bytes: l.max_header_bytes,
            max_connections: l.max_connections,
            max_api_key_tunnel_secs: l.max_api_key_tunnel_secs,
        },
        passwords: PasswordConfig {
            argon2_memory_kib: pw.argon2_memory_kib,
            argon2_iterations: pw.argon2_iterations,
            argon2_parallelism: pw.argon2_parallelism,
            max_concurrent_hashes,
            max_queued_hashes: pw.max_queued_hashes,
        },
        log: LogConfig {
            format,
            level: f.log.level.clone(),
            audit_file: (!f.log.audit_file.is_empty()).then(|| PathBuf::from(&f.log.audit_file)),
        },
        demo_echo,
        routes,
        storage,
        browser,
    }
}

/// `[browser]`: every allowed origin must be exactly an origin.
fn validate_browser(b: &file::BrowserFile, p: &mut Vec<String>) -> BrowserConfig {
    let mut allowed_origins = Vec::new();
    for o in &b.allowed_origins {
        match url::Url::parse(o) {
            Ok(u)
                if (u.scheme() == "https" || u.scheme() == "http")
                    && u.host().is_some()
                    && u.origin().ascii_serialization() == *o =>
            {
                allowed_origins.push(o.clone())
            }
            _ => p.push(format!(
                "browser.allowed_origins: '{}' is not an exact origin (scheme://host[:port], no path or trailing slash)",
                o.escape_debug()
            )),
        }
    }
    // Every name under one fixed prefix: the proxy strips that namespace
    // from every request whatever `[browser]` says now, so a renamed or
    // disabled cookie never reaches an upstream (`browser::OWN_COOKIE_PREFIX`).
    let name_ok = b
        .cookie_name
        .starts_with(crate::auth::browser::OWN_COOKIE_PREFIX)
        && b.cookie_name.len() <= 64
        && b.cookie_name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'));
    if !name_ok {
        p.push(format!(
            "browser.cookie_name: '{}' must start with {} and use only letters, digits, '-' and '_'",
            b.cookie_name.escape_debug(),
            crate::auth::browser::OWN_COOKIE_PREFIX
        ));
    }
    if b.passkey_timeout_secs == 0 || b.passkey_timeout_secs > 3600 {
        p.push("browser.passkey_timeout_secs: must be between 1 and 3600".into());
    }
    BrowserConfig {
        enabled: b.enabled,
        allowed_origins,
        cookie_name: b.cookie_name.clone(),
        passkey_timeout_secs: b.passkey_timeout_secs,
    }
}

/// `http://host:port` or `https://host:port`, resolved once, here.
fn parse_upstream(u: &str) -> Result<Upstream, String> {
    let url = url::Url::parse(u).map_err(|_| format!("'{u}' is not a URL"))?;
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        s => return Err(format!("'{u}': scheme '{s}' is not http or https")),
    };
    if url.path() != "/" && !url.path().is_empty() {
        return Err(format!(
            "'{u}': an upstream is scheme://host:port, without a path"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!("'{u}': no query, fragment or credentials allowed"));
    }
    let host = url
        .host_str()
        .ok_or_else(|| format!("'{u}' has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| format!("'{u}' has no port"))?;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("'{u}': cannot resolve host '{host}'"))?;
    let authority = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or(&host)),
        None => url.host_str().unwrap_or(&host).to_string(),
    };
    Ok(Upstream {
        addr,
        tls,
        sni: host,
        authority,
    })
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

/// `[storage]`, with `PORTCULLIS_DATABASE_URL` overriding `storage.url`.
/// The URL's scheme picks the backend (`sled:PATH` or `postgres://…`); a
/// `storage.backend` that says otherwise is an error.
fn storage(
    f: &file::StorageFile,
    env_url: Option<String>,
    data_dir: &std::path::Path,
    p: &mut Vec<String>,
) -> Storage {
    let (url, from_env) = match env_url.filter(|v| !v.is_empty()) {
        Some(u) => (u, true),
        None => (f.url.clone(), false),
    };
    let key = if from_env {
        "PORTCULLIS_DATABASE_URL"
    } else {
        "storage.url"
    };
    let is_pg = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let sled_path = url
        .strip_prefix("sled://")
        .or_else(|| url.strip_prefix("sled:"));
    match f.backend.as_str() {
        "postgres" if url.is_empty() => {
            p.push("storage.url: the postgres backend needs a postgres://… URL (or PORTCULLIS_DATABASE_URL)".into());
        }
        "postgres" | "sled" => {}
        other => p.push(format!(
            "storage.backend: '{other}' is not \"sled\" or \"postgres\""
        )),
    }
    if is_pg {
        if f.backend == "sled" && !from_env && f.url == url {
            p.push("storage.url: a postgres URL needs storage.backend = \"postgres\"".into());
        }
        let ca_file = (!f.ca_file.is_empty()).then(|| PathBuf::from(&f.ca_file));
        if let Some(ca) = &ca_file {
            if !ca.is_file() {
                p.push(format!(
                    "storage.ca_file: '{}' is not a readable file",
                    ca.display()
                ));
            }
        }
        return Storage::Postgres {
            url: Secret(url),
            ca_file,
        };
    }
    if !f.ca_file.is_empty() {
        p.push("storage.ca_file: only the postgres backend uses it".into());
    }
    if !(1..=1 << 20).contains(&f.cache_mb) {
        p.push(format!(
            "storage.cache_mb: {} is not between 1 and 1048576 (MiB)",
            f.cache_mb
        ));
    }
    let cache_bytes = f.cache_mb.clamp(1, 1 << 20) << 20;
    if url.is_empty() {
        return Storage::Sled {
            path: data_dir.join("db"),
            cache_bytes,
        };
    }
    match sled_path {
        Some(path) if !path.is_empty() && f.backend != "postgres" => Storage::Sled {
            path: PathBuf::from(path),
            cache_bytes,
        },
        _ => {
            p.push(format!("{key}: expected postgres://… or sled:PATH"));
            Storage::Sled {
                path: data_dir.join("db"),
                cache_bytes,
            }
        }
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
