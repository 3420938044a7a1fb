//! API-key check. Accepts the header each SDK family sends: OpenAI's
//! `Authorization: Bearer`, Anthropic's `x-api-key`, Google's `x-goog-api-key`.

use crate::AppState;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::response::Response;
use parlance_core::{Code, Error, ErrorKind};
use parlance_tenancy::keys::{same, KeyRecord};
use parlance_tenancy::KeyRefused;
use std::sync::Arc;

pub(crate) fn presented_key(headers: &HeaderMap) -> Option<&str> {
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

/// Who is calling, as the handlers see it (a request extension).
#[derive(Clone)]
pub enum Principal {
    /// The server needs no key.
    Open,
    /// One of the static keys (`--api-key`, config): no limits.
    Static,
    /// A stored key, with its limits.
    Key(Arc<KeyRecord>),
}

impl Principal {
    pub fn key(&self) -> Option<&KeyRecord> {
        match self {
            Principal::Key(k) => Some(k),
            _ => None,
        }
    }
}

fn unauthorized(message: &str, code: Code) -> Error {
    Error::new(ErrorKind::Authentication, message).with_code(code)
}

/// Who presents this key; the refusal when it is missing or wrong.
pub(crate) async fn resolve(state: &AppState, presented: Option<&str>) -> Result<Principal, Error> {
    let Some(k) = presented else {
        return if state.is_open() {
            Ok(Principal::Open)
        } else {
            Err(unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' (or x-api-key / x-goog-api-key).",
                Code::MissingApiKey,
            ))
        };
    };
    if state.api_keys.iter().any(|valid| same(valid, k)) {
        return Ok(Principal::Static);
    }
    if let Some(t) = &state.tenancy {
        match t.authenticate(k).await {
            Ok(Some(record)) => return Ok(Principal::Key(Arc::new(record))),
            Ok(None) => {}
            Err(KeyRefused::Revoked) => {
                return Err(unauthorized(
                    "This API key has been revoked.",
                    Code::KeyRevoked,
                ))
            }
            Err(KeyRefused::Expired) => {
                return Err(unauthorized("This API key has expired.", Code::KeyExpired))
            }
            Err(KeyRefused::Unknown) => {
                return Err(unauthorized(
                    "Incorrect API key provided.",
                    Code::InvalidApiKey,
                ))
            }
        }
    }
    if state.is_open() {
        // An open server takes whatever placeholder key an SDK insists on sending.
        return Ok(Principal::Open);
    }
    Err(unauthorized(
        "Incorrect API key provided.",
        Code::InvalidApiKey,
    ))
}

/// The key `req` presents, for [`resolve`]. Owned: the request (its body) is not
/// `Sync`, so no borrow of it may cross the lookup's await.
pub(crate) fn presented(req: &Request) -> Option<String> {
    // Google's SDKs may send the key as `?key=` instead of a header.
    presented_key(req.headers())
        .or_else(|| {
            req.uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("key=")))
        })
        .map(str::to_string)
}

/// A refusal sent before the request's body was read: it says the connection ends, or
/// a keep-alive client sends its next request on a connection the server is about to
/// drop.
pub(crate) fn unread_body(mut resp: Response, headers: &HeaderMap) -> Response {
    if has_body(headers) {
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    resp
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(axum::http::header::TRANSFER_ENCODING)
        || headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}
