//! IR -> OpenAI wire: whole completions and the SSE chunk sequence.

use futures::{Stream, StreamExt};
use parlance_core::collect::Completion;
use parlance_core::ir::{Delta, FinishReason, StreamEvent, TokenLogprob, Usage};
use parlance_core::{Error, EventStream};
use parlance_protocol::openai as wire;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What every response of one request shares.
#[derive(Clone)]
pub(super) struct ResponseMeta {
    pub id: Arc<str>,
    pub created: u64,
    pub model: Arc<str>,
    pub fingerprint: Arc<str>,
}

/// OpenAI's `finish_reason`.
pub(super) fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

pub(super) fn usage(u: &Usage) -> wire::Usage {
    wire::Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        total_tokens: u.total(),
        prompt_tokens_details: Some(wire::PromptTokensDetails {
            cached_tokens: u.cached_tokens,
        }),
        completion_tokens_details: Some(wire::CompletionTokensDetails {
            reasoning_tokens: u.reasoning_tokens,
        }),
    }
}

fn logprobs(lp: &[TokenLogprob]) -> wire::ChoiceLogprobs {
    wire::ChoiceLogprobs {
        content: Some(
            lp.iter()
                .map(|t| wire::TokenLogprob {
                    token: t.token.clone(),
                    logprob: t.logprob,
                    bytes: Some(t.bytes.clone()),
                    top_logprobs: t
                        .top
                        .iter()
                        .map(|a| wire::TopLogprob {
                            token: a.token.clone(),
                            logprob: a.logprob,
                            bytes: Some(a.bytes.clone()),
                        })
                        .collect(),
                })
                .collect(),
        ),
    }
}

pub(super) fn completion(
    meta: &ResponseMeta,
    c: Completion,
    want_logprobs: bool,
) -> wire::ChatCompletion {
    let choices = c
        .choices
        .into_iter()
        .enumerate()
        .map(|(i, ch)| {
            let tool_calls = (!ch.tool_calls.is_empty()).then(|| {
                ch.tool_calls
                    .into_iter()
                    .map(|t| wire::ToolCall {
                        id: t.id,
                        kind: "function".into(),
                        function: wire::FunctionCall {
                            name: t.name,
                            arguments: t.arguments,
                        },
                    })
                    .collect()
            });
            wire::Choice {
                index: i as u32,
                message: wire::ResponseMessage {
                    role: "assistant".into(),
                    content: if ch.content.is_empty() && tool_calls.is_some() {
                        None
                    } else {
                        Some(ch.content)
                    },
                    refusal: None,
                    tool_calls,
                    function_call: None,
                    reasoning_content: (!ch.reasoning.is_empty()).then_some(ch.reasoning),
                },
                logprobs: want_logprobs.then(|| logprobs(&ch.logprobs)),
                finish_reason: ch.finish_reason.map(|r| finish_reason(r).to_string()),
            }
        })
        .collect();
    wire::ChatCompletion {
        id: meta.id.to_string(),
        object: "chat.completion".into(),
        created: meta.created,
        model: meta.model.to_string(),
        choices,
        usage: Some(usage(&c.usage)),
        system_fingerprint: Some(meta.fingerprint.to_string()),
        debug: c.debug,
    }
}

pub(super) struct StreamOptions {
    pub n: u32,
    pub include_usage: bool,
    pub want_logprobs: bool,
    /// GigaChat's `update_interval`: coalesce text so chunks are at least this far apart.
    pub update_interval: Option<Duration>,
}

/// One SSE `data:` payload.
pub(super) enum SsePayload {
    Chunk(wire::ChatCompletionChunk),
    Error(wire::ErrorResponse),
    Done,
}

fn chunk(
    meta: &ResponseMeta,
    opts: &StreamOptions,
    choices: Vec<wire::ChunkChoice>,
) -> wire::ChatCompletionChunk {
    wire::ChatCompletionChunk {
        id: Arc::clone(&meta.id),
        object: Cow::Borrowed("chat.completion.chunk"),
        created: meta.created,
        model: Arc::clone(&meta.model),
        system_fingerprint: Some(Arc::clone(&meta.fingerprint)),
        choices,
        usage: opts.include_usage.then_some(None),
        debug: None,
    }
}

fn delta_choice(index: u32, d: Delta, want_logprobs: bool) -> wire::ChunkChoice {
    let tool_calls = (!d.tool_calls.is_empty()).then(|| {
        d.tool_calls
            .into_iter()
            .map(|t| wire::ToolCallDelta {
                index: t.index,
                kind: t.id.as_ref().map(|_| "function".to_string()),
                id: t.id,
                function: wire::FunctionCallDelta {
                    name: t.name,
                    arguments: Some(t.arguments),
                },
            })
            .collect()
    });
    wire::ChunkChoice {
        index,
        delta: wire::Delta {
            content: (!d.content.is_empty()).then_some(d.content),
            reasoning_content: (!d.reasoning.is_empty()).then_some(d.reasoning),
            tool_calls,
            ..wire::Delta::default()
        },
        logprobs: (want_logprobs && !d.logprobs.is_empty()).then(|| logprobs(&d.logprobs)),
        finish_reason: None,
    }
}

