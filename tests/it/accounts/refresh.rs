//! Refresh: rotation every time, reuse detection and its grace window,
//! concurrent refreshes, idle and absolute lifetimes.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_the_token_every_time() {
    let gw = gateway("").await;
    let s = gw.signup("gina@example.com").await;
    let mut current = s.refresh.clone();
    let mut seen = vec![current.clone()];
    for _ in 0..3 {
        gw.clock.advance(5);
        let r = refresh(&gw, &current).await;
        assert_eq!(r.status, 200, "{r:?}");
        let v = r.json();
        assert_eq!(v["token_type"], "Bearer");
        assert_eq!(v["expires_in"], 900);
        assert_user_shape(&v["user"], "gina@example.com");
        let next = v["refresh_token"].as_str().unwrap().to_string();
        assert!(!seen.contains(&next), "refresh must return a NEW token");
        seen.push(next.clone());
        let access = v["access_token"].as_str().unwrap();
        assert_eq!(proxied(&gw, access).await, 200);
        current = next;
    }

    // Errors.
    for bad in ["", "garbage", &"x".repeat(600), &s.access] {
        let r = refresh(&gw, bad).await;
        assert_error(&r, 401, "invalid_token");
    }
    assert_fields(
        &gw.post("/auth/refresh", json!({}), None).await,
        &["refresh_token"],
    );
    assert_fields(
        &gw.post("/auth/refresh", json!({ "refresh_token": 7 }), None)
            .await,
        &["refresh_token"],
    );
    // The bad attempts did not hurt the live session.
    assert_eq!(refresh(&gw, &current).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_a_rotated_refresh_token_revokes_the_session() {
    let gw = gateway("").await;
    let s = gw.signup("hank@example.com").await;
    let other = gw.signin("hank@example.com", PASSWORD).await;
    let r1 = session_of(&refresh(&gw, &s.refresh).await);
    assert_eq!(proxied(&gw, &r1.access).await, 200);
    assert_eq!(proxied(&gw, &s.access).await, 200);

    // The old token again: reuse.
    let r = refresh(&gw, &s.refresh).await;
    assert_error(&r, 401, "invalid_token");
    // The whole session is gone: the successor fails too...
    assert_error(&refresh(&gw, &r1.refresh).await, 401, "invalid_token");
    // ...and every access token of the session is dead at once.
    let denied = gw.get("/", Some(&r1.access)).await;
    assert_error(&denied, 401, "unauthorized");
    assert_eq!(proxied(&gw, &s.access).await, 401);
    assert_eq!(gw.get("/auth/me", Some(&r1.access)).await.status, 401);
    // Another session of the same user is untouched.
    assert_eq!(proxied(&gw, &other.access).await, 200);
    assert_eq!(refresh(&gw, &other.refresh).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_with_one_token_have_one_winner() {
    let gw = gateway("").await;
    let s = gw.signup("ivan@example.com").await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (addr, token) = (gw.addr, s.refresh.clone());
        tasks.push(tokio::spawn(async move {
            http::post_json(
                addr,
                "/auth/refresh",
                &json!({ "refresh_token": token }),
                None,
            )
            .await
        }));
    }
    let mut ok = Vec::new();
    let mut rejected = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok.push(r),
            401 => {
                assert_error(&r, 401, "invalid_token");
                rejected += 1;
            }
            _ => panic!("unexpected answer: {r:?}"),
        }
    }
    assert_eq!((ok.len(), rejected), (1, 49));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_grace_window_returns_the_same_successor() {
    let gw = gateway("[tokens]\nrefresh_reuse_grace_secs = 10\n").await;
    let s = gw.signup("jane@example.com").await;
    let first = session_of(&refresh(&gw, &s.refresh).await);
    assert_ne!(first.refresh, s.refresh);

    // A second tab with the previous token, inside the window.
    gw.clock.advance(5);
    let second = session_of(&refresh(&gw, &s.refresh).await);
    assert_eq!(second.refresh, first.refresh, "the same successor");
    assert_eq!(proxied(&gw, &second.access).await, 200);

    // Several tabs at once, all inside the window: all get the same successor.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (addr, token) = (gw.addr, s.refresh.clone());
        tasks.push(tokio::spawn(async move {
            http::post_json(
                addr,
                "/auth/refresh",
                &json!({ "refresh_token": token }),
                None,
            )
            .await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(session_of(&r).refresh, first.refresh);
    }

    // Past the window, the previous token is reuse: the session dies.
    gw.clock.advance(6);
    assert_error(&refresh(&gw, &s.refresh).await, 401, "invalid_token");
    assert_error(&refresh(&gw, &first.refresh).await, 401, "invalid_token");
    assert_eq!(proxied(&gw, &second.access).await, 401);
    assert_eq!(proxied(&gw, &s.access).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_grace_the_previous_token_is_reuse_at_once() {
    // The default grace is 0: even a same-second retry revokes.
    let gw = gateway("").await;
    let s = gw.signup("kyle@example.com").await;
    let first = session_of(&refresh(&gw, &s.refresh).await);
    assert_error(&refresh(&gw, &s.refresh).await, 401, "invalid_token");
    assert_error(&refresh(&gw, &first.refresh).await, 401, "invalid_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_sessions_expire_when_idle() {
    let gw = gateway("[tokens]\nrefresh_idle_secs = 100\nrefresh_ttl_secs = 1000\n").await;
    let s = gw.signup("lena@example.com").await;
    // Used in time, the session lives on.
    gw.clock.advance(90);
    let a = session_of(&refresh(&gw, &s.refresh).await);
    gw.clock.advance(90);
    let b = session_of(&refresh(&gw, &a.refresh).await);
    // Idle too long: refused, and the session is gone.
    gw.clock.advance(101);
    assert_error(&refresh(&gw, &b.refresh).await, 401, "invalid_token");
    let other = gw.signin("lena@example.com", PASSWORD).await;
    let list = gw.get("/auth/sessions", Some(&other.access)).await.json();
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_sessions_have_an_absolute_lifetime() {
    let gw = gateway("[tokens]\nrefresh_idle_secs = 100\nrefresh_ttl_secs = 1000\n").await;
    let s = gw.signup("mona@example.com").await;
    let mut token = s.refresh;
    // Never idle, refreshed every 90 s, up to 990 s after login.
    for _ in 0..11 {
        gw.clock.advance(90);
        token = session_of(&refresh(&gw, &token).await).refresh;
    }
    gw.clock.advance(20);
    assert_error(&refresh(&gw, &token).await, 401, "invalid_token");
}
