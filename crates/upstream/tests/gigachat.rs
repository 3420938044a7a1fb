//! GigaChat's OAuth access tokens against loopback mocks of its API and token endpoint:
//! fetched, cached, refreshed before expiry and on 401 (once for many), and its
//! `functions` wire form.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test and example code"
)]

mod common;

use common::*;
use parlance_core::ir::FinishReason;
use parlance_upstream::{GigaChatAuth, ProviderKind, Timeouts};
use serde_json::json;

/// A GigaChat provider whose API and token endpoint are these two mocks.
fn gigachat(api: &Mock, oauth: &Mock) -> std::sync::Arc<parlance_upstream::Provider> {
    let auth = GigaChatAuth {
        auth_url: format!("{}/api/v2/oauth", oauth.url),
        scope: "GIGACHAT_API_PERS".into(),
    };
    provider_with(
        ProviderKind::GigaChat,
        &format!("{}/api/v1", api.url),
        Timeouts::default(),
        Some(auth),
    )
}

#[tokio::test]
async fn gigachat_gets_caches_and_refreshes_its_access_token() {
    let api = Mock::start().await;
    let oauth = Mock::start().await;
    let far = 4_000_000_000_000u64; // year 2096, in ms
    let p = gigachat(&api, &oauth);
    let b = model(&p, "GigaChat");
    oauth.push(Reply::Json(
        200,
        json!({"access_token": "tok-1", "expires_at": far}),
    ));
    let answer = json!({"choices": [{"message": {"role": "assistant", "content": "Да"}, "index": 0, "finish_reason": "stop"}],
        "created": 1, "model": "GigaChat:v1", "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}, "object": "chat.completion"});
    api.push(Reply::Json(200, answer.clone()));
    api.push(Reply::Json(200, answer.clone()));
    assert_eq!(
        run(&b, ask("a", false)).await.unwrap().choices[0].content,
        "Да"
    );
    run(&b, ask("b", false)).await.unwrap();
    assert_eq!(oauth.count(), 1, "the token is cached");
    let t = oauth.last();
    assert_eq!(t.headers["authorization"], "Basic sk-upstream");
    assert!(t.headers.contains_key("rquid"));
    assert_eq!(t.raw, "scope=GIGACHAT_API_PERS");
    assert_eq!(api.last().headers["authorization"], "Bearer tok-1");

    // The API rejects the token: one refresh, one retry.
    api.push(Reply::Json(
        401,
        json!({"status": 401, "message": "Token has expired"}),
    ));
    api.push(Reply::Json(200, answer.clone()));
    oauth.push(Reply::Json(
        200,
        json!({"access_token": "tok-2", "expires_at": far}),
    ));
    run(&b, ask("c", false)).await.unwrap();
    assert_eq!(oauth.count(), 2);
    assert_eq!(api.last().headers["authorization"], "Bearer tok-2");

    // Tools travel as GigaChat functions; a function_call answer is a tool call. The
    // history's image is uploaded first and named in the user turn's attachments.
    api.push(Reply::Json(200, json!({"id": "file-7", "object": "file"})));
    api.push(Reply::Json(200, json!({"choices": [{"message": {"role": "assistant", "content": "",
        "function_call": {"name": "get_weather", "arguments": {"city": "Sofia"}}}, "index": 0, "finish_reason": "function_call"}],
        "created": 1, "model": "GigaChat", "object": "chat.completion"})));
    let mut req = ask("", false);
    req.messages = tool_history();
    req.tools = vec![weather_tool()];
    let done = run(&b, req).await.unwrap();
    assert_eq!(
        done.choices[0].tool_calls[0].arguments,
        r#"{"city":"Sofia"}"#
    );
    assert_eq!(done.choices[0].finish_reason, Some(FinishReason::ToolCalls));
    let body = api.last().body;
    assert_eq!(body["functions"][0]["name"], "get_weather");
    assert_eq!(body["messages"][1]["attachments"], json!(["file-7"]));
    assert_eq!(body["messages"][1]["content"], "What is the weather here?");
    assert_eq!(
        body["messages"][2]["function_call"],
        json!({"name": "get_weather", "arguments": {"city": "Sofia"}})
    );
    assert_eq!(body["messages"][3]["role"], "function");
    assert_eq!(
        body["messages"][3]["name"], "get_weather",
        "named from the call it answers"
    );
}

#[tokio::test]
async fn gigachat_short_lived_tokens_are_reused_and_refreshed_once_for_many_401s() {
    let api = Mock::start().await;
    let oauth = Mock::start().await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let p = gigachat(&api, &oauth);
    let b = model(&p, "GigaChat");
    // A token that lives 60 s: a fixed one-minute margin would refetch it every time.
    oauth.push(Reply::Json(
        200,
        json!({"access_token": "tok-1", "expires_at": now_ms + 60_000}),
    ));
    oauth.always(Reply::Json(
        200,
        json!({"access_token": "tok-2", "expires_at": now_ms + 60_000}),
    ));
    let answer = json!({"choices": [{"message": {"role": "assistant", "content": "Да"}, "index": 0, "finish_reason": "stop"}],
        "created": 1, "model": "GigaChat:v1", "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}, "object": "chat.completion"});
    for _ in 0..3 {
        api.push(Reply::Json(200, answer.clone()));
    }
    for q in ["a", "b", "c"] {
        run(&b, ask(q, false)).await.unwrap();
    }
    assert_eq!(oauth.count(), 1, "a 60 s token is reused");

    // Ten requests in flight see the token rejected together: one refresh between them.
    for _ in 0..10 {
        api.push(Reply::Json(
            401,
            json!({"status": 401, "message": "Token has expired"}),
        ));
    }
    api.always(Reply::Json(200, answer.clone()));
    let all =
        futures::future::join_all((0..10).map(|i| run(&b, ask(&format!("q{i}"), false)))).await;
    assert!(all.iter().all(Result::is_ok), "{all:?}");
    assert_eq!(oauth.count(), 2, "one refresh for ten 401s");
    assert_eq!(api.last().headers["authorization"], "Bearer tok-2");
}

#[tokio::test]
async fn gigachat_images_are_uploaded_files_named_in_attachments() {
    use parlance_core::ir::{ContentPart, ImageSource};
    let api = Mock::start().await;
    let oauth = Mock::start().await;
    let p = gigachat(&api, &oauth);
    oauth.push(Reply::Json(
        200,
        json!({"access_token": "tok-1", "expires_at": 4_000_000_000_000u64}),
    ));
    api.push(Reply::Json(
        200,
        json!({"id": "6f0b1291-file", "object": "file", "bytes": 12, "created_at": 1, "filename": "image.png", "purpose": "general"}),
    ));
    api.push(Reply::Json(
        200,
        json!({"choices": [{"message": {"role": "assistant", "content": "Красный квадрат"}, "index": 0, "finish_reason": "stop"}],
            "created": 1, "model": "GigaChat-Max", "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}, "object": "chat.completion"}),
    ));
    let mut req = ask("Что на картинке?", false);
    req.messages[0]
        .content
        .push(ContentPart::Image(ImageSource::Base64 {
            media_type: "image/png".into(),
            data: "iVBORw0KGgpwbmc=".into(),
        }));
    let out = run(&model(&p, "GigaChat-Max"), req).await.unwrap();
    assert_eq!(out.choices[0].content, "Красный квадрат");
    let reqs = api.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 2);
    let upload = &reqs[0];
    assert_eq!(upload.path, "/api/v1/files");
    assert_eq!(upload.headers["authorization"], "Bearer tok-1");
    assert!(upload.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("multipart/form-data"));
    assert!(upload.raw.contains("name=\"purpose\"") && upload.raw.contains("general"));
    assert!(upload.raw.contains("filename=\"image.png\"") && upload.raw.contains("PNG"));
    assert_eq!(
        reqs[1].body["messages"][0],
        json!({"role": "user", "content": "Что на картинке?", "attachments": ["6f0b1291-file"]})
    );
}
