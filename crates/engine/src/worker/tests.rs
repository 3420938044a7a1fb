//! The worker's scheduling on a fake decoder: continuous batching, chunked prefill,
//! prefix reuse, shared prefills of n choices, a full KV pool, cancellation and failed
//! decodes. The fake keeps each sequence's cells, refuses a token whose position does
//! not follow its sequence's last one, and makes every logits row pick one token.

use super::decoder::{DecodeFailure, Decoder, Staged};
use super::Worker;
use crate::job::{Counters, Job, JobEvent, JobStats, WorkerConfig};
use crate::vision::{EvalFailure, Media, Vision};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use parlance_core::ir::{FinishReason, SamplingParams, StreamEvent};
use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

const N_VOCAB: i32 = 32;
const EOS: i32 = 31;

/// What comes after `tok`: 1, 2, ..., 30, 1, ... (never EOS, never 0).
fn next(tok: i32) -> i32 {
    tok % 30 + 1
}

#[derive(Default)]
struct Shared {
    /// Every decode's tokens, in order.
    decodes: Vec<Vec<Staged>>,
    /// Fail the next decode with an engine error.
    fail_next: bool,
}

struct Fake {
    cells: HashMap<i32, Vec<LlamaToken>>,
    capacity: usize,
    /// Logits by the batch index of the token that asked for them.
    rows: HashMap<i32, Vec<f32>>,
    shared: Arc<Mutex<Shared>>,
}

impl Fake {
    fn new(capacity: usize) -> (Fake, Arc<Mutex<Shared>>) {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let fake = Fake {
            cells: HashMap::new(),
            capacity,
            rows: HashMap::new(),
            shared: Arc::clone(&shared),
        };
        (fake, shared)
    }

    fn used(&self) -> usize {
        self.cells.values().map(Vec::len).sum()
    }
}

impl Decoder for Fake {
    type Parked = Vec<LlamaToken>;

    fn decode(&mut self, tokens: &[Staged]) -> Result<(), DecodeFailure> {
        let mut shared = self.shared.lock().unwrap();
        if std::mem::take(&mut shared.fail_next) {
            return Err(DecodeFailure::Other("fake decode failure".into()));
        }
        if self.used() + tokens.len() > self.capacity {
            return Err(DecodeFailure::NoKvSlot);
        }
        self.rows.clear();
        for (i, t) in tokens.iter().enumerate() {
            let seq = self.cells.entry(t.seq).or_default();
            assert_eq!(
                t.pos as usize,
                seq.len(),
                "a gap or overlap in seq {}",
                t.seq
            );
            seq.push(t.tok);
            if t.logits {
                let mut row = vec![-1000.0; N_VOCAB as usize];
                row[next(t.tok.0) as usize] = 0.0;
                self.rows.insert(i as i32, row);
            }
        }
        shared.decodes.push(tokens.to_vec());
        Ok(())
    }

    fn logits(&self, row: i32) -> &[f32] {
        &self.rows[&row]
    }

    fn sample_chain(&self, chain: &mut LlamaSampler, row: i32) -> LlamaToken {
        crate::sampler::sample_row(chain, &self.rows[&row])
    }

    fn clear_seq(&mut self, seq: i32) -> bool {
        self.cells.remove(&seq);
        true
    }

    fn keep_seq(&mut self, seq: i32, keep: usize) -> bool {
        self.cells.entry(seq).or_default().truncate(keep);
        true
    }

    fn copy_seq(&mut self, src: i32, dst: i32, len: Option<usize>) -> bool {
        let mut cells = self.cells.get(&src).cloned().unwrap_or_default();
        cells.truncate(len.unwrap_or(usize::MAX));
        self.cells.insert(dst, cells);
        true
    }

    fn park(&mut self, seq: i32) -> Option<Vec<LlamaToken>> {
        self.cells.remove(&seq)
    }

    fn parked_bytes(parked: &Vec<LlamaToken>) -> usize {
        parked.len()
    }

