//! Credentials that reached upstreams, and cookie sessions at the edge
//! (issue 20, an outside black-box review). Each test boots the real
//! gateway and asserts what the echo upstream received, or what the
//! browser got back.

use crate::browser::{self as b, portal_login, set_cookie};
use crate::common::http;

use super::*;

const SESSION: &str = "__Host-portcullis";
const CSRF: &str = "__Host-portcullis-csrf";

/// `[browser]` on, plus the routes these tests answer locally on.
fn browser_builder(extra_routes: &str) -> Builder {
    let mut bld = b::builder();
    bld.routes.push_str(extra_routes);
    bld
}

/// Credential leak to a third party (ASVS 4.0.3 V3.5.2 / V13.1.3;
/// CWE-522, CWE-200): an API key sent to a `public` route (which never
/// checks keys) was forwarded as it came, `X-API-Key` and a `pk_` bearer
/// alike, even where the route forwards `Authorization`. Both forms are
/// removed on every route; a JWT still passes where the route forwards it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_never_reach_the_upstream_of_a_public_route() {
    let routes = format!(
        "{DEFAULT_ROUTES}\n[[routes]]\nprefix = \"/pubfwd\"\nupstream = \"{{UP}}\"\nauth = \"public\"\nforward_authorization = true\n\n[[routes]]\nprefix = \"/read\"\nupstream = \"{{UP}}\"\nauth = \"required\"\nscopes = [\"read\"]\n"
    );
    let gw = TestGateway::start_with(Builder {
        extra: "[throttle]\nauth_per_minute = 0\n".into(),
        routes,
        ..Default::default()
    })
    .await;
    let s = gw.signup("leak@example.com").await;
    let key = crate::api_keys::create(&gw, &s.access, json!({ "name": "k", "scopes": ["read"] }))
        .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let bearer_key = bearer(&key);
    let lower = format!("bearer {key}");
    for (path, h) in [
        ("/public/x", ("X-API-Key", key.as_str())),
        ("/public/x", ("x-api-key", "pk_not_even_a_real_one")),
        ("/public/x", ("Authorization", bearer_key.as_str())),
        ("/pubfwd/x", ("X-API-Key", key.as_str())),
        ("/pubfwd/x", ("Authorization", bearer_key.as_str())),
        ("/pubfwd/x", ("Authorization", lower.as_str())),
    ] {
        let r = get_with(&gw, path, &[h]).await;
        assert_eq!(r.status, 200, "{path} {h:?}: {r:?}");
        assert!(
            echoed(&r, "x-api-key").is_empty() && echoed(&r, "authorization").is_empty(),
            "{path} {h:?}: the key reached the upstream: {:?}",
            echoed_headers(&r.json())
        );
        assert!(
            !r.text().contains(&key[3..]),
            "{path}: the key is in the echo"
        );
    }
    // The key still works where it is checked, and a forwarded JWT passes.
    let r = get_with(&gw, "/read/x", &[("X-API-Key", &key)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(echoed(&r, "x-user-auth-method"), ["api_key"]);
    let jwt = bearer(&s.access);
    let r = get_with(&gw, "/pubfwd/x", &[("Authorization", &jwt)]).await;
    assert_eq!(echoed(&r, "authorization"), [jwt.as_str()]);
}

/// One raw GET whose `Cookie` line is given as bytes (not always UTF-8).
async fn get_raw_cookie(gw: &TestGateway, path: &str, cookie: &[u8]) -> http::Response {
    let mut raw = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/html\r\nConnection: close\r\nCookie: ",
        gw.addr
    )
    .into_bytes();
    raw.extend_from_slice(cookie);
    raw.extend_from_slice(b"\r\n\r\n");
    http::send_raw(gw.addr, &raw).await.unwrap()
}

#[track_caller]
fn assert_no_gateway_cookie(r: &http::Response, what: &str) {
    let got = echoed(r, "cookie");
    assert!(
        got.iter().all(|c| !c.contains("__Host-portcullis")),
        "{what}: the gateway's cookies reached the upstream: {got:?}"
    );
}

