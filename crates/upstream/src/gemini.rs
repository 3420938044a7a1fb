//! Gemini's native generateContent / streamGenerateContent as an upstream.

use crate::dialect::{
    answered_function, call_arguments, parse_json, parse_json_text, AuthStyle, Call, Dialect,
    Finishes, StreamMapper,
};
use crate::openai_read::new_call_id;
use crate::sse::SseEvent;
use parlance_core::ir::{
    ChatRequest, ContentPart, Delta, FinishReason, ImageSource, Message, ResponseFormat, Role,
    StreamEvent, ToolCallDelta, ToolChoice, Usage,
};
use parlance_core::Error;
use parlance_protocol::gemini as wire;
use serde_json::{json, Value};

pub(crate) struct GeminiDialect;

fn text_part(t: &str) -> wire::Part {
    wire::Part {
        text: Some(t.to_string()),
        ..Default::default()
    }
}

fn parts(m: &Message) -> Vec<wire::Part> {
    m.content
        .iter()
        .filter(|p| !matches!(p, ContentPart::Text(t) if t.is_empty()))
        .map(|p| match p {
            ContentPart::Text(t) => text_part(t),
            ContentPart::Image(ImageSource::Base64 { media_type, data }) => wire::Part {
                inline_data: Some(wire::Blob {
                    mime_type: media_type.clone(),
                    data: data.clone(),
                }),
                ..Default::default()
            },
            ContentPart::Image(ImageSource::Url(url)) => wire::Part {
                file_data: Some(wire::FileData {
                    mime_type: None,
                    file_uri: url.clone(),
                }),
                ..Default::default()
            },
        })
        .collect()
}

fn contents(req: &ChatRequest) -> Result<(Option<wire::Content>, Vec<wire::Content>), Error> {
    let mut system = Vec::new();
    let mut out: Vec<wire::Content> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let (role, p) = match m.role {
            Role::System => {
                system.push(text_part(&m.joined_text()));
                continue;
            }
            Role::User => ("user", parts(m)),
            Role::Assistant => {
                let mut p = parts(m);
                for (k, c) in m.tool_calls.iter().enumerate() {
                    p.push(wire::Part {
                        function_call: Some(wire::FunctionCall {
                            id: None,
                            name: c.name.clone(),
                            args: call_arguments(i, k, &c.arguments)?,
                        }),
                        ..Default::default()
                    });
                }
                ("model", p)
            }
            Role::Tool => {
                // Gemini answers a call by function name; OpenAI callers answer by call id.
                let name = answered_function(req, i)?;
                let text = m.joined_text();
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({ "result": text }),
                };
                let part = wire::Part {
                    function_response: Some(wire::FunctionResponse {
                        id: None,
                        name,
                        response,
                    }),
                    ..Default::default()
                };
                ("user", vec![part])
            }
        };
        match out.last_mut() {
            Some(last) if last.role.as_deref() == Some(role) => last.parts.extend(p),
            _ => out.push(wire::Content {
                role: Some(role.to_string()),
                parts: p,
            }),
        }
    }
    let system = (!system.is_empty()).then_some(wire::Content {
        role: None,
        parts: system,
    });
    Ok((system, out))
}

impl Dialect for GeminiDialect {
    fn build(&self, base_url: &str, model: &str, req: &ChatRequest) -> Result<Call, Error> {
        let (system_instruction, contents) = contents(req)?;
        let s = &req.sampling;
        let mut gc = wire::GenerationConfig {
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: s.top_k.filter(|&k| k > 0),
            max_output_tokens: req.max_tokens,
            stop_sequences: req.stop.clone(),
            candidate_count: (req.n > 1).then_some(req.n),
            seed: s.seed.map(|x| x as i64),
            presence_penalty: s.presence_penalty,
            frequency_penalty: s.frequency_penalty,
            ..Default::default()
        };
        match &req.response_format {
            ResponseFormat::Text => {}
            ResponseFormat::JsonObject => gc.response_mime_type = Some("application/json".into()),
            ResponseFormat::JsonSchema { schema, .. } => {
                gc.response_mime_type = Some("application/json".into());
                gc.response_json_schema = Some(schema.clone());
            }
            ResponseFormat::Grammar(_) => {
                return Err(Error::invalid_param(
                    "grammar",
                    "this model's provider (Gemini) does not take grammars",
                ))
            }
        }
        // Thinking: Gemini's own `thinking_config`, else OpenAI's `reasoning_effort`.
        let own = &req.options.gemini;
        gc.thinking_config = own.thinking_config.clone().or_else(|| {
            let budget = req.reasoning.budget([1024, 8192, 24576])?;
            Some(json!({"thinkingBudget": budget, "includeThoughts": budget > 0}))
        });
        let mut body = wire::GenerateContentRequest {
            contents,
            system_instruction,
            generation_config: Some(gc),
            ..Default::default()
        };
        if let Some(v) = &own.safety_settings {
            body.extra.insert("safetySettings".into(), v.clone());
        }
        for (k, v) in &own.fields {
            body.extra.entry(k.clone()).or_insert_with(|| v.clone());
        }
        if !req.tools.is_empty() {
            body.tools = vec![wire::Tool {
                function_declarations: req
                    .tools
                    .iter()
                    .map(|t| wire::FunctionDeclaration {
                        name: t.name.clone(),
                        description: t.description.clone(),
                        parameters_json_schema: Some(t.parameters.clone()),
                        parameters: None,
                    })
                    .collect(),
            }];
            let (mode, allowed) = match &req.tool_choice {
                ToolChoice::Auto => ("AUTO", vec![]),
                ToolChoice::None => ("NONE", vec![]),
                ToolChoice::Required => ("ANY", vec![]),
                ToolChoice::Named(n) => ("ANY", vec![n.clone()]),
            };
            body.tool_config = Some(wire::ToolConfig {
                function_calling_config: wire::FunctionCallingConfig {
                    mode: mode.into(),
                    allowed_function_names: allowed,
                },
            });
        }
        let url = if req.stream {
            format!("{base_url}/models/{model}:streamGenerateContent?alt=sse")
        } else {
            format!("{base_url}/models/{model}:generateContent")
        };
        Ok(Call {
            url,
            body: serde_json::to_value(&body).map_err(|e| Error::internal(e.to_string()))?,
            auth: AuthStyle::GoogApiKey,
            extra_headers: Vec::new(),
        })
    }

