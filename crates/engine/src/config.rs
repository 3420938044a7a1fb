//! What a local model is loaded with, and loading a GGUF as the kind of model its
//! metadata says it is (chat, embedding, reranker).

use crate::checks::check_gguf;
use crate::upcast::CopyType;
use crate::{device, embed, EmbeddingModel, LocalModel};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use parlance_core::{Capabilities, InlineImages, ModelInfo};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// The longest default context: a model trained on more gets this unless `-c` says.
pub const DEFAULT_CTX: u32 = 32768;

/// Prompt room kept beside `--max-output-tokens` when it sets the default context.
const PROMPT_ROOM: u32 = 1024;

/// llama-server's `-c 0`: the context the model was trained on (positions past it are
/// extrapolated), capped at [`DEFAULT_CTX`]; more when `--max-output-tokens` asks for
/// longer answers than that leaves room for (the BgGPT examples' `max_tokens: 16384`).
pub fn default_ctx(train_ctx: u32, max_output_tokens: Option<u32>) -> u32 {
    let wanted = max_output_tokens.map_or(0, |m| m.saturating_add(PROMPT_ROOM));
    train_ctx.max(wanted).clamp(64, DEFAULT_CTX)
}

/// Generated tokens per choice when a request sets no `max_tokens`, and the most it may
/// ask for, unless configured (capped by the model's training context): a request
/// without a limit on a looping answer must not hold a slot for the whole context.
pub const DEFAULT_MAX_OUTPUT: u32 = 4096;

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
    /// request (prompt + completion) can use. Default [`default_ctx`].
    pub ctx: Option<u32>,
    /// Sequences decoded together.
    pub slots: usize,
    pub threads: i32,
    /// Tokens per decode step.
    pub n_batch: usize,
    /// Prompt tokens per step while other sequences generate.
    pub prefill_chunk: usize,
    /// Above 1: size those chunks so a step takes at most this many times a step
    /// without prompt tokens (see `worker::pace`); otherwise `prefill_chunk`.
    pub prefill_pace: f32,
    /// Jobs that may wait for a slot before new ones get 429.
    pub max_queue: usize,
    /// Server-wide cap on generated tokens per choice (llama-server's `--n-predict`):
    /// a larger `max_tokens` is lowered to it and ends with `finish_reason: "length"`.
    pub n_predict: Option<u32>,
    /// Default and ceiling of `max_tokens`; default the smaller of
    /// [`DEFAULT_MAX_OUTPUT`] and the model's training context.
    pub max_output_tokens: Option<u32>,
    /// A Jinja chat template to use instead of the one in the GGUF.
    pub chat_template: Option<String>,
    pub flash_attention: FlashAttention,
    /// Batch-invariant numerics (`--deterministic`): a seeded request gives the same
    /// text alone or batched with others, at the cost of small micro-batches (slow
    /// long prefills) and a pad token for a lone seeded sequence (see `job::UBATCH`).
    pub deterministic: bool,
    /// Layers offloaded to a GPU (`-ngl`); `None`: llama.cpp's default (all).
    pub n_gpu_layers: Option<u32>,
    /// The vision projector (mmproj GGUF) that lets this model take images.
    pub mmproj: Option<PathBuf>,
    /// Fetches `http(s)` images for it (with the server's SSRF rules); without one,
    /// only data URLs are taken.
    pub image_fetcher: Option<Arc<dyn InlineImages>>,
    /// `--pooling`: how an embedding model pools (mean, cls, last, rank) instead of
    /// what its GGUF says; chat models are left alone.
    pub pooling: Option<String>,
    /// Where copies of F16/BF16 embedding models go (see `upcast`); `None`: such
    /// models load as they are.
    pub copy_cache: Option<PathBuf>,
    /// Which copy runs, with `copy_cache`.
    pub embedding_copy: EmbeddingCopy,
}

/// Which copy of an F16/BF16 embedding model runs on the CPU (see `upcast`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EmbeddingCopy {
    /// The F32 copy where it decodes packs at least 5% faster than the file at load
    /// (see `embed::copy_is_faster`), else the file alone.
    #[default]
    F32WhenFaster,
    /// The F32 copy, beside the file for small decodes.
    F32,
    /// The BF16 copy, alone: it reads no more bytes than the file.
    Bf16,
}

