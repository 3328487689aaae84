//! The TOTP endpoints (CONTRACT section 7): enrolment, confirmation,
//! turning it off, and completing a login with a second factor.
//!
//! Every code is judged twice: here (which step it matches, or which
//! recovery code it is) and by the store, atomically, when it is used: a
//! step no newer than the last one used, or a recovery code already spent,
//! is refused there, so however many requests carry one code at once,
//! exactly one succeeds.

use serde::Serialize;

use super::handlers::{json_body, lock_key, FieldErrors};
use super::mfa;
use super::tokens::{opaque_token, token_hash};
use super::AuthService;
use crate::api::{ApiRequest, ApiResponse};
use crate::audit;
use crate::error::ApiError;
use crate::mail;
use crate::store::{MfaProof, OneTimeKind, OneTimeToken, Redeem, StoreError, User, UserChange};
use crate::wire::{ConfirmResponse, EnrollResponse, MfaChallenge};

type ApiResult = Result<ApiResponse, ApiError>;

fn to_json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

impl AuthService {
    /// The user's TOTP secret as stored (sealed), if any.
    fn sealed_secret(user: &User) -> Option<String> {
        user.totp.as_ref().map(|t| t.secret.clone())
    }

    /// The user's TOTP secret, opened. A secret this gateway cannot open
    /// (another key) is a server fault, never a wrong code.
    fn open_secret(&self, user: &User, sealed: &str) -> Result<Vec<u8>, ApiError> {
        self.mfa_key.open(&user.id, sealed).ok_or_else(|| {
            ApiError::internal("a TOTP secret does not open with this gateway's MFA key")
        })
    }

