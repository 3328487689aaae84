//! The stored audit trail (CONTRACT 8.5, issue 25): every state change's
//! audit event is in the store's hash chain, written with the change;
//! `portcullis audit verify` names the first record that does not fit
//! (edited, removed, reordered: made through backup, edit, restore);
//! `audit export` and `GET /admin/audit`; the head published; retention
//! behind a signed checkpoint; one chain for a PostgreSQL cluster.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use portcullis::clock::Clock;

use crate::common::{bin, http, metric, pg, Builder, TestGateway, PASSWORD};

fn cli(args: &[&str]) -> bin::Output {
    bin::run(bin::command(args), None, bin::CLI_LIMIT)
}

pub(crate) fn path(p: &Path) -> String {
    p.display().to_string()
}

pub(crate) fn admin_token(gw: &TestGateway) -> String {
    std::fs::read_to_string(gw.data_dir().join("admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

/// `GET /admin/audit?{query}` with the admin token.
pub(crate) async fn audit_get(gw: &TestGateway, query: &str) -> http::Response {
    let auth = format!("Bearer {}", admin_token(gw));
    http::request(
        gw.admin_addr,
        "GET",
        &format!("/admin/audit?{query}"),
        &[("authorization", &auth)],
        None,
    )
    .await
    .unwrap()
}

/// Every stored record, in chain order.
pub(crate) async fn all_records(gw: &TestGateway) -> Vec<Value> {
    let r = audit_get(gw, "after_seq=0&limit=1000").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["records"].as_array().unwrap().clone()
}

pub(crate) fn by_type(records: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in records {
        *out.entry(r["type"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    out
}

async fn role_add(gw: &TestGateway, email: &str, role: &str) -> http::Response {
    let auth = format!("Bearer {}", admin_token(gw));
    let body = json!({ "op": "role_add", "email": email, "role": role });
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

/// A backup's lines: the header and the records.
fn read_backup(file: &Path) -> (Value, Vec<Value>) {
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines = text.lines().filter(|l| !l.is_empty());
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let records = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    (header, records)
}

fn write_backup(file: &Path, header: &Value, records: &[Value]) {
    let mut text = header.to_string();
    for r in records {
        text.push('\n');
        text.push_str(&r.to_string());
    }
    text.push('\n');
    std::fs::write(file, text).unwrap();
}

fn audit_index(records: &[Value], seq: u64) -> usize {
    records
        .iter()
        .position(|r| r["type"] == "audit" && r["record"]["seq"] == seq)
        .unwrap_or_else(|| panic!("no audit record {seq} in the backup"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_after_activity_and_names_an_edited_removed_or_reordered_record() {
    let mut gw = TestGateway::start().await;
    let a = gw.signup("a@example.com").await;
    gw.signup("b@example.com").await;
    assert_eq!(
        gw.login("a@example.com", "wrong password!").await.status,
        401
    );
    assert_eq!(role_add(&gw, "b@example.com", "ops").await.status, 200);
    let r = gw
        .post(
            "/auth/logout",
            json!({ "refresh_token": a.refresh }),
            Some(&a.access),
        )
        .await;
    assert_eq!(r.status, 204);
    let records = all_records(&gw).await;
    let types = by_type(&records);
    assert_eq!(types.get("user.created"), Some(&2), "{types:?}");
    assert_eq!(types.get("user.login"), Some(&2), "{types:?}");
    assert_eq!(types.get("user.login_failed"), Some(&1), "{types:?}");
    assert_eq!(types.get("user.roles_changed"), Some(&1), "{types:?}");
    assert_eq!(types.get("session.revoked"), Some(&1), "{types:?}");
    let roles = records
        .iter()
        .find(|r| r["type"] == "user.roles_changed")
        .unwrap();
    assert_eq!(roles["actor"], "admin_api", "{roles}");
    assert_eq!(roles["data"]["added"], "ops", "{roles}");
    for r in &records {
        let text = r.to_string();
        assert!(
            !text.contains(PASSWORD) && !text.contains(&a.refresh),
            "{text}"
        );
    }
    let n = records.len() as u64;
    assert!(n >= 7);

    // While the gateway runs (the sled database is in use): through its
    // admin listener.
    let cfg = path(&gw.config_path());
    let out = cli(&["audit", "verify", "--config", &cfg]);
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stdout.contains(&format!("{n} records checked")),
        "{out:?}"
    );

    gw.stop();
    let out = cli(&["audit", "verify", "--config", &cfg]);
    assert!(out.ok(), "{out:?}");
    let file = gw.dir.path().join("audit.backup");
    let out = cli(&["backup", "--config", &cfg, "--out", &path(&file)]);
    assert!(out.ok(), "{out:?}");
    let (header, backup) = read_backup(&file);
    assert_eq!(header["counts"]["audit"], n, "{header}");

    // Each tampering, restored into a fresh database, is named.
    let tampered = |name: &str, f: &dyn Fn(&mut Value, &mut Vec<Value>)| {
        let mut h = header.clone();
        let mut recs = backup.clone();
        f(&mut h, &mut recs);
        let out_file = gw.dir.path().join(format!("{name}.backup"));
        write_backup(&out_file, &h, &recs);
        std::fs::remove_dir_all(gw.data_dir().join("db")).unwrap();
        let out = cli(&["restore", "--config", &cfg, "--from", &path(&out_file)]);
        assert!(out.ok(), "{name}: {out:?}");
        cli(&["audit", "verify", "--config", &cfg])
    };
    let edited = tampered("edited", &|_, recs| {
        let i = audit_index(recs, 3);
        recs[i]["record"]["outcome"] = json!("nothing happened");
    });
    assert_eq!(edited.status.code(), Some(1), "{edited:?}");
    assert!(
        edited.stderr.contains("audit record 3:") && edited.stderr.contains("edited"),
        "{edited:?}"
    );
    let removed = tampered("removed", &|h, recs| {
        let i = audit_index(recs, 3);
        recs.remove(i);
        h["counts"]["audit"] = json!(n - 1);
    });
    assert_eq!(removed.status.code(), Some(1), "{removed:?}");
    assert!(removed.stderr.contains("audit record 3:"), "{removed:?}");
    let reordered = tampered("reordered", &|_, recs| {
        // Records 3 and 4 trade places (each keeps its hashes).
        let (i, j) = (audit_index(recs, 3), audit_index(recs, 4));
        let (a, b) = (recs[i]["record"].clone(), recs[j]["record"].clone());
        recs[i]["record"] = b;
        recs[i]["record"]["seq"] = json!(3);
        recs[j]["record"] = a;
        recs[j]["record"]["seq"] = json!(4);
    });
    assert_eq!(reordered.status.code(), Some(1), "{reordered:?}");
    assert!(
        reordered.stderr.contains("audit record 3:"),
        "{reordered:?}"
    );

    // The untouched backup verifies again.
    let again = tampered("whole", &|_, _| {});
    assert!(again.ok(), "{again:?}");
}

/// 16 registrations, then 16 sign-ins, then 16 role changes, each batch
/// fired at once: exactly their events, in one whole chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_under_parallel_load_has_exactly_its_event() {
    let gw = TestGateway::start_with(Builder {
        extra: "[throttle]\nauth_per_minute = 0\n[passwords]\nmax_queued_hashes = 64\n".into(),
        ..Default::default()
    })
    .await;
    let addr = gw.addr;
    let emails: Vec<String> = (0..16).map(|i| format!("p{i}@example.com")).collect();
    let mut set = tokio::task::JoinSet::new();
    for e in &emails {
        let body = json!({ "email": e, "password": PASSWORD, "password_confirm": PASSWORD });
        set.spawn(async move {
            http::post_json(addr, "/auth/register", &body, None)
                .await
                .status
        });
    }
    while let Some(s) = set.join_next().await {
        assert_eq!(s.unwrap(), 201);
    }
    for e in &emails {
        let body = json!({ "email": e, "password": PASSWORD });
        set.spawn(async move {
            http::post_json(addr, "/auth/login", &body, None)
                .await
                .status
        });
    }
    while let Some(s) = set.join_next().await {
        assert_eq!(s.unwrap(), 200);
    }
    let auth = format!("Bearer {}", admin_token(&gw));
    let admin = gw.admin_addr;
    for e in &emails {
        let body = json!({ "op": "role_add", "email": e, "role": "ops" }).to_string();
        let auth = auth.clone();
        set.spawn(async move {
            http::request(
                admin,
                "POST",
                "/admin/users",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                Some(body.as_bytes()),
            )
            .await
            .unwrap()
            .status
        });
    }
    while let Some(s) = set.join_next().await {
        assert_eq!(s.unwrap(), 200);
    }
    let records = all_records(&gw).await;
    let types = by_type(&records);
    let want: BTreeMap<String, usize> = [
        ("user.created".to_string(), 16),
        ("user.login".to_string(), 16),
        ("user.roles_changed".to_string(), 16),
    ]
    .into();
    assert_eq!(types, want);
    // Each new user has exactly one event of each kind.
    for created in records.iter().filter(|r| r["type"] == "user.created") {
        let id = &created["user_id"];
        let mine: Vec<&Value> = records.iter().filter(|r| &r["user_id"] == id).collect();
        assert_eq!(mine.len(), 3, "{mine:?}");
    }
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=48).collect::<Vec<u64>>());
    let out = cli(&["audit", "verify", "--config", &path(&gw.config_path())]);
    assert!(out.ok(), "{out:?}");
    assert!(out.stdout.contains("48 records checked"), "{out:?}");
}

fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_the_admin_endpoint_filter_by_time_and_refuse_bad_input() {
    let gw = TestGateway::start().await;
    gw.signup("early@example.com").await;
    let t0 = gw.clock.now();
    gw.clock.advance(3600);
    gw.signup("late@example.com").await;
    let since = rfc3339(t0 + 1800);

    let r = audit_get(&gw, &format!("since={since}&limit=10")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let late = r.json()["records"].as_array().unwrap().clone();
    assert_eq!(by_type(&late).get("user.created"), Some(&1), "{late:?}");
    assert_eq!(late.len(), 2, "{late:?}");
    assert!(late.iter().all(|r| r["at"].as_i64().unwrap() >= t0 + 1800));
    let r = audit_get(&gw, &format!("since={since}&limit=1")).await;
    assert_eq!(r.json()["records"].as_array().unwrap().len(), 1);
    assert_eq!(r.json()["head"]["seq"], 4, "{}", r.text());

    for bad in [
        "since=yesterday",
        "since=2026-13-01T00:00:00Z",
        "limit=0",
        "limit=abc",
        "limit=100000",
        "after_seq=-1",
        "colour=red",
    ] {
        let r = audit_get(&gw, bad).await;
        crate::common::assert_error(&r, 400, "bad_request");
    }
    let r = http::get(gw.admin_addr, "/admin/audit?limit=1", None).await;
    assert_eq!(r.status, 401);

    let cfg = path(&gw.config_path());
    let out_file = gw.dir.path().join("late.jsonl");
    let out = cli(&[
        "audit",
        "export",
        "--config",
        &cfg,
        "--since",
        &since,
        "--out",
        &path(&out_file),
    ]);
    assert!(out.ok(), "{out:?}");
    let lines: Vec<Value> = std::fs::read_to_string(&out_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, late);
    let out = cli(&["audit", "export", "--config", &cfg]);
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 4, "{out:?}");
    let out = cli(&["audit", "export", "--config", &cfg, "--since", "soon"]);
    assert!(!out.ok() && out.stderr.contains("RFC 3339"), "{out:?}");

    // The head is published with each maintenance sweep.
    gw.sweep().await;
    assert_eq!(
        metric(&gw.metrics().await, "portcullis_audit_chain_head_seq"),
        4.0
    );
}

/// Retention cuts old records behind a signed checkpoint; the chain
/// verifies from it, and a forged checkpoint does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_cuts_behind_a_signed_checkpoint_that_verify_checks() {
    let mut gw = TestGateway::start_with(Builder {
        extra: "[log]\naudit_retention_days = 1\n".into(),
        ..Default::default()
    })
    .await;
    gw.signup("old@example.com").await;
    gw.clock.advance(2 * 86_400);
    gw.signup("new@example.com").await;
    gw.sweep().await;
    let r = audit_get(&gw, "after_seq=0&limit=100").await;
    let v = r.json();
    assert_eq!(v["checkpoint"]["seq"], 2, "{v}");
    let seqs: Vec<u64> = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![3, 4], "{v}");
    let cfg = path(&gw.config_path());
    let out = cli(&["audit", "verify", "--config", &cfg]);
    assert!(out.ok(), "{out:?}");

    gw.stop();
    let file = gw.dir.path().join("cp.backup");
    assert!(cli(&["backup", "--config", &cfg, "--out", &path(&file)]).ok());
    let (header, mut records) = read_backup(&file);
    let i = records
        .iter()
        .position(|r| r["type"] == "audit_checkpoint")
        .expect("the checkpoint is backed up");
    // A checkpoint not signed with the gateway's key.
    records[i]["record"]["mac"] = json!("00".repeat(32));
    let forged = gw.dir.path().join("forged.backup");
    write_backup(&forged, &header, &records);
    std::fs::remove_dir_all(gw.data_dir().join("db")).unwrap();
    assert!(cli(&["restore", "--config", &cfg, "--from", &path(&forged)]).ok());
    let out = cli(&["audit", "verify", "--config", &cfg]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("signature"), "{out:?}");
}

/// Two gateways on one database: one chain, whatever gateway wrote; an
/// edit or a removal made directly in SQL is named by verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_cluster_keeps_one_chain() {
    let cluster = pg::required();
    let url = cluster.database().await;
    let secret = "a shared refresh-token key, 32 bytes or more";
    let mut gws = Vec::new();
    for _ in 0..2 {
        gws.push(
            TestGateway::start_with(Builder {
                extra: format!(
                    "[throttle]\nauth_per_minute = 0\n[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\n"
                ),
                env: [
                    ("PORTCULLIS_REFRESH_SECRET".to_string(), secret.to_string()),
                    (
                        "PORTCULLIS_JWT_SECRET".to_string(),
                        "a shared HS256 secret of at least 32 bytes!!".to_string(),
                    ),
                ]
                .into(),
                ..Default::default()
            })
            .await,
        );
    }
    let mut set = tokio::task::JoinSet::new();
    for i in 0..16 {
        let addr = gws[i % 2].addr;
        let body = json!({
            "email": format!("c{i}@example.com"), "password": PASSWORD, "password_confirm": PASSWORD
        });
        set.spawn(async move {
            http::post_json(addr, "/auth/register", &body, None)
                .await
                .status
        });
    }
    while let Some(s) = set.join_next().await {
        assert_eq!(s.unwrap(), 201);
    }
    let one = all_records(&gws[0]).await;
    let two = all_records(&gws[1]).await;
    assert_eq!(one, two);
    let seqs: Vec<u64> = one.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=16).collect::<Vec<u64>>());
    assert_eq!(by_type(&one).get("user.created"), Some(&16));

    let verify = || {
        let mut cmd = bin::command(&["audit", "verify", "--config", &path(&gws[0].config_path())]);
        cmd.env("PORTCULLIS_REFRESH_SECRET", secret).env(
            "PORTCULLIS_JWT_SECRET",
            "a shared HS256 secret of at least 32 bytes!!",
        );
        bin::run(cmd, None, bin::CLI_LIMIT)
    };
    let out = verify();
    assert!(out.ok(), "{out:?}");
    assert!(out.stdout.contains("16 records checked"), "{out:?}");

    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .execute(
            "UPDATE audit_log SET record = jsonb_set(record, '{outcome}', '\"failure\"') WHERE seq = 5",
            &[],
        )
        .await
        .unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("audit record 5:"), "{out:?}");
    client
        .execute("DELETE FROM audit_log WHERE seq = 5", &[])
        .await
        .unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("audit record 5:"), "{out:?}");
}
