//! The OpenAPI stubs of sign-in with an outside provider (CONTRACT 8.1),
//! listed in [`super::ApiDoc`].

#![allow(dead_code)]

use crate::wire::*;

// ----- sign-in with an outside provider (CONTRACT 8.1)

/// Start a sign-in at provider `id`: a redirect to the provider with
/// `state`, `nonce` (oidc) and PKCE S256, and the short-lived state cookie
/// that binds them to this browser.
#[utoipa::path(get, path = "/auth/oidc/{id}/start", tag = "federation",
    params(
        ("id" = String, Path, description = "A provider `id` of `[[identity_providers]]`"),
        ("rd" = Option<String>, Query, description = "Where to go afterwards; checked like the portal's"),
        ("mode" = Option<String>, Query, description = "`code`: come back to `rd` with a `login_code`; else browser mode (needs `[browser] enabled`)"),
    ),
    responses(
        (status = 302, description = "To the provider; sets the `__Host-portcullis-fed` state cookie",
            headers(("location" = String, description = "The provider's authorization URL"))),
        (status = 400, description = "`validation_failed`: an unsafe `rd`, a bad `mode`, or browser mode while `[browser]` is off", body = ErrorBody),
        (status = 404, description = "`not_found`: no such provider", body = ErrorBody),
        (status = 502, description = "`provider_error`: the provider's discovery cannot be read", body = ErrorBody),
    ))]
fn oidc_start() {}

/// Where the provider sends the browser back. Browser mode: the session
/// cookie and a redirect to `rd`; code mode: a redirect to
/// `rd?login_code=…`. Failures: a portal page (browser mode) or
/// `rd?error=` (code mode): `account_exists`, `signup_disabled`,
/// `email_not_verified`, `provider_error`, `invalid_state`.
#[utoipa::path(get, path = "/auth/oidc/{id}/callback", tag = "federation",
    params(
        ("id" = String, Path, description = "The provider `id`"),
        ("code" = Option<String>, Query, description = "The provider's authorization code"),
        ("state" = Option<String>, Query, description = "The `state` sent at the start"),
        ("iss" = Option<String>, Query, description = "RFC 9207: the provider's issuer"),
        ("error" = Option<String>, Query, description = "The provider's error"),
    ),
    responses(
        (status = 302, description = "To `rd` (signed in, or with `login_code` or `error` in code mode)",
            headers(("location" = String, description = "`rd`, in code mode with `login_code` or `error`"))),
        (status = 400, description = "`invalid_state` (no state cookie of this browser), or another refusal when `[browser]` is off", body = ErrorBody),
        (status = 404, description = "`not_found`: no such provider", body = ErrorBody),
    ))]
fn oidc_callback() {}

/// Exchange a code-mode `login_code` (single use, 60 s) for the login
/// answer of `POST /auth/login`.
#[utoipa::path(post, path = "/auth/oidc/exchange", tag = "federation",
    request_body = LoginCodeRequest,
    responses(
        (status = 200, description = "A new session, or `{mfa_required, mfa_token}` when the account has TOTP and the provider's MFA is not trusted", body = LoginResponse),
        (status = 400, description = "`invalid_token`: the code is unknown, expired or used; `validation_failed`", body = ErrorBody),
    ))]
fn oidc_exchange() {}

/// OIDC Back-Channel Logout 1.0, called by the provider: a `logout_token`
/// signed by its JWKS (`iss`, `aud`, `iat`, the event, `sub` or `sid`, no
/// `nonce`, a `jti` never seen) ends every session that sign-in started,
/// on every gateway, tunnels included.
#[utoipa::path(post, path = "/auth/oidc/{id}/backchannel-logout", tag = "federation",
    params(("id" = String, Path, description = "The provider `id`")),
    request_body(content = LogoutTokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Accepted; the sessions are ended"),
        (status = 400, description = "`invalid_request`: the token is invalid; `validation_failed`: no `logout_token`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such provider", body = ErrorBody),
    ))]
fn oidc_backchannel_logout() {}

/// The identities at outside providers linked to the caller's account.
#[utoipa::path(get, path = "/auth/identities", tag = "federation",
    security(("bearer" = [])),
    responses((status = 200, description = "The linked identities", body = IdentityList)))]
fn identities_list() {}

/// Link an identity at `provider` to the caller's account (a recent
/// sign-in needed): the URL to send the browser to, with the state cookie
/// this answer sets. The owner gets a mail once it is linked.
#[utoipa::path(post, path = "/auth/identities/{provider}", tag = "federation",
    params(
        ("provider" = String, Path, description = "A provider `id`"),
        ("rd" = Option<String>, Query, description = "Where the browser returns once linked"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Where to send the browser", body = AuthorizeUrl),
        (status = 403, description = "`reauth_required`: the sign-in is older than `accounts.reauth_secs`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such provider", body = ErrorBody),
        (status = 502, description = "`provider_error`: the provider cannot be reached", body = ErrorBody),
    ))]
fn identity_link() {}

/// Unlink the caller's identity at `provider` (a recent sign-in needed);
/// never the account's last way to sign in.
#[utoipa::path(delete, path = "/auth/identities/{provider}", tag = "federation",
    params(("provider" = String, Path, description = "A provider `id`")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Unlinked"),
        (status = 403, description = "`reauth_required`: the sign-in is older than `accounts.reauth_secs`", body = ErrorBody),
        (status = 404, description = "`not_found`: nothing linked there", body = ErrorBody),
        (status = 409, description = "`last_sign_in_method`: the account would have no way left to sign in", body = ErrorBody),
    ))]
fn identity_unlink() {}

/// Tests: the federation operations `federation_route` (`http/federation.rs`)
/// answers, when the dispatcher `body` calls it.
#[cfg(test)]
pub(super) fn routed(body: &str, out: &mut std::collections::BTreeSet<(String, String)>) {
    let fed = include_str!("../http/federation.rs");
    for (m, path, marker) in [
        (
            "POST",
            "/auth/oidc/exchange",
            "Method::POST => self.oidc_exchange_endpoint",
        ),
        (
            "GET",
            "/auth/identities",
            "Method::GET => self.identities_endpoint",
        ),
        (
            "POST",
            "/auth/identities/{provider}",
            "Method::POST => self.identity_link_endpoint",
        ),
        (
            "DELETE",
            "/auth/identities/{provider}",
            "Method::DELETE => self.identity_unlink_endpoint",
        ),
        ("GET", "/auth/oidc/{id}/start", "(\"start\", &Method::GET)"),
        (
            "GET",
            "/auth/oidc/{id}/callback",
            "(\"callback\", &Method::GET)",
        ),
        (
            "POST",
            "/auth/oidc/{id}/backchannel-logout",
            "(\"backchannel-logout\", &Method::POST)",
        ),
    ] {
        if body.contains("self.federation_route(req)") && fed.contains(marker) {
            out.insert((m.into(), path.into()));
        }
    }
}
