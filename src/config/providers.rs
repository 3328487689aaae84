//! `[[identity_providers]]` (CONTRACT 8.1): the outside OpenID Connect and
//! OAuth 2.0 providers people may sign in with. The file model, its
//! validation (every problem names its key) and the internal
//! [`IdentityProvider`]. The client secret is read from the environment
//! variable the file NAMES, never from the file.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::file::IdentityProviderFile;
use super::Secret;

/// `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// Endpoints from `{issuer}/.well-known/openid-configuration`; an
    /// `id_token` checked against the provider's JWKS.
    Oidc,
    /// Plain OAuth 2.0: explicit URLs, the identity from `userinfo_url`.
    OAuth2,
}

/// One validated provider.
#[derive(Debug, Clone)]
pub struct IdentityProvider {
    pub id: String,
    pub kind: ProviderKind,
    pub display_name: String,
    /// oidc: the exact issuer (discovery's and the id_token's `iss` must
    /// equal it); oauth2: empty.
    pub issuer: String,
    /// oauth2: the three URLs; oidc: empty (from discovery), except
    /// `userinfo_url` when set.
    pub authorize_url: String,
    pub token_url: String,
    pub userinfo_url: String,
    pub client_id: String,
    /// The value of the environment variable `client_secret_env` names.
    pub client_secret: Secret,
    pub client_secret_env: String,
    pub scopes: Vec<String>,
    pub subject_claim: String,
    pub email_claim: String,
    /// `None`: the provider never asserts a verified email.
    pub email_verified_claim: Option<String>,
    pub allow_signup: bool,
    pub link_by_email: bool,
    pub roles_claim: Option<String>,
    /// provider value → local role; unmapped values are ignored.
    pub role_map: BTreeMap<String, String>,
    pub trust_mfa: bool,
    pub ca_file: Option<PathBuf>,
    /// Where the provider sends the browser back.
    pub redirect_uri: String,
}

/// `[a-z0-9-]{1,32}`: the id appears in URLs.
pub fn valid_provider_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `https://`, or `http://` to a loopback address (local testing only).
pub fn provider_url_ok(u: &url::Url) -> bool {
    if u.fragment().is_some() || u.host().is_none() {
        return false;
    }
    match u.scheme() {
        "https" => true,
        "http" => match u.host() {
            Some(url::Host::Ipv4(a)) => IpAddr::V4(a).is_loopback(),
            Some(url::Host::Ipv6(a)) => IpAddr::V6(a).is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        },
        _ => false,
    }
}

fn check_url(key: &str, v: &str, required: bool, p: &mut Vec<String>) {
    if v.is_empty() {
        if required {
            p.push(format!("{key}: required"));
        }
        return;
    }
    match url::Url::parse(v) {
        Ok(u) if provider_url_ok(&u) => {}
        Ok(_) => p.push(format!(
            "{key}: '{v}' must be https:// (http:// only to a loopback address), without a fragment"
        )),
        Err(_) => p.push(format!("{key}: '{v}' is not an absolute URL")),
    }
}

