//! Issue 8, account state that cannot be raced: each case that parallel
//! requests broke in the first round, attacked the same way against the real
//! gateway. Requests are fired truly in parallel: every task opens its own
//! connection, and all of them wait on one barrier before sending.
//!
//! Where a race needs a window (a request that is still hashing while
//! another one lands), the window is made wide on purpose: several hash
//! slots so that parallel guesses really are evaluated side by side, or a
//! deliberately occupied hash queue so that a login is still in flight.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::common::http::{self, Response};
use crate::common::{assert_error, Builder, TestGateway, PASSWORD};

const NEW_PASSWORD: &str = "an entirely new passphrase";

async fn gateway(extra: &str, with_smtp: bool) -> TestGateway {
    TestGateway::start_with(Builder {
        extra: format!("[throttle]\nauth_per_minute = 0\n{extra}"),
        with_smtp,
        ..Default::default()
    })
    .await
}

/// One request to fire in a burst.
#[derive(Clone)]
struct Req {
    method: &'static str,
    path: String,
    body: Option<Value>,
    bearer: Option<String>,
}

impl Req {
    fn post(path: &str, body: Value) -> Self {
        Req {
            method: "POST",
            path: path.into(),
            body: Some(body),
            bearer: None,
        }
    }

    fn with_bearer(mut self, token: &str) -> Self {
        self.bearer = Some(token.into());
        self
    }

    fn patch_me(token: &str, username: &str) -> Self {
        Req {
            method: "PATCH",
            path: "/auth/me".into(),
            body: Some(json!({ "username": username })),
            bearer: Some(token.into()),
        }
    }
}

fn login(email: &str, password: &str) -> Req {
    Req::post(
        "/auth/login",
        json!({ "email": email, "password": password }),
    )
}

/// Fire every request at once (each on its own connection, all released by
/// one barrier); answers in the order given.
async fn burst(gw: &TestGateway, reqs: Vec<Req>) -> Vec<Response> {
    burst_at(gw.addr, reqs).await
}

/// [`burst`] to a listener address (for bursts sent from a spawned task).
async fn burst_at(addr: std::net::SocketAddr, reqs: Vec<Req>) -> Vec<Response> {
    let barrier = Arc::new(Barrier::new(reqs.len()));
    let mut set = JoinSet::new();
    for (i, r) in reqs.into_iter().enumerate() {
        let barrier = barrier.clone();
        set.spawn(async move {
            barrier.wait().await;
            let resp = http::send_json(
                addr,
                r.method,
                &r.path,
                r.body.as_ref(),
                r.bearer.as_deref(),
            )
            .await;
            (i, resp)
        });
    }
    let mut out: Vec<Option<Response>> = Vec::new();
    while let Some(done) = set.join_next().await {
        let (i, resp) = done.expect("request task");
        if out.len() <= i {
            out.resize_with(i + 1, || None);
        }
        out[i] = Some(resp);
    }
    out.into_iter().map(|r| r.expect("every answer")).collect()
}

fn statuses(rs: &[Response]) -> Vec<u16> {
    rs.iter().map(|r| r.status).collect()
}

fn count(rs: &[Response], status: u16) -> usize {
    rs.iter().filter(|r| r.status == status).count()
}

async fn admin(gw: &TestGateway, body: Value) -> Response {
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

async fn admin_user(gw: &TestGateway, email: &str) -> Value {
    let r = admin(gw, json!({ "op": "list" })).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == email)
        .cloned()
        .unwrap_or_else(|| panic!("{email} not listed"))
}

