//! The `/auth/*` and `/.well-known/*` endpoints (CONTRACT section 3): one
//! function per endpoint, dispatched by method and path. Every failure is an
//! [`ApiError`]; every acknowledged state change is flushed before the
//! response is returned.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::tokens::{opaque_token, token_hash, AccessClaims, TokenRejection};
use super::{email, password, AuthService};
use crate::api::{ApiRequest, ApiResponse};
use crate::audit::{self, AuditCtx};
use crate::error::ApiError;
use crate::mail;
use crate::metrics;
use crate::store::{OneTimeKind, OneTimeToken, RotateOutcome, Rotation, SessionRecord, User};

type ApiResult = Result<ApiResponse, ApiError>;

/// Password reset requests answer no sooner than this, known account or not.
const RESET_FLOOR: Duration = Duration::from_millis(250);
const PER_ADDRESS_MAILS: u32 = 3;
const PER_ADDRESS_WINDOW: u64 = 900;

impl AuthService {
    /// Serve one local request.
    pub async fn handle(&self, req: ApiRequest) -> ApiResponse {
        match self.dispatch(&req).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    }

    async fn dispatch(&self, req: &ApiRequest) -> ApiResult {
        let path = req.path.as_str();
        if path == "/.well-known/jwks.json" {
            return match req.method {
                Method::GET | Method::HEAD => Ok(ApiResponse::json(200, self.tokens.jwks())),
                _ => Err(ApiError::MethodNotAllowed),
            };
        }
        if req.method == Method::POST && path.starts_with("/auth/") {
            self.ip_throttle(req)?;
        }
        let m = &req.method;
        match path {
            "/auth/register" if *m == Method::POST => self.register(req).await,
            "/auth/login" if *m == Method::POST => self.login(req).await,
            "/auth/refresh" if *m == Method::POST => self.refresh(req).await,
            "/auth/logout" if *m == Method::POST => self.logout(req).await,
            "/auth/logout-all" if *m == Method::POST => self.logout_all(req).await,
            "/auth/verify" if *m == Method::POST => self.introspect(req),
            "/auth/verify" if *m == Method::GET || *m == Method::HEAD => self.forward_auth(req),
            "/auth/email/verify" if *m == Method::POST => self.email_verify(req).await,
            "/auth/email/verify" if *m == Method::GET => Ok(confirm_page(
                "Confirm your email",
                "Confirm my email address",
                "/auth/email/verify",
                false,
            )),
            "/auth/email/resend" if *m == Method::POST => self.email_resend(req).await,
            "/auth/password/reset" if *m == Method::POST => self.reset_request(req).await,
            "/auth/password/reset" if *m == Method::GET => Ok(confirm_page(
                "Choose a new password",
                "Set password",
                "/auth/password/reset/confirm",
                true,
            )),
            "/auth/password/reset/confirm" if *m == Method::POST => self.reset_confirm(req).await,
            "/auth/password/change" if *m == Method::POST => self.password_change(req).await,
            "/auth/me" if *m == Method::GET => self.me(req),
            "/auth/me" if *m == Method::PATCH => self.update_me(req).await,
            "/auth/sessions" if *m == Method::GET => self.sessions(req),
            p if p.starts_with("/auth/sessions/") && *m == Method::DELETE => {
                self.delete_session(req, &p["/auth/sessions/".len()..])
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
            | "/auth/me"
            | "/auth/sessions" => Err(ApiError::MethodNotAllowed),
            _ => Err(ApiError::NotFound),
        }
    }

    fn audit_ctx<'a>(&self, req: &'a ApiRequest, ua: &'a str) -> AuditCtx<'a> {
        AuditCtx {
            ip: req.client_ip,
            user_agent: ua,
            request_id: &req.request_id,
        }
    }

    fn ip_throttle(&self, req: &ApiRequest) -> Result<(), ApiError> {
        let limit = self.cfg.throttle.auth_per_minute;
        match self
            .throttle
            .hit(&format!("ip:{}", req.ip_throttle_key(&self.cfg)), limit, 60)
        {
            super::throttle::Verdict::Allowed => Ok(()),
            super::throttle::Verdict::Limited { retry_after } => {
                metrics::THROTTLED.with_label_values(&["ip"]).inc();
                if let Some(ev) = event_for_path(&req.path) {
                    metrics::auth_event(ev, "throttled");
                }
                let ua = req.user_agent();
                audit::event(&self.audit_ctx(req, &ua), "throttled", "ip", None);
                Err(ApiError::TooManyRequests { retry_after })
            }
        }
    }

    fn require_bearer(&self, req: &ApiRequest) -> Result<AccessClaims, ApiError> {
        self.authenticate(&req.headers)
            .map_err(|_| ApiError::Unauthorized)
    }

    fn current_user(&self, claims: &AccessClaims) -> Result<User, ApiError> {
        let id = Uuid::parse_str(&claims.sub).map_err(|_| ApiError::Unauthorized)?;
        match self.store.find_user(&id)? {
            Some(u) if !u.disabled => Ok(u),
            _ => Err(ApiError::Unauthorized),
        }
    }

    async fn flush(&self) -> Result<(), ApiError> {
        self.store.flush().await.map_err(ApiError::from)
    }

    // ----- register

    async fn register(&self, req: &ApiRequest) -> ApiResult {
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
            metrics::auth_event("register", "failure");
            audit::event(&actx, "register", "invalid", None);
            return Err(e);
        }
        let (email, pw) = (email.unwrap_or_default(), pw.unwrap_or_default());
        let hash = self.hasher.hash(&pw).await?;
        let now = self.clock.now();
        let user = User {
            id: Uuid::new_v4(),
            email: email.clone(),
            username: username.filter(|u| !u.is_empty()),
            password_hash: hash,
            email_verified: false,
            roles: vec![],
            created_at: now,
            disabled: false,
            password_version: 0,
        };
        match self.store.create_user(&user, None) {
            Ok(()) => {}
            Err(crate::store::StoreError::Conflict) => {
                metrics::auth_event("register", "failure");
                if self.cfg.accounts.require_email_verification {
                    // Answer exactly as a new registration; tell the owner.
                    let base = &self.cfg.mail.link_base_url;
                    self.store
                        .enqueue_mail(&mail::account_exists_mail(base, &email, now))?;
                    self.flush().await?;
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
        self.send_verification(&user)?;
        self.flush().await?;
        self.mail_wake.notify_one();
        metrics::auth_event("register", "success");
        audit::event(&actx, "register", "success", Some(&user.id.to_string()));
        Ok(ApiResponse::json(
            201,
            &json!({ "user": AuthService::user_json(&user) }),
        ))
    }

    fn send_verification(&self, user: &User) -> Result<(), ApiError> {
        let token = opaque_token(32);
        let now = self.clock.now();
        let rec = OneTimeToken {
            kind: OneTimeKind::EmailVerify,
            user_id: user.id,
            email: user.email.clone(),
            password_version: user.password_version,
            expires_at: now + self.cfg.accounts.verify_token_ttl_secs as i64,
            issued_seq: 0,
        };
        let m = mail::verification_mail(&self.cfg.mail.link_base_url, &user.email, &token, now);
        self.store.issue_one_time(&token_hash(&token), &rec, &m)?;
        Ok(())
    }

    // ----- login, refresh, logout

    async fn login(&self, req: &ApiRequest) -> ApiResult {
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
            metrics::auth_event("login", "failure");
            audit::event(&actx, "login", "failure", uid);
            ApiError::InvalidCredentials
        };
        // Over-long input is refused before any hashing.
        if pw.chars().count() > password::MAX_LEN {
            return Err(fail(None));
        }
        let normalized = email::normalize(&raw_email);
        // Failures count per address whether or not an account exists, so a
        // lockout reveals nothing about which emails are registered.
        let lock_key = lock_key(normalized.as_deref().unwrap_or(&raw_email));
        let user = match &normalized {
            Some(e) => self.store.find_user_by_email(e)?,
            None => None,
        };
        let uid = user.as_ref().map(|u| u.id.to_string());
        let exempt = match (&user, device.as_deref()) {
            (Some(u), Some(t)) if !t.is_empty() && t.len() <= 512 => matches!(
                self.store.find_session_by_refresh(&token_hash(t)),
                Ok(Some(s)) if s.user_id == u.id
            ),
            _ => false,
        };
        if !exempt {
            if let Some(retry_after) = self.throttle.locked_for(&lock_key) {
                metrics::THROTTLED.with_label_values(&["account"]).inc();
                metrics::auth_event("login", "throttled");
                audit::event(&actx, "login", "locked", uid.as_deref());
                return Err(ApiError::TooManyRequests { retry_after });
            }
        }
        let ok = match &user {
            Some(u) => self.hasher.verify(&pw, &u.password_hash).await?,
            None => {
                self.hasher.verify_dummy(&pw).await;
                false
            }
        };
        let user = match user {
            Some(u) if ok && !u.disabled => u,
            _ => {
                let t = &self.cfg.throttle;
                if !ok
                    && self.throttle.fail(
                        &lock_key,
                        t.max_failed_logins,
                        t.failure_window_secs,
                        t.lockout_secs,
                    )
                {
                    metrics::THROTTLED.with_label_values(&["account"]).inc();
                    audit::event(&actx, "lockout", "locked", uid.as_deref());
                }
                return Err(fail(uid.as_deref()));
            }
        };
        let uid = user.id.to_string();
        if self.cfg.accounts.require_email_verification && !user.email_verified {
            metrics::auth_event("login", "failure");
            audit::event(&actx, "login", "email_not_verified", Some(&uid));
            return Err(ApiError::EmailNotVerified);
        }
        // A device-exempt login during a lockout leaves the lock in place
        // for every other client; otherwise success resets the failures.
        if self.throttle.locked_for(&lock_key).is_none() {
            self.throttle.clear(&lock_key);
        }
        let resp = self.start_session(&user, req)?;
        self.flush().await?;
        metrics::auth_event("login", "success");
        audit::event(&actx, "login", "success", Some(&uid));
        Ok(resp)
    }

    fn start_session(&self, user: &User, req: &ApiRequest) -> ApiResult {
        let now = self.clock.now();
        let refresh = opaque_token(32);
        let session = SessionRecord {
            id: Uuid::new_v4(),
            user_id: user.id,
            refresh_hash: token_hash(&refresh),
            previous_hashes: vec![],
            rotated_at: now,
            grace_successor: None,
            created_at: now,
            last_used_at: now,
            expires_at: now + self.cfg.tokens.refresh_ttl_secs as i64,
            ip: req.client_ip.to_string(),
            user_agent: req.user_agent(),
        };
        self.store.create_session(&session)?;
        self.token_response(user, &session.id, &refresh)
    }

    fn token_response(&self, user: &User, sid: &Uuid, refresh: &str) -> ApiResult {
        let (access, _) = self
            .tokens
            .issue(&user.id, &user.email, &user.roles, sid)
            .map_err(ApiError::internal)?;
        Ok(ApiResponse::json(
            200,
            &json!({
                "access_token": access,
                "refresh_token": refresh,
                "token_type": "Bearer",
                "expires_in": self.tokens.access_ttl(),
                "user": AuthService::user_json(user),
            }),
        ))
    }

    async fn refresh(&self, req: &ApiRequest) -> ApiResult {
        let body = json_body(req)?;
        let mut errs = FieldErrors::default();
        let presented = errs.string(&body, "refresh_token", true);
        errs.finish()?;
        let presented = presented.unwrap_or_default();
        let ua = req.user_agent();
        let actx = self.audit_ctx(req, &ua);
        let invalid = |uid: Option<&str>, why: &str| {
            metrics::auth_event("refresh", "failure");
            audit::event(&actx, "refresh", why, uid);
            ApiError::InvalidToken(401)
        };
        if presented.is_empty() || presented.len() > 512 {
            return Err(invalid(None, "invalid"));
        }
        let new_plain = opaque_token(32);
        let new_hash = token_hash(&new_plain);
        let outcome = self.store.rotate_refresh(&Rotation {
            presented_hash: &token_hash(&presented),
            new_hash: &new_hash,
            new_plain: &new_plain,
            now: self.clock.now(),
            grace_secs: self.cfg.tokens.refresh_reuse_grace_secs,
            idle_secs: self.cfg.tokens.refresh_idle_secs,
        })?;
        let (session, token) = match outcome {
            RotateOutcome::Rotated(s) => (s, new_plain),
            RotateOutcome::Grace(s, succ) => (s, succ),
            RotateOutcome::Reused(s) => {
                // The session is already deleted; kill its access tokens too.
                self.revoke_sessions(std::slice::from_ref(&s))?;
                self.flush().await?;
                let uid = s.user_id.to_string();
                audit::event(
                    &actx,
                    "refresh_reuse_detected",
                    "session_revoked",
                    Some(&uid),
                );
                return Err(invalid(Some(&uid), "reuse_detected"));
            }
            RotateOutcome::Invalid => {
                self.flush().await?;
                return Err(invalid(None, "invalid"));
            }
        };
        let user = match self.store.find_user(&session.user_id)? {
            Some(u) if !u.disabled => u,
            _ => {
                self.revoke_sessions(std::slice::from_ref(&session))?;
                self.flush().await?;
                return Err(invalid(Some(&session.user_id.to_string()), "disabled"));
            }
        };
        let resp = self.token_response(&user, &session.id, &token)?;
        self.flush().await?;
        metrics::auth_event("refresh", "success");
        audit::event(&actx, "refresh", "success", Some(&user.id.to_string()));
        Ok(resp)
    }

    async fn logout(&self, req: &ApiRequest) -> ApiResult {
        let body = if req.body.is_empty() {
            Value::Object(Map::new())
        } else {
            json_body(req)?
        };
        let mut errs = FieldErrors::default();
        let refresh = errs.string(&body, "refresh_token", false);
        errs.finish()?;
        let mut uid = None;
        if let Some(t) = refresh.filter(|t| !t.is_empty() && t.len() <= 512) {
            if let Some(s) = self.store.find_session_by_refresh(&token_hash(&t))? {
                uid = Some(s.user_id.to_string());
                self.revoke_sessions(std::slice::from_ref(&s))?;
            }
        }
        if let Ok(claims) = self.authenticate(&req.headers) {
            self.revocations
                .revoke(vec![(super::revocation::jti_key(&claims.jti), claims.exp)])?;
            // The token's own session ends too, refresh token presented or not.
            if let Ok(sid) = Uuid::parse_str(&claims.sid) {
                if let Some(s) = self.store.find_session(&sid)? {
                    if s.user_id.to_string() == claims.sub {
                        self.revoke_sessions(std::slice::from_ref(&s))?;
                    }
                }
            }
            uid = Some(claims.sub.clone());
        }
        self.flush().await?;
        metrics::auth_event("logout", "success");
        let ua = req.user_agent();
        audit::event(
            &self.audit_ctx(req, &ua),
            "logout",
            "success",
            uid.as_deref(),
        );
        Ok(ApiResponse::empty(204))
    }

    async fn logout_all(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let user = self.current_user(&claims)?;
        self.revoke_all(&user.id, None)?;
        self.flush().await?;
        metrics::auth_event("logout", "success");
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
        let label = match &result {
            Ok(_) => "valid",
            Err(r) => r.label(),
        };
        metrics::TOKEN_CHECKS.with_label_values(&[label]).inc();
        match result {
            Ok(c) => Ok(ApiResponse::json(
                200,
                &json!({ "valid": true, "claims": c }),
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

    async fn email_verify(&self, req: &ApiRequest) -> ApiResult {
        let body = json_body(req)?;
        let mut errs = FieldErrors::default();
        let token = errs.string(&body, "token", true);
        errs.finish()?;
        let ua = req.user_agent();
        let actx = self.audit_ctx(req, &ua);
        let invalid = || {
            metrics::auth_event("email_verify", "failure");
            audit::event(&actx, "email_verify", "invalid_token", None);
            ApiError::InvalidToken(400)
        };
        let token = token.unwrap_or_default();
        if token.is_empty() || token.len() > 512 {
            return Err(invalid());
        }
        let hash = token_hash(&token);
        // Only a verification token is consumed here: a reset token posted
        // to the wrong endpoint stays usable for its own purpose.
        if !matches!(self.store.find_one_time(&hash)?, Some(r) if r.kind == OneTimeKind::EmailVerify)
        {
            return Err(invalid());
        }
        let Some(rec) = self.store.take_one_time(&hash)? else {
            return Err(invalid());
        };
        self.flush().await?;
        if rec.kind != OneTimeKind::EmailVerify || rec.expires_at <= self.clock.now() {
            return Err(invalid());
        }
        let Some(mut user) = self.store.find_user(&rec.user_id)? else {
            return Err(invalid());
        };
        if user.email != rec.email || user.disabled {
            return Err(invalid());
        }
        if !user.email_verified {
            user.email_verified = true;
            self.store.update_user(&user, None)?;
            self.flush().await?;
        }
        metrics::auth_event("email_verify", "success");
        audit::event(&actx, "email_verify", "success", Some(&user.id.to_string()));
        Ok(ApiResponse::json(
            200,
            &json!({ "user": AuthService::user_json(&user) }),
        ))
    }

    fn address_throttle(&self, kind: &str, email: &str) -> Result<(), ApiError> {
        match self.throttle.hit(
            &format!("{kind}:{email}"),
            PER_ADDRESS_MAILS,
            PER_ADDRESS_WINDOW,
        ) {
            super::throttle::Verdict::Allowed => Ok(()),
            super::throttle::Verdict::Limited { retry_after } => {
                metrics::THROTTLED.with_label_values(&["account"]).inc();
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
            self.address_throttle("resend", &email)?;
            if let Some(user) = self.store.find_user_by_email(&email)? {
                if !user.email_verified && !user.disabled {
                    self.send_verification(&user)?;
                    self.flush().await?;
                    self.mail_wake.notify_one();
                }
            }
        }
        let ua = req.user_agent();
        audit::event(&self.audit_ctx(req, &ua), "email_resend", "accepted", None);
        Ok(ApiResponse::json(202, &json!({ "status": "accepted" })))
    }

    // ----- password reset and change

    async fn reset_request(&self, req: &ApiRequest) -> ApiResult {
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
        self.address_throttle("reset", &email)?;
        let Some(user) = self.store.find_user_by_email(&email)? else {
            return Ok(());
        };
        if user.disabled {
            return Ok(());
        }
        let token = opaque_token(32);
        let now = self.clock.now();
        let ttl = self.cfg.accounts.reset_token_ttl_secs;
        let rec = OneTimeToken {
            kind: OneTimeKind::PasswordReset,
            user_id: user.id,
            email: user.email.clone(),
            password_version: user.password_version,
            expires_at: now + ttl as i64,
            issued_seq: 0,
        };
        let m = mail::reset_mail(&self.cfg.mail.link_base_url, &user.email, &token, ttl, now);
        self.store.issue_one_time(&token_hash(&token), &rec, &m)?;
        self.flush().await?;
        self.mail_wake.notify_one();
        metrics::auth_event("password_reset", "success");
        Ok(())
    }

    async fn reset_confirm(&self, req: &ApiRequest) -> ApiResult {
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
            metrics::auth_event("password_reset", "failure");
            audit::event(&actx, "password_reset", "invalid_token", None);
            ApiError::InvalidToken(400)
        };
        if token.is_empty() || token.len() > 512 {
            return Err(invalid());
        }
        let hash = token_hash(&token);
        // Look first, so a policy failure does not burn the token.
        let Some(rec) = self.store.find_one_time(&hash)? else {
            return Err(invalid());
        };
        let Some(mut user) = self.store.find_user(&rec.user_id)? else {
            return Err(invalid());
        };
        let now = self.clock.now();
        let newest = self
            .store
            .latest_one_time_seq(&user.id, OneTimeKind::PasswordReset)?;
        if rec.kind != OneTimeKind::PasswordReset
            || rec.expires_at <= now
            || rec.issued_seq != newest
            || rec.password_version != user.password_version
            || rec.email != user.email
            || user.disabled
        {
            return Err(invalid());
        }
        check_new_password(&pw, &confirm, &user.email)?;
        // Single use: only the request that removes the token proceeds.
        if self.store.take_one_time(&hash)?.is_none() {
            return Err(invalid());
        }
        self.set_password(&mut user, &pw, None).await?;
        self.throttle.clear(&lock_key(&user.email));
        metrics::auth_event("password_reset", "success");
        audit::event(
            &actx,
            "password_reset",
            "success",
            Some(&user.id.to_string()),
        );
        Ok(ApiResponse::empty(204))
    }

    async fn password_change(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let mut user = self.current_user(&claims)?;
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
        if current.chars().count() > password::MAX_LEN
            || !self.hasher.verify(&current, &user.password_hash).await?
        {
            audit::event(&actx, "password_change", "failure", Some(&claims.sub));
            return Err(ApiError::InvalidCredentials);
        }
        check_new_password(&pw, &confirm, &user.email)?;
        let keep = Uuid::parse_str(&claims.sid).ok();
        self.set_password(&mut user, &pw, keep.as_ref()).await?;
        audit::event(&actx, "password_change", "success", Some(&claims.sub));
        Ok(ApiResponse::empty(204))
    }

    /// Store a new password, void outstanding reset links (the version
    /// bump), revoke every session but `keep` (all of them, and every access
    /// token, when `keep` is None), queue the notice, and flush.
    async fn set_password(
        &self,
        user: &mut User,
        pw: &str,
        keep: Option<&Uuid>,
    ) -> Result<(), ApiError> {
        user.password_hash = self.hasher.hash(pw).await?;
        user.password_version += 1;
        let notice = mail::password_changed_mail(&user.email, self.clock.now());
        self.store.update_user(user, Some(&notice))?;
        self.revoke_all(&user.id, keep)?;
        self.flush().await?;
        self.mail_wake.notify_one();
        Ok(())
    }

    // ----- profile and sessions

    fn me(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let user = self.current_user(&claims)?;
        Ok(ApiResponse::json(
            200,
            &json!({ "user": AuthService::user_json(&user) }),
        ))
    }

    async fn update_me(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let mut user = self.current_user(&claims)?;
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
        match obj.get("username") {
            None => {}
            Some(Value::Null) => user.username = None,
            Some(Value::String(u)) => match check_username(u) {
                Ok(()) => user.username = (!u.is_empty()).then(|| u.clone()),
                Err(p) => errs.add("username", p),
            },
            Some(_) => errs.add("username", "must be a string or null"),
        }
        errs.finish()?;
        self.store.update_user(&user, None)?;
        self.flush().await?;
        Ok(ApiResponse::json(
            200,
            &json!({ "user": AuthService::user_json(&user) }),
        ))
    }

    fn sessions(&self, req: &ApiRequest) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let user = self.current_user(&claims)?;
        let list: Vec<Value> = self
            .store
            .list_sessions(&user.id)?
            .into_iter()
            .map(|s| {
                json!({
                    "id": s.id.to_string(),
                    "created_at": crate::clock::rfc3339(s.created_at),
                    "last_used_at": crate::clock::rfc3339(s.last_used_at),
                    "ip": s.ip,
                    "user_agent": s.user_agent,
                    "current": s.id.to_string() == claims.sid,
                })
            })
            .collect();
        Ok(ApiResponse::json(200, &json!({ "sessions": list })))
    }

    async fn delete_session(&self, req: &ApiRequest, id: &str) -> ApiResult {
        let claims = self.require_bearer(req)?;
        let user = self.current_user(&claims)?;
        let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound)?;
        match self.store.find_session(&id)? {
            Some(s) if s.user_id == user.id => {
                self.revoke_sessions(std::slice::from_ref(&s))?;
                self.flush().await?;
                let ua = req.user_agent();
                audit::event(
                    &self.audit_ctx(req, &ua),
                    "session_revoked",
                    "success",
                    Some(&claims.sub),
                );
                Ok(ApiResponse::empty(204))
            }
            _ => Err(ApiError::NotFound),
        }
    }
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
fn lock_key(email: &str) -> String {
    let e: String = email.trim().to_lowercase().chars().take(254).collect();
    format!("lock:{e}")
}

/// `X-User-*` identity headers for a verified token.
pub fn identity_headers(c: &AccessClaims) -> [(&'static str, String); 3] {
    [
        ("x-user-id", c.sub.clone()),
        ("x-user-email", c.email.clone()),
        ("x-user-roles", c.roles.join(",")),
    ]
}

fn event_for_path(path: &str) -> Option<&'static str> {
    Some(match path {
        "/auth/register" => "register",
        "/auth/login" => "login",
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
fn json_body(req: &ApiRequest) -> Result<Value, ApiError> {
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
struct FieldErrors(std::collections::BTreeMap<String, Vec<String>>);

impl FieldErrors {
    fn add(&mut self, field: &str, problem: impl Into<String>) {
        self.0
            .entry(field.to_string())
            .or_default()
            .push(problem.into());
    }

    /// A string field; records "is required" or "must be a string".
    fn string(&mut self, body: &Value, field: &str, required: bool) -> Option<String> {
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

    fn finish(self) -> Result<(), ApiError> {
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
    let fields = if with_password {
        r#"<label>New password <input type="password" id="p1" autocomplete="new-password" required></label><br>
<label>Repeat it <input type="password" id="p2" autocomplete="new-password" required></label><br>"#
    } else {
        ""
    };
    let payload = if with_password {
        "{token: t, new_password: document.getElementById('p1').value, new_password_confirm: document.getElementById('p2').value}"
    } else {
        "{token: t}"
    };
    let html = format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><meta name="referrer" content="no-referrer"><title>{title}</title></head>
<body><h1>{title}</h1>
<form id="f">{fields}<button type="submit">{button}</button></form>
<p id="out"></p>
<script>
document.getElementById('f').addEventListener('submit', async (e) => {{
  e.preventDefault();
  const t = new URLSearchParams(location.search).get('token') || '';
  const r = await fetch('{action}', {{method: 'POST', headers: {{'content-type': 'application/json'}}, body: JSON.stringify({payload})}});
  document.getElementById('out').textContent = r.ok ? 'Done.' : 'This link is invalid or has expired.';
}});
</script></body></html>"#
    );
    ApiResponse::html(200, html)
}
