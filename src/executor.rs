//! The auth executor: `/auth/*` handlers run on a runtime of their own
//! whose threads (workers and blocking pool, so argon2 and store reads too)
//! run at a lower OS priority (`server.auth_nice`, 10 by default). Proxied
//! requests stay on Pingora's workers at normal priority. Under contention
//! the kernel then favours proxied traffic, so a flood of refreshes or
//! logins cannot take the CPU that the bearer check and the proxy need;
//! when the CPU is idle, auth work gets all of it.
//!
//! A handler, once started, runs to completion even if its client goes
//! away: a state change is never cut in half by a disconnect.

use std::future::Future;

use thread_priority::{set_current_thread_priority, ThreadPriority, ThreadPriorityValue};

pub struct AuthExecutor {
    rt: Option<tokio::runtime::Runtime>,
}

impl AuthExecutor {
    /// `threads` workers at niceness `nice` (0 = normal priority).
    pub fn new(threads: usize, nice: u8) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("portcullis-auth")
            .on_thread_start(move || lower_priority(nice))
            .enable_all()
            .build()
            .map_err(|e| format!("starting the auth executor: {e}"))?;
        Ok(Self { rt: Some(rt) })
    }

    /// Worker threads (`server.auth_threads`).
    pub fn workers(&self) -> usize {
        self.rt.as_ref().map_or(0, |rt| rt.metrics().num_workers())
    }

    /// Run `fut` on the executor; `None` if it could not finish (the
    /// executor is shutting down, or the task panicked).
    pub async fn run<F, T>(&self, fut: F) -> Option<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.rt.as_ref()?.spawn(fut).await.ok()
    }
}

impl Drop for AuthExecutor {
    fn drop(&mut self) {
        // Never blocks, so dropping from async code is fine.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Set the calling thread's niceness (Linux applies it per thread, and
/// threads it creates inherit it).
pub fn lower_priority(nice: u8) {
    if nice == 0 {
        return;
    }
    let Some(p) = crossplatform_for_nice(nice.min(19) as i32) else {
        return;
    };
    if let Err(e) = set_current_thread_priority(ThreadPriority::Crossplatform(p)) {
        tracing::warn!(cause = ?e, "could not lower the auth executor's priority");
    }
}

/// `thread-priority` maps its 0..=99 scale linearly onto niceness 19..=-20
/// for normal threads; find the value that lands on `nice`.
fn crossplatform_for_nice(nice: i32) -> Option<ThreadPriorityValue> {
    (0u8..=99).find_map(|p| {
        let ratio = 1f32 - p as f32 / 99f32;
        let niceness = (39f32 * ratio) as i32 - 20;
        (niceness == nice).then(|| ThreadPriorityValue::try_from(p).ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The niceness of the calling thread, from procfs.
    fn current_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        // Field 19 of stat; `rest` starts at field 3.
        rest.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn auth_threads_run_at_the_configured_niceness() {
        for nice in [1, 10, 19] {
            assert!(crossplatform_for_nice(nice).is_some(), "{nice}");
        }
        let before = current_nice();
        let ex = AuthExecutor::new(1, 10).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let worker = rt.block_on(ex.run(async { current_nice() })).unwrap();
        let blocking = rt
            .block_on(ex.run(async { tokio::task::spawn_blocking(current_nice).await.unwrap() }))
            .unwrap();
        assert_eq!((worker, blocking), (10, 10));
        assert_eq!(current_nice(), before, "the caller is untouched");
    }
}
