//! A real outside OpenID Provider for the federation tests (issue 22): the
//! npm package `oidc-provider` (pinned in `tests/idp/package-lock.json`),
//! run by `tests/idp/server.mjs` on a loopback port of ours with an
//! `http://127.0.0.1:PORT` issuer. Installed under the target dir on first
//! use (`.ci/deps --test` does it ahead), like the browser test's Selenium.
//!
//! [`Idp::complete_login`] drives the provider's own pages (authorize, the
//! login form with a user id, the consent form) with a cookie-keeping HTTP
//! client and hands back the redirect to the gateway's callback without
//! following it, so the test decides what the gateway receives. The
//! provider keeps that browser's session: [`Idp::end_session`] signs it out
//! there through the provider's real RP-initiated logout page, which POSTs a
//! `logout_token` to every client of the session that has a back-channel
//! logout URI. The process is killed (by its own handle) on drop.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use super::{bin, free_port, http};

/// How long the provider may take to listen: a wait for an event, so a
/// generous limit costs nothing when it is up; Node starting
/// `oidc-provider` while the whole suite runs on two cores took over 30 s,
/// and once printed nothing in 120 s (then [`Idp::start`] tries once more).
const START_LIMIT: Duration = Duration::from_secs(120);

/// What the provider starts with; clients and accounts can be added later
/// ([`Idp::add_client`], [`Idp::set_account`]).
#[derive(Default, Clone)]
pub struct IdpConfig {
    /// `user id -> {"claims": {...}, "amr": [...]}` (see [`account`]).
    pub accounts: BTreeMap<String, Value>,
    /// Client metadata (see [`client`]).
    pub clients: Vec<Value>,
    /// The issuer's host instead of `127.0.0.1` (it still listens there):
    /// a provider whose discovery names another issuer than its URL.
    pub issuer_host: Option<String>,
}

/// An account: its claims (`sub` is the user id) and the `amr` its sign-in
/// asserts.
pub fn account(claims: Value, amr: &[&str]) -> Value {
    json!({ "claims": claims, "amr": amr })
}

/// A confidential client of the provider (`client_secret_basic`); with a
/// back-channel logout URI when given (sessions get a `sid`).
pub fn client(
    client_id: &str,
    secret: &str,
    redirect_uris: &[&str],
    backchannel_logout_uri: Option<&str>,
) -> Value {
    let mut c = json!({
        "client_id": client_id,
        "client_secret": secret,
        "redirect_uris": redirect_uris,
    });
    if let Some(uri) = backchannel_logout_uri {
        c["backchannel_logout_uri"] = json!(uri);
        c["backchannel_logout_session_required"] = json!(true);
    }
    c
}

/// The provider's npm packages, installed (pinned by the lock file) under
/// the target dir once per machine: `<CARGO_TARGET_TMPDIR>/idp-node`.
pub fn node_modules() -> PathBuf {
    static DONE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DONE.get_or_init(install).clone()
}

fn install() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("idp-node");
    let lock = std::fs::read(src.join("package-lock.json")).expect("tests/idp/package-lock.json");
    let ready = dir.join("ready");
    // Another test process may be installing: one at a time.
    let _guard = super::ports::machine_lock("idp-node-install");
    if std::fs::read(&ready).ok().as_deref() == Some(lock.as_slice()) {
        return dir.join("node_modules");
    }
    for tool in ["node", "npm"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "{tool} is missing: run .ci/deps --test");
    }
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["package.json", "package-lock.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut cmd = Command::new("npm");
    cmd.args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
        .current_dir(&dir);
    let out = bin::run(cmd, None, Duration::from_secs(600));
    assert!(out.ok(), "npm ci (tests/idp) failed: {out:?}");
    std::fs::write(&ready, &lock).unwrap();
    dir.join("node_modules")
}

/// A browser's cookies at the provider (name -> value; the provider's
/// cookie names are distinct, so paths do not matter here).
#[derive(Default, Clone, Debug)]
pub struct Jar(HashMap<String, String>);

