//! The signed identity assertion (issue 23, CONTRACT 8.3): on routes with
//! `identity_assertion = true` the upstream receives `X-User-Assertion`, a
//! JWT signed with the provider key of `oidc_provider.signing_alg`, which
//! an app verifies with the gateway's JWKS. Verified here by a verifier
//! nobody here wrote: Python PyJWT's `PyJWKClient`, fetching the JWKS from
//! the running gateway. A client-sent assertion never reaches an upstream;
//! routes without the key get none; an assertion is reused until near its
//! `exp` (the test clock moves), ends with the session, and after
//! `portcullis keys rotate` new ones carry the new `kid` while old ones
//! keep verifying.

use std::path::PathBuf;
use std::time::Duration;

use portcullis::clock::Clock;
use serde_json::{json, Value};

use crate::common::{bin, echoed, http, venv, Builder, TestGateway};

const ROUTES: &str = r#"
[[routes]]
prefix = "/"
upstream = "{UP}"
auth = "required"

[[routes]]
prefix = "/asserted"
upstream = "{UP}"
auth = "required"
identity_assertion = true

[[routes]]
prefix = "/app"
upstream = "{UP}"
auth = "required"
identity_assertion = true
assertion_audience = "https://app.example.test"

[[routes]]
prefix = "/public"
upstream = "{UP}"
auth = "public"
identity_assertion = true
"#;

/// The issuer: `mail.link_base_url` of the harness (no `oidc_provider.issuer`).
const ISSUER: &str = "https://gateway.test";

async fn gateway(alg: &str) -> TestGateway {
    TestGateway::start_with(Builder {
        extra: format!("[oidc_provider]\nsigning_alg = \"{alg}\"\n"),
        routes: ROUTES.into(),
        ..Default::default()
    })
    .await
}

/// The PyJWT venv, installed into the target dir on first use (pinned, as
/// the browser test's Selenium; python3 with venv from `.ci/deps --test`).
fn pyjwt_python() -> PathBuf {
    venv::python("pyjwt-venv", &["pyjwt==2.10.1", "cryptography==44.0.0"])
}

/// PyJWT's verification of each token: the key from the JWKS at `jwks_url`
/// by `kid` (PyJWKClient), the signature with the JWK's algorithm, `aud`,
/// `iss`, `exp` and `iat` (with `leeway` seconds, for a moved test clock),
/// and the claims the contract requires. Per token: `{ok, claims, kid,
/// alg}` or `{ok: false, error}`.
const VERIFY_PY: &str = r#"
import json, sys
import jwt
from jwt import PyJWKClient

url, leeway = sys.argv[1], int(sys.argv[2])
client = PyJWKClient(url, cache_keys=False, cache_jwk_set=False)
out = []
for item in json.load(sys.stdin):
    token, aud, iss = item["token"], item["aud"], item["iss"]
    try:
        key = client.get_signing_key_from_jwt(token)
        alg = jwt.get_unverified_header(token)["alg"]
        claims = jwt.decode(
            token, key.key, algorithms=[key.algorithm_name], audience=aud, issuer=iss,
            leeway=leeway,
            options={"require": ["iss", "aud", "sub", "iat", "exp", "jti"]},
        )
        out.append({"ok": True, "claims": claims, "kid": key.key_id, "alg": alg})
    except Exception as e:
        out.append({"ok": False, "error": repr(e)})
print(json.dumps(out))
"#;

/// The PyJWT interpreter, installed before any assertion is taken (an
/// install can outlast an assertion's 60 s).
async fn python() -> PathBuf {
    tokio::task::spawn_blocking(pyjwt_python).await.unwrap()
}

/// Verify `(token, aud)` pairs with PyJWT (interpreter `py`) against the
/// gateway's JWKS.
async fn pyjwt_verify(
    py: &std::path::Path,
    gw: &TestGateway,
    items: &[(&str, &str)],
    leeway: i64,
) -> Vec<Value> {
    let url = format!("http://{}/.well-known/jwks.json", gw.addr);
    let input = Value::Array(
        items
            .iter()
            .map(|(t, aud)| json!({ "token": t, "aud": aud, "iss": ISSUER }))
            .collect(),
    )
    .to_string();
    let mut cmd = std::process::Command::new(py);
    cmd.args(["-c", VERIFY_PY, &url, &leeway.to_string()]);
    let out = bin::run_async(cmd, Some(input), Duration::from_secs(60)).await;
    assert!(out.ok(), "pyjwt: {out:?}");
    let v: Value =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    v.as_array().unwrap().clone()
}

/// A GET with a bearer and extra headers; the upstream's echo.
async fn get_with(
    gw: &TestGateway,
    path: &str,
    bearer: &str,
    extra: &[(&str, &str)],
) -> http::Response {
    let auth = format!("Bearer {bearer}");
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    http::request(gw.addr, "GET", path, &headers, None)
        .await
        .unwrap()
}

