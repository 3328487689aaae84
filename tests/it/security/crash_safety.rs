//! Crash safety of the real binary (ASVS 4.0.3 V11.1.x business-logic
//! integrity, CWE-662 improper synchronization across a crash; durability
//! as README "Durability" promises it). The child is
//! `target/release/portcullis serve` on a temp data dir and ephemeral
//! ports; `Child::kill` sends SIGKILL.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;

use super::*;
use crate::common::bin::Served;

struct Proc {
    /// The running child, killed (by its own handle) when dropped.
    child: Option<Served>,
    config: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
    admin: SocketAddr,
    /// What a tmpfs data dir starts with (see [`Proc::spawn_in`]).
    seed: Option<PathBuf>,
}

impl Proc {
    fn new(dir: &Path, smtp_port: u16, extra: &str) -> Proc {
        Self::with_upstream(dir, smtp_port, extra, "http://127.0.0.1:9")
    }

    fn with_upstream(dir: &Path, smtp_port: u16, extra: &str, upstream: &str) -> Proc {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = dir.join("gateway.toml");
        let toml = format!(
            r#"
[server]
listen = "{addr}"
tls_listen = ""
admin_listen = "{admin}"
data_dir = "{d}/data"
auth_nice = 0
grace_period_secs = 1

[mail]
transport = "smtp"
smtp_port = {smtp_port}
link_base_url = "https://gateway.test"
retry_base_secs = 1

[throttle]
auth_per_minute = 0
max_failed_logins = 0

[log]
level = "warn"

{extra}

[[routes]]
prefix = "/"
upstream = "{upstream}"
auth = "required"
"#,
            d = dir.display()
        );
        std::fs::write(&config, toml).unwrap();
        Proc {
            child: None,
            config,
            log: dir.join("gateway.log"),
            addr,
            admin,
            seed: None,
        }
    }

    fn spawn(&mut self) -> Child {
        self.spawn_in(None)
    }

