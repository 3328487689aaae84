//! `portcullis backup` and `portcullis restore` (issue 12), on the real
//! binary: a backup taken from a running gateway through its admin
//! listener, a database lost, a restore into the empty data dir, and the
//! gateway carrying on where it was.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{json, Value};

use crate::common::{bin, Builder, TestGateway, PASSWORD};

fn cli(args: &[&str]) -> bin::Output {
    bin::run(bin::command(args), None, bin::CLI_LIMIT)
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_running_gateway_restores_a_lost_database() {
    let mut gw = TestGateway::start().await;
    let a = gw.signup("a@example.com").await;
    let b = gw.signup("b@example.com").await;
    let r = gw
        .post(
            "/auth/logout",
            json!({ "refresh_token": b.refresh }),
            Some(&b.access),
        )
        .await;
    assert_eq!(r.status, 204);
    let config = gw.dir.path().join("gateway.toml");
    std::fs::write(&config, &gw.toml).unwrap();
    let cfg = path(&config);

    // While it runs: the database is in use, so the copy comes through the
    // admin listener.
    let live = gw.dir.path().join("live.backup");
    let out = cli(&["backup", "--config", &cfg, "--out", &path(&live)]);
    assert!(out.ok(), "{out:?}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["counts"]["users"], 2, "{report}");
    assert_eq!(report["counts"]["sessions"], 1, "{report}");
    assert!(
        report["counts"]["revocations"].as_u64().unwrap() >= 1,
        "{report}"
    );
    let mode = std::fs::metadata(&live).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a backup holds password hashes");
    let again = cli(&["backup", "--config", &cfg, "--out", &path(&live)]);
    assert!(!again.ok() && again.stderr.contains("exists"), "{again:?}");

    // Stopped: the same copy, read directly.
    gw.stop();
    let offline = gw.dir.path().join("offline.backup");
    let out = cli(&["backup", "--config", &cfg, "--out", &path(&offline)]);
    assert!(out.ok(), "{out:?}");
    let offline_report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(offline_report["counts"], report["counts"]);

    // The database is lost. A truncated backup is refused before anything
    // is written; the whole one goes back.
    std::fs::remove_dir_all(gw.data_dir().join("db")).unwrap();
    let text = std::fs::read_to_string(&live).unwrap();
    let cut = gw.dir.path().join("cut.backup");
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&cut, lines[..lines.len() - 1].join("\n")).unwrap();
    let out = cli(&["restore", "--config", &cfg, "--from", &path(&cut)]);
    assert!(!out.ok() && out.stderr.contains("truncated"), "{out:?}");
    let out = cli(&["restore", "--config", &cfg, "--from", &path(&live)]);
    assert!(out.ok(), "{out:?}");
    let restored: Value = serde_json::from_str(&out.stdout).unwrap();
    for (kind, t) in restored.as_object().unwrap() {
        assert_eq!(t["source"], t["target"], "{kind}: {restored}");
        assert_eq!(t["source"], report["counts"][kind], "{kind}: {restored}");
    }
    let twice = cli(&["restore", "--config", &cfg, "--from", &path(&live)]);
    assert!(
        !twice.ok() && twice.stderr.contains("not empty"),
        "{twice:?}"
    );

    // The gateway starts on the restored database and carries on.
    gw.restart();
    assert_eq!(gw.get("/", Some(&a.access)).await.status, 200);
    assert_eq!(
        gw.get("/", Some(&b.access)).await.status,
        401,
        "still revoked"
    );
    let r = gw
        .post("/auth/refresh", json!({ "refresh_token": a.refresh }), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(gw.register("a@example.com", PASSWORD).await.status, 409);
    assert_eq!(gw.login("b@example.com", PASSWORD).await.status, 200);
}

/// An offline backup (written page by page) and a restore (the file read
/// twice: checked whole, then imported page by page, so memory does not
/// grow with it) say how far they are on stderr: plain lines when stderr
/// is not a terminal, the last one at 100% (issue 26).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_reports_its_progress_on_stderr() {
    let mut gw = TestGateway::start().await;
    for i in 0..3 {
        gw.signup(&format!("p{i}@example.com")).await;
    }
    let config = gw.dir.path().join("gateway.toml");
    std::fs::write(&config, &gw.toml).unwrap();
    let cfg = path(&config);
    gw.stop();
    let file = gw.dir.path().join("p.backup");
    let out = cli(&["backup", "--config", &cfg, "--out", &path(&file)]);
    assert!(out.ok(), "{out:?}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let total: u64 = report["counts"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(total >= 6, "{report}");
    // Offline, the backup is written page by page, with progress too.
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with(&format!("backing up: {total}/{total} records (100%)"))),
        "{}",
        out.stderr
    );
    std::fs::remove_dir_all(gw.data_dir().join("db")).unwrap();
    let out = cli(&["restore", "--config", &cfg, "--from", &path(&file)]);
    assert!(out.ok(), "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("checking the backup: {total} records"))),
        "{}",
        out.stderr
    );
    let last = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("restoring:"))
        .unwrap_or_else(|| panic!("no progress line: {}", out.stderr));
    assert!(
        last.starts_with(&format!("restoring: {total}/{total} records (100%)")),
        "{last}"
    );
    assert!(!out.stderr.contains('\r'), "no bar when not a terminal");
}

