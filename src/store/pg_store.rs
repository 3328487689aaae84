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
use tokio_postgres::{GenericClient, Transaction};
use tokio_postgres_rustls::MakeRustlsConnect;
use uuid::Uuid;

use super::domain;
use super::*;

/// The channel revocations are announced on.
pub const CHANNEL: &str = "portcullis_revocations";
/// Rows one sweep transaction deletes at most (each batch commits on its
/// own, so no row stays locked for long).
const SWEEP_BATCH: i64 = 1000;

/// Forward-only, idempotent migrations, applied in order at start under an
/// advisory lock (so instances starting together do not race).
const MIGRATIONS: &[(i32, &str)] = &[
    (
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
    ),
    (
        2,
        r#"
CREATE TABLE counter_leases (
    id uuid PRIMARY KEY,
    key text NOT NULL,
    until bigint NOT NULL
);
CREATE INDEX counter_leases_by_key ON counter_leases (key);
"#,
    ),
    (
        3,
        r#"
CREATE TABLE token_horizon (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    secs bigint NOT NULL
);
CREATE INDEX revocations_by_at ON revocations (at);
CREATE INDEX sessions_by_expiry ON sessions (((record->>'expires_at')::bigint));
CREATE INDEX sessions_by_last_use ON sessions (((record->>'last_used_at')::bigint));
CREATE INDEX one_time_by_expiry ON one_time (((record->>'expires_at')::bigint));
CREATE INDEX outbox_failed_by_time ON outbox ((COALESCE((record->>'failed_at')::bigint, created_at)))
    WHERE (record->>'failed')::boolean;
CREATE INDEX counters_by_window ON counters (((record->>'window_start')::bigint));
"#,
    ),
];

/// Batches one sweep runs per table at most (the rest waits for the next
/// sweep, which takes the oldest first again).
const SWEEP_MAX_BATCHES: usize = 1000;

/// Arbitrary, fixed: the advisory lock migrations run under.
const MIGRATION_LOCK: i64 = 0x706f_7274_6375_6c6c;
/// Revoking transactions take this (transaction-level) lock just before
/// they draw their sequence numbers, and hold it to commit: sequences are
/// then committed in order, so a reader that has seen `seq = n` has seen
/// every revocation up to `n`.
const REVOCATION_LOCK: i64 = 0x706f_7274_7265_766b;

/// TLS to the server, verified: the public web roots plus the operator's
/// CAs (`storage.ca_file`). The URL's `sslmode` says whether it is used
/// (`disable`), tried (`prefer`, the default: a server without TLS is
/// spoken to in the clear) or required (`require`); whenever it is used,
/// the certificate and the host name are checked.
pub fn tls(ca_file: Option<&std::path::Path>) -> StoreResult<MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| StoreError::Backend(format!("reading {}: {e}", path.display())))?;
        let mut found = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| {
                StoreError::Backend(format!("a certificate in {}: {e}", path.display()))
            })?;
            roots.add(cert).map_err(|e| {
                StoreError::Backend(format!("a certificate in {}: {e}", path.display()))
            })?;
            found += 1;
        }
        if found == 0 {
            return Err(StoreError::Backend(format!(
                "no certificate in {}",
                path.display()
            )));
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(backend)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

pub struct PgStore {
    pool: Pool,
    tls: MakeRustlsConnect,
    /// This gateway's instance, named in its claims on mail.
    instance: Uuid,
    /// For the listener's own connection.
    config: tokio_postgres::Config,
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
        Revocation::Keys(id, at) => (b'k' as i8, id, at),
    }
}

