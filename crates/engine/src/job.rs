//! What request handlers and the engine thread exchange: jobs going in, events and
//! stats coming out, the counters admission reads, and the thread's configuration.

use crate::vision::Media;
use llama_cpp_2::token::LlamaToken;
use llguidance::Matcher;
use parlance_core::ir::{Progress, SamplingParams, StreamEvent};
use parlance_core::Error;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// One unit of work: a prompt and the choices that share its prefill.
pub(crate) struct Job {
    /// Text tokens, with placeholders at the images' positions.
    pub prompt: Vec<LlamaToken>,
    /// The prompt's images, in order (see `vision`).
    pub media: Arc<Vec<Media>>,
    /// Choice indices this job produces (a request with `n` > slots is split).
    pub choices: Vec<u32>,
    pub sampling: SamplingParams,
    pub seed: u64,
    pub max_tokens: u32,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// Grammar every choice must follow (each choice gets its own copy).
    pub constraint: Option<Matcher>,
    /// Top alternatives to report per token, when logprobs were asked for.
    pub logprobs: Option<u32>,
    pub tx: UnboundedSender<JobEvent>,
    pub enqueued: Instant,
    /// Test hook: where this job makes the engine panic (see `Prep::crash_markers`).
    pub crash: Option<Crash>,
    /// The request's live token counts (exact metering of cancelled requests).
    pub progress: Progress,
}

impl Job {
    /// Sends the caller an event. A closed channel means the caller hung up; the worker
    /// sees that at its next step (`tx.is_closed`) and frees the job's slots, so the
    /// event has no one to go to and is dropped.
    pub(crate) fn tell(&self, event: JobEvent) {
        self.tx.send(event).ok();
    }
}

/// Test hooks (cargo feature `test-hooks`): how a job makes the engine thread panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Crash {
    /// Outside any one request's work: the engine thread goes down.
    Engine,
    /// While sampling the job's sequence: only this request fails.
    Sequence,
}

/// What the engine thread shares with request handlers for admission decisions.
#[derive(Clone)]
pub(crate) struct Counters {
    /// Jobs sent and not yet given slots (waiting, in the channel or the queue).
    pub queued: Arc<AtomicUsize>,
    /// Slots with no running sequence.
    pub free: Arc<AtomicUsize>,
    /// False once the engine thread has stopped.
    pub alive: Arc<AtomicBool>,
    /// Tokens sampled since load, for the console's tokens/s.
    pub generated: Arc<AtomicU64>,
}

impl Counters {
    pub(crate) fn new(slots: usize) -> Self {
        Counters {
            queued: Arc::new(AtomicUsize::new(0)),
            free: Arc::new(AtomicUsize::new(slots)),
            alive: Arc::new(AtomicBool::new(true)),
            generated: Arc::default(),
        }
    }
}

pub(crate) enum JobEvent {
    Event(StreamEvent),
    /// All of the job's choices have finished.
    Done(JobStats),
    Failed(Error),
}

#[derive(Debug, Clone, Default)]
pub(crate) struct JobStats {
    pub prompt_tokens: u32,
    pub cached_tokens: u32,
    pub completion_tokens: u32,
    pub queue: Duration,
    pub prefill: Duration,
    pub decode: Duration,
    pub slots: Vec<i32>,
}

pub(crate) struct WorkerConfig {
    pub slots: usize,
    pub ctx_per_seq: usize,
    pub n_batch: usize,
    /// Prompt tokens per step while other sequences are generating, so a long
    /// prompt cannot freeze their streams.
    pub prefill_chunk: usize,
    pub prefill_pace: f32,
    /// Micro-batches of 2..=UBATCH tokens (see `UBATCH`); otherwise llama.cpp's own.
    pub deterministic: bool,
    pub eog_tokens: Vec<LlamaToken>,
    /// Control tokens whose text parsers need (`<tool_call>` and kin); every other
    /// control token renders as nothing.
    pub preserved: Vec<LlamaToken>,
}

/// Most tokens llama.cpp computes at once (its n_ubatch) in `--deterministic` mode;
/// otherwise n_ubatch is n_batch. Together with the pad token
/// below, every micro-batch holds 2..=63 tokens, which keeps ggml's CPU flash attention
/// on its one per-query path: 64+ queries switch it to a tiled kernel and a single query
/// over 512+ cells to a split-KV kernel, and each rounds differently. A sequence's
/// numbers then do not depend on what shares its batch, so a seeded request gives the
/// same text alone or under load.
pub(crate) const UBATCH: usize = 63;

pub(crate) fn debug_info(prompt: &str, stats: &[JobStats]) -> serde_json::Value {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let none = JobStats::default();
    let s = stats.first().unwrap_or(&none);
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

/// The test hooks' markers, from the environment; none unless built with `test-hooks`.
pub(crate) fn crash_markers() -> Vec<(String, Crash)> {
    if !cfg!(feature = "test-hooks") {
        return Vec::new();
    }
    [
        ("PARLANCE_TEST_ENGINE_PANIC", Crash::Engine),
        ("PARLANCE_TEST_SEQUENCE_PANIC", Crash::Sequence),
    ]
    .into_iter()
    .filter_map(|(var, crash)| {
        let marker = std::env::var(var).ok().filter(|m| !m.is_empty())?;
        Some((marker, crash))
    })
    .collect()
}
