//! The [`Store`] operations of [`SledStore`]: writes go to the writer as
//! closures over [`Tx`], reads run on the blocking pool.

use super::*;

/// Candidates one sweep looks at per kind of record; the next sweep
/// resumes after the last one (see [`sweep_scan`]).
const SWEEP_SCAN: usize = 20_000;
/// The token horizon (see [`Store::token_horizon`]): u64, big-endian.
const TOKEN_HORIZON: &[u8] = b"token_horizon";

#[async_trait::async_trait]
impl Store for SledStore {
    async fn create_user_with(&self, user: User, effects: Effects) -> StoreResult<()> {
        self.write(move |tx| {
            let key = email_key(&user.email);
            if tx.get(T::Emails, &key)?.is_some() {
                return Err(StoreError::Conflict);
            }
            tx.put(T::Emails, key, user.id.as_bytes().to_vec());
            tx.put_user(&user);
            tx.apply_effects(effects)
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

    async fn search_users_by_email(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<User>> {
        use std::ops::Bound;
        let prefix = email_key(prefix);
        let after = after.map(email_key);
        self.read(move |t| {
            // The index is ordered by address: start at the prefix (or just
            // after the previous page) and stop at the first key past it.
            let start = match after {
                Some(a) if a >= prefix => Bound::Excluded(a),
                _ => Bound::Included(prefix.clone()),
            };
            let mut out = Vec::new();
            for kv in t
                .tree(T::Emails)
                .range::<Vec<u8>, _>((start, Bound::Unbounded))
            {
                let (key, id) = kv.map_err(backend)?;
                if !key.starts_with(&prefix) || out.len() >= limit {
                    break;
                }
                if let Some(u) = t.get_json::<User>(T::Users, &id)? {
                    out.push(u);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn change_user_with(
        &self,
        id: Uuid,
        change: UserChange,
        effects: Effects,
        stamp: Stamp,
    ) -> StoreResult<Changed> {
        self.write(move |tx| {
            let current: User = tx
                .get_json(T::Users, id.as_bytes())?
                .ok_or(StoreError::Conflict)?;
            let (user, cascade) = domain::apply_user_change(&current, &change)?;
            tx.put_user(&user);
            let revoked = tx.apply_cascade(&user, cascade, stamp)?;
            tx.apply_effects(effects)?;
            Ok(Changed { user, revoked })
        })
        .await
    }

    async fn link_identity(
        &self,
        link: LinkedIdentity,
        new_user: Option<User>,
        effects: Effects,
    ) -> StoreResult<LinkOutcome> {
        self.op_link_identity(link, new_user, effects).await
    }

    async fn find_identity(
        &self,
        provider: &str,
        subject: &str,
    ) -> StoreResult<Option<LinkedIdentity>> {
        self.op_find_identity(provider, subject).await
    }

    async fn list_identities(&self, user_id: Uuid) -> StoreResult<Vec<LinkedIdentity>> {
        self.op_list_identities(user_id).await
    }

    async fn unlink_identity(
        &self,
        user_id: Uuid,
        provider: &str,
        effects: Effects,
    ) -> StoreResult<UnlinkOutcome> {
        self.op_unlink_identity(user_id, provider.to_string(), effects)
            .await
    }

    async fn create_session_with(
        &self,
        session: SessionRecord,
        expect_password_version: u64,
        effects: Effects,
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
            tx.apply_effects(effects)?;
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

    async fn rotate_refresh_with(
        &self,
        id: Uuid,
        presented: u64,
        policy: RefreshPolicy,
        effects: Effects,
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
                if let Some(m) = domain::backchannel_notice(&current, policy.now) {
                    tx.put_json(T::Outbox, m.id.as_bytes().to_vec(), &m);
                }
            }
            tx.apply_effects(domain::refresh_effects(&outcome, effects))?;
            Ok(outcome)
        })
        .await
    }

    async fn end_sessions_with(
        &self,
        user_id: Uuid,
        which: Sessions,
        cutoff: bool,
        stamp: Stamp,
        effects: Effects,
    ) -> StoreResult<Vec<Revocation>> {
        self.write(move |tx| {
            let revs = tx.end_sessions(user_id, which, cutoff, stamp)?;
            if !revs.is_empty() {
                tx.apply_effects(effects)?;
            }
            Ok(revs)
        })
        .await
    }

    async fn revoke(&self, entries: Vec<Revocation>) -> StoreResult<()> {
        self.write(move |tx| tx.write_revocations(&entries)).await
    }

    async fn list_revocations(&self) -> StoreResult<Vec<Revocation>> {
        self.load_revocations().await
    }

    async fn api_key_holders(&self) -> StoreResult<Option<Vec<User>>> {
        self.read(|t| key_holders(t).map(Some)).await
    }

    async fn issue_one_time_with(
        &self,
        hash: String,
        token: OneTimeToken,
        effects: Effects,
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
            tx.apply_effects(effects)?;
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

    async fn redeem_with(
        &self,
        hash: String,
        redeem: Redeem,
        effects: Effects,
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
            tx.put_user(&user);
            let revoked = tx.apply_cascade(&user, cascade, stamp)?;
            tx.apply_effects(domain::for_user(effects, user.id))?;
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
        let report = self.sweep_records(r).await?;
        // The maintenance task's other half: the revocation snapshot a
        // start reads (a failure leaves the last one, still valid).
        if let Err(e) = self.refresh_snapshot(r).await {
            tracing::warn!(cause = %e, "store: writing the revocation snapshot");
        }
        Ok(report)
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

    async fn append_audit(&self, events: Vec<AuditEvent>) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.write(move |tx| tx.append_audit(events)).await
    }

    async fn audit_page(&self, after: u64, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        self.read(move |t| {
            let mut out = Vec::new();
            let from = audit_key(after.saturating_add(1));
            for kv in t.tree(T::Audit).range(from..).take(limit) {
                let (_, v) = kv.map_err(backend)?;
                out.push(dec(&v)?);
            }
            Ok(out)
        })
        .await
    }

    async fn audit_since(&self, since: i64, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        self.read(move |t| {
            let mut seqs = Vec::new();
            for kv in t.tree(T::AuditByTime).range(audit_time_key(since, 0)..) {
                let (k, _) = kv.map_err(backend)?;
                let seq = k
                    .get(8..16)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| StoreError::Corrupt("audit time key".into()))?;
                seqs.push(seq);
                if seqs.len() >= limit {
                    break;
                }
            }
            // Chain order (times of records written together may tie).
            seqs.sort_unstable();
            let mut out = Vec::new();
            for seq in seqs {
                if let Some(r) = t.get_json(T::Audit, &audit_key(seq))? {
                    out.push(r);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn audit_for_user(&self, user_id: Uuid, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        self.read(move |t| {
            let mut out = Vec::new();
            for kv in t
                .tree(T::AuditByUser)
                .scan_prefix(user_id.as_bytes())
                .rev()
                .take(limit)
            {
                let (k, _) = kv.map_err(backend)?;
                let seq = k
                    .get(16..24)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| StoreError::Corrupt("audit user key".into()))?;
                if let Some(r) = t.get_json(T::Audit, &audit_key(seq))? {
                    out.push(r);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn audit_state(&self) -> StoreResult<AuditState> {
        self.read(|t| {
            Ok(AuditState {
                head: t.get_json(T::AuditHead, AUDIT_ONE)?.unwrap_or_default(),
                checkpoint: t.get_json(T::AuditCheckpoint, AUDIT_ONE)?,
            })
        })
        .await
    }

    async fn audit_trim(&self, checkpoint: AuditCheckpoint) -> StoreResult<u64> {
        // The records to remove, by a read; the writer removes them (in
        // bounded steps) and keeps the checkpoint with the first step.
        let upto = checkpoint.seq;
        let mut removed = 0;
        let mut checkpoint = Some(checkpoint);
        loop {
            let page = self.audit_page(0, 1000).await?;
            let doomed: Vec<AuditRecord> = page.into_iter().filter(|r| r.seq <= upto).collect();
            let done = doomed.len() < 1000;
            let cp = checkpoint.take();
            if doomed.is_empty() && cp.is_none() {
                break;
            }
            removed += doomed.len() as u64;
            self.write(move |tx| {
                if let Some(cp) = cp {
                    let old: Option<AuditCheckpoint> =
                        tx.get_json(T::AuditCheckpoint, AUDIT_ONE)?;
                    if old.is_none_or(|o| o.seq < cp.seq) {
                        tx.put_json(T::AuditCheckpoint, AUDIT_ONE.to_vec(), &cp);
                    }
                }
                for r in &doomed {
                    tx.remove_audit(r);
                }
                Ok(())
            })
            .await?;
            if done {
                break;
            }
        }
        Ok(removed)
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

impl SledStore {
    /// Remove what has expired (see [`Store::sweep`]).
    async fn sweep_records(&self, r: Retention) -> StoreResult<SweepReport> {
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
}
