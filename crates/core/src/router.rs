//! Maps a public model name to the backend that serves it. Models may be added and
//! removed while the server runs (pulled or deleted through Ollama's API), so each
//! lookup hands out its own reference to the route.

use crate::backend::{Backend, ModelInfo};
use crate::error::Error;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Two models would answer to one name.
#[derive(Debug, Clone, thiserror::Error)]
#[error("two models are named `{0}`: give one another name with --alias")]
pub struct NameTaken(pub String);

pub struct Route {
    pub info: ModelInfo,
    pub backend: Arc<dyn Backend>,
}

#[derive(Default)]
pub struct Router {
    routes: RwLock<Vec<Arc<Route>>>,
}

impl Router {
    pub fn new() -> Self {
        Router::default()
    }

    // The list is replaced or extended in single steps: a panic elsewhere while it was
    // held leaves it consistent.
    fn read(&self) -> RwLockReadGuard<'_, Vec<Arc<Route>>> {
        self.routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Vec<Arc<Route>>> {
        self.routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a model; a name that is already taken is a configuration error.
    pub fn add(&mut self, info: ModelInfo, backend: Arc<dyn Backend>) -> Result<(), NameTaken> {
        self.insert(info, backend)
    }

    /// [`Router::add`] while the server runs.
    pub fn insert(&self, info: ModelInfo, backend: Arc<dyn Backend>) -> Result<(), NameTaken> {
        let mut routes = self.write();
        if routes.iter().any(|r| r.info.id == info.id) {
            return Err(NameTaken(info.id));
        }
        routes.push(Arc::new(Route { info, backend }));
        Ok(())
    }

    /// Takes a model out; requests already holding its route finish with it.
    pub fn remove(&self, model: &str) -> Option<Arc<Route>> {
        let mut routes = self.write();
        let at = routes.iter().position(|r| r.info.id == model)?;
        Some(routes.remove(at))
    }

    pub fn resolve(&self, model: &str) -> Result<Arc<Route>, Error> {
        self.read()
            .iter()
            .find(|r| r.info.id == model)
            .cloned()
            .ok_or_else(|| Error::model_not_found(model))
    }

    pub fn routes(&self) -> impl Iterator<Item = Arc<Route>> {
        self.read().clone().into_iter()
    }

    pub fn models(&self) -> Vec<ModelInfo> {
        self.read().iter().map(|r| r.info.clone()).collect()
    }
}
