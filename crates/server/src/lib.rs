//! Parlance's HTTP layer as a library: `build_router(state)` gives the whole app, so
//! the binary serves it and tests drive it in-process.

mod auth;
mod body;
pub mod catalog;
pub mod config;
mod error;
pub mod openai;

pub use error::ApiError;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router as HttpRouter};
use parlance_core::Router;
use serde_json::json;
use std::sync::Arc;

/// 32 MiB: room for a few base64 images.
pub const DEFAULT_BODY_LIMIT: usize = 32 * 1024 * 1024;

pub struct AppState {
    pub router: Router,
    /// Accepted keys; empty means the server is open.
    pub api_keys: Vec<String>,
    pub body_limit: usize,
    pub fingerprint: String,
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
            ),
        }
    }
}

async fn health() -> impl IntoResponse {
    (StatusCode::OK, Json(json!({"status": "ok"})))
}

fn api_routes() -> HttpRouter<Arc<AppState>> {
    HttpRouter::new()
        .route("/chat/completions", post(openai::chat_completions))
        .route("/models", get(openai::list_models))
        .route("/models/{*id}", get(openai::get_model))
        .route("/tokens/count", post(openai::count_tokens))
}

pub fn build_router(state: Arc<AppState>) -> HttpRouter {
    let api = api_routes();
    // `/v1` for the OpenAI SDKs, `/api/v1` for NEXTgpt and GigaChat style base URLs.
    let protected = HttpRouter::new()
        .nest("/v1", api.clone())
        .nest("/api/v1", api)
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::require_key,
        ));
    HttpRouter::new()
        .route("/health", get(health))
        .merge(protected)
        .fallback(openai::not_found)
        .method_not_allowed_fallback(openai::method_not_allowed)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    ApiError(parlance_core::Error::internal(
        "internal error: the server hit a bug handling this request",
    ))
    .into_response()
}
