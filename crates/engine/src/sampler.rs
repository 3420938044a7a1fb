//! One sampler chain per sequence, built from the request's parameters. Each chain has
//! its own seeded RNG, so a seeded request gives the same text whatever runs beside it.

use crate::worker::Decoder;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;
use llguidance::Matcher;
use parlance_core::ir::SamplingParams;
use std::sync::Arc;

pub(crate) use crate::draw::Direct;

/// OpenAI's default temperature, used when neither the request nor the model sets one.
pub(crate) const DEFAULT_TEMPERATURE: f32 = 1.0;

pub(crate) struct SamplerSpec<'a> {
    pub params: &'a SamplingParams,
    pub n_vocab: i32,
    /// End-of-generation tokens, banned when the caller asked for `ignore_eos`.
    pub eog_tokens: &'a [LlamaToken],
    pub ignore_eos: bool,
    pub seed: u32,
    /// How many recent tokens the penalties look at.
    pub penalty_window: i32,
    /// A grammar the output must follow; it masks tokens before anything else runs.
    pub constraint: Option<Matcher>,
}

/// The sampler chain, and a shadow copy of its grammar matcher: llama-cpp-2's
/// llguidance sampler stops masking silently when the matcher fails, so the worker
/// feeds the shadow every sampled token and ends the request with an error the moment
/// the output leaves the grammar.
pub(crate) fn build(spec: SamplerSpec<'_>) -> (Sampler, Option<Matcher>) {
    let p = spec.params;
    let mut pairs: Vec<(i32, f32)> = crate::in_vocab(&p.logit_bias, spec.n_vocab);
    if spec.ignore_eos {
        pairs.extend(spec.eog_tokens.iter().map(|t| (t.0, f32::NEG_INFINITY)));
    }
    let temperature = p.temperature.unwrap_or(DEFAULT_TEMPERATURE);
    if !needs_chain(p, temperature, spec.constraint.is_some()) {
        return (
            Sampler::Direct(Direct::new(pairs, temperature, spec.seed)),
            None,
        );
    }

    let mut chain = Vec::new();
    let mut shadow = None;
    if let Some(m) = spec.constraint {
        shadow = Some(m.deep_clone());
        chain.push(LlamaSampler::from(m));
    }
    let biases: Vec<LlamaLogitBias> = pairs
        .into_iter()
        .map(|(tok, bias)| LlamaLogitBias::new(LlamaToken::new(tok), bias))
        .collect();
    if !biases.is_empty() {
        chain.push(LlamaSampler::logit_bias(spec.n_vocab, &biases));
    }

    let repeat = p.repetition_penalty.unwrap_or(1.0);
    let freq = p.frequency_penalty.unwrap_or(0.0);
    let present = p.presence_penalty.unwrap_or(0.0);
    if repeat != 1.0 || freq != 0.0 || present != 0.0 {
        chain.push(LlamaSampler::penalties(
            spec.n_vocab,
            spec.penalty_window,
            repeat,
            freq,
            present,
        ));
    }

    if temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if let Some(k) = p.top_k.filter(|&k| k > 0) {
            chain.push(LlamaSampler::top_k(k));
        }
        if let Some(top_p) = p.top_p.filter(|&v| v < 1.0) {
            chain.push(LlamaSampler::top_p(top_p, 1));
        }
        if let Some(min_p) = p.min_p.filter(|&v| v > 0.0) {
            chain.push(LlamaSampler::min_p(min_p, 1));
        }
        chain.push(LlamaSampler::temp(temperature));
        chain.push(LlamaSampler::dist(spec.seed));
    }
    (Sampler::Chain(LlamaSampler::chain_simple(chain)), shadow)
}

/// Grammars and penalties keep state across tokens, and truncation needs sorted
/// candidates: those go through llama.cpp's chain; the rest is [`Direct`].
fn needs_chain(p: &SamplingParams, temperature: f32, constrained: bool) -> bool {
    let penalised = p.repetition_penalty.is_some_and(|v| v != 1.0)
        || p.frequency_penalty.is_some_and(|v| v != 0.0)
        || p.presence_penalty.is_some_and(|v| v != 0.0);
    let truncated = p.top_k.is_some_and(|k| k > 0)
        || p.top_p.is_some_and(|v| v < 1.0)
        || p.min_p.is_some_and(|v| v > 0.0);
    let greedy = temperature <= 0.0;
    constrained || penalised || (truncated && !greedy)
}

