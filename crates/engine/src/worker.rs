//! The engine thread: owns one `LlamaContext` and runs continuous batching over its
//! slots. Every step decodes one token for each generating sequence plus prompt
//! chunks of newly admitted ones, in a single `decode`. Nothing here does HTTP, JSON
//! or templating, and nothing here waits on a client: output goes into unbounded
//! per-job channels, and a closed channel frees the job's slots at the next step.

mod admit;
mod decoder;
mod kv;
mod output;
mod pace;
mod slots;
#[cfg(test)]
mod tests;

pub(crate) use decoder::{Decoder, Llama};

use crate::job::{Counters, Job, JobStats, WorkerConfig, UBATCH};
use crate::sampler::{Logits, Sampler};
use crate::text::TextAssembler;
use crate::vision::Vision;
use decoder::{DecodeFailure, Staged};
use kv::active_prompt;
use llama_cpp_2::token::LlamaToken;
use llguidance::Matcher;
use parlance_core::ir::{Delta, FinishReason};
use parlance_core::Error;
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

enum Entry {
    /// The last sampled token of a generating sequence.
    Token { slot: usize, tok: LlamaToken },
    /// Prompt tokens `from..to` of a job, on its primary slot.
    Prompt {
        slot: usize,
        job: u64,
        from: usize,
        to: usize,
    },
    /// The job's image `index`, evaluated by the projector in a decode of its own
    /// (a batch holds tokens or embeddings, not both).
    Image { slot: usize, job: u64, index: usize },
}

enum Phase {
    /// Feeding the prompt; `next` is the first prompt token not yet in the batch.
    Prefill {
        next: usize,
    },
    /// A sibling choice waiting for the primary's prefill, then copying its KV.
    Follow,
    Generate,
}

struct Run {
    job: u64,
    choice: u32,
    phase: Phase,
    sampler: Sampler,
    /// The grammar matcher's shadow (see `sampler::build`).
    shadow: Option<Matcher>,
    text: TextAssembler,
    /// Sampled but not yet decoded.
    pending: Option<LlamaToken>,
    generated: u32,
    /// The logits this run samples next: a row of the current decode, or a prompt's
    /// saved ones.
    logits_at: Option<Logits>,
}

struct Slot<P> {
    seq: i32,
    /// Tokens whose KV is in this sequence: kept after a job ends for prefix reuse.
    cached: Vec<LlamaToken>,
    /// The logits after the first `n` cached tokens, kept when a prefill ended there
    /// (see [`Logits::Saved`]); dropped when the cache is cut below `n`.
    tail: Option<(usize, Arc<[f32]>)>,
    /// Set while an idle slot's KV is parked in host memory instead of the KV cache
    /// (`cached` still says what it holds); restored when the slot is used again.
    parked: Option<P>,
    run: Option<Run>,
    /// The id of the last job this slot served: an idle slot used long ago is the one
    /// a new conversation takes, so recent conversations keep their prefix.
    last_used: u64,
}

struct ActiveJob {
    job: Job,
    live: usize,
    admitted: Instant,
    first_token: Option<Instant>,
    stats: JobStats,
}

pub(crate) struct Worker<D: Decoder> {
    decoder: D,
    cfg: WorkerConfig,
    slots: slots::Slots<D::Parked>,
    waiting: VecDeque<Job>,
    jobs: HashMap<u64, ActiveJob>,
    next_job: u64,
    rx: Receiver<Job>,
    counters: Counters,
    vision: Option<Arc<Vision>>,
    pace: pace::Pacer,
    /// Counted while this engine has jobs: embedding engines step aside meanwhile.
    interactive: parlance_core::priority::Interactive,
}

impl<D: Decoder> Drop for Worker<D> {
    /// Runs before the fields (and so the jobs' senders) are dropped: a caller that
    /// sees its stream cut by a panic finds the model already marked dead.
    fn drop(&mut self) {
        self.counters.alive.store(false, Ordering::SeqCst);
    }
}

impl<D: Decoder> Worker<D> {
    /// `decoder` takes up to `cfg.n_batch + 1` tokens in `cfg.slots + 1` sequences per
    /// decode (the batch, and the pad of `keep_batch_invariant`).
    pub(crate) fn new(
        decoder: D,
        cfg: WorkerConfig,
        rx: Receiver<Job>,
        counters: Counters,
        vision: Option<Arc<Vision>>,
    ) -> Self {
        let slots: Vec<_> = (0..cfg.slots)
            .map(|i| Slot {
                seq: i as i32,
                cached: Vec::new(),
                tail: None,
                parked: None,
                run: None,
                last_used: 0,
            })
            .collect();
        let slots = slots::Slots::new(slots);
        let pace = pace::Pacer::new(cfg.prefill_pace);
        Worker {
            decoder,
            cfg,
            slots,
            waiting: VecDeque::new(),
            jobs: HashMap::new(),
            next_job: 0,
            rx,
            counters,
            vision,
            pace,
            interactive: parlance_core::priority::Interactive::default(),
        }
    }

