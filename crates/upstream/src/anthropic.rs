//! Anthropic's native Messages API as an upstream.

use crate::dialect::{
    call_arguments, parse_json, parse_json_text, AuthStyle, Call, Dialect, StreamMapper,
};
use crate::sse::SseEvent;
use parlance_core::ir::{
    ChatRequest, ContentPart, Delta, FinishReason, ImageSource, Message, ResponseFormat, Role,
    StreamEvent, ToolCallDelta, ToolChoice, Usage,
};
use parlance_core::{Error, ErrorKind};
use parlance_protocol::anthropic as wire;
use serde_json::{json, Value};

pub(crate) struct AnthropicDialect;

/// Anthropic requires `max_tokens`; this is used when the caller gives none.
const DEFAULT_MAX_TOKENS: u32 = 4096;
pub(crate) const API_VERSION: &str = "2023-06-01";
/// The tool a json_schema answer is requested through.
const JSON_TOOL: &str = "json_response";

fn json_via_tool(req: &ChatRequest) -> bool {
    matches!(req.response_format, ResponseFormat::JsonSchema { .. })
}

fn blocks(m: &Message) -> Vec<wire::ContentBlock> {
    let mut out = Vec::new();
    for p in &m.content {
        match p {
            ContentPart::Text(t) if t.is_empty() => {}
            ContentPart::Text(t) => out.push(wire::ContentBlock::Text { text: t.clone() }),
            ContentPart::Image(ImageSource::Base64 { media_type, data }) => {
                out.push(wire::ContentBlock::Image {
                    source: wire::ImageSource::Base64 {
                        media_type: media_type.clone(),
                        data: data.clone(),
                    },
                })
            }
            ContentPart::Image(ImageSource::Url(url)) => out.push(wire::ContentBlock::Image {
                source: wire::ImageSource::Url { url: url.clone() },
            }),
        }
    }
    out
}

fn messages(req: &ChatRequest) -> Result<(Option<String>, Vec<wire::Message>), Error> {
    let mut system: Vec<String> = Vec::new();
    let mut out: Vec<wire::Message> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let (role, content) = match m.role {
            Role::System => {
                system.push(m.joined_text());
                continue;
            }
            Role::User => ("user", blocks(m)),
            Role::Assistant => {
                let mut b = Vec::new();
                // Thinking goes back only with its signature: Anthropic refuses it
                // otherwise, and it must come first.
                if let (Some(thinking), Some(signature)) = (&m.reasoning, &m.reasoning_signature) {
                    b.push(wire::ContentBlock::Thinking {
                        thinking: thinking.clone(),
                        signature: Some(signature.clone()),
                    });
                }
                b.extend(blocks(m));
                for (k, c) in m.tool_calls.iter().enumerate() {
                    b.push(wire::ContentBlock::ToolUse {
                        id: c.id.clone(),
                        name: c.name.clone(),
                        input: call_arguments(i, k, &c.arguments)?,
                    });
                }
                ("assistant", b)
            }
            Role::Tool => (
                "user",
                vec![wire::ContentBlock::ToolResult {
                    tool_use_id: m.tool_call_id.clone().unwrap_or_default(),
                    content: Some(Value::String(m.joined_text())),
                    is_error: m.is_error.then_some(true),
                }],
            ),
        };
        // Roles must alternate: consecutive turns of one role (parallel tool results) merge.
        match out.last_mut() {
            Some(last) if last.role == role => {
                if let wire::Content::Blocks(b) = &mut last.content {
                    b.extend(content);
                }
            }
            _ => out.push(wire::Message {
                role: role.to_string(),
                content: wire::Content::Blocks(content),
            }),
        }
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    Ok((system, out))
}

