//! Issue 11: the gateway on PostgreSQL. The store itself is held to the
//! same conformance suite as sled (tests/it/store.rs); these tests boot the
//! real gateway with `[storage] backend = "postgres"` on the throwaway
//! test cluster (common/pg.rs) and drive it over HTTP.

use serde_json::json;

use crate::common::{pg, Builder, TestGateway, PASSWORD};

/// A gateway on a fresh database of the test cluster.
async fn pg_gateway(extra: &str) -> TestGateway {
    let cluster = pg::required();
    let url = cluster.database().await;
    TestGateway::start_with(Builder {
        extra: format!(
            "[throttle]\nauth_per_minute = 0\n[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\n{extra}"
        ),
        ..Default::default()
    })
    .await
}

/// The account lifecycle end to end on PostgreSQL: register, login,
/// proxied request, refresh with reuse detection, logout; and everything
/// survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_lifecycle_runs_on_postgres() {
    let mut gw = pg_gateway("").await;
    let s = gw.signup("pg@example.com").await;
    assert_eq!(gw.get("/", Some(&s.access)).await.status, 200);
    let r = gw
        .post("/auth/refresh", json!({ "refresh_token": s.refresh }), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let next = r.json()["refresh_token"].as_str().unwrap().to_string();
    // Reuse of the rotated token ends the session.
    let r = gw
        .post("/auth/refresh", json!({ "refresh_token": s.refresh }), None)
        .await;
    assert_eq!(r.status, 401);
    let r = gw
        .post("/auth/refresh", json!({ "refresh_token": next }), None)
        .await;
    assert_eq!(r.status, 401, "the whole session is gone");

    let s2 = gw.signin("pg@example.com", PASSWORD).await;
    let r = gw
        .post(
            "/auth/logout",
            json!({ "refresh_token": s2.refresh }),
            Some(&s2.access),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(gw.get("/", Some(&s2.access)).await.status, 401);

    // After a restart the user and the revocation are still known: they
    // live in PostgreSQL (the data dir holds only keys here).
    gw.restart();
    assert_eq!(gw.get("/", Some(&s2.access)).await.status, 401);
    let s3 = gw.signin("pg@example.com", PASSWORD).await;
    assert_eq!(gw.get("/", Some(&s3.access)).await.status, 200);
    assert_eq!(
        gw.register("pg@example.com", PASSWORD).await.status,
        409,
        "one account per email"
    );
}

const JWT_SECRET: &str = "a shared HS256 secret of at least 32 bytes!!";
const REFRESH_SECRET: &str = "a shared refresh-token key, 32 bytes or more";

/// Three gateways on one database, sharing their signing and refresh keys
/// as a deployment behind a load balancer must.
async fn three_gateways() -> Vec<TestGateway> {
    three_gateways_mailing_to(None).await
}

async fn three_gateways_mailing_to(smtp: Option<u16>) -> Vec<TestGateway> {
    three_gateways_with("auth_per_minute = 0", smtp).await
}

/// Three gateways with `throttle` as their `[throttle]` table.
async fn three_gateways_with(throttle: &str, smtp: Option<u16>) -> Vec<TestGateway> {
    let cluster = pg::required();
    let url = cluster.database().await;
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(
            TestGateway::start_with(Builder {
                extra: format!(
                    "[throttle]\n{throttle}\n[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\n[passwords]\nmax_concurrent_hashes = 2\nmax_queued_hashes = 64\n"
                ),
                env: [
                    ("PORTCULLIS_JWT_SECRET".to_string(), JWT_SECRET.to_string()),
                    (
                        "PORTCULLIS_REFRESH_SECRET".to_string(),
                        REFRESH_SECRET.to_string(),
                    ),
                ]
                .into(),
                smtp_target: smtp.map(|port| ("127.0.0.1".to_string(), port)),
                ..Default::default()
            })
            .await,
        );
    }
    out
}

