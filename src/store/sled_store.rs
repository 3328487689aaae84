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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::counters::MemCounters;
use super::domain;
use super::*;

/// The most operations one flush acknowledges.
const MAX_BATCH: usize = 512;
/// Operations waiting for the writer, at most (senders wait beyond it).
const QUEUE: usize = 4096;
/// Candidates one sweep looks at per kind of record; the next sweep
/// resumes after the last one (see [`sweep_scan`]).
const SWEEP_SCAN: usize = 20_000;

const INTENT: &[u8] = b"intent";
const STAMP: &[u8] = b"stamp";
/// The token horizon (see [`Store::token_horizon`]): u64, big-endian.
const TOKEN_HORIZON: &[u8] = b"token_horizon";
/// Where the sweep of each tree resumes (`sweep:<tree>`, the last key it
/// looked at): a hint, written without a flush.
const SWEEP_CURSOR: &str = "sweep:";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
enum T {
    Users = 0,
    Emails,
    Sessions,
    UserSessions,
    Revoked,
    Cutoffs,
    OneTime,
    OneTimeSeq,
    Counters,
    Outbox,
}

const TREES: [(T, &str); 10] = [
    (T::Users, "users"),
    (T::Emails, "emails"),
    (T::Sessions, "sessions"),
    (T::UserSessions, "user_sessions"),
    (T::Revoked, "revoked"),
    (T::Cutoffs, "cutoffs"),
    (T::OneTime, "one_time"),
    (T::OneTimeSeq, "one_time_seq"),
    (T::Counters, "counters"),
    (T::Outbox, "outbox"),
];

struct Trees {
    db: sled::Db,
    meta: sled::Tree,
    trees: Vec<sled::Tree>,
}

impl Trees {
    fn tree(&self, t: T) -> &sled::Tree {
        &self.trees[t as usize]
    }

    fn get_json<V: DeserializeOwned>(&self, t: T, key: &[u8]) -> StoreResult<Option<V>> {
        match self.tree(t).get(key).map_err(backend)? {
            Some(v) => Ok(Some(dec(&v)?)),
            None => Ok(None),
        }
    }