    /// What a presented code proves, if anything (not yet whether it was
    /// used before: the store decides that). A recovery code needs no
    /// secret, so it still works if the MFA key was lost.
    pub(super) fn proof_of(
        &self,
        user: &User,
        sealed: &str,
        code: &str,
    ) -> Result<Option<MfaProof>, ApiError> {
        if code.len() > 64 {
            return Ok(None);
        }
        if mfa::is_recovery_shaped(code) {
            return Ok(Some(MfaProof::Recovery(mfa::recovery_hash(code))));
        }
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        if code.len() != mfa::DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(None);
        }
        let secret = self.open_secret(user, sealed)?;
        Ok(mfa::matching_step(&secret, &code, self.clock.now()).map(MfaProof::Step))
    }

    /// Issue the `mfa_token` of a login whose password was right.
    pub(super) async fn mfa_challenge(&self, user: &User) -> ApiResult {
        let token = opaque_token(32);
        let rec = OneTimeToken {
            kind: OneTimeKind::MfaLogin,
            user_id: user.id,
            email: user.email.clone(),
            password_version: user.password_version,
            expires_at: self.clock.now() + mfa::MFA_TOKEN_TTL_SECS,
            issued_seq: 0,
        };
        self.store
            .issue_one_time(token_hash(&token), rec, None)
            .await?;
        Ok(ApiResponse::json(
            200,
            &to_json(&MfaChallenge {
                mfa_required: true,
                mfa_token: token,
            }),
        ))
    }

    pub(super) async fn totp_enroll(&self, req: &ApiRequest) -> ApiResult {
        // A new second factor is a new way in: only from a recent sign-in.
        let claims = self.require_recent_bearer(req)?;
        let user = self.current_user(&claims).await?;
        if user.totp.as_ref().is_some_and(|t| t.confirmed) {
            return Err(ApiError::AlreadyEnrolled);
        }
        let secret = mfa::new_secret();
        let sealed = self.mfa_key.seal(&user.id, &secret);
        match self
            .change_user(user.id, UserChange::TotpEnroll { secret: sealed }, None)
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict) => return Err(ApiError::AlreadyEnrolled),
            Err(e) => return Err(e.into()),
        }
        let ua = req.user_agent();
        audit::event(
            &self.audit_ctx(req, &ua),
            "mfa_enroll",
            "started",
            Some(&claims.sub),
        );
        Ok(ApiResponse::json(
            200,
            &to_json(&EnrollResponse {
                secret: mfa::base32(&secret),
                otpauth_uri: mfa::otpauth_uri(&self.cfg().tokens.issuer, &user.email, &secret),
            }),
        ))
    }

    pub(super) async fn totp_confirm(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let user = self.current_user(&claims).await?;
        let body = json_body(req)?;
        let mut errs = FieldErrors::default();
        let code = errs.string(&body, "code", true);
        errs.finish()?;
        let code = code.unwrap_or_default();
        let sealed = match &user.totp {
            Some(t) if !t.confirmed => t.secret.clone(),
            _ => return Err(ApiError::InvalidCode),
        };
        let secret = self.open_secret(&user, &sealed)?;
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        let Some(step) = mfa::matching_step(&secret, &code, self.clock.now()) else {
            return Err(ApiError::InvalidCode);
        };
        let codes = mfa::new_recovery_codes();
        let change = UserChange::TotpConfirm {
            secret: sealed,
            step,
            recovery: codes.iter().map(|c| mfa::recovery_hash(c)).collect(),
        };
        let notice = mail::totp_enabled_mail(&user.email, self.clock.now());
        match self.change_user(user.id, change, Some(notice)).await {
            Ok(_) => {}
            Err(StoreError::Conflict) => return Err(ApiError::InvalidCode),
            Err(e) => return Err(e.into()),
        }
        let ua = req.user_agent();
        audit::event(
            &self.audit_ctx(req, &ua),
            "mfa_enroll",
            "success",
            Some(&claims.sub),
        );
        Ok(ApiResponse::json(
            200,
            &to_json(&ConfirmResponse {
                recovery_codes: codes,
            }),
        ))
    }

    /// Turn TOTP off: the password and a code (TOTP or recovery), both
    /// counted toward the account lockout when wrong.
    pub(super) async fn totp_disable(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let user = self.current_user(&claims).await?;
        let body = json_body(req)?;
        let mut errs = FieldErrors::default();
        let pw = errs.string(&body, "password", true);
        let code = errs.string(&body, "code", true);
        errs.finish()?;
        let (pw, code) = (pw.unwrap_or_default(), code.unwrap_or_default());
        let ua = req.user_agent();
        let actx = self.audit_ctx(req, &ua);
        let Some(sealed) = Self::sealed_secret(&user) else {
            return Err(ApiError::InvalidCode);
        };
        if !user.totp.as_ref().is_some_and(|t| t.confirmed) {
            return Err(ApiError::InvalidCode);
        }
        if pw.chars().count() > super::password::MAX_LEN || code.len() > 64 {
            return Err(ApiError::InvalidCredentials);
        }
        let reservation = self
            .reserve_guess(
                &lock_key(&user.email),
                &actx,
                "mfa_disable",
                Some(&claims.sub),
            )
            .await?;
        if !self.hasher.verify(&pw, &user.password_hash).await? {
            self.guess_failed(reservation, &actx, Some(&claims.sub))
                .await?;
            audit::event(&actx, "mfa_disable", "failure", Some(&claims.sub));
            return Err(ApiError::InvalidCredentials);
        }
        let Some(proof) = self.proof_of(&user, &sealed, &code)? else {
            self.guess_failed(reservation, &actx, Some(&claims.sub))
                .await?;
            audit::event(&actx, "mfa_disable", "invalid_code", Some(&claims.sub));
            return Err(ApiError::InvalidCode);
        };
        let change = UserChange::TotpDisable {
            secret: sealed,
            proof,
        };
        let notice = mail::totp_disabled_mail(&user.email, self.clock.now());
        match self.change_user(user.id, change, Some(notice)).await {
            Ok(_) => reservation.succeed().await?,
            Err(StoreError::Conflict) => {
                // A code already used (or TOTP changed meanwhile).
                self.guess_failed(reservation, &actx, Some(&claims.sub))
                    .await?;
                audit::event(&actx, "mfa_disable", "invalid_code", Some(&claims.sub));
                return Err(ApiError::InvalidCode);
            }
            Err(e) => return Err(e.into()),
        }
        audit::event(&actx, "mfa_disable", "success", Some(&claims.sub));
        Ok(ApiResponse::empty(204))
    }

    /// `POST /auth/mfa/verify`: complete a login with a TOTP or recovery
    /// code. The `mfa_token` is consumed with the code, atomically, only
    /// when the code is good; wrong codes count toward the lockout.
    pub(super) async fn mfa_verify(&self, req: &ApiRequest) -> ApiResult {
        let body = json_body(req)?;
        let mut errs = FieldErrors::default();
        let token = errs.string(&body, "mfa_token", true);
        let code = errs.string(&body, "code", true);
        errs.finish()?;
        let (token, code) = (token.unwrap_or_default(), code.unwrap_or_default());
        let ua = req.user_agent();
        let actx = self.audit_ctx(req, &ua);
        let invalid_token = |uid: Option<&str>| {
            self.metrics.auth_event("login", "failure");
            audit::event(&actx, "mfa_verify", "invalid_token", uid);
            ApiError::InvalidToken(401)
        };
        if token.is_empty() || token.len() > 512 {
            return Err(invalid_token(None));
        }
        let hash = token_hash(&token);
        let now = self.clock.now();
        let rec = match self.store.find_one_time(&hash).await? {
            Some(r) if r.kind == OneTimeKind::MfaLogin && r.expires_at > now => r,
            _ => return Err(invalid_token(None)),
        };
        let uid = rec.user_id.to_string();
        let user = match self.store.find_user(rec.user_id).await? {
            Some(u) if !u.disabled && u.password_version == rec.password_version => u,
            _ => return Err(invalid_token(Some(&uid))),
        };
        let Some(sealed) = Self::sealed_secret(&user) else {
            return Err(invalid_token(Some(&uid)));
        };
        let reservation = self
            .reserve_guess(&lock_key(&user.email), &actx, "login", Some(&uid))
            .await?;
        let wrong = |what: &str| {
            self.metrics.auth_event("login", "failure");
            audit::event(&actx, "mfa_verify", what, Some(&uid));
            ApiError::InvalidCode
        };
        let Some(proof) = self.proof_of(&user, &sealed, &code)? else {
            self.guess_failed(reservation, &actx, Some(&uid)).await?;
            return Err(wrong("invalid_code"));
        };
        let recovery = matches!(proof, MfaProof::Recovery(_));
        let redeemed = self
            .store
            .redeem(
                hash.clone(),
                Redeem::Mfa {
                    secret: sealed,
                    proof,
                },
                None,
                self.stamp(),
            )
            .await;
        let user = match redeemed {
            Ok(changed) => changed.user,
            Err(StoreError::Conflict) => {
                // Either the token went (used, expired) or the code had
                // been used: only the latter is a wrong guess.
                let still = self
                    .store
                    .find_one_time(&hash)
                    .await?
                    .is_some_and(|r| r.expires_at > self.clock.now());
                if still {
                    self.guess_failed(reservation, &actx, Some(&uid)).await?;
                    return Err(wrong("code_reused"));
                }
                reservation.succeed().await?;
                return Err(invalid_token(Some(&uid)));
            }
            Err(e) => return Err(e.into()),
        };
        reservation.succeed().await?;
        let resp = match self.start_session(&user, req, &["pwd", "otp"]).await {
            Err(ApiError::Conflict) => return Err(invalid_token(Some(&uid))),
            r => r?,
        };
        self.metrics.auth_event("login", "success");
        audit::event(
            &actx,
            "login",
            if recovery {
                "success_recovery_code"
            } else {
                "success_mfa"
            },
            Some(&uid),
        );
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn response_shapes() {
        let v = to_json(&MfaChallenge {
            mfa_required: true,
            mfa_token: "t".into(),
        });
        assert_eq!(v, json!({"mfa_required": true, "mfa_token": "t"}));
    }
}
