//! Embeddings in the IR: what a door asks a backend to embed, and what comes back.

/// One input: text, or token ids of the model's own vocabulary (used as given).
#[derive(Debug, Clone, PartialEq)]
pub enum EmbedInput {
    Text(String),
    Tokens(Vec<u32>),
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
}
