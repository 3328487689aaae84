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
use serde_json::{json, Value};
use uuid::Uuid;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Webauthn, WebauthnBuilder,
};

use super::AuthService;
use crate::api::{ApiRequest, ApiResponse};
use crate::audit;
use crate::config::Config;
use crate::error::ApiError;
use crate::mail;
use crate::store::{StoreError, StoredPasskey, UserChange};

/// At most this many passkeys per user.
pub const MAX_PASSKEYS: usize = 10;
/// At most this many ceremonies in flight per gateway.
const MAX_CEREMONIES: usize = 10_000;

type ApiResult = Result<ApiResponse, ApiError>;

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

/// The relying party of this config.
/// The relying party of this config. A `mail.link_base_url` WebAuthn does
/// not accept (an IP address, say) turns passkeys off: 400, logged.
pub fn relying_party(cfg: &Config) -> Result<Webauthn, ApiError> {
    let unavailable = |cause: String| {
        tracing::warn!(%cause, "passkeys unavailable: mail.link_base_url is no WebAuthn relying party");
        ApiError::BadRequest("Passkeys are not available on this deployment.")
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

fn field<T: serde::de::DeserializeOwned>(body: &Value, name: &str) -> Result<T, ApiError> {
    serde_json::from_value(body.get(name).cloned().unwrap_or(Value::Null))
        .map_err(|_| ApiError::validation(name, "is missing or malformed"))
}

fn ceremony_id(body: &Value) -> Result<String, ApiError> {
    match body.get("ceremony").and_then(Value::as_str) {
        Some(s) if !s.is_empty() && s.len() <= 64 => Ok(s.to_string()),
        _ => Err(ApiError::validation("ceremony", "is missing or malformed")),
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl AuthService {
    /// Start registering a passkey for the signed-in `user`.
    pub(super) async fn passkey_register_start(&self, user_id: Uuid) -> ApiResult {
        let cfg = self.cfg();
        let user = match self.store.find_user(user_id).await? {
            Some(u) if !u.disabled => u,
            _ => return Err(ApiError::Unauthorized),
        };
        if user.passkeys.len() >= MAX_PASSKEYS {
            return Err(ApiError::validation(
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
            .map_err(ApiError::internal)?;
        let id = Uuid::new_v4().to_string();
        let now = self.clock.now();
        let exp = now + cfg.browser.passkey_timeout_secs as i64;
        if !insert(
            &self.ceremonies.registrations,
            id.clone(),
            (user.id, state, exp),
            now,
            |v| v.2,
        ) {
            return Err(ApiError::Unavailable {
                retry_after: 5,
                cause: "too many passkey ceremonies in flight".into(),
            });
        }
        Ok(ApiResponse::json(
            200,
            &json!({ "ceremony": id, "options": options }),
        ))
    }

    /// Finish a registration: the credential is added to the user record.
    pub(super) async fn passkey_register_finish(
        &self,
        req: &ApiRequest,
        user_id: Uuid,
        body: &Value,
    ) -> ApiResult {
        let id = ceremony_id(body)?;
        let credential: RegisterPublicKeyCredential = field(body, "credential")?;
        let name = body
            .get("name")
            .and_then(Value::as_str)
            .map(|s| {
                s.trim()
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(64)
                    .collect::<String>()
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "Passkey".into());
        let now = self.clock.now();
        let taken = self.ceremonies.registrations.lock().remove(&id);
        let state = match taken {
            Some((uid, state, exp)) if uid == user_id && exp >= now => state,
            _ => return Err(ApiError::InvalidToken(400)),
        };
        let passkey = relying_party(&self.cfg())?
            .finish_passkey_registration(&credential, &state)
            .map_err(|e| {
                tracing::debug!(cause = %e, "passkey registration refused");
                ApiError::InvalidCode
            })?;
        let stored = StoredPasskey {
            id: Uuid::new_v4(),
            cred_id: b64(passkey.cred_id().as_ref()),
            name,
            created_at: now,
            last_used_at: None,
            counter: 0,
            credential: serde_json::to_value(&passkey).map_err(ApiError::internal)?,
        };
        let view = json!({ "id": stored.id.to_string(), "name": stored.name });
        let to = match self.store.find_user(user_id).await? {
            Some(u) => u.email,
            None => return Err(ApiError::Unauthorized),
        };
        let notice = mail::passkey_added_mail(&to, now);
        match self
            .change_user(
                user_id,
                UserChange::AddPasskey {
                    passkey: stored,
                    max: MAX_PASSKEYS,
                },
                Some(notice),
            )
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict) => {
                return Err(ApiError::validation(
                    "passkey",
                    "is already registered, or the account has too many",
                ))
            }
            Err(e) => return Err(e.into()),
        }
        let ua = req.user_agent();
        audit::event(
            &self.audit_ctx(req, &ua),
            "passkey_added",
            "success",
            Some(&user_id.to_string()),
        );
        Ok(ApiResponse::json(201, &view))
    }

    /// Start a discoverable sign-in (the authenticator names the user).
    pub(super) async fn passkey_login_start(&self) -> ApiResult {
        let cfg = self.cfg();
        let (options, state) = relying_party(&cfg)?
            .start_discoverable_authentication()
            .map_err(ApiError::internal)?;
        let id = Uuid::new_v4().to_string();
        let now = self.clock.now();
        let exp = now + cfg.browser.passkey_timeout_secs as i64;
        if !insert(
            &self.ceremonies.sign_ins,
            id.clone(),
            (state, exp),
            now,
            |v| v.1,
        ) {
            return Err(ApiError::Unavailable {
                retry_after: 5,
                cause: "too many passkey ceremonies in flight".into(),
            });
        }
        // Not conditional mediation: the portal asks on a button press.
        let mut options = serde_json::to_value(&options).map_err(ApiError::internal)?;
        if let Some(o) = options.as_object_mut() {
            o.remove("mediation");
        }
        Ok(ApiResponse::json(
            200,
            &json!({ "ceremony": id, "options": options }),
        ))
    }

    /// Finish a discoverable sign-in: a session with `amr: ["webauthn"]`,
    /// answered as `POST /auth/login` answers.
    pub(super) async fn passkey_login_finish(&self, req: &ApiRequest, body: &Value) -> ApiResult {
        let id = ceremony_id(body)?;
        let credential: PublicKeyCredential = field(body, "credential")?;
        let ua = req.user_agent();
        let actx = self.audit_ctx(req, &ua);
        let fail = |uid: Option<&str>| {
            self.metrics.auth_event("login", "failure");
            audit::event(&actx, "passkey_login", "failure", uid);
            ApiError::InvalidCredentials
        };
        let now = self.clock.now();
        let taken = self.ceremonies.sign_ins.lock().remove(&id);
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
            .map_err(|e| ApiError::internal(format!("stored passkey: {e}")))?;
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
            credential: serde_json::to_value(&passkey).map_err(ApiError::internal)?,
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
            return Err(ApiError::EmailNotVerified);
        }
        let resp = match self.start_session(&user, req, &["webauthn"]).await {
            Err(ApiError::Conflict) => return Err(fail(Some(&uid))),
            r => r?,
        };
        self.metrics.auth_event("login", "success");
        audit::event(&actx, "passkey_login", "success", Some(&uid));
        Ok(resp)
    }

    /// Remove one of the user's passkeys.
    pub(super) async fn passkey_remove(&self, user_id: Uuid, id: &str) -> Result<(), ApiError> {
        let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound)?;
        match self
            .change_user(user_id, UserChange::RemovePasskey(id), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict) => Err(ApiError::NotFound),
            Err(e) => Err(e.into()),
        }
    }
}
