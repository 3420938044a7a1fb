//! Anthropic Messages request -> IR, validated once, parameters named as Anthropic does.

use parlance_core::ir::{
    AnthropicOptions, ChatRequest, ContentPart, ImageSource, Message, PartOrigins, ProviderOptions,
    Reasoning, ResponseFormat, Role, SamplingParams, ToolCall, ToolChoice, ToolDef,
};
use parlance_core::Error;
use parlance_protocol::anthropic as wire;
use serde_json::Value;

/// Text of a `system` value or a `tool_result` content: a string or text blocks.
fn text_of(v: &Value, param: &str) -> Result<String, Error> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut out = String::new();
            for (i, b) in blocks.iter().enumerate() {
                match (
                    b.get("type").and_then(Value::as_str),
                    b.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => {
                        if !out.is_empty() {
                            out.push('\n');
                        }
                        out.push_str(t);
                    }
                    _ => {
                        return Err(Error::invalid_param(
                            format!("{param}.{i}"),
                            format!("{param}.{i}: only text blocks are supported here"),
                        ))
                    }
                }
            }
            Ok(out)
        }
        Value::Null => Ok(String::new()),
        _ => Err(Error::invalid_param(
            param,
            format!("{param}: expected a string or a list of text blocks"),
        )),
    }
}

pub(super) fn to_ir(req: wire::MessagesRequest) -> Result<ChatRequest, Error> {
    check_scalars(&req)?;
    let (messages, origins) = messages_of(req.system.as_ref(), req.messages)?;
    let tools = tools_of(req.tools)?;
    let (tool_choice, parallel) = tool_choice_of(req.tool_choice, &tools)?;
    let reasoning = reasoning_of(req.thinking.as_ref())?;
    let mut fields = req.extra;
    let options = ProviderOptions {
        anthropic: AnthropicOptions {
            thinking: req.thinking.clone(),
            metadata: req.metadata.clone(),
            service_tier: fields.remove("service_tier"),
            fields,
        },
        ..ProviderOptions::default()
    };
    let user = req
        .metadata
        .as_ref()
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(ChatRequest {
        origins,
        model: req.model,
        messages,
        raw_prompt: None,
        reasoning,
        sampling: SamplingParams {
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k.filter(|&k| k > 0),
            ..SamplingParams::default()
        },
        max_tokens: Some(req.max_tokens),
        stop: req.stop_sequences,
        n: 1,
        stream: req.stream.unwrap_or(false),
        tools,
        tool_choice,
        parallel_tool_calls: parallel,
        response_format: ResponseFormat::Text,
        logprobs: None,
        ignore_eos: false,
        user,
        debug: false,
        options,
        context: Default::default(),
    })
}

/// The scalar fields' ranges, as Anthropic words their refusals.
fn check_scalars(req: &wire::MessagesRequest) -> Result<(), Error> {
    if req.model.trim().is_empty() {
        return Err(Error::invalid_param(
            "model",
            "model: a model name is required",
        ));
    }
    if req.max_tokens == 0 {
        return Err(Error::invalid_param(
            "max_tokens",
            "max_tokens: must be at least 1",
        ));
    }
    if req.messages.is_empty() {
        return Err(Error::invalid_param(
            "messages",
            "messages: at least one message is required",
        ));
    }
    if let Some(t) = req.temperature.filter(|t| !(0.0..=1.0).contains(t)) {
        return Err(Error::invalid_param(
            "temperature",
            format!("temperature: range: 0..1, got {t}"),
        ));
    }
    if let Some(p) = req.top_p.filter(|p| !(0.0..=1.0).contains(p)) {
        return Err(Error::invalid_param(
            "top_p",
            format!("top_p: range: 0..1, got {p}"),
        ));
    }
    Ok(())
}

/// The system prompt and the messages as IR messages, with where each part came from.
fn messages_of(
    system: Option<&Value>,
    wire_messages: Vec<wire::Message>,
) -> Result<(Vec<Message>, PartOrigins), Error> {
    let mut messages = Vec::new();
    let mut origins = PartOrigins::default();
    if let Some(system) = system {
        let text = text_of(system, "system")?;
        if !text.is_empty() {
            origins.message(messages.len(), "system");
            messages.push(Message::text(Role::System, text));
        }
    }
    for (i, m) in wire_messages.into_iter().enumerate() {
        message_of(i, m, &mut messages, &mut origins)?;
    }
    Ok((messages, origins))
}

