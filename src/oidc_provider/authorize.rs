//! `GET /auth/oauth/authorize` (and the consent form's POST) and
//! `GET /auth/oauth/logout` (RP-initiated logout).

use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

use super::pages::{ConsentPage, ErrorPage};
use super::{client, pkce_shaped, scope_list, ApiResult, Params, ProviderRequest};
use crate::accounts::provider::CodeGrant;
use crate::accounts::AuthService;
use crate::browser::{self, CookieIdentity};
use crate::config::oidc_provider::OidcClient;
use crate::config::Config;
use crate::error::ApiError;
use crate::http::api::ApiResponse;
use crate::portal::{self, Frame, View};

/// The internal parameter a forced sign-in comes back with: the sign-in
/// must be at least this recent (set by `prompt=login` or `max_age`).
const AUTH_AFTER: &str = "portcullis_auth_after";

/// A portal page of the provider, with the CSRF cookie when there is none.
fn page(
    req: &ProviderRequest<'_>,
    cfg: &Config,
    status: u16,
    view: &impl View,
    mut cookies: Vec<String>,
) -> ApiResponse {
    let name = browser::csrf_cookie_name(&cfg.browser);
    let csrf = match browser::cookie_value(req.headers, &name) {
        Some(c) if c.len() >= 32 => c.to_string(),
        _ => {
            let t = browser::new_csrf_token(&crate::entropy::OsEntropy);
            cookies.push(browser::csrf_cookie(&cfg.browser, &t));
            t
        }
    };
    let frame = Frame {
        csrf: &csrf,
        alert: None,
    };
    let mut resp = match portal::render(&frame, view) {
        Ok(doc) => ApiResponse {
            status,
            headers: vec![
                ("content-type", "text/html; charset=utf-8".into()),
                ("content-security-policy", portal::CSP.into()),
                ("referrer-policy", "no-referrer".into()),
                ("x-frame-options", "DENY".into()),
                ("cache-control", "no-store".into()),
            ],
            body: Bytes::from(doc),
        },
        Err(e) => ApiError::internal(format!("provider page: {e}")).into_response(),
    };
    for c in cookies {
        resp.headers.push(("set-cookie", c));
    }
    resp
}

fn error_page(req: &ProviderRequest<'_>, cfg: &Config, status: u16, message: &str) -> ApiResponse {
    page(req, cfg, status, &ErrorPage { message }, vec![])
}

/// A redirect to the client with `params` (RFC 6749 §4.1.2 and §4.1.2.1),
/// `state` and the issuer (RFC 9207).
fn back_to_client(
    cfg: &Config,
    redirect_uri: &str,
    params: &[(&str, &str)],
    state: Option<&str>,
    cookies: Vec<String>,
) -> ApiResponse {
    let mut u = match url::Url::parse(redirect_uri) {
        Ok(u) => u,
        Err(_) => return ApiError::internal("registered redirect URI").into_response(),
    };
    {
        let mut q = u.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
        if let Some(s) = state {
            q.append_pair("state", s);
        }
        q.append_pair("iss", &cfg.oidc_provider.issuer);
    }
    let mut resp = ApiResponse::empty(302)
        .with_header("location", u.to_string())
        .with_header("cache-control", "no-store");
    for c in cookies {
        resp.headers.push(("set-cookie", c));
    }
    resp
}

fn oauth_error(
    cfg: &Config,
    redirect_uri: &str,
    error: &str,
    description: &str,
    state: Option<&str>,
    cookies: Vec<String>,
) -> ApiResponse {
    back_to_client(
        cfg,
        redirect_uri,
        &[("error", error), ("error_description", description)],
        state,
        cookies,
    )
}

/// A checked authorization request.
struct AuthRequest<'a> {
    client: &'a OidcClient,
    redirect_uri: String,
    state: Option<String>,
    scope: Vec<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    prompt_none: bool,
    /// The sign-in must be at least this recent.
    auth_after: Option<i64>,
}

