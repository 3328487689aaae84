//! The page models (what the flow fills in) and the template each renders
//! through. A model holds plain values; its template escapes them.

use askama::Template;

use super::{Frame, View};

/// One template per page: the model under `page`, the frame and the title
/// the base layout shows.
macro_rules! page_template {
    ($html:ident, $model:ty, $path:literal) => {
        #[derive(Template)]
        #[template(path = $path, config = "src/portal/askama.toml")]
        struct $html<'a> {
            frame: &'a Frame<'a>,
            title: &'a str,
            #[allow(dead_code)] // unread by the pages without values
            page: &'a $model,
        }
    };
}

/// Each model's [`View`]: its template with a fixed title.
macro_rules! view {
    ($model:ty, $html:ident, $title:expr) => {
        impl View for $model {
            fn render_in(&self, frame: &Frame<'_>) -> askama::Result<String> {
                #[allow(clippy::redundant_closure_call)]
                let title = ($title)(self);
                $html {
                    frame,
                    title,
                    page: self,
                }
                .render()
            }
        }
    };
}

/// The sign-in form: the address typed before (after a refused attempt)
/// and the checked `rd` carried on.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoginPage<'a> {
    pub email: &'a str,
    pub rd: &'a str,
    /// One "Sign in with …" button per `[[identity_providers]]` entry.
    pub providers: &'a [ProviderButton],
}

/// A button that starts a sign-in at an outside provider (CONTRACT 8.1).
#[derive(Debug, Clone, Default)]
pub struct ProviderButton {
    /// Where it goes: `/auth/oidc/{id}/start?rd=…`, or the linking form's
    /// provider id on the sessions page.
    pub href: String,
    pub id: String,
    pub display_name: String,
}

