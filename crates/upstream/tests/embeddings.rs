//! Embeddings through OpenAI-compatible upstreams and GigaChat, against loopback mocks.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test and example code"
)]

mod common;

use common::*;
use parlance_core::embed::{EmbedInput, EmbedRequest};
use parlance_upstream::{GigaChatAuth, ProviderKind, Timeouts};
use serde_json::json;

fn request(inputs: Vec<EmbedInput>) -> EmbedRequest {
    EmbedRequest {
        model: "m".into(),
        inputs,
        truncate: Some(64),
    }
}

#[tokio::test]
async fn openai_compatible_embeddings_map_both_ways() {
    let mock = Mock::start().await;
    let p = provider(ProviderKind::OpenAi, &format!("{}/v1", mock.url));
    let b = model(&p, "bge-small");
    // Out of order, as a server that works in parallel may answer.
    mock.push(Reply::Json(
        200,
        json!({"object": "list", "model": "bge-small",
        "data": [{"object": "embedding", "index": 1, "embedding": [0.0, 1.0]},
                 {"object": "embedding", "index": 0, "embedding": [1.0, 0.0]}],
        "usage": {"prompt_tokens": 7, "total_tokens": 7}}),
    ));
    let got = b
        .embed(request(vec![
            EmbedInput::Text("a".into()),
            EmbedInput::Tokens(vec![5, 6]),
        ]))
        .await
        .unwrap();
    assert_eq!(got.vectors, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
    assert_eq!(got.prompt_tokens, 7);
    let sent = mock.last();
    assert_eq!(sent.path, "/v1/embeddings");
    assert_eq!(sent.headers["authorization"], "Bearer sk-upstream");
    assert_eq!(
        sent.body,
        json!({"model": "bge-small", "input": ["a", [5, 6]], "encoding_format": "float", "truncate_prompt_tokens": 64})
    );

    // The upstream's 400 reaches the caller as a 400; a short answer is an error.
    mock.push(Reply::Json(
        400,
        json!({"error": {"message": "input too long", "type": "invalid_request_error"}}),
    ));
    let e = b
        .embed(request(vec![EmbedInput::Text("a".into())]))
        .await
        .unwrap_err();
    assert_eq!(e.status(), 400, "{e}");
    assert!(e.message.contains("input too long"), "{e}");
    mock.push(Reply::Json(
        200,
        json!({"data": [], "usage": {"prompt_tokens": 0}}),
    ));
    let e = b
        .embed(request(vec![EmbedInput::Text("a".into())]))
        .await
        .unwrap_err();
    assert!(e.message.contains("embedded 0 of 1"), "{e}");
}

#[tokio::test]
async fn gigachat_embeddings_use_its_token_and_count_per_input() {
    let api = Mock::start().await;
    let oauth = Mock::start().await;
    let p = provider_with(
        ProviderKind::GigaChat,
        &format!("{}/api/v1", api.url),
        Timeouts::default(),
        Some(GigaChatAuth {
            auth_url: format!("{}/api/v2/oauth", oauth.url),
            scope: "GIGACHAT_API_PERS".into(),
        }),
    );
    let b = model(&p, "Embeddings");
    oauth.push(Reply::Json(
        200,
        json!({"access_token": "tok-e", "expires_at": 4_000_000_000_000u64}),
    ));
    api.push(Reply::Json(
        200,
        json!({"object": "list", "model": "Embeddings", "data": [
        {"object": "embedding", "index": 0, "embedding": [0.5], "usage": {"prompt_tokens": 3}},
        {"object": "embedding", "index": 1, "embedding": [0.25], "usage": {"prompt_tokens": 4}}]}),
    ));
    let got = b
        .embed(request(vec![
            EmbedInput::Text("Привет".into()),
            EmbedInput::Text("мир".into()),
        ]))
        .await
        .unwrap();
    assert_eq!((got.prompt_tokens, got.input_tokens), (7, Some(vec![3, 4])));
    let sent = api.last();
    assert_eq!(sent.headers["authorization"], "Bearer tok-e");
    assert_eq!(
        sent.body,
        json!({"model": "Embeddings", "input": ["Привет", "мир"]})
    );
    // GigaChat takes text only.
    let e = b
        .embed(request(vec![EmbedInput::Tokens(vec![1])]))
        .await
        .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("input[0]"));
}
