//! The writer's view of a batch ([`Tx`]) and the pieces of operations
//! that several operations share.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Serialize};

use super::*;

/// The writer's view while it applies a batch: the trees, overlaid with
/// the writes of the operations already applied in this batch and of the
/// operation running now.
pub(super) struct Tx<'a> {
    pub(super) trees: &'a Trees,
    pub(super) batch: Vec<Write>,
    pub(super) batch_index: BTreeMap<(u8, Vec<u8>), usize>,
    pub(super) op: Vec<Write>,
    pub(super) op_index: BTreeMap<(u8, Vec<u8>), usize>,
}

impl<'a> Tx<'a> {
    pub(super) fn new(trees: &'a Trees) -> Self {
        Self {
            trees,
            batch: Vec::new(),
            batch_index: BTreeMap::new(),
            op: Vec::new(),
            op_index: BTreeMap::new(),
        }
    }

    pub(super) fn get(&self, t: T, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
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

    pub(super) fn get_json<V: DeserializeOwned>(&self, t: T, key: &[u8]) -> StoreResult<Option<V>> {
        self.get(t, key)?.map(|v| dec(&v)).transpose()
    }

    /// Every key under `prefix`, as the batch so far would leave it.
    pub(super) fn scan_prefix(&self, t: T, prefix: &[u8]) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
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

    pub(super) fn put(&mut self, t: T, key: Vec<u8>, value: Vec<u8>) {
        self.write(t, key, Some(value));
    }

    pub(super) fn put_json<V: Serialize>(&mut self, t: T, key: Vec<u8>, value: &V) {
        self.put(t, key, enc(value));
    }

    pub(super) fn remove(&mut self, t: T, key: Vec<u8>) {
        self.write(t, key, None);
    }

    pub(super) fn write(&mut self, t: T, key: Vec<u8>, value: Option<Vec<u8>>) {
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
    pub(super) fn run<R>(
        &mut self,
        f: impl FnOnce(&mut Tx<'_>) -> StoreResult<R>,
    ) -> StoreResult<R> {
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
    pub(super) fn commit(&self) -> Result<(), String> {
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
    pub(super) fn batch_revocations(&self) -> Vec<Revocation> {
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

    pub(super) fn write_revocations(&mut self, revs: &[Revocation]) -> StoreResult<()> {
        for r in revs {
            let (t, key, at) = revocation_entry(r);
            // Cutoffs only move forward.
            let keep = match (t, self.get(t, &key)?) {
                (T::Cutoffs, Some(old)) => decode_i64(&old, "cutoff")?.max(at),
                _ => at,
            };
            self.put(t, key, keep.to_be_bytes().to_vec());
            log_revocation(self, r)?;
        }
        Ok(())
    }

    /// Write one record as it is (see [`Store::import`]).
    pub(super) fn import(&mut self, r: Record) -> StoreResult<()> {
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
                self.put_user(&u);
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
            Record::Identity(l) => {
                let key = crate::store::identities::identity_key(&l.provider, &l.subject);
                if let Some(old) = self.get_json::<LinkedIdentity>(T::Identities, &key)? {
                    self.remove(
                        T::UserIdentities,
                        user_identity_key(&old.user_id, &old.provider),
                    );
                }
                self.put(
                    T::UserIdentities,
                    user_identity_key(&l.user_id, &l.provider),
                    key.clone(),
                );
                self.put_json(T::Identities, key, &l);
            }
            Record::Audit(r) => {
                let head: AuditHead = self.get_json(T::AuditHead, AUDIT_ONE)?.unwrap_or_default();
                if r.seq > head.seq {
                    self.put_json(T::AuditHead, AUDIT_ONE.to_vec(), &r.head());
                }
                self.put_audit(&r);
            }
            Record::AuditCheckpoint(c) => {
                let head: AuditHead = self.get_json(T::AuditHead, AUDIT_ONE)?.unwrap_or_default();
                if c.seq > head.seq {
                    let head = AuditHead {
                        seq: c.seq,
                        hash: c.hash.clone(),
                    };
                    self.put_json(T::AuditHead, AUDIT_ONE.to_vec(), &head);
                }
                self.put_json(T::AuditCheckpoint, AUDIT_ONE.to_vec(), &c);
            }
        }
        Ok(())
    }

    /// Write everything a change causes (see [`Effects`]), in its batch.
    pub(super) fn apply_effects(&mut self, effects: Effects) -> StoreResult<()> {
        for m in effects.outbox {
            self.put_json(T::Outbox, m.id.as_bytes().to_vec(), &m);
        }
        self.append_audit(effects.audit)
    }

    /// Link events after the chain's head (read and written in this
    /// operation: the writer runs one operation at a time).
    pub(super) fn append_audit(&mut self, events: Vec<AuditEvent>) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut head: AuditHead = self.get_json(T::AuditHead, AUDIT_ONE)?.unwrap_or_default();
        for e in events {
            let r = crate::audit::chain::link(&head, e);
            self.put_audit(&r);
            head = r.head();
        }
        self.put_json(T::AuditHead, AUDIT_ONE.to_vec(), &head);
        Ok(())
    }

    /// One record and its index entries.
    pub(super) fn put_audit(&mut self, r: &AuditRecord) {
        self.put_json(T::Audit, audit_key(r.seq), r);
        if let Some(u) = r.event.user_id {
            self.put(T::AuditByUser, audit_user_key(&u, r.seq), Vec::new());
        }
        self.put(
            T::AuditByTime,
            audit_time_key(r.event.at, r.seq),
            Vec::new(),
        );
    }

    pub(super) fn remove_audit(&mut self, r: &AuditRecord) {
        self.remove(T::Audit, audit_key(r.seq));
        if let Some(u) = r.event.user_id {
            self.remove(T::AuditByUser, audit_user_key(&u, r.seq));
        }
        self.remove(T::AuditByTime, audit_time_key(r.event.at, r.seq));
    }

    pub(super) fn delete_session(&mut self, s: &SessionRecord) {
        self.remove(T::Sessions, s.id.as_bytes().to_vec());
        self.remove(T::UserSessions, user_session_key(&s.user_id, &s.id));
    }

    pub(super) fn end_sessions(
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
                // A client session's back-channel logout is queued with its end.
                if let Some(s) = self.get_json::<SessionRecord>(T::Sessions, sid.as_bytes())? {
                    if let Some(m) = domain::backchannel_notice(&s, stamp.now) {
                        self.put_json(T::Outbox, m.id.as_bytes().to_vec(), &m);
                    }
                }
                self.remove(T::Sessions, sid.as_bytes().to_vec());
                self.remove(T::UserSessions, k);
                ended.push(sid);
            }
        }
        let revs = domain::revocations_for(user, &ended, cutoff, stamp);
        self.write_revocations(&revs)?;
        Ok(revs)
    }

    pub(super) fn apply_cascade(
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

    pub(super) fn newest_seq(&self, user: &Uuid, kind: OneTimeKind) -> StoreResult<u64> {
        Ok(match self.get(T::OneTimeSeq, &seq_key(user, kind))? {
            Some(v) => decode_i64(&v, "sequence")? as u64,
            None => 0,
        })
    }
}
