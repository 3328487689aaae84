//! The PostgreSQL implementation of [`Store`], for several gateways on one
//! database.
//!
//! Records are stored as JSON next to the columns they are looked up by, so
//! the rules stay the pure functions of [`super::domain`]: every operation
//! is one transaction that locks the rows its decision depends on
//! (`SELECT … FOR UPDATE`, or `FOR SHARE` where it only needs them not to
//! change), applies the domain function, and writes the result. A commit is
//! the acknowledgement: nothing is answered `Ok` that was not committed.
//!
//! Locking order, everywhere: the user row, then its sessions, then the
//! rest; so two operations on one account serialize instead of deadlocking.
//!
//! Every revocation is written with the next value of `revocation_seq` and
//! a `NOTIFY portcullis_revocations` in the same transaction (delivered on
//! commit), so other instances can fetch `WHERE seq > last_seen`.

use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::{de::DeserializeOwned, Serialize};
use tokio_postgres::error::SqlState;
use tokio_postgres::{GenericClient, NoTls, Transaction};
use uuid::Uuid;

use super::domain;
use super::*;

/// The channel revocations are announced on.
pub const CHANNEL: &str = "portcullis_revocations";
/// Rows one sweep looks at per kind of record.
const SWEEP_SCAN: i64 = 20_000;

/// Forward-only, idempotent migrations, applied in order at start under an
/// advisory lock (so instances starting together do not race).
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    r#"
CREATE TABLE users (
    id uuid PRIMARY KEY,
    email_key text NOT NULL UNIQUE,
    created_at bigint NOT NULL,
    record jsonb NOT NULL
);
CREATE TABLE sessions (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    record jsonb NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id);
CREATE SEQUENCE revocation_seq;
CREATE TABLE revocations (
    kind "char" NOT NULL,
    id uuid NOT NULL,
    at bigint NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX revocations_by_seq ON revocations (seq);
CREATE TABLE one_time (
    hash text PRIMARY KEY,
    record jsonb NOT NULL
);
CREATE TABLE one_time_seq (
    user_id uuid NOT NULL,
    kind smallint NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (user_id, kind)
);
CREATE TABLE counters (
    key text PRIMARY KEY,
    record jsonb NOT NULL
);
CREATE TABLE outbox (
    id uuid PRIMARY KEY,
    created_at bigint NOT NULL,
    record jsonb NOT NULL
);
"#,
)];

/// Arbitrary, fixed: the advisory lock migrations run under.
const MIGRATION_LOCK: i64 = 0x706f_7274_6375_6c6c;
/// Revoking transactions take this (transaction-level) lock just before
/// they draw their sequence numbers, and hold it to commit: sequences are
/// then committed in order, so a reader that has seen `seq = n` has seen
/// every revocation up to `n`.
const REVOCATION_LOCK: i64 = 0x706f_7274_7265_766b;

pub struct PgStore {
    pool: Pool,
    /// This gateway's instance, named in its claims on mail.
    instance: Uuid,
    url: String,
    /// The listener's signal, started on first use.
    events: std::sync::OnceLock<tokio::sync::watch::Receiver<u64>>,
    commits: AtomicU64,
    ops: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        return StoreError::Conflict;
    }
    StoreError::Backend(e.to_string())
}

fn enc<V: Serialize>(v: &V) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

