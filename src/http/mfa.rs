//! The TOTP endpoints (CONTRACT section 7): enrolment, confirmation and
//! turning it off (completing a sign-in is `POST /auth/mfa/verify`, with
//! the other sign-in endpoints in `session`).

use super::api::{ApiRequest, ApiResponse};
use super::body::{self, Read};
use super::{client_of, json_of, ApiResult};
use crate::accounts::{AuthService, FieldErrors};
use crate::wire::{CodeRequest, ConfirmResponse, EnrollResponse, TotpDisableRequest};

impl AuthService {
    pub(super) async fn totp_enroll_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let e = self.totp_enroll(&claims, &client_of(req)).await?;
        Ok(json_of(
            200,
            &EnrollResponse {
                secret: e.secret,
                otpauth_uri: e.otpauth_uri,
            },
        ))
    }

    pub(super) async fn totp_confirm_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let body: CodeRequest = body::parse(req)?;
        let mut errs = FieldErrors::default();
        let code = body.code.required("code", &mut errs);
        body::finish(errs)?;
        let codes = self
            .totp_confirm(&claims, &code.unwrap_or_default(), &client_of(req))
            .await?;
        Ok(json_of(
            200,
            &ConfirmResponse {
                recovery_codes: codes,
            },
        ))
    }

    /// Turn TOTP off: the password and a code, both counted toward the
    /// account lockout when wrong.
    pub(super) async fn totp_disable_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let body: TotpDisableRequest = body::parse(req)?;
        let mut errs = FieldErrors::default();
        let pw = body.password.required("password", &mut errs);
        let code = body.code.required("code", &mut errs);
        body::finish(errs)?;
        let (pw, code) = (pw.unwrap_or_default(), code.unwrap_or_default());
        self.totp_disable(&claims, &pw, &code, &client_of(req))
            .await?;
        Ok(ApiResponse::empty(204))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::wire::MfaChallenge;

    #[test]
    fn response_shapes() {
        let v = serde_json::to_value(MfaChallenge {
            mfa_required: true,
            mfa_token: "t".into(),
        })
        .unwrap();
        assert_eq!(v, json!({"mfa_required": true, "mfa_token": "t"}));
    }
}