/// Poll `f` until it holds, for at most `limit`; the time it took.
async fn within<F, Fut>(limit: std::time::Duration, mut f: F) -> std::time::Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A logout on instance A makes the access token fail on B and C: the
/// revocation reaches every instance through LISTEN/NOTIFY (the issue's
/// target is within 1 s; the test allows 5 s so a loaded CI machine does
/// not fail it, and the benchmark measures the real figure). A cutoff
/// (logout-all) travels the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_reach_every_instance() {
    let gws = three_gateways().await;
    let s = gws[0].signup("fan@example.com").await;
    for gw in &gws {
        assert_eq!(gw.get("/", Some(&s.access)).await.status, 200);
    }
    let r = gws[0]
        .post("/auth/logout", json!({}), Some(&s.access))
        .await;
    assert_eq!(r.status, 204);
    for gw in &gws[1..] {
        within(std::time::Duration::from_secs(5), || async {
            gw.get("/", Some(&s.access)).await.status == 401
        })
        .await;
    }
    // logout-all on B: a cutoff, seen by A and C.
    let t1 = gws[0].signin("fan@example.com", PASSWORD).await;
    let t2 = gws[2].signin("fan@example.com", PASSWORD).await;
    let r = gws[1]
        .post("/auth/logout-all", json!({}), Some(&t1.access))
        .await;
    assert_eq!(r.status, 204);
    for gw in [&gws[0], &gws[2]] {
        for t in [&t1, &t2] {
            within(std::time::Duration::from_secs(5), || async {
                gw.get("/", Some(&t.access)).await.status == 401
            })
            .await;
        }
    }
}