/// Case 1. Lockout bypass by parallelism (ASVS 2.2.1): 20 wrong guesses
/// sent at once for one address. The lock used to be checked before the
/// hash and counted after it, so all 20 were evaluated. Now each guess is
/// reserved before it is hashed: exactly `max_failed_logins` are evaluated,
/// the rest get 429, and a right password arriving while they are in flight
/// or after the lock gets 429 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_cannot_exceed_the_lockout() {
    // Four hash slots: parallel guesses really are evaluated side by side.
    let gw = gateway(
        "max_failed_logins = 5\nlockout_secs = 300\n[passwords]\nmax_concurrent_hashes = 4\nmax_queued_hashes = 64\n",
        false,
    )
    .await;
    gw.signup("victim@example.com").await;
    let guesses = vec![login("victim@example.com", "wrong guess 0000"); 20];
    let rs = burst(&gw, guesses).await;
    assert_eq!(count(&rs, 401), 5, "{:?}", statuses(&rs));
    assert_eq!(count(&rs, 429), 15, "{:?}", statuses(&rs));
    for r in rs.iter().filter(|r| r.status == 429) {
        assert_error(r, 429, "too_many_requests");
        assert!(r.header("retry-after").is_some(), "{r:?}");
    }
    // Locked: the right password gets 429 as well.
    let r = gw.login("victim@example.com", PASSWORD).await;
    assert_error(&r, 429, "too_many_requests");

    // The right password as one of a burst, sent while the wrong guesses
    // are still being hashed (it used to pass the lock check and get 200).
    gw.signup("second@example.com").await;
    let wrong = tokio::spawn(burst_at(
        gw.addr,
        vec![login("second@example.com", "wrong guess 0000"); 15],
    ));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let right = gw.login("second@example.com", PASSWORD).await;
    let wrong = wrong.await.unwrap();
    assert_error(&right, 429, "too_many_requests");
    assert_eq!(count(&wrong, 401), 5, "{:?}", statuses(&wrong));
    assert_eq!(count(&wrong, 429), 10, "{:?}", statuses(&wrong));
}

/// Case 2a. An admin's decision silently undone (ASVS 1.11.3, TOCTOU): the
/// admin disables a user while that user's password change is hashing. The
/// change used to write back the whole record it had read, enabled. Now it
/// applies to the current record and needs the account as it was when the
/// password was checked, so the account stays disabled and no password
/// logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_during_a_password_change_stays_disabled() {
    let gw = gateway("[passwords]\nmax_concurrent_hashes = 2\n", false).await;
    for round in 0..4 {
        let email = format!("change{round}@example.com");
        let s = gw.signup(&email).await;
        let change = tokio::spawn({
            let (addr, access) = (gw.addr, s.access.clone());
            async move {
                http::post_json(
                    addr,
                    "/auth/password/change",
                    &json!({
                        "current_password": PASSWORD,
                        "new_password": NEW_PASSWORD,
                        "new_password_confirm": NEW_PASSWORD
                    }),
                    Some(&access),
                )
                .await
            }
        });
        // The change is now verifying the current password (one argon2
        // run) before it hashes the new one (another).
        tokio::time::sleep(Duration::from_millis(5)).await;
        let r = admin(&gw, json!({ "op": "disable", "email": email })).await;
        assert_eq!(r.status, 200, "{r:?}");
        let change = change.await.unwrap();
        assert!(
            change.status == 204 || change.status == 401,
            "round {round}: {change:?}"
        );
        assert_eq!(
            admin_user(&gw, &email).await["disabled"],
            true,
            "round {round}"
        );
        for pw in [PASSWORD, NEW_PASSWORD] {
            let r = gw.login(&email, pw).await;
            assert_error(&r, 401, "invalid_credentials");
        }
        assert_eq!(gw.get("/", Some(&s.access)).await.status, 401);
    }
}

/// Case 2b. An admin's role grant lost to concurrent profile updates: 40
/// `PATCH /auth/me` and one `role_add` at once, four rounds. Each change now
/// touches only its own field of the current record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_grant_survives_concurrent_profile_updates() {
    let gw = gateway("", false).await;
    for round in 0..4 {
        let email = format!("profile{round}@example.com");
        let s = gw.signup(&email).await;
        let mut reqs: Vec<Req> = (0..40)
            .map(|i| Req::patch_me(&s.access, &format!("name-{round}-{i}")))
            .collect();
        reqs.insert(20, Req::post("/unused", json!({})));
        let addr = gw.admin_addr;
        let token = std::fs::read_to_string(gw.data_dir().join("admin.token")).unwrap();
        let barrier = Arc::new(Barrier::new(reqs.len()));
        let mut set = JoinSet::new();
        for (i, r) in reqs.into_iter().enumerate() {
            let barrier = barrier.clone();
            let (gw_addr, token, email) = (gw.addr, token.clone(), email.clone());
            set.spawn(async move {
                barrier.wait().await;
                if i == 20 {
                    let body = json!({ "op": "role_add", "email": email, "role": "editor" });
                    http::request(
                        addr,
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
                } else {
                    http::send_json(
                        gw_addr,
                        r.method,
                        &r.path,
                        r.body.as_ref(),
                        r.bearer.as_deref(),
                    )
                    .await
                }
            });
        }
        let mut all = Vec::new();
        while let Some(r) = set.join_next().await {
            all.push(r.unwrap());
        }
        assert!(all.iter().all(|r| r.status == 200), "{:?}", statuses(&all));
        let u = admin_user(&gw, &email).await;
        assert_eq!(u["roles"], json!(["editor"]), "round {round}: {u}");
        assert!(u["username"]
            .as_str()
            .unwrap()
            .starts_with(&format!("name-{round}-")));
    }
}

