//! Refusals made before or around a door's handler (a missing key, an unknown path or
//! method, an extractor's rejection, a panic) answer in that door's own error shape,
//! known from where its routes are mounted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test and example code"
)]

mod common;
use common::*;

fn keyed() -> parlance_server::App {
    app_with("ok", &["sk-good"], None).0
}

fn anthropic_error(body: &str, kind: &str) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert_eq!(v["type"], "error", "{body}");
    assert_eq!(v["error"]["type"], kind, "{body}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

fn gemini_error(body: &str, code: u16, status: &str) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert_eq!(v["error"]["code"], code, "{body}");
    assert_eq!(v["error"]["status"], status, "{body}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

fn ollama_error(body: &str) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn a_missing_key_is_refused_in_each_doors_shape() {
    let msg =
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    for path in [
        "/v1/messages",
        "/api/v1/messages",
        "/v1/messages/count_tokens",
    ] {
        let (status, _, body) = send(keyed(), post(path, msg.clone())).await;
        assert_eq!(status, 401, "{path}");
        anthropic_error(&body, "authentication_error");
    }
    let gen = json!({"contents": [{"parts": [{"text": "hi"}]}]});
    for path in [
        "/v1beta/models/m:generateContent",
        "/v1/models/m:generateContent",
    ] {
        let (status, _, body) = send(keyed(), post(path, gen.clone())).await;
        assert_eq!(status, 401, "{path}");
        gemini_error(&body, 401, "UNAUTHENTICATED");
    }
    let (status, _, body) = send(keyed(), get("/v1beta/models")).await;
    assert_eq!(status, 401);
    gemini_error(&body, 401, "UNAUTHENTICATED");
    let (status, _, body) = send(keyed(), get("/api/tags")).await;
    assert_eq!(status, 401);
    ollama_error(&body);
    // The same path, another method, another door: GET is OpenAI's model object.
    let (status, _, body) = send(keyed(), get("/v1/models/m")).await;
    assert_eq!(status, 401);
    assert_openai_error(&body, Some("missing_api_key"));
    // With the key, each answers.
    let req = Request::get("/api/tags")
        .header("authorization", "Bearer sk-good")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = send(keyed(), req).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused_in_the_shape_of_where_they_point() {
    let (status, _, body) = send(app(), get("/v1beta/nothing")).await;
    assert_eq!(status, 404);
    gemini_error(&body, 404, "NOT_FOUND");
    let (status, _, body) = send(app(), get("/api/nothing")).await;
    assert_eq!(status, 404);
    ollama_error(&body);
    let (status, _, body) = send(app(), get("/v1/messages/batches")).await;
    assert_eq!(status, 404);
    anthropic_error(&body, "not_found_error");
    for path in [
        "/api/v1/nothing",
        "/api/v2/nothing",
        "/nothing",
        "/v1/nothing",
    ] {
        let (status, _, body) = send(app(), get(path)).await;
        assert_eq!(status, 404, "{path}");
        assert_openai_error(&body, Some("unknown_url"));
    }
    let (status, _, body) = send(app(), get("/v1/messages")).await;
    assert_eq!(status, 405);
    anthropic_error(&body, "invalid_request_error");
    let (status, _, body) = send(app(), get("/api/chat")).await;
    assert_eq!(status, 405);
    ollama_error(&body);
    let (status, _, body) = send(app(), get("/v1/embeddings")).await;
    assert_eq!(status, 405);
    assert_openai_error(&body, None);
}

#[tokio::test]
async fn an_extractors_rejection_is_in_the_doors_shape() {
    // Not UTF-8 in the path: axum's `Path` refuses before Gemini's handler runs.
    let req = post("/v1beta/models/%ff%fe:generateContent", json!({}));
    let (status, _, body) = send(app(), req).await;
    assert_eq!(status, 400, "{body}");
    gemini_error(&body, 400, "INVALID_ARGUMENT");
}

#[tokio::test]
async fn a_panic_in_a_doors_handler_is_a_500_in_that_doors_shape() {
    let msg =
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let (app, _) = app_with("panic", &[], None);
    let (status, _, body) = send(app, post("/v1/messages", msg)).await;
    assert_eq!(status, 500);
    anthropic_error(&body, "api_error");
    let (app, _) = app_with("panic", &[], None);
    let gen = json!({"contents": [{"parts": [{"text": "hi"}]}]});
    let (status, _, body) = send(app, post("/v1beta/models/m:generateContent", gen)).await;
    assert_eq!(status, 500);
    gemini_error(&body, 500, "INTERNAL");
    let (app, _) = app_with("panic", &[], None);
    let (status, _, body) = send(app, post("/v1/chat/completions", chat(json!({})))).await;
    assert_eq!(status, 500);
    assert_openai_error(&body, None);
}
