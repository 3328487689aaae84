//! The first screen a newcomer sees: the real binary started with the
//! shipped defaults (TLS with a generated dev certificate, the demo echo
//! upstream) logs no error. It used to log one for the TLS handshake its
//! own start-up probe abandons.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::free_port;

/// Stops the child this test started (by its handle) however the test ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_default_start_logs_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let (http, tls, admin, echo) = (free_port(), free_port(), free_port(), free_port());
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{http}"
tls_listen = "127.0.0.1:{tls}"
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
    let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("start the binary");
    let _guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("portcullis is running") {
            break;
        }
        assert!(Instant::now() < deadline, "did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let anything the start-up caused be logged.
    std::thread::sleep(Duration::from_millis(500));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("ERROR"),
        "an error on the first screen:\n{text}"
    );
    assert!(text.contains("INFO"), "{text}");
}
