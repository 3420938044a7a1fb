//! Where stored responses live: the tenancy store's SQL table when there is one
//! (SQLite by default, Postgres for replicas), otherwise a bounded map in memory
//! (`--db none`).

use crate::AppState;
use parlance_core::Code;
use parlance_core::{Error, ErrorKind};
use parlance_tenancy::responses::StoredResponse;
use std::collections::HashMap;
use std::sync::Mutex;

/// Most responses the in-memory store keeps; the oldest go first.
const MEMORY_CAP: usize = 10_000;

#[derive(Default)]
pub struct MemoryStore(Mutex<HashMap<String, StoredResponse>>);

/// Database errors go to the log, not to callers (they can name tables and hosts).
fn store_err(e: parlance_tenancy::StoreError) -> Error {
    tracing::error!("response store: {e}");
    Error::internal("The response store could not be read or written; see the server log.")
}

pub(super) async fn save(state: &AppState, r: StoredResponse) -> Result<(), Error> {
    if let Some(t) = &state.tenancy {
        return t.store.save_response(&r).await.map_err(store_err);
    }
    let mut map = state
        .responses
        .0
        .lock()
        .map_err(|_| Error::internal("response store lock poisoned"))?;
    if map.len() >= MEMORY_CAP && !map.contains_key(&r.id) {
        if let Some(oldest) = map
            .values()
            .min_by_key(|r| r.created_at)
            .map(|r| r.id.clone())
        {
            map.remove(&oldest);
        }
    }
    map.insert(r.id.clone(), r);
    Ok(())
}

/// The response `id` if it exists and belongs to `owner`; someone else's is as unknown
/// as a missing one.
pub(super) async fn load(
    state: &AppState,
    owner: Option<&str>,
    id: &str,
) -> Result<Option<StoredResponse>, Error> {
    let found = match &state.tenancy {
        Some(t) => t.store.get_response(id).await.map_err(store_err)?,
        None => state
            .responses
            .0
            .lock()
            .map_err(|_| Error::internal("response store lock poisoned"))?
            .get(id)
            .cloned(),
    };
    Ok(found.filter(|r| r.key_id.as_deref() == owner))
}

/// The conversation ending with `id`, newest turn first, at most `limit` turns. A turn
/// that is missing or someone else's ends the walk there (the caller sees where).
pub(super) async fn chain(
    state: &AppState,
    owner: Option<&str>,
    id: &str,
    limit: usize,
) -> Result<Vec<StoredResponse>, Error> {
    let mut turns = match &state.tenancy {
        Some(t) => t.store.response_chain(id, limit).await.map_err(store_err)?,
        None => {
            let map = state
                .responses
                .0
                .lock()
                .map_err(|_| Error::internal("response store lock poisoned"))?;
            let mut turns: Vec<StoredResponse> = Vec::new();
            let mut next = Some(id.to_string());
            while let Some(r) = next
                .and_then(|id| map.get(&id))
                .filter(|_| turns.len() < limit)
            {
                next = r.previous_id.clone();
                turns.push(r.clone());
            }
            turns
        }
    };
    if let Some(foreign) = turns.iter().position(|t| t.key_id.as_deref() != owner) {
        turns.truncate(foreign);
    }
    Ok(turns)
}

pub(super) async fn delete(state: &AppState, owner: Option<&str>, id: &str) -> Result<bool, Error> {
    if load(state, owner, id).await?.is_none() {
        return Ok(false);
    }
    match &state.tenancy {
        Some(t) => t.store.delete_response(id).await.map_err(store_err),
        None => Ok(state
            .responses
            .0
            .lock()
            .map_err(|_| Error::internal("response store lock poisoned"))?
            .remove(id)
            .is_some()),
    }
}

pub(super) fn not_found(id: &str, param: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("Response with id '{id}' not found."),
    )
    .with_param(param)
    .with_code(Code::ResponseNotFound)
}
