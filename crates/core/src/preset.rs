//! Per-model defaults and NEXTgpt-style "use cases": a catalog entry that is a model
//! plus a system prompt and default parameters, served under its own name. Defaults only
//! fill what the caller left unset.

use crate::backend::{Backend, EventStream};
use crate::error::Error;
use crate::ir::{ChatRequest, ContentPart, Message, Role, SamplingParams};
use async_trait::async_trait;
use serde_json::{Map, Value};
use std::sync::Arc;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Defaults {
    pub sampling: SamplingParams,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    /// Extension parameters passed to upstreams unless the caller set them.
    pub extra: Map<String, Value>,
}

impl Defaults {
    pub fn is_empty(&self) -> bool {
        *self == Defaults::default()
    }

    /// `name=value` of each default set, for the admin console.
    pub fn summary(&self) -> Vec<String> {
        let s = &self.sampling;
        let mut out: Vec<String> = [
            ("temperature", s.temperature),
            ("top_p", s.top_p),
            ("min_p", s.min_p),
            ("presence_penalty", s.presence_penalty),
            ("frequency_penalty", s.frequency_penalty),
            ("repetition_penalty", s.repetition_penalty),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| format!("{n}={v}")))
        .collect();
        out.extend(s.top_k.map(|v| format!("top_k={v}")));
        out.extend(s.seed.map(|v| format!("seed={v}")));
        out.extend(self.max_tokens.map(|v| format!("max_tokens={v}")));
        if !self.stop.is_empty() {
            out.push(format!("stop={:?}", self.stop));
        }
        out.extend(self.extra.iter().map(|(k, v)| format!("{k}={v}")));
        out
    }

    pub fn apply(&self, req: &mut ChatRequest) {
        req.sampling.fill_from(&self.sampling);
        req.max_tokens = req.max_tokens.or(self.max_tokens);
        if req.stop.is_empty() {
            req.stop = self.stop.clone();
        }
        req.options.add_defaults(&self.extra);
    }
}

pub struct Preset {
    inner: Arc<dyn Backend>,
    system_prompt: Option<String>,
    defaults: Defaults,
}

impl Preset {
    pub fn new(inner: Arc<dyn Backend>, system_prompt: Option<String>, defaults: Defaults) -> Self {
        Preset {
            inner,
            system_prompt,
            defaults,
        }
    }

    pub fn apply(&self, req: &mut ChatRequest) {
        self.defaults.apply(req);
        if let Some(prompt) = &self.system_prompt {
            // One system message: many chat templates accept only one, and first.
            match req.messages.first_mut() {
                Some(first) if first.role == Role::System => {
                    first
                        .content
                        .insert(0, ContentPart::Text(format!("{prompt}\n\n")));
                    req.origins.part_prepended();
                }
                _ => {
                    req.messages
                        .insert(0, Message::text(Role::System, prompt.clone()));
                    req.origins.message_prepended();
                }
            }
        }
    }
}

#[async_trait]
impl Backend for Preset {
    async fn chat(&self, mut request: ChatRequest) -> Result<EventStream, Error> {
        self.apply(&mut request);
        self.inner.chat(request).await
    }

    fn health(&self) -> Result<(), String> {
        self.inner.health()
    }

    async fn tokenize(&self, text: &str, special: bool) -> Result<Vec<u32>, Error> {
        self.inner.tokenize(text, special).await
    }

    async fn detokenize(&self, tokens: &[u32]) -> Result<String, Error> {
        self.inner.detokenize(tokens).await
    }

    fn load(&self) -> Option<crate::backend::Load> {
        self.inner.load()
    }

    fn composition(&self) -> crate::backend::Composition {
        let mut c = self.inner.composition();
        c.system_prompt = self.system_prompt.clone();
        c.defaults = self.defaults.summary();
        c
    }

    async fn count_tokens(&self, texts: &[String]) -> Result<Vec<u32>, Error> {
        self.inner.count_tokens(texts).await
    }

    async fn count_image_tokens(&self, messages: &[crate::ir::Message]) -> Result<u32, Error> {
        self.inner.count_image_tokens(messages).await
    }

    async fn embed(
        &self,
        request: crate::embed::EmbedRequest,
    ) -> Result<crate::embed::Embeddings, Error> {
        self.inner.embed(request).await
    }

    fn residency(&self) -> Option<crate::lazy::Residency> {
        self.inner.residency()
    }

    async fn rerank(
        &self,
        request: crate::embed::RerankRequest,
    ) -> Result<crate::embed::Scores, Error> {
        self.inner.rerank(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_only_unset_fields_and_prompt_merges_into_system() {
        let mut d = Defaults::default();
        d.sampling.temperature = Some(0.87);
        d.sampling.top_p = Some(0.47);
        d.max_tokens = Some(512);
        let p = Preset {
            inner: Arc::new(Nothing),
            system_prompt: Some("You are a travel agent.".into()),
            defaults: d,
        };
        let mut req = ChatRequest {
            messages: vec![Message::text(Role::User, "hi")],
            ..Default::default()
        };
        req.sampling.temperature = Some(0.1);
        p.apply(&mut req);
        assert_eq!(req.sampling.temperature, Some(0.1));
        assert_eq!(req.sampling.top_p, Some(0.47));
        assert_eq!(req.max_tokens, Some(512));
        assert_eq!(req.messages[0].role, Role::System);
        assert_eq!(req.messages[0].joined_text(), "You are a travel agent.");

        let mut req = ChatRequest {
            messages: vec![
                Message::text(Role::System, "Be brief."),
                Message::text(Role::User, "hi"),
            ],
            ..Default::default()
        };
        p.apply(&mut req);
        assert_eq!(req.messages.len(), 2);
        assert_eq!(
            req.messages[0].joined_text(),
            "You are a travel agent.\n\nBe brief."
        );
    }

    struct Nothing;
    #[async_trait]
    impl Backend for Nothing {
        async fn chat(&self, _: ChatRequest) -> Result<EventStream, Error> {
            Err(Error::internal("unused"))
        }
    }
}
