//! Mail: messages are composed here, written to the durable outbox by the
//! request that caused them (in the same store operation), and delivered by
//! the [`outbox::OutboxWorker`] through a [`Transport`]: SMTP via lettre, or
//! the log for development.

pub mod http;
pub mod outbox;

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use uuid::Uuid;

use crate::config::{MailConfig, MailTransportKind, SmtpSecurity};
use crate::store::OutboxMessage;

#[async_trait::async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Deliver one message; the error text is for the operator's log only.
    async fn send(&self, msg: &OutboxMessage) -> Result<(), String>;
}

pub fn compose(kind: &str, to: &str, subject: &str, body: String, now: i64) -> OutboxMessage {
    OutboxMessage {
        id: Uuid::new_v4(),
        kind: kind.into(),
        to: to.into(),
        subject: subject.into(),
        body,
        created_at: now,
        attempts: 0,
        next_attempt_at: now,
        failed: false,
        last_error: None,
        failed_at: None,
        claim: None,
        http: None,
    }
}

pub fn verification_mail(base: &str, to: &str, token: &str, now: i64) -> OutboxMessage {
    let link = format!("{base}/auth/email/verify?token={token}");
    compose(
        "verification",
        to,
        "Confirm your email address",
        format!("Hello,\n\nconfirm your email address by opening this link:\n\n{link}\n\nIf you did not create an account, ignore this message.\n"),
        now,
    )
}

pub fn reset_mail(base: &str, to: &str, token: &str, ttl_secs: u64, now: i64) -> OutboxMessage {
    let link = format!("{base}/auth/password/reset?token={token}");
    compose(
        "reset",
        to,
        "Reset your password",
        format!("Hello,\n\nsomeone asked to reset the password of this account. To choose a new password, open this link within {} minutes:\n\n{link}\n\nIf it was not you, ignore this message; your password stays as it is.\n", ttl_secs / 60),
        now,
    )
}

pub fn password_changed_mail(to: &str, now: i64) -> OutboxMessage {
    compose(
        "password_changed",
        to,
        "Your password was changed",
        "Hello,\n\nthe password of your account was just changed, and every session was signed out.\n\nIf this was not you, reset your password at once.\n".into(),
        now,
    )
}

pub fn account_exists_mail(base: &str, to: &str, now: i64) -> OutboxMessage {
    compose(
        "account_exists",
        to,
        "Someone tried to register with your address",
        format!("Hello,\n\nsomeone tried to create an account with this email address, which already has one. If it was you, sign in or reset your password at:\n\n{base}/auth/password/reset\n\nOtherwise, ignore this message.\n"),
        now,
    )
}

/// The `Message-ID` of an outbox message: derived from its id, so every
/// attempt at one message carries the same one (a receiver that already
/// has it, because the answer to an earlier attempt was lost, can drop
/// the copy), on the host of `mail.from` (else of `mail.link_base_url`).
pub fn message_id(msg: &OutboxMessage, host: &str) -> String {
    format!("<{}@{host}>", msg.id)
}

/// The host `Message-ID`s are on: `mail.from`'s domain, else the host of
/// `mail.link_base_url`, else "localhost".
pub fn message_id_host(cfg: &MailConfig) -> String {
    let from_domain = cfg
        .from
        .parse::<Mailbox>()
        .ok()
        .map(|m| m.email.domain().trim_matches(['[', ']']).to_string())
        .filter(|d| !d.is_empty());
    from_domain
        .or_else(|| {
            url::Url::parse(&cfg.link_base_url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
        })
        .unwrap_or_else(|| "localhost".to_string())
}

/// The `Date` of an outbox message: when it was composed (RFC 5322: when
/// it was complete and ready to enter the mail system), the same on every
/// attempt.
fn message_date(msg: &OutboxMessage) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(msg.created_at.max(0) as u64)
}

// ----- security notices (CONTRACT 8.6): they name the event and when it
// happened, never a token, key, secret or code.

/// A notice to the account's owner that `what` happened to the account.
fn security_notice(kind: &str, to: &str, subject: &str, what: &str, now: i64) -> OutboxMessage {
    compose(
        kind,
        to,
        subject,
        format!(
            "Hello,\n\n{what} ({at}).\n\nIf this was you, there is nothing to do. If it was not, reset your password at once and check your account's sessions, passkeys and API keys.\n",
            at = crate::clock::rfc3339(now),
        ),
        now,
    )
}

pub fn totp_enabled_mail(to: &str, now: i64) -> OutboxMessage {
    security_notice(
        "totp_enabled",
        to,
        "Two-step verification was turned on",
        "two-step verification (an authenticator app) was just turned on for your account",
        now,
    )
}

