//! Portcullis as an OpenID Provider (issue 23, CONTRACT 8.2) on the real
//! gateway: discovery, authorize, token, userinfo, revocation, RP logout;
//! the full flows are run by two relying parties nobody here wrote
//! (`openid-client` 6 in Node, Python `authlib`, pinned, under
//! `target/tmp/`; harness in `tests/rp/`). The browser's part (signing in
//! on the portal) is done over sockets here and handed to them as the
//! session cookie.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use portcullis::clock::Clock;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Barrier;

use crate::browser::{portal_login, set_cookie};
use crate::common::bin;
use crate::common::http::{self, Response};
use crate::common::*;

const SECRET: &str = "app secret: with + and %";
/// authlib 1.6 sends `client_secret_basic` without the form-urlencoding
/// RFC 6749 §2.3.1 asks for: its client's secret has no character that
/// encoding changes.
const PY_SECRET: &str = "pysecret0123456789";
const CB: &str = "http://127.0.0.1:9/cb";
const BYE: &str = "http://127.0.0.1:9/bye";

fn builder() -> Builder {
    builder_alg("EdDSA")
}

/// The provider with `signing_alg = alg`.
fn builder_alg(alg: &str) -> Builder {
    let mut env = HashMap::new();
    env.insert("APP_SECRET".to_string(), SECRET.to_string());
    env.insert("PY_SECRET".to_string(), PY_SECRET.to_string());
    Builder {
        extra: format!(
            r#"[browser]
enabled = true

[throttle]
auth_per_minute = 0

[oidc_provider]
enabled = true
signing_alg = "{alg}"

[[oidc_provider.clients]]
client_id = "app"
client_secret_env = "APP_SECRET"
redirect_uris = ["{CB}"]
post_logout_redirect_uris = ["{BYE}"]

[[oidc_provider.clients]]
client_id = "spa"
redirect_uris = ["{CB}"]

[[oidc_provider.clients]]
client_id = "admins"
client_secret_env = "APP_SECRET"
redirect_uris = ["{CB}"]
roles = ["admin"]

[[oidc_provider.clients]]
client_id = "py"
client_secret_env = "PY_SECRET"
redirect_uris = ["{CB}"]

[[oidc_provider.clients]]
client_id = "ask"
client_secret_env = "APP_SECRET"
redirect_uris = ["{CB}"]
consent = true
"#
        ),
        link_base_url: "http://127.0.0.1:{PORT}".into(),
        env,
        ..Default::default()
    }
}

async fn provider() -> TestGateway {
    TestGateway::start_with(builder()).await
}

fn issuer(gw: &TestGateway) -> String {
    format!("http://{}", gw.addr)
}

