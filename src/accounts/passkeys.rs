//! Passkeys (WebAuthn, issue 14) with `webauthn-rs`: registration by a
//! signed-in browser, and discoverable sign-in (no email, no password) on
//! the portal. The relying party is `mail.link_base_url`: its host is the
//! RP ID and its origin the only one a ceremony is accepted from.
//!
//! A ceremony's state (the challenge) lives in memory on the gateway that
//! started it, for `browser.passkey_timeout_secs`, and is taken out (so
//! used at most once) when it is finished. Credentials live in the user
//! record and change only through `change_user`: `AddPasskey` refuses a
//! credential id the user already has, and `UsePasskey` moves the
//! signature counter forward on the current record, so one assertion
//! replayed, or sent twice at once, signs in once.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use parking_lot::Mutex;
use serde_json::Value;
use uuid::Uuid;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Webauthn, WebauthnBuilder,
};

use super::{AccountError, AccountResult, AuthService, Client, Signed};
use crate::audit;
use crate::config::Config;
use crate::mail;
use crate::store::{StoreError, StoredPasskey, UserChange};

/// At most this many passkeys per user.
pub const MAX_PASSKEYS: usize = 10;
/// At most this many ceremonies in flight per gateway.
const MAX_CEREMONIES: usize = 10_000;

/// A ceremony started: its id and the options for the browser.
#[derive(Debug, Clone)]
pub struct Ceremony {
    pub id: String,
    pub options: Value,
}

/// Ceremonies started and not yet finished: id → (state, expiry).
#[derive(Default)]
pub struct Ceremonies {
    registrations: Mutex<HashMap<String, (Uuid, PasskeyRegistration, i64)>>,
    sign_ins: Mutex<HashMap<String, (DiscoverableAuthentication, i64)>>,
}

fn insert<T>(
    m: &Mutex<HashMap<String, T>>,
    id: String,
    v: T,
    now: i64,
    exp: fn(&T) -> i64,
) -> bool {
    let mut m = m.lock();
    if m.len() >= MAX_CEREMONIES {
        m.retain(|_, v| exp(v) > now);
        if m.len() >= MAX_CEREMONIES {
            return false;
        }
    }
    m.insert(id, v);
    true
}

/// The relying party of this config. A `mail.link_base_url` WebAuthn does
/// not accept (an IP address, say) turns passkeys off (logged).
pub fn relying_party(cfg: &Config) -> AccountResult<Webauthn> {
    let unavailable = |cause: String| {
        tracing::warn!(%cause, "passkeys unavailable: mail.link_base_url is no WebAuthn relying party");
        AccountError::PasskeysUnavailable
    };
    let origin = Url::parse(&cfg.mail.link_base_url).map_err(|e| unavailable(e.to_string()))?;
    let host = origin
        .host_str()
        .ok_or_else(|| unavailable("no host".into()))?
        .to_string();
    WebauthnBuilder::new(&host, &origin)
        .map_err(|e| unavailable(e.to_string()))?
        .rp_name("Portcullis")
        .timeout(Duration::from_secs(cfg.browser.passkey_timeout_secs))
        .build()
        .map_err(|e| unavailable(e.to_string()))
}

/// A field of a ceremony's JSON body (the browser's WebAuthn objects).
pub fn field<T: serde::de::DeserializeOwned>(body: &Value, name: &str) -> AccountResult<T> {
    serde_json::from_value(body.get(name).cloned().unwrap_or(Value::Null))
        .map_err(|_| AccountError::invalid(name, "is missing or malformed"))
}

/// The `ceremony` id of a ceremony's JSON body.
pub fn ceremony_id(body: &Value) -> AccountResult<String> {
    match body.get("ceremony").and_then(Value::as_str) {
        Some(s) if !s.is_empty() && s.len() <= 64 => Ok(s.to_string()),
        _ => Err(AccountError::invalid("ceremony", "is missing or malformed")),
    }
}

