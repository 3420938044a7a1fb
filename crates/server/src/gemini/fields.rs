//! Gemini's field names as its API takes them: proto3 JSON, so every field in either
//! spelling (`inlineData` or `inline_data`: the google-genai SDK sends some in
//! snake_case, e.g. `parameters_json_schema`), and a field it does not know is a 400,
//! never silently dropped. Request bodies are brought to camelCase here, before they
//! are read into the wire types; caller data inside them (function arguments and
//! responses, schemas) is left exactly as sent.

use parlance_core::Error;
use serde_json::{Map, Value};

#[derive(Clone, Copy)]
enum Shape {
    Request,
    Content,
    Part,
    Blob,
    FileData,
    FunctionCall,
    FunctionResponse,
    Tool,
    FunctionDeclaration,
    ToolConfig,
    FunctionCallingConfig,
    GenerationConfig,
    ThinkingConfig,
    /// Caller data or a field Parlance passes on unread: not looked into.
    Opaque,
}

use Shape::*;

/// Each shape's fields (camelCase) and what they hold (lists hold that shape).
fn fields(shape: Shape) -> &'static [(&'static str, Shape)] {
    match shape {
        Request => &[
            ("contents", Content),
            ("systemInstruction", Content),
            ("tools", Tool),
            ("toolConfig", ToolConfig),
            ("generationConfig", GenerationConfig),
            ("safetySettings", Opaque),
            ("cachedContent", Opaque),
            ("labels", Opaque),
            ("model", Opaque),
            // countTokens may wrap the request.
            ("generateContentRequest", Request),
        ],
        Content => &[("role", Opaque), ("parts", Part)],
        Part => &[
            ("text", Opaque),
            ("thought", Opaque),
            ("thoughtSignature", Opaque),
            ("inlineData", Blob),
            ("fileData", FileData),
            ("functionCall", FunctionCall),
            ("functionResponse", FunctionResponse),
            ("executableCode", Opaque),
            ("codeExecutionResult", Opaque),
            ("videoMetadata", Opaque),
            ("partMetadata", Opaque),
            ("mediaResolution", Opaque),
        ],
        Blob => &[
            ("mimeType", Opaque),
            ("data", Opaque),
            ("displayName", Opaque),
        ],
        FileData => &[
            ("mimeType", Opaque),
            ("fileUri", Opaque),
            ("displayName", Opaque),
        ],
        FunctionCall => &[("id", Opaque), ("name", Opaque), ("args", Opaque)],
        FunctionResponse => &[
            ("id", Opaque),
            ("name", Opaque),
            ("response", Opaque),
            ("parts", Opaque),
            ("willContinue", Opaque),
            ("scheduling", Opaque),
        ],
        _ => tool_and_config_fields(shape),
    }
}

/// The fields of tool declarations and generation settings.
fn tool_and_config_fields(shape: Shape) -> &'static [(&'static str, Shape)] {
    match shape {
        Tool => &[
            ("functionDeclarations", FunctionDeclaration),
            ("googleSearch", Opaque),
            ("googleSearchRetrieval", Opaque),
            ("codeExecution", Opaque),
            ("urlContext", Opaque),
            ("retrieval", Opaque),
            ("computerUse", Opaque),
            ("fileSearch", Opaque),
            ("googleMaps", Opaque),
        ],
        FunctionDeclaration => &[
            ("name", Opaque),
            ("description", Opaque),
            ("parameters", Opaque),
            ("parametersJsonSchema", Opaque),
            ("response", Opaque),
            ("responseJsonSchema", Opaque),
            ("behavior", Opaque),
        ],
        ToolConfig => &[
            ("functionCallingConfig", FunctionCallingConfig),
            ("retrievalConfig", Opaque),
        ],
        FunctionCallingConfig => &[("mode", Opaque), ("allowedFunctionNames", Opaque)],
        GenerationConfig => &[
            ("temperature", Opaque),
            ("topP", Opaque),
            ("topK", Opaque),
            ("maxOutputTokens", Opaque),
            ("stopSequences", Opaque),
            ("candidateCount", Opaque),
            ("seed", Opaque),
            ("presencePenalty", Opaque),
            ("frequencyPenalty", Opaque),
            ("responseMimeType", Opaque),
            ("responseSchema", Opaque),
            ("responseJsonSchema", Opaque),
            ("responseModalities", Opaque),
            ("responseLogprobs", Opaque),
            ("logprobs", Opaque),
            ("thinkingConfig", ThinkingConfig),
            ("speechConfig", Opaque),
            ("mediaResolution", Opaque),
            ("imageConfig", Opaque),
            ("enableEnhancedCivicAnswers", Opaque),
        ],
        ThinkingConfig => &[
            ("includeThoughts", Opaque),
            ("thinkingBudget", Opaque),
            ("thinkingLevel", Opaque),
        ],
        _ => &[],
    }
}

fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A generateContent (or countTokens) body with every field in camelCase; `Err` names
/// the first field Gemini would not know, in its own words.
pub(super) fn normalize(body: Value) -> Result<Value, Error> {
    walk(body, Request, "")
}

fn walk(v: Value, shape: Shape, at: &str) -> Result<Value, Error> {
    if matches!(shape, Opaque) {
        return Ok(v);
    }
    match v {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| walk(item, shape, &format!("{at}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(obj) => {
            let known = fields(shape);
            let mut out = Map::with_capacity(obj.len());
            for (name, value) in obj {
                let field = camel(&name);
                let Some((_, inner)) = known.iter().find(|(k, _)| *k == field) else {
                    let place = if at.is_empty() {
                        String::new()
                    } else {
                        format!(" at '{at}'")
                    };
                    return Err(Error::invalid_param(
                        if at.is_empty() { name.clone() } else { format!("{at}.{name}") },
                        format!("Invalid JSON payload received. Unknown name \"{name}\"{place}: Cannot find field."),
                    ));
                };
                let path = if at.is_empty() {
                    field.clone()
                } else {
                    format!("{at}.{field}")
                };
                out.insert(field, walk(value, *inner, &path)?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_spellings_become_camel_case_and_caller_data_is_kept() {
        let body = json!({
            "contents": [{"role": "user", "parts": [{"inline_data": {"mime_type": "image/png", "data": "x"}}]}],
            "tools": [{"function_declarations": [{"name": "f", "parameters_json_schema": {"type": "object", "properties": {"city_name": {"type": "string"}}}}]}],
            "tool_config": {"function_calling_config": {"mode": "ANY", "allowed_function_names": ["f"]}},
            "generation_config": {"max_output_tokens": 5, "thinking_config": {"thinking_budget": 0}}
        });
        let n = normalize(body).unwrap();
        assert_eq!(
            n["contents"][0]["parts"][0]["inlineData"]["mimeType"],
            "image/png"
        );
        let decl = &n["tools"][0]["functionDeclarations"][0];
        assert!(decl["parametersJsonSchema"]["properties"]["city_name"].is_object());
        assert_eq!(
            n["toolConfig"]["functionCallingConfig"]["allowedFunctionNames"][0],
            "f"
        );
        assert_eq!(n["generationConfig"]["thinkingConfig"]["thinkingBudget"], 0);
    }

    #[test]
    fn unknown_fields_are_refused_where_they_are() {
        let e =
            normalize(json!({"contents": [], "generation_config": {"max_tokens": 5}})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("generationConfig.max_tokens"));
        assert!(e
            .message
            .contains("Unknown name \"max_tokens\" at 'generationConfig'"));
        let e = normalize(json!({"contnets": []})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("contnets"));
    }
}
