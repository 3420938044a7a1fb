//! Each provider's mapping, both ways, against a mock upstream speaking its wire format;
//! streams are cut into chunks of 1, 2, 5 and 64 bytes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test and example code"
)]

mod common;

use common::*;
use parlance_core::ir::{FinishReason, Message, ResponseFormat, Role, ToolChoice};
use parlance_core::ErrorKind;
use parlance_upstream::{GigaChatAuth, ProviderKind, Timeouts};
use serde_json::json;

const SPLITS: [usize; 4] = [1, 2, 5, 64];

#[tokio::test]
async fn openai_request_and_response_map_both_ways() {
    let mock = Mock::start().await;
    let p = provider(ProviderKind::OpenAi, &format!("{}/v1", mock.url));
    let b = model(&p, "upstream-model");
    mock.push(Reply::Json(200, json!({
        "id": "x", "object": "chat.completion", "created": 1, "model": "upstream-model",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": null, "reasoning_content": "Think.",
            "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Sofia\"}"}}]}}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27,
                  "prompt_tokens_details": {"cached_tokens": 16}, "completion_tokens_details": {"reasoning_tokens": 3}}
    })));
    let mut req = ask("", false);
    req.messages = tool_history();
    req.tools = vec![weather_tool()];
    req.tool_choice = ToolChoice::Named("get_weather".into());
    req.stop = vec!["END".into()];
    req.sampling.seed = Some(7);
    req.sampling.temperature = Some(0.2);
    req.response_format = ResponseFormat::JsonObject;
    req.options.openai_compatible.insert(
        "chat_template_kwargs".into(),
        json!({"enable_thinking": false}),
    );
    let done = run(&b, req).await.unwrap();

    let r = mock.last();
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.headers["authorization"], "Bearer sk-upstream");
    assert_eq!(r.headers["x-extra"], "1");
    let body = r.body;
    assert_eq!(body["model"], "upstream-model");
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(
        body["messages"][1]["content"][1]["image_url"]["url"],
        "data:image/png;base64,iVBORw0KGgo="
    );
    assert_eq!(
        body["messages"][2]["tool_calls"][0]["function"]["arguments"],
        r#"{"city":"Sofia"}"#
    );
    assert_eq!(
        body["messages"][3],
        json!({"role": "tool", "content": "{\"temp_c\":21}", "tool_call_id": "call_1"})
    );
    assert_eq!(
        body["tool_choice"],
        json!({"type": "function", "function": {"name": "get_weather"}})
    );
    assert_eq!(body["stop"], json!(["END"]));
    assert_eq!(body["seed"], 7);
    assert_eq!(body["response_format"], json!({"type": "json_object"}));
    assert_eq!(
        body["chat_template_kwargs"],
        json!({"enable_thinking": false}),
        "extension passed through"
    );
    assert!(body.get("stream").is_none());

    let c = &done.choices[0];
    assert_eq!(c.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(c.reasoning, "Think.");
    assert_eq!(c.tool_calls[0].id, "call_9");
    assert_eq!(c.tool_calls[0].arguments, r#"{"city":"Sofia"}"#);
    assert_eq!(
        (
            done.usage.prompt_tokens,
            done.usage.cached_tokens,
            done.usage.reasoning_tokens
        ),
        (20, 16, 3)
    );
}

#[tokio::test]
async fn openai_stream_survives_any_chunking() {
    let mock = Mock::start().await;
    let p = provider(ProviderKind::OpenAi, &mock.url);
    let b = model(&p, "m");
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        (
            None,
            json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
        )
    };
    let body = sse(&[
        chunk(
            json!({"role": "assistant", "reasoning_content": "Hmm, "}),
            json!(null),
        ),
        chunk(json!({"content": "Привет 😀"}), json!(null)),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"ci"}}]}),
            json!(null),
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "ty\":\"Sofia\"}"}}]}),
            json!(null),
        ),
        chunk(json!({}), json!("tool_calls")),
        (
            None,
            json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
                      "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}}),
        ),
    ]) + "data: [DONE]\n\n";
    for split in SPLITS {
        mock.push(Reply::Sse(body.clone(), split));
        let done = run(&b, ask("hi", true)).await.unwrap();
        let c = &done.choices[0];
        assert_eq!(c.content, "Привет 😀", "split {split}");
        assert_eq!(c.reasoning, "Hmm, ");
        assert_eq!(c.tool_calls.len(), 1);
        assert_eq!(c.tool_calls[0].id, "call_a");
        assert_eq!(c.tool_calls[0].arguments, r#"{"city":"Sofia"}"#);
        assert_eq!(c.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(done.usage.completion_tokens, 9);
    }
    let sent = mock.last().body;
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn the_token_cap_goes_by_the_name_the_upstream_takes() {
    let mock = Mock::start().await;
    let answer = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]});
    let mut req = ask("hi", false);
    req.max_tokens = Some(256);
    mock.push(Reply::Json(200, answer.clone()));
    run(
        &model(&provider(ProviderKind::OpenAi, &mock.url), "m"),
        req.clone(),
    )
    .await
    .unwrap();
    let sent = mock.last().body;
    assert_eq!(
        (
            sent["max_tokens"].clone(),
            sent.get("max_completion_tokens")
        ),
        (json!(256), None)
    );

    let p = parlance_upstream::Provider::new(parlance_upstream::ProviderConfig {
        name: "openai".into(),
        kind: ProviderKind::OpenAi,
        base_url: mock.url.clone(),
        api_key: Some("k".into()),
        headers: vec![],
        timeouts: Timeouts::default(),
        gigachat: None,
        ca_cert: None,
        max_completion_tokens: true,
        forward_unknown_fields: true,
        images: None,
    })
    .unwrap();
    mock.push(Reply::Json(200, answer));
    run(&model(&p, "gpt-5.4"), req).await.unwrap();
    let sent = mock.last().body;
    assert_eq!(
        (
            sent["max_completion_tokens"].clone(),
            sent.get("max_tokens")
        ),
        (json!(256), None)
    );
}

