//! The revocation log and snapshot: how a start gets every revocation
//! without reading the `revoked` tree whole (a million entries read through
//! sled cost seconds and leave hundreds of MB in its node cache; issue 26).
//!
//! Every revocation the writer stores is also appended to the
//! `revocation_log` tree under the next sequence number, in the same batch
//! (so under the same intent record: both or neither). The maintenance
//! sweep writes [`SNAPSHOT_FILE`] beside the database: every live
//! revocation up to a sequence number, 25 bytes each, with a SHA-256 of the
//! whole file; then it trims the log up to that number. A start reads the
//! snapshot and the log after it.
//!
//! The trees stay the source of truth. A snapshot of another log (another
//! or a recreated database), one that claims more than the log ever held,
//! one whose following log entries were trimmed already, a torn or corrupt
//! file: each is ignored and the trees are read whole, as before (and the
//! next sweep writes a good snapshot). An older binary does not log its
//! revocations: after running one on this data dir, delete the snapshot.

use std::io::{BufReader, BufWriter, Read, Write as _};

use super::*;

/// The snapshot, in the database's directory.
pub const SNAPSHOT_FILE: &str = "revocations.snapshot";
const MAGIC: &[u8; 8] = b"PCRVSNP1";
const ENTRY: usize = 25;
/// Keys of the `revocation_log_state` tree.
const NEXT: &[u8] = b"next";
const EPOCH: &[u8] = b"epoch";
const FLOOR: &[u8] = b"floor";
/// Log entries one writer operation trims.
const TRIM_CHUNK: usize = 10_000;

/// How the last [`Store::list_revocations`] got its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationLoad {
    /// From the snapshot, completed with this many log entries after it.
    Snapshot { entries: usize, from_log: usize },
    /// By reading the trees whole (no usable snapshot).
    FullScan { entries: usize },
}

/// Which log (a random id made with it), the next sequence number, and up
/// to which number entries may have been trimmed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct LogState {
    epoch: u128,
    next: u64,
    floor: u64,
}

impl LogState {
    fn last(&self) -> u64 {
        self.next.saturating_sub(1)
    }
}

fn u64_of(v: Option<Vec<u8>>, what: &str) -> StoreResult<u64> {
    v.map_or(Ok(0), |b| decode_i64(&b, what).map(|x| x as u64))
}

/// Give the log its id, once (at open, before the writer starts).
pub(super) fn ensure_log(t: &Trees) -> StoreResult<()> {
    let state = t.tree(T::LogState);
    if state.get(EPOCH).map_err(backend)?.is_none() {
        state
            .insert(EPOCH, &Uuid::new_v4().as_u128().to_be_bytes())
            .map_err(backend)?;
        t.db.flush().map_err(backend)?;
    }
    Ok(())
}

/// The log's state as the writer sees it (between two operations).
pub(super) fn log_state(tx: &Tx<'_>) -> StoreResult<LogState> {
    let epoch = tx
        .get(T::LogState, EPOCH)?
        .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
        .map(u128::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("revocation log id".into()))?;
    Ok(LogState {
        epoch,
        next: u64_of(tx.get(T::LogState, NEXT)?, "revocation log")?.max(1),
        floor: u64_of(tx.get(T::LogState, FLOOR)?, "revocation log")?,
    })
}

/// Append `r` to the log (inside the operation that stores it).
pub(super) fn log_revocation(tx: &mut Tx<'_>, r: &Revocation) -> StoreResult<()> {
    let next = u64_of(tx.get(T::LogState, NEXT)?, "revocation log")?.max(1);
    tx.put(T::RevLog, next.to_be_bytes().to_vec(), encode(r).to_vec());
    tx.put(
        T::LogState,
        NEXT.to_vec(),
        ((next + 1) as i64).to_be_bytes().to_vec(),
    );
    Ok(())
}

fn encode(r: &Revocation) -> [u8; ENTRY] {
    let (kind, id, at) = match *r {
        Revocation::Token(id, at) => (0, id, at),
        Revocation::Session(id, at) => (1, id, at),
        Revocation::Cutoff(id, at) => (2, id, at),
        Revocation::Keys(id, at) => (3, id, at),
    };
    let mut out = [0u8; ENTRY];
    out[0] = kind;
    out[1..17].copy_from_slice(id.as_bytes());
    out[17..].copy_from_slice(&at.to_be_bytes());
    out
}

