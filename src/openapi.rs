//! The OpenAPI 3.1 document served at `GET /auth/openapi.json`.
//!
//! Every endpoint the auth handlers route is listed here, once, as an
//! annotated stub function: the handlers take the JSON front door's
//! transport-neutral request type (`crate::http::api`), so the annotations
//! cannot sit on them. The
//! schemas are derived from the wire types in [`crate::wire`] that the
//! handlers serialize and parse. Responses every operation can give (malformed input,
//! throttling, an oversized body, a busy store) are added to each operation
//! by [`CommonResponses`], so a stub lists only what is particular to it.
//!
//! Two tests keep this honest: `routes_and_spec_agree` (below) compares the
//! (method, path) pairs the dispatcher in `http/routes.rs` matches with the
//! document's, and the integration test `openapi` calls every operation on a
//! running gateway and validates each answer against its schema.
//!
//! To add an endpoint: write a stub with `#[utoipa::path]` below, add it to
//! `paths(...)` of [`ApiDoc`] and its body types to `components(schemas(...))`.

#![allow(dead_code)]

use std::collections::HashMap;

use bytes::Bytes;
use once_cell::sync::Lazy;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Object, ObjectBuilder, Ref, RefOr, Type};
use utoipa::{Modify, OpenApi};

use crate::wire::*;

mod federation;
mod provider;

/// The serialized document, built once.
static DOCUMENT: Lazy<Bytes> = Lazy::new(|| {
    Bytes::from(
        serde_json::to_vec(&ApiDoc::openapi())
            .unwrap_or_else(|_| br#"{"openapi":"3.1.0"}"#.to_vec()),
    )
});

/// The document as served (cheap to clone).
pub fn document() -> Bytes {
    DOCUMENT.clone()
}

/// Per documented path, its methods as an `Allow` header value (HEAD
/// wherever GET is).
static ALLOW: Lazy<HashMap<String, String>> = Lazy::new(|| {
    ApiDoc::openapi()
        .paths
        .paths
        .iter()
        .map(|(path, item)| {
            let mut methods = Vec::new();
            for (name, op) in [
                ("GET", &item.get),
                ("HEAD", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("PATCH", &item.patch),
                ("DELETE", &item.delete),
            ] {
                if op.is_some() {
                    methods.push(name);
                }
            }
            (path.clone(), methods.join(", "))
        })
        .collect()
});

/// The `Allow` header of a 405 at `path`, from the document: its path, or
/// the template it fills (`/auth/oidc/{id}/start`; a `{…}` segment is one
/// non-empty segment).
pub fn allow(path: &str) -> Option<&'static str> {
    if let Some(a) = ALLOW.get(path) {
        return Some(a.as_str());
    }
    let fills = |template: &str| {
        let (mut t, mut p) = (template.split('/'), path.split('/'));
        loop {
            match (t.next(), p.next()) {
                (None, None) => return true,
                (Some(ts), Some(ps)) if ts.starts_with('{') && ts.ends_with('}') => {
                    if ps.is_empty() {
                        return false;
                    }
                }
                (Some(ts), Some(ps)) if ts == ps => {}
                _ => return false,
            }
        }
    };
    ALLOW
        .iter()
        .find(|(t, _)| t.contains('{') && fills(t))
        .map(|(_, a)| a.as_str())
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Portcullis",
        description = "The authentication API of the Portcullis gateway: accounts, tokens, sessions, forward-auth. Every error is `{error, message}` (plus `fields` for `validation_failed`).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        register,
        login,
        refresh,
        logout,
        logout_all,
        introspect,
        forward_auth,
        email_verify,
        email_verify_page,
        email_resend,
        reset_request,
        reset_page,
        reset_confirm,
        password_change,
        reauth,
        me,
        update_me,
        sessions,
        delete_session,
        jwks,
        openapi_json,
        totp_enroll,
        totp_confirm,
        totp_disable,
        mfa_verify,
        api_key_create,
        api_key_list,
        api_key_delete,
        provider::oidc_discovery,
        provider::oauth_authorize,
        provider::oauth_consent,
        provider::oauth_token,
        provider::oauth_userinfo,
        provider::oauth_userinfo_post,
        provider::oauth_revoke,
        provider::oauth_logout,
        provider::oauth_logout_post,
        federation::oidc_start,
        federation::oidc_callback,
        federation::oidc_exchange,
        federation::oidc_backchannel_logout,
        federation::identities_list,
        federation::identity_link,
        federation::identity_unlink,
    ),
    components(schemas(
        UserView,
        UserEnvelope,
        TokenResponse,
        IntrospectResponse,
        ForwardAuthResponse,
        Accepted,
        SessionView,
        SessionList,
        Jwk,
        Jwks,
        ErrorBody,
        RegisterRequest,
        LoginRequest,
        RefreshRequest,
        LogoutRequest,
        TokenRequest,
        EmailRequest,
        ResetConfirmRequest,
        PasswordChangeRequest,
        ReauthRequest,
        UpdateMeRequest,
        LoginResponse,
        MfaChallenge,
        EnrollResponse,
        ConfirmResponse,
        CreatedApiKey,
        ApiKeyView,
        ApiKeyList,
        CodeRequest,
        TotpDisableRequest,
        MfaVerifyRequest,
        ApiKeyCreateRequest,
        OAuthError,
        OidcTokenResponse,
        UserInfo,
        OidcDiscovery,
        OAuthTokenForm,
        OAuthRevokeForm,
        OAuthUserinfoForm,
        OAuthConsentForm,
        OAuthLogoutForm,
        LoginCodeRequest,
        IdentityView,
        IdentityList,
        AuthorizeUrl,
        LogoutTokenForm,
    )),
    modifiers(&CommonResponses),
    tags(
        (name = "accounts", description = "Registration, email verification, passwords, profile"),
        (name = "tokens", description = "Login, refresh, logout, verification"),
        (name = "sessions", description = "The caller's sessions"),
        (name = "mfa", description = "The TOTP second factor"),
        (name = "api-keys", description = "The caller's API keys for proxied routes"),
        (name = "meta", description = "Keys and this document"),
        (name = "oidc-provider", description = "Portcullis as an OpenID Provider (`[oidc_provider]`): every operation answers 404 while it is disabled"),
        (name = "federation", description = "Sign-in with outside OpenID Connect and OAuth 2.0 providers, linked identities"),
    ),
)]
pub struct ApiDoc;

