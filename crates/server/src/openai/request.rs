//! OpenAI chat request -> IR, validated once. After this, nothing downstream needs to
//! re-check ranges or shapes.

use parlance_core::ir::Effort;
use parlance_core::ir::{
    ChatRequest, ContentPart, ImageSource, Message, PartOrigins, ProviderOptions, Reasoning,
    ResponseFormat, Role, SamplingParams, ToolCall, ToolChoice, ToolDef,
};
use parlance_core::Error;
use parlance_core::ParamPath;
use parlance_protocol::openai as wire;
use serde_json::Value;

pub(crate) const MAX_CHOICES: u32 = 8;
pub(crate) const MAX_STOPS: usize = 4;

pub fn to_ir(mut req: wire::ChatCompletionRequest) -> Result<ChatRequest, Error> {
    if req.model.trim().is_empty() {
        return Err(Error::invalid_param(
            "model",
            "'model' must name a model; GET /v1/models lists them.",
        ));
    }
    if req.messages.is_empty() {
        return Err(Error::invalid_param(
            "messages",
            "'messages' must contain at least one message.",
        ));
    }
    let messages = std::mem::take(&mut req.messages)
        .into_iter()
        .enumerate()
        .map(|(i, m)| message(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    check_ranges(&req)?;
    let n = choices(&req)?;
    let max_tokens = max_tokens(&req)?;
    let stop = stops(req.stop.take())?;
    let logit_bias = logit_bias(req.logit_bias.take())?;
    let tools = tools(req.tools.take())?;
    let tool_choice = tool_choice(req.tool_choice.take(), &tools)?;
    let response_format = format_of(&mut req)?;
    let reasoning = reasoning(&mut req)?;
    Ok(ChatRequest {
        model: req.model,
        origins: PartOrigins::same_as_ir(),
        messages,
        raw_prompt: None,
        reasoning,
        sampling: SamplingParams {
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k.filter(|&k| k > 0),
            min_p: req.min_p,
            presence_penalty: req.presence_penalty,
            frequency_penalty: req.frequency_penalty,
            repetition_penalty: req.repetition_penalty,
            logit_bias,
            seed: req.seed.map(|s| s as u64),
        },
        max_tokens,
        stop,
        n,
        stream: req.stream.unwrap_or(false),
        tools,
        tool_choice,
        parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
        response_format,
        logprobs: (req.logprobs == Some(true)).then(|| req.top_logprobs.unwrap_or(0)),
        ignore_eos: req.ignore_eos.unwrap_or(false),
        user: req.user,
        debug: false,
        options: ProviderOptions::from_unrecognised(req.extra),
        context: Default::default(),
    })
}

/// Sampling settings within the ranges OpenAI takes.
fn check_ranges(req: &wire::ChatCompletionRequest) -> Result<(), Error> {
    range("temperature", req.temperature, 0.0, 2.0)?;
    range("top_p", req.top_p, 0.0, 1.0)?;
    range("min_p", req.min_p, 0.0, 1.0)?;
    range("presence_penalty", req.presence_penalty, -2.0, 2.0)?;
    range("frequency_penalty", req.frequency_penalty, -2.0, 2.0)?;
    if let Some(rp) = req.repetition_penalty {
        if !(rp > 0.0 && rp <= 10.0) {
            return Err(Error::invalid_param(
                "repetition_penalty",
                format!("'repetition_penalty' must be greater than 0 and at most 10, got {rp}."),
            ));
        }
    }
    if let Some(k) = req.top_k {
        if k < -1 {
            return Err(Error::invalid_param(
                "top_k",
                format!("'top_k' must be >= 0 (0 or -1 disables it), got {k}."),
            ));
        }
    }
    if let Some(k) = req.top_logprobs {
        if k > 20 {
            return Err(Error::invalid_param(
                "top_logprobs",
                format!("'top_logprobs' must be between 0 and 20, got {k}."),
            ));
        }
        if req.logprobs != Some(true) {
            return Err(Error::invalid_param(
                "top_logprobs",
                "'top_logprobs' requires 'logprobs' to be true.",
            ));
        }
    }
    if let Some(u) = req.update_interval {
        if !(u.is_finite() && u >= 0.0) {
            return Err(Error::invalid_param(
                "update_interval",
                "'update_interval' must be a number of seconds >= 0.",
            ));
        }
    }
    Ok(())
}

fn choices(req: &wire::ChatCompletionRequest) -> Result<u32, Error> {
    let n = req.n.unwrap_or(1);
    if !(1..=MAX_CHOICES).contains(&n) {
        return Err(Error::invalid_param(
            "n",
            format!("'n' must be between 1 and {MAX_CHOICES}, got {n}."),
        ));
    }
    Ok(n)
}

/// `max_completion_tokens`, else the older `max_tokens`.
fn max_tokens(req: &wire::ChatCompletionRequest) -> Result<Option<u32>, Error> {
    let max_tokens = req.max_completion_tokens.or(req.max_tokens);
    if max_tokens == Some(0) {
        let param = if req.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        return Err(Error::invalid_param(
            param,
            format!("'{param}' must be at least 1."),
        ));
    }
    Ok(max_tokens)
}

fn stops(given: Option<wire::StopSequences>) -> Result<Vec<String>, Error> {
    let stop = given.map(wire::StopSequences::into_vec).unwrap_or_default();
    if stop.len() > MAX_STOPS {
        return Err(Error::invalid_param(
            "stop",
            format!(
                "'stop' takes at most {MAX_STOPS} sequences, got {}.",
                stop.len()
            ),
        ));
    }
    Ok(stop)
}

fn logit_bias(
    given: Option<std::collections::BTreeMap<String, f32>>,
) -> Result<Vec<(i32, f32)>, Error> {
    given
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let tok: i32 = k.trim().parse().map_err(|_| {
                Error::invalid_param(
                    "logit_bias",
                    format!("'logit_bias' keys must be token ids, got {k:?}."),
                )
            })?;
            if !(-100.0..=100.0).contains(&v) {
                return Err(Error::invalid_param(
                    "logit_bias",
                    format!(
                        "'logit_bias' values must be between -100 and 100, got {v} for token {k}."
                    ),
                ));
            }
            Ok((tok, v))
        })
        .collect()
}

