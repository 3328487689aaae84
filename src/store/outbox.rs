//! The outbox: mail and HTTP deliveries (webhooks, back-channel logouts)
//! written with the change that causes them, and their delivery attempts.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutboxMessage {
    pub id: Uuid,
    /// verification, reset, password_changed, account_exists
    pub kind: String,
    pub to: String,
    pub subject: String,
    pub body: String,
    pub created_at: i64,
    pub attempts: u32,
    pub next_attempt_at: i64,
    /// Set when delivery failed for good; kept (for the retention period),
    /// never dropped silently.
    pub failed: bool,
    pub last_error: Option<String>,
    /// When it failed for good.
    #[serde(default)]
    pub failed_at: Option<i64>,
    /// The sender that has claimed it for an attempt now, if any.
    #[serde(default)]
    pub claim: Option<Claim>,
    /// An HTTP POST instead of a mail (`body` is then the request's body,
    /// `to` its URL for the log): a webhook, a back-channel logout. Absent
    /// on every record written before HTTP deliveries existed, which so
    /// read as mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpPost>,
}

impl OutboxMessage {
    /// Whether this entry is a mail (not an HTTP delivery).
    pub fn is_mail(&self) -> bool {
        self.http.is_none()
    }
}

/// What an HTTP delivery needs besides its body: where, with which extra
/// headers, trusting which CA, how long to wait, and how to sign it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HttpPost {
    pub url: String,
    /// Sent as they are (e.g. `content-type`).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Extra trusted CAs for the receiver's certificate.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// The bound on one attempt.
    pub timeout_secs: u64,
    /// Signed at each attempt (the signature covers the attempt's time)
    /// with the Standard Webhooks key named by this environment variable
    /// (a `[[webhooks]] secret_env`); never the key itself.
    #[serde(default)]
    pub sign_with: Option<String>,
}

/// A sender's claim on a message: which store instance, and until when.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claim {
    pub by: Uuid,
    pub until: i64,
}

/// The result of one delivery attempt, applied to the current message.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Sent,
    /// Failed; retry at `retry_at`, or give up when `give_up`.
    Failed {
        error: String,
        retry_at: i64,
        give_up: bool,
        now: i64,
    },
    /// Not tried in this pass (its receiver just failed, or the pass ran
    /// out of time): released, due again at `until`, its attempts
    /// unchanged.
    Deferred {
        until: i64,
    },
}
