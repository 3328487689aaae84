//! The rules of every state change, as pure functions of the current
//! record: `apply(op, current, now) -> new | Conflict`. Each backend reads
//! the current record inside its atomic step, calls one of these, and
//! writes what it returns; no backend has rules of its own.

use uuid::Uuid;

use super::{
    Counter, Delivery, Effects, MfaProof, OneTimeKind, OneTimeToken, OutboxMessage, Redeem,
    RefreshPolicy, Retention, Revocation, RotateOutcome, SessionRecord, Sessions, Stamp,
    StoreError, Totp, User, UserChange,
};

/// How long a [`Revocation::Keys`] entry is kept: a gateway that was cut
/// off from the database for less than this still catches up on it.
pub const KEYS_NOTICE_SECS: i64 = 86_400;

/// What a user change does besides the record itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cascade {
    /// Sessions to end (and whose tokens to revoke).
    pub end: Option<Sessions>,
    /// Void every token issued until now.
    pub cutoff: bool,
    /// Tell every gateway to reload the user's API keys
    /// ([`Revocation::Keys`]).
    pub keys: bool,
}

impl Cascade {
    const NONE: Cascade = Cascade {
        end: None,
        cutoff: false,
        keys: false,
    };
    const EVERYTHING: Cascade = Cascade {
        end: Some(Sessions::All),
        cutoff: true,
        keys: false,
    };

    /// This cascade, and the user's keys reloaded everywhere when the
    /// change touched what a key check reads.
    fn with_keys(mut self, u: &mut User, touched: bool) -> Cascade {
        if touched {
            u.keys_version += 1;
            self.keys = true;
        }
        self
    }
}

/// Use a second factor on `u`: the TOTP secret must still be `secret`; a
/// code's step must be newer than the last one used; a recovery code is
/// removed. `Conflict` otherwise.
pub fn use_mfa(u: &mut User, secret: &str, proof: &MfaProof) -> Result<(), StoreError> {
    let t = match &mut u.totp {
        Some(t) if t.confirmed && t.secret == secret => t,
        _ => return Err(StoreError::Conflict),
    };
    match proof {
        MfaProof::Step(step) => {
            if *step <= t.last_step {
                return Err(StoreError::Conflict);
            }
            t.last_step = *step;
        }
        MfaProof::Recovery(hash) => {
            let at = u
                .recovery_codes
                .iter()
                .position(|h| h == hash)
                .ok_or(StoreError::Conflict)?;
            u.recovery_codes.remove(at);
        }
    }
    Ok(())
}

