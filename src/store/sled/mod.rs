//! The sled implementation of [`Store`].
//!
//! **One writer.** A dedicated thread owns every write. Operations arrive on
//! a channel; the writer takes all that are waiting (up to [`MAX_BATCH`]),
//! applies each to the current records (reading through the batch's own
//! pending writes, so the second of two racing operations sees the first),
//! writes the batch, flushes once, and only then answers every operation in
//! it (group commit). An `Ok` therefore always means "on disk". An operation
//! that fails (a precondition no longer holds) leaves no write behind and
//! does not fail the batch.
//!
//! **Crash atomicity without sled's lock.** sled 0.34 guards transactions
//! and batches with a process-wide reader/writer lock that can deadlock
//! against a concurrent flush (seen under load in the first round). This
//! store never uses either: once no batch or transaction has ever run, sled
//! takes no lock at all, and readers on other threads never block. Instead,
//! before applying a batch the writer stores the whole batch as one record
//! (the *intent*, a single-key write, so atomic), then applies its writes
//! one by one, then flushes. sled recovers a prefix of its log, so after a
//! crash either the intent is absent (and so is every write after it) or it
//! is present and [`SledStore::open`] applies it again (its writes are
//! absolute values, so this is idempotent). Nothing half-done is ever
//! visible after a restart.
//!
//! **Reads** run on the blocking pool, concurrently with each other and
//! with the writer. They see each write as soon as it is applied, so a
//! reader may see part of a batch that is being written; every decision
//! that matters is taken inside the writer, against the current record.
//!
//! The files: [`codec`] (the trees and how keys and values are encoded),
//! [`scan`] (whole-tree walks: the sweep's cursor, export pages),
//! [`intent`] (the intent record), [`tx`] (the writer's view of a batch and
//! the pieces operations share), [`writer`] (the writer thread, group
//! commit, and recovery after a failed write), [`store`] (the [`Store`]
//! operations), [`snapshot`] (the revocation log and snapshot a start reads
//! instead of the whole `revoked` tree) and [`holders`] (the index of API
//! key holders).

mod codec;
mod holders;
mod identities;
mod intent;
mod scan;
mod snapshot;
mod store;
mod tx;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::counters::MemCounters;
use super::domain;
use super::*;

use self::codec::*;
use self::holders::*;
use self::intent::*;
use self::scan::*;
use self::snapshot::*;
pub use self::snapshot::{RevocationLoad, SNAPSHOT_FILE};
use self::tx::*;
use self::writer::*;

const STAMP: &[u8] = b"stamp";

/// sled's page cache when no config says otherwise (`storage.cache_mb`).
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

pub struct SledStore {
    shared: Arc<Shared>,
    /// This process's instance: claims on mail by any other are void.
    instance: Uuid,
    /// Throttle and lockout counters: kept in memory, written out by
    /// [`Store::checkpoint`] (losing at most a second of counting to a
    /// crash, never an account's lock for longer than that).
    throttle: MemCounters,
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// How the last [`Store::list_revocations`] read them.
    revocation_load: Mutex<Option<RevocationLoad>>,
}

impl SledStore {
    /// Open (or create) the database, finish a batch a crash cut short,
    /// and start the writer.
    pub fn open(path: &Path) -> StoreResult<Self> {
        Self::open_with(path, 0, DEFAULT_CACHE_BYTES)
    }

    /// [`SledStore::open`], with the writer thread (and the I/O threads sled
    /// starts from it) at niceness `writer_nice`, like the rest of the auth
    /// work (see `crate::executor`).
    pub fn open_with(path: &Path, writer_nice: u8, cache_bytes: u64) -> StoreResult<Self> {
        let trees = open_trees(path, cache_bytes)?;
        let mut saved = Vec::new();
        for kv in trees.tree(T::Counters).iter() {
            let (k, v) = kv.map_err(backend)?;
            saved.push((String::from_utf8_lossy(&k).into_owned(), dec(&v)?));
        }
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            cache_bytes,
            current: RwLock::new(Some(Arc::new(trees))),
            writable: AtomicBool::new(true),
            failure: Mutex::new(None),
            sink: OnceLock::new(),
            counters: Counters::default(),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let for_writer = shared.clone();
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                crate::executor::lower_priority(writer_nice);
                writer_loop(for_writer, rx)
            })
            .map_err(|e| StoreError::Backend(format!("starting the writer: {e}")))?;
        Ok(Self {
            shared,
            instance: Uuid::new_v4(),
            throttle: MemCounters::new(saved),
            jobs: Some(tx),
            writer: Some(writer),
            revocation_load: Mutex::new(None),
        })
    }

    /// The identity stamped into this database when it was created (see
    /// `server::open_store`); `None` for a new (or wiped) database.
    pub fn stamp(&self) -> StoreResult<Option<String>> {
        Ok(self
            .shared
            .trees()?
            .meta
            .get(STAMP)
            .map_err(backend)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Stamp a new database, durably. Only at open, before any operation.
    pub fn set_stamp(&self, id: &str) -> StoreResult<()> {
        let trees = self.shared.trees()?;
        trees.meta.insert(STAMP, id.as_bytes()).map_err(backend)?;
        trees.db.flush().map_err(backend)?;
        Ok(())
    }

    /// Hand an operation to the writer; answers once its batch is on disk.
    async fn write<R: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Tx<'_>) -> StoreResult<R> + Send + 'static,
    ) -> StoreResult<R> {
        if !self.shared.writable.load(Ordering::Acquire) {
            return Err(self.shared.refused());
        }
        let (tx, rx) = oneshot::channel::<StoreResult<R>>();
        let job: Job = Box::new(move |t: Option<&mut Tx<'_>>| {
            let result = match t {
                Some(t) => t.run(op),
                None => Err(StoreError::Conflict),
            };
            Box::new(move |flushed: &Result<(), String>| {
                let answer = match (result, flushed) {
                    (Ok(v), Ok(())) => Ok(v),
                    (_, Err(e)) => Err(StoreError::Backend(e.clone())),
                    (Err(e), Ok(())) => Err(e),
                };
                let _ = tx.send(answer);
            })
        });
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| StoreError::Backend("the store is closed".into()))?;
        let c = &self.shared.counters;
        let now = c.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        c.max_in_flight.fetch_max(now, Ordering::Relaxed);
        let answer = match jobs.send(job).await {
            Ok(()) => rx.await.unwrap_or_else(|_| {
                Err(StoreError::Backend("the store operation was lost".into()))
            }),
            Err(_) => Err(StoreError::Backend("the store writer has stopped".into())),
        };
        c.in_flight.fetch_sub(1, Ordering::Relaxed);
        answer
    }

    /// Run a read on the blocking pool.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Trees) -> StoreResult<R> + Send + 'static,
    ) -> StoreResult<R> {
        let trees = self.shared.trees()?;
        tokio::task::spawn_blocking(move || f(&trees))
            .await
            .map_err(|e| StoreError::Backend(format!("read task: {e}")))?
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}
