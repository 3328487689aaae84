//! Portcullis: a reverse-proxy authentication gateway on Pingora.
//!
//! `main.rs` only parses the command line; everything else is reachable from
//! here so integration tests boot exactly what the binary runs
//! ([`server::start`]).

pub mod admin;
pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod executor;
pub mod logging;
pub mod mail;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod server;
pub mod store;
pub mod tls;

use std::sync::Arc;

pub use config::Config;
pub use server::{start, GatewayHandle};

/// Run the gateway until SIGTERM/SIGINT, with the real clock.
pub fn run(config: Config) -> Result<(), String> {
    let handle = server::start(config, Arc::new(clock::SystemClock), true)?;
    tracing::info!(
        listen = ?handle.listen,
        tls_listen = ?handle.tls_listen,
        admin_listen = ?handle.admin_listen,
        "portcullis is running"
    );
    handle.wait();
    Ok(())
}
