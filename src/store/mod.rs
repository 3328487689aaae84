//! Storage: the [`Store`] trait is everything the gateway persists, phrased
//! as domain operations so a second backend can follow without touching the
//! handlers. [`sled_store::SledStore`] is the embedded implementation.
//!
//! Operations that must be atomic (unique email, refresh rotation, a state
//! change together with the mail it causes) are single trait calls, so each
//! backend makes them atomic in its own way.

pub mod sled_store;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("conflict")]
    Conflict,
    #[error("storage backend: {0}")]
    Backend(String),
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub id: Uuid,
    /// Normalized (see `auth::email`).
    pub email: String,
    pub username: Option<String>,
    pub password_hash: String,
    pub email_verified: bool,
    pub roles: Vec<String>,
    pub created_at: i64,
    pub disabled: bool,
    /// Bumped on every password change; one-time reset tokens carry it.
    pub password_version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    /// SHA-256 (hex) of the current refresh token.
    pub refresh_hash: String,
    /// SHA-256 (hex) of the token this one replaced, kept for reuse detection.
    pub previous_hashes: Vec<String>,
    pub rotated_at: i64,
    /// The current token in plain text, kept only while a reuse grace window
    /// is configured, so a second tab refreshing with the previous token gets
    /// the same successor.
    pub grace_successor: Option<String>,
    pub created_at: i64,
    pub last_used_at: i64,
    pub expires_at: i64,
    pub ip: String,
    pub user_agent: String,
}

/// What presenting a refresh token led to.
#[derive(Debug)]
pub enum RotateOutcome {
    /// The token was current: it is now replaced by the new hash.
    Rotated(SessionRecord),
    /// The previous token, inside the grace window: the successor is returned.
    Grace(SessionRecord, String),
    /// A rotated token was presented again: the session is gone.
    Reused(SessionRecord),
    /// Unknown, expired or idle token (an expired session is deleted).
    Invalid,
}

/// Policy for one rotation.
pub struct Rotation<'a> {
    pub presented_hash: &'a str,
    pub new_hash: &'a str,
    pub new_plain: &'a str,
    pub now: i64,
    pub grace_secs: u64,
    pub idle_secs: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum OneTimeKind {
    EmailVerify,
    PasswordReset,
}

/// A single-use emailed token (verification or reset), stored under its hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OneTimeToken {
    pub kind: OneTimeKind,
    pub user_id: Uuid,
    /// The address the link was sent to.
    pub email: String,
    /// For resets: the user's password version when it was issued.
    pub password_version: u64,
    pub expires_at: i64,
    /// Issue sequence per user and kind: only the newest is honoured.
    pub issued_seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutboxMessage {
    pub id: Uuid,
    /// verification, reset, password_changed, account_exists
    pub kind: String,
    pub to: String,
    pub subject: String,
    pub body: String,
    pub created_at: i64,
    pub attempts: u32,
    pub next_attempt_at: i64,
    /// Set when delivery failed for good; kept, never dropped silently.
    pub failed: bool,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq)]
pub struct Counter {
    pub window_start: i64,
    pub count: u32,
    /// Locked until this time (account lockout), 0 when not locked.
    pub locked_until: i64,
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    // --- users
    /// Insert a new user; `Conflict` when the email is taken. The optional
    /// mail is queued in the same atomic step.
    fn create_user(&self, user: &User, mail: Option<&OutboxMessage>) -> StoreResult<()>;
    fn find_user(&self, id: &Uuid) -> StoreResult<Option<User>>;
    fn find_user_by_email(&self, email: &str) -> StoreResult<Option<User>>;
    /// Replace a user record (the email never changes).
    fn update_user(&self, user: &User, mail: Option<&OutboxMessage>) -> StoreResult<()>;
    fn list_users(&self) -> StoreResult<Vec<User>>;

    // --- refresh sessions
    fn create_session(&self, session: &SessionRecord) -> StoreResult<()>;
    fn find_session(&self, id: &Uuid) -> StoreResult<Option<SessionRecord>>;
    fn find_session_by_refresh(&self, hash: &str) -> StoreResult<Option<SessionRecord>>;
    /// Atomically rotate a refresh token (see [`RotateOutcome`]).
    fn rotate_refresh(&self, rotation: &Rotation<'_>) -> StoreResult<RotateOutcome>;
    fn delete_session(&self, id: &Uuid) -> StoreResult<Option<SessionRecord>>;
    fn list_sessions(&self, user_id: &Uuid) -> StoreResult<Vec<SessionRecord>>;

    // --- revocation: key (`jti:…` or `sid:…`) -> expiry, and per-user cutoffs
    fn revoke(&self, keys: &[(String, i64)]) -> StoreResult<()>;
    fn list_revocations(&self) -> StoreResult<Vec<(String, i64)>>;
    fn prune_revocations(&self, now: i64) -> StoreResult<usize>;
    fn set_cutoff(&self, user_id: &Uuid, at: i64) -> StoreResult<()>;
    fn list_cutoffs(&self) -> StoreResult<Vec<(Uuid, i64)>>;

    // --- one-time emailed tokens
    /// Store a token and queue its mail atomically; returns the issue sequence.
    fn issue_one_time(
        &self,
        hash: &str,
        token: &OneTimeToken,
        mail: &OutboxMessage,
    ) -> StoreResult<u64>;
    fn find_one_time(&self, hash: &str) -> StoreResult<Option<OneTimeToken>>;
    /// Remove and return a token (single use).
    fn take_one_time(&self, hash: &str) -> StoreResult<Option<OneTimeToken>>;
    /// The newest issue sequence for a user and kind.
    fn latest_one_time_seq(&self, user_id: &Uuid, kind: OneTimeKind) -> StoreResult<u64>;

    // --- throttle counters
    fn load_counters(&self) -> StoreResult<Vec<(String, Counter)>>;
    fn save_counters(&self, counters: &[(String, Option<Counter>)]) -> StoreResult<()>;

    // --- mail outbox
    fn enqueue_mail(&self, mail: &OutboxMessage) -> StoreResult<()>;
    fn list_mail(&self) -> StoreResult<Vec<OutboxMessage>>;
    fn update_mail(&self, mail: &OutboxMessage) -> StoreResult<()>;
    fn delete_mail(&self, id: &Uuid) -> StoreResult<()>;

    /// Make every write so far durable (without blocking the event loop).
    async fn flush(&self) -> StoreResult<()>;
}
