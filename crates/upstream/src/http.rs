//! Sending a [`Call`] and turning HTTP failures into clear, classified errors.

use crate::dialect::{AuthStyle, Call, StreamMapper};
use crate::sse::SseDecoder;
use crate::Provider;
use futures::StreamExt;
use parlance_core::Code;
use parlance_core::{Error, ErrorKind, EventStream};
use reqwest::StatusCode;
use serde_json::Value;

/// Error bodies are read up to this size; the rest is not worth holding.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Work on this many bytes or more (base64 of an image, a body holding images) runs on
/// the blocking pool: tens of milliseconds of CPU would stall every task sharing the
/// worker thread. Less runs in place, where a thread hop would cost more than the work.
pub(crate) const LARGE: usize = 1 << 20;

/// Runs `work` (on about `bytes` of data) on the blocking pool when it is large.
pub(crate) async fn cpu<T: Send + 'static>(
    bytes: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    if bytes < LARGE {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::internal(format!("a blocking task failed: {e}")))
}

/// A call's body as sent (Bytes: a retry after a 401 resends it without copying).
pub(crate) fn encode(call: &Call) -> Result<bytes::Bytes, Error> {
    serde_json::to_vec(&call.body)
        .map(bytes::Bytes::from)
        .map_err(|e| Error::internal(e.to_string()))
}

/// A provider's endpoint URLs, parsed once: parsing one on every request cost ~2% of a
/// gateway request's CPU. Endpoints are few (one per model and method), so the cache
/// is small; it starts over if a provider's URLs ever vary without bound.
#[derive(Default)]
pub(crate) struct UrlCache(std::sync::Mutex<std::collections::HashMap<String, reqwest::Url>>);

const URL_CACHE_MAX: usize = 256;

impl UrlCache {
    fn parsed(&self, provider: &str, url: &str) -> Result<reqwest::Url, Error> {
        if let Some(u) = self.0.lock().ok().and_then(|m| m.get(url).cloned()) {
            return Ok(u);
        }
        let u = reqwest::Url::parse(url).map_err(|e| {
            Error::new(
                ErrorKind::Upstream,
                format!("upstream `{provider}` has an unusable URL `{url}`: {e}"),
            )
        })?;
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= URL_CACHE_MAX {
                m.clear();
            }
            m.insert(url.to_string(), u.clone());
        }
        Ok(u)
    }
}

pub(crate) async fn send(p: &Provider, call: &Call) -> Result<reqwest::Response, Error> {
    send_encoded(p, call, encode(call)?).await
}

/// Sends `call` with its body already encoded (see [`encode`]).
pub(crate) async fn send_encoded(
    p: &Provider,
    call: &Call,
    body: bytes::Bytes,
) -> Result<reqwest::Response, Error> {
    let url = p.urls.parsed(&p.cfg.name, &call.url)?;
    authorized(p, call.auth, || {
        let mut rb = p
            .client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        for (k, v) in &call.extra_headers {
            rb = rb.header(*k, v);
        }
        rb
    })
    .await
}

/// A multipart POST with the provider's Bearer credential (GigaChat's file upload);
/// `form` is called again for the retry after a 401.
pub(crate) async fn send_multipart(
    p: &Provider,
    url: &str,
    form: impl Fn() -> reqwest::multipart::Form,
) -> Result<reqwest::Response, Error> {
    authorized(p, AuthStyle::Bearer, || {
        p.client.post(url).multipart(form())
    })
    .await
}

/// Sends what `build` makes with the credential presented as `auth`; an access token
/// can expire between our refresh check and the upstream's, so a 401 retries once.
async fn authorized(
    p: &Provider,
    auth: AuthStyle,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, Error> {
    let mut rejected: Option<String> = None;
    loop {
        let mut rb = build();
        let key = p.credential(rejected.as_deref()).await?;
        if let Some(key) = &key {
            rb = match auth {
                AuthStyle::Bearer => rb.bearer_auth(key),
                AuthStyle::XApiKey => rb.header("x-api-key", key),
                AuthStyle::GoogApiKey => rb.header("x-goog-api-key", key),
            };
        }
        let resp = rb.send().await.map_err(|e| transport_error(p, &e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == StatusCode::UNAUTHORIZED && p.token.is_some() && rejected.is_none() {
            rejected = Some(key.unwrap_or_default());
            continue;
        }
        return Err(status_error(p, resp).await);
    }
}

pub(crate) async fn read_body(
    p: &Provider,
    resp: reqwest::Response,
) -> Result<bytes::Bytes, Error> {
    resp.bytes().await.map_err(|e| transport_error(p, &e))
}

fn transport_error(p: &Provider, e: &reqwest::Error) -> Error {
    let name = &p.cfg.name;
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    };
    metrics::counter!("parlance_upstream_errors_total", "provider" => name.clone(), "kind" => kind)
        .increment(1);
    let mut detail = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        detail = format!("{detail}: {s}");
        src = s.source();
    }
    if e.is_timeout() {
        Error::new(
            ErrorKind::Timeout,
            format!("upstream `{name}` timed out: {detail}"),
        )
        .retryable()
    } else if e.is_connect() {
        Error::new(
            ErrorKind::Upstream,
            format!("cannot connect to upstream `{name}`: {detail}"),
        )
        .with_code(Code::UpstreamUnreachable)
        .retryable()
    } else {
        Error::new(
            ErrorKind::Upstream,
            format!("upstream `{name}` connection failed: {detail}"),
        )
        .retryable()
    }
}

/// The upstream's own `code` and `param`, when it speaks OpenAI's error format.
fn error_code_param(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return (None, None);
    };
    let get = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
    (get("/error/code"), get("/error/param"))
}

