//! IPv6 clients are throttled per network, not per address.

use super::*;

async fn gateway(throttle: &str, routes: &str) -> TestGateway {
    TestGateway::start_with(Builder {
        server_extra: "trusted_proxies = [\"127.0.0.1/32\"]\n".into(),
        extra: format!("[throttle]\nauth_per_minute = 3\n{throttle}"),
        routes: routes.into(),
        ..Default::default()
    })
    .await
}

async fn auth_post_from(gw: &TestGateway, ip: &str) -> Response {
    cheap_auth_post(gw, &[("X-Forwarded-For", ip)]).await
}

/// Rate-limit evasion by address rotation (ASVS 4.0.3 V2.2.1 anti-automation;
/// CWE-307): one IPv6 subscriber owns a /64 and can send every request from
/// a fresh address. The per-IP auth budget is per /64 by default, so
/// rotating inside it is 429 `too_many_requests` on the 4th request, while
/// another /64 and IPv4 clients keep their own budgets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_ipv6_addresses_inside_a_64_shares_one_auth_budget() {
    let gw = gateway("", DEFAULT_ROUTES).await;
    for ip in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"] {
        assert_eq!(auth_post_from(&gw, ip).await.status, 401, "{ip}");
    }
    assert_429(
        &auth_post_from(&gw, "2001:db8:1:2:dead:beef:0:4").await,
        "fourth address in the /64",
    );
    assert_429(
        &auth_post_from(&gw, "[2001:db8:1:2::5]:443").await,
        "with a port",
    );
    // The neighbouring /64 is another subscriber.
    assert_eq!(auth_post_from(&gw, "2001:db8:1:3::1").await.status, 401);
    // IPv4 stays per address.
    for _ in 0..3 {
        assert_eq!(auth_post_from(&gw, "192.0.2.1").await.status, 401);
    }
    assert_429(&auth_post_from(&gw, "192.0.2.1").await, "IPv4 client");
    assert_eq!(auth_post_from(&gw, "192.0.2.2").await.status, 401);
}

/// The prefix is configurable (`throttle.ipv6_prefix_len`): at /128 every
/// address is its own client again, at /48 a whole site shares one budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ipv6_throttle_prefix_is_configurable() {
    let gw = gateway("ipv6_prefix_len = 128\n", DEFAULT_ROUTES).await;
    for i in 1..=6 {
        let ip = format!("2001:db8:1:2::{i}");
        assert_eq!(auth_post_from(&gw, &ip).await.status, 401, "{ip}");
    }
    drop(gw);
    let gw = gateway("ipv6_prefix_len = 48\n", DEFAULT_ROUTES).await;
    for ip in ["2001:db8:1:1::1", "2001:db8:1:2::1", "2001:db8:1:ffff::1"] {
        assert_eq!(auth_post_from(&gw, ip).await.status, 401, "{ip}");
    }
    assert_429(&auth_post_from(&gw, "2001:db8:1:abcd::9").await, "same /48");
}

/// The same rotation against a per-route rate limit for anonymous traffic
/// (ASVS 4.0.3 V11.1.4 anti-automation): the route's per-IP budget is per
/// /64 as well, so the third rotated request is 429 and never reaches the
/// upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_ipv6_addresses_shares_one_route_budget() {
    let routes = route("/api", "public", "rate_per_minute = 2");
    let gw = gateway("", &routes).await;
    for ip in ["2001:db8:9:9::1", "2001:db8:9:9::2"] {
        let r = get_with(&gw, "/api/x", &[("X-Forwarded-For", ip)]).await;
        assert_eq!(r.status, 200, "{ip}: {r:?}");
        assert_eq!(echoed(&r, "x-real-ip"), vec![ip.to_string()]);
    }
    let r = get_with(&gw, "/api/x", &[("X-Forwarded-For", "2001:db8:9:9::3")]).await;
    assert_429(&r, "third address in the /64");
    assert_eq!(gw.upstream.hits(), 2);
    let r = get_with(&gw, "/api/x", &[("X-Forwarded-For", "2001:db8:9:a::1")]).await;
    assert_eq!(r.status, 200, "another /64: {r:?}");
}
