//! Local models on llama.cpp. The only crate that touches `llama-cpp-2`: each loaded
//! model gets one OS thread that owns its context (see `worker`); this handle renders
//! the chat template, tokenizes, checks limits and hands jobs to that thread.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

mod checks;
mod config;
mod constraint;
mod device;
pub use device::gpu_devices;
mod draw;
mod embed;
mod job;
mod logprobs;
mod omp;
mod prep;
mod rerank;
mod sampler;
mod setup;
mod special;
mod text;
mod upcast;
mod vision;
mod worker;

use async_trait::async_trait;
use checks::check_logit_bias;
pub(crate) use checks::in_vocab;
pub use config::{
    default_ctx, load, peek, EmbeddingCopy, FlashAttention, Loaded, LocalModelConfig, Peeked,
    DEFAULT_CTX, DEFAULT_MAX_OUTPUT,
};
use config::{llama_backend, open};
use constraint::Constrainer;
pub use embed::EmbeddingModel;
use futures::StreamExt;
use job::{Job, JobEvent, JobStats, WorkerConfig};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use parlance_core::ir::{ChatRequest, Message, StreamEvent, ToolChoice, Usage};
use parlance_core::template::ChatTemplate;
use parlance_core::tools::{self, ToolSyntax};
use parlance_core::Code;
use parlance_core::ParamPath;
use parlance_core::{Backend, Error, ErrorKind, EventStream, InlineImages, ModelInfo};
use prep::{text_bytes, Prep, Prepared};
use setup::{context_params, preserved_tokens, spawn_engine, template_source};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use vision::Vision;

pub struct LocalModel {
    info: ModelInfo,
    /// Where its layers run, as the load message says it.
    placement: String,
    prep: Arc<Prep>,
    n_vocab: i32,
    slots: usize,
    max_queue: usize,
    n_predict: Option<u32>,
    /// Default and ceiling of generated tokens per choice.
    max_output: u32,
    /// Jobs sent to the engine thread and not yet given slots.
    queued: Arc<AtomicUsize>,
    /// Slots without a running sequence, as the engine thread last saw them.
    free: Arc<AtomicUsize>,
    /// False once the engine thread has stopped (it panicked).
    alive: Arc<AtomicBool>,
    generated: Arc<std::sync::atomic::AtomicU64>,
    jobs: mpsc::Sender<Job>,
    image_fetcher: Option<Arc<dyn InlineImages>>,
}

/// Marks the engine dead when its thread ends, however it ends (a panic unwinds through it).
struct AliveGuard(Arc<AtomicBool>, String);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
        if std::thread::panicking() {
            tracing::error!(model = %self.1, "the engine thread panicked; this model answers 503 from now on");
        }
    }
}

impl LocalModel {
    /// Loads the GGUF and starts its engine thread; returns once the context exists.
    pub fn load(cfg: LocalModelConfig) -> Result<Self, String> {
        let model = open(&cfg)?;
        Self::with_model(cfg, model)
    }

