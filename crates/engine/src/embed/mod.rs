//! Embedding models: a GGUF that pools (BERT-family encoders with mean or CLS pooling,
//! decoder embedders with last-token pooling) served on an engine thread of its own.
//! The thread packs the inputs of every waiting request into each decode (many
//! sequences per batch, up to the batch size), so a request of 32 short texts is one
//! decode, not 32.

mod lanes;
mod measure;
mod run;
mod tiles;

pub(crate) use measure::copy_is_faster;

use crate::device;
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use parlance_core::embed::{EmbedInput, EmbedRequest, Embeddings, RerankRequest, Scores};
use parlance_core::priority::Queued;
use parlance_core::Code;
use parlance_core::ParamPath;
use parlance_core::{Backend, Capabilities, Error, ErrorKind, EventStream, ModelInfo};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Sequences one decode holds at most.
pub(super) const MAX_SEQS: usize = 64;

/// Tokens one decode packs from several inputs (a longer input still goes alone): the
/// matrix products gain little past a few hundred rows, and the attention tiles that
/// sequences cross (see `tiles`) grow with the pack. 512 measured no faster (766
/// against 779 inputs/s, 4 rounds).
pub(super) const PACK_TOKENS: usize = 256;

/// Decodes of at most this many tokens run on the model's own F16/BF16 weights when it
/// also has an F32 copy (see `upcast`): a short lone input reads every weight once, and
/// the copy has twice the bytes; packs are compute-bound and faster on F32.
pub(super) const SMALL_DECODE: usize = 64;

/// Decodes this small (a query or two: ~10 ms on one core) run in the ordinary class
/// even beside busy chat engines: a retrieval query waits on them, and as the idle
/// class it waited for the chat's pauses (up to ~0.8 s under two busy streams).
pub(super) const QUICK_DECODE: usize = 16;

/// How a GGUF's vectors are pooled, from its `{arch}.pooling_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pooling {
    Mean,
    Cls,
    Last,
    /// A reranker's relevance score (one number per sequence).
    Rank,
}

impl Pooling {
    /// The pooling the GGUF declares; `None` for a model that does not pool (chat).
    pub(crate) fn of(model: &LlamaModel) -> Option<Pooling> {
        let arch = model.meta_val_str("general.architecture").ok()?;
        let v = model.meta_val_str(&format!("{arch}.pooling_type")).ok()?;
        match v.trim() {
            "1" => Some(Pooling::Mean),
            "2" => Some(Pooling::Cls),
            "3" => Some(Pooling::Last),
            "4" => Some(Pooling::Rank),
            _ => None,
        }
    }

    /// `--pooling`'s words.
    pub(crate) fn named(name: &str) -> Option<Pooling> {
        [Pooling::Mean, Pooling::Cls, Pooling::Last, Pooling::Rank]
            .into_iter()
            .find(|p| p.name() == name)
    }

    fn params(self) -> LlamaPoolingType {
        match self {
            Pooling::Mean => LlamaPoolingType::Mean,
            Pooling::Cls => LlamaPoolingType::Cls,
            Pooling::Last => LlamaPoolingType::Last,
            Pooling::Rank => LlamaPoolingType::Rank,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Last => "last",
            Pooling::Rank => "rank",
        }
    }
}

pub(super) struct Job {
    pub inputs: Vec<Vec<LlamaToken>>,
    pub tx: oneshot::Sender<Result<Vec<Vec<f32>>, Error>>,
}

/// The weights an embedding engine runs on.
pub(crate) struct Weights {
    /// What every decode runs on (the F32 copy, when there is one).
    pub main: Arc<LlamaModel>,
    /// The file's own F16/BF16 weights beside an F32 copy, for small decodes.
    pub small: Option<Arc<LlamaModel>>,
}

pub struct EmbeddingModel {
    info: ModelInfo,
    placement: String,
    model: Arc<LlamaModel>,
    pooling: Pooling,
    /// Most tokens one input may have (one sequence's context).
    ctx: usize,
    jobs: mpsc::Sender<Job>,
    alive: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    /// Tells the chat engines that this engine has work (see `priority`).
    arrived: Queued,
}

