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
