//! Background tasks. Every long-lived task (lease renewal, the usage writer, WAL
//! checkpoints, sweepers) is spawned here with a name, so a panic in one is logged as
//! that task's failure instead of vanishing with an unawaited join handle.

use futures::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;

/// Spawns `work` on the current runtime; a panic in it is logged under `name`.
#[allow(clippy::disallowed_methods, reason = "the one place tasks are spawned")]
pub fn spawn<F>(name: &'static str, work: F) -> tokio::task::JoinHandle<Option<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(async move {
        match AssertUnwindSafe(work).catch_unwind().await {
            Ok(out) => Some(out),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(task = name, "background task panicked: {why}");
                None
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

    #[tokio::test]
    async fn a_panicking_task_ends_with_none_and_others_run() {
        let bad = super::spawn("bad", async { panic!("boom") });
        let good = super::spawn("good", async { 7 });
        assert_eq!(bad.await.unwrap(), None::<()>);
        assert_eq!(good.await.unwrap(), Some(7));
    }
}
