//! Sessions: listed, and ended one at a time.

use super::*;

async fn login_with_agent(gw: &TestGateway, email: &str, agent: &str) -> Session {
    let body = json!({ "email": email, "password": PASSWORD }).to_string();
    let r = raw(
        gw.addr,
        "POST",
        "/auth/login",
        &[("content-type", "application/json"), ("user-agent", agent)],
        Some(body.as_bytes()),
    )
    .await;
    session_of(&r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_listed_and_can_be_ended() {
    let gw = gateway("").await;
    assert_eq!(gw.register("uma@example.com", PASSWORD).await.status, 201);
    let one = login_with_agent(&gw, "uma@example.com", "agent-one/1.0").await;
    let t0 = gw.clock.now();
    gw.clock.advance(10);
    let two = login_with_agent(&gw, "uma@example.com", "agent-two/2.0").await;
    let stranger = gw.signup("vera@example.com").await;

    let list = |access: String| {
        let addr = gw.addr;
        async move {
            let r = http::get(addr, "/auth/sessions", Some(&access)).await;
            assert_eq!(r.status, 200, "{r:?}");
            r.json()["sessions"].as_array().unwrap().clone()
        }
    };
    let sessions = list(one.access.clone()).await;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    for s in &sessions {
        let mut keys: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "created_at",
                "current",
                "id",
                "ip",
                "last_used_at",
                "user_agent"
            ]
        );
        assert!(uuid::Uuid::parse_str(s["id"].as_str().unwrap()).is_ok());
        assert_eq!(s["ip"], "127.0.0.1");
    }
    let by_agent = |agent: &str| {
        sessions
            .iter()
            .find(|s| s["user_agent"] == agent)
            .unwrap_or_else(|| panic!("no session for {agent}: {sessions:?}"))
            .clone()
    };
    let s1 = by_agent("agent-one/1.0");
    let s2 = by_agent("agent-two/2.0");
    assert_eq!(s1["current"], true);
    assert_eq!(s2["current"], false);
    assert_eq!(s1["created_at"], portcullis::clock::rfc3339(t0));
    assert_eq!(s1["last_used_at"], portcullis::clock::rfc3339(t0));
    assert_eq!(s2["created_at"], portcullis::clock::rfc3339(t0 + 10));
    // "current" follows the caller.
    let from_two = list(two.access.clone()).await;
    for s in &from_two {
        assert_eq!(s["current"], s["id"] == s2["id"], "{from_two:?}");
    }
    // A refresh moves last_used_at.
    gw.clock.advance(50);
    let one_b = session_of(&refresh(&gw, &one.refresh).await);
    let after = list(one_b.access.clone()).await;
    let s1b = after.iter().find(|s| s["id"] == s1["id"]).unwrap();
    assert_eq!(s1b["last_used_at"], portcullis::clock::rfc3339(t0 + 60));
    assert_eq!(s1b["created_at"], s1["created_at"]);
    assert_eq!(s1b["current"], true);

    // End session two from session one.
    let del = |id: String, bearer: Option<String>| {
        let addr = gw.addr;
        async move {
            http::send_json(
                addr,
                "DELETE",
                &format!("/auth/sessions/{id}"),
                None,
                bearer.as_deref(),
            )
            .await
        }
    };
    let s2_id = s2["id"].as_str().unwrap().to_string();
    let r = del(s2_id.clone(), Some(one_b.access.clone())).await;
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.body.is_empty());
    assert_eq!(proxied(&gw, &two.access).await, 401);
    assert_error(&refresh(&gw, &two.refresh).await, 401, "invalid_token");
    assert_eq!(list(one_b.access.clone()).await.len(), 1);
    // Already gone: 404.
    assert_error(
        &del(s2_id, Some(one_b.access.clone())).await,
        404,
        "not_found",
    );

    // Bad ids and somebody else's session: 404, and theirs lives on.
    let theirs = list(stranger.access.clone()).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for id in [
        theirs.clone(),
        "not-a-uuid".to_string(),
        uuid::Uuid::new_v4().to_string(),
        "123".to_string(),
    ] {
        let r = del(id.clone(), Some(one_b.access.clone())).await;
        assert_error(&r, 404, "not_found");
    }
    assert_eq!(proxied(&gw, &stranger.access).await, 200);
    assert_eq!(list(stranger.access.clone()).await.len(), 1);

    // Without a bearer: 401 for both.
    assert_error(&del(theirs, None).await, 401, "unauthorized");
    assert_error(&gw.get("/auth/sessions", None).await, 401, "unauthorized");

    // A session may end itself.
    let own = s1["id"].as_str().unwrap().to_string();
    assert_eq!(del(own, Some(one_b.access.clone())).await.status, 204);
    assert_eq!(proxied(&gw, &one_b.access).await, 401);
}
