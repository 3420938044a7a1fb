//! What every front door does for a stored key around the backend call: the gate
//! before it (allowed model, budget, rate limits) and the meter after it (one usage
//! row per request, committed before the answer's last byte; exact for local models
//! even when the caller hangs up, estimated and marked so for upstreams that never
//! said).

use crate::auth::Principal;
use crate::reqlog::RequestCtx;
use futures::StreamExt;
use parlance_core::ir::PromptGate;
use parlance_core::ir::{Progress, StreamEvent, Usage};
use parlance_core::Code;
use parlance_core::{Error, ErrorKind, EventStream, ModelInfo};
use parlance_tenancy::budget::{Estimate, Exhausted, Hold};
use parlance_tenancy::keys::now_ms;
use parlance_tenancy::limits::{RateHeaders, Refused, Ticket};
use parlance_tenancy::usage::UsageRow;
use parlance_tenancy::Tenancy;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

mod whole;
pub(crate) use whole::{counted, embedded};

/// Rough tokens of text, for estimates: about four bytes a token.
pub(crate) fn estimate_tokens(bytes: usize) -> u32 {
    (bytes / 4).min(u32::MAX as usize) as u32
}

/// A request the gate let through.
#[derive(Default)]
pub(crate) struct Admitted {
    pub ticket: Option<Arc<Ticket>>,
    pub hold: Option<Hold>,
    pub headers: RateHeaders,
    /// Some subject's limits depend on the prompt's size: check them again once the
    /// prompt is counted.
    pub prompt_sized: bool,
}

