//! The provider-neutral request and stream. Front doors build a [`ChatRequest`] once,
//! validated; backends only ever see this type and answer with [`StreamEvent`]s.

use serde::Serialize;
use serde_json::Value;

mod options;
mod origins;
pub use options::{AnthropicOptions, GeminiOptions, ProviderOptions};
pub use origins::PartOrigins;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// A remote `http(s)` URL.
    Url(String),
    /// Inline bytes, still base64-encoded, with their media type (`image/png`).
    Base64 { media_type: String, data: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ContentPart {
    Text(String),
    Image(ImageSource),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text, exactly as the model or caller produced it.
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<ContentPart>,
    pub name: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub tool_call_id: Option<String>,
    pub reasoning: Option<String>,
    /// The provider's signature over `reasoning` (Anthropic's thinking blocks), which
    /// it needs back, unchanged, in later turns.
    pub reasoning_signature: Option<String>,
    /// A tool result that reports a failure (Anthropic's `is_error`).
    pub is_error: bool,
}

impl Message {
    /// A message with nothing in it yet.
    pub fn empty(role: Role) -> Self {
        Message {
            role,
            content: Vec::new(),
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            reasoning: None,
            reasoning_signature: None,
            is_error: false,
        }
    }

    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Message {
            content: vec![ContentPart::Text(text.into())],
            ..Message::empty(role)
        }
    }

    /// The text parts joined; images are skipped.
    pub fn joined_text(&self) -> String {
        let mut out = String::new();
        for part in &self.content {
            if let ContentPart::Text(t) = part {
                out.push_str(t);
            }
        }
        out
    }

    pub fn has_images(&self) -> bool {
        self.content
            .iter()
            .any(|p| matches!(p, ContentPart::Image(_)))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolDef {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
    pub strict: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub enum ToolChoice {
    #[default]
    Auto,
    None,
    Required,
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub enum ResponseFormat {
    #[default]
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        schema: Value,
        strict: bool,
    },
    /// Extension: a Lark grammar as llguidance takes it.
    Grammar(String),
}

/// How much a reasoning model should think; unset fields: the model's default. Each
/// provider takes one of the two and the other is derived on the way out.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reasoning {
    pub effort: Option<Effort>,
    /// Thinking tokens (Anthropic's `budget_tokens`, Gemini's `thinkingBudget`); 0: off.
    pub budget_tokens: Option<u32>,
}

/// How hard a reasoning model thinks, in the words providers share (OpenAI's
/// `reasoning_effort`, Gemini's `thinkingLevel`, Ollama's `think`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effort {
    None,
    Minimal,
    Low,
    Medium,
    High,
    XHigh,
}

impl Effort {
    const ALL: [Effort; 6] = [
        Effort::None,
        Effort::Minimal,
        Effort::Low,
        Effort::Medium,
        Effort::High,
        Effort::XHigh,
    ];

    /// The words, for error messages.
    pub const WORDS: &'static str = "none, minimal, low, medium, high, xhigh";

    pub fn parse(word: &str) -> Option<Effort> {
        Effort::ALL.into_iter().find(|e| e.as_str() == word)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Effort::None => "none",
            Effort::Minimal => "minimal",
            Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High => "high",
            Effort::XHigh => "xhigh",
        }
    }
}

impl Reasoning {
    /// The budget asked for, or one derived from the effort on this provider's scale
    /// (tokens for low, medium and high).
    pub fn budget(&self, scale: [u32; 3]) -> Option<u32> {
        self.budget_tokens.or_else(|| {
            Some(match self.effort? {
                Effort::None => 0,
                Effort::Minimal | Effort::Low => scale[0],
                Effort::Medium => scale[1],
                Effort::High | Effort::XHigh => scale[2],
            })
        })
    }

    /// The effort asked for, or the nearest one to a budget.
    pub fn effort(&self) -> Option<Effort> {
        self.effort.or_else(|| {
            self.budget_tokens.map(|b| match b {
                0 => Effort::None,
                1..=2048 => Effort::Low,
                2049..=12000 => Effort::Medium,
                _ => Effort::High,
            })
        })
    }
}

/// Sampling knobs. `None` means "the model's or deployment's default".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SamplingParams {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    /// (token id, bias) pairs; ids are checked against the vocabulary by the backend.
    pub logit_bias: Vec<(i32, f32)>,
    pub seed: Option<u64>,
}

