//! The admin console under `/auth/ui/admin/` (CONTRACT 8.5): a part of the
//! portal, so its pages share the portal's layout, CSP (no inline script)
//! and escaping, and every POST has already passed the portal's Origin and
//! CSRF double-submit check before it gets here.
//!
//! Only a signed-in user who holds `admin_console.role` (read from the
//! current record, not from the token) sees it, and with
//! `admin_console.require_mfa` only from a session that signed in with a
//! second factor; anyone else gets a 403 page without any user's data.
//!
//! Every action is one [`AdminCommand`] run through
//! [`AuthService::admin_by`]: the same operation `portcullis user …` and
//! `POST /admin/users` run, audited with the acting administrator's id and
//! email.

use http::Method;
use uuid::Uuid;

use super::{identity, ApiResult, Page};
use crate::accounts::admin::{AdminCommand, AdminError};
use crate::accounts::{AccountError, AuthService};
use crate::audit::AdminActor;
use crate::browser;
use crate::clock::rfc3339;
use crate::error::ApiError;
use crate::portal::{self, AdminDenied, AdminDone};
use crate::store::User;

/// Users per page of the search.
const SEARCH_PAGE: usize = 20;
/// The longest prefix searched for (an email's length).
const MAX_QUERY: usize = 254;

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn user_href(id: Uuid) -> String {
    format!("/auth/ui/admin/user?id={id}")
}

/// How many of a user's recent audit events the user page shows.
const CONSOLE_EVENTS: usize = 20;

fn time(t: i64) -> portal::Time {
    portal::Time::new(&rfc3339(t))
}

impl AuthService {
    /// Serve `/auth/ui/admin` and everything under it.
    pub(super) async fn console(&self, mut page: Page<'_>) -> ApiResult {
        let cfg = page.cfg.clone();
        if !cfg.admin_console.enabled {
            return Err(ApiError::NotFound);
        }
        let path = page.req.path.to_string();
        let get = *page.req.method == Method::GET || *page.req.method == Method::HEAD;
        let post = *page.req.method == Method::POST;
        let back = if get {
            match page.req.query {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            }
        } else {
            "/auth/ui/admin/".to_string()
        };
        let Some(id) = identity(self, &mut page).await else {
            return Ok(page.see_other(&browser::login_location(&back)));
        };
        let admin = match self.current_user(&id.claims).await {
            Ok(u) => u,
            Err(AccountError::NotSignedIn) => {
                return Ok(page.see_other(&browser::login_location(&back)))
            }
            Err(e) => return Err(e.into()),
        };
        if !admin.roles.iter().any(|r| *r == cfg.admin_console.role) {
            tracing::info!(user_id = %admin.id, "admin console refused: the role is missing");
            return Ok(page.render(403, None, &AdminDenied::NotAdmin));
        }
        if cfg.admin_console.require_mfa && !id.claims.has_local_second_factor() {
            return Ok(page.render(403, None, &AdminDenied::NeedsSecondFactor));
        }
        match path.as_str() {
            "/auth/ui/admin" | "/auth/ui/admin/" if get => self.console_search(page, &admin).await,
            "/auth/ui/admin/user" if get => {
                let done = page
                    .req
                    .query_param("done")
                    .and_then(|d| AdminDone::from_name(&d));
                let Some(uid) = page
                    .req
                    .query_param("id")
                    .and_then(|i| Uuid::parse_str(i.trim()).ok())
                else {
                    return self.console_missing(page, &admin).await;
                };
                self.console_user(page, &admin, uid, done, None).await
            }
            "/auth/ui/admin/action" if post => self.console_action(page, &admin).await,
            "/auth/ui/admin"
            | "/auth/ui/admin/"
            | "/auth/ui/admin/user"
            | "/auth/ui/admin/action" => Err(ApiError::MethodNotAllowed),
            _ => Err(ApiError::NotFound),
        }
    }