/// The chunk sequence: a role chunk per choice, deltas, one finish per choice, the
/// usage chunk when asked for, then `[DONE]`; or an error payload, never a silent end.
pub(super) fn chunks(
    meta: ResponseMeta,
    opts: StreamOptions,
    mut events: EventStream,
) -> impl Stream<Item = SsePayload> {
    async_stream::stream! {
        let role = (0..opts.n)
            .map(|i| wire::ChunkChoice {
                index: i,
                delta: wire::Delta { role: Some("assistant".into()), content: Some(String::new()), ..wire::Delta::default() },
                logprobs: None,
                finish_reason: None,
            })
            .collect();
        yield SsePayload::Chunk(chunk(&meta, &opts, role));

        let mut finished = vec![false; opts.n as usize];
        // Text waiting for the update interval to pass, per choice.
        let mut pending: Vec<Delta> = vec![Delta::default(); opts.n as usize];
        let mut last_sent = Instant::now();
        let mut usage_seen = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(StreamEvent::Delta { index, delta }) => {
                    let Some(held) = pending.get_mut(index as usize) else {
                        continue;
                    };
                    match opts.update_interval {
                        Some(every) => {
                            merge(held, delta);
                            if last_sent.elapsed() >= every {
                                last_sent = Instant::now();
                                for (j, p) in pending.iter_mut().enumerate() {
                                    if !p.is_empty() {
                                        let d = std::mem::take(p);
                                        yield SsePayload::Chunk(chunk(&meta, &opts, vec![delta_choice(j as u32, d, opts.want_logprobs)]));
                                    }
                                }
                            }
                        }
                        None => yield SsePayload::Chunk(chunk(&meta, &opts, vec![delta_choice(index, delta, opts.want_logprobs)])),
                    }
                }
                Ok(StreamEvent::Finish { index, reason, .. }) => {
                    let i = index as usize;
                    match finished.get_mut(i) {
                        Some(done) if !*done => *done = true,
                        _ => continue,
                    }
                    if let Some(held) = pending.get_mut(i).filter(|p| !p.is_empty()) {
                        let d = std::mem::take(held);
                        yield SsePayload::Chunk(chunk(&meta, &opts, vec![delta_choice(index, d, opts.want_logprobs)]));
                    }
                    yield SsePayload::Chunk(chunk(&meta, &opts, vec![wire::ChunkChoice {
                        index,
                        delta: wire::Delta::default(),
                        logprobs: None,
                        finish_reason: Some(finish_reason(reason).to_string()),
                    }]));
                }
                Ok(StreamEvent::Usage(u)) => {
                    usage_seen = true;
                    if opts.include_usage {
                        let mut c = chunk(&meta, &opts, vec![]);
                        c.usage = Some(Some(usage(&u)));
                        yield SsePayload::Chunk(c);
                    }
                }
                Ok(StreamEvent::Debug(v)) => {
                    let mut c = chunk(&meta, &opts, vec![]);
                    c.debug = Some(v);
                    yield SsePayload::Chunk(c);
                }
                Err(e) => {
                    yield SsePayload::Error(crate::error::openai_body(&e));
                    return;
                }
            }
        }
        if let Some(i) = finished.iter().position(|f| !f) {
            let e = Error::internal(format!("the backend ended the stream before choice {i} finished"));
            yield SsePayload::Error(crate::error::openai_body(&e));
            return;
        }
        if !usage_seen {
            tracing::warn!("backend stream ended without usage");
        }
        yield SsePayload::Done;
    }
}

fn merge(into: &mut Delta, d: Delta) {
    into.content.push_str(&d.content);
    into.reasoning.push_str(&d.reasoning);
    into.tool_calls.extend(d.tool_calls);
    into.logprobs.extend(d.logprobs);
}

/// Encodes a stream's chunks. Every chunk of a stream starts with the same id, object,
/// created, model and fingerprint: they are encoded once and reused, since escaping
/// them again for each chunk was ~10% of a proxied stream's instructions.
#[derive(Default)]
pub(super) struct ChunkEncoder {
    head: Option<(wire::ChatCompletionChunk, Vec<u8>)>,
}

impl ChunkEncoder {
    /// `serde_json::to_string(c)`, byte for byte.
    pub(super) fn encode(&mut self, c: &wire::ChatCompletionChunk) -> serde_json::Result<String> {
        let head = match &self.head {
            Some((key, head)) if same_head(key, c) => head,
            _ => &self.head.insert(head_of(c)?).1,
        };
        let mut out = Vec::with_capacity(head.len() + 160);
        out.extend_from_slice(head);
        if !write_text_choice(&mut out, &c.choices)? {
            serde_json::to_writer(&mut out, &c.choices)?;
        }
        // The fields after `choices`, in the wire type's order.
        if let Some(u) = &c.usage {
            out.extend_from_slice(b",\"usage\":");
            serde_json::to_writer(&mut out, u)?;
        }
        if let Some(d) = &c.debug {
            out.extend_from_slice(b",\"debug\":");
            serde_json::to_writer(&mut out, d)?;
        }
        out.push(b'}');
        String::from_utf8(out).map_err(serde::ser::Error::custom)
    }
}

