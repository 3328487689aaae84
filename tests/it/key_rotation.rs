//! Signing-key rotation (issue 12): every token names its key in `kid`;
//! after `portcullis keys rotate` the new key signs and the previous one
//! keeps verifying until every token it signed has expired, then verifies
//! nothing. Under HS256 and EdDSA alike; unknown and missing `kid`s are
//! 401; the JWKS lists every live key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::clock::Clock;
use serde_json::{json, Value};

use crate::common::{bin, http, stored_keys, upstream, Builder, TestGateway, PASSWORD};

const TTL: i64 = 600;
const LEEWAY: i64 = 30;

async fn gateway(alg: &str) -> TestGateway {
    TestGateway::start_with(Builder {
        extra: format!(
            "[tokens]\nalgorithm = \"{alg}\"\naccess_ttl_secs = {TTL}\nleeway_secs = {LEEWAY}\n"
        ),
        ..Default::default()
    })
    .await
}

fn kid_of(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).unwrap().kid
}

fn encoding_key(alg: &str, secret: &str) -> EncodingKey {
    match alg {
        "HS256" => EncodingKey::from_secret(&URL_SAFE_NO_PAD.decode(secret).unwrap()),
        _ => EncodingKey::from_ed_pem(secret.as_bytes()).unwrap(),
    }
}

/// A token signed with a stored key, naming `kid`, valid for `secs`.
fn mint(gw: &TestGateway, alg: &str, secret: &str, kid: Option<&str>, secs: i64) -> String {
    let now = gw.clock.now();
    let mut h = Header::new(if alg == "HS256" {
        Algorithm::HS256
    } else {
        Algorithm::EdDSA
    });
    h.typ = Some("at+jwt".into());
    h.kid = kid.map(str::to_string);
    let c = json!({
        "iss": "portcullis", "aud": "portcullis",
        "sub": uuid::Uuid::new_v4().to_string(),
        "exp": now + secs, "iat": now,
        "jti": uuid::Uuid::new_v4().to_string(),
        "sid": uuid::Uuid::new_v4().to_string(),
        "email": "minted@example.com", "roles": [],
    });
    jsonwebtoken::encode(&h, &c, &encoding_key(alg, secret)).unwrap()
}

