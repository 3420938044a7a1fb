//! The one place CPU-heavy request work runs (parsing huge bodies, rendering templates,
//! tokenizing, compiling grammars): tokio's blocking pool, never an async worker. Work
//! on large inputs takes turns, at most cores - 1 at a time, so one core always stays
//! free for the async workers that answer everything else (`/health` keeps answering in
//! milliseconds while a 30 MB prompt is handled); work on small inputs goes straight
//! through, so an ordinary request never queues behind a huge one.

use crate::error::Error;
use std::sync::{Arc, OnceLock};
use tokio::sync::Semaphore;

fn permits() -> Arc<Semaphore> {
    static PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    Arc::clone(PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(Semaphore::new(cores.saturating_sub(1).max(1)))
    }))
}

/// Inputs from this many bytes on count as large.
pub const LARGE: usize = 256 * 1024;

/// Runs `work`, whose input is `input_bytes` long, on the blocking pool. A large
/// input's turn belongs to the work, not to the caller: a caller that hangs up does not
/// free it while its work still runs (three abandoned prompts once kept three threads
/// busy beside the ones admitted after them).
pub async fn run<T: Send + 'static>(
    input_bytes: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    let permit = if input_bytes >= LARGE {
        Some(
            permits()
                .acquire_owned()
                .await
                .map_err(|_| Error::internal("the CPU work pool is closed"))?,
        )
    } else {
        None
    };
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        lower_priority();
        work()
    })
    .await
    .map_err(|e| Error::internal(format!("CPU work failed: {e}")))
}

/// Blocking-pool threads (and the embedding engines) run at a lower OS priority than the
/// threads that serve requests, so on a busy machine the scheduler favours answering
/// (health checks, streams) over grinding through a huge prompt. Once per thread.
pub fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        thread_local! {
            static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }
        DONE.with(|done| {
            if !done.replace(true) {
                // SAFETY: plain syscalls on the calling thread; Linux applies a nice value
                // to one thread when given its thread id.
                unsafe {
                    let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                    libc::setpriority(libc::PRIO_PROCESS, tid, 10);
                }
            }
        });
    }
}
