//! The HTTP layer driven in-process with a scripted backend: wire shapes, errors,
//! auth and limits, independent of any model.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test and example code"
)]

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use parlance_core::ir::{ChatRequest, Delta, FinishReason, StreamEvent, Usage};
use parlance_core::{Backend, Capabilities, Error, ErrorKind, EventStream, ModelInfo, Router};
use parlance_server::{build_router, AppState};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

/// Answers every request with "Hello" per choice, or with a scripted failure.
#[derive(Default)]
struct Scripted {
    mode: &'static str,
    seen: Mutex<Vec<ChatRequest>>,
}

#[async_trait]
impl Backend for Scripted {
    async fn chat(&self, req: ChatRequest) -> Result<EventStream, Error> {
        self.seen.lock().unwrap().push(req.clone());
        if self.mode == "slow_fail" {
            // An upstream that takes its time, then refuses.
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            return Err(Error::invalid_param("messages", "too long upstream")
                .with_code("context_length_exceeded"));
        }
        if self.mode == "busy" {
            return Err(Error::new(ErrorKind::RateLimited, "queue full")
                .with_code("queue_full")
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

fn app_with(
    mode: &'static str,
    keys: &[&str],
    body_limit: Option<usize>,
) -> (axum::Router, Arc<Scripted>) {
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

fn app() -> axum::Router {
    app_with("ok", &[], None).0
}

async fn send(
    app: axum::Router,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

fn post(path: &str, body: Value) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn chat(extra: Value) -> Value {
    let mut b = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

fn assert_openai_error(body: &str, code: Option<&str>) -> Value {
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

#[tokio::test]
async fn non_streaming_has_the_openai_shape() {
    let (status, _, body) = send(app(), post("/v1/chat/completions", chat(json!({"n": 2})))).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "m");
    assert!(v["created"].as_u64().unwrap() > 1_700_000_000);
    assert!(v["system_fingerprint"].is_string());
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    let c = &v["choices"][1];
    assert_eq!(c["index"], 1);
    assert_eq!(c["message"]["role"], "assistant");
    assert_eq!(c["message"]["content"], "Hello");
    assert!(c["message"]["refusal"].is_null() && c["message"].get("refusal").is_some());
    assert!(c["logprobs"].is_null() && c.get("logprobs").is_some());
    assert_eq!(c["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 9);
    assert!(v.get("debug").is_none());
}

#[tokio::test]
async fn streaming_sends_role_deltas_one_finish_usage_then_done() {
    let body = chat(json!({"stream": true, "n": 2, "stream_options": {"include_usage": true}}));
    let (status, headers, text) = send(app(), post("/v1/chat/completions", body)).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["choices"][1]["delta"]["role"], "assistant");
    for i in 0..2 {
        let finishes = chunks
            .iter()
            .flat_map(|c| c["choices"].as_array().unwrap())
            .filter(|ch| ch["index"] == i && !ch["finish_reason"].is_null())
            .count();
        assert_eq!(finishes, 1, "choice {i}");
        let content: String = chunks
            .iter()
            .flat_map(|c| c["choices"].as_array().unwrap())
            .filter(|ch| ch["index"] == i)
            .filter_map(|ch| ch["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, "Hello");
    }
    let last = chunks.last().unwrap();
    assert!(last["choices"].as_array().unwrap().is_empty());
    assert_eq!(last["usage"]["completion_tokens"], 4);
    // Every other chunk carries usage: null, as OpenAI does when usage was asked for.
    assert!(chunks[1].get("usage").unwrap().is_null());
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
}

#[tokio::test]
async fn streaming_without_include_usage_sends_no_usage() {
    let (_, _, text) = send(
        app(),
        post("/v1/chat/completions", chat(json!({"stream": true}))),
    )
    .await;
    assert!(!text.contains("\"usage\""), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"));
}

#[tokio::test]
async fn an_error_mid_stream_becomes_an_error_event_not_done() {
    let (app, _) = app_with("fail_mid", &[], None);
    let (status, _, text) = send(
        app,
        post("/v1/chat/completions", chat(json!({"stream": true}))),
    )
    .await;
    assert_eq!(status, 200);
    let data = sse_data(&text);
    assert!(!data.contains(&"[DONE]".to_string()));
    assert_openai_error(data.last().unwrap(), None);
    assert!(data.last().unwrap().contains("engine exploded"));
}

#[tokio::test]
async fn a_stream_that_ends_without_finish_is_reported() {
    let (app, _) = app_with("no_finish", &[], None);
    let (_, _, text) = send(
        app.clone(),
        post("/v1/chat/completions", chat(json!({"stream": true}))),
    )
    .await;
    assert_openai_error(sse_data(&text).last().unwrap(), None);
    let (status, _, body) = send(app, post("/v1/chat/completions", chat(json!({})))).await;
    assert_eq!(status, 500);
    assert_openai_error(&body, None);
}

#[tokio::test]
async fn unknown_model_is_404_model_not_found() {
    let mut b = chat(json!({}));
    b["model"] = json!("gpt-9");
    let (status, _, body) = send(app(), post("/v1/chat/completions", b)).await;
    assert_eq!(status, 404);
    let v = assert_openai_error(&body, Some("model_not_found"));
    assert_eq!(v["error"]["param"], "model");
}

#[tokio::test]
async fn bad_input_is_400_naming_the_param() {
    for (extra, param) in [
        (json!({"temperature": 3}), "temperature"),
        (json!({"temperature": "warm"}), "temperature"),
        (json!({"top_p": -0.1}), "top_p"),
        (json!({"n": 20}), "n"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
        (json!({"messages": []}), "messages"),
        (
            json!({"messages": [{"role": "user", "content": 12}]}),
            "messages[0].content",
        ),
    ] {
        let (status, _, body) =
            send(app(), post("/v1/chat/completions", chat(extra.clone()))).await;
        assert_eq!(status, 400, "{extra}: {body}");
        let v = assert_openai_error(&body, None);
        assert_eq!(v["error"]["param"], param, "{extra}: {body}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
}

#[tokio::test]
async fn malformed_json_is_400() {
    let req = Request::post("/v1/chat/completions")
        .body(Body::from("{\"model\": "))
        .unwrap();
    let (status, _, body) = send(app(), req).await;
    assert_eq!(status, 400);
    assert_openai_error(&body, Some("invalid_json"));
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let (app, _) = app_with("ok", &[], Some(1024));
    let big = chat(json!({"messages": [{"role": "user", "content": "x".repeat(4096)}]}));
    let (status, _, body) = send(app, post("/v1/chat/completions", big)).await;
    assert_eq!(status, 413, "{body}");
    assert_openai_error(&body, Some("request_too_large"));
}

#[tokio::test]
async fn keys_are_checked_in_every_header_style_and_health_stays_open() {
    let (app, _) = app_with("ok", &["sk-1", "sk-2"], None);
    let with = |h: &str, v: &str| {
        Request::post("/v1/chat/completions")
            .header(h, v)
            .body(Body::from(chat(json!({})).to_string()))
            .unwrap()
    };
    for (h, v) in [
        ("authorization", "Bearer sk-1"),
        ("x-api-key", "sk-2"),
        ("x-goog-api-key", "sk-1"),
    ] {
        let (status, _, body) = send(app.clone(), with(h, v)).await;
        assert_eq!(status, 200, "{h}: {body}");
    }
    let (status, _, body) = send(app.clone(), with("authorization", "Bearer wrong")).await;
    assert_eq!(status, 401);
    assert_openai_error(&body, Some("invalid_api_key"));
    let (status, _, body) = send(app.clone(), post("/v1/chat/completions", chat(json!({})))).await;
    assert_eq!(status, 401);
    assert_openai_error(&body, Some("missing_api_key"));
    let (status, _, _) = send(
        app.clone(),
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, body) = send(app, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn queue_full_is_429_with_retry_after() {
    let (app, _) = app_with("busy", &[], None);
    let (status, headers, body) = send(app, post("/v1/chat/completions", chat(json!({})))).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "1");
    assert_openai_error(&body, Some("queue_full"));
}

#[tokio::test]
async fn models_are_listed_and_fetched_with_metadata() {
    let (status, _, body) = send(
        app(),
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "list");
    let m = &v["data"][0];
    assert_eq!(
        (
            m["id"].as_str(),
            m["object"].as_str(),
            m["owned_by"].as_str()
        ),
        (Some("m"), Some("model"), Some("test"))
    );
    assert_eq!(m["context_length"], 4096);
    assert_eq!(m["capabilities"]["chat"], true);
    let (status, _, body) = send(
        app(),
        Request::get("/v1/models/m").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = send(
        app(),
        Request::get("/v1/models/nope").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert_openai_error(&body, Some("model_not_found"));
}

#[tokio::test]
async fn nextgpt_path_debug_flag_and_string_stream_work() {
    let (app, backend) = app_with("ok", &[], None);
    // NEXTgpt posts with `data=json.dumps(...)`: no content type, `"stream": "True"`.
    let body = chat(json!({"stream": "True"})).to_string();
    let req = Request::post("/api/v1/chat/completions?debug=True")
        .body(Body::from(body))
        .unwrap();
    let (status, _, text) = send(app.clone(), req).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"debug\":{\"prompt\":\"p\"}"), "{text}");
    let req = Request::post("/api/v1/chat/completions?debug=False")
        .body(Body::from(chat(json!({})).to_string()))
        .unwrap();
    let (_, _, text) = send(app, req).await;
    assert!(!text.contains("debug"));
    let seen = backend.seen.lock().unwrap();
    assert!(seen[0].debug && seen[0].stream);
    assert!(!seen[1].debug);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_errors() {
    let (status, _, body) = send(
        app(),
        Request::get("/v1/nothing").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert_openai_error(&body, None);
    let (status, _, body) = send(
        app(),
        Request::get("/v1/chat/completions")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    assert_openai_error(&body, None);
}

#[tokio::test]
async fn gigachat_update_interval_coalesces_text() {
    let body = chat(json!({"stream": true, "update_interval": 30}));
    let (_, _, text) = send(app(), post("/v1/chat/completions", body)).await;
    let contents: Vec<String> = sse_data(&text)
        .iter()
        .filter(|d| d.starts_with('{'))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(contents, vec!["Hello".to_string()]);
}

#[tokio::test]
async fn gigachat_tokens_count() {
    let body =
        json!({"model": "m", "input": ["And the silken, sad, uncertain rustling", "Здравей свят"]});
    let (status, _, text) = send(app(), post("/api/v1/tokens/count", body)).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v,
        json!([
            {"object": "tokens", "tokens": 6, "characters": 39},
            {"object": "tokens", "tokens": 2, "characters": 12},
        ])
    );
    let (status, _, text) = send(
        app(),
        post("/v1/tokens/count", json!({"model": "nope", "input": ["x"]})),
    )
    .await;
    assert_eq!(status, 404);
    assert_openai_error(&text, Some("model_not_found"));
    let (status, _, text) = send(
        app(),
        post("/v1/tokens/count", json!({"model": "m", "input": "x"})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(assert_openai_error(&text, None)["error"]["param"], "input");
}

#[tokio::test]
async fn max_tokens_over_the_models_limit_is_400_naming_the_param() {
    let (status, _, body) = send(
        app(),
        post("/v1/chat/completions", chat(json!({"max_tokens": 1001}))),
    )
    .await;
    assert_eq!(status, 400);
    let v = assert_openai_error(&body, Some("max_tokens_too_large"));
    assert_eq!(v["error"]["param"], "max_tokens");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("1000"),
        "{body}"
    );
    let (status, _, body) = send(
        app(),
        post(
            "/v1/chat/completions",
            chat(json!({"max_completion_tokens": 5000})),
        ),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        assert_openai_error(&body, None)["error"]["param"],
        "max_completion_tokens"
    );
    let (status, _, body) = send(
        app(),
        post("/v1/chat/completions", chat(json!({"max_tokens": 1000}))),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, _, body) = send(
        app(),
        Request::get("/v1/models/m").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["max_output_tokens"],
        1000
    );
}

#[tokio::test]
async fn every_error_status_has_a_json_body() {
    for (uri, status) in [("/v1/models/%ff", 400), ("/v1/models/%ff%fe/x", 400)] {
        let req = Request::get(uri).body(Body::empty()).unwrap();
        let (got, headers, body) = send(app(), req).await;
        assert_eq!(got, status, "{uri}: {body}");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{uri}"
        );
        assert_openai_error(&body, None);
    }
    // Trailing garbage after the JSON object.
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(format!("{} xyz", chat(json!({})))))
        .unwrap();
    let (status, _, body) = send(app(), req).await;
    assert_eq!(status, 400);
    assert_openai_error(&body, Some("invalid_json"));
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let req = Request::get("/v1/models")
        .header("x-request-id", "abc-123")
        .body(Body::empty())
        .unwrap();
    let (_, headers, _) = send(app(), req).await;
    assert_eq!(headers["x-request-id"], "abc-123");
    let (_, headers, _) = send(app(), Request::get("/health").body(Body::empty()).unwrap()).await;
    assert!(headers["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
}

#[tokio::test]
async fn health_names_a_dead_model_with_503() {
    let (app, _) = app_with("dead", &["k"], None);
    let (status, _, body) = send(app, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(status, 503);
    let v = assert_openai_error(&body, Some("model_unavailable"));
    assert_eq!(v["unavailable"], json!(["m"]));
    assert!(
        v["error"]["message"].as_str().unwrap().contains("`m`"),
        "{body}"
    );
}

#[tokio::test]
async fn index_page_is_html_with_the_models() {
    let (status, headers, body) = send(app(), Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(
        body.contains("<code>m</code>") && body.contains(env!("CARGO_PKG_VERSION")),
        "{body}"
    );
    // Behind keys the page is still there, without the model list.
    let (app, _) = app_with("ok", &["k"], None);
    let (status, _, body) = send(app, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(status, 200);
    assert!(!body.contains("<code>m</code>"));
}

#[tokio::test]
async fn slow_backends_get_sse_headers_first_and_errors_as_events() {
    // Fast errors keep their HTTP status...
    let (app_busy, _) = app_with("busy", &[], None);
    let (status, _, _) = send(
        app_busy,
        post("/v1/chat/completions", chat(json!({"stream": true}))),
    )
    .await;
    assert_eq!(status, 429);
    // ...a backend still working after the grace period gets headers (and keep-alives)
    // at once; its error ends the stream as an error event.
    let (app, _) = app_with("slow_fail", &[], None);
    let started = std::time::Instant::now();
    let resp = app
        .oneshot(post("/v1/chat/completions", chat(json!({"stream": true}))))
        .await
        .unwrap();
    assert!(started.elapsed() < std::time::Duration::from_millis(1200));
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let data = sse_data(std::str::from_utf8(&body).unwrap());
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "context_length_exceeded");
}

#[tokio::test]
async fn cors_is_off_unless_configured() {
    let preflight = || {
        Request::options("/v1/chat/completions")
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .body(Body::empty())
            .unwrap()
    };
    let (_, headers, _) = send(app(), preflight()).await;
    assert!(headers.get("access-control-allow-origin").is_none());
    let mut router = Router::new();
    router
        .add(
            ModelInfo {
                id: "m".into(),
                ..ModelInfo::default()
            },
            Arc::new(Scripted::default()),
        )
        .unwrap();
    let mut state = AppState::new(router);
    state.cors_origins = vec!["https://app.example".into()];
    state.api_keys = vec!["k".into()];
    let (status, headers, _) = send(build_router(Arc::new(state)), preflight()).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
}
