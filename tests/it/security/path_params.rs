//! Path parameters (`;…`) cannot move a request out of its role route.

use super::*;

/// The default routes (`/admin` needs role admin, `/` any user) plus a
/// `/legacy` admin route and a `/jsp` public route that opt in to stripping.
async fn gateway() -> TestGateway {
    let mut routes = DEFAULT_ROUTES.to_string();
    routes.push_str(&route(
        "/legacy",
        "required",
        "roles = [\"admin\"]\nstrip_path_params = true",
    ));
    routes.push_str(&route("/jsp", "public", "strip_path_params = true"));
    TestGateway::start_with(Builder {
        routes,
        ..Default::default()
    })
    .await
}

const SMUGGLED: [&str; 9] = [
    "/admin;x/users",
    "/admin;/users",
    "/admin;jsessionid=1/users",
    "/admin;x",
    "/public;x/../admin/users",
    "/x;y/../admin/users",
    // Encoded: a backend that decodes before splitting reads a `;` here.
    "/admin%3bx/users",
    "/admin%3B/users",
    "/public/a%3Bb",
];

/// Path-parameter confusion between gateway and backend (CWE-436
/// interpretation conflict; CVE-2020-1957 Shiro, CVE-2016-6802 class):
/// `/admin;x/users` must not be matched as `/` and forwarded to an upstream
/// that strips `;x` and serves `/admin/users`. Every spelling is 400
/// `bad_request` on routes that did not opt in, whoever asks, over HTTP/1.1
/// and HTTP/2, and nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_parameters_cannot_leave_a_role_route() {
    let gw = gateway().await;
    let plain = gw.signup("plain@example.com").await;
    gw.admin_add_user("root@example.com", &["admin"]).await;
    let admin = gw.signin("root@example.com", PASSWORD).await;
    let (plain_auth, admin_auth) = (bearer(&plain.access), bearer(&admin.access));

    for path in SMUGGLED {
        for headers in [
            &[][..],
            &[("Authorization", plain_auth.as_str())][..],
            &[("Authorization", admin_auth.as_str())][..],
        ] {
            let r = get_with(&gw, path, headers).await;
            assert_error(&r, 400, "bad_request");
        }
        let (status, _, body) = h2_request(&gw, path, &[("authorization", &plain_auth)]).await;
        assert_eq!(status, 400, "h2 {path}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "bad_request", "h2 {path}");
    }
    // The gateway's own endpoints too.
    let r = post_with(gw.addr, "/auth;x/login", &json!({}), &[]).await;
    assert_error(&r, 400, "bad_request");
    assert_eq!(
        gw.upstream.hits(),
        0,
        "a smuggled path reached the upstream"
    );

    // Without parameters the same requests behave as before.
    let r = get_with(&gw, "/admin/users", &[("Authorization", &plain_auth)]).await;
    assert_error(&r, 403, "forbidden");
    let r = get_with(&gw, "/admin/users", &[("Authorization", &admin_auth)]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["path"], "/admin/users");
}

/// Opt-in stripping (ASVS 4.0.3 V4.1.3 least privilege; the CWE-436 fix
/// for servlet backends that need `;jsessionid`): the route is matched on
/// the stripped path, its checks apply, and the upstream receives exactly
/// the stripped path that was checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opted_in_routes_strip_path_parameters_before_matching() {
    let gw = gateway().await;
    let plain = gw.signup("plain@example.com").await;
    gw.admin_add_user("root@example.com", &["admin"]).await;
    let admin = gw.signin("root@example.com", PASSWORD).await;

    // Role check on the stripped path: no token 401, no role 403.
    let r = get_with(&gw, "/legacy;jsessionid=1/x", &[]).await;
    assert_error(&r, 401, "unauthorized");
    let auth = bearer(&plain.access);
    let r = get_with(&gw, "/legacy;jsessionid=1/x", &[("Authorization", &auth)]).await;
    assert_error(&r, 403, "forbidden");
    assert_eq!(gw.upstream.hits(), 0);

    let auth = bearer(&admin.access);
    for (raw, want) in [
        ("/legacy;jsessionid=1/x?q=1", "/legacy/x?q=1"),
        ("/legacy;/x;v=2/y", "/legacy/x/y"),
        ("/legacy/a;b/../c", "/legacy/c"),
    ] {
        let r = get_with(&gw, raw, &[("Authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{raw}: {r:?}");
        assert_eq!(r.json()["path"], want, "{raw}");
    }
    let r = get_with(&gw, "/jsp;jsessionid=ABC/page.jsp", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["path"], "/jsp/page.jsp");
    let (status, _, body) = h2_request(&gw, "/jsp;jsessionid=ABC/h2", &[]).await;
    assert_eq!(status, 200);
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["path"], "/jsp/h2");

    // Stripping never climbs out of the route, and an encoded ';' is
    // refused even where raw parameters are stripped.
    for path in ["/jsp/..;x/admin", "/jsp%3bx/page", "/jsp/a%3Bb"] {
        assert_error(&get_with(&gw, path, &[]).await, 400, "bad_request");
    }
    // A parameter that lands the path on a route without the opt-in is 400.
    assert_error(
        &get_with(&gw, "/jsp;x/../admin/users", &[("Authorization", &auth)]).await,
        400,
        "bad_request",
    );
    assert_eq!(gw.upstream.hits(), 5);
}
