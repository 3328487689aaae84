//! The stored audit trail, as the service feeds it: every operation that
//! changes state hands its audit events to the store with the change
//! ([`Effects`]), so an acknowledged change always has its event in the
//! chain. The `tracing` audit line (`log.audit_file`) is written as
//! before, next to it.
//!
//! Events with no state change of their own (a failed sign-in, whose
//! counter lives in memory on sled and in its own row on PostgreSQL) are
//! appended on their own, before the answer ([`AuthService::record_audit`]).
//! Refused attempts that change nothing (a throttled client, a locked
//! account's further guesses) are only logged.

use uuid::Uuid;

use super::AuthService;
use crate::audit::{AuditCtx, AuditEvent};
use crate::store::{self, Effects, Sessions, StoreError, User, UserChange};

impl AuthService {
    /// An audit event for the chain, stamped now.
    pub fn audit_event(
        &self,
        ctx: &AuditCtx<'_>,
        kind: &str,
        outcome: &str,
        user: Option<Uuid>,
    ) -> AuditEvent {
        AuditEvent::new(ctx, kind, outcome, user, self.clock.now())
    }

    /// What goes to the store with a change: every effect passes here
    /// (audit events are dropped when `log.audit_chain` is off). The place
    /// to derive further effects from the audit events (webhooks).
    pub fn effects(&self, mut e: Effects) -> Effects {
        let cfg = self.cfg();
        // Webhook deliveries (CONTRACT 8.5) go to the outbox in the same
        // store operation, whether or not the chain is kept.
        let hooks = crate::webhooks::deliveries_for_audit(&cfg.webhooks, &e.audit);
        if !hooks.is_empty() {
            e.outbox.extend(hooks);
            self.mail_wake.notify_one();
        }
        if !cfg.log.audit_chain {
            e.audit.clear();
        }
        e
    }

    /// Append events that go with no other change, durably.
    pub async fn record_audit(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        let e = self.effects(Effects {
            audit: events,
            ..Effects::none()
        });
        if !e.audit.is_empty() {
            self.store.append_audit(e.audit).await?;
        }
        // Their webhook deliveries, each queued durably before the answer
        // (there is no change to share an operation with).
        for m in e.outbox {
            self.store.enqueue_mail(m).await?;
        }
        Ok(())
    }

    /// [`AuthService::change_user`] with everything the change causes.
    pub async fn change_user_with(
        &self,
        id: Uuid,
        change: UserChange,
        effects: Effects,
    ) -> Result<User, StoreError> {
        let effects = self.effects(effects);
        let has_mail = !effects.outbox.is_empty();
        let changed = self
            .store
            .change_user_with(id, change, effects, self.stamp())
            .await?;
        self.revocations.apply(&changed.revoked);
        if changed
            .revoked
            .iter()
            .any(|r| matches!(r, store::Revocation::Keys(..)))
        {
            self.api_keys.load_user(&changed.user);
        }
        if has_mail {
            self.mail_wake.notify_one();
        }
        Ok(changed.user)
    }

    /// [`AuthService::end_sessions`] with everything it causes.
    pub async fn end_sessions_with(
        &self,
        user_id: Uuid,
        which: Sessions,
        cutoff: bool,
        effects: Effects,
    ) -> Result<usize, StoreError> {
        let revoked = self
            .store
            .end_sessions_with(user_id, which, cutoff, self.stamp(), self.effects(effects))
            .await?;
        self.revocations.apply(&revoked);
        Ok(revoked
            .iter()
            .filter(|r| matches!(r, store::Revocation::Session(..)))
            .count())
    }

    /// The owner of a session that was just rotated, if the account is
    /// still there and enabled; otherwise that session is ended (audited as
    /// `session.revoked`, outcome `disabled`, with `fields`) and `None`.
    pub async fn enabled_owner(
        &self,
        ctx: &AuditCtx<'_>,
        session: &store::SessionRecord,
        fields: &[(&str, &str)],
    ) -> Result<Option<User>, StoreError> {
        match self.store.find_user(session.user_id).await? {
            Some(u) if !u.disabled => Ok(Some(u)),
            _ => {
                let mut ev = self
                    .audit_event(ctx, "session.revoked", "disabled", Some(session.user_id))
                    .with("session_id", session.id.to_string());
                for (k, v) in fields {
                    ev = ev.with(k, *v);
                }
                let one = Sessions::One(session.id);
                self.end_sessions_with(session.user_id, one, false, ev.into())
                    .await?;
                Ok(None)
            }
        }
    }
}

impl AuthService {
    /// The audit chain's upkeep, with each maintenance sweep: cut records
    /// older than `log.audit_retention_days` behind a signed checkpoint,
    /// then publish the head (a log line with its hash in the main log,
    /// and `portcullis_audit_chain_head_seq`), so a chain rewritten
    /// from the start no longer matches a copy kept outside.
    pub async fn audit_upkeep(&self) {
        if !self.cfg().log.audit_chain {
            return;
        }
        if let Err(e) = self.audit_retention().await {
            tracing::error!(cause = %e, "audit retention");
        }
        match self.store.audit_state().await {
            Ok(st) => {
                self.metrics.audit_chain_head_seq.set(st.head.seq as i64);
                // The main log, not the audit target: `log.audit_file` holds
                // auth events with their client, one per line.
                tracing::info!(
                    event = "audit_chain_head",
                    seq = st.head.seq,
                    hash = %st.head.hash,
                    checkpoint_seq = st.checkpoint.as_ref().map_or(0, |c| c.seq),
                    "audit chain head"
                );
            }
            Err(e) => tracing::error!(cause = %e, "reading the audit chain head"),
        }
    }

    /// Cut the chain at the newest record older than the retention age.
    pub async fn audit_retention(&self) -> Result<u64, StoreError> {
        let days = self.cfg().log.audit_retention_days;
        if days == 0 {
            return Ok(0);
        }
        let now = self.clock.now();
        let cutoff = now.saturating_sub((days as i64).saturating_mul(86_400));
        let st = self.store.audit_state().await?;
        let cut = match self.store.audit_since(cutoff, 1).await?.first() {
            Some(kept) => kept.seq.saturating_sub(1),
            None => st.head.seq,
        };
        let from = st.checkpoint.as_ref().map_or(0, |c| c.seq);
        if cut <= from {
            return Ok(0);
        }
        let Some(last) = self
            .store
            .audit_page(cut - 1, 1)
            .await?
            .into_iter()
            .find(|r| r.seq == cut)
        else {
            return Ok(0);
        };
        let key = self.refresh.audit_checkpoint_key();
        let cp = crate::audit::chain::Checkpoint::sign(&key, last.seq, &last.hash, now);
        let n = self.store.audit_trim(cp).await?;
        tracing::info!(
            event = "audit_retention",
            upto_seq = last.seq,
            removed = n,
            "audit records cut off behind a checkpoint"
        );
        Ok(n)
    }
}
