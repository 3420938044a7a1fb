//! Single sign-on with OpenID Connect, no seat cap: the authorization code flow with
//! PKCE (S256), `state` bound to the browser by a cookie and usable once, a `nonce` in
//! the ID token, and the token's signature checked against the provider's JWKS.
//! People from the allowed email domains get an account on their first sign-in; a
//! groups claim maps to the admin role and to teams on every sign-in.

use super::{account_error, address, Peer};
use crate::admin::store_error;
use crate::AppState;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use parlance_gateway::accounts::OidcSettings;
use parlance_protocol::json::Fields;
use parlance_tenancy::accounts::{NewUser, Role};
use parlance_tenancy::Tenancy;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Digest;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

const STATE_COOKIE: &str = "parlance_oidc";
/// How long a sign-in may take at the provider.
const FLOW_TTL_MS: i64 = 10 * 60 * 1000;
/// Discovery and keys are fetched again after this (rotated keys are picked up sooner:
/// an unknown key id fetches them at once).
const METADATA_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    userinfo_endpoint: Option<String>,
}

/// The provider as this server knows it: settings and cached metadata.
pub struct Oidc {
    pub settings: OidcSettings,
    secret: Option<String>,
    http: reqwest::Client,
    cache: Mutex<Option<(Discovery, JwkSet, Instant)>>,
}

impl Oidc {
    pub fn new(settings: OidcSettings) -> Result<Oidc, String> {
        let secret = match (&settings.client_secret, &settings.client_secret_env) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
                format!(
                    "[accounts.oidc] client_secret_env: the environment variable {var} is not set"
                )
            })?),
            (None, None) => None,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Oidc {
            settings,
            secret,
            http,
            cache: Mutex::new(None),
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        resp.json().await.map_err(|e| format!("{url}: {e}"))
    }

    /// Discovery and keys, fetched when missing, old, or (`refresh`) lacking a key.
    async fn metadata(&self, refresh: bool) -> Result<(Discovery, JwkSet), String> {
        let mut cache = self.cache.lock().await;
        if let Some((d, k, at)) = cache.as_ref() {
            if !refresh && at.elapsed() < METADATA_TTL {
                return Ok((d.clone(), k.clone()));
            }
        }
        let base = self.settings.issuer.trim_end_matches('/');
        let d: Discovery = self
            .get_json(&format!("{base}/.well-known/openid-configuration"))
            .await?;
        if d.issuer.trim_end_matches('/') != base {
            return Err(format!(
                "the provider says its issuer is {}, not {base}",
                d.issuer
            ));
        }
        let keys: JwkSet = self.get_json(&d.jwks_uri).await?;
        *cache = Some((d.clone(), keys.clone(), Instant::now()));
        Ok((d, keys))
    }
}

fn random(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// Where the provider sends people back: the public URL's, else this request's host.
fn redirect_uri(state: &AppState, headers: &HeaderMap) -> String {
    let base = match &state.accounts.public_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}")
        }
    };
    format!("{base}/account/oidc/callback")
}

/// A page that says what went wrong, with a way back (the browser is mid-redirect: a
/// JSON error would be a dead end).
fn problem(status: StatusCode, why: &str) -> Response {
    tracing::info!("single sign-on refused: {why}");
    let text = why
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>Sign-in failed</title><link rel=stylesheet href=/console/style.css>\
         <main class=plain><h1>Sign-in failed</h1><p id=sso-error>{text}</p><p><a href=/signin>Back to sign-in</a></p></main>"
    );
    let mut resp = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    crate::console::security_headers(&mut resp);
    resp
}

fn state_cookie(value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let flag = if secure { "; Secure" } else { "" };
    // Lax, not Strict: the provider's redirect back is a cross-site navigation.
    let c = format!("{STATE_COOKIE}={value}; Path=/account/oidc; HttpOnly; SameSite=Lax; Max-Age={max_age}{flag}");
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `GET /account/oidc/start`: off to the provider.
pub(crate) async fn start(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let (Some(oidc), Some(t)) = (state.oidc.as_ref(), state.tenancy.as_ref()) else {
        return problem(
            StatusCode::NOT_FOUND,
            "Single sign-on is not configured on this server.",
        );
    };
    let (d, _) = match oidc.metadata(false).await {
        Ok(m) => m,
        Err(e) => {
            return problem(
                StatusCode::BAD_GATEWAY,
                &format!("The sign-on provider cannot be reached: {e}"),
            )
        }
    };
    let (flow, nonce, verifier) = (random(32), random(24), random(48));
    if let Err(e) = t
        .store
        .insert_oidc_flow(&flow, &nonce, &verifier, FLOW_TTL_MS)
        .await
    {
        return crate::error::ApiError(store_error(e)).into_response();
    }
    let mut url = match reqwest::Url::parse(&d.authorization_endpoint) {
        Ok(u) => u,
        Err(e) => {
            return problem(
                StatusCode::BAD_GATEWAY,
                &format!("The provider's authorization endpoint: {e}"),
            )
        }
    };
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &oidc.settings.client_id)
        .append_pair("redirect_uri", &redirect_uri(&state, &headers))
        .append_pair("scope", &oidc.settings.scopes.join(" "))
        .append_pair("state", &flow)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &pkce_challenge(&verifier))
        .append_pair("code_challenge_method", "S256");
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, url.to_string())]).into_response();
    let secure = super::secure(&state, &headers);
    resp.headers_mut().append(
        header::SET_COOKIE,
        state_cookie(&flow, FLOW_TTL_MS / 1000, secure),
    );
    resp
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            kv.trim()
                .strip_prefix(name)?
                .strip_prefix('=')
                .map(str::to_string)
        })
}

