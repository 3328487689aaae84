//! The access log (issue 24): one line per request the proxy served, in
//! Pingora's `logging` phase, through `tracing` with the target `access`
//! (`log.access_log` turns it off, `log.access_file` sends it to its own
//! file). A line names the method, the host (bounded: see [`HostLabels`]),
//! the path WITHOUT its query (a query can carry a reset or verification
//! token), the status, the route index, the rule of a refusal, the
//! duration, the request id and the client IP. Never a token or a cookie.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::config::{Config, HostPattern};

/// The `tracing` target of the access log.
pub const TARGET: &str = crate::logging::ACCESS;

/// The host label of a request, with bounded cardinality: a host some
/// route names exactly, or the portal's host (`mail.link_base_url`), as
/// itself; a host under a one-label wildcard route as that pattern
/// (`*.example.test`); anything else `other`. Built once per config, so a
/// request pays one hash lookup (two for a wildcard).
#[derive(Debug, Default)]
pub struct HostLabels {
    exact: HashSet<String>,
    /// Wildcard parent (`example.test`) → its label (`*.example.test`).
    wildcard: HashMap<String, String>,
}

/// The label of a host that no route (and not the portal) names.
pub const OTHER: &str = "other";

impl HostLabels {
    pub fn build(cfg: &Config) -> Self {
        let mut labels = HostLabels::default();
        for r in &cfg.routes {
            match &r.host {
                HostPattern::Any => {}
                HostPattern::Exact(h) => {
                    labels.exact.insert(h.clone());
                }
                HostPattern::Wildcard(p) => {
                    labels.wildcard.insert(p.clone(), format!("*.{p}"));
                }
            }
        }
        if let Some(h) = url::Url::parse(&cfg.mail.link_base_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .and_then(|h| crate::config::normalize_host(&h).map(|n| n.into_owned()))
        {
            labels.exact.insert(h);
        }
        labels
    }

    /// The label of the host a request names (as sent: normalized here).
    pub fn label(&self, raw: Option<&str>) -> &str {
        let Some(host) = raw.and_then(crate::config::normalize_host) else {
            return OTHER;
        };
        if let Some(h) = self.exact.get(&*host) {
            return h;
        }
        if !host.starts_with('[') {
            if let Some(l) = host
                .split_once('.')
                .and_then(|(_, parent)| self.wildcard.get(parent))
            {
                return l;
            }
        }
        OTHER
    }
}

/// The path of a request target, without its query (and without a
/// fragment, which clients should not send), bounded to 512 bytes.
pub fn path_only(raw: &[u8]) -> String {
    let end = raw
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(raw.len());
    let path = &raw[..end.min(512)];
    String::from_utf8_lossy(path).into_owned()
}

/// What one access line says.
pub struct Line<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub route: Option<usize>,
    pub rule: Option<&'static str>,
    pub duration_us: u64,
    pub request_id: &'a str,
    pub client_ip: Option<IpAddr>,
}

/// Write one access line (at info, target `access`).
pub fn write(l: &Line<'_>) {
    tracing::info!(
        target: TARGET,
        method = l.method,
        host = l.host,
        path = l.path,
        status = l.status,
        route = l.route.map(|i| i as u64),
        rule = l.rule,
        duration_us = l.duration_us,
        request_id = l.request_id,
        client_ip = l.client_ip.map(tracing::field::display),
        "access"
    );
}

#[cfg(test)]
mod tests {
    use super::path_only;

    #[test]
    fn the_query_never_reaches_the_line() {
        assert_eq!(path_only(b"/a/b?token=s3cr3t"), "/a/b");
        assert_eq!(path_only(b"/a#frag?x"), "/a");
        assert_eq!(path_only(b"/plain"), "/plain");
        assert_eq!(path_only(&[b'/'; 2000]).len(), 512);
    }
}
