//! Every `/auth/*` endpoint with an arbitrary body, driven through
//! `AuthService::handle` (no network): never a panic, never a 5xx. The
//! first byte picks the endpoint and whether a valid bearer token is sent.
#![no_main]
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use portcullis::accounts::AuthService;
use portcullis::clock::ManualClock;
use portcullis::http::api::ApiRequest;

const ENDPOINTS: &[(&str, &str)] = &[
    ("POST", "/auth/register"),
    ("POST", "/auth/login"),
    ("POST", "/auth/refresh"),
    ("POST", "/auth/logout"),
    ("POST", "/auth/logout-all"),
    ("POST", "/auth/verify"),
    ("GET", "/auth/verify"),
    ("POST", "/auth/email/verify"),
    ("POST", "/auth/email/resend"),
    ("POST", "/auth/password/reset"),
    ("POST", "/auth/password/reset/confirm"),
    ("POST", "/auth/password/change"),
    ("POST", "/auth/reauth"),
    ("GET", "/auth/me"),
    ("PATCH", "/auth/me"),
    ("GET", "/auth/sessions"),
    ("DELETE", "/auth/sessions/00000000-0000-0000-0000-000000000000"),
    ("GET", "/.well-known/jwks.json"),
];

struct World {
    rt: tokio::runtime::Runtime,
    auth: AuthService,
    bearer: String,
    _dir: tempfile::TempDir,
}

fn request(method: &str, path: &str, body: &[u8], bearer: Option<&str>) -> ApiRequest {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    if let Some(b) = bearer {
        headers.insert("authorization", HeaderValue::from_str(&format!("Bearer {b}")).unwrap());
    }
    ApiRequest {
        method: Method::from_bytes(method.as_bytes()).unwrap(),
        path: path.to_string(),
        query: None,
        headers,
        body: bytes::Bytes::copy_from_slice(body),
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        request_id: "fuzz".into(),
        tls: false,
    }
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "[server]\ndata_dir = \"{}\"\n[throttle]\nauth_per_minute = 0\nmax_failed_logins = 0\n",
            dir.path().display()
        );
        let cfg = portcullis::Config::from_toml(&toml, &|_| None, std::path::Path::new("."))
            .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let cfg = Arc::new(cfg);
        let store = rt.block_on(async { portcullis::server::open_store(&cfg) }).unwrap();
        let auth = rt.block_on(async {
            AuthService::new(cfg.clone(), store, Arc::new(ManualClock::starting_now())).unwrap()
        });
        let pw = br#"{"email":"fuzz@example.com","password":"correct horse battery staple","password_confirm":"correct horse battery staple"}"#;
        let bearer = rt.block_on(async {
            let r = auth.handle(request("POST", "/auth/register", pw, None)).await;
            assert_eq!(r.status, 201);
            let r = auth.handle(request("POST", "/auth/login", pw, None)).await;
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            v["access_token"].as_str().unwrap().to_string()
        });
        World { rt, auth, bearer, _dir: dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let w = world();
    let (method, path) = ENDPOINTS[(pick as usize >> 1) % ENDPOINTS.len()];
    let bearer = (pick & 1 == 1).then_some(w.bearer.as_str());
    let r = w.rt.block_on(w.auth.handle(request(method, path, body, bearer)));
    assert!(r.status < 500, "{method} {path} {:?} -> {} {:?}", String::from_utf8_lossy(body), r.status, r.body);
});
