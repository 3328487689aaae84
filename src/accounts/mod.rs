//! The account service: every account operation (sign-up, sign-in, second
//! factor, refresh, sign-out, email and password flows, profile, sessions,
//! re-authentication) as a typed call with no HTTP in it. Each front door
//! (the JSON endpoints in [`crate::http`], the portal, cookie rotation)
//! calls these operations; throttling, the lockout, audit events and
//! metrics happen in here, so every door gets them.
//!
//! What went wrong is an [`AccountError`] in domain terms; the JSON front
//! door maps it to a status and code in one function
//! (`crate::http::error`).

pub mod admin;
pub mod apikeys;
pub mod email;
pub mod fed_sessions;
pub mod federation;
pub mod passkeys;
pub mod password;
pub mod profile;
pub mod provider;
pub mod reauth;
pub mod recovery;
pub mod second_factor;
pub mod service;
pub mod signin;
pub mod throttle;
pub mod totp;
pub mod trail;

use std::collections::BTreeMap;
use std::net::IpAddr;

use uuid::Uuid;

use crate::audit::{self, AuditCtx};
use crate::store::{StoreError, User};
use crate::tokens::AccessClaims;
use throttle::Reservation;

pub use crate::entropy::{Entropy, FixedEntropy, OsEntropy};
pub use profile::SessionInfo;
pub use reauth::Reauth;
pub use second_factor::Enrollment;
pub use service::AuthService;
pub use signin::SignOut;

/// What the service needs to know about the caller: never an HTTP request.
#[derive(Debug, Clone)]
pub struct Client {
    pub ip: IpAddr,
    /// Control characters removed, at most 256 characters.
    pub user_agent: String,
    pub request_id: String,
}

impl Client {
    pub fn audit(&self) -> AuditCtx<'_> {
        AuditCtx {
            ip: self.ip,
            user_agent: &self.user_agent,
            request_id: &self.request_id,
        }
    }
}

/// A password sign-in.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub email: String,
    pub password: String,
    /// A refresh token the device already holds (spares it the account
    /// lock; see [`AuthService::login`]).
    pub device: Option<String>,
}

/// A sign-up.
#[derive(Debug, Clone, Default)]
pub struct NewAccount {
    pub email: String,
    pub password: String,
    pub password_confirm: String,
    pub username: Option<String>,
}

/// A new password, typed twice.
#[derive(Debug, Clone, Default)]
pub struct NewPassword {
    pub password: String,
    pub confirm: String,
}

/// A session's tokens, as a sign-in, a refresh or a re-authentication
/// hands them out.
#[derive(Debug, Clone)]
pub struct Signed {
    pub access_token: String,
    /// The access token's `exp`.
    pub access_exp: i64,
    /// Its lifetime in seconds.
    pub expires_in: u64,
    pub refresh_token: String,
    /// The user as the store had it when the tokens were issued.
    pub user: User,
}

/// A password sign-in's outcome.
#[derive(Debug, Clone)]
pub enum Login {
    Signed(Box<Signed>),
    /// TOTP is on: no tokens yet; this one-time token and a code complete
    /// the sign-in ([`AuthService::verify_mfa`]).
    MfaChallenge {
        mfa_token: String,
    },
}

/// What went wrong, in domain terms (no status codes here).
#[derive(Debug)]
pub enum AccountError {
    /// Field problems, each field with every problem found.
    Invalid(BTreeMap<String, Vec<String>>),
    /// Wrong email or password (or a disabled account: indistinguishable).
    WrongCredentials,
    EmailNotVerified,
    EmailTaken,
    /// An emailed link's token (verification, reset) is invalid, used or
    /// expired.
    BadLink,
    /// A refresh token or a sign-in's second-step token is invalid, used
    /// or expired.
    BadSessionToken,
    /// A wrong, malformed or already used second-factor code.
    WrongCode,
    /// No valid signed-in user behind the call.
    NotSignedIn,
    NotFound,
    AlreadyEnrolled,
    /// A sensitive change needs a recent sign-in first.
    ReauthRequired,
    /// This account re-authenticates by signing in again (no password,
    /// no second factor).
    SignInAgain,
    /// Too many attempts (per client, per address or a locked account).
    Throttled {
        retry_after: u64,
    },
    /// The record changed under the operation.
    Changed,
    /// A passkey ceremony unknown, used or expired.
    BadCeremony,
    /// `mail.link_base_url` is no WebAuthn relying party.
    PasskeysUnavailable,
    /// Temporarily unable (hash queue full, store cannot write).
    Busy {
        retry_after: u64,
        cause: String,
    },
    Internal(String),
}

