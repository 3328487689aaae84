//! The [`Store`] impl: each operation delegates to the file of its
//! part (see the module's files); the ping, the stats and the revocation
//! listener's signal are written here.

use super::*;

#[async_trait::async_trait]
impl Store for PgStore {
    async fn create_user_with(&self, user: User, effects: Effects) -> StoreResult<()> {
        self.op_create_user(user, effects).await
    }

    async fn find_user(&self, id: Uuid) -> StoreResult<Option<User>> {
        self.op_find_user(id).await
    }

    async fn find_user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        self.op_find_user_by_email(email).await
    }

    async fn list_users(&self) -> StoreResult<Vec<User>> {
        self.op_list_users().await
    }

    async fn search_users_by_email(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<User>> {
        self.op_search_users_by_email(prefix, after, limit).await
    }

    async fn change_user_with(
        &self,
        id: Uuid,
        change: UserChange,
        effects: Effects,
        stamp: Stamp,
    ) -> StoreResult<Changed> {
        self.op_change_user(id, change, effects, stamp).await
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
        self.op_create_session(session, expect_password_version, effects)
            .await
    }

    async fn find_session(&self, id: Uuid) -> StoreResult<Option<SessionRecord>> {
        self.op_find_session(id).await
    }

    async fn list_sessions(&self, user_id: Uuid) -> StoreResult<Vec<SessionRecord>> {
        self.op_list_sessions(user_id).await
    }

    async fn rotate_refresh_with(
        &self,
        id: Uuid,
        presented: u64,
        policy: RefreshPolicy,
        effects: Effects,
    ) -> StoreResult<RotateOutcome> {
        self.op_rotate_refresh(id, presented, policy, effects).await
    }

    async fn end_sessions_with(
        &self,
        user_id: Uuid,
        which: Sessions,
        cutoff: bool,
        stamp: Stamp,
        effects: Effects,
    ) -> StoreResult<Vec<Revocation>> {
        self.op_end_sessions(user_id, which, cutoff, stamp, effects)
            .await
    }

    async fn revoke(&self, entries: Vec<Revocation>) -> StoreResult<()> {
        self.op_revoke(entries).await
    }

    async fn list_revocations(&self) -> StoreResult<Vec<Revocation>> {
        self.op_list_revocations().await
    }

    async fn revocations_since(&self, after: i64) -> StoreResult<Option<(Vec<Revocation>, i64)>> {
        self.op_revocations_since(after).await
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

    async fn issue_one_time_with(
        &self,
        hash: String,
        token: OneTimeToken,
        effects: Effects,
    ) -> StoreResult<u64> {
        self.op_issue_one_time(hash, token, effects).await
    }

    async fn find_one_time(&self, hash: &str) -> StoreResult<Option<OneTimeToken>> {
        self.op_find_one_time(hash).await
    }

    async fn latest_one_time_seq(&self, user_id: Uuid, kind: OneTimeKind) -> StoreResult<u64> {
        self.op_latest_one_time_seq(user_id, kind).await
    }

    async fn redeem_with(
        &self,
        hash: String,
        redeem: Redeem,
        effects: Effects,
        stamp: Stamp,
    ) -> StoreResult<Changed> {
        self.op_redeem(hash, redeem, effects, stamp).await
    }

    async fn hit_counter(
        &self,
        key: &str,
        limit: u32,
        window: u64,
        now: i64,
    ) -> StoreResult<Result<(), u64>> {
        self.op_hit_counter(key, limit, window, now).await
    }

    async fn reserve_attempt(
        &self,
        key: &str,
        policy: LockoutPolicy,
        now: i64,
        lease_secs: u64,
    ) -> StoreResult<Result<Lease, u64>> {
        self.op_reserve_attempt(key, policy, now, lease_secs).await
    }

    async fn settle_attempt(
        &self,
        lease: &Lease,
        policy: LockoutPolicy,
        failed: bool,
        now: i64,
    ) -> StoreResult<bool> {
        self.op_settle_attempt(lease, policy, failed, now).await
    }

    async fn clear_counter(&self, key: &str) -> StoreResult<()> {
        self.op_clear_counter(key).await
    }

    async fn enqueue_mail(&self, mail: OutboxMessage) -> StoreResult<()> {
        self.op_enqueue_mail(mail).await
    }

    async fn list_mail(&self) -> StoreResult<Vec<OutboxMessage>> {
        self.op_list_mail().await
    }

    async fn claim_mail(
        &self,
        now: i64,
        lease_secs: u64,
        limit: usize,
    ) -> StoreResult<Vec<OutboxMessage>> {
        self.op_claim_mail(now, lease_secs, limit).await
    }

    async fn renew_mail_claim(
        &self,
        id: Uuid,
        now: i64,
        lease_secs: u64,
    ) -> StoreResult<Option<OutboxMessage>> {
        self.op_renew_mail_claim(id, now, lease_secs).await
    }

    async fn record_delivery(&self, id: Uuid, delivery: Delivery) -> StoreResult<()> {
        self.op_record_delivery(id, delivery).await
    }

    async fn sweep(&self, r: Retention) -> StoreResult<SweepReport> {
        self.op_sweep(r).await
    }

    async fn token_horizon(&self, at_least: u64) -> StoreResult<u64> {
        self.op_token_horizon(at_least).await
    }

    async fn append_audit(&self, events: Vec<AuditEvent>) -> StoreResult<()> {
        self.op_append_audit(events).await
    }

    async fn audit_page(&self, after: u64, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        self.op_audit_page(after, limit).await
    }

    async fn audit_since(&self, since: i64, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        self.op_audit_since(since, limit).await
    }

    async fn audit_for_user(&self, user_id: Uuid, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        self.op_audit_for_user(user_id, limit).await
    }

    async fn audit_state(&self) -> StoreResult<AuditState> {
        self.op_audit_state().await
    }

    async fn audit_trim(&self, checkpoint: AuditCheckpoint) -> StoreResult<u64> {
        self.op_audit_trim(checkpoint).await
    }

    async fn export(
        &self,
        kind: RecordKind,
        cursor: Option<String>,
        limit: usize,
    ) -> StoreResult<Page> {
        self.op_export(kind, cursor, limit).await
    }

    async fn snapshot(&self) -> StoreResult<Vec<Record>> {
        self.op_snapshot().await
    }

    async fn export_all(&self, limit: usize, sink: &mut dyn copy::PageSink) -> Result<(), String> {
        self.op_export_all(limit, sink).await
    }

    async fn import(&self, records: Vec<Record>) -> StoreResult<()> {
        self.op_import(records).await
    }

    async fn count(&self, kind: RecordKind) -> StoreResult<u64> {
        self.op_count(kind).await
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
