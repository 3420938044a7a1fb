//! The admin side of accounts (`/admin/users`, `/admin/access-requests`,
//! `/admin/audit`): every change is written to the audit log with who, what, when and
//! from where.

use super::{account_error, address, body_object, field, user_view, Peer};
use crate::admin::{admin, store_error, Actor};
use crate::error::ApiError;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use parlance_core::Code;
use parlance_core::{Error, ErrorKind};
use parlance_protocol::json::Fields;
use parlance_tenancy::accounts::{NewUser, Role, User};
use parlance_tenancy::Tenancy;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/users", get(list_users).post(create_user))
        .route("/users/{id}", get(get_user).patch(update_user))
        .route("/users/{id}/password-link", post(password_link))
        .route("/users/{id}/sessions", delete(end_sessions))
        .route("/access-requests", get(list_requests))
        .route("/access-requests/{id}/{decision}", post(decide))
        .route("/audit", get(audit_log))
}

fn role(v: &str) -> Result<Role, Error> {
    Role::parse(v).ok_or_else(|| Error::invalid_param("role", "'role' must be admin or member."))
}

/// Where a set-password link is opened: the token rides in the fragment, which
/// browsers never send to a server, so it lands in no access log.
pub(super) fn link_url(state: &AppState, token: &str) -> String {
    let base = state
        .accounts
        .public_url
        .as_deref()
        .unwrap_or("")
        .trim_end_matches('/');
    format!("{base}/account#set-password={token}")
}

/// An access request as the API shows it (times in Unix seconds, as everywhere).
fn request_view(r: &parlance_tenancy::accounts::AccessRequest) -> Value {
    let mut v = json!(r);
    v.set("object", json!("access_request"));
    v.set("created_at", json!(r.created_at / 1000));
    v.set("decided_at", json!(r.decided_at.map(|t| t / 1000)));
    v
}

/// A new one-time set-password link for `user`, mailed when SMTP is configured:
/// `(url, mailed)`. The caller shows the link too, so an unsent mail loses nothing.
pub(super) async fn issue_link(
    state: &AppState,
    t: &Tenancy,
    user: &User,
    why: &str,
) -> Result<(String, bool), Error> {
    let token = t.password_link(&user.id).await.map_err(account_error)?;
    let url = link_url(state, &token);
    let mailed = super::mail::link(state, &user.email, &user.name, &url, why).await;
    Ok((url, mailed))
}

async fn find_user(t: &Tenancy, id: &str) -> Result<User, Error> {
    t.store.user(id).await.map_err(store_error)?.ok_or_else(|| {
        Error::new(ErrorKind::NotFound, format!("No user with id `{id}`."))
            .with_code(Code::UserNotFound)
    })
}

async fn list_users(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (t, _) = admin(&state, &headers).await?;
    let users = t.store.list_users().await.map_err(store_error)?;
    Ok(Json(
        json!({"object": "list", "data": users.iter().map(user_view).collect::<Vec<_>>()}),
    ))
}

async fn get_user(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (t, _) = admin(&state, &headers).await?;
    let user = find_user(&t, &id).await?;
    let mut v = user_view(&user);
    let limits = t.store.user_limits(&user.id).await.map_err(store_error)?;
    v.set("limits", json!(limits.unwrap_or_default()));
    v.set(
        "balance",
        super::billing::balance_view(&t, &format!("u:{}", user.id)).await?,
    );
    Ok(Json(v))
}

