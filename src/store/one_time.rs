//! Single-use tokens (mailed links, MFA logins, authorization codes) and
//! what redeeming one does.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::MfaProof;

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
    /// The outside sign-in whose session this token's redemption starts
    /// (a federated sign-in's TOTP step, or its `login_code` when that
    /// step is still to come), so the session records its provider and
    /// back-channel logout ends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<super::FederatedSession>,
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
