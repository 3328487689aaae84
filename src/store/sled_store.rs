//! The sled implementation of [`Store`]. Records are JSON; multi-tree
//! invariants (unique email, refresh rotation, state + outbox) use sled
//! transactions, which retry on conflict and so serialize racing requests.
//!
//! sled 0.34 guards transactions and batches with a process-wide
//! reader/writer lock that readers can take recursively; a writer queued
//! while a flush holds it for reading deadlocks the process (seen under
//! concurrent registrations). [`GATE`] orders our own calls so that sled
//! never sees a writer while any other call of ours is inside sled:
//! transactions and batches are exclusive, everything else (flushes
//! included) is shared. sled's own background flusher, the one caller we
//! cannot gate, is disabled; every acknowledged write is flushed explicitly.

use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;
use uuid::Uuid;

use super::*;

/// Process-wide, like the sled lock it protects (tests run several gateways).
static GATE: parking_lot::RwLock<()> = parking_lot::const_rwlock(());

fn shared() -> parking_lot::RwLockReadGuard<'static, ()> {
    GATE.read_recursive()
}

/// Writers may wait here for a flush (an fsync) to end. On a multi-thread
/// runtime the wait is announced with `block_in_place`, so the worker's
/// other tasks (proxied requests) move to another thread meanwhile.
fn exclusive() -> parking_lot::RwLockWriteGuard<'static, ()> {
    if let Some(g) = GATE.try_write() {
        return g;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| GATE.write())
        }
        _ => GATE.write(),
    }
}

pub struct SledStore {
    db: sled::Db,
    users: sled::Tree,
    emails: sled::Tree,
    sessions: sled::Tree,
    refresh: sled::Tree,
    user_sessions: sled::Tree,
    revoked: sled::Tree,
    cutoffs: sled::Tree,
    one_time: sled::Tree,
    one_time_seq: sled::Tree,
    counters: sled::Tree,
    outbox: sled::Tree,
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing our own plain structs cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A big-endian i64 value (expiries, cutoffs).
fn decode_i64(v: &[u8], what: &str) -> StoreResult<i64> {
    v.try_into()
        .map(i64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt(what.into()))
}

/// A JSON record by key.
fn get_json<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> StoreResult<Option<T>> {
    match tree.get(key).map_err(backend)? {
        Some(v) => Ok(Some(dec(&v)?)),
        None => Ok(None),
    }
}

/// Every JSON record of a tree.
fn list_json<T: DeserializeOwned>(tree: &sled::Tree) -> StoreResult<Vec<T>> {
    tree.iter()
        .map(|kv| kv.map_err(backend).and_then(|(_, v)| dec(&v)))
        .collect()
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn tx_dec<T: DeserializeOwned>(b: &[u8]) -> TxResult<T> {
    dec(b).map_err(ConflictableTransactionError::Abort)
}

fn tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(e),
    }
}

