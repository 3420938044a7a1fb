//! Provider options: each upstream's body carries its own provider's options and no
//! other provider's, and an OpenAI-compatible provider forwards unrecognised fields
//! only while its catalog entry allows it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test and example code"
)]

mod common;

use common::*;
use parlance_core::ir::{AnthropicOptions, GeminiOptions, ProviderOptions};
use parlance_upstream::{Provider, ProviderConfig, ProviderKind, Timeouts};
use serde_json::{json, Map, Value};

fn map(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

/// A request carrying options for all three providers.
fn options() -> ProviderOptions {
    ProviderOptions {
        openai_compatible: map(json!({"chat_template_kwargs": {"enable_thinking": false}})),
        anthropic: AnthropicOptions {
            thinking: Some(json!({"type": "enabled", "budget_tokens": 2048})),
            metadata: Some(json!({"user_id": "u-from-metadata"})),
            service_tier: Some(json!("standard_only")),
            fields: map(json!({"container": "c1"})),
        },
        gemini: GeminiOptions {
            thinking_config: Some(json!({"thinkingBudget": 512})),
            safety_settings: Some(
                json!([{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]),
            ),
            fields: map(json!({"cachedContent": "cachedContents/1"})),
        },
    }
}

fn openai(base_url: &str, forward_unknown_fields: bool) -> std::sync::Arc<Provider> {
    Provider::new(ProviderConfig {
        name: "vllm".into(),
        kind: ProviderKind::OpenAi,
        base_url: base_url.into(),
        api_key: Some("k".into()),
        headers: vec![],
        timeouts: Timeouts::default(),
        gigachat: None,
        ca_cert: None,
        max_completion_tokens: false,
        forward_unknown_fields,
        images: None,
    })
    .unwrap()
}

const OPENAI_ANSWER: &str = r#"{"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}"#;

#[tokio::test]
async fn openai_compatible_upstreams_get_unrecognised_fields_only_where_allowed() {
    let mock = Mock::start().await;
    let answer: Value = serde_json::from_str(OPENAI_ANSWER).unwrap();
    let mut req = ask("hi", false);
    req.options = options();
    req.user = Some("u1".into());

    mock.push(Reply::Json(200, answer.clone()));
    run(&model(&openai(&mock.url, true), "m"), req.clone())
        .await
        .unwrap();
    let sent = mock.last().body;
    assert_eq!(
        sent["chat_template_kwargs"],
        json!({"enable_thinking": false})
    );
    for other in [
        "thinking",
        "service_tier",
        "container",
        "safetySettings",
        "cachedContent",
    ] {
        assert!(
            sent.get(other).is_none(),
            "{other} is another provider's: {sent}"
        );
    }

    mock.push(Reply::Json(200, answer));
    run(&model(&openai(&mock.url, false), "m"), req)
        .await
        .unwrap();
    let sent = mock.last().body;
    assert!(sent.get("chat_template_kwargs").is_none(), "{sent}");
    assert_eq!(sent["user"], "u1", "known fields still go: {sent}");
}

#[tokio::test]
async fn anthropic_gets_its_own_options_exactly_and_once() {
    let mock = Mock::start().await;
    let p = provider(ProviderKind::Anthropic, &mock.url);
    mock.push(Reply::Json(
        200,
        json!({"id": "msg", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 1}}),
    ));
    let mut req = ask("hi", false);
    req.options = options();
    req.user = Some("u1".into());
    req.max_tokens = Some(4096);
    run(&model(&p, "claude-x"), req).await.unwrap();
    let r = mock.last();
    assert_eq!(
        r.body["thinking"],
        json!({"type": "enabled", "budget_tokens": 2048})
    );
    assert_eq!(r.body["metadata"], json!({"user_id": "u-from-metadata"}));
    assert_eq!(r.body["service_tier"], "standard_only");
    assert_eq!(r.body["container"], "c1");
    for other in ["chat_template_kwargs", "safetySettings", "cachedContent"] {
        assert!(r.body.get(other).is_none(), "{other}: {}", r.body);
    }
    // Each key once in the bytes sent (metadata went both typed and as an extra before).
    let raw = &r.raw;
    assert_eq!(raw.matches("\"metadata\"").count(), 1, "{raw}");
}

#[tokio::test]
async fn gemini_gets_its_own_options() {
    let mock = Mock::start().await;
    let p = provider(ProviderKind::Gemini, &format!("{}/v1beta", mock.url));
    mock.push(Reply::Json(
        200,
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]}, "finishReason": "STOP"}],
               "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 1}}),
    ));
    let mut req = ask("hi", false);
    req.options = options();
    run(&model(&p, "gemini-x"), req).await.unwrap();
    let body = mock.last().body;
    assert_eq!(
        body["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 512})
    );
    assert_eq!(body["safetySettings"][0]["threshold"], "BLOCK_NONE");
    assert_eq!(body["cachedContent"], "cachedContents/1");
    for other in [
        "chat_template_kwargs",
        "thinking",
        "service_tier",
        "container",
    ] {
        assert!(body.get(other).is_none(), "{other}: {body}");
    }
}
