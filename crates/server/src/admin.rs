//! The admin API (`/admin/...`, on only when an admin key is set, Bearer; 404
//! otherwise) and `GET /v1/key`, where a key holder sees their own limits and usage.

mod fields;

use crate::auth::{presented_key, Principal};
use crate::body::{parse_json, read_limited};
use crate::error::ApiError;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
pub(crate) use fields::apply_fields;
use parlance_core::Code;
use parlance_core::{Error, ErrorKind};
use parlance_protocol::json::Fields;
use parlance_tenancy::keys::{self, KeyRecord};
use parlance_tenancy::usage::{UsageFilter, UsageGroup, UsageTotals};
use parlance_tenancy::{KeySpec, Tenancy};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/keys", get(list_keys).post(create_key))
        .route(
            "/keys/{id}",
            get(get_key).patch(update_key).delete(revoke_key),
        )
        .route("/usage", get(usage))
        .route("/usage.csv", get(usage_csv))
        .route("/usage/series", get(crate::dashboard::usage_series))
        .route("/usage/latency", get(crate::dashboard::usage_latency))
        .route("/status", get(crate::dashboard::status))
        .merge(crate::account::people::routes())
        .merge(crate::account::billing::routes())
}

/// Who acts on the admin API: the static admin key, or a signed-in admin.
pub(crate) enum Actor {
    AdminKey,
    User(parlance_tenancy::accounts::User),
}

impl Actor {
    /// As the audit log names it.
    pub(crate) fn name(&self) -> &str {
        match self {
            Actor::AdminKey => "admin-key",
            Actor::User(u) => &u.email,
        }
    }
}

fn admin_api_off() -> Error {
    Error::new(
        ErrorKind::NotFound,
        "Unknown endpoint: the admin API is off (start the server with --admin-key, or sign in as an admin).",
    )
    .with_code(Code::UnknownUrl)
}

/// The tenancy, when the caller holds the admin key or an admin's session (with its
/// CSRF token, whatever the method); 404 when there is no admin API.
pub(crate) async fn admin(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(Arc<Tenancy>, Actor), Error> {
    let Some(t) = state.tenancy.as_ref() else {
        return Err(admin_api_off());
    };
    if let Some(expected) = t.admin_key.as_deref() {
        if presented_key(headers).is_some_and(|k| keys::same(k, expected)) {
            return Ok((Arc::clone(t), Actor::AdminKey));
        }
    }
    if let Some((t, s)) = crate::account::session(state, headers, true).await? {
        if s.user.role == parlance_tenancy::accounts::Role::Admin {
            return Ok((t, Actor::User(s.user)));
        }
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            "Only administrators may do this.",
        )
        .with_code(Code::NotAdmin));
    }
    if t.admin_key.is_none() && !t.store.has_admin_user().await.map_err(store_error)? {
        return Err(admin_api_off());
    }
    Err(Error::new(
        ErrorKind::Authentication,
        "The admin API needs the admin key as 'Authorization: Bearer KEY', or an admin's session.",
    )
    .with_code(Code::InvalidAdminKey))
}

fn secs(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |v| json!(v / 1000))
}

/// A key as the API shows it: never the secret.
pub(crate) async fn view(t: &Tenancy, k: &KeyRecord) -> Value {
    let (tokens, usd) = t.spent(&k.id).await;
    json!({
        "object": "api_key",
        "id": k.id,
        "name": k.name,
        "models": k.models,
        "rpm": k.rpm,
        "tpm": k.tpm,
        "max_concurrent": k.max_concurrent,
        "budget_tokens": k.budget_tokens,
        "budget_usd": k.budget_usd,
        "expires_at": secs(k.expires_at),
        "metadata": k.metadata,
        "created_at": k.created_at / 1000,
        "revoked_at": secs(k.revoked_at),
        "usage": {"tokens": tokens, "cost_usd": usd},
        "remaining": {
            "tokens": k.budget_tokens.map(|b| b.saturating_sub(tokens)),
            "usd": k.budget_usd.map(|b| (b - usd).max(0.0)),
        },
    })
}

/// A store failure, logged whole; the caller sees no database text.
pub(crate) fn store_error(e: impl std::fmt::Display) -> Error {
    tracing::error!("admin API: {e}");
    Error::internal("The key store could not be read or written; see the server log.")
}

/// A key that could not be made: a 400 for what the caller sent, else a store failure.
pub(crate) fn key_error(e: parlance_tenancy::CreateKeyError) -> Error {
    match e {
        parlance_tenancy::CreateKeyError::NoName => {
            Error::invalid_param("name", "A key needs a 'name'.")
        }
        parlance_tenancy::CreateKeyError::Store(e) => store_error(e),
    }
}

