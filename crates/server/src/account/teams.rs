//! Teams as their members see them (`/account/teams/...`), the person's own balance
//! and redeeming codes. Members see their team and its balance; team admins also
//! manage its members, keys and usage. Another team's id is a 404, never data.

use super::billing::{balance_view, team_role, team_view};
use super::{account_error, address, body_object, field, me, signed_in, Peer};
use crate::admin::{group_param, store_error, usage_filter, view};
use crate::error::ApiError;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use parlance_core::Code;
use parlance_core::{Error, ErrorKind};
use parlance_protocol::json::Fields;
use parlance_tenancy::accounts::teams::Team;
use parlance_tenancy::accounts::{NewUser, Role, Session};
use parlance_tenancy::Tenancy;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/balance", get(own_balance))
        .route("/redeem", post(redeem))
        .route("/teams", get(my_teams))
        .route("/teams/{id}", get(team))
        .route("/teams/{id}/members", post(add_member))
        .route("/teams/{id}/members/{user_id}", delete(remove_member))
        .route("/teams/{id}/keys", get(team_keys).post(create_team_key))
        .route("/teams/{id}/keys/{key_id}", delete(revoke_team_key))
        .route("/teams/{id}/usage", get(team_usage))
        .route("/teams/{id}/usage.csv", get(team_usage_csv))
}

fn no_team(id: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("You are in no team with id `{id}`."),
    )
    .with_code(Code::TeamNotFound)
}

/// The team and the caller's role in it; not a member: 404. With `admin`, a member who
/// is not a team admin is a 403.
async fn membership(t: &Tenancy, s: &Session, id: &str, admin: bool) -> Result<Team, Error> {
    let (team, role) = t
        .store
        .teams_of(&s.user.id)
        .await
        .map_err(store_error)?
        .into_iter()
        .find(|(team, _)| team.id == id)
        .ok_or_else(|| no_team(id))?;
    if admin && role != "admin" {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            "Only this team's admins may do this.",
        )
        .with_code(Code::NotTeamAdmin));
    }
    Ok(team)
}

async fn own_balance(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (t, s) = signed_in(&state, &headers, &Method::GET).await?;
    Ok(Json(balance_view(&t, &format!("u:{}", s.user.id)).await?))
}

/// `{code, team_id?}`: credits the person, or a team they are an admin of.
async fn redeem(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (t, s) = signed_in(&state, &headers, &Method::POST).await?;
    let obj = body_object(&state, body).await?;
    let payer = match field(&obj, "team_id")? {
        "" => format!("u:{}", s.user.id),
        team => format!("t:{}", membership(&t, &s, team, true).await?.id),
    };
    let code = field(&obj, "code")?;
    let Some((code_id, amount)) = t
        .store
        .redeem_code(code, &payer)
        .await
        .map_err(store_error)?
    else {
        return Err(
            Error::invalid_param("code", "This code is unknown or was already redeemed.")
                .with_code(Code::InvalidCode)
                .into(),
        );
    };
    t.store
        .credit(&payer, amount, "code", &code_id, &s.user.email)
        .await
        .map_err(store_error)?;
    t.forget_subjects();
    t.audit(
        &s.user.email,
        "balance.redeem",
        &payer,
        &format!("{code_id} {amount:.2} USD"),
        &address(peer.as_ref()),
    )
    .await;
    Ok(Json(balance_view(&t, &payer).await?))
}

