//! Issue 3, accounts and sessions: register, login, refresh with reuse
//! detection, logout, verify, me, sessions, password change, the admin API
//! and CLI, malformed input, and forward-auth behind a real nginx.
//!
//! Every test boots the real gateway with the per-IP `/auth/*` throttle
//! switched off (these tests send many auth requests from one address; the
//! throttle has its own tests), and moves `gw.clock` for every expiry.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis::clock::Clock;
use serde_json::{json, Value};

use crate::common::http::{self, Response};
use crate::common::{
    assert_error, bin, free_port, last_echoed, Builder, Session, TestGateway, PASSWORD,
};

const NO_THROTTLE: &str = "[throttle]\nauth_per_minute = 0\n";

async fn gateway(extra: &str) -> TestGateway {
    TestGateway::start_with(Builder {
        extra: format!("{NO_THROTTLE}{extra}"),
        ..Default::default()
    })
    .await
}

// ----- small helpers

/// Any request with exact headers and body (no content type added).
async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    http::request(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// A 400 `validation_failed` naming exactly these fields.
#[track_caller]
fn assert_fields(r: &Response, expected: &[&str]) {
    assert_error(r, 400, "validation_failed");
    let v = r.json();
    let fields = v["fields"]
        .as_object()
        .unwrap_or_else(|| panic!("validation_failed without fields: {r:?}"));
    let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut want = expected.to_vec();
    want.sort_unstable();
    assert_eq!(names, want, "{r:?}");
    for (name, problems) in fields {
        let problems = problems.as_array().expect("problems are an array");
        assert!(
            !problems.is_empty() && problems.iter().all(|p| p.as_str().is_some()),
            "field {name}: {r:?}"
        );
    }
}

async fn refresh(gw: &TestGateway, token: &str) -> Response {
    gw.post("/auth/refresh", json!({ "refresh_token": token }), None)
        .await
}

/// Status of `GET /` (a route with `auth = "required"`).
async fn proxied(gw: &TestGateway, access: &str) -> u16 {
    gw.get("/", Some(access)).await.status
}

fn session_of(r: &Response) -> Session {
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    Session {
        access: v["access_token"].as_str().unwrap().to_string(),
        refresh: v["refresh_token"].as_str().unwrap().to_string(),
        user: v["user"].clone(),
    }
}

/// The admin token the gateway generated into its data dir.
fn admin_token(gw: &TestGateway) -> String {
    std::fs::read_to_string(gw.data_dir().join("admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

async fn admin_api(gw: &TestGateway, token: Option<&str>, body: Value) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    raw(
        gw.admin_addr,
        "POST",
        "/admin/users",
        &headers,
        Some(body.to_string().as_bytes()),
    )
    .await
}

#[track_caller]
fn assert_user_shape(u: &Value, email: &str) {
    let obj = u
        .as_object()
        .unwrap_or_else(|| panic!("user is not an object: {u}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "created_at",
            "email",
            "email_verified",
            "id",
            "roles",
            "username"
        ],
        "{u}"
    );
    let id = u["id"].as_str().expect("id is a string");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "id is not a UUID: {id}");
    let created = u["created_at"].as_str().expect("created_at is a string");
    assert!(
        time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "created_at is not RFC 3339: {created}"
    );
    assert_eq!(u["email"], email);
    assert!(u["email_verified"].is_boolean());
    assert!(u["roles"].is_array());
}

// ===================================================================
// register
// ===================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_returns_the_user() {
    let gw = gateway("").await;
    let r = gw
        .post(
            "/auth/register",
            json!({
                "email": "  Alice@Example.COM ",
                "password": PASSWORD,
                "password_confirm": PASSWORD,
                "username": "alice"
            }),
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    let v = r.json();
    assert_eq!(v.as_object().unwrap().len(), 1, "only {{user}}: {v}");
    let u = &v["user"];
    // Trimmed, domain lowercased, local part kept.
    assert_user_shape(u, "Alice@example.com");
    assert_eq!(u["username"], "alice");
    assert_eq!(u["email_verified"], false);
    assert_eq!(u["roles"], json!([]));
    assert_eq!(
        u["created_at"],
        portcullis::clock::rfc3339(gw.clock.now()),
        "created_at comes from the gateway's clock"
    );
    assert!(!r.text().contains("password"), "no hash in the response");

    // The account works, under any spelling of the domain.
    let s = gw.signin("Alice@EXAMPLE.com", PASSWORD).await;
    assert_eq!(s.user["id"], u["id"]);
    assert_user_shape(&s.user, "Alice@example.com");

    // Without a username it is null.
    let r = gw.register("bob@example.com", PASSWORD).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json()["user"]["username"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_validation_failures_name_their_fields() {
    let gw = gateway("").await;
    let reg = |body: Value| gw.post("/auth/register", body, None);
    let pw = |email: &str, p: &str| json!({ "email": email, "password": p, "password_confirm": p });

    // Missing fields.
    assert_fields(
        &reg(json!({})).await,
        &["email", "password", "password_confirm"],
    );
    assert_fields(
        &reg(json!({ "email": "a1@x.org", "password": PASSWORD })).await,
        &["password_confirm"],
    );
    assert_fields(
        &reg(json!({ "password": PASSWORD, "password_confirm": PASSWORD })).await,
        &["email"],
    );
    // null counts as missing.
    assert_fields(
        &reg(json!({ "email": null, "password": PASSWORD, "password_confirm": PASSWORD })).await,
        &["email"],
    );

    // Confirmation mismatch (even by case or trailing space: compared exactly).
    for other in [
        "Correct horse battery staple",
        "correct horse battery staple ",
    ] {
        assert_fields(
            &reg(json!({ "email": "a2@x.org", "password": PASSWORD, "password_confirm": other }))
                .await,
            &["password_confirm"],
        );
    }

    // Length in Unicode scalar values, not bytes.
    for short in ["abcdefg", "ééééééé", "🔒🔒🔒🔒🔒🔒🔒", ""] {
        let r = reg(pw("a3@x.org", short)).await;
        assert_fields(&r, &["password"]);
    }
    for long in ["x".repeat(129), "é".repeat(129), "🔒".repeat(129)] {
        assert_fields(&reg(pw("a4@x.org", &long)).await, &["password"]);
    }

    // Common passwords, in any case.
    for common in [
        "password1",
        "12345678",
        "iloveyou",
        "PASSWORD1",
        "Sunshine1",
    ] {
        assert_fields(&reg(pw("a5@x.org", common)).await, &["password"]);
    }

    // Containing the email's local part, in any case.
    for p in [
        "carolina",
        "my-carolina-pass",
        "xxCAROLINAxx",
        "Carolina2024!",
    ] {
        assert_fields(&reg(pw("carolina@x.org", p)).await, &["password"]);
    }

    // Bad emails.
    for bad in [
        "",
        "not-an-email",
        "@x.org",
        "a@",
        "a@b",
        "a b@x.org",
        "a@@x.org",
        "a@x.org\r\nBcc: y@z.org",
        "<a>@x.org",
    ] {
        assert_fields(&reg(pw(bad, PASSWORD)).await, &["email"]);
    }

    // Wrong types.
    assert_fields(
        &reg(pw("a6@x.org", PASSWORD).merge("email", json!(5))).await,
        &["email"],
    );
    assert_fields(
        &reg(pw("a6@x.org", PASSWORD).merge("password", json!(["x"]))).await,
        &["password"],
    );
    assert_fields(
        &reg(pw("a6@x.org", PASSWORD).merge("username", json!(5))).await,
        &["username"],
    );
    assert_fields(
        &reg(pw("a6@x.org", PASSWORD).merge("username", json!("u".repeat(65)))).await,
        &["username"],
    );

    // Several problems at once are all reported.
    let r = reg(json!({ "email": "nope", "password": "short", "password_confirm": "other" })).await;
    assert_fields(&r, &["email", "password", "password_confirm"]);

    // The boundaries are accepted: 8 and 128 scalar values, multi-byte included.
    for (email, ok) in [
        ("b1@x.org", "ééééééé€".to_string()),
        ("b2@x.org", "🔒🔒🔒🔒🔒🔒🔒🔒".to_string()),
        ("b3@x.org", "x".repeat(128)),
        ("b4@x.org", "é".repeat(128)),
        ("b5@x.org", "🔒".repeat(128)),
    ] {
        let r = reg(pw(email, &ok)).await;
        assert_eq!(
            r.status,
            201,
            "{email} with {} chars: {r:?}",
            ok.chars().count()
        );
        // And the password is compared exactly as sent.
        let s = gw.signin(email, &ok).await;
        assert!(!s.access.is_empty());
    }

    // No rejected attempt created an account.
    for email in ["a1@x.org", "a3@x.org", "a5@x.org", "carolina@x.org"] {
        let r = gw.register(email, PASSWORD).await;
        assert_eq!(r.status, 201, "{email}: {r:?}");
    }
}

trait Merge {
    fn merge(self, key: &str, v: Value) -> Value;
}

impl Merge for Value {
    fn merge(mut self, key: &str, v: Value) -> Value {
        self[key] = v;
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_existing_email_is_409_under_every_spelling() {
    let gw = gateway("").await;
    let r = gw.register("Dana@Example.org", PASSWORD).await;
    assert_eq!(r.status, 201, "{r:?}");
    for same in [
        "Dana@Example.org",
        "Dana@example.org",
        "Dana@EXAMPLE.ORG",
        "  Dana@example.org\t",
    ] {
        let r = gw.register(same, "another good passphrase").await;
        assert_error(&r, 409, "email_taken");
    }

    // NFC and NFD spellings of the same address are one account.
    let nfc = "Zo\u{eb}@example.org";
    let nfd = "Zoe\u{308}@EXAMPLE.org";
    let r = gw.register(nfc, PASSWORD).await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.json()["user"]["id"].clone();
    assert_error(&gw.register(nfd, PASSWORD).await, 409, "email_taken");
    // Logging in with the other spelling reaches the same account.
    let s = gw.signin(nfd, PASSWORD).await;
    assert_eq!(s.user["id"], id);
    assert_eq!(s.user["email"], "Zo\u{eb}@example.org");

    // The admin listing holds exactly one account per address.
    let r = admin_api(&gw, Some(&admin_token(&gw)), json!({ "op": "list" })).await;
    assert_eq!(r.status, 200, "{r:?}");
    let users = r.json();
    assert_eq!(users.as_array().unwrap().len(), 2, "{users}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_of_one_email_create_one_account() {
    // Twenty hash slots, so the twenty registrations hash side by side and
    // reach the store together (the default would feed them one by one).
    let gw = gateway("[passwords]\nmax_concurrent_hashes = 20\n").await;
    let stats_before = gw.handle().auth.store.stats();
    // 20 spellings of one address: NFC/NFD, domain case, surrounding space.
    let mut emails = Vec::new();
    for local in ["Zo\u{eb}", "Zoe\u{308}"] {
        for domain in [
            "race.example",
            "RACE.example",
            "Race.Example",
            "race.EXAMPLE",
            "RACE.EXAMPLE",
        ] {
            emails.push(format!("{local}@{domain}"));
            emails.push(format!(" {local}@{domain} "));
        }
    }
    assert_eq!(emails.len(), 20);
    let mut tasks = Vec::new();
    for email in emails {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let body =
                json!({ "email": email, "password": PASSWORD, "password_confirm": PASSWORD });
            http::post_json(addr, "/auth/register", &body, None).await
        }));
    }
    let mut created = 0;
    let mut taken = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            201 => created += 1,
            409 => {
                assert_error(&r, 409, "email_taken");
                taken += 1
            }
            _ => panic!("unexpected answer: {r:?}"),
        }
    }
    assert_eq!((created, taken), (1, 19));
    // The race window was open: the store had several of these creations
    // in flight at once (and committed some of them in one batch).
    let stats = gw.handle().auth.store.stats();
    assert!(stats.max_in_flight >= 2, "{stats_before:?} -> {stats:?}");

    // One account, and it works.
    let r = admin_api(&gw, Some(&admin_token(&gw)), json!({ "op": "list" })).await;
    let users = r.json();
    assert_eq!(users.as_array().unwrap().len(), 1, "{users}");
    gw.signin("Zo\u{eb}@race.example", PASSWORD).await;
}

// ===================================================================
// login and enumeration
// ===================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_answers_tokens_and_user() {
    let gw = gateway("").await;
    let reg = gw.register("erin@example.com", PASSWORD).await;
    assert_eq!(reg.status, 201);
    let r = gw.login("erin@example.com", PASSWORD).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "access_token",
            "expires_in",
            "refresh_token",
            "token_type",
            "user"
        ]
    );
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 900, "access_ttl_secs default");
    assert_user_shape(&v["user"], "erin@example.com");
    assert_eq!(v["user"]["id"], reg.json()["user"]["id"]);
    let access = v["access_token"].as_str().unwrap();
    assert_eq!(access.split('.').count(), 3, "a JWT");
    let refresh_token = v["refresh_token"].as_str().unwrap();
    // At least 256 bits, URL-safe.
    assert!(refresh_token.len() >= 43, "{refresh_token}");
    assert!(refresh_token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert!(
        r.header("cache-control")
            .is_some_and(|c| c.contains("no-store")),
        "token responses must not be cached: {r:?}"
    );

    // The access token opens a required route; the upstream learns who it is.
    assert_eq!(proxied(&gw, access).await, 200);
    assert_eq!(
        last_echoed(&gw, "x-user-id").as_deref(),
        v["user"]["id"].as_str()
    );
    assert_eq!(
        last_echoed(&gw, "x-user-email").as_deref(),
        Some("erin@example.com")
    );

    // Each login is its own session with its own tokens.
    let again = session_of(&gw.login("erin@example.com", PASSWORD).await);
    assert_ne!(again.refresh, refresh_token);
    assert_ne!(again.access, access);

    // Failures.
    assert_error(
        &gw.login("erin@example.com", "wrong password!").await,
        401,
        "invalid_credentials",
    );
    assert_error(
        &gw.login("nobody@example.com", PASSWORD).await,
        401,
        "invalid_credentials",
    );
    // Compared exactly as sent.
    assert_error(
        &gw.login("erin@example.com", &PASSWORD.to_uppercase()).await,
        401,
        "invalid_credentials",
    );
    assert_error(
        &gw.login("erin@example.com", &format!("{PASSWORD} ")).await,
        401,
        "invalid_credentials",
    );
    // An over-long password is refused (before any hashing).
    assert_error(
        &gw.login("erin@example.com", &"x".repeat(10_000)).await,
        401,
        "invalid_credentials",
    );
    assert_fields(
        &gw.post("/auth/login", json!({ "email": "erin@example.com" }), None)
            .await,
        &["password"],
    );
    assert_fields(
        &gw.post("/auth/login", json!({ "email": 1, "password": 2 }), None)
            .await,
        &["email", "password"],
    );
}

