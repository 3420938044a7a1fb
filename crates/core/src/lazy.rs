//! Models loaded on first use and unloaded when idle, as Ollama and llama-swap keep a
//! folder of models: a [`LazyModel`] is a [`Backend`] that loads its real backend on
//! the first request (concurrent first requests wait for one load), counts the
//! requests it serves, and gives the backend up once none has come for its keep-alive.
//! A [`Shelf`] holds the lazy models of one server: it loads one at a time, keeps at
//! most `max_loaded` in memory, and within `max_bytes` of estimated memory, by
//! unloading the least recently used idle ones, and
//! unloads expired ones every second.

use crate::backend::{Backend, EventStream, Load};
use crate::embed::{EmbedRequest, Embeddings, RerankRequest, Scores};
use crate::error::{Error, ErrorKind};
use crate::ir::{ChatRequest, Message};
use async_trait::async_trait;
use futures::StreamExt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Loads the real backend (on the blocking pool: it reads and maps gigabytes).
/// Loads the model, with the context size a request asked for (`None`: its own).
pub type Loader = Arc<dyn Fn(Option<u32>) -> Result<Arc<dyn Backend>, String> + Send + Sync>;
/// A quick look at whether a load can work at all (the file's metadata), made before
/// any other model is unloaded to make room for it.
pub type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

mod keep_alive;
pub use keep_alive::{KeepAlive, KeepAliveError};

/// A folder of models served on demand that takes new ones while the server runs
/// (pulled through Ollama's API) and lets them go (deleted).
pub trait ModelFolder: Send + Sync {
    /// The file a model of this name is kept in.
    fn path_for(&self, name: &str) -> std::path::PathBuf;
    /// Where names without a host are pulled from.
    fn registry(&self) -> &str;
    /// A model file now in the folder, made ready to list and load on demand. Blocking:
    /// it reads the file's metadata.
    fn adopt(
        &self,
        name: &str,
        path: &std::path::Path,
    ) -> Result<(crate::backend::ModelInfo, Arc<dyn Backend>), String>;
    /// Stops serving one of the folder's models; its files, to delete. `None`: the
    /// name is not one of the folder's.
    fn forget(&self, name: &str) -> Option<Vec<std::path::PathBuf>>;
}

/// A lazy model's state as `/api/ps`, `/admin/status` and `/metrics` show it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Residency {
    pub loaded: bool,
    pub loading: bool,
    /// Requests being served now.
    pub in_flight: usize,
    /// How long its last load took.
    pub load_ms: Option<u64>,
    /// Seconds until it is unloaded if no request comes; `None` while busy or kept.
    pub expires_in_s: Option<u64>,
    pub keep_alive_forever: bool,
    /// Why its last load failed (retried on its next request).
    pub last_error: Option<String>,
    /// Bytes of the model's file(s).
    pub size_bytes: u64,
    /// Memory it takes when loaded: estimated from its weights and KV cache before it
    /// loads, the larger of that and the growth measured while it loaded after.
    pub memory_bytes: u64,
    /// The context size a request asked it to be loaded with; `None`: its own.
    pub context: Option<u32>,
}

struct State {
    backend: Option<Arc<dyn Backend>>,
    loading: bool,
    in_flight: usize,
    /// Since when nothing has used it (meaningful while `in_flight` is 0).
    idle_since: Instant,
    keep: KeepAlive,
    load_time: Option<Duration>,
    last_error: Option<String>,
    memory_bytes: u64,
    /// The context size it was loaded with, when a request asked for one.
    ctx: Option<u32>,
}

struct Inner {
    name: String,
    load: Loader,
    check: Option<Check>,
    size_bytes: u64,
    shelf: Arc<Shelf>,
    state: Mutex<State>,
}

/// A model that loads on first use; see the module's documentation.
#[derive(Clone)]
pub struct LazyModel(Arc<Inner>);

/// The lazy models of one server and the rules they share.
pub struct Shelf {
    models: Mutex<Vec<Weak<Inner>>>,
    /// At most this many loaded at once (0: no limit).
    max_loaded: usize,
    /// At most this much memory in loaded models (0: no limit).
    max_bytes: u64,
    /// How long a request waits for a busy model to free its place.
    wait: Duration,
    /// At most this many requests wait for a load at once; more are refused at once.
    max_waiting: usize,
    waiting: std::sync::atomic::AtomicUsize,
    /// Held while a model loads: loads take turns, so two never race for memory.
    loading: tokio::sync::Mutex<()>,
    /// Signalled whenever a request ends, so a request waiting for a place looks again.
    freed: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state is plain data updated in single assignments: a panic elsewhere while
    // it was held leaves it consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Drops a backend off the async workers: freeing a model unmaps its weights.
fn release(backend: Arc<dyn Backend>) {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => drop(h.spawn_blocking(move || drop(backend))),
        Err(_) => drop(backend),
    }
}

