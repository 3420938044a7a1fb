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
//!
//! The idle class alone starves: a chat engine whose compute threads never leave a
//! core idle kept a one-input embedding request waiting for a whole 600-token stream
//! (8.8 s), and beside 3 streams an embedding engine got under 1% of a core. Putting a
//! starved engine back in the ordinary class for its decode took the chat ITL p99
//! from 1.4x to 5.6x idle (a decode of a full pack then shares the cores for tens of
//! ms). Instead a busy chat engine that finds an embedding engine got less than
//! [`SHARE`] of a core over the last [`WINDOW`] leaves the cores to it for the
//! shortfall (at most [`SHARE`] of the window) before its next step: a bounded pause
//! of one chat step in a window, and embeddings that always move. A decode small
//! enough to be a query or two (a retrieval step waits on it) stays in the ordinary
//! class: a few ms of CPU, less than a chat prompt chunk. And the first chat engine
//! to get work puts a decode begun without it in the idle class at once instead of at
//! the next decode: the first steps of each stream no longer share the cores with a
//! full pack (ITL p99 beside embeddings flat out 16.5 against 20 ms, medians of 4).
//! Pausing 1 ms every 100 ms instead of 2 every 200 cost more (16.4 to 22.2 ms
//! against 10.6 to 18.3): each pause has a fixed cost.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

/// The window over which an embedding engine in the idle class is owed [`SHARE`].
pub const WINDOW: Duration = Duration::from_millis(200);

/// The CPU an embedding engine in the idle class gets per [`WINDOW`] at least, as the
/// chat engines' pause: 1% of a core, in pauses short enough to add little to the
/// chat step they fall before.
pub const SHARE: Duration = Duration::from_millis(2);

/// How often a busy chat engine looks for starved embedding engines (ms).
const CHECK_EVERY_MS: u64 = 20;

/// Chat engines that have work now.
static INTERACTIVE: AtomicUsize = AtomicUsize::new(0);

/// Held by a chat engine while it has work (`set(true)`), and counted process-wide.
#[derive(Default)]
pub struct Interactive {
    busy: bool,
}