/// Validate every provider; `link_base_url` (no trailing slash) gives the
/// default `redirect_uri`.
pub(super) fn validate_providers(
    files: Vec<IdentityProviderFile>,
    link_base_url: &str,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<String>,
) -> Vec<IdentityProvider> {
    let mut out: Vec<IdentityProvider> = Vec::new();
    for (i, f) in files.into_iter().enumerate() {
        let k = |name: &str| format!("identity_providers[{i}].{name}");
        if !valid_provider_id(&f.id) {
            p.push(format!(
                "{}: '{}' must match [a-z0-9-]{{1,32}}",
                k("id"),
                f.id.escape_debug()
            ));
        } else if out.iter().any(|o| o.id == f.id) {
            p.push(format!(
                "{}: '{}' is used by another provider",
                k("id"),
                f.id
            ));
        }
        let kind = provider_kind(&f, &k, p);
        if f.client_id.is_empty() || f.client_id.chars().any(|c| c.is_control()) {
            p.push(format!("{}: required", k("client_id")));
        }
        let client_secret = client_secret(&f, &k, env, p);
        check_scopes_and_claims(&f, &k, p);
        let ca_file = if f.ca_file.is_empty() {
            None
        } else {
            if !Path::new(&f.ca_file).is_file() {
                p.push(format!("{}: '{}' does not exist", k("ca_file"), f.ca_file));
            }
            Some(PathBuf::from(&f.ca_file))
        };
        let redirect_uri = if f.redirect_uri.is_empty() {
            format!("{link_base_url}/auth/oidc/{}/callback", f.id)
        } else {
            match url::Url::parse(&f.redirect_uri) {
                Ok(u) if matches!(u.scheme(), "https" | "http") && u.fragment().is_none() => {}
                _ => p.push(format!(
                    "{}: '{}' is not an absolute http(s) URL",
                    k("redirect_uri"),
                    f.redirect_uri
                )),
            }
            f.redirect_uri.clone()
        };
        let display_name = if f.display_name.is_empty() {
            f.id.clone()
        } else {
            if f.display_name.chars().any(|c| c.is_control()) || f.display_name.len() > 64 {
                p.push(format!(
                    "{}: at most 64 printable characters",
                    k("display_name")
                ));
            }
            f.display_name.clone()
        };
        out.push(IdentityProvider {
            id: f.id,
            kind,
            display_name,
            issuer: f.issuer,
            authorize_url: f.authorize_url,
            token_url: f.token_url,
            userinfo_url: f.userinfo_url,
            client_id: f.client_id,
            client_secret,
            client_secret_env: f.client_secret_env,
            scopes: f.scopes,
            subject_claim: f.subject_claim,
            email_claim: f.email_claim,
            email_verified_claim: Some(f.email_verified_claim).filter(|c| !c.is_empty()),
            allow_signup: f.allow_signup,
            link_by_email: f.link_by_email,
            roles_claim: Some(f.roles_claim).filter(|c| !c.is_empty()),
            role_map: f.role_map,
            trust_mfa: f.trust_mfa,
            ca_file,
            redirect_uri,
        });
    }
    out
}

/// The provider's `kind`, and the endpoints that kind needs (and must not
/// have).
fn provider_kind(
    f: &IdentityProviderFile,
    k: &dyn Fn(&str) -> String,
    p: &mut Vec<String>,
) -> ProviderKind {
    let kind = match f.kind.as_str() {
        "oidc" => ProviderKind::Oidc,
        "oauth2" => ProviderKind::OAuth2,
        other => {
            p.push(format!(
                "{}: '{}' is not \"oidc\" or \"oauth2\"",
                k("kind"),
                other.escape_debug()
            ));
            ProviderKind::Oidc
        }
    };
    match kind {
        ProviderKind::Oidc => {
            check_url(&k("issuer"), &f.issuer, true, p);
            for (name, v) in [
                ("authorize_url", &f.authorize_url),
                ("token_url", &f.token_url),
            ] {
                if !v.is_empty() {
                    p.push(format!(
                        "{}: oauth2 only (an oidc provider's endpoints come from discovery)",
                        k(name)
                    ));
                }
            }
            check_url(&k("userinfo_url"), &f.userinfo_url, false, p);
            if !f.scopes.iter().any(|s| s == "openid") {
                p.push(format!(
                    "{}: an oidc provider needs \"openid\"",
                    k("scopes")
                ));
            }
        }
        ProviderKind::OAuth2 => {
            if !f.issuer.is_empty() {
                p.push(format!("{}: oidc only", k("issuer")));
            }
            check_url(&k("authorize_url"), &f.authorize_url, true, p);
            check_url(&k("token_url"), &f.token_url, true, p);
            check_url(&k("userinfo_url"), &f.userinfo_url, true, p);
        }
    }
    kind
}

/// The client secret, read from the environment variable named by
/// `client_secret_env`.
fn client_secret(
    f: &IdentityProviderFile,
    k: &dyn Fn(&str) -> String,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<String>,
) -> Secret {
    if f.client_secret_env.is_empty() {
        p.push(format!(
            "{}: required (the NAME of the environment variable holding the client secret)",
            k("client_secret_env")
        ));
        Secret(String::new())
    } else {
        match env(&f.client_secret_env).filter(|v| !v.is_empty()) {
            Some(v) => Secret(v),
            None => {
                p.push(format!(
                    "{}: the environment variable {} is not set",
                    k("client_secret_env"),
                    f.client_secret_env
                ));
                Secret(String::new())
            }
        }
    }
}