impl Shelf {
    pub fn new(
        max_loaded: usize,
        max_bytes: u64,
        wait: Duration,
        max_waiting: usize,
    ) -> Arc<Shelf> {
        Arc::new(Shelf {
            models: Mutex::new(Vec::new()),
            max_loaded,
            max_bytes,
            wait,
            max_waiting,
            waiting: std::sync::atomic::AtomicUsize::new(0),
            loading: tokio::sync::Mutex::new(()),
            freed: tokio::sync::Notify::new(),
        })
    }

    /// A model named `name` that `load` loads; `size_bytes` (its files) for
    /// `/api/tags`, `memory_bytes` (estimated) against `max_bytes`.
    pub fn add(
        self: &Arc<Self>,
        name: impl Into<String>,
        size_bytes: u64,
        memory_bytes: u64,
        keep_alive: KeepAlive,
        load: Loader,
    ) -> LazyModel {
        self.add_checked(name, size_bytes, memory_bytes, keep_alive, load, None)
    }

    /// As [`Shelf::add`], with `check` run before each load: when it fails, the load
    /// fails at once, and no loaded model is unloaded for it.
    pub fn add_checked(
        self: &Arc<Self>,
        name: impl Into<String>,
        size_bytes: u64,
        memory_bytes: u64,
        keep_alive: KeepAlive,
        load: Loader,
        check: Option<Check>,
    ) -> LazyModel {
        let inner = Arc::new(Inner {
            name: name.into(),
            load,
            check,
            size_bytes,
            shelf: Arc::clone(self),
            state: Mutex::new(State {
                backend: None,
                loading: false,
                in_flight: 0,
                idle_since: Instant::now(),
                keep: keep_alive,
                load_time: None,
                last_error: None,
                memory_bytes,
                ctx: None,
            }),
        });
        lock(&self.models).push(Arc::downgrade(&inner));
        LazyModel(inner)
    }

    /// The models still served (a deleted one's entry goes once nothing holds it).
    fn live(&self) -> Vec<Arc<Inner>> {
        let mut models = lock(&self.models);
        models.retain(|m| m.strong_count() > 0);
        models.iter().filter_map(Weak::upgrade).collect()
    }

    /// Unloads every idle model whose keep-alive has run out; call every second or so.
    pub fn sweep(&self) {
        let now = Instant::now();
        for m in self.live() {
            m.unload_if("idle past its keep-alive", |st| match st.keep {
                KeepAlive::For(d) => now.duration_since(st.idle_since) >= d,
                KeepAlive::Forever => false,
            });
        }
    }

    /// Starts [`Shelf::sweep`] on the current runtime.
    pub fn start_sweeper(self: &Arc<Self>) {
        let shelf = Arc::downgrade(self);
        crate::task::spawn("model sweeper", async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                match shelf.upgrade() {
                    Some(s) => s.sweep(),
                    None => return,
                }
            }
        });
    }

    /// Makes room for one more loaded model needing `need` bytes: unloads the least
    /// recently used idle ones while a limit would be passed, waiting (up to `wait`)
    /// while all are busy.
    async fn make_room(&self, for_model: &str, need: u64) -> Result<(), Error> {
        if self.max_loaded == 0 && self.max_bytes == 0 {
            return Ok(());
        }
        if self.max_bytes > 0 && need > self.max_bytes {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "cannot load `{for_model}`: it needs about {} MiB, more than --max-memory ({} MiB)",
                    need >> 20,
                    self.max_bytes >> 20
                ),
            ));
        }
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let freed = self.freed.notified();
            let models = self.live();
            let loaded: Vec<&Arc<Inner>> = models
                .iter()
                .filter(|m| lock(&m.state).backend.is_some())
                .collect();
            let used: u64 = loaded.iter().map(|m| lock(&m.state).memory_bytes).sum();
            let count_ok = self.max_loaded == 0 || loaded.len() < self.max_loaded;
            let bytes_ok = self.max_bytes == 0 || used.saturating_add(need) <= self.max_bytes;
            if count_ok && bytes_ok {
                return Ok(());
            }
            let idle = loaded
                .iter()
                .filter(|m| lock(&m.state).in_flight == 0)
                .min_by_key(|m| lock(&m.state).idle_since);
            if let Some(victim) = idle {
                victim.unload_if(&format!("to make room for `{for_model}`"), |_| true);
                continue;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                let limit = if count_ok {
                    "--max-memory"
                } else {
                    "--max-loaded-models"
                };
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "cannot load `{for_model}`: the loaded models are all busy and leave no room ({limit})"
                    ),
                )
                .retryable());
            }
        }
    }
}