/// Checks a stored key's model allowlist, budget and rate limits, holding `want` (the
/// tokens and dollars the request may spend: prompt + completion cap) against them.
pub(crate) async fn gate(
    tenancy: Option<&Arc<Tenancy>>,
    principal: &Principal,
    model: &str,
    want: Option<Estimate>,
) -> Result<Admitted, (Error, RateHeaders)> {
    let (Some(t), Some(key)) = (tenancy, principal.key()) else {
        return Ok(Admitted::default());
    };
    // The key, then its user's, team's and payer's limits: the strictest refuses.
    let others = t.subjects(key).await;
    if let Some(s) = std::iter::once(key)
        .chain(&others)
        .find(|s| !s.may_use(model))
    {
        let whose = parlance_tenancy::subjects::whose(&s.id).replace("'s", "");
        let e = Error::new(
            ErrorKind::PermissionDenied,
            format!("{} may not use the model `{model}`.", capitalized(&whose)),
        )
        .with_param("model")
        .with_code(Code::ModelNotAllowed);
        return Err((e, RateHeaders::default()));
    }
    // `None`: work that spends no tokens (counting), held to request limits only.
    let hold = match want {
        Some(want) => Some(
            t.reserve_budget_all(key, &others, want)
                .await
                .map_err(|(why, s)| (quota_error(&why, &s), RateHeaders::default()))?,
        ),
        None => None,
    };
    match t
        .admit_all(key, &others, want.map_or(0, |w| w.tokens))
        .await
    {
        Ok((ticket, headers)) => Ok(Admitted {
            ticket: Some(Arc::new(ticket)),
            hold,
            headers,
            prompt_sized: limits_prompt(key) || others.iter().any(limits_prompt),
        }),
        Err((d, subject)) => {
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
            let what = match parlance_tenancy::subjects::whose(&subject) {
                "this key's" => what,
                whose => format!("{what} of {}", whose.trim_end_matches("'s")),
            };
            Err((rate_error(&what, d.retry_after), d.headers))
        }
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn quota_error(why_kind: &Exhausted, subject: &str) -> Error {
    let why = why_kind.text(parlance_tenancy::subjects::whose(subject));
    metrics::counter!("parlance_limit_rejections_total", "reason" => "budget").increment(1);
    match why_kind {
        // Budget is left once the requests in flight settle: worth a retry.
        Exhausted::TokensInFlight { .. } | Exhausted::UsdInFlight { .. } => Error::new(
            ErrorKind::RateLimited,
            format!("Budget reserved by requests in flight: {why}."),
        )
        .with_code(Code::RateLimitExceeded)
        .with_retry_after(1),
        _ => Error::new(
            ErrorKind::RateLimited,
            format!("You exceeded your current quota: {why}."),
        )
        .with_code(Code::InsufficientQuota),
    }
}

fn rate_error(what: &str, retry_after: u64) -> Error {
    Error::new(
        ErrorKind::RateLimited,
        format!("Rate limit reached for {what}. Please try again in {retry_after}s."),
    )
    .with_code(Code::RateLimitExceeded)
    .with_retry_after(retry_after)
}

/// The limits checked again once the backend has counted the prompt: the TPM
/// reservation and the budget hold move from the byte estimate to the count.
fn prompt_gate(
    ticket: Option<Arc<Ticket>>,
    hold: Arc<Mutex<Option<Hold>>>,
    completion: u64,
    price: Option<parlance_core::Price>,
) -> PromptGate {
    PromptGate(Arc::new(move |prompt_tokens| {
        let (ticket, hold) = (ticket.clone(), Arc::clone(&hold));
        Box::pin(async move {
            let want = estimate_of(u64::from(prompt_tokens), completion, price);
            if let Some(t) = &ticket {
                if let Err(limit) = t.resize(want.tokens).await {
                    metrics::counter!("parlance_limit_rejections_total", "reason" => "tpm")
                        .increment(1);
                    let what = format!(
                        "tokens per minute (limit {limit}; this prompt is {prompt_tokens} tokens)"
                    );
                    return Err(rate_error(&what, 1));
                }
            }
            let taken = hold.lock().ok().and_then(|mut h| h.take());
            if let Some(mut h) = taken {
                let resized = h.resize_naming(want).await;
                if let Ok(mut slot) = hold.lock() {
                    *slot = Some(h);
                }
                resized.map_err(|(why, subject)| quota_error(&why, &subject))?;
            }
            Ok(())
        })
    }))
}

/// Tokens and dollars a request may spend.
fn estimate_of(prompt: u64, completion: u64, price: Option<parlance_core::Price>) -> Estimate {
    let usd = price.map_or(0.0, |p| {
        p.cost(&Usage {
            prompt_tokens: prompt.min(u64::from(u32::MAX)) as u32,
            completion_tokens: completion.min(u64::from(u32::MAX)) as u32,
            ..Usage::default()
        })
    });
    Estimate {
        tokens: prompt + completion,
        usd,
    }
}

/// What the meter knows before the answer starts.
pub(crate) struct Meter {
    pub tenancy: Arc<Tenancy>,
    pub row: UsageRow,
    pub price: Option<parlance_core::Price>,
    pub progress: Progress,
    pub ticket: Option<Arc<Ticket>>,
    /// The budget held for this request; released after its row counts the spend.
    pub hold: Arc<Mutex<Option<Hold>>>,
    /// Estimated prompt tokens, when the backend never says.
    pub prompt_estimate: u32,
    pub ctx: Arc<RequestCtx>,
}

impl Meter {
    pub(crate) fn new(
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
            hold: Arc::default(),
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
        if let Some(h) = self.hold.lock().ok().as_mut().and_then(|h| h.as_mut()) {
            h.set_actual(Estimate {
                tokens: u64::from(u.total()),
                usd: row.cost_usd,
            });
        }
        self.ctx.set_usage(u);
        row
    }
}

/// The budget hold ends with the meter, after its row has counted the spend.
impl Drop for Meter {
    fn drop(&mut self) {
        let hold = self.hold.lock().ok().and_then(|mut h| h.take());
        drop(hold);
        // A backend that never counted the prompt (an upstream) left the gate, and the
        // ticket in it, in the request's progress, which may outlive this meter.
        self.progress.clear_prompt_gate();
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
pub(crate) fn metered(mut events: EventStream, meter: Meter) -> EventStream {
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
                        let status = format!("error:{}", e.code.as_ref().map_or("backend_error".into(), Code::as_str));
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
pub(crate) async fn record_refusal(meter: Option<Meter>, e: &Error) {
    let status = format!(
        "error:{}",
        e.code.as_ref().map_or("error".into(), Code::as_str)
    );
    record_without_tokens(meter, status).await;
}

/// The row of a request that spent no tokens, committed before its answer goes out.
async fn record_without_tokens(meter: Option<Meter>, status: String) {
    if let Some(mut m) = meter {
        let row = m.finish(status, Some(Usage::default()), 0, Instant::now(), None);
        if let Err(e) = m.tenancy.record(row, true).await {
            tracing::error!("usage row not committed: {e}");
        }
    }
}

/// Whether a key's limits depend on the prompt's size.
fn limits_prompt(k: &parlance_tenancy::keys::KeyRecord) -> bool {
    k.tpm.is_some() || k.budget_tokens.is_some() || k.budget_usd.is_some()
}

/// Tokens a chat template adds around the text, for upstreams (local models count the
/// rendered prompt exactly before the work is queued): a few per message, as OpenAI
/// documents for its own templates.
fn template_overhead(req: &parlance_core::ir::ChatRequest) -> u64 {
    3 + 4 * req.messages.len() as u64
}

/// Bytes of text the prompt is made of (messages and tool schemas).
pub(crate) fn prompt_bytes(req: &parlance_core::ir::ChatRequest) -> usize {
    let text: usize = req.messages.iter().map(|m| m.joined_text().len()).sum();
    text + req
        .tools
        .iter()
        .map(|t| t.parameters.to_string().len())
        .sum::<usize>()
}

/// The request's meter when a store is configured; the request log learns its key.
fn meter_of(
    state: &crate::AppState,
    ctx: &Arc<RequestCtx>,
    principal: &Principal,
    info: &ModelInfo,
    front_door: &'static str,
    streamed: bool,
    progress: Progress,
) -> Option<Meter> {
    // Metrics name the door as usage rows do (the gate named only the wire format).
    ctx.set_front_door(front_door);
    if let Some(k) = principal.key() {
        ctx.set_key(&k.id);
    }
    let tenancy = state.tenancy.as_ref()?;
    Some(Meter::new(
        Arc::clone(tenancy),
        principal,
        info,
        front_door,
        streamed,
        progress,
        Arc::clone(ctx),
    ))
}

/// OpenAI's `x-ratelimit-*` headers, for every answer to a limited key (every door
/// sends them: the SDKs of all formats read them or ignore them).
pub(crate) fn with_rate_headers(
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
/// the refusal (already metered) and the rate headers to answer it with.
pub(crate) async fn admit(
    state: &crate::AppState,
    ctx: &Arc<RequestCtx>,
    principal: &Principal,
    info: &ModelInfo,
    req: &mut parlance_core::ir::ChatRequest,
    front_door: &'static str,
) -> Result<(Option<Meter>, RateHeaders), (Error, RateHeaders)> {
    let bytes = prompt_bytes(req);
    let cap = req.max_tokens.or(info.max_output_tokens).unwrap_or(1024);
    let completion = u64::from(cap) * u64::from(req.n.max(1));
    let want = estimate_of(
        u64::from(estimate_tokens(bytes)) + template_overhead(req),
        completion,
        info.price,
    );
    req.context.request_id = ctx.id.clone();
    req.context.key_id = principal.key().map(|k| k.id.clone());
    let progress = req.context.progress.clone();
    let mut meter = meter_of(
        state, ctx, principal, info, front_door, req.stream, progress,
    );
    if let Some(m) = meter.as_mut() {
        m.prompt_estimate = estimate_tokens(bytes);
    }
    match gate(state.tenancy.as_ref(), principal, &req.model, Some(want)).await {
        Ok(a) => {
            if let Some(m) = meter.as_mut() {
                if let Ok(mut h) = m.hold.lock() {
                    *h = a.hold;
                }
                m.ticket = a.ticket;
                if a.prompt_sized {
                    let g = prompt_gate(
                        m.ticket.clone(),
                        Arc::clone(&m.hold),
                        completion,
                        info.price,
                    );
                    req.context.progress.set_prompt_gate(g);
                }
            }
            Ok((meter, a.headers))
        }
        Err((e, headers)) => {
            record_refusal(meter, &e).await;
            Err((e, headers))
        }
    }
}

/// The backend's events as every door passes them on: metered, timed for `/metrics`
/// and the request log, and ended by a shutdown's deadline.
pub(crate) fn watch(
    state: &crate::AppState,
    meter: Option<Meter>,
    events: EventStream,
    model: &str,
    ctx: &Arc<RequestCtx>,
    stream: bool,
) -> EventStream {
    let events = match meter {
        Some(m) => metered(events, m),
        None => events,
    };
    let events = crate::observe::observed(events, model.to_string(), Arc::clone(ctx), stream);
    state.shutdown.guard(events)
}
