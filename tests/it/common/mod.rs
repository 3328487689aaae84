//! Shared test support: boots the real gateway (the same `portcullis::start`
//! the binary runs) on loopback ports from [`ports::free_port`] (outside the
//! ephemeral range, owned by this test process: see [`ports`]) with a temp
//! data dir, a real upstream HTTP app and, when asked, a real SMTP receiver.
//!
//! No test connects to a gateway before its admin listener answers
//! `/readyz` with 200 (every listener accepts, start-up is done, the store
//! answers): [`TestGateway`]'s boot and restart wait for it
//! ([`wait_ready`]), and so does [`bin::Served`] for the real binary.
#![allow(dead_code)]

pub mod bin;
pub mod http;
pub mod idp;
pub mod pg;
pub mod ports;
pub mod smtp;
pub mod totp;
pub mod upstream;
pub mod venv;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use portcullis::clock::{Clock, ManualClock};
use portcullis::{Config, GatewayHandle};
use serde_json::{json, Value};

pub use ports::free_port;

/// How long a gateway may take to become ready.
pub const READY_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `GET /readyz` on `admin` over a plain blocking socket: the status and
/// body, or `None` when nothing answers.
pub fn readyz_blocking(admin: SocketAddr) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    use std::time::Duration;
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Wait (bounded by `limit`) until the admin listener answers `/readyz`
/// with 200; `alive` says whether the gateway still runs (a stopped one
/// fails at once). Panics with the last answer otherwise.
pub fn wait_ready(admin: SocketAddr, limit: std::time::Duration, alive: &mut dyn FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    let mut last = None;
    loop {
        match readyz_blocking(admin) {
            Some((200, _)) => return,
            other => last = other.or(last),
        }
        assert!(alive(), "the gateway stopped before it was ready: {last:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "not ready within {limit:?}: {last:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// How to boot a test gateway.
pub struct Builder {
    /// Extra TOML appended to the generated `[server]`-less sections; use
    /// full section headers, e.g. "[throttle]\nauth_per_minute = 3\n".
    pub extra: String,
    /// Routes TOML; `{UP}` is replaced with the upstream URL.
    pub routes: String,
    pub with_smtp: bool,
    pub env: HashMap<String, String>,
    /// Extra lines for the `[server]` section.
    pub server_extra: String,
    /// Extra lines for the `[mail]` section.
    pub mail_extra: String,
    /// `(smtp_host, smtp_port)` of an SMTP server the test runs itself (e.g.
    /// a STARTTLS one): sets transport "smtp" without starting the harness's
    /// receiver (use with `with_smtp: false`).
    pub smtp_target: Option<(String, u16)>,
    /// `server.grace_period_secs`.
    pub grace_period_secs: u64,
    /// `mail.link_base_url`; `{TLS_PORT}` is replaced with the TLS
    /// listener's port (a browser test's own origin).
    pub link_base_url: String,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            extra: String::new(),
            routes: DEFAULT_ROUTES.into(),
            with_smtp: false,
            env: HashMap::new(),
            server_extra: String::new(),
            mail_extra: String::new(),
            smtp_target: None,
            grace_period_secs: 5,
            link_base_url: "https://gateway.test".into(),
        }
    }
}

pub const DEFAULT_ROUTES: &str = r#"
[[routes]]
prefix = "/"
upstream = "{UP}"
auth = "required"

[[routes]]
prefix = "/public"
upstream = "{UP}"
auth = "public"

[[routes]]
prefix = "/optional"
upstream = "{UP}"
auth = "optional"

[[routes]]
prefix = "/admin"
upstream = "{UP}"
auth = "required"
roles = ["admin"]

[[routes]]
prefix = "/ops"
upstream = "{UP}"
auth = "required"
roles = ["admin", "ops"]
"#;

pub struct TestGateway {
    pub addr: SocketAddr,
    pub tls_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub clock: Arc<ManualClock>,
    pub upstream: upstream::Upstream,
    pub smtp: Option<smtp::SmtpServer>,
    pub dir: tempfile::TempDir,
    pub toml: String,
    env: HashMap<String, String>,
    handle: Option<GatewayHandle>,
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::start_with(Builder::default()).await
    }

    pub async fn start_with(b: Builder) -> Self {
        let upstream = upstream::start().await;
        let smtp = if b.with_smtp {
            Some(smtp::start().await)
        } else {
            None
        };
        let dir = tempfile::tempdir().unwrap();
        let (addr, tls_addr, admin_addr) = (
            SocketAddr::from(([127, 0, 0, 1], free_port())),
            SocketAddr::from(([127, 0, 0, 1], free_port())),
            SocketAddr::from(([127, 0, 0, 1], free_port())),
        );
        let d = dir.path().display();
        let (mail_transport, smtp_host, smtp_port) = match (&smtp, &b.smtp_target) {
            (_, Some((host, port))) => ("smtp", host.clone(), *port),
            (Some(s), None) => ("smtp", "127.0.0.1".to_string(), s.addr.port()),
            (None, None) => ("log", "127.0.0.1".to_string(), 25),
        };
        let routes = b.routes.replace("{UP}", &upstream.url());
        let toml = format!(
            r#"
[server]
listen = "{addr}"
tls_listen = "{tls_addr}"
admin_listen = "{admin_addr}"
tls_cert = "{d}/certs/cert.pem"
tls_key = "{d}/certs/key.pem"
data_dir = "{d}/data"
grace_period_secs = {grace}
# Many gateways start and stop in this one test process: Pingora's
# no-steal runtimes keep their handles in a thread-local whose slots
# outlive a stopped server and are reused by new threads.
work_stealing = true
{server_extra}

[mail]
transport = "{mail_transport}"
smtp_host = "{smtp_host}"
smtp_port = {smtp_port}
link_base_url = "{link_base_url}"
retry_base_secs = 30
{mail_extra}

{extra}
{routes}
"#,
            server_extra = b.server_extra,
            grace = b.grace_period_secs,
            mail_extra = b.mail_extra,
            extra = b.extra,
            link_base_url = b
                .link_base_url
                .replace("{TLS_PORT}", &tls_addr.port().to_string())
                .replace("{PORT}", &addr.port().to_string()),
        );
        let clock = Arc::new(ManualClock::starting_now());
        let mut gw = TestGateway {
            addr,
            tls_addr,
            admin_addr,
            clock,
            upstream,
            smtp,
            dir,
            toml,
            env: b.env,
            handle: None,
        };
        gw.boot();
        gw
    }

    pub fn config(&self) -> Config {
        let env = self.env.clone();
        Config::from_toml(&self.toml, &move |k| env.get(k).cloned(), Path::new("."))
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}"))
    }

    /// Where the gateway's config file is (a reload reads it again).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    fn boot(&mut self) {
        let clock: Arc<dyn Clock> = self.clock.clone();
        std::fs::write(self.config_path(), &self.toml).unwrap();
        // A reload reads the file again, with the same environment.
        let (path, env) = (self.config_path(), self.env.clone());
        let source: portcullis::reload::ConfigSource = Arc::new(move || {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let env = env.clone();
            Config::from_toml(&text, &move |k| env.get(k).cloned(), Path::new("."))
        });
        let handle =
            portcullis::server::start_with_source(self.config(), Some(source), clock, false)
                .unwrap_or_else(|e| panic!("gateway failed to start: {e}"));
        self.handle = Some(handle);
        // No test connects before the gateway says it is ready.
        wait_ready(self.admin_addr, READY_LIMIT, &mut || true);
    }

    /// Replace the config file (`{UP}` is the upstream URL); the running
    /// gateway reads it at its next reload, a restart at once.
    pub fn write_toml(&mut self, toml: &str) {
        self.toml = toml.replace("{UP}", &self.upstream.url());
        std::fs::write(self.config_path(), &self.toml).unwrap();
    }

    /// `POST /admin/reload` with the admin token, as `portcullis reload`.
    pub async fn admin_reload(&self) -> http::Response {
        let token = std::fs::read_to_string(self.data_dir().join("admin.token")).unwrap();
        http::request(
            self.admin_addr,
            "POST",
            "/admin/reload",
            &[("authorization", &format!("Bearer {}", token.trim()))],
            Some(b""),
        )
        .await
        .unwrap()
    }

    /// Stop (gracefully, flushing the store) and start again on the same
    /// data dir and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.boot();
    }

    pub fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop();
        }
    }

    /// Begin a graceful shutdown and return at once (see
    /// [`GatewayHandle::begin_stop`]); [`TestGateway::stop`] waits for it.
    pub fn begin_stop(&self) {
        self.handle().begin_stop();
    }

    /// Stop in the background: the returned thread ends when the gateway
    /// has stopped.
    pub fn stop_in_background(&mut self) -> std::thread::JoinHandle<()> {
        let h = self.handle.take().expect("gateway is running");
        std::thread::spawn(move || h.stop())
    }

    pub fn handle(&self) -> &GatewayHandle {
        self.handle.as_ref().expect("gateway is running")
    }

    /// Move the clock past the next maintenance sweep and wait (bounded)
    /// until the gateway has done it.
    pub async fn sweep(&self) {
        use std::sync::atomic::Ordering;
        let sweeps = self.handle().sweeps.clone();
        let before = sweeps.load(Ordering::SeqCst);
        self.clock.advance(portcullis::server::SWEEP_EVERY);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while sweeps.load(Ordering::SeqCst) == before {
            assert!(
                std::time::Instant::now() < deadline,
                "no maintenance sweep within 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("certs/cert.pem")
    }

    pub fn smtp(&self) -> &smtp::SmtpServer {
        self.smtp.as_ref().expect("started with_smtp")
    }

    // ----- API helpers

    pub async fn get(&self, path: &str, bearer: Option<&str>) -> http::Response {
        http::get(self.addr, path, bearer).await
    }

    pub async fn post(&self, path: &str, body: Value, bearer: Option<&str>) -> http::Response {
        http::post_json(self.addr, path, &body, bearer).await
    }

    pub async fn register(&self, email: &str, password: &str) -> http::Response {
        self.post(
            "/auth/register",
            json!({ "email": email, "password": password, "password_confirm": password }),
            None,
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> http::Response {
        self.post(
            "/auth/login",
            json!({ "email": email, "password": password }),
            None,
        )
        .await
    }

    /// Register and log in; returns (access_token, refresh_token, user).
    pub async fn signup(&self, email: &str) -> Session {
        let r = self.register(email, PASSWORD).await;
        assert_eq!(r.status, 201, "register {email}: {}", r.text());
        self.signin(email, PASSWORD).await
    }

    pub async fn signin(&self, email: &str, password: &str) -> Session {
        let r = self.login(email, password).await;
        assert_eq!(r.status, 200, "login {email}: {}", r.text());
        let v = r.json();
        Session {
            access: v["access_token"].as_str().unwrap().to_string(),
            refresh: v["refresh_token"].as_str().unwrap().to_string(),
            user: v["user"].clone(),
        }
    }

    /// Create a user with roles through the admin API (as the CLI would).
    pub async fn admin_add_user(&self, email: &str, roles: &[&str]) -> Value {
        let token = std::fs::read_to_string(self.data_dir().join("admin.token")).unwrap();
        let body = json!({ "op": "add", "email": email, "roles": roles, "password": PASSWORD });
        let r = http::request(
            self.admin_addr,
            "POST",
            "/admin/users",
            &[
                ("authorization", &format!("Bearer {}", token.trim())),
                ("content-type", "application/json"),
            ],
            Some(body.to_string().as_bytes()),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "admin add: {}", r.text());
        r.json()
    }

    pub async fn metrics(&self) -> String {
        http::get(self.admin_addr, "/metrics", None).await.text()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.stop();
    }
}

pub const PASSWORD: &str = "correct horse battery staple";

/// The signing keys in a data dir's key-set file, as stored: `(kid,
/// secret)` in file order, where the secret is the HS256 key (base64url) or
/// the Ed25519 PKCS#8 PEM. `alg` is "HS256" or "EdDSA".
pub fn stored_keys(data_dir: &Path, alg: &str) -> Vec<(String, String)> {
    let name = match alg {
        "HS256" => "jwt-keys-hs256.json",
        _ => "jwt-keys-ed25519.json",
    };
    let v: Value = serde_json::from_slice(&std::fs::read(data_dir.join(name)).unwrap()).unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["kid"].as_str().unwrap().to_string(),
                k["secret"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub struct Session {
    pub access: String,
    pub refresh: String,
    pub user: Value,
}

/// The value of a metric sample line (`name{labels} value`), 0 when absent.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The headers the upstream received, in order, from its echo body.
pub fn echoed_headers(echo: &Value) -> Vec<(String, String)> {
    echo["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("not an echo: {echo}"))
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().to_string(),
                h[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every value the upstream received for `name` (case-insensitive).
pub fn echoed_in(echo: &Value, name: &str) -> Vec<String> {
    echoed_headers(echo)
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

/// [`echoed_in`] for a proxied response.
pub fn echoed(r: &http::Response, name: &str) -> Vec<String> {
    echoed_in(&r.json(), name)
}

/// A JSON error answer with this status and code, and a message.
#[track_caller]
pub fn assert_error(r: &http::Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "expected {status} {code}, got {r:?}");
    let v = r.json();
    assert_eq!(v["error"], code, "{r:?}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {r:?}"
    );
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "error is not JSON: {r:?}"
    );
}

/// One HTTP/2 request over TLS (ALPN h2); returns status, headers, body.
pub async fn h2_request(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, ::http::HeaderMap, Vec<u8>) {
    tokio::time::timeout(self::http::TIMEOUT, h2_request_unbounded(gw, path, headers))
        .await
        .unwrap_or_else(|_| panic!("HTTP/2 GET {path} took over {:?}", self::http::TIMEOUT))
}

/// An HTTP/2 connection to the gateway's TLS listener (ALPN h2), ready
/// for a request; the task driving it ends when the connection does.
pub async fn h2_connect(
    gw: &TestGateway,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    use tokio_rustls::rustls::pki_types::ServerName;
    let config = self::http::tls_client_config(&gw.cert_path(), &["h2"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(gw.tls_addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    let conn = tokio::spawn(conn);
    (client.ready().await.unwrap(), conn)
}

async fn h2_request_unbounded(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, ::http::HeaderMap, Vec<u8>) {
    let (mut client, _conn) = h2_connect(gw).await;
    let mut req = ::http::Request::builder()
        .method("GET")
        .uri(format!("https://localhost:{}{path}", gw.tls_addr.port()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (resp, _) = client.send_request(req.body(()).unwrap(), true).unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (status, headers, out)
}

/// The first value of `name` in the upstream's last received request.
pub fn last_echoed(gw: &TestGateway, name: &str) -> Option<String> {
    echoed_in(&gw.upstream.last_request()?, name)
        .into_iter()
        .next()
}
