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

pub mod copy;
pub mod counters;
pub mod domain;
pub mod identities;
pub mod pg;
mod records;
pub mod sled;
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

use serde::{Deserialize, Serialize};
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub id: Uuid,
    /// Normalized (see `accounts::email`).
    pub email: String,
    pub username: Option<String>,
    pub password_hash: String,
    pub email_verified: bool,
    pub roles: Vec<String>,
    pub created_at: i64,
    pub disabled: bool,
    /// Bumped on every password change; reset tokens and in-flight logins
    /// carry the version they were decided on.
    pub password_version: u64,
    /// The TOTP second factor, once enrolment has started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<Totp>,
    /// SHA-256 (hex) of each unused recovery code.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recovery_codes: Vec<String>,
    /// The user's API keys (hashes only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<ApiKey>,
    /// Bumped whenever something an API key check depends on changes (a
    /// key, the roles, the account being disabled), so an in-memory key
    /// index never replaces newer entries with older ones.
    #[serde(default)]
    pub keys_version: u64,
    /// The user's passkeys (WebAuthn credentials: public keys only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passkeys: Vec<StoredPasskey>,
}

impl User {
    /// A new account: enabled, unverified, no roles, no username, nothing
    /// enrolled and every version at 0. Set the rest with struct update
    /// syntax (`User { roles, ..User::new(..) }`).
    pub fn new(
        id: Uuid,
        email: impl Into<String>,
        password_hash: impl Into<String>,
        created_at: i64,
    ) -> Self {
        Self {
            id,
            email: email.into(),
            username: None,
            password_hash: password_hash.into(),
            email_verified: false,
            roles: vec![],
            created_at,
            disabled: false,
            password_version: 0,
            totp: None,
            recovery_codes: vec![],
            api_keys: vec![],
            keys_version: 0,
            passkeys: vec![],
        }
    }
}

/// A registered passkey. `credential` is the WebAuthn library's own record
/// (public key, counter, flags) as JSON, so the store needs no WebAuthn types.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredPasskey {
    pub id: Uuid,
    /// The credential id, base64url: what an assertion names.
    pub cred_id: String,
    pub name: String,
    pub created_at: i64,
    #[serde(default)]
    pub last_used_at: Option<i64>,
    /// The authenticator's signature counter as last accepted (0 = the
    /// authenticator keeps none).
    #[serde(default)]
    pub counter: u32,
    pub credential: serde_json::Value,
}

/// A TOTP secret and its use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Totp {
    /// The 160-bit secret, sealed with the gateway's MFA key (`accounts::totp`).
    pub secret: String,
    /// Enrolment confirmed with a valid code: logins need a second factor.
    pub confirmed: bool,
    /// The newest 30-second step a code was accepted for; a code for this
    /// step or an older one is refused (no replay).
    pub last_step: u64,
}

/// An API key: only its hash is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiKey {
    pub id: Uuid,
    /// SHA-256 (hex) of the whole key.
    pub hash: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    /// Requests per minute this key may make (0 = no limit of its own).
    #[serde(default)]
    pub rate_per_minute: u32,
    /// Written in batches (see `accounts::apikeys`), so it may lag.
    #[serde(default)]
    pub last_used_at: Option<i64>,
}

/// The second factor offered with a change that needs one: a TOTP code
/// (as the step it matched) or a recovery code (its hash).
#[derive(Debug, Clone, PartialEq)]
pub enum MfaProof {
    Step(u64),
    Recovery(String),
}

/// A refresh session. Its refresh token is derived from `(id, generation,
/// seed)` with a keyed MAC (`tokens::refresh`), so the record never grows with
/// use and stores no token: rotation bumps `generation`, and any older
/// generation presented again is reuse.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    /// The generation of the current refresh token.
    #[serde(default)]
    pub generation: u64,
    /// Per-session secret mixed into the token MAC (hex), so the database
    /// alone cannot mint tokens and the MAC key alone cannot either.
    #[serde(default)]
    pub seed: String,
    pub rotated_at: i64,
    pub created_at: i64,
    pub last_used_at: i64,
    pub expires_at: i64,
    pub ip: String,
    pub user_agent: String,
    /// How the session was authenticated (`amr` of its access tokens);
    /// empty in sessions older than the field: read as `["pwd"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// When the user last really authenticated in this session (sign-in
    /// or `POST /auth/reauth`; never a refresh): the `auth_time` of its
    /// access tokens. `None` in sessions older than the field, which count
    /// as not recent (CONTRACT 8.6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    /// A session started by a sign-in with an outside provider: which,
    /// for its back-channel logout (CONTRACT 8.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<FederatedSession>,
    /// A client session of the OpenID Provider (CONTRACT 8.2): the client
    /// it was issued to and the scope granted; `None` for the gateway's own
    /// sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientBinding>,
}

