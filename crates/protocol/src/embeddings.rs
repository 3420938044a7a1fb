//! OpenAI's embeddings API (`POST /v1/embeddings`), as vLLM and llama-server extend it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingsRequest {
    pub model: String,
    /// A string, a list of strings, a list of token ids, or a list of such lists.
    pub input: Value,
    /// `float` (default) or `base64` (little-endian f32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// vLLM's: cut longer inputs to this many tokens instead of refusing them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate_prompt_tokens: Option<u32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Embedding {
    pub object: String,
    pub index: u32,
    pub embedding: Vector,
    /// GigaChat's: this input's tokens (its SDK requires it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<InputUsage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputUsage {
    pub prompt_tokens: u32,
}

/// A list of floats, or base64 of little-endian f32s (`encoding_format: "base64"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingsUsage {
    pub prompt_tokens: u32,
    pub total_tokens: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingsResponse {
    pub object: String,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: EmbeddingsUsage,
}
