//! What `check-config` and a start or reload say about a valid config that
//! is still probably not what the operator meant.

use super::Config;

/// The log transport writes every reset and verification link to the log;
/// with a public listener beyond loopback, whoever reads the log can take
/// over accounts. Said loudly at start and on a reload (issue 12); a
/// development set-up on loopback stays quiet.
pub fn warn_if_links_are_logged(cfg: &Config) {
    if cfg.mail.transport != super::MailTransportKind::Log {
        return;
    }
    let exposed: Vec<String> = [cfg.server.listen, cfg.server.tls_listen]
        .into_iter()
        .flatten()
        .filter(|a| !a.ip().is_loopback())
        .map(|a| a.to_string())
        .collect();
    if !exposed.is_empty() {
        tracing::warn!(
            listeners = %exposed.join(", "),
            "mail.transport = \"log\" writes every password-reset and email-verification \
             link to this log, and the gateway listens beyond loopback: anyone who can read \
             the log can take over accounts. Set mail.transport = \"smtp\" before real users \
             arrive"
        );
    }
}

/// What `check-config` warns about (the config is valid all the same):
/// routes that can never match, because an earlier route of the same host
/// and prefix takes every method they take; `public_methods` that let
/// anonymous callers change state.
pub fn warnings(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let takes_all = |outer: &[http::Method], inner: &[http::Method]| {
        outer.is_empty()
            || (!inner.is_empty() && inner.iter().all(|m| super::method_allowed(outer, m)))
    };
    for (j, r) in cfg.routes.iter().enumerate() {
        // Matching tries routes in this (sorted) order within a host.
        if let Some(o) = cfg.routes[..j]
            .iter()
            .find(|o| o.host == r.host && o.prefix == r.prefix && takes_all(&o.methods, &r.methods))
        {
            out.push(format!(
                "routes[{}]: can never match: routes[{}] (host '{}', prefix '{}') takes every request it would",
                r.index,
                o.index,
                o.host.as_written(),
                o.prefix
            ));
        }
        for m in &r.public_methods {
            if !matches!(m.as_str(), "GET" | "HEAD" | "OPTIONS") {
                out.push(format!(
                    "routes[{}].public_methods: {m} changes state, and passes without identity",
                    r.index
                ));
            }
        }
    }
    out
}
