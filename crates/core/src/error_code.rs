//! Machine-readable error codes: Parlance's own vocabulary, each defined once, plus the
//! codes upstreams send, passed on as they sent them. A door decides whether and where
//! its wire format carries a code (OpenAI's `error.code`); usage rows record it.

use std::borrow::Cow;
use std::fmt;

macro_rules! codes {
    ($($variant:ident = $name:literal,)*) => {
        /// What went wrong, for programs: `error.code` in OpenAI's shape, `error:{code}`
        /// in usage rows and the request log.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Code {
            $($variant,)*
            /// A code an upstream sent in its error body, as it sent it.
            Upstream(String),
            /// An upstream's HTTP status, when its error body had no code
            /// (`upstream_404`).
            UpstreamStatus(u16),
        }

        impl Code {
            pub fn as_str(&self) -> Cow<'_, str> {
                match self {
                    $(Code::$variant => Cow::Borrowed($name),)*
                    Code::Upstream(c) => Cow::Borrowed(c),
                    Code::UpstreamStatus(s) => Cow::Owned(format!("upstream_{s}")),
                }
            }
        }
    };
}

codes! {
    Conflict = "conflict",
    ConstraintFailed = "constraint_failed",
    ContextLengthExceeded = "context_length_exceeded",
    CsrfFailed = "csrf_failed",
    EmailTaken = "email_taken",
    EngineError = "engine_error",
    ImageFailed = "image_failed",
    InsufficientQuota = "insufficient_quota",
    InvalidAdminKey = "invalid_admin_key",
    InvalidApiKey = "invalid_api_key",
    InvalidCode = "invalid_code",
    InvalidCredentials = "invalid_credentials",
    InvalidImage = "invalid_image",
    InvalidImageUrl = "invalid_image_url",
    InvalidJson = "invalid_json",
    InvalidLink = "invalid_link",
    KeyExpired = "key_expired",
    KeyNotFound = "key_not_found",
    KeyRevoked = "key_revoked",
    MaxTokensTooLarge = "max_tokens_too_large",
    MissingApiKey = "missing_api_key",
    ModelNotAllowed = "model_not_allowed",
    ModelNotFound = "model_not_found",
    ModelUnavailable = "model_unavailable",
    NotAdmin = "not_admin",
    NotFound = "not_found",
    NotPrepaid = "not_prepaid",
    NotSignedIn = "not_signed_in",
    NotTeamAdmin = "not_team_admin",
    PreviousResponseNotFound = "previous_response_not_found",
    QueueFull = "queue_full",
    RateLimitExceeded = "rate_limit_exceeded",
    RequestTooLarge = "request_too_large",
    ResponseNotFound = "response_not_found",
    ServerShutdown = "server_shutdown",
    SignupClosed = "signup_closed",
    TeamNotFound = "team_not_found",
    TooManyAttempts = "too_many_attempts",
    TooManyKeys = "too_many_keys",
    UnknownUrl = "unknown_url",
    Unsupported = "unsupported",
    UpstreamAuthFailed = "upstream_auth_failed",
    UpstreamUnreachable = "upstream_unreachable",
    UserNotFound = "user_not_found",
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_as_their_wire_names() {
        assert_eq!(
            Code::ContextLengthExceeded.to_string(),
            "context_length_exceeded"
        );
        assert_eq!(Code::UpstreamStatus(404).to_string(), "upstream_404");
        assert_eq!(
            Code::Upstream("overloaded".into()).to_string(),
            "overloaded"
        );
        assert_eq!(serde_json::to_value(Code::QueueFull).unwrap(), "queue_full");
    }
}
