//! The `/auth/*` and `/.well-known/*` endpoints (CONTRACT section 3): one
//! function per endpoint, dispatched by method and path. Every failure is an
//! [`ApiError`]. Every state change is one store operation applied to the
//! current record (never a copy read earlier) and is durable when the store
//! call returns, so before the response is written.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::refresh::RefreshKeys;
use super::throttle::Reservation;
use super::tokens::{opaque_token, token_hash, AccessClaims, TokenRejection};
use super::{email, password, AuthService};
use crate::api::{ApiRequest, ApiResponse};
use crate::audit::{self, AuditCtx};
use crate::error::ApiError;
use crate::mail;
use crate::store::{
    domain, OneTimeKind, OneTimeToken, Redeem, RefreshPolicy, Revocation, RotateOutcome,
    SessionRecord, Sessions, StoreError, User, UserChange,
};
use crate::wire;

type ApiResult = Result<ApiResponse, ApiError>;

/// Password reset requests answer no sooner than this, known account or not.
const RESET_FLOOR: Duration = Duration::from_millis(250);
const PER_ADDRESS_MAILS: u32 = 3;
const PER_ADDRESS_WINDOW: u64 = 900;

impl AuthService {
    /// Serve one local request.
    pub async fn handle(&self, req: ApiRequest) -> ApiResponse {
        let cfg = self.cfg();
        if let Some(r) = super::browser::preflight(&req, &cfg) {
            return r;
        }
        let mut resp = self.handle_inner(&req).await;
        super::browser::add_cors(&req, &cfg, &mut resp);
        resp
    }

    async fn handle_inner(&self, req: &ApiRequest) -> ApiResponse {
        match self.dispatch(req).await {
            Ok(r) => r,
            Err(e @ ApiError::MethodNotAllowed) => {
                let r = e.into_response();
                match crate::openapi::allow(&req.path) {
                    Some(allow) => r.with_header("allow", allow),
                    None => r,
                }
            }
            Err(e) => e.into_response(),
        }
    }

    async fn dispatch(&self, req: &ApiRequest) -> ApiResult {
        let path = req.path.as_str();
        if path == "/.well-known/jwks.json" {
            return match req.method {
                Method::GET | Method::HEAD => Ok(ApiResponse::json(200, &self.tokens.jwks())),
                _ => Err(ApiError::MethodNotAllowed),
            };
        }
        if req.method == Method::POST && path.starts_with("/auth/") {
            self.ip_throttle(req).await?;
        }
        if path == "/auth/ui" || path.starts_with("/auth/ui/") {
            return self.portal(req).await;
        }
        let browser = self.cfg().browser.enabled;
        let m = &req.method;
        match path {
            "/auth/openapi.json" if *m == Method::GET || *m == Method::HEAD => {
                Ok(ApiResponse::json_bytes(200, crate::openapi::document()))
            }
            "/auth/register" if *m == Method::POST => self.register(req).await,
            "/auth/login" if *m == Method::POST => self.login(req).await,
            "/auth/refresh" if *m == Method::POST => self.refresh(req).await,
            "/auth/logout" if *m == Method::POST => self.logout(req).await,
            "/auth/logout-all" if *m == Method::POST => self.logout_all(req).await,
            "/auth/verify" if *m == Method::POST => self.introspect(req),
            "/auth/verify" if *m == Method::GET || *m == Method::HEAD => self.forward_auth(req),
            "/auth/email/verify" if *m == Method::POST => self.email_verify(req).await,
            "/auth/email/verify" if *m == Method::GET && browser => {
                Ok(portal_link(req, "/auth/ui/verify"))
            }
            "/auth/email/verify" if *m == Method::GET => Ok(confirm_page(
                "Confirm your email",
                "Confirm my email address",
                "/auth/email/verify",
                false,
            )),
            "/auth/email/resend" if *m == Method::POST => self.email_resend(req).await,
            "/auth/password/reset" if *m == Method::POST => self.reset_request(req).await,
            "/auth/password/reset" if *m == Method::GET && browser => {
                Ok(portal_link(req, "/auth/ui/reset"))
            }
            "/auth/password/reset" if *m == Method::GET => Ok(confirm_page(
                "Choose a new password",
                "Set password",
                "/auth/password/reset/confirm",
                true,
            )),
            "/auth/password/reset/confirm" if *m == Method::POST => self.reset_confirm(req).await,
            "/auth/password/change" if *m == Method::POST => self.password_change(req).await,
            "/auth/reauth" if *m == Method::POST => self.reauth(req).await,
            "/auth/me" if *m == Method::GET => self.me(req).await,
            "/auth/me" if *m == Method::PATCH => self.update_me(req).await,
            "/auth/sessions" if *m == Method::GET => self.sessions(req).await,
            p if p.starts_with("/auth/sessions/") && *m == Method::DELETE => {
                self.delete_session(req, &p["/auth/sessions/".len()..])
                    .await
            }
            "/auth/mfa/totp/enroll" if *m == Method::POST => self.totp_enroll(req).await,
            "/auth/mfa/totp/confirm" if *m == Method::POST => self.totp_confirm(req).await,
            "/auth/mfa/totp" if *m == Method::DELETE => self.totp_disable(req).await,
            "/auth/mfa/verify" if *m == Method::POST => self.mfa_verify(req).await,
            "/auth/api-keys" if *m == Method::POST => self.api_key_create(req).await,
            "/auth/api-keys" if *m == Method::GET => self.api_key_list(req).await,
            p if p.starts_with("/auth/api-keys/") && *m == Method::DELETE => {
                self.api_key_delete(req, &p["/auth/api-keys/".len()..])
                    .await
            }
            "/auth/register"
            | "/auth/login"
            | "/auth/refresh"
            | "/auth/logout"
            | "/auth/logout-all"
            | "/auth/verify"
            | "/auth/email/verify"
            | "/auth/email/resend"
            | "/auth/password/reset"
            | "/auth/password/reset/confirm"
            | "/auth/password/change"
            | "/auth/reauth"
            | "/auth/me"
            | "/auth/sessions"
            | "/auth/openapi.json"
            | "/auth/mfa/totp/enroll"
            | "/auth/mfa/totp/confirm"
            | "/auth/mfa/totp"
            | "/auth/mfa/verify"
            | "/auth/api-keys" => Err(ApiError::MethodNotAllowed),
            _ => Err(ApiError::NotFound),
        }
    }