    fn unpark(&mut self, parked: &Vec<LlamaToken>, seq: i32) -> bool {
        if self.used() + parked.len() > self.capacity {
            return false;
        }
        self.cells.insert(seq, parked.clone());
        true
    }

    fn eval_image(&mut self, _: &Vision, _: &Media, _: i32, _: i32) -> Result<(), EvalFailure> {
        Err(EvalFailure::Other(-1))
    }

    fn n_vocab(&self) -> i32 {
        N_VOCAB
    }

    fn is_eog(&self, tok: LlamaToken) -> bool {
        tok.0 == EOS
    }

    fn piece(&self, tok: LlamaToken, _special: bool) -> Vec<u8> {
        vec![b'a' + tok.0 as u8]
    }
}

struct Harness {
    worker: Worker<Fake>,
    jobs: mpsc::Sender<Job>,
    counters: Counters,
    shared: Arc<Mutex<Shared>>,
}

impl Harness {
    fn new(slots: usize, capacity: usize, prefill_chunk: usize) -> Harness {
        let (fake, shared) = Fake::new(capacity);
        let (jobs, rx) = mpsc::channel();
        let counters = Counters::new(slots);
        let cfg = WorkerConfig {
            slots,
            ctx_per_seq: 1000,
            n_batch: 64,
            prefill_chunk,
            prefill_pace: 0.0,
            deterministic: false,
            eog_tokens: vec![LlamaToken::new(EOS)],
            preserved: Vec::new(),
        };
        let worker = Worker::new(fake, cfg, rx, counters.clone(), None);
        Harness {
            worker,
            jobs,
            counters,
            shared,
        }
    }

    /// Queues a job as the engine's handle does; its events come out of the receiver.
    fn send(&self, prompt: &[i32], choices: u32, max_tokens: u32) -> UnboundedReceiver<JobEvent> {
        let (tx, rx) = unbounded_channel();
        self.counters
            .queued
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.jobs
            .send(Job {
                prompt: prompt.iter().map(|&t| LlamaToken::new(t)).collect(),
                media: Arc::new(Vec::new()),
                choices: (0..choices).collect(),
                sampling: SamplingParams::default(),
                seed: 0,
                max_tokens,
                stop: Vec::new(),
                ignore_eos: false,
                constraint: None,
                logprobs: None,
                tx,
                enqueued: Instant::now(),
                crash: None,
                progress: Default::default(),
            })
            .unwrap();
        rx
    }

    /// One round of the engine loop, taking whatever was sent.
    fn tick(&mut self) {
        while let Ok(job) = self.worker.rx.try_recv() {
            self.worker.waiting.push_back(job);
        }
        self.worker.tick();
    }

    fn decodes(&self) -> Vec<Vec<Staged>> {
        self.shared.lock().unwrap().decodes.clone()
    }
}

/// What a job produced: text per choice, finish per choice, and its stats or error.
#[derive(Debug, Default)]
struct Outcome {
    text: HashMap<u32, String>,
    finish: HashMap<u32, FinishReason>,
    done: Option<JobStats>,
    failed: Option<String>,
}

fn drain(rx: &mut UnboundedReceiver<JobEvent>, out: &mut Outcome) {
    while let Ok(ev) = rx.try_recv() {
        match ev {
            JobEvent::Event(StreamEvent::Delta { index, delta }) => {
                out.text.entry(index).or_default().push_str(&delta.content);
            }
            JobEvent::Event(StreamEvent::Finish { index, reason, .. }) => {
                out.finish.insert(index, reason);
            }
            JobEvent::Event(_) => {}
            JobEvent::Done(stats) => out.done = Some(stats),
            JobEvent::Failed(e) => out.failed = Some(e.message),
        }
    }
}

/// The text the fake model continues `last` with for `n` tokens.
fn continuation(last: i32, n: usize) -> String {
    let mut t = last;
    (0..n)
        .map(|_| {
            t = next(t);
            char::from(b'a' + t as u8)
        })
        .collect()
}