/// The message inside an error body in any provider's shape, else the raw text.
fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let candidates = [
            v.pointer("/error/message"),
            v.pointer("/message"),
            v.pointer("/error").filter(|e| e.is_string()),
            v.pointer("/detail"),
        ];
        for c in candidates.into_iter().flatten() {
            match c {
                Value::String(s) if !s.is_empty() => return s.clone(),
                Value::Null => {}
                other if !other.is_object() => return other.to_string(),
                _ => {}
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".to_string()
    } else {
        text.chars().take(500).collect()
    }
}

async fn status_error(p: &Provider, resp: reqwest::Response) -> Error {
    let status = resp.status();
    metrics::counter!(
        "parlance_upstream_errors_total",
        "provider" => p.cfg.name.clone(),
        "kind" => format!("http_{}", status.as_u16())
    )
    .increment(1);
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ERROR_BODY {
            break;
        }
    }
    let msg = format!(
        "upstream `{}` answered HTTP {}: {}",
        p.cfg.name,
        status.as_u16(),
        error_message(&body)
    );
    let code = status.as_u16();
    let err = match code {
        // The caller's request was bad: say so as a 400 with the upstream's words.
        400 | 409 | 413 | 422 => Error::new(ErrorKind::InvalidRequest, msg),
        429 => {
            let e = Error::new(ErrorKind::RateLimited, msg).retryable();
            match retry_after {
                Some(s) => e.with_retry_after(s),
                None => e,
            }
        }
        408 => Error::new(ErrorKind::Timeout, msg).retryable(),
        // Our key or model name is wrong: not the caller's fault, another deployment may work.
        401 | 403 | 404 => Error::new(ErrorKind::Upstream, msg).deployment_fault(),
        _ if status.is_server_error() => Error::new(ErrorKind::Upstream, msg).retryable(),
        _ => Error::new(ErrorKind::Upstream, msg),
    };
    let (upstream_code, param) = error_code_param(&body);
    let err = match param {
        Some(p) if err.kind == ErrorKind::InvalidRequest => err.with_param(p),
        _ => err,
    };
    err.with_code(upstream_code.map_or(Code::UpstreamStatus(code), Code::Upstream))
}

/// Says which upstream a mapping error (malformed answer, error event) came from.
pub(crate) fn from_upstream(name: &str, mut e: Error) -> Error {
    e.message = format!("upstream `{name}`: {}", e.message);
    e
}

/// The SSE body as IR events, via the dialect's mapper; a cut-off or malformed stream
/// ends with an error item.
pub(crate) fn event_stream(
    p: &Provider,
    resp: reqwest::Response,
    mut mapper: Box<dyn StreamMapper>,
) -> EventStream {
    let name = p.cfg.name.clone();
    let mut body = resp.bytes_stream();
    Box::pin(async_stream::stream! {
        let mut decoder = SseDecoder::new();
        let mut out = Vec::new();
        let mut ended = false;
        'read: while !ended {
            let events = match body.next().await {
                Some(Ok(chunk)) => decoder.push(&chunk),
                Some(Err(e)) => {
                    yield Err(Error::new(
                        ErrorKind::Upstream,
                        format!("upstream `{name}` broke off its stream: {e}"),
                    ).retryable());
                    return;
                }
                None => {
                    let tail: Vec<_> = decoder.finish().into_iter().collect();
                    ended = true;
                    tail
                }
            };
            for ev in events {
                match mapper.on_event(ev, &mut out) {
                    Ok(done) => {
                        for e in out.drain(..) {
                            yield Ok(e);
                        }
                        if done {
                            break 'read;
                        }
                    }
                    Err(e) => {
                        yield Err(from_upstream(&name, e));
                        return;
                    }
                }
            }
        }
        match mapper.finish(&mut out) {
            Ok(()) => {
                for e in out.drain(..) {
                    yield Ok(e);
                }
            }
            Err(e) => yield Err(from_upstream(&name, e).retryable()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_are_parsed_once_and_the_cache_stays_bounded() {
        let cache = UrlCache::default();
        let u = cache
            .parsed("p", "http://127.0.0.1:9/v1/chat/completions")
            .unwrap();
        assert_eq!(u.path(), "/v1/chat/completions");
        assert_eq!(cache.0.lock().unwrap().len(), 1);
        cache
            .parsed("p", "http://127.0.0.1:9/v1/chat/completions")
            .unwrap();
        assert_eq!(cache.0.lock().unwrap().len(), 1);
        for i in 0..URL_CACHE_MAX + 10 {
            cache.parsed("p", &format!("http://h/{i}")).unwrap();
        }
        assert!(cache.0.lock().unwrap().len() <= URL_CACHE_MAX);
        let e = cache.parsed("p", "not a url").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Upstream);
        assert!(e.message.contains("upstream `p`"), "{e}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn large_work_leaves_the_worker_thread_and_small_work_stays() {
        let here = std::thread::current().id();
        let small = cpu(LARGE - 1, || std::thread::current().id())
            .await
            .unwrap();
        let large = cpu(LARGE, || std::thread::current().id()).await.unwrap();
        assert_eq!(small, here);
        assert_ne!(large, here);
    }
}