#[tokio::test]
async fn anthropic_request_and_stream_map_both_ways() {
    let mock = Mock::start().await;
    let p = provider(ProviderKind::Anthropic, &format!("{}/v1", mock.url));
    let b = model(&p, "claude-x");
    let ev = |name: &'static str, v: serde_json::Value| (Some(name), v);
    let body = sse(&[
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [], "stop_reason": null, "usage": {"input_tokens": 30, "output_tokens": 1, "cache_read_input_tokens": 10}}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me see."}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "abc"}}),
        ),
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        ev("ping", json!({"type": "ping"})),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Checking ☀"}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "\"Sofia\"}"}}),
        ),
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 2}),
        ),
        ev(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 42}}),
        ),
        ev("message_stop", json!({"type": "message_stop"})),
    ]);
    for split in SPLITS {
        mock.push(Reply::Sse(body.clone(), split));
        let mut req = ask("", true);
        req.messages = tool_history();
        let mut second = Message::text(Role::Tool, "second result");
        second.tool_call_id = Some("call_2".into());
        req.messages.push(second);
        req.tools = vec![weather_tool()];
        req.tool_choice = ToolChoice::Required;
        req.parallel_tool_calls = false;
        req.stop = vec!["END".into()];
        let done = run(&b, req).await.unwrap();
        let c = &done.choices[0];
        assert_eq!(c.reasoning, "Let me see.", "split {split}");
        assert_eq!(c.content, "Checking ☀");
        assert_eq!(c.tool_calls[0].id, "toolu_1");
        assert_eq!(c.tool_calls[0].arguments, r#"{"city": "Sofia"}"#);
        assert_eq!(c.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(
            (
                done.usage.prompt_tokens,
                done.usage.cached_tokens,
                done.usage.completion_tokens
            ),
            (40, 10, 42)
        );
    }
    let r = mock.last();
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(r.headers["x-api-key"], "sk-upstream");
    assert_eq!(r.headers["anthropic-version"], "2023-06-01");
    let body = r.body;
    assert_eq!(body["system"], "Be brief.");
    assert_eq!(body["max_tokens"], 4096);
    assert_eq!(body["stop_sequences"], json!(["END"]));
    assert_eq!(
        body["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        body["tools"][0]["input_schema"]["required"],
        json!(["city"])
    );
    let msgs = body["messages"].as_array().unwrap();
    assert_eq!(
        msgs.len(),
        3,
        "user, assistant, then both tool results in one user turn"
    );
    assert_eq!(
        msgs[0]["content"][1],
        json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}})
    );
    assert_eq!(
        msgs[1]["content"][0],
        json!({"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Sofia"}})
    );
    assert_eq!(msgs[2]["role"], "user");
    assert_eq!(msgs[2]["content"][0]["type"], "tool_result");
    assert_eq!(msgs[2]["content"][1]["tool_use_id"], "call_2");
}

