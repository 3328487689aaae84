//! Routing, path normalization, identity headers, TLS and the echo of what
//! the upstream receives (issue 2, CONTRACT sections 1, 2 and 5).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::http::{self, Response};
use crate::common::*;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// Headers of the identity family, by the contract's rule: the name,
/// case-insensitive with `_` read as `-`, starts with `x-user-`.
fn identity_family(r: &Response) -> Vec<(String, String)> {
    echoed_headers(&r.json())
        .into_iter()
        .filter(|(n, _)| {
            n.to_ascii_lowercase()
                .replace('_', "-")
                .starts_with("x-user-")
        })
        .collect()
}

async fn get_with(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Response {
    http::request(gw.addr, "GET", path, headers, None)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A JSON error with exactly the `error` and `message` keys.
fn assert_json_error(r: &Response, status: u16, code: &str) {
    assert_error(r, status, code);
    let v = r.json();
    let keys: BTreeSet<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("error body is not an object: {r:?}"))
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["error", "message"]),
        "error keys: {r:?}"
    );
}

/// The security headers every gateway-own response carries.
fn assert_security_headers(r: &Response) {
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{r:?}");
    assert!(
        r.header("cache-control")
            .is_some_and(|v| v.contains("no-store")),
        "{r:?}"
    );
    assert!(r.header("referrer-policy").is_some(), "{r:?}");
}

fn routes(list: &[(&str, &str, &str)]) -> String {
    let mut s = String::new();
    for (prefix, upstream, auth) in list {
        s.push_str(&format!(
            "[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\nauth = \"{auth}\"\n\n"
        ));
    }
    s
}