/// Apply `change` to `current`. `Conflict` when its precondition fails.
pub fn apply_user_change(
    current: &User,
    change: &UserChange,
) -> Result<(User, Cascade), StoreError> {
    let mut u = current.clone();
    let cascade = match change {
        UserChange::SetPassword {
            hash,
            expect_version,
            keep,
        } => {
            if u.password_version != *expect_version || u.disabled {
                return Err(StoreError::Conflict);
            }
            set_password(&mut u, hash);
            match keep {
                Some(sid) => Cascade {
                    end: Some(Sessions::AllBut(*sid)),
                    cutoff: false,
                    keys: false,
                },
                None => Cascade::EVERYTHING,
            }
        }
        UserChange::Disable => {
            let touched = !u.disabled && !u.api_keys.is_empty();
            u.disabled = true;
            Cascade::EVERYTHING.with_keys(&mut u, touched)
        }
        UserChange::Enable => {
            let touched = u.disabled && !u.api_keys.is_empty();
            u.disabled = false;
            Cascade::NONE.with_keys(&mut u, touched)
        }
        UserChange::AdminTotpOff => {
            u.totp = None;
            u.recovery_codes.clear();
            Cascade::NONE
        }
        UserChange::AddRole(r) => {
            let touched = !u.roles.contains(r) && !u.api_keys.is_empty();
            if !u.roles.contains(r) {
                u.roles.push(r.clone());
            }
            Cascade::NONE.with_keys(&mut u, touched)
        }
        UserChange::RemoveRole(r) => {
            let touched = u.roles.contains(r) && !u.api_keys.is_empty();
            u.roles.retain(|x| x != r);
            Cascade::EVERYTHING.with_keys(&mut u, touched)
        }
        UserChange::Profile { username } => {
            if let Some(name) = username {
                u.username = name.clone();
            }
            Cascade::NONE
        }
        UserChange::TotpEnroll { secret } => {
            if u.disabled || u.totp.as_ref().is_some_and(|t| t.confirmed) {
                return Err(StoreError::Conflict);
            }
            u.totp = Some(Totp {
                secret: secret.clone(),
                confirmed: false,
                last_step: 0,
            });
            Cascade::NONE
        }
        UserChange::TotpConfirm {
            secret,
            step,
            recovery,
        } => {
            match &mut u.totp {
                Some(t) if !t.confirmed && t.secret == *secret && !u.disabled => {
                    t.confirmed = true;
                    t.last_step = *step;
                }
                _ => return Err(StoreError::Conflict),
            }
            u.recovery_codes = recovery.clone();
            Cascade::NONE
        }
        UserChange::TotpDisable { secret, proof } => {
            use_mfa(&mut u, secret, proof)?;
            u.totp = None;
            u.recovery_codes.clear();
            Cascade::NONE
        }
        UserChange::UseMfa { secret, proof } => {
            if u.disabled {
                return Err(StoreError::Conflict);
            }
            use_mfa(&mut u, secret, proof)?;
            Cascade::NONE
        }
        UserChange::AddApiKey { key, max } => {
            if u.disabled || u.api_keys.len() >= *max || u.api_keys.iter().any(|k| k.id == key.id) {
                return Err(StoreError::Conflict);
            }
            u.api_keys.push(key.clone());
            Cascade::NONE.with_keys(&mut u, true)
        }
        UserChange::RemoveApiKey(id) => {
            let before = u.api_keys.len();
            u.api_keys.retain(|k| k.id != *id);
            if u.api_keys.len() == before {
                return Err(StoreError::Conflict);
            }
            Cascade::NONE.with_keys(&mut u, true)
        }
        UserChange::ApiKeysUsed(uses) => {
            for (id, at) in uses {
                if let Some(k) = u.api_keys.iter_mut().find(|k| k.id == *id) {
                    if k.last_used_at.is_none_or(|t| t < *at) {
                        k.last_used_at = Some(*at);
                    }
                }
            }
            Cascade::NONE
        }
        UserChange::AddPasskey { passkey, max } => {
            if u.disabled
                || u.passkeys.len() >= *max
                || u.passkeys.iter().any(|p| p.cred_id == passkey.cred_id)
            {
                return Err(StoreError::Conflict);
            }
            u.passkeys.push(passkey.clone());
            Cascade::NONE
        }
        UserChange::RemovePasskey(id) => {
            let before = u.passkeys.len();
            u.passkeys.retain(|p| p.id != *id);
            if u.passkeys.len() == before {
                return Err(StoreError::Conflict);
            }
            Cascade::NONE
        }
        UserChange::UsePasskey {
            cred_id,
            counter,
            credential,
            at,
        } => {
            if u.disabled {
                return Err(StoreError::Conflict);
            }
            let Some(p) = u.passkeys.iter_mut().find(|p| p.cred_id == *cred_id) else {
                return Err(StoreError::Conflict);
            };
            // WebAuthn §7.2 step 21: a counter that does not grow means a
            // replay or a cloned authenticator. Checked here, on the
            // current record, so two sign-ins with one assertion cannot
            // both pass.
            if (*counter != 0 || p.counter != 0) && *counter <= p.counter {
                return Err(StoreError::Conflict);
            }
            p.counter = *counter;
            p.credential = credential.clone();
            p.last_used_at = Some(*at);
            Cascade::NONE
        }
    };
    Ok((u, cascade))
}

fn set_password(u: &mut User, hash: &str) {
    u.password_hash = hash.to_string();
    u.password_version += 1;
}

/// May a session be created for `user`, decided when its password was
/// checked at `expect_password_version`?
pub fn check_session_start(user: &User, expect_password_version: u64) -> Result<(), StoreError> {
    if user.disabled || user.password_version != expect_password_version {
        return Err(StoreError::Conflict);
    }
    Ok(())
}

/// Is a session still usable at `now`?
pub fn session_is_live(s: &SessionRecord, now: i64, idle_secs: u64) -> bool {
    now < s.expires_at && now < s.last_used_at.saturating_add(idle_secs as i64)
}

/// Judge generation `presented` of session `s`. Returns the record to
/// write (`None`: delete the session) and the outcome.
/// Name `user` in the audit events of a redeemed token that named no user
/// (the caller learns whose token it was only from the store).
pub fn for_user(mut effects: Effects, user: Uuid) -> Effects {
    for e in &mut effects.audit {
        e.user_id.get_or_insert(user);
    }
    effects
}