    /// The search page: one page of the users whose email starts with `q`.
    async fn console_search(&self, page: Page<'_>, admin: &User) -> ApiResult {
        let q: String = page
            .req
            .query_param("q")
            .unwrap_or_default()
            .trim()
            .chars()
            .take(MAX_QUERY)
            .collect();
        let after = page.req.query_param("after").filter(|a| !a.is_empty());
        let mut users = self
            .admin_search(&q, after.as_deref(), SEARCH_PAGE + 1)
            .await
            .map_err(admin_fault)?;
        let more = users.len() > SEARCH_PAGE;
        users.truncate(SEARCH_PAGE);
        let next_href = match users.last() {
            Some(last) if more => Some(format!(
                "/auth/ui/admin/?q={}&after={}",
                enc(&q),
                enc(&last.email)
            )),
            _ => None,
        };
        let model = portal::AdminSearchPage {
            admin_email: &admin.email,
            query: &q,
            users: users
                .iter()
                .map(|u| portal::AdminUserRow {
                    href: user_href(u.id),
                    email: u.email.clone(),
                    roles: u.roles.join(", "),
                    disabled: u.disabled,
                    totp: u.totp.as_ref().is_some_and(|t| t.confirmed),
                })
                .collect(),
            next_href,
        };
        Ok(page.render(200, None, &model))
    }

    /// A user page for an id that names no user.
    async fn console_missing(&self, page: Page<'_>, admin: &User) -> ApiResult {
        let model = portal::AdminSearchPage {
            admin_email: &admin.email,
            ..Default::default()
        };
        Ok(page.render(404, Some("No such user."), &model))
    }

    /// One user's page; `alert` is a refused action's status and message.
    async fn console_user(
        &self,
        page: Page<'_>,
        admin: &User,
        uid: Uuid,
        done: Option<AdminDone>,
        alert: Option<(u16, String)>,
    ) -> ApiResult {
        let (user, sessions) = match self.admin_user(uid).await {
            Ok(found) => found,
            Err(AdminError::NoSuchUser) => return self.console_missing(page, admin).await,
            Err(e) => return Err(admin_fault(e)),
        };
        let identities = self.console_identities(&user).await?;
        let model = portal::AdminUserPage {
            admin_email: &admin.email,
            done,
            id: user.id.to_string(),
            email: user.email.clone(),
            username: user.username.clone().unwrap_or_default(),
            created: time(user.created_at),
            disabled: user.disabled,
            email_verified: user.email_verified,
            roles: user.roles.clone(),
            sessions: sessions
                .iter()
                .map(|s| portal::AdminSessionRow {
                    browser: crate::useragent::describe(&s.user_agent),
                    user_agent: s.user_agent.clone(),
                    ip: s.ip.clone(),
                    created: time(s.created_at),
                    last_used: time(s.last_used_at),
                    amr: if s.amr.is_empty() {
                        "pwd".into()
                    } else {
                        s.amr.join(", ")
                    },
                })
                .collect(),
            api_keys: user
                .api_keys
                .iter()
                .map(|k| portal::AdminKeyRow {
                    id: k.id.to_string(),
                    name: k.name.clone(),
                    scopes: k.scopes.join(", "),
                    created: time(k.created_at),
                    expires: k.expires_at.map(time),
                    last_used: k.last_used_at.map(time),
                })
                .collect(),
            passkeys: user
                .passkeys
                .iter()
                .map(|p| portal::PasskeyRow {
                    id: p.id.to_string(),
                    name: p.name.clone(),
                    created: time(p.created_at),
                })
                .collect(),
            identities,
            totp: user.totp.as_ref().is_some_and(|t| t.confirmed),
            events: self.console_events(&user).await,
        };
        let (status, text) = match &alert {
            Some((s, t)) => (*s, Some(t.as_str())),
            None => (200, None),
        };
        Ok(page.render(status, text, &model))
    }

    /// The user's linked identities for their page (CONTRACT 8.5).
    async fn console_identities(
        &self,
        user: &User,
    ) -> Result<Vec<portal::AdminIdentityRow>, ApiError> {
        let cfg = self.cfg();
        let linked = self
            .store
            .list_identities(user.id)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(linked
            .into_iter()
            .map(|l| portal::AdminIdentityRow {
                provider: cfg
                    .identity_providers
                    .iter()
                    .find(|p| p.id == l.provider)
                    .map_or_else(|| l.provider.clone(), |p| p.display_name.clone()),
                subject: l.subject,
                email: l.email.unwrap_or_default(),
                linked: time(l.linked_at),
            })
            .collect())
    }