fn seqs(decode: &[Staged]) -> Vec<(i32, usize)> {
    let mut out: Vec<(i32, usize)> = Vec::new();
    for t in decode {
        match out.last_mut() {
            Some((s, n)) if *s == t.seq => *n += 1,
            _ => out.push((t.seq, 1)),
        }
    }
    out
}

#[test]
fn a_prompt_prefills_in_chunks_beside_a_stream_that_keeps_one_token_per_step() {
    let mut h = Harness::new(2, 1000, 4);
    let mut a = h.send(&[1, 2, 3, 4, 5, 6], 1, 20);
    h.tick(); // A's prompt whole (nothing else runs), and its first token sampled.
    let first = seqs(&h.decodes()[0]);
    assert_eq!((first.len(), first[0].1), (1, 6));
    let sa = first[0].0;
    let sb = 1 - sa;
    // No prefix in common with A's (see the next test for one that has).
    let mut b = h.send(&(11..=20).collect::<Vec<_>>(), 1, 3);
    for _ in 0..3 {
        h.tick();
    }
    let d = h.decodes();
    // Each step: A's one token, then at most 4 of B's 10 prompt tokens.
    assert_eq!(seqs(&d[1]), vec![(sa, 1), (sb, 4)]);
    assert_eq!(seqs(&d[2]), vec![(sa, 1), (sb, 4)]);
    assert_eq!(seqs(&d[3]), vec![(sa, 1), (sb, 2)]);
    // Only the prompt's last token asks for logits.
    assert_eq!(d[3].iter().filter(|t| t.logits).count(), 2);
    for _ in 0..30 {
        h.tick();
    }
    let (mut oa, mut ob) = (Outcome::default(), Outcome::default());
    drain(&mut a, &mut oa);
    drain(&mut b, &mut ob);
    assert_eq!(oa.text[&0], continuation(6, 20));
    assert_eq!(oa.finish[&0], FinishReason::Length);
    assert_eq!(ob.text[&0], continuation(20, 3));
    assert_eq!(ob.done.map(|s| s.prompt_tokens), Some(10));
}

#[test]
fn a_prompt_sharing_a_busy_slots_prefix_copies_its_cells() {
    let mut h = Harness::new(2, 1000, 4);
    let _a = h.send(&[1, 2, 3, 4, 5, 6], 1, 20);
    h.tick();
    // B starts with A's whole prompt (a shared system prompt): those 6 cells are
    // shared, and only B's own 4 tokens are decoded, in one chunk.
    let mut b = h.send(&(1..=10).collect::<Vec<_>>(), 1, 2);
    h.tick();
    let d = h.decodes();
    let own: Vec<(i32, i32)> = d[1].iter().skip(1).map(|t| (t.pos, t.tok.0)).collect();
    assert_eq!(own, vec![(6, 7), (7, 8), (8, 9), (9, 10)]);
    for _ in 0..3 {
        h.tick();
    }
    let mut ob = Outcome::default();
    drain(&mut b, &mut ob);
    assert_eq!(ob.done.map(|s| s.cached_tokens), Some(6));
    assert_eq!(ob.text[&0], continuation(10, 2));
}

#[test]
fn a_follow_up_turn_decodes_only_what_its_slot_does_not_hold() {
    let mut h = Harness::new(2, 1000, 64);
    let first = [5, 6, 7, 8];
    let mut a = h.send(&first, 1, 3);
    for _ in 0..5 {
        h.tick();
    }
    let mut oa = Outcome::default();
    drain(&mut a, &mut oa);
    assert!(oa.done.is_some());
    // The conversation goes on: its history plus a new question.
    let mut turn: Vec<i32> = first.to_vec();
    turn.extend([9, 10, 11]); // the answer, as the fake gave it
    turn.extend([20, 21]);
    let before = h.decodes().len();
    let mut b = h.send(&turn, 1, 2);
    for _ in 0..4 {
        h.tick();
    }
    let mut ob = Outcome::default();
    drain(&mut b, &mut ob);
    let stats = ob.done.unwrap();
    // The 4 prompt tokens and the 2 decoded answer tokens are still in the slot (the
    // third answer token was sampled but never decoded).
    assert_eq!((stats.prompt_tokens, stats.cached_tokens), (9, 6));
    let prefill = &h.decodes()[before];
    assert_eq!(prefill.len(), 3, "{prefill:?}");
    assert_eq!(prefill[0].pos, 6);
    assert_eq!(stats.slots, oa.done.unwrap().slots, "the same slot");
}

