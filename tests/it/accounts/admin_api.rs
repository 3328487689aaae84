//! The admin API: its token, and disabling a user kills every token.

use super::*;

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
