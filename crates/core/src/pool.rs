//! A public model served by several deployments: weighted or least-in-flight balancing,
//! retries with backoff before the first event reaches the caller, ordered fallback
//! models, and a per-deployment circuit breaker. It is itself a [`Backend`], so the
//! front door cannot tell it from a single model.

use crate::backend::{Backend, EventStream};
use crate::error::{Error, ErrorKind};
use crate::ir::ChatRequest;
use async_trait::async_trait;
use futures::StreamExt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// `balance = "..."` in parlance.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Random, in proportion to each deployment's weight.
    #[default]
    Weighted,
    /// The deployment with the fewest requests in flight per unit of weight.
    #[serde(alias = "least_in_flight")]
    LeastInFlight,
}

#[derive(Debug, Clone)]
pub struct PoolPolicy {
    pub balance: Balance,
    /// Attempts after the first, across deployments, before falling back.
    pub retries: u32,
    /// First retry waits this long, doubling each time up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// Consecutive failures that put a deployment in cooldown.
    pub failure_threshold: u32,
    pub cooldown: Duration,
}

impl Default for PoolPolicy {
    fn default() -> Self {
        PoolPolicy {
            balance: Balance::Weighted,
            retries: 2,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            failure_threshold: 3,
            cooldown: Duration::from_secs(30),
        }
    }
}

pub struct Deployment {
    /// For logs and errors, e.g. `openai/gpt-4o` or `local/smollm2`.
    pub name: String,
    pub backend: Arc<dyn Backend>,
    pub weight: u32,
}

struct Slot {
    d: Deployment,
    /// Shared with the deployment's open streams, which report mid-stream failures.
    health: Arc<Health>,
}

struct Health {
    name: String,
    in_flight: AtomicUsize,
    failures: AtomicU32,
    attempts: AtomicU64,
    failed_total: AtomicU64,
    cooldown_until: Mutex<Option<Instant>>,
}

impl Health {
    fn cooling(&self, now: Instant) -> bool {
        self.cooldown_left(now).is_some()
    }

    /// How much of its cooldown is left; `None` while it takes requests.
    fn cooldown_left(&self, now: Instant) -> Option<Duration> {
        let until = (*self.cooldown_until.lock().ok()?)?;
        (until > now).then(|| until.duration_since(now))
    }

    fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if let Ok(mut c) = self.cooldown_until.lock() {
            *c = None;
        }
    }

    fn failed(&self, cooldown: Duration, threshold: u32) {
        self.failed_total.fetch_add(1, Ordering::Relaxed);
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        // Past the threshold every failure (including the half-open probe after a
        // cooldown) starts a new cooldown.
        if n >= threshold.max(1) {
            if let Ok(mut c) = self.cooldown_until.lock() {
                *c = Some(Instant::now() + cooldown);
            }
            tracing::warn!(
                deployment = %self.name,
                failures = n,
                "deployment cooling down for {:?}",
                cooldown
            );
        }
    }
}

pub struct Pool {
    model: String,
    slots: Vec<Slot>,
    policy: PoolPolicy,
    /// Set after every pool is built, since fallbacks may name models defined later.
    fallbacks: OnceLock<Vec<Arc<Pool>>>,
}

/// One attempt on a deployment: counted in flight until dropped (with a stream, when
/// the stream is), and the way the attempt reports how its answer ended.
struct InFlight {
    health: Arc<Health>,
    cooldown: Duration,
    threshold: u32,
}

impl InFlight {
    fn succeeded(&self) {
        self.health.succeeded();
    }