/// Issue 13: an API key created on one gateway passes on the others, and
/// deleting it, or disabling its owner, on one gateway fails it on every
/// gateway within the feed's delay (notified; at most a second's poll).
/// TOTP works across gateways that share `PORTCULLIS_MFA_KEY`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_and_their_revocation_reach_every_instance() {
    let cluster = pg::required();
    let url = cluster.database().await;
    let mut gws = Vec::new();
    for _ in 0..3 {
        gws.push(
            TestGateway::start_with(Builder {
                extra: format!(
                    "[throttle]\nauth_per_minute = 0\n[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\n"
                ),
                routes: crate::api_keys::KEY_ROUTES.into(),
                env: [
                    ("PORTCULLIS_JWT_SECRET".to_string(), JWT_SECRET.to_string()),
                    ("PORTCULLIS_REFRESH_SECRET".to_string(), REFRESH_SECRET.to_string()),
                    (
                        "PORTCULLIS_MFA_KEY".to_string(),
                        "a shared MFA sealing key, 32 bytes or more".to_string(),
                    ),
                ]
                .into(),
                ..Default::default()
            })
            .await,
        );
    }
    let limit = std::time::Duration::from_secs(5);
    let s = gws[0].signup("keys@example.com").await;
    let mut keys = Vec::new();
    for _ in 0..2 {
        let v = crate::api_keys::create(
            &gws[0],
            &s.access,
            json!({ "name": "k", "scopes": ["read"] }),
        )
        .await;
        keys.push((
            v["key"].as_str().unwrap().to_string(),
            v["id"].as_str().unwrap().to_string(),
        ));
    }
    for gw in &gws {
        within(limit, || async {
            crate::api_keys::with_key_header(gw, "/read/x", &keys[0].0)
                .await
                .status
                == 200
        })
        .await;
    }
    // Deleted on B: refused by A and C.
    let r = crate::common::http::send_json(
        gws[1].addr,
        "DELETE",
        &format!("/auth/api-keys/{}", keys[0].1),
        None,
        Some(&s.access),
    )
    .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(
        crate::api_keys::with_key_header(&gws[1], "/read/x", &keys[0].0)
            .await
            .status,
        401
    );
    for gw in [&gws[0], &gws[2]] {
        within(limit, || async {
            crate::api_keys::with_key_header(gw, "/read/x", &keys[0].0)
                .await
                .status
                == 401
        })
        .await;
        assert_eq!(
            crate::api_keys::with_key_header(gw, "/read/x", &keys[1].0)
                .await
                .status,
            200
        );
    }
    // The owner disabled on C: the other key fails everywhere.
    let token = std::fs::read_to_string(gws[2].data_dir().join("admin.token")).unwrap();
    let r = crate::common::http::request(
        gws[2].admin_addr,
        "POST",
        "/admin/users",
        &[
            ("authorization", &format!("Bearer {}", token.trim())),
            ("content-type", "application/json"),
        ],
        Some(
            json!({"op": "disable", "email": "keys@example.com"})
                .to_string()
                .as_bytes(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    for gw in &gws {
        within(limit, || async {
            crate::api_keys::with_key_header(gw, "/read/x", &keys[1].0)
                .await
                .status
                == 401
        })
        .await;
    }

    // TOTP enrolled through A, a login finished through B.
    let t = gws[0].signup("totp-pg@example.com").await;
    let r = gws[0]
        .post("/auth/mfa/totp/enroll", json!({}), Some(&t.access))
        .await;
    let secret = crate::common::totp::base32_decode(r.json()["secret"].as_str().unwrap());
    use portcullis::clock::Clock;
    let code = crate::common::totp::code_at(&secret, gws[0].clock.now());
    let r = gws[0]
        .post(
            "/auth/mfa/totp/confirm",
            json!({ "code": code }),
            Some(&t.access),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    for gw in &gws {
        gw.clock.advance(30);
    }
    let r = gws[2].login("totp-pg@example.com", PASSWORD).await;
    let mfa_token = r.json()["mfa_token"].as_str().unwrap().to_string();
    let code = crate::common::totp::code_at(&secret, gws[1].clock.now());
    let r = gws[1]
        .post(
            "/auth/mfa/verify",
            json!({ "mfa_token": mfa_token, "code": code }),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// Cross-instance races: one account per email when registrations of one
/// address hit three gateways at once; exactly one winner when one refresh
/// token is presented to three gateways at once; and an admin's role grant
/// on one instance survives profile updates on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn races_across_instances_have_one_winner() {
    let gws = three_gateways().await;
    let addrs: Vec<_> = gws.iter().map(|g| g.addr).collect();
    let body =
        json!({ "email": "race@example.com", "password": PASSWORD, "password_confirm": PASSWORD });
    let mut set = tokio::task::JoinSet::new();
    for i in 0..18 {
        let (addr, body) = (addrs[i % 3], body.clone());
        set.spawn(async move {
            crate::common::http::post_json(addr, "/auth/register", &body, None)
                .await
                .status
        });
    }
    let mut statuses = Vec::new();
    while let Some(s) = set.join_next().await {
        statuses.push(s.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 409).count(),
        17,
        "{statuses:?}"
    );

    let s = gws[0].signin("race@example.com", PASSWORD).await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..18 {
        let addr = addrs[i % 3];
        let body = json!({ "refresh_token": s.refresh });
        set.spawn(async move {
            crate::common::http::post_json(addr, "/auth/refresh", &body, None)
                .await
                .status
        });
    }
    let mut statuses = Vec::new();
    while let Some(s) = set.join_next().await {
        statuses.push(s.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 401).count(),
        17,
        "{statuses:?}"
    );

    // An admin's role grant through gateway A while the user edits the
    // profile through B and C, all at once: every change lands.
    let s = gws[1].signin("race@example.com", PASSWORD).await;
    let token = std::fs::read_to_string(gws[0].data_dir().join("admin.token")).unwrap();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(17));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..16 {
        let (addr, access, barrier) = (addrs[1 + i % 2], s.access.clone(), barrier.clone());
        set.spawn(async move {
            barrier.wait().await;
            let body = json!({ "username": format!("name{i}") });
            crate::common::http::send_json(addr, "PATCH", "/auth/me", Some(&body), Some(&access))
                .await
                .status
        });
    }
    let admin = gws[0].admin_addr;
    set.spawn(async move {
        barrier.wait().await;
        let body = json!({ "op": "role_add", "email": "race@example.com", "role": "ops" });
        let auth = format!("Bearer {}", token.trim());
        crate::common::http::request(
            admin,
            "POST",
            "/admin/users",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            Some(body.to_string().as_bytes()),
        )
        .await
        .unwrap()
        .status
    });
    let mut statuses = Vec::new();
    while let Some(s) = set.join_next().await {
        statuses.push(s.unwrap());
    }
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let me = gws[2].get("/auth/me", Some(&s.access)).await.json();
    assert_eq!(me["user"]["roles"], json!(["ops"]), "{me}");
    let name = me["user"]["username"].as_str().unwrap_or_default();
    assert!(name.starts_with("name"), "{me}");
}

/// The outbox is shared, and each message is sent exactly once although
/// all three gateways run a sender: a sender claims a due message (a lease,
/// `FOR UPDATE SKIP LOCKED`) before sending it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mail_is_sent_once_by_three_senders() {
    let smtp = crate::common::smtp::start().await;
    let gws = three_gateways_mailing_to(Some(smtp.addr.port())).await;
    const N: usize = 30;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..N {
        let addr = gws[i % 3].addr;
        set.spawn(async move {
            let email = format!("once{i}@example.com");
            let body =
                json!({ "email": email, "password": PASSWORD, "password_confirm": PASSWORD });
            crate::common::http::post_json(addr, "/auth/register", &body, None)
                .await
                .status
        });
    }
    while let Some(s) = set.join_next().await {
        assert_eq!(s.unwrap(), 201);
    }
    let mails = smtp.wait_for(N, std::time::Duration::from_secs(20)).await;
    assert_eq!(mails.len(), N);
    // Give any duplicate a chance to arrive: every sender polls twice a
    // second, so two more seconds cover several passes of all three.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut to: Vec<String> = smtp
        .messages()
        .iter()
        .map(|m| m.header("to").unwrap_or_default())
        .collect();
    to.sort();
    let before = to.len();
    to.dedup();
    assert_eq!((before, to.len()), (N, N), "{to:?}");
    for gw in &gws {
        let left = gw.handle().auth.store.list_mail().await.unwrap();
        assert!(left.is_empty(), "{left:?}");
    }
}

/// The database goes away under a running gateway: tokens are still
/// checked from memory (a live token passes, a revoked one still fails),
/// `/readyz` answers 503, writes answer 503 `service_unavailable` and
/// acknowledge nothing; when the database is back, so is everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_writes_not_token_checks() {
    let cluster = pg::required();
    let direct = cluster.database().await;
    let pipe = pg::Pipe::to(cluster.port).await;
    let url = direct.replace(&format!(":{}/", cluster.port), &format!(":{}/", pipe.port));
    let gw = TestGateway::start_with(Builder {
        extra: format!(
            "[throttle]\nauth_per_minute = 0\n[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\n"
        ),
        ..Default::default()
    })
    .await;
    let live = gw.signup("outage@example.com").await;
    let dead = gw.signin("outage@example.com", PASSWORD).await;
    let r = gw.post("/auth/logout", json!({}), Some(&dead.access)).await;
    assert_eq!(r.status, 204);
    let ready = || async {
        crate::common::http::get(gw.admin_addr, "/readyz", None)
            .await
            .status
    };
    assert_eq!(ready().await, 200);

    pipe.cut();
    within(std::time::Duration::from_secs(10), || async {
        ready().await == 503
    })
    .await;
    assert_eq!(gw.get("/", Some(&live.access)).await.status, 200);
    assert_eq!(gw.get("/", Some(&dead.access)).await.status, 401);
    let r = gw.post("/auth/logout", json!({}), Some(&live.access)).await;
    crate::common::assert_error(&r, 503, "service_unavailable");
    assert!(r.header("retry-after").is_some());
    crate::common::assert_error(
        &gw.login("outage@example.com", PASSWORD).await,
        503,
        "service_unavailable",
    );
    // The failed logout acknowledged nothing, and revoked nothing.
    assert_eq!(gw.get("/", Some(&live.access)).await.status, 200);

    pipe.restore();
    within(std::time::Duration::from_secs(10), || async {
        ready().await == 200
    })
    .await;
    let r = gw.post("/auth/logout", json!({}), Some(&live.access)).await;
    assert_eq!(r.status, 204);
    assert_eq!(gw.get("/", Some(&live.access)).await.status, 401);
    assert_eq!(
        gw.signin("outage@example.com", PASSWORD).await.user["email"],
        "outage@example.com"
    );
}

/// Send `bodies[i]` to `path` on gateway `i % 3`, all released at once;
/// the statuses.
async fn spread(
    addrs: &[std::net::SocketAddr],
    path: &str,
    bodies: Vec<serde_json::Value>,
) -> Vec<u16> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(bodies.len()));
    let mut set = tokio::task::JoinSet::new();
    for (i, body) in bodies.into_iter().enumerate() {
        let (addr, path, barrier) = (addrs[i % addrs.len()], path.to_string(), barrier.clone());
        set.spawn(async move {
            barrier.wait().await;
            crate::common::http::post_json(addr, &path, &body, None)
                .await
                .status
        });
    }
    let mut out = Vec::new();
    while let Some(s) = set.join_next().await {
        out.push(s.unwrap());
    }
    out
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