#[tokio::test]
async fn anthropic_whole_answer_and_n_limit() {
    let mock = Mock::start().await;
    let p = provider(ProviderKind::Anthropic, &mock.url);
    let b = model(&p, "claude-x");
    mock.push(Reply::Json(
        200,
        json!({"id": "msg", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": "Hello"}], "stop_reason": "max_tokens",
        "usage": {"input_tokens": 3, "output_tokens": 5}}),
    ));
    let done = run(&b, ask("hi", false)).await.unwrap();
    assert_eq!(done.choices[0].content, "Hello");
    assert_eq!(done.choices[0].finish_reason, Some(FinishReason::Length));
    let mut req = ask("hi", false);
    req.n = 2;
    let e = run(&b, req).await.unwrap_err();
    assert_eq!(
        (e.kind, e.param.as_deref()),
        (ErrorKind::InvalidRequest, Some("n"))
    );
    assert_eq!(mock.count(), 1, "n=2 is refused before any upstream call");
}

#[tokio::test]
async fn anthropic_json_schema_answers_through_a_forced_tool() {
    let mock = Mock::start().await;
    let p = provider(ProviderKind::Anthropic, &mock.url);
    let b = model(&p, "claude-x");
    let schema =
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
    let json_req = |stream| {
        let mut r = ask("Where?", stream);
        r.response_format = ResponseFormat::JsonSchema {
            name: "place".into(),
            schema: schema.clone(),
            strict: true,
        };
        r
    };
    let ev = |name: &'static str, v: serde_json::Value| (Some(name), v);
    let body = sse(&[
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "m", "role": "assistant", "content": [], "usage": {"input_tokens": 9, "output_tokens": 1}}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_j", "name": "json_response", "input": {}}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"So"}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "fia\"}"}}),
        ),
        ev(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}}),
        ),
        ev("message_stop", json!({"type": "message_stop"})),
    ]);
    mock.push(Reply::Sse(body, 7));
    let done = run(&b, json_req(true)).await.unwrap();
    assert_eq!(done.choices[0].content, r#"{"city": "Sofia"}"#);
    assert!(done.choices[0].tool_calls.is_empty());
    assert_eq!(done.choices[0].finish_reason, Some(FinishReason::Stop));
    let sent = mock.last().body;
    assert_eq!(sent["tools"][0]["name"], "json_response");
    assert_eq!(sent["tools"][0]["input_schema"], schema);
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "json_response", "disable_parallel_tool_use": true})
    );

    mock.push(Reply::Json(200, json!({"id": "m", "role": "assistant", "stop_reason": "tool_use",
        "content": [{"type": "tool_use", "id": "toolu_j", "name": "json_response", "input": {"city": "Varna"}}],
        "usage": {"input_tokens": 9, "output_tokens": 5}})));
    let done = run(&b, json_req(false)).await.unwrap();
    assert_eq!(done.choices[0].content, r#"{"city":"Varna"}"#);
    assert_eq!(done.choices[0].finish_reason, Some(FinishReason::Stop));
}