/// Name of the bearer security scheme.
pub const BEARER: &str = "bearer";

/// Adds the bearer scheme, the shared error responses, and to every
/// operation the answers any request can get.
struct CommonResponses;

/// (status, component name, description, header) of the shared responses.
const SHARED: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "400",
        "BadRequest",
        "`bad_request` (malformed JSON, a path that cannot be normalized safely) or `validation_failed` (with `fields`)",
        None,
    ),
    (
        "401",
        "Unauthorized",
        "`unauthorized`: a valid access token is required (`WWW-Authenticate: Bearer`)",
        Some("www-authenticate"),
    ),
    ("404", "NotFound", "`not_found`", None),
    (
        "413",
        "PayloadTooLarge",
        "`payload_too_large`: the body exceeds `limits.max_body_bytes`",
        None,
    ),
    (
        "415",
        "UnsupportedMediaType",
        "`unsupported_media_type`: the body must be `application/json`",
        None,
    ),
    (
        "429",
        "TooManyRequests",
        "`too_many_requests`: a per-IP, per-address or per-account budget is spent (`Retry-After`)",
        Some("retry-after"),
    ),
    (
        "431",
        "HeadersTooLarge",
        "`request_header_fields_too_large`",
        None,
    ),
    (
        "503",
        "Unavailable",
        "`service_unavailable`: the password hasher's queue is full or the store cannot write (`Retry-After`)",
        Some("retry-after"),
    ),
];

fn error_response(description: &str, header: Option<&str>) -> Response {
    let mut b = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    );
    if let Some(h) = header {
        let (schema, text) = if h == "retry-after" {
            (Type::Integer, "Seconds to wait before retrying")
        } else {
            (Type::String, "`Bearer error=\"invalid_token\"`")
        };
        b = b.header(
            h,
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(schema))
                .description(Some(text))
                .build(),
        );
    }
    b.build()
}

fn shared_ref(status: &str) -> RefOr<Response> {
    let name = SHARED
        .iter()
        .find(|s| s.0 == status)
        .map(|s| s.1)
        .unwrap_or("BadRequest");
    RefOr::Ref(Ref::new(format!("#/components/responses/{name}")))
}