/// Case 3a. A login already in flight survives a disable (ASVS 3.3.1): it
/// read the enabled user, then waited for a hash slot while the admin
/// disabled the account; it used to create a session anyway, with an `iat`
/// after the cutoff. Now the session is created only if the account is
/// unchanged since the password was checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_in_flight_does_not_survive_a_disable_or_role_removal() {
    // One hash slot, so the victim's login queues behind the others'.
    let gw = gateway(
        "[passwords]\nmax_concurrent_hashes = 1\nmax_queued_hashes = 64\n",
        false,
    )
    .await;
    for d in 0..6 {
        gw.signup(&format!("decoy{d}@example.com")).await;
    }
    gw.admin_add_user("boss@example.com", &["admin"]).await;
    for (round, op) in ["disable", "role_remove"].into_iter().enumerate() {
        let victim = format!("victim{round}@example.com");
        if op == "disable" {
            gw.signup(&victim).await;
        } else {
            gw.admin_add_user(&victim, &["admin"]).await;
        }
        // Occupy the hash queue, then log the victim in behind it.
        let mut reqs: Vec<Req> = (0..6)
            .map(|d| login(&format!("decoy{d}@example.com"), PASSWORD))
            .collect();
        reqs.push(login(&victim, PASSWORD));
        let addr = gw.addr;
        let logins = tokio::spawn(async move {
            let mut set = JoinSet::new();
            for (i, r) in reqs.into_iter().enumerate() {
                set.spawn(async move {
                    // The victim's login arrives last.
                    if i == 6 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    (
                        i,
                        http::post_json(addr, &r.path, r.body.as_ref().unwrap(), None).await,
                    )
                });
            }
            let mut victim = None;
            while let Some(r) = set.join_next().await {
                let (i, resp) = r.unwrap();
                if i == 6 {
                    victim = Some(resp);
                }
            }
            victim.unwrap()
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let body = if op == "disable" {
            json!({ "op": "disable", "email": victim })
        } else {
            json!({ "op": "role_remove", "email": victim, "role": "admin" })
        };
        assert_eq!(admin(&gw, body).await.status, 200);
        let r = logins.await.unwrap();
        if op == "disable" {
            assert_error(&r, 401, "invalid_credentials");
        } else if r.status == 200 {
            // The login may win the race only by landing after the
            // removal: its token must not carry the removed role.
            let access = r.json()["access_token"].as_str().unwrap().to_string();
            assert_eq!(gw.get("/admin/x", Some(&access)).await.status, 403, "{op}");
        } else {
            assert_error(&r, 401, "invalid_credentials");
        }
    }
}

/// Case 3b. A login in flight survives a password reset: it checked the old
/// password against the old hash while the reset was committing. Now the
/// session needs the password version it checked, so the old password
/// yields nothing once the reset has landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_in_flight_does_not_survive_a_password_reset() {
    let gw = gateway(
        "[passwords]\nmax_concurrent_hashes = 1\nmax_queued_hashes = 64\n",
        true,
    )
    .await;
    gw.signup("reset@example.com").await;
    let r = gw
        .post(
            "/auth/password/reset",
            json!({ "email": "reset@example.com" }),
            None,
        )
        .await;
    assert_eq!(r.status, 202);
    // The verification mail of the signup, then the reset mail.
    let mails = gw.smtp().wait_for(2, Duration::from_secs(10)).await;
    let token = mails
        .iter()
        .find_map(|m| m.token_from_link("/auth/password/reset"))
        .expect("reset link");
    // The reset's hash takes the only slot; the login (old password) has
    // read the old record and waits behind it.
    let confirm = Req::post(
        "/auth/password/reset/confirm",
        json!({ "token": token, "new_password": NEW_PASSWORD, "new_password_confirm": NEW_PASSWORD }),
    );
    let addr = gw.addr;
    let confirm = tokio::spawn(async move {
        http::post_json(addr, &confirm.path, confirm.body.as_ref().unwrap(), None).await
    });
    tokio::time::sleep(Duration::from_millis(3)).await;
    let old = gw.login("reset@example.com", PASSWORD).await;
    let confirm = confirm.await.unwrap();
    assert_eq!(confirm.status, 204, "{confirm:?}");
    if old.status == 200 {
        // Only possible if the login finished before the reset committed:
        // then the reset must have ended that session.
        let access = old.json()["access_token"].as_str().unwrap().to_string();
        assert_eq!(gw.get("/", Some(&access)).await.status, 401);
    } else {
        assert_error(&old, 401, "invalid_credentials");
    }
    assert_error(
        &gw.login("reset@example.com", PASSWORD).await,
        401,
        "invalid_credentials",
    );
    assert_eq!(
        gw.login("reset@example.com", NEW_PASSWORD).await.status,
        200
    );
}

