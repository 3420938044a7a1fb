//! Embeddings through upstreams that serve OpenAI's `POST /embeddings` (vLLM, SGLang,
//! llama-server, TEI, Ollama, OpenAI itself), GigaChat's (its OAuth as for chat) and
//! Gemini's `batchEmbedContents`; rerank through the Cohere-style `POST /rerank` that
//! vLLM, llama-server, Jina and Cohere serve.

use crate::dialect::{self, AuthStyle, Call};
use crate::{http, Provider, ProviderKind};
use parlance_core::embed::{EmbedInput, EmbedRequest, Embeddings, RerankRequest, Scores};
use parlance_core::Code;
use parlance_core::ParamPath;
use parlance_core::{Error, ErrorKind};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct Answer {
    data: Vec<Item>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Item {
    #[serde(default)]
    index: Option<usize>,
    embedding: Vec<f32>,
    /// GigaChat's per-input count.
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u32,
}

/// The upstream's own count when it gives one, else the estimate TPM limits use.
fn estimated(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(4)).unwrap_or(u32::MAX)
}

/// One JSON exchange with the upstream: the request, its answer read as `T`.
async fn exchange<T: serde::de::DeserializeOwned>(
    p: &Provider,
    url: String,
    body: Value,
    auth: AuthStyle,
    what: &str,
) -> Result<T, Error> {
    let call = Call {
        url,
        body,
        auth,
        extra_headers: Vec::new(),
    };
    let resp = http::send(p, &call).await?;
    let bytes = http::read_body(p, resp).await?;
    dialect::parse_json(&bytes, what).map_err(|e| http::from_upstream(&p.cfg.name, e))
}

/// An answer with fewer items than were asked for is the upstream's fault.
fn short_answer(p: &Provider, verb: &str, got: usize, asked: usize, items: &str) -> Error {
    Error::new(
        ErrorKind::Upstream,
        format!("upstream `{}` {verb} {got} of {asked} {items}", p.cfg.name),
    )
}

fn unsupported(p: &Provider, what: &str) -> Error {
    Error::invalid_param(
        "model",
        format!(
            "upstream `{}` has no {what} API Parlance speaks",
            p.cfg.name
        ),
    )
    .with_code(Code::Unsupported)
}

pub(crate) async fn embed(
    p: &Provider,
    model: &str,
    req: EmbedRequest,
) -> Result<Embeddings, Error> {
    let gigachat = p.cfg.kind == ProviderKind::GigaChat;
    match p.cfg.kind {
        ProviderKind::OpenAi | ProviderKind::GigaChat => {}
        ProviderKind::Gemini => return gemini(p, model, req).await,
        ProviderKind::Anthropic => return Err(unsupported(p, "embeddings")),
    }
    let n = req.inputs.len();
    let mut input = Vec::with_capacity(n);
    for (i, item) in req.inputs.into_iter().enumerate() {
        input.push(match item {
            EmbedInput::Text(t) => Value::String(t),
            EmbedInput::Tokens(_) if gigachat => {
                return Err(Error::invalid_param(
                    ParamPath::field("input").at(i),
                    "this model takes text only, not token ids",
                ))
            }
            EmbedInput::Tokens(t) => json!(t),
        });
    }
    let mut body = serde_json::Map::new();
    body.insert("model".into(), json!(model));
    body.insert("input".into(), json!(input));
    if !gigachat {
        // Floats: not every server speaks base64.
        body.insert("encoding_format".into(), json!("float"));
        if let Some(t) = req.truncate {
            body.insert("truncate_prompt_tokens".into(), json!(t));
        }
    }
    let body = Value::Object(body);
    let url = format!("{}/embeddings", p.cfg.base_url);
    let answer: Answer = exchange(p, url, body, AuthStyle::Bearer, "embeddings answer").await?;
    if answer.data.len() != n {
        return Err(short_answer(p, "embedded", answer.data.len(), n, "inputs"));
    }
    let mut items = answer.data;
    items.sort_by_key(|it| it.index.unwrap_or(usize::MAX));
    let per_input: Option<Vec<u32>> = items
        .iter()
        .map(|it| it.usage.as_ref().map(|u| u.prompt_tokens))
        .collect();
    let prompt_tokens = answer
        .usage
        .map(|u| u.prompt_tokens)
        .unwrap_or_else(|| per_input.as_ref().map_or(0, |c| c.iter().sum()));
    Ok(Embeddings {
        vectors: items.into_iter().map(|it| it.embedding).collect(),
        prompt_tokens,
        input_tokens: per_input,
    })
}

