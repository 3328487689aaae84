//! `[[routes]]`: each route checked (naming its key), the upstreams
//! resolved once, and the table requests are matched in (CONTRACT 8.4):
//! the routes of the request's host (exact, then one-label wildcard, then
//! any host) whose `methods` allow the method, longest prefix first.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};

use http::Method;
use ipnet::IpNet;

use super::file::{self, UpstreamFile};
use super::schedule::Schedule;
use super::{AuthMode, Route, Upstream};

/// Which hosts a route serves (`routes[].host`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `""`: any host.
    Any,
    /// `app.example.test` (lower case, no port, no trailing dot).
    Exact(String),
    /// `*.example.test`: exactly one label under `example.test` (held here).
    Wildcard(String),
}

impl HostPattern {
    fn parse(raw: &str) -> Result<HostPattern, String> {
        if raw.is_empty() {
            return Ok(HostPattern::Any);
        }
        let bad = || {
            format!(
                "'{}' is not a host name, \"*.\" and a domain, or \"\" (any host); no port, no scheme",
                raw.escape_debug()
            )
        };
        if let Some(parent) = raw.strip_prefix("*.") {
            let h = normalize_host(parent).filter(|h| h == parent && !h.starts_with('['));
            return h
                .map(|h| HostPattern::Wildcard(h.into_owned()))
                .ok_or_else(bad);
        }
        match normalize_host(raw) {
            Some(h) if h == raw => Ok(HostPattern::Exact(raw.to_string())),
            _ => Err(bad()),
        }
    }

    /// Does this pattern serve `host` (already normalized)?
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(parent) => parent_of(host) == Some(parent.as_str()),
        }
    }

    /// As written in the config (`""` for any host).
    pub fn as_written(&self) -> String {
        match self {
            HostPattern::Any => String::new(),
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Wildcard(p) => format!("*.{p}"),
        }
    }
}

/// `a.example.test` → `example.test`: what a one-label wildcard matches on.
fn parent_of(host: &str) -> Option<&str> {
    if host.starts_with('[') {
        return None;
    }
    host.split_once('.')
        .map(|(_, rest)| rest)
        .filter(|r| !r.is_empty())
}

