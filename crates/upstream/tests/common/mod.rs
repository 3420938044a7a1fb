//! A scripted mock upstream on a loopback port: it records each request and answers
//! with the next scripted reply: JSON, an SSE body cut into small chunks, a hang, or a
//! connection reset in the middle of a stream.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test and example code"
)]
#![allow(dead_code)]

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use parlance_core::collect::{collect, Completion};
use parlance_core::ir::{ChatRequest, ContentPart, ImageSource, Message, Role, ToolCall, ToolDef};
use parlance_core::{Backend, Error};
use parlance_upstream::{Provider, ProviderConfig, ProviderKind, Timeouts, UpstreamModel};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone)]
pub(crate) enum Reply {
    Json(u16, Value),
    /// Status, headers, raw body.
    Raw(u16, Vec<(&'static str, String)>, String),
    /// An SSE body sent in chunks of this many bytes, a millisecond apart.
    Sse(String, usize),
    /// Headers sent, then nothing, forever.
    Hang,
    /// This much of an SSE body, then the connection is cut.
    ResetAfter(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: String,
}

#[derive(Clone, Default)]
pub(crate) struct Mock {
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    replies: Arc<Mutex<VecDeque<Reply>>>,
    /// Used when the script is empty.
    fallback: Arc<Mutex<Option<Reply>>>,
    /// Streams whose body the client dropped before it ended.
    pub cancelled: Arc<AtomicUsize>,
    pub url: String,
}

impl Mock {
    pub(crate) async fn start() -> Mock {
        let mut mock = Mock::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        mock.url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(mock.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        mock
    }

    pub(crate) fn push(&self, r: Reply) -> &Self {
        self.replies.lock().unwrap().push_back(r);
        self
    }

    pub(crate) fn always(&self, r: Reply) {
        *self.fallback.lock().unwrap() = Some(r);
    }

    pub(crate) fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub(crate) fn last(&self) -> Recorded {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no request")
    }
}

/// Sets a flag if dropped before the stream ended: the client went away.
struct DropWatch(Arc<AtomicUsize>, bool);
impl Drop for DropWatch {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn handle(State(m): State<Mock>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let raw = String::from_utf8_lossy(&body).into_owned();
    m.requests.lock().unwrap().push(Recorded {
        path: uri.to_string(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw,
    });
    let reply = m.replies.lock().unwrap().pop_front();
    let reply = reply.or_else(|| m.fallback.lock().unwrap().clone());
    match reply.expect("mock upstream: no reply scripted") {
        Reply::Json(status, v) => {
            (StatusCode::from_u16(status).unwrap(), axum::Json(v)).into_response()
        }
        Reply::Raw(status, hs, text) => {
            let mut r = Response::builder().status(status);
            for (k, v) in hs {
                r = r.header(k, v);
            }
            r.body(Body::from(text)).unwrap()
        }
        Reply::Sse(text, chunk) => {
            let cancelled = Arc::clone(&m.cancelled);
            let s = async_stream::stream! {
                let mut watch = DropWatch(cancelled, false);
                for piece in text.as_bytes().chunks(chunk.max(1)) {
                    yield Ok::<_, std::io::Error>(Bytes::copy_from_slice(piece));
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                watch.1 = true;
            };
            sse_response(Body::from_stream(s))
        }
        Reply::Hang => {
            let cancelled = Arc::clone(&m.cancelled);
            let s = async_stream::stream! {
                let _watch = DropWatch(cancelled, false);
                yield Ok::<_, std::io::Error>(Bytes::from_static(b": waiting\n\n"));
                futures::future::pending::<()>().await;
            };
            sse_response(Body::from_stream(s))
        }
        Reply::ResetAfter(text) => {
            let s = async_stream::stream! {
                yield Ok::<_, std::io::Error>(Bytes::from(text));
                tokio::time::sleep(Duration::from_millis(20)).await;
                yield Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut"));
            };
            sse_response(Body::from_stream(s))
        }
    }
}

fn sse_response(body: Body) -> Response {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

pub(crate) fn provider(kind: ProviderKind, base_url: &str) -> Arc<Provider> {
    provider_with(kind, base_url, Timeouts::default(), None)
}

pub(crate) fn provider_with(
    kind: ProviderKind,
    base_url: &str,
    timeouts: Timeouts,
    gigachat: Option<parlance_upstream::GigaChatAuth>,
) -> Arc<Provider> {
    Provider::new(ProviderConfig {
        name: "mock".into(),
        kind,
        base_url: base_url.into(),
        api_key: Some("sk-upstream".into()),
        headers: vec![("x-extra".into(), "1".into())],
        timeouts,
        gigachat,
        ca_cert: None,
        max_completion_tokens: false,
        forward_unknown_fields: true,
        images: None,
    })
    .unwrap()
}

pub(crate) fn model(p: &Arc<Provider>, name: &str) -> Arc<dyn Backend> {
    Arc::new(UpstreamModel::new(Arc::clone(p), name))
}

pub(crate) fn ask(text: &str, stream: bool) -> ChatRequest {
    ChatRequest {
        model: "public-name".into(),
        messages: vec![Message::text(Role::User, text)],
        n: 1,
        stream,
        parallel_tool_calls: true,
        ..Default::default()
    }
}

pub(crate) async fn run(b: &Arc<dyn Backend>, req: ChatRequest) -> Result<Completion, Error> {
    let n = req.n;
    let events = b.chat(req).await?;
    collect(events, n).await
}

/// An SSE body from `data:` payloads (and optional event names).
pub(crate) fn sse(events: &[(Option<&str>, Value)]) -> String {
    let mut out = String::new();
    for (name, data) in events {
        if let Some(n) = name {
            out.push_str(&format!("event: {n}\n"));
        }
        out.push_str(&format!("data: {data}\n\n"));
    }
    out
}

pub(crate) fn weather_tool() -> ToolDef {
    ToolDef {
        name: "get_weather".into(),
        description: Some("Weather for a city".into()),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        strict: false,
    }
}

/// A conversation with a system prompt, an image, a tool call and its result.
pub(crate) fn tool_history() -> Vec<Message> {
    let mut user = Message::text(Role::User, "What is the weather here?");
    user.content.push(ContentPart::Image(ImageSource::Base64 {
        media_type: "image/png".into(),
        data: "iVBORw0KGgo=".into(),
    }));
    let mut call = Message::text(Role::Assistant, "");
    call.tool_calls.push(ToolCall {
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: r#"{"city":"Sofia"}"#.into(),
    });
    let mut result = Message::text(Role::Tool, r#"{"temp_c":21}"#);
    result.tool_call_id = Some("call_1".into());
    vec![Message::text(Role::System, "Be brief."), user, call, result]
}
