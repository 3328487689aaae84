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
//!
//! The files: [`connect`] (TLS, the pool, transactions, the listener),
//! [`schema`] (migrations), [`users`], [`sessions`], [`revocations`],
//! [`one_time`], [`counters`] and [`outbox`] (the operations on each),
//! [`sweep`] (expired rows), [`export`] (export, snapshot, import) and
//! [`store`] (the [`Store`] impl, delegating to them).

use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::{de::DeserializeOwned, Serialize};
use tokio_postgres::error::SqlState;
use tokio_postgres::{GenericClient, Transaction};
use tokio_postgres_rustls::MakeRustlsConnect;
use uuid::Uuid;

use super::domain;
use super::*;

macro_rules! tx {
    (|$tx:ident| $body:expr) => {
        move |$tx: &Transaction<'_>| Box::pin(async move { $body })
    };
}

mod audit;
mod connect;
mod counters;
mod export;
mod identities;
mod one_time;
mod outbox;
mod revocations;
mod schema;
mod sessions;
mod store;
mod sweep;
mod users;

use self::audit::*;
pub use self::connect::tls;
use self::connect::*;
use self::outbox::*;
use self::revocations::*;
use self::sessions::*;

/// The channel revocations are announced on.
pub const CHANNEL: &str = "portcullis_revocations";

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
