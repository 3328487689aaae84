//! Path confusion between the gateway's check and the upstream's router
//! (ASVS 4.0.3 V12.3.1 and V4.1.1; CWE-22, CWE-436 interpretation
//! conflict; the X-Original-URL class is CVE-2018-14773 in Symfony). The
//! default routes: `/` required, `/public` public, `/admin` needs the
//! `admin` role. Every accepted request reaches the upstream with exactly
//! the path that was checked; every refused one never reaches it.

use super::*;

/// What the upstream saw as request-target for the last request.
fn upstream_path(gw: &TestGateway) -> String {
    gw.upstream.last_request().expect("upstream got a request")["path"]
        .as_str()
        .unwrap()
        .to_string()
}

#[track_caller]
fn assert_no_new_hit(gw: &TestGateway, before: usize, what: &str) {
    assert_eq!(gw.upstream.hits(), before, "{what}: reached the upstream");
}

/// Encoded dot segments, encoded separators, double encoding, doubled and
/// dot slashes, NUL and `#` (CWE-22 / CWE-177): each is refused with 400
/// `bad_request`, resolved to `/admin` and refused there (401), or accepted
/// on the route its *normalized* path names, with exactly that path
/// forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_traversal_variants_never_reach_admin() {
    let gw = TestGateway::start().await;
    // Resolve to /admin, which needs a token: 401, upstream untouched.
    for p in [
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/.%2e/admin",
        "//admin",
        "///admin/x",
        "/./admin",
        "/public/./../admin",
        "/%2e/admin",
    ] {
        let before = gw.upstream.hits();
        let r = gw.get(p, None).await;
        assert_error(&r, 401, "unauthorized");
        assert_no_new_hit(&gw, before, p);
    }
    // Cannot be normalized safely: 400, upstream untouched.
    for p in [
        "/public/..%2fadmin",
        "/public/..%2Fadmin",
        "/public/..%5cadmin",
        "/public/..%5Cadmin",
        "/public%2f..%2fadmin",
        "/public/..\\admin",
        "/admin%00",
        "/public/%00/../admin",
        "/public/%2e%2e%2fadmin",
        "/public/../../admin",
        "/public/%",
        "/public/%zz",
    ] {
        let before = gw.upstream.hits();
        let r = gw.get(p, None).await;
        assert_error(&r, 400, "bad_request");
        assert_no_new_hit(&gw, before, p);
    }
    // Accepted on the public route, forwarded exactly as checked: a double
    // encoding stays encoded, so an upstream that decodes once sees a
    // literal "%2e%2e" segment, not "..".
    for (p, forwarded) in [
        ("/public/%252e%252e/admin", "/public/%252e%252e/admin"),
        (
            "/public/%252e%252e%252fadmin",
            "/public/%252e%252e%252fadmin",
        ),
        ("/public//x/./y/../z", "/public/x/z"),
        ("/public/%7euser", "/public/~user"),
    ] {
        let r = gw.get(p, None).await;
        assert_eq!(r.status, 200, "{p}: {r:?}");
        assert_eq!(upstream_path(&gw), forwarded, "{p}");
    }
    // `%23` is an encoded `#`, not a fragment: the segment is `admin%23`,
    // not `admin`, so the default (required) route applies.
    let before = gw.upstream.hits();
    assert_error(&gw.get("/admin%23", None).await, 401, "unauthorized");
    assert_no_new_hit(&gw, before, "/admin%23");
    let s = gw.signup("paths@example.com").await;
    let r = gw.get("/admin%23", Some(&s.access)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(upstream_path(&gw), "/admin%23");
    // Without the role, /admin itself is 403 however it is spelled.
    for p in ["/admin", "//admin", "/public/%2e%2e/admin", "/./admin/"] {
        let before = gw.upstream.hits();
        assert_error(&gw.get(p, Some(&s.access)).await, 403, "forbidden");
        assert_no_new_hit(&gw, before, p);
    }
}

