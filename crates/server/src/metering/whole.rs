//! Requests answered whole, without a stream of tokens: the counting endpoints and
//! embeddings and rerank.

use super::{estimate_of, estimate_tokens, gate, meter_of, record_refusal, record_without_tokens};
use crate::auth::Principal;
use crate::reqlog::RequestCtx;
use parlance_core::ir::{Progress, Usage};
use parlance_core::{Error, ModelInfo};
use parlance_tenancy::limits::RateHeaders;
use std::sync::Arc;
use std::time::Instant;

/// What the counting endpoints (`/v1/tokens/count`, `count_tokens`, `:countTokens`,
/// `/tokenize`, `/detokenize`) go through: a stored key's model allowlist and request
/// limits (RPM, concurrency; not token budgets), then `work`, metered as one zero-token
/// usage row whatever its outcome.
pub(crate) async fn counted<T>(
    state: &crate::AppState,
    ctx: &Arc<RequestCtx>,
    principal: &Principal,
    info: &ModelInfo,
    front_door: &'static str,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let meter = meter_of(
        state,
        ctx,
        principal,
        info,
        front_door,
        false,
        Progress::default(),
    );
    let admitted = match gate(state.tenancy.as_ref(), principal, &info.id, None).await {
        Ok(a) => a,
        Err((e, _)) => {
            record_refusal(meter, &e).await;
            return Err(e);
        }
    };
    let result = work.await;
    match &result {
        Err(e) => record_refusal(meter, e).await,
        Ok(_) => record_without_tokens(meter, "ok".into()).await,
    }
    drop(admitted);
    result
}

/// What the embeddings and rerank endpoints go through: the key's allowlist, limits
/// and budget, with the input's estimated tokens held, then `work`; one usage row with
/// its prompt tokens (`tokens` of the result; cost at the input price), committed
/// before the answer goes out. `Err` carries the rate headers to answer with.
#[allow(
    clippy::too_many_arguments,
    reason = "one call per endpoint, each argument distinct"
)]
pub(crate) async fn embedded<T>(
    state: &crate::AppState,
    ctx: &Arc<RequestCtx>,
    principal: &Principal,
    info: &ModelInfo,
    front_door: &'static str,
    bytes: usize,
    work: impl std::future::Future<Output = Result<T, Error>>,
    tokens: fn(&T) -> u32,
) -> Result<(T, RateHeaders), (Error, RateHeaders)> {
    let mut meter = meter_of(
        state,
        ctx,
        principal,
        info,
        front_door,
        false,
        Progress::default(),
    );
    if let Some(m) = meter.as_mut() {
        m.prompt_estimate = estimate_tokens(bytes);
    }
    let want = estimate_of(u64::from(estimate_tokens(bytes)), 0, info.price);
    let admitted = match gate(state.tenancy.as_ref(), principal, &info.id, Some(want)).await {
        Ok(a) => a,
        Err((e, headers)) => {
            record_refusal(meter, &e).await;
            return Err((e, headers));
        }
    };
    let headers = admitted.headers;
    if let Some(m) = meter.as_mut() {
        if let Ok(mut h) = m.hold.lock() {
            *h = admitted.hold;
        }
        m.ticket = admitted.ticket;
    }
    let started = Instant::now();
    match work.await {
        Ok(made) => {
            let usage = Usage {
                prompt_tokens: tokens(&made),
                ..Usage::default()
            };
            ctx.set_usage(usage);
            if let Some(mut m) = meter {
                let row = m.finish("ok".into(), Some(usage), 0, started, None);
                if let Err(e) = m.tenancy.record(row, true).await {
                    tracing::error!("usage row not committed: {e}");
                }
            }
            Ok((made, headers))
        }
        Err(e) => {
            record_refusal(meter, &e).await;
            Err((e, headers))
        }
    }
}