/// The one assertion the upstream received.
#[track_caller]
fn assertion_of(r: &http::Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    let a = echoed(r, "x-user-assertion");
    assert_eq!(a.len(), 1, "exactly one assertion upstream: {a:?}");
    a[0].clone()
}

fn header_of(token: &str) -> jsonwebtoken::Header {
    jsonwebtoken::decode_header(token).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyjwt_verifies_the_assertion_for_each_algorithm_and_clients_cannot_send_one() {
    let py = python().await;
    for alg in ["RS256", "ES256", "EdDSA"] {
        let gw = gateway(alg).await;
        let s = gw.signup(&format!("assert-{alg}@example.com")).await;
        let forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.";
        let spoof = [("X-User-Assertion", forged), ("x_user_assertion", forged)];

        // Default audience: the route's upstream origin.
        let r = get_with(&gw, "/asserted/a", &s.access, &spoof).await;
        let default_aud = assertion_of(&r);
        assert_ne!(default_aud, forged);
        assert_eq!(echoed(&r, "x_user_assertion"), Vec::<String>::new());
        let h = header_of(&default_aud);
        assert_eq!(h.typ.as_deref(), Some("JWT"), "{alg}");
        assert_eq!(format!("{:?}", h.alg), alg);
        // Explicit audience.
        let r = get_with(&gw, "/app/b", &s.access, &spoof).await;
        let explicit = assertion_of(&r);

        // Not on a route without the key, nor without an identity; and a
        // client's own is stripped there too.
        let r = get_with(&gw, "/plain", &s.access, &spoof).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            echoed(&r, "x-user-assertion"),
            Vec::<String>::new(),
            "{alg}"
        );
        assert_eq!(
            echoed(&r, "x_user_assertion"),
            Vec::<String>::new(),
            "{alg}"
        );
        let r = http::request(gw.addr, "GET", "/public/c", &spoof, None)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            echoed(&r, "x-user-assertion"),
            Vec::<String>::new(),
            "{alg}"
        );

        // The JWKS holds the provider key beside (no) HS256 keys.
        let jwks = gw.get("/.well-known/jwks.json", None).await.json();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1, "{jwks}");
        assert_eq!(keys[0]["alg"], alg);
        assert_eq!(keys[0]["kid"].as_str(), h.kid.as_deref());

        let upstream_origin = gw.upstream.url();
        let upstream_origin = upstream_origin.trim_end_matches('/');
        let v = pyjwt_verify(
            &py,
            &gw,
            &[
                (&default_aud, upstream_origin),
                (&explicit, "https://app.example.test"),
                // The wrong audience fails.
                (&default_aud, "https://app.example.test"),
            ],
            0,
        )
        .await;
        assert_eq!(v[0]["ok"], true, "{alg}: {}", v[0]);
        assert_eq!(v[1]["ok"], true, "{alg}: {}", v[1]);
        assert_eq!(v[2]["ok"], false, "{alg}: {}", v[2]);
        assert!(
            v[2]["error"].as_str().unwrap().contains("Audience"),
            "{}",
            v[2]
        );
        for c in [&v[0]["claims"], &v[1]["claims"]] {
            assert_eq!(c["iss"], ISSUER);
            assert_eq!(c["sub"], s.user["id"]);
            assert_eq!(c["email"], format!("assert-{alg}@example.com"));
            assert_eq!(c["roles"], json!([]));
            assert_eq!(c["amr"], json!(["pwd"]));
            let (iat, exp) = (c["iat"].as_i64().unwrap(), c["exp"].as_i64().unwrap());
            assert!(exp > iat && exp <= iat + 60, "{c}");
            assert!(!c["jti"].as_str().unwrap().is_empty());
        }
        assert_eq!(v[0]["alg"], alg);
    }
}

/// An API key gets an assertion of its owner too (its cache slot is the
/// key's), with no `amr`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_gets_an_assertion_of_its_owner() {
    let py = python().await;
    let gw = TestGateway::start_with(Builder {
        extra: "[oidc_provider]\nsigning_alg = \"ES256\"\n".into(),
        routes: r#"
[[routes]]
prefix = "/"
upstream = "{UP}"
auth = "required"
identity_assertion = true
scopes = ["read"]
"#
        .into(),
        ..Default::default()
    })
    .await;
    let s = gw.signup("key-owner@example.com").await;
    let r = gw
        .post(
            "/auth/api-keys",
            json!({ "name": "k", "scopes": ["read"] }),
            Some(&s.access),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let key = r.json()["key"].as_str().unwrap().to_string();
    let r = http::request(gw.addr, "GET", "/k", &[("x-api-key", key.as_str())], None)
        .await
        .unwrap();
    let a = assertion_of(&r);
    let upstream_origin = gw.upstream.url();
    let v = pyjwt_verify(&py, &gw, &[(&a, upstream_origin.trim_end_matches('/'))], 0).await;
    assert_eq!(v[0]["ok"], true, "{}", v[0]);
    assert_eq!(v[0]["claims"]["sub"], s.user["id"]);
    assert_eq!(v[0]["claims"]["email"], "key-owner@example.com");
    assert_eq!(v[0]["claims"]["amr"], json!([]));
}

