//! Audit events: one structured `tracing` event per auth event, on the
//! `audit` target (which `log.audit_file` can route to its own file).
//! Never pass a password, a token or a token hash here.
//!
//! Besides the log line, the events that describe a change are stored in
//! the store as a hash chain ([`chain`]), in the same operation as the
//! change (see `store::Effects`).

pub mod chain;
pub mod query;

pub use chain::{AuditEvent, AuditRecord};

use std::net::IpAddr;

pub struct AuditCtx<'a> {
    pub ip: IpAddr,
    pub user_agent: &'a str,
    pub request_id: &'a str,
}

pub fn event(ctx: &AuditCtx<'_>, event: &str, outcome: &str, user_id: Option<&str>) {
    tracing::info!(
        target: "audit",
        event,
        outcome,
        user_id = user_id.unwrap_or(""),
        client_ip = %ctx.ip,
        user_agent = ctx.user_agent,
        request_id = ctx.request_id,
        "audit"
    );
}

/// An API key event (created, used, revoked): names the key by its id,
/// never the key itself.
pub fn key_event(ctx: &AuditCtx<'_>, event: &str, key_id: &str, user_id: &str) {
    tracing::info!(
        target: "audit",
        event,
        outcome = "success",
        api_key_id = key_id,
        user_id,
        client_ip = %ctx.ip,
        user_agent = ctx.user_agent,
        request_id = ctx.request_id,
        "audit"
    );
}

/// An administrator's action on a user (`AdminCommand`), naming who acted:
/// the signed-in console user, or the CLI / admin API (`admin` empty).
pub fn admin_event(
    ctx: &AuditCtx<'_>,
    event: &str,
    outcome: &str,
    user_id: Option<&str>,
    admin: &AdminActor<'_>,
) {
    tracing::info!(
        target: "audit",
        event,
        outcome,
        user_id = user_id.unwrap_or(""),
        admin_id = admin.id,
        admin_email = admin.email,
        client_ip = %ctx.ip,
        user_agent = ctx.user_agent,
        request_id = ctx.request_id,
        "audit"
    );
}

/// Who ran an admin command from the console.
#[derive(Debug, Clone, Copy)]
pub struct AdminActor<'a> {
    pub id: &'a str,
    pub email: &'a str,
}
