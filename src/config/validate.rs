//! One validation function per section of `gateway.toml`: each checks its
//! section, pushes every problem (naming its key) and yields the internal
//! config of that section. [`validate`] runs them all.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::file::{self, FileConfig};
use super::*;

/// Turn the file model and the environment into the internal [`Config`],
/// pushing every problem found.
pub(super) fn validate(
    mut f: FileConfig,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<String>,
) -> Config {
    let (server, demo_echo) = server(&f, p);
    let routes = super::routes::validate_routes(f.routes.take(), p);
    let storage = storage(
        &f.storage,
        env("PORTCULLIS_DATABASE_URL"),
        &server.data_dir,
        p,
    );
    let mail = mail(&f, env, p);
    let identity_providers = super::providers::validate_providers(
        f.identity_providers.take().unwrap_or_default(),
        &mail.link_base_url,
        env,
        p,
    );
    Config {
        tokens: tokens(&f, env, p),
        accounts: accounts(&f, p),
        mail,
        throttle: throttle(&f, p),
        limits: limits(&f, p),
        passwords: passwords(&f, p),
        log: log(&f, p),
        server,
        demo_echo,
        route_table: super::routes::RouteTable::build(&routes),
        routes,
        storage,
        browser: browser(&f.browser, p),
        identity_providers,
        oidc_provider: oidc_provider(&f, env, p),
        webhooks: super::webhooks::validate(f.webhooks.take(), env, p),
        admin_console: admin_console(&f.admin_console, f.browser.enabled, p),
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

/// `[server]` (and `demo.echo_listen`, which must not overlap a listener).
fn server(f: &FileConfig, p: &mut Vec<String>) -> (ServerConfig, Option<SocketAddr>) {
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
    let server = ServerConfig {
        listen,
        tls_listen,
        tls_cert: PathBuf::from(&s.tls_cert),
        tls_key: PathBuf::from(&s.tls_key),
        admin_listen,
        data_dir: PathBuf::from(&s.data_dir),
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
    };
    (server, demo_echo)
}

/// `[tokens]`, with the secrets from the environment.
fn tokens(
    f: &FileConfig,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<String>,
) -> TokenConfig {
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
    // accepted with a warning at start (see `tokens::keys`), since refusing it
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
    TokenConfig {
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
    }
}

/// `[accounts]`.
fn accounts(f: &FileConfig, p: &mut Vec<String>) -> AccountsConfig {
    let a = &f.accounts;
    positive("accounts.verify_token_ttl_secs", a.verify_token_ttl_secs, p);
    positive("accounts.reset_token_ttl_secs", a.reset_token_ttl_secs, p);
    positive("accounts.reauth_secs", a.reauth_secs, p);
    AccountsConfig {
        require_email_verification: a.require_email_verification,
        verify_token_ttl_secs: a.verify_token_ttl_secs,
        reset_token_ttl_secs: a.reset_token_ttl_secs,
        reauth_secs: a.reauth_secs,
    }
}

/// `[mail]`, with the SMTP credentials from the environment.
fn mail(f: &FileConfig, env: &dyn Fn(&str) -> Option<String>, p: &mut Vec<String>) -> MailConfig {
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
    MailConfig {
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
    }
}

/// `[throttle]`.
fn throttle(f: &FileConfig, p: &mut Vec<String>) -> ThrottleConfig {
    let th = &f.throttle;
    if th.max_failed_logins > 0 {
        positive("throttle.lockout_secs", th.lockout_secs, p);
    }
    positive("throttle.failure_window_secs", th.failure_window_secs, p);
    if th.ipv6_prefix_len == 0 || th.ipv6_prefix_len > 128 {
        p.push("throttle.ipv6_prefix_len: must be between 1 and 128".into());
    }
    ThrottleConfig {
        auth_per_minute: th.auth_per_minute,
        max_failed_logins: th.max_failed_logins,
        lockout_secs: th.lockout_secs,
        failure_window_secs: th.failure_window_secs,
        ipv6_prefix_len: th.ipv6_prefix_len.clamp(1, 128) as u8,
    }
}

/// `[limits]`.
fn limits(f: &FileConfig, p: &mut Vec<String>) -> LimitsConfig {
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
    positive(
        "limits.downstream_write_timeout_secs",
        l.downstream_write_timeout_secs,
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
    LimitsConfig {
        max_body_bytes: l.max_body_bytes,
        upstream_connect_timeout_secs: l.upstream_connect_timeout_secs,
        upstream_read_timeout_secs: l.upstream_read_timeout_secs,
        downstream_read_timeout_secs: l.downstream_read_timeout_secs,
        downstream_write_timeout_secs: l.downstream_write_timeout_secs,
        h2_idle_timeout_secs: l.h2_idle_timeout_secs,
        max_header_count: l.max_header_count,
        max_header_bytes: l.max_header_bytes,
        max_connections: l.max_connections,
        max_api_key_tunnel_secs: l.max_api_key_tunnel_secs,
    }
}

/// `[passwords]`.
fn passwords(f: &FileConfig, p: &mut Vec<String>) -> PasswordConfig {
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
    PasswordConfig {
        argon2_memory_kib: pw.argon2_memory_kib,
        argon2_iterations: pw.argon2_iterations,
        argon2_parallelism: pw.argon2_parallelism,
        max_concurrent_hashes,
        max_queued_hashes: pw.max_queued_hashes,
    }
}

/// `[log]`.
fn log(f: &FileConfig, p: &mut Vec<String>) -> LogConfig {
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
    LogConfig {
        format,
        level: f.log.level.clone(),
        audit_file: (!f.log.audit_file.is_empty()).then(|| PathBuf::from(&f.log.audit_file)),
        access_log: f.log.access_log,
        access_file: (!f.log.access_file.is_empty()).then(|| PathBuf::from(&f.log.access_file)),
        audit_chain: f.log.audit_chain,
        audit_retention_days: f.log.audit_retention_days,
    }
}

/// `[browser]`: every allowed origin must be exactly an origin.
fn browser(b: &file::BrowserFile, p: &mut Vec<String>) -> BrowserConfig {
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
    let name_ok = b.cookie_name.starts_with(crate::names::OWN_COOKIE_PREFIX)
        && b.cookie_name.len() <= 64
        && b.cookie_name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'));
    if !name_ok {
        p.push(format!(
            "browser.cookie_name: '{}' must start with {} and use only letters, digits, '-' and '_'",
            b.cookie_name.escape_debug(),
            crate::names::OWN_COOKIE_PREFIX
        ));
    }
    if b.passkey_timeout_secs == 0 || b.passkey_timeout_secs > 3600 {
        p.push("browser.passkey_timeout_secs: must be between 1 and 3600".into());
    }
    // One sign-in across subdomains: a cookie with a `Domain` cannot be
    // `__Host-`, so it becomes `__Secure-` (same namespace after the prefix,
    // stripped from upstream requests all the same).
    let cookie_domain = if b.cookie_domain.is_empty() {
        None
    } else {
        let d = b
            .cookie_domain
            .strip_prefix('.')
            .unwrap_or(&b.cookie_domain);
        let ok = super::normalize_host(d).is_some_and(|h| h == d)
            && d.contains('.')
            && !d.starts_with('[')
            && d.parse::<std::net::IpAddr>().is_err();
        if !ok {
            p.push(format!(
                "browser.cookie_domain: '{}' is not a lower-case domain name such as \"example.test\"",
                b.cookie_domain.escape_debug()
            ));
        }
        ok.then(|| d.to_string())
    };
    let cookie_name = match &cookie_domain {
        Some(_) => b.cookie_name.replacen("__Host-", "__Secure-", 1),
        None => b.cookie_name.clone(),
    };
    BrowserConfig {
        enabled: b.enabled,
        allowed_origins,
        cookie_domain,
        cookie_name,
        passkey_timeout_secs: b.passkey_timeout_secs,
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

/// `[oidc_provider]`: the keys the signing keys and the assertion need.
fn oidc_provider(
    f: &FileConfig,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<String>,
) -> OidcProviderConfig {
    let o = &f.oidc_provider;
    let signing_alg = match o.signing_alg.as_str() {
        "RS256" => ProviderAlgorithm::Rs256,
        "ES256" => ProviderAlgorithm::Es256,
        "EdDSA" => ProviderAlgorithm::EdDsa,
        other => {
            p.push(format!(
                "oidc_provider.signing_alg: '{}' is not supported (use \"RS256\", \"ES256\" or \"EdDSA\")",
                other.escape_debug()
            ));
            ProviderAlgorithm::Rs256
        }
    };
    if has_ctl(&o.issuer) {
        p.push("oidc_provider.issuer: must be a printable string".into());
    }
    let issuer = match o.issuer.as_str() {
        "" => f.mail.link_base_url.trim_end_matches('/').to_string(),
        i => i.to_string(),
    };
    let (code_ttl_secs, access_ttl_secs, clients) = super::oidc_provider::validate(o, env, p);
    OidcProviderConfig {
        enabled: o.enabled,
        issuer,
        signing_alg,
        code_ttl_secs,
        access_ttl_secs,
        clients,
    }
}

/// `[admin_console]`: a valid role, and the portal it lives in.
fn admin_console(
    c: &file::AdminConsoleFile,
    browser_enabled: bool,
    p: &mut Vec<String>,
) -> AdminConsoleConfig {
    if !crate::names::valid_role(&c.role) {
        p.push(format!(
            "admin_console.role: '{}' is not a valid role name",
            c.role.escape_debug()
        ));
    }
    if c.enabled && !browser_enabled {
        p.push(
            "admin_console.enabled: the console is part of the portal: set browser.enabled = true"
                .into(),
        );
    }
    AdminConsoleConfig {
        enabled: c.enabled,
        role: c.role.clone(),
        require_mfa: c.require_mfa,
    }
}
