//! Password change: this session stays, the others end.

use super::*;

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
