//! The account-write scenarios of `store_load` and `pg_load`: a keep-alive
//! client that reconnects, per-task recording, and the register / refresh
//! / logout loops with their set-ups.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{post_json, status_error, summarize, Conn, Resp, Stats, Summary};

pub const PASSWORD: &str = "Vx9-quartz-Lantern-47";

// ------------------------------------------------------------------ client

/// One keep-alive connection that reconnects when it has to.
pub struct Client {
    addr: SocketAddr,
    conn: Option<Conn>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None }
    }

    pub async fn send(&mut self, raw: &[u8]) -> Result<Resp, String> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => {
                let c = Conn::connect(self.addr)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                self.conn.insert(c)
            }
        };
        match conn.request(raw).await {
            Ok(r) => {
                if r.close {
                    self.conn = None;
                }
                Ok(r)
            }
            Err(e) => {
                self.conn = None;
                Err(format!("i/o: {e}"))
            }
        }
    }
}

pub fn json_field(r: &Resp, field: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    v[field].as_str().map(str::to_string)
}

pub fn register_request(email: &str) -> Vec<u8> {
    post_json(
        "/auth/register",
        &serde_json::json!({
            "email": email, "password": PASSWORD, "password_confirm": PASSWORD
        }),
    )
}

pub fn login_request(email: &str) -> Vec<u8> {
    post_json(
        "/auth/login",
        &serde_json::json!({ "email": email, "password": PASSWORD }),
    )
}

pub fn refresh_request(path: &str, token: &str) -> Vec<u8> {
    post_json(path, &serde_json::json!({ "refresh_token": token }))
}

pub fn user_email(i: usize) -> String {
    format!("u{i}@bench.test")
}

/// Log in `email`; the refresh and access tokens.
pub async fn login(c: &mut Client, email: &str) -> Result<(String, String), String> {
    let r = c.send(&login_request(email)).await?;
    if r.status != 200 {
        return Err(status_error(&r));
    }
    match (
        json_field(&r, "refresh_token"),
        json_field(&r, "access_token"),
    ) {
        (Some(rt), Some(at)) => Ok((rt, at)),
        _ => Err("login: no tokens in the response".into()),
    }
}

// --------------------------------------------------------------- recording

/// What the tasks of one write scenario saw.
pub struct Rec {
    pub st: Stats,
    pub start: Instant,
    pub deadline: Instant,
    /// Successes per second since `start` (inside the window).
    pub per_sec: Vec<u64>,
    /// When the last request of the task ended.
    pub last_done: Instant,
    /// Tasks that ran out of work (the logout pool) before the deadline.
    pub ran_out: usize,
}

impl Rec {
    pub fn new(start: Instant, deadline: Instant) -> Self {
        Self {
            st: Stats::default(),
            start,
            deadline,
            per_sec: Vec::new(),
            last_done: start,
            ran_out: 0,
        }
    }

    pub fn ok(&mut self, t0: Instant) {
        let done = Instant::now();
        self.st
            .lat_us
            .push(done.duration_since(t0).as_micros() as u64);
        if done <= self.deadline {
            self.st.ok_in_window += 1;
            let b = done.duration_since(self.start).as_secs() as usize;
            if self.per_sec.len() <= b {
                self.per_sec.resize(b + 1, 0);
            }
            self.per_sec[b] += 1;
        }
        self.last_done = done;
    }

    pub fn err(&mut self, what: String) {
        self.st.errors += 1;
        self.st.first_error.get_or_insert(what);
        self.last_done = Instant::now();
    }

    /// Record one response: a success when it has status `expect`.
    pub fn response(&mut self, t0: Instant, res: &Result<Resp, String>, expect: u16) -> bool {
        match res {
            Ok(r) if r.status == expect => {
                self.ok(t0);
                true
            }
            Ok(r) => {
                self.err(status_error(r));
                false
            }
            Err(e) => {
                self.err(e.clone());
                false
            }
        }
    }

    pub fn merge(&mut self, o: Rec) {
        self.st.merge(o.st);
        if self.per_sec.len() < o.per_sec.len() {
            self.per_sec.resize(o.per_sec.len(), 0);
        }
        for (a, b) in self.per_sec.iter_mut().zip(o.per_sec) {
            *a += b;
        }
        self.last_done = self.last_done.max(o.last_done);
        self.ran_out += o.ran_out;
    }
}

