//! JWT header and encoding attacks (ASVS 4.0.3 V3.5.3, RFC 8725 §2–3).
//! `alg: none` in four spellings, signature stripping and HS256 keyed with
//! the EdDSA public key are in `tests/it/tokens.rs`
//! (`forged_tokens_are_rejected`,
//! `key_confusion_and_foreign_keys_fail_against_an_eddsa_gateway`); this
//! file adds the header-borne key references and malformed encodings. Every
//! case answers exactly 401 `unauthorized` and nothing reaches the upstream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::clock::Clock;
use serde_json::{json, Value};

use super::*;

const SECRET: &str = "security-suite-secret-0123456789-abcdef";

async fn gateway(alg: &str) -> TestGateway {
    TestGateway::start_with(Builder {
        env: HashMap::from([("PORTCULLIS_JWT_SECRET".into(), SECRET.into())]),
        extra: format!("[tokens]\nalgorithm = \"{alg}\"\n"),
        ..Default::default()
    })
    .await
}

fn claims(now: i64) -> Value {
    json!({
        "iss": "portcullis", "aud": "portcullis",
        "sub": uuid::Uuid::new_v4().to_string(),
        "exp": now + 900, "iat": now,
        "jti": uuid::Uuid::new_v4().to_string(),
        "sid": uuid::Uuid::new_v4().to_string(),
        "email": "minted@example.com", "roles": ["admin"],
    })
}

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

/// An HS256 token over an arbitrary JSON header, signed with the secret the
/// gateway really uses: only the header decides whether it passes.
fn hs_with_header(h: &Value, c: &Value) -> String {
    use hmac::{Hmac, Mac};
    let signing_input = format!(
        "{}.{}",
        b64(h.to_string().as_bytes()),
        b64(c.to_string().as_bytes())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&mac.finalize().into_bytes()))
}

/// A local listener that counts connections: a gateway that dereferenced a
/// `jku`/`x5u` would connect here.
async fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/keys.json", l.local_addr().unwrap());
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = l.accept().await {
            n2.fetch_add(1, Ordering::SeqCst);
        }
    });
    (url, n)
}

#[track_caller]
fn assert_401(r: &Response, what: &str) {
    assert_eq!(r.status, 401, "{what}: {r:?}");
    assert_eq!(r.json()["error"], "unauthorized", "{what}: {r:?}");
}

async fn assert_all_rejected(gw: &TestGateway, cases: &[(String, String)]) {
    let hits = gw.upstream.hits();
    for (what, token) in cases {
        assert_401(&gw.get("/admin/x", Some(token)).await, what);
    }
    assert_eq!(
        gw.upstream.hits(),
        hits,
        "a forged token reached the upstream"
    );
}

/// RFC 8725 §3.10 / CVE-2018-0114 (embedded `jwk`), and SSRF through `jku`
/// and `x5u` (ASVS V3.5.3): a token that carries its own key, or a URL to
/// fetch one from, is refused with 401, on HS256 and EdDSA gateways, and
/// the gateway never connects to the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_jwk_jku_and_x5u_headers_are_refused_and_nothing_is_fetched() {
    let (url, connections) = counting_listener().await;
    for alg in ["HS256", "EdDSA"] {
        let gw = gateway(alg).await;
        let c = claims(gw.clock.now());
        // The attacker's own Ed25519 key, embedded as a JWK and signing.
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let mine = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = mine.to_pkcs8_pem(Default::default()).unwrap();
        let x = b64(mine.verifying_key().as_bytes());
        let ed_key = EncodingKey::from_ed_pem(pem.as_bytes()).unwrap();
        let mut jwk_header = Header::new(Algorithm::EdDSA);
        jwk_header.typ = Some("at+jwt".into());
        jwk_header.jwk =
            Some(serde_json::from_value(json!({"kty":"OKP","crv":"Ed25519","x": x})).unwrap());
        let mut jku_header = jwk_header.clone();
        jku_header.jwk = None;
        jku_header.jku = Some(url.clone());
        let mut x5u_header = jku_header.clone();
        x5u_header.jku = None;
        x5u_header.x5u = Some(url.clone());
        let cases = vec![
            (
                format!("{alg}: EdDSA + embedded jwk"),
                jsonwebtoken::encode(&jwk_header, &c, &ed_key).unwrap(),
            ),
            (
                format!("{alg}: EdDSA + jku"),
                jsonwebtoken::encode(&jku_header, &c, &ed_key).unwrap(),
            ),
            (
                format!("{alg}: EdDSA + x5u"),
                jsonwebtoken::encode(&x5u_header, &c, &ed_key).unwrap(),
            ),
            // Correctly HS256-signed with the real secret, but carrying key
            // references: refused, since a gateway that honours them at all
            // is one library change away from fetching.
            (
                format!("{alg}: HS256 + jku"),
                hs_with_header(&json!({"alg":"HS256","typ":"at+jwt","jku": url}), &c),
            ),
            (
                format!("{alg}: HS256 + x5u"),
                hs_with_header(&json!({"alg":"HS256","typ":"at+jwt","x5u": url}), &c),
            ),
            (
                format!("{alg}: HS256 + jwk"),
                hs_with_header(
                    &json!({"alg":"HS256","typ":"at+jwt",
                            "jwk": {"kty":"oct","k": b64(b"attacker")}}),
                    &c,
                ),
            ),
        ];
        assert_all_rejected(&gw, &cases).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "a key URL was fetched"
    );
}

