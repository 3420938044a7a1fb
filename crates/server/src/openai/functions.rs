//! The legacy `functions` API (GigaChat's, and OpenAI's before tools): `functions`,
//! `function_call`, assistant messages carrying `function_call` and `role: "function"`
//! results become tools and tool calls on the way in; on the way out a tool call
//! becomes `message.function_call` with finish reason `function_call`. GigaChat's
//! arguments are a JSON object; OpenAI's legacy ones a JSON string.

use super::response::SsePayload;
use futures::{Stream, StreamExt};
use parlance_core::{Error, ParamPath, Step};
use parlance_protocol::openai as wire;
use serde_json::{json, Value};

/// How the caller wants a call's arguments back.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Arguments {
    Object,
    String,
}

/// Rewrites a functions-style request into a tools one; `true` when it was one.
pub(super) fn into_tools(req: &mut wire::ChatCompletionRequest) -> Result<bool, Error> {
    let functions = req.extra.remove("functions");
    let choice = req.extra.remove("function_call");
    let history = req
        .messages
        .iter()
        .any(|m| m.role == "function" || m.extra.contains_key("function_call"));
    if functions.is_none() && choice.is_none() && !history {
        return Ok(false);
    }
    if let Some(f) = functions {
        let tools = function_tools(&f)?;
        if req.tools.is_some() && !tools.is_empty() {
            return Err(Error::invalid_param(
                "functions",
                "Send either 'functions' or 'tools', not both.",
            ));
        }
        if !tools.is_empty() {
            req.tools = Some(tools);
        }
    }
    if let Some(c) = choice {
        req.tool_choice = Some(function_choice(&c)?);
    }
    calls_to_tool_calls(&mut req.messages)?;
    Ok(true)
}

/// `functions` as tools.
fn function_tools(f: &Value) -> Result<Vec<wire::Tool>, Error> {
    let list = f.as_array().ok_or_else(|| {
        Error::invalid_param(
            "functions",
            "'functions' must be a list of function definitions.",
        )
    })?;
    let mut tools = Vec::with_capacity(list.len());
    for (i, f) in list.iter().enumerate() {
        let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
            Error::invalid_param(
                ParamPath::field("functions").at(i).then("name"),
                format!("functions[{i}] needs a 'name'."),
            )
        })?;
        tools.push(wire::Tool {
            kind: "function".into(),
            function: wire::FunctionDef {
                name: name.to_string(),
                description: f
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                parameters: f.get("parameters").filter(|p| !p.is_null()).cloned(),
                strict: None,
            },
        });
    }
    Ok(tools)
}

/// `function_call` as a tool choice.
fn function_choice(c: &Value) -> Result<wire::ToolChoice, Error> {
    Ok(match c {
        Value::String(mode) if mode == "auto" || mode == "none" => {
            wire::ToolChoice::Mode(mode.clone())
        }
        Value::Object(o) if o.get("name").and_then(Value::as_str).is_some() => {
            wire::ToolChoice::Named(wire::NamedToolChoice {
                kind: "function".into(),
                function: wire::FunctionName {
                    name: o
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                },
            })
        }
        _ => {
            return Err(Error::invalid_param(
                "function_call",
                "'function_call' must be \"auto\", \"none\" or {\"name\": ...}.",
            ))
        }
    })
}

/// History in the functions form (assistant `function_call`, `function` results) as
/// tool calls and tool messages: each call gets an id, and a function's result answers
/// the latest call of that name.
fn calls_to_tool_calls(messages: &mut [wire::ChatMessage]) -> Result<(), Error> {
    let mut calls: Vec<(String, String)> = Vec::new();
    for (i, m) in messages.iter_mut().enumerate() {
        if let Some(call) = m.extra.remove("function_call") {
            let name = call.get("name").and_then(Value::as_str).ok_or_else(|| {
                Error::invalid_param(
                    ParamPath::message(i).then("function_call").then("name"),
                    format!("messages[{i}].function_call needs a 'name'."),
                )
            })?;
            let arguments = match call.get("arguments") {
                None | Some(Value::Null) => "{}".to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            };
            let id = format!("call_fn_{i}");
            calls.push((name.to_string(), id.clone()));
            m.tool_calls
                .get_or_insert_with(Vec::new)
                .push(wire::ToolCall {
                    id,
                    kind: "function".into(),
                    function: wire::FunctionCall {
                        name: name.to_string(),
                        arguments,
                    },
                });
        }
        if m.role == "function" {
            m.role = "tool".into();
            let answered = calls
                .iter()
                .rev()
                .find(|(n, _)| m.name.as_deref().is_none_or(|want| want == n))
                .map(|(_, id)| id.clone())
                .ok_or_else(|| {
                    Error::invalid_param(ParamPath::message(i), format!("messages[{i}] is a function result, but no earlier assistant message called a function."))
                })?;
            m.tool_call_id = Some(answered);
        }
    }
    Ok(())
}

