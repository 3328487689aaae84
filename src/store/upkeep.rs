//! Upkeep: what the maintenance sweep may remove and what it removed, and
//! what a store has done so far.

/// What the maintenance sweep may remove.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub now: i64,
    /// Sessions idle this long are dead.
    pub idle_secs: u64,
    /// Mail that failed for good is kept this long.
    pub failed_mail_secs: u64,
    /// `now` minus the token horizon ([`Store::token_horizon`]): a
    /// `Token`, `Session` or `Cutoff` revocation whose time is older than
    /// this covers no token that is still accepted (every token it covers
    /// was signed before that time, or expired at it, with a lifetime plus
    /// leeway of at most the horizon).
    ///
    /// [`Store::token_horizon`]: super::Store::token_horizon
    pub revocation_horizon: i64,
    /// Throttle and lockout counters untouched this long (and holding no
    /// lock) count nothing any more.
    pub counter_idle_secs: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub sessions: usize,
    pub one_time: usize,
    pub revocations: usize,
    pub cutoffs: usize,
    pub mail: usize,
    pub counters: usize,
}

impl SweepReport {
    pub fn total(&self) -> usize {
        self.sessions + self.one_time + self.revocations + self.cutoffs + self.mail + self.counters
    }
}

/// What a store has done so far (for operators and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Atomic commits (for sled: flushed batches).
    pub commits: u64,
    /// Write operations acknowledged.
    pub ops: u64,
    /// The most operations one commit acknowledged (group commit at work).
    pub max_batch: u64,
    /// The most write operations ever in flight at once.
    pub max_in_flight: u64,
    /// Writes are being accepted (false from a failed write until the
    /// backend has recovered; see `sled_store`).
    pub writable: bool,
    /// Batches whose write or flush failed.
    pub write_failures: u64,
    /// Recoveries from such a failure without a restart.
    pub recoveries: u64,
}
