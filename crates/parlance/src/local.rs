//! Local GGUF models as the serve flags configure them: loaded at start (`-m`, the
//! catalog's `gguf` deployments) or on demand (`--models-dir`).

#[cfg(feature = "local")]
use crate::serve::gpu_layers;
use crate::serve::ServeArgs;
#[cfg(feature = "local")]
use crate::serve_args::{F32Embeddings, FlashAttn};
use parlance_core::{Backend, ModelInfo};
use parlance_gateway::catalog::LocalSpec;
use std::sync::Arc;
#[cfg(feature = "local")]
use std::time::Instant;

/// The engine settings the flags give a local model.
#[cfg(feature = "local")]
fn local_config(
    args: &ServeArgs,
    template: &Option<String>,
    spec: &LocalSpec,
    alias: Option<String>,
    images: &Arc<dyn parlance_core::InlineImages>,
) -> parlance_engine::LocalModelConfig {
    use parlance_engine::{EmbeddingCopy, FlashAttention, LocalModelConfig};
    let mut cfg = LocalModelConfig::new(&spec.path);
    cfg.mmproj = spec.mmproj.clone();
    cfg.image_fetcher = Some(Arc::clone(images));
    cfg.alias = alias;
    cfg.ctx = args.ctx;
    cfg.slots = args.parallel.max(1);
    if let Some(t) = args.threads {
        cfg.threads = t.max(1);
    }
    cfg.n_batch = args.batch.max(32);
    cfg.prefill_chunk = args.prefill_chunk;
    cfg.prefill_pace = args.prefill_pace;
    cfg.max_queue = args.queue;
    cfg.n_predict = args.n_predict.filter(|&n| n > 0);
    cfg.max_output_tokens = args.max_output_tokens.filter(|&n| n > 0);
    cfg.chat_template = template.clone();
    cfg.deterministic = args.deterministic;
    cfg.pooling = args.pooling.clone();
    // `--bf16-embeddings` overrides `--f32-embeddings`.
    let copy = match (args.bf16_embeddings, args.f32_embeddings) {
        (true, _) => Some(EmbeddingCopy::Bf16),
        (false, F32Embeddings::Auto) => Some(EmbeddingCopy::F32WhenFaster),
        (false, F32Embeddings::Always) => Some(EmbeddingCopy::F32),
        (false, F32Embeddings::Never) => None,
    };
    cfg.copy_cache = copy.map(|_| crate::hub::cache_root().join("f32"));
    cfg.embedding_copy = copy.unwrap_or_default();
    cfg.n_gpu_layers = gpu_layers(spec.n_gpu_layers);
    cfg.flash_attention = match args.flash_attn {
        FlashAttn::On => FlashAttention::On,
        FlashAttn::Off => FlashAttention::Off,
        FlashAttn::Auto => FlashAttention::Auto,
    };
    cfg
}

/// What loading `spec` would serve, and the memory it would take (weights and KV
/// cache), read without loading it (models on demand).
#[cfg(feature = "local")]
pub(crate) fn peek_local(
    args: &ServeArgs,
    template: &Option<String>,
    spec: &LocalSpec,
    alias: Option<String>,
    images: &Arc<dyn parlance_core::InlineImages>,
) -> Result<(ModelInfo, u64), String> {
    parlance_engine::peek(&local_config(args, template, spec, alias, images))
        .map(|p| (p.info, p.memory_bytes))
}

#[cfg(not(feature = "local"))]
pub(crate) fn peek_local(
    _: &ServeArgs,
    _: &Option<String>,
    spec: &LocalSpec,
    _: Option<String>,
    _: &Arc<dyn parlance_core::InlineImages>,
) -> Result<(ModelInfo, u64), String> {
    Err(format!(
        "{}: this binary was built without the `local` feature and cannot load GGUF models",
        spec.path.display()
    ))
}

#[cfg(feature = "local")]
pub(crate) fn load_local(
    args: &ServeArgs,
    template: &Option<String>,
    spec: &LocalSpec,
    alias: Option<String>,
    images: &Arc<dyn parlance_core::InlineImages>,
    ctx: Option<u32>,
) -> Result<(ModelInfo, Arc<dyn Backend>), String> {
    let started = Instant::now();
    println!("loading {} ...", spec.path.display());
    let mut cfg = local_config(args, template, spec, alias, images);
    // A request's own context size (Ollama's num_ctx) for a model loaded on demand.
    if ctx.is_some() {
        cfg.ctx = ctx;
    }
    let model = match parlance_engine::load(cfg)? {
        parlance_engine::Loaded::Chat(m) => m,
        parlance_engine::Loaded::Embedding(m) => {
            let info = m.info().clone();
            println!(
                "embedding model `{}` ready in {:.1}s {}: {} dimensions, {} pooling, inputs of up to {} tokens",
                info.id,
                started.elapsed().as_secs_f32(),
                m.placement(),
                info.dimensions.unwrap_or(0),
                m.pooling(),
                info.context_length
            );
            return Ok((info, Arc::new(m)));
        }
    };
    let info = model.info().clone();
    let vision = match &spec.mmproj {
        Some(p) => format!(", images through {}", p.display()),
        None => String::new(),
    };
    println!(
        "model `{}` ready in {:.1}s {}{vision}: context {} tokens shared by {} slots, at most {} output tokens per request",
        info.id,
        started.elapsed().as_secs_f32(),
        model.placement(),
        info.context_length,
        args.parallel.max(1),
        info.max_output_tokens.unwrap_or(info.context_length)
    );
    Ok((info, Arc::new(model)))
}

#[cfg(not(feature = "local"))]
pub(crate) fn load_local(
    _: &ServeArgs,
    _: &Option<String>,
    spec: &LocalSpec,
    _: Option<String>,
    _: &Arc<dyn parlance_core::InlineImages>,
    _: Option<u32>,
) -> Result<(ModelInfo, Arc<dyn Backend>), String> {
    Err(format!(
        "{}: this binary was built without the `local` feature and cannot load GGUF models",
        spec.path.display()
    ))
}
