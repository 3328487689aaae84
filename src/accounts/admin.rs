//! User administration shared by the `portcullis user …` CLI (directly on
//! the store) and the admin listener's API (when the gateway holds the db).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::service::valid_role;
use super::{email, password, AuthService};
use crate::audit::AuditEvent;
use crate::store::{Record, RecordKind, StoreError, User, UserChange};
use crate::wire::ApiKeyView;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminCommand {
    Add {
        email: String,
        roles: Vec<String>,
        password: Option<String>,
    },
    /// Every user, as an array; with `limit`, one page of them in store
    /// order, `{"users": […], "next": cursor}`, continued with `after` set
    /// to that cursor (`next` is null on the last page).
    List {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    Disable {
        email: String,
    },
    /// Enable a disabled account again.
    Enable {
        email: String,
    },
    RoleAdd {
        email: String,
        role: String,
    },
    RoleRemove {
        email: String,
        role: String,
    },
    /// A user's API keys (never the keys themselves).
    KeyList {
        email: String,
    },
    /// Revoke one of a user's API keys, on every gateway at once.
    KeyRevoke {
        email: String,
        id: String,
    },
    /// End every session of a user and void their access tokens.
    SessionsEnd {
        email: String,
    },
    /// Turn a user's TOTP off (and drop the recovery codes).
    TotpOff {
        email: String,
    },
    /// Mail the user a password-reset link.
    ResetSend {
        email: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("no user with that email")]
    NoSuchUser,
    #[error("a user with that email already exists")]
    Exists,
    #[error("internal error: {0}")]
    Internal(String),
}

impl AdminCommand {
    fn name(&self) -> &'static str {
        match self {
            AdminCommand::Add { .. } => "user_add",
            AdminCommand::List { .. } => "user_list",
            AdminCommand::Disable { .. } => "user_disable",
            AdminCommand::RoleAdd { .. } => "role_add",
            AdminCommand::RoleRemove { .. } => "role_remove",
            AdminCommand::KeyList { .. } => "api_key_list",
            AdminCommand::KeyRevoke { .. } => "api_key_revoke",
            AdminCommand::Enable { .. } => "user_enable",
            AdminCommand::SessionsEnd { .. } => "sessions_end",
            AdminCommand::TotpOff { .. } => "totp_off",
            AdminCommand::ResetSend { .. } => "reset_send",
        }
    }
}

impl AdminError {
    fn outcome(&self) -> &'static str {
        match self {
            AdminError::Invalid(_) => "invalid",
            AdminError::NoSuchUser => "not_found",
            AdminError::Exists => "exists",
            AdminError::Internal(_) => "error",
        }
    }
}

/// The most users one page of `List` holds.
const MAX_PAGE: usize = 1000;

/// A store failure, as an admin command reports it.
fn internal(e: StoreError) -> AdminError {
    AdminError::Internal(e.to_string())
}

/// A user as the admin listing shows it.
fn listed(u: &User) -> Value {
    let mut v = crate::wire::UserView::json(u);
    v["disabled"] = Value::Bool(u.disabled);
    v
}

impl AuthService {
    /// Run one admin command and audit it; the result is JSON for both
    /// front ends.
    pub async fn admin(
        &self,
        cmd: AdminCommand,
        actor: &crate::audit::AuditCtx<'_>,
    ) -> Result<Value, AdminError> {
        // The CLI and the admin listener: the actor is the front end.
        let who = match actor.user_agent {
            "portcullis cli" => "cli",
            _ => "admin_api",
        };
        self.admin_as(cmd, actor, who.to_string(), None).await
    }

    /// [`AuthService::admin`] run by a signed-in administrator (the
    /// console): every stored audit event names them as its actor.
    pub async fn admin_by(
        &self,
        cmd: AdminCommand,
        actor: &crate::audit::AuditCtx<'_>,
        admin: crate::audit::AdminActor<'_>,
    ) -> Result<Value, AdminError> {
        self.admin_as(cmd, actor, admin.id.to_string(), Some(admin))
            .await
    }

    /// [`AuthService::admin`] on behalf of `who` (an admin's user id, or
    /// the front end), named as the actor of every stored audit event.
    async fn admin_as(
        &self,
        cmd: AdminCommand,
        actor: &crate::audit::AuditCtx<'_>,
        who: String,
        admin: Option<crate::audit::AdminActor<'_>>,
    ) -> Result<Value, AdminError> {
        let event = format!("admin_{}", cmd.name());
        let result = self.admin_inner(cmd, actor, who).await;
        let (outcome, user) = match &result {
            Ok(v) => ("success", v["id"].as_str()),
            Err(e) => (e.outcome(), None),
        };
        match admin {
            Some(a) => crate::audit::admin_event(actor, &event, outcome, user, &a),
            None => crate::audit::event(actor, &event, outcome, user),
        }
        result
    }