/// A passkey's name as given (trimmed, no control characters, at most
/// 64 characters), else `Passkey`.
pub fn passkey_name(given: Option<&str>) -> String {
    given
        .map(|s| {
            s.trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "Passkey".into())
}

fn too_many() -> AccountError {
    AccountError::Busy {
        retry_after: 5,
        cause: "too many passkey ceremonies in flight".into(),
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl AuthService {
    /// Start registering a passkey for the signed-in `user`.
    pub async fn passkey_register_start(&self, user_id: Uuid) -> AccountResult<Ceremony> {
        let cfg = self.cfg();
        let user = match self.store.find_user(user_id).await? {
            Some(u) if !u.disabled => u,
            _ => return Err(AccountError::NotSignedIn),
        };
        if user.passkeys.len() >= MAX_PASSKEYS {
            return Err(AccountError::invalid(
                "passkey",
                format!("at most {MAX_PASSKEYS} passkeys per account"),
            ));
        }
        let exclude = user
            .passkeys
            .iter()
            .filter_map(|p| URL_SAFE_NO_PAD.decode(&p.cred_id).ok())
            .collect::<Vec<_>>();
        let name = user.username.clone().unwrap_or_else(|| user.email.clone());
        let (options, state) = relying_party(&cfg)?
            .start_passkey_registration(user.id, &user.email, &name, Some(exclude))
            .map_err(AccountError::internal)?;
        let id = self.entropy.uuid().to_string();
        let now = self.clock.now();
        let exp = now + cfg.browser.passkey_timeout_secs as i64;
        if !insert(
            &self.ceremonies.registrations,
            id.clone(),
            (user.id, state, exp),
            now,
            |v| v.2,
        ) {
            return Err(too_many());
        }
        let options = serde_json::to_value(&options).map_err(AccountError::internal)?;
        Ok(Ceremony { id, options })
    }

    /// Finish a registration: the credential is added to the user record.
    pub async fn passkey_register_finish(
        &self,
        user_id: Uuid,
        ceremony: &str,
        credential: RegisterPublicKeyCredential,
        name: String,
        client: &Client,
    ) -> AccountResult<StoredPasskey> {
        let id = ceremony;
        let now = self.clock.now();
        let taken = self.ceremonies.registrations.lock().remove(id);
        let state = match taken {
            Some((uid, state, exp)) if uid == user_id && exp >= now => state,
            _ => return Err(AccountError::BadCeremony),
        };
        let passkey = relying_party(&self.cfg())?
            .finish_passkey_registration(&credential, &state)
            .map_err(|e| {
                tracing::debug!(cause = %e, "passkey registration refused");
                AccountError::WrongCode
            })?;
        let stored = StoredPasskey {
            id: self.entropy.uuid(),
            cred_id: b64(passkey.cred_id().as_ref()),
            name,
            created_at: now,
            last_used_at: None,
            counter: 0,
            credential: serde_json::to_value(&passkey).map_err(AccountError::internal)?,
        };
        let added = stored.clone();
        let to = match self.store.find_user(user_id).await? {
            Some(u) => u.email,
            None => return Err(AccountError::NotSignedIn),
        };
        let notice = mail::passkey_added_mail(&to, now);
        let ev = self
            .audit_event(&client.audit(), "passkey.added", "success", Some(user_id))
            .with("passkey_id", stored.id.to_string());
        match self
            .change_user_with(
                user_id,
                UserChange::AddPasskey {
                    passkey: stored,
                    max: MAX_PASSKEYS,
                },
                crate::store::Effects::from(notice).audit(ev),
            )
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict) => {
                return Err(AccountError::invalid(
                    "passkey",
                    "is already registered, or the account has too many",
                ))
            }
            Err(e) => return Err(e.into()),
        }
        let uid = user_id.to_string();
        audit::event(&client.audit(), "passkey_added", "success", Some(&uid));
        Ok(added)
    }

    /// Start a discoverable sign-in (the authenticator names the user).
    pub async fn passkey_login_start(&self) -> AccountResult<Ceremony> {
        let cfg = self.cfg();
        let (options, state) = relying_party(&cfg)?
            .start_discoverable_authentication()
            .map_err(AccountError::internal)?;
        let id = self.entropy.uuid().to_string();
        let now = self.clock.now();
        let exp = now + cfg.browser.passkey_timeout_secs as i64;
        if !insert(
            &self.ceremonies.sign_ins,
            id.clone(),
            (state, exp),
            now,
            |v| v.1,
        ) {
            return Err(too_many());
        }
        // Not conditional mediation: the portal asks on a button press.
        let mut options = serde_json::to_value(&options).map_err(AccountError::internal)?;
        if let Some(o) = options.as_object_mut() {
            o.remove("mediation");
        }
        Ok(Ceremony { id, options })
    }

    /// Finish a discoverable sign-in: a session with `amr: ["webauthn"]`.
    pub async fn passkey_login_finish(
        &self,
        ceremony: &str,
        credential: PublicKeyCredential,
        client: &Client,
    ) -> AccountResult<Signed> {
        let actx = client.audit();
        let fail = |uid: Option<&str>| {
            self.metrics.auth_event("login", "failure");
            audit::event(&actx, "passkey_login", "failure", uid);
            AccountError::WrongCredentials
        };
        let now = self.clock.now();
        let taken = self.ceremonies.sign_ins.lock().remove(ceremony);
        let state = match taken {
            Some((state, exp)) if exp >= now => state,
            _ => return Err(fail(None)),
        };
        let rp = relying_party(&self.cfg())?;
        let (user_id, cred_id) = match rp.identify_discoverable_authentication(&credential) {
            Ok((u, c)) => (u, b64(c)),
            Err(_) => return Err(fail(None)),
        };
        let Some(user) = self.store.find_user(user_id).await? else {
            return Err(fail(None));
        };
        let uid = user.id.to_string();
        let Some(stored) = user.passkeys.iter().find(|p| p.cred_id == cred_id) else {
            return Err(fail(Some(&uid)));
        };
        let mut passkey: Passkey = serde_json::from_value(stored.credential.clone())
            .map_err(|e| AccountError::internal(format!("stored passkey: {e}")))?;
        let result = match rp.finish_discoverable_authentication_v2(&credential, state, &passkey) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(cause = %e, "passkey assertion refused");
                return Err(fail(Some(&uid)));
            }
        };
        passkey.update_credential(&result);
        let change = UserChange::UsePasskey {
            cred_id: cred_id.clone(),
            counter: result.counter(),
            credential: serde_json::to_value(&passkey).map_err(AccountError::internal)?,
            at: now,
        };
        let user = match self.change_user(user.id, change, None).await {
            Ok(u) => u,
            // Replayed or cloned (the counter did not move), passkey
            // removed or account disabled meanwhile.
            Err(StoreError::Conflict) => return Err(fail(Some(&uid))),
            Err(e) => return Err(e.into()),
        };
        if self.cfg().accounts.require_email_verification && !user.email_verified {
            self.metrics.auth_event("login", "failure");
            audit::event(&actx, "passkey_login", "email_not_verified", Some(&uid));
            return Err(AccountError::EmailNotVerified);
        }
        let signed = match self.start_session(&user, client, &["webauthn"]).await {
            Err(AccountError::Changed) => return Err(fail(Some(&uid))),
            r => r?,
        };
        self.metrics.auth_event("login", "success");
        audit::event(&actx, "passkey_login", "success", Some(&uid));
        Ok(signed)
    }

    /// Remove one of the user's passkeys.
    pub async fn passkey_remove(&self, user_id: Uuid, id: &str) -> AccountResult<()> {
        let id = Uuid::parse_str(id).map_err(|_| AccountError::NotFound)?;
        match self
            .change_user(user_id, UserChange::RemovePasskey(id), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict) => Err(AccountError::NotFound),
            Err(e) => Err(e.into()),
        }
    }
}