fn revocation_from(kind: i8, id: Uuid, at: i64) -> StoreResult<Revocation> {
    match kind as u8 {
        b't' => Ok(Revocation::Token(id, at)),
        b's' => Ok(Revocation::Session(id, at)),
        b'c' => Ok(Revocation::Cutoff(id, at)),
        b'k' => Ok(Revocation::Keys(id, at)),
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

/// The outbox message `id`, its row locked for the rest of `tx`.
async fn lock_mail(tx: &Transaction<'_>, id: Uuid) -> StoreResult<Option<OutboxMessage>> {
    one(
        tx,
        "SELECT record FROM outbox WHERE id = $1 FOR UPDATE",
        &[&id],
    )
    .await
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

/// Write revocations with fresh sequence numbers and announce them, in one
/// statement: the lock that orders the sequences (see [`REVOCATION_LOCK`])
/// is then held for that statement and the commit only, not for a round
/// trip per entry.
async fn write_revocations(tx: &Transaction<'_>, revs: &[Revocation]) -> StoreResult<()> {
    if revs.is_empty() {
        return Ok(());
    }
    // One row per key (an upsert may not touch a row twice), the latest.
    let mut rows: Vec<(i8, Uuid, i64)> = revs.iter().map(kind_code).collect();
    rows.sort_unstable_by(|a, b| (a.0, a.1, b.2).cmp(&(b.0, b.1, a.2)));
    rows.dedup_by_key(|r| (r.0, r.1));
    let kinds: Vec<i8> = rows.iter().map(|r| r.0).collect();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.1).collect();
    let ats: Vec<i64> = rows.iter().map(|r| r.2).collect();
    // Every row joins the lock, so it is taken before any sequence is drawn.
    tx.execute(
        r#"WITH ordered AS (SELECT pg_advisory_xact_lock($1)),
                written AS (
                    INSERT INTO revocations (kind, id, at, seq)
                    SELECT r.kind, r.id, r.at, nextval('revocation_seq')
                    FROM ordered, unnest($2::"char"[], $3::uuid[], $4::bigint[]) AS r(kind, id, at)
                    ON CONFLICT (kind, id) DO UPDATE
                    SET at = GREATEST(revocations.at, EXCLUDED.at), seq = EXCLUDED.seq
                    RETURNING 1)
           SELECT pg_notify($5, '') WHERE EXISTS (SELECT 1 FROM written)"#,
        &[&REVOCATION_LOCK, &kinds, &ids, &ats, &CHANNEL],
    )
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
    let mut revs = match cascade.end {
        Some(which) => end_sessions_tx(tx, user.id, which, cascade.cutoff, stamp).await?,
        None if cascade.cutoff => {
            let revs = domain::revocations_for(user.id, &[], true, stamp);
            write_revocations(tx, &revs).await?;
            revs
        }
        None => Vec::new(),
    };
    if let Some(notice) = domain::keys_notice(user.id, cascade, stamp) {
        write_revocations(tx, &[notice]).await?;
        revs.push(notice);
    }
    Ok(revs)
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

/// The counter at `key`, created if missing, locked to this transaction.
async fn lock_counter(tx: &Transaction<'_>, key: &str) -> StoreResult<Counter> {
    // An upsert that changes nothing still locks the row, in one trip.
    let row = tx
        .query_one(
            "INSERT INTO counters (key, record) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key
             RETURNING record",
            &[&key, &enc(&Counter::default())],
        )
        .await
        .map_err(pg)?;
    dec(row.get(0))
}

async fn save_counter(tx: &Transaction<'_>, key: &str, c: &Counter) -> StoreResult<()> {
    tx.execute(
        "UPDATE counters SET record = $2 WHERE key = $1",
        &[&key, &enc(&Counter { pending: 0, ..*c })],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// A page of `kind` (see [`Store::export`]), on any client or transaction.
async fn export_page(
    c: &impl GenericClient,
    kind: RecordKind,
    cursor: Option<String>,
    limit: usize,
) -> StoreResult<Page> {
    let bad = || StoreError::Corrupt("export cursor".into());
    let limit = limit.max(1) as i64;
    let after_id = || -> StoreResult<Uuid> {
        cursor
            .as_deref()
            .map_or(Ok(Uuid::nil()), |s| Uuid::parse_str(s).map_err(|_| bad()))
    };
    let after_text = || cursor.clone().unwrap_or_default();
    let query = |sql: &'static str, p: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>| async move {
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            p.iter().map(|b| &**b as _).collect();
        c.query(sql, &refs).await.map_err(pg)
    };
    let mut records = Vec::new();
    let mut last: Option<String> = None;
    match kind {
        RecordKind::Users | RecordKind::Sessions | RecordKind::Mail => {
            let sql = match kind {
                RecordKind::Users => {
                    "SELECT id, record FROM users WHERE id > $1 ORDER BY id LIMIT $2"
                }
                RecordKind::Sessions => {
                    "SELECT id, record FROM sessions WHERE id > $1 ORDER BY id LIMIT $2"
                }
                _ => "SELECT id, record FROM outbox WHERE id > $1 ORDER BY id LIMIT $2",
            };
            for row in query(sql, vec![Box::new(after_id()?), Box::new(limit)]).await? {
                let id: Uuid = row.get(0);
                let v = row.get(1);
                records.push(match kind {
                    RecordKind::Users => Record::User(dec(v)?),
                    RecordKind::Sessions => Record::Session(dec(v)?),
                    _ => Record::Mail(dec(v)?),
                });
                last = Some(id.to_string());
            }
        }
        RecordKind::Revocations => {
            let after: i64 = match &cursor {
                Some(s) => s.parse().map_err(|_| bad())?,
                None => 0,
            };
            let sql = "SELECT kind, id, at, seq FROM revocations WHERE seq > $1
                       ORDER BY seq LIMIT $2";
            for row in query(sql, vec![Box::new(after), Box::new(limit)]).await? {
                records.push(Record::Revocation(revocation_from(
                    row.get(0),
                    row.get(1),
                    row.get(2),
                )?));
                last = Some(row.get::<_, i64>(3).to_string());
            }
        }
        RecordKind::OneTimeTokens | RecordKind::Counters => {
            let sql = if kind == RecordKind::Counters {
                "SELECT key, record FROM counters WHERE key > $1 ORDER BY key LIMIT $2"
            } else {
                "SELECT hash, record FROM one_time WHERE hash > $1 ORDER BY hash LIMIT $2"
            };
            for row in query(sql, vec![Box::new(after_text()), Box::new(limit)]).await? {
                let key: String = row.get(0);
                records.push(if kind == RecordKind::Counters {
                    Record::Counter {
                        key: key.clone(),
                        counter: dec(row.get(1))?,
                    }
                } else {
                    Record::OneTimeToken {
                        hash: key.clone(),
                        token: dec(row.get(1))?,
                    }
                });
                last = Some(key);
            }
        }
        RecordKind::OneTimeSeqs => {
            let (user, k): (Uuid, i16) = match cursor.as_deref() {
                Some(s) => {
                    let (u, k) = s.split_once('/').ok_or_else(bad)?;
                    (
                        Uuid::parse_str(u).map_err(|_| bad())?,
                        k.parse().map_err(|_| bad())?,
                    )
                }
                None => (Uuid::nil(), -1),
            };
            let sql = "SELECT user_id, kind, seq FROM one_time_seq
                       WHERE (user_id, kind) > ($1, $2) ORDER BY user_id, kind LIMIT $3";
            for row in query(sql, vec![Box::new(user), Box::new(k), Box::new(limit)]).await? {
                let (user_id, code): (Uuid, i16) = (row.get(0), row.get(1));
                let kind = match code {
                    0 => OneTimeKind::EmailVerify,
                    1 => OneTimeKind::PasswordReset,
                    2 => OneTimeKind::MfaLogin,
                    _ => return Err(StoreError::Corrupt(format!("one-time kind {code}"))),
                };
                records.push(Record::OneTimeSeq {
                    user_id,
                    kind,
                    seq: row.get::<_, i64>(2) as u64,
                });
                last = Some(format!("{user_id}/{code}"));
            }
        }
    }
    let next = if records.len() as i64 == limit {
        last
    } else {
        None
    };
    Ok(Page { records, next })
}

impl PgStore {
    /// Connect (a pool, lazily) and run the migrations.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(url, None).await
    }

    /// [`PgStore::connect`], also trusting the CAs in `ca_file` (see [`tls`]).
    pub async fn connect_with(url: &str, ca_file: Option<&std::path::Path>) -> StoreResult<Self> {
        let tls = tls(ca_file)?;
        let mut cfg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Backend(format!("database url: {e}")))?;
        // Never hang on an unreachable server: fail, answer 503, retry.
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(std::time::Duration::from_secs(5));
        }
        cfg.keepalives_idle(std::time::Duration::from_secs(30));
        let mgr = Manager::from_config(
            cfg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr).max_size(16).build().map_err(backend)?;
        let store = Self {
            pool,
            tls,
            instance: Uuid::new_v4(),
            config: cfg,
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
async fn listen(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    tx: tokio::sync::watch::Sender<u64>,
) {
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        if tx.is_closed() {
            return;
        }
        match config.connect(tls.clone()).await {
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

/// Delete, in batches of [`SWEEP_BATCH`] rows each committed on its own,
/// every row of `table` for which `cond` holds: the rule of [`domain`]
/// written over the expressions migration 3 indexes, so only expired rows
/// are ever read or locked (never the live ones a refresh may be waiting
/// for), and every expired row is reached whatever the table's size. Rows
/// locked by another transaction are skipped (the next sweep gets them).
/// `cond` is evaluated again on each locked row as it is deleted, and each
/// deleted row is judged once more by `judge` (`None`: not dead by the
/// domain rule, and the batch is rolled back: the SQL and the rule must
/// agree); `Some(i)` counts it in `counts[i]`. `table`, `cond` and
/// `returning` are our own constants.
async fn sweep_rows(
    store: &PgStore,
    table: &'static str,
    cond: &'static str,
    returning: &'static str,
    params: &[i64],
    r: Retention,
    judge: fn(&tokio_postgres::Row, &Retention) -> StoreResult<Option<usize>>,
) -> StoreResult<[usize; 2]> {
    let sql = format!(
        "DELETE FROM {table} WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM {table} WHERE {cond} LIMIT {SWEEP_BATCH} FOR UPDATE SKIP LOCKED))
         AND ({cond}) RETURNING {returning}"
    );
    let params: Vec<i64> = params.to_vec();
    let mut counts = [0usize; 2];
    for _ in 0..SWEEP_MAX_BATCHES {
        let (sql, params) = (sql.clone(), params.clone());
        let (deleted, batch) = store
            .write(tx!(|tx| {
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    params.iter().map(|p| p as _).collect();
                let rows = tx.query(&sql, &refs).await.map_err(pg)?;
                let mut batch = [0usize; 2];
                for row in &rows {
                    match judge(row, &r)? {
                        Some(i) => batch[i] += 1,
                        None => {
                            return Err(StoreError::Corrupt(format!(
                                "the sweep of {table} selected a row its rule keeps"
                            )))
                        }
                    }
                }
                Ok((rows.len(), batch))
            }))
            .await?;
        counts[0] += batch[0];
        counts[1] += batch[1];
        if (deleted as i64) < SWEEP_BATCH {
            break;
        }
    }
    Ok(counts)
}

/// A row the sweep deleted, judged by the domain rule: counted in the
/// first bucket when dead.
fn judged(dead: bool) -> StoreResult<Option<usize>> {
    Ok(dead.then_some(0))
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
                    tokio::spawn(listen(self.config.clone(), self.tls.clone(), tx));
                    rx
                })
                .clone(),
        )
    }

    async fn issue_one_time(
        &self,
        hash: String,
        token: OneTimeToken,
        mail: Option<OutboxMessage>,
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
            if let Some(m) = &mail {
                put_mail(tx, m).await?;
            }
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
            let (user, cascade) = domain::apply_redeem(&current, &redeem)?;
            tx.execute("DELETE FROM one_time WHERE hash = $1", &[&hash])
                .await
                .map_err(pg)?;
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

    async fn hit_counter(
        &self,
        key: &str,
        limit: u32,
        window: u64,
        now: i64,
    ) -> StoreResult<Result<(), u64>> {
        if limit == 0 {
            return Ok(Ok(()));
        }
        let key = key.to_string();
        self.write(tx!(|tx| {
            let mut c = lock_counter(tx, &key).await?;
            let verdict = c.hit(now, limit, window);
            if verdict.is_ok() {
                save_counter(tx, &key, &c).await?;
            }
            Ok(verdict)
        }))
        .await
    }

    async fn reserve_attempt(
        &self,
        key: &str,
        policy: LockoutPolicy,
        now: i64,
        lease_secs: u64,
    ) -> StoreResult<Result<Lease, u64>> {
        let key = key.to_string();
        self.write(tx!(|tx| {
            let mut c = lock_counter(tx, &key).await?;
            // In flight: the live leases of every gateway. Lapsed ones
            // (their holder died unsettled) go.
            let live: i64 = tx
                .query_one(
                    "WITH lapsed AS (
                         DELETE FROM counter_leases WHERE key = $1 AND until <= $2)
                     SELECT count(*) FROM counter_leases WHERE key = $1 AND until > $2",
                    &[&key, &now],
                )
                .await
                .map_err(pg)?
                .get(0);
            c.pending = u32::try_from(live).unwrap_or(u32::MAX);
            if let Err(retry_after) = c.reserve(now, &policy) {
                return Ok(Err(retry_after));
            }
            let lease = Lease {
                key: key.clone(),
                id: Uuid::new_v4(),
                until: now.saturating_add(lease_secs as i64),
            };
            tx.execute(
                "INSERT INTO counter_leases (id, key, until) VALUES ($1, $2, $3)",
                &[&lease.id, &lease.key, &lease.until],
            )
            .await
            .map_err(pg)?;
            save_counter(tx, &key, &c).await?;
            Ok(Ok(lease))
        }))
        .await
    }

    async fn settle_attempt(
        &self,
        lease: &Lease,
        policy: LockoutPolicy,
        failed: bool,
        now: i64,
    ) -> StoreResult<bool> {
        let lease = lease.clone();
        self.write(tx!(|tx| {
            // A success only gives its reservation back; a failure counts
            // even if its lease lapsed meanwhile.
            let mut c = if failed {
                lock_counter(tx, &lease.key).await?
            } else {
                Counter::default()
            };
            tx.execute("DELETE FROM counter_leases WHERE id = $1", &[&lease.id])
                .await
                .map_err(pg)?;
            if !failed {
                return Ok(false);
            }
            c.pending = 1;
            let locked = c.settle(now, &policy, true);
            save_counter(tx, &lease.key, &c).await?;
            Ok(locked)
        }))
        .await
    }

    async fn clear_counter(&self, key: &str) -> StoreResult<()> {
        let key = key.to_string();
        self.write(tx!(|tx| {
            lock_counter(tx, &key).await?;
            save_counter(tx, &key, &Counter::default()).await
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

    async fn renew_mail_claim(
        &self,
        id: Uuid,
        now: i64,
        lease_secs: u64,
    ) -> StoreResult<Option<OutboxMessage>> {
        let me = self.instance;
        self.write(tx!(|tx| {
            let Some(current) = lock_mail(tx, id).await? else {
                return Ok(None);
            };
            let renewed = domain::renew_mail_claim(&current, now, lease_secs, me);
            if let Some(m) = &renewed {
                tx.execute(
                    "UPDATE outbox SET record = $2 WHERE id = $1",
                    &[&id, &enc(m)],
                )
                .await
                .map_err(pg)?;
            }
            Ok(renewed)
        }))
        .await
    }

    async fn record_delivery(&self, id: Uuid, delivery: Delivery) -> StoreResult<()> {
        let me = self.instance;
        self.write(tx!(|tx| {
            let Some(current) = lock_mail(tx, id).await? else {
                return Ok(());
            };
            if !domain::delivery_applies(&current, &delivery, me) {
                return Ok(());
            }
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
        let [sessions, _] = sweep_rows(
            self,
            "sessions",
            "(record->>'expires_at')::bigint <= $1::bigint OR (record->>'last_used_at')::bigint <= $1::bigint - $2::bigint",
            "record",
            &[r.now, r.idle_secs as i64],
            r,
            |row, r| judged(domain::session_is_dead(&dec(row.get(0))?, r)),
        )
        .await?;
        let [one_time, _] = sweep_rows(
            self,
            "one_time",
            "(record->>'expires_at')::bigint <= $1::bigint",
            "record",
            &[r.now],
            r,
            |row, r| judged(domain::one_time_is_dead(&dec(row.get(0))?, r)),
        )
        .await?;
        let [mail, _] = sweep_rows(
            self,
            "outbox",
            "(record->>'failed')::boolean
             AND COALESCE((record->>'failed_at')::bigint, created_at) <= $1::bigint - $2::bigint",
            "record",
            &[r.now, r.failed_mail_secs as i64],
            r,
            |row, r| judged(domain::mail_is_dead(&dec(row.get(0))?, r)),
        )
        .await?;
        let [counters, _] = sweep_rows(
            self,
            "counters",
            "(record->>'window_start')::bigint <= $1::bigint - $2::bigint
             AND (record->>'locked_until')::bigint <= $1::bigint",
            "record",
            &[r.now, r.counter_idle_secs as i64],
            r,
            |row, r| judged(dec::<Counter>(row.get(0))?.is_idle(r.now, r.counter_idle_secs)),
        )
        .await?;
        // Keys notices go at their time; the rest once older than the
        // revocation horizon (which is before now).
        let [revocations, cutoffs] = sweep_rows(
            self,
            "revocations",
            "at < $2::bigint OR (kind = 'k' AND at <= $1::bigint)",
            "kind, id, at",
            &[r.now, r.revocation_horizon],
            r,
            |row, r| {
                let rev = revocation_from(row.get(0), row.get(1), row.get(2))?;
                Ok(domain::revocation_is_dead(&rev, r)
                    .then_some(usize::from(matches!(rev, Revocation::Cutoff(..)))))
            },
        )
        .await?;
        self.write(tx!(|tx| {
            tx.execute(
                "DELETE FROM counter_leases WHERE until <= $1::bigint",
                &[&r.now],
            )
            .await
            .map_err(pg)?;
            Ok(())
        }))
        .await?;
        Ok(SweepReport {
            sessions,
            one_time,
            revocations,
            cutoffs,
            mail,
            counters,
        })
    }

    async fn token_horizon(&self, at_least: u64) -> StoreResult<u64> {
        // Raised only when it grows (no write otherwise); autocommit, so
        // durable when this returns.
        let c = self.client().await?;
        let at_least = i64::try_from(at_least).unwrap_or(i64::MAX);
        let row = c
            .query_one(
                "WITH raised AS (
                     INSERT INTO token_horizon (one, secs) VALUES (true, $1)
                     ON CONFLICT (one) DO UPDATE SET secs = EXCLUDED.secs
                     WHERE token_horizon.secs < EXCLUDED.secs
                     RETURNING secs)
                 SELECT secs FROM raised
                 UNION ALL
                 SELECT secs FROM token_horizon WHERE NOT EXISTS (SELECT 1 FROM raised)",
                &[&at_least],
            )
            .await
            .map_err(pg)?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    async fn export(
        &self,
        kind: RecordKind,
        cursor: Option<String>,
        limit: usize,
    ) -> StoreResult<Page> {
        let c = self.client().await?;
        export_page(&**c, kind, cursor, limit).await
    }

    async fn snapshot(&self) -> StoreResult<Vec<Record>> {
        // One REPEATABLE READ transaction: every page sees the same moment.
        let mut c = self.client().await?;
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        let mut out = Vec::new();
        for kind in RecordKind::ALL {
            let mut cursor = None;
            loop {
                let page = export_page(&*tx, kind, cursor, copy::PAGE).await?;
                out.extend(page.records);
                match page.next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
        }
        tx.commit().await.map_err(pg)?;
        Ok(out)
    }

    async fn import(&self, records: Vec<Record>) -> StoreResult<()> {
        self.write(tx!(|tx| {
            let mut revocations = Vec::new();
            for r in &records {
                match r {
                    Record::User(u) => {
                        tx.execute(
                            "INSERT INTO users (id, email_key, created_at, record)
                             VALUES ($1, $2, $3, $4)
                             ON CONFLICT (id) DO UPDATE
                             SET email_key = EXCLUDED.email_key, record = EXCLUDED.record",
                            &[&u.id, &email_key(&u.email), &u.created_at, &enc(u)],
                        )
                        .await
                        .map_err(pg)?;
                    }
                    Record::Session(s) => {
                        tx.execute(
                            "INSERT INTO sessions (id, user_id, record) VALUES ($1, $2, $3)
                             ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
                            &[&s.id, &s.user_id, &enc(s)],
                        )
                        .await
                        .map_err(pg)?;
                    }
                    Record::Revocation(r) => revocations.push(*r),
                    Record::OneTimeToken { hash, token } => {
                        tx.execute(
                            "INSERT INTO one_time (hash, record) VALUES ($1, $2)
                             ON CONFLICT (hash) DO UPDATE SET record = EXCLUDED.record",
                            &[hash, &enc(token)],
                        )
                        .await
                        .map_err(pg)?;
                    }
                    Record::OneTimeSeq { user_id, kind, seq } => {
                        tx.execute(
                            "INSERT INTO one_time_seq (user_id, kind, seq) VALUES ($1, $2, $3)
                             ON CONFLICT (user_id, kind) DO UPDATE
                             SET seq = GREATEST(one_time_seq.seq, EXCLUDED.seq)",
                            &[user_id, &(*kind as i16), &(*seq as i64)],
                        )
                        .await
                        .map_err(pg)?;
                    }
                    Record::Counter { key, counter } => {
                        tx.execute(
                            "INSERT INTO counters (key, record) VALUES ($1, $2)
                             ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record",
                            &[
                                key,
                                &enc(&Counter {
                                    pending: 0,
                                    ..*counter
                                }),
                            ],
                        )
                        .await
                        .map_err(pg)?;
                    }
                    Record::Mail(m) => put_mail(tx, m).await?,
                }
            }
            write_revocations(tx, &revocations).await?;
            Ok(())
        }))
        .await
    }

    async fn count(&self, kind: RecordKind) -> StoreResult<u64> {
        let table = match kind {
            RecordKind::Users => "users",
            RecordKind::Sessions => "sessions",
            RecordKind::Revocations => "revocations",
            RecordKind::OneTimeTokens => "one_time",
            RecordKind::OneTimeSeqs => "one_time_seq",
            RecordKind::Counters => "counters",
            RecordKind::Mail => "outbox",
        };
        let c = self.client().await?;
        let row = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .map_err(pg)?;
        Ok(row.get::<_, i64>(0) as u64)
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