/// Case 4. `POST /auth/password/change` allowed unlimited guesses of the
/// current password with a stolen access token (ASVS 2.2.1). Wrong
/// `current_password` values now count toward the account lockout, in a
/// row and in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_current_passwords_count_toward_the_lockout() {
    let gw = gateway(
        "max_failed_logins = 5\nlockout_secs = 300\n[passwords]\nmax_concurrent_hashes = 4\n",
        false,
    )
    .await;
    let change = |access: &str, current: &str| {
        Req::post(
            "/auth/password/change",
            json!({
                "current_password": current,
                "new_password": NEW_PASSWORD,
                "new_password_confirm": NEW_PASSWORD
            }),
        )
        .with_bearer(access)
    };
    // In a row.
    let s = gw.signup("thief@example.com").await;
    let mut got = Vec::new();
    for i in 0..10 {
        let r = change(&s.access, &format!("guess number {i}"));
        got.push(
            http::post_json(gw.addr, &r.path, r.body.as_ref().unwrap(), Some(&s.access)).await,
        );
    }
    assert_eq!(
        statuses(&got),
        [401, 401, 401, 401, 401, 429, 429, 429, 429, 429]
    );
    // The account is locked for logins too, and the right current
    // password no longer gets through either.
    assert_error(
        &gw.login("thief@example.com", PASSWORD).await,
        429,
        "too_many_requests",
    );
    let r = burst(&gw, vec![change(&s.access, PASSWORD)]).await;
    assert_error(&r[0], 429, "too_many_requests");

    // In parallel: 16 at once, at most 5 evaluated.
    let s = gw.signup("thief2@example.com").await;
    let rs = burst(
        &gw,
        (0..16)
            .map(|i| change(&s.access, &format!("parallel guess {i}")))
            .collect(),
    )
    .await;
    assert_eq!(count(&rs, 401), 5, "{:?}", statuses(&rs));
    assert_eq!(count(&rs, 429), 11, "{:?}", statuses(&rs));
}

/// Case 5. A rotated (dead) refresh token counted as a "known device" and
/// exempted its holder from the lockout. Only a live token (current
/// generation, not expired or idle) exempts now, and even then that
/// device's own guesses are bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_refresh_token_is_no_device() {
    let gw = gateway("max_failed_logins = 3\nlockout_secs = 300\n", false).await;
    let s = gw.signup("device@example.com").await;
    let r = gw
        .post("/auth/refresh", json!({ "refresh_token": s.refresh }), None)
        .await;
    assert_eq!(r.status, 200);
    let live = r.json()["refresh_token"].as_str().unwrap().to_string();
    let dead = s.refresh.clone();
    let with_device = |pw: &str, token: &str| {
        Req::post(
            "/auth/login",
            json!({ "email": "device@example.com", "password": pw, "refresh_token": token }),
        )
    };
    // Eight wrong guesses holding the dead token: the lockout applies.
    let mut got = Vec::new();
    for _ in 0..8 {
        let r = with_device("wrong guess 1234", &dead);
        got.push(http::post_json(gw.addr, &r.path, r.body.as_ref().unwrap(), None).await);
    }
    assert_eq!(statuses(&got), [401, 401, 401, 429, 429, 429, 429, 429]);
    let r = with_device(PASSWORD, &dead);
    let r = http::post_json(gw.addr, &r.path, r.body.as_ref().unwrap(), None).await;
    assert_error(&r, 429, "too_many_requests");
    // The live token still lets its owner in, and presenting the dead one
    // at login was no refresh: the session was not ended as a reuse.
    let r = with_device(PASSWORD, &live);
    let r = http::post_json(gw.addr, &r.path, r.body.as_ref().unwrap(), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    // The live device's own guesses are bounded as well.
    let rs = burst(&gw, vec![with_device("wrong guess 5678", &live); 6]).await;
    assert_eq!(count(&rs, 401), 3, "{:?}", statuses(&rs));
    assert_eq!(count(&rs, 429), 3, "{:?}", statuses(&rs));
}

