//! Signing in and out over JSON: login, its second step, refresh, logout,
//! logout everywhere, re-authentication, and the token checks (`POST` and
//! `GET /auth/verify`).

use super::api::{ApiRequest, ApiResponse};
use super::body::{self, Read};
use super::{client_of, json_of, token_response, ApiResult};
use crate::accounts::{AuthService, Credentials, FieldErrors, Login, Reauth, SignOut};
use crate::error::ApiError;
use crate::tokens::identity_headers;
use crate::wire;

impl AuthService {
    pub(super) async fn login_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let body: wire::LoginRequest = body::parse(req)?;
        let mut errs = FieldErrors::default();
        let email = body.email.required("email", &mut errs);
        let password = body.password.required("password", &mut errs);
        let device = body.refresh_token.optional("refresh_token", &mut errs);
        body::finish(errs)?;
        let creds = Credentials {
            email: email.unwrap_or_default(),
            password: password.unwrap_or_default(),
            device,
        };
        Ok(match self.login(creds, &client_of(req)).await? {
            Login::Signed(s) => ApiResponse::serialized(200, &token_response(&s)),
            Login::MfaChallenge { mfa_token } => json_of(
                200,
                &wire::MfaChallenge {
                    mfa_required: true,
                    mfa_token,
                },
            ),
        })
    }

    pub(super) async fn mfa_verify_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let body: wire::MfaVerifyRequest = body::parse(req)?;
        let mut errs = FieldErrors::default();
        let token = body.mfa_token.required("mfa_token", &mut errs);
        let code = body.code.required("code", &mut errs);
        body::finish(errs)?;
        let (token, code) = (token.unwrap_or_default(), code.unwrap_or_default());
        let signed = self.verify_mfa(&token, &code, &client_of(req)).await?;
        Ok(ApiResponse::serialized(200, &token_response(&signed)))
    }

    pub(super) async fn refresh_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let body: wire::RefreshRequest = body::parse(req)?;
        let mut errs = FieldErrors::default();
        let presented = body.refresh_token.required("refresh_token", &mut errs);
        body::finish(errs)?;
        let presented = presented.unwrap_or_default();
        let signed = self.refresh_session(&presented, &client_of(req)).await?;
        Ok(ApiResponse::serialized(200, &token_response(&signed)))
    }

    pub(super) async fn logout_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let body: wire::LogoutRequest = body::parse_or_empty(req)?;
        let mut errs = FieldErrors::default();
        let refresh = body.refresh_token.optional("refresh_token", &mut errs);
        body::finish(errs)?;
        let what = SignOut {
            refresh_token: refresh.as_deref(),
            access_token: crate::accounts::service::bearer(&req.headers),
        };
        self.logout(what, &client_of(req)).await?;
        Ok(ApiResponse::empty(204))
    }

    pub(super) async fn logout_all_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        self.logout_all(&claims, &client_of(req)).await?;
        Ok(ApiResponse::empty(204))
    }

    /// `POST /auth/reauth`: the login shape for the SAME session (see
    /// `crate::accounts::reauth`).
    pub(super) async fn reauth_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let body: wire::ReauthRequest = body::parse(req)?;
        let mut errs = FieldErrors::default();
        let proof = Reauth {
            password: body.password.optional("password", &mut errs),
            code: body.code.optional("code", &mut errs),
        };
        let signed = self
            .reauth_with(&claims, proof, errs, &client_of(req))
            .await?;
        Ok(ApiResponse::serialized(200, &token_response(&signed)))
    }

    pub(super) fn introspect(&self, req: &ApiRequest) -> ApiResult {
        let body: wire::TokenRequest = body::parse(req)?;
        let mut errs = FieldErrors::default();
        let token = body.token.required("token", &mut errs);
        body::finish(errs)?;
        match self.check_token(&token.unwrap_or_default()) {
            Ok(c) => Ok(json_of(
                200,
                &wire::IntrospectResponse {
                    valid: true,
                    claims: (*c).clone(),
                },
            )),
            Err(_) => Err(ApiError::InvalidToken(401)),
        }
    }

    pub(super) fn forward_auth(&self, req: &ApiRequest) -> ApiResult {
        let c = self.require_bearer(req)?;
        let mut r = json_of(200, &wire::ForwardAuthResponse { valid: true });
        for (k, v) in identity_headers(&c) {
            r.headers.push((k, v));
        }
        Ok(r)
    }
}