/// Session cookie forwarded upstream when the `Cookie` line is not ASCII
/// (CWE-200, CWE-172 encoding error): another app on the host sets
/// `pref=café`, the line cannot be read as a string, and it went upstream
/// whole, with the session cookie (a refresh credential) and the CSRF
/// cookie in it. The gateway's cookies are removed whatever the bytes, the
/// rest passes byte for byte, and the session still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_ascii_cookie_line_still_loses_the_gateway_cookies() {
    let gw = TestGateway::start_with(b::builder()).await;
    gw.signup("bytes@example.com").await;
    let c = portal_login(&gw, "bytes@example.com", "/").await;
    // UTF-8 `café`, then the gateway's cookies, then Latin-1 `été` (not
    // UTF-8 either).
    let mut line = b"pref=caf\xc3\xa9; ".to_vec();
    line.extend_from_slice(
        format!("{SESSION}={c}; {CSRF}=abcdefghijklmnopqrstuvwxyz0123456789").as_bytes(),
    );
    line.extend_from_slice(b"; old=\xe9t\xe9");
    for path in ["/public/x", "/app/x"] {
        let r = get_raw_cookie(&gw, path, &line).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_no_gateway_cookie(&r, path);
        let got = echoed(&r, "cookie");
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("pref=caf") && got[0].contains("old="),
            "{got:?}"
        );
    }
    // On the required route the cookie was the identity.
    let r = get_raw_cookie(&gw, "/app/x", &line).await;
    assert_eq!(echoed(&r, "x-user-email"), ["bytes@example.com"]);
    // Our cookies alone: no Cookie header at all upstream.
    let only = format!("{SESSION}={c}; {CSRF}=x");
    let r = get_raw_cookie(&gw, "/public/x", only.as_bytes()).await;
    assert!(echoed(&r, "cookie").is_empty(), "{r:?}");
}

/// Credentials forwarded after a configuration change (CWE-200; ASVS
/// V3.4): with `[browser]` turned off, or `cookie_name` renamed, browsers
/// still hold the old cookies (valid refresh credentials for up to 14
/// days), and every upstream received them. The gateway's whole cookie
/// namespace is stripped whatever `[browser]` says now; a name outside it
/// is a config error naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_cookies_are_stripped_after_browser_is_turned_off_or_renamed() {
    let mut gw = TestGateway::start_with(b::builder()).await;
    gw.signup("renamed@example.com").await;
    let c = portal_login(&gw, "renamed@example.com", "/").await;
    let line = format!("{SESSION}={c}; {CSRF}=t0k3n; theme=dark");
    let original = gw.toml.clone();
    for (what, toml) in [
        (
            "browser off",
            original.replace("enabled = true", "enabled = false"),
        ),
        (
            "cookie renamed",
            original.replace(
                "[browser]\n",
                "[browser]\ncookie_name = \"__Host-portcullis-v2\"\n",
            ),
        ),
    ] {
        gw.write_toml(&toml);
        let r = gw.admin_reload().await;
        assert_eq!(r.status, 200, "{what}: {r:?}");
        for path in ["/public/x", "/optional/x"] {
            let r = get_raw_cookie(&gw, path, line.as_bytes()).await;
            assert_eq!(r.status, 200, "{what} {path}: {r:?}");
            assert_eq!(echoed(&r, "cookie"), ["theme=dark"], "{what} {path}");
        }
    }
    // The same after a restart with the browser off.
    gw.write_toml(&original.replace("enabled = true", "enabled = false"));
    gw.restart();
    let r = get_raw_cookie(&gw, "/public/x", line.as_bytes()).await;
    assert_eq!(echoed(&r, "cookie"), ["theme=dark"]);
    // A name outside the namespace is refused, naming the key.
    let bad = original.replace(
        "[browser]\n",
        "[browser]\ncookie_name = \"__Host-session\"\n",
    );
    let e = portcullis::Config::from_toml(&bad, &|_: &str| None, std::path::Path::new("."))
        .expect_err("a cookie name outside the namespace");
    assert!(e.to_string().contains("browser.cookie_name"), "{e}");
}

