//! Config reload (issue 12): SIGHUP, `portcullis reload` and
//! `POST /admin/reload` apply a new config without a restart and without
//! dropping a connection; a reload that changes a fixed key (a listener,
//! the data dir) or has a problem is refused, naming the key, and the old
//! config stays in force.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{bin, free_port, http, metric, upstream, Builder, TestGateway, PASSWORD};

const ROUTES: &str = r#"
[[routes]]
prefix = "/"
upstream = "{UP}"
auth = "required"

[[routes]]
prefix = "/open"
upstream = "{UP}"
auth = "public"

[[routes]]
prefix = "/staff"
upstream = "{UP}"
auth = "required"
roles = ["admin"]
"#;

/// `text` with `from` replaced by `to`, which must occur.
#[track_caller]
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in the config:\n{text}");
    text.replacen(from, to, 1)
}

fn reloads(metrics: &str, result: &str) -> f64 {
    metric(
        metrics,
        &format!("portcullis_config_reloads_total{{result=\"{result}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_roles_upstreams_lifetimes_throttle_and_mail_change_on_reload() {
    let mut gw = TestGateway::start_with(Builder {
        routes: ROUTES.into(),
        with_smtp: true,
        extra: "[tokens]\naccess_ttl_secs = 900\n\n[throttle]\nauth_per_minute = 0\n".into(),
        ..Default::default()
    })
    .await;
    gw.admin_add_user("boss@example.com", &["admin"]).await;
    let boss = gw.signin("boss@example.com", PASSWORD).await;
    assert_eq!(gw.get("/open/x", None).await.status, 200);
    assert_eq!(gw.get("/staff/x", Some(&boss.access)).await.status, 200);
    assert_eq!(gw.get("/second/x", None).await.status, 401);
    let second = upstream::start().await;

    let old = gw.toml.clone();
    let new = edit(
        &old,
        "prefix = \"/open\"\nupstream = \"{UP}\"\nauth = \"public\"".replace("{UP}", &gw.upstream.url()).as_str(),
        &format!(
            "prefix = \"/open\"\nupstream = \"{}\"\nauth = \"required\"\n\n[[routes]]\nprefix = \"/second\"\nupstream = \"{}\"\nauth = \"public\"",
            gw.upstream.url(),
            second.url()
        ),
    );
    let new = edit(&new, "roles = [\"admin\"]", "roles = [\"staff\"]");
    let new = edit(&new, "access_ttl_secs = 900", "access_ttl_secs = 120");
    let new = edit(&new, "auth_per_minute = 0", "auth_per_minute = 3");
    let new = edit(
        &new,
        "link_base_url = \"https://gateway.test\"",
        "link_base_url = \"https://reloaded.test\"",
    );
    gw.write_toml(&new);
    let r = gw.admin_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let changed = r.json()["changed"].clone();
    for section in ["routes", "tokens", "throttle", "mail"] {
        assert!(
            changed.as_array().unwrap().iter().any(|c| c == section),
            "{section} not in {changed}"
        );
    }

    // Routes and roles: /open now needs a token, /staff the "staff" role.
    let r = gw.get("/open/x", None).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(gw.get("/open/x", Some(&boss.access)).await.status, 200);
    assert_eq!(gw.get("/staff/x", Some(&boss.access)).await.status, 403);
    // Upstreams: the new route reaches the new upstream.
    let r = gw.get("/second/x", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["upstream"],
        second.url().trim_start_matches("http://")
    );
    assert_eq!(second.hits(), 1);

    // Throttle: a fresh window of 3 POSTs per minute for this address.
    gw.clock.advance(61);
    // Token lifetimes: a new login gets the new lifetime.
    let r = gw.login("boss@example.com", PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["expires_in"], 120);
    // Mail settings: links are built on the new base URL.
    let r = gw
        .post(
            "/auth/password/reset",
            json!({ "email": "boss@example.com" }),
            None,
        )
        .await;
    assert_eq!(r.status, 202);
    let mail = gw.smtp().wait_for(1, Duration::from_secs(10)).await;
    let link = mail[0].find_link("/auth/password/reset").unwrap();
    assert!(link.starts_with("https://reloaded.test/"), "{link}");
    let r = gw.login("boss@example.com", "wrong password, once").await;
    assert_eq!(r.status, 401);
    let r = gw.login("boss@example.com", PASSWORD).await;
    assert_eq!(r.status, 429, "the 4th POST in the minute: {}", r.text());

    let m = gw.metrics().await;
    assert_eq!(reloads(&m, "applied"), 1.0);
    assert_eq!(reloads(&m, "refused"), 0.0);

    // And back: the old file applies again.
    gw.write_toml(&old);
    assert_eq!(gw.admin_reload().await.status, 200);
    assert_eq!(gw.get("/open/x", None).await.status, 200);
    assert_eq!(gw.get("/staff/x", Some(&boss.access)).await.status, 200);
    assert_eq!(gw.get("/second/x", None).await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_names_the_key_and_keeps_the_old_config() {
    let mut gw = TestGateway::start_with(Builder {
        routes: ROUTES.into(),
        ..Default::default()
    })
    .await;
    let old = gw.toml.clone();
    let up = gw.upstream.url();
    let open_required = |text: &str| {
        edit(
            text,
            &format!("prefix = \"/open\"\nupstream = \"{up}\"\nauth = \"public\""),
            &format!("prefix = \"/open\"\nupstream = \"{up}\"\nauth = \"required\""),
        )
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "server.listen",
            edit(
                &open_required(&old),
                &format!("listen = \"{}\"", gw.addr),
                &format!("listen = \"127.0.0.1:{}\"", free_port()),
            ),
        ),
        (
            "server.admin_listen",
            edit(
                &open_required(&old),
                &format!("admin_listen = \"{}\"", gw.admin_addr),
                &format!("admin_listen = \"127.0.0.1:{}\"", free_port()),
            ),
        ),
        (
            "server.data_dir",
            edit(
                &open_required(&old),
                "data_dir = \"",
                "data_dir = \"/nonexistent",
            ),
        ),
        (
            "accounts.require_email_verificaton",
            format!(
                "{}\n[accounts]\nrequire_email_verificaton = true\n",
                open_required(&old)
            ),
        ),
        (
            "tokens.access_ttl_secs",
            format!("{}\n[tokens]\naccess_ttl_secs = 0\n", open_required(&old)),
        ),
        (
            "gateway.toml: line",
            format!("{}\n[[routes]\n", open_required(&old)),
        ),
    ];
    for (i, (key, text)) in cases.iter().enumerate() {
        gw.write_toml(text);
        let r = gw.admin_reload().await;
        assert_eq!(r.status, 409, "{key}: {}", r.text());
        let v = r.json();
        assert_eq!(v["error"], "reload_refused");
        let problems = v["problems"].to_string();
        assert!(problems.contains(key), "{key} not named: {problems}");
        assert!(v["message"].as_str().unwrap().contains(key), "{v}");
        // The old config stays in force.
        let r = gw.get("/open/x", None).await;
        assert_eq!(r.status, 200, "{key}: {}", r.text());
        let m = gw.metrics().await;
        assert_eq!(reloads(&m, "refused"), (i + 1) as f64);
        assert_eq!(reloads(&m, "applied"), 0.0);
    }
    // A good file afterwards is applied.
    gw.write_toml(&open_required(&old));
    assert_eq!(gw.admin_reload().await.status, 200);
    assert_eq!(gw.get("/open/x", None).await.status, 401);
    // Without the admin token: 401, nothing read.
    let r = http::request(gw.admin_addr, "POST", "/admin/reload", &[], Some(b""))
        .await
        .unwrap();
    assert_eq!(r.status, 401);
}

/// A steady stream of parallel keep-alive requests (each held upstream for
/// a while, so reloads land while they are in flight) while the route
/// switches between two upstreams ten times: every request answers 200,
/// every connection carries on, and both upstreams served requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_in_flight_during_reloads_all_complete_on_their_connections() {
    let mut gw = TestGateway::start_with(Builder {
        routes: "[[routes]]\nprefix = \"/\"\nupstream = \"{UP}\"\nauth = \"public\"\n".into(),
        ..Default::default()
    })
    .await;
    let other = upstream::start().await;
    let a = gw.toml.clone();
    let b = a.replace(&gw.upstream.url(), &other.url());
    assert_ne!(a, b);

    const CLIENTS: usize = 16;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (stop, done, barrier, addr) = (stop.clone(), done.clone(), barrier.clone(), gw.addr);
        tasks.push(tokio::spawn(async move {
            let mut conn = http::Conn::connect(addr).await.expect("connect");
            barrier.wait().await;
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let r = conn
                    .request("GET", "/__slow/25", &[], None)
                    .await
                    .unwrap_or_else(|e| panic!("request {n} on a kept-alive connection: {e}"));
                assert_eq!(r.status, 200, "request {n}: {}", r.text());
                assert!(
                    !r.header("connection")
                        .is_some_and(|c| c.eq_ignore_ascii_case("close")),
                    "the gateway closed a kept-alive connection"
                );
                n += 1;
                done.fetch_add(1, Ordering::SeqCst);
            }
            n
        }));
    }
    barrier.wait().await;
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        gw.write_toml(if i % 2 == 0 { &b } else { &a });
        let r = gw.admin_reload().await;
        assert_eq!(r.status, 200, "reload {i}: {}", r.text());
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    stop.store(true, Ordering::SeqCst);
    let mut per_client = Vec::new();
    for t in tasks {
        per_client.push(t.await.expect("a client failed"));
    }
    assert!(
        per_client.iter().all(|&n| n >= 5),
        "every connection carried requests through the reloads: {per_client:?}"
    );
    assert_eq!(
        per_client.iter().sum::<usize>(),
        done.load(Ordering::SeqCst)
    );
    assert!(gw.upstream.hits() > 0 && other.hits() > 0);
    let m = gw.metrics().await;
    assert_eq!(reloads(&m, "applied"), 10.0);
}

