//! The login portal under `/auth/ui/` (issue 14): server-rendered pages for
//! sign-in (password, second factor, passkey), sign-up, forgotten password
//! and reset, email verification, sign-out, the sessions page, and the
//! re-authentication a passkey needs when the sign-in is older than
//! `accounts.reauth_secs` (CONTRACT 8.6).
//!
//! Every form posts back here and calls the same account-service operation
//! as the JSON endpoint it stands for (`login`, `register`, …): the same
//! checks, throttles and generic error messages. A successful sign-in sets the
//! session cookie ([`crate::browser`]). Every POST must come from a trusted
//! Origin and carry the CSRF token of the double-submit cookie (a hidden
//! field, or `X-CSRF-Token` from the passkey script). The pages are
//! rendered from typed models by the templates of [`crate::portal`], which
//! escape every value; their CSP is strict: no inline script or style; the
//! passkey script and the style sheet are static files served from here.

mod account;
mod console;

use std::sync::Arc;

use bytes::Bytes;
use http::Method;

use crate::accounts::AuthService;
use crate::accounts::Signed;
use crate::accounts::{AccountError, Login, NewAccount, NewPassword, SignOut};
use crate::browser::{self, CookieIdentity};
use crate::config::Config;
use crate::entropy::Entropy;
use crate::error::ApiError;
use crate::http::api::ApiResponse;
use crate::portal::{self, Frame, PortalRequest, View};

type ApiResult = Result<ApiResponse, ApiError>;

/// One portal request: its config, form fields and CSRF token.
struct Page<'a> {
    req: &'a PortalRequest<'a>,
    cfg: Arc<Config>,
    /// The request's CSRF cookie, or a new token to set.
    csrf: String,
    new_csrf: bool,
    /// Cookies to set on whatever is answered.
    set_cookies: Vec<String>,
    form: Vec<(String, String)>,
}

impl<'a> Page<'a> {
    fn new(req: &'a PortalRequest<'a>, cfg: Arc<Config>, entropy: &dyn Entropy) -> Self {
        let name = browser::csrf_cookie_name(&cfg.browser);
        let (csrf, new_csrf) = match browser::cookie_value(req.headers, &name) {
            Some(c) if c.len() >= 32 => (c.to_string(), false),
            _ => (browser::new_csrf_token(entropy), true),
        };
        let form = req.form();
        Page {
            req,
            cfg,
            csrf,
            new_csrf,
            set_cookies: vec![],
            form,
        }
    }

