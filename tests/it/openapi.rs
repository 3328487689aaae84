//! The OpenAPI document (`GET /auth/openapi.json`) against a live gateway.
//!
//! `every_operation_answers_as_documented` walks the document: it calls
//! every operation it lists with valid input (and with the usual wrong
//! inputs), and checks each answer against the document: the status is
//! documented for that operation, the content type is the documented one,
//! the JSON body validates against the documented schema, and documented
//! integer headers parse. An operation in the document without a case here
//! fails the test, so a new endpoint needs one.
//!
//! `schemathesis_finds_no_server_error_or_schema_violation` runs Python
//! schemathesis (installed from PyPI into the target dir on first use) with
//! every check against the same kind of gateway.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::bin::{self, Output};
use crate::common::http::{self, Response};
use crate::common::idp::{self, Idp, IdpConfig};
use federation::{FED_CLIENT, FED_SECRET, FED_SECRET_ENV};

mod federation;
use crate::common::totp::{base32_decode, code_at};
use crate::common::{venv, Builder, TestGateway, PASSWORD};
use portcullis::clock::Clock;

/// The document, and the operations the walk has answered.
struct Spec {
    doc: Value,
    /// (METHOD, template) of every checked call, and of those that were 2xx.
    called: BTreeSet<(String, String)>,
    succeeded: BTreeSet<(String, String)>,
}

impl Spec {
    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
        out
    }

    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => self
                .doc
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling {r}")),
            None => v,
        }
    }

    /// Check one answer to `method template` against the document.
    fn check(&mut self, method: &str, template: &str, r: &Response) {
        let what = format!("{method} {template} answered {}", r.status);
        let op = &self.doc["paths"][template][method.to_lowercase()];
        assert!(op.is_object(), "{method} {template} is not in the document");
        let responses = &op["responses"];
        let documented = responses
            .get(r.status.to_string())
            .or_else(|| responses.get("default"))
            .unwrap_or_else(|| panic!("{what}, which is not documented: {r:?}"));
        let documented = self.resolve(documented).clone();
        let content = documented["content"].as_object();
        match content {
            None => assert!(r.body.is_empty(), "{what} with a body: {r:?}"),
            Some(content) => {
                let ct = r.header("content-type").unwrap_or("");
                let mime = ct.split(';').next().unwrap().trim();
                let media = content
                    .get(mime)
                    .unwrap_or_else(|| panic!("{what} as {ct:?}, not documented: {r:?}"));
                if mime == "application/json" {
                    let mut schema = media["schema"].clone();
                    schema["components"] = self.doc["components"].clone();
                    let validator = jsonschema::options()
                        .with_draft(jsonschema::Draft::Draft202012)
                        .should_validate_formats(true)
                        .build(&schema)
                        .unwrap_or_else(|e| panic!("{what}: schema does not compile: {e}"));
                    let body = r.json();
                    let errors: Vec<String> = validator
                        .iter_errors(&body)
                        .map(|e| format!("{} at {}", e, e.instance_path))
                        .collect();
                    assert!(errors.is_empty(), "{what}: {errors:?} in {body}");
                }
            }
        }
        if let Some(headers) = documented["headers"].as_object() {
            for (name, h) in headers {
                if self.resolve(&h["schema"])["type"] == "integer" {
                    if let Some(v) = r.header(name) {
                        assert!(v.parse::<u64>().is_ok(), "{what}: {name}: {v:?}");
                    }
                }
            }
        }
        let key = (method.to_string(), template.to_string());
        // An operation whose documented answer is a redirect (the sign-in
        // round trip of CONTRACT 8.1) succeeds with it, and so do the
        // provider's browser endpoints (to the client, or to the portal).
        let redirects_only = responses
            .as_object()
            .is_some_and(|m| !m.keys().any(|k| k.starts_with('2')));
        let redirect = (300..400).contains(&r.status)
            && (redirects_only || template.starts_with("/auth/oauth/"));
        if (200..300).contains(&r.status) || redirect {
            self.succeeded.insert(key.clone());
        }
        self.called.insert(key);
    }
}

fn gateway_builder() -> Builder {
    Builder {
        with_smtp: true,
        // The walk makes more POSTs than the per-IP budget allows a minute.
        extra: "[throttle]\nauth_per_minute = 0\n".into(),
        ..Builder::default()
    }
}