#[tokio::test]
async fn token_counts_come_from_the_upstream() {
    let mock = Mock::start().await;
    let p = provider(ProviderKind::OpenAi, &format!("{}/api/v1", mock.url));
    let b = model(&p, "GigaChat");
    mock.push(Reply::Json(
        200,
        json!([{"object": "tokens", "tokens": 7, "characters": 36}]),
    ));
    let counts = b
        .count_tokens(&["And the silken, sad, uncertain rustling".into()])
        .await
        .unwrap();
    assert_eq!(counts, vec![7]);
    let r = mock.last();
    assert_eq!(r.path, "/api/v1/tokens/count");
    assert_eq!(
        r.body,
        json!({"model": "GigaChat", "input": ["And the silken, sad, uncertain rustling"]})
    );

    mock.push(Reply::Json(404, json!({"error": {"message": "not found"}})));
    let e = b.count_tokens(&["x".into()]).await.unwrap_err();
    assert_eq!(
        (e.kind, e.code),
        (
            ErrorKind::InvalidRequest,
            Some(parlance_core::Code::Unsupported)
        )
    );
}

#[tokio::test]
async fn a_json_answer_to_a_stream_request_is_read_whole() {
    let mock = Mock::start().await;
    let b = model(&provider(ProviderKind::OpenAi, &mock.url), "m");
    mock.push(Reply::Json(200, json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "whole"}, "finish_reason": "stop"}]})));
    let done = run(&b, ask("hi", true)).await.unwrap();
    assert_eq!(done.choices[0].content, "whole");
    mock.push(Reply::Json(
        200,
        json!({"error": {"message": "model is loading"}}),
    ));
    let e = run(&b, ask("hi", true)).await.unwrap_err();
    assert!(e.message.contains("model is loading"), "{}", e.message);
}

#[tokio::test]
async fn history_a_provider_cannot_take_is_a_400_naming_the_param() {
    let mock = Mock::start().await;
    let with_history = |edit: &dyn Fn(&mut Vec<Message>)| {
        let mut r = ask("", false);
        r.messages = tool_history();
        edit(&mut r.messages);
        r
    };
    let bad_args = |m: &mut Vec<Message>| m[2].tool_calls[0].arguments = "{\"city\": ".into();
    for kind in [ProviderKind::Anthropic, ProviderKind::Gemini] {
        let b = model(&provider(kind, &mock.url), "m");
        let e = run(&b, with_history(&bad_args)).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest, "{kind:?}");
        assert_eq!(
            e.param.as_deref(),
            Some("messages[2].tool_calls[0].function.arguments")
        );
    }
    let gemini = model(&provider(ProviderKind::Gemini, &mock.url), "m");
    let e = run(
        &gemini,
        with_history(&|m| m[3].tool_call_id = Some("call_unknown".into())),
    )
    .await
    .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages[3].tool_call_id"));

    let oauth = Mock::start().await;
    let auth = GigaChatAuth {
        auth_url: format!("{}/oauth", oauth.url),
        scope: "GIGACHAT_API_PERS".into(),
    };
    let giga = model(
        &provider_with(
            ProviderKind::GigaChat,
            &mock.url,
            Timeouts::default(),
            Some(auth),
        ),
        "GigaChat",
    );
    let two_calls = |m: &mut Vec<Message>| {
        let again = m[2].tool_calls[0].clone();
        m[2].tool_calls.push(again);
    };
    let e = run(&giga, with_history(&two_calls)).await.unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages[2].tool_calls"));
    let e = run(&giga, with_history(&bad_args)).await.unwrap_err();
    assert_eq!(
        e.param.as_deref(),
        Some("messages[2].tool_calls[0].function.arguments")
    );
    assert_eq!(
        (mock.count(), oauth.count()),
        (0, 0),
        "refused before any upstream call"
    );
}
