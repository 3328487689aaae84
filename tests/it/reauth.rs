//! Recent authentication and security notices (CONTRACT 8.6, issue 20)
//! on the real gateway: enrolling TOTP, creating an API key and adding a
//! passkey need a sign-in within `accounts.reauth_secs` (403
//! `reauth_required` otherwise) and work again after `POST /auth/reauth`;
//! `auth_time` survives refresh; reauth guesses count toward the lockout
//! and need the code when TOTP is on; each notice mail arrives at the SMTP
//! receiver, names its event and carries no secret. The clock is the
//! tests' `ManualClock`: nothing sleeps for an age.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use portcullis::clock::Clock;
use serde_json::{json, Value};
use tokio::sync::Barrier;

use crate::browser::{csrf, portal_login, post_form, set_cookie};
use crate::common::http::{self, Response};
use crate::common::smtp::Mail;
use crate::common::totp::{base32_decode, code_at};
use crate::common::{assert_error, Builder, TestGateway, PASSWORD};

/// The default `accounts.reauth_secs`.
const REAUTH_SECS: i64 = 300;

async fn gateway(extra: &str) -> TestGateway {
    TestGateway::start_with(Builder {
        with_smtp: true,
        extra: format!("[throttle]\nauth_per_minute = 0\n{extra}"),
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

async fn send(gw: &TestGateway, method: &str, path: &str, body: Value, bearer: &str) -> Response {
    http::send_json(gw.addr, method, path, Some(&body), Some(bearer)).await
}

async fn enroll(gw: &TestGateway, access: &str) -> Response {
    http::send_json(gw.addr, "POST", "/auth/mfa/totp/enroll", None, Some(access)).await
}

async fn create_key(gw: &TestGateway, access: &str) -> Response {
    let body = json!({ "name": "ci", "scopes": ["read"] });
    send(gw, "POST", "/auth/api-keys", body, access).await
}

async fn reauth(gw: &TestGateway, body: Value, access: &str) -> Response {
    send(gw, "POST", "/auth/reauth", body, access).await
}

async fn refresh(gw: &TestGateway, token: &str) -> Response {
    gw.post("/auth/refresh", json!({ "refresh_token": token }), None)
        .await
}

/// Enrol and confirm TOTP with a fresh token; returns the secret (as
/// bytes, and in base32 as enrolment showed it) and the recovery codes.
async fn totp_on(gw: &TestGateway, access: &str) -> (Vec<u8>, String, Vec<String>) {
    let r = enroll(gw, access).await;
    assert_eq!(r.status, 200, "{r:?}");
    let shown = r.json()["secret"].as_str().unwrap().to_string();
    let secret = base32_decode(&shown);
    let code = code_at(&secret, gw.clock.now());
    let r = send(
        gw,
        "POST",
        "/auth/mfa/totp/confirm",
        json!({ "code": code }),
        access,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let codes = r.json()["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    (secret, shown, codes)
}

#[tokio::test(flavor = "multi_thread")]
async fn totp_and_api_keys_need_a_recent_sign_in_and_reauth_restores_it() {
    let gw = gateway("").await;
    let s = gw.signup("recent@example.com").await;
    let t0 = gw.clock.now();
    let c = claims(&s.access);
    assert_eq!(c["auth_time"], json!(t0), "{c}");
    // Exactly reauth_secs old still counts as recent; one second more not.
    gw.clock.advance(REAUTH_SECS);
    let r = create_key(&gw, &s.access).await;
    assert_eq!(r.status, 201, "{r:?}");
    gw.clock.advance(1);
    assert_error(&enroll(&gw, &s.access).await, 403, "reauth_required");
    assert_error(&create_key(&gw, &s.access).await, 403, "reauth_required");
    // Reading and removing what exists needs no reauth.
    let r = gw.get("/auth/api-keys", Some(&s.access)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["api_keys"].as_array().unwrap().len(), 1);

    // Re-authenticate: a new pair for the same session.
    let r = reauth(&gw, json!({ "password": PASSWORD }), &s.access).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["user"]["email"], "recent@example.com");
    let access = v["access_token"].as_str().unwrap().to_string();
    let refresh_token = v["refresh_token"].as_str().unwrap().to_string();
    let c2 = claims(&access);
    assert_eq!(c2["auth_time"], json!(gw.clock.now()));
    assert_eq!(c2["sid"], c["sid"], "the same session");
    assert_ne!(refresh_token, s.refresh, "its refresh token rotated");
    // The old access token is still too old; the new one is recent.
    assert_error(&enroll(&gw, &s.access).await, 403, "reauth_required");
    let r = enroll(&gw, &access).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = create_key(&gw, &access).await;
    assert_eq!(r.status, 201, "{r:?}");
    // The pair answered is coherent: its refresh token is the current one.
    let r = refresh(&gw, &refresh_token).await;
    assert_eq!(r.status, 200, "{r:?}");

    // Wrong or missing password: refused, and nothing changes.
    let r = reauth(&gw, json!({ "password": "not the password" }), &access).await;
    assert_error(&r, 401, "invalid_credentials");
    assert_error(
        &reauth(&gw, json!({}), &access).await,
        400,
        "validation_failed",
    );
    let r = http::send_json(
        gw.addr,
        "POST",
        "/auth/reauth",
        Some(&json!({ "password": PASSWORD })),
        None,
    )
    .await;
    assert_error(&r, 401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_time_survives_refresh_and_only_reauth_renews_it() {
    let gw = gateway("").await;
    let s = gw.signup("refreshed@example.com").await;
    let t0 = gw.clock.now();
    gw.clock.advance(200);
    let r = refresh(&gw, &s.refresh).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    let access = v["access_token"].as_str().unwrap().to_string();
    let rt = v["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(
        claims(&access)["auth_time"],
        json!(t0),
        "a refresh is no sign-in"
    );
    gw.clock.advance(200);
    // Refreshed 200 s ago, signed in 400 s ago: not recent.
    let r = refresh(&gw, &rt).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    let access = v["access_token"].as_str().unwrap().to_string();
    let rt = v["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(claims(&access)["auth_time"], json!(t0));
    assert_error(&enroll(&gw, &access).await, 403, "reauth_required");
    // Introspection shows the claim too.
    let r = gw
        .post("/auth/verify", json!({ "token": access }), None)
        .await;
    assert_eq!(r.json()["claims"]["auth_time"], json!(t0), "{r:?}");

    let r = reauth(&gw, json!({ "password": PASSWORD }), &access).await;
    assert_eq!(r.status, 200, "{r:?}");
    let t1 = gw.clock.now();
    let rt2 = r.json()["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt2, rt);
    gw.clock.advance(100);
    let r = refresh(&gw, &rt2).await;
    assert_eq!(r.status, 200, "{r:?}");
    let access = r.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        claims(&access)["auth_time"],
        json!(t1),
        "the reauth's time, refreshed on"
    );
    assert_eq!(enroll(&gw, &access).await.status, 200);
    // A fresh sign-in is recent too, for its own session only.
    let other = gw.signin("refreshed@example.com", PASSWORD).await;
    assert_eq!(claims(&other.access)["auth_time"], json!(gw.clock.now()));
}

#[tokio::test(flavor = "multi_thread")]
async fn reauth_needs_the_code_when_totp_is_on_and_spends_it() {
    let gw = gateway("").await;
    let s = gw.signup("twofactor@example.com").await;
    let (secret, _, recovery) = totp_on(&gw, &s.access).await;
    gw.clock.advance(REAUTH_SECS + 31);
    // The password alone is not enough, nor the code alone.
    let r = reauth(&gw, json!({ "password": PASSWORD }), &s.access).await;
    assert_error(&r, 400, "validation_failed");
    assert!(r.json()["fields"]["code"].is_array(), "{r:?}");
    let code = code_at(&secret, gw.clock.now());
    let r = reauth(&gw, json!({ "code": code }), &s.access).await;
    assert_error(&r, 400, "validation_failed");
    assert!(r.json()["fields"]["password"].is_array(), "{r:?}");
    let r = reauth(
        &gw,
        json!({ "password": PASSWORD, "code": "000000x" }),
        &s.access,
    )
    .await;
    assert_error(&r, 400, "invalid_code");
    // Wrong password with the right code: the code is not spent.
    let r = reauth(
        &gw,
        json!({ "password": "nope nope nope", "code": code }),
        &s.access,
    )
    .await;
    assert_error(&r, 401, "invalid_credentials");
    let r = reauth(
        &gw,
        json!({ "password": PASSWORD, "code": code }),
        &s.access,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let access = r.json()["access_token"].as_str().unwrap().to_string();
    // The code worked once.
    let r = reauth(&gw, json!({ "password": PASSWORD, "code": code }), &access).await;
    assert_error(&r, 400, "invalid_code");
    // A recovery code works, once.
    let body = json!({ "password": PASSWORD, "code": recovery[0] });
    assert_eq!(reauth(&gw, body.clone(), &access).await.status, 200);
    assert_error(&reauth(&gw, body, &access).await, 400, "invalid_code");
    let r = create_key(&gw, &access).await;
    assert_eq!(r.status, 201, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_reauth_passwords_count_toward_the_lockout_even_in_parallel() {
    let gw = gateway("max_failed_logins = 3\n").await;
    let s = gw.signup("guessed@example.com").await;
    gw.clock.advance(REAUTH_SECS + 1);
    // Ten wrong guesses at once: at most three are ever checked.
    let barrier = Arc::new(Barrier::new(10));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..10 {
        let (addr, access, barrier) = (gw.addr, s.access.clone(), barrier.clone());
        set.spawn(async move {
            let body = json!({ "password": format!("wrong guess {i}") });
            barrier.wait().await;
            http::send_json(addr, "POST", "/auth/reauth", Some(&body), Some(&access))
                .await
                .status
        });
    }
    let mut statuses = Vec::new();
    while let Some(r) = set.join_next().await {
        statuses.push(r.unwrap());
    }
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429) && (1..=3).contains(&checked),
        "{statuses:?}"
    );
    // Finish spending the budget: the account locks.
    for _ in checked..3 {
        let r = reauth(&gw, json!({ "password": "still wrong" }), &s.access).await;
        assert!(r.status == 401 || r.status == 429, "{r:?}");
    }
    // Locked: the right password is refused here and at login alike.
    let r = reauth(&gw, json!({ "password": PASSWORD }), &s.access).await;
    assert_error(&r, 429, "too_many_requests");
    assert!(r.header("retry-after").is_some());
    let r = gw.login("guessed@example.com", PASSWORD).await;
    assert_error(&r, 429, "too_many_requests");
    // The old token still cannot enrol: no way around the lock.
    assert_error(&enroll(&gw, &s.access).await, 403, "reauth_required");
}

/// Waits for a mail to `to` whose subject contains `subject`.
async fn wait_mail(gw: &TestGateway, to: &str, subject: &str) -> Mail {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found = gw.smtp().messages().into_iter().find(|m| {
            m.to.iter().any(|t| t == to) && m.subject().is_some_and(|s| s.contains(subject))
        });
        if let Some(m) = found {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "no mail {subject:?} to {to}; got {:?}",
            gw.smtp()
                .messages()
                .iter()
                .map(Mail::subject)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The notice names the event and holds none of `secrets`, no link with a
/// token, and no token-shaped string.
#[track_caller]
fn assert_notice(m: &Mail, names: &str, secrets: &[&str]) {
    let body = m.body_text();
    assert!(body.contains(names), "{names:?} not in {body}");
    for s in secrets {
        assert!(
            !s.is_empty() && !m.data.contains(s),
            "a secret in the mail: {}",
            m.data
        );
    }
    assert!(!m.data.contains("token="), "{}", m.data);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_security_notice_arrives_and_names_its_event_without_a_secret() {
    let gw = gateway("").await;
    let to = "owner@example.com";
    let s = gw.signup(to).await;
    let (secret, secret_b32, recovery) = totp_on(&gw, &s.access).await;
    let m = wait_mail(&gw, to, "Two-step verification was turned on").await;
    let mut secrets: Vec<&str> = vec![&secret_b32, &s.access, &s.refresh];
    secrets.extend(recovery.iter().map(String::as_str));
    assert_notice(&m, "turned on", &secrets);

    let r = create_key(&gw, &s.access).await;
    assert_eq!(r.status, 201, "{r:?}");
    let key = r.json()["key"].as_str().unwrap().to_string();
    let m = wait_mail(&gw, to, "An API key was created").await;
    assert_notice(&m, "API key", &[&key, &s.access]);

    gw.clock.advance(31);
    let code = code_at(&secret, gw.clock.now());
    let body = json!({ "password": PASSWORD, "code": code });
    let r = send(&gw, "DELETE", "/auth/mfa/totp", body, &s.access).await;
    assert_eq!(r.status, 204, "{r:?}");
    let m = wait_mail(&gw, to, "Two-step verification was turned off").await;
    assert_notice(&m, "turned off", &[&code, &secret_b32, PASSWORD]);

    let new_pw = "a brand new passphrase 42";
    let body = json!({ "current_password": PASSWORD, "new_password": new_pw, "new_password_confirm": new_pw });
    let r = send(&gw, "POST", "/auth/password/change", body, &s.access).await;
    assert_eq!(r.status, 204, "{r:?}");
    let m = wait_mail(&gw, to, "Your password was changed").await;
    assert_notice(&m, "password", &[new_pw, PASSWORD, &s.access]);

    // A reset: the link mail, then a notice of its own once it is done.
    let r = gw
        .post("/auth/password/reset", json!({ "email": to }), None)
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    let link = wait_mail(&gw, to, "Reset your password").await;
    let token = link
        .token_from_link("/auth/password/reset")
        .expect("a reset link");
    let reset_pw = "yet another passphrase 7";
    let body =
        json!({ "token": token, "new_password": reset_pw, "new_password_confirm": reset_pw });
    let r = gw.post("/auth/password/reset/confirm", body, None).await;
    assert_eq!(r.status, 204, "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let notices = loop {
        let n: Vec<Mail> = gw
            .smtp()
            .messages()
            .into_iter()
            .filter(|m| {
                m.subject()
                    .is_some_and(|s| s.contains("Your password was changed"))
            })
            .collect();
        if n.len() >= 2 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(notices.len(), 2, "a notice after the reset");
    assert_notice(&notices[1], "password", &[&token, reset_pw]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_portal_asks_an_old_session_to_confirm_before_adding_a_passkey() {
    let mut b = crate::browser::builder();
    b.with_smtp = true;
    let gw = TestGateway::start_with(b).await;
    let r = gw.register("portal-reauth@example.com", PASSWORD).await;
    assert_eq!(r.status, 201);
    let cookie = portal_login(&gw, "portal-reauth@example.com", "/auth/ui/sessions").await;
    let origin = format!("http://{}", gw.addr);
    let start = |cookie: String| {
        let origin = origin.clone();
        let gw = &gw;
        async move {
            let (csrf_cookie, token) = csrf(gw, "/auth/ui/login").await;
            let cookies = format!("{csrf_cookie}; __Host-portcullis={cookie}");
            http::request(
                gw.addr,
                "POST",
                "/auth/ui/passkeys/register/start",
                &[
                    ("content-type", "application/json"),
                    ("cookie", &cookies),
                    ("origin", &origin),
                    ("x-csrf-token", &token),
                ],
                Some(b"{}"),
            )
            .await
            .unwrap()
        }
    };
    // Right after sign-in: the ceremony starts.
    let r = start(cookie.clone()).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.json()["ceremony"].is_string());
    let page = crate::browser::browse(&gw, "/auth/ui/sessions", &cookie).await;
    assert!(page.text().contains("id=\"passkey-register\""), "{page:?}");

    // Past reauth_secs: refused, and the page asks to confirm instead.
    gw.clock.advance(REAUTH_SECS + 1);
    let r = start(cookie.clone()).await;
    assert_error(&r, 403, "reauth_required");
    let page = crate::browser::browse(&gw, "/auth/ui/sessions", &cookie).await;
    assert_eq!(page.status, 200, "{page:?}");
    let text = page.text();
    assert!(text.contains("id=\"reauth-needed\""), "{text}");
    assert!(!text.contains("id=\"passkey-register\""), "{text}");
    let page = crate::browser::browse(&gw, "/auth/ui/reauth", &cookie).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.text().contains("Confirm it is you"));

    // A wrong password: the form again, with the API's generic message.
    let r = post_form(
        &gw,
        "/auth/ui/reauth",
        &[("password", "not it at all")],
        Some(&cookie),
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.text().contains("The email or password is incorrect."));
    // The right one: the session's new cookie, and back to the page.
    let r = post_form(
        &gw,
        "/auth/ui/reauth",
        &[("password", PASSWORD)],
        Some(&cookie),
    )
    .await;
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some("/auth/ui/sessions?notice=reauthed")
    );
    let fresh = set_cookie(&r, "__Host-portcullis").unwrap().to_string();
    assert_ne!(fresh, cookie);
    let r = start(fresh.clone()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let page = crate::browser::browse(&gw, "/auth/ui/sessions", &fresh).await;
    assert!(page.text().contains("id=\"passkey-register\""), "{page:?}");
    // Without a session the form sends to the sign-in page.
    let r = post_form(&gw, "/auth/ui/reauth", &[("password", PASSWORD)], None).await;
    assert_eq!(r.status, 303, "{r:?}");
    assert!(r.header("location").unwrap().starts_with("/auth/ui/login"));
}

#[tokio::test(flavor = "multi_thread")]
async fn reauth_secs_follows_the_setting() {
    let gw = gateway("\n[accounts]\nreauth_secs = 60\n").await;
    let s = gw.signup("short@example.com").await;
    gw.clock.advance(60);
    assert_eq!(create_key(&gw, &s.access).await.status, 201);
    gw.clock.advance(1);
    assert_error(&create_key(&gw, &s.access).await, 403, "reauth_required");
    assert_error(&enroll(&gw, &s.access).await, 403, "reauth_required");
}