impl Modify for CommonResponses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        // The provider's client authentication (`client_secret_basic`).
        components.add_security_scheme(
            "client_basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
        for (_, name, description, header) in SHARED {
            components.responses.insert(
                name.to_string(),
                error_response(description, *header).into(),
            );
        }
        for (path, item) in doc.paths.paths.iter_mut() {
            let html_page = item
                .get
                .as_ref()
                .is_some_and(|op| op.responses.responses.contains_key("200") && is_page(op));
            for (method, op) in [
                (HttpMethod::Get, item.get.as_mut()),
                (HttpMethod::Post, item.post.as_mut()),
                (HttpMethod::Patch, item.patch.as_mut()),
                (HttpMethod::Delete, item.delete.as_mut()),
            ] {
                let Some(op) = op else { continue };
                let local = path.starts_with("/auth/");
                let has_body = op.request_body.is_some();
                // Bearer required (not optional, as on logout: `{}` among
                // the alternatives).
                let secured = serde_json::to_value(&op.security).is_ok_and(|v| {
                    v.as_array().is_some_and(|alts| {
                        !alts.is_empty() && alts.iter().all(|a| a != &serde_json::json!({}))
                    })
                });
                let mut add = |status: &str| {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| shared_ref(status));
                };
                // The path normalizer answers 400 before any handler runs.
                add("400");
                add("431");
                if has_body {
                    add("413");
                    add("415");
                }
                // Every POST under /auth/ counts toward the per-IP budget.
                if local && method == HttpMethod::Post {
                    add("429");
                }
                let is_static = path == "/.well-known/jwks.json"
                    || path == "/auth/openapi.json"
                    || (method == HttpMethod::Get && html_page);
                if !is_static {
                    add("503");
                }
                // Kept where the stub already describes its own 401.
                if secured {
                    add("401");
                }
            }
        }
    }
}

fn is_page(op: &Operation) -> bool {
    match op.responses.responses.get("200") {
        Some(RefOr::T(r)) => r.content.contains_key("text/html"),
        _ => false,
    }
}

/// A free-form JSON object (the document itself).
fn any_object() -> Object {
    Object::new()
}

// ----- accounts

/// Create an account.
///
/// The account starts unverified and a verification email is sent. When
/// `accounts.require_email_verification` is on, an existing email answers
/// exactly as a new one (and its owner is told by email) instead of 409.
#[utoipa::path(post, path = "/auth/register", tag = "accounts",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Created", body = UserEnvelope),
        (status = 400, description = "`validation_failed` with `fields`, or `bad_request`", body = ErrorBody),
        (status = 409, description = "`email_taken`", body = ErrorBody),
    ))]
fn register() {}

/// Confirm an email address with the token from the verification link.
#[utoipa::path(post, path = "/auth/email/verify", tag = "accounts",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "Verified", body = UserEnvelope),
        (status = 400, description = "`invalid_token`, `validation_failed` or `bad_request`", body = ErrorBody),
    ))]
fn email_verify() {}

/// The page an email verification link opens: it confirms by `POST`, so a
/// link scanner that prefetches it consumes nothing.
#[utoipa::path(get, path = "/auth/email/verify", tag = "accounts",
    params(("token" = Option<String>, Query, description = "Read by the page's script, never by the server")),
    responses((status = 200, description = "An HTML page", content_type = "text/html", body = String)))]
fn email_verify_page() {}

/// Send the verification email again. Answers 202 whether or not the
/// account exists.
#[utoipa::path(post, path = "/auth/email/resend", tag = "accounts",
    request_body = EmailRequest,
    responses((status = 202, description = "Accepted", body = Accepted)))]
fn email_resend() {}

/// Request a password reset email. Same body and timing whether or not the
/// account exists.
#[utoipa::path(post, path = "/auth/password/reset", tag = "accounts",
    request_body = EmailRequest,
    responses((status = 202, description = "Accepted", body = Accepted)))]
fn reset_request() {}

/// The page a password reset link opens: it posts the new password to
/// `/auth/password/reset/confirm`.
#[utoipa::path(get, path = "/auth/password/reset", tag = "accounts",
    params(("token" = Option<String>, Query, description = "Read by the page's script, never by the server")),
    responses((status = 200, description = "An HTML page", content_type = "text/html", body = String)))]