/// `GET /account/oidc/callback?code=&state=`: checks everything, then signs in.
pub(crate) async fn callback(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (Some(oidc), Some(t)) = (state.oidc.as_ref(), state.tenancy.as_ref()) else {
        return problem(
            StatusCode::NOT_FOUND,
            "Single sign-on is not configured on this server.",
        );
    };
    if let Some(e) = q.get("error") {
        let more = q
            .get("error_description")
            .map(String::as_str)
            .unwrap_or_default();
        return problem(
            StatusCode::UNAUTHORIZED,
            &format!("The provider refused: {e} {more}"),
        );
    }
    let flow = q.get("state").cloned().unwrap_or_default();
    // The state must be this browser's (its cookie) and unused (one statement marks it).
    let mine =
        cookie(&headers, STATE_COOKIE).is_some_and(|c| parlance_tenancy::keys::same(&c, &flow));
    if !mine {
        return problem(
            StatusCode::BAD_REQUEST,
            "This sign-in was not started in this browser: start again.",
        );
    }
    let (nonce, verifier) = match t.store.take_oidc_flow(&flow).await {
        Ok(Some(f)) => f,
        Ok(None) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "This sign-in link was already used or has expired: start again.",
            )
        }
        Err(e) => return crate::error::ApiError(store_error(e)).into_response(),
    };
    let code = q.get("code").cloned().unwrap_or_default();
    let claims = match exchange(oidc, &state, &headers, &code, &verifier, &nonce).await {
        Ok(c) => c,
        Err(why) => return problem(StatusCode::UNAUTHORIZED, &why),
    };
    let addr = address(peer.as_ref());
    match provision(oidc, t, &claims, &addr).await {
        Ok(user) => match t.open_session(user, &addr).await {
            Ok((s, token)) => {
                let mut resp =
                    (StatusCode::SEE_OTHER, [(header::LOCATION, "/account")]).into_response();
                let secure = super::secure(&state, &headers);
                let ttl = (s.expires_at - parlance_tenancy::keys::now_ms()) / 1000;
                super::set_cookie(&mut resp, &token, ttl, secure);
                resp.headers_mut()
                    .append(header::SET_COOKIE, state_cookie("", 0, secure));
                resp
            }
            Err(e) => crate::error::ApiError(account_error(e)).into_response(),
        },
        Err(why) => problem(StatusCode::FORBIDDEN, &why),
    }
}

/// The code for tokens at the provider, and the ID token's claims once verified (with
/// the userinfo endpoint's when the token lacks an email).
async fn exchange(
    oidc: &Oidc,
    state: &AppState,
    headers: &HeaderMap,
    code: &str,
    verifier: &str,
    nonce: &str,
) -> Result<Map<String, Value>, String> {
    let (d, mut keys) = oidc.metadata(false).await?;
    let mut form = vec![
        ("grant_type", "authorization_code".to_string()),
        ("code", code.to_string()),
        ("redirect_uri", redirect_uri(state, headers)),
        ("client_id", oidc.settings.client_id.clone()),
        ("code_verifier", verifier.to_string()),
    ];
    if let Some(s) = &oidc.secret {
        form.push(("client_secret", s.clone()));
    }
    let resp = oidc
        .http
        .post(&d.token_endpoint)
        .form(&form)
        .send()
        .await
        .map_err(|e| format!("the token endpoint: {e}"))?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .map_err(|e| format!("the token endpoint's answer: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "the provider refused the code: {}",
            body.field("error").as_str().unwrap_or("unknown error")
        ));
    }
    let id_token = body
        .field("id_token")
        .as_str()
        .ok_or("the provider sent no ID token")?;
    let verified =
        match super::idtoken::verify(id_token, &keys, &d.issuer, &oidc.settings.client_id, nonce) {
            Err(super::idtoken::Refused::UnknownKey(_)) => {
                (_, keys) = oidc.metadata(true).await?;
                super::idtoken::verify(id_token, &keys, &d.issuer, &oidc.settings.client_id, nonce)
            }
            other => other,
        };
    let mut claims = verified.map_err(|e| format!("The sign-on answer was refused: {e}."))?;
    if !claims.contains_key("email") {
        if let (Some(url), Some(access)) =
            (&d.userinfo_endpoint, body.field("access_token").as_str())
        {
            let info: Map<String, Value> = oidc
                .http
                .get(url)
                .bearer_auth(access)
                .send()
                .await
                .map_err(|e| format!("userinfo: {e}"))?
                .json()
                .await
                .map_err(|e| format!("userinfo: {e}"))?;
            // Userinfo is only about the token's subject.
            if info.get("sub") == claims.get("sub") {
                for (k, v) in info {
                    claims.entry(k).or_insert(v);
                }
            }
        }
    }
    Ok(claims)
}