    fn list_json<V: DeserializeOwned>(&self, t: T) -> StoreResult<Vec<V>> {
        self.tree(t)
            .iter()
            .map(|kv| kv.map_err(backend).and_then(|(_, v)| dec(&v)))
            .collect()
    }
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn enc<V: Serialize>(v: &V) -> Vec<u8> {
    // Serializing our own plain structs cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn dec<V: DeserializeOwned>(b: &[u8]) -> StoreResult<V> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode_i64(v: &[u8], what: &str) -> StoreResult<i64> {
    v.try_into()
        .map(i64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt(what.into()))
}

fn decode_uuid(v: &[u8]) -> StoreResult<Uuid> {
    Uuid::from_slice(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The unique-email index key: the whole (already normalized) address
/// case-folded, so `Ops@x.org` and `ops@x.org` are one account while the
/// record keeps the spelling the user chose.
fn email_key(email: &str) -> Vec<u8> {
    email.to_lowercase().into_bytes()
}

fn user_session_key(user: &Uuid, sid: &Uuid) -> Vec<u8> {
    let mut k = user.as_bytes().to_vec();
    k.extend_from_slice(sid.as_bytes());
    k
}

fn seq_key(user: &Uuid, kind: OneTimeKind) -> Vec<u8> {
    let mut k = user.as_bytes().to_vec();
    k.push(kind as u8);
    k
}

/// Revocations live in two trees: `revoked` (`jti:<uuid>` / `sid:<uuid>`
/// to the time the entry may go) and `cutoffs` (user id to the cutoff).
fn revocation_entry(r: &Revocation) -> (T, Vec<u8>, i64) {
    match *r {
        Revocation::Token(jti, until) => (T::Revoked, format!("jti:{jti}").into_bytes(), until),
        Revocation::Session(sid, until) => (T::Revoked, format!("sid:{sid}").into_bytes(), until),
        Revocation::Keys(user, until) => (T::Revoked, format!("keys:{user}").into_bytes(), until),
        Revocation::Cutoff(user, at) => (T::Cutoffs, user.as_bytes().to_vec(), at),
    }
}

fn parse_revoked(k: &[u8], v: &[u8]) -> StoreResult<Revocation> {
    let until = decode_i64(v, "revocation")?;
    let k = std::str::from_utf8(k).map_err(|_| StoreError::Corrupt("revocation key".into()))?;
    let id = |s: &str| {
        Uuid::parse_str(s).map_err(|_| StoreError::Corrupt(format!("revocation key {k}")))
    };
    match k.split_once(':') {
        Some(("jti", s)) => Ok(Revocation::Token(id(s)?, until)),
        Some(("sid", s)) => Ok(Revocation::Session(id(s)?, until)),
        Some(("keys", s)) => Ok(Revocation::Keys(id(s)?, until)),
        _ => Err(StoreError::Corrupt(format!("revocation key {k}"))),
    }
}

/// Judges a stored record (key, value) for the sweep.
type IsDead<'a> = &'a dyn Fn(&[u8], &[u8]) -> StoreResult<bool>;

/// Up to `budget` records of `tree`, starting after the key the previous
/// sweep of that tree stopped at and wrapping around at the end, judged by
/// `is_dead`; returns the keys of the dead ones and remembers where it
/// stopped. Every record is looked at within `len / budget + 1` sweeps,
/// however the tree grows (a restart resumes at the remembered key too).
/// Only finds candidates: the writer re-checks each before removing it.
fn sweep_scan(t: &Trees, tree: T, budget: usize, is_dead: IsDead<'_>) -> StoreResult<Vec<Vec<u8>>> {
    use std::ops::Bound;
    let name = TREES
        .iter()
        .find(|(x, _)| *x == tree)
        .map_or("", |(_, n)| n);
    let cursor_key = format!("{SWEEP_CURSOR}{name}").into_bytes();
    let cursor = t.meta.get(&cursor_key).map_err(backend)?;
    let records = t.tree(tree);
    let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = match &cursor {
        None => Box::new(records.iter()),
        Some(c) => Box::new(
            records
                .range::<sled::IVec, _>((Bound::Excluded(c.clone()), Bound::Unbounded))
                .chain(records.range::<sled::IVec, _>(..=c.clone())),
        ),
    };
    let mut out = Vec::new();
    let mut last = None;
    for kv in iter.take(budget) {
        let (k, v) = kv.map_err(backend)?;
        if is_dead(&k, &v)? {
            out.push(k.to_vec());
        }
        last = Some(k);
    }
    match last {
        Some(k) => t.meta.insert(&cursor_key, k).map_err(backend)?,
        None => t.meta.remove(&cursor_key).map_err(backend)?,
    };
    Ok(out)
}

// ----------------------------------------------------------- bulk copies

/// The trees a kind of record lives in, in export order (the indexes,
/// `emails` and `user_sessions`, are rebuilt by an import).
fn trees_of(kind: RecordKind) -> &'static [T] {
    match kind {
        RecordKind::Users => &[T::Users],
        RecordKind::Sessions => &[T::Sessions],
        RecordKind::Revocations => &[T::Revoked, T::Cutoffs],
        RecordKind::OneTimeTokens => &[T::OneTime],
        RecordKind::OneTimeSeqs => &[T::OneTimeSeq],
        RecordKind::Counters => &[T::Counters],
        RecordKind::Mail => &[T::Outbox],
    }
}

fn record_from(t: T, k: &[u8], v: &[u8]) -> StoreResult<Record> {
    let text = |b: &[u8]| {
        String::from_utf8(b.to_vec()).map_err(|_| StoreError::Corrupt("a key is not text".into()))
    };
    Ok(match t {
        T::Users => Record::User(dec(v)?),
        T::Sessions => Record::Session(dec(v)?),
        T::Revoked => Record::Revocation(parse_revoked(k, v)?),
        T::Cutoffs => Record::Revocation(Revocation::Cutoff(
            decode_uuid(k)?,
            decode_i64(v, "cutoff")?,
        )),
        T::OneTime => Record::OneTimeToken {
            hash: text(k)?,
            token: dec(v)?,
        },
        T::OneTimeSeq => {
            let kind = match k.get(16) {
                Some(0) => OneTimeKind::EmailVerify,
                Some(1) => OneTimeKind::PasswordReset,
                Some(2) => OneTimeKind::MfaLogin,
                _ => return Err(StoreError::Corrupt("one-time sequence key".into())),
            };
            Record::OneTimeSeq {
                user_id: decode_uuid(&k[..16])?,
                kind,
                seq: decode_i64(v, "sequence")? as u64,
            }
        }
        T::Counters => Record::Counter {
            key: text(k)?,
            counter: dec(v)?,
        },
        T::Outbox => Record::Mail(dec(v)?),
        T::Emails | T::UserSessions => {
            return Err(StoreError::Corrupt("an index holds no records".into()))
        }
    })
}

/// A page of `kind`. The cursor is the tree's place in [`trees_of`], a
/// colon, and the last key exported, in hex.
fn export_page(
    t: &Trees,
    kind: RecordKind,
    cursor: Option<&str>,
    limit: usize,
) -> StoreResult<Page> {
    let bad = || StoreError::Corrupt("export cursor".into());
    let segments = trees_of(kind);
    let (mut seg, mut after) = match cursor {
        None => (0, None),
        Some(c) => {
            let (i, key) = c.split_once(':').ok_or_else(bad)?;
            (
                i.parse::<usize>().map_err(|_| bad())?,
                Some(
                    data_encoding::HEXLOWER_PERMISSIVE
                        .decode(key.as_bytes())
                        .map_err(|_| bad())?,
                ),
            )
        }
    };
    let limit = limit.max(1);
    let mut records = Vec::new();
    let mut last = None;
    while seg < segments.len() && records.len() < limit {
        let tree = t.tree(segments[seg]);
        let iter = match after.take() {
            Some(k) => {
                tree.range::<Vec<u8>, _>((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded))
            }
            None => tree.iter(),
        };
        for kv in iter.take(limit - records.len()) {
            let (k, v) = kv.map_err(backend)?;
            records.push(record_from(segments[seg], &k, &v)?);
            last = Some((seg, k));
        }
        if records.len() < limit {
            seg += 1;
        }
    }
    let next = match last {
        Some((i, k)) if records.len() == limit => {
            Some(format!("{i}:{}", data_encoding::HEXLOWER.encode(&k)))
        }
        _ => None,
    };
    Ok(Page { records, next })
}

// ---------------------------------------------------------------- writes

/// One pending write: a value, or a removal.
#[derive(Debug, Clone, PartialEq)]
struct Write {
    tree: u8,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

/// The intent record: every write of a batch, length-prefixed.
fn encode_intent(writes: &[Write]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        writes
            .iter()
            .map(|w| 10 + w.key.len() + w.value.as_ref().map_or(0, Vec::len))
            .sum(),
    );
    for w in writes {
        out.push(w.tree);
        out.extend_from_slice(&(w.key.len() as u32).to_be_bytes());
        out.extend_from_slice(&w.key);
        match &w.value {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.push(0),
        }
    }
    out
}

fn decode_intent(mut b: &[u8]) -> StoreResult<Vec<Write>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> StoreResult<&'a [u8]> {
        if b.len() < n {
            return Err(StoreError::Corrupt("truncated intent record".into()));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn len(b: &mut &[u8]) -> StoreResult<usize> {
        let raw = take(b, 4)?;
        Ok(u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize)
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let tree = take(&mut b, 1)?[0];
        if tree as usize >= TREES.len() {
            return Err(StoreError::Corrupt("intent names an unknown tree".into()));
        }
        let n = len(&mut b)?;
        let key = take(&mut b, n)?.to_vec();
        let value = match take(&mut b, 1)?[0] {
            0 => None,
            1 => {
                let n = len(&mut b)?;
                Some(take(&mut b, n)?.to_vec())
            }
            _ => return Err(StoreError::Corrupt("bad intent record".into())),
        };
        out.push(Write { tree, key, value });
    }
    Ok(out)
}

fn apply_writes(trees: &Trees, writes: &[Write]) -> StoreResult<()> {
    for w in writes {
        let tree = &trees.trees[w.tree as usize];
        match &w.value {
            Some(v) => tree.insert(&w.key, v.as_slice()).map(drop),
            None => tree.remove(&w.key).map(drop),
        }
        .map_err(backend)?;
    }
    Ok(())
}

/// The writer's view while it applies a batch: the trees, overlaid with
/// the writes of the operations already applied in this batch and of the
/// operation running now.
struct Tx<'a> {
    trees: &'a Trees,
    batch: Vec<Write>,
    batch_index: BTreeMap<(u8, Vec<u8>), usize>,
    op: Vec<Write>,
    op_index: BTreeMap<(u8, Vec<u8>), usize>,
}

impl<'a> Tx<'a> {
    fn new(trees: &'a Trees) -> Self {
        Self {
            trees,
            batch: Vec::new(),
            batch_index: BTreeMap::new(),
            op: Vec::new(),
            op_index: BTreeMap::new(),
        }
    }

