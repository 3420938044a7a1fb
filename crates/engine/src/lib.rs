//! Local models on llama.cpp. The only crate that touches `llama-cpp-2`: each loaded
//! model gets one OS thread that owns its context (see `worker`); this handle renders
//! the chat template, tokenizes, checks limits and hands jobs to that thread.

mod constraint;
mod logprobs;
mod sampler;
mod text;
mod worker;

use async_trait::async_trait;
use constraint::Constrainer;
use futures::StreamExt;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use parlance_core::ir::{ChatRequest, Message, Role, StreamEvent, ToolChoice, ToolDef, Usage};
use parlance_core::template::{ChatTemplate, CHATML_TEMPLATE};
use parlance_core::tools::{self, ToolSyntax};
use parlance_core::{Backend, Capabilities, Error, ErrorKind, EventStream, ModelInfo};
use serde_json::json;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use worker::{Job, JobEvent, JobStats, Worker, WorkerConfig};

/// Large enough for the `max_tokens: 16384` that the BgGPT examples send.
pub const DEFAULT_CTX: u32 = 32768;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashAttention {
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone)]
pub struct LocalModelConfig {
    pub path: PathBuf,
    /// Public model name; defaults to the file name without `.gguf`.
    pub alias: Option<String>,
    /// Context window in tokens: the KV cache all slots share, and so the most one
    /// request (prompt + completion) can use. Default [`DEFAULT_CTX`].
    pub ctx: Option<u32>,
    /// Sequences decoded together.
    pub slots: usize,
    pub threads: i32,
    /// Tokens per decode step.
    pub n_batch: usize,
    /// Prompt tokens per step while other sequences generate.
    pub prefill_chunk: usize,
    /// Jobs that may wait for a slot before new ones get 429.
    pub max_queue: usize,
    /// Server-wide cap on generated tokens per choice (llama-server's `--n-predict`):
    /// a larger `max_tokens` is lowered to it and ends with `finish_reason: "length"`.
    pub n_predict: Option<u32>,
    pub flash_attention: FlashAttention,
}

impl LocalModelConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LocalModelConfig {
            path: path.into(),
            alias: None,
            ctx: None,
            slots: 4,
            threads: std::thread::available_parallelism().map_or(4, |n| n.get() as i32),
            n_batch: 512,
            prefill_chunk: 256,
            max_queue: 64,
            n_predict: None,
            flash_attention: FlashAttention::On,
        }
    }
}

/// llama.cpp's global state: initialised once per process.
fn llama_backend() -> &'static LlamaBackend {
    static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
        LlamaBackend::init().expect("llama.cpp backend initialises once")
    })
}

pub struct LocalModel {
    info: ModelInfo,
    model: Arc<LlamaModel>,
    template: ChatTemplate,
    /// Whether the template renders `tools` itself; otherwise tools are described in
    /// the system prompt and calls are asked for in Hermes syntax.
    template_tools: bool,
    tool_syntax: ToolSyntax,
    constrainer: Constrainer,
    /// BOS text, to avoid a double BOS when the template already writes one.
    bos_text: String,
    add_bos: bool,
    n_vocab: i32,
    ctx_per_seq: u32,
    slots: usize,
    max_queue: usize,
    n_predict: Option<u32>,
    queued: Arc<AtomicUsize>,
    jobs: mpsc::Sender<Job>,
}