/// The account of the person the claims describe: made on first sign-in, its role and
/// teams kept in step with the groups claim.
async fn provision(
    oidc: &Oidc,
    t: &Tenancy,
    claims: &Map<String, Value>,
    addr: &str,
) -> Result<parlance_tenancy::accounts::User, String> {
    let s = &oidc.settings;
    let email = allowed_email(s, claims)?;
    let groups = groups_of(s, claims);
    let role = if groups.iter().any(|g| s.admin_groups.contains(g)) {
        Role::Admin
    } else {
        Role::Member
    };
    let name = claims
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_else(|| email.split('@').next().unwrap_or("someone"));
    let user = user_for(s, t, &email, name, role, addr).await?;
    join_group_teams(s, t, &user, &email, &groups, addr).await?;
    t.audit(&email, "session.sign_in", &user.id, "oidc", addr)
        .await;
    Ok(user)
}

/// The claims' email, verified and of an allowed domain, normalized.
fn allowed_email(s: &OidcSettings, claims: &Map<String, Value>) -> Result<String, String> {
    let email = claims
        .get("email")
        .and_then(Value::as_str)
        .ok_or("The provider did not share an email address (ask for the `email` scope).")?;
    if claims.get("email_verified") == Some(&Value::Bool(false)) {
        return Err("The provider has not verified this email address.".into());
    }
    let email = parlance_tenancy::accounts::normalize_email(email).map_err(|e| e.to_string())?;
    let domain = email.rsplit('@').next().unwrap_or_default();
    if !s.allowed_domains.is_empty()
        && !s
            .allowed_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    {
        return Err(format!("People from {domain} may not sign in here."));
    }
    Ok(email)
}

fn groups_of(s: &OidcSettings, claims: &Map<String, Value>) -> Vec<String> {
    match claims.get(&s.groups_claim) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(g)) => vec![g.clone()],
        _ => Vec::new(),
    }
}

/// The account of this email: made on first sign-in; its role follows the admin groups
/// when they are configured.
async fn user_for(
    s: &OidcSettings,
    t: &Tenancy,
    email: &str,
    name: &str,
    role: Role,
    addr: &str,
) -> Result<parlance_tenancy::accounts::User, String> {
    let existing = t
        .store
        .user_by_email(email)
        .await
        .map_err(|e| e.to_string())?;
    let user = match existing {
        Some(u) if u.disabled_at.is_some() => return Err("This account is disabled.".into()),
        Some(mut u) => {
            if !s.admin_groups.is_empty() && u.role != role {
                u.role = role;
                t.store.update_user(&u).await.map_err(|e| e.to_string())?;
                t.audit(
                    "oidc",
                    "user.update",
                    &u.id,
                    &format!("role={}", role.as_str()),
                    addr,
                )
                .await;
            }
            u
        }
        None => {
            let u = t
                .create_user(NewUser {
                    email: email.to_string(),
                    name: name.to_string(),
                    role,
                    organization: String::new(),
                    password: None,
                })
                .await
                .map_err(|e| e.to_string())?;
            t.audit(
                "oidc",
                "user.create",
                &u.id,
                &format!("{email} {}", role.as_str()),
                addr,
            )
            .await;
            u
        }
    };
    Ok(user)
}

/// Membership of the teams the configured groups map to (teams made as needed).
async fn join_group_teams(
    s: &OidcSettings,
    t: &Tenancy,
    user: &parlance_tenancy::accounts::User,
    email: &str,
    groups: &[String],
    addr: &str,
) -> Result<(), String> {
    for (group, team_name) in &s.teams {
        if groups.contains(group) {
            let team = match t
                .store
                .team_by_name(team_name)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(team) => team,
                None => t
                    .store
                    .insert_team(team_name, &Default::default())
                    .await
                    .map_err(|e| e.to_string())?,
            };
            if !t
                .store
                .teams_of(&user.id)
                .await
                .map_err(|e| e.to_string())?
                .iter()
                .any(|(tm, _)| tm.id == team.id)
            {
                t.store
                    .set_member(&team.id, &user.id, "member")
                    .await
                    .map_err(|e| e.to_string())?;
                t.audit(
                    "oidc",
                    "team.set_member",
                    &team.id,
                    &format!("{email} member (group {group})"),
                    addr,
                )
                .await;
            }
        }
    }
    Ok(())
}
