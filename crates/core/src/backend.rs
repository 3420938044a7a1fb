//! The one interface between the router and whatever produces tokens: the local
//! engine, or an upstream provider. A backend never sees a wire format.

use crate::embed::{EmbedRequest, Embeddings, RerankRequest, Scores};
use crate::error::Code;
use crate::error::Error;
use crate::ir::{ChatRequest, StreamEvent};
use async_trait::async_trait;
use futures::Stream;
use serde::Serialize;
use std::pin::Pin;

pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, Error>> + Send>>;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Capabilities {
    pub chat: bool,
    pub vision: bool,
    pub tools: bool,
    pub json_schema: bool,
    pub logprobs: bool,
    pub embeddings: bool,
    pub rerank: bool,
}

/// What `/v1/models` shows about one model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelInfo {
    pub id: String,
    pub owned_by: String,
    /// Unix seconds.
    pub created: u64,
    /// `chat`, `reasoning`, `code`, ...
    pub kind: String,
    pub context_length: u32,
    /// Most completion tokens one request may ask for; also the default when it asks
    /// for none (local models). `None`: no limit of Parlance's own.
    pub max_output_tokens: Option<u32>,
    pub capabilities: Capabilities,
    /// The length of its vectors, for embedding models.
    pub dimensions: Option<u32>,
    /// Trained so that a prefix of its vectors is a good shorter vector (Matryoshka
    /// representation learning): callers may ask for fewer dimensions.
    pub matryoshka: bool,
    /// USD per million tokens, for metering; `None`: free (local models).
    pub price: Option<Price>,
    /// The model file's own metadata (GGUF keys, values as text; long arrays such as
    /// the vocabulary left out), for those who show it (Ollama's `/api/show`).
    pub file_metadata: Option<std::sync::Arc<Vec<(String, String)>>>,
}

/// What a local model is doing right now (`/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Load {
    /// Requests waiting for a slot.
    pub queued: usize,
    pub busy_slots: usize,
    pub slots: usize,
    /// Tokens generated since the model loaded (a rate is two readings apart).
    pub generated_tokens: u64,
}

/// One deployment of a pool as it stands now (the admin console's live view).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DeploymentState {
    pub name: String,
    pub weight: u32,
    pub in_flight: usize,
    /// Attempts sent to it since start, and how many of them failed.
    pub attempts: u64,
    pub failures: u64,
    /// Failures in a row; at the pool's threshold it cools down.
    pub consecutive_failures: u32,
    /// Milliseconds of cooldown left; `None` while it takes requests.
    pub cooldown_ms: Option<u64>,
    /// Why it cannot serve at all (a dead engine), if so.
    pub down: Option<String>,
    pub load: Option<Load>,
}

/// What a backend is made of, for the admin console's catalog.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Composition {
    /// Set by a preset.
    pub system_prompt: Option<String>,
    /// A preset's defaults as `name=value`.
    pub defaults: Vec<String>,
    pub deployments: Vec<DeploymentState>,
    /// Models tried, in order, when every deployment fails.
    pub fallbacks: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Cached prompt tokens; default: the input price.
    pub cached_input: Option<f64>,
}

impl Price {
    pub fn cost(&self, u: &crate::ir::Usage) -> f64 {
        let cached = f64::from(u.cached_tokens.min(u.prompt_tokens));
        let fresh = f64::from(u.prompt_tokens) - cached;
        (fresh * self.input
            + cached * self.cached_input.unwrap_or(self.input)
            + f64::from(u.completion_tokens) * self.output)
            / 1_000_000.0
    }
}

/// Turns a request's `http(s)` image URLs into inline bytes, for backends that need
/// the bytes themselves (local vision models). The fetcher (with its SSRF rules)
/// lives with the HTTP clients; backends get it as this trait.
#[async_trait]
pub trait InlineImages: Send + Sync + std::fmt::Debug {
    /// Replaces every URL image by its bytes; a failure is a 400 naming the part.
    async fn inline_images(&self, request: &mut ChatRequest) -> Result<(), Error>;
}

#[async_trait]
pub trait Backend: Send + Sync {
    /// Starts generating. Errors that are known before the first token (bad input for
    /// this model, a full queue) come back here, so they can still be a plain HTTP error.
    async fn chat(&self, request: ChatRequest) -> Result<EventStream, Error>;

    /// `Err(reason)` when this backend cannot serve at all (its engine thread died);
    /// `/health` reports it and requests get a 503.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Queue and slot occupancy, for backends that have them (local models).
    fn load(&self) -> Option<Load> {
        None
    }

    /// Loaded or not, for models loaded on demand; `None`: always loaded.
    fn residency(&self) -> Option<crate::lazy::Residency> {
        None
    }

    /// Its deployments, presets and fallbacks; a plain backend is one anonymous
    /// deployment, shown by its load alone.
    fn composition(&self) -> Composition {
        Composition::default()
    }

    /// Token ids of a text (llama-server's `/tokenize`); `special`: add BOS and parse
    /// special-token text.
    async fn tokenize(&self, text: &str, special: bool) -> Result<Vec<u32>, Error> {
        let _ = (text, special);
        Err(
            Error::invalid("this model cannot tokenize (only local models can)")
                .with_code(Code::Unsupported),
        )
    }

    /// The text of token ids (llama-server's `/detokenize`).
    async fn detokenize(&self, tokens: &[u32]) -> Result<String, Error> {
        let _ = tokens;
        Err(
            Error::invalid("this model cannot detokenize (only local models can)")
                .with_code(Code::Unsupported),
        )
    }

    /// Prompt tokens the messages' images take, as this model counts them (token
    /// counting endpoints); 0 where the backend cannot tell before generating
    /// (upstreams). A bad image is a 400 naming its part (`messages[i].content[j]`).
    async fn count_image_tokens(&self, messages: &[crate::ir::Message]) -> Result<u32, Error> {
        let _ = messages;
        Ok(0)
    }

    /// Tokens in each text, as this model counts them (GigaChat's `POST /tokens/count`).
    async fn count_tokens(&self, texts: &[String]) -> Result<Vec<u32>, Error> {
        let _ = texts;
        Err(Error::invalid("this model cannot count tokens").with_code(Code::Unsupported))
    }

    /// One vector per input. A backend that makes none answers a 400 naming `model`.
    async fn embed(&self, request: EmbedRequest) -> Result<Embeddings, Error> {
        Err(Error::invalid_param(
            "model",
            format!(
                "`{}` is not an embedding model: it cannot make embeddings.",
                request.model
            ),
        )
        .with_code(Code::Unsupported))
    }

    /// One relevance score per document. A backend that is no reranker answers a 400
    /// naming `model`.
    async fn rerank(&self, request: RerankRequest) -> Result<Scores, Error> {
        Err(Error::invalid_param(
            "model",
            format!(
                "`{}` is not a reranker: it cannot score documents.",
                request.model
            ),
        )
        .with_code(Code::Unsupported))
    }
}
