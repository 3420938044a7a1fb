//! The HTTP layer driven in-process with a scripted backend: model listings, pages,
//! health, CORS, request ids and the NEXTgpt and GigaChat variants.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test and example code"
)]

mod common;

use common::*;

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