/// Message `i`: one IR message, plus a tool message for each tool result it carries.
fn message_of(
    i: usize,
    m: wire::Message,
    messages: &mut Vec<Message>,
    origins: &mut PartOrigins,
) -> Result<(), Error> {
    let role = role_of(i, &m.role)?;
    let blocks = match m.content {
        wire::Content::Text(t) => vec![wire::ContentBlock::Text { text: t }],
        wire::Content::Blocks(b) => b,
    };
    let mut msg = Message::empty(role);
    // Images' (part index in `msg`, the caller's path of that block): errors name them.
    let mut parts_at: Vec<(usize, String)> = Vec::new();
    for (j, b) in blocks.into_iter().enumerate() {
        let at = format!("messages.{i}.content.{j}");
        match b {
            wire::ContentBlock::Text { text } => msg.content.push(ContentPart::Text(text)),
            wire::ContentBlock::Image { source } => {
                parts_at.push((msg.content.len(), at));
                msg.content.push(ContentPart::Image(match source {
                    wire::ImageSource::Base64 { media_type, data } => {
                        ImageSource::Base64 { media_type, data }
                    }
                    wire::ImageSource::Url { url } => ImageSource::Url(url),
                }))
            }
            wire::ContentBlock::ToolUse { id, name, input } if role == Role::Assistant => {
                msg.tool_calls.push(ToolCall {
                    id,
                    name,
                    arguments: input.to_string(),
                })
            }
            wire::ContentBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
            } if role == Role::User => {
                // Each result is a tool message of its own, answering its call.
                let text = text_of(
                    content.as_ref().unwrap_or(&Value::Null),
                    &format!("{at}.content"),
                )?;
                origins.message(messages.len(), at.clone());
                origins.part(messages.len(), 0, format!("{at}.content"));
                messages.push(Message {
                    tool_call_id: Some(tool_use_id),
                    is_error: is_error == Some(true),
                    ..Message::text(Role::Tool, text)
                });
            }
            wire::ContentBlock::Thinking {
                thinking,
                signature,
            } if role == Role::Assistant => {
                msg.reasoning
                    .get_or_insert_with(String::new)
                    .push_str(&thinking);
                if signature.is_some() {
                    msg.reasoning_signature = signature;
                }
            }
            wire::ContentBlock::RedactedThinking { .. } if role == Role::Assistant => {}
            _ => {
                return Err(Error::invalid_param(
                    format!("{at}.type"),
                    format!(
                        "{at}: this block type is not allowed in a {} message",
                        role.as_str()
                    ),
                ))
            }
        }
    }
    if !msg.content.is_empty() || !msg.tool_calls.is_empty() || msg.reasoning.is_some() {
        origins.message(messages.len(), format!("messages.{i}"));
        for (part, at) in parts_at {
            origins.part(messages.len(), part, at);
        }
        messages.push(msg);
    }
    Ok(())
}

fn role_of(i: usize, role: &str) -> Result<Role, Error> {
    match role {
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        other => Err(Error::invalid_param(
            format!("messages.{i}.role"),
            format!("messages.{i}.role: must be \"user\" or \"assistant\", got {other:?}"),
        )),
    }
}

fn tools_of(wire_tools: Vec<wire::Tool>) -> Result<Vec<ToolDef>, Error> {
    let tools: Vec<ToolDef> = wire_tools
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            if !t.input_schema.is_object() {
                return Err(Error::invalid_param(
                    format!("tools.{i}.input_schema"),
                    format!("tools.{i}.input_schema: must be a JSON Schema object"),
                ));
            }
            Ok(ToolDef {
                name: t.name,
                description: t.description,
                parameters: t.input_schema,
                strict: false,
            })
        })
        .collect::<Result<_, _>>()?;
    for (i, t) in tools.iter().enumerate() {
        if tools.iter().take(i).any(|o| o.name == t.name) {
            return Err(Error::invalid_param(
                format!("tools.{i}.name"),
                format!(
                    "tools: tool names must be unique ({:?} appears twice)",
                    t.name
                ),
            ));
        }
    }
    Ok(tools)
}

/// `tool_choice` and whether parallel calls are allowed.
fn tool_choice_of(
    choice: Option<wire::ToolChoice>,
    tools: &[ToolDef],
) -> Result<(ToolChoice, bool), Error> {
    let (tool_choice, parallel) = match choice {
        None => (
            if tools.is_empty() {
                ToolChoice::None
            } else {
                ToolChoice::Auto
            },
            true,
        ),
        Some(wire::ToolChoice::Auto {
            disable_parallel_tool_use,
        }) => (ToolChoice::Auto, disable_parallel_tool_use != Some(true)),
        Some(wire::ToolChoice::Any {
            disable_parallel_tool_use,
        }) => (
            ToolChoice::Required,
            disable_parallel_tool_use != Some(true),
        ),
        Some(wire::ToolChoice::Tool {
            name,
            disable_parallel_tool_use,
        }) => {
            if !tools.iter().any(|t| t.name == name) {
                return Err(Error::invalid_param(
                    "tool_choice.name",
                    format!("tool_choice.name: {name:?} is not among the tools"),
                ));
            }
            (
                ToolChoice::Named(name),
                disable_parallel_tool_use != Some(true),
            )
        }
        Some(wire::ToolChoice::None) => (ToolChoice::None, true),
    };
    if matches!(tool_choice, ToolChoice::Required) && tools.is_empty() {
        return Err(Error::invalid_param(
            "tool_choice",
            "tool_choice: \"any\" needs tools",
        ));
    }
    Ok((tool_choice, parallel))
}

/// `{"type":"enabled","budget_tokens":N}` or `{"type":"disabled"}`.
fn reasoning_of(thinking: Option<&Value>) -> Result<Reasoning, Error> {
    Ok(match thinking {
        None | Some(Value::Null) => Reasoning::default(),
        Some(t) => match t.get("type").and_then(Value::as_str) {
            Some("disabled") => Reasoning {
                budget_tokens: Some(0),
                ..Reasoning::default()
            },
            Some("enabled") => Reasoning {
                budget_tokens: Some(
                    t.get("budget_tokens")
                        .and_then(Value::as_u64)
                        .and_then(|b| u32::try_from(b).ok())
                        .ok_or_else(|| {
                            Error::invalid_param(
                                "thinking.budget_tokens",
                                "thinking.budget_tokens: Field required (a whole number of tokens)",
                            )
                        })?,
                ),
                ..Reasoning::default()
            },
            _ => {
                return Err(Error::invalid_param(
                    "thinking.type",
                    "thinking.type: Input should be 'enabled' or 'disabled'",
                ))
            }
        },
    })
}
