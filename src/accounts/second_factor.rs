//! The second factor (CONTRACT section 7): TOTP enrolment, confirmation,
//! turning it off, and what a presented code proves.
//!
//! Every code is judged twice: here (which step it matches, or which
//! recovery code it is) and by the store, atomically, when it is used: a
//! step no newer than the last one used, or a recovery code already spent,
//! is refused there, so however many requests carry one code at once,
//! exactly one succeeds.

use super::{lock_key, AccountError, AccountResult, Client};
use super::{password, totp as mfa, AuthService};
use crate::audit;
use crate::mail;
use crate::store::{MfaProof, StoreError, User, UserChange};
use crate::tokens::AccessClaims;

/// A TOTP enrolment under way: the secret, shown once.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// Base32, no padding.
    pub secret: String,
    pub otpauth_uri: String,
}

impl AuthService {
    /// The user's TOTP secret, opened. A secret this gateway cannot open
    /// (another key) is a server fault, never a wrong code.
    fn open_secret(&self, user: &User, sealed: &str) -> AccountResult<Vec<u8>> {
        self.mfa_key.open(&user.id, sealed).ok_or_else(|| {
            AccountError::internal("a TOTP secret does not open with this gateway's MFA key")
        })
    }

    /// What a presented code proves, if anything (not yet whether it was
    /// used before: the store decides that). A recovery code needs no
    /// secret, so it still works if the MFA key was lost.
    pub(crate) fn proof_of(
        &self,
        user: &User,
        sealed: &str,
        code: &str,
    ) -> AccountResult<Option<MfaProof>> {
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

    /// Start a TOTP enrolment (a new way in: only from a recent sign-in).
    pub async fn totp_enroll(
        &self,
        claims: &AccessClaims,
        client: &Client,
    ) -> AccountResult<Enrollment> {
        self.require_recent(claims)?;
        let user = self.current_user(claims).await?;
        if user.totp.as_ref().is_some_and(|t| t.confirmed) {
            return Err(AccountError::AlreadyEnrolled);
        }
        let secret = mfa::new_secret(&*self.entropy);
        let sealed = self.mfa_key.seal(&user.id, &secret);
        let ev = self.audit_event(&client.audit(), "mfa_enroll", "started", Some(user.id));
        match self
            .change_user_with(
                user.id,
                UserChange::TotpEnroll { secret: sealed },
                ev.into(),
            )
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict) => return Err(AccountError::AlreadyEnrolled),
            Err(e) => return Err(e.into()),
        }
        audit::event(&client.audit(), "mfa_enroll", "started", Some(&claims.sub));
        Ok(Enrollment {
            secret: mfa::base32(&secret),
            otpauth_uri: mfa::otpauth_uri(&self.cfg().tokens.issuer, &user.email, &secret),
        })
    }

    /// Confirm an enrolment with a first code: TOTP is on; the recovery
    /// codes are returned, once.
    pub async fn totp_confirm(
        &self,
        claims: &AccessClaims,
        code: &str,
        client: &Client,
    ) -> AccountResult<Vec<String>> {
        let user = self.current_user(claims).await?;
        let sealed = match &user.totp {
            Some(t) if !t.confirmed => t.secret.clone(),
            _ => return Err(AccountError::WrongCode),
        };
        let secret = self.open_secret(&user, &sealed)?;
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        let Some(step) = mfa::matching_step(&secret, &code, self.clock.now()) else {
            return Err(AccountError::WrongCode);
        };
        let codes = mfa::new_recovery_codes(&*self.entropy);
        let change = UserChange::TotpConfirm {
            secret: sealed,
            step,
            recovery: codes.iter().map(|c| mfa::recovery_hash(c)).collect(),
        };
        let notice = mail::totp_enabled_mail(&user.email, self.clock.now());
        let ev = self
            .audit_event(&client.audit(), "mfa.enabled", "success", Some(user.id))
            .with("method", "totp");
        let effects = crate::store::Effects::from(notice).audit(ev);
        match self.change_user_with(user.id, change, effects).await {
            Ok(_) => {}
            Err(StoreError::Conflict) => return Err(AccountError::WrongCode),
            Err(e) => return Err(e.into()),
        }
        audit::event(&client.audit(), "mfa_enroll", "success", Some(&claims.sub));
        Ok(codes)
    }

    /// Turn TOTP off: the password and a code (TOTP or recovery), both
    /// counted toward the account lockout when wrong.
    pub async fn totp_disable(
        &self,
        claims: &AccessClaims,
        pw: &str,
        code: &str,
        client: &Client,
    ) -> AccountResult<()> {
        let user = self.current_user(claims).await?;
        let actx = client.audit();
        let Some(sealed) = user.totp.as_ref().map(|t| t.secret.clone()) else {
            return Err(AccountError::WrongCode);
        };
        if !user.totp.as_ref().is_some_and(|t| t.confirmed) {
            return Err(AccountError::WrongCode);
        }
        if pw.chars().count() > password::MAX_LEN || code.len() > 64 {
            return Err(AccountError::WrongCredentials);
        }
        let uid = Some(claims.sub.as_str());
        let reservation = self
            .reserve_guess(&lock_key(&user.email), &actx, "mfa_disable", uid)
            .await?;
        if !self.hasher.verify(pw, &user.password_hash).await? {
            self.guess_failed(reservation, &actx, uid).await?;
            audit::event(&actx, "mfa_disable", "failure", uid);
            return Err(AccountError::WrongCredentials);
        }
        let Some(proof) = self.proof_of(&user, &sealed, code)? else {
            self.guess_failed(reservation, &actx, uid).await?;
            audit::event(&actx, "mfa_disable", "invalid_code", uid);
            return Err(AccountError::WrongCode);
        };
        let change = UserChange::TotpDisable {
            secret: sealed,
            proof,
        };
        let notice = mail::totp_disabled_mail(&user.email, self.clock.now());
        let ev = self
            .audit_event(&actx, "mfa.disabled", "success", Some(user.id))
            .with("method", "totp");
        let effects = crate::store::Effects::from(notice).audit(ev);
        match self.change_user_with(user.id, change, effects).await {
            Ok(_) => reservation.succeed().await?,
            Err(StoreError::Conflict) => {
                // A code already used (or TOTP changed meanwhile).
                self.guess_failed(reservation, &actx, uid).await?;
                audit::event(&actx, "mfa_disable", "invalid_code", uid);
                return Err(AccountError::WrongCode);
            }
            Err(e) => return Err(e.into()),
        }
        audit::event(&actx, "mfa_disable", "success", uid);
        Ok(())
    }
}
