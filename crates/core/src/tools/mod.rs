//! Tool calls in model text: which syntax a model writes, parsers that turn that text
//! into calls while it streams, prompting for templates that know no tools, and the
//! stream adapter that applies a parser to a backend's text deltas.

mod parsers;

pub use parsers::{HermesParser, Parsed, ToolCallParser, WholeOutputParser};

use crate::backend::EventStream;
use crate::ir::{
    ContentPart, Delta, FinishReason, Message, Role, StreamEvent, ToolCallDelta, ToolDef,
};
use futures::StreamExt;
use serde_json::json;

/// How a model family writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolSyntax {
    /// `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Qwen 2.5, Hermes, and
    /// the prompt Parlance injects for templates without tool support).
    Hermes,
    /// A bare `{"name": ..., "parameters": {...}}` object, maybe after `<|python_tag|>` (Llama 3.x).
    Llama3Json,
    /// `[TOOL_CALLS][{"name": ..., "arguments": {...}}]` (Mistral).
    Mistral,
    /// `[get_weather(city="Sofia")]` (Gemma-style and Llama 3.2 pythonic).
    Pythonic,
}

impl ToolSyntax {
    /// Picks the syntax from the chat template's source; Hermes when nothing else matches.
    pub fn detect(template: &str) -> ToolSyntax {
        if template.contains("[TOOL_CALLS]") {
            ToolSyntax::Mistral
        } else if template.contains("<tool_call>") {
            ToolSyntax::Hermes
        } else if template.contains("<|python_tag|>") || template.contains("\"parameters\": ") {
            ToolSyntax::Llama3Json
        } else if template.contains("[func_name1(") || template.contains("tool_code") {
            ToolSyntax::Pythonic
        } else {
            ToolSyntax::Hermes
        }
    }

    /// A parser for one choice; `names` are the declared functions.
    pub fn parser(self, names: &[String]) -> Box<dyn ToolCallParser> {
        match self {
            ToolSyntax::Hermes => Box::new(HermesParser::new(names.to_vec())),
            ToolSyntax::Llama3Json => Box::new(WholeOutputParser::llama3()),
            ToolSyntax::Mistral => Box::new(WholeOutputParser::mistral()),
            ToolSyntax::Pythonic => Box::new(WholeOutputParser::pythonic()),
        }
    }
}

/// Whether a chat template renders the `tools` variable itself.
pub fn template_supports_tools(template: &str) -> bool {
    template.contains("tools")
}

/// For templates without tool support: describes the tools in the system message and
/// writes earlier calls and results as Hermes text, so the model sees the whole round trip.
pub fn inline_tools(messages: &[Message], tools: &[ToolDef]) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len() + 1);
    if !tools.is_empty() {
        let list: Vec<_> = tools
            .iter()
            .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}))
            .collect();
        let listing = list
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        let prompt = format!(
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
             You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{listing}\n</tools>\n\n\
             For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n\
             <tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call>"
        );
        match messages.first() {
            Some(first) if first.role == Role::System => {
                let mut sys = first.clone();
                sys.content = vec![ContentPart::Text(format!(
                    "{}\n\n{prompt}",
                    first.joined_text()
                ))];
                out.push(sys);
            }
            _ => out.push(Message::text(Role::System, prompt)),
        }
    }
    let skip =
        usize::from(!tools.is_empty() && messages.first().is_some_and(|m| m.role == Role::System));
    for m in messages.iter().skip(skip) {
        let mut m = m.clone();
        if m.role == Role::Assistant && !m.tool_calls.is_empty() {
            let mut text = m.joined_text();
            for c in &m.tool_calls {
                let args: serde_json::Value =
                    serde_json::from_str(&c.arguments).unwrap_or(json!(c.arguments));
                text.push_str(&format!(
                    "\n<tool_call>\n{}\n</tool_call>",
                    json!({"name": c.name, "arguments": args})
                ));
            }
            m.content = vec![ContentPart::Text(text.trim_start().to_string())];
            m.tool_calls.clear();
        }
        if m.role == Role::Tool {
            m.role = Role::User;
            m.content = vec![ContentPart::Text(format!(
                "<tool_response>\n{}\n</tool_response>",
                m.joined_text()
            ))];
        }
        out.push(m);
    }
    out
}

