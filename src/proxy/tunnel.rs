//! Upgraded connections (WebSocket) must not outlive the session that
//! opened them.
//!
//! Pingora 0.9 checks nothing after an HTTP/1 upgrade: once the upstream
//! answers 101, `proxy_h1` pumps bytes both ways until either side closes,
//! and the hooks run only when data flows. A tunnel opened with a token
//! would stay open after logout, disable or the token's expiry. So:
//!
//! - every downstream HTTP/1 connection carries a [`TunnelSwitch`] inside
//!   its [`super::deadline::DeadlineStream`]; the proxy finds it through the
//!   session's stream (`IO::as_any`);
//! - when a token-bearing request is upgraded, the switch is armed and
//!   [`supervise`] checks, once per [`CHECK_EVERY`], that the token is not
//!   revoked (the same in-memory check as every request) and that the
//!   [`Clock`](crate::clock::Clock) is before `exp` plus
//!   `tokens.tunnel_leeway_secs`;
//! - a request upgraded with an API key is supervised the same way: its
//!   key must still be in the [`KeyIndex`](crate::accounts::apikeys::KeyIndex)
//!   (deleting the key or disabling its owner takes it out, on every
//!   gateway: on a shared database the revocation feed reloads the owner's
//!   keys), unexpired, and the tunnel lives at most
//!   `limits.max_api_key_tunnel_secs` on the clock;
//! - closing the switch fails the stream's next read and write and wakes
//!   the task polling it, so Pingora tears down both halves of the tunnel
//!   even when it is idle.
//!
//! An unarmed switch costs one atomic load per poll.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Waker};
use std::time::Duration;

use parking_lot::Mutex;

use crate::accounts::apikeys::KeyEntry;
use crate::accounts::AuthService;
use crate::tokens::jwt::AccessClaims;

/// How often a supervised tunnel's session is re-checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Closes one downstream connection from outside the task that drives it.
#[derive(Debug, Default)]
pub struct TunnelSwitch {
    armed: AtomicBool,
    closed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl TunnelSwitch {
    /// Start watching this connection's polls (it is now a tunnel).
    pub fn arm(&self) {
        self.armed.store(true, Ordering::Release);
    }

    pub fn is_armed(&self) -> bool {
        self.armed.load(Ordering::Acquire)
    }

    /// Fail every further read and write, and wake the connection's task.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(w) = self.waker.lock().take() {
            w.wake();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Called at the start of every poll of the stream: an error once
    /// closed; while armed, remembers who to wake.
    pub fn check(&self, cx: &Context<'_>) -> io::Result<()> {
        if !self.armed.load(Ordering::Acquire) {
            return Ok(());
        }
        {
            let mut w = self.waker.lock();
            if !w.as_ref().is_some_and(|old| old.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
        }
        // After registering, so a concurrent `close` is never missed.
        if self.closed.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "tunnel closed: its session ended",
            ));
        }
        Ok(())
    }
}

/// What opened a supervised tunnel, and so what ends it.
pub enum Opener {
    /// An access token (bearer or cookie session), with
    /// `tokens.tunnel_leeway_secs`.
    Token {
        claims: Arc<AccessClaims>,
        leeway_secs: u64,
    },
    /// An API key, and the clock time the tunnel must be closed by
    /// (upgrade + `limits.max_api_key_tunnel_secs`).
    ApiKey { key: Arc<KeyEntry>, until: i64 },
}

/// Why a supervised tunnel is closed, if it must be now.
pub fn verdict(auth: &AuthService, opener: &Opener) -> Option<&'static str> {
    let now = auth.clock.now();
    match opener {
        Opener::Token {
            claims,
            leeway_secs,
        } => {
            if auth.revocations.is_revoked(claims) {
                Some("session revoked")
            } else if now >= claims.exp.saturating_add(*leeway_secs as i64) {
                Some("token expired")
            } else {
                None
            }
        }
        Opener::ApiKey { key, until } => {
            if !auth.api_keys.is_current(key, now) {
                Some("api key revoked, expired or its owner disabled")
            } else if now >= *until {
                Some("api key tunnel lifetime over")
            } else {
                None
            }
        }
    }
}

/// Arm `switch` and close it as soon as [`verdict`] says so. The check task
/// ends with the connection (it holds the switch weakly).
pub fn supervise(
    switch: &Arc<TunnelSwitch>,
    auth: Arc<AuthService>,
    opener: Opener,
    request_id: String,
) {
    switch.arm();
    let weak: Weak<TunnelSwitch> = Arc::downgrade(switch);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(switch) = weak.upgrade() else { return };
            if switch.is_closed() {
                return;
            }
            if let Some(reason) = verdict(&auth, &opener) {
                tracing::info!(request_id = %request_id, reason, "closing upgraded connection");
                switch.close();
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn an_armed_switch_wakes_and_fails_its_stream() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let cx = Context::from_waker(&waker);
        let s = TunnelSwitch::default();
        assert!(s.check(&cx).is_ok());
        s.arm();
        assert!(s.check(&cx).is_ok());
        s.close();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        let e = s.check(&cx).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
    }
}
