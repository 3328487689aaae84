//! `[[routes]]`: each route checked (naming its key) and the upstreams
//! resolved once, here.

use std::net::ToSocketAddrs;

use super::file::{self, UpstreamFile};
use super::{AuthMode, Route, Upstream};

/// Every `[[routes]]` entry (or the one default route when there is none),
/// longest prefix first.
pub(super) fn validate_routes(
    files: Option<Vec<file::RouteFile>>,
    p: &mut Vec<String>,
) -> Vec<Route> {
    let route_files = files.unwrap_or_else(|| {
        vec![file::RouteFile {
            prefix: "/".into(),
            upstream: UpstreamFile::One("http://127.0.0.1:8081".into()),
            auth: "required".into(),
            roles: vec![],
            rate_per_minute: 0,
            strip_path_params: false,
            forward_authorization: None,
            mfa: false,
            scopes: vec![],
        }]
    });
    let mut routes: Vec<Route> = Vec::new();
    for (i, r) in route_files.into_iter().enumerate() {
        let key = format!("routes[{i}]");
        if !r.prefix.starts_with('/') {
            p.push(format!("{key}.prefix: '{}' must start with '/'", r.prefix));
        } else if crate::request_path::normalize(&r.prefix).as_deref() != Ok(r.prefix.as_str()) {
            p.push(format!(
                "{key}.prefix: '{}' is not a normalized path",
                r.prefix
            ));
        }
        if r.prefix.starts_with("/auth/")
            || r.prefix == "/auth"
            || r.prefix.starts_with("/.well-known")
        {
            p.push(format!(
                "{key}.prefix: '{}' is reserved for the gateway",
                r.prefix
            ));
        }
        if routes.iter().any(|o| o.prefix == r.prefix) {
            p.push(format!("{key}.prefix: '{}' is defined twice", r.prefix));
        }
        let auth = match r.auth.as_str() {
            "required" => AuthMode::Required,
            "optional" => AuthMode::Optional,
            "public" => AuthMode::Public,
            other => {
                p.push(format!(
                    "{key}.auth: '{other}' is not \"required\", \"optional\" or \"public\""
                ));
                AuthMode::Required
            }
        };
        for (j, role) in r.roles.iter().enumerate() {
            if !crate::names::valid_role(role) {
                p.push(format!(
                    "{key}.roles[{j}]: '{role}' is not a valid role name"
                ));
            }
        }
        let list = match r.upstream {
            UpstreamFile::One(u) => vec![u],
            UpstreamFile::Many(v) => v,
        };
        if list.is_empty() {
            p.push(format!("{key}.upstream: at least one upstream is needed"));
        }
        let mut upstreams = Vec::new();
        for (j, u) in list.iter().enumerate() {
            match parse_upstream(u) {
                Ok(up) => upstreams.push(up),
                Err(e) => p.push(format!("{key}.upstream[{j}]: {e}")),
            }
        }
        for (j, scope) in r.scopes.iter().enumerate() {
            if !crate::names::valid_scope(scope) {
                p.push(format!(
                    "{key}.scopes[{j}]: '{scope}' is not a valid scope name"
                ));
            }
        }
        routes.push(Route {
            mfa: r.mfa,
            scopes: r.scopes,
            prefix: r.prefix,
            upstreams,
            auth,
            roles: r.roles,
            rate_per_minute: r.rate_per_minute,
            strip_path_params: r.strip_path_params,
            // A public upstream never asked for the caller's credentials.
            forward_authorization: r.forward_authorization.unwrap_or(auth != AuthMode::Public),
        });
    }
    // Longest prefix first, so matching is the first hit.
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    routes
}

/// `http://host:port` or `https://host:port`, resolved once, here.
fn parse_upstream(u: &str) -> Result<Upstream, String> {
    let url = url::Url::parse(u).map_err(|_| format!("'{u}' is not a URL"))?;
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        s => return Err(format!("'{u}': scheme '{s}' is not http or https")),
    };
    if url.path() != "/" && !url.path().is_empty() {
        return Err(format!(
            "'{u}': an upstream is scheme://host:port, without a path"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!("'{u}': no query, fragment or credentials allowed"));
    }
    let host = url
        .host_str()
        .ok_or_else(|| format!("'{u}' has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| format!("'{u}' has no port"))?;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("'{u}': cannot resolve host '{host}'"))?;
    let authority = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or(&host)),
        None => url.host_str().unwrap_or(&host).to_string(),
    };
    Ok(Upstream {
        addr,
        tls,
        sni: host,
        authority,
    })
}
