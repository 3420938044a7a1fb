//! What the worker asks of llama.cpp, as a trait: decoding a batch, the logits it
//! computed, the KV cache's sequences and the vocabulary. The engine runs on
//! [`Llama`]; the worker's tests run the same scheduling on a fake (`worker/tests.rs`).

use crate::vision::{EvalFailure, Media, Vision};
use llama_cpp_2::context::session::{LlamaStateSeqFlags, SeqState};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::DecodeError;

/// One token of a decode: its position and sequence, and whether its logits are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Staged {
    pub tok: LlamaToken,
    pub pos: i32,
    pub seq: i32,
    pub logits: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeFailure {
    /// The KV pool has no room; the cache is left as it was, so the worker may make
    /// room and try again.
    NoKvSlot,
    Other(String),
}

pub(crate) trait Decoder {
    /// An idle sequence's KV, moved to host memory.
    type Parked;

    /// Decodes the tokens in one call (llama.cpp splits it into micro-batches).
    fn decode(&mut self, tokens: &[Staged]) -> Result<(), DecodeFailure>;
    /// The logits of the last decode's token `row` (its index in the batch; a token
    /// that asked for logits).
    fn logits(&self, row: i32) -> &[f32];
    /// Samples (and accepts) with llama.cpp's chain from the logits of token `row`.
    fn sample_chain(&self, chain: &mut LlamaSampler, row: i32) -> LlamaToken;
    /// Removes a sequence's cells; false when that failed (see `Worker::clear_seq`).
    fn clear_seq(&mut self, seq: i32) -> bool;
    /// Keeps a sequence's first `keep` positions; false when the model cannot cut one.
    fn keep_seq(&mut self, seq: i32, keep: usize) -> bool;
    /// Shares `src`'s cells (the first `len` positions, or all) with `dst`.
    fn copy_seq(&mut self, src: i32, dst: i32, len: Option<usize>) -> bool;
    fn park(&mut self, seq: i32) -> Option<Self::Parked>;
    fn parked_bytes(parked: &Self::Parked) -> usize;
    fn unpark(&mut self, parked: &Self::Parked, seq: i32) -> bool;
    /// Evaluates an image's embeddings into `seq` at the image's positions.
    fn eval_image(
        &mut self,
        vision: &Vision,
        media: &Media,
        seq: i32,
        n_batch: i32,
    ) -> Result<(), EvalFailure>;
    fn n_vocab(&self) -> i32;
    fn is_eog(&self, tok: LlamaToken) -> bool;
    /// A token's bytes; control tokens render as nothing unless `special`.
    fn piece(&self, tok: LlamaToken, special: bool) -> Vec<u8>;
}

/// llama.cpp: one context on the model, and the batch its decodes are built in.
pub(crate) struct Llama<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
}

impl<'m> Llama<'m> {
    /// `n_tokens` and `n_seqs` bound a decode (the worker's batch plus its pad token).
    pub(crate) fn new(
        model: &'m LlamaModel,
        ctx: LlamaContext<'m>,
        n_tokens: usize,
        n_seqs: i32,
    ) -> Self {
        Llama {
            model,
            ctx,
            batch: LlamaBatch::new(n_tokens, n_seqs),
        }
    }
}

impl Decoder for Llama<'_> {
    type Parked = SeqState;

    fn decode(&mut self, tokens: &[Staged]) -> Result<(), DecodeFailure> {
        self.batch.clear();
        for t in tokens {
            self.batch
                .add(t.tok, t.pos, &[t.seq], t.logits)
                .map_err(|e| DecodeFailure::Other(format!("cannot fill the batch: {e}")))?;
        }
        match self.ctx.decode(&mut self.batch) {
            Ok(()) => Ok(()),
            Err(DecodeError::NoKvCacheSlot) => Err(DecodeFailure::NoKvSlot),
            Err(e) => Err(DecodeFailure::Other(format!(
                "llama.cpp decode failed: {e}"
            ))),
        }
    }

    fn logits(&self, row: i32) -> &[f32] {
        self.ctx.get_logits_ith(row)
    }

    fn sample_chain(&self, chain: &mut LlamaSampler, row: i32) -> LlamaToken {
        chain.sample(&self.ctx, row)
    }

    fn clear_seq(&mut self, seq: i32) -> bool {
        matches!(
            self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None),
            Ok(true)
        )
    }

    fn keep_seq(&mut self, seq: i32, keep: usize) -> bool {
        matches!(
            self.ctx
                .clear_kv_cache_seq(Some(seq as u32), Some(keep as u32), None),
            Ok(true)
        )
    }

    fn copy_seq(&mut self, src: i32, dst: i32, len: Option<usize>) -> bool {
        self.ctx
            .copy_kv_cache_seq(src, dst, None, len.map(|n| n as u32))
            .is_ok()
    }

    fn park(&mut self, seq: i32) -> Option<SeqState> {
        self.ctx
            .state_seq_get(seq, LlamaStateSeqFlags::empty())
            .ok()
    }

    fn parked_bytes(parked: &SeqState) -> usize {
        parked.byte_len()
    }

    fn unpark(&mut self, parked: &SeqState, seq: i32) -> bool {
        self.ctx.state_seq_set(parked, seq).is_ok()
    }

    fn eval_image(
        &mut self,
        vision: &Vision,
        media: &Media,
        seq: i32,
        n_batch: i32,
    ) -> Result<(), EvalFailure> {
        vision.eval(media, &mut self.ctx, seq, n_batch)
    }

    fn n_vocab(&self) -> i32 {
        self.model.n_vocab()
    }

    fn is_eog(&self, tok: LlamaToken) -> bool {
        self.model.vocab().is_eog(tok)
    }

    fn piece(&self, tok: LlamaToken, special: bool) -> Vec<u8> {
        self.model.vocab().token_to_piece(tok, special, None)
    }
}
