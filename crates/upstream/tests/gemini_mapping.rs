//! Gemini's mapping, both ways, against a mock speaking its wire format; streams are
//! cut into chunks of 1, 2, 5 and 64 bytes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test and example code"
)]

mod common;

use common::*;
use parlance_core::ir::{FinishReason, ResponseFormat, ToolChoice};
use parlance_upstream::ProviderKind;
use serde_json::json;

const SPLITS: [usize; 4] = [1, 2, 5, 64];

#[tokio::test]
async fn gemini_request_and_stream_map_both_ways() {
    let mock = Mock::start().await;
    let p = provider(ProviderKind::Gemini, &format!("{}/v1beta", mock.url));
    let b = model(&p, "gemini-x");
    let body = sse(&[
        (
            None,
            json!({"candidates": [{"index": 0, "content": {"role": "model", "parts": [{"text": "Plan.", "thought": true}]}}]}),
        ),
        (
            None,
            json!({"candidates": [{"index": 0, "content": {"role": "model", "parts": [{"text": "Sunny "}]}}]}),
        ),
        (
            None,
            json!({"candidates": [{"index": 0, "content": {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Sofia"}}}]}, "finishReason": "STOP"}],
                      "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 4, "thoughtsTokenCount": 2, "totalTokenCount": 18}}),
        ),
    ]);
    for split in SPLITS {
        mock.push(Reply::Sse(body.clone(), split));
        let mut req = ask("", true);
        req.messages = tool_history();
        req.tools = vec![weather_tool()];
        req.tool_choice = ToolChoice::Named("get_weather".into());
        req.response_format = ResponseFormat::JsonSchema {
            name: "w".into(),
            schema: json!({"type": "object"}),
            strict: true,
        };
        req.max_tokens = Some(64);
        req.reasoning.effort = Some(parlance_core::ir::Effort::Low);
        let done = run(&b, req).await.unwrap();
        let c = &done.choices[0];
        assert_eq!(
            (c.reasoning.as_str(), c.content.as_str()),
            ("Plan.", "Sunny "),
            "split {split}"
        );
        assert_eq!(c.tool_calls[0].name, "get_weather");
        assert_eq!(c.tool_calls[0].arguments, r#"{"city":"Sofia"}"#);
        assert_eq!(c.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(
            (
                done.usage.prompt_tokens,
                done.usage.completion_tokens,
                done.usage.reasoning_tokens
            ),
            (12, 6, 2)
        );
    }
    let r = mock.last();
    assert_eq!(
        r.path,
        "/v1beta/models/gemini-x:streamGenerateContent?alt=sse"
    );
    assert_eq!(r.headers["x-goog-api-key"], "sk-upstream");
    let body = r.body;
    assert_eq!(body["systemInstruction"]["parts"][0]["text"], "Be brief.");
    let contents = body["contents"].as_array().unwrap();
    assert_eq!(
        contents[0]["parts"][1]["inlineData"],
        json!({"mimeType": "image/png", "data": "iVBORw0KGgo="})
    );
    assert_eq!(contents[1]["role"], "model");
    assert_eq!(
        contents[1]["parts"][0]["functionCall"],
        json!({"name": "get_weather", "args": {"city": "Sofia"}})
    );
    assert_eq!(
        contents[2]["parts"][0]["functionResponse"],
        json!({"name": "get_weather", "response": {"temp_c": 21}})
    );
    assert_eq!(
        body["toolConfig"]["functionCallingConfig"],
        json!({"mode": "ANY", "allowedFunctionNames": ["get_weather"]})
    );
    assert_eq!(body["generationConfig"]["maxOutputTokens"], 64);
    assert_eq!(
        body["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 1024, "includeThoughts": true})
    );
    assert_eq!(
        body["generationConfig"]["responseMimeType"],
        "application/json"
    );
    assert_eq!(
        body["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["type"],
        "object"
    );
}

#[tokio::test]
async fn gemini_whole_answer_with_two_candidates() {
    let mock = Mock::start().await;
    let p = provider(ProviderKind::Gemini, &mock.url);
    let b = model(&p, "g");
    mock.push(Reply::Json(200, json!({"candidates": [
        {"index": 0, "content": {"role": "model", "parts": [{"text": "A"}]}, "finishReason": "STOP"},
        {"index": 1, "content": {"role": "model", "parts": [{"text": "B"}]}, "finishReason": "MAX_TOKENS"}],
        "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 2, "totalTokenCount": 4}})));
    let mut req = ask("hi", false);
    req.n = 2;
    let done = run(&b, req).await.unwrap();
    assert_eq!(mock.last().path, "/models/g:generateContent");
    assert_eq!(mock.last().body["generationConfig"]["candidateCount"], 2);
    assert_eq!(done.choices[1].content, "B");
    assert_eq!(done.choices[1].finish_reason, Some(FinishReason::Length));
}
