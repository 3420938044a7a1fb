//! Upstream providers as [`Backend`]s: the IR request is mapped to each provider's wire
//! format, sent with reqwest, and its answer (whole or streamed) mapped back to IR events.
//! Routing (retries, fallbacks, balancing) lives in `parlance_core::pool`, not here.

// An index out of range is a panic in a request; outside tests, use `get` or a pattern.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

mod anthropic;
mod dialect;
mod embed;
mod gemini;
mod gigachat;
mod gigachat_files;
mod http;
pub mod images;
mod openai;
mod openai_read;
pub mod registry;
pub mod sse;

use async_trait::async_trait;
use dialect::Dialect;
use futures::StreamExt;
use parlance_core::ir::{ChatRequest, StreamEvent};
use parlance_core::Code;
use parlance_core::{Backend, Error, ErrorKind, EventStream};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;
use std::time::Duration;

/// `kind = "..."` in parlance.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenAI-compatible server: OpenAI, vLLM, SGLang, TGI, llama.cpp, Ollama,
    /// DeepSeek, BgGPT, BelugAPI, another Parlance.
    #[serde(rename = "openai", alias = "openai-compatible")]
    OpenAi,
    Anthropic,
    Gemini,
    /// OpenAI-like body behind OAuth 2.0 client credentials.
    GigaChat,
}

