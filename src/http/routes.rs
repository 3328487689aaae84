//! The dispatcher of the JSON front door: one arm per endpoint, by method
//! and path (the OpenAPI document is checked against these arms, see
//! `crate::openapi`'s tests). Every failure is an [`ApiError`]; the per-IP
//! budget of `POST /auth/*` is spent before any endpoint runs.

use http::Method;

use super::api::{ApiRequest, ApiResponse};
use super::pages::{confirm_page, portal_link};
use super::{client_of, ApiResult};
use crate::accounts::AuthService;
use crate::error::ApiError;

impl AuthService {
    /// Serve one local request.
    pub async fn handle(&self, req: ApiRequest) -> ApiResponse {
        let cfg = self.cfg();
        if let Some(r) = super::cors::preflight(&req, &cfg) {
            return r;
        }
        let mut resp = self.handle_inner(&req).await;
        super::cors::add_cors(&req, &cfg, &mut resp);
        resp
    }

    async fn handle_inner(&self, req: &ApiRequest) -> ApiResponse {
        match self.dispatch(req).await {
            Ok(r) => r,
            Err(e @ ApiError::MethodNotAllowed) => {
                let r = e.into_response();
                match crate::openapi::allow(&req.path) {
                    Some(allow) => r.with_header("allow", allow),
                    None => r,
                }
            }
            Err(e) => e.into_response(),
        }
    }

    async fn dispatch(&self, req: &ApiRequest) -> ApiResult {
        let path = req.path.as_str();
        if path == "/.well-known/jwks.json" {
            return match req.method {
                Method::GET | Method::HEAD => Ok(ApiResponse::json(200, &self.tokens.jwks())),
                _ => Err(ApiError::MethodNotAllowed),
            };
        }
        if req.method == Method::POST && path.starts_with("/auth/") {
            self.throttle_client(&client_of(req), event_for_path(path))
                .await?;
        }
        if path == "/auth/ui" || path.starts_with("/auth/ui/") {
            return self.portal(&portal_view(req)).await;
        }
        if let Some(r) = self.federation_route(req).await {
            return r;
        }
        if crate::oidc_provider::is_provider_path(path) {
            return self.oidc_provider(&provider_view(req)).await;
        }
        let browser = self.cfg().browser.enabled;
        let m = &req.method;
        match path {
            "/auth/openapi.json" if *m == Method::GET || *m == Method::HEAD => {
                Ok(ApiResponse::json_bytes(200, crate::openapi::document()))
            }
            "/auth/register" if *m == Method::POST => self.register_endpoint(req).await,
            "/auth/login" if *m == Method::POST => self.login_endpoint(req).await,
            "/auth/refresh" if *m == Method::POST => self.refresh_endpoint(req).await,
            "/auth/logout" if *m == Method::POST => self.logout_endpoint(req).await,
            "/auth/logout-all" if *m == Method::POST => self.logout_all_endpoint(req).await,
            "/auth/verify" if *m == Method::POST => self.introspect(req),
            "/auth/verify" if *m == Method::GET || *m == Method::HEAD => self.forward_auth(req),
            "/auth/email/verify" if *m == Method::POST => self.email_verify_endpoint(req).await,
            "/auth/email/verify" if *m == Method::GET && browser => {
                Ok(portal_link(req, "/auth/ui/verify"))
            }
            "/auth/email/verify" if *m == Method::GET => Ok(confirm_page(
                "Confirm your email",
                "Confirm my email address",
                "/auth/email/verify",
                false,
            )),
            "/auth/email/resend" if *m == Method::POST => self.email_resend_endpoint(req).await,
            "/auth/password/reset" if *m == Method::POST => self.reset_request_endpoint(req).await,
            "/auth/password/reset" if *m == Method::GET && browser => {
                Ok(portal_link(req, "/auth/ui/reset"))
            }
            "/auth/password/reset" if *m == Method::GET => Ok(confirm_page(
                "Choose a new password",
                "Set password",
                "/auth/password/reset/confirm",
                true,
            )),
            "/auth/password/reset/confirm" if *m == Method::POST => {
                self.reset_confirm_endpoint(req).await
            }
            "/auth/password/change" if *m == Method::POST => {
                self.password_change_endpoint(req).await
            }
            "/auth/reauth" if *m == Method::POST => self.reauth_endpoint(req).await,
            "/auth/me" if *m == Method::GET => self.me_endpoint(req).await,
            "/auth/me" if *m == Method::PATCH => self.update_me_endpoint(req).await,
            "/auth/sessions" if *m == Method::GET => self.sessions_endpoint(req).await,
            p if p.starts_with("/auth/sessions/") && *m == Method::DELETE => {
                self.delete_session_endpoint(req, &p["/auth/sessions/".len()..])
                    .await
            }
            "/auth/mfa/totp/enroll" if *m == Method::POST => self.totp_enroll_endpoint(req).await,
            "/auth/mfa/totp/confirm" if *m == Method::POST => self.totp_confirm_endpoint(req).await,
            "/auth/mfa/totp" if *m == Method::DELETE => self.totp_disable_endpoint(req).await,
            "/auth/mfa/verify" if *m == Method::POST => self.mfa_verify_endpoint(req).await,
            "/auth/api-keys" if *m == Method::POST => self.api_key_create_endpoint(req).await,
            "/auth/api-keys" if *m == Method::GET => self.api_key_list_endpoint(req).await,
            p if p.starts_with("/auth/api-keys/") && *m == Method::DELETE => {
                self.api_key_delete_endpoint(req, &p["/auth/api-keys/".len()..])
                    .await
            }
            "/auth/register"
            | "/auth/login"
            | "/auth/refresh"
            | "/auth/logout"
            | "/auth/logout-all"
            | "/auth/verify"
            | "/auth/email/verify"
            | "/auth/email/resend"
            | "/auth/password/reset"
            | "/auth/password/reset/confirm"
            | "/auth/password/change"
            | "/auth/reauth"
            | "/auth/me"
            | "/auth/sessions"
            | "/auth/openapi.json"
            | "/auth/mfa/totp/enroll"
            | "/auth/mfa/totp/confirm"
            | "/auth/mfa/totp"
            | "/auth/mfa/verify"
            | "/auth/api-keys" => Err(ApiError::MethodNotAllowed),
            _ => Err(ApiError::NotFound),
        }
    }
}

/// The `portcullis_auth_events_total` event a throttled POST counts as.
fn event_for_path(path: &str) -> Option<&'static str> {
    Some(match path {
        "/auth/register" => "register",
        "/auth/login" | "/auth/mfa/verify" => "login",
        "/auth/refresh" => "refresh",
        "/auth/logout" | "/auth/logout-all" => "logout",
        "/auth/password/reset" | "/auth/password/reset/confirm" => "password_reset",
        "/auth/email/verify" => "email_verify",
        _ => return None,
    })
}

/// The portal's view of a request to `/auth/ui/*`.
pub(super) fn portal_view(req: &ApiRequest) -> crate::portal::PortalRequest<'_> {
    crate::portal::PortalRequest {
        method: &req.method,
        path: &req.path,
        query: req.query.as_deref(),
        headers: &req.headers,
        body: &req.body,
        client: client_of(req),
        tls: req.tls,
    }
}

/// The provider's view of a request to `/auth/oauth/*` or discovery.
fn provider_view(req: &ApiRequest) -> crate::oidc_provider::ProviderRequest<'_> {
    crate::oidc_provider::ProviderRequest {
        method: &req.method,
        path: &req.path,
        query: req.query.as_deref(),
        headers: &req.headers,
        body: &req.body,
        client: client_of(req),
        tls: req.tls,
    }
}
