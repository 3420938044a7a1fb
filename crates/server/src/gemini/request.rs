//! Gemini generateContent request -> IR, parameters named as Gemini does.

use parlance_core::ir::Effort;
use parlance_core::ir::{
    ChatRequest, ContentPart, GeminiOptions, ImageSource, Message, PartOrigins, ProviderOptions,
    Reasoning, ResponseFormat, Role, SamplingParams, ToolCall, ToolChoice, ToolDef,
};
use parlance_core::Error;
use parlance_core::ParamPath;
use parlance_protocol::gemini as wire;
use serde_json::{json, Map, Value};

/// Gemini's OpenAPI-style schema (`"type": "OBJECT"`) as JSON Schema (`"object"`).
fn json_schema(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("type", Value::String(t)) => (k.clone(), json!(t.to_ascii_lowercase())),
                    _ => (k.clone(), json_schema(v)),
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(json_schema).collect()),
        other => other.clone(),
    }
}

pub(super) fn to_ir(
    model: &str,
    req: wire::GenerateContentRequest,
    stream: bool,
) -> Result<ChatRequest, Error> {
    if req.contents.is_empty() {
        return Err(Error::invalid_param(
            "contents",
            "* GenerateContentRequest.contents: contents is not specified",
        ));
    }
    let (messages, origins) = messages_of(req.system_instruction.as_ref(), req.contents)?;
    let (tools, tool_choice) = tools_of(&req.tools, req.tool_config.as_ref())?;
    let g = req.generation_config.unwrap_or_default();
    let (n, response_format) = check_generation(&g)?;
    let options = options_of(req.extra, &g);
    Ok(ChatRequest {
        origins,
        model: model.to_string(),
        messages,
        raw_prompt: None,
        reasoning: reasoning_of(&g)?,
        sampling: SamplingParams {
            temperature: g.temperature,
            top_p: g.top_p,
            top_k: g.top_k.filter(|&k| k > 0),
            presence_penalty: g.presence_penalty,
            frequency_penalty: g.frequency_penalty,
            seed: g.seed.map(|s| s as u64),
            ..SamplingParams::default()
        },
        max_tokens: g.max_output_tokens,
        stop: g.stop_sequences,
        n,
        stream,
        tools,
        tool_choice,
        parallel_tool_calls: true,
        response_format,
        logprobs: None,
        ignore_eos: false,
        user: None,
        debug: false,
        options,
        context: Default::default(),
    })
}

/// What only a Gemini upstream takes: the thinking config as given, safety settings and
/// the other top-level fields (`cachedContent`, `labels`); not the request's own
/// addressing (`model`, countTokens' wrapper).
fn options_of(mut extra: Map<String, Value>, g: &wire::GenerationConfig) -> ProviderOptions {
    extra.remove("model");
    extra.remove("generateContentRequest");
    ProviderOptions {
        gemini: GeminiOptions {
            thinking_config: g.thinking_config.clone(),
            safety_settings: extra.remove("safetySettings"),
            fields: extra,
        },
        ..ProviderOptions::default()
    }
}

/// The system instruction and the contents as IR messages, with where each part came
/// from.
fn messages_of(
    system: Option<&wire::Content>,
    contents: Vec<wire::Content>,
) -> Result<(Vec<Message>, PartOrigins), Error> {
    let mut messages = Vec::new();
    let mut origins = PartOrigins::default();
    if let Some(sys) = system {
        let text: Vec<&str> = sys.parts.iter().filter_map(|p| p.text.as_deref()).collect();
        if !text.is_empty() {
            origins.message(messages.len(), "systemInstruction");
            messages.push(Message::text(Role::System, text.join("\n")));
        }
    }
    // Calls so far, newest last: a functionResponse without an id answers the latest
    // call of its name.
    let mut calls: Vec<(String, String)> = Vec::new();
    for (i, c) in contents.into_iter().enumerate() {
        content_of(i, c, &mut calls, &mut messages, &mut origins)?;
    }
    Ok((messages, origins))
}

