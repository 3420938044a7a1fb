//! Parlance's HTTP layer as a library: `build_router(state)` gives the whole app, so
//! the binary serves it and tests drive it in-process.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

mod account;
mod admin;
mod anthropic;
mod app;
mod auth;
mod body;
mod builder;
mod completions;
mod console;
mod dashboard;
mod door;
mod embeddings;
mod error;
mod gate;
mod gemini;
mod ids;
pub mod listen;
mod metering;
pub mod observe;
mod ollama;
pub mod openai;
mod reqlog;
mod rerank;
mod responses;
pub mod shutdown;
mod sse;

pub use account::mail::Mailer;
pub use account::oidc::Oidc;
pub use account::{Peer, Settings as AccountSettings};
pub use admin::csv as usage_csv;
pub use app::App;
pub use builder::{Builder, Server};
pub use error::ApiError;
pub use shutdown::Shutdown;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router as HttpRouter};
use parlance_core::Code;
use parlance_core::{Error, ErrorKind, Router};
use parlance_protocol::json::Fields;
use serde_json::json;
use std::sync::Arc;

/// 32 MiB: room for a few base64 images.
pub const DEFAULT_BODY_LIMIT: usize = 32 * 1024 * 1024;

pub struct AppState {
    pub router: Router,
    /// Accepted keys; empty means the server is open.
    pub api_keys: Vec<String>,
    pub body_limit: usize,
    pub fingerprint: Arc<str>,
    pub shutdown: Shutdown,
    /// Origins browsers may call from (`--cors-origin`); `*` for any. Empty: no CORS.
    pub cors_origins: Vec<String>,
    /// Stored keys, limits and usage metering; `None`: static keys only, no metering.
    pub tenancy: Option<Arc<parlance_tenancy::Tenancy>>,
    /// Renders `/metrics`; `None`: no recorder installed (in-process tests).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Stored Responses API turns when there is no tenancy store (`--db none`).
    pub responses: responses::MemoryStore,
    /// When the server started (the console's uptime).
    pub started: std::time::Instant,
    /// `--models-dir`, which Ollama's `/api/pull` and `/api/delete` add to and take from.
    pub models_dir: Option<Arc<dyn parlance_core::lazy::ModelFolder>>,
    /// Sign-up mode, the self-service plan and the public URL (`[accounts]`).
    pub accounts: account::Settings,
    /// The single sign-on provider, when `[accounts.oidc]` names one.
    pub oidc: Option<Arc<account::oidc::Oidc>>,
    /// Sends one-time links, when `[accounts.smtp]` names a server.
    pub mailer: Option<Arc<account::mail::Mailer>>,
}

impl AppState {
    pub fn new(router: Router) -> Self {
        AppState {
            router,
            api_keys: Vec::new(),
            body_limit: DEFAULT_BODY_LIMIT,
            fingerprint: format!(
                "fp_parlance_{}",
                env!("CARGO_PKG_VERSION").replace('.', "_")
            )
            .into(),
            shutdown: Shutdown::default(),
            cors_origins: Vec::new(),
            tenancy: None,
            metrics: None,
            responses: responses::MemoryStore::default(),
            started: std::time::Instant::now(),
            models_dir: None,
            accounts: account::Settings::default(),
            oidc: None,
            mailer: None,
        }
    }

    /// True when callers need no key at all.
    /// A server that lets people sign up is never open, even before its first key.
    pub fn is_open(&self) -> bool {
        self.api_keys.is_empty()
            && self.accounts.signup() == parlance_tenancy::accounts::SignupMode::Closed
            && self.tenancy.as_ref().is_none_or(|t| !t.requires_keys())
    }
}

