//! Browser users (issue 14) over real sockets, without a browser: the
//! redirect to the portal and every form of a hostile `rd`, the portal's
//! cookie, cookie sessions on proxied routes (identity, rotation under
//! sixteen parallel requests, reuse, and every way a session ends), CSRF
//! refusals and CORS on `/auth/*`. `chromium.rs` drives the same in a
//! real browser.

use std::net::SocketAddr;

use serde_json::json;

use crate::common::http::{self, Response};
use crate::common::*;

pub const ALLOWED: &str = "https://app.example.com";

pub fn builder() -> Builder {
    Builder {
        extra: format!(
            "[browser]\nenabled = true\nallowed_origins = [\"{ALLOWED}\"]\n\n[throttle]\nauth_per_minute = 0\n"
        ),
        routes: format!(
            "{DEFAULT_ROUTES}\n[[routes]]\nprefix = \"/app\"\nupstream = \"{{UP}}\"\nauth = \"required\"\n"
        ),
        ..Default::default()
    }
}

/// The value a `Set-Cookie` gives cookie `name`, if any.
pub fn set_cookie<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers_all("set-cookie").into_iter().find_map(|c| {
        c.split(';')
            .next()
            .and_then(|kv| kv.trim().strip_prefix(&format!("{name}=")))
    })
}

fn origin(gw: &TestGateway) -> String {
    format!("http://{}", gw.addr)
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    http::request(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// A portal page's CSRF token: (cookie pair for the `Cookie` header, token).
pub async fn csrf(gw: &TestGateway, path: &str) -> (String, String) {
    let r = send(gw.addr, "GET", path, &[("accept", "text/html")], None).await;
    assert_eq!(r.status, 200, "{path}: {r:?}");
    let token = set_cookie(&r, "__Host-portcullis-csrf")
        .unwrap_or_else(|| panic!("no CSRF cookie: {r:?}"))
        .to_string();
    assert!(
        r.text()
            .contains(&format!("name=\"csrf\" value=\"{token}\"")),
        "the form carries the cookie's token"
    );
    (format!("__Host-portcullis-csrf={token}"), token)
}

pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// POST a portal form with the right token and Origin.
pub async fn post_form(
    gw: &TestGateway,
    path: &str,
    pairs: &[(&str, &str)],
    cookie: Option<&str>,
) -> Response {
    let (csrf_cookie, token) = csrf(gw, "/auth/ui/login").await;
    let mut all = vec![("csrf", token.as_str())];
    all.extend_from_slice(pairs);
    let cookies = match cookie {
        Some(c) => format!("{csrf_cookie}; __Host-portcullis={c}"),
        None => csrf_cookie,
    };
    let body = form(&all);
    let o = origin(gw);
    send(
        gw.addr,
        "POST",
        path,
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("origin", &o),
            ("cookie", &cookies),
            ("accept", "text/html"),
        ],
        Some(body.as_bytes()),
    )
    .await
}

/// Sign in on the portal; returns the session cookie's value.
pub async fn portal_login(gw: &TestGateway, email: &str, rd: &str) -> String {
    let r = post_form(
        gw,
        "/auth/ui/login",
        &[("email", email), ("password", PASSWORD), ("rd", rd)],
        None,
    )
    .await;
    assert_eq!(r.status, 303, "portal login: {r:?}");
    assert_eq!(r.header("location"), Some(rd));
    let set = r
        .headers_all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("__Host-portcullis="))
        .unwrap_or_else(|| panic!("no session cookie: {r:?}"));
    for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax"] {
        assert!(set.split("; ").any(|a| a == attr), "{attr} missing: {set}");
    }
    assert!(
        !set.contains("Domain="),
        "a __Host- cookie has no Domain: {set}"
    );
    let value = set_cookie(&r, "__Host-portcullis").unwrap().to_string();
    assert!(
        !value.contains('.'),
        "the cookie never holds a JWT: {value}"
    );
    value
}

/// A browser navigation with the session cookie.
pub async fn browse(gw: &TestGateway, path: &str, cookie: &str) -> Response {
    let c = format!("__Host-portcullis={cookie}; theme=dark");
    send(
        gw.addr,
        "GET",
        path,
        &[
            ("accept", "text/html,application/xhtml+xml"),
            ("cookie", &c),
        ],
        None,
    )
    .await
}