/// A gateway whose store holds `n` users more than the one it signed up
/// (copies of that one under new ids and emails, put in by a restore:
/// registering thousands through argon2 would take minutes), running;
/// and the config file's path.
async fn gateway_with_users(n: usize, extra: &str) -> (TestGateway, String) {
    let mut gw = TestGateway::start_with(Builder {
        extra: format!("[throttle]\nauth_per_minute = 0\n{extra}"),
        ..Default::default()
    })
    .await;
    gw.signup("seed@example.com").await;
    let cfg = path(&gw.config_path());
    gw.stop();
    let seed = gw.dir.path().join("seed.backup");
    let out = cli(&["backup", "--config", &cfg, "--out", &path(&seed)]);
    assert!(out.ok(), "{out:?}");
    let text = std::fs::read_to_string(&seed).unwrap();
    let mut lines = text.lines().filter(|l| !l.is_empty());
    let mut header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let records: Vec<Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let user = records
        .iter()
        .find(|r| r["type"] == "user")
        .expect("the seed user")
        .clone();
    let mut big = records.clone();
    for i in 0..n {
        let mut u = user.clone();
        u["record"]["id"] = json!(uuid::Uuid::new_v4().to_string());
        u["record"]["email"] = json!(format!("many{i}@example.com"));
        big.push(u);
    }
    let users = header["counts"]["users"].as_u64().unwrap();
    header["counts"]["users"] = json!(users + n as u64);
    let mut body = header.to_string();
    for r in &big {
        body.push('\n');
        body.push_str(&r.to_string());
    }
    body.push('\n');
    let file = gw.dir.path().join("many.backup");
    std::fs::write(&file, body).unwrap();
    std::fs::remove_dir_all(gw.data_dir().join("db")).unwrap();
    let out = cli(&["restore", "--config", &cfg, "--from", &path(&file)]);
    assert!(out.ok(), "{out:?}");
    gw.restart();
    (gw, cfg)
}

/// The record lines of a backup file (its header and a streamed backup's
/// end line aside), sorted.
fn record_lines(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out: Vec<String> = text
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty() && !l.starts_with("{\"portcullis_backup_end\""))
        .map(str::to_string)
        .collect();
    out.sort();
    out
}

