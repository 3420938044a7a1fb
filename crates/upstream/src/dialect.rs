//! What differs between providers: how a request is written, how its answer is read.

use crate::sse::SseEvent;
use parlance_core::ir::{ChatRequest, StreamEvent};
use parlance_core::Error;
use serde_json::Value;

/// A request ready to send: where, and the JSON body.
pub struct Call {
    pub url: String,
    pub body: Value,
    /// How the key is presented.
    pub auth: AuthStyle,
    pub extra_headers: Vec<(&'static str, String)>,
}

#[derive(Clone, Copy)]
pub enum AuthStyle {
    Bearer,
    /// Anthropic's `x-api-key`.
    XApiKey,
    /// Gemini's `x-goog-api-key`.
    GoogApiKey,
}

pub trait Dialect: Send + Sync {
    fn build(&self, base_url: &str, model: &str, req: &ChatRequest) -> Result<Call, Error>;
    /// A whole (non-streamed) answer as events: deltas, finishes, usage.
    fn parse_body(&self, body: &[u8], req: &ChatRequest) -> Result<Vec<StreamEvent>, Error>;
    fn stream_mapper(&self, req: &ChatRequest) -> Box<dyn StreamMapper>;
}

/// Turns one provider's SSE events into IR events, keeping whatever state it needs.
pub trait StreamMapper: Send {
    /// `Ok(true)` in the tuple means the provider marked the end of its stream.
    fn on_event(&mut self, ev: SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, Error>;
    /// After the last event: the closing usage, or an error if the stream was cut short.
    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), Error>;
}

/// Parses a JSON answer, or says what was malformed (the caller names the upstream).
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| {
        let head = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
        Error::new(
            parlance_core::ErrorKind::Upstream,
            format!("malformed {what}: {e} (starts with {head:?})"),
        )
    })
}

/// Tracks which choices have finished, so a cut-off stream is an error, not a silent end.
pub struct Finishes {
    done: Vec<bool>,
}

impl Finishes {
    pub fn new(n: u32) -> Self {
        Finishes {
            done: vec![false; n.max(1) as usize],
        }
    }

    pub fn mark(&mut self, index: u32) {
        if let Some(d) = self.done.get_mut(index as usize) {
            *d = true;
        }
    }

    pub fn all(&self) -> bool {
        self.done.iter().all(|&d| d)
    }

    pub fn check(&self) -> Result<(), Error> {
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
