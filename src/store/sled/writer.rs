//! The writer thread: group commit, and after a failed write, refusal
//! until the database is reopened from disk (disk-full recovery).

use super::*;

/// The most operations one flush acknowledges.
pub(super) const MAX_BATCH: usize = 512;
/// Operations waiting for the writer, at most (senders wait beyond it).
pub(super) const QUEUE: usize = 4096;

pub(super) type Reply = Box<dyn FnOnce(&Result<(), String>) + Send>;
/// An operation for the writer: run against the batch (`Some`), or refused
/// without running (`None`, while writes are failing).
pub(super) type Job = Box<dyn FnOnce(Option<&mut Tx<'_>>) -> Reply + Send>;

#[derive(Default)]
pub(super) struct Counters {
    pub(super) commits: AtomicU64,
    pub(super) ops: AtomicU64,
    pub(super) max_batch: AtomicU64,
    pub(super) in_flight: AtomicU64,
    pub(super) max_in_flight: AtomicU64,
    pub(super) write_failures: AtomicU64,
    pub(super) recoveries: AtomicU64,
}

/// The first wait between two recovery attempts after a failed write,
/// doubled after each failed attempt up to [`RECOVERY_MAX_WAIT`].
pub(super) const RECOVERY_FIRST_WAIT: Duration = Duration::from_millis(100);
pub(super) const RECOVERY_MAX_WAIT: Duration = Duration::from_secs(5);
/// How much free space a recovery attempt proves (written and synced in a
/// scratch file, then removed) before writes resume: a sled segment and
/// then some, so the first batch after recovery does not fail at once.
pub(super) const RECOVERY_PROBE_BYTES: usize = 2 << 20;
pub(super) const PROBE_FILE: &str = "space-probe";

/// What the store's handle, its readers and its writer share.
pub(super) struct Shared {
    pub(super) path: PathBuf,
    /// sled's page cache, in bytes.
    pub(super) cache_bytes: u64,
    /// The open database; `None` while it is being reopened after a failed
    /// write (reads then fail, closed).
    pub(super) current: RwLock<Option<Arc<Trees>>>,
    /// False from a failed write until the database has been reopened from
    /// disk and free space proven: writes are refused at once meanwhile.
    pub(super) writable: AtomicBool,
    /// Why writes are refused (for `/readyz` and the log).
    pub(super) failure: Mutex<Option<String>>,
    /// Where the revocations of a batch with an unknown outcome go (the
    /// gateway's in-memory revocation set).
    pub(super) sink: OnceLock<RevocationSink>,
    pub(super) counters: Counters,
}

impl Shared {
    pub(super) fn trees(&self) -> StoreResult<Arc<Trees>> {
        self.current.read().clone().ok_or_else(|| {
            StoreError::Backend("the database is being reopened after a write failure".into())
        })
    }

    pub(super) fn refused(&self) -> StoreError {
        StoreError::Backend(match &*self.failure.lock() {
            Some(cause) => format!(
                "writes are failing ({}); recovering",
                cause.trim_start_matches("storage backend: ")
            ),
            None => "writes are failing; recovering".into(),
        })
    }
}

/// Refuse a job without running it.
pub(super) fn refuse(job: Job, why: &str) {
    job(None)(&Err(why.to_string()));
}

pub(super) fn writer_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
    let counters = &shared.counters;
    loop {
        if !shared.writable.load(Ordering::Acquire) && !recover(&shared, &mut rx) {
            break;
        }
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let trees = match shared.trees() {
            Ok(t) => t,
            Err(e) => {
                refuse(first, &e.to_string());
                continue;
            }
        };
        let mut tx = Tx::new(&trees);
        let mut replies: Vec<Reply> = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            // A panicking operation loses only itself (its caller gets an
            // error when its reply is dropped); the writer goes on.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Some(&mut tx))));
            match ran {
                Ok(reply) => replies.push(reply),
                Err(_) => {
                    tx.op.clear();
                    tx.op_index.clear();
                    tracing::error!("a store operation panicked; it was not applied");
                }
            }
            if replies.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let result = tx.commit();
        if let Err(e) = &result {
            // The batch's outcome is unknown (its intent may or may not be
            // on disk), and sled keeps the error for the life of this Db.
            // Before anyone is answered: refuse further writes, take the
            // Db (and the batch's writes in its memory) away from readers,
            // and count its revocations as done (fail closed).
            tracing::error!(cause = %e, "store: writing a batch failed; writes are refused until the database is reopened");
            *shared.failure.lock() = Some(e.clone());
            shared.writable.store(false, Ordering::Release);
            shared.current.write().take();
            counters.write_failures.fetch_add(1, Ordering::Relaxed);
            let revs = tx.batch_revocations();
            if let (Some(sink), false) = (shared.sink.get(), revs.is_empty()) {
                sink(&revs);
            }
        }
        drop(tx);
        drop(trees);
        let n = replies.len() as u64;
        counters.commits.fetch_add(1, Ordering::Relaxed);
        counters.ops.fetch_add(n, Ordering::Relaxed);
        counters.max_batch.fetch_max(n, Ordering::Relaxed);
        for reply in replies {
            reply(&result);
        }
    }
    // Every sender is gone: make sure nothing is left unflushed.
    if let Ok(t) = shared.trees() {
        let _ = t.db.flush();
    }
}

