//! Why a token or an API key was refused: the `result` labels of
//! `portcullis_token_checks_total`. A leaf, so metrics import it without
//! climbing up.

/// Why a token was refused; also the `result` label of
/// `portcullis_token_checks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    Missing,
    Invalid,
    Expired,
    Revoked,
}

impl TokenRejection {
    pub fn label(self) -> &'static str {
        match self {
            TokenRejection::Missing => "missing",
            TokenRejection::Invalid => "invalid",
            TokenRejection::Expired => "expired",
            TokenRejection::Revoked => "revoked",
        }
    }
}

/// Why a presented key was refused (the `result` label of
/// `portcullis_token_checks_total`: `api_key_invalid`, `api_key_expired`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRejection {
    /// Unknown, deleted, malformed, or its owner is disabled.
    Invalid,
    Expired,
}