/// Case 6. Nothing was ever pruned: a session record kept every rotated
/// refresh hash, and expired sessions, one-time tokens and failed mail
/// stayed forever. Now a session holds a generation, not a list, and the
/// maintenance sweep (driven by the clock) removes what has expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_do_not_grow_and_expired_state_is_swept() {
    let gw = TestGateway::start_with(Builder {
        extra: "[throttle]\nauth_per_minute = 0\n[tokens]\nrefresh_ttl_secs = 3600\n".into(),
        mail_extra: "max_attempts = 1\nfailed_retention_secs = 600\n".into(),
        // Mail goes nowhere (a closed port) and fails for good at once.
        smtp_target: Some(("127.0.0.1".into(), crate::common::free_port())),
        ..Default::default()
    })
    .await;
    let store = gw.handle().auth.store.clone();
    let s = gw.signup("grow@example.com").await;
    let uid: uuid::Uuid = s.user["id"].as_str().unwrap().parse().unwrap();
    let sid = store.list_sessions(uid).await.unwrap()[0].id;
    let size = |s: &portcullis::store::SessionRecord| serde_json::to_vec(s).unwrap().len();
    let before = size(&store.find_session(sid).await.unwrap().unwrap());
    let mut refresh = s.refresh.clone();
    for _ in 0..50 {
        let r = gw
            .post("/auth/refresh", json!({ "refresh_token": refresh }), None)
            .await;
        assert_eq!(r.status, 200);
        refresh = r.json()["refresh_token"].as_str().unwrap().to_string();
    }
    let after = store.find_session(sid).await.unwrap().unwrap();
    assert_eq!(after.generation, 50);
    assert!(size(&after) <= before + 2, "{before} -> {}", size(&after));

    // A reset link (a one-time token, 30 min) and its mail, which fails
    // for good at once.
    let r = gw
        .post(
            "/auth/password/reset",
            json!({ "email": "grow@example.com" }),
            None,
        )
        .await;
    assert_eq!(r.status, 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let failed = loop {
        let mail = store.list_mail().await.unwrap();
        if let Some(m) = mail.iter().find(|m| m.kind == "reset" && m.failed) {
            break m.clone();
        }
        assert!(std::time::Instant::now() < deadline, "{mail:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let link_token = failed
        .body
        .split("token=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .expect("token in the mail body")
        .to_string();
    let hash = portcullis::tokens::jwt::token_hash(&link_token);
    assert!(store.find_one_time(&hash).await.unwrap().is_some());

    // A second session 3000 s later.
    gw.clock.advance(3000);
    gw.signin("grow@example.com", PASSWORD).await;

    // 3700 s after the first session: it is past its lifetime, the second
    // is not. The reset token (30 min) and the failed mail (10 min
    // retention) are past theirs too.
    gw.clock.advance(700);
    gw.sweep().await;
    let left = store.list_sessions(uid).await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_ne!(left[0].id, sid);
    assert!(store.find_session(sid).await.unwrap().is_none());
    assert!(store.find_one_time(&hash).await.unwrap().is_none());
    assert!(store.list_mail().await.unwrap().is_empty());
    // The swept session's token is plainly invalid.
    let r = gw
        .post("/auth/refresh", json!({ "refresh_token": refresh }), None)
        .await;
    assert_error(&r, 401, "invalid_token");
}

/// Case 7. The argon2 queue was unbounded: a few hundred parallel logins
/// made every login wait for seconds. The queue is bounded now; past it, a
/// login is answered at once with 503 and `Retry-After`, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hash_queue_answers_503_at_once() {
    let gw = gateway(
        "max_failed_logins = 0\n[passwords]\nmax_concurrent_hashes = 1\nmax_queued_hashes = 2\n",
        false,
    )
    .await;
    gw.signup("queue@example.com").await;
    let before = crate::common::metric(&gw.metrics().await, "portcullis_hash_queue_rejected_total");
    let rs = burst(&gw, vec![login("queue@example.com", PASSWORD); 24]).await;
    let busy: Vec<&Response> = rs.iter().filter(|r| r.status == 503).collect();
    assert!(count(&rs, 200) >= 3, "{:?}", statuses(&rs));
    assert!(!busy.is_empty(), "{:?}", statuses(&rs));
    assert_eq!(count(&rs, 200) + busy.len(), 24, "{:?}", statuses(&rs));
    for r in &busy {
        assert_error(r, 503, "service_unavailable");
        assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    }
    let after = crate::common::metric(&gw.metrics().await, "portcullis_hash_queue_rejected_total");
    assert_eq!(after - before, busy.len() as f64, "{before} -> {after}");
    // Nothing is left queued.
    assert_eq!(gw.login("queue@example.com", PASSWORD).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_argon2_jobs_run_at_once_than_max_concurrent_hashes() {
    for permits in [1usize, 2] {
        let gw = gateway(
            &format!(
                "max_failed_logins = 0\n[passwords]\nmax_concurrent_hashes = {permits}\nmax_queued_hashes = 64\n"
            ),
            false,
        )
        .await;
        gw.signup("hw@example.com").await;
        let rs = burst(&gw, vec![login("hw@example.com", PASSWORD); 12]).await;
        assert_eq!(count(&rs, 200), 12, "{:?}", statuses(&rs));
        let high = gw
            .handle()
            .auth
            .hasher
            .stats()
            .high_water
            .load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(high, permits, "most argon2 jobs at once");
    }
}

/// Refresh races across the whole API: 16 refreshes with one token have
/// exactly one winner, and every loser is reuse, which ends the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_refreshes_of_one_token_have_one_winner() {
    let gw = gateway("", false).await;
    let s = gw.signup("refresh16@example.com").await;
    let rs = burst(
        &gw,
        vec![Req::post("/auth/refresh", json!({ "refresh_token": s.refresh })); 16],
    )
    .await;
    assert_eq!(count(&rs, 200), 1, "{:?}", statuses(&rs));
    assert_eq!(count(&rs, 401), 15, "{:?}", statuses(&rs));
    // The losers presented a used token: the session is gone, winner's
    // tokens included.
    let winner = rs.iter().find(|r| r.status == 200).unwrap().json();
    let access = winner["access_token"].as_str().unwrap();
    assert_eq!(gw.get("/", Some(access)).await.status, 401);
    let r = gw
        .post(
            "/auth/refresh",
            json!({ "refresh_token": winner["refresh_token"] }),
            None,
        )
        .await;
    assert_error(&r, 401, "invalid_token");
}

/// 16 password changes with the same current password: exactly one wins
/// (each carries the password version it checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_password_changes_have_one_winner() {
    let gw = gateway(
        "max_failed_logins = 50\n[passwords]\nmax_concurrent_hashes = 4\n",
        false,
    )
    .await;
    let s = gw.signup("change16@example.com").await;
    let rs = burst(
        &gw,
        (0..16)
            .map(|i| {
                let pw = format!("{NEW_PASSWORD} {i}");
                Req::post(
                    "/auth/password/change",
                    json!({ "current_password": PASSWORD, "new_password": pw, "new_password_confirm": pw }),
                )
                .with_bearer(&s.access)
            })
            .collect(),
    )
    .await;
    assert_eq!(count(&rs, 204), 1, "{:?}", statuses(&rs));
    assert_eq!(count(&rs, 401), 15, "{:?}", statuses(&rs));
    let winner = rs.iter().position(|r| r.status == 204).unwrap();
    let r = gw
        .login("change16@example.com", &format!("{NEW_PASSWORD} {winner}"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// Auth floods yield the CPU to proxied traffic: the gateway's auth
/// executor (where `/auth/*` handlers run) and its blocking pool (argon2,
/// store reads) run at `server.auth_nice`, 10 by default, and at the
/// proxy's priority when it is 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_work_runs_at_the_configured_lower_priority() {
    /// The niceness of the calling thread (field 19 of its stat).
    fn nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(16).unwrap().parse().unwrap()
    }
    let base = nice();
    for (extra, want) in [("auth_threads = 3\n", 10), ("auth_nice = 0\n", base)] {
        let gw = TestGateway::start_with(Builder {
            server_extra: extra.into(),
            ..Default::default()
        })
        .await;
        let ex = gw.handle().executor.clone();
        // `server.auth_threads`, else one per core.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let workers = if extra.contains("auth_threads") {
            3
        } else {
            cores
        };
        assert_eq!(ex.workers(), workers, "{extra:?}");
        let worker = ex.run(async { nice() }).await.unwrap();
        let blocking = ex
            .run(async { tokio::task::spawn_blocking(nice).await.unwrap() })
            .await
            .unwrap();
        assert_eq!((worker, blocking), (want, want), "{extra:?}");
        // And it serves the auth API.
        gw.signup(&format!("nice{want}@example.com")).await;
    }
    assert_eq!(nice(), base, "the test's own threads are untouched");
}