async fn send(
    gw: &TestGateway,
    method: &str,
    path: &str,
    body: Option<Value>,
    bearer: Option<&str>,
) -> Response {
    http::send_json(gw.addr, method, path, body.as_ref(), bearer).await
}

async fn wait_token(gw: &TestGateway, to: &str, link: &str, n: usize) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let tokens: Vec<String> = gw
            .smtp()
            .messages()
            .iter()
            .filter(|m| m.to.iter().any(|t| t.contains(to)))
            .filter_map(|m| m.token_from_link(link))
            .collect();
        if tokens.len() >= n {
            return tokens[n - 1].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no mail #{n} to {to} with {link}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_operation_answers_as_documented() {
    // An outside provider (the real npm `oidc-provider`) for the sign-in
    // operations of CONTRACT 8.1.
    let idp = Idp::start(IdpConfig {
        accounts: [
            (
                "walk",
                json!({ "email": "walk@corp.example", "email_verified": true }),
            ),
            (
                "walk2",
                json!({ "email": "walk2@corp.example", "email_verified": true }),
            ),
        ]
        .into_iter()
        .map(|(u, c)| (u.to_string(), idp::account(c, &["pwd"])))
        .collect(),
        clients: vec![],
        ..Default::default()
    })
    .await;
    let mut b = gateway_builder();
    b.extra
        .push_str(&idp.gateway_toml("corp", FED_CLIENT, FED_SECRET_ENV, ""));
    b.env
        .insert(FED_SECRET_ENV.to_string(), FED_SECRET.to_string());
    let gw = TestGateway::start_with(b).await;
    idp.add_client(idp::client(
        FED_CLIENT,
        FED_SECRET,
        &["https://gateway.test/auth/oidc/corp/callback"],
        None,
    ))
    .await;
    let r = gw.get("/auth/openapi.json", None).await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
    // Served from the bytes built once.
    assert_eq!(gw.get("/auth/openapi.json", None).await.body, r.body);
    let mut spec = Spec {
        doc,
        called: BTreeSet::new(),
        succeeded: BTreeSet::new(),
    };
    spec.check("GET", "/auth/openapi.json", &r);
    let r = gw.get("/.well-known/jwks.json", None).await;
    spec.check("GET", "/.well-known/jwks.json", &r);

    // ----- accounts
    let email = "walker@example.com";
    let reg = json!({ "email": email, "password": PASSWORD, "password_confirm": PASSWORD, "username": "walker" });
    let r = send(&gw, "POST", "/auth/register", Some(reg.clone()), None).await;
    assert_eq!(r.status, 201, "{r:?}");
    spec.check("POST", "/auth/register", &r);
    for body in [
        reg.clone(),
        json!({}),
        json!({ "email": 5, "password": "short" }),
    ] {
        let r = send(&gw, "POST", "/auth/register", Some(body), None).await;
        assert!(r.status == 409 || r.status == 400, "{r:?}");
        spec.check("POST", "/auth/register", &r);
    }
    let r = http::request(
        gw.addr,
        "POST",
        "/auth/register",
        &[("content-type", "text/plain")],
        Some(b"hello"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 415);
    spec.check("POST", "/auth/register", &r);
    let big = "x".repeat(70 * 1024);
    let r = send(
        &gw,
        "POST",
        "/auth/register",
        Some(json!({ "email": big })),
        None,
    )
    .await;
    assert_eq!(r.status, 413);
    spec.check("POST", "/auth/register", &r);

    let token = wait_token(&gw, email, "/auth/email/verify", 1).await;
    let r = gw.get("/auth/email/verify?token=abc", None).await;
    spec.check("GET", "/auth/email/verify", &r);
    for t in [token.as_str(), "not-a-token"] {
        let r = send(
            &gw,
            "POST",
            "/auth/email/verify",
            Some(json!({ "token": t })),
            None,
        )
        .await;
        spec.check("POST", "/auth/email/verify", &r);
    }
    // Three per address, then 429 with Retry-After.
    for i in 0..4 {
        let r = send(
            &gw,
            "POST",
            "/auth/email/resend",
            Some(json!({ "email": email })),
            None,
        )
        .await;
        assert_eq!(r.status, if i < 3 { 202 } else { 429 }, "{r:?}");
        spec.check("POST", "/auth/email/resend", &r);
    }

    // ----- tokens
    let login = json!({ "email": email, "password": PASSWORD });
    let r = send(&gw, "POST", "/auth/login", Some(login.clone()), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    spec.check("POST", "/auth/login", &r);
    let v = r.json();
    let (access, refresh) = (
        v["access_token"].as_str().unwrap().to_string(),
        v["refresh_token"].as_str().unwrap().to_string(),
    );
    let wrong = json!({ "email": email, "password": "not the password" });
    let r = send(&gw, "POST", "/auth/login", Some(wrong), None).await;
    assert_eq!(r.status, 401);
    spec.check("POST", "/auth/login", &r);

    let r = send(
        &gw,
        "POST",
        "/auth/refresh",
        Some(json!({ "refresh_token": refresh })),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    spec.check("POST", "/auth/refresh", &r);
    let r = send(
        &gw,
        "POST",
        "/auth/refresh",
        Some(json!({ "refresh_token": "garbage" })),
        None,
    )
    .await;
    spec.check("POST", "/auth/refresh", &r);

    for t in [access.as_str(), "garbage"] {
        let r = send(
            &gw,
            "POST",
            "/auth/verify",
            Some(json!({ "token": t })),
            None,
        )
        .await;
        spec.check("POST", "/auth/verify", &r);
    }
    let r = gw.get("/auth/verify", Some(&access)).await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-user-id").is_some());
    spec.check("GET", "/auth/verify", &r);
    let r = gw.get("/auth/verify", None).await;
    assert_eq!(r.status, 401);
    spec.check("GET", "/auth/verify", &r);

    // ----- profile and sessions
    for bearer in [Some(access.as_str()), None] {
        let r = gw.get("/auth/me", bearer).await;
        spec.check("GET", "/auth/me", &r);
        let r = gw.get("/auth/sessions", bearer).await;
        spec.check("GET", "/auth/sessions", &r);
    }
    for body in [
        json!({ "username": "walker2" }),
        json!({ "username": null }),
        json!({ "email": "x@example.com" }),
    ] {
        let r = send(&gw, "PATCH", "/auth/me", Some(body), Some(&access)).await;
        spec.check("PATCH", "/auth/me", &r);
    }
    // A second session to end.
    let r = send(&gw, "POST", "/auth/login", Some(login.clone()), None).await;
    let second = r.json()["access_token"].as_str().unwrap().to_string();
    let list = gw.get("/auth/sessions", Some(&access)).await.json();
    let other = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == false)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for id in [other.as_str(), "00000000-0000-4000-8000-000000000000", "x"] {
        let r = send(
            &gw,
            "DELETE",
            &format!("/auth/sessions/{id}"),
            None,
            Some(&access),
        )
        .await;
        spec.check("DELETE", "/auth/sessions/{id}", &r);
    }
    assert_eq!(gw.get("/auth/me", Some(&second)).await.status, 401);

    // ----- re-authentication
    for (body, bearer, status) in [
        (json!({ "password": PASSWORD }), Some(access.as_str()), 200),
        (
            json!({ "password": "not the password" }),
            Some(access.as_str()),
            401,
        ),
        (json!({}), Some(access.as_str()), 400),
        (json!({ "password": PASSWORD }), None, 401),
    ] {
        let r = send(&gw, "POST", "/auth/reauth", Some(body), bearer).await;
        assert_eq!(r.status, status, "{r:?}");
        spec.check("POST", "/auth/reauth", &r);
    }

    // ----- passwords
    let new_pw = "a different long passphrase";
    for (current, status) in [("wrong password!", 401), (PASSWORD, 204)] {
        let r = send(
            &gw,
            "POST",
            "/auth/password/change",
            Some(json!({ "current_password": current, "new_password": new_pw, "new_password_confirm": new_pw })),
            Some(&access),
        )
        .await;
        assert_eq!(r.status, status, "{r:?}");
        spec.check("POST", "/auth/password/change", &r);
    }
    let r = gw.get("/auth/password/reset?token=abc", None).await;
    spec.check("GET", "/auth/password/reset", &r);
    let r = send(
        &gw,
        "POST",
        "/auth/password/reset",
        Some(json!({ "email": email })),
        None,
    )
    .await;
    assert_eq!(r.status, 202);
    spec.check("POST", "/auth/password/reset", &r);
    let reset = wait_token(&gw, email, "/auth/password/reset", 1).await;
    for (t, pw2) in [
        ("not-a-token", PASSWORD),
        (reset.as_str(), "short"),
        (reset.as_str(), PASSWORD),
    ] {
        let r = send(
            &gw,
            "POST",
            "/auth/password/reset/confirm",
            Some(json!({ "token": t, "new_password": pw2, "new_password_confirm": pw2 })),
            None,
        )
        .await;
        spec.check("POST", "/auth/password/reset/confirm", &r);
    }

    // ----- mfa (a user of its own, so the walk's user keeps logging in
    // with the password alone)
    let m = gw.signup("mfa-walker@example.com").await;
    let r = send(&gw, "POST", "/auth/mfa/totp/enroll", None, Some(&m.access)).await;
    assert_eq!(r.status, 200, "{r:?}");
    spec.check("POST", "/auth/mfa/totp/enroll", &r);
    let secret = base32_decode(r.json()["secret"].as_str().unwrap());
    let r = send(&gw, "POST", "/auth/mfa/totp/enroll", None, None).await;
    spec.check("POST", "/auth/mfa/totp/enroll", &r);
    for body in [json!({ "code": "000000x" }), json!({})] {
        let r = send(
            &gw,
            "POST",
            "/auth/mfa/totp/confirm",
            Some(body),
            Some(&m.access),
        )
        .await;
        assert_eq!(r.status, 400, "{r:?}");
        spec.check("POST", "/auth/mfa/totp/confirm", &r);
    }
    let now = gw.clock.now();
    let r = send(
        &gw,
        "POST",
        "/auth/mfa/totp/confirm",
        Some(json!({ "code": code_at(&secret, now) })),
        Some(&m.access),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    spec.check("POST", "/auth/mfa/totp/confirm", &r);
    let recovery: Vec<String> = r.json()["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let r = send(&gw, "POST", "/auth/mfa/totp/enroll", None, Some(&m.access)).await;
    assert_eq!(r.status, 409, "{r:?}");
    spec.check("POST", "/auth/mfa/totp/enroll", &r);
    let m_login = json!({ "email": "mfa-walker@example.com", "password": PASSWORD });
    let r = send(&gw, "POST", "/auth/login", Some(m_login), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    spec.check("POST", "/auth/login", &r);
    let mfa_token = r.json()["mfa_token"].as_str().unwrap().to_string();
    for (body, status) in [
        (json!({ "mfa_token": mfa_token, "code": "12" }), 400),
        (json!({ "mfa_token": "nope", "code": recovery[0] }), 401),
        (json!({ "mfa_token": mfa_token, "code": recovery[0] }), 200),
    ] {
        let r = send(&gw, "POST", "/auth/mfa/verify", Some(body), None).await;
        assert_eq!(r.status, status, "{r:?}");
        spec.check("POST", "/auth/mfa/verify", &r);
    }
    for (body, status) in [
        (
            json!({ "password": "not the password", "code": recovery[1] }),
            401,
        ),
        (json!({ "password": PASSWORD, "code": "nope" }), 400),
        (json!({ "password": PASSWORD, "code": recovery[1] }), 204),
    ] {
        let r = send(&gw, "DELETE", "/auth/mfa/totp", Some(body), Some(&m.access)).await;
        assert_eq!(r.status, status, "{r:?}");
        spec.check("DELETE", "/auth/mfa/totp", &r);
    }

    // ----- api keys
    let create = json!({ "name": "ci", "scopes": ["read"], "expires_in_secs": 3600 });
    let r = send(
        &gw,
        "POST",
        "/auth/api-keys",
        Some(create.clone()),
        Some(&m.access),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    spec.check("POST", "/auth/api-keys", &r);
    let key_id = r.json()["id"].as_str().unwrap().to_string();
    for (body, bearer) in [
        (json!({ "name": "", "scopes": [] }), Some(m.access.as_str())),
        (create, None),
    ] {
        let r = send(&gw, "POST", "/auth/api-keys", Some(body), bearer).await;
        spec.check("POST", "/auth/api-keys", &r);
    }
    for bearer in [Some(m.access.as_str()), None] {
        let r = send(&gw, "GET", "/auth/api-keys", None, bearer).await;
        spec.check("GET", "/auth/api-keys", &r);
    }
    // A sign-in older than accounts.reauth_secs: 403 reauth_required.
    gw.clock.advance(301);
    let create = json!({ "name": "late", "scopes": ["read"] });
    let r = send(&gw, "POST", "/auth/api-keys", Some(create), Some(&m.access)).await;
    assert_eq!(r.status, 403, "{r:?}");
    spec.check("POST", "/auth/api-keys", &r);
    let r = send(&gw, "POST", "/auth/mfa/totp/enroll", None, Some(&m.access)).await;
    assert_eq!(r.status, 403, "{r:?}");
    spec.check("POST", "/auth/mfa/totp/enroll", &r);
    for status in [204, 404] {
        let path = format!("/auth/api-keys/{key_id}");
        let r = send(&gw, "DELETE", &path, None, Some(&m.access)).await;
        assert_eq!(r.status, status, "{r:?}");
        spec.check("DELETE", "/auth/api-keys/{id}", &r);
    }

    // ----- logout
    let r = send(&gw, "POST", "/auth/login", Some(login.clone()), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    let (access, refresh) = (
        v["access_token"].as_str().unwrap().to_string(),
        v["refresh_token"].as_str().unwrap().to_string(),
    );
    let r = send(
        &gw,
        "POST",
        "/auth/logout",
        Some(json!({ "refresh_token": refresh })),
        Some(&access),
    )
    .await;
    assert_eq!(r.status, 204);
    spec.check("POST", "/auth/logout", &r);
    let r = send(&gw, "POST", "/auth/login", Some(login), None).await;
    let access = r.json()["access_token"].as_str().unwrap().to_string();
    for bearer in [Some(access.as_str()), None] {
        let r = send(&gw, "POST", "/auth/logout-all", None, bearer).await;
        spec.check("POST", "/auth/logout-all", &r);
    }

    federation::federation_cases(&gw, &idp, &mut spec).await;

    // A method the path does not serve: 405 with the document's methods.
    let r = send(&gw, "PUT", "/auth/me", None, None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, PATCH"));

    // ----- the OpenID Provider, on a gateway of its own (with the portal)
    walk_provider(&mut spec).await;

    let all = spec.operations();
    let uncalled: Vec<_> = all.difference(&spec.called).collect();
    assert!(uncalled.is_empty(), "no case calls {uncalled:?}");
    let unproven: Vec<_> = all.difference(&spec.succeeded).collect();
    assert!(unproven.is_empty(), "no successful call of {unproven:?}");
}

const OP_SECRET: &str = "walk-secret-0123456789";
const OP_CB: &str = "http://127.0.0.1:9/cb";

fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

async fn form_post(
    gw: &TestGateway,
    path: &str,
    pairs: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> Response {
    let body = form(pairs);
    let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
    h.extend_from_slice(headers);
    http::request(gw.addr, "POST", path, &h, Some(body.as_bytes()))
        .await
        .unwrap()
}

/// The provider's operations (CONTRACT 8.2), each with a success and its
/// usual refusals, on a gateway with the provider and the portal on.
async fn walk_provider(spec: &mut Spec) {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine;
    use sha2::Digest;
    let gw = TestGateway::start_with(Builder {
        extra: format!(
            r#"[browser]
enabled = true

[throttle]
auth_per_minute = 0

[oidc_provider]
enabled = true

[[oidc_provider.clients]]
client_id = "walk"
client_secret_env = "WALK_SECRET"
redirect_uris = ["{OP_CB}"]
post_logout_redirect_uris = ["{OP_CB}"]

[[oidc_provider.clients]]
client_id = "asks"
client_secret_env = "WALK_SECRET"
redirect_uris = ["{OP_CB}"]
consent = true
"#
        ),
        link_base_url: "http://127.0.0.1:{PORT}".into(),
        env: [("WALK_SECRET".to_string(), OP_SECRET.to_string())].into(),
        ..Default::default()
    })
    .await;
    let r = gw.get("/.well-known/openid-configuration", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    spec.check("GET", "/.well-known/openid-configuration", &r);
    gw.signup("op-walker@example.com").await;
    let cookie = crate::browser::portal_login(&gw, "op-walker@example.com", "/").await;
    let session = format!("__Host-portcullis={cookie}");
    let verifier = "walk-verifier-".repeat(4);
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let request = |client: &str| {
        form(&[
            ("client_id", client),
            ("redirect_uri", OP_CB),
            ("response_type", "code"),
            ("scope", "openid email"),
            ("state", "s1"),
            ("nonce", "n1"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
    };
    let get = |path: String, cookie: Option<String>| {
        let addr = gw.addr;
        async move {
            let mut h = vec![];
            if let Some(c) = &cookie {
                h.push(("cookie", c.as_str()));
            }
            http::request(addr, "GET", &path, &h, None).await.unwrap()
        }
    };

    // ----- authorize
    let r = get(
        format!("/auth/oauth/authorize?{}", request("walk")),
        Some(session.clone()),
    )
    .await;
    assert_eq!(r.status, 302, "{r:?}");
    spec.check("GET", "/auth/oauth/authorize", &r);
    let location = url::Url::parse(r.header("location").unwrap()).unwrap();
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let r = get(
        format!("/auth/oauth/authorize?{}", request("nobody")),
        Some(session.clone()),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    spec.check("GET", "/auth/oauth/authorize", &r);
    let consent_request = request("asks");
    let r = get(
        format!("/auth/oauth/authorize?{consent_request}"),
        Some(session.clone()),
    )
    .await;
    assert_eq!(r.status, 200, "the consent page: {r:?}");
    spec.check("GET", "/auth/oauth/authorize", &r);
    let csrf = crate::browser::set_cookie(&r, "__Host-portcullis-csrf")
        .unwrap()
        .to_string();
    let origin = format!("http://{}", gw.addr);
    let cookies = format!("__Host-portcullis-csrf={csrf}; {session}");
    for (token, status) in [("wrong", 403), (csrf.as_str(), 302)] {
        let r = form_post(
            &gw,
            "/auth/oauth/authorize",
            &[
                ("csrf", token),
                ("request", &consent_request),
                ("decision", "allow"),
            ],
            &[("cookie", &cookies), ("origin", &origin)],
        )
        .await;
        assert_eq!(r.status, status, "{r:?}");
        spec.check("POST", "/auth/oauth/authorize", &r);
    }

    // ----- token
    let basic = format!("Basic {}", STANDARD.encode(format!("walk:{OP_SECRET}")));
    let wrong = format!("Basic {}", STANDARD.encode("walk:not-the-secret"));
    let mut tokens = Value::Null;
    for (code, auth, status) in [
        (code.as_str(), wrong.as_str(), 401),
        ("not-a-code", basic.as_str(), 400),
        (code.as_str(), basic.as_str(), 200),
    ] {
        let p = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", OP_CB),
            ("code_verifier", verifier.as_str()),
        ];
        let r = form_post(&gw, "/auth/oauth/token", &p, &[("authorization", auth)]).await;
        assert_eq!(r.status, status, "{r:?}");
        spec.check("POST", "/auth/oauth/token", &r);
        if status == 200 {
            tokens = r.json();
        }
    }
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    let id_token = tokens["id_token"].as_str().unwrap().to_string();
    let r = form_post(
        &gw,
        "/auth/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
        &[("authorization", &basic)],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    spec.check("POST", "/auth/oauth/token", &r);
    let refresh = r.json()["refresh_token"].as_str().unwrap().to_string();
    let access = r.json()["access_token"]
        .as_str()
        .map_or(access, str::to_string);

    // ----- userinfo
    for (bearer, status) in [(Some(access.as_str()), 200), (None, 401)] {
        let r = gw.get("/auth/oauth/userinfo", bearer).await;
        assert_eq!(r.status, status, "{r:?}");
        spec.check("GET", "/auth/oauth/userinfo", &r);
    }
    for (token, status) in [(access.as_str(), 200), ("not-a-token", 401)] {
        let r = form_post(&gw, "/auth/oauth/userinfo", &[("access_token", token)], &[]).await;
        assert_eq!(r.status, status, "{r:?}");
        spec.check("POST", "/auth/oauth/userinfo", &r);
    }

    // ----- revocation
    for (auth, status) in [(wrong.as_str(), 401), (basic.as_str(), 200)] {
        let r = form_post(
            &gw,
            "/auth/oauth/revoke",
            &[("token", &refresh), ("token_type_hint", "refresh_token")],
            &[("authorization", auth)],
        )
        .await;
        assert_eq!(r.status, status, "{r:?}");
        spec.check("POST", "/auth/oauth/revoke", &r);
    }
    let r = form_post(&gw, "/auth/oauth/revoke", &[], &[("authorization", &basic)]).await;
    assert_eq!(r.status, 400, "{r:?}");
    spec.check("POST", "/auth/oauth/revoke", &r);

    // ----- RP-initiated logout
    let hint = |uri: &str| {
        form(&[
            ("id_token_hint", id_token.as_str()),
            ("post_logout_redirect_uri", uri),
            ("state", "bye"),
        ])
    };
    for (query, status) in [
        (hint("https://evil.example/"), 200),
        (hint(OP_CB), 302),
        (String::new(), 302),
    ] {
        let r = get(format!("/auth/oauth/logout?{query}"), None).await;
        assert_eq!(r.status, status, "{r:?}");
        spec.check("GET", "/auth/oauth/logout", &r);
    }
    for (uri, status) in [("https://evil.example/", 200), (OP_CB, 302)] {
        let r = form_post(
            &gw,
            "/auth/oauth/logout",
            &[
                ("id_token_hint", id_token.as_str()),
                ("post_logout_redirect_uri", uri),
            ],
            &[],
        )
        .await;
        assert_eq!(r.status, status, "{r:?}");
        spec.check("POST", "/auth/oauth/logout", &r);
    }
}

/// The schemathesis CLI, installed into `target/tmp` on first use (pinned).
fn schemathesis() -> PathBuf {
    venv::venv("schemathesis-venv", &["schemathesis==4.32.5"]).join("bin/st")
}

/// Runs schemathesis on the document the gateway served (`doc`, a file:
/// loaded from a URL, schemathesis leaves out the operation serving it).
fn run_schemathesis(
    st: &Path,
    gw: &TestGateway,
    doc: &Path,
    bearer: &str,
    filter: &[&str],
) -> Output {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis/schemathesis.toml");
    let report = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(st);
    // Its cache and reports go to a temporary directory, not the repository.
    cmd.current_dir(report.path())
        .arg("--config-file")
        .arg(&config)
        .args(["--no-color", "run"])
        .arg(doc)
        .arg("--url")
        .arg(format!("http://{}", gw.addr))
        .args(["--checks", "all", "--max-examples", "25", "--seed", "12"])
        .args(["--workers", "2", "--request-timeout", "10"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {bearer}"))
        .arg("--report-dir")
        .arg(report.path())
        .args(filter);
    bin::run(cmd, None, Duration::from_secs(300))
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_or_schema_violation() {
    let st = schemathesis();
    // The provider on (without the portal), so its operations are fuzzed
    // past the 404 of a disabled provider.
    let mut b = gateway_builder();
    b.extra.push_str(&format!(
        "[oidc_provider]\nenabled = true\n[[oidc_provider.clients]]\nclient_id = \"fuzz\"\nredirect_uris = [\"{OP_CB}\"]\n"
    ));
    let gw = TestGateway::start_with(b).await;
    let s = gw.signup("fuzz@example.com").await;
    let served = gw.get("/auth/openapi.json", None).await;
    assert_eq!(served.status, 200);
    let doc_file = gw.dir.path().join("openapi.json");
    std::fs::write(&doc_file, &served.body).unwrap();
    // Logging out revokes the token the other operations are fuzzed with,
    // so the logout operations run second, each with the same token.
    let first = run_schemathesis(
        &st,
        &gw,
        &doc_file,
        &s.access,
        &["--exclude-path-regex", "^/auth/logout"],
    );
    let second = run_schemathesis(
        &st,
        &gw,
        &doc_file,
        &s.access,
        &["--include-path-regex", "^/auth/logout"],
    );
    for (name, out) in [("all but logout", &first), ("logout", &second)] {
        assert!(
            out.ok(),
            "schemathesis ({name}) failed:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stdout.contains("Test cases:") && out.stdout.contains(" passed"),
            "schemathesis ({name}) ran nothing:\n{}",
            out.stdout
        );
        // The summary's sections: none for failures or errors.
        assert!(
            !out.stdout
                .lines()
                .any(|l| l == "Failures:" || l == "Errors:"),
            "{}",
            out.stdout
        );
    }
    let tested = |out: &Output| -> usize {
        out.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("Tested: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let doc = served.json();
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert_eq!(
        tested(&first) + tested(&second),
        operations,
        "every operation is fuzzed:\n{}\n{}",
        first.stdout,
        second.stdout
    );
}