#[track_caller]
fn assert_to_login(r: &Response, rd: &str) {
    assert_eq!(r.status, 302, "{r:?}");
    let enc: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
    assert_eq!(
        r.header("location"),
        Some(format!("/auth/ui/login?rd={enc}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_are_sent_to_the_portal_and_api_clients_keep_their_401() {
    let gw = TestGateway::start_with(builder()).await;
    let html = [("accept", "text/html")];
    let r = send(gw.addr, "GET", "/app/page?x=1&y=%2F", &html, None).await;
    assert_to_login(&r, "/app/page?x=1&y=%2F");
    let r = send(gw.addr, "HEAD", "/app/page", &html, None).await;
    assert_to_login(&r, "/app/page");
    // Not a browser navigation: the API's 401.
    for (method, accept) in [
        ("GET", "application/json"),
        ("GET", "*/*"),
        ("POST", "text/html"),
        ("DELETE", "text/html"),
    ] {
        let r = send(
            gw.addr,
            method,
            "/app/page",
            &[("accept", accept)],
            Some(b""),
        )
        .await;
        assert_error(&r, 401, "unauthorized");
    }
    // A bearer that fails is a 401 whatever it accepts.
    let r = send(
        gw.addr,
        "GET",
        "/app/page",
        &[("accept", "text/html"), ("authorization", "Bearer x.y.z")],
        None,
    )
    .await;
    assert_error(&r, 401, "unauthorized");
    // Public routes are never redirected.
    let r = send(gw.addr, "GET", "/public/x", &html, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(gw.upstream.hits(), 1);

    // Without [browser]: no portal, no redirect.
    let plain = TestGateway::start().await;
    let r = send(plain.addr, "GET", "/x", &html, None).await;
    assert_error(&r, 401, "unauthorized");
    let r = send(plain.addr, "GET", "/auth/ui/login", &html, None).await;
    assert_error(&r, 404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rd_is_only_ever_a_same_origin_path() {
    let gw = TestGateway::start_with(builder()).await;
    gw.signup("rd@example.com").await;
    let hostile = [
        "//evil.example",
        "///evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "/\\/evil.example",
        "https://evil.example",
        "https:evil.example",
        "http:/evil.example",
        "javascript:alert(1)",
        "evil.example",
        "%2F%2Fevil.example",
        "/%2F%2Fevil.example",
        "/%2fevil.example",
        "/%5Cevil.example",
        "/%5cevil.example",
        "/%252F%252Fevil.example",
        "/a\r\nSet-Cookie: x=1",
        "/a%0d%0aSet-Cookie:%20x=1",
        "/a%0aLocation:%20//evil.example",
        "/\t/evil.example",
        "/ /evil.example",
        "/é",
        "/auth/refresh",
        "",
    ];
    for rd in hostile {
        let enc: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
        // The sign-in page carries only a safe target on.
        let r = send(
            gw.addr,
            "GET",
            &format!("/auth/ui/login?rd={enc}"),
            &[("accept", "text/html")],
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{rd:?}");
        assert!(
            r.text().contains(r#"name="rd" value="/""#),
            "{rd:?} was carried on"
        );
        // And signing in with it lands on "/".
        let r = post_form(
            &gw,
            "/auth/ui/login",
            &[
                ("email", "rd@example.com"),
                ("password", PASSWORD),
                ("rd", rd),
            ],
            None,
        )
        .await;
        assert_eq!(r.status, 303, "{rd:?}: {r:?}");
        assert_eq!(r.header("location"), Some("/"), "{rd:?}");
        // The redirect of a request whose own path is hostile: the
        // normalizer refuses it, or it is carried as a plain path.
        let r = send(
            gw.addr,
            "GET",
            &format!("/auth/ui/login?rd={enc}&rd=/app"),
            &[("accept", "text/html")],
            None,
        )
        .await;
        assert!(!r.text().contains("evil.example\""), "{rd:?}");
    }
    // A hostile target in the passkey sign-in is refused the same way:
    // checked in the same function (unit-tested in browser).
    let good = "/app/x?y=1&z=%2F";
    let r = post_form(
        &gw,
        "/auth/ui/login",
        &[
            ("email", "rd@example.com"),
            ("password", PASSWORD),
            ("rd", good),
        ],
        None,
    )
    .await;
    assert_eq!(r.header("location"), Some(good));
    // A request path that would make a scheme-relative rd is normalized
    // before it is carried.
    let r = send(
        gw.addr,
        "GET",
        "//evil.example/x",
        &[("accept", "text/html")],
        None,
    )
    .await;
    if r.status == 302 {
        let loc = r.header("location").unwrap();
        assert!(!loc.contains("rd=%2F%2F"), "{loc}");
    } else {
        assert_eq!(r.status, 400, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_becomes_the_identity_headers_and_never_goes_upstream() {
    let gw = TestGateway::start_with(builder()).await;
    let s = gw.signup("cookie@example.com").await;
    let cookie = portal_login(&gw, "cookie@example.com", "/app/home").await;
    let r = browse(&gw, "/app/home?q=1", &cookie).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echoed(&r, "x-user-email"), ["cookie@example.com"]);
    assert_eq!(echoed(&r, "x-user-id"), [s.user["id"].as_str().unwrap()]);
    assert_eq!(echoed(&r, "x-user-auth-method"), ["jwt"]);
    // Other cookies pass; ours stay at the gateway.
    assert_eq!(echoed(&r, "cookie"), ["theme=dark"]);
    assert!(
        r.header("set-cookie").is_none(),
        "no rotation while the token lives"
    );
    // The portal pages know the session.
    let r = browse(&gw, "/auth/ui/sessions", &cookie).await;
    assert_eq!(r.status, 200, "{r:?}");
    let page = r.text();
    assert!(page.contains("cookie@example.com") && page.contains(r#"<span id="amr">pwd</span>"#));
    let csp = r.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(!page.contains("<script>"), "no inline script");
    // A cookie that is not ours, or is there twice, is no session.
    for c in ["nonsense", &format!("{cookie}; __Host-portcullis={cookie}")] {
        let r = browse(&gw, "/app/x", c).await;
        assert_to_login(&r, "/app/x");
    }
    // A bearer still wins over the cookie.
    let r = send(
        gw.addr,
        "GET",
        "/app/x",
        &[
            ("authorization", &format!("Bearer {}", s.access)),
            ("cookie", "__Host-portcullis=nonsense"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_parallel_requests_share_one_cookie_rotation_and_an_old_cookie_is_reuse() {
    let gw = TestGateway::start_with(builder()).await;
    gw.signup("rotate@example.com").await;
    let c0 = portal_login(&gw, "rotate@example.com", "/").await;
    // The access token behind the cookie expires.
    gw.clock.advance(900 + 30 + 1);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (addr, c0) = (gw.addr, c0.clone());
        set.spawn(async move {
            let c = format!("__Host-portcullis={c0}");
            http::request(
                addr,
                "GET",
                "/app/x",
                &[("accept", "text/html"), ("cookie", &c)],
                None,
            )
            .await
            .unwrap()
        });
    }
    let mut news = std::collections::BTreeSet::new();
    while let Some(r) = set.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(echoed(&r, "x-user-email"), ["rotate@example.com"]);
        news.insert(
            set_cookie(&r, "__Host-portcullis")
                .expect("rotated cookie")
                .to_string(),
        );
    }
    assert_eq!(news.len(), 1, "one rotation: {news:?}");
    // A response that sets the cookie is never stored by a shared cache.
    let r = browse(&gw, "/app/x", &c0).await;
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let c1 = news.into_iter().next().unwrap();
    assert_ne!(c1, c0);
    let r = browse(&gw, "/app/x", &c1).await;
    assert_eq!(r.status, 200);
    assert!(set_cookie(&r, "__Host-portcullis").is_none());
    // Within the window, a request still carrying c0 gets c1 again.
    let r = browse(&gw, "/app/x", &c0).await;
    assert_eq!(r.status, 200);
    assert_eq!(set_cookie(&r, "__Host-portcullis"), Some(c1.as_str()));
    // Later, c0 is a replayed refresh token: the session ends, for c1 too.
    gw.clock.advance(portcullis::browser::ROTATION_WINDOW + 1);
    let r = browse(&gw, "/app/x", &c0).await;
    assert_to_login(&r, "/app/x");
    assert_eq!(
        set_cookie(&r, "__Host-portcullis"),
        Some(""),
        "the cookie is cleared"
    );
    let r = browse(&gw, "/app/x", &c1).await;
    assert_to_login(&r, "/app/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_logout_all_disable_and_password_change_end_cookie_sessions() {
    let gw = TestGateway::start_with(builder()).await;
    let s = gw.signup("end@example.com").await;
    let live = |c: String| {
        let gw = &gw;
        async move { browse(gw, "/app/x", &c).await.status == 200 }
    };

    // Portal sign-out.
    let c = portal_login(&gw, "end@example.com", "/").await;
    assert!(live(c.clone()).await);
    let r = post_form(&gw, "/auth/ui/logout", &[], Some(&c)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(set_cookie(&r, "__Host-portcullis"), Some(""));
    assert!(!live(c).await);

    // Sign out everywhere, from the portal: the API session ends too.
    let c = portal_login(&gw, "end@example.com", "/").await;
    let r = post_form(&gw, "/auth/ui/logout", &[("everywhere", "1")], Some(&c)).await;
    assert_eq!(r.status, 200);
    assert!(!live(c).await);
    assert_eq!(gw.get("/app/x", Some(&s.access)).await.status, 401);

    // logout-all through the API.
    let s = gw.signin("end@example.com", PASSWORD).await;
    let c = portal_login(&gw, "end@example.com", "/").await;
    assert_eq!(
        gw.post("/auth/logout-all", json!({}), Some(&s.access))
            .await
            .status,
        204
    );
    assert!(!live(c).await);

    // Password change through the API ends the other sessions.
    let s = gw.signin("end@example.com", PASSWORD).await;
    let c = portal_login(&gw, "end@example.com", "/").await;
    let new = "another horse battery staple";
    let r = gw
        .post(
            "/auth/password/change",
            json!({ "current_password": PASSWORD, "new_password": new, "new_password_confirm": new }),
            Some(&s.access),
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert!(!live(c).await);

    // Disabled by an administrator.
    gw.admin_add_user("off@example.com", &[]).await;
    let c = portal_login(&gw, "off@example.com", "/").await;
    assert!(live(c.clone()).await);
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
            json!({ "op": "disable", "email": "off@example.com" })
                .to_string()
                .as_bytes(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!live(c).await);

    // Signing out another session from the sessions page.
    gw.signup("rev@example.com").await;
    let keep = portal_login(&gw, "rev@example.com", "/").await;
    let other = portal_login(&gw, "rev@example.com", "/").await;
    let page = browse(&gw, "/auth/ui/sessions", &keep).await.text();
    let ids: Vec<String> = page
        .split(r#"name="id" value=""#)
        .skip(1)
        .map(|s| s.split('"').next().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "the API session and `other`: {page}");
    for id in &ids {
        let r = post_form(&gw, "/auth/ui/sessions/revoke", &[("id", id)], Some(&keep)).await;
        assert_eq!(r.status, 303, "{r:?}");
    }
    assert!(!live(other).await);
    assert!(live(keep).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_requests_riding_on_the_cookie_are_refused() {
    let gw = TestGateway::start_with(builder()).await;
    gw.signup("csrf@example.com").await;
    let c = portal_login(&gw, "csrf@example.com", "/").await;
    let cookie = format!("__Host-portcullis={c}");
    let hits = gw.upstream.hits();
    let body = b"amount=100&to=mallory";
    for origin in [
        Some("https://evil.example"),
        Some("null"),
        Some("http://127.0.0.1:1"),
        Some(&format!("{}.evil.example", ALLOWED)),
        None,
    ] {
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            let mut h = vec![
                ("cookie", cookie.as_str()),
                ("content-type", "application/x-www-form-urlencoded"),
            ];
            if let Some(o) = origin {
                h.push(("origin", o));
            }
            let r = send(gw.addr, method, "/app/transfer", &h, Some(body)).await;
            assert_error(&r, 403, "forbidden");
        }
    }
    // A Referer from another site is no better.
    let r = send(
        gw.addr,
        "POST",
        "/app/transfer",
        &[
            ("cookie", &cookie),
            ("referer", "https://evil.example/page"),
        ],
        Some(body),
    )
    .await;
    assert_error(&r, 403, "forbidden");
    assert_eq!(gw.upstream.hits(), hits, "nothing reached the upstream");
    // Same origin, an allowed origin, or the same-origin Referer pass.
    let own = origin(&gw);
    let referer = format!("{own}/app/form");
    for h in [
        ("origin", own.as_str()),
        ("origin", ALLOWED),
        ("referer", referer.as_str()),
    ] {
        let r = send(
            gw.addr,
            "POST",
            "/app/transfer",
            &[("cookie", &cookie), h],
            Some(body),
        )
        .await;
        assert_eq!(r.status, 200, "{h:?}: {r:?}");
    }
    // A bearer request carries no ambient credential: no Origin needed.
    let s = gw.signin("csrf@example.com", PASSWORD).await;
    let r = send(
        gw.addr,
        "POST",
        "/app/transfer",
        &[("authorization", &format!("Bearer {}", s.access))],
        Some(body),
    )
    .await;
    assert_eq!(r.status, 200);

    // The portal's forms: token and Origin both needed.
    let (csrf_cookie, token) = csrf(&gw, "/auth/ui/login").await;
    let good = form(&[
        ("csrf", &token),
        ("email", "csrf@example.com"),
        ("password", PASSWORD),
    ]);
    let wrong = form(&[
        ("csrf", "A".repeat(43).as_str()),
        ("email", "csrf@example.com"),
        ("password", PASSWORD),
    ]);
    let none = form(&[("email", "csrf@example.com"), ("password", PASSWORD)]);
    let ct = ("content-type", "application/x-www-form-urlencoded");
    let (cc, own_o) = (csrf_cookie.as_str(), own.as_str());
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![ct, ("cookie", cc), ("origin", "https://evil.example")],
            good.as_str(),
        ),
        (vec![ct, ("cookie", cc)], good.as_str()),
        (vec![ct, ("cookie", cc), ("origin", own_o)], wrong.as_str()),
        (vec![ct, ("cookie", cc), ("origin", own_o)], none.as_str()),
        (vec![ct, ("origin", own_o)], good.as_str()),
    ];
    for (h, b) in cases {
        let r = send(gw.addr, "POST", "/auth/ui/login", &h, Some(b.as_bytes())).await;
        assert_eq!(r.status, 403, "{h:?} {b}: {r:?}");
        assert!(set_cookie(&r, "__Host-portcullis").is_none());
    }
    let r = send(
        gw.addr,
        "POST",
        "/auth/ui/login",
        &[ct, ("cookie", &csrf_cookie), ("origin", &own)],
        Some(good.as_bytes()),
    )
    .await;
    assert_eq!(r.status, 303, "{r:?}");
    // The passkey script's JSON calls take the token as a header.
    for (h, want) in [
        (
            vec![
                ("content-type", "application/json"),
                ("cookie", csrf_cookie.as_str()),
                ("origin", own.as_str()),
            ],
            403,
        ),
        (
            vec![
                ("content-type", "application/json"),
                ("cookie", csrf_cookie.as_str()),
                ("origin", "https://evil.example"),
                ("x-csrf-token", token.as_str()),
            ],
            403,
        ),
        (
            vec![
                ("content-type", "application/json"),
                ("cookie", csrf_cookie.as_str()),
                ("origin", own.as_str()),
                ("x-csrf-token", token.as_str()),
            ],
            200,
        ),
    ] {
        let r = send(
            gw.addr,
            "POST",
            "/auth/ui/passkeys/login/start",
            &h,
            Some(b"{}"),
        )
        .await;
        assert_eq!(r.status, want, "{h:?}: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_on_the_auth_api_allows_exactly_the_listed_origins() {
    let gw = TestGateway::start_with(builder()).await;
    gw.signup("cors@example.com").await;
    let pre = |origin: &'static str, method: &'static str, headers: &'static str| {
        let addr = gw.addr;
        async move {
            send(
                addr,
                "OPTIONS",
                "/auth/login",
                &[
                    ("origin", origin),
                    ("access-control-request-method", method),
                    ("access-control-request-headers", headers),
                ],
                None,
            )
            .await
        }
    };
    let r = pre(ALLOWED, "POST", "content-type").await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some(ALLOWED));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert!(r
        .header("access-control-allow-headers")
        .unwrap()
        .contains("authorization"));
    assert!(r.header("vary").unwrap().contains("Origin"));
    for (o, m, h) in [
        ("https://evil.example", "POST", "content-type"),
        ("https://app.example.com.evil.example", "POST", ""),
        ("http://app.example.com", "POST", ""),
        ("null", "POST", ""),
        (ALLOWED, "PUT", ""),
        (ALLOWED, "POST", "x-custom"),
    ] {
        let r = pre(o, m, h).await;
        assert_eq!(r.status, 403, "{o} {m} {h}: {r:?}");
        assert!(r.header("access-control-allow-origin").is_none());
        assert!(r.header("vary").unwrap().contains("Origin"));
    }
    // Actual requests: the allowed origin may read, with credentials.
    let body = json!({ "email": "cors@example.com", "password": PASSWORD });
    let r = http::post_with(gw.addr, "/auth/login", &body, &[("origin", ALLOWED)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(ALLOWED));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = http::post_with(
        gw.addr,
        "/auth/login",
        &body,
        &[("origin", "https://evil.example")],
    )
    .await;
    assert!(r.header("access-control-allow-origin").is_none());
    assert!(r.header("access-control-allow-credentials").is_none());
    assert_eq!(r.header("vary"), Some("Origin"));
    // Never a wildcard; no CORS at all without an Origin, or on the portal.
    let r = gw.get("/auth/me", None).await;
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = send(
        gw.addr,
        "GET",
        "/auth/ui/login",
        &[("origin", ALLOWED)],
        None,
    )
    .await;
    assert!(r.header("access-control-allow-origin").is_none());
    let r = send(
        gw.addr,
        "OPTIONS",
        "/auth/ui/login",
        &[
            ("origin", ALLOWED),
            ("access-control-request-method", "POST"),
        ],
        None,
    )
    .await;
    assert!(r.header("access-control-allow-origin").is_none(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_pages_answer_with_generic_errors_and_never_a_500() {
    let gw = TestGateway::start_with(builder()).await;
    gw.signup("pages@example.com").await;
    for path in [
        "/auth/ui/login",
        "/auth/ui/register",
        "/auth/ui/forgot",
        "/auth/ui/reset?token=x",
        "/auth/ui/verify?token=x",
        "/auth/ui/logout",
    ] {
        let r = send(gw.addr, "GET", path, &[("accept", "text/html")], None).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let page = r.text();
        assert!(
            page.contains("<main>") && page.contains(r#"lang="en""#),
            "{path}"
        );
        // Every visible field has its label.
        let inputs = page.matches("<input id=").count();
        assert_eq!(inputs, page.matches("<label for=").count(), "{path}");
        assert!(
            !page.contains("<script>") && !page.contains(" style="),
            "{path}: inline script or style"
        );
    }
    let r = send(gw.addr, "GET", "/auth/ui/static/passkey.js", &[], None).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));
    // Wrong password: the API's generic message, 401.
    let r = post_form(
        &gw,
        "/auth/ui/login",
        &[
            ("email", "pages@example.com"),
            ("password", "wrong password!"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("The email or password is incorrect."));
    let r = post_form(
        &gw,
        "/auth/ui/login",
        &[
            ("email", "nobody@example.com"),
            ("password", "wrong password!"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("The email or password is incorrect."));
    // Sign-up problems are listed; an existing account is the API's answer.
    let r = post_form(
        &gw,
        "/auth/ui/register",
        &[
            ("email", "x"),
            ("password", "short"),
            ("password_confirm", "other"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("Some fields are invalid."),
        "{}",
        r.text()
    );
    let r = post_form(
        &gw,
        "/auth/ui/register",
        &[
            ("email", "new@example.com"),
            ("password", PASSWORD),
            ("password_confirm", PASSWORD),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    // Forgot: the same answer whoever asks.
    let a = post_form(
        &gw,
        "/auth/ui/forgot",
        &[("email", "pages@example.com")],
        None,
    )
    .await;
    let b = post_form(
        &gw,
        "/auth/ui/forgot",
        &[("email", "ghost@example.com")],
        None,
    )
    .await;
    let main = |r: &Response| {
        let t = r.text();
        t[t.find("<main>").unwrap()..t.find("</main>").unwrap()].to_string()
    };
    assert_eq!((a.status, main(&a)), (b.status, main(&b)));
    // Bad tokens.
    let r = post_form(
        &gw,
        "/auth/ui/reset",
        &[
            ("token", "nope"),
            ("new_password", PASSWORD),
            ("new_password_confirm", PASSWORD),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("The token is invalid or expired."));
    let r = post_form(&gw, "/auth/ui/verify", &[("token", "nope")], None).await;
    assert_eq!(r.status, 400);
    // Email links land on the portal.
    let r = send(gw.addr, "GET", "/auth/email/verify?token=abc", &[], None).await;
    assert_eq!(
        (r.status, r.header("location")),
        (302, Some("/auth/ui/verify?token=abc"))
    );
    let r = send(gw.addr, "GET", "/auth/password/reset?token=abc", &[], None).await;
    assert_eq!(
        (r.status, r.header("location")),
        (302, Some("/auth/ui/reset?token=abc"))
    );
    // Junk: never a 500.
    for (m, p, b) in [
        (
            "POST",
            "/auth/ui/passkeys/login/finish",
            "{\"ceremony\":\"x\",\"credential\":{}}",
        ),
        ("POST", "/auth/ui/passkeys/register/start", "{}"),
        ("POST", "/auth/ui/nothing", ""),
        ("PUT", "/auth/ui/login", ""),
        ("GET", "/auth/ui/sessions", ""),
    ] {
        let r = send(
            gw.addr,
            m,
            p,
            &[("content-type", "application/json")],
            Some(b.as_bytes()),
        )
        .await;
        assert!(r.status < 500, "{m} {p}: {r:?}");
    }
    // The sessions page without a session goes to sign-in.
    let r = send(
        gw.addr,
        "GET",
        "/auth/ui/sessions",
        &[("accept", "text/html")],
        None,
    )
    .await;
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header("location"),
        Some("/auth/ui/login?rd=%2Fauth%2Fui%2Fsessions")
    );
}

/// The Selenium venv, installed into the target dir on first use (pinned;
/// the browser and driver are Debian's, from `.ci/deps --test`); one
/// install at a time across test threads and processes. The browser,
/// console and federation tests all use it.
pub fn selenium_python() -> std::path::PathBuf {
    use std::path::Path;
    for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: run .ci/deps --test"
        );
    }
    venv::python("selenium-venv", &["selenium==4.40.0"])
}

/// The whole browser journey in a real Chromium (tests/browser/portal_e2e.py):
/// redirect, sign-up, email verification, sign-in and arrival with the
/// identity headers; refresh after the access token expired (the test
/// clock moves); a cross-site form POST from another port, refused; CORS
/// from an allowed and a disallowed origin; a passkey registered in
/// Chrome's virtual authenticator, sign-out, and sign-in with the passkey
/// alone (`amr` webauthn). Screenshots go to `target/tmp/screenshots`, or
/// to `$PORTCULLIS_SCREENSHOTS` (the README's are in docs/screenshots).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chromium_signs_in_refreshes_signs_out_and_uses_a_passkey() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    let py = tokio::task::spawn_blocking(selenium_python).await.unwrap();
    let (evil_port, allowed_port) = (free_port(), free_port());
    let mut b = builder();
    b.with_smtp = true;
    b.link_base_url = "https://localhost:{TLS_PORT}".into();
    b.extra = format!(
        "[browser]\nenabled = true\nallowed_origins = [\"https://localhost:{allowed_port}\"]\n\n[throttle]\nauth_per_minute = 0\n"
    );
    let gw = TestGateway::start_with(b).await;
    let shots = std::env::var("PORTCULLIS_SCREENSHOTS")
        .unwrap_or_else(|_| format!("{}/screenshots", env!("CARGO_TARGET_TMPDIR")));
    let cfg = json!({
        "gateway": format!("https://localhost:{}", gw.tls_addr.port()),
        "email": "browser@example.com",
        "password": PASSWORD,
        "evil_port": evil_port,
        "allowed_port": allowed_port,
        "cert": gw.cert_path(),
        "key": gw.dir.path().join("certs/key.pem"),
        "screenshots": shots,
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/portal_e2e.py");
    let started = std::time::Instant::now();
    let mut child = Command::new(&py)
        .arg(script)
        .arg(cfg.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the browser test");
    let err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut { err }, &mut s);
        s
    });
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut log = Vec::new();
    // The script talks to us on stdout; block_in_place keeps the upstream,
    // SMTP and the gateway's tasks running meanwhile.
    tokio::task::block_in_place(|| {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            let answer = if let Some(secs) = line.strip_prefix("ADVANCE ") {
                gw.clock.advance(secs.trim().parse().unwrap());
                Some("OK".to_string())
            } else if let Some(rest) = line.strip_prefix("MAILTOKEN ") {
                let (to, link) = rest.split_once(' ').unwrap();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
                let token = loop {
                    let found = gw
                        .smtp()
                        .messages()
                        .iter()
                        .rev()
                        .filter(|m| m.to.iter().any(|t| t.contains(to)))
                        .find_map(|m| m.token_from_link(link));
                    if let Some(t) = found {
                        break t;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no mail to {to} with {link}"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(50));
                };
                Some(format!("OK {token}"))
            } else {
                None
            };
            if let Some(a) = answer {
                writeln!(stdin, "{a}").unwrap();
                stdin.flush().unwrap();
            }
            log.push(line);
        }
    });
    let status = child.wait().unwrap();
    let stderr = stderr.join().unwrap_or_default();
    eprintln!("browser test took {:?}", started.elapsed());
    assert!(
        status.success() && log.last().map(String::as_str) == Some("PASSED"),
        "the browser test failed ({status}):\n{}\n{stderr}",
        log.join("\n")
    );
    // The passkey added in the browser was announced to its owner, with
    // no secret in the notice (CONTRACT 8.6).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let notice = loop {
        let found = gw.smtp().messages().into_iter().find(|m| {
            m.to.iter().any(|t| t.contains("browser@example.com"))
                && m.subject()
                    .is_some_and(|s| s.contains("A passkey was added"))
        });
        if let Some(m) = found {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "no passkey notice");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(notice.body_text().contains("new passkey"));
    assert!(!notice.data.contains("token=") && !notice.data.contains(PASSWORD));
    // What the upstream saw: identities, and never the cross-site POST.
    let requests = gw.upstream.requests();
    assert!(
        requests.iter().all(|r| r["method"] != "POST"),
        "a POST reached the app"
    );
    let seen: Vec<String> = requests
        .iter()
        .flat_map(|r| echoed_in(r, "x-user-email"))
        .collect();
    assert!(
        seen.len() >= 4 && seen.iter().all(|e| e == "browser@example.com"),
        "{seen:?}"
    );
    assert!(requests.iter().all(|r| echoed_in(r, "cookie")
        .iter()
        .all(|c| !c.contains("__Host-portcullis"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_totp_account_signs_in_on_the_portal_with_its_second_factor() {
    use crate::common::totp::{base32_decode, code_at};
    use portcullis::clock::Clock;
    let gw = TestGateway::start_with(builder()).await;
    let s = gw.signup("totp@example.com").await;
    let r = gw
        .post("/auth/mfa/totp/enroll", json!({}), Some(&s.access))
        .await;
    let secret = base32_decode(r.json()["secret"].as_str().unwrap());
    let code = code_at(&secret, gw.clock.now());
    let r = gw
        .post(
            "/auth/mfa/totp/confirm",
            json!({ "code": code }),
            Some(&s.access),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    gw.clock.advance(30);
    // The password alone gives the second-factor page, and no cookie.
    let r = post_form(
        &gw,
        "/auth/ui/login",
        &[
            ("email", "totp@example.com"),
            ("password", PASSWORD),
            ("rd", "/app/2fa"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(set_cookie(&r, "__Host-portcullis").is_none());
    let page = r.text();
    let token = page
        .split(r#"name="mfa_token" value=""#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the mfa_token field")
        .to_string();
    // A wrong code: the API's message, the page again.
    let r = post_form(
        &gw,
        "/auth/ui/mfa",
        &[
            ("mfa_token", &token),
            ("code", "000000"),
            ("rd", "/app/2fa"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r
        .text()
        .contains("The code is invalid or was already used."));
    let code = code_at(&secret, gw.clock.now());
    let r = post_form(
        &gw,
        "/auth/ui/mfa",
        &[("mfa_token", &token), ("code", &code), ("rd", "/app/2fa")],
        None,
    )
    .await;
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), Some("/app/2fa"));
    let cookie = set_cookie(&r, "__Host-portcullis").unwrap().to_string();
    let page = browse(&gw, "/auth/ui/sessions", &cookie).await.text();
    assert!(page.contains(r#"<span id="amr">pwd, otp</span>"#), "{page}");
}

/// One sign-in across two hosts in a real Chromium (issue 24,
/// tests/browser/shared_signin.py): `browser.cookie_domain` set, routes on
/// `app1.portcullis.test` and `app2.portcullis.test`, the portal on
/// `auth.portcullis.test` (all resolved to 127.0.0.1 by Chromium's
/// `--host-resolver-rules`, on the gateway's TLS port). app1's
/// unauthenticated navigation goes to the portal and back after one
/// sign-in; app2 then reaches its upstream with the identity and no second
/// sign-in; `rd` to a foreign host, or to a name under the domain that no
/// route serves, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chromium_signs_in_once_for_two_hosts_under_the_cookie_domain() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let py = tokio::task::spawn_blocking(selenium_python).await.unwrap();
    let b = Builder {
        extra: "[browser]\nenabled = true\ncookie_domain = \"portcullis.test\"\n\n[throttle]\nauth_per_minute = 0\n".into(),
        link_base_url: "https://auth.portcullis.test:{TLS_PORT}".into(),
        routes: r#"
[[routes]]
prefix = "/"
host = "app1.portcullis.test"
upstream = "{UP}"
auth = "required"

[[routes]]
prefix = "/"
host = "app2.portcullis.test"
upstream = "{UP}"
auth = "required"
"#
        .into(),
        ..Default::default()
    };
    let gw = TestGateway::start_with(b).await;
    let email = "hosts@example.test";
    gw.admin_add_user(email, &[]).await;
    let cfg = json!({
        "port": gw.tls_addr.port(),
        "email": email,
        "password": PASSWORD,
    });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/browser/shared_signin.py"
    );
    let mut child = Command::new(&py)
        .arg(script)
        .arg(cfg.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the browser test");
    let err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut { err }, &mut s);
        s
    });
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let log: Vec<String> =
        tokio::task::block_in_place(|| stdout.lines().map_while(Result::ok).collect());
    let status = tokio::task::block_in_place(|| child.wait().unwrap());
    let stderr = stderr.join().unwrap_or_default();
    assert!(
        status.success() && log.last().map(String::as_str) == Some("PASSED"),
        "the browser test failed ({status}):\n{}\n{stderr}",
        log.join("\n")
    );
    // What the upstream saw: both apps, each with the identity, and one
    // sign-in only (the user's one session).
    let requests = gw.upstream.requests();
    for host in ["app1.portcullis.test", "app2.portcullis.test"] {
        assert!(
            requests
                .iter()
                .any(|r| echoed_in(r, "x-forwarded-host") == [host]
                    && echoed_in(r, "x-user-email") == [email]),
            "{host} never reached with the identity: {requests:?}"
        );
    }
    assert!(requests.iter().all(|r| echoed_in(r, "cookie")
        .iter()
        .all(|c| !c.contains("portcullis"))));
}
