//! Whether an F16/BF16 encoder's F32 copy (see `upcast`) decodes packs faster than the
//! file itself on this machine. Which one wins depends on the CPU: llama.cpp's F16
//! kernel widens both operands on every load, which cost ~1.2x the copy's time on an
//! Intel Xeon and on an AVX2 EPYC, while on an AVX-512 EPYC (Zen 4) the file packed
//! ~1.17x faster than its copy. So it is measured once at load, on what packs run on.

use super::run::decode;
use super::{context, context_params, Pooling, MAX_SEQS};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use std::time::{Duration, Instant};

/// The test pack: 8 sequences of 16 tokens, a pack's shape at a quarter of its size.
const SEQS: usize = 8;
const SEQ_TOKENS: usize = 16;

/// A model whose first decode of the test pack takes longer than this is not measured
/// (it keeps the copy): the measurement would hold its start up for seconds.
const TOO_SLOW: Duration = Duration::from_millis(400);

/// Timed rounds after the warm-up (which faults the weights in); each side's fastest
/// round counts, so a noisy neighbour on a shared host does not decide.
const ROUNDS: usize = 3;

/// How long the test pack took at best on each weights, one compute thread each (as
/// packs run side by side); `None` when the model is too slow to measure at start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured {
    pub copy: Duration,
    pub file: Duration,
}

impl Measured {
    /// Whether the copy is worth its memory: at least 5% faster than the file.
    pub(crate) fn copy_wins(&self) -> bool {
        self.copy.as_secs_f64() * 1.05 <= self.file.as_secs_f64()
    }
}

/// Decodes the same pack on the copy and on the file, alternately.
pub(crate) fn copy_is_faster(
    copy: &LlamaModel,
    file: &LlamaModel,
    pooling: Pooling,
) -> Result<Option<Measured>, String> {
    let tokens = SEQS * SEQ_TOKENS;
    let params = context_params(pooling, tokens, 1);
    let mut contexts = [context(copy, params.clone())?, context(file, params)?];
    let mut batch = LlamaBatch::new(tokens, MAX_SEQS as i32);
    // Any id of the vocabulary does: the time does not depend on which.
    let id = LlamaToken::new((copy.n_vocab() / 2).max(0));
    let pack = vec![vec![id; SEQ_TOKENS]; SEQS];
    let mut best = [Duration::MAX; 2];
    for round in 0..=ROUNDS {
        for (ctx, best) in contexts.iter_mut().zip(&mut best) {
            let t0 = Instant::now();
            decode(ctx, &mut batch, pack.iter().map(Vec::as_slice))?;
            let took = t0.elapsed();
            if round == 0 && took > TOO_SLOW {
                return Ok(None);
            }
            if round > 0 {
                *best = (*best).min(took);
            }
        }
    }
    let [copy, file] = best;
    Ok(Some(Measured { copy, file }))
}