    /// Users whose email starts with `prefix`, in email order, after
    /// `after` (the last email of the previous page): the console's search,
    /// over the store's email index.
    pub async fn admin_search(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<User>, AdminError> {
        self.store
            .search_users_by_email(prefix.trim(), after, limit.clamp(1, MAX_PAGE))
            .await
            .map_err(|e| AdminError::Internal(e.to_string()))
    }

    /// One user and their sessions, for the console's user page.
    pub async fn admin_user(
        &self,
        id: Uuid,
    ) -> Result<(User, Vec<crate::store::SessionRecord>), AdminError> {
        let internal = |e: StoreError| AdminError::Internal(e.to_string());
        let user = self
            .store
            .find_user(id)
            .await
            .map_err(internal)?
            .ok_or(AdminError::NoSuchUser)?;
        let mut sessions = self.store.list_sessions(id).await.map_err(internal)?;
        sessions.sort_by_key(|s| std::cmp::Reverse(s.last_used_at));
        Ok((user, sessions))
    }

    /// The current record of the user an admin command names by email.
    async fn user_by_email(&self, raw: &str) -> Result<User, AdminError> {
        let e = email::normalize(raw).ok_or_else(|| AdminError::Invalid("invalid email".into()))?;
        self.store
            .find_user_by_email(&e)
            .await
            .map_err(|e| AdminError::Internal(e.to_string()))?
            .ok_or(AdminError::NoSuchUser)
    }

    async fn admin_inner(
        &self,
        cmd: AdminCommand,
        ctx: &crate::audit::AuditCtx<'_>,
        who: String,
    ) -> Result<Value, AdminError> {
        Ok(match cmd {
            AdminCommand::Add {
                email: raw,
                roles,
                password: pw,
            } => self.admin_add(ctx, &who, raw, roles, pw).await?,
            AdminCommand::List { after, limit } => self.admin_list(after, limit).await?,
            AdminCommand::Disable { email: raw } => {
                self.admin_change(ctx, &who, raw, UserChange::Disable)
                    .await?
            }
            AdminCommand::Enable { email: raw } => {
                self.admin_change(ctx, &who, raw, UserChange::Enable)
                    .await?
            }
            AdminCommand::TotpOff { email: raw } => {
                self.admin_change(ctx, &who, raw, UserChange::AdminTotpOff)
                    .await?
            }
            AdminCommand::SessionsEnd { email: raw } => {
                self.admin_sessions_end(ctx, &who, raw).await?
            }
            AdminCommand::ResetSend { email: raw } => self.admin_reset_send(ctx, &who, raw).await?,
            AdminCommand::RoleAdd { email: raw, role } => {
                if !valid_role(&role) {
                    return Err(AdminError::Invalid(format!("invalid role '{role}'")));
                }
                self.admin_change(ctx, &who, raw, UserChange::AddRole(role))
                    .await?
            }
            // Tokens carry roles: the removal ends sessions and tokens.
            AdminCommand::RoleRemove { email: raw, role } => {
                self.admin_change(ctx, &who, raw, UserChange::RemoveRole(role))
                    .await?
            }
            AdminCommand::KeyList { email: raw } => self.admin_key_list(raw).await?,
            AdminCommand::KeyRevoke { email: raw, id } => {
                self.admin_key_revoke(ctx, &who, raw, id).await?
            }
        })
    }

    /// The stored audit event of an admin command on `user`, naming `who`
    /// as its actor.
    fn admin_event(
        &self,
        ctx: &crate::audit::AuditCtx<'_>,
        who: &str,
        kind: &str,
        user: Uuid,
    ) -> AuditEvent {
        self.audit_event(ctx, kind, "success", Some(user))
            .actor(Some(who.to_string()))
    }

    /// `Add`: a verified account with the given roles; without a password
    /// it can only be entered through a reset.
    async fn admin_add(
        &self,
        ctx: &crate::audit::AuditCtx<'_>,
        who: &str,
        raw: String,
        roles: Vec<String>,
        pw: Option<String>,
    ) -> Result<Value, AdminError> {
        let e =
            email::normalize(&raw).ok_or_else(|| AdminError::Invalid("invalid email".into()))?;
        for r in &roles {
            if !valid_role(r) {
                return Err(AdminError::Invalid(format!("invalid role '{r}'")));
            }
        }
        // Without a password the account can only be entered through a reset.
        let pw = pw.unwrap_or_else(|| self.entropy.token(32));
        let problems = password::policy_problems(&pw, &e);
        if !problems.is_empty() {
            return Err(AdminError::Invalid(format!(
                "password {}",
                problems.join(", ")
            )));
        }
        let hash = self
            .hasher
            .hash(&pw)
            .await
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        let mut roles = roles;
        let mut seen = std::collections::HashSet::new();
        roles.retain(|r| seen.insert(r.clone()));
        let user = User {
            email_verified: true,
            roles,
            ..User::new(self.entropy.uuid(), e, hash, self.clock.now())
        };
        let ev = self
            .admin_event(ctx, who, "user.created", user.id)
            .with("roles", user.roles.clone());
        match self
            .store
            .create_user_with(user.clone(), self.effects(ev.into()))
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict) => return Err(AdminError::Exists),
            Err(e) => return Err(internal(e)),
        }
        Ok(crate::wire::UserView::json(&user))
    }

    /// `List`: every user as an array, or with `limit` one page of them.
    async fn admin_list(
        &self,
        after: Option<String>,
        limit: Option<usize>,
    ) -> Result<Value, AdminError> {
        let Some(limit) = limit else {
            let users = self.store.list_users().await.map_err(internal)?;
            return Ok(Value::Array(users.iter().map(listed).collect()));
        };
        let resumed = after.is_some();
        let page = self
            .store
            .export(RecordKind::Users, after, limit.clamp(1, MAX_PAGE))
            .await
            .map_err(|e| match e {
                StoreError::Corrupt(_) if resumed => {
                    AdminError::Invalid("invalid list cursor".into())
                }
                e => internal(e),
            })?;
        let users: Vec<Value> = page
            .records
            .iter()
            .filter_map(|r| match r {
                Record::User(u) => Some(listed(u)),
                _ => None,
            })
            .collect();
        Ok(serde_json::json!({ "users": users, "next": page.next }))
    }

    /// A change of the user named by email. Admin changes name the user by
    /// email and apply to the current record, so they compose with
    /// concurrent user requests.
    async fn admin_change(
        &self,
        ctx: &crate::audit::AuditCtx<'_>,
        who: &str,
        raw: String,
        change: UserChange,
    ) -> Result<Value, AdminError> {
        let user = self.user_by_email(&raw).await?;
        let event = |kind: &str| self.admin_event(ctx, who, kind, user.id);
        let ev = match &change {
            UserChange::Disable => event("user.disabled"),
            UserChange::Enable => event("user.enabled"),
            UserChange::AdminTotpOff => event("mfa.disabled").with("how", "admin"),
            UserChange::AddRole(r) => event("user.roles_changed").with("added", r.clone()),
            UserChange::RemoveRole(r) => event("user.roles_changed").with("removed", r.clone()),
            _ => event("user.changed"),
        };
        match self.change_user_with(user.id, change, ev.into()).await {
            Ok(u) => Ok(crate::wire::UserView::json(&u)),
            Err(StoreError::Conflict) => Err(AdminError::NoSuchUser),
            Err(e) => Err(internal(e)),
        }
    }

    /// `SessionsEnd`: every session of the user, and a token cutoff.
    async fn admin_sessions_end(
        &self,
        ctx: &crate::audit::AuditCtx<'_>,
        who: &str,
        raw: String,
    ) -> Result<Value, AdminError> {
        let user = self.user_by_email(&raw).await?;
        let ev = self
            .admin_event(ctx, who, "session.revoked", user.id)
            .with("all", true);
        let ended = self
            .end_sessions_with(user.id, crate::store::Sessions::All, true, ev.into())
            .await
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        Ok(serde_json::json!({ "id": user.id.to_string(), "sessions_ended": ended }))
    }

    /// `ResetSend`: a reset link mailed to an enabled account.
    async fn admin_reset_send(
        &self,
        ctx: &crate::audit::AuditCtx<'_>,
        who: &str,
        raw: String,
    ) -> Result<Value, AdminError> {
        let user = self.user_by_email(&raw).await?;
        if user.disabled {
            return Err(AdminError::Invalid(
                "the account is disabled: enable it first".into(),
            ));
        }
        match self
            .reset_request_inner(&user.email, ctx, Some(who.to_string()))
            .await
        {
            Ok(()) => Ok(serde_json::json!({ "id": user.id.to_string(), "sent": true })),
            Err(super::AccountError::Throttled { .. }) => Err(AdminError::Invalid(
                "too many reset mails for this address: try again later".into(),
            )),
            Err(e) => Err(AdminError::Internal(format!("{e:?}"))),
        }
    }

    /// `KeyList`: the user's API keys (never the keys themselves).
    async fn admin_key_list(&self, raw: String) -> Result<Value, AdminError> {
        let user = self.user_by_email(&raw).await?;
        let keys: Vec<Value> = user
            .api_keys
            .iter()
            .map(|k| serde_json::to_value(ApiKeyView::new(k, k.last_used_at)))
            .collect::<Result<_, _>>()
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        Ok(serde_json::json!({ "id": user.id.to_string(), "api_keys": keys }))
    }

    /// `KeyRevoke`: one of the user's API keys, on every gateway at once.
    async fn admin_key_revoke(
        &self,
        ctx: &crate::audit::AuditCtx<'_>,
        who: &str,
        raw: String,
        id: String,
    ) -> Result<Value, AdminError> {
        let id =
            Uuid::parse_str(id.trim()).map_err(|_| AdminError::Invalid("invalid key id".into()))?;
        let user = self.user_by_email(&raw).await?;
        let ev = self
            .admin_event(ctx, who, "api_key.revoked", user.id)
            .with("api_key_id", id.to_string());
        match self
            .change_user_with(user.id, UserChange::RemoveApiKey(id), ev.into())
            .await
        {
            Ok(_) => {
                Ok(serde_json::json!({ "id": user.id.to_string(), "revoked": id.to_string() }))
            }
            Err(StoreError::Conflict) => Err(AdminError::Invalid(
                "the user has no API key with that id".into(),
            )),
            Err(e) => Err(internal(e)),
        }
    }
}
