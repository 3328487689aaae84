//! Access-token verification on proxied requests: forgeries, time claims
//! against the injected clock, key handling (HS256 and EdDSA with JWKS),
//! opaque tokens and revocation (issue 2, CONTRACT section 4).

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use portcullis::clock::Clock;
use serde_json::{json, Value};

use crate::common::http::{self, Response};
use crate::common::*;

/// The HS256 key the test gateways use (through `PORTCULLIS_JWT_SECRET`),
/// so tests can mint their own tokens.
const SECRET: &str = "integration-test-secret-0123456789-abcdef";
const LEEWAY: i64 = 30;

fn secret_env() -> HashMap<String, String> {
    HashMap::from([("PORTCULLIS_JWT_SECRET".to_string(), SECRET.to_string())])
}

async fn hs_gateway() -> TestGateway {
    TestGateway::start_with(Builder {
        env: secret_env(),
        ..Default::default()
    })
    .await
}

async fn eddsa_gateway() -> TestGateway {
    TestGateway::start_with(Builder {
        env: secret_env(),
        extra: "[tokens]\nalgorithm = \"EdDSA\"\n".into(),
        ..Default::default()
    })
    .await
}

/// Well-formed access-token claims for a fresh user id, valid at `now`.
fn claims(now: i64) -> Value {
    json!({
        "iss": "portcullis",
        "aud": "portcullis",
        "sub": uuid::Uuid::new_v4().to_string(),
        "exp": now + 900,
        "iat": now,
        "jti": uuid::Uuid::new_v4().to_string(),
        "sid": uuid::Uuid::new_v4().to_string(),
        "email": "minted@example.com",
        "roles": [],
    })
}

fn header(alg: Algorithm, typ: Option<&str>) -> Header {
    let mut h = Header::new(alg);
    h.typ = typ.map(str::to_string);
    h
}

fn mint_with(h: &Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(h, claims, key).expect("mint a token")
}

