//! Routing, path normalization, identity headers, TLS and the echo of what
//! the upstream receives.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_route_needs_a_token_and_gets_identity_headers() {
    let gw = TestGateway::start().await;
    let r = gw.get("/hello", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "unauthorized");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    assert_eq!(gw.upstream.hits(), 0);

    let s = gw.signup("alice@example.com").await;
    let r = gw.get("/hello?x=1", Some(&s.access)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["path"], "/hello?x=1");
    let headers = echo["headers"].as_array().unwrap();
    let find = |n: &str| {
        headers
            .iter()
            .find(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(n))
            .map(|h| h[1].as_str().unwrap().to_string())
    };
    assert_eq!(find("x-user-id").unwrap(), s.user["id"].as_str().unwrap());
    assert_eq!(find("x-user-email").unwrap(), "alice@example.com");
    assert_eq!(find("x-user-roles").unwrap(), "");
    assert!(find("x-request-id").is_some());
}
