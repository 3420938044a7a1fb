//! OpenAI-style logprobs from the logits of one decoded position.

use llama_cpp_2::token::LlamaToken;
use parlance_core::ir::{TokenLogprob, TopLogprob};

/// The sampled token's log-probability under the model (before sampling settings) and
/// its `top` most likely alternatives.
pub(crate) fn token_logprob(
    logits: &[f32],
    piece_of: impl Fn(LlamaToken) -> Vec<u8>,
    tok: LlamaToken,
    piece: &[u8],
    top: u32,
) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln() + max;
    let logprob = |t: usize| logits.get(t).map_or(f32::NEG_INFINITY, |&l| l - log_sum);
    let mut best: Vec<usize> = Vec::new();
    if top > 0 {
        let mut idx: Vec<(usize, f32)> = logits.iter().copied().enumerate().collect();
        let k = (top as usize).min(idx.len());
        let higher_first = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1);
        if k > 0 {
            idx.select_nth_unstable_by(k - 1, higher_first);
        }
        idx.truncate(k);
        idx.sort_by(higher_first);
        best = idx.into_iter().map(|(i, _)| i).collect();
    }
    TokenLogprob {
        token: String::from_utf8_lossy(piece).into_owned(),
        bytes: piece.to_vec(),
        logprob: logprob(tok.0 as usize),
        top: best
            .into_iter()
            .map(|t| {
                let bytes = piece_of(LlamaToken::new(t as i32));
                TopLogprob {
                    token: String::from_utf8_lossy(&bytes).into_owned(),
                    bytes,
                    logprob: logprob(t),
                }
            })
            .collect(),
    }
}