    fn field(&self, name: &str) -> String {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// `rd` from the form or the query, if it is a safe target.
    fn rd(&self) -> String {
        let raw = if *self.req.method == Method::POST {
            self.field("rd")
        } else {
            self.req.query_param("rd").unwrap_or_default()
        };
        browser::safe_redirect_for(&raw, &self.cfg).unwrap_or_else(|| "/".into())
    }

    /// A POST's Origin and double-submit token are both right.
    fn csrf_ok(&self, presented: Option<&str>) -> bool {
        let cookie = browser::cookie_value(
            self.req.headers,
            &browser::csrf_cookie_name(&self.cfg.browser),
        );
        browser::origin_allowed_for(self.req.headers, None, self.req.tls, &self.cfg)
            && browser::csrf_matches(cookie, presented)
    }

    fn finish(mut self, mut resp: ApiResponse) -> ApiResponse {
        if self.new_csrf {
            self.set_cookies
                .push(browser::csrf_cookie(&self.cfg.browser, &self.csrf));
        }
        for c in self.set_cookies.drain(..) {
            resp.headers.push(("set-cookie", c));
        }
        resp
    }

    /// A whole page rendered from its model; `alert` is shown as an error
    /// above the content.
    fn render(self, status: u16, alert: Option<&str>, view: &impl View) -> ApiResponse {
        let frame = Frame {
            csrf: &self.csrf,
            alert,
        };
        let resp = match portal::render(&frame, view) {
            Ok(doc) => ApiResponse {
                status,
                headers: vec![
                    ("content-type", "text/html; charset=utf-8".into()),
                    ("content-security-policy", portal::csp_for(&self.cfg).into()),
                    ("referrer-policy", "same-origin".into()),
                    ("x-frame-options", "DENY".into()),
                ],
                body: Bytes::from(doc),
            },
            Err(e) => ApiError::internal(format!("portal page: {e}")).into_response(),
        };
        self.finish(resp)
    }

    fn see_other(self, location: &str) -> ApiResponse {
        let resp = ApiResponse::empty(303).with_header("location", location);
        self.finish(resp)
    }

    fn json(self, resp: ApiResponse) -> ApiResponse {
        self.finish(resp)
    }
}

/// The message shown for an API error: the API's own generic text, with
/// each field's problems for a validation failure.
/// A refused form's status and message for the page; a server fault
/// (internal, unavailable) is no form error and is answered as such.
fn shown(e: ApiError) -> Result<(u16, String), ApiError> {
    match e {
        ApiError::Internal(_) | ApiError::Unavailable { .. } => Err(e),
        e => Ok((e.status(), error_text(&e))),
    }
}

fn error_text(e: &ApiError) -> String {
    match e {
        ApiError::Validation(fields) => {
            let parts: Vec<String> = fields
                .iter()
                .map(|(f, ps)| format!("{} {}", label(f), ps.join(", ")))
                .collect();
            format!("{} {}.", e.message(), parts.join("; "))
        }
        e => e.message().to_string(),
    }
}

fn label(field: &str) -> &str {
    match field {
        "email" => "Email",
        "password" | "new_password" => "Password",
        "password_confirm" | "new_password_confirm" => "Password confirmation",
        "username" => "Name",
        "code" => "Code",
        _ => field,
    }
}

/// The session cookie's identity, rotating it when needed.
async fn identity(auth: &AuthService, page: &mut Page<'_>) -> Option<CookieIdentity> {
    let req = page.req;
    let cookie = browser::cookie_value(req.headers, &page.cfg.browser.cookie_name)?;
    match auth
        .cookie_session(
            cookie,
            req.client.ip,
            &req.client.user_agent,
            &req.client.request_id,
        )
        .await
    {
        Ok(id) => {
            if let Some(new) = &id.rotated {
                page.set_cookies.push(browser::session_cookie(
                    &page.cfg.browser,
                    new,
                    page.cfg.tokens.refresh_ttl_secs,
                ));
            }
            Some(id)
        }
        Err(_) => {
            page.set_cookies
                .push(browser::clear_session_cookie(&page.cfg.browser));
            None
        }
    }
}

impl AuthService {
    /// Serve `/auth/ui/*` (404 unless `browser.enabled`).
    pub(crate) async fn portal(&self, req: &PortalRequest<'_>) -> ApiResult {
        let cfg = self.cfg();
        if !cfg.browser.enabled {
            return Err(ApiError::NotFound);
        }
        let path = req.path;
        let get = *req.method == Method::GET || *req.method == Method::HEAD;
        let post = *req.method == Method::POST;
        match path {
            "/auth/ui/static/passkey.js" if get => {
                return Ok(static_file(
                    portal::PASSKEY_JS,
                    "text/javascript; charset=utf-8",
                ));
            }
            "/auth/ui/static/portal.css" if get => {
                return Ok(static_file(portal::PORTAL_CSS, "text/css; charset=utf-8"));
            }
            _ => {}
        }
        let page = Page::new(req, cfg, &*self.entropy);
        if post && !path.starts_with("/auth/ui/passkeys/") {
            let presented = page.field("csrf");
            if !page.csrf_ok(Some(&presented)) {
                return Ok(self.csrf_refused(page));
            }
        }
        if path == "/auth/ui/admin" || path.starts_with("/auth/ui/admin/") {
            return self.console(page).await;
        }
        let resp = match path {
            "/auth/ui" | "/auth/ui/" if get => page.see_other("/auth/ui/sessions"),
            "/auth/ui/login" if get => self.login_page(page).await,
            "/auth/ui/login" if post => self.login_submit(page).await?,
            "/auth/ui/mfa" if post => self.mfa_submit(page).await?,
            "/auth/ui/register" if get => register_page(page, None, ""),
            "/auth/ui/register" if post => self.register_submit(page).await?,
            "/auth/ui/forgot" if get => forgot_page(page, None),
            "/auth/ui/forgot" if post => self.forgot_submit(page).await?,
            "/auth/ui/reset" if get => {
                let token = req.query_param("token").unwrap_or_default();
                reset_page(page, None, &token)
            }
            "/auth/ui/reset" if post => self.reset_submit(page).await?,
            "/auth/ui/verify" if get => {
                let token = req.query_param("token").unwrap_or_default();
                verify_page(page, &token)
            }
            "/auth/ui/verify" if post => self.verify_submit(page).await?,
            "/auth/ui/logout" if get => logout_page(page),
            "/auth/ui/logout" if post => self.logout_submit(page).await?,
            "/auth/ui/sessions" if get => self.sessions_page(page).await?,
            "/auth/ui/sessions/revoke" if post => self.revoke_submit(page).await?,
            "/auth/ui/passkeys/remove" if post => self.passkey_remove_submit(page).await?,
            "/auth/ui/identities/link" if post => self.identity_link_submit(page).await?,
            "/auth/ui/identities/unlink" if post => self.identity_unlink_submit(page).await?,
            "/auth/ui/reauth" if get => self.reauth_page(page).await?,
            "/auth/ui/reauth" if post => self.reauth_submit(page).await?,
            p if p.starts_with("/auth/ui/passkeys/") && post => self.passkey_json(page).await?,
            "/auth/ui"
            | "/auth/ui/"
            | "/auth/ui/login"
            | "/auth/ui/mfa"
            | "/auth/ui/register"
            | "/auth/ui/forgot"
            | "/auth/ui/reset"
            | "/auth/ui/verify"
            | "/auth/ui/logout"
            | "/auth/ui/sessions"
            | "/auth/ui/sessions/revoke"
            | "/auth/ui/passkeys/remove"
            | "/auth/ui/reauth" => return Err(ApiError::MethodNotAllowed),
            _ => return Err(ApiError::NotFound),
        };
        Ok(resp)
    }

