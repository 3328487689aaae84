use super::*;
use crate::config::Secret;
use std::collections::BTreeMap;

fn provider(kind: ProviderKind) -> IdentityProvider {
    IdentityProvider {
        id: "corp".into(),
        kind,
        display_name: "Corp".into(),
        issuer: "https://idp.example.com".into(),
        authorize_url: String::new(),
        token_url: String::new(),
        userinfo_url: String::new(),
        client_id: "portcullis".into(),
        client_secret: Secret("s".into()),
        client_secret_env: "X".into(),
        scopes: vec!["openid".into()],
        subject_claim: "sub".into(),
        email_claim: "email".into(),
        email_verified_claim: Some("email_verified".into()),
        allow_signup: true,
        link_by_email: false,
        roles_claim: Some("groups".into()),
        role_map: BTreeMap::from([("admins".to_string(), "admin".to_string())]),
        trust_mfa: false,
        ca_file: None,
        redirect_uri: "https://gw/auth/oidc/corp/callback".into(),
    }
}

struct Signer {
    pem: String,
    jwk: Value,
}

fn signer(kid: &str) -> Signer {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key.to_pkcs8_pem(Default::default()).unwrap().to_string();
    let jwk = serde_json::json!({
        "kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "alg": "EdDSA",
        "x": b64url(key.verifying_key().as_bytes()),
    });
    Signer { pem, jwk }
}

fn sign(s: &Signer, kid: &str, claims: Value) -> String {
    let mut h = jsonwebtoken::Header::new(Algorithm::EdDSA);
    h.kid = Some(kid.into());
    let key = jsonwebtoken::EncodingKey::from_ed_pem(s.pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&h, &claims, &key).unwrap()
}

fn discovery() -> Discovery {
    Discovery {
        issuer: "https://idp.example.com".into(),
        authorization_endpoint: "https://idp.example.com/auth".into(),
        token_endpoint: "https://idp.example.com/token".into(),
        userinfo_endpoint: None,
        jwks_uri: "https://idp.example.com/jwks".into(),
        authorization_response_iss_parameter_supported: true,
    }
}

/// Every id_token check refuses its own kind of bad token; the good
/// one passes. The clock is a manual one.
#[tokio::test]
async fn id_tokens_are_checked_claim_by_claim() {
    let now = 1_700_000_000;
    let clock = Arc::new(crate::clock::ManualClock::new(now));
    let fed = Federation::new(clock.clone());
    let p = provider(ProviderKind::Oidc);
    let good = signer("k1");
    let stranger = signer("k1");
    fed.prime(&p, discovery(), vec![good.jwk.clone()]);
    let claims = |f: &dyn Fn(&mut Map<String, Value>)| {
        let mut c: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "iss": "https://idp.example.com", "aud": "portcullis", "sub": "u1",
            "exp": now + 300, "iat": now, "nonce": "n-1",
        }))
        .unwrap();
        f(&mut c);
        Value::Object(c)
    };
    let ok = sign(&good, "k1", claims(&|_| {}));
    let c = fed.verify_id_token(&p, &ok, Some("n-1")).await.unwrap();
    assert_eq!(c["sub"], "u1");
    let bad: Vec<(&str, String, &str)> = vec![
        ("wrong nonce", ok.clone(), "n-2"),
        ("another key", sign(&stranger, "k1", claims(&|_| {})), "n-1"),
        (
            "another issuer",
            sign(
                &good,
                "k1",
                claims(&|c| {
                    c.insert("iss".into(), "https://evil".into());
                }),
            ),
            "n-1",
        ),
        (
            "another audience",
            sign(
                &good,
                "k1",
                claims(&|c| {
                    c.insert("aud".into(), "other-app".into());
                }),
            ),
            "n-1",
        ),
        (
            "expired",
            sign(
                &good,
                "k1",
                claims(&|c| {
                    c.insert("exp".into(), (now - 120).into());
                }),
            ),
            "n-1",
        ),
        (
            "iat absurd",
            sign(
                &good,
                "k1",
                claims(&|c| {
                    c.insert("iat".into(), (now - 2 * MAX_AGE_SECS).into());
                }),
            ),
            "n-1",
        ),
        (
            "azp another client",
            sign(
                &good,
                "k1",
                claims(&|c| {
                    c.insert("azp".into(), "x".into());
                }),
            ),
            "n-1",
        ),
        (
            "several audiences, no azp",
            sign(
                &good,
                "k1",
                claims(&|c| {
                    c.insert("aud".into(), serde_json::json!(["portcullis", "x"]));
                }),
            ),
            "n-1",
        ),
        (
            "no nonce",
            sign(
                &good,
                "k1",
                claims(&|c| {
                    c.remove("nonce");
                }),
            ),
            "n-1",
        ),
        (
            "no exp",
            sign(
                &good,
                "k1",
                claims(&|c| {
                    c.remove("exp");
                }),
            ),
            "n-1",
        ),
        ("tampered", format!("{}x", &ok[..ok.len() - 1]), "n-1"),
    ];
    for (what, token, nonce) in bad {
        let r = fed.verify_id_token(&p, &token, Some(nonce)).await;
        assert!(matches!(r, Err(FedError::Refused(_))), "{what}: {r:?}");
    }
    // Several audiences with our azp: accepted.
    let multi = sign(
        &good,
        "k1",
        claims(&|c| {
            c.insert("aud".into(), serde_json::json!(["portcullis", "x"]));
            c.insert("azp".into(), "portcullis".into());
        }),
    );
    assert!(fed.verify_id_token(&p, &multi, Some("n-1")).await.is_ok());
    // An HS256 token made with any secret: refused before any key.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims(&|_| {}),
        &jsonwebtoken::EncodingKey::from_secret(b"public"),
    )
    .unwrap();
    assert!(fed.verify_id_token(&p, &hs, Some("n-1")).await.is_err());
    // Time moves: the good token expires (exp + leeway).
    clock.advance(300 + LEEWAY_SECS);
    assert!(fed.verify_id_token(&p, &ok, Some("n-1")).await.is_err());
}

