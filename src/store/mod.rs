//! Storage: the [`Store`] trait is everything the gateway persists, phrased
//! as domain operations. Every state change is one call that the backend
//! applies *to the current record inside its own atomic step*; the rules
//! themselves are the pure functions in [`domain`], shared by every backend,
//! so a backend only provides "read the current record, apply, write,
//! atomically". No caller ever writes back a copy it read earlier.
//!
//! Where a decision depended on what was read (the password was right, the
//! account was enabled), the operation carries that precondition and fails
//! with [`StoreError::Conflict`] when it no longer holds.
//!
//! Every call is async and off the event loop. An `Ok` means the change is
//! durable: [`sled::SledStore`] answers only after the batch holding
//! the change has been flushed to disk (group commit).
//!
//! This file holds the trait and its error. The values it speaks in live
//! one domain a file (re-exported here, so callers write `store::User`):
//! `user.rs` (the user record and [`UserChange`]), `session.rs` (refresh
//! sessions, rotation, [`Revocation`]), `one_time.rs` (single-use tokens
//! and [`Redeem`]), `outbox.rs` (mail and HTTP deliveries), `effects.rs`
//! (what a change causes: [`Effects`]), `throttle.rs` (counters and
//! leases), `upkeep.rs` (the sweep's [`Retention`], [`StoreStats`]),
//! `records.rs` (what a bulk copy moves) and `blocking.rs` ([`block_on`]).

mod blocking;
pub mod copy;
pub mod counters;
pub mod domain;
mod effects;
pub mod identities;
mod one_time;
mod outbox;
pub mod pg;
mod records;
mod session;
pub mod sled;
mod throttle;
mod upkeep;
mod user;
/// The name callers use for [`pg`] (the store was one file before).
pub use self::pg as pg_store;
/// The name callers use for [`sled`] (the store was one file before).
pub use self::sled as sled_store;

pub use crate::audit::chain::{
    AuditEvent, AuditRecord, Checkpoint as AuditCheckpoint, Head as AuditHead,
};
pub use domain::LockoutPolicy;
pub use identities::{LinkOutcome, LinkedIdentity, UnlinkOutcome};
pub use records::{Page, Record, RecordKind};

// The records and values of each domain, one file each; their public
// paths stay `store::User`, `store::SessionRecord`, …
pub use blocking::block_on;
pub use effects::{AuditState, Effects};
pub use one_time::{OneTimeKind, OneTimeToken, Redeem};
pub use outbox::{Claim, Delivery, HttpPost, OutboxMessage};
pub use session::{
    ClientBinding, FederatedSession, RefreshPolicy, Revocation, RotateOutcome, SessionRecord,
    Sessions, Stamp,
};
pub use throttle::{Counter, Lease};
pub use upkeep::{Retention, StoreStats, SweepReport};
pub use user::{ApiKey, Changed, MfaProof, StoredPasskey, Totp, User, UserChange};