/// Content `i`: one IR message, plus a tool message for each function response.
fn content_of(
    i: usize,
    c: wire::Content,
    calls: &mut Vec<(String, String)>,
    messages: &mut Vec<Message>,
    origins: &mut PartOrigins,
) -> Result<(), Error> {
    let role = match c.role.as_deref() {
        None | Some("user") => Role::User,
        Some("model") => Role::Assistant,
        Some(other) => {
            return Err(Error::invalid_param(
                ParamPath::field("contents").at(i).then("role"),
                format!("* GenerateContentRequest.contents[{i}].role: must be \"user\" or \"model\", got {other:?}"),
            ))
        }
    };
    let mut msg = Message::empty(role);
    let mut parts_at: Vec<(usize, ParamPath)> = Vec::new();
    for (j, p) in c.parts.into_iter().enumerate() {
        let at = ParamPath::field("contents").at(i).then("parts").at(j);
        if let Some(t) = p.text {
            if p.thought == Some(true) {
                msg.reasoning.get_or_insert_with(String::new).push_str(&t);
            } else {
                msg.content.push(ContentPart::Text(t));
            }
        } else if let Some(b) = p.inline_data {
            parts_at.push((msg.content.len(), at));
            msg.content.push(ContentPart::Image(ImageSource::Base64 {
                media_type: b.mime_type,
                data: standard_base64(b.data),
            }));
        } else if let Some(f) = p.file_data {
            parts_at.push((msg.content.len(), at));
            msg.content
                .push(ContentPart::Image(ImageSource::Url(f.file_uri)));
        } else if let Some(fc) = p.function_call {
            let id = fc.id.unwrap_or_else(parlance_core::tools::new_call_id);
            calls.push((id.clone(), fc.name.clone()));
            msg.tool_calls.push(ToolCall {
                id,
                name: fc.name,
                arguments: fc.args.to_string(),
            });
        } else if let Some(fr) = p.function_response {
            let answer = function_response(&at, fr, calls)?;
            origins.message(messages.len(), at.clone());
            messages.push(answer);
        } else {
            return Err(Error::invalid_param(
                at.clone(),
                format!("* {at}: an empty or unsupported part"),
            ));
        }
    }
    if !msg.content.is_empty() || !msg.tool_calls.is_empty() || msg.reasoning.is_some() {
        origins.message(messages.len(), ParamPath::field("contents").at(i));
        for (part, at) in parts_at {
            origins.part(messages.len(), part, at);
        }
        messages.push(msg);
    }
    Ok(())
}

/// A functionResponse as a tool message; without an id it answers the latest call of
/// its name.
fn function_response(
    at: &str,
    fr: wire::FunctionResponse,
    calls: &[(String, String)],
) -> Result<Message, Error> {
    let id = fr
        .id
        .or_else(|| {
            calls
                .iter()
                .rev()
                .find(|(_, n)| *n == fr.name)
                .map(|(id, _)| id.clone())
        })
        .ok_or_else(|| {
            Error::invalid_param(
                format!("{at}.functionResponse.name"),
                format!(
                    "* {at}: functionResponse {:?} answers no earlier functionCall",
                    fr.name
                ),
            )
        })?;
    Ok(Message {
        name: Some(fr.name),
        tool_call_id: Some(id),
        ..Message::text(Role::Tool, fr.response.to_string())
    })
}