/// Runs each choice's text through its own parser: text stays content, calls become
/// OpenAI-shaped tool-call deltas (`id`, `name` and the whole `arguments` in the first
/// fragment), and a choice that called anything finishes with `tool_calls`.
pub fn parse_tool_calls(
    mut events: EventStream,
    syntax: ToolSyntax,
    tools: &[ToolDef],
    n: u32,
) -> EventStream {
    let names: Vec<String> = tools.iter().map(|t| t.name.clone()).collect();
    Box::pin(async_stream::stream! {
        let mut choices: Vec<Choice> = (0..n)
            .map(|_| Choice { parser: syntax.parser(&names), calls: 0, open: None, blank: String::new() })
            .collect();
        while let Some(event) = events.next().await {
            match event {
                Ok(StreamEvent::Delta { index, mut delta }) => {
                    let Some(c) = choices.get_mut(index as usize) else {
                        yield Ok(StreamEvent::Delta { index, delta });
                        continue;
                    };
                    let parsed = c.parser.push(&std::mem::take(&mut delta.content));
                    let out = to_delta(parsed, &mut c.calls, &mut c.open, &mut c.blank, delta);
                    if !out.is_empty() {
                        yield Ok(StreamEvent::Delta { index, delta: out });
                    }
                }
                Ok(StreamEvent::Finish { index, reason, stop_sequence }) => {
                    let Some(c) = choices.get_mut(index as usize) else {
                        yield Ok(StreamEvent::Finish { index, reason, stop_sequence });
                        continue;
                    };
                    let cut = reason == FinishReason::Length;
                    let mut out = to_delta(c.parser.finish(cut), &mut c.calls, &mut c.open, &mut c.blank, Delta::default());
                    if c.calls == 0 {
                        out.content.insert_str(0, &std::mem::take(&mut c.blank));
                    }
                    if !out.is_empty() {
                        yield Ok(StreamEvent::Delta { index, delta: out });
                    }
                    let reason = if c.calls > 0 && reason == FinishReason::Stop { FinishReason::ToolCalls } else { reason };
                    yield Ok(StreamEvent::Finish { index, reason, stop_sequence });
                }
                other => yield other,
            }
        }
    })
}

/// One choice's parsing state.
struct Choice {
    parser: Box<dyn ToolCallParser>,
    /// Calls made so far.
    calls: u32,
    /// The call whose arguments are being streamed.
    open: Option<u32>,
    /// Whitespace held until real text follows: around calls it is only layout.
    blank: String,
}

fn to_delta(
    parsed: Vec<Parsed>,
    calls: &mut u32,
    open: &mut Option<u32>,
    blank: &mut String,
    mut delta: Delta,
) -> Delta {
    for p in parsed {
        match p {
            Parsed::Text(t) if t.trim().is_empty() => blank.push_str(&t),
            Parsed::Text(t) => {
                delta.content.push_str(&std::mem::take(blank));
                delta.content.push_str(&t);
            }
            Parsed::CallStart { name } => {
                blank.clear();
                delta.tool_calls.push(ToolCallDelta {
                    index: *calls,
                    id: Some(new_call_id()),
                    name: Some(name),
                    arguments: String::new(),
                });
                *open = Some(*calls);
                *calls += 1;
            }
            Parsed::CallArgs(fragment) => {
                if let Some(index) = *open {
                    match delta.tool_calls.last_mut() {
                        Some(last) if last.index == index => last.arguments.push_str(&fragment),
                        _ => delta.tool_calls.push(ToolCallDelta {
                            index,
                            id: None,
                            name: None,
                            arguments: fragment,
                        }),
                    }
                }
            }
            Parsed::CallEnd => *open = None,
            Parsed::Call { name, arguments } => {
                blank.clear();
                delta.tool_calls.push(ToolCallDelta {
                    index: *calls,
                    id: Some(new_call_id()),
                    name: Some(name),
                    arguments,
                });
                *calls += 1;
            }
        }
    }
    delta
}

pub fn new_call_id() -> String {
    format!("call_{}", uuid_like())
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{:016x}{:08x}", t ^ 0x9e37_79b9_7f4a_7c15, n as u32)
}
