//! Signing in and out: password sign-in, its second step, refresh and
//! sign-out (re-authentication inside a session is in `reauth`).

use uuid::Uuid;

use super::{email, password, totp as mfa, AuthService};
use super::{lock_key, AccountError, AccountResult, Client, Credentials, Login, Signed};
use crate::audit;
use crate::store::{
    domain, MfaProof, OneTimeKind, OneTimeToken, Redeem, RefreshPolicy, Revocation, RotateOutcome,
    SessionRecord, Sessions, StoreError, User,
};
use crate::tokens::jwt::token_hash;
use crate::tokens::refresh::RefreshKeys;
use crate::tokens::{AccessClaims, TokenRejection};

/// What a sign-out names: a refresh token, and the access token presented
/// with it (or why there is none: it is checked, and counted, only after
/// the refresh token's session has ended).
#[derive(Debug)]
pub struct SignOut<'a> {
    pub refresh_token: Option<&'a str>,
    pub access_token: Result<&'a str, TokenRejection>,
}

impl AuthService {
    /// A password sign-in: the lockout counts every guess per address
    /// (account or not), a disabled account reads as wrong credentials,
    /// and a confirmed TOTP turns the answer into a second-step challenge.
    pub async fn login(&self, creds: Credentials, client: &Client) -> AccountResult<Login> {
        // A failed sign-in changes nothing but a counter: its stored audit
        // event is appended on its own, before the answer.
        let failed = parking_lot::Mutex::new(None);
        let result = self.login_inner(creds, client, &failed).await;
        if let Some((uid, outcome)) = failed.into_inner() {
            let user = uid.and_then(|u: String| Uuid::parse_str(&u).ok());
            let ev = self.audit_event(&client.audit(), "user.login_failed", outcome, user);
            self.record_audit(vec![ev]).await?;
        }
        result
    }