/// The audit outcome of a refresh (see [`Store::rotate_refresh_with`]):
/// `None` when it wrote nothing worth an event.
pub fn refresh_outcome(o: &RotateOutcome) -> Option<&'static str> {
    match o {
        RotateOutcome::Rotated(_) => Some("success"),
        RotateOutcome::Grace(_) => None,
        RotateOutcome::Reused(..) => Some("session_revoked"),
        RotateOutcome::Invalid => None,
    }
}

/// The effects of a refresh, for the outcome it had (see
/// [`refresh_outcome`]): nothing when it had none.
pub fn refresh_effects(o: &RotateOutcome, mut effects: Effects) -> Effects {
    match refresh_outcome(o) {
        Some(outcome) => {
            for e in &mut effects.audit {
                e.outcome = outcome.to_string();
                if let RotateOutcome::Reused(..) = o {
                    e.kind = "session.revoked".into();
                    e.outcome = "refresh_reuse_detected".into();
                }
            }
            effects
        }
        None => Effects::none(),
    }
}

pub fn rotate(
    s: &SessionRecord,
    presented: u64,
    p: &RefreshPolicy,
) -> (Option<SessionRecord>, RotateOutcome) {
    if !session_is_live(s, p.now, p.idle_secs) {
        return (None, RotateOutcome::Invalid);
    }
    if let Some(at) = p.reauth_at {
        // A re-authentication proves the user, not a refresh token: the
        // current generation moves on, and the client gets the new pair.
        let mut next = s.clone();
        next.generation += 1;
        next.rotated_at = p.now;
        next.last_used_at = p.now;
        next.auth_time = Some(at);
        return (Some(next.clone()), RotateOutcome::Rotated(next));
    }
    if presented == s.generation {
        let mut next = s.clone();
        next.generation += 1;
        next.rotated_at = p.now;
        next.last_used_at = p.now;
        return (Some(next.clone()), RotateOutcome::Rotated(next));
    }
    if presented.saturating_add(1) == s.generation
        && p.grace_secs > 0
        && p.now < s.rotated_at.saturating_add(p.grace_secs as i64)
    {
        return (Some(s.clone()), RotateOutcome::Grace(s.clone()));
    }
    if presented < s.generation {
        let revoked = vec![Revocation::Session(s.id, p.revoke_until)];
        return (None, RotateOutcome::Reused(s.clone(), revoked));
    }
    // A generation from the future cannot have been issued by this
    // database (a restored backup, or a forged token): fail closed.
    (None, RotateOutcome::Invalid)
}

/// Which of a user's sessions `which` selects.
pub fn selects(which: Sessions, sid: &Uuid) -> bool {
    match which {
        Sessions::All => true,
        Sessions::AllBut(keep) => *sid != keep,
        Sessions::One(one) => *sid == one,
    }
}

/// The revocations for ending `sessions` (and a cutoff, if asked).
pub fn revocations_for(
    user_id: Uuid,
    sessions: &[Uuid],
    cutoff: bool,
    stamp: Stamp,
) -> Vec<Revocation> {
    let mut out: Vec<Revocation> = sessions
        .iter()
        .map(|sid| Revocation::Session(*sid, stamp.revoke_until))
        .collect();
    if cutoff {
        out.push(Revocation::Cutoff(user_id, stamp.now));
    }
    out
}

/// Is a one-time token still good for `redeem`, given the user's current
/// record and the newest issue sequence of its kind?
pub fn check_redeem(
    t: &OneTimeToken,
    redeem: &Redeem,
    user: &User,
    newest_seq: u64,
    now: i64,
) -> Result<(), StoreError> {
    let kind = match redeem {
        Redeem::VerifyEmail => OneTimeKind::EmailVerify,
        Redeem::ResetPassword { .. } => OneTimeKind::PasswordReset,
        Redeem::Mfa { .. } => OneTimeKind::MfaLogin,
        Redeem::AuthCode => OneTimeKind::AuthCode,
    };
    let good = t.kind == kind
        && t.expires_at > now
        && t.user_id == user.id
        && t.email == user.email
        && !user.disabled
        && match kind {
            OneTimeKind::EmailVerify => true,
            // Only the newest reset link, and only until the password changes.
            OneTimeKind::PasswordReset => {
                t.issued_seq == newest_seq && t.password_version == user.password_version
            }
            // Bound to the login it continues: the password checked then
            // is still the password.
            OneTimeKind::Consent => false,
            OneTimeKind::MfaLogin | OneTimeKind::AuthCode => {
                t.password_version == user.password_version
            }
        };
    if good {
        Ok(())
    } else {
        Err(StoreError::Conflict)
    }
}