/// How an embedding engine is sized.
pub(crate) struct Sizing {
    /// Compute threads of one decode.
    pub threads: i32,
    /// Tokens one decode may hold (raised to the model's context).
    pub n_batch: usize,
    /// Requests that may wait.
    pub max_queue: usize,
    /// Whether the model runs on the CPU, where packs may run side by side on one
    /// thread each (see `lanes`); a GPU decodes one pack at a time.
    pub on_cpu: bool,
}

impl EmbeddingModel {
    /// Starts the engine thread for an already loaded model that pools.
    pub(crate) fn start(
        weights: Weights,
        pooling: Pooling,
        info: ModelInfo,
        placement: String,
        sizing: Sizing,
    ) -> Result<Self, String> {
        let ctx = info.context_length as usize;
        // A non-causal encoder sees a whole sequence in one micro-batch.
        let n_batch = sizing.n_batch.max(ctx);
        let threads = sizing.threads;
        let params = context_params(pooling, n_batch, threads);
        let small_params = context_params(pooling, SMALL_DECODE, threads);
        let single_params = context_params(pooling, PACK_TOKENS, 1);
        let lanes = match sizing.on_cpu {
            true => threads.max(1) as usize - 1,
            false => 0,
        };
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<Queued, String>>(1);
        let alive = Arc::new(AtomicBool::new(true));
        let queued = Arc::new(AtomicUsize::new(0));
        let Weights { main: model, small } = weights;
        let (thread_model, thread_alive, thread_queued) =
            (Arc::clone(&model), Arc::clone(&alive), Arc::clone(&queued));
        let normalize = pooling != Pooling::Rank;
        let name = parlance_core::priority::Background::thread_name("emb", &info.id);
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                // Embedding is throughput work: the chat engines' streams go first
                // (llama.cpp's compute threads and the lanes inherit this thread's class
                // and name).
                let mut bg = parlance_core::priority::Background::start();
                std::thread::scope(|scope| {
                    let made = context(&thread_model, params).and_then(|main| {
                        let small = match &small {
                            Some(m) => Some(context(m, small_params.clone())?),
                            None => None,
                        };
                        let single = context(&thread_model, single_params.clone())?;
                        let lanes = (0..lanes)
                            .map(|_| {
                                lanes::Lane::start(
                                    scope,
                                    &name,
                                    &thread_model,
                                    single_params.clone(),
                                )
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        Ok((
                            run::Contexts {
                                main,
                                small,
                                single,
                            },
                            lanes,
                        ))
                    });
                    match made {
                        // The starter waits on `ready_rx` until one of these arrives.
                        Ok((contexts, lanes)) => {
                            ready_tx.send(Ok(bg.queued())).ok();
                            let engine = run::Engine {
                                contexts,
                                lanes: &lanes,
                                n_batch,
                                normalize,
                                queued: &thread_queued,
                            };
                            engine.run(rx, &mut bg);
                        }
                        Err(e) => {
                            ready_tx.send(Err(e)).ok();
                        }
                    }
                });
                thread_alive.store(false, Ordering::SeqCst);
                crate::config::free_model(thread_model);
                if let Some(m) = small {
                    crate::config::free_model(m);
                }
            })
            .map_err(|e| format!("cannot start the engine thread: {e}"))?;
        let arrived = ready_rx
            .recv()
            .map_err(|_| "the engine thread stopped while starting".to_string())??;
        Ok(EmbeddingModel {
            arrived,
            info,
            placement,
            model,
            pooling,
            ctx,
            jobs,
            alive,
            queued,
            max_queue: sizing.max_queue,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn placement(&self) -> &str {
        &self.placement
    }

    pub fn pooling(&self) -> &'static str {
        self.pooling.name()
    }
}

/// A context that decodes up to `tokens` tokens of up to `MAX_SEQS` whole sequences.
fn context_params(pooling: Pooling, tokens: usize, threads: i32) -> LlamaContextParams {
    LlamaContextParams::default()
        .with_embeddings(true)
        .with_pooling_type(pooling.params())
        .with_n_ctx(NonZeroU32::new(tokens as u32))
        .with_n_batch(tokens as u32)
        .with_n_ubatch(tokens as u32)
        .with_n_seq_max(MAX_SEQS as u32)
        .with_kv_unified(true)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
}

fn context(model: &LlamaModel, params: LlamaContextParams) -> Result<LlamaContext<'_>, String> {
    crate::llama_backend().and_then(|b| {
        model
            .new_context(b, params)
            .map_err(|e| format!("cannot create a llama.cpp context: {e}"))
    })
}

#[async_trait::async_trait]
impl Backend for EmbeddingModel {
    async fn chat(&self, request: parlance_core::ir::ChatRequest) -> Result<EventStream, Error> {
        let what = match self.pooling {
            Pooling::Rank => "a reranker: it scores documents (POST /v1/rerank)",
            _ => "an embedding model: it makes vectors (POST /v1/embeddings)",
        };
        Err(Error::invalid_param(
            "model",
            format!("`{}` is {what}, not chat answers.", request.model),
        )
        .with_code(Code::Unsupported))
    }

