//! Sign-up and the emailed flows: address verification, its resend, and
//! the password reset. The mail goes into the outbox in the same store
//! operation as the token it carries.

use std::time::{Duration, Instant};

use super::{check_username, AccountError, AccountResult, Client, FieldErrors, NewAccount};
use super::{email, password, AuthService};
use super::{lock_key, NewPassword};
use crate::audit;
use crate::mail;
use crate::store::{domain, Effects, OneTimeKind, OneTimeToken, Redeem, StoreError, User};
use crate::tokens::jwt::token_hash;

/// Password reset requests answer no sooner than this, known account or not.
const RESET_FLOOR: Duration = Duration::from_millis(250);
const PER_ADDRESS_MAILS: u32 = 3;
const PER_ADDRESS_WINDOW: u64 = 900;

impl AuthService {
    /// Create an account. With `require_email_verification`, an address
    /// already taken answers exactly as a new one (its owner is told by
    /// mail instead).
    pub async fn register(&self, new: NewAccount, client: &Client) -> AccountResult<User> {
        self.register_with(new, FieldErrors::default(), client)
            .await
    }

    /// [`Self::register`] with the problems a front door already found
    /// while reading the form: the fields it names are not judged again,
    /// and every problem is answered at once.
    pub async fn register_with(
        &self,
        new: NewAccount,
        found: FieldErrors,
        client: &Client,
    ) -> AccountResult<User> {
        let actx = client.audit();
        let email = match self.check_new_account(&new, found) {
            Ok(email) => email,
            Err(e) => {
                self.metrics.auth_event("register", "failure");
                audit::event(&actx, "register", "invalid", None);
                return Err(e);
            }
        };
        let hash = self.hasher.hash(&new.password).await?;
        let now = self.clock.now();
        let user = User {
            username: new.username.filter(|u| !u.is_empty()),
            ..User::new(self.entropy.uuid(), email.clone(), hash, now)
        };
        let ev = self.audit_event(&actx, "user.created", "success", Some(user.id));
        match self
            .store
            .create_user_with(user.clone(), self.effects(ev.into()))
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                self.metrics.auth_event("register", "failure");
                if self.cfg().accounts.require_email_verification {
                    // Answer exactly as a new registration; tell the owner.
                    let base = self.cfg().mail.link_base_url.clone();
                    self.store
                        .enqueue_mail(mail::account_exists_mail(&base, &email, now))
                        .await?;
                    self.mail_wake.notify_one();
                    audit::event(&actx, "register", "existing_email", None);
                    return Ok(user);
                }
                audit::event(&actx, "register", "email_taken", None);
                return Err(AccountError::EmailTaken);
            }
            Err(e) => return Err(e.into()),
        }
        // The sign-up's own link: its event is the `user.created` above.
        self.send_verification(&user, None).await?;
        self.metrics.auth_event("register", "success");
        audit::event(&actx, "register", "success", Some(&user.id.to_string()));
        Ok(user)
    }

    /// Every problem of a sign-up at once; the normalized address.
    fn check_new_account(&self, new: &NewAccount, found: FieldErrors) -> AccountResult<String> {
        let [by_email, by_pw, by_confirm, by_name] =
            ["email", "password", "password_confirm", "username"].map(|f| !found.has(f));
        let mut errs = found;
        let email = by_email.then(|| email::normalize(&new.email)).flatten();
        if by_email && email.is_none() {
            errs.add("email", "is not a valid email address");
        }
        // Checked even when the email is bad, so every problem is reported.
        if by_pw {
            let e = email.as_deref().unwrap_or("");
            for p in password::policy_problems(&new.password, e) {
                errs.add("password", p);
            }
        }
        if by_pw && by_confirm && new.password != new.password_confirm {
            errs.add("password_confirm", "does not match password");
        }
        if let Some(u) = new.username.as_ref().filter(|_| by_name) {
            if let Err(p) = check_username(u) {
                errs.add("username", p);
            }
        }
        errs.finish()?;
        Ok(email.unwrap_or_default())
    }

    /// Issue a verification link and queue its mail, with `event` (if
    /// any) in the same store operation.
    async fn send_verification(
        &self,
        user: &User,
        event: Option<crate::audit::AuditEvent>,
    ) -> AccountResult<()> {
        let token = self.entropy.token(32);
        let now = self.clock.now();
        let rec = OneTimeToken {
            kind: OneTimeKind::EmailVerify,
            user_id: user.id,
            email: user.email.clone(),
            password_version: user.password_version,
            expires_at: now + self.cfg().accounts.verify_token_ttl_secs as i64,
            issued_seq: 0,
            federation: None,
        };
        let m = mail::verification_mail(&self.cfg().mail.link_base_url, &user.email, &token, now);
        let mut effects = Effects::from(m);
        effects.audit.extend(event);
        self.store
            .issue_one_time_with(token_hash(&token), rec, self.effects(effects))
            .await?;
        self.mail_wake.notify_one();
        Ok(())
    }

    /// Redeem an email verification token.
    pub async fn verify_email(&self, token: &str, client: &Client) -> AccountResult<User> {
        let actx = client.audit();
        let invalid = || {
            self.metrics.auth_event("email_verify", "failure");
            audit::event(&actx, "email_verify", "invalid_token", None);
            AccountError::BadLink
        };
        if token.is_empty() || token.len() > 512 {
            return Err(invalid());
        }
        // Consumed only if it is a good verification token: a reset token
        // posted here stays usable for its own purpose.
        // The user is known only once the token is: the store fills it in.
        let ev = self.audit_event(&actx, "user.email_verified", "success", None);
        let user = match self
            .store
            .redeem_with(
                token_hash(token),
                Redeem::VerifyEmail,
                self.effects(ev.into()),
                self.stamp(),
            )
            .await
        {
            Ok(changed) => changed.user,
            Err(StoreError::Conflict) => return Err(invalid()),
            Err(e) => return Err(e.into()),
        };
        self.metrics.auth_event("email_verify", "success");
        audit::event(&actx, "email_verify", "success", Some(&user.id.to_string()));
        Ok(user)
    }

    async fn address_throttle(&self, kind: &str, email: &str) -> AccountResult<()> {
        let key = format!("{kind}:{email}");
        match self
            .throttle
            .hit(&key, PER_ADDRESS_MAILS, PER_ADDRESS_WINDOW)
            .await?
        {
            super::throttle::Verdict::Allowed => Ok(()),
            super::throttle::Verdict::Limited { retry_after } => {
                self.metrics.throttled_account.inc();
                Err(AccountError::Throttled { retry_after })
            }
        }
    }

    /// Send the verification mail again (accepted whether or not an
    /// unverified account has that address).
    pub async fn resend_verification(&self, raw_email: &str, client: &Client) -> AccountResult<()> {
        if let Some(email) = email::normalize(raw_email) {
            self.address_throttle("resend", &email).await?;
            if let Some(user) = self.store.find_user_by_email(&email).await? {
                if !user.email_verified && !user.disabled {
                    let ev = self
                        .audit_event(
                            &client.audit(),
                            "user.verification_sent",
                            "success",
                            Some(user.id),
                        )
                        .with("how", "resend");
                    self.send_verification(&user, Some(ev)).await?;
                }
            }
        }
        audit::event(&client.audit(), "email_resend", "accepted", None);
        Ok(())
    }

    /// Mail a reset link (accepted whether or not the account exists, in
    /// the same time either way).
    pub async fn reset_request(&self, raw_email: &str, client: &Client) -> AccountResult<()> {
        let started = Instant::now();
        let result = self
            .reset_request_inner(raw_email, &client.audit(), None)
            .await;
        // Same timing whether or not the account exists.
        if let Some(rest) = RESET_FLOOR.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
        result?;
        let ev = "password_reset_requested";
        audit::event(&client.audit(), ev, "accepted", None);
        Ok(())
    }

    /// Mail a reset link to the account of `raw` (nothing for an unknown
    /// or disabled one); also the console's and CLI's `reset_send`, whose
    /// stored event names the acting admin (`actor`).
    pub(super) async fn reset_request_inner(
        &self,
        raw: &str,
        ctx: &crate::audit::AuditCtx<'_>,
        actor: Option<String>,
    ) -> AccountResult<()> {
        let Some(email) = email::normalize(raw) else {
            return Ok(());
        };
        self.address_throttle("reset", &email).await?;
        let Some(user) = self.store.find_user_by_email(&email).await? else {
            return Ok(());
        };
        if user.disabled {
            return Ok(());
        }
        let token = self.entropy.token(32);
        let now = self.clock.now();
        let ttl = self.cfg().accounts.reset_token_ttl_secs;
        let rec = OneTimeToken {
            kind: OneTimeKind::PasswordReset,
            user_id: user.id,
            email: user.email.clone(),
            password_version: user.password_version,
            expires_at: now + ttl as i64,
            issued_seq: 0,
            federation: None,
        };
        let base = &self.cfg().mail.link_base_url;
        let m = mail::reset_mail(base, &user.email, &token, ttl, now);
        let ev = self
            .audit_event(
                ctx,
                "user.password_reset_requested",
                "success",
                Some(user.id),
            )
            .actor(actor);
        self.store
            .issue_one_time_with(
                token_hash(&token),
                rec,
                self.effects(Effects::from(m).audit(ev)),
            )
            .await?;
        self.mail_wake.notify_one();
        self.metrics.auth_event("password_reset", "success");
        Ok(())
    }

    /// Set a new password with a reset token: every session of the account
    /// ends, and its lockout is lifted.
    pub async fn reset_confirm(
        &self,
        token: &str,
        new: NewPassword,
        client: &Client,
    ) -> AccountResult<()> {
        let actx = client.audit();
        let invalid = || {
            self.metrics.auth_event("password_reset", "failure");
            audit::event(&actx, "password_reset", "invalid_token", None);
            AccountError::BadLink
        };
        if token.is_empty() || token.len() > 512 {
            return Err(invalid());
        }
        let hash = token_hash(token);
        let redeem_check = Redeem::ResetPassword {
            hash: String::new(),
        };
        // Judge the token first (no hash is spent on a bad one, and a
        // policy failure does not burn a good one); the store judges it
        // again, atomically, when it is redeemed.
        let Some(rec) = self.store.find_one_time(&hash).await? else {
            return Err(invalid());
        };
        let Some(user) = self.store.find_user(rec.user_id).await? else {
            return Err(invalid());
        };
        let newest = self
            .store
            .latest_one_time_seq(user.id, OneTimeKind::PasswordReset)
            .await?;
        if domain::check_redeem(&rec, &redeem_check, &user, newest, self.clock.now()).is_err() {
            return Err(invalid());
        }
        check_new_password(&new, &user.email)?;
        let new_hash = self.hasher.hash(&new.password).await?;
        let notice = mail::password_changed_mail(&user.email, self.clock.now());
        let redeem = Redeem::ResetPassword { hash: new_hash };
        let ev = self
            .audit_event(&actx, "user.password_changed", "success", Some(user.id))
            .with("how", "reset");
        let effects = self.effects(crate::store::Effects::from(notice).audit(ev));
        let changed = match self
            .store
            .redeem_with(hash, redeem, effects, self.stamp())
            .await
        {
            Ok(c) => c,
            Err(StoreError::Conflict) => return Err(invalid()),
            Err(e) => return Err(e.into()),
        };
        self.revocations.apply(&changed.revoked);
        self.mail_wake.notify_one();
        // The password is reset: its account lock goes. Should that fail,
        // the lock runs out on its own; the reset itself stands.
        if let Err(e) = self.throttle.clear(&lock_key(&changed.user.email)).await {
            tracing::warn!(cause = %e, "lifting the lockout after a reset");
        }
        self.metrics.auth_event("password_reset", "success");
        let uid = changed.user.id.to_string();
        audit::event(&actx, "password_reset", "success", Some(&uid));
        Ok(())
    }
}

/// Policy and confirmation checks for a new password.
pub fn check_new_password(new: &NewPassword, email: &str) -> AccountResult<()> {
    let mut errs = FieldErrors::default();
    for p in password::policy_problems(&new.password, email) {
        errs.add("new_password", p);
    }
    if new.password != new.confirm {
        errs.add("new_password_confirm", "does not match new_password");
    }
    errs.finish()
}