    fn get(&self, t: T, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        let k = (t as u8, key.to_vec());
        if let Some(&i) = self.op_index.get(&k) {
            return Ok(self.op[i].value.clone());
        }
        if let Some(&i) = self.batch_index.get(&k) {
            return Ok(self.batch[i].value.clone());
        }
        Ok(self
            .trees
            .tree(t)
            .get(key)
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn get_json<V: DeserializeOwned>(&self, t: T, key: &[u8]) -> StoreResult<Option<V>> {
        self.get(t, key)?.map(|v| dec(&v)).transpose()
    }

    /// Every key under `prefix`, as the batch so far would leave it.
    fn scan_prefix(&self, t: T, prefix: &[u8]) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for kv in self.trees.tree(t).scan_prefix(prefix) {
            let (k, v) = kv.map_err(backend)?;
            out.insert(k.to_vec(), v.to_vec());
        }
        // The pending writes under the prefix: the batch's, then this op's.
        for (index, writes) in [(&self.batch_index, &self.batch), (&self.op_index, &self.op)] {
            let from = (t as u8, prefix.to_vec());
            for ((tree, key), &i) in index.range(from..) {
                if *tree != t as u8 || !key.starts_with(prefix) {
                    break;
                }
                match &writes[i].value {
                    Some(v) => out.insert(key.clone(), v.clone()),
                    None => out.remove(key),
                };
            }
        }
        Ok(out.into_iter().collect())
    }

    fn put(&mut self, t: T, key: Vec<u8>, value: Vec<u8>) {
        self.write(t, key, Some(value));
    }

    fn put_json<V: Serialize>(&mut self, t: T, key: Vec<u8>, value: &V) {
        self.put(t, key, enc(value));
    }

    fn remove(&mut self, t: T, key: Vec<u8>) {
        self.write(t, key, None);
    }

    fn write(&mut self, t: T, key: Vec<u8>, value: Option<Vec<u8>>) {
        let k = (t as u8, key.clone());
        match self.op_index.get(&k) {
            Some(&i) => self.op[i].value = value,
            None => {
                self.op_index.insert(k, self.op.len());
                self.op.push(Write {
                    tree: t as u8,
                    key,
                    value,
                });
            }
        }
    }

    /// Run one operation: its writes join the batch only if it succeeds.
    fn run<R>(&mut self, f: impl FnOnce(&mut Tx<'_>) -> StoreResult<R>) -> StoreResult<R> {
        let result = f(self);
        let writes = std::mem::take(&mut self.op);
        self.op_index.clear();
        if result.is_ok() {
            for w in writes {
                let k = (w.tree, w.key.clone());
                match self.batch_index.get(&k) {
                    Some(&i) => self.batch[i].value = w.value,
                    None => {
                        self.batch_index.insert(k, self.batch.len());
                        self.batch.push(w);
                    }
                }
            }
        }
        result
    }

    /// Write the batch: intent first, then the writes, then one flush.
    fn commit(&self) -> Result<(), String> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let t = self.trees;
        t.meta
            .insert(INTENT, encode_intent(&self.batch))
            .map_err(|e| e.to_string())?;
        apply_writes(t, &self.batch).map_err(|e| e.to_string())?;
        t.db.flush().map(drop).map_err(|e| e.to_string())
    }

    /// The revocations this batch writes (for a batch whose outcome is
    /// unknown: they are mirrored in memory anyway, failing closed).
    fn batch_revocations(&self) -> Vec<Revocation> {
        let mut out = Vec::new();
        for w in &self.batch {
            let Some(v) = &w.value else { continue };
            if w.tree == T::Revoked as u8 {
                if let Ok(r) = parse_revoked(&w.key, v) {
                    out.push(r);
                }
            } else if w.tree == T::Cutoffs as u8 {
                if let (Ok(u), Ok(at)) = (decode_uuid(&w.key), decode_i64(v, "cutoff")) {
                    out.push(Revocation::Cutoff(u, at));
                }
            }
        }
        out
    }

    // ----- shared pieces of operations

    fn write_revocations(&mut self, revs: &[Revocation]) -> StoreResult<()> {
        for r in revs {
            let (t, key, at) = revocation_entry(r);
            // Cutoffs only move forward.
            let keep = match (t, self.get(t, &key)?) {
                (T::Cutoffs, Some(old)) => decode_i64(&old, "cutoff")?.max(at),
                _ => at,
            };
            self.put(t, key, keep.to_be_bytes().to_vec());
        }
        Ok(())
    }

    /// Write one record as it is (see [`Store::import`]).
    fn import(&mut self, r: Record) -> StoreResult<()> {
        match r {
            Record::User(u) => {
                let key = email_key(&u.email);
                if let Some(owner) = self.get(T::Emails, &key)? {
                    if owner != u.id.as_bytes() {
                        return Err(StoreError::Conflict);
                    }
                }
                if let Some(old) = self.get_json::<User>(T::Users, u.id.as_bytes())? {
                    let old_key = email_key(&old.email);
                    if old_key != key {
                        self.remove(T::Emails, old_key);
                    }
                }
                self.put(T::Emails, key, u.id.as_bytes().to_vec());
                self.put_json(T::Users, u.id.as_bytes().to_vec(), &u);
            }
            Record::Session(s) => {
                self.put(
                    T::UserSessions,
                    user_session_key(&s.user_id, &s.id),
                    Vec::new(),
                );
                self.put_json(T::Sessions, s.id.as_bytes().to_vec(), &s);
            }
            Record::Revocation(r) => self.write_revocations(&[r])?,
            Record::OneTimeToken { hash, token } => {
                self.put_json(T::OneTime, hash.into_bytes(), &token)
            }
            Record::OneTimeSeq { user_id, kind, seq } => {
                let keep = self.newest_seq(&user_id, kind)?.max(seq);
                self.put(
                    T::OneTimeSeq,
                    seq_key(&user_id, kind),
                    (keep as i64).to_be_bytes().to_vec(),
                );
            }
            Record::Counter { key, counter } => {
                self.put_json(T::Counters, key.into_bytes(), &counter)
            }
            Record::Mail(m) => self.put_json(T::Outbox, m.id.as_bytes().to_vec(), &m),
        }
        Ok(())
    }

    fn delete_session(&mut self, s: &SessionRecord) {
        self.remove(T::Sessions, s.id.as_bytes().to_vec());
        self.remove(T::UserSessions, user_session_key(&s.user_id, &s.id));
    }

    fn end_sessions(
        &mut self,
        user: Uuid,
        which: Sessions,
        cutoff: bool,
        stamp: Stamp,
    ) -> StoreResult<Vec<Revocation>> {
        let mut ended = Vec::new();
        let candidates = match which {
            // One session: a direct look-up, whatever else the user has.
            Sessions::One(sid) => {
                let key = user_session_key(&user, &sid);
                match self.get(T::UserSessions, &key)? {
                    Some(_) => vec![key],
                    None => vec![],
                }
            }
            Sessions::All | Sessions::AllBut(_) => self
                .scan_prefix(T::UserSessions, user.as_bytes())?
                .into_iter()
                .map(|(k, _)| k)
                .collect(),
        };
        for k in candidates {
            let sid = decode_uuid(&k[16..])?;
            if domain::selects(which, &sid) {
                self.remove(T::Sessions, sid.as_bytes().to_vec());
                self.remove(T::UserSessions, k);
                ended.push(sid);
            }
        }
        let revs = domain::revocations_for(user, &ended, cutoff, stamp);
        self.write_revocations(&revs)?;
        Ok(revs)
    }

    fn apply_cascade(
        &mut self,
        user: &User,
        cascade: domain::Cascade,
        stamp: Stamp,
    ) -> StoreResult<Vec<Revocation>> {
        let mut revs = match cascade.end {
            Some(which) => self.end_sessions(user.id, which, cascade.cutoff, stamp)?,
            None if cascade.cutoff => {
                let revs = domain::revocations_for(user.id, &[], true, stamp);
                self.write_revocations(&revs)?;
                revs
            }
            None => Vec::new(),
        };
        if let Some(notice) = domain::keys_notice(user.id, cascade, stamp) {
            self.write_revocations(&[notice])?;
            revs.push(notice);
        }
        Ok(revs)
    }

    fn newest_seq(&self, user: &Uuid, kind: OneTimeKind) -> StoreResult<u64> {
        Ok(match self.get(T::OneTimeSeq, &seq_key(user, kind))? {
            Some(v) => decode_i64(&v, "sequence")? as u64,
            None => 0,
        })
    }
}

type Reply = Box<dyn FnOnce(&Result<(), String>) + Send>;
/// An operation for the writer: run against the batch (`Some`), or refused
/// without running (`None`, while writes are failing).
type Job = Box<dyn FnOnce(Option<&mut Tx<'_>>) -> Reply + Send>;

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    ops: AtomicU64,
    max_batch: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    write_failures: AtomicU64,
    recoveries: AtomicU64,
}

/// The first wait between two recovery attempts after a failed write,
/// doubled after each failed attempt up to [`RECOVERY_MAX_WAIT`].
const RECOVERY_FIRST_WAIT: Duration = Duration::from_millis(100);
const RECOVERY_MAX_WAIT: Duration = Duration::from_secs(5);
/// How much free space a recovery attempt proves (written and synced in a
/// scratch file, then removed) before writes resume: a sled segment and
/// then some, so the first batch after recovery does not fail at once.
const RECOVERY_PROBE_BYTES: usize = 2 << 20;
const PROBE_FILE: &str = "space-probe";

/// What the store's handle, its readers and its writer share.
struct Shared {
    path: PathBuf,
    /// sled's page cache, in bytes.
    cache_bytes: u64,
    /// The open database; `None` while it is being reopened after a failed
    /// write (reads then fail, closed).
    current: RwLock<Option<Arc<Trees>>>,
    /// False from a failed write until the database has been reopened from
    /// disk and free space proven: writes are refused at once meanwhile.
    writable: AtomicBool,
    /// Why writes are refused (for `/readyz` and the log).
    failure: Mutex<Option<String>>,
    /// Where the revocations of a batch with an unknown outcome go (the
    /// gateway's in-memory revocation set).
    sink: OnceLock<RevocationSink>,
    counters: Counters,
}

impl Shared {
    fn trees(&self) -> StoreResult<Arc<Trees>> {
        self.current.read().clone().ok_or_else(|| {
            StoreError::Backend("the database is being reopened after a write failure".into())
        })
    }