/// A user signed in on the portal: the session cookie's value.
async fn signed_in(gw: &TestGateway, email: &str) -> String {
    gw.signup(email).await;
    portal_login(gw, email, "/").await
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn query(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

async fn authorize(gw: &TestGateway, cookie: Option<&str>, pairs: &[(&str, &str)]) -> Response {
    let path = format!("/auth/oauth/authorize?{}", query(pairs));
    let c = cookie.map(|c| format!("__Host-portcullis={c}"));
    let mut h = vec![("accept", "text/html")];
    if let Some(c) = &c {
        h.push(("cookie", c));
    }
    http::request(gw.addr, "GET", &path, &h, None)
        .await
        .unwrap()
}

/// The parameters of a redirect to the client.
fn redirect_params(r: &Response) -> HashMap<String, String> {
    assert_eq!(r.status, 302, "{r:?}");
    let loc = r.header("location").unwrap();
    assert!(loc.starts_with(CB), "to the client: {loc}");
    let u = url::Url::parse(loc).unwrap();
    u.query_pairs().into_owned().collect()
}

fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(rand_bytes());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn rand_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    let u = uuid::Uuid::new_v4();
    b[..16].copy_from_slice(u.as_bytes());
    b[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    b
}

/// A code for `client` with PKCE; returns (code, verifier).
async fn code_for(gw: &TestGateway, cookie: &str, client: &str, scope: &str) -> (String, String) {
    let (verifier, challenge) = pkce();
    let r = authorize(
        gw,
        Some(cookie),
        &[
            ("client_id", client),
            ("redirect_uri", CB),
            ("response_type", "code"),
            ("scope", scope),
            ("state", "st"),
            ("nonce", "n-0S6_WzA2Mj"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    let p = redirect_params(&r);
    assert_eq!(p.get("state").map(String::as_str), Some("st"));
    assert_eq!(p.get("iss"), Some(&issuer(gw)));
    (p["code"].clone(), verifier)
}

fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}

async fn token_at(
    addr: std::net::SocketAddr,
    form: &[(&str, &str)],
    auth: Option<&str>,
) -> Response {
    let body = query(form);
    let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
    if let Some(a) = auth {
        h.push(("authorization", a));
    }
    http::request(addr, "POST", "/auth/oauth/token", &h, Some(body.as_bytes()))
        .await
        .unwrap()
}

async fn exchange(gw: &TestGateway, code: &str, verifier: &str) -> Response {
    exchange_at(gw.addr, code, verifier).await
}

/// [`exchange`] by address, for tasks that do not hold the gateway.
async fn exchange_at(addr: std::net::SocketAddr, code: &str, verifier: &str) -> Response {
    token_at(
        addr,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", CB),
            ("code_verifier", verifier),
        ],
        Some(&basic("app", SECRET)),
    )
    .await
}

/// A client session of `app` (scope `openid`) for the signed-in `cookie`:
/// the token response.
async fn app_tokens(gw: &TestGateway, cookie: &str) -> Value {
    let (code, verifier) = code_for(gw, cookie, "app", "openid").await;
    let r = exchange(gw, &code, &verifier).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// A refresh of `rt` by the confidential client `app`.
async fn refresh(gw: &TestGateway, rt: &str) -> Response {
    token_at(
        gw.addr,
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
        Some(&basic("app", SECRET)),
    )
    .await
}

/// `GET /auth/oauth/userinfo` with a client access token.
async fn userinfo(gw: &TestGateway, access: &str) -> Response {
    http::request(
        gw.addr,
        "GET",
        "/auth/oauth/userinfo",
        &[("authorization", &format!("Bearer {access}"))],
        None,
    )
    .await
    .unwrap()
}

/// The claims of a JWT, unverified (the RPs verify; here we read).
fn claims(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn header(jwt: &str) -> Value {
    let part = jwt.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn assert_oauth_error(r: &Response, status: u16, error: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.json()["error"], error, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_every_field_and_is_404_while_disabled() {
    let gw = provider().await;
    let r = gw.get("/.well-known/openid-configuration", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let d = r.json();
    let iss = issuer(&gw);
    assert_eq!(d["issuer"], iss);
    for (k, path) in [
        ("authorization_endpoint", "/auth/oauth/authorize"),
        ("token_endpoint", "/auth/oauth/token"),
        ("userinfo_endpoint", "/auth/oauth/userinfo"),
        ("jwks_uri", "/.well-known/jwks.json"),
        ("end_session_endpoint", "/auth/oauth/logout"),
        ("revocation_endpoint", "/auth/oauth/revoke"),
    ] {
        assert_eq!(d[k], format!("{iss}{path}"), "{k}");
    }
    assert_eq!(d["response_types_supported"], json!(["code"]));
    assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(d["subject_types_supported"], json!(["public"]));
    assert_eq!(d["id_token_signing_alg_values_supported"], json!(["EdDSA"]));
    for k in [
        "grant_types_supported",
        "token_endpoint_auth_methods_supported",
        "scopes_supported",
        "claims_supported",
    ] {
        assert!(d[k].as_array().is_some_and(|a| !a.is_empty()), "{k}");
    }
    assert_eq!(d["backchannel_logout_supported"], true);
    assert_eq!(d["backchannel_logout_session_supported"], true);
    // The JWKS carries the provider's key with its kid.
    let jwks = gw.get("/.well-known/jwks.json", None).await.json();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"].is_string()),
        "{jwks}"
    );

    let off = TestGateway::start().await;
    for path in [
        "/.well-known/openid-configuration",
        "/auth/oauth/authorize",
        "/auth/oauth/userinfo",
    ] {
        assert_eq!(off.get(path, None).await.status, 404, "{path}");
    }
    assert_eq!(
        off.get("/.well-known/jwks.json", None).await.json(),
        json!({ "keys": [] }),
        "HS256 and the provider off: the JWKS stays empty"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_client_or_redirect_uri_gets_a_page_never_a_redirect() {
    let gw = provider().await;
    let cookie = signed_in(&gw, "badredirect@example.com").await;
    let (_, ch) = pkce();
    let base = |client: &'static str, redirect: &'static str| {
        vec![
            ("client_id", client),
            ("redirect_uri", redirect),
            ("response_type", "code"),
            ("scope", "openid"),
        ]
    };
    for (client, redirect) in [
        ("nobody", CB),
        ("app", "http://127.0.0.1:9/cb/"),
        ("app", "http://127.0.0.1:9/CB"),
        ("app", "http://127.0.0.1:9/cb?x=1"),
        ("app", "https://evil.example/cb"),
    ] {
        let mut q = base(client, redirect);
        q.push(("code_challenge", &ch));
        q.push(("code_challenge_method", "S256"));
        let r = authorize(&gw, Some(&cookie), &q).await;
        assert_eq!(r.status, 400, "{client} {redirect}: {r:?}");
        assert!(r.header("location").is_none(), "never redirected");
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
    }
    // Without redirect_uri at all: a page too.
    let r = authorize(
        &gw,
        Some(&cookie),
        &[
            ("client_id", "app"),
            ("response_type", "code"),
            ("scope", "openid"),
        ],
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.header("location").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_errors_go_back_to_the_client_with_state() {
    let gw = provider().await;
    let cookie = signed_in(&gw, "errors@example.com").await;
    let (_, ch) = pkce();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        // A public client without PKCE, or with plain.
        (
            vec![
                ("client_id", "spa"),
                ("scope", "openid"),
                ("response_type", "code"),
            ],
            "invalid_request",
        ),
        (
            vec![
                ("client_id", "spa"),
                ("scope", "openid"),
                ("response_type", "code"),
                ("code_challenge", &ch),
                ("code_challenge_method", "plain"),
            ],
            "invalid_request",
        ),
        (
            vec![
                ("client_id", "spa"),
                ("scope", "openid"),
                ("response_type", "code"),
                ("code_challenge", &ch),
            ],
            "invalid_request",
        ),
        (
            vec![
                ("client_id", "app"),
                ("scope", "openid"),
                ("response_type", "token"),
            ],
            "unsupported_response_type",
        ),
        (
            vec![
                ("client_id", "app"),
                ("scope", "email"),
                ("response_type", "code"),
            ],
            "invalid_scope",
        ),
        (
            vec![
                ("client_id", "app"),
                ("scope", "openid admin"),
                ("response_type", "code"),
            ],
            "invalid_scope",
        ),
    ];
    for (mut q, error) in cases {
        q.push(("redirect_uri", CB));
        q.push(("state", "s&1"));
        let r = authorize(&gw, Some(&cookie), &q).await;
        let p = redirect_params(&r);
        assert_eq!(p.get("error").map(String::as_str), Some(error), "{q:?}");
        assert_eq!(p.get("state").map(String::as_str), Some("s&1"));
        assert!(!p.contains_key("code"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_session_the_portal_signs_in_and_comes_back() {
    let gw = provider().await;
    gw.signup("roundtrip@example.com").await;
    let (verifier, ch) = pkce();
    let q = [
        ("client_id", "spa"),
        ("redirect_uri", CB),
        ("response_type", "code"),
        ("scope", "openid email"),
        ("state", "xyz"),
        ("code_challenge", ch.as_str()),
        ("code_challenge_method", "S256"),
    ];
    // prompt=none and no session: login_required at the client.
    let mut none = q.to_vec();
    none.push(("prompt", "none"));
    let p = redirect_params(&authorize(&gw, None, &none).await);
    assert_eq!(p["error"], "login_required");
    assert_eq!(p["state"], "xyz");
    // Otherwise: to the sign-in page, and back to the same request.
    let r = authorize(&gw, None, &q).await;
    assert_eq!(r.status, 302);
    let loc = r.header("location").unwrap().to_string();
    assert!(loc.starts_with("/auth/ui/login?rd="), "{loc}");
    let u = url::Url::parse(&format!("http://x{loc}")).unwrap();
    let rd: String = u.query_pairs().find(|(k, _)| k == "rd").unwrap().1.into();
    assert!(rd.starts_with("/auth/oauth/authorize?"), "{rd}");
    let cookie = portal_login(&gw, "roundtrip@example.com", &rd).await;
    let r = http::request(
        gw.addr,
        "GET",
        &rd,
        &[("cookie", &format!("__Host-portcullis={cookie}"))],
        None,
    )
    .await
    .unwrap();
    let p = redirect_params(&r);
    assert_eq!(p["state"], "xyz");
    // The public client exchanges it with its verifier and no secret.
    let r = token_at(
        gw.addr,
        &[
            ("grant_type", "authorization_code"),
            ("code", &p["code"]),
            ("redirect_uri", CB),
            ("code_verifier", &verifier),
            ("client_id", "spa"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json();
    let id = claims(t["id_token"].as_str().unwrap());
    assert_eq!(id["aud"], "spa");
    assert_eq!(id["email"], "roundtrip@example.com");
    assert!(
        id.get("nonce").is_none(),
        "no nonce sent, none in the token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_login_and_max_age_force_a_new_sign_in() {
    let gw = provider().await;
    let cookie = signed_in(&gw, "maxage@example.com").await;
    let (verifier, ch) = pkce();
    let q = |extra: (&'static str, &'static str)| {
        vec![
            ("client_id", "app"),
            ("redirect_uri", CB),
            ("response_type", "code"),
            ("scope", "openid"),
            ("code_challenge", ch.clone().leak() as &str),
            ("code_challenge_method", "S256"),
            extra,
        ]
    };
    // A recent sign-in satisfies max_age.
    let r = authorize(&gw, Some(&cookie), &q(("max_age", "300"))).await;
    assert!(redirect_params(&r).contains_key("code"));
    gw.clock.advance(400);
    // Older than max_age, or prompt=login: the sign-in page, even with a session.
    for extra in [("max_age", "300"), ("prompt", "login")] {
        let r = authorize(&gw, Some(&cookie), &q(extra)).await;
        assert_eq!(r.status, 302, "{extra:?}");
        let loc = r.header("location").unwrap().to_string();
        assert!(loc.starts_with("/auth/ui/login?prompt=login&rd="), "{loc}");
        // The sign-in page shows its form although there is a session.
        let page = http::request(
            gw.addr,
            "GET",
            &loc,
            &[
                ("cookie", &format!("__Host-portcullis={cookie}")),
                ("accept", "text/html"),
            ],
            None,
        )
        .await
        .unwrap();
        assert_eq!(page.status, 200, "{page:?}");
        // Signing in again, the request comes back and gives a code whose
        // ID token carries the new auth_time.
        let u = url::Url::parse(&format!("http://x{loc}")).unwrap();
        let rd: String = u.query_pairs().find(|(k, _)| k == "rd").unwrap().1.into();
        let fresh = portal_login(&gw, "maxage@example.com", &rd).await;
        let back = http::request(
            gw.addr,
            "GET",
            &rd,
            &[("cookie", &format!("__Host-portcullis={fresh}"))],
            None,
        )
        .await
        .unwrap();
        let p = redirect_params(&back);
        assert!(p.contains_key("code"), "{extra:?}: {p:?}");
        let t = exchange(&gw, &p["code"], &verifier).await;
        assert_eq!(t.status, 200, "{}", t.text());
        let id = claims(t.json()["id_token"].as_str().unwrap());
        assert_eq!(
            id["auth_time"].as_i64(),
            Some(gw.clock.now()),
            "{extra:?}: the new sign-in's time: {id}"
        );
    }
    // With prompt=none, a sign-in too old is login_required.
    let mut none = q(("max_age", "10"));
    none.push(("prompt", "none"));
    gw.clock.advance(60);
    let p = redirect_params(&authorize(&gw, Some(&cookie), &none).await);
    assert_eq!(p["error"], "login_required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_works_once_and_its_second_use_revokes_what_it_gave() {
    let gw = provider().await;
    let cookie = signed_in(&gw, "reuse@example.com").await;
    let (code, verifier) = code_for(&gw, &cookie, "app", "openid").await;
    // A wrong verifier or redirect URI does not spend it.
    let r = exchange(&gw, &code, &pkce().0).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    let r = exchange(&gw, &code, &verifier).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json();
    let access = t["access_token"].as_str().unwrap().to_string();
    let ui = userinfo(&gw, &access).await;
    assert_eq!(ui.status, 200);
    // Second use: refused, and the first use's tokens die.
    let r = exchange(&gw, &code, &verifier).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    let ui = userinfo(&gw, &access).await;
    assert_eq!(
        ui.status, 401,
        "the access token of the first use is revoked"
    );
    let r = refresh(&gw, t["refresh_token"].as_str().unwrap()).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    // Short lived: a code past code_ttl_secs is refused.
    let (code, verifier) = code_for(&gw, &cookie, "app", "openid").await;
    gw.clock.advance(61);
    assert_oauth_error(&exchange(&gw, &code, &verifier).await, 400, "invalid_grant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_parallel_exchanges_of_one_code_give_one_success() {
    let gw = provider().await;
    let cookie = signed_in(&gw, "parallel@example.com").await;
    let (code, verifier) = code_for(&gw, &cookie, "app", "openid").await;
    let barrier = Arc::new(Barrier::new(16));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (b, code, verifier, addr) = (barrier.clone(), code.clone(), verifier.clone(), gw.addr);
        set.spawn(async move {
            b.wait().await;
            exchange_at(addr, &code, &verifier).await
        });
    }
    let mut rs = vec![];
    while let Some(r) = set.join_next().await {
        rs.push(r.unwrap());
    }
    let ok: Vec<&Response> = rs.iter().filter(|r| r.status == 200).collect();
    assert_eq!(
        ok.len(),
        1,
        "{:?}",
        rs.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let losers: Vec<&Response> = rs.iter().filter(|r| r.status != 200).collect();
    assert_eq!(losers.len(), 15);
    for r in losers {
        assert_oauth_error(r, 400, "invalid_grant");
    }
    // The code was used more than once: what the winner got is revoked.
    let w = ok[0].json();
    let r = refresh(&gw, w["refresh_token"].as_str().unwrap()).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    let ui = userinfo(&gw, w["access_token"].as_str().unwrap()).await;
    assert_eq!(ui.status, 401, "{}", ui.text());
}

/// A code exchange and an admin disable of its user, fired at once (eight
/// users, one race each): whichever lands first, the account ends up
/// disabled and nothing the exchange may have got still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_code_exchange_racing_a_disable_leaves_nothing_usable() {
    let gw = provider().await;
    for round in 0..8 {
        let email = format!("racedisable{round}@example.com");
        let cookie = signed_in(&gw, &email).await;
        let (code, verifier) = code_for(&gw, &cookie, "app", "openid").await;
        let barrier = Arc::new(Barrier::new(2));
        let (b, addr) = (barrier.clone(), gw.addr);
        let exchange = tokio::spawn(async move {
            b.wait().await;
            exchange_at(addr, &code, &verifier).await
        });
        barrier.wait().await;
        admin_disable(&gw, &email).await;
        let r = exchange.await.unwrap();
        assert!(matches!(r.status, 200 | 400), "{}", r.text());
        if r.status == 200 {
            let t = r.json();
            let ui = userinfo(&gw, t["access_token"].as_str().unwrap()).await;
            assert_eq!(ui.status, 401, "round {round}: {}", ui.text());
            let r = refresh(&gw, t["refresh_token"].as_str().unwrap()).await;
            assert_oauth_error(&r, 400, "invalid_grant");
        } else {
            assert_oauth_error(&r, 400, "invalid_grant");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_parallel_refreshes_have_one_winner_and_end_the_session() {
    let gw = provider().await;
    let cookie = signed_in(&gw, "refresh16p@example.com").await;
    let t = app_tokens(&gw, &cookie).await;
    let rt = t["refresh_token"].as_str().unwrap().to_string();
    let barrier = Arc::new(Barrier::new(16));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (b, rt, addr) = (barrier.clone(), rt.clone(), gw.addr);
        set.spawn(async move {
            b.wait().await;
            token_at(
                addr,
                &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
                Some(&basic("app", SECRET)),
            )
            .await
        });
    }
    let mut rs = vec![];
    while let Some(r) = set.join_next().await {
        rs.push(r.unwrap());
    }
    let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 400).count(),
        15,
        "{statuses:?}"
    );
    // As section 4: the losers were reuse, which ended the session.
    let winner = rs.iter().find(|r| r.status == 200).unwrap().json();
    let r = refresh(&gw, winner["refresh_token"].as_str().unwrap()).await;
    assert_oauth_error(&r, 400, "invalid_grant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sessions_are_user_sessions_and_end_with_logout_all_and_disable() {
    let gw = provider().await;
    let s = gw.signup("sessions@example.com").await;
    let cookie = portal_login(&gw, "sessions@example.com", "/").await;
    let t = app_tokens(&gw, &cookie).await;
    let id = claims(t["id_token"].as_str().unwrap());
    let list = gw.get("/auth/sessions", Some(&s.access)).await.json();
    assert!(
        list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == id["sid"]),
        "the client session is listed: {list}"
    );
    // Its refresh token is no gateway refresh token.
    let r = gw
        .post(
            "/auth/refresh",
            json!({ "refresh_token": t["refresh_token"] }),
            None,
        )
        .await;
    assert_error(&r, 401, "invalid_token");
    assert_eq!(
        gw.post("/auth/logout-all", json!({}), Some(&s.access))
            .await
            .status,
        204
    );
    let r = refresh(&gw, t["refresh_token"].as_str().unwrap()).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    // Disable: a new client session ends too.
    let cookie = portal_login(&gw, "sessions@example.com", "/").await;
    let t = app_tokens(&gw, &cookie).await;
    admin_disable(&gw, "sessions@example.com").await;
    let ui = userinfo(&gw, t["access_token"].as_str().unwrap()).await;
    assert_eq!(ui.status, 401);
    let r = refresh(&gw, t["refresh_token"].as_str().unwrap()).await;
    assert_oauth_error(&r, 400, "invalid_grant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_authentication_is_checked_both_ways() {
    let gw = provider().await;
    let cookie = signed_in(&gw, "clientauth@example.com").await;
    let (code, verifier) = code_for(&gw, &cookie, "app", "openid").await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", CB),
        ("code_verifier", verifier.as_str()),
    ];
    let r = token_at(gw.addr, &form, Some(&basic("app", "wrong"))).await;
    assert_oauth_error(&r, 401, "invalid_client");
    assert!(r.header("www-authenticate").is_some());
    // Basic without form-urlencoding first: the '+' and '%' differ.
    let raw = format!("Basic {}", STANDARD.encode(format!("app:{SECRET}")));
    assert_oauth_error(
        &token_at(gw.addr, &form, Some(&raw)).await,
        401,
        "invalid_client",
    );
    // The public client's id cannot redeem the confidential client's code.
    let mut spa = form.to_vec();
    spa.push(("client_id", "spa"));
    assert_oauth_error(&token_at(gw.addr, &spa, None).await, 400, "invalid_grant");
    // client_secret_post works.
    let mut post = form.to_vec();
    post.push(("client_id", "app"));
    post.push(("client_secret", SECRET));
    let r = token_at(gw.addr, &post, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        header(r.json()["access_token"].as_str().unwrap())["typ"],
        "at+jwt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_roles_refuse_other_users_with_a_page() {
    let gw = provider().await;
    gw.admin_add_user("boss@example.com", &["admin"]).await;
    let user = signed_in(&gw, "plain@example.com").await;
    let boss = portal_login(&gw, "boss@example.com", "/").await;
    let (_, ch) = pkce();
    let q = [
        ("client_id", "admins"),
        ("redirect_uri", CB),
        ("response_type", "code"),
        ("scope", "openid roles"),
        ("code_challenge", ch.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let r = authorize(&gw, Some(&user), &q).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.header("location").is_none());
    let r = authorize(&gw, Some(&boss), &q).await;
    assert!(redirect_params(&r).contains_key("code"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_is_asked_once_per_client_and_scope_set() {
    let gw = provider().await;
    let cookie = signed_in(&gw, "consent@example.com").await;
    let (_, ch) = pkce();
    let q = |scope: &'static str| {
        vec![
            ("client_id", "ask"),
            ("redirect_uri", CB),
            ("response_type", "code"),
            ("scope", scope),
            ("state", "c1"),
            ("code_challenge", ch.clone().leak() as &str),
            ("code_challenge_method", "S256"),
        ]
    };
    let r = authorize(&gw, Some(&cookie), &q("openid email")).await;
    assert_eq!(r.status, 200, "the consent page: {r:?}");
    let page = r.text();
    assert!(page.contains("email"), "{page}");
    let csrf = set_cookie(&r, "__Host-portcullis-csrf")
        .unwrap()
        .to_string();
    let request = query(&q("openid email"));
    let submit = |decision: &'static str| {
        let body = query(&[
            ("csrf", &csrf),
            ("request", &request),
            ("decision", decision),
        ]);
        let cookies = format!("__Host-portcullis-csrf={csrf}; __Host-portcullis={cookie}");
        let origin = issuer(&gw);
        let addr = gw.addr;
        async move {
            http::request(
                addr,
                "POST",
                "/auth/oauth/authorize",
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("cookie", &cookies),
                    ("origin", &origin),
                ],
                Some(body.as_bytes()),
            )
            .await
            .unwrap()
        }
    };
    let p = redirect_params(&submit("deny").await);
    assert_eq!(p["error"], "access_denied");
    let p = redirect_params(&submit("allow").await);
    assert!(p.contains_key("code"));
    // Asked once: the same set again goes straight through; a new set asks.
    let r = authorize(&gw, Some(&cookie), &q("email openid")).await;
    assert!(redirect_params(&r).contains_key("code"));
    let r = authorize(&gw, Some(&cookie), &q("openid profile")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp_logout_redirects_only_to_a_registered_uri() {
    let gw = provider().await;
    let cookie = signed_in(&gw, "rplogout@example.com").await;
    let mut tokens = vec![];
    for _ in 0..2 {
        let (code, verifier) = code_for(&gw, &cookie, "app", "openid").await;
        tokens.push(exchange(&gw, &code, &verifier).await.json());
    }
    let logout = |t: &Value, uri: &str| {
        format!(
            "/auth/oauth/logout?{}",
            query(&[
                ("id_token_hint", t["id_token"].as_str().unwrap()),
                ("post_logout_redirect_uri", uri),
                ("state", "s1"),
            ])
        )
    };
    let r = http::request(
        gw.addr,
        "GET",
        &logout(&tokens[0], "https://evil.example/"),
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "no redirect to an unregistered URI: {r:?}");
    assert!(r.header("location").is_none());
    let r = http::request(gw.addr, "GET", &logout(&tokens[1], BYE), &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some(format!("{BYE}?state=s1").as_str())
    );
    // Both client sessions ended.
    for t in &tokens {
        let r = refresh(&gw, t["refresh_token"].as_str().unwrap()).await;
        assert_oauth_error(&r, 400, "invalid_grant");
    }
}

// ----- the real relying parties

/// `openid-client` pinned, under target/tmp (installed on first use, as
/// `.ci/deps --test` does).
fn node_rp() -> std::path::PathBuf {
    const PIN: &str = "openid-client@6.8.1";
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("rp-node");
    // Several tests (and test processes) ask at once: one install, under a
    // machine-wide lock, counted done only by its marker.
    let _guard = crate::common::ports::machine_lock("rp-node-install");
    let ready = dir.join("ready");
    if std::fs::read(&ready).ok().as_deref() != Some(PIN.as_bytes()) {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = std::process::Command::new("npm");
        cmd.current_dir(&dir)
            .args(["install", "--no-audit", "--no-fund", PIN]);
        let out = bin::run(cmd, None, Duration::from_secs(300));
        assert!(out.ok(), "npm install openid-client failed: {out:?}");
        std::fs::write(&ready, PIN).unwrap();
    }
    // Rewritten only when it changed: another test may be running it.
    let script = dir.join("rp.mjs");
    let src = include_bytes!("../rp/rp.mjs");
    if std::fs::read(&script).ok().as_deref() != Some(src.as_slice()) {
        std::fs::write(&script, src).unwrap();
    }
    script
}

/// Python with `authlib` pinned, in a venv under target/tmp.
fn authlib_python() -> std::path::PathBuf {
    venv::python("rp-venv", &["authlib==1.6.5", "requests==2.32.5"])
}

fn run_json(cmd: std::process::Command) -> Value {
    let out = bin::run(cmd, None, Duration::from_secs(120));
    assert!(out.ok(), "relying party failed: {out:?}");
    let line = out.stdout.lines().last().unwrap_or_default().to_string();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_runs_the_full_flow() {
    let script = tokio::task::spawn_blocking(node_rp).await.unwrap();
    // RS256: the OIDC default, what every client supports.
    let gw = TestGateway::start_with(builder_alg("RS256")).await;
    gw.signup("node@example.com").await;
    let cookie = portal_login(&gw, "node@example.com", "/").await;
    let cfg = json!({
        "issuer": issuer(&gw),
        "client_id": "app",
        "client_secret": SECRET,
        "redirect_uri": CB,
        "post_logout_redirect_uri": BYE,
        "scope": "openid email profile",
        "alg": "RS256",
        "cookie": format!("__Host-portcullis={cookie}"),
    });
    let mut cmd = std::process::Command::new("node");
    cmd.arg(&script).arg(cfg.to_string());
    let out = tokio::task::spawn_blocking(move || run_json(cmd))
        .await
        .unwrap();
    assert_eq!(out["discovered_issuer"], issuer(&gw));
    let code = &out["code"]["ok"];
    assert!(
        code.is_object(),
        "the code grant passed openid-client's checks: {out}"
    );
    let c = &code["claims"];
    assert_eq!(c["iss"], issuer(&gw));
    assert_eq!(c["aud"], "app");
    assert_eq!(c["nonce"], out["nonce_sent"]);
    assert_eq!(c["email"], "node@example.com");
    assert_eq!(c["preferred_username"], "node@example.com");
    assert!(c.get("roles").is_none(), "no roles scope, no roles claim");
    assert!(c["auth_time"].is_i64() && c["sid"].is_string(), "{c}");
    assert_eq!(c["amr"], json!(["pwd"]));
    assert_eq!(out["userinfo"]["ok"]["email"], "node@example.com");
    assert!(out["refresh"]["ok"]["refresh_token"].is_string(), "{out}");
    assert_eq!(out["refresh_reuse"]["error"], "invalid_grant", "{out}");
    assert_eq!(
        out["refresh_after_reuse"]["error"], "invalid_grant",
        "reuse ended the session: {out}"
    );
    // The end-session URL it built redirects back to the registered URI.
    let end = url::Url::parse(out["end_session_url"].as_str().unwrap()).unwrap();
    let path = format!("{}?{}", end.path(), end.query().unwrap());
    let r = http::request(gw.addr, "GET", &path, &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some(format!("{BYE}?state=bye").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_runs_the_full_flow() {
    let py = tokio::task::spawn_blocking(authlib_python).await.unwrap();
    let gw = TestGateway::start_with(builder_alg("ES256")).await;
    gw.admin_add_user("py@example.com", &["editor"]).await;
    let cookie = portal_login(&gw, "py@example.com", "/").await;
    let cfg = json!({
        "issuer": issuer(&gw),
        "client_id": "py",
        "client_secret": PY_SECRET,
        "redirect_uri": CB,
        "scope": "openid email roles",
        "alg": "ES256",
        "cookie": format!("__Host-portcullis={cookie}"),
    });
    let mut cmd = std::process::Command::new(py);
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/rp/rp_authlib.py"
    ))
    .arg(cfg.to_string());
    let out = tokio::task::spawn_blocking(move || run_json(cmd))
        .await
        .unwrap();
    assert_eq!(out["issuer"], issuer(&gw));
    let c = &out["claims"];
    assert_eq!(c["nonce"], out["nonce_sent"]);
    assert_eq!(c["aud"], "py");
    assert_eq!(c["roles"], json!(["editor"]));
    assert_eq!(c["email_verified"], true);
    assert!(c["at_hash"].is_string(), "authlib checked it: {c}");
    assert!(c.get("preferred_username").is_none(), "no profile scope");
    assert_eq!(out["userinfo_status"], 200);
    assert_eq!(out["userinfo"]["roles"], json!(["editor"]));
    assert_eq!(out["revoke_status"], 200);
    assert_eq!(out["refresh_after_revoke"], "invalid_grant", "{out}");
}

// ----- back-channel logout

/// A local receiver of back-channel logouts: every POSTed `logout_token`.
async fn logout_receiver() -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(i) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= i + 4 + len {
                            let body = &buf[i + 4..i + 4 + len];
                            let token = url::form_urlencoded::parse(body)
                                .find(|(k, _)| k == "logout_token")
                                .map(|(_, v)| v.into_owned())
                                .unwrap_or_default();
                            let _ = tx.send(token);
                            break;
                        }
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (port, rx)
}

/// The provider whose client `app` receives back-channel logouts on
/// `port`.
fn builder_backchannel(port: u16) -> Builder {
    let mut b = builder();
    b.extra = b.extra.replace(
        "post_logout_redirect_uris = [\"http://127.0.0.1:9/bye\"]",
        &format!(
            "post_logout_redirect_uris = [\"http://127.0.0.1:9/bye\"]\nbackchannel_logout_uri = \"http://127.0.0.1:{port}/bcl\""
        ),
    );
    assert!(b.extra.contains("backchannel_logout_uri"));
    b
}

/// Verify a logout token with the gateway's JWKS, as a client would.
async fn verified_logout(gw: &TestGateway, token: &str) -> Value {
    let h = header(token);
    assert_eq!(h["typ"], "logout+jwt");
    let jwks = gw.get("/.well-known/jwks.json", None).await.json();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == h["kid"])
        .unwrap_or_else(|| panic!("kid {} in the JWKS", h["kid"]))
        .clone();
    let key = jsonwebtoken::DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&["app"]);
    v.set_issuer(&[issuer(gw)]);
    v.leeway = 3600;
    let c = jsonwebtoken::decode::<Value>(token, &key, &v)
        .unwrap_or_else(|e| panic!("logout token: {e}"))
        .claims;
    assert!(c.get("nonce").is_none(), "no nonce in a logout token");
    assert!(c["events"]["http://schemas.openid.net/event/backchannel-logout"].is_object());
    assert!(c["jti"].is_string() && c["iat"].is_i64() && c["exp"].is_i64());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backchannel_logout_reaches_the_client_after_logout_all_and_disable() {
    let (port, mut rx) = logout_receiver().await;
    let b = builder_backchannel(port);
    let gw = TestGateway::start_with(b).await;
    let s = gw.signup("bcl@example.com").await;
    let cookie = portal_login(&gw, "bcl@example.com", "/").await;
    let t = app_tokens(&gw, &cookie).await;
    let id = claims(t["id_token"].as_str().unwrap());
    assert_eq!(
        gw.post("/auth/logout-all", json!({}), Some(&s.access))
            .await
            .status,
        204
    );
    let token = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a back-channel logout after logout-all")
        .unwrap();
    let c = verified_logout(&gw, &token).await;
    assert_eq!(c["sid"], id["sid"]);
    assert_eq!(c["sub"], id["sub"]);
    // Disable: the new client session's logout is sent too.
    let cookie = portal_login(&gw, "bcl@example.com", "/").await;
    let t = app_tokens(&gw, &cookie).await;
    let id = claims(t["id_token"].as_str().unwrap());
    admin_disable(&gw, "bcl@example.com").await;
    let token = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a back-channel logout after disable")
        .unwrap();
    let c = verified_logout(&gw, &token).await;
    assert_eq!(c["sid"], id["sid"]);
    // Sent once: nothing else arrives for these two sessions.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .is_err(),
        "one logout per ended session"
    );
}

// ----- key rotation, each signing_alg, PostgreSQL

/// `openid-client` run against `gw` with `cfg` (issuer and cookie added).
async fn run_openid_client(gw: &TestGateway, cookie: &str, mut cfg: Value) -> Value {
    let script = tokio::task::spawn_blocking(node_rp).await.unwrap();
    cfg["issuer"] = json!(issuer(gw));
    cfg["cookie"] = json!(format!("__Host-portcullis={cookie}"));
    let mut cmd = std::process::Command::new("node");
    cmd.arg(&script).arg(cfg.to_string());
    tokio::task::spawn_blocking(move || run_json(cmd))
        .await
        .unwrap()
}

/// The `kid`s of the gateway's JWKS.
async fn jwks_kids(gw: &TestGateway) -> Vec<String> {
    gw.get("/.well-known/jwks.json", None).await.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["kid"].as_str().map(str::to_string))
        .collect()
}

/// `portcullis keys rotate` (the real binary, next to the running
/// provider, which it makes reload): an ID token signed before the
/// rotation still verifies through authlib against the JWKS, which keeps
/// the old `kid` until its tokens have expired; new ID and access tokens
/// carry the new `kid` and pass openid-client's checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_keys_rotate_old_id_tokens_verify_through_the_rp_and_new_ones_use_the_new_kid() {
    let py = tokio::task::spawn_blocking(authlib_python).await.unwrap();
    let gw = TestGateway::start_with(builder_alg("RS256")).await;
    let cookie = signed_in(&gw, "rotate@example.com").await;
    let (code, verifier) = code_for(&gw, &cookie, "app", "openid email").await;
    let old = exchange(&gw, &code, &verifier).await.json();
    let old_id = old["id_token"].as_str().unwrap().to_string();
    let k1 = header(&old_id)["kid"].as_str().unwrap().to_string();

    let config = gw.config_path().display().to_string();
    // The command reads the same config, so it needs the clients' secrets.
    let mut cmd = bin::command(&["keys", "rotate", "--config", &config]);
    cmd.env("APP_SECRET", SECRET).env("PY_SECRET", PY_SECRET);
    let out = bin::run_async(cmd, None, bin::CLI_LIMIT).await;
    assert!(out.ok(), "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["gateway"], "reloaded", "{v}");
    let p = &v["oidc_provider"];
    assert_eq!(p["previous"][0]["kid"], k1.as_str(), "{v}");
    assert!(p["key_file"]
        .as_str()
        .unwrap()
        .ends_with("oidc-keys-rs256.json"));
    let k2 = p["kid"].as_str().unwrap().to_string();
    assert_ne!(k1, k2);
    // The command dated the new key by the real clock; the gateway's test
    // clock catches up to it.
    let behind = portcullis::clock::SystemClock.now() - gw.clock.now();
    gw.clock.advance(behind.max(0));

    let kids = jwks_kids(&gw).await;
    assert!(kids.contains(&k1) && kids.contains(&k2), "{kids:?}");
    let (code, verifier) = code_for(&gw, &cookie, "app", "openid email").await;
    let new = exchange(&gw, &code, &verifier).await.json();
    let new_id = new["id_token"].as_str().unwrap().to_string();
    assert_eq!(header(&new_id)["kid"], k2.as_str());
    assert_eq!(
        header(new["access_token"].as_str().unwrap())["kid"],
        k2.as_str()
    );
    // A token under a kid the JWKS does not have is refused by the same
    // check (so the two successes are the JWKS's doing).
    let mut forged = header(&old_id);
    forged["kid"] = json!("not-a-published-kid");
    let forged = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(forged.to_string()),
        old_id.split_once('.').unwrap().1
    );
    let item = |t: &str| json!({ "token": t, "client_id": "app", "nonce": "n-0S6_WzA2Mj" });
    let cfg = json!({
        "issuer": issuer(&gw),
        "alg": "RS256",
        "verify": [item(&old_id), item(&new_id), item(&forged)],
    });
    let mut cmd = std::process::Command::new(py);
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/rp/rp_authlib.py"
    ))
    .arg(cfg.to_string());
    let out = tokio::task::spawn_blocking(move || run_json(cmd))
        .await
        .unwrap();
    let v = &out["verified"];
    assert_eq!(v[0]["ok"], true, "the pre-rotation ID token: {out}");
    assert_eq!(v[0]["kid"], k1.as_str());
    assert_eq!(v[1]["ok"], true, "the new ID token: {out}");
    assert_eq!(v[1]["kid"], k2.as_str());
    assert_eq!(v[2]["ok"], false, "an unpublished kid: {out}");

    // openid-client's whole flow after the rotation: the new kid.
    let out = run_openid_client(
        &gw,
        &cookie,
        json!({
            "client_id": "app",
            "client_secret": SECRET,
            "redirect_uri": CB,
            "post_logout_redirect_uri": BYE,
            "scope": "openid",
            "alg": "RS256",
        }),
    )
    .await;
    let t = &out["code"]["ok"];
    assert!(
        t.is_object(),
        "openid-client's checks after rotation: {out}"
    );
    assert_eq!(header(t["id_token"].as_str().unwrap())["kid"], k2.as_str());

    // Once every token the old key may have signed has expired (a day is
    // longer than any lifetime configured here), its kid leaves the JWKS.
    gw.clock.advance(86_400);
    let kids = jwks_kids(&gw).await;
    assert!(!kids.contains(&k1) && kids.contains(&k2), "{kids:?}");
}

/// Each `signing_alg` through openid-client, with the public client (PKCE
/// S256, no secret): its ID tokens verify against the JWKS, carry the
/// claims of the scopes asked for and no others, and its refresh token
/// rotates with reuse detection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_verifies_each_signing_alg_for_a_public_client() {
    for alg in ["RS256", "ES256", "EdDSA"] {
        let gw = TestGateway::start_with(builder_alg(alg)).await;
        let email = format!("{}@example.com", alg.to_lowercase());
        let cookie = signed_in(&gw, &email).await;
        let d = gw
            .get("/.well-known/openid-configuration", None)
            .await
            .json();
        assert_eq!(d["id_token_signing_alg_values_supported"], json!([alg]));
        let out = run_openid_client(
            &gw,
            &cookie,
            json!({
                "client_id": "spa",
                "redirect_uri": CB,
                "scope": "openid email",
                "alg": alg,
            }),
        )
        .await;
        let t = &out["code"]["ok"];
        assert!(t.is_object(), "{alg}: openid-client's checks: {out}");
        let h = header(t["id_token"].as_str().unwrap());
        assert_eq!(h["alg"], alg, "{h}");
        assert!(jwks_kids(&gw).await.iter().any(|k| *k == h["kid"]));
        let c = &t["claims"];
        assert_eq!(c["aud"], "spa");
        assert_eq!(c["nonce"], out["nonce_sent"]);
        assert_eq!(c["email"], email.as_str());
        assert_eq!(c["email_verified"], false, "a signup not yet verified");
        // at_hash: the left half of the access token's hash, SHA-512 for
        // Ed25519, else SHA-256.
        let at = t["access_token"].as_str().unwrap().as_bytes();
        let digest = if alg == "EdDSA" {
            sha2::Sha512::digest(at).to_vec()
        } else {
            Sha256::digest(at).to_vec()
        };
        assert_eq!(
            c["at_hash"],
            URL_SAFE_NO_PAD.encode(&digest[..digest.len() / 2]),
            "{alg}: {c}"
        );
        assert!(
            c.get("preferred_username").is_none() && c.get("roles").is_none(),
            "{alg}: only the claims of openid and email: {c}"
        );
        assert_eq!(out["userinfo"]["ok"]["email"], email.as_str(), "{out}");
        assert!(out["userinfo"]["ok"].get("roles").is_none(), "{out}");
        let rotated = out["refresh"]["ok"]["refresh_token"].as_str().unwrap();
        assert_ne!(Some(rotated), t["refresh_token"].as_str());
        assert_eq!(out["refresh_reuse"]["error"], "invalid_grant", "{out}");
        assert_eq!(out["refresh_after_reuse"]["error"], "invalid_grant");
    }
}

/// The gateway among `gws` whose JWKS publishes the token's `kid`.
async fn signer_of<'a>(gws: &'a [TestGateway], token: &str) -> &'a TestGateway {
    let kid = header(token)["kid"].as_str().unwrap().to_string();
    for gw in gws {
        if jwks_kids(gw).await.contains(&kid) {
            return gw;
        }
    }
    panic!("no gateway publishes kid {kid}")
}

/// Disable `email` with the admin API of `gw`.
async fn admin_disable(gw: &TestGateway, email: &str) {
    let token = std::fs::read_to_string(gw.data_dir().join("admin.token")).unwrap();
    let r = http::request(
        gw.admin_addr,
        "POST",
        "/admin/users",
        &[
            ("authorization", &format!("Bearer {}", token.trim())),
            ("content-type", "application/json"),
        ],
        Some(
            json!({ "op": "disable", "email": email })
                .to_string()
                .as_bytes(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// On PostgreSQL, two gateways on one database: a logout-all and an admin
/// disable on gateway A each send the client exactly one verified
/// `logout_token` (the durable queue is shared; its claim lease makes one
/// gateway send it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backchannel_logout_on_postgres_is_sent_once_across_gateways() {
    let cluster = pg::required();
    let url = cluster.database().await;
    let (port, mut rx) = logout_receiver().await;
    let mut gws = Vec::new();
    for _ in 0..2 {
        let mut b = builder_backchannel(port);
        b.extra.push_str(&format!(
            "\n[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\n"
        ));
        gws.push(TestGateway::start_with(b).await);
    }
    let a = &gws[0];
    let s = a.signup("pgbcl@example.com").await;
    let cookie = portal_login(a, "pgbcl@example.com", "/").await;
    let id = claims(app_tokens(a, &cookie).await["id_token"].as_str().unwrap());
    assert_eq!(
        a.post("/auth/logout-all", json!({}), Some(&s.access))
            .await
            .status,
        204
    );
    let token = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a back-channel logout after logout-all")
        .unwrap();
    let c = verified_logout(signer_of(&gws, &token).await, &token).await;
    assert_eq!(c["sid"], id["sid"]);
    assert_eq!(c["sub"], id["sub"]);

    let cookie = portal_login(a, "pgbcl@example.com", "/").await;
    let id = claims(app_tokens(a, &cookie).await["id_token"].as_str().unwrap());
    admin_disable(a, "pgbcl@example.com").await;
    let token = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a back-channel logout after disable")
        .unwrap();
    let c = verified_logout(signer_of(&gws, &token).await, &token).await;
    assert_eq!(c["sid"], id["sid"]);
    // Sent once across the two gateways: nothing else arrives.
    assert!(
        tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .is_err(),
        "one logout per ended session, across gateways"
    );
}
