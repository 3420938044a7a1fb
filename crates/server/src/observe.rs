//! Prometheus metrics: what `GET /metrics` shows, and the stream observer that feeds
//! time to first token, inter-token latency and token counts for every answer.

use crate::reqlog::RequestCtx;
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use parlance_core::ir::StreamEvent;
use parlance_core::Code;
use parlance_core::{Error, ErrorKind, EventStream};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Installs the process-wide recorder; the handle renders `/metrics`.
pub fn install() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    let buckets = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ];
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&buckets)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("metrics: {e}"))
}

/// One model's per-answer metric handles. The registry hashes and allocates the labels
/// on every lookup; a handle, once made, records without either.
struct ModelMetrics {
    ttft: metrics::Histogram,
    itl: metrics::Histogram,
    prompt: metrics::Counter,
    completion: metrics::Counter,
    cached: metrics::Counter,
}

/// Models whose handles are kept (more are looked up each time, as before).
const KEPT_MODELS: usize = 4096;

fn model_metrics(model: &str) -> Arc<ModelMetrics> {
    static KEPT: std::sync::LazyLock<std::sync::RwLock<HashMap<String, Arc<ModelMetrics>>>> =
        std::sync::LazyLock::new(Default::default);
    if let Some(m) = KEPT.read().ok().and_then(|k| k.get(model).cloned()) {
        return m;
    }
    let label = model.to_string();
    let tokens = |kind: &'static str| metrics::counter!("parlance_tokens_total", "model" => label.clone(), "kind" => kind);
    let m = Arc::new(ModelMetrics {
        ttft: metrics::histogram!("parlance_time_to_first_token_seconds", "model" => label.clone()),
        itl: metrics::histogram!("parlance_inter_token_latency_seconds", "model" => label.clone()),
        prompt: tokens("prompt"),
        completion: tokens("completion"),
        cached: tokens("cached"),
    });
    if let Ok(mut kept) = KEPT.write() {
        if kept.len() < KEPT_MODELS {
            kept.insert(label, Arc::clone(&m));
        }
    }
    m
}

/// `parlance_requests_total`'s handle for one set of labels, kept per model like
/// [`model_metrics`]'s (registering it per request was ~2% of a proxied request).
pub(crate) fn count_request(model: &str, door: &'static str, status: u16, outcome: &str) {
    type ByModel = HashMap<String, Vec<(&'static str, u16, String, metrics::Counter)>>;
    static KEPT: std::sync::LazyLock<std::sync::RwLock<ByModel>> =
        std::sync::LazyLock::new(Default::default);
    let found = KEPT.read().ok().and_then(|k| {
        k.get(model)?
            .iter()
            .find(|(d, s, o, _)| *d == door && *s == status && o == outcome)
            .map(|(.., c)| c.clone())
    });
    let counter = found.unwrap_or_else(|| {
        let c = metrics::counter!(
            "parlance_requests_total",
            "model" => model.to_string(),
            "front_door" => door,
            "status" => status.to_string(),
            "outcome" => outcome.to_string()
        );
        if let Ok(mut kept) = KEPT.write() {
            if kept.len() < KEPT_MODELS {
                let sets = kept.entry(model.to_string()).or_default();
                // Outcomes are a short list of words, statuses a few codes.
                if sets.len() < 64 {
                    sets.push((door, status, outcome.to_string(), c.clone()));
                }
            }
        }
        c
    });
    counter.increment(1);
}

/// Passes the events through, timing the first delta (from the request's start) and
/// the gaps between deltas, and counting the tokens of the usage report; the request
/// log learns the usage, and for a stream its first delta and how it ended when not
/// normally.
pub fn observed(
    mut events: EventStream,
    model: String,
    ctx: Arc<RequestCtx>,
    stream: bool,
) -> EventStream {
    let started = ctx.started();
    Box::pin(async_stream::stream! {
        let mut last: Option<Instant> = None;
        let m = model_metrics(&model);
        while let Some(ev) = events.next().await {
            match &ev {
                Ok(StreamEvent::Delta { .. }) => {
                    let now = Instant::now();
                    match last {
                        None => {
                            if stream {
                                ctx.first_token();
                            }
                            m.ttft.record(now.duration_since(started).as_secs_f64());
                        }
                        Some(prev) => m.itl.record(now.duration_since(prev).as_secs_f64()),
                    }
                    last = Some(now);
                }
                Ok(StreamEvent::Usage(u)) => {
                    ctx.set_usage(*u);
                    m.prompt.increment(u64::from(u.prompt_tokens));
                    m.completion.increment(u64::from(u.completion_tokens));
                    m.cached.increment(u64::from(u.cached_tokens));
                }
                Err(e) if stream => {
                    ctx.set_outcome(format!("error:{}", e.code.as_ref().map_or("stream_error".into(), Code::as_str)));
                }
                _ => {}
            }
            yield ev;
        }
    })
}

/// `GET /metrics`: Prometheus text. Needs the admin key when one is set.
pub async fn metrics_page(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(handle) = &state.metrics else {
        return crate::ApiError(
            Error::new(
                ErrorKind::NotFound,
                "Metrics are not enabled on this server.",
            )
            .with_code(Code::UnknownUrl),
        )
        .into_response();
    };
    if let Some(admin) = state.tenancy.as_ref().and_then(|t| t.admin_key.as_deref()) {
        let ok = crate::auth::presented_key(&headers)
            .is_some_and(|k| parlance_tenancy::keys::same(k, admin));
        if !ok {
            return crate::ApiError(
                Error::new(
                    ErrorKind::Authentication,
                    "GET /metrics needs the admin key.",
                )
                .with_code(Code::InvalidAdminKey),
            )
            .into_response();
        }
    }
    for route in state.router.routes() {
        if let Some(r) = route.backend.residency() {
            let model = route.info.id.clone();
            let loaded = if r.loaded { 1.0 } else { 0.0 };
            metrics::gauge!("parlance_model_loaded", "model" => model.clone()).set(loaded);
            if let Some(ms) = r.load_ms {
                metrics::gauge!("parlance_model_load_seconds", "model" => model)
                    .set(ms as f64 / 1000.0);
            }
        }
        if let Some(load) = route.backend.load() {
            let model = route.info.id.clone();
            metrics::gauge!("parlance_queue_depth", "model" => model.clone())
                .set(load.queued as f64);
            metrics::gauge!("parlance_busy_slots", "model" => model.clone())
                .set(load.busy_slots as f64);
            metrics::gauge!("parlance_slots", "model" => model).set(load.slots as f64);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}
