//! Issue 20: revocations that must not end before the tokens they cover.
//! A revocation is kept by the longest token lifetime plus leeway ever in
//! force on the store (a durable watermark), so neither a reload nor a
//! restart with a shorter lifetime, nor a bearer-only logout whose session
//! had already expired, lets a revoked token back in after a sweep. (The
//! same across gateways on PostgreSQL: `postgres.rs`; the sweep's reach
//! over many records: the store conformance suite, `store.rs`.)

use portcullis::clock::Clock;
use serde_json::{json, Value};

use crate::common::{http, Builder, Session, TestGateway};

const LONG: &str = "[tokens]\naccess_ttl_secs = 3600\n\n[throttle]\nauth_per_minute = 0\n";

/// `text` with `from` replaced by `to`, which must occur.
#[track_caller]
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in the config:\n{text}");
    text.replacen(from, to, 1)
}

async fn admin_disable(gw: &TestGateway, email: &str) {
    let token = std::fs::read_to_string(gw.data_dir().join("admin.token")).unwrap();
    let body = json!({ "op": "disable", "email": email }).to_string();
    let r = http::request(
        gw.admin_addr,
        "POST",
        "/admin/users",
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Bearer {}", token.trim())),
        ],
        Some(body.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "disable {email}: {}", r.text());
}

async fn status(gw: &TestGateway, s: &Session) -> u16 {
    gw.get("/", Some(&s.access)).await.status
}

/// Four users, each revoked a different way (every kind of entry: per-user
/// cutoff with session entries, a session entry alone, a token id with its
/// session, a cutoff from logout-all), plus one never revoked.
struct Revoked {
    control: Session,
    revoked: Vec<(&'static str, Session)>,
}

async fn sign_up_all(gw: &TestGateway) -> (Session, [Session; 4]) {
    let control = gw.signup("control@example.com").await;
    let users = [
        gw.signup("disabled@example.com").await,
        gw.signup("ended@example.com").await,
        gw.signup("out@example.com").await,
        gw.signup("all@example.com").await,
    ];
    (control, users)
}

async fn revoke_all(gw: &TestGateway, control: Session, users: [Session; 4]) -> Revoked {
    let [disabled, ended, out, all] = users;
    admin_disable(gw, "disabled@example.com").await;
    let r = gw
        .post(
            "/auth/logout",
            json!({ "refresh_token": ended.refresh }),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let r = gw.post("/auth/logout", json!({}), Some(&out.access)).await;
    assert_eq!(r.status, 204);
    let r = gw
        .post("/auth/logout-all", json!({}), Some(&all.access))
        .await;
    assert_eq!(r.status, 204);
    let revoked = vec![
        ("disabled user", disabled),
        ("ended session", ended),
        ("logged-out token", out),
        ("logout-all", all),
    ];
    for (what, s) in &revoked {
        assert_eq!(status(gw, s).await, 401, "{what}: revoked at once");
    }
    Revoked { control, revoked }
}

/// Every revoked token still fails, the never-revoked one (signed under
/// the same long lifetime, so not expired) still passes.
async fn assert_still_revoked(gw: &TestGateway, r: &Revoked, after: &str) {
    assert_eq!(
        status(gw, &r.control).await,
        200,
        "{after}: the control token is still good, so the others fail for their revocation"
    );
    for (what, s) in &r.revoked {
        assert_eq!(status(gw, s).await, 401, "{what}: revived {after}");
    }
}

/// Hole 7: tokens signed for 3600 s, then the lifetime reloaded to 5 s and
/// the users revoked. Two sweeps later (120 s: long past 5 s + leeway, far
/// from 3600 s) every revoked token still fails, and again after a restart
/// on the same data dir with the short lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_a_shorter_lifetime_revives_no_revoked_token() {
    let mut gw = TestGateway::start_with(Builder {
        extra: LONG.into(),
        ..Default::default()
    })
    .await;
    let (control, users) = sign_up_all(&gw).await;
    let short = edit(&gw.toml, "access_ttl_secs = 3600", "access_ttl_secs = 5");
    gw.write_toml(&short);
    let r = gw.admin_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let fresh = gw
        .signin("control@example.com", crate::common::PASSWORD)
        .await;
    let exp = claims(&fresh.access)["exp"].as_i64().unwrap();
    let iat = claims(&fresh.access)["iat"].as_i64().unwrap();
    assert_eq!(exp - iat, 5, "the reload is in force");
    let revoked = revoke_all(&gw, control, users).await;
    gw.sweep().await;
    gw.sweep().await;
    assert_still_revoked(&gw, &revoked, "after two sweeps").await;
    gw.restart();
    assert_still_revoked(&gw, &revoked, "after a restart").await;
    gw.sweep().await;
    gw.sweep().await;
    assert_still_revoked(&gw, &revoked, "after a restart and two sweeps").await;
}

/// Hole 7 across a restart: tokens signed under a 3600-s lifetime, the
/// gateway restarted on the same data dir with 5 s, then the users
/// revoked: two sweeps later (and after another restart) still revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_shorter_lifetime_revives_no_revoked_token() {
    let mut gw = TestGateway::start_with(Builder {
        extra: LONG.into(),
        ..Default::default()
    })
    .await;
    let (control, users) = sign_up_all(&gw).await;
    gw.stop();
    let short = edit(&gw.toml, "access_ttl_secs = 3600", "access_ttl_secs = 5");
    gw.write_toml(&short);
    gw.restart();
    let revoked = revoke_all(&gw, control, users).await;
    gw.sweep().await;
    gw.sweep().await;
    assert_still_revoked(&gw, &revoked, "after two sweeps").await;
    gw.restart();
    gw.sweep().await;
    assert_still_revoked(&gw, &revoked, "after another restart and a sweep").await;
}