/// The budgets are shared, not per gateway: an attacker who spreads
/// guesses over three gateways gets what one gives. Fifteen wrong
/// passwords for one account, five per gateway, all at once: exactly
/// `max_failed_logins` (5) are evaluated, and the lock then holds on every
/// instance, even for the right password. The per-IP budget
/// (`auth_per_minute`) is one budget too: of the next 20 POSTs, spread
/// over the three, exactly what is left of it gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_and_lockout_budgets_are_shared_across_instances() {
    let gws = three_gateways_with("auth_per_minute = 30\nmax_failed_logins = 5", None).await;
    let addrs: Vec<_> = gws.iter().map(|g| g.addr).collect();
    // Made through the admin API: registering would spend the IP budget.
    gws[0].admin_add_user("victim@example.com", &[]).await;
    let guesses = (0..15)
        .map(|i| json!({ "email": "victim@example.com", "password": format!("wrong guess {i}") }))
        .collect();
    let st = spread(&addrs, "/auth/login", guesses).await;
    assert_eq!(count(&st, 401), 5, "{st:?}");
    assert_eq!(count(&st, 429), 10, "{st:?}");
    for (i, a) in addrs.iter().enumerate() {
        let r = crate::common::http::post_json(
            *a,
            "/auth/login",
            &json!({ "email": "victim@example.com", "password": PASSWORD }),
            None,
        )
        .await;
        assert_eq!(r.status, 429, "gateway {i} knows the lock");
    }
    // 18 of the 30 POSTs are spent; 12 of the next 20 get through (to a
    // 401: these accounts do not exist).
    let others = (0..20)
        .map(|i| json!({ "email": format!("nobody{i}@example.com"), "password": "whatever it is" }))
        .collect();
    let st = spread(&addrs, "/auth/login", others).await;
    assert_eq!(count(&st, 401), 12, "{st:?}");
    assert_eq!(count(&st, 429), 8, "{st:?}");
}

