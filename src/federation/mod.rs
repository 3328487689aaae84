//! Signing in with an outside OpenID Connect or OAuth 2.0 provider
//! (CONTRACT 8.1): the protocol client ([`client`]) and the sealed,
//! browser-bound values of a sign-in in flight ([`state`]). The account
//! rules (sign-up, linking, roles, MFA) are the account service's
//! (`accounts::federation`); the endpoints are `http::federation`.

pub mod client;
pub mod state;

pub use client::{CallbackParams, FedError, Federation, VerifiedIdentity};
pub use state::{FlowState, Mode, Sealer};