/// Hole 8: a logout that presents only the bearer token, once its session
/// has expired (and been swept), revokes the token id; the token is
/// accepted until `exp + leeway`, so the entry must stay at least that
/// long, not only until `exp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_only_logout_on_an_expired_session_holds_through_the_leeway() {
    let gw = TestGateway::start_with(Builder {
        extra: "[tokens]\naccess_ttl_secs = 300\nleeway_secs = 200\nrefresh_ttl_secs = 100\n\n[throttle]\nauth_per_minute = 0\n".into(),
        ..Default::default()
    })
    .await;
    let s = gw.signup("late@example.com").await;
    let control = gw.signin("late@example.com", crate::common::PASSWORD).await;
    let exp = claims(&s.access)["exp"].as_i64().unwrap();
    // 120 s on: both sessions have expired and are swept; the tokens are good.
    gw.sweep().await;
    gw.sweep().await;
    let r = gw
        .post("/auth/refresh", json!({ "refresh_token": s.refresh }), None)
        .await;
    assert_eq!(r.status, 401, "the session has expired");
    assert_eq!(status(&gw, &s).await, 200);
    let r = gw.post("/auth/logout", json!({}), Some(&s.access)).await;
    assert_eq!(r.status, 204);
    assert_eq!(status(&gw, &s).await, 401);
    // Sweep past exp (at most 60 s beyond it), inside exp + leeway.
    while gw.clock.now() < exp {
        gw.sweep().await;
        assert_eq!(status(&gw, &s).await, 401, "logged out");
    }
    assert!(gw.clock.now() < exp + 200);
    assert_eq!(
        status(&gw, &control).await,
        200,
        "within the leeway a token of the same age is still accepted"
    );
    gw.sweep().await;
    assert!(gw.clock.now() < exp + 200);
    assert_eq!(status(&gw, &control).await, 200);
    assert_eq!(
        status(&gw, &s).await,
        401,
        "the logged-out token stays out through the leeway"
    );
}

/// The claims of a JWT, unverified (the test only reads its times).
fn claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}
