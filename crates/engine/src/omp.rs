//! llama.cpp's compute threads come from libgomp (OpenMP), which keeps each engine
//! thread's team of them alive between decodes. Once the process holds more such
//! threads than the machine has CPUs (a chat engine and an embedding engine on 2
//! cores), libgomp spins only ~100 times at a barrier before sleeping, for every team:
//! a chat step then pays a sleep and a wake-up at each of its hundreds of barriers,
//! and took 2.6x as long, also after the embeddings had ended (measured: ITL p50 10.9
//! ms before any embedding, 28.5 ms after). An engine that runs out of work gives its
//! team back, so an idle engine's threads no longer count; the next decode starts a
//! new team (one thread start, microseconds against a decode).

/// How long an engine waits for work before giving its team back: back-to-back
/// requests (one after another from one client) keep it.
pub(crate) const IDLE_BEFORE_REST: std::time::Duration = std::time::Duration::from_millis(200);

/// The next message on an engine's queue: waits `IDLE_BEFORE_REST`, then gives the
/// team back and waits on. `None`: every sender is gone.
pub(crate) fn next_or_rest<T>(rx: &std::sync::mpsc::Receiver<T>) -> Option<T> {
    match rx.recv_timeout(IDLE_BEFORE_REST) {
        Ok(m) => Some(m),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            rest();
            rx.recv().ok()
        }
    }
}

/// Gives the calling engine thread's idle compute threads back to the OS.
pub(crate) fn rest() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            /// OpenMP 5.0: frees what the runtime holds for the calling thread's
            /// parallel regions; libgomp ends its docked team.
            fn omp_pause_resource_all(kind: std::ffi::c_int) -> std::ffi::c_int;
        }
        /// `omp_pause_soft`: the runtime may start again on the next parallel region.
        const PAUSE_SOFT: std::ffi::c_int = 1;
        // SAFETY: called on an engine thread outside any parallel region (between
        // decodes), which is what the call requires; a non-zero result (nothing to
        // free, or a runtime that declines) changes nothing.
        unsafe {
            omp_pause_resource_all(PAUSE_SOFT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work that arrives at once, or after the engine has rested, is still taken; a
    /// queue whose senders are gone ends the engine.
    #[test]
    fn an_engine_takes_its_next_job_before_and_after_resting() {
        let (tx, rx) = std::sync::mpsc::channel();
        tx.send(1).unwrap();
        assert_eq!(next_or_rest(&rx), Some(1));
        let late = std::thread::spawn(move || {
            std::thread::sleep(IDLE_BEFORE_REST * 2);
            tx.send(2).unwrap();
            tx
        });
        assert_eq!(next_or_rest(&rx), Some(2));
        drop(late.join().unwrap());
        assert_eq!(next_or_rest(&rx), None);
    }
}
