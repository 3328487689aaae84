//! Name grammars that config validation and the account logic both check
//! (role and scope names, the gateway's cookie namespace). A leaf: it imports nothing from the crate, so
//! `config` can use it without reaching up into `auth`.

/// Role names: short, no separators, so `X-User-Roles` stays unambiguous.
pub fn valid_role(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 64
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// Scope names (API keys): like role names.
pub fn valid_scope(s: &str) -> bool {
    valid_role(s)
}

/// Every cookie name the gateway sets starts with this:
/// `browser.cookie_name` must (the config refuses any other name), and the
/// CSRF cookie is that name plus `-csrf`. Cookies under it are stripped from
/// every proxied request whatever `[browser]` says now, so a browser still
/// holding them after `[browser]` is turned off or `cookie_name` renamed
/// (a live refresh credential for up to `tokens.refresh_ttl_secs`) never
/// hands them to an upstream. The namespace is the gateway's: an upstream
/// app must not set cookies under it.
pub const OWN_COOKIE_PREFIX: &str = "__Host-portcullis";
/// The same namespace under `__Secure-` (a cookie shared by several hosts
/// cannot be `__Host-`): stripped as well.
pub const OWN_COOKIE_PREFIX_SECURE: &str = "__Secure-portcullis";