// ---------------------------------------------------------------------------
// routing
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_route_needs_a_token_and_gets_identity_headers() {
    let gw = TestGateway::start().await;
    let r = gw.get("/hello", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "unauthorized");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    assert_eq!(gw.upstream.hits(), 0);

    let s = gw.signup("alice@example.com").await;
    let r = gw.get("/hello?x=1", Some(&s.access)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["path"], "/hello?x=1");
    let find = |n: &str| echoed_in(&echo, n).into_iter().next();
    assert_eq!(find("x-user-id").unwrap(), s.user["id"].as_str().unwrap());
    assert_eq!(find("x-user-email").unwrap(), "alice@example.com");
    assert_eq!(find("x-user-roles").unwrap(), "");
    assert!(find("x-request-id").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_prefix_wins_whatever_the_config_order() {
    // Deliberately listed shortest first: first-match would pick "/api".
    let gw = TestGateway::start_with(Builder {
        routes: routes(&[
            ("/api", "{UP}", "public"),
            ("/api/private", "{UP}", "required"),
            ("/api/private/open", "{UP}", "public"),
        ]),
        ..Default::default()
    })
    .await;
    assert_eq!(gw.get("/api/x", None).await.status, 200);
    assert_eq!(gw.get("/api", None).await.status, 200);
    let r = gw.get("/api/private/x", None).await;
    assert_json_error(&r, 401, "unauthorized");
    assert_json_error(&gw.get("/api/private", None).await, 401, "unauthorized");
    let r = gw.get("/api/private/open/y", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["path"], "/api/private/open/y");
    assert_eq!(gw.upstream.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_match_whole_segments_only() {
    let gw = TestGateway::start().await;
    // "/public" is public, "/" is required: "/publicity" is not under "/public".
    assert_eq!(gw.get("/public", None).await.status, 200);
    assert_eq!(gw.get("/public/", None).await.status, 200);
    assert_eq!(gw.get("/public/x", None).await.status, 200);
    assert_json_error(&gw.get("/publicity", None).await, 401, "unauthorized");
    assert_json_error(&gw.get("/public-x/y", None).await, 401, "unauthorized");
    assert_json_error(&gw.get("/publicx", None).await, 401, "unauthorized");
    assert_eq!(gw.upstream.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_without_a_route_is_a_json_404() {
    let gw = TestGateway::start_with(Builder {
        routes: routes(&[("/api", "{UP}", "public")]),
        ..Default::default()
    })
    .await;
    assert_eq!(gw.get("/api/x", None).await.status, 200);
    for path in ["/", "/nothing", "/apix", "/ap"] {
        let r = gw.get(path, None).await;
        assert_json_error(&r, 404, "not_found");
        assert_security_headers(&r);
    }
    assert_eq!(gw.upstream.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_optional_and_public_routes() {
    let gw = TestGateway::start().await;
    let s = gw.signup("bob@example.com").await;
    let id = s.user["id"].as_str().unwrap().to_string();

    // required
    let r = gw.get("/app", None).await;
    assert_json_error(&r, 401, "unauthorized");
    assert_json_error(&gw.get("/app", Some("garbage")).await, 401, "unauthorized");
    let r = gw.get("/app", Some(&s.access)).await;
    assert_eq!(r.status, 200);
    assert_eq!(echoed(&r, "x-user-id"), vec![id.clone()]);

    // optional: anonymous passes without identity; a valid token adds it;
    // an invalid token is treated as anonymous.
    let r = gw.get("/optional/x", None).await;
    assert_eq!(r.status, 200);
    assert!(identity_family(&r).is_empty(), "{r:?}");
    let r = gw.get("/optional/x", Some("not.a.token")).await;
    assert_eq!(r.status, 200);
    assert!(identity_family(&r).is_empty(), "{r:?}");
    let r = gw.get("/optional/x", Some(&s.access)).await;
    assert_eq!(r.status, 200);
    assert_eq!(echoed(&r, "x-user-id"), vec![id.clone()]);
    assert_eq!(echoed(&r, "x-user-email"), vec!["bob@example.com"]);

    // public: no check, no identity
    let r = gw.get("/public/x", None).await;
    assert_eq!(r.status, 200);
    assert!(identity_family(&r).is_empty(), "{r:?}");
    let r = gw.get("/public/x", Some("garbage")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_give_403_when_missing_and_any_one_role_is_enough() {
    let gw = TestGateway::start().await;
    let plain = gw.signup("plain@example.com").await;
    gw.admin_add_user("root@example.com", &["admin"]).await;
    let admin = gw.signin("root@example.com", PASSWORD).await;
    gw.admin_add_user("ops@example.com", &["ops"]).await;
    let ops = gw.signin("ops@example.com", PASSWORD).await;
    gw.admin_add_user("other@example.com", &["billing"]).await;
    let other = gw.signin("other@example.com", PASSWORD).await;

    // /admin needs "admin"
    assert_json_error(&gw.get("/admin", None).await, 401, "unauthorized");
    assert_json_error(
        &gw.get("/admin/x", Some(&plain.access)).await,
        403,
        "forbidden",
    );
    assert_json_error(
        &gw.get("/admin/x", Some(&ops.access)).await,
        403,
        "forbidden",
    );
    assert_json_error(
        &gw.get("/admin/x", Some(&other.access)).await,
        403,
        "forbidden",
    );
    let r = gw.get("/admin/x", Some(&admin.access)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echoed(&r, "x-user-roles"), vec!["admin"]);

    // /ops needs "admin" OR "ops"
    assert_json_error(&gw.get("/ops", Some(&plain.access)).await, 403, "forbidden");
    assert_json_error(&gw.get("/ops", Some(&other.access)).await, 403, "forbidden");
    assert_eq!(gw.get("/ops", Some(&ops.access)).await.status, 200);
    assert_eq!(gw.get("/ops/y", Some(&admin.access)).await.status, 200);
    assert_eq!(gw.upstream.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_upstreams_are_balanced_round_robin() {
    let second = upstream::start().await;
    let gw = TestGateway::start_with(Builder {
        routes: format!(
            "[[routes]]\nprefix = \"/\"\nupstream = [\"{{UP}}\", \"{}\"]\nauth = \"public\"\n",
            second.url()
        ),
        ..Default::default()
    })
    .await;
    let mut seen = Vec::new();
    for i in 0..10 {
        let r = gw.get(&format!("/rr/{i}"), None).await;
        assert_eq!(r.status, 200, "{r:?}");
        seen.push(r.json()["upstream"].as_str().unwrap().to_string());
    }
    assert_eq!(gw.upstream.hits(), 5, "{seen:?}");
    assert_eq!(second.hits(), 5, "{seen:?}");
    // Round-robin: consecutive requests go to different upstreams.
    for w in seen.windows(2) {
        assert_ne!(w[0], w[1], "{seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_is_down_gives_a_json_502_without_internals() {
    let dead_port = free_port();
    let gw = TestGateway::start_with(Builder {
        routes: routes(&[
            ("/", "{UP}", "public"),
            ("/down", &format!("http://127.0.0.1:{dead_port}"), "public"),
        ]),
        ..Default::default()
    })
    .await;
    let r = gw.get("/down/x", None).await;
    assert_json_error(&r, 502, "bad_gateway");
    assert_security_headers(&r);
    let text = r.text().to_ascii_lowercase();
    for leak in [
        "127.0.0.1",
        &dead_port.to_string(),
        "refused",
        "connect",
        "pingora",
        "error:",
    ] {
        assert!(!text.contains(leak), "502 body leaks {leak:?}: {text}");
    }
    for (name, value) in &r.headers {
        assert!(
            !value.contains(&dead_port.to_string()),
            "header {name} leaks the upstream: {value}"
        );
    }
    // The gateway itself is fine.
    assert_eq!(gw.get("/up", None).await.status, 200);
}

// ---------------------------------------------------------------------------
// path normalization
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_cannot_escape_into_a_protected_route() {
    let gw = TestGateway::start().await;
    let plain = gw.signup("plain@example.com").await;
    gw.admin_add_user("root@example.com", &["admin"]).await;
    let admin = gw.signin("root@example.com", PASSWORD).await;

    for path in [
        "/public/../admin",
        "/public/../admin/x",
        "/public/%2e%2e/admin",
        "/public/%2E%2e/admin",
        "/public/.%2e/admin",
        "/public/./../admin",
        "//public/..//admin",
        "/%61dmin",
        "/%61%64%6D%69%6E/x",
        "/adm%69n",
    ] {
        let r = get_with(&gw, path, &[]).await;
        assert_json_error(&r, 401, "unauthorized");
        let auth = bearer(&plain.access);
        let r = get_with(&gw, path, &[("Authorization", &auth)]).await;
        assert_json_error(&r, 403, "forbidden");
        assert_eq!(gw.upstream.hits(), 0, "{path} reached the upstream");
    }

    // With the admin role the request passes and the upstream receives the
    // path that was checked, not the raw one.
    let auth = bearer(&admin.access);
    for (path, want) in [
        ("/public/../admin", "/admin"),
        ("/public/%2e%2e/admin/x", "/admin/x"),
        ("/%61dmin", "/admin"),
    ] {
        let r = get_with(&gw, path, &[("Authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.json()["path"], want, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_receives_exactly_the_normalized_path_and_the_raw_query() {
    let gw = TestGateway::start().await;
    for (raw, want) in [
        ("//public//a///b", "/public/a/b"),
        ("/public/./a/./b", "/public/a/b"),
        ("/public/a/../b", "/public/b"),
        ("/public/a/b/..", "/public/a/"),
        ("/public/a/.", "/public/a/"),
        // "/x" would be a required route: normalized first, it is public.
        ("/x/../public/c", "/public/c"),
        ("/public/a/%2e%2e/b", "/public/b"),
        ("/public/%2E/b", "/public/b"),
        ("/p%75blic/%61b%63", "/public/abc"),
        ("/public/%7Euser/a%2Db%5F", "/public/~user/a-b_"),
        // Reserved and other escapes stay encoded (upper-cased).
        ("/public/a%20b", "/public/a%20b"),
        ("/public/a%3fb", "/public/a%3Fb"),
        ("/public/a%23b", "/public/a%23b"),
        // The query string is passed on untouched.
        (
            "/public/./q/../r?a=%2F..%2f&b=../c&c=%41&d=x%20y",
            "/public/r?a=%2F..%2f&b=../c&c=%41&d=x%20y",
        ),
        ("/public/?", "/public/?"),
        ("/public//x?y=//z", "/public/x?y=//z"),
    ] {
        let r = get_with(&gw, raw, &[]).await;
        assert_eq!(r.status, 200, "{raw}: {r:?}");
        assert_eq!(r.json()["path"], want, "{raw}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_cannot_be_normalized_safely_are_400() {
    let gw = TestGateway::start().await;
    let s = gw.signup("carol@example.com").await;
    let auth = bearer(&s.access);
    for path in [
        // encoded '/'
        "/public/a%2Fb",
        "/public/a%2fb",
        "/public/..%2F..%2Fadmin",
        // encoded '\'
        "/public/a%5Cb",
        "/public/a%5cb",
        // raw '\'
        "/public/a\\b",
        "/public\\..\\admin",
        // NUL and other control characters
        "/public/a%00b",
        "/public/a%00",
        "/public/a%0Ab",
        // '..' above the root
        "/..",
        "/../public/x",
        "/public/../../x",
        "/%2e%2e/public",
        // invalid percent-encoding
        "/public/%zz",
        "/public/%4",
        "/public/a%",
        "/public/%G1",
        // dot segments with parameters
        "/public/..;/admin",
        "/public/..;jsessionid=1/admin",
        "/public/.;x/a",
    ] {
        for headers in [&[][..], &[("Authorization", auth.as_str())][..]] {
            let r = get_with(&gw, path, headers).await;
            assert_json_error(&r, 400, "bad_request");
            assert_security_headers(&r);
        }
    }
    assert_eq!(gw.upstream.hits(), 0);
}

// ---------------------------------------------------------------------------
// headers
// ---------------------------------------------------------------------------

const SPOOFED: &[(&str, &str)] = &[
    ("X-User-Id", "evil-1"),
    ("x-user-id", "evil-2"),
    ("X-USER-EMAIL", "evil@evil.test"),
    ("X_User_Id", "evil-3"),
    ("x_user-roles", "admin"),
    ("X-User-Anything", "evil-4"),
    ("X-User-Roles", "admin"),
    ("X-User-Roles", "root"),
    ("X_USER_EMAIL", "evil2@evil.test"),
    ("x-user-id", "evil-5"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_identity_headers_are_stripped_on_every_route() {
    let gw = TestGateway::start().await;
    let s = gw.signup("dave@example.com").await;
    let id = s.user["id"].as_str().unwrap().to_string();
    let auth = bearer(&s.access);

    // Anonymous: public and optional routes get no identity at all.
    for path in ["/public/x", "/optional/x"] {
        let r = get_with(&gw, path, SPOOFED).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(
            identity_family(&r).is_empty(),
            "{path}: spoofed identity reached the upstream: {:?}",
            identity_family(&r)
        );
    }
    // A public route with a token: nothing from the client survives.
    let mut with_token = SPOOFED.to_vec();
    with_token.push(("Authorization", &auth));
    let r = get_with(&gw, "/public/x", &with_token).await;
    assert_eq!(r.status, 200);
    for (n, v) in identity_family(&r) {
        assert!(
            !v.contains("evil") && v != "admin" && v != "root",
            "{n}: {v}"
        );
    }

    // Authenticated (optional and required): exactly the injected headers.
    for path in ["/optional/x", "/required/x"] {
        let r = get_with(&gw, path, &with_token).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let mut got: Vec<(String, String)> = identity_family(&r)
            .into_iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("x-user-auth-method".to_string(), "jwt".to_string()),
                ("x-user-email".to_string(), "dave@example.com".to_string()),
                ("x-user-id".to_string(), id.clone()),
                ("x-user-roles".to_string(), String::new()),
            ],
            "{path}"
        );
    }

    // Each variant on its own, too.
    for (name, value) in SPOOFED {
        let r = get_with(&gw, "/public/x", &[(name, value)]).await;
        assert_eq!(r.status, 200, "{name}");
        assert!(identity_family(&r).is_empty(), "{name} survived: {r:?}");
        let r = get_with(&gw, "/x", &[(name, value), ("Authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{name}");
        // Id, email, roles and the auth method (CONTRACT section 7).
        assert_eq!(identity_family(&r).len(), 4, "{name}: {r:?}");
        assert_eq!(echoed(&r, "x-user-id"), vec![id.clone()], "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_header_cannot_remove_injected_identity() {
    let gw = TestGateway::start().await;
    let s = gw.signup("erin@example.com").await;
    let id = s.user["id"].as_str().unwrap().to_string();
    let auth = bearer(&s.access);
    for conn in [
        "X-User-Id",
        "close, X-User-Id, X-User-Email, X-User-Roles",
        "x-user-id, x-request-id",
        "keep-alive, X_User_Roles, x-user-email",
    ] {
        let r = get_with(
            &gw,
            "/x",
            &[
                ("Authorization", &auth),
                ("Connection", conn),
                ("X-User-Id", "evil"),
            ],
        )
        .await;
        assert_eq!(r.status, 200, "{conn}: {r:?}");
        assert_eq!(echoed(&r, "x-user-id"), vec![id.clone()], "{conn}");
        assert_eq!(
            echoed(&r, "x-user-email"),
            vec!["erin@example.com"],
            "{conn}"
        );
        assert_eq!(echoed(&r, "x-user-roles"), vec![""], "{conn}");
        assert_eq!(echoed(&r, "x-request-id").len(), 1, "{conn}");
        assert_eq!(echoed(&r, "x-forwarded-for").len(), 1, "{conn}");
    }
    // Nominating X-Forwarded-For (a header the gateway sets) is refused
    // outright, and nothing reaches the upstream.
    let hits = gw.upstream.hits();
    let r = get_with(
        &gw,
        "/x",
        &[
            ("Authorization", &auth),
            ("Connection", "x-forwarded-for, x-user-id"),
        ],
    )
    .await;
    assert_json_error(&r, 400, "bad_request");
    assert_eq!(gw.upstream.hits(), hits, "refused, yet proxied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_injected_and_replaces_the_clients() {
    let gw = TestGateway::start().await;
    let r = get_with(
        &gw,
        "/public/x",
        &[("X-Request-Id", "client-chosen"), ("x-request-id", "again")],
    )
    .await;
    assert_eq!(r.status, 200);
    let ids = echoed(&r, "x-request-id");
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(!ids[0].contains("client") && !ids[0].contains("again"));
    assert!(ids[0].len() >= 16, "{ids:?}");
    // Unique per request.
    let r2 = get_with(&gw, "/public/x", &[]).await;
    let ids2 = echoed(&r2, "x-request-id");
    assert_eq!(ids2.len(), 1);
    assert_ne!(ids[0], ids2[0]);
    // Gateway-own responses carry one too.
    let r = gw.get("/x", None).await;
    assert_eq!(r.status, 401);
    assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_an_untrusted_peer_are_replaced() {
    let gw = TestGateway::start().await;
    let r = get_with(
        &gw,
        "/public/x",
        &[
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-For", "7.7.7.7"),
            ("X-Forwarded-Proto", "https"),
            ("Forwarded", "for=8.8.8.8;proto=https"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(echoed(&r, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(echoed(&r, "x-forwarded-proto"), vec!["http"]);
    assert!(echoed(&r, "forwarded").is_empty(), "{r:?}");

    // Origin-describing headers and X-Real-IP cannot be planted either.
    let r = get_with(
        &gw,
        "/public/x",
        &[
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Port", "1"),
            ("X-Forwarded-Prefix", "/evil"),
            ("X-Real-IP", "6.6.6.6"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    for name in ["x-forwarded-host", "x-forwarded-port", "x-forwarded-prefix"] {
        assert!(echoed(&r, name).is_empty(), "{name} reached the upstream");
    }
    assert_eq!(echoed(&r, "x-real-ip"), vec!["127.0.0.1"]);

    // Over TLS the proto is https.
    let raw = http::build_request(
        &format!("localhost:{}", gw.tls_addr.port()),
        "GET",
        "/public/tls",
        &[
            ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-For", "6.6.6.6"),
        ],
        None,
        false,
    );
    let (r, _) = http::tls_send_raw(gw.tls_addr, "localhost", &gw.cert_path(), &raw, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echoed(&r, "x-forwarded-proto"), vec!["https"]);
    assert_eq!(echoed(&r, "x-forwarded-for"), vec!["127.0.0.1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_a_trusted_proxy_is_extended() {
    let gw = TestGateway::start_with(Builder {
        server_extra: "trusted_proxies = [\"127.0.0.1/32\"]\n".into(),
        ..Default::default()
    })
    .await;
    let r = get_with(&gw, "/public/x", &[("X-Forwarded-For", "203.0.113.7")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        echoed(&r, "x-forwarded-for"),
        vec!["203.0.113.7, 127.0.0.1"]
    );
    let r = get_with(
        &gw,
        "/public/x",
        &[("X-Forwarded-For", "198.51.100.1, 203.0.113.7")],
    )
    .await;
    assert_eq!(
        echoed(&r, "x-forwarded-for"),
        vec!["198.51.100.1, 203.0.113.7, 127.0.0.1"]
    );
    // A trusted proxy may speak for the original host; X-Real-IP is the
    // client it vouches for.
    let r = get_with(
        &gw,
        "/public/x",
        &[
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-Host", "app.example"),
            ("X-Real-IP", "6.6.6.6"),
        ],
    )
    .await;
    assert_eq!(echoed(&r, "x-forwarded-host"), vec!["app.example"]);
    assert_eq!(echoed(&r, "x-real-ip"), vec!["203.0.113.7"]);
    // Without a client XFF the peer is the whole chain.
    let r = get_with(&gw, "/public/x", &[]).await;
    assert_eq!(echoed(&r, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(echoed(&r, "x-forwarded-proto"), vec!["http"]);
}

// ---------------------------------------------------------------------------
// bearer rules
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_rules_two_headers_query_tokens_and_other_schemes_are_401() {
    let gw = TestGateway::start().await;
    let s = gw.signup("frank@example.com").await;
    let auth = bearer(&s.access);
    // Sanity: the token works on its own.
    assert_eq!(
        get_with(&gw, "/x", &[("Authorization", &auth)])
            .await
            .status,
        200
    );
    let hits = gw.upstream.hits();

    let check = |r: Response, what: &str| {
        assert_json_error(&r, 401, "unauthorized");
        let www = r.header("www-authenticate").unwrap_or_else(|| {
            panic!("{what}: 401 without WWW-Authenticate: {r:?}");
        });
        assert!(www.starts_with("Bearer"), "{what}: {www}");
        assert!(www.contains("invalid_token"), "{what}: {www}");
        assert_security_headers(&r);
    };

    // Two Authorization headers, even two valid ones.
    let r = get_with(
        &gw,
        "/x",
        &[("Authorization", &auth), ("Authorization", &auth)],
    )
    .await;
    check(r, "two headers");
    let r = get_with(
        &gw,
        "/x",
        &[("Authorization", &auth), ("authorization", "Bearer other")],
    )
    .await;
    check(r, "two headers, differing");

    // A token in the query string is never a credential...
    let q = format!("/x?access_token={}", s.access);
    check(get_with(&gw, &q, &[]).await, "query token alone");
    // ...and its presence poisons an otherwise valid request.
    check(
        get_with(&gw, &q, &[("Authorization", &auth)]).await,
        "query token with header",
    );

    // Other schemes.
    for value in [
        format!("Basic {}", s.access),
        format!("Token {}", s.access),
        s.access.clone(),
        "Bearer".to_string(),
        "Bearer ".to_string(),
        "Basic ZnJhbms6cGFzc3dvcmQ=".to_string(),
    ] {
        check(
            get_with(&gw, "/x", &[("Authorization", &value)]).await,
            &value,
        );
    }
    check(get_with(&gw, "/x", &[]).await, "missing");
    assert_eq!(gw.upstream.hits(), hits, "a rejected request was proxied");
}

// ---------------------------------------------------------------------------
// TLS and gateway-own responses
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_verifies_the_generated_certificate_and_gets_hsts() {
    let gw = TestGateway::start().await;
    assert!(gw.cert_path().exists(), "no cert generated");
    let r = http::tls_get(gw.tls_addr, "localhost", &gw.cert_path(), "/private")
        .await
        .expect("TLS with the generated cert as the only CA");
    assert_json_error(&r, 401, "unauthorized");
    assert_security_headers(&r);
    let hsts = r
        .header("strict-transport-security")
        .unwrap_or_else(|| panic!("no HSTS over TLS: {r:?}"));
    assert!(hsts.contains("max-age="), "{hsts}");

    // Proxied over TLS too.
    let r = http::tls_get(gw.tls_addr, "localhost", &gw.cert_path(), "/public/x")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/public/x");

    // No HSTS on plain HTTP.
    let r = gw.get("/private", None).await;
    assert_eq!(r.status, 401);
    assert!(r.header("strict-transport-security").is_none(), "{r:?}");

    // A wrong server name fails verification.
    let e = http::tls_get(gw.tls_addr, "example.com", &gw.cert_path(), "/public/x").await;
    assert!(e.is_err(), "wrong name accepted: {e:?}");
    // So does a CA that is not ours.
    let other = tempfile::tempdir().unwrap();
    let other_cert = other.path().join("c.pem");
    let other_key = other.path().join("k.pem");
    portcullis::tls::ensure_dev_pair(&other_cert, &other_key).unwrap();
    let e = http::tls_get(gw.tls_addr, "localhost", &other_cert, "/public/x").await;
    assert!(e.is_err(), "foreign CA accepted: {e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_offers_h2_by_alpn() {
    use rustls::pki_types::ServerName;
    use tokio_rustls::TlsConnector;

    let gw = TestGateway::start().await;
    let config = http::tls_client_config(&gw.cert_path(), &["h2", "http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(gw.tls_addr).await.unwrap();
    let tls = tokio::time::timeout(
        http::TIMEOUT,
        TlsConnector::from(config).connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    // A client that offers only http/1.1 gets it.
    let raw = http::build_request("localhost", "GET", "/public/x", &[], None, false);
    let (r, info) = http::tls_send_raw(
        gw.tls_addr,
        "localhost",
        &gw.cert_path(),
        &raw,
        &["http/1.1"],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(info.alpn.as_deref(), Some("http/1.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_own_responses_carry_security_headers() {
    let gw = TestGateway::start().await;
    let plain = gw.signup("gina@example.com").await;
    let cases = [
        (gw.get("/x", None).await, 401, "unauthorized"),
        (
            gw.get("/admin", Some(&plain.access)).await,
            403,
            "forbidden",
        ),
        (gw.get("/public/%zz", None).await, 400, "bad_request"),
    ];
    for (r, status, code) in cases {
        assert_json_error(&r, status, code);
        assert_security_headers(&r);
    }
    // Auth responses too (the JWKS document and a login).
    let r = gw.get("/.well-known/jwks.json", None).await;
    assert_eq!(r.status, 200);
    assert_security_headers(&r);
    let r = gw.login("gina@example.com", PASSWORD).await;
    assert_eq!(r.status, 200);
    assert_security_headers(&r);
    let r = gw.login("gina@example.com", "wrong password!").await;
    assert_eq!(r.status, 401);
    assert_json_error(&r, 401, "invalid_credentials");
    assert_security_headers(&r);
}

// ---------------------------------------------------------------------------
// config and CLI
// ---------------------------------------------------------------------------

/// The binary with `dir` as its working directory, bounded by
/// [`bin::CLI_LIMIT`].
fn run_cli(dir: &Path, args: &[&str]) -> bin::Output {
    let mut cmd = bin::command(args);
    cmd.current_dir(dir).stdin(Stdio::null());
    bin::run(cmd, None, bin::CLI_LIMIT)
}

fn valid_config(dir: &Path) -> String {
    let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    format!(
        r#"
[server]
listen = "{}"
tls_listen = "{}"
tls_cert = "{d}/certs/cert.pem"
tls_key = "{d}/certs/key.pem"
admin_listen = "{}"
data_dir = "{d}/data"
trusted_proxies = ["10.0.0.0/8", "192.168.1.1"]

[tokens]
algorithm = "HS256"
issuer = "portcullis"
audience = "portcullis"
access_ttl_secs = 900
refresh_ttl_secs = 1209600
leeway_secs = 30

[accounts]
require_email_verification = false

[mail]
transport = "log"
from = "Portcullis <no-reply@localhost>"
smtp_host = "127.0.0.1"
smtp_port = 25
smtp_security = "none"
link_base_url = "https://localhost:8443"

[throttle]
auth_per_minute = 20
max_failed_logins = 5
lockout_secs = 300

[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:8081"
auth = "required"
roles = []

[[routes]]
prefix = "/api"
upstream = ["http://127.0.0.1:8082", "http://127.0.0.1:8083"]
auth = "public"
"#,
        port(),
        port(),
        port(),
        d = dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, valid_config(dir.path())).unwrap();
    let out = tokio::task::spawn_blocking({
        let (d, f) = (dir.path().to_path_buf(), file.clone());
        move || run_cli(&d, &["check-config", "--config", f.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr.clone());
    // Checking starts nothing and writes nothing.
    assert!(!dir.path().join("data").exists());
    assert!(!dir.path().join("certs").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reports_every_problem_by_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // Only the cert of the pair exists.
    std::fs::write(dir.path().join("only-cert.pem"), "not used").unwrap();
    let shared = free_port();
    let bad = format!(
        r#"
[server]
listen = "127.0.0.1:{shared}"
admin_listen = "127.0.0.1:{shared}"
tls_listen = "127.0.0.1:{tls}"
tls_cert = "{d}/only-cert.pem"
tls_key = "{d}/missing-key.pem"
data_dir = "{d}/data"
trusted_proxies = ["10.0.0.0/99", "not-an-ip"]
bogus_key = 1

[tokens]
issuer = "portcullis"
mystery = "x"

[[routes]]
prefix = "/"
upstream = "not a url"
auth = "required"

[[routes]]
prefix = "/api"
upstream = ["http://127.0.0.1:8082", "ftp://127.0.0.1:21"]
auth = "public"
"#,
        tls = free_port()
    );
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, bad).unwrap();
    let out = tokio::task::spawn_blocking({
        let (dd, f) = (dir.path().to_path_buf(), file.clone());
        move || run_cli(&dd, &["check-config", "--config", f.to_str().unwrap()])
    })
    .await
    .unwrap();
    let stderr = out.stderr.clone();
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    for key in [
        "server.bogus_key",
        "tokens.mystery",
        "server.trusted_proxies[0]",
        "server.trusted_proxies[1]",
        "routes[0].upstream",
        "routes[1].upstream[1]",
        "server.admin_listen",
        "server.tls_key",
    ] {
        assert!(stderr.contains(key), "{key} not named in:\n{stderr}");
    }
    assert!(!dir.path().join("data").exists());

    // Each problem alone is enough for exit 2, naming its key.
    let base = valid_config(dir.path());
    let single: Vec<(String, &str)> = vec![
        (
            base.replace("[tokens]", "[tokens]\nunknown_thing = 1"),
            "tokens.unknown_thing",
        ),
        (
            base.replace("\"10.0.0.0/8\"", "\"10.0.0.0/33\""),
            "server.trusted_proxies[0]",
        ),
        (
            base.replace("http://127.0.0.1:8083", "http//127.0.0.1:8083"),
            "routes[1].upstream[1]",
        ),
        (
            {
                // the admin listener on the plain listener's address
                let listen = base
                    .lines()
                    .find(|l| l.starts_with("listen = "))
                    .unwrap()
                    .to_string();
                let admin = base
                    .lines()
                    .find(|l| l.starts_with("admin_listen = "))
                    .unwrap()
                    .to_string();
                base.replace(&admin, &format!("admin_{listen}"))
            },
            "server.admin_listen",
        ),
        (
            base.replace(
                &format!("{d}/certs/cert.pem"),
                &format!("{d}/only-cert.pem"),
            ),
            "server.tls_key",
        ),
    ];
    for (i, (text, key)) in single.into_iter().enumerate() {
        let f = dir.path().join(format!("single-{i}.toml"));
        std::fs::write(&f, &text).unwrap();
        let out = tokio::task::spawn_blocking({
            let dd = dir.path().to_path_buf();
            move || run_cli(&dd, &["check-config", "--config", f.to_str().unwrap()])
        })
        .await
        .unwrap();
        let stderr = out.stderr.clone();
        assert_eq!(out.status.code(), Some(2), "{key}: stderr: {stderr}");
        assert!(stderr.contains(key), "{key} not named in:\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_an_invalid_config_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let text = valid_config(dir.path()).replace("[tokens]", "[tokens]\nunknown_thing = 1");
    let listen: SocketAddr = text
        .lines()
        .find_map(|l| l.strip_prefix("listen = "))
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, &text).unwrap();
    let out = tokio::task::spawn_blocking({
        let (d, f) = (dir.path().to_path_buf(), file.clone());
        move || run_cli(&d, &["serve", "--config", f.to_str().unwrap()])
    })
    .await
    .unwrap();
    let stderr = out.stderr.clone();
    assert_ne!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(out.status.code().is_some(), "killed by a signal: {stderr}");
    assert!(stderr.contains("tokens.unknown_thing"), "{stderr}");
    // Nothing was started or created.
    assert!(!dir.path().join("data").join("db").exists());
    assert!(!dir.path().join("data").exists());
    assert!(!dir.path().join("certs").exists());
    assert!(std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_err());
}

// ---------------------------------------------------------------------------
// lifecycle and demo
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_an_in_flight_request_finish() {
    let mut routes = DEFAULT_ROUTES.to_string();
    routes.push_str("\n[[routes]]\nprefix = \"/__slow\"\nupstream = \"{UP}\"\nauth = \"public\"\n");
    let gw = TestGateway::start_with(Builder {
        routes,
        ..Default::default()
    })
    .await;
    let addr = gw.addr;
    let inflight = tokio::spawn(async move { http::get(addr, "/__slow/800", None).await });
    // Wait until the request reached the upstream.
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.upstream.hits() == 0 {
        assert!(Instant::now() < deadline, "the request never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let stopper = tokio::task::spawn_blocking(move || {
        let mut gw = gw;
        gw.stop();
        gw
    });
    let r = inflight.await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["path"], "/__slow/800");
    let gw = stopper.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));
    // Once stopped, the listener is closed.
    assert!(
        std::net::TcpStream::connect_timeout(&gw.addr, Duration::from_millis(200)).is_err(),
        "still accepting after stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_echo_upstream_shows_the_injected_identity() {
    let echo = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gw = TestGateway::start_with(Builder {
        extra: format!("[demo]\necho_listen = \"{echo}\"\n"),
        routes: format!(
            "[[routes]]\nprefix = \"/\"\nupstream = \"http://{echo}\"\nauth = \"required\"\n"
        ),
        ..Default::default()
    })
    .await;
    let r = gw.get("/demo", None).await;
    assert_json_error(&r, 401, "unauthorized");
    let s = gw.signup("hal@example.com").await;
    let id = s.user["id"].as_str().unwrap();
    let auth = bearer(&s.access);
    let r = get_with(
        &gw,
        "/demo/hello?q=1",
        &[("Authorization", &auth), ("X-User-Email", "evil@evil.test")],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    let text = r.text();
    let lower = text.to_ascii_lowercase();
    assert!(text.contains("GET /demo/hello?q=1"), "{text}");
    assert!(lower.contains(&format!("x-user-id: {id}")), "{text}");
    assert!(lower.contains("x-user-email: hal@example.com"), "{text}");
    assert!(lower.contains("x-user-roles:"), "{text}");
    assert!(lower.contains("x-request-id: "), "{text}");
    assert!(!lower.contains("evil"), "{text}");
    // Nothing reached the harness upstream: the demo one answered.
    assert_eq!(gw.upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_gets_the_same_checks_stripping_and_injection() {
    let gw = TestGateway::start().await;
    let (status, headers, body) = h2_request(&gw, "/hello", &[]).await;
    assert_eq!(status, 401);
    assert!(headers.get("www-authenticate").is_some());
    assert!(headers.get("strict-transport-security").is_some());
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "unauthorized");
    assert_eq!(gw.upstream.hits(), 0);

    let s = gw.signup("h2@example.com").await;
    let bearer = format!("Bearer {}", s.access);
    let (status, _, body) = h2_request(
        &gw,
        "/public/../hello?q=1",
        &[
            ("authorization", &bearer),
            ("x-user-id", "spoofed"),
            ("x_user_email", "spoofed@example.com"),
            ("x-user-roles", "admin"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["path"], "/hello?q=1");
    let all = |n: &str| echoed_in(&echo, n);
    assert_eq!(
        all("x-user-id"),
        vec![s.user["id"].as_str().unwrap().to_string()]
    );
    assert_eq!(all("x-user-email"), vec!["h2@example.com".to_string()]);
    assert_eq!(all("x-user-roles"), vec![String::new()]);
    assert!(all("x_user_email").is_empty());
    assert_eq!(all("x-forwarded-proto"), vec!["https".to_string()]);

    // A path that cannot be normalized is refused on h2 too.
    let (status, _, _) = h2_request(&gw, "/a%2fb", &[("authorization", &bearer)]).await;
    assert_eq!(status, 400);
}