impl EmbeddingCopy {
    fn copy_type(self) -> CopyType {
        match self {
            EmbeddingCopy::F32WhenFaster | EmbeddingCopy::F32 => CopyType::F32,
            EmbeddingCopy::Bf16 => CopyType::Bf16,
        }
    }
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
            prefill_pace: 0.0,
            max_queue: 64,
            n_predict: None,
            max_output_tokens: None,
            chat_template: None,
            flash_attention: FlashAttention::On,
            deterministic: false,
            n_gpu_layers: None,
            mmproj: None,
            image_fetcher: None,
            pooling: None,
            copy_cache: None,
            embedding_copy: EmbeddingCopy::default(),
        }
    }
}

/// A loaded GGUF: a chat model, or an embedding model when its metadata says it pools.
pub enum Loaded {
    Chat(LocalModel),
    Embedding(EmbeddingModel),
}

/// Loads the GGUF and starts the engine thread its kind needs.
pub fn load(cfg: LocalModelConfig) -> Result<Loaded, String> {
    let (model, upcast) = match upcast_path(&cfg) {
        Some(copy) => (open_file(&copy, cfg.n_gpu_layers)?, true),
        None => (open(&cfg)?, false),
    };
    // `--pooling` changes how an embedding model pools, never what a chat model is
    // (several models may be served beside each other).
    let Some(declared) = embed::Pooling::of(&model) else {
        return LocalModel::with_model(cfg, model).map(Loaded::Chat);
    };
    let pooling = match cfg.pooling.as_deref() {
        Some(name) => {
            embed::Pooling::named(name).ok_or_else(|| format!("unknown pooling `{name}`"))?
        }
        None => declared,
    };
    let ctx = embed_ctx(&cfg, &model);
    let info = embed::info(
        &model,
        pooling,
        model_id(&cfg),
        modified_secs(&cfg.path),
        ctx,
    );
    let placement = embed::placement(cfg.n_gpu_layers, &model);
    // Beside its F32 copy, the file itself serves small decodes (see `embed`).
    let weights = match (upcast, cfg.embedding_copy) {
        (false, _) => embed::Weights {
            main: model,
            small: None,
        },
        (true, EmbeddingCopy::F32WhenFaster) => faster_weights(&cfg, model, open(&cfg)?, pooling)?,
        (true, EmbeddingCopy::F32) => embed::Weights {
            main: model,
            small: Some(open(&cfg)?),
        },
        (true, EmbeddingCopy::Bf16) => {
            tracing::info!("{} runs from its BF16 copy", cfg.path.display());
            embed::Weights {
                main: model,
                small: None,
            }
        }
    };
    let m = EmbeddingModel::start(
        weights,
        pooling,
        info,
        placement,
        embed::Sizing {
            threads: cfg.threads,
            n_batch: cfg.n_batch,
            max_queue: cfg.max_queue,
            on_cpu: on_cpu(&cfg),
        },
    )?;
    Ok(Loaded::Embedding(m))
}

/// The F32 copy beside the file, or the file alone where the copy does not decode
/// packs at least 5% faster here (see `embed::copy_is_faster`).
fn faster_weights(
    cfg: &LocalModelConfig,
    copy: Arc<LlamaModel>,
    file: Arc<LlamaModel>,
    pooling: embed::Pooling,
) -> Result<embed::Weights, String> {
    let measured = embed::copy_is_faster(&copy, &file, pooling)?;
    if let Some(m) = measured {
        let verdict = match m.copy_wins() {
            true => "runs from its F32 copy, faster on this CPU",
            false => "runs as it is: its F32 copy is not faster on this CPU",
        };
        tracing::info!(
            copy_ms = m.copy.as_secs_f64() * 1e3,
            file_ms = m.file.as_secs_f64() * 1e3,
            "{} {verdict}",
            cfg.path.display()
        );
    }
    // Unmeasured (too slow to time at load), the copy stays.
    if measured.is_some_and(|m| !m.copy_wins()) {
        free_model(copy);
        return Ok(embed::Weights {
            main: file,
            small: None,
        });
    }
    Ok(embed::Weights {
        main: copy,
        small: Some(file),
    })
}

