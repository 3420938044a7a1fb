//! Ollama's `POST /api/pull` (progress streamed as NDJSON) and `DELETE /api/delete`, on
//! the `--models-dir` folder. Both change what the server serves, so they need the
//! admin key unless the server is open (no keys at all, as Ollama itself runs).

use super::Ollama;
use crate::body::read_json;
use crate::door::Refusal;
use crate::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use parlance_core::lazy::ModelFolder;
use parlance_core::{Error, ErrorKind};
use parlance_protocol::json::Fields;
use parlance_upstream::registry::{self, ModelRef, PullEvent};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;

/// What both handlers check first: the caller may change the models, there is a
/// folder, and the body names a model. The body, the folder and the name.
async fn admitted(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Value, Arc<dyn ModelFolder>, String), Error> {
    if !state.is_open() && crate::admin::admin(state, headers).await.is_err() {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            "pulling and deleting models needs the admin key",
        ));
    }
    let body: Value = read_json(body, state.body_limit).await?;
    let folder = state.models_dir.clone().ok_or_else(|| {
        Error::invalid("pulling and deleting models needs a models folder (--models-dir)")
    })?;
    let name = body
        .field("model")
        .as_str()
        .or_else(|| body.field("name").as_str())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .ok_or_else(|| Error::invalid_param("model", "model is required"))?;
    Ok((body, folder, name))
}

fn line(ev: PullEvent) -> Value {
    match ev {
        PullEvent::Status(s) => json!({"status": s}),
        PullEvent::Progress {
            digest,
            total,
            completed,
        } => json!({"status": format!("pulling {}", short(&digest)), "digest": digest,
                    "total": total, "completed": completed}),
    }
}

/// `sha256:0123456789ab…` as Ollama's progress names a layer.
fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}

/// `POST /api/pull`: `{model, insecure?, stream?}`.
pub(crate) async fn pull(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal<Ollama>> {
    let (body, folder, name) = admitted(&state, &headers, body).await?;
    let insecure = body.field("insecure").as_bool().unwrap_or(false);
    let model = ModelRef::parse(&name, folder.registry(), insecure)
        .map_err(|e| Error::invalid_param("model", e))?;
    let lines = pulling(Arc::clone(&state), folder, model);
    if body.field("stream").as_bool().unwrap_or(true) {
        // Streamed, an error is the last line (the status went out with the first).
        let ndjson = lines.map(|line| {
            let v = line.unwrap_or_else(|e| json!({"error": e.message}));
            Ok::<_, std::convert::Infallible>(format!("{v}\n"))
        });
        let body = Body::from_stream(ndjson);
        return Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response());
    }
    // One object: the last line, or the error with its status.
    let last = lines.collect::<Vec<_>>().await.pop();
    let (status, v) = match last {
        Some(Ok(v)) => (StatusCode::OK, v),
        Some(Err(e)) if e.kind == ErrorKind::NotFound => {
            (StatusCode::NOT_FOUND, json!({"error": e.message}))
        }
        Some(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": e.message}),
        ),
        None => (StatusCode::OK, Value::Null),
    };
    Ok((status, axum::Json(v)).into_response())
}

/// The pull as progress lines, ending with `success` or the error. Dropping it (the
/// caller hung up) stops the download; the partial file stays for the next pull.
fn pulling(
    state: Arc<AppState>,
    folder: Arc<dyn ModelFolder>,
    model: ModelRef,
) -> impl Stream<Item = Result<Value, Error>> + Send {
    let id = model.id();
    let dest = folder.path_for(&id);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let work = {
        let dest = dest.clone();
        async move {
            // Progress for a caller that hung up has no reader; the pull goes on.
            let mut on = |ev: PullEvent| {
                tx.send(ev).ok();
            };
            registry::pull(&model, &dest, &mut on).await
        }
    };
    async_stream::stream! {
        let work = work;
        tokio::pin!(work);
        let result = loop {
            tokio::select! {
                Some(ev) = rx.recv() => yield Ok(line(ev)),
                r = &mut work => break r,
            }
        };
        while let Ok(ev) = rx.try_recv() {
            yield Ok(line(ev));
        }
        if let Err(e) = result {
            yield Err(e);
            return;
        }
        yield Ok(json!({"status": "writing manifest"}));
        yield match adopt(&state, folder, id, dest).await {
            Ok(()) => Ok(json!({"status": "success"})),
            Err(e) => Err(Error::new(ErrorKind::Internal, e)),
        };
    }
}

/// Lists a pulled model (a model pulled again keeps its place and loads the new file
/// next time it loads).
async fn adopt(
    state: &AppState,
    folder: Arc<dyn ModelFolder>,
    id: String,
    path: PathBuf,
) -> Result<(), String> {
    if state.router.resolve(&id).is_ok() {
        return Ok(());
    }
    let name = id.clone();
    let made = tokio::task::spawn_blocking(move || folder.adopt(&name, &path))
        .await
        .map_err(|e| format!("reading the model crashed: {e}"))??;
    state
        .router
        .insert(made.0, made.1)
        .map_err(|e| e.to_string())
}

/// `DELETE /api/delete`: `{model}`; a model of the folder only.
pub(crate) async fn delete(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal<Ollama>> {
    let (_, folder, name) = admitted(&state, &headers, body).await?;
    let name = super::served_name(&state, &name);
    let Some(files) = folder.forget(&name) else {
        return Err(Error::new(ErrorKind::NotFound, format!("model '{name}' not found")).into());
    };
    state.router.remove(&name);
    for f in files {
        if let Err(e) = tokio::fs::remove_file(&f).await {
            tracing::warn!(file = %f.display(), error = %e, "could not delete a model file");
        }
    }
    Ok(StatusCode::OK.into_response())
}
