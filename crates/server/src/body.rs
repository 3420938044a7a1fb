//! Reads a request body under a size limit and parses it as JSON, turning every
//! failure into a 4xx that names the offending parameter.

use axum::body::Body;
use parlance_core::Code;
use parlance_core::{Error, ErrorKind, ParamPath, Step};
use serde::de::DeserializeOwned;

pub(crate) async fn read_limited(body: Body, limit: usize) -> Result<axum::body::Bytes, Error> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // http-body's LengthLimitError is the only error that mentions the limit.
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.to_string().contains("length limit"))
            || e.to_string().contains("length limit");
        if too_large {
            Error::new(
                ErrorKind::PayloadTooLarge,
                format!("The request body is larger than this server's limit of {limit} bytes."),
            )
            .with_code(Code::RequestTooLarge)
        } else {
            Error::invalid(format!("could not read the request body: {e}"))
        }
    })
}

/// A request body read under `limit` and parsed as JSON (see `parse_json_off_thread`).
pub(crate) async fn read_json<T: DeserializeOwned + Send + 'static>(
    body: Body,
    limit: usize,
) -> Result<T, Error> {
    parse_json_off_thread(read_limited(body, limit).await?).await
}

/// Large bodies are parsed on the blocking pool: tens of MB of JSON take long enough
/// to stall every other request on an async worker.
pub(crate) async fn parse_json_off_thread<T: DeserializeOwned + Send + 'static>(
    bytes: axum::body::Bytes,
) -> Result<T, Error> {
    if bytes.len() < parlance_core::blocking::LARGE {
        return parse_json(&bytes);
    }
    parlance_core::blocking::run(bytes.len(), move || parse_json(&bytes)).await?
}

pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(
            Error::invalid("The request body is empty; expected a JSON object.")
                .with_code(Code::InvalidJson),
        );
    }
    // Valid bodies, the common case, are read without tracking the path (a few % of a
    // gateway request's CPU); a failure is read again with it, to name the parameter.
    // Text checked as UTF-8 once is read without a check per string.
    if let Ok(text) = std::str::from_utf8(bytes) {
        let mut fast = serde_json::Deserializer::from_str(text);
        if let Ok(value) = T::deserialize(&mut fast) {
            if fast.end().is_ok() {
                return Ok(value);
            }
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = ParamPath::from_steps(steps_of(e.path()));
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return Error::invalid(format!(
                "We could not parse the JSON body of your request: {inner}"
            ))
            .with_code(Code::InvalidJson);
        }
        let detail = friendly(&inner.to_string());
        if let Some(field) = missing_field(&detail) {
            let param = path.join(&[Step::Field(field.to_string())]);
            let message = format!("Missing required parameter: '{param}'.");
            return Error::invalid_param(param, message);
        }
        if path.steps().is_empty() {
            Error::invalid(format!("Invalid request body: {detail}"))
        } else {
            let message = format!("Invalid value for '{path}': {detail}");
            Error::invalid_param(path, message)
        }
    })?;
    // serde stops after the first value; anything but whitespace after it is not JSON.
    de.end().map_err(|e| {
        Error::invalid(format!(
            "We could not parse the JSON body of your request: {e} (unexpected data after the JSON object)"
        ))
        .with_code(Code::InvalidJson)
    })?;
    Ok(value)
}

/// serde's path to the value it refused, as parameter steps.
fn steps_of(path: &serde_path_to_error::Path) -> Vec<Step> {
    use serde_path_to_error::Segment;
    path.iter()
        .map(|s| match s {
            Segment::Seq { index } => Step::Index(*index),
            Segment::Map { key } | Segment::Enum { variant: key } => Step::Field(key.clone()),
            Segment::Unknown => Step::Field("?".to_string()),
        })
        .collect()
}

fn missing_field(detail: &str) -> Option<&str> {
    detail
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
}

/// serde's messages for untagged enums name Rust types; say what the API accepts.
fn friendly(detail: &str) -> String {
    let replacements = [
        ("untagged enum MessageContent", "expected a string or an array of content parts"),
        ("untagged enum StopSequences", "expected a string or an array of strings"),
        ("untagged enum ToolChoice", "expected \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":...}}"),
    ];
    for (needle, text) in replacements {
        if detail.contains(needle) {
            return text.to_string();
        }
    }
    let detail = detail.split(" at line ").next().unwrap_or(detail);
    // "expected struct ChatMessage" names a Rust type; callers sent JSON.
    match detail.find("expected struct ") {
        Some(at) => format!("{}expected a JSON object", &detail[..at]),
        None => detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parlance_protocol::openai::ChatCompletionRequest;

    fn err(body: &str) -> Error {
        parse_json::<ChatCompletionRequest>(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn wrong_type_names_the_param() {
        let e = err(r#"{"model":"m","messages":[],"temperature":"hot"}"#);
        assert_eq!(e.param.as_deref(), Some("temperature"));
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn nested_path_is_kept() {
        let e = err(r#"{"model":"m","messages":[{"role":"user","content":5}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        assert!(e.message.contains("string or an array"), "{}", e.message);
    }

    #[test]
    fn missing_model_is_named() {
        let e = err(r#"{"messages":[]}"#);
        assert_eq!(e.param.as_deref(), Some("model"));
    }

    #[test]
    fn malformed_json_is_invalid_json() {
        let e = err(r#"{"model": "#);
        assert_eq!(e.code, Some(Code::InvalidJson));
        assert_eq!(err("").code, Some(Code::InvalidJson));
    }

    #[test]
    fn rust_type_names_do_not_leak() {
        let e = err(r#"{"model":"m","messages":[],"response_format":"json"}"#);
        assert!(
            e.message.ends_with("expected a JSON object"),
            "{}",
            e.message
        );
        assert!(!err("[1]").message.contains("struct"));
    }

    #[test]
    fn trailing_garbage_is_invalid_json() {
        let e = err(r#"{"model":"m","messages":[]} xyz"#);
        assert_eq!(e.code, Some(Code::InvalidJson));
        assert_eq!(e.status(), 400);
        let e = err(r#"{"model":"m","messages":[]}{}"#);
        assert_eq!(e.code, Some(Code::InvalidJson));
        // Trailing whitespace is fine.
        assert!(
            parse_json::<ChatCompletionRequest>(b"{\"model\":\"m\",\"messages\":[]} \n").is_ok()
        );
    }

    #[test]
    fn negative_max_tokens_is_named() {
        let e = err(r#"{"model":"m","messages":[],"max_tokens":-1}"#);
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
    }
}
