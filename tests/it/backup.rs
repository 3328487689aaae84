//! `portcullis backup` and `portcullis restore` (issue 12), on the real
//! binary: a backup taken from a running gateway through its admin
//! listener, a database lost, a restore into the empty data dir, and the
//! gateway carrying on where it was.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{json, Value};

use crate::common::{bin, TestGateway, PASSWORD};

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
