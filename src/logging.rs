//! Logging: `tracing` with a human format by default or JSON, Pingora's
//! `log` records bridged in, and audit events optionally split into their
//! own file (`log.audit_file`).

use std::sync::Mutex;

use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::{LogConfig, LogFormat};

pub fn init(cfg: &LogConfig) -> Result<(), String> {
    let spec = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .filter(|s| EnvFilter::try_new(s).is_ok())
        .unwrap_or_else(|| cfg.level.clone());
    let mut filter = EnvFilter::try_new(&spec).map_err(|e| format!("log.level: {e}"))?;
    // Below info, Pingora dumps whole request headers (Authorization
    // included) and lettre whole SMTP exchanges (mail links with tokens).
    // Keep them at info unless the spec names them explicitly.
    for (target, directive) in [
        ("pingora", "pingora_proxy=info"),
        ("pingora", "pingora_core=info"),
        ("lettre", "lettre=info"),
    ] {
        if !spec.contains(target) {
            if let Ok(d) = directive.parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    let to_audit_file = cfg.audit_file.is_some();
    let not_audit = filter_fn(move |m| !(to_audit_file && m.target() == "audit"));
    let main: Box<dyn Layer<_> + Send + Sync> = match cfg.format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(not_audit)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(not_audit)
            .boxed(),
    };
    let audit = match &cfg.audit_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("log.audit_file: {e}"))?;
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    // One flat object per line: timestamp, event, outcome,
                    // user_id, client_ip, user_agent, request_id.
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(Mutex::new(file))
                    .with_filter(filter_fn(|m| m.target() == "audit")),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(main)
        .with(audit)
        .try_init()
        .map_err(|e| format!("logging: {e}"))
}
