//! Embeddings in the IR: what a door asks a backend to embed, and what comes back.

/// One input: text, or token ids of the model's own vocabulary (used as given).
#[derive(Debug, Clone, PartialEq)]
pub enum EmbedInput {
    Text(String),
    Tokens(Vec<u32>),
}

impl EmbedInput {
    /// Bytes of input, for estimates and for sending large inputs to the CPU pool.
    pub fn bytes(&self) -> usize {
        match self {
            EmbedInput::Text(t) => t.len(),
            EmbedInput::Tokens(t) => t.len() * 4,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct EmbedRequest {
    pub model: String,
    pub inputs: Vec<EmbedInput>,
    /// Cut an input longer than this many tokens (keeping its start) instead of
    /// refusing it; at most the model's context.
    pub truncate: Option<u32>,
}

/// One vector per input, in input order, and the tokens they took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: u32,
    /// Each input's tokens, when the backend knows them (local models).
    pub input_tokens: Option<Vec<u32>>,
}

/// Documents scored against a query by a reranker (a cross-encoder).
#[derive(Debug, Clone, Default)]
pub struct RerankRequest {
    pub model: String,
    pub query: String,
    pub documents: Vec<String>,
}

/// One relevance score per document, in document order, and the tokens they took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scores {
    pub scores: Vec<f32>,
    pub prompt_tokens: u32,
}