/// argon2 runs (hashes, verifies) the gateway's hasher has done so far.
fn argon2_runs(gw: &TestGateway) -> (u64, u64) {
    use std::sync::atomic::Ordering::SeqCst;
    let s = gw.handle().auth.hasher.stats();
    (s.hashes.load(SeqCst), s.verifies.load(SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_login_spends_exactly_one_argon2_verify_known_or_not() {
    let gw = gateway("").await;
    gw.signup("ursula@example.com").await;
    gw.signup("gone2@example.com").await;
    let r = admin_api(
        &gw,
        Some(&admin_token(&gw)),
        json!({ "op": "disable", "email": "gone2@example.com" }),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    for (what, email, password, status) in [
        ("unknown email", "nobody@example.com", PASSWORD, 401),
        (
            "wrong password",
            "ursula@example.com",
            "not the password",
            401,
        ),
        ("disabled account", "gone2@example.com", PASSWORD, 401),
        ("right password", "ursula@example.com", PASSWORD, 200),
    ] {
        let before = argon2_runs(&gw);
        assert_eq!(gw.login(email, password).await.status, status, "{what}");
        let (h, v) = argon2_runs(&gw);
        assert_eq!(
            (h - before.0, v - before.1),
            (0, 1),
            "{what}: (hashes, verifies)"
        );
    }
    // An over-long password is refused before any hashing.
    let before = argon2_runs(&gw);
    gw.login("ursula@example.com", &"x".repeat(10_000)).await;
    assert_eq!(argon2_runs(&gw), before, "an over-long password was hashed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_are_byte_identical() {
    let gw = gateway("").await;
    gw.signup("frank@example.com").await;
    gw.signup("gone@example.com").await;
    let r = admin_api(
        &gw,
        Some(&admin_token(&gw)),
        json!({ "op": "disable", "email": "gone@example.com" }),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");

    let unknown = gw.login("nobody@example.com", PASSWORD).await;
    let wrong = gw.login("frank@example.com", "not the password").await;
    let disabled = gw.login("gone@example.com", PASSWORD).await;
    let malformed_email = gw.login("not-an-email", PASSWORD).await;
    assert_error(&unknown, 401, "invalid_credentials");
    // Headers that differ by nature: the request id and the date.
    let names = |r: &Response| {
        let mut n: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(k, _)| {
                !k.eq_ignore_ascii_case("x-request-id") && !k.eq_ignore_ascii_case("date")
            })
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        n.sort();
        n
    };
    for (what, other) in [
        ("wrong password", &wrong),
        ("disabled account", &disabled),
        ("malformed email", &malformed_email),
    ] {
        assert_eq!(other.status, unknown.status, "{what}");
        assert_eq!(other.body, unknown.body, "{what}: body differs");
        assert_eq!(names(other), names(&unknown), "{what}: headers differ");
    }
}

// ===================================================================
// refresh
// ===================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_the_token_every_time() {
    let gw = gateway("").await;
    let s = gw.signup("gina@example.com").await;
    let mut current = s.refresh.clone();
    let mut seen = vec![current.clone()];
    for _ in 0..3 {
        gw.clock.advance(5);
        let r = refresh(&gw, &current).await;
        assert_eq!(r.status, 200, "{r:?}");
        let v = r.json();
        assert_eq!(v["token_type"], "Bearer");
        assert_eq!(v["expires_in"], 900);
        assert_user_shape(&v["user"], "gina@example.com");
        let next = v["refresh_token"].as_str().unwrap().to_string();
        assert!(!seen.contains(&next), "refresh must return a NEW token");
        seen.push(next.clone());
        let access = v["access_token"].as_str().unwrap();
        assert_eq!(proxied(&gw, access).await, 200);
        current = next;
    }

    // Errors.
    for bad in ["", "garbage", &"x".repeat(600), &s.access] {
        let r = refresh(&gw, bad).await;
        assert_error(&r, 401, "invalid_token");
    }
    assert_fields(
        &gw.post("/auth/refresh", json!({}), None).await,
        &["refresh_token"],
    );
    assert_fields(
        &gw.post("/auth/refresh", json!({ "refresh_token": 7 }), None)
            .await,
        &["refresh_token"],
    );
    // The bad attempts did not hurt the live session.
    assert_eq!(refresh(&gw, &current).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_a_rotated_refresh_token_revokes_the_session() {
    let gw = gateway("").await;
    let s = gw.signup("hank@example.com").await;
    let other = gw.signin("hank@example.com", PASSWORD).await;
    let r1 = session_of(&refresh(&gw, &s.refresh).await);
    assert_eq!(proxied(&gw, &r1.access).await, 200);
    assert_eq!(proxied(&gw, &s.access).await, 200);

    // The old token again: reuse.
    let r = refresh(&gw, &s.refresh).await;
    assert_error(&r, 401, "invalid_token");
    // The whole session is gone: the successor fails too...
    assert_error(&refresh(&gw, &r1.refresh).await, 401, "invalid_token");
    // ...and every access token of the session is dead at once.
    let denied = gw.get("/", Some(&r1.access)).await;
    assert_error(&denied, 401, "unauthorized");
    assert_eq!(proxied(&gw, &s.access).await, 401);
    assert_eq!(gw.get("/auth/me", Some(&r1.access)).await.status, 401);
    // Another session of the same user is untouched.
    assert_eq!(proxied(&gw, &other.access).await, 200);
    assert_eq!(refresh(&gw, &other.refresh).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_with_one_token_have_one_winner() {
    let gw = gateway("").await;
    let s = gw.signup("ivan@example.com").await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (addr, token) = (gw.addr, s.refresh.clone());
        tasks.push(tokio::spawn(async move {
            http::post_json(
                addr,
                "/auth/refresh",
                &json!({ "refresh_token": token }),
                None,
            )
            .await
        }));
    }
    let mut ok = Vec::new();
    let mut rejected = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok.push(r),
            401 => {
                assert_error(&r, 401, "invalid_token");
                rejected += 1;
            }
            _ => panic!("unexpected answer: {r:?}"),
        }
    }
    assert_eq!((ok.len(), rejected), (1, 49));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_grace_window_returns_the_same_successor() {
    let gw = gateway("[tokens]\nrefresh_reuse_grace_secs = 10\n").await;
    let s = gw.signup("jane@example.com").await;
    let first = session_of(&refresh(&gw, &s.refresh).await);
    assert_ne!(first.refresh, s.refresh);

    // A second tab with the previous token, inside the window.
    gw.clock.advance(5);
    let second = session_of(&refresh(&gw, &s.refresh).await);
    assert_eq!(second.refresh, first.refresh, "the same successor");
    assert_eq!(proxied(&gw, &second.access).await, 200);

    // Several tabs at once, all inside the window: all get the same successor.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (addr, token) = (gw.addr, s.refresh.clone());
        tasks.push(tokio::spawn(async move {
            http::post_json(
                addr,
                "/auth/refresh",
                &json!({ "refresh_token": token }),
                None,
            )
            .await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(session_of(&r).refresh, first.refresh);
    }

    // Past the window, the previous token is reuse: the session dies.
    gw.clock.advance(6);
    assert_error(&refresh(&gw, &s.refresh).await, 401, "invalid_token");
    assert_error(&refresh(&gw, &first.refresh).await, 401, "invalid_token");
    assert_eq!(proxied(&gw, &second.access).await, 401);
    assert_eq!(proxied(&gw, &s.access).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_grace_the_previous_token_is_reuse_at_once() {
    // The default grace is 0: even a same-second retry revokes.
    let gw = gateway("").await;
    let s = gw.signup("kyle@example.com").await;
    let first = session_of(&refresh(&gw, &s.refresh).await);
    assert_error(&refresh(&gw, &s.refresh).await, 401, "invalid_token");
    assert_error(&refresh(&gw, &first.refresh).await, 401, "invalid_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_sessions_expire_when_idle() {
    let gw = gateway("[tokens]\nrefresh_idle_secs = 100\nrefresh_ttl_secs = 1000\n").await;
    let s = gw.signup("lena@example.com").await;
    // Used in time, the session lives on.
    gw.clock.advance(90);
    let a = session_of(&refresh(&gw, &s.refresh).await);
    gw.clock.advance(90);
    let b = session_of(&refresh(&gw, &a.refresh).await);
    // Idle too long: refused, and the session is gone.
    gw.clock.advance(101);
    assert_error(&refresh(&gw, &b.refresh).await, 401, "invalid_token");
    let other = gw.signin("lena@example.com", PASSWORD).await;
    let list = gw.get("/auth/sessions", Some(&other.access)).await.json();
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_sessions_have_an_absolute_lifetime() {
    let gw = gateway("[tokens]\nrefresh_idle_secs = 100\nrefresh_ttl_secs = 1000\n").await;
    let s = gw.signup("mona@example.com").await;
    let mut token = s.refresh;
    // Never idle, refreshed every 90 s, up to 990 s after login.
    for _ in 0..11 {
        gw.clock.advance(90);
        token = session_of(&refresh(&gw, &token).await).refresh;
    }
    gw.clock.advance(20);
    assert_error(&refresh(&gw, &token).await, 401, "invalid_token");
}

// ===================================================================
// logout
// ===================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_kills_the_access_token_even_across_a_restart() {
    let mut gw = gateway("").await;
    let s = gw.signup("nina@example.com").await;
    let kept = gw.signin("nina@example.com", PASSWORD).await;
    assert_eq!(proxied(&gw, &s.access).await, 200);

    let r = gw
        .post(
            "/auth/logout",
            json!({ "refresh_token": s.refresh }),
            Some(&s.access),
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.body.is_empty());
    assert_error(&gw.get("/", Some(&s.access)).await, 401, "unauthorized");
    assert_error(&refresh(&gw, &s.refresh).await, 401, "invalid_token");

    // Idempotent, with or without a bearer, with unknown tokens, with no body.
    let again = gw
        .post(
            "/auth/logout",
            json!({ "refresh_token": s.refresh }),
            Some(&s.access),
        )
        .await;
    assert_eq!(again.status, 204, "{again:?}");
    assert_eq!(
        gw.post("/auth/logout", json!({ "refresh_token": s.refresh }), None)
            .await
            .status,
        204
    );
    assert_eq!(
        gw.post("/auth/logout", json!({ "refresh_token": "garbage" }), None)
            .await
            .status,
        204
    );
    assert_eq!(gw.post("/auth/logout", json!({}), None).await.status, 204);
    let r = raw(gw.addr, "POST", "/auth/logout", &[], None).await;
    assert_eq!(r.status, 204, "{r:?}");

    // The other session was not touched.
    assert_eq!(proxied(&gw, &kept.access).await, 200);

    // Still revoked after a restart on the same data dir; the other session
    // still works, so the 401 is the revocation and not the restart.
    gw.restart();
    assert_eq!(proxied(&gw, &s.access).await, 401);
    assert_eq!(refresh(&gw, &s.refresh).await.status, 401);
    assert_eq!(proxied(&gw, &kept.access).await, 200);
    let fresh = gw.signin("nina@example.com", PASSWORD).await;
    assert_eq!(proxied(&gw, &fresh.access).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_with_only_the_bearer_ends_that_session() {
    let gw = gateway("").await;
    let s = gw.signup("olga@example.com").await;
    let other = gw.signin("olga@example.com", PASSWORD).await;
    let r = raw(
        gw.addr,
        "POST",
        "/auth/logout",
        &[("authorization", &format!("Bearer {}", s.access))],
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(proxied(&gw, &s.access).await, 401);
    // The session itself is over: its refresh token no longer works.
    assert_error(&refresh(&gw, &s.refresh).await, 401, "invalid_token");
    let list = gw.get("/auth/sessions", Some(&other.access)).await.json();
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(proxied(&gw, &other.access).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_all_ends_every_session_at_once() {
    let gw = gateway("").await;
    let a = gw.signup("paul@example.com").await;
    let b = gw.signin("paul@example.com", PASSWORD).await;
    let stranger = gw.signup("quinn@example.com").await;
    assert_eq!(proxied(&gw, &a.access).await, 200);
    assert_eq!(proxied(&gw, &b.access).await, 200);

    let no_bearer = gw.post("/auth/logout-all", json!({}), None).await;
    assert_error(&no_bearer, 401, "unauthorized");
    assert!(no_bearer
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Bearer")));

    let r = gw
        .post("/auth/logout-all", json!({}), Some(&a.access))
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    for s in [&a, &b] {
        assert_error(&gw.get("/", Some(&s.access)).await, 401, "unauthorized");
        assert_eq!(gw.get("/auth/me", Some(&s.access)).await.status, 401);
        assert_error(&refresh(&gw, &s.refresh).await, 401, "invalid_token");
    }
    // Once more with the dead token: 401.
    let r = gw
        .post("/auth/logout-all", json!({}), Some(&b.access))
        .await;
    assert_error(&r, 401, "unauthorized");
    // Other users are not affected.
    assert_eq!(proxied(&gw, &stranger.access).await, 200);
    // A new login works, in the same second as the logout-all.
    let c = gw.signin("paul@example.com", PASSWORD).await;
    assert_eq!(proxied(&gw, &c.access).await, 200);
    assert_eq!(refresh(&gw, &c.refresh).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_blacklist_entries_are_swept_on_the_maintenance_tick() {
    let mut gw = gateway("").await;
    let s = gw.signup("rita@example.com").await;
    let base = gw.handle().auth.revocations.len();
    let r = gw
        .post(
            "/auth/logout",
            json!({ "refresh_token": s.refresh }),
            Some(&s.access),
        )
        .await;
    assert_eq!(r.status, 204);
    let after_logout = gw.handle().auth.revocations.len();
    // The session's entry (which already voids the bearer token).
    assert_eq!(after_logout, base + 1, "logout adds a blacklist entry");
    let stored = |gw: &TestGateway| {
        let store = gw.handle().auth.store.clone();
        async move { store.list_revocations().await.unwrap().len() }
    };
    let stored_after_logout = stored(&gw).await;

    // A sweep before the token expires keeps the entries: the token stays dead.
    gw.clock.advance(100);
    gw.sweep().await;
    assert_eq!(gw.handle().auth.revocations.len(), after_logout);
    assert_eq!(stored(&gw).await, stored_after_logout);
    assert_eq!(proxied(&gw, &s.access).await, 401);

    // Once the entries are older than the token horizon (900 s + 30 s
    // leeway, the longest ever configured here: the token's entry holds its
    // exp, the session's its revocation time plus the horizon), the next
    // tick removes them from memory and from the store.
    gw.clock.advance(1800);
    gw.sweep().await;
    assert_eq!(gw.handle().auth.revocations.len(), base);
    assert!(stored(&gw).await < stored_after_logout);
    // The token is expired anyway.
    assert_eq!(proxied(&gw, &s.access).await, 401);

    // A restart loads no stale entries.
    gw.restart();
    assert_eq!(gw.handle().auth.revocations.len(), base);
}

// ===================================================================
// verify (introspection and forward-auth)
// ===================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_introspection_and_forward_auth() {
    let gw = gateway("").await;
    let s = gw.signup("sara@example.com").await;
    let uid = s.user["id"].as_str().unwrap().to_string();

    // POST: introspection.
    let r = gw
        .post("/auth/verify", json!({ "token": s.access }), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["valid"], true);
    let c = &v["claims"];
    assert_eq!(c["sub"], uid.as_str());
    assert_eq!(c["email"], "sara@example.com");
    assert_eq!(c["roles"], json!([]));
    assert_eq!(c["iss"], "portcullis");
    assert_eq!(c["aud"], "portcullis");
    assert_eq!(c["iat"], gw.clock.now());
    assert_eq!(c["exp"], gw.clock.now() + 900);
    assert!(c["jti"].as_str().is_some_and(|j| !j.is_empty()));
    assert!(uuid::Uuid::parse_str(c["sid"].as_str().unwrap()).is_ok());
    for bad in ["", "garbage", "a.b.c", &s.refresh] {
        let r = gw.post("/auth/verify", json!({ "token": bad }), None).await;
        assert_error(&r, 401, "invalid_token");
    }
    // A tampered signature.
    let mut tampered = s.access.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    assert_error(
        &gw.post("/auth/verify", json!({ "token": tampered }), None)
            .await,
        401,
        "invalid_token",
    );
    assert_fields(&gw.post("/auth/verify", json!({}), None).await, &["token"]);

    // GET: forward-auth, identity on the response headers.
    let r = gw.get("/auth/verify", Some(&s.access)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-user-id"), Some(uid.as_str()));
    assert_eq!(r.header("x-user-email"), Some("sara@example.com"));
    assert_eq!(r.header("x-user-roles"), Some(""));
    let r = gw.get("/auth/verify", None).await;
    assert_error(&r, 401, "unauthorized");
    assert!(r.header("www-authenticate").is_some());
    assert!(r.header("x-user-id").is_none());
    let r = gw.get("/auth/verify", Some("garbage")).await;
    assert_error(&r, 401, "unauthorized");
    // A client cannot smuggle identity through forward-auth.
    let r = raw(gw.addr, "GET", "/auth/verify", &[("x-user-id", &uid)], None).await;
    assert_eq!(r.status, 401);

    // Expired: both refuse.
    gw.clock.advance(900 + 31);
    assert_eq!(gw.get("/auth/verify", Some(&s.access)).await.status, 401);
    assert_error(
        &gw.post("/auth/verify", json!({ "token": s.access }), None)
            .await,
        401,
        "invalid_token",
    );

    // Revoked: both refuse.
    let t = gw.signin("sara@example.com", PASSWORD).await;
    assert_eq!(gw.get("/auth/verify", Some(&t.access)).await.status, 200);
    let r = gw
        .post(
            "/auth/logout",
            json!({ "refresh_token": t.refresh }),
            Some(&t.access),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(gw.get("/auth/verify", Some(&t.access)).await.status, 401);
    assert_error(
        &gw.post("/auth/verify", json!({ "token": t.access }), None)
            .await,
        401,
        "invalid_token",
    );
}

// ===================================================================
// me
// ===================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_reads_and_updates_the_profile() {
    let mut gw = gateway("").await;
    let s = gw.signup("tina@example.com").await;
    let r = gw.get("/auth/me", Some(&s.access)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v.as_object().unwrap().len(), 1);
    assert_user_shape(&v["user"], "tina@example.com");
    assert_eq!(v["user"], s.user);

    let no = gw.get("/auth/me", None).await;
    assert_error(&no, 401, "unauthorized");
    assert!(no.header("www-authenticate").is_some());
    assert_error(
        &gw.get("/auth/me", Some("garbage")).await,
        401,
        "unauthorized",
    );

    let addr = gw.addr;
    let patch = move |body: Value, bearer: Option<String>| async move {
        http::send_json(addr, "PATCH", "/auth/me", Some(&body), bearer.as_deref()).await
    };
    let bearer = Some(s.access.clone());

    let r = patch(json!({ "username": "Tina T." }), bearer.clone()).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["user"]["username"], "Tina T.");
    assert_eq!(
        gw.get("/auth/me", Some(&s.access)).await.json()["user"]["username"],
        "Tina T."
    );

    // Bad types and unknown or read-only fields: 400, nothing changes.
    for (body, field) in [
        (json!({ "username": 5 }), "username"),
        (json!({ "username": ["x"] }), "username"),
        (json!({ "username": { "a": 1 } }), "username"),
        (json!({ "username": true }), "username"),
        (json!({ "username": "u".repeat(65) }), "username"),
        (json!({ "username": "bad\u{7}name" }), "username"),
        (json!({ "email": "x@example.com" }), "email"),
        (json!({ "roles": ["admin"] }), "roles"),
        (json!({ "email_verified": true }), "email_verified"),
        (json!({ "nickname": "t" }), "nickname"),
    ] {
        let r = patch(body.clone(), bearer.clone()).await;
        assert_fields(&r, &[field]);
    }
    let me = gw.get("/auth/me", Some(&s.access)).await.json()["user"].clone();
    assert_eq!(me["username"], "Tina T.");
    assert_eq!(me["roles"], json!([]));
    assert_eq!(me["email"], "tina@example.com");
    assert_eq!(me["email_verified"], false);

    // Not an object.
    let r = patch(json!(["username"]), bearer.clone()).await;
    assert_error(&r, 400, "bad_request");
    // Without a valid bearer.
    assert_error(
        &patch(json!({ "username": "x" }), None).await,
        401,
        "unauthorized",
    );

    // An empty object changes nothing; null clears the username.
    let r = patch(json!({}), bearer.clone()).await;
    assert_eq!(r.json()["user"]["username"], "Tina T.");
    let r = patch(json!({ "username": "Tina" }), bearer.clone()).await;
    assert_eq!(r.status, 200);

    // Durable.
    gw.restart();
    let me = gw.get("/auth/me", Some(&s.access)).await.json()["user"].clone();
    assert_eq!(me["username"], "Tina");
    let r = patch(json!({ "username": null }), bearer.clone()).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["user"]["username"], Value::Null);
}

// ===================================================================
// sessions
// ===================================================================

async fn login_with_agent(gw: &TestGateway, email: &str, agent: &str) -> Session {
    let body = json!({ "email": email, "password": PASSWORD }).to_string();
    let r = raw(
        gw.addr,
        "POST",
        "/auth/login",
        &[("content-type", "application/json"), ("user-agent", agent)],
        Some(body.as_bytes()),
    )
    .await;
    session_of(&r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_listed_and_can_be_ended() {
    let gw = gateway("").await;
    assert_eq!(gw.register("uma@example.com", PASSWORD).await.status, 201);
    let one = login_with_agent(&gw, "uma@example.com", "agent-one/1.0").await;
    let t0 = gw.clock.now();
    gw.clock.advance(10);
    let two = login_with_agent(&gw, "uma@example.com", "agent-two/2.0").await;
    let stranger = gw.signup("vera@example.com").await;

    let list = |access: String| {
        let addr = gw.addr;
        async move {
            let r = http::get(addr, "/auth/sessions", Some(&access)).await;
            assert_eq!(r.status, 200, "{r:?}");
            r.json()["sessions"].as_array().unwrap().clone()
        }
    };
    let sessions = list(one.access.clone()).await;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    for s in &sessions {
        let mut keys: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "created_at",
                "current",
                "id",
                "ip",
                "last_used_at",
                "user_agent"
            ]
        );
        assert!(uuid::Uuid::parse_str(s["id"].as_str().unwrap()).is_ok());
        assert_eq!(s["ip"], "127.0.0.1");
    }
    let by_agent = |agent: &str| {
        sessions
            .iter()
            .find(|s| s["user_agent"] == agent)
            .unwrap_or_else(|| panic!("no session for {agent}: {sessions:?}"))
            .clone()
    };
    let s1 = by_agent("agent-one/1.0");
    let s2 = by_agent("agent-two/2.0");
    assert_eq!(s1["current"], true);
    assert_eq!(s2["current"], false);
    assert_eq!(s1["created_at"], portcullis::clock::rfc3339(t0));
    assert_eq!(s1["last_used_at"], portcullis::clock::rfc3339(t0));
    assert_eq!(s2["created_at"], portcullis::clock::rfc3339(t0 + 10));
    // "current" follows the caller.
    let from_two = list(two.access.clone()).await;
    for s in &from_two {
        assert_eq!(s["current"], s["id"] == s2["id"], "{from_two:?}");
    }
    // A refresh moves last_used_at.
    gw.clock.advance(50);
    let one_b = session_of(&refresh(&gw, &one.refresh).await);
    let after = list(one_b.access.clone()).await;
    let s1b = after.iter().find(|s| s["id"] == s1["id"]).unwrap();
    assert_eq!(s1b["last_used_at"], portcullis::clock::rfc3339(t0 + 60));
    assert_eq!(s1b["created_at"], s1["created_at"]);
    assert_eq!(s1b["current"], true);

    // End session two from session one.
    let del = |id: String, bearer: Option<String>| {
        let addr = gw.addr;
        async move {
            http::send_json(
                addr,
                "DELETE",
                &format!("/auth/sessions/{id}"),
                None,
                bearer.as_deref(),
            )
            .await
        }
    };
    let s2_id = s2["id"].as_str().unwrap().to_string();
    let r = del(s2_id.clone(), Some(one_b.access.clone())).await;
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.body.is_empty());
    assert_eq!(proxied(&gw, &two.access).await, 401);
    assert_error(&refresh(&gw, &two.refresh).await, 401, "invalid_token");
    assert_eq!(list(one_b.access.clone()).await.len(), 1);
    // Already gone: 404.
    assert_error(
        &del(s2_id, Some(one_b.access.clone())).await,
        404,
        "not_found",
    );

    // Bad ids and somebody else's session: 404, and theirs lives on.
    let theirs = list(stranger.access.clone()).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for id in [
        theirs.clone(),
        "not-a-uuid".to_string(),
        uuid::Uuid::new_v4().to_string(),
        "123".to_string(),
    ] {
        let r = del(id.clone(), Some(one_b.access.clone())).await;
        assert_error(&r, 404, "not_found");
    }
    assert_eq!(proxied(&gw, &stranger.access).await, 200);
    assert_eq!(list(stranger.access.clone()).await.len(), 1);

    // Without a bearer: 401 for both.
    assert_error(&del(theirs, None).await, 401, "unauthorized");
    assert_error(&gw.get("/auth/sessions", None).await, 401, "unauthorized");

    // A session may end itself.
    let own = s1["id"].as_str().unwrap().to_string();
    assert_eq!(del(own, Some(one_b.access.clone())).await.status, 204);
    assert_eq!(proxied(&gw, &one_b.access).await, 401);
}

// ===================================================================
// password change
// ===================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_keeps_this_session_and_ends_the_others() {
    let gw = gateway("").await;
    let mine = gw.signup("wade@example.com").await;
    let other = gw.signin("wade@example.com", PASSWORD).await;
    const NEW: &str = "a brand new passphrase";
    let change = |current: &str, new: &str, confirm: &str, bearer: Option<String>| {
        let body = json!({ "current_password": current, "new_password": new, "new_password_confirm": confirm });
        let addr = gw.addr;
        async move { http::post_json(addr, "/auth/password/change", &body, bearer.as_deref()).await }
    };
    let bearer = Some(mine.access.clone());

    // Errors first; none of them changes anything.
    assert_error(&change(PASSWORD, NEW, NEW, None).await, 401, "unauthorized");
    assert_error(
        &change(PASSWORD, NEW, NEW, Some("garbage".into())).await,
        401,
        "unauthorized",
    );
    let r = change("wrong current password", NEW, NEW, bearer.clone()).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_error(&r, 401, "invalid_credentials");
    assert_fields(
        &change(PASSWORD, "short", "short", bearer.clone()).await,
        &["new_password"],
    );
    assert_fields(
        &change(PASSWORD, "password1", "password1", bearer.clone()).await,
        &["new_password"],
    );
    assert_fields(
        &change(PASSWORD, "wade-wade-wade", "wade-wade-wade", bearer.clone()).await,
        &["new_password"],
    );
    let long = "x".repeat(129);
    assert_fields(
        &change(PASSWORD, &long, &long, bearer.clone()).await,
        &["new_password"],
    );
    assert_fields(
        &change(PASSWORD, NEW, "something else", bearer.clone()).await,
        &["new_password_confirm"],
    );
    assert_fields(
        &gw.post(
            "/auth/password/change",
            json!({ "current_password": PASSWORD }),
            bearer.as_deref(),
        )
        .await,
        &["new_password", "new_password_confirm"],
    );
    assert_eq!(proxied(&gw, &other.access).await, 200);
    assert_eq!(gw.login("wade@example.com", PASSWORD).await.status, 200);

    // Success.
    let r = change(PASSWORD, NEW, NEW, bearer.clone()).await;
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.body.is_empty());
    // This session keeps working, the others end.
    assert_eq!(proxied(&gw, &mine.access).await, 200);
    assert_error(&gw.get("/", Some(&other.access)).await, 401, "unauthorized");
    assert_error(&refresh(&gw, &other.refresh).await, 401, "invalid_token");
    // (and the "session" made by the probing login above, too)
    let left = gw.get("/auth/sessions", Some(&mine.access)).await.json();
    assert_eq!(left["sessions"].as_array().unwrap().len(), 1, "{left}");
    assert_eq!(left["sessions"][0]["current"], true);
    let next = session_of(&refresh(&gw, &mine.refresh).await);
    assert_eq!(proxied(&gw, &next.access).await, 200);
    // Only the new password logs in.
    assert_error(
        &gw.login("wade@example.com", PASSWORD).await,
        401,
        "invalid_credentials",
    );
    gw.signin("wade@example.com", NEW).await;
}

// ===================================================================
// admin API: disabling a user, the admin token
// ===================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_its_token_and_disable_kills_every_token() {
    let gw = gateway("").await;
    let a = gw.signup("xena@example.com").await;
    let b = gw.signin("xena@example.com", PASSWORD).await;
    let token = admin_token(&gw);
    assert!(token.len() >= 32, "the admin token is a real secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(gw.data_dir().join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "admin.token must be 0600");
    }
    let disable = json!({ "op": "disable", "email": "xena@example.com" });

    // No token, a wrong token, a prefix of the token, another scheme: 401.
    let wrong = format!("{token}x");
    let prefix = &token[..token.len() - 1];
    for t in [
        None,
        Some("wrong"),
        Some(wrong.as_str()),
        Some(prefix),
        Some(""),
    ] {
        let r = admin_api(&gw, t, disable.clone()).await;
        assert_error(&r, 401, "unauthorized");
    }
    let r = raw(
        gw.admin_addr,
        "POST",
        "/admin/users",
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Basic {token}")),
        ],
        Some(disable.to_string().as_bytes()),
    )
    .await;
    assert_eq!(r.status, 401);
    // Nothing happened.
    assert_eq!(proxied(&gw, &a.access).await, 200);
    // The public listener does not serve the admin API (it is a proxied
    // route there, and a user token is not an admin token).
    let r = gw
        .post("/admin/users", disable.clone(), Some(&a.access))
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(proxied(&gw, &a.access).await, 200);

    // Unknown op and unknown user.
    let r = admin_api(&gw, Some(&token), json!({ "op": "explode" })).await;
    assert_error(&r, 400, "bad_request");
    let r = admin_api(
        &gw,
        Some(&token),
        json!({ "op": "disable", "email": "nobody@example.com" }),
    )
    .await;
    assert_error(&r, 404, "not_found");

    // Disable.
    let r = admin_api(&gw, Some(&token), disable.clone()).await;
    assert_eq!(r.status, 200, "{r:?}");
    for s in [&a, &b] {
        assert_error(&gw.get("/", Some(&s.access)).await, 401, "unauthorized");
        assert_eq!(gw.get("/auth/me", Some(&s.access)).await.status, 401);
        assert_eq!(gw.get("/auth/verify", Some(&s.access)).await.status, 401);
        assert_error(&refresh(&gw, &s.refresh).await, 401, "invalid_token");
    }
    assert_error(
        &gw.login("xena@example.com", PASSWORD).await,
        401,
        "invalid_credentials",
    );
    let users = admin_api(&gw, Some(&token), json!({ "op": "list" }))
        .await
        .json();
    let u = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "xena@example.com")
        .unwrap();
    assert_eq!(u["disabled"], true);
    assert!(
        !users.to_string().contains("argon2"),
        "no hashes in the listing"
    );
}

// ===================================================================
// malformed input
// ===================================================================

struct Endpoint {
    method: &'static str,
    path: &'static str,
    bearer: bool,
    /// `{}` is a validation error here (else it is accepted).
    requires_fields: bool,
}

const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "POST",
        path: "/auth/register",
        bearer: false,
        requires_fields: true,
    },
    Endpoint {
        method: "POST",
        path: "/auth/login",
        bearer: false,
        requires_fields: true,
    },
    Endpoint {
        method: "POST",
        path: "/auth/refresh",
        bearer: false,
        requires_fields: true,
    },
    Endpoint {
        method: "POST",
        path: "/auth/logout",
        bearer: false,
        requires_fields: false,
    },
    Endpoint {
        method: "POST",
        path: "/auth/verify",
        bearer: false,
        requires_fields: true,
    },
    Endpoint {
        method: "POST",
        path: "/auth/password/change",
        bearer: true,
        requires_fields: true,
    },
    Endpoint {
        method: "PATCH",
        path: "/auth/me",
        bearer: true,
        requires_fields: false,
    },
];

/// (what, headers, body, expected status, expected code)
type BodyCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_a_clear_4xx_never_a_500() {
    let gw = gateway("").await;
    let s = gw.signup("yara@example.com").await;
    let auth = format!("Bearer {}", s.access);
    let json_ct = ("content-type", "application/json");

    let deep_ok_size = "[".repeat(60_000);
    let deep_huge = "[".repeat(100_000);
    let deep_objects = "{\"a\":".repeat(10_000);
    let wrong_types = json!({
        "email": 1, "password": true, "password_confirm": [], "refresh_token": {},
        "token": 5, "current_password": 1, "new_password": 2, "new_password_confirm": 3,
        "username": 7
    })
    .to_string();
    let cases: Vec<BodyCase> = vec![
        (
            "truncated JSON",
            vec![json_ct],
            b"{\"email\": ".to_vec(),
            400,
            "bad_request",
        ),
        (
            "not JSON",
            vec![json_ct],
            b"email=a@b.c&password=x".to_vec(),
            400,
            "bad_request",
        ),
        (
            "trailing garbage",
            vec![json_ct],
            b"{} {}".to_vec(),
            400,
            "bad_request",
        ),
        (
            "array",
            vec![json_ct],
            b"[1,2,3]".to_vec(),
            400,
            "bad_request",
        ),
        (
            "string",
            vec![json_ct],
            b"\"hello\"".to_vec(),
            400,
            "bad_request",
        ),
        ("null", vec![json_ct], b"null".to_vec(), 400, "bad_request"),
        (
            "non-UTF-8",
            vec![json_ct],
            b"{\"email\":\"\xff\xfe\xfd\",\"password\":\"\xc3\x28\"}".to_vec(),
            400,
            "bad_request",
        ),
        (
            "deep arrays",
            vec![json_ct],
            deep_ok_size.clone().into_bytes(),
            400,
            "bad_request",
        ),
        (
            "deep objects",
            vec![json_ct],
            deep_objects.clone().into_bytes(),
            400,
            "bad_request",
        ),
        (
            "deep and huge",
            vec![json_ct],
            deep_huge.clone().into_bytes(),
            413,
            "payload_too_large",
        ),
        (
            "text/plain",
            vec![("content-type", "text/plain")],
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "form",
            vec![("content-type", "application/x-www-form-urlencoded")],
            b"email=a".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "no content type",
            vec![],
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "json lookalike",
            vec![("content-type", "application/jsonp")],
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "wrong types",
            vec![json_ct],
            wrong_types.into_bytes(),
            400,
            "validation_failed",
        ),
    ];

    for ep in ENDPOINTS {
        for (what, headers, body, status, code) in &cases {
            let mut h = headers.clone();
            if ep.bearer {
                h.push(("authorization", auth.as_str()));
            }
            let r = raw(gw.addr, ep.method, ep.path, &h, Some(body)).await;
            assert!(r.status < 500, "{} {} {what}: {r:?}", ep.method, ep.path);
            assert_eq!(r.status, *status, "{} {} {what}: {r:?}", ep.method, ep.path);
            assert_error(&r, *status, code);
            assert!(
                !r.text().to_lowercase().contains("serde") && !r.text().contains("line "),
                "library text leaked: {r:?}"
            );
        }
        // Missing fields.
        let r = raw(
            gw.addr,
            ep.method,
            ep.path,
            &{
                let mut h = vec![json_ct];
                if ep.bearer {
                    h.push(("authorization", auth.as_str()));
                }
                h
            },
            Some(b"{}"),
        )
        .await;
        if ep.requires_fields {
            assert_error(&r, 400, "validation_failed");
        } else {
            // Logout without a refresh token ends nothing and answers as
            // always (idempotent); a profile patch with nothing in it
            // changes nothing and returns the profile.
            match ep.path {
                "/auth/logout" => assert_eq!(r.status, 204, "logout {{}}: {r:?}"),
                "/auth/me" => {
                    assert_eq!(r.status, 200, "PATCH /auth/me {{}}: {r:?}");
                    assert_eq!(r.json()["user"]["email"], "yara@example.com", "{r:?}");
                    assert_eq!(r.json()["user"]["username"], Value::Null, "{r:?}");
                }
                other => panic!("no expectation for {{}} on {other}"),
            }
        }
    }
    // A charset parameter is fine.
    let r = raw(
        gw.addr,
        "POST",
        "/auth/login",
        &[("content-type", "application/json; charset=utf-8")],
        Some(
            json!({ "email": "yara@example.com", "password": PASSWORD })
                .to_string()
                .as_bytes(),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // The user's session survived all of that.
    assert_eq!(proxied(&gw, &s.access).await, 200);
    // The gateway is still healthy.
    let metrics = gw.metrics().await;
    assert!(!metrics.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_above_64_kib_are_refused_with_413() {
    let gw = gateway("").await;
    let json_ct = ("content-type", "application/json");

    // Exactly at the limit: read and handled (401: no such account).
    let mut at_limit =
        json!({ "email": "zack@example.com", "password": "whatever pw" }).to_string();
    at_limit.push_str(&" ".repeat(64 * 1024 - at_limit.len()));
    assert_eq!(at_limit.len(), 65_536);
    let r = raw(
        gw.addr,
        "POST",
        "/auth/login",
        &[json_ct],
        Some(at_limit.as_bytes()),
    )
    .await;
    assert_error(&r, 401, "invalid_credentials");

    // One byte over, with Content-Length.
    let mut over = at_limit.clone();
    over.push(' ');
    for path in [
        "/auth/login",
        "/auth/register",
        "/auth/refresh",
        "/auth/logout",
    ] {
        let r = raw(gw.addr, "POST", path, &[json_ct], Some(over.as_bytes())).await;
        assert_error(&r, 413, "payload_too_large");
    }
    // A large Content-Length is refused before the body arrives.
    let r = raw(
        gw.addr,
        "POST",
        "/auth/login",
        &[json_ct, ("content-length", "1000000000")],
        Some(b"{}"),
    )
    .await;
    assert_error(&r, 413, "payload_too_large");

    // Chunked: the limit holds without a Content-Length.
    let chunked = |payload: &[u8], chunk: usize| {
        let mut body = Vec::new();
        for c in payload.chunks(chunk) {
            body.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            body.extend_from_slice(c);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        body
    };
    let big = format!("{{\"email\":\"{}\"}}", "a".repeat(80 * 1024));
    for path in ["/auth/login", "/auth/register"] {
        let r = raw(
            gw.addr,
            "POST",
            path,
            &[json_ct, ("transfer-encoding", "chunked")],
            Some(&chunked(big.as_bytes(), 8 * 1024)),
        )
        .await;
        assert_error(&r, 413, "payload_too_large");
    }
    // A small chunked body is read normally.
    let small = json!({ "email": "zack@example.com", "password": "whatever pw" }).to_string();
    let r = raw(
        gw.addr,
        "POST",
        "/auth/login",
        &[json_ct, ("transfer-encoding", "chunked")],
        Some(&chunked(small.as_bytes(), 7)),
    )
    .await;
    assert_error(&r, 401, "invalid_credentials");
    // Still serving.
    assert_eq!(gw.register("zack@example.com", PASSWORD).await.status, 201);
}

/// Reads from `s` until `pred(bytes)` holds, or fails after `within`.
fn read_until(
    s: &mut std::net::TcpStream,
    within: Duration,
    pred: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !pred(&buf) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no answer within {within:?}; got {:?}",
            String::from_utf8_lossy(&buf)
        );
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    buf
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered() {
    let gw = gateway("").await;
    let addr = gw.addr;
    tokio::task::spawn_blocking(move || {
        let body = json!({ "email": "abe@example.com", "password": PASSWORD, "password_confirm": PASSWORD })
            .to_string();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let head = format!(
            "POST /auth/register HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        // The interim answer comes without the body being sent.
        let interim = read_until(&mut s, Duration::from_secs(2), |b| contains(b, b"\r\n\r\n"));
        assert!(
            interim.starts_with(b"HTTP/1.1 100"),
            "expected 100 Continue, got {:?}",
            String::from_utf8_lossy(&interim)
        );
        s.write_all(body.as_bytes()).unwrap();
        let rest = read_until(&mut s, Duration::from_secs(10), |b| contains(b, b"\"user\""));
        let text = String::from_utf8_lossy(&rest);
        assert!(text.contains("HTTP/1.1 201"), "{text}");

        // Too large: the final 413 comes at once, no body needed.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let head = format!(
            "POST /auth/login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        let answer = read_until(&mut s, Duration::from_secs(2), |b| contains(b, b"payload_too_large"));
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    })
    .await
    .unwrap();
    gw.signin("abe@example.com", PASSWORD).await;
}

// ===================================================================
// the admin CLI
// ===================================================================

struct CliOut {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl CliOut {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("CLI output is not JSON ({e}): {}", self.stdout))
    }
}

/// Run the real `portcullis` binary; `stdin` is written to its standard
/// input. Bounded by [`bin::CLI_LIMIT`].
async fn cli(config: &Path, args: &[&str], stdin: Option<&str>) -> CliOut {
    let mut cmd = bin::command(args);
    cmd.arg("--config").arg(config);
    let out = bin::run_async(cmd, stdin.map(str::to_string), bin::CLI_LIMIT).await;
    CliOut {
        ok: out.ok(),
        stdout: out.stdout,
        stderr: out.stderr,
    }
}

fn write_config(gw: &TestGateway) -> PathBuf {
    let path = gw.dir.path().join("gw.toml");
    std::fs::write(&path, &gw.toml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cli_works_with_the_gateway_running_and_stopped() {
    let mut gw = gateway("").await;
    let cfg = write_config(&gw);
    const OPS_PW: &str = "operator secret passphrase";

    // (a) The gateway holds the database: the CLI goes through the admin listener.
    let out = cli(
        &cfg,
        &[
            "user",
            "add",
            "--email",
            "Ops@Example.com",
            "--role",
            "admin",
            "--password-stdin",
        ],
        Some(&format!("{OPS_PW}\n")),
    )
    .await;
    assert!(out.ok, "user add failed: {}", out.stderr);
    let u = out.json();
    assert_eq!(u["email"], "Ops@example.com");
    assert_eq!(u["roles"], json!(["admin"]));
    assert_eq!(u["email_verified"], true);
    assert!(!out.stdout.contains(OPS_PW) && !out.stderr.contains(OPS_PW));

    let ops = gw.signin("Ops@example.com", OPS_PW).await;
    assert_eq!(ops.user["roles"], json!(["admin"]));
    assert_eq!(gw.get("/admin", Some(&ops.access)).await.status, 200);
    assert_eq!(last_echoed(&gw, "x-user-roles").as_deref(), Some("admin"));

    // Refusals: an existing email, a weak password, a bad role.
    let dup = cli(
        &cfg,
        &[
            "user",
            "add",
            "--email",
            "Ops@EXAMPLE.com",
            "--password-stdin",
        ],
        Some("another fine passphrase\n"),
    )
    .await;
    assert!(!dup.ok, "duplicate email accepted: {}", dup.stdout);
    let weak = cli(
        &cfg,
        &[
            "user",
            "add",
            "--email",
            "weak@example.com",
            "--password-stdin",
        ],
        Some("password1\n"),
    )
    .await;
    assert!(!weak.ok, "common password accepted: {}", weak.stdout);
    assert!(!weak.stderr.contains("password1"), "{}", weak.stderr);
    let badrole = cli(
        &cfg,
        &[
            "user",
            "add",
            "--email",
            "weak@example.com",
            "--role",
            "a,b",
            "--password-stdin",
        ],
        Some(&format!("{OPS_PW}\n")),
    )
    .await;
    assert!(!badrole.ok, "a role with a comma was accepted");
    assert_error(
        &gw.login("weak@example.com", "password1").await,
        401,
        "invalid_credentials",
    );

    // role add / remove and disable on a user who registered normally.
    let bob = gw.signup("bob@example.com").await;
    assert_eq!(gw.get("/ops", Some(&bob.access)).await.status, 403);
    let out = cli(
        &cfg,
        &[
            "user",
            "role",
            "add",
            "--email",
            "bob@example.com",
            "--role",
            "ops",
        ],
        None,
    )
    .await;
    assert!(out.ok, "role add: {}", out.stderr);
    assert_eq!(out.json()["roles"], json!(["ops"]));
    let bob2 = gw.signin("bob@example.com", PASSWORD).await;
    assert_eq!(gw.get("/ops", Some(&bob2.access)).await.status, 200);
    assert_eq!(gw.get("/admin", Some(&bob2.access)).await.status, 403);

    let out = cli(
        &cfg,
        &[
            "user",
            "role",
            "remove",
            "--email",
            "Ops@example.com",
            "--role",
            "admin",
        ],
        None,
    )
    .await;
    assert!(out.ok, "role remove: {}", out.stderr);
    assert_eq!(out.json()["roles"], json!([]));
    // The old token carried the role: it stops working at once.
    assert_eq!(gw.get("/admin", Some(&ops.access)).await.status, 401);
    let ops2 = gw.signin("Ops@example.com", OPS_PW).await;
    assert_eq!(gw.get("/admin", Some(&ops2.access)).await.status, 403);

    let out = cli(
        &cfg,
        &["user", "disable", "--email", "bob@example.com"],
        None,
    )
    .await;
    assert!(out.ok, "disable: {}", out.stderr);
    assert_eq!(proxied(&gw, &bob2.access).await, 401);
    assert_error(
        &gw.login("bob@example.com", PASSWORD).await,
        401,
        "invalid_credentials",
    );
    let out = cli(
        &cfg,
        &["user", "disable", "--email", "nobody@example.com"],
        None,
    )
    .await;
    assert!(!out.ok, "disabling an unknown user succeeded");

    let out = cli(&cfg, &["user", "list"], None).await;
    assert!(out.ok, "list: {}", out.stderr);
    let list = out.json();
    let emails: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails.len(), 2, "{list}");
    assert!(emails.contains(&"Ops@example.com") && emails.contains(&"bob@example.com"));
    assert!(!out.stdout.contains("argon2"), "no hashes in the listing");

    // (b) The gateway is stopped: the CLI works on sled directly.
    gw.stop();
    let out = cli(
        &cfg,
        &[
            "user",
            "add",
            "--email",
            "offline@example.com",
            "--role",
            "admin",
            "--role",
            "ops",
            "--password-stdin",
        ],
        Some(&format!("{OPS_PW}\n")),
    )
    .await;
    assert!(out.ok, "offline user add: {}", out.stderr);
    assert_eq!(out.json()["roles"], json!(["admin", "ops"]));
    let out = cli(
        &cfg,
        &[
            "user",
            "role",
            "add",
            "--email",
            "Ops@example.com",
            "--role",
            "admin",
        ],
        None,
    )
    .await;
    assert!(out.ok, "offline role add: {}", out.stderr);
    let out = cli(
        &cfg,
        &[
            "user",
            "role",
            "remove",
            "--email",
            "offline@example.com",
            "--role",
            "ops",
        ],
        None,
    )
    .await;
    assert!(out.ok, "offline role remove: {}", out.stderr);
    let out = cli(&cfg, &["user", "list"], None).await;
    assert!(out.ok, "offline list: {}", out.stderr);
    let list = out.json();
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    let bob_row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "bob@example.com")
        .unwrap();
    assert_eq!(bob_row["disabled"], true);
    let dis = cli(
        &cfg,
        &["user", "disable", "--email", "Ops@example.com"],
        None,
    )
    .await;
    assert!(dis.ok, "offline disable: {}", dis.stderr);
    let dup = cli(
        &cfg,
        &[
            "user",
            "add",
            "--email",
            "offline@example.com",
            "--password-stdin",
        ],
        Some(&format!("{OPS_PW}\n")),
    )
    .await;
    assert!(!dup.ok, "offline duplicate accepted");

    // Back up: the changes made offline are in effect. The offline CLI
    // used the real clock for its revocation cutoffs; bring the test clock
    // past it, as real time would be.
    gw.clock.set(portcullis::clock::SystemClock.now() + 2);
    gw.restart();
    let off = gw.signin("offline@example.com", OPS_PW).await;
    assert_eq!(off.user["roles"], json!(["admin"]));
    assert_eq!(off.user["email_verified"], true);
    assert_eq!(gw.get("/admin", Some(&off.access)).await.status, 200);
    assert_eq!(gw.get("/ops", Some(&off.access)).await.status, 200);
    assert_error(
        &gw.login("Ops@example.com", OPS_PW).await,
        401,
        "invalid_credentials",
    );
    // The token issued before the offline disable is dead too.
    assert_eq!(proxied(&gw, &ops2.access).await, 401);
}

// ===================================================================
// nginx auth_request
// ===================================================================

/// Kills the nginx child when the test ends, however it ends.
struct NginxGuard {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for NginxGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NginxGuard {
    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

fn start_nginx(gateway: SocketAddr, upstream: SocketAddr) -> (NginxGuard, SocketAddr) {
    // Debian installs nginx in /usr/sbin, which a non-login PATH may lack.
    let nginx = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed: the forward-auth test needs a real nginx \
                 (apt-get install -y nginx-light; .ci/run installs it)"
            )
        });
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let port = free_port();
    let conf = format!(
        r#"
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /_auth {{
            internal;
            proxy_pass http://{gateway}/auth/verify;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }}
        location / {{
            auth_request /_auth;
            auth_request_set $user $upstream_http_x_user_id;
            auth_request_set $email $upstream_http_x_user_email;
            proxy_set_header X-User-Id $user;
            proxy_set_header X-User-Email $email;
            proxy_pass http://{upstream};
        }}
    }}
}}
"#
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(&nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let mut guard = NginxGuard { child, dir };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        if let Ok(Some(status)) = guard.child.try_wait() {
            panic!("nginx exited ({status}): {}", guard.error_log());
        }
        assert!(
            Instant::now() < deadline,
            "nginx did not start listening: {}",
            guard.error_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (guard, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_uses_forward_auth() {
    let gw = gateway("").await;
    let s = gw.signup("nell@example.com").await;
    let uid = s.user["id"].as_str().unwrap().to_string();
    let (nginx, addr) = start_nginx(gw.addr, gw.upstream.addr);

    // No token: nginx answers 401 itself and the upstream sees nothing.
    gw.upstream.reset();
    let r = http::get(addr, "/app/page", None).await;
    assert_eq!(r.status, 401, "{r:?}\n{}", nginx.error_log());
    assert_eq!(gw.upstream.hits(), 0);
    // A bad token: 401.
    let r = http::get(addr, "/app/page", Some("garbage")).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(gw.upstream.hits(), 0);
    // A forged identity header does not help.
    let r = raw(addr, "GET", "/app/page", &[("x-user-id", &uid)], None).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(gw.upstream.hits(), 0);

    // A valid token: through, and the upstream learns the user.
    let r = http::get(addr, "/app/page?x=1", Some(&s.access)).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", nginx.error_log());
    assert_eq!(gw.upstream.hits(), 1);
    let seen = gw.upstream.last_request().unwrap();
    assert_eq!(seen["path"], "/app/page?x=1");
    assert_eq!(last_echoed(&gw, "x-user-id").as_deref(), Some(uid.as_str()));
    assert_eq!(
        last_echoed(&gw, "x-user-email").as_deref(),
        Some("nell@example.com")
    );

    // After logout the same token is refused by nginx as well.
    let r = gw
        .post(
            "/auth/logout",
            json!({ "refresh_token": s.refresh }),
            Some(&s.access),
        )
        .await;
    assert_eq!(r.status, 204);
    let r = http::get(addr, "/app/page", Some(&s.access)).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(gw.upstream.hits(), 1);
    drop(nginx);
}

/// Issue 20: every `user` command loaded every user and every revocation
/// before it ran. Now a command loads what it needs: `user disable`,
/// `user role add` and `user keys list` read one user by email, and `user
/// list` reads the users page by page. Shown on a stopped gateway's data
/// dir that also holds an unreadable revocation record and an unreadable
/// record of another user, which a full load trips over (the commands
/// failed with "loading revocations"); the changes made are in effect
/// when the gateway is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_commands_load_only_the_user_they_name() {
    let mut gw = gateway("").await;
    let cfg = write_config(&gw);
    let bob = gw.signup("bob@example.com").await;
    // More users than one page of `user list` holds (written as records:
    // bob's password hash, no hashing).
    const USERS: usize = 1234;
    let store = gw.handle().auth.store.clone();
    let template = store
        .find_user_by_email("bob@example.com")
        .await
        .unwrap()
        .unwrap();
    let users: Vec<portcullis::store::Record> = (0..USERS)
        .map(|i| {
            let mut u = template.clone();
            u.id = uuid::Uuid::new_v4();
            u.email = format!("u{i}@example.com");
            portcullis::store::Record::User(u)
        })
        .collect();
    store.import(users).await.unwrap();
    drop(store);
    gw.signin("u7@example.com", PASSWORD).await;
    gw.stop();
    let out = cli(&cfg, &["user", "list"], None).await;
    assert!(out.ok, "list: {}", out.stderr);
    let list = out.json();
    let mut emails: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    emails.sort();
    let before = emails.len();
    emails.dedup();
    assert_eq!((before, emails.len()), (USERS + 1, USERS + 1), "each once");
    assert!(emails.contains(&"bob@example.com"));
    {
        // A revocation record and another user's record that do not decode.
        let db = sled::open(gw.data_dir().join("db")).unwrap();
        db.open_tree("revoked")
            .unwrap()
            .insert(b"garbage", b"x".to_vec())
            .unwrap();
        db.open_tree("users")
            .unwrap()
            .insert(uuid::Uuid::nil().as_bytes(), b"{not json".to_vec())
            .unwrap();
        db.flush().unwrap();
    }
    let out = cli(
        &cfg,
        &[
            "user",
            "role",
            "add",
            "--email",
            "bob@example.com",
            "--role",
            "ops",
        ],
        None,
    )
    .await;
    assert!(out.ok, "role add: {}", out.stderr);
    assert_eq!(out.json()["roles"], json!(["ops"]));
    let out = cli(
        &cfg,
        &["user", "keys", "list", "--email", "bob@example.com"],
        None,
    )
    .await;
    assert!(out.ok, "keys list: {}", out.stderr);
    assert_eq!(out.json()["api_keys"], json!([]));
    let out = cli(
        &cfg,
        &["user", "disable", "--email", "u7@example.com"],
        None,
    )
    .await;
    assert!(out.ok, "disable: {}", out.stderr);
    let out = cli(
        &cfg,
        &["user", "disable", "--email", "nobody@example.com"],
        None,
    )
    .await;
    assert!(!out.ok, "disabling an unknown user succeeded");
    // A full listing does meet the bad record, and says so.
    let out = cli(&cfg, &["user", "list"], None).await;
    assert!(!out.ok, "listing read an unreadable user: {}", out.stdout);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    {
        let db = sled::open(gw.data_dir().join("db")).unwrap();
        db.open_tree("revoked").unwrap().remove(b"garbage").unwrap();
        db.open_tree("users")
            .unwrap()
            .remove(uuid::Uuid::nil().as_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    gw.clock.set(portcullis::clock::SystemClock.now() + 2);
    gw.restart();
    let b = gw.signin("bob@example.com", PASSWORD).await;
    assert_eq!(b.user["roles"], json!(["ops"]));
    assert_eq!(gw.get("/ops", Some(&b.access)).await.status, 200);
    assert_eq!(gw.get("/ops", Some(&bob.access)).await.status, 403);
    assert_error(
        &gw.login("u7@example.com", PASSWORD).await,
        401,
        "invalid_credentials",
    );
}
