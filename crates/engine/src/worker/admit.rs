//! Admission: a waiting job takes free slots, gets its samplers and its cached
//! prefix; a panic while starting one fails that job alone.

use super::{lru, ActiveJob, Decoder, Phase, Run, Worker};
use crate::job::{Crash, Job, JobEvent, JobStats};
use crate::sampler::{self, SamplerSpec};
use crate::text::TextAssembler;
use llguidance::Matcher;
use parlance_core::Code;
use parlance_core::Error;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

impl<D: Decoder> Worker<D> {
    pub(super) fn admit(&mut self) {
        while let Some(front) = self.waiting.front() {
            let free: Vec<usize> = (0..self.slots.len())
                .filter(|&i| self.slots.at(i).run.is_none())
                .collect();
            if free.len() < front.choices.len() {
                return;
            }
            let Some(job) = self.waiting.pop_front() else {
                return;
            };
            #[allow(
                clippy::panic,
                reason = "test hook, armed only in builds with the test-hooks feature"
            )]
            if job.crash == Some(Crash::Engine) {
                panic!("engine panic requested by PARLANCE_TEST_ENGINE_PANIC");
            }
            self.start_isolated(job, free);
            // Free slots first, then the queue: a handler must never see the job gone
            // from the queue while its slot still counts as free.
            self.publish_free();
            self.counters.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Starts a job; a panic while doing so fails that job alone.
    fn start_isolated(&mut self, job: Job, free: Vec<usize>) {
        let id = self.next_job;
        let tx = job.tx.clone();
        if catch_unwind(AssertUnwindSafe(|| self.start(job, free))).is_err() {
            self.next_job = self.next_job.max(id + 1);
            self.abandon(id, Some(tx), "a request's engine work panicked");
        }
    }

    /// Ends a job whose work failed (`why`, for the log): its slots are reset (their KV
    /// may be half written) and its caller gets a 500; every other sequence carries on.
    pub(super) fn abandon(
        &mut self,
        job_id: u64,
        tx: Option<UnboundedSender<JobEvent>>,
        why: &str,
    ) {
        tracing::error!(job = job_id, "{why}; only this request was ended");
        for i in 0..self.slots.len() {
            if self
                .slots
                .at(i)
                .run
                .as_ref()
                .is_some_and(|r| r.job == job_id)
            {
                self.slots.at_mut(i).run = None;
                self.trim(i, 0);
            }
        }
        self.publish_free();
        let e =
            Error::internal("the engine failed on this request; other requests were not affected")
                .with_code(Code::EngineError);
        let tx = self.jobs.remove(&job_id).map(|a| a.job.tx).or(tx);
        if let Some(tx) = tx {
            // A closed channel: the caller hung up, no one is left to tell.
            tx.send(JobEvent::Failed(e)).ok();
        }
    }

    fn start(&mut self, mut job: Job, free: Vec<usize>) {
        let id = self.next_job;
        self.next_job += 1;

        let (primary, reused, ready) = self.place(&job, &free);
        if job.choices.contains(&0) {
            job.progress
                .counts()
                .cached_tokens
                .store(reused as u32, Ordering::Relaxed);
        }
        let mut stats = JobStats {
            prompt_tokens: job.prompt.len() as u32,
            cached_tokens: reused as u32,
            queue: job.enqueued.elapsed(),
            ..JobStats::default()
        };
        let mut members = vec![primary];
        let mut others: Vec<usize> = free.iter().copied().filter(|&i| i != primary).collect();
        others.sort_by_key(|&i| std::cmp::Reverse(lru(self.slots.at(i))));
        members.extend(others.into_iter().take(job.choices.len() - 1));
        for (k, (&slot_idx, &choice)) in members.iter().zip(&job.choices).enumerate() {
            if k > 0 {
                self.trim(slot_idx, 0);
            }
            let spec = SamplerSpec {
                params: &job.sampling,
                n_vocab: self.decoder.n_vocab(),
                eog_tokens: &self.cfg.eog_tokens,
                ignore_eos: job.ignore_eos,
                seed: job.seed.wrapping_add(u64::from(choice)) as u32,
                penalty_window: self.cfg.ctx_per_seq as i32,
                // Every choice needs its own matcher; the last one takes the job's.
                constraint: if k + 1 == members.len() {
                    job.constraint.take()
                } else {
                    job.constraint.as_ref().map(Matcher::deep_clone)
                },
            };
            let (sampler, shadow) = sampler::build(spec);
            let slot = self.slots.at_mut(slot_idx);
            slot.last_used = id;
            slot.run = Some(Run {
                job: id,
                choice,
                phase: if k == 0 {
                    Phase::Prefill { next: reused }
                } else {
                    Phase::Follow
                },
                sampler,
                shadow,
                text: TextAssembler::new(job.stop.clone()),
                pending: None,
                generated: 0,
                logits_at: if k == 0 { ready.clone() } else { None },
            });
            stats.slots.push(slot.seq);
        }
        self.jobs.insert(
            id,
            ActiveJob {
                live: members.len(),
                job,
                admitted: Instant::now(),
                first_token: None,
                stats,
            },
        );
    }
}
