//! Issue 25: every acknowledged state change of the account service has
//! its event in the stored audit chain, written in the same store
//! operation. These are the changes that had none before: a profile
//! update, a passkey removal, the one-time token of a sign-in's second
//! step, a verification mail sent again, a reset link requested (by the
//! user or an admin), the admin's enable, TOTP off and end-sessions, and
//! the OpenID Provider's code redemption and client sessions (start,
//! refresh, reuse, revocation, a code used twice).
//! Checked on the running gateway (`GET /admin/audit`, `portcullis audit
//! verify`), under 16 requests at once, on sled and on PostgreSQL.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::{json, Value};
use uuid::Uuid;

use portcullis::clock::Clock;

use crate::audit_trail::{admin_token, all_records, by_type, path};
use crate::browser::{portal_login, post_form};
use crate::common::totp::{base32_decode, code_at};
use crate::common::{bin, http, pg, Builder, Session, TestGateway, PASSWORD};

/// `POST /admin/users` with `body` on `gw`'s admin listener.
async fn admin_op(gw: &TestGateway, body: Value) -> http::Response {
    let auth = format!("Bearer {}", admin_token(gw));
    http::request(
        gw.admin_addr,
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
}

async fn patch_me(addr: SocketAddr, access: &str, body: Value) -> http::Response {
    http::send_json(addr, "PATCH", "/auth/me", Some(&body), Some(access)).await
}

/// Turn TOTP on for a signed-in user (on `gw`, whose key seals it).
async fn enrol_totp(gw: &TestGateway, access: &str) {
    let r = gw
        .post("/auth/mfa/totp/enroll", json!({}), Some(access))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let secret = base32_decode(r.json()["secret"].as_str().unwrap());
    let code = code_at(&secret, gw.clock.now());
    let r = gw
        .post(
            "/auth/mfa/totp/confirm",
            json!({ "code": code }),
            Some(access),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

fn uid(s: &Session) -> String {
    s.user["id"].as_str().unwrap().to_string()
}

/// The records of `kind`.
fn of<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == kind).collect()
}

/// `portcullis audit verify` on `gw`'s config (with `env`): it passes and
/// checks `n` records.
fn verify_passes(gw: &TestGateway, env: &[(&str, &str)], n: usize) {
    let mut cmd = bin::command(&["audit", "verify", "--config", &path(&gw.config_path())]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = bin::run(cmd, None, bin::CLI_LIMIT);
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stdout.contains(&format!("{n} records checked")),
        "{out:?}"
    );
}

/// A passkey record as the store keeps it (the removal never reads the
/// credential itself).
fn passkey(id: Uuid) -> portcullis::store::StoredPasskey {
    portcullis::store::StoredPasskey {
        id,
        cred_id: "Y3JlZGVudGlhbA".into(),
        name: "laptop".into(),
        created_at: 1,
        last_used_at: None,
        counter: 0,
        credential: json!({ "cred": "test" }),
    }
}

/// The portal's passkey removal, signed in as `email` on `gw`: answered
/// with the sessions page, and its event with it (once: a second removal
/// of the same passkey changes nothing, and stores nothing).
async fn remove_passkey_on_the_portal(gw: &TestGateway, email: &str, user: &str, pk: Uuid) {
    let cookie = portal_login(gw, email, "/auth/ui/sessions").await;
    for _ in 0..2 {
        let r = post_form(
            gw,
            "/auth/ui/passkeys/remove",
            &[("id", &pk.to_string())],
            Some(&cookie),
        )
        .await;
        assert_eq!(r.status, 303, "{r:?}");
        assert_eq!(
            r.header("location"),
            Some("/auth/ui/sessions?notice=passkey-removed")
        );
    }
    let records = all_records(gw).await;
    let removed = of(&records, "passkey.removed");
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(removed[0]["user_id"], user, "{removed:?}");
    assert_eq!(removed[0]["data"]["passkey_id"], pk.to_string());
    assert_eq!(removed[0]["outcome"], "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_newly_covered_change_is_in_the_chain() {
    let mut b = crate::browser::builder();
    b.with_smtp = true;
    let mut gw = TestGateway::start_with(b).await;
    let a = gw.signup("a@example.com").await;
    let c = gw.signup("c@example.com").await;

    // The profile: set, then cleared; a PATCH that changes nothing stores
    // nothing.
    for body in [json!({ "username": "Ann" }), json!({ "username": null })] {
        let r = patch_me(gw.addr, &a.access, body).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(patch_me(gw.addr, &a.access, json!({})).await.status, 200);

    // A verification mail sent again, to an unverified account; an
    // unknown address is answered alike and stores nothing.
    assert_eq!(gw.register("b@example.com", PASSWORD).await.status, 201);
    for e in ["b@example.com", "nobody@example.com"] {
        let r = gw
            .post("/auth/email/resend", json!({ "email": e }), None)
            .await;
        assert_eq!(r.status, 202, "{r:?}");
    }

    // A reset link asked for by the user, one by the admin.
    for e in ["a@example.com", "nobody@example.com"] {
        let r = gw
            .post("/auth/password/reset", json!({ "email": e }), None)
            .await;
        assert_eq!(r.status, 202, "{r:?}");
    }
    let r = admin_op(&gw, json!({ "op": "reset_send", "email": "c@example.com" })).await;
    assert_eq!(r.status, 200, "{r:?}");

    // The one-time token of a sign-in waiting for its second factor.
    enrol_totp(&gw, &a.access).await;
    let r = gw.login("a@example.com", PASSWORD).await;
    assert_eq!(r.json()["mfa_required"], true, "{r:?}");

    // The admin: TOTP off, disable and enable, end every session.
    let r = admin_op(&gw, json!({ "op": "totp_off", "email": "a@example.com" })).await;
    assert_eq!(r.status, 200, "{r:?}");
    for op in ["disable", "enable", "sessions_end"] {
        let r = admin_op(&gw, json!({ "op": op, "email": "c@example.com" })).await;
        assert_eq!(r.status, 200, "{op}: {r:?}");
    }

    let records = all_records(&gw).await;
    let (ua, uc) = (uid(&a), uid(&c));
    let profile = of(&records, "user.profile_changed");
    assert_eq!(profile.len(), 2, "{profile:?}");
    assert!(profile.iter().all(|r| r["user_id"] == ua.as_str()));
    assert_eq!(profile[0]["data"]["username_cleared"], false);
    assert_eq!(profile[1]["data"]["username_cleared"], true);
    assert!(!records.iter().any(|r| r.to_string().contains("Ann")));

    let resent = of(&records, "user.verification_sent");
    assert_eq!(resent.len(), 1, "{resent:?}");
    assert_eq!(resent[0]["data"]["how"], "resend");
    let b_id = records
        .iter()
        .filter(|r| r["type"] == "user.created")
        .map(|r| r["user_id"].clone())
        .find(|id| *id != ua.as_str() && *id != uc.as_str())
        .unwrap();
    assert_eq!(resent[0]["user_id"], b_id);

    let resets = of(&records, "user.password_reset_requested");
    assert_eq!(resets.len(), 2, "{resets:?}");
    assert_eq!(resets[0]["user_id"], ua.as_str());
    assert_eq!(resets[0]["actor"], Value::Null);
    assert_eq!(resets[1]["user_id"], uc.as_str());
    assert_eq!(resets[1]["actor"], "admin_api");

    let challenged = of(&records, "mfa.challenged");
    assert_eq!(challenged.len(), 1, "{challenged:?}");
    assert_eq!(challenged[0]["user_id"], ua.as_str());

    let off = of(&records, "mfa.disabled");
    assert_eq!(off.len(), 1, "{off:?}");
    assert_eq!(off[0]["actor"], "admin_api");
    assert_eq!(off[0]["user_id"], ua.as_str());
    for kind in ["user.disabled", "user.enabled"] {
        let e = of(&records, kind);
        assert_eq!(e.len(), 1, "{kind}: {e:?}");
        assert_eq!(e[0]["user_id"], uc.as_str());
        assert_eq!(e[0]["actor"], "admin_api");
    }
    let ended: Vec<&Value> = of(&records, "session.revoked")
        .into_iter()
        .filter(|r| r["actor"] == "admin_api")
        .collect();
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0]["user_id"], uc.as_str());
    assert_eq!(ended[0]["data"]["all"], true);

    // A passkey (put in the store while the gateway is stopped: only a
    // browser's authenticator can register one), removed on the portal.
    gw.stop();
    let pk = Uuid::new_v4();
    {
        use portcullis::store::{Stamp, Store, UserChange};
        let store =
            portcullis::store::sled_store::SledStore::open(&gw.data_dir().join("db")).unwrap();
        let id = Uuid::parse_str(&uc).unwrap();
        let now = gw.clock.now();
        let add = UserChange::AddPasskey {
            passkey: passkey(pk),
            max: 10,
        };
        let stamp = Stamp {
            now,
            revoke_until: now + 3600,
        };
        store.change_user(id, add, None, stamp).await.unwrap();
    }
    gw.restart();
    remove_passkey_on_the_portal(&gw, "c@example.com", &uc, pk).await;

    let records = all_records(&gw).await;
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=records.len() as u64).collect::<Vec<u64>>());
    verify_passes(&gw, &[], records.len());
}