pub fn totp_disabled_mail(to: &str, now: i64) -> OutboxMessage {
    security_notice(
        "totp_disabled",
        to,
        "Two-step verification was turned off",
        "two-step verification was just turned off for your account",
        now,
    )
}

pub fn passkey_added_mail(to: &str, now: i64) -> OutboxMessage {
    security_notice(
        "passkey_added",
        to,
        "A passkey was added to your account",
        "a new passkey was just added to your account; it can sign in without your password",
        now,
    )
}

pub fn api_key_created_mail(to: &str, now: i64) -> OutboxMessage {
    security_notice(
        "api_key_created",
        to,
        "An API key was created for your account",
        "a new API key was just created for your account",
        now,
    )
}

/// For linking a federated identity (issue 22), named by its provider.
pub fn identity_linked_mail(to: &str, provider: &str, now: i64) -> OutboxMessage {
    security_notice(
        "identity_linked",
        to,
        "A sign-in was linked to your account",
        &format!("a sign-in with {provider} was just linked to your account"),
        now,
    )
}

/// Writes the whole message to the log (development).
pub struct LogTransport;

#[async_trait::async_trait]
impl Transport for LogTransport {
    async fn send(&self, msg: &OutboxMessage) -> Result<(), String> {
        tracing::info!(
            target: "mail",
            to = %msg.to,
            subject = %msg.subject,
            kind = %msg.kind,
            message_id = %msg.id,
            "mail (log transport):\n{}",
            msg.body
        );
        Ok(())
    }
}

pub struct SmtpTransport {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The host of every `Message-ID` (see [`message_id`]).
    id_host: String,
    /// Bound on one whole delivery: lettre's async client applies its own
    /// timeout only to connecting, so a server that accepts and then stalls
    /// would otherwise hold the outbox worker indefinitely.
    timeout: Duration,
}

impl SmtpTransport {
    pub fn new(cfg: &MailConfig) -> Result<Self, String> {
        let from: Mailbox = cfg.from.parse().map_err(|_| "mail.from is invalid")?;
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.smtp_host.clone())
            .port(cfg.smtp_port)
            .timeout(Some(Duration::from_secs(cfg.smtp_timeout_secs)));
        let tls_params = || -> Result<TlsParameters, String> {
            let mut p = TlsParameters::builder(cfg.smtp_host.clone());
            if let Some(ca) = &cfg.smtp_ca_file {
                let pem = std::fs::read(ca).map_err(|e| format!("mail.smtp_ca_file: {e}"))?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|_| "mail.smtp_ca_file: not a PEM certificate".to_string())?;
                p = p.add_root_certificate(cert);
            }
            p.build_rustls().map_err(|e| format!("SMTP TLS setup: {e}"))
        };
        b = match cfg.smtp_security {
            SmtpSecurity::None => b.tls(Tls::None),
            SmtpSecurity::StartTls => b.tls(Tls::Required(tls_params()?)),
            SmtpSecurity::Tls => b.tls(Tls::Wrapper(tls_params()?)),
        };
        if let (Some(u), Some(p)) = (&cfg.smtp_username, &cfg.smtp_password) {
            b = b.credentials(Credentials::new(u.0.clone(), p.0.clone()));
        }
        Ok(Self {
            transport: b.build(),
            from,
            id_host: message_id_host(cfg),
            timeout: Duration::from_secs(cfg.smtp_timeout_secs),
        })
    }
}

#[async_trait::async_trait]
impl Transport for SmtpTransport {
    async fn send(&self, msg: &OutboxMessage) -> Result<(), String> {
        let to: Mailbox = msg
            .to
            .parse()
            .map_err(|_| "invalid recipient".to_string())?;
        let email = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(msg.subject.clone())
            .message_id(Some(message_id(msg, &self.id_host)))
            .date(message_date(msg))
            .header(ContentType::TEXT_PLAIN)
            .body(msg.body.clone())
            .map_err(|e| format!("building message: {e}"))?;
        match tokio::time::timeout(self.timeout, self.transport.send(email)).await {
            Ok(sent) => sent.map(|_| ()).map_err(|e| format!("SMTP: {e}")),
            Err(_) => Err(format!("SMTP: no answer within {:?}", self.timeout)),
        }
    }
}

pub fn transport_for(cfg: &MailConfig) -> Result<std::sync::Arc<dyn Transport>, String> {
    Ok(match cfg.transport {
        MailTransportKind::Log => std::sync::Arc::new(LogTransport),
        MailTransportKind::Smtp => std::sync::Arc::new(SmtpTransport::new(cfg)?),
    })
}
