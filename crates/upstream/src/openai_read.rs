//! Reading OpenAI-compatible answers, whole and streamed. The reader types are lenient
//! (every field optional, unknown ones skipped): servers differ in what they omit, and
//! typed reading skips the fields nobody uses without allocating for them.

use crate::dialect::{parse_json, parse_json_text, Finishes, StreamMapper};
use crate::sse::SseEvent;
use parlance_core::ir::{
    Delta, FinishReason, StreamEvent, TokenLogprob, ToolCallDelta, TopLogprob, Usage,
};
use parlance_core::{Error, ErrorKind};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Answer {
    choices: Option<Vec<Choice>>,
    usage: Option<WireUsage>,
    error: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Choice {
    index: Option<u32>,
    /// `message` in a whole answer, `delta` in a chunk.
    #[serde(alias = "delta")]
    message: Option<Msg>,
    finish_reason: Option<String>,
    logprobs: Option<Logprobs>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Msg {
    content: Option<String>,
    /// DeepSeek and vLLM say `reasoning_content`; newer vLLM and OpenRouter `reasoning`.
    reasoning_content: Option<String>,
    reasoning: Option<String>,
    tool_calls: Option<Vec<WireCall>>,
    /// GigaChat's single call, arguments as an object.
    function_call: Option<Function>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireCall {
    index: Option<u32>,
    id: Option<String>,
    function: Option<Function>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Function {
    name: Option<String>,
    /// A string (OpenAI) or an object (GigaChat).
    arguments: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireUsage {
    prompt_tokens: u32,
    completion_tokens: u32,
    prompt_tokens_details: Option<PromptDetails>,
    completion_tokens_details: Option<CompletionDetails>,
    /// DeepSeek's name for cached prompt tokens.
    prompt_cache_hit_tokens: u32,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PromptDetails {
    cached_tokens: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CompletionDetails {
    reasoning_tokens: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Logprobs {
    content: Option<Vec<WireLogprob>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireLogprob {
    token: String,
    logprob: f32,
    bytes: Option<Vec<u8>>,
    top_logprobs: Vec<WireTop>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireTop {
    token: String,
    logprob: f32,
    bytes: Option<Vec<u8>>,
}

pub(crate) fn new_call_id() -> String {
    format!("call_{}", &uuid::Uuid::new_v4().simple().to_string()[..24])
}

fn arguments(v: Option<Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
    }
}

fn finish_reason(r: &str, has_calls: bool) -> FinishReason {
    match r {
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" | "blacklist" => FinishReason::ContentFilter,
        _ if has_calls => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

fn usage(u: WireUsage) -> Usage {
    let cached = u
        .prompt_tokens_details
        .and_then(|d| d.cached_tokens)
        .unwrap_or(0)
        .max(u.prompt_cache_hit_tokens);
    Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        cached_tokens: cached,
        reasoning_tokens: u
            .completion_tokens_details
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0),
        cache_creation_tokens: 0,
    }
}

fn logprobs(l: Option<Logprobs>) -> Vec<TokenLogprob> {
    let items = l.and_then(|l| l.content).unwrap_or_default();
    items
        .into_iter()
        .map(|t| TokenLogprob {
            bytes: t.bytes.unwrap_or_else(|| t.token.as_bytes().to_vec()),
            logprob: t.logprob,
            top: t
                .top_logprobs
                .into_iter()
                .map(|a| TopLogprob {
                    bytes: a.bytes.unwrap_or_else(|| a.token.as_bytes().to_vec()),
                    logprob: a.logprob,
                    token: a.token,
                })
                .collect(),
            token: t.token,
        })
        .collect()
}

fn stream_error(err: Value) -> Error {
    let msg = err
        .get("message")
        .and_then(Value::as_str)
        .map_or_else(|| err.to_string(), str::to_string);
    Error::new(ErrorKind::Upstream, format!("error in stream: {msg}"))
}

/// The IR delta of one choice. `first_of` says whether a call's fragment is its first
/// (and so carries the id, generated when the server sent none).
fn delta(msg: Msg, lp: Option<Logprobs>, mut first_of: impl FnMut(u32) -> bool) -> Delta {
    let mut d = Delta {
        content: msg.content.unwrap_or_default(),
        reasoning: msg
            .reasoning_content
            .filter(|r| !r.is_empty())
            .or(msg.reasoning)
            .unwrap_or_default(),
        logprobs: logprobs(lp),
        ..Delta::default()
    };
    for (k, call) in msg.tool_calls.unwrap_or_default().into_iter().enumerate() {
        let index = call.index.unwrap_or(k as u32);
        let f = call.function.unwrap_or_default();
        let first = first_of(index);
        d.tool_calls.push(ToolCallDelta {
            index,
            id: first.then(|| call.id.unwrap_or_else(new_call_id)),
            name: f.name,
            arguments: arguments(f.arguments),
        });
    }
    if let Some(f) = msg.function_call {
        let first = first_of(0);
        d.tool_calls.push(ToolCallDelta {
            index: 0,
            id: first.then(new_call_id),
            name: f.name,
            arguments: arguments(f.arguments),
        });
    }
    d
}

/// A whole chat completion as events.
pub(crate) fn parse_body(body: &[u8], n: u32) -> Result<Vec<StreamEvent>, Error> {
    let a: Answer = parse_json(body, "chat completion")?;
    if let Some(err) = a.error.filter(|e| !e.is_null()) {
        return Err(stream_error(err));
    }
    let choices = a
        .choices
        .ok_or_else(|| Error::new(ErrorKind::Upstream, "a chat completion without `choices`"))?;
    let mut out = Vec::new();
    let mut finishes = Finishes::new(n);
    for (i, c) in choices.into_iter().enumerate() {
        let index = c.index.unwrap_or(i as u32);
        let d = delta(c.message.unwrap_or_default(), c.logprobs, |_| true);
        let has_calls = !d.tool_calls.is_empty();
        if !d.is_empty() {
            out.push(StreamEvent::Delta { index, delta: d });
        }
        let reason = finish_reason(c.finish_reason.as_deref().unwrap_or("stop"), has_calls);
        out.push(StreamEvent::Finish {
            index,
            reason,
            stop_sequence: None,
        });
        finishes.mark(index);
    }
    finishes.check()?;
    out.push(StreamEvent::Usage(usage(a.usage.unwrap_or_default())));
    Ok(out)
}

pub(crate) struct ChunkMapper {
    finishes: Finishes,
    usage: Usage,
    /// (choice, tool index) pairs whose first fragment has gone out.
    calls: Vec<(u32, u32)>,
}

impl ChunkMapper {
    pub(crate) fn new(n: u32) -> Self {
        ChunkMapper {
            finishes: Finishes::new(n),
            usage: Usage::default(),
            calls: Vec::new(),
        }
    }
}

impl StreamMapper for ChunkMapper {
    fn on_event(&mut self, ev: SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, Error> {
        let data = ev.data.trim();
        if data == "[DONE]" {
            return Ok(true);
        }
        if data.is_empty() {
            return Ok(false);
        }
        let a: Answer = parse_json_text(data, "stream chunk")?;
        if let Some(err) = a.error.filter(|e| !e.is_null()) {
            return Err(stream_error(err));
        }
        if let Some(u) = a.usage {
            self.usage = usage(u);
        }
        for (i, c) in a.choices.unwrap_or_default().into_iter().enumerate() {
            let index = c.index.unwrap_or(i as u32);
            let calls = &mut self.calls;
            let d = delta(c.message.unwrap_or_default(), c.logprobs, |tool| {
                let first = !calls.contains(&(index, tool));
                if first {
                    calls.push((index, tool));
                }
                first
            });
            if !d.is_empty() {
                out.push(StreamEvent::Delta { index, delta: d });
            }
            if let Some(r) = c.finish_reason.filter(|r| !r.is_empty()) {
                let has_calls = self.calls.iter().any(|&(ci, _)| ci == index);
                out.push(StreamEvent::Finish {
                    index,
                    reason: finish_reason(&r, has_calls),
                    stop_sequence: None,
                });
                self.finishes.mark(index);
            }
        }
        Ok(false)
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        self.finishes.check()?;
        out.push(StreamEvent::Usage(self.usage));
        Ok(())
    }
}
