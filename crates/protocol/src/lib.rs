//! Wire types only: what each public API puts on the wire, as serde types.
//! No behaviour lives here; `parlance-core` maps these to and from its IR.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod anthropic;
pub mod completions;
pub mod embeddings;
pub mod gemini;
pub mod json;
pub mod openai;
pub mod responses;
