//! A sequence's output: sampling its next token (with logprobs and the grammar's
//! shadow), streaming the text, and ending choices, jobs and failed ones.

use super::{Decoder, Worker};
use crate::job::{Crash, JobEvent};
use crate::logprobs::token_logprob;
use crate::sampler::{self, Logits};
use parlance_core::ir::{Delta, FinishReason, StreamEvent};
use parlance_core::Code;
use parlance_core::Error;
use std::sync::atomic::Ordering;

impl<D: Decoder> Worker<D> {
    pub(super) fn sample(&mut self, i: usize, at: &Logits) {
        let slot = self.slots.at_mut(i);
        let Some(run) = slot.run.as_mut() else { return };
        let Some(active) = self.jobs.get_mut(&run.job) else {
            slot.run = None;
            return;
        };
        #[allow(
            clippy::panic,
            reason = "test hook, armed only in builds with the test-hooks feature"
        )]
        if active.job.crash == Some(Crash::Sequence) && run.generated == 1 {
            panic!("sequence panic requested by PARLANCE_TEST_SEQUENCE_PANIC");
        }
        let tok = run.sampler.sample(&self.decoder, at);
        if let Some(e) = run.shadow.as_mut().and_then(|m| sampler::follow(m, tok)) {
            let job = run.job;
            tracing::warn!(job, "grammar failed mid-generation: {e}");
            self.fail_job(
                job,
                Error::invalid(format!(
                    "the requested output format could not be enforced: {e}"
                ))
                .with_code(Code::ConstraintFailed),
            );
            return;
        }
        run.generated += 1;
        active.stats.completion_tokens += 1;
        self.counters.generated.fetch_add(1, Ordering::Relaxed);
        active
            .job
            .progress
            .counts()
            .completion_tokens
            .fetch_add(1, Ordering::Relaxed);

        let mut finish = None;
        let mut matched = None;
        let mut delta = Delta::default();
        if self.decoder.is_eog(tok) && !active.job.ignore_eos {
            finish = Some(FinishReason::Stop);
        } else {
            let piece = self.decoder.piece(tok, self.cfg.preserved.contains(&tok));
            if let Some(top) = active.job.logprobs {
                delta.logprobs.push(token_logprob(
                    at.row(&self.decoder),
                    |t| self.decoder.piece(t, false),
                    tok,
                    &piece,
                    top,
                ));
            }
            let pushed = run.text.push(&piece);
            // A token's text is what it released: a character split across tokens goes
            // to the token that completes it, so the token strings join to the content.
            if let Some(lp) = delta.logprobs.last_mut() {
                lp.token = pushed.text.clone();
                lp.bytes = pushed.text.as_bytes().to_vec();
            }
            if pushed.stopped {
                finish = Some(FinishReason::Stop);
                matched = pushed.matched;
            } else if run.generated >= active.job.max_tokens
                || slot.cached.len() >= self.cfg.ctx_per_seq
            {
                finish = Some(FinishReason::Length);
            } else {
                run.pending = Some(tok);
            }
            delta.content = pushed.text;
        }
        match finish {
            Some(reason) => self.end_run(i, reason, delta, matched),
            None if !delta.is_empty() => {
                active.job.tell(JobEvent::Event(StreamEvent::Delta {
                    index: run.choice,
                    delta,
                }));
            }
            None => {}
        }
    }

    /// Ends one choice: flushes its text, sends its finish, frees its slot, and
    /// completes the job when it was the last choice running.
    pub(super) fn end_run(
        &mut self,
        i: usize,
        reason: FinishReason,
        mut delta: Delta,
        stop_sequence: Option<String>,
    ) {
        let Some(mut run) = self.slots.at_mut(i).run.take() else {
            return;
        };
        // Before the caller can have its answer: /metrics must not show this slot busy
        // to a client that already holds the finished response.
        self.publish_free();
        let Some(active) = self.jobs.get_mut(&run.job) else {
            return;
        };
        // After a stop-string match the assembler holds nothing, so this only flushes
        // text held back at EOS or at the length limit.
        let rest = run.text.finish();
        if let Some(lp) = delta.logprobs.last_mut() {
            lp.token.push_str(&rest);
            lp.bytes = lp.token.as_bytes().to_vec();
        }
        delta.content.push_str(&rest);
        let index = run.choice;
        if !delta.is_empty() {
            active
                .job
                .tell(JobEvent::Event(StreamEvent::Delta { index, delta }));
        }
        active.job.tell(JobEvent::Event(StreamEvent::Finish {
            index,
            reason,
            stop_sequence,
        }));
        active.live -= 1;
        if active.live == 0 {
            self.complete(run.job);
        }
        self.park_idle();
    }

    pub(super) fn complete(&mut self, job_id: u64) {
        if let Some(mut a) = self.jobs.remove(&job_id) {
            let first = a.first_token.unwrap_or(a.admitted);
            a.stats.prefill = first.duration_since(a.admitted);
            a.stats.decode = first.elapsed();
            a.job.tell(JobEvent::Done(a.stats));
        }
    }

    /// Ends one job with an error; its slots keep their KV for prefix reuse.
    pub(super) fn fail_job(&mut self, job_id: u64, err: Error) {
        for slot in self.slots.iter_mut() {
            if slot.run.as_ref().is_some_and(|r| r.job == job_id) {
                slot.run = None;
            }
        }
        self.publish_free();
        if let Some(a) = self.jobs.remove(&job_id) {
            a.job.tell(JobEvent::Failed(err));
        }
    }

    pub(super) fn fail_all(&mut self, err: Error) {
        for i in 0..self.slots.len() {
            if self.slots.at_mut(i).run.take().is_some() {
                self.trim(i, 0);
            }
        }
        self.publish_free();
        for (_, a) in self.jobs.drain() {
            a.job.tell(JobEvent::Failed(err.clone()));
        }
    }
}