/// After a failed write: drop the poisoned Db, reopen the database from
/// disk (which yields exactly the durable state, a cut-short batch
/// completed from its intent), prove there is free space, then let writes
/// resume. Jobs arriving meanwhile are refused at once. Retries with
/// backoff; false once every sender is gone.
pub(super) fn recover(shared: &Shared, rx: &mut mpsc::Receiver<Job>) -> bool {
    let started = Instant::now();
    let mut wait = RECOVERY_FIRST_WAIT;
    loop {
        // Refuse what queued up; stop when the store is being dropped.
        loop {
            match rx.try_recv() {
                Ok(job) => refuse(job, &shared.refused().to_string()),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        match try_reopen(shared) {
            Ok(()) => {
                *shared.failure.lock() = None;
                shared.writable.store(true, Ordering::Release);
                shared.counters.recoveries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    after_ms = started.elapsed().as_millis() as u64,
                    "store: the database was reopened from disk; writes resume"
                );
                return true;
            }
            Err(e) => {
                tracing::debug!(cause = %e, "store: not recovered yet");
                *shared.failure.lock() = Some(e);
            }
        }
        // Sleep in slices, so queued jobs are refused promptly.
        let until = Instant::now() + wait;
        while Instant::now() < until {
            match rx.try_recv() {
                Ok(job) => refuse(job, &shared.refused().to_string()),
                Err(mpsc::error::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        wait = (wait * 2).min(RECOVERY_MAX_WAIT);
    }
}

pub(super) fn try_reopen(shared: &Shared) -> Result<(), String> {
    if shared.current.read().is_none() {
        // A sled Db holds a lock on its directory until its last handle
        // (a read in flight may hold one) is gone; the open fails until
        // then, and is retried.
        let trees = open_trees(&shared.path, shared.cache_bytes).map_err(|e| e.to_string())?;
        *shared.current.write() = Some(Arc::new(trees));
    }
    probe_space(&shared.path)
}

/// Write, sync and remove a scratch file next to the database.
pub(super) fn probe_space(dir: &Path) -> Result<(), String> {
    use std::io::Write as _;
    let path = dir.join(PROBE_FILE);
    let result = (|| {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&vec![0u8; RECOVERY_PROBE_BYTES])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result.map_err(|e| format!("no free space yet: {e}"))
}

/// Open the database and finish a batch a crash (or a failed write) cut
/// short: its writes are applied again from the intent record, and flushed.
///
/// sled's options for this workload (measured on 1M users, sessions and
/// revocations, `docs/benchmarks.md`, issue 26):
/// - `cache_capacity` (`storage.cache_mb`, 64 MiB): bounds the node cache
///   only. Opening that data dir costs about 260 MiB whatever it is (1, 8
///   or 64 MiB): sled 0.34 keeps its page table for every page in memory;
///   what a start avoids is reading trees whole (the revocation snapshot,
///   the key holders' index), which used to add 200-300 MiB more.
/// - no periodic flush (`flush_every_ms(None)`): the writer flushes once
///   per batch, before answering (group commit), so a timer would only add
///   flushes.
/// - `segment_size` (sled's 512 KiB) and compression are fixed when a
///   database is created (sled refuses to open it with others), so
///   changing them would strand every existing data dir; compression also
///   needs sled's `zstd` feature.
/// - `mode` and `snapshot_after_ops` do nothing in sled 0.34.7 (the first
///   is read nowhere, the second is deprecated as a no-op); `mode` is kept
///   for when they do.
pub(super) fn open_trees(path: &Path, cache_bytes: u64) -> StoreResult<Trees> {
    let db = ::sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        .mode(::sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .open()
        .map_err(backend)?;
    let trees = TREES
        .iter()
        .map(|(_, name)| db.open_tree(name).map_err(backend))
        .collect::<StoreResult<Vec<_>>>()?;
    let trees = Trees {
        meta: db.open_tree("meta").map_err(backend)?,
        trees,
        db,
    };
    if let Some(intent) = trees.meta.get(INTENT).map_err(backend)? {
        apply_writes(&trees, &decode_intent(&intent)?)?;
        trees.db.flush().map_err(backend)?;
    }
    ensure_log(&trees)?;
    ensure_holders(&trees)?;
    Ok(trees)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_batch_is_completed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let user = Uuid::new_v4();
        {
            // A crash after the intent and the first write of a batch.
            let db = ::sled::open(dir.path()).unwrap();
            let writes = vec![
                Write {
                    tree: T::Emails as u8,
                    key: b"a@x.org".to_vec(),
                    value: Some(user.as_bytes().to_vec()),
                },
                Write {
                    tree: T::Users as u8,
                    key: user.as_bytes().to_vec(),
                    value: Some(
                        serde_json::to_vec(&serde_json::json!({
                            "id": user, "email": "a@x.org", "username": null,
                            "password_hash": "h", "email_verified": false, "roles": [],
                            "created_at": 1, "disabled": false, "password_version": 0
                        }))
                        .unwrap(),
                    ),
                },
            ];
            db.open_tree("meta")
                .unwrap()
                .insert(INTENT, encode_intent(&writes))
                .unwrap();
            db.open_tree("emails")
                .unwrap()
                .insert(b"a@x.org", user.as_bytes().to_vec())
                .unwrap();
            db.flush().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        let found = block_on(s.find_user_by_email("a@x.org")).unwrap().unwrap();
        assert_eq!(found.map(|u| u.id), Some(user));
    }
}
