//! The one error type. Every failure, wherever it starts, becomes an [`Error`] with a
//! kind; the kind decides the HTTP status. Each front door renders it in its own wire
//! format (the server crate), naming parameters in its own terms.

pub use crate::error_code::Code;
pub use crate::param_path::ParamPath;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed or out-of-range input: 400.
    InvalidRequest,
    /// Missing or wrong API key: 401.
    Authentication,
    /// Valid key, not allowed: 403.
    PermissionDenied,
    /// Unknown model or route: 404.
    NotFound,
    /// Wrong HTTP method on a known route: 405.
    MethodNotAllowed,
    /// The request clashes with what exists (a taken email, a decided request): 409.
    Conflict,
    /// Request body over the configured limit: 413.
    PayloadTooLarge,
    /// Rate limit or a full queue: 429 (with Retry-After when known).
    RateLimited,
    /// Bug or engine failure: 500.
    Internal,
    /// An upstream provider failed: 502.
    Upstream,
    /// Not ready or shutting down: 503.
    Unavailable,
    /// An upstream or engine deadline passed: 504.
    Timeout,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Authentication => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::Conflict => 409,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::RateLimited => 429,
            ErrorKind::Internal => 500,
            ErrorKind::Upstream => 502,
            ErrorKind::Unavailable => 503,
            ErrorKind::Timeout => 504,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    /// The request parameter at fault, e.g. `temperature` or `messages[1].content`.
    pub param: Option<ParamPath>,
    /// A machine-readable code, e.g. `model_not_found`, `context_length_exceeded`.
    pub code: Option<Code>,
    /// Seconds a client should wait before retrying (sent as `Retry-After`).
    pub retry_after: Option<u64>,
    /// Worth trying again, here or on another deployment (connect errors, timeouts,
    /// 429 and 5xx from an upstream); bad input never is.
    pub retryable: bool,
    /// The deployment that answered will keep failing this way (an upstream's 401,
    /// 403 or 404: a bad key or an unknown model): try others, not this one again.
    pub deployment_fault: bool,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
            retryable: false,
            deployment_fault: false,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidRequest, message)
    }

    /// A 400 that names the parameter at fault.
    pub fn invalid_param(param: impl Into<ParamPath>, message: impl Into<String>) -> Self {
        Error::invalid(message).with_param(param)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }

    pub fn model_not_found(model: &str) -> Self {
        Error::new(
            ErrorKind::NotFound,
            format!("The model `{model}` does not exist. GET /v1/models lists the models this server serves."),
        )
        .with_param("model")
        .with_code(Code::ModelNotFound)
    }

    pub fn with_param(mut self, param: impl Into<ParamPath>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: Code) -> Self {
        self.code = Some(code);
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }

    /// Retryable elsewhere, never on the deployment that answered (see `deployment_fault`).
    pub fn deployment_fault(mut self) -> Self {
        self.retryable = true;
        self.deployment_fault = true;
        self
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_model_is_404_with_code() {
        let e = Error::model_not_found("nope");
        assert_eq!(e.status(), 404);
        assert_eq!(e.code, Some(Code::ModelNotFound));
        assert_eq!(e.param.as_deref(), Some("model"));
    }
}