fn reset_page() {}

/// Set a new password with the token from the reset link. Ends every
/// session of the account.
#[utoipa::path(post, path = "/auth/password/reset/confirm", tag = "accounts",
    request_body = ResetConfirmRequest,
    responses(
        (status = 204, description = "Password changed"),
        (status = 400, description = "`invalid_token`, `validation_failed` or `bad_request`", body = ErrorBody),
    ))]
fn reset_confirm() {}

/// Change the password (the current one is required). Ends every other
/// session; failed guesses count toward the account lockout.
#[utoipa::path(post, path = "/auth/password/change", tag = "accounts",
    request_body = PasswordChangeRequest,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Password changed"),
        (status = 400, description = "`validation_failed` or `bad_request`", body = ErrorBody),
        (status = 401, description = "`unauthorized`, or `invalid_credentials` (wrong current password)", body = ErrorBody),
    ))]
fn password_change() {}

/// Re-authenticate (CONTRACT 8.6): the password, and a TOTP or recovery
/// code when TOTP is on. Answers a new pair for the SAME session (its
/// refresh token rotated) whose access token carries a fresh `auth_time`,
/// so that enrolling TOTP, adding a passkey and creating an API key work
/// for `accounts.reauth_secs`. Wrong guesses count toward the account
/// lockout; a locked account gets 429.
#[utoipa::path(post, path = "/auth/reauth", tag = "accounts",
    request_body = ReauthRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A new pair for this session, with a fresh `auth_time`", body = TokenResponse),
        (status = 400, description = "`invalid_code`, `validation_failed` (a missing `password`, or `code` with TOTP on) or `bad_request`", body = ErrorBody),
        (status = 401, description = "`unauthorized`, or `invalid_credentials` (wrong password)", body = ErrorBody),
    ))]
fn reauth() {}

/// The caller's account.
#[utoipa::path(get, path = "/auth/me", tag = "accounts",
    security(("bearer" = [])),
    responses((status = 200, description = "The account", body = UserEnvelope)))]
fn me() {}

/// Change the caller's profile (only `username`).
#[utoipa::path(patch, path = "/auth/me", tag = "accounts",
    request_body = UpdateMeRequest,
    security(("bearer" = [])),
    responses((status = 200, description = "The changed account", body = UserEnvelope)))]
fn update_me() {}

// ----- tokens

/// Log in with email and password. With TOTP on, the answer holds no
/// tokens but an `mfa_token` for `POST /auth/mfa/verify`.
#[utoipa::path(post, path = "/auth/login", tag = "tokens",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "A new session, or `{mfa_required, mfa_token}`", body = LoginResponse),
        (status = 401, description = "`invalid_credentials`", body = ErrorBody),
        (status = 403, description = "`email_not_verified`", body = ErrorBody),
    ))]
fn login() {}

/// Exchange a refresh token for a new pair. Each refresh token works once;
/// presenting a used one ends its whole session.
#[utoipa::path(post, path = "/auth/refresh", tag = "tokens",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new pair", body = TokenResponse),
        (status = 401, description = "`invalid_token`", body = ErrorBody),
    ))]
fn refresh() {}

/// End a session: the refresh token's, and the bearer token's if one is
/// sent. Idempotent.
#[utoipa::path(post, path = "/auth/logout", tag = "tokens",
    request_body(content = Option<LogoutRequest>, description = "Optional"),
    security((), ("bearer" = [])),
    responses((status = 204, description = "Logged out")))]
fn logout() {}

/// End every session of the caller.
#[utoipa::path(post, path = "/auth/logout-all", tag = "tokens",
    security(("bearer" = [])),
    responses((status = 204, description = "Every session ended")))]
fn logout_all() {}

/// Introspect an access token.
#[utoipa::path(post, path = "/auth/verify", tag = "tokens",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "The token is valid", body = IntrospectResponse),
        (status = 401, description = "`invalid_token`", body = ErrorBody),
    ))]
fn introspect() {}

/// Forward-auth for nginx `auth_request` and Traefik ForwardAuth: 200 with
/// the identity in the response headers, or 401.
#[utoipa::path(get, path = "/auth/verify", tag = "tokens",
    security(("bearer" = [])),
    responses((status = 200, description = "The token is valid", body = ForwardAuthResponse,
        headers(
            ("x-user-id" = String, description = "The user's id"),
            ("x-user-email" = String, description = "The user's email"),
            ("x-user-roles" = String, description = "Roles, comma-separated"),
        ))))]
