//! The scripted backend and request helpers the in-process HTTP tests share.
#![allow(
    dead_code,
    unused_imports,
    reason = "each test file uses some of the helpers"
)]

pub(crate) use async_trait::async_trait;
pub(crate) use axum::body::Body;
pub(crate) use axum::http::{Request, StatusCode};
pub(crate) use http_body_util::BodyExt;
pub(crate) use parlance_core::ir::{ChatRequest, Delta, FinishReason, StreamEvent, Usage};
pub(crate) use parlance_core::{
    Backend, Capabilities, Code, Error, ErrorKind, EventStream, ModelInfo, Router,
};
pub(crate) use parlance_server::{build_router, AppState};
pub(crate) use serde_json::{json, Value};
pub(crate) use std::sync::{Arc, Mutex};
pub(crate) use tower::ServiceExt;

/// Answers every request with "Hello" per choice, or with a scripted failure.
#[derive(Default)]
pub(crate) struct Scripted {
    pub mode: &'static str,
    pub seen: Mutex<Vec<ChatRequest>>,
}

#[async_trait]
impl Backend for Scripted {
    async fn chat(&self, req: ChatRequest) -> Result<EventStream, Error> {
        self.seen.lock().unwrap().push(req.clone());
        if self.mode == "slow_fail" {
            // An upstream that takes its time, then refuses.
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            return Err(Error::invalid_param("messages", "too long upstream")
                .with_code(Code::ContextLengthExceeded));
        }
        if self.mode == "panic" {
            panic!("a scripted bug in the backend");
        }
        if self.mode == "busy" {
            return Err(Error::new(ErrorKind::RateLimited, "queue full")
                .with_code(Code::QueueFull)
                .with_retry_after(1));
        }
        let mut events = Vec::new();
        for i in 0..req.n {
            events.push(Ok(StreamEvent::Delta {
                index: i,
                delta: Delta::text("Hel"),
            }));
            if self.mode == "fail_mid" {
                events.push(Err(Error::internal("engine exploded")));
                return Ok(Box::pin(futures::stream::iter(events)));
            }
            events.push(Ok(StreamEvent::Delta {
                index: i,
                delta: Delta::text("lo"),
            }));
            if self.mode != "no_finish" {
                events.push(Ok(StreamEvent::Finish {
                    index: i,
                    reason: FinishReason::Stop,
                    stop_sequence: None,
                }));
            }
        }
        events.push(Ok(StreamEvent::Usage(Usage {
            prompt_tokens: 5,
            completion_tokens: 2 * req.n,
            ..Usage::default()
        })));
        if req.debug {
            events.push(Ok(StreamEvent::Debug(json!({"prompt": "p"}))));
        }
        Ok(Box::pin(futures::stream::iter(events)))
    }

    fn health(&self) -> Result<(), String> {
        if self.mode == "dead" {
            Err("its engine thread has stopped".into())
        } else {
            Ok(())
        }
    }

    async fn count_tokens(&self, texts: &[String]) -> Result<Vec<u32>, Error> {
        Ok(texts
            .iter()
            .map(|t| t.split_whitespace().count() as u32)
            .collect())
    }
}

pub(crate) fn app_with(
    mode: &'static str,
    keys: &[&str],
    body_limit: Option<usize>,
) -> (parlance_server::App, Arc<Scripted>) {
    let backend = Arc::new(Scripted {
        mode,
        ..Scripted::default()
    });
    let mut router = Router::new();
    let info = ModelInfo {
        id: "m".into(),
        owned_by: "test".into(),
        created: 1,
        kind: "chat".into(),
        context_length: 4096,
        max_output_tokens: Some(1000),
        price: None,
        dimensions: None,
        matryoshka: false,
        capabilities: Capabilities {
            chat: true,
            ..Capabilities::default()
        },
        file_metadata: None,
    };
    router.add(info, backend.clone()).unwrap();
    let mut state = AppState::new(router);
    state.api_keys = keys.iter().map(|k| k.to_string()).collect();
    if let Some(limit) = body_limit {
        state.body_limit = limit;
    }
    (build_router(Arc::new(state)), backend)
}

pub(crate) fn app() -> parlance_server::App {
    app_with("ok", &[], None).0
}

pub(crate) async fn send(
    app: parlance_server::App,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

pub(crate) fn post(path: &str, body: Value) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

pub(crate) fn chat(extra: Value) -> Value {
    let mut b = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

pub(crate) fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

pub(crate) fn assert_openai_error(body: &str, code: Option<&str>) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    let e = &v["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{body}"
    );
    if let Some(code) = code {
        assert_eq!(e["code"], code, "{body}");
    }
    v
}
