//! Issue 3, accounts and sessions: register, login, refresh with reuse
//! detection, logout, verify, me, sessions, password change, the admin API
//! and CLI, malformed input, and forward-auth behind a real nginx.
//!
//! Every test boots the real gateway with the per-IP `/auth/*` throttle
//! switched off (these tests send many auth requests from one address; the
//! throttle has its own tests), and moves `gw.clock` for every expiry.
//!
//! One file per capability; the helpers they share are below.

mod admin_api;
mod admin_cli;
mod login;
mod logout;
mod malformed;
mod nginx;
mod password;
mod profile;
mod refresh;
mod register;
mod sessions;
mod verify;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis::clock::Clock;
use serde_json::{json, Value};

use crate::common::http::{self, Response};
use crate::common::{
    assert_error, bin, free_port, last_echoed, Builder, Session, TestGateway, PASSWORD,
};

const NO_THROTTLE: &str = "[throttle]\nauth_per_minute = 0\n";

async fn gateway(extra: &str) -> TestGateway {
    TestGateway::start_with(Builder {
        extra: format!("{NO_THROTTLE}{extra}"),
        ..Default::default()
    })
    .await
}

// ----- small helpers

/// Any request with exact headers and body (no content type added).
async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    http::request(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// A 400 `validation_failed` naming exactly these fields.
#[track_caller]
fn assert_fields(r: &Response, expected: &[&str]) {
    assert_error(r, 400, "validation_failed");
    let v = r.json();
    let fields = v["fields"]
        .as_object()
        .unwrap_or_else(|| panic!("validation_failed without fields: {r:?}"));
    let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut want = expected.to_vec();
    want.sort_unstable();
    assert_eq!(names, want, "{r:?}");
    for (name, problems) in fields {
        let problems = problems.as_array().expect("problems are an array");
        assert!(
            !problems.is_empty() && problems.iter().all(|p| p.as_str().is_some()),
            "field {name}: {r:?}"
        );
    }
}

async fn refresh(gw: &TestGateway, token: &str) -> Response {
    gw.post("/auth/refresh", json!({ "refresh_token": token }), None)
        .await
}

/// Status of `GET /` (a route with `auth = "required"`).
async fn proxied(gw: &TestGateway, access: &str) -> u16 {
    gw.get("/", Some(access)).await.status
}

fn session_of(r: &Response) -> Session {
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    Session {
        access: v["access_token"].as_str().unwrap().to_string(),
        refresh: v["refresh_token"].as_str().unwrap().to_string(),
        user: v["user"].clone(),
    }
}

/// The admin token the gateway generated into its data dir.
fn admin_token(gw: &TestGateway) -> String {
    std::fs::read_to_string(gw.data_dir().join("admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

async fn admin_api(gw: &TestGateway, token: Option<&str>, body: Value) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    raw(
        gw.admin_addr,
        "POST",
        "/admin/users",
        &headers,
        Some(body.to_string().as_bytes()),
    )
    .await
}

#[track_caller]
fn assert_user_shape(u: &Value, email: &str) {
    let obj = u
        .as_object()
        .unwrap_or_else(|| panic!("user is not an object: {u}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "created_at",
            "email",
            "email_verified",
            "id",
            "roles",
            "username"
        ],
        "{u}"
    );
    let id = u["id"].as_str().expect("id is a string");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "id is not a UUID: {id}");
    let created = u["created_at"].as_str().expect("created_at is a string");
    assert!(
        time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "created_at is not RFC 3339: {created}"
    );
    assert_eq!(u["email"], email);
    assert!(u["email_verified"].is_boolean());
    assert!(u["roles"].is_array());
}
