//! Issue 11: the gateway on PostgreSQL. The store itself is held to the
//! same conformance suite as sled (tests/it/store.rs); these tests boot the
//! real gateway with `[storage] backend = "postgres"` on the throwaway
//! test cluster (common/pg.rs) and drive it over HTTP.

use serde_json::json;

use crate::common::{pg, Builder, TestGateway, PASSWORD};

/// A gateway on a fresh database of the test cluster, or `None` (with the
/// reason printed) where PostgreSQL cannot run.
async fn pg_gateway(extra: &str) -> Option<TestGateway> {
    let cluster = match pg::cluster() {
        Ok(c) => c,
        Err(why) => {
            eprintln!("PostgreSQL test skipped: {why}");
            return None;
        }
    };
    let url = cluster.database().await;
    Some(
        TestGateway::start_with(Builder {
            extra: format!(
                "[throttle]\nauth_per_minute = 0\n[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\n{extra}"
            ),
            ..Default::default()
        })
        .await,
    )
}

/// The account lifecycle end to end on PostgreSQL: register, login,
/// proxied request, refresh with reuse detection, logout; and everything
/// survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_lifecycle_runs_on_postgres() {
    let Some(mut gw) = pg_gateway("").await else {
        return;
    };
    let s = gw.signup("pg@example.com").await;
    assert_eq!(gw.get("/", Some(&s.access)).await.status, 200);
    let r = gw
        .post("/auth/refresh", json!({ "refresh_token": s.refresh }), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let next = r.json()["refresh_token"].as_str().unwrap().to_string();
    // Reuse of the rotated token ends the session.
    let r = gw
        .post("/auth/refresh", json!({ "refresh_token": s.refresh }), None)
        .await;
    assert_eq!(r.status, 401);
    let r = gw
        .post("/auth/refresh", json!({ "refresh_token": next }), None)
        .await;
    assert_eq!(r.status, 401, "the whole session is gone");

    let s2 = gw.signin("pg@example.com", PASSWORD).await;
    let r = gw
        .post(
            "/auth/logout",
            json!({ "refresh_token": s2.refresh }),
            Some(&s2.access),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(gw.get("/", Some(&s2.access)).await.status, 401);

    // After a restart the user and the revocation are still known: they
    // live in PostgreSQL (the data dir holds only keys here).
    gw.restart();
    assert_eq!(gw.get("/", Some(&s2.access)).await.status, 401);
    let s3 = gw.signin("pg@example.com", PASSWORD).await;
    assert_eq!(gw.get("/", Some(&s3.access)).await.status, 200);
    assert_eq!(
        gw.register("pg@example.com", PASSWORD).await.status,
        409,
        "one account per email"
    );
}
