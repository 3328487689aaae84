//! The access log (issue 24): one line per request from the real binary,
//! with the host (bounded: the configured hosts, else `other`), the path
//! without its query, the status, the route, the rule of a refusal, the
//! request id and the client IP; never a token, a query or a cookie.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::bin::{self, Served};
use crate::common::{echoed, http, upstream};

const SECRET_QUERY: &str = "token=s3cr3t-q";
const BEARER: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNlY3JldA";

fn log_section(extra: &str) -> String {
    format!(
        r#"[log]
format = "json"
{extra}

[[routes]]
host = "app.example.test"
prefix = "/"
upstream = "{{UP}}"
auth = "public"
"#
    )
}

/// The access lines (JSON objects with target `access`, or the flattened
/// objects of `log.access_file`) in `text`.
fn access_lines(text: &str, flattened: bool) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| flattened || v["target"] == "access")
        .map(|v| if flattened { v } else { v["fields"].clone() })
        .collect()
}

/// The access line of `request_id`, waiting for it to be written.
async fn line_of(read: &dyn Fn() -> String, flattened: bool, request_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = read();
        if let Some(l) = access_lines(&text, flattened)
            .into_iter()
            .find(|l| l["request_id"] == request_id)
        {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no access line for {request_id}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start(dir: &Path, up: &str, extra: &str) -> (bin::BinConfig, Served) {
    let cfg = bin::write_config(dir, up, &log_section(extra).replace("{UP}", up));
    let served = Served::start(&cfg).await;
    (cfg, served)
}

/// Three requests: a host route with a token in its query (200), an
/// unknown host refused on the required any-host route with a bearer in
/// the header and a token in the query (401), and the portal-less `/auth`
/// API. Returns their request ids.
async fn traffic(listen: std::net::SocketAddr) -> [String; 3] {
    let r = http::request(
        listen,
        "GET",
        &format!("/pub/item?{SECRET_QUERY}"),
        &[
            ("Host", "APP.example.test:8080"),
            ("cookie", "theme=s3cr3t-c"),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // A proxied answer is the upstream's: the id is the one it was sent.
    let a = echoed(&r, "x-request-id").remove(0);
    let auth = format!("Bearer {BEARER}");
    let r = http::request(
        listen,
        "POST",
        &format!("/private/thing?{SECRET_QUERY}"),
        &[("Host", "unknown.test"), ("authorization", &auth)],
        Some(b"{}"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    let b = r.header("x-request-id").unwrap().to_string();
    let r = http::request(listen, "GET", "/auth/me", &[("Host", "unknown.test")], None)
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    let c = r.header("x-request-id").unwrap().to_string();
    [a, b, c]
}

fn assert_clean(text: &str) {
    for secret in ["s3cr3t-q", "s3cr3t-c", BEARER, "c2lnbmF0dXJlLXNlY3JldA"] {
        assert!(!text.contains(secret), "{secret} in the log:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_names_the_host_and_never_the_query_or_a_credential() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, served) = start(dir.path(), &up.url(), "").await;
    let [a, b, c] = traffic(cfg.listen).await;
    let read = || served.stderr();

    let l = line_of(&read, false, &a).await;
    assert_eq!(l["method"], "GET");
    assert_eq!(l["host"], "app.example.test", "{l}");
    assert_eq!(l["path"], "/pub/item", "{l}");
    assert_eq!(l["status"], 200);
    assert!(l["route"].is_u64(), "{l}");
    assert!(l.get("rule").is_none(), "{l}");
    assert_eq!(l["client_ip"], "127.0.0.1");
    assert!(l["duration_us"].is_u64(), "{l}");

    let l = line_of(&read, false, &b).await;
    assert_eq!(l["method"], "POST");
    assert_eq!(l["host"], "other", "{l}");
    assert_eq!(l["path"], "/private/thing", "{l}");
    assert_eq!(l["status"], 401);
    assert_eq!(l["rule"], "auth", "{l}");
    assert!(l["route"].is_u64(), "{l}");

    let l = line_of(&read, false, &c).await;
    assert_eq!(l["path"], "/auth/me", "{l}");
    assert_eq!(l["status"], 401);
    assert!(l.get("route").is_none(), "{l}");
    assert_clean(&served.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_goes_to_its_own_file_or_is_off() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let (cfg, served) = start(
        dir.path(),
        &up.url(),
        &format!("access_file = \"{}\"", file.display()),
    )
    .await;
    let [a, b, _] = traffic(cfg.listen).await;
    let read = || std::fs::read_to_string(&file).unwrap_or_default();
    let l = line_of(&read, true, &a).await;
    assert_eq!(l["host"], "app.example.test", "{l}");
    assert_eq!(l["path"], "/pub/item", "{l}");
    let l = line_of(&read, true, &b).await;
    assert_eq!(l["rule"], "auth", "{l}");
    assert_clean(&read());
    // Not in the main log too.
    assert!(access_lines(&served.stderr(), false).is_empty());
    drop(served);

    let dir = tempfile::tempdir().unwrap();
    let (cfg, served) = start(dir.path(), &up.url(), "access_log = false").await;
    let [a, ..] = traffic(cfg.listen).await;
    // A line the gateway writes after the request (its upstream's answer
    // is logged at debug only): wait for the request to be counted instead.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = http::request(cfg.admin, "GET", "/metrics", &[], None)
            .await
            .unwrap()
            .text();
        if m.lines().any(|l| {
            l.starts_with("portcullis_requests_total")
                && l.contains("route=\"auth\"")
                && l.contains("status=\"4xx\"")
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "requests never counted:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = served.stderr();
    assert!(access_lines(&text, false).is_empty(), "{text}");
    assert!(!text.contains(&a), "{text}");
}
