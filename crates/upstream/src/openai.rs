//! OpenAI Chat Completions as an upstream: vLLM, SGLang, TGI, llama.cpp, Ollama,
//! DeepSeek, BgGPT, another Parlance... and GigaChat, whose body is the same but for
//! its `functions` / `function_call` spelling of tools.

use crate::dialect::{parse_json, AuthStyle, Call, Dialect, Finishes, StreamMapper};
use crate::sse::SseEvent;
use parlance_core::ir::{
    ChatRequest, ContentPart, Delta, FinishReason, ImageSource, Message, ResponseFormat, Role,
    StreamEvent, TokenLogprob, ToolCallDelta, ToolChoice, TopLogprob, Usage,
};
use parlance_core::{Error, ErrorKind};
use serde_json::{json, Map, Value};

pub struct OpenAiDialect {
    /// GigaChat: tools as `functions`, calls as `function_call`, no stream_options.
    gigachat: bool,
}

impl OpenAiDialect {
    pub fn standard() -> Self {
        OpenAiDialect { gigachat: false }
    }

    pub fn gigachat() -> Self {
        OpenAiDialect { gigachat: true }
    }
}

fn image_url(src: &ImageSource) -> String {
    match src {
        ImageSource::Url(u) => u.clone(),
        ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
    }
}

fn content(m: &Message) -> Value {
    if !m.has_images() {
        return Value::String(m.joined_text());
    }
    Value::Array(
        m.content
            .iter()
            .map(|p| match p {
                ContentPart::Text(t) => json!({"type": "text", "text": t}),
                ContentPart::Image(src) => {
                    json!({"type": "image_url", "image_url": {"url": image_url(src)}})
                }
            })
            .collect(),
    )
}

impl OpenAiDialect {
    fn message(&self, m: &Message) -> Value {
        let mut o = Map::new();
        if self.gigachat && m.role == Role::Tool {
            o.insert("role".into(), json!("function"));
            o.insert("content".into(), json!(m.joined_text()));
            if let Some(name) = &m.name {
                o.insert("name".into(), json!(name));
            }
            return Value::Object(o);
        }
        o.insert("role".into(), json!(m.role.as_str()));
        if m.role == Role::Assistant && !m.tool_calls.is_empty() {
            let text = m.joined_text();
            if self.gigachat {
                let call = &m.tool_calls[0];
                let args: Value = serde_json::from_str(&call.arguments).unwrap_or(json!({}));
                o.insert("content".into(), json!(text));
                o.insert(
                    "function_call".into(),
                    json!({"name": call.name, "arguments": args}),
                );
            } else {
                o.insert(
                    "content".into(),
                    if text.is_empty() {
                        Value::Null
                    } else {
                        json!(text)
                    },
                );
                let calls: Vec<Value> = m
                    .tool_calls
                    .iter()
                    .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                    .collect();
                o.insert("tool_calls".into(), Value::Array(calls));
            }
        } else {
            o.insert("content".into(), content(m));
        }
        if let Some(name) = &m.name {
            o.insert("name".into(), json!(name));
        }
        if let Some(id) = &m.tool_call_id {
            o.insert("tool_call_id".into(), json!(id));
        }
        Value::Object(o)
    }

    fn tools(&self, req: &ChatRequest, o: &mut Map<String, Value>) {
        if req.tools.is_empty() {
            return;
        }
        if self.gigachat {
            let fns: Vec<Value> = req
                .tools
                .iter()
                .map(|t| json!({"name": t.name, "description": t.description.clone().unwrap_or_default(), "parameters": t.parameters}))
                .collect();
            o.insert("functions".into(), Value::Array(fns));
            let choice = match &req.tool_choice {
                ToolChoice::Auto | ToolChoice::Required => json!("auto"),
                ToolChoice::None => json!("none"),
                ToolChoice::Named(n) => json!({"name": n}),
            };
            o.insert("function_call".into(), choice);
            return;
        }
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut f = Map::new();
                f.insert("name".into(), json!(t.name));
                if let Some(d) = &t.description {
                    f.insert("description".into(), json!(d));
                }
                f.insert("parameters".into(), t.parameters.clone());
                if t.strict {
                    f.insert("strict".into(), json!(true));
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        o.insert("tools".into(), Value::Array(tools));
        let choice = match &req.tool_choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Named(n) => json!({"type": "function", "function": {"name": n}}),
        };
        o.insert("tool_choice".into(), choice);
        if !req.parallel_tool_calls {
            o.insert("parallel_tool_calls".into(), json!(false));
        }
    }
}

fn put<T: serde::Serialize>(o: &mut Map<String, Value>, key: &str, v: Option<T>) {
    if let Some(v) = v {
        o.insert(key.into(), json!(v));
    }
}