/// `portcullis storage migrate` moves a sled gateway's whole state to
/// PostgreSQL: run on the real binary after the gateway stopped, it copies
/// and counts every kind of record, running it again changes nothing, and
/// the gateway restarted on PostgreSQL (same data dir, so the same keys)
/// carries on where it was: the revoked token stays revoked, the live
/// session refreshes, the account and its half-spent lockout budget are
/// there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_migrate_moves_a_sled_gateway_to_postgres() {
    use crate::common::bin;
    let cluster = pg::required();
    let url = cluster.database().await;
    let mut gw = TestGateway::start_with(Builder {
        extra: "[throttle]\nauth_per_minute = 0\nmax_failed_logins = 3\n".into(),
        ..Default::default()
    })
    .await;
    let a = gw.signup("a@example.com").await;
    gw.signup("b@example.com").await;
    let b2 = gw.signin("b@example.com", PASSWORD).await;
    let r = gw
        .post(
            "/auth/logout",
            json!({ "refresh_token": b2.refresh }),
            Some(&b2.access),
        )
        .await;
    assert_eq!(r.status, 204);
    let r = gw
        .post(
            "/auth/password/reset",
            json!({ "email": "a@example.com" }),
            None,
        )
        .await;
    assert_eq!(r.status, 202);
    for _ in 0..2 {
        assert_eq!(
            gw.login("b@example.com", "not the password").await.status,
            401
        );
    }
    gw.stop();

    let db = format!("sled:{}", gw.data_dir().join("db").display());
    let migrate = || {
        let out = bin::run(
            bin::command(&["storage", "migrate", "--from", &db, "--to", &url]),
            None,
            bin::CLI_LIMIT,
        );
        assert!(out.ok(), "{out:?}");
        serde_json::from_str::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = migrate();
    for (kind, at_least) in [
        ("users", 2),
        ("sessions", 2),
        ("revocations", 1),
        ("one_time_tokens", 1),
        ("one_time_sequences", 1),
        ("counters", 1),
    ] {
        let k = &first[kind];
        assert!(k["source"].as_u64().unwrap() >= at_least, "{kind}: {first}");
        assert_eq!(k["source"], k["target"], "{kind}: {first}");
        assert_eq!(k["source"], k["copied"], "{kind}: {first}");
    }
    assert_eq!(first["users"]["source"], 2, "{first}");
    assert_eq!(migrate(), first, "running it again changes nothing");

    gw.toml.push_str(&format!(
        "\n[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\n"
    ));
    gw.restart();
    assert_eq!(
        gw.get("/", Some(&b2.access)).await.status,
        401,
        "still revoked"
    );
    assert_eq!(gw.get("/", Some(&a.access)).await.status, 200);
    let r = gw
        .post("/auth/refresh", json!({ "refresh_token": a.refresh }), None)
        .await;
    assert_eq!(r.status, 200, "the session came along: {r:?}");
    assert_eq!(gw.register("a@example.com", PASSWORD).await.status, 409);
    // Two failures were counted on sled; the third locks.
    assert_eq!(
        gw.login("b@example.com", "not the password").await.status,
        401
    );
    assert_eq!(gw.login("b@example.com", PASSWORD).await.status, 429);

    // A source that is not there is refused, and creates nothing.
    let missing = gw.dir.path().join("nothing-here");
    let out = bin::run(
        bin::command(&[
            "storage",
            "migrate",
            "--from",
            &format!("sled:{}", missing.display()),
            "--to",
            &url,
        ]),
        None,
        bin::CLI_LIMIT,
    );
    assert!(!out.ok());
    assert!(out.stderr.contains("no sled database"), "{}", out.stderr);
    assert!(!missing.exists());
}

