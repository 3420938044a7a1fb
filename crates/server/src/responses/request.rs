//! Responses request -> IR. Input items (and stored ones, replayed for
//! `previous_response_id`) become messages; parameters are named as the Responses API
//! names them (`input[2].content[0]`, `text.format`, `max_output_tokens`).

use crate::openai::request::{check_tool_choice, check_tool_name, image_source, range};
use parlance_core::ir::Effort;
use parlance_core::ir::{
    ChatRequest, ContentPart, Message, PartOrigins, ProviderOptions, Reasoning, ResponseFormat,
    Role, SamplingParams, ToolCall, ToolChoice, ToolDef,
};
use parlance_core::Error;
use parlance_core::ParamPath;
use parlance_protocol::responses as wire;
use serde_json::{json, Value};

/// The request's own input items, normalized (a string input becomes one user message
/// item; every item gets an id) so they can be stored and replayed as they were.
pub(super) fn input_items(input: Option<Value>) -> Result<Vec<Value>, Error> {
    let items = match input {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![json!({"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": s}]})],
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(Error::invalid_param(
                "input",
                "'input' must be a string or a list of input items.",
            ))
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, mut item)| {
            let Some(obj) = item.as_object_mut() else {
                return Err(Error::invalid_param(
                    ParamPath::field("input").at(i),
                    format!("input[{i}] must be an object."),
                ));
            };
            if !obj.contains_key("type") && obj.contains_key("role") {
                obj.insert("type".into(), json!("message"));
            }
            // A message's string content is one text part, as OpenAI lists it back.
            if obj.get("type").and_then(Value::as_str) == Some("message") {
                if let Some(Value::String(s)) = obj.get("content") {
                    let kind = if obj.get("role").and_then(Value::as_str) == Some("assistant") {
                        "output_text"
                    } else {
                        "input_text"
                    };
                    let part = json!([{"type": kind, "text": s}]);
                    obj.insert("content".into(), part);
                }
            }
            if !obj.contains_key("id") {
                let prefix = match obj.get("type").and_then(Value::as_str) {
                    Some("function_call") => "fc",
                    Some("function_call_output") => "fco",
                    _ => "msg",
                };
                obj.insert("id".into(), json!(super::new_id(prefix)));
            }
            Ok(item)
        })
        .collect()
}

/// Appends the messages of `items` (input items, or a stored response's output items)
/// to `out`; `at` names the list in errors (`input`), and `origins`, when given,
/// records which item each message came from.
pub(super) fn push_messages(
    out: &mut Vec<Message>,
    items: &[Value],
    at: &str,
    mut origins: Option<&mut PartOrigins>,
) -> Result<(), Error> {
    for (i, item) in items.iter().enumerate() {
        let param = format!("{at}[{i}]");
        let before = out.len();
        let parts_before = out.last().map_or(0, |m| m.content.len());
        push_item(out, item, &param)?;
        if let Some(o) = origins.as_deref_mut() {
            // A new message, or this item merged into the last one (calls of one turn,
            // an answer after its reasoning).
            let index = out.len().saturating_sub(1);
            let first_part = if out.len() > before { 0 } else { parts_before };
            o.message(index, param.clone());
            // Errors name image parts (see `PartOrigins`).
            let parts = out.last().map_or(&[][..], |m| &m.content[..]);
            for (j, part) in parts.iter().enumerate().skip(first_part) {
                if matches!(part, ContentPart::Image(_)) {
                    o.part(index, j, format!("{param}.content[{}]", j - first_part));
                }
            }
        }
    }
    Ok(())
}

