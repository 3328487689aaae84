//! Webhooks (CONTRACT 8.5) on the real gateway: each event is delivered
//! through the durable outbox as a signed POST that the reference
//! implementation of Standard Webhooks (the `standardwebhooks` package from
//! PyPI, pinned, installed under `target/` on first use) verifies, in the
//! receiver tests/hooks/receiver.py, which logs every delivery.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use portcullis::clock::Clock;
use serde_json::{json, Value};

use crate::common::{bin, free_port, http, pg, venv, Builder, TestGateway};

/// The `standardwebhooks` venv under `target/`, installed on first use.
fn hooks_python() -> PathBuf {
    venv::python("standardwebhooks-venv", &["standardwebhooks==1.1.0"])
}

/// A fresh `whsec_` secret.
fn secret() -> String {
    let key: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The receiver process: verifies with the reference library and logs
/// each delivery as a JSON line. Killed (by its own handle) on drop.
struct Receiver {
    port: u16,
    log: PathBuf,
    secrets: HashMap<String, String>,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Receiver {
    /// A receiver on a fresh port for `paths` (each with its own secret),
    /// not yet listening.
    fn new(paths: &[&str]) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        Receiver {
            port: free_port(),
            log: dir.path().join("deliveries.jsonl"),
            secrets: paths.iter().map(|p| (p.to_string(), secret())).collect(),
            child: None,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `[[webhooks]]` for `path`, its secret in `env_name`, with `more` lines.
    fn hook(&self, path: &str, env_name: &str, more: &str) -> String {
        format!(
            "[[webhooks]]\nurl = \"{}\"\nsecret_env = \"{env_name}\"\ntimeout_secs = 2\n{more}\n",
            self.url(path)
        )
    }

    fn secret(&self, path: &str) -> String {
        self.secrets[path].clone()
    }

    /// Start listening (again), with the gateway's clock as its time.
    async fn start(&mut self, clock_now: i64) {
        assert!(self.child.is_none());
        let py = tokio::task::spawn_blocking(hooks_python).await.unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hooks/receiver.py");
        let mut child = Command::new(py)
            .arg(script)
            .arg(self.port.to_string())
            .arg(&self.log)
            .arg(serde_json::to_string(&self.secrets).unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let ready = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(out).read_line(&mut line).map(|_| line)
        });
        let line = tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .expect("the receiver starts within 30 s")
            .unwrap()
            .unwrap();
        assert_eq!(line.trim(), "ready");
        self.child = Some(child);
        self.control(json!({ "now": clock_now })).await;
    }

    /// Stop listening: connections are refused until [`Receiver::start`].
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn control(&self, v: Value) {
        let r = http::post_json(self.addr(), "/_control", &v, None).await;
        assert_eq!(r.status, 204, "{r:?}");
    }

    /// Every delivery that reached it so far.
    fn deliveries(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Wait (bounded) until `done` holds for the deliveries so far.
    async fn wait_until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let all = self.deliveries();
            if done(&all) {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "timed out: {what}; so far {all:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepted (verified, answered 2xx) deliveries to `path`.
fn accepted<'a>(all: &'a [Value], path: &str) -> Vec<&'a Value> {
    all.iter()
        .filter(|d| d["path"] == path && d["verified"] == true && d["status"] == 200)
        .collect()
}

fn types(ds: &[&Value]) -> Vec<String> {
    ds.iter()
        .map(|d| d["type"].as_str().unwrap().to_string())
        .collect()
}

/// The value of a metric line (`name{labels} value`) in a scrape.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{series} not in the scrape:\n{text}"))
}

async fn admin(gw: &TestGateway, body: Value) -> http::Response {
    let token = std::fs::read_to_string(gw.data_dir().join("admin.token")).unwrap();
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

/// Queue `n` events of type `kind` the way the service does (one outbox
/// entry per subscribed webhook, from the gateway's own config), and wake
/// its sender; returns the outbox ids (the `webhook-id`s to expect).
async fn queue(gw: &TestGateway, kind: &str, n: usize) -> Vec<String> {
    let auth = &gw.handle().auth;
    let hooks = auth.cfg().webhooks.clone();
    let mut ids = Vec::new();
    for i in 0..n {
        let event = portcullis::webhooks::HookEvent {
            kind: kind.into(),
            at: gw.clock.now(),
            data: json!({ "n": i }),
        };
        for m in portcullis::webhooks::deliveries(&hooks, &event) {
            ids.push(m.id.to_string());
            auth.store.enqueue_mail(m).await.unwrap();
        }
    }
    auth.mail_wake.notify_one();
    ids
}

fn builder(hooks: String, env: &[(&str, String)]) -> Builder {
    Builder {
        extra: format!("[throttle]\nauth_per_minute = 0\n\n{hooks}"),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        ..Default::default()
    }
}

/// Register, login, a role added, a session revoked (logout), the user
/// disabled: each reaches the webhook that takes every event as its
/// Standard Webhooks type, verified by the reference library, with a
/// distinct `webhook-id`; the webhook that subscribes to `user.disabled`
/// only gets that one; the deliveries are counted, and nothing waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_is_delivered_signed_and_filtered_by_subscription() {
    let mut rx = Receiver::new(&["/all", "/disabled"]);
    let hooks = rx.hook("/all", "HOOK_ALL", "")
        + &rx.hook("/disabled", "HOOK_DISABLED", "events = [\"user.disabled\"]");
    let gw = TestGateway::start_with(builder(
        hooks,
        &[
            ("HOOK_ALL", rx.secret("/all")),
            ("HOOK_DISABLED", rx.secret("/disabled")),
        ],
    ))
    .await;
    rx.start(gw.clock.now()).await;

    let s = gw.signup("hooked@example.com").await;
    let user_id = s.user["id"].as_str().unwrap().to_string();
    let r = admin(
        &gw,
        json!({"op": "role_add", "email": "hooked@example.com", "role": "ops"}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = gw
        .post(
            "/auth/logout",
            json!({ "refresh_token": s.refresh }),
            Some(&s.access),
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    let r = admin(&gw, json!({"op": "disable", "email": "hooked@example.com"})).await;
    assert_eq!(r.status, 200, "{r:?}");

    let want = [
        "user.created",
        "user.login",
        "user.roles_changed",
        "session.revoked",
        "user.disabled",
    ];
    let all = rx
        .wait_until(
            "every event at /all and user.disabled at /disabled",
            |all| {
                let got: HashSet<String> = types(&accepted(all, "/all")).into_iter().collect();
                want.iter().all(|w| got.contains(*w)) && !accepted(all, "/disabled").is_empty()
            },
        )
        .await;
    assert!(
        all.iter().all(|d| d["verified"] == true),
        "every delivery verifies: {all:#?}"
    );
    let to_all = accepted(&all, "/all");
    for d in &to_all {
        assert!(
            d["data"].to_string().contains(&user_id),
            "each event names the user: {d}"
        );
    }
    let ids: HashSet<&str> = all.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), all.len(), "one id per delivery: {all:#?}");
    assert_eq!(
        types(&accepted(&all, "/disabled")),
        ["user.disabled"],
        "the filtered webhook gets only its event: {all:#?}"
    );
    // Every delivery is counted as sent; nothing is left waiting.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = gw.metrics().await;
        let sent = metric(&m, "portcullis_webhook_deliveries_total{outcome=\"sent\"}");
        let backlog = metric(&m, "portcullis_webhook_backlog");
        if sent as usize >= all.len() && backlog == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "sent {sent}, backlog {backlog}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outbox = gw.handle().auth.store.list_mail().await.unwrap();
    assert!(outbox.iter().all(|m| m.http.is_none()), "{outbox:?}");
}

/// The receiver is down for an hour of gateway time (nothing listens on its
/// port) while events are queued: the deliveries are retried with backoff, counted as retries, stay
/// queued (none fails for good) and the backlog gauge shows them; when the
/// receiver is back, every event arrives, each once, under the id it had
/// from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_an_hour_loses_nothing() {
    let mut rx = Receiver::new(&["/down"]);
    let gw = TestGateway::start_with(builder(
        rx.hook("/down", "HOOK_DOWN", "events = [\"user.created\"]"),
        &[("HOOK_DOWN", rx.secret("/down"))],
    ))
    .await;
    const N: usize = 5;
    let queued = queue(&gw, "user.created", N).await;
    assert_eq!(queued.len(), N);
    let retries = |m: &str| metric(m, "portcullis_webhook_deliveries_total{outcome=\"retry\"}");
    // An hour in steps of 10 minutes: each step, the sender tries again.
    let started = gw.clock.now();
    while gw.clock.now() < started + 3600 {
        let before = retries(&gw.metrics().await);
        gw.clock.advance(600);
        let deadline = Instant::now() + Duration::from_secs(20);
        while retries(&gw.metrics().await) <= before {
            assert!(Instant::now() < deadline, "no retry after the clock moved");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "portcullis_webhook_backlog"), N as f64, "{m}");
    assert_eq!(
        metric(
            &m,
            "portcullis_webhook_deliveries_total{outcome=\"failed\"}"
        ),
        0.0
    );
    let outbox = gw.handle().auth.store.list_mail().await.unwrap();
    assert!(
        outbox
            .iter()
            .filter(|m| m.http.is_some())
            .all(|m| !m.failed),
        "{outbox:?}"
    );
    // Back up: past the longest backoff, everything arrives.
    rx.start(gw.clock.now() + 3600).await;
    gw.clock.advance(3600);
    let all = rx
        .wait_until("every queued event arrives", |all| {
            accepted(all, "/down").len() >= N
        })
        .await;
    let mut ids: Vec<&str> = accepted(&all, "/down")
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want: Vec<&str> = queued.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(ids, want, "each event once, under its first id: {all:#?}");
    assert!(types(&accepted(&all, "/down"))
        .iter()
        .all(|t| t == "user.created"));
}

/// A receiver that answers slower than its webhook's timeout holds up
/// nothing else: another webhook's delivery of the same event arrives while
/// the slow one is still waiting; the slow one counts as a retry, and is
/// delivered, under the same id, once the receiver is quick again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_holds_up_only_its_own_deliveries() {
    let mut slow = Receiver::new(&["/slow"]);
    let mut fast = Receiver::new(&["/fast"]);
    let gw = TestGateway::start_with(builder(
        slow.hook("/slow", "HOOK_SLOW", "") + &fast.hook("/fast", "HOOK_FAST", ""),
        &[
            ("HOOK_SLOW", slow.secret("/slow")),
            ("HOOK_FAST", fast.secret("/fast")),
        ],
    ))
    .await;
    slow.start(gw.clock.now()).await;
    fast.start(gw.clock.now()).await;
    // Slower than the webhook's 2 s timeout.
    slow.control(json!({ "path": "/slow", "delay": 8 })).await;
    let before = Instant::now();
    let ids = queue(&gw, "user.created", 1).await;
    assert_eq!(ids.len(), 2, "one delivery per webhook");
    let got = fast
        .wait_until("the fast receiver's delivery", |all| {
            !accepted(all, "/fast").is_empty()
        })
        .await;
    assert!(
        before.elapsed() < Duration::from_secs(5),
        "the fast delivery waited {:?} behind the slow one",
        before.elapsed()
    );
    let first = slow
        .wait_until("the slow receiver was tried", |all| !all.is_empty())
        .await;
    let id = first[0]["id"].as_str().unwrap().to_string();
    assert!(ids.contains(&id), "{id} is an outbox id: {ids:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(
        &gw.metrics().await,
        "portcullis_webhook_deliveries_total{outcome=\"retry\"}",
    ) < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the slow attempt never timed out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Quick again: the next try delivers it, under the same id.
    slow.control(json!({ "path": "/slow", "delay": 0 })).await;
    gw.clock.advance(60);
    slow.control(json!({ "now": gw.clock.now() })).await;
    let all = slow
        .wait_until("the slow delivery retried", |all| all.len() >= 2)
        .await;
    assert_eq!(all[1]["id"], id.as_str(), "{all:#?}");
    assert_eq!(all[1]["verified"], true);
    assert_eq!(types(&accepted(&got, "/fast")), ["user.created"]);
}

/// Two gateways on one PostgreSQL database, both with the webhook: events
/// queued on both at once are each delivered exactly once (a sender
/// claims an entry under a lease, renewed right before the send).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_postgres_send_each_event_once() {
    let cluster = pg::required();
    let url = cluster.database().await;
    let mut rx = Receiver::new(&["/pg"]);
    let b = || {
        let mut b = builder(
            rx.hook("/pg", "HOOK_PG", "events = [\"user.created\"]"),
            &[("HOOK_PG", rx.secret("/pg"))],
        );
        b.extra += &format!("\n[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\n");
        b
    };
    let a = TestGateway::start_with(b()).await;
    let c = TestGateway::start_with(b()).await;
    c.clock.set(a.clock.now());
    rx.start(a.clock.now()).await;
    const N: usize = 24;
    // Queued on both, in one go each: both senders find due entries at once.
    let (x, y) = tokio::join!(
        queue(&a, "user.created", N / 2),
        queue(&c, "user.created", N / 2)
    );
    assert_eq!(x.len() + y.len(), N);
    rx.wait_until("every event delivered", |all| {
        accepted(all, "/pg").len() >= N
    })
    .await;
    // Both senders have seen the outbox empty: nothing more can come.
    for gw in [&a, &c] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gw.handle().auth.store.list_mail().await.unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the outbox empties");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let all = rx.deliveries();
    let ids: HashSet<&str> = all.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!((all.len(), ids.len()), (N, N), "each event once: {all:#?}");
    let mut want: Vec<&str> = x.iter().chain(&y).map(String::as_str).collect();
    want.sort();
    let mut got: Vec<&str> = ids.into_iter().collect();
    got.sort();
    assert_eq!(got, want, "every queued entry, under its id");
}

