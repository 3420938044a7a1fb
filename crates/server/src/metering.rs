//! What every front door does for a stored key around the backend call: the gate
//! before it (allowed model, budget, rate limits) and the meter after it (one usage
//! row per request, committed before the answer's last byte; exact for local models
//! even when the caller hangs up, estimated and marked so for upstreams that never
//! said).

use crate::auth::Principal;
use crate::reqlog::RequestCtx;
use futures::StreamExt;
use parlance_core::ir::{Progress, StreamEvent, Usage};
use parlance_core::{Error, ErrorKind, EventStream, ModelInfo};
use parlance_tenancy::keys::now_ms;
use parlance_tenancy::limits::{RateHeaders, Refused, Ticket};
use parlance_tenancy::usage::UsageRow;
use parlance_tenancy::Tenancy;
use std::sync::Arc;
use std::time::Instant;

/// Rough tokens of text, for estimates: about four bytes a token.
pub fn estimate_tokens(bytes: usize) -> u32 {
    (bytes / 4).min(u32::MAX as usize) as u32
}

/// A request the gate let through.
#[derive(Default)]
pub struct Admitted {
    pub ticket: Option<Ticket>,
    pub headers: RateHeaders,
}

/// Checks a stored key's model allowlist, budget and rate limits; `estimate` is the
/// tokens the request may use (prompt + completion cap).
pub async fn gate(
    tenancy: Option<&Arc<Tenancy>>,
    principal: &Principal,
    model: &str,
    estimate: u64,
) -> Result<Admitted, (Error, RateHeaders)> {
    let (Some(t), Some(key)) = (tenancy, principal.key()) else {
        return Ok(Admitted::default());
    };
    if !key.may_use(model) {
        let e = Error::new(
            ErrorKind::PermissionDenied,
            format!("This API key may not use the model `{model}`."),
        )
        .with_param("model")
        .with_code("model_not_allowed");
        return Err((e, RateHeaders::default()));
    }
    if let Err(why) = t.check_budget(key).await {
        metrics::counter!("parlance_limit_rejections_total", "reason" => "budget").increment(1);
        let e = Error::new(
            ErrorKind::RateLimited,
            format!("You exceeded your current quota: {why}."),
        )
        .with_code("insufficient_quota");
        return Err((e, RateHeaders::default()));
    }
    match t.admit(key, estimate).await {
        Ok((ticket, headers)) => Ok(Admitted {
            ticket: Some(ticket),
            headers,
        }),
        Err(d) => {
            let reason = match d.which {
                Refused::Requests => "rpm",
                Refused::Tokens => "tpm",
                Refused::Concurrency => "concurrency",
            };
            metrics::counter!("parlance_limit_rejections_total", "reason" => reason).increment(1);
            let what = match d.which {
                Refused::Requests => format!("requests per minute (limit {})", d.limit),
                Refused::Tokens => format!("tokens per minute (limit {})", d.limit),
                Refused::Concurrency => format!("concurrent requests (limit {})", d.limit),
            };
            let e = Error::new(
                ErrorKind::RateLimited,
                format!(
                    "Rate limit reached for {what}. Please try again in {}s.",
                    d.retry_after
                ),
            )
            .with_code("rate_limit_exceeded")
            .with_retry_after(d.retry_after);
            Err((e, d.headers))
        }
    }
}

/// What the meter knows before the answer starts.
pub struct Meter {
    pub tenancy: Arc<Tenancy>,
    pub row: UsageRow,
    pub price: Option<parlance_core::Price>,
    pub progress: Progress,
    pub ticket: Option<Ticket>,
    /// Estimated prompt tokens, when the backend never says.
    pub prompt_estimate: u32,
    pub ctx: Arc<RequestCtx>,
}