pub async fn join_all<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("bench task panicked"));
    }
    out
}

pub fn merged(recs: Vec<Rec>, start: Instant, deadline: Instant) -> Rec {
    let mut all = Rec::new(start, deadline);
    for r in recs {
        all.merge(r);
    }
    all
}

// --------------------------------------------------------------- scenarios

pub async fn register_task(
    addr: SocketAddr,
    task: usize,
    start: Instant,
    deadline: Instant,
) -> Rec {
    let mut rec = Rec::new(start, deadline);
    let mut c = Client::new(addr);
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let raw = register_request(&format!("r{task}-{n}@bench.test"));
        let t0 = Instant::now();
        let res = c.send(&raw).await;
        if !rec.response(t0, &res, 201) && res.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    rec
}

/// Loop `/auth/refresh` with the newest token of user `i`; after an error
/// the task logs in again (not timed) and goes on. Returns its last token.
pub async fn refresh_task(
    addr: SocketAddr,
    i: usize,
    mut token: Option<String>,
    start: Instant,
    deadline: Instant,
) -> (Rec, Option<String>) {
    let mut rec = Rec::new(start, deadline);
    let mut c = Client::new(addr);
    let email = user_email(i);
    while Instant::now() < deadline {
        let Some(t) = &token else {
            match login(&mut c, &email).await {
                Ok((rt, _)) => token = Some(rt),
                Err(e) => {
                    rec.err(format!("re-login: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            continue;
        };
        let raw = refresh_request("/auth/refresh", t);
        let t0 = Instant::now();
        let res = c.send(&raw).await;
        token = None;
        if rec.response(t0, &res, 200) {
            if let Ok(r) = &res {
                token = json_field(r, "refresh_token");
            }
            if token.is_none() {
                rec.err("refresh: no refresh_token in the 200 response".into());
            }
        }
    }
    (rec, token)
}

pub async fn logout_task(
    addr: SocketAddr,
    mut pool: Vec<String>,
    start: Instant,
    deadline: Instant,
) -> Rec {
    let mut rec = Rec::new(start, deadline);
    let mut c = Client::new(addr);
    while Instant::now() < deadline {
        let Some(t) = pool.pop() else {
            rec.ran_out = 1;
            break;
        };
        let raw = refresh_request("/auth/logout", &t);
        let t0 = Instant::now();
        let res = c.send(&raw).await;
        if !rec.response(t0, &res, 204) && res.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    rec
}

/// Register user `i` and log it in once; its refresh token.
pub async fn setup_user(addr: SocketAddr, i: usize) -> Result<String, String> {
    let mut c = Client::new(addr);
    let email = user_email(i);
    let r = c.send(&register_request(&email)).await?;
    if r.status != 201 {
        return Err(format!("register {email}: {}", status_error(&r)));
    }
    login(&mut c, &email).await.map(|(rt, _)| rt)
}

/// Log user `i` in up to `n` times, until `until`; the refresh tokens and
/// the first error.
pub async fn setup_pool(
    addr: SocketAddr,
    i: usize,
    n: usize,
    until: Instant,
) -> (Vec<String>, Option<String>) {
    let mut c = Client::new(addr);
    let email = user_email(i);
    let mut out = Vec::with_capacity(n);
    let mut first_error = None;
    let mut failures = 0;
    while out.len() < n && Instant::now() < until && failures < 100 {
        match login(&mut c, &email).await {
            Ok((rt, _)) => out.push(rt),
            Err(e) => {
                failures += 1;
                first_error.get_or_insert(e);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (out, first_error)
}

// ------------------------------------------------------------------ report

pub struct Row {
    pub name: &'static str,
    pub s: Summary,
    /// Seconds over which ops/s was computed.
    pub secs: f64,
    pub per_sec: Vec<u64>,
}

pub fn row(name: &'static str, rec: Rec, secs: f64) -> Row {
    let per_sec = rec.per_sec;
    Row {
        name,
        s: summarize(rec.st, Duration::from_secs_f64(secs)),
        secs,
        per_sec,
    }
}

pub fn command_output(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "n/a".into())
}
