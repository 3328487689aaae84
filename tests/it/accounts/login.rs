//! Sign-in: tokens and user, one argon2 verify per attempt known or not,
//! byte-identical failures.

use super::*;

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