/// One assertion per session and route is reused while more than half its
/// life is left, then re-signed (the test clock moves); an ended session
/// gets no assertion, cached or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_is_reused_until_near_exp_and_ends_with_its_session() {
    let py = python().await;
    let gw = gateway("EdDSA").await;
    let s = gw.signup("cache@example.com").await;
    let a1 = assertion_of(&get_with(&gw, "/asserted/1", &s.access, &[]).await);
    let a2 = assertion_of(&get_with(&gw, "/asserted/2", &s.access, &[]).await);
    assert_eq!(a1, a2, "cached");
    // Another route: its own assertion (its own audience).
    let b = assertion_of(&get_with(&gw, "/app/1", &s.access, &[]).await);
    assert_ne!(a1, b);
    // A second session of the same user: its own.
    let s2 = gw
        .signin("cache@example.com", crate::common::PASSWORD)
        .await;
    let c = assertion_of(&get_with(&gw, "/asserted/3", &s2.access, &[]).await);
    assert_ne!(a1, c);

    gw.clock.advance(29);
    assert_eq!(
        assertion_of(&get_with(&gw, "/asserted/4", &s.access, &[]).await),
        a1
    );
    gw.clock.advance(1);
    let a3 = assertion_of(&get_with(&gw, "/asserted/5", &s.access, &[]).await);
    assert_ne!(a3, a1, "re-signed near exp");
    let v = pyjwt_verify(
        &py,
        &gw,
        &[
            (&a1, gw.upstream.url().trim_end_matches('/')),
            (&a3, gw.upstream.url().trim_end_matches('/')),
        ],
        // PyJWT reads the real clock; the gateway's moved 30 s ahead.
        120,
    )
    .await;
    let iat = |i: usize| v[i]["claims"]["iat"].as_i64().unwrap();
    assert_eq!(v[0]["ok"], true, "{}", v[0]);
    assert_eq!(v[1]["ok"], true, "{}", v[1]);
    assert_eq!(iat(1) - iat(0), 30);
    assert_eq!(iat(1), gw.clock.now());

    // Logout ends the session: no request reaches the upstream, no
    // assertion is handed out from the cache.
    let hits = gw.upstream.hits();
    let r = gw
        .post(
            "/auth/logout",
            json!({ "refresh_token": s.refresh }),
            Some(&s.access),
        )
        .await;
    assert!(r.status == 200 || r.status == 204, "{}", r.text());
    let r = get_with(&gw, "/asserted/6", &s.access, &[]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(gw.upstream.hits(), hits);
}

/// `portcullis keys rotate` (the real binary, next to the running gateway,
/// which it makes reload) rotates the provider key too: new assertions
/// carry the new `kid`, an assertion of the old key still verifies with
/// PyJWT against the JWKS, which lists both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_keys_rotate_old_assertions_verify_and_new_ones_use_the_new_kid() {
    let py = python().await;
    let gw = gateway("ES256").await;
    let s = gw.signup("rotate@example.com").await;
    let old = assertion_of(&get_with(&gw, "/asserted/a", &s.access, &[]).await);
    let k1 = header_of(&old).kid.unwrap();

    let config = gw.config_path().display().to_string();
    let out = bin::run_async(
        bin::command(&["keys", "rotate", "--config", &config]),
        None,
        bin::CLI_LIMIT,
    )
    .await;
    assert!(out.ok(), "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["gateway"], "reloaded", "{v}");
    let p = &v["oidc_provider"];
    assert_eq!(p["previous"][0]["kid"], k1.as_str(), "{v}");
    let k2 = p["kid"].as_str().unwrap().to_string();
    assert_ne!(k1, k2);
    assert!(p["key_file"]
        .as_str()
        .unwrap()
        .ends_with("oidc-keys-es256.json"));
    // The command dated the new key by the real clock; the gateway's test
    // clock catches up to it.
    let behind = portcullis::clock::SystemClock.now() - gw.clock.now();
    gw.clock.advance(behind.max(0));

    let new = assertion_of(&get_with(&gw, "/asserted/b", &s.access, &[]).await);
    assert_eq!(header_of(&new).kid.as_deref(), Some(k2.as_str()));
    let jwks = gw.get("/.well-known/jwks.json", None).await.json();
    let mut kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    kids.sort();
    let mut both = vec![k1.as_str(), k2.as_str()];
    both.sort();
    // The HS256 access-token set publishes nothing; the provider's two.
    assert_eq!(kids, both, "{jwks}");
    let aud = gw.upstream.url();
    let aud = aud.trim_end_matches('/');
    let v = pyjwt_verify(&py, &gw, &[(&old, aud), (&new, aud)], 0).await;
    assert_eq!(v[0]["ok"], true, "{}", v[0]);
    assert_eq!(v[0]["kid"], k1.as_str());
    assert_eq!(v[1]["ok"], true, "{}", v[1]);
    assert_eq!(v[1]["kid"], k2.as_str());
}