fn forward_auth() {}

// ----- sessions

/// The caller's live sessions.
#[utoipa::path(get, path = "/auth/sessions", tag = "sessions",
    security(("bearer" = [])),
    responses((status = 200, description = "Live sessions", body = SessionList)))]
fn sessions() {}

/// End one of the caller's sessions.
#[utoipa::path(delete, path = "/auth/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "A session id (UUID) of the caller's")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Ended"),
        (status = 404, description = "`not_found`: no such session of the caller's", body = ErrorBody),
    ))]
fn delete_session() {}

// ----- meta

/// The public signing keys (`{"keys": []}` under HS256).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "meta",
    responses((status = 200, description = "JWKS", body = Jwks)))]
fn jwks() {}

/// This document.
#[utoipa::path(get, path = "/auth/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
fn openapi_json() {}

// ----- mfa

/// Start TOTP enrolment: a new secret, in force once confirmed. Starting
/// again before confirming replaces the secret.
#[utoipa::path(post, path = "/auth/mfa/totp/enroll", tag = "mfa",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The secret and its URI", body = EnrollResponse),
        (status = 403, description = "`reauth_required`: the sign-in is older than `accounts.reauth_secs`; `POST /auth/reauth` first", body = ErrorBody),
        (status = 409, description = "`already_enrolled`: TOTP is already on", body = ErrorBody),
    ))]
fn totp_enroll() {}

/// Confirm enrolment with a code from the authenticator: TOTP is on from
/// now, and the ten recovery codes are shown once.
#[utoipa::path(post, path = "/auth/mfa/totp/confirm", tag = "mfa",
    request_body = CodeRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "TOTP is on", body = ConfirmResponse),
        (status = 400, description = "`invalid_code` (also with no enrolment started), `validation_failed` or `bad_request`", body = ErrorBody),
    ))]
fn totp_confirm() {}

/// Turn TOTP off: the password and a TOTP or recovery code are needed.
#[utoipa::path(delete, path = "/auth/mfa/totp", tag = "mfa",
    request_body = TotpDisableRequest,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "TOTP is off"),
        (status = 400, description = "`invalid_code`, `validation_failed` or `bad_request`", body = ErrorBody),
        (status = 401, description = "`unauthorized`, or `invalid_credentials` (wrong password)", body = ErrorBody),
    ))]
fn totp_disable() {}

/// Complete a login that answered `mfa_required`, with a TOTP code or a
/// recovery code. Wrong codes count toward the account lockout.
#[utoipa::path(post, path = "/auth/mfa/verify", tag = "mfa",
    request_body = MfaVerifyRequest,
    responses(
        (status = 200, description = "A new session", body = TokenResponse),
        (status = 400, description = "`invalid_code`, `validation_failed` or `bad_request`", body = ErrorBody),
        (status = 401, description = "`invalid_token`: the mfa_token is unknown, used or expired", body = ErrorBody),
    ))]
fn mfa_verify() {}

// ----- api keys

/// Create an API key. The key is in this answer only.
#[utoipa::path(post, path = "/auth/api-keys", tag = "api-keys",
    request_body = ApiKeyCreateRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = CreatedApiKey),
        (status = 400, description = "`validation_failed` with `fields`, or `bad_request`", body = ErrorBody),
        (status = 403, description = "`reauth_required`: the sign-in is older than `accounts.reauth_secs`; `POST /auth/reauth` first", body = ErrorBody),
    ))]
fn api_key_create() {}

/// The caller's API keys, without the keys themselves.
#[utoipa::path(get, path = "/auth/api-keys", tag = "api-keys",
    security(("bearer" = [])),
    responses((status = 200, description = "The keys", body = ApiKeyList)))]
fn api_key_list() {}

/// Delete one of the caller's API keys: it fails at once, on every gateway.
#[utoipa::path(delete, path = "/auth/api-keys/{id}", tag = "api-keys",
    params(("id" = String, Path, description = "A key id (UUID) of the caller's")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`not_found`: no such key of the caller's", body = ErrorBody),
    ))]
fn api_key_delete() {}

#[cfg(test)]
mod tests;