/// Apply a redeemed token to the user; `Conflict` when what it grants no
/// longer holds (a second factor already used), and then nothing is
/// consumed.
pub fn apply_redeem(current: &User, redeem: &Redeem) -> Result<(User, Cascade), StoreError> {
    let mut u = current.clone();
    Ok(match redeem {
        Redeem::VerifyEmail => {
            u.email_verified = true;
            (u, Cascade::NONE)
        }
        Redeem::ResetPassword { hash } => {
            set_password(&mut u, hash);
            (u, Cascade::EVERYTHING)
        }
        Redeem::Mfa { secret, proof } => {
            use_mfa(&mut u, secret, proof)?;
            (u, Cascade::NONE)
        }
        Redeem::AuthCode => (u, Cascade::NONE),
    })
}

/// The revocations a cascade writes besides ending sessions.
pub fn keys_notice(user_id: Uuid, cascade: Cascade, stamp: Stamp) -> Option<Revocation> {
    cascade
        .keys
        .then(|| Revocation::Keys(user_id, stamp.now.saturating_add(KEYS_NOTICE_SECS)))
}

/// Apply a delivery attempt to the current message: `None` = remove it.
pub fn apply_delivery(m: &OutboxMessage, d: &Delivery) -> Option<OutboxMessage> {
    match d {
        Delivery::Sent => None,
        Delivery::Failed {
            error,
            retry_at,
            give_up,
            now,
        } => {
            let mut m = m.clone();
            m.attempts += 1;
            m.last_error = Some(error.clone());
            m.claim = None;
            if *give_up {
                m.failed = true;
                m.failed_at = Some(*now);
            } else {
                m.next_attempt_at = *retry_at;
            }
            Some(m)
        }
        Delivery::Deferred { until } => {
            let mut m = m.clone();
            m.claim = None;
            m.next_attempt_at = m.next_attempt_at.max(*until);
            Some(m)
        }
    }
}

/// Claim a message for sender `me` if it is due and nobody else holds it.
/// With `foreign_claims_void` (a store only one process uses), a claim by
/// another instance is a previous process's, dead with it.
pub fn claim_mail(
    m: &OutboxMessage,
    now: i64,
    lease_secs: u64,
    me: Uuid,
    foreign_claims_void: bool,
) -> Option<OutboxMessage> {
    if m.failed || m.next_attempt_at > now {
        return None;
    }
    if let Some(c) = m.claim {
        let held = c.until > now && (c.by == me || !foreign_claims_void);
        if held {
            return None;
        }
    }
    let mut m = m.clone();
    m.claim = Some(super::Claim {
        by: me,
        until: now.saturating_add(lease_secs as i64),
    });
    Some(m)
}

/// Renew sender `me`'s claim on a message right before it sends it, for
/// `lease_secs` from `now` (one send). Only a claim that is still `me`'s
/// is renewed, lapsed or not: once its lease ran out another sender may
/// have claimed the message (or sent it, or recorded a failure that
/// released it), and then `me` must not send it. `None`: skip it.
pub fn renew_mail_claim(
    m: &OutboxMessage,
    now: i64,
    lease_secs: u64,
    me: Uuid,
) -> Option<OutboxMessage> {
    match m.claim {
        Some(c) if c.by == me && !m.failed => {
            let mut m = m.clone();
            m.claim = Some(super::Claim {
                by: me,
                until: now.saturating_add(lease_secs as i64),
            });
            Some(m)
        }
        _ => None,
    }
}

/// Whether sender `me` may record `d` on the current message: a sent
/// message is gone whoever sent it; a failure is `me`'s to record only
/// while no other sender holds the message (it would release their claim).
pub fn delivery_applies(m: &OutboxMessage, d: &Delivery, me: Uuid) -> bool {
    match d {
        Delivery::Sent => true,
        Delivery::Failed { .. } | Delivery::Deferred { .. } => m.claim.is_none_or(|c| c.by == me),
    }
}

// ----- what the sweep may remove

pub fn session_is_dead(s: &SessionRecord, r: &Retention) -> bool {
    !session_is_live(s, r.now, r.idle_secs)
}

pub fn one_time_is_dead(t: &OneTimeToken, r: &Retention) -> bool {
    t.expires_at <= r.now
}

