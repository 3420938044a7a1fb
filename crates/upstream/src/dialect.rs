//! What differs between providers: how a request is written, how its answer is read.

use crate::sse::SseEvent;
use parlance_core::ir::{ChatRequest, StreamEvent};
use parlance_core::Error;
use parlance_core::ParamPath;
use serde_json::Value;

/// A request ready to send: where, and the JSON body.
pub(crate) struct Call {
    pub url: String,
    pub body: Value,
    /// How the key is presented.
    pub auth: AuthStyle,
    pub extra_headers: Vec<(&'static str, String)>,
}

#[derive(Clone, Copy)]
pub(crate) enum AuthStyle {
    Bearer,
    /// Anthropic's `x-api-key`.
    XApiKey,
    /// Gemini's `x-goog-api-key`.
    GoogApiKey,
}

pub(crate) trait Dialect: Send + Sync {
    fn build(&self, base_url: &str, model: &str, req: &ChatRequest) -> Result<Call, Error>;
    /// A whole (non-streamed) answer as events: deltas, finishes, usage.
    fn parse_body(&self, body: &[u8], req: &ChatRequest) -> Result<Vec<StreamEvent>, Error>;
    fn stream_mapper(&self, req: &ChatRequest) -> Box<dyn StreamMapper>;
}

/// Turns one provider's SSE events into IR events, keeping whatever state it needs.
pub(crate) trait StreamMapper: Send {
    /// `Ok(true)` in the tuple means the provider marked the end of its stream.
    fn on_event(&mut self, ev: SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, Error>;
    /// After the last event: the closing usage, or an error if the stream was cut short.
    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), Error>;
}

/// A history call's arguments as the JSON object that providers taking objects (not
/// text) need; arguments that are not one are the caller's error, not silently `{}`.
pub(crate) fn call_arguments(
    msg: usize,
    call: usize,
    args: &str,
) -> Result<serde_json::Value, Error> {
    if args.trim().is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    match serde_json::from_str::<serde_json::Value>(args) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        _ => Err(Error::invalid_param(
            ParamPath::message(msg)
                .then("tool_calls")
                .at(call)
                .then("function")
                .then("arguments"),
            "this model's provider needs tool-call arguments to be a JSON object",
        )),
    }
}

/// The function a tool result answers, for providers that match results by name (Gemini,
/// GigaChat): looked up by call id among the earlier assistant calls, else the message's
/// own `name`.
pub(crate) fn answered_function(req: &ChatRequest, msg: usize) -> Result<String, Error> {
    let (earlier, rest) = req.messages.split_at(msg.min(req.messages.len()));
    let Some(m) = rest.first() else {
        return Err(Error::internal(format!("no message {msg} to answer")));
    };
    let id = m.tool_call_id.as_deref().unwrap_or_default();
    earlier
        .iter()
        .rev()
        .flat_map(|earlier| &earlier.tool_calls)
        .find(|c| c.id == id)
        .map(|c| c.name.clone())
        .or_else(|| m.name.clone())
        .ok_or_else(|| {
            Error::invalid_param(
                ParamPath::message(msg).then("tool_call_id"),
                format!("tool_call_id {id:?} matches no earlier assistant tool call"),
            )
        })
}

/// Parses a JSON answer, or says what was malformed (the caller names the upstream).
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, Error> {
    // One UTF-8 check of the whole body, then none per string: `from_slice` checks each
    // string on its own, and those calls were ~8% of a proxied stream's instructions.
    let parsed = match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    };
    parsed.map_err(|e| malformed(bytes, what, &e))
}

/// [`parse_json`] of text already known to be UTF-8 (an SSE event's data).
pub(crate) fn parse_json_text<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &str,
) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| malformed(text.as_bytes(), what, &e))
}

fn malformed(bytes: &[u8], what: &str, e: &serde_json::Error) -> Error {
    let head = String::from_utf8_lossy(bytes.get(..200).unwrap_or(bytes)).into_owned();
    Error::new(
        parlance_core::ErrorKind::Upstream,
        format!("malformed {what}: {e} (starts with {head:?})"),
    )
}

/// Tracks which choices have finished, so a cut-off stream is an error, not a silent end.
pub(crate) struct Finishes {
    done: Vec<bool>,
}

impl Finishes {
    pub(crate) fn new(n: u32) -> Self {
        Finishes {
            done: vec![false; n.max(1) as usize],
        }
    }

    pub(crate) fn mark(&mut self, index: u32) {
        if let Some(d) = self.done.get_mut(index as usize) {
            *d = true;
        }
    }

    pub(crate) fn all(&self) -> bool {
        self.done.iter().all(|&d| d)
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.all() {
            Ok(())
        } else {
            Err(Error::new(
                parlance_core::ErrorKind::Upstream,
                "stream ended before every choice finished",
            ))
        }
    }
}