impl AuthService {
    /// The browser session's identity (rotating its cookie when needed).
    async fn browser_identity(
        &self,
        req: &ProviderRequest<'_>,
        cfg: &Config,
        cookies: &mut Vec<String>,
    ) -> Result<Option<CookieIdentity>, ApiError> {
        if !cfg.browser.enabled {
            return Ok(None);
        }
        let Some(cookie) = browser::cookie_value(req.headers, &cfg.browser.cookie_name) else {
            return Ok(None);
        };
        match self
            .cookie_session(
                cookie,
                req.client.ip,
                &req.client.user_agent,
                &req.client.request_id,
            )
            .await
        {
            Ok(id) => {
                if let Some(new) = &id.rotated {
                    cookies.push(browser::session_cookie(
                        &cfg.browser,
                        new,
                        cfg.tokens.refresh_ttl_secs,
                    ));
                }
                Ok(Some(id))
            }
            Err(e @ ApiError::Unavailable { .. }) => Err(e),
            Err(_) => {
                cookies.push(browser::clear_session_cookie(&cfg.browser));
                Ok(None)
            }
        }
    }

    /// `GET /auth/oauth/authorize`.
    pub(super) async fn authorize(&self, req: &ProviderRequest<'_>, cfg: Arc<Config>) -> ApiResult {
        let query = req.query.unwrap_or_default().to_string();
        self.authorize_query(req, cfg, &query, None).await
    }

    /// The authorization request in `query`; `decision` is the consent
    /// form's answer, when it was sent.
    async fn authorize_query(
        &self,
        req: &ProviderRequest<'_>,
        cfg: Arc<Config>,
        query: &str,
        decision: Option<bool>,
    ) -> ApiResult {
        let Ok(params) = Params::parse(query.as_bytes()) else {
            return Ok(error_page(
                req,
                &cfg,
                400,
                "The sign-in request is malformed.",
            ));
        };
        // A bad client or redirect URI: a page, never a redirect.
        let Some(c) = params.get("client_id").and_then(|id| client(&cfg, id)) else {
            return Ok(error_page(
                req,
                &cfg,
                400,
                "The application asking you to sign in is unknown.",
            ));
        };
        let redirect_uri = match params.get("redirect_uri") {
            Some(r) if c.redirect_uris.iter().any(|u| u == r) => r.to_string(),
            _ => {
                return Ok(error_page(
                    req,
                    &cfg,
                    400,
                    "The application's return address is not registered.",
                ))
            }
        };
        let state = params.get("state").map(str::to_string);
        let st = state.as_deref();
        let fail = |error: &str, description: &str| {
            Ok(oauth_error(
                &cfg,
                &redirect_uri,
                error,
                description,
                st,
                vec![],
            ))
        };
        if params.get("request").is_some() || params.get("request_uri").is_some() {
            return fail("request_not_supported", "request objects are not supported");
        }
        match params.get("response_type") {
            Some("code") => {}
            Some(_) => return fail("unsupported_response_type", "only response_type=code"),
            None => return fail("invalid_request", "response_type is missing"),
        }
        if let Some(mode) = params.get("response_mode") {
            if mode != "query" {
                return fail("invalid_request", "only response_mode=query");
            }
        }
        let scope = scope_list(params.get("scope").unwrap_or(""));
        if !scope.iter().any(|s| s == "openid") {
            return fail("invalid_scope", "scope must include openid");
        }
        if let Some(s) = scope.iter().find(|s| !c.scopes.contains(s)) {
            return fail(
                "invalid_scope",
                &format!("scope '{s}' is not allowed for this client"),
            );
        }
        let code_challenge = match (
            params.get("code_challenge"),
            params.get("code_challenge_method"),
        ) {
            (None, None) => None,
            (Some(ch), Some("S256")) if pkce_shaped(ch) => Some(ch.to_string()),
            (Some(_), Some("S256")) => {
                return fail("invalid_request", "code_challenge is malformed")
            }
            (Some(_), None) | (Some(_), Some("plain")) => {
                return fail("invalid_request", "code_challenge_method must be S256")
            }
            _ => return fail("invalid_request", "code_challenge_method must be S256"),
        };
        if c.secret.is_none() && code_challenge.is_none() {
            return fail(
                "invalid_request",
                "PKCE (code_challenge with S256) is required",
            );
        }
        let nonce = params.get("nonce").map(str::to_string);
        if nonce.as_ref().is_some_and(|n| n.len() > 512) {
            return fail("invalid_request", "nonce is too long");
        }
        let now = self.clock.now();
        let prompts = scope_list(params.get("prompt").unwrap_or(""));
        let prompt_none = prompts.iter().any(|p| p == "none");
        if prompt_none && prompts.len() > 1 {
            return fail("invalid_request", "prompt=none cannot be combined");
        }
        let mut auth_after: Option<i64> = None;
        if let Some(max_age) = params.get("max_age") {
            match max_age.parse::<u64>() {
                Ok(a) => auth_after = Some(now.saturating_sub(a.min(i64::MAX as u64) as i64)),
                Err(_) => return fail("invalid_request", "max_age must be a number of seconds"),
            }
        }
        if prompts.iter().any(|p| p == "login") {
            auth_after = Some(now);
        }
        if let Some(t) = params.get(AUTH_AFTER).and_then(|v| v.parse::<i64>().ok()) {
            // Coming back from a forced sign-in: at least that recent.
            auth_after = Some(auth_after.map_or(t, |a| a.max(t)));
        }
        let ar = AuthRequest {
            client: c,
            redirect_uri: redirect_uri.clone(),
            state: state.clone(),
            scope,
            nonce,
            code_challenge,
            prompt_none,
            auth_after,
        };
        self.authorize_checked(req, &cfg, &params, ar, query, decision)
            .await
    }