fn tools(given: Option<Vec<wire::Tool>>) -> Result<Vec<ToolDef>, Error> {
    let tools = given
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, t)| tool(i, t))
        .collect::<Result<Vec<_>, _>>()?;
    // A call names its function; two tools of one name would make that ambiguous.
    for (i, t) in tools.iter().enumerate() {
        if let Some(first) = tools.iter().take(i).position(|o| o.name == t.name) {
            return Err(Error::invalid_param(
                ParamPath::field("tools")
                    .at(i)
                    .then("function")
                    .then("name"),
                format!(
                    "tools[{i}] and tools[{first}] are both named {:?}; tool names must be unique.",
                    t.name
                ),
            ));
        }
    }
    Ok(tools)
}

/// The response format; an extension field `grammar` (a Lark grammar, as llguidance
/// takes it) instead of one.
fn format_of(req: &mut wire::ChatCompletionRequest) -> Result<ResponseFormat, Error> {
    let response_format = match req.extra.remove("grammar") {
        None | Some(Value::Null) => response_format(req.response_format.take())?,
        Some(Value::String(g)) if !g.trim().is_empty() => ResponseFormat::Grammar(g),
        Some(_) => {
            return Err(Error::invalid_param(
                "grammar",
                "'grammar' must be a Lark grammar string.",
            ))
        }
    };
    Ok(response_format)
}

fn reasoning(req: &mut wire::ChatCompletionRequest) -> Result<Reasoning, Error> {
    let reasoning = match req.extra.remove("reasoning_effort") {
        None | Some(Value::Null) => Reasoning::default(),
        Some(Value::String(e)) if Effort::parse(&e).is_some() => Reasoning {
            effort: Effort::parse(&e),
            ..Reasoning::default()
        },
        Some(_) => {
            return Err(Error::invalid_param(
                "reasoning_effort",
                format!("'reasoning_effort' must be one of {}.", Effort::WORDS),
            ))
        }
    };
    Ok(reasoning)
}

pub(crate) fn range(param: &str, value: Option<f32>, lo: f32, hi: f32) -> Result<(), Error> {
    match value {
        Some(v) if !(lo..=hi).contains(&v) => Err(Error::invalid_param(
            param,
            format!("'{param}' must be between {lo} and {hi}, got {v}."),
        )),
        _ => Ok(()),
    }
}

