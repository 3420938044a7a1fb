//! Embeddings in the IR: what a door asks a backend to embed, and what comes back.

use crate::backend::ModelInfo;
use crate::error::Code;
use crate::error::Error;

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

/// A caller's wish for shorter vectors (OpenAI's `dimensions`, Gemini's
/// `outputDimensionality`), checked against the model before the call: `Some(k)` when
/// the vectors are to be cut to `k` dimensions, `None` when they stay whole. Only a
/// model declared Matryoshka-trained (`matryoshka = true`) keeps its meaning when cut;
/// `param` is the door's name for the field.
pub fn shortening(info: &ModelInfo, asked: u32, param: &str) -> Result<Option<usize>, Error> {
    if asked == 0 {
        return Err(Error::invalid_param(
            param,
            format!("'{param}' must be at least 1."),
        ));
    }
    match info.dimensions {
        Some(n) if n == asked => Ok(None),
        Some(n) if asked > n => Err(Error::invalid_param(
            param,
            format!("This model makes {n}-dimensional vectors; '{param}' can be at most {n}."),
        )),
        Some(_) | None if info.matryoshka => Ok(Some(asked as usize)),
        Some(n) => Err(Error::invalid_param(
            param,
            format!("This model makes {n}-dimensional vectors and cannot shorten them; leave '{param}' out or send {n}."),
        )
        .with_code(Code::Unsupported)),
        // Not an embedding model: the backend says so.
        None if !info.capabilities.embeddings => Ok(None),
        None => Err(Error::invalid_param(
            param,
            format!("This model cannot shorten its vectors; leave '{param}' out."),
        )
        .with_code(Code::Unsupported)),
    }
}

/// Keeps a vector's first `k` dimensions, scaled back to unit length, as a Matryoshka
/// model's shorter vectors are defined (and as OpenAI shortens its own).
pub fn shorten(v: &mut Vec<f32>, k: usize, param: &str) -> Result<(), Error> {
    if v.len() < k {
        let n = v.len();
        return Err(Error::invalid_param(
            param,
            format!("This model makes {n}-dimensional vectors; '{param}' can be at most {n}."),
        ));
    }
    v.truncate(k);
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    Ok(())
}

impl Embeddings {
    /// Every vector cut to `k` dimensions (see [`shorten`]).
    pub fn shorten(&mut self, k: usize, param: &str) -> Result<(), Error> {
        self.vectors
            .iter_mut()
            .try_for_each(|v| shorten(v, k, param))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(dimensions: Option<u32>, matryoshka: bool) -> ModelInfo {
        let mut info = ModelInfo {
            dimensions,
            matryoshka,
            ..Default::default()
        };
        info.capabilities.embeddings = true;
        info
    }

    #[test]
    fn only_matryoshka_models_shorten_and_never_lengthen() {
        let p = "dimensions";
        assert_eq!(shortening(&model(Some(8), false), 8, p).unwrap(), None);
        assert_eq!(shortening(&model(Some(8), true), 3, p).unwrap(), Some(3));
        assert_eq!(shortening(&model(None, true), 3, p).unwrap(), Some(3));
        for (info, asked, code) in [
            (model(Some(8), false), 3, Some(Code::Unsupported)),
            (model(Some(8), true), 9, None),
            (model(Some(8), true), 0, None),
            (model(None, false), 3, Some(Code::Unsupported)),
        ] {
            let e = shortening(&info, asked, p).unwrap_err();
            assert_eq!((e.status(), e.param.as_deref()), (400, Some(p)));
            assert_eq!(e.code, code, "{e}");
        }
        // Chat models: the backend refuses the whole request in its own words.
        assert_eq!(shortening(&ModelInfo::default(), 3, p).unwrap(), None);
    }

    #[test]
    fn shortened_vectors_are_unit_length_prefixes() {
        let mut e = Embeddings {
            vectors: vec![vec![0.6, 0.0, 0.8], vec![0.0, 0.0, 1.0]],
            ..Default::default()
        };
        e.shorten(2, "dimensions").unwrap();
        assert_eq!(e.vectors, vec![vec![1.0, 0.0], vec![0.0, 0.0]]);
        let e = Embeddings {
            vectors: vec![vec![1.0]],
            ..Default::default()
        }
        .shorten(2, "dimensions")
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("dimensions"));
    }
}