    async fn authorize_checked(
        &self,
        req: &ProviderRequest<'_>,
        cfg: &Config,
        params: &Params,
        ar: AuthRequest<'_>,
        query: &str,
        decision: Option<bool>,
    ) -> ApiResult {
        let st = ar.state.as_deref();
        let mut cookies = Vec::new();
        let id = self.browser_identity(req, cfg, &mut cookies).await?;
        let user = match &id {
            Some(i) => match Uuid::parse_str(&i.claims.sub) {
                Ok(uid) => self.provider_user(uid).await?,
                Err(_) => None,
            },
            None => None,
        };
        let fresh_enough = |i: &CookieIdentity| match ar.auth_after {
            Some(after) => i.claims.auth_time.is_some_and(|t| t >= after),
            None => true,
        };
        let (id, user) = match (id, user) {
            (Some(i), Some(u)) if fresh_enough(&i) => (i, u),
            (id, _) => {
                if ar.prompt_none {
                    return Ok(oauth_error(
                        cfg,
                        &ar.redirect_uri,
                        "login_required",
                        "the user is not signed in",
                        st,
                        cookies,
                    ));
                }
                if !cfg.browser.enabled {
                    return Ok(error_page(
                        req,
                        cfg,
                        503,
                        "Signing in needs the portal, and it is turned off.",
                    ));
                }
                // To the portal's sign-in, and back here; a forced one
                // (prompt=login, max_age) must then be at least this recent.
                let mut back = url::form_urlencoded::Serializer::new(String::new());
                for (k, v) in &params.0 {
                    if k != "prompt" && k != "max_age" && k != AUTH_AFTER {
                        back.append_pair(k, v);
                    }
                }
                let force = id.is_some();
                if let Some(after) = ar.auth_after {
                    back.append_pair(AUTH_AFTER, &after.max(self.clock.now()).to_string());
                }
                let rd = format!("/auth/oauth/authorize?{}", back.finish());
                let enc: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
                let location = if force {
                    format!("/auth/ui/login?prompt=login&rd={enc}")
                } else {
                    format!("/auth/ui/login?rd={enc}")
                };
                let mut resp = ApiResponse::empty(302)
                    .with_header("location", location)
                    .with_header("cache-control", "no-store");
                for c in cookies {
                    resp.headers.push(("set-cookie", c));
                }
                return Ok(resp);
            }
        };
        let c = ar.client;
        if !c.roles.is_empty() && !user.roles.iter().any(|r| c.roles.contains(r)) {
            return Ok(page(
                req,
                cfg,
                403,
                &ErrorPage {
                    message: "Your account may not sign in to this application.",
                },
                cookies,
            ));
        }
        if c.consent && !self.has_consent(&user, c, &ar.scope).await? {
            match decision {
                None => {
                    let view = ConsentPage {
                        client_id: &c.client_id,
                        email: &user.email,
                        scopes: ar.scope.clone(),
                        request: query,
                    };
                    return Ok(page(req, cfg, 200, &view, cookies));
                }
                Some(false) => {
                    return Ok(oauth_error(
                        cfg,
                        &ar.redirect_uri,
                        "access_denied",
                        "the user refused",
                        st,
                        cookies,
                    ))
                }
                Some(true) => {
                    self.remember_consent(&user, c, &ar.scope, &req.client)
                        .await?
                }
            }
        }
        let grant = CodeGrant {
            user_id: user.id,
            client_id: c.client_id.clone(),
            redirect_uri: ar.redirect_uri.clone(),
            scope: ar.scope.join(" "),
            code_challenge: ar.code_challenge.clone(),
            nonce: ar.nonce.clone(),
            auth_time: id.claims.auth_time.unwrap_or(id.claims.iat),
            amr: id.claims.amr.clone(),
        };
        let code = self
            .issue_auth_code(&user, &grant, cfg.oidc_provider.code_ttl_secs, &req.client)
            .await?;
        Ok(back_to_client(
            cfg,
            &ar.redirect_uri,
            &[("code", &code)],
            st,
            cookies,
        ))
    }