/// One identity at an outside provider linked to the account.
#[derive(Debug, Clone, Default)]
pub struct IdentityRow {
    pub provider: String,
    pub display_name: String,
    pub email: String,
    pub linked: Time,
}
page_template!(LoginHtml, LoginPage<'a>, "login.html");
view!(LoginPage<'_>, LoginHtml, |_| "Sign in");

/// The second step of a sign-in with TOTP.
#[derive(Debug, Clone, Copy)]
pub struct MfaPage<'a> {
    pub mfa_token: &'a str,
    pub rd: &'a str,
}
page_template!(MfaHtml, MfaPage<'a>, "mfa.html");
view!(MfaPage<'_>, MfaHtml, |_| "Two-step verification");

/// Confirming it is the user (CONTRACT 8.6); `totp` asks for a code too.
#[derive(Debug, Clone, Copy)]
pub struct ReauthPage {
    pub totp: bool,
}
page_template!(ReauthHtml, ReauthPage, "reauth.html");
view!(ReauthPage, ReauthHtml, |_| "Confirm it is you");

/// The sign-up form, with the address typed before.
#[derive(Debug, Clone, Copy, Default)]
pub struct RegisterPage<'a> {
    pub email: &'a str,
}
page_template!(RegisterHtml, RegisterPage<'a>, "register.html");
view!(RegisterPage<'_>, RegisterHtml, |_| "Create an account");

/// Asking for a password-reset link.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForgotPage;
page_template!(ForgotHtml, ForgotPage, "forgot.html");
view!(ForgotPage, ForgotHtml, |_| "Forgot your password?");

/// Choosing a new password with the link's token.
#[derive(Debug, Clone, Copy)]
pub struct ResetPage<'a> {
    pub token: &'a str,
}
page_template!(ResetHtml, ResetPage<'a>, "reset.html");
view!(ResetPage<'_>, ResetHtml, |_| "Choose a new password");

/// Confirming an email address with the link's token.
#[derive(Debug, Clone, Copy)]
pub struct VerifyPage<'a> {
    pub token: &'a str,
}
page_template!(VerifyHtml, VerifyPage<'a>, "verify.html");
view!(VerifyPage<'_>, VerifyHtml, |_| "Confirm your email");

/// Signing out here or everywhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogoutPage;
page_template!(LogoutHtml, LogoutPage, "logout.html");
view!(LogoutPage, LogoutHtml, |_| "Sign out");

/// The pages that only tell how something went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// `verify_first`: `accounts.require_email_verification`.
    AccountCreated {
        verify_first: bool,
    },
    ResetLinkSent,
    PasswordChanged,
    EmailVerified,
    /// The verification link was refused (the frame's alert says why).
    VerifyFailed,
    SignedOut,
    /// A POST without the right Origin or CSRF token.
    CsrfRefused,
    /// A sign-in that succeeded but gave no session (a server fault).
    SignInFailed,
}

impl Notice {
    pub fn title(&self) -> &'static str {
        match self {
            Notice::AccountCreated { .. } => "Account created",
            Notice::ResetLinkSent => "Check your email",
            Notice::PasswordChanged => "Password changed",
            Notice::EmailVerified => "Email verified",
            Notice::VerifyFailed => "Confirm your email",
            Notice::SignedOut => "Signed out",
            Notice::CsrfRefused => "Request refused",
            Notice::SignInFailed => "Sign in",
        }
    }
}
page_template!(NoticeHtml, Notice, "notice.html");
view!(Notice, NoticeHtml, Notice::title);

/// The signed-in user's sessions and passkeys.
#[derive(Debug, Clone, Default)]
pub struct SessionsPage<'a> {
    pub email: &'a str,
    /// The session's `amr`, joined with ", ".
    pub amr: String,
    pub notice: Option<SessionsNotice>,
    pub sessions: Vec<SessionRow>,
    pub passkeys: Vec<PasskeyRow>,
    /// The sign-in is recent enough to add a passkey (CONTRACT 8.6); else
    /// the page links to the re-authentication.
    pub can_add_passkey: bool,
    /// Linked identities at outside providers, and the providers one
    /// more can be linked at.
    pub identities: Vec<IdentityRow>,
    pub linkable: Vec<ProviderButton>,
}
page_template!(SessionsHtml, SessionsPage<'a>, "sessions.html");
view!(SessionsPage<'_>, SessionsHtml, |_| "Your sessions");

/// What the sessions page confirms after a redirect (`?notice=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionsNotice {
    PasskeyAdded,
    PasskeyRemoved,
    SessionEnded,
    Reauthed,
}

impl SessionsNotice {
    /// The `notice` query parameter's value, if it is one of ours.
    pub fn from_query(value: &str) -> Option<Self> {
        match value {
            "passkey-added" => Some(Self::PasskeyAdded),
            "passkey-removed" => Some(Self::PasskeyRemoved),
            "session-ended" => Some(Self::SessionEnded),
            "reauthed" => Some(Self::Reauthed),
            _ => None,
        }
    }
}

/// One session of the user.
#[derive(Debug, Clone, Default)]
pub struct SessionRow {
    pub id: String,
    pub user_agent: String,
    pub ip: String,
    pub created: Time,
    pub last_used: Time,
    /// The session of this request: shown, never offered for sign-out.
    pub current: bool,
}

/// One passkey of the user.
#[derive(Debug, Clone, Default)]
pub struct PasskeyRow {
    pub id: String,
    pub name: String,
    pub created: Time,
}

/// An RFC 3339 time for `<time>`: the machine value and the one shown
/// (`2026-01-02 03:04 UTC`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Time {
    pub datetime: String,
    pub shown: String,
}

impl Time {
    pub fn new(rfc3339: &str) -> Self {
        let shown = match rfc3339.get(..16) {
            Some(s) if rfc3339.ends_with('Z') => format!("{} UTC", s.replace('T', " ")),
            _ => rfc3339.to_string(),
        };
        Time {
            datetime: rfc3339.to_string(),
            shown,
        }
    }
}

/// The page a mailed link opens when the portal is off.
#[derive(Debug, Clone, Copy)]
pub struct ConfirmPage<'a> {
    pub title: &'a str,
    pub button: &'a str,
    /// The JSON endpoint the script posts the token to.
    pub action: &'a str,
    /// Ask for the new password twice (the reset link).
    pub with_password: bool,
}
