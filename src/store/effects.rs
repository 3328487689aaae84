//! What a change causes besides itself ([`Effects`]: outbox entries and
//! audit events, written in the same atomic step), and the audit chain's
//! state.

use super::{AuditCheckpoint, AuditEvent, AuditHead, OutboxMessage};

/// What a change causes besides itself, written in the same atomic step as
/// the change (an acknowledged change always has its mail queued and its
/// audit events in the chain). The service builds it; a backend writes
/// every part of it with [`Effects`]-taking operations (sled:
/// `Tx::apply_effects`, PostgreSQL: `apply_effects`), so a new kind of
/// effect (a webhook delivery) is one field here and one line there.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// Mail queued in the outbox.
    pub outbox: Vec<OutboxMessage>,
    /// Audit events appended to the chain (in this order).
    pub audit: Vec<AuditEvent>,
}

impl Effects {
    pub fn none() -> Self {
        Self::default()
    }

    /// Add a mail (if any).
    pub fn mail(mut self, m: impl Into<Option<OutboxMessage>>) -> Self {
        self.outbox.extend(m.into());
        self
    }

    /// Add an audit event.
    pub fn audit(mut self, e: AuditEvent) -> Self {
        self.audit.push(e);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.outbox.is_empty() && self.audit.is_empty()
    }
}

impl From<Option<OutboxMessage>> for Effects {
    fn from(m: Option<OutboxMessage>) -> Self {
        Effects::none().mail(m)
    }
}

impl From<OutboxMessage> for Effects {
    fn from(m: OutboxMessage) -> Self {
        Effects::none().mail(m)
    }
}

impl From<AuditEvent> for Effects {
    fn from(e: AuditEvent) -> Self {
        Effects::none().audit(e)
    }
}

/// The audit chain's state: its newest record and the checkpoint it
/// starts from (when retention has cut it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditState {
    pub head: AuditHead,
    pub checkpoint: Option<AuditCheckpoint>,
}
