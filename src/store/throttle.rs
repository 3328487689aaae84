//! Throttle and lockout counters as stored, and an attempt reserved
//! against one (the rules are [`Counter`]'s methods in `domain`).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A throttle or lockout counter.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq)]
pub struct Counter {
    pub window_start: i64,
    /// Events (or failures) counted in the current window.
    pub count: u32,
    /// Locked until this time (account lockout), 0 when not locked.
    pub locked_until: i64,
    /// Attempts reserved and not yet settled (in memory only).
    #[serde(skip)]
    pub pending: u32,
}

/// An attempt reserved against a lockout counter (see
/// [`Store::reserve_attempt`]). Settle it with [`Store::settle_attempt`];
/// where several gateways share the store, a reservation whose holder dies
/// unsettled lapses at `until`.
///
/// [`Store::reserve_attempt`]: super::Store::reserve_attempt
/// [`Store::settle_attempt`]: super::Store::settle_attempt
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: String,
    pub id: Uuid,
    pub until: i64,
}