/// A correctly signed HS256 access token for the test secret.
fn mint(claims: &Value) -> String {
    mint_with(
        &header(Algorithm::HS256, Some("at+jwt")),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

/// Replace one base64url character in the middle of part `idx` of a token.
fn flip_char(token: &str, idx: usize) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let part = &mut parts[idx];
    let mid = part.len() / 2;
    let c = part.as_bytes()[mid];
    let replacement = if c == b'A' { 'B' } else { 'A' };
    part.replace_range(mid..mid + 1, &replacement.to_string());
    parts.join(".")
}

/// GET a required route with the token; returns the response.
async fn call(gw: &TestGateway, path: &str, token: &str) -> Response {
    gw.get(path, Some(token)).await
}

fn assert_rejected(r: &Response, what: &str) {
    assert_eq!(r.status, 401, "{what}: {r:?}");
    assert_eq!(r.json()["error"], "unauthorized", "{what}");
    let www = r.header("www-authenticate").unwrap_or_default();
    assert!(
        www.starts_with("Bearer") && www.contains("invalid_token"),
        "{what}: WWW-Authenticate {www:?}"
    );
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_hand_minted_token_passes_with_its_claims_as_identity() {
    let gw = hs_gateway().await;
    let mut c = claims(gw.clock.now());
    c["roles"] = json!(["admin", "ops"]);
    c["email"] = json!("minted@example.com");
    let r = call(&gw, "/admin/x", &mint(&c)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echoed(&r, "x-user-id"), vec![c["sub"].as_str().unwrap()]);
    assert_eq!(echoed(&r, "x-user-email"), vec!["minted@example.com"]);
    assert_eq!(echoed(&r, "x-user-roles"), vec!["admin,ops"]);
    // `application/at+jwt` is the same type (RFC 9068).
    let t = mint_with(
        &header(Algorithm::HS256, Some("application/at+jwt")),
        &c,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    );
    assert_eq!(call(&gw, "/x", &t).await.status, 200);
    // Roles come from the token: without "admin" the route is forbidden.
    c["roles"] = json!(["ops"]);
    let r = call(&gw, "/admin/x", &mint(&c)).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.json()["error"], "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_are_rejected() {
    let gw = hs_gateway().await;
    let now = gw.clock.now();
    let good_claims = claims(now);
    let good = mint(&good_claims);
    assert_eq!(call(&gw, "/x", &good).await.status, 200, "control");
    let hits = gw.upstream.hits();
    let secret = EncodingKey::from_secret(SECRET.as_bytes());
    let parts: Vec<&str> = good.split('.').collect();

    let mut forgeries: Vec<(String, String)> = Vec::new();
    let mut add = |name: &str, token: String| forgeries.push((name.to_string(), token));

    // alg: none, with and without a signature, in several spellings.
    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = b64(json!({ "alg": alg, "typ": "at+jwt" })
            .to_string()
            .as_bytes());
        add(
            &format!("alg {alg}, empty sig"),
            format!("{h}.{}.", parts[1]),
        );
        add(
            &format!("alg {alg}, kept sig"),
            format!("{h}.{}.{}", parts[1], parts[2]),
        );
    }
    // Signed with another key.
    add(
        "wrong key",
        mint_with(
            &header(Algorithm::HS256, Some("at+jwt")),
            &good_claims,
            &EncodingKey::from_secret(b"another-secret-that-is-also-32-bytes-long"),
        ),
    );
    // Another HMAC algorithm with the right key: not on the allowlist.
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        add(
            &format!("{alg:?}"),
            mint_with(&header(alg, Some("at+jwt")), &good_claims, &secret),
        );
    }
    // Flipped bytes.
    add("flipped signature", flip_char(&good, 2));
    add("flipped payload char", flip_char(&good, 1));
    add("flipped header char", flip_char(&good, 0));
    let mut escalated = good_claims.clone();
    escalated["roles"] = json!(["admin"]);
    add(
        "payload swapped, signature kept",
        format!(
            "{}.{}.{}",
            parts[0],
            b64(escalated.to_string().as_bytes()),
            parts[2]
        ),
    );
    add("signature stripped", format!("{}.{}.", parts[0], parts[1]));
    add("two parts", format!("{}.{}", parts[0], parts[1]));
    add("garbage", "abc.def.ghi".into());
    // Wrong audience / issuer.
    for (claim, value) in [
        ("aud", json!("someone-else")),
        ("aud", json!(["someone-else"])),
        ("iss", json!("evil-issuer")),
        ("iss", json!("")),
    ] {
        let mut c = good_claims.clone();
        c[claim] = value.clone();
        add(&format!("{claim} = {value}"), mint(&c));
    }
    // Wrong or missing typ.
    for typ in [
        Some("JWT"),
        Some("jwt"),
        Some("refresh+jwt"),
        Some(""),
        None,
    ] {
        add(
            &format!("typ {typ:?}"),
            mint_with(&header(Algorithm::HS256, typ), &good_claims, &secret),
        );
    }
    // Missing claims.
    for claim in [
        "exp", "iat", "iss", "aud", "sub", "jti", "sid", "email", "roles",
    ] {
        let mut c = good_claims.clone();
        c.as_object_mut().unwrap().remove(claim);
        add(&format!("missing {claim}"), mint(&c));
    }
    // Time claims well outside the leeway.
    for (claim, value) in [
        ("exp", now - LEEWAY - 60),
        ("nbf", now + LEEWAY + 60),
        ("iat", now + LEEWAY + 60),
    ] {
        let mut c = good_claims.clone();
        c[claim] = json!(value);
        add(&format!("{claim} = now{:+}", value - now), mint(&c));
    }
    // A subject or session that is not a UUID.
    for claim in ["sub", "sid"] {
        let mut c = good_claims.clone();
        c[claim] = json!("admin");
        add(&format!("{claim} not a uuid"), mint(&c));
    }

    for (name, token) in &forgeries {
        assert_rejected(&call(&gw, "/x", token).await, name);
        // Optional routes treat a forgery as anonymous: no identity.
        let r = call(&gw, "/optional/x", token).await;
        assert_eq!(r.status, 200, "{name}");
        assert!(echoed(&r, "x-user-id").is_empty(), "{name}: {r:?}");
    }
    assert_eq!(
        gw.upstream.hits(),
        hits + forgeries.len(),
        "only the optional-route requests may reach the upstream"
    );
    // Each forgery was checked twice (required and optional route), and
    // never passed; the control token was the one valid check.
    let m = gw.metrics().await;
    let check = |r: &str| {
        metric(
            &m,
            &format!("portcullis_token_checks_total{{result=\"{r}\"}}"),
        )
    };
    assert_eq!(check("valid"), 1.0);
    assert_eq!(
        check("invalid") + check("expired") + check("missing") + check("revoked"),
        2.0 * forgeries.len() as f64
    );
    assert!(check("invalid") >= forgeries.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_follows_the_clock_with_leeway() {
    let gw = hs_gateway().await;
    let t0 = gw.clock.now();
    let mut c = claims(t0);
    c["exp"] = json!(t0 + 60);
    let token = mint(&c);
    assert_eq!(call(&gw, "/x", &token).await.status, 200);
    // Past exp but inside the leeway: still accepted.
    gw.clock.advance(60 + LEEWAY - 1);
    assert_eq!(call(&gw, "/x", &token).await.status, 200);
    // Past exp + leeway: expired.
    gw.clock.advance(2);
    assert_rejected(&call(&gw, "/x", &token).await, "expired");
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "portcullis_token_checks_total{result=\"valid\"}"),
        2.0
    );
    assert_eq!(
        metric(&m, "portcullis_token_checks_total{result=\"expired\"}"),
        1.0
    );

    // Gateway-issued tokens expire after access_ttl_secs (900) + leeway.
    let s = gw.signup("ttl@example.com").await;
    assert_eq!(call(&gw, "/x", &s.access).await.status, 200);
    gw.clock.advance(900 + LEEWAY - 5);
    assert_eq!(call(&gw, "/x", &s.access).await.status, 200);
    gw.clock.advance(10);
    assert_rejected(&call(&gw, "/x", &s.access).await, "issued token expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbf_and_iat_in_the_future_are_refused_until_the_clock_catches_up() {
    let gw = hs_gateway().await;
    let t0 = gw.clock.now();
    let mut with_nbf = claims(t0);
    with_nbf["nbf"] = json!(t0 + 100);
    let nbf_token = mint(&with_nbf);
    let mut with_iat = claims(t0);
    with_iat["iat"] = json!(t0 + 100);
    let iat_token = mint(&with_iat);
    // Inside the leeway is fine.
    let mut near = claims(t0);
    near["nbf"] = json!(t0 + LEEWAY - 5);
    near["iat"] = json!(t0 + LEEWAY - 5);
    assert_eq!(call(&gw, "/x", &mint(&near)).await.status, 200);

    assert_rejected(&call(&gw, "/x", &nbf_token).await, "nbf in the future");
    assert_rejected(&call(&gw, "/x", &iat_token).await, "iat in the future");
    gw.clock.advance(100 - LEEWAY - 10);
    assert_rejected(&call(&gw, "/x", &nbf_token).await, "nbf still ahead");
    assert_rejected(&call(&gw, "/x", &iat_token).await, "iat still ahead");
    gw.clock.advance(20);
    assert_eq!(call(&gw, "/x", &nbf_token).await.status, 200);
    assert_eq!(call(&gw, "/x", &iat_token).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_are_not_bearer_tokens() {
    let gw = hs_gateway().await;
    let s = gw.signup("opaque@example.com").await;
    assert_eq!(call(&gw, "/x", &s.access).await.status, 200);
    assert_eq!(s.refresh.split('.').count(), 1, "refresh token is opaque");
    assert_rejected(&call(&gw, "/x", &s.refresh).await, "refresh token");
    let r = call(&gw, "/optional/x", &s.refresh).await;
    assert_eq!(r.status, 200);
    assert!(echoed(&r, "x-user-id").is_empty());
    // The refresh token still works for its own purpose.
    let r = gw
        .post("/auth/refresh", json!({ "refresh_token": s.refresh }), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let new_refresh = r.json()["refresh_token"].as_str().unwrap().to_string();
    assert_rejected(
        &call(&gw, "/x", &new_refresh).await,
        "rotated refresh token",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_is_empty_under_hs256() {
    let gw = hs_gateway().await;
    let r = gw.get("/.well-known/jwks.json", None).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    assert_eq!(r.json(), json!({ "keys": [] }));
    // Issued tokens are HS256 at+jwt without a kid.
    let s = gw.signup("hs@example.com").await;
    let h = jsonwebtoken::decode_header(&s.access).unwrap();
    assert_eq!(h.alg, Algorithm::HS256);
    assert_eq!(h.typ.as_deref(), Some("at+jwt"));
    // ...and signed with PORTCULLIS_JWT_SECRET.
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&["portcullis"]);
    v.set_issuer(&["portcullis"]);
    let data =
        jsonwebtoken::decode::<Value>(&s.access, &DecodingKey::from_secret(SECRET.as_bytes()), &v)
            .expect("issued token verifies with the configured secret");
    assert_eq!(data.claims["sub"], s.user["id"]);
    assert_eq!(data.claims["email"], "hs@example.com");
    for claim in ["exp", "iat", "jti", "sid", "roles"] {
        assert!(!data.claims[claim].is_null(), "{claim} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_hs256_secret_is_private_and_survives_a_restart() {
    let mut gw = TestGateway::start().await;
    let key = gw.data_dir().join("jwt-keys-hs256.json");
    assert!(key.exists(), "no generated secret in data_dir");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "secret mode {mode:o}");
    }
    let s = gw.signup("restart@example.com").await;
    // Not signed with the test secret: the generated one is used.
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&["portcullis"]);
    v.set_issuer(&["portcullis"]);
    assert!(jsonwebtoken::decode::<Value>(
        &s.access,
        &DecodingKey::from_secret(SECRET.as_bytes()),
        &v
    )
    .is_err());
    let before = std::fs::read(&key).unwrap();
    gw.restart();
    assert_eq!(std::fs::read(&key).unwrap(), before);
    assert_eq!(call(&gw, "/x", &s.access).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddsa_tokens_verify_with_the_published_jwks_key() {
    let gw = eddsa_gateway().await;
    let r = gw.get("/.well-known/jwks.json", None).await;
    assert_eq!(r.status, 200);
    let jwks = r.json();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{jwks}");
    let k = &keys[0];
    assert_eq!(k["kty"], "OKP");
    assert_eq!(k["crv"], "Ed25519");
    assert!(k.get("d").is_none(), "private key published: {k}");
    let kid = k["kid"].as_str().expect("kid").to_string();
    assert!(!kid.is_empty());
    let x = k["x"].as_str().unwrap().to_string();

    let s = gw.signup("ed@example.com").await;
    let h = jsonwebtoken::decode_header(&s.access).unwrap();
    assert_eq!(h.alg, Algorithm::EdDSA);
    assert_eq!(h.typ.as_deref(), Some("at+jwt"));
    assert_eq!(h.kid.as_deref(), Some(kid.as_str()));
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_audience(&["portcullis"]);
    v.set_issuer(&["portcullis"]);
    let data =
        jsonwebtoken::decode::<Value>(&s.access, &DecodingKey::from_ed_components(&x).unwrap(), &v)
            .expect("issued token verifies with the JWKS key");
    assert_eq!(data.claims["sub"], s.user["id"]);
    // The JWK form works as well.
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(k.clone()).unwrap();
    assert!(
        jsonwebtoken::decode::<Value>(&s.access, &DecodingKey::from_jwk(&jwk).unwrap(), &v).is_ok()
    );

    let r = call(&gw, "/x", &s.access).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        echoed(&r, "x-user-id"),
        vec![s.user["id"].as_str().unwrap()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_confusion_and_foreign_keys_fail_against_an_eddsa_gateway() {
    let gw = eddsa_gateway().await;
    let jwks = gw.get("/.well-known/jwks.json", None).await.json();
    let x = jwks["keys"][0]["x"].as_str().unwrap().to_string();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_string();
    let public_raw = URL_SAFE_NO_PAD.decode(&x).unwrap();
    let c = claims(gw.clock.now());

    let mut hs = header(Algorithm::HS256, Some("at+jwt"));
    hs.kid = Some(kid.clone());
    let mut cases: Vec<(&str, String)> = vec![
        // HS256 with the configured (but unused) HS256 secret.
        ("HS256 with PORTCULLIS_JWT_SECRET", mint(&c)),
        // HS256 keyed with the public key, in every form an attacker has it.
        (
            "HS256 keyed with x",
            mint_with(&hs, &c, &EncodingKey::from_secret(x.as_bytes())),
        ),
        (
            "HS256 keyed with the raw public key",
            mint_with(&hs, &c, &EncodingKey::from_secret(&public_raw)),
        ),
        (
            "HS256 keyed with the JWKS document",
            mint_with(
                &hs,
                &c,
                &EncodingKey::from_secret(jwks.to_string().as_bytes()),
            ),
        ),
    ];
    // EdDSA signed by a different Ed25519 key, claiming the real kid.
    {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let other = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = other.to_pkcs8_pem(Default::default()).unwrap();
        let mut ed = header(Algorithm::EdDSA, Some("at+jwt"));
        ed.kid = Some(kid.clone());
        cases.push((
            "EdDSA with a foreign key",
            mint_with(&ed, &c, &EncodingKey::from_ed_pem(pem.as_bytes()).unwrap()),
        ));
    }
    let none = format!(
        "{}.{}.",
        b64(json!({ "alg": "none", "typ": "at+jwt", "kid": kid })
            .to_string()
            .as_bytes()),
        b64(c.to_string().as_bytes())
    );
    cases.push(("alg none", none));

    for (name, token) in &cases {
        assert_rejected(&call(&gw, "/x", token).await, name);
    }
    assert_eq!(gw.upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_is_checked_and_persists_across_a_restart() {
    let mut gw = hs_gateway().await;
    let s = gw.signup("rev@example.com").await;
    let other = gw.signin("rev@example.com", PASSWORD).await;
    assert_eq!(call(&gw, "/x", &s.access).await.status, 200);
    assert_eq!(call(&gw, "/x", &other.access).await.status, 200);
    let r = http::request(
        gw.addr,
        "POST",
        "/auth/logout-all",
        &[("Authorization", &format!("Bearer {}", s.access))],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204, "{r:?}");
    assert_rejected(&call(&gw, "/x", &s.access).await, "after logout-all");
    assert_rejected(&call(&gw, "/x", &other.access).await, "other session");
    // Two proxied requests and the logout-all's bearer were valid.
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "portcullis_token_checks_total{result=\"valid\"}"),
        3.0
    );
    assert_eq!(
        metric(&m, "portcullis_token_checks_total{result=\"revoked\"}"),
        2.0
    );
    gw.restart();
    assert_rejected(&call(&gw, "/x", &s.access).await, "after restart");
    assert_rejected(&call(&gw, "/x", &other.access).await, "other after restart");
    // A fresh login works again.
    gw.clock.advance(1);
    let fresh = gw.signin("rev@example.com", PASSWORD).await;
    assert_eq!(call(&gw, "/x", &fresh.access).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_operator_secret_is_used_not_refused() {
    const SHORT: &str = "short-secret";
    let gw = TestGateway::start_with(Builder {
        env: HashMap::from([("PORTCULLIS_JWT_SECRET".to_string(), SHORT.to_string())]),
        ..Default::default()
    })
    .await;
    let s = gw.signup("short@example.com").await;
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&["portcullis"]);
    let data =
        jsonwebtoken::decode::<Value>(&s.access, &DecodingKey::from_secret(SHORT.as_bytes()), &v)
            .expect("issued with the operator's key");
    assert_eq!(data.claims["email"], "short@example.com");
    let now = gw.clock.now();
    let minted = mint_with(
        &header(Algorithm::HS256, Some("at+jwt")),
        &claims(now),
        &EncodingKey::from_secret(SHORT.as_bytes()),
    );
    assert_eq!(gw.get("/hello", Some(&minted)).await.status, 200);
    assert_eq!(
        gw.get("/hello", Some(&mint(&claims(now)))).await.status,
        401
    );
}

/// Tokens that passed are remembered (`tokens::verified`), so a repeat check
/// skips the signature: a token that differs from a remembered one in any
/// way is still checked in full, and the remembered one still expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_token_vouches_for_nothing_but_itself() {
    let gw = hs_gateway().await;
    let s = gw.signup("cache@example.com").await;
    for _ in 0..3 {
        assert_eq!(call(&gw, "/x", &s.access).await.status, 200);
    }
    let (head, sig) = s.access.rsplit_once('.').unwrap();
    let mut altered = Vec::new();
    // Every signature character changed in turn, a payload character
    // changed, and the token cut short or extended.
    for i in 0..sig.len() {
        let mut b = sig.as_bytes().to_vec();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        altered.push(format!("{head}.{}", String::from_utf8(b).unwrap()));
    }
    altered.push(format!("{head}x.{sig}"));
    altered.push(s.access[..s.access.len() - 1].to_string());
    altered.push(format!("{}A", s.access));
    altered.push(s.access.to_ascii_uppercase());
    for t in &altered {
        if t == &s.access {
            continue;
        }
        assert_rejected(&call(&gw, "/x", t).await, "altered remembered token");
    }
    assert_eq!(call(&gw, "/x", &s.access).await.status, 200);
    gw.clock.advance(900 + LEEWAY + 1);
    assert_rejected(
        &call(&gw, "/x", &s.access).await,
        "remembered, then expired",
    );
}
