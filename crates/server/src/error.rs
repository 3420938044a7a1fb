//! The OpenAI wire format's errors, in one place: the core error as an HTTP response
//! and as a stream's error event. Errors made outside any door (auth, routing,
//! extractors) are answered in this shape first; `rewrite_errors` re-renders them for
//! the Anthropic and Gemini paths. A door's own errors are rendered by the door.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use parlance_core::{Error, ErrorKind};
use parlance_protocol::openai::{ErrorObject, ErrorResponse};

/// OpenAI's `error.type` vocabulary.
fn openai_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidRequest
        | ErrorKind::NotFound
        | ErrorKind::MethodNotAllowed
        | ErrorKind::Conflict
        | ErrorKind::PayloadTooLarge => "invalid_request_error",
        ErrorKind::Authentication => "authentication_error",
        ErrorKind::PermissionDenied => "permission_error",
        ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::Internal | ErrorKind::Upstream | ErrorKind::Timeout => "server_error",
        ErrorKind::Unavailable => "service_unavailable",
    }
}

/// OpenAI's `error.type` for an HTTP status that did not come from an [`Error`].
fn openai_type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        503 => "service_unavailable",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    }
}

/// `{"error":{"message","type","param","code"}}`
pub(crate) fn openai_body(e: &Error) -> ErrorResponse {
    ErrorResponse {
        error: ErrorObject {
            message: e.message.clone(),
            kind: openai_type(e.kind).to_string(),
            param: e.param.clone(),
            code: e.code.clone(),
        },
    }
}

/// The OpenAI body as a JSON value, for answers that add fields beside `error`.
pub(crate) fn openai_value(e: &Error) -> serde_json::Value {
    serde_json::to_value(openai_body(e)).unwrap_or_default()
}

/// A 400 naming `param` when a request asks for more output than its model allows.
pub(crate) fn output_cap(param: &str, asked: u32, limit: u32) -> Error {
    Error::invalid_param(
        param,
        format!(
            "'{param}' is too large: {asked}. This model supports at most {limit} output tokens."
        ),
    )
    .with_code("max_tokens_too_large")
}

pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %self.0, "request failed");
        }
        let mut resp = (status, Json(openai_body(&self.0))).into_response();
        if let Some(secs) = self.0.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// Every error answer carries the JSON error body, also those made by extractors,
/// layers or fallbacks that answer in plain text or with no body at all.
pub(crate) async fn json_errors(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    // JSON already, or a page meant for a person (single sign-on's refusals).
    let kept = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if kept {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string()
    } else {
        text
    };
    let body = serde_json::json!({"error": {
        "message": message,
        "type": openai_type_for_status(status.as_u16()),
        "param": null,
        "code": null,
    }});
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}

/// Re-renders an error answer (already JSON, see `json_errors`) in another door's shape,
/// keeping its status, headers and message.
pub(crate) async fn rewrite_errors(
    resp: Response,
    render: fn(u16, &str) -> serde_json::Value,
) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 256 * 1024)
        .await
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let mut message = v["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    // These doors' error bodies have no `param`: the message names it, as theirs do
    // (`messages.0.content.1: ...`).
    if let Some(param) = v["error"]["param"]
        .as_str()
        .filter(|p| !message.contains(*p))
    {
        message = format!("{param}: {message}");
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = render(status.as_u16(), &message).to_string();
    Response::from_parts(parts, axum::body::Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_body_has_all_four_fields() {
        let e = Error::invalid_param("temperature", "temperature must be between 0 and 2");
        let v = openai_value(&e);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "temperature");
        assert!(v["error"]["code"].is_null());
        assert_eq!(e.status(), 400);
        let v = openai_value(&Error::model_not_found("nope"));
        assert_eq!(v["error"]["code"], "model_not_found");
    }
}
