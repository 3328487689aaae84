//! Refresh sessions and what ends them: the session record, a rotation's
//! policy and outcome, and the revocations that void access tokens.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

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
///
/// [`Retention::revocation_horizon`]: super::Retention::revocation_horizon
/// [`Store::token_horizon`]: super::Store::token_horizon
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