impl LocalModel {
    /// Loads the GGUF and starts its engine thread; returns once the context exists.
    pub fn load(cfg: LocalModelConfig) -> Result<Self, String> {
        let path = &cfg.path;
        if !path.is_file() {
            return Err(format!("model file {} does not exist", path.display()));
        }
        let backend = llama_backend();
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        let model = Arc::new(model);
        let vocab = model.vocab();

        let template_src = model
            .chat_template(None)
            .ok()
            .and_then(|t| t.to_string().ok())
            .unwrap_or_else(|| CHATML_TEMPLATE.to_string());
        let piece = |t: LlamaToken| {
            String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
        };
        let bos_text = piece(vocab.bos());
        let template = ChatTemplate::new(&template_src, &bos_text, &piece(vocab.eos()))?;
        let template_tools = tools::template_supports_tools(&template_src);
        let tool_syntax = ToolSyntax::detect(&template_src);
        let constrainer = Constrainer::new(&model)?;
        let eog_tokens: Vec<LlamaToken> = vocab.tokens().filter(|&t| vocab.is_eog(t)).collect();

        let train_ctx = model.n_ctx_train();
        let ctx_per_seq = cfg.ctx.unwrap_or(DEFAULT_CTX).max(64);
        if ctx_per_seq > train_ctx {
            tracing::info!(
                ctx_per_seq,
                train_ctx,
                "context window is longer than the model was trained on; positions past it are extrapolated"
            );
        }
        let slots = cfg.slots.max(1);
        let id = cfg.alias.clone().unwrap_or_else(|| {
            path.file_name()
                .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_string())
                .unwrap_or_else(|| "local".to_string())
        });
        let created = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());

        let params = LlamaContextParams::default()
            // One pool for all slots (unified KV): a single request may use all of it,
            // n choices share their prompt's cells, and a full pool is handled by the worker.
            .with_n_ctx(NonZeroU32::new(ctx_per_seq))
            .with_n_batch(cfg.n_batch as u32)
            .with_n_ubatch(worker::UBATCH as u32)
            // One extra sequence for the worker's pad token.
            .with_n_seq_max(slots as u32 + 1)
            .with_kv_unified(true)
            .with_n_threads(cfg.threads)
            .with_n_threads_batch(cfg.threads)
            .with_flash_attention_policy(match cfg.flash_attention {
                FlashAttention::Auto => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
                FlashAttention::On => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
                FlashAttention::Off => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
            });
        let worker_cfg = WorkerConfig {
            slots,
            ctx_per_seq: ctx_per_seq as usize,
            n_batch: cfg.n_batch.max(slots),
            prefill_chunk: cfg.prefill_chunk.max(1),
            eog_tokens,
            preserved: [
                "<tool_call>",
                "</tool_call>",
                "[TOOL_CALLS]",
                "<|python_tag|>",
            ]
            .iter()
            .filter_map(|m| match vocab.tokenize(m.as_bytes(), false, true)[..] {
                [t] => Some(t),
                _ => None,
            })
            .collect(),
        };

        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), String>>(1);
        let queued = Arc::new(AtomicUsize::new(0));
        let thread_model = Arc::clone(&model);
        let thread_queued = Arc::clone(&queued);
        std::thread::Builder::new()
            .name(format!("engine-{id}"))
            .spawn(move || {
                let model: &LlamaModel = &thread_model;
                match model.new_context(llama_backend(), params) {
                    Ok(ctx) => {
                        let _ = ready_tx.send(Ok(()));
                        Worker::new(model, ctx, worker_cfg, rx, thread_queued).run();
                    }
                    Err(e) => {
                        let _ =
                            ready_tx.send(Err(format!("cannot create a llama.cpp context: {e}")));
                    }
                }
            })
            .map_err(|e| format!("cannot start the engine thread: {e}"))?;
        ready_rx
            .recv()
            .map_err(|_| "the engine thread died while starting".to_string())??;

        let info = ModelInfo {
            id,
            owned_by: "parlance".to_string(),
            created,
            kind: "chat".to_string(),
            context_length: ctx_per_seq,
            capabilities: Capabilities {
                chat: true,
                vision: false,
                tools: true,
                json_schema: true,
                logprobs: true,
            },
        };
        Ok(LocalModel {
            info,
            n_vocab: model.n_vocab(),
            add_bos: vocab.should_add_bos(),
            model,
            template,
            template_tools,
            tool_syntax,
            constrainer,
            bos_text,
            ctx_per_seq,
            slots,
            max_queue: cfg.max_queue,
            n_predict: cfg.n_predict,
            queued,
            jobs,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn tokenize(&self, prompt: &str) -> Vec<LlamaToken> {
        let add_bos =
            self.add_bos && (self.bos_text.is_empty() || !prompt.starts_with(&self.bos_text));
        self.model
            .vocab()
            .tokenize(prompt.as_bytes(), add_bos, true)
    }

    fn check_supported(&self, req: &ChatRequest) -> Result<(), Error> {
        if let Some(i) = req.messages.iter().position(|m| m.has_images()) {
            return Err(Error::invalid_param(
                format!("messages[{i}].content"),
                format!("model `{}` does not accept images", self.info.id),
            ));
        }
        if let Some(&(tok, _)) = req
            .sampling
            .logit_bias
            .iter()
            .find(|(t, _)| *t < 0 || *t >= self.n_vocab)
        {
            return Err(Error::invalid_param(
                "logit_bias",
                format!(
                    "token id {tok} is outside this model's vocabulary (0..{})",
                    self.n_vocab
                ),
            ));
        }
        Ok(())
    }

    /// Reserves queue places for `n` jobs, or says the queue is full.
    fn reserve(&self, n: usize) -> Result<(), Error> {
        let before = self.queued.fetch_add(n, Ordering::Relaxed);
        if before + n > self.max_queue + self.slots {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return Err(Error::new(
                ErrorKind::RateLimited,
                format!(
                    "model `{}` is busy: all slots are in use and the queue is full; retry shortly",
                    self.info.id
                ),
            )
            .with_code("queue_full")
            .with_retry_after(1)
            .retryable());
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for LocalModel {
    async fn count_tokens(&self, texts: &[String]) -> Result<Vec<u32>, Error> {
        // Plain text, as a caller would send it: no BOS, special-token text not parsed.
        let vocab = self.model.vocab();
        Ok(texts
            .iter()
            .map(|t| vocab.tokenize(t.as_bytes(), false, false).len() as u32)
            .collect())
    }

    async fn chat(&self, req: ChatRequest) -> Result<EventStream, Error> {
        self.check_supported(&req)?;
        let tools_active = !req.tools.is_empty() && req.tool_choice != ToolChoice::None;
        let prompt_text = self.render(&req, tools_active)?;
        let mut constraint = self.constrainer.for_request(&req)?;
        let prompt = self.tokenize(&prompt_text);
        if prompt.is_empty() {
            return Err(Error::invalid_param("messages", "the prompt is empty"));
        }
        let ctx = self.ctx_per_seq as usize;
        let wanted = req.max_tokens.map_or(1, |m| m as usize);
        if prompt.len() + wanted > ctx {
            return Err(Error::invalid_param(
                "messages",
                format!(
                    "This model's maximum context length is {ctx} tokens. However, you requested {} tokens ({} in the messages, {wanted} in the completion). Please reduce the length of the messages or completion.",
                    prompt.len() + wanted,
                    prompt.len(),
                ),
            )
            .with_code("context_length_exceeded"));
        }
        // The context check above is on what the caller asked for; the server-wide
        // cap only bounds how much is generated.
        let max_tokens = req
            .max_tokens
            .unwrap_or((ctx - prompt.len()) as u32)
            .min(self.n_predict.unwrap_or(u32::MAX));
        let seed = req.sampling.seed.unwrap_or_else(rand::random);

        let choices: Vec<u32> = (0..req.n.max(1)).collect();
        let groups: Vec<Vec<u32>> = choices.chunks(self.slots).map(<[u32]>::to_vec).collect();
        self.reserve(groups.len())?;
        let enqueued = Instant::now();
        let mut receivers = Vec::with_capacity(groups.len());
        for (g, group) in groups.iter().enumerate() {
            // Each job needs its own matcher; the last one takes the compiled original.
            let constraint = if g + 1 == groups.len() {
                constraint.take()
            } else {
                constraint.as_ref().map(llguidance::Matcher::deep_clone)
            };
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let job = Job {
                prompt: prompt.clone(),
                choices: group.clone(),
                sampling: req.sampling.clone(),
                seed,
                max_tokens,
                stop: req.stop.clone(),
                ignore_eos: req.ignore_eos,
                constraint,
                logprobs: req.logprobs,
                tx,
                enqueued,
            };
            if self.jobs.send(job).is_err() {
                return Err(Error::internal("the engine thread has stopped"));
            }
            receivers.push(UnboundedReceiverStream::new(rx));
        }

        let expected = receivers.len();
        let prompt_tokens = prompt.len() as u32;
        let debug = req.debug.then_some(prompt_text);
        let stream = async_stream::stream! {
            let mut merged = futures::stream::select_all(receivers);
            let mut stats: Vec<JobStats> = Vec::with_capacity(expected);
            while let Some(event) = merged.next().await {
                match event {
                    JobEvent::Event(e) => yield Ok(e),
                    JobEvent::Done(s) => stats.push(s),
                    JobEvent::Failed(e) => {
                        yield Err(e);
                        return;
                    }
                }
            }
            if stats.len() < expected {
                yield Err(Error::internal("the engine stopped before finishing this request"));
                return;
            }
            let usage = Usage {
                prompt_tokens,
                completion_tokens: stats.iter().map(|s| s.completion_tokens).sum(),
                cached_tokens: stats[0].cached_tokens,
                reasoning_tokens: 0,
            };
            yield Ok(StreamEvent::Usage(usage));
            if let Some(prompt) = debug {
                yield Ok(StreamEvent::Debug(debug_info(&prompt, &stats)));
            }
        };
        if !tools_active {
            return Ok(Box::pin(stream));
        }
        // Forced calls were generated in Hermes syntax by the grammar, as were calls
        // asked for by the injected prompt of a template without tool support.
        let forced = matches!(req.tool_choice, ToolChoice::Required | ToolChoice::Named(_));
        let syntax = if forced || !self.template_tools {
            ToolSyntax::Hermes
        } else {
            self.tool_syntax
        };
        Ok(tools::parse_tool_calls(
            Box::pin(stream),
            syntax,
            &req.tools,
            req.n.max(1),
        ))
    }
}

impl LocalModel {
    fn render(&self, req: &ChatRequest, tools_active: bool) -> Result<String, Error> {
        let offered: &[ToolDef] = if tools_active { &req.tools } else { &[] };
        if self.template_tools {
            return self.template.render(&req.messages, offered);
        }
        let tool_history = req
            .messages
            .iter()
            .any(|m| m.role == Role::Tool || !m.tool_calls.is_empty());
        if tools_active || tool_history {
            let messages: Vec<Message> = tools::inline_tools(&req.messages, offered);
            return self.template.render(&messages, &[]);
        }
        self.template.render(&req.messages, &[])
    }
}

fn debug_info(prompt: &str, stats: &[JobStats]) -> serde_json::Value {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let s = &stats[0];
    let completion: u32 = stats.iter().map(|s| s.completion_tokens).sum();
    let per_sec = |tokens: u32, d: std::time::Duration| {
        if d.is_zero() {
            0.0
        } else {
            f64::from(tokens) / d.as_secs_f64()
        }
    };
    json!({
        "prompt": prompt,
        "prompt_tokens": s.prompt_tokens,
        "cached_tokens": s.cached_tokens,
        "slots": stats.iter().flat_map(|s| s.slots.clone()).collect::<Vec<_>>(),
        "timings": {
            "queue_ms": ms(s.queue),
            "prefill_ms": ms(s.prefill),
            "decode_ms": ms(s.decode),
            "prefill_tokens_per_second": per_sec(s.prompt_tokens - s.cached_tokens, s.prefill),
            "decode_tokens_per_second": per_sec(completion, s.decode),
        },
    })
}
