//! User administration shared by the `portcullis user …` CLI (directly on
//! the store) and the admin listener's API (when the gateway holds the db).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::service::valid_role;
use super::{email, password, AuthService};
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
        let internal = |e: StoreError| AdminError::Internal(e.to_string());
        let event = |kind: &str, user: Uuid| {
            self.audit_event(ctx, kind, "success", Some(user))
                .actor(Some(who.clone()))
        };
        // Admin changes name the user by email and apply to the current
        // record, so they compose with concurrent user requests.
        let change = |raw: String, change: UserChange| async move {
            let user = self.user_by_email(&raw).await?;
            let ev = match &change {
                UserChange::Disable => event("user.disabled", user.id),
                UserChange::AddRole(r) => {
                    event("user.roles_changed", user.id).with("added", r.clone())
                }
                UserChange::RemoveRole(r) => {
                    event("user.roles_changed", user.id).with("removed", r.clone())
                }
                _ => event("user.changed", user.id),
            };
            match self.change_user_with(user.id, change, ev.into()).await {
                Ok(u) => Ok(crate::wire::UserView::json(&u)),
                Err(StoreError::Conflict) => Err(AdminError::NoSuchUser),
                Err(e) => Err(internal(e)),
            }
        };
        Ok(match cmd {
            AdminCommand::Add {
                email: raw,
                roles,
                password: pw,
            } => {
                let e = email::normalize(&raw)
                    .ok_or_else(|| AdminError::Invalid("invalid email".into()))?;
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
                let ev = event("user.created", user.id).with("roles", user.roles.clone());
                match self
                    .store
                    .create_user_with(user.clone(), self.effects(ev.into()))
                    .await
                {
                    Ok(()) => {}
                    Err(StoreError::Conflict) => return Err(AdminError::Exists),
                    Err(e) => return Err(internal(e)),
                }
                crate::wire::UserView::json(&user)
            }
            AdminCommand::List {
                after,
                limit: Some(limit),
            } => {
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
                serde_json::json!({ "users": users, "next": page.next })
            }
            AdminCommand::List { .. } => {
                let users = self.store.list_users().await.map_err(internal)?;
                Value::Array(users.iter().map(listed).collect())
            }
            AdminCommand::Disable { email: raw } => change(raw, UserChange::Disable).await?,
            AdminCommand::Enable { email: raw } => change(raw, UserChange::Enable).await?,
            AdminCommand::TotpOff { email: raw } => change(raw, UserChange::AdminTotpOff).await?,
            AdminCommand::SessionsEnd { email: raw } => {
                let user = self.user_by_email(&raw).await?;
                let ended = self
                    .end_sessions(user.id, crate::store::Sessions::All, true)
                    .await
                    .map_err(|e| AdminError::Internal(e.to_string()))?;
                serde_json::json!({ "id": user.id.to_string(), "sessions_ended": ended })
            }
            AdminCommand::ResetSend { email: raw } => {
                let user = self.user_by_email(&raw).await?;
                if user.disabled {
                    return Err(AdminError::Invalid(
                        "the account is disabled: enable it first".into(),
                    ));
                }
                match self.reset_request_inner(&user.email).await {
                    Ok(()) => serde_json::json!({ "id": user.id.to_string(), "sent": true }),
                    Err(super::AccountError::Throttled { .. }) => {
                        return Err(AdminError::Invalid(
                            "too many reset mails for this address: try again later".into(),
                        ))
                    }
                    Err(e) => return Err(AdminError::Internal(format!("{e:?}"))),
                }
            }
            AdminCommand::RoleAdd { email: raw, role } => {
                if !valid_role(&role) {
                    return Err(AdminError::Invalid(format!("invalid role '{role}'")));
                }
                change(raw, UserChange::AddRole(role)).await?
            }
            // Tokens carry roles: the removal ends sessions and tokens.
            AdminCommand::RoleRemove { email: raw, role } => {
                change(raw, UserChange::RemoveRole(role)).await?
            }
            AdminCommand::KeyList { email: raw } => {
                let user = self.user_by_email(&raw).await?;
                let keys: Vec<Value> = user
                    .api_keys
                    .iter()
                    .map(|k| serde_json::to_value(ApiKeyView::new(k, k.last_used_at)))
                    .collect::<Result<_, _>>()
                    .map_err(|e| AdminError::Internal(e.to_string()))?;
                serde_json::json!({ "id": user.id.to_string(), "api_keys": keys })
            }
            AdminCommand::KeyRevoke { email: raw, id } => {
                let id = Uuid::parse_str(id.trim())
                    .map_err(|_| AdminError::Invalid("invalid key id".into()))?;
                let user = self.user_by_email(&raw).await?;
                let ev = event("api_key.revoked", user.id).with("api_key_id", id.to_string());
                match self
                    .change_user_with(user.id, UserChange::RemoveApiKey(id), ev.into())
                    .await
                {
                    Ok(_) => {
                        serde_json::json!({ "id": user.id.to_string(), "revoked": id.to_string() })
                    }
                    Err(StoreError::Conflict) => {
                        return Err(AdminError::Invalid(
                            "the user has no API key with that id".into(),
                        ))
                    }
                    Err(e) => return Err(internal(e)),
                }
            }
        })
    }
}
