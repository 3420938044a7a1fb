//! The admin side of teams and money: teams and their members and limits, user
//! limits, credit top-ups, redemption codes; and GigaChat's `GET /api/v1/balance`.
//! Every change is audited.

use super::{account_error, address, body_object, field, Peer};
use crate::admin::{admin, apply_fields, store_error};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use parlance_core::Code;
use parlance_core::{Error, ErrorKind};
use parlance_protocol::json::Fields;
use parlance_tenancy::accounts::teams::Team;
use parlance_tenancy::keys::KeyRecord;
use parlance_tenancy::subjects::Limits;
use parlance_tenancy::Tenancy;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/teams", get(list_teams).post(create_team))
        .route("/teams/{id}", get(get_team).patch(update_team))
        .route(
            "/teams/{id}/members/{user_id}",
            put(set_member).delete(remove_member),
        )
        .route("/credits", get(credits).post(top_up))
        .route("/codes", get(list_codes).post(make_codes))
}

const LIMIT_FIELDS: [&str; 6] = [
    "rpm",
    "tpm",
    "max_concurrent",
    "budget_tokens",
    "budget_usd",
    "models",
];

/// The limit fields of `obj` applied over `base`, each checked as a key's are.
pub(crate) fn limits_from(obj: &Map<String, Value>, base: &Limits) -> Result<Limits, Error> {
    let mut k = KeyRecord {
        rpm: base.rpm,
        tpm: base.tpm,
        max_concurrent: base.max_concurrent,
        budget_tokens: base.budget_tokens,
        budget_usd: base.budget_usd,
        models: base.models.clone(),
        ..KeyRecord::default()
    };
    let only: Map<String, Value> = obj
        .iter()
        .filter(|(name, _)| LIMIT_FIELDS.contains(&name.as_str()))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    apply_fields(&mut k, &only)?;
    Ok(Limits {
        rpm: k.rpm,
        tpm: k.tpm,
        max_concurrent: k.max_concurrent,
        budget_tokens: k.budget_tokens,
        budget_usd: k.budget_usd,
        models: k.models,
    })
}

pub(crate) fn is_limit_field(name: &str) -> bool {
    LIMIT_FIELDS.contains(&name)
}

/// A payer's money: everything credited, spent so far, and what is left.
pub(crate) async fn balance_view(t: &Tenancy, payer: &str) -> Result<Value, Error> {
    let credits = t.store.credits(payer).await.map_err(store_error)?;
    let (_, spent) = t
        .store
        .spent(&format!("pay:{payer}"))
        .await
        .map_err(store_error)?;
    Ok(
        json!({"object": "balance", "payer": payer, "prepaid": t.prepaid(),
        "credits_usd": credits, "spent_usd": spent, "balance_usd": credits - spent}),
    )
}

pub(crate) async fn team_view(t: &Tenancy, team: &Team) -> Result<Value, Error> {
    let members = t.store.members(&team.id).await.map_err(store_error)?;
    Ok(
        json!({"object": "team", "id": team.id, "name": team.name, "limits": team.limits,
        "created_at": team.created_at / 1000,
        "members": members.iter().map(|m| json!({"user_id": m.user_id, "email": m.email, "name": m.name, "role": m.role})).collect::<Vec<_>>(),
        "balance": balance_view(t, &format!("t:{}", team.id)).await?}),
    )
}

async fn find_team(t: &Tenancy, id: &str) -> Result<Team, Error> {
    t.store.team(id).await.map_err(store_error)?.ok_or_else(|| {
        Error::new(ErrorKind::NotFound, format!("No team with id `{id}`."))
            .with_code(Code::TeamNotFound)
    })
}