/// Injection through `kid` (RFC 8725 §3.10; CWE-22 path traversal, CWE-89
/// SQL, CWE-400 a 10 KB value): on an EdDSA gateway every such kid is an
/// unknown key, 401; on HS256 the kid plays no part and a forged signature
/// still fails. An unknown but harmless kid in EdDSA mode is 401 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kid_injection_and_unknown_kids_are_401() {
    let kids = [
        "../../../../../../dev/null".to_string(),
        "/dev/null".to_string(),
        "x' UNION SELECT 'secret' --".to_string(),
        "1; DROP TABLE users".to_string(),
        "k".repeat(10 * 1024),
        "unknown-kid-0000".to_string(),
        String::new(),
    ];
    for alg in ["EdDSA", "HS256"] {
        let gw = gateway(alg).await;
        let c = claims(gw.clock.now());
        let mut cases = Vec::new();
        for kid in &kids {
            let label = format!("{alg}: kid {:.40}", kid);
            // HS256 keyed with an empty key / "/dev/null" contents (empty),
            // the classic kid traversal payoff.
            let mut h = Header::new(Algorithm::HS256);
            h.typ = Some("at+jwt".into());
            h.kid = Some(kid.clone());
            cases.push((
                format!("{label}, HS256 empty key"),
                jsonwebtoken::encode(&h, &c, &EncodingKey::from_secret(b"")).unwrap(),
            ));
            cases.push((
                format!("{label}, HS256 key 'secret'"),
                jsonwebtoken::encode(&h, &c, &EncodingKey::from_secret(b"secret")).unwrap(),
            ));
            if alg == "EdDSA" {
                // A genuinely valid HS256 token (right secret) under an
                // EdDSA gateway with a junk kid: the algorithm is wrong.
                cases.push((
                    format!("{label}, HS256 with the real secret"),
                    hs_with_header(&json!({"alg":"HS256","typ":"at+jwt","kid": kid}), &c),
                ));
            }
        }
        assert_all_rejected(&gw, &cases).await;
    }
}

/// Key selection by `kid` (RFC 8725 §3.10, RFC 7515 §4.1.4): a token signed
/// with the gateway's real Ed25519 key but naming another `kid` (or none) is
/// 401 in EdDSA mode; the same token with the published kid passes (control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddsa_real_key_under_an_unknown_kid_is_401() {
    let gw = gateway("EdDSA").await;
    let jwks = gw.get("/.well-known/jwks.json", None).await.json();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_string();
    let (stored_kid, pem) = crate::common::stored_keys(&gw.data_dir(), "EdDSA").remove(0);
    assert_eq!(stored_kid, kid);
    let key = EncodingKey::from_ed_pem(pem.as_bytes()).unwrap();
    let mut c = claims(gw.clock.now());
    c["roles"] = json!([]);
    let mint = |kid: Option<&str>| {
        let mut h = Header::new(Algorithm::EdDSA);
        h.typ = Some("at+jwt".into());
        h.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&h, &c, &key).unwrap()
    };
    let r = gw.get("/x", Some(&mint(Some(&kid)))).await;
    assert_eq!(r.status, 200, "control: {r:?}");
    assert_eq!(echoed(&r, "x-user-id"), vec![c["sub"].as_str().unwrap()]);
    let hits = gw.upstream.hits();
    for other in [Some("unknown-kid"), Some(""), None] {
        assert_401(
            &gw.get("/x", Some(&mint(other))).await,
            &format!("kid {other:?}"),
        );
    }
    assert_eq!(gw.upstream.hits(), hits);
}