/// The unique-email index key: the whole (already normalized) address
/// case-folded, so `Ops@x.org` and `ops@x.org` are one account while the
/// record keeps the spelling the user chose.
fn email_key(email: &str) -> String {
    email.to_lowercase()
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

impl SledStore {
    pub fn open(path: &Path) -> StoreResult<Self> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(backend)?;
        let t = |name: &str| db.open_tree(name).map_err(backend);
        Ok(Self {
            users: t("users")?,
            emails: t("emails")?,
            sessions: t("sessions")?,
            refresh: t("refresh")?,
            user_sessions: t("user_sessions")?,
            revoked: t("revoked")?,
            cutoffs: t("cutoffs")?,
            one_time: t("one_time")?,
            one_time_seq: t("one_time_seq")?,
            counters: t("counters")?,
            outbox: t("outbox")?,
            db,
        })
    }

    fn put_session_tx(sessions: &TransactionalTree, s: &SessionRecord) -> TxResult<()> {
        sessions.insert(s.id.as_bytes(), enc(s))?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for SledStore {
    fn create_user(&self, user: &User, mail: Option<&OutboxMessage>) -> StoreResult<()> {
        let _gate = exclusive();
        (&self.users, &self.emails, &self.outbox)
            .transaction(|(users, emails, outbox)| {
                let key = email_key(&user.email);
                if emails.get(key.as_bytes())?.is_some() {
                    return Err(ConflictableTransactionError::Abort(StoreError::Conflict));
                }
                emails.insert(key.as_bytes(), user.id.as_bytes())?;
                users.insert(user.id.as_bytes(), enc(user))?;
                if let Some(m) = mail {
                    outbox.insert(m.id.as_bytes(), enc(m))?;
                }
                Ok(())
            })
            .map_err(tx_err)
    }

    fn find_user(&self, id: &Uuid) -> StoreResult<Option<User>> {
        let _gate = shared();
        get_json(&self.users, id.as_bytes())
    }

    fn find_user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let _gate = shared();
        match self
            .emails
            .get(email_key(email).as_bytes())
            .map_err(backend)?
        {
            Some(id) => {
                let id = Uuid::from_slice(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                self.find_user(&id)
            }
            None => Ok(None),
        }
    }

    fn update_user(&self, user: &User, mail: Option<&OutboxMessage>) -> StoreResult<()> {
        let _gate = exclusive();
        (&self.users, &self.outbox)
            .transaction(|(users, outbox)| {
                if users.get(user.id.as_bytes())?.is_none() {
                    return Err(ConflictableTransactionError::Abort(StoreError::Conflict));
                }
                users.insert(user.id.as_bytes(), enc(user))?;
                if let Some(m) = mail {
                    outbox.insert(m.id.as_bytes(), enc(m))?;
                }
                Ok(())
            })
            .map_err(tx_err)
    }

    fn list_users(&self) -> StoreResult<Vec<User>> {
        let _gate = shared();
        let mut out = list_json(&self.users)?;
        out.sort_by_key(|u: &User| u.created_at);
        Ok(out)
    }

    fn create_session(&self, s: &SessionRecord) -> StoreResult<()> {
        let _gate = exclusive();
        (&self.sessions, &self.refresh, &self.user_sessions)
            .transaction(|(sessions, refresh, user_sessions)| {
                Self::put_session_tx(sessions, s)?;
                refresh.insert(s.refresh_hash.as_bytes(), s.id.as_bytes())?;
                user_sessions.insert(user_session_key(&s.user_id, &s.id), &[])?;
                Ok(())
            })
            .map_err(tx_err)
    }

    fn find_session(&self, id: &Uuid) -> StoreResult<Option<SessionRecord>> {
        let _gate = shared();
        get_json(&self.sessions, id.as_bytes())
    }

    fn find_session_by_refresh(&self, hash: &str) -> StoreResult<Option<SessionRecord>> {
        let _gate = shared();
        match self.refresh.get(hash.as_bytes()).map_err(backend)? {
            Some(sid) => {
                let sid = Uuid::from_slice(&sid).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                self.find_session(&sid)
            }
            None => Ok(None),
        }
    }

    fn rotate_refresh(&self, r: &Rotation<'_>) -> StoreResult<RotateOutcome> {
        let _gate = exclusive();
        (&self.sessions, &self.refresh, &self.user_sessions)
            .transaction(|(sessions, refresh, user_sessions)| {
                let Some(sid) = refresh.get(r.presented_hash.as_bytes())? else {
                    return Ok(RotateOutcome::Invalid);
                };
                let Some(raw) = sessions.get(&sid)? else {
                    refresh.remove(r.presented_hash.as_bytes())?;
                    return Ok(RotateOutcome::Invalid);
                };
                let mut s: SessionRecord = tx_dec(&raw)?;
                let remove_all = |s: &SessionRecord| -> TxResult<()> {
                    sessions.remove(s.id.as_bytes())?;
                    refresh.remove(s.refresh_hash.as_bytes())?;
                    for h in &s.previous_hashes {
                        refresh.remove(h.as_bytes())?;
                    }
                    user_sessions.remove(user_session_key(&s.user_id, &s.id))?;
                    Ok(())
                };
                let expired = r.now >= s.expires_at
                    || r.now >= s.last_used_at.saturating_add(r.idle_secs as i64);
                if s.refresh_hash == r.presented_hash {
                    if expired {
                        remove_all(&s)?;
                        return Ok(RotateOutcome::Invalid);
                    }
                    s.previous_hashes.push(std::mem::take(&mut s.refresh_hash));
                    s.refresh_hash = r.new_hash.to_string();
                    s.rotated_at = r.now;
                    s.last_used_at = r.now;
                    s.grace_successor = (r.grace_secs > 0).then(|| r.new_plain.to_string());
                    refresh.insert(r.new_hash.as_bytes(), s.id.as_bytes())?;
                    Self::put_session_tx(sessions, &s)?;
                    return Ok(RotateOutcome::Rotated(s));
                }
                // A previous token.
                let is_last =
                    s.previous_hashes.last().map(String::as_str) == Some(r.presented_hash);
                if is_last
                    && !expired
                    && r.grace_secs > 0
                    && r.now < s.rotated_at.saturating_add(r.grace_secs as i64)
                {
                    if let Some(succ) = s.grace_successor.clone() {
                        return Ok(RotateOutcome::Grace(s, succ));
                    }
                }
                remove_all(&s)?;
                Ok(RotateOutcome::Reused(s))
            })
            .map_err(tx_err)
    }

    fn delete_session(&self, id: &Uuid) -> StoreResult<Option<SessionRecord>> {
        let _gate = exclusive();
        (&self.sessions, &self.refresh, &self.user_sessions)
            .transaction(|(sessions, refresh, user_sessions)| {
                let Some(raw) = sessions.remove(id.as_bytes())? else {
                    return Ok(None);
                };
                let s: SessionRecord = tx_dec(&raw)?;
                refresh.remove(s.refresh_hash.as_bytes())?;
                for h in &s.previous_hashes {
                    refresh.remove(h.as_bytes())?;
                }
                user_sessions.remove(user_session_key(&s.user_id, &s.id))?;
                Ok(Some(s))
            })
            .map_err(tx_err)
    }

    fn list_sessions(&self, user_id: &Uuid) -> StoreResult<Vec<SessionRecord>> {
        let _gate = shared();
        let mut out = Vec::new();
        for kv in self.user_sessions.scan_prefix(user_id.as_bytes()) {
            let (k, _) = kv.map_err(backend)?;
            let sid = Uuid::from_slice(&k[16..]).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if let Some(s) = self.find_session(&sid)? {
                out.push(s);
            }
        }
        out.sort_by_key(|s| s.created_at);
        Ok(out)
    }

    fn revoke(&self, keys: &[(String, i64)]) -> StoreResult<()> {
        let _gate = exclusive();
        let mut batch = sled::Batch::default();
        for (k, exp) in keys {
            batch.insert(k.as_bytes(), &exp.to_be_bytes());
        }
        self.revoked.apply_batch(batch).map_err(backend)
    }

    fn list_revocations(&self) -> StoreResult<Vec<(String, i64)>> {
        let _gate = shared();
        let mut out = Vec::new();
        for kv in self.revoked.iter() {
            let (k, v) = kv.map_err(backend)?;
            let exp = decode_i64(&v, "revocation")?;
            out.push((String::from_utf8_lossy(&k).into_owned(), exp));
        }
        Ok(out)
    }

    fn prune_revocations(&self, now: i64) -> StoreResult<usize> {
        let _gate = exclusive();
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in self.revoked.iter() {
            let (k, v) = kv.map_err(backend)?;
            let exp = decode_i64(&v, "revocation")?;
            if exp <= now {
                batch.remove(k);
                n += 1;
            }
        }
        self.revoked.apply_batch(batch).map_err(backend)?;
        Ok(n)
    }

    fn set_cutoff(&self, user_id: &Uuid, at: i64) -> StoreResult<()> {
        let _gate = shared();
        self.cutoffs
            .insert(user_id.as_bytes(), &at.to_be_bytes())
            .map_err(backend)?;
        Ok(())
    }

    fn list_cutoffs(&self) -> StoreResult<Vec<(Uuid, i64)>> {
        let _gate = shared();
        let mut out = Vec::new();
        for kv in self.cutoffs.iter() {
            let (k, v) = kv.map_err(backend)?;
            let id = Uuid::from_slice(&k).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let at = decode_i64(&v, "cutoff")?;
            out.push((id, at));
        }
        Ok(out)
    }

    fn issue_one_time(
        &self,
        hash: &str,
        token: &OneTimeToken,
        mail: &OutboxMessage,
    ) -> StoreResult<u64> {
        let _gate = exclusive();
        (&self.one_time, &self.one_time_seq, &self.outbox)
            .transaction(|(one_time, seqs, outbox)| {
                let key = seq_key(&token.user_id, token.kind);
                let next = match seqs.get(&key)? {
                    Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])) + 1,
                    None => 1,
                };
                seqs.insert(key, &next.to_be_bytes())?;
                let mut t = token.clone();
                t.issued_seq = next;
                one_time.insert(hash.as_bytes(), enc(&t))?;
                outbox.insert(mail.id.as_bytes(), enc(mail))?;
                Ok(next)
            })
            .map_err(tx_err)
    }

    fn find_one_time(&self, hash: &str) -> StoreResult<Option<OneTimeToken>> {
        let _gate = shared();
        get_json(&self.one_time, hash.as_bytes())
    }

    fn take_one_time(&self, hash: &str) -> StoreResult<Option<OneTimeToken>> {
        let _gate = shared();
        match self.one_time.remove(hash.as_bytes()).map_err(backend)? {
            Some(v) => Ok(Some(dec(&v)?)),
            None => Ok(None),
        }
    }

    fn latest_one_time_seq(&self, user_id: &Uuid, kind: OneTimeKind) -> StoreResult<u64> {
        let _gate = shared();
        Ok(
            match self
                .one_time_seq
                .get(seq_key(user_id, kind))
                .map_err(backend)?
            {
                Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
                None => 0,
            },
        )
    }

    fn load_counters(&self) -> StoreResult<Vec<(String, Counter)>> {
        let _gate = shared();
        let mut out = Vec::new();
        for kv in self.counters.iter() {
            let (k, v) = kv.map_err(backend)?;
            out.push((String::from_utf8_lossy(&k).into_owned(), dec(&v)?));
        }
        Ok(out)
    }

    fn save_counters(&self, counters: &[(String, Option<Counter>)]) -> StoreResult<()> {
        let _gate = exclusive();
        let mut batch = sled::Batch::default();
        for (k, c) in counters {
            match c {
                Some(c) => batch.insert(k.as_bytes(), enc(c)),
                None => batch.remove(k.as_bytes()),
            }
        }
        self.counters.apply_batch(batch).map_err(backend)
    }

    fn enqueue_mail(&self, mail: &OutboxMessage) -> StoreResult<()> {
        let _gate = shared();
        self.outbox
            .insert(mail.id.as_bytes(), enc(mail))
            .map_err(backend)?;
        Ok(())
    }

    fn list_mail(&self) -> StoreResult<Vec<OutboxMessage>> {
        let _gate = shared();
        let mut out = list_json(&self.outbox)?;
        out.sort_by_key(|m: &OutboxMessage| m.created_at);
        Ok(out)
    }

    fn update_mail(&self, mail: &OutboxMessage) -> StoreResult<()> {
        let _gate = shared();
        self.enqueue_mail(mail)
    }

    fn delete_mail(&self, id: &Uuid) -> StoreResult<()> {
        let _gate = shared();
        self.outbox.remove(id.as_bytes()).map_err(backend)?;
        Ok(())
    }

    async fn flush(&self) -> StoreResult<()> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let _gate = shared();
            db.flush().map(drop)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("flush task: {e}")))?
        .map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(email: &str) -> User {
        User {
            id: Uuid::new_v4(),
            email: email.into(),
            username: None,
            password_hash: "x".into(),
            email_verified: false,
            roles: vec![],
            created_at: 1,
            disabled: false,
            password_version: 0,
        }
    }

    #[test]
    fn email_is_unique() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        s.create_user(&user("a@x.org"), None).unwrap();
        assert!(matches!(
            s.create_user(&user("a@x.org"), None),
            Err(StoreError::Conflict)
        ));
        assert_eq!(s.list_users().unwrap().len(), 1);
    }

    #[test]
    fn rotation_detects_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let sess = SessionRecord {
            id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            refresh_hash: "h1".into(),
            previous_hashes: vec![],
            rotated_at: 0,
            grace_successor: None,
            created_at: 0,
            last_used_at: 0,
            expires_at: 1000,
            ip: String::new(),
            user_agent: String::new(),
        };
        s.create_session(&sess).unwrap();
        let rot = |p: &'static str, n: &'static str| Rotation {
            presented_hash: p,
            new_hash: n,
            new_plain: "plain",
            now: 10,
            grace_secs: 0,
            idle_secs: 100,
        };
        assert!(matches!(
            s.rotate_refresh(&rot("h1", "h2")).unwrap(),
            RotateOutcome::Rotated(_)
        ));
        assert!(matches!(
            s.rotate_refresh(&rot("h1", "h3")).unwrap(),
            RotateOutcome::Reused(_)
        ));
        assert!(matches!(
            s.rotate_refresh(&rot("h2", "h4")).unwrap(),
            RotateOutcome::Invalid
        ));
        assert!(s.find_session(&sess.id).unwrap().is_none());
    }
}
