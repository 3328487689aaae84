//! Issue 22 end to end over sockets, with a small stand-in provider run
//! by the test (discovery, JWKS, token and userinfo endpoints; EdDSA
//! id_tokens): the gateway's side of the round trip in code mode, the
//! refusals (replayed callback, tampered state, a token for another
//! audience, a provider whose discovery names another issuer), the
//! `login_code` used twice, and back-channel logout. The tests against the
//! real npm `oidc-provider` are in `federation.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::{http, Builder, TestGateway};

/// What the stand-in provider will put in the id_token of a code.
#[derive(Clone)]
struct Grant {
    sub: String,
    email: String,
    aud: String,
    sid: String,
}

struct Idp {
    addr: SocketAddr,
    /// The issuer discovery names (normally the provider's own URL).
    claimed_issuer: Mutex<String>,
    /// code → (grant, nonce): filled by the test before the callback.
    codes: Mutex<HashMap<String, Grant>>,
    /// The nonce of the last authorization request, per state.
    nonces: Mutex<HashMap<String, String>>,
    /// access token → userinfo.
    userinfo: Mutex<HashMap<String, Value>>,
    pem: String,
    x: String,
}

impl Idp {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some("k1".into());
        let key = jsonwebtoken::EncodingKey::from_ed_pem(self.pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&h, claims, &key).unwrap()
    }

    fn answer(&self, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
        let now = portcullis::clock::Clock::now(&portcullis::clock::SystemClock);
        match (method, path) {
            ("GET", "/.well-known/openid-configuration") => (
                200,
                json!({
                    "issuer": *self.claimed_issuer.lock().unwrap(),
                    "authorization_endpoint": format!("{}/auth", self.url()),
                    "token_endpoint": format!("{}/token", self.url()),
                    "userinfo_endpoint": format!("{}/me", self.url()),
                    "jwks_uri": format!("{}/jwks", self.url()),
                    "authorization_response_iss_parameter_supported": true,
                }),
            ),
            ("GET", "/jwks") => (
                200,
                json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "use": "sig", "alg": "EdDSA", "x": self.x}]}),
            ),
            ("POST", "/token") => {
                let form: HashMap<String, String> =
                    url::form_urlencoded::parse(body).into_owned().collect();
                let code = form.get("code").cloned().unwrap_or_default();
                let Some(g) = self.codes.lock().unwrap().remove(&code) else {
                    return (400, json!({"error": "invalid_grant"}));
                };
                let nonce = self
                    .nonces
                    .lock()
                    .unwrap()
                    .get(&code)
                    .cloned()
                    .unwrap_or_default();
                let access = format!("at-{code}");
                self.userinfo.lock().unwrap().insert(
                    access.clone(),
                    json!({"sub": g.sub, "email": g.email, "email_verified": true}),
                );
                let id_token = self.sign(&json!({
                    "iss": self.url(), "aud": g.aud, "sub": g.sub, "sid": g.sid,
                    "iat": now, "exp": now + 300, "nonce": nonce,
                }));
                (
                    200,
                    json!({"access_token": access, "token_type": "Bearer", "id_token": id_token}),
                )
            }
            ("GET", "/me") => (200, Value::Null),
            _ => (404, json!({"error": "not_found"})),
        }
    }

    /// A back-channel logout token for `sub`.
    fn logout_token(&self, sub: &str, jti: &str) -> String {
        let now = portcullis::clock::Clock::now(&portcullis::clock::SystemClock);
        self.sign(&json!({
            "iss": self.url(), "aud": "portcullis", "sub": sub, "iat": now, "jti": jti,
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        }))
    }
}

