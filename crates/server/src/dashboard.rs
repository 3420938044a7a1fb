//! The admin API's views for the console: what every model is doing now (`/admin/status`)
//! and usage over time and latency percentiles (`/admin/usage/series`, `/usage/latency`).

use crate::admin::{admin, usage_filter};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use parlance_core::{Backend, Error};
use parlance_tenancy::usage::UsageGroup;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Routes that share a backend are one model under several names (aliases).
fn backend_id(b: &Arc<dyn Backend>) -> usize {
    Arc::as_ptr(b) as *const () as usize
}

/// `GET /admin/status`: the catalog (models, aliases, presets, deployments) with each
/// one's live state (slots, queue, generated tokens, health, cooldowns, failures).
pub(crate) async fn status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers).await?;
    let mut seen: Vec<usize> = Vec::new();
    let mut models: Vec<Value> = Vec::new();
    for r in state.router.routes() {
        let id = backend_id(&r.backend);
        if let Some(i) = seen.iter().position(|s| *s == id) {
            let aliases = models.get_mut(i).and_then(|m| m.get_mut("aliases"));
            if let Some(a) = aliases.and_then(Value::as_array_mut) {
                a.push(json!(r.info.id));
            }
            continue;
        }
        seen.push(id);
        let info = &r.info;
        let c = r.backend.composition();
        models.push(json!({
            "id": info.id,
            "aliases": [],
            "owned_by": info.owned_by,
            "kind": info.kind,
            "context_length": info.context_length,
            "max_output_tokens": info.max_output_tokens,
            "capabilities": info.capabilities,
            "price": info.price,
            "load": r.backend.load(),
            // Models loaded on demand: loaded or not, load time, when it unloads.
            "residency": r.backend.residency(),
            "down": r.backend.health().err(),
            "system_prompt": c.system_prompt,
            "defaults": c.defaults,
            "deployments": c.deployments,
            "fallbacks": c.fallbacks,
        }));
    }
    Ok(Json(json!({
        "object": "status",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.started.elapsed().as_secs(),
        "models": models,
    })))
}

fn group_param(q: &HashMap<String, String>) -> Result<UsageGroup, Error> {
    match q.get("group_by").map(String::as_str) {
        None | Some("") | Some("model") => Ok(UsageGroup::Model),
        Some("key") => Ok(UsageGroup::Key),
        Some(other) => Err(Error::invalid_param(
            "group_by",
            format!("'group_by' must be model or key, got {other:?}."),
        )),
    }
}

fn bucket_param(q: &HashMap<String, String>) -> Result<i64, Error> {
    match q.get("bucket").map(String::as_str) {
        Some("minute") => Ok(60),
        None | Some("") | Some("hour") => Ok(3600),
        Some("day") => Ok(86_400),
        Some(other) => Err(Error::invalid_param(
            "bucket",
            format!("'bucket' must be minute, hour or day, got {other:?}."),
        )),
    }
}

/// `GET /admin/usage/series?bucket=minute|hour|day&group_by=model|key`: requests,
/// tokens, cost and errors per bucket and group, for charts.
pub(crate) async fn usage_series(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (t, _) = admin(&state, &headers).await?;
    let filter = usage_filter(&q)?;
    let (bucket, group) = (bucket_param(&q)?, group_param(&q)?);
    let data = t
        .store
        .usage_series(&filter, bucket, group)
        .await
        .map_err(crate::admin::store_error)?;
    Ok(Json(
        json!({"object": "list", "bucket_s": bucket, "data": data}),
    ))
}

/// `GET /admin/usage/latency`: latency and time-to-first-token p50/p90/p99 per model.
pub(crate) async fn usage_latency(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (t, _) = admin(&state, &headers).await?;
    let filter = usage_filter(&q)?;
    let data = t
        .store
        .usage_latency(&filter)
        .await
        .map_err(crate::admin::store_error)?;
    Ok(Json(json!({"object": "list", "data": data})))
}
