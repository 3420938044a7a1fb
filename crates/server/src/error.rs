//! The OpenAI wire format's errors, in one place: the core error as an HTTP response
//! and as a stream's error event. Other doors render their own (see `gate`).

use axum::response::{IntoResponse, Response};
use parlance_core::{Code, Error, ErrorKind};
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
            param: e.param.as_deref().map(str::to_string),
            code: e.code.as_ref().map(Code::to_string),
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
    .with_code(Code::MaxTokensTooLarge)
}

pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        crate::door::error_response(&self.0, openai_value(&self.0))
    }
}

/// OpenAI's body for an answer that has only a status and a text (see
/// `gate::in_format`).
pub(crate) fn openai_status_body(status: u16, message: &str) -> serde_json::Value {
    serde_json::json!({"error": {
        "message": message,
        "type": openai_type_for_status(status),
        "param": null,
        "code": null,
    }})
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