    fn refused(&self) -> StoreError {
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
fn refuse(job: Job, why: &str) {
    job(None)(&Err(why.to_string()));
}

fn writer_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
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
fn recover(shared: &Shared, rx: &mut mpsc::Receiver<Job>) -> bool {
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

fn try_reopen(shared: &Shared) -> Result<(), String> {
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
fn probe_space(dir: &Path) -> Result<(), String> {
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
fn open_trees(path: &Path, cache_bytes: u64) -> StoreResult<Trees> {
    let db = sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        .mode(sled::Mode::HighThroughput)
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
    Ok(trees)
}

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

#[async_trait::async_trait]
impl Store for SledStore {
    async fn create_user(&self, user: User, mail: Option<OutboxMessage>) -> StoreResult<()> {
        self.write(move |tx| {
            let key = email_key(&user.email);
            if tx.get(T::Emails, &key)?.is_some() {
                return Err(StoreError::Conflict);
            }
            tx.put(T::Emails, key, user.id.as_bytes().to_vec());
            tx.put_json(T::Users, user.id.as_bytes().to_vec(), &user);
            if let Some(m) = mail {
                tx.put_json(T::Outbox, m.id.as_bytes().to_vec(), &m);
            }
            Ok(())
        })
        .await
    }

    async fn find_user(&self, id: Uuid) -> StoreResult<Option<User>> {
        self.read(move |t| t.get_json(T::Users, id.as_bytes()))
            .await
    }

    async fn find_user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let key = email_key(email);
        self.read(
            move |t| match t.tree(T::Emails).get(&key).map_err(backend)? {
                Some(id) => t.get_json(T::Users, &id),
                None => Ok(None),
            },
        )
        .await
    }

    async fn list_users(&self) -> StoreResult<Vec<User>> {
        self.read(|t| {
            let mut out: Vec<User> = t.list_json(T::Users)?;
            out.sort_by_key(|u| u.created_at);
            Ok(out)
        })
        .await
    }

    async fn change_user(
        &self,
        id: Uuid,
        change: UserChange,
        mail: Option<OutboxMessage>,
        stamp: Stamp,
    ) -> StoreResult<Changed> {
        self.write(move |tx| {
            let current: User = tx
                .get_json(T::Users, id.as_bytes())?
                .ok_or(StoreError::Conflict)?;
            let (user, cascade) = domain::apply_user_change(&current, &change)?;
            tx.put_json(T::Users, id.as_bytes().to_vec(), &user);
            let revoked = tx.apply_cascade(&user, cascade, stamp)?;
            if let Some(m) = mail {
                tx.put_json(T::Outbox, m.id.as_bytes().to_vec(), &m);
            }
            Ok(Changed { user, revoked })
        })
        .await
    }

    async fn create_session(
        &self,
        session: SessionRecord,
        expect_password_version: u64,
    ) -> StoreResult<User> {
        self.write(move |tx| {
            let user: User = tx
                .get_json(T::Users, session.user_id.as_bytes())?
                .ok_or(StoreError::Conflict)?;
            domain::check_session_start(&user, expect_password_version)?;
            tx.put_json(T::Sessions, session.id.as_bytes().to_vec(), &session);
            tx.put(
                T::UserSessions,
                user_session_key(&session.user_id, &session.id),
                Vec::new(),
            );
            Ok(user)
        })
        .await
    }

    async fn find_session(&self, id: Uuid) -> StoreResult<Option<SessionRecord>> {
        self.read(move |t| t.get_json(T::Sessions, id.as_bytes()))
            .await
    }

    async fn list_sessions(&self, user_id: Uuid) -> StoreResult<Vec<SessionRecord>> {
        self.read(move |t| {
            let mut out = Vec::new();
            for kv in t.tree(T::UserSessions).scan_prefix(user_id.as_bytes()) {
                let (k, _) = kv.map_err(backend)?;
                let sid = decode_uuid(&k[16..])?;
                if let Some(s) = t.get_json::<SessionRecord>(T::Sessions, sid.as_bytes())? {
                    out.push(s);
                }
            }
            out.sort_by_key(|s| s.created_at);
            Ok(out)
        })
        .await
    }

    async fn rotate_refresh(
        &self,
        id: Uuid,
        presented: u64,
        policy: RefreshPolicy,
    ) -> StoreResult<RotateOutcome> {
        self.write(move |tx| {
            let Some(current) = tx.get_json::<SessionRecord>(T::Sessions, id.as_bytes())? else {
                return Ok(RotateOutcome::Invalid);
            };
            let (next, outcome) = domain::rotate(&current, presented, &policy);
            match next {
                Some(s) if s != current => tx.put_json(T::Sessions, id.as_bytes().to_vec(), &s),
                Some(_) => {}
                None => tx.delete_session(&current),
            }
            if let RotateOutcome::Reused(_, revs) = &outcome {
                tx.write_revocations(revs)?;
            }
            Ok(outcome)
        })
        .await
    }

    async fn end_sessions(
        &self,
        user_id: Uuid,
        which: Sessions,
        cutoff: bool,
        stamp: Stamp,
    ) -> StoreResult<Vec<Revocation>> {
        self.write(move |tx| tx.end_sessions(user_id, which, cutoff, stamp))
            .await
    }

    async fn revoke(&self, entries: Vec<Revocation>) -> StoreResult<()> {
        self.write(move |tx| tx.write_revocations(&entries)).await
    }

    async fn list_revocations(&self) -> StoreResult<Vec<Revocation>> {
        self.read(|t| {
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
        })
        .await
    }

    async fn issue_one_time(
        &self,
        hash: String,
        token: OneTimeToken,
        mail: Option<OutboxMessage>,
    ) -> StoreResult<u64> {
        self.write(move |tx| {
            let next = tx.newest_seq(&token.user_id, token.kind)? + 1;
            tx.put(
                T::OneTimeSeq,
                seq_key(&token.user_id, token.kind),
                (next as i64).to_be_bytes().to_vec(),
            );
            let t = OneTimeToken {
                issued_seq: next,
                ..token
            };
            tx.put_json(T::OneTime, hash.into_bytes(), &t);
            if let Some(mail) = mail {
                tx.put_json(T::Outbox, mail.id.as_bytes().to_vec(), &mail);
            }
            Ok(next)
        })
        .await
    }

    async fn find_one_time(&self, hash: &str) -> StoreResult<Option<OneTimeToken>> {
        let key = hash.as_bytes().to_vec();
        self.read(move |t| t.get_json(T::OneTime, &key)).await
    }

    async fn latest_one_time_seq(&self, user_id: Uuid, kind: OneTimeKind) -> StoreResult<u64> {
        self.read(move |t| {
            Ok(
                match t
                    .tree(T::OneTimeSeq)
                    .get(seq_key(&user_id, kind))
                    .map_err(backend)?
                {
                    Some(v) => decode_i64(&v, "sequence")? as u64,
                    None => 0,
                },
            )
        })
        .await
    }

    async fn redeem(
        &self,
        hash: String,
        redeem: Redeem,
        mail: Option<OutboxMessage>,
        stamp: Stamp,
    ) -> StoreResult<Changed> {
        self.write(move |tx| {
            let key = hash.into_bytes();
            let token: OneTimeToken = tx.get_json(T::OneTime, &key)?.ok_or(StoreError::Conflict)?;
            let current: User = tx
                .get_json(T::Users, token.user_id.as_bytes())?
                .ok_or(StoreError::Conflict)?;
            let newest = tx.newest_seq(&token.user_id, token.kind)?;
            domain::check_redeem(&token, &redeem, &current, newest, stamp.now)?;
            let (user, cascade) = domain::apply_redeem(&current, &redeem)?;
            tx.remove(T::OneTime, key);
            tx.put_json(T::Users, user.id.as_bytes().to_vec(), &user);
            let revoked = tx.apply_cascade(&user, cascade, stamp)?;
            if let Some(m) = mail {
                tx.put_json(T::Outbox, m.id.as_bytes().to_vec(), &m);
            }
            Ok(Changed { user, revoked })
        })
        .await
    }

    async fn hit_counter(
        &self,
        key: &str,
        limit: u32,
        window: u64,
        now: i64,
    ) -> StoreResult<Result<(), u64>> {
        Ok(self.throttle.hit(key, limit, window, now))
    }

    async fn reserve_attempt(
        &self,
        key: &str,
        policy: LockoutPolicy,
        now: i64,
        lease_secs: u64,
    ) -> StoreResult<Result<Lease, u64>> {
        // One process uses this store: a reservation dies with it, so the
        // lease needs no record.
        Ok(self.throttle.reserve(key, &policy, now).map(|()| Lease {
            key: key.to_string(),
            id: Uuid::nil(),
            until: now.saturating_add(lease_secs as i64),
        }))
    }

    async fn settle_attempt(
        &self,
        lease: &Lease,
        policy: LockoutPolicy,
        failed: bool,
        now: i64,
    ) -> StoreResult<bool> {
        Ok(self.throttle.settle(&lease.key, &policy, failed, now))
    }

    async fn clear_counter(&self, key: &str) -> StoreResult<()> {
        self.throttle.clear(key);
        Ok(())
    }

    async fn checkpoint(&self) -> StoreResult<()> {
        let dirty = self.throttle.take_dirty();
        if dirty.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = dirty.iter().map(|(k, _)| k.clone()).collect();
        let written = self
            .write(move |tx| {
                for (k, c) in dirty {
                    match c {
                        Some(c) => tx.put_json(T::Counters, k.into_bytes(), &c),
                        None => tx.remove(T::Counters, k.into_bytes()),
                    }
                }
                Ok(())
            })
            .await;
        if written.is_err() {
            self.throttle.mark_dirty(keys);
        }
        written
    }

    async fn enqueue_mail(&self, mail: OutboxMessage) -> StoreResult<()> {
        self.write(move |tx| {
            tx.put_json(T::Outbox, mail.id.as_bytes().to_vec(), &mail);
            Ok(())
        })
        .await
    }

    async fn list_mail(&self) -> StoreResult<Vec<OutboxMessage>> {
        self.read(|t| {
            let mut out: Vec<OutboxMessage> = t.list_json(T::Outbox)?;
            out.sort_by_key(|m| m.created_at);
            Ok(out)
        })
        .await
    }

    async fn claim_mail(
        &self,
        now: i64,
        lease_secs: u64,
        limit: usize,
    ) -> StoreResult<Vec<OutboxMessage>> {
        // Candidates by a read; the writer claims each one still due.
        let me = self.instance;
        let due: Vec<Vec<u8>> = self
            .read(move |t| {
                let mut out = Vec::new();
                for kv in t.tree(T::Outbox).iter() {
                    let (k, v) = kv.map_err(backend)?;
                    let m: OutboxMessage = dec(&v)?;
                    if domain::claim_mail(&m, now, lease_secs, me, true).is_some() {
                        out.push(k.to_vec());
                    }
                }
                Ok(out)
            })
            .await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut claimed = self
            .write(move |tx| {
                let mut out = Vec::new();
                for k in due {
                    if out.len() >= limit {
                        break;
                    }
                    let Some(m) = tx.get_json::<OutboxMessage>(T::Outbox, &k)? else {
                        continue;
                    };
                    if let Some(leased) = domain::claim_mail(&m, now, lease_secs, me, true) {
                        tx.put_json(T::Outbox, k, &leased);
                        out.push(m);
                    }
                }
                Ok(out)
            })
            .await?;
        claimed.sort_by_key(|m| m.created_at);
        Ok(claimed)
    }

    async fn renew_mail_claim(
        &self,
        id: Uuid,
        now: i64,
        lease_secs: u64,
    ) -> StoreResult<Option<OutboxMessage>> {
        let me = self.instance;
        self.write(move |tx| {
            let key = id.as_bytes().to_vec();
            let Some(current) = tx.get_json::<OutboxMessage>(T::Outbox, &key)? else {
                return Ok(None);
            };
            let renewed = domain::renew_mail_claim(&current, now, lease_secs, me);
            if let Some(m) = &renewed {
                tx.put_json(T::Outbox, key, m);
            }
            Ok(renewed)
        })
        .await
    }

    async fn record_delivery(&self, id: Uuid, delivery: Delivery) -> StoreResult<()> {
        let me = self.instance;
        self.write(move |tx| {
            let key = id.as_bytes().to_vec();
            let Some(current) = tx.get_json::<OutboxMessage>(T::Outbox, &key)? else {
                return Ok(());
            };
            if !domain::delivery_applies(&current, &delivery, me) {
                return Ok(());
            }
            match domain::apply_delivery(&current, &delivery) {
                Some(m) => tx.put_json(T::Outbox, key, &m),
                None => tx.remove(T::Outbox, key),
            }
            Ok(())
        })
        .await
    }

    async fn sweep(&self, r: Retention) -> StoreResult<SweepReport> {
        // Idle counters go from memory; the next checkpoint deletes them.
        let counters = self.throttle.forget_idle(r.now, r.counter_idle_secs);
        // Find candidates with a read (the writer is not held up by the
        // scan), then remove each one that is still dead.
        let candidates = self
            .read(move |t| {
                let dead = |tree: T, is_dead: IsDead<'_>| sweep_scan(t, tree, SWEEP_SCAN, is_dead);
                Ok((
                    dead(T::Sessions, &|_, v| {
                        Ok(domain::session_is_dead(&dec(v)?, &r))
                    })?,
                    dead(T::OneTime, &|_, v| {
                        Ok(domain::one_time_is_dead(&dec(v)?, &r))
                    })?,
                    dead(T::Revoked, &|k, v| {
                        Ok(domain::revocation_is_dead(&parse_revoked(k, v)?, &r))
                    })?,
                    dead(T::Cutoffs, &|k, v| {
                        let rev = Revocation::Cutoff(decode_uuid(k)?, decode_i64(v, "cutoff")?);
                        Ok(domain::revocation_is_dead(&rev, &r))
                    })?,
                    dead(T::Outbox, &|_, v| Ok(domain::mail_is_dead(&dec(v)?, &r)))?,
                ))
            })
            .await?;
        let (sessions, one_time, revoked, cutoffs, mail) = candidates;
        if sessions.len() + one_time.len() + revoked.len() + cutoffs.len() + mail.len() == 0 {
            return Ok(SweepReport {
                counters,
                ..SweepReport::default()
            });
        }
        self.write(move |tx| {
            let mut report = SweepReport {
                counters,
                ..SweepReport::default()
            };
            for k in sessions {
                if let Some(s) = tx.get_json::<SessionRecord>(T::Sessions, &k)? {
                    if domain::session_is_dead(&s, &r) {
                        tx.delete_session(&s);
                        report.sessions += 1;
                    }
                }
            }
            for k in one_time {
                if let Some(t) = tx.get_json::<OneTimeToken>(T::OneTime, &k)? {
                    if domain::one_time_is_dead(&t, &r) {
                        tx.remove(T::OneTime, k);
                        report.one_time += 1;
                    }
                }
            }
            for k in revoked {
                if let Some(v) = tx.get(T::Revoked, &k)? {
                    if domain::revocation_is_dead(&parse_revoked(&k, &v)?, &r) {
                        tx.remove(T::Revoked, k);
                        report.revocations += 1;
                    }
                }
            }
            for k in cutoffs {
                if let Some(v) = tx.get(T::Cutoffs, &k)? {
                    let rev = Revocation::Cutoff(decode_uuid(&k)?, decode_i64(&v, "cutoff")?);
                    if domain::revocation_is_dead(&rev, &r) {
                        tx.remove(T::Cutoffs, k);
                        report.cutoffs += 1;
                    }
                }
            }
            for k in mail {
                if let Some(m) = tx.get_json::<OutboxMessage>(T::Outbox, &k)? {
                    if domain::mail_is_dead(&m, &r) {
                        tx.remove(T::Outbox, k);
                        report.mail += 1;
                    }
                }
            }
            Ok(report)
        })
        .await
    }

    async fn token_horizon(&self, at_least: u64) -> StoreResult<u64> {
        if !self.shared.writable.load(Ordering::Acquire) {
            return Err(self.shared.refused());
        }
        // One key of the meta tree, raised with a compare-and-swap and
        // flushed (sled takes no global lock for either); only ever grows.
        self.read(move |t| {
            let decode = |v: Option<&[u8]>| -> StoreResult<u64> {
                v.map_or(Ok(0), |b| {
                    <[u8; 8]>::try_from(b)
                        .map(u64::from_be_bytes)
                        .map_err(|_| StoreError::Corrupt("token horizon".into()))
                })
            };
            let stored = decode(t.meta.get(TOKEN_HORIZON).map_err(backend)?.as_deref())?;
            if stored >= at_least {
                return Ok(stored);
            }
            let before = t
                .meta
                .fetch_and_update(TOKEN_HORIZON, |v| {
                    let old = v
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map_or(0, u64::from_be_bytes);
                    Some(old.max(at_least).to_be_bytes().to_vec())
                })
                .map_err(backend)?;
            t.db.flush().map_err(backend)?;
            Ok(decode(before.as_deref())?.max(at_least))
        })
        .await
    }

    async fn export(
        &self,
        kind: RecordKind,
        cursor: Option<String>,
        limit: usize,
    ) -> StoreResult<Page> {
        if kind == RecordKind::Counters {
            // Memory is ahead of the tree.
            self.checkpoint().await?;
        }
        self.read(move |t| export_page(t, kind, cursor.as_deref(), limit))
            .await
    }

    async fn import(&self, records: Vec<Record>) -> StoreResult<()> {
        let counters: Vec<(String, Counter)> = records
            .iter()
            .filter_map(|r| match r {
                Record::Counter { key, counter } => Some((key.clone(), *counter)),
                _ => None,
            })
            .collect();
        self.write(move |tx| records.into_iter().try_for_each(|r| tx.import(r)))
            .await?;
        for (key, c) in counters {
            self.throttle.put(key, c);
        }
        Ok(())
    }

    async fn count(&self, kind: RecordKind) -> StoreResult<u64> {
        if kind == RecordKind::Counters {
            self.checkpoint().await?;
        }
        self.read(move |t| Ok(trees_of(kind).iter().map(|&x| t.tree(x).len() as u64).sum()))
            .await
    }

    async fn snapshot(&self) -> StoreResult<Vec<Record>> {
        self.checkpoint().await?;
        // Read by the writer, between two operations: no write is half in
        // it, and it is answered only once everything it saw is on disk.
        self.write(|tx| {
            let mut out = Vec::new();
            for kind in RecordKind::ALL {
                for &tree in trees_of(kind) {
                    for (k, v) in tx.scan_prefix(tree, &[])? {
                        out.push(record_from(tree, &k, &v)?);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        if !self.shared.writable.load(Ordering::Acquire) {
            return Err(self.shared.refused());
        }
        self.read(|t| t.meta.get(INTENT).map(drop).map_err(backend))
            .await
    }

    fn stats(&self) -> StoreStats {
        let c = &self.shared.counters;
        StoreStats {
            commits: c.commits.load(Ordering::Relaxed),
            ops: c.ops.load(Ordering::Relaxed),
            max_batch: c.max_batch.load(Ordering::Relaxed),
            max_in_flight: c.max_in_flight.load(Ordering::Relaxed),
            writable: self.shared.writable.load(Ordering::Acquire),
            write_failures: c.write_failures.load(Ordering::Relaxed),
            recoveries: c.recoveries.load(Ordering::Relaxed),
        }
    }

    fn set_revocation_sink(&self, sink: RevocationSink) {
        let _ = self.shared.sink.set(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intent_records_round_trip() {
        let writes = vec![
            Write {
                tree: T::Users as u8,
                key: b"k1".to_vec(),
                value: Some(b"v1".to_vec()),
            },
            Write {
                tree: T::Outbox as u8,
                key: vec![],
                value: None,
            },
            Write {
                tree: T::Emails as u8,
                key: vec![0; 300],
                value: Some(vec![]),
            },
        ];
        let enc = encode_intent(&writes);
        assert_eq!(decode_intent(&enc).unwrap(), writes);
        for cut in 1..enc.len() {
            assert_ne!(decode_intent(&enc[..cut]).ok(), Some(writes.clone()));
        }
        assert!(decode_intent(&[42, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn an_interrupted_batch_is_completed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let user = Uuid::new_v4();
        {
            // A crash after the intent and the first write of a batch.
            let db = sled::open(dir.path()).unwrap();
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