    async fn login_inner(
        &self,
        creds: Credentials,
        client: &Client,
        failed: &parking_lot::Mutex<Option<(Option<String>, &'static str)>>,
    ) -> AccountResult<Login> {
        let actx = client.audit();
        let fail = |uid: Option<&str>| {
            *failed.lock() = Some((uid.map(String::from), "failure"));
            self.metrics.auth_event("login", "failure");
            audit::event(&actx, "login", "failure", uid);
            AccountError::WrongCredentials
        };
        // Over-long input is refused before any hashing.
        if creds.password.chars().count() > password::MAX_LEN {
            return Err(fail(None));
        }
        let normalized = email::normalize(&creds.email);
        // Guesses count per address whether or not an account exists, so a
        // lockout reveals nothing about which emails are registered.
        let mut guess_key = lock_key(normalized.as_deref().unwrap_or(&creds.email));
        let user = match &normalized {
            Some(e) => self.store.find_user_by_email(e).await?,
            None => None,
        };
        let uid = user.as_ref().map(|u| u.id.to_string());
        // A device holding a live refresh token of this account is spared
        // the account lock, but its own guesses are bounded all the same.
        if let (Some(u), Some(t)) = (&user, creds.device.as_deref()) {
            if let Some(s) = self.live_device(u, t).await? {
                guess_key = format!("{guess_key}#device:{}", s.id);
            }
        }
        let reservation = self
            .reserve_guess(&guess_key, &actx, "login", uid.as_deref())
            .await?;
        // A full hash queue answers busy; the reservation is given back.
        let ok = match &user {
            Some(u) => {
                self.hasher
                    .verify(&creds.password, &u.password_hash)
                    .await?
            }
            None => {
                self.hasher.verify_dummy(&creds.password).await?;
                false
            }
        };
        let user = match user {
            Some(u) if ok => u,
            _ => {
                self.guess_failed(reservation, &actx, uid.as_deref())
                    .await?;
                return Err(fail(uid.as_deref()));
            }
        };
        reservation.succeed().await?;
        if user.disabled {
            return Err(fail(uid.as_deref()));
        }
        let uid = user.id.to_string();
        if self.cfg().accounts.require_email_verification && !user.email_verified {
            self.metrics.auth_event("login", "failure");
            audit::event(&actx, "login", "email_not_verified", Some(&uid));
            *failed.lock() = Some((Some(uid), "email_not_verified"));
            return Err(AccountError::EmailNotVerified);
        }
        if user.totp.as_ref().is_some_and(|t| t.confirmed) {
            // No tokens yet: the second factor completes this login.
            let mfa_token = self.mfa_challenge(&user, client, None).await?;
            audit::event(&actx, "login", "mfa_required", Some(&uid));
            return Ok(Login::MfaChallenge { mfa_token });
        }
        // The session starts only if the account is as it was when the
        // password was checked (not disabled, password not changed since).
        let signed = match self.start_session(&user, client, &["pwd"]).await {
            Err(AccountError::Changed) => {
                audit::event(&actx, "login", "changed_meanwhile", Some(&uid));
                return Err(fail(Some(&uid)));
            }
            r => r?,
        };
        self.metrics.auth_event("login", "success");
        audit::event(&actx, "login", "success", Some(&uid));
        Ok(Login::Signed(Box::new(signed)))
    }

    /// Issue the one-time token of a sign-in whose password was right.
    pub(super) async fn mfa_challenge(
        &self,
        user: &User,
        client: &Client,
        federation: Option<crate::store::FederatedSession>,
    ) -> AccountResult<String> {
        let token = self.entropy.token(32);
        let rec = OneTimeToken {
            kind: OneTimeKind::MfaLogin,
            user_id: user.id,
            email: user.email.clone(),
            password_version: user.password_version,
            expires_at: self.clock.now() + mfa::MFA_TOKEN_TTL_SECS,
            issued_seq: 0,
            federation,
        };
        // The token is a state change of its own: its event goes with it.
        let ev = self.audit_event(
            &client.audit(),
            "mfa.challenged",
            "mfa_required",
            Some(user.id),
        );
        self.store
            .issue_one_time_with(token_hash(&token), rec, self.effects(ev.into()))
            .await?;
        Ok(token)
    }

    /// The session of a live refresh token of `user`: authentic, current
    /// generation, not expired or idle. A rotated token is no device.
    async fn live_device(&self, user: &User, token: &str) -> AccountResult<Option<SessionRecord>> {
        let Some(p) = RefreshKeys::parse(token) else {
            return Ok(None);
        };
        let Some(s) = self.store.find_session(p.sid).await? else {
            return Ok(None);
        };
        let live = self.refresh.is_authentic(&p, &s)
            && s.user_id == user.id
            && p.generation == s.generation
            && domain::session_is_live(&s, self.clock.now(), self.cfg().tokens.refresh_idle_secs);
        Ok(live.then_some(s))
    }

    /// Create a session for a user who just proved who they are; its
    /// tokens carry the user as the store has it now. `Changed` when the
    /// account changed since it was read.
    pub async fn start_session(
        &self,
        user: &User,
        client: &Client,
        amr: &[&str],
    ) -> AccountResult<Signed> {
        self.start_session_with(user, client, amr, None).await
    }

    /// [`Self::start_session`], recording the outside sign-in it came from.
    pub async fn start_session_with(
        &self,
        user: &User,
        client: &Client,
        amr: &[&str],
        federation: Option<crate::store::FederatedSession>,
    ) -> AccountResult<Signed> {
        let id = self.entropy.uuid();
        let (current, session) = self.open_session(user, client, amr, federation, id).await?;
        self.sign(&current, &session)
    }

    /// Store a new session `id` for `user` (the sign-in's audit event
    /// with it); the user as the store has it now, and the session.
    pub(super) async fn open_session(
        &self,
        user: &User,
        client: &Client,
        amr: &[&str],
        federation: Option<crate::store::FederatedSession>,
        id: uuid::Uuid,
    ) -> AccountResult<(User, SessionRecord)> {
        let now = self.clock.now();
        let session = SessionRecord {
            id,
            user_id: user.id,
            generation: 0,
            seed: hex(&self.entropy.bytes(16)),
            rotated_at: now,
            created_at: now,
            last_used_at: now,
            expires_at: now + self.cfg().tokens.refresh_ttl_secs as i64,
            ip: client.ip.to_string(),
            user_agent: client.user_agent.clone(),
            amr: amr.iter().map(|m| m.to_string()).collect(),
            // A sign-in: what every later access token of this session
            // carries as `auth_time`, refresh after refresh.
            auth_time: Some(now),
            federation,
            client: None,
        };
        let ev = self
            .audit_event(&client.audit(), "user.login", "success", Some(user.id))
            .with("amr", amr.to_vec())
            .with("session_id", session.id.to_string());
        let current = self
            .store
            .create_session_with(
                session.clone(),
                user.password_version,
                self.effects(ev.into()),
            )
            .await?;
        Ok((current, session))
    }

    /// The tokens of `session` for `user`.
    pub fn sign(&self, user: &User, session: &SessionRecord) -> AccountResult<Signed> {
        // Sessions from before `amr` was recorded were password logins.
        let pwd = ["pwd".to_string()];
        let amr = if session.amr.is_empty() {
            &pwd[..]
        } else {
            &session.amr[..]
        };
        let (access, claims) = self
            .tokens
            .issue_for_session(
                &user.id,
                &user.email,
                &user.roles,
                &session.id,
                amr,
                session.auth_time,
            )
            .map_err(AccountError::internal)?;
        Ok(Signed {
            access_token: access,
            access_exp: claims.exp,
            expires_in: self.tokens.access_ttl(),
            refresh_token: self.refresh.token(session),
            user: user.clone(),
        })
    }

    /// Complete a sign-in with a TOTP or recovery code. The one-time token
    /// is consumed with the code, atomically, only when the code is good;
    /// wrong codes count toward the lockout.
    pub async fn verify_mfa(
        &self,
        mfa_token: &str,
        code: &str,
        client: &Client,
    ) -> AccountResult<Signed> {
        let actx = client.audit();
        let invalid_token = |uid: Option<&str>| {
            self.metrics.auth_event("login", "failure");
            audit::event(&actx, "mfa_verify", "invalid_token", uid);
            AccountError::BadSessionToken
        };
        if mfa_token.is_empty() || mfa_token.len() > 512 {
            return Err(invalid_token(None));
        }
        let hash = token_hash(mfa_token);
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
        let Some(sealed) = user.totp.as_ref().map(|t| t.secret.clone()) else {
            return Err(invalid_token(Some(&uid)));
        };
        let reservation = self
            .reserve_guess(&lock_key(&user.email), &actx, "login", Some(&uid))
            .await?;
        let wrong = |what: &str| {
            self.metrics.auth_event("login", "failure");
            audit::event(&actx, "mfa_verify", what, Some(&uid));
            AccountError::WrongCode
        };
        let failed_event = |outcome: &str| {
            vec![self.audit_event(&actx, "user.login_failed", outcome, Some(user.id))]
        };
        let Some(proof) = self.proof_of(&user, &sealed, code)? else {
            self.guess_failed(reservation, &actx, Some(&uid)).await?;
            self.record_audit(failed_event("invalid_code")).await?;
            return Err(wrong("invalid_code"));
        };
        let recovery = matches!(proof, MfaProof::Recovery(_));
        let method = if recovery { "recovery_code" } else { "totp" };
        let ev = self
            .audit_event(&actx, "mfa_verify", "success", Some(user.id))
            .with("method", method);
        let redeemed = self
            .store
            .redeem_with(
                hash.clone(),
                Redeem::Mfa {
                    secret: sealed,
                    proof,
                },
                self.effects(ev.into()),
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
                    self.record_audit(failed_event("code_reused")).await?;
                    return Err(wrong("code_reused"));
                }
                reservation.succeed().await?;
                return Err(invalid_token(Some(&uid)));
            }
            Err(e) => return Err(e.into()),
        };
        reservation.succeed().await?;
        // A federated sign-in's step records its provider, as a sign-in
        // without the step does (back-channel logout ends it).
        let started = match rec.federation {
            Some(fed) => {
                self.start_session_with(&user, client, &["fed", "otp"], Some(fed))
                    .await
            }
            None => self.start_session(&user, client, &["pwd", "otp"]).await,
        };
        let signed = match started {
            Err(AccountError::Changed) => return Err(invalid_token(Some(&uid))),
            r => r?,
        };
        self.metrics.auth_event("login", "success");
        let outcome = if recovery {
            "success_recovery_code"
        } else {
            "success_mfa"
        };
        audit::event(&actx, "login", outcome, Some(&uid));
        Ok(signed)
    }

    /// Rotate a refresh token: a new pair for the same session. A token
    /// presented again after its rotation ends the session (reuse).
    pub async fn refresh_session(&self, presented: &str, client: &Client) -> AccountResult<Signed> {
        let actx = client.audit();
        let invalid = |uid: Option<&str>, why: &str| {
            self.metrics.auth_event("refresh", "failure");
            audit::event(&actx, "refresh", why, uid);
            AccountError::BadSessionToken
        };
        // An unauthentic token never touches the session it names.
        let Some(p) = RefreshKeys::parse(presented) else {
            return Err(invalid(None, "invalid"));
        };
        let owner = match self.store.find_session(p.sid).await? {
            // A client session of the OpenID Provider refreshes only there.
            Some(s) if self.refresh.is_authentic(&p, &s) && s.client.is_none() => s.user_id,
            _ => return Err(invalid(None, "invalid")),
        };
        let stamp = self.stamp();
        // Its outcome is set by what the rotation did (see
        // `store::domain::refresh_effects`).
        let ev = self
            .audit_event(&actx, "session.refreshed", "", Some(owner))
            .with("session_id", p.sid.to_string());
        let outcome = self
            .store
            .rotate_refresh_with(
                p.sid,
                p.generation,
                RefreshPolicy {
                    now: stamp.now,
                    grace_secs: self.cfg().tokens.refresh_reuse_grace_secs,
                    idle_secs: self.cfg().tokens.refresh_idle_secs,
                    revoke_until: stamp.revoke_until,
                    reauth_at: None,
                },
                self.effects(ev.into()),
            )
            .await?;
        let session = match outcome {
            RotateOutcome::Rotated(s) | RotateOutcome::Grace(s) => s,
            RotateOutcome::Reused(s, revoked) => {
                // Already ended and committed; its access tokens die now.
                self.revocations.apply(&revoked);
                let uid = s.user_id.to_string();
                let ev = "refresh_reuse_detected";
                audit::event(&actx, ev, "session_revoked", Some(&uid));
                return Err(invalid(Some(&uid), "reuse_detected"));
            }
            RotateOutcome::Invalid => return Err(invalid(None, "invalid")),
        };
        let uid = session.user_id.to_string();
        let Some(user) = self.enabled_owner(&actx, &session, &[]).await? else {
            return Err(invalid(Some(&uid), "disabled"));
        };
        let signed = self.sign(&user, &session)?;
        self.metrics.auth_event("refresh", "success");
        audit::event(&actx, "refresh", "success", Some(&uid));
        Ok(signed)
    }

    /// Sign out: any authentic refresh token of a session (even a rotated
    /// one) ends it; an access token is revoked and its session ends too.
    pub async fn logout(&self, what: SignOut<'_>, client: &Client) -> AccountResult<()> {
        let mut uid = None;
        // One stored event per sign-out, with the first session it ends.
        let mut logged = false;
        let mut event = |user: Uuid, sid: Uuid| {
            let first = !std::mem::replace(&mut logged, true);
            let ev = self
                .audit_event(&client.audit(), "session.revoked", "logout", Some(user))
                .with("session_id", sid.to_string());
            if first {
                crate::store::Effects::from(ev)
            } else {
                crate::store::Effects::none()
            }
        };
        if let Some(p) = what.refresh_token.and_then(RefreshKeys::parse) {
            if let Some(s) = self.store.find_session(p.sid).await? {
                if self.refresh.is_authentic(&p, &s) {
                    uid = Some(s.user_id.to_string());
                    let effects = event(s.user_id, s.id);
                    self.end_sessions_with(s.user_id, Sessions::One(s.id), false, effects)
                        .await?;
                }
            }
        }
        if let Ok(claims) = self.check_presented(what.access_token) {
            if let (Ok(jti), Ok(sub), Ok(sid)) = (
                Uuid::parse_str(&claims.jti),
                Uuid::parse_str(&claims.sub),
                Uuid::parse_str(&claims.sid),
            ) {
                let revoked = vec![Revocation::Token(jti, claims.exp)];
                self.store.revoke(revoked.clone()).await?;
                self.revocations.apply(&revoked);
                // The token's own session ends too, refresh token presented or not.
                let effects = event(sub, sid);
                self.end_sessions_with(sub, Sessions::One(sid), false, effects)
                    .await?;
            }
            uid = Some(claims.sub.clone());
        }
        self.metrics.auth_event("logout", "success");
        audit::event(&client.audit(), "logout", "success", uid.as_deref());
        Ok(())
    }

    /// Sign out everywhere: every session ends and every token issued
    /// until now is refused.
    pub async fn logout_all(&self, claims: &AccessClaims, client: &Client) -> AccountResult<()> {
        let user = self.current_user(claims).await?;
        let ev = self
            .audit_event(
                &client.audit(),
                "session.revoked",
                "logout_all",
                Some(user.id),
            )
            .with("all", true);
        self.end_sessions_with(user.id, Sessions::All, true, ev.into())
            .await?;
        self.metrics.auth_event("logout", "success");
        audit::event(&client.audit(), "logout_all", "success", Some(&claims.sub));
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}