async fn my_teams(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (t, s) = signed_in(&state, &headers, &Method::GET).await?;
    let teams = t.store.teams_of(&s.user.id).await.map_err(store_error)?;
    let data: Vec<Value> = teams
        .iter()
        .map(|(team, role)| json!({"object": "team", "id": team.id, "name": team.name, "role": role}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn team(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (t, s) = signed_in(&state, &headers, &Method::GET).await?;
    let team = membership(&t, &s, &id, false).await?;
    Ok(Json(team_view(&t, &team).await?))
}

/// `{email, role?}`: adds a person by email. Someone without an account yet is invited:
/// the account is made and the answer has a one-time `set_password_url` to send them.
async fn add_member(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (t, s) = signed_in(&state, &headers, &Method::POST).await?;
    let team = membership(&t, &s, &id, true).await?;
    let obj = body_object(&state, body).await?;
    let role = team_role(field(&obj, "role")?)?;
    let email = parlance_tenancy::accounts::normalize_email(field(&obj, "email")?)
        .map_err(account_error)?;
    let mut invite = None;
    let user = match t.store.user_by_email(&email).await.map_err(store_error)? {
        Some(u) => u,
        None => {
            let u = t
                .create_user(NewUser {
                    name: email.split('@').next().unwrap_or_default().to_string(),
                    email: email.clone(),
                    role: Role::Member,
                    organization: team.name.clone(),
                    password: None,
                })
                .await
                .map_err(account_error)?;
            let why = format!("{} invited you to the team {}.", s.user.name, team.name);
            invite = Some(super::people::issue_link(&state, &t, &u, &why).await?.0);
            u
        }
    };
    t.store
        .set_member(&team.id, &user.id, role)
        .await
        .map_err(store_error)?;
    t.audit(
        &s.user.email,
        "team.set_member",
        &team.id,
        &format!("{} {role}", user.email),
        &address(peer.as_ref()),
    )
    .await;
    let mut v = team_view(&t, &team).await?;
    if let Some(url) = invite {
        v.set("set_password_url", json!(url));
    }
    Ok(Json(v))
}

async fn remove_member(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (t, s) = signed_in(&state, &headers, &Method::DELETE).await?;
    let team = membership(&t, &s, &id, true).await?;
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
        &s.user.email,
        "team.remove_member",
        &team.id,
        &user_id,
        &address(peer.as_ref()),
    )
    .await;
    Ok(Json(team_view(&t, &team).await?))
}

async fn team_keys(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (t, s) = signed_in(&state, &headers, &Method::GET).await?;
    let team = membership(&t, &s, &id, true).await?;
    let keys = t.store.team_keys(&team.id).await.map_err(store_error)?;
    let mut data = Vec::with_capacity(keys.len());
    for k in &keys {
        data.push(view(&t, k).await);
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn create_team_key(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let (t, s) = signed_in(&state, &headers, &Method::POST).await?;
    let team = membership(&t, &s, &id, true).await?;
    let obj = body_object(&state, body).await?;
    let addr = address(peer.as_ref());
    let v = me::make_key(&state, &t, &s.user, &obj, "team key", &addr, Some(&team.id)).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn revoke_team_key(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (t, s) = signed_in(&state, &headers, &Method::DELETE).await?;
    let team = membership(&t, &s, &id, true).await?;
    let theirs = t
        .store
        .get_key(&key_id)
        .await
        .map_err(store_error)?
        .filter(|k| k.team_id.as_deref() == Some(team.id.as_str()));
    if theirs.is_none() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("This team has no key with id `{key_id}`."),
        )
        .with_code(Code::KeyNotFound)
        .into());
    }
    t.store.revoke_key(&key_id).await.map_err(store_error)?;
    t.forget(&key_id);
    t.audit(
        &s.user.email,
        "key.revoke",
        &key_id,
        &team.id,
        &address(peer.as_ref()),
    )
    .await;
    Ok(Json(
        json!({"id": key_id, "object": "api_key", "revoked": true}),
    ))
}

async fn team_totals(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    q: &HashMap<String, String>,
) -> Result<Vec<parlance_tenancy::usage::UsageTotals>, Error> {
    let (t, s) = signed_in(state, headers, &Method::GET).await?;
    let team = membership(&t, &s, id, true).await?;
    let mut filter = usage_filter(q)?;
    filter.user_id = None;
    filter.team_id = Some(team.id);
    t.store
        .usage_totals(&filter, group_param(q)?)
        .await
        .map_err(store_error)
}

async fn team_usage(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let data = team_totals(&state, &headers, &id, &q).await?;
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn team_usage_csv(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    Ok(crate::admin::csv_response(
        &team_totals(&state, &headers, &id, &q).await?,
    ))
}
