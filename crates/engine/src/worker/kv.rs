//! The slots' KV cache: trimming a slot to a reusable prefix, parking idle slots in
//! host memory and restoring them, giving up idle caches when the pool is full, and
//! evaluating a prompt's images into a slot's sequence.

use super::{common_prefix, lru, ActiveJob, Decoder, Job, Phase, Slot, Worker};
use crate::sampler::Logits;
use crate::vision::{floor_to_media, EvalFailure};
use llama_cpp_2::token::LlamaToken;
use parlance_core::Code;
use parlance_core::Error;
use std::collections::HashMap;
use std::sync::Arc;

impl<P> Slot<P> {
    /// The logits after `prompt`, when this slot's cache holds exactly that prompt's
    /// prefill (and maybe tokens generated after it).
    pub(super) fn saved_logits(&self, prompt: &[LlamaToken]) -> Option<Arc<[f32]>> {
        let (n, row) = self.tail.as_ref()?;
        (*n == prompt.len() && self.cached.get(..*n) == Some(prompt)).then(|| Arc::clone(row))
    }

    fn forget(&mut self) {
        self.cached.clear();
        self.tail = None;
    }
}

impl<D: Decoder> Worker<D> {
    /// Picks the free slot for a new job's prompt and keeps what its KV can reuse:
    /// (slot, prompt tokens reused, logits to sample first when the whole prompt was).
    pub(super) fn place(&mut self, job: &Job, free: &[usize]) -> (usize, usize, Option<Logits>) {
        // At least the last prompt token is decoded again (its logits start sampling)
        // unless the slot kept that prompt's own logits.
        let limit = job.prompt.len() - 1;
        // A cached prefix ends at an image's edge, never inside it.
        let reusable = |cached: &[LlamaToken]| {
            floor_to_media(&job.media, common_prefix(cached, &job.prompt).min(limit))
        };
        // The free slot that already holds the longest prefix of this prompt; among
        // equals (a new conversation), an empty one, else the least recently used, so
        // a conversation's follow-up turn still finds its history in its slot. (Taking
        // an empty slot and borrowing the shared cells instead would spare the other
        // conversation's cache, but changes where a repeated prompt's cells land, and
        // with them the last bits of its numerics: a seeded repeat would not repeat.)
        #[allow(
            clippy::expect_used,
            reason = "admit() starts a job only with at least as many free slots as its choices (>= 1)"
        )]
        let primary = *free
            .iter()
            .max_by_key(|&&i| {
                let s = self.slots.at(i);
                (
                    reusable(&s.cached),
                    s.saved_logits(&job.prompt).is_some(),
                    lru(s),
                )
            })
            .expect("at least one free slot");
        self.unpark(primary);
        if let Some(row) = self.slots.at(primary).saved_logits(&job.prompt) {
            let n = job.prompt.len();
            if self.trim(primary, n) == n {
                return (primary, n, Some(Logits::Saved(row)));
            }
        }
        let own = reusable(&self.slots.at(primary).cached);
        // Another slot, busy or idle, may hold more of this prompt (a shared system
        // prompt, an earlier turn): with a unified KV cache its cells can be shared
        // instead of computed again.
        let (donor, shared) = (0..self.slots.len())
            .filter(|&i| self.slots.at(i).parked.is_none())
            .map(|i| (i, reusable(&self.slots.at(i).cached)))
            .max_by_key(|&(_, n)| n)
            .unwrap_or((primary, 0));
        let reused = if donor != primary && shared > own {
            self.trim(primary, 0);
            let (src, dst) = (self.slots.at(donor).seq, self.slots.at(primary).seq);
            if self.decoder.copy_seq(src, dst, Some(shared)) {
                let shared_prompt = job.prompt.get(..shared).unwrap_or_default();
                self.slots.at_mut(primary).cached = shared_prompt.to_vec();
                shared
            } else {
                0
            }
        } else {
            self.trim(primary, own)
        };
        (primary, reused, None)
    }

    /// Moves the KV of idle slots out of the KV cache into host memory, as llama-server
    /// does with its idle slots: every decode's attention spans the cache up to its
    /// highest used cell, so idle conversations left in place slow every running
    /// sequence (measured: a lone stream after 8 ran at 0.80x llama-server's speed).
    /// The oldest parked slots are forgotten beyond `PARK_BUDGET` bytes.
    pub(super) fn park_idle(&mut self) {
        for i in 0..self.slots.len() {
            let slot = self.slots.at(i);
            if slot.run.is_some() || slot.parked.is_some() || slot.cached.is_empty() {
                continue;
            }
            let seq = slot.seq;
            if let Some(state) = self.decoder.park(seq) {
                self.clear_seq(seq);
                self.slots.at_mut(i).parked = Some(state);
            }
        }
        loop {
            let parked = || self.slots.iter().filter_map(|s| s.parked.as_ref());
            if parked().map(D::parked_bytes).sum::<usize>() <= PARK_BUDGET {
                return;
            }
            let oldest = (0..self.slots.len())
                .filter(|&i| self.slots.at(i).parked.is_some())
                .min_by_key(|&i| self.slots.at(i).last_used);
            let Some(i) = oldest else { return };
            self.slots.at_mut(i).parked = None;
            self.slots.at_mut(i).forget();
        }
    }

    /// Puts a parked slot's KV back into the cache; if there is no room, the slot
    /// starts empty.
    pub(super) fn unpark(&mut self, slot_idx: usize) {
        let Some(state) = self.slots.at_mut(slot_idx).parked.take() else {
            return;
        };
        let seq = self.slots.at(slot_idx).seq;
        if !self.decoder.unpark(&state, seq) {
            self.clear_seq(seq);
            self.slots.at_mut(slot_idx).forget();
        }
    }

    /// Keeps the first `keep` cached tokens of a slot's sequence; returns how many stayed.
    pub(super) fn trim(&mut self, slot_idx: usize, keep: usize) -> usize {
        if keep == 0 {
            self.slots.at_mut(slot_idx).parked = None;
        } else {
            self.unpark(slot_idx);
        }
        let slot = self.slots.at_mut(slot_idx);
        let seq = slot.seq;
        let partial_ok = keep > 0 && self.decoder.keep_seq(seq, keep);
        if partial_ok {
            slot.cached.truncate(keep);
            if slot.tail.as_ref().is_some_and(|(n, _)| *n > keep) {
                slot.tail = None;
            }
            keep
        } else {
            self.clear_seq(seq);
            self.slots.at_mut(slot_idx).forget();
            0
        }
    }

    /// Empties a sequence's KV cells. Removing a whole sequence does not fail in
    /// llama.cpp (only a partial removal can, on recurrent models); if it ever did, the
    /// stale cells would be attended to by the slot's next request, so it is logged.
    pub(super) fn clear_seq(&mut self, seq: i32) {
        if !self.decoder.clear_seq(seq) {
            tracing::error!(seq, "could not empty a KV sequence");
        }
    }

    /// Evaluates a job's image into its primary slot's sequence, where its prefill has
    /// reached it; a full KV pool first gives up idle prefix caches, as `step` does.
    pub(super) fn eval_image(&mut self, slot: usize, job: u64, index: usize) {
        let Some(active) = self.jobs.get(&job) else {
            return;
        };
        let media = Arc::clone(&active.job.media);
        let Some(m) = media.get(index) else { return };
        let Some(vision) = self.vision.clone() else {
            self.fail_job(
                job,
                Error::internal("an image reached a model without a projector"),
            );
            return;
        };
        let seq = self.slots.at(slot).seq;
        let n_batch = self.cfg.n_batch as i32;
        let mut result = self.decoder.eval_image(&vision, m, seq, n_batch);
        while result == Err(EvalFailure::NoRoom) && self.evict_idle_cache() {
            self.trim(slot, m.start);
            result = self.decoder.eval_image(&vision, m, seq, n_batch);
        }
        match result {
            Ok(()) => {
                let end = m.start + m.len;
                let s = self.slots.at_mut(slot);
                let image = active_prompt(&self.jobs, job).get(m.start..end);
                s.cached.extend_from_slice(image.unwrap_or_default());
                if let Some(run) = s.run.as_mut() {
                    run.phase = Phase::Prefill { next: end };
                }
            }
            Err(e) => {
                // Whatever part of the image reached the KV cache goes.
                self.trim(slot, m.start);
                tracing::warn!(job, "image evaluation failed: {e}");
                self.fail_job(
                    job,
                    Error::internal(format!("the image could not be evaluated: {e}"))
                        .with_code(Code::ImageFailed),
                );
            }
        }
    }

    /// Frees the KV of the least recently used idle slot's cached prefix; false when
    /// there is none.
    pub(super) fn evict_idle_cache(&mut self) -> bool {
        let idle = (0..self.slots.len())
            .filter(|&i| {
                let s = self.slots.at(i);
                s.run.is_none() && s.parked.is_none() && !s.cached.is_empty()
            })
            .min_by_key(|&i| self.slots.at(i).last_used);
        match idle {
            Some(i) => {
                self.trim(i, 0);
                true
            }
            None => false,
        }
    }
}

/// Host memory for parked idle slots (see `Worker::park_idle`).
const PARK_BUDGET: usize = 2 << 30;

pub(super) fn active_prompt(jobs: &HashMap<u64, ActiveJob>, job: u64) -> &[LlamaToken] {
    jobs.get(&job).map_or(&[], |a| a.job.prompt.as_slice())
}