#[tokio::test]
async fn the_authorization_url_carries_state_nonce_and_pkce() {
    let clock = Arc::new(crate::clock::ManualClock::new(1_700_000_000));
    let fed = Federation::new(clock);
    let p = provider(ProviderKind::Oidc);
    fed.prime(&p, discovery(), vec![]);
    let a = fed
        .authorize(&p, "st".into(), "nn".into(), "vv".into())
        .await
        .unwrap();
    let u = url::Url::parse(&a.url).unwrap();
    let q: HashMap<String, String> = u.query_pairs().into_owned().collect();
    assert_eq!(
        u.as_str().split('?').next(),
        Some("https://idp.example.com/auth")
    );
    assert_eq!(q["state"], "st");
    assert_eq!(q["nonce"], "nn");
    assert_eq!(q["code_challenge"], pkce_challenge("vv"));
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["redirect_uri"], p.redirect_uri);
    assert_eq!(q["response_type"], "code");
    // RFC 9207: promised, so required and checked.
    assert!(fed
        .check_response_issuer(&p, Some("https://idp.example.com"))
        .await
        .is_ok());
    assert!(fed
        .check_response_issuer(&p, Some("https://evil"))
        .await
        .is_err());
    assert!(fed.check_response_issuer(&p, None).await.is_err());
}

#[test]
fn pkce_matches_the_rfc_7636_example() {
    assert_eq!(
        pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
}

#[test]
fn claims_map_to_an_identity() {
    let p = provider(ProviderKind::Oidc);
    let c: Map<String, Value> = serde_json::from_value(serde_json::json!({
        "sub": "abc", "email": "a@x.org", "email_verified": true,
        "groups": ["admins", "unmapped"], "amr": ["pwd", "mfa"], "sid": "s1"
    }))
    .unwrap();
    let id = identity_from_claims(&p, &c).unwrap();
    assert_eq!(id.subject, "abc");
    assert!(id.email_verified);
    assert_eq!(id.roles, ["admin"]);
    assert_eq!(id.amr, ["pwd", "mfa"]);
    assert_eq!(id.sid.as_deref(), Some("s1"));
    // GitHub style: a numeric id, a null email, no verified claim.
    let mut gh = provider(ProviderKind::OAuth2);
    gh.subject_claim = "id".into();
    gh.email_verified_claim = None;
    let c: Map<String, Value> =
        serde_json::from_value(serde_json::json!({"id": 42, "email": null})).unwrap();
    let id = identity_from_claims(&gh, &c).unwrap();
    assert_eq!(
        (id.subject.as_str(), id.email, id.email_verified),
        ("42", None, false)
    );
    let c: Map<String, Value> = serde_json::from_value(
        serde_json::json!({"id": 42, "email": "g@x.org", "email_verified": true}),
    )
    .unwrap();
    assert!(
        !identity_from_claims(&gh, &c).unwrap().email_verified,
        "never verified without the claim"
    );
    // No subject: refused.
    let c: Map<String, Value> = serde_json::from_value(serde_json::json!({"email": "x"})).unwrap();
    assert!(identity_from_claims(&p, &c).is_err());
}