/// The scopes, the claim names and the role map.
fn check_scopes_and_claims(
    f: &IdentityProviderFile,
    k: &dyn Fn(&str) -> String,
    p: &mut Vec<String>,
) {
    for (j, s) in f.scopes.iter().enumerate() {
        if s.is_empty()
            || s.bytes()
                .any(|b| b <= b' ' || b == b'"' || b == b'\\' || b >= 0x7f)
        {
            p.push(format!(
                "{}[{j}]: '{}' is not a scope token",
                k("scopes"),
                s.escape_debug()
            ));
        }
    }
    for (name, v) in [
        ("subject_claim", &f.subject_claim),
        ("email_claim", &f.email_claim),
    ] {
        if v.is_empty() {
            p.push(format!("{}: must not be empty", k(name)));
        }
    }
    for (from, to) in &f.role_map {
        if !crate::names::valid_role(to) {
            p.push(format!(
                "{}.{from}: '{}' is not a valid role name",
                k("role_map"),
                to.escape_debug()
            ));
        }
    }
    if !f.role_map.is_empty() && f.roles_claim.is_empty() {
        p.push(format!("{}: role_map needs roles_claim", k("roles_claim")));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigErrors};
    use super::*;

    fn load(text: &str, secret: Option<&'static str>) -> Result<Config, ConfigErrors> {
        Config::from_toml(
            text,
            &move |k| {
                (k == "IDP_SECRET")
                    .then(|| secret.map(String::from))
                    .flatten()
            },
            Path::new("."),
        )
    }

    const CORP: &str = "[[identity_providers]]\nid = \"corp\"\nkind = \"oidc\"\ndisplay_name = \"Corp SSO\"\nissuer = \"https://idp.example.com\"\nclient_id = \"portcullis\"\nclient_secret_env = \"IDP_SECRET\"\nrole_map = { admins = \"admin\" }\nroles_claim = \"groups\"\n";

    #[test]
    fn a_provider_loads_with_its_secret_from_the_named_variable() {
        let c = load(CORP, Some("s3cret")).unwrap();
        let idp = &c.identity_providers[0];
        assert_eq!(idp.id, "corp");
        assert_eq!(idp.kind, ProviderKind::Oidc);
        assert_eq!(idp.client_secret.0, "s3cret");
        assert_eq!(idp.scopes, ["openid", "email", "profile"]);
        assert_eq!(idp.email_verified_claim.as_deref(), Some("email_verified"));
        assert!(idp.allow_signup && !idp.link_by_email && !idp.trust_mfa);
        assert_eq!(idp.role_map["admins"], "admin");
        assert_eq!(
            idp.redirect_uri,
            "https://localhost:8443/auth/oidc/corp/callback"
        );
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn a_missing_secret_variable_is_a_config_error() {
        let e = load(CORP, None).unwrap_err().to_string();
        assert!(
            e.contains("identity_providers[0].client_secret_env") && e.contains("IDP_SECRET"),
            "{e}"
        );
    }

    #[test]
    fn every_bad_key_is_named() {
        let text = "[[identity_providers]]\nid = \"Corp!\"\nkind = \"saml\"\nclient_secret_env = \"IDP_SECRET\"\nclient_secret = \"in-file\"\n[[identity_providers]]\nid = \"gh\"\nkind = \"oauth2\"\nclient_id = \"x\"\nclient_secret_env = \"IDP_SECRET\"\nauthorize_url = \"http://github.com/login/oauth/authorize\"\ntoken_url = \"https://github.com/login/oauth/access_token\"\nrole_map = { a = \"bad role\" }\n[[identity_providers]]\nid = \"gh\"\nkind = \"oidc\"\nissuer = \"http://10.0.0.1/\"\nclient_id = \"x\"\nclient_secret_env = \"IDP_SECRET\"\n";
        let e = load(text, Some("s")).unwrap_err().to_string();
        for key in [
            "identity_providers[0].id",
            "identity_providers[0].kind",
            "identity_providers[0].client_id",
            "identity_providers[0].client_secret",
            "identity_providers[1].authorize_url",
            "identity_providers[1].userinfo_url",
            "identity_providers[1].role_map.a",
            "identity_providers[1].roles_claim",
            "identity_providers[2].id",
            "identity_providers[2].issuer",
        ] {
            assert!(e.contains(key), "{key} missing from: {e}");
        }
        // The secret itself is never a file key.
        assert!(
            e.contains("identity_providers[0].client_secret: unknown key"),
            "{e}"
        );
    }

    #[test]
    fn http_is_accepted_only_on_loopback() {
        for (issuer, ok) in [
            ("http://127.0.0.1:9000", true),
            ("http://[::1]:9000/x", true),
            ("http://localhost:9000", true),
            ("https://idp.example.com", true),
            ("http://idp.example.com", false),
            ("http://192.168.1.2", false),
            ("ftp://127.0.0.1", false),
        ] {
            let text = CORP.replace("https://idp.example.com", issuer);
            assert_eq!(load(&text, Some("s")).is_ok(), ok, "{issuer}");
        }
    }
}