/// Bad `[[webhooks]]` are refused with a clear message naming each key,
/// never showing the secret: by `check-config` (exit 2), and by a reload,
/// which leaves the running gateway as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_webhook_configs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = "[[webhooks]]\nurl = \"http://hooks.example.test/x\"\nevents = [\"user.nope\"]\nsecret_env = \"HOOK_BAD\"\n\n[[webhooks]]\nurl = \"https://hooks.example.test/y\"\nsecret_env = \"HOOK_UNSET\"\n";
    let cfg = bin::write_config(dir.path(), "http://127.0.0.1:9", bad);
    let mut cmd = bin::command(&["check-config", "--config"]);
    cmd.arg(&cfg.path).env("HOOK_BAD", "not-a-whsec-secret");
    let out = bin::run_async(cmd, None, bin::CLI_LIMIT).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    for key in [
        "webhooks[0].url",
        "webhooks[0].events[0]",
        "webhooks[0].secret_env: the value of HOOK_BAD does not start with \"whsec_\"",
        "webhooks[1].secret_env: the environment variable HOOK_UNSET is not set",
    ] {
        assert!(out.stderr.contains(key), "{key} not named: {out:?}");
    }
    assert!(!out.stderr.contains("not-a-whsec-secret"), "{out:?}");

    let mut gw = TestGateway::start().await;
    let toml = gw.toml.clone() + "\n" + bad;
    gw.write_toml(&toml);
    let r = gw.admin_reload().await;
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.text().contains("webhooks[0].events[0]"), "{}", r.text());
    assert!(gw.handle().auth.cfg().webhooks.is_empty());
}