/// 200 while every model can serve; 503 naming the ones that cannot (a dead engine).
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let down: Vec<(String, String)> = state
        .router
        .routes()
        .filter_map(|r| r.backend.health().err().map(|e| (r.info.id.clone(), e)))
        .collect();
    if down.is_empty() {
        return (StatusCode::OK, Json(json!({"status": "ok"}))).into_response();
    }
    let message = down
        .iter()
        .map(|(m, why)| format!("model `{m}` is unavailable: {why}"))
        .collect::<Vec<_>>()
        .join("; ");
    let e = Error::new(ErrorKind::Unavailable, message).with_code(Code::ModelUnavailable);
    let mut body = error::openai_value(&e);
    body.set("status", json!("unavailable"));
    body.set(
        "unavailable",
        json!(down.iter().map(|(m, _)| m).collect::<Vec<_>>()),
    );
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// The routes under `/v1` and `/api/v1`, each mounted as its door's.
fn api_routes(state: &Arc<AppState>) -> HttpRouter<Arc<AppState>> {
    use gate::WireFormat::{Anthropic, Gemini, OpenAi};
    let openai = HttpRouter::new()
        .route("/chat/completions", post(openai::chat_completions))
        .route("/completions", post(completions::completions))
        .route("/embeddings", post(embeddings::create))
        .route("/rerank", post(rerank::create))
        .route("/models", get(openai::list_models))
        .route("/tokens/count", post(openai::count_tokens))
        .route("/key", get(admin::own_key))
        // GigaChat's balance (its SDK's `get_balance()`).
        .route("/balance", get(account::billing::gigachat_balance))
        .route("/responses", post(responses::create))
        .route(
            "/responses/{id}",
            get(responses::get).delete(responses::delete),
        )
        .route("/responses/{id}/input_items", get(responses::input_items));
    // Anthropic's paths are Anthropic's, also the ones it does not have.
    let anthropic = HttpRouter::new()
        .route("/", post(anthropic::messages))
        .route("/count_tokens", post(anthropic::count_tokens));
    // GET: OpenAI's model object; POST `MODEL:generateContent`: Gemini's door.
    let model = OpenAi
        .method(state, get(openai::get_model))
        .merge(Gemini.method(state, post(gemini::action)));
    OpenAi
        .mount(state, openai, true)
        .nest("/messages", Anthropic.mount(state, anthropic, true))
        .route("/models/{*id}", model)
}

pub fn build_router(state: Arc<AppState>) -> App {
    use gate::WireFormat::{Gemini, Ollama, OpenAi};
    let gemini = HttpRouter::new()
        .route("/models", get(gemini::list_models))
        .route(
            "/models/{*name}",
            get(gemini::get_model).post(gemini::action),
        );
    let ollama = HttpRouter::new()
        .route("/chat", post(ollama::chat))
        .route("/generate", post(ollama::generate))
        .route("/embed", post(ollama::embed))
        .route("/embeddings", post(ollama::embed))
        .route("/tags", get(ollama::tags))
        .route("/show", post(ollama::show))
        .route("/ps", get(ollama::ps))
        .route("/version", get(ollama::version))
        .route("/pull", post(ollama::pull::pull))
        .route("/delete", axum::routing::delete(ollama::pull::delete));
    let openai_root = HttpRouter::new()
        .route("/tokenize", post(openai::tokenize))
        .route("/detokenize", post(openai::detokenize))
        // llama-server's and Cohere's paths.
        .route("/rerank", post(rerank::create))
        .route("/v2/rerank", post(rerank::create));
    // `/v1` for the OpenAI SDKs, `/api/v1` for NEXTgpt and GigaChat style base URLs,
    // `/v1beta` for Gemini's, `/api` for Ollama's.
    let doors = OpenAi
        .mount(&state, openai_root, false)
        .nest("/v1", api_routes(&state))
        .nest("/api/v1", api_routes(&state))
        .nest("/v1beta", Gemini.mount(&state, gemini, true))
        .nest("/api", Ollama.mount(&state, ollama, true));
    let cors = cors_layer(&state.cors_origins);
    let app = HttpRouter::new()
        .route("/", get(console::playground))
        .route("/admin", get(console::admin))
        .route("/admin/", get(console::admin))
        .route("/console/{file}", get(console::asset))
        .route("/embeddings", get(console::embeddings))
        .route("/account", get(console::account))
        .route("/signin", get(console::account))
        .route("/signup", get(console::account))
        .nest("/account", account::routes())
        .route("/health", get(health))
        .route("/metrics", get(observe::metrics_page))
        // GigaChat's token exchange; not under Ollama's `/api`.
        .nest(
            "/api/v2",
            HttpRouter::new()
                .route("/oauth", post(admin::oauth))
                .fallback(openai::not_found),
        )
        .nest(
            "/admin",
            admin::routes().route_layer(axum::middleware::from_fn(gate::admin_label)),
        )
        .merge(doors)
        .fallback(openai::not_found)
        .method_not_allowed_fallback(gate::method_not_allowed);
    let app = match cors {
        Some(c) => app.layer(c),
        None => app,
    };
    // The request log, OpenAI-shaped errors outside the doors (which answer their
    // own) and the panic catch-all wrap the router from outside (see `app`).
    App::new(app.with_state(state))
}

fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| axum::http::HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods(Any)
            .allow_headers(Any)
            .expose_headers(Any)
            .max_age(std::time::Duration::from_secs(600)),
    )
}