    pub(super) fn audit_ctx<'a>(&self, req: &'a ApiRequest, ua: &'a str) -> AuditCtx<'a> {
        AuditCtx {
            ip: req.client_ip,
            user_agent: ua,
            request_id: &req.request_id,
        }
    }

    async fn ip_throttle(&self, req: &ApiRequest) -> Result<(), ApiError> {
        let limit = self.cfg().throttle.auth_per_minute;
        if limit == 0 {
            return Ok(());
        }
        match self
            .throttle
            .hit(
                &format!("ip:{}", req.ip_throttle_key(&self.cfg())),
                limit,
                60,
            )
            .await?
        {
            super::throttle::Verdict::Allowed => Ok(()),
            super::throttle::Verdict::Limited { retry_after } => {
                self.metrics.throttled_ip.inc();
                if let Some(ev) = event_for_path(&req.path) {
                    self.metrics.auth_event(ev, "throttled");
                }
                let ua = req.user_agent();
                audit::event(&self.audit_ctx(req, &ua), "throttled", "ip", None);
                Err(ApiError::TooManyRequests { retry_after })
            }
        }
    }

    pub(super) fn require_bearer(&self, req: &ApiRequest) -> Result<Arc<AccessClaims>, ApiError> {
        self.authenticate(&req.headers)
            .map_err(|_| ApiError::Unauthorized)
    }

    pub(super) async fn current_user(&self, claims: &AccessClaims) -> Result<User, ApiError> {
        let id = Uuid::parse_str(&claims.sub).map_err(|_| ApiError::Unauthorized)?;
        match self.store.find_user(id).await? {
            Some(u) if !u.disabled => Ok(u),
            _ => Err(ApiError::Unauthorized),
        }
    }

    /// Reserve a guess at `key`'s password before hashing (429 when the
    /// account is locked or its budget is in flight).
    pub(super) async fn reserve_guess(
        &self,
        key: &str,
        actx: &AuditCtx<'_>,
        event: &str,
        uid: Option<&str>,
    ) -> Result<Reservation, ApiError> {
        self.throttle
            .reserve(key, self.lockout())
            .await?
            .map_err(|retry_after| {
                self.metrics.throttled_account.inc();
                if event == "login" {
                    self.metrics.auth_event("login", "throttled");
                }
                audit::event(actx, event, "locked", uid);
                ApiError::TooManyRequests { retry_after }
            })
    }

    /// Settle a reserved guess that turned out wrong.
    /// Settle a reserved guess that turned out wrong. A failure that
    /// cannot be counted is not answered (503): the guess's outcome stays
    /// unknown to the guesser.
    pub(super) async fn guess_failed(
        &self,
        r: Reservation,
        actx: &AuditCtx<'_>,
        uid: Option<&str>,
    ) -> Result<(), ApiError> {
        if r.fail().await? {
            self.metrics.throttled_account.inc();
            audit::event(actx, "lockout", "locked", uid);
        }
        Ok(())
    }

    // ----- register

