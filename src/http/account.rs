//! The account over JSON: sign-up, the emailed flows (verification,
//! resend, password reset), password change, the profile and sessions.

use super::api::{ApiRequest, ApiResponse};
use super::body::{self, Read};
use super::{client_of, json_of, user_envelope, ApiResult};
use crate::accounts::{check_username, AuthService, FieldErrors, NewAccount, NewPassword};
use crate::wire::{self, Field};

/// `{"status": "accepted"}`.
fn accepted() -> ApiResponse {
    json_of(
        202,
        &wire::Accepted {
            status: "accepted".into(),
        },
    )
}

impl AuthService {
    pub(super) async fn register_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let body: wire::RegisterRequest = body::parse(req)?;
        let mut errs = FieldErrors::default();
        let new = NewAccount {
            email: body.email.required("email", &mut errs).unwrap_or_default(),
            password: body
                .password
                .required("password", &mut errs)
                .unwrap_or_default(),
            password_confirm: body
                .password_confirm
                .required("password_confirm", &mut errs)
                .unwrap_or_default(),
            username: body.username.optional("username", &mut errs),
        };
        let user = self.register_with(new, errs, &client_of(req)).await?;
        Ok(user_envelope(201, &user))
    }

    pub(super) async fn email_verify_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let body: wire::TokenRequest = body::parse(req)?;
        let mut errs = FieldErrors::default();
        let token = body.token.required("token", &mut errs);
        body::finish(errs)?;
        let user = self
            .verify_email(&token.unwrap_or_default(), &client_of(req))
            .await?;
        Ok(user_envelope(200, &user))
    }

    pub(super) async fn email_resend_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let body: wire::EmailRequest = body::parse(req)?;
        let mut errs = FieldErrors::default();
        let email = body.email.required("email", &mut errs);
        body::finish(errs)?;
        self.resend_verification(&email.unwrap_or_default(), &client_of(req))
            .await?;
        Ok(accepted())
    }

    pub(super) async fn reset_request_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let body: wire::EmailRequest = body::parse(req)?;
        let mut errs = FieldErrors::default();
        let email = body.email.required("email", &mut errs);
        body::finish(errs)?;
        self.reset_request(&email.unwrap_or_default(), &client_of(req))
            .await?;
        Ok(accepted())
    }

    pub(super) async fn reset_confirm_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let body: wire::ResetConfirmRequest = body::parse(req)?;
        let mut errs = FieldErrors::default();
        let token = body.token.required("token", &mut errs);
        let new = new_password(body.new_password, body.new_password_confirm, &mut errs);
        body::finish(errs)?;
        self.reset_confirm(&token.unwrap_or_default(), new, &client_of(req))
            .await?;
        Ok(ApiResponse::empty(204))
    }

    pub(super) async fn password_change_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let body: wire::PasswordChangeRequest = body::parse(req)?;
        let mut errs = FieldErrors::default();
        let current = body
            .current_password
            .required("current_password", &mut errs);
        let new = new_password(body.new_password, body.new_password_confirm, &mut errs);
        body::finish(errs)?;
        let current = current.unwrap_or_default();
        self.change_password(&claims, &current, new, &client_of(req))
            .await?;
        Ok(ApiResponse::empty(204))
    }

    pub(super) async fn me_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let user = self.profile(&claims).await?;
        Ok(user_envelope(200, &user))
    }

    /// `PATCH /auth/me`: only `username` can change; every other key is
    /// named in the `validation_failed`.
    pub(super) async fn update_me_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let mut v = body::json_value(req)?;
        let mut errs = FieldErrors::default();
        if let Some(obj) = v.as_object_mut() {
            obj.retain(|k, _| {
                let known = k == "username";
                if !known {
                    errs.add(k, "cannot be changed here");
                }
                known
            });
        }
        let body: wire::UpdateMeRequest = body::from_value(v)?;
        let username = match body.username {
            Field::Absent => None,
            Field::Null => Some(None),
            Field::Value(u) => match check_username(&u) {
                Ok(()) => Some(Some(u)),
                Err(p) => {
                    errs.add("username", p);
                    None
                }
            },
            Field::Wrong => {
                errs.add("username", "must be a string or null");
                None
            }
        };
        body::finish(errs)?;
        let user = self
            .update_profile(&claims, username, &client_of(req))
            .await?;
        Ok(user_envelope(200, &user))
    }

    pub(super) async fn sessions_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let sessions = self
            .sessions(&claims)
            .await?
            .into_iter()
            .map(|s| wire::SessionView {
                id: s.record.id.to_string(),
                created_at: crate::clock::rfc3339(s.record.created_at),
                last_used_at: crate::clock::rfc3339(s.record.last_used_at),
                current: s.current,
                ip: s.record.ip,
                user_agent: s.record.user_agent,
            })
            .collect();
        Ok(ApiResponse::serialized(
            200,
            &wire::SessionList { sessions },
        ))
    }

    pub(super) async fn delete_session_endpoint(&self, req: &ApiRequest, id: &str) -> ApiResult {
        let claims = self.require_bearer(req)?;
        self.end_session(&claims, id, &client_of(req)).await?;
        Ok(ApiResponse::empty(204))
    }
}

/// `new_password` and its confirmation, both required.
fn new_password(pw: Field<String>, confirm: Field<String>, errs: &mut FieldErrors) -> NewPassword {
    NewPassword {
        password: pw.required("new_password", errs).unwrap_or_default(),
        confirm: confirm
            .required("new_password_confirm", errs)
            .unwrap_or_default(),
    }
}
