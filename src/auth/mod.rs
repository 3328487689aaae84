//! Accounts, sessions and tokens: the domain logic behind `/auth/*` and the
//! bearer check on proxied requests. Nothing here knows about Pingora; the
//! proxy hands in an [`crate::api::ApiRequest`] and writes back the
//! [`crate::api::ApiResponse`].

pub mod admin;
pub mod email;
pub mod handlers;
pub mod keys;
pub mod password;
pub mod revocation;
pub mod throttle;
pub mod tokens;

use std::sync::Arc;

use http::HeaderMap;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::clock::Clock;
use crate::config::Config;
use crate::metrics;
use crate::store::{SessionRecord, Store, User};
use password::Hasher;
use revocation::{sid_key, Revocations};
use throttle::Throttle;
use tokens::{AccessClaims, TokenRejection, TokenService};

/// Role names: short, no separators, so `X-User-Roles` stays unambiguous.
pub fn valid_role(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 64
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

pub struct AuthService {
    pub cfg: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub tokens: TokenService,
    pub revocations: Revocations,
    pub hasher: Hasher,
    pub throttle: Throttle,
    pub clock: Arc<dyn Clock>,
    pub mail_wake: Arc<Notify>,
}

impl AuthService {
    pub fn new(
        cfg: Arc<Config>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        let keys = keys::load(&cfg.tokens, &cfg.server.data_dir)?;
        let tokens = TokenService::new(keys, cfg.tokens.clone(), clock.clone());
        let revocations =
            Revocations::load(store.clone()).map_err(|e| format!("loading revocations: {e}"))?;
        let throttle = Throttle::load(store.clone(), clock.clone())
            .map_err(|e| format!("loading throttle state: {e}"))?;
        let hasher = Hasher::new(&cfg.passwords).map_err(|e| e.to_string())?;
        Ok(Self {
            cfg,
            store,
            tokens,
            revocations,
            hasher,
            throttle,
            clock,
            mail_wake: Arc::new(Notify::new()),
        })
    }

    /// The bearer check used by proxied routes and `/auth/*` alike.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<AccessClaims, TokenRejection> {
        let result = bearer(headers).and_then(|t| {
            let c = self.tokens.verify(t)?;
            if self.revocations.is_revoked(&c) {
                return Err(TokenRejection::Revoked);
            }
            Ok(c)
        });
        let label = match &result {
            Ok(_) => "valid",
            Err(r) => r.label(),
        };
        metrics::TOKEN_CHECKS.with_label_values(&[label]).inc();
        result
    }

    /// Revoke a session: it can no longer refresh, and its access tokens
    /// stop working at once.
    pub fn revoke_sessions(
        &self,
        sessions: &[SessionRecord],
    ) -> Result<(), crate::store::StoreError> {
        let until = self.clock.now()
            + self.cfg.tokens.access_ttl_secs as i64
            + self.cfg.tokens.leeway_secs as i64;
        let mut keys = Vec::new();
        for s in sessions {
            self.store.delete_session(&s.id)?;
            keys.push((sid_key(&s.id), until));
        }
        self.revocations.revoke(keys)
    }

    /// Revoke every session of a user and void every access token issued
    /// until now, except for `keep` (password change keeps the caller's).
    pub fn revoke_all(
        &self,
        user_id: &Uuid,
        keep: Option<&Uuid>,
    ) -> Result<(), crate::store::StoreError> {
        let sessions: Vec<SessionRecord> = self
            .store
            .list_sessions(user_id)?
            .into_iter()
            .filter(|s| Some(&s.id) != keep)
            .collect();
        self.revoke_sessions(&sessions)?;
        if keep.is_none() {
            self.revocations.set_cutoff(*user_id, self.clock.now())?;
        }
        Ok(())
    }

    pub fn user_json(u: &User) -> serde_json::Value {
        serde_json::json!({
            "id": u.id.to_string(),
            "email": u.email,
            "username": u.username,
            "email_verified": u.email_verified,
            "roles": u.roles,
            "created_at": crate::clock::rfc3339(u.created_at),
        })
    }
}

/// The bearer token from exactly one `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Result<&str, TokenRejection> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(v) = values.next() else {
        return Err(TokenRejection::Missing);
    };
    if values.next().is_some() {
        return Err(TokenRejection::Invalid);
    }
    let v = v.to_str().map_err(|_| TokenRejection::Invalid)?;
    let (scheme, token) = v.split_once(' ').ok_or(TokenRejection::Invalid)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenRejection::Invalid);
    }
    let token = token.trim();
    if token.is_empty()
        || !token.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+' | b'/' | b'=')
        })
    {
        return Err(TokenRejection::Invalid);
    }
    Ok(token)
}