    pub(super) async fn register(&self, req: &ApiRequest) -> ApiResult {
        let body = json_body(req)?;
        let mut errs = FieldErrors::default();
        let raw_email = errs.string(&body, "email", true);
        let pw = errs.string(&body, "password", true);
        let confirm = errs.string(&body, "password_confirm", true);
        let username = errs.string(&body, "username", false);
        let email = raw_email.as_deref().and_then(|e| {
            let n = email::normalize(e);
            if n.is_none() {
                errs.add("email", "is not a valid email address");
            }
            n
        });
        // Checked even when the email is bad, so every problem is reported.
        if let Some(pw) = &pw {
            for p in password::policy_problems(pw, email.as_deref().unwrap_or("")) {
                errs.add("password", p);
            }
        }
        if let (Some(pw), Some(c)) = (&pw, &confirm) {
            if pw != c {
                errs.add("password_confirm", "does not match password");
            }
        }
        if let Some(u) = &username {
            if let Err(p) = check_username(u) {
                errs.add("username", p);
            }
        }
        let ua = req.user_agent();
        let actx = self.audit_ctx(req, &ua);
        if let Err(e) = errs.finish() {
            self.metrics.auth_event("register", "failure");
            audit::event(&actx, "register", "invalid", None);
            return Err(e);
        }
        let (email, pw) = (email.unwrap_or_default(), pw.unwrap_or_default());
        let hash = self.hasher.hash(&pw).await?;
        let now = self.clock.now();
        let user = User {
            username: username.filter(|u| !u.is_empty()),
            ..User::new(Uuid::new_v4(), email.clone(), hash, now)
        };
        match self.store.create_user(user.clone(), None).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                self.metrics.auth_event("register", "failure");
                if self.cfg().accounts.require_email_verification {
                    // Answer exactly as a new registration; tell the owner.
                    let base = self.cfg().mail.link_base_url.clone();
                    self.store
                        .enqueue_mail(mail::account_exists_mail(&base, &email, now))
                        .await?;
                    self.mail_wake.notify_one();
                    audit::event(&actx, "register", "existing_email", None);
                    return Ok(ApiResponse::json(
                        201,
                        &json!({ "user": AuthService::user_json(&user) }),
                    ));
                }
                audit::event(&actx, "register", "email_taken", None);
                return Err(ApiError::EmailTaken);
            }
            Err(e) => return Err(e.into()),
        }
        self.send_verification(&user).await?;
        self.metrics.auth_event("register", "success");
        audit::event(&actx, "register", "success", Some(&user.id.to_string()));
        Ok(ApiResponse::json(
            201,
            &json!({ "user": AuthService::user_json(&user) }),
        ))
    }

    async fn send_verification(&self, user: &User) -> Result<(), ApiError> {
        let token = opaque_token(32);
        let now = self.clock.now();
        let rec = OneTimeToken {
            kind: OneTimeKind::EmailVerify,
            user_id: user.id,
            email: user.email.clone(),
            password_version: user.password_version,
            expires_at: now + self.cfg().accounts.verify_token_ttl_secs as i64,
            issued_seq: 0,
        };
        let m = mail::verification_mail(&self.cfg().mail.link_base_url, &user.email, &token, now);
        self.store
            .issue_one_time(token_hash(&token), rec, Some(m))
            .await?;
        self.mail_wake.notify_one();
        Ok(())
    }

    // ----- login, refresh, logout

    pub(super) async fn login(&self, req: &ApiRequest) -> ApiResult {
        let body = json_body(req)?;
        let mut errs = FieldErrors::default();
        let raw_email = errs.string(&body, "email", true);
        let pw = errs.string(&body, "password", true);
        let device = errs.string(&body, "refresh_token", false);
        errs.finish()?;
        let (raw_email, pw) = (raw_email.unwrap_or_default(), pw.unwrap_or_default());
        let ua = req.user_agent();
        let actx = self.audit_ctx(req, &ua);
        let fail = |uid: Option<&str>| {
            self.metrics.auth_event("login", "failure");
            audit::event(&actx, "login", "failure", uid);
            ApiError::InvalidCredentials
        };
        // Over-long input is refused before any hashing.
        if pw.chars().count() > password::MAX_LEN {
            return Err(fail(None));
        }
        let normalized = email::normalize(&raw_email);
        // Guesses count per address whether or not an account exists, so a
        // lockout reveals nothing about which emails are registered.
        let mut guess_key = lock_key(normalized.as_deref().unwrap_or(&raw_email));
        let user = match &normalized {
            Some(e) => self.store.find_user_by_email(e).await?,
            None => None,
        };
        let uid = user.as_ref().map(|u| u.id.to_string());
        // A device holding a live refresh token of this account is spared
        // the account lock, but its own guesses are bounded all the same.
        if let (Some(u), Some(t)) = (&user, device.as_deref()) {
            if let Some(s) = self.live_device(u, t).await? {
                guess_key = format!("{guess_key}#device:{}", s.id);
            }
        }
        let reservation = self
            .reserve_guess(&guess_key, &actx, "login", uid.as_deref())
            .await?;
        // A full hash queue answers 503; the reservation is given back.
        let ok = match &user {
            Some(u) => self.hasher.verify(&pw, &u.password_hash).await?,
            None => {
                self.hasher.verify_dummy(&pw).await?;
                false
            }
        };
        let user = match user {
            Some(u) if ok => u,
            _ => {
                self.guess_failed(reservation, &actx, uid.as_deref())
                    .await?;
                return Err(fail(uid.as_deref()));
            }
        };
        reservation.succeed().await?;
        if user.disabled {
            return Err(fail(uid.as_deref()));
        }
        let uid = user.id.to_string();
        if self.cfg().accounts.require_email_verification && !user.email_verified {
            self.metrics.auth_event("login", "failure");
            audit::event(&actx, "login", "email_not_verified", Some(&uid));
            return Err(ApiError::EmailNotVerified);
        }
        if user.totp.as_ref().is_some_and(|t| t.confirmed) {
            // No tokens yet: the second factor completes this login.
            let resp = self.mfa_challenge(&user).await?;
            audit::event(&actx, "login", "mfa_required", Some(&uid));
            return Ok(resp);
        }
        // The session starts only if the account is as it was when the
        // password was checked (not disabled, password not changed since).
        let resp = match self.start_session(&user, req, &["pwd"]).await {
            Err(ApiError::Conflict) => {
                audit::event(&actx, "login", "changed_meanwhile", Some(&uid));
                return Err(fail(Some(&uid)));
            }
            r => r?,
        };
        self.metrics.auth_event("login", "success");
        audit::event(&actx, "login", "success", Some(&uid));
        Ok(resp)
    }

    /// The session of a live refresh token of `user`: authentic, current
    /// generation, not expired or idle. A rotated token is no device.
    async fn live_device(
        &self,
        user: &User,
        token: &str,
    ) -> Result<Option<SessionRecord>, ApiError> {
        let Some(p) = RefreshKeys::parse(token) else {
            return Ok(None);
        };
        let Some(s) = self.store.find_session(p.sid).await? else {
            return Ok(None);
        };
        let live = self.refresh.is_authentic(&p, &s)
            && s.user_id == user.id
            && p.generation == s.generation
            && domain::session_is_live(&s, self.clock.now(), self.cfg().tokens.refresh_idle_secs);
        Ok(live.then_some(s))
    }

    /// Create a session for a user whose password was just checked; its
    /// tokens carry the user as the store has it now.
    pub(super) async fn start_session(
        &self,
        user: &User,
        req: &ApiRequest,
        amr: &[&str],
    ) -> ApiResult {
        let now = self.clock.now();
        let session = SessionRecord {
            id: Uuid::new_v4(),
            user_id: user.id,
            generation: 0,
            seed: RefreshKeys::new_seed(),
            rotated_at: now,
            created_at: now,
            last_used_at: now,
            expires_at: now + self.cfg().tokens.refresh_ttl_secs as i64,
            ip: req.client_ip.to_string(),
            user_agent: req.user_agent(),
            amr: amr.iter().map(|m| m.to_string()).collect(),
            // A sign-in: what every later access token of this session
            // carries as `auth_time`, refresh after refresh.
            auth_time: Some(now),
        };
        let current = self
            .store
            .create_session(session.clone(), user.password_version)
            .await?;
        self.token_response(&current, &session)
    }

    pub(super) fn token_response(&self, user: &User, session: &SessionRecord) -> ApiResult {
        // Sessions from before `amr` was recorded were password logins.
        let pwd = ["pwd".to_string()];
        let amr = if session.amr.is_empty() {
            &pwd[..]
        } else {
            &session.amr[..]
        };
        let (access, _) = self
            .tokens
            .issue_for_session(
                &user.id,
                &user.email,
                &user.roles,
                &session.id,
                amr,
                session.auth_time,
            )
            .map_err(ApiError::internal)?;
        Ok(ApiResponse::serialized(
            200,
            &wire::TokenResponse {
                access_token: access,
                refresh_token: self.refresh.token(session),
                token_type: "Bearer".into(),
                expires_in: self.tokens.access_ttl(),
                user: AuthService::user_view(user),
            },
        ))
    }

    pub(super) async fn refresh(&self, req: &ApiRequest) -> ApiResult {
        let body = json_body(req)?;
        let mut errs = FieldErrors::default();
        let presented = errs.string(&body, "refresh_token", true);
        errs.finish()?;
        let presented = presented.unwrap_or_default();
        let ua = req.user_agent();
        let actx = self.audit_ctx(req, &ua);
        let invalid = |uid: Option<&str>, why: &str| {
            self.metrics.auth_event("refresh", "failure");
            audit::event(&actx, "refresh", why, uid);
            ApiError::InvalidToken(401)
        };
        // An unauthentic token never touches the session it names.
        let Some(p) = RefreshKeys::parse(&presented) else {
            return Err(invalid(None, "invalid"));
        };
        match self.store.find_session(p.sid).await? {
            Some(s) if self.refresh.is_authentic(&p, &s) => {}
            _ => return Err(invalid(None, "invalid")),
        }
        let stamp = self.stamp();
        let outcome = self
            .store
            .rotate_refresh(
                p.sid,
                p.generation,
                RefreshPolicy {
                    now: stamp.now,
                    grace_secs: self.cfg().tokens.refresh_reuse_grace_secs,
                    idle_secs: self.cfg().tokens.refresh_idle_secs,
                    revoke_until: stamp.revoke_until,
                    reauth_at: None,
                },
            )
            .await?;
        let session = match outcome {
            RotateOutcome::Rotated(s) | RotateOutcome::Grace(s) => s,
            RotateOutcome::Reused(s, revoked) => {
                // Already ended and committed; its access tokens die now.
                self.revocations.apply(&revoked);
                let uid = s.user_id.to_string();
                audit::event(
                    &actx,
                    "refresh_reuse_detected",
                    "session_revoked",
                    Some(&uid),
                );
                return Err(invalid(Some(&uid), "reuse_detected"));
            }
            RotateOutcome::Invalid => return Err(invalid(None, "invalid")),
        };
        let uid = session.user_id.to_string();
        let user = match self.store.find_user(session.user_id).await? {
            Some(u) if !u.disabled => u,
            _ => {
                self.end_sessions(session.user_id, Sessions::One(session.id), false)
                    .await?;
                return Err(invalid(Some(&uid), "disabled"));
            }
        };
        let resp = self.token_response(&user, &session)?;
        self.metrics.auth_event("refresh", "success");
        audit::event(&actx, "refresh", "success", Some(&uid));
        Ok(resp)
    }

    pub(super) async fn logout(&self, req: &ApiRequest) -> ApiResult {
        let body = if req.body.is_empty() {
            Value::Object(Map::new())
        } else {
            json_body(req)?
        };
        let mut errs = FieldErrors::default();
        let refresh = errs.string(&body, "refresh_token", false);
        errs.finish()?;
        let mut uid = None;
        // Any authentic token of a session (even a rotated one) ends it.
        if let Some(p) = refresh.as_deref().and_then(RefreshKeys::parse) {
            if let Some(s) = self.store.find_session(p.sid).await? {
                if self.refresh.is_authentic(&p, &s) {
                    uid = Some(s.user_id.to_string());
                    self.end_sessions(s.user_id, Sessions::One(s.id), false)
                        .await?;
                }
            }
        }
        if let Ok(claims) = self.authenticate(&req.headers) {
            if let (Ok(jti), Ok(sub), Ok(sid)) = (
                Uuid::parse_str(&claims.jti),
                Uuid::parse_str(&claims.sub),
                Uuid::parse_str(&claims.sid),
            ) {
                let revoked = vec![Revocation::Token(jti, claims.exp)];
                self.store.revoke(revoked.clone()).await?;
                self.revocations.apply(&revoked);
                // The token's own session ends too, refresh token presented or not.
                self.end_sessions(sub, Sessions::One(sid), false).await?;
            }
            uid = Some(claims.sub.clone());
        }
        self.metrics.auth_event("logout", "success");
        let ua = req.user_agent();
        audit::event(
            &self.audit_ctx(req, &ua),
            "logout",
            "success",
            uid.as_deref(),
        );
        Ok(ApiResponse::empty(204))
    }

    pub(super) async fn logout_all(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let user = self.current_user(&claims).await?;
        self.end_sessions(user.id, Sessions::All, true).await?;
        self.metrics.auth_event("logout", "success");
        let ua = req.user_agent();
        audit::event(
            &self.audit_ctx(req, &ua),
            "logout_all",
            "success",
            Some(&claims.sub),
        );
        Ok(ApiResponse::empty(204))
    }

    // ----- verification (introspection and forward-auth)

    fn introspect(&self, req: &ApiRequest) -> ApiResult {
        let body = json_body(req)?;
        let mut errs = FieldErrors::default();
        let token = errs.string(&body, "token", true);
        errs.finish()?;
        let token = token.unwrap_or_default();
        let result = self.tokens.verify(&token).and_then(|c| {
            if self.revocations.is_revoked(&c) {
                Err(TokenRejection::Revoked)
            } else {
                Ok(c)
            }
        });
        self.metrics
            .token_checks()
            .count(result.as_ref().err().copied());
        match result {
            Ok(c) => Ok(ApiResponse::json(
                200,
                &json!({ "valid": true, "claims": *c }),
            )),
            Err(_) => Err(ApiError::InvalidToken(401)),
        }
    }

    fn forward_auth(&self, req: &ApiRequest) -> ApiResult {
        let c = self.require_bearer(req)?;
        let mut r = ApiResponse::json(200, &json!({ "valid": true }));
        for (k, v) in identity_headers(&c) {
            r.headers.push((k, v));
        }
        Ok(r)
    }

    // ----- email verification

    pub(super) async fn email_verify(&self, req: &ApiRequest) -> ApiResult {
        let body = json_body(req)?;
        let mut errs = FieldErrors::default();
        let token = errs.string(&body, "token", true);
        errs.finish()?;
        let ua = req.user_agent();
        let actx = self.audit_ctx(req, &ua);
        let invalid = || {
            self.metrics.auth_event("email_verify", "failure");
            audit::event(&actx, "email_verify", "invalid_token", None);
            ApiError::InvalidToken(400)
        };
        let token = token.unwrap_or_default();
        if token.is_empty() || token.len() > 512 {
            return Err(invalid());
        }
        // Consumed only if it is a good verification token: a reset token
        // posted here stays usable for its own purpose.
        let user = match self
            .store
            .redeem(token_hash(&token), Redeem::VerifyEmail, None, self.stamp())
            .await
        {
            Ok(changed) => changed.user,
            Err(StoreError::Conflict) => return Err(invalid()),
            Err(e) => return Err(e.into()),
        };
        self.metrics.auth_event("email_verify", "success");
        audit::event(&actx, "email_verify", "success", Some(&user.id.to_string()));
        Ok(ApiResponse::json(
            200,
            &json!({ "user": AuthService::user_json(&user) }),
        ))
    }

    async fn address_throttle(&self, kind: &str, email: &str) -> Result<(), ApiError> {
        match self
            .throttle
            .hit(
                &format!("{kind}:{email}"),
                PER_ADDRESS_MAILS,
                PER_ADDRESS_WINDOW,
            )
            .await?
        {
            super::throttle::Verdict::Allowed => Ok(()),
            super::throttle::Verdict::Limited { retry_after } => {
                self.metrics.throttled_account.inc();
                Err(ApiError::TooManyRequests { retry_after })
            }
        }
    }

    async fn email_resend(&self, req: &ApiRequest) -> ApiResult {
        let body = json_body(req)?;
        let mut errs = FieldErrors::default();
        let raw = errs.string(&body, "email", true);
        errs.finish()?;
        if let Some(email) = raw.as_deref().and_then(email::normalize) {
            self.address_throttle("resend", &email).await?;
            if let Some(user) = self.store.find_user_by_email(&email).await? {
                if !user.email_verified && !user.disabled {
                    self.send_verification(&user).await?;
                }
            }
        }
        let ua = req.user_agent();
        audit::event(&self.audit_ctx(req, &ua), "email_resend", "accepted", None);
        Ok(ApiResponse::json(202, &json!({ "status": "accepted" })))
    }

    // ----- password reset and change

    pub(super) async fn reset_request(&self, req: &ApiRequest) -> ApiResult {
        let started = Instant::now();
        let body = json_body(req)?;
        let mut errs = FieldErrors::default();
        let raw = errs.string(&body, "email", true);
        errs.finish()?;
        let result = self.reset_request_inner(raw.as_deref()).await;
        // Same timing whether or not the account exists.
        if let Some(rest) = RESET_FLOOR.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
        result?;
        let ua = req.user_agent();
        audit::event(
            &self.audit_ctx(req, &ua),
            "password_reset_requested",
            "accepted",
            None,
        );
        Ok(ApiResponse::json(202, &json!({ "status": "accepted" })))
    }

    async fn reset_request_inner(&self, raw: Option<&str>) -> Result<(), ApiError> {
        let Some(email) = raw.and_then(email::normalize) else {
            return Ok(());
        };
        self.address_throttle("reset", &email).await?;
        let Some(user) = self.store.find_user_by_email(&email).await? else {
            return Ok(());
        };
        if user.disabled {
            return Ok(());
        }
        let token = opaque_token(32);
        let now = self.clock.now();
        let ttl = self.cfg().accounts.reset_token_ttl_secs;
        let rec = OneTimeToken {
            kind: OneTimeKind::PasswordReset,
            user_id: user.id,
            email: user.email.clone(),
            password_version: user.password_version,
            expires_at: now + ttl as i64,
            issued_seq: 0,
        };
        let m = mail::reset_mail(
            &self.cfg().mail.link_base_url,
            &user.email,
            &token,
            ttl,
            now,
        );
        self.store
            .issue_one_time(token_hash(&token), rec, Some(m))
            .await?;
        self.mail_wake.notify_one();
        self.metrics.auth_event("password_reset", "success");
        Ok(())
    }

    pub(super) async fn reset_confirm(&self, req: &ApiRequest) -> ApiResult {
        let body = json_body(req)?;
        let mut errs = FieldErrors::default();
        let token = errs.string(&body, "token", true);
        let pw = errs.string(&body, "new_password", true);
        let confirm = errs.string(&body, "new_password_confirm", true);
        errs.finish()?;
        let (token, pw, confirm) = (
            token.unwrap_or_default(),
            pw.unwrap_or_default(),
            confirm.unwrap_or_default(),
        );
        let ua = req.user_agent();
        let actx = self.audit_ctx(req, &ua);
        let invalid = || {
            self.metrics.auth_event("password_reset", "failure");
            audit::event(&actx, "password_reset", "invalid_token", None);
            ApiError::InvalidToken(400)
        };
        if token.is_empty() || token.len() > 512 {
            return Err(invalid());
        }
        let hash = token_hash(&token);
        let redeem_check = Redeem::ResetPassword {
            hash: String::new(),
        };
        // Judge the token first (no hash is spent on a bad one, and a
        // policy failure does not burn a good one); the store judges it
        // again, atomically, when it is redeemed.
        let Some(rec) = self.store.find_one_time(&hash).await? else {
            return Err(invalid());
        };
        let Some(user) = self.store.find_user(rec.user_id).await? else {
            return Err(invalid());
        };
        let newest = self
            .store
            .latest_one_time_seq(user.id, OneTimeKind::PasswordReset)
            .await?;
        if domain::check_redeem(&rec, &redeem_check, &user, newest, self.clock.now()).is_err() {
            return Err(invalid());
        }
        check_new_password(&pw, &confirm, &user.email)?;
        let new_hash = self.hasher.hash(&pw).await?;
        let notice = mail::password_changed_mail(&user.email, self.clock.now());
        let changed = match self
            .store
            .redeem(
                hash,
                Redeem::ResetPassword { hash: new_hash },
                Some(notice),
                self.stamp(),
            )
            .await
        {
            Ok(c) => c,
            Err(StoreError::Conflict) => return Err(invalid()),
            Err(e) => return Err(e.into()),
        };
        self.revocations.apply(&changed.revoked);
        self.mail_wake.notify_one();
        // The password is reset: its account lock goes. Should that fail,
        // the lock runs out on its own; the reset itself stands.
        if let Err(e) = self.throttle.clear(&lock_key(&changed.user.email)).await {
            tracing::warn!(cause = %e, "lifting the lockout after a reset");
        }
        self.metrics.auth_event("password_reset", "success");
        audit::event(
            &actx,
            "password_reset",
            "success",
            Some(&changed.user.id.to_string()),
        );
        Ok(ApiResponse::empty(204))
    }

    pub(super) async fn password_change(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let user = self.current_user(&claims).await?;
        let body = json_body(req)?;
        let mut errs = FieldErrors::default();
        let current = errs.string(&body, "current_password", true);
        let pw = errs.string(&body, "new_password", true);
        let confirm = errs.string(&body, "new_password_confirm", true);
        errs.finish()?;
        let (current, pw, confirm) = (
            current.unwrap_or_default(),
            pw.unwrap_or_default(),
            confirm.unwrap_or_default(),
        );
        let ua = req.user_agent();
        let actx = self.audit_ctx(req, &ua);
        let wrong = || {
            audit::event(&actx, "password_change", "failure", Some(&claims.sub));
            ApiError::InvalidCredentials
        };
        if current.chars().count() > password::MAX_LEN {
            return Err(wrong());
        }
        // A stolen access token must not allow unlimited guessing of the
        // password: these guesses count toward the account lockout.
        let reservation = self
            .reserve_guess(
                &lock_key(&user.email),
                &actx,
                "password_change",
                Some(&claims.sub),
            )
            .await?;
        if !self.hasher.verify(&current, &user.password_hash).await? {
            self.guess_failed(reservation, &actx, Some(&claims.sub))
                .await?;
            return Err(wrong());
        }
        reservation.succeed().await?;
        check_new_password(&pw, &confirm, &user.email)?;
        let new_hash = self.hasher.hash(&pw).await?;
        let keep = Uuid::parse_str(&claims.sid).ok();
        let notice = mail::password_changed_mail(&user.email, self.clock.now());
        let change = UserChange::SetPassword {
            hash: new_hash,
            expect_version: user.password_version,
            keep,
        };
        match self.change_user(user.id, change, Some(notice)).await {
            Ok(_) => {}
            // The password (or the account) changed while this one was
            // checked: the password proved here is no longer current.
            Err(StoreError::Conflict) => return Err(wrong()),
            Err(e) => return Err(e.into()),
        }
        audit::event(&actx, "password_change", "success", Some(&claims.sub));
        Ok(ApiResponse::empty(204))
    }

    // ----- profile and sessions

    async fn me(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let user = self.current_user(&claims).await?;
        Ok(ApiResponse::json(
            200,
            &json!({ "user": AuthService::user_json(&user) }),
        ))
    }

    async fn update_me(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let user = self.current_user(&claims).await?;
        let body = json_body(req)?;
        let obj = body
            .as_object()
            .ok_or(ApiError::BadRequest("The body must be a JSON object."))?;
        let mut errs = FieldErrors::default();
        for k in obj.keys() {
            if k != "username" {
                errs.add(k, "cannot be changed here");
            }
        }
        let mut username = None;
        match obj.get("username") {
            None => {}
            Some(Value::Null) => username = Some(None),
            Some(Value::String(u)) => match check_username(u) {
                Ok(()) => username = Some((!u.is_empty()).then(|| u.clone())),
                Err(p) => errs.add("username", p),
            },
            Some(_) => errs.add("username", "must be a string or null"),
        }
        errs.finish()?;
        // Only the fields sent change, on the record as it is now.
        let user = match self
            .change_user(user.id, UserChange::Profile { username }, None)
            .await
        {
            Ok(u) if !u.disabled => u,
            Ok(_) | Err(StoreError::Conflict) => return Err(ApiError::Unauthorized),
            Err(e) => return Err(e.into()),
        };
        Ok(ApiResponse::json(
            200,
            &json!({ "user": AuthService::user_json(&user) }),
        ))
    }

    pub(super) async fn sessions(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let user = self.current_user(&claims).await?;
        let now = self.clock.now();
        let idle = self.cfg().tokens.refresh_idle_secs;
        let sessions = self
            .store
            .list_sessions(user.id)
            .await?
            .into_iter()
            .filter(|s| domain::session_is_live(s, now, idle))
            .map(|s| wire::SessionView {
                id: s.id.to_string(),
                created_at: crate::clock::rfc3339(s.created_at),
                last_used_at: crate::clock::rfc3339(s.last_used_at),
                current: s.id.to_string() == claims.sid,
                ip: s.ip,
                user_agent: s.user_agent,
            })
            .collect();
        Ok(ApiResponse::serialized(
            200,
            &wire::SessionList { sessions },
        ))
    }

    pub(super) async fn delete_session(&self, req: &ApiRequest, id: &str) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let user = self.current_user(&claims).await?;
        let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound)?;
        // Only one of the caller's own sessions can match.
        if self.end_sessions(user.id, Sessions::One(id), false).await? == 0 {
            return Err(ApiError::NotFound);
        }
        let ua = req.user_agent();
        audit::event(
            &self.audit_ctx(req, &ua),
            "session_revoked",
            "success",
            Some(&claims.sub),
        );
        Ok(ApiResponse::empty(204))
    }
}