/// A hyperparameter from the GGUF's metadata (`{arch}.{key}`). A model read without
/// its weights (vocab only) has its metadata but not its parsed hyperparameters.
pub(crate) fn hparam(model: &LlamaModel, key: &str) -> Option<u32> {
    let arch = model.meta_val_str("general.architecture").ok()?;
    model
        .meta_val_str(&format!("{arch}.{key}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The context the model was trained on.
fn train_ctx(model: &LlamaModel) -> u32 {
    match model.n_ctx_train() {
        0 => hparam(model, "context_length").unwrap_or(0),
        n => n,
    }
}

/// An embedding model's context: its training context unless `-c` says, within what
/// one batch of its encoder takes.
fn embed_ctx(cfg: &LocalModelConfig, model: &LlamaModel) -> u32 {
    cfg.ctx.unwrap_or_else(|| train_ctx(model)).clamp(8, 8192)
}

/// What a chat model's `/v1/models` entry says, from its settings and hyperparameters.
pub(crate) fn chat_info(cfg: &LocalModelConfig, model: &LlamaModel, vision: bool) -> ModelInfo {
    let train_ctx = train_ctx(model);
    let ctx_per_seq = cfg
        .ctx
        .unwrap_or_else(|| default_ctx(train_ctx, cfg.max_output_tokens))
        .max(64);
    let max_output = cfg
        .max_output_tokens
        .unwrap_or_else(|| DEFAULT_MAX_OUTPUT.min(train_ctx))
        .clamp(1, ctx_per_seq);
    ModelInfo {
        id: model_id(cfg),
        owned_by: "parlance".to_string(),
        created: modified_secs(&cfg.path),
        kind: "chat".to_string(),
        context_length: ctx_per_seq,
        max_output_tokens: Some(max_output),
        price: None,
        capabilities: Capabilities {
            chat: true,
            vision,
            tools: true,
            json_schema: true,
            logprobs: true,
            embeddings: false,
            rerank: false,
        },
        dimensions: None,
        matryoshka: false,
        file_metadata: file_metadata(model),
    }
}

/// The GGUF's key-value metadata as text, but for values over 4 KiB (the vocabulary,
/// merges, scores) other than the chat template.
pub(crate) fn file_metadata(model: &LlamaModel) -> Option<std::sync::Arc<Vec<(String, String)>>> {
    const LONGEST: usize = 4096;
    let pairs: Vec<(String, String)> = (0..model.meta_count())
        .filter_map(|i| {
            Some((
                model.meta_key_by_index(i).ok()?,
                model.meta_val_str_by_index(i).ok()?,
            ))
        })
        .filter(|(k, v)| v.len() <= LONGEST || k == "tokenizer.chat_template")
        .collect();
    (!pairs.is_empty()).then(|| std::sync::Arc::new(pairs))
}

/// What loading a model would serve and take, known before it loads.
#[derive(Debug, Clone)]
pub struct Peeked {
    pub info: ModelInfo,
    /// Its weights (and projector) plus its KV cache at the configured context (f16).
    pub memory_bytes: u64,
}

/// A chat model's KV cache: keys and values of every layer for every cell, in f16.
fn kv_bytes(model: &LlamaModel, cells: u32) -> u64 {
    let h = |k: &str| hparam(model, k).map(u64::from);
    let (Some(layers), Some(embd)) = (h("block_count"), h("embedding_length")) else {
        return 0;
    };
    let heads = h("attention.head_count").unwrap_or(1).max(1);
    let kv_heads = h("attention.head_count_kv").unwrap_or(heads);
    let k = h("attention.key_length").unwrap_or(embd / heads);
    let v = h("attention.value_length").unwrap_or(embd / heads);
    layers * u64::from(cells) * kv_heads * (k + v) * 2
}

/// What loading `cfg` would serve, from the GGUF's metadata and vocabulary alone (no
/// weights, no context: milliseconds): models loaded on demand are listed with it.
pub fn peek(cfg: &LocalModelConfig) -> Result<Peeked, String> {
    check_gguf(&cfg.path)?;
    let backend = llama_backend()?;
    let params = LlamaModelParams::default().with_vocab_only(true);
    let model = LlamaModel::load_from_file(backend, &cfg.path, &params)
        .map_err(|e| format!("cannot read {}: {e}", cfg.path.display()))?;
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let files = size(&cfg.path) + cfg.mmproj.as_deref().map_or(0, size);
    let Some(declared) = embed::Pooling::of(&model) else {
        let info = chat_info(cfg, &model, cfg.mmproj.is_some());
        let memory_bytes = files + kv_bytes(&model, info.context_length);
        return Ok(Peeked { info, memory_bytes });
    };
    let pooling = cfg
        .pooling
        .as_deref()
        .and_then(embed::Pooling::named)
        .unwrap_or(declared);
    let info = embed::info(
        &model,
        pooling,
        model_id(cfg),
        modified_secs(&cfg.path),
        embed_ctx(cfg, &model),
    );
    let copy = || crate::upcast::copy_size(&cfg.path, cfg.embedding_copy.copy_type());
    let memory_bytes = match cfg.copy_cache {
        // The BF16 copy instead of the file.
        Some(_) if on_cpu(cfg) && cfg.embedding_copy == EmbeddingCopy::Bf16 => {
            copy().map_or(files, |n| n + files - size(&cfg.path))
        }
        // The F32 copy and, for small decodes, the file itself.
        Some(_) if on_cpu(cfg) => copy().map_or(files, |n| n + files),
        _ => files,
    };
    Ok(Peeked { info, memory_bytes })
}

/// The copy an F16/BF16 embedding model runs from on the CPU (see `upcast`).
fn upcast_path(cfg: &LocalModelConfig) -> Option<std::path::PathBuf> {
    let cache = cfg.copy_cache.as_deref()?;
    if !on_cpu(cfg) {
        return None;
    }
    check_gguf(&cfg.path).ok()?;
    crate::upcast::copy(&cfg.path, cache, cfg.embedding_copy.copy_type())
}

fn on_cpu(cfg: &LocalModelConfig) -> bool {
    cfg.n_gpu_layers == Some(0) || device::gpu_devices().is_empty()
}

/// The model's weights, after checking the file is a GGUF.
pub(crate) fn open(cfg: &LocalModelConfig) -> Result<Arc<LlamaModel>, String> {
    open_file(&cfg.path, cfg.n_gpu_layers)
}

fn open_file(path: &std::path::Path, n_gpu_layers: Option<u32>) -> Result<Arc<LlamaModel>, String> {
    check_gguf(path)?;
    let backend = llama_backend()?;
    let params = device::model_params(n_gpu_layers);
    let model = LlamaModel::load_from_file(backend, path, &params)
        .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
    Ok(Arc::new(model))
}

/// The model's name: its alias, else the file's name without `.gguf`.
pub(crate) fn model_id(cfg: &LocalModelConfig) -> String {
    cfg.alias.clone().unwrap_or_else(|| {
        cfg.path
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_string())
            .unwrap_or_else(|| "local".to_string())
    })
}

/// When the file was last written, in Unix seconds (a model's `created`).
pub(crate) fn modified_secs(path: &std::path::Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Frees a model once this thread holds its last reference (the handle that owned the
/// engine is being dropped beside it), then hands the freed heap back to the OS: glibc
/// keeps large freed blocks otherwise, so a model loaded and unloaded on demand would
/// leave its repacked weights' size behind in the process.
pub(crate) fn free_model(model: Arc<LlamaModel>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while Arc::strong_count(&model) > 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(model);
    trim_heap();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory of glibc's own arenas; it takes no
    // pointers and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

/// llama.cpp's global state: initialised once per process.
pub(crate) fn llama_backend() -> Result<&'static LlamaBackend, String> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| format!("cannot initialise llama.cpp: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}
