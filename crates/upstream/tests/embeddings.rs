//! Embeddings and rerank through OpenAI-compatible upstreams, GigaChat and Gemini, and
//! through pools (retries, fallbacks), against loopback mocks.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test and example code"
)]

mod common;

use common::*;
use parlance_core::embed::{EmbedInput, EmbedRequest, RerankRequest};
use parlance_core::pool::{Deployment, Pool, PoolPolicy};
use parlance_core::Backend;
use parlance_upstream::{GigaChatAuth, ProviderKind, Timeouts};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

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

#[tokio::test]
async fn gemini_embeddings_go_to_batch_embed_contents() {
    let mock = Mock::start().await;
    let p = provider(ProviderKind::Gemini, &format!("{}/v1beta", mock.url));
    let b = model(&p, "text-embedding-004");
    mock.push(Reply::Json(
        200,
        json!({"embeddings": [{"values": [0.6, 0.8]}, {"values": [1.0, 0.0]}]}),
    ));
    let got = b
        .embed(request(vec![
            EmbedInput::Text("hello".into()),
            EmbedInput::Text("a longer text".into()),
        ]))
        .await
        .unwrap();
    assert_eq!(got.vectors, vec![vec![0.6, 0.8], vec![1.0, 0.0]]);
    // Gemini counts no tokens here: the estimate (bytes / 4, rounded up) stands in.
    assert_eq!(got.prompt_tokens, 5);
    let sent = mock.last();
    assert_eq!(
        sent.path,
        "/v1beta/models/text-embedding-004:batchEmbedContents"
    );
    assert_eq!(sent.headers["x-goog-api-key"], "sk-upstream");
    assert_eq!(
        sent.body,
        json!({"requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "hello"}]}},
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a longer text"}]}}]})
    );
    let e = b
        .embed(request(vec![EmbedInput::Tokens(vec![1])]))
        .await
        .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("input[0]"));
    mock.push(Reply::Json(200, json!({"embeddings": [{"values": [1.0]}]})));
    let e = b
        .embed(request(vec![
            EmbedInput::Text("a".into()),
            EmbedInput::Text("b".into()),
        ]))
        .await
        .unwrap_err();
    assert!(e.message.contains("embedded 1 of 2"), "{e}");
}

fn rerank_request(docs: &[&str]) -> RerankRequest {
    RerankRequest {
        model: "m".into(),
        query: "which is a fruit?".into(),
        documents: docs.iter().map(|d| d.to_string()).collect(),
    }
}

#[tokio::test]
async fn rerank_upstream_scores_come_back_in_document_order() {
    let mock = Mock::start().await;
    let p = provider(ProviderKind::OpenAi, &format!("{}/v1", mock.url));
    let b = model(&p, "bge-reranker");
    // Sorted by score, as every rerank server answers; vLLM's usage has total_tokens only.
    mock.push(Reply::Json(
        200,
        json!({"id": "r", "model": "bge-reranker", "usage": {"total_tokens": 21},
        "results": [{"index": 1, "relevance_score": 0.9, "document": {"text": "apple"}},
                    {"index": 0, "relevance_score": 0.1, "document": {"text": "car"}}]}),
    ));
    let got = b.rerank(rerank_request(&["car", "apple"])).await.unwrap();
    assert_eq!(got.scores, vec![0.1, 0.9]);
    assert_eq!(got.prompt_tokens, 21);
    let sent = mock.last();
    assert_eq!(sent.path, "/v1/rerank");
    assert_eq!(sent.headers["authorization"], "Bearer sk-upstream");
    assert_eq!(
        sent.body,
        json!({"model": "bge-reranker", "query": "which is a fruit?", "documents": ["car", "apple"], "top_n": 2})
    );
    // llama-server's usage has prompt_tokens; Cohere's has none (the estimate stands in).
    mock.push(Reply::Json(
        200,
        json!({"results": [{"index": 0, "relevance_score": -1.5}], "usage": {"prompt_tokens": 9, "total_tokens": 9}}),
    ));
    assert_eq!(
        b.rerank(rerank_request(&["x"]))
            .await
            .unwrap()
            .prompt_tokens,
        9
    );
    mock.push(Reply::Json(
        200,
        json!({"results": [{"index": 0, "relevance_score": 0.5}], "meta": {"billed_units": {"search_units": 1}}}),
    ));
    assert_eq!(
        b.rerank(rerank_request(&["abcd"]))
            .await
            .unwrap()
            .prompt_tokens,
        ("which is a fruit?".len() as u32 + 4).div_ceil(4)
    );
    // A document left unscored is the upstream's fault, not a silent zero.
    mock.push(Reply::Json(
        200,
        json!({"results": [{"index": 0, "relevance_score": 0.5}]}),
    ));
    let e = b.rerank(rerank_request(&["a", "b"])).await.unwrap_err();
    assert!(e.message.contains("scored 1 of 2"), "{e}");
    // Providers with no rerank API say so, naming the model.
    let anthropic = provider(ProviderKind::Anthropic, &mock.url);
    let e = model(&anthropic, "claude")
        .rerank(rerank_request(&["a"]))
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.param.as_deref()), (400, Some("model")));
}

#[tokio::test]
async fn embeddings_and_rerank_retry_another_deployment_then_fall_back() {
    let (sick, well, backup) = (
        Mock::start().await,
        Mock::start().await,
        Mock::start().await,
    );
    sick.always(Reply::Json(
        503,
        json!({"error": {"message": "overloaded"}}),
    ));
    well.always(Reply::Json(
        200,
        json!({"data": [{"index": 0, "embedding": [1.0]}], "usage": {"prompt_tokens": 1},
               "results": [{"index": 0, "relevance_score": 0.25}]}),
    ));
    let deployment = |m: &Mock, name: &str, weight| Deployment {
        name: name.into(),
        backend: model(&provider(ProviderKind::OpenAi, &m.url), "m"),
        weight,
    };
    let policy = PoolPolicy {
        backoff: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        ..PoolPolicy::default()
    };
    // The weighted pick is random: at 1000 to 1 a call went to "well" first about once
    // in a thousand (it did once in CI); at u32::MAX to 1, once in four billion.
    let pool = Pool::new(
        "m",
        vec![
            deployment(&sick, "sick", u32::MAX),
            deployment(&well, "well", 1),
        ],
        policy.clone(),
    );
    let got = pool
        .embed(request(vec![EmbedInput::Text("a".into())]))
        .await
        .unwrap();
    assert_eq!(got.vectors, vec![vec![1.0]]);
    let got = pool.rerank(rerank_request(&["a"])).await.unwrap();
    assert_eq!(got.scores, vec![0.25]);
    assert_eq!(
        sick.count(),
        2,
        "each call tried the heavier deployment first"
    );
    assert_eq!(pool.composition().deployments[0].consecutive_failures, 2);

    // Every deployment down: the fallback model answers.
    let down = Pool::new("down", vec![deployment(&sick, "sick", 1)], policy.clone());
    backup.always(Reply::Json(
        200,
        json!({"data": [{"index": 0, "embedding": [0.5]}]}),
    ));
    down.set_fallbacks(vec![Arc::new(Pool::new(
        "backup",
        vec![deployment(&backup, "backup", 1)],
        policy,
    ))]);
    let got = down
        .embed(request(vec![EmbedInput::Text("a".into())]))
        .await
        .unwrap();
    assert_eq!(got.vectors, vec![vec![0.5]]);
    assert_eq!(backup.count(), 1);
}