    fn csrf_refused(&self, page: Page<'_>) -> ApiResponse {
        tracing::debug!(path = %page.req.path, "portal CSRF check failed");
        let alert = Some(ApiError::Forbidden.message());
        notice_page(page, 403, alert, portal::Notice::CsrfRefused)
    }

    // ----- sign-in

    async fn login_page(&self, mut page: Page<'_>) -> ApiResponse {
        let rd = page.rd();
        // `prompt=login`: the OpenID Provider asks for a new sign-in even
        // though there is a session.
        let fresh = page.req.query_param("prompt").as_deref() == Some("login");
        if !fresh && identity(self, &mut page).await.is_some() {
            return page.see_other(&rd);
        }
        login_form(page, None, "", &rd)
    }

    /// Set the session cookie of a new session and go to `rd`.
    fn signed_in(&self, mut page: Page<'_>, signed: &Signed, rd: &str) -> ApiResponse {
        self.remember_cookie(signed);
        page.set_cookies.push(browser::session_cookie(
            &page.cfg.browser,
            &signed.refresh_token,
            page.cfg.tokens.refresh_ttl_secs,
        ));
        page.see_other(rd)
    }

    async fn login_submit(&self, page: Page<'_>) -> ApiResult {
        let rd = page.rd();
        let email = page.field("email");
        let creds = crate::accounts::Credentials {
            email: email.clone(),
            password: page.field("password"),
            device: None,
        };
        match self.login(creds, &page.req.client).await {
            Ok(Login::MfaChallenge { mfa_token }) => Ok(mfa_page(page, None, &mfa_token, &rd)),
            Ok(Login::Signed(signed)) => Ok(self.signed_in(page, &signed, &rd)),
            Err(e) => {
                let (status, text) = shown(e.into())?;
                Ok(login_form(page, Some((status, &text)), &email, &rd))
            }
        }
    }

