//! `parlance serve`'s flags: each with its environment variable and default.

use clap::{Args, ValueEnum};
use parlance_server::DEFAULT_BODY_LIMIT;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum FlashAttn {
    On,
    Off,
    Auto,
}

/// `--f32-embeddings`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum F32Embeddings {
    Auto,
    #[value(name = "true")]
    Always,
    #[value(name = "false")]
    Never,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct ServeArgs {
    /// TOML file with providers, the model catalog and routing (see
    /// parlance.example.toml). Flags still apply: -m adds local models beside it.
    #[arg(long = "config", env = "PARLANCE_CONFIG")]
    pub config: Option<PathBuf>,

    /// GGUF model file to serve; repeat to serve several, each chosen by `model`.
    /// Without it, the default model (SmolLM2-135M-Instruct) is served from ./models/.
    #[arg(
        short = 'm',
        long = "model",
        env = "PARLANCE_MODEL",
        value_delimiter = ','
    )]
    pub model: Vec<PathBuf>,

    /// Public name of the model at the same position in the -m list
    /// (default: the file name without .gguf).
    #[arg(
        short = 'a',
        long = "alias",
        env = "PARLANCE_ALIAS",
        value_delimiter = ','
    )]
    pub alias: Vec<String>,

    /// Context window in tokens (default: the model's training context, capped at 32768;
    /// at least --max-output-tokens + 1024): the KV cache that all slots of a model
    /// share, as llama-server's unified cache, so one request may use all of it.
    /// Prompt + max_tokens beyond it is a 400 `context_length_exceeded`.
    #[arg(short = 'c', long = "ctx-size", env = "PARLANCE_CTX")]
    pub ctx: Option<u32>,

    /// Sequences decoded together per model (continuous batching slots); `-np` works too.
    #[arg(long = "parallel", env = "PARLANCE_PARALLEL", default_value_t = 4)]
    pub parallel: usize,

    /// CPU threads for llama.cpp (default: all cores).
    #[arg(short = 't', long = "threads", env = "PARLANCE_THREADS")]
    pub threads: Option<i32>,

    /// Requests that may wait for a free slot per model; beyond that, 429 with Retry-After.
    #[arg(long = "queue", env = "PARLANCE_QUEUE", default_value_t = 64)]
    pub queue: usize,

    /// Cap on generated tokens per request (llama-server's --n-predict); a larger
    /// max_tokens is lowered to it and the answer ends with finish_reason "length".
    #[arg(short = 'n', long = "n-predict", env = "PARLANCE_N_PREDICT")]
    pub n_predict: Option<u32>,

    /// Tokens per decode step (llama.cpp's n_batch).
    #[arg(
        short = 'b',
        long = "batch-size",
        env = "PARLANCE_BATCH",
        default_value_t = 512
    )]
    pub batch: usize,

    /// Prompt tokens per step while other requests are streaming: smaller keeps their
    /// tokens flowing during a long prefill, larger gives new requests their first token sooner.
    #[arg(
        long = "prefill-chunk",
        env = "PARLANCE_PREFILL_CHUNK",
        default_value_t = 256
    )]
    pub prefill_chunk: usize,

    /// Pace prompt chunks while others stream: each step with prompt tokens takes at
    /// most this many times a step without (measured as it runs), so their tokens keep
    /// flowing at that rate during a long prefill; 0: fixed --prefill-chunk chunks.
    /// On CPU, pair it with `-fa off`: flash attention makes chunks under 64 tokens
    /// several times dearer per token (see README, Long prompts).
    #[arg(
        long = "prefill-pace",
        env = "PARLANCE_PREFILL_PACE",
        default_value_t = 0.0,
        value_parser = pace_ratio
    )]
    pub prefill_pace: f32,

    /// Batch-invariant sampling: a seeded request gives the same text alone or batched
    /// with others (as vLLM's and SGLang's deterministic modes), at the cost of small
    /// micro-batches: long prompts prefill several times slower. Off: a seed repeats
    /// an answer only under the same batch composition (e.g. alone).
    #[arg(long, env = "PARLANCE_DETERMINISTIC")]
    pub deterministic: bool,

    /// A folder of GGUF models served on demand, as Ollama serves its own: each is
    /// listed at start (`/v1/models`, `/api/tags`) without loading, loaded on its
    /// first request and unloaded after --keep-alive idle. A model in its own
    /// subfolder takes the folder's name and the projector (mmproj*.gguf) beside it.
    #[arg(long = "models-dir", env = "PARLANCE_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,

    /// How long a model from --models-dir stays loaded after its last request
    /// (`5m`, `1h`, `30s`; `-1` keeps it; `0` unloads after each answer); Ollama's
    /// `keep_alive` sets it per request. Default: 5m.
    #[arg(
        long = "keep-alive",
        env = "PARLANCE_KEEP_ALIVE",
        allow_hyphen_values = true
    )]
    pub keep_alive: Option<String>,

    /// Memory --models-dir models may take together (`8GiB`, `512MiB`, `2G`, bytes):
    /// each is estimated from its file and KV cache before it loads (measured after),
    /// and loading one unloads least recently used idle ones to stay within it.
    #[arg(long = "max-memory", env = "PARLANCE_MAX_MEMORY", value_parser = crate::models_dir::byte_size)]
    pub max_memory: Option<u64>,

    /// Where Ollama's `/api/pull` fetches models whose name has no host (a registry
    /// speaking Ollama's API); they land in --models-dir.
    #[arg(
        long = "registry",
        env = "PARLANCE_REGISTRY",
        default_value = "https://registry.ollama.ai"
    )]
    pub registry: String,

    /// At most this many --models-dir models loaded at once: loading another unloads
    /// the least recently used idle one (never one serving requests). Default 0: no
    /// limit.
    #[arg(long = "max-loaded-models", env = "PARLANCE_MAX_LOADED_MODELS")]
    pub max_loaded_models: Option<usize>,

    /// How embedding models pool their vectors (llama-server's flag): mean, cls, last,
    /// or rank (a reranker). Default: what each GGUF says. Chat models are left alone.
    #[arg(long, env = "PARLANCE_POOLING", value_parser = ["mean", "cls", "last", "rank"])]
    pub pooling: Option<String>,

    /// Run F16/BF16 embedding models (up to 2 GiB as F32) on the CPU from an F32 copy
    /// kept in the cache, beside the file itself for decodes of up to 64 tokens: three
    /// times the F16 weights' memory for about 1.2x the throughput on CPUs whose F16
    /// kernel is slow. `auto` measures both at load and keeps the copy only where it is
    /// at least 5% faster; `true` always runs from it; `false` loads the file as it is.
    #[arg(long = "f32-embeddings", env = "PARLANCE_F32_EMBEDDINGS", value_enum, default_value_t = F32Embeddings::Auto)]
    pub f32_embeddings: F32Embeddings,

    /// Run F16 embedding models on the CPU from a BF16 copy kept in the cache instead
    /// (overrides --f32-embeddings): on CPUs with AVX512-BF16 about 1.3x the throughput
    /// of the file, at lower precision (worst cosine ~0.99998 to the F16 run, where the
    /// F32 copy and the file agree to 0.9999999). Elsewhere it may be slower.
    #[arg(long = "bf16-embeddings", env = "PARLANCE_BF16_EMBEDDINGS")]
    pub bf16_embeddings: bool,

    /// Flash attention (`-fa` works too); faster on CPU for batched decoding.
    #[arg(long = "flash-attn", env = "PARLANCE_FLASH_ATTN", value_enum, default_value_t = FlashAttn::On)]
    pub flash_attn: FlashAttn,

    /// Address to listen on.
    #[arg(long, env = "PARLANCE_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on.
    #[arg(long, env = "PARLANCE_PORT", default_value_t = 8080)]
    pub port: u16,

    /// API key clients must send (Authorization: Bearer, x-api-key or x-goog-api-key);
    /// repeat for several. Without any, the API is open. /health is always open.
    #[arg(long = "api-key", env = "PARLANCE_API_KEY", value_delimiter = ',')]
    pub api_key: Vec<String>,

    /// Largest accepted request body, in bytes; larger ones get 413.
    #[arg(long = "body-limit", env = "PARLANCE_BODY_LIMIT", default_value_t = DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,

    /// Most completion tokens one request may ask for, and what a request without
    /// max_tokens gets (default: the smaller of 4096 and the model's training context).
    /// A larger max_tokens is a 400 naming the limit.
    #[arg(long = "max-output-tokens", env = "PARLANCE_MAX_OUTPUT_TOKENS")]
    pub max_output_tokens: Option<u32>,

    /// Seconds a connection has to send a whole request head, counted from when it is
    /// ready for one: bounds slow senders and idle keep-alive connections.
    #[arg(
        long = "header-timeout",
        env = "PARLANCE_HEADER_TIMEOUT",
        default_value_t = 10.0
    )]
    pub header_timeout: f64,

    /// Open connections at most; more wait to be accepted.
    #[arg(
        long = "max-connections",
        env = "PARLANCE_MAX_CONNECTIONS",
        default_value_t = 1024
    )]
    pub max_connections: usize,

    /// Seconds running requests get to finish after Ctrl-C or SIGTERM; then they end
    /// with an error event. A second signal exits at once.
    #[arg(
        long = "shutdown-timeout",
        env = "PARLANCE_SHUTDOWN_TIMEOUT",
        default_value_t = 10.0
    )]
    pub shutdown_timeout: f64,

    /// Browser origin allowed to call the API (CORS), e.g. https://app.example.com;
    /// repeat for several, `*` for any. Without it, no CORS headers are sent.
    #[arg(
        long = "cors-origin",
        env = "PARLANCE_CORS_ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origin: Vec<String>,

    /// Jinja chat template to use instead of the model's own, or `chatml`
    /// (llama-server's --chat-template).
    #[arg(long = "chat-template", env = "PARLANCE_CHAT_TEMPLATE")]
    pub chat_template: Option<String>,

    /// File holding a Jinja chat template (llama-server's --chat-template-file).
    #[arg(long = "chat-template-file", env = "PARLANCE_CHAT_TEMPLATE_FILE")]
    pub chat_template_file: Option<PathBuf>,

    /// Layers to offload to a GPU (llama-server's -ngl; 99 or -1: all). One value for
    /// every model, or one per -m in order. Needs a build with a GPU backend
    /// (`--features vulkan`, `cuda` or `metal`); the CPU build says so and runs on the CPU.
    #[arg(
        long = "n-gpu-layers",
        alias = "gpu-layers",
        env = "PARLANCE_N_GPU_LAYERS",
        value_delimiter = ',',
        allow_negative_numbers = true
    )]
    pub n_gpu_layers: Vec<i32>,

    /// Vision projector (mmproj GGUF) of the model at the same position in the -m
    /// list (llama-server's --mmproj): that model then takes images.
    #[arg(long = "mmproj", env = "PARLANCE_MMPROJ", value_delimiter = ',')]
    pub mmproj: Vec<PathBuf>,

    /// Hugging Face repository to download a GGUF from (llama-server's -hf), as
    /// `owner/repo` or `owner/repo:QUANT` (e.g. `:Q4_K_M`); served like -m.
    #[arg(long = "hf-repo", env = "PARLANCE_HF_REPO")]
    pub hf_repo: Vec<String>,

    /// Chat templates are always rendered with a Jinja engine (llama-server's --jinja).
    #[arg(long = "jinja", hide = true)]
    pub jinja: bool,

    /// Prometheus metrics are always served at /metrics; accepted for llama-server
    /// command lines.
    #[arg(long = "metrics", hide = true)]
    pub metrics: bool,

    /// The store for keys and usage: sqlite://PATH (default: parlance.db in the working
    /// directory) or postgres://...; `none` turns keys of its own and metering off.
    #[arg(long = "db", env = "PARLANCE_DB", default_value = crate::tenancy_cli::DEFAULT_DB)]
    pub db: String,

    /// Redis for rate-limit counters shared by several replicas (redis://HOST:PORT);
    /// without it each replica counts on its own.
    #[arg(long = "redis", env = "PARLANCE_REDIS")]
    pub redis: Option<String>,

    /// Key of the admin API (/admin/..., Bearer); without it the admin API is off.
    /// Setting it also makes every other request need a key.
    #[arg(long = "admin-key", env = "PARLANCE_ADMIN_KEY")]
    pub admin_key: Option<String>,

    /// Who may get an account without an admin making it: `closed` (default),
    /// `approval` (people fill out the access form, an admin approves) or `open`
    /// (an account and a first key at once). Not `closed`: every API call needs a key.
    #[arg(long = "signup", env = "PARLANCE_SIGNUP")]
    pub signup: Option<parlance_tenancy::accounts::SignupMode>,

    /// Prepaid balances: keys of accounts spend their team's (team keys) or their
    /// user's credit, topped up by admins or redemption codes; an empty balance is a
    /// 429 `insufficient_quota`. Operator keys are not affected.
    #[arg(long = "prepaid", env = "PARLANCE_PREPAID")]
    pub prepaid: bool,

    /// How people reach this server (https://llm.example.org), for the set-password
    /// links shown to admins; with https the session cookie is `Secure`.
    #[arg(long = "public-url", env = "PARLANCE_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Server secret that signs access tokens (GigaChat OAuth); every replica needs the
    /// same one. Default: the admin key, else a file beside a SQLite store
    /// (`<db>.secret`). Changing it revokes every token issued (they live 30 minutes).
    #[arg(long = "secret", env = "PARLANCE_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// `text` (default) or `json`: one JSON object a line (the per-request line has
    /// request_id, key_id, model, status, tokens, ttft_ms, duration_ms).
    #[arg(long = "log-format", env = "PARLANCE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log more: every request and llama.cpp's own messages (same as PARLANCE_LOG=debug).
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
}

/// 0 (off) or a finite ratio above 1: a step cannot take less than a step.
fn pace_ratio(v: &str) -> Result<f32, String> {
    match v.trim().parse::<f32>() {
        Ok(r) if r == 0.0 || (r.is_finite() && r > 1.0) => Ok(r),
        _ => Err(format!(
            "`{v}` is not a pace: 0 (off) or a ratio above 1, e.g. 2"
        )),
    }
}

/// `ServeArgs` alone: for `ServeArgs::defaults` and the config file's settings.
#[derive(clap::Parser)]
pub(crate) struct OnlyServe {
    #[command(flatten)]
    pub args: ServeArgs,
}

impl ServeArgs {
    /// Every setting as `parlance serve` with no flags has it: clap's defaults, or the
    /// environment variable where one is set.
    pub(crate) fn defaults() -> anyhow::Result<ServeArgs> {
        use clap::Parser;
        Ok(OnlyServe::try_parse_from(["serve"])?.args)
    }
}