fn dec<V: DeserializeOwned>(v: serde_json::Value) -> StoreResult<V> {
    serde_json::from_value(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn email_key(email: &str) -> String {
    email.to_lowercase()
}

fn kind_code(r: &Revocation) -> (i8, Uuid, i64) {
    match *r {
        Revocation::Token(id, at) => (b't' as i8, id, at),
        Revocation::Session(id, at) => (b's' as i8, id, at),
        Revocation::Cutoff(id, at) => (b'c' as i8, id, at),
    }
}

fn revocation_from(kind: i8, id: Uuid, at: i64) -> StoreResult<Revocation> {
    match kind as u8 {
        b't' => Ok(Revocation::Token(id, at)),
        b's' => Ok(Revocation::Session(id, at)),
        b'c' => Ok(Revocation::Cutoff(id, at)),
        k => Err(StoreError::Corrupt(format!("revocation kind {k}"))),
    }
}

async fn one<V: DeserializeOwned>(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> StoreResult<Option<V>> {
    match c.query_opt(sql, params).await.map_err(pg)? {
        Some(row) => Ok(Some(dec(row.get(0))?)),
        None => Ok(None),
    }
}

async fn put_mail(tx: &Transaction<'_>, m: &OutboxMessage) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO outbox (id, created_at, record) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
        &[&m.id, &m.created_at, &enc(m)],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Write revocations with fresh sequence numbers and announce them.
async fn write_revocations(tx: &Transaction<'_>, revs: &[Revocation]) -> StoreResult<()> {
    if revs.is_empty() {
        return Ok(());
    }
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&REVOCATION_LOCK])
        .await
        .map_err(pg)?;
    for r in revs {
        let (kind, id, at) = kind_code(r);
        tx.execute(
            "INSERT INTO revocations (kind, id, at, seq)
             VALUES ($1, $2, $3, nextval('revocation_seq'))
             ON CONFLICT (kind, id) DO UPDATE
             SET at = GREATEST(revocations.at, EXCLUDED.at), seq = EXCLUDED.seq",
            &[&kind, &id, &at],
        )
        .await
        .map_err(pg)?;
    }
    tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL])
        .await
        .map_err(pg)?;
    Ok(())
}