/// One input item's message(s), appended to `out`.
fn push_item(out: &mut Vec<Message>, item: &Value, param: &str) -> Result<(), Error> {
    {
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        match kind {
            "message" => {
                let m = message(item, param)?;
                // The reasoning item before an answer belongs to that answer's turn.
                match out.last_mut() {
                    Some(last)
                        if m.role == Role::Assistant
                            && last.role == Role::Assistant
                            && last.reasoning.is_some()
                            && last.content.is_empty()
                            && last.tool_calls.is_empty() =>
                    {
                        last.content = m.content
                    }
                    _ => out.push(m),
                }
            }
            "function_call" => {
                let call = ToolCall {
                    id: str_field(item, "call_id", param)?.to_string(),
                    name: str_field(item, "name", param)?.to_string(),
                    arguments: item
                        .get("arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}")
                        .to_string(),
                };
                // Calls made in one turn are one assistant message with several calls.
                match out.last_mut() {
                    Some(m) if m.role == Role::Assistant && m.tool_call_id.is_none() => {
                        m.tool_calls.push(call)
                    }
                    _ => out.push(Message {
                        content: Vec::new(),
                        tool_calls: vec![call],
                        ..Message::text(Role::Assistant, "")
                    }),
                }
            }
            "function_call_output" => {
                let call_id = str_field(item, "call_id", param)?.to_string();
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect(),
                    _ => {
                        return Err(Error::invalid_param(
                            format!("{param}.output"),
                            format!("{param} is a function_call_output without 'output'."),
                        ))
                    }
                };
                out.push(Message {
                    tool_call_id: Some(call_id),
                    ..Message::text(Role::Tool, output)
                });
            }
            // Earlier reasoning goes back with the turn it led to: providers that sign
            // it (`encrypted_content`) need it in later turns.
            "reasoning" => {
                let text: String = item["content"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(item["summary"].as_array().into_iter().flatten())
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect();
                let signature = item
                    .get("encrypted_content")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string);
                if !text.is_empty() || signature.is_some() {
                    out.push(Message {
                        content: Vec::new(),
                        reasoning: Some(text),
                        reasoning_signature: signature,
                        ..Message::text(Role::Assistant, "")
                    });
                }
            }
            other => {
                return Err(Error::invalid_param(
                    format!("{param}.type"),
                    format!("Unsupported input item type {other:?} in {param}; supported: message, function_call, function_call_output, reasoning."),
                ))
            }
        }
    }
    Ok(())
}

fn str_field<'a>(item: &'a Value, field: &str, param: &str) -> Result<&'a str, Error> {
    item.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Error::invalid_param(
                format!("{param}.{field}"),
                format!("{param} needs a non-empty '{field}'."),
            )
        })
}

fn message(item: &Value, param: &str) -> Result<Message, Error> {
    let role = match item.get("role").and_then(Value::as_str) {
        Some("user") => Role::User,
        Some("system") | Some("developer") => Role::System,
        Some("assistant") => Role::Assistant,
        other => {
            return Err(Error::invalid_param(
                format!("{param}.role"),
                format!("{param} has role {other:?}; use user, system, developer or assistant."),
            ))
        }
    };
    let mut content = Vec::new();
    match item.get("content") {
        Some(Value::String(s)) => content.push(ContentPart::Text(s.clone())),
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let p = format!("{param}.content[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => {
                        content.push(ContentPart::Text(str_field(part, "text", &p)?.to_string()))
                    }
                    Some("refusal") => content.push(ContentPart::Text(
                        str_field(part, "refusal", &p)?.to_string(),
                    )),
                    Some("input_image") => {
                        let url = part
                            .get("image_url")
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                Error::invalid_param(
                                    format!("{p}.image_url"),
                                    format!("{p} is an input_image without 'image_url' (file_id is not supported)."),
                                )
                            })?;
                        content.push(ContentPart::Image(
                            image_source(url)
                                .map_err(|m| Error::invalid_param(format!("{p}.image_url"), m))?,
                        ));
                    }
                    other => {
                        return Err(Error::invalid_param(
                            format!("{p}.type"),
                            format!("Unsupported content type {other:?} in {p}; supported: input_text, output_text, input_image."),
                        ))
                    }
                }
            }
        }
        _ => {
            return Err(Error::invalid_param(
                format!("{param}.content"),
                format!("{param} needs 'content' (a string or a list of parts)."),
            ))
        }
    }
    Ok(Message {
        content,
        ..Message::text(role, "")
    })
}

fn tools(raw: &[Value]) -> Result<Vec<ToolDef>, Error> {
    let mut out: Vec<ToolDef> = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let param = ParamPath::field("tools").at(i);
        match t.get("type").and_then(Value::as_str) {
            Some("function") => {}
            other => {
                return Err(Error::invalid_param(
                    format!("{param}.type"),
                    format!(
                        "{param} has type {other:?}; only \"function\" tools are supported here."
                    ),
                ))
            }
        }
        let name = str_field(t, "name", &param)?.to_string();
        check_tool_name(&name, &format!("{param}.name"))?;
        if let Some(first) = out.iter().position(|o| o.name == name) {
            return Err(Error::invalid_param(
                format!("{param}.name"),
                format!("tools[{i}] and tools[{first}] are both named {name:?}; tool names must be unique."),
            ));
        }
        let parameters = match t.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(Error::invalid_param(
                    format!("{param}.parameters"),
                    "'parameters' must be a JSON Schema object.",
                ))
            }
        };
        out.push(ToolDef {
            name,
            description: t
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_string),
            parameters,
            strict: t.get("strict").and_then(Value::as_bool).unwrap_or(false),
        });
    }
    Ok(out)
}