/// The outside sign-in a session came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FederatedSession {
    pub provider: String,
    /// The provider's subject.
    pub subject: String,
    /// The provider's session id (`sid`), when it sent one.
    #[serde(default)]
    pub sid: Option<String>,
}

/// The OpenID Provider client a session belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientBinding {
    pub client_id: String,
    /// The granted scopes, space-separated.
    pub scope: String,
}

/// What presenting generation `g` of a session's refresh token led to.
#[derive(Debug, Clone, PartialEq)]
pub enum RotateOutcome {
    /// `g` was current: the session now has generation `g + 1`.
    Rotated(SessionRecord),
    /// `g` was the previous generation, inside the grace window: the
    /// current generation is handed out again (the client lost a response).
    Grace(SessionRecord),
    /// An older generation: the session is ended and its tokens revoked
    /// (committed although the request fails).
    Reused(SessionRecord, Vec<Revocation>),
    /// Unknown, expired or idle session (an expired one is removed).
    Invalid,
}

/// The refresh policy a rotation is judged by.
#[derive(Debug, Clone, Copy)]
pub struct RefreshPolicy {
    pub now: i64,
    pub grace_secs: u64,
    pub idle_secs: u64,
    /// Revocations written for a reused session last until then.
    pub revoke_until: i64,
    /// A re-authentication at this time: the session's current generation
    /// is rotated (whatever was presented) and its `auth_time` set.
    pub reauth_at: Option<i64>,
}

/// Something that voids access tokens, persisted and mirrored in memory
/// (`tokens::revocation`).
///
/// How long an entry is kept: a `Token`, `Session` or `Cutoff` entry goes
/// only once its time is older than the *revocation horizon* (see
/// [`Retention::revocation_horizon`]): now minus the longest access-token
/// lifetime plus leeway ever configured on this store ([`Store::token_horizon`]),
/// never the lifetime in force now, which a reload, a restart or another
/// gateway may have shortened since the covered tokens were signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Revocation {
    /// One access token, by `jti` (a UUID), and that token's `exp`.
    Token(Uuid, i64),
    /// Every access token of a session; the time is the revocation's
    /// [`Stamp::revoke_until`] (never earlier than the revocation itself).
    Session(Uuid, i64),
    /// Every access token of a user issued before this time.
    Cutoff(Uuid, i64),
    /// The API keys of a user (or what they depend on: roles, disabled)
    /// changed at this time: every gateway reloads that user's keys. Kept
    /// for a day, so a gateway that missed the notification catches up.
    Keys(Uuid, i64),
}

/// A change to one user, applied to the current record by
/// [`domain::apply_user_change`].
#[derive(Debug, Clone, PartialEq)]
pub enum UserChange {
    /// Set a new password hash, provided the password is still at
    /// `expect_version`. Ends every session but `keep` (all, plus a token
    /// cutoff, when `keep` is `None`).
    SetPassword {
        hash: String,
        expect_version: u64,
        keep: Option<Uuid>,
    },
    /// Disable the account; ends every session and token.
    Disable,
    /// Enable a disabled account again (its sessions stay ended).
    Enable,
    /// Turn TOTP off without a second factor, and drop the recovery codes
    /// (an administrator's action: the user lost the device).
    AdminTotpOff,
    AddRole(String),
    /// Remove a role; ends every session and token (tokens carry roles).
    RemoveRole(String),
    /// Change only the fields present: `Some(None)` clears the username.
    Profile {
        username: Option<Option<String>>,
    },
    /// Start (or restart) TOTP enrolment with a sealed secret; `Conflict`
    /// when TOTP is already on.
    TotpEnroll {
        secret: String,
    },
    /// Turn TOTP on: the pending secret must still be `secret`, and the
    /// code matched `step`. Stores the recovery code hashes.
    TotpConfirm {
        secret: String,
        step: u64,
        recovery: Vec<String>,
    },
    /// Turn TOTP off, with a second factor for the current secret.
    TotpDisable {
        secret: String,
        proof: MfaProof,
    },
    /// Use a second factor (a re-authentication): the step or recovery
    /// code is spent on the current record, so it works once.
    UseMfa {
        secret: String,
        proof: MfaProof,
    },
    /// Add an API key; `Conflict` when the user already has `max`.
    AddApiKey {
        key: ApiKey,
        max: usize,
    },
    /// Remove an API key; `Conflict` when the user has no such key.
    RemoveApiKey(Uuid),
    /// Record when keys were last used (only ever moves forward).
    ApiKeysUsed(Vec<(Uuid, i64)>),
    /// Register a passkey; `Conflict` when its credential id is already
    /// this user's, the user has `max`, or the account is disabled.
    AddPasskey {
        passkey: StoredPasskey,
        max: usize,
    },
    /// Remove a passkey; `Conflict` when the user has no such passkey.
    RemovePasskey(Uuid),
    /// A sign-in with the passkey `cred_id` whose assertion carried
    /// `counter`: `Conflict` when the passkey is gone, the account is
    /// disabled, or the counter does not move past the stored one (a
    /// replayed or cloned authenticator; 0 = the authenticator keeps none).
    UsePasskey {
        cred_id: String,
        counter: u32,
        credential: serde_json::Value,
        at: i64,
    },
}