    async fn mfa_submit(&self, page: Page<'_>) -> ApiResult {
        let rd = page.rd();
        let token = page.field("mfa_token");
        let code = page.field("code");
        match self.verify_mfa(&token, code.trim(), &page.req.client).await {
            Ok(signed) => Ok(self.signed_in(page, &signed, &rd)),
            Err(e @ AccountError::Internal(_)) | Err(e @ AccountError::Busy { .. }) => {
                Err(e.into())
            }
            Err(e @ AccountError::BadSessionToken) => {
                // The sign-in itself has run out: start again.
                let e = ApiError::from(e);
                let status = e.status();
                Ok(login_form(page, Some((status, &error_text(&e))), "", &rd))
            }
            Err(e) => {
                let e = ApiError::from(e);
                let status = e.status();
                Ok(mfa_page(page, Some((status, &error_text(&e))), &token, &rd))
            }
        }
    }

    // ----- sign-up, reset, verification

    async fn register_submit(&self, page: Page<'_>) -> ApiResult {
        let email = page.field("email");
        let name = page.field("username");
        let new = NewAccount {
            email: email.clone(),
            password: page.field("password"),
            password_confirm: page.field("password_confirm"),
            username: Some(name.trim().to_string()).filter(|n| !n.is_empty()),
        };
        match self.register(new, &page.req.client).await {
            Ok(_) => {
                let verify_first = page.cfg.accounts.require_email_verification;
                let notice = portal::Notice::AccountCreated { verify_first };
                Ok(notice_page(page, 201, None, notice))
            }
            Err(e) => {
                let (status, text) = shown(e.into())?;
                Ok(register_page(page, Some((status, &text)), &email))
            }
        }
    }

    async fn forgot_submit(&self, page: Page<'_>) -> ApiResult {
        let email = page.field("email");
        match self.reset_request(&email, &page.req.client).await {
            Ok(_) => Ok(notice_page(page, 202, None, portal::Notice::ResetLinkSent)),
            Err(e) => {
                let (status, text) = shown(e.into())?;
                Ok(forgot_page(page, Some((status, &text))))
            }
        }
    }

    async fn reset_submit(&self, page: Page<'_>) -> ApiResult {
        let token = page.field("token");
        let new = NewPassword {
            password: page.field("new_password"),
            confirm: page.field("new_password_confirm"),
        };
        match self.reset_confirm(&token, new, &page.req.client).await {
            Ok(_) => Ok(notice_page(
                page,
                200,
                None,
                portal::Notice::PasswordChanged,
            )),
            Err(e) => {
                let (status, text) = shown(e.into())?;
                Ok(reset_page(page, Some((status, &text)), &token))
            }
        }
    }

    async fn verify_submit(&self, page: Page<'_>) -> ApiResult {
        let token = page.field("token");
        match self.verify_email(&token, &page.req.client).await {
            Ok(_) => Ok(notice_page(page, 200, None, portal::Notice::EmailVerified)),
            Err(e @ AccountError::Internal(_)) | Err(e @ AccountError::Busy { .. }) => {
                Err(e.into())
            }
            Err(e) => {
                let e = ApiError::from(e);
                let notice = portal::Notice::VerifyFailed;
                Ok(notice_page(page, e.status(), Some(e.message()), notice))
            }
        }
    }

    // ----- sign-out and sessions