fn message(i: usize, m: wire::ChatMessage) -> Result<Message, Error> {
    let role = match m.role.as_str() {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        other => {
            return Err(Error::invalid_param(
                ParamPath::message(i).then("role"),
                format!("Unsupported role {other:?} in messages[{i}]; use system, developer, user, assistant or tool."),
            ))
        }
    };
    let content = match m.content {
        None => Vec::new(),
        Some(wire::MessageContent::Text(t)) => vec![ContentPart::Text(t)],
        Some(wire::MessageContent::Parts(parts)) => parts
            .into_iter()
            .enumerate()
            .map(|(j, p)| content_part(i, j, p))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let tool_calls: Vec<ToolCall> = m
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .map(|c| ToolCall {
            id: c.id,
            name: c.function.name,
            arguments: c.function.arguments,
        })
        .collect();
    if content.is_empty() && tool_calls.is_empty() && role != Role::Assistant {
        return Err(Error::invalid_param(
            ParamPath::message(i).then("content"),
            format!("messages[{i}] ({}) must have content.", role.as_str()),
        ));
    }
    if role == Role::Tool && m.tool_call_id.as_deref().unwrap_or("").is_empty() {
        return Err(Error::invalid_param(
            ParamPath::message(i).then("tool_call_id"),
            format!("messages[{i}] has role 'tool' and must carry the 'tool_call_id' it answers."),
        ));
    }
    Ok(Message {
        role,
        content,
        name: m.name,
        tool_calls,
        tool_call_id: m.tool_call_id,
        reasoning: m.reasoning_content,
        reasoning_signature: None,
        is_error: false,
    })
}

fn content_part(i: usize, j: usize, p: wire::ContentPart) -> Result<ContentPart, Error> {
    let param = ParamPath::message_part(i, j);
    match p.kind.as_str() {
        "text" | "input_text" => p.text.map(ContentPart::Text).ok_or_else(|| {
            Error::invalid_param(
                format!("{param}.text"),
                format!("{param} is a text part without 'text'."),
            )
        }),
        "image_url" => {
            let url = p.image_url.map(|u| u.url).ok_or_else(|| {
                Error::invalid_param(
                    format!("{param}.image_url"),
                    format!("{param} is an image part without 'image_url.url'."),
                )
            })?;
            image_source(&url)
                .map(ContentPart::Image)
                .map_err(|m| Error::invalid_param(format!("{param}.image_url.url"), m))
        }
        other => Err(Error::invalid_param(
            format!("{param}.type"),
            format!(
                "Unsupported content part type {other:?} in {param}; supported: text, image_url."
            ),
        )),
    }
}

pub(crate) fn image_source(url: &str) -> Result<ImageSource, String> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or("a data URL must look like data:image/png;base64,....")?;
        let media_type = meta
            .strip_suffix(";base64")
            .ok_or("only base64 data URLs are supported (data:<type>;base64,...)")?;
        if !media_type.starts_with("image/") {
            return Err(format!("expected an image media type, got {media_type:?}"));
        }
        return Ok(ImageSource::Base64 {
            media_type: media_type.to_string(),
            data: data.to_string(),
        });
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(ImageSource::Url(url.to_string()));
    }
    Err("an image URL must be http(s) or a base64 data URL".to_string())
}

fn tool(i: usize, t: wire::Tool) -> Result<ToolDef, Error> {
    if t.kind != "function" {
        return Err(Error::invalid_param(
            ParamPath::field("tools").at(i).then("type"),
            format!(
                "tools[{i}] has type {:?}; only \"function\" is supported.",
                t.kind
            ),
        ));
    }
    let name = t.function.name;
    check_tool_name(
        &name,
        &ParamPath::field("tools")
            .at(i)
            .then("function")
            .then("name"),
    )?;
    let parameters = t
        .function
        .parameters
        .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}}));
    if !parameters.is_object() {
        return Err(Error::invalid_param(
            ParamPath::field("tools")
                .at(i)
                .then("function")
                .then("parameters"),
            "'parameters' must be a JSON Schema object.",
        ));
    }
    Ok(ToolDef {
        name,
        description: t.function.description,
        parameters,
        strict: t.function.strict.unwrap_or(false),
    })
}