/// Issue 26: a backup from a running gateway streams. `GET /admin/backup`
/// answers with a chunked body written page by page (no length: the
/// gateway never held it whole), its counts in a last line; the CLI writes
/// it into the file as it comes. A store of several pages comes back whole:
/// restored, it holds exactly the records of the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_of_many_pages_streams_and_restores_whole() {
    let n = 7000; // the gateway writes 2,000 records a page
    let (mut gw, cfg) = gateway_with_users(n, "").await;
    let token = std::fs::read_to_string(gw.data_dir().join("admin.token")).unwrap();
    let r = crate::common::http::request(
        gw.admin_addr,
        "GET",
        "/admin/backup",
        &[("authorization", &format!("Bearer {}", token.trim()))],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{r:?}");
    assert_eq!(r.header("content-length"), None);
    let text = r.text();
    let lines: Vec<&str> = text.lines().collect();
    let header: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(header["portcullis_backup"], 2, "{header}");
    let end: Value = serde_json::from_str(lines[lines.len() - 1]).unwrap();
    let users = end["portcullis_backup_end"]["users"].as_u64().unwrap();
    assert_eq!(users, n as u64 + 1, "{end}");
    let held: u64 = end["portcullis_backup_end"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(lines.len() as u64, held + 2);
    // Without the token: 401, as before.
    let r = crate::common::http::request(gw.admin_addr, "GET", "/admin/backup", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 401);

    let live = gw.dir.path().join("live.backup");
    let out = cli(&["backup", "--config", &cfg, "--out", &path(&live)]);
    assert!(out.ok(), "{out:?}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["counts"]["users"], n as u64 + 1, "{report}");
    assert!(
        out.stderr.lines().any(|l| l.starts_with("backing up: ")),
        "progress: {}",
        out.stderr
    );
    assert!(!gw.dir.path().join("live.partial").exists());

    gw.stop();
    std::fs::remove_dir_all(gw.data_dir().join("db")).unwrap();
    let out = cli(&["restore", "--config", &cfg, "--from", &path(&live)]);
    assert!(out.ok(), "{out:?}");
    let restored: Value = serde_json::from_str(&out.stdout).unwrap();
    for (kind, t) in restored.as_object().unwrap() {
        assert_eq!(t["source"], t["target"], "{kind}: {restored}");
        assert_eq!(t["source"], report["counts"][kind], "{kind}: {restored}");
    }
    // The restored store holds exactly the file's records.
    let again = gw.dir.path().join("again.backup");
    let out = cli(&["backup", "--config", &cfg, "--out", &path(&again)]);
    assert!(out.ok(), "{out:?}");
    assert_eq!(record_lines(&live), record_lines(&again));
    gw.restart();
    assert_eq!(gw.login("seed@example.com", PASSWORD).await.status, 200);
    assert_eq!(gw.login("many6999@example.com", PASSWORD).await.status, 200);
}

/// A client that asks for a streamed backup and then reads nothing loses
/// the connection once a write has made no progress for
/// `limits.downstream_write_timeout_secs`, instead of holding the store's
/// read open for as long as it likes; the copy never looks complete (no
/// end line). A client that reads gets the whole copy under the same
/// setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_client_that_stops_reading_is_cut_at_the_write_timeout() {
    // Far more than the socket buffers on both sides hold (about 600 bytes
    // a user).
    let n = 20_000;
    let (gw, _cfg) = gateway_with_users(n, "[limits]\ndownstream_write_timeout_secs = 2\n").await;
    let token = std::fs::read_to_string(gw.data_dir().join("admin.token")).unwrap();
    let auth = format!("Bearer {}", token.trim());
    // Nothing read for well past the timeout, then what was buffered.
    let head = format!("GET /admin/backup HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n");
    let got =
        crate::common::http::stalled_read(gw.admin_addr, &head, std::time::Duration::from_secs(5))
            .await
            .expect("still open 20 s after the client read again");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(
        !text.contains("portcullis_backup_end"),
        "the whole copy arrived ({} bytes): the write timeout did not cut it",
        got.len()
    );

    let r = crate::common::http::request(
        gw.admin_addr,
        "GET",
        "/admin/backup",
        &[("authorization", &auth)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let text = r.text();
    let end: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(end["portcullis_backup_end"]["users"], n as u64 + 1, "{end}");
}

/// A backup taken while 16 registrations run in parallel completes (the
/// store changing under it is no error) and restores into a store that
/// verifies: equal counts, an unbroken audit chain, and every account
/// acknowledged before the backup began is in it and can log in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_while_16_registrations_run_restores_to_a_verifying_store() {
    let (mut gw, cfg) = gateway_with_users(6000, "").await;
    backup_under_registrations(&mut gw, &cfg).await;
}

/// Run `portcullis backup` while 16 clients register in a loop; restore it
/// into an empty store and check it.
async fn backup_under_registrations(gw: &mut TestGateway, cfg: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let gw_ref: &TestGateway = gw;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicUsize::new(0));
    let file = gw_ref.dir.path().join("busy.backup");
    let (acked_before, acked_after) = {
        let clients: Vec<_> = (0..16)
            .map(|t| {
                let (stop, started) = (stop.clone(), started.clone());
                let addr = gw_ref.addr;
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let email = format!("busy{t}-{i}@example.com");
                        let r = crate::common::http::post_json(
                            addr,
                            "/auth/register",
                            &json!({ "email": email, "password": PASSWORD, "password_confirm": PASSWORD }),
                            None,
                        )
                        .await;
                        assert_eq!(r.status, 201, "{r:?}");
                        if i == 0 {
                            started.fetch_add(1, Ordering::SeqCst);
                        }
                        acked.push((email, std::time::Instant::now()));
                        i += 1;
                    }
                    acked
                })
            })
            .collect();
        // Every client has registered once: all 16 are busy.
        while started.load(Ordering::SeqCst) < 16 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let began = std::time::Instant::now();
        let (c, f) = (cfg.to_string(), path(&file));
        let out =
            tokio::task::spawn_blocking(move || cli(&["backup", "--config", &c, "--out", &f]))
                .await
                .unwrap();
        let ended = std::time::Instant::now();
        stop.store(true, Ordering::SeqCst);
        assert!(out.ok(), "{out:?}");
        let mut before = Vec::new();
        let mut during = 0;
        for c in clients {
            for (email, at) in c.await.unwrap() {
                if at < began {
                    before.push(email);
                } else if at < ended {
                    during += 1;
                }
            }
        }
        (before, during)
    };
    eprintln!(
        "{} registrations before the backup, {acked_after} during it",
        acked_before.len()
    );
    gw.stop();
    let text = std::fs::read_to_string(&file).unwrap();
    for email in &acked_before {
        assert!(
            text.contains(&format!("\"email\":\"{email}\"")),
            "{email} is missing"
        );
    }
    std::fs::remove_dir_all(gw.data_dir().join("db")).unwrap();
    let out = cli(&["restore", "--config", cfg, "--from", &path(&file)]);
    assert!(out.ok(), "{out:?}");
    let restored: Value = serde_json::from_str(&out.stdout).unwrap();
    for (kind, t) in restored.as_object().unwrap() {
        assert_eq!(t["source"], t["target"], "{kind}: {restored}");
    }
    let out = cli(&["audit", "verify", "--config", cfg]);
    assert!(out.ok(), "{out:?}");
    gw.restart();
    assert_eq!(gw.login(&acked_before[0], PASSWORD).await.status, 200);
    file
}