impl Dialect for OpenAiDialect {
    fn build(&self, base_url: &str, model: &str, req: &ChatRequest) -> Result<Call, Error> {
        let mut o = Map::new();
        o.insert("model".into(), json!(model));
        let messages: Vec<Value> = req.messages.iter().map(|m| self.message(m)).collect();
        o.insert("messages".into(), Value::Array(messages));
        let s = &req.sampling;
        put(&mut o, "temperature", s.temperature);
        put(&mut o, "top_p", s.top_p);
        put(&mut o, "top_k", s.top_k);
        put(&mut o, "min_p", s.min_p);
        put(&mut o, "presence_penalty", s.presence_penalty);
        put(&mut o, "frequency_penalty", s.frequency_penalty);
        put(&mut o, "repetition_penalty", s.repetition_penalty);
        put(&mut o, "seed", s.seed);
        if !s.logit_bias.is_empty() {
            let bias: Map<String, Value> = s
                .logit_bias
                .iter()
                .map(|(t, b)| (t.to_string(), json!(b)))
                .collect();
            o.insert("logit_bias".into(), Value::Object(bias));
        }
        put(&mut o, "max_tokens", req.max_tokens);
        if !req.stop.is_empty() {
            o.insert("stop".into(), json!(req.stop));
        }
        if req.n > 1 {
            o.insert("n".into(), json!(req.n));
        }
        if let Some(k) = req.logprobs {
            o.insert("logprobs".into(), json!(true));
            if k > 0 {
                o.insert("top_logprobs".into(), json!(k));
            }
        }
        self.tools(req, &mut o);
        match &req.response_format {
            ResponseFormat::Text => {}
            ResponseFormat::JsonObject => {
                o.insert("response_format".into(), json!({"type": "json_object"}));
            }
            ResponseFormat::JsonSchema {
                name,
                schema,
                strict,
            } => {
                o.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}),
                );
            }
            ResponseFormat::Grammar(g) => {
                // llama.cpp/Parlance take a grammar as an extension field.
                o.insert("grammar".into(), json!(g));
            }
        }
        if req.ignore_eos {
            o.insert("ignore_eos".into(), json!(true));
        }
        put(&mut o, "user", req.user.as_ref());
        if req.stream {
            o.insert("stream".into(), json!(true));
            if !self.gigachat {
                o.insert("stream_options".into(), json!({"include_usage": true}));
            }
        }
        for (k, v) in &req.extra {
            o.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Ok(Call {
            url: format!("{base_url}/chat/completions"),
            body: Value::Object(o),
            auth: AuthStyle::Bearer,
            extra_headers: Vec::new(),
        })
    }

    fn parse_body(&self, body: &[u8], req: &ChatRequest) -> Result<Vec<StreamEvent>, Error> {
        let n = req.n;
        let v: Value = parse_json(body, "chat completion")?;
        let choices = v
            .get("choices")
            .and_then(Value::as_array)
            .ok_or_else(|| malformed("a chat completion without `choices`"))?;
        let mut out = Vec::new();
        let mut finishes = Finishes::new(n);
        for (i, c) in choices.iter().enumerate() {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(i as u64) as u32;
            let msg = c.get("message").cloned().unwrap_or(Value::Null);
            let mut delta = Delta {
                content: str_at(&msg, "content"),
                reasoning: reasoning(&msg),
                tool_calls: Vec::new(),
                logprobs: logprobs(c),
            };
            if let Some(calls) = msg.get("tool_calls").and_then(Value::as_array) {
                for (k, call) in calls.iter().enumerate() {
                    delta.tool_calls.push(ToolCallDelta {
                        index: k as u32,
                        id: Some(
                            call.get("id")
                                .and_then(Value::as_str)
                                .map_or_else(new_call_id, str::to_string),
                        ),
                        name: call
                            .pointer("/function/name")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                        arguments: arguments(call.pointer("/function/arguments")),
                    });
                }
            }
            if let Some(fc) = msg.get("function_call").filter(|f| f.is_object()) {
                delta.tool_calls.push(ToolCallDelta {
                    index: 0,
                    id: Some(new_call_id()),
                    name: fc.get("name").and_then(Value::as_str).map(str::to_string),
                    arguments: arguments(fc.get("arguments")),
                });
            }
            let has_calls = !delta.tool_calls.is_empty();
            if !delta.is_empty() {
                out.push(StreamEvent::Delta { index, delta });
            }
            let reason = finish_reason(c.get("finish_reason"), has_calls);
            out.push(StreamEvent::Finish { index, reason });
            finishes.mark(index);
        }
        finishes.check()?;
        out.push(StreamEvent::Usage(usage(v.get("usage"))));
        Ok(out)
    }

    fn stream_mapper(&self, req: &ChatRequest) -> Box<dyn StreamMapper> {
        let n = req.n;
        Box::new(ChunkMapper {
            finishes: Finishes::new(n),
            usage: Usage::default(),
            calls: Vec::new(),
        })
    }
}