fn tool_choice(choice: Option<&Value>, tools: &[ToolDef]) -> Result<ToolChoice, Error> {
    let choice = match choice {
        None | Some(Value::Null) => {
            return Ok(if tools.is_empty() {
                ToolChoice::None
            } else {
                ToolChoice::Auto
            })
        }
        Some(Value::String(m)) => match m.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(Error::invalid_param(
                    "tool_choice",
                    format!("'tool_choice' must be \"auto\", \"none\", \"required\" or {{\"type\":\"function\",\"name\":...}}, got {other:?}."),
                ))
            }
        },
        Some(v) => match (v.get("type").and_then(Value::as_str), v.get("name").and_then(Value::as_str)) {
            (Some("function"), Some(name)) => ToolChoice::Named(name.to_string()),
            _ => {
                return Err(Error::invalid_param(
                    "tool_choice",
                    "'tool_choice' must be a mode string or {\"type\":\"function\",\"name\":...}.",
                ))
            }
        },
    };
    check_tool_choice(choice, tools)
}

fn text_format(text: Option<&wire::TextConfig>) -> Result<ResponseFormat, Error> {
    let Some(f) = text.and_then(|t| t.format.as_ref()) else {
        return Ok(ResponseFormat::Text);
    };
    match f.kind.as_str() {
        "text" => Ok(ResponseFormat::Text),
        "json_object" => Ok(ResponseFormat::JsonObject),
        "json_schema" => {
            let schema =
                match &f.schema {
                    Some(s @ Value::Object(_)) => s.clone(),
                    _ => return Err(Error::invalid_param(
                        "text.format.schema",
                        "'text.format' of type json_schema needs 'schema', a JSON Schema object.",
                    )),
                };
            Ok(ResponseFormat::JsonSchema {
                name: f.name.clone().unwrap_or_else(|| "response".into()),
                schema,
                strict: f.strict.unwrap_or(false),
            })
        }
        other => Err(Error::invalid_param(
            "text.format.type",
            format!("'text.format.type' must be text, json_object or json_schema, got {other:?}."),
        )),
    }
}

/// The IR request: `history` is the stored conversation before this turn (already
/// messages), `items` this turn's normalized input items.
pub(super) fn to_ir(
    req: &wire::ResponsesRequest,
    history: Vec<Message>,
    items: &[Value],
) -> Result<ChatRequest, Error> {
    if req.model.trim().is_empty() {
        return Err(Error::invalid_param(
            "model",
            "'model' must name a model; GET /v1/models lists them.",
        ));
    }
    range("temperature", req.temperature, 0.0, 2.0)?;
    range("top_p", req.top_p, 0.0, 1.0)?;
    if req.max_output_tokens == Some(0) {
        return Err(Error::invalid_param(
            "max_output_tokens",
            "'max_output_tokens' must be at least 1.",
        ));
    }
    if let Some(k) = req.top_logprobs.filter(|&k| k > 20) {
        return Err(Error::invalid_param(
            "top_logprobs",
            format!("'top_logprobs' must be between 0 and 20, got {k}."),
        ));
    }
    let mut messages = Vec::new();
    let mut origins = PartOrigins::default();
    // Instructions are not carried over from a previous response: each turn's own.
    if let Some(i) = req.instructions.as_deref().filter(|i| !i.is_empty()) {
        origins.message(0, "instructions");
        messages.push(Message::text(Role::System, i));
    }
    messages.extend(history);
    push_messages(&mut messages, items, "input", Some(&mut origins))?;
    if !messages
        .iter()
        .any(|m| m.role != Role::System && (!m.content.is_empty() || !m.tool_calls.is_empty()))
    {
        return Err(Error::invalid_param(
            "input",
            "'input' must contain at least one message or item.",
        ));
    }
    let tools = tools(&req.tools)?;
    let tool_choice = tool_choice(req.tool_choice.as_ref(), &tools)?;
    let mut extra = req.extra.clone();
    for own in [
        "include",
        "background",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
    ] {
        extra.remove(own);
    }
    Ok(ChatRequest {
        origins,
        model: req.model.clone(),
        messages,
        raw_prompt: None,
        reasoning: effort_of(req)?,
        sampling: SamplingParams {
            temperature: req.temperature,
            top_p: req.top_p,
            ..SamplingParams::default()
        },
        max_tokens: req.max_output_tokens,
        stop: Vec::new(),
        n: 1,
        stream: req.stream.unwrap_or(false),
        tools,
        tool_choice,
        parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
        response_format: text_format(req.text.as_ref())?,
        logprobs: req.top_logprobs,
        ignore_eos: false,
        user: req.user.clone(),
        debug: false,
        options: ProviderOptions::from_unrecognised(extra),
        context: Default::default(),
    })
}

