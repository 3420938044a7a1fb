//! API-key check. Accepts the header each SDK family sends: OpenAI's
//! `Authorization: Bearer`, Anthropic's `x-api-key`, Google's `x-goog-api-key`.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parlance_core::{Error, ErrorKind};
use std::sync::Arc;

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if let Some(k) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some(k.trim());
        }
        return Some(v);
    }
    ["x-api-key", "x-goog-api-key"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()).map(str::trim))
}

/// Compares without an early exit, so timing does not leak how much of a key matched.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if state.api_keys.is_empty() {
        return next.run(req).await;
    }
    match presented_key(req.headers()) {
        Some(k) if state.api_keys.iter().any(|valid| same(valid, k)) => next.run(req).await,
        Some(_) => ApiError(
            Error::new(ErrorKind::Authentication, "Incorrect API key provided.").with_code("invalid_api_key"),
        )
        .into_response(),
        None => ApiError(
            Error::new(
                ErrorKind::Authentication,
                "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' (or x-api-key / x-goog-api-key).",
            )
            .with_code("missing_api_key"),
        )
        .into_response(),
    }
}
