//! The HTTP layer driven in-process with a scripted backend: wire shapes, errors,
//! auth and limits, independent of any model.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test and example code"
)]

mod common;

use common::*;

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
