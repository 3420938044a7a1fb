//! IR -> Anthropic wire: a whole message, or the event sequence (message_start, ping,
//! content_block_start / delta / stop per block, message_delta with stop_reason and
//! usage, message_stop; an `error` event instead of a silent end).

use futures::{Stream, StreamExt};
use parlance_core::collect::Completion;
use parlance_core::ir::{FinishReason, StreamEvent, Usage};
use parlance_core::{Error, EventStream};
use parlance_protocol::anthropic as wire;
use serde_json::{json, Value};

/// `stop_sequence` when a caller's stop sequence ended the answer.
pub(super) fn stop_reason(r: FinishReason, stop_sequence: Option<&str>) -> &'static str {
    match r {
        FinishReason::Stop if stop_sequence.is_some() => "stop_sequence",
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
    }
}

pub(super) fn usage(u: &Usage) -> wire::Usage {
    let cached = u.cached_tokens.min(u.prompt_tokens);
    let created = u.cache_creation_tokens.min(u.prompt_tokens - cached);
    wire::Usage {
        // Anthropic counts cache reads and writes apart from the input.
        input_tokens: u.prompt_tokens - cached - created,
        output_tokens: u.completion_tokens,
        cache_creation_input_tokens: Some(created),
        cache_read_input_tokens: Some(cached),
    }
}

/// A tool call's arguments as the object Anthropic's `input` must be.
fn input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

pub(super) fn message(id: &str, model: &str, done: Completion) -> Value {
    let mut content: Vec<Value> = Vec::new();
    let Some(choice) = done.choices.into_iter().next() else {
        return json!({"id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": "end_turn", "stop_sequence": null, "usage": usage(&done.usage)});
    };
    if !choice.reasoning.is_empty() {
        content.push(json!({"type": "thinking", "thinking": choice.reasoning, "signature": choice.reasoning_signature}));
    }
    if !choice.content.is_empty() {
        content.push(json!({"type": "text", "text": choice.content}));
    }
    for c in &choice.tool_calls {
        content.push(
            json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input(&c.arguments)}),
        );
    }
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.finish_reason.unwrap_or(FinishReason::Stop), choice.stop_sequence.as_deref()),
        "stop_sequence": choice.stop_sequence,
        "usage": usage(&done.usage),
    })
}

/// One SSE event: its name and JSON data.
pub(super) type Sse = (&'static str, Value);

#[derive(PartialEq)]
enum Open {
    None,
    Text,
    Thinking,
    Tool,
}

/// The stop event of the open block, if one is open.
fn close(open: &mut Open, index: i64) -> Option<Sse> {
    if *open == Open::None {
        return None;
    }
    *open = Open::None;
    Some((
        "content_block_stop",
        json!({"type": "content_block_stop", "index": index}),
    ))
}

pub(super) fn events(
    id: String,
    model: String,
    input_tokens: u32,
    mut events: EventStream,
    render: fn(&Error) -> Value,
) -> impl Stream<Item = Sse> {
    async_stream::stream! {
        yield ("message_start", json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": 0}}}));
        yield ("ping", json!({"type": "ping"}));
        let mut index: i64 = -1;
        let mut open = Open::None;
        let mut finish: Option<FinishReason> = None;
        let mut matched: Option<String> = None;
        let mut done = false;
        while let Some(ev) = events.next().await {
            match ev {
                Ok(StreamEvent::Delta { index: 0, delta }) => {
                    if !delta.reasoning.is_empty() {
                        if open != Open::Thinking {
                            if let Some(stop) = close(&mut open, index) { yield stop; }
                            index += 1;
                            open = Open::Thinking;
                            yield ("content_block_start", json!({"type": "content_block_start", "index": index,
                                "content_block": {"type": "thinking", "thinking": "", "signature": ""}}));
                        }
                        yield ("content_block_delta", json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "thinking_delta", "thinking": delta.reasoning}}));
                    }
                    // A provider's signature closes its thinking block.
                    if !delta.reasoning_signature.is_empty() && open == Open::Thinking {
                        yield ("content_block_delta", json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "signature_delta", "signature": delta.reasoning_signature}}));
                    }
                    if !delta.content.is_empty() {
                        if open != Open::Text {
                            if let Some(stop) = close(&mut open, index) { yield stop; }
                            index += 1;
                            open = Open::Text;
                            yield ("content_block_start", json!({"type": "content_block_start", "index": index,
                                "content_block": {"type": "text", "text": ""}}));
                        }
                        yield ("content_block_delta", json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "text_delta", "text": delta.content}}));
                    }
                    for call in delta.tool_calls {
                        if let (Some(cid), Some(name)) = (call.id, call.name) {
                            if let Some(stop) = close(&mut open, index) { yield stop; }
                            index += 1;
                            open = Open::Tool;
                            yield ("content_block_start", json!({"type": "content_block_start", "index": index,
                                "content_block": {"type": "tool_use", "id": cid, "name": name, "input": {}}}));
                        }
                        if !call.arguments.is_empty() && open == Open::Tool {
                            yield ("content_block_delta", json!({"type": "content_block_delta", "index": index,
                                "delta": {"type": "input_json_delta", "partial_json": call.arguments}}));
                        }
                    }
                }
                Ok(StreamEvent::Finish { index: 0, reason, stop_sequence }) => {
                    if let Some(stop) = close(&mut open, index) { yield stop; }
                    finish = Some(reason);
                    matched = stop_sequence;
                }
                Ok(StreamEvent::Usage(u)) => {
                    if let Some(stop) = close(&mut open, index) { yield stop; }
                    yield ("message_delta", json!({"type": "message_delta",
                        "delta": {"stop_reason": stop_reason(finish.unwrap_or(FinishReason::Stop), matched.as_deref()), "stop_sequence": matched},
                        "usage": usage(&u)}));
                    yield ("message_stop", json!({"type": "message_stop"}));
                    done = true;
                }
                Ok(_) => {}
                Err(e) => {
                    yield ("error", render(&e));
                    return;
                }
            }
        }
        if !done {
            let e = Error::internal("the backend ended the stream before it finished");
            yield ("error", render(&e));
        }
    }
}
