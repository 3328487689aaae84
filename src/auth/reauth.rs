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

use std::sync::Arc;

use uuid::Uuid;

use super::handlers::{json_body, lock_key, FieldErrors};
use super::tokens::AccessClaims;
use super::AuthService;
use crate::api::{ApiRequest, ApiResponse};
use crate::audit;
use crate::error::ApiError;
use crate::store::{RefreshPolicy, RotateOutcome, StoreError, UserChange};

type ApiResult = Result<ApiResponse, ApiError>;

impl AuthService {
    /// 403 `reauth_required` unless the token's sign-in is within
    /// `accounts.reauth_secs` (the check every sensitive change makes).
    pub fn require_recent(&self, claims: &AccessClaims) -> Result<(), ApiError> {
        let max_age = self.cfg().accounts.reauth_secs;
        if claims.authenticated_within(self.clock.now(), max_age) {
            Ok(())
        } else {
            Err(ApiError::ReauthRequired)
        }
    }

    /// The bearer token's claims, if its sign-in is recent enough for a
    /// sensitive change.
    pub(super) fn require_recent_bearer(
        &self,
        req: &ApiRequest,
    ) -> Result<Arc<AccessClaims>, ApiError> {
        let claims = self.require_bearer(req)?;
        self.require_recent(&claims)?;
        Ok(claims)
    }

    /// `POST /auth/reauth`: prove the user again (password, and a code when
    /// TOTP is on); wrong guesses count toward the account lockout exactly
    /// as at login.
    ///
    /// The answer is the login shape for the SAME session: its current
    /// refresh generation is rotated in the store operation that sets the
    /// new `auth_time` (as a refresh would rotate it), and the access token
    /// is issued from the record that operation wrote. The client replaces
    /// both tokens and holds a coherent pair: a later refresh carries the
    /// new `auth_time`, which a new access token alone could not promise
    /// (the refresh token it kept would renew the old time).
    pub(super) async fn reauth(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let user = self.current_user(&claims).await?;
        let body = json_body(req)?;
        let has_password = !user.password_hash.is_empty();
        let totp = user
            .totp
            .as_ref()
            .filter(|t| t.confirmed)
            .map(|t| t.secret.clone());
        let mut errs = FieldErrors::default();
        let pw = errs.string(&body, "password", has_password);
        let code = errs.string(&body, "code", totp.is_some());
        errs.finish()?;
        let (pw, code) = (pw.unwrap_or_default(), code.unwrap_or_default());
        if !has_password && totp.is_none() {
            return Err(ApiError::BadRequest(
                "This account re-authenticates by signing in again.",
            ));
        }
        let sid = Uuid::parse_str(&claims.sid).map_err(|_| ApiError::Unauthorized)?;
        match self.store.find_session(sid).await? {
            Some(s) if s.user_id == user.id => {}
            _ => return Err(ApiError::Unauthorized),
        }
        let ua = req.user_agent();
        let actx = self.audit_ctx(req, &ua);
        let uid = claims.sub.as_str();
        // Over-long input is refused before any hashing.
        if pw.chars().count() > super::password::MAX_LEN || code.len() > 64 {
            audit::event(&actx, "reauth", "failure", Some(uid));
            return Err(ApiError::InvalidCredentials);
        }
        let reservation = self
            .reserve_guess(&lock_key(&user.email), &actx, "reauth", Some(uid))
            .await?;
        if has_password && !self.hasher.verify(&pw, &user.password_hash).await? {
            self.guess_failed(reservation, &actx, Some(uid)).await?;
            audit::event(&actx, "reauth", "failure", Some(uid));
            return Err(ApiError::InvalidCredentials);
        }
        if let Some(sealed) = totp {
            let Some(proof) = self.proof_of(&user, &sealed, &code)? else {
                self.guess_failed(reservation, &actx, Some(uid)).await?;
                audit::event(&actx, "reauth", "invalid_code", Some(uid));
                return Err(ApiError::InvalidCode);
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
                    return Err(ApiError::InvalidCode);
                }
                Err(e) => return Err(e.into()),
            }
        }
        reservation.succeed().await?;
        let stamp = self.stamp();
        let cfg = self.cfg();
        let outcome = self
            .store
            .rotate_refresh(
                sid,
                0,
                RefreshPolicy {
                    now: stamp.now,
                    grace_secs: cfg.tokens.refresh_reuse_grace_secs,
                    idle_secs: cfg.tokens.refresh_idle_secs,
                    revoke_until: stamp.revoke_until,
                    reauth_at: Some(stamp.now),
                },
            )
            .await?;
        let session = match outcome {
            RotateOutcome::Rotated(s) if s.user_id == user.id => s,
            // Ended (or idle) meanwhile: nothing to re-authenticate.
            _ => return Err(ApiError::Unauthorized),
        };
        // The tokens carry the user as the store has it now.
        let user = self.current_user(&claims).await?;
        let resp = self.token_response(&user, &session)?;
        audit::event(&actx, "reauth", "success", Some(uid));
        Ok(resp)
    }
}
