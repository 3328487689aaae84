//! Identity header spoofing (ASVS 4.0.3 V4.1.3 / V13.1.3; CWE-290
//! authentication bypass by spoofing, CWE-644). Every variant of a client
//! sent `X-User-*` header, by case, `_` for `-`, duplicates, and naming it
//! in `Connection:` (hop-by-hop removal after injection would drop the real
//! identity), on public, optional and required routes, over HTTP/1.1 and
//! HTTP/2: the upstream receives no client value, and exactly the injected
//! identity when a valid token was sent.

use super::*;

/// Spoof headers for HTTP/1.1 (names as written on the wire).
const SPOOFS_H1: [(&str, &str); 10] = [
    ("X-User-Id", "00000000-0000-0000-0000-000000000000"),
    ("x-user-id", "spoof-lower"),
    ("X-USER-ID", "spoof-upper"),
    ("X_User_Id", "spoof-underscore"),
    ("x_user-email", "spoof@evil.example"),
    ("X-User-Roles", "admin"),
    ("X-User-Roles", "admin,ops"),
    ("X-uSeR-aUtH-mEtHoD", "api_key"),
    ("X-User-Api-Key-Id", "spoof"),
    ("X-user-ID", "spoof-mixed"),
];

/// The same family as HTTP/2 allows it (lowercase names only).
const SPOOFS_H2: [(&str, &str); 7] = [
    ("x-user-id", "spoof-lower"),
    ("x_user_id", "spoof-underscore"),
    ("x-user-email", "spoof@evil.example"),
    ("x_user_email", "spoof@evil.example"),
    ("x-user-roles", "admin"),
    ("x-user-auth-method", "api_key"),
    ("x-user-api-key-id", "spoof"),
];

/// The identity-family headers the upstream saw.
fn identity_received(echo: &Value) -> Vec<(String, String)> {
    echoed_headers(echo)
        .into_iter()
        .filter(|(n, _)| portcullis::proxy::headers::is_identity_header(n.trim()))
        .collect()
}

#[track_caller]
fn assert_identity(echo: &Value, expected: Option<&Session>, what: &str) {
    let got = identity_received(echo);
    let Some(s) = expected else {
        assert!(
            got.is_empty(),
            "{what}: spoofed identity reached the upstream: {got:?}"
        );
        return;
    };
    for (n, _) in &got {
        assert!(
            !n.contains('_'),
            "{what}: underscore name reached the upstream: {got:?}"
        );
    }
    let one = |name: &str| -> Vec<String> {
        got.iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(
        one("x-user-id"),
        vec![s.user["id"].as_str().unwrap()],
        "{what}"
    );
    assert_eq!(
        one("x-user-email"),
        vec![s.user["email"].as_str().unwrap()],
        "{what}"
    );
    assert_eq!(one("x-user-roles"), vec![String::new()], "{what}");
    // Not injected by every version; never the client's value.
    assert!(
        one("x-user-auth-method").iter().all(|v| v == "jwt"),
        "{what}: {got:?}"
    );
    assert!(one("x-user-api-key-id").is_empty(), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// HTTP/1.1: each spoof alone, all of them at once, duplicated, and named
/// in `Connection:`, on every route kind, anonymous and with a token.
async fn h1_identity_spoofing_never_reaches_the_upstream() {
    let gw = TestGateway::start().await;
    let s = gw.signup("spoof1@example.com").await;
    let auth = bearer(&s.access);
    let cases: Vec<(&str, bool, Option<&Session>)> = vec![
        ("/public/x", false, None),
        ("/public/x", true, None),
        ("/optional/x", false, None),
        ("/optional/x", true, Some(&s)),
        ("/x", true, Some(&s)),
    ];
    for (path, with_token, expect) in cases {
        let mut variants: Vec<Vec<(&str, &str)>> = SPOOFS_H1.iter().map(|h| vec![*h]).collect();
        variants.push(SPOOFS_H1.to_vec());
        variants.push(vec![SPOOFS_H1[0], SPOOFS_H1[0], SPOOFS_H1[1]]);
        variants.push(vec![SPOOFS_H1[0], ("Connection", "keep-alive, X-User-Id")]);
        variants.push(vec![
            SPOOFS_H1[5],
            ("Connection", "X-User-Roles, X-User-Email"),
        ]);
        variants.push(vec![("Connection", "x-user-id, x_user_id")]);
        for mut headers in variants {
            let what = format!("{path} token={with_token} {headers:?}");
            if with_token {
                headers.push(("Authorization", &auth));
            }
            let r = get_with(&gw, path, &headers).await;
            assert_eq!(r.status, 200, "{what}: {r:?}");
            assert_identity(&gw.upstream.last_request().unwrap(), expect, &what);
        }
    }
    // Required route without a token: refused whatever identity is claimed.
    let before = gw.upstream.hits();
    let r = get_with(&gw, "/x", &SPOOFS_H1).await;
    assert_error(&r, 401, "unauthorized");
    assert_eq!(gw.upstream.hits(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// HTTP/2 (TLS, ALPN h2): the same on every route kind (`Connection:` does
/// not exist in HTTP/2; the client library refuses to send it).
async fn h2_identity_spoofing_never_reaches_the_upstream() {
    let gw = TestGateway::start().await;
    let s = gw.signup("spoof2@example.com").await;
    let auth = bearer(&s.access);
    let cases: Vec<(&str, bool, Option<&Session>)> = vec![
        ("/public/x", false, None),
        ("/public/x", true, None),
        ("/optional/x", false, None),
        ("/optional/x", true, Some(&s)),
        ("/x", true, Some(&s)),
    ];
    for (path, with_token, expect) in cases {
        let mut variants: Vec<Vec<(&str, &str)>> = SPOOFS_H2.iter().map(|h| vec![*h]).collect();
        variants.push(SPOOFS_H2.to_vec());
        variants.push(vec![SPOOFS_H2[0], SPOOFS_H2[0], SPOOFS_H2[1]]);
        for mut headers in variants {
            let what = format!("h2 {path} token={with_token} {headers:?}");
            if with_token {
                headers.push(("authorization", &auth));
            }
            let (status, _, body) = h2_request(&gw, path, &headers).await;
            assert_eq!(status, 200, "{what}: {}", String::from_utf8_lossy(&body));
            let echo: Value = serde_json::from_slice(&body).unwrap();
            assert_identity(&echo, expect, &what);
        }
    }
    let before = gw.upstream.hits();
    let (status, _, _) = h2_request(&gw, "/x", &SPOOFS_H2).await;
    assert_eq!(status, 401);
    assert_eq!(gw.upstream.hits(), before);
}