    fn failed(&self) {
        self.health.failed(self.cooldown, self.threshold);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.health.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub fn new(model: impl Into<String>, deployments: Vec<Deployment>, policy: PoolPolicy) -> Self {
        Pool {
            model: model.into(),
            slots: deployments
                .into_iter()
                .map(|d| Slot {
                    health: Arc::new(Health {
                        name: d.name.clone(),
                        in_flight: AtomicUsize::new(0),
                        failures: AtomicU32::new(0),
                        attempts: AtomicU64::new(0),
                        failed_total: AtomicU64::new(0),
                        cooldown_until: Mutex::new(None),
                    }),
                    d,
                })
                .collect(),
            policy,
            fallbacks: OnceLock::new(),
        }
    }

    /// Sets the fallbacks once, when the catalog is assembled; a later call is ignored
    /// (the first assembly wins, and pools are never re-linked while serving).
    pub fn set_fallbacks(&self, fallbacks: Vec<Arc<Pool>>) {
        self.fallbacks.set(fallbacks).ok();
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// Requests in flight per deployment, in configuration order.
    pub fn in_flight(&self) -> Vec<usize> {
        self.slots
            .iter()
            .map(|s| s.health.in_flight.load(Ordering::Relaxed))
            .collect()
    }

    /// Picks among deployments not cooling down, preferring ones not yet tried; when
    /// all are cooling down, the one whose cooldown ends first (a half-open probe).
    fn pick(&self, tried: &[usize], excluded: &[usize], session: Option<&str>) -> Option<usize> {
        let now = Instant::now();
        let healthy: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(i, s)| !excluded.contains(i) && !s.health.cooling(now) && s.d.weight > 0)
            .map(|(i, _)| i)
            .collect();
        let fresh: Vec<usize> = healthy
            .iter()
            .copied()
            .filter(|i| !tried.contains(i))
            .collect();
        let candidates = if !fresh.is_empty() {
            fresh
        } else if !healthy.is_empty() {
            healthy
        } else {
            // Everything is cooling down: probe the one closest to recovery.
            return self
                .slots
                .iter()
                .enumerate()
                .filter(|(i, _)| !tried.contains(i) && !excluded.contains(i))
                .min_by_key(|(_, s)| s.health.cooldown_until.lock().ok().and_then(|t| *t))
                .map(|(i, _)| i);
        };
        if let (Some(s), true) = (session, tried.is_empty()) {
            return self.sticky(&candidates, s);
        }
        match self.policy.balance {
            Balance::Weighted => self.weighted(&candidates),
            Balance::LeastInFlight => {
                let load = |i: usize| {
                    self.slots.get(i).map_or(f64::INFINITY, |s| {
                        s.health.in_flight.load(Ordering::Relaxed) as f64 / self.weight(i) as f64
                    })
                };
                let best = candidates
                    .iter()
                    .map(|&i| load(i))
                    .fold(f64::INFINITY, f64::min);
                let tied: Vec<usize> = candidates
                    .into_iter()
                    .filter(|&i| load(i) <= best)
                    .collect();
                self.weighted(&tied)
            }
        }
    }

    /// A deployment's weight as the picks count it (at least 1).
    fn weight(&self, i: usize) -> u64 {
        self.slots
            .get(i)
            .map_or(1, |s| u64::from(s.d.weight.max(1)))
    }

    /// Rendezvous hashing: a session keeps its deployment while that one is healthy,
    /// and only the sessions of a deployment that goes away move; weights still hold.
    fn sticky(&self, candidates: &[usize], session: &str) -> Option<usize> {
        use std::hash::{Hash, Hasher};
        let score = |i: usize| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (session, i, self.slots.get(i).map(|s| &s.d.name)).hash(&mut h);
            // Uniform in (0, 1]; -w / ln(u) picks deployment i with probability w_i / W.
            let u = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
            let u = u.max(f64::MIN_POSITIVE);
            -(self.weight(i) as f64) / u.ln()
        };
        candidates
            .iter()
            .copied()
            .max_by(|&a, &b| score(a).total_cmp(&score(b)))
    }