    fn parse_body(&self, body: &[u8], req: &ChatRequest) -> Result<Vec<StreamEvent>, Error> {
        let n = req.n;
        let resp: wire::GenerateContentResponse = parse_json(body, "generateContent response")?;
        let mut m = ResponseMapper::new(n);
        let mut out = Vec::new();
        m.map(resp, &mut out);
        m.close(&mut out);
        m.finish(&mut out)?;
        Ok(out)
    }

    fn stream_mapper(&self, req: &ChatRequest) -> Box<dyn StreamMapper> {
        let n = req.n;
        Box::new(ResponseMapper::new(n))
    }
}

fn finish_reason(r: &str, has_calls: bool) -> FinishReason {
    match r {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        _ if has_calls => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

/// Maps response objects (one whole, or one per streamed event) to IR events.
struct ResponseMapper {
    n: u32,
    finishes: Finishes,
    /// Tool calls sent so far per candidate.
    calls: Vec<u32>,
    usage: Usage,
    blocked: bool,
}

impl ResponseMapper {
    fn new(n: u32) -> Self {
        ResponseMapper {
            n,
            finishes: Finishes::new(n),
            calls: vec![0; n.max(1) as usize],
            usage: Usage::default(),
            blocked: false,
        }
    }

    fn map(&mut self, resp: wire::GenerateContentResponse, out: &mut Vec<StreamEvent>) {
        if let Some(u) = resp.usage_metadata {
            self.usage = Usage {
                prompt_tokens: u.prompt_token_count,
                completion_tokens: u.candidates_token_count + u.thoughts_token_count,
                cached_tokens: u.cached_content_token_count,
                reasoning_tokens: u.thoughts_token_count,
                cache_creation_tokens: 0,
            };
        }
        if resp.candidates.is_empty() && resp.prompt_feedback.is_some() {
            // The prompt itself was blocked: no candidate will come.
            self.blocked = true;
        }
        for c in resp.candidates {
            let index = c.index;
            let mut delta = Delta::default();
            for p in c.content.map(|c| c.parts).unwrap_or_default() {
                if let Some(fc) = p.function_call {
                    let k = self.calls.get_mut(index as usize);
                    let slot = k.map_or(0, |k| {
                        *k += 1;
                        *k - 1
                    });
                    delta.tool_calls.push(ToolCallDelta {
                        index: slot,
                        id: Some(fc.id.unwrap_or_else(new_call_id)),
                        name: Some(fc.name),
                        arguments: if fc.args.is_null() {
                            "{}".into()
                        } else {
                            fc.args.to_string()
                        },
                    });
                } else if let Some(t) = p.text {
                    if p.thought == Some(true) {
                        delta.reasoning.push_str(&t);
                    } else {
                        delta.content.push_str(&t);
                    }
                }
            }
            if !delta.is_empty() {
                out.push(StreamEvent::Delta { index, delta });
            }
            if let Some(r) = c.finish_reason.filter(|r| !r.is_empty()) {
                let has_calls = self.calls.get(index as usize).is_some_and(|&k| k > 0);
                out.push(StreamEvent::Finish {
                    index,
                    reason: finish_reason(&r, has_calls),
                    stop_sequence: None,
                });
                self.finishes.mark(index);
            }
        }
    }

    /// A blocked prompt finishes every choice as filtered.
    fn close(&mut self, out: &mut Vec<StreamEvent>) {
        if self.blocked && !self.finishes.all() {
            for index in 0..self.n.max(1) {
                out.push(StreamEvent::Finish {
                    index,
                    reason: FinishReason::ContentFilter,
                    stop_sequence: None,
                });
                self.finishes.mark(index);
            }
        }
    }
}

impl StreamMapper for ResponseMapper {
    fn on_event(&mut self, ev: SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, Error> {
        if ev.data.trim().is_empty() {
            return Ok(false);
        }
        let v: Value = parse_json_text(&ev.data, "stream event")?;
        if let Some(err) = v.get("error") {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            return Err(Error::new(
                parlance_core::ErrorKind::Upstream,
                format!("error in stream: {msg}"),
            ));
        }
        let resp: wire::GenerateContentResponse = serde_json::from_value(v).map_err(|e| {
            Error::new(
                parlance_core::ErrorKind::Upstream,
                format!("malformed stream event: {e}"),
            )
        })?;
        self.map(resp, out);
        Ok(false)
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        self.close(out);
        self.finishes.check()?;
        out.push(StreamEvent::Usage(self.usage));
        Ok(())
    }
}