impl SamplingParams {
    /// Fills what is unset here from `d` (a deployment's or preset's defaults); the
    /// one place that lists the knobs besides their definition.
    pub fn fill_from(&mut self, d: &SamplingParams) {
        self.temperature = self.temperature.or(d.temperature);
        self.top_p = self.top_p.or(d.top_p);
        self.top_k = self.top_k.or(d.top_k);
        self.min_p = self.min_p.or(d.min_p);
        self.presence_penalty = self.presence_penalty.or(d.presence_penalty);
        self.frequency_penalty = self.frequency_penalty.or(d.frequency_penalty);
        self.repetition_penalty = self.repetition_penalty.or(d.repetition_penalty);
        self.seed = self.seed.or(d.seed);
        if self.logit_bias.is_empty() {
            self.logit_bias = d.logit_bias.clone();
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    /// Legacy completions: text the model continues as it is, with no chat template
    /// (`messages` is then empty). Only local models take it.
    pub raw_prompt: Option<String>,
    pub sampling: SamplingParams,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    /// Number of choices, >= 1.
    pub n: u32,
    pub stream: bool,
    pub tools: Vec<ToolDef>,
    pub tool_choice: ToolChoice,
    pub parallel_tool_calls: bool,
    pub response_format: ResponseFormat,
    pub reasoning: Reasoning,
    /// `Some(k)`: return logprobs with the top `k` alternatives per token.
    pub logprobs: Option<u32>,
    pub ignore_eos: bool,
    pub user: Option<String>,
    /// Ask the backend for a `StreamEvent::Debug` (rendered prompt, timings, slot).
    pub debug: bool,
    /// What the caller asked of particular providers (see [`ProviderOptions`]).
    pub options: ProviderOptions,
    /// Where its messages came from in the caller's request (set by the doors).
    pub origins: PartOrigins,
    /// Who asked and how far the answer got; every layer sees it.
    pub context: RequestContext,
}

impl ChatRequest {
    /// Bytes of inline image data (base64) the request carries.
    pub fn image_bytes(&self) -> usize {
        image_bytes(&self.messages)
    }
}

/// Bytes of the messages' inline images (base64, as sent).
pub fn image_bytes(messages: &[Message]) -> usize {
    messages
        .iter()
        .flat_map(|m| &m.content)
        .map(|p| match p {
            ContentPart::Image(ImageSource::Base64 { data, .. }) => data.len(),
            _ => 0,
        })
        .sum()
}

/// Per-request facts that are not the request itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestContext {
    pub request_id: String,
    /// The stored key that authenticated the request, if any.
    pub key_id: Option<String>,
    /// The conversation this request continues (GigaChat's `X-Session-ID`, a stored
    /// Responses conversation): a pool sends a conversation's turns to the same
    /// deployment, whose prefix cache holds its history.
    pub session: Option<String>,
    /// How long the model stays loaded after this request, when it is one loaded on
    /// demand (Ollama's `keep_alive`); `None`: the model's own setting.
    pub keep_alive: Option<crate::lazy::KeepAlive>,
    /// The context size to load the model with, when it is one loaded on demand
    /// (Ollama's `num_ctx`): an idle model loaded with another size is loaded again.
    pub context_window: Option<u32>,
    /// Shared with the backend, which counts what it has done as it goes, so a request
    /// cancelled or failed midway is still metered exactly.
    pub progress: Progress,
}

/// Token counts a backend updates while it works (see [`RequestContext::progress`]).
#[derive(Debug, Clone, Default)]
pub struct Progress(std::sync::Arc<ProgressCounts>);

#[derive(Debug, Default)]
pub struct ProgressCounts {
    pub prompt_tokens: std::sync::atomic::AtomicU32,
    pub cached_tokens: std::sync::atomic::AtomicU32,
    pub completion_tokens: std::sync::atomic::AtomicU32,
    /// Set by backends that count exactly (the local engine); others leave it unset and
    /// the meter estimates.
    pub exact: std::sync::atomic::AtomicBool,
    /// What served the request (`local/NAME`, `PROVIDER/MODEL`): the last deployment tried.
    pub deployment: std::sync::Mutex<String>,
    /// Checks the request's limits again once its prompt is counted (see
    /// [`Progress::prompt_counted`]).
    pub prompt_gate: std::sync::Mutex<Option<PromptGate>>,
    /// Microseconds this request waited for its model to load (Ollama's `load_duration`).
    pub load_micros: std::sync::atomic::AtomicU64,
}

/// What the limits say once a backend knows a prompt's exact token count, before any
/// work is queued: the estimate made from bytes is replaced by the count, and a request
/// that no longer fits is refused there.
#[derive(Clone)]
pub struct PromptGate(
    pub  std::sync::Arc<
        dyn Fn(u32) -> futures::future::BoxFuture<'static, Result<(), crate::Error>> + Send + Sync,
    >,
);

impl std::fmt::Debug for PromptGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PromptGate")
    }
}

impl Progress {
    pub fn counts(&self) -> &ProgressCounts {
        &self.0
    }