/// Absolute-form request targets (RFC 9112 §3.2.2; CWE-436): the path of
/// the absolute URI is what is checked and the upstream receives
/// origin-form with the checked path. A target whose authority differs
/// from `Host` is ambiguous and refused with 400 by Pingora's parser
/// (an empty-bodied answer, not ours); nothing is proxied either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_targets_are_checked_on_their_path() {
    let gw = TestGateway::start().await;
    let before = gw.upstream.hits();
    let host = gw.addr.to_string();
    for target in [
        format!("http://{host}/admin"),
        format!("http://{host}/public/../admin"),
        format!("http://{host}/public/%2e%2e/admin"),
    ] {
        let r = get_with(&gw, &target, &[]).await;
        assert_error(&r, 401, "unauthorized");
    }
    for target in [
        "http://evil.example/admin",
        "http://evil.example/public/%2e%2e/admin",
        "http://evil.example/public/x",
    ] {
        let r = get_with(&gw, target, &[]).await;
        assert_eq!(r.status, 400, "{target}: {r:?}");
    }
    assert_no_new_hit(&gw, before, "absolute-form");
    let r = get_with(&gw, &format!("http://{host}/public/x?q=1"), &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(upstream_path(&gw), "/public/x?q=1");
}

/// HTTP/2 `:authority` and a different `Host` (RFC 9113 §8.3.1; request
/// routing confusion, CWE-436): refused with 400 (Pingora's ambiguity
/// check) on every route, so nothing is proxied; with the same `Host` the
/// route is checked on the path alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_host_differing_from_authority_changes_nothing() {
    let gw = TestGateway::start().await;
    let before = gw.upstream.hits();
    for path in ["/admin/x", "/public/x", "/x"] {
        let (status, _, _) = h2_request(&gw, path, &[("host", "other.example")]).await;
        assert_eq!(status, 400, "h2 {path} with a differing Host");
    }
    assert_no_new_hit(&gw, before, "h2 differing Host");
    let same = format!("localhost:{}", gw.tls_addr.port());
    let (status, _, _) = h2_request(&gw, "/admin/x", &[("host", &same)]).await;
    assert_eq!(status, 401);
    assert_no_new_hit(&gw, before, "h2 /admin");
    let (status, _, body) = h2_request(&gw, "/public/x", &[("host", &same)]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(upstream_path(&gw), "/public/x");
}

/// Path and method override headers (CVE-2018-14773 `X-Original-URL` /
/// `X-Rewrite-URL`; `X-Forwarded-Uri`; `X-HTTP-Method-Override`, ASVS
/// V4.1.1): they never change the gateway's decision, and the path
/// overrides are removed so the upstream cannot serve another path than
/// the one checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_headers_never_change_the_decision() {
    let gw = TestGateway::start().await;
    let overrides: [(&str, &str); 6] = [
        ("X-Original-URL", "/public/x"),
        ("X-Rewrite-URL", "/public/x"),
        ("X-Forwarded-Uri", "/public/x"),
        ("X-Original-URI", "/public/x"),
        ("X-HTTP-Method-Override", "OPTIONS"),
        ("X-Forwarded-Path", "/public/x"),
    ];
    // Claiming a public path on a protected one: still 401.
    let before = gw.upstream.hits();
    for h in overrides {
        let r = get_with(&gw, "/admin/x", &[h]).await;
        assert_error(&r, 401, "unauthorized");
    }
    assert_no_new_hit(&gw, before, "override to /public");
    // Claiming /admin on a public path: served as the public path, and the
    // upstream sees no path override.
    for (name, _) in overrides {
        let r = get_with(&gw, "/public/x", &[(name, "/admin/secret")]).await;
        assert_eq!(r.status, 200, "{name}: {r:?}");
        let echo = gw.upstream.last_request().unwrap();
        assert_eq!(echo["path"], "/public/x", "{name}");
        assert_eq!(echo["method"], "GET", "{name}");
        if name != "X-HTTP-Method-Override" {
            assert!(
                echoed_in(&echo, name).is_empty(),
                "{name} reached the upstream"
            );
        }
    }
}