/// Malformed compact serialization (RFC 7515 §7.1; ASVS V5.1.4, input
/// validation): empty signature, characters outside base64url, the JSON
/// serialization, extra segments, padding, whitespace and a 1 MB token are
/// each a 4xx answer (401 `unauthorized`; 400 from Pingora's parser for the
/// 1 MB header, 413 for a 1 MB token in a body),
/// never a 5xx, and nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tokens_are_4xx_never_5xx() {
    let gw = gateway("HS256").await;
    let c = claims(gw.clock.now());
    let good = hs_with_header(&json!({"alg":"HS256","typ":"at+jwt"}), &c);
    let p: Vec<&str> = good.split('.').collect();
    let cases: Vec<(&str, String)> = vec![
        ("empty signature", format!("{}.{}.", p[0], p[1])),
        (
            "non-base64url signature",
            format!("{}.{}.{}+/=", p[0], p[1], &p[2][..p[2].len() - 4]),
        ),
        (
            "non-base64url payload",
            format!("{}.{}*.{}", p[0], p[1], p[2]),
        ),
        ("padded segments", format!("{}==.{}.{}", p[0], p[1], p[2])),
        ("extra segment", format!("{good}.{}", p[2])),
        ("five segments (JWE shape)", format!("{good}.x.y")),
        ("empty segments", "..".into()),
        ("only dots", ".....".into()),
        (
            "JSON serialization",
            json!({"payload": p[1], "protected": p[0], "signature": p[2]}).to_string(),
        ),
        (
            "header not JSON",
            format!("{}.{}.{}", b64(b"not json"), p[1], p[2]),
        ),
        (
            "header JSON array",
            format!("{}.{}.{}", b64(b"[1,2]"), p[1], p[2]),
        ),
        (
            "payload not JSON",
            format!("{}.{}.{}", p[0], b64(b"\xff\xfe"), p[2]),
        ),
        ("unicode", format!("{}.{}.ä{}", p[0], p[1], p[2])),
    ];
    let hits = gw.upstream.hits();
    for (what, token) in &cases {
        let auth = format!("Bearer {token}");
        let r = get_with(&gw, "/x", &[("Authorization", &auth)]).await;
        assert_401(&r, what);
    }
    // 1 MB: over the header size limit, refused before any parsing.
    let huge = format!("Bearer {}.{}.{}", p[0], "A".repeat(1 << 20), p[2]);
    let raw = http::build_request(
        &gw.addr.to_string(),
        "GET",
        "/x",
        &[("Authorization", &huge)],
        None,
        false,
    );
    match http::send_raw(gw.addr, &raw).await {
        // Over Pingora's own 1 MB header limit: its parser answers 400
        // before any hook runs, rewritten to our JSON on its way out.
        Ok(r) => assert_error(&r, 400, "bad_request"),
        // Refusing mid-upload and closing is also a refusal; the 5xx check
        // below still holds.
        Err(e) => eprintln!("1 MB token: connection closed ({e})"),
    }
    // The same through POST /auth/verify, whose body limit applies (413).
    let r = post_with(
        gw.addr,
        "/auth/verify",
        &json!({"token": "A".repeat(1 << 20)}),
        &[],
    )
    .await;
    assert_error(&r, 413, "payload_too_large");
    for (what, token) in &cases {
        let r = post_with(gw.addr, "/auth/verify", &json!({ "token": token }), &[]).await;
        assert_error(&r, 401, "invalid_token");
        let _ = what;
    }
    assert_eq!(gw.upstream.hits(), hits);
    // The gateway is still healthy.
    assert_eq!(gw.get("/public/ok", None).await.status, 200);
}