impl Dialect for AnthropicDialect {
    fn build(&self, base_url: &str, model: &str, req: &ChatRequest) -> Result<Call, Error> {
        if req.n > 1 {
            return Err(Error::invalid_param(
                "n",
                "this model's provider (Anthropic) returns one choice per request: n must be 1",
            ));
        }
        let (mut system, messages) = messages(req)?;
        let mut body = wire::MessagesRequest {
            model: model.to_string(),
            max_tokens: req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            messages,
            temperature: req.sampling.temperature,
            top_p: req.sampling.top_p,
            top_k: req.sampling.top_k.filter(|&k| k > 0),
            stop_sequences: req.stop.clone(),
            stream: req.stream.then_some(true),
            ..Default::default()
        };
        if !req.tools.is_empty() {
            (body.tools, body.tool_choice) = tools(req);
        }
        match &req.response_format {
            ResponseFormat::Text => {}
            ResponseFormat::JsonObject => {
                let rule = "Answer with one JSON object and nothing else.";
                system = Some(match system {
                    Some(s) => format!("{s}\n\n{rule}"),
                    None => rule.to_string(),
                });
            }
            ResponseFormat::JsonSchema { schema, .. } => {
                if !req.tools.is_empty() {
                    return Err(Error::invalid_param(
                        "response_format",
                        "with this model's provider (Anthropic), json_schema cannot be combined with tools",
                    ));
                }
                // Works on every Claude model: one forced call of a tool whose input schema
                // is the answer's; the mapper turns its input back into the content.
                body.tools = vec![wire::Tool {
                    name: JSON_TOOL.into(),
                    description: Some("Give the answer as this JSON object.".into()),
                    input_schema: schema.clone(),
                }];
                body.tool_choice = Some(wire::ToolChoice::Tool {
                    name: JSON_TOOL.into(),
                    disable_parallel_tool_use: Some(true),
                });
            }
            ResponseFormat::Grammar(_) => {
                return Err(Error::invalid_param(
                    "grammar",
                    "this model's provider (Anthropic) does not take grammars",
                ))
            }
        }
        body.system = system.map(Value::String);
        let own = &req.options.anthropic;
        body.metadata = own
            .metadata
            .clone()
            .or_else(|| req.user.as_ref().map(|user| json!({"user_id": user})));
        // Anthropic's smallest thinking budget is 1024 tokens.
        body.thinking =
            own.thinking
                .clone()
                .or_else(|| match req.reasoning.budget([1024, 4096, 16384])? {
                    0 => None,
                    b => Some(json!({"type": "enabled", "budget_tokens": b.max(1024)})),
                });
        if let Some(tier) = &own.service_tier {
            body.extra.insert("service_tier".into(), tier.clone());
        }
        for (k, v) in &own.fields {
            body.extra.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Ok(Call {
            url: format!("{base_url}/messages"),
            body: serde_json::to_value(&body).map_err(|e| Error::internal(e.to_string()))?,
            auth: AuthStyle::XApiKey,
            extra_headers: vec![("anthropic-version", API_VERSION.to_string())],
        })
    }

    fn parse_body(&self, body: &[u8], req: &ChatRequest) -> Result<Vec<StreamEvent>, Error> {
        let resp: wire::MessagesResponse = parse_json(body, "Messages response")?;
        let json_tool = json_via_tool(req);
        let mut delta = Delta::default();
        for b in resp.content {
            match b {
                wire::ContentBlock::Text { text } => delta.content.push_str(&text),
                wire::ContentBlock::ToolUse { input, .. } if json_tool => {
                    delta.content.push_str(&input.to_string())
                }
                wire::ContentBlock::Thinking {
                    thinking,
                    signature,
                } => {
                    delta.reasoning.push_str(&thinking);
                    delta
                        .reasoning_signature
                        .push_str(signature.as_deref().unwrap_or(""));
                }
                wire::ContentBlock::ToolUse { id, name, input } => {
                    delta.tool_calls.push(ToolCallDelta {
                        index: delta.tool_calls.len() as u32,
                        id: Some(id),
                        name: Some(name),
                        arguments: input.to_string(),
                    })
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        if !delta.is_empty() {
            out.push(StreamEvent::Delta { index: 0, delta });
        }
        out.push(StreamEvent::Finish {
            index: 0,
            reason: finish_reason(resp.stop_reason.as_deref(), json_tool),
            stop_sequence: resp.stop_sequence,
        });
        out.push(StreamEvent::Usage(usage(
            &resp.usage,
            resp.usage.output_tokens,
        )));
        Ok(out)
    }

    fn stream_mapper(&self, req: &ChatRequest) -> Box<dyn StreamMapper> {
        Box::new(EventMapper {
            json_tool: json_via_tool(req),
            ..EventMapper::default()
        })
    }
}

fn finish_reason(r: Option<&str>, json_tool: bool) -> FinishReason {
    match r {
        Some("max_tokens") | Some("model_context_window_exceeded") => FinishReason::Length,
        Some("tool_use") if json_tool => FinishReason::Stop,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

fn usage(u: &wire::Usage, output: u32) -> Usage {
    let read = u.cache_read_input_tokens.unwrap_or(0);
    Usage {
        prompt_tokens: u.input_tokens + read + u.cache_creation_input_tokens.unwrap_or(0),
        completion_tokens: output,
        cached_tokens: read,
        cache_creation_tokens: u.cache_creation_input_tokens.unwrap_or(0),
        reasoning_tokens: 0,
    }
}

#[derive(Default)]
struct EventMapper {
    /// The answer arrives as the input of the json_schema tool: it is content.
    json_tool: bool,
    /// Content block index -> tool call index, for `input_json_delta`s.
    tool_blocks: Vec<(u32, u32)>,
    input: wire::Usage,
    output: u32,
    stop: Option<String>,
    stop_sequence: Option<String>,
    finished: bool,
}

impl StreamMapper for EventMapper {
    fn on_event(&mut self, ev: SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, Error> {
        if ev.data.trim().is_empty() {
            return Ok(false);
        }
        let event: wire::StreamEvent = parse_json_text(&ev.data, "stream event")?;
        let mut delta = Delta::default();
        match event {
            wire::StreamEvent::MessageStart { message } => self.input = message.usage,
            wire::StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                wire::ContentBlock::ToolUse { .. } if self.json_tool => {}
                wire::ContentBlock::ToolUse { id, name, .. } => {
                    let k = self.tool_blocks.len() as u32;
                    self.tool_blocks.push((index, k));
                    delta.tool_calls.push(ToolCallDelta {
                        index: k,
                        id: Some(id),
                        name: Some(name),
                        arguments: String::new(),
                    });
                }
                wire::ContentBlock::Text { text } => delta.content = text,
                wire::ContentBlock::Thinking { thinking, .. } => delta.reasoning = thinking,
                _ => {}
            },
            wire::StreamEvent::ContentBlockDelta { index, delta: d } => match d {
                wire::BlockDelta::TextDelta { text } => delta.content = text,
                wire::BlockDelta::ThinkingDelta { thinking } => delta.reasoning = thinking,
                wire::BlockDelta::InputJsonDelta { partial_json } if self.json_tool => {
                    delta.content = partial_json
                }
                wire::BlockDelta::InputJsonDelta { partial_json } => {
                    let k = self
                        .tool_blocks
                        .iter()
                        .find(|(b, _)| *b == index)
                        .map(|&(_, k)| k)
                        .ok_or_else(|| {
                            Error::new(
                                ErrorKind::Upstream,
                                "tool input for a block that never started",
                            )
                        })?;
                    delta.tool_calls.push(ToolCallDelta {
                        index: k,
                        id: None,
                        name: None,
                        arguments: partial_json,
                    });
                }
                wire::BlockDelta::SignatureDelta { signature } => {
                    delta.reasoning_signature = signature
                }
            },
            wire::StreamEvent::MessageDelta { delta: d, usage } => {
                if d.stop_reason.is_some() {
                    self.stop = d.stop_reason;
                }
                if d.stop_sequence.is_some() {
                    self.stop_sequence = d.stop_sequence;
                }
                if let Some(u) = usage {
                    self.output = u.output_tokens;
                }
            }
            wire::StreamEvent::MessageStop => {
                out.push(StreamEvent::Finish {
                    index: 0,
                    reason: finish_reason(self.stop.as_deref(), self.json_tool),
                    stop_sequence: self.stop_sequence.take(),
                });
                self.finished = true;
                return Ok(true);
            }
            wire::StreamEvent::ContentBlockStop { .. } | wire::StreamEvent::Ping => {}
            wire::StreamEvent::Error { error } => {
                let e = Error::new(
                    ErrorKind::Upstream,
                    format!("error in stream: {} ({})", error.message, error.kind),
                );
                return Err(if error.kind == "overloaded_error" {
                    e.retryable()
                } else {
                    e
                });
            }
        }
        if !delta.is_empty() {
            out.push(StreamEvent::Delta { index: 0, delta });
        }
        Ok(false)
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        if !self.finished {
            return Err(Error::new(
                ErrorKind::Upstream,
                "stream ended before message_stop",
            ));
        }
        out.push(StreamEvent::Usage(usage(&self.input, self.output)));
        Ok(())
    }
}

/// The request's tools and tool choice in Anthropic's terms.
fn tools(req: &ChatRequest) -> (Vec<wire::Tool>, Option<wire::ToolChoice>) {
    let no_parallel = (!req.parallel_tool_calls).then_some(true);
    let tools = req
        .tools
        .iter()
        .map(|t| wire::Tool {
            name: t.name.clone(),
            description: t.description.clone(),
            input_schema: t.parameters.clone(),
        })
        .collect();
    let choice = match &req.tool_choice {
        ToolChoice::Auto => wire::ToolChoice::Auto {
            disable_parallel_tool_use: no_parallel,
        },
        ToolChoice::Required => wire::ToolChoice::Any {
            disable_parallel_tool_use: no_parallel,
        },
        ToolChoice::Named(name) => wire::ToolChoice::Tool {
            name: name.clone(),
            disable_parallel_tool_use: no_parallel,
        },
        ToolChoice::None => wire::ToolChoice::None,
    };
    (tools, Some(choice))
}