/// The real binary: SIGHUP and `portcullis reload` apply the edited file;
/// a file that changes a listener or has an unknown key is refused with
/// the key named (by `portcullis reload`, and in the log on SIGHUP), and
/// the gateway keeps serving the old config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_portcullis_reload_on_the_real_binary() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = bin::write_config(dir.path(), &up.url(), "");
    let served = bin::Served::start(&cfg).await;
    let original = std::fs::read_to_string(&cfg.path).unwrap();
    let public = edit(&original, "auth = \"required\"", "auth = \"public\"");
    let status = |p: &'static str| async move { http::get(cfg.listen, p, None).await.status };
    assert_eq!(status("/x").await, 401);

    // SIGHUP.
    std::fs::write(&cfg.path, &public).unwrap();
    served.signal("HUP").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while status("/x").await != 200 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP not applied: {}",
            served.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        served.stderr().contains("config reloaded"),
        "{}",
        served.stderr()
    );

    // `portcullis reload`.
    std::fs::write(&cfg.path, &original).unwrap();
    let config = cfg.path.display().to_string();
    let out = bin::run(
        bin::command(&["reload", "--config", &config]),
        None,
        bin::CLI_LIMIT,
    );
    assert!(out.ok(), "{out:?}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out.stdout).unwrap()["reloaded"],
        true,
        "{out:?}"
    );
    assert_eq!(status("/x").await, 401);

    // A changed listener: refused, named, exit status non-zero.
    let moved = edit(
        &public,
        &format!("listen = \"{}\"", cfg.listen),
        &format!("listen = \"127.0.0.1:{}\"", free_port()),
    );
    std::fs::write(&cfg.path, &moved).unwrap();
    let out = bin::run(
        bin::command(&["reload", "--config", &config]),
        None,
        bin::CLI_LIMIT,
    );
    assert!(!out.ok(), "{out:?}");
    assert!(out.stderr.contains("server.listen"), "{out:?}");
    assert!(out.stderr.contains("refused"), "{out:?}");
    assert_eq!(status("/x").await, 401, "the old config stays");

    // An unknown key: `portcullis reload` names it without sending (exit
    // 2); SIGHUP with it is refused by the gateway, named in its log.
    let unknown = format!("{public}\n[throttle]\nauth_per_minut = 5\n");
    std::fs::write(&cfg.path, &unknown).unwrap();
    let out = bin::run(
        bin::command(&["reload", "--config", &config]),
        None,
        bin::CLI_LIMIT,
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("throttle.auth_per_minut"), "{out:?}");
    served.signal("HUP").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let refusal = || {
        served
            .stderr()
            .lines()
            .find(|l| l.contains("config reload refused") && l.contains("SIGHUP"))
            .map(str::to_string)
    };
    let line = loop {
        if let Some(line) = refusal() {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal logged: {}",
            served.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(line.contains("throttle.auth_per_minut"), "{line}");
    assert!(line.contains("ERROR"), "{line}");
    assert_eq!(status("/x").await, 401, "the old config stays");
    let m = http::get(cfg.admin, "/metrics", None).await.text();
    assert_eq!(reloads(&m, "applied"), 2.0);
    assert_eq!(reloads(&m, "refused"), 2.0);
}

/// Sixteen reloads at once are applied one at a time (the reloader's
/// lock): every one answers 200, all are counted, the gateway serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_reloads_at_once_are_each_applied() {
    let gw = TestGateway::start_with(Builder {
        routes: ROUTES.into(),
        ..Default::default()
    })
    .await;
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (barrier, admin) = (barrier.clone(), gw.admin_addr);
        let token = std::fs::read_to_string(gw.data_dir().join("admin.token")).unwrap();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            http::request(
                admin,
                "POST",
                "/admin/reload",
                &[("authorization", &format!("Bearer {}", token.trim()))],
                Some(b""),
            )
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let m = gw.metrics().await;
    assert_eq!(reloads(&m, "applied"), 16.0);
    assert_eq!(gw.get("/open/x", None).await.status, 200);
}