#[test]
fn n_choices_share_one_prefill_and_each_generates() {
    let mut h = Harness::new(3, 1000, 64);
    let mut rx = h.send(&[3, 4, 5], 3, 4);
    for _ in 0..8 {
        h.tick();
    }
    let prefill = seqs(&h.decodes()[0]);
    assert_eq!(
        (prefill.len(), prefill[0].1),
        (1, 3),
        "one prefill: {prefill:?}"
    );
    // Then one token per choice per step, each choice in a sequence of its own.
    let step = seqs(&h.decodes()[1]);
    assert_eq!(step.len(), 3, "{step:?}");
    assert!(step.iter().all(|&(_, n)| n == 1));
    let mut out = Outcome::default();
    drain(&mut rx, &mut out);
    for choice in 0..3 {
        assert_eq!(out.text[&choice], continuation(5, 4), "choice {choice}");
    }
    assert!(out.done.is_some());
}

#[test]
fn a_full_kv_pool_ends_the_longest_sequence_first() {
    // 24 cells: two streams fill them; the longer one is ended with `length`.
    let mut h = Harness::new(2, 24, 64);
    let mut a = h.send(&[1; 8], 1, 100);
    let mut b = h.send(&[2; 4], 1, 100);
    let mut oa = Outcome::default();
    let mut ob = Outcome::default();
    for _ in 0..40 {
        h.tick();
        drain(&mut a, &mut oa);
        drain(&mut b, &mut ob);
        if ob.done.is_some() {
            break;
        }
    }
    assert_eq!(oa.finish[&0], FinishReason::Length);
    assert_eq!(ob.finish[&0], FinishReason::Length);
    // A held 8 + its tokens when the pool (24) filled with B's 4 + B's tokens beside it.
    let (na, nb) = (oa.text[&0].len(), ob.text[&0].len());
    assert!(na < nb, "the longer sequence (A) ends first: {na} vs {nb}");
    assert!(oa.done.is_some() && ob.done.is_some());
    assert!(oa.failed.is_none() && ob.failed.is_none());
}

#[test]
fn a_caller_that_hangs_up_frees_its_slot_for_the_next_job() {
    let mut h = Harness::new(1, 1000, 64);
    let a = h.send(&[1, 2], 1, 1000);
    h.tick();
    let mut b = h.send(&[7, 8], 1, 2);
    h.tick();
    assert_eq!(
        h.counters.queued.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    drop(a);
    for _ in 0..4 {
        h.tick();
    }
    let mut ob = Outcome::default();
    drain(&mut b, &mut ob);
    assert_eq!(ob.text[&0], continuation(8, 2));
    assert_eq!(
        h.counters.queued.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert_eq!(h.counters.free.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_failed_decode_fails_its_jobs_and_the_worker_serves_the_next() {
    let mut h = Harness::new(2, 1000, 64);
    let mut a = h.send(&[1, 2, 3], 1, 5);
    h.shared.lock().unwrap().fail_next = true;
    h.tick();
    let mut oa = Outcome::default();
    drain(&mut a, &mut oa);
    assert!(oa.failed.unwrap().contains("fake decode failure"));
    let mut b = h.send(&[4, 5], 1, 2);
    for _ in 0..3 {
        h.tick();
    }
    let mut ob = Outcome::default();
    drain(&mut b, &mut ob);
    assert_eq!(ob.text[&0], continuation(5, 2));
    assert!(ob.done.is_some());
}