    fn weighted(&self, candidates: &[usize]) -> Option<usize> {
        let total: u64 = candidates.iter().map(|&i| self.weight(i)).sum();
        let mut r = rand::random_range(0..total.max(1));
        for &i in candidates {
            let w = self.weight(i);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        candidates.first().copied()
    }

    /// Tries deployments (with retries) but not fallbacks. `call` makes one attempt on
    /// one deployment and is handed the deployment's in-flight guard, which it keeps for
    /// as long as the answer is being made (a stream keeps it to its end).
    async fn try_deployments<T, F, Fut>(&self, session: Option<&str>, call: &F) -> Result<T, Error>
    where
        F: Fn(Arc<dyn Backend>, InFlight) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut tried: Vec<usize> = Vec::new();
        // Deployments that failed in a way retrying cannot fix (bad key, unknown model).
        let mut excluded: Vec<usize> = Vec::new();
        let mut last: Option<Error> = None;
        for attempt in 0..=self.policy.retries {
            let Some(i) = self.pick(&tried, &excluded, session) else {
                break;
            };
            if attempt > 0 {
                let wait = self
                    .policy
                    .backoff
                    .saturating_mul(1 << (attempt - 1).min(16))
                    .min(self.policy.backoff_max);
                let hinted = last
                    .as_ref()
                    .and_then(|e| e.retry_after)
                    .map(Duration::from_secs)
                    .unwrap_or_default()
                    .min(self.policy.backoff_max);
                tokio::time::sleep(wait.max(hinted)).await;
            }
            tried.push(i);
            let Some(slot) = self.slots.get(i) else {
                break;
            };
            slot.health.in_flight.fetch_add(1, Ordering::Relaxed);
            slot.health.attempts.fetch_add(1, Ordering::Relaxed);
            let guard = InFlight {
                health: Arc::clone(&slot.health),
                cooldown: self.policy.cooldown,
                threshold: self.policy.failure_threshold,
            };
            let e = match call(Arc::clone(&slot.d.backend), guard).await {
                Ok(answer) => return Ok(answer),
                Err(e) if !e.retryable => return Err(e),
                Err(e) => e,
            };
            if e.deployment_fault {
                // A bad key or model will not fix itself: bench it at once.
                excluded.push(i);
                slot.health.failed(self.policy.cooldown, 1);
            } else {
                slot.health
                    .failed(self.policy.cooldown, self.policy.failure_threshold);
            }
            tracing::warn!(model = %self.model, deployment = %slot.d.name, attempt, error = %e, "deployment failed");
            last = Some(e);
        }
        Err(last.unwrap_or_else(|| {
            Error::new(
                ErrorKind::Unavailable,
                format!("model `{}` has no deployment available", self.model),
            )
            .retryable()
        }))
    }

    /// This pool's deployments, then each fallback model's (never a fallback's own
    /// fallbacks: no cycles), until one answers or an error retrying cannot fix.
    async fn serve<T, F, Fut>(&self, session: Option<&str>, call: F) -> Result<T, Error>
    where
        F: Fn(Arc<dyn Backend>, InFlight) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let err = match self.try_deployments(session, &call).await {
            Ok(answer) => return Ok(answer),
            Err(e) if !e.retryable => return Err(e),
            Err(e) => e,
        };
        for fb in self.fallbacks.get().map(Vec::as_slice).unwrap_or_default() {
            tracing::warn!(model = %self.model, fallback = %fb.model, "falling back");
            match fb.try_deployments(session, &call).await {
                Ok(answer) => return Ok(answer),
                Err(e) if !e.retryable => return Err(e),
                Err(_) => {}
            }
        }
        Err(err)
    }
}

impl Pool {
    /// [`Pool::serve`] for calls whose answer comes whole (embeddings, rerank): the
    /// deployment is judged on it at once.
    async fn serve_whole<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: Fn(Arc<dyn Backend>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let judged = |backend: Arc<dyn Backend>, guard: InFlight| {
            let answer = call(backend);
            async move {
                let answer = answer.await?;
                guard.succeeded();
                Ok(answer)
            }
        };
        self.serve(None, judged).await
    }
}

/// A stream whose deployment's health is judged on the whole answer: one that breaks
/// its streams midway is unhealthy even though it is too late to retry.
fn judged(mut stream: EventStream, guard: InFlight) -> EventStream {
    Box::pin(async_stream::stream! {
        let mut broke = false;
        while let Some(item) = stream.next().await {
            if let Err(e) = &item {
                if e.retryable || matches!(e.kind, ErrorKind::Upstream | ErrorKind::Timeout) {
                    guard.failed();
                    broke = true;
                }
            }
            yield item;
        }
        if !broke {
            guard.succeeded();
        }
    })
}

/// Waits for a stream's first event: an error there counts as the call failing.
async fn first_event(started: Result<EventStream, Error>) -> Result<EventStream, Error> {
    let mut stream = started?;
    match stream.next().await {
        Some(Ok(ev)) => Ok(Box::pin(futures::stream::iter([Ok(ev)]).chain(stream))),
        Some(Err(e)) => Err(e),
        None => Err(Error::new(
            ErrorKind::Upstream,
            "the backend ended its answer before any content",
        )
        .retryable()),
    }
}

