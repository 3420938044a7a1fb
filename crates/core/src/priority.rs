//! Who goes first on a busy CPU: chat engines' streams over embedding engines' packs.
//!
//! Measured on 2 cores (SmolLM2 streaming beside MiniLM embedding flat out): at a lower
//! nice value the embedding threads still held a core until their time slice ran out
//! when a chat compute thread woke, and the chat engine's other compute thread spun at
//! its barrier meanwhile, so every chat step took 2.5x as long (ITL p99 3.5x idle).
//! Linux's idle class (`SCHED_IDLE`) is preempted at once by any other thread, so an
//! embedding engine runs as that class while some chat engine has work (p99 about 2x
//! idle), and as an ordinary thread at a lower nice value otherwise: as the idle class
//! all the time, every wake-up of a request's own threads preempted one of its two
//! compute threads and a lone input took 12% longer.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Chat engines that have work now.
static INTERACTIVE: AtomicUsize = AtomicUsize::new(0);

/// Held by a chat engine while it has work (`set(true)`), and counted process-wide.
#[derive(Default)]
pub struct Interactive {
    busy: bool,
}

impl Interactive {
    pub fn set(&mut self, busy: bool) {
        if busy != self.busy {
            self.busy = busy;
            if busy {
                INTERACTIVE.fetch_add(1, Ordering::SeqCst);
            } else {
                INTERACTIVE.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// Whether any chat engine has work.
pub fn interactive_busy() -> bool {
    INTERACTIVE.load(Ordering::SeqCst) > 0
}

/// An embedding engine's scheduling class, switched for its thread and the llama.cpp
/// compute threads it started (they inherit its name, which must be unique).
pub struct Background {
    idle: bool,
}

/// Background engines started in this process, to name their threads apart.
static ENGINES: AtomicUsize = AtomicUsize::new(0);

impl Background {
    /// A name for a background engine's thread, unique within its first 15 bytes (the
    /// OS's name for the thread and for the compute threads it starts, by which
    /// `update` finds them).
    pub fn thread_name(kind: &str, id: &str) -> String {
        format!("{kind}{}-{id}", ENGINES.fetch_add(1, Ordering::Relaxed))
    }

    /// Called on the engine's own thread, before it starts any compute thread: the
    /// ordinary class at a lower nice value (see `blocking::lower_priority`).
    pub fn start() -> Background {
        crate::blocking::lower_priority();
        Background { idle: false }
    }

    /// Before each decode: the idle class while a chat engine has work. Whether it
    /// has (the engine then decodes on one thread: see the embedding engine).
    pub fn update(&mut self) -> bool {
        let idle = interactive_busy();
        if idle != self.idle {
            self.idle = idle;
            set_class(idle);
        }
        idle
    }
}

/// The class of every thread of this process named as the calling one.
#[cfg(target_os = "linux")]
fn set_class(idle: bool) {
    let Ok(me) = std::fs::read_to_string("/proc/thread-self/comm") else {
        return;
    };
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    let (policy, param) = if idle {
        (libc::SCHED_IDLE, libc::sched_param { sched_priority: 0 })
    } else {
        (libc::SCHED_OTHER, libc::sched_param { sched_priority: 0 })
    };
    for task in tasks.flatten() {
        let same = std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c == me);
        let tid = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<libc::pid_t>().ok());
        if let (true, Some(tid)) = (same, tid) {
            // SAFETY: plain syscalls on a thread of this process with a valid parameter;
            // a thread that ended meanwhile makes them fail, which changes nothing.
            unsafe {
                libc::sched_setscheduler(tid, policy, &param);
                if !idle {
                    libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn set_class(_idle: bool) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test for both: they share the process-wide count.
    #[test]
    fn chat_work_is_counted_and_switches_embedding_threads() {
        counted_until_it_ends_or_its_engine_goes();
        #[cfg(target_os = "linux")]
        embedding_thread_and_its_children_take_the_idle_class_while_chat_works();
    }

    fn counted_until_it_ends_or_its_engine_goes() {
        let before = INTERACTIVE.load(Ordering::SeqCst);
        let mut a = Interactive::default();
        a.set(true);
        a.set(true);
        assert_eq!(INTERACTIVE.load(Ordering::SeqCst), before + 1);
        assert!(interactive_busy());
        a.set(false);
        a.set(false);
        assert_eq!(INTERACTIVE.load(Ordering::SeqCst), before);
        let mut b = Interactive::default();
        b.set(true);
        drop(b);
        assert_eq!(INTERACTIVE.load(Ordering::SeqCst), before);
    }

    /// The class follows chat work, for the engine's thread and the threads it started.
    #[cfg(target_os = "linux")]
    fn embedding_thread_and_its_children_take_the_idle_class_while_chat_works() {
        fn policy() -> i32 {
            // SAFETY: a plain query of the calling thread.
            unsafe { libc::sched_getscheduler(0) }
        }
        let engine = std::thread::Builder::new()
            .name("prio-test-7f3a".into())
            .spawn(|| {
                let mut bg = Background::start();
                let (tx, rx) = std::sync::mpsc::channel::<()>();
                let (back, seen) = std::sync::mpsc::channel::<i32>();
                let child = std::thread::spawn(move || {
                    while rx.recv().is_ok() {
                        back.send(policy()).ok();
                    }
                });
                let mut chat = Interactive::default();
                chat.set(true);
                bg.update();
                tx.send(()).ok();
                let busy = (policy(), seen.recv().ok());
                chat.set(false);
                bg.update();
                tx.send(()).ok();
                let idle = (policy(), seen.recv().ok());
                drop(tx);
                child.join().ok();
                (busy, idle)
            })
            .unwrap();
        let (busy, idle) = engine.join().unwrap();
        assert_eq!(busy, (libc::SCHED_IDLE, Some(libc::SCHED_IDLE)));
        assert_eq!(idle, (libc::SCHED_OTHER, Some(libc::SCHED_OTHER)));
    }
}