async fn start_idp() -> Arc<Idp> {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key.to_pkcs8_pem(Default::default()).unwrap().to_string();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let idp = Arc::new(Idp {
        addr,
        claimed_issuer: Mutex::new(format!("http://{addr}")),
        codes: Mutex::default(),
        nonces: Mutex::default(),
        userinfo: Mutex::default(),
        pem,
        x,
    });
    let served = idp.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let idp = served.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let mut first = head.lines().next().unwrap_or("").split(' ');
                let method = first.next().unwrap_or("").to_string();
                let path = first.next().unwrap_or("").to_string();
                let (status, mut body) = idp.answer(&method, &path, &buf[head_end..]);
                if path == "/me" {
                    let token = head
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("authorization: Bearer ")
                                .or_else(|| l.strip_prefix("Authorization: Bearer "))
                        })
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    body = idp
                        .userinfo
                        .lock()
                        .unwrap()
                        .get(&token)
                        .cloned()
                        .unwrap_or(Value::Null);
                }
                let text = body.to_string();
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    idp
}

async fn gateway(idp: &Idp, extra: &str) -> TestGateway {
    let mut b = Builder::default();
    b.env
        .insert("FED_FLOW_SECRET".into(), "client-secret".into());
    b.extra = format!(
        "[[identity_providers]]\nid = \"corp\"\nkind = \"oidc\"\nissuer = \"{}\"\nclient_id = \"portcullis\"\nclient_secret_env = \"FED_FLOW_SECRET\"\n{extra}\n",
        idp.url()
    );
    TestGateway::start_with(b).await
}