async fn list_teams(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (t, _) = admin(&state, &headers).await?;
    let mut data = Vec::new();
    for team in t.store.list_teams().await.map_err(store_error)? {
        data.push(team_view(&t, &team).await?);
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn get_team(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (t, _) = admin(&state, &headers).await?;
    Ok(Json(team_view(&t, &find_team(&t, &id).await?).await?))
}

fn unknown_fields(obj: &Map<String, Value>, allowed: &[&str]) -> Result<(), Error> {
    match obj
        .keys()
        .find(|k| !allowed.contains(&k.as_str()) && !is_limit_field(k))
    {
        Some(k) => Err(Error::invalid_param(
            k.as_str(),
            format!("Unknown field '{k}'."),
        )),
        None => Ok(()),
    }
}

/// `{name, rpm?, tpm?, max_concurrent?, budget_tokens?, budget_usd?, models?}`.
async fn create_team(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (t, actor) = admin(&state, &headers).await?;
    let obj = body_object(&state, body).await?;
    unknown_fields(&obj, &["name"])?;
    let name = parlance_tenancy::accounts::text(field(&obj, "name")?, "name", 200, true)
        .map_err(account_error)?;
    let limits = limits_from(&obj, &Limits::default())?;
    let team = t
        .store
        .insert_team(&name, &limits)
        .await
        .map_err(store_error)?;
    t.audit(
        actor.name(),
        "team.create",
        &team.id,
        &name,
        &address(peer.as_ref()),
    )
    .await;
    Ok((StatusCode::CREATED, Json(team_view(&t, &team).await?)).into_response())
}

async fn update_team(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (t, actor) = admin(&state, &headers).await?;
    let mut team = find_team(&t, &id).await?;
    let obj = body_object(&state, body).await?;
    unknown_fields(&obj, &["name"])?;
    if obj.contains_key("name") {
        team.name = parlance_tenancy::accounts::text(field(&obj, "name")?, "name", 200, true)
            .map_err(account_error)?;
    }
    team.limits = limits_from(&obj, &team.limits)?;
    t.store.update_team(&team).await.map_err(store_error)?;
    t.forget_subjects();
    let fields: Vec<String> = obj.iter().map(|(k, v)| format!("{k}={v}")).collect();
    t.audit(
        actor.name(),
        "team.update",
        &team.id,
        &fields.join(" "),
        &address(peer.as_ref()),
    )
    .await;
    Ok(Json(team_view(&t, &team).await?))
}

/// `PUT /admin/teams/{id}/members/{user_id}` with `{role: "admin" | "member"}`.
async fn set_member(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path((id, user_id)): Path<(String, String)>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (t, actor) = admin(&state, &headers).await?;
    let team = find_team(&t, &id).await?;
    let obj = body_object(&state, body).await?;
    let role = team_role(field(&obj, "role")?)?;
    let user = t
        .store
        .user(&user_id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("No user with id `{user_id}`."))
                .with_code(Code::UserNotFound)
        })?;
    t.store
        .set_member(&team.id, &user.id, role)
        .await
        .map_err(store_error)?;
    t.audit(
        actor.name(),
        "team.set_member",
        &team.id,
        &format!("{} {role}", user.email),
        &address(peer.as_ref()),
    )
    .await;
    Ok(Json(team_view(&t, &team).await?))
}

pub(crate) fn team_role(v: &str) -> Result<&'static str, Error> {
    match v {
        "" | "member" => Ok("member"),
        "admin" => Ok("admin"),
        _ => Err(Error::invalid_param(
            "role",
            "'role' must be admin or member.",
        )),
    }
}

async fn remove_member(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (t, actor) = admin(&state, &headers).await?;
    let team = find_team(&t, &id).await?;
    if !t
        .store
        .remove_member(&team.id, &user_id)
        .await
        .map_err(store_error)?
    {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("`{user_id}` is not a member of this team."),
        )
        .into());
    }
    t.audit(
        actor.name(),
        "team.remove_member",
        &team.id,
        &user_id,
        &address(peer.as_ref()),
    )
    .await;
    Ok(Json(team_view(&t, &team).await?))
}

/// The payer a body or query names: `team_id` or `user_id`, which must exist.
async fn payer_of(t: &Tenancy, get: impl Fn(&str) -> Option<String>) -> Result<String, Error> {
    match (get("team_id"), get("user_id")) {
        (Some(team), None) => Ok(format!("t:{}", find_team(t, &team).await?.id)),
        (None, Some(user)) => match t.store.user(&user).await.map_err(store_error)? {
            Some(u) => Ok(format!("u:{}", u.id)),
            None => Err(
                Error::new(ErrorKind::NotFound, format!("No user with id `{user}`."))
                    .with_code(Code::UserNotFound),
            ),
        },
        _ => Err(Error::invalid_param(
            "team_id",
            "Name exactly one of 'team_id' or 'user_id'.",
        )),
    }
}