impl Interactive {
    /// Called at every step of a chat engine: also where it pauses for starved
    /// embedding engines (looking at most every [`CHECK_EVERY_MS`]), where the first
    /// chat engine to get work puts the decoding ones in the idle class at once, and
    /// where the last one out of work puts them back in the ordinary class.
    pub fn set(&mut self, busy: bool) {
        if busy != self.busy {
            self.busy = busy;
            if busy {
                if INTERACTIVE.fetch_add(1, Ordering::SeqCst) == 0 {
                    sink_all();
                }
            } else if INTERACTIVE.fetch_sub(1, Ordering::SeqCst) == 1 {
                lift_all();
            }
        }
        if busy {
            let now = clock_ms();
            let last = LAST_CHECK_MS.load(Ordering::Relaxed);
            if now >= last + CHECK_EVERY_MS
                && LAST_CHECK_MS
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                let owed = shortfall();
                if !owed.is_zero() {
                    std::thread::sleep(owed);
                }
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

/// When a chat engine last looked for starved embedding engines ([`clock_ms`]).
static LAST_CHECK_MS: AtomicU64 = AtomicU64::new(0);

/// Milliseconds since this process first asked.
fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A background engine's class, seen by the chat engines that may lift it.
struct Watched {
    /// The OS name of its threads (see [`Background::thread_name`]).
    comm: String,
    /// Its thread's CPU clock.
    cpu: Option<CpuClock>,
    class: Mutex<Class>,
}

#[derive(Default)]
struct Class {
    idle: bool,
    /// Between its `update` before a decode and its `waiting` for work.
    decoding: bool,
    /// Since when, and from what CPU time, its share is judged: from its first decode
    /// in the idle class with work waiting, then from each look past a [`WINDOW`].
    window: Option<(Instant, Duration)>,
}

/// Every background engine alive (the dead ones are dropped at each look).
static WATCHED: Mutex<Vec<Weak<Watched>>> = Mutex::new(Vec::new());

/// Puts every background engine in the idle class back in the ordinary class.
fn lift_all() {
    for_each_engine(|engine, class| {
        if class.idle {
            set_class(&engine.comm, false);
            class.idle = false;
        }
    });
}

/// Puts every background engine in the middle of a decode in the idle class: the
/// first chat engine to get work does not wait for a decode begun without it.
fn sink_all() {
    for_each_engine(|engine, class| {
        if class.decoding && !class.idle {
            set_class(&engine.comm, true);
            class.idle = true;
            engine.start_window_of(class);
        }
    });
}

/// The most CPU a background engine in the idle class fell short of [`SHARE`] over
/// its last full [`WINDOW`]; each such window then starts over.
fn shortfall() -> Duration {
    let mut owed = Duration::ZERO;
    for_each_engine(|engine, class| {
        let Some((since, cpu_then)) = class.window.filter(|_| class.idle) else {
            return;
        };
        if since.elapsed() < WINDOW {
            return;
        }
        // A clock that cannot be read: the engine is owed its whole share.
        let cpu_now = engine.cpu.as_ref().and_then(CpuClock::read);
        let got = cpu_now.map_or(Duration::ZERO, |now| now.saturating_sub(cpu_then));
        owed = owed.max(SHARE.saturating_sub(got));
        class.window = Some((Instant::now(), cpu_now.unwrap_or(cpu_then)));
    });
    owed
}

fn for_each_engine(mut f: impl FnMut(&Watched, &mut Class)) {
    let mut engines = WATCHED.lock().unwrap_or_else(PoisonError::into_inner);
    engines.retain(|w| w.strong_count() > 0);
    for engine in engines.iter().filter_map(Weak::upgrade) {
        let mut class = engine.class.lock().unwrap_or_else(PoisonError::into_inner);
        f(&engine, &mut class);
    }
}

/// A thread's CPU time, readable from any thread.
struct CpuClock(#[cfg(target_os = "linux")] libc::clockid_t);

impl CpuClock {
    /// The calling thread's.
    #[cfg(target_os = "linux")]
    fn this_thread() -> Option<CpuClock> {
        let mut id: libc::clockid_t = 0;
        // SAFETY: the calling thread's handle and a valid out pointer.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
        (rc == 0).then_some(CpuClock(id))
    }

    #[cfg(not(target_os = "linux"))]
    fn this_thread() -> Option<CpuClock> {
        None
    }

    #[cfg(target_os = "linux")]
    fn read(&self) -> Option<Duration> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a clock id from pthread_getcpuclockid and a valid out pointer; the
        // clock of a thread that ended gives an error.
        let rc = unsafe { libc::clock_gettime(self.0, &mut ts) };
        let secs = u64::try_from(ts.tv_sec).ok()?;
        let nanos = u32::try_from(ts.tv_nsec).ok()?;
        (rc == 0).then(|| Duration::new(secs, nanos))
    }

    #[cfg(not(target_os = "linux"))]
    fn read(&self) -> Option<Duration> {
        None
    }
}

/// An embedding engine's scheduling class, switched for its thread and the llama.cpp
/// compute threads it started (they inherit its name, which must be unique).
pub struct Background {
    me: Arc<Watched>,
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
        let me = Arc::new(Watched {
            comm: std::fs::read_to_string("/proc/thread-self/comm").unwrap_or_default(),
            cpu: CpuClock::this_thread(),
            class: Mutex::default(),
        });
        WATCHED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(&me));
        Background { me }
    }

    /// Before each decode: the idle class while a chat engine has work, unless the
    /// decode is `quick` (small enough to go first). Whether a chat engine has work (the
    /// engine then decodes on one thread: see the embedding engine).
    pub fn update(&mut self, quick: bool) -> bool {
        let busy = interactive_busy();
        let idle = busy && !quick;
        let mut class = self.me.class.lock().unwrap_or_else(PoisonError::into_inner);
        class.decoding = true;
        if idle != class.idle {
            class.idle = idle;
            set_class(&self.me.comm, idle);
        }
        if idle {
            self.me.start_window_of(&mut class);
        } else {
            class.window = None;
        }
        busy
    }

    /// Before the engine waits for work: no share is owed to an engine without any.
    /// (It waits in the class it had: woken as an ordinary thread by each request, it
    /// preempted a chat compute thread each time, and the chat ITL p99 beside
    /// embeddings went from 1.5x to 2.2x idle.)
    pub fn waiting(&mut self) {
        let mut class = self.me.class.lock().unwrap_or_else(PoisonError::into_inner);
        class.window = None;
        class.decoding = false;
    }

    /// The handle by which the engine's callers say that work is waiting.
    pub fn queued(&self) -> Queued {
        Queued(Arc::clone(&self.me))
    }
}

/// Says that a background engine has work: from then on it is owed its share, also
/// while, in the idle class, it cannot get a core to pick the work up.
#[derive(Clone)]
pub struct Queued(Arc<Watched>);

impl Queued {
    pub fn arrived(&self) {
        self.0.start_window();
    }
}

impl Watched {
    fn start_window(&self) {
        let mut class = self.class.lock().unwrap_or_else(PoisonError::into_inner);
        self.start_window_of(&mut class);
    }

