//! The login portal under `/auth/ui/` (issue 14): server-rendered pages for
//! sign-in (password, second factor, passkey), sign-up, forgotten password
//! and reset, email verification, sign-out, the sessions page, and the
//! re-authentication a passkey needs when the sign-in is older than
//! `accounts.reauth_secs` (CONTRACT 8.6).
//!
//! Every form posts back here and calls the same account-service operation
//! as the JSON endpoint it stands for (`login`, `register`, …): the same
//! checks, throttles and generic error messages. A successful sign-in sets the
//! session cookie ([`super::browser`]). Every POST must come from a trusted
//! Origin and carry the CSRF token of the double-submit cookie (a hidden
//! field, or `X-CSRF-Token` from the passkey script). The pages have a
//! strict CSP: no inline script or style; the passkey script and the style
//! sheet are static files served from here.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use super::browser::{self, CookieIdentity};
use super::AuthService;
use crate::accounts::passkeys::{ceremony_id, field, passkey_name};
use crate::accounts::Signed;
use crate::accounts::{AccountError, Client, Login, NewAccount, NewPassword, Reauth, SignOut};
use crate::api::{ApiRequest, ApiResponse};
use crate::config::Config;
use crate::error::ApiError;

type ApiResult = Result<ApiResponse, ApiError>;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const PASSKEY_JS: &str = include_str!("ui/passkey.js");
const PORTAL_CSS: &str = include_str!("ui/portal.css");

/// HTML-escape text and attribute values.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// One portal request: its config, form fields and CSRF token.
struct Page<'a> {
    req: &'a ApiRequest,
    cfg: Arc<Config>,
    /// The request's CSRF cookie, or a new token to set.
    csrf: String,
    new_csrf: bool,
    /// Cookies to set on whatever is answered.
    set_cookies: Vec<String>,
    form: Vec<(String, String)>,
}

