//! Attacks on holes found in review (issue 10), one test per attack, each
//! naming its class (OWASP ASVS 4.0.3 requirement, CWE, or CVE where one
//! exists). Every test fires real sockets at the real gateway and asserts
//! the exact outcome: status and error code, and for proxied requests what
//! the upstream received.

mod authorization;
mod client_ip;
mod crash_safety;
mod email_identity;
mod hygiene;
mod identity_spoofing;
mod ipv6_throttle;
mod jwt_attacks;
mod log_scrub;
mod malformed;
mod path_attacks;
mod path_params;
mod resources;
mod smuggling;
mod tunnels;
mod upstream_leaks;

use std::net::SocketAddr;

use serde_json::{json, Value};

use crate::common::http::{self, post_with, Response};
use crate::common::*;

async fn get_with(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Response {
    http::request(gw.addr, "GET", path, headers, None)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// A cheap per-IP-throttled request: introspection of a junk token (401).
async fn cheap_auth_post(gw: &TestGateway, headers: &[(&str, &str)]) -> Response {
    post_with(
        gw.addr,
        "/auth/verify",
        &json!({ "token": "junk" }),
        headers,
    )
    .await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[track_caller]
fn assert_429(r: &Response, what: &str) {
    assert_error(r, 429, "too_many_requests");
    assert!(
        r.header("retry-after")
            .is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s > 0)),
        "{what}: no Retry-After: {r:?}"
    );
}

/// One `[[routes]]` entry; `extra` holds further keys, one per line.
fn route(prefix: &str, auth: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{{UP}}\"\nauth = \"{auth}\"\n{extra}\n\n"
    )
}