/// A validation error of the tools this request became, named as the caller wrote
/// it (`functions[0].name`, `function_call`).
pub(super) fn rename(mut e: Error) -> Error {
    let Some(p) = e.param.take() else { return e };
    e.param = Some(match p.steps() {
        [Step::Field(t), Step::Index(i), Step::Field(f), rest @ ..]
            if t == "tools" && f == "function" =>
        {
            ParamPath::field("functions").at(*i).join(rest)
        }
        _ => match p.head() {
            Some("tools") => p
                .renamed("tools", &ParamPath::field("functions"))
                .unwrap_or(p),
            Some("tool_choice") if p.steps().len() == 1 => ParamPath::field("function_call"),
            _ => p,
        },
    });
    e
}

fn call_json(name: &str, arguments: &str, style: Arguments) -> Value {
    let args = match style {
        Arguments::String => json!(arguments),
        Arguments::Object => serde_json::from_str::<Value>(arguments).unwrap_or_else(|_| json!({})),
    };
    json!({"name": name, "arguments": args})
}

/// A whole answer's first tool call as `function_call`.
pub(super) fn whole(mut c: wire::ChatCompletion, style: Arguments) -> wire::ChatCompletion {
    for choice in &mut c.choices {
        if let Some(call) = choice
            .message
            .tool_calls
            .take()
            .and_then(|calls| calls.into_iter().next())
        {
            choice.message.function_call = Some(call_json(
                &call.function.name,
                &call.function.arguments,
                style,
            ));
            // GigaChat's SDK wants `content` a string, also beside a call.
            if style == Arguments::Object {
                choice.message.content.get_or_insert_with(String::new);
            }
            choice.finish_reason = Some("function_call".into());
        }
    }
    c
}

/// A stream's tool-call fragments gathered and sent as one `function_call` chunk
/// before the choice's finish (`function_call`).
pub(super) fn streamed(
    chunks: impl Stream<Item = SsePayload>,
    style: Arguments,
) -> impl Stream<Item = SsePayload> {
    let mut calls: std::collections::HashMap<u32, (String, String)> = Default::default();
    chunks.flat_map(move |payload| {
        let mut out = Vec::new();
        match payload {
            SsePayload::Chunk(mut c) => {
                for choice in &mut c.choices {
                    if let Some(deltas) = choice.delta.tool_calls.take() {
                        let call = calls.entry(choice.index).or_default();
                        // Only the first call: the functions API makes one per turn.
                        for d in deltas.into_iter().filter(|d| d.index == 0) {
                            if let Some(n) = d.function.name {
                                call.0.push_str(&n);
                            }
                            call.1
                                .push_str(d.function.arguments.as_deref().unwrap_or(""));
                        }
                    }
                    if choice.finish_reason.as_deref() == Some("tool_calls") {
                        if let Some((name, args)) = calls.remove(&choice.index) {
                            choice.delta.function_call = Some(call_json(&name, &args, style));
                        }
                        choice.finish_reason = Some("function_call".into());
                    }
                }
                let empty = c.choices.iter().all(|ch| {
                    ch.finish_reason.is_none()
                        && ch.delta.role.is_none()
                        && ch.delta.content.as_deref().is_none_or(str::is_empty)
                        && ch.delta.reasoning_content.is_none()
                        && ch.delta.function_call.is_none()
                });
                // A chunk that only carried call fragments has nothing left to say.
                if !(empty && !c.choices.is_empty() && c.usage.is_none()) {
                    out.push(SsePayload::Chunk(c));
                }
            }
            other => out.push(other),
        }
        futures::stream::iter(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gigachat_functions_become_tools_and_results_answer_calls() {
        let mut req: wire::ChatCompletionRequest = serde_json::from_value(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "weather in Sofia?"},
                {"role": "assistant", "content": "", "function_call": {"name": "weather", "arguments": {"city": "Sofia"}}},
                {"role": "function", "name": "weather", "content": "{\"t\": 21}"}
            ],
            "functions": [{"name": "weather", "description": "d", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "function_call": "auto"
        })).unwrap();
        assert!(into_tools(&mut req).unwrap());
        assert_eq!(req.tools.as_ref().unwrap()[0].function.name, "weather");
        let call = &req.messages[1].tool_calls.as_ref().unwrap()[0];
        assert_eq!(
            serde_json::from_str::<Value>(&call.function.arguments).unwrap(),
            json!({"city": "Sofia"})
        );
        assert_eq!(req.messages[2].role, "tool");
        assert_eq!(
            req.messages[2].tool_call_id.as_deref(),
            Some(call.id.as_str())
        );
        assert!(!req.extra.contains_key("functions"));
    }

    #[test]
    fn tool_errors_are_named_as_functions() {
        let e = rename(Error::invalid_param("tools[1].function.name", "bad name"));
        assert_eq!(e.param.as_deref(), Some("functions[1].name"));
        let e = rename(Error::invalid_param("tool_choice", "unknown"));
        assert_eq!(e.param.as_deref(), Some("function_call"));
        let e = rename(Error::invalid_param("temperature", "range"));
        assert_eq!(e.param.as_deref(), Some("temperature"));
    }

    #[test]
    fn a_result_without_a_call_is_a_400() {
        let mut req: wire::ChatCompletionRequest = serde_json::from_value(json!({
            "model": "m", "messages": [{"role": "function", "name": "f", "content": "1"}]
        }))
        .unwrap();
        assert_eq!(
            into_tools(&mut req).unwrap_err().param.as_deref(),
            Some("messages[0]")
        );
    }
}
