//! The OpenAI Responses door: `POST /v1/responses` (whole and streamed), stored
//! conversations (`store`, `previous_response_id`), `GET`/`DELETE /v1/responses/{id}`
//! and `GET /v1/responses/{id}/input_items`.

mod render;
mod request;
mod store;

pub(crate) use store::MemoryStore;

use crate::auth::Principal;
use crate::body::read_json;
use crate::door::{Door, Frames};
use crate::error::ApiError;
use crate::gate::WireFormat;
use crate::reqlog::RequestCtx;
use crate::sse::SseEvent;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::{Extension, Json};
use futures::StreamExt;
use parlance_core::ir::Message;
use parlance_core::Code;
use parlance_core::{Error, EventStream};
use parlance_protocol::json::Fields;
use parlance_protocol::responses as wire;
use parlance_tenancy::responses::StoredResponse;
use render::{Builder, Meta};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Longest chain of `previous_response_id`s replayed into one prompt.
const MAX_TURNS: usize = 10_000;

pub(crate) fn new_id(prefix: &str) -> String {
    crate::ids::random(&[prefix, "_"].concat())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn owner(principal: &Principal) -> Option<String> {
    principal.key().map(|k| k.id.clone())
}

/// The messages of the stored conversation that ends with `id`, oldest first, and
/// the id of its first turn (the conversation's session).
async fn conversation(
    state: &AppState,
    owner: Option<&str>,
    id: &str,
) -> Result<(Vec<Message>, String), Error> {
    // One more than allowed, to tell a long conversation from a complete one.
    let turns = store::chain(state, owner, id, MAX_TURNS + 1).await?;
    if turns.len() > MAX_TURNS {
        return Err(Error::invalid_param(
            "previous_response_id",
            format!("This conversation is longer than {MAX_TURNS} turns."),
        ));
    }
    // The walk stops at a missing (deleted, or another key's) turn: name it.
    let missing = match turns.last() {
        None => Some(id.to_string()),
        Some(t) => t.previous_id.clone(),
    };
    if let Some(missing) = missing {
        return Err(store::not_found(&missing, "previous_response_id")
            .with_code(Code::PreviousResponseNotFound));
    }
    let root = turns.last().map(|t| t.id.clone()).unwrap_or_default();
    // A long conversation is megabytes of JSON: parsed off the async workers.
    let bytes: usize = turns.iter().map(|t| t.input.len() + t.response.len()).sum();
    let replay = move || {
        let mut messages = Vec::new();
        for turn in turns.iter().rev() {
            let input: Vec<Value> = serde_json::from_str(&turn.input).unwrap_or_default();
            let response: Value = serde_json::from_str(&turn.response).unwrap_or_default();
            let output = response
                .field("output")
                .as_array()
                .cloned()
                .unwrap_or_default();
            request::push_messages(&mut messages, &input, "input", None)
                .and_then(|()| request::push_messages(&mut messages, &output, "output", None))
                .map_err(|e| {
                    Error::internal(format!(
                        "stored response {} is unreadable: {}",
                        turn.id, e.message
                    ))
                })?;
        }
        Ok::<_, Error>(messages)
    };
    let messages = if bytes < parlance_core::blocking::LARGE {
        replay()?
    } else {
        parlance_core::blocking::run(bytes, replay).await??
    };
    Ok((messages, root))
}

/// The request fields a response object repeats back.
fn echo(r: &wire::ResponsesRequest) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("instructions".into(), json!(r.instructions));
    m.insert("max_output_tokens".into(), json!(r.max_output_tokens));
    m.insert(
        "parallel_tool_calls".into(),
        json!(r.parallel_tool_calls.unwrap_or(true)),
    );
    m.insert("previous_response_id".into(), json!(r.previous_response_id));
    m.insert(
        "reasoning".into(),
        json!({"effort": r.reasoning.as_ref().and_then(|x| x.effort.clone()),
               "summary": r.reasoning.as_ref().and_then(|x| x.summary.clone())}),
    );
    m.insert("store".into(), json!(r.store.unwrap_or(true)));
    m.insert("temperature".into(), json!(r.temperature.unwrap_or(1.0)));
    m.insert("top_p".into(), json!(r.top_p.unwrap_or(1.0)));
    m.insert(
        "text".into(),
        json!({"format": r.text.as_ref().and_then(|t| t.format.clone()).map_or(json!({"type": "text"}), |f| json!(f))}),
    );
    m.insert(
        "tool_choice".into(),
        r.tool_choice.clone().unwrap_or(json!("auto")),
    );
    m.insert("tools".into(), json!(r.tools));
    m.insert("top_logprobs".into(), json!(r.top_logprobs.unwrap_or(0)));
    m.insert(
        "truncation".into(),
        json!(r.truncation.clone().unwrap_or_else(|| "disabled".into())),
    );
    m.insert("user".into(), json!(r.user));
    m.insert(
        "metadata".into(),
        json!(r.metadata.clone().unwrap_or_default()),
    );
    m
}

/// What is saved once the response is done (`store` true).
struct Saving {
    owner: Option<String>,
    previous_id: Option<String>,
    input: String,
}

async fn save(state: &AppState, saving: &Option<Saving>, response: &Value) -> Result<(), Error> {
    let Some(s) = saving else { return Ok(()) };
    store::save(
        state,
        StoredResponse {
            id: response["id"].as_str().unwrap_or_default().to_string(),
            key_id: s.owner.clone(),
            created_at: parlance_tenancy::keys::now_ms(),
            previous_id: s.previous_id.clone(),
            input: s.input.clone(),
            response: response.to_string(),
        },
    )
    .await
}

pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    Extension(principal): Extension<Principal>,
    body: Body,
) -> Result<Response, ApiError> {
    let wire_req: wire::ResponsesRequest = read_json(body, state.body_limit).await?;
    ctx.set_model(&wire_req.model);
    let owner = owner(&principal);
    let (history, session) = match wire_req.previous_response_id.as_deref() {
        Some(prev) => {
            let (h, root) = conversation(&state, owner.as_deref(), prev).await?;
            (h, Some(root))
        }
        None => (Vec::new(), None),
    };
    let items = request::input_items(wire_req.input.clone())?;
    let mut req = request::to_ir(&wire_req, history, &items)?;
    let id = new_id("resp");
    // A conversation is named by its first response: every turn hashes alike.
    req.context.session = Some(session.unwrap_or_else(|| id.clone()));
    let saving = wire_req.store.unwrap_or(true).then(|| Saving {
        owner,
        previous_id: wire_req.previous_response_id.clone(),
        input: Value::Array(items).to_string(),
    });
    let meta = Meta {
        id,
        created_at: now_secs(),
        model: req.model.clone(),
        echo: echo(&wire_req),
    };
    let door = Responses {
        state: Arc::clone(&state),
        saving,
        builder: Builder::new(meta, req.logprobs.is_some()),
    };
    Ok(crate::door::chat(&state, &ctx, &principal, door, req).await)
}

/// The Responses API's wire format; a finished response is stored before the caller
/// hears it is done.
pub(crate) struct Responses {
    state: Arc<AppState>,
    saving: Option<Saving>,
    builder: Builder,
}

impl Door for Responses {
    const NAME: &'static str = "responses";
    type Whole = Value;

    const WIRE: WireFormat = WireFormat::OpenAi;

    fn output_cap_error(&self, asked: u32, limit: u32, _model: &str) -> Error {
        crate::error::output_cap("max_output_tokens", asked, limit)
    }

    fn param_names(&self) -> &'static [(&'static str, &'static str)] {
        &[("messages", "input"), ("max_tokens", "max_output_tokens")]
    }

    async fn whole(mut self, mut events: EventStream) -> Result<Value, Error> {
        // Read to the end, so the meter sees the stream complete.
        let mut done = None;
        while let Some(ev) = events.next().await {
            if let (_, Some(response)) = self.builder.apply(ev?) {
                done = Some(response);
            }
        }
        let response =
            done.ok_or_else(|| Error::internal("the backend ended the answer before it finished"))?;
        save(&self.state, &self.saving, &response).await?;
        Ok(response)
    }

    fn stream(self, events: EventStream) -> Frames {
        let sse = streamed(self, events).map(|ev: Value| {
            let name = ev.field("type").as_str().unwrap_or("message").to_string();
            SseEvent::named(name, ev.to_string())
        });
        Frames::Sse(Box::pin(sse))
    }
}

fn streamed(door: Responses, mut events: EventStream) -> impl futures::Stream<Item = Value> {
    let Responses {
        state,
        saving,
        builder: mut b,
    } = door;
    async_stream::stream! {
        for ev in b.start() {
            yield ev;
        }
        let mut finished = false;
        while let Some(ev) = events.next().await {
            match ev {
                Ok(ev) => {
                    let (out, done) = b.apply(ev);
                    for e in out {
                        yield e;
                    }
                    if let Some(response) = done {
                        // Saved before the caller hears it is done, so a follow-up
                        // turn sent right away finds it.
                        if let Err(e) = save(&state, &saving, &response).await {
                            yield b.failed(&e);
                            return;
                        }
                        yield b.done_event(&response);
                        finished = true;
                    }
                }
                Err(e) => {
                    yield b.failed(&e);
                    return;
                }
            }
        }
        if !finished {
            yield b.failed(&Error::internal("the backend ended the stream before it finished"));
        }
    }
}

pub(crate) async fn get(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let found = store::load(&state, owner(&principal).as_deref(), &id)
        .await?
        .ok_or_else(|| store::not_found(&id, "response_id"))?;
    Ok(Json(
        serde_json::from_str(&found.response).unwrap_or_default(),
    ))
}

pub(crate) async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !store::delete(&state, owner(&principal).as_deref(), &id).await? {
        return Err(store::not_found(&id, "response_id").into());
    }
    Ok(Json(
        json!({"id": id, "object": "response", "deleted": true}),
    ))
}

/// This turn's input items, newest first unless `order=asc`; `limit` (1-100, default
/// 20) and `after` page through them.
pub(crate) async fn input_items(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let found = store::load(&state, owner(&principal).as_deref(), &id)
        .await?
        .ok_or_else(|| store::not_found(&id, "response_id"))?;
    let mut items: Vec<Value> = serde_json::from_str(&found.input).unwrap_or_default();
    match q.get("order").map(String::as_str) {
        None | Some("desc") => items.reverse(),
        Some("asc") => {}
        Some(other) => {
            return Err(Error::invalid_param(
                "order",
                format!("'order' must be asc or desc, got {other:?}."),
            )
            .into())
        }
    }
    let limit = match q.get("limit") {
        None => 20,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| Error::invalid_param("limit", "'limit' must be between 1 and 100."))?,
    };
    if let Some(after) = q.get("after") {
        let at = items
            .iter()
            .position(|i| i["id"].as_str() == Some(after.as_str()))
            .ok_or_else(|| {
                Error::invalid_param("after", format!("No input item with id {after:?}."))
            })?;
        items.drain(..=at);
    }
    let has_more = items.len() > limit;
    items.truncate(limit);
    Ok(Json(json!({
        "object": "list",
        "data": items,
        "first_id": items.first().map(|i| i["id"].clone()),
        "last_id": items.last().map(|i| i["id"].clone()),
        "has_more": has_more,
    })))
}
