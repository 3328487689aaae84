//! Sign-in with an outside provider over HTTP (CONTRACT 8.1): the start
//! and callback of the browser's round trip, the `login_code` exchange,
//! linked identities, and back-channel logout. Each turns its request into
//! one call of the account service (`accounts::federation`) and the answer
//! into a redirect, a page or JSON; a failure is never a 500.

use super::api::{ApiRequest, ApiResponse};
use super::body::{self, Read};
use super::{client_of, json_of, token_response, ApiResult};
use crate::accounts::federation::{FedCode, FedDone};
use crate::accounts::{AuthService, FieldErrors, Login};
use crate::browser;
use crate::error::ApiError;
use crate::federation::client::CallbackParams;
use crate::federation::state::{clear_state_cookie, state_cookie, Mode, STATE_COOKIE};
use crate::wire;

/// The state cookie's value (sealed: longer, and with a `.`, than the
/// session cookie reader takes); two of them are none.
fn state_cookie_value(headers: &http::HeaderMap) -> Option<&str> {
    let mut found = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|piece| piece.trim().split_once('='))
        .filter(|(k, _)| *k == STATE_COOKIE)
        .map(|(_, v)| v);
    let v = found.next()?;
    if found.next().is_some() || v.is_empty() || v.len() > 4096 {
        return None;
    }
    v.bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        .then_some(v)
}

/// `rd` with `name=value` added to its query.
fn with_param(rd: &str, name: &str, value: &str) -> String {
    let sep = if rd.contains('?') { '&' } else { '?' };
    let v: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
    format!("{rd}{sep}{name}={v}")
}

impl AuthService {
    /// `GET /auth/oidc/{id}/start?rd=…[&mode=code]`.
    pub(super) async fn oidc_start_endpoint(&self, req: &ApiRequest, id: &str) -> ApiResult {
        let cfg = self.cfg();
        let mode = match req.query_param("mode").as_deref() {
            None | Some("") | Some("browser") => Mode::Browser,
            Some("code") => Mode::Code,
            Some(_) => return Err(ApiError::validation("mode", "must be \"code\" or absent")),
        };
        if mode == Mode::Browser && !cfg.browser.enabled {
            return Err(ApiError::validation(
                "mode",
                "browser mode needs [browser] enabled; use mode=code",
            ));
        }
        let raw = req.query_param("rd").unwrap_or_else(|| "/".into());
        let Some(rd) = browser::safe_redirect_for(&raw, &cfg) else {
            return Err(ApiError::validation("rd", "is not a safe redirect target"));
        };
        let start = self
            .federation_start(id, rd, mode, None)
            .await
            .map_err(ApiError::from)?;
        Ok(ApiResponse::empty(302)
            .with_header("location", start.authorize_url)
            .with_header("set-cookie", state_cookie(&start.state_cookie))
            .with_header("cache-control", "no-store"))
    }

    /// `GET /auth/oidc/{id}/callback`.
    pub(super) async fn oidc_callback_endpoint(&self, req: &ApiRequest, id: &str) -> ApiResult {
        let cookie = state_cookie_value(&req.headers);
        let flow = self.federation_flow(cookie);
        let params = CallbackParams {
            code: req.query_param("code"),
            state: req.query_param("state"),
            iss: req.query_param("iss"),
            error: req.query_param("error"),
        };
        let client = client_of(req);
        let (mode, rd) = match &flow {
            Some(f) => (f.mode, f.rd.clone()),
            None => (Mode::Browser, "/".to_string()),
        };
        let clear = vec![clear_state_cookie()];
        let outcome = self.federation_callback(id, flow, params, &client).await;
        Ok(match outcome {
            Ok(FedDone::Login { login, rd }) => match login {
                Login::Signed(signed) => {
                    self.remember_cookie(&signed);
                    let cfg = self.cfg();
                    ApiResponse::empty(302)
                        .with_header("location", rd)
                        .with_header("set-cookie", clear_state_cookie())
                        .with_header(
                            "set-cookie",
                            browser::session_cookie(
                                &cfg.browser,
                                &signed.refresh_token,
                                cfg.tokens.refresh_ttl_secs,
                            ),
                        )
                        .with_header("cache-control", "no-store")
                }
                Login::MfaChallenge { mfa_token } => self.portal_federated_mfa(
                    &super::routes::portal_view(req),
                    &mfa_token,
                    &rd,
                    clear,
                ),
            },
            Ok(FedDone::Code { login_code, rd }) => ApiResponse::empty(302)
                .with_header("location", with_param(&rd, "login_code", &login_code))
                .with_header("set-cookie", clear_state_cookie())
                .with_header("cache-control", "no-store"),
            Ok(FedDone::Linked { rd }) => ApiResponse::empty(302)
                .with_header("location", rd)
                .with_header("set-cookie", clear_state_cookie()),
            Err(code) => match mode {
                Mode::Code => ApiResponse::empty(302)
                    .with_header("location", with_param(&rd, "error", code.code()))
                    .with_header("set-cookie", clear_state_cookie()),
                Mode::Browser if self.cfg().browser.enabled => {
                    let status = ApiError::from(code).status();
                    let mut resp = self.portal_federated_error(
                        &super::routes::portal_view(req),
                        status,
                        code.message(),
                        &rd,
                        clear,
                    );
                    resp.headers
                        .push(("x-portcullis-error", code.code().to_string()));
                    resp
                }
                Mode::Browser => ApiError::from(code)
                    .into_response()
                    .with_header("set-cookie", clear_state_cookie()),
            },
        })
    }