/// `reasoning.effort`, one of the shared words.
fn effort_of(req: &wire::ResponsesRequest) -> Result<Reasoning, Error> {
    let Some(word) = req.reasoning.as_ref().and_then(|r| r.effort.as_deref()) else {
        return Ok(Reasoning::default());
    };
    let effort = Effort::parse(word).ok_or_else(|| {
        Error::invalid_param(
            "reasoning.effort",
            format!("'reasoning.effort' must be one of {}.", Effort::WORDS),
        )
    })?;
    Ok(Reasoning {
        effort: Some(effort),
        ..Reasoning::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> wire::ResponsesRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn reasoning_effort_is_one_of_the_shared_words() {
        let ok = req(json!({"model": "m", "input": "Hi", "reasoning": {"effort": "minimal"}}));
        let items = input_items(ok.input.clone()).unwrap();
        let ir = to_ir(&ok, Vec::new(), &items).unwrap();
        assert_eq!(ir.reasoning.effort, Some(Effort::Minimal));
        let bad = req(json!({"model": "m", "input": "Hi", "reasoning": {"effort": "max"}}));
        let items = input_items(bad.input.clone()).unwrap();
        let e = to_ir(&bad, Vec::new(), &items).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("reasoning.effort"));
    }

    #[test]
    fn string_input_is_one_user_message() {
        let r = req(json!({"model": "m", "input": "Hi", "instructions": "Be brief"}));
        let items = input_items(r.input.clone()).unwrap();
        let ir = to_ir(&r, Vec::new(), &items).unwrap();
        assert_eq!(ir.messages.len(), 2);
        assert_eq!(ir.messages[0].role, Role::System);
        assert_eq!(ir.messages[1].joined_text(), "Hi");
        assert!(items[0]["id"].as_str().unwrap().starts_with("msg_"));
    }

    #[test]
    fn calls_of_one_turn_share_an_assistant_message_and_outputs_answer_them() {
        let r = req(json!({"model": "m", "input": [
            {"role": "user", "content": "weather?"},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{\"city\":\"A\"}"},
            {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{\"city\":\"B\"}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "c2", "output": "rain"}
        ], "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}]}));
        let items = input_items(r.input.clone()).unwrap();
        let ir = to_ir(&r, Vec::new(), &items).unwrap();
        assert_eq!(ir.messages.len(), 4);
        assert_eq!(ir.messages[1].tool_calls.len(), 2);
        assert!(ir.messages[1].content.is_empty());
        assert_eq!(ir.messages[2].tool_call_id.as_deref(), Some("c1"));
        assert_eq!(ir.tool_choice, ToolChoice::Auto);
    }

    #[test]
    fn bad_items_name_their_place() {
        let r = req(
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file"}]}]}),
        );
        let items = input_items(r.input.clone()).unwrap();
        let e = to_ir(&r, Vec::new(), &items).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[0].content[0].type"));
        let r =
            req(json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema"}}}));
        let e = to_ir(&r, Vec::new(), &input_items(r.input.clone()).unwrap()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("text.format.schema"));
        let r = req(json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}));
        let e = to_ir(&r, Vec::new(), &input_items(r.input.clone()).unwrap()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
        let r = req(json!({"model": "m", "input": []}));
        let e = to_ir(&r, Vec::new(), &[]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input"));
    }
}