impl<'a> Page<'a> {
    fn new(req: &'a ApiRequest, cfg: Arc<Config>) -> Self {
        let name = browser::csrf_cookie_name(&cfg.browser);
        let (csrf, new_csrf) = match browser::cookie_value(&req.headers, &name) {
            Some(c) if c.len() >= 32 => (c.to_string(), false),
            _ => (browser::new_csrf_token(), true),
        };
        let form = if req.method == Method::POST
            && req
                .header("content-type")
                .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
        {
            url::form_urlencoded::parse(&req.body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        } else {
            vec![]
        };
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
        let raw = if self.req.method == Method::POST {
            self.field("rd")
        } else {
            self.req.query_param("rd").unwrap_or_default()
        };
        browser::safe_redirect(&raw).unwrap_or_else(|| "/".into())
    }

    /// A POST's Origin and double-submit token are both right.
    fn csrf_ok(&self, presented: Option<&str>) -> bool {
        let cookie = browser::cookie_value(
            &self.req.headers,
            &browser::csrf_cookie_name(&self.cfg.browser),
        );
        browser::origin_allowed(self.req, &self.cfg) && browser::csrf_matches(cookie, presented)
    }

    fn csrf_field(&self) -> String {
        format!(
            r#"<input type="hidden" name="csrf" value="{}">"#,
            esc(&self.csrf)
        )
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

    /// A whole page. `alert` is shown as an error above the content.
    fn html(self, status: u16, title: &str, alert: Option<&str>, body: &str) -> ApiResponse {
        let alert = alert
            .map(|a| format!(r#"<p class="alert" role="alert">{}</p>"#, esc(a)))
            .unwrap_or_default();
        let doc = format!(
            r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{csrf}">
<title>{title} · Portcullis</title>
<link rel="stylesheet" href="/auth/ui/static/portal.css">
</head>
<body>
<header><p class="brand">Portcullis</p></header>
<main>
<h1>{title}</h1>
{alert}{body}
</main>
<script src="/auth/ui/static/passkey.js"></script>
</body>
</html>
"#,
            csrf = esc(&self.csrf),
            title = esc(title),
        );
        let resp = ApiResponse {
            status,
            headers: vec![
                ("content-type", "text/html; charset=utf-8".into()),
                ("content-security-policy", CSP.into()),
                ("referrer-policy", "same-origin".into()),
                ("x-frame-options", "DENY".into()),
            ],
            body: Bytes::from(doc),
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

/// The portal request's caller, as the account service sees it.
fn client(req: &ApiRequest) -> Client {
    crate::http::client_of(req)
}

/// The session cookie's identity, rotating it when needed.
async fn identity(auth: &AuthService, page: &mut Page<'_>) -> Option<CookieIdentity> {
    let req = page.req;
    let cookie = browser::cookie_value(&req.headers, &page.cfg.browser.cookie_name)?;
    let ua = req.user_agent();
    match auth
        .cookie_session(cookie, req.client_ip, &ua, &req.request_id)
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

fn form(action: &str, page: &Page<'_>, inner: &str, button: &str) -> String {
    format!(
        r#"<form method="post" action="{action}">
{csrf}{inner}<button type="submit">{button}</button>
</form>"#,
        csrf = page.csrf_field(),
        button = esc(button),
    )
}

fn input(
    name: &str,
    label: &str,
    kind: &str,
    autocomplete: &str,
    value: &str,
    required: bool,
) -> String {
    format!(
        r#"<p><label for="{name}">{label}</label>
<input id="{name}" name="{name}" type="{kind}" autocomplete="{autocomplete}" value="{value}"{req}></p>
"#,
        label = esc(label),
        value = esc(value),
        req = if required { " required" } else { "" },
    )
}

/// An RFC 3339 time as `<time>`, shown as `2026-01-02 03:04 UTC`.
fn time_el(rfc3339: &str) -> String {
    let shown = match rfc3339.get(..16) {
        Some(s) if rfc3339.ends_with('Z') => format!("{} UTC", s.replace('T', " ")),
        _ => rfc3339.to_string(),
    };
    format!(
        r#"<time datetime="{}">{}</time>"#,
        esc(rfc3339),
        esc(&shown)
    )
}

fn hidden(name: &str, value: &str) -> String {
    format!(
        r#"<input type="hidden" name="{name}" value="{}">"#,
        esc(value)
    )
}

impl AuthService {
    /// Serve `/auth/ui/*` (404 unless `browser.enabled`).
    pub(crate) async fn portal(&self, req: &ApiRequest) -> ApiResult {
        let cfg = self.cfg();
        if !cfg.browser.enabled {
            return Err(ApiError::NotFound);
        }
        let path = req.path.as_str();
        let get = req.method == Method::GET || req.method == Method::HEAD;
        let post = req.method == Method::POST;
        match path {
            "/auth/ui/static/passkey.js" if get => {
                return Ok(static_file(PASSKEY_JS, "text/javascript; charset=utf-8"));
            }
            "/auth/ui/static/portal.css" if get => {
                return Ok(static_file(PORTAL_CSS, "text/css; charset=utf-8"));
            }
            _ => {}
        }
        let page = Page::new(req, cfg);
        if post && !path.starts_with("/auth/ui/passkeys/") {
            let presented = page.field("csrf");
            if !page.csrf_ok(Some(&presented)) {
                return Ok(self.csrf_refused(page));
            }
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
        let body = r#"<p>This form was sent from another site, or it has expired. Go back, reload the page and try again.</p>
<p><a href="/auth/ui/login">Sign in</a></p>"#;
        page.html(
            403,
            "Request refused",
            Some(ApiError::Forbidden.message()),
            body,
        )
    }

    // ----- sign-in

    async fn login_page(&self, mut page: Page<'_>) -> ApiResponse {
        let rd = page.rd();
        if identity(self, &mut page).await.is_some() {
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
        match self.login(creds, &client(page.req)).await {
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
        match self
            .verify_mfa(&token, code.trim(), &client(page.req))
            .await
        {
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
        match self.register(new, &client(page.req)).await {
            Ok(_) => {
                let check = if page.cfg.accounts.require_email_verification {
                    "<p>We have sent you an email: follow its link to confirm your address, then sign in.</p>"
                } else {
                    "<p>You can sign in now. We have also sent you an email to confirm your address.</p>"
                };
                let body = format!(r#"{check}<p><a href="/auth/ui/login">Sign in</a></p>"#);
                Ok(page.html(201, "Account created", None, &body))
            }
            Err(e) => {
                let (status, text) = shown(e.into())?;
                Ok(register_page(page, Some((status, &text)), &email))
            }
        }
    }

    async fn forgot_submit(&self, page: Page<'_>) -> ApiResult {
        let email = page.field("email");
        match self.reset_request(&email, &client(page.req)).await {
            Ok(_) => {
                let body = r#"<p>If an account exists for that address, we have sent it a link to choose a new password. The link works once and runs out soon.</p>
<p><a href="/auth/ui/login">Back to sign in</a></p>"#;
                Ok(page.html(202, "Check your email", None, body))
            }
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
        match self.reset_confirm(&token, new, &client(page.req)).await {
            Ok(_) => {
                let body = r#"<p>Your password has been changed, and every session of your account has been signed out.</p>
<p><a href="/auth/ui/login">Sign in</a></p>"#;
                Ok(page.html(200, "Password changed", None, body))
            }
            Err(e) => {
                let (status, text) = shown(e.into())?;
                Ok(reset_page(page, Some((status, &text)), &token))
            }
        }
    }

    async fn verify_submit(&self, page: Page<'_>) -> ApiResult {
        let token = page.field("token");
        match self.verify_email(&token, &client(page.req)).await {
            Ok(_) => {
                let body = r#"<p>Thank you: your email address is confirmed.</p>
<p><a href="/auth/ui/login">Sign in</a></p>"#;
                Ok(page.html(200, "Email verified", None, body))
            }
            Err(e @ AccountError::Internal(_)) | Err(e @ AccountError::Busy { .. }) => {
                Err(e.into())
            }
            Err(e) => {
                let e = ApiError::from(e);
                let body = r#"<p><a href="/auth/ui/login">Sign in</a></p>"#;
                Ok(page.html(e.status(), "Confirm your email", Some(e.message()), body))
            }
        }
    }

    // ----- sign-out and sessions

    async fn logout_submit(&self, mut page: Page<'_>) -> ApiResult {
        let everywhere = page.field("everywhere") == "1";
        let cookie = browser::cookie_value(&page.req.headers, &page.cfg.browser.cookie_name)
            .map(str::to_string);
        let id = identity(self, &mut page).await;
        if let Some(cookie) = &cookie {
            let caller = client(page.req);
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
        let body = r#"<p>You have been signed out.</p>
<p><a href="/auth/ui/login">Sign in again</a></p>"#;
        Ok(page.html(200, "Signed out", None, body))
    }

    async fn require_identity(&self, page: &mut Page<'_>) -> Option<CookieIdentity> {
        identity(self, page).await
    }

    async fn sessions_page(&self, mut page: Page<'_>) -> ApiResult {
        let Some(id) = self.require_identity(&mut page).await else {
            return Ok(page.see_other(&browser::login_location("/auth/ui/sessions")));
        };
        let list = self.sessions(&id.claims).await?;
        let user = self.current_user(&id.claims).await?;
        let mut rows = String::new();
        for s in &list {
            let sid = s.record.id.to_string();
            let current = s.current;
            let action = if current {
                "This session".to_string()
            } else {
                form(
                    "/auth/ui/sessions/revoke",
                    &page,
                    &hidden("id", &sid),
                    "Sign out",
                )
            };
            rows.push_str(&format!(
                "<tr><td>{ua}</td><td>{ip}</td><td>{created}</td><td>{used}</td><td>{action}</td></tr>\n",
                ua = esc(&s.record.user_agent),
                ip = esc(&s.record.ip),
                created = time_el(&crate::clock::rfc3339(s.record.created_at)),
                used = time_el(&crate::clock::rfc3339(s.record.last_used_at)),
            ));
        }
        let mut keys = String::new();
        for p in &user.passkeys {
            keys.push_str(&format!(
                "<li>{name} <small>added {at}</small> {remove}</li>\n",
                name = esc(&p.name),
                at = time_el(&crate::clock::rfc3339(p.created_at)),
                remove = form(
                    "/auth/ui/passkeys/remove",
                    &page,
                    &hidden("id", &p.id.to_string()),
                    "Remove",
                ),
            ));
        }
        if keys.is_empty() {
            keys.push_str("<li>No passkeys yet.</li>\n");
        }
        let notice = match page.req.query_param("notice").as_deref() {
            Some("passkey-added") => r#"<p class="notice" role="status">Passkey added.</p>"#,
            Some("passkey-removed") => r#"<p class="notice" role="status">Passkey removed.</p>"#,
            Some("session-ended") => r#"<p class="notice" role="status">Session signed out.</p>"#,
            Some("reauthed") => {
                r#"<p class="notice" role="status">Thank you: you can add a passkey now.</p>"#
            }
            _ => "",
        };
        let amr = id.claims.amr.join(", ");
        // Adding a passkey needs a recent sign-in (CONTRACT 8.6): an older
        // session is sent to confirm it is the user first.
        let add_passkey = if self.require_recent(&id.claims).is_ok() {
            r#"<p><label for="passkey-name">Name for a new passkey</label>
<input id="passkey-name" name="passkey-name" type="text" maxlength="64" value="My passkey"></p>
<p><button type="button" id="passkey-register">Add a passkey</button></p>"#
        } else {
            r#"<p id="reauth-needed">To add a passkey, first <a href="/auth/ui/reauth">confirm it is you</a>: your sign-in was a while ago.</p>"#
        };
        let body = format!(
            r#"{notice}<p>Signed in as <strong id="who">{email}</strong>. This session signed in with: <span id="amr">{amr}</span>.</p>
<section aria-labelledby="sessions-h">
<h2 id="sessions-h">Sessions</h2>
<table>
<thead><tr><th scope="col">Browser or app</th><th scope="col">IP address</th><th scope="col">Started</th><th scope="col">Last used</th><th scope="col"><span class="visually-hidden">Action</span></th></tr></thead>
<tbody>
{rows}</tbody>
</table>
</section>
<section aria-labelledby="passkeys-h">
<h2 id="passkeys-h">Passkeys</h2>
<ul id="passkeys">
{keys}</ul>
{add_passkey}
<p id="passkey-status" role="status" aria-live="polite"></p>
</section>
<nav aria-label="Account"><p><a href="/auth/ui/logout">Sign out</a></p></nav>"#,
            email = esc(&user.email),
            amr = esc(&amr),
        );
        Ok(page.html(200, "Your sessions", None, &body))
    }

    async fn revoke_submit(&self, mut page: Page<'_>) -> ApiResult {
        let Some(id) = self.require_identity(&mut page).await else {
            return Ok(page.see_other(&browser::login_location("/auth/ui/sessions")));
        };
        let sid = page.field("id");
        match self.end_session(&id.claims, &sid, &client(page.req)).await {
            Ok(_) | Err(AccountError::NotFound) => {
                Ok(page.see_other("/auth/ui/sessions?notice=session-ended"))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn passkey_remove_submit(&self, mut page: Page<'_>) -> ApiResult {
        let Some(id) = self.require_identity(&mut page).await else {
            return Ok(page.see_other(&browser::login_location("/auth/ui/sessions")));
        };
        let user = Uuid::parse_str(&id.claims.sub).map_err(|_| ApiError::Unauthorized)?;
        match self.passkey_remove(user, &page.field("id")).await {
            Ok(()) | Err(AccountError::NotFound) => {
                Ok(page.see_other("/auth/ui/sessions?notice=passkey-removed"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The re-authentication form (CONTRACT 8.6) for the signed-in user.
    async fn reauth_page(&self, mut page: Page<'_>) -> ApiResult {
        let Some(id) = self.require_identity(&mut page).await else {
            return Ok(page.see_other(&browser::login_location("/auth/ui/reauth")));
        };
        let user = self.current_user(&id.claims).await?;
        let totp = user.totp.as_ref().is_some_and(|t| t.confirmed);
        Ok(reauth_form(page, None, totp))
    }

    /// Re-authenticate (the operation behind `POST /auth/reauth`); the
    /// session's rotated refresh token becomes the cookie.
    async fn reauth_submit(&self, mut page: Page<'_>) -> ApiResult {
        let Some(id) = self.require_identity(&mut page).await else {
            return Ok(page.see_other(&browser::login_location("/auth/ui/reauth")));
        };
        let code = page.field("code");
        let proof = Reauth {
            password: Some(page.field("password")),
            code: Some(code.trim().to_string()).filter(|c| !c.is_empty()),
        };
        match self.reauth(&id.claims, proof, &client(page.req)).await {
            Ok(signed) => Ok(self.signed_in(page, &signed, "/auth/ui/sessions?notice=reauthed")),
            Err(e) => {
                let (status, text) = shown(e.into())?;
                let user = self.current_user(&id.claims).await?;
                let totp = user.totp.as_ref().is_some_and(|t| t.confirmed);
                Ok(reauth_form(page, Some((status, &text)), totp))
            }
        }
    }

    /// The passkey script's JSON calls: `X-CSRF-Token` instead of a field.
    async fn passkey_json(&self, mut page: Page<'_>) -> ApiResult {
        let presented = page.req.header("x-csrf-token").map(str::to_string);
        if !page.csrf_ok(presented.as_deref()) {
            return Err(ApiError::Forbidden);
        }
        let body = if page.req.body.is_empty() {
            json!({})
        } else {
            crate::http::body::json_value(page.req)?
        };
        let resp = match page.req.path.as_str() {
            "/auth/ui/passkeys/register/start" | "/auth/ui/passkeys/register/finish" => {
                let Some(id) = self.require_identity(&mut page).await else {
                    return Err(ApiError::Unauthorized);
                };
                let user = Uuid::parse_str(&id.claims.sub).map_err(|_| ApiError::Unauthorized)?;
                // A passkey is a new way in: only from a recent sign-in.
                self.require_recent(&id.claims)?;
                if page.req.path.ends_with("/start") {
                    let c = self.passkey_register_start(user).await?;
                    ApiResponse::json(200, &json!({ "ceremony": c.id, "options": c.options }))
                } else {
                    let ceremony = ceremony_id(&body)?;
                    let credential = field(&body, "credential")?;
                    let name = passkey_name(body.get("name").and_then(Value::as_str));
                    let caller = client(page.req);
                    let added = self
                        .passkey_register_finish(user, &ceremony, credential, name, &caller)
                        .await?;
                    let view = json!({ "id": added.id.to_string(), "name": added.name });
                    ApiResponse::json(201, &view)
                }
            }
            "/auth/ui/passkeys/login/start" => {
                let c = self.passkey_login_start().await?;
                ApiResponse::json(200, &json!({ "ceremony": c.id, "options": c.options }))
            }
            "/auth/ui/passkeys/login/finish" => {
                let rd = body
                    .get("rd")
                    .and_then(Value::as_str)
                    .and_then(browser::safe_redirect)
                    .unwrap_or_else(|| "/".into());
                let ceremony = ceremony_id(&body)?;
                let credential = field(&body, "credential")?;
                let caller = client(page.req);
                let signed = self
                    .passkey_login_finish(&ceremony, credential, &caller)
                    .await?;
                self.remember_cookie(&signed);
                page.set_cookies.push(browser::session_cookie(
                    &page.cfg.browser,
                    &signed.refresh_token,
                    page.cfg.tokens.refresh_ttl_secs,
                ));
                ApiResponse::json(200, &json!({ "redirect": rd }))
            }
            _ => return Err(ApiError::NotFound),
        };
        Ok(page.json(resp))
    }
}

fn static_file(body: &'static str, content_type: &str) -> ApiResponse {
    ApiResponse {
        status: 200,
        headers: vec![("content-type", content_type.into())],
        body: Bytes::from_static(body.as_bytes()),
    }
}

fn login_form(page: Page<'_>, alert: Option<(u16, &str)>, email: &str, rd: &str) -> ApiResponse {
    let fields = format!(
        "{}{}{}",
        hidden("rd", rd),
        input("email", "Email", "email", "username webauthn", email, true),
        input(
            "password",
            "Password",
            "password",
            "current-password",
            "",
            true
        ),
    );
    let body = format!(
        r#"{form}
<section aria-labelledby="passkey-h">
<h2 id="passkey-h">Or use a passkey</h2>
<p><button type="button" id="passkey-login">Sign in with a passkey</button></p>
<p id="passkey-status" role="status" aria-live="polite"></p>
</section>
<nav aria-label="Account"><p><a href="/auth/ui/register">Create an account</a> · <a href="/auth/ui/forgot">Forgot your password?</a></p></nav>"#,
        form = form("/auth/ui/login", &page, &fields, "Sign in"),
    );
    let (status, text) = alert.unwrap_or((200, ""));
    page.html(status, "Sign in", alert.map(|_| text), &body)
}

fn mfa_page(page: Page<'_>, alert: Option<(u16, &str)>, token: &str, rd: &str) -> ApiResponse {
    let fields = format!(
        "{}{}{}",
        hidden("rd", rd),
        hidden("mfa_token", token),
        input(
            "code",
            "Authentication code or recovery code",
            "text",
            "one-time-code",
            "",
            true
        ),
    );
    let body = format!(
        "<p>Enter the code from your authenticator app.</p>\n{}",
        form("/auth/ui/mfa", &page, &fields, "Verify")
    );
    let (status, text) = alert.unwrap_or((200, ""));
    page.html(status, "Two-step verification", alert.map(|_| text), &body)
}

fn reauth_form(page: Page<'_>, alert: Option<(u16, &str)>, totp: bool) -> ApiResponse {
    let mut fields = input(
        "password",
        "Password",
        "password",
        "current-password",
        "",
        true,
    );
    if totp {
        fields.push_str(&input(
            "code",
            "Authentication code or recovery code",
            "text",
            "one-time-code",
            "",
            true,
        ));
    }
    let body = format!(
        r#"<p>Some changes (adding a passkey) need a recent sign-in. Confirm it is you to go on.</p>
{}
<nav aria-label="Account"><p><a href="/auth/ui/sessions">Back to your sessions</a></p></nav>"#,
        form("/auth/ui/reauth", &page, &fields, "Confirm")
    );
    let (status, text) = alert.unwrap_or((200, ""));
    page.html(status, "Confirm it is you", alert.map(|_| text), &body)
}

fn register_page(page: Page<'_>, alert: Option<(u16, &str)>, email: &str) -> ApiResponse {
    let fields = format!(
        "{}{}{}{}",
        input("email", "Email", "email", "email", email, true),
        input("username", "Name (optional)", "text", "name", "", false),
        input(
            "password",
            "Password (at least 8 characters)",
            "password",
            "new-password",
            "",
            true
        ),
        input(
            "password_confirm",
            "Repeat the password",
            "password",
            "new-password",
            "",
            true
        ),
    );
    let body = format!(
        r#"{}
<nav aria-label="Account"><p>Already have an account? <a href="/auth/ui/login">Sign in</a></p></nav>"#,
        form("/auth/ui/register", &page, &fields, "Create account")
    );
    let (status, text) = alert.unwrap_or((200, ""));
    page.html(status, "Create an account", alert.map(|_| text), &body)
}

fn forgot_page(page: Page<'_>, alert: Option<(u16, &str)>) -> ApiResponse {
    let fields = input("email", "Email", "email", "email", "", true);
    let body = format!(
        r#"<p>Enter your email address and we will send you a link to choose a new password.</p>
{}
<nav aria-label="Account"><p><a href="/auth/ui/login">Back to sign in</a></p></nav>"#,
        form("/auth/ui/forgot", &page, &fields, "Send the link")
    );
    let (status, text) = alert.unwrap_or((200, ""));
    page.html(status, "Forgot your password?", alert.map(|_| text), &body)
}

fn reset_page(page: Page<'_>, alert: Option<(u16, &str)>, token: &str) -> ApiResponse {
    let fields = format!(
        "{}{}{}",
        hidden("token", token),
        input(
            "new_password",
            "New password (at least 8 characters)",
            "password",
            "new-password",
            "",
            true
        ),
        input(
            "new_password_confirm",
            "Repeat the new password",
            "password",
            "new-password",
            "",
            true
        ),
    );
    let body = form("/auth/ui/reset", &page, &fields, "Set password");
    let (status, text) = alert.unwrap_or((200, ""));
    page.html(status, "Choose a new password", alert.map(|_| text), &body)
}

fn verify_page(page: Page<'_>, token: &str) -> ApiResponse {
    // A GET never spends the token (mail scanners follow links): the
    // button does.
    let body = format!(
        "<p>Confirm that this email address is yours.</p>\n{}",
        form(
            "/auth/ui/verify",
            &page,
            &hidden("token", token),
            "Confirm my email address"
        )
    );
    page.html(200, "Confirm your email", None, &body)
}

fn logout_page(page: Page<'_>) -> ApiResponse {
    let one = form("/auth/ui/logout", &page, "", "Sign out");
    let all = form(
        "/auth/ui/logout",
        &page,
        &hidden("everywhere", "1"),
        "Sign out everywhere",
    );
    let body = format!(
        r#"<p>Sign out of this browser, or of every browser and app signed in to your account.</p>
{one}
{all}
<nav aria-label="Account"><p><a href="/auth/ui/sessions">Back to your sessions</a></p></nav>"#
    );
    page.html(200, "Sign out", None, &body)
}