impl AccountError {
    pub fn invalid(field: &str, problem: impl Into<String>) -> Self {
        let mut m = BTreeMap::new();
        m.insert(field.to_string(), vec![problem.into()]);
        AccountError::Invalid(m)
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        AccountError::Internal(cause.to_string())
    }
}

impl From<StoreError> for AccountError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => AccountError::Changed,
            // Nothing was acknowledged; the client may retry.
            StoreError::Backend(cause) => AccountError::Busy {
                retry_after: 1,
                cause: format!("store: {cause}"),
            },
            StoreError::Corrupt(_) => AccountError::Internal(e.to_string()),
        }
    }
}

impl From<password::HashError> for AccountError {
    fn from(e: password::HashError) -> Self {
        match e {
            password::HashError::Busy => AccountError::Busy {
                retry_after: 1,
                cause: e.to_string(),
            },
            _ => AccountError::Internal(e.to_string()),
        }
    }
}

/// Collects per-field problems for [`AccountError::Invalid`].
#[derive(Default)]
pub struct FieldErrors(pub BTreeMap<String, Vec<String>>);

impl FieldErrors {
    pub fn add(&mut self, field: &str, problem: impl Into<String>) {
        self.0
            .entry(field.to_string())
            .or_default()
            .push(problem.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn has(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }

    pub fn finish(self) -> Result<(), AccountError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(AccountError::Invalid(self.0))
        }
    }
}

pub type AccountResult<T> = Result<T, AccountError>;

impl AuthService {
    /// The signed-in user of a verified access token (not disabled).
    pub async fn current_user(&self, claims: &AccessClaims) -> AccountResult<User> {
        let id = Uuid::parse_str(&claims.sub).map_err(|_| AccountError::NotSignedIn)?;
        match self.store.find_user(id).await? {
            Some(u) if !u.disabled => Ok(u),
            _ => Err(AccountError::NotSignedIn),
        }
    }

    /// Reserve a guess at `key`'s password before hashing (throttled when
    /// the account is locked or its budget is in flight).
    pub(crate) async fn reserve_guess(
        &self,
        key: &str,
        actx: &AuditCtx<'_>,
        event: &str,
        uid: Option<&str>,
    ) -> AccountResult<Reservation> {
        self.throttle
            .reserve(key, self.lockout())
            .await?
            .map_err(|retry_after| {
                self.metrics.throttled_account.inc();
                if event == "login" {
                    self.metrics.auth_event("login", "throttled");
                }
                audit::event(actx, event, "locked", uid);
                AccountError::Throttled { retry_after }
            })
    }

    /// Settle a reserved guess that turned out wrong. A failure that
    /// cannot be counted is not answered (busy): the guess's outcome stays
    /// unknown to the guesser.
    pub(crate) async fn guess_failed(
        &self,
        r: Reservation,
        actx: &AuditCtx<'_>,
        uid: Option<&str>,
    ) -> AccountResult<()> {
        if r.fail().await? {
            self.metrics.throttled_account.inc();
            audit::event(actx, "lockout", "locked", uid);
            let user = uid.and_then(|u| Uuid::parse_str(u).ok());
            self.record_audit(vec![self.audit_event(actx, "user.locked", "locked", user)])
                .await?;
        }
        Ok(())
    }

    /// The per-client budget of `POST /auth/*` (and the portal's forms):
    /// `event` names the metric counted when it runs out.
    pub async fn throttle_client(
        &self,
        client: &Client,
        event: Option<&'static str>,
    ) -> AccountResult<()> {
        let cfg = self.cfg();
        let limit = cfg.throttle.auth_per_minute;
        if limit == 0 {
            return Ok(());
        }
        let key = crate::net::throttle_key(client.ip, cfg.throttle.ipv6_prefix_len);
        match self.throttle.hit(&format!("ip:{key}"), limit, 60).await? {
            throttle::Verdict::Allowed => Ok(()),
            throttle::Verdict::Limited { retry_after } => {
                self.metrics.throttled_ip.inc();
                if let Some(ev) = event {
                    self.metrics.auth_event(ev, "throttled");
                }
                audit::event(&client.audit(), "throttled", "ip", None);
                Err(AccountError::Throttled { retry_after })
            }
        }
    }
}

/// The throttle key of an account's failed-login counter.
pub fn lock_key(email: &str) -> String {
    let e: String = email.trim().to_lowercase().chars().take(254).collect();
    format!("lock:{e}")
}

/// A display name's rules.
pub fn check_username(u: &str) -> Result<(), &'static str> {
    if u.chars().count() > 64 {
        return Err("must be at most 64 characters");
    }
    if u.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters");
    }
    Ok(())
}
