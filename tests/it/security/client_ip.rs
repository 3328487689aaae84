//! The client IP comes from exactly one configured header, and only from
//! trusted proxies.

use std::process::{Command, Stdio};

use super::*;

const TRUST_LOOPBACK: &str = "trusted_proxies = [\"127.0.0.1/32\"]\n";

async fn gateway(header: Option<&str>) -> TestGateway {
    let mut server_extra = TRUST_LOOPBACK.to_string();
    if let Some(h) = header {
        server_extra.push_str(&format!("client_ip_header = \"{h}\"\n"));
    }
    TestGateway::start_with(Builder {
        server_extra,
        extra: "[throttle]\nauth_per_minute = 2\n".into(),
        ..Default::default()
    })
    .await
}

/// IP spoofing through a second forwarding header (ASVS 4.0.3 V1.4.3 /
/// CWE-348 use of a less trusted source; CWE-290): the proxy in front
/// overwrites X-Forwarded-For, but the client adds its own
/// `Forwarded: for=` and `X-Real-IP`, which the proxy passes through. With
/// `client_ip_header = "x-forwarded-for"` (the default) those are ignored:
/// the upstream's X-Real-IP and the per-IP throttle bucket are the proxy's
/// X-Forwarded-For client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_added_forwarded_header_does_not_beat_the_proxys_xff() {
    let gw = gateway(None).await;
    let spoof = [
        ("Forwarded", "for=6.6.6.6;proto=https"),
        ("X-Real-IP", "7.7.7.7"),
        ("X-Forwarded-For", "203.0.113.7"),
    ];
    let r = get_with(&gw, "/public/x", &spoof).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echoed(&r, "x-real-ip"), vec!["203.0.113.7"]);
    assert_eq!(
        echoed(&r, "x-forwarded-for"),
        vec!["203.0.113.7, 127.0.0.1"]
    );
    assert!(echoed(&r, "forwarded").is_empty(), "{r:?}");

    // The throttle counts the same client, whatever else it claims.
    assert_eq!(cheap_auth_post(&gw, &spoof).await.status, 401);
    let rotated = [
        ("Forwarded", "for=6.6.6.99"),
        ("X-Real-IP", "7.7.7.99"),
        ("X-Forwarded-For", "203.0.113.7"),
    ];
    assert_eq!(cheap_auth_post(&gw, &rotated).await.status, 401);
    assert_429(
        &cheap_auth_post(&gw, &rotated).await,
        "rotated spoof headers",
    );
    // Another client behind the proxy has its own budget.
    let other = [("X-Forwarded-For", "203.0.113.8")];
    assert_eq!(cheap_auth_post(&gw, &other).await.status, 401);
}

/// The same rule for the other two settings (CWE-348): with `forwarded` only
/// RFC 7239 `for=` is read and a client's X-Forwarded-For is ignored; with
/// `x-real-ip` only X-Real-IP. From an untrusted peer nothing is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_configured_client_ip_header_is_read() {
    let all = [
        ("Forwarded", "for=\"[2001:db8::7]:4711\", for=127.0.0.1"),
        ("X-Real-IP", "198.51.100.9"),
        ("X-Forwarded-For", "6.6.6.6"),
    ];
    let gw = gateway(Some("forwarded")).await;
    let r = get_with(&gw, "/public/x", &all).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echoed(&r, "x-real-ip"), vec!["2001:db8::7"]);
    // The received XFF is not the vouched-for chain here: not extended.
    assert_eq!(echoed(&r, "x-forwarded-for"), vec!["2001:db8::7"]);
    drop(gw);

    let gw = gateway(Some("x-real-ip")).await;
    let r = get_with(&gw, "/public/x", &all).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echoed(&r, "x-real-ip"), vec!["198.51.100.9"]);
    assert_eq!(echoed(&r, "x-forwarded-for"), vec!["198.51.100.9"]);
    drop(gw);

    // Untrusted peer: every forwarding header is ignored.
    let gw = TestGateway::start_with(Builder {
        server_extra: "client_ip_header = \"x-real-ip\"\n".into(),
        ..Default::default()
    })
    .await;
    let r = get_with(&gw, "/public/x", &all).await;
    assert_eq!(echoed(&r, "x-real-ip"), vec!["127.0.0.1"]);
    assert_eq!(echoed(&r, "x-forwarded-for"), vec!["127.0.0.1"]);
}

/// A typo in the trust setting must not silently fall back to reading some
/// header (ASVS 4.0.3 V14.1.3 hardened configuration): `check-config` names
/// the key and exits 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_client_ip_header_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\ntls_listen = \"\"\nadmin_listen = \"\"\ndata_dir = \"{}\"\nclient_ip_header = \"true-client-ip\"\n",
            free_port(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("run portcullis check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("server.client_ip_header") && stderr.contains("true-client-ip"),
        "{stderr}"
    );
}
