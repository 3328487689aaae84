//! The admin CLI, with the gateway running and stopped.

use super::*;

struct CliOut {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl CliOut {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("CLI output is not JSON ({e}): {}", self.stdout))
    }
}

/// Run the real `portcullis` binary; `stdin` is written to its standard
/// input. Bounded by [`bin::CLI_LIMIT`].
async fn cli(config: &Path, args: &[&str], stdin: Option<&str>) -> CliOut {
    let mut cmd = bin::command(args);
    cmd.arg("--config").arg(config);
    let out = bin::run_async(cmd, stdin.map(str::to_string), bin::CLI_LIMIT).await;
    CliOut {
        ok: out.ok(),
        stdout: out.stdout,
        stderr: out.stderr,
    }
}

fn write_config(gw: &TestGateway) -> PathBuf {
    let path = gw.dir.path().join("gw.toml");
    std::fs::write(&path, &gw.toml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cli_works_with_the_gateway_running_and_stopped() {
    let mut gw = gateway("").await;
    let cfg = write_config(&gw);
    const OPS_PW: &str = "operator secret passphrase";

    // (a) The gateway holds the database: the CLI goes through the admin listener.
    let out = cli(
        &cfg,
        &[
            "user",
            "add",
            "--email",
            "Ops@Example.com",
            "--role",
            "admin",
            "--password-stdin",
        ],
        Some(&format!("{OPS_PW}\n")),
    )
    .await;
    assert!(out.ok, "user add failed: {}", out.stderr);
    let u = out.json();
    assert_eq!(u["email"], "Ops@example.com");
    assert_eq!(u["roles"], json!(["admin"]));
    assert_eq!(u["email_verified"], true);
    assert!(!out.stdout.contains(OPS_PW) && !out.stderr.contains(OPS_PW));

    let ops = gw.signin("Ops@example.com", OPS_PW).await;
    assert_eq!(ops.user["roles"], json!(["admin"]));
    assert_eq!(gw.get("/admin", Some(&ops.access)).await.status, 200);
    assert_eq!(last_echoed(&gw, "x-user-roles").as_deref(), Some("admin"));

    // Refusals: an existing email, a weak password, a bad role.
    let dup = cli(
        &cfg,
        &[
            "user",
            "add",
            "--email",
            "Ops@EXAMPLE.com",
            "--password-stdin",
        ],
        Some("another fine passphrase\n"),
    )
    .await;
    assert!(!dup.ok, "duplicate email accepted: {}", dup.stdout);
    let weak = cli(
        &cfg,
        &[
            "user",
            "add",
            "--email",
            "weak@example.com",
            "--password-stdin",
        ],
        Some("password1\n"),
    )
    .await;
    assert!(!weak.ok, "common password accepted: {}", weak.stdout);
    assert!(!weak.stderr.contains("password1"), "{}", weak.stderr);
    let badrole = cli(
        &cfg,
        &[
            "user",
            "add",
            "--email",
            "weak@example.com",
            "--role",
            "a,b",
            "--password-stdin",
        ],
        Some(&format!("{OPS_PW}\n")),
    )
    .await;
    assert!(!badrole.ok, "a role with a comma was accepted");
    assert_error(
        &gw.login("weak@example.com", "password1").await,
        401,
        "invalid_credentials",
    );

    // role add / remove and disable on a user who registered normally.
    let bob = gw.signup("bob@example.com").await;
    assert_eq!(gw.get("/ops", Some(&bob.access)).await.status, 403);
    let out = cli(
        &cfg,
        &[
            "user",
            "role",
            "add",
            "--email",
            "bob@example.com",
            "--role",
            "ops",
        ],
        None,
    )
    .await;
    assert!(out.ok, "role add: {}", out.stderr);
    assert_eq!(out.json()["roles"], json!(["ops"]));
    let bob2 = gw.signin("bob@example.com", PASSWORD).await;
    assert_eq!(gw.get("/ops", Some(&bob2.access)).await.status, 200);
    assert_eq!(gw.get("/admin", Some(&bob2.access)).await.status, 403);

    let out = cli(
        &cfg,
        &[
            "user",
            "role",
            "remove",
            "--email",
            "Ops@example.com",
            "--role",
            "admin",
        ],
        None,
    )
    .await;
    assert!(out.ok, "role remove: {}", out.stderr);
    assert_eq!(out.json()["roles"], json!([]));
    // The old token carried the role: it stops working at once.
    assert_eq!(gw.get("/admin", Some(&ops.access)).await.status, 401);
    let ops2 = gw.signin("Ops@example.com", OPS_PW).await;
    assert_eq!(gw.get("/admin", Some(&ops2.access)).await.status, 403);

    let out = cli(
        &cfg,
        &["user", "disable", "--email", "bob@example.com"],
        None,
    )
    .await;
    assert!(out.ok, "disable: {}", out.stderr);
    assert_eq!(proxied(&gw, &bob2.access).await, 401);
    assert_error(
        &gw.login("bob@example.com", PASSWORD).await,
        401,
        "invalid_credentials",
    );
    let out = cli(
        &cfg,
        &["user", "disable", "--email", "nobody@example.com"],
        None,
    )
    .await;
    assert!(!out.ok, "disabling an unknown user succeeded");

    let out = cli(&cfg, &["user", "list"], None).await;
    assert!(out.ok, "list: {}", out.stderr);
    let list = out.json();
    let emails: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails.len(), 2, "{list}");
    assert!(emails.contains(&"Ops@example.com") && emails.contains(&"bob@example.com"));
    assert!(!out.stdout.contains("argon2"), "no hashes in the listing");

    // (b) The gateway is stopped: the CLI works on sled directly.
    gw.stop();
    let out = cli(
        &cfg,
        &[
            "user",
            "add",
            "--email",
            "offline@example.com",
            "--role",
            "admin",
            "--role",
            "ops",
            "--password-stdin",
        ],
        Some(&format!("{OPS_PW}\n")),
    )
    .await;
    assert!(out.ok, "offline user add: {}", out.stderr);
    assert_eq!(out.json()["roles"], json!(["admin", "ops"]));
    let out = cli(
        &cfg,
        &[
            "user",
            "role",
            "add",
            "--email",
            "Ops@example.com",
            "--role",
            "admin",
        ],
        None,
    )
    .await;
    assert!(out.ok, "offline role add: {}", out.stderr);
    let out = cli(
        &cfg,
        &[
            "user",
            "role",
            "remove",
            "--email",
            "offline@example.com",
            "--role",
            "ops",
        ],
        None,
    )
    .await;
    assert!(out.ok, "offline role remove: {}", out.stderr);
    let out = cli(&cfg, &["user", "list"], None).await;
    assert!(out.ok, "offline list: {}", out.stderr);
    let list = out.json();
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    let bob_row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "bob@example.com")
        .unwrap();
    assert_eq!(bob_row["disabled"], true);
    let dis = cli(
        &cfg,
        &["user", "disable", "--email", "Ops@example.com"],
        None,
    )
    .await;
    assert!(dis.ok, "offline disable: {}", dis.stderr);
    let dup = cli(
        &cfg,
        &[
            "user",
            "add",
            "--email",
            "offline@example.com",
            "--password-stdin",
        ],
        Some(&format!("{OPS_PW}\n")),
    )
    .await;
    assert!(!dup.ok, "offline duplicate accepted");

    // Back up: the changes made offline are in effect. The offline CLI
    // used the real clock for its revocation cutoffs; bring the test clock
    // past it, as real time would be.
    gw.clock.set(portcullis::clock::SystemClock.now() + 2);
    gw.restart();
    let off = gw.signin("offline@example.com", OPS_PW).await;
    assert_eq!(off.user["roles"], json!(["admin"]));
    assert_eq!(off.user["email_verified"], true);
    assert_eq!(gw.get("/admin", Some(&off.access)).await.status, 200);
    assert_eq!(gw.get("/ops", Some(&off.access)).await.status, 200);
    assert_error(
        &gw.login("Ops@example.com", OPS_PW).await,
        401,
        "invalid_credentials",
    );
    // The token issued before the offline disable is dead too.
    assert_eq!(proxied(&gw, &ops2.access).await, 401);
}

