//! OpenAI's embeddings door: `POST /v1/embeddings` (also under `/api/v1`), as the
//! `openai` SDK's `client.embeddings.create` and LangChain's `OpenAIEmbeddings` call it,
//! with vLLM's and llama-server's extensions (token-id inputs, `truncate_prompt_tokens`).

use crate::auth::Principal;
use crate::body::read_json;
use crate::error::ApiError;
use crate::metering::{embedded, with_rate_headers};
use crate::reqlog::RequestCtx;
use crate::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use parlance_core::embed::{shortening, EmbedInput, EmbedRequest, Embeddings};
use parlance_core::Error;
use parlance_core::ParamPath;
use parlance_protocol::embeddings as wire;
use serde_json::Value;
use std::sync::Arc;

/// Inputs one request may carry (OpenAI's limit).
pub(crate) const MAX_INPUTS: usize = 2048;

/// The door's name in usage rows.
const DOOR: &str = "embeddings";

pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    Extension(principal): Extension<Principal>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: wire::EmbeddingsRequest = read_json(body, state.body_limit).await?;
    ctx.set_model(&req.model);
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(Error::invalid_param(
                "encoding_format",
                format!("'encoding_format' must be float or base64, got {other:?}."),
            )
            .into())
        }
    };
    let inputs = inputs(req.input)?;
    let route = state.router.resolve(&req.model)?;
    let shorten = match req.dimensions {
        Some(asked) => shortening(&route.info, asked, "dimensions")?,
        None => None,
    };
    if req.truncate_prompt_tokens == Some(0) {
        return Err(Error::invalid_param(
            "truncate_prompt_tokens",
            "'truncate_prompt_tokens' must be at least 1.",
        )
        .into());
    }
    let bytes = inputs.iter().map(EmbedInput::bytes).sum();
    let ir = EmbedRequest {
        model: req.model.clone(),
        inputs,
        truncate: req.truncate_prompt_tokens,
    };
    let work = route.backend.embed(ir);
    let tokens = |e: &Embeddings| e.prompt_tokens;
    let metered = embedded(
        &state,
        &ctx,
        &principal,
        &route.info,
        DOOR,
        bytes,
        work,
        tokens,
    );
    let (mut made, rate) = match metered.await {
        Ok(done) => done,
        Err((e, rate)) => return Ok(with_rate_headers(ApiError(e).into_response(), &rate)),
    };
    if let Some(k) = shorten {
        made.shorten(k, "dimensions")?;
    }
    let counts = made.input_tokens.unwrap_or_default();
    let data = made
        .vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| wire::Embedding {
            object: "embedding".into(),
            index: i as u32,
            usage: counts
                .get(i)
                .map(|&prompt_tokens| wire::InputUsage { prompt_tokens }),
            embedding: if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                wire::Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                wire::Vector::Float(v)
            },
        })
        .collect();
    let body = wire::EmbeddingsResponse {
        object: "list".into(),
        data,
        model: req.model,
        usage: wire::EmbeddingsUsage {
            prompt_tokens: made.prompt_tokens,
            total_tokens: made.prompt_tokens,
        },
    };
    Ok(with_rate_headers(Json(body).into_response(), &rate))
}

/// OpenAI's input forms: a string, a list of strings, a list of token ids, or a list
/// of lists of token ids; anything else is a 400 naming the part.
fn inputs(input: Value) -> Result<Vec<EmbedInput>, Error> {
    let bad = |at: &str, what: &str| Error::invalid_param(at, format!("'{at}' {what}"));
    let ids = |v: &[Value], at: &str| -> Result<Vec<u32>, Error> {
        v.iter()
            .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| bad(at, "must hold token ids (non-negative integers)."))
    };
    let text = |s: String, at: &str| -> Result<EmbedInput, Error> {
        if s.is_empty() {
            return Err(bad(at, "is an empty string."));
        }
        Ok(EmbedInput::Text(s))
    };
    let out =
        match input {
            Value::String(s) => vec![text(s, "input")?],
            Value::Array(items) if items.is_empty() => {
                return Err(bad("input", "is an empty list: send at least one input."))
            }
            Value::Array(items) if items.iter().all(Value::is_number) => {
                vec![EmbedInput::Tokens(ids(&items, "input")?)]
            }
            Value::Array(items) => {
                if items.len() > MAX_INPUTS {
                    return Err(bad(
                        "input",
                        &format!(
                            "holds {} inputs; at most {MAX_INPUTS} per request.",
                            items.len()
                        ),
                    ));
                }
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    let at = ParamPath::field("input").at(i);
                    out.push(match item {
                        Value::String(s) => text(s, &at)?,
                        Value::Array(t) if !t.is_empty() => EmbedInput::Tokens(ids(&t, &at)?),
                        Value::Array(_) => return Err(bad(&at, "is an empty list of token ids.")),
                        _ => return Err(bad(&at, "must be a string or a list of token ids.")),
                    });
                }
                out
            }
            _ => return Err(bad(
                "input",
                "must be a string, a list of strings, a list of token ids or a list of such lists.",
            )),
        };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_input_form_and_each_bad_part_named() {
        assert_eq!(
            inputs(json!("a")).unwrap(),
            vec![EmbedInput::Text("a".into())]
        );
        assert_eq!(
            inputs(json!([1, 2])).unwrap(),
            vec![EmbedInput::Tokens(vec![1, 2])]
        );
        assert_eq!(
            inputs(json!(["a", [3]])).unwrap(),
            vec![EmbedInput::Text("a".into()), EmbedInput::Tokens(vec![3])]
        );
        for (v, param) in [
            (json!([]), "input"),
            (json!(""), "input"),
            (json!(["a", ""]), "input[1]"),
            (json!(["a", 5]), "input[1]"),
            (json!([[1], [-1]]), "input[1]"),
            (json!([[]]), "input[0]"),
            (json!({"a": 1}), "input"),
            (json!(vec!["x"; MAX_INPUTS + 1]), "input"),
        ] {
            let e = inputs(v.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{v}");
            assert_eq!(e.status(), 400);
        }
    }
}
