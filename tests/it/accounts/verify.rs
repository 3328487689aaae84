//! Verify: token introspection and forward-auth.

use super::*;

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
