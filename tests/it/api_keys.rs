//! Issue 13, API keys: created once-shown, checked at the edge by scope
//! and the owner's roles, with the owner's identity upstream; and the
//! hostile cases (wrong, truncated or case-changed prefix, another user's
//! key, expiry, a disabled owner, a key sent both ways).

use serde_json::{json, Value};

use crate::common::http::{self, Response};
use crate::common::{assert_error, echoed, metric, Builder, TestGateway};

pub const KEY_ROUTES: &str = r#"
[[routes]]
prefix = "/"
upstream = "{UP}"
auth = "required"

[[routes]]
prefix = "/read"
upstream = "{UP}"
auth = "required"
scopes = ["read", "all"]

[[routes]]
prefix = "/write"
upstream = "{UP}"
auth = "required"
scopes = ["write"]

[[routes]]
prefix = "/admin"
upstream = "{UP}"
auth = "required"
roles = ["admin"]
scopes = ["read"]

[[routes]]
prefix = "/stepup"
upstream = "{UP}"
auth = "required"
mfa = true
scopes = ["read"]

[[routes]]
prefix = "/maybe"
upstream = "{UP}"
auth = "optional"
scopes = ["read"]
"#;

async fn gateway() -> TestGateway {
    TestGateway::start_with(Builder {
        extra: "[throttle]\nauth_per_minute = 0\n".into(),
        routes: KEY_ROUTES.into(),
        ..Default::default()
    })
    .await
}

/// Create a key; the whole answer.
pub async fn create(gw: &TestGateway, access: &str, body: Value) -> Value {
    let r = gw.post("/auth/api-keys", body, Some(access)).await;
    assert_eq!(r.status, 201, "{r:?}");
    r.json()
}

pub async fn with_key_header(gw: &TestGateway, path: &str, key: &str) -> Response {
    http::request(gw.addr, "GET", path, &[("X-API-Key", key)], None)
        .await
        .unwrap()
}

