//! Acknowledged writes survive a crash. The graceful-restart tests elsewhere
//! flush on the way down; these run the real binary, SIGKILL it right after
//! the acknowledged response (no shutdown code runs), start it again on the
//! same data dir and look for the write.

use std::net::TcpListener;
use std::time::Duration;

use serde_json::json;

use crate::common::bin::{self, Served};
use crate::common::{http, smtp, upstream, PASSWORD};

const NO_THROTTLE: &str = "[throttle]\nauth_per_minute = 0\n";

async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    body: serde_json::Value,
    bearer: Option<&str>,
) -> http::Response {
    http::post_json(addr, path, &body, bearer).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_acknowledged_before_a_crash_can_log_in_after_it() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = bin::write_config(dir.path(), &up.url(), NO_THROTTLE);
    let mut gw = Served::start(&cfg).await;
    let r = post(
        cfg.listen,
        "/auth/register",
        json!({ "email": "crash@example.com", "password": PASSWORD, "password_confirm": PASSWORD }),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    gw.crash();

    let _gw = Served::start(&cfg).await;
    let r = post(
        cfg.listen,
        "/auth/login",
        json!({ "email": "crash@example.com", "password": PASSWORD }),
        None,
    )
    .await;
    assert_eq!(
        r.status, 200,
        "the registration was lost in the crash: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_acknowledged_before_a_crash_stays_revoked_after_it() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = bin::write_config(dir.path(), &up.url(), NO_THROTTLE);
    let mut gw = Served::start(&cfg).await;
    let r = post(
        cfg.listen,
        "/auth/register",
        json!({ "email": "out@example.com", "password": PASSWORD, "password_confirm": PASSWORD }),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = post(
        cfg.listen,
        "/auth/login",
        json!({ "email": "out@example.com", "password": PASSWORD }),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let access = r.json()["access_token"].as_str().unwrap().to_string();
    let refresh = r.json()["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(
        http::get(cfg.listen, "/app", Some(&access)).await.status,
        200
    );
    let r = post(
        cfg.listen,
        "/auth/logout",
        json!({ "refresh_token": refresh }),
        Some(&access),
    )
    .await;
    assert_eq!(r.status, 204, "{r:?}");
    gw.crash();

    let _gw = Served::start(&cfg).await;
    let r = http::get(cfg.listen, "/app", Some(&access)).await;
    assert_eq!(
        r.status, 401,
        "the access token came back after a crash: {r:?}"
    );
    let r = post(
        cfg.listen,
        "/auth/refresh",
        json!({ "refresh_token": refresh }),
        None,
    )
    .await;
    assert_eq!(
        r.status, 401,
        "the refresh token came back after a crash: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_queued_before_a_crash_is_delivered_after_it() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // First an SMTP server that accepts connections and never greets: the
    // send hangs until the crash, so the message is still queued.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let mail = |port: u16| {
        format!(
            "{NO_THROTTLE}\n[mail]\ntransport = \"smtp\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\nsmtp_timeout_secs = 60\nlink_base_url = \"https://gateway.test\"\n"
        )
    };
    let cfg = bin::write_config(
        dir.path(),
        &up.url(),
        &mail(silent.local_addr().unwrap().port()),
    );
    let mut gw = Served::start(&cfg).await;
    let r = post(
        cfg.listen,
        "/auth/register",
        json!({ "email": "mailcrash@example.com", "password": PASSWORD, "password_confirm": PASSWORD }),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    gw.crash();
    drop(silent);

    // The same data dir and ports, now with a working SMTP server.
    let smtp = smtp::start().await;
    let text = std::fs::read_to_string(&cfg.path).unwrap().replace(
        &format!("smtp_port = {}", {
            let t = std::fs::read_to_string(&cfg.path).unwrap();
            t.lines()
                .find_map(|l| l.strip_prefix("smtp_port = ").map(str::to_string))
                .unwrap()
        }),
        &format!("smtp_port = {}", smtp.addr.port()),
    );
    std::fs::write(&cfg.path, text).unwrap();
    let _gw = Served::start(&cfg).await;
    let mails = smtp.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(mails[0].to, vec!["mailcrash@example.com".to_string()]);
    assert!(mails[0].token_from_link("/auth/email/verify").is_some());
}