    pub(crate) fn with_model(
        cfg: LocalModelConfig,
        model: Arc<LlamaModel>,
    ) -> Result<Self, String> {
        if cfg.deterministic && !matches!(cfg.flash_attention, FlashAttention::On) {
            // Its batch invariance is argued from flash attention's kernels (job::UBATCH);
            // matrix-product attention changes shape with every micro-batch.
            return Err("--deterministic needs flash attention on (-fa on)".to_string());
        }
        let placement = device::placement(cfg.n_gpu_layers, model.n_layer());
        let vision = cfg
            .mmproj
            .as_ref()
            .map(|p| Vision::load(p, &model, cfg.threads, cfg.n_gpu_layers != Some(0)))
            .transpose()?
            .map(Arc::new);
        let vocab = model.vocab();

        let template_src = template_source(&cfg, &model);
        let piece = |t: LlamaToken| {
            String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
        };
        let bos_text = piece(vocab.bos());
        let template = ChatTemplate::new(&template_src, &bos_text, &piece(vocab.eos()))
            .map_err(|e| e.to_string())?;
        let template_tools = tools::template_supports_tools(&template_src);
        let tool_syntax = ToolSyntax::detect(&template_src);
        let constrainer = Constrainer::new(&model)?;
        let eog_tokens: Vec<LlamaToken> = vocab.tokens().filter(|&t| vocab.is_eog(t)).collect();

        let info = config::chat_info(&cfg, &model, vision.is_some());
        let ctx_per_seq = info.context_length;
        note_extrapolation(ctx_per_seq, model.n_ctx_train());
        let slots = cfg.slots.max(1);
        let id = info.id.clone();

        let n_ubatch = if cfg.deterministic {
            job::UBATCH
        } else {
            cfg.n_batch
        };
        let params = context_params(&cfg, slots, ctx_per_seq, n_ubatch);
        let worker_cfg = WorkerConfig {
            slots,
            ctx_per_seq: ctx_per_seq as usize,
            n_batch: cfg.n_batch.max(slots),
            prefill_chunk: cfg.prefill_chunk.max(1),
            prefill_pace: cfg.prefill_pace,
            deterministic: cfg.deterministic,
            eog_tokens,
            preserved: preserved_tokens(&vocab),
        };
        let counters = job::Counters::new(slots);
        let alive = Arc::clone(&counters.alive);
        let jobs = spawn_engine(
            Arc::clone(&model),
            vision.clone(),
            params,
            worker_cfg,
            counters.clone(),
            AliveGuard(Arc::clone(&alive), id.clone()),
        )?;
        let max_output = info.max_output_tokens.unwrap_or(ctx_per_seq);
        let max_piece_bytes = max_piece_bytes(&vocab);
        let image_limit = match &vision {
            Some(v) if v.non_causal => n_ubatch,
            _ => usize::MAX,
        };
        let prep = Prep {
            image_limit,
            vision,
            add_bos: vocab.should_add_bos(),
            model: Arc::clone(&model),
            template,
            template_tools,
            tool_syntax,
            constrainer,
            bos_text,
            max_piece_bytes,
            ctx_per_seq,
            specials: special::Specials::of(&model),
            crash_markers: job::crash_markers(),
        };
        Ok(LocalModel {
            info,
            placement,
            n_vocab: model.n_vocab(),
            prep: Arc::new(prep),
            slots,
            max_queue: cfg.max_queue,
            n_predict: cfg.n_predict,
            max_output,
            queued: counters.queued,
            free: counters.free,
            alive,
            generated: counters.generated,
            jobs,
            image_fetcher: cfg.image_fetcher.clone(),
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// `on the CPU` or `N of M layers on DEVICE`.
    pub fn placement(&self) -> &str {
        &self.placement
    }

    fn check_supported(&self, req: &ChatRequest) -> Result<(), Error> {
        let images = req.messages.iter().position(Message::has_images);
        if let (Some(i), None) = (images, &self.prep.vision) {
            return Err(Error::invalid_param(
                ParamPath::message(i).then("content"),
                format!("model `{}` does not accept images", self.info.id),
            ));
        }
        check_logit_bias(&req.sampling.logit_bias, self.n_vocab)
    }

    fn unavailable(&self) -> Error {
        Error::new(
            ErrorKind::Unavailable,
            format!(
                "model `{}` is unavailable: its engine thread has stopped; restart the server",
                self.info.id
            ),
        )
        .with_code(Code::ModelUnavailable)
        // Another deployment of the same catalog model may still serve it.
        .retryable()
    }

    /// Reserves queue places for `n` jobs, or says the queue is full. Jobs that find a
    /// free slot do not wait, so they do not count against the queue.
    fn reserve(&self, n: usize) -> Result<(), Error> {
        let before = self.queued.fetch_add(n, Ordering::SeqCst);
        let free = self.free.load(Ordering::SeqCst);
        if before + n > self.max_queue + free {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            return Err(Error::new(
                ErrorKind::RateLimited,
                format!(
                    "model `{}` is busy: all slots are in use and the queue is full; retry shortly",
                    self.info.id
                ),
            )
            .with_code(Code::QueueFull)
            .with_retry_after(1)
            .retryable());
        }
        Ok(())
    }

    /// Runs CPU-heavy work off the async workers (see `parlance_core::blocking`).
    async fn off_thread<T: Send + 'static>(
        &self,
        input_bytes: usize,
        work: impl FnOnce(&Prep) -> T + Send + 'static,
    ) -> Result<T, Error> {
        let prep = Arc::clone(&self.prep);
        parlance_core::blocking::run(input_bytes, move || work(&prep)).await
    }
}

#[async_trait]
impl Backend for LocalModel {
    async fn count_tokens(&self, texts: &[String]) -> Result<Vec<u32>, Error> {
        if !self.alive.load(Ordering::SeqCst) {
            return Err(self.unavailable());
        }
        let texts = texts.to_vec();
        let bytes = texts.iter().map(String::len).sum();
        // Plain text, as a caller would send it: no BOS, special-token text not parsed.
        self.off_thread(bytes, move |prep| {
            let vocab = prep.model.vocab();
            texts
                .iter()
                .map(|t| vocab.tokenize(t.as_bytes(), false, false).len() as u32)
                .collect()
        })
        .await
    }

    async fn count_image_tokens(&self, messages: &[Message]) -> Result<u32, Error> {
        if self.prep.vision.is_none() || !messages.iter().any(Message::has_images) {
            return Ok(0);
        }
        let messages = messages.to_vec();
        let bytes = parlance_core::ir::image_bytes(&messages);
        self.off_thread(bytes, move |prep| vision::count_tokens(prep, &messages))
            .await?
    }

    async fn tokenize(&self, text: &str, special: bool) -> Result<Vec<u32>, Error> {
        let text = text.to_string();
        self.off_thread(text.len(), move |prep| {
            let tokens = if special {
                prep.tokenize_part(&text, 0, &[], prep.add_bos)
            } else {
                prep.model.vocab().tokenize(text.as_bytes(), false, false)
            };
            tokens.iter().map(|t| t.0 as u32).collect()
        })
        .await
    }

    async fn detokenize(&self, tokens: &[u32]) -> Result<String, Error> {
        if let Some(bad) = tokens.iter().find(|&&t| t >= self.n_vocab as u32) {
            return Err(Error::invalid_param(
                "tokens",
                format!(
                    "token id {bad} is outside this model's vocabulary (0..{})",
                    self.n_vocab
                ),
            ));
        }
        let tokens = tokens.to_vec();
        self.off_thread(tokens.len() * 8, move |prep| {
            let vocab = prep.model.vocab();
            let bytes: Vec<u8> = tokens
                .iter()
                .flat_map(|&t| vocab.token_to_piece(LlamaToken::new(t as i32), false, None))
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .await
    }

    fn load(&self) -> Option<parlance_core::Load> {
        let free = self.free.load(Ordering::Relaxed).min(self.slots);
        Some(parlance_core::Load {
            queued: self.queued.load(Ordering::Relaxed),
            busy_slots: self.slots - free,
            slots: self.slots,
            generated_tokens: self.generated.load(Ordering::Relaxed),
        })
    }

    fn health(&self) -> Result<(), String> {
        if self.alive.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("its engine thread has stopped".to_string())
        }
    }

    async fn chat(&self, req: ChatRequest) -> Result<EventStream, Error> {
        if !self.alive.load(Ordering::SeqCst) {
            return Err(self.unavailable());
        }
        self.check_supported(&req)?;
        let mut req = req;
        if self.prep.vision.is_some() {
            if let Some(fetcher) = &self.image_fetcher {
                fetcher.inline_images(&mut req).await?;
            }
        }
        self.check_max_tokens(&req)?;
        let tools_active = !req.tools.is_empty() && req.tool_choice != ToolChoice::None;
        // The context check is on what the caller asked for (one token when unsaid).
        let wanted = req.max_tokens.map_or(1, |m| m as usize);
        // Images are decoded there too: big ones take turns like big prompts.
        let bytes = work_bytes(&req);
        let (req, prepared) = self
            .off_thread(bytes, move |prep| {
                let p = prep.prepare(&req, tools_active, wanted);
                (req, p)
            })
            .await?;
        let Prepared {
            prompt_text,
            prompt,
            media,
            mut constraint,
            crash,
        } = prepared?;
        let ctx = self.ctx_per_seq();
        // The server-wide cap only bounds how much is generated.
        let max_tokens = req
            .max_tokens
            .unwrap_or(self.max_output)
            .min((ctx - prompt.len()) as u32)
            .min(self.n_predict.unwrap_or(u32::MAX));
        let seed = req.sampling.seed.unwrap_or_else(rand::random);
        self.count_prompt(&req, prompt.len() as u32).await?;

        let media = Arc::new(media);
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
                media: Arc::clone(&media),
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
                crash,
                progress: req.context.progress.clone(),
            };
            if self.jobs.send(job).is_err() {
                return Err(self.unavailable());
            }
            receivers.push(UnboundedReceiverStream::new(rx));
        }

        let debug = req.debug.then_some(prompt_text);
        let stream = job_events(
            receivers,
            prompt.len() as u32,
            debug,
            Arc::clone(&self.alive),
        );
        if !tools_active {
            return Ok(Box::pin(stream));
        }
        Ok(tools::parse_tool_calls(
            Box::pin(stream),
            self.tool_syntax(&req),
            &req.tools,
            req.n.max(1),
        ))
    }
}

impl LocalModel {
    /// Forced calls were generated in Hermes syntax by the grammar, as were calls asked
    /// for by the injected prompt of a template without tool support.
    fn tool_syntax(&self, req: &ChatRequest) -> ToolSyntax {
        let forced = matches!(req.tool_choice, ToolChoice::Required | ToolChoice::Named(_));
        if forced || !self.prep.template_tools {
            ToolSyntax::Hermes
        } else {
            self.prep.tool_syntax
        }
    }

