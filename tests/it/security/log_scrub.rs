//! Tokens in query strings never reach the log, even from Pingora's own
//! lines. This runs the real binary and reads what it writes to stderr.

use std::path::Path;
use std::time::{Duration, Instant};

use super::*;
use crate::common::bin::{self, Served};
use crate::common::upstream;

/// The real binary with Pingora at trace level, stopped (by its own handle)
/// when the returned value is dropped; ready once `listen` accepts.
async fn start(dir: &Path, listen: SocketAddr, up: &str, dead: u16) -> Served {
    let d = dir.display();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        r#"
[server]
listen = "{listen}"
tls_listen = ""
admin_listen = "{admin}"
data_dir = "{d}/data"
grace_period_secs = 1

[log]
# Pingora at its most verbose: it then dumps whole request headers.
level = "info,pingora_proxy=trace,pingora_core=debug"

[[routes]]
prefix = "/ok"
upstream = "{up}"
auth = "public"

[[routes]]
prefix = "/dead"
upstream = "http://127.0.0.1:{dead}"
auth = "public"
"#
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = bin::command(&["serve", "--config"]);
    cmd.arg(&path).env("NO_COLOR", "1");
    let gw = Served::spawn(cmd, dir.join("stderr.log"), admin).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(listen).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "gateway did not start: {}",
            read_log(dir)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
}

/// Waits until the log holds every one of `needles`.
async fn wait_log(dir: &Path, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = read_log(dir);
        if needles.iter().all(|n| log.contains(n)) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "log lacks one of {needles:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Sensitive data in logs (ASVS 4.0.3 V7.1.1 / V3.1.1, CWE-532 insertion of
/// sensitive information into log files, CWE-598 query strings): email
/// links carry `?token=…`, and Pingora's own error and trace lines quote the
/// request target verbatim. With Pingora at trace level, a failed upstream,
/// a local endpoint, a request dropped mid-body and a malformed request,
/// none of the query-string tokens appears in the binary's output, while
/// the lines themselves (path and `?[redacted]`) do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_in_query_strings_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream::start().await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _gw = start(dir.path(), listen, &up.url(), free_port()).await;
    let secrets = [
        "S3cretDeadUpstream0000000000000001",
        "S3cretProxied000000000000000000002",
        "S3cretDroppedReset0000000000000003",
        "S3cretLocalVerify00000000000000004",
        "S3cretMalformed0000000000000000005",
    ];

    // 1. Upstream down: Pingora's "Fail to proxy" error line.
    let r = http::get(listen, &format!("/dead/x?token={}", secrets[0]), None).await;
    assert_error(&r, 502, "bad_gateway");
    // 2. Proxied: Pingora's trace dump of the request header.
    let r = http::get(listen, &format!("/ok/x?a=1&token={}", secrets[1]), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    // 3. A reset-link request dropped in the middle of its body.
    let mut conn = http::Conn::connect(listen).await.unwrap();
    conn.write_partial(
        format!(
            "POST /auth/password/reset?token={} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{{\"email\":",
            secrets[2]
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    drop(conn);
    // 4. A local endpoint with the token in its query.
    let r = http::get(
        listen,
        &format!("/auth/email/verify?token={}", secrets[3]),
        None,
    )
    .await;
    assert!(r.status < 500, "{r:?}");
    // 5. A request Pingora cannot parse (its error quotes the raw bytes).
    let raw = format!(
        "GET /ok/y?token={} HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        secrets[4]
    );
    let _ = http::send_raw(listen, raw.as_bytes()).await;
    // A last request, so everything before it has been handled and logged.
    assert_eq!(http::get(listen, "/ok/last", None).await.status, 200);

    let log = wait_log(
        dir.path(),
        &["/dead/x?[redacted]", "/ok/x?[redacted]", "/ok/last"],
    )
    .await;
    for s in secrets {
        assert!(!log.contains(s), "{s} is in the log:\n{log}");
    }
    assert!(
        !log.contains("token="),
        "a token= parameter is in the log:\n{log}"
    );
}
