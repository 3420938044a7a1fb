//! Gemini's embeddings: `models/{m}:embedContent` (one content) and
//! `:batchEmbedContents` (what the `google-genai` SDK's `embed_content` sends).

use super::Generate;
use crate::auth::Principal;
use crate::door::Door;
use crate::door::Refusal;
use crate::metering::{embedded, with_rate_headers};
use crate::reqlog::RequestCtx;
use crate::AppState;
use axum::response::{IntoResponse, Response};
use axum::Json;
use parlance_core::embed::{shortening, EmbedInput, EmbedRequest, Embeddings};
use parlance_core::{Error, ParamPath};
use serde_json::{json, Value};
use std::sync::Arc;

/// Requests one batch may carry (the Gemini API's limit).
const MAX_REQUESTS: usize = 100;

pub(super) async fn embed(
    state: &AppState,
    ctx: &Arc<RequestCtx>,
    principal: &Principal,
    model: &str,
    verb: &str,
    body: Value,
) -> Response {
    match run(state, ctx, principal, model, verb, body).await {
        Ok(resp) => resp,
        Err(e) => Refusal::<Generate>::from(e).into_response(),
    }
}

async fn run(
    state: &AppState,
    ctx: &Arc<RequestCtx>,
    principal: &Principal,
    model: &str,
    verb: &str,
    body: Value,
) -> Result<Response, Error> {
    let batch = verb == "batchEmbedContents";
    let requests = requests_of(&body, batch)?;
    let route = state.router.resolve(model)?;
    let mut inputs = Vec::with_capacity(requests.len());
    // Per request: the length to cut its vector to, and the field that asked.
    let mut shorten = Vec::with_capacity(requests.len());
    for (r, at) in &requests {
        let field = |f: &str| {
            if at.is_empty() {
                f.to_string()
            } else {
                format!("{at}.{f}")
            }
        };
        inputs.push(EmbedInput::Text(text_of(&r["content"], &field("content"))?));
        let f = field("outputDimensionality");
        shorten.push(dimensions(r, &route.info, &f)?.map(|k| (k, f)));
    }
    let bytes = inputs.iter().map(EmbedInput::bytes).sum();
    let ir = EmbedRequest {
        model: model.to_string(),
        inputs,
        truncate: None,
    };
    let work = route.backend.embed(ir);
    let tokens = |e: &Embeddings| e.prompt_tokens;
    let metered = embedded(
        state,
        ctx,
        principal,
        &route.info,
        Generate::NAME,
        bytes,
        work,
        tokens,
    );
    let (mut made, rate) = match metered.await {
        Ok(done) => done,
        Err((e, rate)) => {
            // Parts named as this door names them.
            let e = rename_inputs(e, batch);
            return Ok(with_rate_headers(
                Refusal::<Generate>::from(e).into_response(),
                &rate,
            ));
        }
    };
    for (v, asked) in made.vectors.iter_mut().zip(&shorten) {
        if let Some((k, f)) = asked {
            parlance_core::embed::shorten(v, *k, f).map_err(|e| gemini_worded(e, f))?;
        }
    }
    let mut vectors = made.vectors.into_iter().map(|v| json!({"values": v}));
    let body = if batch {
        json!({"embeddings": vectors.collect::<Vec<_>>()})
    } else {
        json!({"embedding": vectors.next().unwrap_or(Value::Null)})
    };
    Ok(with_rate_headers(Json(body).into_response(), &rate))
}

/// The embed requests of a body, each with the path that names its fields.
fn requests_of(body: &Value, batch: bool) -> Result<Vec<(&Value, String)>, Error> {
    Ok(if batch {
        let list = body["requests"]
            .as_array()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| {
                Error::invalid_param("requests", "* requests: must be a non-empty list")
            })?;
        if list.len() > MAX_REQUESTS {
            return Err(Error::invalid_param(
                "requests",
                format!(
                    "* requests: at most {MAX_REQUESTS} requests per batch, got {}",
                    list.len()
                ),
            ));
        }
        list.iter()
            .enumerate()
            .map(|(i, r)| (r, format!("requests[{i}]")))
            .collect()
    } else {
        vec![(body, String::new())]
    })
}

/// `outputDimensionality` (either spelling): the length to cut the vector to.
fn dimensions(r: &Value, info: &parlance_core::ModelInfo, f: &str) -> Result<Option<usize>, Error> {
    let dims = r
        .get("outputDimensionality")
        .or_else(|| r.get("output_dimensionality"))
        .filter(|v| !v.is_null());
    match dims {
        Some(v) => {
            let asked = v.as_u64().ok_or_else(|| {
                Error::invalid_param(f, format!("* {f}: must be a positive integer"))
            })?;
            let asked = u32::try_from(asked).unwrap_or(u32::MAX);
            shortening(info, asked, f).map_err(|e| gemini_worded(e, f))
        }
        None => Ok(None),
    }
}

/// A content's text: its text parts joined; any other part is a 400 naming it.
fn text_of(content: &Value, at: &str) -> Result<String, Error> {
    let parts = content["parts"]
        .as_array()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| Error::invalid_param(at, format!("* {at}: must have parts")))?;
    let mut text = String::new();
    for (j, p) in parts.iter().enumerate() {
        match p["text"].as_str() {
            Some(t) => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(t);
            }
            None => {
                let f = format!("{at}.parts[{j}]");
                return Err(Error::invalid_param(
                    &f,
                    format!("* {f}: only text can be embedded"),
                ));
            }
        }
    }
    if text.is_empty() {
        return Err(Error::invalid_param(
            at,
            format!("* {at}: the text is empty"),
        ));
    }
    Ok(text)
}

/// The backend names inputs `input[i]`; this door's are `requests[i].content`.
fn rename_inputs(mut e: Error, batch: bool) -> Error {
    if let Some((i, _)) = e.param.as_ref().and_then(|p| p.element_of("input")) {
        let named = if batch {
            ParamPath::field("requests").at(i).then("content")
        } else {
            ParamPath::field("content")
        };
        e.message = e.message.replace(&format!("input[{i}]"), &named);
        e.param = Some(named);
    }
    e
}

/// Gemini's errors name the field first, as `* field: what is wrong`.
fn gemini_worded(mut e: Error, field: &str) -> Error {
    e.message = format!("* {field}: {}", e.message);
    e
}