fn decode(b: &[u8]) -> Option<Revocation> {
    if b.len() != ENTRY {
        return None;
    }
    let id = Uuid::from_slice(&b[1..17]).ok()?;
    let at = i64::from_be_bytes(b[17..].try_into().ok()?);
    Some(match b[0] {
        0 => Revocation::Token(id, at),
        1 => Revocation::Session(id, at),
        2 => Revocation::Cutoff(id, at),
        3 => Revocation::Keys(id, at),
        _ => return None,
    })
}

/// Every revocation, read from the trees.
pub(super) fn scan_all(t: &Trees) -> StoreResult<Vec<Revocation>> {
    let mut out = Vec::new();
    for kv in t.tree(T::Revoked).iter() {
        let (k, v) = kv.map_err(backend)?;
        out.push(parse_revoked(&k, &v)?);
    }
    for kv in t.tree(T::Cutoffs).iter() {
        let (k, v) = kv.map_err(backend)?;
        out.push(Revocation::Cutoff(
            decode_uuid(&k)?,
            decode_i64(&v, "cutoff")?,
        ));
    }
    Ok(out)
}

/// The log's entries after `after`, up to `last`.
fn read_log(t: &Trees, after: u64, last: u64) -> StoreResult<Vec<Revocation>> {
    let mut out = Vec::new();
    let from = (after + 1).to_be_bytes();
    for kv in t.tree(T::RevLog).range(from..=last.to_be_bytes()) {
        let (_, v) = kv.map_err(backend)?;
        out.push(decode(&v).ok_or_else(|| StoreError::Corrupt("revocation log entry".into()))?);
    }
    Ok(out)
}

/// The snapshot's sequence number and entries, if the file is whole and
/// belongs to this log, and the log still holds everything after it.
fn read_snapshot(path: &Path, state: &LogState) -> Option<(u64, Vec<Revocation>)> {
    let file = std::fs::File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let mut r = BufReader::with_capacity(1 << 16, file);
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut head = [0u8; 40];
    r.read_exact(&mut head).ok()?;
    hash.update(&head);
    let epoch = u128::from_be_bytes(head[8..24].try_into().ok()?);
    let seq = u64::from_be_bytes(head[24..32].try_into().ok()?);
    let count = u64::from_be_bytes(head[32..40].try_into().ok()?);
    let usable = &head[..8] == MAGIC
        && epoch == state.epoch
        && seq <= state.last()
        && state.floor <= seq
        && Some(size) == count.checked_mul(ENTRY as u64).map(|n| n + 40 + 32);
    if !usable {
        return None;
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut e = [0u8; ENTRY];
    for _ in 0..count {
        r.read_exact(&mut e).ok()?;
        hash.update(&e);
        out.push(decode(&e)?);
    }
    let mut sum = [0u8; 32];
    r.read_exact(&mut sum).ok()?;
    (hash.finish().as_ref() == sum).then_some((seq, out))
}

/// Write the snapshot whole beside the old one, then put it in place.
fn write_snapshot(
    path: &Path,
    state: &LogState,
    seq: u64,
    entries: &[Revocation],
) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut w = BufWriter::with_capacity(1 << 16, std::fs::File::create(&tmp)?);
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut head = Vec::with_capacity(40);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&state.epoch.to_be_bytes());
    head.extend_from_slice(&seq.to_be_bytes());
    head.extend_from_slice(&(entries.len() as u64).to_be_bytes());
    hash.update(&head);
    w.write_all(&head)?;
    for r in entries {
        let e = encode(r);
        hash.update(&e);
        w.write_all(&e)?;
    }
    w.write_all(hash.finish().as_ref())?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// One entry per revoked id (the latest time), the live ones only.
fn compact(mut all: Vec<Revocation>, r: &Retention) -> Vec<Revocation> {
    let key = |x: &Revocation| {
        let e = encode(x);
        (
            e[0],
            u128::from_be_bytes(e[1..17].try_into().unwrap_or_default()),
        )
    };
    let at = |x: &Revocation| match *x {
        Revocation::Token(_, t)
        | Revocation::Session(_, t)
        | Revocation::Cutoff(_, t)
        | Revocation::Keys(_, t) => t,
    };
    // Latest first within an id, so dedup keeps it.
    all.sort_unstable_by_key(|x| (key(x), std::cmp::Reverse(at(x))));
    all.dedup_by_key(|x| key(x));
    all.retain(|x| !domain::revocation_is_dead(x, r));
    all.shrink_to_fit();
    all
}

impl SledStore {
    fn snapshot_path(&self) -> PathBuf {
        self.shared.path.join(SNAPSHOT_FILE)
    }