    /// The user's recent audit events for their page; `None` while audit
    /// events go only to the log. The one place to switch to the stored
    /// audit trail (`audit_for_user`) once it exists.
    async fn console_events(&self, user: &User) -> Option<Vec<portal::AdminEventRow>> {
        if !self.cfg().log.audit_chain {
            return None;
        }
        let records = match self.store.audit_for_user(user.id, CONSOLE_EVENTS).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(cause = %e, "admin console: cannot read the user's audit events");
                return None;
            }
        };
        Some(
            records
                .into_iter()
                .map(|r| {
                    let e = r.event;
                    let mut detail = match &e.actor {
                        Some(a) => format!("by {a}"),
                        None => String::new(),
                    };
                    if e.data.as_object().is_some_and(|o| !o.is_empty()) {
                        if !detail.is_empty() {
                            detail.push_str("; ");
                        }
                        detail.push_str(&e.data.to_string());
                    }
                    portal::AdminEventRow {
                        at: time(e.at),
                        event: e.kind,
                        outcome: e.outcome,
                        detail,
                    }
                })
                .collect(),
        )
    }

    /// Run one action of the user page, then show the user page with its
    /// result (a redirect on success, the refusal's message on the page).
    async fn console_action(&self, page: Page<'_>, admin: &User) -> ApiResult {
        let Ok(uid) = Uuid::parse_str(page.field("id").trim()) else {
            return self.console_missing(page, admin).await;
        };
        let user = match self.admin_user(uid).await {
            Ok((u, _)) => u,
            Err(AdminError::NoSuchUser) => return self.console_missing(page, admin).await,
            Err(e) => return Err(admin_fault(e)),
        };
        let refuse = |m: &str| Some((400, m.to_string()));
        let Some(action) = AdminDone::from_name(&page.field("action")) else {
            let alert = refuse("Unknown action.");
            return self.console_user(page, admin, uid, None, alert).await;
        };
        let email = user.email.clone();
        let role = page.field("role").trim().to_string();
        // Locking oneself out of the console is done from the CLI, knowingly.
        let own_lockout = user.id == admin.id
            && (action == AdminDone::Disabled
                || (action == AdminDone::RoleRemoved && role == page.cfg.admin_console.role));
        if own_lockout {
            let alert = refuse("You cannot lock yourself out of the console here; use the CLI.");
            return self.console_user(page, admin, uid, None, alert).await;
        }
        let cmd = match action {
            AdminDone::Disabled => AdminCommand::Disable { email },
            AdminDone::Enabled => AdminCommand::Enable { email },
            AdminDone::RoleAdded => AdminCommand::RoleAdd { email, role },
            AdminDone::RoleRemoved => AdminCommand::RoleRemove { email, role },
            AdminDone::SessionsEnded => AdminCommand::SessionsEnd { email },
            AdminDone::KeyRevoked => AdminCommand::KeyRevoke {
                email,
                id: page.field("key"),
            },
            AdminDone::TotpOff => AdminCommand::TotpOff { email },
            AdminDone::ResetSent => AdminCommand::ResetSend { email },
        };
        let caller = page.req.client.clone();
        let admin_id = admin.id.to_string();
        let actor = AdminActor {
            id: &admin_id,
            email: &admin.email,
        };
        match self.admin_by(cmd, &caller.audit(), actor).await {
            Ok(_) => Ok(page.see_other(&format!("{}&done={}", user_href(uid), action.name()))),
            Err(AdminError::Invalid(m)) => {
                let alert = Some((400, upper_first(&m)));
                self.console_user(page, admin, uid, None, alert).await
            }
            Err(AdminError::NoSuchUser) => self.console_missing(page, admin).await,
            Err(AdminError::Exists) => {
                let alert = Some((409, "A user with that email already exists.".into()));
                self.console_user(page, admin, uid, None, alert).await
            }
            Err(e) => Err(admin_fault(e)),
        }
    }
}

/// A failure of the store behind an admin operation.
fn admin_fault(e: AdminError) -> ApiError {
    ApiError::internal(format!("admin console: {e}"))
}

/// "invalid role 'x'" → "Invalid role 'x'."
fn upper_first(m: &str) -> String {
    let mut c = m.chars();
    let mut s: String = match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    };
    if !s.ends_with('.') && !s.ends_with(':') {
        s.push('.');
    }
    s
}