fn jwks_kids(jwks: &Value) -> Vec<String> {
    let mut kids: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    kids.sort();
    kids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_the_previous_key_passes_during_the_overlap_and_fails_after_it() {
    for alg in ["HS256", "EdDSA"] {
        let gw = gateway(alg).await;
        let s = gw.signup(&format!("rot-{alg}@example.com")).await;
        let stored = stored_keys(&gw.data_dir(), alg);
        assert_eq!(stored.len(), 1, "{alg}");
        let (k1, secret1) = stored[0].clone();
        assert_eq!(kid_of(&s.access).as_deref(), Some(k1.as_str()), "{alg}");
        // A token of the old key that outlives the overlap: only the key's
        // end can refuse it.
        let long = mint(&gw, alg, &secret1, Some(&k1), 100 * TTL);
        assert_eq!(gw.get("/x", Some(&long)).await.status, 200, "{alg}");

        // Rotate (as `portcullis keys rotate` does) and reload.
        let cfg = gw.config();
        let rot = portcullis::tokens::keys::rotate(&cfg.tokens, &gw.data_dir(), gw.clock.now(), 0)
            .unwrap();
        let r = gw.admin_reload().await;
        assert_eq!(r.status, 200, "{alg}: {}", r.text());
        assert_eq!(r.json()["signing_kid"], rot.kid.as_str());
        assert_eq!(r.json()["verification_keys"], 2);
        let k2 = rot.kid.clone();
        assert_ne!(k1, k2);

        // New tokens carry the new key; old ones keep passing.
        let fresh = gw.signin(&format!("rot-{alg}@example.com"), PASSWORD).await;
        assert_eq!(kid_of(&fresh.access).as_deref(), Some(k2.as_str()), "{alg}");
        for (what, t) in [("old", &s.access), ("new", &fresh.access), ("long", &long)] {
            let r = gw.get("/x", Some(t)).await;
            assert_eq!(
                r.status,
                200,
                "{alg} {what} token during the overlap: {}",
                r.text()
            );
        }
        // The old session's refresh token still works, and yields the new key.
        let r = gw
            .post("/auth/refresh", json!({ "refresh_token": s.refresh }), None)
            .await;
        assert_eq!(r.status, 200, "{alg}: {}", r.text());
        let refreshed = r.json()["access_token"].as_str().unwrap().to_string();
        assert_eq!(kid_of(&refreshed).as_deref(), Some(k2.as_str()));
        let jwks = gw.get("/.well-known/jwks.json", None).await.json();
        if alg == "EdDSA" {
            let mut both = vec![k1.clone(), k2.clone()];
            both.sort();
            assert_eq!(jwks_kids(&jwks), both, "{jwks}");
        } else {
            assert_eq!(jwks, json!({ "keys": [] }));
        }
        // Unknown kid, no kid (a key set, not a single secret): 401.
        for kid in [Some("no-such-key"), None] {
            let t = mint(&gw, alg, &secret1, kid, TTL);
            let r = gw.get("/x", Some(&t)).await;
            assert_eq!(r.status, 401, "{alg} kid {kid:?}");
        }

        // Just before the overlap ends the old key still verifies ...
        gw.clock.advance(TTL + LEEWAY - 1);
        assert_eq!(gw.get("/x", Some(&long)).await.status, 200, "{alg}");
        // ... and from its end on it verifies nothing.
        gw.clock.advance(1);
        let r = gw.get("/x", Some(&long)).await;
        assert_eq!(
            r.status,
            401,
            "{alg} old key after the overlap: {}",
            r.text()
        );
        let again = gw.signin(&format!("rot-{alg}@example.com"), PASSWORD).await;
        assert_eq!(kid_of(&again.access).as_deref(), Some(k2.as_str()));
        assert_eq!(gw.get("/x", Some(&again.access)).await.status, 200);
        let jwks = gw.get("/.well-known/jwks.json", None).await.json();
        if alg == "EdDSA" {
            assert_eq!(jwks_kids(&jwks), vec![k2.clone()], "{jwks}");
        }
        // The next rotation removes the expired key from the file.
        let rot = portcullis::tokens::keys::rotate(&cfg.tokens, &gw.data_dir(), gw.clock.now(), 0)
            .unwrap();
        assert_eq!(rot.dropped, vec![k1.clone()]);
        let kids: Vec<String> = stored_keys(&gw.data_dir(), alg)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(kids, vec![k2, rot.kid]);
    }
}

/// With a delay, the new key is published (and verifies) at once but signs
/// only from its time on, so several gateways can all learn it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_key_verifies_at_once_and_signs_from_its_time() {
    let gw = gateway("EdDSA").await;
    gw.signup("later@example.com").await;
    let k1 = stored_keys(&gw.data_dir(), "EdDSA")[0].0.clone();
    let cfg = gw.config();
    let rot =
        portcullis::tokens::keys::rotate(&cfg.tokens, &gw.data_dir(), gw.clock.now(), 300).unwrap();
    assert_eq!(gw.admin_reload().await.status, 200);
    let (k2, secret2) = stored_keys(&gw.data_dir(), "EdDSA")[1].clone();
    assert_eq!(k2, rot.kid);
    let jwks = gw.get("/.well-known/jwks.json", None).await.json();
    assert_eq!(jwks_kids(&jwks).len(), 2);
    // Tokens another gateway signs with it already pass here.
    let other = mint(&gw, "EdDSA", &secret2, Some(&k2), TTL);
    assert_eq!(gw.get("/x", Some(&other)).await.status, 200);
    let s = gw.signin("later@example.com", PASSWORD).await;
    assert_eq!(kid_of(&s.access), Some(k1.clone()));
    gw.clock.advance(300);
    let s = gw.signin("later@example.com", PASSWORD).await;
    assert_eq!(kid_of(&s.access), Some(k2));
}