/// The declared functions (as many as `allowedFunctionNames` leaves) and the choice
/// among them.
fn tools_of(
    wire_tools: &[wire::Tool],
    config: Option<&wire::ToolConfig>,
) -> Result<(Vec<ToolDef>, ToolChoice), Error> {
    let mut tools: Vec<ToolDef> = wire_tools
        .iter()
        .flat_map(|t| &t.function_declarations)
        .map(|d| ToolDef {
            name: d.name.clone(),
            description: d.description.clone(),
            parameters: d
                .parameters_json_schema
                .clone()
                .or_else(|| d.parameters.as_ref().map(json_schema))
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            strict: false,
        })
        .collect();
    let tool_choice = match config.map(|c| &c.function_calling_config) {
        None => {
            if tools.is_empty() {
                ToolChoice::None
            } else {
                ToolChoice::Auto
            }
        }
        Some(f) => {
            if !f.allowed_function_names.is_empty() {
                tools.retain(|t| f.allowed_function_names.contains(&t.name));
            }
            match f.mode.to_ascii_uppercase().as_str() {
                "" | "AUTO" | "MODE_UNSPECIFIED" | "VALIDATED" => ToolChoice::Auto,
                "NONE" => ToolChoice::None,
                "ANY" => match tools.as_slice() {
                    [only] => ToolChoice::Named(only.name.clone()),
                    [] => {
                        return Err(Error::invalid_param(
                            "toolConfig",
                            "* toolConfig: mode ANY needs function declarations",
                        ))
                    }
                    _ => ToolChoice::Required,
                },
                other => {
                    return Err(Error::invalid_param(
                        "toolConfig.functionCallingConfig.mode",
                        format!("* toolConfig.functionCallingConfig.mode: unknown mode {other:?}"),
                    ))
                }
            }
        }
    };
    Ok((tools, tool_choice))
}

/// `candidateCount` and the response format, after checking the ranges Gemini checks.
fn check_generation(g: &wire::GenerationConfig) -> Result<(u32, ResponseFormat), Error> {
    if let Some(t) = g.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
        return Err(Error::invalid_param(
            "generationConfig.temperature",
            format!("* generationConfig.temperature: must be in [0, 2], got {t}"),
        ));
    }
    let n = g.candidate_count.unwrap_or(1);
    if !(1..=8).contains(&n) {
        return Err(Error::invalid_param(
            "generationConfig.candidateCount",
            format!("* generationConfig.candidateCount: must be 1..8, got {n}"),
        ));
    }
    let schema = g
        .response_json_schema
        .clone()
        .or_else(|| g.extra.get("responseSchema").map(json_schema));
    let response_format = match (g.response_mime_type.as_deref(), schema) {
        (Some("application/json"), Some(schema)) => ResponseFormat::JsonSchema {
            name: "response".into(),
            schema,
            strict: false,
        },
        (Some("application/json"), None) => ResponseFormat::JsonObject,
        _ => ResponseFormat::Text,
    };
    Ok((n, response_format))
}

/// thinkingBudget -1 is Gemini's "dynamic": the model's default.
fn reasoning_of(g: &wire::GenerationConfig) -> Result<Reasoning, Error> {
    let level = g
        .thinking_config
        .as_ref()
        .and_then(|t| t.get("thinkingLevel").or_else(|| t.get("thinking_level")))
        .and_then(Value::as_str);
    let effort = match level {
        None => None,
        Some(l) => Some(Effort::parse(&l.to_ascii_lowercase()).ok_or_else(|| {
            Error::invalid_param(
                "generationConfig.thinkingConfig.thinkingLevel",
                format!(
                    "Invalid value at 'generation_config.thinking_config.thinking_level' ({l:?}): use one of {}.",
                    Effort::WORDS
                ),
            )
        })?),
    };
    Ok(Reasoning {
        budget_tokens: g
            .thinking_config
            .as_ref()
            .and_then(|t| t.get("thinkingBudget").or_else(|| t.get("thinking_budget")))
            .and_then(Value::as_u64)
            .and_then(|b| u32::try_from(b).ok()),
        effort,
    })
}

/// Gemini takes base64 in either alphabet (the google-genai SDK sends the URL-safe one,
/// `-` and `_`) and with or without padding; the IR carries the standard alphabet.
fn standard_base64(data: String) -> String {
    if !data.contains(['-', '_']) && data.len().is_multiple_of(4) {
        return data;
    }
    let mut s: String = data
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    let unpadded = s.trim_end_matches('=').len();
    s.truncate(unpadded);
    while !s.len().is_multiple_of(4) {
        s.push('=');
    }
    s
}