/// An email link's page, on the portal: the same query (the token) on the
/// portal's page for it.
fn portal_link(req: &ApiRequest, to: &str) -> ApiResponse {
    let token = req.query_param("token").unwrap_or_default();
    let enc: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
    ApiResponse::empty(302).with_header("location", format!("{to}?token={enc}"))
}

/// Policy and confirmation checks for a new password.
fn check_new_password(pw: &str, confirm: &str, email: &str) -> Result<(), ApiError> {
    let mut errs = FieldErrors::default();
    for p in password::policy_problems(pw, email) {
        errs.add("new_password", p);
    }
    if pw != confirm {
        errs.add("new_password_confirm", "does not match new_password");
    }
    errs.finish()
}

/// The throttle key of an account's failed-login counter.
pub(super) fn lock_key(email: &str) -> String {
    let e: String = email.trim().to_lowercase().chars().take(254).collect();
    format!("lock:{e}")
}

pub use crate::proxy::headers::identity_headers;

fn event_for_path(path: &str) -> Option<&'static str> {
    Some(match path {
        "/auth/register" => "register",
        "/auth/login" | "/auth/mfa/verify" => "login",
        "/auth/refresh" => "refresh",
        "/auth/logout" | "/auth/logout-all" => "logout",
        "/auth/password/reset" | "/auth/password/reset/confirm" => "password_reset",
        "/auth/email/verify" => "email_verify",
        _ => return None,
    })
}