    /// Spawn, optionally inside a private mount namespace with a tmpfs of
    /// `size` mounted over `mount` (the data dir), so the disk can fill up.
    /// The tmpfs lives as long as the child; with `self.seed`, it starts as
    /// a copy of that directory (what an earlier child left).
    fn spawn_in(&mut self, tmpfs: Option<(&Path, &str)>) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match tmpfs {
            None => Command::new(env!("CARGO_BIN_EXE_portcullis")),
            Some((mount, size)) => {
                let mut c = Command::new("unshare");
                let seed = self.seed.clone().unwrap_or_default();
                c.args(["-m", "sh", "-c"])
                    .arg(format!(
                        "mount -t tmpfs -o size={size},mode=0700 tmpfs \"$0\" && \
                         {{ [ -z \"$1\" ] || cp -a \"$1\"/. \"$0\"/; }} && shift && exec \"$@\""
                    ))
                    .arg(mount)
                    .arg(seed)
                    .arg(env!("CARGO_BIN_EXE_portcullis"));
                c
            }
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env_remove("PORTCULLIS_CONFIG")
            .env_remove("PORTCULLIS_JWT_SECRET")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Start and wait until the admin listener answers `/readyz` (the
    /// store is open and readable); panics with the log if it exits.
    async fn start(&mut self) {
        self.start_in(None).await
    }

    async fn start_in(&mut self, tmpfs: Option<(&Path, &str)>) {
        let mut child = Served::adopt(self.spawn_in(tmpfs), self.log.clone(), self.admin);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.child.try_wait().unwrap() {
                panic!(
                    "the gateway exited ({status}) at start:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if let Ok(r) = http::request(self.admin, "GET", "/readyz", &[], None).await {
                if r.status == 200 {
                    // The public listener comes up with the same server.
                    if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                        break;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.crash();
        }
    }
}

/// A JSON POST that may fail (the gateway may be killed under it).
async fn try_post(addr: SocketAddr, path: &str, body: serde_json::Value) -> Option<Response> {
    let raw = body.to_string();
    http::request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        Some(raw.as_bytes()),
    )
    .await
    .ok()
}

/// What the clients were told, i.e. what must survive any crash.
#[derive(Default)]
struct Model {
    /// email -> acknowledged password, and a reset in flight (unknown).
    users: HashMap<String, (String, Option<String>)>,
    /// Refresh tokens that must still work: (email, token, session chain).
    live: Vec<(String, String, usize)>,
    /// Refresh tokens that must never work again (logged out, used, or
    /// revoked by a password reset), with their chain: presenting a used
    /// one ends its whole session, so the chain's live token goes too.
    dead: Vec<(String, usize)>,
    n: usize,
}

const PW: &str = "correct horse battery staple";

/// One client: a random acknowledged operation, recorded in the model only
/// when its 2xx arrived.
async fn client_op(
    addr: SocketAddr,
    model: Arc<Mutex<Model>>,
    smtp: Arc<smtp::SmtpServer>,
) -> Option<()> {
    let pick: u8 = rand::thread_rng().gen_range(0..10);
    let (some_user, some_live) = {
        let mut m = model.lock().unwrap();
        m.n += 1;
        let users: Vec<String> = m.users.keys().cloned().collect();
        let u = (!users.is_empty())
            .then(|| users[rand::thread_rng().gen_range(0..users.len())].clone());
        let l = (!m.live.is_empty()).then(|| {
            let i = rand::thread_rng().gen_range(0..m.live.len());
            m.live.swap_remove(i) // in flight: its outcome may become unknown
        });
        (u, l)
    };
    match (pick, some_user, some_live) {
        (0..=2, _, _) | (_, None, _) => {
            let email = format!("c{}@example.com", uuid::Uuid::new_v4().simple());
            let r = try_post(
                addr,
                "/auth/register",
                json!({"email": email, "password": PW, "password_confirm": PW}),
            )
            .await?;
            assert_eq!(r.status, 201, "{r:?}");
            model
                .lock()
                .unwrap()
                .users
                .insert(email, (PW.to_string(), None));
        }
        (3..=4, Some(email), live) => {
            if let Some(l) = live {
                model.lock().unwrap().live.push(l);
            }
            let pw = model.lock().unwrap().users[&email].0.clone();
            let r = try_post(addr, "/auth/login", json!({"email": email, "password": pw})).await?;
            if r.status == 200 {
                let t = r.json()["refresh_token"].as_str().unwrap().to_string();
                let mut m = model.lock().unwrap();
                let chain = m.n;
                m.live.push((email, t, chain));
            }
        }
        (5..=6, _, Some((email, token, chain))) => {
            let r = try_post(addr, "/auth/refresh", json!({"refresh_token": token})).await?;
            if r.status == 200 {
                let t = r.json()["refresh_token"].as_str().unwrap().to_string();
                let mut m = model.lock().unwrap();
                m.dead.push((token, chain));
                m.live.push((email, t, chain));
            }
        }
        (7, _, Some((_, token, chain))) => {
            let r = try_post(addr, "/auth/logout", json!({"refresh_token": token})).await?;
            assert_eq!(r.status, 204, "{r:?}");
            model.lock().unwrap().dead.push((token, chain));
        }
        (_, Some(email), live) => {
            if let Some(l) = live {
                model.lock().unwrap().live.push(l);
            }
            // Password reset: request, read the token from the mail, confirm.
            if model.lock().unwrap().users[&email].1.is_some() {
                return Some(());
            }
            let before = smtp.messages().len();
            let r = try_post(addr, "/auth/password/reset", json!({"email": email})).await?;
            // The per-address mail budget (3 per 15 min) is spent when this
            // address drew resets before whose mail came too late for the
            // 2 s wait below (a loaded machine, a kill before delivery):
            // 429 sends nothing and changes nothing, so there is nothing
            // to record (issue 27's flake hunt: a second suite at once).
            if r.status == 429 && r.header("retry-after").is_some() {
                return Some(());
            }
            assert_eq!(r.status, 202, "{r:?}");
            let deadline = Instant::now() + Duration::from_secs(2);
            let token = loop {
                let found = smtp.messages()[before.min(smtp.messages().len())..]
                    .iter()
                    .rev()
                    .find(|m| m.to.iter().any(|t| t == &email))
                    .and_then(|m| m.token_from_link("/auth/password/reset"));
                if let Some(t) = found {
                    break t;
                }
                if Instant::now() > deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let new_pw = format!("new {} {}", uuid::Uuid::new_v4().simple(), PW);
            model.lock().unwrap().users.get_mut(&email).unwrap().1 = Some(new_pw.clone());
            let r = try_post(
                addr,
                "/auth/password/reset/confirm",
                json!({"token": token, "new_password": new_pw, "new_password_confirm": new_pw}),
            )
            .await?;
            let mut m = model.lock().unwrap();
            if r.status == 204 {
                settle_reset(&mut m, &email, true);
            } else {
                // A token already used (a resent mail) or expired: nothing changed.
                m.users.get_mut(&email).unwrap().1 = None;
            }
        }
    }
    Some(())
}

/// A reset of `email` is known to have happened (or not).
fn settle_reset(m: &mut Model, email: &str, happened: bool) {
    let u = m.users.get_mut(email).unwrap();
    let pending = u.1.take();
    if happened {
        u.0 = pending.expect("a reset in flight");
        let (theirs, rest): (Vec<_>, Vec<_>) = m.live.drain(..).partition(|(e, ..)| e == email);
        m.live = rest;
        m.dead.extend(theirs.into_iter().map(|(_, t, c)| (t, c)));
    }
}

/// After a restart: every acknowledged write is there, nothing half-done.
async fn check(addr: SocketAddr, model: &Arc<Mutex<Model>>, cycle: usize) {
    let (users, dead) = {
        let mut m = model.lock().unwrap();
        let mut users: Vec<(String, (String, Option<String>))> = m
            .users
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Logins cost an argon2 hash each: check pending resets always, and
        // a few others per cycle (every user is checked over the run).
        users.sort_by_key(|(e, (_, p))| (p.is_none(), e.clone()));
        let start = cycle % users.len().max(1);
        let mut pick: Vec<_> = users
            .iter()
            .filter(|(_, (_, p))| p.is_some())
            .cloned()
            .collect();
        pick.extend(
            users
                .iter()
                .cycle()
                .skip(start)
                .take(users.len().min(3))
                .cloned(),
        );
        (pick, std::mem::take(&mut m.dead))
    };
    for (email, (pw, pending)) in users {
        let r = try_post(addr, "/auth/login", json!({"email": email, "password": pw}))
            .await
            .unwrap();
        match (r.status, pending) {
            (200, Some(_)) => settle_reset(&mut model.lock().unwrap(), &email, false),
            (200, None) => {}
            (401, Some(new_pw)) => {
                let r2 = try_post(
                    addr,
                    "/auth/login",
                    json!({"email": email, "password": new_pw}),
                )
                .await
                .unwrap();
                assert_eq!(
                    r2.status, 200,
                    "cycle {cycle}: {email}: neither password works: {r2:?}"
                );
                settle_reset(&mut model.lock().unwrap(), &email, true);
            }
            (s, _) => panic!("cycle {cycle}: acknowledged user {email} cannot log in: {s} {r:?}"),
        }
    }
    // A few live sessions still refresh (and rotate).
    let live: Vec<(String, String, usize)> = {
        let mut m = model.lock().unwrap();
        let n = m.live.len().min(3);
        m.live.drain(..n).collect()
    };
    for (email, t, chain) in live {
        let r = try_post(addr, "/auth/refresh", json!({"refresh_token": t}))
            .await
            .unwrap();
        assert_eq!(
            r.status, 200,
            "cycle {cycle}: acknowledged session of {email} lost: {r:?}"
        );
        let new = r.json()["refresh_token"].as_str().unwrap().to_string();
        let mut m = model.lock().unwrap();
        m.dead.push((t, chain));
        m.live.push((email, new, chain));
    }
    let dead_after_resets = std::mem::take(&mut model.lock().unwrap().dead);
    for (t, chain) in dead.iter().chain(dead_after_resets.iter()) {
        let r = try_post(addr, "/auth/refresh", json!({"refresh_token": t}))
            .await
            .unwrap();
        assert_error(&r, 401, "invalid_token");
        // Reuse detection has now ended that session.
        model.lock().unwrap().live.retain(|(_, _, c)| c != chain);
    }
}

/// Crash consistency (CWE-662; durability of acknowledged writes): register,
/// login, refresh, logout and password reset run concurrently while the
/// gateway is SIGKILLed at random moments, 50 times, and restarted on the
/// same data dir. After every restart the database opens, every
/// acknowledged user logs in (with the acknowledged password, or, for a
/// reset in flight, with exactly one of the two, and then the old sessions
/// are gone), every logged-out, rotated or reset-revoked refresh token is
/// refused (401 `invalid_token`), and acknowledged sessions still refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loop_loses_no_acknowledged_write() {
    const KILLS: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let smtp = Arc::new(smtp::start().await);
    let mut gw = Proc::new(dir.path(), smtp.addr.port(), "");
    let model = Arc::new(Mutex::new(Model::default()));
    let started = Instant::now();
    for cycle in 0..KILLS {
        gw.start().await;
        check(gw.addr, &model, cycle).await;
        // Load, then SIGKILL at a random moment inside it.
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (model, smtp, addr) = (model.clone(), smtp.clone(), gw.addr);
            tasks.spawn(async move {
                for _ in 0..6 {
                    if client_op(addr, model.clone(), smtp.clone()).await.is_none() {
                        break;
                    }
                }
            });
        }
        let wait = rand::thread_rng().gen_range(20..400);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        gw.kill();
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    }
    gw.start().await;
    check(gw.addr, &model, KILLS).await;
    let m = model.lock().unwrap();
    eprintln!(
        "crash loop: {KILLS} SIGKILLs in {:?}; {} operations, {} users acknowledged",
        started.elapsed(),
        m.n,
        m.users.len()
    );
}

/// Start the child and expect it to refuse: exit code not 0 within 20 s,
/// nothing listening, and the log saying why. Returns the log.
async fn assert_refuses_to_start(gw: &mut Proc, what: &str) -> String {
    let _ = std::fs::write(&gw.log, "");
    let mut child = Served::adopt(gw.spawn(), gw.log.clone(), gw.admin);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.child.try_wait().unwrap() {
            break s;
        }
        if http::request(gw.addr, "GET", "/auth/me", &[], None)
            .await
            .is_ok()
        {
            child.crash();
            panic!(
                "{what}: the gateway serves requests:\n{}",
                std::fs::read_to_string(&gw.log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            child.crash();
            panic!("{what}: the gateway neither served nor exited");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let log = std::fs::read_to_string(&gw.log).unwrap_or_default();
    assert!(!status.success(), "{what}: exit {status}\n{log}");
    eprintln!("{what}: exit {status}: {}", log.trim());
    log
}

/// A corrupt or unreadable database at start (CWE-636 not failing
/// securely; ASVS V7.4.1): garbage written over sled's files, a database
/// whose files were removed or truncated under an existing data dir, and a
/// data dir that cannot be created. The gateway refuses to start with a
/// clear message and a non-zero exit code; it never runs with an empty
/// revocation list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_unreadable_database_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = smtp::start().await;
    let mut gw = Proc::new(dir.path(), smtp.addr.port(), "");
    gw.start().await;
    // Some state, including a revocation.
    let reg = try_post(
        gw.addr,
        "/auth/register",
        json!({"email": "c@example.com", "password": PW, "password_confirm": PW}),
    )
    .await
    .unwrap();
    assert_eq!(reg.status, 201);
    let login = try_post(
        gw.addr,
        "/auth/login",
        json!({"email": "c@example.com", "password": PW}),
    )
    .await
    .unwrap();
    let rt = login.json()["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(
        try_post(gw.addr, "/auth/logout", json!({"refresh_token": rt}))
            .await
            .unwrap()
            .status,
        204
    );
    gw.kill();
    let db = dir.path().join("data/db");
    assert!(db.is_dir(), "sled dir at {}", db.display());
    let pristine = dir.path().join("pristine");
    copy_dir(&db, &pristine);

    // 1. Every sled file overwritten with garbage of the same length.
    for f in files(&db) {
        let len = std::fs::metadata(&f).unwrap().len() as usize;
        let garbage: Vec<u8> = (0..len.max(64)).map(|_| rand::random::<u8>()).collect();
        std::fs::write(&f, garbage).unwrap();
    }
    let log = assert_refuses_to_start(&mut gw, "garbage in the sled files").await;
    assert!(
        log.contains("database"),
        "the message names the database: {log}"
    );

    // 2. The database files deleted (the data dir and its keys remain): an
    //    empty database would forget every revocation.
    std::fs::remove_dir_all(&db).unwrap();
    let log = assert_refuses_to_start(&mut gw, "database files missing").await;
    assert!(log.contains("database"), "{log}");

    // 3. The log file truncated to its header.
    std::fs::remove_dir_all(&db).ok();
    copy_dir(&pristine, &db);
    let log_file = db.join("db");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&log_file)
        .unwrap();
    f.set_len(0).unwrap();
    assert_refuses_to_start(&mut gw, "sled log truncated").await;

    // Control: the pristine copy starts and still knows the revocation.
    std::fs::remove_dir_all(&db).unwrap();
    copy_dir(&pristine, &db);
    gw.start().await;
    let r = try_post(gw.addr, "/auth/refresh", json!({"refresh_token": rt}))
        .await
        .unwrap();
    assert_error(&r, 401, "invalid_token");
    let r = try_post(
        gw.addr,
        "/auth/login",
        json!({"email": "c@example.com", "password": PW}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    gw.kill();

    // 4. The data dir is not a directory.
    std::fs::remove_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data"), b"not a dir").unwrap();
    let log = assert_refuses_to_start(&mut gw, "data dir is a file").await;
    assert!(log.contains("data"), "{log}");
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let t = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &t);
        } else {
            std::fs::copy(&p, &t).unwrap();
        }
    }
}

/// Disk full (CWE-755 improper handling of exceptional conditions; ASVS
/// V7.4.1, V11.1.7): the real binary runs with its data dir on a 16 MB
/// tmpfs in a private mount namespace (`unshare -m`; skipped, saying so,
/// where that is not permitted). With the disk filled, every write answers
/// 503 `service_unavailable` with `Retry-After` (nothing acknowledged that
/// was not written), `/readyz` answers 503 `not_ready` saying that writes
/// are failing and `portcullis_store_writable` is 0, token checks never
/// fail open (a valid token still passes, a revoked one is still refused).
/// Once space returns, the same process recovers by itself (it reopens
/// the database from disk): `/readyz` is 200 again, writes succeed, and
/// every write acknowledged before, during and after the full disk is
/// there; a restart then finds the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_fails_closed_and_recovers_without_restart() {
    let probe = Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("disk full: SKIPPED: cannot mount a tmpfs in a private mount namespace here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let smtp = smtp::start().await;
    let up = upstream::start().await;
    let mut gw = Proc::with_upstream(dir.path(), smtp.addr.port(), "", &up.url());
    gw.start_in(Some((&data, "16m"))).await;
    let pid = gw.child.as_ref().unwrap().child.id();
    // The child's view of its data dir (its mount namespace).
    let inside = PathBuf::from(format!("/proc/{pid}/root")).join(data.strip_prefix("/").unwrap());
    assert!(inside.join("db").exists(), "the database is on the tmpfs");

    let reg = |email: &str| json!({"email": email, "password": PW, "password_confirm": PW});
    // Every address whose registration was acknowledged.
    let mut acknowledged: Vec<String> = Vec::new();
    assert_eq!(
        try_post(gw.addr, "/auth/register", reg("a@example.com"))
            .await
            .unwrap()
            .status,
        201
    );
    acknowledged.push("a@example.com".into());
    let login = try_post(
        gw.addr,
        "/auth/login",
        json!({"email": "a@example.com", "password": PW}),
    )
    .await
    .unwrap();
    assert_eq!(login.status, 200);
    let access = login.json()["access_token"].as_str().unwrap().to_string();
    let refresh = login.json()["refresh_token"].as_str().unwrap().to_string();
    let login2 = try_post(
        gw.addr,
        "/auth/login",
        json!({"email": "a@example.com", "password": PW}),
    )
    .await
    .unwrap();
    let revoked_access = login2.json()["access_token"].as_str().unwrap().to_string();
    let r = http::request(
        gw.addr,
        "POST",
        "/auth/logout",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {revoked_access}")),
        ],
        Some(
            json!({"refresh_token": login2.json()["refresh_token"]})
                .to_string()
                .as_bytes(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204);

    // Fill the disk.
    let filler = inside.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let mut unavailable = 0;
    for i in 0..20 {
        let email = format!("full{i}@example.com");
        let r = try_post(gw.addr, "/auth/register", reg(&email))
            .await
            .unwrap();
        if r.status == 503 {
            assert_error(&r, 503, "service_unavailable");
            assert!(r.header("retry-after").is_some(), "{r:?}");
            unavailable += 1;
        } else {
            // sled may still have room in a preallocated segment.
            assert_eq!(r.status, 201, "{r:?}");
            acknowledged.push(email);
        }
    }
    assert!(unavailable > 0, "no write failed on a full disk");
    // Token checks do not fail open, either way.
    let r = http::get(gw.addr, "/x", Some(&access)).await;
    assert_eq!(r.status, 200, "a valid token on a full disk: {r:?}");
    let r = http::get(gw.addr, "/x", Some(&revoked_access)).await;
    assert_error(&r, 401, "unauthorized");
    let r = try_post(gw.addr, "/auth/logout", json!({"refresh_token": refresh}))
        .await
        .unwrap();
    assert_error(&r, 503, "service_unavailable");
    // A supervisor sees it: /readyz says why, the gauge is 0.
    let ready = http::request(gw.admin, "GET", "/readyz", &[], None)
        .await
        .unwrap();
    assert_error(&ready, 503, "not_ready");
    let why = ready.json()["message"].as_str().unwrap_or("").to_string();
    eprintln!("disk full: /readyz 503: {why}");
    assert!(why.contains("writes are failing"), "{why}");
    let metrics = http::request(gw.admin, "GET", "/metrics", &[], None)
        .await
        .unwrap()
        .text();
    assert!(
        metrics.contains("portcullis_store_writable 0"),
        "store_writable while the disk is full"
    );

    // Space returns: the same process recovers by itself.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    loop {
        let r = http::request(gw.admin, "GET", "/readyz", &[], None)
            .await
            .unwrap();
        if r.status == 200 {
            break;
        }
        assert!(
            freed.elapsed() < Duration::from_secs(30),
            "not ready 30 s after space returned: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered_in = freed.elapsed();
    eprintln!("disk full: ready again {recovered_in:?} after space returned, without a restart");
    let r = try_post(gw.addr, "/auth/register", reg("back@example.com"))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "a write after recovery: {r:?}");
    acknowledged.push("back@example.com".into());
    let metrics = http::request(gw.admin, "GET", "/metrics", &[], None)
        .await
        .unwrap()
        .text();
    assert!(
        metrics.contains("portcullis_store_writable 1"),
        "writable again"
    );
    assert!(
        metrics.contains("portcullis_store_recoveries_total 1"),
        "one recovery counted"
    );
    // Everything acknowledged is there, in this very process, and every
    // revoked token stays refused.
    let check = |addr| {
        let acknowledged = acknowledged.clone();
        let revoked_access = revoked_access.clone();
        async move {
            for email in &acknowledged {
                let r = try_post(addr, "/auth/login", json!({"email": email, "password": PW}))
                    .await
                    .unwrap();
                assert_eq!(r.status, 200, "acknowledged {email}: {r:?}");
            }
            let r = http::get(addr, "/x", Some(&revoked_access)).await;
            assert_error(&r, 401, "unauthorized");
        }
    };
    check(gw.addr).await;
    // The logout answered 503: its outcome is unknown to the client (here
    // it was refused before it ran), and it is whole either way: the
    // session's refresh token and its access token are both still good,
    // or both refused.
    let r = try_post(gw.addr, "/auth/refresh", json!({"refresh_token": refresh}))
        .await
        .unwrap();
    let access_now = http::get(gw.addr, "/x", Some(&access)).await;
    eprintln!(
        "disk full: the 503 logout, after recovery: refresh {}, access {}",
        r.status, access_now.status
    );
    match r.status {
        200 => assert_eq!(access_now.status, 200, "{access_now:?}"),
        _ => {
            assert_error(&r, 401, "invalid_token");
            assert_error(&access_now, 401, "unauthorized");
        }
    }
    // And a restart on the same data dir finds the same. The tmpfs ends
    // with its process, so its files are copied out first, with nothing
    // in flight: what is on the disk now, as a crash would leave it.
    let saved = dir.path().join("saved");
    std::fs::create_dir_all(&saved).unwrap();
    copy_dir(&inside, &saved);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&saved, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    gw.seed = Some(saved);
    gw.kill();
    gw.start_in(Some((&data, "16m"))).await;
    check(gw.addr).await;
    gw.kill();
}
