//! The signed-in user's own pages under `/auth/ui/`: the sessions page
//! and what it posts (revoke a session, link or unlink an outside identity,
//! remove a passkey), re-authentication, and the passkey script's JSON
//! calls.

use serde_json::{json, Value};
use uuid::Uuid;

use super::{identity, reauth_form, shown, ApiResult, Page};
use crate::accounts::passkeys::{ceremony_id, field, passkey_name};
use crate::accounts::{AccountError, AuthService, Reauth};
use crate::browser::{self, CookieIdentity};
use crate::error::ApiError;
use crate::http::api::ApiResponse;
use crate::portal;

impl AuthService {
    async fn require_identity(&self, page: &mut Page<'_>) -> Option<CookieIdentity> {
        identity(self, page).await
    }

    pub(super) async fn sessions_page(&self, mut page: Page<'_>) -> ApiResult {
        let Some(id) = self.require_identity(&mut page).await else {
            return Ok(page.see_other(&browser::login_location("/auth/ui/sessions")));
        };
        let list = self.sessions(&id.claims).await?;
        let user = self.current_user(&id.claims).await?;
        let sessions = list
            .iter()
            .map(|s| portal::SessionRow {
                id: s.record.id.to_string(),
                user_agent: crate::useragent::describe(&s.record.user_agent),
                ip: s.record.ip.clone(),
                created: portal::Time::new(&crate::clock::rfc3339(s.record.created_at)),
                last_used: portal::Time::new(&crate::clock::rfc3339(s.record.last_used_at)),
                current: s.current,
            })
            .collect();
        let passkeys = user
            .passkeys
            .iter()
            .map(|p| portal::PasskeyRow {
                id: p.id.to_string(),
                name: p.name.clone(),
                created: portal::Time::new(&crate::clock::rfc3339(p.created_at)),
            })
            .collect();
        let cfg = self.cfg();
        let linked = self.identities(&id.claims).await?;
        let name_of = |pid: &str| {
            cfg.identity_providers
                .iter()
                .find(|p| p.id == pid)
                .map_or_else(|| pid.to_string(), |p| p.display_name.clone())
        };
        let identities = linked
            .iter()
            .map(|l| portal::IdentityRow {
                provider: l.provider.clone(),
                display_name: name_of(&l.provider),
                email: l.email.clone().unwrap_or_default(),
                linked: portal::Time::new(&crate::clock::rfc3339(l.linked_at)),
            })
            .collect();
        let linkable = cfg
            .identity_providers
            .iter()
            .filter(|p| !linked.iter().any(|l| l.provider == p.id))
            .map(|p| portal::ProviderButton {
                href: String::new(),
                id: p.id.clone(),
                display_name: p.display_name.clone(),
            })
            .collect();
        let model = portal::SessionsPage {
            email: &user.email,
            amr: id.claims.amr.join(", "),
            notice: page
                .req
                .query_param("notice")
                .and_then(|n| portal::SessionsNotice::from_query(&n)),
            sessions,
            passkeys,
            // Adding a passkey needs a recent sign-in (CONTRACT 8.6): an
            // older session is sent to confirm it is the user first.
            can_add_passkey: self.require_recent(&id.claims).is_ok(),
            identities,
            linkable,
        };
        Ok(page.render(200, None, &model))
    }

