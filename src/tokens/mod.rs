//! Token machinery: access tokens (JWT issue and verify, `jwt`), the
//! signing-key set (`keys`), the cache of verified tokens (`verified`),
//! revocations held in memory (`revocation`), the refresh-token codec
//! (`refresh`). `claims` and `rejection` are leaves: the wire types and
//! metrics take their names from there without climbing up.

pub mod claims;
pub mod jwt;
pub mod keys;
pub mod provider_keys;
pub mod refresh;
pub mod rejection;
pub mod revocation;
pub mod verified;

pub use claims::{identity_headers, AccessClaims};
pub use rejection::{KeyRejection, TokenRejection};