/// Start a code-mode sign-in: (state, cookie header value).
async fn start(gw: &TestGateway) -> (String, String) {
    let r = gw
        .get("/auth/oidc/corp/start?mode=code&rd=/app/", None)
        .await;
    assert_eq!(r.status, 302, "{}", r.text());
    let loc = url::Url::parse(r.header("location").unwrap()).unwrap();
    let q: HashMap<String, String> = loc.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    let cookie = r
        .headers_all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("__Host-portcullis-fed="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    (q["state"].clone() + "\n" + &q["nonce"], cookie)
}

/// The provider sends the browser back with `code`; the answer's Location.
async fn callback(
    gw: &TestGateway,
    idp: &Idp,
    state_nonce: &str,
    cookie: &str,
    code: &str,
    g: Grant,
) -> String {
    let (state, nonce) = state_nonce.split_once('\n').unwrap();
    idp.codes.lock().unwrap().insert(code.into(), g);
    idp.nonces.lock().unwrap().insert(code.into(), nonce.into());
    let path = format!(
        "/auth/oidc/corp/callback?code={code}&state={state}&iss={}",
        url::form_urlencoded::byte_serialize(idp.url().as_bytes()).collect::<String>()
    );
    let r = http::request(gw.addr, "GET", &path, &[("cookie", cookie)], None)
        .await
        .unwrap();
    assert_eq!(r.status, 302, "{}", r.text());
    r.header("location").unwrap().to_string()
}

fn grant(sub: &str, email: &str) -> Grant {
    Grant {
        sub: sub.into(),
        email: email.into(),
        aud: "portcullis".into(),
        sid: "sid-1".into(),
    }
}

fn param(location: &str, name: &str) -> Option<String> {
    let q = location.split_once('?')?.1;
    url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Code mode: the callback hands `rd` a login code, which works once; the
/// same callback again is `invalid_state`; a tampered state cookie or a
/// token for another audience never signs in; back-channel logout ends
/// the session and a replayed logout token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_mode_round_trip_and_its_refusals() {
    let idp = start_idp().await;
    let gw = gateway(&idp, "").await;

    let (sn, cookie) = start(&gw).await;
    let loc = callback(
        &gw,
        &idp,
        &sn,
        &cookie,
        "c1",
        grant("alice", "alice@example.com"),
    )
    .await;
    assert!(loc.starts_with("/app/?login_code="), "{loc}");
    let code = param(&loc, "login_code").unwrap();
    let r = gw
        .post("/auth/oidc/exchange", json!({"login_code": code}), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["user"]["email"], "alice@example.com");
    let access = v["access_token"].as_str().unwrap().to_string();
    let me = gw.get("/auth/me", Some(&access)).await;
    assert_eq!(me.status, 200);
    // Twice: refused.
    let again = gw
        .post("/auth/oidc/exchange", json!({"login_code": code}), None)
        .await;
    crate::common::assert_error(&again, 400, "invalid_token");
    // The same callback replayed (same cookie, same state): invalid_state.
    let (state, _) = sn.split_once('\n').unwrap();
    idp.codes
        .lock()
        .unwrap()
        .insert("c1b".into(), grant("alice", "alice@example.com"));
    let path = format!(
        "/auth/oidc/corp/callback?code=c1b&state={state}&iss={}",
        url::form_urlencoded::byte_serialize(idp.url().as_bytes()).collect::<String>()
    );
    let r = http::request(gw.addr, "GET", &path, &[("cookie", cookie.as_str())], None)
        .await
        .unwrap();
    assert_eq!(
        param(r.header("location").unwrap_or(""), "error").as_deref(),
        Some("invalid_state"),
        "{}",
        r.text()
    );

    // A tampered state cookie: not ours, so no mode, no rd: the error page.
    let (sn2, cookie2) = start(&gw).await;
    let mut bad = cookie2.clone().into_bytes();
    let i = bad.len() - 3;
    bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).unwrap();
    let (state2, _) = sn2.split_once('\n').unwrap();
    idp.codes
        .lock()
        .unwrap()
        .insert("c2".into(), grant("mallory", "m@example.com"));
    let path = format!("/auth/oidc/corp/callback?code=c2&state={state2}");
    let r = http::request(gw.addr, "GET", &path, &[("cookie", bad.as_str())], None)
        .await
        .unwrap();
    assert_ne!(r.status, 302, "a tampered state must not sign in");
    assert!(r.status < 500, "{}", r.status);
    assert!(r.text().contains("invalid_state"), "{}", r.text());

    // An id_token for another audience: provider_error, no account made.
    let (sn3, cookie3) = start(&gw).await;
    let mut g = grant("eve", "eve@example.com");
    g.aud = "another-app".into();
    let loc = callback(&gw, &idp, &sn3, &cookie3, "c3", g).await;
    assert_eq!(
        param(&loc, "error").as_deref(),
        Some("provider_error"),
        "{loc}"
    );

    // Back-channel logout of alice: 200, her session ends; the same jti
    // again is 400.
    let form = format!("logout_token={}", idp.logout_token("alice", "j1"));
    let r = http::request(
        gw.addr,
        "POST",
        "/auth/oidc/corp/backchannel-logout",
        &[("content-type", "application/x-www-form-urlencoded")],
        Some(form.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let me = gw.get("/auth/me", Some(&access)).await;
    assert_eq!(me.status, 401, "the session's access token is revoked");
    let r = http::request(
        gw.addr,
        "POST",
        "/auth/oidc/corp/backchannel-logout",
        &[("content-type", "application/x-www-form-urlencoded")],
        Some(form.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "a replayed logout token: {}", r.text());
    let metrics = gw.metrics().await;
    assert_eq!(
        crate::common::metric(
            &metrics,
            "portcullis_federated_logins_total{outcome=\"success\",provider=\"corp\"}"
        ),
        1.0,
        "{metrics}"
    );
}

/// A provider whose discovery names another issuer: the sign-in never
/// starts (502 provider_error), never a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_naming_another_issuer_is_refused() {
    let idp = start_idp().await;
    *idp.claimed_issuer.lock().unwrap() = "https://evil.example".into();
    let gw = gateway(&idp, "").await;
    let r = gw.get("/auth/oidc/corp/start?mode=code&rd=/", None).await;
    crate::common::assert_error(&r, 502, "provider_error");
    let r = gw.get("/auth/oidc/nope/start?mode=code&rd=/", None).await;
    assert_eq!(r.status, 404);
}