/// End sessions of a user inside `tx` (the user row is locked first, so
/// this serializes with `create_session`).
async fn end_sessions_tx(
    tx: &Transaction<'_>,
    user: Uuid,
    which: Sessions,
    cutoff: bool,
    stamp: Stamp,
) -> StoreResult<Vec<Revocation>> {
    tx.query_opt("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&user])
        .await
        .map_err(pg)?;
    let ids: Vec<Uuid> = match which {
        Sessions::One(sid) => tx
            .query(
                "DELETE FROM sessions WHERE id = $1 AND user_id = $2 RETURNING id",
                &[&sid, &user],
            )
            .await
            .map_err(pg)?,
        Sessions::AllBut(keep) => tx
            .query(
                "DELETE FROM sessions WHERE user_id = $1 AND id <> $2 RETURNING id",
                &[&user, &keep],
            )
            .await
            .map_err(pg)?,
        Sessions::All => tx
            .query(
                "DELETE FROM sessions WHERE user_id = $1 RETURNING id",
                &[&user],
            )
            .await
            .map_err(pg)?,
    }
    .iter()
    .map(|r| r.get(0))
    .filter(|id| domain::selects(which, id))
    .collect();
    let revs = domain::revocations_for(user, &ids, cutoff, stamp);
    write_revocations(tx, &revs).await?;
    Ok(revs)
}

async fn apply_cascade(
    tx: &Transaction<'_>,
    user: &User,
    cascade: domain::Cascade,
    stamp: Stamp,
) -> StoreResult<Vec<Revocation>> {
    match cascade.end {
        Some(which) => end_sessions_tx(tx, user.id, which, cascade.cutoff, stamp).await,
        None if cascade.cutoff => {
            let revs = domain::revocations_for(user.id, &[], true, stamp);
            write_revocations(tx, &revs).await?;
            Ok(revs)
        }
        None => Ok(Vec::new()),
    }
}

async fn newest_seq(c: &impl GenericClient, user: Uuid, kind: OneTimeKind) -> StoreResult<u64> {
    let row = c
        .query_opt(
            "SELECT seq FROM one_time_seq WHERE user_id = $1 AND kind = $2",
            &[&user, &(kind as i16)],
        )
        .await
        .map_err(pg)?;
    Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
}

/// Delete the rows of `table` (keyed by `key`, a JSON `record` column)
/// whose record `is_dead` judges dead; rows locked by another transaction
/// are left for the next sweep. `table` and `key` are our own constants.
async fn sweep_table<K, V>(
    tx: &Transaction<'_>,
    table: &str,
    key: &str,
    is_dead: impl Fn(&V) -> bool,
) -> StoreResult<usize>
where
    K: tokio_postgres::types::ToSql + for<'a> tokio_postgres::types::FromSql<'a> + Sync,
    V: DeserializeOwned,
{
    let rows = tx
        .query(
            &format!("SELECT {key}, record FROM {table} LIMIT $1 FOR UPDATE SKIP LOCKED"),
            &[&SWEEP_SCAN],
        )
        .await
        .map_err(pg)?;
    let mut dead: Vec<K> = Vec::new();
    for row in rows {
        if is_dead(&dec(row.get(1))?) {
            dead.push(row.get(0));
        }
    }
    let n = tx
        .execute(
            &format!("DELETE FROM {table} WHERE {key} = ANY($1)"),
            &[&dead],
        )
        .await
        .map_err(pg)?;
    Ok(n as usize)
}

impl PgStore {
    /// Connect (a pool, lazily) and run the migrations.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let mut cfg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Backend(format!("database url: {e}")))?;
        // Never hang on an unreachable server: fail, answer 503, retry.
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(std::time::Duration::from_secs(5));
        }
        cfg.keepalives_idle(std::time::Duration::from_secs(30));
        let mgr = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr).max_size(16).build().map_err(backend)?;
        let store = Self {
            pool,
            instance: Uuid::new_v4(),
            url: url.to_string(),
            events: std::sync::OnceLock::new(),
            commits: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> StoreResult<()> {
        let mut c = self.pool.get().await.map_err(backend)?;
        c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        let result = async {
            c.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version int PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now())",
                &[],
            )
            .await
            .map_err(pg)?;
            for (version, sql) in MIGRATIONS {
                let tx = c.transaction().await.map_err(pg)?;
                let done = tx
                    .query_opt(
                        "SELECT 1 FROM schema_migrations WHERE version = $1",
                        &[version],
                    )
                    .await
                    .map_err(pg)?
                    .is_some();
                if !done {
                    tx.batch_execute(sql).await.map_err(pg)?;
                    tx.execute(
                        "INSERT INTO schema_migrations (version) VALUES ($1)",
                        &[version],
                    )
                    .await
                    .map_err(pg)?;
                }
                tx.commit().await.map_err(pg)?;
            }
            Ok::<_, StoreError>(())
        }
        .await;
        let _ = c
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        result
    }

    /// Run `f` in one transaction; commit when it returns `Ok`.
    async fn write<R, F>(&self, f: F) -> StoreResult<R>
    where
        F: for<'t> FnOnce(
            &'t Transaction<'t>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = StoreResult<R>> + Send + 't>,
        >,
    {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        let result = async {
            let mut c = self.pool.get().await.map_err(backend)?;
            let tx = c.transaction().await.map_err(pg)?;
            let r = f(&tx).await?;
            tx.commit().await.map_err(pg)?;
            Ok(r)
        }
        .await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if result.is_ok() {
            self.commits.fetch_add(1, Ordering::Relaxed);
            self.ops.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(backend)
    }
}

