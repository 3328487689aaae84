//! The sessions a federated sign-in starts (CONTRACT 8.1): the opaque
//! `login_code` of code mode, the index of the provider's `sid`s, and
//! back-channel logout.
//!
//! A `login_code` is 32 random bytes, nothing else: it is stored hashed
//! as a single-use one-time token (60 s), and the session it hands out is
//! started by the callback under an id derived from the code, so only the
//! code's holder can ever get its tokens. When the account still needs
//! its TOTP step, no session is started and the exchange answers the MFA
//! shape instead.
//!
//! A provider `sid` is remembered as a one-time record found by the hash
//! of provider and sid (never redeemed, it expires with the session), so
//! a `logout_token` naming only the `sid` finds the account whose
//! sessions to end.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::federation::{Decision, FedCode};
use super::{AccountError, AccountResult, AuthService, Client, Login};
use crate::audit;
use crate::config::IdentityProvider;
use crate::federation::client::VerifiedIdentity;
use crate::federation::state::LOGIN_CODE_TTL_SECS;
use crate::store::{
    Effects, FederatedSession, OneTimeKind, OneTimeToken, Redeem, SessionRecord, Sessions,
    StoreError, User,
};
use crate::tokens::jwt::token_hash;

/// The store key of a `login_code` (apart from every other token's).
fn login_code_key(code: &str) -> String {
    token_hash(&format!("portcullis fed login_code {code}"))
}