/// Session loss by a dropped rotation (CWE-613 in reverse: the user is
/// logged out; ASVS V3.3): a cookie rotated during a request the gateway
/// then answered itself (403 for a missing role, 403 `mfa_required`, 429,
/// 502) lost its new `Set-Cookie`; the browser kept the old cookie, and
/// after the hand-over window that counted as refresh-token reuse and
/// ended the session. Every local answer carries it, and the session lives
/// on after the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_cookie_reaches_the_browser_on_every_local_answer() {
    let dead = format!("http://127.0.0.1:{}", crate::common::free_port());
    let gw = TestGateway::start_with(browser_builder(&format!(
        "\n[[routes]]\nprefix = \"/stepup\"\nupstream = \"{{UP}}\"\nauth = \"required\"\nmfa = true\n\n[[routes]]\nprefix = \"/limited\"\nupstream = \"{{UP}}\"\nauth = \"required\"\nrate_per_minute = 1\n\n[[routes]]\nprefix = \"/down\"\nupstream = \"{dead}\"\nauth = \"required\"\n"
    )))
    .await;
    gw.signup("rot@example.com").await;
    let cases = [
        ("/admin/x", 403, "forbidden"),
        ("/stepup/x", 403, "mfa_required"),
        ("/limited/x", 429, "too_many_requests"),
        ("/down/x", 502, "bad_gateway"),
    ];
    let mut cookies = Vec::new();
    for _ in cases {
        cookies.push(portal_login(&gw, "rot@example.com", "/").await);
    }
    // Every cookie's access token expires: the next request rotates it.
    gw.clock.advance(900 + 30 + 1);
    // The route's budget is spent by a bearer request of the same user.
    let s = gw.signin("rot@example.com", PASSWORD).await;
    assert_eq!(gw.get("/limited/x", Some(&s.access)).await.status, 200);
    let mut rotated = Vec::new();
    for ((path, status, code), c) in cases.iter().zip(&cookies) {
        let r = get_raw_cookie(&gw, path, format!("{SESSION}={c}").as_bytes()).await;
        assert_error(&r, *status, code);
        let new = set_cookie(&r, SESSION)
            .unwrap_or_else(|| panic!("{path}: the rotated cookie was not sent: {r:?}"));
        assert!(!new.is_empty() && new != c, "{path}: {new}");
        assert_eq!(r.header("cache-control"), Some("no-store"));
        rotated.push(new.to_string());
    }
    // After the hand-over window every new cookie is still a session.
    gw.clock.advance(portcullis::browser::ROTATION_WINDOW + 1);
    for c in &rotated {
        let r = b::browse(&gw, "/app/x", c).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(echoed(&r, "x-user-email"), ["rot@example.com"]);
    }
}