/// TLS to the database. With `sslmode=require` and the server's CA in
/// `storage.ca_file`, the gateway runs and every connection it holds is
/// encrypted (the server's `pg_stat_ssl` says so). Whenever TLS is used the
/// certificate is checked: without that CA the store refuses to connect,
/// under `require` and under the default `prefer` alike (a bad certificate
/// is never a reason to fall back to the clear).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_is_verified() {
    use portcullis::store::pg_store::PgStore;
    let cluster = pg::tls_cluster().unwrap_or_else(|why| {
        panic!("PostgreSQL is needed here (run `bash .ci/deps --test`): {why}")
    });
    let ca = cluster
        .ca_file
        .clone()
        .expect("a TLS cluster has a certificate");
    let plain_url = cluster.database().await;
    let db = plain_url.rsplit('/').next().unwrap().to_string();
    let url = format!("{plain_url}?sslmode=require");

    for (u, why) in [(&url, "require"), (&plain_url, "prefer")] {
        let err = PgStore::connect(u).await.err().unwrap_or_else(|| {
            panic!("{why}: connected without trusting the server's certificate")
        });
        assert!(
            err.to_string().to_lowercase().contains("certificate"),
            "{why}: {err}"
        );
    }

    let gw = TestGateway::start_with(Builder {
        extra: format!(
            "[throttle]\nauth_per_minute = 0\n[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\nca_file = \"{}\"\n",
            ca.display()
        ),
        ..Default::default()
    })
    .await;
    let s = gw.signup("tls@example.com").await;
    assert_eq!(gw.get("/", Some(&s.access)).await.status, 200);

    let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s
             JOIN pg_stat_activity a USING (pid) WHERE a.datname = $1",
            &[&db],
        )
        .await
        .unwrap();
    let (encrypted, all): (i64, i64) = (row.get(0), row.get(1));
    assert!(all > 0, "the gateway holds connections to {db}");
    assert_eq!(encrypted, all, "every connection is encrypted");
    drop(client);
    let _ = conn.await;
}

