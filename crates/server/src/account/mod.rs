//! The people side: sign-in with a session cookie, sign-up (access requests), one-time
//! set-password links, and each user's own keys and usage (`/account/...`). The admin
//! side of it (users, requests, audit log) is in `people`.
//!
//! A session lives in an HttpOnly, `SameSite=Strict` cookie; every call that changes
//! something also needs the session's CSRF token in `X-CSRF-Token` and, when the
//! browser sends one, an `Origin` matching the `Host`. A cross-site page can neither
//! read the token nor send the header without a CORS preflight this server refuses.

pub(crate) mod billing;
mod idtoken;
pub(crate) mod mail;
mod me;
pub(crate) mod oidc;
pub(crate) mod people;
mod teams;

use crate::body::{parse_json, read_limited};
use crate::error::ApiError;
use crate::AppState;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use parlance_core::Code;
use parlance_core::{Error, ErrorKind};
pub use parlance_gateway::accounts::Settings;
use parlance_protocol::json::Fields;
use parlance_tenancy::accounts::{AccountError, NewUser, Role, Session, SignupMode};
use parlance_tenancy::keys::same;
use parlance_tenancy::Tenancy;
use serde_json::{json, Map, Value};
use std::sync::Arc;

pub(crate) const COOKIE: &str = "parlance_session";

/// The connection's peer address (set by the accept loop; absent in-process).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

pub(crate) fn address(peer: Option<&Extension<Peer>>) -> String {
    peer.map_or_else(|| "-".to_string(), |p| p.0 .0.ip().to_string())
}

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/config", get(config))
        .route("/signup", post(signup))
        .route("/signin", post(signin))
        .route("/signout", post(signout))
        .route("/signout-all", post(signout_all))
        .route("/me", get(me_view))
        .route("/password", post(password))
        .route("/oidc/start", get(oidc::start))
        .route("/oidc/callback", get(oidc::callback))
        .merge(me::routes())
        .merge(teams::routes())
}

pub(crate) fn tenancy(state: &AppState) -> Result<Arc<Tenancy>, Error> {
    state.tenancy.clone().ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            "Accounts need a store: this server runs with --db none.",
        )
        .with_code(Code::UnknownUrl)
    })
}

/// A refusal as the API says it; store failures are logged, not shown.
pub(crate) fn account_error(e: AccountError) -> Error {
    let msg = e.to_string();
    match e {
        AccountError::Invalid { field, .. } => Error::invalid_param(field, msg),
        AccountError::EmailTaken => {
            Error::new(ErrorKind::Conflict, msg).with_code(Code::EmailTaken)
        }
        AccountError::BadCredentials => {
            Error::new(ErrorKind::Authentication, msg).with_code(Code::InvalidCredentials)
        }
        AccountError::Throttled(s) => Error::new(ErrorKind::RateLimited, msg)
            .with_code(Code::TooManyAttempts)
            .with_retry_after(s),
        AccountError::BadLink => {
            Error::new(ErrorKind::InvalidRequest, msg).with_code(Code::InvalidLink)
        }
        AccountError::NotFound(_) => Error::new(ErrorKind::NotFound, msg).with_code(Code::NotFound),
        AccountError::Conflict(_) => Error::new(ErrorKind::Conflict, msg).with_code(Code::Conflict),
        AccountError::Store(_) | AccountError::Hashing(_) => crate::admin::store_error(msg),
    }
}

fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// A browser's `Origin`, when it sent one, must be this server: a sign-in or a
/// state change from another site's page is refused.
fn same_origin(headers: &HeaderMap) -> Result<(), Error> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .split_once("://")
        .map(|(_, h)| h.trim_end_matches('/'));
    if host.is_some() && origin_host == host {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::PermissionDenied,
        "This call must come from this server's own pages (the Origin is another site).",
    )
    .with_code(Code::CsrfFailed))
}