/// A request's host as routes are matched on it: ASCII lower case, without
/// its port and without one trailing dot; an IPv6 literal keeps its
/// brackets (`[::1]`). `None` for anything that is not a host (empty,
/// spaces, a userinfo `@`, a bad port): such a request matches no host
/// route. Borrowed when already normal (the common case).
pub fn normalize_host(raw: &str) -> Option<Cow<'_, str>> {
    let host = if raw.starts_with('[') {
        let end = raw.find(']')?;
        let (lit, rest) = raw.split_at(end + 1);
        if !(rest.is_empty() || valid_port(rest.strip_prefix(':')?)) {
            return None;
        }
        lit[1..end].parse::<std::net::Ipv6Addr>().ok()?;
        lit
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if valid_port(port) => h,
            Some(_) => return None,
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let ok = !host.is_empty()
        && host.len() <= 253
        && (host.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
                && !host.starts_with('.')
                && !host.contains(".."));
    if !ok {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// Does `route` take requests of `method`? `[]` takes every method, and a
/// route that takes GET takes HEAD (the same request without a body).
pub fn method_allowed(list: &[Method], method: &Method) -> bool {
    list.is_empty()
        || list.contains(method)
        || (*method == Method::HEAD && list.contains(&Method::GET))
}

/// The routes compiled for matching: per exact host, per wildcard parent,
/// and for any host; each list longest prefix first (indices into
/// `Config::routes`). Built once per config.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    exact: HashMap<String, Vec<usize>>,
    wildcard: HashMap<String, Vec<usize>>,
    any: Vec<usize>,
    /// Some route names a host: only then is the request's host read.
    pub by_host: bool,
}

impl RouteTable {
    pub(super) fn build(routes: &[Route]) -> RouteTable {
        let mut t = RouteTable::default();
        // `routes` are sorted longest prefix first; each list keeps that.
        for (i, r) in routes.iter().enumerate() {
            match &r.host {
                HostPattern::Any => t.any.push(i),
                HostPattern::Exact(h) => t.exact.entry(h.clone()).or_default().push(i),
                HostPattern::Wildcard(p) => t.wildcard.entry(p.clone()).or_default().push(i),
            }
        }
        t.by_host = !t.exact.is_empty() || !t.wildcard.is_empty();
        t
    }

    /// The route of a request: its normalized `host` (`None`: no usable
    /// host, so only any-host routes), method and normalized path.
    pub fn find(
        &self,
        routes: &[Route],
        host: Option<&str>,
        method: &Method,
        path: &str,
    ) -> Option<usize> {
        let first = |list: &[usize]| {
            list.iter().copied().find(|&i| {
                let r = &routes[i];
                crate::request_path::prefix_matches(&r.prefix, path)
                    && method_allowed(&r.methods, method)
            })
        };
        if let Some(h) = host.filter(|_| self.by_host) {
            if let Some(i) = self.exact.get(h).and_then(|l| first(l)) {
                return Some(i);
            }
            if let Some(i) = parent_of(h)
                .and_then(|p| self.wildcard.get(p))
                .and_then(|l| first(l))
            {
                return Some(i);
            }
        }
        first(&self.any)
    }
}

fn parse_methods(key: &str, list: &[String], p: &mut Vec<String>) -> Vec<Method> {
    let mut out = Vec::new();
    for (j, m) in list.iter().enumerate() {
        let token = !m.is_empty() && m.len() <= 32 && m.bytes().all(|b| b.is_ascii_uppercase());
        match Method::from_bytes(m.as_bytes()) {
            Ok(method) if token => out.push(method),
            _ => p.push(format!(
                "{key}[{j}]: '{}' is not an HTTP method in upper case (GET, POST, …)",
                m.escape_debug()
            )),
        }
    }
    out
}

/// CIDRs or single addresses (`server.trusted_proxies`, `routes[].networks`).
pub(super) fn parse_networks(key: &str, list: &[String], p: &mut Vec<String>) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, c) in list.iter().enumerate() {
        match c.parse::<IpNet>() {
            Ok(n) => out.push(n.trunc()),
            Err(_) => match c.parse::<IpAddr>() {
                Ok(a) => out.push(IpNet::from(a)),
                Err(_) => p.push(format!("{key}[{i}]: '{c}' is not a CIDR or IP address")),
            },
        }
    }
    out
}

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
            host: String::new(),
            methods: vec![],
            public_methods: vec![],
            networks: vec![],
            roles_all: vec![],
            schedule: String::new(),
            identity_assertion: false,
            assertion_audience: String::new(),
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
        let host = HostPattern::parse(&r.host).unwrap_or_else(|e| {
            p.push(format!("{key}.host: {e}"));
            HostPattern::Any
        });
        let methods = parse_methods(&format!("{key}.methods"), &r.methods, p);
        let public_methods = parse_methods(&format!("{key}.public_methods"), &r.public_methods, p);
        let same_methods = |o: &Route| {
            let (mut a, mut b) = (o.methods.clone(), methods.clone());
            a.sort_by(|x, y| x.as_str().cmp(y.as_str()));
            b.sort_by(|x, y| x.as_str().cmp(y.as_str()));
            a == b
        };
        if routes
            .iter()
            .any(|o| o.prefix == r.prefix && o.host == host && same_methods(o))
        {
            p.push(format!("{key}.prefix: '{}' is defined twice", r.prefix));
        }
        let networks = parse_networks(&format!("{key}.networks"), &r.networks, p);
        for (j, role) in r.roles_all.iter().enumerate() {
            if !crate::names::valid_role(role) {
                p.push(format!(
                    "{key}.roles_all[{j}]: '{role}' is not a valid role name"
                ));
            }
        }
        let schedule = if r.schedule.is_empty() {
            None
        } else {
            Schedule::parse(&r.schedule)
                .map_err(|e| p.push(format!("{key}.schedule: {e}")))
                .ok()
        };
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
        let assertion_audience = if r.assertion_audience.is_empty() {
            upstreams
                .first()
                .map(|u| format!("{}://{}", if u.tls { "https" } else { "http" }, u.authority))
                .unwrap_or_default()
        } else {
            if r.assertion_audience.chars().any(char::is_control) {
                p.push(format!(
                    "{key}.assertion_audience: must be a printable string"
                ));
            }
            r.assertion_audience.clone()
        };
        routes.push(Route {
            index: i,
            label: match &host {
                HostPattern::Any => r.prefix.clone(),
                h => format!("{}{}", h.as_written(), r.prefix),
            },
            host,
            methods,
            public_methods,
            networks,
            roles_all: r.roles_all,
            schedule,
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
            identity_assertion: r.identity_assertion,
            assertion_audience,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_normalize_to_one_spelling() {
        for (raw, want) in [
            ("app.example.test", Some("app.example.test")),
            ("APP.Example.Test", Some("app.example.test")),
            ("app.example.test.", Some("app.example.test")),
            ("app.example.test:8443", Some("app.example.test")),
            ("app.example.test.:80", Some("app.example.test")),
            ("[::1]", Some("[::1]")),
            ("[::1]:8080", Some("[::1]")),
            ("127.0.0.1:9", Some("127.0.0.1")),
            ("", None),
            ("[::1", None),
            ("[zz]", None),
            ("a b", None),
            ("u@app.example.test", None),
            ("app.example.test:x", None),
            ("app..example.test", None),
            (".app", None),
        ] {
            assert_eq!(normalize_host(raw).as_deref(), want, "{raw:?}");
        }
    }

    #[test]
    fn host_patterns() {
        assert_eq!(HostPattern::parse("").unwrap(), HostPattern::Any);
        let w = HostPattern::parse("*.example.test").unwrap();
        assert!(w.matches("a.example.test"));
        assert!(!w.matches("a.b.example.test"));
        assert!(!w.matches("example.test"));
        assert_eq!(w.as_written(), "*.example.test");
        for bad in [
            "*.*.x.test",
            "x.test:1",
            "X.test",
            "*",
            "*.",
            "https://x.test",
            "[::1]:1",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(method_allowed(&[], &Method::DELETE));
        assert!(method_allowed(&[Method::GET], &Method::HEAD));
        assert!(!method_allowed(&[Method::HEAD], &Method::GET));
        assert!(!method_allowed(&[Method::GET], &Method::POST));
    }
}
