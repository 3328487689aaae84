//! Route policy and many apps behind one gateway (issue 24, CONTRACT 8.4),
//! on the real gateway: host routes (every form a host arrives in),
//! methods, `public_methods`, `networks` behind trusted and untrusted
//! proxies, `roles_all`, a schedule across a daylight-saving change, the
//! denial metric, `policy explain` and `POST /admin/explain` agreeing with
//! the proxy, `check-config` warnings, one sign-in across subdomains
//! (`browser.cookie_domain`), the README's three-app example, and a reload
//! of every new key.

use serde_json::{json, Value};

use crate::common::bin;
use crate::common::http::{self, Response};
use crate::common::upstream::{self, Upstream};
use crate::common::*;

async fn send(gw: &TestGateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    http::request(gw.addr, method, path, headers, None)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Which of `ups` served one request (by their hit counts), and its status.
async fn served_by<F: std::future::Future<Output = Response>>(
    ups: &[&Upstream],
    req: F,
) -> (u16, Option<usize>) {
    let before: Vec<usize> = ups.iter().map(|u| u.hits()).collect();
    let r = req.await;
    let hit = ups.iter().zip(&before).position(|(u, b)| u.hits() > *b);
    (r.status, hit)
}

fn unix(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp()
}

fn admin_token(gw: &TestGateway) -> String {
    std::fs::read_to_string(gw.data_dir().join("admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

async fn explain(gw: &TestGateway, q: Value) -> Value {
    let r = http::request(
        gw.admin_addr,
        "POST",
        "/admin/explain",
        &[
            ("authorization", &format!("Bearer {}", admin_token(gw))),
            ("content-type", "application/json"),
        ],
        Some(q.to_string().as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "explain {q}: {}", r.text());
    r.json()
}

#[tokio::test]
async fn host_routes_match_by_normalized_host_then_methods_then_prefix() {
    let (app, wild, v6, posts, reads) = (
        upstream::start().await,
        upstream::start().await,
        upstream::start().await,
        upstream::start().await,
        upstream::start().await,
    );
    let routes = format!(
        r#"
[[routes]]
prefix = "/"
upstream = "{{UP}}"
auth = "public"

[[routes]]
prefix = "/"
host = "app.example.test"
upstream = "{app}"
auth = "public"

[[routes]]
prefix = "/"
host = "*.apps.test"
upstream = "{wild}"
auth = "public"

[[routes]]
prefix = "/"
host = "[::1]"
upstream = "{v6}"
auth = "public"

[[routes]]
prefix = "/api"
host = "app.example.test"
methods = ["POST"]
upstream = "{posts}"
auth = "public"

[[routes]]
prefix = "/read"
host = "app.example.test"
methods = ["GET"]
upstream = "{reads}"
auth = "public"
"#,
        app = app.url(),
        wild = wild.url(),
        v6 = v6.url(),
        posts = posts.url(),
        reads = reads.url(),
    );
    let gw = TestGateway::start_with(Builder {
        routes,
        ..Default::default()
    })
    .await;
    let any = &gw.upstream;
    let ups = [any, &app, &wild, &v6, &posts, &reads];
    const ANY: usize = 0;
    const APP: usize = 1;
    const WILD: usize = 2;
    const V6: usize = 3;
    const POSTS: usize = 4;
    const READS: usize = 5;
    for (host, method, path, want) in [
        ("app.example.test", "GET", "/x", APP),
        ("APP.Example.TEST", "GET", "/x", APP),
        ("app.example.test.", "GET", "/x", APP),
        ("app.example.test:8443", "GET", "/x", APP),
        ("APP.EXAMPLE.TEST.:80", "GET", "/x", APP),
        ("other.example.test", "GET", "/x", ANY),
        // One label under a wildcard, not two, not none.
        ("a.apps.test", "GET", "/x", WILD),
        ("A.Apps.Test:1", "GET", "/x", WILD),
        ("a.b.apps.test", "GET", "/x", ANY),
        ("apps.test", "GET", "/x", ANY),
        ("[::1]", "GET", "/x", V6),
        ("[::1]:8080", "GET", "/x", V6),
        ("[::2]:8080", "GET", "/x", ANY),
        // Methods: POST /api goes to its route; other methods fall through
        // to the next route of the host (never to the any-host one first).
        ("app.example.test", "POST", "/api/v1", POSTS),
        ("app.example.test", "GET", "/api/v1", APP),
        ("app.example.test", "DELETE", "/api", APP),
        // A GET route takes HEAD too, not DELETE.
        ("app.example.test", "GET", "/read/1", READS),
        ("app.example.test", "HEAD", "/read/1", READS),
        ("app.example.test", "DELETE", "/read/1", APP),
    ] {
        let (status, hit) = served_by(&ups, send(&gw, method, path, &[("Host", host)])).await;
        assert_eq!(status, 200, "{method} {host}{path}");
        assert_eq!(hit, Some(want), "{method} {host}{path}");
    }
    // A host route's upstream learns the host it was chosen by.
    send(&gw, "GET", "/x", &[("Host", "APP.example.test.:8443")]).await;
    assert_eq!(
        echoed_in(&app.last_request().unwrap(), "x-forwarded-host"),
        vec!["app.example.test"]
    );

    // An absolute-form target names the host; a Host that says otherwise
    // is ambiguous (the upstream could serve the other one): 400.
    let raw = b"GET http://app.example.test/x HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n";
    let (status, hit) =
        served_by(&ups, async { http::send_raw(gw.addr, raw).await.unwrap() }).await;
    assert_eq!((status, hit), (200, Some(APP)));
    let raw = b"GET http://app.example.test/x HTTP/1.1\r\nHost: other.example.test\r\nConnection: close\r\n\r\n";
    let (status, hit) =
        served_by(&ups, async { http::send_raw(gw.addr, raw).await.unwrap() }).await;
    assert_eq!((status, hit), (400, None));
    // Two Host headers: 400, nothing upstream.
    let raw = b"GET /x HTTP/1.1\r\nHost: app.example.test\r\nHost: a.apps.test\r\nConnection: close\r\n\r\n";
    let before: Vec<usize> = ups.iter().map(|u| u.hits()).collect();
    let r = http::send_raw(gw.addr, raw).await.unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(before, ups.iter().map(|u| u.hits()).collect::<Vec<_>>());

    // HTTP/2: `:authority` names the host; a `host` header that differs is 400.
    let before = app.hits();
    let (status, _, _) = h2_request(&gw, "/x", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(app.hits(), before, "localhost is no app host");
    let (status, _, body) = h2_request(&gw, "/x", &[("host", "app.example.test")]).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert_eq!(app.hits(), before);
}

const RULE_ROUTES: &str = r#"
[[routes]]
prefix = "/"
upstream = "{UP}"
auth = "public"

[[routes]]
prefix = "/notes"
upstream = "{UP}"
auth = "required"
public_methods = ["GET"]

[[routes]]
prefix = "/net"
upstream = "{UP}"
auth = "public"
networks = ["10.0.0.0/8", "2001:db8::/32"]

[[routes]]
prefix = "/both"
upstream = "{UP}"
auth = "required"
roles_all = ["a", "b"]

[[routes]]
prefix = "/office"
upstream = "{UP}"
auth = "public"
schedule = "mon-fri 09:00-17:00 Europe/Berlin"
"#;

fn denials(text: &str, rule: &str) -> f64 {
    metric(
        text,
        &format!("portcullis_route_denials_total{{rule=\"{rule}\"}}"),
    )
}

#[tokio::test]
async fn public_methods_networks_roles_all_and_their_denials() {
    let gw = TestGateway::start_with(Builder {
        routes: RULE_ROUTES.into(),
        server_extra: "trusted_proxies = [\"127.0.0.1/32\"]".into(),
        ..Default::default()
    })
    .await;
    let m0 = gw.metrics().await;
    for rule in ["networks", "roles_all", "schedule", "roles", "csrf"] {
        assert!(
            m0.contains(&format!(
                "portcullis_route_denials_total{{rule=\"{rule}\"}} 0"
            )),
            "{rule} is exported from the start"
        );
    }
    gw.admin_add_user("ab@example.test", &["a", "b"]).await;
    gw.admin_add_user("a@example.test", &["a"]).await;
    let ab = gw.signin("ab@example.test", PASSWORD).await;
    let a = gw.signin("a@example.test", PASSWORD).await;
    let bearer = |s: &Session| format!("Bearer {}", s.access);

    // IsAuthenticatedOrReadOnly: reads pass without identity (and keep it
    // when one is sent), writes need a user.
    assert_eq!(send(&gw, "GET", "/notes/1", &[]).await.status, 200);
    assert_eq!(send(&gw, "HEAD", "/notes/1", &[]).await.status, 200);
    assert_error(
        &send(&gw, "POST", "/notes/1", &[]).await,
        401,
        "unauthorized",
    );
    assert_error(
        &send(&gw, "DELETE", "/notes/1", &[]).await,
        401,
        "unauthorized",
    );
    let r = send(&gw, "POST", "/notes/1", &[("authorization", &bearer(&a))]).await;
    assert_eq!(r.status, 200);
    assert_eq!(echoed(&r, "x-user-email"), vec!["a@example.test"]);
    let r = send(&gw, "GET", "/notes/1", &[("authorization", &bearer(&a))]).await;
    assert_eq!(echoed(&r, "x-user-email"), vec!["a@example.test"]);

    // Networks: the client IP as resolved, the forwarded one from a
    // trusted proxy; IPv6 networks too.
    for (xff, want) in [
        ("10.1.2.3", 200),
        ("8.8.8.8", 403),
        ("2001:db8::7", 200),
        ("2001:db9::7", 403),
    ] {
        let r = send(&gw, "GET", "/net/x", &[("X-Forwarded-For", xff)]).await;
        assert_eq!(r.status, want, "from {xff}");
        if want == 403 {
            assert_error(&r, 403, "forbidden");
        }
    }
    // Without a forwarded address the peer (127.0.0.1) is the client.
    assert_eq!(send(&gw, "GET", "/net/x", &[]).await.status, 403);

    // roles_all: every role, not one.
    assert_error(
        &send(&gw, "GET", "/both", &[("authorization", &bearer(&a))]).await,
        403,
        "forbidden",
    );
    assert_eq!(
        send(&gw, "GET", "/both", &[("authorization", &bearer(&ab))])
            .await
            .status,
        200
    );

    let m = gw.metrics().await;
    assert_eq!(denials(&m, "networks") - denials(&m0, "networks"), 3.0);
    assert_eq!(denials(&m, "roles_all") - denials(&m0, "roles_all"), 1.0);
    assert_eq!(denials(&m, "roles") - denials(&m0, "roles"), 0.0);

    // Behind an untrusted peer the forwarded address is not believed.
    let untrusted = TestGateway::start_with(Builder {
        routes: r#"
[[routes]]
prefix = "/net"
upstream = "{UP}"
auth = "public"
networks = ["10.0.0.0/8"]

[[routes]]
prefix = "/local"
upstream = "{UP}"
auth = "public"
networks = ["127.0.0.1/32", "::1/128"]
"#
        .into(),
        ..Default::default()
    })
    .await;
    let r = send(
        &untrusted,
        "GET",
        "/net/x",
        &[("X-Forwarded-For", "10.1.2.3")],
    )
    .await;
    assert_error(&r, 403, "forbidden");
    let r = send(
        &untrusted,
        "GET",
        "/local/x",
        &[("X-Forwarded-For", "8.8.8.8")],
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_schedule_follows_its_zone_across_a_daylight_saving_change() {
    let gw = TestGateway::start_with(Builder {
        routes: RULE_ROUTES.into(),
        ..Default::default()
    })
    .await;
    let m0 = gw.metrics().await;
    // Europe/Berlin leaves winter time (UTC+1) for summer time (UTC+2)
    // in the night to Sunday 2026-03-29.
    for (at, want) in [
        ("2026-03-27T07:59:00Z", 403), // Fri 08:59 CET
        ("2026-03-27T08:00:00Z", 200), // Fri 09:00 CET
        ("2026-03-27T15:59:00Z", 200), // Fri 16:59 CET
        ("2026-03-27T16:00:00Z", 403), // Fri 17:00 CET
        ("2026-03-28T10:00:00Z", 403), // Sat
        ("2026-03-30T06:59:00Z", 403), // Mon 08:59 CEST
        ("2026-03-30T07:00:00Z", 200), // Mon 09:00 CEST (08:00 CET would be closed)
        ("2026-03-30T14:59:00Z", 200), // Mon 16:59 CEST
        ("2026-03-30T15:00:00Z", 403), // Mon 17:00 CEST (16:00 CET would be open)
    ] {
        // Tokens are signed at the case's time (the clock jumps days).
        gw.clock.set(unix(at));
        let r = send(&gw, "GET", "/office/x", &[]).await;
        assert_eq!(r.status, want, "at {at}");
    }
    let m = gw.metrics().await;
    assert_eq!(denials(&m, "schedule") - denials(&m0, "schedule"), 5.0);
}

/// (method, host, path, email, client IP, time)
type Case<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, &'a str, &'a str);

#[tokio::test]
async fn the_explainer_agrees_with_the_proxy_on_a_table_of_cases() {
    let routes = format!(
        "{RULE_ROUTES}{}",
        r#"
[[routes]]
prefix = "/"
host = "admin.example.test"
upstream = "{UP}"
auth = "required"
roles = ["admin"]

[[routes]]
prefix = "/keys"
upstream = "{UP}"
auth = "required"
scopes = ["read"]
"#
    );
    let gw = TestGateway::start_with(Builder {
        routes,
        server_extra: "trusted_proxies = [\"127.0.0.1/32\"]".into(),
        extra: "[throttle]\nauth_per_minute = 0\n".into(),
        ..Default::default()
    })
    .await;
    gw.admin_add_user("ab@example.test", &["a", "b"]).await;
    gw.admin_add_user("root@example.test", &["admin"]).await;
    let fri_open = "2026-03-27T10:00:00Z";
    let sat = "2026-03-28T10:00:00Z";
    // (method, host, path, email, ip, at)
    let cases: &[Case] = &[
        ("GET", "gw.test", "/anything", None, "10.0.0.1", fri_open),
        ("GET", "gw.test", "/notes/1", None, "10.0.0.1", fri_open),
        ("POST", "gw.test", "/notes/1", None, "10.0.0.1", fri_open),
        (
            "POST",
            "gw.test",
            "/notes/1",
            Some("ab@example.test"),
            "10.0.0.1",
            fri_open,
        ),
        ("GET", "gw.test", "/net/x", None, "10.9.9.9", fri_open),
        ("GET", "gw.test", "/net/x", None, "192.0.2.1", fri_open),
        ("GET", "gw.test", "/net/x", None, "2001:db8::1", fri_open),
        (
            "GET",
            "gw.test",
            "/both",
            Some("ab@example.test"),
            "10.0.0.1",
            fri_open,
        ),
        (
            "GET",
            "gw.test",
            "/both",
            Some("root@example.test"),
            "10.0.0.1",
            fri_open,
        ),
        ("GET", "gw.test", "/both", None, "10.0.0.1", fri_open),
        ("GET", "gw.test", "/office/x", None, "10.0.0.1", fri_open),
        ("GET", "gw.test", "/office/x", None, "10.0.0.1", sat),
        (
            "GET",
            "admin.example.test",
            "/x",
            Some("root@example.test"),
            "10.0.0.1",
            fri_open,
        ),
        (
            "GET",
            "admin.example.test",
            "/x",
            Some("ab@example.test"),
            "10.0.0.1",
            fri_open,
        ),
        (
            "GET",
            "ADMIN.example.test.:443",
            "/x",
            None,
            "10.0.0.1",
            fri_open,
        ),
        (
            "GET",
            "gw.test",
            "/keys/x",
            Some("ab@example.test"),
            "10.0.0.1",
            fri_open,
        ),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for &(method, host, path, email, ip, at) in cases {
        let mut q =
            json!({ "method": method, "url": format!("https://{host}{path}"), "ip": ip, "at": at });
        if let Some(e) = email {
            q["email"] = json!(e);
        }
        let a = explain(&gw, q.clone()).await;
        let m0 = gw.metrics().await;
        gw.clock.set(unix(at));
        let mut headers = vec![
            ("Host", host.to_string()),
            ("X-Forwarded-For", ip.to_string()),
        ];
        if let Some(e) = email {
            let s = gw.signin(e, PASSWORD).await;
            headers.push(("authorization", format!("Bearer {}", s.access)));
        }
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = send(&gw, method, path, &h).await;
        let decision = a["decision"].as_str().unwrap();
        let proxy = if r.status == 200 {
            "allow".to_string()
        } else {
            r.status.to_string()
        };
        assert_eq!(decision, proxy, "{q} → {a} but the proxy said {}", r.status);
        if r.status == 403 {
            let rule = a["rule"].as_str().unwrap();
            let m = gw.metrics().await;
            assert_eq!(denials(&m, rule) - denials(&m0, rule), 1.0, "{q}: {a}");
        }
        seen.insert(decision.to_string());
        assert!(a["route"]["prefix"].is_string(), "{a}");
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["401", "403", "allow"],
        "the table covers every decision"
    );
    // Rules and routes named exactly.
    let a = explain(
        &gw,
        json!({"method": "GET", "url": "/net/x", "ip": "192.0.2.1"}),
    )
    .await;
    assert_eq!(a["rule"], "networks");
    assert_eq!(a["route"]["index"], 2);
    let a = explain(
        &gw,
        json!({"method": "GET", "url": "https://admin.example.test/x", "email": "ab@example.test"}),
    )
    .await;
    assert_eq!(
        (a["decision"].as_str(), a["rule"].as_str()),
        (Some("403"), Some("roles"))
    );
    assert_eq!(
        a["route"],
        json!({"index": 5, "host": "admin.example.test", "prefix": "/"})
    );
    let a = explain(
        &gw,
        json!({"method": "GET", "url": "/keys/x", "api_key_scopes": ["write"]}),
    )
    .await;
    assert_eq!(
        (a["decision"].as_str(), a["rule"].as_str()),
        (Some("403"), Some("scopes"))
    );
    let a = explain(
        &gw,
        json!({"method": "GET", "url": "/keys/x", "api_key_scopes": ["read"]}),
    )
    .await;
    assert_eq!(a["decision"], "allow");

    // The CLI: same answers, exit 0 for allow, 1 for a refusal, 2 for bad
    // arguments (the email goes through the running gateway).
    let cfg = gw.config_path();
    let cfg = cfg.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["policy", "explain", "--config", cfg];
        all.extend_from_slice(args);
        bin::run(bin::command(&all), None, bin::CLI_LIMIT)
    };
    let o = run(&["--method", "GET", "--url", "/net/x", "--ip", "10.1.1.1"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&o.stdout).unwrap()["decision"],
        "allow"
    );
    let o = run(&["--method", "GET", "--url", "/net/x", "--ip", "192.0.2.1"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        (v["decision"].as_str(), v["rule"].as_str()),
        (Some("403"), Some("networks"))
    );
    let o = run(&[
        "--method",
        "GET",
        "--url",
        "https://admin.example.test/x",
        "--email",
        "root@example.test",
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = run(&[
        "--method",
        "GET",
        "--url",
        "/both",
        "--api-key-scopes",
        "read,write",
    ]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    for bad in [
        vec!["--method", "GET", "--url", "nope"],
        vec!["--method", "GET", "--url", "/x", "--ip", "not-an-ip"],
        vec!["--method", "GET", "--url", "/x", "--at", "yesterday"],
        vec![
            "--method",
            "GET",
            "--url",
            "/x",
            "--email",
            "nobody@example.test",
        ],
    ] {
        let o = run(&bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {o:?}");
    }
}

#[tokio::test]
async fn check_config_warns_about_shadowed_routes_and_unsafe_public_methods() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let ok = write(
        "warn.toml",
        r#"
[[routes]]
prefix = "/api"
upstream = "http://127.0.0.1:9"
host = "app.example.test"

[[routes]]
prefix = "/api"
upstream = "http://127.0.0.1:9"
host = "app.example.test"
methods = ["GET", "POST"]

[[routes]]
prefix = "/api"
upstream = "http://127.0.0.1:9"
methods = ["GET"]

[[routes]]
prefix = "/notes"
upstream = "http://127.0.0.1:9"
public_methods = ["GET", "POST"]
"#,
    );
    let o = bin::run(
        bin::command(&["check-config", "--config", &ok]),
        None,
        bin::CLI_LIMIT,
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(
        o.stderr.contains("routes[1]: can never match: routes[0]"),
        "{o:?}"
    );
    assert!(
        !o.stderr.contains("routes[2]: can never match"),
        "another host: {o:?}"
    );
    assert!(o.stderr.contains("routes[3].public_methods: POST"), "{o:?}");
    assert!(!o.stderr.contains("public_methods: GET"), "{o:?}");

    for (text, key) in [
        ("host = \"https://app.example.test\"", "routes[0].host"),
        ("host = \"*.*.example.test\"", "routes[0].host"),
        ("host = \"app.example.test:8443\"", "routes[0].host"),
        ("methods = [\"get\"]", "routes[0].methods[0]"),
        ("public_methods = [\"G ET\"]", "routes[0].public_methods[0]"),
        ("networks = [\"10.0.0.0/33\"]", "routes[0].networks[0]"),
        ("roles_all = [\"a b\"]", "routes[0].roles_all[0]"),
        (
            "schedule = \"mon-fri 09:00-17:00 Europe/Nowhere\"",
            "routes[0].schedule",
        ),
        (
            "schedule = \"mon-fri 17:00-09:00 UTC\"",
            "routes[0].schedule",
        ),
        (
            "schedule = \"weekdays 09:00-17:00 UTC\"",
            "routes[0].schedule",
        ),
    ] {
        let p = write(
            "bad.toml",
            &format!("[[routes]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:9\"\n{text}\n"),
        );
        let o = bin::run(
            bin::command(&["check-config", "--config", &p]),
            None,
            bin::CLI_LIMIT,
        );
        assert_eq!(o.status.code(), Some(2), "{text}: {o:?}");
        assert!(o.stderr.contains(key), "{text}: {key} not named: {o:?}");
    }
    let p = write(
        "bad.toml",
        "[browser]\ncookie_domain = \"https://example.test\"\n",
    );
    let o = bin::run(
        bin::command(&["check-config", "--config", &p]),
        None,
        bin::CLI_LIMIT,
    );
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(o.stderr.contains("browser.cookie_domain"), "{o:?}");
}

/// The portal's CSRF cookie and token (under the `__Secure-` name).
async fn csrf(gw: &TestGateway) -> (String, String) {
    let r = send(gw, "GET", "/auth/ui/login", &[("accept", "text/html")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let token = crate::browser::set_cookie(&r, "__Secure-portcullis-csrf")
        .unwrap_or_else(|| panic!("no CSRF cookie: {r:?}"))
        .to_string();
    (format!("__Secure-portcullis-csrf={token}"), token)
}

fn shared_builder() -> Builder {
    Builder {
        extra: "[browser]\nenabled = true\ncookie_domain = \"example.test\"\n\n[throttle]\nauth_per_minute = 0\n"
            .into(),
        link_base_url: "https://auth.example.test".into(),
        routes: r#"
[[routes]]
prefix = "/"
host = "app.example.test"
upstream = "{UP}"
auth = "required"

[[routes]]
prefix = "/"
host = "wiki.example.test"
upstream = "{UP}"
auth = "required"
"#
        .into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn one_sign_in_across_subdomains_with_cookie_domain() {
    let gw = TestGateway::start_with(shared_builder()).await;
    gw.admin_add_user("u@example.test", &[]).await;
    // An app's unauthenticated navigation goes to the portal's host and back.
    let r = send(
        &gw,
        "GET",
        "/page?x=1",
        &[("Host", "app.example.test"), ("accept", "text/html")],
    )
    .await;
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some("https://auth.example.test/auth/ui/login?rd=https%3A%2F%2Fapp.example.test%2Fpage%3Fx%3D1")
    );
    // rd: a sibling host a route serves, yes; a foreign host, or a name
    // under the domain that no route serves, no.
    for (rd, kept) in [
        ("https://wiki.example.test/a?b=1", true),
        ("https://app.example.test/", true),
        ("https://evil.test/a", false),
        ("https://evil.example.test/a", false),
        ("https://app.example.test.evil.test/a", false),
        ("http://app.example.test/a", false),
        ("https://u@app.example.test/a", false),
        ("https://app.example.test//evil.test", false),
        ("https://app.example.test/auth/refresh", false),
    ] {
        let enc: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
        let r = send(
            &gw,
            "GET",
            &format!("/auth/ui/login?rd={enc}"),
            &[("accept", "text/html")],
        )
        .await;
        assert_eq!(r.status, 200);
        let html_rd = rd.replace('&', "&amp;");
        assert_eq!(
            r.text().contains(&format!("value=\"{html_rd}\"")),
            kept,
            "rd {rd}"
        );
    }
    // Sign in once on the portal, land back on the app.
    let (csrf_cookie, token) = csrf(&gw).await;
    let rd = "https://app.example.test/page";
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("csrf", &token)
        .append_pair("email", "u@example.test")
        .append_pair("password", PASSWORD)
        .append_pair("rd", rd)
        .finish();
    let r = http::request(
        gw.addr,
        "POST",
        "/auth/ui/login",
        &[
            ("Host", "auth.example.test"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("origin", "https://auth.example.test"),
            ("cookie", &csrf_cookie),
            ("accept", "text/html"),
        ],
        Some(body.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), Some(rd));
    let set = r
        .headers_all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("__Secure-portcullis="))
        .unwrap_or_else(|| panic!("no shared session cookie: {r:?}"));
    for attr in [
        "Path=/",
        "Domain=example.test",
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
    ] {
        assert!(set.split("; ").any(|a| a == attr), "{attr} missing: {set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    // The same cookie is the identity on both apps; it never goes upstream.
    for host in ["app.example.test", "wiki.example.test"] {
        let r = send(
            &gw,
            "GET",
            "/x",
            &[("Host", host), ("cookie", &format!("{cookie}; theme=dark"))],
        )
        .await;
        assert_eq!(r.status, 200, "{host}: {r:?}");
        assert_eq!(echoed(&r, "x-user-email"), vec!["u@example.test"], "{host}");
        assert_eq!(echoed(&r, "cookie"), vec!["theme=dark"], "{host}");
    }
    // CSRF origins extend to the hosts the routes serve, and only to them.
    for (origin, want) in [
        ("https://wiki.example.test", 200),
        ("https://auth.example.test", 200),
        ("https://evil.example.test", 403),
        ("http://wiki.example.test", 403),
        ("https://evil.test", 403),
    ] {
        let r = send(
            &gw,
            "POST",
            "/x",
            &[
                ("Host", "app.example.test"),
                ("cookie", &cookie),
                ("origin", origin),
            ],
        )
        .await;
        assert_eq!(r.status, want, "Origin {origin}");
    }
}

/// The README's "Many apps behind one gateway" example, as written.
fn readme_example() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Many apps behind one gateway")
        .nth(1)
        .expect("the README has the section");
    let block = section.split("```toml\n").nth(1).unwrap();
    block.split("```").next().unwrap().to_string()
}

#[tokio::test]
async fn the_readme_three_app_example_is_accepted_and_boots() {
    let example = readme_example();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gateway.toml");
    std::fs::write(&p, &example).unwrap();
    let o = bin::run(
        bin::command(&["check-config", "--config", p.to_str().unwrap()]),
        None,
        bin::CLI_LIMIT,
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(!o.stderr.contains("warning"), "{o:?}");
    // Boot it: its [browser] and routes, upstreams pointed at the test's.
    let (head, routes) = example.split_at(example.find("[[routes]]").unwrap());
    // The harness writes its own [mail] (link_base_url set the same below).
    let browser = &head[head.find("[browser]").unwrap()..];
    let mut routes = routes.to_string();
    for port in ["3001", "3002", "3003"] {
        routes = routes.replace(&format!("http://127.0.0.1:{port}"), "{UP}");
    }
    let gw = TestGateway::start_with(Builder {
        extra: browser.to_string(),
        routes,
        link_base_url: "https://auth.example.test".into(),
        ..Default::default()
    })
    .await;
    gw.admin_add_user("dev@example.test", &["staff"]).await;
    let dev = gw.signin("dev@example.test", PASSWORD).await;
    let auth = format!("Bearer {}", dev.access);
    // grafana: staff only; wiki: reads public; api: API clients.
    let r = send(
        &gw,
        "GET",
        "/d/1",
        &[("Host", "grafana.example.test"), ("accept", "text/html")],
    )
    .await;
    assert_eq!(r.status, 302, "{r:?}");
    let r = send(
        &gw,
        "GET",
        "/d/1",
        &[("Host", "grafana.example.test"), ("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        send(&gw, "GET", "/page", &[("Host", "wiki.example.test")])
            .await
            .status,
        200
    );
    assert_eq!(
        send(&gw, "POST", "/page", &[("Host", "wiki.example.test")])
            .await
            .status,
        401
    );
    assert_eq!(
        send(&gw, "GET", "/v1/x", &[("Host", "api.example.test")])
            .await
            .status,
        401
    );
    assert_error(
        &send(&gw, "GET", "/x", &[("Host", "nothing.example.test")]).await,
        404,
        "not_found",
    );
}

#[tokio::test]
async fn a_reload_applies_every_new_route_and_browser_key() {
    let mut gw = TestGateway::start_with(Builder {
        extra: "[browser]\nenabled = true\n".into(),
        routes: "[[routes]]\nprefix = \"/\"\nupstream = \"{UP}\"\nauth = \"public\"\n".into(),
        server_extra: "trusted_proxies = [\"127.0.0.1/32\"]".into(),
        ..Default::default()
    })
    .await;
    gw.admin_add_user("a@example.test", &["a"]).await;
    gw.clock.set(unix("2026-03-28T10:00:00Z")); // a Saturday
    let a = gw.signin("a@example.test", PASSWORD).await;
    let auth = format!("Bearer {}", a.access);
    let get = |host: &'static str, path: &'static str| (host, path);
    let (h, p) = get("app.example.test", "/x");
    assert_eq!(send(&gw, "GET", p, &[("Host", h)]).await.status, 200);
    assert_eq!(send(&gw, "POST", "/notes", &[]).await.status, 200);
    assert_eq!(
        send(&gw, "GET", "/net", &[("X-Forwarded-For", "8.8.8.8")])
            .await
            .status,
        200
    );
    assert_eq!(send(&gw, "GET", "/office", &[]).await.status, 200);
    let enc: String = url::form_urlencoded::byte_serialize(b"https://app.example.test/x").collect();
    let login = format!("/auth/ui/login?rd={enc}");
    let r = send(&gw, "GET", &login, &[("accept", "text/html")]).await;
    assert!(!r.text().contains("value=\"https://app.example.test/x\""));

    let new = gw.toml.replace(
        "[browser]\nenabled = true\n",
        "[browser]\nenabled = true\ncookie_domain = \"example.test\"\n",
    ) + r#"
[[routes]]
prefix = "/"
host = "app.example.test"
methods = ["GET"]
upstream = "{UP}"
auth = "required"

[[routes]]
prefix = "/notes"
upstream = "{UP}"
auth = "required"
public_methods = ["GET"]
roles_all = ["a", "b"]

[[routes]]
prefix = "/net"
upstream = "{UP}"
auth = "public"
networks = ["10.0.0.0/8"]

[[routes]]
prefix = "/office"
upstream = "{UP}"
auth = "public"
schedule = "mon-fri 09:00-17:00 UTC"
"#;
    gw.write_toml(&new);
    let r = gw.admin_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    // host + methods
    assert_eq!(
        send(&gw, "GET", "/x", &[("Host", "app.example.test")])
            .await
            .status,
        401
    );
    assert_eq!(
        send(&gw, "POST", "/x", &[("Host", "app.example.test")])
            .await
            .status,
        200
    );
    // public_methods + roles_all
    assert_eq!(send(&gw, "GET", "/notes", &[]).await.status, 200);
    assert_eq!(send(&gw, "POST", "/notes", &[]).await.status, 401);
    assert_eq!(
        send(&gw, "POST", "/notes", &[("authorization", &auth)])
            .await
            .status,
        403
    );
    // networks, schedule
    assert_eq!(
        send(&gw, "GET", "/net", &[("X-Forwarded-For", "8.8.8.8")])
            .await
            .status,
        403
    );
    assert_eq!(
        send(&gw, "GET", "/net", &[("X-Forwarded-For", "10.0.0.8")])
            .await
            .status,
        200
    );
    assert_eq!(send(&gw, "GET", "/office", &[]).await.status, 403);
    gw.clock.set(unix("2026-03-30T10:00:00Z"));
    assert_eq!(send(&gw, "GET", "/office", &[]).await.status, 200);
    // cookie_domain: the shared cookie's rd rules are in force.
    let r = send(&gw, "GET", &login, &[("accept", "text/html")]).await;
    assert!(
        r.text().contains("value=\"https://app.example.test/x\""),
        "{r:?}"
    );
    let r = send(&gw, "GET", "/auth/ui/login", &[("accept", "text/html")]).await;
    assert!(
        crate::browser::set_cookie(&r, "__Secure-portcullis-csrf").is_some(),
        "{r:?}"
    );
}
