//! Registration: the answer, field validation, one account per email however
//! spelled or raced.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_returns_the_user() {
    let gw = gateway("").await;
    let r = gw
        .post(
            "/auth/register",
            json!({
                "email": "  Alice@Example.COM ",
                "password": PASSWORD,
                "password_confirm": PASSWORD,
                "username": "alice"
            }),
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    let v = r.json();
    assert_eq!(v.as_object().unwrap().len(), 1, "only {{user}}: {v}");
    let u = &v["user"];
    // Trimmed, domain lowercased, local part kept.
    assert_user_shape(u, "Alice@example.com");
    assert_eq!(u["username"], "alice");
    assert_eq!(u["email_verified"], false);
    assert_eq!(u["roles"], json!([]));
    assert_eq!(
        u["created_at"],
        portcullis::clock::rfc3339(gw.clock.now()),
        "created_at comes from the gateway's clock"
    );
    assert!(!r.text().contains("password"), "no hash in the response");

    // The account works, under any spelling of the domain.
    let s = gw.signin("Alice@EXAMPLE.com", PASSWORD).await;
    assert_eq!(s.user["id"], u["id"]);
    assert_user_shape(&s.user, "Alice@example.com");

    // Without a username it is null.
    let r = gw.register("bob@example.com", PASSWORD).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json()["user"]["username"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_validation_failures_name_their_fields() {
    let gw = gateway("").await;
    let reg = |body: Value| gw.post("/auth/register", body, None);
    let pw = |email: &str, p: &str| json!({ "email": email, "password": p, "password_confirm": p });

    // Missing fields.
    assert_fields(
        &reg(json!({})).await,
        &["email", "password", "password_confirm"],
    );
    assert_fields(
        &reg(json!({ "email": "a1@x.org", "password": PASSWORD })).await,
        &["password_confirm"],
    );
    assert_fields(
        &reg(json!({ "password": PASSWORD, "password_confirm": PASSWORD })).await,
        &["email"],
    );
    // null counts as missing.
    assert_fields(
        &reg(json!({ "email": null, "password": PASSWORD, "password_confirm": PASSWORD })).await,
        &["email"],
    );

    // Confirmation mismatch (even by case or trailing space: compared exactly).
    for other in [
        "Correct horse battery staple",
        "correct horse battery staple ",
    ] {
        assert_fields(
            &reg(json!({ "email": "a2@x.org", "password": PASSWORD, "password_confirm": other }))
                .await,
            &["password_confirm"],
        );
    }

    // Length in Unicode scalar values, not bytes.
    for short in ["abcdefg", "ééééééé", "🔒🔒🔒🔒🔒🔒🔒", ""] {
        let r = reg(pw("a3@x.org", short)).await;
        assert_fields(&r, &["password"]);
    }
    for long in ["x".repeat(129), "é".repeat(129), "🔒".repeat(129)] {
        assert_fields(&reg(pw("a4@x.org", &long)).await, &["password"]);
    }

    // Common passwords, in any case.
    for common in [
        "password1",
        "12345678",
        "iloveyou",
        "PASSWORD1",
        "Sunshine1",
    ] {
        assert_fields(&reg(pw("a5@x.org", common)).await, &["password"]);
    }

    // Containing the email's local part, in any case.
    for p in [
        "carolina",
        "my-carolina-pass",
        "xxCAROLINAxx",
        "Carolina2024!",
    ] {
        assert_fields(&reg(pw("carolina@x.org", p)).await, &["password"]);
    }

    // Bad emails.
    for bad in [
        "",
        "not-an-email",
        "@x.org",
        "a@",
        "a@b",
        "a b@x.org",
        "a@@x.org",
        "a@x.org\r\nBcc: y@z.org",
        "<a>@x.org",
    ] {
        assert_fields(&reg(pw(bad, PASSWORD)).await, &["email"]);
    }

    // Wrong types.
    assert_fields(
        &reg(pw("a6@x.org", PASSWORD).merge("email", json!(5))).await,
        &["email"],
    );
    assert_fields(
        &reg(pw("a6@x.org", PASSWORD).merge("password", json!(["x"]))).await,
        &["password"],
    );
    assert_fields(
        &reg(pw("a6@x.org", PASSWORD).merge("username", json!(5))).await,
        &["username"],
    );
    assert_fields(
        &reg(pw("a6@x.org", PASSWORD).merge("username", json!("u".repeat(65)))).await,
        &["username"],
    );

    // Several problems at once are all reported.
    let r = reg(json!({ "email": "nope", "password": "short", "password_confirm": "other" })).await;
    assert_fields(&r, &["email", "password", "password_confirm"]);

    // The boundaries are accepted: 8 and 128 scalar values, multi-byte included.
    for (email, ok) in [
        ("b1@x.org", "ééééééé€".to_string()),
        ("b2@x.org", "🔒🔒🔒🔒🔒🔒🔒🔒".to_string()),
        ("b3@x.org", "x".repeat(128)),
        ("b4@x.org", "é".repeat(128)),
        ("b5@x.org", "🔒".repeat(128)),
    ] {
        let r = reg(pw(email, &ok)).await;
        assert_eq!(
            r.status,
            201,
            "{email} with {} chars: {r:?}",
            ok.chars().count()
        );
        // And the password is compared exactly as sent.
        let s = gw.signin(email, &ok).await;
        assert!(!s.access.is_empty());
    }

    // No rejected attempt created an account.
    for email in ["a1@x.org", "a3@x.org", "a5@x.org", "carolina@x.org"] {
        let r = gw.register(email, PASSWORD).await;
        assert_eq!(r.status, 201, "{email}: {r:?}");
    }
}

trait Merge {
    fn merge(self, key: &str, v: Value) -> Value;
}

impl Merge for Value {
    fn merge(mut self, key: &str, v: Value) -> Value {
        self[key] = v;
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_existing_email_is_409_under_every_spelling() {
    let gw = gateway("").await;
    let r = gw.register("Dana@Example.org", PASSWORD).await;
    assert_eq!(r.status, 201, "{r:?}");
    for same in [
        "Dana@Example.org",
        "Dana@example.org",
        "Dana@EXAMPLE.ORG",
        "  Dana@example.org\t",
    ] {
        let r = gw.register(same, "another good passphrase").await;
        assert_error(&r, 409, "email_taken");
    }

    // NFC and NFD spellings of the same address are one account.
    let nfc = "Zo\u{eb}@example.org";
    let nfd = "Zoe\u{308}@EXAMPLE.org";
    let r = gw.register(nfc, PASSWORD).await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.json()["user"]["id"].clone();
    assert_error(&gw.register(nfd, PASSWORD).await, 409, "email_taken");
    // Logging in with the other spelling reaches the same account.
    let s = gw.signin(nfd, PASSWORD).await;
    assert_eq!(s.user["id"], id);
    assert_eq!(s.user["email"], "Zo\u{eb}@example.org");

    // The admin listing holds exactly one account per address.
    let r = admin_api(&gw, Some(&admin_token(&gw)), json!({ "op": "list" })).await;
    assert_eq!(r.status, 200, "{r:?}");
    let users = r.json();
    assert_eq!(users.as_array().unwrap().len(), 2, "{users}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_of_one_email_create_one_account() {
    // Twenty hash slots, so the twenty registrations hash side by side and
    // reach the store together (the default would feed them one by one).
    let gw = gateway("[passwords]\nmax_concurrent_hashes = 20\n").await;
    let stats_before = gw.handle().auth.store.stats();
    // 20 spellings of one address: NFC/NFD, domain case, surrounding space.
    let mut emails = Vec::new();
    for local in ["Zo\u{eb}", "Zoe\u{308}"] {
        for domain in [
            "race.example",
            "RACE.example",
            "Race.Example",
            "race.EXAMPLE",
            "RACE.EXAMPLE",
        ] {
            emails.push(format!("{local}@{domain}"));
            emails.push(format!(" {local}@{domain} "));
        }
    }
    assert_eq!(emails.len(), 20);
    let mut tasks = Vec::new();
    for email in emails {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let body =
                json!({ "email": email, "password": PASSWORD, "password_confirm": PASSWORD });
            http::post_json(addr, "/auth/register", &body, None).await
        }));
    }
    let mut created = 0;
    let mut taken = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            201 => created += 1,
            409 => {
                assert_error(&r, 409, "email_taken");
                taken += 1
            }
            _ => panic!("unexpected answer: {r:?}"),
        }
    }
    assert_eq!((created, taken), (1, 19));
    // The race window was open: the store had several of these creations
    // in flight at once (and committed some of them in one batch).
    let stats = gw.handle().auth.store.stats();
    assert!(stats.max_in_flight >= 2, "{stats_before:?} -> {stats:?}");

    // One account, and it works.
    let r = admin_api(&gw, Some(&admin_token(&gw)), json!({ "op": "list" })).await;
    let users = r.json();
    assert_eq!(users.as_array().unwrap().len(), 1, "{users}");
    gw.signin("Zo\u{eb}@race.example", PASSWORD).await;
}
