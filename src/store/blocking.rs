//! Running the async store from synchronous code (start-up, the CLI).

/// Run a future to completion from synchronous code, whether or not the
/// caller is inside a Tokio runtime (start-up loads the store's state
/// before the server runs; the CLI has no runtime of its own).
pub fn block_on<F>(fut: F) -> Result<F::Output, String>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(fut))
                .map_err(|e| format!("building a runtime: {e}"))
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