#[derive(Deserialize)]
struct GeminiAnswer {
    embeddings: Vec<GeminiVector>,
}

#[derive(Deserialize)]
struct GeminiVector {
    values: Vec<f32>,
}

/// Gemini's `models/{model}:batchEmbedContents`: text only, and no token counts in the
/// answer (so usage is the estimate).
async fn gemini(p: &Provider, model: &str, req: EmbedRequest) -> Result<Embeddings, Error> {
    let n = req.inputs.len();
    let bytes: usize = req.inputs.iter().map(EmbedInput::bytes).sum();
    let mut requests = Vec::with_capacity(n);
    for (i, item) in req.inputs.into_iter().enumerate() {
        let EmbedInput::Text(text) = item else {
            return Err(Error::invalid_param(
                ParamPath::field("input").at(i),
                "this model takes text only, not token ids",
            ));
        };
        requests.push(json!({
            "model": format!("models/{model}"),
            "content": {"parts": [{"text": text}]},
        }));
    }
    let url = format!("{}/models/{model}:batchEmbedContents", p.cfg.base_url);
    let body = json!({"requests": requests});
    let answer: GeminiAnswer =
        exchange(p, url, body, AuthStyle::GoogApiKey, "embeddings answer").await?;
    if answer.embeddings.len() != n {
        return Err(short_answer(
            p,
            "embedded",
            answer.embeddings.len(),
            n,
            "inputs",
        ));
    }
    Ok(Embeddings {
        vectors: answer.embeddings.into_iter().map(|v| v.values).collect(),
        prompt_tokens: estimated(bytes),
        input_tokens: None,
    })
}

#[derive(Deserialize)]
struct RerankAnswer {
    results: Vec<Ranked>,
    #[serde(default)]
    usage: Option<RerankUsage>,
}

#[derive(Deserialize)]
struct Ranked {
    index: usize,
    relevance_score: f32,
}

/// vLLM and Jina say `total_tokens`, llama-server both.
#[derive(Deserialize)]
struct RerankUsage {
    #[serde(default)]
    prompt_tokens: Option<u32>,
    #[serde(default)]
    total_tokens: Option<u32>,
}

/// The Cohere-style `POST {base}/rerank`; its results come sorted by score, so they
/// are put back in document order, and every document must have one.
pub(crate) async fn rerank(p: &Provider, model: &str, req: RerankRequest) -> Result<Scores, Error> {
    if p.cfg.kind != ProviderKind::OpenAi {
        return Err(unsupported(p, "rerank"));
    }
    let n = req.documents.len();
    let bytes = req.query.len() * n + req.documents.iter().map(String::len).sum::<usize>();
    let url = format!("{}/rerank", p.cfg.base_url);
    let body = json!({"model": model, "query": req.query, "documents": req.documents, "top_n": n});
    let answer: RerankAnswer = exchange(p, url, body, AuthStyle::Bearer, "rerank answer").await?;
    let mut scores: Vec<Option<f32>> = vec![None; n];
    for r in &answer.results {
        if let Some(slot) = scores.get_mut(r.index) {
            *slot = Some(r.relevance_score);
        }
    }
    let scores: Option<Vec<f32>> = scores.into_iter().collect();
    let Some(scores) = scores else {
        return Err(short_answer(
            p,
            "scored",
            answer.results.len(),
            n,
            "documents",
        ));
    };
    let prompt_tokens = answer
        .usage
        .and_then(|u| u.prompt_tokens.or(u.total_tokens))
        .unwrap_or_else(|| estimated(bytes));
    Ok(Scores {
        scores,
        prompt_tokens,
    })
}