    pub fn set_load_time(&self, took: std::time::Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.0
            .load_micros
            .store(micros, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn load_time(&self) -> std::time::Duration {
        std::time::Duration::from_micros(
            self.0
                .load_micros
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    pub fn set_deployment(&self, name: impl Into<String>) {
        if let Ok(mut d) = self.0.deployment.lock() {
            *d = name.into();
        }
    }

    pub fn deployment(&self) -> String {
        self.0
            .deployment
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }

    pub fn set_prompt_gate(&self, gate: PromptGate) {
        if let Ok(mut g) = self.0.prompt_gate.lock() {
            *g = Some(gate);
        }
    }

    /// Drops an unused gate (and the limits' tickets it holds) when the request ends.
    pub fn clear_prompt_gate(&self) {
        let gate = self.0.prompt_gate.lock().ok().and_then(|mut g| g.take());
        drop(gate);
    }

    /// A backend that counts prompts exactly calls this before queueing the work: the
    /// limits are checked again with `prompt_tokens` (once per request: a retry on
    /// another deployment is not charged twice).
    pub async fn prompt_counted(&self, prompt_tokens: u32) -> Result<(), crate::Error> {
        let gate = self.0.prompt_gate.lock().ok().and_then(|mut g| g.take());
        match gate {
            Some(g) => (g.0)(prompt_tokens).await,
            None => Ok(()),
        }
    }

    /// What the backend has reported so far, when it counts exactly.
    pub fn usage(&self) -> Option<Usage> {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.0;
        c.exact.load(Relaxed).then(|| Usage {
            prompt_tokens: c.prompt_tokens.load(Relaxed),
            completion_tokens: c.completion_tokens.load(Relaxed),
            cached_tokens: c.cached_tokens.load(Relaxed),
            ..Usage::default()
        })
    }
}

/// Progress is a side channel: two requests are equal whatever their counters say.
impl PartialEq for Progress {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TopLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TokenLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<TopLogprob>,
}

/// A fragment of one streamed tool call; `id` and `name` come on its first fragment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolCallDelta {
    pub index: u32,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Delta {
    pub content: String,
    pub reasoning: String,
    /// A signature over the reasoning so far (see `Message::reasoning_signature`).
    pub reasoning_signature: String,
    pub tool_calls: Vec<ToolCallDelta>,
    pub logprobs: Vec<TokenLogprob>,
}

impl Delta {
    pub fn text(s: impl Into<String>) -> Self {
        Delta {
            content: s.into(),
            ..Delta::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.content.is_empty()
            && self.reasoning.is_empty()
            && self.reasoning_signature.is_empty()
            && self.tool_calls.is_empty()
            && self.logprobs.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens served from a cache instead of being computed.
    pub cached_tokens: u32,
    /// Prompt tokens written to a provider's cache this time (Anthropic's
    /// `cache_creation_input_tokens`); part of `prompt_tokens`.
    pub cache_creation_tokens: u32,
    pub reasoning_tokens: u32,
}

impl Usage {
    pub fn total(&self) -> u32 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// What a backend streams back. Per choice: any number of `Delta`s, then exactly one
/// `Finish`. After all choices: one `Usage`, then optionally one `Debug`.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Delta {
        index: u32,
        delta: Delta,
    },
    Finish {
        index: u32,
        reason: FinishReason,
        /// The caller's stop sequence that ended the choice, when one did.
        stop_sequence: Option<String>,
    },
    Usage(Usage),
    Debug(Value),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_origins_name_parts_as_the_caller_sent_them() {
        // OpenAI's door: the IR's own paths, less a preset's system message in front.
        let mut same = PartOrigins::same_as_ir();
        assert_eq!(
            same.name("messages[1].content[2]").as_deref(),
            Some("messages[1].content[2]")
        );
        same.message_prepended();
        assert_eq!(
            same.name("messages[1].content[2]").as_deref(),
            Some("messages[0].content[2]")
        );
        assert_eq!(same.name("messages[0]"), None);
        let mut joined = PartOrigins::same_as_ir();
        joined.part_prepended();
        assert_eq!(
            joined.name("messages[0].content[1]").as_deref(),
            Some("messages[0].content[0]")
        );
        assert_eq!(
            joined.name("messages[1].content[1]").as_deref(),
            Some("messages[1].content[1]")
        );
        // A door that records: Anthropic's system prompt is IR message 0.
        let mut recorded = PartOrigins::default();
        recorded.message(0, "system");
        recorded.message(1, "messages.0");
        recorded.part(1, 1, "messages.0.content.1");
        assert_eq!(
            recorded.name("messages[1].content[1]").as_deref(),
            Some("messages.0.content.1")
        );
        assert_eq!(
            recorded.name("messages[1].content").as_deref(),
            Some("messages.0.content")
        );
        recorded.message_prepended();
        assert_eq!(
            recorded.name("messages[2].content[1]").as_deref(),
            Some("messages.0.content.1")
        );
        assert_eq!(recorded.name("max_tokens"), None);
    }
}