impl Meter {
    pub fn new(
        tenancy: Arc<Tenancy>,
        principal: &Principal,
        info: &ModelInfo,
        front_door: &str,
        streamed: bool,
        progress: Progress,
        ctx: Arc<RequestCtx>,
    ) -> Meter {
        Meter {
            tenancy,
            row: UsageRow {
                at: now_ms(),
                request_id: ctx.id.clone(),
                key_id: principal.key().map(|k| k.id.clone()),
                model: info.id.clone(),
                front_door: front_door.to_string(),
                streamed,
                ..UsageRow::default()
            },
            price: info.price,
            progress,
            ticket: None,
            prompt_estimate: 0,
            ctx,
        }
    }

    /// Fills in counts, cost and timings; `usage` is what the backend reported.
    fn finish(
        &mut self,
        status: String,
        usage: Option<Usage>,
        streamed_bytes: usize,
        started: Instant,
        ttft: Option<Instant>,
    ) -> UsageRow {
        let (u, estimated) = match usage.or_else(|| self.progress.usage()) {
            Some(u) => (u, false),
            None => (
                Usage {
                    prompt_tokens: self.prompt_estimate,
                    completion_tokens: estimate_tokens(streamed_bytes),
                    ..Usage::default()
                },
                true,
            ),
        };
        let mut row = std::mem::take(&mut self.row);
        row.deployment = self.progress.deployment();
        row.status = status;
        row.prompt_tokens = u.prompt_tokens;
        row.completion_tokens = u.completion_tokens;
        row.cached_tokens = u.cached_tokens;
        row.reasoning_tokens = u.reasoning_tokens;
        row.cost_usd = self.price.map_or(0.0, |p| p.cost(&u));
        row.latency_ms = started.elapsed().as_millis() as i64;
        row.ttft_ms = ttft.map(|t| t.duration_since(started).as_millis() as i64);
        row.estimated = estimated;
        if let Some(t) = &self.ticket {
            t.settle(u64::from(u.total()));
        }
        self.ctx.set_usage(u);
        row
    }
}

/// Records a row for a request that never reached the caller's answer (the stream was
/// dropped: the caller left, or the server ended it).
struct Unfinished {
    meter: Option<Meter>,
    started: Instant,
    ttft: Option<Instant>,
    bytes: usize,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(mut m) = self.meter.take() {
            let row = m.finish(
                "cancelled".into(),
                None,
                self.bytes,
                self.started,
                self.ttft,
            );
            // Nobody is waiting for this answer: queue it for the writer.
            m.tenancy.record_detached(row);
        }
    }
}

/// The backend's events, unchanged, with the request's usage row committed before the
/// usage event passes (and so before the answer ends).
pub fn metered(mut events: EventStream, meter: Meter) -> EventStream {
    Box::pin(async_stream::stream! {
        let mut guard = Unfinished { meter: Some(meter), started: Instant::now(), ttft: None, bytes: 0 };
        while let Some(ev) = events.next().await {
            match ev {
                Ok(StreamEvent::Delta { index, delta }) => {
                    guard.ttft.get_or_insert_with(Instant::now);
                    guard.bytes += delta.content.len() + delta.reasoning.len()
                        + delta.tool_calls.iter().map(|t| t.arguments.len()).sum::<usize>();
                    yield Ok(StreamEvent::Delta { index, delta });
                }
                Ok(StreamEvent::Usage(u)) => {
                    if let Some(mut m) = guard.meter.take() {
                        let row = m.finish("ok".into(), Some(u), guard.bytes, guard.started, guard.ttft);
                        if let Err(e) = m.tenancy.record(row, true).await {
                            tracing::error!("usage row not committed: {e}");
                        }
                    }
                    yield Ok(StreamEvent::Usage(u));
                }
                Err(e) => {
                    if let Some(mut m) = guard.meter.take() {
                        let status = format!("error:{}", e.code.as_deref().unwrap_or("backend_error"));
                        let row = m.finish(status, None, guard.bytes, guard.started, guard.ttft);
                        if let Err(e) = m.tenancy.record(row, true).await {
                            tracing::error!("usage row not committed: {e}");
                        }
                    }
                    yield Err(e);
                    return;
                }
                Ok(other) => yield Ok(other),
            }
        }
        if let Some(mut m) = guard.meter.take() {
            // Ended without a usage report: counted from progress, or estimated.
            let row = m.finish("ok".into(), None, guard.bytes, guard.started, guard.ttft);
            if let Err(e) = m.tenancy.record(row, true).await {
                tracing::error!("usage row not committed: {e}");
            }
        }
    })
}