impl Jar {
    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn absorb(&mut self, r: &http::Response) {
        for c in r.headers_all("set-cookie") {
            let Some((name, rest)) = c.split_once('=') else {
                continue;
            };
            let value = rest.split(';').next().unwrap_or("").trim();
            let expired = c.to_ascii_lowercase().contains("expires=thu, 01 jan 1970");
            if value.is_empty() || expired {
                self.0.remove(name.trim());
            } else {
                self.0.insert(name.trim().to_string(), value.to_string());
            }
        }
    }
}

/// A running provider.
pub struct Idp {
    /// `http://127.0.0.1:PORT` (unless [`IdpConfig::issuer_host`]), the
    /// `issuer` of its discovery document.
    pub issuer: String,
    pub addr: SocketAddr,
    child: Child,
    stderr: Option<std::thread::JoinHandle<String>>,
    /// The first stdout line, until [`Idp::first_line`] takes it.
    first: Mutex<Option<std::sync::mpsc::Receiver<Option<String>>>>,
    /// Each user's browser at the provider, from their last sign-in.
    jars: Mutex<HashMap<String, Jar>>,
}

impl Idp {
    pub async fn start(config: IdpConfig) -> Idp {
        let modules = tokio::task::spawn_blocking(node_modules).await.unwrap();
        // A start that hangs (once in a whole-suite run, Node printed
        // nothing for START_LIMIT) is retried once as a new process on a
        // new port; a start that fails is not.
        let mut idp = Idp::spawn(&config, &modules);
        let mut first = idp.first_line().await;
        if matches!(first, Err(RecvTimeoutError::Timeout)) {
            let err = idp.stop();
            eprintln!("the test provider did not start within {START_LIMIT:?}; once more:\n{err}");
            idp = Idp::spawn(&config, &modules);
            first = idp.first_line().await;
        }
        match first {
            Ok(Some(line)) if line.starts_with("READY ") => {
                assert_eq!(line["READY ".len()..].trim(), idp.issuer);
            }
            other => {
                let err = idp.stop();
                panic!("the test provider did not start ({other:?}):\n{err}");
            }
        }
        idp
    }

