//! The caller's bearer token reaches only upstreams that need it.

use super::*;

/// Credential leak to an upstream that never asked for it (ASVS 4.0.3
/// V3.5.3 / V8.3.1; CWE-522, CWE-200): a user's access token sent along to a
/// public route would let that upstream (or whoever owns it) replay the
/// token on every protected route. Public routes drop `Authorization` by
/// default; required and optional routes keep it; both defaults can be
/// overridden per route with `forward_authorization`. Over HTTP/1.1 and
/// HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_reach_only_upstreams_that_asked_for_them() {
    let mut routes = DEFAULT_ROUTES.to_string();
    routes.push_str(&route(
        "/open-fwd",
        "public",
        "forward_authorization = true",
    ));
    routes.push_str(&route(
        "/app-nofwd",
        "required",
        "forward_authorization = false",
    ));
    let gw = TestGateway::start_with(Builder {
        routes,
        ..Default::default()
    })
    .await;
    let s = gw.signup("tok@example.com").await;
    let auth = bearer(&s.access);
    let id = s.user["id"].as_str().unwrap().to_string();

    for (path, forwarded, identity) in [
        ("/public/x", false, false),
        ("/open-fwd/x", true, false),
        ("/app/x", true, true),
        ("/optional/x", true, true),
        ("/app-nofwd/x", false, true),
    ] {
        let r = get_with(&gw, path, &[("Authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let want: Vec<String> = if forwarded {
            vec![auth.clone()]
        } else {
            vec![]
        };
        assert_eq!(echoed(&r, "authorization"), want, "{path}");
        let want_id: Vec<String> = if identity { vec![id.clone()] } else { vec![] };
        assert_eq!(echoed(&r, "x-user-id"), want_id, "{path}");

        let (status, _, body) = h2_request(&gw, path, &[("authorization", &auth)]).await;
        assert_eq!(status, 200, "h2 {path}");
        let echo: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echoed_in(&echo, "authorization"), want, "h2 {path}");
    }
    // Any scheme, any spelling of the name: still removed on a public route.
    let r = get_with(
        &gw,
        "/public/x",
        &[
            ("authorization", "Basic dXNlcjpwYXNz"),
            ("AUTHORIZATION", &auth),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(echoed(&r, "authorization").is_empty(), "{r:?}");
}