/// The sessions a call ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sessions {
    All,
    AllBut(Uuid),
    One(Uuid),
}

/// Time stamps an operation needs: now, and the time session revocations
/// it writes carry (now plus the token horizon; the sweep keeps them a
/// horizon past that, see [`Revocation`]).
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub now: i64,
    pub revoke_until: i64,
}

/// The result of a user change: the record as written, and the revocations
/// committed with it (the caller mirrors them in memory).
#[derive(Debug, Clone)]
pub struct Changed {
    pub user: User,
    pub revoked: Vec<Revocation>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum OneTimeKind {
    EmailVerify,
    PasswordReset,
    /// The `mfa_token` of a login waiting for its second factor.
    MfaLogin,
    /// An authorization code of the OpenID Provider (CONTRACT 8.2).
    AuthCode,
    /// A user's consent to a provider client and scope set (never
    /// redeemed; found by its key's hash).
    Consent,
}

/// A single-use emailed token (verification or reset), stored under its hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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

/// What redeeming a one-time token does, if it is still good.
#[derive(Debug, Clone, PartialEq)]
pub enum Redeem {
    VerifyEmail,
    /// Set this password hash; ends every session and token.
    ResetPassword {
        hash: String,
    },
    /// Complete a login with its second factor: the user's TOTP secret
    /// must still be `secret`, and the proof must be good now.
    Mfa {
        secret: String,
        proof: MfaProof,
    },
    /// Spend an authorization code (the account must still be as it was:
    /// not disabled, password unchanged). Changes nothing else.
    AuthCode,
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
    /// Set when delivery failed for good; kept (for the retention period),
    /// never dropped silently.
    pub failed: bool,
    pub last_error: Option<String>,
    /// When it failed for good.
    #[serde(default)]
    pub failed_at: Option<i64>,
    /// The sender that has claimed it for an attempt now, if any.
    #[serde(default)]
    pub claim: Option<Claim>,
    /// An HTTP POST instead of a mail (`body` is then the request's body,
    /// `to` its URL for the log): a webhook, a back-channel logout. Absent
    /// on every record written before HTTP deliveries existed, which so
    /// read as mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpPost>,
}

impl OutboxMessage {
    /// Whether this entry is a mail (not an HTTP delivery).
    pub fn is_mail(&self) -> bool {
        self.http.is_none()
    }
}

/// What an HTTP delivery needs besides its body: where, with which extra
/// headers, trusting which CA, how long to wait, and how to sign it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HttpPost {
    pub url: String,
    /// Sent as they are (e.g. `content-type`).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Extra trusted CAs for the receiver's certificate.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// The bound on one attempt.
    pub timeout_secs: u64,
    /// Signed at each attempt (the signature covers the attempt's time)
    /// with the Standard Webhooks key named by this environment variable
    /// (a `[[webhooks]] secret_env`); never the key itself.
    #[serde(default)]
    pub sign_with: Option<String>,
}

/// A sender's claim on a message: which store instance, and until when.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claim {
    pub by: Uuid,
    pub until: i64,
}

/// The result of one delivery attempt, applied to the current message.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Sent,
    /// Failed; retry at `retry_at`, or give up when `give_up`.
    Failed {
        error: String,
        retry_at: i64,
        give_up: bool,
        now: i64,
    },
    /// Not tried in this pass (its receiver just failed, or the pass ran
    /// out of time): released, due again at `until`, its attempts
    /// unchanged.
    Deferred {
        until: i64,
    },
}

