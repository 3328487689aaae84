//! The portal's pages: askama templates (`templates/`, a base layout and
//! one per page) filled from typed page models ([`pages`]), and the static
//! files they load (`static/`).
//!
//! Why templates: askama checks every template when the crate compiles and
//! escapes every interpolation for HTML unless a template says otherwise
//! (only [`confirm_link_page`]'s constant script does), so a value echoed
//! from a request (an email, `rd`, a token, a session's user agent) cannot
//! become markup by a forgotten escaper call.
//!
//! This module only renders. What a page shows is decided by the portal's
//! flow (`portal::flow`), which builds a model, calls [`render`] and answers
//! with [`CSP`]. No inline script or style: the pages load `portal.css` and
//! `passkey.js` from `/auth/ui/static/`.

mod admin;
pub mod flow;
mod pages;
mod request;
#[cfg(test)]
mod tests;

use std::sync::LazyLock;

use askama::Template;
use base64::Engine as _;
use sha2::{Digest, Sha256};

pub use admin::{
    AdminDenied, AdminDone, AdminEventRow, AdminIdentityRow, AdminKeyRow, AdminSearchPage,
    AdminSessionRow, AdminUserPage, AdminUserRow,
};
pub use pages::{
    ConfirmPage, ForgotPage, IdentityRow, LoginPage, LogoutPage, MfaPage, Notice, PasskeyRow,
    ProviderButton, ReauthPage, RegisterPage, ResetPage, SessionRow, SessionsNotice, SessionsPage,
    Time, VerifyPage,
};
pub use request::PortalRequest;

/// The portal pages' Content-Security-Policy: nothing inline.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// [`CSP`] for a config: with `browser.cookie_domain`, a sign-in form's
/// answer is a 303 to `rd` on another host under the domain, and browsers
/// apply `form-action` to a form's redirects too (Chromium refused the
/// 303 and the sign-in never reached app1: caught by
/// `browser::chromium_signs_in_once_for_two_hosts_under_the_cookie_domain`).
/// So `form-action` also names the `https://` hosts `rd` may name (the
/// route hosts under the domain, any port); which one is still decided by
/// `browser::safe_redirect_for`. Without the key, exactly [`CSP`].
pub fn csp_for(cfg: &crate::config::Config) -> std::borrow::Cow<'static, str> {
    use crate::config::HostPattern;
    let Some(domain) = &cfg.browser.cookie_domain else {
        return std::borrow::Cow::Borrowed(CSP);
    };
    let under = |h: &str| h == domain.as_str() || h.ends_with(&format!(".{domain}"));
    let mut sources: Vec<String> = Vec::new();
    for r in &cfg.routes {
        let source = match &r.host {
            HostPattern::Exact(h) if under(h) => format!("https://{h}:*"),
            HostPattern::Wildcard(p) if under(p) => format!("https://*.{p}:*"),
            _ => continue,
        };
        if !sources.contains(&source) {
            sources.push(source);
        }
    }
    if sources.is_empty() {
        return std::borrow::Cow::Borrowed(CSP);
    }
    std::borrow::Cow::Owned(CSP.replace(
        "form-action 'self';",
        &format!("form-action 'self' {};", sources.join(" ")),
    ))
}

/// `/auth/ui/static/passkey.js`: the WebAuthn calls of the sign-in and
/// sessions pages.
pub const PASSKEY_JS: &str = include_str!("static/passkey.js");
/// `/auth/ui/static/portal.css`.
pub const PORTAL_CSS: &str = include_str!("static/portal.css");

/// What every portal page carries besides its own model: the CSRF token of
/// the double-submit cookie (in each form and in a `<meta>` for the passkey
/// script) and an error shown above the content.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub csrf: &'a str,
    pub alert: Option<&'a str>,
}

/// A page model that renders inside the base layout.
pub trait View {
    /// The whole document.
    fn render_in(&self, frame: &Frame<'_>) -> askama::Result<String>;
}

/// Renders `view` as a whole portal page.
pub fn render(frame: &Frame<'_>, view: &impl View) -> askama::Result<String> {
    view.render_in(frame)
}

/// The script of [`confirm_link_page`], the only inline one anywhere.
const CONFIRM_JS: &str = include_str!("static/confirm.js");

/// [`confirm_link_page`]'s CSP: its one inline script by hash, nothing else
/// inline, and its `fetch` to this origin.
pub static CONFIRM_CSP: LazyLock<String> = LazyLock::new(|| {
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(CONFIRM_JS));
    format!(
        "default-src 'none'; script-src 'sha256-{hash}'; connect-src 'self'; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
});

#[derive(Template)]
#[template(path = "confirm.html", config = "src/portal/askama.toml")]
struct ConfirmHtml<'a> {
    page: &'a ConfirmPage<'a>,
    script: &'static str,
}

/// The page of a mailed link when the portal is off (`GET
/// /auth/email/verify`, `GET /auth/password/reset`): a button whose script
/// posts the link's token to the JSON endpoint. Serve it with
/// [`CONFIRM_CSP`].
pub fn confirm_link_page(page: &ConfirmPage<'_>) -> askama::Result<String> {
    ConfirmHtml {
        page,
        script: CONFIRM_JS,
    }
    .render()
}