/// A failure before any backend call (bad input, a refused key): its row.
pub async fn record_refusal(meter: Option<Meter>, e: &Error) {
    if let Some(mut m) = meter {
        let status = format!("error:{}", e.code.as_deref().unwrap_or("error"));
        let row = m.finish(status, Some(Usage::default()), 0, Instant::now(), None);
        let _ = m.tenancy.record(row, true).await;
    }
}

/// Bytes of text the prompt is made of (messages and tool schemas).
pub fn prompt_bytes(req: &parlance_core::ir::ChatRequest) -> usize {
    let text: usize = req.messages.iter().map(|m| m.joined_text().len()).sum();
    text + req
        .tools
        .iter()
        .map(|t| t.parameters.to_string().len())
        .sum::<usize>()
}

/// OpenAI's `x-ratelimit-*` headers, for every answer to a limited key (every door
/// sends them: the SDKs of all formats read them or ignore them).
pub fn with_rate_headers(
    mut resp: axum::response::Response,
    headers: &RateHeaders,
) -> axum::response::Response {
    for (name, value) in headers.pairs() {
        if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

/// What every door does before calling the backend: fills the request context, checks
/// a stored key's allowlist, budget and limits, and sets up the usage meter. `Err` is
/// the refusal, already rendered (with its rate headers) and metered.
pub async fn admit(
    state: &crate::AppState,
    ctx: &Arc<RequestCtx>,
    principal: &Principal,
    info: &ModelInfo,
    req: &mut parlance_core::ir::ChatRequest,
    front_door: &str,
) -> Result<(Option<Meter>, RateHeaders), axum::response::Response> {
    use axum::response::IntoResponse;
    let bytes = prompt_bytes(req);
    let cap = req.max_tokens.or(info.max_output_tokens).unwrap_or(1024);
    let estimate = u64::from(estimate_tokens(bytes)) + u64::from(cap) * u64::from(req.n.max(1));
    req.context.request_id = ctx.id.clone();
    req.context.key_id = principal.key().map(|k| k.id.clone());
    if let Some(k) = principal.key() {
        ctx.set_key(&k.id);
    }
    let mut meter = state.tenancy.as_ref().map(|t| {
        let mut m = Meter::new(
            Arc::clone(t),
            principal,
            info,
            front_door,
            req.stream,
            req.context.progress.clone(),
            Arc::clone(ctx),
        );
        m.prompt_estimate = estimate_tokens(bytes);
        m
    });
    match gate(state.tenancy.as_ref(), principal, &req.model, estimate).await {
        Ok(a) => {
            if let Some(m) = meter.as_mut() {
                m.ticket = a.ticket;
            }
            Ok((meter, a.headers))
        }
        Err((e, headers)) => {
            record_refusal(meter, &e).await;
            Err(with_rate_headers(
                crate::ApiError(e).into_response(),
                &headers,
            ))
        }
    }
}

/// The backend's events as every door passes them on: metered, timed for `/metrics`,
/// and ended by a shutdown's deadline.
pub fn watch(
    state: &crate::AppState,
    meter: Option<Meter>,
    events: EventStream,
    model: &str,
    ctx: &RequestCtx,
) -> EventStream {
    let events = match meter {
        Some(m) => metered(events, m),
        None => events,
    };
    let events = crate::observe::observed(events, model.to_string(), ctx.started());
    state.shutdown.guard(events)
}
