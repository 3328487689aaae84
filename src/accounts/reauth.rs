//! Recent authentication (CONTRACT 8.6, issue 20): the changes that add a
//! way into an account (enrolling TOTP, adding a passkey, creating an API
//! key, and linking or removing an identity once those exist) need a
//! sign-in within `accounts.reauth_secs`, read from the access token's
//! `auth_time`, else 403 `reauth_required`. `POST /auth/reauth` proves the
//! user again inside the session the bearer token belongs to.
//!
//! `auth_time` is the time of the session's last real authentication
//! (password, password and second factor, passkey, re-authentication),
//! kept in the session record: a refresh, and so a cookie rotation, carries
//! it on and never renews it. Sessions from before the field count as not
//! recent.
//!
//! What a re-authentication asks for: the password, as every account has
//! one today (registration and `POST /admin/users` both set it; passkeys
//! are added to existing accounts), plus a TOTP or recovery code when TOTP
//! is on. An account without a password (none exist yet; federated sign-in
//! of issue 22 may bring them) gives the code alone, and one with neither
//! re-authenticates by signing in again (a passkey sign-in starts a session
//! with a fresh `auth_time`).

use uuid::Uuid;

use super::AuthService;
use super::{lock_key, AccountError, AccountResult, Client, FieldErrors, Signed};
use crate::audit;
use crate::store::{RefreshPolicy, RotateOutcome, SessionRecord, StoreError, User, UserChange};
use crate::tokens::AccessClaims;

/// What a re-authentication proves.
#[derive(Debug, Default)]
pub struct Reauth {
    pub password: Option<String>,
    pub code: Option<String>,
}

impl AuthService {
    /// Sensitive changes need a sign-in within `accounts.reauth_secs`.
    pub fn require_recent(&self, claims: &AccessClaims) -> AccountResult<()> {
        let max_age = self.cfg().accounts.reauth_secs;
        if claims.authenticated_within(self.clock.now(), max_age) {
            Ok(())
        } else {
            Err(AccountError::ReauthRequired)
        }
    }

    /// What a re-authentication of this user asks for: (password, code).
    pub fn reauth_needs(user: &User) -> (bool, bool) {
        let totp = user.totp.as_ref().is_some_and(|t| t.confirmed);
        (!user.password_hash.is_empty(), totp)
    }

    /// Prove the user again (password, and a code when TOTP is on) inside
    /// the session of `claims`; wrong guesses count toward the lockout as
    /// at login. The answer is a coherent pair for the SAME session: its
    /// refresh generation is rotated in the store operation that sets the
    /// new `auth_time` (see the module docs).
    pub async fn reauth(
        &self,
        claims: &AccessClaims,
        proof: Reauth,
        client: &Client,
    ) -> AccountResult<Signed> {
        self.reauth_with(claims, proof, FieldErrors::default(), client)
            .await
    }

    /// [`Self::reauth`] with the problems a front door already found while
    /// reading the proof (answered together with what is missing).
    pub async fn reauth_with(
        &self,
        claims: &AccessClaims,
        proof: Reauth,
        found: FieldErrors,
        client: &Client,
    ) -> AccountResult<Signed> {
        let user = self.current_user(claims).await?;
        let (has_password, has_totp) = Self::reauth_needs(&user);
        let mut errs = found;
        if has_password && proof.password.is_none() && !errs.has("password") {
            errs.add("password", "is required");
        }
        if has_totp && proof.code.is_none() && !errs.has("code") {
            errs.add("code", "is required");
        }
        errs.finish()?;
        let pw = proof.password.unwrap_or_default();
        let code = proof.code.unwrap_or_default();
        if !has_password && !has_totp {
            return Err(AccountError::SignInAgain);
        }
        let sid = Uuid::parse_str(&claims.sid).map_err(|_| AccountError::NotSignedIn)?;
        match self.store.find_session(sid).await? {
            Some(s) if s.user_id == user.id => {}
            _ => return Err(AccountError::NotSignedIn),
        }
        let actx = client.audit();
        let uid = claims.sub.as_str();
        // Over-long input is refused before any hashing.
        if pw.chars().count() > super::password::MAX_LEN || code.len() > 64 {
            audit::event(&actx, "reauth", "failure", Some(uid));
            return Err(AccountError::WrongCredentials);
        }
        let reservation = self
            .reserve_guess(&lock_key(&user.email), &actx, "reauth", Some(uid))
            .await?;
        if has_password && !self.hasher.verify(&pw, &user.password_hash).await? {
            self.guess_failed(reservation, &actx, Some(uid)).await?;
            audit::event(&actx, "reauth", "failure", Some(uid));
            return Err(AccountError::WrongCredentials);
        }
        if let Some(sealed) = user.totp.as_ref().filter(|t| t.confirmed) {
            let sealed = sealed.secret.clone();
            let Some(proof) = self.proof_of(&user, &sealed, &code)? else {
                self.guess_failed(reservation, &actx, Some(uid)).await?;
                audit::event(&actx, "reauth", "invalid_code", Some(uid));
                return Err(AccountError::WrongCode);
            };
            // The code is spent on the current record: it works once.
            let change = UserChange::UseMfa {
                secret: sealed,
                proof,
            };
            match self.change_user(user.id, change, None).await {
                Ok(_) => {}
                Err(StoreError::Conflict) => {
                    self.guess_failed(reservation, &actx, Some(uid)).await?;
                    audit::event(&actx, "reauth", "invalid_code", Some(uid));
                    return Err(AccountError::WrongCode);
                }
                Err(e) => return Err(e.into()),
            }
        }
        reservation.succeed().await?;
        let ev = self.audit_event(&actx, "reauth", "success", Some(user.id));
        let session = self.rotate_for_reauth(sid, &user, ev).await?;
        // The tokens carry the user as the store has it now.
        let user = self.current_user(claims).await?;
        let signed = self.sign(&user, &session)?;
        audit::event(&actx, "reauth", "success", Some(uid));
        Ok(signed)
    }

    async fn rotate_for_reauth(
        &self,
        sid: Uuid,
        user: &User,
        ev: crate::audit::AuditEvent,
    ) -> AccountResult<SessionRecord> {
        let stamp = self.stamp();
        let cfg = self.cfg();
        let outcome = self
            .store
            .rotate_refresh_with(
                sid,
                0,
                RefreshPolicy {
                    now: stamp.now,
                    grace_secs: cfg.tokens.refresh_reuse_grace_secs,
                    idle_secs: cfg.tokens.refresh_idle_secs,
                    revoke_until: stamp.revoke_until,
                    reauth_at: Some(stamp.now),
                },
                self.effects(ev.into()),
            )
            .await?;
        match outcome {
            RotateOutcome::Rotated(s) if s.user_id == user.id => Ok(s),
            // Ended (or idle) meanwhile: nothing to re-authenticate.
            _ => Err(AccountError::NotSignedIn),
        }
    }
}