    fn start_window_of(&self, class: &mut Class) {
        if class.window.is_none() {
            let cpu = self.cpu.as_ref().and_then(CpuClock::read);
            class.window = Some((Instant::now(), cpu.unwrap_or_default()));
        }
    }
}

/// The class of every thread of this process named `comm` (as `/proc` writes it).
#[cfg(target_os = "linux")]
fn set_class(comm: &str, idle: bool) {
    if comm.is_empty() {
        return;
    }
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    let (policy, param) = if idle {
        (libc::SCHED_IDLE, libc::sched_param { sched_priority: 0 })
    } else {
        (libc::SCHED_OTHER, libc::sched_param { sched_priority: 0 })
    };
    for task in tasks.flatten() {
        let same = std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c == comm);
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
fn set_class(_comm: &str, _idle: bool) {}

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

    /// The class follows chat work, for the engine's thread and the threads it started;
    /// an engine that got too little CPU in the idle class over a `WINDOW` is owed the
    /// rest of its `SHARE` (a busy chat engine's next look pauses for it), one that kept
    /// working is owed nothing, and the last chat engine out of work lifts them all.
    #[cfg(target_os = "linux")]
    fn embedding_thread_and_its_children_take_the_idle_class_while_chat_works() {
        fn policy(tid: libc::pid_t) -> i32 {
            // SAFETY: a plain query of a thread of this process.
            unsafe { libc::sched_getscheduler(tid) }
        }
        fn gettid() -> libc::pid_t {
            // SAFETY: no arguments, cannot fail.
            unsafe { libc::gettid() }
        }
        enum Do {
            /// `update`, for a quick decode or not.
            Update(bool),
            /// Burn this much CPU, for at least a `WINDOW` of wall time.
            Spin(Duration),
            /// Wait for work.
            Wait,
        }
        // The engine thread decodes (`update`) or works (`Spin`) when told, and its
        // child (a compute thread) says its id; the test reads both threads' class.
        let (go, orders) = std::sync::mpsc::channel::<Do>();
        let (tids_tx, tids) = std::sync::mpsc::channel::<(libc::pid_t, libc::pid_t)>();
        let (answer, done) = std::sync::mpsc::channel::<bool>();
        let (queued_tx, queued_rx) = std::sync::mpsc::channel::<Queued>();
        let engine = std::thread::Builder::new()
            .name("prio-test-7f3a".into())
            .spawn(move || {
                let mut bg = Background::start();
                queued_tx.send(bg.queued()).ok();
                let (child_tx, child_rx) = std::sync::mpsc::channel();
                let (stop, stopped) = std::sync::mpsc::channel::<()>();
                let child = std::thread::spawn(move || {
                    child_tx.send(gettid()).ok();
                    stopped.recv().ok();
                });
                tids_tx.send((gettid(), child_rx.recv().unwrap())).ok();
                let clock = CpuClock::this_thread().unwrap();
                while let Ok(order) = orders.recv() {
                    match order {
                        Do::Update(quick) => answer.send(bg.update(quick)).ok(),
                        Do::Wait => {
                            bg.waiting();
                            answer.send(true).ok()
                        }
                        Do::Spin(cpu) => {
                            let (t0, c0) = (Instant::now(), clock.read().unwrap());
                            while clock.read().unwrap() < c0 + cpu || t0.elapsed() < WINDOW {
                                std::hint::spin_loop();
                            }
                            answer.send(true).ok()
                        }
                    };
                }
                drop(stop);
                child.join().ok();
            })
            .unwrap();
        let (me, child) = tids.recv().unwrap();
        let queued = queued_rx.recv().unwrap();
        let classes = || (policy(me), policy(child));
        let idle = (libc::SCHED_IDLE, libc::SCHED_IDLE);
        let ordinary = (libc::SCHED_OTHER, libc::SCHED_OTHER);
        let order = |o: Do| {
            go.send(o).unwrap();
            done.recv().unwrap()
        };

        // A decode begun while no chat engine works goes to the idle class as soon as
        // one does, and is owed its share from then on.
        assert!(!order(Do::Update(false)));
        assert_eq!(classes(), ordinary);
        let mut chat = Interactive::default();
        chat.set(true);
        assert_eq!(classes(), idle);
        std::thread::sleep(WINDOW + Duration::from_millis(2 * CHECK_EVERY_MS));
        assert!(shortfall() >= SHARE / 2);
        // A quick decode goes first, beside chat work too.
        assert!(order(Do::Update(true)));
        assert_eq!(classes(), ordinary);
        assert!(order(Do::Update(false)));
        assert_eq!(classes(), idle);
        // Nothing owed before a window has passed.
        assert_eq!(shortfall(), Duration::ZERO);
        // Working in the idle class (twice its share) is owed nothing.
        order(Do::Spin(SHARE * 2));
        assert_eq!(shortfall(), Duration::ZERO);
        // Waiting a window without CPU is owed its share: a busy chat engine's next
        // look pauses for it, and the engine stays in the idle class.
        std::thread::sleep(WINDOW + Duration::from_millis(2 * CHECK_EVERY_MS));
        let t0 = Instant::now();
        chat.set(true);
        assert!(t0.elapsed() >= SHARE / 2, "paused {:?}", t0.elapsed());
        assert_eq!(classes(), idle);
        assert_eq!(shortfall(), Duration::ZERO, "a new window");
        // An engine out of work is owed nothing; work queued for it is, before it
        // gets to pick it up.
        order(Do::Wait);
        assert_eq!(classes(), idle);
        std::thread::sleep(WINDOW + Duration::from_millis(2 * CHECK_EVERY_MS));
        assert_eq!(shortfall(), Duration::ZERO);
        queued.arrived();
        std::thread::sleep(WINDOW + Duration::from_millis(2 * CHECK_EVERY_MS));
        assert!(shortfall() >= SHARE / 2);
        // The last chat engine out of work lifts it at once.
        chat.set(false);
        assert_eq!(classes(), ordinary);
        assert!(!order(Do::Update(false)));
        assert_eq!(classes(), ordinary);
        drop(go);
        engine.join().unwrap();
    }
}