    /// Runs until every sender is gone and no work is left.
    pub(crate) fn run(mut self) {
        while self.intake() {
            self.tick();
        }
    }

    /// One round: forget callers that hung up, admit waiting jobs, decode a step.
    fn tick(&mut self) {
        self.drop_cancelled();
        self.admit();
        self.interactive.set(!self.jobs.is_empty());
        self.step();
        self.interactive.set(!self.jobs.is_empty());
        self.publish_free();
    }

    fn publish_free(&self) {
        let free = self.slots.iter().filter(|s| s.run.is_none()).count();
        self.counters.free.store(free, Ordering::SeqCst);
    }

    fn intake(&mut self) -> bool {
        if self.jobs.is_empty() && self.waiting.is_empty() {
            match crate::omp::next_or_rest(&self.rx) {
                Some(job) => self.waiting.push_back(job),
                None => return false,
            }
        }
        while let Ok(job) = self.rx.try_recv() {
            self.waiting.push_back(job);
        }
        true
    }

    fn drop_cancelled(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|j| !j.tx.is_closed());
        self.counters
            .queued
            .fetch_sub(before - self.waiting.len(), Ordering::SeqCst);

        let gone: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, a)| a.job.tx.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            for slot in self.slots.iter_mut() {
                if slot.run.as_ref().is_some_and(|r| r.job == id) {
                    slot.run = None;
                }
            }
            self.jobs.remove(&id);
        }
    }

    /// What goes into the next decode: one token per generating sequence, then prompt
    /// chunks, oldest job first so new arrivals cannot starve a long prompt.
    fn plan(&self) -> Vec<Entry> {
        let mut plan = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(Run {
                phase: Phase::Generate,
                pending: Some(tok),
                ..
            }) = &slot.run
            {
                plan.push(Entry::Token { slot: i, tok: *tok });
            }
        }
        let budget = self.cfg.n_batch.saturating_sub(plan.len());
        let mut prefill_budget = if plan.is_empty() {
            budget
        } else {
            budget.min(self.pace.chunk(self.cfg.prefill_chunk))
        };
        let mut order: Vec<(u64, usize, usize)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &s.run {
                // A prompt repeated whole has nothing to decode: it samples its saved
                // logits.
                Some(Run {
                    phase: Phase::Prefill { next },
                    job,
                    logits_at: None,
                    ..
                }) => Some((*job, i, *next)),
                _ => None,
            })
            .collect();
        order.sort_unstable();
        let mut image_planned = false;
        for (job, slot, next) in order {
            let Some(active) = self.jobs.get(&job).map(|a| &a.job) else {
                continue;
            };
            let image = active.media.iter().position(|m| m.start >= next);
            let image_start = image.and_then(|k| active.media.get(k)).map(|m| m.start);
            if let Some(index) = image.filter(|_| image_start == Some(next)) {
                // One image per step: an image costs the others' streams about as
                // much as a prompt chunk of its size.
                if !image_planned {
                    image_planned = true;
                    plan.push(Entry::Image { slot, job, index });
                }
                continue;
            }
            if prefill_budget == 0 {
                break;
            }
            let len = image_start.unwrap_or(active.prompt.len());
            let take = (len - next).min(prefill_budget);
            prefill_budget -= take;
            plan.push(Entry::Prompt {
                slot,
                job,
                from: next,
                to: next + take,
            });
        }
        plan
    }

    /// The plan's tokens, and the logits row of each entry, if any. The plan never holds
    /// more than n_batch tokens (plus the pad, which has a sequence and room of its own).
    fn stage(&mut self, plan: &[Entry]) -> (Vec<Staged>, Vec<Option<i32>>) {
        let mut staged: Vec<Staged> = Vec::new();
        let mut logits = Vec::with_capacity(plan.len());
        for entry in plan {
            match *entry {
                Entry::Token { slot, tok } => {
                    let s = self.slots.at(slot);
                    staged.push(Staged {
                        tok,
                        pos: s.cached.len() as i32,
                        seq: s.seq,
                        logits: true,
                    });
                    logits.push(Some(staged.len() as i32 - 1));
                }
                Entry::Prompt {
                    slot,
                    job,
                    from,
                    to,
                } => {
                    let prompt = active_prompt(&self.jobs, job);
                    let seq = self.slots.at(slot).seq;
                    for (j, &tok) in prompt.iter().enumerate().take(to).skip(from) {
                        staged.push(Staged {
                            tok,
                            pos: j as i32,
                            seq,
                            logits: j == prompt.len() - 1,
                        });
                    }
                    logits.push((to == prompt.len()).then(|| staged.len() as i32 - 1));
                }
                Entry::Image { .. } => logits.push(None),
            }
        }
        if self.cfg.deterministic && self.seeded(plan) {
            self.keep_batch_invariant(&mut staged);
        }
        (staged, logits)
    }

    fn seeded(&self, plan: &[Entry]) -> bool {
        plan.iter().any(|e| {
            let job = match *e {
                Entry::Token { slot, .. } => self.slots.at(slot).run.as_ref().map(|r| r.job),
                Entry::Prompt { job, .. } | Entry::Image { job, .. } => Some(job),
            };
            job.and_then(|j| self.jobs.get(&j))
                .is_some_and(|a| a.job.sampling.seed.is_some())
        })
    }

    /// Shapes a seeded decode so every matrix product has the same kernel whatever
    /// shares the batch. ggml's CPU kernels differ by width: a one-token micro-batch
    /// takes flash attention's split-KV path (see UBATCH), and a product one row wide
    /// takes the per-row dot product where two or more rows take llamafile's sgemm,
    /// which rounds differently. So no micro-batch holds one token (a throwaway pad
    /// token in a sequence of its own, one cell), and none asks for exactly one row of
    /// logits (the output layer's product): such a one gets a second, ignored row.
    /// Only seeded requests pay for it (~15% slower decoding when alone).
    fn keep_batch_invariant(&mut self, staged: &mut Vec<Staged>) {
        if staged.len() % UBATCH == 1 {
            let pad = self.cfg.slots as i32;
            self.clear_seq(pad);
            staged.push(Staged {
                tok: LlamaToken::new(0),
                pos: 0,
                seq: pad,
                logits: false,
            });
        }
        // llama.cpp splits a batch into consecutive micro-batches of n_ubatch tokens.
        for chunk in staged.chunks_mut(UBATCH) {
            if chunk.iter().filter(|t| t.logits).count() == 1 {
                if let Some(t) = chunk.iter_mut().rev().find(|t| !t.logits) {
                    t.logits = true;
                }
            }
        }
    }

    fn step(&mut self) {
        let mut plan = self.plan();
        // Images first, in decodes of their own: the token decode's logits must be
        // the last ones computed before sampling.
        plan.retain(|e| match *e {
            Entry::Image { slot, job, index } => {
                self.eval_image(slot, job, index);
                false
            }
            _ => true,
        });
        if !plan.is_empty() {
            let Some(logits) = self.decode(&mut plan) else {
                return;
            };
            self.record(&plan, logits);
        }
        self.promote_finished_prefills();
        for i in 0..self.slots.len() {
            let at = self
                .slots
                .at_mut(i)
                .run
                .as_mut()
                .and_then(|r| r.logits_at.take());
            if let Some(at) = at {
                let job = self.slots.at(i).run.as_ref().map(|r| r.job);
                if catch_unwind(AssertUnwindSafe(|| self.sample(i, &at))).is_err() {
                    if let Some(job) = job {
                        self.abandon(job, None, "a request's engine work panicked");
                    }
                }
            }
        }
    }

    /// Decodes the plan, making room in the KV pool if it is full (the plan may shrink);
    /// None when nothing could be decoded.
    fn decode(&mut self, plan: &mut Vec<Entry>) -> Option<Vec<Option<i32>>> {
        loop {
            if plan.is_empty() {
                return None;
            }
            let (staged, logits) = self.stage(plan);
            let started = Instant::now();
            match self.decoder.decode(&staged) {
                Ok(()) => {
                    if self.pace.enabled() {
                        let took = started.elapsed();
                        let (generating, prompt) = plan.iter().fold((0, 0), |(g, p), e| match *e {
                            Entry::Token { .. } => (g + 1, p),
                            Entry::Prompt { from, to, .. } => (g, p + to - from),
                            Entry::Image { .. } => (g, p),
                        });
                        self.pace.observe(generating, prompt, took);
                    }
                    return Some(logits);
                }
                // The KV pool is full. llama.cpp leaves it untouched on this error, so
                // make room and retry: first drop idle prefix caches, then postpone
                // prompt chunks, and only as a last resort end the longest sequence.
                Err(DecodeFailure::NoKvSlot) => {
                    if self.evict_idle_cache() {
                        continue;
                    }
                    if let Some(pos) = plan.iter().rposition(|e| matches!(e, Entry::Prompt { .. }))
                    {
                        plan.remove(pos);
                        continue;
                    }
                    let victim = plan
                        .iter()
                        .enumerate()
                        .max_by_key(|(_, e)| match e {
                            Entry::Token { slot, .. } => self.slots.at(*slot).cached.len(),
                            Entry::Prompt { .. } | Entry::Image { .. } => 0,
                        })
                        .map(|(k, _)| k);
                    if let Some(k) = victim {
                        if let Entry::Token { slot, .. } = plan.remove(k) {
                            tracing::warn!(
                                slot,
                                "KV cache full: ending the longest sequence early"
                            );
                            self.end_run(slot, FinishReason::Length, Delta::default(), None);
                        }
                    }
                }
                Err(DecodeFailure::Other(e)) => {
                    self.fail_all(Error::internal(e));
                    return None;
                }
            }
        }
    }

    /// Moves what a decode computed into the slots' caches and runs.
    fn record(&mut self, plan: &[Entry], logits: Vec<Option<i32>>) {
        for (entry, at) in plan.iter().zip(logits) {
            match *entry {
                Entry::Token { slot, tok } => {
                    let s = self.slots.at_mut(slot);
                    s.cached.push(tok);
                    if let Some(run) = s.run.as_mut() {
                        run.pending = None;
                        run.logits_at = at.map(Logits::Batch);
                    }
                }
                Entry::Prompt {
                    slot,
                    job,
                    from,
                    to,
                } => {
                    let prompt = active_prompt(&self.jobs, job);
                    let s = self.slots.at_mut(slot);
                    s.cached
                        .extend_from_slice(prompt.get(from..to).unwrap_or_default());
                    if let Some(run) = s.run.as_mut() {
                        run.phase = Phase::Prefill { next: to };
                        run.logits_at = at.map(Logits::Batch);
                    }
                }
                Entry::Image { .. } => {}
            }
        }
    }

    /// A primary whose prompt is fully decoded hands its KV to its sibling choices,
    /// which then sample from the same logits: n choices cost one prefill.
    fn promote_finished_prefills(&mut self) {
        for i in 0..self.slots.len() {
            let Some(run) = self.slots.at_mut(i).run.as_mut() else {
                continue;
            };
            let (Phase::Prefill { .. }, Some(at)) = (&run.phase, run.logits_at.clone()) else {
                continue;
            };
            run.phase = Phase::Generate;
            let job_id = run.job;
            if let Logits::Batch(row) = at {
                // Kept for a repeat of this prompt (see `Logits::Saved`).
                let saved = Arc::from(self.decoder.logits(row));
                let slot = self.slots.at_mut(i);
                slot.tail = Some((slot.cached.len(), saved));
            }
            if let Some(active) = self.jobs.get_mut(&job_id) {
                active.first_token = Some(Instant::now());
            }
            let src = self.slots.at(i).seq;
            let cached = self.slots.at(i).cached.clone();
            let mut copied = true;
            for k in 0..self.slots.len() {
                let follower = matches!(
                    &self.slots.at(k).run,
                    Some(Run { phase: Phase::Follow, job, .. }) if *job == job_id
                );
                if !follower {
                    continue;
                }
                let dst = self.slots.at(k).seq;
                // A choice that did not get its prompt's cells would sample from nothing.
                copied &= self.decoder.copy_seq(src, dst, None);
                let slot = self.slots.at_mut(k);
                slot.cached = cached.clone();
                if let Some(run) = slot.run.as_mut() {
                    run.phase = Phase::Generate;
                    run.logits_at = Some(at.clone());
                }
            }
            if !copied {
                self.abandon(
                    job_id,
                    None,
                    "llama.cpp could not copy a prompt's KV cells to its other choices",
                );
            }
        }
    }
}

/// Among slots holding as much of a prompt: an empty one, else the least recently used.
fn lru<P>(s: &Slot<P>) -> (bool, std::cmp::Reverse<u64>) {
    (s.cached.is_empty(), std::cmp::Reverse(s.last_used))
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