/// CSRF Origin check over TLS (ASVS V3.5.3 / V13.2.3; CWE-346 origin
/// validation error): a request that came over TLS trusted `http://{Host}`
/// as its own origin, an origin a network attacker speaks for. Over TLS
/// only the `https` origin of the host (or an allowed origin) passes; the
/// plain listener keeps both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_only_the_https_origin_of_the_host_is_trusted() {
    let gw = TestGateway::start_with(b::builder()).await;
    gw.signup("tls@example.com").await;
    let c = portal_login(&gw, "tls@example.com", "/").await;
    let cookie = format!("{SESSION}={c}");
    let host = format!("localhost:{}", gw.tls_addr.port());
    let post = |origin: String| {
        let raw = http::build_request(
            &host,
            "POST",
            "/app/transfer",
            &[("cookie", &cookie), ("origin", &origin)],
            Some(b"amount=1".as_slice()),
            false,
        );
        let (addr, cert) = (gw.tls_addr, gw.cert_path());
        async move {
            http::tls_send_raw(addr, "localhost", &cert, &raw, &[])
                .await
                .unwrap()
                .0
        }
    };
    let hits = gw.upstream.hits();
    let r = post(format!("http://{host}")).await;
    assert_error(&r, 403, "forbidden");
    assert_eq!(gw.upstream.hits(), hits, "nothing reached the upstream");
    for ok in [format!("https://{host}"), b::ALLOWED.to_string()] {
        let r = post(ok.clone()).await;
        assert_eq!(r.status, 200, "{ok}: {r:?}");
        assert_eq!(echoed(&r, "x-user-email"), ["tls@example.com"]);
    }

    // The portal's own forms too: a sign-in with the right double-submit
    // token but `Origin: http://{host}` over TLS is refused.
    let (csrf_cookie, token) = b::csrf(&gw, "/auth/ui/login").await;
    let form = b::form(&[
        ("csrf", &token),
        ("email", "tls@example.com"),
        ("password", PASSWORD),
    ]);
    let sign_in = |origin: String| {
        let raw = http::build_request(
            &host,
            "POST",
            "/auth/ui/login",
            &[
                ("cookie", &csrf_cookie),
                ("origin", &origin),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            Some(form.as_bytes()),
            false,
        );
        let (addr, cert) = (gw.tls_addr, gw.cert_path());
        async move {
            http::tls_send_raw(addr, "localhost", &cert, &raw, &[])
                .await
                .unwrap()
                .0
        }
    };
    let r = sign_in(format!("http://{host}")).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(set_cookie(&r, SESSION).is_none());
    let r = sign_in(format!("https://{host}")).await;
    assert_eq!(r.status, 303, "{r:?}");
    assert!(set_cookie(&r, SESSION).is_some());
}

/// Session loss by a flooded cache (CWE-400/770 leading to CWE-613 in
/// reverse): requests with made-up cookie values each left an entry in the
/// cookie-rotation map, which was emptied at 100,000 entries; emptying it
/// in the middle of a real browser's hand-over split its rotation in two,
/// and the second read as refresh-token reuse. Only rotations the store
/// proved valid stay (plus those under way), so the flood leaves nothing,
/// and the live hand-over survives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_cookies_leave_no_rotation_behind_and_a_hand_over_survives_them() {
    let gw = TestGateway::start_with(b::builder()).await;
    gw.signup("flood@example.com").await;
    let c0 = portal_login(&gw, "flood@example.com", "/").await;
    gw.clock.advance(900 + 30 + 1);
    let r = b::browse(&gw, "/app/x", &c0).await;
    assert_eq!(r.status, 200);
    let c1 = set_cookie(&r, SESSION).expect("rotated").to_string();
    let cookies = &gw.handle().auth.cookies;
    assert_eq!(cookies.rotations_held(), 1, "the live hand-over");

    // 2,000 made-up cookie values, shaped like ours, 32 at a time.
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..2000u32 {
        let (addr, sem) = (gw.addr, sem.clone());
        set.spawn(async move {
            let _p = sem.acquire_owned().await.unwrap();
            let fake = format!("{SESSION}=made-up-{i:08}-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
            let r = http::request(
                addr,
                "GET",
                "/app/x",
                &[("accept", "application/json"), ("cookie", &fake)],
                None,
            )
            .await
            .unwrap();
            assert_eq!(r.status, 401, "{r:?}");
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    assert_eq!(
        cookies.rotations_held(),
        1,
        "made-up cookies left rotations behind"
    );
    // The browser that had not yet seen c1 still gets it: no reuse.
    let r = b::browse(&gw, "/app/x", &c0).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(set_cookie(&r, SESSION), Some(c1.as_str()));
    gw.clock.advance(portcullis::browser::ROTATION_WINDOW + 1);
    let r = b::browse(&gw, "/app/x", &c1).await;
    assert_eq!(r.status, 200, "the session lives on: {r:?}");
}
