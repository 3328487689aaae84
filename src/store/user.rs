//! The user record and what changes it: the record with its second
//! factors, API keys and passkeys ([`User`]), and the [`UserChange`]s the
//! domain rules apply to the current record.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Revocation;

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

/// A change to one user, applied to the current record by
/// [`domain::apply_user_change`].
///
/// [`domain::apply_user_change`]: super::domain::apply_user_change
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

/// The result of a user change: the record as written, and the revocations
/// committed with it (the caller mirrors them in memory).
#[derive(Debug, Clone)]
pub struct Changed {
    pub user: User,
    pub revoked: Vec<Revocation>,
}
