//! The OpenID Provider's account operations (CONTRACT 8.2): authorization
//! codes, the client sessions they start, their refresh and revocation.
//! The protocol (parameters, client authentication, JWTs, pages) is the
//! front door's, in [`crate::oidc_provider`].
//!
//! A client session IS a session of the user in the session store (with
//! [`ClientBinding`] set): the same refresh-token rotation and reuse
//! detection as `POST /auth/refresh`, listed in `GET /auth/sessions`, ended
//! by logout-all, disable, password reset and admin revocation.
//!
//! An authorization code is `<random>.<grant>`: the grant (client, redirect
//! URI, PKCE challenge, nonce, scope, `auth_time`, `amr`) rides in the code
//! and only the code's SHA-256 is stored (a one-time token of kind
//! `AuthCode`), so changing a byte of the grant makes the code unknown. The
//! client session a code starts has an id derived from the code: a second
//! use of the code finds it and ends it (RFC 6749 §4.1.2).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{AccountError, AccountResult, AuthService, Client};
use crate::audit;
use crate::store::{
    ClientBinding, OneTimeKind, OneTimeToken, Redeem, RefreshPolicy, Revocation, RotateOutcome,
    SessionRecord, Sessions, StoreError, User,
};
use crate::tokens::jwt::token_hash;
use crate::tokens::refresh::RefreshKeys;
use crate::tokens::AccessClaims;

/// What an authorization code grants, bound to it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CodeGrant {
    #[serde(rename = "u")]
    pub user_id: Uuid,
    #[serde(rename = "c")]
    pub client_id: String,
    #[serde(rename = "r")]
    pub redirect_uri: String,
    /// Space-separated.
    #[serde(rename = "s")]
    pub scope: String,
    /// The S256 `code_challenge`, when one was sent.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub code_challenge: Option<String>,
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(rename = "t")]
    pub auth_time: i64,
    #[serde(rename = "a")]
    pub amr: Vec<String>,
}

/// How long a consent is remembered.
const CONSENT_SECS: i64 = 365 * 86_400;

/// The store key of a consent: user, client and the scope set.
fn consent_key(user: Uuid, client_id: &str, scope: &[String]) -> String {
    let mut s: Vec<&str> = scope.iter().map(String::as_str).collect();
    s.sort_unstable();
    s.dedup();
    token_hash(&format!("consent {user} {client_id} {}", s.join(" ")))
}

/// The longest code accepted (a grant with a long redirect URI and nonce).
const MAX_CODE: usize = 8192;

/// The grant a code carries (not yet checked against the store).
pub fn code_grant(code: &str) -> Option<CodeGrant> {
    if code.len() > MAX_CODE {
        return None;
    }
    let (_, grant) = code.split_once('.')?;
    let raw = URL_SAFE_NO_PAD.decode(grant).ok()?;
    serde_json::from_slice(&raw).ok()
}