/// What a change causes besides itself, written in the same atomic step as
/// the change (an acknowledged change always has its mail queued and its
/// audit events in the chain). The service builds it; a backend writes
/// every part of it with [`Effects`]-taking operations (sled:
/// `Tx::apply_effects`, PostgreSQL: `apply_effects`), so a new kind of
/// effect (a webhook delivery) is one field here and one line there.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// Mail queued in the outbox.
    pub outbox: Vec<OutboxMessage>,
    /// Audit events appended to the chain (in this order).
    pub audit: Vec<AuditEvent>,
}

impl Effects {
    pub fn none() -> Self {
        Self::default()
    }

    /// Add a mail (if any).
    pub fn mail(mut self, m: impl Into<Option<OutboxMessage>>) -> Self {
        self.outbox.extend(m.into());
        self
    }

    /// Add an audit event.
    pub fn audit(mut self, e: AuditEvent) -> Self {
        self.audit.push(e);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.outbox.is_empty() && self.audit.is_empty()
    }
}

impl From<Option<OutboxMessage>> for Effects {
    fn from(m: Option<OutboxMessage>) -> Self {
        Effects::none().mail(m)
    }
}

impl From<OutboxMessage> for Effects {
    fn from(m: OutboxMessage) -> Self {
        Effects::none().mail(m)
    }
}

impl From<AuditEvent> for Effects {
    fn from(e: AuditEvent) -> Self {
        Effects::none().audit(e)
    }
}

/// The audit chain's state: its newest record and the checkpoint it
/// starts from (when retention has cut it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditState {
    pub head: AuditHead,
    pub checkpoint: Option<AuditCheckpoint>,
}

/// A throttle or lockout counter.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq)]
pub struct Counter {
    pub window_start: i64,
    /// Events (or failures) counted in the current window.
    pub count: u32,
    /// Locked until this time (account lockout), 0 when not locked.
    pub locked_until: i64,
    /// Attempts reserved and not yet settled (in memory only).
    #[serde(skip)]
    pub pending: u32,
}

/// What the maintenance sweep may remove.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub now: i64,
    /// Sessions idle this long are dead.
    pub idle_secs: u64,
    /// Mail that failed for good is kept this long.
    pub failed_mail_secs: u64,
    /// `now` minus the token horizon ([`Store::token_horizon`]): a
    /// `Token`, `Session` or `Cutoff` revocation whose time is older than
    /// this covers no token that is still accepted (every token it covers
    /// was signed before that time, or expired at it, with a lifetime plus
    /// leeway of at most the horizon).
    pub revocation_horizon: i64,
    /// Throttle and lockout counters untouched this long (and holding no
    /// lock) count nothing any more.
    pub counter_idle_secs: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub sessions: usize,
    pub one_time: usize,
    pub revocations: usize,
    pub cutoffs: usize,
    pub mail: usize,
    pub counters: usize,
}

impl SweepReport {
    pub fn total(&self) -> usize {
        self.sessions + self.one_time + self.revocations + self.cutoffs + self.mail + self.counters
    }
}

/// An attempt reserved against a lockout counter (see
/// [`Store::reserve_attempt`]). Settle it with [`Store::settle_attempt`];
/// where several gateways share the store, a reservation whose holder dies
/// unsettled lapses at `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: String,
    pub id: Uuid,
    pub until: i64,
}

/// What a store has done so far (for operators and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Atomic commits (for sled: flushed batches).
    pub commits: u64,
    /// Write operations acknowledged.
    pub ops: u64,
    /// The most operations one commit acknowledged (group commit at work).
    pub max_batch: u64,
    /// The most write operations ever in flight at once.
    pub max_in_flight: u64,
    /// Writes are being accepted (false from a failed write until the
    /// backend has recovered; see `sled_store`).
    pub writable: bool,
    /// Batches whose write or flush failed.
    pub write_failures: u64,
    /// Recoveries from such a failure without a restart.
    pub recoveries: u64,
}

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

/// Run a future to completion from synchronous code, whether or not the
/// caller is inside a Tokio runtime (start-up loads the store's state
/// before the server runs; the CLI has no runtime of its own).
pub fn block_on<F>(fut: F) -> Result<F::Output, String>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(fut))
                .map_err(|e| format!("building a runtime: {e}"))
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
