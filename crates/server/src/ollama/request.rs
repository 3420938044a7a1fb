//! Ollama's requests as the IR: `/api/chat` and `/api/generate` bodies are rewritten as
//! the equivalent chat completions request and validated by that door's checks, so a
//! parameter means the same through either door.

use parlance_core::ir::ChatRequest;
use parlance_core::ir::Effort;
use parlance_core::Error;
use parlance_protocol::json::Fields;
use serde_json::{json, Map, Value};

/// `options` as chat completions names them (Ollama's names on the left).
const OPTIONS: &[(&str, &str)] = &[
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("top_k", "top_k"),
    ("min_p", "min_p"),
    ("seed", "seed"),
    ("num_predict", "max_tokens"),
    ("stop", "stop"),
    ("repeat_penalty", "repetition_penalty"),
    ("presence_penalty", "presence_penalty"),
    ("frequency_penalty", "frequency_penalty"),
];

/// `think`: true, false, or an effort for models that take one (gpt-oss), as the
/// IR's reasoning effort.
fn think(v: &Value) -> Result<Option<Effort>, Error> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(true) => Ok(Some(Effort::Medium)),
        Value::Bool(false) => Ok(Some(Effort::None)),
        Value::String(s) if matches!(s.as_str(), "low" | "medium" | "high") => Ok(Effort::parse(s)),
        _ => Err(Error::invalid_param(
            "think",
            "think must be true, false, \"low\", \"medium\" or \"high\"",
        )),
    }
}

/// `/api/chat`'s body as a chat request.
pub(super) fn chat(body: &Value) -> Result<ChatRequest, Error> {
    let messages = body["messages"]
        .as_array()
        .ok_or_else(|| Error::invalid_param("messages", "messages must be a list"))?;
    let mut out = Vec::with_capacity(messages.len());
    // Ollama's tool results name the tool, not a call id: ids are made here, in order.
    let mut calls = 0usize;
    let mut pending: Vec<(String, String)> = Vec::new();
    for m in messages {
        let role = m["role"].as_str().unwrap_or_default();
        let mut msg = json!({"role": role, "content": content(m)});
        if let Some(tc) = m["tool_calls"].as_array() {
            let mapped: Vec<Value> = tc
                .iter()
                .map(|c| {
                    calls += 1;
                    let id = format!("call_{calls}");
                    let name = c.field("function").field("name").as_str().unwrap_or_default().to_string();
                    pending.push((name.clone(), id.clone()));
                    let args = match c.field("function").field("arguments") {
                        Value::String(s) => s.clone(),
                        v => v.to_string(),
                    };
                    json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
                })
                .collect();
            msg.set("tool_calls", json!(mapped));
        }
        if role == "tool" {
            let name = m["tool_name"]
                .as_str()
                .or_else(|| m["name"].as_str())
                .unwrap_or_default();
            let at = pending
                .iter()
                .position(|(n, _)| n == name || name.is_empty())
                .unwrap_or(0);
            if at < pending.len() {
                msg.set("tool_call_id", json!(pending.remove(at).1));
            }
        }
        if let Some(t) = m["thinking"].as_str() {
            msg.set("reasoning_content", json!(t));
        }
        out.push(msg);
    }
    let mut oa = common(body)?;
    oa.insert("messages".into(), Value::Array(out));
    if let Some(tools) = body.get("tools").filter(|t| !t.is_null()) {
        oa.insert("tools".into(), tools.clone());
    }
    to_ir(oa)
}

/// `/api/generate`'s body: a user prompt (and system), or with `raw` the prompt as it is.
pub(super) fn generate(body: &Value) -> Result<ChatRequest, Error> {
    let prompt = body["prompt"].as_str().unwrap_or_default();
    let mut oa = common(body)?;
    let mut messages = Vec::new();
    if let Some(s) = body["system"].as_str() {
        messages.push(json!({"role": "system", "content": s}));
    }
    let user = json!({"role": "user", "content": prompt, "images": body["images"]});
    messages.push(json!({"role": "user", "content": content(&user)}));
    oa.insert("messages".into(), Value::Array(messages));
    let mut req = to_ir(oa)?;
    if body["raw"].as_bool() == Some(true) {
        req.messages.clear();
        req.raw_prompt = Some(prompt.to_string());
    }
    Ok(req)
}

/// Text with the message's base64 `images` as image parts.
fn content(m: &Value) -> Value {
    let text = m["content"].as_str().unwrap_or_default();
    let images: Vec<&str> = m["images"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if images.is_empty() {
        return json!(text);
    }
    let mut parts = vec![json!({"type": "text", "text": text})];
    parts.extend(images.iter().map(|b64| {
        json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{b64}")}})
    }));
    Value::Array(parts)
}

/// What chat and generate share: model, stream (default on), options, format.
fn common(body: &Value) -> Result<Map<String, Value>, Error> {
    let mut oa = Map::new();
    oa.insert("model".into(), body["model"].clone());
    oa.insert(
        "stream".into(),
        json!(body["stream"].as_bool().unwrap_or(true)),
    );
    for (from, to) in OPTIONS {
        // Ollama's num_predict -1 (no limit) and -2 (fill the context) leave the cap
        // to the server.
        let unlimited = |v: &&Value| *from == "num_predict" && v.as_i64().is_some_and(|n| n < 0);
        if let Some(v) = body["options"]
            .get(*from)
            .filter(|v| !v.is_null() && !unlimited(v))
        {
            oa.insert((*to).into(), v.clone());
        }
    }
    if let Some(e) = think(&body["think"])? {
        oa.insert("reasoning_effort".into(), json!(e.as_str()));
    }
    match &body["format"] {
        Value::String(f) if f == "json" => {
            oa.insert("response_format".into(), json!({"type": "json_object"}));
        }
        schema @ Value::Object(_) => {
            oa.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "format", "schema": schema}}),
            );
        }
        _ => {}
    }
    Ok(oa)
}

fn to_ir(oa: Map<String, Value>) -> Result<ChatRequest, Error> {
    let wire: parlance_protocol::openai::ChatCompletionRequest =
        serde_json::from_value(Value::Object(oa)).map_err(|e| Error::invalid(e.to_string()))?;
    crate::openai::to_ir(wire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn think_asks_for_reasoning_as_the_ir_names_it() {
        let effort = |think: Value| {
            let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "think": think});
            chat(&body).map(|r| r.reasoning.effort)
        };
        assert_eq!(effort(json!(true)).unwrap(), Some(Effort::Medium));
        assert_eq!(effort(json!(false)).unwrap(), Some(Effort::None));
        assert_eq!(effort(json!("high")).unwrap(), Some(Effort::High));
        assert_eq!(effort(Value::Null).unwrap(), None);
        let e = effort(json!("loud")).unwrap_err();
        assert_eq!((e.status(), e.param.as_deref()), (400, Some("think")));
    }
}
