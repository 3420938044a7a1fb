//! Constrained decoding with llguidance: `tool_choice` required or named, and
//! `response_format` json_object / json_schema / grammar. A grammar that does not
//! compile is a 400 naming what is wrong, never silently unconstrained output.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use parlance_core::ir::{ChatRequest, ResponseFormat, ToolChoice, ToolDef};
use parlance_core::Error;
use serde_json::{json, Value};

pub(crate) struct Constrainer {
    factory: ParserFactory,
}

impl Constrainer {
    /// Walks the vocabulary once (hundreds of ms for large ones); shared by all requests.
    pub(crate) fn new(model: &LlamaModel) -> Result<Self, String> {
        let env = LlamaSampler::llguidance_tok_env(model);
        let factory = ParserFactory::new_simple(&env).map_err(|e| format!("llguidance: {e}"))?;
        Ok(Constrainer { factory })
    }

    /// The grammar this request must follow, compiled; `None` when it is free text.
    pub(crate) fn for_request(&self, req: &ChatRequest) -> Result<Option<Matcher>, Error> {
        let Some((grammar, param)) = grammar(req) else {
            return Ok(None);
        };
        let parser = self.factory.create_parser(grammar).map_err(|e| {
            Error::invalid_param(
                param,
                format!(
                    "this {param} cannot be enforced: {}",
                    reason(&e.to_string())
                ),
            )
        })?;
        let mut matcher = Matcher::new(Ok(parser));
        // Some grammars compile but fail on their first step (too many alternatives in
        // one Earley row, a schema that only refers to itself). The sampler would then
        // silently stop masking, so find out now: the first mask is needed anyway.
        let first = matcher.compute_mask().map(|m| m.is_zero());
        let failure = match (matcher.get_error(), first) {
            (Some(e), _) => Some(e),
            (None, Err(e)) => Some(e.to_string()),
            (None, Ok(true)) => Some("no token can start an output that matches it".to_string()),
            (None, Ok(false)) => None,
        };
        if let Some(e) = failure {
            return Err(Error::invalid_param(
                param,
                format!("this {param} cannot be enforced: {}", reason(&e)),
            ));
        }
        Ok(Some(matcher))
    }
}

/// llguidance's error without the parser state dump it appends.
pub(crate) fn reason(e: &str) -> &str {
    let line = e.lines().next().unwrap_or(e).trim();
    match line.strip_prefix("Parser Error: ").unwrap_or(line) {
        "NoExtensionBias" => {
            "no output can match it (e.g. a schema whose $ref only refers to itself)"
        }
        other => other,
    }
}

/// Compact JSON: flexible whitespace would let a small model pad forever.
fn strict_json(mut schema: Value) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "x-guidance".into(),
            json!({"whitespace_flexible": false, "lenient": true}),
        );
    }
    schema
}

/// OpenAI's strict mode: objects take no properties beyond the ones they name.
fn closed_objects(mut schema: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                    map.insert("additionalProperties".into(), Value::Bool(false));
                }
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut schema);
    schema
}

fn grammar(req: &ChatRequest) -> Option<(TopLevelGrammar, &'static str)> {
    let forced: Vec<&ToolDef> = match &req.tool_choice {
        ToolChoice::Required => req.tools.iter().collect(),
        ToolChoice::Named(name) => req.tools.iter().filter(|t| &t.name == name).collect(),
        ToolChoice::Auto | ToolChoice::None => Vec::new(),
    };
    if !forced.is_empty() {
        return Some((
            TopLevelGrammar::from_lark(tool_call_lark(&forced, req.parallel_tool_calls)),
            "tool_choice",
        ));
    }
    match &req.response_format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some((
            TopLevelGrammar::from_json_schema(strict_json(json!({"type": "object"}))),
            "response_format",
        )),
        ResponseFormat::JsonSchema { schema, strict, .. } => Some((
            TopLevelGrammar::from_json_schema(strict_json(if *strict {
                closed_objects(schema.clone())
            } else {
                schema.clone()
            })),
            "response_format.json_schema.schema",
        )),
        ResponseFormat::Grammar(lark) => {
            Some((TopLevelGrammar::from_lark(lark.clone()), "grammar"))
        }
    }
}

/// Most calls one forced answer may hold when parallel calls are allowed.
const MAX_PARALLEL_CALLS: usize = 4;

/// Hermes-style calls, one or (if parallel calls are allowed) several, each naming a
/// declared function with arguments valid against its schema.
fn tool_call_lark(tools: &[&ToolDef], parallel: bool) -> String {
    let options: Vec<Value> = tools
        .iter()
        .map(|t| {
            json!({
                "type": "object",
                // Closed objects: still valid against the declared schema, and a small
                // model cannot wander off into properties nobody asked for.
                "properties": {"name": {"const": t.name}, "arguments": closed_objects(t.parameters.clone())},
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    let schema = strict_json(json!({"anyOf": options}));
    // Bounded, so a small model that keeps calling still ends with complete calls.
    let max_calls = if parallel { MAX_PARALLEL_CALLS } else { 1 };
    let mut start = "call".to_string();
    for _ in 1..max_calls {
        start = format!("call (\"\\n\" {start})?");
    }
    format!(
        "start: {start}\ncall: \"<tool_call>\\n\" body \"\\n</tool_call>\"\nbody: %json {schema}\n"
    )
}
