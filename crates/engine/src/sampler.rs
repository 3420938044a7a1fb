//! One sampler chain per sequence, built from the request's parameters. Each chain has
//! its own seeded RNG, so a seeded request gives the same text whatever runs beside it.

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;
use llguidance::Matcher;
use parlance_core::ir::SamplingParams;

/// OpenAI's default temperature, used when neither the request nor the model sets one.
pub const DEFAULT_TEMPERATURE: f32 = 1.0;

pub struct SamplerSpec<'a> {
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
pub fn build(spec: SamplerSpec<'_>) -> (LlamaSampler, Option<Matcher>) {
    let p = spec.params;
    let mut chain = Vec::new();
    let mut shadow = None;
    if let Some(m) = spec.constraint {
        shadow = Some(m.deep_clone());
        chain.push(LlamaSampler::from(m));
    }

    let mut biases: Vec<LlamaLogitBias> = crate::in_vocab(&p.logit_bias, spec.n_vocab)
        .into_iter()
        .map(|(tok, bias)| LlamaLogitBias::new(LlamaToken::new(tok), bias))
        .collect();
    if spec.ignore_eos {
        biases.extend(
            spec.eog_tokens
                .iter()
                .map(|&t| LlamaLogitBias::new(t, f32::NEG_INFINITY)),
        );
    }
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

    let temperature = p.temperature.unwrap_or(DEFAULT_TEMPERATURE);
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
    (LlamaSampler::chain_simple(chain), shadow)
}

/// Advances the shadow matcher by one sampled token; the grammar's error if the token
/// broke it.
pub fn follow(shadow: &mut Matcher, tok: LlamaToken) -> Option<String> {
    if shadow.is_stopped() {
        return None;
    }
    let _ = shadow.consume_token(tok.0 as u32);
    shadow
        .get_error()
        .map(|e| crate::constraint::reason(&e).to_string())
}
