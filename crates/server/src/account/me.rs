//! A signed-in person's own keys and usage: *My keys* and *My usage*. Every lookup is
//! scoped to the session's user, so another person's key id is a 404, never data.

use super::{address, body_object, signed_in, Peer};
use crate::admin::{apply_fields, group_param, store_error, usage_filter, view};
use crate::error::ApiError;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use parlance_core::Code;
use parlance_core::{Error, ErrorKind};
use parlance_protocol::json::Fields;
use parlance_tenancy::accounts::User;
use parlance_tenancy::keys::KeyRecord;
use parlance_tenancy::{KeySpec, Tenancy};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/keys", get(list).post(create))
        .route("/keys/{id}", delete(revoke))
        .route("/usage", get(usage))
        .route("/usage.csv", get(usage_csv))
}

/// Holds a requested limit to the plan's: none asked is the plan's, more is a 400.
fn capped<T: PartialOrd + Copy + std::fmt::Display>(
    asked: Option<T>,
    plan: Option<T>,
    name: &str,
) -> Result<Option<T>, Error> {
    match (asked, plan) {
        (None, p) => Ok(p),
        (Some(a), Some(p)) if a > p => Err(Error::invalid_param(
            name,
            format!("'{name}' may be at most {p} on your plan."),
        )),
        (a, _) => Ok(a),
    }
}

/// Makes a key for `user` from a `My keys` body, within the default plan.
pub(super) async fn make_key(
    state: &AppState,
    t: &Tenancy,
    user: &User,
    obj: &Map<String, Value>,
    default_name: &str,
    addr: &str,
    team_id: Option<&str>,
) -> Result<Value, Error> {
    let plan = &state.accounts.plan;
    let owned = match team_id {
        Some(team) => t.store.team_keys(team).await,
        None => t.store.keys_of(&user.id).await,
    };
    let live = owned
        .map_err(store_error)?
        .iter()
        .filter(|k| team_id.is_some() || k.team_id.is_none())
        .filter(|k| k.revoked_at.is_none() && !k.expired(parlance_tenancy::keys::now_ms()))
        .count();
    if live >= plan.max_keys as usize {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("You have {live} keys, the most your plan allows: revoke one first."),
        )
        .with_code(Code::TooManyKeys));
    }
    let mut k = KeyRecord::default();
    apply_fields(&mut k, obj)?;
    if k.name.is_empty() {
        k.name = default_name.to_string();
    }
    if !plan.models.is_empty() {
        if let Some(m) = k.models.iter().find(|m| !plan.models.contains(m)) {
            return Err(Error::invalid_param(
                "models",
                format!("Your plan does not include the model `{m}`."),
            ));
        }
        if k.models.is_empty() {
            k.models = plan.models.clone();
        }
    }
    let spec = KeySpec {
        name: k.name,
        models: k.models,
        rpm: capped(k.rpm, plan.rpm, "rpm")?,
        tpm: capped(k.tpm, plan.tpm, "tpm")?,
        max_concurrent: capped(k.max_concurrent, plan.max_concurrent, "max_concurrent")?,
        budget_tokens: capped(k.budget_tokens, plan.budget_tokens, "budget_tokens")?,
        budget_usd: capped(k.budget_usd, plan.budget_usd, "budget_usd")?,
        expires_at_ms: k.expires_at,
        metadata: k.metadata,
        user_id: Some(user.id.clone()),
        team_id: team_id.map(str::to_string),
    };
    let (record, key) = t.create_key(spec).await.map_err(crate::admin::key_error)?;
    t.audit(&user.email, "key.create", &record.id, &record.name, addr)
        .await;
    let mut v = view(t, &record).await;
    v.set("key", json!(key));
    Ok(v)
}

async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (t, s) = signed_in(&state, &headers, &Method::GET).await?;
    let keys = t.store.keys_of(&s.user.id).await.map_err(store_error)?;
    let mut data = Vec::with_capacity(keys.len());
    for k in &keys {
        data.push(view(&t, k).await);
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn create(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (t, s) = signed_in(&state, &headers, &Method::POST).await?;
    let obj = body_object(&state, body).await?;
    let v = make_key(
        &state,
        &t,
        &s.user,
        &obj,
        "key",
        &address(peer.as_ref()),
        None,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn revoke(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (t, s) = signed_in(&state, &headers, &Method::DELETE).await?;
    let mine = t
        .store
        .get_key(&id)
        .await
        .map_err(store_error)?
        .filter(|k| k.user_id.as_deref() == Some(s.user.id.as_str()));
    if mine.is_none() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("You have no key with id `{id}`."),
        )
        .with_code(Code::KeyNotFound)
        .into());
    }
    t.store.revoke_key(&id).await.map_err(store_error)?;
    t.forget(&id);
    t.audit(
        &s.user.email,
        "key.revoke",
        &id,
        "",
        &address(peer.as_ref()),
    )
    .await;
    Ok(Json(
        json!({"id": id, "object": "api_key", "revoked": true}),
    ))
}

async fn own_totals(
    state: &AppState,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> Result<Vec<parlance_tenancy::usage::UsageTotals>, Error> {
    let (t, s) = signed_in(state, headers, &Method::GET).await?;
    let mut filter = usage_filter(q)?;
    // Scoped to the person whatever the query says: a `key_id` of someone else's key
    // finds nothing.
    filter.user_id = Some(s.user.id.clone());
    t.store
        .usage_totals(&filter, group_param(q)?)
        .await
        .map_err(store_error)
}

async fn usage(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let data = own_totals(&state, &headers, &q).await?;
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn usage_csv(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    Ok(crate::admin::csv_response(
        &own_totals(&state, &headers, &q).await?,
    ))
}
