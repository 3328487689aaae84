//! Logging: `tracing` with a human format by default or JSON, Pingora's
//! `log` records bridged in, and audit events optionally split into their
//! own file (`log.audit_file`).
//!
//! Lines we do not write ourselves come through the `log` bridge, and they
//! quote request targets verbatim (Pingora's "Fail to proxy: …, GET
//! /auth/password/reset?token=…"), which would put reset and verification
//! tokens in the log. The bridge ([`ScrubbingLog`]) removes every query
//! string from those records before they become `tracing` events. Our own
//! lines never log a query; the log mail transport's links are ours and
//! deliberate (development only).

use std::borrow::Cow;
use std::sync::Mutex;

use tracing_log::{AsLog, LogTracer};

use tracing_subscriber::filter::{filter_fn, EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

use crate::config::{LogConfig, LogFormat};

/// The `tracing` target of the access log (`log.access_file` can route it
/// to its own file; `crate::proxy::access` writes it).
pub const ACCESS: &str = "access";

pub fn init(cfg: &LogConfig) -> Result<(), String> {
    let spec = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .filter(|s| EnvFilter::try_new(s).is_ok())
        .unwrap_or_else(|| cfg.level.clone());
    let mut filter = EnvFilter::try_new(&spec).map_err(|e| format!("log.level: {e}"))?;
    // Below info, Pingora dumps whole request headers (Authorization
    // included) and lettre whole SMTP exchanges (mail links with tokens).
    // Keep them at the spec's default level but never below info, unless
    // the spec names them explicitly.
    let default = spec
        .split(',')
        .rev()
        .filter(|d| !d.contains('='))
        .find_map(|d| d.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::ERROR);
    let cap = default.min(LevelFilter::INFO);
    for (target, module) in [
        ("pingora", "pingora_proxy"),
        ("pingora", "pingora_core"),
        ("lettre", "lettre"),
    ] {
        if !spec.contains(target) {
            if let Ok(d) = format!("{module}={cap}").parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    let to_audit_file = cfg.audit_file.is_some();
    // Access lines have their own layer (batched writes, see [`Batched`]).
    let not_audit =
        filter_fn(move |m| !(to_audit_file && m.target() == "audit" || m.target() == ACCESS));
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
    let only_access = || filter_fn(|m| m.target() == ACCESS);
    let access: Option<Box<dyn Layer<_> + Send + Sync>> = match (&cfg.access_file, cfg.format) {
        (_, _) if !cfg.access_log => None,
        (Some(path), _) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("log.access_file: {e}"))?;
            let out = Batched::new(Box::new(file));
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(move || out.clone())
                    .with_filter(only_access())
                    .boxed(),
            )
        }
        (None, LogFormat::Human) => {
            let out = Batched::new(Box::new(std::io::stderr()));
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(move || out.clone())
                    .with_filter(only_access())
                    .boxed(),
            )
        }
        (None, LogFormat::Json) => {
            let out = Batched::new(Box::new(std::io::stderr()));
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(move || out.clone())
                    .with_filter(only_access())
                    .boxed(),
            )
        }
    };
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(main)
        .with(audit)
        .with(access);
    tracing::subscriber::set_global_default(subscriber).map_err(|e| format!("logging: {e}"))?;
    // After the subscriber is set, so its max level is known.
    log::set_boxed_logger(Box::new(ScrubbingLog(LogTracer::new())))
        .map_err(|e| format!("logging: {e}"))?;
    log::set_max_level(tracing::level_filters::LevelFilter::current().as_log());
    Ok(())
}

/// Where access lines go: one per request is many, so they are gathered
/// and written in batches (at 64 KiB, or every 200 ms by a thread of its
/// own), never a `write(2)` per request. Each event arrives as one whole
/// line, so a batch is whole lines too and never splits one between the
/// main log's writes. Lines of the last 200 ms before a crash may be lost.
#[derive(Clone)]
struct Batched(std::sync::Arc<BatchedInner>);

struct BatchedInner {
    buf: parking_lot::Mutex<Vec<u8>>,
    out: parking_lot::Mutex<Box<dyn std::io::Write + Send>>,
}

const BATCH_BYTES: usize = 64 * 1024;

impl Batched {
    fn new(out: Box<dyn std::io::Write + Send>) -> Self {
        let b = Batched(std::sync::Arc::new(BatchedInner {
            buf: parking_lot::Mutex::new(Vec::with_capacity(BATCH_BYTES)),
            out: parking_lot::Mutex::new(out),
        }));
        let weak = std::sync::Arc::downgrade(&b.0);
        let _ = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let Some(inner) = weak.upgrade() else { break };
                inner.flush();
            });
        b
    }
}