/// `{email, name, role?, organization?, password?}`; without a password the answer has
/// a one-time `set_password_url` to hand to the person.
async fn create_user(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (t, actor) = admin(&state, &headers).await?;
    let obj = body_object(&state, body).await?;
    let role = match field(&obj, "role")? {
        "" => Role::Member,
        r => role(r)?,
    };
    let password = Some(field(&obj, "password")?)
        .filter(|p| !p.is_empty())
        .map(str::to_string);
    let has_password = password.is_some();
    let user = t
        .create_user(NewUser {
            email: field(&obj, "email")?.to_string(),
            name: field(&obj, "name")?.to_string(),
            role,
            organization: field(&obj, "organization")?.to_string(),
            password,
        })
        .await
        .map_err(account_error)?;
    let addr = address(peer.as_ref());
    t.audit(
        actor.name(),
        "user.create",
        &user.id,
        &format!("{} {}", user.email, role.as_str()),
        &addr,
    )
    .await;
    let mut v = user_view(&user);
    if !has_password {
        let (url, mailed) = issue_link(&state, &t, &user, "An account was made for you.").await?;
        v.set("mailed", json!(mailed));
        v.set("set_password_url", json!(url));
    }
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// `{name?, role?, organization?, disabled?}`; disabling ends the person's sessions and
/// revokes their keys at once.
async fn update_user(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (t, actor) = admin(&state, &headers).await?;
    let mut user = find_user(&t, &id).await?;
    let obj = body_object(&state, body).await?;
    let myself = matches!(&actor, Actor::User(u) if u.id == user.id);
    let mut disable = false;
    for (name, v) in &obj {
        match name.as_str() {
            n if super::billing::is_limit_field(n) => {}
            "name" => {
                user.name =
                    parlance_tenancy::accounts::text(field(&obj, "name")?, "name", 200, true)
                        .map_err(account_error)?
            }
            "organization" => {
                user.organization = parlance_tenancy::accounts::text(
                    field(&obj, "organization")?,
                    "organization",
                    200,
                    false,
                )
                .map_err(account_error)?
            }
            "role" => user.role = role(field(&obj, "role")?)?,
            "disabled" => match v.as_bool() {
                Some(true) => disable = user.disabled_at.is_none(),
                Some(false) => user.disabled_at = None,
                None => {
                    return Err(Error::invalid_param(
                        "disabled",
                        "'disabled' must be true or false.",
                    )
                    .into())
                }
            },
            other => {
                return Err(
                    Error::invalid_param(other, format!("Unknown user field '{other}'.")).into(),
                )
            }
        }
    }
    if myself && (disable || user.role != Role::Admin) {
        return Err(Error::invalid_param(
            "disabled",
            "You cannot disable or demote yourself: another admin must.",
        )
        .into());
    }
    t.store.update_user(&user).await.map_err(store_error)?;
    if obj.keys().any(|k| super::billing::is_limit_field(k)) {
        let base = t
            .store
            .user_limits(&user.id)
            .await
            .map_err(store_error)?
            .unwrap_or_default();
        let limits = super::billing::limits_from(&obj, &base)?;
        t.store
            .set_user_limits(&user.id, &limits)
            .await
            .map_err(store_error)?;
        t.forget_subjects();
    }
    if disable {
        t.disable_user(&mut user).await.map_err(account_error)?;
    }
    let fields: Vec<String> = obj.iter().map(|(k, v)| format!("{k}={v}")).collect();
    t.audit(
        actor.name(),
        "user.update",
        &user.id,
        &fields.join(" "),
        &address(peer.as_ref()),
    )
    .await;
    Ok(Json(user_view(&user)))
}

async fn password_link(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (t, actor) = admin(&state, &headers).await?;
    let user = find_user(&t, &id).await?;
    let why = "Here is a new link to set your password.";
    let (url, mailed) = issue_link(&state, &t, &user, why).await?;
    t.audit(
        actor.name(),
        "user.password_link",
        &user.id,
        "",
        &address(peer.as_ref()),
    )
    .await;
    Ok(Json(
        json!({"user_id": user.id, "set_password_url": url, "mailed": mailed,
        "expires_in": parlance_tenancy::accounts::LINK_TTL_MS / 1000}),
    ))
}

async fn end_sessions(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (t, actor) = admin(&state, &headers).await?;
    let user = find_user(&t, &id).await?;
    let n = t
        .store
        .revoke_sessions_of(&user.id)
        .await
        .map_err(store_error)?;
    t.audit(
        actor.name(),
        "user.sign_out_all",
        &user.id,
        &format!("{n} sessions"),
        &address(peer.as_ref()),
    )
    .await;
    Ok(Json(json!({"user_id": user.id, "sessions_ended": n})))
}

async fn list_requests(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (t, _) = admin(&state, &headers).await?;
    let status = q
        .get("status")
        .map(String::as_str)
        .filter(|s| !s.is_empty());
    if let Some(s) = status.filter(|s| !["pending", "approved", "denied"].contains(s)) {
        return Err(Error::invalid_param(
            "status",
            format!("'status' must be pending, approved or denied, got {s:?}."),
        )
        .into());
    }
    let reqs = t.store.access_requests(status).await.map_err(store_error)?;
    let data: Vec<Value> = reqs.iter().map(request_view).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `POST /admin/access-requests/{id}/approve` (the account is made, with a one-time
/// set-password link) or `/deny`.
async fn decide(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path((id, decision)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (t, actor) = admin(&state, &headers).await?;
    let approve = match decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return Err(crate::openai::not_found().await),
    };
    let (req, user) = t
        .decide_access(&id, approve, actor.name())
        .await
        .map_err(account_error)?;
    let addr = address(peer.as_ref());
    t.audit(
        actor.name(),
        &format!("access_request.{decision}"),
        &req.id,
        &req.email,
        &addr,
    )
    .await;
    let mut v = json!({"request": request_view(&req)});
    if let Some(u) = user {
        if let Some(credit) = state.accounts.plan.credit_usd.filter(|c| *c > 0.0) {
            t.store
                .credit(
                    &format!("u:{}", u.id),
                    credit,
                    "topup",
                    "sign-up credit",
                    "plan",
                )
                .await
                .map_err(store_error)?;
        }
        let why = "Your request for access was approved.";
        let (url, mailed) = issue_link(&state, &t, &u, why).await?;
        v.set("mailed", json!(mailed));
        v.set("user", user_view(&u));
        v.set("set_password_url", json!(url));
    }
    Ok(Json(v))
}

async fn audit_log(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (t, _) = admin(&state, &headers).await?;
    let limit = match q.get("limit") {
        None => 200,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| {
                Error::invalid_param("limit", "'limit' must be a whole number from 1 to 10000.")
            })?,
    };
    let entries = t.store.audit_log(limit).await.map_err(store_error)?;
    let data: Vec<Value> = entries
        .iter()
        .map(|e| json!({"at": e.at / 1000, "actor": e.actor, "action": e.action, "target": e.target, "detail": e.detail, "address": e.address}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}