    /// `POST /auth/oauth/authorize`: the consent form (Origin and CSRF
    /// checked as every portal form).
    pub(super) async fn consent_submit(
        &self,
        req: &ProviderRequest<'_>,
        cfg: Arc<Config>,
    ) -> ApiResult {
        let form = Params::parse(req.body).map_err(ApiError::BadRequest)?;
        let cookie = browser::cookie_value(req.headers, &browser::csrf_cookie_name(&cfg.browser));
        if !browser::origin_allowed_for(req.headers, None, req.tls, &cfg)
            || !browser::csrf_matches(cookie, form.get("csrf"))
        {
            return Err(ApiError::Forbidden);
        }
        let query = form.get("request").unwrap_or("").to_string();
        let decision = form.get("decision") == Some("allow");
        self.authorize_query(req, cfg, &query, Some(decision)).await
    }

    // ----- RP-initiated logout

    /// `GET /auth/oauth/logout`: with a valid `id_token_hint`, the client
    /// session it names and this browser's session end; the browser goes
    /// to `post_logout_redirect_uri` only when that client registered it.
    pub(super) async fn rp_logout(&self, req: &ProviderRequest<'_>, cfg: Arc<Config>) -> ApiResult {
        let raw: Vec<u8> = if *req.method == http::Method::POST {
            req.body.to_vec()
        } else {
            req.query.unwrap_or_default().to_string().into_bytes()
        };
        let params = Params::parse(&raw).map_err(ApiError::BadRequest)?;
        let hint = params.get("id_token_hint").and_then(|t| {
            self.provider_verify::<super::token::IdClaims>("JWT", t, false)
                .filter(|c| c.iss == cfg.oidc_provider.issuer)
        });
        let mut cookies = Vec::new();
        let Some(hint) = hint else {
            // No proof of which client asks: the portal's own sign-out page.
            return Ok(ApiResponse::empty(302).with_header("location", "/auth/ui/logout"));
        };
        let c = client(&cfg, &hint.aud);
        if let (Ok(uid), Ok(sid)) = (Uuid::parse_str(&hint.sub), Uuid::parse_str(&hint.sid)) {
            self.end_client_session(uid, sid, &req.client).await?;
        }
        // This browser's own session ends too (the user signs out of the
        // provider), when it is the same user's.
        if cfg.browser.enabled {
            if let Some(cookie) =
                browser::cookie_value(req.headers, &cfg.browser.cookie_name).map(str::to_string)
            {
                if let Ok(Some(id)) = self.browser_identity(req, &cfg, &mut cookies).await {
                    if id.claims.sub == hint.sub {
                        let what = crate::accounts::SignOut {
                            refresh_token: Some(&cookie),
                            access_token: Ok(id.access.as_str()),
                        };
                        self.logout(what, &req.client).await?;
                        self.cookies.forget(&cookie);
                        if let Some(r) = &id.rotated {
                            self.cookies.forget(r);
                        }
                        cookies.clear();
                        cookies.push(browser::clear_session_cookie(&cfg.browser));
                    }
                }
            }
        }
        let target = params
            .get("post_logout_redirect_uri")
            .filter(|u| c.is_some_and(|c| c.post_logout_redirect_uris.iter().any(|r| r == u)));
        if let Some(uri) = target {
            if let Ok(mut u) = url::Url::parse(uri) {
                if let Some(s) = params.get("state") {
                    u.query_pairs_mut().append_pair("state", s);
                }
                let mut resp = ApiResponse::empty(302).with_header("location", u.to_string());
                for c in cookies {
                    resp.headers.push(("set-cookie", c));
                }
                return Ok(resp);
            }
        }
        Ok(page(
            req,
            &cfg,
            200,
            &ErrorPage {
                message: "You have been signed out.",
            },
            cookies,
        ))
    }
}
