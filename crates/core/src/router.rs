//! Maps a public model name to the backend that serves it.

use crate::backend::{Backend, ModelInfo};
use crate::error::Error;
use std::sync::Arc;

pub struct Route {
    pub info: ModelInfo,
    pub backend: Arc<dyn Backend>,
}

#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    pub fn new() -> Self {
        Router::default()
    }

    /// Adds a model; a name that is already taken is a configuration error.
    pub fn add(&mut self, info: ModelInfo, backend: Arc<dyn Backend>) -> Result<(), String> {
        if self.routes.iter().any(|r| r.info.id == info.id) {
            return Err(format!(
                "two models are named `{}`: give one another name with --alias",
                info.id
            ));
        }
        self.routes.push(Route { info, backend });
        Ok(())
    }

    pub fn resolve(&self, model: &str) -> Result<&Route, Error> {
        self.routes
            .iter()
            .find(|r| r.info.id == model)
            .ok_or_else(|| Error::model_not_found(model))
    }

    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    pub fn models(&self) -> impl Iterator<Item = &ModelInfo> {
        self.routes.iter().map(|r| &r.info)
    }
}