    pub(super) async fn revoke_submit(&self, mut page: Page<'_>) -> ApiResult {
        let Some(id) = self.require_identity(&mut page).await else {
            return Ok(page.see_other(&browser::login_location("/auth/ui/sessions")));
        };
        let sid = page.field("id");
        match self.end_session(&id.claims, &sid, &page.req.client).await {
            Ok(_) | Err(AccountError::NotFound) => {
                Ok(page.see_other("/auth/ui/sessions?notice=session-ended"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Link an outside identity: after a recent sign-in (else the
    /// re-authentication first), off to the provider with the state cookie.
    pub(super) async fn identity_link_submit(&self, mut page: Page<'_>) -> ApiResult {
        let Some(id) = self.require_identity(&mut page).await else {
            return Ok(page.see_other(&browser::login_location("/auth/ui/sessions")));
        };
        let provider = page.field("provider");
        match self
            .start_linking(&id.claims, &provider, "/auth/ui/sessions".into())
            .await
        {
            Ok(Ok(start)) => {
                page.set_cookies
                    .push(crate::federation::state::state_cookie(&start.state_cookie));
                Ok(page.see_other(&start.authorize_url))
            }
            Ok(Err(code)) => Err(ApiError::from(code)),
            Err(AccountError::ReauthRequired) => Ok(page.see_other("/auth/ui/reauth")),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn identity_unlink_submit(&self, mut page: Page<'_>) -> ApiResult {
        let Some(id) = self.require_identity(&mut page).await else {
            return Ok(page.see_other(&browser::login_location("/auth/ui/sessions")));
        };
        let provider = page.field("provider");
        match self
            .unlink_identity(&id.claims, &provider, &page.req.client)
            .await
        {
            Ok(Ok(())) => Ok(page.see_other("/auth/ui/sessions")),
            Ok(Err(code)) => Err(ApiError::from(code)),
            Err(AccountError::ReauthRequired) => Ok(page.see_other("/auth/ui/reauth")),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn passkey_remove_submit(&self, mut page: Page<'_>) -> ApiResult {
        let Some(id) = self.require_identity(&mut page).await else {
            return Ok(page.see_other(&browser::login_location("/auth/ui/sessions")));
        };
        let user = Uuid::parse_str(&id.claims.sub).map_err(|_| ApiError::Unauthorized)?;
        match self
            .passkey_remove(user, &page.field("id"), &page.req.client)
            .await
        {
            Ok(()) | Err(AccountError::NotFound) => {
                Ok(page.see_other("/auth/ui/sessions?notice=passkey-removed"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The re-authentication form (CONTRACT 8.6) for the signed-in user.
    pub(super) async fn reauth_page(&self, mut page: Page<'_>) -> ApiResult {
        let Some(id) = self.require_identity(&mut page).await else {
            return Ok(page.see_other(&browser::login_location("/auth/ui/reauth")));
        };
        let user = self.current_user(&id.claims).await?;
        let totp = user.totp.as_ref().is_some_and(|t| t.confirmed);
        Ok(reauth_form(page, None, totp))
    }

    /// Re-authenticate (the operation behind `POST /auth/reauth`); the
    /// session's rotated refresh token becomes the cookie.
    pub(super) async fn reauth_submit(&self, mut page: Page<'_>) -> ApiResult {
        let Some(id) = self.require_identity(&mut page).await else {
            return Ok(page.see_other(&browser::login_location("/auth/ui/reauth")));
        };
        let code = page.field("code");
        let proof = Reauth {
            password: Some(page.field("password")),
            code: Some(code.trim().to_string()).filter(|c| !c.is_empty()),
        };
        match self.reauth(&id.claims, proof, &page.req.client).await {
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
    pub(super) async fn passkey_json(&self, mut page: Page<'_>) -> ApiResult {
        let presented = page.req.header("x-csrf-token").map(str::to_string);
        if !page.csrf_ok(presented.as_deref()) {
            return Err(ApiError::Forbidden);
        }
        let body = if page.req.body.is_empty() {
            json!({})
        } else {
            crate::http::body::json_object(page.req.header("content-type"), page.req.body)?
        };
        let resp = match page.req.path {
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
                    let caller = page.req.client.clone();
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
                    .and_then(|rd| browser::safe_redirect_for(rd, &self.cfg()))
                    .unwrap_or_else(|| "/".into());
                let ceremony = ceremony_id(&body)?;
                let credential = field(&body, "credential")?;
                let caller = page.req.client.clone();
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