    /// `POST /auth/oidc/exchange` `{login_code}`.
    pub(super) async fn oidc_exchange_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let body: wire::LoginCodeRequest = body::parse(req)?;
        let mut errs = FieldErrors::default();
        let code = body.login_code.required("login_code", &mut errs);
        body::finish(errs)?;
        let login = self
            .exchange_login_code(&code.unwrap_or_default(), &client_of(req))
            .await
            .map_err(|e| match e {
                crate::accounts::AccountError::BadSessionToken => ApiError::InvalidToken(400),
                other => other.into(),
            })?;
        Ok(match login {
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

    /// `GET /auth/identities`.
    pub(super) async fn identities_endpoint(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let list = self.identities(&claims).await?;
        let identities = list
            .into_iter()
            .map(|l| wire::IdentityView {
                provider: l.provider,
                subject: l.subject,
                email: l.email,
                linked_at: crate::clock::rfc3339(l.linked_at),
            })
            .collect();
        Ok(json_of(200, &wire::IdentityList { identities }))
    }

    /// `POST /auth/identities/{provider}` (recent sign-in).
    pub(super) async fn identity_link_endpoint(
        &self,
        req: &ApiRequest,
        provider: &str,
    ) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let cfg = self.cfg();
        let raw = req.query_param("rd").unwrap_or_else(|| "/".into());
        let rd = browser::safe_redirect_for(&raw, &cfg).unwrap_or_else(|| "/".into());
        let start = self
            .start_linking(&claims, provider, rd)
            .await?
            .map_err(ApiError::from)?;
        Ok(json_of(
            200,
            &wire::AuthorizeUrl {
                authorize_url: start.authorize_url,
            },
        )
        .with_header("set-cookie", state_cookie(&start.state_cookie)))
    }

    /// `DELETE /auth/identities/{provider}` (recent sign-in).
    pub(super) async fn identity_unlink_endpoint(
        &self,
        req: &ApiRequest,
        provider: &str,
    ) -> ApiResult {
        let claims = self.require_bearer(req)?;
        self.unlink_identity(&claims, provider, &client_of(req))
            .await?
            .map_err(ApiError::from)?;
        Ok(ApiResponse::empty(204))
    }

    /// `POST /auth/oidc/{id}/backchannel-logout`, form `logout_token=`.
    pub(super) async fn backchannel_logout_endpoint(
        &self,
        req: &ApiRequest,
        id: &str,
    ) -> ApiResult {
        let token = url::form_urlencoded::parse(&req.body)
            .find(|(k, _)| k == "logout_token")
            .map(|(_, v)| v.into_owned());
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(ApiError::validation("logout_token", "is required"));
        };
        match self.backchannel_logout(id, &token, &client_of(req)).await {
            Ok(_) => Ok(ApiResponse::empty(200).with_header("cache-control", "no-store")),
            Err(FedCode::UnknownProvider) => Err(ApiError::NotFound),
            Err(_) => Err(ApiError::Coded {
                status: 400,
                code: "invalid_request",
                message: "The logout token is invalid.",
            }),
        }
    }

    /// Every federation route: `Some` when `path` is one of them.
    pub(super) async fn federation_route(&self, req: &ApiRequest) -> Option<ApiResult> {
        use http::Method;
        let path = req.path.as_str();
        let m = &req.method;
        if path == "/auth/oidc/exchange" {
            return Some(match *m {
                Method::POST => self.oidc_exchange_endpoint(req).await,
                _ => Err(ApiError::MethodNotAllowed),
            });
        }
        if path == "/auth/identities" {
            return Some(match *m {
                Method::GET => self.identities_endpoint(req).await,
                _ => Err(ApiError::MethodNotAllowed),
            });
        }
        if let Some(provider) = path.strip_prefix("/auth/identities/") {
            return Some(match *m {
                Method::POST => self.identity_link_endpoint(req, provider).await,
                Method::DELETE => self.identity_unlink_endpoint(req, provider).await,
                _ => Err(ApiError::MethodNotAllowed),
            });
        }
        let rest = path.strip_prefix("/auth/oidc/")?;
        let (id, action) = rest.split_once('/')?;
        Some(match (action, m) {
            ("start", &Method::GET) => self.oidc_start_endpoint(req, id).await,
            ("callback", &Method::GET) => self.oidc_callback_endpoint(req, id).await,
            ("backchannel-logout", &Method::POST) => {
                self.backchannel_logout_endpoint(req, id).await
            }
            ("start" | "callback" | "backchannel-logout", _) => Err(ApiError::MethodNotAllowed),
            _ => Err(ApiError::NotFound),
        })
    }
}
