//! Issue 13, the second factor: TOTP enrolment, login with `mfa_token`,
//! skew, replay, recovery codes, lockout, token expiry, step-up routes and
//! `amr`. Codes are computed by the tests' own TOTP
//! (`common::totp`, checked against the RFC 6238 vectors), never by the
//! gateway's.

use std::sync::Arc;

use base64::Engine;
use portcullis::clock::Clock;
use serde_json::{json, Value};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::common::http::{self, Response};
use crate::common::totp::{base32_decode, code_at};
use crate::common::{assert_error, Builder, TestGateway, PASSWORD};

const ROUTES: &str = r#"
[[routes]]
prefix = "/"
upstream = "{UP}"
auth = "required"

[[routes]]
prefix = "/secure"
upstream = "{UP}"
auth = "required"
mfa = true
"#;

async fn gateway(max_failed: u32) -> TestGateway {
    TestGateway::start_with(Builder {
        extra: format!(
            "[throttle]\nauth_per_minute = 0\nmax_failed_logins = {max_failed}\n\n[tokens]\nissuer = \"Acme Gate\"\n"
        ),
        routes: ROUTES.into(),
        ..Default::default()
    })
    .await
}

/// The claims of an access token (not verified: the gateway did that).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

fn amr(token: &str) -> Vec<String> {
    claims(token)["amr"]
        .as_array()
        .unwrap_or_else(|| panic!("no amr in {}", claims(token)))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

async fn delete(gw: &TestGateway, path: &str, body: Value, bearer: &str) -> Response {
    http::send_json(gw.addr, "DELETE", path, Some(&body), Some(bearer)).await
}

/// A signed-up user with TOTP on: (access token, secret, recovery codes).
async fn enrolled(gw: &TestGateway, email: &str) -> (String, Vec<u8>, Vec<String>) {
    let s = gw.signup(email).await;
    let r = gw
        .post("/auth/mfa/totp/enroll", json!({}), Some(&s.access))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let secret = base32_decode(r.json()["secret"].as_str().unwrap());
    let code = code_at(&secret, gw.clock.now());
    let r = gw
        .post(
            "/auth/mfa/totp/confirm",
            json!({ "code": code }),
            Some(&s.access),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let codes = r.json()["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    (s.access, secret, codes)
}

/// Log in with the password; must answer the MFA challenge.
async fn mfa_token(gw: &TestGateway, email: &str) -> String {
    let r = gw.login(email, PASSWORD).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["mfa_required"], true, "{v}");
    assert!(v.get("access_token").is_none() && v.get("refresh_token").is_none());
    v["mfa_token"].as_str().unwrap().to_string()
}

async fn verify(gw: &TestGateway, token: &str, code: &str) -> Response {
    gw.post(
        "/auth/mfa/verify",
        json!({ "mfa_token": token, "code": code }),
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrol_confirm_login_and_amr() {
    let gw = gateway(5).await;
    let s = gw.signup("mfa@example.com").await;
    assert_eq!(amr(&s.access), ["pwd"]);
    // A password token does not pass a step-up route.
    assert_error(
        &gw.get("/secure/x", Some(&s.access)).await,
        403,
        "mfa_required",
    );
    assert_eq!(gw.get("/plain", Some(&s.access)).await.status, 200);

    let r = gw
        .post("/auth/mfa/totp/enroll", json!({}), Some(&s.access))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    let b32 = v["secret"].as_str().unwrap();
    let secret = base32_decode(b32);
    assert_eq!(secret.len(), 20, "160 bits");
    let uri = v["otpauth_uri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/Acme%20Gate:mfa%40example.com?"),
        "{uri}"
    );
    for part in [
        &format!("secret={b32}")[..],
        "issuer=Acme%20Gate",
        "algorithm=SHA1",
        "digits=6",
        "period=30",
    ] {
        assert!(uri.contains(part), "{part} in {uri}");
    }
    // Not on yet: the password alone still logs in.
    assert!(gw.login("mfa@example.com", PASSWORD).await.json()["access_token"].is_string());
    // A wrong code does not confirm.
    let now = gw.clock.now();
    let wrong = format!(
        "{:06}",
        (code_at(&secret, now).parse::<u32>().unwrap() + 1) % 1_000_000
    );
    let r = gw
        .post(
            "/auth/mfa/totp/confirm",
            json!({ "code": wrong }),
            Some(&s.access),
        )
        .await;
    assert_error(&r, 400, "invalid_code");
    let r = gw
        .post(
            "/auth/mfa/totp/confirm",
            json!({ "code": code_at(&secret, now) }),
            Some(&s.access),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let codes = r.json()["recovery_codes"].as_array().unwrap().clone();
    assert_eq!(codes.len(), 10);
    let distinct: std::collections::HashSet<_> = codes.iter().collect();
    assert_eq!(distinct.len(), 10);
    // Enrolling again while on: 409.
    let r = gw
        .post("/auth/mfa/totp/enroll", json!({}), Some(&s.access))
        .await;
    assert_error(&r, 409, "already_enrolled");

    // The secret is not on disk in the clear, and the key file is 0600.
    let mut found = false;
    for entry in walk(&gw.data_dir()) {
        let bytes = std::fs::read(&entry).unwrap();
        let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        found |= has(b32.as_bytes()) || has(&secret);
    }
    assert!(!found, "the TOTP secret is stored in the clear");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(gw.data_dir().join("mfa.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Login now needs the second factor; the next step's code completes it.
    gw.clock.advance(30);
    let t = mfa_token(&gw, "mfa@example.com").await;
    let r = verify(&gw, &t, &code_at(&secret, gw.clock.now())).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    let access = v["access_token"].as_str().unwrap();
    assert_eq!(amr(access), ["pwd", "otp"]);
    assert_eq!(v["user"]["email"], "mfa@example.com");
    assert_eq!(gw.get("/secure/x", Some(access)).await.status, 200);
    // A refresh keeps the session's amr.
    let r = gw
        .post(
            "/auth/refresh",
            json!({ "refresh_token": v["refresh_token"] }),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let refreshed = r.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(amr(&refreshed), ["pwd", "otp"]);
    assert_eq!(gw.get("/secure/x", Some(&refreshed)).await.status, 200);
    // And a password-only session refreshes to ["pwd"].
    let r = gw
        .post("/auth/refresh", json!({ "refresh_token": s.refresh }), None)
        .await;
    assert_eq!(amr(r.json()["access_token"].as_str().unwrap()), ["pwd"]);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skew_of_one_step_and_no_replay() {
    let gw = gateway(100).await;
    let (_, secret, _) = enrolled(&gw, "skew@example.com").await;
    gw.clock.advance(300);
    let now = gw.clock.now();
    // Two steps away either side: refused.
    for off in [-60, 60] {
        let t = mfa_token(&gw, "skew@example.com").await;
        assert_error(
            &verify(&gw, &t, &code_at(&secret, now + off)).await,
            400,
            "invalid_code",
        );
    }
    // One step behind, the current one, one ahead: each accepted once, in
    // that order.
    for off in [-30, 0, 30] {
        let t = mfa_token(&gw, "skew@example.com").await;
        let r = verify(&gw, &t, &code_at(&secret, now + off)).await;
        assert_eq!(r.status, 200, "offset {off}: {r:?}");
    }
    // Replays: every code of those steps is refused now, and an older
    // step after a newer one.
    for off in [-30, 0, 30] {
        let t = mfa_token(&gw, "skew@example.com").await;
        let r = verify(&gw, &t, &code_at(&secret, now + off)).await;
        assert_error(&r, 400, "invalid_code");
        // The refused code did not burn the token: a good code still works.
        gw.clock.advance(30);
        let r = verify(&gw, &t, &code_at(&secret, gw.clock.now() + 30)).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    // Malformed codes are a clear 400, never a 500.
    let t = mfa_token(&gw, "skew@example.com").await;
    for bad in ["", "12345", "1234567", "abcdef", "１２３４５６"] {
        assert_error(&verify(&gw, &t, bad).await, 400, "invalid_code");
    }
    let r = gw
        .post(
            "/auth/mfa/verify",
            json!({ "mfa_token": t, "code": 123456 }),
            None,
        )
        .await;
    assert_error(&r, 400, "validation_failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_codes_work_once_each() {
    let gw = gateway(100).await;
    let (_, _, codes) = enrolled(&gw, "recovery@example.com").await;
    for (i, c) in codes.iter().enumerate() {
        // Typed in capitals or without the dash, it is the same code.
        let typed = match i % 3 {
            0 => c.clone(),
            1 => c.to_uppercase(),
            _ => c.replace('-', ""),
        };
        let t = mfa_token(&gw, "recovery@example.com").await;
        let r = verify(&gw, &t, &typed).await;
        assert_eq!(r.status, 200, "code {i}: {r:?}");
        assert_eq!(
            amr(r.json()["access_token"].as_str().unwrap()),
            ["pwd", "otp"]
        );
        let t = mfa_token(&gw, "recovery@example.com").await;
        assert_error(&verify(&gw, &t, c).await, 400, "invalid_code");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codes_lock_the_account() {
    let gw = gateway(3).await;
    let (_, secret, _) = enrolled(&gw, "lock@example.com").await;
    gw.clock.advance(60);
    let t = mfa_token(&gw, "lock@example.com").await;
    let good = code_at(&secret, gw.clock.now());
    let wrong = format!(
        "{:06}",
        (good.parse::<u32>().unwrap() + 500_000) % 1_000_000
    );
    for _ in 0..3 {
        assert_error(&verify(&gw, &t, &wrong).await, 400, "invalid_code");
    }
    // Locked: the right code and the right password are refused alike.
    let r = verify(&gw, &t, &good).await;
    assert_error(&r, 429, "too_many_requests");
    assert!(r.header("retry-after").is_some());
    assert_error(
        &gw.login("lock@example.com", PASSWORD).await,
        429,
        "too_many_requests",
    );
    // After the lockout, the same token and code pass.
    gw.clock.advance(300);
    let good = code_at(&secret, gw.clock.now());
    let t = mfa_token(&gw, "lock@example.com").await;
    assert_eq!(verify(&gw, &t, &good).await.status, 200);
    let m = gw.metrics().await;
    assert!(crate::common::metric(&m, "portcullis_throttled_total{scope=\"account\"}") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mfa_token_expires_is_single_use_and_bound_to_its_login() {
    let gw = gateway(100).await;
    let (access, secret, _) = enrolled(&gw, "tok@example.com").await;
    gw.clock.advance(30);
    let t = mfa_token(&gw, "tok@example.com").await;
    assert_eq!(
        verify(&gw, &t, &code_at(&secret, gw.clock.now()))
            .await
            .status,
        200
    );
    // Used: the next step's good code gets nothing from it.
    gw.clock.advance(30);
    assert_error(
        &verify(&gw, &t, &code_at(&secret, gw.clock.now())).await,
        401,
        "invalid_token",
    );
    // Five minutes: still good at 299 s, gone at 300 s.
    let t1 = mfa_token(&gw, "tok@example.com").await;
    let t2 = mfa_token(&gw, "tok@example.com").await;
    gw.clock.advance(299);
    assert_eq!(
        verify(&gw, &t1, &code_at(&secret, gw.clock.now()))
            .await
            .status,
        200
    );
    gw.clock.advance(31);
    assert_error(
        &verify(&gw, &t2, &code_at(&secret, gw.clock.now())).await,
        401,
        "invalid_token",
    );
    // Bound to the password it was issued under.
    let t3 = mfa_token(&gw, "tok@example.com").await;
    let r = gw
        .post(
            "/auth/password/change",
            json!({
                "current_password": PASSWORD,
                "new_password": "another long passphrase",
                "new_password_confirm": "another long passphrase",
            }),
            Some(&access),
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    gw.clock.advance(30);
    assert_error(
        &verify(&gw, &t3, &code_at(&secret, gw.clock.now())).await,
        401,
        "invalid_token",
    );
    // Garbage tokens.
    for bad in ["", "x", &"a".repeat(600)] {
        assert_error(&verify(&gw, bad, "123456").await, 401, "invalid_token");
    }
    // An email verification token is no mfa_token (and the other way).
    let r = gw
        .post("/auth/email/verify", json!({ "token": t3 }), None)
        .await;
    assert_error(&r, 400, "invalid_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_needs_the_password_and_a_code() {
    let gw = gateway(100).await;
    let (access, secret, codes) = enrolled(&gw, "off@example.com").await;
    gw.clock.advance(30);
    let code = code_at(&secret, gw.clock.now());
    let r = delete(
        &gw,
        "/auth/mfa/totp",
        json!({ "password": "wrong password!", "code": code }),
        &access,
    )
    .await;
    assert_error(&r, 401, "invalid_credentials");
    let r = delete(
        &gw,
        "/auth/mfa/totp",
        json!({ "password": PASSWORD, "code": "000000x" }),
        &access,
    )
    .await;
    assert_error(&r, 400, "invalid_code");
    let r = delete(
        &gw,
        "/auth/mfa/totp",
        json!({ "password": PASSWORD }),
        &access,
    )
    .await;
    assert_error(&r, 400, "validation_failed");
    let r = http::send_json(
        gw.addr,
        "DELETE",
        "/auth/mfa/totp",
        Some(&json!({"password": PASSWORD, "code": code})),
        None,
    )
    .await;
    assert_error(&r, 401, "unauthorized");
    // A recovery code does it too.
    let r = delete(
        &gw,
        "/auth/mfa/totp",
        json!({ "password": PASSWORD, "code": codes[0] }),
        &access,
    )
    .await;
    assert_eq!(r.status, 204, "{r:?}");
    // Off: the password alone logs in, with amr ["pwd"].
    let r = gw.login("off@example.com", PASSWORD).await;
    let v = r.json();
    assert_eq!(amr(v["access_token"].as_str().unwrap()), ["pwd"]);
    // And it can be enrolled afresh (a new secret).
    let r = gw
        .post("/auth/mfa/totp/enroll", json!({}), Some(&access))
        .await;
    assert_eq!(r.status, 200);
    assert_ne!(base32_decode(r.json()["secret"].as_str().unwrap()), secret);
    // Disabling when it is off: 400.
    let r = delete(
        &gw,
        "/auth/mfa/totp",
        json!({ "password": PASSWORD, "code": code }),
        &access,
    )
    .await;
    assert_error(&r, 400, "invalid_code");
}

/// Fire `bodies` at `/auth/mfa/verify` at once, each on its own connection.
async fn burst_verify(gw: &TestGateway, bodies: Vec<Value>) -> Vec<Response> {
    let barrier = Arc::new(Barrier::new(bodies.len()));
    let addr = gw.addr;
    let mut set = JoinSet::new();
    for b in bodies {
        let barrier = barrier.clone();
        set.spawn(async move {
            barrier.wait().await;
            http::post_json(addr, "/auth/mfa/verify", &b, None).await
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_code_sent_sixteen_times_at_once_logs_in_once() {
    let gw = gateway(100).await;
    let (_, secret, codes) = enrolled(&gw, "race@example.com").await;
    gw.clock.advance(30);
    let code = code_at(&secret, gw.clock.now());
    // Sixteen logins waiting for their second factor, one TOTP code.
    let mut tokens = Vec::new();
    for _ in 0..16 {
        tokens.push(mfa_token(&gw, "race@example.com").await);
    }
    let rs = burst_verify(
        &gw,
        tokens
            .iter()
            .map(|t| json!({ "mfa_token": t, "code": code }))
            .collect(),
    )
    .await;
    let ok = rs.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        ok,
        1,
        "{:?}",
        rs.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(rs
        .iter()
        .filter(|r| r.status != 200)
        .all(|r| r.status == 400 && r.json()["error"] == "invalid_code"));
    // One recovery code, sixteen at once: one success.
    let mut tokens = Vec::new();
    for _ in 0..16 {
        tokens.push(mfa_token(&gw, "race@example.com").await);
    }
    let rs = burst_verify(
        &gw,
        tokens
            .iter()
            .map(|t| json!({ "mfa_token": t, "code": codes[3] }))
            .collect(),
    )
    .await;
    assert_eq!(rs.iter().filter(|r| r.status == 200).count(), 1);
    // One mfa_token, sixteen good codes at once (distinct steps are not
    // possible: the same code): one session.
    let t = mfa_token(&gw, "race@example.com").await;
    let rs = burst_verify(
        &gw,
        (0..16)
            .map(|i| json!({ "mfa_token": t, "code": codes[4 + i % 6] }))
            .collect(),
    )
    .await;
    assert_eq!(rs.iter().filter(|r| r.status == 200).count(), 1);
    assert!(rs
        .iter()
        .filter(|r| r.status != 200)
        .all(|r| r.status == 401 || r.status == 400));
}
