//! `parlance serve`: load the models, build the router, serve HTTP until a signal.

use anyhow::{bail, Context};
use axum::serve::ListenerExt;
use clap::{Args, ValueEnum};
use parlance_core::{Backend, ModelInfo, Router};
use parlance_server::config::Config;
use parlance_server::{build_router, catalog, AppState, DEFAULT_BODY_LIMIT};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Where the README's first command puts the default model.
pub const DEFAULT_MODEL_FILE: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_MODEL_NAME: &str = "smollm2-135m-instruct";

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FlashAttn {
    On,
    Off,
    Auto,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
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

    /// Context window in tokens (default 32768): the KV cache that all slots of a model
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
}

/// The default model, looked up in ./models and next to the binary's checkout.
fn default_model() -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from(DEFAULT_MODEL_FILE)];
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/parlance -> the checkout's models/
        if let Some(root) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            candidates.push(root.join(DEFAULT_MODEL_FILE));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PARLANCE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,llama-cpp-2=error,parlance=info,parlance_server=info,parlance_engine=info",
        )
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    let config = match &args.config {
        Some(path) => Some(Config::load(path).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let mut models: Vec<(PathBuf, Option<String>)> = Vec::new();
    if args.model.is_empty() && config.is_none() {
        let Some(path) = default_model() else {
            bail!(
                "no model given (-m) and the default model is not at {DEFAULT_MODEL_FILE}; \
                 fetch it with `scripts/fetch-models.sh` or pass -m PATH.gguf"
            );
        };
        let alias = args
            .alias
            .first()
            .cloned()
            .unwrap_or_else(|| DEFAULT_MODEL_NAME.to_string());
        models.push((path, Some(alias)));
    } else {
        if args.alias.len() > args.model.len() {
            bail!(
                "{} --alias given for {} -m: each alias names the model at its position",
                args.alias.len(),
                args.model.len()
            );
        }
        for (i, path) in args.model.iter().enumerate() {
            models.push((path.clone(), args.alias.get(i).cloned()));
        }
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // reqwest clients are built inside the runtime they will run on.
    let _entered = runtime.enter();
    let mut router = Router::new();
    let mut keys = args.api_key.clone();
    if let Some(cfg) = &config {
        let env = |name: &str| std::env::var(name).ok();
        let mut loader = |path: &Path| load_local(&args, path, None);
        catalog::build(cfg, &env, &mut loader, &mut router).map_err(anyhow::Error::msg)?;
        keys.extend(cfg.server.api_keys.iter().cloned());
        if let Some(var) = &cfg.server.api_keys_env {
            let v = std::env::var(var)
                .with_context(|| format!("[server] api_keys_env: {var} is not set"))?;
            keys.extend(v.split(',').map(str::to_string));
        }
    }
    for (path, alias) in models {
        let (info, backend) = load_local(&args, &path, alias).map_err(anyhow::Error::msg)?;
        router.add(info, backend).map_err(anyhow::Error::msg)?;
    }
    if router.models().next().is_none() {
        bail!("nothing to serve: the config file names no models and no -m was given");
    }
    let names: Vec<&str> = router.models().map(|m| m.id.as_str()).collect();
    println!("serving {} model names: {}", names.len(), names.join(", "));

    let mut state = AppState::new(router);
    state.api_keys = keys
        .iter()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    state.body_limit = args.body_limit;
    let app = build_router(Arc::new(state));

    runtime.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        println!("listening on http://{}", listener.local_addr()?);
        // Streams are many small writes: without NODELAY, Nagle holds each one until the
        // client's delayed ACK (~40 ms per stream, measured).
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("TCP_NODELAY: {e}");
            }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("server error")
    })
}

#[cfg(feature = "local")]
fn load_local(
    args: &ServeArgs,
    path: &Path,
    alias: Option<String>,
) -> Result<(ModelInfo, Arc<dyn Backend>), String> {
    use parlance_engine::{FlashAttention, LocalModel, LocalModelConfig};
    let started = Instant::now();
    println!("loading {} ...", path.display());
    let mut cfg = LocalModelConfig::new(path);
    cfg.alias = alias;
    cfg.ctx = args.ctx;
    cfg.slots = args.parallel.max(1);
    if let Some(t) = args.threads {
        cfg.threads = t.max(1);
    }
    cfg.n_batch = args.batch.max(32);
    cfg.prefill_chunk = args.prefill_chunk;
    cfg.max_queue = args.queue;
    cfg.n_predict = args.n_predict.filter(|&n| n > 0);
    cfg.flash_attention = match args.flash_attn {
        FlashAttn::On => FlashAttention::On,
        FlashAttn::Off => FlashAttention::Off,
        FlashAttn::Auto => FlashAttention::Auto,
    };
    let model = LocalModel::load(cfg)?;
    let info = model.info().clone();
    println!(
        "model `{}` ready in {:.1}s: context {} tokens shared by {} slots",
        info.id,
        started.elapsed().as_secs_f32(),
        info.context_length,
        args.parallel.max(1)
    );
    Ok((info, Arc::new(model)))
}

#[cfg(not(feature = "local"))]
fn load_local(
    _: &ServeArgs,
    path: &Path,
    _: Option<String>,
) -> Result<(ModelInfo, Arc<dyn Backend>), String> {
    let _ = Instant::now();
    Err(format!(
        "{}: this binary was built without the `local` feature and cannot load GGUF models",
        path.display()
    ))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