/// An earlier version's single-key files are imported on upgrade: the
/// Ed25519 key keeps its kid, so its tokens keep passing; the HS256 secret
/// keeps signing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_key_files_of_earlier_versions_are_imported() {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let mut gw = gateway("EdDSA").await;
    let legacy = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = legacy.to_pkcs8_pem(Default::default()).unwrap().to_string();
    let hs = URL_SAFE_NO_PAD.encode([7u8; 32]);
    gw.stop();
    std::fs::remove_file(gw.data_dir().join("jwt-keys-ed25519.json")).unwrap();
    std::fs::write(gw.data_dir().join("jwt-ed25519.pem"), &pem).unwrap();
    std::fs::write(gw.data_dir().join("jwt-hs256.key"), &hs).unwrap();
    gw.restart();
    let (kid, stored) = stored_keys(&gw.data_dir(), "EdDSA").remove(0);
    assert_eq!(stored, pem);
    // The kid of earlier versions: the first 12 bytes of SHA-256 of the key.
    use sha2::Digest;
    let old_kid =
        URL_SAFE_NO_PAD.encode(&sha2::Sha256::digest(legacy.verifying_key().to_bytes())[..12]);
    assert_eq!(kid, old_kid);
    let t = mint(&gw, "EdDSA", &pem, Some(&old_kid), TTL);
    assert_eq!(gw.get("/x", Some(&t)).await.status, 200);

    // HS256 on the same data dir: the old secret is the first key.
    let toml = gw
        .toml
        .replace("algorithm = \"EdDSA\"", "algorithm = \"HS256\"");
    gw.write_toml(&toml);
    gw.restart();
    let s = gw.signup("upgraded@example.com").await;
    let mut v = jsonwebtoken::Validation::new(Algorithm::HS256);
    v.set_audience(&["portcullis"]);
    v.set_issuer(&["portcullis"]);
    jsonwebtoken::decode::<Value>(
        &s.access,
        &jsonwebtoken::DecodingKey::from_secret(&[7u8; 32]),
        &v,
    )
    .expect("signed with the imported secret");
    assert!(kid_of(&s.access).is_some());
}

/// The real binary: `portcullis keys rotate` next to a running EdDSA
/// gateway makes it reload; the JWKS lists both keys, the old token still
/// passes, new ones carry the new kid. With PORTCULLIS_JWT_SECRET the
/// command refuses and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portcullis_keys_rotate_on_a_running_gateway() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = bin::write_config(dir.path(), &up.url(), "[tokens]\nalgorithm = \"EdDSA\"\n");
    let served = bin::Served::start(&cfg).await;
    let body =
        json!({ "email": "cli@example.com", "password": PASSWORD, "password_confirm": PASSWORD });
    assert_eq!(
        http::post_json(cfg.listen, "/auth/register", &body, None)
            .await
            .status,
        201
    );
    let login = |addr: std::net::SocketAddr| async move {
        let r = http::post_json(
            addr,
            "/auth/login",
            &json!({ "email": "cli@example.com", "password": PASSWORD }),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["access_token"].as_str().unwrap().to_string()
    };
    let old = login(cfg.listen).await;
    let k1 = kid_of(&old).unwrap();

    let config = cfg.path.display().to_string();
    let out = bin::run(
        bin::command(&["keys", "rotate", "--config", &config]),
        None,
        bin::CLI_LIMIT,
    );
    assert!(out.ok(), "{out:?}\n{}", served.stderr());
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["gateway"], "reloaded", "{v}");
    assert_eq!(v["previous"][0]["kid"], k1.as_str());
    let k2 = v["kid"].as_str().unwrap().to_string();
    let jwks = http::get(cfg.listen, "/.well-known/jwks.json", None)
        .await
        .json();
    let mut both = vec![k1.clone(), k2.clone()];
    both.sort();
    assert_eq!(jwks_kids(&jwks), both);
    assert_eq!(http::get(cfg.listen, "/x", Some(&old)).await.status, 200);
    let new = login(cfg.listen).await;
    assert_eq!(kid_of(&new), Some(k2));
    assert_eq!(http::get(cfg.listen, "/x", Some(&new)).await.status, 200);
    drop(served);

    // HS256 from the environment: nothing to rotate in the data dir.
    let hs = bin::write_config(dir.path(), &up.url(), "");
    let mut cmd = bin::command(&["keys", "rotate", "--config", &hs.path.display().to_string()]);
    cmd.env(
        "PORTCULLIS_JWT_SECRET",
        "an-operator-managed-secret-0123456789",
    );
    let out = bin::run(cmd, None, bin::CLI_LIMIT);
    assert!(!out.ok(), "{out:?}");
    assert!(out.stderr.contains("PORTCULLIS_JWT_SECRET"), "{out:?}");
}

/// Sixteen rotations at once (threads released together) lose no key:
/// the key set is changed under a lock, each on the current file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_rotations_at_once_lose_no_key() {
    let gw = gateway("HS256").await;
    let cfg = gw.config();
    let now = gw.clock.now();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (tokens, dir, barrier) = (cfg.tokens.clone(), gw.data_dir(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                portcullis::tokens::keys::rotate(&tokens, &dir, now, 0)
                    .unwrap()
                    .kid
            })
        })
        .collect();
    let mut made: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    made.sort();
    let stored: Vec<String> = stored_keys(&gw.data_dir(), "HS256")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(stored.len(), 17, "{stored:?}");
    for kid in &made {
        assert!(stored.contains(kid), "{kid} lost");
    }
    let r = gw.admin_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["verification_keys"], 17);
}
