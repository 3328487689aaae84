//! The admin console's page models (CONTRACT 8.5): the user search, one
//! user, and the refusal pages. Filled in by `portal::flow::console`; each
//! renders through its template inside the portal's base layout, with the
//! portal's CSP and escaping.

use askama::Template;

use super::{Frame, PasskeyRow, Time, View};

/// The search by email prefix, one page of matches.
#[derive(Debug, Clone, Default)]
pub struct AdminSearchPage<'a> {
    /// The signed-in administrator.
    pub admin_email: &'a str,
    /// The prefix searched for ("" before a search).
    pub query: &'a str,
    pub users: Vec<AdminUserRow>,
    /// The next page's link (`after` = the last email of this page), when
    /// there may be more.
    pub next_href: Option<String>,
}

/// One match of the search.
#[derive(Debug, Clone, Default)]
pub struct AdminUserRow {
    /// The user's page.
    pub href: String,
    pub email: String,
    /// Joined with ", ".
    pub roles: String,
    pub disabled: bool,
    pub totp: bool,
}

/// One user: what they are and hold, and the actions on them.
#[derive(Debug, Clone, Default)]
pub struct AdminUserPage<'a> {
    pub admin_email: &'a str,
    /// How the last action went (after its redirect).
    pub done: Option<AdminDone>,
    pub id: String,
    pub email: String,
    pub username: String,
    pub created: Time,
    pub disabled: bool,
    pub email_verified: bool,
    pub roles: Vec<String>,
    pub sessions: Vec<AdminSessionRow>,
    pub api_keys: Vec<AdminKeyRow>,
    pub passkeys: Vec<PasskeyRow>,
    /// Identities at outside providers linked to the account (CONTRACT 8.1).
    pub identities: Vec<AdminIdentityRow>,
    pub totp: bool,
    /// The user's recent audit events; `None` while the gateway keeps no
    /// audit trail it can read back.
    pub events: Option<Vec<AdminEventRow>>,
}

/// One session of the user.
#[derive(Debug, Clone, Default)]
pub struct AdminSessionRow {
    /// "Firefox 133 on Linux" (`crate::useragent`).
    pub browser: String,
    /// The `User-Agent` as sent (shown on hover).
    pub user_agent: String,
    pub ip: String,
    pub created: Time,
    pub last_used: Time,
    /// How it signed in (`amr`, joined).
    pub amr: String,
}

/// One API key of the user (never the key).
#[derive(Debug, Clone, Default)]
pub struct AdminKeyRow {
    pub id: String,
    pub name: String,
    pub scopes: String,
    pub created: Time,
    pub expires: Option<Time>,
    pub last_used: Option<Time>,
}

/// One identity at an outside provider linked to the user.
#[derive(Debug, Clone, Default)]
pub struct AdminIdentityRow {
    /// The provider's display name (its id once it is no longer configured).
    pub provider: String,
    pub subject: String,
    pub email: String,
    pub linked: Time,
}

/// One audit event of the user.
#[derive(Debug, Clone, Default)]
pub struct AdminEventRow {
    pub at: Time,
    pub event: String,
    pub outcome: String,
    pub detail: String,
}

/// What an action did, confirmed on the user page (`?done=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminDone {
    Disabled,
    Enabled,
    RoleAdded,
    RoleRemoved,
    SessionsEnded,
    KeyRevoked,
    TotpOff,
    ResetSent,
}

impl AdminDone {
    /// The action's form value (`action=`) and the `done` query value.
    pub fn name(self) -> &'static str {
        match self {
            AdminDone::Disabled => "disable",
            AdminDone::Enabled => "enable",
            AdminDone::RoleAdded => "role_add",
            AdminDone::RoleRemoved => "role_remove",
            AdminDone::SessionsEnded => "sessions_end",
            AdminDone::KeyRevoked => "key_revoke",
            AdminDone::TotpOff => "totp_off",
            AdminDone::ResetSent => "reset_send",
        }
    }

    pub fn from_name(v: &str) -> Option<Self> {
        [
            AdminDone::Disabled,
            AdminDone::Enabled,
            AdminDone::RoleAdded,
            AdminDone::RoleRemoved,
            AdminDone::SessionsEnded,
            AdminDone::KeyRevoked,
            AdminDone::TotpOff,
            AdminDone::ResetSent,
        ]
        .into_iter()
        .find(|d| d.name() == v)
    }

    pub fn text(self) -> &'static str {
        match self {
            AdminDone::Disabled => {
                "The account is disabled: its sessions, tokens and API keys stopped working at once."
            }
            AdminDone::Enabled => "The account is enabled again. The user signs in anew.",
            AdminDone::RoleAdded => "Role added: the user's next token carries it.",
            AdminDone::RoleRemoved => {
                "Role removed: the user's sessions and tokens ended, so no token still carries it."
            }
            AdminDone::SessionsEnded => {
                "Every session of the user ended; their access tokens are refused from now on."
            }
            AdminDone::KeyRevoked => "API key revoked on every gateway.",
            AdminDone::TotpOff => {
                "Two-step verification is off; the user's recovery codes are void."
            }
            AdminDone::ResetSent => "A password-reset link is on its way to the user.",
        }
    }
}

/// Why the console is not shown to this signed-in user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminDenied {
    /// Lacks `admin_console.role`.
    NotAdmin,
    /// `admin_console.require_mfa`, and the session signed in without a
    /// second factor.
    NeedsSecondFactor,
}

impl AdminDenied {
    pub fn title(&self) -> &'static str {
        match self {
            AdminDenied::NotAdmin => "Not allowed",
            AdminDenied::NeedsSecondFactor => "Second factor needed",
        }
    }
}

#[derive(Template)]
#[template(path = "admin_search.html", config = "src/portal/askama.toml")]
struct AdminSearchHtml<'a> {
    frame: &'a Frame<'a>,
    title: &'a str,
    page: &'a AdminSearchPage<'a>,
}

impl View for AdminSearchPage<'_> {
    fn render_in(&self, frame: &Frame<'_>) -> askama::Result<String> {
        AdminSearchHtml {
            frame,
            title: "Users",
            page: self,
        }
        .render()
    }
}

#[derive(Template)]
#[template(path = "admin_user.html", config = "src/portal/askama.toml")]
struct AdminUserHtml<'a> {
    frame: &'a Frame<'a>,
    title: &'a str,
    page: &'a AdminUserPage<'a>,
}

impl View for AdminUserPage<'_> {
    fn render_in(&self, frame: &Frame<'_>) -> askama::Result<String> {
        AdminUserHtml {
            frame,
            title: &self.email,
            page: self,
        }
        .render()
    }
}

#[derive(Template)]
#[template(path = "admin_denied.html", config = "src/portal/askama.toml")]
struct AdminDeniedHtml<'a> {
    frame: &'a Frame<'a>,
    title: &'a str,
    page: &'a AdminDenied,
}

impl View for AdminDenied {
    fn render_in(&self, frame: &Frame<'_>) -> askama::Result<String> {
        AdminDeniedHtml {
            frame,
            title: self.title(),
            page: self,
        }
        .render()
    }
}
