//! The rerank door: `POST /v1/rerank` (also `/rerank` and Cohere's `/v2/rerank`), as
//! llama-server, vLLM, Jina and Cohere take it: `{model, query, documents: [string |
//! {text}], top_n, return_documents}` -> results sorted by relevance. A body with
//! `texts` instead of `documents` is text-embeddings-inference's own shape: `{query,
//! texts, raw_scores, return_text}` -> a bare list of `{index, score, text?}`, with
//! `model` optional when one reranker is served.

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
use parlance_core::embed::{RerankRequest, Scores};
use parlance_core::Error;
use parlance_protocol::json::Fields;
use serde_json::{json, Value};
use std::sync::Arc;

/// Documents one request may carry (Cohere's limit).
pub(crate) const MAX_DOCUMENTS: usize = 1000;

#[derive(serde::Deserialize)]
pub(crate) struct Request {
    #[serde(default)]
    model: Option<String>,
    query: Value,
    #[serde(default)]
    documents: Option<Value>,
    /// TEI's name for `documents` (its shape of answer too).
    #[serde(default)]
    texts: Option<Value>,
    #[serde(default)]
    top_n: Option<usize>,
    #[serde(default)]
    return_documents: Option<bool>,
    /// TEI: scores as the model gives them rather than through a sigmoid.
    #[serde(default)]
    raw_scores: bool,
    /// TEI's `return_documents`.
    #[serde(default)]
    return_text: bool,
}

pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    Extension(principal): Extension<Principal>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: Request = read_json(body, state.body_limit).await?;
    let tei = req.documents.is_none() && req.texts.is_some();
    if req.documents.is_none() && req.texts.is_none() {
        return Err(Error::invalid_param("documents", "'documents' is required.").into());
    }
    let model = match req.model.clone() {
        Some(m) => m,
        None if tei => only_reranker(&state)?,
        None => return Err(Error::invalid_param("model", "'model' is required.").into()),
    };
    ctx.set_model(&model);
    let query = match req.query {
        Value::String(q) if !q.is_empty() => q,
        _ => {
            return Err(Error::invalid_param("query", "'query' must be a non-empty string.").into())
        }
    };
    let field = if tei { "texts" } else { "documents" };
    let given = if tei { req.texts } else { req.documents };
    let documents = documents(given.unwrap_or(Value::Null), field)?;
    if req.top_n == Some(0) {
        return Err(Error::invalid_param("top_n", "'top_n' must be at least 1.").into());
    }
    let route = state.router.resolve(&model)?;
    let bytes = query.len() * documents.len() + documents.iter().map(String::len).sum::<usize>();
    let ir = RerankRequest {
        model: model.clone(),
        query,
        documents: documents.clone(),
    };
    let work = route.backend.rerank(ir);
    let tokens = |s: &Scores| s.prompt_tokens;
    let metered = embedded(
        &state,
        &ctx,
        &principal,
        &route.info,
        "rerank",
        bytes,
        work,
        tokens,
    );
    let (scored, rate) = match metered.await {
        Ok(done) => done,
        Err((e, rate)) => return Ok(with_rate_headers(ApiError(e).into_response(), &rate)),
    };
    let mut order: Vec<(usize, f32)> = scored.scores.iter().copied().enumerate().collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1));
    order.truncate(req.top_n.unwrap_or(order.len()));
    if tei {
        let results: Vec<Value> = order
            .into_iter()
            .map(|(i, raw)| {
                let score = if req.raw_scores {
                    raw
                } else {
                    1.0 / (1.0 + (-raw).exp())
                };
                let mut r = json!({"index": i, "score": score});
                if req.return_text {
                    r.set("text", json!(documents.get(i)));
                }
                r
            })
            .collect();
        return Ok(with_rate_headers(Json(results).into_response(), &rate));
    }
    let with_text = req.return_documents.unwrap_or(false);
    let results: Vec<Value> = order
        .into_iter()
        .map(|(i, score)| {
            let mut r = json!({"index": i, "relevance_score": score});
            if with_text {
                r.set("document", json!({"text": documents.get(i)}));
            }
            r
        })
        .collect();
    let id = crate::ids::random("rerank-");
    let tokens = scored.prompt_tokens;
    let body = json!({
        "id": id,
        "model": model,
        "object": "list",
        "results": results,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
    });
    Ok(with_rate_headers(Json(body).into_response(), &rate))
}

/// The served reranker a TEI-shaped request without `model` means: the only one.
fn only_reranker(state: &AppState) -> Result<String, Error> {
    let rerankers: Vec<String> = state
        .router
        .models()
        .into_iter()
        .filter(|m| m.capabilities.rerank)
        .map(|m| m.id)
        .collect();
    match rerankers.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(Error::invalid_param(
            "model",
            format!(
                "'model' is required: this server has {} rerankers.",
                rerankers.len()
            ),
        )),
    }
}

/// Strings or `{text}` objects; anything else is a 400 naming the part.
fn documents(v: Value, field: &str) -> Result<Vec<String>, Error> {
    let Value::Array(items) = v else {
        return Err(Error::invalid_param(
            field,
            format!("'{field}' must be a list."),
        ));
    };
    if items.is_empty() {
        return Err(Error::invalid_param(
            field,
            format!("'{field}' is empty: send at least one."),
        ));
    }
    if items.len() > MAX_DOCUMENTS {
        return Err(Error::invalid_param(
            field,
            format!(
                "'{field}' holds {} documents; at most {MAX_DOCUMENTS} per request.",
                items.len()
            ),
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, d)| match d {
            Value::String(s) => Ok(s),
            Value::Object(mut o) => match o.remove("text") {
                Some(Value::String(s)) => Ok(s),
                _ => Err(Error::invalid_param(
                    format!("{field}[{i}]"),
                    format!("{field}[{i}] has no 'text' string."),
                )),
            },
            _ => Err(Error::invalid_param(
                format!("{field}[{i}]"),
                format!("{field}[{i}] must be a string or {{\"text\": ...}}."),
            )),
        })
        .collect()
}