    fn health(&self) -> Result<(), String> {
        if self.alive.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("its engine thread stopped".to_string())
        }
    }

    // Tokenizing is CPU work: on the blocking pool, as every model does it.
    async fn tokenize(&self, text: &str, special: bool) -> Result<Vec<u32>, Error> {
        let (model, text) = (Arc::clone(&self.model), text.to_string());
        parlance_core::blocking::run(text.len(), move || {
            let toks = model.vocab().tokenize(text.as_bytes(), special, false);
            toks.iter().map(|t| t.0 as u32).collect()
        })
        .await
    }

    async fn count_tokens(&self, texts: &[String]) -> Result<Vec<u32>, Error> {
        let (model, texts) = (Arc::clone(&self.model), texts.to_vec());
        let bytes = texts.iter().map(String::len).sum();
        parlance_core::blocking::run(bytes, move || {
            let count = |t: &String| model.vocab().tokenize(t.as_bytes(), true, false).len() as u32;
            texts.iter().map(count).collect()
        })
        .await
    }

    async fn embed(&self, request: EmbedRequest) -> Result<Embeddings, Error> {
        if self.pooling == Pooling::Rank {
            return Err(Error::invalid_param(
                "model",
                format!("`{}` is a reranker: it scores documents (POST /v1/rerank), not texts on their own.", self.info.id),
            )
            .with_code(Code::Unsupported));
        }
        if request.inputs.is_empty() {
            return Err(Error::invalid_param(
                "input",
                "'input' is empty: send at least one text.",
            ));
        }
        let bytes: usize = request.inputs.iter().map(EmbedInput::bytes).sum();
        let (model, ctx) = (Arc::clone(&self.model), self.ctx);
        let (inputs, truncate) = (request.inputs, request.truncate);
        let inputs = parlance_core::blocking::run(bytes, move || {
            tokenize_inputs(&model, ctx, &inputs, truncate)
        })
        .await??;
        let input_tokens: Vec<u32> = inputs.iter().map(|i| i.len() as u32).collect();
        let prompt_tokens = input_tokens.iter().sum();
        Ok(Embeddings {
            vectors: self.submit(inputs).await?,
            prompt_tokens,
            input_tokens: Some(input_tokens),
        })
    }

    async fn rerank(&self, request: RerankRequest) -> Result<Scores, Error> {
        if self.pooling != Pooling::Rank {
            return Err(Error::invalid_param(
                "model",
                format!(
                    "`{}` is an embedding model, not a reranker: it cannot score documents.",
                    self.info.id
                ),
            )
            .with_code(Code::Unsupported));
        }
        let bytes = request.query.len() * request.documents.len()
            + request.documents.iter().map(String::len).sum::<usize>();
        let (model, ctx) = (Arc::clone(&self.model), self.ctx);
        let pairs = parlance_core::blocking::run(bytes, move || {
            crate::rerank::pairs(&model, ctx, &request.query, &request.documents)
        })
        .await??;
        let prompt_tokens = pairs.iter().map(Vec::len).sum::<usize>() as u32;
        let scores = self.submit(pairs).await?;
        Ok(Scores {
            scores: scores
                .iter()
                .map(|v| v.first().copied().unwrap_or(f32::NAN))
                .collect(),
            prompt_tokens,
        })
    }
}