    async fn logout_submit(&self, mut page: Page<'_>) -> ApiResult {
        let everywhere = page.field("everywhere") == "1";
        let cookie = browser::cookie_value(page.req.headers, &page.cfg.browser.cookie_name)
            .map(str::to_string);
        let id = identity(self, &mut page).await;
        if let Some(cookie) = &cookie {
            let caller = page.req.client.clone();
            match &id {
                Some(id) if everywhere => self.logout_all(&id.claims, &caller).await?,
                _ => {
                    let what = SignOut {
                        refresh_token: Some(cookie),
                        access_token: id
                            .as_ref()
                            .map(|i| i.access.as_str())
                            .ok_or(crate::tokens::TokenRejection::Missing),
                    };
                    self.logout(what, &caller).await?
                }
            }
            self.cookies.forget(cookie);
            if let Some(i) = &id {
                if let Some(r) = &i.rotated {
                    self.cookies.forget(r);
                }
            }
        }
        page.set_cookies
            .push(browser::clear_session_cookie(&page.cfg.browser));
        Ok(notice_page(page, 200, None, portal::Notice::SignedOut))
    }
}

fn static_file(body: &'static str, content_type: &str) -> ApiResponse {
    ApiResponse {
        status: 200,
        headers: vec![("content-type", content_type.into())],
        body: Bytes::from_static(body.as_bytes()),
    }
}

// The pages the flow answers with: each fills its model in and renders it
// (src/portal/). `alert` is a refused form's status and message.

fn login_form(page: Page<'_>, alert: Option<(u16, &str)>, email: &str, rd: &str) -> ApiResponse {
    let (status, text) = split(alert);
    let enc: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
    let providers: Vec<portal::ProviderButton> = page
        .cfg
        .identity_providers
        .iter()
        .map(|p| portal::ProviderButton {
            href: format!("/auth/oidc/{}/start?rd={enc}", p.id),
            id: p.id.clone(),
            display_name: p.display_name.clone(),
        })
        .collect();
    page.render(
        status,
        text,
        &portal::LoginPage {
            email,
            rd,
            providers: &providers,
        },
    )
}

fn mfa_page(page: Page<'_>, alert: Option<(u16, &str)>, token: &str, rd: &str) -> ApiResponse {
    let (status, text) = split(alert);
    let model = portal::MfaPage {
        mfa_token: token,
        rd,
    };
    page.render(status, text, &model)
}

fn reauth_form(page: Page<'_>, alert: Option<(u16, &str)>, totp: bool) -> ApiResponse {
    let (status, text) = split(alert);
    page.render(status, text, &portal::ReauthPage { totp })
}

fn register_page(page: Page<'_>, alert: Option<(u16, &str)>, email: &str) -> ApiResponse {
    let (status, text) = split(alert);
    page.render(status, text, &portal::RegisterPage { email })
}

fn forgot_page(page: Page<'_>, alert: Option<(u16, &str)>) -> ApiResponse {
    let (status, text) = split(alert);
    page.render(status, text, &portal::ForgotPage)
}

fn reset_page(page: Page<'_>, alert: Option<(u16, &str)>, token: &str) -> ApiResponse {
    let (status, text) = split(alert);
    page.render(status, text, &portal::ResetPage { token })
}

fn verify_page(page: Page<'_>, token: &str) -> ApiResponse {
    page.render(200, None, &portal::VerifyPage { token })
}

fn logout_page(page: Page<'_>) -> ApiResponse {
    page.render(200, None, &portal::LogoutPage)
}

/// A page that only tells how something went.
fn notice_page(
    page: Page<'_>,
    status: u16,
    alert: Option<&str>,
    notice: portal::Notice,
) -> ApiResponse {
    page.render(status, alert, &notice)
}

fn split(alert: Option<(u16, &str)>) -> (u16, Option<&str>) {
    match alert {
        Some((status, text)) => (status, Some(text)),
        None => (200, None),
    }
}

// ----- sign-in with an outside provider (CONTRACT 8.1): the pages its
// callback shows in browser mode (`http::federation`).

impl AuthService {
    /// The TOTP step of a federated sign-in, with `cookies` set.
    pub(crate) fn portal_federated_mfa(
        &self,
        req: &PortalRequest<'_>,
        mfa_token: &str,
        rd: &str,
        cookies: Vec<String>,
    ) -> ApiResponse {
        let mut page = Page::new(req, self.cfg(), &*self.entropy);
        page.set_cookies.extend(cookies);
        mfa_page(page, None, mfa_token, rd)
    }

    /// The sign-in page with a federated sign-in's failure on it.
    pub(crate) fn portal_federated_error(
        &self,
        req: &PortalRequest<'_>,
        status: u16,
        message: &str,
        rd: &str,
        cookies: Vec<String>,
    ) -> ApiResponse {
        let mut page = Page::new(req, self.cfg(), &*self.entropy);
        page.set_cookies.extend(cookies);
        login_form(page, Some((status, message)), "", rd)
    }
}