#[async_trait]
impl Backend for Pool {
    /// A stream is returned only once its first event arrived, so every failure before
    /// it can still be retried.
    async fn chat(&self, request: ChatRequest) -> Result<EventStream, Error> {
        let session = request.context.session.clone();
        let call = |backend: Arc<dyn Backend>, guard: InFlight| {
            let request = request.clone();
            async move {
                let stream = first_event(backend.chat(request).await).await?;
                Ok(judged(stream, guard))
            }
        };
        self.serve(session.as_deref(), call).await
    }

    /// The local deployments' slots and queues, summed (`None`: all are upstreams).
    fn load(&self) -> Option<crate::backend::Load> {
        self.slots
            .iter()
            .filter_map(|s| s.d.backend.load())
            .reduce(|a, b| crate::backend::Load {
                queued: a.queued + b.queued,
                busy_slots: a.busy_slots + b.busy_slots,
                slots: a.slots + b.slots,
                generated_tokens: a.generated_tokens + b.generated_tokens,
            })
    }

    fn composition(&self) -> crate::backend::Composition {
        let now = Instant::now();
        let deployments = self
            .slots
            .iter()
            .map(|s| {
                let h = &s.health;
                let cooldown_ms = h.cooldown_left(now).map(|d| d.as_millis() as u64);
                crate::backend::DeploymentState {
                    name: s.d.name.clone(),
                    weight: s.d.weight,
                    in_flight: h.in_flight.load(Ordering::Relaxed),
                    attempts: h.attempts.load(Ordering::Relaxed),
                    failures: h.failed_total.load(Ordering::Relaxed),
                    consecutive_failures: h.failures.load(Ordering::Relaxed),
                    cooldown_ms,
                    down: s.d.backend.health().err(),
                    load: s.d.backend.load(),
                }
            })
            .collect();
        let fallbacks = self
            .fallbacks
            .get()
            .map(|f| f.iter().map(|p| p.model.clone()).collect())
            .unwrap_or_default();
        crate::backend::Composition {
            deployments,
            fallbacks,
            ..Default::default()
        }
    }

    /// Retried and falling back as chat is.
    async fn embed(
        &self,
        request: crate::embed::EmbedRequest,
    ) -> Result<crate::embed::Embeddings, Error> {
        self.serve_whole(|b| {
            let request = request.clone();
            async move { b.embed(request).await }
        })
        .await
    }

    async fn rerank(
        &self,
        request: crate::embed::RerankRequest,
    ) -> Result<crate::embed::Scores, Error> {
        self.serve_whole(|b| {
            let request = request.clone();
            async move { b.rerank(request).await }
        })
        .await
    }

    /// A pool of one deployment loaded on demand is loaded as that deployment is.
    fn residency(&self) -> Option<crate::lazy::Residency> {
        match self.slots.as_slice() {
            [only] => only.d.backend.residency(),
            _ => None,
        }
    }

    /// Healthy while any deployment can serve.
    fn health(&self) -> Result<(), String> {
        let mut reasons = Vec::new();
        for s in &self.slots {
            match s.d.backend.health() {
                Ok(()) => return Ok(()),
                Err(e) => reasons.push(format!("{}: {e}", s.d.name)),
            }
        }
        if reasons.is_empty() {
            return Ok(());
        }
        Err(reasons.join("; "))
    }

    async fn tokenize(&self, text: &str, special: bool) -> Result<Vec<u32>, Error> {
        match self.slots.first() {
            Some(s) => s.d.backend.tokenize(text, special).await,
            None => Err(Error::model_not_found(&self.model)),
        }
    }

    async fn detokenize(&self, tokens: &[u32]) -> Result<String, Error> {
        match self.slots.first() {
            Some(s) => s.d.backend.detokenize(tokens).await,
            None => Err(Error::model_not_found(&self.model)),
        }
    }

    async fn count_tokens(&self, texts: &[String]) -> Result<Vec<u32>, Error> {
        match self.slots.first() {
            Some(s) => s.d.backend.count_tokens(texts).await,
            None => Err(Error::model_not_found(&self.model)),
        }
    }

    async fn count_image_tokens(&self, messages: &[crate::ir::Message]) -> Result<u32, Error> {
        match self.slots.first() {
            Some(s) => s.d.backend.count_image_tokens(messages).await,
            None => Err(Error::model_not_found(&self.model)),
        }
    }
}