async fn create_key(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<crate::account::Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (t, actor) = admin(&state, &headers).await?;
    let bytes = read_limited(body, state.body_limit).await?;
    let obj: Map<String, Value> = parse_json(&bytes)?;
    let mut k = KeyRecord::default();
    apply_fields(&mut k, &obj)?;
    // A missing name is `create_key`'s 400 (`key_error`).
    let spec = KeySpec {
        name: k.name,
        models: k.models,
        rpm: k.rpm,
        tpm: k.tpm,
        max_concurrent: k.max_concurrent,
        budget_tokens: k.budget_tokens,
        budget_usd: k.budget_usd,
        expires_at_ms: k.expires_at,
        metadata: k.metadata,
        user_id: None,
        team_id: None,
    };
    let (record, key) = t.create_key(spec).await.map_err(key_error)?;
    let addr = crate::account::address(peer.as_ref());
    t.audit(actor.name(), "key.create", &record.id, &record.name, &addr)
        .await;
    let mut v = view(&t, &record).await;
    v.set("key", json!(key));
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn list_keys(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (t, _) = admin(&state, &headers).await?;
    let keys = t.store.list_keys().await.map_err(store_error)?;
    let mut data = Vec::with_capacity(keys.len());
    for k in &keys {
        data.push(view(&t, k).await);
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn find(t: &Tenancy, id: &str) -> Result<KeyRecord, Error> {
    t.store
        .get_key(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("No key with id `{id}`."))
                .with_code(Code::KeyNotFound)
        })
}

async fn get_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (t, _) = admin(&state, &headers).await?;
    let k = find(&t, &id).await?;
    Ok(Json(view(&t, &k).await))
}

async fn update_key(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<crate::account::Peer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (t, actor) = admin(&state, &headers).await?;
    let mut k = find(&t, &id).await?;
    let bytes = read_limited(body, state.body_limit).await?;
    let obj: Map<String, Value> = parse_json(&bytes)?;
    apply_fields(&mut k, &obj)?;
    t.store.update_key(&k).await.map_err(store_error)?;
    t.forget(&k.id);
    let fields: Vec<&str> = obj.keys().map(String::as_str).collect();
    let addr = crate::account::address(peer.as_ref());
    t.audit(actor.name(), "key.update", &id, &fields.join(","), &addr)
        .await;
    Ok(Json(view(&t, &k).await))
}

async fn revoke_key(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<crate::account::Peer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (t, actor) = admin(&state, &headers).await?;
    find(&t, &id).await?;
    t.store.revoke_key(&id).await.map_err(store_error)?;
    t.forget(&id);
    let addr = crate::account::address(peer.as_ref());
    t.audit(actor.name(), "key.revoke", &id, "", &addr).await;
    Ok(Json(
        json!({"id": id, "object": "api_key", "revoked": true}),
    ))
}

/// `from` / `to` as Unix seconds or `YYYY-MM-DD`.
fn time_param(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, Error> {
    let Some(v) = q.get(name).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(s) = v.parse::<i64>() {
        return s
            .checked_mul(1000)
            .map(Some)
            .ok_or_else(|| Error::invalid_param(name, format!("'{name}' is out of range.")));
    }
    parse_date_ms(v).map(Some).ok_or_else(|| {
        Error::invalid_param(
            name,
            format!("'{name}' must be Unix seconds or YYYY-MM-DD."),
        )
    })
}

/// Milliseconds at the start of a `YYYY-MM-DD` day (UTC).
pub(crate) fn parse_date_ms(s: &str) -> Option<i64> {
    let mut it = s.splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // days-from-civil
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400_000)
}

/// `key_id`, `model`, `from`, `to` of a usage query.
pub(crate) fn usage_filter(q: &HashMap<String, String>) -> Result<UsageFilter, Error> {
    Ok(UsageFilter {
        key_id: q.get("key_id").filter(|v| !v.is_empty()).cloned(),
        user_id: q.get("user_id").filter(|v| !v.is_empty()).cloned(),
        team_id: q.get("team_id").filter(|v| !v.is_empty()).cloned(),
        model: q.get("model").filter(|v| !v.is_empty()).cloned(),
        from: time_param(q, "from")?,
        to: time_param(q, "to")?,
    })
}

