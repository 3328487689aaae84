//! `[oidc_provider]` and its `[[oidc_provider.clients]]` (CONTRACT 8.2):
//! the file model, the internal config and its validation. Client secrets
//! come from the environment variable each client NAMES.

use super::file::OidcProviderFile;
use super::Secret;

/// One registered client.
#[derive(Debug, Clone)]
pub struct OidcClient {
    pub client_id: String,
    /// `None`: a public client (PKCE S256 required).
    pub secret: Option<Secret>,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub backchannel_logout_uri: Option<url::Url>,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub consent: bool,
}

/// The scopes a client may be registered with.
pub const KNOWN_SCOPES: [&str; 5] = ["openid", "email", "profile", "roles", "offline_access"];

fn absolute_url(key: &str, v: &str, p: &mut Vec<String>) -> Option<url::Url> {
    match url::Url::parse(v) {
        Ok(u)
            if u.fragment().is_none()
                && (u.scheme() == "https" || crate::outbound::loopback_http(&u)) =>
        {
            Some(u)
        }
        _ => {
            p.push(format!(
                "{key}: '{v}' is not an absolute https:// URL without fragment (http:// only on a loopback address)"
            ));
            None
        }
    }
}

/// `[oidc_provider]`'s lifetimes and clients (the rest is validated in
/// `validate::oidc_provider`): `(code_ttl_secs, access_ttl_secs, clients)`.
pub(super) fn validate(
    f: &OidcProviderFile,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<String>,
) -> (u64, u64, Vec<OidcClient>) {
    if !f.issuer.is_empty() {
        absolute_url("oidc_provider.issuer", &f.issuer, p);
    }
    if !(1..=600).contains(&f.code_ttl_secs) {
        p.push("oidc_provider.code_ttl_secs: must be between 1 and 600".into());
    }
    if !(1..=86_400).contains(&f.access_ttl_secs) {
        p.push("oidc_provider.access_ttl_secs: must be between 1 and 86400".into());
    }
    let mut clients: Vec<OidcClient> = Vec::new();
    for (i, c) in f.clients.iter().enumerate() {
        let key = |k: &str| format!("oidc_provider.clients[{i}].{k}");
        let id_ok = !c.client_id.is_empty()
            && c.client_id.len() <= 128
            && c.client_id
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch));
        if !id_ok {
            p.push(format!(
                "{}: '{}' must be 1 to 128 of letters, digits, '-', '_' and '.'",
                key("client_id"),
                c.client_id
            ));
        } else if clients.iter().any(|o| o.client_id == c.client_id) {
            p.push(format!(
                "{}: '{}' is registered twice",
                key("client_id"),
                c.client_id
            ));
        }
        let secret = if c.client_secret_env.is_empty() {
            None
        } else {
            match env(&c.client_secret_env) {
                Some(s) if !s.is_empty() => Some(Secret(s)),
                _ => {
                    p.push(format!(
                        "{}: the environment variable {} is not set (or empty)",
                        key("client_secret_env"),
                        c.client_secret_env
                    ));
                    None
                }
            }
        };
        if c.redirect_uris.is_empty() {
            p.push(format!("{}: at least one is needed", key("redirect_uris")));
        }
        for (j, u) in c.redirect_uris.iter().enumerate() {
            absolute_url(&format!("{}[{j}]", key("redirect_uris")), u, p);
        }
        for (j, u) in c.post_logout_redirect_uris.iter().enumerate() {
            absolute_url(&format!("{}[{j}]", key("post_logout_redirect_uris")), u, p);
        }
        let backchannel_logout_uri = if c.backchannel_logout_uri.is_empty() {
            None
        } else {
            absolute_url(&key("backchannel_logout_uri"), &c.backchannel_logout_uri, p)
        };
        if !c.scopes.iter().any(|s| s == "openid") {
            p.push(format!("{}: must include \"openid\"", key("scopes")));
        }
        for s in &c.scopes {
            if !KNOWN_SCOPES.contains(&s.as_str()) {
                p.push(format!(
                    "{}: '{s}' is not one of {}",
                    key("scopes"),
                    KNOWN_SCOPES.join(", ")
                ));
            }
        }
        for r in &c.roles {
            if !crate::names::valid_role(r) {
                p.push(format!("{}: '{r}' is not a valid role name", key("roles")));
            }
        }
        clients.push(OidcClient {
            client_id: c.client_id.clone(),
            secret,
            redirect_uris: c.redirect_uris.clone(),
            post_logout_redirect_uris: c.post_logout_redirect_uris.clone(),
            backchannel_logout_uri,
            scopes: c.scopes.clone(),
            roles: c.roles.clone(),
            consent: c.consent,
        });
    }
    (f.code_ttl_secs, f.access_ttl_secs, clients)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;

    const CLIENTS: &str = r#"
[oidc_provider]
enabled = true

[[oidc_provider.clients]]
client_id = "app"
client_secret_env = "APP_SECRET"
redirect_uris = ["https://app.example.test/cb"]

[[oidc_provider.clients]]
client_id = "spa"
redirect_uris = ["http://127.0.0.1:3000/cb"]
"#;

    #[test]
    fn secrets_come_from_the_named_variable_and_public_clients_have_none() {
        let env = |k: &str| (k == "APP_SECRET").then(|| "s3cret".to_string());
        let c = Config::from_toml(CLIENTS, &env, Path::new(".")).unwrap();
        let p = &c.oidc_provider;
        assert_eq!(p.issuer, c.mail.link_base_url);
        assert_eq!(p.signing_alg, super::super::ProviderAlgorithm::Rs256);
        assert_eq!(
            p.client("app").unwrap().secret.as_ref().unwrap().0,
            "s3cret"
        );
        assert!(p.client("spa").unwrap().secret.is_none());
        // The variable named but not set: an error naming the key.
        let e = Config::from_toml(CLIENTS, &|_| None, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("oidc_provider.clients[0].client_secret_env"),
            "{e}"
        );
    }

    #[test]
    fn every_problem_names_its_key() {
        let text = r#"
[oidc_provider]
signing_alg = "HS256"
code_ttl_secs = 0
bogus = 1

[[oidc_provider.clients]]
client_id = "a b"
redirect_uris = ["http://app.example.test/cb", "https://ok.example.test/cb#f"]
backchannel_logout_uri = "ftp://x"
scopes = ["email", "admin"]
roles = ["bad role"]
"#;
        let e = Config::from_toml(text, &|_| None, Path::new("."))
            .unwrap_err()
            .to_string();
        for key in [
            "oidc_provider.signing_alg",
            "oidc_provider.code_ttl_secs",
            "oidc_provider.bogus",
            "oidc_provider.clients[0].client_id",
            "oidc_provider.clients[0].redirect_uris[0]",
            "oidc_provider.clients[0].redirect_uris[1]",
            "oidc_provider.clients[0].backchannel_logout_uri",
            "oidc_provider.clients[0].scopes",
            "oidc_provider.clients[0].roles",
        ] {
            assert!(e.contains(key), "{key} missing from: {e}");
        }
    }
}