use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition no longer holds (the record changed, the email is
    /// taken, the token was used). Nothing was written.
    #[error("conflict")]
    Conflict,
    #[error("storage backend: {0}")]
    Backend(String),
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Where a backend puts revocations whose commit outcome is unknown (a
/// failed flush): the gateway's in-memory revocation set, so a token the
/// disk may yet call revoked is refused at once (fail closed).
pub type RevocationSink = std::sync::Arc<dyn Fn(&[Revocation]) + Send + Sync>;

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    // --- users
    /// Insert a new user; `Conflict` when the email is taken. The optional
    /// mail is queued in the same atomic step.
    async fn create_user(&self, user: User, mail: Option<OutboxMessage>) -> StoreResult<()> {
        self.create_user_with(user, mail.into()).await
    }
    /// [`Store::create_user`] with everything it causes ([`Effects`]).
    async fn create_user_with(&self, user: User, effects: Effects) -> StoreResult<()>;
    async fn find_user(&self, id: Uuid) -> StoreResult<Option<User>>;
    async fn find_user_by_email(&self, email: &str) -> StoreResult<Option<User>>;
    async fn list_users(&self) -> StoreResult<Vec<User>>;
    /// Up to `limit` users whose case-folded email starts with the
    /// case-folded `prefix`, in email order, after the address `after` (the
    /// last one of the previous page; `None` for the first page). Reads the
    /// email index from `prefix` on, never every user (the console's search).
    async fn search_users_by_email(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<User>>;
    /// Apply `change` to the current record (see [`domain::apply_user_change`]),
    /// with the sessions it ends, the revocations it causes and the mail
    /// it sends, atomically. `Conflict` when its precondition fails.
    async fn change_user(
        &self,
        id: Uuid,
        change: UserChange,
        mail: Option<OutboxMessage>,
        stamp: Stamp,
    ) -> StoreResult<Changed> {
        self.change_user_with(id, change, mail.into(), stamp).await
    }
    /// [`Store::change_user`] with everything it causes ([`Effects`]).
    async fn change_user_with(
        &self,
        id: Uuid,
        change: UserChange,
        effects: Effects,
        stamp: Stamp,
    ) -> StoreResult<Changed>;

    // --- linked identities (CONTRACT 8.1)
    /// Link `link` to its user, judged on the current state
    /// ([`identities::judge_link`]): `(provider, subject)` belongs to one
    /// user, a user has one identity per provider, the user exists and is
    /// enabled. With `new_user`, that user is created in the same atomic
    /// step (a first federated sign-in; `EmailTaken` when the email is).
    async fn link_identity(
        &self,
        link: LinkedIdentity,
        new_user: Option<User>,
        effects: Effects,
    ) -> StoreResult<LinkOutcome>;
    async fn find_identity(
        &self,
        provider: &str,
        subject: &str,
    ) -> StoreResult<Option<LinkedIdentity>>;
    /// The user's identities, by provider.
    async fn list_identities(&self, user_id: Uuid) -> StoreResult<Vec<LinkedIdentity>>;
    /// Remove the user's identity at `provider`, unless it is the last way
    /// the account can sign in ([`identities::may_unlink`], judged on the
    /// current record). `effects` are written only when it is removed.
    async fn unlink_identity(
        &self,
        user_id: Uuid,
        provider: &str,
        effects: Effects,
    ) -> StoreResult<UnlinkOutcome>;

    // --- refresh sessions
    /// Create a session, provided the user is still enabled and at
    /// `expect_password_version` (`Conflict` otherwise). Returns the user as
    /// it is now, so tokens carry its current roles.
    async fn create_session(
        &self,
        session: SessionRecord,
        expect_password_version: u64,
    ) -> StoreResult<User> {
        self.create_session_with(session, expect_password_version, Effects::none())
            .await
    }
    /// [`Store::create_session`] with everything it causes ([`Effects`]).
    async fn create_session_with(
        &self,
        session: SessionRecord,
        expect_password_version: u64,
        effects: Effects,
    ) -> StoreResult<User>;
    async fn find_session(&self, id: Uuid) -> StoreResult<Option<SessionRecord>>;
    async fn list_sessions(&self, user_id: Uuid) -> StoreResult<Vec<SessionRecord>>;
    /// Judge generation `presented` of session `id` (see [`domain::rotate`]).
    async fn rotate_refresh(
        &self,
        id: Uuid,
        presented: u64,
        policy: RefreshPolicy,
    ) -> StoreResult<RotateOutcome> {
        self.rotate_refresh_with(id, presented, policy, Effects::none())
            .await
    }
    /// [`Store::rotate_refresh`] with everything it causes: the effects
    /// are written only when the outcome writes something (not for
    /// `Invalid`), each audit event's `outcome` set by
    /// [`domain::refresh_outcome`].
    async fn rotate_refresh_with(
        &self,
        id: Uuid,
        presented: u64,
        policy: RefreshPolicy,
        effects: Effects,
    ) -> StoreResult<RotateOutcome>;
    /// End sessions of a user and revoke their access tokens; with
    /// `cutoff`, also void every token issued until now. Returns the
    /// revocations written (none when nothing matched).
    async fn end_sessions(
        &self,
        user_id: Uuid,
        which: Sessions,
        cutoff: bool,
        stamp: Stamp,
    ) -> StoreResult<Vec<Revocation>> {
        self.end_sessions_with(user_id, which, cutoff, stamp, Effects::none())
            .await
    }
    /// [`Store::end_sessions`] with everything it causes ([`Effects`]),
    /// written only when it revoked something (a session ended, or a
    /// cutoff).
    async fn end_sessions_with(
        &self,
        user_id: Uuid,
        which: Sessions,
        cutoff: bool,
        stamp: Stamp,
        effects: Effects,
    ) -> StoreResult<Vec<Revocation>>;

    // --- revocation
    async fn revoke(&self, entries: Vec<Revocation>) -> StoreResult<()>;
    /// Every live revocation and cutoff (loaded into memory at start).
    async fn list_revocations(&self) -> StoreResult<Vec<Revocation>>;

    /// The users who hold API keys (or once did), for the key index at
    /// start, when the backend keeps them apart (sled); `None`: the caller
    /// reads every user.
    async fn api_key_holders(&self) -> StoreResult<Option<Vec<User>>> {
        Ok(None)
    }

    // --- one-time emailed tokens
    /// Store a token and queue its mail (if any) atomically; returns the
    /// issue sequence.
    async fn issue_one_time(
        &self,
        hash: String,
        token: OneTimeToken,
        mail: Option<OutboxMessage>,
    ) -> StoreResult<u64> {
        self.issue_one_time_with(hash, token, mail.into()).await
    }
    /// [`Store::issue_one_time`] with everything it causes ([`Effects`]).
    async fn issue_one_time_with(
        &self,
        hash: String,
        token: OneTimeToken,
        effects: Effects,
    ) -> StoreResult<u64>;
    async fn find_one_time(&self, hash: &str) -> StoreResult<Option<OneTimeToken>>;
    /// The newest issue sequence for a user and kind.
    async fn latest_one_time_seq(&self, user_id: Uuid, kind: OneTimeKind) -> StoreResult<u64>;
    /// Consume a one-time token and apply what it grants, atomically, if
    /// it is still good (see [`domain::check_redeem`]); `Conflict` if not,
    /// in which case nothing is consumed.
    async fn redeem(
        &self,
        hash: String,
        redeem: Redeem,
        mail: Option<OutboxMessage>,
        stamp: Stamp,
    ) -> StoreResult<Changed> {
        self.redeem_with(hash, redeem, mail.into(), stamp).await
    }
    /// [`Store::redeem`] with everything it causes ([`Effects`]).
    async fn redeem_with(
        &self,
        hash: String,
        redeem: Redeem,
        effects: Effects,
        stamp: Stamp,
    ) -> StoreResult<Changed>;

    // --- throttle and lockout counters (the rules: [`Counter`]'s methods)
    /// Count one event against `key`, at most `limit` per `window` seconds;
    /// `Ok(Err(retry_after))` when the budget is spent. Every gateway on the
    /// store shares the budget.
    async fn hit_counter(
        &self,
        key: &str,
        limit: u32,
        window: u64,
        now: i64,
    ) -> StoreResult<Result<(), u64>>;
    /// Reserve one attempt against `key` before it is evaluated (see
    /// [`Counter::reserve`]): failures plus attempts in flight, on every
    /// gateway, never exceed the policy. `Ok(Err(retry_after))` when locked
    /// or the budget is taken. The reservation lapses at `now + lease_secs`
    /// if it is never settled.
    async fn reserve_attempt(
        &self,
        key: &str,
        policy: LockoutPolicy,
        now: i64,
        lease_secs: u64,
    ) -> StoreResult<Result<Lease, u64>>;
    /// Settle a reservation: a failure is counted and may lock the key
    /// (true when this one did); otherwise only the reservation is given
    /// back.
    async fn settle_attempt(
        &self,
        lease: &Lease,
        policy: LockoutPolicy,
        failed: bool,
        now: i64,
    ) -> StoreResult<bool>;
    /// Forget what `key` counted and lift its lock (a password reset).
    async fn clear_counter(&self, key: &str) -> StoreResult<()>;
    /// Write out what the backend keeps only in memory between commits
    /// (sled's counters). Called every second, and at shutdown.
    async fn checkpoint(&self) -> StoreResult<()> {
        Ok(())
    }

    // --- mail outbox
    async fn enqueue_mail(&self, mail: OutboxMessage) -> StoreResult<()>;
    async fn list_mail(&self) -> StoreResult<Vec<OutboxMessage>>;
    /// Take up to `limit` due messages for sending: each is claimed for
    /// this store instance until `now + lease_secs` in the same atomic
    /// step, so of several senders (several gateways on one database)
    /// exactly one gets it. A claim by a sender that died mid-send is void
    /// at once where only one process uses the store (sled), and runs out
    /// after its lease where several do (PostgreSQL).
    async fn claim_mail(
        &self,
        now: i64,
        lease_secs: u64,
        limit: usize,
    ) -> StoreResult<Vec<OutboxMessage>>;
    /// Right before sending a claimed message: renew this instance's claim
    /// on the current record for `lease_secs` from `now` (one send), and
    /// return the message as it is now; `None` when the claim is no longer
    /// this instance's (its lease ran out and another sender took the
    /// message, sent it, or released it): then it must not be sent. So a
    /// batch that outlasts its lease never sends a message twice.
    async fn renew_mail_claim(
        &self,
        id: Uuid,
        now: i64,
        lease_secs: u64,
    ) -> StoreResult<Option<OutboxMessage>>;
    /// Record a delivery attempt on the current message (a sent one is
    /// removed). A failure is not recorded on a message another sender
    /// holds now (see [`domain::delivery_applies`]).
    async fn record_delivery(&self, id: Uuid, delivery: Delivery) -> StoreResult<()>;

    // --- audit trail (see `crate::audit::chain`)
    /// Append audit events that go with no other change (a failed sign-in
    /// whose counter lives in memory), in one atomic step.
    async fn append_audit(&self, events: Vec<AuditEvent>) -> StoreResult<()>;
    /// Up to `limit` records with a sequence number above `after`, in
    /// chain order.
    async fn audit_page(&self, after: u64, limit: usize) -> StoreResult<Vec<AuditRecord>>;
    /// Up to `limit` records written at or after `since` (unix seconds), in
    /// chain order (an index by time: no full scan).
    async fn audit_since(&self, since: i64, limit: usize) -> StoreResult<Vec<AuditRecord>>;
    /// A user's newest `limit` records, newest first (an index by user:
    /// no full scan).
    async fn audit_for_user(&self, user_id: Uuid, limit: usize) -> StoreResult<Vec<AuditRecord>>;
    /// The chain's head and the checkpoint it starts from.
    async fn audit_state(&self) -> StoreResult<AuditState>;
    /// Cut the chain at `checkpoint`: remove every record up to its
    /// sequence and keep the checkpoint (retention). Returns how many
    /// records went.
    async fn audit_trim(&self, checkpoint: AuditCheckpoint) -> StoreResult<u64>;

    // --- bulk copies (`portcullis storage migrate`)
    /// Up to `limit` records of `kind` in a stable order, starting after
    /// `cursor` (a previous page's `next`; `None` for the first page).
    async fn export(
        &self,
        kind: RecordKind,
        cursor: Option<String>,
        limit: usize,
    ) -> StoreResult<Page>;
    /// Write records as they are, in one atomic step, replacing any record
    /// with the same key (cutoffs and sequences only move forward), so
    /// copying twice changes nothing. A user whose email belongs to
    /// another account is `Conflict`, and nothing is written.
    async fn import(&self, records: Vec<Record>) -> StoreResult<()>;
    /// How many records of `kind` the store holds.
    async fn count(&self, kind: RecordKind) -> StoreResult<u64>;
    /// Every record, as of one moment (`portcullis backup`, while the
    /// gateway runs): no write lands half inside it.
    async fn snapshot(&self) -> StoreResult<Vec<Record>>;
    /// Every record, kind after kind, `limit` a page, each page handed to
    /// `sink` as it is read, so memory holds a page, not the copy (`portcullis
    /// backup`). The default reads each page at its own moment (each record
    /// whole, the whole not of one moment; see `store::copy`); a backend
    /// that can read everything as of one moment does (PostgreSQL: one
    /// REPEATABLE READ transaction).
    async fn export_all(&self, limit: usize, sink: &mut dyn copy::PageSink) -> Result<(), String> {
        for kind in RecordKind::ALL {
            let mut cursor = None;
            loop {
                let page = self
                    .export(kind, cursor, limit)
                    .await
                    .map_err(|e| format!("reading the store ({}): {e}", kind.name()))?;
                sink.page(kind, page.records).await?;
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
        }
        Ok(())
    }

    // --- upkeep
    /// Remove what has expired (see [`Retention`]). Each removal is
    /// re-checked against the current record, so a sweep never removes
    /// something that came back to life meanwhile. Every record is looked
    /// at within a bounded number of sweeps, however many there are
    /// (sled: a cursor per kind that resumes where the last sweep stopped;
    /// PostgreSQL: deletes by indexed expiry, in small batches).
    async fn sweep(&self, retention: Retention) -> StoreResult<SweepReport>;
    /// The token horizon: the longest `access_ttl_secs + leeway_secs` any
    /// gateway has ever run with on this store, durably raised to at least
    /// `at_least` first (a gateway calls it before it signs or accepts
    /// tokens under a config, and before every sweep). Only ever grows, so
    /// no reload, restart or other gateway can shorten how long a
    /// revocation is kept.
    async fn token_horizon(&self, at_least: u64) -> StoreResult<u64>;
    /// Can the backend read? (`/readyz`)
    async fn ping(&self) -> StoreResult<()>;
    fn stats(&self) -> StoreStats;

    // --- fan-out, for backends several gateways share
    /// Revocations committed (by any instance) after sequence `after`, in
    /// commit order, and the newest sequence; `None` for a backend with one
    /// gateway (each revocation is mirrored in memory by its writer).
    async fn revocations_since(&self, after: i64) -> StoreResult<Option<(Vec<Revocation>, i64)>> {
        let _ = after;
        Ok(None)
    }

    /// Bumped whenever another instance may have revoked something: a
    /// notification, or a reconnect (notifications sent meanwhile are
    /// lost). `None` for a backend with one gateway.
    fn revocation_events(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Hand the backend the gateway's in-memory revocation set (see
    /// [`RevocationSink`]); a backend that never leaves an outcome unknown
    /// while it keeps running ignores it.
    fn set_revocation_sink(&self, sink: RevocationSink) {
        let _ = sink;
    }
}
