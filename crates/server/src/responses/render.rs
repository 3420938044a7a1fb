//! IR stream -> Responses API output: the output items (reasoning, message, function
//! calls, in the order the model produced them), the event sequence that builds them
//! (`response.output_item.added` ... `response.completed`), and the response object.
//! A whole answer is the same fold with its events thrown away, so the two agree.

use parlance_core::ir::{Delta, FinishReason, StreamEvent, TokenLogprob, Usage};
use parlance_core::{Code, Error};
use parlance_protocol::json::Fields;
use serde_json::{json, Map, Value};

/// What the response object echoes of its request, and its identity.
#[derive(Clone)]
pub(super) struct Meta {
    pub id: String,
    pub created_at: u64,
    pub model: String,
    /// The request's echoed fields (instructions, tools, tool_choice, text, ...).
    pub echo: Map<String, Value>,
}

enum Open {
    None,
    Reasoning {
        id: String,
        text: String,
        signature: String,
    },
    Message {
        id: String,
        text: String,
        logprobs: Vec<Value>,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// Folds IR events into output items, yielding the Responses events as it goes.
pub(super) struct Builder {
    pub meta: Meta,
    output: Vec<Value>,
    open: Open,
    finish: Option<FinishReason>,
    seq: u64,
    want_logprobs: bool,
}

fn logprob_json(lp: &[TokenLogprob]) -> Vec<Value> {
    lp.iter()
        .map(|t| {
            json!({"token": t.token, "bytes": t.bytes, "logprob": t.logprob,
                "top_logprobs": t.top.iter().map(|a| json!({"token": a.token, "bytes": a.bytes, "logprob": a.logprob})).collect::<Vec<_>>()})
        })
        .collect()
}

impl Builder {
    pub(super) fn new(meta: Meta, want_logprobs: bool) -> Self {
        Builder {
            meta,
            output: Vec::new(),
            open: Open::None,
            finish: None,
            seq: 0,
            want_logprobs,
        }
    }

    fn event(&mut self, kind: &str, mut body: Value) -> Value {
        body.set("type", json!(kind));
        body.set("sequence_number", json!(self.seq));
        self.seq += 1;
        body
    }

    fn index(&self) -> usize {
        self.output.len()
    }

    /// `response.created` and `response.in_progress`.
    pub(super) fn start(&mut self) -> Vec<Value> {
        let r = self.response("in_progress", None, None);
        vec![
            self.event("response.created", json!({"response": r.clone()})),
            self.event("response.in_progress", json!({"response": r})),
        ]
    }

    fn close(&mut self, out: &mut Vec<Value>) {
        let i = self.index();
        // An item cut by the output cap is incomplete, as OpenAI marks it.
        let status = if self.finish == Some(FinishReason::Length) {
            "incomplete"
        } else {
            "completed"
        };
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => {}
            Open::Reasoning {
                id,
                text,
                signature,
            } => {
                out.push(self.event(
                    "response.reasoning_text.done",
                    json!({"item_id": id, "output_index": i, "content_index": 0, "text": text}),
                ));
                let mut item = json!({"type": "reasoning", "id": id, "summary": [], "status": status,
                    "content": [{"type": "reasoning_text", "text": text}]});
                // A provider's signature, needed back in later turns.
                if !signature.is_empty() {
                    item.set("encrypted_content", json!(signature));
                }
                out.push(self.event(
                    "response.output_item.done",
                    json!({"output_index": i, "item": item.clone()}),
                ));
                self.output.push(item);
            }
            Open::Message { id, text, logprobs } => {
                let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs});
                out.push(self.event("response.output_text.done", json!({"item_id": id, "output_index": i, "content_index": 0, "text": text, "logprobs": logprobs})));
                out.push(self.event("response.content_part.done", json!({"item_id": id, "output_index": i, "content_index": 0, "part": part.clone()})));
                let item = json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": [part]});
                out.push(self.event(
                    "response.output_item.done",
                    json!({"output_index": i, "item": item.clone()}),
                ));
                self.output.push(item);
            }
            Open::Call {
                id,
                call_id,
                name,
                arguments,
            } => {
                out.push(self.event(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": i, "name": name, "arguments": arguments}),
                ));
                let item = json!({"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": arguments, "status": status});
                out.push(self.event(
                    "response.output_item.done",
                    json!({"output_index": i, "item": item.clone()}),
                ));
                self.output.push(item);
            }
        }
    }

    fn delta(&mut self, d: Delta, out: &mut Vec<Value>) {
        if !d.reasoning.is_empty() {
            if !matches!(self.open, Open::Reasoning { .. }) {
                self.close(out);
                let id = super::new_id("rs");
                let item = json!({"type": "reasoning", "id": id, "summary": [], "status": "in_progress", "content": []});
                out.push(self.event(
                    "response.output_item.added",
                    json!({"output_index": self.index(), "item": item}),
                ));
                self.open = Open::Reasoning {
                    id,
                    text: String::new(),
                    signature: String::new(),
                };
            }
            let i = self.index();
            if let Open::Reasoning { id, text, .. } = &mut self.open {
                text.push_str(&d.reasoning);
                let body = json!({"item_id": id, "output_index": i, "content_index": 0, "delta": d.reasoning});
                out.push(self.event("response.reasoning_text.delta", body));
            }
        }
        if let Open::Reasoning { signature, .. } = &mut self.open {
            signature.push_str(&d.reasoning_signature);
        }
        if !d.content.is_empty() {
            if !matches!(self.open, Open::Message { .. }) {
                self.close(out);
                let id = super::new_id("msg");
                let i = self.index();
                let item = json!({"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []});
                out.push(self.event(
                    "response.output_item.added",
                    json!({"output_index": i, "item": item}),
                ));
                out.push(self.event("response.content_part.added", json!({"item_id": id, "output_index": i, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})));
                self.open = Open::Message {
                    id,
                    text: String::new(),
                    logprobs: Vec::new(),
                };
            }
            let i = self.index();
            let lp = if self.want_logprobs {
                logprob_json(&d.logprobs)
            } else {
                Vec::new()
            };
            if let Open::Message { id, text, logprobs } = &mut self.open {
                text.push_str(&d.content);
                logprobs.extend(lp.iter().cloned());
                let body = json!({"item_id": id, "output_index": i, "content_index": 0, "delta": d.content, "logprobs": lp});
                out.push(self.event("response.output_text.delta", body));
            }
        }
        for call in d.tool_calls {
            if let (Some(call_id), Some(name)) = (call.id, call.name) {
                self.close(out);
                let id = super::new_id("fc");
                let item = json!({"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": "", "status": "in_progress"});
                out.push(self.event(
                    "response.output_item.added",
                    json!({"output_index": self.index(), "item": item}),
                ));
                self.open = Open::Call {
                    id,
                    call_id,
                    name,
                    arguments: String::new(),
                };
            }
            let i = self.index();
            if let Open::Call { id, arguments, .. } = &mut self.open {
                if !call.arguments.is_empty() {
                    arguments.push_str(&call.arguments);
                    let body = json!({"item_id": id, "output_index": i, "delta": call.arguments});
                    out.push(self.event("response.function_call_arguments.delta", body));
                }
            }
        }
    }

    /// The events one IR event makes. `Some(final)` once the response is done: its
    /// last event is `response.completed` or `response.incomplete`.
    pub(super) fn apply(&mut self, ev: StreamEvent) -> (Vec<Value>, Option<Value>) {
        let mut out = Vec::new();
        match ev {
            StreamEvent::Delta { index: 0, delta } => self.delta(delta, &mut out),
            StreamEvent::Finish {
                index: 0, reason, ..
            } => {
                self.finish = Some(reason);
                self.close(&mut out);
            }
            StreamEvent::Usage(u) => {
                self.close(&mut out);
                let incomplete = match self.finish {
                    Some(FinishReason::Length) => Some("max_output_tokens"),
                    Some(FinishReason::ContentFilter) => Some("content_filter"),
                    _ => None,
                };
                let status = if incomplete.is_some() {
                    "incomplete"
                } else {
                    "completed"
                };
                let r = self.response(status, Some(&u), incomplete);
                return (out, Some(r));
            }
            _ => {}
        }
        (out, None)
    }

    /// The terminal event for a finished response object.
    pub(super) fn done_event(&mut self, response: &Value) -> Value {
        let kind = if response["status"] == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.event(kind, json!({"response": response}))
    }

    /// `response.failed`, carrying what was produced before the error.
    pub(super) fn failed(&mut self, e: &Error) -> Value {
        let mut out = Vec::new();
        self.close(&mut out);
        let mut r = self.response("failed", None, None);
        r.set("error", json!({"code": e.code.as_ref().map_or("server_error".into(), Code::as_str), "message": e.message}));
        self.event("response.failed", json!({"response": r}))
    }

    pub(super) fn response(
        &self,
        status: &str,
        usage: Option<&Usage>,
        incomplete: Option<&str>,
    ) -> Value {
        let mut r = json!({
            "id": self.meta.id,
            "object": "response",
            "created_at": self.meta.created_at,
            "status": status,
            "error": null,
            "incomplete_details": incomplete.map(|reason| json!({"reason": reason})),
            "model": self.meta.model,
            "output": self.output,
            "usage": usage.map(|u| json!({
                "input_tokens": u.prompt_tokens,
                "input_tokens_details": {"cached_tokens": u.cached_tokens},
                "output_tokens": u.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
                "total_tokens": u.total(),
            })),
        });
        if let Some(obj) = r.as_object_mut() {
            for (k, v) in &self.meta.echo {
                obj.insert(k.clone(), v.clone());
            }
        }
        r
    }
}
