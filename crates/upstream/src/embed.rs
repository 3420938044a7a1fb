//! Embeddings through upstreams that serve OpenAI's `POST /embeddings` (vLLM, SGLang,
//! llama-server, TEI, Ollama, OpenAI itself) and GigaChat's (its OAuth as for chat).

use crate::dialect::{self, AuthStyle, Call};
use crate::{http, Provider, ProviderKind};
use parlance_core::embed::{EmbedInput, EmbedRequest, Embeddings};
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

pub async fn embed(p: &Provider, model: &str, req: EmbedRequest) -> Result<Embeddings, Error> {
    let gigachat = p.cfg.kind == ProviderKind::GigaChat;
    if !matches!(p.cfg.kind, ProviderKind::OpenAi | ProviderKind::GigaChat) {
        return Err(Error::invalid_param(
            "model",
            format!(
                "upstream `{}` has no embeddings API Parlance speaks",
                p.cfg.name
            ),
        )
        .with_code("unsupported"));
    }
    let n = req.inputs.len();
    let mut input = Vec::with_capacity(n);
    for (i, item) in req.inputs.into_iter().enumerate() {
        input.push(match item {
            EmbedInput::Text(t) => Value::String(t),
            EmbedInput::Tokens(_) if gigachat => {
                return Err(Error::invalid_param(
                    format!("input[{i}]"),
                    "this model takes text only, not token ids",
                ))
            }
            EmbedInput::Tokens(t) => json!(t),
        });
    }
    let mut body = json!({"model": model, "input": input});
    if !gigachat {
        // Floats: not every server speaks base64.
        body["encoding_format"] = json!("float");
        if let Some(t) = req.truncate {
            body["truncate_prompt_tokens"] = json!(t);
        }
    }
    let call = Call {
        url: format!("{}/embeddings", p.cfg.base_url),
        body,
        auth: AuthStyle::Bearer,
        extra_headers: Vec::new(),
    };
    let resp = http::send(p, &call).await?;
    let bytes = http::read_body(p, resp).await?;
    let answer: Answer = dialect::parse_json(&bytes, "embeddings answer")
        .map_err(|e| http::from_upstream(&p.cfg.name, e))?;
    if answer.data.len() != n {
        return Err(Error::new(
            ErrorKind::Upstream,
            format!(
                "upstream `{}` embedded {} of {n} inputs",
                p.cfg.name,
                answer.data.len()
            ),
        ));
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
