//! The API key endpoints (CONTRACT section 7): create (the key is shown
//! once), list, delete. Keys are checked on proxied routes by
//! [`crate::accounts::apikeys::KeyIndex`]; they never open `/auth/*`.

use serde_json::Value;

use super::api::{ApiRequest, ApiResponse};
use super::body::{self, Read};
use super::{client_of, json_of, ApiResult};
use crate::accounts::apikeys::{self, NewApiKey, MAX_SCOPES};
use crate::accounts::{AuthService, FieldErrors};
use crate::clock::rfc3339;
use crate::wire::{ApiKeyCreateRequest, ApiKeyList, ApiKeyView, CreatedApiKey, Field};

/// Ten years: the longest expiry a key may be given.
const MAX_EXPIRY_SECS: u64 = 10 * 365 * 86_400;

impl AuthService {
    pub(super) async fn api_key_create_endpoint(&self, req: &ApiRequest) -> ApiResult {
        // A key is a new way in: only from a recent sign-in.
        let claims = self.require_bearer(req)?;
        self.require_recent(&claims)?;
        let body: ApiKeyCreateRequest = body::parse(req)?;
        let new = read_new_key(body)?;
        let (record, key) = self.create_api_key(&claims, new, &client_of(req)).await?;
        Ok(json_of(
            201,
            &CreatedApiKey {
                id: record.id.to_string(),
                key,
                name: record.name,
                scopes: record.scopes,
                created_at: rfc3339(record.created_at),
                expires_at: record.expires_at.map(rfc3339),
                rate_per_minute: record.rate_per_minute,
            },
        ))
    }

    pub(super) async fn api_key_list_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let api_keys = self
            .api_key_list(&claims)
            .await?
            .iter()
            .map(|(k, used)| ApiKeyView::new(k, *used))
            .collect();
        Ok(json_of(200, &ApiKeyList { api_keys }))
    }

    pub(super) async fn api_key_delete_endpoint(&self, req: &ApiRequest, id: &str) -> ApiResult {
        let claims = self.require_bearer(req)?;
        self.revoke_api_key(&claims, id, &client_of(req)).await?;
        Ok(ApiResponse::empty(204))
    }
}

/// Every problem of a new key's fields at once.
fn read_new_key(body: ApiKeyCreateRequest) -> Result<NewApiKey, crate::error::ApiError> {
    let mut errs = FieldErrors::default();
    let name = body.name.required("name", &mut errs);
    if let Some(n) = &name {
        let len = n.chars().count();
        if len == 0 || len > 100 || n.chars().any(char::is_control) {
            errs.add(
                "name",
                "must be 1 to 100 characters, without control characters",
            );
        }
    }
    let scopes = read_scopes(body.scopes, &mut errs);
    let expires_in = match body.expires_in_secs {
        Field::Absent | Field::Null => None,
        Field::Value(v) => match v.as_u64() {
            Some(n) if (1..=MAX_EXPIRY_SECS).contains(&n) => Some(n),
            _ => {
                errs.add(
                    "expires_in_secs",
                    format!("must be a whole number from 1 to {MAX_EXPIRY_SECS}"),
                );
                None
            }
        },
        Field::Wrong => None,
    };
    let rate = match body.rate_per_minute {
        Field::Absent | Field::Null => 0,
        Field::Value(v) => match v.as_u64() {
            Some(n) if n <= 1_000_000 => n as u32,
            _ => {
                errs.add(
                    "rate_per_minute",
                    "must be a whole number from 0 to 1000000",
                );
                0
            }
        },
        Field::Wrong => 0,
    };
    body::finish(errs)?;
    Ok(NewApiKey {
        name: name.unwrap_or_default(),
        scopes,
        expires_in_secs: expires_in,
        rate_per_minute: rate,
    })
}

/// At least one valid scope, each once, at most [`MAX_SCOPES`].
fn read_scopes(field: Field<Vec<Value>>, errs: &mut FieldErrors) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    match field {
        Field::Value(items) => {
            for s in &items {
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
        Field::Absent | Field::Null => errs.add("scopes", "is required"),
        Field::Wrong => errs.add("scopes", "must be an array of strings"),
    }
    scopes
}