/// Which change request `i` of the parallel mix makes.
const MIX: [&str; 8] = [
    "profile",
    "reset",
    "resend",
    "sessions_end",
    "totp_off",
    "mfa_login",
    "disable",
    "enable",
];

/// The event each change of [`MIX`] stores.
fn mix_event(kind: &str) -> &'static str {
    match kind {
        "profile" => "user.profile_changed",
        "reset" => "user.password_reset_requested",
        "resend" => "user.verification_sent",
        "sessions_end" => "session.revoked",
        "totp_off" => "mfa.disabled",
        "mfa_login" => "mfa.challenged",
        "disable" => "user.disabled",
        "enable" => "user.enabled",
        other => panic!("{other}"),
    }
}

/// One change of the mix on the gateway at `addr` (admin listener
/// `admin` with `token`), answered with its success status.
async fn mix_change(
    kind: &'static str,
    addr: SocketAddr,
    admin: (SocketAddr, String),
    email: String,
    access: String,
) -> (&'static str, u16) {
    let admin_call = |op: &'static str| {
        let (admin, token) = admin.clone();
        let email = email.clone();
        async move {
            let body = json!({ "op": op, "email": email }).to_string();
            http::request(
                admin,
                "POST",
                "/admin/users",
                &[
                    ("authorization", &format!("Bearer {token}")),
                    ("content-type", "application/json"),
                ],
                Some(body.as_bytes()),
            )
            .await
            .unwrap()
        }
    };
    let r = match kind {
        "profile" => patch_me(addr, &access, json!({ "username": "someone" })).await,
        "reset" => {
            http::post_json(
                addr,
                "/auth/password/reset",
                &json!({ "email": email }),
                None,
            )
            .await
        }
        "resend" => {
            http::post_json(addr, "/auth/email/resend", &json!({ "email": email }), None).await
        }
        "mfa_login" => {
            let body = json!({ "email": email, "password": PASSWORD });
            let r = http::post_json(addr, "/auth/login", &body, None).await;
            assert_eq!(r.json()["mfa_required"], true, "{r:?}");
            r
        }
        op => admin_call(op).await,
    };
    (kind, r.status)
}