/// A request counted among those waiting for a place while it waits.
struct Waiting<'a>(&'a Shelf);

impl<'a> Waiting<'a> {
    fn join(shelf: &'a Shelf) -> Option<Self> {
        use std::sync::atomic::Ordering;
        let prior = shelf.waiting.fetch_add(1, Ordering::SeqCst);
        if prior >= shelf.max_waiting {
            shelf.waiting.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Waiting(shelf))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0
            .waiting
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Resident memory of this process, where the OS says it cheaply (Linux).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// One request's hold on a loaded model: counted in flight until dropped.
struct InUse {
    model: Arc<Inner>,
    backend: Arc<dyn Backend>,
}

impl Inner {
    /// Unloads the model if nothing is using it and `when` holds; the one way a model
    /// is unloaded (expired, making room, keep_alive 0).
    fn unload_if(&self, why: &str, when: impl FnOnce(&State) -> bool) {
        let taken = {
            let mut st = lock(&self.state);
            if st.in_flight == 0 && when(&st) {
                st.backend.take()
            } else {
                None
            }
        };
        if let Some(b) = taken {
            tracing::info!(model = %self.name, "unloaded: {why}");
            release(b);
        }
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        {
            let mut st = lock(&self.model.state);
            st.in_flight = st.in_flight.saturating_sub(1);
            st.idle_since = Instant::now();
        }
        self.model
            .unload_if("after its answer (keep_alive 0)", |st| {
                st.keep == KeepAlive::For(Duration::ZERO)
            });
        self.model.shelf.freed.notify_waiters();
    }
}

impl LazyModel {
    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn residency(&self) -> Residency {
        let st = lock(&self.0.state);
        let expires_in_s = match (st.keep, st.in_flight, st.backend.is_some()) {
            (KeepAlive::For(d), 0, true) => {
                Some(d.saturating_sub(st.idle_since.elapsed()).as_secs())
            }
            _ => None,
        };
        Residency {
            loaded: st.backend.is_some(),
            loading: st.loading,
            in_flight: st.in_flight,
            load_ms: st.load_time.map(|d| d.as_millis() as u64),
            expires_in_s,
            keep_alive_forever: st.keep == KeepAlive::Forever,
            last_error: st.last_error.clone(),
            size_bytes: self.0.size_bytes,
            memory_bytes: st.memory_bytes,
            context: st.ctx,
        }
    }

    /// The loaded backend, loading it first if needed; `keep` (the request's own
    /// keep-alive) replaces the model's from now on. The second value is how long this
    /// request waited for a load it started.
    async fn acquire(
        &self,
        keep: Option<KeepAlive>,
        ctx: Option<u32>,
    ) -> Result<(InUse, Duration), Error> {
        let m = &self.0;
        // Another context size than it has: loaded again, as Ollama does, once idle (a
        // busy model serves with the size it has).
        if let Some(want) = ctx {
            m.unload_if("another context size was asked for", |st| {
                st.backend.is_some() && st.ctx != Some(want)
            });
        }
        if let Some(used) = self.take_loaded(keep) {
            return Ok((used, Duration::ZERO));
        }
        // Loads take turns; the requests waiting for one are bounded, as a queue is.
        let Some(_waiting) = Waiting::join(&m.shelf) else {
            return Err(Error::new(
                ErrorKind::RateLimited,
                format!(
                    "cannot load `{}`: {} requests already wait for models to load",
                    m.name, m.shelf.max_waiting
                ),
            )
            .with_retry_after(1));
        };
        let _turn = m.shelf.loading.lock().await;
        // Another request may have loaded it while this one waited for its turn.
        if let Some(used) = self.take_loaded(keep) {
            return Ok((used, Duration::ZERO));
        }
        if let Some(check) = m.check.clone() {
            let checked = tokio::task::spawn_blocking(move || check())
                .await
                .unwrap_or_else(|e| Err(format!("the check crashed: {e}")));
            if let Err(why) = checked {
                return Err(self.failed(why));
            }
        }
        let need = lock(&m.state).memory_bytes;
        m.shelf.make_room(&m.name, need).await?;
        lock(&m.state).loading = true;
        let started = Instant::now();
        let rss_before = rss_bytes();
        tracing::info!(model = %m.name, "loading on demand");
        let load = Arc::clone(&m.load);
        let result = tokio::task::spawn_blocking(move || load(ctx)).await;
        let took = started.elapsed();
        let mut st = lock(&m.state);
        st.loading = false;
        let result = result.unwrap_or_else(|e| Err(format!("the load crashed: {e}")));
        match result {
            Ok(backend) => {
                // Loads take turns, so the growth is mostly this model's.
                if let (Some(a), Some(b)) = (rss_before, rss_bytes()) {
                    st.memory_bytes = st.memory_bytes.max(b.saturating_sub(a));
                }
                st.backend = Some(Arc::clone(&backend));
                st.ctx = ctx;
                st.load_time = Some(took);
                st.last_error = None;
                st.in_flight += 1;
                if let Some(k) = keep {
                    st.keep = k;
                }
                tracing::info!(model = %m.name, secs = took.as_secs_f32(), "loaded on demand");
                Ok((
                    InUse {
                        model: Arc::clone(m),
                        backend,
                    },
                    took,
                ))
            }
            Err(why) => {
                drop(st);
                Err(self.failed(why))
            }
        }
    }

    /// A load that did not work: remembered (for `/admin/status`) and a 503 naming why.
    fn failed(&self, why: String) -> Error {
        lock(&self.0.state).last_error = Some(why.clone());
        Error::new(
            ErrorKind::Unavailable,
            format!("model `{}` could not be loaded: {why}", self.0.name),
        )
    }

    fn take_loaded(&self, keep: Option<KeepAlive>) -> Option<InUse> {
        let mut st = lock(&self.0.state);
        let backend = Arc::clone(st.backend.as_ref()?);
        st.in_flight += 1;
        if let Some(k) = keep {
            st.keep = k;
        }
        Some(InUse {
            model: Arc::clone(&self.0),
            backend,
        })
    }

    fn loaded(&self) -> Option<Arc<dyn Backend>> {
        lock(&self.0.state).backend.clone()
    }
}

#[async_trait]
impl Backend for LazyModel {
    async fn chat(&self, request: ChatRequest) -> Result<EventStream, Error> {
        let (used, took) = self
            .acquire(request.context.keep_alive, request.context.context_window)
            .await?;
        request.context.progress.set_load_time(took);
        let stream = used.backend.chat(request).await?;
        // The model stays in use until the caller has the whole answer (or goes away).
        Ok(Box::pin(stream.map(move |item| {
            let _ = &used;
            item
        })))
    }

    async fn embed(&self, request: EmbedRequest) -> Result<Embeddings, Error> {
        let (used, _) = self.acquire(None, None).await?;
        used.backend.embed(request).await
    }

    async fn rerank(&self, request: RerankRequest) -> Result<Scores, Error> {
        let (used, _) = self.acquire(None, None).await?;
        used.backend.rerank(request).await
    }

    /// A model that is not loaded is not unhealthy: it loads on its next request.
    fn health(&self) -> Result<(), String> {
        self.loaded().map_or(Ok(()), |b| b.health())
    }

    fn load(&self) -> Option<Load> {
        self.loaded().and_then(|b| b.load())
    }

    fn residency(&self) -> Option<Residency> {
        Some(LazyModel::residency(self))
    }

    async fn tokenize(&self, text: &str, special: bool) -> Result<Vec<u32>, Error> {
        let (used, _) = self.acquire(None, None).await?;
        used.backend.tokenize(text, special).await
    }

    async fn detokenize(&self, tokens: &[u32]) -> Result<String, Error> {
        let (used, _) = self.acquire(None, None).await?;
        used.backend.detokenize(tokens).await
    }

    async fn count_tokens(&self, texts: &[String]) -> Result<Vec<u32>, Error> {
        let (used, _) = self.acquire(None, None).await?;
        used.backend.count_tokens(texts).await
    }

    async fn count_image_tokens(&self, messages: &[Message]) -> Result<u32, Error> {
        let (used, _) = self.acquire(None, None).await?;
        used.backend.count_image_tokens(messages).await
    }
}

#[cfg(test)]
mod tests;