/// The session a `login_code` hands out.
fn login_code_session(code: &str) -> Uuid {
    let d = Sha256::digest(format!("portcullis fed login session {code}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

/// The store key of a provider's `sid`.
fn sid_key(provider: &str, sid: &str) -> String {
    token_hash(&format!("portcullis fed sid {provider}\u{0}{sid}"))
}

impl AuthService {
    /// Start the session of a federated sign-in (id `id`), remembering the
    /// provider's `sid` for back-channel logout.
    pub(super) async fn fed_session(
        &self,
        p: &IdentityProvider,
        d: &Decision,
        identity: &VerifiedIdentity,
        client: &Client,
        id: Uuid,
    ) -> AccountResult<(User, SessionRecord)> {
        let fed = self.fed_binding(p, identity, &d.user).await?;
        let amr: Vec<&str> = d.amr.iter().map(String::as_str).collect();
        self.open_session(&d.user, client, &amr, Some(fed), id)
            .await
    }

    /// What a session of this sign-in records about it, with the
    /// provider's `sid` remembered (when it sent one) so a `logout_token`
    /// naming only the `sid` finds the account.
    pub(super) async fn fed_binding(
        &self,
        p: &IdentityProvider,
        identity: &VerifiedIdentity,
        user: &User,
    ) -> AccountResult<FederatedSession> {
        if let Some(sid) = &identity.sid {
            let rec = OneTimeToken {
                kind: OneTimeKind::Consent,
                user_id: user.id,
                email: user.email.clone(),
                password_version: user.password_version,
                expires_at: self.clock.now() + self.cfg().tokens.refresh_ttl_secs as i64,
                issued_seq: 0,
                federation: None,
            };
            self.store
                .issue_one_time_with(sid_key(&p.id, sid), rec, Effects::none())
                .await?;
        }
        Ok(FederatedSession {
            provider: p.id.clone(),
            subject: identity.subject.clone(),
            sid: identity.sid.clone(),
        })
    }

    /// Code mode's callback: a fresh `login_code` (and, unless the TOTP
    /// step is still to come, the session it will hand out).
    pub(super) async fn issue_login_code(
        &self,
        p: &IdentityProvider,
        d: Decision,
        identity: &VerifiedIdentity,
        client: &Client,
    ) -> AccountResult<String> {
        let code = self.entropy.token(32);
        let mut rec = OneTimeToken {
            kind: OneTimeKind::AuthCode,
            user_id: d.user.id,
            email: d.user.email.clone(),
            password_version: d.user.password_version,
            expires_at: self.clock.now() + LOGIN_CODE_TTL_SECS,
            issued_seq: 0,
            federation: None,
        };
        let uid = d.user.id.to_string();
        if d.needs_totp {
            // The exchange hands the TOTP step this sign-in's binding.
            rec.federation = Some(self.fed_binding(p, identity, &d.user).await?);
            self.metrics.federated_login(&p.id, "mfa_required");
            audit::event(
                &client.audit(),
                "federated_login",
                "mfa_required",
                Some(&uid),
            );
        } else {
            self.fed_session(p, &d, identity, client, login_code_session(&code))
                .await?;
            self.metrics.federated_login(&p.id, "success");
            self.metrics.auth_event("login", "success");
            audit::event(&client.audit(), "federated_login", "success", Some(&uid));
        }
        self.store
            .issue_one_time_with(login_code_key(&code), rec, Effects::none())
            .await?;
        Ok(code)
    }

    /// `POST /auth/oidc/exchange`: a `login_code` works once, within 60 s.
    pub async fn exchange_login_code(&self, code: &str, client: &Client) -> AccountResult<Login> {
        let invalid = || {
            audit::event(&client.audit(), "federated_exchange", "invalid_token", None);
            AccountError::BadSessionToken
        };
        if code.is_empty() || code.len() > 128 {
            return Err(invalid());
        }
        // What the callback recorded (fixed at issue; the redemption below
        // is what makes the code single use).
        let federation = self
            .store
            .find_one_time(&login_code_key(code))
            .await?
            .and_then(|r| r.federation);
        let user = match self
            .store
            .redeem_with(
                login_code_key(code),
                Redeem::AuthCode,
                Effects::none(),
                self.stamp(),
            )
            .await
        {
            Ok(changed) => changed.user,
            Err(StoreError::Conflict) => return Err(invalid()),
            Err(e) => return Err(e.into()),
        };
        let uid = user.id.to_string();
        match self.store.find_session(login_code_session(code)).await? {
            Some(s) if s.user_id == user.id => {
                audit::event(&client.audit(), "federated_exchange", "success", Some(&uid));
                Ok(Login::Signed(Box::new(self.sign(&user, &s)?)))
            }
            // The TOTP step is still to come.
            None if user.totp.as_ref().is_some_and(|t| t.confirmed) => {
                let mfa_token = self.mfa_challenge(&user, client, federation).await?;
                audit::event(
                    &client.audit(),
                    "federated_exchange",
                    "mfa_required",
                    Some(&uid),
                );
                Ok(Login::MfaChallenge { mfa_token })
            }
            // Ended meanwhile (logout-all, a disabled account).
            _ => Err(invalid()),
        }
    }

    /// `POST /auth/oidc/{id}/backchannel-logout` (OIDC Back-Channel Logout
    /// 1.0): the `logout_token` is checked (signature by the provider's
    /// JWKS, `iss`, `aud`, `iat`, the event, no `nonce`, a `jti` never seen
    /// before), then every session that sign-in started ends (its `sid`,
    /// else every session of its `sub` through this provider), tunnels
    /// included. Returns how many ended.
    pub async fn backchannel_logout(
        &self,
        provider: &str,
        logout_token: &str,
        client: &Client,
    ) -> Result<usize, FedCode> {
        const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
        let p = self.identity_provider(provider)?;
        let bad = |why: &str| {
            tracing::info!(provider, why, "back-channel logout refused");
            audit::event(&client.audit(), "backchannel_logout", "invalid", None);
            FedCode::InvalidState
        };
        let claims = self
            .federation
            .verify_jwt(&p, logout_token, false)
            .await
            .map_err(|e| bad(e.to_string().as_str()))?;
        if claims.contains_key("nonce") {
            return Err(bad("nonce present"));
        }
        if !claims
            .get("events")
            .and_then(|e| e.as_object())
            .is_some_and(|e| e.contains_key(EVENT))
        {
            return Err(bad("no back-channel logout event"));
        }
        let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(String::from);
        let (sub, sid) = (text("sub"), text("sid"));
        let Some(jti) = text("jti") else {
            return Err(bad("no jti"));
        };
        if sub.is_none() && sid.is_none() {
            return Err(bad("neither sub nor sid"));
        }
        let key = format!("bcl:{provider}:{}", token_hash(&jti));
        match self
            .store
            .hit_counter(&key, 1, 2 * 86_400, self.clock.now())
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(bad("jti seen before")),
            Err(_) => return Err(bad("store unavailable")),
        }
        let store_err = |_| bad("store unavailable");
        // Whose sessions: the account linked to `sub`, else the one the
        // `sid` was recorded for at sign-in.
        let user_id = match &sub {
            Some(sub) => self
                .store
                .find_identity(provider, sub)
                .await
                .map_err(store_err)?
                .map(|l| l.user_id),
            None => {
                let sid = sid.as_deref().unwrap_or_default();
                self.store
                    .find_one_time(&sid_key(provider, sid))
                    .await
                    .map_err(store_err)?
                    .filter(|t| t.kind == OneTimeKind::Consent)
                    .map(|t| t.user_id)
            }
        };
        let Some(user_id) = user_id else {
            return Ok(0);
        };
        let mut ended = 0;
        for s in self.store.list_sessions(user_id).await.map_err(store_err)? {
            let Some(f) = &s.federation else { continue };
            let hit = f.provider == provider
                && sub.as_ref().is_none_or(|sub| &f.subject == sub)
                // A session whose sign-in named no sid is ended by its sub.
                && match (&sid, &f.sid) {
                    (Some(sid), Some(had)) => had == sid,
                    (Some(_), None) => sub.is_some(),
                    (None, _) => true,
                };
            if hit {
                let ev = self
                    .audit_event(
                        &client.audit(),
                        "session.revoked",
                        "backchannel_logout",
                        Some(user_id),
                    )
                    .with("session_id", s.id.to_string())
                    .with("provider", provider.to_string());
                ended += self
                    .end_sessions_with(user_id, Sessions::One(s.id), false, ev.into())
                    .await
                    .map_err(store_err)?;
            }
        }
        let uid = user_id.to_string();
        audit::event(&client.audit(), "backchannel_logout", "success", Some(&uid));
        Ok(ended)
    }
}