pub async fn with_headers(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Response {
    http::request(gw.addr, "GET", path, headers, None)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_shown_once_and_passes_as_its_owner() {
    let gw = gateway().await;
    let s = gw.signup("owner@example.com").await;
    let v = create(
        &gw,
        &s.access,
        json!({ "name": "ci deploy", "scopes": ["read", "read"], "expires_in_secs": 3600 }),
    )
    .await;
    let key = v["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("pk_") && key.len() == 46, "{key}");
    assert_eq!(v["name"], "ci deploy");
    assert_eq!(v["scopes"], json!(["read"]));
    assert!(v["expires_at"].is_string() && v["created_at"].is_string());
    let id = v["id"].as_str().unwrap().to_string();

    // As Bearer and as X-API-Key, on a route that lists its scope.
    let spoof = [
        ("Authorization", &format!("Bearer {key}")[..]),
        ("X-User-Auth-Method", "jwt"),
        ("X-User_Api-Key-Id", "forged"),
    ];
    for r in [
        with_headers(&gw, "/read/a", &spoof).await,
        with_key_header(&gw, "/read/a", &key).await,
    ] {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(echoed(&r, "x-user-id"), [s.user["id"].as_str().unwrap()]);
        assert_eq!(echoed(&r, "x-user-email"), ["owner@example.com"]);
        assert_eq!(echoed(&r, "x-user-roles"), [""]);
        assert_eq!(echoed(&r, "x-user-auth-method"), ["api_key"]);
        assert_eq!(echoed(&r, "x-user-api-key-id"), [id.as_str()]);
        assert!(
            echoed(&r, "x-api-key").is_empty(),
            "the key never goes upstream"
        );
        assert!(echoed(&r, "authorization").is_empty());
    }
    // A token request says so.
    let r = gw.get("/read/a", Some(&s.access)).await;
    assert_eq!(echoed(&r, "x-user-auth-method"), ["jwt"]);
    assert!(echoed(&r, "x-user-api-key-id").is_empty());

    // The list: no key, no hash; last use known at once on this gateway.
    let r = gw.get("/auth/api-keys", Some(&s.access)).await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(!text.contains(&key) && !text.contains(&key[3..]));
    let list = r.json()["api_keys"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert!(list[0]["last_used_at"].is_string(), "{list:?}");
    assert!(list[0].get("key").is_none() && list[0].get("hash").is_none());

    // Keys never open the gateway's own API.
    assert_error(&gw.get("/auth/me", Some(&key)).await, 401, "unauthorized");
    assert_error(
        &gw.get("/auth/api-keys", Some(&key)).await,
        401,
        "unauthorized",
    );

    // Survives a restart (the index is rebuilt from the store), and the
    // use was written at shutdown.
    let mut gw = gw;
    gw.restart();
    assert_eq!(with_key_header(&gw, "/read/b", &key).await.status, 200);
    let r = gw.get("/auth/api-keys", Some(&s.access)).await;
    assert!(r.json()["api_keys"][0]["last_used_at"].is_string());

    // Deleted: fails at once; deleting again is 404.
    let r = http::send_json(
        gw.addr,
        "DELETE",
        &format!("/auth/api-keys/{id}"),
        None,
        Some(&s.access),
    )
    .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_error(
        &with_key_header(&gw, "/read/a", &key).await,
        401,
        "unauthorized",
    );
    let r = http::send_json(
        gw.addr,
        "DELETE",
        &format!("/auth/api-keys/{id}"),
        None,
        Some(&s.access),
    )
    .await;
    assert_error(&r, 404, "not_found");
    assert!(
        gw.get("/auth/api-keys", Some(&s.access)).await.json()["api_keys"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_roles_and_step_up_decide_where_a_key_passes() {
    let gw = gateway().await;
    let s = gw.signup("scoped@example.com").await;
    let key = create(&gw, &s.access, json!({ "name": "r", "scopes": ["read"] })).await["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(with_key_header(&gw, "/read/x", &key).await.status, 200);
    // No matching scope; a route listing no scopes refuses every key.
    assert_error(
        &with_key_header(&gw, "/write/x", &key).await,
        403,
        "forbidden",
    );
    assert_error(
        &with_key_header(&gw, "/other", &key).await,
        403,
        "forbidden",
    );
    // The owner's roles still apply.
    assert_error(
        &with_key_header(&gw, "/admin/x", &key).await,
        403,
        "forbidden",
    );
    // A key is one factor: step-up routes refuse it.
    assert_error(
        &with_key_header(&gw, "/stepup/x", &key).await,
        403,
        "mfa_required",
    );
    // An optional route: with a valid key, identity; with a bad one, none.
    let r = with_key_header(&gw, "/maybe/x", &key).await;
    assert_eq!(echoed(&r, "x-user-auth-method"), ["api_key"]);
    let r = with_key_header(&gw, "/maybe/x", "pk_nope").await;
    assert_eq!(r.status, 200);
    assert!(echoed(&r, "x-user-id").is_empty());

    // An admin's key passes /admin once the role is granted.
    let admin = gw.admin_add_user("boss@example.com", &["admin"]).await;
    let boss = gw.signin("boss@example.com", crate::common::PASSWORD).await;
    let bkey = create(
        &gw,
        &boss.access,
        json!({ "name": "b", "scopes": ["read"] }),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let r = with_key_header(&gw, "/admin/x", &bkey).await;
    assert_eq!(r.status, 200);
    assert_eq!(echoed(&r, "x-user-roles"), ["admin"]);
    assert_eq!(echoed(&r, "x-user-id"), [admin["id"].as_str().unwrap()]);
    // Removing the role takes effect on the key at once.
    let token = std::fs::read_to_string(gw.data_dir().join("admin.token")).unwrap();
    let r = http::request(
        gw.admin_addr,
        "POST",
        "/admin/users",
        &[
            ("authorization", &format!("Bearer {}", token.trim())),
            ("content-type", "application/json"),
        ],
        Some(
            json!({"op": "role_remove", "email": "boss@example.com", "role": "admin"})
                .to_string()
                .as_bytes(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_error(
        &with_key_header(&gw, "/admin/x", &bkey).await,
        403,
        "forbidden",
    );
    assert_eq!(with_key_header(&gw, "/read/x", &bkey).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_keys_are_refused() {
    let gw = gateway().await;
    let a = gw.signup("alice@example.com").await;
    let b = gw.signup("bob@example.com").await;
    let v = create(&gw, &a.access, json!({ "name": "a", "scopes": ["read"] })).await;
    let key = v["key"].as_str().unwrap().to_string();
    let id = v["id"].as_str().unwrap().to_string();
    let body = &key[3..];
    for bad in [
        format!("sk_{body}"),
        format!("PK_{body}"),
        format!("Pk_{body}"),
        body.to_string(),
        key[..key.len() - 1].to_string(),
        key[..10].to_string(),
        format!("{key}A"),
        format!("pk_{}", body.to_uppercase()),
        String::new(),
    ] {
        assert_error(
            &with_key_header(&gw, "/read/x", &bad).await,
            401,
            "unauthorized",
        );
        if !bad.is_empty() {
            let r = with_headers(
                &gw,
                "/read/x",
                &[("Authorization", &format!("Bearer {bad}"))],
            )
            .await;
            assert_error(&r, 401, "unauthorized");
        }
    }
    // Sent both ways, or twice: 400, even when both are the same good key.
    let r = with_headers(
        &gw,
        "/read/x",
        &[
            ("X-API-Key", &key),
            ("Authorization", &format!("Bearer {key}")),
        ],
    )
    .await;
    assert_error(&r, 400, "bad_request");
    let r = with_headers(&gw, "/read/x", &[("X-API-Key", &key), ("X-API-Key", &key)]).await;
    assert_error(&r, 400, "bad_request");
    let r = with_headers(
        &gw,
        "/read/x",
        &[
            ("X-API-Key", &key),
            ("Authorization", &format!("Bearer {}", a.access)),
        ],
    )
    .await;
    assert_error(&r, 400, "bad_request");
    // Another user cannot see or delete it.
    let r = http::send_json(
        gw.addr,
        "DELETE",
        &format!("/auth/api-keys/{id}"),
        None,
        Some(&b.access),
    )
    .await;
    assert_error(&r, 404, "not_found");
    assert!(
        gw.get("/auth/api-keys", Some(&b.access)).await.json()["api_keys"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(with_key_header(&gw, "/read/x", &key).await.status, 200);
    for bad_id in ["not-a-uuid", "00000000-0000-0000-0000-000000000000"] {
        let r = http::send_json(
            gw.addr,
            "DELETE",
            &format!("/auth/api-keys/{bad_id}"),
            None,
            Some(&a.access),
        )
        .await;
        assert_error(&r, 404, "not_found");
    }

    // Expired (the clock moves): refused at once, with its own metric.
    let short = create(
        &gw,
        &a.access,
        json!({ "name": "s", "scopes": ["read"], "expires_in_secs": 60 }),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(with_key_header(&gw, "/read/x", &short).await.status, 200);
    gw.clock.advance(60);
    assert_error(
        &with_key_header(&gw, "/read/x", &short).await,
        401,
        "unauthorized",
    );
    assert_eq!(with_key_header(&gw, "/read/x", &key).await.status, 200);

    // The owner disabled: every key fails at once.
    let token = std::fs::read_to_string(gw.data_dir().join("admin.token")).unwrap();
    let r = http::request(
        gw.admin_addr,
        "POST",
        "/admin/users",
        &[
            ("authorization", &format!("Bearer {}", token.trim())),
            ("content-type", "application/json"),
        ],
        Some(
            json!({"op": "disable", "email": "alice@example.com"})
                .to_string()
                .as_bytes(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_error(
        &with_key_header(&gw, "/read/x", &key).await,
        401,
        "unauthorized",
    );

    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            "portcullis_token_checks_total{result=\"api_key_valid\"}"
        ) >= 3.0
    );
    assert!(
        metric(
            &m,
            "portcullis_token_checks_total{result=\"api_key_invalid\"}"
        ) >= 10.0
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_token_checks_total{result=\"api_key_expired\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_rate_limits_and_the_admin_cli() {
    let gw = gateway().await;
    let s = gw.signup("limits@example.com").await;
    for (body, field) in [
        (json!({ "scopes": ["read"] }), "name"),
        (json!({ "name": "", "scopes": ["read"] }), "name"),
        (json!({ "name": "x" }), "scopes"),
        (json!({ "name": "x", "scopes": [] }), "scopes"),
        (json!({ "name": "x", "scopes": ["a b"] }), "scopes"),
        (json!({ "name": "x", "scopes": "read" }), "scopes"),
        (
            json!({ "name": "x", "scopes": ["read"], "expires_in_secs": 0 }),
            "expires_in_secs",
        ),
        (
            json!({ "name": "x", "scopes": ["read"], "expires_in_secs": -5 }),
            "expires_in_secs",
        ),
        (
            json!({ "name": "x", "scopes": ["read"], "rate_per_minute": "9" }),
            "rate_per_minute",
        ),
    ] {
        let r = gw
            .post("/auth/api-keys", body.clone(), Some(&s.access))
            .await;
        assert_error(&r, 400, "validation_failed");
        assert!(r.json()["fields"][field].is_array(), "{body}: {r:?}");
    }
    assert_error(
        &gw.post(
            "/auth/api-keys",
            json!({ "name": "x", "scopes": ["read"] }),
            None,
        )
        .await,
        401,
        "unauthorized",
    );

    // A per-key rate limit, on the same limiter as routes.
    let v = create(
        &gw,
        &s.access,
        json!({ "name": "slow", "scopes": ["all"], "rate_per_minute": 2 }),
    )
    .await;
    let key = v["key"].as_str().unwrap().to_string();
    assert_eq!(v["rate_per_minute"], 2);
    assert_eq!(with_key_header(&gw, "/read/1", &key).await.status, 200);
    assert_eq!(with_key_header(&gw, "/read/2", &key).await.status, 200);
    let r = with_key_header(&gw, "/read/3", &key).await;
    assert_error(&r, 429, "too_many_requests");
    assert!(r.header("retry-after").is_some());
    gw.clock.advance(60);
    assert_eq!(with_key_header(&gw, "/read/4", &key).await.status, 200);

    // The admin API (what `portcullis user keys …` calls when the gateway
    // holds the database) lists any user's keys and revokes one.
    let token = std::fs::read_to_string(gw.data_dir().join("admin.token")).unwrap();
    let admin = |body: Value| {
        let token = token.clone();
        async move {
            http::request(
                gw.admin_addr,
                "POST",
                "/admin/users",
                &[
                    ("authorization", &format!("Bearer {}", token.trim())),
                    ("content-type", "application/json"),
                ],
                Some(body.to_string().as_bytes()),
            )
            .await
            .unwrap()
        }
    };
    let r = admin(json!({"op": "key_list", "email": "limits@example.com"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let keys = r.json()["api_keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 1);
    assert!(!r.text().contains(&key));
    let id = keys[0]["id"].as_str().unwrap().to_string();
    let r = admin(json!({"op": "key_revoke", "email": "limits@example.com", "id": id})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_error(
        &with_key_header(&gw, "/read/5", &key).await,
        401,
        "unauthorized",
    );
    let r = admin(json!({"op": "key_revoke", "email": "limits@example.com", "id": id})).await;
    assert_eq!(r.status, 400, "{r:?}");
}