impl ProviderKind {
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenAi => None,
            ProviderKind::Anthropic => Some("https://api.anthropic.com/v1"),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com/v1beta"),
            ProviderKind::GigaChat => Some("https://gigachat.devices.sberbank.ru/api/v1"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// From sending the request to the first streamed event (or the whole body).
    pub first_token: Duration,
    /// The whole request, stream included.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            first_token: Duration::from_secs(120),
            total: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GigaChatAuth {
    /// Token endpoint (`.../api/v2/oauth`).
    pub auth_url: String,
    /// `GIGACHAT_API_PERS`, `GIGACHAT_API_B2B` or `GIGACHAT_API_CORP`.
    pub scope: String,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// The provider's name in the config, used in error messages.
    pub name: String,
    pub kind: ProviderKind,
    /// Without a trailing slash, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// API key; for GigaChat the base64 authorization key exchanged for access tokens.
    pub api_key: Option<String>,
    pub headers: Vec<(String, String)>,
    pub timeouts: Timeouts,
    pub gigachat: Option<GigaChatAuth>,
    /// Extra root certificate (PEM), e.g. the Russian Trusted Root CA GigaChat's
    /// endpoints are signed with, or a private CA in front of a self-hosted server.
    pub ca_cert: Option<Vec<u8>>,
    /// Send the token cap as `max_completion_tokens` (OpenAI's gpt-5 and o-series accept
    /// only that) instead of `max_tokens`.
    pub max_completion_tokens: bool,
    /// Send an OpenAI-shaped caller's unrecognised fields to this OpenAI-compatible
    /// provider (vLLM's `top_k`-style extensions); off: only the fields Parlance knows.
    pub forward_unknown_fields: bool,
    /// Fetches `http(s)` images for providers that take only inline bytes (Gemini);
    /// `None`: such URLs go as they came.
    pub images: Option<Arc<images::ImageFetcher>>,
}

/// One configured provider: its HTTP client and wire dialect, shared by all its models.
pub struct Provider {
    cfg: ProviderConfig,
    client: reqwest::Client,
    dialect: Box<dyn Dialect>,
    token: Option<gigachat::TokenSource>,
    /// Endpoint URLs already parsed (see `http::UrlCache`).
    urls: http::UrlCache,
}

impl Provider {
    pub fn new(mut cfg: ProviderConfig) -> Result<Arc<Provider>, String> {
        cfg.base_url = cfg.base_url.trim_end_matches('/').to_string();
        let mut headers = HeaderMap::new();
        for (k, v) in &cfg.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("provider `{}`: bad header name `{k}`", cfg.name))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| format!("provider `{}`: bad value for header `{k}`", cfg.name))?;
            headers.insert(name, value);
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(cfg.timeouts.connect)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            // Configured once here instead of copied into every request.
            .default_headers(headers);
        if let Some(pem) = &cfg.ca_cert {
            let cert = reqwest::Certificate::from_pem(pem).map_err(|e| {
                format!(
                    "provider `{}`: ca_cert is not a PEM certificate: {e}",
                    cfg.name
                )
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .build()
            .map_err(|e| format!("provider `{}`: cannot build HTTP client: {e}", cfg.name))?;
        let dialect: Box<dyn Dialect> = match cfg.kind {
            ProviderKind::OpenAi => Box::new(openai::OpenAiDialect::standard(
                cfg.max_completion_tokens,
                cfg.forward_unknown_fields,
            )),
            ProviderKind::GigaChat => {
                Box::new(openai::OpenAiDialect::gigachat(cfg.forward_unknown_fields))
            }
            ProviderKind::Anthropic => Box::new(anthropic::AnthropicDialect),
            ProviderKind::Gemini => Box::new(gemini::GeminiDialect),
        };
        let token = match cfg.kind {
            ProviderKind::GigaChat => {
                let auth = cfg.gigachat.clone().ok_or_else(|| {
                    format!("provider `{}`: gigachat needs auth_url and scope", cfg.name)
                })?;
                Some(gigachat::TokenSource::new(auth))
            }
            _ => None,
        };
        Ok(Arc::new(Provider {
            cfg,
            client,
            dialect,
            token,
            urls: http::UrlCache::default(),
        }))
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn kind(&self) -> ProviderKind {
        self.cfg.kind
    }

    /// The key, or for GigaChat a current access token (not `rejected`, the one the
    /// API just refused).
    async fn credential(&self, rejected: Option<&str>) -> Result<Option<String>, Error> {
        match &self.token {
            Some(source) => {
                let key = self.cfg.api_key.as_deref().ok_or_else(|| {
                    Error::new(
                        ErrorKind::Upstream,
                        format!("provider `{}` has no authorization key", self.cfg.name),
                    )
                })?;
                source
                    .token(&self.client, key, &self.cfg.name, rejected)
                    .await
                    .map(Some)
            }
            None => Ok(self.cfg.api_key.clone()),
        }
    }
}

/// One upstream model of one provider: the deployment the router calls.
pub struct UpstreamModel {
    provider: Arc<Provider>,
    model: String,
}

impl UpstreamModel {
    pub fn new(provider: Arc<Provider>, model: impl Into<String>) -> Self {
        UpstreamModel {
            provider,
            model: model.into(),
        }
    }
}

#[async_trait]
impl Backend for UpstreamModel {
    async fn chat(&self, mut request: ChatRequest) -> Result<EventStream, Error> {
        if request.raw_prompt.is_some() {
            return Err(Error::invalid_param(
                "prompt",
                "Legacy completions (a raw prompt) are served by local models only; use chat completions for this model.",
            )
            .with_code(Code::Unsupported));
        }
        let p = Arc::clone(&self.provider);
        // Gemini reads `fileData` only from its own Files API: other URLs go inline.
        if let (ProviderKind::Gemini, Some(fetcher)) = (p.cfg.kind, &p.cfg.images) {
            fetcher.inline_images(&mut request).await?;
        }
        let t = p.cfg.timeouts.clone();
        request
            .context
            .progress
            .set_deployment(format!("{}/{}", p.cfg.name, self.model));
        // A body holding large images is built and encoded off the worker thread.
        let images = request.image_bytes();
        let (mut call, mut request) = if images < http::LARGE {
            (
                p.dialect.build(&p.cfg.base_url, &self.model, &request)?,
                request,
            )
        } else {
            let (p, model) = (Arc::clone(&p), self.model.clone());
            http::cpu(images, move || {
                p.dialect
                    .build(&p.cfg.base_url, &model, &request)
                    .map(|call| (call, request))
            })
            .await??
        };
        if p.cfg.kind == ProviderKind::GigaChat {
            gigachat_files::attach_images(&p, &mut request, &mut call.body).await?;
        }
        let (call, body) =
            http::cpu(images, move || http::encode(&call).map(|body| (call, body))).await??;
        let first = async {
            let resp = http::send_encoded(&p, &call, body).await?;
            // Some servers ignore `stream: true` (or report an error) with a plain JSON
            // body: read it as a whole answer instead of finding no events in it.
            let is_json = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/json"));
            let mut events = if request.stream && !is_json {
                http::event_stream(&p, resp, p.dialect.stream_mapper(&request))
            } else {
                let body = http::read_body(&p, resp).await?;
                let events = p
                    .dialect
                    .parse_body(&body, &request)
                    .map_err(|e| http::from_upstream(&p.cfg.name, e))?;
                futures::stream::iter(events.into_iter().map(Ok)).boxed()
            };
            let first = events.next().await;
            Ok::<_, Error>((first, events))
        };
        let (first, rest) = match tokio::time::timeout(t.first_token, first).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "upstream `{}` sent nothing within {:?} (first_token timeout)",
                        p.cfg.name, t.first_token
                    ),
                )
                .retryable())
            }
        };
        let first = match first {
            Some(Ok(ev)) => ev,
            Some(Err(e)) => return Err(e),
            None => {
                return Err(Error::new(
                    ErrorKind::Upstream,
                    format!("upstream `{}` ended its answer without content", p.cfg.name),
                )
                .retryable())
            }
        };
        let deadline = tokio::time::Instant::now() + t.total;
        Ok(with_deadline(first, rest, deadline, p.cfg.name.clone()))
    }

    /// GigaChat's `POST /tokens/count`, which Parlance serves too; other providers have
    /// no such route.
    async fn count_tokens(&self, texts: &[String]) -> Result<Vec<u32>, Error> {
        let p = &self.provider;
        if !matches!(p.cfg.kind, ProviderKind::GigaChat | ProviderKind::OpenAi) {
            return Err(
                Error::invalid(format!("upstream `{}` cannot count tokens", p.cfg.name))
                    .with_code(Code::Unsupported),
            );
        }
        let call = dialect::Call {
            url: format!("{}/tokens/count", p.cfg.base_url),
            body: serde_json::json!({"model": self.model, "input": texts}),
            auth: dialect::AuthStyle::Bearer,
            extra_headers: Vec::new(),
        };
        let resp = http::send(p, &call).await.map_err(|e| {
            if e.code == Some(Code::UpstreamStatus(404)) {
                Error::invalid(format!("upstream `{}` cannot count tokens", p.cfg.name))
                    .with_code(Code::Unsupported)
            } else {
                e
            }
        })?;
        let body = http::read_body(p, resp).await?;
        let counts: Vec<TokenCount> = dialect::parse_json(&body, "token count")
            .map_err(|e| http::from_upstream(&p.cfg.name, e))?;
        if counts.len() != texts.len() {
            return Err(Error::new(
                ErrorKind::Upstream,
                format!(
                    "upstream `{}` counted {} of {} texts",
                    p.cfg.name,
                    counts.len(),
                    texts.len()
                ),
            ));
        }
        Ok(counts.into_iter().map(|c| c.tokens).collect())
    }

    async fn embed(
        &self,
        request: parlance_core::embed::EmbedRequest,
    ) -> Result<parlance_core::embed::Embeddings, Error> {
        embed::embed(&self.provider, &self.model, request).await
    }

    async fn rerank(
        &self,
        request: parlance_core::embed::RerankRequest,
    ) -> Result<parlance_core::embed::Scores, Error> {
        embed::rerank(&self.provider, &self.model, request).await
    }
}

#[derive(serde::Deserialize)]
struct TokenCount {
    tokens: u32,
}

/// The stream after its first event, cut off with a timeout error at `deadline`.
fn with_deadline(
    first: StreamEvent,
    mut rest: EventStream,
    deadline: tokio::time::Instant,
    provider: String,
) -> EventStream {
    Box::pin(async_stream::stream! {
        yield Ok(first);
        // One timer for the whole stream: a timeout per event registered and removed a
        // timer (taking the time driver's lock) for each of them.
        let expired = tokio::time::sleep_until(deadline);
        tokio::pin!(expired);
        loop {
            let next = tokio::select! {
                biased;
                item = rest.next() => Ok(item),
                () = &mut expired => Err(()),
            };
            match next {
                Ok(Some(item)) => {
                    let stop = item.is_err();
                    yield item;
                    if stop { break; }
                }
                Ok(None) => break,
                Err(()) => {
                    yield Err(Error::new(
                        ErrorKind::Timeout,
                        format!("upstream `{provider}` did not finish within the total timeout"),
                    ));
                    break;
                }
            }
        }
    })
}
