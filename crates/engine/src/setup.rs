//! What a chat model's engine needs before its first request: its template, its
//! llama.cpp context settings, and the thread that owns the context.

use crate::config::{self, llama_backend};
use crate::job::{self, Job, WorkerConfig};
use crate::vision::Vision;
use crate::worker::{Llama, Worker};
use crate::{AliveGuard, FlashAttention, LocalModelConfig};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use parlance_core::template::fallback_template;
use std::num::NonZeroU32;
use std::sync::mpsc;
use std::sync::Arc;

/// The chat template: the one given, else the GGUF's, else one for its architecture.
pub(crate) fn template_source(cfg: &LocalModelConfig, model: &LlamaModel) -> String {
    match &cfg.chat_template {
        Some(t) => t.clone(),
        None => model
            .chat_template(None)
            .ok()
            .and_then(|t| t.to_string().ok())
            .unwrap_or_else(|| {
                let arch = model
                    .meta_val_str("general.architecture")
                    .unwrap_or_default();
                fallback_template(&arch).to_string()
            }),
    }
}

pub(crate) fn context_params(
    cfg: &LocalModelConfig,
    slots: usize,
    ctx_per_seq: u32,
    n_ubatch: usize,
) -> LlamaContextParams {
    LlamaContextParams::default()
        // One pool for all slots (unified KV): a single request may use all of it,
        // n choices share their prompt's cells, and a full pool is handled by the worker.
        .with_n_ctx(NonZeroU32::new(ctx_per_seq))
        .with_n_batch(cfg.n_batch as u32)
        .with_n_ubatch(n_ubatch as u32)
        // One extra sequence for the worker's pad token.
        .with_n_seq_max(slots as u32 + 1)
        .with_kv_unified(true)
        .with_n_threads(cfg.threads)
        .with_n_threads_batch(cfg.threads)
        .with_flash_attention_policy(match cfg.flash_attention {
            FlashAttention::Auto => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
            FlashAttention::On => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            FlashAttention::Off => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        })
}

/// Control tokens whose text the tool-call parsers need.
pub(crate) fn preserved_tokens(vocab: &llama_cpp_2::vocab::LlamaVocab<'_>) -> Vec<LlamaToken> {
    [
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
    .collect()
}

/// Starts the engine thread, which owns the context; returns once the context exists.
pub(crate) fn spawn_engine(
    model: Arc<LlamaModel>,
    vision: Option<Arc<Vision>>,
    params: LlamaContextParams,
    worker_cfg: WorkerConfig,
    counters: job::Counters,
    guard: AliveGuard,
) -> Result<mpsc::Sender<Job>, String> {
    let (jobs, rx) = mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), String>>(1);
    let id = guard.1.clone();
    let thread_model = model;
    let thread_vision = vision;
    let thread_counters = counters;
    std::thread::Builder::new()
        .name(format!("engine-{id}"))
        .spawn(move || {
            let alive_guard = guard;
            // The context borrows the model: both end in here, then the model goes.
            {
                let model: &LlamaModel = &thread_model;
                let context = llama_backend().and_then(|b| {
                    model
                        .new_context(b, params)
                        .map_err(|e| format!("cannot create a llama.cpp context: {e}"))
                });
                match context {
                    // The starter waits on `ready_rx` until one of these arrives.
                    Ok(ctx) => {
                        ready_tx.send(Ok(())).ok();
                        let slots = worker_cfg.slots as i32 + 1;
                        let decoder = Llama::new(model, ctx, worker_cfg.n_batch + 1, slots);
                        Worker::new(decoder, worker_cfg, rx, thread_counters, thread_vision).run();
                    }
                    Err(e) => {
                        ready_tx.send(Err(e)).ok();
                    }
                }
            }
            drop(alive_guard);
            config::free_model(thread_model);
        })
        .map_err(|e| format!("cannot start the engine thread: {e}"))?;
    ready_rx
        .recv()
        .map_err(|_| "the engine thread died while starting".to_string())??;
    Ok(jobs)
}