/// Issue 20, hole 7, across gateways: A signs tokens for 3600 s, B runs
/// with 5 s on the same database. B disables a user, ends a session and
/// takes a logout-all; every gateway refuses those tokens. B's sweeps
/// (120 s of its clock: long past its own 5 s + leeway) must not delete
/// the entries: B itself, A, and A restarted (loading them from the
/// database) still refuse the tokens, while A's token of an unrevoked user
/// still passes. Revocations are kept by the longest lifetime any gateway
/// ever recorded in the store, not the sweeping gateway's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_a_shorter_lifetime_sweeps_no_revocation_early() {
    let cluster = pg::required();
    let url = cluster.database().await;
    let start = |ttl: u64| {
        let url = url.clone();
        async move {
            TestGateway::start_with(Builder {
                extra: format!(
                    "[throttle]\nauth_per_minute = 0\n[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\n[tokens]\naccess_ttl_secs = {ttl}\n"
                ),
                env: [
                    ("PORTCULLIS_JWT_SECRET".to_string(), JWT_SECRET.to_string()),
                    (
                        "PORTCULLIS_REFRESH_SECRET".to_string(),
                        REFRESH_SECRET.to_string(),
                    ),
                ]
                .into(),
                ..Default::default()
            })
            .await
        }
    };
    let mut a = start(3600).await;
    let b = start(5).await;
    let control = a.signup("control@example.com").await;
    let disabled = a.signup("disabled@example.com").await;
    let ended = a.signup("ended@example.com").await;
    let all = a.signup("all@example.com").await;
    let token = std::fs::read_to_string(b.data_dir().join("admin.token")).unwrap();
    let r = crate::common::http::request(
        b.admin_addr,
        "POST",
        "/admin/users",
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Bearer {}", token.trim())),
        ],
        Some(
            json!({ "op": "disable", "email": "disabled@example.com" })
                .to_string()
                .as_bytes(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = b
        .post(
            "/auth/logout",
            json!({ "refresh_token": ended.refresh }),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let r = b
        .post("/auth/logout-all", json!({}), Some(&all.access))
        .await;
    assert_eq!(r.status, 204);
    let revoked = [
        ("disabled user", &disabled),
        ("ended session", &ended),
        ("logout-all", &all),
    ];
    for (what, s) in revoked {
        within(std::time::Duration::from_secs(5), || async {
            a.get("/", Some(&s.access)).await.status == 401
        })
        .await;
        assert_eq!(b.get("/", Some(&s.access)).await.status, 401, "{what}");
    }
    b.sweep().await;
    b.sweep().await;
    a.restart();
    assert_eq!(a.get("/", Some(&control.access)).await.status, 200);
    for (what, s) in revoked {
        assert_eq!(b.get("/", Some(&s.access)).await.status, 401, "{what} on B");
        assert_eq!(
            a.get("/", Some(&s.access)).await.status,
            401,
            "{what} on A after its restart"
        );
    }
}

/// Issue 20, hole 11: a batch that outlasts its lease. Gateway A claims 18
/// messages at once (one 120 s lease); the receiver takes 8 s of gateway
/// time per message, so A's batch outlasts the lease and gateway B, on the
/// same database, claims what A has not sent yet. Each message still goes
/// out once: a sender renews its claim on the current record right before
/// each send and skips a message it no longer holds. Every message carries
/// a `Message-ID` (one per outbox message) and a `Date`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_outlasts_its_lease_is_not_sent_twice() {
    use std::time::{Duration, Instant};

    use portcullis::clock::Clock;
    use portcullis::store::Record;

    const N: usize = 18;
    let smtp = crate::common::smtp::start().await;
    smtp.set_hold(true);
    let cluster = pg::required();
    let url = cluster.database().await;
    let builder = || Builder {
        extra: format!(
            "[throttle]\nauth_per_minute = 0\n[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\n"
        ),
        smtp_target: Some(("127.0.0.1".to_string(), smtp.addr.port())),
        ..Default::default()
    };
    let a = TestGateway::start_with(builder()).await;
    // Queued in one write, due a second from now: A claims them together.
    let due = a.clock.now() + 1;
    let queued: Vec<Record> = (0..N)
        .map(|i| {
            Record::Mail(portcullis::mail::compose(
                "notice",
                &format!("lease{i}@example.com"),
                &format!("Notice {i}"),
                format!("Hello {i}.\n"),
                due,
            ))
        })
        .collect();
    a.handle().auth.store.import(queued).await.unwrap();
    a.clock.advance(1);
    let wait = |what: &'static str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        move || assert!(Instant::now() < deadline, "timed out: {what}")
    };
    let check = wait("A sends its first message");
    while smtp.held() == 0 {
        check();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let outbox = a.handle().auth.store.list_mail().await.unwrap();
    assert_eq!(outbox.len(), N);
    let first = outbox[0].claim.expect("claimed");
    assert!(
        outbox.iter().all(|m| m.claim == Some(first)),
        "one batch, one lease: {outbox:?}"
    );
    // B starts only now, on A's time.
    let b = TestGateway::start_with(builder()).await;
    b.clock.set(a.clock.now());
    let mut b_claimed = false;
    // One message at a time: each arrival (held by the receiver) costs 8 s
    // of gateway time, then gets its answer.
    let mut arrived = 0;
    loop {
        let check = wait("a message reaches the receiver, or the outbox empties");
        loop {
            if smtp.messages().len() > arrived {
                break;
            }
            if a.handle().auth.store.list_mail().await.unwrap().is_empty() {
                break;
            }
            check();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if smtp.messages().len() == arrived {
            break;
        }
        arrived += 1;
        // This message took 8 s.
        a.clock.advance(8);
        b.clock.advance(8);
        if a.clock.now() >= first.until && !b_claimed {
            // A's lease has run out: let B claim what it can before A goes on.
            let check = wait("B claims the rest of A's batch");
            loop {
                let outbox = a.handle().auth.store.list_mail().await.unwrap();
                if outbox
                    .iter()
                    .any(|m| m.claim.is_some_and(|c| c.by != first.by))
                {
                    break;
                }
                check();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            b_claimed = true;
        }
        smtp.release(1);
    }
    assert!(b_claimed, "the batch outlasted its lease");
    // Anything still on its way (a sender going on with a stale batch)
    // arrives at once now; every sender polls twice a second.
    smtp.set_hold(false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails = smtp.messages();
    let mut to: Vec<String> = mails.iter().map(|m| m.to.join(",")).collect();
    to.sort();
    let sent = to.len();
    to.dedup();
    assert_eq!((sent, to.len()), (N, N), "sent twice: {to:?}");
    let ids: std::collections::BTreeSet<String> = mails
        .iter()
        .map(|m| {
            assert!(m.header("date").is_some(), "no Date: {}", m.data);
            m.header("message-id")
                .unwrap_or_else(|| panic!("no Message-ID: {}", m.data))
        })
        .collect();
    assert_eq!(ids.len(), N, "{ids:?}");
    assert!(a.handle().auth.store.list_mail().await.unwrap().is_empty());
}