/// The id of the client session a code starts.
pub fn code_session_id(code: &str) -> Uuid {
    let d = Sha256::digest([b"portcullis code session ".as_slice(), code.as_bytes()].concat());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

/// A started or refreshed client session: the user as the store has it.
#[derive(Debug, Clone)]
pub struct ClientSession {
    pub user: User,
    pub session: SessionRecord,
    pub refresh_token: String,
}

/// Why a code or refresh token gave nothing (RFC 6749 `invalid_grant`).
#[derive(Debug)]
pub enum GrantError {
    Invalid,
    Account(AccountError),
}

impl From<AccountError> for GrantError {
    fn from(e: AccountError) -> Self {
        GrantError::Account(e)
    }
}

impl From<StoreError> for GrantError {
    fn from(e: StoreError) -> Self {
        GrantError::Account(e.into())
    }
}

impl AuthService {
    /// Issue an authorization code for `grant` (the user signed in and may
    /// use the client): stored hashed, single use, `ttl` seconds.
    pub async fn issue_auth_code(
        &self,
        user: &User,
        grant: &CodeGrant,
        ttl: u64,
        client: &Client,
    ) -> AccountResult<String> {
        let json = serde_json::to_vec(grant).map_err(AccountError::internal)?;
        let code = format!(
            "{}.{}",
            self.entropy.token(32),
            URL_SAFE_NO_PAD.encode(json)
        );
        let rec = OneTimeToken {
            kind: OneTimeKind::AuthCode,
            user_id: user.id,
            email: user.email.clone(),
            password_version: user.password_version,
            expires_at: self.clock.now() + ttl as i64,
            issued_seq: 0,
            federation: None,
        };
        let ev = self
            .audit_event(
                &client.audit(),
                "oauth.code_issued",
                "success",
                Some(user.id),
            )
            .with("client_id", grant.client_id.clone());
        self.store
            .issue_one_time_with(token_hash(&code), rec, self.effects(ev.into()))
            .await?;
        Ok(code)
    }

    /// Spend a code for `client_id` and start its client session. A code
    /// used before ends the session its first use started (and keeps it
    /// from starting, should the first use still be under way).
    pub async fn redeem_auth_code(
        &self,
        code: &str,
        client_id: &str,
        client: &Client,
    ) -> Result<(ClientSession, CodeGrant), GrantError> {
        let actx = client.audit();
        let grant = match code_grant(code) {
            Some(g) if g.client_id == client_id => g,
            _ => return Err(GrantError::Invalid),
        };
        let uid = grant.user_id.to_string();
        let sid = code_session_id(code);
        let stamp = self.stamp();
        let event = |kind: &str, outcome: &str, user: Uuid| {
            self.audit_event(&actx, kind, outcome, Some(user))
                .with("client_id", client_id)
                .with("session_id", sid.to_string())
        };
        let ev = event("oauth.code_redeemed", "success", grant.user_id);
        let user = match self
            .store
            .redeem_with(
                token_hash(code),
                Redeem::AuthCode,
                self.effects(ev.into()),
                stamp,
            )
            .await
        {
            Ok(changed) => changed.user,
            Err(StoreError::Conflict) => {
                // Unknown, expired or used: a used code revokes what it gave.
                let revoked = vec![Revocation::Session(sid, stamp.revoke_until)];
                self.store.revoke(revoked.clone()).await?;
                self.revocations.apply(&revoked);
                if let Some(s) = self.store.find_session(sid).await? {
                    let ev = event("session.revoked", "code_reuse", s.user_id);
                    self.end_sessions_with(s.user_id, Sessions::One(sid), false, ev.into())
                        .await?;
                    audit::event(&actx, "oauth_code_reuse", "session_revoked", Some(&uid));
                }
                return Err(GrantError::Invalid);
            }
            Err(e) => return Err(e.into()),
        };
        let now = self.clock.now();
        let session = SessionRecord {
            id: sid,
            user_id: user.id,
            generation: 0,
            seed: data_encoding::HEXLOWER.encode(&self.entropy.bytes(16)),
            rotated_at: now,
            created_at: now,
            last_used_at: now,
            expires_at: now + self.cfg().tokens.refresh_ttl_secs as i64,
            ip: client.ip.to_string(),
            user_agent: format!("{client_id} (OpenID client)"),
            amr: grant.amr.clone(),
            auth_time: Some(grant.auth_time),
            federation: None,
            client: Some(ClientBinding {
                client_id: client_id.to_string(),
                scope: grant.scope.clone(),
            }),
        };
        let ev = event("session.created", "success", user.id);
        let user = match self
            .store
            .create_session_with(
                session.clone(),
                user.password_version,
                self.effects(ev.into()),
            )
            .await
        {
            Ok(u) => u,
            Err(StoreError::Conflict) => return Err(GrantError::Invalid),
            Err(e) => return Err(e.into()),
        };
        // A second use that ran meanwhile revoked this session before it
        // existed: end it now. The first use still gets its answer (one
        // redemption, one success), but what it carries is already dead,
        // as if the second use had come after it (RFC 6749 §4.1.2).
        if self.session_revoked(&user, sid) {
            let ev = event("session.revoked", "code_reuse", user.id);
            self.end_sessions_with(user.id, Sessions::One(sid), false, ev.into())
                .await?;
        }
        audit::event(&actx, "oauth_code", "success", Some(&uid));
        let refresh_token = self.refresh.token(&session);
        Ok((
            ClientSession {
                user,
                session,
                refresh_token,
            },
            grant,
        ))
    }

    /// Is session `sid` of `user` revoked (ended, logged out everywhere)?
    pub fn session_revoked(&self, user: &User, sid: Uuid) -> bool {
        let probe = AccessClaims {
            iss: String::new(),
            aud: String::new(),
            sub: user.id.to_string(),
            exp: i64::MAX,
            iat: self.clock.now(),
            nbf: None,
            jti: Uuid::nil().to_string(),
            sid: sid.to_string(),
            email: String::new(),
            roles: vec![],
            amr: vec![],
            auth_time: None,
        };
        self.revocations.is_revoked(&probe)
    }

    /// Rotate a client session's refresh token, as `POST /auth/refresh`
    /// does for the gateway's own (reuse ends the session).
    pub async fn refresh_client_session(
        &self,
        presented: &str,
        client_id: &str,
        client: &Client,
    ) -> Result<ClientSession, GrantError> {
        let actx = client.audit();
        let Some(p) = RefreshKeys::parse(presented) else {
            return Err(GrantError::Invalid);
        };
        let owner = match self.store.find_session(p.sid).await? {
            Some(s)
                if self.refresh.is_authentic(&p, &s)
                    && s.client.as_ref().is_some_and(|c| c.client_id == client_id) =>
            {
                s.user_id
            }
            _ => return Err(GrantError::Invalid),
        };
        let stamp = self.stamp();
        let cfg = self.cfg();
        // Its outcome is set by what the rotation did, as for the
        // gateway's own sessions (`store::domain::refresh_effects`).
        let ev = self
            .audit_event(&actx, "session.refreshed", "", Some(owner))
            .with("session_id", p.sid.to_string())
            .with("client_id", client_id);
        let outcome = self
            .store
            .rotate_refresh_with(
                p.sid,
                p.generation,
                RefreshPolicy {
                    now: stamp.now,
                    grace_secs: cfg.tokens.refresh_reuse_grace_secs,
                    idle_secs: cfg.tokens.refresh_idle_secs,
                    revoke_until: stamp.revoke_until,
                    reauth_at: None,
                },
                self.effects(ev.into()),
            )
            .await?;
        let session = match outcome {
            RotateOutcome::Rotated(s) | RotateOutcome::Grace(s) => s,
            RotateOutcome::Reused(s, revoked) => {
                self.revocations.apply(&revoked);
                let uid = s.user_id.to_string();
                audit::event(
                    &actx,
                    "oauth_refresh_reuse_detected",
                    "session_revoked",
                    Some(&uid),
                );
                self.metrics.auth_event("refresh", "failure");
                return Err(GrantError::Invalid);
            }
            RotateOutcome::Invalid => return Err(GrantError::Invalid),
        };
        let fields = [("client_id", client_id)];
        let Some(user) = self.enabled_owner(&actx, &session, &fields).await? else {
            return Err(GrantError::Invalid);
        };
        self.metrics.auth_event("refresh", "success");
        audit::event(
            &actx,
            "oauth_refresh",
            "success",
            Some(&user.id.to_string()),
        );
        let refresh_token = self.refresh.token(&session);
        Ok(ClientSession {
            user,
            session,
            refresh_token,
        })
    }

    /// RFC 7009: a refresh token of `client_id` ends its session; anything
    /// else is ignored (the caller answers 200 either way).
    pub async fn revoke_client_refresh(
        &self,
        presented: &str,
        client_id: &str,
        client: &Client,
    ) -> AccountResult<bool> {
        let Some(p) = RefreshKeys::parse(presented) else {
            return Ok(false);
        };
        let Some(s) = self.store.find_session(p.sid).await? else {
            return Ok(false);
        };
        let ours = s.client.as_ref().is_some_and(|c| c.client_id == client_id);
        if !self.refresh.is_authentic(&p, &s) || !ours {
            return Ok(false);
        }
        let ev = self
            .audit_event(
                &client.audit(),
                "session.revoked",
                "oauth_revoke",
                Some(s.user_id),
            )
            .with("session_id", s.id.to_string())
            .with("client_id", client_id);
        self.end_sessions_with(s.user_id, Sessions::One(s.id), false, ev.into())
            .await?;
        audit::event(
            &client.audit(),
            "oauth_revoke",
            "session_ended",
            Some(&s.user_id.to_string()),
        );
        Ok(true)
    }

    /// End one client session (RP-initiated logout), if it is still there.
    pub async fn end_client_session(
        &self,
        user_id: Uuid,
        sid: Uuid,
        client: &Client,
    ) -> AccountResult<()> {
        if let Some(s) = self.store.find_session(sid).await? {
            if let (true, Some(binding)) = (s.user_id == user_id, &s.client) {
                let ev = self
                    .audit_event(
                        &client.audit(),
                        "session.revoked",
                        "rp_logout",
                        Some(user_id),
                    )
                    .with("session_id", sid.to_string())
                    .with("client_id", binding.client_id.clone());
                self.end_sessions_with(user_id, Sessions::One(sid), false, ev.into())
                    .await?;
            }
        }
        Ok(())
    }

    /// Has `user` allowed `client_id` these scopes (as a set) before?
    pub async fn has_consent(
        &self,
        user: &User,
        client: &crate::config::oidc_provider::OidcClient,
        scope: &[String],
    ) -> AccountResult<bool> {
        let key = consent_key(user.id, &client.client_id, scope);
        Ok(self.store.find_one_time(&key).await?.is_some_and(|t| {
            t.kind == OneTimeKind::Consent
                && t.user_id == user.id
                && t.expires_at > self.clock.now()
        }))
    }

    /// Remember that `user` allowed `client_id` these scopes (a year).
    pub async fn remember_consent(
        &self,
        user: &User,
        client: &crate::config::oidc_provider::OidcClient,
        scope: &[String],
        caller: &Client,
    ) -> AccountResult<()> {
        let rec = OneTimeToken {
            kind: OneTimeKind::Consent,
            user_id: user.id,
            email: user.email.clone(),
            password_version: user.password_version,
            expires_at: self.clock.now() + CONSENT_SECS,
            issued_seq: 0,
            federation: None,
        };
        let key = consent_key(user.id, &client.client_id, scope);
        let ev = self
            .audit_event(
                &caller.audit(),
                "oauth.consent_granted",
                "success",
                Some(user.id),
            )
            .with("client_id", client.client_id.clone())
            .with("scope", scope.join(" "));
        self.store
            .issue_one_time_with(key, rec, self.effects(ev.into()))
            .await?;
        Ok(())
    }

    /// The user behind a provider sign-in, if the account is usable.
    pub async fn provider_user(&self, id: Uuid) -> AccountResult<Option<User>> {
        Ok(self.store.find_user(id).await?.filter(|u| !u.disabled))
    }
}