    /// Every revocation: the snapshot and the log after it, else the trees.
    pub(super) async fn load_revocations(&self) -> StoreResult<Vec<Revocation>> {
        // Read at the writer, so every entry up to `last` is applied.
        let state = self.write(|tx| log_state(tx)).await?;
        let path = self.snapshot_path();
        let (out, how) = self
            .read(move |t| {
                if let Some((seq, mut entries)) = read_snapshot(&path, &state) {
                    let tail = read_log(t, seq, state.last())?;
                    let from_log = tail.len();
                    entries.extend(tail);
                    let how = RevocationLoad::Snapshot {
                        entries: entries.len(),
                        from_log,
                    };
                    return Ok((entries, how));
                }
                let all = scan_all(t)?;
                let how = RevocationLoad::FullScan { entries: all.len() };
                Ok((all, how))
            })
            .await?;
        *self.revocation_load.lock() = Some(how);
        Ok(out)
    }

    /// Bring the snapshot up to the end of the log, then trim the log (the
    /// maintenance sweep calls it); false when it was up to date.
    pub(super) async fn refresh_snapshot(&self, r: Retention) -> StoreResult<bool> {
        let state = self.write(|tx| log_state(tx)).await?;
        let path = self.snapshot_path();
        let last = state.last();
        let written = self
            .read(move |t| {
                let (mut all, seq) = match read_snapshot(&path, &state) {
                    // Up to date with the log, but the sweep may have
                    // removed entries from the trees since: a snapshot that
                    // still holds a dead one is written again without it,
                    // so the store and a start see the same set.
                    Some((seq, entries)) if seq == last => {
                        if !entries.iter().any(|x| domain::revocation_is_dead(x, &r)) {
                            return Ok(false);
                        }
                        (entries, seq)
                    }
                    Some((seq, entries)) => (entries, seq),
                    // Everything up to `last` is in the trees.
                    None => (scan_all(t)?, last),
                };
                all.extend(read_log(t, seq, last)?);
                let all = compact(all, &r);
                write_snapshot(&path, &state, last, &all)
                    .map_err(|e| StoreError::Backend(format!("writing {SNAPSHOT_FILE}: {e}")))?;
                Ok(true)
            })
            .await?;
        if written {
            self.trim_log(last).await?;
        }
        Ok(written)
    }

    /// Drop the log's entries up to `last` (the snapshot holds them).
    async fn trim_log(&self, last: u64) -> StoreResult<()> {
        loop {
            let trimmed = self
                .write(move |tx| {
                    let floor = u64_of(tx.get(T::LogState, FLOOR)?, "revocation log")?;
                    if floor < last {
                        tx.put(
                            T::LogState,
                            FLOOR.to_vec(),
                            (last as i64).to_be_bytes().to_vec(),
                        );
                    }
                    let keys: Vec<Vec<u8>> = tx
                        .trees
                        .tree(T::RevLog)
                        .range(..=last.to_be_bytes())
                        .keys()
                        .take(TRIM_CHUNK)
                        .map(|k| k.map(|k| k.to_vec()).map_err(backend))
                        .collect::<StoreResult<_>>()?;
                    let n = keys.len();
                    for k in keys {
                        tx.remove(T::RevLog, k);
                    }
                    Ok(n)
                })
                .await?;
            if trimmed < TRIM_CHUNK {
                return Ok(());
            }
        }
    }

    /// How the last start read the revocations (for tests and the log).
    pub fn revocation_load(&self) -> Option<RevocationLoad> {
        *self.revocation_load.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_compact_keeps_the_latest_live_one() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        for r in [
            Revocation::Token(a, 5),
            Revocation::Session(a, -1),
            Revocation::Cutoff(b, i64::MAX),
            Revocation::Keys(b, 0),
        ] {
            assert_eq!(decode(&encode(&r)), Some(r));
        }
        assert_eq!(decode(&[9; ENTRY]), None);
        let r = Retention {
            now: 1_000,
            idle_secs: 0,
            failed_mail_secs: 0,
            revocation_horizon: 1_000,
            counter_idle_secs: 0,
        };
        let kept = compact(
            vec![
                Revocation::Token(a, 2_000),
                Revocation::Token(a, 3_000),
                Revocation::Session(a, 2_000),
                Revocation::Token(b, 10),
            ],
            &r,
        );
        assert!(kept.contains(&Revocation::Token(a, 3_000)));
        assert!(kept.contains(&Revocation::Session(a, 2_000)));
        assert!(!kept
            .iter()
            .any(|x| matches!(x, Revocation::Token(id, _) if *id == b)));
        assert_eq!(kept.len(), 2);
    }
}
