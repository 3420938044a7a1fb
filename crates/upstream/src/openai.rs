//! OpenAI Chat Completions as an upstream: vLLM, SGLang, TGI, llama.cpp, Ollama,
//! DeepSeek, BgGPT, another Parlance... and GigaChat, whose body is the same but for
//! its `functions` / `function_call` spelling of tools.

use crate::dialect::{answered_function, call_arguments, AuthStyle, Call, Dialect, StreamMapper};
use crate::openai_read;
use parlance_core::ir::{
    ChatRequest, ContentPart, ImageSource, Message, ResponseFormat, Role, StreamEvent, ToolChoice,
};
use parlance_core::Error;
use parlance_core::ParamPath;
use serde_json::{json, Map, Value};

pub(crate) struct OpenAiDialect {
    /// GigaChat: tools as `functions`, calls as `function_call`, no stream_options.
    gigachat: bool,
    /// `max_tokens`, or `max_completion_tokens` for OpenAI's reasoning models, which
    /// refuse the older name.
    max_tokens_field: &'static str,
    /// Sends an OpenAI-shaped caller's unrecognised fields along (the catalog's
    /// `forward_unknown_fields`).
    forward_unknown: bool,
}

impl OpenAiDialect {
    pub(crate) fn standard(max_completion_tokens: bool, forward_unknown: bool) -> Self {
        OpenAiDialect {
            gigachat: false,
            max_tokens_field: if max_completion_tokens {
                "max_completion_tokens"
            } else {
                "max_tokens"
            },
            forward_unknown,
        }
    }

    pub(crate) fn gigachat(forward_unknown: bool) -> Self {
        OpenAiDialect {
            gigachat: true,
            max_tokens_field: "max_tokens",
            forward_unknown,
        }
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
    fn message(&self, req: &ChatRequest, i: usize) -> Result<Value, Error> {
        let Some(m) = req.messages.get(i) else {
            return Err(Error::internal(format!("no message {i} to send")));
        };
        let mut o = Map::new();
        if self.gigachat && m.role == Role::Tool {
            o.insert("role".into(), json!("function"));
            o.insert("content".into(), json!(m.joined_text()));
            o.insert("name".into(), json!(answered_function(req, i)?));
            return Ok(Value::Object(o));
        }
        o.insert("role".into(), json!(m.role.as_str()));
        if m.role == Role::Assistant && !m.tool_calls.is_empty() {
            let text = m.joined_text();
            if self.gigachat {
                if m.tool_calls.len() > 1 {
                    return Err(Error::invalid_param(
                        ParamPath::message(i).then("tool_calls"),
                        "this model's provider (GigaChat) takes one function call per assistant message",
                    ));
                }
                let Some(call) = m.tool_calls.first() else {
                    return Err(Error::internal("a tool call vanished"));
                };
                let args = call_arguments(i, 0, &call.arguments)?;
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
        Ok(Value::Object(o))
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
        let messages = (0..req.messages.len())
            .map(|i| self.message(req, i))
            .collect::<Result<Vec<Value>, Error>>()?;
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
        put(&mut o, self.max_tokens_field, req.max_tokens);
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
        if let Some(effort) = req.reasoning.effort() {
            o.insert("reasoning_effort".into(), json!(effort.as_str()));
        }
        if req.stream {
            o.insert("stream".into(), json!(true));
            if !self.gigachat {
                o.insert("stream_options".into(), json!({"include_usage": true}));
            }
        }
        if self.forward_unknown {
            for (k, v) in &req.options.openai_compatible {
                o.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        Ok(Call {
            url: format!("{base_url}/chat/completions"),
            body: Value::Object(o),
            auth: AuthStyle::Bearer,
            extra_headers: Vec::new(),
        })
    }

    fn parse_body(&self, body: &[u8], req: &ChatRequest) -> Result<Vec<StreamEvent>, Error> {
        openai_read::parse_body(body, req.n)
    }

    fn stream_mapper(&self, req: &ChatRequest) -> Box<dyn StreamMapper> {
        Box::new(openai_read::ChunkMapper::new(req.n))
    }
}