    /// Start `tests/idp/server.mjs` on a free port; its first stdout line
    /// arrives through [`Idp::first_line`].
    fn spawn(config: &IdpConfig, modules: &Path) -> Idp {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let host = config.issuer_host.as_deref().unwrap_or("127.0.0.1");
        let issuer = format!("http://{host}:{port}");
        let cfg = json!({
            "port": port,
            "issuer": issuer,
            "accounts": config.accounts,
            "clients": config.clients,
        });
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp/server.mjs");
        let mut child = Command::new("node")
            .arg(&script)
            .arg(cfg.to_string())
            .env("IDP_NODE_MODULES", modules)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting node tests/idp/server.mjs");
        let err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut { err }, &mut s);
            s
        });
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            let first = lines.next().and_then(|l| l.ok());
            let _ = tx.send(first);
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        Idp {
            issuer,
            addr,
            child,
            stderr: Some(stderr),
            first: Mutex::new(Some(rx)),
            jars: Mutex::new(HashMap::new()),
        }
    }

    /// The provider's first stdout line (`READY <issuer>` once it
    /// listens), waited for at most START_LIMIT.
    async fn first_line(&self) -> Result<Option<String>, RecvTimeoutError> {
        let rx = self
            .first
            .lock()
            .unwrap()
            .take()
            .expect("one wait per start");
        tokio::task::spawn_blocking(move || rx.recv_timeout(START_LIMIT))
            .await
            .unwrap()
    }

    /// A URL of the provider (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// One request to the provider, with the given browser's cookies.
    async fn send(
        &self,
        method: &str,
        path: &str,
        jar: &mut Jar,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> http::Response {
        let cookie = jar.header();
        let mut h: Vec<(&str, &str)> = headers.to_vec();
        if !cookie.is_empty() {
            h.push(("cookie", &cookie));
        }
        let r = http::request(self.addr, method, path, &h, body)
            .await
            .unwrap_or_else(|e| panic!("provider {method} {path}: {e}"));
        jar.absorb(&r);
        r
    }

    /// A test hook of the provider (`/__test/{name}`).
    pub async fn hook(&self, name: &str, body: Value) -> Value {
        let r = http::request(
            self.addr,
            "POST",
            &format!("/__test/{name}"),
            &[("content-type", "application/json")],
            Some(body.to_string().as_bytes()),
        )
        .await
        .unwrap_or_else(|e| panic!("provider hook {name}: {e}"));
        assert_eq!(r.status, 200, "provider hook {name}: {r:?}");
        r.json()
    }

    /// Register (or replace) a client ([`client`] builds the metadata).
    pub async fn add_client(&self, metadata: Value) {
        self.hook("clients", metadata).await;
    }

    /// Create or replace an account ([`account`]); the next sign-in (and
    /// the next token) carries the new claims.
    pub async fn set_account(&self, user: &str, account: Value) {
        self.hook("accounts", json!({ user: account })).await;
    }

    /// Sign `payload` as a JWT: with the provider's published key
    /// (`key = "provider"`) or with a key it never published under the same
    /// `kid` (`"other"`); `header` adds to or replaces `{alg: RS256, kid}`.
    pub async fn sign(&self, payload: Value, header: Value, key: &str) -> String {
        let v = self
            .hook(
                "sign",
                json!({ "payload": payload, "header": header, "key": key }),
            )
            .await;
        v["jwt"].as_str().unwrap().to_string()
    }

    /// Make the token endpoint re-sign every id_token it issues with these
    /// changes: `{"set": {claim: value}, "remove": [claim], "key":
    /// "provider"|"other"}`; `json!({})` stops it.
    pub async fn tamper_id_token(&self, changes: Value) {
        let body = if changes.as_object().is_some_and(|o| o.is_empty()) {
            json!({})
        } else {
            json!({ "id_token": changes })
        };
        self.hook("tamper", body).await;
    }

    /// Ask the provider to send a back-channel logout for (`sub`, `sid`) to
    /// the client's `backchannel_logout_uri` now (what its own logout does
    /// for each client of a session); `Err` with the provider's reason when
    /// the receiver did not answer 200.
    pub async fn backchannel_logout(
        &self,
        client_id: &str,
        sub: &str,
        sid: Option<&str>,
    ) -> Result<(), String> {
        let v = self
            .hook(
                "backchannel",
                json!({ "client_id": client_id, "sub": sub, "sid": sid }),
            )
            .await;
        match v["ok"].as_bool() {
            Some(true) => Ok(()),
            _ => Err(v["error"].as_str().unwrap_or("?").to_string()),
        }
    }

    /// What the provider recorded: back-channel deliveries
    /// (`backchannel.success` / `backchannel.error` with `client_id`, `sub`,
    /// `sid`, `error`), issued id_tokens (`id_token`, with `claims`) and
    /// tampered ones (`tampered`).
    pub async fn events(&self) -> Vec<Value> {
        let r = http::get(self.addr, "/__test/events", None).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.json().as_array().cloned().unwrap_or_default()
    }

    /// The claims of every honest id_token the provider issued, oldest
    /// first (the `sid` it chose for a session, say).
    pub async fn id_tokens(&self) -> Vec<Value> {
        self.events()
            .await
            .into_iter()
            .filter(|e| e["event"] == "id_token")
            .map(|e| e["claims"].clone())
            .collect()
    }

    /// The provider's discovery document.
    pub async fn discovery(&self) -> Value {
        let r = http::get(self.addr, "/.well-known/openid-configuration", None).await;
        assert_eq!(r.status, 200, "discovery: {r:?}");
        r.json()
    }

    /// Follow the provider's pages from `authorize_url` (the `Location` the
    /// gateway's `/start` answered) as `user` in a fresh browser: sign in
    /// with the user id, allow the consent, and return the redirect to the
    /// client (the gateway's callback, with `code`, `state` and `iss`),
    /// not followed. The browser is kept for [`Idp::end_session`].
    pub async fn complete_login(&self, authorize_url: &str, user: &str) -> String {
        let (url, jar) = self
            .drive(authorize_url, Some(user), true, Jar::default())
            .await;
        self.jars.lock().unwrap().insert(user.to_string(), jar);
        url
    }

    /// Like [`Idp::complete_login`] in the browser `user` already signed in
    /// with: the provider's session answers without a login form (consent
    /// is asked again only for a new client or scope).
    pub async fn continue_login(&self, authorize_url: &str, user: &str) -> String {
        let jar = self
            .jars
            .lock()
            .unwrap()
            .get(user)
            .cloned()
            .unwrap_or_default();
        let (url, jar) = self.drive(authorize_url, Some(user), true, jar).await;
        self.jars.lock().unwrap().insert(user.to_string(), jar);
        url
    }

    /// Sign in as `user` and deny the consent: the redirect to the client
    /// carries `error=access_denied`.
    pub async fn deny_login(&self, authorize_url: &str, user: &str) -> String {
        self.drive(authorize_url, Some(user), false, Jar::default())
            .await
            .0
    }

    async fn drive(
        &self,
        start: &str,
        user: Option<&str>,
        allow: bool,
        mut jar: Jar,
    ) -> (String, Jar) {
        let origin = url::Url::parse(&self.issuer).unwrap().origin();
        let mut current =
            url::Url::parse(start).unwrap_or_else(|e| panic!("authorize URL {start:?}: {e}"));
        assert_eq!(
            current.origin(),
            origin,
            "the authorize URL is not this provider's: {start}"
        );
        let mut method = "GET";
        let mut body: Option<String> = None;
        for _ in 0..20 {
            let path = match current.query() {
                Some(q) => format!("{}?{q}", current.path()),
                None => current.path().to_string(),
            };
            let headers: Vec<(&str, &str)> = if body.is_some() {
                vec![
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("accept", "text/html"),
                ]
            } else {
                vec![("accept", "text/html")]
            };
            let r = self
                .send(
                    method,
                    &path,
                    &mut jar,
                    &headers,
                    body.as_deref().map(str::as_bytes),
                )
                .await;
            match r.status {
                302 | 303 => {
                    let loc = r.header("location").expect("a redirect has a Location");
                    let next = current.join(loc).unwrap();
                    if next.origin() != origin {
                        return (next.to_string(), jar);
                    }
                    current = next;
                    method = "GET";
                    body = None;
                }
                200 => {
                    let page = r.text();
                    let forms = forms(&page);
                    let (action, mut fields) = if page.contains(r#"name="user""#) {
                        let user = user.expect("the provider asks for a user");
                        let (a, mut f) = forms
                            .into_iter()
                            .find(|(a, _)| a.ends_with("/login"))
                            .unwrap_or_else(|| panic!("no login form: {page}"));
                        f.push(("user".into(), user.to_string()));
                        (a, f)
                    } else {
                        let want = if allow { "/confirm" } else { "/abort" };
                        forms
                            .into_iter()
                            .find(|(a, _)| a.ends_with(want))
                            .unwrap_or_else(|| {
                                panic!("no {want} form on the provider's page: {page}")
                            })
                    };
                    fields.dedup();
                    current = current.join(&action).unwrap();
                    method = "POST";
                    body = Some(form_body(&fields));
                }
                _ => panic!("the provider answered {path} with {r:?}"),
            }
        }
        panic!("more than 20 steps at the provider from {start}");
    }

    /// Sign `user`'s browser out at the provider through its RP-initiated
    /// logout page (`/session/end`, then "Sign out"): the provider POSTs a
    /// `logout_token` to each client of that session with a back-channel
    /// logout URI before it answers. Returns the back-channel events this
    /// logout added.
    pub async fn end_session(&self, user: &str) -> Vec<Value> {
        let before = self.events().await.len();
        let mut jar = self
            .jars
            .lock()
            .unwrap()
            .remove(user)
            .unwrap_or_else(|| panic!("{user} never signed in at the provider"));
        let r = self
            .send(
                "GET",
                "/session/end",
                &mut jar,
                &[("accept", "text/html")],
                None,
            )
            .await;
        assert_eq!(r.status, 200, "the logout page: {r:?}");
        let page = r.text();
        let (action, mut fields) = forms(&page)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no logout form: {page}"));
        fields.push(("logout".into(), "yes".into()));
        let action = url::Url::parse(&self.issuer)
            .unwrap()
            .join(&action)
            .unwrap();
        let body = form_body(&fields);
        let r = self
            .send(
                "POST",
                action.path(),
                &mut jar,
                &[("content-type", "application/x-www-form-urlencoded")],
                Some(body.as_bytes()),
            )
            .await;
        assert_eq!(r.status, 303, "the logout confirmation: {r:?}");
        self.events().await.split_off(before)
    }

    /// The `[[identity_providers]]` TOML of the gateway for this provider
    /// (`kind = "oidc"`); `extra` adds lines (e.g. `allow_signup = false`).
    pub fn gateway_toml(&self, id: &str, client_id: &str, secret_env: &str, extra: &str) -> String {
        format!(
            "[[identity_providers]]\nid = \"{id}\"\nkind = \"oidc\"\ndisplay_name = \"{id} SSO\"\n\
             issuer = \"{issuer}\"\nclient_id = \"{client_id}\"\nclient_secret_env = \"{secret_env}\"\n\
             scopes = [\"openid\", \"email\", \"profile\"]\n{extra}\n",
            issuer = self.issuer
        )
    }

    /// The same for a GitHub-style `kind = "oauth2"` provider: explicit
    /// authorize and token URLs, and the provider's userinfo `/me` as the
    /// user URL.
    pub fn gateway_toml_oauth2(
        &self,
        id: &str,
        client_id: &str,
        secret_env: &str,
        extra: &str,
    ) -> String {
        format!(
            "[[identity_providers]]\nid = \"{id}\"\nkind = \"oauth2\"\ndisplay_name = \"{id}\"\n\
             authorize_url = \"{i}/auth\"\ntoken_url = \"{i}/token\"\nuserinfo_url = \"{i}/me\"\n\
             client_id = \"{client_id}\"\nclient_secret_env = \"{secret_env}\"\n\
             scopes = [\"openid\", \"email\", \"profile\"]\nsubject_claim = \"sub\"\n{extra}\n",
            i = self.issuer
        )
    }

    /// What the provider printed on stderr so far is only available after
    /// it stopped; this stops it and returns it.
    pub fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn form_body(fields: &[(String, String)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        s.append_pair(k, v);
    }
    s.finish()
}

/// The forms of a provider page: (action, hidden inputs with their values).
/// The pages are the provider's own (tests/idp/server.mjs and
/// oidc-provider's logout form): plain, double-quoted attributes.
pub fn forms(page: &str) -> Vec<(String, Vec<(String, String)>)> {
    let attr = |tag: &str, name: &str| {
        let key = format!("{name}=\"");
        tag.find(&key).map(|i| {
            let rest = &tag[i + key.len()..];
            html_unescape(&rest[..rest.find('"').unwrap_or(rest.len())])
        })
    };
    let mut out = Vec::new();
    for part in page.split("<form").skip(1) {
        let tag = &part[..part.find('>').unwrap_or(part.len())];
        let action = attr(tag, "action").unwrap_or_default();
        let inner = &part[..part.find("</form>").unwrap_or(part.len())];
        let mut fields = Vec::new();
        for input in inner.split("<input").skip(1) {
            let tag = &input[..input.find('>').unwrap_or(input.len())];
            if attr(tag, "type").as_deref() == Some("hidden") {
                if let (Some(n), Some(v)) = (attr(tag, "name"), attr(tag, "value")) {
                    fields.push((n, v));
                }
            }
        }
        out.push((action, fields));
    }
    out
}

fn html_unescape(s: &str) -> String {
    let mut out = s
        .replace("&#47;", "/")
        .replace("&#x2F;", "/")
        .replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">");
    out = out.replace("&amp;", "&").replace("&#38;", "&");
    out
}

/// The query parameters of a URL.
pub fn query(url: &str) -> HashMap<String, String> {
    url::Url::parse(url)
        .unwrap_or_else(|e| panic!("{url:?}: {e}"))
        .query_pairs()
        .into_owned()
        .collect()
}

/// The path and query of an absolute URL (what to send to the gateway).
pub fn path_and_query(url: &str) -> String {
    let u = url::Url::parse(url).unwrap_or_else(|e| panic!("{url:?}: {e}"));
    match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_string(),
    }
}

/// The claims of a JWT, unverified (for assertions about what a token says).
pub fn jwt_claims(jwt: &str) -> Value {
    use base64::Engine;
    let part = jwt.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JSON claims")
}