pub(crate) fn check_tool_name(name: &str, param: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        return Err(Error::invalid_param(
            param,
            format!("tool name {name:?} must be 1-64 characters of a-z, A-Z, 0-9, _ and -."),
        ));
    }
    Ok(())
}

fn tool_choice(choice: Option<wire::ToolChoice>, tools: &[ToolDef]) -> Result<ToolChoice, Error> {
    let choice = match choice {
        None => return Ok(if tools.is_empty() { ToolChoice::None } else { ToolChoice::Auto }),
        Some(wire::ToolChoice::Mode(m)) => match m.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => return Err(Error::invalid_param("tool_choice", format!("'tool_choice' must be \"auto\", \"none\", \"required\" or a named function, got {other:?}."))),
        },
        Some(wire::ToolChoice::Named(n)) => ToolChoice::Named(n.function.name),
    };
    check_tool_choice(choice, tools)
}

/// A choice that needs tools must have them, and a named one must be among them.
pub(crate) fn check_tool_choice(
    choice: ToolChoice,
    tools: &[ToolDef],
) -> Result<ToolChoice, Error> {
    match &choice {
        ToolChoice::Required if tools.is_empty() => Err(Error::invalid_param(
            "tool_choice",
            "'tool_choice' is \"required\" but no 'tools' were given.",
        )),
        ToolChoice::Named(name) if !tools.iter().any(|t| &t.name == name) => {
            Err(Error::invalid_param(
                "tool_choice",
                format!("'tool_choice' names {name:?}, which is not among 'tools'."),
            ))
        }
        _ => Ok(choice),
    }
}

fn response_format(rf: Option<wire::ResponseFormat>) -> Result<ResponseFormat, Error> {
    let Some(rf) = rf else {
        return Ok(ResponseFormat::Text);
    };
    match rf.kind.as_str() {
        "text" => Ok(ResponseFormat::Text),
        "json_object" => Ok(ResponseFormat::JsonObject),
        "json_schema" => {
            let js = rf.json_schema.ok_or_else(|| {
                Error::invalid_param(
                    "response_format.json_schema",
                    "'response_format' of type json_schema needs 'json_schema'.",
                )
            })?;
            let schema = js.schema.unwrap_or(Value::Object(Default::default()));
            if !schema.is_object() {
                return Err(Error::invalid_param(
                    "response_format.json_schema.schema",
                    "'schema' must be a JSON Schema object.",
                ));
            }
            Ok(ResponseFormat::JsonSchema {
                name: js.name,
                schema,
                strict: js.strict.unwrap_or(false),
            })
        }
        other => Err(Error::invalid_param(
            "response_format.type",
            format!(
                "'response_format.type' must be text, json_object or json_schema, got {other:?}."
            ),
        )),
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;

/// Fuzzing (bounded, runs with `cargo test`): request bodies from arbitrary bytes and
/// from JSON close to valid requests: every failure is a 4xx naming what is wrong,
/// nothing panics.
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::body::parse_json;
    use proptest::prelude::*;
    use serde_json::json;

    fn values() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            "\\PC{0,8}".prop_map(Value::String),
            Just(json!("user")),
            Just(json!("function")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    const KEYS: &[&str] = &[
        "messages",
        "temperature",
        "top_p",
        "n",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "logit_bias",
        "tools",
        "tool_choice",
        "response_format",
        "logprobs",
        "top_logprobs",
        "stream",
        "seed",
        "grammar",
        "repetition_penalty",
        "update_interval",
        "top_k",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn arbitrary_bytes_are_4xx_or_a_request(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Err(e) = parse_json::<wire::ChatCompletionRequest>(&bytes) {
                prop_assert!((400..500).contains(&e.status()));
            }
        }

        #[test]
        fn near_valid_requests_are_4xx_or_a_request(k in 0..KEYS.len(), v in values(), k2 in 0..KEYS.len(), v2 in values()) {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            body[KEYS[k]] = v;
            body[KEYS[k2]] = v2;
            let bytes = serde_json::to_vec(&body).unwrap();
            match parse_json::<wire::ChatCompletionRequest>(&bytes) {
                Err(e) => prop_assert!((400..500).contains(&e.status()) && e.status() != 404),
                Ok(req) => {
                    if let Err(e) = to_ir(req) {
                        prop_assert_eq!(e.status(), 400);
                        prop_assert!(!e.message.is_empty());
                    }
                }
            }
        }
    }
}