/// A sequence's sampler: llama.cpp's chain for grammars, penalties and truncation
/// (top-k/top-p/min-p), else [`Direct`].
pub(crate) enum Sampler {
    Chain(LlamaSampler),
    Direct(Direct),
}

/// Where a sequence's next-token logits are.
#[derive(Clone)]
pub(crate) enum Logits {
    /// Output row `i` of the last decode.
    Batch(i32),
    /// A copy kept from an earlier decode: a prompt repeated whole samples from the
    /// logits its first prefill computed, because decoding its last token again alone
    /// takes another kernel and can flip a near-tie.
    Saved(Arc<[f32]>),
}

impl Logits {
    pub(crate) fn row<'a>(&'a self, decoder: &'a impl Decoder) -> &'a [f32] {
        match self {
            Logits::Batch(at) => decoder.logits(*at),
            Logits::Saved(row) => row,
        }
    }
}

impl Sampler {
    /// Samples (and accepts) the next token.
    pub(crate) fn sample(&mut self, decoder: &impl Decoder, logits: &Logits) -> LlamaToken {
        match (self, logits) {
            (Sampler::Chain(chain), Logits::Batch(at)) => decoder.sample_chain(chain, *at),
            (Sampler::Chain(chain), Logits::Saved(row)) => sample_row(chain, row),
            (Sampler::Direct(direct), logits) => {
                LlamaToken::new(direct.sample(logits.row(decoder)))
            }
        }
    }
}

/// Advances the shadow matcher by one sampled token; the grammar's error if the token
/// broke it.
pub(crate) fn follow(shadow: &mut Matcher, tok: LlamaToken) -> Option<String> {
    if shadow.is_stopped() {
        return None;
    }
    // A token that breaks the grammar leaves its error in the matcher, read below.
    shadow.consume_token(tok.0 as u32).ok();
    shadow
        .get_error()
        .map(|e| crate::constraint::reason(&e).to_string())
}

/// What llama_sampler_sample does with a context's row, on a row held elsewhere.
pub(crate) fn sample_row(chain: &mut LlamaSampler, row: &[f32]) -> LlamaToken {
    let mut candidates = LlamaTokenDataArray::from_iter(
        row.iter()
            .enumerate()
            .map(|(i, &l)| LlamaTokenData::new(LlamaToken::new(i as i32), l, 0.0)),
        false,
    );
    chain.apply(&mut candidates);
    // The chain ends in greedy or dist, which always select; the argmax only stands in
    // for a selection that cannot be missing.
    let tok = candidates
        .selected_token()
        .unwrap_or_else(|| LlamaToken::new(crate::draw::first_max(row) as i32));
    chain.accept(tok);
    tok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_temperature_sampling_skips_the_chain() {
        let plain = SamplingParams {
            temperature: Some(0.8),
            top_p: Some(1.0),
            ..SamplingParams::default()
        };
        assert!(!needs_chain(&plain, 0.8, false));
        assert!(needs_chain(&plain, 0.8, true), "a grammar");
        for p in [
            SamplingParams {
                top_p: Some(0.9),
                ..plain.clone()
            },
            SamplingParams {
                top_k: Some(40),
                ..plain.clone()
            },
            SamplingParams {
                min_p: Some(0.05),
                ..plain.clone()
            },
            SamplingParams {
                frequency_penalty: Some(0.5),
                ..plain.clone()
            },
            SamplingParams {
                repetition_penalty: Some(1.1),
                ..plain.clone()
            },
        ] {
            assert!(needs_chain(&p, 0.8, false), "{p:?}");
        }
        // Greedy ignores truncation, not penalties.
        let greedy = SamplingParams {
            temperature: Some(0.0),
            top_p: Some(0.5),
            ..plain.clone()
        };
        assert!(!needs_chain(&greedy, 0.0, false));
        assert!(needs_chain(
            &SamplingParams {
                presence_penalty: Some(1.0),
                ..greedy
            },
            0.0,
            false
        ));
    }
}
