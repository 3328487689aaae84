//! Portcullis: a reverse-proxy authentication gateway on Pingora.
//!
//! `main.rs` only parses the command line; everything else is reachable from
//! here so integration tests boot exactly what the binary runs
//! ([`server::start`]).

pub mod accounts;
pub mod admin;
pub mod audit;
pub mod browser;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod entropy;
pub mod error;
pub mod executor;
pub mod federation;
pub mod fsutil;
pub mod http;
pub mod logging;
pub mod mail;
pub mod metrics;
pub mod names;
pub mod net;
pub mod oidc_provider;
pub mod openapi;
pub mod outbound;
pub mod portal;
pub mod proxy;
pub mod reload;
pub mod request_path;
pub mod server;
pub mod store;
pub mod tls;
pub mod tokens;
pub mod useragent;
pub mod webhooks;
pub mod wire;

use std::sync::Arc;

pub use config::Config;
pub use server::{start, GatewayHandle};

/// Run the gateway until SIGTERM/SIGINT, with the real clock; SIGHUP reads
/// the config from `source` again (see [`reload`]).
pub fn run(config: Config, source: Option<reload::ConfigSource>) -> Result<(), String> {
    raise_file_limit(config.limits.max_connections);
    let handle = server::start_with_source(config, source, Arc::new(clock::SystemClock), true)?;
    tracing::info!(
        listen = ?handle.listen,
        tls_listen = ?handle.tls_listen,
        admin_listen = ?handle.admin_listen,
        "portcullis is running"
    );
    // Every listener accepts (`start` waited for the readiness probe):
    // tell a `Type=notify` systemd unit.
    sd_notify("READY=1");
    handle.wait();
    Ok(())
}

/// Send `state` (`READY=1`, `STOPPING=1`) to the service manager's
/// notification socket (`$NOTIFY_SOCKET`, systemd's `Type=notify`); does
/// nothing without one. A failure is logged, never fatal.
pub fn sd_notify(state: &str) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_bytes();
        match bytes.strip_prefix(b"@") {
            #[cfg(target_os = "linux")]
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)
            }
            _ => sock.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(cause = %e, state, "could not notify the service manager");
    }
}

/// Raise this process's soft `RLIMIT_NOFILE` to its hard limit (as nginx's
/// `worker_rlimit_nofile` or Go's runtime do): the soft limit is often 1024,
/// far below `limits.max_connections`. Warns when even the hard limit
/// leaves too few descriptors for the cap (one per client connection,
/// with room for upstream connections, the store and logs).
pub fn raise_file_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let now = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(soft, hard, cause = %e, "could not raise the open-file limit");
                soft
            }
        }
    } else {
        soft
    };
    let needed = (max_connections as u64).saturating_add(1024);
    if now < needed {
        tracing::warn!(
            nofile = now,
            max_connections,
            "the open-file limit is below what limits.max_connections needs (one per connection, plus 1024); raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower the cap"
        );
    } else {
        tracing::debug!(nofile = now, "open-file limit");
    }
}