/// The signed-in person, when the cookie names a live session; with `csrf`, the call
/// must also carry the session's CSRF token and come from this origin.
pub(crate) async fn session(
    state: &AppState,
    headers: &HeaderMap,
    csrf: bool,
) -> Result<Option<(Arc<Tenancy>, Session)>, Error> {
    let Some(token) = cookie_token(headers) else {
        return Ok(None);
    };
    let t = tenancy(state)?;
    let Some(s) = t.session(token).await.map_err(account_error)? else {
        return Ok(None);
    };
    if csrf {
        same_origin(headers)?;
        let sent = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !same(sent, &s.csrf) {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "This call needs the session's CSRF token in the X-CSRF-Token header.",
            )
            .with_code(Code::CsrfFailed));
        }
    }
    Ok(Some((t, s)))
}

/// Like [`session`], but no session is a 401. State-changing methods need the CSRF token.
pub(crate) async fn signed_in(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
) -> Result<(Arc<Tenancy>, Session), Error> {
    let csrf = !matches!(*method, Method::GET | Method::HEAD);
    session(state, headers, csrf).await?.ok_or_else(|| {
        Error::new(
            ErrorKind::Authentication,
            "Sign in first (POST /account/signin).",
        )
        .with_code(Code::NotSignedIn)
    })
}

fn secure(state: &AppState, headers: &HeaderMap) -> bool {
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    forwarded
        || state
            .accounts
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
}

fn set_cookie(resp: &mut Response, value: &str, max_age_s: i64, secure: bool) {
    let flag = if secure { "; Secure" } else { "" };
    let c =
        format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{flag}");
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

pub(crate) fn user_view(u: &parlance_tenancy::accounts::User) -> Value {
    json!({
        "object": "user",
        "id": u.id,
        "email": u.email,
        "name": u.name,
        "role": u.role,
        "organization": u.organization,
        "created_at": u.created_at / 1000,
        "disabled_at": u.disabled_at.map(|t| t / 1000),
        "has_password": u.password_hash.is_some(),
    })
}

fn session_view(s: &Session) -> Value {
    json!({"user": user_view(&s.user), "csrf_token": s.csrf, "expires_at": s.expires_at / 1000})
}

/// A signed-in answer: the session in the body (with its CSRF token) and the cookie.
fn with_session(
    state: &AppState,
    headers: &HeaderMap,
    s: &Session,
    token: &str,
    body: Value,
    status: StatusCode,
) -> Response {
    let mut resp = (status, Json(body)).into_response();
    let ttl = (s.expires_at - parlance_tenancy::keys::now_ms()) / 1000;
    set_cookie(&mut resp, token, ttl, secure(state, headers));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn config(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "signup": state.accounts.signup().as_str(),
        "accounts": state.tenancy.is_some(),
        "sso": state.oidc.as_ref().map(|o| o.settings.label.clone()),
    }))
}

async fn body_object(state: &AppState, body: Body) -> Result<Map<String, Value>, Error> {
    let bytes = read_limited(body, state.body_limit.min(64 * 1024)).await?;
    parse_json(&bytes)
}

fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, Error> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Error::invalid_param(
            name,
            format!("'{name}' must be a string."),
        )),
    }
}

async fn signin(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    same_origin(&headers)?;
    let t = tenancy(&state)?;
    let obj = body_object(&state, body).await?;
    let addr = address(peer.as_ref());
    let (s, token) = t
        .sign_in(field(&obj, "email")?, field(&obj, "password")?, &addr)
        .await
        .map_err(account_error)?;
    t.audit(&s.user.email, "session.sign_in", &s.user.id, "", &addr)
        .await;
    Ok(with_session(
        &state,
        &headers,
        &s,
        &token,
        session_view(&s),
        StatusCode::OK,
    ))
}

async fn signout(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (t, _) = signed_in(&state, &headers, &Method::POST).await?;
    if let Some(token) = cookie_token(&headers) {
        t.sign_out(token).await.map_err(account_error)?;
    }
    let mut resp = Json(json!({"signed_out": true})).into_response();
    set_cookie(&mut resp, "", 0, secure(&state, &headers));
    Ok(resp)
}

async fn signout_all(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (t, s) = signed_in(&state, &headers, &Method::POST).await?;
    let n = t
        .store
        .revoke_sessions_of(&s.user.id)
        .await
        .map_err(crate::admin::store_error)?;
    t.audit(
        &s.user.email,
        "session.sign_out_all",
        &s.user.id,
        &format!("{n} sessions"),
        &address(peer.as_ref()),
    )
    .await;
    let mut resp = Json(json!({"signed_out": true, "sessions": n})).into_response();
    set_cookie(&mut resp, "", 0, secure(&state, &headers));
    Ok(resp)
}

