//! The OpenAPI stubs of the OpenID Provider's operations (CONTRACT 8.2),
//! listed in [`super::ApiDoc`]; their bodies are the `OAuth*`/`Oidc*`
//! types of [`crate::wire`]. The provider's dispatcher
//! (`oidc_provider/mod.rs`) is checked against them by
//! `routes_and_spec_agree`.

#![allow(dead_code)]

use crate::wire::*;

/// OpenID Connect Discovery (404 while `oidc_provider.enabled` is false).
#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "oidc-provider",
    responses(
        (status = 200, description = "The provider's metadata", body = OidcDiscovery),
        (status = 404, description = "`not_found`: the provider is disabled", body = ErrorBody),
    ))]
fn oidc_discovery() {}

/// The authorization endpoint: code flow only. Without a browser session
/// it redirects to the portal's sign-in and back; errors go back to the
/// client's redirect URI (RFC 6749 §4.1.2.1), except a bad `client_id` or
/// `redirect_uri`, which get an error page and are never redirected to.
#[utoipa::path(get, path = "/auth/oauth/authorize", tag = "oidc-provider",
    params(
        ("client_id" = String, Query, description = "A registered client"),
        ("redirect_uri" = String, Query, description = "One of the client's `redirect_uris`, exactly"),
        ("response_type" = String, Query, description = "`code`"),
        ("scope" = String, Query, description = "Space-separated, with `openid`"),
        ("state" = Option<String>, Query, description = "Returned as is"),
        ("nonce" = Option<String>, Query, description = "Put in the ID token"),
        ("code_challenge" = Option<String>, Query, description = "PKCE S256 challenge (required of public clients)"),
        ("code_challenge_method" = Option<String>, Query, description = "`S256`"),
        ("prompt" = Option<String>, Query, description = "`none` or `login`"),
        ("max_age" = Option<u64>, Query, description = "Seconds: an older sign-in must be repeated"),
    ),
    responses(
        (status = 200, description = "The consent page", content_type = "text/html", body = String),
        (status = 302, description = "To the client's redirect URI (`code` or `error`, with `state` and `iss`) or to the portal's sign-in",
            headers(("location" = String, description = "Where to go"))),
        (status = 400, description = "An unknown client or unregistered redirect URI (an error page), or a path that cannot be normalized",
            content((String = "text/html"), (ErrorBody = "application/json"))),
        (status = 403, description = "The user lacks the client's `roles` (an error page)", content_type = "text/html", body = String),
        (status = 404, description = "`not_found`: the provider is disabled", body = ErrorBody),
        (status = 503, description = "Signing in needs the portal and `browser.enabled` is false (an error page), or `service_unavailable`",
            content((String = "text/html"), (ErrorBody = "application/json"))),
    ))]
fn oauth_authorize() {}

/// The consent page's answer (Origin and CSRF checked as every portal form).
#[utoipa::path(post, path = "/auth/oauth/authorize", tag = "oidc-provider",
    request_body(content = OAuthConsentForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 302, description = "To the client's redirect URI with `code`, or `error=access_denied`",
            headers(("location" = String, description = "Where to go"))),
        (status = 400, description = "A malformed form or request (an error page or `bad_request`)",
            content((String = "text/html"), (ErrorBody = "application/json"))),
        (status = 403, description = "`forbidden`: a foreign Origin or a wrong CSRF token; or the user lacks the client's `roles` (an error page)",
            content((ErrorBody = "application/json"), (String = "text/html"))),
        (status = 404, description = "`not_found`: the provider is disabled", body = ErrorBody),
    ))]
fn oauth_consent() {}

/// The token endpoint: `authorization_code` (single use: a second use
/// fails and revokes what the first gave) and `refresh_token` (rotation
/// with reuse detection). Client authentication `client_secret_basic` or
/// `client_secret_post`; a public client sends its `client_id`.
#[utoipa::path(post, path = "/auth/oauth/token", tag = "oidc-provider",
    request_body(content = OAuthTokenForm, content_type = "application/x-www-form-urlencoded"),
    security((), ("client_basic" = [])),
    responses(
        (status = 200, description = "Tokens", body = OidcTokenResponse),
        (status = 400, description = "RFC 6749 §5.2: `invalid_request`, `invalid_grant`, `unsupported_grant_type`, `invalid_scope`",
            content((OAuthError = "application/json"))),
        (status = 401, description = "`invalid_client` (`WWW-Authenticate: Basic` after Basic authentication)", body = OAuthError,
            headers(("www-authenticate" = String, description = "`Basic realm=\"portcullis\"`"))),
        (status = 404, description = "`not_found`: the provider is disabled", body = ErrorBody),
    ))]