fn check_username(u: &str) -> Result<(), &'static str> {
    if u.chars().count() > 64 {
        return Err("must be at most 64 characters");
    }
    if u.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters");
    }
    Ok(())
}

/// Parse a JSON request body: right content type, valid UTF-8 JSON object.
pub(super) fn json_body(req: &ApiRequest) -> Result<Value, ApiError> {
    let ct = req.header("content-type").unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::UnsupportedMediaType);
    }
    if req.body.is_empty() {
        return Err(ApiError::BadRequest("The request body is empty."));
    }
    let v: Value = serde_json::from_slice(&req.body)
        .map_err(|_| ApiError::BadRequest("The request body is not valid JSON."))?;
    if !v.is_object() {
        return Err(ApiError::BadRequest("The body must be a JSON object."));
    }
    Ok(v)
}

/// Collects per-field problems for `validation_failed`.
#[derive(Default)]
pub(super) struct FieldErrors(std::collections::BTreeMap<String, Vec<String>>);

impl FieldErrors {
    pub(super) fn add(&mut self, field: &str, problem: impl Into<String>) {
        self.0
            .entry(field.to_string())
            .or_default()
            .push(problem.into());
    }

    /// A string field; records "is required" or "must be a string".
    pub(super) fn string(&mut self, body: &Value, field: &str, required: bool) -> Option<String> {
        match body.get(field) {
            Some(Value::String(s)) => Some(s.clone()),
            None | Some(Value::Null) => {
                if required {
                    self.add(field, "is required");
                }
                None
            }
            Some(_) => {
                self.add(field, "must be a string");
                None
            }
        }
    }

    pub(super) fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.0))
        }
    }
}

/// A minimal page that reads `token` from its own URL and confirms by POST,
/// so link-prefetching mail scanners never consume a token.
fn confirm_page(title: &str, button: &str, action: &str, with_password: bool) -> ApiResponse {
    let page = crate::portal::ConfirmPage {
        title,
        button,
        action,
        with_password,
    };
    match crate::portal::confirm_link_page(&page) {
        Ok(html) => {
            let mut resp = ApiResponse::html(200, html);
            // Its one inline script is allowed by hash, not 'unsafe-inline'.
            for (name, value) in &mut resp.headers {
                if *name == "content-security-policy" {
                    *value = crate::portal::CONFIRM_CSP.clone();
                }
            }
            resp
        }
        Err(e) => ApiError::internal(format!("confirm page: {e}")).into_response(),
    }
}
