//! Logout: the access token dies (across a restart too), with a bearer or all
//! sessions, and the blacklist is swept.

use super::*;

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