fn oauth_token() {}

/// Claims about the user for the access token's scopes.
#[utoipa::path(get, path = "/auth/oauth/userinfo", tag = "oidc-provider",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The claims", body = UserInfo),
        (status = 401, description = "`invalid_token`: no, or no valid, client access token", body = OAuthError,
            headers(("www-authenticate" = String, description = "`Bearer error=\"invalid_token\"`"))),
        (status = 404, description = "`not_found`: the provider is disabled", body = ErrorBody),
    ))]
fn oauth_userinfo() {}

/// As the GET; the token may also come in the form body (RFC 6750 §2.2).
#[utoipa::path(post, path = "/auth/oauth/userinfo", tag = "oidc-provider",
    request_body(content = OAuthUserinfoForm, content_type = "application/x-www-form-urlencoded"),
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "The claims", body = UserInfo),
        (status = 401, description = "`invalid_token`: no, or no valid, client access token", body = OAuthError,
            headers(("www-authenticate" = String, description = "`Bearer error=\"invalid_token\"`"))),
        (status = 404, description = "`not_found`: the provider is disabled", body = ErrorBody),
    ))]
fn oauth_userinfo_post() {}

/// RFC 7009: a refresh token ends its client session, an access token is
/// revoked; an unknown token is 200 too.
#[utoipa::path(post, path = "/auth/oauth/revoke", tag = "oidc-provider",
    request_body(content = OAuthRevokeForm, content_type = "application/x-www-form-urlencoded"),
    security((), ("client_basic" = [])),
    responses(
        (status = 200, description = "Revoked (or unknown)"),
        (status = 400, description = "`invalid_request`", content((OAuthError = "application/json"))),
        (status = 401, description = "`invalid_client`", body = OAuthError,
            headers(("www-authenticate" = String, description = "`Basic realm=\"portcullis\"`"))),
        (status = 404, description = "`not_found`: the provider is disabled", body = ErrorBody),
    ))]
fn oauth_revoke() {}

/// RP-initiated logout 1.0: with a valid `id_token_hint`, its client
/// session and this browser's session end; the browser goes to
/// `post_logout_redirect_uri` only when the client registered it.
#[utoipa::path(get, path = "/auth/oauth/logout", tag = "oidc-provider",
    params(
        ("id_token_hint" = Option<String>, Query, description = "An ID token the provider issued"),
        ("post_logout_redirect_uri" = Option<String>, Query, description = "One of the client's `post_logout_redirect_uris`"),
        ("state" = Option<String>, Query, description = "Returned as is"),
    ),
    responses(
        (status = 200, description = "Signed out (a page)", content_type = "text/html", body = String),
        (status = 302, description = "To the registered `post_logout_redirect_uri`, or (no valid hint) to the portal's sign-out",
            headers(("location" = String, description = "Where to go"))),
        (status = 404, description = "`not_found`: the provider is disabled", body = ErrorBody),
    ))]
fn oauth_logout() {}

/// As the GET, with the parameters in a form body.
#[utoipa::path(post, path = "/auth/oauth/logout", tag = "oidc-provider",
    request_body(content = Option<OAuthLogoutForm>, content_type = "application/x-www-form-urlencoded",
        description = "Optional: without a body, as the GET without parameters"),
    responses(
        (status = 200, description = "Signed out (a page)", content_type = "text/html", body = String),
        (status = 302, description = "To the registered `post_logout_redirect_uri`, or (no valid hint) to the portal's sign-out",
            headers(("location" = String, description = "Where to go"))),
        (status = 404, description = "`not_found`: the provider is disabled", body = ErrorBody),
    ))]
fn oauth_logout_post() {}
