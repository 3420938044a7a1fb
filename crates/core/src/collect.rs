//! Folds an event stream into a whole completion, for non-streaming answers. Every
//! front door uses this one fold, so streaming and non-streaming cannot disagree.

use crate::backend::EventStream;
use crate::error::Error;
use crate::ir::{FinishReason, StreamEvent, TokenLogprob, ToolCall, Usage};
use futures::StreamExt;
use serde_json::Value;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompletedChoice {
    pub content: String,
    pub reasoning: String,
    pub reasoning_signature: String,
    pub tool_calls: Vec<ToolCall>,
    pub logprobs: Vec<TokenLogprob>,
    pub finish_reason: Option<FinishReason>,
    /// The stop sequence that ended it, when one did.
    pub stop_sequence: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    pub choices: Vec<CompletedChoice>,
    pub usage: Usage,
    pub debug: Option<Value>,
}

impl Completion {
    fn choice(&mut self, index: u32) -> &mut CompletedChoice {
        let i = index as usize;
        if self.choices.len() <= i {
            self.choices.resize_with(i + 1, CompletedChoice::default);
        }
        #[allow(clippy::indexing_slicing, reason = "resized above to hold index i")]
        &mut self.choices[i]
    }

    pub fn apply(&mut self, event: StreamEvent) {
        match event {
            StreamEvent::Delta { index, delta } => {
                let c = self.choice(index);
                c.content.push_str(&delta.content);
                c.reasoning.push_str(&delta.reasoning);
                c.reasoning_signature.push_str(&delta.reasoning_signature);
                c.logprobs.extend(delta.logprobs);
                for d in delta.tool_calls {
                    let slot = d.index as usize;
                    if c.tool_calls.len() <= slot {
                        c.tool_calls.resize_with(slot + 1, || ToolCall {
                            id: String::new(),
                            name: String::new(),
                            arguments: String::new(),
                        });
                    }
                    #[allow(clippy::indexing_slicing, reason = "resized above to hold the slot")]
                    let call = &mut c.tool_calls[slot];
                    if let Some(id) = d.id {
                        call.id = id;
                    }
                    if let Some(name) = d.name {
                        call.name.push_str(&name);
                    }
                    call.arguments.push_str(&d.arguments);
                }
            }
            StreamEvent::Finish {
                index,
                reason,
                stop_sequence,
            } => {
                let c = self.choice(index);
                c.finish_reason = Some(reason);
                c.stop_sequence = stop_sequence;
            }
            StreamEvent::Usage(u) => self.usage = u,
            StreamEvent::Debug(v) => self.debug = Some(v),
        }
    }
}

/// Drains the stream. `n` choices are always present in the result, in order.
pub async fn collect(mut stream: EventStream, n: u32) -> Result<Completion, Error> {
    let mut out = Completion::default();
    for i in 0..n {
        out.choice(i);
    }
    while let Some(event) = stream.next().await {
        out.apply(event?);
    }
    if let Some(i) = out.choices.iter().position(|c| c.finish_reason.is_none()) {
        return Err(Error::internal(format!(
            "the backend ended choice {i} without a finish reason"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Delta, ToolCallDelta};

    fn stream(events: Vec<Result<StreamEvent, Error>>) -> EventStream {
        Box::pin(futures::stream::iter(events))
    }

    #[tokio::test]
    async fn joins_deltas_per_choice_and_tool_call() {
        let tc = |id: Option<&str>, name: Option<&str>, args: &str| StreamEvent::Delta {
            index: 1,
            delta: Delta {
                tool_calls: vec![ToolCallDelta {
                    index: 0,
                    id: id.map(str::to_string),
                    name: name.map(str::to_string),
                    arguments: args.to_string(),
                }],
                ..Delta::default()
            },
        };
        let events = vec![
            Ok(StreamEvent::Delta {
                index: 0,
                delta: Delta::text("Hel"),
            }),
            Ok(tc(Some("call_1"), Some("get_weather"), "{\"ci")),
            Ok(StreamEvent::Delta {
                index: 0,
                delta: Delta::text("lo"),
            }),
            Ok(tc(None, None, "ty\":\"Sofia\"}")),
            Ok(StreamEvent::Finish {
                index: 0,
                reason: FinishReason::Stop,
                stop_sequence: None,
            }),
            Ok(StreamEvent::Finish {
                index: 1,
                reason: FinishReason::ToolCalls,
                stop_sequence: None,
            }),
            Ok(StreamEvent::Usage(Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                ..Usage::default()
            })),
        ];
        let c = collect(stream(events), 2).await.unwrap();
        assert_eq!(c.choices[0].content, "Hello");
        assert_eq!(c.choices[1].tool_calls[0].arguments, "{\"city\":\"Sofia\"}");
        assert_eq!(c.choices[1].tool_calls[0].name, "get_weather");
        assert_eq!(c.usage.total(), 7);
    }

    #[tokio::test]
    async fn a_choice_without_finish_is_an_error_not_a_silent_truncation() {
        let events = vec![Ok(StreamEvent::Delta {
            index: 0,
            delta: Delta::text("x"),
        })];
        assert!(collect(stream(events), 1).await.is_err());
    }

    #[tokio::test]
    async fn errors_mid_stream_surface() {
        let events = vec![
            Ok(StreamEvent::Delta {
                index: 0,
                delta: Delta::text("x"),
            }),
            Err(Error::internal("boom")),
        ];
        assert_eq!(
            collect(stream(events), 1).await.unwrap_err().message,
            "boom"
        );
    }
}
