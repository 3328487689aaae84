//! Every integration test, compiled into one binary so linking stays cheap.
//! Each test boots the real gateway on its own ephemeral ports.

mod common;

mod access_log;
mod accounts;
mod api_keys;
mod assertion;
mod audit_events;
mod audit_trail;
mod backup;
mod browser;
mod claims;
mod console;
mod core_proxy;
mod deploy;
mod docs;
mod documented;
mod durability;
mod email;
mod federation;
mod federation_flow;
mod federation_store;
mod key_rotation;
mod limits;
mod mfa;
mod oidc_provider;
mod openapi;
mod passthrough;
mod policy;
mod portal;
mod postgres;
mod races;
mod readiness;
mod reauth;
mod reload;
mod revocation;
mod security;
mod startup;
mod store;
mod tokens;
mod webhooks;