/// Keep a `LISTEN` connection open (reconnecting with backoff), bumping
/// `tx` on every notification and on every (re)connect.
async fn listen(url: String, tx: tokio::sync::watch::Sender<u64>) {
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        if tx.is_closed() {
            return;
        }
        match tokio_postgres::connect(&url, NoTls).await {
            Ok((client, mut conn)) => {
                // The connection must be polled for LISTEN to be sent and
                // for notifications to arrive.
                let statement = format!("LISTEN {CHANNEL}");
                let listen = client.batch_execute(&statement);
                let mut listen = std::pin::pin!(listen);
                let mut listening = false;
                loop {
                    tokio::select! {
                        r = &mut listen, if !listening => {
                            if r.is_err() { break; }
                            listening = true;
                            backoff = std::time::Duration::from_millis(100);
                            // Anything sent while we were away is lost.
                            tx.send_modify(|n| *n += 1);
                        }
                        m = std::future::poll_fn(|cx| conn.poll_message(cx)) => match m {
                            Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                                tx.send_modify(|n| *n += 1);
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break,
                        },
                        _ = tx.closed() => return,
                    }
                }
                tracing::warn!("revocation listener: connection lost; reconnecting");
            }
            Err(e) => tracing::warn!(cause = %e, "revocation listener: cannot connect"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
}

macro_rules! tx {
    (|$tx:ident| $body:expr) => {
        move |$tx: &Transaction<'_>| Box::pin(async move { $body })
    };
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn create_user(&self, user: User, mail: Option<OutboxMessage>) -> StoreResult<()> {
        self.write(tx!(|tx| {
            let inserted = tx
                .execute(
                    "INSERT INTO users (id, email_key, created_at, record) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (email_key) DO NOTHING",
                    &[
                        &user.id,
                        &email_key(&user.email),
                        &user.created_at,
                        &enc(&user),
                    ],
                )
                .await
                .map_err(pg)?;
            if inserted == 0 {
                return Err(StoreError::Conflict);
            }
            if let Some(m) = &mail {
                put_mail(tx, m).await?;
            }
            Ok(())
        }))
        .await
    }

    async fn find_user(&self, id: Uuid) -> StoreResult<Option<User>> {
        let c = self.client().await?;
        one(&**c, "SELECT record FROM users WHERE id = $1", &[&id]).await
    }

    async fn find_user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let c = self.client().await?;
        one(
            &**c,
            "SELECT record FROM users WHERE email_key = $1",
            &[&email_key(email)],
        )
        .await
    }

    async fn list_users(&self) -> StoreResult<Vec<User>> {
        let c = self.client().await?;
        let rows = c
            .query("SELECT record FROM users ORDER BY created_at, id", &[])
            .await
            .map_err(pg)?;
        rows.into_iter().map(|r| dec(r.get(0))).collect()
    }

    async fn change_user(
        &self,
        id: Uuid,
        change: UserChange,
        mail: Option<OutboxMessage>,
        stamp: Stamp,
    ) -> StoreResult<Changed> {
        self.write(tx!(|tx| {
            let current: User = one(
                tx,
                "SELECT record FROM users WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?
            .ok_or(StoreError::Conflict)?;
            let (user, cascade) = domain::apply_user_change(&current, &change)?;
            if user != current {
                tx.execute(
                    "UPDATE users SET record = $2 WHERE id = $1",
                    &[&id, &enc(&user)],
                )
                .await
                .map_err(pg)?;
            }
            let revoked = apply_cascade(tx, &user, cascade, stamp).await?;
            if let Some(m) = &mail {
                put_mail(tx, m).await?;
            }
            Ok(Changed { user, revoked })
        }))
        .await
    }

    async fn create_session(
        &self,
        session: SessionRecord,
        expect_password_version: u64,
    ) -> StoreResult<User> {
        self.write(tx!(|tx| {
            // FOR SHARE: a concurrent disable or password change (FOR
            // UPDATE) waits for this session to exist, or this waits for it.
            let user: User = one(
                tx,
                "SELECT record FROM users WHERE id = $1 FOR SHARE",
                &[&session.user_id],
            )
            .await?
            .ok_or(StoreError::Conflict)?;
            domain::check_session_start(&user, expect_password_version)?;
            tx.execute(
                "INSERT INTO sessions (id, user_id, record) VALUES ($1, $2, $3)",
                &[&session.id, &session.user_id, &enc(&session)],
            )
            .await
            .map_err(pg)?;
            Ok(user)
        }))
        .await
    }

    async fn find_session(&self, id: Uuid) -> StoreResult<Option<SessionRecord>> {
        let c = self.client().await?;
        one(&**c, "SELECT record FROM sessions WHERE id = $1", &[&id]).await
    }

    async fn list_sessions(&self, user_id: Uuid) -> StoreResult<Vec<SessionRecord>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT record FROM sessions WHERE user_id = $1",
                &[&user_id],
            )
            .await
            .map_err(pg)?;
        let mut out: Vec<SessionRecord> = rows
            .into_iter()
            .map(|r| dec(r.get(0)))
            .collect::<StoreResult<_>>()?;
        out.sort_by_key(|s| s.created_at);
        Ok(out)
    }

    async fn rotate_refresh(
        &self,
        id: Uuid,
        presented: u64,
        policy: RefreshPolicy,
    ) -> StoreResult<RotateOutcome> {
        self.write(tx!(|tx| {
            let Some(current) = one::<SessionRecord>(
                tx,
                "SELECT record FROM sessions WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?
            else {
                return Ok(RotateOutcome::Invalid);
            };
            let (next, outcome) = domain::rotate(&current, presented, &policy);
            match next {
                Some(s) if s != current => {
                    tx.execute(
                        "UPDATE sessions SET record = $2 WHERE id = $1",
                        &[&id, &enc(&s)],
                    )
                    .await
                    .map_err(pg)?;
                }
                Some(_) => {}
                None => {
                    tx.execute("DELETE FROM sessions WHERE id = $1", &[&id])
                        .await
                        .map_err(pg)?;
                }
            }
            if let RotateOutcome::Reused(_, revs) = &outcome {
                write_revocations(tx, revs).await?;
            }
            Ok(outcome)
        }))
        .await
    }

    async fn end_sessions(
        &self,
        user_id: Uuid,
        which: Sessions,
        cutoff: bool,
        stamp: Stamp,
    ) -> StoreResult<Vec<Revocation>> {
        self.write(tx!(
            |tx| end_sessions_tx(tx, user_id, which, cutoff, stamp).await
        ))
        .await
    }

    async fn revoke(&self, entries: Vec<Revocation>) -> StoreResult<()> {
        self.write(tx!(|tx| write_revocations(tx, &entries).await))
            .await
    }

    async fn list_revocations(&self) -> StoreResult<Vec<Revocation>> {
        Ok(self
            .revocations_since(0)
            .await?
            .map(|(revs, _)| revs)
            .unwrap_or_default())
    }

    async fn revocations_since(&self, after: i64) -> StoreResult<Option<(Vec<Revocation>, i64)>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT kind, id, at, seq FROM revocations WHERE seq > $1 ORDER BY seq",
                &[&after],
            )
            .await
            .map_err(pg)?;
        let mut last = after;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(revocation_from(r.get(0), r.get(1), r.get(2))?);
            last = last.max(r.get(3));
        }
        Ok(Some((out, last)))
    }

    fn revocation_events(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(
            self.events
                .get_or_init(|| {
                    let (tx, rx) = tokio::sync::watch::channel(0);
                    tokio::spawn(listen(self.url.clone(), tx));
                    rx
                })
                .clone(),
        )
    }

    async fn issue_one_time(
        &self,
        hash: String,
        token: OneTimeToken,
        mail: OutboxMessage,
    ) -> StoreResult<u64> {
        self.write(tx!(|tx| {
            let row = tx
                .query_one(
                    "INSERT INTO one_time_seq (user_id, kind, seq) VALUES ($1, $2, 1)
                     ON CONFLICT (user_id, kind) DO UPDATE SET seq = one_time_seq.seq + 1
                     RETURNING seq",
                    &[&token.user_id, &(token.kind as i16)],
                )
                .await
                .map_err(pg)?;
            let next = row.get::<_, i64>(0) as u64;
            let t = OneTimeToken {
                issued_seq: next,
                ..token
            };
            tx.execute(
                "INSERT INTO one_time (hash, record) VALUES ($1, $2)
                 ON CONFLICT (hash) DO UPDATE SET record = EXCLUDED.record",
                &[&hash, &enc(&t)],
            )
            .await
            .map_err(pg)?;
            put_mail(tx, &mail).await?;
            Ok(next)
        }))
        .await
    }

    async fn find_one_time(&self, hash: &str) -> StoreResult<Option<OneTimeToken>> {
        let c = self.client().await?;
        one(
            &**c,
            "SELECT record FROM one_time WHERE hash = $1",
            &[&hash],
        )
        .await
    }

    async fn latest_one_time_seq(&self, user_id: Uuid, kind: OneTimeKind) -> StoreResult<u64> {
        let c = self.client().await?;
        newest_seq(&**c, user_id, kind).await
    }

    async fn redeem(
        &self,
        hash: String,
        redeem: Redeem,
        mail: Option<OutboxMessage>,
        stamp: Stamp,
    ) -> StoreResult<Changed> {
        self.write(tx!(|tx| {
            let token: OneTimeToken = one(
                tx,
                "SELECT record FROM one_time WHERE hash = $1 FOR UPDATE",
                &[&hash],
            )
            .await?
            .ok_or(StoreError::Conflict)?;
            let current: User = one(
                tx,
                "SELECT record FROM users WHERE id = $1 FOR UPDATE",
                &[&token.user_id],
            )
            .await?
            .ok_or(StoreError::Conflict)?;
            let newest = newest_seq(tx, token.user_id, token.kind).await?;
            domain::check_redeem(&token, &redeem, &current, newest, stamp.now)?;
            tx.execute("DELETE FROM one_time WHERE hash = $1", &[&hash])
                .await
                .map_err(pg)?;
            let (user, cascade) = domain::apply_redeem(&current, &redeem);
            tx.execute(
                "UPDATE users SET record = $2 WHERE id = $1",
                &[&user.id, &enc(&user)],
            )
            .await
            .map_err(pg)?;
            let revoked = apply_cascade(tx, &user, cascade, stamp).await?;
            if let Some(m) = &mail {
                put_mail(tx, m).await?;
            }
            Ok(Changed { user, revoked })
        }))
        .await
    }

    async fn load_counters(&self) -> StoreResult<Vec<(String, Counter)>> {
        let c = self.client().await?;
        let rows = c
            .query("SELECT key, record FROM counters", &[])
            .await
            .map_err(pg)?;
        rows.into_iter()
            .map(|r| Ok((r.get(0), dec(r.get(1))?)))
            .collect()
    }

    async fn save_counters(&self, counters: Vec<(String, Option<Counter>)>) -> StoreResult<()> {
        self.write(tx!(|tx| {
            for (k, c) in &counters {
                match c {
                    Some(c) => tx
                        .execute(
                            "INSERT INTO counters (key, record) VALUES ($1, $2)
                             ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record",
                            &[k, &enc(c)],
                        )
                        .await
                        .map_err(pg)?,
                    None => tx
                        .execute("DELETE FROM counters WHERE key = $1", &[k])
                        .await
                        .map_err(pg)?,
                };
            }
            Ok(())
        }))
        .await
    }

    async fn enqueue_mail(&self, mail: OutboxMessage) -> StoreResult<()> {
        self.write(tx!(|tx| put_mail(tx, &mail).await)).await
    }

    async fn list_mail(&self) -> StoreResult<Vec<OutboxMessage>> {
        let c = self.client().await?;
        let rows = c
            .query("SELECT record FROM outbox ORDER BY created_at, id", &[])
            .await
            .map_err(pg)?;
        rows.into_iter().map(|r| dec(r.get(0))).collect()
    }

    async fn claim_mail(
        &self,
        now: i64,
        lease_secs: u64,
        limit: usize,
    ) -> StoreResult<Vec<OutboxMessage>> {
        // Rows another sender holds are skipped, never waited for.
        let me = self.instance;
        self.write(tx!(|tx| {
            let rows = tx
                .query(
                    "SELECT id, record FROM outbox
                     WHERE NOT (record->>'failed')::boolean
                       AND (record->>'next_attempt_at')::bigint <= $1
                     ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                    &[&now, &(limit as i64)],
                )
                .await
                .map_err(pg)?;
            let mut out = Vec::new();
            for row in rows {
                let id: Uuid = row.get(0);
                let m: OutboxMessage = dec(row.get(1))?;
                if let Some(leased) = domain::claim_mail(&m, now, lease_secs, me, false) {
                    tx.execute(
                        "UPDATE outbox SET record = $2 WHERE id = $1",
                        &[&id, &enc(&leased)],
                    )
                    .await
                    .map_err(pg)?;
                    out.push(m);
                }
            }
            Ok(out)
        }))
        .await
    }

    async fn record_delivery(&self, id: Uuid, delivery: Delivery) -> StoreResult<()> {
        self.write(tx!(|tx| {
            let Some(current) = one::<OutboxMessage>(
                tx,
                "SELECT record FROM outbox WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?
            else {
                return Ok(());
            };
            match domain::apply_delivery(&current, &delivery) {
                Some(m) => {
                    tx.execute(
                        "UPDATE outbox SET record = $2 WHERE id = $1",
                        &[&id, &enc(&m)],
                    )
                    .await
                    .map_err(pg)?;
                }
                None => {
                    tx.execute("DELETE FROM outbox WHERE id = $1", &[&id])
                        .await
                        .map_err(pg)?;
                }
            }
            Ok(())
        }))
        .await
    }

    async fn sweep(&self, r: Retention) -> StoreResult<SweepReport> {
        // Rows another instance is changing right now are skipped; the
        // next sweep gets them.
        self.write(tx!(|tx| {
            let mut report = SweepReport {
                sessions: sweep_table::<Uuid, SessionRecord>(tx, "sessions", "id", |s| {
                    domain::session_is_dead(s, &r)
                })
                .await?,
                one_time: sweep_table::<String, OneTimeToken>(tx, "one_time", "hash", |t| {
                    domain::one_time_is_dead(t, &r)
                })
                .await?,
                mail: sweep_table::<Uuid, OutboxMessage>(tx, "outbox", "id", |m| {
                    domain::mail_is_dead(m, &r)
                })
                .await?,
                ..SweepReport::default()
            };
            let rows = tx
                .query(
                    "SELECT kind, id, at FROM revocations LIMIT $1 FOR UPDATE SKIP LOCKED",
                    &[&SWEEP_SCAN],
                )
                .await
                .map_err(pg)?;
            for row in rows {
                let rev = revocation_from(row.get(0), row.get(1), row.get(2))?;
                if domain::revocation_is_dead(&rev, &r) {
                    let (kind, id, _) = kind_code(&rev);
                    tx.execute(
                        "DELETE FROM revocations WHERE kind = $1 AND id = $2",
                        &[&kind, &id],
                    )
                    .await
                    .map_err(pg)?;
                    match rev {
                        Revocation::Cutoff(..) => report.cutoffs += 1,
                        _ => report.revocations += 1,
                    }
                }
            }
            Ok(report)
        }))
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        let c = self.client().await?;
        c.execute("SELECT 1", &[]).await.map_err(pg)?;
        Ok(())
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.commits.load(Ordering::Relaxed),
            ops: self.ops.load(Ordering::Relaxed),
            max_batch: 1,
            max_in_flight: self.max_in_flight.load(Ordering::Relaxed),
            // Each write is its own transaction: a failure leaves nothing
            // behind, and the next one tries again.
            writable: true,
            write_failures: 0,
            recoveries: 0,
        }
    }
}