impl EmbeddingModel {
    /// Queues token sequences for the engine thread; their pooled outputs, in order.
    async fn submit(&self, inputs: Vec<Vec<LlamaToken>>) -> Result<Vec<Vec<f32>>, Error> {
        // A job without inputs would never be packed, and the engine thread would go
        // round without waiting for work.
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        self.health().map_err(|why| {
            Error::new(
                ErrorKind::Unavailable,
                format!("model `{}` is unavailable: {why}", self.info.id),
            )
            .with_code(Code::ModelUnavailable)
        })?;
        if self.queued.load(Ordering::SeqCst) >= self.max_queue {
            return Err(Error::new(
                ErrorKind::RateLimited,
                "too many embedding requests are waiting; retry shortly",
            )
            .with_code(Code::QueueFull)
            .with_retry_after(1));
        }
        let (tx, rx) = oneshot::channel();
        self.queued.fetch_add(1, Ordering::SeqCst);
        if self.jobs.send(Job { inputs, tx }).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::new(ErrorKind::Unavailable, "the engine stopped")
                .with_code(Code::ModelUnavailable));
        }
        self.arrived.arrived();
        rx.await.map_err(|_| {
            Error::new(
                ErrorKind::Unavailable,
                "the engine stopped before finishing this request",
            )
            .with_code(Code::ModelUnavailable)
        })?
    }
}

/// Each input as token ids; one that is empty, too long, or names ids outside the
/// vocabulary is a 400 naming `input[i]`.
fn tokenize_inputs(
    model: &LlamaModel,
    ctx: usize,
    inputs: &[EmbedInput],
    truncate: Option<u32>,
) -> Result<Vec<Vec<LlamaToken>>, Error> {
    let n_vocab = model.n_vocab();
    let keep = truncate.map_or(ctx, |t| (t as usize).min(ctx));
    let mut out = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let at = ParamPath::field("input").at(i);
        let mut toks = match input {
            // The model's own special tokens around the text ([CLS] ... [SEP]); text
            // that spells a special token stays text.
            EmbedInput::Text(t) => model.vocab().tokenize(t.as_bytes(), true, false),
            EmbedInput::Tokens(ids) => {
                if let Some(bad) = ids.iter().find(|&&t| t >= n_vocab.max(0) as u32) {
                    return Err(Error::invalid_param(
                        &at,
                        format!("{at} has token id {bad}, but this model's vocabulary has ids 0..{n_vocab} only."),
                    ));
                }
                ids.iter().map(|&t| LlamaToken::new(t as i32)).collect()
            }
        };
        if toks.is_empty() {
            return Err(Error::invalid_param(&at, format!("{at} is empty.")));
        }
        if toks.len() > keep {
            if truncate.is_none() {
                return Err(Error::invalid_param(
                    &at,
                    format!(
                        "{at} has {} tokens, more than this model's context of {ctx} tokens; send it shorter, or set truncate_prompt_tokens.",
                        toks.len()
                    ),
                )
                .with_code(Code::ContextLengthExceeded));
            }
            toks.truncate(keep);
        }
        out.push(toks);
    }
    Ok(out)
}

/// Model info for an embedding GGUF, or a reranker's.
pub(crate) fn info(
    model: &LlamaModel,
    pooling: Pooling,
    id: String,
    created: u64,
    ctx: u32,
) -> ModelInfo {
    let rerank = pooling == Pooling::Rank;
    ModelInfo {
        id,
        owned_by: "parlance".into(),
        created,
        kind: if rerank { "rerank" } else { "embedding" }.into(),
        context_length: ctx,
        max_output_tokens: None,
        capabilities: Capabilities {
            embeddings: !rerank,
            rerank,
            ..Capabilities::default()
        },
        dimensions: (!rerank).then(|| match model.n_embd_out() {
            n if n > 0 => n as u32,
            _ => crate::config::hparam(model, "embedding_length").unwrap_or(0),
        }),
        // GGUF metadata does not say; the catalog declares it.
        matryoshka: false,
        price: None,
        file_metadata: crate::config::file_metadata(model),
    }
}

pub(crate) fn placement(n_gpu_layers: Option<u32>, model: &LlamaModel) -> String {
    device::placement(n_gpu_layers, model.n_layer())
}
