//! The first screen a newcomer sees: the real binary started with the
//! shipped defaults (TLS with a generated dev certificate, the demo echo
//! upstream) logs no error. It used to log one for the TLS handshake its
//! own start-up probe abandons.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::bin::{self, Served};
use crate::common::free_port;

/// Start the real binary with the shipped-defaults shape of config, its
/// TLS listener on `tls_host`; the first screen (stderr) once it runs.
async fn first_screen(tls_host: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let (http, tls, admin, echo) = (free_port(), free_port(), free_port(), free_port());
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{http}"
tls_listen = "{tls_host}:{tls}"
admin_listen = "127.0.0.1:{admin}"
tls_cert = "{d}/certs/dev-cert.pem"
tls_key = "{d}/certs/dev-key.pem"
data_dir = "{d}/data"

[demo]
echo_listen = "127.0.0.1:{echo}"

[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:{echo}"
auth = "required"
"#
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let log = dir.path().join("stderr.log");
    let mut cmd = bin::command(&["serve", "--config"]);
    cmd.arg(&path).env("NO_COLOR", "1");
    // Stopped (by its own handle) however the test ends.
    let _served = Served::spawn(cmd, log.clone(), SocketAddr::from(([127, 0, 0, 1], admin))).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("portcullis is running") {
            break;
        }
        assert!(Instant::now() < deadline, "did not start:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let anything the start-up caused be logged.
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::read_to_string(&log).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_start_logs_no_error() {
    let text = first_screen("127.0.0.1").await;
    assert!(
        !text.contains("ERROR"),
        "an error on the first screen:\n{text}"
    );
    assert!(text.contains("INFO"), "{text}");
    assert!(
        !text.contains("mail.transport"),
        "on loopback the log transport is no warning:\n{text}"
    );
}

/// The log transport writes reset links to the log: with a listener
/// beyond loopback (the shipped `tls_listen = 0.0.0.0:8443`), the start
/// says so, loudly, naming the listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_transport_on_a_public_listener_is_warned_about() {
    let text = first_screen("0.0.0.0").await;
    let line = text
        .lines()
        .find(|l| l.contains("mail.transport"))
        .unwrap_or_else(|| panic!("no warning:\n{text}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("0.0.0.0:"), "names the listener: {line}");
    assert!(!text.contains("ERROR"), "{text}");
}