/// The common chunk's choices, one choice with text and nothing else, without serde's
/// work per key (that work was half of what encoding a chunk cost). The patterns name
/// every field, so a field added to the wire types stops this from compiling instead
/// of being dropped here. `false`: another shape, left to serde.
fn write_text_choice(out: &mut Vec<u8>, choices: &[wire::ChunkChoice]) -> serde_json::Result<bool> {
    let [wire::ChunkChoice {
        index,
        delta,
        logprobs: None,
        finish_reason: None,
    }] = choices
    else {
        return Ok(false);
    };
    let wire::Delta {
        role: None,
        content: Some(text),
        reasoning_content: None,
        tool_calls: None,
        function_call: None,
        refusal: None,
    } = delta
    else {
        return Ok(false);
    };
    out.extend_from_slice(b"[{\"index\":");
    serde_json::to_writer(&mut *out, index)?;
    out.extend_from_slice(b",\"delta\":{\"content\":");
    serde_json::to_writer(&mut *out, text)?;
    out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":null}]");
    Ok(true)
}

fn same_head(a: &wire::ChatCompletionChunk, b: &wire::ChatCompletionChunk) -> bool {
    let same_fp = match (&a.system_fingerprint, &b.system_fingerprint) {
        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
        (None, None) => true,
        _ => false,
    };
    Arc::ptr_eq(&a.id, &b.id)
        && Arc::ptr_eq(&a.model, &b.model)
        && same_fp
        && a.created == b.created
        && a.object == b.object
}

/// `c`'s fields before its choices, encoded up to `"choices":`.
fn head_of(
    c: &wire::ChatCompletionChunk,
) -> serde_json::Result<(wire::ChatCompletionChunk, Vec<u8>)> {
    let key = wire::ChatCompletionChunk {
        id: Arc::clone(&c.id),
        object: c.object.clone(),
        created: c.created,
        model: Arc::clone(&c.model),
        system_fingerprint: c.system_fingerprint.clone(),
        choices: Vec::new(),
        usage: None,
        debug: None,
    };
    let mut head = serde_json::to_vec(&key)?;
    // `...,"choices":[]}` without its `[]}`.
    head.truncate(head.len().saturating_sub(3));
    Ok((key, head))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    fn meta() -> ResponseMeta {
        ResponseMeta {
            id: "chatcmpl-\"x\"\u{e9}".into(),
            created: 7,
            model: "m/\\odel".into(),
            fingerprint: "fp_1".into(),
        }
    }

    #[test]
    fn encoded_chunks_equal_serde_json_s() {
        let m = meta();
        let opts = |include_usage| StreamOptions {
            n: 2,
            include_usage,
            want_logprobs: false,
            update_interval: None,
        };
        let d = |s: &str| Delta {
            content: s.into(),
            ..Delta::default()
        };
        let mut role = delta_choice(0, d("x"), false);
        role.delta.role = Some("assistant".into());
        let mut finish = delta_choice(0, d("x"), false);
        finish.finish_reason = Some("stop".into());
        let mut logprobs = delta_choice(0, d("x"), false);
        logprobs.logprobs = Some(wire::ChoiceLogprobs::default());
        let mut refusal = delta_choice(0, d("x"), false);
        refusal.delta.refusal = Some("no".into());
        let mut with_usage = chunk(&m, &opts(true), vec![]);
        with_usage.usage = Some(Some(usage(&Usage::default())));
        let mut debug = chunk(&m, &opts(false), vec![]);
        debug.debug = Some(serde_json::json!({"k": [1, "two"]}));
        let mut other = chunk(&meta(), &opts(false), vec![delta_choice(0, d("b"), false)]);
        other.system_fingerprint = None;
        let chunks = [
            chunk(
                &m,
                &opts(false),
                vec![delta_choice(0, d("a \"q\"\n"), false)],
            ),
            chunk(
                &m,
                &opts(true),
                vec![
                    delta_choice(1, d("\u{1F600}"), false),
                    delta_choice(0, d(""), false),
                ],
            ),
            with_usage,
            debug,
            other,
            chunk(&m, &opts(false), vec![]),
            chunk(
                &m,
                &opts(false),
                vec![delta_choice(3, d("\u{7}tab\t</x>"), false)],
            ),
            chunk(&m, &opts(false), vec![delta_choice(0, d(""), false)]),
            chunk(&m, &opts(false), vec![role]),
            chunk(&m, &opts(false), vec![finish]),
            chunk(&m, &opts(false), vec![logprobs]),
            chunk(&m, &opts(false), vec![refusal]),
        ];
        let mut enc = ChunkEncoder::default();
        for c in &chunks {
            assert_eq!(enc.encode(c).unwrap(), serde_json::to_string(c).unwrap());
        }
    }
}