async fn me_view(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, s) = signed_in(&state, &headers, &Method::GET).await?;
    let mut resp = Json(session_view(&s)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `{token, password}`: a one-time link sets a password (and signs in); or, signed in,
/// `{current_password, password}` changes it (every other session ends).
async fn password(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    same_origin(&headers)?;
    let t = tenancy(&state)?;
    let obj = body_object(&state, body).await?;
    let addr = address(peer.as_ref());
    let new = field(&obj, "password")?.to_string();
    let user = if obj.contains_key("token") {
        t.redeem_password_link(field(&obj, "token")?, new)
            .await
            .map_err(account_error)?
    } else {
        let (t, s) = signed_in(&state, &headers, &Method::POST).await?;
        // The current password proves it is the person, not a borrowed open session.
        t.sign_in(&s.user.email, field(&obj, "current_password")?, &addr)
            .await
            .map_err(account_error)?;
        let mut user = s.user;
        t.set_password(&mut user, new)
            .await
            .map_err(account_error)?;
        t.store
            .revoke_sessions_of(&user.id)
            .await
            .map_err(crate::admin::store_error)?;
        user
    };
    t.audit(&user.email, "user.set_password", &user.id, "", &addr)
        .await;
    let (s, token) = t.open_session(user, &addr).await.map_err(account_error)?;
    Ok(with_session(
        &state,
        &headers,
        &s,
        &token,
        session_view(&s),
        StatusCode::OK,
    ))
}

/// BgGPT's access form: `{name, email, organization, intended_use}` (+ `password`
/// when sign-up is `open`, where the account and its first key are made at once).
async fn signup(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    same_origin(&headers)?;
    let t = tenancy(&state)?;
    let obj = body_object(&state, body).await?;
    let addr = address(peer.as_ref());
    match state.accounts.signup() {
        SignupMode::Closed => Err(Error::new(
            ErrorKind::PermissionDenied,
            "Sign-up is closed on this server: ask an administrator for an account.",
        )
        .with_code(Code::SignupClosed)
        .into()),
        SignupMode::Approval => {
            let req = t
                .request_access(
                    field(&obj, "email")?,
                    field(&obj, "name")?,
                    field(&obj, "organization")?,
                    field(&obj, "intended_use")?,
                )
                .await
                .map_err(account_error)?;
            t.audit(&req.email, "access_request.create", &req.id, "", &addr)
                .await;
            Ok((
                StatusCode::ACCEPTED,
                Json(
                    json!({"object": "access_request", "id": req.id, "status": req.status,
                    "message": "Thank you: an administrator will review your request."}),
                ),
            )
                .into_response())
        }
        SignupMode::Open => open_signup(&state, &t, &headers, &obj, &addr).await,
    }
}

async fn open_signup(
    state: &AppState,
    t: &Arc<Tenancy>,
    headers: &HeaderMap,
    obj: &Map<String, Value>,
    addr: &str,
) -> Result<Response, ApiError> {
    let user = t
        .create_user(NewUser {
            email: field(obj, "email")?.to_string(),
            name: field(obj, "name")?.to_string(),
            role: Role::Member,
            organization: field(obj, "organization")?.to_string(),
            password: Some(field(obj, "password")?.to_string()),
        })
        .await
        .map_err(account_error)?;
    t.audit(
        &user.email,
        "user.sign_up",
        &user.id,
        field(obj, "intended_use")?,
        addr,
    )
    .await;
    if let Some(credit) = state.accounts.plan.credit_usd.filter(|c| *c > 0.0) {
        t.store
            .credit(
                &format!("u:{}", user.id),
                credit,
                "topup",
                "sign-up credit",
                "plan",
            )
            .await
            .map_err(crate::admin::store_error)?;
    }
    let key = me::make_key(state, t, &user, &Map::new(), "first key", addr, None).await?;
    let (s, token) = t.open_session(user, addr).await.map_err(account_error)?;
    let mut body = session_view(&s);
    body.set("key", key);
    Ok(with_session(
        state,
        headers,
        &s,
        &token,
        body,
        StatusCode::CREATED,
    ))
}