async fn credits(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (t, _) = admin(&state, &headers).await?;
    let payer = payer_of(&t, |k| q.get(k).filter(|v| !v.is_empty()).cloned()).await?;
    let mut v = balance_view(&t, &payer).await?;
    v.set(
        "entries",
        json!(t.store.ledger(&payer).await.map_err(store_error)?),
    );
    Ok(Json(v))
}

/// `POST /admin/credits` `{team_id | user_id, amount_usd, note}`: a top-up (negative
/// amounts correct a mistake), audited with its note.
async fn top_up(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (t, actor) = admin(&state, &headers).await?;
    let obj = body_object(&state, body).await?;
    let payer = payer_of(&t, |k| {
        obj.get(k).and_then(Value::as_str).map(str::to_string)
    })
    .await?;
    let amount = obj
        .get("amount_usd")
        .and_then(Value::as_f64)
        .filter(|a| a.is_finite() && *a != 0.0 && a.abs() <= 1e9)
        .ok_or_else(|| {
            Error::invalid_param(
                "amount_usd",
                "'amount_usd' must be a non-zero number of dollars.",
            )
        })?;
    let note = parlance_tenancy::accounts::text(field(&obj, "note")?, "note", 500, true)
        .map_err(account_error)?;
    let entry = t
        .store
        .credit(&payer, amount, "topup", &note, actor.name())
        .await
        .map_err(store_error)?;
    t.forget_subjects();
    t.audit(
        actor.name(),
        "balance.top_up",
        &payer,
        &format!("{amount:+.2} USD: {note}"),
        &address(peer.as_ref()),
    )
    .await;
    let mut v = balance_view(&t, &payer).await?;
    v.set("entry", json!(entry));
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// `POST /admin/codes` `{count, amount_usd, note?}`: new-api's redemption codes, shown
/// once (only their hashes are kept).
async fn make_codes(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (t, actor) = admin(&state, &headers).await?;
    let obj = body_object(&state, body).await?;
    let count = obj
        .get("count")
        .and_then(Value::as_u64)
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| {
            Error::invalid_param("count", "'count' must be a whole number from 1 to 1000.")
        })?;
    let amount = obj
        .get("amount_usd")
        .and_then(Value::as_f64)
        .filter(|a| a.is_finite() && *a > 0.0 && *a <= 1e6)
        .ok_or_else(|| {
            Error::invalid_param(
                "amount_usd",
                "'amount_usd' must be a positive number of dollars.",
            )
        })?;
    let note = parlance_tenancy::accounts::text(field(&obj, "note")?, "note", 500, false)
        .map_err(account_error)?;
    let codes = t
        .store
        .make_codes(count as u32, amount, &note, actor.name())
        .await
        .map_err(store_error)?;
    t.audit(
        actor.name(),
        "codes.create",
        "-",
        &format!("{count} x {amount:.2} USD {note}"),
        &address(peer.as_ref()),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({"object": "list", "amount_usd": amount, "codes": codes})),
    )
        .into_response())
}

async fn list_codes(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (t, _) = admin(&state, &headers).await?;
    Ok(Json(
        json!({"object": "list", "data": t.store.list_codes().await.map_err(store_error)?}),
    ))
}

/// GigaChat's `GET /api/v1/balance` for the calling key: what its payer has left, in
/// dollars; like GigaChat, a 403 when balances are not prepaid.
pub(crate) async fn gigachat_balance(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    let payer = match (principal.key(), state.tenancy.as_ref()) {
        (Some(k), Some(t)) if t.prepaid() => match (&k.team_id, &k.user_id) {
            (Some(team), _) => Some((t, format!("t:{team}"))),
            (None, Some(user)) => Some((t, format!("u:{user}"))),
            _ => None,
        },
        _ => None,
    };
    let Some((t, payer)) = payer else {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            "A balance exists only for keys of accounts on a server with prepaid balances.",
        )
        .with_code(Code::NotPrepaid)
        .into());
    };
    let v = balance_view(t, &payer).await?;
    Ok(Json(
        json!({"balance": [{"usage": "USD", "value": v.field("balance_usd")}]}),
    ))
}
