//! Lanes: threads that each own a one-thread context on the same weights and decode
//! a pack beside the engine thread's. Packs that run side by side on one thread each
//! never wait for each other, where one pack on all threads meets at a barrier after
//! every operation and waits for the slowest thread's share: measured on 2 cores, two
//! one-thread engines embedded 1.17x as many inputs a second as one two-thread engine.

use super::run::decode;
use super::{MAX_SEQS, PACK_TOKENS};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use std::sync::mpsc;
use std::thread::Scope;

type Vectors = Result<Vec<Vec<f32>>, String>;

/// The engine thread's end of a lane.
pub(super) struct Lane {
    work: mpsc::Sender<Vec<Vec<LlamaToken>>>,
    done: mpsc::Receiver<Vectors>,
}

impl Lane {
    /// Starts a lane within the engine thread's scope, named as the engine thread (the
    /// chat engines' priority switches reach its threads by that name); it ends when
    /// its `Lane` is dropped.
    pub(super) fn start<'s, 'm>(
        scope: &'s Scope<'s, 'm>,
        name: &str,
        model: &'m LlamaModel,
        params: LlamaContextParams,
    ) -> Result<Lane, String> {
        let (work, work_rx) = mpsc::channel::<Vec<Vec<LlamaToken>>>();
        let (done_tx, done) = mpsc::channel::<Vectors>();
        let (ready_tx, ready) = mpsc::sync_channel::<Result<(), String>>(1);
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn_scoped(scope, move || {
                let mut ctx = match super::context(model, params) {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        ready_tx.send(Err(e)).ok();
                        return;
                    }
                };
                ready_tx.send(Ok(())).ok();
                let mut batch = LlamaBatch::new(PACK_TOKENS, MAX_SEQS as i32);
                while let Ok(inputs) = work_rx.recv() {
                    let made = decode(&mut ctx, &mut batch, inputs.iter().map(Vec::as_slice));
                    if done_tx.send(made).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| format!("cannot start an embedding lane: {e}"))?;
        ready
            .recv()
            .map_err(|_| "an embedding lane stopped while starting".to_string())??;
        Ok(Lane { work, done })
    }

    /// Hands the lane a pack (at most `PACK_TOKENS` tokens); `vectors` gives them back.
    pub(super) fn hand(&self, inputs: Vec<Vec<LlamaToken>>) -> Result<(), String> {
        self.work
            .send(inputs)
            .map_err(|_| "an embedding lane stopped".to_string())
    }

    /// Waits for the vectors of the pack last handed.
    pub(super) fn vectors(&self) -> Vectors {
        self.done
            .recv()
            .map_err(|_| "an embedding lane stopped".to_string())?
    }
}