/// 16 users, then one change each, all 16 fired at once and spread over
/// `gws`: exactly one event per acknowledged change, each naming its
/// user, and a chain whose sequence has no gap.
async fn parallel_mix(gws: &[&TestGateway], env: &[(&str, &str)]) {
    let first = gws[0];
    let mut users = Vec::new();
    for i in 0..16 {
        let email = format!("m{i}@example.com");
        let s = first.signup(&email).await;
        let kind = MIX[i % MIX.len()];
        if kind == "totp_off" || kind == "mfa_login" {
            enrol_totp(first, &s.access).await;
        }
        if kind == "enable" {
            let r = admin_op(first, json!({ "op": "disable", "email": email })).await;
            assert_eq!(r.status, 200, "{r:?}");
        }
        users.push((email, s));
    }
    let before = all_records(first).await.len();
    let mut set = tokio::task::JoinSet::new();
    for (i, (email, s)) in users.iter().enumerate() {
        let gw = gws[i % gws.len()];
        let admin = (gw.admin_addr, admin_token(gw));
        let kind = MIX[i % MIX.len()];
        set.spawn(mix_change(
            kind,
            gw.addr,
            admin,
            email.clone(),
            s.access.clone(),
        ));
    }
    while let Some(r) = set.join_next().await {
        let (kind, status) = r.unwrap();
        let want = match kind {
            "reset" | "resend" => 202,
            _ => 200,
        };
        assert_eq!(status, want, "{kind}");
    }
    let records = all_records(first).await;
    for gw in &gws[1..] {
        assert_eq!(all_records(gw).await, records, "one chain on every gateway");
    }
    let new = &records[before..];
    let got = by_type(new);
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for kind in MIX {
        *want.entry(mix_event(kind).to_string()).or_default() += 2;
    }
    assert_eq!(got, want, "{new:?}");
    for (i, (_, s)) in users.iter().enumerate() {
        let event = mix_event(MIX[i % MIX.len()]);
        let mine: Vec<&Value> = new
            .iter()
            .filter(|r| r["user_id"] == uid(s).as_str())
            .collect();
        assert_eq!(mine.len(), 1, "{mine:?}");
        assert_eq!(mine[0]["type"], event, "{mine:?}");
    }
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=records.len() as u64).collect::<Vec<u64>>());
    verify_passes(first, env, records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_changes_at_once_store_one_event_each() {
    let gw = TestGateway::start_with(Builder {
        extra: "[throttle]\nauth_per_minute = 0\n[passwords]\nmax_queued_hashes = 64\n".into(),
        ..Default::default()
    })
    .await;
    parallel_mix(&[&gw], &[]).await;
}

const PG_REFRESH: &str = "a shared refresh-token key, 32 bytes or more";
const PG_JWT: &str = "a shared HS256 secret of at least 32 bytes!!";

/// The same on PostgreSQL: two gateways on one database, the changes
/// spread over both, one chain; and a passkey removal there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_the_new_events_are_in_the_one_chain() {
    let cluster = pg::cluster().unwrap_or_else(|why| panic!("PostgreSQL: {why}"));
    let url = cluster.database().await;
    let env = [
        ("PORTCULLIS_REFRESH_SECRET", PG_REFRESH),
        ("PORTCULLIS_JWT_SECRET", PG_JWT),
    ];
    let mut gws = Vec::new();
    for _ in 0..2 {
        let mut b = crate::browser::builder();
        b.extra.push_str(&format!(
            "\n[passwords]\nmax_queued_hashes = 64\n[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\n"
        ));
        b.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        gws.push(TestGateway::start_with(b).await);
    }
    parallel_mix(&[&gws[0], &gws[1]], &env).await;

    // A passkey put in the user's record in SQL, removed on the portal.
    let s = gws[1].signup("pk@example.com").await;
    let pk = Uuid::new_v4();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let keys = serde_json::to_string(&[passkey(pk)]).unwrap();
    let n = client
        .execute(
            "UPDATE users SET record = jsonb_set(record, '{passkeys}', $1::text::jsonb) \
             WHERE id = $2::text::uuid",
            &[&keys, &uid(&s)],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    remove_passkey_on_the_portal(&gws[0], "pk@example.com", &uid(&s), pk).await;
    let records = all_records(&gws[1]).await;
    verify_passes(&gws[0], &env, records.len());
}

// ------------------------------------------------ the OpenID Provider

const APP_SECRET: &str = "an app secret for the provider";
const CB: &str = "http://127.0.0.1:9/cb";

fn form_query(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// A code for client `app` (PKCE), for the user signed in with `cookie`;
/// returns (code, verifier).
async fn provider_code(gw: &TestGateway, cookie: &str) -> (String, String) {
    use base64::Engine;
    use sha2::Digest;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let verifier = b64.encode(
        [
            Uuid::new_v4().as_bytes().as_slice(),
            Uuid::new_v4().as_bytes(),
        ]
        .concat(),
    );
    let challenge = b64.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let q = form_query(&[
        ("client_id", "app"),
        ("redirect_uri", CB),
        ("response_type", "code"),
        ("scope", "openid"),
        ("state", "st"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ]);
    let r = http::request(
        gw.addr,
        "GET",
        &format!("/auth/oauth/authorize?{q}"),
        &[
            ("accept", "text/html"),
            ("cookie", &format!("__Host-portcullis={cookie}")),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 302, "{r:?}");
    let to = url::Url::parse(r.header("location").unwrap()).unwrap();
    let code = to
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("a code");
    (code, verifier)
}

/// `POST` to the provider's `path` with a form, as client `app`.
async fn as_client(gw: &TestGateway, path: &str, pairs: &[(&str, &str)]) -> http::Response {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("app:{APP_SECRET}"));
    let body = form_query(pairs);
    http::request(
        gw.addr,
        "POST",
        path,
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &format!("Basic {basic}")),
        ],
        Some(body.as_bytes()),
    )
    .await
    .unwrap()
}

async fn exchange(gw: &TestGateway, code: &str, verifier: &str) -> http::Response {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", CB),
        ("code_verifier", verifier),
    ];
    as_client(gw, "/auth/oauth/token", &form).await
}

