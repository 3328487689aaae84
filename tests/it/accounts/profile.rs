//! The profile (`/auth/me`): read and update.

use super::*;

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