/// Issue 20: every `user` command loaded every user and every revocation
/// before it ran. Now a command loads what it needs: `user disable`,
/// `user role add` and `user keys list` read one user by email, and `user
/// list` reads the users page by page. Shown on a stopped gateway's data
/// dir that also holds an unreadable revocation record and an unreadable
/// record of another user, which a full load trips over (the commands
/// failed with "loading revocations"); the changes made are in effect
/// when the gateway is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_commands_load_only_the_user_they_name() {
    let mut gw = gateway("").await;
    let cfg = write_config(&gw);
    let bob = gw.signup("bob@example.com").await;
    // More users than one page of `user list` holds (written as records:
    // bob's password hash, no hashing).
    const USERS: usize = 1234;
    let store = gw.handle().auth.store.clone();
    let template = store
        .find_user_by_email("bob@example.com")
        .await
        .unwrap()
        .unwrap();
    let users: Vec<portcullis::store::Record> = (0..USERS)
        .map(|i| {
            let mut u = template.clone();
            u.id = uuid::Uuid::new_v4();
            u.email = format!("u{i}@example.com");
            portcullis::store::Record::User(u)
        })
        .collect();
    store.import(users).await.unwrap();
    drop(store);
    gw.signin("u7@example.com", PASSWORD).await;
    gw.stop();
    let out = cli(&cfg, &["user", "list"], None).await;
    assert!(out.ok, "list: {}", out.stderr);
    let list = out.json();
    let mut emails: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    emails.sort();
    let before = emails.len();
    emails.dedup();
    assert_eq!((before, emails.len()), (USERS + 1, USERS + 1), "each once");
    assert!(emails.contains(&"bob@example.com"));
    {
        // A revocation record and another user's record that do not decode.
        let db = sled::open(gw.data_dir().join("db")).unwrap();
        db.open_tree("revoked")
            .unwrap()
            .insert(b"garbage", b"x".to_vec())
            .unwrap();
        db.open_tree("users")
            .unwrap()
            .insert(uuid::Uuid::nil().as_bytes(), b"{not json".to_vec())
            .unwrap();
        db.flush().unwrap();
    }
    let out = cli(
        &cfg,
        &[
            "user",
            "role",
            "add",
            "--email",
            "bob@example.com",
            "--role",
            "ops",
        ],
        None,
    )
    .await;
    assert!(out.ok, "role add: {}", out.stderr);
    assert_eq!(out.json()["roles"], json!(["ops"]));
    let out = cli(
        &cfg,
        &["user", "keys", "list", "--email", "bob@example.com"],
        None,
    )
    .await;
    assert!(out.ok, "keys list: {}", out.stderr);
    assert_eq!(out.json()["api_keys"], json!([]));
    let out = cli(
        &cfg,
        &["user", "disable", "--email", "u7@example.com"],
        None,
    )
    .await;
    assert!(out.ok, "disable: {}", out.stderr);
    let out = cli(
        &cfg,
        &["user", "disable", "--email", "nobody@example.com"],
        None,
    )
    .await;
    assert!(!out.ok, "disabling an unknown user succeeded");
    // A full listing does meet the bad record, and says so.
    let out = cli(&cfg, &["user", "list"], None).await;
    assert!(!out.ok, "listing read an unreadable user: {}", out.stdout);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    {
        let db = sled::open(gw.data_dir().join("db")).unwrap();
        db.open_tree("revoked").unwrap().remove(b"garbage").unwrap();
        db.open_tree("users")
            .unwrap()
            .remove(uuid::Uuid::nil().as_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    gw.clock.set(portcullis::clock::SystemClock.now() + 2);
    gw.restart();
    let b = gw.signin("bob@example.com", PASSWORD).await;
    assert_eq!(b.user["roles"], json!(["ops"]));
    assert_eq!(gw.get("/ops", Some(&b.access)).await.status, 200);
    assert_eq!(gw.get("/ops", Some(&bob.access)).await.status, 403);
    assert_error(
        &gw.login("u7@example.com", PASSWORD).await,
        401,
        "invalid_credentials",
    );
}