/// The provider's client sessions: a code issued and spent, the session it
/// starts, its refresh, a refresh token used twice, a revocation, a code
/// used twice and RP-initiated logout each store their event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_providers_client_sessions_store_their_events() {
    let mut b = crate::browser::builder();
    b.extra.push_str(&format!(
        "\n[oidc_provider]\nenabled = true\n\n[[oidc_provider.clients]]\nclient_id = \"app\"\nclient_secret_env = \"APP_SECRET\"\nredirect_uris = [\"{CB}\"]\n"
    ));
    b.env.insert("APP_SECRET".into(), APP_SECRET.into());
    b.link_base_url = "http://127.0.0.1:{PORT}".into();
    let gw = TestGateway::start_with(b).await;
    let s = gw.signup("rp@example.com").await;
    let cookie = portal_login(&gw, "rp@example.com", "/").await;

    // A code, its session, a refresh; the first refresh token again.
    let (code, verifier) = provider_code(&gw, &cookie).await;
    let r = exchange(&gw, &code, &verifier).await;
    assert_eq!(r.status, 200, "{r:?}");
    let first = r.json()["refresh_token"].as_str().unwrap().to_string();
    let refresh = [("grant_type", "refresh_token"), ("refresh_token", &first)];
    let r = as_client(&gw, "/auth/oauth/token", &refresh).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = as_client(&gw, "/auth/oauth/token", &refresh).await;
    assert_eq!(r.status, 400, "{r:?}");

    // A second session, revoked by the client.
    let (code, verifier) = provider_code(&gw, &cookie).await;
    let r = exchange(&gw, &code, &verifier).await;
    assert_eq!(r.status, 200, "{r:?}");
    let t = r.json()["refresh_token"].as_str().unwrap().to_string();
    let r = as_client(&gw, "/auth/oauth/revoke", &[("token", &t)]).await;
    assert_eq!(r.status, 200, "{r:?}");

    // A third, ended by its code's second use.
    let (code, verifier) = provider_code(&gw, &cookie).await;
    assert_eq!(exchange(&gw, &code, &verifier).await.status, 200);
    assert_eq!(exchange(&gw, &code, &verifier).await.status, 400);

    // A fourth, ended by RP-initiated logout with its ID token.
    let (code, verifier) = provider_code(&gw, &cookie).await;
    let r = exchange(&gw, &code, &verifier).await;
    assert_eq!(r.status, 200, "{r:?}");
    let id_token = r.json()["id_token"].as_str().unwrap().to_string();
    let r = http::request(
        gw.addr,
        "GET",
        &format!(
            "/auth/oauth/logout?{}",
            form_query(&[("id_token_hint", &id_token)])
        ),
        &[],
        None,
    )
    .await
    .unwrap();
    // No post_logout_redirect_uri: the portal's signed-out page.
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.text().contains("signed out"), "{r:?}");

    let records = all_records(&gw).await;
    let user = uid(&s);
    let app: Vec<&Value> = records
        .iter()
        .filter(|r| r["data"]["client_id"] == "app")
        .collect();
    assert!(app.iter().all(|r| r["user_id"] == user.as_str()), "{app:?}");
    let kinds: Vec<(String, String)> = app
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_string();
            (s("type"), s("outcome"))
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("oauth.code_issued", "success"),
        ("oauth.code_redeemed", "success"),
        ("session.created", "success"),
        ("session.refreshed", "success"),
        ("session.revoked", "refresh_reuse_detected"),
        ("oauth.code_issued", "success"),
        ("oauth.code_redeemed", "success"),
        ("session.created", "success"),
        ("session.revoked", "oauth_revoke"),
        ("oauth.code_issued", "success"),
        ("oauth.code_redeemed", "success"),
        ("session.created", "success"),
        ("session.revoked", "code_reuse"),
        ("oauth.code_issued", "success"),
        ("oauth.code_redeemed", "success"),
        ("session.created", "success"),
        ("session.revoked", "rp_logout"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(kinds, want);
    verify_passes(&gw, &[("APP_SECRET", APP_SECRET)], records.len());
}
