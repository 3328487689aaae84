//! The records a bulk copy moves ([`Store::export`], [`Store::import`]):
//! their kinds, the records themselves, and a page of them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::*;

/// The kinds of record a store holds, for bulk copies
/// ([`Store::export`], [`Store::import`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Users,
    Sessions,
    /// Revoked tokens and sessions, and per-user cutoffs.
    Revocations,
    OneTimeTokens,
    /// The newest issue sequence per user and kind of one-time token.
    OneTimeSeqs,
    Counters,
    Mail,
    /// Linked identities at outside providers (CONTRACT 8.1).
    Identities,
    /// The audit chain's records and its checkpoint.
    Audit,
}

impl RecordKind {
    pub const ALL: [RecordKind; 9] = [
        RecordKind::Users,
        RecordKind::Sessions,
        RecordKind::Revocations,
        RecordKind::OneTimeTokens,
        RecordKind::OneTimeSeqs,
        RecordKind::Counters,
        RecordKind::Mail,
        RecordKind::Identities,
        RecordKind::Audit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Users => "users",
            RecordKind::Sessions => "sessions",
            RecordKind::Revocations => "revocations",
            RecordKind::OneTimeTokens => "one_time_tokens",
            RecordKind::OneTimeSeqs => "one_time_sequences",
            RecordKind::Counters => "counters",
            RecordKind::Mail => "mail",
            RecordKind::Identities => "identities",
            RecordKind::Audit => "audit",
        }
    }
}

/// One stored record, whole, as a bulk copy moves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "record", rename_all = "snake_case")]
pub enum Record {
    User(User),
    Session(SessionRecord),
    Revocation(Revocation),
    OneTimeToken {
        hash: String,
        token: OneTimeToken,
    },
    OneTimeSeq {
        user_id: Uuid,
        kind: OneTimeKind,
        seq: u64,
    },
    Counter {
        key: String,
        counter: Counter,
    },
    Mail(OutboxMessage),
    Identity(LinkedIdentity),
    /// One record of the audit chain, as stored (hashes included).
    Audit(AuditRecord),
    /// Where a chain cut by retention starts.
    AuditCheckpoint(AuditCheckpoint),
}

/// A page of an export: its records, and where the next page starts
/// (`None`: this was the last).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub records: Vec<Record>,
    pub next: Option<String>,
}