/// `group_by`: key (default), model or day.
pub(crate) fn group_param(q: &HashMap<String, String>) -> Result<UsageGroup, Error> {
    match q.get("group_by").map(String::as_str) {
        None | Some("") | Some("key") => Ok(UsageGroup::Key),
        Some("model") => Ok(UsageGroup::Model),
        Some("day") => Ok(UsageGroup::Day),
        Some(other) => Err(Error::invalid_param(
            "group_by",
            format!("'group_by' must be key, model or day, got {other:?}."),
        )),
    }
}

async fn totals(
    state: &AppState,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> Result<Vec<UsageTotals>, Error> {
    let (t, _) = admin(state, headers).await?;
    let filter = usage_filter(q)?;
    let group = group_param(q)?;
    t.store
        .usage_totals(&filter, group)
        .await
        .map_err(store_error)
}

async fn usage(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let data = totals(&state, &headers, &q).await?;
    Ok(Json(json!({"object": "list", "data": data})))
}

pub fn csv(rows: &[UsageTotals]) -> String {
    let mut out = String::from(
        "group,requests,prompt_tokens,completion_tokens,cached_tokens,reasoning_tokens,cost_usd,errors,cancelled\n",
    );
    for r in rows {
        let group = if r.group.contains([',', '"', '\n']) {
            format!("\"{}\"", r.group.replace('"', "\"\""))
        } else {
            r.group.clone()
        };
        out.push_str(&format!(
            "{group},{},{},{},{},{},{:.6},{},{}\n",
            r.requests,
            r.prompt_tokens,
            r.completion_tokens,
            r.cached_tokens,
            r.reasoning_tokens,
            r.cost_usd,
            r.errors,
            r.cancelled
        ));
    }
    out
}

async fn usage_csv(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    Ok(csv_response(&totals(&state, &headers, &q).await?))
}

/// Usage totals as a CSV download.
pub(crate) fn csv_response(rows: &[UsageTotals]) -> Response {
    (
        [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
        csv(rows),
    )
        .into_response()
}

/// `GET /v1/key`: the caller's own key, limits, usage and what is left of its budget.
pub(crate) async fn own_key(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    match (principal.key(), state.tenancy.as_ref()) {
        (Some(k), Some(t)) => Ok(Json(view(t, k).await)),
        _ => Ok(Json(json!({
            "object": "api_key",
            "id": null,
            "type": if matches!(principal, Principal::Static) { "static" } else { "open" },
            "rpm": null, "tpm": null, "max_concurrent": null,
            "budget_tokens": null, "budget_usd": null,
        }))),
    }
}

/// GigaChat's `POST /api/v2/oauth`: `Authorization: Basic <a Parlance key, as it is>`
/// (or base64 of it), form `scope=...`, `RqUID` -> `{access_token, expires_at}` (ms),
/// a 30-minute token used as a Bearer key with the key's own limits.
pub(crate) async fn oauth(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let Some(t) = state.tenancy.as_ref() else {
        return Err(Error::new(
            ErrorKind::NotFound,
            "Access tokens need the key store (--db).",
        )
        .with_code(Code::UnknownUrl)
        .into());
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("Bearer "))
        })
        .map(str::trim)
        .unwrap_or_default();
    let decoded = decode_base64(presented).filter(|d| d.starts_with(keys::PREFIX));
    let key = decoded.as_deref().unwrap_or(presented);
    match t.issue_token(key).await {
        Ok((token, expires_at)) => Ok(Json(
            json!({"access_token": token, "expires_at": expires_at}),
        )),
        Err(why) => Err(Error::new(
            ErrorKind::Authentication,
            format!(
                "Cannot issue a token: the key is {}.",
                match why {
                    parlance_tenancy::KeyRefused::Revoked => "revoked",
                    parlance_tenancy::KeyRefused::Expired => "expired",
                    parlance_tenancy::KeyRefused::Unknown => "not a valid Parlance key",
                }
            ),
        )
        .with_code(Code::InvalidCredentials)
        .into()),
    }
}

/// Standard base64 (GigaChat's credentials are base64 of `client_id:secret`).
fn decode_base64(s: &str) -> Option<String> {
    const TABLE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = TABLE.iter().position(|&t| t == c)? as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_csv() {
        assert_eq!(parse_date_ms("1970-01-02"), Some(86_400_000));
        assert_eq!(
            parse_date_ms("2025-11-23").map(|ms| ms / 86_400_000),
            Some(20_415)
        );
        assert_eq!(parse_date_ms("2026-13-01"), None);
        let rows = [UsageTotals {
            group: "a,b".into(),
            requests: 2,
            ..UsageTotals::default()
        }];
        assert_eq!(
            csv(&rows).lines().nth(1),
            Some("\"a,b\",2,0,0,0,0,0.000000,0,0")
        );
    }
}
