//! The browser side of accounts: the session cookie turned into an
//! identity (`browser`) and the portal's pages (`portal`).
//!
//! The rest of the old `auth` room moved: the account service and its
//! rules to [`crate::accounts`], token machinery to [`crate::tokens`], the
//! JSON endpoints to [`crate::http`]. The names below are re-exported so
//! the proxy, the CLI, benches and tests keep their paths.

pub mod browser;
pub mod portal;

pub use crate::accounts::service::{bearer, horizon_secs, valid_role, AuthService};
pub use crate::accounts::totp as mfa;
pub use crate::accounts::{admin, apikeys, email, passkeys, password, throttle};
pub use crate::tokens::{jwt as tokens, keys, refresh, revocation, verified};