    fn check_max_tokens(&self, req: &ChatRequest) -> Result<(), Error> {
        match req.max_tokens.filter(|&m| m > self.max_output) {
            Some(m) => Err(Error::invalid_param(
                "max_tokens",
                format!(
                    "max_tokens is too large: {m}. This model supports at most {} completion tokens.",
                    self.max_output
                ),
            )
            .with_code(Code::MaxTokensTooLarge)),
            None => Ok(()),
        }
    }

    /// The exact prompt count goes to usage and to the limits before any slot or queue
    /// place is taken.
    async fn count_prompt(&self, req: &ChatRequest, tokens: u32) -> Result<(), Error> {
        let progress = &req.context.progress;
        let counts = progress.counts();
        counts.prompt_tokens.store(tokens, Ordering::Relaxed);
        counts.exact.store(true, Ordering::Relaxed);
        progress.set_deployment(format!("local/{}", self.info.id));
        progress.prompt_counted(tokens).await
    }

    fn ctx_per_seq(&self) -> usize {
        self.prep.ctx_per_seq as usize
    }
}

fn note_extrapolation(ctx_per_seq: u32, train_ctx: u32) {
    if ctx_per_seq > train_ctx {
        tracing::info!(
            ctx_per_seq,
            train_ctx,
            "context window is longer than the model was trained on; positions past it are extrapolated"
        );
    }
}

/// The longest text one token can stand for.
fn max_piece_bytes(vocab: &llama_cpp_2::vocab::LlamaVocab<'_>) -> usize {
    vocab
        .tokens()
        .map(|t| vocab.token_to_piece(t, true, None).len())
        .max()
        .unwrap_or(1)
        .max(1)
}

/// How much preparing `req` costs (big inputs take turns); images are decoded there too.
fn work_bytes(req: &ChatRequest) -> usize {
    text_bytes(req)
        + parlance_core::ir::image_bytes(&req.messages)
        + req
            .tools
            .iter()
            .map(|t| t.parameters.to_string().len())
            .sum::<usize>()
}

/// The events of a request's jobs (one per group of choices) merged, then its usage.
fn job_events(
    receivers: Vec<UnboundedReceiverStream<JobEvent>>,
    prompt_tokens: u32,
    debug: Option<String>,
    alive: Arc<AtomicBool>,
) -> impl futures::Stream<Item = Result<StreamEvent, Error>> + Send + 'static {
    let expected = receivers.len();
    async_stream::stream! {
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
            // The worker ends every job it holds with Done or Failed, so a channel
            // closed early means its thread is going down. A panic can drop the job
            // (a local of the panicking frame) before the thread's guard clears
            // `alive`: clear it here too, so /health already says so when this
            // caller sees its 503.
            alive.store(false, Ordering::SeqCst);
            yield Err(Error::new(ErrorKind::Unavailable, "the engine stopped before finishing this request").with_code(Code::ModelUnavailable));
            return;
        }
        let usage = Usage {
            prompt_tokens,
            completion_tokens: stats.iter().map(|s| s.completion_tokens).sum(),
            cached_tokens: stats.first().map_or(0, |s| s.cached_tokens),
            ..Usage::default()
        };
        yield Ok(StreamEvent::Usage(usage));
        if let Some(prompt) = debug {
            yield Ok(StreamEvent::Debug(job::debug_info(&prompt, &stats)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_context_is_the_training_one_unless_answers_need_more() {
        // SmolLM2 (8192): no extrapolated positions by default.
        assert_eq!(default_ctx(8192, None), 8192);
        assert_eq!(default_ctx(8192, Some(4096)), 8192);
        // --max-output-tokens 16384 (the BgGPT examples) with room for the prompt.
        assert_eq!(default_ctx(8192, Some(16384)), 17408);
        assert_eq!(default_ctx(131_072, None), DEFAULT_CTX);
        assert_eq!(default_ctx(0, None), 64);
    }
}