/// A revocation may go once every token it covers is refused anyway. A
/// `Token` entry holds the token's `exp`, a `Cutoff` the time before which
/// tokens are void, a `Session` entry a time no earlier than the session's
/// end (and so than any of its tokens' signing): each covers only tokens
/// that expire at most `lifetime` after that time and are accepted for
/// `leeway` more, both bounded by the store's token horizon, whatever the
/// config in force now. Older than `revocation_horizon` (now minus that
/// horizon), an entry covers nothing that is still accepted. (A `Session`
/// entry's time is itself now plus the horizon when written, so it is kept
/// about twice the horizon: the price of not trusting that time to carry
/// every other gateway's lifetime. A `Keys` notice is kept until its time.)
pub fn revocation_is_dead(rev: &Revocation, r: &Retention) -> bool {
    match *rev {
        Revocation::Token(_, at) | Revocation::Session(_, at) | Revocation::Cutoff(_, at) => {
            at < r.revocation_horizon
        }
        Revocation::Keys(_, until) => until <= r.now,
    }
}

pub fn mail_is_dead(m: &OutboxMessage, r: &Retention) -> bool {
    m.failed
        && m.failed_at
            .unwrap_or(m.created_at)
            .saturating_add(r.failed_mail_secs as i64)
            <= r.now
}

// ----- login attempts and throttles (counted by the store, see `Store::hit_counter`)

/// The account-lockout policy.
#[derive(Debug, Clone, Copy)]
pub struct LockoutPolicy {
    pub max_failures: u32,
    pub window_secs: u64,
    pub lock_secs: u64,
}

impl Counter {
    fn roll(&mut self, now: i64, window: u64) {
        if now >= self.window_start.saturating_add(window as i64) {
            self.window_start = now;
            self.count = 0;
        }
    }

    /// Count one event: at most `limit` per `window`. `Err(retry_after)`
    /// when the budget is spent.
    pub fn hit(&mut self, now: i64, limit: u32, window: u64) -> Result<(), u64> {
        self.roll(now, window);
        if self.count >= limit {
            return Err((self.window_start + window as i64 - now).max(1) as u64);
        }
        self.count += 1;
        Ok(())
    }

    /// Seconds left on a lock.
    pub fn locked_for(&self, now: i64) -> Option<u64> {
        (self.locked_until > now).then(|| (self.locked_until - now) as u64)
    }

    /// Reserve one attempt before it is evaluated: failures so far plus
    /// attempts in flight may not exceed the budget, so however many
    /// arrive at once, at most `max_failures` are ever evaluated per
    /// window. `Err(retry_after)` when locked or the budget is taken.
    pub fn reserve(&mut self, now: i64, p: &LockoutPolicy) -> Result<(), u64> {
        if let Some(left) = self.locked_for(now) {
            return Err(left.max(1));
        }
        self.roll(now, p.window_secs);
        if self.count.saturating_add(self.pending) >= p.max_failures {
            // The attempts in flight settle within a hash or two.
            return Err(1);
        }
        self.pending += 1;
        Ok(())
    }

    /// Settle a reservation. A failure is counted (and may lock: returns
    /// true when this one did); a success or an attempt that was never
    /// evaluated only gives its own reservation back.
    pub fn settle(&mut self, now: i64, p: &LockoutPolicy, failed: bool) -> bool {
        self.pending = self.pending.saturating_sub(1);
        if !failed {
            return false;
        }
        self.roll(now, p.window_secs);
        self.count += 1;
        if self.count >= p.max_failures {
            self.locked_until = now + p.lock_secs as i64;
            self.count = 0;
            self.window_start = now;
            return true;
        }
        false
    }

    /// Nothing worth keeping: no lock, nothing in flight, window over.
    pub fn is_idle(&self, now: i64, window: u64) -> bool {
        self.pending == 0
            && self.locked_until <= now
            && now >= self.window_start.saturating_add(window as i64)
    }
}

#[cfg(test)]
mod tests;

/// The outbox kind of a back-channel logout (OIDC Back-Channel Logout 1.0)
/// owed to the client of an ended session.
pub const BACKCHANNEL_KIND: &str = "backchannel_logout";

/// The back-channel logout owed when client session `s` ends: queued in
/// the same store operation that ends it, signed and sent by the outbox
/// worker. Its id is the session's (a session ends once): `to` is the
/// client id, `subject` the session id (`sid`), `body` the user id (`sub`).
pub fn backchannel_notice(s: &SessionRecord, now: i64) -> Option<OutboxMessage> {
    let c = s.client.as_ref()?;
    Some(OutboxMessage {
        id: s.id,
        kind: BACKCHANNEL_KIND.into(),
        to: c.client_id.clone(),
        subject: s.id.to_string(),
        body: s.user_id.to_string(),
        created_at: now,
        attempts: 0,
        next_attempt_at: now,
        failed: false,
        last_error: None,
        failed_at: None,
        claim: None,
        http: None,
    })
}