struct ChunkMapper {
    finishes: Finishes,
    usage: Usage,
    /// (choice, tool index) pairs whose first fragment has gone out, with the id used.
    calls: Vec<(u32, u32)>,
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
        let v: Value = parse_json(data.as_bytes(), "stream chunk")?;
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| err.to_string(), str::to_string);
            return Err(Error::new(
                ErrorKind::Upstream,
                format!("error in stream: {msg}"),
            ));
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = usage(Some(u));
        }
        for (i, c) in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(i as u64) as u32;
            let d = c.get("delta").cloned().unwrap_or(Value::Null);
            let mut delta = Delta {
                content: str_at(&d, "content"),
                reasoning: reasoning(&d),
                tool_calls: Vec::new(),
                logprobs: logprobs(c),
            };
            for (k, call) in d
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let tool_index = call
                    .get("index")
                    .and_then(Value::as_u64)
                    .unwrap_or(k as u64) as u32;
                let first = !self.calls.contains(&(index, tool_index));
                let id = call.get("id").and_then(Value::as_str).map(str::to_string);
                if first {
                    self.calls.push((index, tool_index));
                }
                delta.tool_calls.push(ToolCallDelta {
                    index: tool_index,
                    id: if first {
                        Some(id.unwrap_or_else(new_call_id))
                    } else {
                        None
                    },
                    name: call
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    arguments: arguments(call.pointer("/function/arguments")),
                });
            }
            if let Some(fc) = d.get("function_call").filter(|f| f.is_object()) {
                let first = !self.calls.contains(&(index, 0));
                if first {
                    self.calls.push((index, 0));
                }
                delta.tool_calls.push(ToolCallDelta {
                    index: 0,
                    id: first.then(new_call_id),
                    name: fc.get("name").and_then(Value::as_str).map(str::to_string),
                    arguments: arguments(fc.get("arguments")),
                });
            }
            if !delta.is_empty() {
                out.push(StreamEvent::Delta { index, delta });
            }
            if let Some(r) = c.get("finish_reason").filter(|r| !r.is_null()) {
                let has_calls = self.calls.iter().any(|&(ci, _)| ci == index);
                out.push(StreamEvent::Finish {
                    index,
                    reason: finish_reason(Some(r), has_calls),
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

fn malformed(what: &str) -> Error {
    Error::new(ErrorKind::Upstream, format!("upstream sent {what}"))
}

pub(crate) fn new_call_id() -> String {
    format!("call_{}", &uuid::Uuid::new_v4().simple().to_string()[..24])
}

fn str_at(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// DeepSeek and vLLM say `reasoning_content`; newer vLLM and OpenRouter say `reasoning`.
fn reasoning(v: &Value) -> String {
    let r = str_at(v, "reasoning_content");
    if r.is_empty() {
        str_at(v, "reasoning")
    } else {
        r
    }
}

/// Arguments as JSON text: OpenAI sends a string, GigaChat an object.
fn arguments(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn finish_reason(v: Option<&Value>, has_calls: bool) -> FinishReason {
    match v.and_then(Value::as_str) {
        Some("length") => FinishReason::Length,
        Some("tool_calls") | Some("function_call") => FinishReason::ToolCalls,
        Some("content_filter") | Some("blacklist") => FinishReason::ContentFilter,
        _ if has_calls => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

fn u32_at(v: &Value, ptr: &str) -> u32 {
    v.pointer(ptr).and_then(Value::as_u64).unwrap_or(0) as u32
}

fn usage(v: Option<&Value>) -> Usage {
    let Some(v) = v else {
        return Usage::default();
    };
    let cached = u32_at(v, "/prompt_tokens_details/cached_tokens")
        .max(u32_at(v, "/prompt_cache_hit_tokens"));
    Usage {
        prompt_tokens: u32_at(v, "/prompt_tokens"),
        completion_tokens: u32_at(v, "/completion_tokens"),
        cached_tokens: cached,
        reasoning_tokens: u32_at(v, "/completion_tokens_details/reasoning_tokens"),
    }
}

fn logprobs(choice: &Value) -> Vec<TokenLogprob> {
    let Some(items) = choice
        .pointer("/logprobs/content")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    let bytes_of = |v: &Value, token: &str| -> Vec<u8> {
        v.get("bytes")
            .and_then(|b| serde_json::from_value::<Vec<u8>>(b.clone()).ok())
            .unwrap_or_else(|| token.as_bytes().to_vec())
    };
    items
        .iter()
        .map(|t| {
            let token = str_at(t, "token");
            TokenLogprob {
                bytes: bytes_of(t, &token),
                logprob: t.get("logprob").and_then(Value::as_f64).unwrap_or(0.0) as f32,
                top: t
                    .get("top_logprobs")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        let tok = str_at(a, "token");
                        TopLogprob {
                            bytes: bytes_of(a, &tok),
                            logprob: a.get("logprob").and_then(Value::as_f64).unwrap_or(0.0) as f32,
                            token: tok,
                        }
                    })
                    .collect(),
                token,
            }
        })
        .collect()
}