impl BatchedInner {
    fn flush(&self) {
        use std::io::Write;
        // `out` first: batches are written in the order they were taken.
        let mut out = self.out.lock();
        let data = {
            let mut buf = self.buf.lock();
            if buf.is_empty() {
                return;
            }
            std::mem::replace(&mut *buf, Vec::with_capacity(BATCH_BYTES))
        };
        let _ = out.write_all(&data);
        let _ = out.flush();
    }
}

impl std::io::Write for Batched {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let full = {
            let mut buf = self.0.buf.lock();
            buf.extend_from_slice(data);
            buf.len() >= BATCH_BYTES
        };
        if full {
            self.0.flush();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The `log` → `tracing` bridge, with query strings scrubbed from every
/// message (all `log` records come from dependencies).
struct ScrubbingLog(LogTracer);

impl log::Log for ScrubbingLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.0.enabled(record.metadata()) {
            return;
        }
        let text = record.args().to_string();
        let scrubbed = scrub_queries(&text);
        let level = level_for(record.target(), record.level(), &text);
        if level > log::max_level() {
            return;
        }
        self.0.log(
            &log::Record::builder()
                .metadata(
                    log::Metadata::builder()
                        .level(level)
                        .target(record.target())
                        .build(),
                )
                .args(format_args!("{scrubbed}"))
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {}
}

/// The level a dependency's record is logged at. A TLS handshake that the
/// client abandons (a port scanner, a health check that only opens the
/// port, the gateway's own start-up probe) is the client's doing: Pingora
/// reports it as an error, we log it at debug, so an error in the log is
/// always worth a look.
fn level_for(target: &str, level: log::Level, text: &str) -> log::Level {
    if target.starts_with("pingora") && text.starts_with("Downstream handshake error") {
        return log::Level::Debug;
    }
    level
}

/// Replace every query string (a `?` and what follows up to whitespace or
/// a quote) with `?[redacted]`. A `?` followed by whitespace or at the end
/// is left alone, so prose survives.
pub fn scrub_queries(text: &str) -> Cow<'_, str> {
    let ends = |c: char| c.is_whitespace() || c == '"' || c == '\'';
    if !text
        .char_indices()
        .any(|(i, c)| c == '?' && text[i + 1..].chars().next().is_some_and(|n| !ends(n)))
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(q) = rest.find('?') {
        out.push_str(&rest[..q]);
        let after = &rest[q + 1..];
        let len = after.find(ends).unwrap_or(after.len());
        if len == 0 {
            out.push('?');
        } else {
            out.push_str("?[redacted]");
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::{level_for, scrub_queries};

    #[test]
    fn abandoned_handshakes_are_not_errors() {
        let l = level_for(
            "pingora_core::services::listening",
            log::Level::Error,
            "Downstream handshake error from 127.0.0.1:1: TLSHandshakeFailure",
        );
        assert_eq!(l, log::Level::Debug);
        let other = level_for("pingora_core::x", log::Level::Error, "Fail to proxy");
        assert_eq!(other, log::Level::Error);
        let ours = level_for(
            "portcullis",
            log::Level::Error,
            "Downstream handshake error",
        );
        assert_eq!(ours, log::Level::Error);
    }

    #[test]
    fn query_strings_are_scrubbed() {
        let cases = [
            (
                "Fail to proxy: Downstream WriteError, status: 0, GET /auth/password/reset?token=abc.DEF-1, Host: x",
                "Fail to proxy: Downstream WriteError, status: 0, GET /auth/password/reset?[redacted] Host: x",
            ),
            (
                "buf: \"GET /v?token=s3cr3t&b=2 HTTP/1.1\\r\\nHost: x\"",
                "buf: \"GET /v?[redacted] HTTP/1.1\\r\\nHost: x\"",
            ),
            ("uri: /a?x=1, version: HTTP/1.1", "uri: /a?[redacted] version: HTTP/1.1"),
            ("two /a?x=1 and /b?y=2", "two /a?[redacted] and /b?[redacted]"),
            ("ends with /a?", "ends with /a?"),
            ("why? because", "why? because"),
            ("no query at all", "no query at all"),
            ("\"/a?t=1\"", "\"/a?[redacted]\""),
        ];
        for (raw, want) in cases {
            assert_eq!(scrub_queries(raw), want, "{raw}");
        }
    }
}
