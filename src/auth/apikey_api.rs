//! The API key endpoints (CONTRACT section 7): create (the key is shown
//! once), list, delete. Keys are checked on proxied routes by
//! [`super::apikeys::KeyIndex`]; they never open `/auth/*`.

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::apikeys::{self, MAX_KEYS_PER_USER, MAX_SCOPES};
use super::handlers::{json_body, FieldErrors};
use super::AuthService;
use crate::api::{ApiRequest, ApiResponse};
use crate::audit;
use crate::clock::rfc3339;
use crate::error::ApiError;
use crate::mail;
use crate::store::{ApiKey, StoreError, UserChange};
use crate::wire::{ApiKeyList, ApiKeyView, CreatedApiKey};

type ApiResult = Result<ApiResponse, ApiError>;

/// Ten years: the longest expiry a key may be given.
const MAX_EXPIRY_SECS: u64 = 10 * 365 * 86_400;

fn to_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

impl AuthService {
    pub(super) async fn api_key_create(&self, req: &ApiRequest) -> ApiResult {
        // A key is a new way in: only from a recent sign-in.
        let claims = self.require_recent_bearer(req)?;
        let user = self.current_user(&claims).await?;
        let body = json_body(req)?;
        let mut errs = FieldErrors::default();
        let name = errs.string(&body, "name", true);
        if let Some(n) = &name {
            let len = n.chars().count();
            if len == 0 || len > 100 || n.chars().any(char::is_control) {
                errs.add(
                    "name",
                    "must be 1 to 100 characters, without control characters",
                );
            }
        }
        let mut scopes: Vec<String> = Vec::new();
        match body.get("scopes") {
            Some(Value::Array(items)) => {
                for s in items {
                    match s.as_str() {
                        Some(s) if apikeys::valid_scope(s) => {
                            if !scopes.iter().any(|x| x == s) {
                                scopes.push(s.to_string());
                            }
                        }
                        _ => errs.add("scopes", "each scope must be a valid scope name"),
                    }
                }
                if scopes.is_empty() {
                    errs.add("scopes", "at least one scope is needed");
                }
                if scopes.len() > MAX_SCOPES {
                    errs.add("scopes", format!("at most {MAX_SCOPES} scopes"));
                }
            }
            None | Some(Value::Null) => errs.add("scopes", "is required"),
            Some(_) => errs.add("scopes", "must be an array of strings"),
        }
        let expires_in = match body.get("expires_in_secs") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if (1..=MAX_EXPIRY_SECS).contains(&n) => Some(n),
                _ => {
                    errs.add(
                        "expires_in_secs",
                        format!("must be a whole number from 1 to {MAX_EXPIRY_SECS}"),
                    );
                    None
                }
            },
        };
        let rate = match body.get("rate_per_minute") {
            None | Some(Value::Null) => 0,
            Some(v) => match v.as_u64() {
                Some(n) if n <= 1_000_000 => n as u32,
                _ => {
                    errs.add(
                        "rate_per_minute",
                        "must be a whole number from 0 to 1000000",
                    );
                    0
                }
            },
        };
        errs.finish()?;
        let now = self.clock.now();
        let key = apikeys::new_key();
        let record = ApiKey {
            id: Uuid::new_v4(),
            hash: apikeys::key_hash(&key),
            name: name.unwrap_or_default(),
            scopes,
            created_at: now,
            expires_at: expires_in.map(|s| now + s as i64),
            rate_per_minute: rate,
            last_used_at: None,
        };
        let change = UserChange::AddApiKey {
            key: record.clone(),
            max: MAX_KEYS_PER_USER,
        };
        let notice = mail::api_key_created_mail(&user.email, self.clock.now());
        match self.change_user(user.id, change, Some(notice)).await {
            Ok(u) if !u.disabled => {}
            Ok(_) => return Err(ApiError::Unauthorized),
            Err(StoreError::Conflict) => {
                return Err(ApiError::validation(
                    "name",
                    format!("an account may hold at most {MAX_KEYS_PER_USER} API keys"),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        let ua = req.user_agent();
        audit::key_event(
            &self.audit_ctx(req, &ua),
            "api_key_created",
            &record.id.to_string(),
            &claims.sub,
        );
        Ok(ApiResponse::json(
            201,
            &to_json(&CreatedApiKey {
                id: record.id.to_string(),
                key,
                name: record.name,
                scopes: record.scopes,
                created_at: rfc3339(record.created_at),
                expires_at: record.expires_at.map(rfc3339),
                rate_per_minute: record.rate_per_minute,
            }),
        ))
    }

    pub(super) async fn api_key_list(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let user = self.current_user(&claims).await?;
        // Uses this gateway saw but has not written yet count too.
        let pending = self.api_keys.pending_uses(user.id);
        let api_keys = user
            .api_keys
            .iter()
            .map(|k| {
                let used = match (k.last_used_at, pending.get(&k.id)) {
                    (Some(a), Some(b)) => Some(a.max(*b)),
                    (a, b) => a.or(b.copied()),
                };
                ApiKeyView::new(k, used)
            })
            .collect();
        Ok(ApiResponse::json(200, &to_json(&ApiKeyList { api_keys })))
    }

    pub(super) async fn api_key_delete(&self, req: &ApiRequest, id: &str) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let user = self.current_user(&claims).await?;
        let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound)?;
        // Only the caller's own keys can match.
        match self
            .change_user(user.id, UserChange::RemoveApiKey(id), None)
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict) => return Err(ApiError::NotFound),
            Err(e) => return Err(e.into()),
        }
        let ua = req.user_agent();
        audit::key_event(
            &self.audit_ctx(req, &ua),
            "api_key_revoked",
            &id.to_string(),
            &claims.sub,
        );
        Ok(ApiResponse::empty(204))
    }
}
